"""The coordinators' internal topics: created compacted, written and replayed through the log.

``__consumer_offsets`` and ``__transaction_state`` are ordinary partitions of the segment
log, so their records get the same durability, recovery and compaction as any topic.
This module is the narrow door both coordinators use: create the topic (or adopt the
partition count it already has), pick a key's partition the way Kafka does, append a
batch of key/value records (optionally as a transactional batch of a producer, for
TxnOffsetCommit), and scan a partition from its start to load it.

On a single broker the topic is created on first use, as Kafka does: by FindCoordinator
or by the first request that writes it (:meth:`InternalTopic.created`), with one replica,
so a broker whose clients never use groups or transactions carries none; once it exists
it is replayed at every start, and every append is final once it returns. In a cluster
the topic is created on first need (FindCoordinator) with up to three replicas, a
partition's records are written only by its leader, and a write counts once the in-sync
replicas have it: :func:`replicated` waits for the high watermark to pass it, as Kafka's
coordinators append with ``acks=all``.

The coordinators keep one implementation for both modes: their write paths are
coroutines that never suspend on a single broker once the topic exists, where
:func:`run_now` drives them to completion synchronously for the callers that are not
coroutines.

Appends go through the broker's write pool (``log/writer.py``), in turn with every other
append to the partition: a small one with nothing queued is written at once on the loop,
anything else (a segment roll, its index trim and producer snapshot; an append queued
behind another) on a writer thread, which in a cluster writes it only if this broker
still leads the partition at the epoch the append was made under (the fence client
appends have). :meth:`InternalTopic.append` then returns a future of where the records
landed; :func:`landed` awaits either form, so a coroutine still writes
before it applies to memory. Under :func:`run_now` appends are written at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from shazamq.broker.cluster.replica import leadership_fence
from shazamq.broker.log import AppendInfo, AppendOrigin, LogError
from shazamq.broker.log.writer import inline_appends, submit
from shazamq.protocol.errors import ErrorCode, KafkaError
from shazamq.protocol.records import (
    NO_PRODUCER_EPOCH,
    NO_PRODUCER_ID,
    BatchHeader,
    ControlRecord,
    Record,
    RecordError,
    build_batch,
    control_record_of,
    decode_batch,
    iter_batches,
)

from .partitioning import coordinator_partition

if TYPE_CHECKING:
    from shazamq.broker.cluster.node import ClusterNode
    from shazamq.broker.partitions import Partition, PartitionManager

__all__ = [
    "Appended",
    "InternalTopic",
    "Landing",
    "ScannedBatch",
    "landed",
    "partition_exists",
    "replicated",
    "run_now",
]

log = logging.getLogger(__name__)

_SCAN_CHUNK = 1 << 20
# Kafka's offsets.topic.replication.factor and transaction.state.log.replication.factor
# default; a smaller cluster gets as many replicas as it has live brokers.
INTERNAL_REPLICATION_FACTOR = 3

T = TypeVar("T")


def run_now(coro: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that completes without suspending (a single broker's
    write path). A coroutine that does suspend is a caller bug: it is closed, so nothing
    after its first suspension runs, and RuntimeError is raised. Its appends are written
    on the spot (``inline_appends``), as it cannot wait for a writer thread."""
    try:
        with inline_appends():
            coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError(f"{coro!r} waited for something; await it instead")


@dataclass(frozen=True, slots=True)
class Appended:
    """Where an append landed: the partition and the offsets of its records."""

    partition: Partition
    base_offset: int
    next_offset: int  # one past the last record


# What InternalTopic.append returns: where the records landed, or, when the append went
# to a writer thread, the future of it (failing with the log's error)
Landing = Appended | asyncio.Future[Appended]


async def landed(landing: Landing | None) -> Appended | None:
    """Where an append landed, once it has; raises the log's error. Does not suspend
    when the append was written at once."""
    if isinstance(landing, asyncio.Future):
        return await landing
    return landing


async def replicated(cluster: ClusterNode | None, appended: Landing, timeout_s: float) -> int:
    """0 once the in-sync replicas hold ``appended``; else the error the wait ended with.

    REQUEST_TIMED_OUT after ``timeout_s``; NOT_LEADER_OR_FOLLOWER when leadership moved
    (the replica fails its waiters); NOT_ENOUGH_REPLICAS_AFTER_APPEND when the records are
    in, but the ISR shrank below ``min.insync.replicas``; the log's error when the append
    was still on a writer thread and failed there. A single broker's append written at
    once needs no wait and returns 0 without suspending.
    """
    if isinstance(appended, asyncio.Future):
        try:
            appended = await appended
        except (LogError, RecordError) as exc:
            return int(exc.error_code)
        except KafkaError as exc:
            return int(exc.code)
    if cluster is None:
        return 0
    p = appended.partition
    role = p.replica
    if role is None:
        return 0
    target = appended.next_offset
    if p.log.high_watermark < target:
        if not role.is_leader:  # moved while a writer thread wrote: its waiters were failed
            return int(ErrorCode.NOT_LEADER_OR_FOLLOWER)
        # registered before the high watermark is moved, so that a move all the way (an
        # ISR of this broker alone) resolves it rather than leaving it for the next append
        fut = role.wait_for_hw(target)
        cluster.advance_high_watermark(p)
        if not fut.done():
            try:
                await asyncio.wait_for(fut, max(timeout_s, 0.001))
            except TimeoutError:
                return int(ErrorCode.REQUEST_TIMED_OUT)
        code = fut.result()
        if code:
            return int(code)
    if len(role.isr) < cluster.min_isr(p.topic_info.configs):
        return int(ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND)
    return 0


def partition_exists(
    partitions: PartitionManager, cluster: ClusterNode | None, topic: str, index: int
) -> bool:
    """Whether the partition exists: hosted here on a single broker; in a cluster, known
    to the cluster's metadata wherever its replicas are (as Kafka's metadata cache)."""
    if cluster is None:
        return partitions.get(topic, index) is not None
    t = cluster.state.topics.get(topic)
    return t is not None and 0 <= index < len(t.partitions)


@dataclass(frozen=True, slots=True)
class ScannedBatch:
    """One batch met while replaying a partition: its records, or its marker."""

    header: BatchHeader
    records: list[tuple[int, bytes | None, bytes | None]]  # (offset, key, value)
    control: ControlRecord | None


class InternalTopic:
    """One internal compacted topic of the broker."""

    def __init__(
        self,
        partitions: PartitionManager,
        name: str,
        num_partitions: int,
        configs: dict[str, str],
        *,
        min_insync_replicas: int | None = None,
    ) -> None:
        self._partitions = partitions
        self.name = name
        self._wanted = num_partitions
        self._configs = configs
        # bounded by the replication factor the topic gets, so a cluster smaller than
        # Kafka's default (and a single broker) can still write with acks=all
        self._min_isr = min_insync_replicas
        self._count = num_partitions
        self._creating: asyncio.Task[None] | None = None
        # single broker: the topic is known to exist (created or adopted) from then on
        self._ready = False
        self._first_use: asyncio.Task[None] | None = None

    @property
    def cluster(self) -> ClusterNode | None:
        return getattr(self._partitions, "cluster", None)

    @property
    def count(self) -> int:
        """The topic's partition count; the configured one until it exists (Kafka places
        keys by the configured count then too, e.g. for AddOffsetsToTxn)."""
        if self.cluster is not None:
            info = self._partitions.metadata.get(self.name)
            if info is not None:
                return info.partitions
        return self._count

    @property
    def exists(self) -> bool:
        return self._partitions.metadata.get(self.name) is not None

    @property
    def needs_creation(self) -> bool:
        """Single broker: the topic is not known to exist yet, so the first request that
        needs it creates it (:meth:`created`). Always False in a cluster."""
        return not self._ready and self.cluster is None

    async def ensure_created(self) -> None:
        """Single broker: :meth:`ensure` once. Concurrent callers share one creation, which
        a caller cancelled meanwhile (a closed connection) does not cancel; a creation
        that failed raises here and is tried again by the next call."""
        if not self.needs_creation:
            return
        task = self._first_use
        if task is None or task.done():  # a finished one failed: success sets _ready
            task = asyncio.get_running_loop().create_task(
                self._create_first(), name=f"create {self.name}"
            )
            self._first_use = task
        await asyncio.shield(task)

    async def _create_first(self) -> None:
        await self.ensure()
        self._ready = True

    async def created(self) -> bool:
        """:meth:`ensure_created` for a request: whether the topic exists now. A failure is
        logged, and the write that follows answers it (COORDINATOR_NOT_AVAILABLE: the
        partition is missing)."""
        try:
            await self.ensure_created()
        except KafkaError as exc:
            log.warning("cannot create %s: %s", self.name, exc)
            return False
        except Exception:
            log.exception("creating %s failed", self.name)
            return False
        return True

    async def ensure(self) -> None:
        """Create the topic if it does not exist; adopt its partition count if it does.

        In a cluster the topic gets min(3, live brokers) replicas, and a creation that
        loses the race to another broker's (TOPIC_ALREADY_EXISTS) adopts the winner's.
        Raises KafkaError when it cannot be created (COORDINATOR_NOT_AVAILABLE: no live
        broker yet).
        """
        info = self._partitions.metadata.get(self.name)
        cluster = self.cluster
        if info is None and cluster is not None:
            live = len(cluster.state.live_brokers())
            if live < 1:
                raise KafkaError(
                    ErrorCode.COORDINATOR_NOT_AVAILABLE,
                    f"no live broker to place {self.name} on yet",
                )
            rf = min(INTERNAL_REPLICATION_FACTOR, live)
            try:
                info = await self._partitions.create_topic(
                    self.name, self._wanted, rf, self.configs_for(rf), internal=True
                )
            except KafkaError as exc:
                if exc.code != ErrorCode.TOPIC_ALREADY_EXISTS:
                    raise
                info = self._partitions.metadata.get(self.name)
                if info is None:
                    raise
                log.info("%s was created by another broker: adopting it", self.name)
        elif info is None:
            info = await self._partitions.create_topic(
                self.name, self._wanted, 1, self.configs_for(1), internal=True
            )
        if info.partitions != self._wanted:
            log.warning(
                "%s has %d partitions, not the configured %d: keeping %d (keys are placed "
                "by the partition count the topic was created with)",
                self.name,
                info.partitions,
                self._wanted,
                info.partitions,
            )
        self._count = info.partitions

    def configs_for(self, replication_factor: int) -> dict[str, str]:
        """The topic's settings when created with ``replication_factor`` replicas."""
        configs = dict(self._configs)
        if self._min_isr is not None:
            configs["min.insync.replicas"] = str(min(self._min_isr, replication_factor))
        return configs

    def create_soon(self) -> None:
        """Start creating the topic in the background, once at a time (cluster mode)."""
        if self._creating is not None and not self._creating.done():
            return
        self._creating = asyncio.get_running_loop().create_task(
            self._create(), name=f"create {self.name}"
        )

    async def _create(self) -> None:
        try:
            await self.ensure()
        except KafkaError as exc:
            log.info("cannot create %s yet: %s", self.name, exc)
        except Exception:
            log.exception("creating %s failed", self.name)

    def coordinator_of(self, key: str) -> int:
        """The broker leading ``key``'s partition, or -1 (no topic yet: its creation is
        started; or no leader). Cluster mode only."""
        cluster = self.cluster
        assert cluster is not None
        t = cluster.state.topics.get(self.name)
        if t is None or not t.partitions:
            self.create_soon()
            return -1
        return t.partitions[coordinator_partition(key, len(t.partitions))].leader

    def partition_for(self, key: str) -> int:
        return coordinator_partition(key, self.count)

    def partition(self, index: int) -> Partition:
        p = self._partitions.get(self.name, index)
        if p is None:
            raise KafkaError(
                ErrorCode.COORDINATOR_NOT_AVAILABLE, f"{self.name}-{index} is not hosted here"
            )
        return p

    def append(
        self,
        index: int,
        records: Sequence[tuple[bytes, bytes | None]],
        *,
        producer_id: int = NO_PRODUCER_ID,
        producer_epoch: int = NO_PRODUCER_EPOCH,
        transactional: bool = False,
        now_ms: int | None = None,
    ) -> Landing:
        """Append ``(key, value)`` records as one batch; returns where they landed, or the
        future of it when the write went to a writer thread (module doc).

        Raises the log's ``LogError`` / ``RecordError`` (both carry ``error_code``; from
        the future when the write was deferred) or ``KafkaError``: the partition is
        missing, or, in a cluster, led elsewhere (NOT_LEADER_OR_FOLLOWER) or short of
        in-sync replicas (NOT_ENOUGH_REPLICAS, the check ``acks=all`` makes before
        writing). The checks and the queueing happen with no ``await`` between them; a
        write deferred to a writer thread whose turn comes after the leadership (or its
        epoch) moved fails with ``NotLeaderError`` (NOT_LEADER_OR_FOLLOWER, which the
        coordinators answer NOT_COORDINATOR) and is not written.
        """
        p = self.partition(index)
        cluster = self.cluster
        role = p.replica if cluster is not None else None
        if role is not None and cluster is not None:
            if not role.is_leader:
                raise KafkaError(
                    ErrorCode.NOT_LEADER_OR_FOLLOWER, f"{self.name}-{index} is led elsewhere"
                )
            min_isr = cluster.min_isr(p.topic_info.configs)
            if len(role.isr) < min_isr:
                raise KafkaError(
                    ErrorCode.NOT_ENOUGH_REPLICAS,
                    f"{self.name}-{index} has {len(role.isr)} in-sync replicas, "
                    f"min.insync.replicas is {min_isr}",
                )
        now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        # a producer's batch starts at sequence 0, as Kafka's coordinator writes it: the log
        # checks a coordinator's append for the producer epoch only, never for sequences
        sequence = 0 if producer_id >= 0 else -1
        batch = bytearray(
            build_batch(
                [Record(offset_delta=i, key=k, value=v) for i, (k, v) in enumerate(records)],
                base_timestamp=now,
                producer_id=producer_id,
                producer_epoch=producer_epoch,
                base_sequence=sequence,
                transactional=transactional,
            )
        )
        writer = getattr(self._partitions, "writer", None)
        if writer is None:  # a manager built alone (tests): written here, no loop needed
            info = p.log.append(
                batch, leader_epoch=p.leader_epoch, now_ms=now, origin=AppendOrigin.COORDINATOR
            )
            p.notify()
            return Appended(p, info.base_offset, info.last_offset + 1)
        # in a cluster the writer thread asks again, right before the write, whether this
        # broker still leads at this epoch (as for a client's produce): a coordinator
        # that lost its partition while the append waited its turn never writes to it
        epoch = p.leader_epoch
        write = submit(
            writer,
            p.log,
            batch,
            origin=AppendOrigin.COORDINATOR,
            now_ms=now,
            leader_epoch=epoch,
            still_leads=leadership_fence(role, epoch),
        )
        if write.done():
            info = write.result()  # raises the log's error
            p.notify()
            return Appended(p, info.base_offset, info.last_offset + 1)
        out: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        write.add_done_callback(lambda w: self._landed(p, w, out))
        return out

    def _landed(
        self, p: Partition, write: asyncio.Future[AppendInfo], out: asyncio.Future[Appended]
    ) -> None:
        """A deferred append is in (or failed): wake the readers and tell the caller. A
        failure is logged here too, for the callers that moved on without waiting."""
        if write.cancelled():
            out.cancel()
            return
        exc = write.exception()
        if exc is not None:
            log.warning("%s-%d: append failed: %s", self.name, p.index, exc)
            if not out.done():
                out.set_exception(exc)
                out.exception()  # logged above: no second report if no caller waits
            return
        info = write.result()
        p.notify()
        if not out.done():
            out.set_result(Appended(p, info.base_offset, info.last_offset + 1))

    def scan(self, index: int) -> Iterator[ScannedBatch]:
        """Every batch of partition ``index`` from the log start to the log end, decoded.

        Runs from an executor thread at start-up (log reads are thread-safe). A batch
        that cannot be decoded is logged and skipped, so one bad record never stops a
        coordinator from loading the rest.
        """
        p = self.partition(index)
        plog = p.log
        offset = plog.log_start_offset
        end = plog.log_end_offset
        while offset < end:
            data = plog.read(offset, _SCAN_CHUNK, upper_bound=end)
            if not data:
                break
            view = memoryview(data)
            advanced = False
            for pos, header in iter_batches(view, allow_partial=True):
                if header.next_offset <= offset:
                    continue
                advanced = True
                offset = header.next_offset
                batch = view[pos : pos + header.size]
                try:
                    if header.is_control:
                        yield ScannedBatch(header, [], control_record_of(batch))
                        continue
                    _h, records = decode_batch(batch)
                except (RecordError, ValueError) as exc:
                    log.error(
                        "%s-%d: skipping undecodable batch at offset %d: %s",
                        self.name,
                        index,
                        header.base_offset,
                        exc,
                    )
                    continue
                yield ScannedBatch(
                    header,
                    [(header.base_offset + r.offset_delta, r.key, r.value) for r in records],
                    None,
                )
            if not advanced:
                break
