"""Appends off the event loop: each partition's appends run in order on a writer thread.

Why: ``write(2)`` into the page cache is usually a fraction of a millisecond, but it
blocks for tens to hundreds of milliseconds while ext4 commits its journal for another
partition's fsync (a flush storm), and a segment roll creates three files, trims the old
segment's indexes and writes a producer-state snapshot. On the event loop every
connection waited for that; on a writer thread only the producers of that partition do.

How the guarantees hold:

* Order: a partition has at most one drain job in the pool at a time; it takes the
  appends queued for the partition in arrival order, one after the other. An append
  queued while a job runs waits for the next job, started when the loop collects the
  results of this one, so no append overtakes another.
* Offsets once: the job calls :meth:`PartitionLog.append_prepared`, which assigns
  offsets, checks producer state and writes under the partition's lock, exactly as an
  append on the loop does.
* Visibility: the log end (and, on a single broker, the high watermark) moves inside
  that call only after the bytes are written, and fetchers are woken on the loop after
  the job's results arrive; readers never see a half-written batch.
* Leadership (a cluster leader's client appends, and its coordinators' appends to their
  internal topics): the append carries a ``still_leads``
  check, run on the writer thread right before the write, in the partition's order. An
  append whose turn comes after the broker stopped leading the partition, or after its
  leader epoch moved, is refused (:class:`NotLeaderError`) and never written. One already
  written when the role changes is as if it had been written on the loop before the
  change: the follower's reconciliation waits for ``settled`` before it compares log
  ends, and the Produce handler answers NOT_LEADER_OR_FOLLOWER for an append whose role
  changed before the answer, so no acknowledgement depends on a leadership it lost (a
  coordinator's write is acknowledged only once replicated, which fails on that change).

Who appends here: client produce; a follower's fetched batches and a mirror's copied ones
(``submit``); transaction markers and the coordinators' internal topics
(``append_through``, ``InternalTopic.append``). One queue per partition for all of them,
so their appends keep the order they were issued in. ``run_in_turn`` puts another
blocking change of the log in that order (a follower's or a mirror's restart at a new
log start, a log-dir move's switch to its copy). ``settled`` lets a reader that
decides from the log end or the producer state (a follower's reconciliation, a mirror
promotion) wait for what is queued.

Cost: one hop to the pool and one back per drain, not per batch: a partition busy enough
to have appends waiting gets all of them written by one job (measured in
docs/performance.md). The checks that need no lock (CRCs, records, timestamps) stay on
the loop, in :meth:`PartitionLog.prepare_append`, so the thread mostly waits on the disk
with the GIL released.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, NamedTuple, TypeVar

from .errors import NotLeaderError
from .partition_log import AppendInfo, AppendOrigin, PartitionLog, PreparedAppend

__all__ = ["LogWriter", "append_through", "in_turn", "inline_appends", "submit"]

T = TypeVar("T")

# Threads writing partitions in parallel. Writes mostly wait on the kernel, so a few more
# than the cores keep one stalled partition from holding up the others.
WRITER_THREADS = 4
# A smaller append with nothing queued for its partition and nothing but the write to
# do (no roll, no index to load; PartitionLog.append_is_light) is written on the loop: the
# hop costs the loop more than such a write does (a 100-byte batch, one at a time: 44 us
# of loop CPU inline, 85 us through the pool, and 98 against 310 us until the producer
# has its answer). A larger one, or any append while one is queued, goes to the pool.
INLINE_APPEND_BYTES = 16 * 1024
# Appends one job takes before it hands its results back (bounds the delay of the first).
MAX_PER_DRAIN = 64

# Set while a coroutine is driven to completion synchronously (the coordinators' run_now
# on a single broker): such a caller cannot wait for a thread, so its appends are written
# on the calling thread, in turn with any queued for the partition.
_INLINE: ContextVar[bool] = ContextVar("shazamq_inline_appends", default=False)


@contextlib.contextmanager
def inline_appends() -> Iterator[None]:
    """Appends made through a writer inside this block are written inline (see _INLINE).
    A task created inside inherits the setting with its context: only for callers that
    finish in one step."""
    token = _INLINE.set(True)
    try:
        yield
    finally:
        _INLINE.reset(token)


class _Queued(NamedTuple):
    prepared: PreparedAppend | None  # None: ``job`` instead of an append
    leader_epoch: int
    future: asyncio.Future[Any]
    # checked on the writer thread before the write: False refuses it (NotLeaderError)
    still_leads: Callable[[], bool] | None = None
    # another change of the log that must keep its place among the appends (run_in_turn)
    job: Callable[[], Any] | None = None


class LogWriter:
    """Runs :meth:`PartitionLog.append_prepared` on a small pool, in order per partition.

    Used from the event loop only (``append``, ``drain``); the pool threads touch the
    queues through ``deque.popleft``, which is atomic.
    """

    def __init__(self, threads: int = WRITER_THREADS) -> None:
        self._threads = threads
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        # log -> appends waiting; present while a job for the log is in the pool
        self._queues: dict[PartitionLog, deque[_Queued]] = {}
        self._idle: asyncio.Event | None = None
        # log -> resolved once nothing is queued for it any more (see settled)
        self._settled: dict[PartitionLog, asyncio.Future[None]] = {}

    def append(
        self,
        log: PartitionLog,
        prepared: PreparedAppend,
        leader_epoch: int,
        *,
        still_leads: Callable[[], bool] | None = None,
    ) -> asyncio.Future[AppendInfo]:
        """Queue an append; the future gets its :class:`AppendInfo` or its error.
        ``inline_appends`` writes it on the loop now unless appends are queued for the
        log. ``still_leads`` (a cluster leader's client append) is asked on the writer
        thread right before the write; False refuses it with :class:`NotLeaderError`.
        It must be cheap and safe to call from any thread (attribute reads)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[AppendInfo] = loop.create_future()
        queue = self._queues.get(log)
        if queue is None and (
            (len(prepared.data) < INLINE_APPEND_BYTES and log.append_is_light(prepared))
            or _INLINE.get()
        ):
            # on the loop, right after the caller's own leadership check: nothing can
            # have changed the role in between, so still_leads need not be asked
            try:
                fut.set_result(log.append_prepared(prepared, leader_epoch=leader_epoch))
            except Exception as exc:
                fut.set_exception(exc)
            return fut
        item = _Queued(prepared, leader_epoch, fut, still_leads)
        self._enqueue(loop, log, item)
        return fut

    def run_in_turn(self, log: PartitionLog, job: Callable[[], T]) -> asyncio.Future[T]:
        """Run ``job`` (a blocking change of ``log``: a truncation, a switch to another
        folder) on a writer thread, after the appends queued for ``log`` so far and
        before any queued later; the future gets its result or its error."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._enqueue(loop, log, _Queued(None, -1, fut, job=job))
        return fut

    def _enqueue(self, loop: asyncio.AbstractEventLoop, log: PartitionLog, item: _Queued) -> None:
        queue = self._queues.get(log)
        if queue is not None:  # a job is in the pool: it or the next one takes this
            queue.append(item)
            return
        queue = self._queues[log] = deque([item])
        if self._idle is not None:
            self._idle.clear()
        self._submit(loop, log, queue)

    def _submit(
        self, loop: asyncio.AbstractEventLoop, log: PartitionLog, queue: deque[_Queued]
    ) -> None:
        pool = self._pool
        if pool is None:
            pool = self._pool = concurrent.futures.ThreadPoolExecutor(
                self._threads, thread_name_prefix="log-writer"
            )
        pool.submit(self._drain, loop, log, queue)

    def _drain(
        self, loop: asyncio.AbstractEventLoop, log: PartitionLog, queue: deque[_Queued]
    ) -> None:
        """On a pool thread: the queued appends, in order; results back in one call."""
        done: list[tuple[_Queued, Any, BaseException | None]] = []
        while len(done) < MAX_PER_DRAIN:
            try:
                item = queue.popleft()
            except IndexError:
                break
            try:
                if item.prepared is None:
                    assert item.job is not None
                    done.append((item, item.job(), None))
                    continue
                if item.still_leads is not None and not item.still_leads():
                    raise NotLeaderError(
                        f"{log.topic}-{log.partition}: no longer the leader at epoch "
                        f"{item.leader_epoch}; the append was not written"
                    )
                info = log.append_prepared(item.prepared, leader_epoch=item.leader_epoch)
            except BaseException as exc:  # every error goes back to its producer
                done.append((item, None, exc))
            else:
                done.append((item, info, None))
        loop.call_soon_threadsafe(self._finished, loop, log, queue, done)

    def _finished(
        self,
        loop: asyncio.AbstractEventLoop,
        log: PartitionLog,
        queue: deque[_Queued],
        done: list[tuple[_Queued, Any, BaseException | None]],
    ) -> None:
        for item, info, exc in done:
            fut = item.future
            if fut.done():
                continue
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(info)
        if queue:  # queued while the job ran: the next job takes them
            self._submit(loop, log, queue)
            return
        del self._queues[log]
        waiter = self._settled.pop(log, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if not self._queues and self._idle is not None:
            self._idle.set()

    async def settled(self, log: PartitionLog) -> None:
        """Return once every append queued for ``log`` so far has been written (or
        refused): for a reader that decides from the log end or the producer state, e.g.
        a promotion aborting the transactions a copied append may have opened."""
        while log in self._queues:
            waiter = self._settled.get(log)
            if waiter is None:
                waiter = self._settled[log] = asyncio.get_running_loop().create_future()
            await asyncio.shield(waiter)

    @property
    def busy(self) -> bool:
        return bool(self._queues)

    async def drain(self) -> None:
        """Wait until every queued append has been written (or refused)."""
        if not self._queues:
            return
        if self._idle is None:
            self._idle = asyncio.Event()
        self._idle.clear()
        await self._idle.wait()

    async def stop(self) -> None:
        """Finish the queued appends and release the threads."""
        await self.drain()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)


def submit(
    writer: LogWriter | None,
    log: PartitionLog,
    data: bytes | bytearray | memoryview,
    *,
    origin: AppendOrigin,
    now_ms: int,
    leader_epoch: int = -1,
    still_leads: Callable[[], bool] | None = None,
) -> asyncio.Future[AppendInfo]:
    """Check ``data`` on the loop and queue it on ``writer``, in turn with the partition's
    other appends; without a writer (a component built alone), written at once. Every
    error, the checks' included, comes through the future. ``still_leads`` is the
    writer thread's leadership fence (:meth:`LogWriter.append`)."""
    try:
        prepared = log.prepare_append(data, now_ms=now_ms, origin=origin)
        if writer is not None:
            return writer.append(log, prepared, leader_epoch, still_leads=still_leads)
        info = log.append_prepared(prepared, leader_epoch=leader_epoch)
    except Exception as exc:
        failed: asyncio.Future[AppendInfo] = asyncio.get_running_loop().create_future()
        failed.set_exception(exc)
        return failed
    done: asyncio.Future[AppendInfo] = asyncio.get_running_loop().create_future()
    done.set_result(info)
    return done


async def append_through(
    writer: LogWriter | None,
    log: PartitionLog,
    data: bytes | bytearray | memoryview,
    *,
    origin: AppendOrigin,
    now_ms: int,
    leader_epoch: int = -1,
    still_leads: Callable[[], bool] | None = None,
) -> AppendInfo:
    """:func:`submit`, awaited. Does not suspend when the write happened inline, so a
    coroutine driven synchronously (``inline_appends``) still completes in one step."""
    if writer is None:  # nothing to queue behind: no future, so no running loop needed
        return log.append(data, leader_epoch=leader_epoch, now_ms=now_ms, origin=origin)
    return await submit(
        writer,
        log,
        data,
        origin=origin,
        now_ms=now_ms,
        leader_epoch=leader_epoch,
        still_leads=still_leads,
    )


def in_turn(writer: LogWriter | None, log: PartitionLog, job: Callable[[], T]) -> asyncio.Future[T]:
    """:meth:`LogWriter.run_in_turn`; without a writer (a component built alone), on the
    default executor."""
    if writer is not None:
        return writer.run_in_turn(log, job)
    return asyncio.get_running_loop().run_in_executor(None, job)
