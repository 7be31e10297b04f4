"""Real consumers against fetch sessions: every record read exactly once, in order per
partition, from a topic of many partitions, some records arriving while the consumer is
already in its session (so they reach it through incremental fetches).

kafka-python opens fetch sessions (its FetchSessionHandler); librdkafka and aiokafka fetch
without them (session id 0, epoch -1) and must be served as before.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request

from confluent_kafka import Consumer, Producer, TopicPartition
from kafka_helpers import make_topic

PARTITIONS = 40
FIRST = 200  # records before the consumer starts
SECOND = 120  # records produced once it has read the first ones


def produce(bootstrap: str, topic: str, start: int, count: int) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(start, start + count):
        p.produce(topic, value=b"v%d" % i, partition=i % PARTITIONS)
    assert p.flush(30) == 0


def expected(total: int) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
    for i in range(total):
        out[i % PARTITIONS].append(b"v%d" % i)
    return out


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


class Seen:
    def __init__(self) -> None:
        self.by_partition: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
        self.count = 0

    def add(self, partition: int, value: bytes) -> None:
        self.by_partition[partition].append(value)
        self.count += 1


def test_kafka_python_consumer_uses_a_session(shared_broker, topic_name):
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP

    make_topic(shared_broker.bootstrap, topic_name, partitions=PARTITIONS)
    produce(shared_broker.bootstrap, topic_name, 0, FIRST)
    sessions_before = metric(shared_broker.metrics_port, "shazamq_fetch_sessions")
    consumer = KafkaConsumer(
        bootstrap_servers=shared_broker.bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=200,
    )
    consumer.assign([KTP(topic_name, p) for p in range(PARTITIONS)])
    consumer.seek_to_beginning()
    seen = Seen()
    in_session = False
    deadline = time.monotonic() + 90
    produced_second = False
    while seen.count < FIRST + SECOND and time.monotonic() < deadline:
        for tp, records in consumer.poll(timeout_ms=500).items():
            for r in records:
                seen.add(tp.partition, r.value)
        if seen.count >= FIRST and not produced_second:
            in_session = (
                metric(shared_broker.metrics_port, "shazamq_fetch_sessions") > sessions_before
            )
            produce(shared_broker.bootstrap, topic_name, FIRST, SECOND)
            produced_second = True
    consumer.close()
    assert seen.by_partition == expected(FIRST + SECOND)
    assert in_session, "kafka-python did not open a fetch session"


def test_confluent_consumer_reads_every_record(shared_broker, topic_name):
    make_topic(shared_broker.bootstrap, topic_name, partitions=PARTITIONS)
    produce(shared_broker.bootstrap, topic_name, 0, FIRST)
    c = Consumer(
        {
            "bootstrap.servers": shared_broker.bootstrap,
            "group.id": topic_name,
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 200,
        }
    )
    c.assign([TopicPartition(topic_name, p, 0) for p in range(PARTITIONS)])
    seen = Seen()
    deadline = time.monotonic() + 90
    produced_second = False
    try:
        while seen.count < FIRST + SECOND and time.monotonic() < deadline:
            for m in c.consume(500, timeout=0.5):
                assert m.error() is None, m.error()
                seen.add(m.partition(), m.value())
            if seen.count >= FIRST and not produced_second:
                produce(shared_broker.bootstrap, topic_name, FIRST, SECOND)
                produced_second = True
    finally:
        c.close()
    assert seen.by_partition == expected(FIRST + SECOND)


async def test_aiokafka_consumer_reads_every_record(shared_broker, topic_name):
    from aiokafka import AIOKafkaConsumer
    from aiokafka import TopicPartition as ATP

    make_topic(shared_broker.bootstrap, topic_name, partitions=PARTITIONS)
    await asyncio.to_thread(produce, shared_broker.bootstrap, topic_name, 0, FIRST)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=shared_broker.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=200
    )
    await consumer.start()
    seen = Seen()
    try:
        consumer.assign([ATP(topic_name, p) for p in range(PARTITIONS)])
        await consumer.seek_to_beginning()
        deadline = time.monotonic() + 90
        produced_second = False
        while seen.count < FIRST + SECOND and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                for r in records:
                    seen.add(tp.partition, r.value)
            if seen.count >= FIRST and not produced_second:
                await asyncio.to_thread(produce, shared_broker.bootstrap, topic_name, FIRST, SECOND)
                produced_second = True
    finally:
        await consumer.stop()
    assert seen.by_partition == expected(FIRST + SECOND)
