"""Fetch: whole record batches from the log, long-polled on a per-partition data signal.

A fetch that finds fewer than `min_bytes` waits until an append to one of its partitions
wakes it or `max_wait_ms` passes, then reads again. A full fetch at session epoch 0 opens
an incremental fetch session (KIP-227, `shazamq.broker.fetch_sessions`) when the cache has
room: later fetches of that session carry and receive only what changed. Fetches at epoch
-1 with no session id (followers, old clients) are read exactly as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from shazamq.broker.fetch_sessions import (
    FINAL_EPOCH,
    FetchSession,
    FetchSessionCache,
    session_partitions,
)
from shazamq.broker.log.errors import LogError, OffsetOutOfRangeError
from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.fetch_request import FetchRequest
from shazamq.protocol.messages.fetch_response import (
    AbortedTransaction,
    EpochEndOffset,
    FetchableTopicResponse,
    FetchResponse,
    LeaderIdAndEpoch,
    NodeEndpoint,
    PartitionData,
)
from shazamq.protocol.records import RecordError, iter_batches

from ..tier.store import StoreError, StoreErrorKind

if TYPE_CHECKING:
    from shazamq.broker.log import LogSegment, PartitionLog

    from ..app import Broker
    from ..partitions import Partition
    from ..server import RequestContext
    from ..tier.manifest import PartitionManifest
    from . import Dispatcher

KEY = 1
tier_log = logging.getLogger(__name__)


# remote reads that outlived their fetch's wait (held here until they finish)
_background: set[asyncio.Future[Any]] = set()


def _retrieve(task: asyncio.Future[Any]) -> None:
    """A remote read finished; if nobody awaited it any more (its fetch timed out), a
    failure is only logged."""
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        tier_log.debug("a remote read failed after its fetch answered: %s", task.exception())


class RemoteRead(NamedTuple):
    """A partition read below the local log start, answered from the bucket."""

    data: PartitionData
    partition: Partition
    manifest: PartitionManifest
    offset: int
    limit: int
    upper: int
    committed: bool


READ_COMMITTED = 1
ZERO_UUID = uuid.UUID(int=0)

# (topic name or None when its id is unknown, topic id, error for an unknown topic, the
# partitions to read: a request's FetchPartitions or a session's CachedPartitions)
Group = tuple[str | None, uuid.UUID, int, Sequence[Any]]


def register(d: Dispatcher, broker: Broker) -> None:
    parts = broker.partitions
    metrics = broker.metrics
    cluster = broker.cluster
    tier = broker.tier  # tiered storage, or None: then nothing below costs a thing
    settings = broker.config.broker
    sessions = FetchSessionCache(
        settings.max_incremental_fetch_session_cache_slots,
        settings.min_incremental_fetch_session_eviction_ms,
        on_evict=metrics.fetch_session_evictions.inc,
    )
    metrics.watch_fetch_sessions(lambda: (len(sessions), sessions.num_partitions))
    # topic -> its (bytes, messages) counters: label lookups show in profiles
    out_counters: dict[str, tuple[Any, Any]] = {}

    def count_out(topics: list[FetchableTopicResponse]) -> None:
        """Bytes and records served, by topic, counted once on the final response.

        Records are counted from batch headers (O(batches)); a long poll that read
        several times before answering counts only what it answered with.
        """
        for t in topics:
            nbytes = nrecords = 0
            for pd in t.partitions:
                data = pd.records
                if data:
                    nbytes += len(data)
                    for _, header in iter_batches(data, allow_partial=True):
                        nrecords += header.records_count
            if nbytes and t.topic:
                counters = out_counters.get(t.topic)
                if counters is None:
                    counters = out_counters[t.topic] = (
                        metrics.bytes_out.labels(t.topic),
                        metrics.messages_out.labels(t.topic),
                    )
                counters[0].inc(nbytes)
                counters[1].inc(nrecords)

    def partition_error(index: int, code: int, p: Partition | None = None) -> PartitionData:
        return PartitionData(
            partition_index=index,
            error_code=code,
            high_watermark=p.log.high_watermark if p is not None else -1,
            last_stable_offset=p.log.last_stable_offset if p is not None else -1,
            log_start_offset=p.log.log_start_offset if p is not None else -1,
            records=b"",
        )

    def read_error(index: int, exc: LogError | RecordError, p: Partition) -> PartitionData:
        pe = partition_error(index, exc.error_code, p)
        if isinstance(exc, OffsetOutOfRangeError) and tier is not None:
            pe.log_start_offset = tier.log_start(p)
        return pe

    def follower_epoch_error(p: Partition, current_epoch: int) -> int:
        role = p.replica
        if role is None or role.leader < 0 or cluster is None or role.broker_id not in role.isr:
            return ErrorCode.NOT_LEADER_OR_FOLLOWER
        if current_epoch < 0 or current_epoch == p.leader_epoch:
            return 0
        return (
            ErrorCode.FENCED_LEADER_EPOCH
            if current_epoch < p.leader_epoch
            else ErrorCode.UNKNOWN_LEADER_EPOCH
        )

    def preferred_replica(p: Partition, rack: str) -> int:
        """An in-sync live replica in the client's rack when the leader is not in it, or -1."""
        assert cluster is not None and p.replica is not None
        if broker.config.broker.rack == rack:
            return -1
        state = cluster.state
        for b in p.replica.isr:
            info = state.brokers.get(b)
            if b != broker.node_id and info is not None and info.rack == rack and state.is_live(b):
                return b
        return -1

    def redirect(index: int, hint: tuple[int, int], redirects: set[int]) -> PartitionData:
        """NOT_LEADER_OR_FOLLOWER for a partition hosted elsewhere, naming its leader."""
        pe = partition_error(index, ErrorCode.NOT_LEADER_OR_FOLLOWER)
        if hint[0] >= 0:
            pe.current_leader = LeaderIdAndEpoch(leader_id=hint[0], leader_epoch=hint[1])
            redirects.add(hint[0])
        return pe

    def request_groups(req: FetchRequest, version: int) -> Iterator[Group]:
        """A sessionless request's topics, named (None: an unknown topic id)."""
        if version >= 13:
            for ft in req.topics:
                info = parts.topic_by_id(ft.topic_id)
                name = info.name if info is not None else None
                yield name, ft.topic_id, ErrorCode.UNKNOWN_TOPIC_ID, ft.partitions
        else:
            for ft in req.topics:
                yield ft.topic, ft.topic_id, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, ft.partitions

    def session_groups(session: FetchSession) -> Iterator[Group]:
        """A session's partitions in its read order, named as today's metadata says."""
        if session.uses_topic_ids:
            for _, tid, run in session.groups():
                info = parts.topic_by_id(tid)
                name = info.name if info is not None else None
                yield name, tid, ErrorCode.UNKNOWN_TOPIC_ID, run
        else:
            for topic, tid, run in session.groups():
                yield topic, tid, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, run

    def read(
        req: FetchRequest,
        version: int,
        groups: Iterable[Group],
        incremental: bool,
        hosted: list[Partition],
        redirects: set[int],
        remote: list[RemoteRead],
        cold: list[tuple[PartitionLog, LogSegment]] | None,
    ) -> tuple[list[FetchableTopicResponse], int]:
        """Read every partition of `groups`; `hosted` collects the ones to wait on and
        `remote` the reads below the local log start that the bucket answers.

        `incremental` (a session's fetch) leaves out a partition with no new records whose
        high watermark, last stable offset and log start are what the fetcher was last
        sent, comparing positions only: idle partitions cost no log read and no response
        bytes. Errors and new records always answer (Kafka's rules).

        Returns the topics and the bytes read, or -1 bytes when a partition failed (a
        fetch with an error returns at once, as Kafka's does).
        """
        committed = version >= 4 and req.isolation_level == READ_COMMITTED
        replica_id = req.replica_state.replica_id if version >= 15 else req.replica_id
        follower = replica_id >= 0 and cluster is not None
        # consumers that know KIP-392 (v11+) may read followers and be sent to one
        read_follower = cluster is not None and not follower and version >= 11
        client_rack = req.rack_id if read_follower else ""
        budget = req.max_bytes if version >= 3 else 0x7FFFFFFF
        total = 0
        failed = False
        topics_out = []
        for name, topic_id, unknown, partitions in groups:
            out = []
            for fp in partitions:
                p = parts.get(name, fp.partition) if name is not None else None
                if p is None:
                    if name is not None and cluster is not None:
                        hint = cluster.leader_hint(name, fp.partition)
                        if hint is not None:
                            out.append(redirect(fp.partition, hint, redirects))
                            continue
                    down = (name, fp.partition) in parts.offline
                    out.append(
                        partition_error(
                            fp.partition, ErrorCode.KAFKA_STORAGE_ERROR if down else unknown
                        )
                    )
                    continue
                current_epoch = fp.current_leader_epoch if version >= 9 else -1
                code = p.epoch_error(current_epoch)
                if code == ErrorCode.NOT_LEADER_OR_FOLLOWER and read_follower:
                    # KIP-392: a consumer may read an in-sync follower up to its HW
                    code = follower_epoch_error(p, current_epoch)
                if code:
                    pe = partition_error(fp.partition, code, p)
                    if cluster is not None and p.replica is not None:
                        role = p.replica
                        if role.leader >= 0:
                            pe.current_leader = LeaderIdAndEpoch(
                                leader_id=role.leader, leader_epoch=role.leader_epoch
                            )
                            redirects.add(role.leader)
                    out.append(pe)
                    continue
                plog = p.log
                offset = fp.fetch_offset
                last_epoch = fp.last_fetched_epoch if version >= 12 else -1
                if last_epoch >= 0 and offset >= plog.log_start_offset:
                    # KIP-595: the fetcher's log ends with `last_epoch`; if ours holds that
                    # epoch only up to below its position (or not at all), tell it where
                    # the two logs part instead of serving records. A leader that cannot
                    # tell (no epoch that old) serves as before.
                    epoch, epoch_end = plog.end_offset_for_epoch(last_epoch)
                    if epoch_end >= 0 and (epoch < last_epoch or epoch_end < offset):
                        pe = partition_error(fp.partition, 0, p)
                        pe.diverging_epoch = EpochEndOffset(epoch=epoch, end_offset=epoch_end)
                        out.append(pe)
                        continue
                hw = plog.high_watermark
                if offset < plog.log_start_offset or offset > plog.log_end_offset:
                    manifest = None
                    if tier is not None and not follower:
                        manifest = tier.remote_covers(p, offset)
                    if (
                        manifest is None
                        and offset < plog.log_start_offset
                        and tier is not None
                        and not follower
                        and (tier.manifest_pending(p) or tier.follower_pending(p))
                    ):
                        # a new leader that has not read its manifest yet, or a follower
                        # reading its leader's: retriable, not out of range (a client
                        # would reset its position past the bucket)
                        out.append(partition_error(fp.partition, ErrorCode.OFFSET_NOT_AVAILABLE, p))
                        continue
                    if manifest is None:
                        pe = partition_error(fp.partition, ErrorCode.OFFSET_OUT_OF_RANGE, p)
                        if tier is not None and not follower:  # a follower starts locally
                            pe.log_start_offset = tier.log_start(p)
                        out.append(pe)
                        continue
                    pd = partition_error(fp.partition, 0, p)
                    pd.log_start_offset = tier.log_start(p)  # type: ignore[union-attr]
                    pd.preferred_read_replica = -1
                    if client_rack and p.replica is not None and p.replica.is_leader:
                        # followers read the bucket too: the consumer's rack serves it
                        pd.preferred_read_replica = preferred_replica(p, client_rack)
                        if pd.preferred_read_replica >= 0:
                            out.append(pd)
                            continue
                    upper = plog.last_stable_offset if committed else hw
                    limit = max(min(fp.partition_max_bytes, budget - total), 1)
                    remote.append(RemoteRead(pd, p, manifest, offset, limit, upper, committed))
                    total += limit
                    out.append(pd)
                    continue
                hosted.append(p)
                lso = plog.last_stable_offset
                if follower:
                    # the fetch offset is the follower's log end: it has all below it
                    assert cluster is not None
                    cluster.follower_fetched(p, replica_id, offset)
                    hw = plog.high_watermark
                    upper = plog.log_end_offset
                else:
                    upper = lso if committed else hw
                    if client_rack and p.replica is not None and p.replica.is_leader:
                        preferred = preferred_replica(p, client_rack)
                        if preferred >= 0:
                            out.append(
                                PartitionData(
                                    partition_index=fp.partition,
                                    error_code=0,
                                    high_watermark=hw,
                                    last_stable_offset=lso,
                                    log_start_offset=plog.log_start_offset,
                                    preferred_read_replica=preferred,
                                    records=b"",
                                )
                            )
                            continue
                if (
                    incremental
                    and offset >= upper
                    and fp.sent_high_watermark == hw
                    and fp.sent_last_stable_offset == lso
                    and fp.sent_log_start == plog.log_start_offset
                ):
                    continue  # nothing new for this fetcher: not in the response
                records = b""
                aborted = None
                throttled = follower and p.replica is not None and replica_id in p.replica.adding
                if throttled:
                    assert cluster is not None
                    if not cluster.throttle_allows():
                        upper = offset  # nothing now; the fetch waits as for no data
                if offset < upper:
                    # Kafka's rule: the first batch of the first partition with data is
                    # returned whole even when it exceeds the limits, so a consumer can
                    # always make progress; every other read stays within both limits.
                    limit = min(fp.partition_max_bytes, budget - total)
                    if limit > 0 or total == 0:
                        segment = None if cold is None else plog.unloaded_segment_for(offset)
                        if segment is not None:  # its index is read off the loop, then again
                            assert cold is not None
                            cold.append((plog, segment))
                            continue
                        try:
                            data = plog.read(
                                offset, max(limit, 1), upper_bound=upper, min_one_batch=total == 0
                            )
                            if data and committed:
                                aborted = [
                                    AbortedTransaction(producer_id=pid, first_offset=first)
                                    for pid, first in plog.aborted_transactions(offset, upper)
                                ]
                        except (LogError, RecordError) as exc:
                            # a retention pass removed the offset meanwhile, a corrupt
                            # batch, a failed disk (the partition is then offline)
                            out.append(read_error(fp.partition, exc, p))
                            continue
                        if data:
                            records = data
                            total += len(data)
                            if throttled:
                                assert cluster is not None
                                cluster.throttle_consume(len(data))
                if committed and aborted is None:
                    aborted = []
                out.append(
                    PartitionData(
                        partition_index=fp.partition,
                        error_code=0,
                        high_watermark=hw,
                        last_stable_offset=lso,
                        log_start_offset=plog.log_start_offset,
                        aborted_transactions=aborted,
                        preferred_read_replica=-1,
                        records=records,
                    )
                )
            if incremental and not out:
                continue  # an incremental fetch names only topics with something new
            if any(o.error_code for o in out):
                failed = True
            topics_out.append(
                FetchableTopicResponse(topic=name or "", topic_id=topic_id, partitions=out)
                if version >= 13
                else FetchableTopicResponse(topic=name or "", partitions=out)
            )
        return topics_out, (-1 if failed else total)

    async def read_remote(reads: list[RemoteRead]) -> None:
        """Fill the partitions read from the bucket (only these fetches wait for it)."""
        assert tier is not None

        async def one(r: RemoteRead) -> None:
            # a bucket that stalls delays this fetch by the timeout at most; the read goes
            # on in the background so its chunks are cached for the client's retry
            task = asyncio.ensure_future(
                tier.read(r.partition, r.manifest, r.offset, r.limit, r.upper, r.committed)
            )
            _background.add(task)
            task.add_done_callback(_retrieve)
            try:
                data, aborted = await asyncio.wait_for(
                    asyncio.shield(task), tier.config.remote_fetch_timeout_ms / 1000
                )
            except Exception as exc:
                if isinstance(exc, TimeoutError):
                    r.data.error_code = ErrorCode.KAFKA_STORAGE_ERROR
                    tier_log.debug(
                        "remote read of %s-%d timed out", r.partition.topic, r.partition.index
                    )
                    return
                if isinstance(exc, StoreError) and exc.kind is StoreErrorKind.NOT_FOUND:
                    # remote retention removed it since this manifest was read (a
                    # follower's copy is read again): retriable, the next read knows
                    tier.forget_followed(r.partition)
                    r.data.error_code = ErrorCode.OFFSET_NOT_AVAILABLE
                    return
                r.data.error_code = ErrorCode.KAFKA_STORAGE_ERROR
                tier_log.warning(
                    "remote read of %s-%d at %d failed: %s",
                    r.partition.topic,
                    r.partition.index,
                    r.offset,
                    exc,
                )
                return
            r.data.records = data
            if r.committed:
                r.data.aborted_transactions = [
                    AbortedTransaction(producer_id=pid, first_offset=first)
                    for pid, first in aborted
                ]

        await asyncio.gather(*(one(r) for r in reads))

    async def handle(ctx: RequestContext, req: FetchRequest) -> FetchResponse:
        version = ctx.api_version
        replica_id = req.replica_state.replica_id if version >= 15 else req.replica_id
        session: FetchSession | None = None
        create = False
        if version >= 7 and (req.session_id != 0 or req.session_epoch != FINAL_EPOCH):
            context = sessions.context(
                req.session_id,
                req.session_epoch,
                version >= 13,
                req.topics,
                req.forgotten_topics_data,
                int(time.monotonic() * 1000),
            )
            if context.error:
                return FetchResponse(
                    throttle_time_ms=0, error_code=context.error, session_id=0, responses=[]
                )
            session, create = context.session, context.create
        deadline = ctx.received_at + max(req.max_wait_ms, 0) / 1000.0
        min_bytes = req.min_bytes
        redirects: set[int] = set()
        incremental = session is not None
        load_cold = True
        while True:
            hosted: list[Partition] = []
            remote: list[RemoteRead] = []
            groups = (
                session_groups(session) if session is not None else request_groups(req, version)
            )
            cold: list[tuple[PartitionLog, LogSegment]] | None = [] if load_cold else None
            topics, total = read(req, version, groups, incremental, hosted, redirects, remote, cold)
            if cold:  # a lazy index load (or rebuild) reads a file: not on the loop
                load_cold = False  # once per fetch: a load that failed is the read's error
                loop = asyncio.get_running_loop()
                for plog, segment in cold:
                    await loop.run_in_executor(None, plog.load_index, segment)
                continue
            if remote:  # the bucket has data for these: answer once it is read
                await read_remote(remote)
                break
            remaining = deadline - time.monotonic()
            if total < 0 or total >= min_bytes or remaining <= 0 or not hosted:
                break
            await parts.wait_for_data(hosted, remaining)
        session_id = 0
        if session is not None:
            session_id = session.id
            for t in topics:
                for pd in t.partitions:
                    session.answered(t.topic, t.topic_id, pd)
        elif create:
            created = sessions.create(
                int(time.monotonic() * 1000),
                replica_id >= 0,
                version >= 13,
                sum(len(ft.partitions) for ft in req.topics),
                lambda: session_partitions(req.topics, version >= 13, topics),
            )
            if created is not None:
                session_id = created.id
        if replica_id < 0:  # replication traffic is not what consumers were served
            count_out(topics)
        endpoints = []
        if redirects and cluster is not None:
            for node in sorted(redirects):
                ep = cluster.endpoint(node)
                if ep is not None:
                    endpoints.append(NodeEndpoint(node_id=node, host=ep[0], port=ep[1], rack=ep[2]))
        return FetchResponse(
            throttle_time_ms=0,
            error_code=0,
            session_id=session_id,
            responses=topics,
            node_endpoints=endpoints,
        )

    d.register(KEY, 4, 17, handle)
