"""pytest-benchmark suites for the pieces on the broker's hot path.

    pytest benchmarks/ --benchmark-only                  # everything
    pytest benchmarks/ --benchmark-only -k fetch         # a subset
    pytest benchmarks/ --benchmark-only --benchmark-json out.json

Request receive, decode and response encode for Produce and Fetch, batch validation, log
append, log read and the sparse index lookup, on the shape librdkafka sends under load:
1 MiB per partition of 1 KiB records in 256 KiB batches. Where the broker changed how a
piece works, the old way is benchmarked next to the new one (``*_copying``,
``*_streamreader``, ``*_from_bytes``), so one run shows the difference. These are run on
purpose, never by the test suite; they assert only that each piece did its job.
"""

from __future__ import annotations

import asyncio
import os
import random
from types import SimpleNamespace

import pytest

from shazamq.broker.log import LogConfig, PartitionLog
from shazamq.protocol import framing
from shazamq.protocol.messages.fetch_response import (
    FetchableTopicResponse,
    FetchResponse,
    PartitionData,
)
from shazamq.protocol.messages.produce_request import (
    PartitionProduceData,
    ProduceRequest,
    TopicProduceData,
)
from shazamq.protocol.records import (
    Record,
    _check_records_c,
    _check_records_py,
    batch_records_data,
    build_batch,
    iter_batches,
    validate_batches,
)

RECORD = 1024
PER_BATCH = 256  # 256 KiB batches
BATCHES = 4  # 1 MiB per partition payload
PARTITIONS = 4
CHUNK = 256 * 1024  # bytes one socket read delivers


def make_batches(n: int = BATCHES, compression: int = 0) -> bytes:
    rng = random.Random(1)
    out = bytearray()
    for _ in range(n):
        records = [
            Record(offset_delta=i, timestamp_delta=i, key=None, value=rng.randbytes(RECORD))
            for i in range(PER_BATCH)
        ]
        out += build_batch(records, compression=compression)
    return bytes(out)


@pytest.fixture(scope="module")
def batches() -> bytes:
    return make_batches()


@pytest.fixture(scope="module")
def produce_wire(batches: bytes) -> bytes:
    """A whole Produce v9 request as sent: size prefix, header, 4 partitions of 1 MiB."""
    req = ProduceRequest(
        acks=-1,
        timeout_ms=30000,
        topic_data=[
            TopicProduceData(
                name="bench",
                partition_data=[
                    PartitionProduceData(index=i, records=batches) for i in range(PARTITIONS)
                ],
            )
        ],
    )
    return framing.encode_request(req, 9, 1, "bench")


@pytest.fixture(scope="module")
def produce_frame(produce_wire: bytes) -> memoryview:
    return memoryview(produce_wire[4:])


# ------------------------------------------------------------------- receiving a request


def test_receive_produce_streamreader(benchmark, produce_wire):
    """The old listener: each read is a new bytes object, fed into a StreamReader's
    buffer, and readexactly copies the frame out of it (read-only)."""
    loop = asyncio.new_event_loop()
    view = memoryview(produce_wire)

    def receive():
        reader = asyncio.StreamReader(limit=8 * 1024 * 1024, loop=loop)
        for start in range(0, len(view), CHUNK):
            reader.feed_data(bytes(view[start : start + CHUNK]))  # the socket read
        coro = reader.readexactly(4)
        try:
            coro.send(None)
        except StopIteration as done:
            size = int.from_bytes(done.value, "big")
        coro = reader.readexactly(size)
        try:
            coro.send(None)
        except StopIteration as done:
            return done.value

    frame = benchmark(receive)
    loop.close()
    assert len(frame) == len(produce_wire) - 4


def test_receive_produce_buffered(benchmark, produce_wire):
    """The listener now: reads land in the buffers the connection hands out; the frame
    gets a writable buffer of its own size and the rest is received straight into it."""
    server_mod = pytest.importorskip("shazamq.broker.server")
    if not hasattr(server_mod, "_Connection"):
        pytest.skip("this revision's listener reads through a StreamReader")
    view = memoryview(produce_wire)
    if hasattr(server_mod, "ConnectionLimits"):  # a listener with a memory budget
        from shazamq.broker.metrics import BrokerMetrics

        server = server_mod.KafkaServer(
            None,  # type: ignore[arg-type]
            BrokerMetrics(),
            host="127.0.0.1",
            port=0,
            max_request_bytes=100 * 1024 * 1024,
        )
    else:
        server = SimpleNamespace(max_request_bytes=100 * 1024 * 1024)

    def receive():
        conn = server_mod._Connection(server)  # type: ignore[arg-type]
        pos = 0
        while pos < len(view):
            buf = conn.get_buffer(-1)
            n = min(len(buf), CHUNK, len(view) - pos)
            buf[:n] = view[pos : pos + n]  # the socket read (recv_into)
            conn.buffer_updated(n)
            pos += n
        return conn.frames[0][0]

    frame = benchmark(receive)
    assert len(frame) == len(produce_wire) - 4


# --------------------------------------------------------------------- decode / encode


def test_decode_produce_request(benchmark, produce_frame):
    def decode():
        header, offset = framing.decode_request_header(produce_frame)
        return ProduceRequest.decode(produce_frame, offset, header.request_api_version)

    req, _ = benchmark(decode)
    assert len(req.topic_data[0].partition_data) == PARTITIONS


@pytest.fixture(scope="module")
def fetch_response(batches: bytes) -> FetchResponse:
    return FetchResponse(
        responses=[
            FetchableTopicResponse(
                topic="bench",
                partitions=[
                    PartitionData(partition_index=i, high_watermark=10, records=batches)
                    for i in range(PARTITIONS)
                ],
            )
        ]
    )


def test_encode_fetch_response_copying(benchmark, batches, fetch_response):
    """One contiguous frame: the record batches are copied into it (the old way)."""
    out = benchmark(framing.encode_response, 1, 12, 7, fetch_response)
    assert len(out) > PARTITIONS * len(batches)


def test_encode_fetch_response_parts(benchmark, batches, fetch_response):
    """The frame as buffers for writelines: record batches stay where they were read."""
    encode = getattr(framing, "encode_response_parts", None)
    if encode is None:
        pytest.skip("this revision copies record batches into the response")
    parts = benchmark(encode, 1, 12, 7, fetch_response)
    assert sum(len(p) for p in parts) > PARTITIONS * len(batches)


# ------------------------------------------------------------------------- validation


def test_validate_batches(benchmark, batches):
    result = benchmark(validate_batches, batches, max_batch_bytes=2**31 - 1, from_client=True)
    assert len(result) == BATCHES


def small_records_batch() -> bytes:
    """One 256 KiB-ish batch of 100 B records (2,000 of them), as for the 100 B load."""
    rng = random.Random(2)
    records = [
        Record(offset_delta=i, timestamp_delta=i // 50, key=None, value=rng.randbytes(100))
        for i in range(2000)
    ]
    return build_batch(records)


@pytest.mark.parametrize("impl", ["c", "python"])
@pytest.mark.parametrize("shape", ["1KiB", "100B"])
def test_check_records(benchmark, batches, shape, impl):
    """The record walk of produce validation (Kafka's LogValidator) on 1 MiB of records:
    the compiled walk (``_recordwalk``, skipped when not built) and the Python one."""
    if impl == "c" and _check_records_c is None:
        pytest.skip("the C extension was not built")
    check = _check_records_c if impl == "c" else _check_records_py
    payload = batches if shape == "1KiB" else small_records_batch() * 4
    found = [(pos, h, batch_records_data(payload, pos, h)) for pos, h in iter_batches(payload)]

    def walk():
        for _pos, h, data in found:
            check(data, h.records_count)

    benchmark(walk)


# -------------------------------------------------------------------------------- log


@pytest.fixture
def plog(tmp_path):
    cfg = LogConfig(segment_bytes=1024 * 1024 * 1024)
    log = PartitionLog.open(str(tmp_path / "bench-0"), cfg)
    yield log
    log.close()


# Each append writes 1 MiB to the page cache; a bounded number of rounds keeps a run from
# writing gigabytes.
APPEND_ROUNDS = 300


def test_log_append_from_bytes(benchmark, plog, batches):
    """Append a read-only payload: the log copies it to patch offsets (the old path)."""
    info = benchmark.pedantic(
        plog.append, args=(batches,), kwargs={"leader_epoch": 0}, rounds=APPEND_ROUNDS
    )
    assert info.last_offset >= BATCHES * PER_BATCH - 1


def test_log_append_in_place(benchmark, plog, batches):
    """Append a writable payload (what the listener now hands over): offsets are patched
    in place and the bytes go to the file with one write."""
    frames = [bytearray(batches) for _ in range(8)]
    it = iter(range(10**9))

    def append():
        return plog.append(memoryview(frames[next(it) % 8]), leader_epoch=0)

    info = benchmark.pedantic(append, rounds=APPEND_ROUNDS)
    assert info.last_offset >= BATCHES * PER_BATCH - 1


def test_log_read(benchmark, plog, batches):
    for _ in range(64):
        plog.append(batches, leader_epoch=0)
    end = plog.log_end_offset
    rng = random.Random(2)
    offsets = [rng.randrange(end) for _ in range(64)]
    it = iter(range(10**9))

    def read():
        return plog.read(offsets[next(it) % 64], 1024 * 1024)

    data = benchmark(read)
    assert len(data) >= RECORD


def test_index_lookup(benchmark, plog, batches):
    for _ in range(64):
        plog.append(batches, leader_epoch=0)
    seg = plog.active_segment
    end = plog.log_end_offset
    rng = random.Random(3)
    targets = [rng.randrange(end) for _ in range(256)]
    it = iter(range(10**9))

    def lookup():
        return seg.find_batch(targets[next(it) % 256])

    assert benchmark(lookup) is not None


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([__file__, "--benchmark-only", *os.sys.argv[1:]]))
