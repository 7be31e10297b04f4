"""Topic administration: CreateTopics, DeleteTopics, CreatePartitions, DeleteRecords."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from shazamq.broker import topic_configs
from shazamq.broker.log.errors import LogError
from shazamq.protocol.errors import ErrorCode, KafkaError
from shazamq.protocol.messages.create_partitions_request import CreatePartitionsRequest
from shazamq.protocol.messages.create_partitions_response import (
    CreatePartitionsResponse,
    CreatePartitionsTopicResult,
)
from shazamq.protocol.messages.create_topics_request import CreateTopicsRequest
from shazamq.protocol.messages.create_topics_response import (
    CreatableTopicConfigs,
    CreatableTopicResult,
    CreateTopicsResponse,
)
from shazamq.protocol.messages.delete_records_request import DeleteRecordsRequest
from shazamq.protocol.messages.delete_records_response import (
    DeleteRecordsPartitionResult,
    DeleteRecordsResponse,
    DeleteRecordsTopicResult,
)
from shazamq.protocol.messages.delete_topics_request import DeleteTopicsRequest
from shazamq.protocol.messages.delete_topics_response import (
    DeletableTopicResult,
    DeleteTopicsResponse,
)

from .configs import describe_topic_configs

if TYPE_CHECKING:
    from ..app import Broker
    from ..server import RequestContext
    from . import Dispatcher

ZERO_UUID = uuid.UUID(int=0)


def register(d: Dispatcher, broker: Broker) -> None:
    parts = broker.partitions

    async def create_topics(ctx: RequestContext, req: CreateTopicsRequest) -> CreateTopicsResponse:
        results = []
        seen: set[str] = set()
        names = [t.name for t in req.topics]
        requested = 0  # partitions accepted so far in this request (the per-request limit)
        for t in req.topics:
            res = CreatableTopicResult(name=t.name, error_code=0)
            results.append(res)
            if names.count(t.name) > 1:
                res.error_code = ErrorCode.INVALID_REQUEST
                res.error_message = f"topic {t.name!r} appears more than once in the request"
                continue
            seen.add(t.name)
            partitions = t.num_partitions
            rf = t.replication_factor
            assignment: list[list[int]] | None = None
            if t.assignments:
                if partitions != -1 or rf != -1:
                    res.error_code = ErrorCode.INVALID_REQUEST
                    res.error_message = "give either assignments or partitions/replication"
                    continue
                partitions = len(t.assignments)
                rf = len(t.assignments[0].broker_ids)
                known = (
                    set(broker.cluster.state.brokers)
                    if broker.cluster is not None
                    else {broker.node_id}
                )
                bad = [b for a in t.assignments for b in a.broker_ids if b not in known]
                if bad:
                    res.error_code = ErrorCode.INVALID_REPLICA_ASSIGNMENT
                    res.error_message = f"unknown broker ids {sorted(set(bad))}"
                    continue
                assignment = [
                    list(a.broker_ids)
                    for a in sorted(t.assignments, key=lambda a: a.partition_index)
                ]
            if partitions == -1:
                partitions = broker.config.broker.default_partitions
            if rf == -1:
                rf = broker.config.replication.default_replication_factor
            configs: dict[str, str] = {}
            for c in t.configs:
                if c.value is not None:
                    configs[c.name] = c.value
            try:
                if topic_configs.MIRROR_SOURCE in configs:
                    raise KafkaError(
                        ErrorCode.INVALID_CONFIG,
                        f"{topic_configs.MIRROR_SOURCE} is set by mirroring only",
                    )
                parts.validate_new_topic(
                    t.name, partitions, rf, configs, already_in_request=requested
                )
                requested += partitions
                if req.validate_only:
                    info = None
                else:
                    info = await parts.create_topic(
                        t.name, partitions, rf, configs, assignment=assignment
                    )
            except KafkaError as exc:
                res.error_code = exc.code
                res.error_message = exc.message
                continue
            res.num_partitions = partitions
            res.replication_factor = rf
            if info is not None:
                res.topic_id = info.uuid
                res.configs = [
                    CreatableTopicConfigs(
                        name=e.name,
                        value=e.value,
                        read_only=e.read_only,
                        config_source=e.config_source,
                        is_sensitive=False,
                    )
                    for e in describe_topic_configs(broker, info, None, False, False)
                ]
        return CreateTopicsResponse(throttle_time_ms=0, topics=results)

    async def delete_topics(ctx: RequestContext, req: DeleteTopicsRequest) -> DeleteTopicsResponse:
        wanted: list[tuple[str | None, uuid.UUID]] = (
            [(t.name, t.topic_id) for t in req.topics]
            if ctx.api_version >= 6
            else [(n, ZERO_UUID) for n in req.topic_names]
        )
        results = []
        for name, topic_id in wanted:
            res = DeletableTopicResult(name=name, topic_id=topic_id, error_code=0)
            results.append(res)
            if name is None:
                info = parts.topic_by_id(topic_id)
                if info is None:
                    res.error_code = ErrorCode.UNKNOWN_TOPIC_ID
                    continue
                name = res.name = info.name
            try:
                info = await parts.delete_topic(name)
                res.topic_id = info.uuid
                broker.metrics.forget_topic(name)
            except KafkaError as exc:
                res.error_code = exc.code
                res.error_message = exc.message
        return DeleteTopicsResponse(throttle_time_ms=0, responses=results)

    async def create_partitions(
        ctx: RequestContext, req: CreatePartitionsRequest
    ) -> CreatePartitionsResponse:
        results = []
        requested = 0  # partitions added so far in this request (the per-request limit)
        for t in req.topics:
            res = CreatePartitionsTopicResult(name=t.name, error_code=0)
            results.append(res)
            try:
                info = parts.validate_partition_increase(
                    t.name, t.count, already_in_request=requested
                )
                requested += t.count - info.partitions
                if t.assignments is not None and len(t.assignments) != t.count - info.partitions:
                    raise KafkaError(
                        ErrorCode.INVALID_REPLICA_ASSIGNMENT,
                        "one assignment is needed per new partition",
                    )
                assignment = None
                if t.assignments is not None and broker.cluster is not None:
                    assignment = [list(a.broker_ids) for a in t.assignments]
                    broker.cluster.check_assignment(assignment)
                if not req.validate_only:
                    await parts.add_partitions(t.name, t.count, assignment)
            except KafkaError as exc:
                res.error_code = exc.code
                res.error_message = exc.message
        return CreatePartitionsResponse(throttle_time_ms=0, results=results)

    async def delete_records(
        ctx: RequestContext, req: DeleteRecordsRequest
    ) -> DeleteRecordsResponse:
        topics = []
        for t in req.topics:
            out = []
            for rp in t.partitions:
                res = DeleteRecordsPartitionResult(
                    partition_index=rp.partition_index, low_watermark=-1, error_code=0
                )
                out.append(res)
                p = parts.get(t.name, rp.partition_index)
                if p is None or not p.is_leader:
                    # in a cluster, only the leader moves the log start; followers follow
                    res.error_code = (
                        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                        if p is None and broker.metadata.get(t.name) is None
                        else ErrorCode.KAFKA_STORAGE_ERROR
                        if p is None and (t.name, rp.partition_index) in parts.offline
                        else ErrorCode.NOT_LEADER_OR_FOLLOWER
                    )
                    continue
                offset = rp.offset
                if offset == -1:  # "up to the high watermark"
                    offset = p.log.high_watermark
                if offset < 0 or offset > p.log.high_watermark:
                    res.error_code = ErrorCode.OFFSET_OUT_OF_RANGE
                    continue
                try:
                    p.log.delete_records_before(offset)
                except LogError as exc:  # the log closed or its disk failed (offline)
                    res.error_code = exc.error_code
                    continue
                res.low_watermark = p.log.log_start_offset
                if broker.tier is not None:  # the bucket's part of the log goes too
                    await broker.tier.delete_records(p, offset)
                    res.low_watermark = broker.tier.log_start(p)
            topics.append(DeleteRecordsTopicResult(name=t.name, partitions=out))
        return DeleteRecordsResponse(throttle_time_ms=0, topics=topics)

    d.register(19, 0, 7, create_topics)
    d.register(20, 0, 6, delete_topics)
    d.register(37, 0, 3, create_partitions)
    d.register(21, 0, 2, delete_records)
