"""End-to-end load benchmark: a real broker process driven by librdkafka.

    python -m benchmarks.load                      # the three loads, then the latency run
    python -m benchmarks.load --repeat 5           # five runs (fresh broker each), medians
    python -m benchmarks.load --scale 0.05         # a quick smoke run
    python -m benchmarks.load --only 100B          # one load (repeatable)
    python -m benchmarks.load --json results.json  # also write the report as JSON
    python -m benchmarks.load --profile prof/      # py-spy the broker during each phase
    python -m benchmarks.load --acls 300           # SASL login, authorization on, 300 ACLs
    python -m benchmarks.load --acl-compare --repeat 3   # ACLs off / on, interleaved

Starts `python -m shazamq.broker` on loopback with a fresh data directory on disk (default
flush policy: the OS writes dirty pages back, as Kafka does), creates a 4-partition topic
per load, produces with confluent-kafka (acks=all, idempotence off, linger.ms=5, 1 MB
batches; ``produce_batch`` of 1,000 records per call, or ``produce()`` per record with
``--per-record``), checks the high watermarks, then consumes everything back from
offset 0.

For every phase it reports records/s, MB/s (1 MB = 10^6 bytes of record values,
uncompressed), the CPU seconds the broker and this client process used, the broker's RSS
and the load average. The latency run then produces 1 KiB records at half the measured
1 KiB produce rate (or ``--latency-rate``) and reports delivery latency percentiles, next
to the broker's own Produce request latency from its Prometheus histogram. Everything is
printed as a table and as one line of JSON.

With `--profile DIR`, py-spy samples the broker during each phase (slowing it down a
little: profile runs are for finding what bounds a number, not for measuring it) and the
top entries by own time and by inclusive time are printed and written to DIR.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import random
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.secured import Security, install_acls

ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000
PARTITIONS = 4
_TICK = os.sysconf("SC_CLK_TCK")
#: How a broker under test is started (``--broker-cmd`` changes it).
BROKER_CMD = [sys.executable, "-m", "shazamq.broker"]


@dataclass
class Load:
    name: str
    records: int
    size: int
    compression: str = "none"


LOADS = [
    Load("1KiB", 200_000, 1024),
    Load("100B", 1_000_000, 100),
    Load("1KiB-zstd", 200_000, 1024, "zstd"),
]


@dataclass
class Phase:
    """One timed phase (produce or consume) of one load."""

    seconds: float = 0.0
    records_per_s: float = 0.0
    mb_per_s: float = 0.0
    broker_cpu_s: float = 0.0
    broker_sys_s: float = 0.0  # the part of broker_cpu_s spent in the kernel
    client_cpu_s: float = 0.0


@dataclass
class Result:
    load: str
    records: int
    record_bytes: int
    compression: str
    produce: Phase = field(default_factory=Phase)
    consume: Phase = field(default_factory=Phase)
    # delivery latency of sampled records while producing flat out (mostly queueing in
    # the client: the producer enqueues far faster than any broker drains)
    saturated_latency_ms: dict[str, float] = field(default_factory=dict)
    broker_rss_mb: float = 0.0
    loadavg_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    loadavg_after: tuple[float, float, float] = (0.0, 0.0, 0.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def cpu_times(pid: int | None) -> tuple[float, float]:
    """(user, system) CPU seconds of a process (all threads), from /proc."""
    if pid is None:
        return 0.0, 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def own_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class BrokerUnderTest:
    """`python -m shazamq.broker` on a free loopback port with its own data directory."""

    def __init__(
        self,
        data_dir: Path,
        extra_env: dict[str, str] | None = None,
        source: Path = ROOT,
        listen_timeout: float = 60.0,
    ) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.data_dir = data_dir
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHAZAMQ_")}
        env.update(
            SHAZAMQ_BROKER__HOST="127.0.0.1",
            SHAZAMQ_BROKER__PORT=str(self.port),
            SHAZAMQ_BROKER__ADVERTISED_HOST="127.0.0.1",
            SHAZAMQ_BROKER__DATA_DIR=str(data_dir),
            SHAZAMQ_METRICS__ENABLED="true",
            SHAZAMQ_METRICS__HOST="127.0.0.1",
            SHAZAMQ_METRICS__PORT=str(self.metrics_port),
            SHAZAMQ_LOG_LEVEL="WARNING",
            PYTHONPATH=str(source) + os.pathsep + env.get("PYTHONPATH", ""),
        )
        env.update(extra_env or {})
        self.started = time.monotonic()
        self.proc = subprocess.Popen(BROKER_CMD, env=env, cwd=str(source))
        self.startup_s = wait_listening(self.port, self.proc, listen_timeout) - self.started

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def request_latency(self, api: str) -> dict[float, float]:
        """The broker's request latency histogram for ``api``: {upper bound s: count}."""
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
        out: dict[float, float] = {}
        prefix = "shazamq_request_latency_seconds_bucket{"
        for line in text.splitlines():
            if line.startswith(prefix) and f'api="{api}"' in line:
                le = line.split('le="', 1)[1].split('"', 1)[0]
                out[float(le)] = float(line.rsplit(" ", 1)[1])
        return out

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait_listening(port: int, proc: subprocess.Popen | None, timeout: float) -> float:
    """Wait until something accepts connections on ``port``; returns the monotonic time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return time.monotonic()
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError("broker exited during start-up") from None
            time.sleep(0.01)
    raise TimeoutError("broker did not start")


def payloads(size: int, compressible: bool, count: int = 4096) -> list[bytes]:
    """Random bytes, or (for the compressed load) JSON-ish text that zstd shrinks ~3.7x.

    ``count`` distinct values are cycled through. There must be more of them than a
    batch holds records, whichever way the records are spread over the partitions:
    a batch that repeats whole records compresses far better (and faster) than real data.
    """
    rng = random.Random(42)
    if not compressible:
        return [rng.randbytes(size) for _ in range(count)]
    words = [
        b"order",
        b"customer",
        b"amount",
        b"currency",
        b"EUR",
        b"status",
        b"shipped",
        b"warehouse",
        b"sku",
        b"quantity",
        b"timestamp",
        b"region",
        b"eu-west",
    ]
    out = []
    for _ in range(count):
        buf = bytearray()
        while len(buf) < size:
            buf += b'"%s":%d,' % (rng.choice(words), rng.randrange(100000))
        out.append(bytes(buf[:size]))
    return out


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    s = sorted(samples)

    def at(q: float) -> float:
        return round(s[min(len(s) - 1, int(q * len(s)))], 3)

    return {
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "p99.9": at(0.999),
        "max": round(s[-1], 3),
        "samples": len(s),
    }


def bucket_percentiles(before: dict[float, float], after: dict[float, float]) -> dict:
    """Percentiles (as histogram bucket upper bounds, in ms) of what a Prometheus
    histogram counted between two scrapes: "p99 <= 5 ms"."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]  # cumulative
    if not counts or counts[-1] <= 0:
        return {}
    total = counts[-1]
    out: dict = {"requests": int(total)}
    for name, q in (("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)):
        for bound, c in zip(bounds, counts, strict=True):
            if c >= q * total:
                out[name] = "<= " + ("inf" if bound == float("inf") else f"{bound * 1000:g}")
                break
    return out


def create_topic(bootstrap: str, topic: str, partitions: int, client: dict | None = None) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap, **(client or {})})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)


@dataclass
class ClientOptions:
    """How the benchmark's clients are driven (the defaults are the issue's load)."""

    per_record: bool = False  # one produce() call per record instead of produce_batch()
    producers: int = 1  # producer instances (each compresses in its own librdkafka thread)
    compression_level: int = -1  # librdkafka's compression.level; -1: the codec's default
    # librdkafka settings every client gets (SASL login with --sasl/--acls)
    client: dict = field(default_factory=dict)


def producer_config(
    bootstrap: str, compression: str, level: int = -1, client: dict | None = None
) -> dict:
    return {
        **(client or {}),
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": False,
        "linger.ms": 5,
        "batch.size": 1_000_000,
        "batch.num.messages": 100_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "queue.buffering.max.messages": 2_000_000,
        "compression.type": compression,
        "compression.level": level,
        "message.max.bytes": 1_000_000,
    }


class Meter:
    """Wall time and CPU seconds (broker and this process) of one phase."""

    def __init__(self, broker_pid: int | None) -> None:
        self.pid = broker_pid

    def __enter__(self) -> Meter:
        self.broker0 = cpu_times(self.pid)
        self.client0 = own_cpu_seconds()
        self.t0 = time.perf_counter()
        return self

    def stop(self, phase: Phase, records: int, nbytes: int) -> None:
        phase.seconds = time.perf_counter() - self.t0
        user, system = cpu_times(self.pid)
        phase.broker_cpu_s = round(user + system - sum(self.broker0), 2)
        phase.broker_sys_s = round(system - self.broker0[1], 2)
        phase.client_cpu_s = round(own_cpu_seconds() - self.client0, 2)
        phase.records_per_s = records / phase.seconds
        phase.mb_per_s = nbytes / phase.seconds / MB

    def __exit__(self, *exc: object) -> None:
        pass


class Profiler:
    """py-spy attached to the broker for one phase; summarised when stopped."""

    def __init__(self, directory: Path | None, pid: int | None, name: str) -> None:
        self.proc: subprocess.Popen | None = None
        self.path: Path | None = None
        if directory is None or pid is None or shutil.which("py-spy") is None:
            return
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{name}.txt"
        self.proc = subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(pid),
                "--rate",
                "250",
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(self.path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # let it attach before the phase starts

    def stop(self) -> dict | None:
        if self.proc is None or self.path is None:
            return None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return summarise_profile(self.path) if self.path.exists() else None


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, _, _line = where.rpartition(":")
    for marker in ("site-packages/", "/shazamq/", "/lib/python"):
        if marker in path:
            path = path[path.index(marker) + len(marker) :]
            break
    return f"{name} ({path})" if path else name


def summarise_profile(path: Path, top: int = 15) -> dict:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame_name(f) for f in stack.split(";") if not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        samples += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n

    def pct(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(100 * n / samples, 1)) for f, n in counter.most_common(top)]

    return {"samples": samples, "own": pct(own), "inclusive": pct(total), "file": str(path)}


def run_produce(
    bootstrap: str, topic: str, load: Load, result: Result, meter: Meter, opts: ClientOptions
) -> None:
    """Produce ``load`` flat out: ``produce_batch`` of 1,000 records at a time, each to the
    next partition (and the next producer), or one ``produce()`` call per record."""
    from confluent_kafka import Producer

    config = producer_config(bootstrap, load.compression, opts.compression_level, opts.client)
    producers = [Producer(config) for _ in range(max(1, opts.producers))]
    values = payloads(load.size, load.compression != "none")
    nvalues = len(values)
    latencies: list[float] = []
    failures: list[str] = []
    sample_every = max(1, load.records // 20_000)
    clock = time.perf_counter

    def sampled(sent_at: float):
        def cb(err, msg) -> None:
            if err is None:
                latencies.append((clock() - sent_at) * 1000)
            else:
                failures.append(str(err))

        return cb

    with meter:
        if opts.per_record:
            p = producers[0]
            produce = p.produce
            poll = p.poll
            for i in range(load.records):
                value = values[i % nvalues]
                while True:
                    try:
                        if i % sample_every == 0:
                            produce(topic, value, partition=i & 3, on_delivery=sampled(clock()))
                        else:
                            produce(topic, value, partition=i & 3)
                        break
                    except BufferError:
                        poll(0.001)
        else:
            chunk = 1000
            chunks = [
                [{"value": values[(k * chunk + j) % nvalues]} for j in range(chunk)]
                for k in range(8)
            ]
            nprod = len(producers)
            sent = 0
            k = 0
            while sent < load.records:
                p = producers[k % nprod]
                batch = chunks[k & 7]
                if load.records - sent < chunk:
                    batch = batch[: load.records - sent]
                batch[0]["callback"] = sampled(clock())
                partition = k & (PARTITIONS - 1)
                queued = p.produce_batch(topic, batch, partition=partition)
                sent += queued
                if queued < len(batch):  # queue full: retry the rest after a poll
                    rest = [m for m in batch if m.pop("_error", None) is not None]
                    while rest:
                        p.poll(0.001)
                        sent += p.produce_batch(topic, rest, partition=partition)
                        rest = [m for m in rest if m.pop("_error", None) is not None]
                k += 1
        remaining = sum(p.flush(120) for p in producers)
        meter.stop(result.produce, load.records, load.records * load.size)
    if remaining or failures:
        raise RuntimeError(f"{remaining} records not delivered; failures: {failures[:3]}")
    result.saturated_latency_ms = percentiles(latencies)


def check_watermarks(bootstrap: str, topic: str, expected: int, client: dict | None = None) -> None:
    """Every record the producer sent is in the log (unsampled delivery errors included)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({**(client or {}), "bootstrap.servers": bootstrap, "group.id": f"check-{topic}"})
    try:
        total = 0
        for i in range(PARTITIONS):
            low, high = c.get_watermark_offsets(TopicPartition(topic, i), timeout=30)
            total += high - low
    finally:
        c.close()
    if total != expected:
        raise RuntimeError(f"{topic} holds {total} records, {expected} were produced")


def run_consume(
    bootstrap: str, topic: str, load: Load, result: Result, meter: Meter, client: dict | None = None
) -> None:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        {
            **(client or {}),
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{topic}",
            "enable.auto.commit": False,
            "fetch.max.bytes": 52_428_800,
            "max.partition.fetch.bytes": 4_194_304,
            "fetch.wait.max.ms": 100,
            "queued.max.messages.kbytes": 1_048_576,
            # librdkafka stops fetching a partition whose local queue holds more than
            # queued.min.messages (100,000) and then waits fetch.queue.backoff.ms (1 s by
            # default) before fetching it again: with 100-byte records that pause, not
            # the broker, set the pace (about 150,000 records/s).
            "fetch.queue.backoff.ms": 10,
        }
    )
    got = 0
    errors = 0
    with meter:
        c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        deadline = time.perf_counter() + 300
        consume = c.consume
        while got < load.records and time.perf_counter() < deadline:
            # consume() returns once num_messages arrived or the timeout passed: never ask
            # for more than what is left, or the last call sits out its whole timeout.
            msgs = consume(num_messages=min(10_000, load.records - got), timeout=1.0)
            bad = sum(1 for m in msgs if m.error() is not None)
            errors += bad
            got += len(msgs) - bad
        meter.stop(result.consume, load.records, load.records * load.size)
    c.close()
    if got < load.records:
        raise RuntimeError(f"consumed {got} of {load.records} ({errors} error events)")


def run_latency(
    bootstrap: str, topic: str, rate: float, seconds: float, size: int, client: dict | None = None
) -> dict:
    """Produce at a fixed rate and report delivery latency percentiles.

    Every millisecond the records due by then go out in one ``produce_batch`` (to the
    partitions in turn); the first record of each carries a delivery callback recording
    the time from its produce call to its delivery report (served by ``poll`` every tick).
    """
    from confluent_kafka import Producer

    p = Producer(producer_config(bootstrap, "none", client=client))
    value = payloads(size, False, 1)[0]
    latencies: list[float] = []
    failures = 0
    clock = time.perf_counter
    produce_batch = p.produce_batch
    poll = p.poll
    plain = [{"value": value} for _ in range(max(1, int(rate / 100)))]

    def cb_at(sent: float):
        def cb(err, msg) -> None:
            nonlocal failures
            if err is None:
                latencies.append((clock() - sent) * 1000)
            else:
                failures += 1

        return cb

    n = int(rate * seconds)
    start = clock()
    sent = 0
    tick = 0
    worst_lag = 0.0  # how far behind its schedule this loop ever fell
    while sent < n:
        tick += 1
        due = min(n, int(tick * rate / 1000))
        if due > sent:
            k = due - sent
            msgs = [{"value": value, "callback": cb_at(clock())}]
            while k - len(msgs) > 0:
                msgs += plain[: k - len(msgs)]
            queued = produce_batch(topic, msgs, partition=tick & (PARTITIONS - 1))
            if queued < len(msgs):
                raise RuntimeError("producer queue full during the latency run")
            sent = due
        poll(0)
        wait = start + tick / 1000 - clock()
        if wait > 0:
            time.sleep(wait)
        elif -wait > worst_lag:
            worst_lag = -wait
    achieved = n / (clock() - start)
    p.flush(60)
    out = percentiles(latencies)
    out["target_rate"] = round(rate)
    out["achieved_rate"] = round(achieved)
    out["failures"] = failures
    out["client_max_lag_ms"] = round(worst_lag * 1000, 1)
    return out


def run(
    loads: list[Load],
    scale: float,
    latency: bool,
    profile_dir: Path | None = None,
    bootstrap: str | None = None,
    opts: ClientOptions | None = None,
    source: Path = ROOT,
    latency_rate: float | None = None,
    latency_seconds: float = 10.0,
    security: Security | None = None,
) -> dict:
    security = security or Security()
    opts = dataclasses.replace(opts or ClientOptions(), client=security.client())
    client = opts.client
    tmp = Path(tempfile.mkdtemp(prefix="shazamq-bench-"))
    broker = (
        BrokerUnderTest(tmp / "data", security.broker_env(), source=source)
        if bootstrap is None
        else None
    )
    if broker is not None:
        bootstrap = broker.bootstrap
    assert bootstrap is not None
    pid = broker.pid if broker is not None else None
    results = []
    profiles: dict[str, dict | None] = {}
    run_id = f"{os.getpid()}-{int(time.time())}"
    report: dict = {"loadavg_start": os.getloadavg(), "security": security.label}
    try:
        if security.acls:
            report["acls"] = install_acls(bootstrap, security)
        report["broker_rss_mb_idle"] = rss_mb(pid)
        for load in loads:
            n = max(1000, int(load.records * scale))
            scaled = Load(load.name, n, load.size, load.compression)
            topic = f"bench-{load.name.lower()}-{run_id}"
            create_topic(bootstrap, topic, PARTITIONS, client)
            r = Result(load.name, n, load.size, load.compression)
            r.loadavg_before = os.getloadavg()
            prof = Profiler(profile_dir, pid, f"{load.name}-produce")
            run_produce(bootstrap, topic, scaled, r, Meter(pid), opts)
            profiles[f"{load.name} produce"] = prof.stop()
            check_watermarks(bootstrap, topic, n, client)
            prof = Profiler(profile_dir, pid, f"{load.name}-consume")
            run_consume(bootstrap, topic, scaled, r, Meter(pid), client)
            profiles[f"{load.name} consume"] = prof.stop()
            r.broker_rss_mb = rss_mb(pid)
            r.loadavg_after = os.getloadavg()
            results.append(r)
        if latency and results:
            first = results[0]
            half = latency_rate or first.produce.records_per_s / 2
            topic = f"bench-latency-{run_id}"
            create_topic(bootstrap, topic, PARTITIONS, client)
            hist0 = broker.request_latency("Produce") if broker is not None else {}
            phase = Phase()
            with Meter(pid) as meter:
                lat = run_latency(
                    bootstrap,
                    topic,
                    half,
                    max(2.0, latency_seconds * scale),
                    first.record_bytes,
                    client,
                )
                meter.stop(phase, 1, 0)
            lat["record_bytes"] = first.record_bytes
            lat["broker_cpu_s"] = phase.broker_cpu_s
            lat["broker_sys_s"] = phase.broker_sys_s
            lat["client_cpu_s"] = phase.client_cpu_s
            lat["seconds"] = round(phase.seconds, 2)
            if broker is not None:
                lat["broker_produce_request_ms"] = bucket_percentiles(
                    hist0, broker.request_latency("Produce")
                )
            lat["loadavg"] = os.getloadavg()
            report["latency_at_half_rate"] = lat
        report["broker_rss_mb_end"] = rss_mb(pid)
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    report.update(
        client={k: v for k, v in asdict(opts).items() if k != "client"},
        results=[asdict(r) for r in results],
        cpus=os.cpu_count(),
        python=sys.version.split()[0],
    )
    if profile_dir is not None:
        report["profiles"] = profiles
    return report


def print_table(report: dict) -> None:
    header = (
        f"{'load':<10} {'records':>9} | {'produce rec/s':>13} {'MB/s':>7} {'cpu b/c':>9} | "
        f"{'consume rec/s':>13} {'MB/s':>7} {'cpu b/c':>9} | {'RSS MB':>6} {'load avg':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in report["results"]:
        pr, co = r["produce"], r["consume"]
        print(
            f"{r['load']:<10} {r['records']:>9} | {pr['records_per_s']:>13,.0f} "
            f"{pr['mb_per_s']:>7,.1f} {pr['broker_cpu_s']:>4.1f}/{pr['client_cpu_s']:<4.1f} | "
            f"{co['records_per_s']:>13,.0f} {co['mb_per_s']:>7,.1f} "
            f"{co['broker_cpu_s']:>4.1f}/{co['client_cpu_s']:<4.1f} | "
            f"{r['broker_rss_mb']:>6} {r['loadavg_before'][0]:>4.2f}-{r['loadavg_after'][0]:<4.2f}"
        )
    print("(cpu b/c: CPU seconds used by the broker / by this client process in the phase)")
    if "latency_at_half_rate" in report:
        lat = report["latency_at_half_rate"]
        print(
            f"\nproduce latency at {lat['achieved_rate']:,} rec/s of {lat['record_bytes']} B "
            f"(target {lat['target_rate']:,}): p50 {lat.get('p50')} ms, "
            f"p99 {lat.get('p99')} ms, p99.9 {lat.get('p99.9')} ms, max {lat.get('max')} ms"
        )
        print(
            f"  CPU seconds in {lat['seconds']} s: broker {lat['broker_cpu_s']} "
            f"({lat['broker_sys_s']} in the kernel), "
            f"client {lat['client_cpu_s']}"
        )
        if lat.get("broker_produce_request_ms"):
            print(f"  broker-side Produce request latency (ms): {lat['broker_produce_request_ms']}")
    print(
        f"broker RSS: idle {report.get('broker_rss_mb_idle')} MB, "
        f"end {report.get('broker_rss_mb_end')} MB"
    )
    for name, prof in (report.get("profiles") or {}).items():
        if not prof:
            continue
        print(f"\nprofile {name} ({prof['samples']} samples, {prof['file']})")
        print("  own time:")
        for frame, p in prof["own"][:10]:
            print(f"    {p:5.1f}%  {frame}")
        print("  inclusive:")
        for frame, p in prof["inclusive"][:12]:
            print(f"    {p:5.1f}%  {frame}")


def median_report(reports: list[dict]) -> dict:
    """Per load and phase, the median (and range) over repeated runs."""
    out: dict = {"runs": len(reports), "loads": {}}
    for i, first in enumerate(reports[0]["results"]):
        entry: dict = {"records": first["records"]}
        for phase in ("produce", "consume"):
            for key in ("records_per_s", "mb_per_s", "broker_cpu_s", "client_cpu_s"):
                values = [rep["results"][i][phase][key] for rep in reports]
                entry[f"{phase}_{key}"] = {
                    "median": round(statistics.median(values), 2),
                    "min": round(min(values), 2),
                    "max": round(max(values), 2),
                }
        entry["broker_rss_mb"] = max(rep["results"][i]["broker_rss_mb"] for rep in reports)
        out["loads"][first["load"]] = entry
    lats = [rep["latency_at_half_rate"] for rep in reports if "latency_at_half_rate" in rep]
    if lats:
        out["latency_at_half_rate"] = {
            key: {
                "median": round(statistics.median(lat[key] for lat in lats), 3),
                "min": round(min(lat[key] for lat in lats), 3),
                "max": round(max(lat[key] for lat in lats), 3),
            }
            for key in ("achieved_rate", "p50", "p99", "p99.9", "broker_cpu_s", "client_cpu_s")
            if all(key in lat for lat in lats)
        }
    loads = [rep["loadavg_start"][0] for rep in reports]
    out["loadavg_1min"] = {"min": min(loads), "max": max(loads)}
    return out


def print_median(summary: dict) -> None:
    print(
        f"\nmedian of {summary['runs']} runs (min-max); 1-minute load average at the starts "
        f"{summary['loadavg_1min']['min']:.2f}-{summary['loadavg_1min']['max']:.2f}"
    )
    header = f"{'load':<10} | {'produce':^38} | {'consume':^38} | {'RSS MB':>6}"
    print(header)
    print("-" * len(header))

    def cell(e: dict, phase: str) -> str:
        rate = e[f"{phase}_records_per_s"]
        mb = e[f"{phase}_mb_per_s"]
        return (
            f"{rate['median']:>10,.0f} rec/s {mb['median']:>6,.0f} MB/s "
            f"({mb['min']:,.0f}-{mb['max']:,.0f})"
        )

    for name, e in summary["loads"].items():
        print(
            f"{name:<10} | {cell(e, 'produce'):>34} | {cell(e, 'consume'):>34} | "
            f"{e['broker_rss_mb']:>6}"
        )
    lat = summary.get("latency_at_half_rate")
    if lat:
        print(
            f"latency run at {lat['achieved_rate']['median']:,.0f} rec/s: "
            f"p50 {lat['p50']['median']} ms, p99 {lat['p99']['median']} ms "
            f"({lat['p99']['min']}-{lat['p99']['max']}), p99.9 {lat['p99.9']['median']} ms"
        )


def compare_report(off: list[dict], on: list[dict]) -> dict:
    """Medians of interleaved ACLs-off and ACLs-on runs, and on / off per load and phase."""
    a, b = median_report(off), median_report(on)
    out: dict = {
        "runs": len(off),
        "off": off[0]["security"],
        "on": on[0]["security"],
        "acls": on[0].get("acls"),
        "loadavg_1min": {
            "min": min(a["loadavg_1min"]["min"], b["loadavg_1min"]["min"]),
            "max": max(a["loadavg_1min"]["max"], b["loadavg_1min"]["max"]),
        },
        "loads": {},
    }
    for name, e_off in a["loads"].items():
        e_on = b["loads"][name]
        entry = {}
        for phase in ("produce", "consume"):
            rate_off = e_off[f"{phase}_records_per_s"]["median"]
            rate_on = e_on[f"{phase}_records_per_s"]["median"]
            entry[phase] = {
                "off_records_per_s": rate_off,
                "on_records_per_s": rate_on,
                "off_mb_per_s": e_off[f"{phase}_mb_per_s"],
                "on_mb_per_s": e_on[f"{phase}_mb_per_s"],
                "off_broker_cpu_s": e_off[f"{phase}_broker_cpu_s"]["median"],
                "on_broker_cpu_s": e_on[f"{phase}_broker_cpu_s"]["median"],
                "on_over_off": round(rate_on / rate_off, 3) if rate_off else None,
            }
        out["loads"][name] = entry
    return out


def print_compare(summary: dict) -> None:
    print(
        f"\nACLs off ({summary['off']}) against on ({summary['on']}, the broker holding "
        f"{summary['acls']}): median of {summary['runs']} interleaved runs each (MB/s range); "
        f"1-minute load average at the starts {summary['loadavg_1min']['min']:.2f}-"
        f"{summary['loadavg_1min']['max']:.2f}"
    )
    header = (
        f"{'load, phase':<18} | {'off rec/s':>10} {'MB/s':>16} | {'on rec/s':>10} "
        f"{'MB/s':>16} | {'on/off':>6} | {'broker CPU s off/on':>19}"
    )
    print(header)
    print("-" * len(header))

    def mb(m: dict) -> str:
        return f"{m['median']:,.0f} ({m['min']:,.0f}-{m['max']:,.0f})"

    for name, entry in summary["loads"].items():
        for phase, e in entry.items():
            print(
                f"{name + ' ' + phase:<18} | {e['off_records_per_s']:>10,.0f} "
                f"{mb(e['off_mb_per_s']):>16} | {e['on_records_per_s']:>10,.0f} "
                f"{mb(e['on_mb_per_s']):>16} | {e['on_over_off']:>6.3f} | "
                f"{e['off_broker_cpu_s']:>9.2f}/{e['on_broker_cpu_s']:<9.2f}"
            )


def add_broker_cmd_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker-cmd",
        metavar="CMD",
        help="command starting the broker (default: python -m shazamq.broker); "
        "configured through SHAZAMQ_* variables like the default",
    )


def set_broker_cmd(cmd: str | None) -> None:
    global BROKER_CMD
    if cmd:
        BROKER_CMD = shlex.split(cmd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every load's record count (default 1.0)"
    )
    parser.add_argument(
        "--only",
        choices=[load.name for load in LOADS],
        action="append",
        help="run only this load (repeatable)",
    )
    parser.add_argument("--no-latency", action="store_true", help="skip the fixed-rate latency run")
    parser.add_argument("--json", type=Path, help="also write the report to this file")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run everything this many times (a fresh broker each time) and add a "
        "table of medians (default 1)",
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        metavar="RECORDS_PER_S",
        help="rate of the latency run (default: half the measured 1 KiB produce rate)",
    )
    parser.add_argument(
        "--latency-seconds",
        type=float,
        default=10.0,
        help="duration of the latency run at --scale 1 (default 10)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample the broker with py-spy during each phase into DIR",
    )
    parser.add_argument(
        "--bootstrap",
        metavar="HOST:PORT",
        help="drive this running broker instead of starting one (no broker CPU/RSS figures then)",
    )
    parser.add_argument(
        "--producers",
        type=int,
        default=1,
        help="producer instances sharing each load (each compresses in its own "
        "librdkafka thread; default 1)",
    )
    parser.add_argument(
        "--compression-level",
        type=int,
        default=-1,
        help="librdkafka compression.level for the zstd load (default -1: zstd's 3)",
    )
    parser.add_argument(
        "--per-record",
        action="store_true",
        help="produce with one produce() call per record instead of "
        "produce_batch() (the Python client then bounds 100 B loads)",
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=ROOT,
        metavar="DIR",
        help="run the broker from this source tree, e.g. a checkout of an "
        "older revision to compare against (default: this one)",
    )
    parser.add_argument(
        "--sasl",
        choices=["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
        help="clients log in over SASL_PLAINTEXT with this mechanism (as user bench)",
    )
    parser.add_argument(
        "--acls",
        type=int,
        default=0,
        metavar="N",
        help="turn authorization on and install N ACLs (at least 8: the benchmark's own "
        "PREFIXED allows and a shared cluster's worth of others); implies --sasl PLAIN",
    )
    parser.add_argument(
        "--acl-compare",
        action="store_true",
        help="alternate runs with authorization off and on (SASL in both, --acls N "
        "ACLs, default 300), --repeat times each, and report the medians side by side",
    )
    add_broker_cmd_option(parser)
    args = parser.parse_args(argv)
    if args.acls and args.acls < 8:
        parser.error("--acls needs at least 8 (the benchmark's own ACLs)")
    if args.acl_compare and args.bootstrap:
        parser.error("--acl-compare starts its own brokers; it cannot use --bootstrap")
    mechanism = args.sasl or ("PLAIN" if args.acls or args.acl_compare else None)
    securities = [Security(mechanism, args.acls)]
    if args.acl_compare:
        securities = [Security(mechanism, 0), Security(mechanism, args.acls or 300)]
    set_broker_cmd(args.broker_cmd)
    loads = [load for load in LOADS if not args.only or load.name in args.only]
    reports = []
    for i in range(max(1, args.repeat) * len(securities)):
        report = run(
            loads,
            args.scale,
            not args.no_latency,
            args.profile,
            args.bootstrap,
            ClientOptions(args.per_record, args.producers, args.compression_level),
            args.source,
            args.latency_rate,
            args.latency_seconds,
            securities[i % len(securities)],
        )
        print(f"[{report['security']}]")
        print_table(report)
        print(json.dumps(report), flush=True)
        reports.append(report)
    if args.acl_compare:
        summary = compare_report(reports[0::2], reports[1::2])
        print_compare(summary)
        print(json.dumps(summary))
        final = {"compare": summary, "reports": reports}
    elif len(reports) > 1:
        summary = median_report(reports)
        print_median(summary)
        print(json.dumps(summary))
        final: dict = {"median": summary, "reports": reports}
    else:
        final = reports[0]
    if args.json:
        args.json.write_text(json.dumps(final, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
