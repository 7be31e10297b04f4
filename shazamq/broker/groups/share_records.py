"""The ``__consumer_offsets`` records of share groups (KIP-932), in Kafka's formats.

In a cluster a share group's coordinator keeps the group (its epochs, members and their
assignments) where Kafka does: in its ``__consumer_offsets`` partition, next to the
consumer groups, so the broker that leads the partition next replays it. Keys are Kafka's
non-flexible coordinator keys, an int16 record type then the group id (and member id) as
int16-length strings:

* 10 ShareGroupMemberMetadata ``group, member`` -> ``rack_id nstr, client_id str,
  client_host str, subscribed_topic_names [str]``
* 11 ShareGroupMetadata ``group`` -> ``epoch int32`` (later tagged fields skipped)
* 12 ShareGroupTargetAssignmentMetadata ``group`` -> ``assignment_epoch int32``
* 13 ShareGroupTargetAssignmentMember ``group, member`` -> ``[topic_id uuid,
  partitions [int32]]``
* 14 ShareGroupCurrentMemberAssignment ``group, member`` -> ``member_epoch int32,
  previous_member_epoch int32, state int8, assigned [topic_id, partitions]``
* 15 ShareGroupStatePartitionMetadata is Kafka's bookkeeping of initialized
  share-partitions (the share coordinator holds that here), and 9
  ShareGroupPartitionMetadata its bookkeeping before 4.1; both are recognised and skipped.

Values are an int16 version (0) then the flexible encoding; a null value is a tombstone.
The share-partition states themselves are not here but in ``__share_group_state``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from shazamq.protocol import primitives as p

from .consumer_records import (
    _count,
    _finish,
    _read_partitions,
    _start,
    _write_partitions,
    read_group_key,
    write_group_key,
)
from .offsets_codec import GroupRecordError, _end, _guard

__all__ = [
    "SHARE_KEY_TYPES",
    "ShareAssignmentValue",
    "ShareKey",
    "ShareMemberValue",
    "decode_share_key",
    "decode_share_value",
    "encode_share_key",
    "encode_share_value",
]

MEMBER_METADATA = 10
GROUP_METADATA = 11
TARGET_METADATA = 12
TARGET_MEMBER = 13
CURRENT_ASSIGNMENT = 14
# Kafka's bookkeeping: 9 ShareGroupPartitionMetadata (before 4.1), 15
# ShareGroupStatePartitionMetadata
_SKIPPED = frozenset({9, 15})

SHARE_KEY_TYPES = frozenset(range(10, 15)) | _SKIPPED
_MEMBER_KEYS = frozenset({MEMBER_METADATA, TARGET_MEMBER, CURRENT_ASSIGNMENT})

TopicIdPartitions = dict[uuid.UUID, list[int]]


@dataclass(frozen=True, slots=True)
class ShareKey:
    kind: int
    group: str
    member: str | None = None


@dataclass(frozen=True, slots=True)
class ShareMemberValue:
    rack_id: str | None
    client_id: str
    client_host: str
    subscribed_topic_names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ShareAssignmentValue:
    member_epoch: int
    previous_member_epoch: int
    state: int  # Kafka's MemberState; a share member is always STABLE (0)
    assigned: TopicIdPartitions


ShareValue = int | TopicIdPartitions | ShareMemberValue | ShareAssignmentValue | None


def encode_share_key(kind: int, group: str, member: str | None = None) -> bytes:
    if kind in _MEMBER_KEYS:
        assert member is not None
    else:
        member = None
    return write_group_key(kind, group, member)


def decode_share_key(data: bytes | memoryview) -> ShareKey:
    def run(buf: memoryview) -> ShareKey:
        # Kafka's own bookkeeping keys are not checked further
        return ShareKey(
            *read_group_key(buf, "share group key", SHARE_KEY_TYPES, _MEMBER_KEYS, _SKIPPED)
        )

    return _guard("share group key", run, data)


def encode_share_value(kind: int, value: int | Mapping[uuid.UUID, list[int]] | object) -> bytes:
    out = _start()
    if kind in (GROUP_METADATA, TARGET_METADATA):
        assert isinstance(value, int)
        p.write_int32(out, value)
    elif kind == MEMBER_METADATA:
        assert isinstance(value, ShareMemberValue)
        p.write_compact_nullable_string(out, value.rack_id)
        p.write_compact_string(out, value.client_id)
        p.write_compact_string(out, value.client_host)
        p.write_compact_array_length(out, len(value.subscribed_topic_names))
        for name in value.subscribed_topic_names:
            p.write_compact_string(out, name)
    elif kind == TARGET_MEMBER:
        assert isinstance(value, Mapping)
        _write_partitions(out, value)
    elif kind == CURRENT_ASSIGNMENT:
        assert isinstance(value, ShareAssignmentValue)
        p.write_int32(out, value.member_epoch)
        p.write_int32(out, value.previous_member_epoch)
        p.write_int8(out, value.state)
        _write_partitions(out, value.assigned)
    else:
        raise ValueError(f"share group records of type {kind} are not written")
    return _finish(out)


def decode_share_value(kind: int, data: bytes | memoryview) -> ShareValue:
    """The value of a record of type ``kind``: an epoch (11, 12), member metadata (10), a
    target assignment (13), a current assignment (14); None for the types skipped."""

    def run(buf: memoryview) -> ShareValue:
        if kind in _SKIPPED:
            return None
        version, o = p.read_int16(buf, 0)
        if version != 0:
            raise GroupRecordError(f"unknown value version {version} of record type {kind}")
        result: ShareValue
        if kind in (GROUP_METADATA, TARGET_METADATA):
            result, o = p.read_int32(buf, o)
        elif kind == MEMBER_METADATA:
            rack, o = p.read_compact_nullable_string(buf, o)
            client_id, o = p.read_compact_string(buf, o)
            client_host, o = p.read_compact_string(buf, o)
            n, o = _count(buf, o)
            names = []
            for _ in range(n):
                name, o = p.read_compact_string(buf, o)
                names.append(name)
            result = ShareMemberValue(rack, client_id, client_host, tuple(names))
        elif kind == TARGET_MEMBER:
            result, o = _read_partitions(buf, o)
        else:
            epoch, o = p.read_int32(buf, o)
            previous, o = p.read_int32(buf, o)
            state, o = p.read_int8(buf, o)
            assigned, o = _read_partitions(buf, o)
            result = ShareAssignmentValue(epoch, previous, state, assigned)
        o = p.skip_tagged_fields(buf, o)
        _end(f"share group value of type {kind}", buf, o)
        return result

    return _guard(f"share group value of type {kind}", run, data)
