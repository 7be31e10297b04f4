"""Restarts: clean (checkpoints trusted) and unclean (recovery from the recovery point).

Covers: a torn tail (the .log cut mid-batch) loses nothing before the tear and the log
continues at the next offset; garbage after the last batch; deleted index files; a
recovery point in an older segment; corrupt or missing producer snapshots; interrupted
compaction leftovers (.cleaned dropped, .swap completed); the clean-shutdown marker; an
index found corrupt while running; a closed log refusing work.
"""

from __future__ import annotations

import os

import pytest

from shazamq.broker.log import KafkaStorageError, LogConfig, PartitionLog
from shazamq.protocol import records as r

CFG = LogConfig(segment_bytes=2000, index_interval_bytes=150)


def crash(log: PartitionLog) -> None:
    """Drop the log as a kill -9 would: unwritten index entries are lost, nothing is closed
    cleanly, no marker is written."""
    for seg in log.segments:
        seg.close(discard_pending=True)
        for idx in (seg.offset_index, seg.time_index):
            idx._pending.clear()
    log._closed = True


def fill(log: PartitionLog, mk_batch, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        buf = bytearray(mk_batch(2, value=bytes([i % 256]) * 60, ts=1_000 + i))
        log.append(buf)
        out.append(bytes(buf))
    return out


def all_batches(log: PartitionLog) -> list[bytes]:
    out = []
    offset = log.log_start_offset
    while offset < log.log_end_offset:
        data = log.read(offset, 10**6)
        for pos, h in r.iter_batches(data):
            out.append(data[pos : pos + h.size])
            offset = h.next_offset
    return out


def test_clean_restart_trusts_checkpoints(open_log, mk_batch) -> None:
    log = open_log(CFG)
    written = fill(log, mk_batch, 40)
    log.close()
    assert os.path.exists(os.path.join(log.directory, "clean-shutdown"))
    again = open_log(CFG)
    assert again.had_clean_shutdown
    assert again.log_end_offset == 80 and all_batches(again) == written
    # the marker stays until the first change, then goes
    assert os.path.exists(os.path.join(log.directory, "clean-shutdown"))
    again.append(mk_batch(1))
    assert not os.path.exists(os.path.join(log.directory, "clean-shutdown"))


def test_torn_tail_loses_nothing_before_the_tear(open_log, mk_batch) -> None:
    log = open_log(CFG)
    written = fill(log, mk_batch, 40)
    active = log.active_segment.log_path
    crash(log)
    last = r.parse_header(written[-1])
    size = os.path.getsize(active)
    os.truncate(active, size - len(written[-1]) // 2)
    again = open_log(CFG)
    assert not again.had_clean_shutdown
    assert again.log_end_offset == last.base_offset
    assert all_batches(again) == written[:-1]
    info = again.append(mk_batch(1))
    assert info.base_offset == last.base_offset


def test_garbage_after_the_last_batch_is_truncated(open_log, mk_batch) -> None:
    log = open_log(CFG)
    written = fill(log, mk_batch, 10)
    log.close()
    with open(log.active_segment.log_path, "ab") as f:
        f.write(b"\x00garbage" * 20)
    again = open_log(CFG)
    assert not again.had_clean_shutdown
    assert all_batches(again) == written and again.log_end_offset == 20
    assert again.append(mk_batch(1)).base_offset == 20


def test_deleted_indexes_are_rebuilt(open_log, mk_batch) -> None:
    log = open_log(CFG)
    written = fill(log, mk_batch, 60)
    assert len(log.segments) > 2
    log.close()
    for seg in log.segments:
        os.remove(seg.offset_index.path)
    os.remove(log.segments[0].time_index.path)
    again = open_log(CFG)
    assert all_batches(again) == written
    assert all(len(s.offset_index) > 0 for s in again.segments[:-1])
    assert again.offset_for_timestamp(1_030) == (59, 1_030)  # batch 29: 1029, 1030


def test_unclean_recovery_from_an_older_recovery_point(open_log, mk_batch) -> None:
    log = open_log(CFG)
    written = fill(log, mk_batch, 30)
    log.flush()
    assert log.recovery_point == 60
    written += fill(log, mk_batch, 30)
    crash(log)
    # a corrupt byte in the segment holding offset 70: everything from there is lost
    again_dir = log.directory
    seg_path = None
    for seg in log.segments:
        if seg.base_offset <= 70 < seg.next_offset:
            seg_path = seg.log_path
            base = seg.base_offset
    assert seg_path is not None
    with open(seg_path, "r+b") as f:
        data = f.read()
        pos = 0
        while True:
            h = r.parse_header(data, pos)
            if h.base_offset <= 70 <= h.last_offset:
                break
            pos += h.size
        f.seek(pos + 70)
        f.write(b"\xee")
    again = open_log(CFG)
    assert again.directory == again_dir
    assert again.log_end_offset == 70
    assert all_batches(again) == written[:35]
    assert again.segments[-1].base_offset == base
    assert again.append(mk_batch(1)).base_offset == 70


def test_unclean_restart_keeps_everything_written(open_log, mk_batch) -> None:
    log = open_log(CFG)
    written = fill(log, mk_batch, 50)
    crash(log)
    again = open_log(CFG)
    assert all_batches(again) == written
    crash(again)
    third = open_log(CFG)
    assert third.log_end_offset == 100 and all_batches(third) == written


def test_corrupt_snapshot_falls_back_to_replay(open_log, mk_batch) -> None:
    log = open_log(CFG)
    log.append(mk_batch(2, producer_id=7, producer_epoch=0, base_sequence=0))
    fill(log, mk_batch, 40)
    log.append(mk_batch(2, producer_id=7, producer_epoch=0, base_sequence=2))
    log.close()
    for name in os.listdir(log.directory):
        if name.endswith(".snapshot"):
            with open(os.path.join(log.directory, name), "r+b") as f:
                f.seek(12)
                f.write(b"\xff\xff")
    again = open_log(CFG)
    entry = again.producer_state.entries[7]
    assert entry.last_seq == 3 and entry.epoch == 0
    dup = again.append(mk_batch(2, producer_id=7, producer_epoch=0, base_sequence=2))
    assert dup.duplicate and dup.base_offset == 82


def test_interrupted_compaction_leftovers(open_log, mk_batch) -> None:
    log = open_log(CFG)
    written = fill(log, mk_batch, 40)
    log.close()
    d = log.directory
    first = log.segments[0]
    # an unfinished cleaning: .cleaned files are dropped
    with open(os.path.join(d, os.path.basename(first.log_path) + ".cleaned"), "wb") as f:
        f.write(b"partial")
    # a finished one: the .swap replaces the segments it covers (here: an identical copy)
    with open(first.log_path, "rb") as f:
        content = f.read()
    with open(os.path.join(d, os.path.basename(first.log_path) + ".swap"), "wb") as f:
        f.write(content)
    os.remove(first.log_path)
    os.remove(first.offset_index.path)
    again = open_log(CFG)
    names = os.listdir(d)
    assert not any(n.endswith((".cleaned", ".swap")) for n in names)
    assert all_batches(again) == written


def test_an_index_found_corrupt_while_running_is_rebuilt(open_log, mk_batch) -> None:
    log = open_log(CFG)
    written = fill(log, mk_batch, 60)
    log.close()
    first = log.segments[0]
    with open(first.offset_index.path, "ab") as f:
        f.write(b"\x01\x02\x03")  # no longer a whole number of entries
    with open(first.time_index.path, "ab") as f:
        f.write(b"\x01")
    again = open_log(CFG)
    assert again.had_clean_shutdown  # sealed indexes are only read when first needed
    assert all_batches(again) == written
    assert again.offset_for_timestamp(1_001) == (1, 1_001)
    assert os.path.getsize(first.offset_index.path) % 8 == 0
    assert os.path.getsize(first.time_index.path) % 12 == 0


def test_closed_log_refuses_reads_and_appends(open_log, mk_batch) -> None:
    log = open_log(CFG)
    log.append(mk_batch(1))
    log.close()
    with pytest.raises(KafkaStorageError) as info:
        log.read(0, 100)
    assert info.value.error_code == 56
    with pytest.raises(KafkaStorageError):
        log.append(mk_batch(1))
