"""The in-flight records of one share-partition (KIP-932): a pure state machine, no I/O.

A share group reads a topic partition as a queue. Every offset between the share-partition
start offset (SPSO) and its end offset (SPEO) has a state:

* AVAILABLE: may be handed out (again); it carries how often it was delivered;
* ACQUIRED: handed to one member, locked until a deadline (the acquisition lock);
* ACKNOWLEDGED: accepted by a member, done;
* ARCHIVED: rejected, delivered too often, a transaction marker or an aborted record: done.

Offsets at or past SPEO were never handed out. SPSO moves past every finished offset at the
start of the window, so nothing below it is ever delivered again. A RELEASE, an expired
lock or the departure of the member makes an ACQUIRED offset AVAILABLE again, unless it
was delivered ``delivery_limit`` times already: then it is ARCHIVED.

Time is passed in (milliseconds, any monotonic clock), so the machine is deterministic and
tested with Hypothesis; the share coordinator owns the clock, the log reads and the writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

__all__ = [
    "AckError",
    "AckType",
    "LogBatch",
    "RecordState",
    "SharePartition",
    "StateBatch",
    "deliverable_batches",
    "finished_in",
]


class RecordState(IntEnum):
    """Kafka's delivery states, with its numbering (persisted as such)."""

    AVAILABLE = 0
    ACQUIRED = 1
    ACKNOWLEDGED = 2
    ARCHIVED = 4


class AckType(IntEnum):
    GAP = 0
    ACCEPT = 1
    RELEASE = 2
    REJECT = 3
    RENEW = 4


FINISHED = (RecordState.ACKNOWLEDGED, RecordState.ARCHIVED)


class AckError(ValueError):
    """An acknowledgement the partition refuses (INVALID_RECORD_STATE or INVALID_REQUEST)."""

    def __init__(self, message: str, *, bad_request: bool = False) -> None:
        super().__init__(message)
        self.bad_request = bad_request


@dataclass(frozen=True, slots=True)
class LogBatch:
    """A batch met in the log: its offsets, and whether its records may be delivered
    (False for transaction markers and, under read_committed, aborted records)."""

    first: int
    last: int
    deliverable: bool = True


@dataclass(frozen=True, slots=True)
class StateBatch:
    """A run of offsets with one state and delivery count (what is persisted)."""

    first: int
    last: int
    state: RecordState
    delivery_count: int


@dataclass(slots=True)
class _Record:
    state: RecordState
    delivery_count: int
    member: str | None = None
    deadline: int = 0


@dataclass(slots=True)
class SharePartition:
    """One partition's window of in-flight records for one share group.

    Invariant: ``records`` has exactly the offsets of ``[start, end)``; every ACQUIRED
    record names its member and lock deadline; no AVAILABLE record has been delivered
    ``delivery_limit`` times.
    """

    start: int
    delivery_limit: int = 5
    max_in_flight: int = 2000
    end: int = -1
    records: dict[int, _Record] = field(default_factory=dict)
    # every change since the last snapshot taken (the coordinator persists then)
    dirty: bool = False

    def __post_init__(self) -> None:
        if self.end < self.start:
            self.end = self.start

    # -- reading ----------------------------------------------------------------------

    def state_of(self, offset: int) -> RecordState | None:
        """The state of ``offset``; None past the end (never delivered) and below the start."""
        r = self.records.get(offset)
        return None if r is None else r.state

    def delivery_count(self, offset: int) -> int:
        r = self.records.get(offset)
        return 0 if r is None else r.delivery_count

    def owner(self, offset: int) -> str | None:
        r = self.records.get(offset)
        return r.member if r is not None and r.state == RecordState.ACQUIRED else None

    def acquired_by(self, member: str) -> list[int]:
        return sorted(
            o
            for o, r in self.records.items()
            if r.state == RecordState.ACQUIRED and r.member == member
        )

    def first_available(self) -> int | None:
        """The lowest AVAILABLE offset inside the window, or None."""
        for o in range(self.start, self.end):
            if self.records[o].state == RecordState.AVAILABLE:
                return o
        return None

    def read_from(self) -> int:
        """Where a fetch must start reading the log: the first redeliverable offset in the
        window, else the end."""
        first = self.first_available()
        return self.end if first is None else first

    def next_deadline(self) -> int | None:
        deadlines = [r.deadline for r in self.records.values() if r.state == RecordState.ACQUIRED]
        return min(deadlines) if deadlines else None

    def in_flight(self) -> int:
        return self.end - self.start

    def finished(self) -> int:
        """How many offsets of the window are done with (acknowledged or archived)."""
        records = self.records
        return sum(1 for o in range(self.start, self.end) if records[o].state in FINISHED)

    # -- changing ---------------------------------------------------------------------

    def _release_one(self, r: _Record) -> None:
        r.member = None
        r.deadline = 0
        r.state = (
            RecordState.ARCHIVED
            if r.delivery_count >= self.delivery_limit
            else RecordState.AVAILABLE
        )

    def _advance(self) -> None:
        """Move SPSO past the finished offsets at the start of the window."""
        start, records = self.start, self.records
        while start < self.end and records[start].state in FINISHED:
            del records[start]
            start += 1
        if start != self.start:
            self.start = start
            self.dirty = True

    def expire(self, now: int) -> int:
        """Release every lock whose deadline passed; returns how many records it freed."""
        n = 0
        for r in self.records.values():
            if r.state == RecordState.ACQUIRED and r.deadline <= now:
                self._release_one(r)
                n += 1
        if n:
            self.dirty = True
            self._advance()
        return n

    def move_start(self, offset: int) -> None:
        """The log no longer has what is below ``offset`` (retention, or an admin reset):
        the window starts there; what was in flight below it is forgotten."""
        if offset <= self.start:
            return
        for o in range(self.start, min(offset, self.end)):
            del self.records[o]
        self.start = offset
        self.end = max(self.end, offset)
        self.dirty = True
        self._advance()

    def acquire(
        self,
        member: str,
        batches: Iterable[LogBatch],
        *,
        now: int,
        lock_ms: int,
        max_records: int,
    ) -> list[tuple[int, int, int]]:
        """Hand records of ``batches`` (read from the log, in offset order) to ``member``.

        Redeliverable offsets inside the window come first in offset order, then offsets
        past the end, until ``max_records`` are acquired (exactly: a batch may be shared
        by several members, each told its offsets, as in Kafka's record-limit mode) or
        the window is ``max_in_flight`` long. Offsets of undeliverable batches past the
        end are archived on the way. Returns ``(first, last, delivery count)`` runs of
        what was acquired.
        """
        self.expire(now)
        deadline = now + lock_ms
        taken: list[int] = []
        full = False
        for b in batches:
            if full or len(taken) >= max_records:
                break
            lo = max(b.first, self.start)
            if lo > b.last:
                continue
            if lo > self.end:
                # a hole in the log (compaction, retention): nothing to deliver there
                for o in range(self.end, lo):
                    self.records[o] = _Record(RecordState.ARCHIVED, 0)
                self.end = lo
                self.dirty = True
            for o in range(lo, b.last + 1):
                r = self.records.get(o)
                if r is None:  # past the end: a record never handed out
                    if self.end - self.start >= self.max_in_flight:
                        full = True  # the window is as long as allowed: stop here
                        break
                    if not b.deliverable:
                        r = self.records[o] = _Record(RecordState.ARCHIVED, 0)
                        self.end = o + 1
                        self.dirty = True
                        continue
                    r = self.records[o] = _Record(RecordState.AVAILABLE, 0)
                    self.end = o + 1
                if r.state != RecordState.AVAILABLE or not b.deliverable:
                    continue
                if len(taken) >= max_records:
                    break
                r.state = RecordState.ACQUIRED
                r.delivery_count += 1
                r.member = member
                r.deadline = deadline
                taken.append(o)
        # acquisitions alone are not persisted (a lock does not outlive the broker)
        self._advance()
        return _runs(taken, self.records)

    def acknowledge(
        self,
        member: str,
        first: int,
        last: int,
        types: Sequence[int],
        *,
        now: int,
        lock_ms: int,
    ) -> None:
        """Apply one acknowledgement batch of ``member``, all or nothing.

        ``types`` has one type for the whole range or one per offset. Every offset must be
        ACQUIRED by ``member`` (else AckError, INVALID_RECORD_STATE), the range well formed
        and the types known (else AckError with ``bad_request``, INVALID_REQUEST).
        """
        if first < 0 or last < first:
            raise AckError(f"invalid acknowledgement range {first}-{last}", bad_request=True)
        span = last - first + 1
        if len(types) not in (1, span):
            raise AckError(
                f"{len(types)} acknowledge types for {span} offsets {first}-{last}",
                bad_request=True,
            )
        kinds = []
        for t in types:
            try:
                kinds.append(AckType(t))
            except ValueError:
                raise AckError(f"unknown acknowledge type {t}", bad_request=True) from None
        self.expire(now)
        for o in range(first, last + 1):
            r = self.records.get(o)
            if r is None or r.state != RecordState.ACQUIRED or r.member != member:
                raise AckError(f"offset {o} is not acquired by member {member}")
        for i, o in enumerate(range(first, last + 1)):
            kind = kinds[0] if len(kinds) == 1 else kinds[i]
            r = self.records[o]
            if kind == AckType.ACCEPT:
                r.state, r.member, r.deadline = RecordState.ACKNOWLEDGED, None, 0
            elif kind in (AckType.REJECT, AckType.GAP):
                r.state, r.member, r.deadline = RecordState.ARCHIVED, None, 0
            elif kind == AckType.RELEASE:
                self._release_one(r)
            else:  # RENEW: the member needs longer
                r.deadline = now + lock_ms
        self.dirty = True
        self._advance()

    def release_member(self, member: str) -> int:
        """Free every record ``member`` holds (it left, or its session ended)."""
        n = 0
        for r in self.records.values():
            if r.state == RecordState.ACQUIRED and r.member == member:
                self._release_one(r)
                n += 1
        if n:
            self.dirty = True
            self._advance()
        return n

    # -- persistence ------------------------------------------------------------------

    def snapshot(self) -> tuple[int, list[StateBatch]]:
        """SPSO and the runs of the window; ACQUIRED is written as AVAILABLE (locks do not
        outlive the broker), keeping the delivery count."""
        out: list[StateBatch] = []
        for o in range(self.start, self.end):
            r = self.records[o]
            state = RecordState.AVAILABLE if r.state == RecordState.ACQUIRED else r.state
            prev = out[-1] if out else None
            if (
                prev is not None
                and prev.last == o - 1
                and prev.state == state
                and prev.delivery_count == r.delivery_count
            ):
                out[-1] = StateBatch(prev.first, o, state, r.delivery_count)
            else:
                out.append(StateBatch(o, o, state, r.delivery_count))
        self.dirty = False
        return self.start, out

    @classmethod
    def restore(
        cls,
        start: int,
        batches: Iterable[StateBatch],
        *,
        delivery_limit: int,
        max_in_flight: int,
    ) -> SharePartition:
        """The partition a snapshot describes (offsets it lacks inside the window were
        never delivered: AVAILABLE)."""
        sp = cls(start, delivery_limit=delivery_limit, max_in_flight=max_in_flight)
        for b in batches:
            for o in range(max(b.first, start), b.last + 1):
                state = RecordState(b.state)
                if state == RecordState.ACQUIRED:
                    state = RecordState.AVAILABLE
                sp.records[o] = _Record(state, max(b.delivery_count, 0))
                sp.end = max(sp.end, o + 1)
        for o in range(start, sp.end):
            r = sp.records.get(o)
            if r is None:
                sp.records[o] = _Record(RecordState.AVAILABLE, 0)
            elif r.state == RecordState.AVAILABLE and r.delivery_count >= delivery_limit:
                r.state = RecordState.ARCHIVED
        sp._advance()
        sp.dirty = False
        return sp


def finished_in(start: int, batches: Iterable[StateBatch]) -> int:
    """How many offsets at or past ``start`` the persisted ``batches`` mark finished."""
    return sum(
        b.last - max(b.first, start) + 1 for b in batches if b.state in FINISHED and b.last >= start
    )


def _runs(offsets: list[int], records: dict[int, _Record]) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    for o in offsets:
        dc = records[o].delivery_count if o in records else 1
        if out and out[-1][1] == o - 1 and out[-1][2] == dc:
            out[-1] = (out[-1][0], o, dc)
        else:
            out.append((o, o, dc))
    return out


def deliverable_batches(
    headers: Iterable[tuple[int, int, bool, bool, int, int | None]],
    aborted: Iterable[tuple[int, int]] | None,
) -> list[LogBatch]:
    """LogBatches from ``(first, last, is_control, is_transactional, producer_id,
    control_kind)`` in log order; ``aborted`` (read_committed only) lists
    ``(producer_id, first_offset)`` of aborted transactions, as a consumer reads them:
    a transactional batch of a producer whose aborted transaction began at or before it
    and has not met its marker yet is not deliverable. Markers never are."""
    pending = sorted(aborted or [], key=lambda a: a[1])
    active: set[int] = set()
    i = 0
    out: list[LogBatch] = []
    for first, last, is_control, transactional, pid, kind in headers:
        while i < len(pending) and pending[i][1] <= first:
            active.add(pending[i][0])
            i += 1
        if is_control:
            if kind == 0:  # an ABORT marker ends the producer's aborted transaction
                active.discard(pid)
            out.append(LogBatch(first, last, False))
            continue
        out.append(LogBatch(first, last, not (transactional and pid in active)))
    return out
