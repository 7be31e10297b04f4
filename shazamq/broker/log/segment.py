"""One log segment: a ``.log`` file of whole record batches plus its three indexes.

A segment is named by its base offset (20 digits) and holds batches exactly as they
arrived, one ``os.write`` per append. Reads locate the first wanted batch through the
sparse offset index and a header-only scan, then hand back a byte range of whole batches
(``os.pread``; the range can also be served with ``sendfile`` via :meth:`LogSegment.locate`).
Nothing here decodes records except the ListOffsets-by-timestamp lookup, which decodes a
single batch.

Files of a segment share a suffix while they are being replaced: ``.cleaned`` while the
cleaner writes them, ``.swap`` once complete, ``.deleted`` once unlinked from the log and
waiting for readers to let go (Kafka's ``file.delete.delay.ms``). Renames keep open file
descriptors valid, which is what lets reads continue during a swap.

Threading: the owner (``PartitionLog``) serialises appends, truncation and suffix changes
under its partition lock. Reads and lookups may run concurrently on another thread; they
only use ``os.pread`` and immutable snapshots of the index columns.

Descriptors: the ``.log`` is opened on use through the process's open-file budget
(:mod:`.open_files`), pinned for the one call that uses it, and closed when the budget
needs room for a more recently used segment; nothing here keeps a descriptor number
beyond a pinned call.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

from shazamq.protocol.records import (
    HEADER_SIZE,
    LOG_OVERHEAD,
    MIN_BATCH_LENGTH,
    TIMESTAMP_LOG_APPEND_TIME,
    BatchHeader,
    CorruptRecordError,
    compute_crc,
    decode_batch,
    parse_header,
)

from .index import AbortedTxn, IndexCorruptError, OffsetIndex, TimeIndex, TransactionIndex
from .open_files import BUDGET

__all__ = [
    "CLEANED_SUFFIX",
    "DELETED_SUFFIX",
    "SWAP_SUFFIX",
    "LogSegment",
    "ReadSlice",
    "segment_file_name",
]

LOG_EXT = ".log"
INDEX_EXT = ".index"
TIME_INDEX_EXT = ".timeindex"
TXN_INDEX_EXT = ".txnindex"
DELETED_SUFFIX = ".deleted"
CLEANED_SUFFIX = ".cleaned"
SWAP_SUFFIX = ".swap"

INT32_MAX = 0x7FFFFFFF
_SCAN_CHUNK = 16 * 1024
_RECOVER_CHUNK = 1024 * 1024
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# Appended bytes are handed to the kernel for write-back every this many bytes (a hint
# that starts the write, not a flush: nothing waits for the disk and durability is
# unchanged). Without it dirty pages pile up until the kernel's background threshold (a
# tenth of memory, gigabytes) and the write-back that then starts stalls appends for
# whole seconds; with it they reach the disk as they come, as RocksDB's bytes_per_sync.
WRITEBACK_BYTES = 4 * 1024 * 1024


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range  # Linux only
    except (OSError, AttributeError, TypeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def segment_file_name(base_offset: int, ext: str, suffix: str = "") -> str:
    """``00000000000000001234.log`` and friends."""
    return f"{base_offset:020d}{ext}{suffix}"


class ReadSlice(NamedTuple):
    """A byte range of whole batches in a segment file, ready for ``pread``/``sendfile``."""

    segment: LogSegment
    position: int
    size: int
    first_offset: int

    def read(self) -> bytes:
        return self.segment.read_bytes(self.position, self.size)


class LogSegment:
    """A ``.log`` file and its ``.index``, ``.timeindex`` and ``.txnindex``."""

    __slots__ = (
        "_bytes_since_index",
        "_created_ms",
        "_fd",
        "_first_batch_ts",
        "_max_ts",
        "_max_ts_offset",
        "_next_offset",
        "_pins",
        "_retired",
        "_size",
        "_unsynced",
        "_writeback_from",
        "base_offset",
        "directory",
        "index_interval_bytes",
        "offset_index",
        "suffix",
        "time_index",
        "txn_index",
    )

    def __init__(
        self,
        directory: str,
        base_offset: int,
        *,
        index_interval_bytes: int,
        max_index_entries_bytes: int,
        suffix: str = "",
        new: bool = False,
    ) -> None:
        self.directory = directory
        self.base_offset = base_offset
        self.suffix = suffix
        self.index_interval_bytes = index_interval_bytes
        self.offset_index = OffsetIndex(
            self._path(INDEX_EXT),
            base_offset,
            max_index_entries_bytes // OffsetIndex.ENTRY.size,
            new=new,
        )
        self.time_index = TimeIndex(
            self._path(TIME_INDEX_EXT),
            base_offset,
            max_index_entries_bytes // TimeIndex.ENTRY.size,
            new=new,
        )
        self.txn_index = TransactionIndex(self._path(TXN_INDEX_EXT), new=new)
        self.offset_index.on_corrupt = self.rebuild_indexes
        self.time_index.on_corrupt = self.rebuild_indexes
        # the open .log descriptor, or -1; owned by BUDGET (see .open_files), as are
        # _pins (calls using it now) and _retired (closed by the owner while pinned)
        self._fd = -1
        self._pins = 0
        self._retired = False
        # written (appended, truncated, recovered) since the last fsync
        self._unsynced = new
        self._size: int | None = None
        self._next_offset: int | None = None
        self._max_ts: int | None = None
        self._max_ts_offset = base_offset
        self._first_batch_ts: int | None = None
        self._bytes_since_index = 0
        self._created_ms = int(time.time() * 1000)
        self._writeback_from: int | None = None  # appended bytes not yet handed over
        if new:  # created empty now; the descriptor comes from the budget on first use
            flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | _O_CLOEXEC
            os.close(os.open(self._path(LOG_EXT), flags, 0o644))
            self._size = 0
            self._next_offset = base_offset
            self._max_ts = -1
            self._first_batch_ts = -1

    # ------------------------------------------------------------------- naming
    def _path(self, ext: str, suffix: str | None = None) -> str:
        return os.path.join(
            self.directory,
            segment_file_name(self.base_offset, ext, self.suffix if suffix is None else suffix),
        )

    @property
    def log_path(self) -> str:
        return self._path(LOG_EXT)

    def _open_log(self) -> int:
        """Open the ``.log`` (called by the budget, under its lock)."""
        return os.open(self._path(LOG_EXT), os.O_RDWR | os.O_APPEND | _O_CLOEXEC)

    @property
    def holds_descriptor(self) -> bool:
        return self._fd >= 0

    def _pread(self, size: int, position: int) -> bytes:
        fd = BUDGET.acquire(self)
        try:
            return os.pread(fd, size, position)
        finally:
            BUDGET.release(self)

    def _fstat(self) -> os.stat_result:
        fd = BUDGET.acquire(self)
        try:
            return os.fstat(fd)
        finally:
            BUDGET.release(self)

    # --------------------------------------------------------------- properties
    @property
    def size(self) -> int:
        size = self._size
        if size is None:
            size = self._fstat().st_size
            self._size = size
        return size

    @property
    def next_offset(self) -> int:
        """One past the last offset in the segment (its base offset when empty)."""
        if self._next_offset is None:
            self._load_tail()
        assert self._next_offset is not None
        return self._next_offset

    @property
    def max_timestamp(self) -> int:
        """Largest batch max timestamp in the segment; -1 when it has none."""
        if self._max_ts is None:
            ts, offset = self.time_index.last_entry
            self._max_ts, self._max_ts_offset = ts, offset
        return self._max_ts

    @property
    def offset_of_max_timestamp(self) -> int:
        """Base offset of the batch holding :attr:`max_timestamp`."""
        _ = self.max_timestamp
        return self._max_ts_offset

    @property
    def largest_timestamp(self) -> int:
        """What time retention compares: the max timestamp, else the file's mtime."""
        ts = self.max_timestamp
        return ts if ts >= 0 else self.last_modified_ms

    @property
    def last_modified_ms(self) -> int:
        return int(self._fstat().st_mtime * 1000)

    @property
    def files_loaded(self) -> bool:
        """Whether size, end offset, first timestamp and both indexes are in memory, so
        the append checks read no file."""
        return (
            self._size is not None
            and self._next_offset is not None
            and self._first_batch_ts is not None
            and self.offset_index.loaded
            and self.time_index.loaded
        )

    @property
    def is_empty(self) -> bool:
        return self.size == 0

    def _load_tail(self) -> None:
        """Find the next offset by scanning from the last offset-index entry to the end."""
        size = self.size
        _, pos = self.offset_index.last_entry
        if pos > size:
            raise IndexCorruptError(f"{self.offset_index.path}: entry beyond the log end")
        next_offset = self.base_offset
        end = pos
        for p, header in self.iter_headers(pos, size):
            next_offset = header.next_offset
            end = p + header.size
        if end != size:
            raise CorruptRecordError(f"{self.log_path}: {size - end} trailing bytes after {end}")
        if pos > 0 and next_offset == self.base_offset:
            raise IndexCorruptError(f"{self.offset_index.path}: last entry points at nothing")
        self._next_offset = next_offset

    def check_clean(self) -> None:
        """Cheap consistency check after a clean shutdown; raises if recovery is needed."""
        self.offset_index.check()
        self.time_index.check()
        self._load_tail()

    # ------------------------------------------------------------------ scanning
    def iter_headers(
        self, start: int = 0, end: int | None = None
    ) -> Iterator[tuple[int, BatchHeader]]:
        """Yield ``(position, header)`` for the batches from ``start`` up to ``end``.

        Reads in chunks and parses only headers. Raises :class:`CorruptRecordError` on a
        header whose length cannot be right or that runs past ``end``.
        """
        if end is None:
            end = self.size
        pos = start
        chunk = b""
        chunk_start = start
        while pos < end:
            off = pos - chunk_start
            if off < 0 or off + HEADER_SIZE > len(chunk):
                chunk = self._pread(max(_SCAN_CHUNK, HEADER_SIZE), pos)
                chunk_start = pos
                off = 0
                if len(chunk) < HEADER_SIZE:
                    raise CorruptRecordError(f"{self.log_path}: torn batch header at {pos}")
            header = parse_header(chunk, off)
            if header.magic != 2 or header.batch_length < MIN_BATCH_LENGTH:
                raise CorruptRecordError(f"{self.log_path}: invalid batch header at {pos}")
            size = header.batch_length + LOG_OVERHEAD
            if pos + size > end:
                raise CorruptRecordError(f"{self.log_path}: torn batch at {pos}")
            yield pos, header
            pos += size

    def iter_batch_bytes(self, start: int = 0) -> Iterator[tuple[int, BatchHeader, bytes]]:
        """Yield ``(position, header, batch bytes)`` for every batch from ``start``,
        reading the file in large chunks (compaction, tests)."""
        end = self.size
        pos = start
        chunk = b""
        chunk_start = start
        while pos < end:
            off = pos - chunk_start
            if off + HEADER_SIZE > len(chunk):
                chunk = self._pread(_RECOVER_CHUNK, pos)
                chunk_start, off = pos, 0
                if len(chunk) < HEADER_SIZE:
                    raise CorruptRecordError(f"{self.log_path}: torn batch header at {pos}")
            header = parse_header(chunk, off)
            total = header.batch_length + LOG_OVERHEAD
            if header.magic != 2 or header.batch_length < MIN_BATCH_LENGTH or pos + total > end:
                raise CorruptRecordError(f"{self.log_path}: invalid batch at {pos}")
            if off + total > len(chunk):
                chunk = self._pread(max(_RECOVER_CHUNK, total), pos)
                chunk_start, off = pos, 0
            yield pos, header, chunk[off : off + total]
            pos += total

    def find_batch(self, offset: int) -> tuple[int, BatchHeader] | None:
        """The first batch whose last offset is >= ``offset``, or None."""
        _, pos = self.offset_index.lookup(offset)
        for p, header in self.iter_headers(pos):
            if header.base_offset + header.last_offset_delta >= offset:
                return p, header
        return None

    def read_bytes(self, position: int, size: int) -> bytes:
        data = self._pread(size, position)
        if len(data) != size:
            raise CorruptRecordError(f"{self.log_path}: short read at {position}")
        return data

    # --------------------------------------------------------------------- reads
    def locate(
        self,
        start_offset: int,
        max_bytes: int,
        upper_bound: int | None = None,
        *,
        min_one_batch: bool = True,
    ) -> ReadSlice | None:
        """The whole batches to return for a fetch at ``start_offset``.

        Starts at the batch containing ``start_offset`` (or the first one after it) and
        adds batches while they fit in ``max_bytes`` and end before ``upper_bound``. The
        first batch is returned even when larger than ``max_bytes`` unless
        ``min_one_batch`` is False. Returns None when no batch here ends at or after
        ``start_offset`` (look in the next segment); a ``ReadSlice`` of size 0 when the
        bound or the byte limit stops the read at its first batch.
        """
        found = self.find_batch(start_offset)
        if found is None:
            return None
        first_pos, first = found
        first_size = first.batch_length + LOG_OVERHEAD
        if upper_bound is not None and first.base_offset + first.last_offset_delta >= upper_bound:
            return ReadSlice(self, first_pos, 0, first.base_offset)
        if first_size > max_bytes:
            return ReadSlice(self, first_pos, first_size if min_one_batch else 0, first.base_offset)
        end = first_pos + first_size
        limit = first_pos + max_bytes
        size = self.size
        bound = upper_bound if upper_bound is not None else 1 << 62
        if limit >= size and (upper_bound is None or upper_bound >= self.next_offset):
            return ReadSlice(self, first_pos, size - first_pos, first.base_offset)
        # Jump over whole batches using the index, then scan the remainder.
        entry = self.offset_index.floor_by_position(limit, bound)
        if entry is not None and entry[1] > end:
            end = entry[1]
        for p, header in self.iter_headers(end, size):
            batch_end = p + header.batch_length + LOG_OVERHEAD
            if batch_end > limit or header.base_offset + header.last_offset_delta >= bound:
                break
            end = batch_end
        return ReadSlice(self, first_pos, end - first_pos, first.base_offset)

    def read(
        self,
        start_offset: int,
        max_bytes: int,
        upper_bound: int | None = None,
        *,
        min_one_batch: bool = True,
    ) -> bytes | None:
        """Bytes of whole batches; see :meth:`locate`. None means "not in this segment"."""
        found = self.locate(start_offset, max_bytes, upper_bound, min_one_batch=min_one_batch)
        if found is None:
            return None
        if not found.size:
            return b""
        return self.read_bytes(found.position, found.size)

    def find_offset_by_timestamp(
        self, timestamp: int, min_offset: int, *, max_uncompressed: int
    ) -> tuple[int, int] | None:
        """``(offset, timestamp)`` of the first record at or after ``timestamp``.

        Only records at ``min_offset`` or later count. Decodes one batch at most.
        """
        _, start = self.time_index.lookup(timestamp - 1)
        start = max(start, min_offset)
        _, pos = self.offset_index.lookup(start)
        for p, header in self.iter_headers(pos):
            if header.base_offset + header.last_offset_delta < min_offset:
                continue
            if header.max_timestamp < timestamp:
                continue
            if header.timestamp_type == TIMESTAMP_LOG_APPEND_TIME:
                return max(header.base_offset, min_offset), header.max_timestamp
            batch = self.read_bytes(p, header.batch_length + LOG_OVERHEAD)
            _, records = decode_batch(batch, max_uncompressed=max_uncompressed)
            for record in records:
                offset = header.base_offset + record.offset_delta
                ts = header.base_timestamp + record.timestamp_delta
                if offset >= min_offset and ts >= timestamp:
                    return offset, ts
        return None

    # -------------------------------------------------------------------- append
    def append(
        self,
        data: bytes | bytearray | memoryview,
        last_offset: int,
        max_timestamp: int,
        offset_of_max_timestamp: int | None = None,
    ) -> None:
        """Write whole batches at the end with one ``os.write``; maybe add index entries.

        ``data`` starts with a batch header; its base offset is the first offset.
        """
        size = self.size
        first_offset = int.from_bytes(data[0:8], "big", signed=True)
        if last_offset - self.base_offset > INT32_MAX or first_offset < self.base_offset:
            raise ValueError(f"offsets {first_offset}..{last_offset} do not fit segment")
        fd = BUDGET.acquire(self)
        try:
            self._write_at_end(
                fd, data, size, first_offset, last_offset, max_timestamp, offset_of_max_timestamp
            )
        finally:
            BUDGET.release(self)

    def _write_at_end(
        self,
        fd: int,
        data: bytes | bytearray | memoryview,
        size: int,
        first_offset: int,
        last_offset: int,
        max_timestamp: int,
        offset_of_max_timestamp: int | None,
    ) -> None:
        with memoryview(data) as view:
            n = len(view)
            try:
                written = os.write(fd, view)
                while written < n:
                    written += os.write(fd, view[written:])
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
            finally:
                # after the write: a sync() on another thread clears the flag before its
                # fsync, so a write it may have missed always leaves the flag set
                self._unsynced = True
        if size == 0:
            self._first_batch_ts = max_timestamp
        # the end offset before the size: a lock-free reader on another thread that sees
        # the new size must also see the new end, or it would return batches past the
        # bound it was given (see locate)
        self._next_offset = last_offset + 1
        self._size = size + n
        self._note_batch(first_offset, size, n, max_timestamp, offset_of_max_timestamp)
        start = self._writeback_from
        if start is None or start > size:  # first append since opening, or truncated
            self._writeback_from = start = size
        if size + n - start >= WRITEBACK_BYTES and _sync_file_range is not None:
            _sync_file_range(fd, start, size + n - start, _SYNC_FILE_RANGE_WRITE)
            self._writeback_from = size + n

    def _note_batch(
        self,
        first_offset: int,
        position: int,
        nbytes: int,
        max_timestamp: int,
        offset_of_max_timestamp: int | None,
    ) -> None:
        """Track the max timestamp and add sparse index entries as bytes accumulate."""
        if max_timestamp > self.max_timestamp:
            self._max_ts = max_timestamp
            self._max_ts_offset = (
                first_offset if offset_of_max_timestamp is None else offset_of_max_timestamp
            )
        if self._bytes_since_index >= self.index_interval_bytes:
            self.offset_index.append(first_offset, position)
            self.time_index.maybe_append(self.max_timestamp, self._max_ts_offset)
            self._bytes_since_index = 0
        self._bytes_since_index += nbytes

    @property
    def first_batch_timestamp(self) -> int:
        """Max timestamp of the first batch (Kafka rolls by it); -1 if the segment is empty."""
        if self._first_batch_ts is None:
            if self.size < HEADER_SIZE:
                self._first_batch_ts = -1
            else:
                self._first_batch_ts = parse_header(self.read_bytes(0, HEADER_SIZE)).max_timestamp
        return self._first_batch_ts

    @property
    def created_ms(self) -> int:
        return self._created_ms

    def seal(self) -> None:
        """The segment stops being active: record its max timestamp in the time index."""
        ts = self.max_timestamp
        if ts >= 0:
            self.time_index.maybe_append(ts, self._max_ts_offset)
        self.offset_index.close()
        self.time_index.close()

    # ------------------------------------------------------------------ recovery
    def recover(
        self,
        on_batch: Callable[[BatchHeader, memoryview], None] | None = None,
        *,
        min_offset: int | None = None,
        reset_txn_index: bool = True,
    ) -> int:
        """Re-validate every batch (CRC, sizes, offset order), rebuild the offset and time
        indexes, and truncate at the first invalid byte. Returns the bytes truncated.

        ``on_batch`` sees each valid batch (header and bytes) in order. The transaction
        index is cleared (unless ``reset_txn_index`` is False, for an index-only
        rebuild); the caller rebuilds it from producer state.
        """
        self.offset_index.reset()
        self.time_index.reset()
        if reset_txn_index:
            self.txn_index.reset()
        self._bytes_since_index = 0
        self._max_ts = -1
        self._max_ts_offset = self.base_offset
        self._first_batch_ts = None
        # what was read back may still be only in the page cache (the process died, not
        # the machine): the recovery point may pass it only after an fsync
        self._unsynced = True
        fd = BUDGET.acquire(self)
        try:
            return self._recover(fd, on_batch, min_offset)
        finally:
            BUDGET.release(self)

    def _recover(
        self,
        fd: int,
        on_batch: Callable[[BatchHeader, memoryview], None] | None,
        min_offset: int | None,
    ) -> int:
        size = os.fstat(fd).st_size
        self._size = size
        expected = self.base_offset if min_offset is None else min_offset
        pos = 0
        chunk = b""
        chunk_start = 0
        next_offset = self.base_offset
        while pos < size:
            if size - pos < HEADER_SIZE:
                break
            off = pos - chunk_start
            if off + HEADER_SIZE > len(chunk):
                chunk = os.pread(fd, _RECOVER_CHUNK, pos)
                chunk_start, off = pos, 0
            header = parse_header(chunk, off)
            length = header.batch_length
            if header.magic != 2 or length < MIN_BATCH_LENGTH or pos + length + 12 > size:
                break
            total = length + LOG_OVERHEAD
            if off + total > len(chunk):
                chunk = os.pread(fd, max(_RECOVER_CHUNK, total), pos)
                chunk_start, off = pos, 0
                if len(chunk) < total:
                    break
            if compute_crc(chunk, off, total) != header.crc:
                break
            last = header.base_offset + header.last_offset_delta
            if (
                header.last_offset_delta < 0
                or header.base_offset < expected
                or last - self.base_offset > INT32_MAX
            ):
                break
            if on_batch is not None:
                with memoryview(chunk) as view:
                    on_batch(header, view[off : off + total])
            if self._first_batch_ts is None:
                self._first_batch_ts = header.max_timestamp
            self._note_batch(header.base_offset, pos, total, header.max_timestamp, None)
            expected = last + 1
            next_offset = last + 1
            pos += total
        truncated = size - pos
        if truncated:
            os.ftruncate(fd, pos)
            self._size = pos
        if self._first_batch_ts is None:
            self._first_batch_ts = -1
        self._next_offset = next_offset
        return truncated

    def rebuild_indexes(self) -> None:
        """Rebuild the offset and time indexes from batch headers (no CRC checks, no
        truncation): the repair for an index file found unusable while running."""
        self.offset_index.reset()
        self.time_index.reset()
        self._bytes_since_index = 0
        self._max_ts = -1
        self._max_ts_offset = self.base_offset
        for pos, h in self.iter_headers():
            self._note_batch(h.base_offset, pos, h.size, h.max_timestamp, None)
        if self._max_ts >= 0:
            self.time_index.maybe_append(self._max_ts, self._max_ts_offset)
        self.offset_index.write_pending()
        self.time_index.write_pending()

    def rebuild_max_timestamp(self) -> None:
        """Recompute the max timestamp from the batch headers (after a truncation)."""
        self._max_ts = -1
        self._max_ts_offset = self.base_offset
        for _p, header in self.iter_headers():
            if header.max_timestamp > self._max_ts:
                self._max_ts = header.max_timestamp
                self._max_ts_offset = header.base_offset

    def truncate_to(self, offset: int) -> int:
        """Remove the batches that end at or after ``offset``; return bytes removed.

        A batch straddling ``offset`` goes entirely, as in Kafka.
        """
        found = self.find_batch(offset)
        if found is None:
            return 0
        pos, header = found
        removed = self.size - pos
        self.truncate_file(pos)
        self._size = pos
        cut = min(offset, header.base_offset)
        self.offset_index.truncate_to_position(pos)
        self.time_index.truncate_to(cut)
        self.txn_index.truncate_to(cut)
        self._next_offset = None if pos else self.base_offset
        self._bytes_since_index = 0
        self.rebuild_max_timestamp()
        if pos == 0:
            self._first_batch_ts = -1
        return removed

    # ------------------------------------------------------------------ lifecycle
    def append_aborted_txn(self, txn: AbortedTxn) -> None:
        self.txn_index.append(txn)

    def write_pending_indexes(self) -> None:
        self.offset_index.write_pending()
        self.time_index.write_pending()

    def flush(self) -> None:
        """Write buffered index entries, then fsync everything (owner's thread)."""
        self.write_pending_indexes()
        self.sync()

    def truncate_file(self, size: int) -> None:
        """Cut the ``.log`` file at ``size`` bytes (the caller updates what it knows)."""
        fd = BUDGET.acquire(self)
        try:
            os.ftruncate(fd, size)
        finally:
            self._unsynced = True  # after the change, as in append
            BUDGET.release(self)

    @property
    def unsynced(self) -> bool:
        """Whether the ``.log`` was changed since its last fsync by this process."""
        return self._unsynced

    def sync(self) -> None:
        """fsync the log (if this process changed it since the last fsync) and what was
        written of its indexes. Safe on an executor thread while the owner appends: the
        descriptor is pinned for the fsync, and the flag is cleared first so that an
        append racing it is synced by the next call."""
        if self._unsynced:
            self._unsynced = False
            fd = BUDGET.acquire(self)
            try:
                os.fsync(fd)
            except BaseException:
                self._unsynced = True
                raise
            finally:
                BUDGET.release(self)
        self.offset_index.sync()
        self.time_index.sync()
        self.txn_index.flush()

    def close(self, *, discard_pending: bool = False) -> None:
        """Release the descriptors, writing buffered index entries unless told not to."""
        self.offset_index.close(discard=discard_pending)
        self.time_index.close(discard=discard_pending)
        BUDGET.close(self)

    def release_files(self, *, keep_log: bool = False) -> None:
        """Write buffered index entries and close the descriptors (the log's too unless
        ``keep_log``); each reopens on its next use. Only while nothing else uses the
        segment (opening a log, before it is published)."""
        self.offset_index.close()
        self.time_index.close()
        if not keep_log:
            BUDGET.close(self)

    def change_suffix(self, suffix: str) -> None:
        """Rename all files of the segment to carry ``suffix`` (open descriptors survive)."""
        if suffix == self.suffix:
            return
        BUDGET.rename(self, self._path(LOG_EXT), self._path(LOG_EXT, suffix), suffix)
        self.offset_index.rename(self._path(INDEX_EXT))
        self.time_index.rename(self._path(TIME_INDEX_EXT))
        self.txn_index.rename(self._path(TXN_INDEX_EXT))

    def delete(self) -> None:
        """Close and unlink every file of the segment."""
        self.close(discard_pending=True)
        self.offset_index.delete()
        self.time_index.delete()
        self.txn_index.delete()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._path(LOG_EXT))

    def __repr__(self) -> str:
        return f"LogSegment({self.directory!r}, base={self.base_offset}, suffix={self.suffix!r})"
