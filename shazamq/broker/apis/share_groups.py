"""Share group APIs of KIP-932 (semantics in groups/share_coordinator.py).

============================  ========  ===========================================
API (key)                     versions  notes
============================  ========  ===========================================
ShareGroupHeartbeat 76        0-1       v1: the client names its member id
ShareGroupDescribe 77         0-1
ShareFetch 78                 0-2       v1: MaxRecords, the lock timeout answered
ShareAcknowledge 79           0-2       v2: RENEW acknowledgements
DescribeShareGroupOffsets 90  0-1       v1: the lag (semantics in groups/share_offsets.py)
AlterShareGroupOffsets 91     0
DeleteShareGroupOffsets 92    0
============================  ========  ===========================================

ListGroups, DescribeGroups and DeleteGroups know share groups (apis/groups.py), and the
group settings are read and changed through DescribeConfigs / IncrementalAlterConfigs on
GROUP resources (apis/configs.py).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from shazamq.protocol.messages.alter_share_group_offsets_request import (
    AlterShareGroupOffsetsRequest,
)
from shazamq.protocol.messages.alter_share_group_offsets_response import (
    AlterShareGroupOffsetsResponse,
    AlterShareGroupOffsetsResponsePartition,
    AlterShareGroupOffsetsResponseTopic,
)
from shazamq.protocol.messages.delete_share_group_offsets_request import (
    DeleteShareGroupOffsetsRequest,
)
from shazamq.protocol.messages.delete_share_group_offsets_response import (
    DeleteShareGroupOffsetsResponse,
    DeleteShareGroupOffsetsResponseTopic,
)
from shazamq.protocol.messages.describe_share_group_offsets_request import (
    DescribeShareGroupOffsetsRequest,
)
from shazamq.protocol.messages.describe_share_group_offsets_response import (
    DescribeShareGroupOffsetsResponse,
    DescribeShareGroupOffsetsResponseGroup,
    DescribeShareGroupOffsetsResponsePartition,
    DescribeShareGroupOffsetsResponseTopic,
)
from shazamq.protocol.messages.share_acknowledge_request import ShareAcknowledgeRequest
from shazamq.protocol.messages.share_acknowledge_response import (
    LeaderIdAndEpoch as AckLeader,
)
from shazamq.protocol.messages.share_acknowledge_response import (
    PartitionData as AckPartitionData,
)
from shazamq.protocol.messages.share_acknowledge_response import (
    ShareAcknowledgeResponse,
    ShareAcknowledgeTopicResponse,
)
from shazamq.protocol.messages.share_fetch_request import ShareFetchRequest
from shazamq.protocol.messages.share_fetch_response import (
    AcquiredRecords,
    LeaderIdAndEpoch,
    PartitionData,
    ShareFetchableTopicResponse,
    ShareFetchResponse,
)
from shazamq.protocol.messages.share_group_describe_request import ShareGroupDescribeRequest
from shazamq.protocol.messages.share_group_describe_response import (
    Assignment as DescribedAssignment,
)
from shazamq.protocol.messages.share_group_describe_response import (
    DescribedGroup,
    Member,
    ShareGroupDescribeResponse,
)
from shazamq.protocol.messages.share_group_describe_response import (
    TopicPartitions as DescribedTopicPartitions,
)
from shazamq.protocol.messages.share_group_heartbeat_request import ShareGroupHeartbeatRequest
from shazamq.protocol.messages.share_group_heartbeat_response import (
    Assignment,
    ShareGroupHeartbeatResponse,
    TopicPartitions,
)

from ..groups.share_coordinator import AckBatch, PartitionFetch
from ..groups.share_offsets import ShareOffsets, TopicOffsets
from ..server import ON_CLOSE
from .consumer_groups import describe_assignment
from .groups import _client_host

if TYPE_CHECKING:
    from ..app import Broker
    from ..server import RequestContext
    from . import Dispatcher

__all__ = ["register"]

# authorized operations with no authorizer: READ, DELETE, DESCRIBE, DESCRIBE_CONFIGS,
# ALTER_CONFIGS
_GROUP_OPERATIONS = (1 << 3) | (1 << 6) | (1 << 8) | (1 << 10) | (1 << 11)
_NOT_REQUESTED = -(2**31)
_DEFAULT_MAX_RECORDS = 500  # v0 has no MaxRecords
_SESSIONS = "share_sessions"


def _by_topic(parts: list[PartitionFetch]) -> dict[uuid.UUID, list[PartitionFetch]]:
    out: dict[uuid.UUID, list[PartitionFetch]] = {}
    for pf in parts:
        out.setdefault(pf.topic_id, []).append(pf)
    return out


def register(d: Dispatcher, broker: Broker) -> None:
    share = broker.share

    async def heartbeat(
        ctx: RequestContext, req: ShareGroupHeartbeatRequest
    ) -> ShareGroupHeartbeatResponse:
        r = await share.heartbeat(
            req.group_id,
            req.member_id,
            req.member_epoch,
            req.rack_id,
            req.subscribed_topic_names,
            ctx.client_id or "",
            _client_host(ctx),
            ctx.api_version,
        )
        return ShareGroupHeartbeatResponse(
            error_code=r.error,
            error_message=r.message,
            member_id=r.member_id,
            member_epoch=r.member_epoch,
            heartbeat_interval_ms=r.heartbeat_interval_ms,
            assignment=(
                None
                if r.assignment is None
                else Assignment(
                    topic_partitions=[
                        TopicPartitions(topic_id=tid, partitions=ps)
                        for tid, ps in r.assignment.items()
                    ]
                )
            ),
        )

    def described(assignment: dict[str, frozenset[int]]) -> DescribedAssignment:
        return describe_assignment(
            broker, assignment, DescribedAssignment, DescribedTopicPartitions
        )

    async def describe(
        ctx: RequestContext, req: ShareGroupDescribeRequest
    ) -> ShareGroupDescribeResponse:
        ops = _GROUP_OPERATIONS if req.include_authorized_operations else _NOT_REQUESTED
        out = []
        for gid in req.group_ids:
            code, message, g = share.describe(gid)
            if g is None:
                out.append(
                    DescribedGroup(
                        error_code=code,
                        error_message=message,
                        group_id=gid,
                        authorized_operations=ops,
                    )
                )
                continue
            out.append(
                DescribedGroup(
                    group_id=gid,
                    group_state=g.state,
                    group_epoch=g.group_epoch,
                    assignment_epoch=g.assignment_epoch,
                    assignor_name="simple",
                    members=[
                        Member(
                            member_id=m.member_id,
                            rack_id=m.rack_id,
                            member_epoch=m.member_epoch,
                            client_id=m.client_id,
                            client_host=m.client_host,
                            subscribed_topic_names=list(m.subscribed_topic_names),
                            assignment=described(m.assigned),
                        )
                        for m in g.members.values()
                    ],
                    authorized_operations=ops,
                )
            )
        return ShareGroupDescribeResponse(groups=out)

    def leader(epoch: int) -> tuple[int, int]:
        return (broker.node_id, epoch) if epoch >= 0 else (-1, -1)

    def connection_sessions(ctx: RequestContext) -> dict[Any, Any]:
        """The share sessions this connection opened; closed with it."""
        owned = ctx.session.attrs.get(_SESSIONS)
        if owned is None:
            owned = ctx.session.attrs[_SESSIONS] = {}
            ctx.session.attrs.setdefault(ON_CLOSE, []).append(
                lambda: share.connection_closed(owned)
            )
        return owned  # type: ignore[no-any-return]

    async def share_fetch(ctx: RequestContext, req: ShareFetchRequest) -> ShareFetchResponse:
        v = ctx.api_version
        requested = [
            (
                t.topic_id,
                p.partition_index,
                [
                    AckBatch(b.first_offset, b.last_offset, list(b.acknowledge_types))
                    for b in p.acknowledgement_batches
                ],
            )
            for t in req.topics
            for p in t.partitions
        ]
        forgotten = [(t.topic_id, p) for t in req.forgotten_topics_data for p in t.partitions]
        max_records = req.max_records if v >= 1 else _DEFAULT_MAX_RECORDS
        code, message, parts = await share.share_fetch(
            req.group_id,
            req.member_id,
            req.share_session_epoch,
            req.max_wait_ms,
            req.min_bytes,
            req.max_bytes,
            max_records,
            requested,
            forgotten,
            v,
            ctx.received_at,
            connection_sessions(ctx),
        )
        lock_ms = share.settings(req.group_id).record_lock_duration_ms if req.group_id else 0
        responses = []
        for tid, pfs in _by_topic(parts).items():
            out = []
            for pf in pfs:
                lid, lepoch = leader(pf.leader_epoch)
                out.append(
                    PartitionData(
                        partition_index=pf.partition,
                        error_code=pf.error,
                        error_message=pf.message,
                        acknowledge_error_code=pf.ack_error,
                        acknowledge_error_message=pf.ack_message,
                        current_leader=LeaderIdAndEpoch(leader_id=lid, leader_epoch=lepoch),
                        records=pf.records,
                        acquired_records=[
                            AcquiredRecords(first_offset=f, last_offset=last, delivery_count=dc)
                            for f, last, dc in pf.acquired
                        ],
                    )
                )
            responses.append(ShareFetchableTopicResponse(topic_id=tid, partitions=out))
        return ShareFetchResponse(
            error_code=code,
            error_message=message,
            acquisition_lock_timeout_ms=lock_ms if v >= 1 else 0,
            responses=responses,
        )

    async def share_acknowledge(
        ctx: RequestContext, req: ShareAcknowledgeRequest
    ) -> ShareAcknowledgeResponse:
        v = ctx.api_version
        requested = [
            (
                t.topic_id,
                p.partition_index,
                [
                    AckBatch(b.first_offset, b.last_offset, list(b.acknowledge_types))
                    for b in p.acknowledgement_batches
                ],
            )
            for t in req.topics
            for p in t.partitions
        ]
        code, message, parts = await share.share_acknowledge(
            req.group_id, req.member_id, req.share_session_epoch, requested, v
        )
        lock_ms = share.settings(req.group_id).record_lock_duration_ms if req.group_id else 0
        return ShareAcknowledgeResponse(
            error_code=code,
            error_message=message,
            acquisition_lock_timeout_ms=lock_ms if v >= 2 else 0,
            responses=[
                ShareAcknowledgeTopicResponse(
                    topic_id=tid,
                    partitions=[
                        AckPartitionData(
                            partition_index=pf.partition,
                            error_code=pf.error,
                            error_message=pf.message,
                            current_leader=AckLeader(leader_id=-1, leader_epoch=-1),
                        )
                        for pf in pfs
                    ],
                )
                for tid, pfs in _by_topic(parts).items()
            ],
        )

    offsets = ShareOffsets(share)

    def described_offsets(
        topics: list[TopicOffsets],
    ) -> list[DescribeShareGroupOffsetsResponseTopic]:
        return [
            DescribeShareGroupOffsetsResponseTopic(
                topic_name=t.name,
                topic_id=t.topic_id,
                partitions=[
                    DescribeShareGroupOffsetsResponsePartition(
                        partition_index=p.partition,
                        start_offset=p.start_offset,
                        leader_epoch=p.leader_epoch,
                        lag=p.lag,
                        error_code=p.error,
                        error_message=p.message,
                    )
                    for p in t.partitions
                ],
            )
            for t in topics
        ]

    async def describe_offsets(
        ctx: RequestContext, req: DescribeShareGroupOffsetsRequest
    ) -> DescribeShareGroupOffsetsResponse:
        out = []
        for g in req.groups:
            asked = (
                None if g.topics is None else [(t.topic_name, list(t.partitions)) for t in g.topics]
            )
            code, message, topics = await offsets.describe(g.group_id, asked)
            out.append(
                DescribeShareGroupOffsetsResponseGroup(
                    group_id=g.group_id,
                    topics=described_offsets(topics),
                    error_code=code,
                    error_message=message,
                )
            )
        return DescribeShareGroupOffsetsResponse(groups=out)

    async def alter_offsets(
        ctx: RequestContext, req: AlterShareGroupOffsetsRequest
    ) -> AlterShareGroupOffsetsResponse:
        asked = [
            (t.topic_name, [(p.partition_index, p.start_offset) for p in t.partitions])
            for t in req.topics
        ]
        code, message, topics = await offsets.alter(req.group_id, asked)
        return AlterShareGroupOffsetsResponse(
            error_code=code,
            error_message=message,
            responses=[
                AlterShareGroupOffsetsResponseTopic(
                    topic_name=t.name,
                    topic_id=t.topic_id,
                    partitions=[
                        AlterShareGroupOffsetsResponsePartition(
                            partition_index=p.partition, error_code=p.error, error_message=p.message
                        )
                        for p in t.partitions
                    ],
                )
                for t in topics
            ],
        )

    async def delete_offsets(
        ctx: RequestContext, req: DeleteShareGroupOffsetsRequest
    ) -> DeleteShareGroupOffsetsResponse:
        code, message, topics = await offsets.delete(
            req.group_id, [t.topic_name for t in req.topics]
        )
        return DeleteShareGroupOffsetsResponse(
            error_code=code,
            error_message=message,
            responses=[
                DeleteShareGroupOffsetsResponseTopic(
                    topic_name=t.name,
                    topic_id=t.topic_id,
                    error_code=t.error,
                    error_message=t.message,
                )
                for t in topics
            ],
        )

    d.register(76, 0, 1, heartbeat)
    d.register(77, 0, 1, describe)
    d.register(78, 0, 2, share_fetch)
    d.register(79, 0, 2, share_acknowledge)
    d.register(90, 0, 1, describe_offsets)
    d.register(91, 0, 0, alter_offsets)
    d.register(92, 0, 0, delete_offsets)
