"""The group coordinator: the front of consumer groups and their committed offsets.

The protocol lives in mixins: :mod:`.consumer` (KIP-848), :mod:`.mixed` (classic members
in consumer groups, conversions), :mod:`.membership` (JoinGroup, SyncGroup, Heartbeat,
LeaveGroup and the timers that expel dead members) and :mod:`.offsets` (commits, fetches,
deletion, retention, transactional offsets). This module adds what spans both: which
groups this broker coordinates and loading them from ``__consumer_offsets``, stopping,
the administrative APIs (ListGroups, DescribeGroups, DeleteGroups) and the metrics probe.

On a single broker every partition is hosted here, so every group is coordinated here:
all of them are loaded at start, and ``loaded`` gates every request until then. A fresh
broker has no ``__consumer_offsets``: FindCoordinator or the first request that writes
a group's records (JoinGroup, OffsetCommit, TxnOffsetCommit, ConsumerGroupHeartbeat)
creates it. In a
cluster a group belongs to the broker that leads its ``__consumer_offsets`` partition,
as in Kafka: a partition becoming led here is loaded (COORDINATOR_LOAD_IN_PROGRESS for
its groups meanwhile), one that stops being led here is unloaded (its groups' parked
requests answered NOT_COORDINATOR), and a request for a group of any other partition is
answered NOT_COORDINATOR so the client looks the coordinator up again.

Everything runs on the event loop. Writes to ``__consumer_offsets`` are log appends made
before the answer, so an acknowledged commit or assignment survives a crash; in a
cluster the answer (and the in-memory change) also waits until the in-sync replicas have
the write, so it survives the loss of this broker too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily, Metric

from shazamq.broker.tasks import cancel_all
from shazamq.protocol.errors import ErrorCode

from .consumer import ConsumerGroupsMixin
from .consumer_group import ConsumerGroup
from .group import Group, GroupState, JoinResult, Member, SyncResult
from .internal_topic import Appended, Landing, replicated
from .membership import MembershipMixin
from .mixed import MixedGroupsMixin
from .offsets import FetchedOffset, OffsetCommit, OffsetsMixin
from .offsets_codec import GroupMetadataValue
from .offsets_store import OFFSETS_TOPIC, LoadedPartition, OffsetsStore
from .ownership import OwnedPartitions, Ownership

if TYPE_CHECKING:
    from shazamq.broker.app import Broker
    from shazamq.broker.cluster.node import ClusterNode

__all__ = [
    "FetchedOffset",
    "GroupCoordinator",
    "GroupDescription",
    "GroupListing",
    "MemberDescription",
    "OffsetCommit",
]

log = logging.getLogger(__name__)

CLASSIC_GROUP_TYPE = "classic"
CONSUMER_GROUP_TYPE = "consumer"

# Kafka's offsets.commit.timeout.ms: how long a commit (or a group metadata write) waits
# for the in-sync replicas before it is answered with an error.
OFFSETS_COMMIT_TIMEOUT_MS = 5000

_E = ErrorCode


@dataclass(eq=False, slots=True)
class _Ownership(Ownership):
    """A ``__consumer_offsets`` partition this broker leads (cluster mode)."""

    # (producer id, commit, marker offset) of transaction markers written while loading
    deferred: list[tuple[int, bool, int | None]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class GroupListing:
    """One group of a ListGroups answer."""

    group_id: str
    protocol_type: str
    state: str
    group_type: str


@dataclass(frozen=True, slots=True)
class MemberDescription:
    """One member of a DescribeGroups answer."""

    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    metadata: bytes
    assignment: bytes


@dataclass(frozen=True, slots=True)
class GroupDescription:
    """One group of a DescribeGroups answer."""

    group_id: str
    error: int
    state: str
    protocol_type: str
    protocol: str
    members: tuple[MemberDescription, ...]


class GroupCoordinator(MembershipMixin, OffsetsMixin, ConsumerGroupsMixin, MixedGroupsMixin):
    """Every consumer group of the broker and their committed offsets."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.config = broker.config.groups
        self.store = OffsetsStore(broker.partitions, self.config)
        self.groups: dict[str, Group] = {}
        self.consumer_groups: dict[str, ConsumerGroup] = {}  # KIP-848 groups (consumer.py)
        self.loaded = False
        self._persisted: set[str] = set()  # groups with a metadata record in the log
        self._txn_groups: dict[int, set[str]] = {}  # producer id -> groups with pending offsets
        self._commits_in_flight: dict[str, int] = {}  # see OffsetsMixin
        self._commits_settled: dict[str, asyncio.Future[None]] = {}
        self._deleting: dict[str, Group] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # cluster mode: the __consumer_offsets partitions led here
        self._owned: OwnedPartitions[LoadedPartition, _Ownership] = OwnedPartitions(
            OFFSETS_TOPIC,
            self.partition_for,
            new=_Ownership,
            # looked up at each load, so a replaced loader (tests slow it down) is used
            read=lambda index: self.store.load_partition(index),
            install=self._install,
            then=self._partition_loaded,
            unload=self._unload_partition,
            log=log,
        )
        self._background: set[asyncio.Task[None]] = set()
        self.commit_timeout_s = (
            getattr(self.config, "offsets_commit_timeout_ms", OFFSETS_COMMIT_TIMEOUT_MS) / 1000
        )
        r = broker.metrics.registry
        self.rebalances = Counter(
            "shazamq_group_rebalances", "Rebalances started, over all groups.", registry=r
        )
        self.member_expirations = Counter(
            "shazamq_group_member_expirations",
            "Members removed because their session timed out.",
            registry=r,
        )
        self.offset_commits = Counter(
            "shazamq_group_offset_commits", "Partition offsets committed.", registry=r
        )
        self.offsets_expired = Counter(
            "shazamq_group_offsets_expired", "Committed offsets removed by retention.", registry=r
        )

    @property
    def cluster(self) -> ClusterNode | None:
        return getattr(self.broker, "cluster", None)

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        cluster = self.cluster
        if cluster is not None:
            self._start_in_cluster(cluster)
            return
        started = time.monotonic()
        loaded: list[LoadedPartition] = []
        # a fresh broker has no __consumer_offsets: the first request that needs it
        # creates it (create_offsets_topic), and there is nothing to load before that
        if self.store.topic.exists:
            await self.store.topic.ensure_created()
            loaded = await asyncio.get_running_loop().run_in_executor(None, self._load_all)
        for index, part in enumerate(loaded):
            self._install(index, part)
        self.loaded = True
        self._revive(self.groups.values())
        self._revive_consumer(self.consumer_groups.values())
        self.broker.metrics.add_probe(self._probe)
        self._tasks.append(asyncio.create_task(self._expiry_loop(), name="offset-expiry"))
        if not loaded:
            log.info("group coordinator started; %s is created on first use", OFFSETS_TOPIC)
            return
        log.info(
            "group coordinator loaded %d groups from %d partitions of %s in %.2fs",
            len(self.groups),
            self.store.partition_count,
            OFFSETS_TOPIC,
            time.monotonic() - started,
        )

    def _start_in_cluster(self, cluster: ClusterNode) -> None:
        # The topic is created on the first FindCoordinator; until then nothing is led here.
        self.loaded = True
        self._owned.attach(cluster, list(self.broker.partitions.partitions.values()))
        self.broker.metrics.add_probe(self._probe)
        self._tasks.append(asyncio.create_task(self._expiry_loop(), name="offset-expiry"))
        log.info("group coordinator started; it loads the %s partitions led here", OFFSETS_TOPIC)

    async def stop(self) -> None:
        self._owned.detach(self.cluster)
        await cancel_all(self._tasks)
        await cancel_all(list(self._background))
        for group in self.groups.values():
            group.cancel_timers()
            for member in group.members.values():
                if member.timer is not None:
                    member.timer.cancel()
                    member.timer = None
                member.complete_join(JoinResult(int(_E.NOT_COORDINATOR), member.member_id))
                member.complete_sync(SyncResult(int(_E.NOT_COORDINATOR)))
        self._drop_consumer_groups(list(self.consumer_groups))
        self.loaded = False

    async def create_offsets_topic(self) -> None:
        """On a single broker, create ``__consumer_offsets`` before the first request that
        writes it (one that fails to is answered COORDINATOR_NOT_AVAILABLE by the write)."""
        if self.store.needs_creation:
            await self.store.topic.created()

    def _load_all(self) -> list[LoadedPartition]:
        return [self.store.load_partition(i) for i in range(self.store.partition_count)]

    def _revive(self, groups: Iterable[Group]) -> None:
        """Loaded members get a full session from now, not from their last heartbeat."""
        for group in groups:
            for member in group.members.values():
                member.last_heartbeat = time.monotonic()
                self._ensure_member_timer(group, member)

    # -- which groups are coordinated here --------------------------------------------

    def _key_status(self, group_id: str) -> int:
        """0 if this broker serves ``group_id`` now; else COORDINATOR_LOAD_IN_PROGRESS or
        NOT_COORDINATOR (Kafka's check before every group request)."""
        if self.cluster is None:
            return 0 if self.loaded else int(_E.COORDINATOR_LOAD_IN_PROGRESS)
        return self._owned.key_error(group_id, self.loaded)

    def coordinates(self, group_id: str) -> bool:
        """Whether requests for ``group_id`` are served here now."""
        return self._key_status(group_id) == 0

    def _ownership(self, group_id: str) -> _Ownership | None:
        return self._owned.of(group_id)

    def _still_serving(self, group: Group, own: _Ownership | None) -> bool:
        """After a wait: the group is still this coordinator's (same partition leadership,
        same group object)."""
        if self.cluster is not None and self._ownership(group.group_id) is not own:
            return False
        return self.groups.get(group.group_id) is group

    async def _partition_loaded(
        self, index: int, own: _Ownership, part: LoadedPartition, started: float
    ) -> None:
        for producer_id, commit, marker_offset in own.deferred:
            self._complete_txn_now(index, producer_id, commit, marker_offset)
        own.deferred.clear()
        groups = [g for gid, g in self.groups.items() if self.partition_for(gid) == index]
        self._revive(groups)
        self._revive_consumer(
            g for gid, g in self.consumer_groups.items() if self.partition_for(gid) == index
        )
        log.info(
            "%s-%d: now coordinating %d groups (loaded in %.2fs)",
            OFFSETS_TOPIC,
            index,
            len(groups),
            time.monotonic() - started,
        )

    def _unload_partition(self, index: int) -> None:
        doomed = [gid for gid in self.groups if self.partition_for(gid) == index]
        for gid in doomed:
            self._unload_group(self.groups.pop(gid))
            self._persisted.discard(gid)
        self._drop_consumer_groups(
            [gid for gid in self.consumer_groups if self.partition_for(gid) == index]
        )
        share = getattr(self.broker, "share", None)
        if share is not None:
            share.unload_groups(lambda gid: self.partition_for(gid) == index)
        for pid in list(self._txn_groups):
            gids = self._txn_groups[pid]
            gids.difference_update(doomed)
            if not gids:
                del self._txn_groups[pid]
        log.info("%s-%d: no longer led here; %d groups unloaded", OFFSETS_TOPIC, index, len(doomed))

    @staticmethod
    def _unload_group(group: Group) -> None:
        """Another broker coordinates the group now: answer its parked requests so the
        members find it, and stop its clocks."""
        if not group.is_state(GroupState.DEAD):
            group.transition(GroupState.DEAD)
        group.cancel_timers()
        group.pending_members.clear()
        for member in group.members.values():
            if member.timer is not None:
                member.timer.cancel()
                member.timer = None
            member.complete_join(JoinResult(int(_E.NOT_COORDINATOR), member.member_id))
            member.complete_sync(SyncResult(int(_E.NOT_COORDINATOR)))

    # -- replicated writes ------------------------------------------------------------

    async def _replication(self, appended: Landing | None) -> int:
        """0 once the write is on the in-sync replicas (at once on a single broker)."""
        if appended is None:
            return 0
        return await replicated(self.cluster, appended, self.commit_timeout_s)

    def _when_replicated(self, appended: Landing | None, then: Callable[[int], None]) -> None:
        """Call ``then`` with the replication result: now on a single broker, from a task
        once the in-sync replicas answered in a cluster (or once a write that went to a
        writer thread is in)."""
        if isinstance(appended, Appended) and (
            self.cluster is None or appended.partition.replica is None
        ):
            appended = None
        if appended is None:
            then(0)
            return

        async def wait() -> None:
            then(await self._replication(appended))

        task = asyncio.get_running_loop().create_task(wait())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _install(self, index: int, part: LoadedPartition) -> None:
        for gid, value in part.groups.items():
            group = self._group_from_record(gid, value)
            self.groups[gid] = group
            self._persisted.add(gid)
        for gid, offsets in part.offsets.items():
            group = self.groups.get(gid)
            if group is None:
                group = self.groups[gid] = Group(gid)
            group.offsets.update(offsets)
        for pid, per_group in part.pending.items():
            for gid, offsets in per_group.items():
                group = self.groups.get(gid)
                if group is None:
                    group = self.groups[gid] = Group(gid)
                group.pending_txn_offsets.setdefault(pid, {}).update(offsets)
                self._txn_groups.setdefault(pid, set()).add(gid)
        self._install_consumer(part)
        share = getattr(self.broker, "share", None)
        if share is not None and part.share:
            share.install_groups(part.share)
        if part.skipped:
            log.warning(
                "%s-%d: %d of %d records were not understood and skipped",
                OFFSETS_TOPIC,
                index,
                part.skipped,
                part.records,
            )

    @staticmethod
    def _group_from_record(gid: str, value: GroupMetadataValue) -> Group:
        group = Group(
            gid,
            now_ms=value.current_state_timestamp if value.current_state_timestamp >= 0 else None,
        )
        group.protocol_type = value.protocol_type or None
        group.generation_id = value.generation
        group.protocol_name = value.protocol
        protocol = value.protocol
        for m in value.members:
            member = Member(
                member_id=m.member_id,
                group_instance_id=m.group_instance_id,
                client_id=m.client_id,
                client_host=m.client_host,
                rebalance_timeout_ms=m.rebalance_timeout_ms or m.session_timeout_ms,
                session_timeout_ms=m.session_timeout_ms,
                protocol_type=value.protocol_type,
                protocols=[(protocol, m.subscription)] if protocol else [],
                assignment=m.assignment,
            )
            group.members[member.member_id] = member
            if member.group_instance_id is not None:
                group.static_members[member.group_instance_id] = member.member_id
        if group.members and protocol:
            group.state = GroupState.STABLE
            group.leader_id = (
                value.leader if value.leader in group.members else next(iter(group.members))
            )
        else:
            group.members.clear()
            group.static_members.clear()
            group.state = GroupState.EMPTY
        return group

    # -- ListGroups / DescribeGroups / DeleteGroups -----------------------------------

    def list_groups(
        self, states: Iterable[str] | None = None, types: Iterable[str] | None = None
    ) -> tuple[int, list[GroupListing]]:
        code = 0
        if self.cluster is None:
            if not self.loaded:
                return int(_E.COORDINATOR_LOAD_IN_PROGRESS), []
        elif not self.loaded:
            return int(_E.COORDINATOR_NOT_AVAILABLE), []
        elif self._owned.loading:
            # Kafka lists what it has and flags that some partitions are still loading
            code = int(_E.COORDINATOR_LOAD_IN_PROGRESS)
        state_filter = {s.lower() for s in states} if states else None
        type_filter = {t.lower() for t in types} if types else None
        out = []
        if type_filter is None or CONSUMER_GROUP_TYPE in type_filter:
            for cg in list(self.consumer_groups.values()):
                if state_filter is not None and cg.state.lower() not in state_filter:
                    continue
                out.append(GroupListing(cg.group_id, "consumer", cg.state, CONSUMER_GROUP_TYPE))
        if type_filter is not None and CLASSIC_GROUP_TYPE not in type_filter:
            return code, out
        for group in list(self.groups.values()):
            if group.is_state(GroupState.DEAD) or group.group_id in self.consumer_groups:
                continue
            if state_filter is not None and group.state.value.lower() not in state_filter:
                continue
            out.append(
                GroupListing(
                    group.group_id, group.protocol_type or "", group.state.value, CLASSIC_GROUP_TYPE
                )
            )
        return code, out

    def describe_group(self, group_id: str) -> GroupDescription:
        status = self._key_status(group_id)
        if status:
            return GroupDescription(group_id, status, "", "", "", ())
        mixed = self.mixed_members(group_id)
        if mixed is None and group_id in self.consumer_groups:
            return GroupDescription(group_id, int(_E.GROUP_ID_NOT_FOUND), "", "", "", ())
        if mixed is not None:  # a consumer group with classic members: all described
            state, protocol, described = mixed
            return GroupDescription(
                group_id,
                0,
                state,
                CONSUMER_GROUP_TYPE,
                protocol,
                tuple(MemberDescription(*m) for m in described),
            )
        group = self.groups.get(group_id)
        if group is None:
            return GroupDescription(group_id, 0, GroupState.DEAD.value, "", "", ())
        stable = group.is_state(GroupState.STABLE) and group.protocol_name is not None
        members = []
        for m in group.members.values():
            if stable:
                assert group.protocol_name is not None
                try:
                    metadata = m.metadata_for(group.protocol_name)
                except KeyError:
                    metadata = b""
                members.append(
                    MemberDescription(
                        m.member_id,
                        m.group_instance_id,
                        m.client_id,
                        m.client_host,
                        metadata,
                        m.assignment,
                    )
                )
            else:
                members.append(
                    MemberDescription(
                        m.member_id, m.group_instance_id, m.client_id, m.client_host, b"", b""
                    )
                )
        return GroupDescription(
            group_id,
            0,
            group.state.value,
            group.protocol_type or "",
            (group.protocol_name or "") if stable else "",
            tuple(members),
        )

    async def delete_groups(self, group_ids: Iterable[str]) -> dict[str, int]:
        """Each group answered once its tombstones are in the log (on the in-sync
        replicas in a cluster); one whose write failed keeps its state and offsets."""
        out: dict[str, int] = {}
        for gid in group_ids:
            status = self._key_status(gid)
            if status:
                out[gid] = status
                continue
            consumer = await self.delete_consumer_group(gid)
            if consumer:
                out[gid] = consumer
                continue
            group = self.groups.get(gid)
            if consumer == 0 and (group is None or group.is_state(GroupState.DEAD)):
                out[gid] = 0
            elif group is None or group.is_state(GroupState.DEAD):
                out[gid] = int(_E.GROUP_ID_NOT_FOUND)
            elif not group.is_state(GroupState.EMPTY):
                out[gid] = int(_E.NON_EMPTY_GROUP)
            else:
                out[gid] = await self._delete_group(group)
        return out

    # -- metrics ----------------------------------------------------------------------

    def _probe(self) -> Iterable[Metric]:
        by_state = GaugeMetricFamily(
            "shazamq_consumer_groups", "Consumer groups by state.", labels=["state"]
        )
        members = GaugeMetricFamily(
            "shazamq_consumer_group_members", "Members of each group.", labels=["group"]
        )
        lag = GaugeMetricFamily(
            "shazamq_consumer_group_lag",
            "High watermark minus the committed offset, per group and partition.",
            labels=["group", "topic", "partition"],
        )
        committed = GaugeMetricFamily(
            "shazamq_consumer_group_committed_offset",
            "Committed offset per group and partition.",
            labels=["group", "topic", "partition"],
        )
        counts = dict.fromkeys((s.value for s in GroupState), 0)
        parts = self.broker.partitions
        try:
            groups = list(self.groups.values())
            for group in groups:
                counts[group.state.value] += 1
                members.add_metric([group.group_id], len(group.members))
                for (topic, index), c in list(group.offsets.items()):
                    labels = [group.group_id, topic, str(index)]
                    committed.add_metric(labels, c.offset)
                    p = parts.get(topic, index)
                    if p is not None:
                        lag.add_metric(labels, max(p.log.high_watermark - c.offset, 0))
        except RuntimeError:  # a dict changed under the scrape thread; next scrape is fine
            pass
        for state, n in counts.items():
            by_state.add_metric([state], n)
        return [by_state, members, lag, committed]
