"""Consumer groups with the real clients against a real broker process.

Covers: three confluent-kafka consumers sharing six partitions two each, every record
consumed exactly once, and a leaving member's partitions moving to the others, both
with the eager ``range`` assignor and with ``cooperative-sticky`` (where the remaining
members keep what they had and nothing of theirs is revoked); committed offsets that
survive a broker restart (and a kill -9), with a new consumer of the group resuming at
them; aiokafka and kafka-python group consumers with auto-commit; simple commits of
``assign()`` users.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

FAST_GROUP = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 200,
    "topic.metadata.refresh.interval.ms": 1000,
}


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[
        name
    ].result(timeout=15)


def produce(bootstrap: str, topic: str, partitions: int, per_partition: int, tag: str = "") -> int:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for part in range(partitions):
        for i in range(per_partition):
            p.produce(topic, f"{tag}{part}-{i}".encode(), partition=part)
    assert p.flush(15) == 0
    return partitions * per_partition


class Member:
    """A confluent consumer in a group, recording what it is given and what it reads."""

    def __init__(self, bootstrap: str, group: str, topic: str, strategy: str) -> None:
        self.assigned: set[int] = set()
        self.revoked: list[set[int]] = []
        self.records: list[tuple[int, int]] = []
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "partition.assignment.strategy": strategy,
                **FAST_GROUP,
            }
        )
        self.cooperative = strategy == "cooperative-sticky"
        self.consumer.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        if self.cooperative:
            self.assigned |= {p.partition for p in parts}
        else:
            self.assigned = {p.partition for p in parts}

    def _on_revoke(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        gone = {p.partition for p in parts}
        self.revoked.append(gone)
        self.assigned -= gone

    def poll(self) -> None:
        msg = self.consumer.poll(0.05)
        if msg is None:
            return
        if msg.error():
            raise KafkaException(msg.error())
        self.records.append((msg.partition(), msg.offset()))

    def close(self) -> None:
        self.consumer.close()


def poll_until(members: list[Member], done: Callable[[], bool], timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in members:
            m.poll()
        if done():
            return
    raise AssertionError(
        f"timed out; assignments {[sorted(m.assigned) for m in members]}, "
        f"records {[len(m.records) for m in members]}"
    )


def balanced(members: list[Member], total: int) -> Callable[[], bool]:
    def check() -> bool:
        sets = [m.assigned for m in members]
        sizes = {len(s) for s in sets}
        union = set().union(*sets)
        return len(union) == total and sum(len(s) for s in sets) == total and len(sizes) == 1

    return check


def run_three_members(bootstrap: str, strategy: str) -> None:
    topic = f"g6-{uuid.uuid4().hex[:8]}"
    group = f"grp-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, 6)
    members = [Member(bootstrap, group, topic, strategy) for _ in range(3)]
    try:
        poll_until(members, balanced(members, 6))
        assert sorted(len(m.assigned) for m in members) == [2, 2, 2]
        total = produce(bootstrap, topic, 6, 5)
        poll_until(members, lambda: sum(len(m.records) for m in members) >= total)
        seen = [r for m in members for r in m.records]
        assert len(seen) == len(set(seen)) == total  # every record, exactly once
        for m in members:
            assert {p for p, _ in m.records} <= m.assigned
        before = [set(m.assigned) for m in members[:2]]
        revoked_before = [len(m.revoked) for m in members[:2]]
        members[2].close()
        rest = members[:2]
        poll_until(rest, balanced(rest, 6))
        assert sorted(len(m.assigned) for m in rest) == [3, 3]
        if strategy == "cooperative-sticky":
            for m, old, n in zip(rest, before, revoked_before, strict=True):
                assert old <= m.assigned  # kept everything it had
                assert not any(r & old for r in m.revoked[n:])  # and nothing was revoked
    finally:
        for m in members[:2]:
            m.close()


def test_three_consumers_eager_range(shared_broker):
    run_three_members(shared_broker.bootstrap, "range")


def test_three_consumers_cooperative_sticky(shared_broker):
    run_three_members(shared_broker.bootstrap, "cooperative-sticky")


def consume_n(bootstrap: str, group: str, topic: str, n: int, timeout: float = 30.0):
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **FAST_GROUP,
        }
    )
    c.subscribe([topic])
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        msg = c.poll(0.2)
        if msg is None:
            continue
        if msg.error():
            raise KafkaException(msg.error())
        got.append(msg)
    return c, got


def test_commits_survive_a_broker_restart(broker_factory):
    broker = broker_factory()
    topic, group = "restart-topic", "restart-group"
    create_topic(broker.bootstrap, topic, 3)
    produce(broker.bootstrap, topic, 3, 10, tag="a")
    c, got = consume_n(broker.bootstrap, group, topic, 30)
    assert len(got) == 30
    c.commit(asynchronous=False)
    committed = {
        tp.partition: tp.offset
        for tp in c.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
    }
    assert committed == {0: 10, 1: 10, 2: 10}
    c.close()

    broker.restart()

    produce(broker.bootstrap, topic, 3, 4, tag="b")
    c, got = consume_n(broker.bootstrap, group, topic, 12)
    try:
        assert sorted(m.value().decode() for m in got) == sorted(
            f"b{p}-{i}" for p in range(3) for i in range(4)
        )
        assert {m.offset() for m in got} == {10, 11, 12, 13}
        extra = c.poll(1.0)
        assert extra is None or extra.error()
        c.commit(asynchronous=False)
    finally:
        c.close()

    broker.kill()  # and a crash loses no acknowledged commit either
    broker.start()

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
    try:
        committed = c.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
        assert [tp.offset for tp in committed] == [14, 14, 14]
    finally:
        c.close()


def test_simple_commits_from_assign_users(shared_broker):
    bootstrap = shared_broker.bootstrap
    topic, group = f"assign-{uuid.uuid4().hex[:8]}", f"assign-g-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, 2)
    produce(bootstrap, topic, 2, 3)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, 0, 0), TopicPartition(topic, 1, 0)])
        got = 0
        deadline = time.monotonic() + 20
        while got < 6 and time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is not None and not msg.error():
                got += 1
        assert got == 6
        c.commit(
            offsets=[TopicPartition(topic, 0, 2), TopicPartition(topic, 1, 3)], asynchronous=False
        )
        committed = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
        assert [tp.offset for tp in committed] == [2, 3]
    finally:
        c.close()


async def _aiokafka_group(bootstrap: str, topic: str, group: str, n: int) -> dict[int, int]:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition as ATP

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=True,
        auto_commit_interval_ms=200,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=200,
    )
    await consumer.start()
    try:
        got = 0
        deadline = time.monotonic() + 30
        while got < n and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            got += sum(len(v) for v in batch.values())
        assert got == n
        deadline = time.monotonic() + 10
        committed: dict[int, int] = {}
        while time.monotonic() < deadline:
            committed = {p: await consumer.committed(ATP(topic, p)) for p in range(2)}
            if committed == {0: n // 2, 1: n // 2}:
                break
            await asyncio.sleep(0.2)
        return committed
    finally:
        await consumer.stop()


def test_aiokafka_group_consumer_auto_commit(shared_broker):
    topic, group = f"aio-{uuid.uuid4().hex[:8]}", f"aio-g-{uuid.uuid4().hex[:8]}"
    create_topic(shared_broker.bootstrap, topic, 2)
    produce(shared_broker.bootstrap, topic, 2, 5)
    committed = asyncio.run(_aiokafka_group(shared_broker.bootstrap, topic, group, 10))
    assert committed == {0: 5, 1: 5}


def test_kafka_python_group_consumer_auto_commit(shared_broker):
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP

    topic, group = f"kp-{uuid.uuid4().hex[:8]}", f"kp-g-{uuid.uuid4().hex[:8]}"
    create_topic(shared_broker.bootstrap, topic, 2)
    produce(shared_broker.bootstrap, topic, 2, 5)
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=shared_broker.bootstrap,
        group_id=group,
        enable_auto_commit=True,
        auto_commit_interval_ms=200,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=200,
    )
    try:
        got = 0
        deadline = time.monotonic() + 30
        while got < 10 and time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200)
            got += sum(len(v) for v in batch.values())
        assert got == 10
        deadline = time.monotonic() + 10
        committed: dict[int, int | None] = {}
        while time.monotonic() < deadline:
            consumer.poll(timeout_ms=100)  # auto-commit runs inside poll
            committed = {p: consumer.committed(KTP(topic, p)) for p in range(2)}
            if committed == {0: 5, 1: 5}:
                break
        assert committed == {0: 5, 1: 5}
    finally:
        consumer.close()
    # a second consumer of the group resumes after the committed offsets: nothing left
    c, got2 = consume_n(shared_broker.bootstrap, group, topic, 1, timeout=3)
    c.close()
    assert got2 == []
