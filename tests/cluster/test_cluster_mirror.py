"""Mirroring in a cluster: the partition leader copies, followers replicate the copy.

A single Shazamq broker in the test's own (root) namespace is the source; three clustered
brokers mirror it. The mirrored topic is created through the controller with the
source's topic id and replication factor 3. The leader of a mirrored partition is killed
with ``kill -9`` while the source is still being written; the new leader continues from
its own log end, and in the end every replica on disk holds exactly the source's batches
at the source's offsets, byte for byte.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from shazamq.broker.topic_configs import MIRROR_SOURCE

from .conftest import Cluster, ClusterFactory, free_ports
from .replicas_on_disk import read_replica
from .test_cluster_basic import (
    FAST_CLUSTER,
    NETNS,
    admin,
    deep_merge_configs,
    fully_replicated,
    leader_of,
    topic_state,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

TOPIC = "orders"
PARTITIONS = 2
CODECS = ("none", "gzip", "lz4", "zstd")


def mirror_config(bootstrap: str) -> dict[str, Any]:
    return {
        "mirror": {
            "enabled": True,
            "sources": [
                {
                    "name": "src",
                    "bootstrap_servers": bootstrap,
                    "topic_whitelist": [TOPIC],
                    "metadata_refresh_interval_ms": 500,
                    "sync_group_offsets_interval_ms": 500,
                    "fetch_max_wait_ms": 200,
                    # small fetches: the copy is mid-way for a while
                    "fetch_max_bytes": 16384,
                    "retry_backoff_ms": 100,
                    "retry_backoff_max_ms": 1000,
                }
            ],
        }
    }


def start_source(cluster_factory: ClusterFactory, root: str, port: int) -> Cluster:
    """One broker in the root namespace, where the clustered brokers reach it."""
    kafka_port, metrics_port = port, free_ports(1)[0]
    return cluster_factory.start(
        1,
        netns=False,
        clustered=False,
        extra_config={
            "broker": {"host": root, "advertised_host": root, "port": kafka_port},
            "metrics": {"host": root, "port": metrics_port},
            "storage": {"segment_bytes": 65536},
        },
    )


class Load(threading.Thread):
    """An idempotent producer writing keyed records in every codec until stopped."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(daemon=True)
        self.bootstrap = bootstrap
        self.stop_event = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            producers = [
                Producer(
                    {
                        "bootstrap.servers": self.bootstrap,
                        "compression.type": codec,
                        "enable.idempotence": True,
                        "linger.ms": 2,
                    }
                )
                for codec in CODECS
            ]
            i = 0
            while not self.stop_event.is_set():
                p = producers[i % len(producers)]
                for j in range(20):
                    n = i * 20 + j
                    p.produce(
                        TOPIC,
                        key=b"k%d" % (n % 13),
                        value=b"v%07d-" % n + bytes([n % 251]) * 100,
                        partition=n % PARTITIONS,
                    )
                p.flush(30)
                self.sent += 20
                i += 1
                time.sleep(0.005)
            for p in producers:
                assert p.flush(30) == 0
        except BaseException as exc:
            self.error = exc


def topic_id(bootstrap: str, topic: str) -> Any:
    from confluent_kafka import TopicCollection

    client = admin(bootstrap)  # alive until the future resolves
    futures = client.describe_topics(TopicCollection([topic]))
    return str(futures[topic].result(timeout=10).topic_id)


def mirror_ends(cluster: Cluster, topic: str) -> dict[int, int]:
    """High watermark of each mirrored partition, read from its leader."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "probe"})
    try:
        return {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
            for p in range(PARTITIONS)
        }
    finally:
        c.close()


def test_mirror_leader_kill9_mid_copy_replicas_identical_to_source(
    cluster_factory: ClusterFactory,
) -> None:
    src_port = free_ports(1)[0]
    roots: list[str] = []

    def root_config(root: str) -> dict[str, Any]:
        roots.append(root)
        return mirror_config(f"{root}:{src_port}")

    cluster = cluster_factory.start(
        3,
        netns=NETNS,
        extra_config=deep_merge_configs(
            FAST_CLUSTER,
            # metadata probes of the test must not create the topic before the mirror does
            {"storage": {"segment_bytes": 65536}, "broker": {"auto_create_topics": False}},
        ),
        root_config=root_config,
    )
    source = start_source(cluster_factory, roots[0], src_port)
    src = source.bootstrap
    src_admin = AdminClient({"bootstrap.servers": src})  # alive until the future resolves
    src_admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1, config={"segment.bytes": "65536"})])[
        TOPIC
    ].result(20)

    load = Load(src)
    load.start()
    try:
        # created through the controller: the source's id, RF 3, marked as a mirror
        wait_for(lambda: fully_replicated(cluster.bootstrap, TOPIC, PARTITIONS), 60, "mirror")
        assert topic_id(cluster.bootstrap, TOPIC) == topic_id(src, TOPIC)
        state = topic_state(cluster.bootstrap, TOPIC)
        assert all(len(replicas) == 3 for _l, replicas, _i in state.values())
        wait_for(lambda: min(mirror_ends(cluster, TOPIC).values()) > 2000, 90, "copy under way")

        victim = leader_of(cluster, TOPIC, 0)
        copied_before = mirror_ends(cluster, TOPIC)[0]
        cluster.broker(victim).kill9()
        wait_for(lambda: leader_of(cluster, TOPIC, 0) not in (victim, -1), 30, "failover")
        # the new leader copies on from its own log end
        wait_for(
            lambda: mirror_ends(cluster, TOPIC)[0] > copied_before + 2000, 90, "copy continues"
        )
        time.sleep(2)
    finally:
        load.stop_event.set()
        load.join(60)
    assert load.error is None, load.error
    assert load.sent > 0

    cluster.broker(victim).restart()
    wait_for(lambda: fully_replicated(cluster.bootstrap, TOPIC, PARTITIONS), 60, "healed")
    source_ends = mirror_ends(source, TOPIC)
    wait_for(lambda: mirror_ends(cluster, TOPIC) == source_ends, 90, "the copy caught up")
    time.sleep(2)  # the followers' last fetch

    cluster.stop_all()
    source.stop_all()
    for part in range(PARTITIONS):
        _read, expected = read_replica(source[0].data_dir, TOPIC, part)
        assert expected, "the source partition holds data"
        for b in cluster:
            _r, got = read_replica(b.data_dir, TOPIC, part)
            assert len(got) == len(expected), (part, b.node_id, len(got), len(expected))
            assert got == expected, f"partition {part}: the replica on broker {b.node_id} differs"
    assert MIRROR_SOURCE  # the marker the copy carries (checked through the broker's logs)
    logs = "".join(b.log_text() for b in cluster)
    assert "as a mirror of orders" in logs
