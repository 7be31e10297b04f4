"""Real clients on a fresh single broker, whose internal topics do not exist yet.

Producing (idempotent producers too) creates none of them. The first group consumer of
each client library (confluent-kafka, aiokafka, kafka-python) gets its coordinator,
consumes and commits while ``__consumer_offsets`` is created under it; a transactional
producer that also commits a group's offsets (``send_offsets_to_transaction``) gets
``__transaction_state`` and ``__consumer_offsets`` the same way, and a read_committed
consumer sees its records.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka_helpers import RawClient

from shazamq.protocol.messages.metadata_request import MetadataRequest

OFFSETS, STATE = "__consumer_offsets", "__transaction_state"
GROUP_SETTINGS = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 200}


def topic_names(port: int) -> set[str]:
    c = RawClient(port)
    try:
        md = c.request(MetadataRequest(topics=None, allow_auto_topic_creation=False), 12)
    finally:
        c.close()
    return {t.name for t in md.topics}


def fresh_topic(bootstrap: str, port: int) -> str:
    """A two-partition topic holding five records in each partition."""
    topic = f"t-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(
        timeout=15
    )
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i in range(10):
        p.produce(topic, f"r{i}".encode(), partition=i % 2)
    assert p.flush(15) == 0
    assert topic_names(port) == {topic}  # an idempotent producer needs no coordinator
    return topic


def confluent_group(bootstrap: str, topic: str, group: str) -> dict[int, int]:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 200,
        }
    )
    try:
        c.subscribe([topic])
        got = 0
        deadline = time.monotonic() + 60
        while got < 10 and time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is not None and msg.error() is None:
                got += 1
        assert got == 10
        c.commit(asynchronous=False)
        parts = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=15)
        return {tp.partition: tp.offset for tp in parts}
    finally:
        c.close()


async def aiokafka_group(bootstrap: str, topic: str, group: str) -> dict[int, int]:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition as ATP

    c = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **GROUP_SETTINGS,
    )
    await c.start()
    try:
        got = 0
        deadline = time.monotonic() + 60
        while got < 10 and time.monotonic() < deadline:
            batch = await c.getmany(timeout_ms=200)
            got += sum(len(v) for v in batch.values())
        assert got == 10
        await c.commit()
        return {p: await c.committed(ATP(topic, p)) for p in range(2)}
    finally:
        await c.stop()


def kafka_python_group(bootstrap: str, topic: str, group: str) -> dict[int, int]:
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP

    c = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **GROUP_SETTINGS,
    )
    try:
        got = 0
        deadline = time.monotonic() + 60
        while got < 10 and time.monotonic() < deadline:
            batch = c.poll(timeout_ms=200)
            got += sum(len(v) for v in batch.values())
        assert got == 10
        c.commit()
        return {p: c.committed(KTP(topic, p)) for p in range(2)}
    finally:
        c.close()


@pytest.mark.parametrize("client", ["confluent-kafka", "aiokafka", "kafka-python"])
def test_first_group_consumer_creates_offsets_topic(broker_factory, client):
    b = broker_factory()
    topic = fresh_topic(b.bootstrap, b.port)
    group = f"g-{uuid.uuid4().hex[:8]}"
    if client == "confluent-kafka":
        committed = confluent_group(b.bootstrap, topic, group)
    elif client == "aiokafka":
        committed = asyncio.run(aiokafka_group(b.bootstrap, topic, group))
    else:
        committed = kafka_python_group(b.bootstrap, topic, group)
    assert committed == {0: 5, 1: 5}
    assert topic_names(b.port) == {topic, OFFSETS}
    assert {d.name for d in b.data_dir.rglob("__*-0") if d.is_dir()} == {f"{OFFSETS}-0"}

    # the commits were written to the topic just created: a restart loads them back
    b.restart()
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group})
    try:
        parts = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=15)
    finally:
        c.close()
    assert [tp.offset for tp in parts] == [5, 5]


def test_first_transactional_producer_creates_state_topic(broker_factory):
    b = broker_factory()
    topic = fresh_topic(b.bootstrap, b.port)
    group = f"g-{uuid.uuid4().hex[:8]}"
    p = Producer({"bootstrap.servers": b.bootstrap, "transactional.id": f"tx-{topic}"})
    p.init_transactions(30)
    p.begin_transaction()
    for i in range(3):
        p.produce(topic, f"tx{i}".encode(), partition=0)
    # the group's offsets committed with the transaction (consume-transform-produce)
    meta = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group})
    p.send_offsets_to_transaction([TopicPartition(topic, 1, 4)], meta.consumer_group_metadata(), 30)
    meta.close()
    p.commit_transaction(30)

    assert topic_names(b.port) == {topic, OFFSETS, STATE}
    c = Consumer(
        {
            "bootstrap.servers": b.bootstrap,
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    try:
        (committed,) = c.committed([TopicPartition(topic, 1)], timeout=15)
        assert committed.offset == 4
        c.assign([TopicPartition(topic, 0, 5)])
        got: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(got) < 3 and time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is not None and msg.error() is None:
                got.append(msg.value())
        assert got == [b"tx0", b"tx1", b"tx2"]
    finally:
        c.close()
