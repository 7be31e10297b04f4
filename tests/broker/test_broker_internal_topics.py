"""The coordinators' internal topics carry Kafka's settings, are internal in Metadata and
are closed to clients' produce.

Kafka creates ``__consumer_offsets`` compacted, with ``offsets.topic.segment.bytes``
segments and ``compression.type=producer``; ``__transaction_state`` compacted, with
``transaction.state.log.segment.bytes`` segments, ``compression.type=uncompressed``,
unclean election off and ``min.insync.replicas`` from ``transaction.state.log.min.isr``
(bounded here by the replication factor, one on a single broker).
"""

from __future__ import annotations

import time

from confluent_kafka.admin import AdminClient, ConfigResource
from kafka_helpers import RawClient

from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.metadata_request import MetadataRequest, MetadataRequestTopic
from shazamq.protocol.messages.produce_request import (
    PartitionProduceData,
    ProduceRequest,
    TopicProduceData,
)
from shazamq.protocol.records import Record, build_batch


def topic_configs(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    got = admin.describe_configs([res])[res].result(timeout=15)
    return {k: v.value for k, v in got.items()}


def test_internal_topics_have_kafkas_settings(broker_factory):
    b = broker_factory(
        groups__offsets_topic_num_partitions=3,
        groups__offsets_topic_segment_bytes=1 << 20,
        transactions__state_log_num_partitions=5,
        transactions__state_log_segment_bytes=2 << 20,
    )
    offsets = topic_configs(b.bootstrap, "__consumer_offsets")
    assert offsets["cleanup.policy"] == "compact"
    assert offsets["segment.bytes"] == str(1 << 20)
    assert offsets["compression.type"] == "producer"
    state = topic_configs(b.bootstrap, "__transaction_state")
    assert state["cleanup.policy"] == "compact"
    assert state["segment.bytes"] == str(2 << 20)
    assert state["compression.type"] == "uncompressed"
    assert state["unclean.leader.election.enable"] == "false"
    assert state["min.insync.replicas"] == "1"  # transaction.state.log.min.isr 2, RF 1

    c = RawClient(b.port)
    md = c.request(
        MetadataRequest(
            topics=[
                MetadataRequestTopic(name="__consumer_offsets"),
                MetadataRequestTopic(name="__transaction_state"),
            ],
            allow_auto_topic_creation=False,
        ),
        12,
    )
    shown = {t.name: (t.error_code, t.is_internal, len(t.partitions)) for t in md.topics}
    assert shown == {"__consumer_offsets": (0, True, 3), "__transaction_state": (0, True, 5)}

    # clients cannot write them: only their coordinators do
    batch = build_batch([Record(key=b"k", value=b"v")], base_timestamp=int(time.time() * 1000))
    for name in shown:
        resp = c.request(
            ProduceRequest(
                acks=1,
                timeout_ms=5000,
                topic_data=[
                    TopicProduceData(
                        name=name, partition_data=[PartitionProduceData(index=0, records=batch)]
                    )
                ],
            ),
            9,
        )
        part = resp.responses[0].partition_responses[0]
        assert part.error_code == ErrorCode.INVALID_TOPIC_EXCEPTION
        assert part.base_offset == -1
    c.close()
