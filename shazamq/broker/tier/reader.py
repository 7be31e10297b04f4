"""Reads of the remote tier: Fetch and ListOffsets below the local log start.

A read finds the remote segment through the manifest, the batch position through the
segment's offset index (fetched once, kept in memory), and then reads fixed-size chunks
of the ``.log`` object by ranged GETs. Chunks are kept in a bounded on-disk cache (LRU by
bytes); a read that reaches into the last chunk it loaded starts loading the next one in
the background, so a sequential consumer finds it ready. Concurrent reads of one chunk
share one request. Only the fetches that need the bucket wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import struct
import time
from collections import OrderedDict
from pathlib import Path

from shazamq.broker.log.index import AbortedTxn
from shazamq.protocol.records import (
    HEADER_SIZE,
    LOG_OVERHEAD,
    MIN_BATCH_LENGTH,
    TIMESTAMP_LOG_APPEND_TIME,
    decode_batch,
    parse_header,
)

from .manifest import PartitionManifest, RemoteSegment, segment_key
from .metrics import TierMetrics
from .store import ObjectStore, StoreError, StoreErrorKind

__all__ = ["RemoteReader"]

log = logging.getLogger(__name__)

_OFFSET_ENTRY = struct.Struct(">ii")
_TIME_ENTRY = struct.Struct(">qi")
_TXN_ENTRY = struct.Struct(">hqqqq")
_SMALL_CACHE = 256  # index objects kept in memory


class RemoteReader:
    def __init__(
        self,
        store: ObjectStore,
        cache_dir: Path,
        *,
        cache_bytes: int,
        chunk_bytes: int,
        metrics: TierMetrics,
    ) -> None:
        self.store = store
        self.cache_dir = cache_dir
        self.cache_bytes = cache_bytes
        self.chunk_bytes = chunk_bytes
        self.metrics = metrics
        self._chunks: OrderedDict[tuple[str, int], int] = OrderedDict()  # -> size
        self._cached_bytes = 0
        self._inflight: dict[tuple[str, int], asyncio.Future[bytes]] = {}
        self._small: OrderedDict[str, bytes] = OrderedDict()
        self._background: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        def reset() -> None:
            shutil.rmtree(self.cache_dir, ignore_errors=True)
            self.cache_dir.mkdir(parents=True, exist_ok=True)

        await asyncio.get_running_loop().run_in_executor(None, reset)

    async def close(self) -> None:
        for t in list(self._background):
            t.cancel()
        for t in list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    # -- objects ---------------------------------------------------------------------

    async def _small_object(self, key: str) -> bytes:
        data = self._small.get(key)
        if data is not None:
            self._small.move_to_end(key)
            return data
        try:
            data = await self.store.get(key)
        except StoreError as exc:
            if exc.kind is StoreErrorKind.NOT_FOUND:
                data = b""
            else:
                raise
        self._small[key] = data
        while len(self._small) > _SMALL_CACHE:
            self._small.popitem(last=False)
        return data

    def _chunk_path(self, key: str, idx: int) -> Path:
        digest = hashlib.blake2b(key.encode(), digest_size=12).hexdigest()
        return self.cache_dir / f"{digest}-{idx}"

    async def _chunk(self, key: str, size: int, idx: int) -> bytes:
        ck = (key, idx)
        loop = asyncio.get_running_loop()
        if ck in self._chunks:
            self._chunks.move_to_end(ck)
            try:
                data = await loop.run_in_executor(None, self._chunk_path(key, idx).read_bytes)
                self.metrics.cache_hits.inc()
                return data
            except FileNotFoundError:
                self._forget(ck)
        fut = self._inflight.get(ck)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = loop.create_future()
        self._inflight[ck] = fut
        try:
            self.metrics.cache_misses.inc()
            start = idx * self.chunk_bytes
            data = await self.store.get(key, start, min(size, start + self.chunk_bytes))
            if self.cache_bytes > 0:
                await loop.run_in_executor(None, self._chunk_path(key, idx).write_bytes, data)
                self._chunks[ck] = len(data)
                self._cached_bytes += len(data)
                self._evict()
            fut.set_result(data)
            return data
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            self._inflight.pop(ck, None)

    def _forget(self, ck: tuple[str, int]) -> None:
        size = self._chunks.pop(ck, None)
        if size is not None:
            self._cached_bytes -= size
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._chunk_path(*ck))

    def _evict(self) -> None:
        while self._cached_bytes > self.cache_bytes and self._chunks:
            ck = next(iter(self._chunks))
            self._forget(ck)

    def _read_ahead(self, key: str, size: int, idx: int) -> None:
        if idx * self.chunk_bytes >= size or (key, idx) in self._chunks:
            return
        if (key, idx) in self._inflight:
            return

        async def load() -> None:
            with contextlib.suppress(StoreError):
                await self._chunk(key, size, idx)

        task = asyncio.create_task(load())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- reads -----------------------------------------------------------------------

    async def read(
        self,
        prefix: str,
        seg: RemoteSegment,
        offset: int,
        max_bytes: int,
        upper: int,
        *,
        min_one_batch: bool = True,
    ) -> bytes:
        """Whole batches of ``seg`` from the one holding ``offset``, as Fetch returns
        them: at most ``max_bytes`` (but one batch at least) and ending below ``upper``."""
        started = time.monotonic()
        key = segment_key(prefix, seg.base_offset, seg.upload_id, "log")
        index = await self._small_object(
            segment_key(prefix, seg.base_offset, seg.upload_id, "index")
        )
        pos = _floor_position(index, offset - seg.base_offset)
        size = seg.size
        c = self.chunk_bytes
        idx = pos // c
        buf = bytearray(await self._chunk(key, size, idx))
        buf_start = idx * c
        next_idx = idx + 1
        cur = pos - buf_start
        out_start = out_end = -1

        async def ensure(n: int) -> bool:
            nonlocal next_idx
            while len(buf) < n:
                if buf_start + len(buf) >= size:
                    return False
                buf.extend(await self._chunk(key, size, next_idx))
                next_idx += 1
            return True

        while buf_start + cur < size:
            if not await ensure(cur + HEADER_SIZE):
                break
            header = parse_header(buf, cur)
            if header.magic != 2 or header.batch_length < MIN_BATCH_LENGTH:
                raise StoreError(
                    StoreErrorKind.INTEGRITY, f"{key}: no record batch at {buf_start + cur}"
                )
            total = header.batch_length + LOG_OVERHEAD
            if not await ensure(cur + total):
                raise StoreError(StoreErrorKind.INTEGRITY, f"{key}: torn batch at the end")
            last = header.base_offset + header.last_offset_delta
            if last < offset:
                cur += total
                continue
            if last >= upper:
                break
            if out_start < 0:
                if total > max_bytes and not min_one_batch:
                    break
                out_start = cur
            elif cur + total - out_start > max_bytes:
                break
            cur += total
            out_end = cur
            if out_end - out_start >= max_bytes:
                break
        # sequential consumers: have the next chunk ready
        self._read_ahead(key, size, next_idx)
        if out_start < 0:
            return b""
        data = bytes(buf[out_start:out_end])
        self.metrics.remote_fetch_latency.observe(time.monotonic() - started)
        self.metrics.remote_fetch_bytes.inc(len(data))
        return data

    async def aborted_transactions(
        self, prefix: str, m: PartitionManifest, fetch_offset: int, upper: int
    ) -> tuple[list[AbortedTxn], bool]:
        """Aborted transactions overlapping ``[fetch_offset, upper)`` from the remote
        segments; the flag says no later segment can add more."""
        found: list[AbortedTxn] = []
        seg = m.find(fetch_offset)
        if seg is None:
            return found, False
        for s in m.segments[m.segments.index(seg) :]:
            if not s.has_txn_index:
                continue
            data = await self._small_object(
                segment_key(prefix, s.base_offset, s.upload_id, "txnindex")
            )
            usable = len(data) - len(data) % _TXN_ENTRY.size
            for _v, pid, first, last, lso in _TXN_ENTRY.iter_unpack(data[:usable]):
                if last >= fetch_offset and first < upper:
                    found.append(AbortedTxn(pid, first, last, lso))
                if lso >= upper:
                    return found, True
        return found, False

    async def offset_for_timestamp(
        self, prefix: str, m: PartitionManifest, timestamp: int, max_uncompressed: int
    ) -> tuple[int, int] | None:
        """``(offset, timestamp)`` of the first remote record at or after ``timestamp``."""
        for seg in m.segments:
            if seg.max_timestamp < timestamp or seg.last_offset < m.log_start_offset:
                continue
            tindex = await self._small_object(
                segment_key(prefix, seg.base_offset, seg.upload_id, "timeindex")
            )
            start = max(seg.base_offset, m.log_start_offset)
            usable = len(tindex) - len(tindex) % _TIME_ENTRY.size
            for ts, rel in _TIME_ENTRY.iter_unpack(tindex[:usable]):
                if ts >= timestamp:
                    break
                start = max(start, seg.base_offset + rel)
            offset = start
            while offset <= seg.last_offset:
                data = await self.read(prefix, seg, offset, self.chunk_bytes, seg.next_offset)
                if not data:
                    break
                pos = 0
                while pos < len(data):
                    header = parse_header(data, pos)
                    total = header.batch_length + LOG_OVERHEAD
                    floor = max(header.base_offset, m.log_start_offset)
                    if header.max_timestamp >= timestamp and (
                        header.base_offset + header.last_offset_delta >= m.log_start_offset
                    ):
                        if header.timestamp_type == TIMESTAMP_LOG_APPEND_TIME:
                            return floor, header.max_timestamp
                        _, records = decode_batch(
                            data[pos : pos + total], max_uncompressed=max_uncompressed
                        )
                        for r in records:
                            o = header.base_offset + r.offset_delta
                            ts = header.base_timestamp + r.timestamp_delta
                            if o >= m.log_start_offset and ts >= timestamp:
                                return o, ts
                    pos += total
                    offset = header.base_offset + header.last_offset_delta + 1
        return None


def _floor_position(index: bytes, relative: int) -> int:
    """Position of the last index entry at or below ``relative`` (0 when none)."""
    lo, hi = 0, len(index) // _OFFSET_ENTRY.size
    while lo < hi:  # first entry whose key is above ``relative``
        mid = (lo + hi) // 2
        if _OFFSET_ENTRY.unpack_from(index, mid * _OFFSET_ENTRY.size)[0] <= relative:
            lo = mid + 1
        else:
            hi = mid
    return 0 if lo == 0 else _OFFSET_ENTRY.unpack_from(index, (lo - 1) * _OFFSET_ENTRY.size)[1]
