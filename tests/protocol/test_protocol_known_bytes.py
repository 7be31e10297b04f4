"""The codecs against hand-assembled wire bytes, following Kafka's protocol guide.

Covers: request header v1/v2 (client id stays a non-compact STRING in v2), response header
v0/v1 and the ApiVersions exception, ApiVersionsRequest v3, MetadataRequest v0/v1/v12
(null topics), ProduceRequest v3/v9 with a records blob, FetchRequest v12 with a tagged
field, a nullable struct (ConsumerGroupHeartbeatResponse.assignment), unknown tagged
fields being skipped, the ApiVersions UNSUPPORTED_VERSION answer, and varint encodings.
"""

from __future__ import annotations

import struct
import uuid

import pytest

from shazamq.protocol import primitives as p
from shazamq.protocol.framing import (
    decode_request,
    decode_request_header,
    decode_response,
    encode_request,
    encode_response,
    unsupported_version_response,
)
from shazamq.protocol.messages.api_versions_request import ApiVersionsRequest
from shazamq.protocol.messages.api_versions_response import ApiVersion, ApiVersionsResponse
from shazamq.protocol.messages.consumer_group_heartbeat_response import (
    Assignment,
    ConsumerGroupHeartbeatResponse,
    TopicPartitions,
)
from shazamq.protocol.messages.fetch_request import FetchPartition, FetchRequest, FetchTopic
from shazamq.protocol.messages.metadata_request import MetadataRequest, MetadataRequestTopic
from shazamq.protocol.messages.metadata_response import MetadataResponse
from shazamq.protocol.messages.produce_request import (
    PartitionProduceData,
    ProduceRequest,
    TopicProduceData,
)
from shazamq.protocol.messages.request_header import RequestHeader


def i16(n: int) -> bytes:
    return struct.pack(">h", n)


def i32(n: int) -> bytes:
    return struct.pack(">i", n)


def i64(n: int) -> bytes:
    return struct.pack(">q", n)


def frame(body: bytes) -> bytes:
    return i32(len(body)) + body


def test_api_versions_request_v3_frame():
    header = i16(18) + i16(3) + i32(1) + i16(7) + b"rdkafka" + b"\x00"
    body = b"\x0b" + b"librdkafka" + b"\x06" + b"2.4.0" + b"\x00"
    expected = frame(header + body)
    request = ApiVersionsRequest(client_software_name="librdkafka", client_software_version="2.4.0")
    assert encode_request(request, 3, 1, "rdkafka") == expected
    hdr, decoded = decode_request(expected[4:])
    assert (hdr.request_api_key, hdr.request_api_version, hdr.correlation_id) == (18, 3, 1)
    assert hdr.client_id == "rdkafka"
    assert decoded == request


def test_request_header_v2_null_client_id_and_v1():
    v2 = i16(3) + i16(12) + i32(7) + b"\xff\xff" + b"\x00"
    header, offset = decode_request_header(v2)
    assert header == RequestHeader(
        request_api_key=3, request_api_version=12, correlation_id=7, client_id=None
    )
    assert offset == len(v2)
    v1 = i16(3) + i16(8) + i32(7) + i16(2) + b"id"
    header, offset = decode_request_header(v1 + b"BODY")
    assert header.client_id == "id"
    assert offset == len(v1)
    assert header.encode(1) == v1


def test_request_header_v0_for_controlled_shutdown_v0():
    v0 = i16(7) + i16(0) + i32(99)
    header, offset = decode_request_header(v0 + b"\x00\x00\x00\x01")
    assert (header.request_api_key, header.correlation_id, offset) == (7, 99, 8)


def test_metadata_request_v12():
    request = MetadataRequest(
        topics=[MetadataRequestTopic(topic_id=p.ZERO_UUID, name="foo")],
        allow_auto_topic_creation=False,
        include_topic_authorized_operations=True,
    )
    body = b"\x02" + bytes(16) + b"\x04foo" + b"\x00" + b"\x00" + b"\x01" + b"\x00"
    assert request.encode(12) == body
    assert MetadataRequest.decode(body, 0, 12) == (request, len(body))
    all_topics = b"\x00\x01\x00\x00"
    decoded, _ = MetadataRequest.decode(all_topics, 0, 12)
    assert decoded.topics is None
    assert decoded.allow_auto_topic_creation is True


def test_metadata_request_v0_and_v1():
    request = MetadataRequest(topics=[MetadataRequestTopic(name="ab")])
    assert request.encode(0) == i32(1) + i16(2) + b"ab"
    assert MetadataRequest(topics=None).encode(1) == i32(-1)
    with pytest.raises(ValueError):
        MetadataRequest(topics=None).encode(0)  # not nullable in v0


def test_produce_request_v9_with_records():
    records = bytes(range(1, 6))
    request = ProduceRequest(
        transactional_id=None,
        acks=-1,
        timeout_ms=30000,
        topic_data=[
            TopicProduceData(
                name="t", partition_data=[PartitionProduceData(index=0, records=records)]
            )
        ],
    )
    body = (
        b"\x00"  # transactional id: null compact string
        + i16(-1)
        + i32(30000)
        + b"\x02"  # one topic
        + b"\x02t"
        + b"\x02"  # one partition
        + i32(0)
        + b"\x06"
        + records
        + b"\x00"  # partition tags
        + b"\x00"  # topic tags
        + b"\x00"  # request tags
    )
    assert request.encode(9) == body
    decoded, end = ProduceRequest.decode(body, 0, 9)
    assert end == len(body)
    assert decoded == request
    view = decoded.topic_data[0].partition_data[0].records
    assert isinstance(view, memoryview) and view.tobytes() == records


def test_produce_request_v3_non_flexible():
    request = ProduceRequest(
        transactional_id="tx",
        acks=1,
        timeout_ms=5,
        topic_data=[
            TopicProduceData(
                name="t", partition_data=[PartitionProduceData(index=2, records=b"abc")]
            )
        ],
    )
    body = (
        i16(2) + b"tx" + i16(1) + i32(5) + i32(1) + i16(1) + b"t" + i32(1) + i32(2)
        + i32(3) + b"abc"
    )  # fmt: skip
    assert request.encode(3) == body
    assert ProduceRequest.decode(body, 0, 3) == (request, len(body))
    with pytest.raises(ValueError, match="transactional_id"):
        request.encode(2)  # v0-2 have no transactional id and it is not ignorable


def test_fetch_request_v12_with_tagged_cluster_id():
    request = FetchRequest(
        cluster_id="c1",
        replica_id=-1,
        max_wait_ms=500,
        min_bytes=1,
        max_bytes=52428800,
        isolation_level=1,
        session_id=0,
        session_epoch=-1,
        topics=[
            FetchTopic(
                topic="t",
                partitions=[
                    FetchPartition(
                        partition=0,
                        current_leader_epoch=5,
                        fetch_offset=100,
                        last_fetched_epoch=4,
                        log_start_offset=-1,
                        partition_max_bytes=1048576,
                    )
                ],
            )
        ],
    )
    partition = i32(0) + i32(5) + i64(100) + i32(4) + i64(-1) + i32(1048576) + b"\x00"
    body = (
        i32(-1) + i32(500) + i32(1) + i32(52428800) + b"\x01" + i32(0) + i32(-1)
        + b"\x02" + b"\x02t" + b"\x02" + partition + b"\x00"
        + b"\x01"  # forgotten topics: empty compact array
        + b"\x01"  # rack id: empty compact string
        + b"\x01" + b"\x00" + b"\x03" + b"\x03c1"  # one tagged field: tag 0, 3 bytes
    )  # fmt: skip
    assert request.encode(12) == body
    assert FetchRequest.decode(body, 0, 12) == (request, len(body))
    # without the cluster id, the tagged section is empty
    request.cluster_id = None
    assert request.encode(12) == body[:-6] + b"\x00"


def test_nullable_struct_marker():
    topic = uuid.UUID(int=1)
    response = ConsumerGroupHeartbeatResponse(
        member_id="m",
        member_epoch=3,
        heartbeat_interval_ms=1000,
        assignment=Assignment(topic_partitions=[TopicPartitions(topic_id=topic, partitions=[7])]),
    )
    head = i32(0) + i16(0) + b"\x00" + b"\x02m" + i32(3) + i32(1000)
    present = b"\x01" + b"\x02" + topic.bytes + b"\x02" + i32(7) + b"\x00" + b"\x00"
    body = head + present + b"\x00"
    assert response.encode(0) == body
    assert ConsumerGroupHeartbeatResponse.decode(body, 0, 0) == (response, len(body))
    response.assignment = None
    null_body = head + b"\xff" + b"\x00"
    assert response.encode(0) == null_body
    assert ConsumerGroupHeartbeatResponse.decode(null_body, 0, 0) == (response, len(null_body))


def test_unknown_tagged_fields_are_skipped():
    request = ProduceRequest(acks=1, timeout_ms=2)
    plain = request.encode(9)
    assert plain.endswith(b"\x00")
    tagged = plain[:-1] + b"\x02" + b"\x05\x02xx" + b"\x09\x00"
    assert ProduceRequest.decode(tagged, 0, 9) == (request, len(tagged))


def test_response_headers():
    response = MetadataResponse(throttle_time_ms=0, cluster_id="c", controller_id=1)
    framed = encode_response(3, 12, 42, response)
    assert framed[:4] == i32(len(framed) - 4)
    assert framed[4:9] == i32(42) + b"\x00"  # header v1: tagged fields
    assert framed[9:] == response.encode(12)
    assert decode_response(3, 12, framed[4:]) == (42, response)
    framed = encode_response(3, 8, 42, response)
    assert framed[4:8] == i32(42)
    assert framed[8:] == response.encode(8)
    # ApiVersions responses always use header v0, even for flexible versions
    api = ApiVersionsResponse(api_keys=[ApiVersion(api_key=0, min_version=0, max_version=11)])
    framed = encode_response(18, 3, 5, api)
    assert framed[4:8] == i32(5)
    assert framed[8:] == api.encode(3)
    assert decode_response(18, 3, framed[4:]) == (5, api)


def test_unsupported_api_versions_answer():
    framed = unsupported_version_response(18, 9, 77)
    body = i16(35) + i32(1) + i16(18) + i16(0) + i16(4)
    assert framed == frame(i32(77) + body)
    assert unsupported_version_response(18, 9, 77, supported=(0, 3))[-2:] == i16(3)
    assert unsupported_version_response(0, 99, 77) is None


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (16384, b"\x80\x80\x01"),
        (2**32 - 1, b"\xff\xff\xff\xff\x0f"),
    ],
)
def test_unsigned_varint(value, encoded):
    out = bytearray()
    p.write_uvarint(out, value)
    assert out == encoded
    assert p.read_uvarint(memoryview(encoded), 0) == (value, len(encoded))


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (-1, b"\x01"),
        (1, b"\x02"),
        (-64, b"\x7f"),
        (64, b"\x80\x01"),
        (2**31 - 1, b"\xfe\xff\xff\xff\x0f"),
        (-(2**31), b"\xff\xff\xff\xff\x0f"),
    ],
)
def test_zigzag_varint(value, encoded):
    out = bytearray()
    p.write_varint(out, value)
    assert out == encoded
    assert p.read_varint(memoryview(encoded), 0) == (value, len(encoded))


def test_zigzag_varlong_extremes():
    for value in (0, -1, 2**63 - 1, -(2**63), 1234567890123):
        out = bytearray()
        p.write_varlong(out, value)
        assert len(out) <= 10
        assert p.read_varlong(memoryview(bytes(out)), 0) == (value, len(out))
    out = bytearray()
    p.write_varlong(out, -(2**63))
    assert out == b"\xff" * 9 + b"\x01"
