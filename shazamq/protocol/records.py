"""Record batch v2: the unit Kafka clients produce, brokers store and consumers fetch.

The broker's hot paths (produce, fetch, replication, log recovery) only ever touch the
fixed 61-byte batch header: they parse it with one ``struct`` call, check the CRC-32C in
C, and patch the base offset or the partition leader epoch in place. Nothing here does I/O.

Decoding individual records is for the few places that need them (log compaction, the
group and transaction coordinators reading their internal topics, ListOffsets by
timestamp, tests). That path decompresses with a bounded output size so a hostile batch
cannot exhaust memory, and every malformed length or varint surfaces as a typed error
carrying the Kafka error code the broker should answer with.

Layout of a batch (big-endian)::

    0  base_offset i64          35 max_timestamp i64
    8  batch_length i32         43 producer_id i64
    12 partition_leader_epoch   51 producer_epoch i16
    16 magic i8 (= 2)           53 base_sequence i32
    17 crc u32 (CRC-32C of 21..end)
    21 attributes i16           57 records_count i32
    23 last_offset_delta i32    61 records (possibly compressed)
    27 base_timestamp i64

``batch_length`` counts the bytes after itself, so a batch occupies ``batch_length + 12``.
"""

from __future__ import annotations

import io
import os as _os
import struct
import zlib
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import cramjam
import crc32c as _crc32c
import lz4.frame
import zstandard

__all__ = [
    "ATTR_CONTROL",
    "ATTR_DELETE_HORIZON",
    "ATTR_TIMESTAMP_TYPE",
    "ATTR_TRANSACTIONAL",
    "COMPRESSION_GZIP",
    "COMPRESSION_LZ4",
    "COMPRESSION_NONE",
    "COMPRESSION_SNAPPY",
    "COMPRESSION_ZSTD",
    "CONTROL_ABORT",
    "CONTROL_COMMIT",
    "DEFAULT_MAX_UNCOMPRESSED",
    "HEADER_SIZE",
    "LOG_OVERHEAD",
    "NO_PRODUCER_EPOCH",
    "NO_PRODUCER_ID",
    "NO_SEQUENCE",
    "NO_TIMESTAMP",
    "TIMESTAMP_CREATE_TIME",
    "TIMESTAMP_LOG_APPEND_TIME",
    "BatchHeader",
    "ControlRecord",
    "CorruptRecordError",
    "DecompressionLimitError",
    "InvalidRecordError",
    "InvalidRecordsError",
    "MessageTooLargeError",
    "PartialBatchError",
    "Record",
    "RecordError",
    "UnsupportedCompressionTypeError",
    "UnsupportedMessageFormatError",
    "batch_records_data",
    "build_batch",
    "build_control_batch",
    "check_records",
    "compress",
    "compute_crc",
    "control_record_of",
    "decode_batch",
    "decompress",
    "increment_sequence",
    "iter_batches",
    "iter_records",
    "parse_control_record",
    "parse_header",
    "rebuild_batch",
    "set_base_offset",
    "set_log_append_time",
    "set_partition_leader_epoch",
    "validate_batch",
    "validate_batches",
    "whole_batches_length",
]

# --------------------------------------------------------------------------- constants

HEADER_SIZE = 61
LOG_OVERHEAD = 12  # base_offset + batch_length: the bytes batch_length does not count
MIN_BATCH_LENGTH = HEADER_SIZE - LOG_OVERHEAD  # 49

POS_BASE_OFFSET = 0
POS_LENGTH = 8
POS_LEADER_EPOCH = 12
POS_MAGIC = 16
POS_CRC = 17
POS_ATTRIBUTES = 21
POS_LAST_OFFSET_DELTA = 23
POS_BASE_TIMESTAMP = 27
POS_MAX_TIMESTAMP = 35
POS_PRODUCER_ID = 43
POS_PRODUCER_EPOCH = 51
POS_BASE_SEQUENCE = 53
POS_RECORDS_COUNT = 57

COMPRESSION_NONE = 0
COMPRESSION_GZIP = 1
COMPRESSION_SNAPPY = 2
COMPRESSION_LZ4 = 3
COMPRESSION_ZSTD = 4
COMPRESSION_MASK = 0x07
KNOWN_CODECS = frozenset(range(5))

ATTR_TIMESTAMP_TYPE = 0x08
ATTR_TRANSACTIONAL = 0x10
ATTR_CONTROL = 0x20
ATTR_DELETE_HORIZON = 0x40

TIMESTAMP_CREATE_TIME = 0
TIMESTAMP_LOG_APPEND_TIME = 1

NO_PRODUCER_ID = -1
NO_PRODUCER_EPOCH = -1
NO_SEQUENCE = -1
NO_TIMESTAMP = -1
INT32_MAX = 0x7FFFFFFF

CONTROL_ABORT = 0
CONTROL_COMMIT = 1

#: Default cap on the decompressed size of one batch's records.
DEFAULT_MAX_UNCOMPRESSED = 64 * 1024 * 1024

# Kafka error codes used by this module.
_CORRUPT_MESSAGE = 2
_MESSAGE_TOO_LARGE = 10
_UNSUPPORTED_FOR_MESSAGE_FORMAT = 43
_UNSUPPORTED_COMPRESSION_TYPE = 76
_INVALID_RECORD = 87

_HEADER = struct.Struct(">qiibIhiqqqhii")
assert _HEADER.size == HEADER_SIZE
_I64 = struct.Struct(">q")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I16 = struct.Struct(">h")
_LEN_MAGIC = struct.Struct(">i4xb")  # batch_length, (skip leader epoch), magic
_CONTROL_KEY = struct.Struct(">hh")
_CONTROL_VALUE = struct.Struct(">hi")

_XERIAL_MAGIC = b"\x82SNAPPY\x00"
_XERIAL_HEADER = struct.Struct(">8sii")
_XERIAL_BLOCK = 32 * 1024

_crc = _crc32c.crc32c
_new_tuple = tuple.__new__

# ----------------------------------------------------------------------------- errors


class RecordError(Exception):
    """A batch or record the broker must refuse; ``error_code`` is the Kafka error code."""

    error_code: int = _CORRUPT_MESSAGE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CorruptRecordError(RecordError):
    """Bad CRC, impossible lengths, malformed varints: Kafka's CORRUPT_MESSAGE (2)."""

    error_code = _CORRUPT_MESSAGE


class PartialBatchError(CorruptRecordError):
    """The buffer ends inside a batch that starts at ``position``.

    Legitimate at the end of a fetched byte range; an error in a produce payload.
    """

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.position = position


class DecompressionLimitError(CorruptRecordError):
    """Decompressed records would exceed the caller's cap (a decompression bomb)."""


class InvalidRecordError(RecordError):
    """A well-formed batch that breaks a rule: Kafka's INVALID_RECORD (87)."""

    error_code = _INVALID_RECORD


class InvalidRecordsError(InvalidRecordError):
    """Records a batch holds that the topic refuses (a null key on a compacted topic):
    ``record_errors`` lists ``(index of the record in the payload, why)`` as KIP-467
    reports them."""

    def __init__(self, message: str, record_errors: list[tuple[int, str]]) -> None:
        super().__init__(message)
        self.record_errors = record_errors


class MessageTooLargeError(RecordError):
    """A batch larger than ``max.message.bytes``: Kafka's MESSAGE_TOO_LARGE (10)."""

    error_code = _MESSAGE_TOO_LARGE


class UnsupportedMessageFormatError(RecordError):
    """Magic 0 or 1 (the legacy message sets): UNSUPPORTED_FOR_MESSAGE_FORMAT (43)."""

    error_code = _UNSUPPORTED_FOR_MESSAGE_FORMAT


class UnsupportedCompressionTypeError(RecordError):
    """A compression codec id this broker does not know: UNSUPPORTED_COMPRESSION_TYPE (76)."""

    error_code = _UNSUPPORTED_COMPRESSION_TYPE


# ----------------------------------------------------------------------------- header


class BatchHeader(NamedTuple):
    """The 61-byte header of a v2 record batch, exactly as stored."""

    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    records_count: int

    @property
    def size(self) -> int:
        """Bytes the whole batch occupies, header included."""
        return self.batch_length + LOG_OVERHEAD

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1

    @property
    def compression(self) -> int:
        return self.attributes & COMPRESSION_MASK

    @property
    def timestamp_type(self) -> int:
        return 1 if self.attributes & ATTR_TIMESTAMP_TYPE else 0

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & ATTR_TRANSACTIONAL)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & ATTR_CONTROL)

    @property
    def has_delete_horizon(self) -> bool:
        return bool(self.attributes & ATTR_DELETE_HORIZON)

    @property
    def has_producer_id(self) -> bool:
        return self.producer_id >= 0

    @property
    def last_sequence(self) -> int:
        """Sequence of the last record, wrapping at int32 max like Kafka."""
        if self.base_sequence < 0:
            return NO_SEQUENCE
        return increment_sequence(self.base_sequence, self.last_offset_delta)


def increment_sequence(sequence: int, increment: int) -> int:
    """``sequence + increment`` wrapping past int32 max back to 0."""
    if sequence > INT32_MAX - increment:
        return increment - (INT32_MAX - sequence) - 1
    return sequence + increment


def parse_header(buf: bytes | bytearray | memoryview, pos: int = 0) -> BatchHeader:
    """Parse the batch header at ``pos``; the caller guarantees 61 bytes are there."""
    return _new_tuple(BatchHeader, _HEADER.unpack_from(buf, pos))


def _check_magic(buf: bytes | bytearray | memoryview, pos: int) -> None:
    magic = buf[pos + POS_MAGIC]
    if magic != 2:
        if magic in (0, 1):
            raise UnsupportedMessageFormatError(
                f"message format v{magic} (magic {magic}) at position {pos} is not supported; "
                "only record batch v2"
            )
        raise CorruptRecordError(f"unknown magic {magic} at position {pos}")


def iter_batches(
    buf: bytes | bytearray | memoryview, *, allow_partial: bool = False
) -> Iterator[tuple[int, BatchHeader]]:
    """Yield ``(position, header)`` for each whole batch in concatenated ``buf``.

    Every length is bounded by the buffer. A trailing partial batch raises
    :class:`PartialBatchError` unless ``allow_partial`` (a fetched range may end
    mid-batch), in which case iteration just stops before it. Magic 0/1 raise
    :class:`UnsupportedMessageFormatError`; a length too small for a header raises
    :class:`CorruptRecordError`. CRCs are not checked here (see :func:`validate_batch`).
    """
    end = len(buf)
    pos = 0
    unpack = _HEADER.unpack_from
    while pos < end:
        remaining = end - pos
        if remaining < HEADER_SIZE:
            if remaining > POS_MAGIC:
                _check_magic(buf, pos)
            if allow_partial:
                return
            raise PartialBatchError(
                f"{remaining} trailing bytes at position {pos} are not a whole batch", pos
            )
        _check_magic(buf, pos)
        header: BatchHeader = _new_tuple(BatchHeader, unpack(buf, pos))
        length = header.batch_length
        if length < MIN_BATCH_LENGTH:
            raise CorruptRecordError(f"batch length {length} at position {pos} is too small")
        size = length + LOG_OVERHEAD
        if size > remaining:
            if allow_partial:
                return
            raise PartialBatchError(
                f"batch at position {pos} declares {size} bytes but only {remaining} remain", pos
            )
        yield pos, header
        pos += size


def whole_batches_length(buf: bytes | bytearray | memoryview) -> int:
    """Length of the longest prefix of ``buf`` made of whole batches (headers only)."""
    end = 0
    for pos, header in iter_batches(buf, allow_partial=True):
        end = pos + header.batch_length + LOG_OVERHEAD
    return end


def compute_crc(buf: bytes | bytearray | memoryview, pos: int, size: int) -> int:
    """CRC-32C of the bytes the batch CRC covers (attributes to the end of the batch)."""
    with memoryview(buf) as view:
        return _crc(view[pos + POS_ATTRIBUTES : pos + size])


def validate_batch(
    buf: bytes | bytearray | memoryview,
    pos: int = 0,
    header: BatchHeader | None = None,
    *,
    max_batch_bytes: int | None = None,
    from_client: bool = True,
) -> BatchHeader:
    """Check one batch at ``pos`` the way the produce path must, without decoding records.

    Checks, cheapest first: magic 2 (43 for magic 0/1), length within the buffer (2),
    size against ``max_batch_bytes`` (10), compression codec known (76), CRC-32C (2),
    then the client rules (87): at least one record, ``records_count`` equal to
    ``last_offset_delta + 1``, no control batches, a sequence whenever a producer id is
    set, a producer id whenever the batch is transactional.
    """
    end = len(buf)
    if end - pos < HEADER_SIZE:
        if end - pos > POS_MAGIC:
            _check_magic(buf, pos)
        raise PartialBatchError(f"{end - pos} bytes at position {pos} cannot hold a batch", pos)
    if header is None:
        _check_magic(buf, pos)
        header = _new_tuple(BatchHeader, _HEADER.unpack_from(buf, pos))
    elif header.magic != 2:
        _check_magic(buf, pos)
    length = header.batch_length
    if length < MIN_BATCH_LENGTH:
        raise CorruptRecordError(f"batch length {length} at position {pos} is too small")
    size = length + LOG_OVERHEAD
    if pos + size > end:
        raise PartialBatchError(
            f"batch at position {pos} declares {size} bytes but only {end - pos} remain", pos
        )
    if max_batch_bytes is not None and size > max_batch_bytes:
        raise MessageTooLargeError(
            f"batch of {size} bytes exceeds the maximum of {max_batch_bytes} bytes"
        )
    codec = header.attributes & COMPRESSION_MASK
    if codec not in KNOWN_CODECS:
        raise UnsupportedCompressionTypeError(f"unknown compression codec id {codec}")
    with memoryview(buf) as view:
        actual = _crc(view[pos + POS_ATTRIBUTES : pos + size])
    if actual != header.crc:
        raise CorruptRecordError(
            f"batch at offset {header.base_offset} fails its CRC: "
            f"stored {header.crc:#010x}, computed {actual:#010x}"
        )
    if header.last_offset_delta < 0:
        raise InvalidRecordError(f"negative last offset delta {header.last_offset_delta}")
    if from_client:
        count = header.records_count
        if count < 1:
            raise InvalidRecordError(f"batch holds {count} records; at least one is required")
        if count != header.last_offset_delta + 1:
            raise InvalidRecordError(
                f"records count {count} disagrees with last offset delta {header.last_offset_delta}"
            )
        if header.attributes & ATTR_CONTROL:
            raise InvalidRecordError("clients may not write control batches")
        if header.producer_id >= 0 and header.base_sequence < 0:
            raise InvalidRecordError(
                f"producer {header.producer_id} sent a batch without a sequence number"
            )
    if header.attributes & ATTR_TRANSACTIONAL and header.producer_id < 0:
        raise InvalidRecordError("transactional batch without a producer id")
    return header


def validate_batches(
    buf: bytes | bytearray | memoryview,
    *,
    max_batch_bytes: int | None = None,
    from_client: bool = True,
) -> list[tuple[int, BatchHeader]]:
    """Validate every batch of a produce payload; return ``[(position, header)]``.

    The payload must hold at least one batch and end on a batch boundary.
    """
    batches = []
    for pos, header in iter_batches(buf):
        validate_batch(buf, pos, header, max_batch_bytes=max_batch_bytes, from_client=from_client)
        batches.append((pos, header))
    if not batches:
        raise InvalidRecordError("the payload holds no record batch")
    return batches


def _check_records_py(
    data: bytes | bytearray | memoryview,
    count: int,
    keys_required: bool = False,
    first_index: int = 0,
) -> list[tuple[int, str]]:
    """Walk the (uncompressed) records of a batch the way Kafka's LogValidator does,
    without building them: exactly ``count`` records filling ``data``, each length and
    varint well-formed and inside its record, offset deltas 0, 1, 2, ...

    Raises :class:`CorruptRecordError` for garbage. Returns the records a topic refuses
    (``keys_required``: a compacted topic's records need keys) as ``(first_index + i,
    message)``; empty when all are fine.

    The produce hot path runs this for every record, so the common shapes (one- and
    two-byte varints, no headers) are decoded inline, fields only the log ignores
    (timestamps) are skipped, not decoded, and nothing is allocated per record; reads
    past the end surface as IndexError and become CORRUPT_MESSAGE.

    This is the reference and the fallback: :func:`check_records` is the same walk
    compiled (``_recordwalk.c``) when the extension was built, this function otherwise.
    """
    end = len(data)
    if count > end // 7 + 1:  # a record takes at least 7 bytes
        raise CorruptRecordError(f"records count {count} cannot fit in {end} bytes")
    refused: list[tuple[int, str]] = []
    d = data
    pos = 0
    i = 0
    try:
        for i in range(count):
            b = d[pos]
            if b < 0x80:  # record length (zigzag; odd = negative)
                length = b
                pos += 1
            elif d[pos + 1] < 0x80:
                length = (b & 0x7F) | (d[pos + 1] << 7)
                pos += 2
            else:
                length, pos = _read_varint(d, pos, end, 5)
                length = (length << 1) if length >= 0 else 1
            if length & 1:
                raise CorruptRecordError(f"record {i} has a negative length")
            length >>= 1
            stop = pos + length
            if length < 6 or stop > end:
                raise CorruptRecordError(f"record {i} declares an impossible length {length}")
            p = pos + 1  # attributes
            if d[p] < 0x80:  # timestamp delta: skipped
                p += 1
            elif d[p + 1] < 0x80:
                p += 2
            else:
                p = _skip_varint(d, p, i)
            b = d[p]  # offset delta: must be i, zigzag 2i
            if b < 0x80:
                delta = b
                p += 1
            elif d[p + 1] < 0x80:
                delta = (b & 0x7F) | (d[p + 1] << 7)
                p += 2
            else:
                delta, p = _read_varint(d, p, stop, 5)
                delta = delta << 1 if delta >= 0 else -1
            if delta != i << 1:
                raise CorruptRecordError(
                    f"record {i} has offset delta {(delta >> 1) ^ -(delta & 1)}"
                )
            b = d[p]  # key
            if b < 0x80:
                p += 1
                if b & 1:
                    if b != 1:
                        raise CorruptRecordError(f"record {i} has a key length {-(b + 1) >> 1}")
                    if keys_required:
                        refused.append(
                            (first_index + i, "compacted topics require a key on every record")
                        )
                else:
                    p += b >> 1
            else:
                n, p = _read_varint(d, p, stop, 5)
                if n < 0:
                    raise CorruptRecordError(f"record {i} has a key length {n}")
                p += n
            b = d[p]  # value
            if b < 0x80:
                p += 1
                if b & 1:
                    if b != 1:
                        raise CorruptRecordError(f"record {i} has a value length {-(b + 1) >> 1}")
                else:
                    p += b >> 1
            else:
                n, p = _read_varint(d, p, stop, 5)
                if n < 0:
                    raise CorruptRecordError(f"record {i} has a value length {n}")
                p += n
            if p >= stop:
                raise CorruptRecordError(f"record {i} ends before its header count")
            if d[p] == 0:  # no headers: the usual case
                p += 1
            else:
                p = _check_headers(d, p, stop, i)
            if p != stop:
                raise CorruptRecordError(
                    f"record {i} declares {length} bytes but its fields take {p - pos}"
                )
            pos = stop
    except IndexError:
        raise CorruptRecordError(f"record {i} runs past the end of the batch") from None
    if pos != end:
        raise CorruptRecordError(f"{end - pos} bytes left after the last of {count} records")
    return refused


try:
    if _os.environ.get("SHAZAMQ_PURE_PYTHON"):
        raise ImportError("SHAZAMQ_PURE_PYTHON is set")
    from shazamq.protocol._recordwalk import check_records as _check_records_c
except ImportError:  # not built (no compiler at install time) or turned off
    _check_records_c = None

#: The record walk of produce validation: the C one when built, else the Python one.
check_records = _check_records_c or _check_records_py


def _skip_varint(d: bytes, p: int, i: int) -> int:
    q = p
    while d[p] >= 0x80:
        p += 1
    if p - q >= 10:
        raise CorruptRecordError(f"record {i} has a timestamp varint of {p - q + 1} bytes")
    return p + 1


def _check_headers(d: bytes, p: int, stop: int, i: int) -> int:
    nheaders, p = _read_varint(d, p, stop, 5)
    if nheaders < 0 or nheaders > stop - p:
        raise CorruptRecordError(f"record {i} declares {nheaders} headers")
    for _h in range(nheaders):
        n, p = _read_varint(d, p, stop, 5)
        if n < 0 or p + n > stop:
            raise CorruptRecordError(f"a header key of record {i} has length {n}")
        p += n
        n, p = _read_varint(d, p, stop, 5)
        if n < -1 or p + max(n, 0) > stop:
            raise CorruptRecordError(f"a header value of record {i} has length {n}")
        p += max(n, 0)
    return p


def batch_records_data(
    buf: bytes | bytearray | memoryview,
    pos: int,
    header: BatchHeader,
    *,
    max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED,
) -> bytes:
    """The uncompressed record bytes of the (validated) batch at ``pos``; decompression
    is capped at ``max_uncompressed`` (CORRUPT_MESSAGE beyond)."""
    size = header.batch_length + LOG_OVERHEAD
    with memoryview(buf) as view:
        raw = bytes(view[pos + HEADER_SIZE : pos + size])
    codec = header.attributes & COMPRESSION_MASK
    if codec == COMPRESSION_NONE:
        if len(raw) > max_uncompressed:
            raise _too_big(max_uncompressed)
        return raw
    return decompress(codec, raw, max_uncompressed)


def rebuild_batch(
    buf: bytes | bytearray | memoryview, pos: int, header: BatchHeader, data: bytes, codec: int
) -> bytes:
    """The batch at ``pos`` with its records (``data``, uncompressed) stored under
    ``codec`` instead: same header fields, new length, attributes and CRC."""
    payload = compress(codec, data)
    out = bytearray(HEADER_SIZE + len(payload))
    with memoryview(buf) as view:
        out[:HEADER_SIZE] = view[pos : pos + HEADER_SIZE]
    out[HEADER_SIZE:] = payload
    _I32.pack_into(out, POS_LENGTH, len(out) - LOG_OVERHEAD)
    attributes = (header.attributes & ~COMPRESSION_MASK) | codec
    _I16.pack_into(out, POS_ATTRIBUTES, attributes)
    _U32.pack_into(out, POS_CRC, compute_crc(out, 0, len(out)))
    return bytes(out)


# --------------------------------------------------------------------- in-place edits


def set_base_offset(buf: bytearray | memoryview, pos: int, base_offset: int) -> None:
    """Write ``base_offset`` into the batch at ``pos`` (not covered by the CRC)."""
    _I64.pack_into(buf, pos + POS_BASE_OFFSET, base_offset)


def set_partition_leader_epoch(buf: bytearray | memoryview, pos: int, epoch: int) -> None:
    """Write the partition leader epoch into the batch at ``pos`` (not covered by the CRC)."""
    _I32.pack_into(buf, pos + POS_LEADER_EPOCH, epoch)


def set_log_append_time(buf: bytearray | memoryview, pos: int, timestamp: int) -> None:
    """Mark the batch at ``pos`` as LogAppendTime stamped ``timestamp``; recompute its CRC.

    Consumers take every record's timestamp from ``max_timestamp`` in such batches.
    """
    (length,) = _I32.unpack_from(buf, pos + POS_LENGTH)
    (attributes,) = _I16.unpack_from(buf, pos + POS_ATTRIBUTES)
    _I16.pack_into(buf, pos + POS_ATTRIBUTES, attributes | ATTR_TIMESTAMP_TYPE)
    _I64.pack_into(buf, pos + POS_MAX_TIMESTAMP, timestamp)
    _U32.pack_into(buf, pos + POS_CRC, compute_crc(buf, pos, length + LOG_OVERHEAD))


# --------------------------------------------------------------------------- records

Header = tuple[str, bytes | None]


class Record(NamedTuple):
    """One record of a batch, with its offset and timestamp relative to the batch."""

    attributes: int = 0
    timestamp_delta: int = 0
    offset_delta: int = 0
    key: bytes | None = None
    value: bytes | None = None
    headers: tuple[Header, ...] = ()


class ControlRecord(NamedTuple):
    """A transaction marker: ``kind`` is CONTROL_ABORT (0) or CONTROL_COMMIT (1)."""

    kind: int
    version: int
    coordinator_epoch: int

    @property
    def is_commit(self) -> bool:
        return self.kind == CONTROL_COMMIT


def _read_varint(data: bytes, pos: int, end: int, max_bytes: int) -> tuple[int, int]:
    """Decode a zigzag varint at ``pos``; return ``(value, next position)``."""
    if pos >= end:
        raise CorruptRecordError("varint runs past the end of the record data")
    b = data[pos]
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), pos + 1
    raw = b & 0x7F
    shift = 7
    pos += 1
    stop = min(end, pos + max_bytes - 1)
    while pos < stop:
        b = data[pos]
        pos += 1
        raw |= (b & 0x7F) << shift
        if b < 0x80:
            return (raw >> 1) ^ -(raw & 1), pos
        shift += 7
    if pos >= end:
        raise CorruptRecordError("varint runs past the end of the record data")
    raise CorruptRecordError(f"varint longer than {max_bytes} bytes")


def _write_varint(out: bytearray, value: int) -> None:
    raw = (value << 1) ^ (value >> 63)
    raw &= 0xFFFFFFFFFFFFFFFF
    while raw >= 0x80:
        out.append((raw & 0x7F) | 0x80)
        raw >>= 7
    out.append(raw)


def _decode_records(data: bytes, count: int) -> list[Record]:
    """Decode exactly ``count`` records filling ``data``."""
    end = len(data)
    if count < 0:
        raise CorruptRecordError(f"negative records count {count}")
    if count > end // 7 + 1:  # a record takes at least 7 bytes
        raise CorruptRecordError(f"records count {count} cannot fit in {end} bytes")
    records = []
    pos = 0
    rv = _read_varint
    for _ in range(count):
        length, pos = rv(data, pos, end, 5)
        if length < 6:  # attributes + five one-byte varints at least
            raise CorruptRecordError(f"record length {length} is too small")
        stop = pos + length
        if stop > end:
            raise CorruptRecordError(f"record of {length} bytes runs past the batch")
        attributes = data[pos]
        ts_delta, pos = rv(data, pos + 1, stop, 10)
        off_delta, pos = rv(data, pos, stop, 5)
        klen, pos = rv(data, pos, stop, 5)
        if klen < 0:
            if klen != -1:
                raise CorruptRecordError(f"invalid key length {klen}")
            key = None
        else:
            if pos + klen > stop:
                raise CorruptRecordError("key runs past the record")
            key = data[pos : pos + klen]
            pos += klen
        vlen, pos = rv(data, pos, stop, 5)
        if vlen < 0:
            if vlen != -1:
                raise CorruptRecordError(f"invalid value length {vlen}")
            value = None
        else:
            if pos + vlen > stop:
                raise CorruptRecordError("value runs past the record")
            value = data[pos : pos + vlen]
            pos += vlen
        nheaders, pos = rv(data, pos, stop, 5)
        if nheaders < 0 or nheaders > stop - pos:
            raise CorruptRecordError(f"invalid header count {nheaders}")
        headers: list[Header] = []
        for _h in range(nheaders):
            hklen, pos = rv(data, pos, stop, 5)
            if hklen < 0 or pos + hklen > stop:
                raise CorruptRecordError(f"invalid header key length {hklen}")
            hkey = data[pos : pos + hklen].decode("utf-8", "surrogateescape")
            pos += hklen
            hvlen, pos = rv(data, pos, stop, 5)
            if hvlen < 0:
                if hvlen != -1:
                    raise CorruptRecordError(f"invalid header value length {hvlen}")
                hval = None
            else:
                if pos + hvlen > stop:
                    raise CorruptRecordError("header value runs past the record")
                hval = data[pos : pos + hvlen]
                pos += hvlen
            headers.append((hkey, hval))
        if pos != stop:
            raise CorruptRecordError(
                f"record declares {length} bytes but its fields take {length - (stop - pos)}"
            )
        records.append(Record(attributes, ts_delta, off_delta, key, value, tuple(headers)))
    if pos != end:
        raise CorruptRecordError(f"{end - pos} bytes left after the last of {count} records")
    return records


def _encode_record(out: bytearray, record: Record) -> None:
    body = bytearray()
    body.append(record.attributes & 0xFF)
    _write_varint(body, record.timestamp_delta)
    _write_varint(body, record.offset_delta)
    key = record.key
    if key is None:
        body.append(1)  # zigzag(-1)
    else:
        _write_varint(body, len(key))
        body += key
    value = record.value
    if value is None:
        body.append(1)
    else:
        _write_varint(body, len(value))
        body += value
    _write_varint(body, len(record.headers))
    for hkey, hval in record.headers:
        raw_key = hkey.encode("utf-8", "surrogateescape")
        _write_varint(body, len(raw_key))
        body += raw_key
        if hval is None:
            body.append(1)
        else:
            _write_varint(body, len(hval))
            body += hval
    _write_varint(out, len(body))
    out += body


# ----------------------------------------------------------------------- compression


def _too_big(limit: int) -> DecompressionLimitError:
    return DecompressionLimitError(f"decompressed records exceed the limit of {limit} bytes")


def _gunzip(data: bytes, limit: int) -> bytes:
    out = bytearray()
    while True:
        d = zlib.decompressobj(47)  # gzip or zlib header, detected
        out += d.decompress(data, limit + 1 - len(out))
        if len(out) > limit:
            raise _too_big(limit)
        if not d.eof:
            if d.unconsumed_tail:
                raise _too_big(limit)
            raise CorruptRecordError("truncated gzip stream")
        data = d.unused_data
        if not data:
            return bytes(out)


def _unsnappy_raw(data: bytes, limit: int) -> bytes:
    if cramjam.snappy.decompress_raw_len(data) > limit:
        raise _too_big(limit)
    return bytes(cramjam.snappy.decompress_raw(data))


def _unsnappy(data: bytes, limit: int) -> bytes:
    if not data.startswith(_XERIAL_MAGIC):
        return _unsnappy_raw(data, limit)
    # xerial framing (the Java client): magic, version, compatible version, then
    # blocks of [i32 compressed length][raw snappy block].
    pos = _XERIAL_HEADER.size
    end = len(data)
    if end < pos:
        raise CorruptRecordError("truncated xerial snappy header")
    out = bytearray()
    while pos < end:
        if pos + 4 > end:
            raise CorruptRecordError("truncated xerial snappy block length")
        (blen,) = _I32.unpack_from(data, pos)
        pos += 4
        if blen < 0 or pos + blen > end:
            raise CorruptRecordError(f"invalid xerial snappy block length {blen}")
        out += _unsnappy_raw(data[pos : pos + blen], limit - len(out))
        pos += blen
    return bytes(out)


def _unlz4(data: bytes, limit: int) -> bytes:
    out = bytearray()
    while data:
        d = lz4.frame.LZ4FrameDecompressor()
        chunk = d.decompress(data, max_length=limit + 1 - len(out))
        out += chunk
        while not d.eof and len(out) <= limit and not d.needs_input:
            chunk = d.decompress(b"", max_length=limit + 1 - len(out))
            if not chunk:
                break
            out += chunk
        if len(out) > limit:
            raise _too_big(limit)
        if not d.eof:
            raise CorruptRecordError("truncated lz4 frame")
        data = d.unused_data
    return bytes(out)


def _unzstd(data: bytes, limit: int) -> bytes:
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    out = bytearray()
    while True:
        chunk = reader.read(min(1 << 20, limit + 1 - len(out)))
        if not chunk:
            return bytes(out)
        out += chunk
        if len(out) > limit:
            raise _too_big(limit)


def decompress(codec: int, data: bytes, limit: int = DEFAULT_MAX_UNCOMPRESSED) -> bytes:
    """Decompress a batch's record data, refusing to produce more than ``limit`` bytes."""
    try:
        if codec == COMPRESSION_NONE:
            return data
        if codec == COMPRESSION_GZIP:
            return _gunzip(data, limit)
        if codec == COMPRESSION_SNAPPY:
            return _unsnappy(data, limit)
        if codec == COMPRESSION_LZ4:
            return _unlz4(data, limit)
        if codec == COMPRESSION_ZSTD:
            return _unzstd(data, limit)
    except RecordError:
        raise
    except Exception as exc:  # the codecs raise assorted types for corrupt input
        raise CorruptRecordError(f"cannot decompress codec {codec} data: {exc}") from exc
    raise UnsupportedCompressionTypeError(f"unknown compression codec id {codec}")


def compress(codec: int, data: bytes) -> bytes:
    """Compress record data the way Kafka's clients do, so every client can read it."""
    if codec == COMPRESSION_NONE:
        return data
    if codec == COMPRESSION_GZIP:
        c = zlib.compressobj(6, zlib.DEFLATED, 31)
        return c.compress(data) + c.flush()
    if codec == COMPRESSION_SNAPPY:
        out = bytearray(_XERIAL_HEADER.pack(_XERIAL_MAGIC, 1, 1))
        with memoryview(data) as view:
            for start in range(0, len(data), _XERIAL_BLOCK):
                block = bytes(cramjam.snappy.compress_raw(view[start : start + _XERIAL_BLOCK]))
                out += _I32.pack(len(block))
                out += block
        return bytes(out)
    if codec == COMPRESSION_LZ4:
        # The frame settings Kafka's own writer uses: independent 64 KiB blocks, no
        # checksums, no content size.
        return lz4.frame.compress(
            data,
            block_size=lz4.frame.BLOCKSIZE_MAX64KB,
            block_linked=False,
            content_checksum=False,
            store_size=False,
        )
    if codec == COMPRESSION_ZSTD:
        return zstandard.ZstdCompressor(level=3).compress(data)
    raise UnsupportedCompressionTypeError(f"unknown compression codec id {codec}")


# ------------------------------------------------------------------ record iteration


def decode_batch(
    batch: bytes | bytearray | memoryview, *, max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED
) -> tuple[BatchHeader, list[Record]]:
    """Decode one whole batch (header at position 0) into its header and records.

    Does not check the CRC; call :func:`validate_batch` first for untrusted bytes.
    """
    if len(batch) < HEADER_SIZE:
        raise CorruptRecordError(f"{len(batch)} bytes cannot hold a batch header")
    _check_magic(batch, 0)
    header = parse_header(batch, 0)
    size = header.batch_length + LOG_OVERHEAD
    if header.batch_length < MIN_BATCH_LENGTH or size > len(batch):
        raise CorruptRecordError(f"batch length {header.batch_length} does not fit the buffer")
    data = bytes(batch[HEADER_SIZE:size])
    codec = header.attributes & COMPRESSION_MASK
    if not data and header.records_count == 0:
        return header, []  # an empty batch kept by compaction carries no payload at all
    if codec != COMPRESSION_NONE:
        data = decompress(codec, data, max_uncompressed)
    elif len(data) > max_uncompressed:
        raise _too_big(max_uncompressed)
    return header, _decode_records(data, header.records_count)


def iter_records(
    batch: bytes | bytearray | memoryview, *, max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED
) -> Iterator[Record]:
    """Iterate over the records of one batch; see :func:`decode_batch`."""
    return iter(decode_batch(batch, max_uncompressed=max_uncompressed)[1])


def build_batch(
    records: Iterable[Record],
    *,
    base_offset: int = 0,
    compression: int = COMPRESSION_NONE,
    timestamp_type: int = TIMESTAMP_CREATE_TIME,
    producer_id: int = NO_PRODUCER_ID,
    producer_epoch: int = NO_PRODUCER_EPOCH,
    base_sequence: int = NO_SEQUENCE,
    transactional: bool = False,
    control: bool = False,
    partition_leader_epoch: int = -1,
    base_timestamp: int = 0,
    max_timestamp: int | None = None,
    last_offset_delta: int | None = None,
    delete_horizon: bool = False,
) -> bytes:
    """Encode records into one v2 batch with a correct CRC.

    Record timestamps are ``base_timestamp + timestamp_delta``. ``max_timestamp``
    defaults to the largest record timestamp, ``last_offset_delta`` to the largest
    record offset delta; both may be given to preserve the values of a batch that
    compaction shrank (an empty batch keeps a producer's last sequence alive).
    ``delete_horizon`` marks ``base_timestamp`` as the compaction delete horizon.
    """
    records = list(records)
    body = bytearray()
    for record in records:
        _encode_record(body, record)
    if compression not in KNOWN_CODECS:
        raise UnsupportedCompressionTypeError(f"unknown compression codec id {compression}")
    # An empty batch (compaction keeps one to remember a producer's last sequence)
    # carries no payload at all, whatever its codec, as Kafka writes it.
    payload = compress(compression, bytes(body)) if compression and records else body
    if last_offset_delta is None:
        last_offset_delta = max((r.offset_delta for r in records), default=0)
    if max_timestamp is None:
        if records:
            max_timestamp = base_timestamp + max(r.timestamp_delta for r in records)
        else:
            max_timestamp = base_timestamp
    attributes = compression & COMPRESSION_MASK
    if timestamp_type == TIMESTAMP_LOG_APPEND_TIME:
        attributes |= ATTR_TIMESTAMP_TYPE
    if transactional:
        attributes |= ATTR_TRANSACTIONAL
    if control:
        attributes |= ATTR_CONTROL
    if delete_horizon:
        attributes |= ATTR_DELETE_HORIZON
    size = HEADER_SIZE + len(payload)
    out = bytearray(size)
    _HEADER.pack_into(
        out,
        0,
        base_offset,
        size - LOG_OVERHEAD,
        partition_leader_epoch,
        2,
        0,
        attributes,
        last_offset_delta,
        base_timestamp,
        max_timestamp,
        producer_id,
        producer_epoch,
        base_sequence,
        len(records),
    )
    out[HEADER_SIZE:] = payload
    _U32.pack_into(out, POS_CRC, compute_crc(out, 0, size))
    return bytes(out)


# ------------------------------------------------------------------- control batches


def build_control_batch(
    commit: bool,
    producer_id: int,
    producer_epoch: int,
    coordinator_epoch: int,
    timestamp: int,
    *,
    base_offset: int = 0,
    partition_leader_epoch: int = -1,
) -> bytes:
    """A transaction marker batch: one control record ending ``producer_id``'s transaction."""
    kind = CONTROL_COMMIT if commit else CONTROL_ABORT
    record = Record(
        key=_CONTROL_KEY.pack(0, kind),
        value=_CONTROL_VALUE.pack(0, coordinator_epoch),
    )
    return build_batch(
        [record],
        base_offset=base_offset,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        transactional=True,
        control=True,
        partition_leader_epoch=partition_leader_epoch,
        base_timestamp=timestamp,
    )


def parse_control_record(key: bytes | None, value: bytes | None = None) -> ControlRecord:
    """Decode a control record's key (and value, for markers) into a :class:`ControlRecord`.

    Unknown future control types are returned with their kind; only the key is required.
    """
    if key is None or len(key) < _CONTROL_KEY.size:
        raise CorruptRecordError("control record key is shorter than 4 bytes")
    version, kind = _CONTROL_KEY.unpack_from(key, 0)
    if version < 0:
        raise CorruptRecordError(f"invalid control record version {version}")
    coordinator_epoch = -1
    if kind in (CONTROL_ABORT, CONTROL_COMMIT) and value is not None:
        if len(value) < _CONTROL_VALUE.size:
            raise CorruptRecordError("transaction marker value is shorter than 6 bytes")
        _v, coordinator_epoch = _CONTROL_VALUE.unpack_from(value, 0)
    return ControlRecord(kind, version, coordinator_epoch)


def control_record_of(batch: bytes | bytearray | memoryview) -> ControlRecord:
    """The control record of a (tiny, uncompressed) control batch; O(1) work per batch."""
    _header, records = decode_batch(batch, max_uncompressed=1 << 20)
    if not records:
        raise CorruptRecordError("control batch without a control record")
    first = records[0]
    return parse_control_record(first.key, first.value)
