"""The event loop's longest stall during a flush storm and a compaction of a large log.

    python -m benchmarks.loop_lag                  # 512 MiB compacted log (2-core size)
    python -m benchmarks.loop_lag --mib 1024       # the issue's 1 GiB

Runs a broker in this process under uvloop with a loop-lag probe: a task that sleeps
1 ms again and again and records by how much each wake-up was late (the time the loop
spent on something else). Load comes from producer subprocesses (confluent-kafka), so
the clients never take this process's GIL. Phases, each reported separately:

1. ``flush storm``: 16 partitions with ``flush.messages=1``, produced to flat out, so the
   broker's flush pass fsyncs every partition every second while appends continue.
2. ``rolls``: 16 partitions with ``segment.bytes`` of 1 MiB, produced to flat out, so
   every partition rolls a segment (new files, a producer-state snapshot, the old
   segment's indexes trimmed) every few appends.
3. ``compaction``: a compacted topic filled with ``--mib`` MiB of 1 KiB records over
   ``--keys`` keys (64 MiB segments), then one forced cleaning pass (as the maintenance
   loop runs it, from the executor; the rewrite itself in the cleaner's worker process,
   whose start is part of the pass) while a producer keeps appending to another topic.

Prints the longest stall, the 99.9th percentile and the 1-minute load average per phase.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

PRODUCER = r"""
import sys, time
from confluent_kafka import Producer
bootstrap, topic, seconds, keys, total_mib = sys.argv[1:6]
keys, total = int(keys), int(total_mib) * 1024 * 1024
p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.size": 1048576,
              "queue.buffering.max.kbytes": 262144, "acks": 1})
value = b"v" * 1000
sent, i, deadline = 0, 0, time.monotonic() + float(seconds)
while (total and sent < total) or (not total and time.monotonic() < deadline):
    key = b"k%08d" % (i % keys) if keys else None
    try:
        p.produce(topic, value=value, key=key)
    except BufferError:
        p.poll(0.01)
        continue
    i += 1
    sent += len(value)
    if i % 1000 == 0:
        p.poll(0)
p.flush(120)
"""


class StallSampler:
    """A thread that, while the loop is late by more than ``threshold`` seconds, samples
    the loop thread's stack every millisecond: where each stall was spent (the profile
    the fixes were chosen by). ``top()`` counts samples per innermost project frame."""

    def __init__(self, threshold: float = 0.01) -> None:
        self.threshold = threshold
        self.beat = time.monotonic()
        self.samples: dict[str, int] = {}
        self._ident = threading.get_ident()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            if time.monotonic() - self.beat < self.threshold:
                continue
            frame = sys._current_frames().get(self._ident)
            where = []
            while frame is not None and len(where) < 4:
                code = frame.f_code
                if "shazamq" in code.co_filename or "asyncio" in code.co_filename:
                    name = code.co_filename.rsplit("/", 1)[-1]
                    where.append(f"{name}:{frame.f_lineno}:{code.co_name}")
                frame = frame.f_back
            key = " < ".join(where) or "(outside python: waiting for the GIL or in C)"
            self.samples[key] = self.samples.get(key, 0) + 1

    def top(self, n: int = 8) -> list[tuple[str, int]]:
        return sorted(self.samples.items(), key=lambda kv: -kv[1])[:n]


class LagProbe:
    """Wakes every `interval` seconds and records how late each wake-up was."""

    def __init__(self, interval: float = 0.001, sampler: StallSampler | None = None) -> None:
        self.interval = interval
        self.sampler = sampler
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(self.interval)
            if self.sampler is not None:
                self.sampler.beat = time.monotonic()
            self.lags.append(max(0.0, loop.time() - t0 - self.interval))

    def start(self) -> None:
        self.lags = []
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> dict[str, float]:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        lags = sorted(self.lags)
        n = len(lags)
        return {
            "wakeups": n,
            "max_ms": round(lags[-1] * 1000, 2) if n else 0.0,
            "p999_ms": round(lags[min(n - 1, int(n * 0.999))] * 1000, 2) if n else 0.0,
            "p99_ms": round(lags[min(n - 1, int(n * 0.99))] * 1000, 2) if n else 0.0,
            "load1": round(os.getloadavg()[0], 2),
        }


def _producer(bootstrap: str, topic: str, *, seconds: float = 0, keys: int = 0, mib: int = 0):
    return subprocess.Popen(
        [sys.executable, "-c", PRODUCER, bootstrap, topic, str(seconds), str(keys), str(mib)]
    )


async def _wait(proc: subprocess.Popen[bytes]) -> None:
    while proc.poll() is None:
        await asyncio.sleep(0.1)


async def _create(broker, topic: str, partitions: int, configs: dict[str, str]) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{broker.server.port}"})
    futures = admin.create_topics([NewTopic(topic, partitions, 1, config=configs)])
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, futures[topic].result, 30)


async def run(args: argparse.Namespace) -> dict[str, object]:
    from shazamq.broker.app import Broker
    from shazamq.config import BrokerConfig, BrokerSection, MetricsConfig

    data = tempfile.mkdtemp(prefix="loop-lag-", dir=args.dir)
    config = BrokerConfig(
        broker=BrokerSection(host="127.0.0.1", port=0, data_dir=data),
        metrics=MetricsConfig(enabled=False),
    )
    broker = Broker(config)
    await broker.start()
    bootstrap = f"127.0.0.1:{broker.server.port}"
    sampler = StallSampler() if args.sample else None
    probe = LagProbe(sampler=sampler)
    if sampler is not None:
        sampler.start()
    results: dict[str, object] = {"mib": args.mib, "cpus": os.cpu_count()}
    phases = set(args.phases.split(","))
    try:
        for phase, topic, configs in (
            ("flush_storm", "storm", {"flush.messages": "1"}),
            ("rolls", "rolls", {"segment.bytes": str(1024 * 1024)}),
        ):
            if phase not in phases:
                continue
            await _create(broker, topic, 16, configs)
            probe.start()
            procs = [_producer(bootstrap, topic, seconds=args.seconds) for _ in range(2)]
            for p in procs:
                await _wait(p)
            results[phase] = await probe.stop()
            if phase == "rolls":
                results[phase]["segments"] = sum(  # type: ignore[index]
                    len(log.segments) for i in range(16) if (log := broker.logs.get(topic, i))
                )
            if sampler is not None:
                results[f"{phase}_stalls"] = sampler.top()
                sampler.samples = {}
        if "compaction" not in phases:
            return results

        await _create(
            broker,
            "compacted",
            1,
            {"cleanup.policy": "compact", "segment.bytes": str(64 * 1024 * 1024)},
        )
        await _create(broker, "side", 4, {})
        t0 = time.monotonic()
        await _wait(_producer(bootstrap, "compacted", keys=args.keys, mib=args.mib))
        results["fill_s"] = round(time.monotonic() - t0, 1)
        log = broker.logs.get("compacted", 0)
        assert log is not None
        log.roll()
        results["log_mib"] = round(log.size_bytes / 2**20)
        loop = asyncio.get_running_loop()
        probe.start()
        side = _producer(bootstrap, "side", seconds=3600)
        t0 = time.monotonic()
        stats = await loop.run_in_executor(
            None, functools.partial(broker.logs.cleaner.clean, log, force=True)
        )
        clean_s = time.monotonic() - t0
        side.terminate()
        await _wait(side)
        compaction = await probe.stop()
        compaction["clean_s"] = round(clean_s, 1)
        compaction["mib_after"] = round(log.size_bytes / 2**20)
        compaction["segments_in"] = getattr(stats, "segments_in", 0)
        results["compaction"] = compaction
        if sampler is not None:
            results["compaction_stalls"] = sampler.top()
    finally:
        if sampler is not None:
            sampler.stop()
        await broker.stop()
        import shutil

        shutil.rmtree(data, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512, help="size of the compacted log")
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0, help="flush storm length")
    parser.add_argument(
        "--phases",
        default="flush_storm,rolls,compaction",
        help="comma-separated phases to run (flush_storm, rolls, compaction)",
    )
    parser.add_argument("--dir", default=None, help="where the data directory goes")
    parser.add_argument(
        "--sample", action="store_true", help="sample the loop thread's stack during stalls"
    )
    args = parser.parse_args()
    import uvloop

    results = uvloop.run(run(args))
    for phase in ("flush_storm", "rolls", "compaction"):
        r = results.get(phase)
        if not isinstance(r, dict):
            continue
        print(
            f"{phase:12} longest stall {r['max_ms']:7.2f} ms  p99.9 {r['p999_ms']:6.2f} ms  "
            f"p99 {r['p99_ms']:6.2f} ms  load1 {r['load1']}"
        )
    for phase in ("flush_storm_stalls", "rolls_stalls", "compaction_stalls"):
        for where, n in results.get(phase, []):  # type: ignore[union-attr]
            print(f"{phase:20} {n:5} ms  {where}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
