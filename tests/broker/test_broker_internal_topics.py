"""The coordinators' internal topics: created on first use, with Kafka's settings,
internal in Metadata and closed to clients' produce.

A fresh single broker has none of them; the first FindCoordinator of a group or of a
transactional id creates ``__consumer_offsets`` or ``__transaction_state`` (as Kafka's
broker does), and a restart finds them again. Real clients on a fresh broker are in
tests/broker/test_internal_topics_clients.py.

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
from shazamq.protocol.messages.find_coordinator_request import FindCoordinatorRequest
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


INTERNAL = ("__consumer_offsets", "__transaction_state")


def listed_topics(c: RawClient) -> dict[str, tuple[int, bool, int]]:
    """Every topic Metadata lists (a request for all topics): error, internal, partitions."""
    md = c.request(MetadataRequest(topics=None, allow_auto_topic_creation=False), 12)
    return {t.name: (t.error_code, t.is_internal, len(t.partitions)) for t in md.topics}


def internal_metadata(c: RawClient) -> dict[str, tuple[int, bool, int]]:
    md = c.request(
        MetadataRequest(
            topics=[MetadataRequestTopic(name=n) for n in INTERNAL],
            allow_auto_topic_creation=False,
        ),
        12,
    )
    return {t.name: (t.error_code, t.is_internal, len(t.partitions)) for t in md.topics}


def find_coordinator(c: RawClient, key: str, key_type: int, node_id: int = 0) -> list[int]:
    """FindCoordinator until it names a coordinator; the error codes met on the way."""
    codes: list[int] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        resp = c.request(FindCoordinatorRequest(key=key, key_type=key_type), 3)
        codes.append(resp.error_code)
        if resp.error_code == 0:
            assert resp.node_id == node_id
            return codes
        assert resp.error_code == ErrorCode.COORDINATOR_NOT_AVAILABLE
        time.sleep(0.1)
    raise AssertionError(f"no coordinator for {key!r}: {codes}")


def test_internal_topics_created_on_first_use(broker_factory):
    b = broker_factory(
        groups__offsets_topic_num_partitions=3,
        transactions__state_log_num_partitions=5,
    )
    c = RawClient(b.port)
    assert listed_topics(c) == {}
    unknown = (ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, False, 0)
    assert internal_metadata(c) == dict.fromkeys(INTERNAL, unknown)
    assert not [d for d in b.data_dir.rglob("__*-*") if d.is_dir()]

    codes = find_coordinator(c, "some-group", 0)
    assert set(codes[:-1]) <= {ErrorCode.COORDINATOR_NOT_AVAILABLE}
    md = internal_metadata(c)
    assert md["__consumer_offsets"] == (0, True, 3)
    assert md["__transaction_state"] == unknown  # a group needs no transaction state

    find_coordinator(c, "some-txn", 1)
    shown = {"__consumer_offsets": (0, True, 3), "__transaction_state": (0, True, 5)}
    assert internal_metadata(c) == shown
    # a second lookup finds them at once
    assert find_coordinator(c, "other-group", 0) == [0]
    c.close()

    b.restart()
    c = RawClient(b.port)
    assert internal_metadata(c) == shown
    assert find_coordinator(c, "some-group", 0) == [0]
    assert find_coordinator(c, "some-txn", 1) == [0]
    c.close()


def test_metadata_auto_creation_makes_the_internal_topic(broker_factory):
    """A client asking Metadata to auto-create an internal topic gets the coordinator's
    topic, internal and with its settings, as from Kafka."""
    b = broker_factory(transactions__state_log_num_partitions=5)
    c = RawClient(b.port)
    md = c.request(
        MetadataRequest(
            topics=[MetadataRequestTopic(name="__transaction_state")],
            allow_auto_topic_creation=True,
        ),
        12,
    )
    assert [(t.name, t.error_code, t.is_internal, len(t.partitions)) for t in md.topics] == [
        ("__transaction_state", 0, True, 5)
    ]
    c.close()
    assert topic_configs(b.bootstrap, "__transaction_state")["cleanup.policy"] == "compact"


def test_internal_topics_have_kafkas_settings(broker_factory):
    b = broker_factory(
        groups__offsets_topic_num_partitions=3,
        groups__offsets_topic_segment_bytes=1 << 20,
        transactions__state_log_num_partitions=5,
        transactions__state_log_segment_bytes=2 << 20,
    )
    c = RawClient(b.port)
    find_coordinator(c, "g", 0)
    find_coordinator(c, "t", 1)
    c.close()
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
    shown = internal_metadata(c)
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
