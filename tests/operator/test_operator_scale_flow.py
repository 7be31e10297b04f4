"""Scaling with data as the running operator carries it out, against kmock's emulator.

The test plays the StatefulSet controller and the kubelet (pods and their readiness) and
the brokers: ``memo.probe`` returns the partitions, ``memo.reassigner`` records the
submitted reassignments and applies them after one "in progress" answer.

Covers: 5 -> 3 keeps the StatefulSet at 5 (annotation ``shazamq.io/scale: 5->3``) while the
departing brokers' replicas move away, and shrinks it only once they hold nothing; a
scale-down that would leave a topic more replicas than brokers is refused with the
``Scaled`` condition and the StatefulSet keeps its size; 3 -> 5 grows the StatefulSet, waits
for the new brokers to be ready, then moves partitions onto them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kmock
import kopf
import pytest
from operator_support import CLUSTERS, prepare_emulator, quick_start
from test_operator_reconcile import STATEFULSETS, Cluster, OperatorThread, eventually
from test_operator_roll_flow import FakeBrokers, put_pod

from shazamq.operator.__main__ import parse_options
from shazamq.operator.resources import SCALE_ANNOTATION
from shazamq.operator.roll import Partition

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:kmock")

NS = "messaging"


class FakeReassigner:
    def __init__(self, brokers: FakeBrokers) -> None:
        self.brokers = brokers
        self.submitted: list[dict] = []
        self.pending: dict = {}

    async def ongoing(self, live: list[tuple[str, int]], connection: object = None) -> set:
        if not self.pending:
            return set()
        moving, self.pending = set(self.pending), {}
        return moving  # answered once as in progress, then done

    async def elect(
        self, live: list[tuple[str, int]], partitions: tuple, connection: object = None
    ) -> set:
        return set()  # leaders move with the reassignments here

    async def submit(
        self, live: list[tuple[str, int]], moves: dict, connection: object = None
    ) -> None:
        self.submitted.append(dict(moves))
        self.pending = dict(moves)
        self.brokers.partitions = [
            Partition(
                p.topic,
                p.index,
                moves.get((p.topic, p.index), p.replicas),
                moves.get((p.topic, p.index), p.replicas),
                moves.get((p.topic, p.index), p.replicas)[0],
                2,
            )
            for p in self.brokers.partitions
        ]


def spread(n: int, rf: int, partitions: int = 10) -> list[Partition]:
    out = []
    for i in range(partitions):
        replicas = tuple((i + k) % n for k in range(rf))
        out.append(Partition("orders", i, replicas, replicas, replicas[0], 2))
    return out


def annotations(cluster: Cluster) -> dict[str, str]:
    return cluster.get(CLUSTERS, "my-cluster")["metadata"].get("annotations") or {}


def sts_replicas(cluster: Cluster) -> int:
    return cluster.get(STATEFULSETS, "my-cluster")["spec"]["replicas"]


def scaled_condition(cluster: Cluster) -> dict[str, Any] | None:
    conditions = cluster.get(CLUSTERS, "my-cluster").get("status", {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Scaled"), None)


async def start(emulator, tmp_path, monkeypatch, fake, reassigner) -> OperatorThread:
    monkeypatch.setenv("KUBECONFIG", str(prepare_emulator(emulator, tmp_path)))
    options = parse_options([], {"METRICS_PORT": "0"})
    memo = kopf.Memo(metrics_port=0, probe=fake, reassigner=reassigner, roll_interval=0.2)
    operator = OperatorThread(options.namespaces, memo)
    await operator.start()
    return operator


async def set_replicas(cluster: Cluster, n: int) -> None:
    await cluster.json_patch(
        "my-cluster", [{"op": "replace", "path": "/spec/replicas", "value": n}]
    )


async def test_scale_down_drains_first_and_scale_up_spreads(
    kmock: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeBrokers()
    reassigner = FakeReassigner(fake)
    operator = await start(kmock, tmp_path, monkeypatch, fake, reassigner)
    cluster = Cluster(kmock, operator.memo)
    try:
        body = quick_start()
        body["spec"]["replicas"] = 5
        await cluster.create(body)
        await eventually(lambda: cluster.get(STATEFULSETS, "my-cluster"))
        for i in range(5):
            await put_pod(cluster, i, "r1", ready=True)
        fake.partitions = [*spread(5, 3), Partition("wide", 0, (0, 1, 2, 3), (0, 1, 2, 3), 0, 2)]

        # 5 -> 3 with a topic of 4 replicas: refused, nothing shrinks.
        await set_replicas(cluster, 3)
        await eventually(lambda: annotations(cluster).get(SCALE_ANNOTATION) == "5->3")
        await eventually(lambda: scaled_condition(cluster), timeout=15)
        await eventually(lambda: scaled_condition(cluster)["reason"] == "ScaleDownRefused")
        assert "wide" in scaled_condition(cluster)["message"]
        assert sts_replicas(cluster) == 5 and not reassigner.submitted
        await eventually(lambda: cluster.events("ScaleDownRefused"))

        # Without it the drain goes ahead; the StatefulSet shrinks only afterwards.
        fake.partitions = spread(5, 3)
        await eventually(lambda: reassigner.submitted, timeout=15)
        moved = reassigner.submitted[0]
        assert all(set(r) <= {0, 1, 2} for r in moved.values())
        assert sts_replicas(cluster) == 5
        await eventually(lambda: sts_replicas(cluster) == 3, timeout=15)
        assert all(set(p.replicas) <= {0, 1, 2} for p in fake.partitions)
        assert SCALE_ANNOTATION not in annotations(cluster)
        await eventually(lambda: cluster.events("Scaled"))
        await eventually(lambda: scaled_condition(cluster) is None)
        for i in (3, 4):
            await cluster.delete(f"/api/v1/namespaces/{NS}/pods/my-cluster-{i}")

        # 3 -> 5: the StatefulSet grows; moves wait for the new brokers to be ready.
        reassigner.submitted.clear()
        await set_replicas(cluster, 5)
        await eventually(lambda: sts_replicas(cluster) == 5)
        await eventually(lambda: annotations(cluster).get(SCALE_ANNOTATION) == "3->5")
        scaling = await eventually(lambda: cluster.get(CLUSTERS, "my-cluster")["status"]["scaling"])
        assert "ready" in scaling["waitingFor"]
        assert not reassigner.submitted
        for i in (3, 4):
            await put_pod(cluster, i, "r1", ready=True)
        await eventually(lambda: reassigner.submitted, timeout=15)
        await eventually(lambda: SCALE_ANNOTATION not in annotations(cluster), timeout=15)
        load = {b: 0 for b in range(5)}
        for p in fake.partitions:
            for b in p.replicas:
                load[b] += 1
        assert max(load.values()) - min(load.values()) <= 1 and load[3] and load[4]
    finally:
        await operator.stop()
