"""Enforcing the ACLs on every API, around the handlers (``[security.authorization]``).

`install` wraps the registered handlers of the APIs below with a guard that asks the
broker's `Authorizer` before the handler runs: what the principal may not touch is taken
out of the request and answered here with Kafka's error code, and the handler sees only
the rest. So a denied produce never reaches the log, and the handlers themselves know
nothing of ACLs. With authorization off nothing is wrapped: the hot paths are unchanged.

What is asked, per API (as Kafka's KafkaApis does):

- Produce: WRITE on the transactional id (TRANSACTIONAL_ID_AUTHORIZATION_FAILED for every
  partition), WRITE per topic (TOPIC_AUTHORIZATION_FAILED).
- Fetch: from a replica id, CLUSTER_ACTION on the cluster (else every partition
  TOPIC_AUTHORIZATION_FAILED: a forged replica fetch reads nothing); from a consumer, READ
  per topic. OffsetForLeaderEpoch alike (DESCRIBE for consumers).
- Metadata: topics the principal may not DESCRIBE are left out of an all-topics answer and
  answered TOPIC_AUTHORIZATION_FAILED when named; auto-creation needs CREATE on the
  cluster or the topic. ListOffsets, DescribeProducers: DESCRIBE / READ per topic.
- Topics: CreateTopics CREATE (cluster or topic), DeleteTopics and DeleteRecords DELETE,
  CreatePartitions ALTER; Describe/Alter/IncrementalAlterConfigs DESCRIBE_CONFIGS /
  ALTER_CONFIGS on the topic, or on the cluster for broker resources.
- Groups: FindCoordinator DESCRIBE on the group or transactional id (CLUSTER_ACTION for
  a share-partition key); Join, Sync,
  Heartbeat, Leave and OffsetCommit READ on the group (OffsetCommit also READ per topic);
  OffsetFetch and DescribeGroups DESCRIBE; DeleteGroups and OffsetDelete DELETE;
  ListGroups lists the groups the principal may DESCRIBE (all with DESCRIBE on the
  cluster).
- Transactions: WRITE on the transactional id for InitProducerId, AddPartitionsToTxn,
  AddOffsetsToTxn (and READ on the group), EndTxn, TxnOffsetCommit (and READ on group and
  topics); InitProducerId without one needs IDEMPOTENT_WRITE on the cluster or WRITE on
  some topic; WriteTxnMarkers and broker-side AddPartitionsToTxn (v4+) CLUSTER_ACTION.
  DescribeTransactions / ListTransactions DESCRIBE on the transactional id.
- Share groups: ShareGroupHeartbeat READ on the group, ShareGroupDescribe DESCRIBE;
  ShareFetch and ShareAcknowledge READ on the group (GROUP_AUTHORIZATION_FAILED for the
  request) and READ per topic (TOPIC_AUTHORIZATION_FAILED per partition). GROUP config
  resources: DESCRIBE_CONFIGS / ALTER_CONFIGS on the group. DescribeShareGroupOffsets
  DESCRIBE on each group and topic (denied topics named are answered, unnamed ones left
  out); AlterShareGroupOffsets READ on the group and topics; DeleteShareGroupOffsets
  DELETE on the group and READ on the topics. The share coordinator's RPCs between
  brokers (Initialize/Read/Write/DeleteShareGroupState, ReadShareGroupStateSummary)
  CLUSTER_ACTION.
- Cluster: ElectLeaders, AlterPartitionReassignments and AlterReplicaLogDirs ALTER (the
  last answers every partition CLUSTER_AUTHORIZATION_FAILED), ListPartitionReassignments,
  DescribeLogDirs and DescribeCluster DESCRIBE, the SCRAM APIs DESCRIBE / ALTER
  (CLUSTER_AUTHORIZATION_FAILED); DescribeClientQuotas DESCRIBE_CONFIGS and
  AlterClientQuotas ALTER_CONFIGS on the cluster. The ACL APIs check for themselves
  (apis/acls.py).
- Client telemetry (GetTelemetrySubscriptions, PushTelemetry): no ACL, as in Kafka; any
  authenticated client may ask for its subscription and push.

The brokers' own principal and ``super_users`` pass every check (see `security.acl`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.add_offsets_to_txn_response import AddOffsetsToTxnResponse
from shazamq.protocol.messages.add_partitions_to_txn_response import (
    AddPartitionsToTxnPartitionResult,
    AddPartitionsToTxnResponse,
    AddPartitionsToTxnTopicResult,
)
from shazamq.protocol.messages.alter_client_quotas_response import (
    AlterClientQuotasResponse,
)
from shazamq.protocol.messages.alter_client_quotas_response import (
    EntityData as AlterQuotaEntity,
)
from shazamq.protocol.messages.alter_client_quotas_response import (
    EntryData as AlterQuotaEntry,
)
from shazamq.protocol.messages.alter_configs_response import (
    AlterConfigsResourceResponse,
    AlterConfigsResponse,
)
from shazamq.protocol.messages.alter_partition_reassignments_response import (
    AlterPartitionReassignmentsResponse,
)
from shazamq.protocol.messages.alter_replica_log_dirs_response import (
    AlterReplicaLogDirPartitionResult,
    AlterReplicaLogDirsResponse,
    AlterReplicaLogDirTopicResult,
)
from shazamq.protocol.messages.alter_share_group_offsets_response import (
    AlterShareGroupOffsetsResponse,
    AlterShareGroupOffsetsResponsePartition,
    AlterShareGroupOffsetsResponseTopic,
)
from shazamq.protocol.messages.alter_user_scram_credentials_response import (
    AlterUserScramCredentialsResponse,
    AlterUserScramCredentialsResult,
)
from shazamq.protocol.messages.consumer_group_describe_response import (
    ConsumerGroupDescribeResponse,
)
from shazamq.protocol.messages.consumer_group_describe_response import (
    DescribedGroup as ConsumerGroupDescribeGroup,
)
from shazamq.protocol.messages.consumer_group_heartbeat_response import (
    ConsumerGroupHeartbeatResponse,
)
from shazamq.protocol.messages.create_partitions_response import (
    CreatePartitionsResponse,
    CreatePartitionsTopicResult,
)
from shazamq.protocol.messages.create_topics_response import (
    CreatableTopicResult,
    CreateTopicsResponse,
)
from shazamq.protocol.messages.delete_groups_response import (
    DeletableGroupResult,
    DeleteGroupsResponse,
)
from shazamq.protocol.messages.delete_records_response import (
    DeleteRecordsPartitionResult,
    DeleteRecordsResponse,
    DeleteRecordsTopicResult,
)
from shazamq.protocol.messages.delete_share_group_offsets_response import (
    DeleteShareGroupOffsetsResponse,
    DeleteShareGroupOffsetsResponseTopic,
)
from shazamq.protocol.messages.delete_topics_response import (
    DeletableTopicResult,
    DeleteTopicsResponse,
)
from shazamq.protocol.messages.describe_client_quotas_response import (
    DescribeClientQuotasResponse,
)
from shazamq.protocol.messages.describe_cluster_response import DescribeClusterResponse
from shazamq.protocol.messages.describe_configs_response import (
    DescribeConfigsResponse,
    DescribeConfigsResult,
)
from shazamq.protocol.messages.describe_groups_response import (
    DescribedGroup,
    DescribeGroupsResponse,
)
from shazamq.protocol.messages.describe_log_dirs_response import DescribeLogDirsResponse
from shazamq.protocol.messages.describe_producers_response import (
    DescribeProducersResponse,
    PartitionResponse,
    TopicResponse,
)
from shazamq.protocol.messages.describe_share_group_offsets_response import (
    DescribeShareGroupOffsetsResponse,
    DescribeShareGroupOffsetsResponseGroup,
    DescribeShareGroupOffsetsResponsePartition,
    DescribeShareGroupOffsetsResponseTopic,
)
from shazamq.protocol.messages.describe_transactions_response import (
    DescribeTransactionsResponse,
    TransactionState,
)
from shazamq.protocol.messages.describe_user_scram_credentials_response import (
    DescribeUserScramCredentialsResponse,
)
from shazamq.protocol.messages.elect_leaders_response import ElectLeadersResponse
from shazamq.protocol.messages.end_txn_response import EndTxnResponse
from shazamq.protocol.messages.fetch_response import (
    FetchableTopicResponse,
    FetchResponse,
    PartitionData,
)
from shazamq.protocol.messages.find_coordinator_response import (
    Coordinator,
    FindCoordinatorResponse,
)
from shazamq.protocol.messages.heartbeat_response import HeartbeatResponse
from shazamq.protocol.messages.init_producer_id_response import InitProducerIdResponse
from shazamq.protocol.messages.join_group_response import JoinGroupResponse
from shazamq.protocol.messages.leave_group_response import LeaveGroupResponse
from shazamq.protocol.messages.list_offsets_response import (
    ListOffsetsPartitionResponse,
    ListOffsetsResponse,
    ListOffsetsTopicResponse,
)
from shazamq.protocol.messages.list_partition_reassignments_response import (
    ListPartitionReassignmentsResponse,
)
from shazamq.protocol.messages.metadata_response import MetadataResponseTopic
from shazamq.protocol.messages.offset_commit_response import (
    OffsetCommitResponse,
    OffsetCommitResponsePartition,
    OffsetCommitResponseTopic,
)
from shazamq.protocol.messages.offset_delete_response import (
    OffsetDeleteResponse,
    OffsetDeleteResponsePartition,
    OffsetDeleteResponseTopic,
)
from shazamq.protocol.messages.offset_fetch_response import OffsetFetchResponse
from shazamq.protocol.messages.offset_for_leader_epoch_response import (
    EpochEndOffset,
    OffsetForLeaderEpochResponse,
    OffsetForLeaderTopicResult,
)
from shazamq.protocol.messages.produce_response import (
    PartitionProduceResponse,
    ProduceResponse,
    TopicProduceResponse,
)
from shazamq.protocol.messages.share_acknowledge_response import (
    PartitionData as ShareAckPartitionData,
)
from shazamq.protocol.messages.share_acknowledge_response import (
    ShareAcknowledgeResponse,
    ShareAcknowledgeTopicResponse,
)
from shazamq.protocol.messages.share_fetch_response import (
    PartitionData as ShareFetchPartitionData,
)
from shazamq.protocol.messages.share_fetch_response import (
    ShareFetchableTopicResponse,
    ShareFetchResponse,
)
from shazamq.protocol.messages.share_group_describe_response import (
    DescribedGroup as ShareDescribedGroup,
)
from shazamq.protocol.messages.share_group_describe_response import (
    ShareGroupDescribeResponse,
)
from shazamq.protocol.messages.share_group_heartbeat_response import (
    ShareGroupHeartbeatResponse,
)
from shazamq.protocol.messages.sync_group_response import SyncGroupResponse
from shazamq.protocol.messages.txn_offset_commit_response import (
    TxnOffsetCommitResponse,
    TxnOffsetCommitResponsePartition,
    TxnOffsetCommitResponseTopic,
)
from shazamq.protocol.messages.write_txn_markers_response import (
    WritableTxnMarkerPartitionResult,
    WritableTxnMarkerResult,
    WritableTxnMarkerTopicResult,
    WriteTxnMarkersResponse,
)

from ..security.acl import CLUSTER_NAME, Authorizer, Operation, ResourceType
from . import share_state

if TYPE_CHECKING:
    from ..app import Broker
    from ..server import RequestContext
    from . import Dispatcher, Handler

# plain ints: they key the authorizer's decision cache, and an enum member hashes by its
# name in Python code (Enum.__hash__), which doubled the cost of a cached decision
TOPIC = int(ResourceType.TOPIC)
GROUP = int(ResourceType.GROUP)
CLUSTER = int(ResourceType.CLUSTER)
TXN = int(ResourceType.TRANSACTIONAL_ID)
READ, WRITE, CREATE = int(Operation.READ), int(Operation.WRITE), int(Operation.CREATE)
DELETE, ALTER, DESCRIBE = int(Operation.DELETE), int(Operation.ALTER), int(Operation.DESCRIBE)
CLUSTER_ACTION = int(Operation.CLUSTER_ACTION)
TOPIC_DENIED = ErrorCode.TOPIC_AUTHORIZATION_FAILED
GROUP_DENIED = ErrorCode.GROUP_AUTHORIZATION_FAILED
CLUSTER_DENIED = ErrorCode.CLUSTER_AUTHORIZATION_FAILED
TXN_DENIED = ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
_BROKER_CONFIG_TYPES = (4, 8)  # BROKER, BROKER_LOGGER
_TOPIC_CONFIG_TYPE = 2

GuardFactory = Callable[["Handler", "_Check", "Broker"], "Handler"]


def host_of(peer: str) -> str:
    """The address of a ``host:port`` peer (IPv6 addresses keep their colons)."""
    return peer.rpartition(":")[0] or peer


class _Check:
    """The authorizer bound to a request's principal and host."""

    __slots__ = ("authz",)

    def __init__(self, authz: Authorizer) -> None:
        self.authz = authz

    def __call__(self, ctx: RequestContext, op: int, rtype: int, name: str) -> bool:
        s = ctx.session
        host = s.attrs.get("acl_host")
        if host is None:
            host = s.attrs["acl_host"] = host_of(s.peer)
        return self.authz.authorize(s.principal, host, op, rtype, name)

    def cluster(self, ctx: RequestContext, op: int) -> bool:
        return self(ctx, op, CLUSTER, CLUSTER_NAME)

    def any_topic(self, ctx: RequestContext, op: int) -> bool:
        s = ctx.session
        return self.authz.authorize_any(s.principal, host_of(s.peer), op, TOPIC)


_GUARDS: dict[int, GuardFactory] = {}


def _guard(key: int) -> Callable[[GuardFactory], GuardFactory]:
    def add(factory: GuardFactory) -> GuardFactory:
        _GUARDS[key] = factory
        return factory

    return add


def install(d: Dispatcher, broker: Broker, authz: Authorizer) -> None:
    """Wrap every registered handler that has a guard."""
    check = _Check(authz)
    for key, factory in _GUARDS.items():
        api = d.apis.get(key)
        if api is not None:
            d.apis[key] = dataclasses.replace(api, handler=factory(api.handler, check, broker))


def _topic_name(broker: Broker, name: str | None, topic_id: Any) -> str | None:
    if name:
        return name
    info = broker.metadata.by_id.get(topic_id)
    return info.name if info is not None else None


# -- produce, fetch, offsets -----------------------------------------------------------------


@_guard(0)
def _produce(h: Handler, check: _Check, broker: Broker) -> Handler:
    def failed(t: Any, code: int) -> TopicProduceResponse:
        return TopicProduceResponse(
            name=t.name,
            partition_responses=[
                PartitionProduceResponse(
                    index=p.index,
                    error_code=code,
                    base_offset=-1,
                    log_append_time_ms=-1,
                    log_start_offset=-1,
                )
                for p in t.partition_data
            ],
        )

    async def guarded(ctx: RequestContext, req: Any) -> Any:
        txn = req.transactional_id
        if txn is not None and not check(ctx, WRITE, TXN, txn):
            denied, code = req.topic_data, TXN_DENIED
        else:
            denied = [t for t in req.topic_data if not check(ctx, WRITE, TOPIC, t.name)]
            code = TOPIC_DENIED
            if not denied:
                return await h(ctx, req)
        allowed = [t for t in req.topic_data if t not in denied] if code == TOPIC_DENIED else []
        response = None
        if allowed:
            req.topic_data = allowed
            response = await h(ctx, req)
        if req.acks == 0:
            return None
        if response is None:
            response = ProduceResponse(throttle_time_ms=0, responses=[])
        response.responses.extend(failed(t, code) for t in denied)
        return response

    return guarded


@_guard(1)
def _fetch(h: Handler, check: _Check, broker: Broker) -> Handler:
    async def guarded(ctx: RequestContext, req: Any) -> Any:
        replica_id = req.replica_state.replica_id if ctx.api_version >= 15 else req.replica_id
        if replica_id >= 0:
            denied = [] if check.cluster(ctx, CLUSTER_ACTION) else list(req.topics)
        else:
            denied = []
            for t in req.topics:
                name = t.topic or _topic_name(broker, None, t.topic_id)
                # an unknown topic id is the handler's to answer
                if name is not None and not check(ctx, READ, TOPIC, name):
                    denied.append(t)
        if not denied:
            return await h(ctx, req)
        allowed = [t for t in req.topics if t not in denied]
        if allowed:
            req.topics = allowed
            response = await h(ctx, req)
        else:
            response = FetchResponse(throttle_time_ms=0, error_code=0, session_id=0, responses=[])
        response.responses.extend(
            FetchableTopicResponse(
                topic=t.topic,
                topic_id=t.topic_id,
                partitions=[
                    PartitionData(
                        partition_index=p.partition,
                        error_code=TOPIC_DENIED,
                        high_watermark=-1,
                        last_stable_offset=-1,
                        log_start_offset=-1,
                        records=b"",
                    )
                    for p in t.partitions
                ],
            )
            for t in denied
        )
        return response

    return guarded


@_guard(2)
def _list_offsets(h: Handler, check: _Check, broker: Broker) -> Handler:
    async def guarded(ctx: RequestContext, req: Any) -> Any:
        denied = [t for t in req.topics if not check(ctx, DESCRIBE, TOPIC, t.name)]
        if not denied:
            return await h(ctx, req)
        req.topics = [t for t in req.topics if t not in denied]
        response = await h(ctx, req) if req.topics else ListOffsetsResponse(topics=[])
        response.topics.extend(
            ListOffsetsTopicResponse(
                name=t.name,
                partitions=[
                    ListOffsetsPartitionResponse(
                        partition_index=p.partition_index,
                        error_code=TOPIC_DENIED,
                        timestamp=-1,
                        offset=-1,
                    )
                    for p in t.partitions
                ],
            )
            for t in denied
        )
        return response

    return guarded


@_guard(23)
def _offset_for_leader_epoch(h: Handler, check: _Check, broker: Broker) -> Handler:
    async def guarded(ctx: RequestContext, req: Any) -> Any:
        if ctx.api_version >= 3 and req.replica_id >= 0:
            ok = check.cluster(ctx, CLUSTER_ACTION)
            denied = [] if ok else list(req.topics)
            code = CLUSTER_DENIED
        else:
            denied = [t for t in req.topics if not check(ctx, DESCRIBE, TOPIC, t.topic)]
            code = TOPIC_DENIED
        if not denied:
            return await h(ctx, req)
        req.topics = [t for t in req.topics if t not in denied]
        response = await h(ctx, req) if req.topics else OffsetForLeaderEpochResponse(topics=[])
        response.topics.extend(
            OffsetForLeaderTopicResult(
                topic=t.topic,
                partitions=[
                    EpochEndOffset(
                        error_code=code, partition=p.partition, leader_epoch=-1, end_offset=-1
                    )
                    for p in t.partitions
                ],
            )
            for t in denied
        )
        return response

    return guarded


# -- metadata and topics ---------------------------------------------------------------------


@_guard(3)
def _metadata(h: Handler, check: _Check, broker: Broker) -> Handler:
    def denied_topic(name: str | None, topic_id: Any = None) -> MetadataResponseTopic:
        t = MetadataResponseTopic(error_code=TOPIC_DENIED, name=name, partitions=[])
        if topic_id is not None:
            t.topic_id = topic_id
        return t

    async def guarded(ctx: RequestContext, req: Any) -> Any:
        if req.topics is None or (ctx.api_version == 0 and not req.topics):
            response = await h(ctx, req)
            response.topics = [t for t in response.topics if check(ctx, DESCRIBE, TOPIC, t.name)]
            return response
        denied: list[MetadataResponseTopic] = []
        wanted = []
        auto = (req.allow_auto_topic_creation if ctx.api_version >= 4 else True) and (
            broker.config.broker.auto_create_topics
        )
        for w in req.topics:
            name = _topic_name(broker, w.name, w.topic_id)
            if name is None:
                wanted.append(w)  # an unknown topic id: the handler says so
            elif not check(ctx, DESCRIBE, TOPIC, name):
                denied.append(denied_topic(w.name, None if w.name else w.topic_id))
            elif (
                auto
                and broker.metadata.get(name) is None
                and not check.cluster(ctx, CREATE)
                and not check(ctx, CREATE, TOPIC, name)
            ):
                denied.append(denied_topic(name))
            else:
                wanted.append(w)
        if not denied:
            return await h(ctx, req)
        req.topics = wanted
        response = await h(ctx, req)
        if not wanted:  # an empty list asked for none; the handler answered so
            response.topics = []
        response.topics.extend(denied)
        return response

    return guarded


@_guard(19)
def _create_topics(h: Handler, check: _Check, broker: Broker) -> Handler:
    async def guarded(ctx: RequestContext, req: Any) -> Any:
        if check.cluster(ctx, CREATE):
            return await h(ctx, req)
        denied = [t for t in req.topics if not check(ctx, CREATE, TOPIC, t.name)]
        if not denied:
            return await h(ctx, req)
        req.topics = [t for t in req.topics if t not in denied]
        response = await h(ctx, req) if req.topics else CreateTopicsResponse(topics=[])
        response.topics.extend(
            CreatableTopicResult(
                name=t.name,
                error_code=TOPIC_DENIED,
                error_message="Authorization failed.",
                num_partitions=-1,
                replication_factor=-1,
                configs=None,
            )
            for t in denied
        )
        return response

    return guarded


@_guard(20)
def _delete_topics(h: Handler, check: _Check, broker: Broker) -> Handler:
    async def guarded(ctx: RequestContext, req: Any) -> Any:
        if ctx.api_version < 6:
            denied = [n for n in req.topic_names if not check(ctx, DELETE, TOPIC, n)]
            if not denied:
                return await h(ctx, req)
            req.topic_names = [n for n in req.topic_names if n not in denied]
            results = [DeletableTopicResult(name=n, error_code=TOPIC_DENIED) for n in denied]
            response = await h(ctx, req) if req.topic_names else DeleteTopicsResponse(responses=[])
        else:
            denied_states = []
            for t in req.topics:
                name = _topic_name(broker, t.name, t.topic_id)
                if name is not None and not check(ctx, DELETE, TOPIC, name):
                    denied_states.append(t)
            if not denied_states:
                return await h(ctx, req)
            req.topics = [t for t in req.topics if t not in denied_states]
            results = [
                DeletableTopicResult(
                    name=t.name,
                    topic_id=t.topic_id,
                    error_code=TOPIC_DENIED,
                    error_message="Authorization failed.",
                )
                for t in denied_states
            ]
            response = await h(ctx, req) if req.topics else DeleteTopicsResponse(responses=[])
        response.responses.extend(results)
        return response

    return guarded


@_guard(21)
def _delete_records(h: Handler, check: _Check, broker: Broker) -> Handler:
    async def guarded(ctx: RequestContext, req: Any) -> Any:
        denied = [t for t in req.topics if not check(ctx, DELETE, TOPIC, t.name)]
        if not denied:
            return await h(ctx, req)
        req.topics = [t for t in req.topics if t not in denied]
        response = await h(ctx, req) if req.topics else DeleteRecordsResponse(topics=[])
        response.topics.extend(
            DeleteRecordsTopicResult(
                name=t.name,
                partitions=[
                    DeleteRecordsPartitionResult(
                        partition_index=p.partition_index, low_watermark=-1, error_code=TOPIC_DENIED
                    )
                    for p in t.partitions
                ],
            )
            for t in denied
        )
        return response

    return guarded


@_guard(37)
def _create_partitions(h: Handler, check: _Check, broker: Broker) -> Handler:
    async def guarded(ctx: RequestContext, req: Any) -> Any:
        denied = [t for t in req.topics if not check(ctx, ALTER, TOPIC, t.name)]
        if not denied:
            return await h(ctx, req)
        req.topics = [t for t in req.topics if t not in denied]
        response = await h(ctx, req) if req.topics else CreatePartitionsResponse(results=[])
        response.results.extend(
            CreatePartitionsTopicResult(
                name=t.name, error_code=TOPIC_DENIED, error_message="Authorization failed."
            )
            for t in denied
        )
        return response

    return guarded


_GROUP_CONFIG_TYPE = 32


def _config_denial(check: _Check, ctx: RequestContext, op: int, res: Any) -> int:
    if res.resource_type == _TOPIC_CONFIG_TYPE:
        return 0 if check(ctx, op, TOPIC, res.resource_name) else TOPIC_DENIED
    if res.resource_type in _BROKER_CONFIG_TYPES:
        return 0 if check.cluster(ctx, op) else CLUSTER_DENIED
    if res.resource_type == _GROUP_CONFIG_TYPE:
        return 0 if check(ctx, op, GROUP, res.resource_name) else GROUP_DENIED
    return 0


@_guard(32)
def _describe_configs(h: Handler, check: _Check, broker: Broker) -> Handler:
    async def guarded(ctx: RequestContext, req: Any) -> Any:
        denied, allowed = [], []
        for r in req.resources:
            code = _config_denial(check, ctx, Operation.DESCRIBE_CONFIGS, r)
            (denied if code else allowed).append((r, code))
        if not denied:
            return await h(ctx, req)
        req.resources = [r for r, _ in allowed]
        response = await h(ctx, req) if allowed else DescribeConfigsResponse(results=[])
        response.results.extend(
            DescribeConfigsResult(
                error_code=code,
                error_message="Authorization failed.",
                resource_type=r.resource_type,
                resource_name=r.resource_name,
                configs=[],
            )
            for r, code in denied
        )
        return response

    return guarded


def _alter_configs_guard(h: Handler, check: _Check, broker: Broker) -> Handler:
    async def guarded(ctx: RequestContext, req: Any) -> Any:
        denied = []
        allowed = []
        for r in req.resources:
            code = _config_denial(check, ctx, Operation.ALTER_CONFIGS, r)
            (denied if code else allowed).append((r, code))
        if not denied:
            return await h(ctx, req)
        req.resources = [r for r, _ in allowed]
        response = await h(ctx, req) if allowed else AlterConfigsResponse(responses=[])
        response.responses.extend(
            AlterConfigsResourceResponse(
                error_code=code,
                error_message="Authorization failed.",
                resource_type=r.resource_type,
                resource_name=r.resource_name,
            )
            for r, code in denied
        )
        return response

    return guarded


_GUARDS[33] = _alter_configs_guard
_GUARDS[44] = _alter_configs_guard


# -- groups ----------------------------------------------------------------------------------


@_guard(10)
def _find_coordinator(h: Handler, check: _Check, broker: Broker) -> Handler:
    def code_for(ctx: RequestContext, key: str, key_type: int) -> int:
        if key_type == 2:  # share coordinators are looked up by brokers only
            return 0 if check.cluster(ctx, Operation.CLUSTER_ACTION) else CLUSTER_DENIED
        if key_type == 1:
            return 0 if check(ctx, DESCRIBE, TXN, key) else TXN_DENIED
        return 0 if check(ctx, DESCRIBE, GROUP, key) else GROUP_DENIED

    async def guarded(ctx: RequestContext, req: Any) -> Any:
        if ctx.api_version < 4:
            code = code_for(ctx, req.key, req.key_type)
            if not code:
                return await h(ctx, req)
            return FindCoordinatorResponse(
                error_code=code, error_message="Authorization failed.", node_id=-1, host="", port=-1
            )
        denied = [(k, c) for k in req.coordinator_keys if (c := code_for(ctx, k, req.key_type))]
        if not denied:
            return await h(ctx, req)
        gone = {k for k, _ in denied}
        req.coordinator_keys = [k for k in req.coordinator_keys if k not in gone]
        response = (
            await h(ctx, req) if req.coordinator_keys else FindCoordinatorResponse(coordinators=[])
        )
        response.coordinators.extend(
            Coordinator(
                key=k,
                node_id=-1,
                host="",
                port=-1,
                error_code=c,
                error_message="Authorization failed.",
            )
            for k, c in denied
        )
        return response

    return guarded


def _group_op_guard(op: int, deny: Callable[[Any], Any]) -> GuardFactory:
    def factory(h: Handler, check: _Check, broker: Broker) -> Handler:
        async def guarded(ctx: RequestContext, req: Any) -> Any:
            if check(ctx, op, GROUP, req.group_id):
                return await h(ctx, req)
            return deny(req)

        return guarded

    return factory


_GUARDS[11] = _group_op_guard(
    READ,
    lambda req: JoinGroupResponse(
        error_code=GROUP_DENIED,
        generation_id=-1,
        protocol_name=None,
        leader="",
        member_id=req.member_id,
        members=[],
    ),
)
_GUARDS[12] = _group_op_guard(READ, lambda req: HeartbeatResponse(error_code=GROUP_DENIED))
_GUARDS[13] = _group_op_guard(
    READ, lambda req: LeaveGroupResponse(error_code=GROUP_DENIED, members=[])
)
_GUARDS[14] = _group_op_guard(
    READ, lambda req: SyncGroupResponse(error_code=GROUP_DENIED, assignment=b"")
)


@_guard(8)
def _offset_commit(h: Handler, check: _Check, broker: Broker) -> Handler:
    def failed(t: Any, code: int) -> OffsetCommitResponseTopic:
        return OffsetCommitResponseTopic(
            name=t.name,
            partitions=[
                OffsetCommitResponsePartition(partition_index=p.partition_index, error_code=code)
                for p in t.partitions
            ],
        )

    async def guarded(ctx: RequestContext, req: Any) -> Any:
        if not check(ctx, READ, GROUP, req.group_id):
            return OffsetCommitResponse(topics=[failed(t, GROUP_DENIED) for t in req.topics])
        denied = [t for t in req.topics if not check(ctx, READ, TOPIC, t.name)]
        if not denied:
            return await h(ctx, req)
        req.topics = [t for t in req.topics if t not in denied]
        response = await h(ctx, req) if req.topics else OffsetCommitResponse(topics=[])
        response.topics.extend(failed(t, TOPIC_DENIED) for t in denied)
        return response

    return guarded


@_guard(9)
def _offset_fetch(h: Handler, check: _Check, broker: Broker) -> Handler:
    def hide(topics: list[Any], named: bool, ctx: RequestContext) -> list[Any]:
        kept = []
        for t in topics:
            if check(ctx, DESCRIBE, TOPIC, t.name):
                kept.append(t)
            elif named:
                for p in t.partitions:
                    p.error_code = TOPIC_DENIED
                    p.committed_offset = -1
                    p.metadata = None
                kept.append(t)
        return kept

    async def guarded(ctx: RequestContext, req: Any) -> Any:
        if ctx.api_version < 8:
            if not check(ctx, DESCRIBE, GROUP, req.group_id):
                return OffsetFetchResponse(error_code=GROUP_DENIED, topics=[])
            response = await h(ctx, req)
            response.topics = hide(response.topics, req.topics is not None, ctx)
            return response
        denied = {g.group_id for g in req.groups if not check(ctx, DESCRIBE, GROUP, g.group_id)}
        named = {g.group_id: g.topics is not None for g in req.groups}
        response = await h(ctx, req)
        for g in response.groups:
            if g.group_id in denied:
                g.error_code = GROUP_DENIED
                g.topics = []
            else:
                g.topics = hide(g.topics, named.get(g.group_id, False), ctx)
        return response

    return guarded


@_guard(15)
def _describe_groups(h: Handler, check: _Check, broker: Broker) -> Handler:
    async def guarded(ctx: RequestContext, req: Any) -> Any:
        denied = [g for g in req.groups if not check(ctx, DESCRIBE, GROUP, g)]
        if not denied:
            return await h(ctx, req)
        req.groups = [g for g in req.groups if g not in denied]
        response = await h(ctx, req) if req.groups else DescribeGroupsResponse(groups=[])
        response.groups.extend(
            DescribedGroup(
                error_code=GROUP_DENIED,
                group_id=g,
                group_state="",
                protocol_type="",
                protocol_data="",
                members=[],
            )
            for g in denied
        )
        return response

    return guarded


@_guard(16)
def _list_groups(h: Handler, check: _Check, broker: Broker) -> Handler:
    async def guarded(ctx: RequestContext, req: Any) -> Any:
        response = await h(ctx, req)
        if not check.cluster(ctx, DESCRIBE):
            response.groups = [
                g for g in response.groups if check(ctx, DESCRIBE, GROUP, g.group_id)
            ]
        return response

    return guarded


@_guard(42)
def _delete_groups(h: Handler, check: _Check, broker: Broker) -> Handler:
    async def guarded(ctx: RequestContext, req: Any) -> Any:
        denied = [g for g in req.groups_names if not check(ctx, DELETE, GROUP, g)]
        if not denied:
            return await h(ctx, req)
        req.groups_names = [g for g in req.groups_names if g not in denied]
        response = await h(ctx, req) if req.groups_names else DeleteGroupsResponse(results=[])
        response.results.extend(
            DeletableGroupResult(group_id=g, error_code=GROUP_DENIED) for g in denied
        )
        return response

    return guarded


@_guard(47)
def _offset_delete(h: Handler, check: _Check, broker: Broker) -> Handler:
    def failed(t: Any) -> OffsetDeleteResponseTopic:
        return OffsetDeleteResponseTopic(
            name=t.name,
            partitions=[
                OffsetDeleteResponsePartition(
                    partition_index=p.partition_index, error_code=TOPIC_DENIED
                )
                for p in t.partitions
            ],
        )

    async def guarded(ctx: RequestContext, req: Any) -> Any:
        if not check(ctx, DELETE, GROUP, req.group_id):
            return OffsetDeleteResponse(error_code=GROUP_DENIED, topics=[])
        denied = [t for t in req.topics if not check(ctx, READ, TOPIC, t.name)]
        if not denied:
            return await h(ctx, req)
        req.topics = [t for t in req.topics if t not in denied]
        response = await h(ctx, req) if req.topics else OffsetDeleteResponse(topics=[])
        response.topics.extend(failed(t) for t in denied)
        return response

    return guarded


# -- transactions ----------------------------------------------------------------------------


@_guard(22)
def _init_producer_id(h: Handler, check: _Check, broker: Broker) -> Handler:
    async def guarded(ctx: RequestContext, req: Any) -> Any:
        txn = req.transactional_id
        if txn is not None:
            code = 0 if check(ctx, WRITE, TXN, txn) else TXN_DENIED
        elif check.cluster(ctx, Operation.IDEMPOTENT_WRITE) or check.any_topic(ctx, WRITE):
            code = 0
        else:
            code = CLUSTER_DENIED
        if not code:
            return await h(ctx, req)
        return InitProducerIdResponse(error_code=code, producer_id=-1, producer_epoch=-1)

    return guarded


@_guard(24)
def _add_partitions(h: Handler, check: _Check, broker: Broker) -> Handler:
    async def guarded(ctx: RequestContext, req: Any) -> Any:
        if ctx.api_version >= 4:  # the broker-to-broker form
            if check.cluster(ctx, CLUSTER_ACTION):
                return await h(ctx, req)
            return AddPartitionsToTxnResponse(error_code=CLUSTER_DENIED, results_by_transaction=[])
        topics = req.v3_and_below_topics
        if not check(ctx, WRITE, TXN, req.v3_and_below_transactional_id):
            codes = {t.name: TXN_DENIED for t in topics}
        else:
            denied = {t.name for t in topics if not check(ctx, WRITE, TOPIC, t.name)}
            if not denied:
                return await h(ctx, req)
            codes = {
                t.name: TOPIC_DENIED if t.name in denied else ErrorCode.OPERATION_NOT_ATTEMPTED
                for t in topics
            }
        return AddPartitionsToTxnResponse(
            results_by_topic_v3_and_below=[
                AddPartitionsToTxnTopicResult(
                    name=t.name,
                    results_by_partition=[
                        AddPartitionsToTxnPartitionResult(
                            partition_index=p, partition_error_code=codes[t.name]
                        )
                        for p in t.partitions
                    ],
                )
                for t in topics
            ]
        )

    return guarded


@_guard(25)
def _add_offsets(h: Handler, check: _Check, broker: Broker) -> Handler:
    async def guarded(ctx: RequestContext, req: Any) -> Any:
        if not check(ctx, WRITE, TXN, req.transactional_id):
            return AddOffsetsToTxnResponse(error_code=TXN_DENIED)
        if not check(ctx, READ, GROUP, req.group_id):
            return AddOffsetsToTxnResponse(error_code=GROUP_DENIED)
        return await h(ctx, req)

    return guarded


@_guard(26)
def _end_txn(h: Handler, check: _Check, broker: Broker) -> Handler:
    async def guarded(ctx: RequestContext, req: Any) -> Any:
        if check(ctx, WRITE, TXN, req.transactional_id):
            return await h(ctx, req)
        return EndTxnResponse(error_code=TXN_DENIED, producer_id=-1, producer_epoch=-1)

    return guarded


@_guard(27)
def _write_txn_markers(h: Handler, check: _Check, broker: Broker) -> Handler:
    async def guarded(ctx: RequestContext, req: Any) -> Any:
        if check.cluster(ctx, CLUSTER_ACTION):
            return await h(ctx, req)
        return WriteTxnMarkersResponse(
            markers=[
                WritableTxnMarkerResult(
                    producer_id=m.producer_id,
                    topics=[
                        WritableTxnMarkerTopicResult(
                            name=t.name,
                            partitions=[
                                WritableTxnMarkerPartitionResult(
                                    partition_index=p, error_code=CLUSTER_DENIED
                                )
                                for p in t.partition_indexes
                            ],
                        )
                        for t in m.topics
                    ],
                )
                for m in req.markers
            ]
        )

    return guarded


@_guard(28)
def _txn_offset_commit(h: Handler, check: _Check, broker: Broker) -> Handler:
    def failed(t: Any, code: int) -> TxnOffsetCommitResponseTopic:
        return TxnOffsetCommitResponseTopic(
            name=t.name,
            partitions=[
                TxnOffsetCommitResponsePartition(partition_index=p.partition_index, error_code=code)
                for p in t.partitions
            ],
        )

    async def guarded(ctx: RequestContext, req: Any) -> Any:
        code = 0
        if not check(ctx, WRITE, TXN, req.transactional_id):
            code = TXN_DENIED
        elif not check(ctx, READ, GROUP, req.group_id):
            code = GROUP_DENIED
        if code:
            return TxnOffsetCommitResponse(topics=[failed(t, code) for t in req.topics])
        denied = [t for t in req.topics if not check(ctx, READ, TOPIC, t.name)]
        if not denied:
            return await h(ctx, req)
        req.topics = [t for t in req.topics if t not in denied]
        response = await h(ctx, req) if req.topics else TxnOffsetCommitResponse(topics=[])
        response.topics.extend(failed(t, TOPIC_DENIED) for t in denied)
        return response

    return guarded


@_guard(61)
def _describe_producers(h: Handler, check: _Check, broker: Broker) -> Handler:
    async def guarded(ctx: RequestContext, req: Any) -> Any:
        denied = [t for t in req.topics if not check(ctx, READ, TOPIC, t.name)]
        if not denied:
            return await h(ctx, req)
        req.topics = [t for t in req.topics if t not in denied]
        response = await h(ctx, req) if req.topics else DescribeProducersResponse(topics=[])
        response.topics.extend(
            TopicResponse(
                name=t.name,
                partitions=[
                    PartitionResponse(
                        partition_index=p, error_code=TOPIC_DENIED, active_producers=[]
                    )
                    for p in t.partition_indexes
                ],
            )
            for t in denied
        )
        return response

    return guarded


@_guard(65)
def _describe_transactions(h: Handler, check: _Check, broker: Broker) -> Handler:
    async def guarded(ctx: RequestContext, req: Any) -> Any:
        denied = [t for t in req.transactional_ids if not check(ctx, DESCRIBE, TXN, t)]
        if not denied:
            return await h(ctx, req)
        req.transactional_ids = [t for t in req.transactional_ids if t not in denied]
        response = (
            await h(ctx, req)
            if req.transactional_ids
            else DescribeTransactionsResponse(transaction_states=[])
        )
        response.transaction_states.extend(
            TransactionState(
                error_code=TXN_DENIED,
                transactional_id=t,
                transaction_state="",
                producer_id=-1,
                producer_epoch=-1,
                topics=[],
            )
            for t in denied
        )
        return response

    return guarded


@_guard(66)
def _list_transactions(h: Handler, check: _Check, broker: Broker) -> Handler:
    async def guarded(ctx: RequestContext, req: Any) -> Any:
        response = await h(ctx, req)
        response.transaction_states = [
            t for t in response.transaction_states if check(ctx, DESCRIBE, TXN, t.transactional_id)
        ]
        return response

    return guarded


# -- cluster ---------------------------------------------------------------------------------


def _cluster_guard(op: int, deny: Callable[[Any], Any]) -> GuardFactory:
    def factory(h: Handler, check: _Check, broker: Broker) -> Handler:
        async def guarded(ctx: RequestContext, req: Any) -> Any:
            if check.cluster(ctx, op):
                return await h(ctx, req)
            return deny(req)

        return guarded

    return factory


_DENIED_MSG = "Cluster authorization failed."
_GUARDS[43] = _cluster_guard(
    ALTER,
    lambda req: ElectLeadersResponse(error_code=CLUSTER_DENIED, replica_election_results=[]),
)
_GUARDS[45] = _cluster_guard(
    ALTER,
    lambda req: AlterPartitionReassignmentsResponse(
        error_code=CLUSTER_DENIED, error_message=_DENIED_MSG, responses=[]
    ),
)
_GUARDS[46] = _cluster_guard(
    DESCRIBE,
    lambda req: ListPartitionReassignmentsResponse(
        error_code=CLUSTER_DENIED, error_message=_DENIED_MSG, topics=[]
    ),
)
_GUARDS[35] = _cluster_guard(
    DESCRIBE, lambda req: DescribeLogDirsResponse(error_code=CLUSTER_DENIED, results=[])
)
_GUARDS[34] = _cluster_guard(
    ALTER,
    lambda req: AlterReplicaLogDirsResponse(
        results=[
            AlterReplicaLogDirTopicResult(
                topic_name=t.name,
                partitions=[
                    AlterReplicaLogDirPartitionResult(partition_index=i, error_code=CLUSTER_DENIED)
                    for i in t.partitions
                ],
            )
            for d in req.dirs
            for t in d.topics
        ]
    ),
)
_GUARDS[60] = _cluster_guard(
    DESCRIBE,
    lambda req: DescribeClusterResponse(
        error_code=CLUSTER_DENIED, error_message=_DENIED_MSG, cluster_id="", brokers=[]
    ),
)
_GUARDS[50] = _cluster_guard(
    DESCRIBE,
    lambda req: DescribeUserScramCredentialsResponse(
        error_code=CLUSTER_DENIED, error_message=_DENIED_MSG, results=[]
    ),
)
_GUARDS[51] = _cluster_guard(
    ALTER,
    lambda req: AlterUserScramCredentialsResponse(
        results=[
            AlterUserScramCredentialsResult(
                user=u.name, error_code=CLUSTER_DENIED, error_message=_DENIED_MSG
            )
            for u in list(req.deletions or []) + list(req.upsertions or [])
        ]
    ),
)

_GUARDS[48] = _cluster_guard(
    Operation.DESCRIBE_CONFIGS,
    lambda req: DescribeClientQuotasResponse(
        error_code=CLUSTER_DENIED, error_message=_DENIED_MSG, entries=None
    ),
)
_GUARDS[49] = _cluster_guard(
    Operation.ALTER_CONFIGS,
    lambda req: AlterClientQuotasResponse(
        entries=[
            AlterQuotaEntry(
                error_code=CLUSTER_DENIED,
                error_message=_DENIED_MSG,
                entity=[
                    AlterQuotaEntity(entity_type=e.entity_type, entity_name=e.entity_name)
                    for e in entry.entity
                ],
            )
            for entry in req.entries
        ]
    ),
)


_GUARDS[68] = _group_op_guard(
    READ,
    lambda req: ConsumerGroupHeartbeatResponse(
        error_code=GROUP_DENIED, error_message="Group authorization failed."
    ),
)


def _describe_groups_guard(empty: Callable[[], Any], denied: Callable[[str], Any]) -> GuardFactory:
    """DESCRIBE per group id (KIP-848 and share group describes): the handler answers the
    allowed ids, the others are answered GROUP_AUTHORIZATION_FAILED (``denied(id)``)."""

    def factory(h: Handler, check: _Check, broker: Broker) -> Handler:
        async def guarded(ctx: RequestContext, req: Any) -> Any:
            refused = [g for g in req.group_ids if not check(ctx, DESCRIBE, GROUP, g)]
            if not refused:
                return await h(ctx, req)
            req.group_ids = [g for g in req.group_ids if g not in refused]
            response = await h(ctx, req) if req.group_ids else empty()
            response.groups.extend(denied(g) for g in refused)
            return response

        return guarded

    return factory


_GUARDS[69] = _describe_groups_guard(
    lambda: ConsumerGroupDescribeResponse(groups=[]),
    lambda g: ConsumerGroupDescribeGroup(error_code=GROUP_DENIED, group_id=g),
)


# -- share groups (KIP-932) ----------------------------------------------------------------

_GUARDS[76] = _group_op_guard(
    READ,
    lambda req: ShareGroupHeartbeatResponse(
        error_code=GROUP_DENIED, error_message="Group authorization failed."
    ),
)


_GUARDS[77] = _describe_groups_guard(
    lambda: ShareGroupDescribeResponse(groups=[]),
    lambda g: ShareDescribedGroup(error_code=GROUP_DENIED, group_id=g),
)


def _share_topics_guard(fetch: bool) -> GuardFactory:
    """READ on the group for the request, READ per topic for its partitions."""

    def factory(h: Handler, check: _Check, broker: Broker) -> Handler:
        async def guarded(ctx: RequestContext, req: Any) -> Any:
            if not check(ctx, READ, GROUP, req.group_id):
                if fetch:
                    return ShareFetchResponse(
                        error_code=GROUP_DENIED, error_message="Group authorization failed."
                    )
                return ShareAcknowledgeResponse(
                    error_code=GROUP_DENIED, error_message="Group authorization failed."
                )
            denied = []
            for topic in req.topics:
                name = _topic_name(broker, None, topic.topic_id)
                if name is not None and not check(ctx, READ, TOPIC, name):
                    denied.append(topic)
            if not denied:
                return await h(ctx, req)
            req.topics = [tp for tp in req.topics if tp not in denied]
            response = await h(ctx, req)
            if fetch:
                response.responses.extend(
                    ShareFetchableTopicResponse(
                        topic_id=tp.topic_id,
                        partitions=[
                            ShareFetchPartitionData(
                                partition_index=p.partition_index,
                                error_code=TOPIC_DENIED,
                                acknowledge_error_code=TOPIC_DENIED
                                if p.acknowledgement_batches
                                else 0,
                                records=b"",
                            )
                            for p in tp.partitions
                        ],
                    )
                    for tp in denied
                )
            else:
                response.responses.extend(
                    ShareAcknowledgeTopicResponse(
                        topic_id=tp.topic_id,
                        partitions=[
                            ShareAckPartitionData(
                                partition_index=p.partition_index, error_code=TOPIC_DENIED
                            )
                            for p in tp.partitions
                        ],
                    )
                    for tp in denied
                )
            return response

        return guarded

    return factory


_GUARDS[78] = _share_topics_guard(fetch=True)
_GUARDS[79] = _share_topics_guard(fetch=False)


def _describe_share_offsets(h: Handler, check: _Check, broker: Broker) -> Handler:
    def denied_topic(t: Any) -> DescribeShareGroupOffsetsResponseTopic:
        return DescribeShareGroupOffsetsResponseTopic(
            topic_name=t.topic_name,
            partitions=[
                DescribeShareGroupOffsetsResponsePartition(
                    partition_index=i, start_offset=-1, error_code=TOPIC_DENIED
                )
                for i in t.partitions
            ],
        )

    async def guarded(ctx: RequestContext, req: Any) -> Any:
        refused = {g.group_id for g in req.groups if not check(ctx, DESCRIBE, GROUP, g.group_id)}
        hidden: dict[str, list[Any]] = {}
        for g in req.groups:
            if g.group_id not in refused and g.topics is not None:
                hidden[g.group_id] = [
                    t for t in g.topics if not check(ctx, DESCRIBE, TOPIC, t.topic_name)
                ]
                g.topics = [t for t in g.topics if t not in hidden[g.group_id]]
        asked = [g for g in req.groups if g.group_id not in refused]
        order = [g.group_id for g in req.groups]
        req.groups = asked
        response = await h(ctx, req) if asked else DescribeShareGroupOffsetsResponse(groups=[])
        for g in response.groups:
            if g.error_code:
                continue
            # all-topics answers leave out what the principal may not see
            g.topics = [t for t in g.topics if check(ctx, DESCRIBE, TOPIC, t.topic_name)]
            g.topics.extend(denied_topic(t) for t in hidden.get(g.group_id, ()))
        response.groups.extend(
            DescribeShareGroupOffsetsResponseGroup(group_id=g, error_code=GROUP_DENIED)
            for g in order
            if g in refused
        )
        return response

    return guarded


def _alter_share_offsets(h: Handler, check: _Check, broker: Broker) -> Handler:
    def failed(t: Any, code: int) -> AlterShareGroupOffsetsResponseTopic:
        return AlterShareGroupOffsetsResponseTopic(
            topic_name=t.topic_name,
            partitions=[
                AlterShareGroupOffsetsResponsePartition(
                    partition_index=p.partition_index, error_code=code
                )
                for p in t.partitions
            ],
        )

    async def guarded(ctx: RequestContext, req: Any) -> Any:
        if not check(ctx, READ, GROUP, req.group_id):
            return AlterShareGroupOffsetsResponse(
                error_code=GROUP_DENIED,
                error_message="Group authorization failed.",
                responses=[failed(t, GROUP_DENIED) for t in req.topics],
            )
        denied = [t for t in req.topics if not check(ctx, READ, TOPIC, t.topic_name)]
        if not denied:
            return await h(ctx, req)
        req.topics = [t for t in req.topics if t not in denied]
        response = await h(ctx, req)
        response.responses.extend(failed(t, TOPIC_DENIED) for t in denied)
        return response

    return guarded


def _delete_share_offsets(h: Handler, check: _Check, broker: Broker) -> Handler:
    async def guarded(ctx: RequestContext, req: Any) -> Any:
        if not check(ctx, DELETE, GROUP, req.group_id):
            return DeleteShareGroupOffsetsResponse(
                error_code=GROUP_DENIED, error_message="Group authorization failed."
            )
        denied = [t for t in req.topics if not check(ctx, READ, TOPIC, t.topic_name)]
        if not denied:
            return await h(ctx, req)
        req.topics = [t for t in req.topics if t not in denied]
        response = await h(ctx, req)
        if not response.error_code:
            response.responses.extend(
                DeleteShareGroupOffsetsResponseTopic(
                    topic_name=t.topic_name,
                    error_code=TOPIC_DENIED,
                    error_message="Topic authorization failed.",
                )
                for t in denied
            )
        return response

    return guarded


# the share coordinator's RPCs come from brokers only (Kafka: CLUSTER_ACTION)
for _key in (83, 84, 85, 86, 87):
    _GUARDS[_key] = _cluster_guard(
        Operation.CLUSTER_ACTION, functools.partial(share_state.refused, _key, CLUSTER_DENIED)
    )
_GUARDS[90] = _describe_share_offsets
_GUARDS[91] = _alter_share_offsets
_GUARDS[92] = _delete_share_offsets
