"""Moving data and leaders on a running cluster: what the operator and Kafka's tools drive.

AlterPartitionReassignments moves a partition onto other brokers (the new replicas catch
up, throttled, before the old one is dropped), ListPartitionReassignments shows it in
flight, ElectLeaders restores preferred leaders, DescribeLogDirs reports the replicas a
broker holds. Requests go over the wire with the broker's own client.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from shazamq.broker.cluster.client import BrokerClient
from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.alter_partition_reassignments_request import (
    AlterPartitionReassignmentsRequest,
    ReassignablePartition,
    ReassignableTopic,
)
from shazamq.protocol.messages.describe_log_dirs_request import (
    DescribableLogDirTopic,
    DescribeLogDirsRequest,
)
from shazamq.protocol.messages.elect_leaders_request import ElectLeadersRequest, TopicPartitions
from shazamq.protocol.messages.list_offsets_request import (
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsTopic,
)
from shazamq.protocol.messages.list_partition_reassignments_request import (
    ListPartitionReassignmentsRequest,
)
from shazamq.protocol.messages.produce_request import (
    PartitionProduceData,
    ProduceRequest,
    TopicProduceData,
)
from shazamq.protocol.records import Record, build_batch

from .conftest import ClusterFactory
from .test_cluster_basic import FAST_CLUSTER, NETNS, deep_merge_configs, topic_state, wait_for

pytestmark = pytest.mark.slow

THROTTLE = 400_000  # bytes per second for replicas being added


def request(host: str, port: int, api_key: int, version: int, message: Any) -> Any:
    async def go() -> Any:
        client = BrokerClient(host, port)
        try:
            return await client.request(api_key, version, message, timeout=30)
        finally:
            await client.close()

    return asyncio.run(go())


def produce(bootstrap: str, topic: str, n: int, size: int = 1000) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    failed: list[Any] = []
    for i in range(n):
        p.produce(
            topic,
            value=b"%06d" % i + b"x" * (size - 6),
            partition=0,
            on_delivery=lambda err, _m: failed.append(err) if err else None,
        )
    assert p.flush(30) == 0
    assert not failed, failed[:3]


def read_all(bootstrap: str, topic: str, n: int) -> list[bytes]:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{time.time()}",
            "enable.auto.commit": False,
        }
    )
    c.assign([TopicPartition(topic, 0, 0)])
    out: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(out) < n and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            out.append(m.value()[:6])
    c.close()
    return out


def test_reassignment_moves_a_partition_throttled_and_elections_restore_leaders(
    cluster_factory: ClusterFactory,
) -> None:
    extra = deep_merge_configs(
        FAST_CLUSTER,
        {
            "replication": {
                "reassignment_throttle_bytes_per_second": THROTTLE,
                "auto_leader_rebalance_enable": False,
            },
        },
    )
    cluster = cluster_factory.start(3, netns=NETNS, extra_config=extra)
    for b in cluster:
        wait_for(
            lambda b=b: (
                len(AdminClient({"bootstrap.servers": b.bootstrap}).list_topics(timeout=5).brokers)
                == 3
            ),
            40,
            "membership",
        )
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    admin.create_topics(
        [NewTopic("moving", 1, replica_assignment=[[0]], config={"min.insync.replicas": "1"})]
    )["moving"].result(20)
    wait_for(
        lambda: topic_state(cluster.bootstrap, "moving").get(0, (-1,))[0] == 0,
        20,
        "moving led by broker 0",
    )
    n = 2000  # about 2 MB: several seconds at the throttle
    produce(cluster.bootstrap, "moving", n)

    b1 = cluster.broker(1)
    host, port = b1.address, b1.port
    started = time.monotonic()
    resp = request(
        host,
        port,
        45,
        0,
        AlterPartitionReassignmentsRequest(
            topics=[
                ReassignableTopic(
                    name="moving",
                    partitions=[ReassignablePartition(partition_index=0, replicas=[1, 2])],
                ),
                ReassignableTopic(
                    name="no-such-topic",
                    partitions=[ReassignablePartition(partition_index=0, replicas=[1])],
                ),
            ]
        ),
    )
    codes = {t.name: t.partitions[0].error_code for t in resp.responses}
    assert codes == {"moving": 0, "no-such-topic": ErrorCode.UNKNOWN_TOPIC_OR_PARTITION}

    listed = request(host, port, 46, 0, ListPartitionReassignmentsRequest(topics=None))
    ongoing = {(t.name, p.partition_index): p for t in listed.topics for p in t.partitions}
    assert ("moving", 0) in ongoing, "a throttled move of 2 MB is still in flight"
    moving = ongoing[("moving", 0)]
    assert sorted(moving.adding_replicas) == [1, 2]
    assert moving.removing_replicas == [0]

    wait_for(
        lambda: (
            [sorted(x) for x in topic_state(cluster.bootstrap, "moving")[0][1:]] == [[1, 2], [1, 2]]
        ),
        60,
        "the move to finish",
    )
    elapsed = time.monotonic() - started
    # the throttle bounds the copy from below (one second of burst allowed)
    assert elapsed >= (n * 1000 / THROTTLE - 1) * 0.8, elapsed
    assert topic_state(cluster.bootstrap, "moving")[0][0] in (1, 2)
    assert read_all(cluster.bootstrap, "moving", n) == [b"%06d" % i for i in range(n)]
    listed = request(host, port, 46, 0, ListPartitionReassignmentsRequest(topics=None))
    assert listed.topics == []

    def hosted_on_0() -> list[str]:
        resp = request(
            cluster.broker(0).address,
            cluster.broker(0).port,
            35,
            4,
            DescribeLogDirsRequest(topics=None),
        )
        return [t.name for r in resp.results for t in r.topics]

    wait_for(lambda: "moving" not in hosted_on_0(), 20, "broker 0 to drop its old replica")

    # a broker that no longer hosts the partition redirects to its leader (KIP-951)
    b0 = cluster.broker(0)
    offsets = request(
        b0.address,
        b0.port,
        2,
        7,
        ListOffsetsRequest(
            replica_id=-1,
            topics=[
                ListOffsetsTopic(
                    name="moving",
                    partitions=[ListOffsetsPartition(partition_index=0, timestamp=-1)],
                )
            ],
        ),
    )
    assert offsets.topics[0].partitions[0].error_code == ErrorCode.NOT_LEADER_OR_FOLLOWER
    batch = build_batch([Record(offset_delta=0, key=None, value=b"misdirected")])
    produced = request(
        b0.address,
        b0.port,
        0,
        11,
        ProduceRequest(
            acks=-1,
            timeout_ms=5000,
            topic_data=[
                TopicProduceData(
                    name="moving", partition_data=[PartitionProduceData(index=0, records=batch)]
                )
            ],
        ),
    )
    answer = produced.responses[0].partition_responses[0]
    assert answer.error_code == ErrorCode.NOT_LEADER_OR_FOLLOWER
    new_leader = topic_state(cluster.bootstrap, "moving")[0][0]
    assert answer.current_leader.leader_id == new_leader
    assert [e.node_id for e in produced.node_endpoints] == [new_leader]

    dirs = request(
        host,
        port,
        35,
        4,
        DescribeLogDirsRequest(topics=[DescribableLogDirTopic(topic="moving", partitions=[0])]),
    )
    (result,) = dirs.results
    assert result.error_code == 0 and result.total_bytes > 0
    (topic,) = result.topics
    assert topic.name == "moving" and topic.partitions[0].partition_size >= n * 1000

    # preferred leaders: lose the leader of a RF 3 partition, bring it back, elect it
    admin.create_topics([NewTopic("elect", 1, replica_assignment=[[2, 0, 1]])])["elect"].result(20)
    wait_for(
        lambda: (
            topic_state(cluster.bootstrap, "elect").get(0, (-1, [], []))[2] == [2, 0, 1]
            or len(topic_state(cluster.bootstrap, "elect").get(0, (-1, [], []))[2]) == 3
        ),
        30,
        "elect fully replicated",
    )
    before = request(
        host,
        port,
        43,
        2,
        ElectLeadersRequest(
            election_type=0, topic_partitions=[TopicPartitions(topic="elect", partitions=[0, 7])]
        ),
    )
    codes = {
        p.partition_id: p.error_code
        for r in before.replica_election_results
        for p in r.partition_result
    }
    assert codes == {0: ErrorCode.ELECTION_NOT_NEEDED, 7: ErrorCode.UNKNOWN_TOPIC_OR_PARTITION}

    def elect_state() -> tuple[int, list[int], list[int]]:
        # (leader, replicas, isr); a broker mid-restart may briefly answer without it
        return topic_state(cluster.bootstrap, "elect").get(0, (-1, [], []))

    cluster.broker(2).kill9()
    wait_for(lambda: elect_state()[0] in (0, 1), 30, "failover")
    cluster.broker(2).restart()
    wait_for(
        lambda: len(elect_state()[2]) == 3,
        60,
        "broker 2 back in the ISR",
    )
    assert wait_for(elect_state, 10, "elect metadata")[0] != 2, "no automatic rebalance here"
    after = request(
        host,
        port,
        43,
        2,
        ElectLeadersRequest(
            election_type=0, topic_partitions=[TopicPartitions(topic="elect", partitions=[0])]
        ),
    )
    (res,) = after.replica_election_results
    assert res.partition_result[0].error_code == 0
    wait_for(
        lambda: elect_state()[0] == 2,
        10,
        "the preferred replica leads again",
    )
