"""The scaling planner: where every partition's replicas should be once the broker set changes.

Pure: given each partition's replicas (first = preferred leader), the brokers that stay
(after a scale-up: the old and the new ones; after a scale-down: the survivors) and their
racks, `plan()` returns the partitions whose replica list must change and their new lists,
or a refusal when some topic has more replicas than there would be brokers.

Three steps, each moving as little as it can:

1. **Drain**: a replica on a departing broker is replaced by a surviving broker the
   partition does not use yet, the least loaded one, preferring a rack the partition does
   not use yet (rack spread is kept whenever the surviving racks allow it). The surviving
   replicas keep their order, so a partition whose preferred leader stays keeps it.
2. **Balance replicas**: while some broker holds two replicas more than another, one
   replica moves from the most to the least loaded, on a partition that does not lose a
   rack by it, preferring a partition where it is not the preferred leader and one that
   moves anyway (no new partition in flight for nothing).
3. **Balance preferred leaders**: while some broker is the preferred leader of two more
   partitions than another that holds a replica of one of them, the two swap places in that
   partition's list (an order change: no data moves).

The result is idempotent: planning again from the planned assignment changes nothing. The
handler submits the changes with AlterPartitionReassignments and waits until
ListPartitionReassignments is empty before it plans again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["ScalePlan", "plan"]

PartitionKey = tuple[str, int]


@dataclass(frozen=True)
class ScalePlan:
    """`moves`: partition -> its new replica list (only partitions that change);
    `refused`: why the broker set cannot hold the topics (then `moves` is empty)."""

    moves: dict[PartitionKey, tuple[int, ...]] = field(default_factory=dict)
    refused: str | None = None

    @property
    def replicas_moved(self) -> int:
        return sum(len(r) for r in self.moves.values())


def _rack_count(replicas: Iterable[int], racks: Mapping[int, str]) -> int:
    return len({racks[b] for b in replicas if b in racks})


def plan(
    assignments: Mapping[PartitionKey, Sequence[int]],
    brokers: Iterable[int],
    racks: Mapping[int, str] | None = None,
) -> ScalePlan:
    """The reassignment that puts every partition on `brokers` only, balanced (see the
    module docstring). `racks` maps a broker to its rack (none: no rack awareness)."""
    racks = dict(racks or {})
    targets = sorted(set(brokers))
    if not targets:
        return ScalePlan(refused="no broker would remain")
    too_big = sorted(
        ((len(set(r)), key) for key, r in assignments.items() if len(set(r)) > len(targets)),
        key=lambda x: (-x[0], x[1]),
    )
    if too_big:
        rf, (topic, _) = too_big[0]
        return ScalePlan(
            refused=f"topic {topic} has replication factor {rf}: {len(targets)} brokers "
            "cannot hold its replicas"
        )
    target_set = set(targets)
    current = {key: list(dict.fromkeys(r)) for key, r in sorted(assignments.items())}
    new = {key: [b for b in r if b in target_set] for key, r in current.items()}
    load = dict.fromkeys(targets, 0)
    for r in new.values():
        for b in r:
            load[b] += 1

    # 1. drain: fill each partition back to its replication factor on surviving brokers
    for key, r in new.items():
        while len(r) < len(current[key]):
            used_racks = {racks[b] for b in r if b in racks}
            candidates = [b for b in targets if b not in r]
            best = min(
                candidates,
                key=lambda b: (bool(racks) and racks.get(b) in used_racks, load[b], b),
            )
            r.append(best)
            load[best] += 1

    # 2. balance replica counts
    def changed(key: PartitionKey) -> bool:
        return new[key] != current[key]

    while True:
        move = _balancing_move(new, load, racks, changed)
        if move is None:
            break
        key, hi, lo = move
        r = new[key]
        r[r.index(hi)] = lo
        load[hi] -= 1
        load[lo] += 1

    # 3. balance preferred leaders (reorder only)
    leaders = dict.fromkeys(targets, 0)
    for r in new.values():
        if r:
            leaders[r[0]] += 1
    while True:
        swap = _leader_swap(new, leaders)
        if swap is None:
            break
        key, lo = swap
        r = new[key]
        hi = r[0]
        i = r.index(lo)
        r[0], r[i] = lo, hi
        leaders[hi] -= 1
        leaders[lo] += 1

    moves = {key: tuple(r) for key, r in new.items() if r != current[key]}
    return ScalePlan(moves=moves)


def _balancing_move(
    new: Mapping[PartitionKey, list[int]],
    load: Mapping[int, int],
    racks: Mapping[int, str],
    changed: object,
) -> tuple[PartitionKey, int, int] | None:
    """One replica move from a broker with at least two more replicas than another."""
    assert callable(changed)
    by_load = sorted(load, key=lambda b: (load[b], b))
    for hi in reversed(by_load):
        for lo in by_load:
            if load[hi] - load[lo] <= 1:
                break
            best: tuple[tuple[int, int, PartitionKey], PartitionKey] | None = None
            for key, r in new.items():
                if hi not in r or lo in r:
                    continue
                if racks:
                    after = [lo if b == hi else b for b in r]
                    if _rack_count(after, racks) < _rack_count(r, racks):
                        continue
                rank = (0 if changed(key) else 1, 1 if r[0] == hi else 0, key)
                if best is None or rank < best[0]:
                    best = (rank, key)
            if best is not None:
                return best[1], hi, lo
    return None


def _leader_swap(
    new: Mapping[PartitionKey, list[int]], leaders: Mapping[int, int]
) -> tuple[PartitionKey, int] | None:
    """A partition whose preferred leader leads two more partitions than one of its other
    replicas, and that replica."""
    for key, r in new.items():
        if len(r) < 2:
            continue
        hi = r[0]
        lo = min(r[1:], key=lambda b: (leaders[b], b))
        if leaders[hi] - leaders[lo] > 1:
            return key, lo
    return None
