"""A Jepsen-style checker for what a fault test observed. Pure: no I/O, no clock.

A fault test records three things and hands them to `check()`:

* ``acked``: per (topic, partition), per producer, the records the broker acknowledged, as
  ``(value, offset)`` in the order the acknowledgements arrived;
* ``replicas``: per (topic, partition), what was read from each replica after the faults
  healed, up to that replica's high watermark: a `ReplicaRead` (records, high watermark,
  log start offset) or just the list of ``(offset, value)``;
* optionally ``groups``: per consumer group a `GroupObservation` (what its members consumed,
  where it committed).

Values must be unique per partition (``b"p3-000123"``): the checker identifies records by
value. It reports every `Violation` it finds, of these kinds:

``MISSING``
    an acknowledged record is not at its offset on a replica whose high watermark is above
    that offset (past its log start), or the offset is not below the leader's high watermark
    at all (truncated, or acknowledged without being committed);
``MISPLACED``
    an acknowledged record is in the log, but at another offset than acknowledged;
``DUPLICATE``
    a value is at more than one offset of a replica, or was acknowledged at two offsets;
``REORDERED``
    a producer's acknowledged records do not have increasing offsets in acknowledgement
    order (as acknowledged, or where they are in a replica);
``DIVERGENT``
    replicas hold different records at one offset below the smallest high watermark (or
    one read holds two values at one offset);
``CONFLICTING_ACK``
    one offset was acknowledged for two different values;
``CONSUMED_NOT_IN_LOG``
    a group consumed a value that no replica holds at that offset below its high watermark;
``CONSUMED_SKIPPED``
    a record of the log between where a group started and its committed offset was never
    delivered to it;
``COMMIT_BEYOND_HW``
    a group committed an offset past the leader's high watermark.

Offsets below a replica's log start (retention) and records at or past a replica's high
watermark are outside what it must hold. Gaps in offsets are fine (transaction markers take
offsets; consumers never see them).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import pairwise
from typing import TypeAlias

__all__ = [
    "Acked",
    "CheckResult",
    "GroupObservation",
    "Kind",
    "ReplicaRead",
    "Replicas",
    "TopicPartition",
    "Violation",
    "check",
]

TopicPartition: TypeAlias = tuple[str, int]
ReplicaId: TypeAlias = Hashable
ProducerId: TypeAlias = Hashable
Record: TypeAlias = tuple[int, bytes]  # (offset, value), as read
Ack: TypeAlias = tuple[bytes, int]  # (value, offset), as acknowledged


class Kind(StrEnum):
    MISSING = "missing"
    MISPLACED = "misplaced"
    DUPLICATE = "duplicate"
    REORDERED = "reordered"
    DIVERGENT = "divergent"
    CONFLICTING_ACK = "conflicting-ack"
    CONSUMED_NOT_IN_LOG = "consumed-not-in-log"
    CONSUMED_SKIPPED = "consumed-skipped"
    COMMIT_BEYOND_HW = "commit-beyond-hw"


@dataclass(frozen=True)
class ReplicaRead:
    """What one replica of one partition held, read from its log start to its high watermark.

    Without `high_watermark` the read is taken to end at it: last offset + 1 (or the log
    start when empty); give it explicitly to have missing records at the tail noticed.
    """

    records: Sequence[Record]
    high_watermark: int | None = None
    log_start_offset: int = 0

    @property
    def hw(self) -> int:
        if self.high_watermark is not None:
            return self.high_watermark
        if self.records:
            return max(o for o, _ in self.records) + 1
        return self.log_start_offset


@dataclass(frozen=True)
class GroupObservation:
    """One consumer group: every record delivered to any member, and its final commits.

    `consumed` is per partition in delivery order, redeliveries included. `start_offsets`
    says where the group began reading a partition (default: the reference replica's log
    start); `committed` holds the final committed offsets (next offset to read).
    """

    group: str
    consumed: Mapping[TopicPartition, Sequence[Record]]
    committed: Mapping[TopicPartition, int] = field(default_factory=dict)
    start_offsets: Mapping[TopicPartition, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Violation:
    kind: Kind
    partition: TopicPartition
    message: str
    offset: int | None = None
    value: bytes | None = None
    replica: ReplicaId | None = None
    producer: ProducerId | None = None
    group: str | None = None

    def __str__(self) -> str:
        topic, part = self.partition
        return f"[{self.kind}] {topic}/{part}: {self.message}"


@dataclass
class CheckResult:
    violations: list[Violation]
    acked_records: int = 0
    replica_reads: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations

    def kinds(self) -> set[Kind]:
        return {v.kind for v in self.violations}

    def of_kind(self, kind: Kind) -> list[Violation]:
        return [v for v in self.violations if v.kind == kind]

    def summary(self, limit: int = 20) -> str:
        if self.ok:
            return (
                f"ok: {self.acked_records} acknowledged records, {self.replica_reads} replica "
                "reads, no violations"
            )
        counts = defaultdict(int)
        for v in self.violations:
            counts[v.kind] += 1
        head = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        lines = [f"{len(self.violations)} violations ({head}):"]
        lines += [f"  {v}" for v in self.violations[:limit]]
        if len(self.violations) > limit:
            lines.append(f"  ... and {len(self.violations) - limit} more")
        return "\n".join(lines)

    __str__ = summary


Acked: TypeAlias = Mapping[TopicPartition, Mapping[ProducerId, Sequence[Ack]]]
Replicas: TypeAlias = Mapping[TopicPartition, Mapping[ReplicaId, ReplicaRead | Sequence[Record]]]


# -- one replica's read, indexed --------------------------------------------------------------


@dataclass
class _Replica:
    rid: ReplicaId
    hw: int
    log_start: int
    at: dict[int, bytes]  # offset -> value, within [log_start, hw)
    where: dict[bytes, list[int]]  # value -> offsets, within [log_start, hw)
    clashes: list[tuple[int, bytes, bytes]]  # one offset read with two values

    def holds(self, offset: int) -> bool:
        """Whether `offset` is in the range this replica must hold."""
        return self.log_start <= offset < self.hw


def _index(rid: ReplicaId, read: ReplicaRead | Sequence[Record]) -> _Replica:
    if not isinstance(read, ReplicaRead):
        read = ReplicaRead(list(read))
    rep = _Replica(rid, read.hw, read.log_start_offset, {}, defaultdict(list), [])
    for offset, value in read.records:
        if not rep.holds(offset):
            continue  # past the high watermark or below the log start: not committed data
        prior = rep.at.get(offset)
        if prior is not None:
            if prior != value:
                rep.clashes.append((offset, prior, value))
            continue
        rep.at[offset] = value
        rep.where[value].append(offset)
    return rep


def _sort_key(item: object) -> tuple[str, str]:
    return (type(item).__name__, repr(item))


# -- the checks --------------------------------------------------------------------------------


def check(
    acked: Acked,
    replicas: Replicas,
    *,
    leaders: Mapping[TopicPartition, ReplicaId] | None = None,
    groups: Iterable[GroupObservation] = (),
) -> CheckResult:
    """Every violation of the partitions' guarantees in one observed history.

    `leaders` names each partition's leader at the time of the final read; the leader's high
    watermark must cover every acknowledged offset. Without it, the replica with the highest
    high watermark stands in (the "reference replica", also the log groups are checked on).
    """
    out: list[Violation] = []
    result = CheckResult(out)
    leaders = leaders or {}
    logs: dict[TopicPartition, list[_Replica]] = {}
    refs: dict[TopicPartition, _Replica | None] = {}
    for tp in sorted({*acked, *replicas}):
        reads = replicas.get(tp, {})
        reps = [_index(rid, reads[rid]) for rid in sorted(reads, key=_sort_key)]
        logs[tp] = reps
        result.replica_reads += len(reps)
        refs[tp] = _reference(reps, leaders.get(tp))
        producers = acked.get(tp, {})
        result.acked_records += sum(len(a) for a in producers.values())
        _check_acks(tp, producers, out)
        _check_order(tp, producers, reps, out)
        _check_presence(tp, producers, reps, refs[tp], out)
        _check_duplicates(tp, reps, out)
        _check_divergence(tp, reps, out)
    for group in groups:
        _check_group(group, logs, refs, out)
    return result


def _reference(reps: list[_Replica], leader: ReplicaId | None) -> _Replica | None:
    if leader is not None:
        for rep in reps:
            if rep.rid == leader:
                return rep
    return max(reps, key=lambda r: r.hw, default=None)


def _check_acks(
    tp: TopicPartition, producers: Mapping[ProducerId, Sequence[Ack]], out: list[Violation]
) -> None:
    """Acknowledgements alone: one value per offset, one offset per value."""
    offsets_of: dict[bytes, set[int]] = defaultdict(set)
    values_at: dict[int, set[bytes]] = defaultdict(set)
    for pid in sorted(producers, key=_sort_key):
        for value, offset in producers[pid]:
            offsets_of[value].add(offset)
            values_at[offset].add(value)
    for offset in sorted(values_at):
        values = sorted(values_at[offset])
        if len(values) > 1:
            out.append(
                Violation(
                    Kind.CONFLICTING_ACK,
                    tp,
                    f"offset {offset} acknowledged for {len(values)} values: "
                    + ", ".join(repr(v) for v in values),
                    offset=offset,
                )
            )
    for value in sorted(offsets_of):
        offsets = sorted(offsets_of[value])
        if len(offsets) > 1:
            out.append(
                Violation(
                    Kind.DUPLICATE,
                    tp,
                    f"{value!r} acknowledged at offsets {offsets}",
                    offset=offsets[1],
                    value=value,
                )
            )


def _check_order(
    tp: TopicPartition,
    producers: Mapping[ProducerId, Sequence[Ack]],
    reps: list[_Replica],
    out: list[Violation],
) -> None:
    """Each producer's records keep its acknowledgement order, as acked and in every replica."""
    for pid in sorted(producers, key=_sort_key):
        acks = _unique(producers[pid])
        for (v1, o1), (v2, o2) in pairwise(acks):
            if o2 <= o1:
                out.append(
                    Violation(
                        Kind.REORDERED,
                        tp,
                        f"producer {pid!r}: {v2!r} acknowledged at offset {o2} after {v1!r} "
                        f"at offset {o1}",
                        offset=o2,
                        value=v2,
                        producer=pid,
                    )
                )
        for rep in reps:
            found = [(v, rep.where[v][0]) for v, _ in acks if rep.where.get(v)]
            for (v1, o1), (v2, o2) in pairwise(found):
                if o2 <= o1:
                    out.append(
                        Violation(
                            Kind.REORDERED,
                            tp,
                            f"producer {pid!r}: replica {rep.rid!r} holds {v2!r} at offset {o2}, "
                            f"before {v1!r} at {o1} although it was acknowledged later",
                            offset=o2,
                            value=v2,
                            replica=rep.rid,
                            producer=pid,
                        )
                    )


def _unique(acks: Sequence[Ack]) -> list[Ack]:
    """Drop repeats of the same acknowledgement (same value, same offset), keep the order."""
    seen: set[Ack] = set()
    out = []
    for ack in acks:
        if ack not in seen:
            seen.add(ack)
            out.append(ack)
    return out


def _check_presence(
    tp: TopicPartition,
    producers: Mapping[ProducerId, Sequence[Ack]],
    reps: list[_Replica],
    ref: _Replica | None,
    out: list[Violation],
) -> None:
    """Every acknowledged record is at its offset wherever that offset must be held."""
    acks = sorted({(o, v) for a in producers.values() for v, o in a})
    if not acks:
        return
    if not reps:
        for offset, value in acks:
            out.append(
                Violation(
                    Kind.MISSING,
                    tp,
                    f"{value!r} acknowledged at offset {offset}, but no replica was read",
                    offset=offset,
                    value=value,
                )
            )
        return
    assert ref is not None
    for offset, value in acks:
        for rep in reps:
            if not rep.holds(offset) or rep.at.get(offset) == value:
                continue
            elsewhere = rep.where.get(value)
            if elsewhere:
                out.append(
                    Violation(
                        Kind.MISPLACED,
                        tp,
                        f"{value!r} acknowledged at offset {offset} is at {elsewhere} on "
                        f"replica {rep.rid!r}",
                        offset=offset,
                        value=value,
                        replica=rep.rid,
                    )
                )
            else:
                there = rep.at.get(offset)
                instead = f" (it holds {there!r})" if there is not None else ""
                out.append(
                    Violation(
                        Kind.MISSING,
                        tp,
                        f"{value!r} acknowledged at offset {offset} is missing on replica "
                        f"{rep.rid!r} below its high watermark {rep.hw}{instead}",
                        offset=offset,
                        value=value,
                        replica=rep.rid,
                    )
                )
        if offset >= ref.hw and offset >= ref.log_start:
            holders = [r.rid for r in reps if r.where.get(value)]
            if holders:
                out.append(
                    Violation(
                        Kind.MISPLACED,
                        tp,
                        f"{value!r} acknowledged at offset {offset}, at or past the high "
                        f"watermark {ref.hw} of {ref.rid!r}, is at another offset on "
                        f"{holders}",
                        offset=offset,
                        value=value,
                        replica=ref.rid,
                    )
                )
            else:
                out.append(
                    Violation(
                        Kind.MISSING,
                        tp,
                        f"{value!r} acknowledged at offset {offset}, at or past the high "
                        f"watermark {ref.hw} of {ref.rid!r}: lost or never committed",
                        offset=offset,
                        value=value,
                        replica=ref.rid,
                    )
                )


def _check_duplicates(tp: TopicPartition, reps: list[_Replica], out: list[Violation]) -> None:
    for rep in reps:
        for value, offsets in rep.where.items():
            if len(offsets) > 1:
                out.append(
                    Violation(
                        Kind.DUPLICATE,
                        tp,
                        f"{value!r} is at offsets {sorted(offsets)} on replica {rep.rid!r}",
                        offset=sorted(offsets)[1],
                        value=value,
                        replica=rep.rid,
                    )
                )


def _check_divergence(tp: TopicPartition, reps: list[_Replica], out: list[Violation]) -> None:
    for rep in reps:
        for offset, first, second in rep.clashes:
            out.append(
                Violation(
                    Kind.DIVERGENT,
                    tp,
                    f"replica {rep.rid!r} was read with {first!r} and {second!r} at offset "
                    f"{offset}",
                    offset=offset,
                    replica=rep.rid,
                )
            )
    if len(reps) < 2:
        return
    low = max(r.log_start for r in reps)
    high = min(r.hw for r in reps)
    offsets = sorted({o for r in reps for o in r.at if low <= o < high})
    for offset in offsets:
        seen = {r.rid: r.at.get(offset) for r in reps}
        if len(set(seen.values())) > 1:
            shown = ", ".join(f"{rid!r}: {v!r}" for rid, v in seen.items())
            out.append(
                Violation(
                    Kind.DIVERGENT,
                    tp,
                    f"replicas differ at offset {offset} below the high watermark {high}: {shown}",
                    offset=offset,
                )
            )


def _check_group(
    group: GroupObservation,
    logs: Mapping[TopicPartition, list[_Replica]],
    refs: Mapping[TopicPartition, _Replica | None],
    out: list[Violation],
) -> None:
    name = group.group
    for tp in sorted({*group.consumed, *group.committed}):
        reps = logs.get(tp, [])
        ref = refs.get(tp)
        consumed = group.consumed.get(tp, ())
        delivered: set[tuple[int, bytes]] = set()
        for offset, value in consumed:
            if (offset, value) in delivered:
                continue  # a redelivery: checked the first time
            delivered.add((offset, value))
            holders = [r for r in reps if r.holds(offset)]
            if not holders and reps and offset < min(r.log_start for r in reps):
                continue  # deleted by retention since: nothing to compare with
            wrong = [r for r in holders if r.at.get(offset) != value]
            if holders and not wrong:
                continue
            out.append(
                Violation(
                    Kind.CONSUMED_NOT_IN_LOG,
                    tp,
                    f"group {name!r} consumed {value!r} at offset {offset}, which "
                    + (
                        "no replica holds below its high watermark"
                        if not holders
                        else "differs from "
                        + ", ".join(f"{r.rid!r}: {r.at.get(offset)!r}" for r in wrong)
                    ),
                    offset=offset,
                    value=value,
                    group=name,
                )
            )
        committed = group.committed.get(tp)
        if committed is None or ref is None:
            continue
        if committed > ref.hw:
            out.append(
                Violation(
                    Kind.COMMIT_BEYOND_HW,
                    tp,
                    f"group {name!r} committed offset {committed}, past the high watermark "
                    f"{ref.hw} of {ref.rid!r}",
                    offset=committed,
                    replica=ref.rid,
                    group=name,
                )
            )
        start = group.start_offsets.get(tp, ref.log_start)
        for offset in sorted(o for o in ref.at if start <= o < committed):
            value = ref.at[offset]
            if (offset, value) not in delivered:
                out.append(
                    Violation(
                        Kind.CONSUMED_SKIPPED,
                        tp,
                        f"group {name!r} committed {committed} but never received {value!r} "
                        f"at offset {offset}",
                        offset=offset,
                        value=value,
                        group=name,
                    )
                )
