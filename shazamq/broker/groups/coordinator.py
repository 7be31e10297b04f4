"""The group coordinator: the front of consumer groups and their committed offsets.

The broker hosts every partition, so it coordinates every group. The protocol lives in
two mixins: :mod:`.membership` (JoinGroup, SyncGroup, Heartbeat, LeaveGroup and the
timers that expel dead members) and :mod:`.offsets` (commits, fetches, deletion,
retention, transactional offsets). This module adds what spans both: loading every group
back from ``__consumer_offsets`` at start, stopping, the administrative APIs
(ListGroups, DescribeGroups, DeleteGroups) and the metrics probe.

Everything runs on the event loop. Writes to ``__consumer_offsets`` are synchronous log
appends made before the answer, so an acknowledged commit or assignment survives a crash.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily, Metric

from shazamq.broker.log import LogError
from shazamq.broker.tasks import cancel_all
from shazamq.protocol.errors import ErrorCode, KafkaError
from shazamq.protocol.records import RecordError

from .group import Group, GroupState, JoinResult, Member, SyncResult
from .membership import MembershipMixin
from .offsets import FetchedOffset, OffsetCommit, OffsetsMixin
from .offsets_codec import GroupMetadataValue
from .offsets_store import OFFSETS_TOPIC, LoadedPartition, OffsetsStore, append_error_code

if TYPE_CHECKING:
    from shazamq.broker.app import Broker

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

_E = ErrorCode


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


class GroupCoordinator(MembershipMixin, OffsetsMixin):
    """Every consumer group of the broker and their committed offsets."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.config = broker.config.groups
        self.store = OffsetsStore(broker.partitions, self.config)
        self.groups: dict[str, Group] = {}
        self.loaded = False
        self._persisted: set[str] = set()  # groups with a metadata record in the log
        self._txn_groups: dict[int, set[str]] = {}  # producer id -> groups with pending offsets
        self._tasks: list[asyncio.Task[None]] = []
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

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.ensure()
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        loaded = await loop.run_in_executor(None, self._load_all)
        for index, part in enumerate(loaded):
            self._install(index, part)
        self.loaded = True
        for group in self.groups.values():
            for member in group.members.values():
                member.last_heartbeat = time.monotonic()
                self._ensure_member_timer(group, member)
        self.broker.metrics.add_probe(self._probe)
        self._tasks.append(asyncio.create_task(self._expiry_loop(), name="offset-expiry"))
        log.info(
            "group coordinator loaded %d groups from %d partitions of %s in %.2fs",
            len(self.groups),
            self.store.partition_count,
            OFFSETS_TOPIC,
            time.monotonic() - started,
        )

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        for group in self.groups.values():
            group.cancel_timers()
            for member in group.members.values():
                if member.timer is not None:
                    member.timer.cancel()
                    member.timer = None
                member.complete_join(JoinResult(int(_E.NOT_COORDINATOR), member.member_id))
                member.complete_sync(SyncResult(int(_E.NOT_COORDINATOR)))
        self.loaded = False

    def _load_all(self) -> list[LoadedPartition]:
        return [self.store.load_partition(i) for i in range(self.store.partition_count)]

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
        if not self.loaded:
            return int(_E.COORDINATOR_LOAD_IN_PROGRESS), []
        state_filter = {s.lower() for s in states} if states else None
        type_filter = {t.lower() for t in types} if types else None
        if type_filter is not None and CLASSIC_GROUP_TYPE not in type_filter:
            return 0, []
        out = []
        for group in list(self.groups.values()):
            if group.is_state(GroupState.DEAD):
                continue
            if state_filter is not None and group.state.value.lower() not in state_filter:
                continue
            out.append(
                GroupListing(
                    group.group_id, group.protocol_type or "", group.state.value, CLASSIC_GROUP_TYPE
                )
            )
        return 0, out

    def describe_group(self, group_id: str) -> GroupDescription:
        if not self.loaded:
            return GroupDescription(group_id, int(_E.COORDINATOR_LOAD_IN_PROGRESS), "", "", "", ())
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

    def delete_groups(self, group_ids: Iterable[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for gid in group_ids:
            if not self.loaded:
                out[gid] = int(_E.COORDINATOR_LOAD_IN_PROGRESS)
                continue
            group = self.groups.get(gid)
            if group is None or group.is_state(GroupState.DEAD):
                out[gid] = int(_E.GROUP_ID_NOT_FOUND)
            elif not group.is_state(GroupState.EMPTY):
                out[gid] = int(_E.NON_EMPTY_GROUP)
            else:
                try:
                    self._remove_group(group)
                except (LogError, RecordError, KafkaError) as exc:
                    out[gid] = append_error_code(exc)
                    continue
                out[gid] = 0
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
