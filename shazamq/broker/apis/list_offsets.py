"""ListOffsets: earliest, latest, max-timestamp and by-timestamp offset lookups."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from shazamq.broker.log.errors import LogError
from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.list_offsets_request import ListOffsetsRequest
from shazamq.protocol.messages.list_offsets_response import (
    ListOffsetsPartitionResponse,
    ListOffsetsResponse,
    ListOffsetsTopicResponse,
)
from shazamq.protocol.records import RecordError

if TYPE_CHECKING:
    from ..app import Broker
    from ..server import RequestContext
    from . import Dispatcher

KEY = 2
LATEST = -1
EARLIEST = -2
MAX_TIMESTAMP = -3
EARLIEST_LOCAL = -4
LATEST_TIERED = -5
READ_COMMITTED = 1


def register(d: Dispatcher, broker: Broker) -> None:
    parts = broker.partitions
    tier = broker.tier

    async def handle(ctx: RequestContext, req: ListOffsetsRequest) -> ListOffsetsResponse:
        loop = asyncio.get_running_loop()
        version = ctx.api_version
        committed = version >= 2 and req.isolation_level == READ_COMMITTED
        topics = []
        for t in req.topics:
            out = []
            for rp in t.partitions:
                resp = ListOffsetsPartitionResponse(
                    partition_index=rp.partition_index, error_code=0, timestamp=-1, offset=-1
                )
                out.append(resp)
                p = parts.get(t.name, rp.partition_index)
                if p is None:
                    resp.error_code = (
                        ErrorCode.NOT_LEADER_OR_FOLLOWER
                        if broker.cluster is not None
                        and broker.cluster.leader_hint(t.name, rp.partition_index) is not None
                        else ErrorCode.KAFKA_STORAGE_ERROR
                        if (t.name, rp.partition_index) in parts.offline
                        else ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                    )
                    continue
                resp.error_code = p.epoch_error(rp.current_leader_epoch if version >= 4 else -1)
                if resp.error_code:
                    continue
                plog = p.log
                ts = rp.timestamp
                if (
                    ts not in (LATEST, EARLIEST_LOCAL, MAX_TIMESTAMP)
                    and tier is not None
                    and tier.manifest_pending(p)
                ):
                    # a new leader that has not read its manifest: the bucket's part of the
                    # log is not known yet (retriable)
                    resp.error_code = ErrorCode.OFFSET_NOT_AVAILABLE
                    continue
                resp.leader_epoch = p.leader_epoch
                try:
                    if ts == LATEST:
                        resp.offset = plog.last_stable_offset if committed else plog.high_watermark
                    elif ts == EARLIEST and tier is not None:
                        resp.offset = tier.log_start(p)
                    elif ts in (EARLIEST, EARLIEST_LOCAL):
                        resp.offset = plog.log_start_offset
                    elif ts == LATEST_TIERED:
                        resp.offset = tier.last_tiered_offset(p) if tier is not None else -1
                    elif ts == MAX_TIMESTAMP:
                        # reads index files and scans headers: not on the loop
                        found = await loop.run_in_executor(None, plog.max_timestamp_offset)
                        if found is not None:
                            resp.offset, resp.timestamp = found
                    elif ts < 0:
                        resp.error_code = ErrorCode.INVALID_REQUEST
                        continue
                    else:
                        found = None
                        if tier is not None:
                            found = await tier.offset_for_timestamp(p, ts)
                        if found is None:  # a time-index lookup and a segment scan
                            found = await loop.run_in_executor(None, plog.offset_for_timestamp, ts)
                        if found is not None:
                            offset, stamp = found
                            upper = plog.last_stable_offset if committed else plog.high_watermark
                            if offset < upper:
                                resp.offset, resp.timestamp = offset, stamp
                except (LogError, RecordError) as exc:
                    # a failed disk (the partition goes offline), a corrupt batch
                    resp.error_code = exc.error_code
                    resp.offset = -1
                    continue
                if version == 0:
                    resp.old_style_offsets = [resp.offset] if resp.offset >= 0 else []
                if ts in (LATEST, EARLIEST, EARLIEST_LOCAL) and version >= 1:
                    resp.timestamp = -1
            topics.append(ListOffsetsTopicResponse(name=t.name, partitions=out))
        return ListOffsetsResponse(throttle_time_ms=0, topics=topics)

    d.register(KEY, 0, 10, handle)
