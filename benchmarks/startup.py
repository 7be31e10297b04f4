"""Start-up time and idle memory of a broker hosting many partitions and much data.

    python -m benchmarks.startup                         # 1,000 partitions, 1 GiB
    python -m benchmarks.startup --gib 10                # the full 10 GiB variant
    python -m benchmarks.startup --partitions 1000 --gib 0    # idle RSS, empty logs
    python -m benchmarks.startup --cold                  # also evict the data from the page cache
    python -m benchmarks.startup --partitions 20000 --gib 0 --kill   # start after kill -9

Creates a topic with ``--partitions`` partitions through a running broker, stops it,
fills the partition logs with ``--gib`` GiB of 1 KiB records in 1 MiB batches (offline,
through the log's own append path, so the files are exactly what the broker writes),
then starts the broker and stops it cleanly once so that the measured start follows a
clean shutdown. Then, ``--restarts`` times: start the broker and time it until it
accepts connections and until it answers a Metadata request listing every partition,
wait for it to settle and read its RSS and open file descriptors, then stop it (timed).

``--kill`` makes every measured start follow a crash: before it, the broker is running,
one record has just been produced to every partition (so no partition is marked clean)
and it is killed with SIGKILL; the start then recovers every partition. Topics hold at
most ``--topic-size`` partitions each (one CreateTopics request per topic, within
``broker.max_partitions_per_request``).

``--cold`` drops the data directory's pages from the page cache (``posix_fadvise``
DONTNEED on each file, nothing else on the machine is touched) before each start.
Prints a table and one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.load import (
    BrokerUnderTest,
    add_broker_cmd_option,
    rss_mb,
    set_broker_cmd,
)

TOPIC = "startup"


def topic_names(partitions: int, topic_size: int) -> dict[str, int]:
    """``startup``, or ``startup-0``, ``startup-1``, ... of at most ``topic_size`` each."""
    if partitions <= topic_size:
        return {TOPIC: partitions}
    out: dict[str, int] = {}
    left, i = partitions, 0
    while left > 0:
        out[f"{TOPIC}-{i}"] = min(left, topic_size)
        left -= topic_size
        i += 1
    return out


def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    # creating thousands of partitions can take longer than librdkafka's 60 s socket timeout
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 300_000})
    for name, count in topics.items():  # one request each: the per-request bound
        admin.create_topics([NewTopic(name, count, 1)], request_timeout=600)[name].result(600)


def lay_out(data_dir: Path, topics: dict[str, int]) -> None:
    """The topics as a broker would have created them, written without one: the metadata
    store's entries and, per partition, a folder holding its ``partition.metadata``
    (the broker creates the segment files when it first opens the partition). For
    counts that CreateTopics takes too long to create on a small, busy machine."""
    import asyncio
    import base64

    from shazamq.broker.cluster.metadata import MetadataStore

    store = MetadataStore(data_dir)

    async def create() -> list:
        return [await store.create_topic(name, count) for name, count in topics.items()]

    for info in asyncio.run(create()):
        encoded = base64.urlsafe_b64encode(info.uuid.bytes).rstrip(b"=").decode()
        text = f"version: 0\ntopic_id: {encoded}\n"
        for i in range(info.partitions):
            folder = data_dir / f"{info.name}-{i}"
            folder.mkdir(parents=True)
            (folder / "partition.metadata").write_text(text)


def fill(data_dir: Path, topics: dict[str, int], total_bytes: int) -> int:
    """Append 1 MiB batches of 1 KiB records round-robin until ``total_bytes`` are in."""
    import random

    from shazamq.broker.log import LogConfig, PartitionLog
    from shazamq.protocol.records import Record, build_batch

    rng = random.Random(7)
    records = [Record(offset_delta=i, value=rng.randbytes(1024)) for i in range(1000)]
    batch = build_batch(records, base_timestamp=int(time.time() * 1000))
    dirs = [data_dir / f"{t}-{i}" for t, n in topics.items() for i in range(n)]
    written = 0
    i = 0
    logs = {}
    try:
        while written < total_bytes:
            d = dirs[i % len(dirs)]
            log = logs.get(d)
            if log is None:
                log = logs[d] = PartitionLog.open(str(d), LogConfig())
            log.append(batch, leader_epoch=0)
            written += len(batch)
            i += 1
    finally:
        for log in logs.values():
            log.close()
    return written


def dirty_and_kill(b: BrokerUnderTest, topics: dict[str, int]) -> int:
    """Produce one record to every partition, then SIGKILL the broker: no partition is
    marked clean, so the next start recovers each one. Returns the records acknowledged."""
    import signal

    from confluent_kafka import Producer

    acked = 0

    def delivered(err, _msg) -> None:  # type: ignore[no-untyped-def]
        nonlocal acked
        if err is None:
            acked += 1

    p = Producer(
        {
            "bootstrap.servers": b.bootstrap,
            "linger.ms": 50,
            "acks": 1,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    for name, count in topics.items():
        for i in range(count):
            p.produce(name, value=b"before the crash", partition=i, on_delivery=delivered)
        p.poll(0)
    p.flush(600)
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait()
    return acked


def evict(data_dir: Path) -> None:
    """Drop the data directory's file pages from the page cache."""
    for root, _dirs, files in os.walk(data_dir):
        for name in files:
            path = os.path.join(root, name)
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass
            finally:
                os.close(fd)


def metadata_ready(bootstrap: str, topics: dict[str, int], timeout: float) -> float:
    """Monotonic time at which a Metadata response lists every partition."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            md = admin.list_topics(timeout=30)
            ok = True
            for name, count in topics.items():
                t = md.topics.get(name)
                if t is None or t.error is not None or len(t.partitions) != count:
                    ok = False
                    break
            if ok:
                return time.monotonic()
        except Exception:
            pass
        time.sleep(0.01)
    raise TimeoutError("metadata never listed every partition")


def cpu_s(pid: int) -> float:
    """CPU seconds (user and system) the process has used: unlike the wall time, barely
    moved by what else runs on a shared machine."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return -1.0
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def run(
    partitions: int,
    gib: float,
    restarts: int,
    cold: bool,
    settle: float,
    *,
    kill: bool = False,
    topic_size: int = 10_000,
    timeout: float = 120.0,
    offline_create: bool = False,
) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="shazamq-startup-"))
    data = tmp / "data"
    topics = topic_names(partitions, topic_size)
    report: dict = {"partitions": partitions, "gib": gib, "cold": cold, "kill": kill}
    try:
        t = time.monotonic()
        if offline_create:
            lay_out(data, topics)
        else:
            b = BrokerUnderTest(data, listen_timeout=timeout)
            try:
                create_topics(b.bootstrap, topics)
            finally:
                b.stop()
        report["create_s"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        report["bytes"] = fill(data, topics, int(gib * (1 << 30))) if gib > 0 else 0
        report["fill_s"] = round(time.monotonic() - t, 1)
        b = BrokerUnderTest(data, listen_timeout=timeout)  # measured starts follow this
        if kill:
            report["acked_before_kill"] = dirty_and_kill(b, topics)
        else:
            b.stop()
        runs = []
        for _ in range(restarts):
            if cold:
                evict(data)
            load_before = os.getloadavg()
            b = BrokerUnderTest(data, listen_timeout=timeout)
            listening = b.started + b.startup_s
            cpu_listening = cpu_s(b.pid)
            ready = metadata_ready(b.bootstrap, topics, timeout)
            time.sleep(settle)
            run = {
                "listening_s": round(b.startup_s, 3),
                "metadata_ready_s": round(ready - b.started, 3),
                "after_listening_s": round(ready - listening, 3),
                "cpu_s_until_listening": cpu_listening,
                "idle_rss_mb": rss_mb(b.pid),
                "open_fds": open_fds(b.pid),
                "loadavg": load_before,
            }
            t = time.monotonic()
            if kill:
                run["acked_before_kill"] = dirty_and_kill(b, topics)
                run["stop_s"] = 0.0  # killed, not stopped
            else:
                b.stop()
                run["stop_s"] = round(time.monotonic() - t, 3)
            runs.append(run)
            print(json.dumps(run), flush=True)
        report["runs"] = runs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def python_startup_s() -> float:
    """How long the interpreter takes to import the broker: the floor of any start."""
    import subprocess

    t = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", "import shazamq.broker.app"],
        check=True,
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    return round(time.monotonic() - t, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.startup",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--partitions", type=int, default=1000)
    parser.add_argument(
        "--gib",
        type=float,
        default=1.0,
        help="GiB of record data spread over the partitions (default 1)",
    )
    parser.add_argument("--restarts", type=int, default=3, help="measured starts (default 3)")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="evict the data directory from the page cache before each start",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=2.0,
        help="seconds to wait after start before reading RSS (default 2)",
    )
    parser.add_argument(
        "--kill",
        action="store_true",
        help="each measured start follows a kill -9 of a broker that had just written "
        "to every partition (so every partition is recovered)",
    )
    parser.add_argument(
        "--topic-size",
        type=int,
        default=10_000,
        help="most partitions per topic (default 10,000: broker.max_partitions_per_request)",
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds a start may take (default 120)"
    )
    parser.add_argument(
        "--offline-create",
        action="store_true",
        help="lay the topics out on disk without a broker instead of CreateTopics",
    )
    parser.add_argument("--json", type=Path, help="also write the report to this file")
    add_broker_cmd_option(parser)
    args = parser.parse_args(argv)
    set_broker_cmd(args.broker_cmd)
    report = run(
        args.partitions,
        args.gib,
        args.restarts,
        args.cold,
        args.settle,
        kill=args.kill,
        topic_size=args.topic_size,
        timeout=args.timeout,
        offline_create=args.offline_create,
    )
    report["python_import_s"] = python_startup_s()
    print(
        f"{args.partitions} partitions, {report['bytes'] / (1 << 30):.2f} GiB "
        f"(filled in {report['fill_s']} s){', cold page cache' if args.cold else ''}"
        f"{', each start after kill -9' if args.kill else ''}"
    )
    header = (
        f"{'listening s':>11} {'CPU s':>6} {'metadata s':>10} {'idle RSS MB':>11} {'fds':>5} "
        f"{'stop s':>7} {'load avg':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in report["runs"]:
        print(
            f"{r['listening_s']:>11} {r['cpu_s_until_listening']:>6} "
            f"{r['metadata_ready_s']:>10} {r['idle_rss_mb']:>11} "
            f"{r['open_fds']:>5} {r['stop_s']:>7} {r['loadavg'][0]:>8.2f}"
        )
    print(f"(importing the broker alone takes {report['python_import_s']} s)")
    print(json.dumps(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(None)
    sys.exit(main())
