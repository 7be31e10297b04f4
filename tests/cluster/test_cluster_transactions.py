"""Transactions across a cluster: coordinators, markers and producer state on every replica.

A transactional producer writes to partitions led by different brokers, committing some
transactions and aborting others, while the broker leading one of them is killed. A
read_committed consumer then sees exactly the committed records, and every replica holds
the same batches, markers included, byte for byte.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from .conftest import ClusterFactory
from .replicas_on_disk import read_replica
from .test_cluster_basic import (
    create_topic,
    fully_replicated,
    leader_of,
    start_cluster,
    wait_for,
)

pytestmark = pytest.mark.slow
TOPIC = "ledger-txn"
PARTITIONS = 3


def run_transactions(bootstrap: str, first: int, count: int) -> tuple[list[bytes], list[bytes]]:
    """`count` transactions of 3 records each (one per partition); every third aborted."""
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": "txn-cluster",
            "transaction.timeout.ms": 60000,
            "message.timeout.ms": 60000,
        }
    )
    p.init_transactions(60)
    committed: list[bytes] = []
    aborted: list[bytes] = []
    t = first
    done = 0
    while done < count:
        values = [b"t%05d-p%d" % (t, part) for part in range(PARTITIONS)]
        try:
            p.begin_transaction()
            for part, v in enumerate(values):
                p.produce(TOPIC, value=v, partition=part)
            if t % 3 == 2:
                p.abort_transaction(60)
                aborted.extend(values)
            else:
                p.commit_transaction(60)
                committed.extend(values)
        except KafkaException as exc:
            err = exc.args[0]
            if err.txn_requires_abort():
                p.abort_transaction(60)
                aborted.extend(values)
            elif err.retriable():
                time.sleep(0.5)
                continue
            else:
                raise
        t += 1
        done += 1
    return committed, aborted


def read_committed(bootstrap: str) -> list[bytes]:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "txn-reader",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    c.assign([TopicPartition(TOPIC, part, 0) for part in range(PARTITIONS)])
    out: list[bytes] = []
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < 5:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            out.append(m.value())
            idle_since = time.monotonic()
    c.close()
    return out


def test_transactions_commit_and_abort_across_brokers_through_a_leader_crash(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = start_cluster(cluster_factory)
    create_topic(cluster, TOPIC, PARTITIONS)
    leaders = {leader_of(cluster, TOPIC, part) for part in range(PARTITIONS)}
    assert len(leaders) >= 2, "the transaction spans brokers"
    committed, aborted = run_transactions(cluster.bootstrap, 0, 30)

    victim = leader_of(cluster, TOPIC, 1)
    cluster.broker(victim).kill9()
    wait_for(lambda: leader_of(cluster, TOPIC, 1) not in (victim, -1), 30, "failover")
    more_committed, more_aborted = run_transactions(cluster.bootstrap, 30, 30)
    committed += more_committed
    aborted += more_aborted
    cluster.broker(victim).restart()
    wait_for(lambda: fully_replicated(cluster.bootstrap, TOPIC, PARTITIONS), 60, "healed")

    seen = read_committed(cluster.bootstrap)
    assert sorted(seen) == sorted(committed)
    assert not set(seen) & set(aborted)
    # each partition in transaction order
    for part in range(PARTITIONS):
        mine = [v for v in seen if v.endswith(b"-p%d" % part)]
        assert mine == sorted(mine)

    time.sleep(1.0)  # the followers' last fetch
    cluster.stop_all()
    for part in range(PARTITIONS):
        batches = {b.node_id: read_replica(b.data_dir, TOPIC, part)[1] for b in cluster}
        first = next(iter(batches.values()))
        assert first, "the partition holds data and markers"
        for node, got in batches.items():
            assert got == first, f"partition {part}: the replica on broker {node} differs"
