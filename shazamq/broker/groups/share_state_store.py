"""Durable share-group state in ``__share_group_state``: its records, writing and loading.

The topic is compacted, and written and replayed through the broker's own log with the
same :class:`~.internal_topic.InternalTopic` the group and transaction coordinators use.
Records are keyed so the last one per key is the state:

* a share snapshot (Kafka's ShareSnapshot shape): group, topic id and partition ->
  snapshot epoch, start offset (SPSO) and the state batches of the in-flight window;
* the group's existence (its group epoch), so an empty group lists after a restart;
* the group's settings (share.auto.offset.reset, share.record.lock.duration.ms, ...).

A tombstone deletes. Keys and values start with an int16 version, big-endian throughout.
"""

from __future__ import annotations

import logging
import struct
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .internal_topic import InternalTopic, Landing
from .share_partition import RecordState, StateBatch

if TYPE_CHECKING:
    from shazamq.broker.partitions import PartitionManager

__all__ = [
    "SHARE_STATE_TOPIC",
    "LoadedShareState",
    "ShareRecordError",
    "ShareStateStore",
    "Snapshot",
    "decode_key",
    "decode_snapshot",
    "encode_config",
    "encode_snapshot",
    "snapshot_key",
]

log = logging.getLogger(__name__)

SHARE_STATE_TOPIC = "__share_group_state"

SNAPSHOT_KEY = 0  # Kafka's ShareSnapshotKey record type
GROUP_KEY = 10
CONFIG_KEY = 11

_H = struct.Struct(">h")
_I = struct.Struct(">i")
_SNAP_HEAD = struct.Struct(">hiiiqqqi")  # version, epochs x3, start, created, written, count
_BATCH = struct.Struct(">qqbh")

PartitionKey = tuple[str, uuid.UUID, int]


class ShareRecordError(ValueError):
    """A record of ``__share_group_state`` that cannot be decoded."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    snapshot_epoch: int
    state_epoch: int
    start_offset: int
    batches: tuple[StateBatch, ...]
    # the partition leader epoch of the last reader or writer (a cluster's share
    # coordinator fences older leaders with it); -1 on a single broker
    leader_epoch: int = -1


def _str(s: str) -> bytes:
    b = s.encode()
    if len(b) > 0x7FFF:
        raise ShareRecordError("string too long")
    return _H.pack(len(b)) + b


def _read_str(buf: bytes, pos: int) -> tuple[str, int]:
    if pos + 2 > len(buf):
        raise ShareRecordError("truncated string length")
    (n,) = _H.unpack_from(buf, pos)
    pos += 2
    if n < 0 or pos + n > len(buf):
        raise ShareRecordError("bad string length")
    try:
        return buf[pos : pos + n].decode(), pos + n
    except UnicodeDecodeError as exc:
        raise ShareRecordError(f"string is not UTF-8: {exc}") from None


def snapshot_key(group: str, topic_id: uuid.UUID, partition: int) -> bytes:
    return _H.pack(SNAPSHOT_KEY) + _str(group) + topic_id.bytes + _I.pack(partition)


def group_key(group: str) -> bytes:
    return _H.pack(GROUP_KEY) + _str(group)


def config_key(group: str) -> bytes:
    return _H.pack(CONFIG_KEY) + _str(group)


def decode_key(buf: bytes) -> tuple[int, str, uuid.UUID | None, int]:
    """(record type, group, topic id, partition) of a key."""
    if len(buf) < 2:
        raise ShareRecordError("key too short")
    (kind,) = _H.unpack_from(buf, 0)
    group, pos = _read_str(buf, 2)
    if kind == SNAPSHOT_KEY:
        if pos + 20 != len(buf):
            raise ShareRecordError("bad snapshot key length")
        (partition,) = _I.unpack_from(buf, pos + 16)
        return kind, group, uuid.UUID(bytes=bytes(buf[pos : pos + 16])), partition
    if kind in (GROUP_KEY, CONFIG_KEY):
        if pos != len(buf):
            raise ShareRecordError("trailing bytes in key")
        return kind, group, None, -1
    raise ShareRecordError(f"unknown record type {kind}")


def encode_snapshot(s: Snapshot, now_ms: int | None = None) -> bytes:
    now = int(time.time() * 1000) if now_ms is None else now_ms
    parts = [
        _SNAP_HEAD.pack(
            0,
            s.snapshot_epoch,
            s.state_epoch,
            s.leader_epoch,
            s.start_offset,
            now,
            now,
            len(s.batches),
        )
    ]
    parts.extend(
        _BATCH.pack(b.first, b.last, int(b.state), min(b.delivery_count, 0x7FFF)) for b in s.batches
    )
    return b"".join(parts)


def decode_snapshot(buf: bytes) -> Snapshot:
    if len(buf) < _SNAP_HEAD.size:
        raise ShareRecordError("snapshot too short")
    version, snap_epoch, state_epoch, leader, start, _c, _w, count = _SNAP_HEAD.unpack_from(buf, 0)
    if version != 0:
        raise ShareRecordError(f"unknown snapshot version {version}")
    if count < 0 or _SNAP_HEAD.size + count * _BATCH.size != len(buf):
        raise ShareRecordError("bad state batch count")
    batches = []
    for i in range(count):
        first, last, state, dc = _BATCH.unpack_from(buf, _SNAP_HEAD.size + i * _BATCH.size)
        try:
            st = RecordState(state)
        except ValueError:
            raise ShareRecordError(f"unknown delivery state {state}") from None
        if last < first:
            raise ShareRecordError(f"state batch {first}-{last} is reversed")
        batches.append(StateBatch(first, last, st, dc))
    return Snapshot(snap_epoch, state_epoch, start, tuple(batches), leader)


def encode_group(epoch: int) -> bytes:
    return _H.pack(0) + _I.pack(epoch)


def decode_group(buf: bytes) -> int:
    if len(buf) != 6 or _H.unpack_from(buf, 0)[0] != 0:
        raise ShareRecordError("bad group record")
    return int(_I.unpack_from(buf, 2)[0])


def encode_config(values: dict[str, str]) -> bytes:
    out = [_H.pack(0), _I.pack(len(values))]
    for k, v in sorted(values.items()):
        out.append(_str(k))
        out.append(_str(v))
    return b"".join(out)


def decode_config(buf: bytes) -> dict[str, str]:
    if len(buf) < 6 or _H.unpack_from(buf, 0)[0] != 0:
        raise ShareRecordError("bad config record")
    (n,) = _I.unpack_from(buf, 2)
    pos = 6
    out = {}
    for _ in range(max(n, 0)):
        k, pos = _read_str(buf, pos)
        v, pos = _read_str(buf, pos)
        out[k] = v
    if pos != len(buf):
        raise ShareRecordError("trailing bytes in config record")
    return out


@dataclass(slots=True)
class LoadedShareState:
    snapshots: dict[PartitionKey, Snapshot] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)
    configs: dict[str, dict[str, str]] = field(default_factory=dict)
    records: int = 0
    skipped: int = 0


class ShareStateStore:
    """Reads and writes ``__share_group_state``."""

    def __init__(
        self, partitions: PartitionManager, num_partitions: int, segment_bytes: int
    ) -> None:
        self.topic = InternalTopic(
            partitions,
            SHARE_STATE_TOPIC,
            num_partitions,
            {"cleanup.policy": "compact", "segment.bytes": str(segment_bytes)},
        )

    async def ensure(self) -> None:
        await self.topic.ensure()

    def partition_for(self, group: str) -> int:
        # one group's records share a partition, so a group is loaded and written in one place
        return self.topic.partition_for(group)

    def write(self, group: str, records: list[tuple[bytes, bytes | None]]) -> Landing | None:
        if not records:
            return None
        return self.topic.append(self.partition_for(group), records)

    def write_snapshots(
        self, group: str, snaps: Iterable[tuple[uuid.UUID, int, Snapshot]]
    ) -> Landing | None:
        return self.write(
            group, [(snapshot_key(group, tid, p), encode_snapshot(s)) for tid, p, s in snaps]
        )

    def load(self, indexes: Iterable[int] | None = None) -> LoadedShareState:
        """Replay the partitions ``indexes`` (all by default); safe to call from an
        executor thread."""
        out = LoadedShareState()
        for index in range(self.topic.count) if indexes is None else indexes:
            for batch in self.topic.scan(index):
                if batch.control is not None:
                    continue
                for offset, key, value in batch.records:
                    out.records += 1
                    try:
                        if key is None:
                            raise ShareRecordError("record without a key")
                        kind, group, tid, part = decode_key(key)
                        if kind == SNAPSHOT_KEY:
                            assert tid is not None
                            if value is None:
                                out.snapshots.pop((group, tid, part), None)
                            else:
                                out.snapshots[(group, tid, part)] = decode_snapshot(value)
                        elif kind == GROUP_KEY:
                            if value is None:
                                out.groups.pop(group, None)
                            else:
                                out.groups[group] = decode_group(value)
                        elif value is None:
                            out.configs.pop(group, None)
                        else:
                            out.configs[group] = decode_config(value)
                    except (ShareRecordError, struct.error) as exc:
                        out.skipped += 1
                        log.error(
                            "%s-%d: skipping malformed record at offset %d: %s",
                            SHARE_STATE_TOPIC,
                            index,
                            offset,
                            exc,
                        )
        return out
