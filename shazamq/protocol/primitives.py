"""The wire primitives of the Kafka protocol, and the runtime the generated codecs use.

Readers take ``(buf, offset)`` and return ``(value, new_offset)``; ``buf`` is a
``memoryview`` (or any 1-D byte buffer) over the whole input. Writers append to a
``bytearray``. Every reader checks a length against the bytes that remain before it
allocates or slices anything, and reports malformed input as ``DecodeError`` with the
offset where it went wrong.

Representation of Kafka types in Python:

========================  ==========================================================
int8/16/32/64, uint16/32  ``int``
float64                   ``float``
bool                      ``bool`` (any non-zero byte decodes as True)
string                    ``str``, or ``None`` where the field is nullable
bytes                     ``bytes`` on decode (a copy); any bytes-like on encode
records                   a zero-copy ``memoryview`` slice of the input, or ``None``;
                          any bytes-like (or None) on encode
uuid                      ``uuid.UUID``; the all-zero UUID (``ZERO_UUID``) is Kafka's
                          "null"/unset topic id
arrays                    ``list``, or ``None`` where nullable
structs                   the generated class, or ``None`` where nullable
========================  ==========================================================

A ``memoryview`` pins the buffer it views: a ``bytearray`` cannot be resized while a
decoded records view of it is alive. Decode from ``bytes`` (or a buffer you do not reuse)
when the decoded message outlives the read.

The generated message classes derive from ``Message``: ``decode``/``encode``/
``encode_into`` check the version, dispatch to the straight-line function generated for
that version's layout, and turn low-level failures into ``DecodeError`` (decoding) or
``ValueError`` (encoding).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from struct import Struct
from typing import Any, ClassVar, NamedTuple
from uuid import UUID

from shazamq.protocol.errors import DecodeError, UnsupportedVersionError

__all__ = [
    "GATHER_MIN_BYTES",
    "MAX_VERSION",
    "MISSING",
    "ZERO_UUID",
    "ApiInfo",
    "FieldSpec",
    "GatherBuffer",
    "Message",
    "Struct",
    "check_tag_end",
    "read_array_length",
    "read_bool",
    "read_bytes",
    "read_compact_array_length",
    "read_compact_bytes",
    "read_compact_nullable_array_length",
    "read_compact_nullable_bytes",
    "read_compact_nullable_string",
    "read_compact_records",
    "read_compact_string",
    "read_fixed_array",
    "read_float64",
    "read_int8",
    "read_int16",
    "read_int32",
    "read_int64",
    "read_nullable_array_length",
    "read_nullable_bytes",
    "read_nullable_string",
    "read_records",
    "read_string",
    "read_tag_header",
    "read_uint16",
    "read_uint32",
    "read_uuid",
    "read_uvarint",
    "read_uvarlong",
    "read_varint",
    "read_varlong",
    "set_layouts",
    "skip_tagged_fields",
    "write_array_length",
    "write_bool",
    "write_bytes",
    "write_compact_array_length",
    "write_compact_bytes",
    "write_compact_nullable_array_length",
    "write_compact_nullable_bytes",
    "write_compact_nullable_string",
    "write_compact_records",
    "write_compact_string",
    "write_fixed_array",
    "write_float64",
    "write_int8",
    "write_int16",
    "write_int32",
    "write_int64",
    "write_nullable_array_length",
    "write_nullable_bytes",
    "write_nullable_string",
    "write_records",
    "write_string",
    "write_tagged_fields",
    "write_uint16",
    "write_uint32",
    "write_uuid",
    "write_uvarint",
    "write_uvarlong",
    "write_varint",
    "write_varlong",
]

#: Upper bound of an open-ended version range ("3+").
MAX_VERSION = 0x7FFF

#: Kafka's null topic id.
ZERO_UUID = UUID(int=0)


class _Missing:
    """Sentinel for "argument not given" in generated ``__init__`` methods."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self) -> str:
        return "MISSING"


#: Default of generated ``__init__`` parameters whose default is a fresh list or struct,
#: so that an explicit ``None`` (Kafka null) stays distinguishable from "not given".
MISSING: Any = _Missing()

_I8 = Struct(">b")
_I16 = Struct(">h")
_I32 = Struct(">i")
_I64 = Struct(">q")
_U16 = Struct(">H")
_U32 = Struct(">I")
_F64 = Struct(">d")
_BOOL = Struct(">?")
_unpack_i16 = _I16.unpack_from
_unpack_i32 = _I32.unpack_from
_pack_i16 = _I16.pack
_pack_i32 = _I32.pack
_NULL16 = b"\xff\xff"
_NULL32 = b"\xff\xff\xff\xff"


# ---------------------------------------------------------------------------
# fixed-width numbers
# ---------------------------------------------------------------------------


def _fixed_reader(st: Struct, what: str) -> Callable[[Any, int], tuple[Any, int]]:
    unpack_from = st.unpack_from
    size = st.size

    def read(buf: Any, o: int) -> tuple[Any, int]:
        try:
            return unpack_from(buf, o)[0], o + size
        except struct.error:
            raise DecodeError(
                f"truncated {what} at offset {o}: need {size} bytes, {max(len(buf) - o, 0)} remain"
            ) from None

    read.__name__ = f"read_{what}"
    read.__doc__ = f"Read a big-endian {what}."
    return read


def _fixed_writer(st: Struct, what: str) -> Callable[[bytearray, Any], None]:
    pack = st.pack

    def write(out: bytearray, value: Any) -> None:
        out += pack(value)

    write.__name__ = f"write_{what}"
    write.__doc__ = f"Append a big-endian {what}."
    return write


read_int8 = _fixed_reader(_I8, "int8")
read_int16 = _fixed_reader(_I16, "int16")
read_int32 = _fixed_reader(_I32, "int32")
read_int64 = _fixed_reader(_I64, "int64")
read_uint16 = _fixed_reader(_U16, "uint16")
read_uint32 = _fixed_reader(_U32, "uint32")
read_float64 = _fixed_reader(_F64, "float64")
read_bool = _fixed_reader(_BOOL, "bool")
write_int8 = _fixed_writer(_I8, "int8")
write_int16 = _fixed_writer(_I16, "int16")
write_int32 = _fixed_writer(_I32, "int32")
write_int64 = _fixed_writer(_I64, "int64")
write_uint16 = _fixed_writer(_U16, "uint16")
write_uint32 = _fixed_writer(_U32, "uint32")
write_float64 = _fixed_writer(_F64, "float64")
write_bool = _fixed_writer(_BOOL, "bool")


# ---------------------------------------------------------------------------
# varints
# ---------------------------------------------------------------------------


def _read_unsigned(buf: Any, o: int, max_bytes: int, bits: int, what: str) -> tuple[int, int]:
    value = 0
    shift = 0
    i = o
    try:
        while True:
            b = buf[i]
            i += 1
            value |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
            if i - o >= max_bytes:
                raise DecodeError(f"{what} at offset {o} is longer than {max_bytes} bytes")
    except IndexError:
        raise DecodeError(f"truncated {what} at offset {o}") from None
    if value >> bits:
        raise DecodeError(f"{what} at offset {o} does not fit in {bits} bits")
    return value, i


def read_uvarint(buf: Any, o: int) -> tuple[int, int]:
    """Read an unsigned varint of at most 5 bytes (a 32-bit value)."""
    # unrolled: lengths and tags are read on every field of flexible versions
    try:
        b = buf[o]
        if b < 0x80:
            return b, o + 1
        v = b & 0x7F
        b = buf[o + 1]
        if b < 0x80:
            return v | (b << 7), o + 2
        v |= (b & 0x7F) << 7
        b = buf[o + 2]
        if b < 0x80:
            return v | (b << 14), o + 3
        v |= (b & 0x7F) << 14
        b = buf[o + 3]
        if b < 0x80:
            return v | (b << 21), o + 4
        v |= (b & 0x7F) << 21
        b = buf[o + 4]
    except IndexError:
        raise DecodeError(f"truncated unsigned varint at offset {o}") from None
    if b < 0x10:
        return v | (b << 28), o + 5
    if b < 0x80:
        raise DecodeError(f"unsigned varint at offset {o} does not fit in 32 bits")
    raise DecodeError(f"unsigned varint at offset {o} is longer than 5 bytes")


_compact_length = read_uvarint


def read_uvarlong(buf: Any, o: int) -> tuple[int, int]:
    """Read an unsigned varlong of at most 10 bytes (a 64-bit value)."""
    return _read_unsigned(buf, o, 10, 64, "unsigned varlong")


def read_varint(buf: Any, o: int) -> tuple[int, int]:
    """Read a zigzag-encoded signed varint (32-bit)."""
    v, o = _read_unsigned(buf, o, 5, 32, "varint")
    return (v >> 1) ^ -(v & 1), o


def read_varlong(buf: Any, o: int) -> tuple[int, int]:
    """Read a zigzag-encoded signed varlong (64-bit)."""
    v, o = _read_unsigned(buf, o, 10, 64, "varlong")
    return (v >> 1) ^ -(v & 1), o


def write_uvarint(out: bytearray, n: int) -> None:
    """Append an unsigned varint (0 <= n < 2**32)."""
    if n < 0x80:
        if n < 0:
            raise ValueError(f"unsigned varint cannot hold {n}")
        out.append(n)
        return
    if n > 0xFFFFFFFF:
        raise ValueError(f"unsigned varint cannot hold {n}")
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def write_uvarlong(out: bytearray, n: int) -> None:
    """Append an unsigned varlong (0 <= n < 2**64)."""
    if n < 0 or n > 0xFFFFFFFFFFFFFFFF:
        raise ValueError(f"unsigned varlong cannot hold {n}")
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def write_varint(out: bytearray, n: int) -> None:
    """Append a zigzag-encoded signed varint (-2**31 <= n < 2**31)."""
    if n < -0x80000000 or n > 0x7FFFFFFF:
        raise ValueError(f"varint cannot hold {n}")
    write_uvarint(out, ((n << 1) ^ (n >> 31)) & 0xFFFFFFFF)


def write_varlong(out: bytearray, n: int) -> None:
    """Append a zigzag-encoded signed varlong (-2**63 <= n < 2**63)."""
    if n < -0x8000000000000000 or n > 0x7FFFFFFFFFFFFFFF:
        raise ValueError(f"varlong cannot hold {n}")
    write_uvarlong(out, ((n << 1) ^ (n >> 63)) & 0xFFFFFFFFFFFFFFFF)


# ---------------------------------------------------------------------------
# strings, bytes, records
# ---------------------------------------------------------------------------


def _length16(buf: Any, o: int, what: str) -> int:
    try:
        return _unpack_i16(buf, o)[0]
    except struct.error:
        raise DecodeError(f"truncated {what} length at offset {o}") from None


def _length32(buf: Any, o: int, what: str) -> int:
    try:
        return _unpack_i32(buf, o)[0]
    except struct.error:
        raise DecodeError(f"truncated {what} length at offset {o}") from None


def _bad_length(n: int, at: int, what: str, nullable: bool) -> DecodeError:
    if n == -1 and not nullable:
        return DecodeError(f"non-nullable {what} at offset {at} is null")
    return DecodeError(f"{what} at offset {at} has negative length {n}")


def _overrun(n: int, at: int, remaining: int, what: str) -> DecodeError:
    return DecodeError(
        f"{what} at offset {at} claims {n} bytes but only {max(remaining, 0)} remain"
    )


def _utf8(buf: Any, o: int, e: int) -> str:
    try:
        return str(buf[o:e], "utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"invalid UTF-8 in string at offset {o}: {exc.reason}") from None


def read_string(buf: Any, o: int) -> tuple[str, int]:
    """STRING: int16 length, then UTF-8 bytes."""
    n = _length16(buf, o, "string")
    if n < 0:
        raise _bad_length(n, o, "string", False)
    e = o + 2 + n
    if e > len(buf):
        raise _overrun(n, o, len(buf) - o - 2, "string")
    return _utf8(buf, o + 2, e), e


def read_nullable_string(buf: Any, o: int) -> tuple[str | None, int]:
    """NULLABLE_STRING: int16 length (-1 for null), then UTF-8 bytes."""
    n = _length16(buf, o, "string")
    if n < 0:
        if n == -1:
            return None, o + 2
        raise _bad_length(n, o, "string", True)
    e = o + 2 + n
    if e > len(buf):
        raise _overrun(n, o, len(buf) - o - 2, "string")
    return _utf8(buf, o + 2, e), e


def read_compact_string(buf: Any, o: int) -> tuple[str, int]:
    """COMPACT_STRING: unsigned varint length+1, then UTF-8 bytes."""
    n, s = _compact_length(buf, o)
    if n == 0:
        raise _bad_length(-1, o, "compact string", False)
    e = s + n - 1
    if e > len(buf):
        raise _overrun(n - 1, o, len(buf) - s, "compact string")
    return _utf8(buf, s, e), e


def read_compact_nullable_string(buf: Any, o: int) -> tuple[str | None, int]:
    """COMPACT_NULLABLE_STRING: unsigned varint length+1 (0 for null), then UTF-8 bytes."""
    n, s = _compact_length(buf, o)
    if n == 0:
        return None, s
    e = s + n - 1
    if e > len(buf):
        raise _overrun(n - 1, o, len(buf) - s, "compact string")
    return _utf8(buf, s, e), e


def read_bytes(buf: Any, o: int) -> tuple[bytes, int]:
    """BYTES: int32 length, then the bytes (copied)."""
    n = _length32(buf, o, "bytes")
    if n < 0:
        raise _bad_length(n, o, "bytes", False)
    e = o + 4 + n
    if e > len(buf):
        raise _overrun(n, o, len(buf) - o - 4, "bytes")
    return bytes(buf[o + 4 : e]), e


def read_nullable_bytes(buf: Any, o: int) -> tuple[bytes | None, int]:
    """NULLABLE_BYTES: int32 length (-1 for null), then the bytes (copied)."""
    n = _length32(buf, o, "bytes")
    if n < 0:
        if n == -1:
            return None, o + 4
        raise _bad_length(n, o, "bytes", True)
    e = o + 4 + n
    if e > len(buf):
        raise _overrun(n, o, len(buf) - o - 4, "bytes")
    return bytes(buf[o + 4 : e]), e


def read_compact_bytes(buf: Any, o: int) -> tuple[bytes, int]:
    """COMPACT_BYTES: unsigned varint length+1, then the bytes (copied)."""
    n, s = _compact_length(buf, o)
    if n == 0:
        raise _bad_length(-1, o, "compact bytes", False)
    e = s + n - 1
    if e > len(buf):
        raise _overrun(n - 1, o, len(buf) - s, "compact bytes")
    return bytes(buf[s:e]), e


def read_compact_nullable_bytes(buf: Any, o: int) -> tuple[bytes | None, int]:
    """COMPACT_NULLABLE_BYTES: unsigned varint length+1 (0 for null), then the bytes."""
    n, s = _compact_length(buf, o)
    if n == 0:
        return None, s
    e = s + n - 1
    if e > len(buf):
        raise _overrun(n - 1, o, len(buf) - s, "compact bytes")
    return bytes(buf[s:e]), e


def read_records(buf: Any, o: int) -> tuple[memoryview | None, int]:
    """RECORDS (nullable): int32 length (-1 for null); returns a view, no copy."""
    n = _length32(buf, o, "records")
    if n < 0:
        if n == -1:
            return None, o + 4
        raise _bad_length(n, o, "records", True)
    e = o + 4 + n
    if e > len(buf):
        raise _overrun(n, o, len(buf) - o - 4, "records")
    return buf[o + 4 : e], e


def read_compact_records(buf: Any, o: int) -> tuple[memoryview | None, int]:
    """COMPACT_RECORDS (nullable): varint length+1 (0 for null); returns a view, no copy."""
    n, s = _compact_length(buf, o)
    if n == 0:
        return None, s
    e = s + n - 1
    if e > len(buf):
        raise _overrun(n - 1, o, len(buf) - s, "compact records")
    return buf[s:e], e


def _encode_str(s: str, what: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > 0x7FFF:
        raise ValueError(f"{what} of {len(b)} UTF-8 bytes exceeds the 32767-byte limit")
    return b


def write_string(out: bytearray, s: str) -> None:
    b = _encode_str(s, "string")
    out += _pack_i16(len(b))
    out += b


def write_nullable_string(out: bytearray, s: str | None) -> None:
    if s is None:
        out += _NULL16
        return
    b = _encode_str(s, "string")
    out += _pack_i16(len(b))
    out += b


def write_compact_string(out: bytearray, s: str) -> None:
    b = _encode_str(s, "compact string")
    n = len(b) + 1
    if n < 0x80:
        out.append(n)
    else:
        write_uvarint(out, n)
    out += b


def write_compact_nullable_string(out: bytearray, s: str | None) -> None:
    if s is None:
        out.append(0)
        return
    b = _encode_str(s, "compact string")
    write_uvarint(out, len(b) + 1)
    out += b


def write_bytes(out: bytearray, b: Any) -> None:
    out += _pack_i32(len(b))
    out += b


def write_nullable_bytes(out: bytearray, b: Any) -> None:
    if b is None:
        out += _NULL32
        return
    out += _pack_i32(len(b))
    out += b


def write_compact_bytes(out: bytearray, b: Any) -> None:
    write_uvarint(out, len(b) + 1)
    out += b


def write_compact_nullable_bytes(out: bytearray, b: Any) -> None:
    if b is None:
        out.append(0)
        return
    n = len(b) + 1
    if n < 0x80:
        out.append(n)
    else:
        write_uvarint(out, n)
    out += b


#: RECORDS values at least this long are not copied into a ``GatherBuffer``.
GATHER_MIN_BYTES = 16 * 1024


class GatherBuffer(bytearray):
    """An encode buffer that leaves large RECORDS values out of line.

    Writing a RECORDS field into a ``GatherBuffer`` appends its length prefix as usual,
    but a value of ``GATHER_MIN_BYTES`` or more is not copied: ``refs`` records
    ``(position, value)`` and the value goes out as its own buffer (``pieces``), so a
    Fetch response reaches the socket without its record batches being copied into it.
    Every other writer sees an ordinary ``bytearray``.
    """

    __slots__ = ("refs",)

    def __init__(self, initial: int | bytes = 0) -> None:
        super().__init__(initial)
        self.refs: list[tuple[int, Any]] = []

    @property
    def total_size(self) -> int:
        """Bytes of the whole encoding, out-of-line values included."""
        return len(self) + sum(len(value) for _pos, value in self.refs)

    def pieces(self) -> list[Any]:
        """The encoding as a list of buffers to send in order (for ``writelines``)."""
        if not self.refs:
            return [self]
        view = memoryview(self)
        out: list[Any] = []
        prev = 0
        for pos, value in self.refs:
            if pos > prev:
                out.append(view[prev:pos])
            out.append(value)
            prev = pos
        if prev < len(self):
            out.append(view[prev:])
        return out


def write_records(out: bytearray, b: Any) -> None:
    if b is None:
        out += _NULL32
        return
    n = len(b)
    out += _pack_i32(n)
    if n >= GATHER_MIN_BYTES and out.__class__ is GatherBuffer:
        out.refs.append((len(out), b))
    else:
        out += b


def write_compact_records(out: bytearray, b: Any) -> None:
    if b is None:
        out.append(0)
        return
    n = len(b)
    if n + 1 < 0x80:
        out.append(n + 1)
    else:
        write_uvarint(out, n + 1)
    if n >= GATHER_MIN_BYTES and out.__class__ is GatherBuffer:
        out.refs.append((len(out), b))
    else:
        out += b


# ---------------------------------------------------------------------------
# uuid
# ---------------------------------------------------------------------------


def read_uuid(buf: Any, o: int) -> tuple[UUID, int]:
    """UUID: 16 bytes; the all-zero value decodes to the shared ``ZERO_UUID``."""
    e = o + 16
    if e > len(buf):
        raise DecodeError(f"truncated uuid at offset {o}: {max(len(buf) - o, 0)} bytes remain")
    i = int.from_bytes(buf[o:e], "big")
    return (UUID(int=i) if i else ZERO_UUID), e


def write_uuid(out: bytearray, u: UUID) -> None:
    out += u.bytes


# ---------------------------------------------------------------------------
# arrays
# ---------------------------------------------------------------------------


def read_array_length(buf: Any, o: int) -> tuple[int, int]:
    """ARRAY: int32 element count (not null)."""
    n = _length32(buf, o, "array")
    if n < 0:
        raise _bad_length(n, o, "array", False)
    if n > len(buf) - o - 4:
        raise _overrun(n, o, len(buf) - o - 4, "array of elements")
    return n, o + 4


def read_nullable_array_length(buf: Any, o: int) -> tuple[int, int]:
    """NULLABLE ARRAY: int32 element count; -1 is returned for null."""
    n = _length32(buf, o, "array")
    if n < 0:
        if n == -1:
            return -1, o + 4
        raise _bad_length(n, o, "array", True)
    if n > len(buf) - o - 4:
        raise _overrun(n, o, len(buf) - o - 4, "array of elements")
    return n, o + 4


def read_compact_array_length(buf: Any, o: int) -> tuple[int, int]:
    """COMPACT_ARRAY: unsigned varint count+1 (not null)."""
    n, s = _compact_length(buf, o)
    if n == 0:
        raise _bad_length(-1, o, "compact array", False)
    if n - 1 > len(buf) - s:
        raise _overrun(n - 1, o, len(buf) - s, "compact array of elements")
    return n - 1, s


def read_compact_nullable_array_length(buf: Any, o: int) -> tuple[int, int]:
    """COMPACT_NULLABLE_ARRAY: unsigned varint count+1 (0 for null, returned as -1)."""
    n, s = _compact_length(buf, o)
    if n - 1 > len(buf) - s:
        raise _overrun(n - 1, o, len(buf) - s, "compact array of elements")
    return n - 1, s


def read_fixed_array(buf: Any, o: int, n: int, code: str, size: int) -> tuple[list[Any], int]:
    """``n`` fixed-width elements of struct format ``code`` (``size`` bytes each)."""
    e = o + n * size
    if e > len(buf):
        raise _overrun(n * size, o, len(buf) - o, f"array of {n} elements")
    return list(struct.unpack_from(f">{n}{code}", buf, o)), e


def write_fixed_array(out: bytearray, values: list[Any], code: str) -> None:
    out += struct.pack(f">{len(values)}{code}", *values)


def write_array_length(out: bytearray, n: int) -> None:
    out += _pack_i32(n)


def write_nullable_array_length(out: bytearray, values: list[Any] | None) -> None:
    out += _NULL32 if values is None else _pack_i32(len(values))


def write_compact_array_length(out: bytearray, n: int) -> None:
    write_uvarint(out, n + 1)


def write_compact_nullable_array_length(out: bytearray, values: list[Any] | None) -> None:
    if values is None:
        out.append(0)
    else:
        write_uvarint(out, len(values) + 1)


# ---------------------------------------------------------------------------
# tagged fields
# ---------------------------------------------------------------------------


def read_tag_header(buf: Any, o: int, last: int) -> tuple[int, int, int]:
    """Read one tagged field's tag and size; returns ``(tag, value_offset, value_end)``.

    Tags must be strictly increasing within a section (``last`` is the previous tag, or
    -1), and the value must fit in the remaining input.
    """
    tag, s = read_uvarint(buf, o)
    if tag <= last:
        raise DecodeError(
            f"tagged field {tag} at offset {o} is duplicated or out of order (follows tag {last})"
        )
    size, s = read_uvarint(buf, s)
    e = s + size
    if e > len(buf):
        raise _overrun(size, o, len(buf) - s, f"tagged field {tag}")
    return tag, s, e


def check_tag_end(o: int, end: int, tag: int) -> int:
    """A known tagged field must fill exactly the size its header declared."""
    if o != end:
        raise DecodeError(f"tagged field {tag} ends at offset {o}, its header said {end}")
    return o


def skip_tagged_fields(buf: Any, o: int) -> int:
    """Read a tagged-field section whose tags are all unknown; returns the offset after it."""
    n, o = read_uvarint(buf, o)
    last = -1
    for _ in range(n):
        last, _s, o = read_tag_header(buf, o, last)
    return o


def write_tagged_fields(out: bytearray, fields: list[tuple[int, Any]]) -> None:
    """Append a tagged-field section from ``(tag, encoded value)`` pairs in tag order."""
    write_uvarint(out, len(fields))
    for tag, value in fields:
        write_uvarint(out, tag)
        write_uvarint(out, len(value))
        out += value


# ---------------------------------------------------------------------------
# schema description and the base class of generated messages
# ---------------------------------------------------------------------------


class FieldSpec(NamedTuple):
    """One field of a generated class, as the JSON definition declares it.

    Version ranges are inclusive ``(lo, hi)`` pairs (``hi`` is ``MAX_VERSION`` for "N+"),
    or ``None`` for "none". ``struct`` is the generated class of a struct or array-of-struct
    field.
    """

    name: str
    kafka_name: str
    type: str
    versions: tuple[int, int] | None
    nullable_versions: tuple[int, int] | None = None
    tag: int | None = None
    tagged_versions: tuple[int, int] | None = None
    ignorable: bool = False
    struct: type[Message] | None = None

    def present_in(self, version: int) -> bool:
        return self.versions is not None and self.versions[0] <= version <= self.versions[1]

    def nullable_in(self, version: int) -> bool:
        r = self.nullable_versions
        return r is not None and r[0] <= version <= r[1]

    def tagged_in(self, version: int) -> bool:
        r = self.tagged_versions
        return r is not None and r[0] <= version <= r[1] and self.present_in(version)


class ApiInfo(NamedTuple):
    """A registry row: one Kafka API and its request/response classes."""

    api_key: int
    name: str
    request: type[Message]
    response: type[Message]
    min_version: int
    max_version: int
    flexible_min: int | None
    latest_version_unstable: bool
    listeners: tuple[str, ...]


def set_layouts(
    cls: type[Message],
    decoders: dict[int, Callable[[Any, int], tuple[Any, int]]],
    encoders: dict[int, Callable[[Any, bytearray], None]],
) -> None:
    """Install a generated class's per-version functions.

    Both maps go from the first version of a run of versions sharing one wire layout to
    that layout's function; the run lasts until the next key or the last valid version.
    """
    lo, hi = cls.VALID_VERSIONS

    def expand(runs: dict[int, Any]) -> tuple[Any, ...]:
        table = []
        current = None
        for v in range(lo, hi + 1):
            current = runs.get(v, current)
            if current is None:
                raise ValueError(f"{cls.__name__}: no layout for version {v}")
            table.append(current)
        return tuple(table)

    cls._DECODERS = expand(decoders)
    cls._ENCODERS = expand(encoders)


def repr_records(value: Any) -> str:
    """Short repr for records/bytes views: their size, not their content."""
    if isinstance(value, memoryview):
        return f"<memoryview of {value.nbytes} bytes>"
    return repr(value)


def absent_field(obj: Any, attr: str) -> UnsupportedVersionError:
    """The error for a non-default, non-ignorable field that a version cannot carry."""
    return UnsupportedVersionError(
        f"{type(obj).__name__}.{attr} = {getattr(obj, attr)!r} is not its default, "
        "and the field is neither present nor ignorable in this version"
    )


def _not_a_version(cls: type, version: int) -> UnsupportedVersionError:
    lo, hi = cls.VALID_VERSIONS  # type: ignore[attr-defined]
    return UnsupportedVersionError(
        f"{cls.__name__} has no version {version!r} (valid versions: {lo}-{hi})"
    )


def _truncate(out: bytearray, start: int) -> None:
    """Undo a failed encode: drop what it wrote (and the values it left out of line)."""
    del out[start:]
    if out.__class__ is GatherBuffer:
        out.refs[:] = [ref for ref in out.refs if ref[0] <= start]  # type: ignore[attr-defined]


class Message:
    """Base of every generated class: messages, headers, data types and nested structs.

    ``decode(buf, offset, version) -> (obj, end_offset)`` reads one instance starting at
    ``offset`` of ``buf`` (a ``memoryview``; other byte buffers are wrapped in one).
    ``encode(version) -> bytes`` and ``encode_into(out, version)`` write it. Versions
    outside ``VALID_VERSIONS`` raise ``UnsupportedVersionError`` (a ``ValueError``).
    Malformed input raises ``DecodeError``. Values that cannot be encoded raise
    ``ValueError``: wrong types, integers out of range, ``None`` in a field that is not
    nullable in that version, and non-default values of non-ignorable fields the version
    does not have (``UnsupportedVersionError``). ``out`` is left as it was when encoding
    fails.

    Nested structs carry the ``VALID_VERSIONS`` and ``FLEXIBLE_MIN`` of their message (their
    layout follows the message version); ``API_KEY`` is set on requests and responses only.
    """

    __slots__ = ()

    API_KEY: ClassVar[int | None] = None
    VALID_VERSIONS: ClassVar[tuple[int, int]] = (0, -1)
    FLEXIBLE_MIN: ClassVar[int | None] = None
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = ()
    _DECODERS: ClassVar[tuple[Callable[[Any, int], tuple[Any, int]], ...]] = ()
    _ENCODERS: ClassVar[tuple[Callable[[Any, bytearray], None], ...]] = ()

    @classmethod
    def decode(cls, buf: Any, offset: int, version: int) -> tuple[Any, int]:
        lo, hi = cls.VALID_VERSIONS
        if version.__class__ is not int or not lo <= version <= hi:
            raise _not_a_version(cls, version)
        if buf.__class__ is not memoryview:
            buf = memoryview(buf)
        if offset < 0 or offset > len(buf):
            raise DecodeError(f"offset {offset} is outside the {len(buf)}-byte input")
        try:
            return cls._DECODERS[version - lo](buf, offset)
        except (struct.error, IndexError) as exc:
            raise DecodeError(f"{cls.__name__} v{version}: truncated input ({exc})") from None

    def encode_into(self, out: bytearray, version: int) -> None:
        cls = self.__class__
        lo, hi = cls.VALID_VERSIONS
        if version.__class__ is not int or not lo <= version <= hi:
            raise _not_a_version(cls, version)
        start = len(out)
        try:
            cls._ENCODERS[version - lo](self, out)
        except UnsupportedVersionError as exc:
            _truncate(out, start)
            raise UnsupportedVersionError(f"{cls.__name__} v{version}: {exc}") from None
        except (struct.error, TypeError, AttributeError, ValueError, OverflowError) as exc:
            _truncate(out, start)
            raise ValueError(
                f"cannot encode {cls.__name__} v{version}: {type(exc).__name__}: {exc}"
            ) from exc

    def encode(self, version: int) -> bytes:
        out = bytearray()
        self.encode_into(out, version)
        return bytes(out)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={repr_records(getattr(self, name))}" for name in self.__slots__)
        return f"{self.__class__.__name__}({fields})"
