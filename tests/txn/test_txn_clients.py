"""Transactions with confluent-kafka against a real broker process, crashes included.

Covers: committed records visible and aborted ones invisible to read_committed consumers
(all visible to read_uncommitted), and read_committed reads held at the last stable
offset while a transaction is open; a second producer with the same transactional.id
fencing the first (whose open transaction is aborted); a transaction that runs past its
timeout aborted by the coordinator, its producer fenced; exactly-once
consume-transform-produce with ``send_offsets_to_transaction`` where the worker process
is SIGKILLed mid-transaction and restarted, the output holding each input exactly once;
a broker ``kill -9`` while a transaction is open, after which the transaction is
resolved and read_committed consumers get past it; idempotent producers; DescribeTransactions,
ListTransactions and DescribeProducers through an admin client.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

HERE = Path(__file__).resolve().parent


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[
        name
    ].result(timeout=15)


def read_all(
    bootstrap: str,
    topic: str,
    partitions: int,
    isolation: str,
    *,
    expect: int | None = None,
    quiet: float = 1.5,
    timeout: float = 20.0,
) -> list[str]:
    """Values of the topic as a consumer with ``isolation`` sees them (from offset 0)."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "isolation.level": isolation,
            "enable.auto.commit": False,
        }
    )
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[str] = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            msg = c.poll(0.1)
            if msg is None:
                if (expect is None or len(out) >= expect) and time.monotonic() - last > quiet:
                    break
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(msg.error())
            out.append(msg.value().decode())
            last = time.monotonic()
    finally:
        c.close()
    return out


def txn_producer(bootstrap: str, txn_id: str, **extra: object) -> Producer:
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id, **extra})
    p.init_transactions(15)
    return p


def test_committed_visible_aborted_invisible(shared_broker):
    bootstrap = shared_broker.bootstrap
    topic = f"tx-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, 2)
    p = txn_producer(bootstrap, f"vis-{topic}")
    p.begin_transaction()
    for i in range(4):
        p.produce(topic, f"c{i}".encode(), partition=i % 2)
    p.commit_transaction(15)
    p.begin_transaction()
    for i in range(4):
        p.produce(topic, f"a{i}".encode(), partition=i % 2)
    p.flush(15)
    # open transaction: read_committed stops at its first offset, read_uncommitted does not
    assert sorted(read_all(bootstrap, topic, 2, "read_committed", expect=4, quiet=0.5)) == [
        "c0",
        "c1",
        "c2",
        "c3",
    ]
    assert len(read_all(bootstrap, topic, 2, "read_uncommitted", expect=8, quiet=0.5)) == 8
    p.abort_transaction(15)
    p.begin_transaction()
    p.produce(topic, b"d0", partition=0)
    p.commit_transaction(15)
    committed = read_all(bootstrap, topic, 2, "read_committed", expect=5)
    assert sorted(committed) == ["c0", "c1", "c2", "c3", "d0"]
    uncommitted = read_all(bootstrap, topic, 2, "read_uncommitted", expect=9)
    assert sorted(uncommitted) == sorted(["c0", "c1", "c2", "c3", "a0", "a1", "a2", "a3", "d0"])


def test_second_producer_fences_the_first(shared_broker):
    bootstrap = shared_broker.bootstrap
    topic = f"fence-{uuid.uuid4().hex[:8]}"
    txn_id = f"fence-{topic}"
    create_topic(bootstrap, topic, 1)
    first = txn_producer(bootstrap, txn_id)
    first.begin_transaction()
    first.produce(topic, b"zombie")
    first.flush(15)
    second = txn_producer(bootstrap, txn_id)  # fences first, aborts its transaction
    with pytest.raises(KafkaException) as info:
        first.commit_transaction(15)
    err = info.value.args[0]
    assert err.fatal() or err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED)
    second.begin_transaction()
    second.produce(topic, b"live")
    second.commit_transaction(15)
    assert read_all(bootstrap, topic, 1, "read_committed", expect=1) == ["live"]


def test_idempotent_producer(shared_broker):
    bootstrap = shared_broker.bootstrap
    topic = f"idem-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, 1)
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i in range(20):
        p.produce(topic, f"v{i}".encode())
    assert p.flush(15) == 0
    assert read_all(bootstrap, topic, 1, "read_uncommitted", expect=20) == [
        f"v{i}" for i in range(20)
    ]


def test_timed_out_transaction_is_aborted_and_its_producer_fenced(broker_factory):
    broker = broker_factory(transactions__abort_timed_out_check_interval_ms=200)
    topic = "timeout-topic"
    create_topic(broker.bootstrap, topic, 1)
    p = txn_producer(broker.bootstrap, "slow", **{"transaction.timeout.ms": 1000})
    p.begin_transaction()
    p.produce(topic, b"late")
    p.flush(15)
    other = Producer({"bootstrap.servers": broker.bootstrap})
    other.produce(topic, b"plain")
    other.flush(15)
    # the coordinator aborts the transaction, so read_committed gets past it
    assert read_all(broker.bootstrap, topic, 1, "read_committed", expect=1, timeout=15) == ["plain"]
    with pytest.raises(KafkaException):
        p.commit_transaction(15)


def test_exactly_once_with_a_worker_killed_mid_transaction(shared_broker):
    bootstrap = shared_broker.bootstrap
    tag = uuid.uuid4().hex[:8]
    source, sink, group, txn_id = f"in-{tag}", f"out-{tag}", f"eos-{tag}", f"eos-{tag}"
    create_topic(bootstrap, source, 2)
    create_topic(bootstrap, sink, 2)
    p = Producer({"bootstrap.servers": bootstrap})
    values = [f"rec-{i:03d}" for i in range(60)]
    for i, v in enumerate(values):
        p.produce(source, v.encode(), key=str(i).encode())
    assert p.flush(15) == 0

    def worker(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                str(HERE / "eos_worker.py"),
                *(bootstrap, source, sink, group, txn_id),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )

    killed = worker("--die-after", "25", "--idle-exit", "3")
    assert killed.returncode == -9, killed.stderr[-2000:]
    done = worker("--idle-exit", "3")
    assert done.returncode == 0, done.stderr[-2000:]

    out = read_all(bootstrap, sink, 2, "read_committed", expect=60)
    assert sorted(out) == sorted(v.upper() for v in values)  # each input exactly once
    raw = read_all(bootstrap, sink, 2, "read_uncommitted", expect=61)
    assert len(raw) > 60  # the killed worker's open transaction did reach the log


def test_broker_kill_during_an_open_transaction(broker_factory):
    broker = broker_factory(transactions__abort_timed_out_check_interval_ms=200)
    topic = "crash-topic"
    create_topic(broker.bootstrap, topic, 1)
    done = txn_producer(broker.bootstrap, "finished")
    done.begin_transaction()
    done.produce(topic, b"before")
    done.commit_transaction(15)
    open_ = txn_producer(broker.bootstrap, "open", **{"transaction.timeout.ms": 2000})
    open_.begin_transaction()
    open_.produce(topic, b"in-flight")
    open_.flush(15)
    after = Producer({"bootstrap.servers": broker.bootstrap})
    after.produce(topic, b"after")  # behind the open transaction: held back by the LSO
    after.flush(15)
    assert read_all(broker.bootstrap, topic, 1, "read_committed", expect=1, quiet=0.5) == ["before"]

    broker.kill()
    broker.start()

    seen = read_all(broker.bootstrap, topic, 1, "read_committed", expect=2, timeout=20)
    assert seen == ["before", "after"]
    assert sorted(read_all(broker.bootstrap, topic, 1, "read_uncommitted", expect=3)) == [
        "after",
        "before",
        "in-flight",
    ]
    del open_, done, after


def test_transaction_tooling_through_an_admin_client(shared_broker):
    # confluent-kafka's AdminClient has no DescribeTransactions, ListTransactions or
    # DescribeProducers; kafka-python's has them since 3.0
    from kafka import TopicPartition as KafkaTopicPartition
    from kafka.admin import KafkaAdminClient

    if not hasattr(KafkaAdminClient, "describe_transactions"):
        pytest.skip("this kafka-python has no transaction tooling")
    bootstrap = shared_broker.bootstrap
    topic = f"tool-{uuid.uuid4().hex[:8]}"
    txn_id = f"tool-{topic}"
    create_topic(bootstrap, topic, 1)
    p = txn_producer(bootstrap, txn_id, **{"transaction.timeout.ms": 45_000})
    p.begin_transaction()
    p.produce(topic, b"x")
    p.produce(topic, b"y")
    p.flush(15)
    tp = KafkaTopicPartition(topic, 0)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="tooling")
    try:
        desc = admin.describe_transactions([txn_id])[txn_id]
        assert desc.state == "Ongoing" and desc.transaction_timeout_ms == 45_000
        assert desc.topic_partitions == {tp} and desc.transaction_start_time_ms > 0
        listed = [
            t for ts in admin.list_transactions(state_filters=["Ongoing"]).values() for t in ts
        ]
        assert (txn_id, desc.producer_id) in [(t.transactional_id, t.producer_id) for t in listed]
        (producer,) = admin.describe_producers([tp])[tp].active_producers
        assert (producer.producer_id, producer.producer_epoch) == (
            desc.producer_id,
            desc.producer_epoch,
        )
        assert (producer.last_sequence, producer.current_transaction_start_offset) == (1, 0)
        p.commit_transaction(15)
        assert admin.describe_transactions([txn_id])[txn_id].state == "CompleteCommit"
        by_broker = admin.list_transactions(state_filters=["Ongoing"])
        assert txn_id not in [t.transactional_id for ts in by_broker.values() for t in ts]
        (producer,) = admin.describe_producers([tp])[tp].active_producers
        assert producer.current_transaction_start_offset == -1
        assert producer.coordinator_epoch >= 0
    finally:
        admin.close()
