"""The operator's rolling restart driving real brokers: planner, probe and controlled shutdown.

A 3-broker cluster in network namespaces (one host per broker, as pods have), a topic with
three replicas and ``min.insync.replicas=2``, and an idempotent ``acks=all`` producer
writing all along. The test is the executor the operator's handler is, without
Kubernetes: each step reads the cluster with the operator's probe (`probe.read_cluster`:
the brokers' metrics and an admin client), asks the operator's planner (`roll.plan`) and,
when it says so, restarts that broker with SIGTERM (its controlled shutdown moves its
leaders away) and starts it again, recording the restart in the roll's progress first.

Covers: every broker is restarted once and the roll ends; a broker is restarted only while
the others are up and no partition it is in sync for would drop below min.insync.replicas;
after each restart the roll waits until the broker is back in the in-sync replicas (and
leads its preferred partitions again, through a preferred-leader election as the handler
asks for) before the next one; no acknowledged record is lost, and no produce error
reaches the application.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from shazamq.operator.admin import PLAINTEXT
from shazamq.operator.probe import ProbeError, read_cluster
from shazamq.operator.reassign import elect_preferred_leaders
from shazamq.operator.roll import Broker, ClusterView, Decision, RollProgress, plan

from .conftest import NETNS_KAFKA_PORT, NETNS_METRICS_PORT, Cluster

TOPIC = "orders"
PARTITIONS = 3
ROLL_TIMEOUT = 240.0


class Writer(threading.Thread):
    """An idempotent acks=all producer writing numbered records until stopped."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(daemon=True)
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "message.timeout.ms": 120_000,
                "linger.ms": 5,
            }
        )
        self.acked: set[int] = set()
        self.errors: list[str] = []
        self.stop = threading.Event()

    def _delivered(self, err, msg) -> None:
        if err is not None:
            self.errors.append(str(err))
        else:
            self.acked.add(int(msg.value()))

    def run(self) -> None:
        seq = 0
        while not self.stop.is_set():
            try:
                self.producer.produce(
                    TOPIC,
                    value=str(seq).encode(),
                    key=str(seq).encode(),
                    on_delivery=self._delivered,
                )
                seq += 1
            except BufferError:
                pass
            self.producer.poll(0.01)
        self.producer.flush(120)


def view_of(cluster: Cluster, ready: list[int]) -> tuple[ClusterView | None, str | None]:
    live = [(i, cluster.broker(i).address) for i in ready]
    try:
        view = asyncio.run(
            read_cluster(
                brokers=live,
                metrics_port=NETNS_METRICS_PORT,
                kafka_port=NETNS_KAFKA_PORT,
                connection=PLAINTEXT,
                default_min_isr=2,
            )
        )
    except ProbeError as exc:
        return None, str(exc)
    return view, None


def is_up(cluster: Cluster, i: int) -> bool:
    b = cluster.broker(i)
    try:
        return b.running and b.api_versions(timeout=1.0) == 0
    except OSError:
        return False


def in_sync(view: ClusterView | None) -> bool:
    parts = [p for p in (view.partitions or ()) if p.topic == TOPIC] if view else []
    return len(parts) == PARTITIONS and all(len(p.isr) == 3 for p in parts)


def test_a_roll_of_real_brokers_loses_no_acknowledged_record(cluster_factory) -> None:
    cluster = cluster_factory.start(
        3,
        netns=True,
        extra_config={"replication": {"default_replication_factor": 3, "min_insync_replicas": 2}},
    )
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    topic = NewTopic(TOPIC, PARTITIONS, 3, config={"min.insync.replicas": "2"})
    admin.create_topics([topic])[TOPIC].result(timeout=30)
    deadline = time.monotonic() + 60
    while not in_sync(view_of(cluster, [0, 1, 2])[0]):
        assert time.monotonic() < deadline, "the topic's replicas never got in sync"
        time.sleep(0.5)

    writer = Writer(cluster.bootstrap)
    writer.start()
    progress = RollProgress("r2")
    decisions: list[tuple[Decision, ClusterView | None]] = []
    elections: list[tuple[tuple[tuple[str, int], ...], set[tuple[str, int]]]] = []
    deadline = time.monotonic() + ROLL_TIMEOUT
    try:
        while True:
            assert time.monotonic() < deadline, f"the roll did not end: {decisions[-5:]}"
            up = [i for i in range(3) if is_up(cluster, i)]
            brokers = [
                Broker(i, f"broker-{i}", True, i in up, i not in progress.restarted)
                for i in range(3)
            ]
            view, error = view_of(cluster, up)
            decision = plan(brokers, view, progress, error=error)
            decisions.append((decision, view))
            if decision.action == "done":
                break
            if decision.action == "wait":
                if decision.elect:  # as the handler: the preferred leaders, now
                    live = [(cluster.broker(i).address, NETNS_KAFKA_PORT) for i in up]
                    elected = asyncio.run(elect_preferred_leaders(live, decision.elect))
                    elections.append((decision.elect, elected))
                time.sleep(0.5)
                continue
            assert decision.broker is not None
            # what the planner promises, checked on the cluster's own view
            assert up == [0, 1, 2], f"restart of {decision.broker} with only {up} up"
            assert view is not None and view.partitions is not None
            for p in view.partitions:
                if decision.broker in p.isr and p.min_isr < len(p.replicas):
                    assert len(p.isr) - 1 >= p.min_isr, (decision, p)
            progress = progress.with_restart(decision.broker)  # recorded before the restart
            cluster.broker(decision.broker).restart()
    finally:
        writer.stop.set()
        writer.join(150)

    assert sorted(progress.restarted) == [0, 1, 2]  # each broker once
    restarts = [i for i, (d, _) in enumerate(decisions) if d.action == "restart"]
    for before, after in itertools.pairwise(restarts):
        # between two restarts the roll waited for the first broker to be back in sync
        waits = [d.reason for d, _ in decisions[before + 1 : after]]
        assert waits, "no wait between two restarts"
        assert in_sync(decisions[after][1]), decisions[after]
    assert any("in-sync replicas" in d.reason or "leader again" in d.reason for d, _ in decisions)
    # the restarted brokers got their preferred leaderships back through ElectLeaders (the
    # controller's own imbalance check may beat one of them to it: ELECTION_NOT_NEEDED)
    assert elections and any(got for _, got in elections), elections
    assert all(set(got) <= set(asked) for asked, got in elections), elections

    assert writer.errors == []
    assert len(writer.acked) > 100
    consumer = Consumer(
        {
            "bootstrap.servers": cluster.bootstrap,
            "group.id": f"check-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([TOPIC])
    seen: set[int] = set()
    deadline = time.monotonic() + 90
    try:
        while not writer.acked <= seen and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=1.0):
                if msg.error() is None:
                    seen.add(int(msg.value()))
    finally:
        consumer.close()
    lost = sorted(writer.acked - seen)
    assert not lost, f"{len(lost)} acknowledged records lost, first {lost[:10]}"
