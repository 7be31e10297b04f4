"""The inter-broker client against a real broker process, and against tiny fake peers.

Covers: ApiVersions and version negotiation, Metadata, CreateTopics + Produce + Fetch with
the record batch coming back byte for byte (and staying valid after later frames),
pipelining (50 requests in flight on one connection, one of them cancelled), a broker
killed with requests in flight, request timeouts that leave the connection usable, the
client pool, and the stream errors only a misbehaving peer can cause (unknown correlation
id, oversized frame, ApiVersions answered in v0).
"""

from __future__ import annotations

import asyncio
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from conftest import free_port

from shazamq.broker.cluster.client import BrokerClient, BrokerConnectionError, ClientPool
from shazamq.protocol import framing
from shazamq.protocol.errors import ErrorCode, UnsupportedVersionError
from shazamq.protocol.messages import API_KEYS
from shazamq.protocol.messages.api_versions_request import ApiVersionsRequest
from shazamq.protocol.messages.api_versions_response import ApiVersion, ApiVersionsResponse
from shazamq.protocol.messages.create_topics_request import CreatableTopic, CreateTopicsRequest
from shazamq.protocol.messages.fetch_request import FetchPartition, FetchRequest, FetchTopic
from shazamq.protocol.messages.metadata_request import MetadataRequest, MetadataRequestTopic
from shazamq.protocol.messages.produce_request import (
    PartitionProduceData,
    ProduceRequest,
    TopicProduceData,
)
from shazamq.protocol.records import Record, build_batch, iter_batches

PRODUCE, FETCH, METADATA, API_VERSIONS, CREATE_TOPICS = 0, 1, 3, 18, 19


@pytest.fixture
async def client(shared_broker) -> AsyncIterator[BrokerClient]:
    c = BrokerClient("127.0.0.1", shared_broker.port, client_id="test-client")
    await c.api_versions()
    yield c
    await c.close()


async def create_topic(c: BrokerClient, name: str, partitions: int = 1) -> uuid.UUID:
    version = c.best_version(CREATE_TOPICS, 7)
    req = CreateTopicsRequest(
        topics=[CreatableTopic(name=name, num_partitions=partitions, replication_factor=1)],
        timeout_ms=10_000,
    )
    (result,) = (await c.request(CREATE_TOPICS, version, req)).topics
    assert (result.name, result.error_code) == (name, ErrorCode.NONE)
    return result.topic_id


async def produce(c: BrokerClient, topic: str, batch: bytes) -> int:
    req = ProduceRequest(
        acks=-1,
        timeout_ms=5000,
        topic_data=[
            TopicProduceData(
                name=topic, partition_data=[PartitionProduceData(index=0, records=batch)]
            )
        ],
    )
    resp = await c.request(PRODUCE, c.best_version(PRODUCE, 11), req)
    (part,) = resp.responses[0].partition_responses
    assert part.error_code == ErrorCode.NONE
    return part.base_offset


def fetch_request(topic: str, topic_id: uuid.UUID, offset: int, *, max_wait_ms: int = 0):
    return FetchRequest(
        replica_id=-1,
        max_wait_ms=max_wait_ms,
        min_bytes=1 if max_wait_ms else 0,
        max_bytes=1 << 20,
        topics=[
            FetchTopic(
                topic=topic,
                topic_id=topic_id,
                partitions=[
                    FetchPartition(partition=0, fetch_offset=offset, partition_max_bytes=1 << 20)
                ],
            )
        ],
    )


async def test_api_versions_and_best_version(shared_broker):
    c = BrokerClient("127.0.0.1", shared_broker.port)
    with pytest.raises(RuntimeError):
        c.best_version(FETCH, 13)
    assert not c.connected
    versions = await c.api_versions()  # connects lazily
    assert c.connected
    for key in (PRODUCE, FETCH, METADATA, API_VERSIONS, CREATE_TOPICS):
        low, high = versions[key]
        assert API_KEYS[key].min_version <= low <= high <= API_KEYS[key].max_version
    fetch_low, fetch_high = versions[FETCH]
    assert c.best_version(FETCH, 1000) == fetch_high
    assert c.best_version(FETCH, fetch_high - 1) == fetch_high - 1
    assert c.best_version(API_VERSIONS, 3) == 3
    if fetch_low > 0:
        with pytest.raises(UnsupportedVersionError):
            c.best_version(FETCH, fetch_low - 1)
    unsupported = next(k for k in API_KEYS if k not in versions)
    with pytest.raises(UnsupportedVersionError):
        c.best_version(unsupported, 100)
    with pytest.raises(UnsupportedVersionError):
        c.best_version(9999, 1)
    await c.close()
    assert not c.connected
    with pytest.raises(BrokerConnectionError, match=f"127.0.0.1:{shared_broker.port}"):
        await c.api_versions()


async def test_metadata(client, shared_broker, topic_name):
    topic_id = await create_topic(client, topic_name, partitions=3)
    version = client.best_version(METADATA, 12)
    req = MetadataRequest(
        topics=[MetadataRequestTopic(name=topic_name)], allow_auto_topic_creation=False
    )
    resp = await client.request(METADATA, version, req)
    assert [(b.host, b.port) for b in resp.brokers] == [("127.0.0.1", shared_broker.port)]
    assert resp.cluster_id
    (topic,) = resp.topics
    assert (topic.name, topic.error_code, topic.topic_id) == (topic_name, 0, topic_id)
    assert sorted(p.partition_index for p in topic.partitions) == [0, 1, 2]
    assert {p.leader_id for p in topic.partitions} == {resp.brokers[0].node_id}


async def test_produce_then_fetch_returns_the_same_bytes(client, topic_name):
    topic_id = await create_topic(client, topic_name)
    # The log stamps the partition leader epoch (0 on a fresh topic) and the offsets into
    # the batch; built with those values, the stored batch is byte-identical.
    first = build_batch(
        [Record(offset_delta=i, value=b"v%d" % i, key=b"k") for i in range(3)],
        base_timestamp=1_700_000_000_000,
        partition_leader_epoch=0,
    )
    second = build_batch(
        [Record(value=b"x" * 5000)],
        base_offset=3,
        base_timestamp=1_700_000_000_001,
        partition_leader_epoch=0,
    )
    assert await produce(client, topic_name, first) == 0
    assert await produce(client, topic_name, second) == 3

    version = client.best_version(FETCH, 17)
    resp = await client.request(FETCH, version, fetch_request(topic_name, topic_id, 0))
    part = resp.responses[0].partitions[0]
    assert (part.error_code, part.high_watermark) == (0, 4)
    records = part.records
    assert bytes(records) == first + second
    assert [h.base_offset for _, h in iter_batches(bytes(records))] == [0, 3]

    # The batches stay valid after later frames arrive on the same connection.
    for _ in range(5):
        again = await client.request(FETCH, version, fetch_request(topic_name, topic_id, 3))
        assert bytes(again.responses[0].partitions[0].records) == second
        await client.api_versions()
    assert bytes(records) == first + second


async def test_fifty_requests_in_flight(client, topic_name):
    topic_id = await create_topic(client, topic_name)
    fetch_version = client.best_version(FETCH, 17)
    metadata_version = client.best_version(METADATA, 12)
    # The broker answers a connection's requests in order, so a long poll at the end of an
    # empty log holds every later request in flight until it returns.
    long_poll = asyncio.create_task(
        client.request(
            FETCH, fetch_version, fetch_request(topic_name, topic_id, 0, max_wait_ms=500)
        )
    )
    names = [f"missing-{i}-{uuid.uuid4().hex[:8]}" for i in range(48)]
    lookups = [
        asyncio.create_task(
            client.request(
                METADATA,
                metadata_version,
                MetadataRequest(
                    topics=[MetadataRequestTopic(name=name)], allow_auto_topic_creation=False
                ),
            )
        )
        for name in names
    ]
    cancelled = asyncio.create_task(client.request(API_VERSIONS, 3, ApiVersionsRequest()))
    await asyncio.sleep(0.1)
    conn = client._conn
    assert conn is not None and len(conn.pending) == 50
    assert not any(t.done() for t in [long_poll, *lookups, cancelled])
    cancelled.cancel()

    started = time.monotonic()
    poll_resp = await long_poll
    answers = await asyncio.gather(*lookups)
    assert time.monotonic() - started < 5
    part = poll_resp.responses[0].partitions[0]
    assert (part.error_code, part.high_watermark, part.records or b"") == (0, 0, b"")
    for name, resp in zip(names, answers, strict=True):
        (topic,) = resp.topics
        assert (topic.name, topic.error_code) == (name, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
    assert cancelled.cancelled()
    await asyncio.sleep(0.05)  # the cancelled request's answer arrives and is dropped
    assert client.connected and not conn.pending
    assert (await client.api_versions())[FETCH][1] == fetch_version


async def test_broker_killed_mid_flight_fails_every_request(broker_factory, topic_name):
    broker = broker_factory()
    c = BrokerClient("127.0.0.1", broker.port)
    await c.api_versions()
    topic_id = await create_topic(c, topic_name)
    version = c.best_version(FETCH, 17)
    requests = [fetch_request(topic_name, topic_id, 0, max_wait_ms=20_000) for _ in range(10)]
    tasks = [asyncio.create_task(c.request(FETCH, version, r)) for r in requests]
    await asyncio.sleep(0.2)
    assert not any(t.done() for t in tasks)

    started = time.monotonic()
    await asyncio.to_thread(broker.kill)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert time.monotonic() - started < 2
    assert all(isinstance(r, BrokerConnectionError) for r in results), results
    assert all(f"127.0.0.1:{broker.port}" in str(r) for r in results)
    assert not c.connected
    # The next request tries to reconnect, and nobody is listening.
    with pytest.raises(BrokerConnectionError, match="cannot connect"):
        await c.api_versions()

    # Back on the same port: the client reconnects by itself on the next request.
    await asyncio.to_thread(broker.start)
    assert (await c.api_versions())[FETCH][1] == version
    assert c.connected
    await c.close()


async def test_request_timeout_leaves_the_connection_usable(client, topic_name):
    topic_id = await create_topic(client, topic_name)
    version = client.best_version(FETCH, 17)
    started = time.monotonic()
    with pytest.raises(BrokerConnectionError, match=r"no answer to Fetch v\d+ within 0.3s"):
        await client.request(
            FETCH, version, fetch_request(topic_name, topic_id, 0, max_wait_ms=1500), timeout=0.3
        )
    assert 0.25 < time.monotonic() - started < 1.4  # before the long poll ends
    assert client.connected
    # Answered once the long poll ahead of it is; the late Fetch answer is dropped.
    versions = await client.request(API_VERSIONS, 3, ApiVersionsRequest(), timeout=5)
    assert versions.error_code == 0
    assert client.connected and not client._conn.pending


async def test_client_pool(shared_broker):
    addresses: dict[int, tuple[str, int]] = {1: ("127.0.0.1", shared_broker.port)}
    pool = ClientPool(addresses.get, client_id="pool-test", connect_timeout=2.0)
    try:
        first, *others = await asyncio.gather(*(pool.get(1) for _ in range(5)))
        assert all(o is first for o in others)
        assert first.connected and first.client_id == "pool-test"
        assert first.best_version(API_VERSIONS, 3) == 3  # negotiated by the pool
        assert await pool.get(1) is first

        pool.invalidate(1)
        assert not first.connected
        with pytest.raises(BrokerConnectionError):
            await first.api_versions()
        second = await pool.get(1)
        assert second is not first and second.connected
        resp = await second.request(API_VERSIONS, 3, ApiVersionsRequest())
        assert resp.error_code == 0

        # A client whose connection broke is replaced on the next get().
        second._conn.fail("simulated network failure")
        third = await pool.get(1)
        assert third is not second and third.connected

        with pytest.raises(BrokerConnectionError, match="node 2: no known address"):
            await pool.get(2)
        addresses[3] = ("127.0.0.1", free_port())
        with pytest.raises(BrokerConnectionError, match="cannot connect"):
            await pool.get(3)
    finally:
        await pool.close()
    assert not third.connected
    with pytest.raises(BrokerConnectionError, match="closed"):
        await pool.get(1)


# -- misbehaving peers: an in-process server that answers with whatever a test wants --


Responder = Callable[[int, int, int, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def fake_broker() -> AsyncIterator[Callable[[Responder], Awaitable[int]]]:
    servers: list[asyncio.Server] = []

    async def start(respond: Responder) -> int:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    (size,) = struct.unpack(">i", await reader.readexactly(4))
                    frame = await reader.readexactly(size)
                    api_key, version, cid = struct.unpack_from(">hhi", frame)
                    await respond(api_key, version, cid, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        servers.append(server)
        return server.sockets[0].getsockname()[1]

    yield start
    for server in servers:
        server.close()


def api_versions_frame(cid: int, version: int) -> bytes:
    resp = ApiVersionsResponse(
        api_keys=[ApiVersion(api_key=API_VERSIONS, min_version=0, max_version=2)]
    )
    return framing.encode_response(API_VERSIONS, version, cid, resp)


async def test_unknown_correlation_id_closes_the_connection(fake_broker):
    async def respond(api_key, version, cid, writer):
        writer.write(api_versions_frame(cid + 1000, version))

    c = BrokerClient("127.0.0.1", await fake_broker(respond))
    with pytest.raises(BrokerConnectionError, match="unknown correlation id"):
        await c.request(API_VERSIONS, 2, ApiVersionsRequest(), timeout=5)
    assert not c.connected
    await c.close()


async def test_oversized_frame_closes_the_connection(fake_broker):
    async def respond(api_key, version, cid, writer):
        writer.write(struct.pack(">ii", 200 * 1024 * 1024, cid))

    c = BrokerClient("127.0.0.1", await fake_broker(respond))
    with pytest.raises(BrokerConnectionError, match=r"outside 4\.\."):
        await c.request(API_VERSIONS, 2, ApiVersionsRequest(), timeout=5)
    await c.close()


async def test_api_versions_falls_back_to_what_the_broker_speaks(fake_broker):
    seen: list[int] = []

    async def respond(api_key, version, cid, writer):
        seen.append(version)
        if version > 2:
            frame = framing.unsupported_version_response(API_VERSIONS, version, cid, (0, 2))
            assert frame is not None
            writer.write(frame)
        else:
            writer.write(api_versions_frame(cid, version))

    c = BrokerClient("127.0.0.1", await fake_broker(respond))
    assert await c.api_versions() == {API_VERSIONS: (0, 2)}
    assert seen == [API_KEYS[API_VERSIONS].max_version, 2]
    assert c.best_version(API_VERSIONS, 4) == 2
    await c.close()


async def test_acks_zero_produce_and_bad_requests(fake_broker):
    async def respond(api_key, version, cid, writer):
        if api_key == API_VERSIONS:
            writer.write(api_versions_frame(cid, version))

    c = BrokerClient("127.0.0.1", await fake_broker(respond))
    # A Kafka broker never answers acks=0 produce requests; nothing waits for one.
    req = ProduceRequest(acks=0, timeout_ms=1000, topic_data=[])
    assert await c.request(PRODUCE, 9, req, timeout=1) is None
    assert not c._conn.pending
    with pytest.raises(ValueError):
        await c.request(FETCH, 12, ApiVersionsRequest())
    with pytest.raises(UnsupportedVersionError):
        await c.request(API_VERSIONS, 99, ApiVersionsRequest())
    # Nothing of the rejected requests reached the stream: the next answer matches.
    assert (await c.request(API_VERSIONS, 2, ApiVersionsRequest())).api_keys[0].max_version == 2
    await c.close()


async def test_pool_follows_address_changes(fake_broker):
    async def respond(api_key, version, cid, writer):
        writer.write(api_versions_frame(cid, version))

    ports = [await fake_broker(respond), await fake_broker(respond)]
    addresses = {7: ("127.0.0.1", ports[0])}
    pool = ClientPool(addresses.get)
    old = await pool.get(7)
    assert old.port == ports[0]
    addresses[7] = ("127.0.0.1", ports[1])  # the broker came back elsewhere
    new = await pool.get(7)
    assert new.port == ports[1] and new.connected
    assert not old.connected
    await pool.close()
    assert not new.connected
