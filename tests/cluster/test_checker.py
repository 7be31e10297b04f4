"""The checker: correct histories pass, each injected fault is reported as its kind."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from .checker import (
    CheckResult,
    GroupObservation,
    Kind,
    ReplicaRead,
    TopicPartition,
    check,
)

TP0: TopicPartition = ("orders", 0)


# -- generated histories ---------------------------------------------------------------------


@dataclass
class History:
    """A correct history: one log per partition and everything observed about it."""

    logs: dict[TopicPartition, list[tuple[int, bytes]]]  # the leader's log, offset order
    acked: dict[TopicPartition, dict[str, list[tuple[bytes, int]]]]
    replicas: dict[TopicPartition, dict[int, ReplicaRead]]
    leaders: dict[TopicPartition, int]
    groups: list[GroupObservation] = field(default_factory=list)

    def check(self) -> CheckResult:
        return check(self.acked, self.replicas, leaders=self.leaders, groups=self.groups)

    def clone(self) -> History:
        return copy.deepcopy(self)

    def set_read(self, tp: TopicPartition, rid: int, **changes: Any) -> None:
        read = self.replicas[tp][rid]
        fields = {
            "records": list(read.records),
            "high_watermark": read.high_watermark,
            "log_start_offset": read.log_start_offset,
        }
        fields.update(changes)
        self.replicas[tp][rid] = ReplicaRead(**fields)


@st.composite
def partition_history(
    draw: st.DrawFn, tp: TopicPartition, min_replicas: int
) -> tuple[list[tuple[int, bytes]], dict[str, list[tuple[bytes, int]]], dict[int, ReplicaRead]]:
    topic, part = tp
    counts = draw(st.lists(st.integers(1, 8), min_size=1, max_size=3))
    producers = [f"p{i}" for i in range(len(counts))]
    # Interleave the producers' sends; each producer's records keep their own order.
    turns = draw(
        st.permutations([p for p, n in zip(producers, counts, strict=True) for _ in range(n)])
    )
    gaps = draw(st.lists(st.integers(0, 2), min_size=len(turns), max_size=len(turns)))
    acks_wanted = draw(
        st.lists(
            st.sampled_from([True, True, True, False]), min_size=len(turns), max_size=len(turns)
        )
    )
    log: list[tuple[int, bytes]] = []
    owner: dict[bytes, str] = {}
    sent = dict.fromkeys(producers, 0)
    offset = draw(st.integers(0, 3))
    for pid, gap in zip(turns, gaps, strict=True):
        offset += gap  # transaction markers and aborted batches take offsets too
        value = f"{topic}-{part}-{pid}-{sent[pid]:04d}".encode()
        sent[pid] += 1
        log.append((offset, value))
        owner[value] = pid
        offset += 1
    log_end = offset
    hw = draw(st.integers(min_value=log[0][0], max_value=log_end))
    acked: dict[str, list[tuple[bytes, int]]] = {p: [] for p in producers}
    for (off, value), wanted in zip(log, acks_wanted, strict=True):
        if wanted and off < hw:  # an acknowledged write (acks=all) is committed
            acked[owner[value]].append((value, off))
    n_replicas = draw(st.integers(min_replicas, 3))
    reads = {0: ReplicaRead([r for r in log if r[0] < hw], hw, 0)}
    for rid in range(1, n_replicas):
        f_hw = draw(st.integers(0, hw))  # followers' high watermarks may lag the leader's
        f_start = draw(st.integers(0, min(f_hw, 2)))
        reads[rid] = ReplicaRead([r for r in log if f_start <= r[0] < f_hw], f_hw, f_start)
    return log, acked, reads


@st.composite
def histories(draw: st.DrawFn, min_replicas: int = 1, with_group: bool | None = None) -> History:
    tps = [("orders", p) for p in range(draw(st.integers(1, 2)))]
    h = History({}, {}, {}, {})
    for tp in tps:
        log, acked, reads = draw(partition_history(tp, min_replicas))
        h.logs[tp], h.acked[tp], h.replicas[tp], h.leaders[tp] = log, acked, reads, 0
    if with_group if with_group is not None else draw(st.booleans()):
        consumed: dict[TopicPartition, list[tuple[int, bytes]]] = {}
        committed: dict[TopicPartition, int] = {}
        for tp in tps:
            leader = h.replicas[tp][0]
            records = list(leader.records)
            upto = draw(st.integers(0, len(records)))
            committed[tp] = records[upto - 1][0] + 1 if upto else 0
            read = records[: draw(st.integers(upto, len(records)))]  # past the commit too
            redelivered = draw(st.lists(st.sampled_from(read), max_size=3)) if read else []
            consumed[tp] = read + redelivered
        h.groups.append(GroupObservation("g1", consumed, committed))
    return h


def acked_records(h: History) -> list[tuple[TopicPartition, str, int, bytes, int]]:
    """(partition, producer, position in its acks, value, offset) of every acknowledgement."""
    return [
        (tp, pid, i, value, off)
        for tp, producers in h.acked.items()
        for pid, acks in producers.items()
        for i, (value, off) in enumerate(acks)
    ]


SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- correct histories -------------------------------------------------------------------------


@SETTINGS
@given(histories())
def test_correct_histories_have_no_violations(h: History) -> None:
    result = h.check()
    assert result.ok, result.summary()
    assert result.acked_records == len(acked_records(h))


@SETTINGS
@given(histories())
def test_replica_reads_as_plain_lists_are_accepted(h: History) -> None:
    # A bare list of (offset, value) is a read from offset 0 to its last record.
    plain = {
        tp: {rid: list(r.records) for rid, r in reads.items() if r.log_start_offset == 0}
        for tp, reads in h.replicas.items()
    }
    result = check(h.acked, plain)
    assert result.ok, result.summary()


# -- each fault, injected ----------------------------------------------------------------------


@SETTINGS
@given(histories(), st.data())
def test_missing_record_on_a_replica(h: History, data: st.DataObject) -> None:
    candidates = [
        (tp, rid, value, off)
        for tp, _, _, value, off in acked_records(h)
        for rid, read in h.replicas[tp].items()
        if read.log_start_offset <= off < read.hw
    ]
    assume(candidates)
    tp, rid, value, off = data.draw(st.sampled_from(candidates))
    read = h.replicas[tp][rid]
    h.set_read(tp, rid, records=[r for r in read.records if r != (off, value)])
    result = h.check()
    assert any(
        v.kind == Kind.MISSING and v.value == value and v.replica == rid for v in result.violations
    ), result.summary()


@SETTINGS
@given(histories(), st.data())
def test_acknowledged_record_truncated_from_the_leader(h: History, data: st.DataObject) -> None:
    records = acked_records(h)
    assume(records)
    tp, _, _, value, off = data.draw(st.sampled_from(records))
    # An unclean election: the log is cut below an acknowledged record on every replica.
    for rid, read in h.replicas[tp].items():
        hw = min(read.hw, off)
        h.set_read(
            tp,
            rid,
            records=[r for r in read.records if r[0] < hw],
            high_watermark=hw,
            log_start_offset=min(read.log_start_offset, hw),
        )
    result = h.check()
    assert any(
        v.kind == Kind.MISSING and v.value == value and v.replica == 0 for v in result.violations
    ), result.summary()


@SETTINGS
@given(histories(), st.data())
def test_duplicate_record(h: History, data: st.DataObject) -> None:
    candidates = [
        (tp, rid) for tp, reads in h.replicas.items() for rid, r in reads.items() if r.records
    ]
    assume(candidates)
    tp, rid = data.draw(st.sampled_from(candidates))
    read = h.replicas[tp][rid]
    _, value = data.draw(st.sampled_from(list(read.records)))
    # A retried produce written twice: the copy lands at the replica's end.
    h.set_read(tp, rid, records=[*read.records, (read.hw, value)], high_watermark=read.hw + 1)
    result = h.check()
    assert any(
        v.kind == Kind.DUPLICATE and v.value == value and v.replica == rid
        for v in result.violations
    ), result.summary()


@SETTINGS
@given(histories(), st.data())
def test_duplicate_acknowledgement(h: History, data: st.DataObject) -> None:
    records = acked_records(h)
    assume(records)
    tp, pid, _, value, _ = data.draw(st.sampled_from(records))
    last = max(r.hw for r in h.replicas[tp].values())
    h.acked[tp][pid].append((value, last + 5))
    result = h.check()
    assert any(
        v.kind == Kind.DUPLICATE and v.value == value and v.replica is None
        for v in result.violations
    ), result.summary()


@SETTINGS
@given(histories(), st.data())
def test_producer_order_not_preserved(h: History, data: st.DataObject) -> None:
    candidates = [(tp, pid) for tp, ps in h.acked.items() for pid, a in ps.items() if len(a) >= 2]
    assume(candidates)
    tp, pid = data.draw(st.sampled_from(candidates))
    acks = h.acked[tp][pid]
    i = data.draw(st.integers(0, len(acks) - 2))
    j = data.draw(st.integers(i + 1, len(acks) - 1))
    acks[i], acks[j] = acks[j], acks[i]  # acknowledged in an order the offsets contradict
    result = h.check()
    assert any(v.kind == Kind.REORDERED and v.producer == pid for v in result.violations), (
        result.summary()
    )


@SETTINGS
@given(histories(min_replicas=2), st.data())
def test_replicas_diverge_below_the_high_watermark(h: History, data: st.DataObject) -> None:
    candidates = []
    for tp, reads in h.replicas.items():
        low = max(r.log_start_offset for r in reads.values())
        high = min(r.hw for r in reads.values())
        candidates += [
            (tp, rid, off) for off, _ in h.logs[tp] if low <= off < high for rid in reads
        ]
    assume(candidates)
    tp, rid, off = data.draw(st.sampled_from(candidates))
    read = h.replicas[tp][rid]
    h.set_read(tp, rid, records=[(o, b"forked" if o == off else v) for o, v in read.records])
    result = h.check()
    assert any(v.kind == Kind.DIVERGENT and v.offset == off for v in result.violations), (
        result.summary()
    )


@SETTINGS
@given(histories(), st.data())
def test_offset_acknowledged_to_two_values(h: History, data: st.DataObject) -> None:
    records = acked_records(h)
    assume(records)
    tp, _, _, _, off = data.draw(st.sampled_from(records))
    h.acked[tp]["intruder"] = [(b"intruder-0000", off)]
    result = h.check()
    assert any(v.kind == Kind.CONFLICTING_ACK and v.offset == off for v in result.violations), (
        result.summary()
    )


@SETTINGS
@given(histories(), st.data())
def test_acknowledged_at_the_wrong_offset(h: History, data: st.DataObject) -> None:
    records = acked_records(h)
    assume(records)
    tp, pid, i, value, off = data.draw(st.sampled_from(records))
    h.acked[tp][pid][i] = (value, off + data.draw(st.integers(1, 3)))
    result = h.check()
    assert any(v.kind == Kind.MISPLACED and v.value == value for v in result.violations), (
        result.summary()
    )


@SETTINGS
@given(histories(with_group=True), st.data())
def test_group_skipped_a_record(h: History, data: st.DataObject) -> None:
    group = h.groups[0]
    candidates = [
        (tp, off, value)
        for tp, c in group.committed.items()
        for off, value in h.replicas[tp][0].records
        if off < c
    ]
    assume(candidates)
    tp, off, value = data.draw(st.sampled_from(candidates))
    consumed = {**group.consumed, tp: [r for r in group.consumed[tp] if r != (off, value)]}
    h.groups = [GroupObservation(group.group, consumed, group.committed)]
    result = h.check()
    assert any(v.kind == Kind.CONSUMED_SKIPPED and v.value == value for v in result.violations), (
        result.summary()
    )


@SETTINGS
@given(histories(with_group=True), st.data())
def test_group_consumed_what_the_log_does_not_hold(h: History, data: st.DataObject) -> None:
    group = h.groups[0]
    tp = data.draw(st.sampled_from(sorted(group.consumed)))
    off = data.draw(st.integers(0, h.replicas[tp][0].hw + 3))
    consumed = {**group.consumed, tp: [*group.consumed[tp], (off, b"phantom")]}
    h.groups = [GroupObservation(group.group, consumed, group.committed)]
    result = h.check()
    assert any(
        v.kind == Kind.CONSUMED_NOT_IN_LOG and v.value == b"phantom" for v in result.violations
    ), result.summary()


@SETTINGS
@given(histories(with_group=True), st.data())
def test_group_committed_past_the_high_watermark(h: History, data: st.DataObject) -> None:
    group = h.groups[0]
    tp = data.draw(st.sampled_from(sorted(group.committed)))
    beyond = h.replicas[tp][0].hw + data.draw(st.integers(1, 5))
    h.groups = [GroupObservation(group.group, group.consumed, {**group.committed, tp: beyond})]
    result = h.check()
    assert Kind.COMMIT_BEYOND_HW in result.kinds(), result.summary()


# -- small worked examples -------------------------------------------------------------------


def test_example_exact_reports() -> None:
    acked = {TP0: {"p0": [(b"p0-0", 0), (b"p0-1", 1)], "p1": [(b"p1-0", 2)]}}
    good = [(0, b"p0-0"), (1, b"p0-1"), (2, b"p1-0")]
    assert check(acked, {TP0: {0: ReplicaRead(good, 3), 1: ReplicaRead(good, 3)}}).ok

    lost = check(acked, {TP0: {0: ReplicaRead(good, 3), 1: ReplicaRead(good[:1], 3)}})
    assert [(v.kind, v.replica) for v in lost.violations if v.kind == Kind.MISSING] == [
        (Kind.MISSING, 1),
        (Kind.MISSING, 1),
    ]
    assert lost.kinds() == {Kind.MISSING, Kind.DIVERGENT}

    tail = check(acked, {TP0: {0: ReplicaRead(good[:2], 2)}})
    assert tail.kinds() == {Kind.MISSING}
    assert tail.violations[0].value == b"p1-0"

    dup = check(acked, {TP0: {0: ReplicaRead([*good, (3, b"p0-1")], 4)}})
    assert dup.kinds() == {Kind.DUPLICATE}

    forked = [(0, b"p0-0"), (1, b"p0-1"), (2, b"zz")]
    div = check({}, {TP0: {0: ReplicaRead(good, 3), 1: ReplicaRead(forked, 3)}})
    assert div.kinds() == {Kind.DIVERGENT}
    assert div.violations[0].offset == 2

    swapped = {TP0: {"p0": [(b"p0-1", 1), (b"p0-0", 0)]}}
    assert check(swapped, {TP0: {0: good}}).kinds() == {Kind.REORDERED}

    twice = {TP0: {"p0": [(b"p0-0", 0)], "p1": [(b"p1-0", 0)]}}
    assert Kind.CONFLICTING_ACK in check(twice, {TP0: {0: good}}).kinds()

    # Below the log start (retention) and above a follower's high watermark: not required.
    behind = ReplicaRead([(1, b"p0-1")], high_watermark=2, log_start_offset=1)
    assert check(acked, {TP0: {0: ReplicaRead(good, 3), 1: behind}}).ok


def test_example_groups() -> None:
    log = [(0, b"a"), (1, b"b"), (3, b"c")]  # offset 2: a transaction marker
    reads = {TP0: {0: ReplicaRead(log, 4)}}
    ok = GroupObservation("g", {TP0: [(0, b"a"), (1, b"b"), (1, b"b"), (3, b"c")]}, {TP0: 4})
    assert check({}, reads, groups=[ok]).ok
    skipped = GroupObservation("g", {TP0: [(0, b"a"), (3, b"c")]}, {TP0: 4})
    result = check({}, reads, groups=[skipped])
    assert [(v.kind, v.offset) for v in result.violations] == [(Kind.CONSUMED_SKIPPED, 1)]
    phantom = GroupObservation("g", {TP0: [(0, b"a"), (1, b"x")]}, {})
    assert check({}, reads, groups=[phantom]).kinds() == {Kind.CONSUMED_NOT_IN_LOG}
    ahead = GroupObservation("g", {TP0: list(log)}, {TP0: 9})
    assert check({}, reads, groups=[ahead]).kinds() == {Kind.COMMIT_BEYOND_HW}
    assert "commit-beyond-hw" in check({}, reads, groups=[ahead]).summary()
