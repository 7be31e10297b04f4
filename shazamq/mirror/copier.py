"""A fetch session: the partitions one source broker leads, copied verbatim at their offsets.

Like a follower's fetcher, against a foreign cluster and as a consumer would fetch
(replica id -1, read_uncommitted, so aborted batches and transaction markers come too):
each answered batch is appended with its offsets, bytes, producer ids and sequences
unchanged (``AppendOrigin.REPLICATION``), so gaps left by compaction or aborted
transactions stay gaps and local offsets equal the source's.

The position of a partition is its local log end, nothing else: the data is the
checkpoint, so a restart (or ``kill -9``; recovery cuts a torn tail) resumes without
duplicates or holes. The check that the topic is still a mirror and the queueing of the
append on the broker's write pool (log/writer.py, where a roll or a large chunk is written
off the event loop) happen with no ``await`` between them, so a promotion cannot
interleave with a copied append; the promotion waits for the partition's queued appends
before it reads the transactions left open. Every chunk of a fetch is in before the next
fetch asks from the log end.

A position outside the source's log (OFFSET_OUT_OF_RANGE) is resolved with ListOffsets:
below the source's log start, the copy continues from there and the jump is counted and
logged (the offsets in between were deleted at the source before they were copied);
above the source's log end (an unclean election upstream lost records), the local tail is
cut to the source's end, counted and logged, so later offsets keep matching.

A source log can also differ from the copy at offsets both have (an unclean election, or a
lost unflushed tail followed by new writes): same offsets, other batches. As a Kafka
follower does, the copy compares leader epochs (the copied batches carry the source's, so
the copy's epoch cache is the source's as it was copied): every Fetch carries the epoch of
the copy's last batch (``last_fetched_epoch``), and a source that sees a divergence answers
``diverging_epoch`` instead of records; and because not every source answers that (older
Kafka, other implementations), the copy also asks OffsetForLeaderEpoch whenever it starts
or the source's leader epoch changes, the only times a divergence can appear. Either way
the copy is cut back to where both agree (``divergence.truncation_point``), counted and
logged, and copying goes on from there; the log's truncation rebuilds the producer state
and transaction index, so read_committed and the LSO stay right.

Producer ids of copied batches are kept out of local allocation: a batch whose producer id
is at or above the broker's allocation floor is appended only after the floor has been
raised above it durably (``reserve_producer_ids``), so a topic promoted to writable never
hands a local producer an id the copied data already uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from shazamq.broker.cluster.client import BrokerConnectionError, ClientPool
from shazamq.broker.log import AppendInfo, AppendOrigin
from shazamq.broker.log.errors import LogError
from shazamq.broker.log.writer import LogWriter, submit
from shazamq.protocol.errors import ErrorCode, KafkaError, UnsupportedVersionError
from shazamq.protocol.messages.fetch_request import FetchPartition, FetchRequest, FetchTopic
from shazamq.protocol.messages.offset_for_leader_epoch_request import (
    OffsetForLeaderEpochRequest,
    OffsetForLeaderPartition,
    OffsetForLeaderTopic,
)
from shazamq.protocol.records import RecordError, iter_batches

from .divergence import truncation_point
from .source import EARLIEST, LATEST, SourceCluster, SourceError
from .stats import PartitionStats

if TYPE_CHECKING:
    from shazamq.broker.log import PartitionLog
    from shazamq.broker.partitions import Partition

__all__ = ["Copy", "FetchSession"]

log = logging.getLogger(__name__)

FETCH = 1
FETCH_VERSION = 12  # topic names, leader epochs (current, last fetched), diverging epoch
OFFSET_FOR_LEADER_EPOCH = 23
OFFSET_FOR_LEADER_EPOCH_VERSION = 4  # 3 is the first a consumer (replica id -1) may send
PAUSE_S = 1.0
_STALE = frozenset(
    {
        ErrorCode.NOT_LEADER_OR_FOLLOWER,
        ErrorCode.FENCED_LEADER_EPOCH,
        ErrorCode.UNKNOWN_LEADER_EPOCH,
        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
        ErrorCode.UNKNOWN_TOPIC_ID,
        ErrorCode.LEADER_NOT_AVAILABLE,
    }
)

# OffsetForLeaderEpoch answers that asking again will not change
_NO_EPOCH_CHECK = frozenset(
    {
        ErrorCode.TOPIC_AUTHORIZATION_FAILED,
        ErrorCode.CLUSTER_AUTHORIZATION_FAILED,
        ErrorCode.UNSUPPORTED_VERSION,
    }
)


@dataclass(slots=True)
class Copy:
    """One mirrored partition."""

    source_topic: str
    index: int
    partition: Partition  # the local partition
    mark: str  # the topic's mirror marker; a different one means the topic changed
    stats: PartitionStats
    leader_id: int = -1
    leader_epoch: int = -1
    # after the source's log start passed our end: fetch from here (> local end) until
    # the first batch lands
    fetch_from: int | None = None
    # a new copy starting at the source's log start: where the local log should start
    # once the batch holding that offset landed (it may start mid-batch)
    start_at: int | None = None
    out_of_range: bool = False
    # the source's diverging_epoch answer (epoch, end offset, whether the source's log
    # goes on past that end), until acted on
    diverging: tuple[int, int, bool] | None = None
    # the source leader epoch under which the copy's log was last compared with the
    # source's by OffsetForLeaderEpoch (None: not yet)
    checked_epoch: int | None = None
    # a copied producer id at or above the allocation floor: raise the floor first
    producer_id_above: int = -1
    paused_until: float = 0.0
    problem: str = ""  # the last problem logged (each new one is logged once)

    @property
    def key(self) -> tuple[str, int]:
        return (self.partition.topic, self.index)


def _log_failed_restart(restart: asyncio.Future[None]) -> None:
    exc = restart.exception() if not restart.cancelled() else None
    if exc is not None:
        log.error("mirror: cannot restart a copy's log: %s", exc)


class _Write(NamedTuple):
    """A copied chunk queued on the write pool (None: the answer had nothing new)."""

    future: asyncio.Future[AppendInfo] | None
    size: int
    batches: int


class FetchSession:
    """Copies every partition of a set that one source broker leads (a task)."""

    def __init__(
        self,
        *,
        source: SourceCluster,
        leader_id: int,
        pool: ClientPool,
        max_bytes: int,
        max_wait_ms: int,
        backoff_ms: int,
        backoff_max_ms: int,
        still_mirror: Callable[[Copy], bool],
        on_stale: Callable[[], None],
        on_appended: Callable[[Partition], None] | None = None,
        producer_id_floor: Callable[[], int] | None = None,
        reserve_producer_ids: Callable[[int], Awaitable[None]] | None = None,
        writer: LogWriter | None = None,
    ) -> None:
        self.source = source
        self._writer = writer  # the broker's write pool; None: written on the loop
        self.leader_id = leader_id
        self._pool = pool
        self._max_bytes = max_bytes
        self._max_wait_ms = max_wait_ms
        self._backoff = backoff_ms / 1000
        self._backoff_max = backoff_max_ms / 1000
        self._still_mirror = still_mirror
        self._on_stale = on_stale
        self._on_appended = on_appended
        self._producer_id_floor = producer_id_floor
        self._reserve_producer_ids = reserve_producer_ids
        self._epoch_checks = True  # False once the source turned out not to have them
        self.copies: dict[tuple[str, int], Copy] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failures = 0

    def __len__(self) -> int:
        return len(self.copies)

    def add(self, c: Copy) -> None:
        self.copies[c.key] = c
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(
                self._run(), name=f"mirror-{self.source.name}-{self.leader_id}"
            )

    def remove(self, key: tuple[str, int]) -> Copy | None:
        return self.copies.pop(key, None)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- the loop -----------------------------------------------------------------------

    async def _run(self) -> None:
        while self.copies:
            now = time.monotonic()
            active = [c for c in self.copies.values() if c.paused_until <= now]
            if not active:
                self._wake.clear()
                wait = min(c.paused_until for c in self.copies.values()) - now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(wait, 0.01))
                continue
            try:
                for c in [c for c in active if c.producer_id_above >= 0]:
                    await self._raise_producer_id_floor(c)
                for c in [c for c in active if c.out_of_range]:
                    await self._resolve_out_of_range(c)
                for c in [c for c in active if c.diverging is not None]:
                    await self._resolve_divergence(c)
                check = [c for c in active if self._needs_check(c)]
                if check:
                    await self._check_epochs(check)
                ready = [c for c in active if self._ready(c)]
                if ready:
                    await self._fetch(ready)
                self._failures = 0
            except (BrokerConnectionError, SourceError) as exc:
                self._failures += 1
                delay = min(self._backoff * 2 ** min(self._failures - 1, 16), self._backoff_max)
                log.warning(
                    "mirror %s: fetching from broker %d: %s; retrying in %.1fs",
                    self.source.name,
                    self.leader_id,
                    exc,
                    delay,
                )
                self._pool.invalidate(self.leader_id)
                for c in active:
                    c.stats.errors += 1
                self._on_stale()
                await asyncio.sleep(delay)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "mirror %s: fetch session %d failed", self.source.name, self.leader_id
                )
                await asyncio.sleep(self._backoff)

    def _ready(self, c: Copy) -> bool:
        return (
            c.key in self.copies
            and not c.out_of_range
            and c.diverging is None
            and c.producer_id_above < 0
            and c.checked_epoch == c.leader_epoch
            and c.paused_until <= time.monotonic()
        )

    def _position(self, c: Copy) -> int:
        end = c.partition.log.log_end_offset
        if c.fetch_from is not None and c.fetch_from > end:
            return c.fetch_from
        return end

    async def _fetch(self, copies: list[Copy]) -> None:
        client = await self._pool.get(self.leader_id)
        version = client.best_version(FETCH, FETCH_VERSION)
        by_topic: dict[str, list[FetchPartition]] = {}
        for c in copies:
            plog = c.partition.log
            position = self._position(c)
            # the epoch of the batch just before the position, if the copy holds it
            last_epoch = plog.latest_epoch if position == plog.log_end_offset else -1
            by_topic.setdefault(c.source_topic, []).append(
                FetchPartition(
                    partition=c.index,
                    current_leader_epoch=c.leader_epoch,
                    fetch_offset=position,
                    last_fetched_epoch=last_epoch,
                    log_start_offset=-1,
                    partition_max_bytes=self._max_bytes,
                )
            )
        req = FetchRequest(
            replica_id=-1,
            max_wait_ms=self._max_wait_ms,
            min_bytes=1,
            max_bytes=max(self._max_bytes * len(copies), self._max_bytes),
            isolation_level=0,
            session_id=0,
            session_epoch=-1,
            topics=[FetchTopic(topic=t, partitions=ps) for t, ps in by_topic.items()],
        )
        resp = await client.request(FETCH, version, req, timeout=self._max_wait_ms / 1000 + 30.0)
        if resp.error_code:
            raise SourceError(f"Fetch error {resp.error_code}")
        now = time.time()
        index = {(c.source_topic, c.index): c for c in copies}
        # every partition's write is queued before any is waited for (the writer threads
        # take them side by side); all are in before the next fetch asks from the log ends
        started: list[tuple[Copy, Any, _Write | None]] = []
        for t in resp.responses:
            for pd in t.partitions:
                c = index.get((t.topic, pd.partition_index))
                if c is not None and c.key in self.copies:
                    started.append((c, pd, self._apply(c, pd)))
        for c, pd, write in started:
            if write is None or (write.future is not None and not await self._written(c, write)):
                continue
            c.problem = ""
            c.stats.observe(c.partition.log.log_end_offset, pd.high_watermark, now)

    def _problem(self, c: Copy, text: str, *, error: bool = True) -> None:
        if error:
            c.stats.errors += 1
        if text != c.problem:
            c.problem = text
            log.warning("mirror %s: %s-%d: %s", self.source.name, c.partition.topic, c.index, text)
        c.paused_until = time.monotonic() + PAUSE_S

    def _apply(self, c: Copy, pd: Any) -> _Write | None:
        """Queue one partition's answer on the write pool (no await in here: see the
        module doc). None when the answer was refused or deferred (nothing to observe)."""
        if not self._still_mirror(c):
            self.copies.pop(c.key, None)
            return None
        code = pd.error_code
        if code == ErrorCode.OFFSET_OUT_OF_RANGE:
            c.out_of_range = True
            return None
        if code in _STALE:
            self._problem(c, f"source answered error {code}; refreshing metadata", error=False)
            self._on_stale()
            return None
        if code:
            self._problem(c, f"source answered error {code}")
            return None
        diverging = pd.diverging_epoch
        if diverging.end_offset >= 0:
            c.diverging = (
                diverging.epoch,
                diverging.end_offset,
                pd.high_watermark > diverging.end_offset,
            )
            return None
        p = c.partition
        plog = p.log
        data = pd.records
        if not data:
            return _Write(None, 0, 0)
        view = memoryview(data)
        end = plog.log_end_offset
        start = stop = -1
        batches = 0
        floor = -1 if self._producer_id_floor is None else self._producer_id_floor()
        top_producer_id = -1
        try:
            for pos, h in iter_batches(view, allow_partial=True):
                last = h.base_offset + h.last_offset_delta
                if last < end:
                    continue
                if h.base_offset < end:
                    if plog.log_end_offset != plog.log_start_offset or start >= 0:
                        self._problem(
                            c,
                            f"source batch {h.base_offset}-{last} straddles the local end "
                            f"{end}; the source's batches differ from the copy's",
                        )
                        return None
                    # an empty log positioned inside a batch (the source's log start
                    # is mid-batch): start the log at the batch instead
                    self._restart(plog, h.base_offset)
                    end = h.base_offset
                if start < 0:
                    start = pos
                stop = pos + h.size
                batches += 1
                if h.producer_id > top_producer_id:
                    top_producer_id = h.producer_id
        except (LogError, RecordError) as exc:
            self._problem(c, f"cannot append copied batches: {exc}")
            return None
        if 0 <= floor <= top_producer_id:
            # appended once no local producer can be given this id (refetched then)
            c.producer_id_above = top_producer_id
            return None
        if start < 0:
            return _Write(None, 0, 0)
        chunk = view[start:stop]
        future = submit(
            self._writer,
            plog,
            chunk,
            origin=AppendOrigin.REPLICATION,
            now_ms=time.time_ns() // 1_000_000,
        )
        return _Write(future, len(chunk), batches)

    def _restart(self, plog: PartitionLog, offset: int) -> None:
        """Restart an empty log at ``offset`` before the append queued next: new files,
        the old renamed away, so on a writer thread in turn with the partition's appends
        (on the spot without a writer). A failure shows as that append's failure too (its
        offsets then fall below the log end)."""
        if self._writer is None:
            plog.truncate_fully_and_start_at(offset)
            return
        restart = self._writer.run_in_turn(plog, lambda: plog.truncate_fully_and_start_at(offset))
        restart.add_done_callback(_log_failed_restart)

    async def _written(self, c: Copy, write: _Write) -> bool:
        """Once the copied batches are in: count them, let the high watermark follow,
        apply a pending log start and wake the readers. False if they were refused."""
        p = c.partition
        plog = p.log
        assert write.future is not None
        try:
            await write.future
        except (LogError, RecordError) as exc:
            self._problem(c, f"cannot append copied batches: {exc}")
            return False
        c.stats.bytes_copied += write.size
        c.stats.batches_copied += write.batches
        c.fetch_from = None
        if self._on_appended is not None:
            self._on_appended(p)
        if c.start_at is not None:
            if plog.log_start_offset < c.start_at <= plog.high_watermark:
                plog.delete_records_before(c.start_at)
            c.start_at = None
        p.notify()
        return True

    async def _resolve_out_of_range(self, c: Copy) -> None:
        """Our position is outside the source's log: find out which way, act, and record."""
        loop = asyncio.get_running_loop()
        code, earliest = await self.source.list_offsets(
            self.leader_id, c.source_topic, c.index, EARLIEST
        )
        code2, latest = await self.source.list_offsets(
            self.leader_id, c.source_topic, c.index, LATEST
        )
        if code or code2:
            self._problem(c, f"ListOffsets after OFFSET_OUT_OF_RANGE: error {code or code2}")
            if {code, code2} & _STALE:
                self._on_stale()
            return
        if not self._still_mirror(c):
            self.copies.pop(c.key, None)
            return
        c.out_of_range = False
        plog = c.partition.log
        end = plog.log_end_offset
        name = f"mirror {self.source.name}: {c.partition.topic}-{c.index}"
        if end < earliest:
            if end == plog.log_start_offset:
                log.info("%s: the copy starts at the source's log start %d", name, earliest)
                await loop.run_in_executor(None, plog.truncate_fully_and_start_at, earliest)
                c.start_at = earliest
            else:
                c.stats.jumps += 1
                log.error(
                    "%s: the source's log now starts at %d, after the copy's end %d: offsets "
                    "%d-%d were deleted at the source before they were copied; continuing "
                    "from %d",
                    name,
                    earliest,
                    end,
                    end,
                    earliest - 1,
                    earliest,
                )
                c.fetch_from = earliest  # what the copy has is kept
        elif end > latest:
            c.stats.truncations += 1
            log.error(
                "%s: the source's log now ends at %d, before the copy's end %d (records lost "
                "upstream, e.g. an unclean leader election); removing the copy's offsets "
                "%d-%d so later offsets keep matching",
                name,
                latest,
                end,
                latest,
                end - 1,
            )
            if self._still_mirror(c):
                await loop.run_in_executor(None, plog.truncate_to, latest)
                c.partition.notify()
        else:
            # in range after all (the leader moved meanwhile): fetch again shortly
            c.paused_until = time.monotonic() + PAUSE_S

    # -- divergence ---------------------------------------------------------------------

    def _needs_check(self, c: Copy) -> bool:
        """Whether the copy must be compared with the source (OffsetForLeaderEpoch) before
        its next fetch: after it starts and whenever the source's leader epoch changes."""
        if c.checked_epoch == c.leader_epoch or c.key not in self.copies:
            return False
        if c.out_of_range or c.diverging is not None or c.producer_id_above >= 0:
            return False
        plog = c.partition.log
        if (
            not self._epoch_checks
            or c.fetch_from is not None  # the copy's end is not the source's position
            or plog.log_end_offset == plog.log_start_offset
            or plog.latest_epoch < 0
        ):
            c.checked_epoch = c.leader_epoch  # nothing to compare
            return False
        return True

    async def _check_epochs(self, copies: list[Copy]) -> None:
        client = await self._pool.get(self.leader_id)
        try:
            version = client.best_version(OFFSET_FOR_LEADER_EPOCH, OFFSET_FOR_LEADER_EPOCH_VERSION)
        except UnsupportedVersionError:
            version = -1
        if version < 3:
            self._epoch_checks = False
            log.warning(
                "mirror %s: broker %d has no OffsetForLeaderEpoch for consumers; divergence "
                "of its log from the copy is detected only if its Fetch answers it",
                self.source.name,
                self.leader_id,
            )
            for c in copies:
                c.checked_epoch = c.leader_epoch
            return
        asked: dict[tuple[str, int], tuple[Copy, int, int]] = {}
        by_topic: dict[str, list[OffsetForLeaderPartition]] = {}
        for c in copies:
            latest = c.partition.log.latest_epoch
            asked[(c.source_topic, c.index)] = (c, c.leader_epoch, latest)
            by_topic.setdefault(c.source_topic, []).append(
                OffsetForLeaderPartition(
                    partition=c.index, current_leader_epoch=c.leader_epoch, leader_epoch=latest
                )
            )
        req = OffsetForLeaderEpochRequest(
            replica_id=-1,
            topics=[OffsetForLeaderTopic(topic=t, partitions=ps) for t, ps in by_topic.items()],
        )
        resp = await client.request(OFFSET_FOR_LEADER_EPOCH, version, req, timeout=30.0)
        for t in resp.topics:
            for r in t.partitions:
                entry = asked.get((t.topic, r.partition))
                if entry is None:
                    continue
                c, leader_epoch, latest = entry
                if c.key not in self.copies or c.partition.log.latest_epoch != latest:
                    continue
                if r.error_code in _STALE:
                    self._problem(c, f"OffsetForLeaderEpoch: error {r.error_code}", error=False)
                    self._on_stale()
                    continue
                if r.error_code in _NO_EPOCH_CHECK:
                    # not allowed or not known there: comparing is left to Fetch
                    self._problem(
                        c, f"OffsetForLeaderEpoch: error {r.error_code}; relying on Fetch"
                    )
                    c.checked_epoch = leader_epoch
                    continue
                if r.error_code:
                    self._problem(c, f"OffsetForLeaderEpoch: error {r.error_code}")
                    continue
                # the source's log goes on past that end unless the epoch is its current one
                goes_on = leader_epoch < 0 or r.leader_epoch != leader_epoch
                if await self._cut_to_agreement(
                    c, r.leader_epoch, r.end_offset, goes_on, "epoch check"
                ):
                    c.checked_epoch = leader_epoch

    async def _resolve_divergence(self, c: Copy) -> None:
        assert c.diverging is not None
        epoch, end, goes_on = c.diverging
        c.diverging = None
        await self._cut_to_agreement(c, epoch, end, goes_on, "fetch")

    async def _cut_to_agreement(
        self, c: Copy, source_epoch: int, source_end: int, goes_on: bool, how: str
    ) -> bool:
        """Cut the copy back to where the source's log agrees with it; True once settled
        (False: the copy's new last epoch must be compared again). ``goes_on``: the
        source's log continues past ``source_end`` (other records at copied offsets: a
        divergence), else it ends there (records lost upstream: a truncation)."""
        plog = c.partition.log
        end = plog.log_end_offset
        cut = truncation_point(source_epoch, source_end, end, plog.end_offset_for_epoch)
        name = f"mirror {self.source.name}: {c.partition.topic}-{c.index}"
        if cut is None:
            log.warning(
                "%s: the source knows no leader epoch at or below the copy's latest %d; "
                "the copy cannot be compared with it by epochs (%s)",
                name,
                plog.latest_epoch,
                how,
            )
            return True
        if cut.offset < end:
            if not self._still_mirror(c):
                self.copies.pop(c.key, None)
                return False
            if not goes_on:
                c.stats.truncations += 1
                log.error(
                    "%s: the source's log now ends at %d, before the copy's end %d (records "
                    "lost upstream, e.g. an unclean leader election; found by %s): removing "
                    "the copy's offsets %d-%d so later offsets keep matching",
                    name,
                    cut.offset,
                    end,
                    how,
                    cut.offset,
                    end - 1,
                )
            else:
                c.stats.divergences += 1
                log.error(
                    "%s: the source's log diverges from the copy at offset %d (the source "
                    "holds leader epoch %d up to offset %d; the copy's latest epoch is %d; "
                    "found by %s): removing the copy's offsets %d-%d and copying the "
                    "source's from %d",
                    name,
                    cut.offset,
                    source_epoch,
                    source_end,
                    plog.latest_epoch,
                    how,
                    cut.offset,
                    end - 1,
                    cut.offset,
                )
            await asyncio.get_running_loop().run_in_executor(None, plog.truncate_to, cut.offset)
            c.partition.notify()
        return cut.settled

    async def _raise_producer_id_floor(self, c: Copy) -> None:
        producer_id, c.producer_id_above = c.producer_id_above, -1
        if self._reserve_producer_ids is None:
            return
        try:
            await self._reserve_producer_ids(producer_id)
        except (OSError, KafkaError) as exc:
            c.producer_id_above = producer_id
            self._problem(c, f"cannot keep producer id {producer_id} from local allocation: {exc}")
