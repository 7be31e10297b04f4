"""Consumer groups of the KIP-848 protocol: ConsumerGroupHeartbeat and what it drives.

Mixed into :class:`~.coordinator.GroupCoordinator`. A heartbeat joins (member epoch 0),
leaves (-1, or -2 for a static member that will come back), or keeps a member alive and
reconciles it (:mod:`.consumer_group`). The broker evaluates subscriptions: topic names
that exist, and regular expressions matched in full against the topic names (Python
``re`` limited to what RE2 accepts: no backreferences, lookaround, atomic groups,
possessive quantifiers or conditionals; anything else is INVALID_REGULAR_EXPRESSION).
The target assignment is recomputed, by the assignor most members ask for (``uniform``
unless they name ``range``), whenever the group epoch moved: a member joined, left or
changed its subscription, or a subscribed topic changed partitions.

Every change is written to ``__consumer_offsets`` as Kafka's consumer group records
(:mod:`.consumer_records`) before the heartbeat is answered, and loading replays them.
A member that stops heartbeating for its session timeout (the group's
``consumer.session.timeout.ms``, else ``groups.consumer_session_timeout_ms``), or does
not revoke partitions within its rebalance timeout, is removed (fenced).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shazamq.broker.log import LogError
from shazamq.protocol.errors import ErrorCode, KafkaError
from shazamq.protocol.records import RecordError

from . import consumer_records as cr
from . import consumer_settings as cs
from .assignors import ASSIGNORS, Assignment
from .consumer_group import ConsumerGroup, ConsumerMember, MemberState
from .internal_topic import landed
from .offsets_store import append_error_code, commit_replication_error

try:  # the parser of ``re``; its module name changed in Python 3.11
    from re import _parser as _sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    import sre_parse as _sre_parse  # type: ignore[no-redef]

if TYPE_CHECKING:
    from shazamq.broker.app import Broker
    from shazamq.config import GroupsConfig

    from .coordinator import _Ownership
    from .group import Group
    from .internal_topic import Landing
    from .offsets_store import LoadedPartition, OffsetsStore

__all__ = [
    "ConsumerGroupsMixin",
    "HeartbeatArgs",
    "HeartbeatResult",
    "RegexError",
    "compile_topic_regex",
]

_E = ErrorCode
log = logging.getLogger(__name__)
DEFAULT_ASSIGNOR = "uniform"
LEAVE_EPOCH = -1
STATIC_LEAVE_EPOCH = -2

Record = tuple[bytes, bytes | None]
TopicPartition = tuple[str, int]


class RegexError(ValueError):
    """A subscription regex Python cannot compile or RE2 would not accept."""


_NOT_RE2 = {
    "GROUPREF",
    "GROUPREF_EXISTS",
    "ASSERT",
    "ASSERT_NOT",
    "ATOMIC_GROUP",
    "POSSESSIVE_REPEAT",
}


def _walk(parsed: Any) -> Iterable[str]:
    for op, arg in parsed:
        yield str(op)
        args = arg if isinstance(arg, (list, tuple)) else (arg,)
        for a in args:
            if isinstance(a, _sre_parse.SubPattern):
                yield from _walk(a)
            elif isinstance(a, (list, tuple)):
                for b in a:
                    if isinstance(b, _sre_parse.SubPattern):
                        yield from _walk(b)


@functools.lru_cache(maxsize=1024)
def compile_topic_regex(pattern: str) -> re.Pattern[str]:
    """Compile a subscription regex, refusing what RE2 does not support."""
    try:
        compiled = re.compile(pattern)
        ops = set(_walk(_sre_parse.parse(pattern)))
    except (re.error, RecursionError, OverflowError) as exc:
        raise RegexError(f"invalid regular expression {pattern!r}: {exc}") from None
    bad = sorted(ops & _NOT_RE2)
    if bad:
        raise RegexError(
            f"regular expression {pattern!r} uses {', '.join(bad).lower()}, "
            "which RE2 does not support"
        )
    return compiled


@dataclass(frozen=True, slots=True)
class HeartbeatArgs:
    group_id: str
    member_id: str
    member_epoch: int
    instance_id: str | None
    rack_id: str | None
    rebalance_timeout_ms: int
    subscribed_topic_names: list[str] | None
    subscribed_topic_regex: str | None
    server_assignor: str | None
    owned: list[tuple[uuid.UUID, list[int]]] | None
    client_id: str
    client_host: str
    version: int


@dataclass(frozen=True, slots=True)
class HeartbeatResult:
    error: int
    message: str | None = None
    member_id: str | None = None
    member_epoch: int = 0
    heartbeat_interval_ms: int = 0
    assignment: dict[uuid.UUID, list[int]] | None = None


def _fail(code: int, message: str | None = None) -> HeartbeatResult:
    return HeartbeatResult(int(code), message)


class ConsumerGroupsMixin:
    """KIP-848 consumer groups; mixed into :class:`GroupCoordinator`."""

    broker: Broker
    config: GroupsConfig
    store: OffsetsStore
    groups: dict[str, Group]
    consumer_groups: dict[str, ConsumerGroup]

    if TYPE_CHECKING:

        def _key_status(self, group_id: str) -> int: ...
        async def create_offsets_topic(self) -> None: ...
        def _ownership(self, group_id: str) -> _Ownership | None: ...
        def partition_for(self, group_id: str) -> int: ...
        async def _replication(self, appended: Landing | None) -> int: ...
        def _upgrade(self, classic: Group, records: list[Record]) -> str | None: ...
        def _maybe_downgrade(self, group: ConsumerGroup, records: list[Record]) -> None: ...

    # -- configuration ----------------------------------------------------------------

    def _group_settings(self, group_id: str) -> dict[str, str]:
        share = getattr(self.broker, "share", None)
        return share.consumer_overrides(group_id) if share is not None else {}

    def _session_ms(self, group_id: str) -> int:
        """The group's consumer.session.timeout.ms, else the broker's."""
        default = int(getattr(self.config, "consumer_session_timeout_ms", 45000))
        return int(self._group_settings(group_id).get(cs.SESSION_TIMEOUT, default))

    def _member_session_ms(self, group: ConsumerGroup, member: ConsumerMember) -> int:
        """A classic member keeps the session timeout it joined with."""
        if member.classic is not None:
            return member.classic.session_timeout_ms
        return self._session_ms(group.group_id)

    def _interval_ms(self, group_id: str) -> int:
        """The group's consumer.heartbeat.interval.ms, else the broker's."""
        default = int(getattr(self.config, "consumer_heartbeat_interval_ms", 5000))
        return int(self._group_settings(group_id).get(cs.HEARTBEAT_INTERVAL, default))

    # -- topics -----------------------------------------------------------------------

    def _topics(self) -> dict[str, Any]:
        return self.broker.metadata.topics

    def _ids(self, assignment: Assignment) -> dict[uuid.UUID, list[int]]:
        topics = self._topics()
        out: dict[uuid.UUID, list[int]] = {}
        for name, parts in sorted(assignment.items()):
            info = topics.get(name)
            if info is not None and parts:
                out[info.uuid] = sorted(parts)
        return out

    def _names(
        self, parts: dict[uuid.UUID, list[int]] | Iterable[tuple[uuid.UUID, list[int]]]
    ) -> Assignment:
        by_id = self.broker.metadata.by_id
        items = parts.items() if isinstance(parts, dict) else parts
        out: dict[str, frozenset[int]] = {}
        for topic_id, indexes in items:
            info = by_id.get(topic_id)
            if info is not None and indexes:
                out[info.name] = out.get(info.name, frozenset()) | frozenset(indexes)
        return out

    def _subscriptions(
        self, group: ConsumerGroup
    ) -> tuple[dict[str, frozenset[str]], dict[str, int]]:
        """Each member's subscribed topics as they exist now, and their partition counts."""
        topics = self._topics()
        subs: dict[str, frozenset[str]] = {}
        for mid, m in group.members.items():
            names = {t for t in m.subscribed_topic_names if t in topics}
            if m.subscribed_topic_regex:
                try:
                    rx = compile_topic_regex(m.subscribed_topic_regex)
                except RegexError:
                    rx = None
                if rx is not None:
                    names.update(
                        t for t, info in topics.items() if not info.internal and rx.fullmatch(t)
                    )
            subs[mid] = frozenset(names)
        wanted = set().union(*subs.values()) if subs else set()
        return subs, {t: topics[t].partitions for t in sorted(wanted)}

    # -- records ----------------------------------------------------------------------

    def _rec_epoch(self, g: ConsumerGroup) -> Record:
        return cr.encode_consumer_key(cr.GROUP_METADATA, g.group_id), cr.encode_group_epoch(
            g.group_epoch
        )

    def _rec_target_epoch(self, g: ConsumerGroup) -> Record:
        return (
            cr.encode_consumer_key(cr.TARGET_METADATA, g.group_id),
            cr.encode_target_epoch(g.target_epoch),
        )

    def _rec_member(self, g: ConsumerGroup, m: ConsumerMember) -> Record:
        value = cr.MemberMetadataValue(
            m.instance_id,
            m.rack_id,
            m.client_id,
            m.client_host,
            m.subscribed_topic_names,
            m.subscribed_topic_regex,
            m.rebalance_timeout_ms,
            m.server_assignor,
            m.classic,
        )
        key = cr.encode_consumer_key(cr.MEMBER_METADATA, g.group_id, m.member_id)
        return key, cr.encode_member_metadata(value)

    def _rec_target(self, g: ConsumerGroup, mid: str) -> Record:
        key = cr.encode_consumer_key(cr.TARGET_MEMBER, g.group_id, mid)
        return key, cr.encode_target_member(self._ids(g.target.get(mid, {})))

    def _rec_current(self, g: ConsumerGroup, m: ConsumerMember) -> Record:
        value = cr.CurrentAssignmentValue(
            m.member_epoch,
            m.previous_member_epoch,
            int(m.state),
            self._ids(m.assigned),
            self._ids(m.pending_revocation),
        )
        key = cr.encode_consumer_key(cr.CURRENT_ASSIGNMENT, g.group_id, m.member_id)
        return key, cr.encode_current_assignment(value)

    @staticmethod
    def _tombstones(g: ConsumerGroup, mid: str) -> list[Record]:
        return [
            (cr.encode_consumer_key(kind, g.group_id, mid), None)
            for kind in (cr.CURRENT_ASSIGNMENT, cr.TARGET_MEMBER, cr.MEMBER_METADATA)
        ]

    def _write_now(self, group_id: str, records: list[Record]) -> Landing | None:
        if not records:
            return None
        return self.store.topic.append(self.partition_for(group_id), records)

    async def _write(self, group_id: str, records: list[Record]) -> int:
        """Append the records; 0 once they are on the in-sync replicas."""
        try:
            appended = await landed(self._write_now(group_id, records))
        except (LogError, RecordError, KafkaError) as exc:
            return append_error_code(exc)
        code = await self._replication(appended)
        return commit_replication_error(code) if code else 0

    # -- ConsumerGroupHeartbeat -------------------------------------------------------

    def _invalid(self, a: HeartbeatArgs) -> HeartbeatResult | None:
        if not a.group_id:
            return _fail(_E.INVALID_REQUEST, "GroupId can't be empty.")
        if a.instance_id is not None and not a.instance_id:
            return _fail(_E.INVALID_REQUEST, "InstanceId can't be empty.")
        if a.member_epoch > 0 or a.member_epoch in (LEAVE_EPOCH, STATIC_LEAVE_EPOCH):
            if not a.member_id:
                return _fail(_E.INVALID_REQUEST, "MemberId can't be empty.")
        elif a.member_epoch == 0:
            if a.version >= 1 and not a.member_id:
                return _fail(_E.INVALID_REQUEST, "MemberId can't be empty.")
            if a.rebalance_timeout_ms < 0:
                return _fail(
                    _E.INVALID_REQUEST, "RebalanceTimeoutMs must be provided in first request."
                )
            if a.owned is None or a.owned:
                return _fail(_E.INVALID_REQUEST, "TopicPartitions must be empty when (re-)joining.")
            if a.subscribed_topic_names is None and a.subscribed_topic_regex is None:
                return _fail(
                    _E.INVALID_REQUEST,
                    "SubscribedTopicNames or SubscribedTopicRegex must be set in first request.",
                )
        else:
            return _fail(_E.INVALID_REQUEST, f"MemberEpoch {a.member_epoch} is invalid.")
        if a.member_epoch == STATIC_LEAVE_EPOCH and a.instance_id is None:
            return _fail(_E.INVALID_REQUEST, "InstanceId can't be null for a static leave.")
        if a.server_assignor is not None and a.server_assignor not in ASSIGNORS:
            return _fail(
                _E.UNSUPPORTED_ASSIGNOR,
                f"ServerAssignor {a.server_assignor} is not supported; supported: "
                + ", ".join(sorted(ASSIGNORS)),
            )
        if a.subscribed_topic_regex:
            try:
                compile_topic_regex(a.subscribed_topic_regex)
            except RegexError as exc:
                return _fail(_E.INVALID_REGULAR_EXPRESSION, str(exc))
        return None

    def consumer_group_active(self, group_id: str) -> bool:
        """Whether a consumer group with members holds ``group_id`` (classic joins refused)."""
        g = self.consumer_groups.get(group_id)
        return g is not None and bool(g.members)

    async def consumer_heartbeat(self, a: HeartbeatArgs) -> HeartbeatResult:
        bad = self._invalid(a)
        if bad is not None:
            return bad
        gid = a.group_id
        await self.create_offsets_topic()
        status = self._key_status(gid)
        if status:
            return _fail(status)
        classic = self.groups.get(gid)
        share = getattr(self.broker, "share", None)
        if share is not None and share.is_share_group(gid):
            return _fail(_E.GROUP_ID_NOT_FOUND, f"Group {gid} is not a consumer group.")
        records: list[Record] = []
        if classic is not None and classic.members:
            # a classic group with members: joined by a consumer-protocol member, it
            # becomes a consumer group if the migration policy allows (mixed.py)
            why = None if a.member_epoch == 0 else "it is a classic group"
            why = why or self._upgrade(classic, records)
            if why is not None:
                return _fail(_E.GROUP_ID_NOT_FOUND, f"Group {gid} is not a consumer group: {why}.")
        group = self.consumer_groups.get(gid)
        if a.member_epoch in (LEAVE_EPOCH, STATIC_LEAVE_EPOCH):
            return await self._leave(group, a, records)
        bump = False
        joined = a.member_epoch == 0
        if joined:
            if group is None:
                group = self.consumer_groups[gid] = ConsumerGroup(gid)
            member_id = a.member_id or uuid.uuid4().hex
            member = ConsumerMember(
                member_id,
                instance_id=a.instance_id,
                rack_id=a.rack_id,
                client_id=a.client_id,
                client_host=a.client_host,
                subscribed_topic_names=tuple(a.subscribed_topic_names or ()),
                subscribed_topic_regex=a.subscribed_topic_regex or None,
                rebalance_timeout_ms=a.rebalance_timeout_ms,
                server_assignor=a.server_assignor,
            )
            old_id = group.static_members.get(a.instance_id) if a.instance_id else None
            old = group.members.get(old_id) if old_id is not None else None
            if old is not None:
                if old.member_epoch != STATIC_LEAVE_EPOCH and old.member_id != member_id:
                    return _fail(
                        _E.UNRELEASED_INSTANCE_ID,
                        f"Static member {old.member_id} with instance id {a.instance_id} "
                        "has not left the group yet.",
                    )
                self._cancel_member_timer(old)
                bump = (old.subscribed_topic_names, old.subscribed_topic_regex) != (
                    member.subscribed_topic_names,
                    member.subscribed_topic_regex,
                )
                if old.member_epoch == STATIC_LEAVE_EPOCH:
                    old.member_epoch = old.previous_member_epoch
                group.replace_static(old, member)
                if old.member_id != member.member_id:
                    records.extend(self._tombstones(group, old.member_id))
                records.append(self._rec_target(group, member.member_id))
            else:
                previous = group.members.get(member_id)
                limit = self.config.consumer_max_size
                if previous is None and len(group.members) >= limit:
                    return _fail(
                        _E.GROUP_MAX_SIZE_REACHED,
                        f"The consumer group has reached its maximum capacity of {limit} members.",
                    )
                if previous is not None:  # a member rejoining from scratch (it was fenced)
                    self._cancel_member_timer(previous)
                    group.remove(member_id)
                group.add(member)
                bump = True
            records.append(self._rec_member(group, member))
        else:
            member = group.members.get(a.member_id) if group is not None else None
            if group is None or member is None:
                return _fail(
                    _E.UNKNOWN_MEMBER_ID, f"Member {a.member_id} is not a member of group {gid}."
                )
            if a.instance_id is not None and a.instance_id != member.instance_id:
                # (null: unchanged since the last heartbeat)
                return _fail(_E.FENCED_INSTANCE_ID, f"Instance id {a.instance_id} is fenced.")
            owned_now = self._flat_names(a.owned) if a.owned is not None else None
            if a.member_epoch > member.member_epoch or (
                a.member_epoch < member.member_epoch
                and (
                    a.member_epoch != member.previous_member_epoch
                    or owned_now is None
                    or not owned_now <= {(t, p) for t, ps in member.assigned.items() for p in ps}
                )
            ):
                return _fail(
                    _E.FENCED_MEMBER_EPOCH,
                    f"The member epoch {a.member_epoch} is fenced (current {member.member_epoch}).",
                )
            changed = False
            if (
                a.rebalance_timeout_ms >= 0
                and a.rebalance_timeout_ms != member.rebalance_timeout_ms
            ):
                member.rebalance_timeout_ms = a.rebalance_timeout_ms
                changed = True
            if (
                a.subscribed_topic_names is not None
                and tuple(a.subscribed_topic_names) != member.subscribed_topic_names
            ):
                member.subscribed_topic_names = tuple(a.subscribed_topic_names)
                changed = bump = True
            if (
                a.subscribed_topic_regex is not None
                and (a.subscribed_topic_regex or None) != member.subscribed_topic_regex
            ):
                member.subscribed_topic_regex = a.subscribed_topic_regex or None
                changed = bump = True
            if a.server_assignor is not None and a.server_assignor != member.server_assignor:
                member.server_assignor = a.server_assignor
                changed = bump = True
            if a.rack_id is not None and a.rack_id != member.rack_id:
                member.rack_id = a.rack_id
                changed = True
            if changed:
                records.append(self._rec_member(group, member))
        member.last_heartbeat = time.monotonic()
        self._advance(group, bump, records)
        owned = self._flat_names(a.owned) if a.owned is not None else None
        changed_assignment = group.reconcile(member, owned)
        if changed_assignment or joined:
            records.append(self._rec_current(group, member))
        if member.state == MemberState.UNREVOKED_PARTITIONS:
            if member.revocation_deadline is None:
                member.revocation_deadline = time.monotonic() + member.rebalance_timeout_ms / 1000
        else:
            member.revocation_deadline = None
        code = await self._write(gid, records)
        if code:
            return _fail(code, "the group's state could not be written")
        if (
            self.consumer_groups.get(gid) is not group
            or group.members.get(member.member_id) is not member
        ):
            return _fail(_E.NOT_COORDINATOR)  # unloaded or fenced while the write replicated
        self._schedule_member_timer(group, member)
        current = {(t, p) for t, ps in member.assigned.items() for p in ps}
        send = joined or changed_assignment or (owned is not None and owned != current)
        return HeartbeatResult(
            0,
            None,
            member.member_id,
            member.member_epoch,
            self._interval_ms(gid),
            self._ids(member.assigned) if send else None,
        )

    def _advance(self, group: ConsumerGroup, bump: bool, records: list[Record]) -> None:
        """Move the group epoch if ``bump`` or the subscribed topics changed, and compute
        the target assignment of a new group epoch."""
        subs, topic_meta = self._subscriptions(group)
        if topic_meta != group.subscribed_metadata:
            group.subscribed_metadata = topic_meta
            bump = True
        if bump:
            group.group_epoch += 1
            records.append(self._rec_epoch(group))
        if group.group_epoch > group.target_epoch:
            for mid in group.compute_target(
                topic_meta, subs, group.preferred_assignor(DEFAULT_ASSIGNOR)
            ):
                records.append(self._rec_target(group, mid))
            records.append(self._rec_target_epoch(group))

    def _flat_names(self, owned: list[tuple[uuid.UUID, list[int]]] | None) -> set[TopicPartition]:
        return {(t, p) for t, ps in self._names(owned or []).items() for p in ps}

    async def _leave(
        self, group: ConsumerGroup | None, a: HeartbeatArgs, records: list[Record]
    ) -> HeartbeatResult:
        member = None
        if group is not None:
            if a.instance_id is not None:
                mid = group.static_members.get(a.instance_id)
                member = group.members.get(mid) if mid is not None else None
                if member is not None and member.member_id != a.member_id:
                    return _fail(_E.FENCED_INSTANCE_ID, f"Instance id {a.instance_id} is fenced.")
            else:
                member = group.members.get(a.member_id)
        if group is None or member is None:
            return _fail(
                _E.UNKNOWN_MEMBER_ID, f"Member {a.member_id} is not a member of group {a.group_id}."
            )
        if a.member_epoch == STATIC_LEAVE_EPOCH:
            # keeps its partitions until it comes back or its session times out
            member.previous_member_epoch = member.member_epoch
            member.member_epoch = STATIC_LEAVE_EPOCH
            records.append(self._rec_current(group, member))
            member.last_heartbeat = time.monotonic()
            self._schedule_member_timer(group, member)
        else:
            records.extend(self._remove_consumer_member(group, member))
        code = await self._write(a.group_id, records)
        if code:
            return _fail(code, "the group's state could not be written")
        return HeartbeatResult(0, None, member.member_id, a.member_epoch, 0, None)

    def _remove_consumer_member(self, group: ConsumerGroup, member: ConsumerMember) -> list[Record]:
        """Remove a member; when the last consumer-protocol member of a mixed group goes,
        the classic members left form a classic group again (policy permitting)."""
        self._cancel_member_timer(member)
        group.remove(member.member_id)
        group.group_epoch += 1
        records = [*self._tombstones(group, member.member_id), self._rec_epoch(group)]
        if not member.is_classic:
            self._maybe_downgrade(group, records)
        return records

    # -- clocks -----------------------------------------------------------------------

    @staticmethod
    def _cancel_member_timer(member: ConsumerMember) -> None:
        if member.timer is not None:
            member.timer.cancel()
            member.timer = None

    def _schedule_member_timer(self, group: ConsumerGroup, member: ConsumerMember) -> None:
        self._cancel_member_timer(member)
        now = time.monotonic()
        due = member.last_heartbeat + self._member_session_ms(group, member) / 1000
        for deadline in (member.revocation_deadline, member.sync_deadline):
            if deadline is not None:
                due = min(due, deadline)
        member.timer = asyncio.get_running_loop().call_later(
            max(due - now, 0.0), self._on_consumer_member_timer, group, member
        )

    def _on_consumer_member_timer(self, group: ConsumerGroup, member: ConsumerMember) -> None:
        member.timer = None
        if (
            self.consumer_groups.get(group.group_id) is not group
            or group.members.get(member.member_id) is not member
        ):
            return
        now = time.monotonic()
        expired = now >= member.last_heartbeat + self._member_session_ms(group, member) / 1000
        late = member.revocation_deadline is not None and now >= member.revocation_deadline
        unsynced = member.sync_deadline is not None and now >= member.sync_deadline
        if not expired and not late and not unsynced:
            self._schedule_member_timer(group, member)
            return
        if unsynced and not expired:
            log.info(
                "group %s: classic member %s sent no SyncGroup within its rebalance timeout",
                group.group_id,
                member.member_id,
            )
        records = self._remove_consumer_member(group, member)
        try:
            self._write_now(group.group_id, records)
        except (LogError, RecordError, KafkaError) as exc:
            # the member is gone here; a lost tombstone leaves it in the log until the
            # next change of the group rewrites the epoch, and a reload expires it again
            log.warning("group %s: cannot record removal: %s", group.group_id, exc)
        self.member_expirations.inc()  # type: ignore[attr-defined]

    def _revive_consumer(self, groups: Iterable[ConsumerGroup]) -> None:
        """Loaded members get a full session from now."""
        for g in groups:
            for m in g.members.values():
                m.last_heartbeat = time.monotonic()
                self._schedule_member_timer(g, m)

    def _drop_consumer_groups(self, doomed: Iterable[str]) -> None:
        for gid in doomed:
            g = self.consumer_groups.pop(gid, None)
            if g is not None:
                for m in g.members.values():
                    self._cancel_member_timer(m)

    # -- offsets, listing, deleting ---------------------------------------------------

    def consumer_commit_error(self, group_id: str, member_id: str, member_epoch: int) -> int | None:
        """None if ``group_id`` is no consumer group; else 0 or the error of a commit
        (Kafka's checks: an empty group takes admin commits, a member must exist and
        commit with its current epoch)."""
        g = self.consumer_groups.get(group_id)
        if g is None:
            return None
        if member_epoch < 0 and not g.members:
            return 0
        member = g.members.get(member_id)
        if member is None:
            return int(_E.UNKNOWN_MEMBER_ID)
        if member_epoch != member.member_epoch:
            # a classic member commits with its generation, which is its member epoch
            return int(_E.ILLEGAL_GENERATION if member.is_classic else _E.STALE_MEMBER_EPOCH)
        return 0

    def consumer_fetch_error(self, group_id: str, member_id: str | None, member_epoch: int) -> int:
        """The error of an OffsetFetch naming a member (v9+), 0 if it may read."""
        g = self.consumer_groups.get(group_id)
        if g is None or (member_id is None and member_epoch < 0):
            return 0
        member = g.members.get(member_id or "")
        if member is None:
            return int(_E.UNKNOWN_MEMBER_ID)
        if member_epoch != member.member_epoch:
            return int(_E.ILLEGAL_GENERATION if member.is_classic else _E.STALE_MEMBER_EPOCH)
        return 0

    def _consumer_tombstones(self, group_id: str) -> list[Record]:
        return [
            (cr.encode_consumer_key(kind, group_id), None)
            for kind in (cr.TARGET_METADATA, cr.PARTITION_METADATA, cr.GROUP_METADATA)
        ]

    def drop_empty_consumer_group(self, group_id: str) -> None:
        """A classic join takes over an empty consumer group's id: its tombstones are
        queued and it is forgotten at once. Safe without waiting: the classic group's
        own records go to the same partition after them, and a storage failure that
        loses the tombstones takes the partition offline, so those fail (and are
        answered as failed) too."""
        if group_id not in self.consumer_groups:
            return
        try:
            self._write_now(group_id, self._consumer_tombstones(group_id))
        except (LogError, RecordError, KafkaError) as exc:  # not queued: the group stays
            log.warning("group %s: cannot tombstone the empty consumer group: %s", group_id, exc)
            return
        del self.consumer_groups[group_id]

    async def delete_consumer_group(self, group_id: str) -> int | None:
        """None if no consumer group; else NON_EMPTY_GROUP, the write's error (the group
        kept as it was), or 0 once its records are tombstoned (then it is forgotten)."""
        g = self.consumer_groups.get(group_id)
        if g is None:
            return None
        if g.members:
            return int(_E.NON_EMPTY_GROUP)
        try:
            appended = await landed(self._write_now(group_id, self._consumer_tombstones(group_id)))
        except (LogError, RecordError, KafkaError) as exc:
            return append_error_code(exc)
        if self.consumer_groups.get(group_id) is g:
            if g.members:
                # a member joined while the tombstones were written: its records follow
                # them in the log, so the group lives on there and here
                return int(_E.NON_EMPTY_GROUP)
            del self.consumer_groups[group_id]
        code = await self._replication(appended)
        return commit_replication_error(code) if code else 0

    # -- loading ----------------------------------------------------------------------

    def _install_consumer(self, part: LoadedPartition) -> None:
        for gid, recs in part.consumer.items():
            epoch = recs.get((cr.GROUP_METADATA, None))
            if not isinstance(epoch, int):
                continue  # deleted (or never had its metadata record)
            g = ConsumerGroup(gid)
            g.group_epoch = epoch
            target_epoch = recs.get((cr.TARGET_METADATA, None))
            g.target_epoch = target_epoch if isinstance(target_epoch, int) else 0
            for (kind, mid), value in recs.items():
                if (
                    kind != cr.MEMBER_METADATA
                    or mid is None
                    or not isinstance(value, cr.MemberMetadataValue)
                ):
                    continue
                m = ConsumerMember(
                    mid,
                    instance_id=value.instance_id,
                    rack_id=value.rack_id,
                    client_id=value.client_id,
                    client_host=value.client_host,
                    subscribed_topic_names=value.subscribed_topic_names,
                    subscribed_topic_regex=value.subscribed_topic_regex,
                    rebalance_timeout_ms=value.rebalance_timeout_ms,
                    server_assignor=value.server_assignor,
                    classic=value.classic,
                )
                current = recs.get((cr.CURRENT_ASSIGNMENT, mid))
                if isinstance(current, cr.CurrentAssignmentValue):
                    m.member_epoch = current.member_epoch
                    m.previous_member_epoch = current.previous_member_epoch
                    try:
                        m.state = MemberState(current.state)
                    except ValueError:
                        m.state = MemberState.UNKNOWN
                    m.assigned = self._names(current.assigned)
                    m.pending_revocation = self._names(current.pending_revocation)
                target = recs.get((cr.TARGET_MEMBER, mid))
                if isinstance(target, dict):
                    g.target[mid] = self._names(target)
                g.add(m)
            # what the target was computed from, so a restart alone moves no epoch
            g.subscribed_metadata = self._subscriptions(g)[1]
            self.consumer_groups[gid] = g
