"""Cluster-level queries: DescribeCluster and OffsetForLeaderEpoch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.describe_cluster_request import DescribeClusterRequest
from shazamq.protocol.messages.describe_cluster_response import (
    DescribeClusterBroker,
    DescribeClusterResponse,
)
from shazamq.protocol.messages.offset_for_leader_epoch_request import (
    OffsetForLeaderEpochRequest,
)
from shazamq.protocol.messages.offset_for_leader_epoch_response import (
    EpochEndOffset,
    OffsetForLeaderEpochResponse,
    OffsetForLeaderTopicResult,
)

if TYPE_CHECKING:
    from ..app import Broker
    from ..server import RequestContext
    from . import Dispatcher

BROKERS_ENDPOINT = 1


def register(d: Dispatcher, broker: Broker) -> None:
    parts = broker.partitions

    async def describe_cluster(
        ctx: RequestContext, req: DescribeClusterRequest
    ) -> DescribeClusterResponse:
        if ctx.api_version >= 1 and req.endpoint_type != BROKERS_ENDPOINT:
            return DescribeClusterResponse(
                error_code=ErrorCode.UNSUPPORTED_ENDPOINT_TYPE,
                error_message="only the brokers endpoint type (1) is served",
                endpoint_type=req.endpoint_type,
                cluster_id=broker.metadata.cluster_id,
            )
        node = broker.cluster
        if node is not None:
            brokers = [
                DescribeClusterBroker(
                    broker_id=b.broker_id,
                    host=b.host,
                    port=b.port,
                    rack=b.rack,
                )
                for b in sorted(node.state.brokers.values(), key=lambda b: b.broker_id)
                if node.state.is_live(b.broker_id)
            ]
            # as in KRaft: any broker forwards admin requests to the quorum, so clients are
            # pointed at one that is up (this one) rather than at the quorum's leader
            controller = broker.node_id
        else:
            host, port = broker.advertised
            brokers = [
                DescribeClusterBroker(
                    broker_id=broker.node_id,
                    host=host,
                    port=port,
                    rack=broker.config.broker.rack,
                )
            ]
            controller = broker.node_id
        return DescribeClusterResponse(
            error_code=0,
            endpoint_type=BROKERS_ENDPOINT,
            cluster_id=broker.metadata.cluster_id,
            controller_id=controller,
            brokers=brokers,
        )

    async def offset_for_leader_epoch(
        ctx: RequestContext, req: OffsetForLeaderEpochRequest
    ) -> OffsetForLeaderEpochResponse:
        topics = []
        for t in req.topics:
            out = []
            for rp in t.partitions:
                res = EpochEndOffset(partition=rp.partition, error_code=0)
                out.append(res)
                p = parts.get(t.topic, rp.partition)
                if p is None:
                    res.error_code = (
                        ErrorCode.NOT_LEADER_OR_FOLLOWER
                        if broker.cluster is not None
                        and broker.cluster.leader_hint(t.topic, rp.partition) is not None
                        else ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                    )
                    continue
                current = rp.current_leader_epoch if ctx.api_version >= 2 else -1
                res.error_code = p.epoch_error(current)
                if res.error_code:
                    continue
                epoch, end = p.log.end_offset_for_epoch(rp.leader_epoch)
                res.leader_epoch, res.end_offset = epoch, end
            topics.append(OffsetForLeaderTopicResult(topic=t.topic, partitions=out))
        return OffsetForLeaderEpochResponse(throttle_time_ms=0, topics=topics)

    d.register(60, 0, 1, describe_cluster)
    d.register(23, 0, 4, offset_for_leader_epoch)
