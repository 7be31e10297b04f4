"""Log compaction: keep only the latest record per key in the closed part of a log.

Runs for partitions whose ``cleanup.policy`` contains ``compact``, on the maintenance
thread, while the log keeps serving appends and reads. One pass:

1. The cleanable range runs from the log start to the first *uncleanable* offset: the
   active segment, the last stable offset (no open transaction is touched), the high
   watermark, and the first segment younger than ``min.compaction.lag.ms``.
2. The pass runs when the dirty part (after the ``cleaner-offset-checkpoint``) is at
   least ``min.cleanable.dirty.ratio`` of the range, when its oldest batch is older than
   ``max.compaction.lag.ms``, or when a tombstone's delete horizon has come.
3. A key -> latest offset map is built from the dirty segments (aborted transactional
   data and control batches excluded), within a memory bound (Kafka's
   ``log.cleaner.dedupe.buffer.size``, ``storage.cleaner_dedupe_buffer_bytes``): when the
   dirty section's keys do not fit, the map stops after the last batch that fit, that
   offset becomes the end of this pass (segments holding it are still cleaned against
   the map) and the next pass starts there, so a large dirty section is cleaned in
   several passes with the same result as one.
4. Segments are rewritten in groups that fit ``segment.bytes``: a record survives if no
   later record has its key. Tombstones (null values) survive the first cleaning, which
   stamps their batch with a delete horizon (``now + delete.retention.ms``, kept in the
   base timestamp with attribute bit 6 as Kafka does) and disappear once it has passed.
   Aborted transactional data is dropped; transaction markers stay while their
   transaction still has data and follow the same horizon rule once it has none.
   Batches keep their offsets, producer id/epoch/sequence, leader epoch, timestamp type
   and codec; unchanged batches are copied byte for byte, and a batch emptied of records
   is kept (empty) when it is its producer's latest, so idempotence survives compaction.
5. Each group is written as ``.cleaned`` files, fsynced, and swapped in atomically
   (``.cleaned`` -> ``.swap`` -> final name, old files ``.deleted``) by
   :meth:`PartitionLog.replace_segments`; a crash at any point leaves a loadable log.

Records are decoded (with :func:`~shazamq.protocol.records.iter_records`) only here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from shazamq.protocol.records import (
    DEFAULT_MAX_UNCOMPRESSED,
    TIMESTAMP_LOG_APPEND_TIME,
    BatchHeader,
    Record,
    RecordError,
    build_batch,
    decode_batch,
    parse_header,
)

from .partition_log import PartitionLog
from .segment import CLEANED_SUFFIX, INT32_MAX, LogSegment

__all__ = ["CleanerStats", "LogCleaner"]

_WRITE_BUFFER = 1 << 20
# what one key costs in the map besides its bytes: the bytes object's header, the dict
# slot and the offset (an int), as CPython lays them out
KEY_MAP_ENTRY_OVERHEAD = 120
DEFAULT_DEDUPE_BUFFER_BYTES = 128 * 1024 * 1024


@dataclass(slots=True)
class CleanerStats:
    """What one cleaning pass did."""

    segments_in: int = 0
    segments_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    records_removed: int = 0
    batches_removed: int = 0
    first_uncleanable: int = 0
    aborted_swaps: int = 0
    passes: int = 0


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


class LogCleaner:
    """Compacts partition logs; stateless between passes apart from tombstone horizons."""

    def __init__(
        self,
        *,
        max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED,
        dedupe_buffer_bytes: int = DEFAULT_DEDUPE_BUFFER_BYTES,
    ) -> None:
        self.max_uncompressed = max_uncompressed
        self.dedupe_buffer_bytes = dedupe_buffer_bytes
        self._next_horizon: dict[int, int] = {}  # id(log) -> earliest pending delete horizon

    # ------------------------------------------------------------- selection
    def first_uncleanable_offset(self, log: PartitionLog, now_ms: int) -> int:
        segs = log.segments
        bound = min(segs[-1].base_offset, log.last_stable_offset, log.high_watermark)
        lag = log.config.min_compaction_lag_ms
        if lag > 0:
            for seg in segs[:-1]:
                if seg.max_timestamp > now_ms - lag:
                    bound = min(bound, seg.base_offset)
                    break
        return bound

    def _cleanable(self, log: PartitionLog, now_ms: int) -> tuple[list[LogSegment], int]:
        segs = log.segments
        bound = self.first_uncleanable_offset(log, now_ms)
        cleanable = []
        for i, seg in enumerate(segs[:-1]):
            if segs[i + 1].base_offset <= bound:
                cleanable.append(seg)
            else:
                break
        end = segs[len(cleanable)].base_offset
        return cleanable, end

    def needs_cleaning(self, log: PartitionLog, now_ms: int) -> bool:
        """Whether a pass would do useful work now (cheap: sizes and timestamps)."""
        cfg = log.config
        if not cfg.compact:
            return False
        cleanable, end = self._cleanable(log, now_ms)
        if not cleanable:
            return False
        horizon = self._next_horizon.get(id(log))
        if horizon is not None and now_ms >= horizon:
            return True
        first_dirty = max(log.read_cleaner_checkpoint(), log.log_start_offset)
        if first_dirty >= end:
            return False
        total = sum(s.size for s in cleanable)
        dirty_segs = [s for s in cleanable if s.next_offset > first_dirty]
        dirty = sum(s.size for s in dirty_segs)
        if total and dirty / total >= cfg.min_cleanable_dirty_ratio:
            return True
        oldest = dirty_segs[0].first_batch_timestamp if dirty_segs else -1
        return oldest >= 0 and now_ms - oldest > cfg.max_compaction_lag_ms

    # ------------------------------------------------------------------- pass
    def clean(
        self, log: PartitionLog, now_ms: int | None = None, *, force: bool = False
    ) -> CleanerStats | None:
        """Compact ``log`` if due (or ``force``); None when nothing was done."""
        if now_ms is None:
            now_ms = time.time_ns() // 1_000_000
        if not log.config.compact or (not force and not self.needs_cleaning(log, now_ms)):
            return None
        cleanable, end = self._cleanable(log, now_ms)
        if not cleanable:
            return None
        stats = CleanerStats(first_uncleanable=end)
        pending_horizons: list[int] = []
        while True:
            first_dirty = max(log.read_cleaner_checkpoint(), log.log_start_offset)
            stats.passes += 1
            done = self._pass(log, end, first_dirty, now_ms, stats, pending_horizons)
            if done is None:  # a swap lost to a concurrent change: the next run retries
                return stats
            log.write_cleaner_checkpoint(done)
            if done >= end:
                break
        if pending_horizons:
            self._next_horizon[id(log)] = min(pending_horizons)
        else:
            self._next_horizon.pop(id(log), None)
        return stats

    def _pass(
        self,
        log: PartitionLog,
        end: int,
        first_dirty: int,
        now_ms: int,
        stats: CleanerStats,
        pending_horizons: list[int],
    ) -> int | None:
        """One pass over ``[log start, end)`` with the key map of as much of the dirty
        section as fits; returns where the map ended (the next pass's first dirty
        offset), or None when a swap was refused."""
        cfg = log.config
        cleanable = [s for s in log.segments[:-1] if s.base_offset < end]
        with log.lock:
            last_batches = log.producer_state.last_batch_offsets()
        aborted = self._aborted_ranges(log.segments, end)
        key_map, map_end = self._build_key_map(
            [s for s in cleanable if s.next_offset > first_dirty], aborted, first_dirty, end
        )
        horizon = now_ms + cfg.delete_retention_ms
        txn_has_data: dict[int, bool] = {}
        to_clean = [s for s in cleanable if s.base_offset < map_end]
        for group in self._groups(to_clean, cfg.segment_bytes):
            cleaned = LogSegment(
                log.directory,
                group[0].base_offset,
                index_interval_bytes=cfg.index_interval_bytes,
                max_index_entries_bytes=cfg.segment_index_bytes,
                suffix=CLEANED_SUFFIX,
                new=True,
            )
            writer = _Writer(cleaned)
            try:
                for seg in group:
                    stats.segments_in += 1
                    stats.bytes_in += seg.size
                    for _pos, header, batch in seg.iter_batch_bytes():
                        out = self._clean_batch(
                            header,
                            batch,
                            key_map,
                            aborted,
                            last_batches,
                            txn_has_data,
                            now_ms,
                            horizon,
                            stats,
                            pending_horizons,
                        )
                        if out is not None:
                            writer.add(*out)
                    for txn in seg.txn_index.entries:
                        cleaned.append_aborted_txn(txn)
                writer.drain()
                cleaned.seal()
                cleaned.flush()
            except BaseException:
                cleaned.delete()
                raise
            if log.replace_segments(list(group), cleaned, now_ms=now_ms):
                stats.segments_out += 1
                stats.bytes_out += writer.written
            else:
                cleaned.delete()
                stats.aborted_swaps += 1
                return None
        return map_end

    def forget(self, log: PartitionLog) -> None:
        self._next_horizon.pop(id(log), None)

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _aborted_ranges(
        segments: Iterable[LogSegment], end: int
    ) -> dict[int, list[tuple[int, int]]]:
        ranges: dict[int, list[tuple[int, int]]] = {}
        for seg in segments:
            for txn in seg.txn_index.entries:
                if txn.first_offset < end:
                    ranges.setdefault(txn.producer_id, []).append(
                        (txn.first_offset, txn.last_offset)
                    )
        return ranges

    @staticmethod
    def _is_aborted(header: BatchHeader, aborted: dict[int, list[tuple[int, int]]]) -> bool:
        if not header.is_transactional or header.is_control:
            return False
        spans = aborted.get(header.producer_id)
        if not spans:
            return False
        offset = header.base_offset
        return any(first <= offset <= last for first, last in spans)

    def _build_key_map(
        self,
        segments: list[LogSegment],
        aborted: dict[int, list[tuple[int, int]]],
        first_dirty: int,
        end: int,
    ) -> tuple[dict[bytes, int], int]:
        """key -> latest offset over the dirty batches from ``first_dirty``, whole
        batches only, until the map's estimated size passes the dedupe buffer (at least
        one batch is always taken). Returns the map and the offset after its last batch
        (``end`` when every dirty batch fit)."""
        key_map: dict[bytes, int] = {}
        budget = self.dedupe_buffer_bytes
        used = 0
        for seg in segments:
            for _pos, header, batch in seg.iter_batch_bytes():
                if header.last_offset < first_dirty:
                    continue
                if header.base_offset >= end:
                    return key_map, end
                if used > budget:
                    return key_map, header.base_offset
                if header.is_control or self._is_aborted(header, aborted):
                    continue
                _h, records = decode_batch(batch, max_uncompressed=self.max_uncompressed)
                base = header.base_offset
                for record in records:
                    key = record.key
                    if key is not None:
                        if key not in key_map:
                            used += len(key) + KEY_MAP_ENTRY_OVERHEAD
                        key_map[key] = base + record.offset_delta
        return key_map, end

    @staticmethod
    def _groups(segments: list[LogSegment], max_bytes: int) -> list[list[LogSegment]]:
        groups: list[list[LogSegment]] = []
        current: list[LogSegment] = []
        size = 0
        for seg in segments:
            if current and (
                size + seg.size > max_bytes
                or seg.next_offset - 1 - current[0].base_offset > INT32_MAX
            ):
                groups.append(current)
                current, size = [], 0
            current.append(seg)
            size += seg.size
        if current:
            groups.append(current)
        return groups

    def _clean_batch(
        self,
        header: BatchHeader,
        batch: bytes,
        key_map: dict[bytes, int],
        aborted: dict[int, list[tuple[int, int]]],
        last_batches: dict[int, int],
        txn_has_data: dict[int, bool],
        now_ms: int,
        horizon: int,
        stats: CleanerStats,
        pending_horizons: list[int],
    ) -> tuple[bytes, BatchHeader] | None:
        """The batch to write in place of ``batch`` (itself, rebuilt, or None)."""
        pid = header.producer_id
        horizon_passed = header.has_delete_horizon and now_ms >= header.base_timestamp
        if header.is_control:
            if txn_has_data.pop(pid, False):
                return batch, header
            if horizon_passed:
                stats.batches_removed += 1
                return None
            if header.has_delete_horizon:
                pending_horizons.append(header.base_timestamp)
                return batch, header
            pending_horizons.append(horizon)
            _h, records = decode_batch(batch, max_uncompressed=self.max_uncompressed)
            return self._rebuild(header, records, horizon)

        keep_empty = pid >= 0 and last_batches.get(pid) == header.last_offset
        if self._is_aborted(header, aborted):
            stats.records_removed += header.records_count
            if keep_empty:
                return self._rebuild(header, [], None)
            stats.batches_removed += 1
            return None

        try:
            _h, records = decode_batch(batch, max_uncompressed=self.max_uncompressed)
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
        stats.records_removed += len(records) - len(kept)
        if kept and header.is_transactional:
            txn_has_data[pid] = True
        if len(kept) == len(records) and not needs_horizon:
            if header.has_delete_horizon and any(r.value is None for r in kept):
                pending_horizons.append(header.base_timestamp)
            return batch, header
        if not kept:
            if keep_empty:
                return self._rebuild(header, [], None)
            stats.batches_removed += 1
            return None
        if needs_horizon:
            pending_horizons.append(horizon)
            return self._rebuild(header, kept, horizon)
        if header.has_delete_horizon:
            if any(r.value is None for r in kept):
                pending_horizons.append(header.base_timestamp)
            return self._rebuild(header, kept, header.base_timestamp)
        return self._rebuild(header, kept, None)

    @staticmethod
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
        records = [
            r._replace(timestamp_delta=old_base + r.timestamp_delta - new_base) for r in kept
        ]
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
