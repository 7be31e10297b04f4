"""The share coordinator: share groups (KIP-932) and their share-partitions, end to end.

It joins what the pure modules decide (:mod:`.share_group` membership and settings,
:mod:`.share_partition` in-flight records) with the broker: the topic metadata, the log
reads of ShareFetch, the clock of acquisition locks and member sessions, share sessions,
and the durable state in ``__share_group_state`` (:mod:`.share_state_store`), which is
loaded at start and written before an acknowledgement is answered. In a cluster the
group's epochs, members and assignments go to its ``__consumer_offsets`` partition as
Kafka's share group records (:mod:`.share_records`), replayed by whichever broker
coordinates the group next, and group settings to the metadata log.

Share sessions: a member opens one with ShareSessionEpoch 0 naming its partitions, then
each request carries the next epoch and only what changed (partitions added, forgotten,
or with acknowledgements); every fetch reads all the session's partitions. Epoch -1
closes the session and frees what the member still holds.

A member that leaves, or whose session times out (``share.session.timeout.ms``), loses
its records to the others at once; a member that vanishes without leaving loses them when
their acquisition locks expire (``share.record.lock.duration.ms``).

Everything runs on the event loop and state changes never wait in between, so each
request sees and leaves every share-partition consistent.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shazamq.broker.cluster.client import ClientPool
from shazamq.broker.log import LogError
from shazamq.protocol.errors import ErrorCode, KafkaError
from shazamq.protocol.records import RecordError, control_record_of, iter_batches

from . import consumer_settings as cs
from . import share_records as sr
from .internal_topic import landed
from .offsets_store import append_error_code, commit_replication_error
from .share_group import (
    GroupSettingError,
    ShareDefaults,
    ShareGroup,
    ShareMember,
    ShareSettings,
    defaults_as_strings,
    effective,
    validate_settings,
)
from .share_leader import ShareLeaderState
from .share_offsets import ShareOffsets
from .share_partition import AckError, SharePartition, deliverable_batches, finished_in
from .share_persister import SharePersister
from .share_state_coordinator import ShareStateCoordinator
from .share_state_store import (
    SHARE_STATE_TOPIC,
    LoadedShareState,
    ShareStateStore,
    Snapshot,
    config_key,
    encode_config,
    encode_group,
    encode_snapshot,
    group_key,
    snapshot_key,
)

if TYPE_CHECKING:
    from shazamq.broker.app import Broker
    from shazamq.broker.log.partition_log import PartitionLog
    from shazamq.broker.partitions import Partition

    from .internal_topic import Appended, Landing

__all__ = ["AckBatch", "PartitionFetch", "ShareCoordinator", "ShareHeartbeatResult"]

log = logging.getLogger(__name__)
_E = ErrorCode
SHARE_GROUP_TYPE = "share"
_READ_CHUNK = 1 << 20
_MAX_EPOCH = 2**31 - 1

PartKey = tuple[str, uuid.UUID, int]  # group, topic id, partition
TopicPartitionId = tuple[uuid.UUID, int]


def _now_ms() -> int:
    return int(time.monotonic() * 1000)


@dataclass(frozen=True, slots=True)
class ShareHeartbeatResult:
    error: int
    message: str | None = None
    member_id: str | None = None
    member_epoch: int = 0
    heartbeat_interval_ms: int = 0
    assignment: dict[uuid.UUID, list[int]] | None = None


@dataclass(frozen=True, slots=True)
class AckBatch:
    first: int
    last: int
    types: list[int]


@dataclass(slots=True)
class PartitionFetch:
    """What a share fetch or acknowledgement answers for one partition."""

    topic_id: uuid.UUID
    partition: int
    error: int = 0
    message: str | None = None
    ack_error: int = 0
    ack_message: str | None = None
    records: bytes = b""
    acquired: list[tuple[int, int, int]] = field(default_factory=list)
    leader_epoch: int = -1


@dataclass(slots=True)
class _Session:
    epoch: int  # the epoch the next request must carry
    partitions: dict[TopicPartitionId, None] = field(default_factory=dict)  # ordered set


class ShareCoordinator:
    """Every share group of the broker and the state of its share-partitions."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        cfg = broker.config.groups
        self.defaults = ShareDefaults(
            record_lock_duration_ms=cfg.share_record_lock_duration_ms,
            min_record_lock_duration_ms=cfg.share_min_record_lock_duration_ms,
            max_record_lock_duration_ms=cfg.share_max_record_lock_duration_ms,
            delivery_count_limit=cfg.share_delivery_count_limit,
            session_timeout_ms=cfg.share_session_timeout_ms,
            min_session_timeout_ms=cfg.min_session_timeout_ms,
            max_session_timeout_ms=cfg.max_session_timeout_ms,
            heartbeat_interval_ms=cfg.share_heartbeat_interval_ms,
            max_record_locks=cfg.share_partition_max_record_locks,
        )
        self.consumer_defaults = cs.ConsumerDefaults(
            session_timeout_ms=cfg.consumer_session_timeout_ms,
            min_session_timeout_ms=cfg.consumer_min_session_timeout_ms,
            max_session_timeout_ms=cfg.consumer_max_session_timeout_ms,
            heartbeat_interval_ms=cfg.consumer_heartbeat_interval_ms,
            min_heartbeat_interval_ms=cfg.consumer_min_heartbeat_interval_ms,
            max_heartbeat_interval_ms=cfg.consumer_max_heartbeat_interval_ms,
        )
        self.store = ShareStateStore(
            broker.partitions,
            cfg.share_state_topic_num_partitions,
            cfg.offsets_topic_segment_bytes,
        )
        self.groups: dict[str, ShareGroup] = {}
        self.overrides: dict[str, dict[str, str]] = {}
        self.partitions: dict[PartKey, SharePartition] = {}
        self._snapshots: dict[PartKey, Snapshot] = {}  # loaded, not yet asked for
        self._snapshot_epochs: dict[PartKey, int] = {}
        self._sessions: dict[tuple[str, str], _Session] = {}
        self._store_ready = False
        self._store_lock = asyncio.Lock()
        self.loaded = False
        # cluster mode: the share coordinator of the keys placed here, and this broker's
        # side as share-partition leader (None on a single broker)
        self.state_coordinator: ShareStateCoordinator | None = None
        self.leader: ShareLeaderState | None = None
        self._pool: ClientPool | None = None
        self._background: set[asyncio.Task[None]] = set()

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        cluster = self.broker.cluster
        if cluster is not None:
            # Membership follows the group coordinator's placement; share-partitions live
            # on their partition's leader and are persisted with their share coordinator
            # (share_leader.py, share_state_coordinator.py).
            self.state_coordinator = ShareStateCoordinator(cluster, self.store)
            self.state_coordinator.start(list(self.broker.partitions.partitions.values()))
            self._pool = ClientPool(
                self._address_of, client_id="shazamq-share-state", **cluster.peer_client_options()
            )
            persister = SharePersister(
                cluster, self.broker.node_id, self.state_coordinator, self._pool
            )
            self.leader = ShareLeaderState(self, persister)
            cluster.on_partition_role.append(self.leader.on_partition_role)
            # group settings live in the metadata log, as Kafka's GROUP configs: every
            # broker holds them all, whoever coordinates the group
            self.overrides = dict(cluster.state.group_configs)
            cluster.on_group_configs_changed.append(self._group_configs_changed)
            self.loaded = True
            return
        if self.broker.metadata.topics.get(SHARE_STATE_TOPIC) is not None:
            await self._ensure_store()
            loaded = await asyncio.get_running_loop().run_in_executor(None, self.store.load)
            self._install(loaded)
        # else the topic is created when a share group first needs it: brokers that never
        # see a share group carry no __share_group_state
        self.loaded = True
        log.info(
            "share coordinator loaded %d groups and %d share-partitions",
            len(self.groups),
            len(self._snapshots),
        )

    async def _ensure_store(self) -> None:
        """Create ``__share_group_state`` once, on first need; KafkaError if it cannot be."""
        if self._store_ready or self.broker.cluster is not None:
            return
        async with self._store_lock:
            if not self._store_ready:
                await self.store.ensure()
                self._store_ready = True

    def _install(self, loaded: LoadedShareState) -> None:
        for gid, epoch in loaded.groups.items():
            self.groups[gid] = ShareGroup(gid, group_epoch=epoch, assignment_epoch=epoch)
        self.overrides.update(loaded.configs)
        for key, snap in loaded.snapshots.items():
            self._snapshots[key] = snap
            self._snapshot_epochs[key] = snap.snapshot_epoch
            if key[0] not in self.groups:
                self.groups[key[0]] = ShareGroup(key[0])
        if loaded.skipped:
            log.warning("%d share state records were not understood and skipped", loaded.skipped)

    def _address_of(self, node_id: int) -> tuple[str, int] | None:
        cluster = self.broker.cluster
        b = cluster.state.brokers.get(node_id) if cluster is not None else None
        return (b.host, b.port) if b is not None else None

    def _group_configs_changed(self, groups: set[str]) -> None:
        cluster = self.broker.cluster
        assert cluster is not None
        for gid in groups:
            values = cluster.state.group_configs.get(gid)
            if values:
                self.overrides[gid] = values
            else:
                self.overrides.pop(gid, None)
            self._settings_moved(gid)

    def _settings_moved(self, group_id: str) -> None:
        limit = self.settings(group_id).delivery_count_limit
        for key, sp in self.partitions.items():
            if key[0] == group_id:
                sp.delivery_limit = limit

    async def stop(self) -> None:
        cluster = self.broker.cluster
        if cluster is not None and self._group_configs_changed in cluster.on_group_configs_changed:
            cluster.on_group_configs_changed.remove(self._group_configs_changed)
        if self.leader is not None:
            if cluster is not None and self.leader.on_partition_role in cluster.on_partition_role:
                cluster.on_partition_role.remove(self.leader.on_partition_role)
            await self.leader.stop()
        if self.state_coordinator is not None:
            self.state_coordinator.stop()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        for g in self.groups.values():
            for m in g.members.values():
                if m.timer is not None:
                    m.timer.cancel()
                    m.timer = None
        self.loaded = False

    # -- the groups' records in a cluster (__consumer_offsets) -------------------------

    def install_groups(self, loaded: dict[str, dict[tuple[int, str | None], object]]) -> None:
        """Take the share groups of a ``__consumer_offsets`` partition that became led
        here: their epochs, members and assignments as the records left them. Members
        keep their epochs and get a full session from now."""
        by_id = self.broker.metadata.by_id
        now = time.monotonic()
        for gid, recs in loaded.items():
            epoch = recs.get((sr.GROUP_METADATA, None))
            if not isinstance(epoch, int):
                continue  # tombstoned, or only member leftovers
            target = recs.get((sr.TARGET_METADATA, None))
            group = ShareGroup(
                gid,
                group_epoch=epoch,
                assignment_epoch=target if isinstance(target, int) else epoch,
            )
            for (kind, mid), value in recs.items():
                if kind != sr.MEMBER_METADATA or not isinstance(value, sr.ShareMemberValue):
                    continue
                assert mid is not None
                current = recs.get((sr.CURRENT_ASSIGNMENT, mid))
                assigned: dict[str, frozenset[int]] = {}
                member_epoch = 0
                if isinstance(current, sr.ShareAssignmentValue):
                    member_epoch = current.member_epoch
                    for tid, parts in current.assigned.items():
                        info = by_id.get(tid)
                        if info is not None:
                            assigned[info.name] = frozenset(parts)
                    if member_epoch == epoch:
                        # what the last assignment was computed from, so the next
                        # heartbeat does not see a metadata change that did not happen
                        for name, parts in assigned.items():
                            group.subscribed_metadata[name] = len(parts)
                member = ShareMember(
                    mid,
                    member_epoch=member_epoch,
                    rack_id=value.rack_id,
                    client_id=value.client_id,
                    client_host=value.client_host,
                    subscribed_topic_names=value.subscribed_topic_names,
                    assigned=assigned,
                    last_heartbeat=now,
                )
                group.members[mid] = member
            old = self.groups.get(gid)
            if old is not None:
                self._drop_group_timers(old)
            self.groups[gid] = group
            session_ms = self.settings(gid).session_timeout_ms
            for member in group.members.values():
                self._schedule(group, member, session_ms)

    def unload_groups(self, led_elsewhere: Callable[[str], bool]) -> None:
        """Forget the share groups another broker coordinates now."""
        for gid in [g for g in self.groups if led_elsewhere(g)]:
            self._drop_group_timers(self.groups.pop(gid))

    @staticmethod
    def _drop_group_timers(group: ShareGroup) -> None:
        for m in group.members.values():
            if m.timer is not None:
                m.timer.cancel()
                m.timer = None

    def _group_records(self, group: ShareGroup) -> list[tuple[bytes, bytes | None]]:
        gid = group.group_id
        return [
            (
                sr.encode_share_key(sr.GROUP_METADATA, gid),
                sr.encode_share_value(sr.GROUP_METADATA, group.group_epoch),
            ),
            (
                sr.encode_share_key(sr.TARGET_METADATA, gid),
                sr.encode_share_value(sr.TARGET_METADATA, group.assignment_epoch),
            ),
        ]

    def _member_records(
        self, group_id: str, member: ShareMember, previous_epoch: int
    ) -> list[tuple[bytes, bytes | None]]:
        mid = member.member_id
        assigned = self._ids(member.assigned)
        meta = sr.ShareMemberValue(
            member.rack_id, member.client_id, member.client_host, member.subscribed_topic_names
        )
        current = sr.ShareAssignmentValue(member.member_epoch, previous_epoch, 0, assigned)
        return [
            (
                sr.encode_share_key(sr.MEMBER_METADATA, group_id, mid),
                sr.encode_share_value(sr.MEMBER_METADATA, meta),
            ),
            (
                sr.encode_share_key(sr.TARGET_MEMBER, group_id, mid),
                sr.encode_share_value(sr.TARGET_MEMBER, assigned),
            ),
            (
                sr.encode_share_key(sr.CURRENT_ASSIGNMENT, group_id, mid),
                sr.encode_share_value(sr.CURRENT_ASSIGNMENT, current),
            ),
        ]

    @staticmethod
    def _member_tombstones(group_id: str, member_id: str) -> list[tuple[bytes, bytes | None]]:
        return [
            (sr.encode_share_key(kind, group_id, member_id), None)
            for kind in (sr.CURRENT_ASSIGNMENT, sr.TARGET_MEMBER, sr.MEMBER_METADATA)
        ]

    def _offsets_append(
        self, group_id: str, records: list[tuple[bytes, bytes | None]]
    ) -> Appended | None:
        """Append to the group's ``__consumer_offsets`` partition; KafkaError as a group
        coordinator answers a failed append."""
        groups = self.broker.groups
        try:
            return groups.store.topic.append(groups.partition_for(group_id), records)
        except (LogError, RecordError, KafkaError) as exc:
            code = ErrorCode(append_error_code(exc))
            raise KafkaError(code, f"cannot write share group {group_id}: {exc}") from None

    async def _offsets_write(
        self, group_id: str, records: list[tuple[bytes, bytes | None]], own: object
    ) -> None:
        """:meth:`_offsets_append`, then wait for the in-sync replicas; KafkaError if they
        do not have it, or the group moved to another coordinator meanwhile."""
        groups = self.broker.groups
        code = await groups._replication(self._offsets_append(group_id, records))
        if code:
            raise KafkaError(
                ErrorCode(commit_replication_error(code)),
                f"share group {group_id}: the write did not reach the in-sync replicas",
            )
        if groups._ownership(group_id) is not own:
            raise KafkaError(_E.NOT_COORDINATOR, f"share group {group_id} moved meanwhile")

    def _forget_settings_soon(self, group_id: str) -> None:
        """A deleted group's settings go too, as on a single broker (metadata log)."""
        cluster = self.broker.cluster
        assert cluster is not None

        async def forget() -> None:
            try:
                await cluster.set_group_configs(group_id, {})
            except KafkaError as exc:
                log.warning("share group %s: settings not removed: %s", group_id, exc.message)

        task = asyncio.get_running_loop().create_task(forget())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- settings ---------------------------------------------------------------------

    def settings(self, group_id: str) -> ShareSettings:
        return effective(self.defaults, self.overrides.get(group_id, {}))

    def describe_settings(self, group_id: str) -> list[tuple[str, str, bool]]:
        """(name, value, is default) of every setting of the group: its consumer group
        settings and its share group settings, one set per group as in Kafka."""
        own = self.overrides.get(group_id, {})
        defaults = {
            **cs.defaults_as_strings(self.consumer_defaults),
            **defaults_as_strings(self.defaults),
        }
        return [
            (name, own.get(name, default), name not in own)
            for name, default in sorted(defaults.items())
        ]

    def consumer_overrides(self, group_id: str) -> dict[str, str]:
        """The group's ``consumer.*`` overrides (read by the consumer group coordinator)."""
        own = self.overrides.get(group_id)
        if not own:
            return {}
        return {k: v for k, v in own.items() if cs.is_consumer_setting(k)}

    async def alter_settings(
        self, group_id: str, changes: list[tuple[str, str | None]], validate_only: bool
    ) -> None:
        """Apply SET (value) and DELETE (None) operations; KafkaError INVALID_CONFIG names
        the bad setting."""
        if not group_id:
            raise KafkaError(_E.INVALID_GROUP_ID, "the group id is empty")
        new = dict(self.overrides.get(group_id, {}))
        for name, value in changes:
            if value is None:
                new.pop(name, None)
                if name not in defaults_as_strings(self.defaults) and not cs.is_consumer_setting(
                    name
                ):
                    raise KafkaError(_E.INVALID_CONFIG, f"{name} is not a group setting")
            else:
                new[name] = value
        known = (*cs.SETTING_NAMES, *defaults_as_strings(self.defaults))
        for name in new:
            if name not in known:
                raise KafkaError(
                    _E.INVALID_CONFIG,
                    f"{name} is not a group setting; known: {', '.join(sorted(known))}",
                )
        consumer = {k: v for k, v in new.items() if cs.is_consumer_setting(k)}
        share = {k: v for k, v in new.items() if not cs.is_consumer_setting(k)}
        try:
            new = {
                **cs.validate(self.consumer_defaults, consumer),
                **validate_settings(self.defaults, share),
            }
        except (GroupSettingError, cs.ConsumerSettingError) as exc:
            raise KafkaError(_E.INVALID_CONFIG, str(exc)) from None
        if validate_only:
            return
        cluster = self.broker.cluster
        if cluster is not None:
            await cluster.set_group_configs(group_id, new)
            self._group_configs_changed({group_id})
            return
        await self._ensure_store()
        await self._write(group_id, [(config_key(group_id), encode_config(new) if new else None)])
        if new:
            self.overrides[group_id] = new
        else:
            self.overrides.pop(group_id, None)
        self._settings_moved(group_id)

    # -- persistence ------------------------------------------------------------------

    def _write_or_raise(
        self, group_id: str, records: list[tuple[bytes, bytes | None]]
    ) -> Landing | None:
        """Queue the records (single broker); KafkaError if they cannot be. Only for
        callers that answer nobody on the write (see :meth:`_write`)."""
        if self.broker.cluster is not None:
            # in a cluster the window is the share coordinators', the group's records are
            # in __consumer_offsets and its settings in the metadata log
            return None
        try:
            return self.store.write(group_id, records)
        except (LogError, RecordError, KafkaError) as exc:
            raise _write_error(exc) from None

    async def _write(self, group_id: str, records: list[tuple[bytes, bytes | None]]) -> None:
        """Write the records and return once they are in the log (a write that went to a
        writer thread included); KafkaError if it failed. For answers that promise the
        state is stored."""
        landing = self._write_or_raise(group_id, records)
        try:
            await landed(landing)
        except (LogError, RecordError, KafkaError) as exc:
            raise _write_error(exc) from None

    def _snapshot_records(self, keys: Iterable[PartKey]) -> list[tuple[bytes, bytes | None]]:
        records: list[tuple[bytes, bytes | None]] = []
        for key in keys:
            sp = self.partitions.get(key)
            if sp is None or not sp.dirty:
                continue
            start, batches = sp.snapshot()
            epoch = self._snapshot_epochs.get(key, -1) + 1
            self._snapshot_epochs[key] = epoch
            snap = Snapshot(epoch, 0, start, tuple(batches))
            records.append((snapshot_key(*key), encode_snapshot(snap)))
        return records

    def _persist(self, group_id: str, keys: Iterable[PartKey]) -> int:
        """Queue the snapshots of the changed share-partitions; 0 or the error code. For
        changes nobody is answered on (acquisitions, releases when a member or session
        goes): after a crash before they land, the records are delivered again, which
        share groups allow. In a cluster the writes go to the share coordinators in the
        background. Acknowledgements use :meth:`_persist_now`."""
        if self.leader is not None:
            self.leader.write_soon(keys)
            return 0
        records = self._snapshot_records(keys)
        if not records:
            return 0
        try:
            landing = self._write_or_raise(group_id, records)
        except KafkaError as exc:
            log.warning("share group %s: %s", group_id, exc.message)
            return int(exc.code)
        if isinstance(landing, asyncio.Future):
            landing.add_done_callback(lambda f: _log_lost(group_id, f))
        return 0

    async def _persist_now(self, group_id: str, keys: Iterable[PartKey]) -> int:
        """Write the snapshots and return once they are stored (on a single broker: in
        the log, a write that went to a writer thread included; in a cluster: with the
        share coordinators); 0 or the error code."""
        if self.leader is not None:
            return await self.leader.write(keys)
        records = self._snapshot_records(keys)
        if not records:
            return 0
        try:
            await self._write(group_id, records)
        except KafkaError as exc:
            log.warning("share group %s: %s", group_id, exc.message)
            return int(exc.code)
        return 0

    async def _load(
        self, group_id: str, tps: Iterable[TopicPartitionId]
    ) -> dict[TopicPartitionId, tuple[int, str]]:
        """In a cluster, read the state of the share-partitions led here that are not
        known yet; those that could not be read, with their error."""
        if self.leader is None:
            return {}
        return await self.leader.load(group_id, tps)

    # -- membership -------------------------------------------------------------------

    def _key_status(self, group_id: str) -> int:
        if not self.loaded:
            return int(_E.COORDINATOR_LOAD_IN_PROGRESS)
        return self.broker.groups._key_status(group_id)

    def _other_kind(self, group_id: str) -> bool:
        g = self.broker.groups
        classic = g.groups.get(group_id)
        return (classic is not None and bool(classic.members or classic.offsets)) or (
            group_id in g.consumer_groups
        )

    def _topic_counts(self) -> dict[str, int]:
        return {n: t.partitions for n, t in self.broker.metadata.topics.items() if not t.internal}

    def _ids(self, assignment: dict[str, frozenset[int]]) -> dict[uuid.UUID, list[int]]:
        topics = self.broker.metadata.topics
        out = {}
        for name, parts in sorted(assignment.items()):
            info = topics.get(name)
            if info is not None and parts:
                out[info.uuid] = sorted(parts)
        return out

    async def heartbeat(
        self,
        group_id: str,
        member_id: str,
        member_epoch: int,
        rack_id: str | None,
        subscribed: list[str] | None,
        client_id: str,
        client_host: str,
        version: int,
    ) -> ShareHeartbeatResult:
        if not group_id:
            return ShareHeartbeatResult(int(_E.INVALID_REQUEST), "GroupId can't be empty.")
        if member_epoch < -1:
            return ShareHeartbeatResult(
                int(_E.INVALID_REQUEST), f"MemberEpoch {member_epoch} is invalid."
            )
        if not member_id and (member_epoch != 0 or version >= 1):
            return ShareHeartbeatResult(int(_E.INVALID_REQUEST), "MemberId can't be empty.")
        if member_epoch == 0 and subscribed is None:
            return ShareHeartbeatResult(
                int(_E.INVALID_REQUEST), "SubscribedTopicNames must be set in first request."
            )
        status = self._key_status(group_id)
        if status:
            return ShareHeartbeatResult(status)
        if self._other_kind(group_id):
            return ShareHeartbeatResult(
                int(_E.GROUP_ID_NOT_FOUND), f"Group {group_id} is not a share group."
            )
        try:
            await self._ensure_store()
        except KafkaError as exc:
            return ShareHeartbeatResult(int(_E.COORDINATOR_NOT_AVAILABLE), exc.message)
        group = self.groups.get(group_id)
        records: list[tuple[bytes, bytes | None]] = []
        if member_epoch == -1:
            key = (group_id, member_id)
            member = group.members.get(member_id) if group is not None else None
            if group is None or member is None:
                return ShareHeartbeatResult(
                    int(_E.UNKNOWN_MEMBER_ID),
                    f"Member {member_id} is not a member of group {group_id}.",
                )
            # what it holds stays locked until its share session closes (a closing client
            # leaves the group first, then sends its last acknowledgements) or the locks end
            self._remove_member(group, member, release=False)
            # a client that left and never closes its session: closed for it once its
            # locks would have ended anyway, so sessions do not pile up
            grace = self.settings(group_id).record_lock_duration_ms / 1000
            asyncio.get_running_loop().call_later(
                grace, self._close_if_gone, group_id, member_id, self._sessions.get(key)
            )
            return ShareHeartbeatResult(0, None, member_id, -1, 0, None)
        settings = self.settings(group_id)
        bump = False
        joined = member_epoch == 0
        if group is None:
            group = self.groups[group_id] = ShareGroup(group_id)
        if joined:
            member_id = member_id or uuid.uuid4().hex
            old = group.members.get(member_id)
            if old is not None:  # rejoining from scratch: what it held goes back
                self._remove_member(group, old, bump=False, release=True)
            member = ShareMember(
                member_id,
                rack_id=rack_id,
                client_id=client_id,
                client_host=client_host,
                subscribed_topic_names=tuple(subscribed or ()),
            )
            group.members[member_id] = member
            bump = True
        else:
            member = group.members.get(member_id)  # type: ignore[assignment]
            if member is None:
                return ShareHeartbeatResult(
                    int(_E.UNKNOWN_MEMBER_ID),
                    f"Member {member_id} is not a member of group {group_id}.",
                )
            if member_epoch != member.member_epoch:
                return ShareHeartbeatResult(
                    int(_E.FENCED_MEMBER_EPOCH),
                    f"The member epoch {member_epoch} is fenced (current {member.member_epoch}).",
                )
            if subscribed is not None and tuple(subscribed) != member.subscribed_topic_names:
                member.subscribed_topic_names = tuple(subscribed)
                bump = True
            if rack_id is not None:
                member.rack_id = rack_id
        member.last_heartbeat = time.monotonic()
        before = group.group_epoch
        previous_epoch = member.member_epoch
        group.refresh(self._topic_counts())
        if bump and group.group_epoch == before:
            group.group_epoch += 1
        if group.group_epoch != before:
            records.append((group_key(group_id), encode_group(group.group_epoch)))
        changed = group.reconcile(member)
        try:
            if self.broker.cluster is not None:
                own = self.broker.groups._ownership(group_id)
                cluster_records = self._group_records(group) if records else []
                if joined or changed or member.member_epoch != previous_epoch:
                    cluster_records += self._member_records(group_id, member, previous_epoch)
                if cluster_records:
                    await self._offsets_write(group_id, cluster_records, own)
            elif records:
                await self._write(group_id, records)
        except KafkaError as exc:
            return ShareHeartbeatResult(int(exc.code), exc.message)
        self._schedule(group, member, settings.session_timeout_ms)
        return ShareHeartbeatResult(
            0,
            None,
            member.member_id,
            member.member_epoch,
            settings.heartbeat_interval_ms,
            self._ids(member.assigned) if (joined or changed) else None,
        )

    def _schedule(self, group: ShareGroup, member: ShareMember, session_ms: int) -> None:
        if member.timer is not None:
            member.timer.cancel()
        member.timer = asyncio.get_running_loop().call_later(
            session_ms / 1000, self._on_timer, group, member
        )

    def _on_timer(self, group: ShareGroup, member: ShareMember) -> None:
        member.timer = None
        if (
            self.groups.get(group.group_id) is not group
            or group.members.get(member.member_id) is not member
        ):
            return
        session_ms = self.settings(group.group_id).session_timeout_ms
        due = member.last_heartbeat + session_ms / 1000
        if time.monotonic() < due:
            member.timer = asyncio.get_running_loop().call_later(
                due - time.monotonic(), self._on_timer, group, member
            )
            return
        log.info("share group %s: member %s session timed out", group.group_id, member.member_id)
        self._remove_member(group, member, release=True)
        self.broker.groups.member_expirations.inc()

    def _remove_member(
        self, group: ShareGroup, member: ShareMember, *, release: bool, bump: bool = True
    ) -> None:
        if member.timer is not None:
            member.timer.cancel()
            member.timer = None
        group.members.pop(member.member_id, None)
        if release:  # fenced or dead: its share session and records go too
            self._sessions.pop((group.group_id, member.member_id), None)
            self._release_member(group.group_id, member.member_id)
        if bump:
            group.group_epoch += 1
        try:
            if self.broker.cluster is not None:
                # appended now; a leave is answered without waiting for the replicas (lost
                # with the coordinator, the member ends by its session timeout instead)
                records = self._member_tombstones(group.group_id, member.member_id)
                self._offsets_append(
                    group.group_id, records + (self._group_records(group) if bump else [])
                )
            elif bump:
                self._write_or_raise(
                    group.group_id, [(group_key(group.group_id), encode_group(group.group_epoch))]
                )
        except KafkaError as exc:
            log.warning("share group %s: %s", group.group_id, exc.message)

    def _release_member(self, group_id: str, member_id: str) -> None:
        touched = []
        for key, sp in self.partitions.items():
            if key[0] == group_id and sp.release_member(member_id):
                touched.append(key)
                self._wake(key)
        self._persist(group_id, touched)

    def _wake(self, key: PartKey) -> None:
        info = self.broker.metadata.by_id.get(key[1])
        if info is not None:
            p = self.broker.partitions.get(info.name, key[2])
            if p is not None:
                p.notify()

    # -- share-partitions -------------------------------------------------------------

    def _share_partition(
        self, group_id: str, topic_id: uuid.UUID, p: Partition, settings: ShareSettings
    ) -> SharePartition:
        key = (group_id, topic_id, p.index)
        sp = self.partitions.get(key)
        if sp is None:
            snap = self._snapshots.pop(key, None)
            if snap is not None:
                sp = SharePartition.restore(
                    snap.start_offset,
                    snap.batches,
                    delivery_limit=settings.delivery_count_limit,
                    max_in_flight=self.defaults.max_record_locks,
                )
            else:
                plog = p.log
                upper = plog.last_stable_offset if settings.read_committed else plog.high_watermark
                start = plog.log_start_offset if settings.earliest else upper
                sp = SharePartition(
                    start,
                    delivery_limit=settings.delivery_count_limit,
                    max_in_flight=self.defaults.max_record_locks,
                )
                sp.dirty = True  # where it starts is state too (latest must not move)
            self.partitions[key] = sp
            if self.leader is not None:
                self.leader.fresh.discard(key)
        if sp.start < p.log.log_start_offset:
            sp.move_start(p.log.log_start_offset)
        return sp

    def _resolve(self, topic_id: uuid.UUID, index: int) -> tuple[Partition | None, int, str | None]:
        info = self.broker.metadata.by_id.get(topic_id)
        if info is None:
            return None, int(_E.UNKNOWN_TOPIC_ID), None
        p = self.broker.partitions.get(info.name, index)
        if p is None:
            return None, int(_E.UNKNOWN_TOPIC_OR_PARTITION), None
        code = p.epoch_error(-1)
        if code:
            return None, int(code), None
        return p, 0, None

    def _read(
        self,
        group_id: str,
        member_id: str,
        topic_id: uuid.UUID,
        p: Partition,
        settings: ShareSettings,
        max_records: int,
        max_bytes: int,
    ) -> tuple[bytes, list[tuple[int, int, int]]]:
        """Acquire records of one partition for the member: the batches' bytes and the
        acquired runs."""
        if self.leader is not None and not self.leader.ready((group_id, topic_id, p.index)):
            return b"", []  # its state is still being read from its share coordinator
        sp = self._share_partition(group_id, topic_id, p, settings)
        plog = p.log
        upper = plog.last_stable_offset if settings.read_committed else plog.high_watermark
        now = _now_ms()
        sp.expire(now)
        pos = sp.read_from()
        if pos >= upper or max_records <= 0:
            return b"", []
        limit = max(min(max_bytes, _READ_CHUNK), 1)
        data, acquired = self._acquire_at(
            member_id, sp, plog, pos, upper, limit, settings, now, max_records
        )
        if not acquired and pos < sp.end < upper:
            # the redeliverable records were not in this read (large records, a full window
            # of others' locks in between): what was never delivered comes next
            data, acquired = self._acquire_at(
                member_id, sp, plog, sp.end, upper, limit, settings, now, max_records
            )
        return data, acquired

    def _acquire_at(
        self,
        member_id: str,
        sp: SharePartition,
        plog: PartitionLog,
        pos: int,
        upper: int,
        limit: int,
        settings: ShareSettings,
        now: int,
        max_records: int,
    ) -> tuple[bytes, list[tuple[int, int, int]]]:
        data = plog.read(pos, limit, upper_bound=upper)
        if not data:
            return b"", []
        view = memoryview(data)
        found = []
        for at, h in iter_batches(view, allow_partial=True):
            kind = None
            if h.is_control:
                try:
                    kind = control_record_of(view[at : at + h.size]).kind
                except (RecordError, ValueError):
                    kind = None
            found.append((at, h, kind))
        aborted = plog.aborted_transactions(pos, upper) if settings.read_committed else None
        batches = deliverable_batches(
            [
                (h.base_offset, h.last_offset, h.is_control, h.is_transactional, h.producer_id, k)
                for _at, h, k in found
            ],
            aborted,
        )
        acquired = sp.acquire(
            member_id,
            batches,
            now=now,
            lock_ms=settings.record_lock_duration_ms,
            max_records=max_records,
        )
        if not acquired:
            return b"", []
        out = bytearray()
        runs = iter(acquired)
        run = next(runs, None)
        for at, h, _k in found:
            while run is not None and run[1] < h.base_offset:
                run = next(runs, None)
            if run is None:
                break
            if run[0] <= h.last_offset and not h.is_control:
                out += view[at : at + h.size]
        return bytes(out), acquired

    def _acknowledge(
        self,
        group_id: str,
        member_id: str,
        topic_id: uuid.UUID,
        index: int,
        batches: list[AckBatch],
        version: int,
        touched: list[PartKey],
    ) -> tuple[int, str | None]:
        p, code, message = self._resolve(topic_id, index)
        if p is None:
            return code, message
        if self.leader is not None and not self.leader.ready((group_id, topic_id, index)):
            return int(_E.COORDINATOR_NOT_AVAILABLE), "the share-partition state is not read yet"
        settings = self.settings(group_id)
        sp = self._share_partition(group_id, topic_id, p, settings)
        now = _now_ms()
        prev_last = -1
        for b in batches:
            if b.first <= prev_last:
                return int(_E.INVALID_REQUEST), "acknowledgement batches overlap or are unordered"
            prev_last = b.last
            if version < 2 and 4 in b.types:
                return int(_E.INVALID_REQUEST), "acknowledge type 4 (renew) needs version 2"
        released = False
        for b in batches:
            try:
                sp.acknowledge(
                    member_id,
                    b.first,
                    b.last,
                    b.types,
                    now=now,
                    lock_ms=settings.record_lock_duration_ms,
                )
            except AckError as exc:
                touched.append((group_id, topic_id, index))
                code = _E.INVALID_REQUEST if exc.bad_request else _E.INVALID_RECORD_STATE
                return int(code), str(exc)
            released = released or 2 in b.types
        touched.append((group_id, topic_id, index))
        if released:
            p.notify()
        return 0, None

    # -- share sessions ---------------------------------------------------------------

    def _member_error(
        self, group_id: str | None, member_id: str | None, opening: bool
    ) -> tuple[int, str | None]:
        """The error of a share request; a session is opened by a member of the group
        only, an open one serves its member until it closes."""
        if not group_id:
            return int(_E.INVALID_REQUEST), "GroupId can't be empty."
        if not member_id:
            return int(_E.INVALID_REQUEST), "MemberId can't be empty."
        if not self.loaded:
            return int(_E.COORDINATOR_LOAD_IN_PROGRESS), None
        if not opening:
            return 0, None
        if self.broker.cluster is not None and not self.broker.groups.coordinates(group_id):
            # the partition leader serves the session; the membership lives with the
            # group's coordinator, another broker
            return 0, None
        g = self.groups.get(group_id)
        if g is None or member_id not in g.members:
            return int(_E.UNKNOWN_MEMBER_ID), f"Member {member_id} is not a member of {group_id}."
        return 0, None

    def _session(
        self,
        group_id: str,
        member_id: str,
        epoch: int,
        *,
        fetch: bool,
        connection: dict[tuple[str, str], _Session] | None = None,
    ) -> tuple[_Session | None, int, str | None]:
        key = (group_id, member_id)
        if epoch == 0:
            if not fetch:
                return None, int(_E.INVALID_SHARE_SESSION_EPOCH), "a share session opens by fetch"
            s = self._sessions[key] = _Session(1)
            if connection is not None:
                # as in Kafka, a share session lives on its connection: when that closes,
                # what the member holds goes back to the group at once
                connection[key] = s
            return s, 0, None
        s = self._sessions.get(key)
        if s is None:
            return None, int(_E.SHARE_SESSION_NOT_FOUND), f"no share session of member {member_id}"
        if epoch == -1:
            return s, 0, None
        if epoch != s.epoch:
            return (
                None,
                int(_E.INVALID_SHARE_SESSION_EPOCH),
                (f"share session epoch {epoch}, expected {s.epoch}"),
            )
        s.epoch = 1 if s.epoch >= _MAX_EPOCH else s.epoch + 1
        return s, 0, None

    def connection_closed(self, sessions: dict[tuple[str, str], object]) -> None:
        """Close the share sessions a closed connection opened, unless reopened since."""
        for (group_id, member_id), session in sessions.items():
            if self._sessions.get((group_id, member_id)) is session:
                self._close_session(group_id, member_id)
        sessions.clear()

    def _close_if_gone(self, group_id: str, member_id: str, session: _Session | None) -> None:
        g = self.groups.get(group_id)
        rejoined = g is not None and member_id in g.members
        if (
            session is not None
            and self._sessions.get((group_id, member_id)) is session
            and not rejoined
        ):
            self._close_session(group_id, member_id)

    def _close_session(self, group_id: str, member_id: str) -> None:
        s = self._sessions.pop((group_id, member_id), None)
        if s is None:
            return
        touched = []
        for tid, index in s.partitions:
            key = (group_id, tid, index)
            sp = self.partitions.get(key)
            if sp is not None and sp.release_member(member_id):
                touched.append(key)
                self._wake(key)
        self._persist(group_id, touched)

    async def share_fetch(
        self,
        group_id: str | None,
        member_id: str | None,
        session_epoch: int,
        max_wait_ms: int,
        min_bytes: int,
        max_bytes: int,
        max_records: int,
        requested: list[tuple[uuid.UUID, int, list[AckBatch]]],
        forgotten: list[tuple[uuid.UUID, int]],
        version: int,
        received_at: float,
        connection: dict[tuple[str, str], _Session] | None = None,
    ) -> tuple[int, str | None, list[PartitionFetch]]:
        """(top-level error, message, per-partition answers) of a ShareFetch;
        ``connection`` gathers the sessions the client's connection opened."""
        code, message = self._member_error(group_id, member_id, session_epoch == 0)
        if code:
            return code, message, []
        assert group_id and member_id
        if session_epoch == 0 and any(acks for _t, _p, acks in requested):
            return int(_E.INVALID_REQUEST), "acknowledgements in a request opening a session", []
        session, code, message = self._session(
            group_id, member_id, session_epoch, fetch=True, connection=connection
        )
        if session is None:
            return code, message, []
        if self.leader is not None and session_epoch == 0:
            await self.leader.revalidate(group_id, [(tid, index) for tid, index, _a in requested])
        unread = await self._load(
            group_id, [*((tid, index) for tid, index, _a in requested), *session.partitions]
        )
        out: dict[TopicPartitionId, PartitionFetch] = {}
        touched: list[PartKey] = []
        for tid, index, acks in requested:
            pf = out[(tid, index)] = PartitionFetch(tid, index)
            failed = unread.get((tid, index))
            if failed is not None:
                pf.error, pf.message = failed
                pf.ack_error = failed[0] if acks else 0
            elif acks:
                pf.ack_error, pf.ack_message = self._acknowledge(
                    group_id, member_id, tid, index, acks, version, touched
                )
        write_error = await self._persist_now(group_id, touched)
        if write_error:
            for pf in out.values():
                if not pf.ack_error:
                    pf.ack_error = write_error
        if session_epoch == -1:
            self._close_session(group_id, member_id)
            return 0, None, list(out.values())
        for tid, index, _acks in requested:
            session.partitions[(tid, index)] = None
        for tp in forgotten:
            session.partitions.pop(tp, None)
            out.pop(tp, None)
        if max_records <= 0:
            return 0, None, list(out.values())
        deadline = received_at + max(max_wait_ms, 0) / 1000
        while True:
            if self.leader is not None:  # leadership may have come here meanwhile
                unread.update(await self._load(group_id, list(session.partitions)))
            got, waits, next_lock = self._fetch_round(
                group_id, member_id, session, out, max_records, max_bytes
            )
            remaining = deadline - time.monotonic()
            if got or remaining <= 0 or not waits:
                break
            if next_lock is not None:
                remaining = min(remaining, max(next_lock / 1000 - time.monotonic(), 0.001))
            await self.broker.partitions.wait_for_data(waits, remaining)
            if (group_id, member_id) not in self._sessions:
                break  # the member left or the session was replaced meanwhile
        for tp, (code, message) in unread.items():
            if tp in session.partitions and not (
                self.leader and self.leader.ready((group_id, *tp))
            ):
                pf = out.setdefault(tp, PartitionFetch(*tp))
                if not pf.error:
                    pf.error, pf.message = code, message
        return 0, None, list(out.values())

    def _fetch_round(
        self,
        group_id: str,
        member_id: str,
        session: _Session,
        out: dict[TopicPartitionId, PartitionFetch],
        max_records: int,
        max_bytes: int,
    ) -> tuple[int, list[Partition], int | None]:
        settings = self.settings(group_id)
        got = 0
        budget = max_bytes if max_bytes > 0 else _READ_CHUNK
        waits: list[Partition] = []
        next_lock: int | None = None
        order = list(session.partitions)
        if len(order) > 1:  # start where the previous round stopped, so none starves
            session.partitions[order[0]] = None
            del session.partitions[order[0]]
            session.partitions[order[0]] = None
        for tid, index in order:
            p, code, message = self._resolve(tid, index)
            if p is None:
                pf = out.setdefault((tid, index), PartitionFetch(tid, index))
                pf.error, pf.message = code, message
                continue
            if got >= max_records or budget <= 0:
                break
            try:
                data, acquired = self._read(
                    group_id, member_id, tid, p, settings, max_records - got, budget
                )
            except (LogError, RecordError) as exc:
                pf = out.setdefault((tid, index), PartitionFetch(tid, index))
                pf.error, pf.message = int(exc.error_code), str(exc)
                continue
            if acquired:
                pf = out.setdefault((tid, index), PartitionFetch(tid, index))
                pf.records += data
                pf.acquired.extend(acquired)
                pf.leader_epoch = p.leader_epoch
                got += sum(last - first + 1 for first, last, _dc in acquired)
                budget -= len(data)
            else:
                waits.append(p)
                sp = self.partitions.get((group_id, tid, index))
                if sp is not None:
                    d = sp.next_deadline()
                    if d is not None and (next_lock is None or d < next_lock):
                        next_lock = d
        # archived-on-the-way records (markers, aborted) and moved starts are state too
        self._persist(group_id, [(group_id, tid, index) for tid, index in order])
        return got, waits, next_lock

    async def share_acknowledge(
        self,
        group_id: str | None,
        member_id: str | None,
        session_epoch: int,
        requested: list[tuple[uuid.UUID, int, list[AckBatch]]],
        version: int,
    ) -> tuple[int, str | None, list[PartitionFetch]]:
        code, message = self._member_error(group_id, member_id, False)
        if code:
            return code, message, []
        assert group_id and member_id
        session, code, message = self._session(group_id, member_id, session_epoch, fetch=False)
        if session is None:
            return code, message, []
        unread = await self._load(group_id, [(tid, index) for tid, index, _a in requested])
        out = []
        touched: list[PartKey] = []
        for tid, index, acks in requested:
            pf = PartitionFetch(tid, index)
            failed = unread.get((tid, index))
            if failed is not None:
                pf.error, pf.message = failed
            else:
                pf.error, pf.message = self._acknowledge(
                    group_id, member_id, tid, index, acks, version, touched
                )
            out.append(pf)
        write_error = await self._persist_now(group_id, touched)
        if write_error:
            for pf in out:
                if not pf.error:
                    pf.error = write_error
        if session_epoch == -1:
            self._close_session(group_id, member_id)
        return 0, None, out

    # -- administration ---------------------------------------------------------------

    def listings(self, states: set[str] | None) -> list[tuple[str, str]]:
        """(group id, state) of every share group, filtered by state (lower case)."""
        return [
            (gid, g.state)
            for gid, g in sorted(self.groups.items())
            if states is None or g.state.lower() in states
        ]

    def is_share_group(self, group_id: str) -> bool:
        return group_id in self.groups

    async def delete_group(self, group_id: str) -> int | None:
        """None if no share group; else NON_EMPTY_GROUP, the write's error (nothing
        forgotten), or 0 once its state is tombstoned in the log."""
        g = self.groups.get(group_id)
        if g is None:
            return None
        if g.members:
            return int(_E.NON_EMPTY_GROUP)
        keys = {k for k in self.partitions if k[0] == group_id}
        keys.update(k for k in self._snapshots if k[0] == group_id)
        keys.update(k for k in self._snapshot_epochs if k[0] == group_id)
        records: list[tuple[bytes, bytes | None]] = [(snapshot_key(*k), None) for k in keys]
        records.append((group_key(group_id), None))
        if group_id in self.overrides:
            records.append((config_key(group_id), None))
        try:
            if self.broker.cluster is not None:
                self._offsets_append(
                    group_id,
                    [
                        (sr.encode_share_key(kind, group_id), None)
                        for kind in (sr.TARGET_METADATA, sr.GROUP_METADATA)
                    ],
                )
                if group_id in self.overrides:
                    self._forget_settings_soon(group_id)
            else:
                await self._write(group_id, records)
        except KafkaError as exc:
            return int(exc.code)
        if self.groups.get(group_id) is not g or g.members:
            # joined (or replaced) while the tombstones were written: its own records
            # follow them in the log, so it lives on there and here
            return int(_E.NON_EMPTY_GROUP)
        if self.leader is not None:  # the states are with their share coordinators
            self.leader.delete_soon(ShareOffsets(self)._candidates(group_id) | keys)
        for k in keys:
            self.partitions.pop(k, None)
            self._snapshots.pop(k, None)
            self._snapshot_epochs.pop(k, None)
        self.overrides.pop(group_id, None)
        del self.groups[group_id]
        return 0

    def describe(self, group_id: str) -> tuple[int, str | None, ShareGroup | None]:
        status = self._key_status(group_id)
        if status:
            return status, None, None
        g = self.groups.get(group_id)
        if g is None:
            message = f"Group {group_id} not found."
            if self._other_kind(group_id):
                message = f"Group {group_id} is not a share group."
            return int(_E.GROUP_ID_NOT_FOUND), message, None
        return 0, None, g

    def start_offsets(self, group_id: str) -> dict[tuple[str, int], int]:
        """SPSO of every share-partition of the group, by topic name (for describing)."""
        out = {}
        by_id = self.broker.metadata.by_id
        for (gid, tid, index), sp in self.partitions.items():
            info = by_id.get(tid)
            if gid == group_id and info is not None:
                out[(info.name, index)] = sp.start
        for (gid, tid, index), snap in self._snapshots.items():
            info = by_id.get(tid)
            if gid == group_id and info is not None:
                out.setdefault((info.name, index), snap.start_offset)
        return out

    # -- share group offsets (DescribeShareGroupOffsets, Alter..., Delete...) -----------

    def share_partition_keys(self, group_id: str) -> set[PartKey]:
        """Every share-partition of the group that has state, in memory or persisted."""
        keys = {k for k in self.partitions if k[0] == group_id}
        keys.update(k for k in self._snapshots if k[0] == group_id)
        return keys

    def progress(self, key: PartKey) -> tuple[int, int] | None:
        """(start offset, offsets of the window done with) of a share-partition, or None
        if it has no state."""
        sp = self.partitions.get(key)
        if sp is not None:
            return sp.start, sp.finished()
        snap = self._snapshots.get(key)
        if snap is not None:
            return snap.start_offset, finished_in(snap.start_offset, snap.batches)
        return None

    async def reset_share_partitions(
        self, group_id: str, starts: dict[PartKey, int | None]
    ) -> None:
        """Give share-partitions a fresh state starting at an offset, or none (None), as
        one write; KafkaError if it fails. What was in flight there is forgotten: the
        callers check the group is empty."""
        if not starts:
            return
        await self._ensure_store()
        records: list[tuple[bytes, bytes | None]] = []
        fresh: dict[PartKey, Snapshot] = {}
        for key, start in starts.items():
            if start is None:
                records.append((snapshot_key(*key), None))
                continue
            snap = fresh[key] = Snapshot(self._snapshot_epochs.get(key, -1) + 1, 0, start, ())
            records.append((snapshot_key(*key), encode_snapshot(snap)))
        await self._write(group_id, records)
        for key in starts:
            self.partitions.pop(key, None)
            snap = fresh.get(key)
            if snap is None:
                self._snapshots.pop(key, None)
                self._snapshot_epochs.pop(key, None)
            else:  # restored with the group's settings when it is next read
                self._snapshots[key] = snap
                self._snapshot_epochs[key] = snap.snapshot_epoch


def _write_error(exc: BaseException) -> KafkaError:
    """A failed share-state write as the KafkaError its callers answer with."""
    code = getattr(exc, "error_code", None) or getattr(exc, "code", _E.UNKNOWN_SERVER_ERROR)
    return KafkaError(ErrorCode(int(code)), f"cannot write the share state: {exc}")


def _log_lost(group_id: str, landing: asyncio.Future[object]) -> None:
    exc = None if landing.cancelled() else landing.exception()
    if exc is not None:
        log.warning("share group %s: share state not written: %s", group_id, exc)
