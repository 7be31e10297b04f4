"""The CPU-heavy half of a compaction pass, on segment files named by path.

Everything here reads closed (immutable) segments and writes ``.cleaned`` files; nothing
touches a :class:`~.partition_log.PartitionLog`. That is what lets the pass run in a
worker process, away from the broker's GIL (decoding batches, building the key map and
filtering records in Python would otherwise hold it for seconds and stall the event
loop), and also in-process (tests, and the same code either way).

A pass is described by a small picklable :class:`PassSpec` (paths, sizes, settings, the
aborted transactions and the producers' last batches). :func:`build_key_map` makes the
key -> latest offset map of the dirty section within the dedupe buffer;
:func:`plan_groups` splits the segments to clean into groups that fit ``segment.bytes``;
:func:`clean_group` writes one group as a ``.cleaned`` segment with its indexes, fsyncs
it and returns a :class:`GroupResult` of a few numbers. The caller swaps the files in.

:class:`PassRunner` keeps the key map of the current pass between the calls for its
groups (one call per group, so at most one group's ``.cleaned`` files exist at a time);
:func:`run_group` is the entry point a worker process runs.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass, field

from shazamq.protocol.records import (
    TIMESTAMP_LOG_APPEND_TIME,
    BatchHeader,
    Record,
    RecordError,
    build_batch,
    decode_batch,
    parse_header,
)

from .index import AbortedTxn
from .segment import CLEANED_SUFFIX, INT32_MAX, LogSegment

__all__ = [
    "KEY_MAP_ENTRY_OVERHEAD",
    "GroupResult",
    "PassRunner",
    "PassSpec",
    "SegmentFile",
    "build_key_map",
    "clean_group",
    "drop_pass",
    "plan_groups",
    "run_group",
    "worker_init",
]

_WRITE_BUFFER = 1 << 20
# what one key costs in the map besides its bytes: the bytes object's header, the dict
# slot and the offset (an int), as CPython lays them out
KEY_MAP_ENTRY_OVERHEAD = 120

Aborted = dict[int, list[tuple[int, int]]]


@dataclass(frozen=True, slots=True)
class SegmentFile:
    """A closed segment as the pass sees it: its size is fixed when the pass starts."""

    base_offset: int
    size: int
    next_offset: int
    txns: tuple[AbortedTxn, ...] = ()


@dataclass(frozen=True, slots=True)
class PassSpec:
    """Everything one pass over ``[log start, end)`` needs; small enough to pickle."""

    pass_id: int
    directory: str
    segments: tuple[SegmentFile, ...]  # the cleanable ones, in offset order
    first_dirty: int
    end: int
    now_ms: int
    delete_retention_ms: int
    segment_bytes: int
    index_interval_bytes: int
    segment_index_bytes: int
    max_uncompressed: int
    dedupe_buffer_bytes: int
    aborted: Aborted = field(default_factory=dict)
    last_batches: dict[int, int] = field(default_factory=dict)  # producer -> last offset


@dataclass(slots=True)
class GroupResult:
    """What cleaning one group did (the cleaned files are on disk, fsynced)."""

    map_end: int  # where the pass's key map ended (the next pass's first dirty offset)
    groups: int  # how many groups the pass has
    bases: tuple[int, ...] = ()  # base offsets of the group's source segments
    bytes_in: int = 0
    bytes_out: int = 0
    records_removed: int = 0
    batches_removed: int = 0
    next_horizon: int | None = None  # the earliest delete horizon still pending
    txn_has_data: dict[int, bool] = field(default_factory=dict)


# ------------------------------------------------------------------ reading
def _open(spec: PassSpec, seg: SegmentFile, suffix: str = "", *, new: bool = False) -> LogSegment:
    return LogSegment(
        spec.directory,
        seg.base_offset,
        index_interval_bytes=spec.index_interval_bytes,
        max_index_entries_bytes=spec.segment_index_bytes,
        suffix=suffix,
        new=new,
    )


def _batches(spec: PassSpec, seg: SegmentFile) -> Iterator[tuple[BatchHeader, bytes]]:
    """``(header, batch bytes)`` of a source segment, up to the size the pass saw."""
    source = _open(spec, seg)
    try:
        for pos, header, batch in source.iter_batch_bytes():
            if pos >= seg.size:
                break
            yield header, batch
    finally:
        source.close()


def is_aborted(header: BatchHeader, aborted: Aborted) -> bool:
    if not header.is_transactional or header.is_control:
        return False
    spans = aborted.get(header.producer_id)
    if not spans:
        return False
    offset = header.base_offset
    return any(first <= offset <= last for first, last in spans)


def build_key_map(spec: PassSpec) -> tuple[dict[bytes, int], int]:
    """key -> latest offset over the dirty batches from ``first_dirty``, whole batches
    only, until the map's estimated size passes the dedupe buffer (at least one batch
    is always taken). Returns the map and the offset after its last batch (``end`` when
    every dirty batch fit)."""
    key_map: dict[bytes, int] = {}
    budget = spec.dedupe_buffer_bytes
    used = 0
    first_dirty, end = spec.first_dirty, spec.end
    for seg in spec.segments:
        if seg.next_offset <= first_dirty:
            continue
        for header, batch in _batches(spec, seg):
            if header.last_offset < first_dirty:
                continue
            if header.base_offset >= end:
                return key_map, end
            if used > budget:
                return key_map, header.base_offset
            if header.is_control or is_aborted(header, spec.aborted):
                continue
            _h, records = decode_batch(batch, max_uncompressed=spec.max_uncompressed)
            base = header.base_offset
            for record in records:
                key = record.key
                if key is not None:
                    if key not in key_map:
                        used += len(key) + KEY_MAP_ENTRY_OVERHEAD
                    key_map[key] = base + record.offset_delta
    return key_map, end


def plan_groups(spec: PassSpec, map_end: int) -> list[tuple[SegmentFile, ...]]:
    """The segments below ``map_end`` in groups of at most ``segment.bytes`` whose
    offsets fit one segment's 32-bit relative offsets."""
    groups: list[tuple[SegmentFile, ...]] = []
    current: list[SegmentFile] = []
    size = 0
    for seg in spec.segments:
        if seg.base_offset >= map_end:
            break
        if current and (
            size + seg.size > spec.segment_bytes
            or seg.next_offset - 1 - current[0].base_offset > INT32_MAX
        ):
            groups.append(tuple(current))
            current, size = [], 0
        current.append(seg)
        size += seg.size
    if current:
        groups.append(tuple(current))
    return groups


# ------------------------------------------------------------------ writing
class _Writer:
    """Buffers rebuilt batches into a ``.cleaned`` segment, one write per megabyte."""

    def __init__(self, segment: LogSegment) -> None:
        self.segment = segment
        self.buf = bytearray()
        self.last_offset = -1
        self.max_ts = -1
        self.max_ts_offset = -1
        self.written = 0

    def add(self, batch: bytes, header: BatchHeader) -> None:
        if header.max_timestamp > self.max_ts:
            self.max_ts, self.max_ts_offset = header.max_timestamp, header.base_offset
        self.buf += batch
        self.last_offset = header.base_offset + header.last_offset_delta
        if len(self.buf) >= _WRITE_BUFFER:
            self.drain()

    def drain(self) -> None:
        if self.buf:
            self.segment.append(
                self.buf,
                self.last_offset,
                self.max_ts,
                self.max_ts_offset if self.max_ts >= 0 else None,
            )
            self.written += len(self.buf)
            self.buf = bytearray()
            self.max_ts = -1


def clean_group(
    spec: PassSpec,
    key_map: dict[bytes, int],
    group: tuple[SegmentFile, ...],
    txn_has_data: dict[int, bool],
    result: GroupResult,
) -> None:
    """Write ``group`` as one ``.cleaned`` segment (log, indexes, transaction index),
    fsynced and closed, adding what was done to ``result``. ``txn_has_data`` carries
    from group to group: a transaction's marker may sit in a later segment than its
    data."""
    cleaned = _open(spec, group[0], CLEANED_SUFFIX, new=True)
    writer = _Writer(cleaned)
    horizon = spec.now_ms + spec.delete_retention_ms
    pending: list[int] = []
    try:
        for seg in group:
            result.bytes_in += seg.size
            for header, batch in _batches(spec, seg):
                out = _clean_batch(
                    spec, header, batch, key_map, txn_has_data, horizon, result, pending
                )
                if out is not None:
                    writer.add(*out)
            for txn in seg.txns:
                cleaned.append_aborted_txn(txn)
        writer.drain()
        cleaned.seal()
        cleaned.flush()
        cleaned.close()
    except BaseException:
        cleaned.delete()
        raise
    result.bytes_out += writer.written
    result.bases = tuple(s.base_offset for s in group)
    if pending:
        result.next_horizon = min(pending)


def _clean_batch(
    spec: PassSpec,
    header: BatchHeader,
    batch: bytes,
    key_map: dict[bytes, int],
    txn_has_data: dict[int, bool],
    horizon: int,
    result: GroupResult,
    pending_horizons: list[int],
) -> tuple[bytes, BatchHeader] | None:
    """The batch to write in place of ``batch`` (itself, rebuilt, or None)."""
    pid = header.producer_id
    horizon_passed = header.has_delete_horizon and spec.now_ms >= header.base_timestamp
    if header.is_control:
        if txn_has_data.pop(pid, False):
            return batch, header
        if horizon_passed:
            result.batches_removed += 1
            return None
        if header.has_delete_horizon:
            pending_horizons.append(header.base_timestamp)
            return batch, header
        pending_horizons.append(horizon)
        _h, records = decode_batch(batch, max_uncompressed=spec.max_uncompressed)
        return _rebuild(header, records, horizon)

    keep_empty = pid >= 0 and spec.last_batches.get(pid) == header.last_offset
    if is_aborted(header, spec.aborted):
        result.records_removed += header.records_count
        if keep_empty:
            return _rebuild(header, [], None)
        result.batches_removed += 1
        return None

    try:
        _h, records = decode_batch(batch, max_uncompressed=spec.max_uncompressed)
    except RecordError:
        return batch, header  # cannot judge it: keep it as it is
    base = header.base_offset
    kept: list[Record] = []
    needs_horizon = False
    for record in records:
        key = record.key
        if key is None:
            continue  # Kafka's cleaner drops keyless records of compacted topics
        if key_map.get(key, -1) > base + record.offset_delta:
            continue  # a later record has this key
        if record.value is None:
            if horizon_passed:
                continue
            needs_horizon = needs_horizon or not header.has_delete_horizon
        kept.append(record)
    result.records_removed += len(records) - len(kept)
    if kept and header.is_transactional:
        txn_has_data[pid] = True
    if len(kept) == len(records) and not needs_horizon:
        if header.has_delete_horizon and any(r.value is None for r in kept):
            pending_horizons.append(header.base_timestamp)
        return batch, header
    if not kept:
        if keep_empty:
            return _rebuild(header, [], None)
        result.batches_removed += 1
        return None
    if needs_horizon:
        pending_horizons.append(horizon)
        return _rebuild(header, kept, horizon)
    if header.has_delete_horizon:
        if any(r.value is None for r in kept):
            pending_horizons.append(header.base_timestamp)
        return _rebuild(header, kept, header.base_timestamp)
    return _rebuild(header, kept, None)


def _rebuild(
    header: BatchHeader, kept: list[Record], horizon: int | None
) -> tuple[bytes, BatchHeader]:
    """Re-encode ``kept`` with every batch-level field of ``header`` preserved.

    With ``horizon`` the base timestamp becomes the delete horizon (bit 6 set) and
    record timestamp deltas are rebased so absolute timestamps do not change.
    """
    old_base = header.base_timestamp
    if horizon is not None:
        new_base = horizon
    elif kept:
        new_base = old_base + kept[0].timestamp_delta
    else:
        new_base = old_base
    records = [r._replace(timestamp_delta=old_base + r.timestamp_delta - new_base) for r in kept]
    if header.timestamp_type == TIMESTAMP_LOG_APPEND_TIME or not kept:
        max_ts = header.max_timestamp
    else:
        max_ts = max(old_base + r.timestamp_delta for r in kept)
    data = build_batch(
        records,
        base_offset=header.base_offset,
        compression=header.compression,
        timestamp_type=header.timestamp_type,
        producer_id=header.producer_id,
        producer_epoch=header.producer_epoch,
        base_sequence=header.base_sequence,
        transactional=header.is_transactional,
        control=header.is_control,
        partition_leader_epoch=header.partition_leader_epoch,
        base_timestamp=new_base,
        max_timestamp=max_ts,
        last_offset_delta=header.last_offset_delta,
        delete_horizon=horizon is not None,
    )
    return data, parse_header(data, 0)


# ------------------------------------------------------------------ driving
class PassRunner:
    """Cleans a pass one group per call, keeping the pass's key map between calls."""

    def __init__(self) -> None:
        self._pass_id: int | None = None
        self._key_map: dict[bytes, int] = {}
        self._map_end = 0
        self._groups: list[tuple[SegmentFile, ...]] = []

    def run(self, spec: PassSpec, index: int, txn_has_data: dict[int, bool]) -> GroupResult:
        """Clean group ``index`` of the pass ``spec`` describes (building its key map on
        the first call); a pass without groups returns a result with ``groups == 0``.
        The map is dropped after the last group."""
        if self._pass_id != spec.pass_id:
            self.drop()
            self._key_map, self._map_end = build_key_map(spec)
            self._groups = plan_groups(spec, self._map_end)
            self._pass_id = spec.pass_id
        result = GroupResult(map_end=self._map_end, groups=len(self._groups))
        try:
            if index < len(self._groups):
                clean_group(spec, self._key_map, self._groups[index], txn_has_data, result)
                result.txn_has_data = txn_has_data
        except BaseException:
            self.drop()  # the caller abandons the pass
            raise
        if index >= len(self._groups) - 1:
            self.drop()
        return result

    def drop(self) -> None:
        self._pass_id = None
        self._key_map = {}
        self._groups = []


_WORKER_RUNNER = PassRunner()


def run_group(spec: PassSpec, index: int, txn_has_data: dict[int, bool]) -> GroupResult:
    """The worker process's entry point (one runner per process)."""
    return _WORKER_RUNNER.run(spec, index, txn_has_data)


def worker_init() -> None:
    """The worker ignores Ctrl-C sent to the terminal's process group: the broker
    decides when it stops (it shuts the pool down on close)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def drop_pass() -> None:
    """Free the worker's key map of an abandoned pass."""
    _WORKER_RUNNER.drop()
