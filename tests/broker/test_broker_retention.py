"""Retention and compaction, observed the way a user observes them: through a client.

Old segments disappear and the log start offset moves; a compacted topic keeps the latest
value per key and drops tombstones after delete.retention.ms.
"""

from __future__ import annotations

import time

from confluent_kafka import Consumer, Producer, TopicPartition
from kafka_helpers import make_topic


def produce(bootstrap, topic, items, partition=0):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    for key, value in items:
        p.produce(topic, key=key, value=value, partition=partition)
        p.flush(10)  # one batch each, so segments can roll between them
    assert p.flush(10) == 0


def watermarks(bootstrap, topic, partition=0):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "wm"})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
    finally:
        c.close()


def read_all(bootstrap, topic, partition=0):
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "r",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    out = []
    try:
        low, high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        c.assign([TopicPartition(topic, partition, low)])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if out and out[-1].offset() >= high - 1:
                break
            msg = c.poll(0.5)
            if msg is not None and not msg.error():
                out.append(msg)
    finally:
        c.close()
    return out


def wait_until(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


def test_time_retention_deletes_old_segments(broker_factory, topic_name):
    b = broker_factory(storage__retention_check_interval_ms=200)
    make_topic(b.bootstrap, topic_name, 1, {"segment.ms": "100", "retention.ms": "1500"})
    produce(b.bootstrap, topic_name, [(None, b"old-%d" % i) for i in range(5)])
    time.sleep(0.3)
    produce(b.bootstrap, topic_name, [(None, b"x")])
    # The old records' segments expire; the log start offset moves past them.
    wait_until(lambda: watermarks(b.bootstrap, topic_name)[0] >= 5)
    _low, high = watermarks(b.bootstrap, topic_name)
    assert high == 6
    part_dir = b.data_dir / f"{topic_name}-0"
    assert len(list(part_dir.glob("*.log"))) >= 1


def test_size_retention(broker_factory, topic_name):
    b = broker_factory(storage__retention_check_interval_ms=200)
    make_topic(b.bootstrap, topic_name, 1, {"segment.bytes": "2000", "retention.bytes": "4000"})
    produce(b.bootstrap, topic_name, [(None, b"v" * 500) for _ in range(40)])
    wait_until(lambda: watermarks(b.bootstrap, topic_name)[0] > 0)
    low, high = watermarks(b.bootstrap, topic_name)
    assert high == 40 and low > 0
    msgs = read_all(b.bootstrap, topic_name)
    assert msgs[0].offset() == low
    assert [m.offset() for m in msgs] == list(range(low, 40))


def test_compaction_keeps_latest_per_key(broker_factory, topic_name):
    b = broker_factory(storage__retention_check_interval_ms=200)
    make_topic(
        b.bootstrap,
        topic_name,
        1,
        {
            "cleanup.policy": "compact",
            "segment.ms": "100",
            "min.cleanable.dirty.ratio": "0.01",
            "delete.retention.ms": "0",
        },
    )
    items = []
    for round_ in range(4):
        for k in range(5):
            items.append((b"k%d" % k, b"v%d-%d" % (k, round_)))
    items.append((b"k4", None))  # tombstone for k4
    produce(b.bootstrap, topic_name, items)
    time.sleep(0.3)
    produce(b.bootstrap, topic_name, [(b"k9", b"last")])  # rolls the segment

    def compacted():
        msgs = read_all(b.bootstrap, topic_name)
        keys = [m.key() for m in msgs]
        return msgs if len(keys) == len(set(keys)) and b"k4" not in keys else None

    msgs = wait_until(compacted, timeout=40)
    latest = {m.key(): m.value() for m in msgs}
    assert latest == {
        b"k0": b"v0-3",
        b"k1": b"v1-3",
        b"k2": b"v2-3",
        b"k3": b"v3-3",
        b"k9": b"last",
    }
    # Offsets are the original ones.
    by_key = {m.key(): m.offset() for m in msgs}
    assert by_key[b"k0"] == 15 and by_key[b"k9"] == 21
