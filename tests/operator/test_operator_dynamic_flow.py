"""Dynamic settings as the running operator applies them, against kmock's emulator.

The test plays the StatefulSet controller and the brokers as `test_operator_roll_flow`
does; the brokers' configs are a stand-in for `BrokerConfigs` (``memo.configurer``) that
answers DescribeConfigs from what it was last sent.

Covers: a change of settings the brokers take without a restart (retention, message size)
updates the ConfigMap but not the pod template, deletes no pod, and is sent to every
broker with exactly the changed keys; a broker that does not answer stays pending, is
named in the status, and gets them at a later tick; the status, the events and the
annotation say what was applied. A change that needs a restart still changes the pod
template (so the brokers roll).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import kmock
import kopf
import pytest
from operator_support import CLUSTERS, prepare_emulator, quick_start
from test_operator_reconcile import STATEFULSETS, Cluster, OperatorThread, eventually
from test_operator_roll_flow import NS, FakeBrokers, gone, put_pod, ready_sts_status

from shazamq.operator.__main__ import parse_options
from shazamq.operator.admin import PLAINTEXT, AdminError
from shazamq.operator.dynamic import desired
from shazamq.operator.handlers import DYNAMIC_ANNOTATION
from shazamq.operator.resources import CHECKSUM_ANNOTATION, ClusterModel

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:kmock")

CONFIGMAPS = "v1/configmaps"


class FakeConfigs:
    """Three brokers' dynamic settings, as DescribeConfigs would report them."""

    def __init__(self, initial: dict[str, str]) -> None:
        self.running = {i: dict(initial) for i in range(3)}
        self.altered: list[tuple[int, dict[str, str]]] = []
        self.hosts: list[str] = []
        self.down: set[int] = set()

    async def describe(self, connection: Any, host: str, port: int, broker: int, names):
        assert connection is PLAINTEXT
        if broker in self.down:
            raise AdminError(f"{host}:{port}: cannot connect")
        return {k: v for k, v in self.running[broker].items() if k in names}

    async def alter(self, connection: Any, host: str, port: int, broker: int, settings):
        self.hosts.append(host)
        self.altered.append((broker, dict(settings)))
        self.running[broker].update(settings)


def template_checksum(cluster: Cluster) -> str:
    sts = cluster.get(STATEFULSETS, "my-cluster")
    return sts["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION]


def rendered(cluster: Cluster) -> dict[str, Any]:
    return tomllib.loads(cluster.get(CONFIGMAPS, "my-cluster-config")["data"]["shazamq.toml"])


def status(cluster: Cluster) -> dict[str, Any]:
    return cluster.get(CLUSTERS, "my-cluster").get("status") or {}


async def test_dynamic_settings_reach_the_brokers_without_a_roll(
    kmock: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = quick_start()
    body["metadata"]["uid"] = "u"
    configs = FakeConfigs(desired(ClusterModel.from_resource(body).config))
    fake = FakeBrokers()
    fake.in_sync()
    monkeypatch.setenv("KUBECONFIG", str(prepare_emulator(kmock, tmp_path)))
    options = parse_options([], {"METRICS_PORT": "0"})
    memo = kopf.Memo(metrics_port=0, probe=fake, configurer=configs, roll_interval=0.2)
    operator = OperatorThread(options.namespaces, memo)
    await operator.start()
    cluster = Cluster(kmock, operator.memo)
    path = f"/apis/shazamq.io/v1alpha1/namespaces/{NS}/shazamqclusters/my-cluster"
    try:
        await cluster.create(quick_start())
        await eventually(lambda: cluster.get(STATEFULSETS, "my-cluster"))
        for i in range(3):
            await put_pod(cluster, i, "r1", ready=True)
        sts_status = f"/apis/apps/v1/namespaces/{NS}/statefulsets/my-cluster/status"
        await cluster.merge_patch(sts_status, {"status": ready_sts_status(3, "r1")})
        await eventually(lambda: fake.calls > 3)
        before = template_checksum(cluster)
        assert not configs.altered  # nothing changed: no broker is asked to change

        # Retention and message size: the brokers take both live.
        configs.down = {1}
        patch = {
            "spec": {
                "storage": {"retentionHours": 24},
                "config": {"broker": {"message_max_bytes": 2000000}},
            }
        }
        await cluster.merge_patch(path, patch)
        await eventually(lambda: rendered(cluster)["storage"].get("retention_hours") == 24)
        assert rendered(cluster)["broker"]["message_max_bytes"] == 2000000
        wanted = {"log.retention.hours": "24", "message.max.bytes": "2000000"}
        await eventually(lambda: len(configs.altered) == 2, timeout=15)
        assert sorted(b for b, _ in configs.altered) == [0, 2]
        assert all(settings == wanted for _, settings in configs.altered)
        assert "my-cluster-0.my-cluster-headless.messaging.svc" in configs.hosts
        dynamic = await eventually(lambda: status(cluster).get("dynamicConfig"))
        assert dynamic["pending"] == ["my-cluster-1"]
        assert "my-cluster-1" in dynamic["error"]
        await eventually(lambda: cluster.events("ConfigApplyFailed"))

        # Broker 1 answers again: it gets them at a later tick, and the change is done.
        configs.down = set()
        await eventually(lambda: len(configs.altered) == 3, timeout=15)
        assert configs.altered[2] == (1, wanted)
        await eventually(lambda: status(cluster)["dynamicConfig"]["pending"] == [])
        dynamic = status(cluster)["dynamicConfig"]
        assert dynamic["settings"] == wanted and dynamic.get("error") is None
        assert dynamic["brokers"] == [f"my-cluster-{i}" for i in range(3)]
        annotations = cluster.get(CLUSTERS, "my-cluster")["metadata"]["annotations"]
        assert DYNAMIC_ANNOTATION in annotations
        applied = [e["message"] for e in cluster.events("ConfigApplied")]
        assert any("log.retention.hours=24, message.max.bytes=2000000" in m for m in applied)
        changed = [e["message"] for e in cluster.events("ConfigChanged")]
        assert any("without a restart" in m for m in changed)

        # No roll: the pod template is the same, and no pod was deleted meanwhile.
        assert template_checksum(cluster) == before
        assert not any(gone(cluster, i) for i in range(3))
        assert not cluster.events("BrokerRestarted")
        assert (status(cluster).get("roll") or None) is None

        # A setting that needs a restart changes the template: the brokers will roll.
        count = len(configs.altered)
        patch = {"spec": {"config": {"broker": {"default_partitions": 6}}}}
        await cluster.merge_patch(path, patch)
        await eventually(lambda: template_checksum(cluster) != before)
        assert len(configs.altered) == count
    finally:
        await operator.stop()
