"""What replication costs: acks=all produce at RF 3 against RF 1, on one 3-broker cluster.

Starts three `python -m shazamq.broker` processes on loopback forming one cluster, creates
two topics (RF 1, and RF 3 with min.insync.replicas 2) with the same partitions, and for
each: produces 1 KiB records flat out with acks=all (throughput), then at a fixed rate
(delivery latency percentiles). All three brokers and the client share this machine, so
RF 3 pays for the followers' CPU on the same cores: the figure is a bound, not what
three machines would do.

    python -m benchmarks.replication                 # 200,000 records, 10 s latency runs
    python -m benchmarks.replication --scale 0.05    # quick
    python -m benchmarks.replication --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.load import (
    BROKER_CMD,
    free_port,
    payloads,
    percentiles,
    wait_listening,
)

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 4
SIZE = 1024


class ClusterUnderTest:
    """Three brokers on loopback, one metadata quorum."""

    def __init__(self, workdir: Path, n: int = 3) -> None:
        ports = [(free_port(), free_port(), free_port()) for _ in range(n)]
        voters = json.dumps([f"{i}@127.0.0.1:{q}" for i, (_, q, _) in enumerate(ports)])
        secret = secrets.token_hex(16)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports = [k for k, _, _ in ports]
        base = {k: v for k, v in os.environ.items() if not k.startswith("SHAZAMQ_")}
        for i, (kafka, _quorum, metrics) in enumerate(ports):
            env = dict(base)
            env.update(
                SHAZAMQ_BROKER__NODE_ID=str(i),
                SHAZAMQ_BROKER__HOST="127.0.0.1",
                SHAZAMQ_BROKER__PORT=str(kafka),
                SHAZAMQ_BROKER__ADVERTISED_HOST="127.0.0.1",
                SHAZAMQ_BROKER__DATA_DIR=str(workdir / f"node-{i}"),
                SHAZAMQ_METRICS__HOST="127.0.0.1",
                SHAZAMQ_METRICS__PORT=str(metrics),
                SHAZAMQ_CLUSTER__VOTERS=voters,
                SHAZAMQ_CLUSTER__SECRET=secret,
                SHAZAMQ_CLUSTER__QUORUM_HOST="127.0.0.1",
                SHAZAMQ_LOG_LEVEL="WARNING",
                PYTHONPATH=str(ROOT) + os.pathsep + base.get("PYTHONPATH", ""),
            )
            self.procs.append(subprocess.Popen(BROKER_CMD, env=env, cwd=str(ROOT)))
        try:
            for port, proc in zip(self.ports, self.procs, strict=True):
                wait_listening(port, proc, 60)
            self._wait_members(n)
        except BaseException:
            self.stop()
            raise

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def _wait_members(self, n: int) -> None:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if len(admin.list_topics(timeout=5).brokers) == n:
                    return
            except KafkaException:
                pass  # brokers still starting
            time.sleep(0.2)
        raise RuntimeError("the brokers did not form one cluster in 60 s")

    def create_topic(self, name: str, rf: int) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        configs = {"min.insync.replicas": "2"} if rf >= 2 else {}
        admin.create_topics([NewTopic(name, PARTITIONS, rf, config=configs)])[name].result(30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            t = admin.list_topics(name, timeout=5).topics[name]
            if t.error is None and all(
                len(p.isrs) == rf and p.leader >= 0 for p in t.partitions.values()
            ):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not get a full ISR")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        for p in self.procs:
            p.wait()


def producer(bootstrap: str) -> Any:
    from confluent_kafka import Producer

    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "linger.ms": 5,
            "batch.size": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "queue.buffering.max.messages": 1_000_000,
        }
    )


def run_throughput(bootstrap: str, topic: str, records: int) -> dict[str, float]:
    p = producer(bootstrap)
    values = payloads(SIZE, False)
    failures = 0

    def on_delivery(err: Any, _msg: Any) -> None:
        nonlocal failures
        if err is not None:
            failures += 1

    start = time.perf_counter()
    for i in range(records):
        while True:
            try:
                p.produce(
                    topic,
                    values[i % len(values)],
                    partition=i % PARTITIONS,
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                p.poll(0.01)
        if i % 1000 == 0:
            p.poll(0)
    p.flush(120)
    elapsed = time.perf_counter() - start
    return {
        "records_per_s": round(records / elapsed),
        "mb_per_s": round(records * SIZE / elapsed / 1e6, 1),
        "failures": failures,
    }


def run_latency(bootstrap: str, topic: str, rate: float, seconds: float) -> dict[str, float]:
    p = producer(bootstrap)
    value = payloads(SIZE, False, 1)[0]
    latencies: list[float] = []
    clock = time.perf_counter

    def cb_at(sent: float) -> Any:
        def cb(err: Any, _msg: Any) -> None:
            if err is None:
                latencies.append((clock() - sent) * 1000)

        return cb

    n = int(rate * seconds)
    start = clock()
    for i in range(n):
        due = start + i / rate
        while clock() < due:
            p.poll(0)
            time.sleep(min(0.0005, max(0.0, due - clock())))
        p.produce(topic, value, partition=i % PARTITIONS, on_delivery=cb_at(clock()))
        p.poll(0)
    p.flush(60)
    out: dict[str, float] = dict(percentiles(latencies))
    out["rate"] = round(rate)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the record counts")
    ap.add_argument("--rate", type=float, default=5000, help="latency run: records per second")
    ap.add_argument("--json", type=Path, help="also write the report here")
    args = ap.parse_args(argv)
    records = max(1000, int(200_000 * args.scale))
    seconds = max(1.0, 10 * args.scale)
    report: dict[str, Any] = {
        "records": records,
        "size": SIZE,
        "partitions": PARTITIONS,
        "load_average_at_start": list(os.getloadavg()),
    }
    with tempfile.TemporaryDirectory(prefix="shazamq-repl-bench-") as tmp:
        cluster = ClusterUnderTest(Path(tmp))
        try:
            for rf in (1, 3):
                topic = f"bench-rf{rf}"
                cluster.create_topic(topic, rf)
                print(
                    f"RF {rf}: {records} records, then {seconds:.0f} s at {args.rate:.0f}/s",
                    file=sys.stderr,
                )
                report[f"rf{rf}"] = {
                    "throughput": run_throughput(cluster.bootstrap, topic, records),
                    "latency_ms": run_latency(cluster.bootstrap, topic, args.rate, seconds),
                }
        finally:
            cluster.stop()
    report["load_average_at_end"] = list(os.getloadavg())
    one, three = report["rf1"], report["rf3"]
    print(f"{'':8} {'MB/s':>8} {'rec/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for name, r in (("RF 1", one), ("RF 3", three)):
        t, lat = r["throughput"], r["latency_ms"]
        print(
            f"{name:8} {t['mb_per_s']:>8} {t['records_per_s']:>10} "
            f"{lat.get('p50', 0):>8} {lat.get('p99', 0):>8}"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
