"""Jepsen-style: a produce/consume workload while brokers crash, freeze and lose their links.

Idempotent `acks=all` producers write to an RF 3 / min ISR 2 topic and a consumer group
reads and commits, while the test kills the leader with `kill -9`, freezes a leader with
SIGSTOP past the session and replica lag timeouts, cuts a leader off the network, and
restarts brokers. Afterwards the brokers are stopped, every replica of every partition is
read from disk, and the checker proves: every acknowledged record is there exactly once at
its acknowledged offset and in acknowledgement order, replicas are byte-identical, no
offset went to two records, and the group never skipped a record below what it committed.

Sized for CI (about a minute). `scripts/soak` runs the same faults in a loop for longer.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError

from .checker import GroupObservation, check
from .conftest import Cluster, ClusterFactory
from .replicas_on_disk import read_replica
from .test_cluster_basic import (
    FAST_CLUSTER,
    AckingProducer,
    create_topic,
    fully_replicated,
    leader_of,
    start_cluster,
    topic_state,
    wait_for,
)

pytestmark = pytest.mark.slow

TOPIC = "jepsen"
PARTITIONS = 3


class GroupReader:
    """Consumers of one group in a thread each: every delivery and every commit recorded."""

    def __init__(self, bootstrap: str, group: str, members: int) -> None:
        self.group = group
        self.bootstrap = bootstrap
        self.consumed: dict[tuple[str, int], list[tuple[int, bytes]]] = defaultdict(list)
        self.committed: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(members)]

    def _run(self) -> None:
        c = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": self.group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 500,
                "topic.metadata.refresh.interval.ms": 1000,
            }
        )
        c.subscribe([TOPIC])
        try:
            while not self._stop.is_set():
                msgs = c.consume(200, 0.5)
                good = [m for m in msgs if m.error() is None]
                if not good:
                    continue
                with self._lock:
                    for m in good:
                        self.consumed[(TOPIC, m.partition())].append((m.offset(), m.value()))
                try:
                    done = c.commit(asynchronous=False)
                except Exception:  # a failed commit is simply not recorded
                    continue
                with self._lock:
                    for tp in done or []:
                        if tp.error is None and tp.offset >= 0:
                            key = (tp.topic, tp.partition)
                            self.committed[key] = max(self.committed.get(key, 0), tp.offset)
        finally:
            c.close()

    def start(self) -> GroupReader:
        for t in self._threads:
            t.start()
        return self

    def consumed_count(self) -> int:
        with self._lock:
            return len({(tp, o) for tp, recs in self.consumed.items() for o, _ in recs})

    def stop(self) -> GroupObservation:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        return GroupObservation(
            group=self.group,
            consumed={tp: list(v) for tp, v in self.consumed.items()},
            committed=dict(self.committed),
        )


def progress(producer: AckingProducer, more: int, what: str, timeout: float = 60) -> None:
    mark = producer.count()
    wait_for(lambda: producer.count() >= mark + more, timeout, what)


def healed(cluster: Cluster) -> None:
    try:
        wait_for(
            lambda: fully_replicated(cluster.bootstrap, TOPIC, PARTITIONS),
            90,
            "every replica back in its ISR",
        )
    except AssertionError as exc:
        views = {b.node_id: topic_state(b.bootstrap, TOPIC) for b in cluster}
        raise AssertionError(f"{exc}; (leader, replicas, isr) per broker: {views}") from None


def test_acknowledged_records_survive_crashes_pauses_and_partitions(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = start_cluster(cluster_factory)
    create_topic(cluster, TOPIC, PARTITIONS)
    producer = AckingProducer(cluster.bootstrap, TOPIC, PARTITIONS).start()
    readers = GroupReader(cluster.bootstrap, "jepsen-group", 2).start()
    progress(producer, 300, "the first acknowledgements")

    # 1. the leader of partition 0 dies hard, and comes back
    victim = leader_of(cluster, TOPIC, 0)
    cluster.broker(victim).kill9()
    progress(producer, 300, f"progress with broker {victim} killed")
    cluster.broker(victim).restart()
    healed(cluster)

    # 2. the leader of partition 1 freezes past the session and the replica lag timeouts
    frozen = leader_of(cluster, TOPIC, 1)
    cluster.broker(frozen).sigstop()
    session_s = FAST_CLUSTER["cluster"]["session_timeout_ms"] / 1000
    lag_s = FAST_CLUSTER["replication"]["replica_lag_time_max_ms"] / 1000
    wait_for(
        lambda: leader_of(cluster, TOPIC, 1) not in (frozen, -1),
        session_s * 4,
        f"a new leader while broker {frozen} is frozen",
    )
    progress(producer, 300, f"progress with broker {frozen} frozen")
    time.sleep(max(0.0, lag_s - session_s))
    cluster.broker(frozen).sigcont()
    healed(cluster)

    # 3. the leader of partition 2 loses its network link (network namespaces only)
    if cluster.lab is not None:
        cut = leader_of(cluster, TOPIC, 2)
        cluster.host(cut).link_down()
        others = [b for b in cluster if b.node_id != cut]
        wait_for(
            lambda: topic_state(others[0].bootstrap, TOPIC).get(2, (cut,))[0] not in (cut, -1),
            session_s * 4,
            f"a new leader while broker {cut} is cut off",
        )
        progress(producer, 300, f"progress with broker {cut} cut off")
        cluster.host(cut).link_up()
        healed(cluster)

    # 4. a follower crashes and restarts while writes go on
    leader2 = leader_of(cluster, TOPIC, 2)
    follower = next(b for b in cluster if b.node_id != leader2)
    follower.kill9()
    progress(producer, 200, f"progress with follower {follower.node_id} killed")
    follower.restart()
    healed(cluster)

    progress(producer, 200, "progress after the faults")
    producer.stop()
    assert not producer.errors, producer.errors[:5]
    total = producer.count()
    wait_for(lambda: readers.consumed_count() >= total, 90, "the group to read everything")
    time.sleep(1.5)  # a last commit round and the followers' last high watermark
    group = readers.stop()
    healed(cluster)

    cluster.stop_all()
    replicas: dict[tuple[str, int], dict[int, Any]] = {}
    raw: dict[tuple[str, int], dict[int, list[bytes]]] = {}
    for p in range(PARTITIONS):
        tp = (TOPIC, p)
        replicas[tp], raw[tp] = {}, {}
        for b in cluster:
            replicas[tp][b.node_id], raw[tp][b.node_id] = read_replica(b.data_dir, TOPIC, p)
    result = check(producer.acked, replicas, groups=[group])
    assert result.ok, result.summary()
    assert result.acked_records == total >= 1500
    for tp, per_broker in raw.items():
        first = next(iter(per_broker.values()))
        for node, batches in per_broker.items():
            assert batches == first, f"{tp}: the replica on broker {node} differs"
    assert group.committed, "the group committed offsets"
    assert all(group.committed.get((TOPIC, p), 0) > 0 for p in range(PARTITIONS))


def test_quorum_survives_a_minority_and_stalls_safely_without_a_majority(
    cluster_factory: ClusterFactory,
) -> None:
    """Lose one voter: everything goes on. Lose two: metadata changes fail with a clear error
    while the surviving leader keeps serving reads. Bring them back: it converges."""
    from confluent_kafka.admin import AdminClient, NewTopic

    cluster = start_cluster(cluster_factory)
    create_topic(cluster, TOPIC, PARTITIONS)
    producer = AckingProducer(cluster.bootstrap, TOPIC, PARTITIONS).start()
    progress(producer, 200, "the first acknowledgements")
    producer.stop()

    first, second, survivor = cluster[0], cluster[1], cluster[2]
    first.kill9()
    client = AdminClient({"bootstrap.servers": survivor.bootstrap})
    fut = client.create_topics([NewTopic("with-two-voters", 1, 2)])["with-two-voters"]
    fut.result(timeout=30)

    second.kill9()
    # no majority: creating a topic fails with a timeout error naming the quorum
    fut = client.create_topics([NewTopic("without-quorum", 1, 1)], request_timeout=20)[
        "without-quorum"
    ]
    with pytest.raises(Exception) as err:
        fut.result(timeout=40)
    error = err.value.args[0]
    assert isinstance(error, KafkaError)
    assert error.name() == "REQUEST_TIMED_OUT", error
    assert "quorum" in error.str()
    # existing data stays readable where the leader is alive
    state = topic_state(survivor.bootstrap, TOPIC)
    served = [p for p, (leader, _, _) in state.items() if leader == survivor.node_id]
    if served:
        c = Consumer(
            {
                "bootstrap.servers": survivor.bootstrap,
                "group.id": "solo",
                "enable.auto.commit": False,
            }
        )
        from confluent_kafka import TopicPartition

        c.assign([TopicPartition(TOPIC, served[0], 0)])
        msg = None
        deadline = time.monotonic() + 20
        while msg is None and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                msg = m
        c.close()
        assert msg is not None, "the surviving leader served its data"

    first.restart()
    second.restart()
    for b in cluster:
        wait_for(
            lambda b=b: (
                len(AdminClient({"bootstrap.servers": b.bootstrap}).list_topics(timeout=5).brokers)
                == 3
            ),
            60,
            f"broker {b.node_id} sees the cluster again",
        )
    fut = client.create_topics([NewTopic("after-recovery", 2, 3)])["after-recovery"]
    fut.result(timeout=30)
    wait_for(
        lambda: fully_replicated(cluster.bootstrap, "after-recovery", 2),
        60,
        "the new topic replicated on all three",
    )
    expected = {"jepsen", "with-two-voters", "after-recovery"}

    def views() -> list[list[str]]:
        return [
            sorted(AdminClient({"bootstrap.servers": b.bootstrap}).list_topics(timeout=5).topics)
            for b in cluster
        ]

    def converged() -> list[list[str]] | None:
        v = views()
        return v if all(x == v[0] and expected <= set(x) for x in v) else None

    # every broker converges on the same topics (a metadata answer may lag a moment)
    seen = wait_for(converged, 30, "every broker to list the same topics")
    # "without-quorum" may or may not exist now: a request that timed out may still have
    # been committed once the voters came back, as with Kafka
    assert expected <= set(seen[0])
