"""The Prometheus endpoint: request, error, byte and partition metrics after real traffic."""

from __future__ import annotations

import urllib.request

from confluent_kafka import Consumer, Producer, TopicPartition
from kafka_helpers import RawClient
from prometheus_client.parser import text_string_to_metric_families

from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.list_offsets_request import (
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsTopic,
)


def scrape(port: int) -> dict[str, list]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    return {f.name: f.samples for f in text_string_to_metric_families(text.decode())}


def value(samples, **labels) -> float:
    for s in samples:
        if all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError(labels)


def test_metrics_follow_traffic(shared_broker, topic_name):
    p = Producer({"bootstrap.servers": shared_broker.bootstrap})
    for _i in range(25):
        p.produce(topic_name, value=b"x" * 100, partition=0)
    assert p.flush(10) == 0
    c = Consumer(
        {
            "bootstrap.servers": shared_broker.bootstrap,
            "group.id": "m",
            "auto.offset.reset": "earliest",
        }
    )
    c.assign([TopicPartition(topic_name, 0, 0)])
    got = 0
    for _ in range(40):
        got += len(c.consume(100, 0.5))
        if got >= 25:
            break
    c.close()
    m = scrape(shared_broker.metrics_port)
    assert value(m["shazamq_topic_messages_in"], topic=topic_name) == 25
    assert value(m["shazamq_topic_bytes_in"], topic=topic_name) > 2500
    assert value(m["shazamq_topic_bytes_out"], topic=topic_name) > 2500
    assert value(m["shazamq_topic_messages_out"], topic=topic_name) >= 25
    assert value(m["shazamq_log_end_offset"], topic=topic_name, partition="0") == 25
    assert value(m["shazamq_log_size_bytes"], topic=topic_name, partition="0") > 2500
    assert value(m["shazamq_requests"], api="Produce") >= 1
    assert value(m["shazamq_requests"], api="Fetch") >= 1
    assert value(m["shazamq_request_latency_seconds"], api="Produce") >= 0
    assert value(m["shazamq_broker_state"]) == 2
    assert value(m["shazamq_connections"]) >= 0
    # the partition just written and read keeps its segment open; nothing was evicted
    assert value(m["shazamq_open_segment_files"]) >= 1
    assert value(m["shazamq_segment_file_evictions"]) == 0


def test_error_metrics(shared_broker, topic_name):
    p = Producer({"bootstrap.servers": shared_broker.bootstrap})
    p.produce(topic_name, value=b"x")  # auto-creates the topic with one partition
    assert p.flush(10) == 0
    # A ListOffsets for a partition that does not exist is answered per partition.
    c = RawClient(shared_broker.port)
    req = ListOffsetsRequest(
        replica_id=-1,
        topics=[
            ListOffsetsTopic(
                name=topic_name,
                partitions=[ListOffsetsPartition(partition_index=7, timestamp=-1)],
            )
        ],
    )
    part = c.request(req, 7).topics[0].partitions[0]
    c.close()
    assert part.error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    m = scrape(shared_broker.metrics_port)
    errors = value(
        m["shazamq_request_errors"], api="ListOffsets", error="UNKNOWN_TOPIC_OR_PARTITION"
    )
    assert errors >= 1


def test_a_deleted_topics_metric_children_are_removed(shared_broker, topic_name):
    from confluent_kafka.admin import AdminClient

    p = Producer({"bootstrap.servers": shared_broker.bootstrap})
    p.produce(topic_name, value=b"x" * 100, partition=0)
    assert p.flush(10) == 0
    m = scrape(shared_broker.metrics_port)
    assert value(m["shazamq_topic_messages_in"], topic=topic_name) == 1
    admin = AdminClient({"bootstrap.servers": shared_broker.bootstrap})
    admin.delete_topics([topic_name])[topic_name].result(15)
    m = scrape(shared_broker.metrics_port)
    for family in ("shazamq_topic_messages_in", "shazamq_topic_bytes_in"):
        assert not [s for s in m[family] if s.labels.get("topic") == topic_name]
    assert not [s for s in m["shazamq_log_end_offset"] if s.labels.get("topic") == topic_name]
