"""Fetch: whole record batches from the log, long-polled on a per-partition data signal.

A fetch that finds fewer than `min_bytes` waits until an append to one of its partitions
wakes it or `max_wait_ms` passes, then reads again. Sessions (KIP-227) are declined by
answering session id 0, which every client treats as "send full fetches", so each request
carries its whole partition list.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.fetch_request import FetchRequest
from shazamq.protocol.messages.fetch_response import (
    AbortedTransaction,
    FetchableTopicResponse,
    FetchResponse,
    PartitionData,
)
from shazamq.protocol.records import iter_batches

if TYPE_CHECKING:
    from ..app import Broker
    from ..partitions import Partition
    from ..server import RequestContext
    from . import Dispatcher

KEY = 1
READ_COMMITTED = 1
ZERO_UUID = uuid.UUID(int=0)


def register(d: Dispatcher, broker: Broker) -> None:
    parts = broker.partitions
    metrics = broker.metrics
    cluster = broker.cluster
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

    def read(
        req: FetchRequest, version: int, hosted: list[Partition]
    ) -> tuple[list[FetchableTopicResponse], int]:
        """Read every requested partition; `hosted` collects the ones to wait on.

        Returns the topics and the bytes read, or -1 bytes when a partition failed (a
        fetch with an error returns at once, as Kafka's does).
        """
        committed = version >= 4 and req.isolation_level == READ_COMMITTED
        replica_id = req.replica_state.replica_id if version >= 15 else req.replica_id
        follower = replica_id >= 0 and cluster is not None
        budget = req.max_bytes if version >= 3 else 0x7FFFFFFF
        total = 0
        failed = False
        topics_out = []
        for ft in req.topics:
            if version >= 13:
                info = parts.topic_by_id(ft.topic_id)
                name = info.name if info is not None else None
                unknown = ErrorCode.UNKNOWN_TOPIC_ID
            else:
                name = ft.topic
                unknown = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
            out = []
            for fp in ft.partitions:
                p = parts.get(name, fp.partition) if name is not None else None
                if p is None:
                    out.append(partition_error(fp.partition, unknown))
                    continue
                code = p.epoch_error(fp.current_leader_epoch if version >= 9 else -1)
                if code:
                    out.append(partition_error(fp.partition, code, p))
                    continue
                plog = p.log
                offset = fp.fetch_offset
                hw = plog.high_watermark
                if offset < plog.log_start_offset or offset > plog.log_end_offset:
                    out.append(partition_error(fp.partition, ErrorCode.OFFSET_OUT_OF_RANGE, p))
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
                records = b""
                aborted = None
                if offset < upper:
                    # Kafka's rule: the response's first batch is returned whole even when
                    # it exceeds the limits, so a consumer can always make progress.
                    limit = min(fp.partition_max_bytes, budget - total)
                    if limit > 0 or total == 0:
                        data = plog.read(offset, max(limit, 1), upper_bound=upper)
                        if data:
                            records = data
                            total += len(data)
                            if committed:
                                aborted = [
                                    AbortedTransaction(producer_id=pid, first_offset=first)
                                    for pid, first in plog.aborted_transactions(offset, upper)
                                ]
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
            if any(o.error_code for o in out):
                failed = True
            topics_out.append(
                FetchableTopicResponse(topic=name or "", topic_id=ft.topic_id, partitions=out)
                if version >= 13
                else FetchableTopicResponse(topic=name or "", partitions=out)
            )
        return topics_out, (-1 if failed else total)

    async def handle(ctx: RequestContext, req: FetchRequest) -> FetchResponse:
        version = ctx.api_version
        if version >= 7 and (req.session_id != 0 or req.session_epoch > 0):
            # We never hand out sessions, so any session id or epoch is unknown.
            return FetchResponse(
                throttle_time_ms=0,
                error_code=ErrorCode.FETCH_SESSION_ID_NOT_FOUND,
                session_id=0,
                responses=[],
            )
        deadline = ctx.received_at + max(req.max_wait_ms, 0) / 1000.0
        min_bytes = req.min_bytes
        while True:
            hosted: list[Partition] = []
            topics, total = read(req, version, hosted)
            remaining = deadline - time.monotonic()
            if total < 0 or total >= min_bytes or remaining <= 0 or not hosted:
                break
            await parts.wait_for_data(hosted, remaining)
        count_out(topics)
        return FetchResponse(throttle_time_ms=0, error_code=0, session_id=0, responses=topics)

    d.register(KEY, 4, 17, handle)
