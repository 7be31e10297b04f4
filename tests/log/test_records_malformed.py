"""Record batch v2 parser against hostile input: always a typed error, never a crash.

Covers: truncation at every position; flipped bytes (CRC); wrong or zero record counts;
malformed varints and lengths inside records; magic 0 and 1 (43); unknown codecs (76);
oversized batches (10); client-only rules (87); decompression bombs with a small cap for
every codec; random bytes and random record payloads under a valid CRC (hypothesis).
"""

from __future__ import annotations

import contextlib
import struct
import zlib

import cramjam
import crc32c
import lz4.frame
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from shazamq.protocol import records as r

HDR = struct.Struct(">qiibIhiqqqhii")


def rewrap(
    batch: bytes, payload: bytes, *, attributes: int | None = None, count: int | None = None
) -> bytes:
    fields = list(HDR.unpack_from(batch, 0))
    fields[1] = r.HEADER_SIZE - r.LOG_OVERHEAD + len(payload)
    fields[4] = 0
    if attributes is not None:
        fields[5] = attributes
    if count is not None:
        fields[12] = count
    out = bytearray(HDR.pack(*fields) + payload)
    struct.pack_into(">I", out, 17, crc32c.crc32c(bytes(out[21:])))
    return bytes(out)


def sample(codec: int = r.COMPRESSION_NONE) -> bytes:
    return r.build_batch(
        [
            r.Record(offset_delta=i, key=b"key", value=b"value" * i, headers=(("h", b"1"),))
            for i in range(4)
        ],
        compression=codec,
        base_timestamp=5,
    )


@pytest.mark.parametrize("codec", [r.COMPRESSION_NONE, r.COMPRESSION_ZSTD])
def test_every_truncation_is_a_typed_error(codec: int) -> None:
    data = sample(codec)
    for cut in range(1, len(data)):
        part = data[:cut]
        with pytest.raises(r.PartialBatchError):
            list(r.iter_batches(part))
        assert list(r.iter_batches(part, allow_partial=True)) == []
        with pytest.raises(r.CorruptRecordError):
            r.validate_batch(part)
        with pytest.raises(r.CorruptRecordError):
            r.decode_batch(part)
        with pytest.raises(r.CorruptRecordError):
            r.validate_batches(data + part)


def test_every_flipped_byte_after_the_magic_is_rejected() -> None:
    data = sample()
    for pos in range(r.POS_CRC, len(data)):
        bad = bytearray(data)
        bad[pos] ^= 0x41
        with pytest.raises(r.RecordError):
            r.validate_batch(bytes(bad))


def test_bad_crc_is_corrupt_message() -> None:
    bad = bytearray(sample())
    bad[-1] ^= 1
    with pytest.raises(r.CorruptRecordError) as info:
        r.validate_batch(bytes(bad))
    assert info.value.error_code == 2


def test_record_count_must_match_offsets() -> None:
    data = sample()
    wrong = rewrap(data, data[r.HEADER_SIZE :], count=3)
    with pytest.raises(r.InvalidRecordError) as info:
        r.validate_batch(wrong)
    assert info.value.error_code == 87
    with pytest.raises(r.CorruptRecordError):
        r.decode_batch(wrong)  # 3 records declared, 4 present
    zero = r.build_batch([], last_offset_delta=0)
    with pytest.raises(r.InvalidRecordError):
        r.validate_batch(zero)
    r.validate_batch(zero, from_client=False)


def test_client_rules() -> None:
    control = r.build_control_batch(True, 1, 0, 0, 0)
    with pytest.raises(r.InvalidRecordError):
        r.validate_batch(control)
    no_seq = r.build_batch([r.Record()], producer_id=5, producer_epoch=0)
    with pytest.raises(r.InvalidRecordError):
        r.validate_batch(no_seq)
    txn_no_pid = r.build_batch([r.Record()], transactional=True)
    with pytest.raises(r.InvalidRecordError):
        r.validate_batch(txn_no_pid, from_client=False)
    with pytest.raises(r.InvalidRecordError):
        r.validate_batches(b"")


def test_oversized_batch_is_message_too_large() -> None:
    data = sample()
    with pytest.raises(r.MessageTooLargeError) as info:
        r.validate_batch(data, max_batch_bytes=len(data) - 1)
    assert info.value.error_code == 10
    r.validate_batch(data, max_batch_bytes=len(data))


@pytest.mark.parametrize("magic", [0, 1])
def test_legacy_magic_is_unsupported_for_message_format(magic: int) -> None:
    # offset, size, crc, magic, attributes, [timestamp], key -1, value "abc"
    body = struct.pack(">bb", magic, 0) + (struct.pack(">q", 0) if magic else b"")
    body += struct.pack(">i", -1) + struct.pack(">i", 3) + b"abc"
    message = struct.pack(">I", zlib.crc32(body)) + body
    legacy = struct.pack(">qi", 0, len(message)) + message
    for call in (
        lambda: list(r.iter_batches(legacy)),
        lambda: r.validate_batch(legacy),
        lambda: r.validate_batches(legacy),
        lambda: r.decode_batch(legacy + bytes(64)),
    ):
        with pytest.raises(r.UnsupportedMessageFormatError) as info:
            call()
        assert info.value.error_code == 43


def test_unknown_magic_is_corrupt() -> None:
    bad = bytearray(sample())
    bad[r.POS_MAGIC] = 3
    with pytest.raises(r.CorruptRecordError):
        r.validate_batch(bytes(bad))


@pytest.mark.parametrize("codec", [5, 6, 7])
def test_unknown_codec_is_unsupported_compression_type(codec: int) -> None:
    data = sample()
    bad = rewrap(data, data[r.HEADER_SIZE :], attributes=codec)
    with pytest.raises(r.UnsupportedCompressionTypeError) as info:
        r.validate_batch(bad)
    assert info.value.error_code == 76
    with pytest.raises(r.UnsupportedCompressionTypeError):
        r.decode_batch(bad)


def _varint(value: int) -> bytes:
    out = bytearray()
    raw = (value << 1) ^ (value >> 63)
    raw &= (1 << 64) - 1
    while raw >= 0x80:
        out.append((raw & 0x7F) | 0x80)
        raw >>= 7
    out.append(raw)
    return bytes(out)


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(b"\xff" * 12, id="endless-varint"),
        pytest.param(_varint(100) + b"\x00\x00\x00\x00\x00\x00", id="length-past-end"),
        pytest.param(_varint(6) + b"\x00\x00\x00" + _varint(-2) + b"\x00\x00", id="key-length--2"),
        pytest.param(
            _varint(6) + b"\x00\x00\x00" + _varint(50) + b"\x00\x00", id="key-past-record"
        ),
        pytest.param(_varint(6) + b"\x00\x00\x00\x02\x02\x00\x00", id="field-overruns-length"),
        pytest.param(_varint(6) + b"\x00\x00\x00\x01\x01" + _varint(-1), id="negative-headers"),
        pytest.param(_varint(7) + b"\x00\x00\x00\x01\x01\x02\x08", id="header-key-past-end"),
        pytest.param(_varint(6) + b"\x00\x00\x00\x01\x01\x00" + b"junk", id="trailing-bytes"),
        pytest.param(_varint(2) + b"\x00\x00", id="record-too-small"),
    ],
)
def test_malformed_records_are_corrupt(record: bytes) -> None:
    data = rewrap(sample(), record, count=1)
    with pytest.raises(r.CorruptRecordError):
        r.decode_batch(data)


def _bomb(codec: int, size: int) -> bytes:
    zeros = bytes(size)
    if codec == r.COMPRESSION_GZIP:
        c = zlib.compressobj(9, zlib.DEFLATED, 31)
        return c.compress(zeros) + c.flush()
    if codec == r.COMPRESSION_SNAPPY:
        return bytes(cramjam.snappy.compress_raw(zeros))
    if codec == r.COMPRESSION_LZ4:
        return lz4.frame.compress(zeros)
    c = zstandard.ZstdCompressor()
    return c.compress(zeros)


@pytest.mark.parametrize(
    "codec",
    [r.COMPRESSION_GZIP, r.COMPRESSION_SNAPPY, r.COMPRESSION_LZ4, r.COMPRESSION_ZSTD],
)
def test_decompression_bomb_hits_the_cap(codec: int) -> None:
    data = rewrap(sample(), _bomb(codec, 4 << 20), attributes=codec, count=1)
    assert len(data) < 256 * 1024
    with pytest.raises(r.DecompressionLimitError) as info:
        r.decode_batch(data, max_uncompressed=64 * 1024)
    assert info.value.error_code == 2
    with pytest.raises(r.DecompressionLimitError):
        r.decompress(codec, data[r.HEADER_SIZE :], 1 << 20)


def test_zstd_bomb_without_content_size() -> None:
    stream = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    payload = stream.compress(bytes(8 << 20)) + stream.flush()
    with pytest.raises(r.DecompressionLimitError):
        r.decompress(r.COMPRESSION_ZSTD, payload, 1 << 20)


@pytest.mark.parametrize(
    "codec",
    [r.COMPRESSION_GZIP, r.COMPRESSION_SNAPPY, r.COMPRESSION_LZ4, r.COMPRESSION_ZSTD],
)
def test_garbage_compressed_payload_is_corrupt(codec: int) -> None:
    data = rewrap(sample(), b"\x82SNAPPY\x00\x00\x00\x00\x01" + b"garbage" * 5, attributes=codec)
    with pytest.raises(r.CorruptRecordError):
        r.decode_batch(data)
    good = sample(codec)
    with pytest.raises(r.CorruptRecordError):
        r.decode_batch(rewrap(good, good[r.HEADER_SIZE : -3], attributes=codec))


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_record_errors(data: bytes) -> None:
    for call in (
        lambda: list(r.iter_batches(data)),
        lambda: r.validate_batches(data),
        lambda: r.decode_batch(data),
        lambda: r.whole_batches_length(data),
    ):
        with contextlib.suppress(r.RecordError):
            call()


@settings(max_examples=150, deadline=None)
@given(payload=st.binary(max_size=200), count=st.integers(-2, 40), codec=st.integers(0, 4))
def test_random_payload_under_valid_crc_only_raises_record_errors(
    payload: bytes, count: int, codec: int
) -> None:
    data = rewrap(sample(), payload, attributes=codec, count=count)
    with contextlib.suppress(r.RecordError):
        r.decode_batch(data, max_uncompressed=1 << 16)


@settings(max_examples=100, deadline=None)
@given(position=st.integers(0, 10_000), value=st.integers(0, 255))
def test_mutated_records_only_raise_record_errors(position: int, value: int) -> None:
    data = sample()
    payload = bytearray(data[r.HEADER_SIZE :])
    payload[position % len(payload)] = value
    with contextlib.suppress(r.RecordError):
        r.decode_batch(rewrap(data, bytes(payload)))
