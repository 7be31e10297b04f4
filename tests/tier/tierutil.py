"""Helpers of the tier tests that drive a broker: the bucket seen from outside, producing
and consuming with confluent-kafka, polling with deadlines."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from shazamq.broker.tier.gcs import GcsStore
from shazamq.broker.tier.manifest import PartitionManifest, decode_manifest
from shazamq.broker.tier.s3 import S3Store
from shazamq.config import GcsConfig, S3Config

from .conftest import create_gcs_bucket, unique_bucket

TOPIC_CONFIG = {"segment.bytes": "4000", "local.retention.ms": "0"}
T0 = int(time.time() * 1000) - 60_000  # record timestamps: T0 + offset


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


class Bucket:
    """The bucket a tiered broker writes to, read from outside; `provider` "gcs" is a GCS
    bucket of the emulator at `endpoint`, anything else an S3 bucket."""

    def __init__(self, endpoint: str, name: str | None = None, provider: str = "s3") -> None:
        self.provider = provider
        self.config: S3Config | GcsConfig
        if provider == "gcs":
            self.config = GcsConfig(
                bucket=name or unique_bucket(), endpoint=endpoint, prefix="prod/shazamq"
            )
        else:
            self.config = S3Config(
                bucket=name or unique_bucket(), endpoint=endpoint, prefix="prod/shazamq"
            )

    async def _with(self, fn):  # type: ignore[no-untyped-def]
        cfg = self.config
        store: S3Store | GcsStore = GcsStore(cfg) if isinstance(cfg, GcsConfig) else S3Store(cfg)
        await store.open()
        try:
            return await fn(store)
        finally:
            await store.close()

    def run(self, fn):  # type: ignore[no-untyped-def]
        """``await fn(store)`` in one session of the bucket's store."""
        return _run(self._with(fn))

    def create(self) -> None:
        if isinstance(self.config, GcsConfig):
            assert self.config.endpoint is not None
            create_gcs_bucket(self.config.endpoint, self.config.bucket)
        else:
            _run(self._with(lambda s: s.ensure_bucket()))

    def objects(self) -> dict[str, int]:
        async def go(s: S3Store) -> dict[str, int]:
            return {o.key: o.size for o in await s.list()}

        return _run(self._with(go))

    def get(self, key: str) -> bytes:
        return _run(self._with(lambda s: s.get(key)))

    def manifest(self, topic: str, partition: int = 0) -> PartitionManifest | None:
        for key in self.objects():
            if key.startswith(f"topics/{topic}-") and key.endswith(f"/{partition}/manifest.json"):
                return decode_manifest(self.get(key))
        return None

    def settings(self, **extra: object) -> dict[str, object]:
        return {
            "tiered_storage__enabled": True,
            "tiered_storage__provider": self.provider,
            f"tiered_storage__{self.provider}__bucket": self.config.bucket,
            f"tiered_storage__{self.provider}__endpoint": self.config.endpoint,
            f"tiered_storage__{self.provider}__prefix": self.config.prefix,
            "tiered_storage__max_upload_interval_ms": 1000,
            "storage__retention_check_interval_ms": 300,
            **extra,
        }


def produce(bootstrap: str, topic: str, n: int, start: int = 0, partition: int = 0) -> list[bytes]:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    values = []
    for i in range(start, start + n):
        v = f"value-{i:06d}-".encode() + bytes([i % 251]) * 300
        values.append(v)
        p.produce(topic, key=f"k{i}".encode(), value=v, partition=partition, timestamp=T0 + i)
        if i % 10 == 9:
            p.flush(10)
    assert p.flush(10) == 0
    return values


def consume_all(
    bootstrap: str,
    topic: str,
    expect: int,
    group: str | None = None,
    start: int | None = 0,
    extra: dict[str, object] | None = None,
    partition: int = 0,
) -> list[tuple[int, bytes]]:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group or f"g-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            **(extra or {}),
        }
    )
    try:
        if start is None:
            c.subscribe([topic])
        else:
            c.assign([TopicPartition(topic, partition, start)])
        got: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + 60
        while len(got) < expect and time.monotonic() < deadline:
            msg = c.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got.append((msg.offset(), msg.value()))
        if group is not None and got:
            c.commit(asynchronous=False)
        return got
    finally:
        c.close()


def local_segments(data_dir: Path, topic: str) -> list[int]:
    return sorted(int(p.name[:20]) for p in (data_dir / f"{topic}-0").glob("*.log"))


def wait_for(pred, timeout: float = 60.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def read_until(
    bootstrap: str, topic: str, isolation: str, until: int
) -> list[tuple[int, bytes | None]]:
    """Partition 0 from offset 0 until the position reaches ``until`` (what the
    isolation level lets through)."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "isolation.level": isolation,
            "enable.partition.eof": True,
        }
    )
    got: list[tuple[int, bytes | None]] = []
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = c.poll(1.0)
            if msg is None:
                continue
            if msg.error() is not None:
                assert msg.error().code() == -191, msg.error()  # partition EOF
                if c.position([TopicPartition(topic, 0)])[0].offset >= until:
                    break
                continue
            got.append((msg.offset(), msg.value()))
        return got
    finally:
        c.close()
