"""Produce and consume through a real broker with each mainstream Kafka client.

Covers: every compression codec, keys, headers, timestamps, idempotence, contiguous
offsets per partition, watermarks and offsets-for-times, for confluent-kafka (librdkafka),
aiokafka and kafka-python.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


def create_topic(bootstrap: str, name: str, partitions: int = 1, **configs: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    fs = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=configs)]
    )
    fs[name].result(timeout=15)


def consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 30.0, **extra):
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{topic}-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            **extra,
        }
    )
    out = []
    try:
        meta = c.list_topics(topic, timeout=10)
        parts = sorted(meta.topics[topic].partitions)
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        deadline = time.monotonic() + timeout
        while len(out) < expected and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                raise KafkaException(msg.error())
            out.append(msg)
    finally:
        c.close()
    return out


@pytest.mark.parametrize("codec", CODECS)
def test_confluent_produce_consume_codec(shared_broker, topic_name, codec):
    bootstrap = shared_broker.bootstrap
    create_topic(bootstrap, topic_name, partitions=3)
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "compression.type": codec,
            "linger.ms": 5,
        }
    )
    n = 300
    base_ts = 1_700_000_000_000
    delivered = []

    def on_delivery(err, msg):
        assert err is None, err
        delivered.append((msg.partition(), msg.offset()))

    for i in range(n):
        p.produce(
            topic_name,
            key=f"key-{i % 17}".encode(),
            value=f"value-{i}".encode() * (1 + i % 5),
            headers=[("h", f"{i}".encode()), ("empty", b"")],
            timestamp=base_ts + i,
            partition=i % 3,
            on_delivery=on_delivery,
        )
    assert p.flush(30) == 0
    assert len(delivered) == n
    msgs = consume_all(bootstrap, topic_name, n)
    assert len(msgs) == n
    by_part: dict[int, list] = {}
    for m in msgs:
        by_part.setdefault(m.partition(), []).append(m)
    for part, ms in by_part.items():
        offsets = [m.offset() for m in ms]
        assert offsets == list(range(len(ms))), f"partition {part} offsets not contiguous"
    for m in msgs:
        i = int(dict(m.headers())["h"])
        assert m.key() == f"key-{i % 17}".encode()
        assert m.value() == f"value-{i}".encode() * (1 + i % 5)
        assert m.timestamp()[1] == base_ts + i
        assert dict(m.headers())["empty"] == b""
        assert m.partition() == i % 3


def test_watermarks_and_offsets_for_times(shared_broker, topic_name):
    bootstrap = shared_broker.bootstrap
    create_topic(bootstrap, topic_name)
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    base = 1_600_000_000_000
    for i in range(10):
        p.produce(topic_name, value=b"x", timestamp=base + i * 1000, partition=0)
        p.flush(10)  # one batch per record, so lookups land between batches
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "wm"})
    try:
        low, high = c.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=10)
        assert (low, high) == (0, 10)
        res = c.offsets_for_times([TopicPartition(topic_name, 0, base + 3500)], timeout=10)
        assert res[0].offset == 4
        res = c.offsets_for_times([TopicPartition(topic_name, 0, base)], timeout=10)
        assert res[0].offset == 0
        res = c.offsets_for_times([TopicPartition(topic_name, 0, base + 10**7)], timeout=10)
        assert res[0].offset == -1  # past the newest timestamp: the end
    finally:
        c.close()


def test_aiokafka_produce_consume(shared_broker, topic_name):
    aiokafka = pytest.importorskip("aiokafka")

    async def run() -> None:
        bootstrap = shared_broker.bootstrap
        producer = aiokafka.AIOKafkaProducer(
            bootstrap_servers=bootstrap, enable_idempotence=True, compression_type="gzip"
        )
        await producer.start()
        try:
            for i in range(50):
                await producer.send_and_wait(
                    topic_name,
                    key=b"k%d" % i,
                    value=b"v%d" % i,
                    headers=[("n", b"%d" % i)],
                    timestamp_ms=1_650_000_000_000 + i,
                )
        finally:
            await producer.stop()
        consumer = aiokafka.AIOKafkaConsumer(
            topic_name,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await consumer.start()
        try:
            got = []
            deadline = time.monotonic() + 30
            while len(got) < 50 and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=1000)
                for msgs in batch.values():
                    got.extend(msgs)
        finally:
            await consumer.stop()
        assert [m.offset for m in got] == list(range(50))
        assert [m.value for m in got] == [b"v%d" % i for i in range(50)]
        assert [m.key for m in got] == [b"k%d" % i for i in range(50)]
        assert [m.timestamp for m in got] == [1_650_000_000_000 + i for i in range(50)]
        assert [dict(m.headers)["n"] for m in got] == [b"%d" % i for i in range(50)]

    asyncio.run(run())


def test_kafka_python_produce_consume(shared_broker, topic_name):
    kafka = pytest.importorskip("kafka")
    bootstrap = shared_broker.bootstrap
    producer = kafka.KafkaProducer(
        bootstrap_servers=bootstrap, compression_type="lz4", enable_idempotence=True, acks="all"
    )
    futures = [
        producer.send(topic_name, key=b"k%d" % i, value=b"v%d" % i, headers=[("n", b"%d" % i)])
        for i in range(40)
    ]
    producer.flush(30)
    offsets = [f.get(timeout=10).offset for f in futures]
    producer.close()
    assert offsets == list(range(40))
    consumer = kafka.KafkaConsumer(
        topic_name,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=5000,
        group_id=None,
    )
    got = []
    for m in consumer:
        got.append(m)
        if len(got) == 40:
            break
    consumer.close()
    assert [m.value for m in got] == [b"v%d" % i for i in range(40)]
    assert [m.offset for m in got] == list(range(40))
    assert [dict(m.headers)["n"] for m in got] == [b"%d" % i for i in range(40)]


def test_acks_zero_and_acks_one(shared_broker, topic_name):
    bootstrap = shared_broker.bootstrap
    create_topic(bootstrap, topic_name)
    for acks in ("0", "1", "all"):
        p = Producer({"bootstrap.servers": bootstrap, "acks": acks, "linger.ms": 1})
        for i in range(20):
            p.produce(topic_name, value=f"{acks}-{i}".encode(), partition=0)
        assert p.flush(15) == 0
    msgs = consume_all(bootstrap, topic_name, 60)
    assert sorted(m.value() for m in msgs) == sorted(
        f"{a}-{i}".encode() for a in ("0", "1", "all") for i in range(20)
    )
