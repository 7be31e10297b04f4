"""One classic consumer group: its members, generation, protocol and committed offsets.

The state machine of Kafka's classic rebalance protocol, kept free of I/O and timers so
it can be tested on its own (the coordinator drives it and owns the clocks):

* ``Empty``: no members (offsets may still be kept). A join moves it to
  PreparingRebalance.
* ``PreparingRebalance``: waiting for every known member to send JoinGroup (bounded by
  the rebalance timeout). When they have, the next generation starts.
* ``CompletingRebalance``: the generation is chosen and the leader has the member list;
  waiting for the leader's SyncGroup with the assignment.
* ``Stable``: the assignment is handed out; heartbeats keep members alive.
* ``Dead``: the group was deleted or expired; nothing may use it.

Allowed transitions (``previous -> next``): Empty/Stable/CompletingRebalance ->
PreparingRebalance -> CompletingRebalance or Empty; CompletingRebalance -> Stable; any
state -> Dead. :meth:`Group.transition` refuses anything else with :class:`IllegalStateError`.

Members carry the asyncio futures of their parked JoinGroup / SyncGroup requests; the
coordinator resolves them. Static members (``group.instance.id``) are indexed by
instance id so a restarted instance replaces its previous member id instead of joining
as a stranger.
"""

from __future__ import annotations

import asyncio
import enum
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from shazamq.protocol.messages.consumer_protocol_subscription import (
    ConsumerProtocolSubscription,
)

__all__ = [
    "CONSUMER_PROTOCOL_TYPE",
    "CommittedOffset",
    "Group",
    "GroupState",
    "IllegalStateError",
    "JoinResult",
    "Member",
    "SyncResult",
]

CONSUMER_PROTOCOL_TYPE = "consumer"


class GroupState(enum.Enum):
    """The classic group states, valued by the names Kafka's tools print."""

    EMPTY = "Empty"
    PREPARING_REBALANCE = "PreparingRebalance"
    COMPLETING_REBALANCE = "CompletingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


_VALID_PREVIOUS: dict[GroupState, frozenset[GroupState]] = {
    GroupState.PREPARING_REBALANCE: frozenset(
        {GroupState.STABLE, GroupState.COMPLETING_REBALANCE, GroupState.EMPTY}
    ),
    GroupState.COMPLETING_REBALANCE: frozenset({GroupState.PREPARING_REBALANCE}),
    GroupState.STABLE: frozenset({GroupState.COMPLETING_REBALANCE}),
    GroupState.EMPTY: frozenset({GroupState.PREPARING_REBALANCE}),
    GroupState.DEAD: frozenset(GroupState),
}


class IllegalStateError(Exception):
    """A transition the state machine does not allow (a coordinator bug, not a client's)."""


class JoinResult(NamedTuple):
    """What a parked JoinGroup request is answered with."""

    error: int
    member_id: str
    generation_id: int = -1
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader: str = ""
    members: tuple[tuple[str, str | None, bytes], ...] = ()  # (member id, instance id, metadata)
    skip_assignment: bool = False


class SyncResult(NamedTuple):
    """What a parked SyncGroup request is answered with."""

    error: int
    assignment: bytes = b""
    protocol_type: str | None = None
    protocol_name: str | None = None


@dataclass(slots=True)
class CommittedOffset:
    """A committed offset and where its record sits in ``__consumer_offsets``."""

    offset: int
    metadata: str
    commit_timestamp: int
    leader_epoch: int = -1
    expire_timestamp: int = -1
    record_offset: int = -1  # position in the offsets partition: the later commit wins


@dataclass(eq=False, slots=True)
class Member:
    """One member of a group, with its parked requests and liveness bookkeeping."""

    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    rebalance_timeout_ms: int
    session_timeout_ms: int
    protocol_type: str
    protocols: list[tuple[str, bytes]]
    assignment: bytes = b""
    join_future: asyncio.Future[JoinResult] | None = None
    sync_future: asyncio.Future[SyncResult] | None = None
    last_heartbeat: float = field(default_factory=time.monotonic)
    is_new: bool = False
    timer: asyncio.TimerHandle | None = None

    @property
    def is_static(self) -> bool:
        return self.group_instance_id is not None

    @property
    def awaiting_join(self) -> bool:
        return self.join_future is not None

    @property
    def awaiting_sync(self) -> bool:
        return self.sync_future is not None

    def protocol_names(self) -> list[str]:
        return [name for name, _ in self.protocols]

    def metadata_for(self, protocol: str) -> bytes:
        for name, metadata in self.protocols:
            if name == protocol:
                return metadata
        raise KeyError(protocol)

    def matches(self, protocols: list[tuple[str, bytes]]) -> bool:
        """True if a rejoin carries exactly the protocols (and metadata) already known."""
        return self.protocols == protocols

    def vote(self, candidates: set[str]) -> str:
        """This member's preferred protocol among those every member supports."""
        for name, _ in self.protocols:
            if name in candidates:
                return name
        raise IllegalStateError(f"member {self.member_id} supports none of {sorted(candidates)}")

    def complete_join(self, result: JoinResult) -> bool:
        fut, self.join_future = self.join_future, None
        if fut is not None and not fut.done():
            fut.set_result(result)
            return True
        return False

    def complete_sync(self, result: SyncResult) -> bool:
        fut, self.sync_future = self.sync_future, None
        if fut is not None and not fut.done():
            fut.set_result(result)
            return True
        return False


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Group:
    """A classic group's membership state machine and its committed offsets."""

    def __init__(self, group_id: str, *, now_ms: int | None = None) -> None:
        self.group_id = group_id
        self.state = GroupState.EMPTY
        self.previous_state = GroupState.EMPTY
        self.state_timestamp = _now_ms() if now_ms is None else now_ms
        self.generation_id = 0
        self.protocol_type: str | None = None
        self.protocol_name: str | None = None
        self.leader_id: str | None = None
        self.members: dict[str, Member] = {}
        self.static_members: dict[str, str] = {}  # instance id -> member id
        self.pending_members: set[str] = set()  # handed an id (MEMBER_ID_REQUIRED), not joined
        self.pending_sync: set[str] = set()  # joined this generation, SyncGroup not seen yet
        self.new_member_added = False
        # offsets
        self.offsets: dict[tuple[str, int], CommittedOffset] = {}
        self.pending_txn_offsets: dict[int, dict[tuple[str, int], CommittedOffset]] = {}
        # timers the coordinator owns
        self.join_timer: asyncio.TimerHandle | None = None
        self.sync_timer: asyncio.TimerHandle | None = None
        self.initial_delay_remaining_ms = 0
        self.in_initial_delay = False

    def __repr__(self) -> str:
        return (
            f"Group({self.group_id!r}, {self.state.value}, generation {self.generation_id}, "
            f"{len(self.members)} members)"
        )

    def cancel_timers(self) -> None:
        """Cancel the group's join and sync timers (the coordinator owns the clock)."""
        for timer in (self.join_timer, self.sync_timer):
            if timer is not None:
                timer.cancel()
        self.join_timer = self.sync_timer = None

    # -- state ------------------------------------------------------------------------

    def is_state(self, *states: GroupState) -> bool:
        return self.state in states

    def can_rebalance(self) -> bool:
        return self.state in _VALID_PREVIOUS[GroupState.PREPARING_REBALANCE]

    def transition(self, target: GroupState, *, now_ms: int | None = None) -> None:
        if self.state not in _VALID_PREVIOUS[target]:
            raise IllegalStateError(
                f"group {self.group_id}: cannot go from {self.state.value} to {target.value}"
            )
        self.previous_state = self.state
        self.state = target
        self.state_timestamp = _now_ms() if now_ms is None else now_ms

    # -- membership -------------------------------------------------------------------

    def has(self, member_id: str) -> bool:
        return member_id in self.members

    def get(self, member_id: str) -> Member:
        return self.members[member_id]

    def is_leader(self, member_id: str) -> bool:
        return self.leader_id == member_id

    def static_member_id(self, instance_id: str | None) -> str | None:
        if instance_id is None:
            return None
        return self.static_members.get(instance_id)

    def is_static_member_fenced(self, member_id: str, instance_id: str | None) -> bool:
        """True when ``instance_id`` belongs to a different member id than ``member_id``."""
        if instance_id is None:
            return False
        known = self.static_members.get(instance_id)
        return known is not None and known != member_id

    def new_member_id(self, client_id: str, instance_id: str | None) -> str:
        return f"{instance_id or client_id}-{uuid.uuid4()}"

    def add(self, member: Member) -> None:
        if not self.members:
            self.protocol_type = member.protocol_type
        self.members[member.member_id] = member
        if member.group_instance_id is not None:
            self.static_members[member.group_instance_id] = member.member_id
        self.pending_members.discard(member.member_id)
        if self.leader_id is None:
            self.leader_id = member.member_id

    def remove(self, member_id: str) -> Member | None:
        member = self.members.pop(member_id, None)
        if member is None:
            return None
        if (
            member.group_instance_id is not None
            and self.static_members.get(member.group_instance_id) == member_id
        ):
            del self.static_members[member.group_instance_id]
        self.pending_sync.discard(member_id)
        if self.leader_id == member_id:
            self.leader_id = next(iter(self.members), None)
        return member

    def replace_static_member(self, instance_id: str, old_id: str, new_id: str) -> Member:
        """Give the static member ``instance_id`` a new member id, keeping its state.

        A parked request of the old member id is answered FENCED_INSTANCE_ID by the
        coordinator before this is called.
        """
        member = self.members.pop(old_id)
        member.member_id = new_id
        self.members[new_id] = member
        self.static_members[instance_id] = new_id
        if self.leader_id == old_id:
            self.leader_id = new_id
        if old_id in self.pending_sync:
            self.pending_sync.discard(old_id)
            self.pending_sync.add(new_id)
        return member

    def supports_protocols(self, protocol_type: str, names: Iterable[str]) -> bool:
        """A joining member must share the protocol type and at least one protocol."""
        wanted = set(names)
        if not self.members:
            return bool(protocol_type) and bool(wanted)
        return self.protocol_type == protocol_type and bool(wanted & self.candidate_protocols())

    def candidate_protocols(self) -> set[str]:
        """Protocols every member supports."""
        result: set[str] | None = None
        for m in self.members.values():
            names = set(m.protocol_names())
            result = names if result is None else result & names
        return result or set()

    def select_protocol(self) -> str:
        """The candidate protocol with the most first-preference votes (ties: the first
        counted)."""
        candidates = self.candidate_protocols()
        if not candidates:
            raise IllegalStateError(f"group {self.group_id} has no protocol all members support")
        votes: dict[str, int] = {}
        for m in self.members.values():
            choice = m.vote(candidates)
            votes[choice] = votes.get(choice, 0) + 1
        return max(votes, key=lambda name: votes[name])

    @property
    def rebalance_timeout_ms(self) -> int:
        return max((m.rebalance_timeout_ms for m in self.members.values()), default=0)

    def awaiting_join_count(self) -> int:
        return sum(1 for m in self.members.values() if m.awaiting_join)

    def all_members_joined(self) -> bool:
        return self.awaiting_join_count() == len(self.members) and not self.pending_members

    def not_yet_rejoined(self) -> list[Member]:
        return [m for m in self.members.values() if not m.awaiting_join]

    def elect_joined_leader(self) -> bool:
        """Keep the leader if it rejoined, else pick a member that did; False if none did."""
        leader = self.members.get(self.leader_id) if self.leader_id is not None else None
        if leader is not None and leader.awaiting_join:
            return True
        for m in self.members.values():
            if m.awaiting_join:
                self.leader_id = m.member_id
                return True
        return False

    def init_next_generation(self, *, now_ms: int | None = None) -> None:
        """Start the next generation: CompletingRebalance with a protocol, or Empty."""
        self.generation_id += 1
        if self.members:
            self.protocol_name = self.select_protocol()
            self.pending_sync = set(self.members)
            self.transition(GroupState.COMPLETING_REBALANCE, now_ms=now_ms)
        else:
            self.protocol_name = None
            self.pending_sync = set()
            self.transition(GroupState.EMPTY, now_ms=now_ms)

    def member_metadata(self) -> tuple[tuple[str, str | None, bytes], ...]:
        """(member id, instance id, metadata of the chosen protocol) for the leader."""
        assert self.protocol_name is not None
        return tuple(
            (m.member_id, m.group_instance_id, m.metadata_for(self.protocol_name))
            for m in self.members.values()
        )

    def subscribed_topics(self) -> set[str] | None:
        """Topics the members subscribe to (consumer protocol), or None if unknown."""
        if self.protocol_type != CONSUMER_PROTOCOL_TYPE or self.protocol_name is None:
            return None
        topics: set[str] = set()
        for m in self.members.values():
            try:
                metadata = m.metadata_for(self.protocol_name)
            except KeyError:
                return None
            parsed = parse_subscription(metadata)
            if parsed is None:
                return None
            topics.update(parsed)
        return topics

    # -- offsets ----------------------------------------------------------------------

    def has_pending_txn_offsets(self, tp: tuple[str, int] | None = None) -> bool:
        if tp is None:
            return bool(self.pending_txn_offsets)
        return any(tp in offsets for offsets in self.pending_txn_offsets.values())

    def complete_txn_offsets(
        self, producer_id: int, commit: bool, *, before: int | None = None
    ) -> int:
        """Apply (commit) or drop (abort) a producer's pending offsets; returns how many
        were applied. A regular commit written after the transactional one wins.

        ``before``: the marker's offset. Only offsets written before it belong to the
        transaction it ends; later ones (a marker seen again after a load that already
        replayed it) stay pending.
        """
        pending = self.pending_txn_offsets.pop(producer_id, None)
        if pending and before is not None:
            later = {tp: c for tp, c in pending.items() if c.record_offset >= before}
            if later:
                self.pending_txn_offsets[producer_id] = later
                pending = {tp: c for tp, c in pending.items() if c.record_offset < before}
        if not pending or not commit:
            return 0
        applied = 0
        for tp, committed in pending.items():
            current = self.offsets.get(tp)
            if current is None or current.record_offset < committed.record_offset:
                self.offsets[tp] = committed
                applied += 1
        return applied

    def is_removable(self) -> bool:
        """An Empty group with no offsets left has nothing worth keeping."""
        return (
            self.state is GroupState.EMPTY
            and not self.offsets
            and not self.pending_txn_offsets
            and not self.pending_members
        )


def parse_subscription(metadata: bytes) -> list[str] | None:
    """The topics of a consumer-protocol subscription, or None if it does not parse."""
    if len(metadata) < 2:
        return None
    version = int.from_bytes(metadata[:2], "big", signed=True)
    if version < 0:
        return None
    lo, hi = ConsumerProtocolSubscription.VALID_VERSIONS
    try:
        sub, _ = ConsumerProtocolSubscription.decode(metadata, 2, min(max(version, lo), hi))
    except ValueError:
        return None
    return list(sub.topics)
