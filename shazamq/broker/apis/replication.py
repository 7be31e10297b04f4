"""Moving replicas and leaders: ElectLeaders, Alter/ListPartitionReassignments.

What `kafka-leader-election` and `kafka-reassign-partitions` use, and
what the operator drives when brokers join or leave. In a cluster every change is a record
the controller commits; on a single broker there is nothing to move, and the answers say
so with Kafka's codes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.alter_partition_reassignments_request import (
    AlterPartitionReassignmentsRequest,
)
from shazamq.protocol.messages.alter_partition_reassignments_response import (
    AlterPartitionReassignmentsResponse,
    ReassignablePartitionResponse,
    ReassignableTopicResponse,
)
from shazamq.protocol.messages.elect_leaders_request import ElectLeadersRequest
from shazamq.protocol.messages.elect_leaders_response import (
    ElectLeadersResponse,
    PartitionResult,
    ReplicaElectionResult,
)
from shazamq.protocol.messages.list_partition_reassignments_request import (
    ListPartitionReassignmentsRequest,
)
from shazamq.protocol.messages.list_partition_reassignments_response import (
    ListPartitionReassignmentsResponse,
    OngoingPartitionReassignment,
    OngoingTopicReassignment,
)

if TYPE_CHECKING:
    from ..app import Broker
    from ..server import RequestContext
    from . import Dispatcher

UNCLEAN = 1
_MESSAGES = {
    ErrorCode.ELECTION_NOT_NEEDED: "the preferred replica already leads",
    ErrorCode.PREFERRED_LEADER_NOT_AVAILABLE: "the preferred replica is not in sync or not alive",
    ErrorCode.ELIGIBLE_LEADERS_NOT_AVAILABLE: "no eligible replica is alive",
    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION: "no such partition",
    ErrorCode.NO_REASSIGNMENT_IN_PROGRESS: "no reassignment of this partition is in progress",
    ErrorCode.INVALID_REPLICA_ASSIGNMENT: "the replica list is not valid for this cluster",
}


def register(d: Dispatcher, broker: Broker) -> None:
    cluster = broker.cluster

    def all_partitions() -> list[tuple[str, int]]:
        return [
            (name, i)
            for name, info in sorted(broker.metadata.topics.items())
            for i in range(info.partitions)
        ]

    async def elect_leaders(ctx: RequestContext, req: ElectLeadersRequest) -> ElectLeadersResponse:
        unclean = ctx.api_version >= 1 and req.election_type == UNCLEAN
        if req.topic_partitions is None:
            wanted = all_partitions()
        else:
            wanted = [(t.topic, p) for t in req.topic_partitions for p in t.partitions]
        if cluster is not None:
            results = await cluster.elect_leaders(wanted, unclean=unclean)
        else:
            # one broker leads everything it has: nothing to elect
            results = {
                (name, i): (
                    ErrorCode.ELECTION_NOT_NEEDED
                    if broker.partitions.get(name, i) is not None
                    else ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                )
                for name, i in wanted
            }
        if req.topic_partitions is None:
            # Kafka lists only the partitions that changed when asked for all of them
            results = {k: v for k, v in results.items() if v == 0}
        by_topic: dict[str, list[PartitionResult]] = {}
        for (name, index), code in results.items():
            by_topic.setdefault(name, []).append(
                PartitionResult(
                    partition_id=index, error_code=code, error_message=_MESSAGES.get(code)
                )
            )
        return ElectLeadersResponse(
            throttle_time_ms=0,
            error_code=0,
            replica_election_results=[
                ReplicaElectionResult(topic=name, partition_result=parts)
                for name, parts in by_topic.items()
            ],
        )

    async def alter_reassignments(
        ctx: RequestContext, req: AlterPartitionReassignmentsRequest
    ) -> AlterPartitionReassignmentsResponse:
        topics = []
        for t in req.topics:
            out = []
            for p in t.partitions:
                if cluster is None:
                    code = (
                        ErrorCode.INVALID_REPLICA_ASSIGNMENT
                        if broker.partitions.get(t.name, p.partition_index) is not None
                        else ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                    )
                else:
                    code = await cluster.reassign(t.name, p.partition_index, p.replicas)
                out.append(
                    ReassignablePartitionResponse(
                        partition_index=p.partition_index,
                        error_code=code,
                        error_message=_MESSAGES.get(code) if code else None,
                    )
                )
            topics.append(ReassignableTopicResponse(name=t.name, partitions=out))
        return AlterPartitionReassignmentsResponse(
            throttle_time_ms=0, error_code=0, error_message=None, responses=topics
        )

    async def list_reassignments(
        ctx: RequestContext, req: ListPartitionReassignmentsRequest
    ) -> ListPartitionReassignmentsResponse:
        out: list[OngoingTopicReassignment] = []
        if cluster is not None:
            state = cluster.state
            if req.topics is None:
                wanted = {
                    name: range(len(t.partitions)) for name, t in sorted(state.topics.items())
                }
            else:
                wanted = {t.name: t.partition_indexes for t in req.topics}
            for name, indexes in wanted.items():
                topic = state.topics.get(name)
                if topic is None:
                    continue
                ongoing = []
                for i in indexes:
                    if not 0 <= i < len(topic.partitions):
                        continue
                    p = topic.partitions[i]
                    if p.target is None:
                        continue
                    ongoing.append(
                        OngoingPartitionReassignment(
                            partition_index=i,
                            replicas=list(p.replicas),
                            adding_replicas=list(p.adding),
                            removing_replicas=[b for b in p.replicas if b not in p.target],
                        )
                    )
                if ongoing:
                    out.append(OngoingTopicReassignment(name=name, partitions=ongoing))
        return ListPartitionReassignmentsResponse(
            throttle_time_ms=0, error_code=0, error_message=None, topics=out
        )

    d.register(43, 0, 2, elect_leaders)
    d.register(45, 0, 0, alter_reassignments)
    d.register(46, 0, 0, list_reassignments)
