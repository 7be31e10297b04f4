"""Metadata: brokers, cluster id, and the topics a client asks about (auto-creating).

Auto-creation of a coordinator's internal topic (``__consumer_offsets``,
``__transaction_state``, ``__share_group_state``) goes to that coordinator, which creates
it with its own settings and replication, on a single broker as in a cluster, as Kafka
does.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from shazamq.protocol.errors import ErrorCode, KafkaError
from shazamq.protocol.messages.metadata_request import MetadataRequest
from shazamq.protocol.messages.metadata_response import (
    MetadataResponse,
    MetadataResponseBroker,
    MetadataResponsePartition,
    MetadataResponseTopic,
)

if TYPE_CHECKING:
    from shazamq.broker.cluster.metadata import TopicInfo

    from ..app import Broker
    from ..server import RequestContext
    from . import Dispatcher

KEY = 3
ZERO_UUID = uuid.UUID(int=0)


def register(d: Dispatcher, broker: Broker) -> None:
    parts = broker.partitions
    cluster = broker.cluster

    def describe_replicated(topic: TopicInfo) -> MetadataResponseTopic:
        """A topic as the cluster's metadata has it: leaders, replicas, ISR, offline."""
        assert cluster is not None
        state = cluster.state
        t = state.topics.get(topic.name)
        partitions = []
        for i, p in enumerate(t.partitions if t is not None else ()):
            offline = [b for b in p.replicas if not state.is_live(b)]
            partitions.append(
                MetadataResponsePartition(
                    error_code=ErrorCode.LEADER_NOT_AVAILABLE if p.leader < 0 else 0,
                    partition_index=i,
                    leader_id=p.leader,
                    leader_epoch=p.leader_epoch,
                    replica_nodes=list(p.replicas),
                    isr_nodes=list(p.isr),
                    offline_replicas=offline,
                )
            )
        return MetadataResponseTopic(
            error_code=0,
            name=topic.name,
            topic_id=topic.uuid,
            is_internal=topic.internal,
            partitions=partitions,
        )

    def describe(topic: TopicInfo) -> MetadataResponseTopic:
        if cluster is not None:
            return describe_replicated(topic)
        node = broker.node_id
        partitions = []
        for i in range(topic.partitions):
            p = parts.get(topic.name, i)
            down = p is None and (topic.name, i) in parts.offline  # its log cannot be opened
            partitions.append(
                MetadataResponsePartition(
                    error_code=ErrorCode.LEADER_NOT_AVAILABLE if down else 0,
                    partition_index=i,
                    leader_id=-1 if down else node,
                    leader_epoch=p.leader_epoch if p is not None else 0,
                    replica_nodes=[node],
                    isr_nodes=[] if down else [node],
                    offline_replicas=[node] if down else [],
                )
            )
        return MetadataResponseTopic(
            error_code=0,
            name=topic.name,
            topic_id=topic.uuid,
            is_internal=topic.internal,
            partitions=partitions,
        )

    def missing(name: str | None, code: ErrorCode, topic_id: uuid.UUID = ZERO_UUID):
        return MetadataResponseTopic(
            error_code=int(code), name=name, topic_id=topic_id, partitions=[]
        )

    async def auto_create(name: str) -> TopicInfo | None:
        for internal in (broker.groups.store.topic, broker.txn.topic, broker.share.store.topic):
            if internal.name != name:
                continue
            if internal.needs_creation:
                return broker.metadata.get(name) if await internal.created() else None
            if cluster is not None:
                # its owner's settings and replication, as Kafka's auto-creation of an
                # internal topic; KafkaError (no live broker yet) is the topic's error
                await internal.ensure()
                return broker.metadata.get(name)
        return await parts.auto_create(name)

    async def handle(ctx: RequestContext, req: MetadataRequest) -> MetadataResponse:
        store = broker.metadata
        topics: list[MetadataResponseTopic] = []
        if req.topics is None or (ctx.api_version == 0 and not req.topics):
            topics = [describe(t) for t in sorted(store.topics.values(), key=lambda t: t.name)]
        else:
            allow_auto = req.allow_auto_topic_creation if ctx.api_version >= 4 else True
            for wanted in req.topics:
                if wanted.name is None:
                    info = store.by_id.get(wanted.topic_id)
                    topics.append(
                        describe(info)
                        if info is not None
                        else missing(None, ErrorCode.UNKNOWN_TOPIC_ID, wanted.topic_id)
                    )
                    continue
                info = store.get(wanted.name)
                if info is None and allow_auto and broker.config.broker.auto_create_topics:
                    try:
                        info = await auto_create(wanted.name)
                    except KafkaError as exc:
                        topics.append(missing(wanted.name, exc.code))
                        continue
                if info is None:
                    topics.append(missing(wanted.name, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION))
                else:
                    topics.append(describe(info))
        if cluster is not None:
            brokers = [
                MetadataResponseBroker(node_id=b.broker_id, host=b.host, port=b.port, rack=b.rack)
                for b in sorted(cluster.state.brokers.values(), key=lambda b: b.broker_id)
                if cluster.state.is_live(b.broker_id)
            ]
            # as in KRaft: any broker forwards admin requests to the quorum, so clients are
            # pointed at one that is up (this one) rather than at the quorum's leader
            controller = broker.node_id
        else:
            host, port = broker.advertised
            brokers = [
                MetadataResponseBroker(
                    node_id=broker.node_id, host=host, port=port, rack=broker.config.broker.rack
                )
            ]
            controller = broker.node_id
        return MetadataResponse(
            throttle_time_ms=0,
            brokers=brokers,
            cluster_id=store.cluster_id,
            controller_id=controller,
            topics=topics,
        )

    d.register(KEY, 0, 12, handle)
