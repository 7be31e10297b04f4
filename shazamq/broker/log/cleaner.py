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

Steps 3 and 4 (reading, decoding and rewriting the segments: seconds of Python per GiB)
live in :mod:`.clean_pass` and run, in the broker, in one long-lived worker process
(spawned when a compacted log first needs cleaning, shut down with the log manager), so
they do not hold the broker's GIL and stall its event loop. The worker gets paths and
settings and answers a few numbers per group; this module keeps the choice of what to
clean, the swaps and the checkpoint, under the log's own fencing. A worker that dies
mid-pass leaves at most a ``.cleaned`` group, which is removed; the pass is abandoned
with nothing swapped that was not complete, and the next maintenance run starts a new
worker and cleans again.

Records are decoded only in :mod:`.clean_pass`.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from shazamq.protocol.records import DEFAULT_MAX_UNCOMPRESSED

from .clean_pass import (
    KEY_MAP_ENTRY_OVERHEAD,
    GroupResult,
    PassRunner,
    PassSpec,
    SegmentFile,
    drop_pass,
    run_group,
    worker_init,
)
from .partition_log import PartitionLog
from .segment import CLEANED_SUFFIX, LogSegment

__all__ = ["KEY_MAP_ENTRY_OVERHEAD", "CleanerStats", "LogCleaner"]

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


class LogCleaner:
    """Compacts partition logs; stateless between passes apart from tombstone horizons.

    With ``worker_process`` the segments are rewritten in a worker process (the broker);
    without, on the calling thread (tests, tools): the same code and the same bytes.
    """

    def __init__(
        self,
        *,
        max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED,
        dedupe_buffer_bytes: int = DEFAULT_DEDUPE_BUFFER_BYTES,
        worker_process: bool = False,
    ) -> None:
        self.max_uncompressed = max_uncompressed
        self.dedupe_buffer_bytes = dedupe_buffer_bytes
        self.worker_process = worker_process
        self._next_horizon: dict[int, int] = {}  # id(log) -> earliest pending delete horizon
        self._local = PassRunner()
        self._pass_ids = itertools.count(1)
        self._pool: ProcessPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._closed = False

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
        """Compact ``log`` if due (or ``force``); None when nothing was done. Blocking
        (an executor thread); a worker process lost mid-pass raises
        :class:`~concurrent.futures.process.BrokenProcessPool` with the log intact."""
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

    def _spec(self, log: PartitionLog, end: int, first_dirty: int, now_ms: int) -> PassSpec:
        cfg = log.config
        segs = log.segments
        with log.lock:
            last_batches = log.producer_state.last_batch_offsets()
        return PassSpec(
            pass_id=next(self._pass_ids),
            directory=log.directory,
            segments=tuple(
                SegmentFile(s.base_offset, s.size, s.next_offset, tuple(s.txn_index.entries))
                for s in segs[:-1]
                if s.base_offset < end
            ),
            first_dirty=first_dirty,
            end=end,
            now_ms=now_ms,
            delete_retention_ms=cfg.delete_retention_ms,
            segment_bytes=cfg.segment_bytes,
            index_interval_bytes=cfg.index_interval_bytes,
            segment_index_bytes=cfg.segment_index_bytes,
            max_uncompressed=self.max_uncompressed,
            dedupe_buffer_bytes=self.dedupe_buffer_bytes,
            aborted=_aborted_ranges(segs, end),
            last_batches=last_batches,
        )

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
        section as fits, one group at a time; returns where the map ended (the next
        pass's first dirty offset), or None when a swap was refused."""
        by_base = {s.base_offset: s for s in log.segments[:-1] if s.base_offset < end}
        spec = self._spec(log, end, first_dirty, now_ms)
        txn_has_data: dict[int, bool] = {}
        index = 0
        while True:
            try:
                result = self._run(spec, index, txn_has_data)
            except Exception:
                _discard_cleaned(log.directory)
                if not _still_in(log, by_base.values()):  # retention or a truncation won
                    stats.aborted_swaps += 1
                    return None
                raise
            if result.groups == 0:
                return result.map_end
            if not self._swap(log, spec, result, by_base, now_ms, stats, pending_horizons):
                self._forget_pass()
                return None
            txn_has_data = result.txn_has_data
            index += 1
            if index >= result.groups:
                return result.map_end

    def _swap(
        self,
        log: PartitionLog,
        spec: PassSpec,
        result: GroupResult,
        by_base: dict[int, LogSegment],
        now_ms: int,
        stats: CleanerStats,
        pending_horizons: list[int],
    ) -> bool:
        """Swap one cleaned group in (the files are complete and fsynced)."""
        group = [by_base[b] for b in result.bases]
        stats.segments_in += len(group)
        stats.bytes_in += result.bytes_in
        stats.records_removed += result.records_removed
        stats.batches_removed += result.batches_removed
        if result.next_horizon is not None:
            pending_horizons.append(result.next_horizon)
        cleaned = LogSegment(
            log.directory,
            group[0].base_offset,
            index_interval_bytes=spec.index_interval_bytes,
            max_index_entries_bytes=spec.segment_index_bytes,
            suffix=CLEANED_SUFFIX,
        )
        if log.replace_segments(group, cleaned, now_ms=now_ms):
            stats.segments_out += 1
            stats.bytes_out += result.bytes_out
            return True
        cleaned.delete()
        stats.aborted_swaps += 1
        return False

    def forget(self, log: PartitionLog) -> None:
        self._next_horizon.pop(id(log), None)

    # ---------------------------------------------------------------- worker
    def _run(self, spec: PassSpec, index: int, txn_has_data: dict[int, bool]) -> GroupResult:
        if not self.worker_process:
            return self._local.run(spec, index, txn_has_data)
        pool = self._worker_pool()
        try:
            return pool.submit(run_group, spec, index, txn_has_data).result()
        except BrokenProcessPool:
            self._drop_pool(pool)  # the next pass starts a new worker
            raise

    def _forget_pass(self) -> None:
        """Free an abandoned pass's key map (kept between groups)."""
        self._local.drop()
        with self._pool_lock:
            pool = self._pool
        if pool is not None:
            # the next pass has another id, so the worker would rebuild anyway: this
            # only frees the map's memory now rather than then (a broken or closed pool
            # has no map to free)
            with contextlib.suppress(RuntimeError):
                pool.submit(drop_pass)

    def _worker_pool(self) -> ProcessPoolExecutor:
        with self._pool_lock:
            if self._closed:
                raise RuntimeError("the log cleaner is closed")
            if self._pool is None:
                # spawn: a fresh interpreter, nothing of the broker's threads or locks
                self._pool = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=worker_init,
                )
            return self._pool

    def _drop_pool(self, pool: ProcessPoolExecutor) -> None:
        with self._pool_lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def worker_pid(self) -> int | None:
        """The worker process's id, None while there is none (tests, diagnostics)."""
        with self._pool_lock:
            pool = self._pool
        return None if pool is None else pool.submit(os.getpid).result()

    def close(self) -> None:
        """Stop the worker process (after a pass in flight, if any)."""
        with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _aborted_ranges(segments: Iterable[LogSegment], end: int) -> dict[int, list[tuple[int, int]]]:
    ranges: dict[int, list[tuple[int, int]]] = {}
    for seg in segments:
        for txn in seg.txn_index.entries:
            if txn.first_offset < end:
                ranges.setdefault(txn.producer_id, []).append((txn.first_offset, txn.last_offset))
    return ranges


def _still_in(log: PartitionLog, segments: Iterable[LogSegment]) -> bool:
    current = {id(s) for s in log.segments}
    return not log.closed and all(id(s) in current for s in segments)


def _discard_cleaned(directory: str) -> None:
    """Remove ``.cleaned`` files a failed group left (only the cleaner writes them,
    one pass per log at a time)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        if name.endswith(CLEANED_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, name))
