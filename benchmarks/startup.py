"""Start-up time and idle memory of a broker hosting many partitions and much data.

    python -m benchmarks.startup                         # 1,000 partitions, 1 GiB
    python -m benchmarks.startup --gib 10                # the full 10 GiB variant
    python -m benchmarks.startup --partitions 1000 --gib 0    # idle RSS, empty logs
    python -m benchmarks.startup --cold                  # also evict the data from the page cache

Creates a topic with ``--partitions`` partitions through a running broker, stops it,
fills the partition logs with ``--gib`` GiB of 1 KiB records in 1 MiB batches (offline,
through the log's own append path, so the files are exactly what the broker writes),
then starts the broker and stops it cleanly once so that the measured start follows a
clean shutdown. Then, ``--restarts`` times: start the broker and time it until it
accepts connections and until it answers a Metadata request listing every partition,
wait for it to settle and read its RSS and open file descriptors, then stop it (timed).

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


def create_topic(bootstrap: str, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(TOPIC, partitions, 1)])[TOPIC].result(120)


def fill(data_dir: Path, partitions: int, total_bytes: int) -> int:
    """Append 1 MiB batches of 1 KiB records round-robin until ``total_bytes`` are in."""
    import random

    from shazamq.broker.log import LogConfig, PartitionLog
    from shazamq.protocol.records import Record, build_batch

    rng = random.Random(7)
    records = [Record(offset_delta=i, value=rng.randbytes(1024)) for i in range(1000)]
    batch = build_batch(records, base_timestamp=int(time.time() * 1000))
    logs = [
        PartitionLog.open(str(data_dir / f"{TOPIC}-{i}"), LogConfig()) for i in range(partitions)
    ]
    written = 0
    i = 0
    try:
        while written < total_bytes:
            logs[i % partitions].append(batch, leader_epoch=0)
            written += len(batch)
            i += 1
    finally:
        for log in logs:
            log.close()
    return written


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


def metadata_ready(bootstrap: str, partitions: int, timeout: float) -> float:
    """Monotonic time at which a Metadata response lists every partition."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            md = admin.list_topics(TOPIC, timeout=5)
            t = md.topics.get(TOPIC)
            if t is not None and t.error is None and len(t.partitions) == partitions:
                return time.monotonic()
        except Exception:
            pass
        time.sleep(0.01)
    raise TimeoutError("metadata never listed every partition")


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def run(partitions: int, gib: float, restarts: int, cold: bool, settle: float) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="shazamq-startup-"))
    data = tmp / "data"
    report: dict = {"partitions": partitions, "gib": gib, "cold": cold}
    try:
        b = BrokerUnderTest(data)
        try:
            create_topic(b.bootstrap, partitions)
        finally:
            b.stop()
        t = time.monotonic()
        report["bytes"] = fill(data, partitions, int(gib * (1 << 30))) if gib > 0 else 0
        report["fill_s"] = round(time.monotonic() - t, 1)
        b = BrokerUnderTest(data)  # once, so the measured starts follow a clean shutdown
        b.stop()
        runs = []
        for _ in range(restarts):
            if cold:
                evict(data)
            load_before = os.getloadavg()
            b = BrokerUnderTest(data)
            listening = b.started + b.startup_s
            ready = metadata_ready(b.bootstrap, partitions, 120)
            time.sleep(settle)
            run = {
                "listening_s": round(b.startup_s, 3),
                "metadata_ready_s": round(ready - b.started, 3),
                "after_listening_s": round(ready - listening, 3),
                "idle_rss_mb": rss_mb(b.pid),
                "open_fds": open_fds(b.pid),
                "loadavg": load_before,
            }
            t = time.monotonic()
            b.stop()
            run["stop_s"] = round(time.monotonic() - t, 3)
            runs.append(run)
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
    parser.add_argument("--json", type=Path, help="also write the report to this file")
    add_broker_cmd_option(parser)
    args = parser.parse_args(argv)
    set_broker_cmd(args.broker_cmd)
    report = run(args.partitions, args.gib, args.restarts, args.cold, args.settle)
    report["python_import_s"] = python_startup_s()
    print(
        f"{args.partitions} partitions, {report['bytes'] / (1 << 30):.2f} GiB "
        f"(filled in {report['fill_s']} s){', cold page cache' if args.cold else ''}"
    )
    header = (
        f"{'listening s':>11} {'metadata s':>10} {'idle RSS MB':>11} {'fds':>5} "
        f"{'stop s':>7} {'load avg':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in report["runs"]:
        print(
            f"{r['listening_s']:>11} {r['metadata_ready_s']:>10} {r['idle_rss_mb']:>11} "
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
