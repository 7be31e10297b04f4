"""Protocol-level behaviour checked byte-exactly with a raw client.

Covers: ApiVersions advertising exactly the registered handlers, old request versions
(Metadata v0/v1, whose responses lack newer fields), ListOffsets max-timestamp,
OffsetForLeaderEpoch, topic ids in Metadata and Fetch v13+, DeleteTopics by id, the
fetch long-poll woken by new data, and isolation-level upper bounds.
"""

from __future__ import annotations

import threading
import time
import uuid

from kafka_helpers import RawClient, make_topic

from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages import API_KEYS
from shazamq.protocol.messages.api_versions_request import ApiVersionsRequest
from shazamq.protocol.messages.delete_topics_request import DeleteTopicsRequest, DeleteTopicState
from shazamq.protocol.messages.fetch_request import FetchPartition, FetchRequest, FetchTopic
from shazamq.protocol.messages.list_offsets_request import (
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsTopic,
)
from shazamq.protocol.messages.metadata_request import MetadataRequest, MetadataRequestTopic
from shazamq.protocol.messages.offset_for_leader_epoch_request import (
    OffsetForLeaderEpochRequest,
    OffsetForLeaderPartition,
    OffsetForLeaderTopic,
)
from shazamq.protocol.messages.produce_request import (
    PartitionProduceData,
    ProduceRequest,
    TopicProduceData,
)
from shazamq.protocol.records import Record, build_batch, iter_batches


def produce(c: RawClient, topic: str, values: list[bytes], ts: list[int] | None = None) -> int:
    ts = ts or [0] * len(values)
    records = build_batch(
        [
            Record(offset_delta=i, timestamp_delta=t - ts[0], value=v)
            for i, (v, t) in enumerate(zip(values, ts, strict=True))
        ],
        base_timestamp=ts[0],
        max_timestamp=max(ts),
    )
    req = ProduceRequest(
        acks=1,
        timeout_ms=5000,
        topic_data=[
            TopicProduceData(
                name=topic, partition_data=[PartitionProduceData(index=0, records=records)]
            )
        ],
    )
    part = c.request(req, 9).responses[0].partition_responses[0]
    assert part.error_code == 0
    return part.base_offset


def test_api_versions_lists_registered_apis(shared_broker):
    c = RawClient(shared_broker.port)
    resp = c.request(ApiVersionsRequest(client_software_name="t", client_software_version="1"), 3)
    c.close()
    assert resp.error_code == 0
    got = {k.api_key: (k.min_version, k.max_version) for k in resp.api_keys}
    # The versions the issue names, at least.
    assert got[0][1] >= 9 and got[1][1] >= 13 and got[3][1] >= 12
    for key, (lo, hi) in got.items():
        info = API_KEYS[key]
        assert info.min_version <= lo <= hi <= info.max_version
    for key in (0, 1, 2, 3, 18, 19, 20, 21, 22, 23, 32, 33, 37, 44, 60):
        assert key in got, f"api key {key} is not advertised"


def test_api_versions_advertises_features(shared_broker):
    """ApiVersions v3+ carries the supported and finalized features, with an epoch, as a
    Kafka 4 broker does: metadata.version and group.version at least; v2 has no such field."""
    c = RawClient(shared_broker.port)
    resp = c.request(ApiVersionsRequest(client_software_name="t", client_software_version="1"), 3)
    old = c.request(ApiVersionsRequest(), 2)
    c.close()
    supported = {f.name: (f.min_version, f.max_version) for f in resp.supported_features}
    finalized = {
        f.name: (f.min_version_level, f.max_version_level) for f in resp.finalized_features
    }
    assert supported["metadata.version"] == (7, 25)  # 3.3-IV3 .. 4.0-IV3
    assert supported["group.version"] == (0, 1)
    assert finalized["metadata.version"] == (25, 25)
    assert finalized["group.version"] == (1, 1)
    for name, (lo, hi) in finalized.items():  # every finalized level is a supported one
        assert supported[name][0] <= lo <= hi <= supported[name][1]
    assert resp.finalized_features_epoch >= 0
    assert old.error_code == 0 and old.supported_features == []


def test_old_metadata_versions(shared_broker, topic_name):
    make_topic(shared_broker.bootstrap, topic_name, 2)
    c = RawClient(shared_broker.port)
    for version in (0, 1, 4, 9, 12):
        req = MetadataRequest(topics=[MetadataRequestTopic(name=topic_name)])
        resp = c.request(req, version)
        (t,) = resp.topics
        assert t.error_code == 0 and t.name == topic_name
        assert sorted(p.partition_index for p in t.partitions) == [0, 1]
        assert resp.brokers[0].port == shared_broker.port
        if version >= 10:
            assert t.topic_id != uuid.UUID(int=0)
    c.close()


def test_list_offsets_and_leader_epochs(shared_broker, topic_name):
    make_topic(shared_broker.bootstrap, topic_name)
    c = RawClient(shared_broker.port)
    produce(c, topic_name, [b"a", b"b", b"c"], [1000, 5000, 3000])
    produce(c, topic_name, [b"d"], [2000])

    def lookup(ts: int, version: int = 7):
        req = ListOffsetsRequest(
            replica_id=-1,
            topics=[
                ListOffsetsTopic(name=topic_name, partitions=[ListOffsetsPartition(timestamp=ts)])
            ],
        )
        p = c.request(req, version).topics[0].partitions[0]
        assert p.error_code == 0
        return p.offset, p.timestamp

    assert lookup(-2)[0] == 0
    assert lookup(-1)[0] == 4
    assert lookup(-3) == (1, 5000)  # the record with the largest timestamp
    assert lookup(2500)[0] == 1  # first batch whose max timestamp >= 2500 starts at 0..
    assert lookup(1_000_000) == (-1, -1)
    p = (
        c.request(
            ListOffsetsRequest(
                replica_id=-1,
                topics=[
                    ListOffsetsTopic(
                        name=topic_name, partitions=[ListOffsetsPartition(timestamp=-1)]
                    )
                ],
            ),
            0,
        )
        .topics[0]
        .partitions[0]
    )
    assert p.old_style_offsets == [4]

    req = OffsetForLeaderEpochRequest(
        topics=[
            OffsetForLeaderTopic(
                topic=topic_name, partitions=[OffsetForLeaderPartition(leader_epoch=0)]
            )
        ]
    )
    part = c.request(req, 4).topics[0].partitions[0]
    assert (part.error_code, part.leader_epoch, part.end_offset) == (0, 0, 4)
    req.topics[0].partitions[0].current_leader_epoch = 5
    part = c.request(req, 4).topics[0].partitions[0]
    assert part.error_code == ErrorCode.UNKNOWN_LEADER_EPOCH
    c.close()


def topic_id(c: RawClient, topic: str) -> uuid.UUID:
    resp = c.request(MetadataRequest(topics=[MetadataRequestTopic(name=topic)]), 12)
    return resp.topics[0].topic_id


def fetch(
    c: RawClient,
    tid: uuid.UUID,
    offset: int,
    *,
    max_wait: int = 0,
    min_bytes: int = 0,
    isolation: int = 0,
):
    req = FetchRequest(
        replica_id=-1, max_wait_ms=max_wait, min_bytes=min_bytes, max_bytes=1 << 20,
        isolation_level=isolation, session_id=0, session_epoch=-1,
        topics=[FetchTopic(topic_id=tid, partitions=[
            FetchPartition(partition=0, fetch_offset=offset, partition_max_bytes=1 << 20)])],
    )  # fmt: skip
    return c.request(req, 13)


def test_fetch_by_topic_id_and_long_poll(shared_broker, topic_name):
    make_topic(shared_broker.bootstrap, topic_name)
    c = RawClient(shared_broker.port)
    tid = topic_id(c, topic_name)
    produce(c, topic_name, [b"x", b"y"])
    resp = fetch(c, tid, 0)
    part = resp.responses[0].partitions[0]
    assert part.error_code == 0 and part.high_watermark == 2
    assert [h.base_offset for _, h in iter_batches(bytes(part.records))] == [0]

    # Unknown topic id and out-of-range offsets get their own error codes.
    part = fetch(c, uuid.uuid4(), 0).responses[0].partitions[0]
    assert part.error_code == ErrorCode.UNKNOWN_TOPIC_ID
    part = fetch(c, tid, 99).responses[0].partitions[0]
    assert part.error_code == ErrorCode.OFFSET_OUT_OF_RANGE

    # A long poll at the end of the log is answered when data arrives, not at max_wait.
    producer = RawClient(shared_broker.port)
    threading.Timer(0.5, produce, (producer, topic_name, [b"late"])).start()
    started = time.monotonic()
    resp = fetch(c, tid, 2, max_wait=30_000, min_bytes=1)
    waited = time.monotonic() - started
    part = resp.responses[0].partitions[0]
    assert part.records is not None and len(part.records) > 0
    assert waited < 30, "the fetch was not woken by the new data"
    producer.close()
    c.close()


def test_delete_topic_by_id(shared_broker, topic_name):
    make_topic(shared_broker.bootstrap, topic_name)
    c = RawClient(shared_broker.port)
    tid = topic_id(c, topic_name)
    resp = c.request(DeleteTopicsRequest(topics=[DeleteTopicState(name=None, topic_id=tid)],
                                         timeout_ms=5000), 6)  # fmt: skip
    (r,) = resp.responses
    assert (r.error_code, r.name) == (0, topic_name)
    resp = c.request(MetadataRequest(topics=[MetadataRequestTopic(name=topic_name)],
                                     allow_auto_topic_creation=False), 12)  # fmt: skip
    assert resp.topics[0].error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    c.close()
