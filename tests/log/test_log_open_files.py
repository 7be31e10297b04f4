"""The open-file budget of segment logs, and the recovery of many unclean logs at start.

* A random walk over many partitions with a budget far below their number: appends,
  reads, rolls, flushes, clean and unclean restarts in any order; every read returns what
  was appended and the descriptors open on the partitions' files never exceed the budget.
* Readers on threads racing appends and evictions read only their own partition's bytes
  (a descriptor is never closed, and its number reused, under a read).
* Starting a manager over hundreds of unclean logs fsyncs no file (two syncfs per log
  dir instead), keeps the data and moves every recovery point to the log end.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from shazamq.broker.log import LogConfig, LogManager, PartitionLog
from shazamq.broker.log import manager as manager_module
from shazamq.broker.log import partition_log as partition_log_module
from shazamq.broker.log.open_files import BUDGET, MIN_LIMIT, FileBudget, derived_limit
from shazamq.protocol import records as r

CFG = LogConfig(segment_bytes=600, index_interval_bytes=64, segment_index_bytes=4096)
PARTITIONS = 40
LIMIT = MIN_LIMIT


def _fds_under(root: str) -> int:
    """Descriptors of this process open on files under ``root``."""
    n = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith(root):
            n += 1
    return n


def _batch(tag: int, n: int = 2) -> bytes:
    value = tag.to_bytes(4, "big") * 8
    return r.build_batch(
        [r.Record(offset_delta=i, key=b"%d" % i, value=value) for i in range(n)],
        base_timestamp=1_000 + tag,
    )


@pytest.fixture
def small_budget() -> Iterator[FileBudget]:
    before = BUDGET.limit
    BUDGET.set_limit(LIMIT)
    try:
        yield BUDGET
    finally:
        BUDGET.set_limit(before)


def _crash(log: PartitionLog) -> None:
    for seg in log.segments:
        seg.close(discard_pending=True)
    log._closed = True


class ManyPartitions(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.before = BUDGET.limit
        BUDGET.set_limit(LIMIT)
        self.tmp = tempfile.mkdtemp(prefix="shazamq-fds-")
        self.logs = [self._open(i) for i in range(PARTITIONS)]
        # per partition: base offset -> batch bytes as stored
        self.batches: list[dict[int, bytes]] = [{} for _ in range(PARTITIONS)]
        self.tag = 0

    def _open(self, i: int) -> PartitionLog:
        return PartitionLog.open(os.path.join(self.tmp, f"p-{i}"), CFG)

    def teardown(self) -> None:
        for log in self.logs:
            if not log.closed:
                log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        BUDGET.set_limit(self.before)

    @rule(i=st.integers(0, PARTITIONS - 1), n=st.integers(1, 3))
    def append(self, i: int, n: int) -> None:
        self.tag += 1
        payload = bytearray(_batch(self.tag, n))
        info = self.logs[i].append(payload, leader_epoch=0)
        self.batches[i][info.base_offset] = bytes(payload)

    @rule(data=st.data(), i=st.integers(0, PARTITIONS - 1))
    def read(self, data: st.DataObject, i: int) -> None:
        stored = self.batches[i]
        if not stored:
            assert self.logs[i].read(0, 1000) == b""
            return
        base = data.draw(st.sampled_from(sorted(stored)))
        got = self.logs[i].read(base, 1)
        assert got == stored[base]

    @rule(i=st.integers(0, PARTITIONS - 1))
    def roll(self, i: int) -> None:
        self.logs[i].roll()

    @rule(i=st.integers(0, PARTITIONS - 1))
    def flush(self, i: int) -> None:
        self.logs[i].flush()

    @rule(i=st.integers(0, PARTITIONS - 1), clean=st.booleans())
    def restart(self, i: int, clean: bool) -> None:
        log = self.logs[i]
        if clean:
            log.close()
        else:
            _crash(log)
        self.logs[i] = self._open(i)

    @invariant()
    def within_budget(self) -> None:
        assert BUDGET.open_count <= LIMIT
        assert _fds_under(self.tmp) <= LIMIT


TestManyPartitions = ManyPartitions.TestCase
TestManyPartitions.settings = settings(
    max_examples=8,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_readers_racing_evictions_read_their_own_partition(tmp_path, small_budget) -> None:
    logs = [PartitionLog.open(str(tmp_path / f"p-{i}"), CFG) for i in range(PARTITIONS)]
    stored: list[list[bytes]] = [[] for _ in logs]
    for round_ in range(3):
        for i, log in enumerate(logs):
            batch = bytearray(_batch(i * 100 + round_))
            log.append(batch, leader_epoch=0)  # writes the offsets into the buffer
            stored[i].append(bytes(batch))
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                i = rng.randrange(PARTITIONS)
                k = rng.randrange(3)
                got = logs[i].read(k * 2, 1)  # two records a batch
                assert got == stored[i][k], f"partition {i} batch {k}"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    try:
        rng = random.Random(1)
        for n in range(400):  # appends and reopens on this thread, evicting others
            i = rng.randrange(PARTITIONS)
            logs[i].append(bytearray(_batch(10_000 + n)), leader_epoch=0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert small_budget.evictions > 0
    assert small_budget.open_count <= LIMIT
    for log in logs:
        log.close()
    assert _fds_under(str(tmp_path)) == 0


def test_a_log_closed_while_a_read_pins_it_closes_at_the_last_release(tmp_path) -> None:
    log = PartitionLog.open(str(tmp_path / "p-0"), CFG)
    log.append(bytearray(_batch(1)), leader_epoch=0)
    seg = log.active_segment
    fd = BUDGET.acquire(seg)
    seg.close()
    assert os.pread(fd, 8, 0) == (0).to_bytes(8, "big")  # still this file's descriptor
    BUDGET.release(seg)
    assert not seg.holds_descriptor
    with pytest.raises(OSError):
        os.fstat(fd)
    log.close()


def test_the_derived_budget_leaves_room_for_connections() -> None:
    assert derived_limit(20_000) == 15_000
    assert derived_limit(1024) == 512
    assert derived_limit(40) == 20
    assert derived_limit(20) == MIN_LIMIT


def _unclean_logs(root: str, n: int) -> dict[str, bytes]:
    """``n`` partitions each with a few batches appended and no clean shutdown."""
    expected = {}
    for i in range(n):
        d = os.path.join(root, f"t-{i}")
        log = PartitionLog.open(d, CFG)
        batch = bytearray(_batch(i))
        log.append(batch, leader_epoch=0)
        log.flush()
        batch2 = bytearray(_batch(i + 1_000))
        log.append(batch2, leader_epoch=0)  # not flushed: recovered at start
        _crash(log)
        expected[d] = bytes(batch + batch2)
    return expected


def _count_fsyncs(monkeypatch) -> dict[str, int]:
    calls = {"fsync": 0, "syncfs": 0}
    real_fsync, real_sync_fs = os.fsync, partition_log_module.sync_filesystem

    def fsync(fd: int) -> None:
        calls["fsync"] += 1
        real_fsync(fd)

    def sync_fs(path: str) -> None:
        calls["syncfs"] += 1
        real_sync_fs(path)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(manager_module, "sync_filesystem", sync_fs)
    return calls


def test_an_unclean_start_syncs_the_log_dir_not_each_partition(tmp_path, monkeypatch) -> None:
    root = str(tmp_path / "data")
    expected = _unclean_logs(root, 200)
    calls = _count_fsyncs(monkeypatch)
    manager = LogManager(root, CFG)
    try:
        assert calls == {"fsync": 0, "syncfs": 2}
        assert not manager.offline
        for d, data in expected.items():
            log = manager.get("t", int(d.rsplit("-", 1)[1]))
            assert log is not None and not log.recovery_pending
            assert log.read(0, 10_000) == data
            assert log.recovery_point == log.log_end_offset == 4
            with open(os.path.join(d, "recovery-point-offset-checkpoint")) as f:
                assert f.read().split()[-1] == "4"
        # nothing is left for the first flush to sync but what it writes itself
        assert _fds_under(root) <= BUDGET.limit
    finally:
        manager.close()


def test_a_failed_log_dir_sync_falls_back_to_each_log(tmp_path, monkeypatch) -> None:
    root = str(tmp_path / "data")
    expected = _unclean_logs(root, 5)
    calls = _count_fsyncs(monkeypatch)

    def broken(path: str) -> None:
        raise OSError(5, "Input/output error", path)

    monkeypatch.setattr(manager_module, "sync_filesystem", broken)
    manager = LogManager(root, CFG)
    try:
        assert calls["fsync"] >= 5 * 4  # each log syncs its own files
        for d, data in expected.items():
            log = manager.get("t", int(d.rsplit("-", 1)[1]))
            assert log is not None and log.read(0, 10_000) == data
            assert log.recovery_point == 4
    finally:
        manager.close()


def test_a_log_opened_alone_is_durable_when_open_returns(tmp_path) -> None:
    expected = _unclean_logs(str(tmp_path), 1)
    ((d, data),) = expected.items()
    log = PartitionLog.open(d, CFG)
    assert not log.recovery_pending and log.recovery_point == 4
    assert log.read(0, 10_000) == data
    log.close()
