"""One consumer group of the KIP-848 protocol: epochs, target and current assignments.

Pure state, no I/O or clocks (the coordinator's :mod:`.consumer` drives it):

* the **group epoch** moves whenever what the assignment depends on changes (a member
  joins or leaves, a subscription changes, a subscribed topic gains partitions);
* the **target assignment** is computed by the server-side assignor for a group epoch
  and carries it as its epoch;
* each member's **current assignment** converges to its target one step at a time
  (:meth:`ConsumerGroup.reconcile`): partitions to give up are first revoked, and the
  member keeps its epoch until it confirms (its heartbeat no longer lists them as owned);
  only then does it reach the target epoch, and a partition still held by another member
  is handed over only once that member released it.

Group states (ConsumerGroupDescribe / ListGroups): Empty (no members), Assigning (group
epoch ahead of the target), Reconciling (some member not yet at the target), Stable.
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field

from .assignors import Assignment, MemberSpec, assign
from .consumer_records import ClassicMetadata

__all__ = ["ConsumerGroup", "ConsumerMember", "MemberState", "Reconciled"]

TopicPartition = tuple[str, int]


class MemberState(enum.IntEnum):
    """Kafka's MemberState byte, as stored in the current assignment record."""

    UNREVOKED_PARTITIONS = 0
    UNRELEASED_PARTITIONS = 1
    STABLE = 2
    UNKNOWN = 127


@dataclass(eq=False, slots=True)
class ConsumerMember:
    member_id: str
    instance_id: str | None = None
    rack_id: str | None = None
    client_id: str = ""
    client_host: str = ""
    subscribed_topic_names: tuple[str, ...] = ()
    subscribed_topic_regex: str | None = None
    rebalance_timeout_ms: int = 300000
    server_assignor: str | None = None
    # set for a member that speaks the classic protocol (JoinGroup/SyncGroup/Heartbeat)
    classic: ClassicMetadata | None = None
    member_epoch: int = 0
    previous_member_epoch: int = -1
    state: MemberState = MemberState.STABLE
    assigned: Assignment = field(default_factory=dict)
    pending_revocation: Assignment = field(default_factory=dict)
    # the coordinator's clocks
    last_heartbeat: float = field(default_factory=time.monotonic)
    revocation_deadline: float | None = None
    # a classic member between its JoinGroup and its SyncGroup: removed if still there then
    sync_deadline: float | None = None
    timer: asyncio.TimerHandle | None = None

    @property
    def is_classic(self) -> bool:
        return self.classic is not None

    def owned(self) -> set[TopicPartition]:
        """Partitions this member may still be consuming: assigned or being revoked."""
        out = {(t, p) for t, ps in self.assigned.items() for p in ps}
        out.update((t, p) for t, ps in self.pending_revocation.items() for p in ps)
        return out


@dataclass(frozen=True, slots=True)
class Reconciled:
    changed: bool  # epoch, state or assignment of the member changed


def _flat(a: Assignment) -> set[TopicPartition]:
    return {(t, p) for t, ps in a.items() for p in ps}


def _group(tps: set[TopicPartition]) -> Assignment:
    out: dict[str, set[int]] = {}
    for t, p in tps:
        out.setdefault(t, set()).add(p)
    return {t: frozenset(ps) for t, ps in out.items()}


class ConsumerGroup:
    """A consumer group's members and assignments."""

    def __init__(self, group_id: str) -> None:
        self.group_id = group_id
        self.group_epoch = 0
        self.target_epoch = 0
        self.members: dict[str, ConsumerMember] = {}
        self.static_members: dict[str, str] = {}  # instance id -> member id
        self.target: dict[str, Assignment] = {}
        self.owners: dict[TopicPartition, str] = {}  # partition -> member still holding it
        self.subscribed_metadata: dict[str, int] = {}  # topic -> partitions, at last epoch

    # -- state ------------------------------------------------------------------------

    @property
    def state(self) -> str:
        if not self.members:
            return "Empty"
        if self.group_epoch > self.target_epoch:
            return "Assigning"
        for m in self.members.values():
            if m.member_epoch != self.target_epoch or m.state != MemberState.STABLE:
                return "Reconciling"
        return "Stable"

    def waiting_on_unreleased(self, member: ConsumerMember) -> bool:
        """Whether a partition of the member's target is still held by another member."""
        for t, ps in self.target.get(member.member_id, {}).items():
            for p in ps:
                if self.owners.get((t, p), member.member_id) != member.member_id:
                    return True
        return False

    def preferred_assignor(self, default: str) -> str:
        """The assignor most members ask for (ties: by name), else ``default``."""
        votes: dict[str, int] = {}
        for m in self.members.values():
            if m.server_assignor:
                votes[m.server_assignor] = votes.get(m.server_assignor, 0) + 1
        if not votes:
            return default
        return min(votes, key=lambda a: (-votes[a], a))

    # -- membership -------------------------------------------------------------------

    def add(self, member: ConsumerMember) -> None:
        self.members[member.member_id] = member
        if member.instance_id is not None:
            self.static_members[member.instance_id] = member.member_id
        for tp in member.owned():
            self.owners[tp] = member.member_id

    def remove(self, member_id: str) -> ConsumerMember | None:
        member = self.members.pop(member_id, None)
        if member is None:
            return None
        if (
            member.instance_id is not None
            and self.static_members.get(member.instance_id) == member_id
        ):
            del self.static_members[member.instance_id]
        for tp in member.owned():
            if self.owners.get(tp) == member_id:
                del self.owners[tp]
        self.target.pop(member_id, None)
        return member

    def replace_static(self, old: ConsumerMember, new: ConsumerMember) -> None:
        """A restarted static member takes over its predecessor's epoch and partitions."""
        self.remove(old.member_id)
        target = self.target.get(old.member_id)
        new.member_epoch = old.member_epoch
        new.previous_member_epoch = old.previous_member_epoch
        new.state = old.state
        new.assigned = old.assigned
        new.pending_revocation = old.pending_revocation
        self.add(new)
        if target is not None:
            self.target[new.member_id] = target

    # -- assignment -------------------------------------------------------------------

    def compute_target(
        self, topics: dict[str, int], subscriptions: dict[str, frozenset[str]], assignor: str
    ) -> set[str]:
        """Run the assignor for the current group epoch; returns the members whose target
        changed."""
        specs = {
            mid: MemberSpec(subscriptions.get(mid, frozenset()), self.target.get(mid, {}))
            for mid in self.members
        }
        result = assign(assignor, specs, topics)
        changed = {mid for mid, a in result.items() if a != self.target.get(mid, {})}
        self.target = result
        self.target_epoch = self.group_epoch
        return changed

    def reconcile(self, member: ConsumerMember, owned: set[TopicPartition] | None) -> bool:
        """Move ``member`` towards its target; ``owned`` is what its heartbeat listed (None
        if it did not). True if the member's epoch, state or assignment changed."""
        before = (member.member_epoch, member.state, member.assigned, member.pending_revocation)
        if member.state == MemberState.UNREVOKED_PARTITIONS:
            if owned is None or owned & _flat(member.pending_revocation):
                return False  # still waiting for the member to give them up
            self._release(member, _flat(member.pending_revocation))
            member.pending_revocation = {}
            self._next(member)
        elif member.member_epoch != self.target_epoch or member.state != MemberState.STABLE:
            self._next(member)
        return before != (
            member.member_epoch,
            member.state,
            member.assigned,
            member.pending_revocation,
        )

    def _release(self, member: ConsumerMember, tps: set[TopicPartition]) -> None:
        for tp in tps:
            if self.owners.get(tp) == member.member_id:
                del self.owners[tp]

    def _next(self, member: ConsumerMember) -> None:
        target = _flat(self.target.get(member.member_id, {}))
        current = _flat(member.assigned)
        kept = current & target
        revoking = current - target
        wanted = target - current
        unreleased = {
            tp for tp in wanted if self.owners.get(tp, member.member_id) != member.member_id
        }
        assignable = wanted - unreleased
        if revoking:
            member.state = MemberState.UNREVOKED_PARTITIONS
            member.assigned = _group(kept)
            member.pending_revocation = _group(revoking)
            return  # the epoch moves once the member confirmed the revocation
        member.assigned = _group(kept | assignable)
        member.pending_revocation = {}
        for tp in assignable:
            self.owners[tp] = member.member_id
        member.state = MemberState.UNRELEASED_PARTITIONS if unreleased else MemberState.STABLE
        if member.member_epoch != self.target_epoch:
            member.previous_member_epoch = member.member_epoch
            member.member_epoch = self.target_epoch
