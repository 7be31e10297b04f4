"""The uploader of one partition: closed segments to the bucket, then the manifest.

One :class:`PartitionUploader` runs for each tiered partition this broker leads (on a
single broker: all of them); the manager starts and stops them as leadership moves. Each
round it

1. rolls the active segment when it has held data for ``max_upload_interval_ms``, so the
   bucket is never further behind than that (the recovery point objective);
2. uploads the closed segments past the manifest's end, oldest first, one at a time per
   partition and ``upload_concurrency`` at a time over the broker: the files are read in
   an executor, each object is stored under a fresh upload id and verified by the store
   (MD5), and only then is the manifest that names them written;
3. applies total retention (``retention.ms`` / ``retention.bytes`` over the bucket and the
   disk together): the manifest drops the oldest segments first, their objects go after.

The log is told how far the bucket reaches (``PartitionLog.remote_log_end``), so local
retention never deletes a segment that is not durable remotely.

In a cluster the uploader is the partition leader's, under the leader epoch it started
with: before writing a manifest it checks that this broker still leads at that epoch, so
a deposed leader stops (its fresh objects removed) instead of overwriting the manifest of
the next one, which continues from the manifest it reads when it starts. That check sees
only what this broker knows; the bucket fences too, where the server honours conditional
writes (probed once): every manifest is written against the version last read or written
(S3 ``If-Match`` / ``If-None-Match: *``, GCS ``ifGenerationMatch``), and names the leader
epoch it was written under. A write that loses reads the manifest again: one written under
a higher epoch means a newer leader took over, and this uploader stops for good (logged
once, counted in ``shazamq_tier_fenced_uploaders``); otherwise it continues from what it
read (its unreferenced objects removed). Its segments may
begin below the manifest's end (each replica rolls its own segments); such an upload
overlaps the last remote segment, and reads take each offset from the first segment
holding it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

import msgspec

from shazamq.broker.log.producer_state import snapshot_file_name
from shazamq.broker.log.segment import INDEX_EXT, TIME_INDEX_EXT, TXN_INDEX_EXT, LogSegment

from .manifest import (
    FILE_EXTS,
    PartitionManifest,
    RemoteSegment,
    decode_manifest,
    encode_manifest,
    manifest_key,
    partition_prefix,
    segment_key,
)
from .store import ObjectStore, PreconditionFailedError, StoreError, StoreErrorKind

if TYPE_CHECKING:
    from shazamq.broker.log import PartitionLog
    from shazamq.broker.partitions import Partition

    from .manager import TierManager

log = logging.getLogger(__name__)

ROUND_SECONDS = 1.0
# the scratch object of the probe for conditional writes
PROBE_KEY = "cluster/conditional-write-probe"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def epoch_slice(entries: list[tuple[int, int]], base: int, end: int) -> list[tuple[int, int]]:
    """The leader epochs (epoch, start offset) that wrote into ``[base, end)``."""
    out: list[tuple[int, int]] = []
    for i, (epoch, start) in enumerate(entries):
        nxt = entries[i + 1][1] if i + 1 < len(entries) else None
        if start >= end or (nxt is not None and nxt <= base):
            continue
        out.append((epoch, max(start, base)))
    return out


def open_segment_files(plog: PartitionLog, seg: LogSegment) -> SegmentFiles | None:
    """A closed segment to upload (executor thread): its ``.log`` opened (it is sent in
    parts from the file), the small files read; None if it left the log."""
    with plog.lock:
        if seg not in plog.segments:
            return None
        seg.write_pending_indexes()
        size = seg.size
        # opened under the lock, so the file is the segment's: a retention or a
        # compaction that retires it afterwards leaves this descriptor readable
        fd = os.open(seg.log_path, os.O_RDONLY)
    try:
        files: dict[str, bytes] = {}
        stem = os.path.join(plog.directory, f"{seg.base_offset:020d}")
        for ext, name in (("index", INDEX_EXT), ("timeindex", TIME_INDEX_EXT)):
            with open(stem + name, "rb") as f:
                files[ext] = f.read()
        try:
            with open(stem + TXN_INDEX_EXT, "rb") as f:
                txn = f.read()
            if txn:
                files["txnindex"] = txn
        except FileNotFoundError:
            pass
        try:
            with open(os.path.join(plog.directory, snapshot_file_name(seg.next_offset)), "rb") as f:
                files["snapshot"] = f.read()
        except FileNotFoundError:
            pass
    except FileNotFoundError:
        os.close(fd)
        return None  # retired while its small files were read
    except BaseException:
        os.close(fd)
        raise
    return SegmentFiles(fd, size, files)


class SegmentFiles(NamedTuple):
    log_fd: int  # the caller closes it
    log_size: int
    small: dict[str, bytes]  # index, timeindex, [txnindex], [snapshot]


async def read_manifest(store: ObjectStore, key: str) -> PartitionManifest | None:
    """The manifest under ``key``, or None when the partition has none yet."""
    try:
        data = await store.get(key)
    except StoreError as exc:
        if exc.kind is not StoreErrorKind.NOT_FOUND:
            raise
        return None
    return decode_manifest(data, where=key)


def _matches(seg: LogSegment, own_end: int, entries: list[RemoteSegment]) -> bool:
    """Whether the remote entries within ``seg``'s offsets (up to ``own_end``) are the
    upload of ``seg``. (The last entry may reach past its data: see replace_cleaned.)"""
    if not seg.size:
        return not entries
    if len(entries) != 1:
        return False
    e = entries[0]
    return (
        e.base_offset == seg.base_offset
        and seg.next_offset - 1 <= e.last_offset < own_end
        and e.size == seg.size
    )


def cleaned_run(
    segments: list[LogSegment], m: PartitionManifest
) -> tuple[list[LogSegment], int, int] | None:
    """The first run of closed local segments that differ from their remote copies
    (compaction rewrote them since they were uploaded), with the slice ``[lo, hi)`` of
    the manifest's entries they replace; None when there is nothing to replace now.

    A segment owns the offsets from its base up to the next segment's base (compaction
    leaves gaps); its copy is the one entry within that range, with its offsets and size.
    Only segments the bucket holds whole are compared, and a run is replaced only when
    the entries it covers lie wholly within it (else it waits for a later round).
    """
    remote = m.segments
    if not remote:
        return None
    end = m.end_offset
    lasts = [e.last_offset for e in remote]

    def span(lo_off: int, hi_off: int) -> tuple[int, int]:
        """The entries overlapping ``[lo_off, hi_off)``, as an index range."""
        lo = hi = bisect.bisect_left(lasts, lo_off)
        while hi < len(remote) and remote[hi].base_offset < hi_off:
            hi += 1
        return lo, hi

    start = stop = -1
    for i, seg in enumerate(segments[:-1]):
        own_end = segments[i + 1].base_offset
        if own_end <= remote[0].base_offset:
            continue  # below the bucket (its start moved up: retention, DeleteRecords)
        lo, hi = span(seg.base_offset, own_end)
        if seg.next_offset <= end and not _matches(seg, own_end, remote[lo:hi]):
            if start < 0:
                start = i
            stop = i + 1
        elif start >= 0:
            break
    if start < 0:
        return None
    run = segments[start:stop]
    lo, hi = span(run[0].base_offset, segments[stop].base_offset)
    if lo < hi and (
        remote[lo].base_offset < run[0].base_offset
        or remote[hi - 1].last_offset >= segments[stop].base_offset
    ):
        return None  # an entry reaches beyond the run: not a clean cut yet
    return run, lo, hi


class _Moved(Exception):
    """The local segments changed while their replacement was being stored."""


class LeadershipLost(Exception):
    """The partition is no longer led here at the epoch the uploader started under."""


class Fenced(LeadershipLost):
    """The bucket's manifest was written under a higher leader epoch than this uploader's."""


class ManifestChanged(Exception):
    """Another writer replaced the manifest since it was read: the uploader continues
    from the bucket's copy, which it has adopted."""


class PartitionUploader:
    def __init__(self, tier: TierManager, partition: Partition) -> None:
        self.tier = tier
        self.partition = partition
        self.leader_epoch = partition.leader_epoch
        info = partition.topic_info
        self.prefix = partition_prefix(info.name, info.topic_id, partition.index)
        self.manifest_key = manifest_key(info.name, info.topic_id, partition.index)
        self.manifest = PartitionManifest(
            topic=info.name, topic_id=info.topic_id, partition=partition.index
        )
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        # (base offset of the active segment, monotonic time it was first seen with data)
        self._active_since: tuple[int, float] | None = None
        self.last_upload_ms = _now_ms()
        self.failing = False
        # the version of the manifest in the bucket this uploader's copy is (None: none
        # yet); used only where the store honours conditional writes
        self._version: str | None = None

    def __repr__(self) -> str:
        return f"uploader({self.partition.topic}-{self.partition.index})"

    @property
    def log(self) -> PartitionLog:
        """The partition's log now: a move to another log dir replaces it."""
        return self.partition.log

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Load the manifest (a new leader continues from it) and remove orphans."""
        await self.load_manifest()
        self._task = asyncio.create_task(self._run(), name=f"tier-upload-{self.prefix}")

    async def load_manifest(self) -> None:
        store = self.tier.store
        if await store.probe_conditional(PROBE_KEY):
            got = await store.get_versioned(self.manifest_key)
            found = None if got is None else decode_manifest(got[0], where=self.manifest_key)
            self._version = None if got is None else got[1]
        else:
            found = await read_manifest(store, self.manifest_key)
        if found is not None:
            self.manifest = found
            if self._deposed(found):
                self._fence(found)
        # nothing may leave the disk before the bucket has it
        m = self.manifest
        self.log.remote_log_end = m.end_offset if m.generation else 0
        self.tier.manifests[(self.partition.topic, self.partition.index)] = self.manifest
        await self._delete_orphans()

    async def stop(self, *, upload_tail_by: float | None = None) -> None:
        """Stop; with a deadline (monotonic), first roll and upload what the bucket lacks."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if upload_tail_by is None:
            return
        remaining = upload_tail_by - time.monotonic()
        if remaining <= 0:
            return
        try:
            await asyncio.wait_for(self._upload_tail(), remaining)
        except TimeoutError:
            log.warning("%r: the tail was not uploaded before the shutdown deadline", self)
        except StoreError as exc:
            log.warning("%r: the tail was not uploaded: %s", self, exc)
        except LeadershipLost:
            pass  # leadership moved during the shutdown: the new leader uploads it
        except ManifestChanged:
            log.warning("%r: another writer replaced the manifest during the shutdown", self)

    async def _upload_tail(self) -> None:
        if not self.leading():
            return  # the new leader uploads it: the followers have the same records
        if self.log.active_segment.size:
            self.log.roll()
        await self.upload_ready()

    def wake(self) -> None:
        self._wake.set()

    # -- the rounds --------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = ROUND_SECONDS
        while True:
            try:
                self._maybe_roll()
                await self.upload_ready()
                if self.log.config.compact:
                    await self.replace_cleaned()
                await self.apply_retention()
                if self.failing:
                    self.failing = False
                    self.tier.report_ok(self)
                backoff = ROUND_SECONDS
            except Fenced:
                return  # logged once when found
            except LeadershipLost:
                log.info("%r: no longer the leader; the next one continues", self)
                return
            except ManifestChanged:
                continue  # at once, from the bucket's manifest
            except StoreError as exc:
                self.failing = True
                self.tier.report_failure(self, exc)
                backoff = min(backoff * 2, 30.0)
            except Exception:
                log.exception("%r: upload round failed", self)
                backoff = min(backoff * 2, 30.0)
            self._wake.clear()
            if self.tier.away:
                # the manager probes the bucket for all partitions: this one goes on as
                # soon as it answers, rather than asking on its own meanwhile
                await self.tier.answering.wait()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), backoff)

    def _maybe_roll(self) -> None:
        active = self.log.active_segment
        if not active.size:
            self._active_since = None
            return
        now = time.monotonic()
        if self._active_since is None or self._active_since[0] != active.base_offset:
            self._active_since = (active.base_offset, now)
            return
        if (now - self._active_since[1]) * 1000 >= self.tier.config.max_upload_interval_ms:
            self.log.roll()
            self._active_since = None

    def pending(self) -> list[LogSegment]:
        """Closed segments the bucket lacks, oldest first (never the active one)."""
        plog = self.log
        m = self.manifest
        end = m.end_offset if m.generation else -1
        hw = plog.high_watermark
        segs = plog.segments[:-1]
        return [s for s in segs if s.size and s.next_offset > end and s.next_offset <= hw]

    async def upload_ready(self) -> None:
        for seg in self.pending():
            await self.upload(seg)

    async def upload(self, seg: LogSegment) -> None:
        async with self.tier.upload_slots:
            stored = await self._store_segment(seg)
            if stored is None:
                return
            remote, total = stored
            old = self.manifest
            new = PartitionManifest(
                topic=old.topic,
                topic_id=old.topic_id,
                partition=old.partition,
                log_start_offset=(
                    old.log_start_offset
                    if old.segments
                    else max(seg.base_offset, old.log_start_offset, self.log.log_start_offset)
                ),
                segments=[*old.segments, remote],
                generation=old.generation + 1,
            )
            try:
                await self._write_manifest(new)
            except BaseException:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._discard(self._keys(remote))
                raise
        self._uploaded(total)
        log.debug("%r: segment %d..%d in the bucket", self, seg.base_offset, seg.next_offset - 1)

    def _uploaded(self, total: int) -> None:
        self.last_upload_ms = _now_ms()
        self.tier.metrics.bytes_uploaded.inc(total)
        self.tier.metrics.segments_uploaded.inc()

    def _keys(self, s: RemoteSegment) -> list[str]:
        return [segment_key(self.prefix, s.base_offset, s.upload_id, ext) for ext in FILE_EXTS]

    async def _store_segment(self, seg: LogSegment) -> tuple[RemoteSegment, int] | None:
        """Store the files of ``seg`` under a fresh upload id (verified, referenced by no
        manifest yet): its manifest entry and the bytes stored, or None if the segment
        left the log meanwhile (retention, compaction)."""
        tier = self.tier
        loop = asyncio.get_running_loop()
        files = await loop.run_in_executor(None, open_segment_files, self.log, seg)
        if files is None:
            return None
        try:
            size = files.log_size
            total = size + sum(len(b) for b in files.small.values())
            await tier.bandwidth.take(total)
            upload_id = uuid.uuid4().hex
            exts = ["log", *files.small]
            keys = {ext: segment_key(self.prefix, seg.base_offset, upload_id, ext) for ext in exts}
            try:
                results = await asyncio.gather(
                    tier.store.put_file(keys["log"], files.log_fd, size),
                    *(tier.store.put(keys[ext], b) for ext, b in files.small.items()),
                )
            except BaseException:
                # nothing references these objects; remove what made it (best effort)
                with contextlib.suppress(asyncio.CancelledError):
                    await self._discard(keys.values())
                raise
        finally:
            os.close(files.log_fd)
        crc = results[0]
        if not self.leading():
            await self._discard(keys.values())
            raise LeadershipLost
        entries = list(self.log.leader_epoch_cache.entries)
        remote = RemoteSegment(
            upload_id=upload_id,
            base_offset=seg.base_offset,
            last_offset=seg.next_offset - 1,
            base_timestamp=seg.first_batch_timestamp,
            max_timestamp=seg.max_timestamp,
            offset_of_max_timestamp=seg.offset_of_max_timestamp,
            size=size,
            crc32c=crc,
            epochs=epoch_slice(entries, seg.base_offset, seg.next_offset),
            has_txn_index="txnindex" in files.small,
            has_snapshot="snapshot" in files.small,
            uploaded_ms=_now_ms(),
        )
        return remote, total

    # -- compacted topics ----------------------------------------------------------------

    async def replace_cleaned(self) -> int:
        """Compacted topics: local segments cleaned since their upload replace their
        remote copies. The cleaned segments are stored first, then one manifest swaps
        them in for the entries they cover, then the old objects go: a reader always
        finds every object its manifest names. Returns the segments stored."""
        run = cleaned_run(self.log.segments, self.manifest)
        if run is None:
            return 0
        segs, lo, hi = run
        stored: list[RemoteSegment] = []
        total = 0
        try:
            async with self.tier.upload_slots:
                for seg in segs:
                    if not seg.size:
                        continue  # cleaned to nothing: its offsets leave the bucket
                    got = await self._store_segment(seg)
                    if got is None:
                        raise _Moved
                    stored.append(got[0])
                    total += got[1]
                old = self.manifest
                if stored and hi == len(old.segments) and hi > lo:
                    # the bucket keeps ending where it did (a restore continues the
                    # offsets there), though compaction emptied the tail of the range
                    stored[-1] = await self._keep_tail(stored[-1], old.segments[-1])
                if cleaned_run(self.log.segments, old) != run:
                    raise _Moved
                new = PartitionManifest(
                    topic=old.topic,
                    topic_id=old.topic_id,
                    partition=old.partition,
                    log_start_offset=old.log_start_offset,
                    segments=[*old.segments[:lo], *stored, *old.segments[hi:]],
                    generation=old.generation + 1,
                )
                await self._write_manifest(new)
        except BaseException as exc:
            with contextlib.suppress(asyncio.CancelledError):
                for s in stored:
                    await self._discard(self._keys(s))
            if isinstance(exc, _Moved):
                return 0  # compacted or trimmed again meanwhile: the next round retries
            raise
        for s in old.segments[lo:hi]:
            await self._discard(self._keys(s))
            self.tier.metrics.bytes_deleted.inc(s.size)
        self._uploaded(total)
        log.debug(
            "%r: cleaned segments %d..%d replace %d remote ones",
            self,
            segs[0].base_offset,
            segs[-1].next_offset - 1,
            hi - lo,
        )
        return len(stored)

    async def _keep_tail(self, tail: RemoteSegment, replaced: RemoteSegment) -> RemoteSegment:
        """The cleaned segment that replaces the bucket's last one, reaching as far and
        carrying its producer snapshot: a restore rebuilds idempotent producers' state
        from the last segment's snapshot, taken at its end. The cleaned segment's own is
        at an earlier offset when compaction emptied its end (or missing), so the
        replaced segment's is copied under the new upload."""
        end = max(tail.last_offset, replaced.last_offset)
        if end == tail.last_offset and tail.has_snapshot:
            return tail
        store = self.tier.store
        key = segment_key(self.prefix, tail.base_offset, tail.upload_id, "snapshot")
        has = False
        if replaced.has_snapshot:
            old = segment_key(self.prefix, replaced.base_offset, replaced.upload_id, "snapshot")
            await store.put(key, await store.get(old))
            has = True
        elif tail.has_snapshot:
            await store.delete(key)  # taken below the end the entry now names
        return msgspec.structs.replace(tail, last_offset=end, has_snapshot=has)

    def leading(self) -> bool:
        """Whether this broker still leads the partition at the epoch it started under."""
        p = self.partition
        return p.is_leader and p.leader_epoch == self.leader_epoch

    async def _discard(self, keys: Iterable[str]) -> None:
        """Remove objects nothing references (best effort; orphans are swept later)."""
        for key in keys:
            try:
                await self.tier.store.delete(key)
            except StoreError:
                break

    async def _write_manifest(self, new: PartitionManifest) -> None:
        if not self.leading():
            raise LeadershipLost
        new = msgspec.structs.replace(new, leader_epoch=self.leader_epoch)
        data = encode_manifest(new)
        store = self.tier.store
        if not await store.probe_conditional(PROBE_KEY):
            await store.put(self.manifest_key, data)
        else:
            try:
                self._version = await store.put_if(self.manifest_key, data, self._version)
            except PreconditionFailedError:
                await self._lost_race(data)
        self._adopt(new)

    def _adopt(self, m: PartitionManifest) -> None:
        self.manifest = m
        self.tier.manifests[(self.partition.topic, self.partition.index)] = m
        self.log.remote_log_end = m.end_offset

    async def _lost_race(self, data: bytes) -> None:
        """A conditional manifest write was refused: returns if the bucket holds ``data``
        after all (a retried write whose first attempt landed), else raises."""
        got = await self.tier.store.get_versioned(self.manifest_key)
        if got is None:
            # deleted under us (the topic is going): start over as its first writer
            self._version = None
            raise ManifestChanged
        raw, self._version = got
        if raw == data:
            return
        found = decode_manifest(raw, where=self.manifest_key)
        if self._deposed(found):
            self._fence(found)
        log.info(
            "%r: the manifest was replaced by another writer (epoch %d); continuing from it",
            self,
            found.leader_epoch,
        )
        self._adopt(found)
        raise ManifestChanged

    def _deposed(self, found: PartitionManifest) -> bool:
        """A manifest written under a higher leader epoch than ours. (A single broker's
        epochs are all 0 and carry no order: its writes only never overwrite others'.)"""
        return self.partition.replica is not None and found.leader_epoch > self.leader_epoch

    def _fence(self, found: PartitionManifest) -> None:
        log.warning(
            "%r: the bucket's manifest was written under leader epoch %d, above ours (%d): "
            "a newer leader uploads this partition, this broker stops",
            self,
            found.leader_epoch,
            self.leader_epoch,
        )
        self.tier.metrics.fenced_uploaders.inc()
        raise Fenced

    # -- total retention ---------------------------------------------------------------

    async def apply_retention(self, now_ms: int | None = None) -> int:
        """Drop remote segments past retention.ms / retention.bytes; returns how many."""
        m = self.manifest
        cfg = self.log.config
        if not m.segments or not cfg.delete:
            return 0
        now_ms = _now_ms() if now_ms is None else now_ms
        segs = m.segments
        n = 0
        if cfg.retention_ms >= 0:
            while n < len(segs) and now_ms - segs[n].max_timestamp > cfg.retention_ms:
                n += 1
        if cfg.retention_bytes >= 0:
            end = m.end_offset
            local = sum(s.size for s in self.log.segments if s.base_offset >= end)
            total = m.size_bytes + local
            k = 0
            while k < len(segs) and total - segs[k].size >= cfg.retention_bytes:
                total -= segs[k].size
                k += 1
            n = max(n, k)
        return await self.drop_before(n)

    async def delete_records(self, offset: int) -> None:
        """DeleteRecords below the local log: move the remote log start up to ``offset``."""
        m = self.manifest
        if offset <= m.log_start_offset:
            return
        n = 0
        while n < len(m.segments) and m.segments[n].next_offset <= offset:
            n += 1
        await self.drop_before(n, log_start=offset)

    async def drop_before(self, n: int, *, log_start: int | None = None) -> int:
        """Write a manifest without the first ``n`` segments (and a log start moved up
        to ``log_start``), then delete their objects: nothing named is ever missing."""
        m = self.manifest
        if n <= 0 and log_start is None:
            return 0
        doomed, kept = m.segments[:n], m.segments[n:]
        start = kept[0].base_offset if kept else m.end_offset
        if log_start is not None:
            start = max(start, log_start)
        new = PartitionManifest(
            topic=m.topic,
            topic_id=m.topic_id,
            partition=m.partition,
            log_start_offset=max(start, m.log_start_offset),
            segments=kept,
            generation=m.generation + 1,
        )
        await self._write_manifest(new)
        for s in doomed:
            for ext in FILE_EXTS:
                key = segment_key(self.prefix, s.base_offset, s.upload_id, ext)
                await self.tier.store.delete(key)
            self.tier.metrics.bytes_deleted.inc(s.size)
        return len(doomed)

    async def _delete_orphans(self) -> None:
        """Remove objects under this partition that no manifest names (crashed uploads)."""
        store = self.tier.store
        referenced = {
            segment_key(self.prefix, s.base_offset, s.upload_id, "") for s in self.manifest.segments
        }
        for obj in await store.list(self.prefix):
            if obj.key == self.manifest_key:
                continue
            stem = obj.key[: obj.key.rfind(".") + 1]
            if stem not in referenced:
                log.info("%r: deleting orphan object %s", self, obj.key)
                await store.delete(obj.key)

    # -- lag ---------------------------------------------------------------------------

    def lag(self) -> tuple[int, float]:
        """(offsets the bucket lacks below the high watermark, seconds since it had all)."""
        hw = self.log.high_watermark
        m = self.manifest
        end = m.end_offset if m.generation else self.log.log_start_offset
        behind = max(0, hw - end)
        seconds = 0.0 if behind == 0 else (_now_ms() - self.last_upload_ms) / 1000
        return behind, seconds
