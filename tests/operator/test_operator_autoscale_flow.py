"""The autoscaler and the restore status as the running operator carries them out, against
kmock's emulator.

The test plays the kubelet (pods and their readiness), the StatefulSet controller (its
status) and the brokers: ``memo.probe`` returns what their metrics would say, each call
being 5 seconds of a clock the test owns (``memo.clock``): the load counters grow at the
rate the test sets, and a restore is reported as the test decides.

Covers: a load above the target scales 3 -> 5 through the scaling path (``spec.replicas``
patched, ``shazamq.io/scale: 3->5``, the StatefulSet grows) with an ``AutoscaledUp`` event
naming the reason, and not while a rolling restart is going on; a quiet cluster scales
down to ``minReplicas`` through the drain; disabled autoscaling never scales; an HPA
targeting the cluster makes the operator's autoscaler stand down; a restore is shown as
phase ``Restoring`` with its progress, then the condition ``Restored``, with events.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import kmock
import kopf
import pytest
from operator_support import CLUSTERS, prepare_emulator, quick_start
from test_operator_reconcile import STATEFULSETS, Cluster, OperatorThread, eventually
from test_operator_roll_flow import put_pod
from test_operator_scale_flow import FakeReassigner, annotations, spread, sts_replicas

from shazamq.operator.__main__ import parse_options
from shazamq.operator.autoscale import BrokerLoad
from shazamq.operator.resources import SCALE_ANNOTATION
from shazamq.operator.restore import RestoreProgress
from shazamq.operator.roll import ClusterView, Partition

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:kmock")

NS = "messaging"
STEP = 5.0  # seconds of the test's clock per probe of the brokers
STS_STATUS = f"/apis/apps/v1/namespaces/{NS}/statefulsets/my-cluster/status"


async def soon(check: Any, timeout: float = 90.0) -> Any:
    """`eventually`, with room for a loaded machine (the operator runs in a thread)."""
    return await eventually(check, timeout=timeout)


class LoadedBrokers:
    """The brokers' metrics: every probe is STEP seconds later, and each live broker's
    bytes-in counter has grown by `rate` bytes per second meanwhile."""

    def __init__(self, brokers: int) -> None:
        self.lock = threading.Lock()
        self.t = 1000.0
        self.rate = 0.0
        self.counters: dict[int, float] = {}
        self.partitions: list[Partition] = spread(brokers, 3)
        self.restore: RestoreProgress | None = None
        self.calls = 0

    def clock(self) -> float:
        with self.lock:
            return self.t

    async def __call__(self, model: Any, live: list[tuple[int, str]], partitions: bool) -> Any:
        with self.lock:
            self.calls += 1
            self.t += STEP
            loads = []
            for broker, _ in live:
                self.counters[broker] = self.counters.get(broker, 0.0) + self.rate * STEP
                loads.append(BrokerLoad(broker, self.t, bytes_in=self.counters[broker]))
        return ClusterView(
            0,
            tuple(self.partitions) if partitions else None,
            0,
            (),
            loads=tuple(loads),
            restore=self.restore,
        )


def autoscaled(replicas: int = 3, enabled: bool = True) -> dict[str, Any]:
    body = quick_start()
    body["spec"]["replicas"] = replicas
    body["spec"]["autoscaling"] = {
        "enabled": enabled,
        "minReplicas": 3,
        "maxReplicas": 5,
        "targets": {"bytesInPerSecond": 1000},
        "scaleUpStabilizationSeconds": 20,
        "scaleDownStabilizationSeconds": 40,
        "metricsWindowSeconds": 15,
    }
    return body


async def start(
    emulator: kmock.KubernetesEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake: LoadedBrokers,
    **memo: Any,
) -> OperatorThread:
    monkeypatch.setenv("KUBECONFIG", str(prepare_emulator(emulator, tmp_path)))
    options = parse_options([], {"METRICS_PORT": "0"})
    operator = OperatorThread(
        options.namespaces,
        kopf.Memo(
            metrics_port=0,
            probe=fake,
            clock=fake.clock,
            reassigner=FakeReassigner(fake),  # type: ignore[arg-type]
            roll_interval=0.1,
            autoscale_interval=STEP,
            **memo,
        ),
    )
    await operator.start()
    return operator


async def running(cluster: Cluster, body: dict[str, Any], replicas: int) -> None:
    await cluster.create(body)
    await soon(lambda: cluster.get(STATEFULSETS, "my-cluster"))
    for i in range(replicas):
        await put_pod(cluster, i, "r1", ready=True)
    await cluster.merge_patch(STS_STATUS, {"status": ready_status(replicas)})


def ready_status(replicas: int, update: str = "r1") -> dict[str, Any]:
    return {
        "replicas": replicas,
        "readyReplicas": replicas,
        "updatedReplicas": replicas,
        "currentReplicas": replicas,
        "currentRevision": "r1",
        "updateRevision": update,
    }


def spec_replicas(cluster: Cluster) -> int:
    return cluster.get(CLUSTERS, "my-cluster")["spec"]["replicas"]


def autoscaling(cluster: Cluster) -> dict[str, Any]:
    return (cluster.get(CLUSTERS, "my-cluster").get("status") or {}).get("autoscaling") or {}


async def test_load_above_target_scales_up_through_the_scale_path_not_during_a_roll(
    kmock: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = LoadedBrokers(3)
    operator = await start(kmock, tmp_path, monkeypatch, fake)
    cluster = Cluster(kmock, operator.memo)
    try:
        await running(cluster, autoscaled(), 3)
        # at the target: nothing to do, and the status says so
        fake.rate = 1000.0
        await soon(lambda: "3 brokers fit" in autoscaling(cluster)["reason"])

        # A rolling restart is going on (a new revision; broker 2 restarts first): the load
        # is far above the target, but nothing is decided.
        await cluster.merge_patch(STS_STATUS, {"status": ready_status(3, update="r2")})
        await soon(lambda: cluster.get("v1/pods", "my-cluster-2") is None)
        fake.rate = 2500.0
        await soon(lambda: "rolling restart" in autoscaling(cluster)["reason"])
        calls = fake.calls
        await soon(lambda: fake.calls > calls + 6)  # > the up window
        assert spec_replicas(cluster) == 3 and not cluster.events("AutoscaledUp")

        # The roll is over (the revision went back, the pod is back): the load scales up,
        # once a whole up window of recommendations asks for it.
        await put_pod(cluster, 2, "r1", ready=True)
        await cluster.merge_patch(STS_STATUS, {"status": ready_status(3)})
        await soon(lambda: spec_replicas(cluster) == 5)
        (event,) = await soon(lambda: cluster.events("AutoscaledUp"))
        assert "bytes in 2.5 kB/s per broker (target 1.0 kB/s): 3 -> 5" in event["message"]
        status = await soon(
            lambda: autoscaling(cluster).get("lastScaleTime") and autoscaling(cluster)
        )
        assert status["desiredReplicas"] == 5

        # ... the same way as a scaling by hand: recorded, the StatefulSet grows, and the
        # new brokers get partitions once they are ready.
        await soon(lambda: sts_replicas(cluster) == 5)
        assert annotations(cluster).get(SCALE_ANNOTATION) == "3->5"
        for i in (3, 4):
            await put_pod(cluster, i, "r1", ready=True)
        await cluster.merge_patch(STS_STATUS, {"status": ready_status(5)})
        await soon(lambda: SCALE_ANNOTATION not in annotations(cluster))
        assert any(4 in p.replicas for p in fake.partitions)
        assert len(cluster.events("AutoscaledUp")) == 1
    finally:
        await operator.stop()


async def test_a_quiet_cluster_scales_down_through_the_drain(
    kmock: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = LoadedBrokers(5)
    fake.rate = 10.0
    operator = await start(kmock, tmp_path, monkeypatch, fake)
    cluster = Cluster(kmock, operator.memo)
    try:
        await running(cluster, autoscaled(replicas=5), 5)
        await soon(lambda: spec_replicas(cluster) == 3)
        (event,) = await soon(lambda: cluster.events("AutoscaledDown"))
        assert "5 -> 3" in event["message"]
        # the departing brokers are drained before the StatefulSet shrinks
        await soon(lambda: annotations(cluster).get(SCALE_ANNOTATION) == "5->3")
        await soon(lambda: sts_replicas(cluster) == 3)
        assert all(set(p.replicas) <= {0, 1, 2} for p in fake.partitions)
    finally:
        await operator.stop()


async def test_disabled_autoscaling_never_scales(
    kmock: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = LoadedBrokers(3)
    fake.rate = 50_000.0
    operator = await start(kmock, tmp_path, monkeypatch, fake)
    cluster = Cluster(kmock, operator.memo)
    try:
        await running(cluster, autoscaled(enabled=False), 3)
        await soon(lambda: fake.calls > 12)
        assert spec_replicas(cluster) == 3
        assert not cluster.events("AutoscaledUp") and not autoscaling(cluster)
        assert not operator.memo.loads  # nothing is even kept
    finally:
        await operator.stop()


async def test_an_hpa_on_the_cluster_makes_the_autoscaler_stand_down(
    kmock: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = LoadedBrokers(3)
    fake.rate = 50_000.0
    operator = await start(kmock, tmp_path, monkeypatch, fake)
    cluster = Cluster(kmock, operator.memo)
    try:
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "keda-hpa-orders", "namespace": NS},
            "spec": {
                "scaleTargetRef": {
                    "apiVersion": "shazamq.io/v1alpha1",
                    "kind": "ShazamqCluster",
                    "name": "my-cluster",
                },
                "minReplicas": 3,
                "maxReplicas": 6,
            },
        }
        path = f"/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers"
        resp = await cluster.k.post(path, json=hpa)
        assert resp.status < 300, await resp.text()
        await running(cluster, autoscaled(), 3)
        status = await soon(lambda: autoscaling(cluster).get("disabledBy"))
        assert status == "keda-hpa-orders"
        (event,) = await soon(lambda: cluster.events("AutoscalingDisabled"))
        assert "keda-hpa-orders" in event["message"]
        calls = fake.calls
        await soon(lambda: fake.calls > calls + 6)
        assert spec_replicas(cluster) == 3 and not cluster.events("AutoscaledUp")
    finally:
        await operator.stop()


def restored(cluster: Cluster) -> dict[str, Any] | None:
    conditions = cluster.get(CLUSTERS, "my-cluster").get("status", {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Restored"), None)


async def test_a_restore_from_the_bucket_is_followed_in_the_status(
    kmock: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = LoadedBrokers(3)
    fake.restore = RestoreProgress(
        in_progress=True, topics=2, partitions=6, restored=2, bytes=4096, brokers=3
    )
    operator = await start(kmock, tmp_path, monkeypatch, fake)
    cluster = Cluster(kmock, operator.memo)
    try:
        body = quick_start()
        body["spec"]["tieredStorage"] = {
            "enabled": True,
            "provider": "s3",
            "s3": {"bucket": "shazamq-data", "prefix": "prod/shazamq"},
        }
        await running(cluster, body, 3)
        status = await soon(
            lambda: (
                (s := cluster.get(CLUSTERS, "my-cluster")["status"])["phase"] == "Restoring" and s
            )
        )
        assert status["restore"]["state"] == "Restoring"
        assert (status["restore"]["partitionsRestored"], status["restore"]["partitions"]) == (2, 6)
        assert restored(cluster)["status"] == "False"
        assert "2/6 partitions" in restored(cluster)["message"]
        await soon(lambda: cluster.events("Restoring"))

        fake.restore = RestoreProgress(
            in_progress=False, topics=2, partitions=6, restored=6, bytes=65536, groups=4, brokers=3
        )
        await soon(lambda: (restored(cluster) or {}).get("status") == "True")
        status = cluster.get(CLUSTERS, "my-cluster")["status"]
        assert status["phase"] == "Running"
        assert status["restore"]["state"] == "Restored"
        assert status["restore"]["groups"] == 4 and status["restore"]["bytes"] == 65536
        assert status["restore"]["startTime"] and status["restore"]["completionTime"]
        assert restored(cluster)["reason"] == "RestoreComplete"
        (event,) = await soon(lambda: cluster.events("Restored"))
        assert "2 topics, 6 partitions, 65536 bytes, 4 consumer groups" in event["message"]

        # brokers restarted later report no counts: the result stays
        fake.restore = RestoreProgress(in_progress=False, topics=2, partitions=6, brokers=3)
        calls = fake.calls
        await soon(lambda: fake.calls > calls + 5)
        assert cluster.get(CLUSTERS, "my-cluster")["status"]["restore"]["state"] == "Restored"
        assert len(cluster.events("Restored")) == 1
    finally:
        await operator.stop()
