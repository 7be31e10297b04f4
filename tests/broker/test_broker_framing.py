"""The listener cuts frames right however the bytes arrive.

A unit check of the receive path (random split points, frames of every size class: tiny,
split across reads, larger than the scratch buffer, over the 8 MiB piecewise threshold)
and two end-to-end checks against a real broker: many requests pipelined in one write,
and one produce request larger than 8 MiB whose batches must land intact.
"""

from __future__ import annotations

import random
import socket
import struct
from types import SimpleNamespace

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from shazamq.broker import server
from shazamq.protocol import framing
from shazamq.protocol.messages.api_versions_request import ApiVersionsRequest
from shazamq.protocol.messages.produce_request import (
    PartitionProduceData,
    ProduceRequest,
    TopicProduceData,
)
from shazamq.protocol.records import Record, build_batch, decode_batch


class _Transport:
    def __init__(self) -> None:
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def _server(max_request_bytes: int, **kw: object) -> server.KafkaServer:
    metrics = SimpleNamespace(connections_refused=None)
    return server.KafkaServer(
        None,  # type: ignore[arg-type]
        metrics,  # type: ignore[arg-type]
        host="127.0.0.1",
        port=0,
        max_request_bytes=max_request_bytes,
        **kw,  # type: ignore[arg-type]
    )


def test_frames_survive_any_split_of_the_stream():
    rng = random.Random(5)
    mib = 1024 * 1024
    sizes = [0, 1, 3, 100, 16 * 1024, 16 * 1024 + 1, 64 * 1024 - 4, 64 * 1024, 200_000]
    sizes += [8 * mib, 8 * mib + 1, 9_500_000]
    reads = [1, 2, 3, 4, 5, 100, 4096, 65536, 300_000, 2_000_000]
    for _ in range(20):
        frames = [rng.randbytes(rng.choice(sizes)) for _ in range(rng.randint(1, 6))]
        stream = b"".join(struct.pack(">i", len(f)) + f for f in frames)
        conn = server._Connection(_server(100 * 1024 * 1024))
        conn.transport = _Transport()
        got = []
        pos = 0
        while pos < len(stream):
            buf = conn.get_buffer(-1)
            n = min(len(buf), rng.choice(reads), len(stream) - pos)
            assert n > 0
            buf[:n] = stream[pos : pos + n]
            conn.buffer_updated(n)
            pos += n
            while conn.frames:
                frame, _received = conn.frames.popleft()
                conn.queued_bytes -= len(frame)
                assert isinstance(frame, bytearray)  # writable: patched in place
                got.append(bytes(frame))
        assert got == frames
        assert conn.frame is None and not conn.pieces and conn.start == conn.end == 0


def test_oversized_frame_stops_reading():
    conn = server._Connection(_server(1000))
    conn.transport = _Transport()
    buf = conn.get_buffer(-1)
    buf[:4] = struct.pack(">i", 1001)
    conn.buffer_updated(4)
    assert conn.error is not None and not conn.transport.reading
    assert not conn.frames


def test_a_size_prefix_alone_commits_no_memory():
    conn = server._Connection(_server(100 * 1024 * 1024))
    conn.transport = _Transport()
    received = 0
    stream = struct.pack(">i", 100 * 1024 * 1024) + b"x" * 3_000_000
    while received < len(stream):
        buf = conn.get_buffer(-1)
        n = min(len(buf), 4096, len(stream) - received)
        buf[:n] = stream[received : received + n]
        conn.buffer_updated(n)
        received += n
        # never more than twice what arrived (plus the first small piece) is allocated
        assert conn.allocated <= 2 * received + 16 * 1024


def test_before_authentication_frames_are_small():
    limits = server.ConnectionLimits(max_unauthenticated_bytes=512 * 1024)
    srv = _server(100 * 1024 * 1024, require_authentication=True, limits=limits)
    conn = server._Connection(srv)
    conn.transport = _Transport()
    buf = conn.get_buffer(-1)
    buf[:4] = struct.pack(">i", 512 * 1024 + 1)
    conn.buffer_updated(4)
    assert conn.error is not None and "sasl.server.max.receive.size" in conn.error
    assert not conn.transport.reading and not conn.frames


def test_over_the_memory_budget_a_connection_stops_reading_until_released():
    limits = server.ConnectionLimits(max_inflight_bytes=1024 * 1024)
    srv = _server(100 * 1024 * 1024, limits=limits)
    first, second = server._Connection(srv), server._Connection(srv)
    for conn in (first, second):
        conn.transport = _Transport()
        conn.transport.reading = True
        buf = conn.get_buffer(-1)
        buf[:4] = struct.pack(">i", 2 * 1024 * 1024)
        conn.buffer_updated(4)
    assert first.frame is not None and first.transport.reading  # reserved, receiving
    assert second.frame is None and not second.transport.reading  # over budget: waits
    srv.release(first, 2 * 1024 * 1024)
    assert second.frame is not None and second.transport.reading


def _recv_exact(s: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = s.recv(n - len(out))
        assert chunk, "connection closed"
        out += chunk
    return bytes(out)


def _read_frame(s: socket.socket) -> bytes:
    (n,) = struct.unpack(">i", _recv_exact(s, 4))
    return _recv_exact(s, n)


def test_pipelined_requests_answered_in_order(shared_broker):
    body = ApiVersionsRequest(client_software_name="t", client_software_version="1")
    wire = b"".join(
        framing.encode_request(body, 3, correlation_id, "pipelined")
        for correlation_id in range(200)
    )
    with socket.create_connection(("127.0.0.1", shared_broker.port), timeout=10) as s:
        s.sendall(wire)
        for correlation_id in range(200):
            corr, resp = framing.decode_response(18, 3, _read_frame(s))
            assert corr == correlation_id
            assert resp.error_code == 0


def test_produce_request_over_8_mib(shared_broker, topic_name):
    admin = AdminClient({"bootstrap.servers": shared_broker.bootstrap})
    admin.create_topics([NewTopic(topic_name, 10, 1)])[topic_name].result(15)
    rng = random.Random(9)
    batches = [
        build_batch([Record(offset_delta=i, value=rng.randbytes(1000)) for i in range(1000)])
        for _ in range(10)
    ]  # ~1 MB each, ~10 MB in one request
    req = ProduceRequest(
        acks=-1,
        timeout_ms=10_000,
        topic_data=[
            TopicProduceData(
                name=topic_name,
                partition_data=[
                    PartitionProduceData(index=i, records=batch) for i, batch in enumerate(batches)
                ],
            )
        ],
    )
    wire = framing.encode_request(req, 9, 1, "big")
    assert len(wire) > 8 * 1024 * 1024 + 1024 * 1024
    with socket.create_connection(("127.0.0.1", shared_broker.port), timeout=30) as s:
        for start in range(0, len(wire), 100_000):  # in pieces, as a slow client would
            s.sendall(wire[start : start + 100_000])
        _corr, resp = framing.decode_response(0, 9, _read_frame(s))
    codes = [p.error_code for t in resp.responses for p in t.partition_responses]
    assert codes == [0] * 10
    c = Consumer({"bootstrap.servers": shared_broker.bootstrap, "group.id": "big"})
    try:
        for i, batch in enumerate(batches):
            c.assign([TopicPartition(topic_name, i, 0)])
            msgs = []
            while len(msgs) < 1000:
                m = c.poll(10)
                assert m is not None and m.error() is None
                msgs.append(m)
            expected = [r.value for r in decode_batch(batch)[1]]
            assert [m.value() for m in msgs] == expected
            assert [m.offset() for m in msgs] == list(range(1000))
    finally:
        c.close()
