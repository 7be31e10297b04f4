"""The server-side assignors of consumer groups (KIP-848): ``uniform`` and ``range``.

Pure functions, no I/O: the coordinator hands them each member's subscribed topics and
its previous target assignment, and the partition count of every subscribed topic, and
gets a new target assignment back. Both are sticky (a partition stays with its previous
member unless balance requires moving it) and assign every partition of a subscribed
topic to exactly one subscribed member.

* ``uniform`` balances the total number of partitions per member: with the same
  subscriptions the counts differ by at most one; with different subscriptions no member
  could take a partition it subscribes to from a member holding two or more more.
* ``range`` balances per topic, as the classic range assignor: each subscriber of a topic
  gets ``partitions // subscribers`` of it, the first ``partitions % subscribers`` (those
  already holding one more, first) one extra; with no history these are contiguous ranges.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["ASSIGNORS", "Assignment", "MemberSpec", "assign", "range_assign", "uniform_assign"]

# topic name -> partition indexes
Assignment = dict[str, frozenset[int]]


@dataclass(frozen=True, slots=True)
class MemberSpec:
    """What an assignor knows of one member."""

    subscribed: frozenset[str]
    previous: Mapping[str, frozenset[int]] = field(default_factory=dict)


def _freeze(held: Mapping[str, Iterable[int]]) -> Assignment:
    return {t: frozenset(ps) for t, ps in held.items() if ps}


def uniform_assign(
    members: Mapping[str, MemberSpec], topics: Mapping[str, int]
) -> dict[str, Assignment]:
    """Balance the number of partitions per member, moving as few as possible."""
    order = sorted(members)
    held: dict[str, dict[str, set[int]]] = {m: {} for m in order}
    count = dict.fromkeys(order, 0)
    owner: dict[tuple[str, int], str] = {}
    # 1. keep what each member held and may still hold
    for m in order:
        spec = members[m]
        for topic, parts in sorted(spec.previous.items()):
            n = topics.get(topic)
            if n is None or topic not in spec.subscribed:
                continue
            for p in sorted(parts):
                if p < n and (topic, p) not in owner:
                    owner[(topic, p)] = m
                    held[m].setdefault(topic, set()).add(p)
                    count[m] += 1
    # 2. every partition nobody holds goes to its least loaded subscriber
    subscribers = {t: [m for m in order if t in members[m].subscribed] for t in topics}
    for topic in sorted(topics):
        eligible = subscribers[topic]
        if not eligible:
            continue
        for p in range(topics[topic]):
            if (topic, p) in owner:
                continue
            m = min(eligible, key=lambda x: (count[x], x))
            owner[(topic, p)] = m
            held[m].setdefault(topic, set()).add(p)
            count[m] += 1
    # 3. move partitions from the most to the least loaded members until no move helps
    moved = True
    while moved:
        moved = False
        by_load = sorted(order, key=lambda x: (-count[x], x))
        for giver in by_load:
            for taker in reversed(by_load):
                if count[taker] >= count[giver] - 1:
                    break
                topic_p = _movable(held[giver], members[taker].subscribed)
                if topic_p is None:
                    continue
                topic, p = topic_p
                held[giver][topic].discard(p)
                held[taker].setdefault(topic, set()).add(p)
                count[giver] -= 1
                count[taker] += 1
                moved = True
                break
            if moved:
                break
    return {m: _freeze(held[m]) for m in order}


def _movable(held: Mapping[str, set[int]], subscribed: frozenset[str]) -> tuple[str, int] | None:
    """The partition (highest index of the last topic) a member could hand to a
    subscriber of ``subscribed``; None if it holds nothing of those topics."""
    for topic in sorted(held, reverse=True):
        if topic in subscribed and held[topic]:
            return topic, max(held[topic])
    return None


def range_assign(
    members: Mapping[str, MemberSpec], topics: Mapping[str, int]
) -> dict[str, Assignment]:
    """Per topic, ranges of ``n // subscribers`` partitions (one more for the first
    ``n % subscribers``), keeping previous holdings within those quotas."""
    order = sorted(members)
    held: dict[str, dict[str, set[int]]] = {m: {} for m in order}
    for topic in sorted(topics):
        n = topics[topic]
        subs = [m for m in order if topic in members[m].subscribed]
        if not subs or n <= 0:
            continue
        base, extra = divmod(n, len(subs))
        previous = {m: sorted(p for p in members[m].previous.get(topic, ()) if p < n) for m in subs}
        # the extra partitions go first to those who already held more than the base
        ranked = [m for m in subs if len(previous[m]) > base] + [
            m for m in subs if len(previous[m]) <= base
        ]
        quota = {m: base + (1 if i < extra else 0) for i, m in enumerate(ranked)}
        taken: set[int] = set()
        mine: dict[str, list[int]] = {m: [] for m in subs}
        for m in subs:
            for p in previous[m]:
                if len(mine[m]) >= quota[m]:
                    break
                if p not in taken:
                    taken.add(p)
                    mine[m].append(p)
        free = iter(p for p in range(n) if p not in taken)
        for m in subs:
            while len(mine[m]) < quota[m]:
                mine[m].append(next(free))
        for m in subs:
            if mine[m]:
                held[m][topic] = set(mine[m])
    return {m: _freeze(held[m]) for m in order}


ASSIGNORS = {"uniform": uniform_assign, "range": range_assign}


def assign(
    name: str, members: Mapping[str, MemberSpec], topics: Mapping[str, int]
) -> dict[str, Assignment]:
    """Run the assignor called ``name`` (KeyError if there is none)."""
    return ASSIGNORS[name](members, topics)
