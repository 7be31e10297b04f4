"""What mirroring does: copy throughput of a backlog, and lag at a steady produce rate.

Starts two `python -m shazamq.broker` processes on loopback: a source, and a mirror of it
(`[mirror]` with one source). Two phases, each on its own topic of 4 partitions and 1 KiB
records:

- backlog: records are produced to the source first; the mirror broker then starts, and
  the time from its listener opening until every partition's copy reaches the source's
  log end gives the copy rate (MB/s of records; finding the topic, one metadata refresh of
  0.2 s, is included);
- steady: records are produced to the source at a fixed rate, each carrying its send
  time; a consumer of the mirror reads them, and the lag of a record is the time from its
  send until it is read from the mirror (so it includes the source's append, the mirror's
  fetch wait and append, and the consumer's fetch).

Both brokers and the clients share this machine: the figures are bounds, not what two
machines would do.

    python -m benchmarks.mirror                  # 200,000 records, 10 s at 5,000/s
    python -m benchmarks.mirror --scale 0.05     # quick
    python -m benchmarks.mirror --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.load import BrokerUnderTest, create_topic, payloads, percentiles

PARTITIONS = 4
SIZE = 1024
_STAMP = struct.Struct(">d")


def mirror_env(source_bootstrap: str, topics: list[str]) -> dict[str, str]:
    """Environment overrides that make a broker mirror ``topics`` of one source."""
    source = {
        "name": "bench-source",
        "bootstrap_servers": source_bootstrap,
        "topic_whitelist": [f"^{t}$" for t in topics],
        "metadata_refresh_interval_ms": 200,
        "fetch_max_wait_ms": 100,
        "retry_backoff_ms": 100,
        "retry_backoff_max_ms": 1000,
    }
    return {"SHAZAMQ_MIRROR__ENABLED": "true", "SHAZAMQ_MIRROR__SOURCES": json.dumps([source])}


def log_ends(bootstrap: str, topic: str) -> list[int]:
    """Each partition's log end offset, or -1 where the topic or partition is not there."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-ends"})
    try:
        out = []
        for p in range(PARTITIONS):
            try:
                out.append(c.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1])
            except KafkaException:
                out.append(-1)
        return out
    finally:
        c.close()


def produce_backlog(bootstrap: str, topic: str, records: int) -> None:
    from confluent_kafka import Producer

    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "batch.size": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    values = payloads(SIZE, False)
    for i in range(records):
        while True:
            try:
                p.produce(topic, values[i % len(values)], partition=i % PARTITIONS)
                break
            except BufferError:
                p.poll(0.01)
        if i % 1000 == 0:
            p.poll(0)
    if p.flush(120):
        raise RuntimeError("the backlog was not all delivered")


def run_backlog(
    source: BrokerUnderTest, mirror: BrokerUnderTest, topic: str, records: int, since: float
) -> dict:
    """Time from the mirror listening (``since``, perf_counter) until its copy reaches the
    source's log end: the copy itself plus finding the topic (one metadata refresh)."""
    target = log_ends(source.bootstrap, topic)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        ends = log_ends(mirror.bootstrap, topic)
        if ends == target:
            break
        time.sleep(0.05)
    else:
        raise RuntimeError(f"the copy of {topic} did not catch up: {ends} of {target}")
    elapsed = max(time.perf_counter() - since, 1e-3)
    return {
        "records": records,
        "seconds": round(elapsed, 2),
        "records_per_s": round(records / elapsed),
        "mb_per_s": round(records * SIZE / elapsed / 1e6, 1),
    }


def run_steady(
    source: BrokerUnderTest, mirror: BrokerUnderTest, topic: str, rate: float, seconds: float
) -> dict:
    """Send-to-read latency through the mirror at ``rate`` records per second."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    n = int(rate * seconds)
    lags: list[float] = []
    done = threading.Event()

    def consume() -> None:
        c = Consumer(
            {
                "bootstrap.servers": mirror.bootstrap,
                "group.id": "bench-mirror-reader",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        idle_until = time.monotonic() + seconds + 60
        while len(lags) < n and time.monotonic() < idle_until:
            m = c.poll(0.2)
            if m is None or m.error() is not None:
                continue
            (sent,) = _STAMP.unpack_from(m.value())
            lags.append((time.time() - sent) * 1000)
        c.close()
        done.set()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    p = Producer({"bootstrap.servers": source.bootstrap, "linger.ms": 1})
    pad = bytes(SIZE - _STAMP.size)
    start = time.perf_counter()
    for i in range(n):
        due = start + i / rate
        while time.perf_counter() < due:
            p.poll(0)
            time.sleep(min(0.0005, max(0.0, due - time.perf_counter())))
        p.produce(topic, _STAMP.pack(time.time()) + pad, partition=i % PARTITIONS)
        p.poll(0)
    p.flush(60)
    done.wait(seconds + 90)
    out: dict[str, Any] = dict(percentiles(lags))
    out.update(rate=round(rate), sent=n, read=len(lags))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the record counts")
    ap.add_argument("--rate", type=float, default=5000, help="steady phase: records per second")
    ap.add_argument("--json", type=Path, help="also write the report here")
    args = ap.parse_args(argv)
    records = max(1000, int(200_000 * args.scale))
    seconds = max(1.0, 10 * args.scale)
    backlog, steady = "mirror-backlog", "mirror-steady"
    report: dict[str, Any] = {
        "records": records,
        "size": SIZE,
        "partitions": PARTITIONS,
        "load_average_at_start": list(os.getloadavg()),
    }
    with tempfile.TemporaryDirectory(prefix="shazamq-mirror-bench-") as tmp:
        source = BrokerUnderTest(Path(tmp) / "source")
        mirror = None
        try:
            create_topic(source.bootstrap, backlog, PARTITIONS)
            create_topic(source.bootstrap, steady, PARTITIONS)
            print(f"backlog: {records} records of {SIZE} B", file=sys.stderr)
            produce_backlog(source.bootstrap, backlog, records)
            mirror = BrokerUnderTest(
                Path(tmp) / "mirror", mirror_env(source.bootstrap, [backlog, steady])
            )
            listening = time.perf_counter()
            report["backlog"] = run_backlog(source, mirror, backlog, records, listening)
            while any(e < 0 for e in log_ends(mirror.bootstrap, steady)):
                time.sleep(0.1)  # the steady topic is mirrored before it is written
            print(f"steady: {seconds:.0f} s at {args.rate:.0f}/s", file=sys.stderr)
            report["steady_lag_ms"] = run_steady(source, mirror, steady, args.rate, seconds)
        finally:
            if mirror is not None:
                mirror.stop()
            source.stop()
    report["load_average_at_end"] = list(os.getloadavg())
    b, s = report["backlog"], report["steady_lag_ms"]
    print(f"backlog copy: {b['mb_per_s']} MB/s ({b['records_per_s']} rec/s)")
    print(
        f"steady lag at {s['rate']}/s: p50 {s.get('p50', 0)} ms, p99 {s.get('p99', 0)} ms, "
        f"max {s.get('max', 0)} ms ({s['read']} of {s['sent']} read)"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
