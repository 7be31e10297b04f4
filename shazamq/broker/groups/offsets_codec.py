"""The record formats of ``__consumer_offsets``: committed offsets and group metadata.

The group coordinator keeps its state as records of an ordinary compacted topic, so the
formats are Kafka's own (every field big-endian, strings int16-length-prefixed):

Keys start with an int16 version that also names the record type:

* 0 or 1: an offset commit, ``group string, topic string, partition int32``
* 2: group metadata, ``group string``
* anything else: :class:`UnknownKey`; the KIP-848 consumer group records (3..9) are
  decoded by :mod:`.consumer_records`, other types are skipped when loading.

Offset commit values (int16 version first): v0/v2 ``offset i64, metadata string,
commit_timestamp i64``; v1 adds ``expire_timestamp i64``; v3 ``offset, leader_epoch i32,
metadata, commit_timestamp``; v4 is v3 in the flexible encoding (compact strings, tagged
fields). Written as v3, or v1 when an explicit expiry was requested (OffsetCommit v2-v4).

Group metadata values: ``protocol_type string, generation i32, protocol nullable string,
leader nullable string, [v2+] current_state_timestamp i64, members [...]`` where a member
is ``member_id string, [v3+] group_instance_id nullable string, client_id string,
client_host string, [v1+] rebalance_timeout i32, session_timeout i32, subscription
bytes, assignment bytes``; v4 is flexible. Written as v3.

A null value is a tombstone: the offset, or the group, is gone. Malformed bytes raise
:class:`GroupRecordError` (a ``DecodeError``), never an arbitrary exception.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shazamq.protocol import primitives as p
from shazamq.protocol.errors import DecodeError

__all__ = [
    "GroupMetadataKey",
    "GroupMetadataValue",
    "GroupRecordError",
    "MemberRecord",
    "OffsetKey",
    "OffsetValue",
    "UnknownKey",
    "decode_group_value",
    "decode_key",
    "decode_offset_value",
    "encode_group_key",
    "encode_group_value",
    "encode_offset_key",
    "encode_offset_value",
]

OFFSET_KEY_VERSION = 1
GROUP_KEY_VERSION = 2
OFFSET_VALUE_VERSION = 3
OFFSET_VALUE_WITH_EXPIRY = 1
GROUP_VALUE_VERSION = 3


class GroupRecordError(DecodeError):
    """A ``__consumer_offsets`` record whose bytes do not form a known key or value."""


@dataclass(frozen=True, slots=True)
class OffsetKey:
    """The key of a committed offset."""

    group: str
    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class GroupMetadataKey:
    """The key of a group's membership record."""

    group: str


@dataclass(frozen=True, slots=True)
class UnknownKey:
    """A key of a record type this broker does not use; ``version`` is its type."""

    version: int


@dataclass(frozen=True, slots=True)
class OffsetValue:
    """A committed offset with its metadata string."""

    offset: int
    metadata: str = ""
    commit_timestamp: int = -1
    leader_epoch: int = -1
    expire_timestamp: int = -1


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """One member as the group metadata record stores it."""

    member_id: str
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    subscription: bytes
    assignment: bytes
    group_instance_id: str | None = None


@dataclass(frozen=True, slots=True)
class GroupMetadataValue:
    """A group's generation, protocol, leader and members (with their assignments)."""

    protocol_type: str
    generation: int
    protocol: str | None
    leader: str | None
    current_state_timestamp: int = -1
    members: tuple[MemberRecord, ...] = ()


Reader = Callable[[Any, int], tuple[Any, int]]


def _guard(what: str, fn: Callable[[memoryview], Any], data: bytes | memoryview) -> Any:
    view = data if isinstance(data, memoryview) else memoryview(data)
    try:
        return fn(view)
    except GroupRecordError:
        raise
    except (DecodeError, struct.error, IndexError) as exc:
        raise GroupRecordError(f"malformed {what}: {exc}") from None


def _end(what: str, buf: memoryview, o: int) -> None:
    if o != len(buf):
        raise GroupRecordError(f"{len(buf) - o} unexpected trailing bytes after the {what}")


# ------------------------------------------------------------------------------ keys


def encode_offset_key(group: str, topic: str, partition: int) -> bytes:
    out = bytearray()
    p.write_int16(out, OFFSET_KEY_VERSION)
    p.write_string(out, group)
    p.write_string(out, topic)
    p.write_int32(out, partition)
    return bytes(out)


def encode_group_key(group: str) -> bytes:
    out = bytearray()
    p.write_int16(out, GROUP_KEY_VERSION)
    p.write_string(out, group)
    return bytes(out)


def decode_key(data: bytes | memoryview) -> OffsetKey | GroupMetadataKey | UnknownKey:
    """Decode a record key of ``__consumer_offsets``."""

    def run(buf: memoryview) -> OffsetKey | GroupMetadataKey | UnknownKey:
        version, o = p.read_int16(buf, 0)
        if version in (0, 1):
            group, o = p.read_string(buf, o)
            topic, o = p.read_string(buf, o)
            partition, o = p.read_int32(buf, o)
            _end("offset key", buf, o)
            return OffsetKey(group, topic, partition)
        if version == 2:
            group, o = p.read_string(buf, o)
            _end("group metadata key", buf, o)
            return GroupMetadataKey(group)
        if version < 0:
            raise GroupRecordError(f"negative key version {version}")
        return UnknownKey(version)

    return _guard("key", run, data)


# --------------------------------------------------------------------- offset values


def encode_offset_value(value: OffsetValue) -> bytes:
    out = bytearray()
    if value.expire_timestamp >= 0:
        p.write_int16(out, OFFSET_VALUE_WITH_EXPIRY)
        p.write_int64(out, value.offset)
        p.write_string(out, value.metadata)
        p.write_int64(out, value.commit_timestamp)
        p.write_int64(out, value.expire_timestamp)
    else:
        p.write_int16(out, OFFSET_VALUE_VERSION)
        p.write_int64(out, value.offset)
        p.write_int32(out, value.leader_epoch)
        p.write_string(out, value.metadata)
        p.write_int64(out, value.commit_timestamp)
    return bytes(out)


def decode_offset_value(data: bytes | memoryview) -> OffsetValue:
    """Decode an offset commit value of any version Kafka has written (0-4)."""

    def run(buf: memoryview) -> OffsetValue:
        version, o = p.read_int16(buf, 0)
        if not 0 <= version <= 4:
            raise GroupRecordError(f"unknown offset commit value version {version}")
        flexible = version >= 4
        read_str: Reader = p.read_compact_string if flexible else p.read_string
        offset, o = p.read_int64(buf, o)
        leader_epoch = -1
        if version >= 3:
            leader_epoch, o = p.read_int32(buf, o)
        metadata, o = read_str(buf, o)
        commit_ts, o = p.read_int64(buf, o)
        expire_ts = -1
        if version == 1:
            expire_ts, o = p.read_int64(buf, o)
        if flexible:
            o = p.skip_tagged_fields(buf, o)
        _end("offset commit value", buf, o)
        return OffsetValue(offset, metadata, commit_ts, leader_epoch, expire_ts)

    return _guard("offset commit value", run, data)


# ---------------------------------------------------------------------- group values


def encode_group_value(value: GroupMetadataValue) -> bytes:
    out = bytearray()
    p.write_int16(out, GROUP_VALUE_VERSION)
    p.write_string(out, value.protocol_type)
    p.write_int32(out, value.generation)
    p.write_nullable_string(out, value.protocol)
    p.write_nullable_string(out, value.leader)
    p.write_int64(out, value.current_state_timestamp)
    p.write_int32(out, len(value.members))
    for m in value.members:
        p.write_string(out, m.member_id)
        p.write_nullable_string(out, m.group_instance_id)
        p.write_string(out, m.client_id)
        p.write_string(out, m.client_host)
        p.write_int32(out, m.rebalance_timeout_ms)
        p.write_int32(out, m.session_timeout_ms)
        p.write_bytes(out, m.subscription)
        p.write_bytes(out, m.assignment)
    return bytes(out)


def decode_group_value(data: bytes | memoryview) -> GroupMetadataValue:
    """Decode a group metadata value of any version Kafka has written (0-4)."""

    def run(buf: memoryview) -> GroupMetadataValue:
        version, o = p.read_int16(buf, 0)
        if not 0 <= version <= 4:
            raise GroupRecordError(f"unknown group metadata value version {version}")
        flexible = version >= 4
        read_str: Reader = p.read_compact_string if flexible else p.read_string
        read_nstr: Reader = p.read_compact_nullable_string if flexible else p.read_nullable_string
        read_bytes: Reader = p.read_compact_bytes if flexible else p.read_bytes
        protocol_type, o = read_str(buf, o)
        generation, o = p.read_int32(buf, o)
        protocol, o = read_nstr(buf, o)
        leader, o = read_nstr(buf, o)
        state_ts = -1
        if version >= 2:
            state_ts, o = p.read_int64(buf, o)
        if flexible:
            count, o = p.read_compact_array_length(buf, o)
        else:
            count, o = p.read_array_length(buf, o)
        if count < 0:
            raise GroupRecordError("null member array")
        if count > len(buf) - o:
            raise GroupRecordError(f"{count} members cannot fit in {len(buf) - o} bytes")
        members = []
        for _ in range(count):
            member_id, o = read_str(buf, o)
            instance_id = None
            if version >= 3:
                instance_id, o = read_nstr(buf, o)
            client_id, o = read_str(buf, o)
            client_host, o = read_str(buf, o)
            rebalance_timeout = 0
            if version >= 1:
                rebalance_timeout, o = p.read_int32(buf, o)
            session_timeout, o = p.read_int32(buf, o)
            subscription, o = read_bytes(buf, o)
            assignment, o = read_bytes(buf, o)
            if flexible:
                o = p.skip_tagged_fields(buf, o)
            members.append(
                MemberRecord(
                    member_id,
                    client_id,
                    client_host,
                    session_timeout,
                    rebalance_timeout,
                    bytes(subscription),
                    bytes(assignment),
                    instance_id,
                )
            )
        if flexible:
            o = p.skip_tagged_fields(buf, o)
        _end("group metadata value", buf, o)
        return GroupMetadataValue(
            protocol_type, generation, protocol, leader, state_ts, tuple(members)
        )

    return _guard("group metadata value", run, data)
