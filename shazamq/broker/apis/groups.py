"""Group APIs: FindCoordinator, the classic rebalance protocol and committed offsets.

Each handler translates between a request version's fields and the group coordinator
(:mod:`shazamq.broker.groups`), which holds all the semantics. The version ranges
registered here are what ApiVersions advertises:

==================  ========  ====================================================
API (key)           versions  notes
==================  ========  ====================================================
FindCoordinator 10  0-6       v4+ batched keys; key types 0 (group), 1 (transaction),
                              v6 2 (share-partition, group:topic id:partition)
OffsetCommit 8      0-9       v1 commit timestamps, v2-4 retention time
OffsetFetch 9       0-9       v7 require_stable, v8+ several groups per request,
                              v9 member id and epoch of consumer groups
JoinGroup 11        0-9       v4+ MEMBER_ID_REQUIRED round, v5+ static members,
                              v9 skip_assignment for a rejoining static leader
Heartbeat 12        0-4
LeaveGroup 13       0-5       v3+ batched (static) members
SyncGroup 14        0-5       v5 protocol type/name checks
DescribeGroups 15   0-5
ListGroups 16       0-5       v4 state filter, v5 type filter (classic, consumer)
DeleteGroups 42     0-2
OffsetDelete 47     0
==================  ========  ====================================================

FindCoordinator names this broker on a single broker (once its coordinators loaded); the
first lookup of a group or transactional id creates ``__consumer_offsets`` or
``__transaction_state`` (the share coordinator creates ``__share_group_state`` itself).
In a cluster it names the broker leading the key's partition of ``__consumer_offsets``,
``__transaction_state`` or ``__share_group_state``, with the address that broker
registered; the first lookup creates the topic, and until it exists with a leader for
that partition the answer is COORDINATOR_NOT_AVAILABLE, which clients retry.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Iterable
from typing import TYPE_CHECKING

from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.delete_groups_request import DeleteGroupsRequest
from shazamq.protocol.messages.delete_groups_response import (
    DeletableGroupResult,
    DeleteGroupsResponse,
)
from shazamq.protocol.messages.describe_groups_request import DescribeGroupsRequest
from shazamq.protocol.messages.describe_groups_response import (
    DescribedGroup,
    DescribedGroupMember,
    DescribeGroupsResponse,
)
from shazamq.protocol.messages.find_coordinator_request import FindCoordinatorRequest
from shazamq.protocol.messages.find_coordinator_response import (
    Coordinator,
    FindCoordinatorResponse,
)
from shazamq.protocol.messages.heartbeat_request import HeartbeatRequest
from shazamq.protocol.messages.heartbeat_response import HeartbeatResponse
from shazamq.protocol.messages.join_group_request import JoinGroupRequest
from shazamq.protocol.messages.join_group_response import (
    JoinGroupResponse,
    JoinGroupResponseMember,
)
from shazamq.protocol.messages.leave_group_request import LeaveGroupRequest
from shazamq.protocol.messages.leave_group_response import LeaveGroupResponse, MemberResponse
from shazamq.protocol.messages.list_groups_request import ListGroupsRequest
from shazamq.protocol.messages.list_groups_response import ListedGroup, ListGroupsResponse
from shazamq.protocol.messages.offset_commit_request import OffsetCommitRequest
from shazamq.protocol.messages.offset_commit_response import (
    OffsetCommitResponse,
    OffsetCommitResponsePartition,
    OffsetCommitResponseTopic,
)
from shazamq.protocol.messages.offset_delete_request import OffsetDeleteRequest
from shazamq.protocol.messages.offset_delete_response import (
    OffsetDeleteResponse,
    OffsetDeleteResponsePartition,
    OffsetDeleteResponseTopic,
)
from shazamq.protocol.messages.offset_fetch_request import OffsetFetchRequest
from shazamq.protocol.messages.offset_fetch_response import (
    OffsetFetchResponse,
    OffsetFetchResponseGroup,
    OffsetFetchResponsePartition,
    OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic,
    OffsetFetchResponseTopics,
)
from shazamq.protocol.messages.sync_group_request import SyncGroupRequest
from shazamq.protocol.messages.sync_group_response import SyncGroupResponse

from ..groups.coordinator import FetchedOffset, OffsetCommit

if TYPE_CHECKING:
    from ..app import Broker
    from ..server import RequestContext
    from . import Dispatcher

__all__ = ["register"]

COORDINATOR_TYPE_GROUP = 0
COORDINATOR_TYPE_TRANSACTION = 1
COORDINATOR_TYPE_SHARE = 2  # a share-partition's key (FindCoordinator v6+, KIP-932)
# DescribeGroups authorized operations with no authorizer: READ, DELETE, DESCRIBE.
_GROUP_OPERATIONS = (1 << 3) | (1 << 6) | (1 << 8)
_NOT_REQUESTED = -(2**31)
# How long a single broker's FindCoordinator waits for the creation of an internal topic
# it started before answering COORDINATOR_NOT_AVAILABLE (the creation goes on).
FIRST_USE_WAIT_S = 5.0

TopicPartition = tuple[str, int]


def _client_host(ctx: RequestContext) -> str:
    peer = ctx.session.peer
    host = peer.rsplit(":", 1)[0] if ":" in peer else peer
    return "/" + host.strip("[]")


def _by_topic(
    results: Iterable[tuple[TopicPartition, int]],
) -> dict[str, list[tuple[int, int]]]:
    out: dict[str, list[tuple[int, int]]] = {}
    for (topic, partition), code in results:
        out.setdefault(topic, []).append((partition, code))
    return out


def _nowhere(code: int, message: str) -> tuple[int, str | None, int, str, int]:
    return int(code), message, -1, "", -1


def _is_share_key(key: str) -> bool:
    """Whether ``key`` is Kafka's share-partition key ``group:topic id:partition`` (the
    topic id in Kafka's unpadded URL-safe base64)."""
    parts = key.rsplit(":", 2)
    if len(parts) != 3 or not parts[0] or not parts[2].isdigit():
        return False
    try:
        return len(base64.urlsafe_b64decode(parts[1] + "==")) == 16
    except (ValueError, binascii.Error):
        return False


def register(d: Dispatcher, broker: Broker) -> None:
    coordinator = broker.groups

    # -- FindCoordinator --------------------------------------------------------------

    async def locate(
        key: str, key_type: int, version: int
    ) -> tuple[int, str | None, int, str, int]:
        """(error, message, node id, host, port) of the coordinator of ``key``."""
        if key_type == COORDINATOR_TYPE_SHARE and version >= 6:
            # the share coordinator of a share-partition: the leader of the key's
            # __share_group_state partition (groups/share_state_coordinator.py)
            if not _is_share_key(key):
                return _nowhere(
                    ErrorCode.INVALID_REQUEST, f"{key!r} is not group:topic id:partition"
                )
            ready = broker.share.loaded
            topic = broker.share.store.topic
        elif key_type == COORDINATOR_TYPE_GROUP:
            ready = coordinator.loaded
            topic = coordinator.store.topic
        elif key_type == COORDINATOR_TYPE_TRANSACTION:
            ready = broker.txn.loaded
            topic = broker.txn.topic
            if not key:
                return _nowhere(ErrorCode.INVALID_REQUEST, "a transactional id must not be empty")
        else:
            return _nowhere(ErrorCode.INVALID_REQUEST, f"unknown coordinator key type {key_type}")
        cluster = broker.cluster
        if cluster is None:
            if not ready:
                return _nowhere(ErrorCode.COORDINATOR_NOT_AVAILABLE, "the coordinator is loading")
            if topic.needs_creation and key_type != COORDINATOR_TYPE_SHARE:
                # the first lookup creates the topic; a creation slower than this is
                # answered as Kafka answers it, and the client's retry finds it done
                try:
                    done = await asyncio.wait_for(topic.created(), FIRST_USE_WAIT_S)
                except TimeoutError:
                    done = False
                if not done:
                    return _nowhere(
                        ErrorCode.COORDINATOR_NOT_AVAILABLE, f"{topic.name} is being created"
                    )
            host, port = broker.advertised
            return 0, None, broker.node_id, host, port
        node = topic.coordinator_of(key)
        if node < 0:
            return _nowhere(
                ErrorCode.COORDINATOR_NOT_AVAILABLE, f"{topic.name} has no leader for this key yet"
            )
        b = cluster.state.brokers.get(node)
        if b is None or b.fenced:
            return _nowhere(ErrorCode.COORDINATOR_NOT_AVAILABLE, f"broker {node} is not available")
        return 0, None, node, b.host, b.port

    async def find_coordinator(
        ctx: RequestContext, req: FindCoordinatorRequest
    ) -> FindCoordinatorResponse:
        key_type = req.key_type if ctx.api_version >= 1 else COORDINATOR_TYPE_GROUP
        if ctx.api_version >= 4:
            coordinators = []
            for key in req.coordinator_keys:
                code, message, node, host, port = await locate(key, key_type, ctx.api_version)
                coordinators.append(
                    Coordinator(
                        key=key,
                        node_id=node,
                        host=host,
                        port=port,
                        error_code=code,
                        error_message=message,
                    )
                )
            return FindCoordinatorResponse(coordinators=coordinators)
        code, message, node, host, port = await locate(req.key, key_type, ctx.api_version)
        return FindCoordinatorResponse(
            error_code=code, error_message=message, node_id=node, host=host, port=port
        )

    # -- JoinGroup / SyncGroup / Heartbeat / LeaveGroup -------------------------------

    async def join_group(ctx: RequestContext, req: JoinGroupRequest) -> JoinGroupResponse:
        v = ctx.api_version
        args = dict(
            group_id=req.group_id,
            member_id=req.member_id,
            group_instance_id=req.group_instance_id if v >= 5 else None,
            require_known_member_id=v >= 4,
            client_id=ctx.client_id or "",
            client_host=_client_host(ctx),
            session_timeout_ms=req.session_timeout_ms,
            rebalance_timeout_ms=req.rebalance_timeout_ms if v >= 1 else -1,
            protocol_type=req.protocol_type,
            protocols=[(p.name, bytes(p.metadata)) for p in req.protocols],
        )
        if req.group_id and coordinator.is_mixed_target(req.group_id):
            # a consumer (KIP-848) group with members: the broker drives classic members
            result = await coordinator.mixed_join(**args)
        else:
            result = await coordinator.join_group(
                **args,
                supports_skip_assignment=v >= 9,
                reason=req.reason if v >= 8 else None,
            )
        protocol_name = result.protocol_name
        if protocol_name is None and v < 7:
            protocol_name = ""
        return JoinGroupResponse(
            error_code=result.error,
            generation_id=result.generation_id,
            protocol_type=result.protocol_type if v >= 7 else None,
            protocol_name=protocol_name,
            leader=result.leader,
            skip_assignment=result.skip_assignment if v >= 9 else False,
            member_id=result.member_id,
            members=[
                JoinGroupResponseMember(
                    member_id=mid, group_instance_id=iid if v >= 5 else None, metadata=meta
                )
                for mid, iid, meta in result.members
            ],
        )

    async def sync_group(ctx: RequestContext, req: SyncGroupRequest) -> SyncGroupResponse:
        v = ctx.api_version
        args = dict(
            group_id=req.group_id,
            generation_id=req.generation_id,
            member_id=req.member_id,
            group_instance_id=req.group_instance_id if v >= 3 else None,
            protocol_type=req.protocol_type if v >= 5 else None,
            protocol_name=req.protocol_name if v >= 5 else None,
        )
        if req.group_id in coordinator.consumer_groups and coordinator.coordinates(req.group_id):
            result = coordinator.mixed_sync(**args)  # the assignment is the broker's
        else:
            result = await coordinator.sync_group(
                **args, assignments={a.member_id: bytes(a.assignment) for a in req.assignments}
            )
        return SyncGroupResponse(
            error_code=result.error,
            protocol_type=result.protocol_type if v >= 5 and not result.error else None,
            protocol_name=result.protocol_name if v >= 5 and not result.error else None,
            assignment=result.assignment,
        )

    async def heartbeat(ctx: RequestContext, req: HeartbeatRequest) -> HeartbeatResponse:
        beat = (
            coordinator.mixed_heartbeat
            if req.group_id in coordinator.consumer_groups and coordinator.coordinates(req.group_id)
            else coordinator.heartbeat
        )
        code = beat(
            req.group_id,
            req.generation_id,
            req.member_id,
            req.group_instance_id if ctx.api_version >= 3 else None,
        )
        return HeartbeatResponse(error_code=code)

    async def leave_group(ctx: RequestContext, req: LeaveGroupRequest) -> LeaveGroupResponse:
        leaving = (
            [(req.member_id, None)]
            if ctx.api_version < 3
            else [(m.member_id, m.group_instance_id) for m in req.members]
        )
        if req.group_id in coordinator.consumer_groups and coordinator.coordinates(req.group_id):
            top, results = await coordinator.mixed_leave(req.group_id, leaving)
        else:
            top, results = coordinator.leave_group(req.group_id, leaving)
        if ctx.api_version < 3:
            code = top or (results[0][2] if results else 0)
            return LeaveGroupResponse(error_code=code)
        return LeaveGroupResponse(
            error_code=top,
            members=[
                MemberResponse(member_id=mid, group_instance_id=iid, error_code=code)
                for mid, iid, code in results
            ],
        )

    # -- offsets ----------------------------------------------------------------------

    async def offset_commit(ctx: RequestContext, req: OffsetCommitRequest) -> OffsetCommitResponse:
        v = ctx.api_version
        offsets: dict[TopicPartition, OffsetCommit] = {}
        for t in req.topics:
            for p in t.partitions:
                offsets[(t.name, p.partition_index)] = OffsetCommit(
                    offset=p.committed_offset,
                    leader_epoch=p.committed_leader_epoch if v >= 6 else -1,
                    metadata=p.committed_metadata,
                    commit_timestamp=p.commit_timestamp if v == 1 else -1,
                )
        results = await coordinator.commit_offsets_async(
            group_id=req.group_id,
            generation_id=req.generation_id_or_member_epoch if v >= 1 else -1,
            member_id=req.member_id if v >= 1 else "",
            group_instance_id=req.group_instance_id if v >= 7 else None,
            retention_ms=req.retention_time_ms if 2 <= v <= 4 else -1,
            offsets=offsets,
        )
        return OffsetCommitResponse(
            topics=[
                OffsetCommitResponseTopic(
                    name=topic,
                    partitions=[
                        OffsetCommitResponsePartition(partition_index=i, error_code=code)
                        for i, code in parts
                    ],
                )
                for topic, parts in _by_topic(results.items()).items()
            ]
        )

    def fetch_one(
        group_id: str, tps: list[TopicPartition] | None, require_stable: bool
    ) -> tuple[int, list[FetchedOffset]]:
        code, fetched = coordinator.fetch_offsets(group_id, tps, require_stable=require_stable)
        if code and tps is not None:
            fetched = [FetchedOffset(t, p, -1, -1, "", code) for t, p in tps]
        return code, fetched

    async def offset_fetch(ctx: RequestContext, req: OffsetFetchRequest) -> OffsetFetchResponse:
        v = ctx.api_version
        require_stable = req.require_stable if v >= 7 else False
        if v >= 8:
            groups_out = []
            for g in req.groups:
                tps = (
                    None
                    if g.topics is None
                    else [(t.name, i) for t in g.topics for i in t.partition_indexes]
                )
                code = (
                    coordinator.consumer_fetch_error(g.group_id, g.member_id, g.member_epoch)
                    if v >= 9
                    else 0
                )
                if code:
                    fetched = []
                else:
                    code, fetched = fetch_one(g.group_id, tps, require_stable)
                by_topic: dict[str, list[OffsetFetchResponsePartitions]] = {}
                for f in fetched:
                    by_topic.setdefault(f.topic, []).append(
                        OffsetFetchResponsePartitions(
                            partition_index=f.partition,
                            committed_offset=f.offset,
                            committed_leader_epoch=f.leader_epoch,
                            metadata=f.metadata,
                            error_code=f.error,
                        )
                    )
                groups_out.append(
                    OffsetFetchResponseGroup(
                        group_id=g.group_id,
                        error_code=code,
                        topics=[
                            OffsetFetchResponseTopics(name=n, partitions=ps)
                            for n, ps in by_topic.items()
                        ],
                    )
                )
            return OffsetFetchResponse(groups=groups_out)
        tps = (
            None
            if req.topics is None
            else [(t.name, i) for t in req.topics for i in t.partition_indexes]
        )
        code, fetched = fetch_one(req.group_id, tps, require_stable)
        topics: dict[str, list[OffsetFetchResponsePartition]] = {}
        for f in fetched:
            topics.setdefault(f.topic, []).append(
                OffsetFetchResponsePartition(
                    partition_index=f.partition,
                    committed_offset=f.offset,
                    committed_leader_epoch=f.leader_epoch,
                    metadata=f.metadata,
                    error_code=f.error,
                )
            )
        return OffsetFetchResponse(
            topics=[OffsetFetchResponseTopic(name=n, partitions=ps) for n, ps in topics.items()],
            error_code=code if v >= 2 else 0,
        )

    async def offset_delete(ctx: RequestContext, req: OffsetDeleteRequest) -> OffsetDeleteResponse:
        tps = [(t.name, p.partition_index) for t in req.topics for p in t.partitions]
        code, results = await coordinator.delete_offsets(req.group_id, tps)
        if code:
            return OffsetDeleteResponse(error_code=code, topics=[])
        return OffsetDeleteResponse(
            error_code=0,
            topics=[
                OffsetDeleteResponseTopic(
                    name=topic,
                    partitions=[
                        OffsetDeleteResponsePartition(partition_index=i, error_code=c)
                        for i, c in parts
                    ],
                )
                for topic, parts in _by_topic(results.items()).items()
            ],
        )

    # -- administration ---------------------------------------------------------------

    async def list_groups(ctx: RequestContext, req: ListGroupsRequest) -> ListGroupsResponse:
        v = ctx.api_version
        states = req.states_filter if v >= 4 else None
        types = req.types_filter if v >= 5 else None
        code, listed = coordinator.list_groups(states, types)
        groups = [
            ListedGroup(
                group_id=g.group_id,
                protocol_type=g.protocol_type,
                group_state=g.state,
                group_type=g.group_type,
            )
            for g in listed
        ]
        if not types or "share" in {t.lower() for t in types}:  # share groups (KIP-932)
            wanted = {s.lower() for s in states} if states else None
            groups += [
                ListedGroup(group_id=gid, protocol_type="share", group_state=st, group_type="share")
                for gid, st in broker.share.listings(wanted)
            ]
        return ListGroupsResponse(error_code=code, groups=groups)

    async def describe_groups(
        ctx: RequestContext, req: DescribeGroupsRequest
    ) -> DescribeGroupsResponse:
        v = ctx.api_version
        ops = _GROUP_OPERATIONS if v >= 3 and req.include_authorized_operations else _NOT_REQUESTED
        out = []
        for gid in req.groups:
            desc = coordinator.describe_group(gid)
            if desc.error == 0 and broker.share.is_share_group(gid):
                # a share group is described by ShareGroupDescribe, as in Kafka
                out.append(DescribedGroup(error_code=ErrorCode.GROUP_ID_NOT_FOUND, group_id=gid))
                continue
            out.append(
                DescribedGroup(
                    error_code=desc.error,
                    group_id=gid,
                    group_state=desc.state,
                    protocol_type=desc.protocol_type,
                    protocol_data=desc.protocol,
                    members=[
                        DescribedGroupMember(
                            member_id=m.member_id,
                            group_instance_id=m.group_instance_id if v >= 4 else None,
                            client_id=m.client_id,
                            client_host=m.client_host,
                            member_metadata=m.metadata,
                            member_assignment=m.assignment,
                        )
                        for m in desc.members
                    ],
                    authorized_operations=ops,
                )
            )
        return DescribeGroupsResponse(groups=out)

    async def delete_groups(ctx: RequestContext, req: DeleteGroupsRequest) -> DeleteGroupsResponse:
        share = broker.share
        results = {}
        for gid in req.groups_names:
            status = coordinator._key_status(gid)
            code = None if status else await share.delete_group(gid)
            if code is not None:
                results[gid] = code
        results.update(
            await coordinator.delete_groups(g for g in req.groups_names if g not in results)
        )
        return DeleteGroupsResponse(
            results=[DeletableGroupResult(group_id=g, error_code=c) for g, c in results.items()]
        )

    d.register(10, 0, 6, find_coordinator)
    d.register(8, 0, 9, offset_commit)
    d.register(9, 0, 9, offset_fetch)
    d.register(11, 0, 9, join_group)
    d.register(12, 0, 4, heartbeat)
    d.register(13, 0, 5, leave_group)
    d.register(14, 0, 5, sync_group)
    d.register(15, 0, 5, describe_groups)
    d.register(16, 0, 5, list_groups)
    d.register(42, 0, 2, delete_groups)
    d.register(47, 0, 0, offset_delete)
