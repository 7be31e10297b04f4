"""Malformed input: every failure is a DecodeError with a useful message, never another
exception, never a hang, never a large allocation.

Covers: truncation at every byte of every primitive, of request headers and of fully
populated messages of every class; negative and oversized lengths (checked before
allocating); over-long and oversized varints; invalid UTF-8; null in non-nullable
fields; tagged fields out of order, duplicated, oversized or with a wrong size; bad
versions and bad offsets; encoding errors leaving the output untouched; and hypothesis
fuzzing of big messages with random and mutated bytes.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_strategies import class_versions, sample

from shazamq.protocol import primitives as p
from shazamq.protocol.errors import DecodeError, UnsupportedVersionError
from shazamq.protocol.framing import decode_request, decode_request_header
from shazamq.protocol.messages.fetch_request import FetchRequest
from shazamq.protocol.messages.fetch_response import FetchResponse
from shazamq.protocol.messages.join_group_request import JoinGroupRequest
from shazamq.protocol.messages.metadata_response import MetadataResponse
from shazamq.protocol.messages.produce_request import (
    PartitionProduceData,
    ProduceRequest,
    TopicProduceData,
)

FUZZ_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

MAX = 2**31 - 1


def i16(n: int) -> bytes:
    return struct.pack(">h", n)


def i32(n: int) -> bytes:
    return struct.pack(">i", n)


def mv(data: bytes) -> memoryview:
    return memoryview(data)


# ---------------------------------------------------------------------------
# primitives
# ---------------------------------------------------------------------------

READERS_AND_VALID = [
    (p.read_int8, b"\x01"),
    (p.read_int16, b"\x00\x01"),
    (p.read_int32, b"\x00\x00\x00\x01"),
    (p.read_int64, bytes(8)),
    (p.read_uint16, b"\xff\xff"),
    (p.read_uint32, b"\xff\xff\xff\xff"),
    (p.read_float64, struct.pack(">d", 1.5)),
    (p.read_bool, b"\x01"),
    (p.read_uuid, bytes(range(16))),
    (p.read_uvarint, b"\xac\x02"),
    (p.read_uvarlong, b"\xff" * 9 + b"\x01"),
    (p.read_varint, b"\xfe\xff\xff\xff\x0f"),
    (p.read_varlong, b"\x80\x01"),
    (p.read_string, i16(3) + b"abc"),
    (p.read_nullable_string, i16(3) + b"abc"),
    (p.read_compact_string, b"\x04abc"),
    (p.read_compact_nullable_string, b"\x04abc"),
    (p.read_bytes, i32(3) + b"abc"),
    (p.read_nullable_bytes, i32(3) + b"abc"),
    (p.read_compact_bytes, b"\x04abc"),
    (p.read_compact_nullable_bytes, b"\x04abc"),
    (p.read_records, i32(3) + b"abc"),
    (p.read_compact_records, b"\x04abc"),
    (p.read_array_length, i32(0)),
    (p.read_nullable_array_length, i32(-1)),
    (p.read_compact_array_length, b"\x01"),
    (p.read_compact_nullable_array_length, b"\x00"),
    (p.skip_tagged_fields, b"\x02\x00\x01x\x03\x00"),
]


@pytest.mark.parametrize(
    ("reader", "valid"), READERS_AND_VALID, ids=[r.__name__ for r, _ in READERS_AND_VALID]
)
def test_primitive_truncated_at_every_position(reader, valid):
    result = reader(mv(valid), 0)
    end = result if isinstance(result, int) else result[-1]
    assert end == len(valid)
    for cut in range(len(valid)):
        with pytest.raises(DecodeError):
            reader(mv(valid[:cut]), 0)
    # and at a non-zero offset inside a larger buffer
    padded = b"\xaa" * 3 + valid
    result = reader(mv(padded), 3)
    assert (result if isinstance(result, int) else result[-1]) == len(padded)


@pytest.mark.parametrize(
    ("reader", "data", "message"),
    [
        (p.read_string, i16(-1), "non-nullable string"),
        (p.read_string, i16(-2), "negative length -2"),
        (p.read_nullable_string, i16(-5), "negative length -5"),
        (p.read_bytes, i32(-1), "non-nullable bytes"),
        (p.read_nullable_bytes, i32(-2), "negative length"),
        (p.read_records, i32(-7), "negative length"),
        (p.read_array_length, i32(-1), "non-nullable array"),
        (p.read_nullable_array_length, i32(-2), "negative length"),
        (p.read_compact_string, b"\x00", "non-nullable compact string"),
        (p.read_compact_bytes, b"\x00", "non-nullable compact bytes"),
        (p.read_compact_array_length, b"\x00", "non-nullable compact array"),
    ],
)
def test_negative_and_null_lengths(reader, data, message):
    with pytest.raises(DecodeError, match=message):
        reader(mv(data + bytes(10)), 0)


@pytest.mark.parametrize(
    ("reader", "data"),
    [
        (p.read_string, i16(0x7FFF) + bytes(10)),
        (p.read_nullable_string, i16(100) + b"abc"),
        (p.read_bytes, i32(MAX) + bytes(10)),
        (p.read_nullable_bytes, i32(MAX) + bytes(10)),
        (p.read_records, i32(MAX) + bytes(10)),
        (p.read_array_length, i32(MAX) + bytes(10)),
        (p.read_nullable_array_length, i32(11) + bytes(10)),
        # compact length 2**31 - 1 + 1 as an unsigned varint
        (p.read_compact_string, b"\x80\x80\x80\x80\x08" + bytes(10)),
        (p.read_compact_nullable_string, b"\xff\xff\xff\xff\x07" + bytes(10)),
        (p.read_compact_bytes, b"\xff\xff\xff\xff\x07" + bytes(10)),
        (p.read_compact_records, b"\xff\xff\xff\xff\x07" + bytes(10)),
        (p.read_compact_array_length, b"\xff\xff\xff\xff\x07" + bytes(10)),
        (p.read_compact_nullable_array_length, b"\x0c" + bytes(10)),
    ],
)
def test_lengths_beyond_the_input_are_rejected_before_allocating(reader, data):
    with pytest.raises(DecodeError, match="remain"):
        reader(mv(data), 0)


def test_string_of_max_int_length_inside_a_message():
    # ProduceRequest v9 whose transactional id claims 2**31 - 2 bytes, 10 bytes following
    data = b"\xff\xff\xff\xff\x07" + bytes(10)
    with pytest.raises(DecodeError, match="remain"):
        ProduceRequest.decode(data, 0, 9)
    # v3: a topic array of 2**31 - 1 elements
    data = i16(-1) + i16(1) + i32(0) + i32(MAX) + bytes(10)
    with pytest.raises(DecodeError, match="remain"):
        ProduceRequest.decode(data, 0, 3)


@pytest.mark.parametrize(
    ("reader", "data", "message"),
    [
        (p.read_uvarint, b"\x80\x80\x80\x80\x80\x01", "longer than 5 bytes"),
        (p.read_uvarint, b"\xff\xff\xff\xff\x1f", "32 bits"),
        (p.read_varint, b"\x80\x80\x80\x80\x80\x01", "longer than 5 bytes"),
        (p.read_varint, b"\xff\xff\xff\xff\x7f", "32 bits"),
        (p.read_uvarlong, b"\x80" * 10 + b"\x01", "longer than 10 bytes"),
        (p.read_varlong, b"\xff" * 9 + b"\x02", "64 bits"),
        (p.read_compact_string, b"\x80\x80\x80\x80\x80\x80\x01", "longer than 5 bytes"),
        (p.skip_tagged_fields, b"\x81\x80\x80\x80\x80\x00", "longer than 5 bytes"),
    ],
)
def test_over_long_varints(reader, data, message):
    with pytest.raises(DecodeError, match=message):
        reader(mv(data + bytes(4)), 0)


@pytest.mark.parametrize("bad", [b"\xff\xfe", b"\xc0\x80", b"\xed\xa0\x80", b"ab\x80", b"\xe2\x82"])
def test_invalid_utf8(bad):
    with pytest.raises(DecodeError, match="UTF-8"):
        p.read_string(mv(i16(len(bad)) + bad), 0)
    with pytest.raises(DecodeError, match="UTF-8"):
        p.read_compact_nullable_string(mv(bytes([len(bad) + 1]) + bad), 0)
    request = ProduceRequest(topic_data=[TopicProduceData(name="xx")]).encode(9)
    corrupted = request.replace(b"\x03xx", bytes([len(bad) + 1]) + bad)
    with pytest.raises(DecodeError, match="UTF-8"):
        ProduceRequest.decode(corrupted, 0, 9)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (b"\x02\x01\x00\x01\x00", "out of order"),  # tags 1 then 1
        (b"\x02\x03\x00\x01\x00", "out of order"),  # tags 3 then 1
        (b"\x01\x01\x09ab", "remain"),  # size 9, two bytes left
        (b"\x03\x01\x00", "truncated"),  # three fields announced, one present
    ],
)
def test_bad_tagged_sections(section, message):
    with pytest.raises(DecodeError, match=message):
        p.skip_tagged_fields(mv(section), 0)
    body = ProduceRequest().encode(9)[:-1] + section
    with pytest.raises(DecodeError):
        ProduceRequest.decode(body, 0, 9)


def test_known_tag_with_wrong_size():
    good = FetchRequest(cluster_id="c1").encode(12)
    assert good.endswith(b"\x01\x00\x03\x03c1")
    # size says 4, the compact string inside uses 3
    bad = good[:-6] + b"\x01\x00\x04\x03c1!"
    with pytest.raises(DecodeError, match="tagged field 0"):
        FetchRequest.decode(bad, 0, 12)
    # size says 2, the string inside needs 3: the value may not read past its size
    bad = good[:-6] + b"\x01\x00\x02\x03c1"
    with pytest.raises(DecodeError):
        FetchRequest.decode(bad, 0, 12)


def test_null_in_non_nullable_field():
    body = ProduceRequest(topic_data=[TopicProduceData(name="x")]).encode(9)
    assert b"\x02x" in body
    with pytest.raises(DecodeError, match="non-nullable"):
        ProduceRequest.decode(body.replace(b"\x02x", b"\x00"), 0, 9)


def test_nullable_struct_marker_truncated():
    from shazamq.protocol.messages.consumer_group_heartbeat_response import (
        Assignment,
        ConsumerGroupHeartbeatResponse,
    )

    body = ConsumerGroupHeartbeatResponse(assignment=Assignment()).encode(0)
    for cut in range(len(body)):
        with pytest.raises(DecodeError):
            ConsumerGroupHeartbeatResponse.decode(body[:cut], 0, 0)


# ---------------------------------------------------------------------------
# headers and whole messages
# ---------------------------------------------------------------------------


def test_request_header_truncated_everywhere():
    v2 = i16(18) + i16(3) + i32(1) + i16(4) + b"abcd" + b"\x00"
    v1 = i16(0) + i16(3) + i32(1) + i16(4) + b"abcd"
    for header in (v2, v1):
        assert decode_request_header(header)[1] == len(header)
        for cut in range(len(header)):
            with pytest.raises(DecodeError):
                decode_request_header(header[:cut])
    with pytest.raises(DecodeError, match="UTF-8"):
        decode_request_header(i16(0) + i16(3) + i32(1) + i16(2) + b"\xff\xff")


def test_decode_request_rejects_unknown_api_and_version():
    with pytest.raises(UnsupportedVersionError, match="unknown api key"):
        decode_request(i16(999) + i16(0) + i32(1) + i16(-1))
    with pytest.raises(UnsupportedVersionError, match="Produce v99"):
        decode_request(i16(0) + i16(99) + i32(1) + i16(-1) + b"\x00")


def test_truncated_request_frames():
    request = sample(ProduceRequest, 9)
    from shazamq.protocol.framing import encode_request

    full = encode_request(request, 9, 5, "client")[4:]
    assert decode_request(full)[1] == request
    for cut in range(len(full)):
        with pytest.raises(DecodeError):
            decode_request(full[:cut])


# fully populated samples, truncated at every byte: the first and last version of each
# class (and its first flexible version)
TRUNCATION_CASES = [
    (cls, v)
    for cls, v in class_versions()
    if v in (cls.VALID_VERSIONS[0], cls.VALID_VERSIONS[1], cls.FLEXIBLE_MIN)
]


@pytest.mark.parametrize(
    ("cls", "version"), TRUNCATION_CASES, ids=[f"{c.__name__}-v{v}" for c, v in TRUNCATION_CASES]
)
def test_every_class_truncated_at_every_byte(cls, version):
    data = sample(cls, version).encode(version)
    view = memoryview(data)
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            cls.decode(view[:cut], 0, version)


def test_bad_versions_and_offsets():
    with pytest.raises(UnsupportedVersionError, match="valid versions: 0-11"):
        ProduceRequest.decode(b"", 0, 12)
    with pytest.raises(UnsupportedVersionError):
        ProduceRequest().encode(-1)
    with pytest.raises(DecodeError, match="offset"):
        ProduceRequest.decode(b"abc", 4, 9)


def test_encoding_errors_leave_the_output_untouched():
    out = bytearray(b"keep")
    bad_int = ProduceRequest(acks=70000)
    with pytest.raises(ValueError, match="ProduceRequest v9"):
        bad_int.encode_into(out, 9)
    assert out == b"keep"
    missing = ProduceRequest(topic_data=[TopicProduceData(name=None)])
    with pytest.raises(ValueError, match="ProduceRequest v9"):
        missing.encode_into(out, 9)
    assert out == b"keep"
    records = ProduceRequest(
        topic_data=[TopicProduceData(name="t", partition_data=[PartitionProduceData(records=1)])]
    )
    with pytest.raises(ValueError):
        records.encode_into(out, 3)
    assert out == b"keep"
    with pytest.raises(ValueError, match="32767"):
        ProduceRequest(topic_data=[TopicProduceData(name="x" * 40000)]).encode(3)


# ---------------------------------------------------------------------------
# fuzzing
# ---------------------------------------------------------------------------

FUZZ_TARGETS = [
    (ProduceRequest, 3),
    (ProduceRequest, 11),
    (FetchRequest, 12),
    (FetchRequest, 17),
    (FetchResponse, 11),
    (FetchResponse, 16),
    (MetadataResponse, 12),
    (JoinGroupRequest, 9),
]
FUZZ_IDS = [f"{c.__name__}-v{v}" for c, v in FUZZ_TARGETS]


def decodes_or_rejects(cls, version, data) -> None:
    try:
        obj, end = cls.decode(memoryview(data), 0, version)
    except DecodeError as exc:
        assert str(exc)
        return
    assert 0 <= end <= len(data)
    assert isinstance(obj, cls)


@pytest.mark.parametrize(("cls", "version"), FUZZ_TARGETS, ids=FUZZ_IDS)
def test_fuzz_random_bytes(cls, version):
    @FUZZ_SETTINGS
    @given(data=st.binary(max_size=300))
    def run(data):
        decodes_or_rejects(cls, version, data)

    run()


@pytest.mark.parametrize(("cls", "version"), FUZZ_TARGETS, ids=FUZZ_IDS)
def test_fuzz_mutated_messages(cls, version):
    valid = sample(cls, version).encode(version)

    @FUZZ_SETTINGS
    @given(
        edits=st.lists(
            st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)), min_size=1, max_size=4
        ),
        cut=st.integers(0, len(valid)),
    )
    def run(edits, cut):
        data = bytearray(valid)
        for pos, value in edits:
            data[pos] = value
        decodes_or_rejects(cls, version, bytes(data[: max(cut, len(valid) - 8)]))

    run()
