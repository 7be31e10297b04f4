"""The open-file budget of segment logs: at most ``limit`` ``.log`` descriptors at once.

Why: a partition's active segment used to keep its ``.log`` open for the life of the
process, so a broker needed one descriptor per partition and could not host more
partitions than its open-file limit allows (20,000 in a container whose hard limit is
20,000, with nothing left for connections). Now a segment opens its log on use (append,
read, fsync, recovery) and the budget keeps the most recently used ones open; opening one
past the limit closes the least recently used one that no thread is using, and that one
reopens on its next use. Idle partitions thus hold no descriptor.

Safety: a descriptor is only used while its segment is pinned (:meth:`FileBudget.acquire`
to :meth:`FileBudget.release`), and pins change only under the budget's lock, which is
also where victims are chosen. A pinned descriptor is never closed, so its number cannot
be reused by another file under a ``pread`` or ``write`` in flight on another thread. A
segment its owner closes while pinned (a read racing a close) is closed by the last
release. Pins are held for one call (an append, a read, an fsync), never across an await.

Cost: one uncontended lock round trip and an ``OrderedDict.move_to_end`` per pinned call
(per batch written or read, not per record); a reopen (``open(2)``) only after an
eviction, i.e. for a partition idle while ``limit`` others were used.
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .segment import LogSegment

__all__ = ["BUDGET", "FileBudget", "derived_limit"]

# Never fewer than this many open logs: the writer threads, the cleaner, fsyncs and a
# fetch can pin a few at once, and a smaller budget would only churn.
MIN_LIMIT = 16


def derived_limit(soft_limit: int | None = None) -> int:
    """The budget implied by the process's RLIMIT_NOFILE: three quarters of it, leaving a
    quarter (at least half of a small limit, at most what a small one allows) for client
    and replication sockets, index writes, checkpoints and the interpreter itself."""
    if soft_limit is None:
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_limit == resource.RLIM_INFINITY or soft_limit <= 0:
        return 1 << 20
    headroom = max(soft_limit // 4, min(1024, soft_limit // 2))
    return max(MIN_LIMIT, soft_limit - headroom)


class FileBudget:
    """Least-recently-used set of open segment logs, bounded by ``limit``."""

    def __init__(self, limit: int) -> None:
        self._lock = threading.Lock()
        # segments holding an open log descriptor, least recently used first
        self._open: OrderedDict[LogSegment, None] = OrderedDict()
        self._limit = max(MIN_LIMIT, limit)
        self.evictions = 0  # descriptors closed to stay within the limit, since start

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def open_count(self) -> int:
        return len(self._open)

    def set_limit(self, limit: int) -> None:
        """Change the limit: unpinned logs beyond it are closed now, pinned ones by the
        opens that follow."""
        with self._lock:
            self._limit = max(MIN_LIMIT, limit)
            victims = self._pick_victims()
        _close_all(victims)

    def acquire(self, seg: LogSegment) -> int:
        """Pin ``seg`` and return its open log descriptor, opening it if needed (which
        may close another, unused one). Pair with :meth:`release`."""
        victims: list[int] = []
        with self._lock:
            fd = seg._fd
            if fd >= 0:  # then it is in _open: only acquire sets _fd, only _detach clears it
                seg._pins += 1
                self._open.move_to_end(seg)
                return fd
            # Opened under the lock: a rename of the segment's files (change_suffix, also
            # under this lock) cannot fall between choosing the path and opening it.
            fd = seg._open_log()
            seg._fd = fd
            seg._pins += 1
            self._open[seg] = None
            if len(self._open) > self._limit:
                victims = self._pick_victims()
        _close_all(victims)
        return fd

    def release(self, seg: LogSegment) -> None:
        """Unpin ``seg``; if its owner closed it meanwhile, close it now."""
        with self._lock:
            seg._pins -= 1
            if seg._pins or not seg._retired:
                return
            fd = self._detach(seg)
        _close_all([fd])

    def close(self, seg: LogSegment) -> None:
        """The owner is done with ``seg``'s log: close it now, or at its last release."""
        with self._lock:
            if seg._pins:
                seg._retired = True
                return
            fd = self._detach(seg)
        _close_all([fd])

    def rename(self, seg: LogSegment, old: str, new: str, suffix: str) -> None:
        """Rename ``seg``'s log file and give it ``suffix`` where no concurrent reopen can
        pick the old path."""
        with self._lock:
            if os.path.exists(old):
                os.replace(old, new)
            seg.suffix = suffix

    def _detach(self, seg: LogSegment) -> int:
        fd = seg._fd
        seg._fd = -1
        seg._retired = False
        seg._writeback_from = None
        self._open.pop(seg, None)
        return fd

    def _pick_victims(self) -> list[int]:
        """Under the lock: detach unpinned logs, oldest first, until within the limit."""
        excess = len(self._open) - self._limit
        if excess <= 0:
            return []
        victims = []
        skipped = 0
        opened = self._open
        while excess > 0 and skipped < len(opened):
            seg = next(iter(opened))
            if seg._pins:  # in use now, so recently used: it goes to the back
                opened.move_to_end(seg)
                skipped += 1
                continue
            victims.append(self._detach(seg))
            excess -= 1
        self.evictions += len(victims)
        return victims


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


# The process's budget: every LogSegment opens its log through it. The broker sets its
# limit at start from the configuration (``storage.max_open_segment_files``) or the
# open-file limit; until then it follows the limit the process started with.
BUDGET = FileBudget(derived_limit())
