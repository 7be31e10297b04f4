"""A version upgrade of a 3-broker cluster, carried out by the running operator on real brokers.

The operator (Kopf with our handlers) runs against kmock's emulator with its real probe:
the brokers' metrics and an admin client. The test plays the kubelet and the StatefulSet
controller (`kubelet.KubeletLoop`): every broker is a process started from the rendered
StatefulSet's pod template, ConfigMap and Secrets; each pod has its own loopback address
(127.x.y.1..3) with the rendered ports, and the probe resolves a pod's DNS name to it (the
only stand-in: cluster DNS).

An idempotent acks=all producer writes numbered records all along and a consumer group
reads them. ``spec.version`` changes: the StatefulSet's template changes, the
"controller" gives it a new revision, and the operator deletes the outdated pods one at a
time; the kubelet stops that broker (SIGTERM: its controlled shutdown moves its leaders
away) and starts it again from the new template on the same data directory.

Covers: never two brokers down at once; each broker restarted exactly once, every pod on
the new revision and the roll ended (no progress annotation, no status.roll); the roll
waited for the restarted broker between restarts (the status said so); no produce error
reached the application; every acknowledged record is read back, once, by a fresh consumer,
and the group that consumed through the roll saw all of them.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import kmock
import kopf
import pytest
from kubelet import (
    E2E_MARKS,
    KubeletLoop,
    loopback_addresses,
    resolving_probe,
    resolving_reassigner,
    until,
)
from operator_support import CLUSTERS, prepare_emulator, quick_start
from test_operator_reconcile import Cluster, OperatorThread

from shazamq.operator.__main__ import parse_options
from shazamq.operator.handlers import ROLL_ANNOTATION

pytestmark = E2E_MARKS

NS = "messaging"
NAME = "my-cluster"
TOPIC = "orders"
PARTITIONS = 3
FORM_TIMEOUT = 120.0
ROLL_TIMEOUT = 480.0
DRAIN_TIMEOUT = 120.0


class Writer(threading.Thread):
    """An idempotent acks=all producer writing numbered records until stopped."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(daemon=True, name="writer")
        from confluent_kafka import Producer

        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "message.timeout.ms": 300_000,
                "linger.ms": 5,
            }
        )
        self.acked: set[int] = set()
        self.errors: list[str] = []
        self.stop_flag = threading.Event()
        self.unflushed = -1

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))
        else:
            self.acked.add(int(msg.value()))

    def run(self) -> None:
        seq = 0
        while not self.stop_flag.is_set():
            try:
                self.producer.produce(TOPIC, value=str(seq).encode(), on_delivery=self._delivered)
                seq += 1
            except BufferError:
                pass
            self.producer.poll(0.02)  # about 50 records a second: small, continuous
        self.unflushed = self.producer.flush(120)


class GroupReader(threading.Thread):
    """A consumer group member reading the topic until stopped."""

    def __init__(self, bootstrap: str, group: str) -> None:
        super().__init__(daemon=True, name="group-reader")
        from confluent_kafka import Consumer

        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": True,
                "auto.commit.interval.ms": 500,
            }
        )
        self.seen: set[int] = set()
        self.errors: list[str] = []
        self.stop_flag = threading.Event()

    def run(self) -> None:
        self.consumer.subscribe([TOPIC])
        try:
            while not self.stop_flag.is_set():
                for msg in self.consumer.consume(500, timeout=0.5):
                    if msg.error() is None:
                        self.seen.add(int(msg.value()))
                    else:
                        self.errors.append(str(msg.error()))
        finally:
            self.consumer.close()


def replication(bootstrap: str) -> dict[int, tuple[int, list[int], list[int]]]:
    from confluent_kafka.admin import AdminClient

    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(TOPIC, timeout=5)
    t = md.topics.get(TOPIC)
    if t is None or t.error is not None:
        return {}
    return {p.id: (p.leader, sorted(p.replicas), sorted(p.isrs)) for p in t.partitions.values()}


def create_topic(bootstrap: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = NewTopic(TOPIC, PARTITIONS, 3, config={"min.insync.replicas": "2"})
    admin.create_topics([new])[TOPIC].result(timeout=60)


def read_everything(bootstrap: str, expected: set[int], timeout: float) -> list[int]:
    """Every record of the topic from offset 0, by a consumer of its own (duplicates kept)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(TOPIC, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    values: list[int] = []
    deadline = time.monotonic() + timeout
    try:
        while not expected <= set(values) and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error() is None:
                    values.append(int(msg.value()))
        # what is beyond the expected records (there should be nothing) comes in too
        for msg in consumer.consume(1000, timeout=2.0):
            if msg.error() is None:
                values.append(int(msg.value()))
    finally:
        consumer.close()
    return values


async def test_a_version_upgrade_under_load_restarts_each_broker_once(
    kmock: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    addresses = loopback_addresses(3)
    body = quick_start()
    body["spec"]["service"] = {
        "port": addresses[0].port,
        "metricsPort": addresses[0].metrics_port,
    }
    body["spec"]["replication"] = {"defaultReplicationFactor": 3, "minInsyncReplicas": 2}

    monkeypatch.setenv("KUBECONFIG", str(prepare_emulator(kmock, tmp_path)))
    options = parse_options([], {"METRICS_PORT": "0"})
    memo = kopf.Memo(metrics_port=0, roll_interval=0.5)
    hosts = {NAME: [a.host for a in addresses]}
    memo.probe = resolving_probe(memo, hosts)
    memo.reassigner = resolving_reassigner(hosts, NS)
    operator = OperatorThread(options.namespaces, memo)
    await operator.start()
    cluster = Cluster(kmock, operator.memo)
    kubelet = KubeletLoop(
        kmock,
        name=NAME,
        namespace=NS,
        root=tmp_path / "nodes",
        addresses=addresses,
        voter_ids=[0, 1, 2],
    )
    writer: Writer | None = None
    reader: GroupReader | None = None
    try:
        await cluster.create(body)
        await kubelet.start()
        pods = kubelet.pods
        bootstrap = pods.bootstrap

        def formed() -> bool:
            from confluent_kafka.admin import AdminClient

            def ids(bootstrap: str) -> list[int]:
                md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=5)
                return sorted(md.brokers)

            return all(ids(p.bootstrap) == [0, 1, 2] for p in pods)

        await until(formed, FORM_TIMEOUT, "the three brokers to form one cluster", kubelet)
        await asyncio.to_thread(create_topic, bootstrap)

        def in_sync() -> bool:
            state = replication(bootstrap)
            return len(state) == PARTITIONS and all(
                isr == [0, 1, 2] for _, _, isr in state.values()
            )

        await until(in_sync, FORM_TIMEOUT, f"{TOPIC}'s ISR of 3 on every partition", kubelet)
        status = await until(
            lambda: (cluster.get(CLUSTERS, NAME) or {}).get("status", {}).get("brokers"),
            60,
            "status.brokers",
            kubelet,
        )
        assert [b["ready"] for b in status] == [True, True, True]
        assert not (cluster.get(CLUSTERS, NAME)["status"].get("roll"))
        assert kubelet.restarts == {0: 0, 1: 0, 2: 0}  # up to date: nobody restarted

        writer = Writer(bootstrap)
        reader = GroupReader(bootstrap, f"upgrade-{uuid.uuid4().hex[:6]}")
        writer.start()
        reader.start()
        await until(lambda: len(reader.seen) > 50, 60, "the group to read records", kubelet)
        old_revision = kubelet.revisions[0]

        # The upgrade.
        await cluster.json_patch(
            NAME, [{"op": "replace", "path": "/spec/version", "value": "0.1.0-rc2"}]
        )
        waits: set[str] = set()

        def rolled() -> bool:
            stored = cluster.get(CLUSTERS, NAME) or {}
            roll = (stored.get("status") or {}).get("roll") or {}
            if roll.get("waitingFor"):
                waits.add(roll["waitingFor"])
            annotations = (stored.get("metadata") or {}).get("annotations") or {}
            return (
                all(n == 1 for n in kubelet.restarts.values())
                and not kubelet.down
                and not roll
                and ROLL_ANNOTATION not in annotations
            )

        await until(rolled, ROLL_TIMEOUT, "the roll to restart every broker and end", kubelet)
        new_revision = kubelet.revisions[0]
        assert new_revision != old_revision
        assert set(kubelet.revisions.values()) == {new_revision}
        stored = cluster.get(CLUSTERS, NAME)
        assert stored["status"]["phase"] == "Running", stored["status"]

        # A little more traffic after the roll, then everything is checked.
        acked = len(writer.acked)
        await until(lambda: len(writer.acked) > acked + 50, 60, "writes after the roll", kubelet)
        writer.stop_flag.set()
        await asyncio.to_thread(writer.join, 150)
        await until(
            lambda: writer.acked <= reader.seen,
            DRAIN_TIMEOUT,
            "the group to read every acknowledged record",
            kubelet,
        )
        reader.stop_flag.set()
        await asyncio.to_thread(reader.join, 30)

        # Never two brokers down at once; each broker restarted exactly once.
        assert kubelet.most_down == 1, kubelet.most_down
        assert kubelet.restarts == {0: 1, 1: 1, 2: 1}
        assert [p.starts for p in pods] == [2, 2, 2]
        restarted = [e["message"] for e in cluster.events("BrokerRestarted")]
        assert len(restarted) == 3, restarted
        assert sorted(m.split()[1] for m in restarted) == [f"{NAME}-{i}" for i in range(3)]
        # between restarts the roll waited for the restarted broker, and said so
        assert any("is restarting" in w for w in waits), waits
        # no produce error reached the application; nothing acknowledged was lost
        assert writer.errors == [], writer.errors[:5]
        assert writer.unflushed == 0
        values = await asyncio.to_thread(read_everything, bootstrap, writer.acked, DRAIN_TIMEOUT)
        lost = sorted(writer.acked - set(values))
        assert not lost, f"{len(lost)} acknowledged records lost, first {lost[:10]}"
        assert len(values) == len(set(values)), "a record was written twice"
        assert len(writer.acked) > 200
    finally:
        for thread in (writer, reader):
            if thread is not None and thread.is_alive():
                thread.stop_flag.set()
                await asyncio.to_thread(thread.join, 30)
        await kubelet.stop()
        await operator.stop()
