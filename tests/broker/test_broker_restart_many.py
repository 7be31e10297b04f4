"""A broker hosting many partitions, every one written to, killed with SIGKILL: it starts
again and serves every partition with what was acknowledged, topics included (their
metadata came back from the journal). The start-up time of the full-size case (20,000
partitions) is a benchmark: ``python -m benchmarks.startup --partitions 20000 --gib 0
--kill``; this test asserts correctness only, at a small size."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

PARTITIONS = 120


def _produce(bootstrap: str, topic: str, partitions: int, tag: bytes) -> int:
    acked = 0

    def delivered(err, _msg) -> None:  # type: ignore[no-untyped-def]
        nonlocal acked
        assert err is None, err
        acked += 1

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": 1})
    for i in range(partitions):
        p.produce(topic, value=tag + b"-%d" % i, partition=i, on_delivery=delivered)
    assert p.flush(60) == 0
    return acked


def _read_all(bootstrap: str, topic: str, partitions: int) -> dict[int, list[bytes]]:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "unused",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        c.assign([TopicPartition(topic, i, 0) for i in range(partitions)])
        got: dict[int, list[bytes]] = {i: [] for i in range(partitions)}
        eof: set[int] = set()
        while len(eof) < partitions:
            msg = c.poll(10)
            assert msg is not None, f"nothing from {partitions - len(eof)} partitions"
            if msg.error():
                assert msg.error().code() == -191, msg.error()  # _PARTITION_EOF
                eof.add(msg.partition())
                continue
            got[msg.partition()].append(msg.value())
        return got
    finally:
        c.close()


@pytest.mark.timeout(300)
def test_many_partitions_start_after_kill_9(broker_factory) -> None:
    broker = broker_factory()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    # created, then killed before any clean shutdown: the topic lives only in the
    # metadata journal, and no partition carries a clean-shutdown marker
    admin.create_topics([NewTopic("many", PARTITIONS, 1)])["many"].result(60)
    # small segments, so reads after the restart start in sealed segments whose indexes
    # are not in memory (loaded off the event loop)
    admin.create_topics(
        [NewTopic("rolled", 1, 1, config={"segment.bytes": "2048", "index.interval.bytes": "128"})]
    )["rolled"].result(60)
    assert _produce(broker.bootstrap, "many", PARTITIONS, b"first") == PARTITIONS
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": 1, "linger.ms": 0})
    for i in range(60):
        p.produce("rolled", value=b"r%03d" % i + b"." * 200, partition=0)
        p.flush(30)
    broker.kill()
    broker.start()
    assert _read_all(broker.bootstrap, "many", PARTITIONS) == {
        i: [b"first-%d" % i] for i in range(PARTITIONS)
    }
    # once more, with data on both sides of the crash
    assert _produce(broker.bootstrap, "many", PARTITIONS, b"second") == PARTITIONS
    broker.kill()
    broker.start()
    got = _read_all(broker.bootstrap, "many", PARTITIONS)
    assert got == {i: [b"first-%d" % i, b"second-%d" % i] for i in range(PARTITIONS)}
    rolled = _read_all(broker.bootstrap, "rolled", 1)[0]
    assert [v[:4] for v in rolled] == [b"r%03d" % i for i in range(60)]
