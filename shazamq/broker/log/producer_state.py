"""Idempotent and transactional producer state of one partition.

Idempotence: per producer id the log remembers the epoch and the last five batches
(first/last sequence, first/last offset). A retried batch (same id, epoch and sequence
range) is answered with its original offsets and not written again; a gap in the
sequence is OUT_OF_ORDER_SEQUENCE_NUMBER (45); an older epoch is INVALID_PRODUCER_EPOCH
(47); a bumped epoch must restart at sequence 0. Sequences wrap at int32 max. As in
Kafka, only client appends are checked for duplicates and sequences: a coordinator's
append (a transactional offset commit) is checked for the producer epoch alone.

Transactions: the first transactional batch of a producer opens a transaction at its
offset, and the COMMIT/ABORT control batch closes it. The earliest open transaction
bounds the last stable offset; aborted transactions are handed back so the log can
record them in the ``.txnindex`` of the segment holding the marker.

An append is checked against a staged copy (:class:`ProducerStateUpdate`) and committed
only once the bytes are on disk, so a payload of several batches is all-or-nothing.

The state survives restarts through ``<offset, 20 digits>.snapshot`` files (the state
before that offset), written when a segment rolls and at clean shutdown. After a restart
the log loads the newest usable snapshot and replays only batch headers after it.

Snapshot format (big-endian): magic ``b"SQPS"``, version i16 (1), CRC-32C u32 of the
rest, count i32, then per producer: producer id i64, epoch i16, coordinator epoch i32,
last timestamp i64, open transaction's first offset i64 (-1: none), batch count i8, and
per batch: first sequence i32, last sequence i32, first offset i64, last offset i64.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

import crc32c

from shazamq.protocol.records import (
    CONTROL_ABORT,
    INT32_MAX,
    NO_PRODUCER_EPOCH,
    BatchHeader,
    ControlRecord,
)

from .errors import (
    InvalidProducerEpochError,
    InvalidTxnStateError,
    OutOfOrderSequenceError,
    TransactionCoordinatorFencedError,
)

__all__ = [
    "ActiveProducer",
    "BatchMetadata",
    "CompletedTxn",
    "CorruptSnapshotError",
    "ProducerEntry",
    "ProducerStateManager",
    "ProducerStateUpdate",
    "snapshot_file_name",
]

SNAPSHOT_SUFFIX = ".snapshot"
MAX_CACHED_BATCHES = 5

_MAGIC = b"SQPS"
_VERSION = 1
_FILE_HEADER = struct.Struct(">4shI")
_COUNT = struct.Struct(">i")
_ENTRY = struct.Struct(">qhiqqb")
_BATCH = struct.Struct(">iiqq")


# producers a partition remembers at most (Kafka bounds them only by expiry): beyond it
# the longest idle ones are forgotten, so memory and snapshot writes stay bounded
MAX_PRODUCERS = 20_000


def snapshot_file_name(offset: int) -> str:
    return f"{offset:020d}{SNAPSHOT_SUFFIX}"


class CorruptSnapshotError(Exception):
    """A snapshot file that cannot be trusted; the log falls back to an older one."""


class BatchMetadata(NamedTuple):
    """What duplicate detection remembers of a producer's batch."""

    first_seq: int
    last_seq: int
    first_offset: int
    last_offset: int


class ActiveProducer(NamedTuple):
    """A read-only view of one producer's state (what DescribeProducers reports)."""

    producer_id: int
    producer_epoch: int
    last_sequence: int  # -1: no data batch cached for the current epoch
    last_timestamp: int
    coordinator_epoch: int
    current_txn_start_offset: int  # -1: no open transaction


class CompletedTxn(NamedTuple):
    """A transaction closed by a marker at ``last_offset``."""

    producer_id: int
    first_offset: int
    last_offset: int
    aborted: bool


@dataclass(slots=True)
class ProducerEntry:
    """The state of one producer id."""

    producer_id: int
    epoch: int = NO_PRODUCER_EPOCH
    batches: list[BatchMetadata] = field(default_factory=list)
    last_timestamp: int = -1
    coordinator_epoch: int = -1
    txn_first_offset: int = -1

    @property
    def last_seq(self) -> int:
        return self.batches[-1].last_seq if self.batches else -1

    @property
    def last_offset(self) -> int:
        return self.batches[-1].last_offset if self.batches else -1

    def copy(self) -> ProducerEntry:
        return ProducerEntry(
            self.producer_id,
            self.epoch,
            list(self.batches),
            self.last_timestamp,
            self.coordinator_epoch,
            self.txn_first_offset,
        )

    def find_duplicate(self, first_seq: int, last_seq: int) -> BatchMetadata | None:
        for meta in self.batches:
            if meta.first_seq == first_seq and meta.last_seq == last_seq:
                return meta
        return None

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.batches.clear()

    def add_batch(self, meta: BatchMetadata) -> None:
        batches = self.batches
        batches.append(meta)
        if len(batches) > MAX_CACHED_BATCHES:
            del batches[0]


def in_sequence(last_seq: int, next_seq: int) -> bool:
    return next_seq == last_seq + 1 or (last_seq == INT32_MAX and next_seq == 0)


class ProducerStateUpdate:
    """Staged producer-state changes of one append, checked batch by batch.

    ``validate`` checks epochs, coordinator epochs and transaction state (off for replayed
    and replicated batches); ``check_sequences`` adds duplicate detection and sequence
    checks on data batches, which Kafka applies to client appends only: a coordinator's
    transactional offset commit carries the producer's id and epoch but not a sequence
    the producer chose.
    """

    __slots__ = ("_manager", "check_sequences", "completed", "entries", "validate")

    def __init__(
        self, manager: ProducerStateManager, *, validate: bool, check_sequences: bool = True
    ) -> None:
        self._manager = manager
        self.validate = validate
        self.check_sequences = validate and check_sequences
        self.entries: dict[int, ProducerEntry] = {}
        self.completed: list[CompletedTxn] = []

    def _entry(self, producer_id: int) -> ProducerEntry:
        entry = self.entries.get(producer_id)
        if entry is None:
            current = self._manager.entries.get(producer_id)
            entry = current.copy() if current is not None else ProducerEntry(producer_id)
            self.entries[producer_id] = entry
        return entry

    def append_batch(
        self,
        header: BatchHeader,
        first_offset: int,
        timestamp: int,
        control: ControlRecord | None = None,
    ) -> BatchMetadata | None:
        """Check and stage one batch placed at ``first_offset``.

        Returns the original batch's metadata when this one is a retried duplicate
        (nothing is staged then). Raises the Kafka producer errors when validating.
        """
        pid = header.producer_id
        entry = self._entry(pid)
        epoch = header.producer_epoch
        last_offset = first_offset + header.last_offset_delta
        if self.validate:
            if entry.epoch != NO_PRODUCER_EPOCH and epoch < entry.epoch:
                raise InvalidProducerEpochError(
                    f"producer {pid} epoch {epoch} is older than the current {entry.epoch}"
                )
            if control is not None:
                if control.coordinator_epoch < entry.coordinator_epoch:
                    raise TransactionCoordinatorFencedError(
                        f"marker for producer {pid} from coordinator epoch "
                        f"{control.coordinator_epoch} < {entry.coordinator_epoch}"
                    )
            elif self.check_sequences:
                first_seq = header.base_sequence
                if epoch == entry.epoch:
                    dup = entry.find_duplicate(first_seq, header.last_sequence)
                    if dup is not None:
                        return dup
                    if entry.batches and not in_sequence(entry.last_seq, first_seq):
                        raise OutOfOrderSequenceError(
                            f"producer {pid} epoch {epoch}: sequence {first_seq} "
                            f"does not follow {entry.last_seq}"
                        )
                elif entry.epoch != NO_PRODUCER_EPOCH and first_seq != 0:
                    raise OutOfOrderSequenceError(
                        f"producer {pid} new epoch {epoch} must start at sequence 0, "
                        f"not {first_seq}"
                    )
            if control is None and not header.is_transactional and entry.txn_first_offset >= 0:
                raise InvalidTxnStateError(
                    f"producer {pid} wrote a non-transactional batch inside a transaction"
                )
        entry.last_timestamp = timestamp
        if control is not None:
            entry.set_epoch(epoch)
            if entry.txn_first_offset >= 0:
                self.completed.append(
                    CompletedTxn(
                        pid, entry.txn_first_offset, last_offset, control.kind == CONTROL_ABORT
                    )
                )
                entry.txn_first_offset = -1
            entry.coordinator_epoch = max(entry.coordinator_epoch, control.coordinator_epoch)
        else:
            entry.set_epoch(epoch)
            entry.add_batch(
                BatchMetadata(header.base_sequence, header.last_sequence, first_offset, last_offset)
            )
            if header.is_transactional and entry.txn_first_offset < 0:
                entry.txn_first_offset = first_offset
        return None


class ProducerStateManager:
    """Producer entries, open transactions and snapshot files of one partition."""

    def __init__(
        self,
        directory: str,
        *,
        expiration_ms: int = 86_400_000,
        max_producers: int = MAX_PRODUCERS,
    ) -> None:
        self.directory = directory
        self.expiration_ms = expiration_ms
        # a bound on entries (and so on snapshot size and the time to write one)
        self.max_producers = max_producers
        self.entries: dict[int, ProducerEntry] = {}
        self._ongoing: dict[int, int] = {}
        self._first_unstable: int | None = None

    # ------------------------------------------------------------- transactions
    def begin(self, *, validate: bool = True, check_sequences: bool = True) -> ProducerStateUpdate:
        return ProducerStateUpdate(self, validate=validate, check_sequences=check_sequences)

    def commit(self, update: ProducerStateUpdate) -> list[tuple[CompletedTxn, int]]:
        """Apply a staged update; return completed transactions with the last stable
        offset to record for each (Kafka's rule: the first other open transaction, else
        one past the marker)."""
        ongoing = self._ongoing
        for pid, entry in update.entries.items():
            self.entries[pid] = entry
            if entry.txn_first_offset >= 0:
                ongoing[pid] = entry.txn_first_offset
        result = []
        for txn in update.completed:
            if ongoing.get(txn.producer_id) == txn.first_offset:
                del ongoing[txn.producer_id]
            others = [o for p, o in ongoing.items() if p != txn.producer_id]
            result.append((txn, min(others) if others else txn.last_offset + 1))
        for pid, entry in update.entries.items():
            if entry.txn_first_offset < 0:
                ongoing.pop(pid, None)
        self._first_unstable = min(ongoing.values()) if ongoing else None
        if len(self.entries) > self.max_producers:
            self._evict()
        return result

    def _evict(self) -> int:
        """Over ``max_producers``: forget the longest idle producers without an open
        transaction, down to 90% of the cap (so eviction runs once per many new ids).
        A forgotten producer is treated as an expired one: its next batch starts anew."""
        target = self.max_producers - self.max_producers // 10
        excess = len(self.entries) - target
        idle = [e for e in self.entries.values() if e.txn_first_offset < 0]
        doomed = heapq.nsmallest(excess, idle, key=lambda e: e.last_timestamp)
        for e in doomed:
            del self.entries[e.producer_id]
        return len(doomed)

    @property
    def first_unstable_offset(self) -> int | None:
        """First offset of the earliest open transaction, if any."""
        return self._first_unstable

    @property
    def ongoing_transactions(self) -> dict[int, int]:
        return dict(self._ongoing)

    def active_producers(self) -> list[ActiveProducer]:
        """A copy of every producer's state, by producer id (callers hold the log's lock)."""
        return [
            ActiveProducer(
                e.producer_id,
                e.epoch,
                e.last_seq,
                e.last_timestamp,
                e.coordinator_epoch,
                e.txn_first_offset,
            )
            for _pid, e in sorted(self.entries.items())
        ]

    def last_batch_offsets(self) -> dict[int, int]:
        """Producer id -> last offset of its newest batch (compaction keeps that batch)."""
        return {pid: e.last_offset for pid, e in self.entries.items() if e.batches}

    def remove_expired(self, now_ms: int) -> int:
        """Forget producers idle for ``expiration_ms`` with no open transaction."""
        expired = [
            pid
            for pid, e in self.entries.items()
            if e.txn_first_offset < 0 and now_ms - e.last_timestamp >= self.expiration_ms
        ]
        for pid in expired:
            del self.entries[pid]
        return len(expired)

    def reset(self) -> None:
        self.entries = {}
        self._ongoing = {}
        self._first_unstable = None

    def _set_entries(self, entries: dict[int, ProducerEntry]) -> None:
        self.entries = entries
        self._ongoing = {
            p: e.txn_first_offset for p, e in entries.items() if e.txn_first_offset >= 0
        }
        self._first_unstable = min(self._ongoing.values()) if self._ongoing else None

    # ----------------------------------------------------------------- snapshots
    def snapshot_offsets(self) -> list[int]:
        """Offsets of the snapshot files present, ascending."""
        offsets = []
        for name in os.listdir(self.directory):
            if name.endswith(SNAPSHOT_SUFFIX):
                stem = name[: -len(SNAPSHOT_SUFFIX)]
                if stem.isdigit():
                    offsets.append(int(stem))
        return sorted(offsets)

    def take_snapshot(self, offset: int, *, sync: bool = False) -> str:
        """Write the current state as the state before ``offset``; return the path."""
        body = bytearray(_COUNT.pack(len(self.entries)))
        for e in self.entries.values():
            body += _ENTRY.pack(
                e.producer_id,
                e.epoch,
                e.coordinator_epoch,
                e.last_timestamp,
                e.txn_first_offset,
                len(e.batches),
            )
            for meta in e.batches:
                body += _BATCH.pack(*meta)
        data = _FILE_HEADER.pack(_MAGIC, _VERSION, crc32c.crc32c(body)) + bytes(body)
        path = os.path.join(self.directory, snapshot_file_name(offset))
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return path

    def sync_snapshot(self, offset: int) -> None:
        path = os.path.join(self.directory, snapshot_file_name(offset))
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    @staticmethod
    def read_snapshot(path: str) -> dict[int, ProducerEntry]:
        """Parse a snapshot file; raise :class:`CorruptSnapshotError` if unusable."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise CorruptSnapshotError(f"{path}: {exc}") from exc
        return ProducerStateManager.parse_snapshot(data, path)

    @staticmethod
    def parse_snapshot(data: bytes, path: str = "snapshot") -> dict[int, ProducerEntry]:
        """A snapshot's bytes (``path`` names them in errors); raise
        :class:`CorruptSnapshotError` if unusable."""
        try:
            magic, version, crc = _FILE_HEADER.unpack_from(data, 0)
            if magic != _MAGIC or version != _VERSION:
                raise CorruptSnapshotError(f"{path}: unknown format")
            body = memoryview(data)[_FILE_HEADER.size :]
            if crc32c.crc32c(body) != crc:
                raise CorruptSnapshotError(f"{path}: CRC mismatch")
            (count,) = _COUNT.unpack_from(body, 0)
            pos = _COUNT.size
            entries: dict[int, ProducerEntry] = {}
            for _ in range(count):
                pid, epoch, coord, ts, txn_first, nbatches = _ENTRY.unpack_from(body, pos)
                pos += _ENTRY.size
                batches = []
                for _b in range(nbatches):
                    batches.append(BatchMetadata(*_BATCH.unpack_from(body, pos)))
                    pos += _BATCH.size
                entries[pid] = ProducerEntry(pid, epoch, batches, ts, coord, txn_first)
            if pos != len(body):
                raise CorruptSnapshotError(f"{path}: trailing bytes")
        except struct.error as exc:
            raise CorruptSnapshotError(f"{path}: truncated") from exc
        return entries

    def load_latest(self, at_most: int) -> int | None:
        """Load the newest usable snapshot at or below ``at_most``; delete the ones after
        it and any corrupt ones. Returns its offset, or None (state reset to empty)."""
        for offset in reversed(self.snapshot_offsets()):
            path = os.path.join(self.directory, snapshot_file_name(offset))
            if offset > at_most:
                _remove(path)
                continue
            try:
                entries = self.read_snapshot(path)
            except CorruptSnapshotError:
                _remove(path)
                continue
            self._set_entries(entries)
            return offset
        self.reset()
        return None

    def delete_snapshots_before(self, offset: int, *, keep_latest: bool = True) -> None:
        """Delete snapshots below ``offset`` (keeping the newest one if asked)."""
        offsets = self.snapshot_offsets()
        if keep_latest and offsets:
            offsets = offsets[:-1]
        for o in offsets:
            if o < offset:
                _remove(os.path.join(self.directory, snapshot_file_name(o)))

    def delete_snapshots_after(self, offset: int) -> None:
        """Delete snapshots above ``offset``."""
        for o in self.snapshot_offsets():
            if o > offset:
                _remove(os.path.join(self.directory, snapshot_file_name(o)))


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
