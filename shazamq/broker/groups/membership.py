"""The classic rebalance protocol: JoinGroup, SyncGroup, Heartbeat, LeaveGroup and timers.

Each handler changes group state synchronously on the event loop; a JoinGroup or
SyncGroup that has to wait for other members is parked on a future that a later request
or a timer resolves. The group's membership record is written to ``__consumer_offsets``
before the leader's assignment is handed out, so a restarted broker knows the group.

Timers (``loop.call_later``):

* join timer, per group: the rebalance timeout (or, for a group leaving Empty, the
  initial rebalance delay, extended while new members keep arriving, up to the
  rebalance timeout). When it fires, dynamic members that did not rejoin are dropped and
  the next generation starts with whoever joined.
* sync timer, per group: members that have not sent SyncGroup within the rebalance
  timeout of a generation are removed, which starts another rebalance.
* member timer, one per member: checks the last heartbeat against the session timeout
  and removes a silent member. A member parked in JoinGroup or SyncGroup is kept alive;
  a new member parked in JoinGroup only for five minutes.
* pending member timer: a member id handed out with MEMBER_ID_REQUIRED that is not used
  within the session timeout is forgotten.

In a cluster a group metadata write counts once the in-sync replicas have it. What it
makes visible waits until then: the leader's assignment is handed out, and a static
member's new id confirmed, only after replication; a failure is handled as a failed
append is (members sent back to join, the static member's old id restored), provided
the group is still where the write left it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shazamq.broker.log import LogError
from shazamq.protocol.errors import ErrorCode, KafkaError
from shazamq.protocol.records import RecordError

from .group import Group, GroupState, JoinResult, Member, SyncResult
from .internal_topic import landed
from .offsets_codec import GroupMetadataValue, MemberRecord
from .offsets_store import append_error_code, group_replication_error

if TYPE_CHECKING:
    from collections.abc import Callable

    from prometheus_client import Counter

    from shazamq.config import GroupsConfig

    from .coordinator import _Ownership
    from .internal_topic import Landing
    from .offsets_store import OffsetsStore

__all__ = ["MembershipMixin"]

log = logging.getLogger(__name__)

# How long a new member whose join has not completed is kept waiting for it. A constant
# in Kafka's group coordinator too (5 minutes, no broker setting): no client or operator
# tunes it, it only bounds how long an abandoned join keeps a member in the group.
NEW_MEMBER_JOIN_TIMEOUT_MS = 300_000

_E = ErrorCode


class MembershipMixin:
    """Group membership and rebalances; mixed into :class:`GroupCoordinator`."""

    config: GroupsConfig
    store: OffsetsStore
    groups: dict[str, Group]
    loaded: bool
    _persisted: set[str]
    rebalances: Counter
    member_expirations: Counter

    if TYPE_CHECKING:

        def _key_status(self, group_id: str) -> int: ...
        async def create_offsets_topic(self) -> None: ...
        def _ownership(self, group_id: str) -> _Ownership | None: ...
        def _still_serving(self, group: Group, own: _Ownership | None) -> bool: ...
        async def _replication(self, appended: Landing | None) -> int: ...
        def _when_replicated(
            self, appended: Landing | None, then: Callable[[int], None]
        ) -> None: ...

    def _loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def _validate_member(self, group: Group, member_id: str, instance_id: str | None) -> int:
        """UNKNOWN_MEMBER_ID / FENCED_INSTANCE_ID the way Kafka checks a member."""
        if instance_id is not None:
            known = group.static_member_id(instance_id)
            if known is None:
                return int(_E.UNKNOWN_MEMBER_ID)
            if known != member_id:
                return int(_E.FENCED_INSTANCE_ID)
            return 0
        if not group.has(member_id):
            return int(_E.UNKNOWN_MEMBER_ID)
        return 0

    def _join_error(self, member_id: str, code: int) -> JoinResult:
        return JoinResult(int(code), member_id)

    # -- JoinGroup --------------------------------------------------------------------

    async def join_group(
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
        supports_skip_assignment: bool = False,
        reason: str | None = None,
    ) -> JoinResult:
        if not group_id:
            return self._join_error(member_id, _E.INVALID_GROUP_ID)
        await self.create_offsets_topic()
        status = self._key_status(group_id)
        if status:
            return self._join_error(member_id, status)
        share = getattr(self.broker, "share", None)
        if share is not None and share.is_share_group(group_id):
            return self._join_error(member_id, _E.INCONSISTENT_GROUP_PROTOCOL)
        cfg = self.config
        if not cfg.min_session_timeout_ms <= session_timeout_ms <= cfg.max_session_timeout_ms:
            return self._join_error(member_id, _E.INVALID_SESSION_TIMEOUT)
        if rebalance_timeout_ms < 0:
            rebalance_timeout_ms = session_timeout_ms
        unknown = member_id == ""
        group = self.groups.get(group_id)
        if group is None:
            if not unknown:
                return self._join_error(member_id, _E.UNKNOWN_MEMBER_ID)
            group = self.groups[group_id] = Group(group_id)
        fut: asyncio.Future[JoinResult] = self._loop().create_future()
        over_capacity = len(group.members) > cfg.max_size
        if (unknown and len(group.members) >= cfg.max_size) or (
            over_capacity and group.has(member_id) and not group.get(member_id).awaiting_join
        ):
            if group.has(member_id):
                self._remove_member_and_update(group, group.get(member_id), "group over capacity")
            return self._join_error("", _E.GROUP_MAX_SIZE_REACHED)
        args = _JoinArgs(
            member_id,
            group_instance_id,
            client_id,
            client_host,
            session_timeout_ms,
            rebalance_timeout_ms,
            protocol_type,
            protocols,
            supports_skip_assignment,
        )
        if unknown:
            self._join_unknown(group, fut, args, require_known_member_id)
        else:
            self._join_known(group, fut, args)
        if group.is_state(GroupState.PREPARING_REBALANCE):
            self._try_complete_join(group)
        if group.is_removable() and group_id not in self._persisted and not group.members:
            # a failed first join leaves nothing worth keeping
            self.groups.pop(group_id, None)
        if reason:
            log.debug("join of %s to %s: %s", member_id or "new member", group_id, reason)
        return await fut

    def _join_unknown(
        self,
        group: Group,
        fut: asyncio.Future[JoinResult],
        a: _JoinArgs,
        require_known_member_id: bool,
    ) -> None:
        if group.is_state(GroupState.DEAD):
            fut.set_result(self._join_error("", _E.COORDINATOR_NOT_AVAILABLE))
            return
        if not group.supports_protocols(a.protocol_type, [n for n, _ in a.protocols]):
            fut.set_result(self._join_error("", _E.INCONSISTENT_GROUP_PROTOCOL))
            return
        new_id = group.new_member_id(a.client_id, a.instance_id)
        if a.instance_id is not None:
            old_id = group.static_member_id(a.instance_id)
            if old_id is not None:
                log.info(
                    "static member %s of group %s rejoins with a new member id %s (was %s)",
                    a.instance_id,
                    group.group_id,
                    new_id,
                    old_id,
                )
                self._replace_static_member(group, fut, old_id, new_id, a)
            else:
                self._add_member_and_rebalance(group, fut, new_id, a)
        elif require_known_member_id:
            group.pending_members.add(new_id)
            self._loop().call_later(
                a.session_timeout_ms / 1000, self._on_pending_member_timer, group, new_id
            )
            fut.set_result(self._join_error(new_id, _E.MEMBER_ID_REQUIRED))
        else:
            self._add_member_and_rebalance(group, fut, new_id, a)

    def _join_known(self, group: Group, fut: asyncio.Future[JoinResult], a: _JoinArgs) -> None:
        member_id = a.member_id
        if group.is_state(GroupState.DEAD):
            fut.set_result(self._join_error(member_id, _E.COORDINATOR_NOT_AVAILABLE))
            return
        if not group.supports_protocols(a.protocol_type, [n for n, _ in a.protocols]):
            fut.set_result(self._join_error(member_id, _E.INCONSISTENT_GROUP_PROTOCOL))
            return
        if member_id in group.pending_members:
            if a.instance_id is not None:
                # a pending member id is never a static member's: treat as unknown
                fut.set_result(self._join_error(member_id, _E.UNKNOWN_MEMBER_ID))
                return
            self._add_member_and_rebalance(group, fut, member_id, a)
            return
        error = self._validate_member(group, member_id, a.instance_id)
        if error:
            fut.set_result(self._join_error(member_id, error))
            return
        member = group.get(member_id)
        state = group.state
        if state is GroupState.PREPARING_REBALANCE:
            self._update_member_and_rebalance(group, member, fut, a)
        elif state is GroupState.COMPLETING_REBALANCE:
            if member.matches(a.protocols):
                # the member missed the JoinGroup answer: repeat it
                fut.set_result(self._join_result(group, member, leader_gets_members=True))
            else:
                self._update_member_and_rebalance(group, member, fut, a)
        elif state is GroupState.STABLE:
            if group.is_leader(member_id) or not member.matches(a.protocols):
                # a leader's rejoin asks for a new assignment (e.g. topic metadata changed)
                self._update_member_and_rebalance(group, member, fut, a)
            else:
                fut.set_result(self._join_result(group, member, leader_gets_members=False))
        else:
            fut.set_result(self._join_error(member_id, _E.UNKNOWN_MEMBER_ID))

    def _join_result(
        self, group: Group, member: Member, *, leader_gets_members: bool
    ) -> JoinResult:
        is_leader = group.is_leader(member.member_id)
        return JoinResult(
            0,
            member.member_id,
            group.generation_id,
            group.protocol_type,
            group.protocol_name,
            group.leader_id or "",
            group.member_metadata() if (is_leader and leader_gets_members) else (),
        )

    def _add_member_and_rebalance(
        self, group: Group, fut: asyncio.Future[JoinResult], member_id: str, a: _JoinArgs
    ) -> None:
        member = Member(
            member_id=member_id,
            group_instance_id=a.instance_id,
            client_id=a.client_id,
            client_host=a.client_host,
            rebalance_timeout_ms=a.rebalance_timeout_ms,
            session_timeout_ms=a.session_timeout_ms,
            protocol_type=a.protocol_type,
            protocols=list(a.protocols),
            join_future=fut,
            is_new=True,
        )
        if (
            group.is_state(GroupState.PREPARING_REBALANCE)
            and group.previous_state is GroupState.EMPTY
        ):
            group.new_member_added = True
        group.add(member)
        self._ensure_member_timer(group, member)
        self._maybe_prepare_rebalance(group, f"adding member {member_id}")

    def _update_member_and_rebalance(
        self, group: Group, member: Member, fut: asyncio.Future[JoinResult], a: _JoinArgs
    ) -> None:
        self._update_member(member, fut, a)
        self._maybe_prepare_rebalance(group, f"member {member.member_id} rejoined")

    @staticmethod
    def _update_member(member: Member, fut: asyncio.Future[JoinResult], a: _JoinArgs) -> None:
        member.protocols = list(a.protocols)
        member.rebalance_timeout_ms = a.rebalance_timeout_ms
        member.session_timeout_ms = a.session_timeout_ms
        member.client_id = a.client_id
        member.client_host = a.client_host
        # a JoinGroup parked by an earlier attempt of the same member is superseded
        member.complete_join(JoinResult(int(_E.REBALANCE_IN_PROGRESS), member.member_id))
        member.join_future = fut

    def _replace_static_member(
        self,
        group: Group,
        fut: asyncio.Future[JoinResult],
        old_id: str,
        new_id: str,
        a: _JoinArgs,
    ) -> None:
        assert a.instance_id is not None
        current_leader = group.leader_id
        old = group.get(old_id)
        # whoever still holds the old member id is a zombie of this instance
        old.complete_join(JoinResult(int(_E.FENCED_INSTANCE_ID), old_id))
        old.complete_sync(SyncResult(int(_E.FENCED_INSTANCE_ID)))
        saved = (
            list(old.protocols),
            old.rebalance_timeout_ms,
            old.session_timeout_ms,
            old.client_id,
            old.client_host,
        )
        member = group.replace_static_member(a.instance_id, old_id, new_id)
        member.last_heartbeat = time.monotonic()
        self._update_member(member, fut, a)
        if group.is_state(GroupState.STABLE):
            if group.protocol_name == group.select_protocol():
                # same protocol: no rebalance, just remember the new member id
                own = self._ownership(group.group_id)

                def revert(code: int) -> None:
                    assert a.instance_id is not None
                    member.join_future = None
                    (
                        member.protocols,
                        member.rebalance_timeout_ms,
                        member.session_timeout_ms,
                        member.client_id,
                        member.client_host,
                    ) = saved
                    group.replace_static_member(a.instance_id, new_id, old_id)
                    if not fut.done():
                        fut.set_result(self._join_error("", code))

                try:
                    appended = self._store_group(group, None)
                except (LogError, RecordError, KafkaError) as exc:
                    log.warning(
                        "group %s: cannot persist static member %s: %s; reverting",
                        group.group_id,
                        a.instance_id,
                        exc,
                    )
                    revert(append_error_code(exc))
                    return
                if a.supports_skip_assignment:
                    is_leader = group.is_leader(new_id)
                    result = JoinResult(
                        0,
                        new_id,
                        group.generation_id,
                        group.protocol_type,
                        group.protocol_name,
                        group.leader_id or "",
                        group.member_metadata() if is_leader else (),
                        skip_assignment=is_leader,
                    )
                else:
                    # The old leader id keeps a rejoining static leader from assigning:
                    # a Stable group would not hand out a new assignment anyway.
                    result = JoinResult(
                        0,
                        new_id,
                        group.generation_id,
                        group.protocol_type,
                        group.protocol_name,
                        current_leader or "",
                    )

                def confirmed(code: int) -> None:
                    if not code:
                        member.complete_join(result)
                        return
                    if (
                        self._still_serving(group, own)
                        and group.static_member_id(a.instance_id) == new_id
                        and group.members.get(new_id) is member
                    ):
                        log.warning(
                            "group %s: static member %s not replicated (error %d); reverting",
                            group.group_id,
                            a.instance_id,
                            code,
                        )
                        revert(group_replication_error(code))
                    else:
                        member.complete_join(JoinResult(group_replication_error(code), new_id))

                self._when_replicated(appended, confirmed)
            else:
                self._maybe_prepare_rebalance(
                    group, f"static member {a.instance_id} changed the selected protocol"
                )
        elif group.is_state(GroupState.COMPLETING_REBALANCE):
            # the leader may be assigning to the old member id: start over
            self._prepare_rebalance(group, f"static member {a.instance_id} rejoined")

    # -- the join phase ---------------------------------------------------------------

    def _maybe_prepare_rebalance(self, group: Group, reason: str) -> None:
        if group.can_rebalance():
            self._prepare_rebalance(group, reason)

    def _prepare_rebalance(self, group: Group, reason: str) -> None:
        if group.is_state(GroupState.COMPLETING_REBALANCE):
            self._reset_and_propagate_assignment_error(group, int(_E.REBALANCE_IN_PROGRESS))
        group.cancel_timers()
        initial = self.config.initial_rebalance_delay_ms
        if group.is_state(GroupState.EMPTY):
            group.in_initial_delay = True
            group.new_member_added = False
            delay_ms = initial
            group.initial_delay_remaining_ms = max(group.rebalance_timeout_ms - initial, 0)
        else:
            group.in_initial_delay = False
            delay_ms = group.rebalance_timeout_ms
        group.transition(GroupState.PREPARING_REBALANCE)
        self.rebalances.inc()
        log.info(
            "preparing to rebalance group %s (generation %d): %s",
            group.group_id,
            group.generation_id,
            reason,
        )
        group.join_timer = self._loop().call_later(delay_ms / 1000, self._on_join_timer, group)
        self._try_complete_join(group)

    def _try_complete_join(self, group: Group) -> None:
        if (
            group.is_state(GroupState.PREPARING_REBALANCE)
            and not group.in_initial_delay
            and group.all_members_joined()
        ):
            self._complete_join(group)

    def _on_join_timer(self, group: Group) -> None:
        group.join_timer = None
        if not group.is_state(GroupState.PREPARING_REBALANCE):
            return
        if group.in_initial_delay:
            if group.new_member_added and group.initial_delay_remaining_ms > 0:
                group.new_member_added = False
                delay = min(
                    self.config.initial_rebalance_delay_ms, group.initial_delay_remaining_ms
                )
                group.initial_delay_remaining_ms -= delay
                group.join_timer = self._loop().call_later(delay / 1000, self._on_join_timer, group)
                return
            group.in_initial_delay = False
        self._complete_join(group)

    def _complete_join(self, group: Group) -> None:
        if group.join_timer is not None:
            group.join_timer.cancel()
            group.join_timer = None
        group.in_initial_delay = False
        for member in group.not_yet_rejoined():
            if not member.is_static:
                log.info(
                    "member %s of group %s did not rejoin in time; removing it",
                    member.member_id,
                    group.group_id,
                )
                self._drop_member(group, member, int(_E.UNKNOWN_MEMBER_ID))
        if group.is_state(GroupState.DEAD):
            return
        if not group.elect_joined_leader() and group.members:
            # only static members that have not rejoined are left: wait for them
            group.join_timer = self._loop().call_later(
                max(group.rebalance_timeout_ms, 1) / 1000, self._on_join_timer, group
            )
            return
        group.init_next_generation()
        if group.is_state(GroupState.EMPTY):
            log.info("group %s is empty at generation %d", group.group_id, group.generation_id)
            if group.protocol_type is not None:
                try:
                    appended = self._store_group(group, None)
                except (LogError, RecordError, KafkaError) as exc:
                    log.warning("group %s: cannot persist empty metadata: %s", group.group_id, exc)
                else:

                    def check(code: int) -> None:
                        if code:
                            log.warning(
                                "group %s: empty metadata not replicated (error %d)",
                                group.group_id,
                                code,
                            )

                    self._when_replicated(appended, check)
            return
        log.info(
            "group %s stabilised at generation %d with %d members, protocol %s, leader %s",
            group.group_id,
            group.generation_id,
            len(group.members),
            group.protocol_name,
            group.leader_id,
        )
        for member in list(group.members.values()):
            member.complete_join(self._join_result(group, member, leader_gets_members=True))
            member.last_heartbeat = time.monotonic()
            member.is_new = False
        generation = group.generation_id
        group.sync_timer = self._loop().call_later(
            max(group.rebalance_timeout_ms, 1) / 1000, self._on_sync_timer, group, generation
        )

    def _on_sync_timer(self, group: Group, generation: int) -> None:
        group.sync_timer = None
        if group.generation_id != generation or not group.is_state(
            GroupState.COMPLETING_REBALANCE, GroupState.STABLE
        ):
            return
        laggards = [group.members[m] for m in list(group.pending_sync) if m in group.members]
        if not laggards:
            return
        for member in laggards:
            log.info(
                "member %s of group %s did not send SyncGroup in time; removing it",
                member.member_id,
                group.group_id,
            )
            self._remove_member_and_update(group, member, "SyncGroup timeout")

    # -- SyncGroup --------------------------------------------------------------------

    async def sync_group(
        self,
        *,
        group_id: str,
        generation_id: int,
        member_id: str,
        group_instance_id: str | None,
        protocol_type: str | None,
        protocol_name: str | None,
        assignments: Mapping[str, bytes],
    ) -> SyncResult:
        if not group_id:
            return SyncResult(int(_E.INVALID_GROUP_ID))
        status = self._key_status(group_id)
        if status == _E.COORDINATOR_LOAD_IN_PROGRESS:
            return SyncResult(int(_E.REBALANCE_IN_PROGRESS))
        if status:
            return SyncResult(status)
        group = self.groups.get(group_id)
        if group is None:
            return SyncResult(int(_E.UNKNOWN_MEMBER_ID))
        if group.is_state(GroupState.DEAD):
            return SyncResult(int(_E.COORDINATOR_NOT_AVAILABLE))
        error = self._validate_member(group, member_id, group_instance_id)
        if error:
            return SyncResult(error)
        if generation_id != group.generation_id:
            return SyncResult(int(_E.ILLEGAL_GENERATION))
        if (protocol_type is not None and protocol_type != group.protocol_type) or (
            protocol_name is not None and protocol_name != group.protocol_name
        ):
            return SyncResult(int(_E.INCONSISTENT_GROUP_PROTOCOL))
        member = group.get(member_id)
        if group.is_state(GroupState.EMPTY):
            return SyncResult(int(_E.UNKNOWN_MEMBER_ID))
        if group.is_state(GroupState.PREPARING_REBALANCE):
            return SyncResult(int(_E.REBALANCE_IN_PROGRESS))
        group.pending_sync.discard(member_id)
        self._maybe_cancel_sync_timer(group)
        if group.is_state(GroupState.STABLE):
            member.last_heartbeat = time.monotonic()
            return SyncResult(0, member.assignment, group.protocol_type, group.protocol_name)
        # CompletingRebalance: park until the leader's assignment is stored
        fut: asyncio.Future[SyncResult] = self._loop().create_future()
        member.complete_sync(SyncResult(int(_E.REBALANCE_IN_PROGRESS)))
        member.sync_future = fut
        if group.is_leader(member_id):
            full = {mid: bytes(assignments.get(mid, b"")) for mid in group.members}
            unknown = set(assignments) - set(group.members)
            if unknown:
                log.debug("group %s: ignoring assignments to non-members %s", group_id, unknown)
            own = self._ownership(group_id)
            generation = group.generation_id
            try:
                appended = await landed(self._store_group(group, full))
            except (LogError, RecordError, KafkaError) as exc:
                log.warning("group %s: cannot persist the assignment: %s", group_id, exc)
                self._reset_and_propagate_assignment_error(group, append_error_code(exc))
                self._maybe_prepare_rebalance(group, "failed to store the assignment")
                return await fut
            code = await self._replication(appended)
            if (
                not self._still_serving(group, own)
                or generation != group.generation_id
                or not group.is_state(GroupState.COMPLETING_REBALANCE)
            ):
                # the group moved on while the write replicated (a rebalance, an unload):
                # whatever moved it answered the parked requests
                pass
            elif code:
                log.warning(
                    "group %s: the assignment was not replicated (error %d)", group_id, code
                )
                self._reset_and_propagate_assignment_error(group, group_replication_error(code))
                self._maybe_prepare_rebalance(group, "failed to store the assignment")
            else:
                for mid, assignment in full.items():
                    if mid in group.members:
                        group.members[mid].assignment = assignment
                group.transition(GroupState.STABLE)
                self._propagate_assignment(group, 0)
        return await fut

    def _maybe_cancel_sync_timer(self, group: Group) -> None:
        if not group.pending_sync and group.sync_timer is not None:
            group.sync_timer.cancel()
            group.sync_timer = None

    def _reset_and_propagate_assignment_error(self, group: Group, error: int) -> None:
        for member in group.members.values():
            member.assignment = b""
        self._propagate_assignment(group, error)

    def _propagate_assignment(self, group: Group, error: int) -> None:
        for member in group.members.values():
            result = SyncResult(
                error,
                member.assignment if not error else b"",
                group.protocol_type,
                group.protocol_name,
            )
            if member.complete_sync(result):
                member.last_heartbeat = time.monotonic()

    # -- Heartbeat / LeaveGroup -------------------------------------------------------

    def heartbeat(
        self, group_id: str, generation_id: int, member_id: str, group_instance_id: str | None
    ) -> int:
        if not group_id:
            return int(_E.INVALID_GROUP_ID)
        status = self._key_status(group_id)
        if status == _E.COORDINATOR_LOAD_IN_PROGRESS:
            return 0  # Kafka answers a heartbeat blindly while the group loads
        if status:
            return status
        group = self.groups.get(group_id)
        if group is None:
            return int(_E.UNKNOWN_MEMBER_ID)
        if group.is_state(GroupState.DEAD):
            return int(_E.COORDINATOR_NOT_AVAILABLE)
        error = self._validate_member(group, member_id, group_instance_id)
        if error:
            return error
        member = group.get(member_id)
        state = group.state
        if state is GroupState.EMPTY:
            return int(_E.UNKNOWN_MEMBER_ID)
        if state is GroupState.PREPARING_REBALANCE:
            member.last_heartbeat = time.monotonic()
            return int(_E.REBALANCE_IN_PROGRESS)
        if generation_id != group.generation_id:
            return int(_E.ILLEGAL_GENERATION)
        member.last_heartbeat = time.monotonic()
        return 0

    def leave_group(
        self, group_id: str, members: list[tuple[str, str | None]]
    ) -> tuple[int, list[tuple[str, str | None, int]]]:
        """Returns the top-level error and, per leaving member, its error."""
        if not group_id:
            return int(_E.INVALID_GROUP_ID), []
        status = self._key_status(group_id)
        if status:
            return status, []
        group = self.groups.get(group_id)
        if group is None:
            return 0, [(m, i, int(_E.UNKNOWN_MEMBER_ID)) for m, i in members]
        if group.is_state(GroupState.DEAD):
            return int(_E.COORDINATOR_NOT_AVAILABLE), []
        out = []
        for member_id, instance_id in members:
            if member_id and group.is_static_member_fenced(member_id, instance_id):
                out.append((member_id, instance_id, int(_E.FENCED_INSTANCE_ID)))
                continue
            if member_id in group.pending_members:
                group.pending_members.discard(member_id)
                self._try_complete_join(group)
                out.append((member_id, instance_id, 0))
                continue
            target = group.static_member_id(instance_id) or member_id
            member = group.members.get(target)
            if member is None:
                out.append((member_id, instance_id, int(_E.UNKNOWN_MEMBER_ID)))
                continue
            log.info(
                "member %s (instance %s) leaves group %s",
                member.member_id,
                member.group_instance_id,
                group_id,
            )
            self._remove_member_and_update(group, member, f"member {member.member_id} left")
            out.append((member_id, instance_id, 0))
        return 0, out

    # -- membership changes and timers ------------------------------------------------

    def _drop_member(self, group: Group, member: Member, error: int) -> None:
        member.complete_join(JoinResult(error, ""))
        member.complete_sync(SyncResult(error))
        if member.timer is not None:
            member.timer.cancel()
            member.timer = None
        group.remove(member.member_id)

    def _remove_member_and_update(self, group: Group, member: Member, reason: str) -> None:
        self._drop_member(group, member, int(_E.UNKNOWN_MEMBER_ID))
        if group.is_state(GroupState.STABLE, GroupState.COMPLETING_REBALANCE):
            self._maybe_prepare_rebalance(group, reason)
        elif group.is_state(GroupState.PREPARING_REBALANCE):
            self._try_complete_join(group)

    def _ensure_member_timer(self, group: Group, member: Member) -> None:
        if member.timer is None:
            member.timer = self._loop().call_later(
                member.session_timeout_ms / 1000, self._on_member_timer, group, member
            )

    def _on_member_timer(self, group: Group, member: Member) -> None:
        member.timer = None
        if group.members.get(member.member_id) is not member:
            return
        now = time.monotonic()
        session = member.session_timeout_ms / 1000
        if member.awaiting_join:
            if member.is_new:
                deadline = member.last_heartbeat + NEW_MEMBER_JOIN_TIMEOUT_MS / 1000
                if now >= deadline:
                    self._expire_member(group, member)
                    return
                delay = min(deadline - now, session)
            else:
                delay = session
        elif member.awaiting_sync:
            delay = session
        else:
            deadline = member.last_heartbeat + session
            if now >= deadline:
                self._expire_member(group, member)
                return
            delay = deadline - now
        member.timer = self._loop().call_later(delay, self._on_member_timer, group, member)

    def _expire_member(self, group: Group, member: Member) -> None:
        log.info(
            "member %s of group %s has not been heard from in %d ms; removing it",
            member.member_id,
            group.group_id,
            member.session_timeout_ms,
        )
        self.member_expirations.inc()
        self._remove_member_and_update(group, member, f"member {member.member_id} session expired")

    def _on_pending_member_timer(self, group: Group, member_id: str) -> None:
        if member_id in group.pending_members:
            group.pending_members.discard(member_id)
            self._try_complete_join(group)
            if (
                group.is_removable()
                and group.group_id not in self._persisted
                and self.groups.get(group.group_id) is group
            ):
                del self.groups[group.group_id]

    # -- persistence of group metadata ------------------------------------------------

    def _store_group(self, group: Group, assignment: Mapping[str, bytes] | None) -> Landing | None:
        protocol = group.protocol_name
        members = tuple(
            MemberRecord(
                member_id=m.member_id,
                client_id=m.client_id,
                client_host=m.client_host,
                session_timeout_ms=m.session_timeout_ms,
                rebalance_timeout_ms=m.rebalance_timeout_ms,
                subscription=m.metadata_for(protocol) if protocol else b"",
                assignment=(
                    assignment.get(m.member_id, m.assignment)
                    if assignment is not None
                    else m.assignment
                ),
                group_instance_id=m.group_instance_id,
            )
            for m in group.members.values()
        )
        appended = self.store.write_group(
            group.group_id,
            GroupMetadataValue(
                protocol_type=group.protocol_type or "",
                generation=group.generation_id,
                protocol=protocol,
                leader=group.leader_id,
                current_state_timestamp=group.state_timestamp,
                members=members,
            ),
        )
        self._persisted.add(group.group_id)
        return appended


@dataclass(frozen=True, slots=True)
class _JoinArgs:
    member_id: str
    instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocol_type: str
    protocols: list[tuple[str, bytes]]
    supports_skip_assignment: bool
