"""Committed offsets and group metadata in ``__consumer_offsets``: writing and loading.

Every change the group coordinator must not forget is appended here before the client
is answered: offset commits (one batch per request, so a request is all-or-nothing),
transactional offset commits (a transactional batch of the producer, made visible by
the COMMIT marker the transaction coordinator writes into the same partition), group
metadata after each rebalance, and tombstones for deleted or expired offsets and groups.

Loading replays each partition from its start: the last record per key wins, a
tombstone deletes, transactional offsets wait for their producer's marker (COMMIT
applies them unless a later plain commit of the same partition exists, ABORT drops
them), and offsets of transactions still open at the end stay pending.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shazamq.protocol.errors import ErrorCode, KafkaError
from shazamq.protocol.records import CONTROL_COMMIT

from . import consumer_records as cr
from . import share_records as sr
from .group import CommittedOffset
from .internal_topic import Appended, InternalTopic, Landing, landed
from .offsets_codec import (
    GroupMetadataKey,
    GroupMetadataValue,
    GroupRecordError,
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

if TYPE_CHECKING:
    from shazamq.broker.partitions import PartitionManager
    from shazamq.config import GroupsConfig

__all__ = [
    "OFFSETS_TOPIC",
    "LoadedPartition",
    "OffsetsStore",
    "append_error_code",
    "commit_replication_error",
    "group_replication_error",
]

log = logging.getLogger(__name__)

OFFSETS_TOPIC = "__consumer_offsets"

TopicPartition = tuple[str, int]


@dataclass(slots=True)
class LoadedPartition:
    """What one ``__consumer_offsets`` partition holds after replay."""

    offsets: dict[str, dict[TopicPartition, CommittedOffset]] = field(default_factory=dict)
    groups: dict[str, GroupMetadataValue] = field(default_factory=dict)
    # producer id -> group -> partition -> offset, for transactions still open
    pending: dict[int, dict[str, dict[TopicPartition, CommittedOffset]]] = field(
        default_factory=dict
    )
    # consumer groups (KIP-848): group -> (record type, member id) -> last value
    consumer: dict[str, dict[tuple[int, str | None], object]] = field(default_factory=dict)
    # share groups (KIP-932), the same way
    share: dict[str, dict[tuple[int, str | None], object]] = field(default_factory=dict)
    records: int = 0
    skipped: int = 0


def append_error_code(exc: BaseException) -> int:
    """The error a coordinator answers when its append failed (Kafka's mapping)."""
    code = getattr(exc, "error_code", None)
    if code is None and isinstance(exc, KafkaError):
        code = int(exc.code)
    e = ErrorCode
    if code in (
        e.UNKNOWN_TOPIC_OR_PARTITION,
        e.NOT_ENOUGH_REPLICAS,
        e.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        e.REQUEST_TIMED_OUT,
        e.KAFKA_STORAGE_ERROR,
        e.COORDINATOR_NOT_AVAILABLE,
    ):
        return int(e.COORDINATOR_NOT_AVAILABLE)
    if code == e.NOT_LEADER_OR_FOLLOWER:
        return int(e.NOT_COORDINATOR)
    if code in (e.MESSAGE_TOO_LARGE, e.RECORD_LIST_TOO_LARGE, e.INVALID_FETCH_SIZE):
        return int(e.INVALID_COMMIT_OFFSET_SIZE)
    if code in (
        e.INVALID_PRODUCER_EPOCH,
        e.PRODUCER_FENCED,
        e.OUT_OF_ORDER_SEQUENCE_NUMBER,
        e.INVALID_TXN_STATE,
    ):
        return int(code)  # type: ignore[arg-type]
    return int(e.UNKNOWN_SERVER_ERROR)


def commit_replication_error(code: int) -> int:
    """What an offset commit answers when its records did not reach the in-sync replicas
    (Kafka's mapping for offset commits: a timeout stays REQUEST_TIMED_OUT)."""
    e = ErrorCode
    if code in (e.NOT_ENOUGH_REPLICAS, e.NOT_ENOUGH_REPLICAS_AFTER_APPEND):
        return int(e.COORDINATOR_NOT_AVAILABLE)
    if code == e.NOT_LEADER_OR_FOLLOWER:
        return int(e.NOT_COORDINATOR)
    return int(code)


def group_replication_error(code: int) -> int:
    """What a group metadata write answers when it did not reach the in-sync replicas
    (Kafka's mapping for group metadata: a timeout sends the members back to join)."""
    e = ErrorCode
    if code in (e.NOT_ENOUGH_REPLICAS, e.NOT_ENOUGH_REPLICAS_AFTER_APPEND):
        return int(e.COORDINATOR_NOT_AVAILABLE)
    if code == e.NOT_LEADER_OR_FOLLOWER:
        return int(e.NOT_COORDINATOR)
    if code == e.REQUEST_TIMED_OUT:
        return int(e.REBALANCE_IN_PROGRESS)
    return int(code)


def committed_from(value: OffsetValue, record_offset: int) -> CommittedOffset:
    return CommittedOffset(
        offset=value.offset,
        metadata=value.metadata,
        commit_timestamp=value.commit_timestamp,
        leader_epoch=value.leader_epoch,
        expire_timestamp=value.expire_timestamp,
        record_offset=record_offset,
    )


class OffsetsStore:
    """Reads and writes the group coordinator's records."""

    def __init__(self, partitions: PartitionManager, config: GroupsConfig) -> None:
        self.topic = InternalTopic(
            partitions,
            OFFSETS_TOPIC,
            config.offsets_topic_num_partitions,
            {  # Kafka's GroupCoordinator.offsetsTopicConfigs
                "cleanup.policy": "compact",
                "segment.bytes": str(config.offsets_topic_segment_bytes),
                "compression.type": "producer",
            },
        )

    @property
    def needs_creation(self) -> bool:
        return self.topic.needs_creation

    @property
    def partition_count(self) -> int:
        return self.topic.count

    def partition_for(self, group_id: str) -> int:
        return self.topic.partition_for(group_id)

    # -- writing ----------------------------------------------------------------------

    async def write_offsets(
        self,
        group_id: str,
        offsets: dict[TopicPartition, CommittedOffset],
        *,
        producer_id: int = -1,
        producer_epoch: int = -1,
    ) -> Appended:
        """Append the commits as one batch and set each one's ``record_offset`` (once
        written: through the write pool, which may take a writer thread)."""
        records = [
            (
                encode_offset_key(group_id, topic, partition),
                encode_offset_value(
                    OffsetValue(
                        c.offset, c.metadata, c.commit_timestamp, c.leader_epoch, c.expire_timestamp
                    )
                ),
            )
            for (topic, partition), c in offsets.items()
        ]
        appended = await landed(
            self.topic.append(
                self.partition_for(group_id),
                records,
                producer_id=producer_id,
                producer_epoch=producer_epoch,
                transactional=producer_id >= 0,
            )
        )
        assert appended is not None
        for i, committed in enumerate(offsets.values()):
            committed.record_offset = appended.base_offset + i
        return appended

    def delete_offsets(self, group_id: str, tps: list[TopicPartition]) -> Landing | None:
        """Tombstones for some of a group's offsets, in one batch; where they land (or
        its future), None when there is nothing to delete."""
        if not tps:
            return None
        return self.topic.append(
            self.partition_for(group_id),
            [(encode_offset_key(group_id, t, p), None) for t, p in tps],
        )

    def write_group(self, group_id: str, value: GroupMetadataValue) -> Landing:
        return self.topic.append(
            self.partition_for(group_id),
            [(encode_group_key(group_id), encode_group_value(value))],
        )

    def delete_group(
        self, group_id: str, offsets: list[TopicPartition], *, metadata: bool = True
    ) -> Landing | None:
        """Tombstones for a group's offsets (and its metadata), in one batch; where they
        land (or its future), None when there is nothing to delete."""
        records: list[tuple[bytes, bytes | None]] = [
            (encode_offset_key(group_id, t, p), None) for t, p in offsets
        ]
        if metadata:
            records.append((encode_group_key(group_id), None))
        if not records:
            return None
        return self.topic.append(self.partition_for(group_id), records)

    # -- loading ----------------------------------------------------------------------

    def load_partition(self, index: int) -> LoadedPartition:
        """Replay partition ``index``; safe to call from an executor thread."""
        out = LoadedPartition()
        offsets = out.offsets
        pending = out.pending
        for batch in self.topic.scan(index):
            header = batch.header
            if batch.control is not None:
                per_group = pending.pop(header.producer_id, None)
                if per_group and batch.control.kind == CONTROL_COMMIT:
                    for gid, tps in per_group.items():
                        current = offsets.setdefault(gid, {})
                        for tp, committed in tps.items():
                            existing = current.get(tp)
                            if existing is None or existing.record_offset < committed.record_offset:
                                current[tp] = committed
                continue
            txn_pid = header.producer_id if header.is_transactional else None
            for record_offset, key, value in batch.records:
                out.records += 1
                if key is None:
                    out.skipped += 1
                    continue
                try:
                    decoded = decode_key(key)
                    if isinstance(decoded, OffsetKey):
                        tp = (decoded.topic, decoded.partition)
                        if value is None:
                            offsets.get(decoded.group, {}).pop(tp, None)
                            if txn_pid is None:
                                # a delete covers offsets of transactions still open too
                                # (Kafka's replay): their COMMIT marker brings none back
                                for per_group in pending.values():
                                    per_group.get(decoded.group, {}).pop(tp, None)
                            continue
                        committed = committed_from(decode_offset_value(value), record_offset)
                        if txn_pid is not None:
                            pending.setdefault(txn_pid, {}).setdefault(decoded.group, {})[tp] = (
                                committed
                            )
                        else:
                            offsets.setdefault(decoded.group, {})[tp] = committed
                    elif isinstance(decoded, GroupMetadataKey):
                        if value is None:
                            out.groups.pop(decoded.group, None)
                        else:
                            out.groups[decoded.group] = decode_group_value(value)
                    elif (
                        isinstance(decoded, UnknownKey) and decoded.version in cr.CONSUMER_KEY_TYPES
                    ):
                        ckey = cr.decode_consumer_key(key)
                        slot = (ckey.kind, ckey.member)
                        recs = out.consumer.setdefault(ckey.group, {})
                        if value is None:
                            recs.pop(slot, None)
                        else:
                            recs[slot] = cr.decode_consumer_value(ckey.kind, value)
                    elif isinstance(decoded, UnknownKey) and decoded.version in sr.SHARE_KEY_TYPES:
                        skey = sr.decode_share_key(key)
                        slot = (skey.kind, skey.member)
                        srecs = out.share.setdefault(skey.group, {})
                        if value is None:
                            srecs.pop(slot, None)
                        else:
                            srecs[slot] = sr.decode_share_value(skey.kind, value)
                    else:
                        out.skipped += 1
                except GroupRecordError as exc:
                    out.skipped += 1
                    log.error(
                        "%s-%d: skipping malformed record at offset %d: %s",
                        OFFSETS_TOPIC,
                        index,
                        record_offset,
                        exc,
                    )
        for gid in [g for g, tps in offsets.items() if not tps]:
            del offsets[gid]
        return out
