"""Tiered storage in a cluster: the leader uploads, no replica deletes what the bucket lacks.

Three clustered brokers tier a topic to SeaweedFS (its S3 gateway in the test's root
namespace, where the brokers reach it). The leader is killed with ``kill -9`` after its
segments reached the bucket and left its disk; the new leader continues from the
manifest; the old one comes back as a follower behind the new leader's local log start.
At every step no replica's local log starts above what the bucket holds, and at the end a
consumer reads everything from offset 0, byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from shazamq.broker.tier.manifest import PartitionManifest, decode_manifest
from shazamq.broker.tier.s3 import S3Store
from shazamq.config import S3Config
from tests.tier.conftest import unique_bucket, weed_server

from .conftest import Cluster, ClusterFactory
from .test_cluster_basic import (
    FAST_CLUSTER,
    NETNS,
    admin,
    deep_merge_configs,
    fully_replicated,
    leader_of,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

TOPIC = "tiered"
PREFIX = "prod/shazamq"


S3_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@contextlib.contextmanager
def cluster_bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, Bucket]]:
    """A SeaweedFS S3 server on every address (brokers in their namespaces reach it at
    their root address) and a fresh bucket; (its port, the bucket). The brokers inherit
    the test credentials from the environment."""
    for k, v in S3_TEST_ENV.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "weed").mkdir()
    with weed_server(tmp_path / "weed", bind="0.0.0.0") as s3_port:
        bucket = Bucket(f"http://127.0.0.1:{s3_port}")
        bucket.create()
        yield s3_port, bucket


def tier_root_config(
    bucket: Bucket, port: int, prefix: str = PREFIX
) -> Callable[[str], dict[str, Any]]:
    """Each broker's [tiered_storage], the bucket at its root address and `port`."""

    def root_config(root: str) -> dict[str, Any]:
        return {
            "tiered_storage": {
                "enabled": True,
                "provider": "s3",
                "max_upload_interval_ms": 1000,
                "s3": {
                    "bucket": bucket.config.bucket,
                    "endpoint": f"http://{root}:{port}",
                    "prefix": prefix,
                },
            }
        }

    return root_config


class Bucket:
    def __init__(self, endpoint: str) -> None:
        self.config = S3Config(bucket=unique_bucket(), endpoint=endpoint, prefix=PREFIX)

    def _with(self, fn: Any) -> Any:
        async def go() -> Any:
            store = S3Store(self.config)
            await store.open()
            try:
                return await fn(store)
            finally:
                await store.close()

        return asyncio.run(go())

    def create(self) -> None:
        self._with(lambda s: s.ensure_bucket())

    def manifest(self) -> PartitionManifest | None:
        async def go(s: S3Store) -> PartitionManifest | None:
            for o in await s.list():
                if o.key.startswith(f"topics/{TOPIC}-") and o.key.endswith("/0/manifest.json"):
                    return decode_manifest(await s.get(o.key))
            return None

        return self._with(go)


def local_start(data_dir: Path) -> int:
    """Base offset of the first local segment of the replica (0 if none)."""
    bases = sorted(int(p.name[:20]) for p in (data_dir / f"{TOPIC}-0").glob("*.log"))
    return bases[0] if bases else 0


def produce(bootstrap: str, first: int, n: int) -> list[bytes]:
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    values = []
    for i in range(first, first + n):
        v = b"value-%06d-" % i + bytes([i % 251]) * 300
        values.append(v)
        p.produce(TOPIC, value=v, partition=0)
        if i % 10 == 9:
            p.flush(30)
    assert p.flush(30) == 0
    return values


def consume_all(bootstrap: str, expect: int) -> list[tuple[int, bytes]]:
    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "reader", "enable.auto.commit": False}
    )
    try:
        c.assign([TopicPartition(TOPIC, 0, 0)])
        got: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + 60
        while len(got) < expect and time.monotonic() < deadline:
            m = c.poll(1.0)
            if m is not None and m.error() is None:
                got.append((m.offset(), m.value()))
        return got
    finally:
        c.close()


def check_no_loss(cluster: Cluster, bucket: Bucket) -> None:
    """No replica's local log starts above what the bucket holds (read in that order:
    the manifest only grows here, so a later read can only be larger)."""
    starts = {b.node_id: local_start(b.data_dir) for b in cluster}
    m = bucket.manifest()
    end = m.end_offset if m is not None else 0
    for node, start in starts.items():
        assert start <= end, f"broker {node} deleted offsets {end}..{start - 1} not in the bucket"


def test_tiered_cluster_leader_failover(
    cluster_factory: ClusterFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with cluster_bucket(tmp_path, monkeypatch) as (s3_port, bucket):
        root_config = tier_root_config(bucket, s3_port)

        cluster = cluster_factory.start(
            3,
            netns=NETNS,
            extra_config=deep_merge_configs(
                FAST_CLUSTER, {"storage": {"retention_check_interval_ms": 300}}
            ),
            root_config=root_config,
        )
        client = admin(cluster.bootstrap)
        client.create_topics(
            [
                NewTopic(
                    TOPIC,
                    1,
                    3,
                    config={
                        "segment.bytes": "4000",
                        "local.retention.ms": "0",
                        "min.insync.replicas": "2",
                    },
                )
            ]
        )[TOPIC].result(20)
        wait_for(lambda: fully_replicated(cluster.bootstrap, TOPIC, 1), 30, "replicated")

        values = produce(cluster.bootstrap, 0, 200)
        first = leader_of(cluster, TOPIC, 0)
        wait_for(
            lambda: local_start(cluster.broker(first).data_dir) > 0, 60, "the leader's deletion"
        )
        check_no_loss(cluster, bucket)

        cluster.broker(first).kill9()
        wait_for(lambda: leader_of(cluster, TOPIC, 0) not in (first, -1), 30, "failover")
        second = leader_of(cluster, TOPIC, 0)
        end_before = bucket.manifest().end_offset  # type: ignore[union-attr]
        values += produce(cluster.bootstrap, 200, 200)
        # the new leader continues the manifest and deletes what it uploaded
        wait_for(
            lambda: (m := bucket.manifest()) is not None and m.end_offset >= 300,
            60,
            "uploads by the new leader",
        )
        wait_for(
            lambda: local_start(cluster.broker(second).data_dir) > end_before,
            60,
            "the new leader's deletion",
        )
        check_no_loss(cluster, bucket)

        # the old leader returns behind the new leader's local log start
        cluster.broker(first).restart()
        wait_for(lambda: fully_replicated(cluster.bootstrap, TOPIC, 1), 60, "healed")
        check_no_loss(cluster, bucket)

        got = consume_all(cluster.bootstrap, 400)
        assert [o for o, _ in got] == list(range(400))
        assert [v for _, v in got] == values
        check_no_loss(cluster, bucket)
        cluster.stop_all()


RACKS = {0: "rack-a", 1: "rack-b", 2: "rack-c"}


def test_follower_in_the_consumers_rack_serves_the_bucket(
    cluster_factory: ClusterFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer with `client.rack` is sent to the follower in its rack (KIP-392) for
    offsets below the local log start too; the follower reads its leader's manifest
    from the bucket and serves those offsets from there, byte for byte."""
    from .test_cluster_racks import metric

    with cluster_bucket(tmp_path, monkeypatch) as (s3_port, bucket):
        root_config = tier_root_config(bucket, s3_port)

        def config(node: int) -> dict[str, Any]:
            return deep_merge_configs(
                FAST_CLUSTER,
                {"storage": {"retention_check_interval_ms": 300}, "broker": {"rack": RACKS[node]}},
            )

        cluster = cluster_factory.start(
            3, netns=NETNS, extra_config=config, root_config=root_config
        )
        client = admin(cluster.bootstrap)
        wait_for(lambda: len(client.list_topics(timeout=5).brokers) == 3, 40, "membership")
        client.create_topics(
            [
                NewTopic(
                    TOPIC,
                    1,
                    replica_assignment=[[0, 1, 2]],
                    config={"segment.bytes": "4000", "local.retention.ms": "0"},
                )
            ]
        )[TOPIC].result(20)
        wait_for(lambda: fully_replicated(cluster.bootstrap, TOPIC, 1), 30, "replicated")
        assert leader_of(cluster, TOPIC, 0) == 0
        values = produce(cluster.bootstrap, 0, 150)
        follower = cluster.broker(2)
        # the follower in rack-c follows the leader's log start above offset 0
        wait_for(lambda: local_start(follower.data_dir) > 40, 60, "the follower's deletion")
        check_no_loss(cluster, bucket)
        served_before = metric(follower, "shazamq_tier_remote_fetch_bytes_total")

        c = Consumer(
            {
                "bootstrap.servers": cluster.bootstrap,
                "group.id": "rack-c-reader",
                "client.rack": "rack-c",
                "enable.auto.commit": False,
            }
        )
        try:
            c.assign([TopicPartition(TOPIC, 0, 0)])
            got: list[tuple[int, bytes]] = []
            deadline = time.monotonic() + 60
            while len(got) < 150 and time.monotonic() < deadline:
                m = c.poll(1.0)
                if m is not None:
                    assert m.error() is None, m.error()
                    got.append((m.offset(), m.value()))
        finally:
            c.close()
        assert [o for o, _ in got] == list(range(150))
        assert [v for _, v in got] == values
        # the remote part came from the follower's reads of the bucket
        served = metric(follower, "shazamq_tier_remote_fetch_bytes_total") - served_before
        assert served >= sum(len(v) for v in values[:40])
        cluster.stop_all()
