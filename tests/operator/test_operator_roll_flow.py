"""The rolling restart as the running operator carries it out, against kmock's emulator.

The test plays the StatefulSet controller (it sets the update revision and recreates a
deleted pod with the new revision's label) and the brokers (a stand-in for the probe,
``memo.probe``, returns the partitions and the active controller the test decides).

Covers: the StatefulSet is ``OnDelete``; an outdated 3-broker cluster is rolled one pod at a
time, highest ordinal first and the active controller last; each next restart waits until
the restarted broker is ready, back in every ISR and leading its preferred partitions
(the operator asks for that election), and the status says so; a partition
that would drop below min.insync.replicas blocks the roll with its name in the status; the
progress annotation lets a new operator resume the wait without restarting anyone twice;
``shazamq.io/pause-reconcile: "true"`` pauses the roll.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kmock
import kopf
import pytest
from operator_support import CLUSTERS, prepare_emulator, quick_start
from test_operator_reconcile import (
    STATEFULSETS,
    Cluster,
    OperatorThread,
    eventually,
    ready_sts_status,
)

from shazamq.operator.__main__ import parse_options
from shazamq.operator.handlers import PAUSE_ANNOTATION, ROLL_ANNOTATION
from shazamq.operator.roll import ClusterView, Partition

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:kmock")

PODS = "v1/pods"
NS = "messaging"


class FakeBrokers:
    """What the brokers would say: partitions (replicas, ISR, leader) and the controller."""

    def __init__(self) -> None:
        self.controller = 0
        self.partitions: list[Partition] = []
        self.calls = 0

    async def __call__(self, model: Any, live: list[tuple[int, str]], partitions: bool) -> Any:
        self.calls += 1
        return ClusterView(self.controller, tuple(self.partitions) if partitions else None, 0)

    def in_sync(self) -> None:
        self.partitions = [
            Partition("orders", i, (i, (i + 1) % 3, (i + 2) % 3), (0, 1, 2), i, 2) for i in range(3)
        ]


class FakeElector:
    """The brokers' answer to ElectLeaders (PREFERRED): the preferred replica leads, unless
    the test holds the election back."""

    def __init__(self, brokers: FakeBrokers) -> None:
        self.brokers = brokers
        self.hold = False
        self.requested: list[tuple[tuple[str, int], ...]] = []

    async def elect(
        self, live: list[tuple[str, int]], partitions: tuple[tuple[str, int], ...], conn: object
    ) -> set[tuple[str, int]]:
        self.requested.append(partitions)
        if self.hold:
            return set()
        wanted = set(partitions)
        self.brokers.partitions = [
            Partition(p.topic, p.index, p.replicas, p.isr, p.replicas[0], p.min_isr)
            if (p.topic, p.index) in wanted
            else p
            for p in self.brokers.partitions
        ]
        return wanted


async def start(
    emulator: kmock.KubernetesEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake: FakeBrokers,
    elector: FakeElector | None = None,
) -> OperatorThread:
    monkeypatch.setenv("KUBECONFIG", str(prepare_emulator(emulator, tmp_path)))
    options = parse_options([], {"METRICS_PORT": "0"})
    memo = kopf.Memo(metrics_port=0, probe=fake, roll_interval=0.2)
    if elector is not None:
        memo.reassigner = elector
    operator = OperatorThread(options.namespaces, memo)
    await operator.start()
    return operator


async def put_pod(cluster: Cluster, i: int, revision: str, ready: bool) -> None:
    name = f"my-cluster-{i}"
    if cluster.get(PODS, name) is not None:
        await cluster.delete(f"/api/v1/namespaces/{NS}/pods/{name}")
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {
                "app.kubernetes.io/name": "shazamq",
                "app.kubernetes.io/instance": "my-cluster",
                "controller-revision-hash": revision,
            },
        },
        "spec": {"containers": [{"name": "broker", "image": "x"}]},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }
    resp = await cluster.k.post(f"/api/v1/namespaces/{NS}/pods", json=body)
    assert resp.status < 300, await resp.text()


def roll(cluster: Cluster) -> dict[str, Any]:
    return (cluster.get(CLUSTERS, "my-cluster") or {}).get("status", {}).get("roll") or {}


def progress(cluster: Cluster) -> dict[str, Any]:
    annotations = cluster.get(CLUSTERS, "my-cluster")["metadata"].get("annotations") or {}
    return json.loads(annotations.get(ROLL_ANNOTATION) or "{}")


def gone(cluster: Cluster, i: int) -> bool:
    return cluster.get(PODS, f"my-cluster-{i}") is None


async def test_a_roll_one_broker_at_a_time_resumed_by_a_new_operator(
    kmock: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeBrokers()
    fake.in_sync()
    elector = FakeElector(fake)
    operator = await start(kmock, tmp_path, monkeypatch, fake, elector)
    cluster = Cluster(kmock, operator.memo)
    try:
        await cluster.create(quick_start())
        sts = await eventually(lambda: cluster.get(STATEFULSETS, "my-cluster"))
        assert sts["spec"]["updateStrategy"] == {"type": "OnDelete"}
        for i in range(3):
            await put_pod(cluster, i, "r1", ready=True)
        sts_status = f"/apis/apps/v1/namespaces/{NS}/statefulsets/my-cluster/status"
        await cluster.merge_patch(sts_status, {"status": ready_sts_status(3, "r1")})
        await eventually(lambda: fake.calls > 2)
        assert not any(gone(cluster, i) for i in range(3))  # up to date: nothing restarted
        leaders = [b["leader"] for b in cluster.get(CLUSTERS, "my-cluster")["status"]["brokers"]]
        assert leaders == [True, False, False]

        # A new revision (an upgrade): the highest non-controller ordinal goes first.
        status = {**ready_sts_status(3, "r1"), "updateRevision": "r2", "updatedReplicas": 0}
        await cluster.merge_patch(sts_status, {"status": status})
        await eventually(lambda: gone(cluster, 2), timeout=15)
        assert progress(cluster) == {"revision": "r2", "restarted": [2], "inFlight": 2}
        await eventually(lambda: "my-cluster-2 is restarting" in roll(cluster).get("waitingFor"))
        assert cluster.get(CLUSTERS, "my-cluster")["status"]["phase"] == "Updating"
        await eventually(lambda: cluster.events("BrokerRestarted"))

        # Back, but not yet in sync: the roll waits and says why.
        fake.partitions = [
            Partition(p.topic, p.index, p.replicas, tuple(r for r in p.isr if r != 2), p.leader, 2)
            for p in fake.partitions
        ]
        await put_pod(cluster, 2, "r2", ready=True)
        await eventually(
            lambda: (
                "my-cluster-2 is not back in the in-sync replicas of orders-"
                in roll(cluster)["waitingFor"]
            )
        )
        assert not gone(cluster, 1) and not gone(cluster, 0)

        # In sync again, but orders-2 is still led by another replica: the roll waits for
        # its preferred leader and asks for the election rather than waiting for the
        # controller's next imbalance check
        elector.hold = True
        fake.in_sync()
        fake.partitions[2] = Partition("orders", 2, (2, 0, 1), (0, 1, 2), 0, 2)
        await eventually(
            lambda: (
                "my-cluster-2 is not yet the leader again of orders-2 (preferred leader)"
                in roll(cluster)["waitingFor"]
            )
        )
        await eventually(lambda: (("orders", 2),) in elector.requested)
        assert not gone(cluster, 1)

        # Elected: broker 1 (not the controller) is next.
        elector.hold = False
        await eventually(lambda: gone(cluster, 1), timeout=15)
        assert fake.partitions[2].leader == 2
        assert progress(cluster)["restarted"] == [2, 1]
    finally:
        await operator.stop()

    # The operator restarts while broker 1 is still down: the new one waits for it.
    operator = await start(kmock, tmp_path, monkeypatch, fake)
    cluster = Cluster(kmock, operator.memo)
    try:
        await put_pod(cluster, 1, "r2", ready=False)
        await eventually(lambda: "my-cluster-1 is restarting" in roll(cluster)["waitingFor"])
        assert not gone(cluster, 0) and not gone(cluster, 2)

        # An under-replicated partition would drop below min ISR if 0 restarted: blocked.
        await put_pod(cluster, 1, "r2", ready=True)
        fake.partitions = [Partition("orders", 3, (0, 1, 2), (0, 1), 0, 2)]
        fake.partitions.append(Partition("payments", 0, (1, 2, 0), (1, 2, 0), 1, 2))
        await eventually(
            lambda: (
                "restarting my-cluster-0 would take orders-3 below min.insync.replicas"
                in roll(cluster)["waitingFor"]
            )
        )
        assert not gone(cluster, 0)

        # Paused: even once the partition is back, nothing happens.
        await cluster.merge_patch(
            f"/apis/shazamq.io/v1alpha1/namespaces/{NS}/shazamqclusters/my-cluster",
            {"metadata": {"annotations": {PAUSE_ANNOTATION: "true"}}},
        )
        await eventually(lambda: roll(cluster).get("paused"))
        fake.in_sync()
        calls = fake.calls
        await eventually(lambda: fake.calls > calls + 3)
        assert not gone(cluster, 0)

        # Resumed: the controller goes last, and the roll ends.
        await cluster.merge_patch(
            f"/apis/shazamq.io/v1alpha1/namespaces/{NS}/shazamqclusters/my-cluster",
            {"metadata": {"annotations": {PAUSE_ANNOTATION: None}}},
        )
        await eventually(lambda: gone(cluster, 0), timeout=15)
        assert progress(cluster)["restarted"] == [2, 1, 0]
        await put_pod(cluster, 0, "r2", ready=True)
        await eventually(lambda: not roll(cluster) and not progress(cluster))
        restarts = [e["message"] for e in cluster.events("BrokerRestarted")]
        assert len(restarts) == 3, restarts  # each broker once
    finally:
        await operator.stop()
