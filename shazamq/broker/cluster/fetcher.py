"""A follower's fetcher: one task per leader broker, pulling every partition it leads for us.

Kafka's replica fetcher thread, as an asyncio task. A partition joins with the leader
epoch it follows under and first reconciles its log with the leader's
(OffsetForLeaderEpoch: truncate to the end of our last epoch as the leader knows it), so a
divergent tail written under an older leader never survives. Then ordinary Fetch requests
carry our replica id; the leader long-polls them, treats the fetch offset as our log end,
and answers with whole batches, which are appended with their offsets unchanged, through
the broker's write pool (log/writer.py): a roll or a large batch is written on a writer
thread, and the high watermark follows only once the batches are in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shazamq.broker.log import AppendInfo, AppendOrigin
from shazamq.broker.log.errors import LogError
from shazamq.broker.log.writer import LogWriter, in_turn, submit
from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.fetch_request import FetchPartition, FetchRequest, FetchTopic
from shazamq.protocol.messages.offset_for_leader_epoch_request import (
    OffsetForLeaderEpochRequest,
    OffsetForLeaderPartition,
    OffsetForLeaderTopic,
)
from shazamq.protocol.records import RecordError, iter_batches

from .client import BrokerConnectionError, ClientPool

if TYPE_CHECKING:
    from shazamq.broker.partitions import Partition

log = logging.getLogger(__name__)

FETCH = 1
FETCH_VERSION = 12  # names, replica id in the body, current leader epoch, log start
OFFSET_FOR_LEADER_EPOCH = 23
OFFSET_FOR_LEADER_EPOCH_VERSION = 3  # the first with a replica id
RETRY_BACKOFF_S = 0.2
PAUSE_S = 0.3
_FENCED = frozenset(
    {
        ErrorCode.NOT_LEADER_OR_FOLLOWER,
        ErrorCode.FENCED_LEADER_EPOCH,
        ErrorCode.UNKNOWN_LEADER_EPOCH,
        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
    }
)


@dataclass(slots=True)
class _Entry:
    partition: Partition
    leader_epoch: int
    truncated: bool = False
    # after an epoch or leadership error: the monotonic time to try again (the leader's or
    # our metadata view is behind; one of them catches up within moments)
    paused_until: float = 0.0


class ReplicaFetcher:
    """Fetches, for one follower broker, every partition one leader leads."""

    def __init__(
        self,
        *,
        node_id: int,
        leader_id: int,
        pool: ClientPool,
        max_bytes: int,
        max_wait_ms: int,
        on_fetched: Callable[[Partition], None] | None = None,
        writer: LogWriter | None = None,
    ) -> None:
        self.node_id = node_id
        self.leader_id = leader_id
        self._pool = pool
        self._max_bytes = max_bytes
        self._max_wait_ms = max_wait_ms
        self._on_fetched = on_fetched
        self._writer = writer  # the broker's write pool; None: written on the loop
        self._entries: dict[tuple[str, int], _Entry] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, p: Partition, leader_epoch: int) -> None:
        """Follow `p` under `leader_epoch` (again): reconcile first, then fetch."""
        self._entries[(p.topic, p.index)] = _Entry(p, leader_epoch)
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"replica-fetcher-{self.leader_id}")

    def remove(self, p: Partition) -> None:
        self._entries.pop((p.topic, p.index), None)

    def following(self, p: Partition) -> bool:
        return (p.topic, p.index) in self._entries

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- the loop -----------------------------------------------------------------------

    def _pause(self, e: _Entry) -> None:
        e.paused_until = time.monotonic() + PAUSE_S
        e.truncated = False  # reconcile again with whatever the leader then says

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            active = [e for e in self._entries.values() if e.paused_until <= now]
            if not active:
                self._wake.clear()
                pauses = [e.paused_until for e in self._entries.values()]
                timeout = max(min(pauses) - now, 0.01) if pauses else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            try:
                client = await self._pool.get(self.leader_id)
                pending = [e for e in active if not e.truncated]
                if pending:
                    await self._truncate(client, pending)
                now = time.monotonic()
                ready = [e for e in self._entries.values() if e.truncated and e.paused_until <= now]
                if ready:
                    await self._fetch(client, ready)
            except BrokerConnectionError as exc:
                log.debug("fetching from broker %d: %s", self.leader_id, exc)
                self._pool.invalidate(self.leader_id)
                await asyncio.sleep(RETRY_BACKOFF_S)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("replica fetcher for leader %d failed; retrying", self.leader_id)
                await asyncio.sleep(RETRY_BACKOFF_S)

    async def _truncate(self, client, entries: list[_Entry]) -> None:  # type: ignore[no-untyped-def]
        """Cut each log back to where it agrees with the leader's (KIP-101)."""
        if self._writer is not None:
            # appends queued before the role changed (as leader, or for another leader)
            # land first: the epoch asked about and the end compared are then final
            for e in entries:
                await self._writer.settled(e.partition.log)
        by_topic: dict[str, list[OffsetForLeaderPartition]] = {}
        for e in entries:
            plog = e.partition.log
            latest = plog.latest_epoch
            by_topic.setdefault(e.partition.topic, []).append(
                OffsetForLeaderPartition(
                    partition=e.partition.index,
                    current_leader_epoch=e.leader_epoch,
                    leader_epoch=latest if latest >= 0 else 0,
                )
            )
        req = OffsetForLeaderEpochRequest(
            replica_id=self.node_id,
            topics=[OffsetForLeaderTopic(topic=t, partitions=ps) for t, ps in by_topic.items()],
        )
        resp = await client.request(
            OFFSET_FOR_LEADER_EPOCH, OFFSET_FOR_LEADER_EPOCH_VERSION, req, timeout=10.0
        )
        for t in resp.topics:
            for r in t.partitions:
                e = self._entries.get((t.topic, r.partition))
                if e is None or e.truncated:
                    continue
                plog = e.partition.log
                if r.error_code in _FENCED:
                    self._pause(e)
                    continue
                if r.error_code:
                    log.warning(
                        "%s-%d: OffsetForLeaderEpoch from %d: error %d",
                        t.topic,
                        r.partition,
                        self.leader_id,
                        r.error_code,
                    )
                    self._pause(e)
                    continue
                if plog.latest_epoch < 0:
                    target = plog.log_end_offset  # nothing written under any epoch yet
                elif r.end_offset < 0:
                    # the leader knows no epoch at or below ours: keep only what is committed
                    target = plog.high_watermark
                elif r.leader_epoch == plog.latest_epoch:
                    target = min(r.end_offset, plog.log_end_offset)
                else:
                    _, ours = plog.end_offset_for_epoch(r.leader_epoch)
                    target = min(r.end_offset, ours if ours >= 0 else r.end_offset)
                if target < plog.log_end_offset:
                    log.info(
                        "%s-%d: truncating from %d to %d to match leader %d (epoch %d)",
                        t.topic,
                        r.partition,
                        plog.log_end_offset,
                        target,
                        self.leader_id,
                        e.leader_epoch,
                    )
                    await asyncio.get_running_loop().run_in_executor(None, plog.truncate_to, target)
                e.truncated = True

    async def _fetch(self, client, entries: list[_Entry]) -> None:  # type: ignore[no-untyped-def]
        by_topic: dict[str, list[FetchPartition]] = {}
        for e in entries:
            plog = e.partition.log
            by_topic.setdefault(e.partition.topic, []).append(
                FetchPartition(
                    partition=e.partition.index,
                    current_leader_epoch=e.leader_epoch,
                    fetch_offset=plog.log_end_offset,
                    last_fetched_epoch=plog.latest_epoch,
                    log_start_offset=plog.log_start_offset,
                    partition_max_bytes=self._max_bytes,
                )
            )
        req = FetchRequest(
            replica_id=self.node_id,
            max_wait_ms=self._max_wait_ms,
            min_bytes=1,
            max_bytes=self._max_bytes * max(len(entries), 1),
            isolation_level=0,
            session_id=0,
            session_epoch=-1,
            topics=[FetchTopic(topic=t, partitions=ps) for t, ps in by_topic.items()],
        )
        resp = await client.request(
            FETCH, FETCH_VERSION, req, timeout=self._max_wait_ms / 1000 + 15.0
        )
        if resp.error_code:
            raise BrokerConnectionError(f"fetch from {self.leader_id}: error {resp.error_code}")
        # every partition's write is queued before any is waited for, so the writer
        # threads take them side by side; all are in before the next fetch, which asks
        # from the log ends they moved
        started: list[tuple[_Entry, Any, asyncio.Future[AppendInfo] | None]] = []
        restarts: list[tuple[_Entry, asyncio.Future[None]]] = []
        for t in resp.responses:
            for pd in t.partitions:
                e = self._entries.get((t.topic, pd.partition_index))
                if e is None or not e.truncated:
                    continue
                if self._accept(e, pd, restarts):
                    started.append((e, pd, self._write(e, pd)))
        for e, pd, write in started:
            await self._written(e, pd, write)
        for e, restart in restarts:
            try:
                await restart
            except (LogError, OSError) as exc:
                p = e.partition
                log.error("%s-%d: cannot restart the log: %s", p.topic, p.index, exc)
                e.truncated = False

    def _accept(self, e: _Entry, pd, restarts: list[tuple[_Entry, asyncio.Future[None]]]) -> bool:  # type: ignore[no-untyped-def]
        """Whether the answer carries records (or a high watermark) to take; acts on
        its errors otherwise (a log to restart further on goes to ``restarts``)."""
        p = e.partition
        plog = p.log
        code = pd.error_code
        if code in _FENCED:
            self._pause(e)
            return False
        if pd.diverging_epoch.end_offset >= 0:
            # our log parted from the leader's (it truncated, e.g. a mirror copy cut back
            # to its source): reconcile as after a leader change
            e.truncated = False
            return False
        if code == ErrorCode.OFFSET_OUT_OF_RANGE:
            if plog.log_end_offset < pd.log_start_offset:
                # the leader deleted what we would need next: start where it starts
                # (new files, old ones renamed away: on a writer thread, in turn with
                # the partition's appends; the next fetch asks from the new start)
                start = pd.log_start_offset
                restarts.append(
                    (
                        e,
                        in_turn(
                            self._writer, plog, lambda: plog.truncate_fully_and_start_at(start)
                        ),
                    )
                )
            else:
                e.truncated = False  # reconcile again
            return False
        if code:
            log.warning(
                "%s-%d: fetch error %d from leader %d", p.topic, p.index, code, self.leader_id
            )
            return False
        return True

    def _write(self, e: _Entry, pd) -> asyncio.Future[AppendInfo] | None:  # type: ignore[no-untyped-def]
        """Queue the answer's batches past our log end on the write pool (offsets kept)."""
        plog = e.partition.log
        data = pd.records
        if not data:
            return None
        view = memoryview(data)
        end = 0
        for pos, header in iter_batches(view, allow_partial=True):
            if header.base_offset < plog.log_end_offset:
                continue
            end = pos + header.size
        start = 0
        for pos, header in iter_batches(view, allow_partial=True):
            if header.base_offset >= plog.log_end_offset:
                start = pos
                break
        if end <= start:
            return None
        return submit(
            self._writer,
            plog,
            view[start:end],
            origin=AppendOrigin.REPLICATION,
            now_ms=time.time_ns() // 1_000_000,
        )

    async def _written(  # type: ignore[no-untyped-def]
        self, e: _Entry, pd, write: asyncio.Future[AppendInfo] | None
    ) -> None:
        """Once the batches are in: the high watermark and log start follow the leader's
        (never past our log end, which moved only after the write)."""
        p = e.partition
        plog = p.log
        if write is not None:
            try:
                await write
            except (LogError, RecordError) as exc:
                log.error("%s-%d: cannot append replicated batches: %s", p.topic, p.index, exc)
                e.truncated = False
                return
            if self._entries.get((p.topic, p.index)) is not e:
                return  # no longer followed like this (led here now, or re-added)
        old_hw = plog.high_watermark
        plog.high_watermark = min(pd.high_watermark, plog.log_end_offset)
        if plog.high_watermark > old_hw:
            p.notify()  # consumers reading this follower (KIP-392)
        if plog.log_start_offset < pd.log_start_offset <= plog.high_watermark:
            # the leader's retention or DeleteRecords moved its log start: follow it
            plog.delete_records_before(pd.log_start_offset)
        if self._on_fetched is not None:
            self._on_fetched(p)
