"""Record batch v2 codec: round trips and compatibility.

Covers: build_batch/iter_records round trips with every codec (hypothesis); header
parsing and CRC validation; in-place edits (base offset, leader epoch, LogAppendTime)
keeping the CRC right; both snappy framings; control batches; and byte-level
compatibility with aiokafka's record implementation in both directions.
"""

from __future__ import annotations

import struct

import cramjam
import crc32c
import pytest
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shazamq.protocol import records as r

CODECS = [
    r.COMPRESSION_NONE,
    r.COMPRESSION_GZIP,
    r.COMPRESSION_SNAPPY,
    r.COMPRESSION_LZ4,
    r.COMPRESSION_ZSTD,
]
HDR = struct.Struct(">qiibIhiqqqhii")

small_bytes = st.binary(max_size=64)
headers = st.lists(st.tuples(st.text(max_size=8), st.none() | small_bytes), max_size=3)


@st.composite
def record_lists(draw: st.DrawFn) -> list[r.Record]:
    n = draw(st.integers(1, 12))
    return [
        r.Record(
            attributes=0,
            timestamp_delta=draw(st.integers(-(10**9), 10**9)),
            offset_delta=i,
            key=draw(st.none() | small_bytes),
            value=draw(st.none() | st.binary(max_size=300)),
            headers=tuple(draw(headers)),
        )
        for i in range(n)
    ]


def rewrap(batch: bytes, payload: bytes, attributes: int) -> bytes:
    """The same batch header around another records payload, with a fresh CRC."""
    fields = list(HDR.unpack_from(batch, 0))
    fields[1] = r.HEADER_SIZE - r.LOG_OVERHEAD + len(payload)
    fields[4] = 0
    fields[5] = attributes
    out = bytearray(HDR.pack(*fields) + payload)
    struct.pack_into(">I", out, 17, crc32c.crc32c(bytes(out[21:])))
    return bytes(out)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=record_lists(),
    codec=st.sampled_from(CODECS),
    base_ts=st.integers(0, 2**40),
    base_offset=st.integers(0, 2**40),
    pid=st.integers(-1, 2**40),
)
def test_round_trip_every_codec(
    records: list[r.Record], codec: int, base_ts: int, base_offset: int, pid: int
) -> None:
    data = r.build_batch(
        records,
        base_offset=base_offset,
        compression=codec,
        base_timestamp=base_ts,
        producer_id=pid,
        producer_epoch=3 if pid >= 0 else -1,
        base_sequence=7 if pid >= 0 else -1,
    )
    header = r.validate_batch(data)
    assert header.base_offset == base_offset
    assert header.size == len(data)
    assert header.records_count == len(records)
    assert header.last_offset == base_offset + len(records) - 1
    assert header.compression == codec
    assert header.max_timestamp == base_ts + max(x.timestamp_delta for x in records)
    assert header.producer_id == pid
    assert list(r.iter_records(data)) == records
    assert [(p, h) for p, h in r.iter_batches(data + data)] == [(0, header), (len(data), header)]


@pytest.mark.parametrize("codec", CODECS)
def test_matches_aiokafka_in_both_directions(codec: int) -> None:
    records = [
        r.Record(
            timestamp_delta=i * 3,
            offset_delta=i,
            key=None if i == 2 else f"key{i}".encode(),
            value=None if i == 3 else bytes([i]) * (i * 50),
            headers=(("h", b"x"), ("none", None)) if i % 2 else (),
        )
        for i in range(6)
    ]
    ours = r.build_batch(records, compression=codec, base_timestamp=1_700_000_000_000)
    theirs = DefaultRecordBatch(ours)
    assert theirs.validate_crc()
    decoded = list(theirs)
    assert [(x.offset, x.key, x.value, list(x.headers)) for x in decoded] == [
        (i, rec.key, rec.value, list(rec.headers)) for i, rec in enumerate(records)
    ]
    assert [x.timestamp for x in decoded] == [
        1_700_000_000_000 + rec.timestamp_delta for rec in records
    ]

    builder = DefaultRecordBatchBuilder(2, codec, 0, 42, 1, 5, 1 << 20)
    for rec in records:
        builder.append(
            rec.offset_delta,
            1_700_000_000_000 + rec.timestamp_delta,
            rec.key,
            rec.value,
            list(rec.headers),
        )
    built = bytes(builder.build())
    header = r.validate_batch(built)
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (42, 1, 5)
    assert list(r.iter_records(built)) == records


def test_snappy_both_framings() -> None:
    records = [r.Record(offset_delta=i, key=b"k", value=b"abc" * 1000) for i in range(40)]
    plain = r.build_batch(records)
    body = plain[r.HEADER_SIZE :]
    raw = rewrap(plain, bytes(cramjam.snappy.compress_raw(body)), r.COMPRESSION_SNAPPY)
    assert list(r.iter_records(raw)) == records
    xerial = r.build_batch(records, compression=r.COMPRESSION_SNAPPY)
    assert xerial[r.HEADER_SIZE : r.HEADER_SIZE + 8] == b"\x82SNAPPY\x00"
    assert list(r.iter_records(xerial)) == records


def test_header_fields_and_attribute_bits() -> None:
    data = r.build_batch(
        [r.Record(key=b"a", value=b"b")],
        base_offset=10,
        compression=r.COMPRESSION_LZ4,
        timestamp_type=r.TIMESTAMP_LOG_APPEND_TIME,
        producer_id=9,
        producer_epoch=2,
        base_sequence=100,
        transactional=True,
        partition_leader_epoch=4,
        base_timestamp=55,
    )
    h = r.parse_header(data)
    assert (h.base_offset, h.partition_leader_epoch, h.magic) == (10, 4, 2)
    assert h.timestamp_type == 1 and h.is_transactional and not h.is_control
    assert h.compression == r.COMPRESSION_LZ4 and not h.has_delete_horizon
    assert (h.base_timestamp, h.max_timestamp) == (55, 55)
    assert (h.producer_id, h.producer_epoch, h.base_sequence, h.last_sequence) == (9, 2, 100, 100)


def test_in_place_edits_keep_the_crc_valid() -> None:
    data = bytearray(r.build_batch([r.Record(offset_delta=i) for i in range(3)]))
    r.set_base_offset(data, 0, 1234)
    r.set_partition_leader_epoch(data, 0, 17)
    h = r.validate_batch(data)
    assert (h.base_offset, h.partition_leader_epoch, h.last_offset) == (1234, 17, 1236)
    r.set_log_append_time(data, 0, 999_999)
    h = r.validate_batch(data)
    assert h.max_timestamp == 999_999 and h.timestamp_type == r.TIMESTAMP_LOG_APPEND_TIME


def test_in_place_edits_inside_a_larger_buffer() -> None:
    one = r.build_batch([r.Record(value=b"x")])
    buf = bytearray(one * 3)
    view = memoryview(buf)
    r.set_base_offset(view, len(one), 5)
    r.set_log_append_time(view, len(one) * 2, 77)
    batches = r.validate_batches(buf)
    assert [h.base_offset for _p, h in batches] == [0, 5, 0]
    assert [h.max_timestamp for _p, h in batches] == [0, 0, 77]


def test_sequence_wraps_at_int32_max() -> None:
    data = r.build_batch(
        [r.Record(offset_delta=i) for i in range(4)],
        producer_id=1,
        producer_epoch=0,
        base_sequence=2**31 - 2,
    )
    assert r.parse_header(data).last_sequence == 1
    assert r.increment_sequence(2**31 - 1, 1) == 0


@pytest.mark.parametrize("commit", [True, False])
def test_control_batch(commit: bool) -> None:
    data = r.build_control_batch(commit, 77, 3, 12, 1_000, base_offset=50)
    h = r.validate_batch(data, from_client=False)
    assert h.is_control and h.is_transactional and h.records_count == 1
    assert (h.producer_id, h.producer_epoch, h.base_offset, h.max_timestamp) == (77, 3, 50, 1_000)
    (record,) = r.iter_records(data)
    control = r.parse_control_record(record.key, record.value)
    assert control.is_commit is commit
    assert control.kind == (r.CONTROL_COMMIT if commit else r.CONTROL_ABORT)
    assert control.coordinator_epoch == 12
    assert r.control_record_of(data) == control


def test_empty_batch_with_a_codec_has_no_payload() -> None:
    data = r.build_batch(
        [], compression=r.COMPRESSION_ZSTD, last_offset_delta=4, base_timestamp=9, producer_id=3
    )
    h = r.validate_batch(data, from_client=False)
    assert h.size == r.HEADER_SIZE and h.records_count == 0 and h.last_offset_delta == 4
    assert list(r.iter_records(data)) == []


def test_whole_batches_length_stops_before_a_partial_batch() -> None:
    one = r.build_batch([r.Record(value=b"x" * 10)])
    assert r.whole_batches_length(one * 2 + one[:20]) == 2 * len(one)
    assert [p for p, _h in r.iter_batches(one + one[:-1], allow_partial=True)] == [0]
