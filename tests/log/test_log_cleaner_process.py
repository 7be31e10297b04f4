"""Compaction in a worker process.

Covers: the worker process writes exactly the bytes the in-process core writes (logs with
keys, tombstones, committed and aborted transactions, over two cleanings); a worker killed
before or during a pass leaves the log intact (nothing half-swapped, no ``.cleaned``
files) and the next pass starts a new worker and cleans; closing the log manager, and
stopping a broker, ends the worker process.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures.process import BrokenProcessPool

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shazamq.broker.log import AppendOrigin, LogCleaner, LogConfig, LogManager, PartitionLog
from shazamq.protocol import records as r

COMPACT = LogConfig(
    cleanup_policy=("compact",),
    segment_bytes=1500,
    index_interval_bytes=200,
    delete_retention_ms=1_000,
    file_delete_delay_ms=0,
)
SEGMENT_EXTS = (".log", ".index", ".timeindex", ".txnindex")


@pytest.fixture(scope="module")
def worker_cleaner():
    cleaner = LogCleaner(worker_process=True)
    yield cleaner
    cleaner.close()


def contents(log: PartitionLog) -> list[tuple[int, bytes | None, bytes | None]]:
    out = []
    offset = log.log_start_offset
    while offset < log.log_end_offset:
        data = log.read(offset, 10**6)
        if not data:
            break
        for pos, h in r.iter_batches(data):
            r.validate_batch(data, pos, h, from_client=False)
            if not h.is_control:
                for rec in r.iter_records(data[pos : pos + h.size]):
                    out.append((h.base_offset + rec.offset_delta, rec.key, rec.value))
            offset = h.next_offset
    return out


def latest(log: PartitionLog) -> dict[bytes | None, tuple[int, bytes | None]]:
    """What a consumer of a compacted topic ends up with: the last record per key."""
    return {k: (o, v) for o, k, v in contents(log)}


def segment_files(directory: str) -> dict[str, bytes]:
    out = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(SEGMENT_EXTS):
            with open(os.path.join(directory, name), "rb") as f:
                out[name] = f.read()
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still running"
        time.sleep(0.02)


_key = st.sampled_from([b"a", b"b", b"c", b"d", b"e"])
_value = st.one_of(st.none(), st.binary(max_size=30))
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.lists(st.tuples(_key, _value), min_size=1, max_size=3)),
        st.tuples(
            st.sampled_from(["commit", "abort"]),
            st.lists(st.tuples(_key, _value), min_size=1, max_size=3),
        ),
    ),
    min_size=1,
    max_size=40,
)


def fill(log: PartitionLog, ops: list[tuple[str, list[tuple[bytes, bytes | None]]]]) -> None:
    seqs: dict[int, int] = {}
    for i, (kind, pairs) in enumerate(ops):
        records = [r.Record(key=k, value=v, offset_delta=j) for j, (k, v) in enumerate(pairs)]
        if kind == "put":
            log.append(r.build_batch(records, base_timestamp=1_000 + i), now_ms=1_000)
            continue
        pid = 7 if kind == "commit" else 8
        seq = seqs.get(pid, 0)
        seqs[pid] = seq + len(records)
        data = r.build_batch(
            records,
            producer_id=pid,
            producer_epoch=0,
            base_sequence=seq,
            transactional=True,
            base_timestamp=1_000 + i,
        )
        log.append(data, now_ms=1_000)
        marker = r.build_control_batch(kind == "commit", pid, 0, 0, 1_000 + i)
        log.append(marker, origin=AppendOrigin.COORDINATOR, now_ms=1_000)
    log.roll()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=_ops)
def test_worker_process_writes_the_same_bytes(tmp_path_factory, worker_cleaner, ops) -> None:
    logs = []
    try:
        for _ in range(2):
            d = str(tmp_path_factory.mktemp("same") / "t-0")
            log = PartitionLog.open(d, COMPACT, topic_id=None)
            logs.append(log)
            fill(log, ops)
        local, remote = logs
        in_process = LogCleaner()
        # the second cleaning is past the tombstones' and markers' delete horizons
        for now in (2_000, 10_000):
            a = in_process.clean(local, now_ms=now, force=True)
            b = worker_cleaner.clean(remote, now_ms=now, force=True)
            assert a == b
            assert segment_files(local.directory) == segment_files(remote.directory)
            assert contents(local) == contents(remote)
            assert not any(n.endswith(".cleaned") for n in os.listdir(remote.directory))
    finally:
        for log in logs:
            log.close()


def _filled(open_log, name: str, n: int = 400) -> PartitionLog:
    log = open_log(COMPACT, name=name)
    for i in range(n):
        data = r.build_batch(
            [r.Record(key=b"k%d" % (i % 13), value=b"v%d-" % i + b"x" * 30)],
            base_timestamp=1_000,
        )
        log.append(data, now_ms=1_000)
    log.roll()
    return log


def test_a_killed_worker_leaves_the_log_intact_and_the_next_pass_cleans(open_log) -> None:
    twin = _filled(open_log, "twin-0")
    LogCleaner().clean(twin, now_ms=2_000, force=True)
    log = _filled(open_log, "t-0")
    before = contents(log)
    checkpoint = log.read_cleaner_checkpoint()
    cleaner = LogCleaner(worker_process=True)
    try:
        assert cleaner.worker_pid() is None  # started only when a pass needs it
        cleaner._worker_pool()
        pid = cleaner.worker_pid()
        assert pid is not None and alive(pid)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(BrokenProcessPool):
            cleaner.clean(log, now_ms=2_000, force=True)
        assert contents(log) == before
        assert log.read_cleaner_checkpoint() == checkpoint
        assert not any(n.endswith(".cleaned") for n in os.listdir(log.directory))

        stats = cleaner.clean(log, now_ms=2_000, force=True)  # a new worker
        assert stats is not None and stats.segments_out > 0
        assert cleaner.worker_pid() not in (None, pid)
        assert contents(log) == contents(twin)
    finally:
        cleaner.close()


def test_a_worker_killed_mid_pass_leaves_a_loadable_log(open_log, tmp_path) -> None:
    twin = _filled(open_log, "twin-0", n=1_500)
    LogCleaner().clean(twin, now_ms=2_000, force=True)
    log = _filled(open_log, "t-0", n=1_500)
    before = latest(log)
    cleaner = LogCleaner(worker_process=True)
    cleaner._worker_pool()
    pid = cleaner.worker_pid()
    assert pid is not None
    stop = threading.Event()

    def kill_when_writing() -> None:  # at the first .cleaned file: a group being written
        while not stop.is_set():
            if any(n.endswith(".cleaned") for n in os.listdir(log.directory)):
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.0005)

    killer = threading.Thread(target=kill_when_writing)
    killer.start()
    try:
        with pytest.raises(BrokenProcessPool):  # the pass has ~70 groups to write
            cleaner.clean(log, now_ms=2_000, force=True)
        stop.set()
        killer.join()
        assert latest(log) == before
        assert not any(n.endswith(".cleaned") for n in os.listdir(log.directory))
        directory = log.directory
        log.close()
        log = open_log(COMPACT, name=os.path.basename(directory))
        assert latest(log) == before
        cleaner.clean(log, now_ms=2_000, force=True)
        assert contents(log) == contents(twin)
    finally:
        stop.set()
        cleaner.close()


def test_closing_the_log_manager_ends_the_worker(tmp_path) -> None:
    mgr = LogManager(str(tmp_path / "data"), LogConfig(file_delete_delay_ms=0))
    try:
        log = mgr.get_or_create("compacted", 0, config=COMPACT)
        for i in range(100):
            log.append(r.build_batch([r.Record(key=b"k%d" % (i % 3), value=b"v" * 40)]))
        log.roll()
        log.high_watermark = log.log_end_offset
        assert mgr.cleaner.worker_pid() is None
        report = mgr.run_maintenance()
        assert report.logs_compacted == 1, report.errors
        pid = mgr.cleaner.worker_pid()
        assert pid is not None and alive(pid)
    finally:
        mgr.close()
    wait_gone(pid)
    assert mgr.cleaner.worker_pid() is None


async def test_stopping_the_broker_ends_the_worker(tmp_path) -> None:
    import asyncio

    from shazamq.broker.app import Broker
    from shazamq.config import BrokerConfig, BrokerSection, MetricsConfig

    config = BrokerConfig(
        broker=BrokerSection(host="127.0.0.1", port=0, data_dir=str(tmp_path / "data")),
        metrics=MetricsConfig(enabled=False),
    )
    broker = Broker(config)
    await broker.start()
    loop = asyncio.get_running_loop()
    try:
        log = broker.logs.get_or_create("compacted", 0, config=COMPACT)
        for i in range(100):
            log.append(r.build_batch([r.Record(key=b"k%d" % (i % 3), value=b"v" * 40)]))
        log.roll()
        log.high_watermark = log.log_end_offset
        stats = await loop.run_in_executor(None, lambda: broker.logs.cleaner.clean(log, force=True))
        assert stats is not None and stats.segments_out > 0
        pid = await loop.run_in_executor(None, broker.logs.cleaner.worker_pid)
        assert pid is not None and alive(pid)
    finally:
        await broker.stop()
    wait_gone(pid)
