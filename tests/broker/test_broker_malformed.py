"""Bad input never takes the broker down and never corrupts the log.

Raw sockets send what no client should: oversized and negative frame sizes, truncated
frames, garbage headers, unknown API keys, impossible array lengths, bad varints, batches
with a wrong CRC or record count, legacy magic, and a decompression bomb. The offending
connection gets an error or is closed; another client keeps working throughout.
"""

from __future__ import annotations

import socket
import struct

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from shazamq.protocol import framing
from shazamq.protocol.messages.api_versions_request import ApiVersionsRequest
from shazamq.protocol.messages.produce_request import (
    PartitionProduceData,
    ProduceRequest,
    TopicProduceData,
)
from shazamq.protocol.records import Record, build_batch

UNSUPPORTED_FOR_MESSAGE_FORMAT = 43
CORRUPT_MESSAGE = 2
INVALID_RECORD = 87


def connect(b) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", b.port), timeout=5)
    return s


def read_frame(s: socket.socket) -> bytes:
    head = recv_exact(s, 4)
    (n,) = struct.unpack(">i", head)
    return recv_exact(s, n)


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def is_closed(s: socket.socket) -> bool:
    s.settimeout(15)
    try:
        return s.recv(1) == b""  # a byte: the broker answered instead of closing
    except TimeoutError:
        raise AssertionError("the connection stayed open for 15 s") from None
    except ConnectionError:
        return True


def frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def header(api_key: int, version: int, corr: int = 1, client: bytes = b"t") -> bytes:
    return struct.pack(">hhih", api_key, version, corr, len(client)) + client


def assert_broker_healthy(b, topic: str) -> None:
    p = Producer({"bootstrap.servers": b.bootstrap})
    p.produce(topic, value=b"still-alive", partition=0)
    assert p.flush(10) == 0
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "h"})
    try:
        _low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        assert high >= 1
    finally:
        c.close()


@pytest.mark.parametrize(
    "payload",
    [
        struct.pack(">i", -5),  # negative size
        struct.pack(">i", 2**31 - 1),  # larger than socket.request.max.bytes
        struct.pack(">i", 100) + b"\x00" * 10,  # truncated frame, then EOF
        frame(b"\x00\x12"),  # header cut short
        frame(header(999, 0)),  # unknown api key
        frame(header(3, 99)),  # unsupported Metadata version
        frame(header(3, 1) + struct.pack(">i", 2**30)),  # array longer than the frame
        frame(header(3, 9)[:8] + b"\x00\x00\x01" + b"\xff" * 6),  # bad varint in v9
        frame(
            header(0, 3)
            + b"\xff\xff"
            + b"\x00\x01\x00\x00\x03\xe8"
            + struct.pack(">i", 1)
            + struct.pack(">h", 200)
        ),  # string past the end
    ],
    ids=[
        "negative-size",
        "huge-size",
        "truncated",
        "short-header",
        "unknown-api",
        "bad-version",
        "huge-array",
        "bad-varint",
        "string-overrun",
    ],
)
def test_garbage_closes_only_that_connection(shared_broker, topic_name, payload):
    s = connect(shared_broker)
    s.sendall(payload)
    if payload.startswith(struct.pack(">i", 100)):
        s.shutdown(socket.SHUT_WR)
    assert is_closed(s)
    s.close()
    assert_broker_healthy(shared_broker, topic_name)


def test_unsupported_api_versions_version_gets_error_response(shared_broker):
    s = connect(shared_broker)
    body = ApiVersionsRequest(client_software_name="x", client_software_version="1")
    # Header v2 (ApiVersions v3+ is flexible): client id, then an empty tagged-field set.
    s.sendall(frame(header(18, 77, corr=42) + b"\x00" + body.encode(3)))
    data = read_frame(s)
    corr, resp = framing.decode_response(18, 0, data)
    assert corr == 42
    assert resp.error_code == 35  # UNSUPPORTED_VERSION
    assert any(k.api_key == 18 for k in resp.api_keys)
    s.close()


def produce_raw(b, topic: str, records: bytes) -> int:
    req = ProduceRequest(
        acks=1,
        timeout_ms=5000,
        topic_data=[
            TopicProduceData(
                name=topic, partition_data=[PartitionProduceData(index=0, records=records)]
            )
        ],
    )
    s = connect(b)
    s.sendall(framing.encode_request(req, 8, 7, "raw"))
    data = read_frame(s)
    s.close()
    _, resp = framing.decode_response(0, 8, data)
    return resp.responses[0].partition_responses[0].error_code


def good_batch(n: int = 3, compression: int = 0) -> bytearray:
    return bytearray(
        build_batch(
            [
                Record(key=b"k", value=b"v%d" % i, headers=[], timestamp_delta=i, offset_delta=i)
                for i in range(n)
            ],
            compression=compression,
        )
    )


def test_bad_batches_rejected_with_error_codes(shared_broker, topic_name):
    b = shared_broker
    assert_broker_healthy(b, topic_name)  # creates the topic
    bad_crc = good_batch()
    bad_crc[-1] ^= 0xFF
    assert produce_raw(b, topic_name, bytes(bad_crc)) == CORRUPT_MESSAGE

    wrong_count = good_batch()
    struct.pack_into(">i", wrong_count, 57, 5)  # records_count field, CRC now wrong too
    from shazamq.protocol.records import compute_crc

    struct.pack_into(">I", wrong_count, 17, compute_crc(wrong_count, 0, len(wrong_count)))
    assert produce_raw(b, topic_name, bytes(wrong_count)) in (CORRUPT_MESSAGE, INVALID_RECORD)

    legacy = bytearray(good_batch())
    legacy[16] = 1  # magic 1
    assert produce_raw(b, topic_name, bytes(legacy)) == UNSUPPORTED_FOR_MESSAGE_FORMAT

    truncated = bytes(good_batch())[:-5]
    assert produce_raw(b, topic_name, truncated) == CORRUPT_MESSAGE

    # A gzip bomb: small on the wire, huge when inflated. Accepted or refused, the broker
    # must not inflate it on the produce path, and must stay healthy.
    bomb = build_batch(
        [
            Record(
                key=None,
                value=b"\x00" * (50 * 1024 * 1024),
                headers=[],
                timestamp_delta=0,
                offset_delta=0,
            )
        ],
        compression=1,
    )
    assert len(bomb) < 200_000
    assert produce_raw(b, topic_name, bomb) in (0, CORRUPT_MESSAGE, INVALID_RECORD)
    assert_broker_healthy(b, topic_name)

    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "m"})
    try:
        _low, high = c.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=10)
        # Only the healthy probes (and the bomb, if accepted) were appended.
        assert high in (2, 3)
    finally:
        c.close()
