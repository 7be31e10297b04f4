"""The ``__consumer_offsets`` records of consumer groups (KIP-848), in Kafka's formats.

Keys are Kafka's non-flexible coordinator keys: an int16 record type, then the group id
(and the member id) as int16-length strings:

* 3 ConsumerGroupMetadata ``group`` -> ``epoch int32`` (tag 0: metadata hash int64)
* 4 ConsumerGroupPartitionMetadata ``group`` (Kafka before 4.1; read and ignored)
* 5 ConsumerGroupMemberMetadata ``group, member`` -> ``instance_id nstr, rack_id nstr,
  client_id str, client_host str, subscribed_topic_names [str], subscribed_topic_regex
  nstr, rebalance_timeout_ms int32, server_assignor nstr`` and, for a member that speaks
  the classic protocol (a mixed group during an online upgrade), tag 0:
  ``session_timeout_ms int32, supported_protocols [name str, metadata bytes]``
* 6 ConsumerGroupTargetAssignmentMetadata ``group`` -> ``assignment_epoch int32``
* 7 ConsumerGroupTargetAssignmentMember ``group, member`` -> ``[topic_id uuid,
  partitions [int32]]``
* 8 ConsumerGroupCurrentMemberAssignment ``group, member`` -> ``member_epoch int32,
  previous_member_epoch int32, state int8, assigned [topic_id, partitions],
  pending_revocation [topic_id, partitions]``
* 16 ConsumerGroupRegularExpression ``group, regex`` (Kafka 4.0+; read and ignored:
  regexes are resolved again from the topics). Type 9 is Kafka's
  ShareGroupPartitionMetadata (share_records.py skips it).

Values are an int16 version (0) followed by the flexible encoding (compact strings and
arrays, tagged fields, which are skipped when read). A null value is a tombstone.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from shazamq.protocol import primitives as p

from .offsets_codec import GroupRecordError, _end, _guard

__all__ = [
    "CONSUMER_KEY_TYPES",
    "ClassicMetadata",
    "ConsumerKey",
    "CurrentAssignmentValue",
    "MemberMetadataValue",
    "decode_consumer_key",
    "decode_consumer_value",
    "encode_consumer_key",
    "encode_current_assignment",
    "encode_group_epoch",
    "encode_member_metadata",
    "encode_target_epoch",
    "encode_target_member",
]

GROUP_METADATA = 3
PARTITION_METADATA = 4
MEMBER_METADATA = 5
TARGET_METADATA = 6
TARGET_MEMBER = 7
CURRENT_ASSIGNMENT = 8
REGULAR_EXPRESSION = 16

CONSUMER_KEY_TYPES = frozenset(range(3, 9)) | {REGULAR_EXPRESSION}
_MEMBER_KEYS = frozenset({MEMBER_METADATA, TARGET_MEMBER, CURRENT_ASSIGNMENT})
_REGEX_KEYS = frozenset({REGULAR_EXPRESSION})

TopicIdPartitions = dict[uuid.UUID, list[int]]


@dataclass(frozen=True, slots=True)
class ConsumerKey:
    """The key of a consumer group record: its type, group and (member records) member."""

    kind: int
    group: str
    member: str | None = None


@dataclass(frozen=True, slots=True)
class ClassicMetadata:
    """What a classic-protocol member of a consumer group joined with."""

    session_timeout_ms: int
    protocols: tuple[tuple[str, bytes], ...]  # (name, metadata), in preference order


@dataclass(frozen=True, slots=True)
class MemberMetadataValue:
    instance_id: str | None
    rack_id: str | None
    client_id: str
    client_host: str
    subscribed_topic_names: tuple[str, ...]
    subscribed_topic_regex: str | None
    rebalance_timeout_ms: int
    server_assignor: str | None
    classic: ClassicMetadata | None = None


@dataclass(frozen=True, slots=True)
class CurrentAssignmentValue:
    member_epoch: int
    previous_member_epoch: int
    state: int
    assigned: TopicIdPartitions
    pending_revocation: TopicIdPartitions


# ------------------------------------------------------------------------------ keys


def write_group_key(kind: int, group: str, second: str | None = None) -> bytes:
    """A coordinator key: the int16 type, the group, and the member (or regex) if any."""
    out = bytearray()
    p.write_int16(out, kind)
    p.write_string(out, group)
    if second is not None:
        p.write_string(out, second)
    return bytes(out)


def read_group_key(
    buf: memoryview,
    what: str,
    kinds: frozenset[int],
    two_strings: frozenset[int],
    unchecked: frozenset[int] = frozenset(),
) -> tuple[int, str, str | None]:
    """(type, group, second string) of a key whose type is one of ``kinds``; the keys of
    ``unchecked`` types may carry more fields (Kafka's bookkeeping that is skipped)."""
    kind, o = p.read_int16(buf, 0)
    if kind not in kinds:
        raise GroupRecordError(f"not a {what} type: {kind}")
    group, o = p.read_string(buf, o)
    second = None
    if kind in two_strings:
        second, o = p.read_string(buf, o)
    if kind not in unchecked:
        _end(what, buf, o)
    return kind, group, second


def encode_consumer_key(kind: int, group: str, member: str | None = None) -> bytes:
    if kind in _MEMBER_KEYS:
        assert member is not None
    elif kind in _REGEX_KEYS:
        member = member or ""
    else:
        member = None
    return write_group_key(kind, group, member)


def decode_consumer_key(data: bytes | memoryview) -> ConsumerKey:
    def run(buf: memoryview) -> ConsumerKey:
        return ConsumerKey(
            *read_group_key(
                buf, "consumer group key", CONSUMER_KEY_TYPES, _MEMBER_KEYS | _REGEX_KEYS
            )
        )

    return _guard("consumer group key", run, data)


# ---------------------------------------------------------------------------- values


def _start() -> bytearray:
    out = bytearray()
    p.write_int16(out, 0)
    return out


def _finish(out: bytearray) -> bytes:
    p.write_uvarint(out, 0)  # no tagged fields
    return bytes(out)


def encode_group_epoch(epoch: int) -> bytes:
    out = _start()
    p.write_int32(out, epoch)
    return _finish(out)


encode_target_epoch = encode_group_epoch  # ConsumerGroupTargetAssignmentMetadataValue


def encode_member_metadata(v: MemberMetadataValue) -> bytes:
    out = _start()
    p.write_compact_nullable_string(out, v.instance_id)
    p.write_compact_nullable_string(out, v.rack_id)
    p.write_compact_string(out, v.client_id)
    p.write_compact_string(out, v.client_host)
    p.write_compact_array_length(out, len(v.subscribed_topic_names))
    for name in v.subscribed_topic_names:
        p.write_compact_string(out, name)
    p.write_compact_nullable_string(out, v.subscribed_topic_regex)
    p.write_int32(out, v.rebalance_timeout_ms)
    p.write_compact_nullable_string(out, v.server_assignor)
    if v.classic is None:
        return _finish(out)
    tagged = bytearray()
    p.write_int32(tagged, v.classic.session_timeout_ms)
    p.write_compact_array_length(tagged, len(v.classic.protocols))
    for name, metadata in v.classic.protocols:
        p.write_compact_string(tagged, name)
        p.write_compact_bytes(tagged, metadata)
        p.write_uvarint(tagged, 0)
    p.write_uvarint(tagged, 0)
    p.write_uvarint(out, 1)  # one tagged field: tag 0, its size, the struct
    p.write_uvarint(out, 0)
    p.write_uvarint(out, len(tagged))
    out += tagged
    return bytes(out)


def _read_classic(buf: memoryview, o: int) -> tuple[ClassicMetadata, int]:
    session, o = p.read_int32(buf, o)
    n, o = _count(buf, o)
    protocols = []
    for _ in range(n):
        name, o = p.read_compact_string(buf, o)
        metadata, o = p.read_compact_bytes(buf, o)
        o = p.skip_tagged_fields(buf, o)
        protocols.append((name, bytes(metadata)))
    o = p.skip_tagged_fields(buf, o)
    return ClassicMetadata(session, tuple(protocols)), o


def _read_member_tags(buf: memoryview, o: int) -> tuple[ClassicMetadata | None, int]:
    """The tagged fields of a member metadata value: tag 0 is read, others skipped."""
    classic = None
    count, o = p.read_uvarint(buf, o)
    for _ in range(count):
        tag, o = p.read_uvarint(buf, o)
        size, o = p.read_uvarint(buf, o)
        if size > len(buf) - o:
            raise GroupRecordError(f"tagged field {tag} of {size} bytes overruns the value")
        if tag == 0:
            classic, end = _read_classic(buf[: o + size], o)
            if end != o + size:
                raise GroupRecordError("classic member metadata does not fill its tagged field")
        o += size
    return classic, o


def _write_partitions(out: bytearray, parts: Mapping[uuid.UUID, list[int]]) -> None:
    p.write_compact_array_length(out, len(parts))
    for topic_id, indexes in parts.items():
        p.write_uuid(out, topic_id)
        p.write_compact_array_length(out, len(indexes))
        for i in indexes:
            p.write_int32(out, i)
        p.write_uvarint(out, 0)


def encode_target_member(parts: Mapping[uuid.UUID, list[int]]) -> bytes:
    out = _start()
    _write_partitions(out, parts)
    return _finish(out)


def encode_current_assignment(v: CurrentAssignmentValue) -> bytes:
    out = _start()
    p.write_int32(out, v.member_epoch)
    p.write_int32(out, v.previous_member_epoch)
    p.write_int8(out, v.state)
    _write_partitions(out, v.assigned)
    _write_partitions(out, v.pending_revocation)
    return _finish(out)


def _count(buf: memoryview, o: int) -> tuple[int, int]:
    n, o = p.read_compact_array_length(buf, o)
    if n < 0:
        raise GroupRecordError("null array")
    if n > len(buf) - o:
        raise GroupRecordError(f"{n} elements cannot fit in {len(buf) - o} bytes")
    return n, o


def _read_partitions(buf: memoryview, o: int) -> tuple[TopicIdPartitions, int]:
    n, o = _count(buf, o)
    out: TopicIdPartitions = {}
    for _ in range(n):
        topic_id, o = p.read_uuid(buf, o)
        k, o = _count(buf, o)
        parts = []
        for _ in range(k):
            i, o = p.read_int32(buf, o)
            parts.append(i)
        o = p.skip_tagged_fields(buf, o)
        out[topic_id] = parts
    return out, o


def decode_consumer_value(
    kind: int, data: bytes | memoryview
) -> int | MemberMetadataValue | TopicIdPartitions | CurrentAssignmentValue | None:
    """The value of a record of type ``kind``: an epoch (3, 6), member metadata (5), a
    target assignment (7), a current assignment (8); None for the types ignored."""

    def run(
        buf: memoryview,
    ) -> int | MemberMetadataValue | TopicIdPartitions | CurrentAssignmentValue | None:
        version, o = p.read_int16(buf, 0)
        if version != 0:
            raise GroupRecordError(f"unknown value version {version} of record type {kind}")
        result: int | MemberMetadataValue | TopicIdPartitions | CurrentAssignmentValue | None
        if kind in (GROUP_METADATA, TARGET_METADATA):
            result, o = p.read_int32(buf, o)
        elif kind == MEMBER_METADATA:
            instance_id, o = p.read_compact_nullable_string(buf, o)
            rack_id, o = p.read_compact_nullable_string(buf, o)
            client_id, o = p.read_compact_string(buf, o)
            client_host, o = p.read_compact_string(buf, o)
            n, o = _count(buf, o)
            names = []
            for _ in range(n):
                name, o = p.read_compact_string(buf, o)
                names.append(name)
            regex, o = p.read_compact_nullable_string(buf, o)
            rebalance_timeout, o = p.read_int32(buf, o)
            assignor, o = p.read_compact_nullable_string(buf, o)
            classic, o = _read_member_tags(buf, o)
            _end(f"consumer group value of type {kind}", buf, o)
            return MemberMetadataValue(
                instance_id,
                rack_id,
                client_id,
                client_host,
                tuple(names),
                regex,
                rebalance_timeout,
                assignor,
                classic,
            )
        elif kind == TARGET_MEMBER:
            result, o = _read_partitions(buf, o)
        elif kind == CURRENT_ASSIGNMENT:
            epoch, o = p.read_int32(buf, o)
            previous, o = p.read_int32(buf, o)
            state, o = p.read_int8(buf, o)
            assigned, o = _read_partitions(buf, o)
            pending, o = _read_partitions(buf, o)
            result = CurrentAssignmentValue(epoch, previous, state, assigned, pending)
        else:
            return None
        o = p.skip_tagged_fields(buf, o)
        _end(f"consumer group value of type {kind}", buf, o)
        return result

    return _guard(f"consumer group value of type {kind}", run, data)
