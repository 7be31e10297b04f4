"""Promotion of a mirrored topic in a cluster: every partition's open source transaction is
aborted once by its own leader, whichever broker that is, before the topic is writable.

A single Shazamq broker in the root namespace is the source, with one transaction left
open across every partition; three clustered brokers mirror it, the partitions led by
different brokers (so most by brokers that are not the controller, which administers the
topic). A client deletes the marker (IncrementalAlterConfigs); the answer comes once the
topic is writable. Then every partition holds exactly one ABORT marker, read_committed
reaches the high watermark, local records land after it, and a restart of every broker
aborts nothing more. And when a partition's leader freezes before the promotion, the
topic stays read-only until the partition's new leader has done its part. In the end
every replica holds the same batches, one ABORT marker per partition.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from shazamq.broker.topic_configs import MIRROR_SOURCE
from shazamq.protocol.records import iter_batches

from .conftest import Cluster, ClusterFactory, free_ports
from .replicas_on_disk import read_replica
from .test_cluster_basic import (
    FAST_CLUSTER,
    NETNS,
    admin,
    deep_merge_configs,
    fully_replicated,
    topic_state,
    wait_for,
)
from .test_cluster_mirror import TOPIC, mirror_config, start_source

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

PARTITIONS = 3
ABORTED = "still open: aborted"


def ends(bootstrap: str, committed: bool) -> dict[int, int]:
    """The high watermark (or, ``committed``, the last stable offset) of each partition."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "probe",
            "isolation.level": "read_committed" if committed else "read_uncommitted",
        }
    )
    try:
        return {
            p: c.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=5, cached=False)[1]
            for p in range(PARTITIONS)
        }
    finally:
        c.close()


def committed_values(bootstrap: str, want: int) -> dict[int, list[tuple[int, bytes]]]:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "reader",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    try:
        c.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
        got: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(PARTITIONS)}
        polls = 120
        while sum(map(len, got.values())) < want and polls:
            polls -= 1
            m = c.poll(0.5)
            if m is not None and not m.error():
                got[m.partition()].append((m.offset(), m.value()))
        return got
    finally:
        c.close()


def marker(bootstrap: str) -> str | None:
    res = ConfigResource(ConfigResource.Type.TOPIC, TOPIC)
    client = admin(bootstrap)
    entries = client.describe_configs([res])[res].result(10)
    entry = entries.get(MIRROR_SOURCE)
    return entry.value if entry is not None and entry.value else None


def mirror_with_open_transaction(cluster_factory: ClusterFactory) -> tuple[Cluster, Any]:
    """Three brokers mirroring a source whose transaction stays open in every partition,
    copied; the partitions led by different brokers. (cluster, the source's producer)"""
    src_port = free_ports(1)[0]
    roots: list[str] = []

    def root_config(root: str) -> dict[str, Any]:
        roots.append(root)
        return mirror_config(f"{root}:{src_port}")

    cluster = cluster_factory.start(
        3,
        netns=NETNS,
        extra_config=deep_merge_configs(FAST_CLUSTER, {"broker": {"auto_create_topics": False}}),
        root_config=root_config,
    )
    source = start_source(cluster_factory, roots[0], src_port)
    src = source.bootstrap
    src_admin = AdminClient({"bootstrap.servers": src})
    src_admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])[TOPIC].result(20)
    plain = Producer({"bootstrap.servers": src})
    for p in range(PARTITIONS):
        plain.produce(TOPIC, value=b"before-%d" % p, partition=p)
    assert plain.flush(30) == 0
    txp = Producer(
        {
            "bootstrap.servers": src,
            "transactional.id": "src-open",
            "transaction.timeout.ms": 600_000,
        }
    )
    txp.init_transactions(30)
    txp.begin_transaction()
    for p in range(PARTITIONS):
        for i in range(2):
            txp.produce(TOPIC, value=b"open-%d-%d" % (p, i), partition=p)
    assert txp.flush(30) == 0

    wait_for(lambda: fully_replicated(cluster.bootstrap, TOPIC, PARTITIONS), 60, "mirror")
    wait_for(
        lambda: ends(cluster.bootstrap, False) == dict.fromkeys(range(PARTITIONS), 3),
        90,
        "the open transaction copied",
    )
    assert ends(cluster.bootstrap, True) == dict.fromkeys(range(PARTITIONS), 1)
    controller = admin(cluster.bootstrap).list_topics(timeout=5).controller_id
    leaders = {p: leader for p, (leader, _r, _i) in topic_state(cluster.bootstrap, TOPIC).items()}
    assert any(leader != controller for leader in leaders.values()), (controller, leaders)
    return cluster, txp


def promote(bootstrap: str) -> None:
    """A client deletes the marker; answered once writable (or, on a slow machine, soon
    after: the promotion goes on)."""
    res = ConfigResource(
        ConfigResource.Type.TOPIC,
        TOPIC,
        incremental_configs=[
            ConfigEntry(MIRROR_SOURCE, None, incremental_operation=AlterConfigOpType.DELETE)
        ],
    )
    client = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 60_000})
    try:
        client.incremental_alter_configs([res], request_timeout=50)[res].result(60)
    except KafkaException as exc:
        assert "under way" in str(exc), exc
    wait_for(lambda: marker(bootstrap) is None, 90, "the marker removed")


def test_promotion_aborts_every_partitions_open_source_transaction_once(
    cluster_factory: ClusterFactory,
) -> None:
    cluster, txp = mirror_with_open_transaction(cluster_factory)
    promote(cluster.bootstrap)

    # every partition: one ABORT marker at offset 3, read_committed not stuck
    assert ends(cluster.bootstrap, False) == dict.fromkeys(range(PARTITIONS), 4)
    assert ends(cluster.bootstrap, True) == dict.fromkeys(range(PARTITIONS), 4)
    local = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
    for p in range(PARTITIONS):
        local.produce(TOPIC, value=b"local-%d" % p, partition=p)
    assert local.flush(30) == 0
    got = committed_values(cluster.bootstrap, 2 * PARTITIONS)
    assert got == {p: [(0, b"before-%d" % p), (4, b"local-%d" % p)] for p in range(PARTITIONS)}
    logs = "".join(b.log_text() for b in cluster)
    assert logs.count(ABORTED) == PARTITIONS, logs.count(ABORTED)

    # a restart of every broker aborts nothing more
    for b in cluster:
        b.restart()
    wait_for(lambda: fully_replicated(cluster.bootstrap, TOPIC, PARTITIONS), 60, "back")
    assert ends(cluster.bootstrap, True) == dict.fromkeys(range(PARTITIONS), 5)
    logs = "".join(b.log_text() for b in cluster)
    assert logs.count(ABORTED) == PARTITIONS

    cluster.stop_all()
    for part in range(PARTITIONS):
        raws = [read_replica(b.data_dir, TOPIC, part)[1] for b in cluster]
        assert raws[0] == raws[1] == raws[2], f"partition {part}: replicas differ"
        controls = [
            h.base_offset for raw in raws[0] for _pos, h in iter_batches(raw) if h.is_control
        ]
        assert controls == [3], (part, controls)
    txp.abort_transaction(30)


def test_promotion_waits_for_a_frozen_leader_to_be_replaced(
    cluster_factory: ClusterFactory,
) -> None:
    """The leader of a partition (not the controller) freezes before the promotion: the
    topic stays read-only until the partition's new leader has aborted its open
    transaction; the old leader, back, holds the same log."""
    cluster, txp = mirror_with_open_transaction(cluster_factory)
    controller = admin(cluster.bootstrap).list_topics(timeout=5).controller_id
    leaders = {p: leader for p, (leader, _r, _i) in topic_state(cluster.bootstrap, TOPIC).items()}
    part, frozen = next((p, b) for p, b in sorted(leaders.items()) if b != controller)
    cluster.broker(frozen).sigstop()
    rest = ",".join(b.bootstrap for b in cluster if b.node_id != frozen)
    try:
        promote(rest)
        state = topic_state(rest, TOPIC)
        assert state[part][0] not in (frozen, -1), state
        assert ends(rest, False) == dict.fromkeys(range(PARTITIONS), 4)
        assert ends(rest, True) == dict.fromkeys(range(PARTITIONS), 4)
    finally:
        cluster.broker(frozen).sigcont()
    wait_for(lambda: fully_replicated(cluster.bootstrap, TOPIC, PARTITIONS), 90, "healed")
    local = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
    for p in range(PARTITIONS):
        local.produce(TOPIC, value=b"local-%d" % p, partition=p)
    assert local.flush(30) == 0
    got = committed_values(cluster.bootstrap, 2 * PARTITIONS)
    assert got == {p: [(0, b"before-%d" % p), (4, b"local-%d" % p)] for p in range(PARTITIONS)}
    wait_for(
        lambda: ends(cluster.bootstrap, False) == dict.fromkeys(range(PARTITIONS), 5), 30, "hw"
    )
    time.sleep(2)  # the followers' last fetch

    cluster.stop_all()
    for part in range(PARTITIONS):
        raws = [read_replica(b.data_dir, TOPIC, part)[1] for b in cluster]
        assert raws[0] == raws[1] == raws[2], f"partition {part}: replicas differ"
        controls = [
            h.base_offset for raw in raws[0] for _pos, h in iter_batches(raw) if h.is_control
        ]
        assert controls == [3], (part, controls)
    txp.abort_transaction(30)
