"""Racks and what the cluster reports about itself.

Brokers in three racks: placement puts a partition's replicas in different racks, a
consumer that sets `client.rack` is served by the in-sync replica in its own rack
(KIP-392), and the replication metrics follow a broker going down and coming back.
"""

from __future__ import annotations

import time
import urllib.request

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from .conftest import BrokerProcess, ClusterFactory
from .test_cluster_basic import (
    FAST_CLUSTER,
    NETNS,
    deep_merge_configs,
    fully_replicated,
    topic_state,
    wait_for,
)

pytestmark = pytest.mark.slow
RACKS = {0: "rack-a", 1: "rack-b", 2: "rack-c"}


def exposition(b: BrokerProcess) -> str:
    url = f"http://{b.address}:{b.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def metric(b: BrokerProcess, name: str, labels: str = "") -> float:
    total = 0.0
    for line in exposition(b).splitlines():
        if line.startswith(name) and labels in line and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_racks_spread_replicas_and_consumers_read_their_own_rack(
    cluster_factory: ClusterFactory,
) -> None:
    def config(node: int) -> dict:
        return deep_merge_configs(FAST_CLUSTER, {"broker": {"rack": RACKS[node]}})

    cluster = cluster_factory.start(3, netns=NETNS, extra_config=config)
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    wait_for(lambda: len(admin.list_topics(timeout=5).brokers) == 3, 40, "membership")
    described = admin.describe_cluster(request_timeout=10).result(timeout=20)
    assert {n.id: n.rack for n in described.nodes} == RACKS

    # rack-aware placement: RF 2 over three racks never doubles up a rack
    admin.create_topics([NewTopic("spread", 6, 2)])["spread"].result(20)
    wait_for(lambda: fully_replicated(cluster.bootstrap, "spread", 6), 30, "spread replicated")
    for _leader, replicas, _isr in topic_state(cluster.bootstrap, "spread").values():
        assert len({RACKS[b] for b in replicas}) == 2, replicas

    # a consumer in rack-c reads the partition led in rack-a from the replica in rack-c
    admin.create_topics([NewTopic("racked", 1, replica_assignment=[[0, 1, 2]])])["racked"].result(
        20
    )
    wait_for(lambda: fully_replicated(cluster.bootstrap, "racked", 1), 30, "racked replicated")
    assert topic_state(cluster.bootstrap, "racked")[0][0] == 0
    p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
    for i in range(200):
        p.produce("racked", value=b"r-%04d" % i, partition=0)
    assert p.flush(30) == 0
    follower = cluster.broker(2)
    served_before = metric(follower, "shazamq_topic_bytes_out_total", 'topic="racked"')
    c = Consumer(
        {
            "bootstrap.servers": cluster.bootstrap,
            "group.id": "rack-reader",
            "client.rack": "rack-c",
            "enable.auto.commit": False,
        }
    )
    c.assign([TopicPartition("racked", 0, 0)])
    got = []
    deadline = time.monotonic() + 30
    while len(got) < 200 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got.append(m.value())
    c.close()
    assert got == [b"r-%04d" % i for i in range(200)]
    served = metric(follower, "shazamq_topic_bytes_out_total", 'topic="racked"') - served_before
    assert served > 0, "the follower in the consumer's rack served the records"

    # replication health as metrics: a broker down shows up, and clears when it is back
    leader = cluster.broker(0)
    assert metric(leader, "shazamq_under_replicated_partitions") == 0
    assert metric(leader, "shazamq_leader_partitions") >= 1
    cluster.broker(1).kill9()
    wait_for(
        lambda: metric(leader, "shazamq_under_replicated_partitions") >= 1,
        30,
        "under-replicated partitions on the leader",
    )
    assert sum(metric(b, "shazamq_active_controller") for b in cluster if b.node_id != 1) == 1
    cluster.broker(1).restart()
    wait_for(lambda: fully_replicated(cluster.bootstrap, "racked", 1), 60, "healed")
    wait_for(
        lambda: metric(leader, "shazamq_under_replicated_partitions") == 0,
        30,
        "no under-replicated partitions",
    )
    assert metric(leader, "shazamq_isr_expands_total") >= 1

    # every family is exposed once (a scraper rejects a name declared twice), and a topic
    # deleted through the controller leaves no label children on the broker that served it
    for b in cluster:
        helps = [ln.split()[2] for ln in exposition(b).splitlines() if ln.startswith("# HELP ")]
        assert len(helps) == len(set(helps)), sorted(h for h in helps if helps.count(h) > 1)
    assert 'topic="racked"' in exposition(follower)
    admin.delete_topics(["racked"])["racked"].result(20)
    wait_for(
        lambda: 'topic="racked"' not in exposition(follower),
        30,
        "the deleted topic's metrics dropped on every broker",
    )
