"""Committed offsets: OffsetCommit, TxnOffsetCommit, OffsetFetch, OffsetDelete, retention.

Every commit is appended to ``__consumer_offsets`` (one batch per request, so a request
is all-or-nothing) before it is acknowledged and becomes visible. A transactional
commit is written as a transactional batch of its producer and stays pending until the
transaction coordinator writes the producer's marker into the same partition
(:meth:`OffsetsMixin.complete_txn`): COMMIT applies it unless a later plain commit of the
partition exists, ABORT drops it. Fetches with ``require_stable`` see UNSTABLE_OFFSET_COMMIT
while a transaction holds an offset of the partition.

Retention (``groups.offsets_retention_minutes``): offsets of Empty groups expire once the
group has been empty that long (or, for groups that never used group management, since
the commit); those of Stable consumer groups expire for topics no member subscribes to
any more (KIP-496); an explicit retention (OffsetCommit v2-v4) is honoured. A group left
with nothing is removed, tombstones and all.

In a cluster a commit is answered, and becomes visible, once the in-sync replicas have
its records (``offsets.commit.timeout.ms``; REQUEST_TIMED_OUT after it, and the commit is
not applied). OffsetDelete and DeleteGroups answer once their tombstones are in the log
(and, in a cluster, on the in-sync replicas, as Kafka's KIP-848 coordinator does); memory
changes only after the tombstones landed, so a storage error is answered with its code
and leaves the offsets and the group as they were. DeleteGroups first waits for the
group's commits already being written or replicated and applies them, so its tombstones
come after them in the log and cover them. Retention answers nobody: it drops
the expired offsets from memory as it queues their tombstones, and after a crash before
they land the reloaded offsets are simply expired again. The partitions a commit names
must exist in the cluster, not on this broker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shazamq.broker.log import LogError
from shazamq.protocol.errors import ErrorCode, KafkaError
from shazamq.protocol.records import RecordError

from .group import CONSUMER_PROTOCOL_TYPE, CommittedOffset, Group, GroupState
from .internal_topic import landed, partition_exists, run_now
from .offsets_store import append_error_code, commit_replication_error

if TYPE_CHECKING:
    from prometheus_client import Counter

    from shazamq.broker.app import Broker
    from shazamq.broker.cluster.node import ClusterNode
    from shazamq.config import GroupsConfig

    from .coordinator import _Ownership
    from .internal_topic import Landing
    from .offsets_store import LoadedPartition, OffsetsStore
    from .ownership import OwnedPartitions

__all__ = ["FetchedOffset", "OffsetCommit", "OffsetsMixin"]

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]

MAX_METADATA_BYTES = 4096

_E = ErrorCode


@dataclass(frozen=True, slots=True)
class OffsetCommit:
    """One partition of an OffsetCommit / TxnOffsetCommit request."""

    offset: int
    leader_epoch: int = -1
    metadata: str | None = ""
    commit_timestamp: int = -1  # OffsetCommit v1 only; -1: now


@dataclass(frozen=True, slots=True)
class FetchedOffset:
    """One partition of an OffsetFetch answer."""

    topic: str
    partition: int
    offset: int
    leader_epoch: int
    metadata: str
    error: int


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class OffsetsMixin:
    """Committed offsets of every group; mixed into :class:`GroupCoordinator`."""

    broker: Broker
    config: GroupsConfig
    store: OffsetsStore
    groups: dict[str, Group]
    loaded: bool
    _persisted: set[str]
    _txn_groups: dict[int, set[str]]
    # group id -> how many of its commits are being written or replicated (not yet
    # applied to memory), and what a DeleteGroups waiting for them to be done waits on
    _commits_in_flight: dict[str, int]
    _commits_settled: dict[str, asyncio.Future[None]]
    # group id -> the group a DeleteGroups is tombstoning (Dead meanwhile)
    _deleting: dict[str, Group]
    offset_commits: Counter
    offsets_expired: Counter
    _owned: OwnedPartitions[LoadedPartition, _Ownership]

    if TYPE_CHECKING:

        @property
        def cluster(self) -> ClusterNode | None: ...
        def _key_status(self, group_id: str) -> int: ...
        async def create_offsets_topic(self) -> None: ...
        def _ownership(self, group_id: str) -> _Ownership | None: ...
        async def _replication(self, appended: Landing | None) -> int: ...
        def consumer_commit_error(
            self, group_id: str, member_id: str, member_epoch: int
        ) -> int | None: ...
        def consumer_group_active(self, group_id: str) -> bool: ...

    def partition_for(self, group_id: str) -> int:
        return self.store.partition_for(group_id)

    def _partition_exists(self, topic: str, index: int) -> bool:
        return partition_exists(self.broker.partitions, self.cluster, topic, index)

    # -- OffsetCommit -----------------------------------------------------------------

    def commit_offsets(self, **request: Any) -> dict[TopicPartition, int]:
        """:meth:`commit_offsets_async` on a single broker, where it never waits."""
        return run_now(self.commit_offsets_async(**request))

    def txn_commit_offsets(self, **request: Any) -> dict[TopicPartition, int]:
        """:meth:`txn_commit_offsets_async` on a single broker, where it never waits."""
        return run_now(self.txn_commit_offsets_async(**request))

    async def commit_offsets_async(
        self,
        *,
        group_id: str,
        generation_id: int,
        member_id: str,
        group_instance_id: str | None,
        retention_ms: int,
        offsets: Mapping[TopicPartition, OffsetCommit],
    ) -> dict[TopicPartition, int]:
        def all_(code: int) -> dict[TopicPartition, int]:
            return dict.fromkeys(offsets, int(code))

        await self.create_offsets_topic()
        status = self._key_status(group_id)
        if status:
            return all_(status)
        consumer = self.consumer_commit_error(group_id, member_id, generation_id)
        if consumer is not None:  # a KIP-848 group: member epochs instead of generations
            if consumer:
                return all_(consumer)
            return await self._store_offsets(
                self.groups.get(group_id) or Group(group_id), offsets, retention_ms
            )
        group = self.groups.get(group_id)
        if group is None:
            if generation_id >= 0:
                return all_(_E.ILLEGAL_GENERATION)
            # a group that only stores offsets (assign() users): created on first commit
            group = Group(group_id)
        if group.is_state(GroupState.DEAD):
            return all_(_E.COORDINATOR_NOT_AVAILABLE)
        if generation_id < 0 and group.is_state(GroupState.EMPTY):
            return await self._store_offsets(group, offsets, retention_ms)
        if group.is_static_member_fenced(member_id, group_instance_id):
            return all_(_E.FENCED_INSTANCE_ID)
        if not group.has(member_id):
            return all_(_E.UNKNOWN_MEMBER_ID)
        if generation_id != group.generation_id:
            return all_(_E.ILLEGAL_GENERATION)
        if group.is_state(GroupState.COMPLETING_REBALANCE):
            return all_(_E.REBALANCE_IN_PROGRESS)
        # Stable, or PreparingRebalance (commits of revoked partitions are welcome)
        group.get(member_id).last_heartbeat = time.monotonic()
        return await self._store_offsets(group, offsets, retention_ms)

    async def txn_commit_offsets_async(
        self,
        *,
        transactional_id: str,
        group_id: str,
        producer_id: int,
        producer_epoch: int,
        generation_id: int,
        member_id: str,
        group_instance_id: str | None,
        offsets: Mapping[TopicPartition, OffsetCommit],
    ) -> dict[TopicPartition, int]:
        def all_(code: int) -> dict[TopicPartition, int]:
            return dict.fromkeys(offsets, int(code))

        await self.create_offsets_topic()
        status = self._key_status(group_id)
        if status:
            return all_(status)
        error = await self.broker.txn.txn_offset_commit_check_async(
            transactional_id, producer_id, producer_epoch, self.partition_for(group_id)
        )
        if error:
            return all_(error)
        consumer = self.consumer_commit_error(group_id, member_id, generation_id)
        if consumer is not None:
            if consumer:
                return all_(consumer)
            return await self._store_offsets(
                self.groups.get(group_id) or Group(group_id),
                offsets,
                -1,
                producer_id=producer_id,
                producer_epoch=producer_epoch,
            )
        group = self.groups.get(group_id) or Group(group_id)
        if group.is_state(GroupState.DEAD):
            return all_(_E.COORDINATOR_NOT_AVAILABLE)
        if group.is_static_member_fenced(member_id, group_instance_id):
            return all_(_E.FENCED_INSTANCE_ID)
        if member_id and not group.has(member_id):
            return all_(_E.UNKNOWN_MEMBER_ID)
        if generation_id >= 0 and generation_id != group.generation_id:
            return all_(_E.ILLEGAL_GENERATION)
        return await self._store_offsets(
            group, offsets, -1, producer_id=producer_id, producer_epoch=producer_epoch
        )

    async def _store_offsets(
        self,
        group: Group,
        offsets: Mapping[TopicPartition, OffsetCommit],
        retention_ms: int,
        *,
        producer_id: int = -1,
        producer_epoch: int = -1,
    ) -> dict[TopicPartition, int]:
        now = _now_ms()
        result: dict[TopicPartition, int] = {}
        valid: dict[TopicPartition, CommittedOffset] = {}
        for tp, c in offsets.items():
            metadata = c.metadata or ""
            if len(metadata.encode("utf-8", "surrogateescape")) > MAX_METADATA_BYTES:
                result[tp] = int(_E.OFFSET_METADATA_TOO_LARGE)
            elif not self._partition_exists(tp[0], tp[1]):
                result[tp] = int(_E.UNKNOWN_TOPIC_OR_PARTITION)
            else:
                ts = c.commit_timestamp if c.commit_timestamp >= 0 else now
                valid[tp] = CommittedOffset(
                    offset=c.offset,
                    metadata=metadata,
                    commit_timestamp=ts,
                    leader_epoch=c.leader_epoch,
                    expire_timestamp=ts + retention_ms if retention_ms >= 0 else -1,
                )
        if valid:
            # registered before the write, so a DeleteGroups that starts while it is
            # written or replicated waits for it (see _delete_group)
            gid = group.group_id
            self._commits_in_flight[gid] = self._commits_in_flight.get(gid, 0) + 1
            try:
                await self._apply_commit(
                    group, valid, result, producer_id=producer_id, producer_epoch=producer_epoch
                )
            finally:
                left = self._commits_in_flight[gid] - 1
                if left:
                    self._commits_in_flight[gid] = left
                else:
                    del self._commits_in_flight[gid]
                    waiter = self._commits_settled.pop(gid, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(None)
        return result

    async def _commits_applied(self, group_id: str) -> None:
        """Return once no commit of ``group_id`` is being written or replicated."""
        while group_id in self._commits_in_flight:
            waiter = self._commits_settled.get(group_id)
            if waiter is None:
                waiter = asyncio.get_running_loop().create_future()
                self._commits_settled[group_id] = waiter
            await asyncio.shield(waiter)

    async def _apply_commit(
        self,
        group: Group,
        valid: dict[TopicPartition, CommittedOffset],
        result: dict[TopicPartition, int],
        *,
        producer_id: int,
        producer_epoch: int,
    ) -> None:
        """Write ``valid`` and, once the in-sync replicas have it, apply it to memory;
        each partition's answer goes into ``result``."""
        gid = group.group_id
        own = self._ownership(gid)
        try:
            appended = await self.store.write_offsets(
                gid,
                valid,
                producer_id=producer_id,
                producer_epoch=producer_epoch,
            )
        except (LogError, RecordError, KafkaError) as exc:
            code = append_error_code(exc)
            log.warning("group %s: cannot store offsets: %s", gid, exc)
            for tp in valid:
                result[tp] = code
            return
        code = await self._replication(appended)
        if not code and self.cluster is not None and self._ownership(gid) is not own:
            code = int(_E.NOT_LEADER_OR_FOLLOWER)  # unloaded while it replicated
        if code:
            code = commit_replication_error(code)
            log.warning("group %s: offsets not replicated (error %d)", gid, code)
            for tp in valid:
                result[tp] = code
            return
        # another request may have created or removed the group during the wait. A
        # group being deleted takes the commit (it precedes the tombstones in the
        # log, which are written once this is applied and cover it)
        target = self._deleting.get(gid)
        if target is None:
            target = self.groups.get(gid)
        if target is None or (target.is_state(GroupState.DEAD) and gid not in self._deleting):
            target = group if not group.is_state(GroupState.DEAD) else Group(gid)
            self.groups[gid] = target
        if producer_id >= 0:
            target.pending_txn_offsets.setdefault(producer_id, {}).update(valid)
            self._txn_groups.setdefault(producer_id, set()).add(gid)
        else:
            target.offsets.update(valid)
        self.offset_commits.inc(len(valid))
        for tp in valid:
            result[tp] = 0

    def complete_txn(
        self, partition: int, producer_id: int, commit: bool, marker_offset: int | None = None
    ) -> None:
        """A marker for ``producer_id`` was written into partition ``partition`` of
        ``__consumer_offsets`` (at ``marker_offset``): apply or drop its pending offsets."""
        if self.cluster is None:
            if not self.loaded:
                return  # loading replays the marker from the log
        else:
            own = self._owned.get(partition)
            if own is None:
                return  # whoever loads the partition replays the marker
            if not own.loaded:
                # the load may have read the log before the marker: apply it afterwards
                own.deferred.append((producer_id, commit, marker_offset))
                return
        self._complete_txn_now(partition, producer_id, commit, marker_offset)

    def _complete_txn_now(
        self, partition: int, producer_id: int, commit: bool, marker_offset: int | None
    ) -> None:
        gids = self._txn_groups.get(producer_id)
        if not gids:
            return
        for gid in [g for g in gids if self.partition_for(g) == partition]:
            group = self.groups.get(gid)
            if group is not None:
                group.complete_txn_offsets(producer_id, commit, before=marker_offset)
                if producer_id in group.pending_txn_offsets:
                    continue  # a later transaction of the producer still holds offsets
            gids.discard(gid)
        if not gids:
            del self._txn_groups[producer_id]

    # -- OffsetFetch / OffsetDelete ---------------------------------------------------

    def fetch_offsets(
        self,
        group_id: str,
        partitions: Iterable[TopicPartition] | None,
        *,
        require_stable: bool = False,
    ) -> tuple[int, list[FetchedOffset]]:
        status = self._key_status(group_id)
        if status:
            return status, []
        group = self.groups.get(group_id)
        if partitions is None:
            if group is None:
                return 0, []
            wanted: set[TopicPartition] = set(group.offsets)
            if require_stable:
                for pending in group.pending_txn_offsets.values():
                    wanted.update(pending)
            tps: list[TopicPartition] = sorted(wanted)
        else:
            tps = list(partitions)
        out = []
        for topic, partition in tps:
            if (
                group is not None
                and require_stable
                and group.has_pending_txn_offsets((topic, partition))
            ):
                out.append(
                    FetchedOffset(topic, partition, -1, -1, "", int(_E.UNSTABLE_OFFSET_COMMIT))
                )
                continue
            c = group.offsets.get((topic, partition)) if group is not None else None
            if c is None:
                out.append(FetchedOffset(topic, partition, -1, -1, "", 0))
            else:
                out.append(FetchedOffset(topic, partition, c.offset, c.leader_epoch, c.metadata, 0))
        return 0, out

    async def delete_offsets(
        self, group_id: str, partitions: list[TopicPartition]
    ) -> tuple[int, dict[TopicPartition, int]]:
        status = self._key_status(group_id)
        if status:
            return status, {}
        group = self.groups.get(group_id)
        if group is None or group.is_state(GroupState.DEAD):
            return int(_E.GROUP_ID_NOT_FOUND), {}
        subscribed: set[str] | None = set()
        if group.protocol_type == CONSUMER_PROTOCOL_TYPE and not group.is_state(GroupState.EMPTY):
            subscribed = group.subscribed_topics()
        elif not group.is_state(GroupState.EMPTY):
            return int(_E.NON_EMPTY_GROUP), {}
        result: dict[TopicPartition, int] = {}
        doomed: list[TopicPartition] = []
        for tp in partitions:
            if not self._partition_exists(tp[0], tp[1]):
                result[tp] = int(_E.UNKNOWN_TOPIC_OR_PARTITION)
            elif subscribed is None or tp[0] in subscribed:
                result[tp] = int(_E.GROUP_SUBSCRIBED_TO_TOPIC)
            else:
                result[tp] = 0
                if tp in group.offsets or group.has_pending_txn_offsets(tp):
                    doomed.append(tp)
        if doomed:
            try:
                appended = await landed(self.store.delete_offsets(group_id, doomed))
            except (LogError, RecordError, KafkaError) as exc:
                return append_error_code(exc), {}  # nothing written: nothing changes
            # the tombstones are in the log: memory follows it. An offset committed after
            # them (a later record) stays; the group may have been replaced meanwhile
            at = appended.base_offset if appended is not None else 1 << 62
            current = self.groups.get(group_id)
            for g in {id(x): x for x in (group, current) if x is not None}.values():
                # as on replay: a tombstone drops what open transactions hold too
                for held in (g.offsets, *g.pending_txn_offsets.values()):
                    for tp in doomed:
                        c = held.get(tp)
                        if c is not None and c.record_offset < at:
                            del held[tp]
            code = await self._replication(appended)
            if code:
                return commit_replication_error(code), {}
        return 0, result

    async def _delete_group(self, group: Group) -> int:
        """DeleteGroups of an Empty classic group: its tombstones first, then memory.

        The group is Dead from the start, so joins and commits meanwhile are answered
        COORDINATOR_NOT_AVAILABLE (retried) instead of changing what is being deleted.
        Commits accepted before it are in the log before the tombstones: they are waited
        for and applied to this group first, so the tombstones cover them and no commit
        lands in memory after the group was forgotten (memory and log would disagree
        until a restart). A write that fails leaves the group Empty as it was, with its
        offsets (those commits' included)."""
        gid = group.group_id
        own = self._ownership(gid)
        was = (group.state, group.previous_state, group.state_timestamp)
        group.transition(GroupState.DEAD)
        self._deleting[gid] = group
        try:
            await self._commits_applied(gid)
            if self.cluster is not None and self._ownership(gid) is not own:
                return int(_E.NOT_COORDINATOR)  # unloaded while its commits landed
            try:
                landing = self.store.delete_group(
                    gid, _offset_keys(group), metadata=gid in self._persisted
                )
                appended = await landed(landing)
            except (LogError, RecordError, KafkaError) as exc:
                if self.groups.get(gid) is group:  # not deleted: serve it again as it was
                    group.state, group.previous_state, group.state_timestamp = was
                return append_error_code(exc)
        finally:
            if self._deleting.get(gid) is group:
                del self._deleting[gid]
        self._forget_group(group)
        code = await self._replication(appended)
        return commit_replication_error(code) if code else 0

    def _remove_group(self, group: Group) -> None:
        """Tombstone an Empty group's offsets and metadata, then forget it (retention:
        nobody waits for the answer; see the module doc)."""
        landing = self.store.delete_group(
            group.group_id,
            _offset_keys(group),
            metadata=group.group_id in self._persisted,
        )
        _log_if_lost(group.group_id, landing)
        self._forget_group(group)

    def _forget_group(self, group: Group) -> None:
        """Drop a group whose tombstones are written (or queued, for retention)."""
        if not group.is_state(GroupState.DEAD):
            group.transition(GroupState.DEAD)
        group.cancel_timers()
        group.offsets.clear()
        for pid in group.pending_txn_offsets:
            gids = self._txn_groups.get(pid)
            if gids is not None:
                gids.discard(group.group_id)
                if not gids:
                    del self._txn_groups[pid]
        group.pending_txn_offsets.clear()
        self._persisted.discard(group.group_id)
        if self.groups.get(group.group_id) is group:
            del self.groups[group.group_id]
        log.info("group %s removed", group.group_id)

    # -- offset retention -------------------------------------------------------------

    async def _expiry_loop(self) -> None:
        retention_ms = self.config.offsets_retention_minutes * 60_000
        interval = min(self.config.offsets_retention_check_interval_ms, retention_ms) / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                self.expire_offsets(_now_ms())
            except Exception:
                log.exception("offset expiry failed")

    def expire_offsets(self, now_ms: int) -> int:
        """Remove offsets past retention (and groups left with nothing); returns how many
        offsets were removed."""
        retention_ms = self.config.offsets_retention_minutes * 60_000
        removed = 0
        for group in list(self.groups.values()):
            if group.is_state(GroupState.DEAD):
                continue
            if self.consumer_group_active(group.group_id):
                continue  # offsets of a consumer group with members stay
            if group.is_state(GroupState.EMPTY):
                base_state = group.state_timestamp if group.protocol_type is not None else -1
                subscribed: set[str] | None = None
            elif group.protocol_type == CONSUMER_PROTOCOL_TYPE and group.is_state(
                GroupState.STABLE
            ):
                subscribed = group.subscribed_topics()
                if subscribed is None:
                    continue
                base_state = -1
            else:
                continue
            expired = []
            for tp, c in group.offsets.items():
                if subscribed is not None and tp[0] in subscribed:
                    continue
                if group.has_pending_txn_offsets(tp):
                    continue
                if c.expire_timestamp >= 0:
                    if now_ms >= c.expire_timestamp:
                        expired.append(tp)
                elif now_ms - max(c.commit_timestamp, base_state) >= retention_ms:
                    expired.append(tp)
            if expired:
                try:
                    _log_if_lost(group.group_id, self.store.delete_offsets(group.group_id, expired))
                except (LogError, RecordError, KafkaError) as exc:
                    log.warning("group %s: cannot expire offsets: %s", group.group_id, exc)
                    continue
                for tp in expired:
                    del group.offsets[tp]
                removed += len(expired)
                log.info("expired %d offsets of group %s", len(expired), group.group_id)
            if group.is_removable():
                try:
                    self._remove_group(group)
                except (LogError, RecordError, KafkaError) as exc:
                    log.warning("group %s: cannot remove: %s", group.group_id, exc)
        if removed:
            self.offsets_expired.inc(removed)
        return removed


def _offset_keys(group: Group) -> list[TopicPartition]:
    """Every partition a deleted group's tombstones cover: its committed offsets and those
    still pending in open transactions (as Kafka's coordinator does). A tombstone also
    drops a pending offset on replay, so a COMMIT marker written after the delete does
    not bring the group's offsets back."""
    keys = set(group.offsets)
    for pending in group.pending_txn_offsets.values():
        keys.update(pending)
    return sorted(keys)


def _log_if_lost(group_id: str, landing: Landing | None) -> None:
    """Retention's tombstones went to a writer thread: say so if they failed there."""
    if not isinstance(landing, asyncio.Future):
        return

    def done(fut: asyncio.Future[Any]) -> None:
        exc = None if fut.cancelled() else fut.exception()
        if exc is not None:
            log.warning("group %s: expired offsets' tombstones not written: %s", group_id, exc)

    landing.add_done_callback(done)
