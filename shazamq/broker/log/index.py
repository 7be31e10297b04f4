"""The per-segment indexes: offset -> file position, timestamp -> offset, aborted transactions.

They are caches over the ``.log`` file, laid out on disk like Kafka's so operators and
tools recognise them, and rebuildable from the log at any time. The offset and time
indexes are sparse (an entry every ``index.interval.bytes`` of log) and kept in memory as
two parallel ``array`` columns searched with ``bisect``: a lookup returns the largest
entry whose key is at or below the target. They are loaded lazily, on first use, so
opening a thousand partitions does not read a thousand index files.

New entries are buffered and written in batches (at least every 4 KiB of entries, and on
``flush``/``close``): an index entry costs no extra system call on the append path. No
descriptor is held between those writes (each opens, appends and closes the file: three
system calls per 4 KiB of entries, about 2 MiB of log at the default interval), so
indexes never count against the open-file budget (see :mod:`.open_files`). The log only
advances its recovery point after a flush, so an unflushed index tail is never trusted
after a crash.

Threading: an index is mutated only by its segment's owner under the partition lock;
lookups on sealed segments may run on any thread (arrays are replaced, never resized, by
a concurrent lazy load).

Entry formats (big-endian, like Kafka):

* ``.index``      relative offset i32, position i32 (8 bytes)
* ``.timeindex``  timestamp i64, relative offset i32 (12 bytes)
* ``.txnindex``   version i16 (0), producer id i64, first offset i64, last offset i64,
  last stable offset i64 (34 bytes)
"""

from __future__ import annotations

import contextlib
import os
import struct
from array import array
from bisect import bisect_right
from collections.abc import Callable
from typing import NamedTuple

__all__ = [
    "AbortedTxn",
    "IndexCorruptError",
    "OffsetIndex",
    "TimeIndex",
    "TransactionIndex",
]

_WRITE_THRESHOLD = 4096
_OPEN_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)


class IndexCorruptError(Exception):
    """An index file that cannot describe its segment; the segment rebuilds it."""


class _SparseIndex:
    """Two sorted columns (key, value) mirrored to an append-only file."""

    ENTRY: struct.Struct
    KEY_TYPE: str
    VALUE_TYPE: str

    __slots__ = (
        "_keys",
        "_loaded",
        "_pending",
        "_unsynced",
        "_values",
        "base_offset",
        "max_entries",
        "on_corrupt",
        "path",
    )

    def __init__(self, path: str, base_offset: int, max_entries: int, *, new: bool) -> None:
        self.path = path
        self.base_offset = base_offset
        self.max_entries = max(1, max_entries)
        self._keys = array(self.KEY_TYPE)
        self._values = array(self.VALUE_TYPE)
        self._pending = bytearray()
        self._loaded = new
        self._unsynced = False
        # Called (instead of raising) when a lazy load finds the file unusable; the
        # segment rebuilds its indexes from the log.
        self.on_corrupt: Callable[[], None] | None = None
        if new:  # created empty now; a descriptor is opened when entries are written
            os.close(os.open(path, _OPEN_APPEND | os.O_TRUNC, 0o644))
            self._unsynced = True

    # ------------------------------------------------------------------ loading
    def _load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        size = self.ENTRY.size
        if len(data) % size:
            raise IndexCorruptError(f"{self.path}: size {len(data)} is not a multiple of {size}")
        n = len(data) // size
        flat = struct.unpack(">" + self.ENTRY.format.lstrip(">") * n, data) if n else ()
        keys = array(self.KEY_TYPE, flat[0::2])
        values = array(self.VALUE_TYPE, flat[1::2])
        if n and (keys[0] < self._min_key() or keys[-1] < keys[0]):
            raise IndexCorruptError(f"{self.path}: entries out of order")
        self._keys, self._values = keys, values
        self._loaded = True

    def _min_key(self) -> int:
        return 0

    @property
    def loaded(self) -> bool:
        return self._loaded

    def ensure_loaded(self) -> None:
        if not self._loaded:
            self._lazy_load()

    def _lazy_load(self) -> None:
        try:
            self._load()
        except IndexCorruptError:
            if self.on_corrupt is None:
                raise
            self.on_corrupt()

    def check(self) -> None:
        """Load now, raising :class:`IndexCorruptError` if the file is unusable."""
        if not self._loaded:
            self._load()

    # ------------------------------------------------------------------- access
    def __len__(self) -> int:
        self.ensure_loaded()
        return len(self._keys)

    @property
    def is_full(self) -> bool:
        return len(self) >= self.max_entries

    def _floor(self, key: int) -> int:
        """Index of the largest entry with key <= ``key``, or -1."""
        if not self._loaded:
            self._lazy_load()
        return bisect_right(self._keys, key) - 1

    # ------------------------------------------------------------------ writing
    def _append_raw(self, key: int, value: int) -> None:
        self._keys.append(key)
        self._values.append(value)
        self._pending += self.ENTRY.pack(key, value)
        if len(self._pending) >= _WRITE_THRESHOLD:
            self.write_pending()

    def write_pending(self) -> None:
        """Write buffered entries to the file (no fsync)."""
        if not self._pending:
            return
        data = bytes(self._pending)
        self._pending.clear()
        fd = os.open(self.path, _OPEN_APPEND, 0o644)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        self._unsynced = True

    def flush(self) -> None:
        """Write buffered entries and fsync the file (if anything changed)."""
        self.write_pending()
        self.sync()

    def sync(self) -> None:
        """fsync what was written so far. Safe on another thread than the writer: it
        uses its own descriptor, and clears the flag first so a racing write is synced
        by the next call."""
        if not self._unsynced:
            return
        self._unsynced = False
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:  # renamed or deleted meanwhile
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self, *, discard: bool = False) -> None:
        """Write buffered entries (unless ``discard``)."""
        if discard:
            self._pending.clear()
        elif self._loaded:
            self.write_pending()

    def _truncate_entries(self, n: int) -> None:
        """Keep the first ``n`` entries, in memory and on disk."""
        self.ensure_loaded()
        if n >= len(self._keys):
            return
        self.write_pending()
        del self._keys[n:]
        del self._values[n:]
        if os.path.exists(self.path):
            os.truncate(self.path, n * self.ENTRY.size)
            self._unsynced = True

    def reset(self) -> None:
        """Drop every entry (before a rebuild); the file is left empty."""
        self._pending.clear()
        self._keys = array(self.KEY_TYPE)
        self._values = array(self.VALUE_TYPE)
        self._loaded = True
        os.close(os.open(self.path, _OPEN_APPEND | os.O_TRUNC, 0o644))
        self._unsynced = True

    def rename(self, path: str) -> None:
        """Move the file (if written) to ``path``; an open descriptor stays valid."""
        if os.path.exists(self.path):
            os.replace(self.path, path)
        self.path = path

    def delete(self) -> None:
        self.close(discard=True)
        _remove_if_exists(self.path)


class OffsetIndex(_SparseIndex):
    """Sparse map from offset to the file position of the batch starting there."""

    ENTRY = struct.Struct(">ii")
    KEY_TYPE = "i"
    VALUE_TYPE = "i"
    __slots__ = ()

    def append(self, offset: int, position: int) -> None:
        """Add an entry; ``offset`` must exceed the last entry's offset."""
        rel = offset - self.base_offset
        self.ensure_loaded()
        if self._keys and rel <= self._keys[-1]:
            raise ValueError(f"index entry {offset} is not after {self.last_offset}")
        self._append_raw(rel, position)

    def lookup(self, offset: int) -> tuple[int, int]:
        """``(offset, position)`` of the largest entry <= ``offset``; else the segment start."""
        i = self._floor(offset - self.base_offset)
        if i < 0:
            return self.base_offset, 0
        return self.base_offset + self._keys[i], self._values[i]

    def floor_by_position(self, position: int, max_offset: int) -> tuple[int, int] | None:
        """The last entry with position <= ``position`` and offset <= ``max_offset``."""
        self.ensure_loaded()
        i = min(
            bisect_right(self._values, position),
            bisect_right(self._keys, max_offset - self.base_offset),
        )
        if i <= 0:
            return None
        return self.base_offset + self._keys[i - 1], self._values[i - 1]

    @property
    def last_entry(self) -> tuple[int, int]:
        self.ensure_loaded()
        if not self._keys:
            return self.base_offset, 0
        return self.base_offset + self._keys[-1], self._values[-1]

    @property
    def last_offset(self) -> int:
        return self.last_entry[0]

    def truncate_to(self, offset: int) -> None:
        """Drop the entries for offsets >= ``offset``."""
        self.ensure_loaded()
        self._truncate_entries(bisect_right(self._keys, offset - self.base_offset - 1))

    def truncate_to_position(self, position: int) -> None:
        """Drop the entries pointing at or beyond ``position``."""
        self.ensure_loaded()
        self._truncate_entries(bisect_right(self._values, position - 1))


class TimeIndex(_SparseIndex):
    """Sparse map from a timestamp to the first offset where it was reached (never decreasing)."""

    ENTRY = struct.Struct(">qi")
    KEY_TYPE = "q"
    VALUE_TYPE = "i"
    __slots__ = ()

    def _min_key(self) -> int:
        return -(1 << 63)

    def maybe_append(self, timestamp: int, offset: int) -> None:
        """Add ``(timestamp, offset)`` if ``timestamp`` is larger than the last entry's."""
        self.ensure_loaded()
        if self._keys and timestamp <= self._keys[-1]:
            return
        rel = offset - self.base_offset
        if self._values and rel < self._values[-1]:
            return
        self._append_raw(timestamp, rel)

    def lookup(self, timestamp: int) -> tuple[int, int]:
        """``(timestamp, offset)`` of the largest entry with timestamp <= ``timestamp``.

        Without such an entry: ``(-1, segment base offset)``.
        """
        i = self._floor(timestamp)
        if i < 0:
            return -1, self.base_offset
        return self._keys[i], self.base_offset + self._values[i]

    @property
    def last_entry(self) -> tuple[int, int]:
        """``(max timestamp, its offset)``; ``(-1, base offset)`` when empty."""
        self.ensure_loaded()
        if not self._keys:
            return -1, self.base_offset
        return self._keys[-1], self.base_offset + self._values[-1]

    def truncate_to(self, offset: int) -> None:
        """Drop the entries for offsets >= ``offset``."""
        self.ensure_loaded()
        rel = offset - self.base_offset
        n = len(self._values)
        while n and self._values[n - 1] >= rel:
            n -= 1
        self._truncate_entries(n)


class AbortedTxn(NamedTuple):
    """An aborted transaction, recorded in the segment holding its ABORT marker."""

    producer_id: int
    first_offset: int
    last_offset: int
    last_stable_offset: int


_TXN_ENTRY = struct.Struct(">hqqqq")


class TransactionIndex:
    """The ``.txnindex`` file: aborted transactions whose marker lies in this segment.

    Appends are rare (one per aborted transaction) and written through at once. The
    file only exists once a transaction aborts here, as in Kafka.
    """

    __slots__ = ("_entries", "path")

    def __init__(self, path: str, *, new: bool) -> None:
        self.path = path
        self._entries: list[AbortedTxn] | None = [] if new else None
        if new:
            _remove_if_exists(path)

    def _load(self) -> list[AbortedTxn]:
        entries = self._entries
        if entries is None:
            try:
                with open(self.path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                data = b""
            usable = len(data) - len(data) % _TXN_ENTRY.size
            entries = [
                AbortedTxn(pid, first, last, lso)
                for _v, pid, first, last, lso in _TXN_ENTRY.iter_unpack(data[:usable])
            ]
            self._entries = entries
        return entries

    @property
    def entries(self) -> list[AbortedTxn]:
        return list(self._load())

    def append(self, txn: AbortedTxn) -> None:
        entries = self._load()
        if entries and txn.last_offset <= entries[-1].last_offset:
            raise ValueError(f"aborted transaction ending at {txn.last_offset} is out of order")
        entries.append(txn)
        fd = os.open(self.path, _OPEN_APPEND, 0o644)
        try:
            _write_all(fd, _TXN_ENTRY.pack(0, *txn))
        finally:
            os.close(fd)

    def collect(self, fetch_offset: int, upper_offset: int) -> tuple[list[AbortedTxn], bool]:
        """Aborted transactions overlapping ``[fetch_offset, upper_offset)``.

        The flag is True when an entry proved that no later segment can add more.
        """
        found = []
        for txn in self._load():
            if txn.last_offset >= fetch_offset and txn.first_offset < upper_offset:
                found.append(txn)
            if txn.last_stable_offset >= upper_offset:
                return found, True
        return found, False

    def truncate_to(self, offset: int) -> None:
        """Drop the transactions whose marker is at or beyond ``offset``."""
        entries = self._load()
        keep = [t for t in entries if t.last_offset < offset]
        if len(keep) == len(entries):
            return
        self._entries = keep
        if os.path.exists(self.path):
            os.truncate(self.path, len(keep) * _TXN_ENTRY.size)

    def reset(self) -> None:
        self._entries = []
        _remove_if_exists(self.path)

    def flush(self) -> None:
        if self._entries and os.path.exists(self.path):
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def rename(self, path: str) -> None:
        if os.path.exists(self.path):
            os.replace(self.path, path)
        self.path = path

    def delete(self) -> None:
        _remove_if_exists(self.path)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    with memoryview(data) as view:
        written = os.write(fd, view)
        while written < len(view):
            written += os.write(fd, view[written:])


def _remove_if_exists(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
