"""The ``__consumer_offsets`` record formats and Kafka's group-to-partition function.

Covers: round-trips of offset keys, group keys, offset values (v3, and v1 with an
expiry) and group metadata values (v3) for hypothesis-generated content; decoding of
every value version Kafka writes (0-4, including the flexible v4), built by hand here;
known Java ``String.hashCode`` values and the partition placement of
``Utils.abs(Integer.MIN_VALUE)``; malformed bytes (truncations, garbage, bad versions)
raising :class:`GroupRecordError` and nothing else.
"""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shazamq.broker.groups.offsets_codec import (
    GroupMetadataKey,
    GroupMetadataValue,
    GroupRecordError,
    MemberRecord,
    OffsetKey,
    OffsetValue,
    UnknownKey,
    decode_group_value,
    decode_key,
    decode_offset_value,
    encode_group_key,
    encode_group_value,
    encode_offset_key,
    encode_offset_value,
)
from shazamq.broker.groups.partitioning import coordinator_partition, java_string_hash
from shazamq.protocol import primitives as p

texts = st.text(max_size=40)
int16s = st.integers(-(2**15), 2**15 - 1)
int32s = st.integers(-(2**31), 2**31 - 1)
int64s = st.integers(-(2**63), 2**63 - 1)
nonneg64 = st.integers(0, 2**63 - 1)

offset_values = st.builds(
    OffsetValue,
    offset=int64s,
    metadata=texts,
    commit_timestamp=int64s,
    leader_epoch=int32s,
    expire_timestamp=st.just(-1),
) | st.builds(
    OffsetValue,
    offset=int64s,
    metadata=texts,
    commit_timestamp=int64s,
    leader_epoch=st.just(-1),
    expire_timestamp=nonneg64,
)
members = st.builds(
    MemberRecord,
    member_id=texts,
    client_id=texts,
    client_host=texts,
    session_timeout_ms=int32s,
    rebalance_timeout_ms=int32s,
    subscription=st.binary(max_size=64),
    assignment=st.binary(max_size=64),
    group_instance_id=st.none() | texts,
)
group_values = st.builds(
    GroupMetadataValue,
    protocol_type=texts,
    generation=int32s,
    protocol=st.none() | texts,
    leader=st.none() | texts,
    current_state_timestamp=int64s,
    members=st.lists(members, max_size=5).map(tuple),
)


@given(texts, texts, int32s)
def test_offset_key_round_trip(group, topic, partition):
    assert decode_key(encode_offset_key(group, topic, partition)) == OffsetKey(
        group, topic, partition
    )


@given(texts)
def test_group_key_round_trip(group):
    assert decode_key(encode_group_key(group)) == GroupMetadataKey(group)


@given(offset_values)
def test_offset_value_round_trip(value):
    assert decode_offset_value(encode_offset_value(value)) == value


@settings(max_examples=200)
@given(group_values)
def test_group_value_round_trip(value):
    assert decode_group_value(encode_group_value(value)) == value


def test_key_versions_of_other_record_types_are_reported_not_rejected():
    # KIP-848 records (key versions 3+) are left to whoever understands them
    assert decode_key(struct.pack(">h", 3) + b"\x00\x01g") == UnknownKey(3)


def _v0_offset(offset: int, metadata: str, ts: int) -> bytes:
    out = bytearray(struct.pack(">hq", 0, offset))
    p.write_string(out, metadata)
    out += struct.pack(">q", ts)
    return bytes(out)


def test_offset_value_versions_kafka_writes():
    assert decode_offset_value(_v0_offset(42, "m", 7)) == OffsetValue(42, "m", 7)
    v1 = bytearray(struct.pack(">hq", 1, 42))
    p.write_string(v1, "m")
    v1 += struct.pack(">qq", 7, 99)
    assert decode_offset_value(bytes(v1)) == OffsetValue(42, "m", 7, -1, 99)
    v2 = bytearray(struct.pack(">hq", 2, 42))
    p.write_string(v2, "")
    v2 += struct.pack(">q", 7)
    assert decode_offset_value(bytes(v2)) == OffsetValue(42, "", 7)
    v4 = bytearray(struct.pack(">hqi", 4, 42, 5))
    p.write_compact_string(v4, "meta")
    v4 += struct.pack(">q", 7)
    p.write_tagged_fields(v4, [(0, b"\x01\x02")])  # an unknown tagged field is skipped
    assert decode_offset_value(bytes(v4)) == OffsetValue(42, "meta", 7, 5)


def test_group_value_v0_and_flexible_v4():
    v0 = bytearray(struct.pack(">h", 0))
    p.write_string(v0, "consumer")
    v0 += struct.pack(">i", 3)
    p.write_nullable_string(v0, "range")
    p.write_nullable_string(v0, "m1")
    v0 += struct.pack(">i", 1)
    for s in ("m1", "client", "/10.0.0.1"):
        p.write_string(v0, s)
    v0 += struct.pack(">i", 10_000)
    p.write_bytes(v0, b"sub")
    p.write_bytes(v0, b"asg")
    decoded = decode_group_value(bytes(v0))
    assert decoded == GroupMetadataValue(
        "consumer",
        3,
        "range",
        "m1",
        -1,
        (MemberRecord("m1", "client", "/10.0.0.1", 10_000, 0, b"sub", b"asg"),),
    )

    v4 = bytearray(struct.pack(">h", 4))
    p.write_compact_string(v4, "consumer")
    v4 += struct.pack(">i", 3)
    p.write_compact_nullable_string(v4, None)
    p.write_compact_nullable_string(v4, None)
    v4 += struct.pack(">q", 123)
    p.write_compact_array_length(v4, 1)
    p.write_compact_string(v4, "m1")
    p.write_compact_nullable_string(v4, "inst")
    p.write_compact_string(v4, "c")
    p.write_compact_string(v4, "h")
    v4 += struct.pack(">ii", 30_000, 10_000)
    p.write_compact_bytes(v4, b"s")
    p.write_compact_bytes(v4, b"a")
    v4.append(0)
    v4.append(0)
    assert decode_group_value(bytes(v4)) == GroupMetadataValue(
        "consumer",
        3,
        None,
        None,
        123,
        (MemberRecord("m1", "c", "h", 10_000, 30_000, b"s", b"a", "inst"),),
    )


@pytest.mark.parametrize(
    "decode, sample",
    [
        (decode_key, encode_offset_key("group", "topic", 3)),
        (decode_key, encode_group_key("group")),
        (decode_offset_value, encode_offset_value(OffsetValue(1, "meta", 2))),
        (
            decode_group_value,
            encode_group_value(
                GroupMetadataValue(
                    "consumer", 1, "range", "m", 5, (MemberRecord("m", "c", "h", 1, 2, b"s", b"a"),)
                )
            ),
        ),
    ],
)
def test_every_truncation_and_extension_is_a_typed_error(decode, sample):
    for end in range(len(sample)):
        with pytest.raises(GroupRecordError):
            decode(sample[:end])
    with pytest.raises(GroupRecordError):
        decode(sample + b"\x00")


@pytest.mark.parametrize(
    "data",
    [
        struct.pack(">h", -1),
        struct.pack(">h", 9) + b"\x00" * 30,  # unknown value version
        struct.pack(">hqh", 3, 1, -5),  # negative string length
        struct.pack(">hq", 3, 1) + b"\x7f\xff",  # string longer than the input
    ],
)
def test_bad_values_are_typed_errors(data):
    with pytest.raises(GroupRecordError):
        decode_offset_value(data)
    with pytest.raises(GroupRecordError):
        decode_group_value(data)


@settings(max_examples=300)
@given(st.binary(max_size=80))
def test_garbage_never_escapes_as_another_exception(data):
    for decode in (decode_key, decode_offset_value, decode_group_value):
        with contextlib.suppress(GroupRecordError):
            decode(data)


def test_java_string_hash_matches_java():
    assert java_string_hash("") == 0
    assert java_string_hash("hello") == 99162322
    assert java_string_hash("polygenelubricants") == -(2**31)  # Integer.MIN_VALUE
    assert java_string_hash("\U0001f600") == 1772899  # a surrogate pair, as Java sees it


@given(st.text(max_size=30), st.integers(1, 200))
def test_partition_is_in_range(key, n):
    assert 0 <= coordinator_partition(key, n) < n


def test_partition_of_min_value_hash_is_zero():
    assert coordinator_partition("polygenelubricants", 50) == 0
    assert coordinator_partition("hello", 50) == 99162322 % 50
