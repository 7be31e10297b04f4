"""Durability: kill -9 during a produce load, clean restarts, and SIGTERM.

Every record acknowledged before the kill is there after restart, in order, once; new
records continue at the next offset. The idempotent producer's state survives too.
"""

from __future__ import annotations

import threading
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from kafka_helpers import make_topic


def read_partition(bootstrap: str, topic: str, partition: int, expected: int):
    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "reader", "enable.auto.commit": False}
    )
    out = []
    try:
        c.assign([TopicPartition(topic, partition, 0)])
        deadline = time.monotonic() + 60
        idle = 0
        while time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None:
                idle += 1
                if len(out) >= expected and idle > 2:
                    break
                continue
            idle = 0
            assert not msg.error(), msg.error()
            out.append((msg.offset(), msg.value()))
    finally:
        c.close()
    return out


def test_kill_9_during_produce_keeps_acknowledged(broker_factory, topic_name):
    b = broker_factory()
    make_topic(b.bootstrap, topic_name, 2)
    acked: dict[int, list[bytes]] = {0: [], 1: []}
    lock = threading.Lock()
    stop = threading.Event()

    def on_delivery(err, msg):
        if err is None:
            with lock:
                acked[msg.partition()].append(msg.value())

    def produce():
        p = Producer(
            {
                "bootstrap.servers": b.bootstrap,
                "acks": "all",
                "linger.ms": 2,
                "message.timeout.ms": 3000,
                "enable.idempotence": True,
            }
        )
        i = 0
        while not stop.is_set():
            try:
                p.produce(topic_name, value=b"r%08d" % i, partition=i % 2, on_delivery=on_delivery)
                i += 1
            except BufferError:
                p.poll(0.01)
            p.poll(0)
        p.flush(5)

    t = threading.Thread(target=produce)
    t.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with lock:
            if min(len(v) for v in acked.values()) > 2000:
                break
        time.sleep(0.05)
    b.kill()
    stop.set()
    t.join(30)
    with lock:
        snapshot = {k: list(v) for k, v in acked.items()}
    assert min(len(v) for v in snapshot.values()) > 0
    b.start()
    for part, values in snapshot.items():
        got = read_partition(b.bootstrap, topic_name, part, len(values))
        offsets = [o for o, _ in got]
        assert offsets == list(range(len(got))), "offsets must stay contiguous"
        got_values = [v for _, v in got]
        # Every acknowledged record is there, in produce order, exactly once.
        assert len(set(got_values)) == len(got_values), "a record was stored twice"
        positions = {v: i for i, v in enumerate(got_values)}
        missing = [v for v in values if v not in positions]
        assert not missing, f"{len(missing)} acknowledged records lost"
        idx = [positions[v] for v in values]
        assert idx == sorted(idx)
    # New records continue at the next offset.
    end = len(read_partition(b.bootstrap, topic_name, 0, len(snapshot[0])))
    p = Producer({"bootstrap.servers": b.bootstrap})
    offsets = []
    p.produce(
        topic_name,
        value=b"after",
        partition=0,
        on_delivery=lambda err, msg: offsets.append(msg.offset()),
    )
    p.flush(10)
    assert offsets == [end]


def test_clean_restart_is_fast_and_keeps_everything(broker_factory, topic_name):
    b = broker_factory()
    p = Producer({"bootstrap.servers": b.bootstrap, "enable.idempotence": True})
    for i in range(500):
        p.produce(topic_name, value=b"%d" % i)
    assert p.flush(15) == 0
    assert b.stop() == 0
    assert "stopped cleanly" in b.log_text()
    b.start()
    got = read_partition(b.bootstrap, topic_name, 0, 500)
    assert [v for _, v in got] == [b"%d" % i for i in range(500)]
