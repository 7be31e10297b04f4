"""Deleting, recreating and quarantining partition folders; atomic, synced checkpoints.

* A deleted partition's folder is renamed ``<topic>-<partition>.<topic id>-delete`` at
  once (and the data directory fsynced), so a topic created again under the same name
  gets a new, empty folder, with or without a restart in between.
* At start, folders the metadata does not know (unknown topic, index beyond the topic,
  another topic id) are renamed ``-stray`` and never opened; a log open under an old id
  is quarantined when the partition is asked for under a new one.
* A log that cannot be opened is offline; the others load.
* Checkpoints are replaced atomically: a crash between writing the temporary file and
  the rename leaves the old checkpoint whole; the file and its directory are fsynced.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from shazamq.broker.cluster import hw_checkpoint
from shazamq.broker.log import LogConfig, LogManager, PartitionLog
from shazamq.broker.log.errors import KafkaStorageError
from shazamq.broker.log.partition_log import (
    LOG_START_FILE,
    RECOVERY_POINT_FILE,
    write_file_atomically,
)

CFG = LogConfig(file_delete_delay_ms=0)
OLD, NEW = uuid.uuid4(), uuid.uuid4()


def _fill(log: PartitionLog, mk_batch, n: int = 5) -> None:
    for _ in range(n):
        log.append(mk_batch(1, value=b"old"))


def test_delete_renames_at_once_and_recreate_is_empty(tmp_path, mk_batch) -> None:
    data = str(tmp_path)
    mgr = LogManager(data, CFG)
    _fill(mgr.get_or_create("t", 0, OLD), mk_batch)
    assert mgr.delete_partition("t", 0)
    names = os.listdir(data)
    assert f"t-0.{OLD.hex}-delete" in names and "t-0" not in names
    fresh = mgr.get_or_create("t", 0, NEW)  # before any maintenance pass
    assert fresh.log_end_offset == 0 and fresh.topic_id == NEW
    mgr.run_maintenance(now_ms=10**13)
    assert sorted(os.listdir(data)) == ["t-0"]
    mgr.close()


def test_detached_name_is_freed_by_a_create_before_the_rename_runs(tmp_path, mk_batch) -> None:
    data = str(tmp_path)
    mgr = LogManager(data, CFG)
    _fill(mgr.get_or_create("t", 0, OLD), mk_batch)
    assert mgr.detach("t", 0)  # the event loop's half of a delete
    fresh = mgr.get_or_create("t", 0, NEW)
    assert fresh.log_end_offset == 0
    assert mgr.delete_detached() == 0  # already renamed by the create
    assert f"t-0.{OLD.hex}-delete" in os.listdir(data)
    mgr.close()


def test_crash_after_delete_never_brings_the_old_data_back(tmp_path, mk_batch) -> None:
    data = str(tmp_path)
    mgr = LogManager(data, CFG)
    _fill(mgr.get_or_create("t", 0, OLD), mk_batch)
    mgr.delete_partition("t", 0)
    # crash: no close, no maintenance; the metadata no longer knows "t"
    again = LogManager(data, CFG, expected=lambda t, p: None)
    assert again.partitions() == []
    fresh = again.get_or_create("t", 0, NEW)
    assert fresh.log_end_offset == 0
    assert not any(n.endswith("-delete") for n in os.listdir(data))
    again.close()


def test_unknown_folders_are_quarantined_at_start(tmp_path, mk_batch) -> None:
    data = str(tmp_path)
    mgr = LogManager(data, CFG)
    for topic, part, tid in (("keep", 0, NEW), ("gone", 0, OLD), ("keep", 5, NEW), ("re", 0, OLD)):
        _fill(mgr.get_or_create(topic, part, tid), mk_batch)
    mgr.close()
    known = {("keep", 0): NEW, ("re", 0): NEW}  # "re" was deleted and created again
    again = LogManager(data, CFG, expected=lambda t, p: known.get((t, p)))
    assert again.partitions() == [("keep", 0)]
    names = sorted(os.listdir(data))
    assert f"gone-0.{OLD.hex}-stray" in names
    assert f"keep-5.{NEW.hex}-stray" in names
    assert f"re-0.{OLD.hex}-stray" in names
    assert again.get_or_create("re", 0, NEW).log_end_offset == 0
    again.close()


def test_open_log_under_an_old_id_is_quarantined(tmp_path, mk_batch) -> None:
    # a cluster member loads every folder before the metadata is replayed
    data = str(tmp_path)
    mgr = LogManager(data, CFG)
    _fill(mgr.get_or_create("t", 0, OLD), mk_batch)
    mgr.close()
    again = LogManager(data, CFG)
    assert again.get("t", 0).log_end_offset == 5
    fresh = again.get_or_create("t", 0, NEW)
    assert fresh.log_end_offset == 0 and fresh.topic_id == NEW
    assert f"t-0.{OLD.hex}-stray" in os.listdir(data)
    again.close()


def test_a_log_that_cannot_be_opened_is_offline(tmp_path, mk_batch) -> None:
    data = str(tmp_path)
    mgr = LogManager(data, CFG)
    for p in range(3):
        _fill(mgr.get_or_create("t", p, OLD), mk_batch)
    mgr.close()
    seg = Path(data, "t-1", "0" * 20 + ".log")
    seg.unlink()
    seg.mkdir()
    again = LogManager(data, CFG)
    assert sorted(again.partitions()) == [("t", 0), ("t", 2)]
    assert ("t", 1) in again.offline
    with pytest.raises(KafkaStorageError):
        again.get_or_create("t", 1, OLD)
    assert seg.is_dir()  # nothing was replaced over it
    again.close()


def test_recovered_logs_hold_one_descriptor(tmp_path, mk_batch) -> None:
    data = str(tmp_path)
    cfg = LogConfig(segment_bytes=300, index_interval_bytes=1)
    mgr = LogManager(data, cfg)
    logs = [mgr.get_or_create("t", p, OLD) for p in range(4)]
    for log in logs:
        _fill(log, mk_batch, 20)
        log.flush()
    # crash: reopen without close; every partition recovers
    before = len(os.listdir("/proc/self/fd"))
    again = LogManager(data, cfg)
    opened = len(os.listdir("/proc/self/fd")) - before
    assert all(not log.had_clean_shutdown for log in again)
    assert opened <= 4
    for log in again:
        assert log.read(0, 1 << 20)  # sealed segments reopen on demand
    again.close()


# ------------------------------------------------------------------ checkpoints


def _record_fsyncs(monkeypatch) -> list[str]:
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def test_crash_between_write_and_rename_keeps_the_old_checkpoint(tmp_path, monkeypatch) -> None:
    path = tmp_path / "cp"
    write_file_atomically(str(path), b"old\n")

    def crash(*_args: object) -> None:
        raise OSError("killed before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_file_atomically(str(path), b"new\n")
    assert path.read_bytes() == b"old\n"


def test_atomic_write_syncs_the_file_then_the_directory(tmp_path, monkeypatch) -> None:
    synced = _record_fsyncs(monkeypatch)
    write_file_atomically(str(tmp_path / "cp"), b"x")
    assert synced == [str(tmp_path / "cp.tmp"), str(tmp_path)]


def test_partition_checkpoints_survive_a_crash_before_rename(tmp_path, mk_batch) -> None:
    d = str(tmp_path / "t-0")
    log = PartitionLog.open(d, CFG, topic_id=OLD)
    _fill(log, mk_batch, 10)
    log.flush()
    log.delete_records_before(4)
    log.flush()
    cps = {n: Path(d, n).read_bytes() for n in (RECOVERY_POINT_FILE, LOG_START_FILE)}
    real = os.replace

    def crash(src: str, dst: str) -> None:
        if src.endswith(".tmp"):
            raise OSError("killed before the rename")
        real(src, dst)

    os.replace = crash  # type: ignore[assignment]
    try:
        log.append(mk_batch(1))
        with pytest.raises(KafkaStorageError):  # the log goes offline
            log.flush()
    finally:
        os.replace = real  # type: ignore[assignment]
    assert {n: Path(d, n).read_bytes() for n in cps} == cps
    reopened = PartitionLog.open(d, CFG, topic_id=OLD)  # a restart after the crash
    assert reopened.log_start_offset == 4 and reopened.log_end_offset == 11
    reopened.close()


def test_unsynced_checkpoints_are_synced_before_the_recovery_point(
    tmp_path, mk_batch, monkeypatch
) -> None:
    d = str(tmp_path / "t-0")
    log = PartitionLog.open(d, CFG, topic_id=OLD)
    _fill(log, mk_batch, 10)
    log.flush()
    log.delete_records_before(3)  # on the event loop: replaced, not fsynced yet
    log.append(mk_batch(1), leader_epoch=7)  # a new leader epoch: the same
    synced = _record_fsyncs(monkeypatch)
    log.flush()
    rp = synced.index(os.path.join(d, RECOVERY_POINT_FILE + ".flush.tmp"))
    before = synced[:rp]
    assert os.path.join(d, LOG_START_FILE) in before
    assert os.path.join(d, "leader-epoch-checkpoint") in before
    assert d in before  # their renames too
    assert synced[-1] == d  # and the recovery point's own rename
    log.close()


def test_hw_checkpoint_is_atomic_and_synced(tmp_path, monkeypatch) -> None:
    hw_checkpoint.write(tmp_path, {("t", 0): 5})
    synced = _record_fsyncs(monkeypatch)
    hw_checkpoint.write(tmp_path, {("t", 0): 9})
    assert synced == [str(tmp_path / (hw_checkpoint.FILE_NAME + ".tmp")), str(tmp_path)]
    assert hw_checkpoint.read(tmp_path) == {("t", 0): 9}
