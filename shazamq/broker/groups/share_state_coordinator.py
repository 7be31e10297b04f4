"""The share coordinator of a cluster: the durable share-partition state, per key.

In a cluster a share-partition's in-flight window lives on the leader of its topic
partition (the share-partition leader), but its durable state lives with the share
coordinator of its key ``group:topic id:partition``: the broker leading the partition of
``__share_group_state`` the key hashes to, as in Kafka (Java ``String.hashCode`` of the key
modulo the partition count). The leader reads the state when it starts serving the
share-partition and writes it before it answers an acknowledgement, with the
ReadShareGroupState / WriteShareGroupState RPCs (apis/share_state.py); the offsets
administration initializes and deletes it with InitializeShareGroupState /
DeleteShareGroupState, and describes it with ReadShareGroupStateSummary (start offset and
state epoch only).

Fencing, as Kafka's: every state carries the leader epoch of the last partition leader
that read or wrote it and a state epoch moved by each initialization. A read or write
from an older leader epoch is refused (FENCED_LEADER_EPOCH), so a deposed leader cannot
overwrite what its successor read; a write of an older state epoch is refused
(FENCED_STATE_EPOCH), so a leader that missed an offsets reset reads again.

A ``__share_group_state`` partition becoming led here is loaded (its keys answer
COORDINATOR_LOAD_IN_PROGRESS meanwhile) and dropped when led elsewhere (NOT_COORDINATOR).
A change is answered once the in-sync replicas hold its record, so it survives the loss
of this broker. Writes carry the whole in-flight window, so the last record of a key is
its state and compaction keeps exactly that.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shazamq.broker.log import LogError
from shazamq.protocol.errors import ErrorCode, KafkaError
from shazamq.protocol.records import RecordError

from .internal_topic import landed, replicated
from .ownership import OwnedPartitions, Ownership
from .partitioning import coordinator_partition
from .share_partition import StateBatch
from .share_state_store import (
    SHARE_STATE_TOPIC,
    LoadedShareState,
    ShareStateStore,
    Snapshot,
    encode_snapshot,
    snapshot_key,
)

if TYPE_CHECKING:
    from shazamq.broker.cluster.node import ClusterNode
    from shazamq.broker.partitions import Partition

__all__ = ["ShareStateCoordinator", "StateAnswer", "share_key"]

log = logging.getLogger(__name__)
_E = ErrorCode

PartKey = tuple[str, uuid.UUID, int]  # group, topic id, partition

# Kafka's share.coordinator.write.timeout.ms
WRITE_TIMEOUT_S = 5.0


def share_key(key: PartKey) -> str:
    """Kafka's coordinator key of a share-partition: ``group:topic id:partition``, the
    topic id in Kafka's base64 form."""
    group, topic_id, partition = key
    return f"{group}:{_kafka_uuid(topic_id)}:{partition}"


def _kafka_uuid(u: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(u.bytes).decode().rstrip("=")


@dataclass(frozen=True, slots=True)
class StateAnswer:
    """A read's answer: an error, or the state (None: the key has none)."""

    error: int = 0
    message: str | None = None
    state: Snapshot | None = None


@dataclass(eq=False, slots=True)
class _Owned(Ownership):
    # one change at a time per partition: a record is written and replicated before the
    # next change of the partition's keys is decided
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ShareStateCoordinator:
    """The share-partition states whose ``__share_group_state`` partition is led here."""

    def __init__(self, cluster: ClusterNode, store: ShareStateStore) -> None:
        self.cluster = cluster
        self.store = store
        self.states: dict[PartKey, Snapshot] = {}
        self._owned: OwnedPartitions[LoadedShareState, _Owned] = OwnedPartitions(
            SHARE_STATE_TOPIC,
            self.partition_for,
            new=_Owned,
            read=lambda index: self.store.load([index]),
            install=self._install,
            then=self._loaded,
            unload=self._unload,
            log=log,
        )
        self.started = False

    def partition_for(self, key: str) -> int:
        return coordinator_partition(key, self.store.topic.count)

    def coordinator_of(self, key: PartKey) -> int:
        """The broker that is the share coordinator of ``key``, or -1 (the topic is being
        created, or its partition has no leader)."""
        return self.store.topic.coordinator_of(share_key(key))

    # -- life cycle -------------------------------------------------------------------

    def start(self, partitions: list[Partition]) -> None:
        """Serve from now on; ``partitions`` are those hosted here already."""
        self.started = True
        self._owned.attach(self.cluster, partitions)

    def stop(self) -> None:
        self._owned.detach(self.cluster)
        self.started = False

    def _install(self, index: int, loaded: LoadedShareState) -> None:
        for key, snap in loaded.snapshots.items():
            if self.partition_for(share_key(key)) == index:
                self.states[key] = snap

    async def _loaded(self, index: int, own: _Owned, loaded: LoadedShareState, t0: float) -> None:
        log.info(
            "%s-%d: now the share coordinator of %d share-partitions (loaded in %.2fs)",
            SHARE_STATE_TOPIC,
            index,
            sum(1 for k in self.states if self.partition_for(share_key(k)) == index),
            time.monotonic() - t0,
        )

    def _unload(self, index: int) -> None:
        for key in [k for k in self.states if self.partition_for(share_key(k)) == index]:
            del self.states[key]

    # -- the operations ---------------------------------------------------------------

    def _owner(self, key: PartKey) -> tuple[int, int, _Owned | None]:
        """(error, partition index, ownership) for a request about ``key``."""
        k = share_key(key)
        code = self._owned.key_error(k, self.started)
        index = self.partition_for(k)
        return code, index, None if code else self._owned.get(index)

    async def _write(self, index: int, own: _Owned, key: PartKey, snap: Snapshot | None) -> int:
        """Append ``key``'s new state (None: a tombstone), wait for the in-sync replicas,
        then take it into memory; 0 or the error."""
        value = None if snap is None else encode_snapshot(snap)
        try:
            appended = await landed(self.store.topic.append(index, [(snapshot_key(*key), value)]))
        except (LogError, RecordError) as exc:
            code = int(exc.error_code)
        except KafkaError as exc:
            code = int(exc.code)
        else:
            code = await replicated(self.cluster, appended, WRITE_TIMEOUT_S)
        if code == _E.NOT_LEADER_OR_FOLLOWER:
            # led elsewhere before the write's turn, or before it was replicated: the
            # leader asks the new coordinator, as Kafka's share coordinator answers
            return int(_E.NOT_COORDINATOR)
        if code:
            return code
        if self._owned.get(index) is not own:
            return int(_E.NOT_COORDINATOR)  # led elsewhere meanwhile: the successor reads it
        if snap is None:
            self.states.pop(key, None)
        else:
            self.states[key] = snap
        return 0

    async def read(self, key: PartKey, leader_epoch: int) -> StateAnswer:
        """The state of ``key`` for the partition leader at ``leader_epoch`` (which from
        now on fences older leaders); ``leader_epoch`` -1 only looks (an admin's read)."""
        code, index, own = self._owner(key)
        if own is None:
            return StateAnswer(code)
        async with own.lock:
            current = self.states.get(key)
            if current is None or leader_epoch < 0:
                return StateAnswer(state=current)
            if leader_epoch < current.leader_epoch:
                return StateAnswer(
                    int(_E.FENCED_LEADER_EPOCH),
                    f"leader epoch {leader_epoch} is older than {current.leader_epoch}",
                )
            if leader_epoch > current.leader_epoch:
                bumped = Snapshot(
                    current.snapshot_epoch + 1,
                    current.state_epoch,
                    current.start_offset,
                    current.batches,
                    leader_epoch,
                )
                code = await self._write(index, own, key, bumped)
                if code:
                    return StateAnswer(code)
                current = bumped
            return StateAnswer(state=current)

    def summary(self, key: PartKey, leader_epoch: int) -> StateAnswer:
        """The start offset and state epoch of ``key`` without its window
        (ReadShareGroupStateSummary): nothing is recorded, so it fences nobody, but a
        partition leader older than the state's is refused. UNKNOWN_TOPIC_OR_PARTITION if
        the key has no state, GROUP_ID_NOT_FOUND if no share-partition of the group has
        state here."""
        code, _index, own = self._owner(key)
        if own is None:
            return StateAnswer(code)
        current = self.states.get(key)
        if current is None:
            group = key[0]
            if any(k[0] == group for k in self.states):
                return StateAnswer(
                    int(_E.UNKNOWN_TOPIC_OR_PARTITION),
                    f"share group {group} has no state for partition {key[2]} of {key[1]}",
                )
            return StateAnswer(int(_E.GROUP_ID_NOT_FOUND), f"share group {group} has no state")
        if 0 <= leader_epoch < current.leader_epoch:
            return StateAnswer(
                int(_E.FENCED_LEADER_EPOCH),
                f"leader epoch {leader_epoch} is older than {current.leader_epoch}",
            )
        return StateAnswer(state=current)

    async def write(
        self,
        key: PartKey,
        state_epoch: int,
        leader_epoch: int,
        start_offset: int,
        batches: tuple[StateBatch, ...],
    ) -> tuple[int, str | None]:
        """Replace the state of ``key`` with the leader's whole window."""
        code, index, own = self._owner(key)
        if own is None:
            return code, None
        if start_offset < 0:
            return int(_E.INVALID_REQUEST), f"start offset {start_offset} is negative"
        async with own.lock:
            current = self.states.get(key)
            if current is not None:
                if leader_epoch < current.leader_epoch:
                    return int(_E.FENCED_LEADER_EPOCH), (
                        f"leader epoch {leader_epoch} is older than {current.leader_epoch}"
                    )
                if state_epoch < current.state_epoch:
                    return int(_E.FENCED_STATE_EPOCH), (
                        f"state epoch {state_epoch} is older than {current.state_epoch}"
                    )
            snap = Snapshot(
                (current.snapshot_epoch + 1) if current is not None else 0,
                state_epoch if current is None else max(state_epoch, current.state_epoch),
                start_offset,
                batches,
                leader_epoch if current is None else max(leader_epoch, current.leader_epoch),
            )
            return await self._write(index, own, key, snap), None

    async def initialize(
        self, key: PartKey, state_epoch: int, start_offset: int
    ) -> tuple[int, str | None]:
        """A fresh state starting at ``start_offset`` (an offsets reset): nothing in
        flight, and a state epoch past the current one so a leader holding the old
        window is fenced at its next write."""
        code, index, own = self._owner(key)
        if own is None:
            return code, None
        if start_offset < 0:
            return int(_E.INVALID_REQUEST), f"start offset {start_offset} is negative"
        async with own.lock:
            current = self.states.get(key)
            # never the epoch 0 a state starts with, so a leader tells a reset state apart
            epoch = max(state_epoch, (0 if current is None else current.state_epoch) + 1)
            snap = Snapshot(
                (current.snapshot_epoch + 1) if current is not None else 0,
                epoch,
                start_offset,
                (),
                current.leader_epoch if current is not None else -1,
            )
            return await self._write(index, own, key, snap), None

    async def delete(self, key: PartKey) -> tuple[int, str | None]:
        code, index, own = self._owner(key)
        if own is None:
            return code, None
        async with own.lock:
            if key not in self.states:
                return 0, None
            return await self._write(index, own, key, None), None
