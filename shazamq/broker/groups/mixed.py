"""Mixed groups: classic members inside a consumer group during an online upgrade.

Mixed into :class:`~.coordinator.GroupCoordinator`, after the classic
(:mod:`.membership`) and consumer (:mod:`.consumer`) protocols it bridges:

* **Upgrade**: a consumer-protocol member joining a classic group with members turns it
  into a consumer group (:func:`.conversion.consumer_from_classic`) when
  ``groups.consumer_migration_policy`` is ``upgrade`` or ``bidirectional``: the classic
  group's metadata record is tombstoned and the consumer group's records written in the
  same batch, so a restart loads one or the other, never both. A classic group with as
  many members as ``groups.consumer_max_size`` is not upgraded.
* **Classic members of a consumer group** keep speaking JoinGroup, SyncGroup, Heartbeat
  and LeaveGroup, and the broker drives them: a JoinGroup carries the member's
  subscription (and, from version 1 of the embedded protocol, the partitions it still
  owns), is answered at once with its member epoch as the generation and no leader
  duties, and SyncGroup hands it the assignment the server-side assignor gave it. A
  Heartbeat answers REBALANCE_IN_PROGRESS when the member must rejoin: the group epoch
  moved past its epoch, it has partitions to revoke, or partitions it waits for were
  released. A member that rejoins owning none of the partitions to revoke (eager
  clients revoke everything before rejoining) moves on in the same JoinGroup. A
  SyncGroup is due within the member's rebalance timeout after each JoinGroup, or the
  member is removed. A restarted static member (same instance id, no member id) takes
  over its predecessor's epoch, partitions and subscription without a rebalance; the old
  member id is FENCED_INSTANCE_ID from then on. A join that would add a member to a
  group of ``groups.consumer_max_size`` members is GROUP_MAX_SIZE_REACHED.
* **Downgrade**: when the last consumer-protocol member leaves and only classic members
  remain, the group becomes a classic group again (``downgrade`` or ``bidirectional``)
  and a rebalance starts so its elected leader assigns with the client-side assignor.

Offsets committed by a classic member carry its generation, checked against its member
epoch (ILLEGAL_GENERATION otherwise).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from shazamq.protocol.errors import ErrorCode

from . import consumer_records as cr
from .consumer_group import ConsumerGroup, ConsumerMember, MemberState
from .consumer_records import ClassicMetadata
from .conversion import (
    classic_from_consumer,
    common_protocol,
    consumer_from_classic,
    decode_subscription,
    encode_assignment,
)
from .group import CONSUMER_PROTOCOL_TYPE, Group, GroupState, JoinResult, SyncResult
from .offsets_codec import GroupMetadataValue, MemberRecord, encode_group_key, encode_group_value

if TYPE_CHECKING:
    from shazamq.broker.app import Broker
    from shazamq.config import GroupsConfig

__all__ = ["MixedGroupsMixin"]

log = logging.getLogger(__name__)
_E = ErrorCode
Record = tuple[bytes, bytes | None]
TopicPartition = tuple[str, int]
# bounds a member's reconciliation steps in one JoinGroup (revoke, then assign)
_MAX_STEPS = 3


class MixedGroupsMixin:
    """Classic members in consumer groups and the conversions; mixed into the coordinator."""

    broker: Broker
    config: GroupsConfig
    groups: dict[str, Group]
    consumer_groups: dict[str, ConsumerGroup]
    _persisted: set[str]

    if TYPE_CHECKING:

        def _key_status(self, group_id: str) -> int: ...
        def _advance(self, group: ConsumerGroup, bump: bool, records: list[Record]) -> None: ...
        def _rec_member(self, g: ConsumerGroup, m: ConsumerMember) -> Record: ...
        def _rec_target(self, g: ConsumerGroup, mid: str) -> Record: ...
        def _rec_current(self, g: ConsumerGroup, m: ConsumerMember) -> Record: ...
        def _rec_epoch(self, g: ConsumerGroup) -> Record: ...
        def _rec_target_epoch(self, g: ConsumerGroup) -> Record: ...
        def _tombstones(self, g: ConsumerGroup, mid: str) -> list[Record]: ...
        async def _write(self, group_id: str, records: list[Record]) -> int: ...
        def _schedule_member_timer(self, g: ConsumerGroup, m: ConsumerMember) -> None: ...
        def _cancel_member_timer(self, m: ConsumerMember) -> None: ...
        def _remove_consumer_member(self, g: ConsumerGroup, m: ConsumerMember) -> list[Record]: ...
        def _subscriptions(self, g: ConsumerGroup) -> tuple[Any, dict[str, int]]: ...
        def _ensure_member_timer(self, group: Group, member: Any) -> None: ...
        def _prepare_rebalance(self, group: Group, reason: str) -> None: ...
        def drop_empty_consumer_group(self, group_id: str) -> None: ...

    # -- policy -----------------------------------------------------------------------

    @property
    def _policy(self) -> str:
        return str(getattr(self.config, "consumer_migration_policy", "bidirectional"))

    def is_mixed_target(self, group_id: str) -> bool:
        """Whether classic requests for ``group_id`` go to a consumer group (it has
        members); an empty consumer group gives way to a classic join instead."""
        g = self.consumer_groups.get(group_id)
        if g is None:
            return False
        if g.members:
            return True
        # nothing to migrate: the empty consumer group's records go, classic takes over
        self.drop_empty_consumer_group(group_id)
        return False

    # -- upgrade ----------------------------------------------------------------------

    def _upgrade(self, classic: Group, records: list[Record]) -> str | None:
        """Turn ``classic`` into a consumer group, adding the records to ``records``;
        the reason it cannot be, or None."""
        if self._policy not in ("upgrade", "bidirectional"):
            return "the migration policy does not allow upgrades"
        if classic.is_state(GroupState.DEAD):
            return "it is being deleted"
        limit = self.config.consumer_max_size
        if len(classic.members) >= limit:
            return f"it has {len(classic.members)} members, groups.consumer_max_size is {limit}"
        topics = {name: info.partitions for name, info in self.broker.metadata.topics.items()}
        cg = consumer_from_classic(classic, topics)
        if cg is None:
            return "its members do not use the consumer protocol"
        gid = classic.group_id
        # the classic members' parked requests: they rejoin, now into the consumer group
        classic.cancel_timers()
        for m in classic.members.values():
            if m.timer is not None:
                m.timer.cancel()
                m.timer = None
            m.complete_join(JoinResult(int(_E.REBALANCE_IN_PROGRESS), m.member_id))
            m.complete_sync(SyncResult(int(_E.REBALANCE_IN_PROGRESS)))
        offsets_only = Group(gid)
        offsets_only.offsets = classic.offsets
        offsets_only.pending_txn_offsets = classic.pending_txn_offsets
        classic.transition(GroupState.DEAD)
        self.groups[gid] = offsets_only
        self._persisted.discard(gid)
        records.append((encode_group_key(gid), None))
        cg.subscribed_metadata = self._subscriptions(cg)[1]
        for m in cg.members.values():
            records.append(self._rec_member(cg, m))
            records.append(self._rec_target(cg, m.member_id))
            records.append(self._rec_current(cg, m))
            m.last_heartbeat = time.monotonic()
        records.append(self._rec_epoch(cg))
        records.append(self._rec_target_epoch(cg))
        self.consumer_groups[gid] = cg
        for m in cg.members.values():
            self._schedule_member_timer(cg, m)
        log.info(
            "group %s upgraded to a consumer group at epoch %d with %d classic members",
            gid,
            cg.group_epoch,
            len(cg.members),
        )
        return None

    # -- downgrade --------------------------------------------------------------------

    def _maybe_downgrade(self, group: ConsumerGroup, records: list[Record]) -> None:
        """If only classic members are left, make the group classic again."""
        if self._policy not in ("downgrade", "bidirectional") or not group.members:
            return
        classic = classic_from_consumer(group)
        if classic is None:
            return
        gid = group.group_id
        for m in group.members.values():
            self._cancel_member_timer(m)
            records.extend(self._tombstones(group, m.member_id))
        records.extend(
            (cr.encode_consumer_key(kind, gid), None)
            for kind in (cr.TARGET_METADATA, cr.PARTITION_METADATA, cr.GROUP_METADATA)
        )
        records.append((encode_group_key(gid), encode_group_value(_metadata_value(classic))))
        del self.consumer_groups[gid]
        holder = self.groups.get(gid)
        if holder is not None:
            classic.offsets = holder.offsets
            classic.pending_txn_offsets = holder.pending_txn_offsets
        self.groups[gid] = classic
        self._persisted.add(gid)
        for m in classic.members.values():
            m.last_heartbeat = time.monotonic()
            self._ensure_member_timer(classic, m)
        log.info("group %s downgraded to a classic group of %d members", gid, len(classic.members))
        # its members rejoin; the leader they elect assigns with the client-side assignor
        self._prepare_rebalance(classic, "downgraded from a consumer group")

    # -- classic requests to a consumer group -----------------------------------------

    def _classic_member(
        self, group: ConsumerGroup, member_id: str, instance_id: str | None
    ) -> ConsumerMember | int:
        if instance_id is not None:
            mid = group.static_members.get(instance_id)
            member = group.members.get(mid) if mid is not None else None
            if member is None:
                return int(_E.UNKNOWN_MEMBER_ID)
            if member.member_id != member_id:
                return int(_E.FENCED_INSTANCE_ID)
        else:
            member = group.members.get(member_id)
            if member is None:
                return int(_E.UNKNOWN_MEMBER_ID)
        if not member.is_classic:
            return int(_E.UNKNOWN_MEMBER_ID)
        return member

    async def mixed_join(
        self,
        *,
        group_id: str,
        member_id: str,
        group_instance_id: str | None,
        require_known_member_id: bool,
        client_id: str,
        client_host: str,
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        protocol_type: str,
        protocols: list[tuple[str, bytes]],
    ) -> JoinResult:
        status = self._key_status(group_id)
        if status:
            return JoinResult(status, member_id)
        cfg = self.config
        if not cfg.min_session_timeout_ms <= session_timeout_ms <= cfg.max_session_timeout_ms:
            return JoinResult(int(_E.INVALID_SESSION_TIMEOUT), member_id)
        group = self.consumer_groups.get(group_id)
        if group is None:
            return JoinResult(int(_E.UNKNOWN_MEMBER_ID), member_id)
        shared = common_protocol(
            [m.classic.protocols for m in group.members.values() if m.classic is not None]
        )
        others = {n for m in group.members.values() if m.classic for n, _ in m.classic.protocols}
        names = {n for n, _ in protocols}
        sub = next(
            (s for s in (decode_subscription(md) for _, md in protocols) if s is not None), None
        )
        if (
            protocol_type != CONSUMER_PROTOCOL_TYPE
            or sub is None
            or (others and not (names & ({shared} if shared else others)))
        ):
            return JoinResult(int(_E.INCONSISTENT_GROUP_PROTOCOL), member_id)
        if rebalance_timeout_ms < 0:
            rebalance_timeout_ms = session_timeout_ms
        records: list[Record] = []
        unknown = member_id == ""
        existing_id = (
            group.static_members.get(group_instance_id) if group_instance_id is not None else None
        )
        # a join that adds a member (a restarted static member replaces one instead)
        adds = existing_id is None and member_id not in group.members
        if adds and len(group.members) >= cfg.consumer_max_size:
            return JoinResult(int(_E.GROUP_MAX_SIZE_REACHED), member_id)
        if unknown:
            member_id = f"{group_instance_id or client_id}-{uuid.uuid4()}"
            if require_known_member_id and group_instance_id is None:
                return JoinResult(int(_E.MEMBER_ID_REQUIRED), member_id)
        classic_meta = ClassicMetadata(session_timeout_ms, tuple(protocols))
        member = group.members.get(member_id)
        bump = replaced = False
        if existing_id is not None and existing_id != member_id:
            if not unknown:
                return JoinResult(int(_E.FENCED_INSTANCE_ID), member_id)
            # a static member restarted: the new instance takes over the old one's epoch,
            # partitions and subscription (a change of which is a change like any other);
            # the old member id is fenced from now on
            old = group.members[existing_id]
            self._cancel_member_timer(old)
            member = ConsumerMember(
                member_id,
                instance_id=group_instance_id,
                subscribed_topic_names=old.subscribed_topic_names,
                subscribed_topic_regex=old.subscribed_topic_regex,
            )
            group.replace_static(old, member)
            records.extend(self._tombstones(group, old.member_id))
            records.append(self._rec_target(group, member_id))
            replaced = True
            log.info(
                "group %s: static member %s replaced %s (instance id %s)",
                group_id,
                member_id,
                old.member_id,
                group_instance_id,
            )
        elif member is None:
            # new, or back with the id MEMBER_ID_REQUIRED gave it (not kept, as in Kafka)
            member = ConsumerMember(member_id, instance_id=group_instance_id)
            group.add(member)
            bump = True
        elif not member.is_classic:
            return JoinResult(int(_E.UNKNOWN_MEMBER_ID), member_id)
        if member.subscribed_topic_names != sub.topics or member.subscribed_topic_regex:
            bump = True
        member.subscribed_topic_names = sub.topics
        member.subscribed_topic_regex = None
        member.rack_id = sub.rack_id
        member.rebalance_timeout_ms = rebalance_timeout_ms
        member.client_id = client_id
        member.client_host = client_host
        member.classic = classic_meta
        records.append(self._rec_member(group, member))
        member.last_heartbeat = time.monotonic()
        self._advance(group, bump, records)
        changed = False
        for _ in range(_MAX_STEPS):
            if not group.reconcile(member, set(sub.owned)):
                break
            changed = True
        if changed or bump or replaced:
            records.append(self._rec_current(group, member))
        if member.state == MemberState.UNREVOKED_PARTITIONS:
            if member.revocation_deadline is None:
                member.revocation_deadline = time.monotonic() + rebalance_timeout_ms / 1000
        else:
            member.revocation_deadline = None
        code = await self._write(group_id, records)
        if code:
            return JoinResult(code, member_id)
        if (
            self.consumer_groups.get(group_id) is not group
            or group.members.get(member_id) is not member
        ):
            return JoinResult(int(_E.NOT_COORDINATOR), member_id)
        # SyncGroup is due within the rebalance timeout, or the member is removed (as
        # Kafka's classic-member sync timeout): a client gone between the two requests
        # must not hold its partitions for a whole session
        member.sync_deadline = time.monotonic() + rebalance_timeout_ms / 1000
        self._schedule_member_timer(group, member)
        return JoinResult(
            0,
            member_id,
            member.member_epoch,
            CONSUMER_PROTOCOL_TYPE,
            protocols[0][0],
            "",  # no leader: the broker assigns
            (),
        )

    def mixed_sync(
        self,
        *,
        group_id: str,
        generation_id: int,
        member_id: str,
        group_instance_id: str | None,
        protocol_type: str | None,
        protocol_name: str | None,
    ) -> SyncResult:
        group = self.consumer_groups.get(group_id)
        if group is None:
            return SyncResult(int(_E.UNKNOWN_MEMBER_ID))
        member = self._classic_member(group, member_id, group_instance_id)
        if isinstance(member, int):
            return SyncResult(member)
        assert member.classic is not None
        if generation_id != member.member_epoch:
            return SyncResult(int(_E.ILLEGAL_GENERATION))
        names = [n for n, _ in member.classic.protocols]
        if (protocol_type is not None and protocol_type != CONSUMER_PROTOCOL_TYPE) or (
            protocol_name is not None and protocol_name not in names
        ):
            return SyncResult(int(_E.INCONSISTENT_GROUP_PROTOCOL))
        if (
            group.group_epoch > member.member_epoch
            and member.state != MemberState.UNREVOKED_PARTITIONS
        ):
            return SyncResult(int(_E.REBALANCE_IN_PROGRESS))
        member.last_heartbeat = time.monotonic()
        member.sync_deadline = None  # the timer, when it comes, re-arms for the session
        return SyncResult(
            0,
            encode_assignment(member.assigned),
            CONSUMER_PROTOCOL_TYPE,
            protocol_name or names[0],
        )

    def mixed_heartbeat(
        self, group_id: str, generation_id: int, member_id: str, group_instance_id: str | None
    ) -> int:
        group = self.consumer_groups.get(group_id)
        if group is None:
            return int(_E.UNKNOWN_MEMBER_ID)
        member = self._classic_member(group, member_id, group_instance_id)
        if isinstance(member, int):
            return member
        if generation_id != member.member_epoch:
            return int(_E.ILLEGAL_GENERATION)
        member.last_heartbeat = time.monotonic()
        if (
            member.member_epoch < group.group_epoch
            or member.state == MemberState.UNREVOKED_PARTITIONS
            or (
                member.state == MemberState.UNRELEASED_PARTITIONS
                and not group.waiting_on_unreleased(member)
            )
        ):
            # it must rejoin, within its rebalance timeout
            if member.revocation_deadline is None:
                member.revocation_deadline = time.monotonic() + member.rebalance_timeout_ms / 1000
                self._schedule_member_timer(group, member)
            return int(_E.REBALANCE_IN_PROGRESS)
        return 0

    async def mixed_leave(
        self, group_id: str, members: list[tuple[str, str | None]]
    ) -> tuple[int, list[tuple[str, str | None, int]]]:
        group = self.consumer_groups.get(group_id)
        if group is None:
            return 0, [(m, i, int(_E.UNKNOWN_MEMBER_ID)) for m, i in members]
        out: list[tuple[str, str | None, int]] = []
        records: list[Record] = []
        for member_id, instance_id in members:
            if instance_id is not None:
                mid = group.static_members.get(instance_id)
                member = group.members.get(mid) if mid is not None else None
                if member is not None and member_id and member.member_id != member_id:
                    out.append((member_id, instance_id, int(_E.FENCED_INSTANCE_ID)))
                    continue
            else:
                member = group.members.get(member_id)
            if member is None or not member.is_classic:
                out.append((member_id, instance_id, int(_E.UNKNOWN_MEMBER_ID)))
                continue
            records.extend(self._remove_consumer_member(group, member))
            out.append((member_id, instance_id, 0))
        if records:
            code = await self._write(group_id, records)
            if code:
                return code, []
        return 0, out

    # -- describing -------------------------------------------------------------------

    def mixed_members(
        self, group_id: str
    ) -> tuple[str, str, list[tuple[str, str | None, str, str, bytes, bytes]]] | None:
        """(state, protocol, members) of a mixed group for DescribeGroups: a classic
        member with the subscription it joined with, a consumer-protocol member with an
        empty one; both with their current assignment as SyncGroup encodes it."""
        group = self.consumer_groups.get(group_id)
        if group is None:
            return None
        classic = [m.classic.protocols for m in group.members.values() if m.classic]
        if not classic:
            return None  # no classic member: a consumer group, for ConsumerGroupDescribe
        protocol = common_protocol(classic) or ""
        members = []
        for m in group.members.values():
            metadata = b""
            if m.classic is not None:
                metadata = dict(m.classic.protocols).get(protocol, m.classic.protocols[0][1])
            members.append(
                (
                    m.member_id,
                    m.instance_id,
                    m.client_id,
                    m.client_host,
                    metadata,
                    encode_assignment(m.assigned),
                )
            )
        return group.state, protocol, members


def _metadata_value(group: Group) -> GroupMetadataValue:
    protocol = group.protocol_name
    return GroupMetadataValue(
        protocol_type=group.protocol_type or "",
        generation=group.generation_id,
        protocol=protocol,
        leader=group.leader_id,
        current_state_timestamp=group.state_timestamp,
        members=tuple(
            MemberRecord(
                member_id=m.member_id,
                client_id=m.client_id,
                client_host=m.client_host,
                session_timeout_ms=m.session_timeout_ms,
                rebalance_timeout_ms=m.rebalance_timeout_ms,
                subscription=_metadata_for(m.protocols, protocol),
                assignment=m.assignment,
                group_instance_id=m.group_instance_id,
            )
            for m in group.members.values()
        ),
    )


def _metadata_for(protocols: list[tuple[str, bytes]], name: str | None) -> bytes:
    return dict(protocols).get(name or "", b"")
