"""The share-partition state machine (pure): examples and a Hypothesis stateful model."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from shazamq.broker.groups.share_partition import (
    AckError,
    AckType,
    LogBatch,
    RecordState,
    SharePartition,
    deliverable_batches,
)

LOCK = 1000


def log_of(n: int, size: int = 1) -> list[LogBatch]:
    return [LogBatch(o, min(o + size, n) - 1) for o in range(0, n, size)]


def test_two_members_get_distinct_records_and_accept_finishes_them():
    sp = SharePartition(0)
    a = sp.acquire("a", log_of(10), now=0, lock_ms=LOCK, max_records=4)
    b = sp.acquire("b", log_of(10), now=0, lock_ms=LOCK, max_records=100)
    assert a == [(0, 3, 1)]
    assert b == [(4, 9, 1)]
    sp.acknowledge("a", 0, 3, [AckType.ACCEPT], now=1, lock_ms=LOCK)
    assert sp.start == 4  # SPSO moved past the accepted records
    with pytest.raises(AckError):  # not b's records
        sp.acknowledge("b", 0, 0, [AckType.ACCEPT], now=1, lock_ms=LOCK)
    assert sp.acquire("c", log_of(10), now=2, lock_ms=LOCK, max_records=10) == []


def test_lock_expiry_redelivers_and_the_limit_archives():
    sp = SharePartition(0, delivery_limit=2)
    assert sp.acquire("a", log_of(3), now=0, lock_ms=LOCK, max_records=10) == [(0, 2, 1)]
    # the lock ends: another member gets them, delivered a second time
    assert sp.acquire("b", log_of(3), now=LOCK, lock_ms=LOCK, max_records=10) == [(0, 2, 2)]
    sp.acknowledge("b", 1, 1, [AckType.RELEASE], now=LOCK + 1, lock_ms=LOCK)
    # delivered twice (the limit): released means archived, never delivered again
    assert sp.state_of(1) == RecordState.ARCHIVED
    assert sp.expire(3 * LOCK) == 2
    assert (
        sp.start == 3
        and sp.acquire("c", log_of(3), now=4 * LOCK, lock_ms=LOCK, max_records=9) == []
    )


def test_per_offset_types_reject_and_gap_archive():
    sp = SharePartition(10)
    sp.acquire("a", [LogBatch(10, 14)], now=0, lock_ms=LOCK, max_records=10)
    sp.acknowledge("a", 10, 14, [1, 2, 3, 0, 1], now=1, lock_ms=LOCK)
    assert [sp.state_of(o) for o in (11,)] == [RecordState.AVAILABLE]
    assert sp.start == 11
    assert sp.acquire("b", [LogBatch(10, 14)], now=2, lock_ms=LOCK, max_records=10) == [(11, 11, 2)]


@pytest.mark.parametrize(
    ("first", "last", "types", "bad_request"),
    [
        (5, 4, [1], True),  # reversed range
        (0, 3, [1, 1], True),  # neither one type nor one per offset
        (0, 0, [9], True),  # unknown type
        (0, 9, [1], False),  # past what is acquired
    ],
)
def test_bad_acknowledgements_change_nothing(first, last, types, bad_request):
    sp = SharePartition(0)
    sp.acquire("a", log_of(4), now=0, lock_ms=LOCK, max_records=10)
    with pytest.raises(AckError) as exc:
        sp.acknowledge("a", first, last, types, now=1, lock_ms=LOCK)
    assert exc.value.bad_request is bad_request
    assert sp.acquired_by("a") == [0, 1, 2, 3]


def test_renew_extends_the_lock():
    sp = SharePartition(0)
    sp.acquire("a", log_of(1), now=0, lock_ms=LOCK, max_records=1)
    sp.acknowledge("a", 0, 0, [AckType.RENEW], now=LOCK - 1, lock_ms=LOCK)
    assert sp.expire(LOCK + 10) == 0 and sp.owner(0) == "a"


def test_max_in_flight_bounds_the_window():
    sp = SharePartition(0, max_in_flight=5)
    assert sp.acquire("a", log_of(20), now=0, lock_ms=LOCK, max_records=100) == [(0, 4, 1)]
    sp.acknowledge("a", 0, 1, [AckType.ACCEPT], now=1, lock_ms=LOCK)
    assert sp.acquire("b", log_of(20), now=1, lock_ms=LOCK, max_records=100) == [(5, 6, 1)]


def test_snapshot_round_trip_drops_locks_keeps_counts():
    sp = SharePartition(0, delivery_limit=3)
    sp.acquire("a", log_of(6), now=0, lock_ms=LOCK, max_records=6)
    sp.acknowledge("a", 1, 1, [AckType.ACCEPT], now=1, lock_ms=LOCK)
    sp.acknowledge("a", 2, 2, [AckType.REJECT], now=1, lock_ms=LOCK)
    start, batches = sp.snapshot()
    back = SharePartition.restore(start, batches, delivery_limit=3, max_in_flight=100)
    assert back.start == 0 and back.end == 6
    assert [back.state_of(o) for o in range(6)] == [
        RecordState.AVAILABLE,
        RecordState.ACKNOWLEDGED,
        RecordState.ARCHIVED,
        RecordState.AVAILABLE,
        RecordState.AVAILABLE,
        RecordState.AVAILABLE,
    ]
    assert back.delivery_count(0) == 1
    assert back.acquire("b", log_of(8), now=0, lock_ms=LOCK, max_records=10) == [
        (0, 0, 2),
        (3, 5, 2),
        (6, 7, 1),
    ]


def test_markers_and_aborted_records_are_not_deliverable():
    # (first, last, control, transactional, producer id, control kind)
    headers = [
        (0, 1, False, True, 7, None),  # aborted transaction of producer 7
        (2, 2, False, False, -1, None),
        (3, 3, True, True, 7, 0),  # its ABORT marker
        (4, 5, False, True, 8, None),  # committed transaction of producer 8
        (6, 6, True, True, 8, 1),
    ]
    batches = deliverable_batches(headers, [(7, 0)])
    assert [b.deliverable for b in batches] == [False, True, False, True, False]
    sp = SharePartition(0)
    assert sp.acquire("a", batches, now=0, lock_ms=LOCK, max_records=100) == [
        (2, 2, 1),
        (4, 5, 1),
    ]
    assert sp.state_of(0) is None  # archived at the start: SPSO passed it
    assert sp.state_of(3) == RecordState.ARCHIVED


MEMBERS = ("m1", "m2", "m3")
LOG_END = 30


class ShareMachine(RuleBasedStateMachine):
    """A model of who holds what; the machine must agree with it and keep the rules."""

    @initialize(
        limit=st.integers(2, 4),
        window=st.integers(3, 40),
        size=st.integers(1, 4),
        markers=st.sets(st.integers(0, LOG_END - 1), max_size=4),
    )
    def setup(self, limit, window, size, markers):
        self.limit = limit
        self.sp = SharePartition(0, delivery_limit=limit, max_in_flight=window)
        self.log = [
            LogBatch(b.first, b.last, b.first not in markers) for b in log_of(LOG_END, size)
        ]
        self.now = 0
        self.held: dict[int, tuple[str, int]] = {}  # offset -> (member, deadline)
        self.done: set[int] = set()  # accepted or rejected
        self.counts: dict[int, int] = {}
        self.min_start = 0

    def _expire_model(self):
        for o, (_m, deadline) in list(self.held.items()):
            if deadline <= self.now:
                del self.held[o]

    @rule(member=st.sampled_from(MEMBERS), n=st.integers(1, 10))
    def acquire(self, member, n):
        self._expire_model()
        start_before = self.sp.start
        runs = self.sp.acquire(member, self.log, now=self.now, lock_ms=LOCK, max_records=n)
        for first, last, dc in runs:
            for o in range(first, last + 1):
                assert o not in self.held, f"{o} handed out while held"
                assert o not in self.done, f"{o} delivered after accept/reject"
                assert o >= start_before, f"{o} below SPSO {start_before}"
                self.counts[o] = self.counts.get(o, 0) + 1
                assert dc == self.counts[o] <= self.limit
                self.held[o] = (member, self.now + LOCK)

    @precondition(lambda self: self.held)
    @rule(data=st.data(), kind=st.sampled_from(list(AckType)))
    def acknowledge(self, data, kind):
        self._expire_model()
        if not self.held:
            return
        o = data.draw(st.sampled_from(sorted(self.held)))
        member = self.held[o][0]
        self.sp.acknowledge(member, o, o, [int(kind)], now=self.now, lock_ms=LOCK)
        if kind in (AckType.ACCEPT, AckType.REJECT, AckType.GAP):
            del self.held[o]
            self.done.add(o)
        elif kind == AckType.RELEASE:
            del self.held[o]
        else:
            self.held[o] = (member, self.now + LOCK)

    @rule(data=st.data())
    def foreign_acknowledge_refused(self, data):
        self._expire_model()
        o = data.draw(st.integers(0, LOG_END))
        owner = self.held.get(o, (None,))[0]
        intruder = next(m for m in MEMBERS if m != owner)
        with pytest.raises(AckError):
            self.sp.acknowledge(intruder, o, o, [1], now=self.now, lock_ms=LOCK)

    @rule(ms=st.integers(0, 2 * LOCK))
    def time_passes(self, ms):
        self.now += ms

    @rule(member=st.sampled_from(MEMBERS))
    def member_leaves(self, member):
        self._expire_model()
        self.sp.release_member(member)
        for o in [o for o, (m, _d) in self.held.items() if m == member]:
            del self.held[o]

    @rule()
    def restart(self):
        start, batches = self.sp.snapshot()
        self.sp = SharePartition.restore(
            start, batches, delivery_limit=self.limit, max_in_flight=self.sp.max_in_flight
        )
        self.held.clear()  # locks do not survive

    @invariant()
    def window_is_exact(self):
        sp = self.sp
        assert set(sp.records) == set(range(sp.start, sp.end))
        assert sp.start >= self.min_start
        self.min_start = sp.start
        for o, r in sp.records.items():
            assert r.delivery_count <= self.limit
            if r.state == RecordState.ACQUIRED:
                assert r.member is not None
            if r.state == RecordState.AVAILABLE:
                assert r.delivery_count < self.limit
            if o in self.done:
                assert r.state in (RecordState.ACKNOWLEDGED, RecordState.ARCHIVED)


TestShareMachine = ShareMachine.TestCase
TestShareMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
