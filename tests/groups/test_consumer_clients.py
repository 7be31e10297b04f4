"""confluent-kafka consumers with ``group.protocol: consumer`` against a real broker.

Several members join and leave while records are produced; every record is consumed
exactly once (offsets committed synchronously after processing), the final assignment is
balanced, and the group epoch stays small (no rebalance storm). A static member that
restarts gets its partitions back.
"""

from __future__ import annotations

import threading
import time
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

PARTITIONS = 6


def consumer(bootstrap: str, group: str, **extra: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "group.protocol": "consumer",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **extra,
        }
    )


def test_members_join_and_leave_under_load(broker_factory) -> None:
    broker = broker_factory(groups__consumer_heartbeat_interval_ms=500)
    b = broker.bootstrap
    topic = f"load-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": b})
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])[
        topic
    ].result(timeout=15)
    group = "load-group"
    total = 3000
    seen: dict[bytes, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def run(c: Consumer, until: threading.Event) -> None:
        c.subscribe([topic])
        while not until.is_set():
            m = c.poll(0.2)
            if m is None or m.error():
                continue
            with lock:
                seen[m.value()] = seen.get(m.value(), 0) + 1
            c.commit(message=m, asynchronous=False)
        c.close()

    def produce() -> None:
        p = Producer({"bootstrap.servers": b, "enable.idempotence": True})
        for i in range(total):
            p.produce(topic, value=str(i).encode(), partition=i % PARTITIONS)
            if i % 100 == 0:
                p.flush()
                time.sleep(0.05)
        p.flush()

    stops = [threading.Event() for _ in range(4)]
    consumers = [consumer(b, group, **{"client.id": f"c{i}"}) for i in range(4)]
    threads = [threading.Thread(target=run, args=(consumers[0], stops[0]))]
    threads[0].start()
    producer = threading.Thread(target=produce)
    producer.start()
    for i in (1, 2, 3):
        time.sleep(1.0)
        t = threading.Thread(target=run, args=(consumers[i], stops[i]))
        t.start()
        threads.append(t)
    time.sleep(2.0)
    stops[1].set()  # one member leaves in the middle
    producer.join()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with lock:
            if len(seen) >= total:
                break
        time.sleep(0.2)
    time.sleep(2.0)
    # the remaining three converge to a balanced assignment
    admin = AdminClient({"bootstrap.servers": b})
    desc = None
    for _ in range(50):
        desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
        counts = [len(m.assignment.topic_partitions) for m in desc.members]
        if len(desc.members) == 3 and sum(counts) == PARTITIONS and max(counts) - min(counts) <= 1:
            break
        time.sleep(0.3)
    for s in stops:
        s.set()
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert len(seen) == total
    dupes = {k: n for k, n in seen.items() if n > 1}
    assert not dupes, f"{len(dupes)} records consumed more than once"
    assert desc is not None and len(desc.members) == 3
    counts = [len(m.assignment.topic_partitions) for m in desc.members]
    assert sum(counts) == PARTITIONS and max(counts) - min(counts) <= 1
    # no storm: 4 joins + 1 leave move the group epoch a handful of times, not hundreds
    from kafka_wire import WireClient

    from shazamq.protocol.messages.consumer_group_describe_request import (
        ConsumerGroupDescribeRequest,
    )

    d = WireClient(b).call(ConsumerGroupDescribeRequest(group_ids=[group]), 0).groups[0]
    assert d.group_epoch <= 12, d.group_epoch


def test_static_member_restart_keeps_partitions(broker_factory) -> None:
    broker = broker_factory(groups__consumer_heartbeat_interval_ms=500)
    b = broker.bootstrap
    topic = f"static-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": b})
    admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])[topic].result(
        timeout=15
    )
    group = "static-group"

    def assigned(c: Consumer, want: int) -> set[int]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            c.poll(0.2)
            parts = {tp.partition for tp in c.assignment()}
            if len(parts) == want:
                return parts
        return {tp.partition for tp in c.assignment()}

    a = consumer(b, group, **{"group.instance.id": "a"})
    other = consumer(b, group, **{"group.instance.id": "b"})
    a.subscribe([topic])
    other.subscribe([topic])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        a.poll(0.1)
        other.poll(0.1)
        if len(a.assignment()) == 2 and len(other.assignment()) == 2:
            break
    before = {tp.partition for tp in a.assignment()}
    assert len(before) == 2
    a.close()
    a2 = consumer(b, group, **{"group.instance.id": "a"})
    a2.subscribe([topic])
    after = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        a2.poll(0.1)
        other.poll(0.1)
        after = {tp.partition for tp in a2.assignment()}
        if after:
            break
    assert after == before
    assert {tp.partition for tp in other.assignment()} == {0, 1, 2, 3} - before
    a2.close()
    other.close()
