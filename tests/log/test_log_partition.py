"""PartitionLog: appends, reads, offsets, rolling, retention, DeleteRecords, epochs.

Covers: offset assignment in place or in a copy; several batches per payload validated
all-or-nothing; LogAppendTime; timestamp bounds; reads across segments with bounds and
OFFSET_OUT_OF_RANGE; rolling by size, time and full index; retention by time and size
never touching the active segment; delete_records_before; ListOffsets by timestamp and
max timestamp; leader epochs and end_offset_for_epoch; topic id; on-disk names.
"""

from __future__ import annotations

import os

import pytest

from shazamq.broker.log import (
    AppendOrigin,
    InconsistentTopicIdError,
    InvalidTimestampError,
    LogConfig,
    OffsetOutOfRangeError,
)
from shazamq.protocol import records as r


def offsets(data: bytes) -> list[tuple[int, int]]:
    return [(h.base_offset, h.last_offset) for _p, h in r.iter_batches(data)]


def test_append_assigns_offsets_and_reads_back(open_log, mk_batch) -> None:
    log = open_log()
    infos = [log.append(mk_batch(3), leader_epoch=0, now_ms=5) for _ in range(4)]
    assert [(i.base_offset, i.last_offset) for i in infos] == [(0, 2), (3, 5), (6, 8), (9, 11)]
    assert log.log_end_offset == log.high_watermark == 12
    data = log.read(0, 10**6)
    assert offsets(data) == [(0, 2), (3, 5), (6, 8), (9, 11)]
    for _p, h in r.iter_batches(data):
        r.validate_batch(data, _p, h)
    assert log.read(12, 100) == b""


def test_writable_buffer_is_patched_in_place_readonly_is_copied(open_log, mk_batch) -> None:
    log = open_log()
    log.append(mk_batch(2))
    original = mk_batch(1)
    log.append(original)
    assert r.parse_header(original).base_offset == 0  # bytes: copied
    buf = bytearray(mk_batch(1))
    log.append(memoryview(buf), leader_epoch=3)
    h = r.parse_header(buf)
    assert (h.base_offset, h.partition_leader_epoch) == (3, 3)


def test_several_batches_in_one_payload_are_all_or_nothing(open_log, mk_batch) -> None:
    log = open_log()
    payload = mk_batch(2) + mk_batch(3) + mk_batch(1)
    info = log.append(payload)
    assert (info.base_offset, info.last_offset) == (0, 5)
    assert offsets(log.read(0, 10**6)) == [(0, 1), (2, 4), (5, 5)]
    bad = bytearray(mk_batch(1) + mk_batch(1))
    bad[-1] ^= 0xFF
    with pytest.raises(r.CorruptRecordError):
        log.append(bytes(bad))
    with pytest.raises(r.CorruptRecordError):
        log.append(mk_batch(1) + mk_batch(1)[:-5])
    assert log.log_end_offset == 6 and log.active_segment.size == len(payload)


def test_append_rejects_per_kafka_rules(open_log, mk_batch) -> None:
    log = open_log(LogConfig(max_message_bytes=200))
    with pytest.raises(r.MessageTooLargeError):
        log.append(mk_batch(1, value=b"x" * 300))
    with pytest.raises(r.InvalidRecordError):
        log.append(r.build_control_batch(True, 1, 0, 0, 0))
    log.append(r.build_control_batch(True, 1, 0, 0, 0), origin=AppendOrigin.COORDINATOR)
    assert log.log_end_offset == 1


def test_log_append_time(open_log, mk_batch) -> None:
    log = open_log(LogConfig(message_timestamp_type="LogAppendTime"))
    info = log.append(mk_batch(2, ts=5), now_ms=123_456)
    assert info.log_append_time == 123_456
    h = r.validate_batch(log.read(0, 10**6))
    assert h.timestamp_type == 1 and h.max_timestamp == 123_456
    assert log.offset_for_timestamp(100_000) == (0, 123_456)


def test_create_time_bounds(open_log, mk_batch) -> None:
    cfg = LogConfig(message_timestamp_before_max_ms=1_000, message_timestamp_after_max_ms=1_000)
    log = open_log(cfg)
    log.append(mk_batch(1, ts=10_000), now_ms=10_500)
    with pytest.raises(InvalidTimestampError) as info:
        log.append(mk_batch(1, ts=10_000), now_ms=20_000)
    assert info.value.error_code == 32
    with pytest.raises(InvalidTimestampError):
        log.append(mk_batch(1, ts=30_000), now_ms=20_000)


def test_reads_are_bounded_and_ranged(open_log, mk_batch) -> None:
    log = open_log()
    for _ in range(100):
        log.append(mk_batch(2, value=b"y" * 40))
    assert len(log.segments) > 3
    with pytest.raises(OffsetOutOfRangeError) as info:
        log.read(201, 100)
    assert info.value.error_code == 1
    assert offsets(log.read(10, 10**6, upper_bound=16)) == [(10, 11), (12, 13), (14, 15)]
    assert log.read(10, 10**6, upper_bound=10) == b""
    whole = log.read(0, 10**9)
    assert offsets(whole)[0] == (0, 1)
    # a fetch reads within one segment; reading on from where it stopped covers the log
    seen: list[tuple[int, int]] = []
    position = 0
    while position < 200:
        chunk = offsets(log.read(position, 1000))
        assert chunk and chunk[0][0] <= position <= chunk[0][1]
        seen.extend(chunk)
        position = chunk[-1][1] + 1
    assert seen == [(2 * i, 2 * i + 1) for i in range(100)]
    size = len(
        r.build_batch([r.Record(offset_delta=i, key=b"k0", value=b"y" * 40) for i in range(2)])
    )
    assert log.read_slice(0, 1, min_one_batch=False) is None
    assert log.read_slice(0, 1).size == size


def test_roll_by_size_time_and_full_index(open_log, mk_batch) -> None:
    log = open_log(LogConfig(segment_bytes=1000))
    for _ in range(20):
        log.append(mk_batch(1, value=b"z" * 100))
    assert all(s.size <= 1000 for s in log.segments) and len(log.segments) > 2
    bases = [s.base_offset for s in log.segments]
    assert bases == sorted(bases) and bases[0] == 0

    timed = open_log(LogConfig(segment_ms=100), name="timed-0")
    timed.append(mk_batch(1, ts=1_000), now_ms=1_000)
    timed.append(mk_batch(1, ts=1_050), now_ms=1_050)
    assert len(timed.segments) == 1
    timed.append(mk_batch(1, ts=1_200), now_ms=1_200)
    assert [s.base_offset for s in timed.segments] == [0, 2]

    full = open_log(LogConfig(segment_index_bytes=16, index_interval_bytes=0), name="full-0")
    for _ in range(6):
        full.append(mk_batch(1))
    assert len(full.segments) >= 2
    assert all(len(s.offset_index) <= 2 for s in full.segments)


def test_retention_by_time_and_size_keeps_the_active_segment(open_log, mk_batch) -> None:
    cfg = LogConfig(segment_bytes=500, retention_ms=10_000, file_delete_delay_ms=0)
    log = open_log(cfg)
    for i in range(20):
        log.append(mk_batch(1, value=b"q" * 100, ts=1_000 + i))
    n = len(log.segments)
    assert log.apply_retention(now_ms=5_000) == 0
    deleted = log.apply_retention(now_ms=100_000)
    assert deleted == n - 1 and len(log.segments) == 1
    assert log.log_start_offset == log.active_segment.base_offset
    assert any(name.endswith(".deleted") for name in os.listdir(log.directory))
    log.reap_deleted(100_000)
    assert not any(name.endswith(".deleted") for name in os.listdir(log.directory))
    with pytest.raises(OffsetOutOfRangeError):
        log.read(0, 100)

    by_size = open_log(LogConfig(segment_bytes=500, retention_bytes=1200), name="size-0")
    for _ in range(20):
        by_size.append(mk_batch(1, value=b"q" * 100))
    by_size.apply_retention(now_ms=0)
    assert by_size.size_bytes <= 1200 + 500
    assert by_size.size_bytes - by_size.segments[0].size < 1200 or len(by_size.segments) == 1

    compacted = open_log(LogConfig(cleanup_policy=("compact",), retention_ms=1), name="c-0")
    for _ in range(30):
        compacted.append(mk_batch(1, value=b"q" * 200))
    assert compacted.apply_retention(now_ms=10**12) == 0


def test_delete_records_before(open_log, mk_batch) -> None:
    log = open_log(LogConfig(segment_bytes=400))
    for _ in range(20):
        log.append(mk_batch(1, value=b"d" * 100))
    segments = len(log.segments)
    assert log.delete_records_before(7) == 7
    assert log.log_start_offset == 7
    assert len(log.segments) < segments
    assert log.segments[0].base_offset <= 7
    assert offsets(log.read(7, 10**6))[0] == (7, 7)
    with pytest.raises(OffsetOutOfRangeError):
        log.read(6, 100)
    with pytest.raises(OffsetOutOfRangeError):
        log.delete_records_before(21)
    assert log.delete_records_before(3) == 7
    log.close()
    again = open_log(LogConfig(segment_bytes=400))
    assert again.log_start_offset == 7 and again.log_end_offset == 20


def test_timestamp_lookups(open_log, mk_batch) -> None:
    log = open_log(LogConfig(segment_bytes=600))
    for i in range(30):
        log.append(mk_batch(3, ts=10_000 + i * 100, compression=r.COMPRESSION_GZIP))
    assert log.offset_for_timestamp(0) == (0, 10_000)
    assert log.offset_for_timestamp(10_101) == (4, 10_101)
    assert log.offset_for_timestamp(12_902) == (89, 12_902)
    assert log.offset_for_timestamp(12_903) is None
    assert log.max_timestamp_offset() == (89, 12_902)
    log.close()
    again = open_log(LogConfig(segment_bytes=600))
    assert again.max_timestamp_offset() == (89, 12_902)
    assert again.offset_for_timestamp(11_000) == (30, 11_000)


def test_leader_epochs(open_log, mk_batch) -> None:
    log = open_log()
    log.append(mk_batch(2), leader_epoch=0)
    log.append(mk_batch(2), leader_epoch=0)
    log.append(mk_batch(2), leader_epoch=2)
    log.append(mk_batch(2), leader_epoch=5)
    assert log.leader_epoch_cache.entries == [(0, 0), (2, 4), (5, 6)]
    assert log.end_offset_for_epoch(0) == (0, 4)
    assert log.end_offset_for_epoch(1) == (0, 4)
    assert log.end_offset_for_epoch(2) == (2, 6)
    assert log.end_offset_for_epoch(5) == (5, 8)
    assert log.end_offset_for_epoch(6) == (-1, -1)
    assert log.end_offset_for_epoch(-1) == (-1, -1)
    log.close()
    again = open_log()
    assert again.end_offset_for_epoch(2) == (2, 6)
    again.truncate_to(5)
    assert again.log_end_offset == 4
    assert again.leader_epoch_cache.entries == [(0, 0)]


def test_replicated_batches_keep_their_offsets(open_log, mk_batch) -> None:
    log = open_log()
    payload = mk_batch(2, base_offset=10, partition_leader_epoch=4) + mk_batch(
        1, base_offset=15, partition_leader_epoch=6
    )
    info = log.append(payload, origin=AppendOrigin.REPLICATION)
    assert (info.base_offset, info.last_offset) == (10, 15)
    assert offsets(log.read(10, 10**6)) == [(10, 11), (15, 15)]
    assert log.leader_epoch_cache.entries == [(4, 10), (6, 15)]
    with pytest.raises(Exception) as info_err:
        log.append(mk_batch(1, base_offset=12), origin=AppendOrigin.REPLICATION)
    assert getattr(info_err.value, "error_code", None) == -1


def test_topic_id_and_layout(open_log, mk_batch, tmp_path) -> None:
    import uuid

    tid = uuid.uuid4()
    log = open_log(name="orders-3", topic_id=tid)
    assert (log.topic, log.partition, log.topic_id) == ("orders", 3, tid)
    log.append(mk_batch(1))
    log.close()
    names = set(os.listdir(tmp_path / "orders-3"))
    assert {
        "00000000000000000000.log",
        "00000000000000000000.index",
        "00000000000000000000.timeindex",
        "00000000000000000001.snapshot",
        "partition.metadata",
        "recovery-point-offset-checkpoint",
        "log-start-offset-checkpoint",
        "leader-epoch-checkpoint",
        "clean-shutdown",
    } <= names
    assert open_log(name="orders-3").topic_id == tid
    with pytest.raises(InconsistentTopicIdError):
        open_log(name="orders-3", topic_id=uuid.uuid4())


def test_list_offsets_specials(open_log, mk_batch) -> None:
    log = open_log()
    for i in range(5):
        log.append(mk_batch(2, ts=100 * (i + 1)))
    log.delete_records_before(2)
    assert log.list_offsets(-1) == (10, -1)
    assert log.list_offsets(-1, upper_bound=6) == (6, -1)
    assert log.list_offsets(-2) == log.list_offsets(-4) == (2, -1)
    assert log.list_offsets(-3) == (9, 501)
    assert log.list_offsets(-3, upper_bound=8) is None
    assert log.list_offsets(250) == (4, 300)
    assert log.list_offsets(50) == (2, 200)  # never below the log start
    assert log.list_offsets(10_000) is None
    assert log.list_offsets(-7) is None


def test_truncate_to_across_segments_and_fully(open_log, mk_batch) -> None:
    log = open_log(LogConfig(segment_bytes=500))
    for seq in range(0, 40, 2):
        log.append(mk_batch(2, value=b"t" * 60, producer_id=1, producer_epoch=0, base_sequence=seq))
    assert len(log.segments) > 3
    log.truncate_to(13)  # batch 12..13 goes entirely
    assert log.log_end_offset == 12 and log.high_watermark == 12
    assert offsets(log.read(10, 10**6)) == [(10, 11)]
    assert log.read(12, 10**6) == b""
    assert log.producer_state.entries[1].last_seq == 11
    info = log.append(mk_batch(2, producer_id=1, producer_epoch=0, base_sequence=12))
    assert (info.base_offset, info.duplicate) == (12, False)
    log.close()
    again = open_log(LogConfig(segment_bytes=500))
    assert again.log_end_offset == 14
    again.truncate_fully_and_start_at(100)
    assert again.log_start_offset == again.log_end_offset == 100
    assert again.append(mk_batch(1)).base_offset == 100
    with pytest.raises(OffsetOutOfRangeError):
        again.read(99, 10)
