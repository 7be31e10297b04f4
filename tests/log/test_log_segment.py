"""Segments and their indexes.

Covers: OffsetIndex/TimeIndex lookups (largest entry <= target), big-endian files,
truncation and reload; segment append (one file, sparse index entries), reads that start
mid-batch, honour max_bytes (at least one batch unless strict) and an upper bound,
timestamp search, recovery truncating a corrupt tail and rebuilding indexes, truncate_to,
suffix changes.
"""

from __future__ import annotations

import os
import struct

import pytest

from shazamq.broker.log.index import AbortedTxn, OffsetIndex, TimeIndex, TransactionIndex
from shazamq.broker.log.segment import LogSegment, segment_file_name
from shazamq.protocol import records as r


def test_offset_index_lookup_and_file_format(tmp_path) -> None:
    path = str(tmp_path / "00000000000000000100.index")
    idx = OffsetIndex(path, 100, 1000, new=True)
    for i in range(5):
        idx.append(100 + i * 10, i * 1000)
    assert idx.lookup(99) == (100, 0)
    assert idx.lookup(100) == (100, 0)
    assert idx.lookup(125) == (120, 2000)
    assert idx.lookup(10**9) == (140, 4000)
    assert idx.floor_by_position(2500, 10**9) == (120, 2000)
    assert idx.floor_by_position(10**9, 125) == (120, 2000)
    with pytest.raises(ValueError):
        idx.append(140, 5000)
    idx.close()
    with open(path, "rb") as f:
        assert f.read()[:16] == struct.pack(">iiii", 0, 0, 10, 1000)
    again = OffsetIndex(path, 100, 1000, new=False)
    assert len(again) == 5 and again.lookup(131) == (130, 3000)
    again.truncate_to(130)
    assert again.last_entry == (120, 2000)
    assert os.path.getsize(path) == 3 * 8
    again.truncate_to_position(1000)
    assert len(again) == 1


def test_time_index_is_monotonic(tmp_path) -> None:
    path = str(tmp_path / "x.timeindex")
    idx = TimeIndex(path, 0, 1000, new=True)
    idx.maybe_append(100, 0)
    idx.maybe_append(100, 5)  # not larger: ignored
    idx.maybe_append(90, 6)  # smaller: ignored
    idx.maybe_append(200, 10)
    assert len(idx) == 2
    assert idx.lookup(50) == (-1, 0)
    assert idx.lookup(150) == (100, 0)
    assert idx.last_entry == (200, 10)
    idx.flush()
    assert TimeIndex(path, 0, 1000, new=False).lookup(10**6) == (200, 10)
    idx.truncate_to(10)
    assert idx.last_entry == (100, 0)


def test_transaction_index(tmp_path) -> None:
    path = str(tmp_path / "x.txnindex")
    idx = TransactionIndex(path, new=True)
    assert not os.path.exists(path)
    idx.append(AbortedTxn(1, 0, 10, 11))
    idx.append(AbortedTxn(2, 5, 20, 21))
    assert os.path.getsize(path) == 2 * 34
    found, complete = TransactionIndex(path, new=False).collect(11, 15)
    assert found == [AbortedTxn(2, 5, 20, 21)] and complete
    found, complete = idx.collect(0, 100)
    assert len(found) == 2 and not complete
    idx.truncate_to(20)
    assert idx.entries == [AbortedTxn(1, 0, 10, 11)]


def make_segment(tmp_path, base: int = 0, interval: int = 100) -> LogSegment:
    return LogSegment(
        str(tmp_path), base, index_interval_bytes=interval, max_index_entries_bytes=4096, new=True
    )


def fill(seg: LogSegment, n: int, *, base: int = 0, per_batch: int = 2) -> list[bytes]:
    batches = []
    offset = base
    for i in range(n):
        data = r.build_batch(
            [r.Record(offset_delta=j, value=b"x" * 20) for j in range(per_batch)],
            base_offset=offset,
            base_timestamp=1_000 + i * 10,
        )
        seg.append(data, offset + per_batch - 1, 1_000 + i * 10)
        batches.append(data)
        offset += per_batch
    return batches


def test_append_and_read_whole_batches(tmp_path) -> None:
    seg = make_segment(tmp_path, base=0)
    batches = fill(seg, 30)
    assert os.path.basename(seg.log_path) == segment_file_name(0, ".log")
    assert seg.size == sum(map(len, batches))
    assert seg.next_offset == 60
    assert len(seg.offset_index) > 5
    size = len(batches[0])
    # a read starting mid-batch returns that whole batch
    assert seg.read(7, 10**6) == b"".join(batches[3:])
    assert seg.read(7, 2 * size) == b"".join(batches[3:5])
    assert seg.read(7, 2 * size - 1) == batches[3]
    # at least one batch even if larger than max_bytes, unless strict
    assert seg.read(7, 1) == batches[3]
    assert seg.read(7, 1, min_one_batch=False) == b""
    # upper bound: nothing ending at or after it
    assert seg.read(0, 10**6, upper_bound=9) == b"".join(batches[:4])
    assert seg.read(0, 10**6, upper_bound=1) == b""
    assert seg.read(60, 10**6) is None
    for start in range(60):
        got = seg.read(start, 5 * size)
        assert got == b"".join(batches[start // 2 : start // 2 + 5])


def test_find_offset_by_timestamp(tmp_path) -> None:
    seg = make_segment(tmp_path)
    fill(seg, 20)
    # batch i holds offsets 2i, 2i+1 at timestamps 1000+10i, 1000+10i+0
    assert seg.max_timestamp == 1_190
    assert seg.find_offset_by_timestamp(0, 0, max_uncompressed=1 << 20) == (0, 1_000)
    assert seg.find_offset_by_timestamp(1_005, 0, max_uncompressed=1 << 20) == (2, 1_010)
    assert seg.find_offset_by_timestamp(1_190, 0, max_uncompressed=1 << 20) == (38, 1_190)
    assert seg.find_offset_by_timestamp(1_191, 0, max_uncompressed=1 << 20) is None
    assert seg.find_offset_by_timestamp(1_000, 5, max_uncompressed=1 << 20) == (5, 1_020)


def test_recover_truncates_a_corrupt_tail_and_rebuilds_indexes(tmp_path) -> None:
    seg = make_segment(tmp_path)
    batches = fill(seg, 20)
    entries = len(seg.offset_index)
    seg.close()
    good = sum(map(len, batches[:15]))
    with open(seg.log_path, "r+b") as f:
        f.seek(good + 30)
        f.write(b"\xff\xff")  # corrupt batch 15
    os.remove(seg.offset_index.path)
    again = LogSegment(
        str(tmp_path), 0, index_interval_bytes=100, max_index_entries_bytes=4096, new=False
    )
    seen = []
    truncated = again.recover(lambda h, _b: seen.append(h.base_offset))
    assert truncated == sum(map(len, batches)) - good
    assert seen == [2 * i for i in range(15)]
    assert again.next_offset == 30 and again.size == good
    assert 0 < len(again.offset_index) <= entries
    assert again.read(0, 10**6) == b"".join(batches[:15])


def test_truncate_to_removes_straddling_batch(tmp_path) -> None:
    seg = make_segment(tmp_path)
    batches = fill(seg, 10)
    removed = seg.truncate_to(9)  # batch 4 holds 8..9
    assert removed == sum(map(len, batches[4:]))
    assert seg.next_offset == 8
    assert seg.read(0, 10**6) == b"".join(batches[:4])
    assert seg.max_timestamp == 1_030


def test_change_suffix_keeps_reads_working(tmp_path) -> None:
    seg = make_segment(tmp_path)
    batches = fill(seg, 3)
    seg.change_suffix(".deleted")
    assert os.path.exists(seg.log_path) and seg.log_path.endswith(".log.deleted")
    assert seg.read(0, 10**6) == b"".join(batches)
    seg.delete()
    assert os.listdir(tmp_path) == []
