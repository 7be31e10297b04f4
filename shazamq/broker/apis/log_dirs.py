"""The broker's log dirs: DescribeLogDirs (35) and AlterReplicaLogDirs (34).

What `kafka-log-dirs --describe` and `kafka-reassign-partitions` (with log dirs) use.
DescribeLogDirs lists every log dir with its partitions (size, offset lag, and the copies
of partitions moving there, `is_future_key`), its total and usable bytes (v4), and
KAFKA_STORAGE_ERROR for a dir that is offline. AlterReplicaLogDirs starts moving
partitions to another log dir of this broker (see :mod:`shazamq.broker.log_dir_moves`)
and answers at once, per partition: LOG_DIR_NOT_FOUND for a path that is not a log dir,
KAFKA_STORAGE_ERROR for an offline dir or partition, REPLICA_NOT_AVAILABLE for a
partition not hosted here.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.alter_replica_log_dirs_request import AlterReplicaLogDirsRequest
from shazamq.protocol.messages.alter_replica_log_dirs_response import (
    AlterReplicaLogDirPartitionResult,
    AlterReplicaLogDirsResponse,
    AlterReplicaLogDirTopicResult,
)
from shazamq.protocol.messages.describe_log_dirs_request import DescribeLogDirsRequest
from shazamq.protocol.messages.describe_log_dirs_response import (
    DescribeLogDirsPartition,
    DescribeLogDirsResponse,
    DescribeLogDirsResult,
    DescribeLogDirsTopic,
)

if TYPE_CHECKING:
    from ..app import Broker
    from ..server import RequestContext
    from . import Dispatcher

DESCRIBE_KEY = 35
ALTER_KEY = 34


def register(d: Dispatcher, broker: Broker) -> None:
    async def describe(ctx: RequestContext, req: DescribeLogDirsRequest) -> DescribeLogDirsResponse:
        parts = broker.partitions
        logs = parts.logs
        wanted: set[tuple[str, int]] | None = None
        if req.topics is not None:
            wanted = {(t.topic, i) for t in req.topics for i in t.partitions}
        # log dir -> topic -> partitions
        found: dict[str, dict[str, list[DescribeLogDirsPartition]]] = {d: {} for d in logs.dirs}
        for key, p in sorted(parts.partitions.items()):
            if wanted is not None and key not in wanted:
                continue
            plog = p.log
            found.setdefault(logs.dir_of(plog), {}).setdefault(key[0], []).append(
                DescribeLogDirsPartition(
                    partition_index=key[1],
                    partition_size=plog.size_bytes,
                    # how far this replica's log is behind the high watermark it knows
                    offset_lag=max(plog.high_watermark - plog.log_end_offset, 0),
                    is_future_key=False,
                )
            )
            future = logs.futures.get(key)
            if future is not None:  # a copy moving to another dir: how far behind it is
                found.setdefault(logs.dir_of(future), {}).setdefault(key[0], []).append(
                    DescribeLogDirsPartition(
                        partition_index=key[1],
                        partition_size=future.size_bytes,
                        offset_lag=max(plog.log_end_offset - future.log_end_offset, 0),
                        is_future_key=True,
                    )
                )
        results = []
        for path, topics in found.items():
            code = ErrorCode.KAFKA_STORAGE_ERROR if path in logs.offline_dirs else 0
            total = usable = -1
            if not code:
                try:
                    st = os.statvfs(path)
                    total, usable = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
                except OSError:
                    code = ErrorCode.KAFKA_STORAGE_ERROR
            results.append(
                DescribeLogDirsResult(
                    error_code=code,
                    log_dir=path,
                    topics=[]
                    if code
                    else [DescribeLogDirsTopic(name=n, partitions=ps) for n, ps in topics.items()],
                    total_bytes=total,
                    usable_bytes=usable,
                )
            )
        return DescribeLogDirsResponse(throttle_time_ms=0, error_code=0, results=results)

    async def alter(
        ctx: RequestContext, req: AlterReplicaLogDirsRequest
    ) -> AlterReplicaLogDirsResponse:
        mover = broker.log_dir_moves
        assert mover is not None
        by_topic: dict[str, list[AlterReplicaLogDirPartitionResult]] = {}
        for target in req.dirs:
            for t in target.topics:
                out = by_topic.setdefault(t.name, [])
                for i in t.partitions:
                    code = mover.request(t.name, i, target.path)
                    out.append(
                        AlterReplicaLogDirPartitionResult(partition_index=i, error_code=code)
                    )
        return AlterReplicaLogDirsResponse(
            throttle_time_ms=0,
            results=[
                AlterReplicaLogDirTopicResult(topic_name=n, partitions=ps)
                for n, ps in by_topic.items()
            ],
        )

    d.register(DESCRIBE_KEY, 0, 4, describe)
    d.register(ALTER_KEY, 0, 2, alter)
