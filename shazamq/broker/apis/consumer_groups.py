"""Consumer group APIs of the KIP-848 protocol (semantics in groups/consumer.py).

==========================  ========  ===========================================
API (key)                   versions  notes
==========================  ========  ===========================================
ConsumerGroupHeartbeat 68   0-1       v1: the client names its member id, regexes
ConsumerGroupDescribe 69    0
==========================  ========  ===========================================

Offsets are committed and fetched with member epochs through OffsetCommit v9 and
OffsetFetch v9 (apis/groups.py), ListGroups v5 filters by type.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.consumer_group_describe_request import (
    ConsumerGroupDescribeRequest,
)
from shazamq.protocol.messages.consumer_group_describe_response import (
    Assignment as DescribedAssignment,
)
from shazamq.protocol.messages.consumer_group_describe_response import (
    ConsumerGroupDescribeResponse,
    DescribedGroup,
    Member,
)
from shazamq.protocol.messages.consumer_group_describe_response import (
    TopicPartitions as DescribedTopicPartitions,
)
from shazamq.protocol.messages.consumer_group_heartbeat_request import (
    ConsumerGroupHeartbeatRequest,
)
from shazamq.protocol.messages.consumer_group_heartbeat_response import (
    Assignment,
    ConsumerGroupHeartbeatResponse,
    TopicPartitions,
)

from ..groups.consumer import DEFAULT_ASSIGNOR, HeartbeatArgs
from .groups import _client_host

A = TypeVar("A")

if TYPE_CHECKING:
    from ..app import Broker
    from ..groups.assignors import Assignment as NamedAssignment
    from ..server import RequestContext
    from . import Dispatcher

__all__ = ["describe_assignment", "register"]

# ConsumerGroupDescribe authorized operations with no authorizer: READ, DELETE, DESCRIBE
_GROUP_OPERATIONS = (1 << 3) | (1 << 6) | (1 << 8)
_NOT_REQUESTED = -(2**31)


def describe_assignment(
    broker: Broker,
    assignment: Mapping[str, Iterable[int]],
    assignment_cls: type[A],
    partitions_cls: Callable[..., Any],
) -> A:
    """A member's assignment by topic name as a describe response states it (topic id,
    name, sorted partitions; topics deleted meanwhile left out). ConsumerGroupDescribe
    and ShareGroupDescribe have the same shape in classes of their own, passed here."""
    topics = broker.metadata.topics
    return assignment_cls(
        topic_partitions=[
            partitions_cls(topic_id=info.uuid, topic_name=name, partitions=sorted(parts))
            for name, parts in sorted(assignment.items())
            if (info := topics.get(name)) is not None
        ]
    )


def register(d: Dispatcher, broker: Broker) -> None:
    coordinator = broker.groups

    async def heartbeat(
        ctx: RequestContext, req: ConsumerGroupHeartbeatRequest
    ) -> ConsumerGroupHeartbeatResponse:
        result = await coordinator.consumer_heartbeat(
            HeartbeatArgs(
                group_id=req.group_id,
                member_id=req.member_id,
                member_epoch=req.member_epoch,
                instance_id=req.instance_id,
                rack_id=req.rack_id,
                rebalance_timeout_ms=req.rebalance_timeout_ms,
                subscribed_topic_names=req.subscribed_topic_names,
                subscribed_topic_regex=req.subscribed_topic_regex if ctx.api_version >= 1 else None,
                server_assignor=req.server_assignor,
                owned=(
                    None
                    if req.topic_partitions is None
                    else [(tp.topic_id, list(tp.partitions)) for tp in req.topic_partitions]
                ),
                client_id=ctx.client_id or "",
                client_host=_client_host(ctx),
                version=ctx.api_version,
            )
        )
        return ConsumerGroupHeartbeatResponse(
            error_code=result.error,
            error_message=result.message,
            member_id=result.member_id,
            member_epoch=result.member_epoch,
            heartbeat_interval_ms=result.heartbeat_interval_ms,
            assignment=(
                None
                if result.assignment is None
                else Assignment(
                    topic_partitions=[
                        TopicPartitions(topic_id=tid, partitions=parts)
                        for tid, parts in result.assignment.items()
                    ]
                )
            ),
        )

    def described(assignment: NamedAssignment) -> DescribedAssignment:
        return describe_assignment(
            broker, assignment, DescribedAssignment, DescribedTopicPartitions
        )

    async def describe(
        ctx: RequestContext, req: ConsumerGroupDescribeRequest
    ) -> ConsumerGroupDescribeResponse:
        ops = _GROUP_OPERATIONS if req.include_authorized_operations else _NOT_REQUESTED
        out = []
        for gid in req.group_ids:
            status = coordinator._key_status(gid)
            group = coordinator.consumer_groups.get(gid)
            if status or group is None:
                code = status or int(ErrorCode.GROUP_ID_NOT_FOUND)
                message = None if status else f"Group {gid} not found."
                if not status and gid in coordinator.groups:
                    message = f"Group {gid} is not a consumer group."
                out.append(
                    DescribedGroup(
                        error_code=code,
                        error_message=message,
                        group_id=gid,
                        authorized_operations=ops,
                    )
                )
                continue
            members = [
                Member(
                    member_id=m.member_id,
                    instance_id=m.instance_id,
                    rack_id=m.rack_id,
                    member_epoch=m.member_epoch,
                    client_id=m.client_id,
                    client_host=m.client_host,
                    subscribed_topic_names=list(m.subscribed_topic_names),
                    subscribed_topic_regex=m.subscribed_topic_regex,
                    assignment=described(m.assigned),
                    target_assignment=described(group.target.get(m.member_id, {})),
                )
                for m in group.members.values()
            ]
            out.append(
                DescribedGroup(
                    group_id=gid,
                    group_state=group.state,
                    group_epoch=group.group_epoch,
                    assignment_epoch=group.target_epoch,
                    assignor_name=group.preferred_assignor(DEFAULT_ASSIGNOR),
                    members=members,
                    authorized_operations=ops,
                )
            )
        return ConsumerGroupDescribeResponse(groups=out)

    d.register(68, 0, 1, heartbeat)
    d.register(69, 0, 0, describe)
