"""The operator running against kmock's Kubernetes emulator.

The real operator (Kopf with our handlers, our API client, our login through a kubeconfig)
runs in-process against `kmock.KubernetesEmulator`, which keeps objects in memory and
streams watch events. The emulator has no controllers: the tests play the StatefulSet
controller when they set a StatefulSet's status.

Covers: creating the README's clusters yields every child object with the right fields
and owner references, and a status (phase, conditions, brokers, selector); the cluster
secret is created once with a random value and an owner reference, and neither a later
reconciliation nor drift repair changes it (one made beforehand is used as it is; a refused
create is reported); the first reconciliation freezes the quorum's voters in the
``shazamq.io/quorum-voters`` annotation (from the running ConfigMap for a cluster that has
one), so scaling 1 -> 3 and 3 -> 5 only adds observers, 3 -> 2 is refused with a condition
and an event and leaves the StatefulSet as it was, and a malformed annotation is reported;
the README's
`kubectl patch --type=json` on replicas and on version updates the StatefulSet; a deleted
or altered child comes back; the StatefulSet's status drives the cluster's phase and
readiness; a bad spec becomes a condition and a Warning event (and a fix recovers); an
object the API rejects is reported the same way; once the cluster is deleted its children
are left to the garbage collector; look-alike objects of others are left alone;
ServiceMonitor on and off; events are posted; the operator's /metrics counts
reconciliations and clusters by phase; `WATCH_NAMESPACE` limits what is reconciled.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import kopf
import pytest
from operator_support import (
    CLUSTERS,
    MONITORS,
    RULES,
    original,
    prepare_emulator,
    production,
    quick_start,
)

import shazamq.operator.handlers  # noqa: F401  (registers the handlers)
from shazamq.operator.__main__ import parse_options
from shazamq.operator.resources import VOTERS_ANNOTATION, ClusterModel, voter_ids_of_config

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:kmock")

STATEFULSETS = "apps/v1/statefulsets"
SERVICES = "v1/services"
CONFIGMAPS = "v1/configmaps"
PDBS = "policy/v1/poddisruptionbudgets"
SECRETS = "v1/secrets"
EVENTS = "v1/events"
NS = "messaging"


class Cluster:
    """The emulated API, as the tests use it (kubectl's verbs, and eventual assertions)."""

    def __init__(self, emulator: kmock.KubernetesEmulator, memo: kopf.Memo) -> None:
        self.k = emulator
        self.memo = memo

    async def create(self, body: dict[str, Any]) -> None:
        ns = body["metadata"]["namespace"]
        resp = await self.k.post(
            f"/apis/shazamq.io/v1alpha1/namespaces/{ns}/shazamqclusters", json=body
        )
        assert resp.status < 300, await resp.text()

    async def json_patch(self, name: str, ops: list[dict[str, Any]], ns: str = NS) -> None:
        """`kubectl patch shazamqcluster NAME --type=json -p=OPS`."""
        resp = await self.k.patch(
            f"/apis/shazamq.io/v1alpha1/namespaces/{ns}/shazamqclusters/{name}",
            json=ops,
            headers={"Content-Type": "application/json-patch+json"},
        )
        assert resp.status < 300, await resp.text()

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> None:
        resp = await self.k.patch(
            path, json=patch, headers={"Content-Type": "application/merge-patch+json"}
        )
        assert resp.status < 300, await resp.text()

    async def delete(self, path: str) -> None:
        resp = await self.k.delete(path)
        assert resp.status < 300, await resp.text()

    def get(self, resource: str, name: str, ns: str = NS) -> dict[str, Any] | None:
        key = (kmock.resource(resource), ns, name)
        if key not in self.k.objects or self.k.objects[key].deleted:
            return None
        return self.k.objects[key].raw

    def history(self, resource: str, name: str, ns: str = NS) -> list[Any]:
        """Every version the emulator stored of an object (creations, patches, deletions)."""
        return list(self.k.objects[kmock.resource(resource), ns, name].history)

    def creates(self, plural: str) -> list[Any]:
        """The create requests (POST) of this kind, answered or refused."""
        return [
            r
            for r in list(self.k)
            if r.resource is not None
            and r.resource.plural == plural
            and r.action == kmock.action.CREATE
        ]

    def events(self, reason: str) -> list[dict[str, Any]]:
        """Events posted with this reason (from the requests: the emulator stores only one
        object per name, and events are created with `generateName`)."""
        return [
            r.data
            for r in list(self.k)
            if r.resource is not None
            and r.resource.plural == "events"
            and r.action == kmock.action.CREATE
            and isinstance(r.data, dict)
            and r.data.get("reason") == reason
        ]


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Retry `check` until it returns a truthy value without failing."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
            raise AssertionError(f"not yet: {check}")
        except (AssertionError, KeyError, TypeError):
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


class OperatorThread:
    """The operator in a thread with its own event loop, as in production (`kopf.run`).

    Kopf stops every task created in its loop after it started, so it cannot share the
    test's loop with the emulator's server and the test itself.
    """

    def __init__(self, namespaces: tuple[str, ...], memo: kopf.Memo) -> None:
        self.memo = memo
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.error: BaseException | None = None
        self.namespaces = namespaces
        self.thread = threading.Thread(target=self._run, name="operator", daemon=True)

    def _run(self) -> None:
        settings = kopf.OperatorSettings()
        settings.scanning.disabled = True  # the emulator has no CRD objects to scan
        settings.watching.reconnect_backoff = 0.1
        try:
            asyncio.run(
                kopf.operator(
                    clusterwide=not self.namespaces,
                    namespaces=self.namespaces,
                    settings=settings,
                    standalone=True,
                    memo=self.memo,
                    stop_flag=self.stop_flag,
                    ready_flag=self.ready_flag,
                )
            )
        except BaseException as exc:  # reported by stop()
            self.error = exc

    async def start(self) -> None:
        self.thread.start()
        ready = await asyncio.to_thread(self.ready_flag.wait, 15)
        assert ready and self.error is None, f"the operator did not start: {self.error!r}"

    async def stop(self) -> None:
        self.stop_flag.set()
        await asyncio.to_thread(self.thread.join, 20)
        assert not self.thread.is_alive(), "the operator did not stop"
        if self.error is not None:
            raise self.error


async def start_operator(
    emulator: kmock.KubernetesEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    environ: dict[str, str] | None = None,
) -> OperatorThread:
    monkeypatch.setenv("KUBECONFIG", str(prepare_emulator(emulator, tmp_path)))
    options = parse_options([], {"METRICS_PORT": "0", **(environ or {})})
    operator = OperatorThread(options.namespaces, kopf.Memo(metrics_port=0))
    await operator.start()
    return operator


@pytest.fixture
async def cluster(
    kmock: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Cluster]:
    operator = await start_operator(kmock, tmp_path, monkeypatch)
    try:
        yield Cluster(kmock, operator.memo)
    finally:
        await operator.stop()


def ready_sts_status(replicas: int, revision: str = "r1") -> dict[str, Any]:
    return {
        "replicas": replicas,
        "readyReplicas": replicas,
        "updatedReplicas": replicas,
        "currentReplicas": replicas,
        "currentRevision": revision,
        "updateRevision": revision,
    }


def condition(body: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in body["status"]["conditions"] if c["type"] == type_)


# -- creation ---------------------------------------------------------------------------------


async def test_quick_start_cluster_gets_every_child_and_a_status(cluster: Cluster) -> None:
    body = quick_start()
    uid = body["metadata"]["uid"]
    await cluster.create(body)

    sts = await eventually(lambda: cluster.get(STATEFULSETS, "my-cluster"))
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["serviceName"] == "my-cluster-headless"
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "shazamq/shazamq:0.1.0-rc1"
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "100Gi"
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"

    children = {
        (CONFIGMAPS, "my-cluster-config"),
        (SERVICES, "my-cluster-headless"),
        (SERVICES, "my-cluster"),
        (STATEFULSETS, "my-cluster"),
        (PDBS, "my-cluster"),
    }
    for resource, name in children:
        obj = await eventually(lambda r=resource, n=name: cluster.get(r, n))
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref == {
            "apiVersion": "shazamq.io/v1alpha1",
            "kind": "ShazamqCluster",
            "name": "my-cluster",
            "uid": uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    assert (
        "node_id_from_hostname = true"
        in cluster.get(CONFIGMAPS, "my-cluster-config")["data"]["shazamq.toml"]
    )
    assert cluster.get(SERVICES, "my-cluster-headless")["spec"]["clusterIP"] == "None"
    assert cluster.get(MONITORS, "my-cluster") is None

    def created() -> dict:
        status = cluster.get(CLUSTERS, "my-cluster")["status"]
        assert status["phase"] == "Creating"
        return status

    status = await eventually(created)
    assert status["selector"] == (
        "app.kubernetes.io/name=shazamq,app.kubernetes.io/instance=my-cluster"
    )
    assert status["observedGeneration"] == 1
    assert [b["pod"] for b in status["brokers"]] == ["my-cluster-0", "my-cluster-1", "my-cluster-2"]
    assert condition(cluster.get(CLUSTERS, "my-cluster"), "Reconciled")["status"] == "True"
    assert condition(cluster.get(CLUSTERS, "my-cluster"), "Ready")["status"] == "False"
    await eventually(lambda: cluster.events("PhaseCreating"))


async def test_production_cluster_gets_its_monitoring_objects_and_secrets(cluster: Cluster) -> None:
    await cluster.create(production())
    monitor = await eventually(lambda: cluster.get(MONITORS, "production-cluster"))
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    sts = await eventually(lambda: cluster.get(STATEFULSETS, "production-cluster"))
    env = {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SHAZAMQ_TIERED_STORAGE__S3__ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "aws-credentials",
        "key": "access-key-id",
    }
    cm = cluster.get(CONFIGMAPS, "production-cluster-config")
    assert 'bucket = "shazamq-data"' in cm["data"]["shazamq.toml"]

    rule = await eventually(lambda: cluster.get(RULES, "production-cluster"))
    assert rule["spec"]["groups"][0]["rules"]
    dashboard = await eventually(
        lambda: cluster.get(CONFIGMAPS, "production-cluster-grafana-dashboard")
    )
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"

    # Turning monitoring off deletes the ServiceMonitor ("None means delete").
    await cluster.json_patch(
        "production-cluster",
        [{"op": "replace", "path": "/spec/monitoring/serviceMonitor/enabled", "value": False}],
    )
    await eventually(lambda: cluster.get(MONITORS, "production-cluster") is None)
    assert cluster.get(RULES, "production-cluster") is not None
    # ... and the master switch deletes the rule and the dashboard too.
    await cluster.json_patch(
        "production-cluster",
        [{"op": "add", "path": "/spec/monitoring/enabled", "value": False}],
    )
    await eventually(lambda: cluster.get(RULES, "production-cluster") is None)
    await eventually(
        lambda: cluster.get(CONFIGMAPS, "production-cluster-grafana-dashboard") is None
    )


# -- one cluster: the quorum and its secret ----------------------------------------------------


def secret_value(secret: dict[str, Any]) -> str:
    return base64.b64decode(secret["data"]["secret"]).decode()


async def test_the_cluster_secret_is_created_once_and_kept(cluster: Cluster) -> None:
    body = quick_start()
    await cluster.create(body)
    secret = await eventually(lambda: cluster.get(SECRETS, "my-cluster-cluster-secret"))
    assert secret["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "shazamq.io/v1alpha1",
            "kind": "ShazamqCluster",
            "name": "my-cluster",
            "uid": body["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert secret["immutable"] is True
    value = secret_value(secret)
    assert len(value) >= 43  # secrets.token_urlsafe(32)

    # The pods mount it, the ConfigMap names the file and the first three pods as voters.
    sts = await eventually(lambda: cluster.get(STATEFULSETS, "my-cluster"))
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["cluster-secret"]["secret"]["secretName"] == "my-cluster-cluster-secret"
    toml = cluster.get(CONFIGMAPS, "my-cluster-config")["data"]["shazamq.toml"]
    assert 'secret_file = "/etc/shazamq/cluster/secret"' in toml
    for i in range(3):
        assert f'"{i}@my-cluster-{i}.my-cluster-headless.messaging.svc:9093"' in toml
    headless = cluster.get(SERVICES, "my-cluster-headless")["spec"]
    assert {"name": "quorum", "port": 9093, "targetPort": "quorum", "protocol": "TCP"} in (
        headless["ports"]
    )

    # A second reconciliation (scaling) and a drift repair try again and change nothing.
    await cluster.json_patch(
        "my-cluster", [{"op": "replace", "path": "/spec/replicas", "value": 5}]
    )
    await eventually(lambda: cluster.get(STATEFULSETS, "my-cluster")["spec"]["replicas"] == 5)
    await eventually(lambda: len(cluster.creates("secrets")) >= 2)
    await cluster.delete("/api/v1/namespaces/messaging/configmaps/my-cluster-config")
    await eventually(lambda: cluster.get(CONFIGMAPS, "my-cluster-config"))
    await asyncio.sleep(0.3)
    assert secret_value(cluster.get(SECRETS, "my-cluster-cluster-secret")) == value
    assert len(cluster.history(SECRETS, "my-cluster-cluster-secret")) == 1  # never written again


async def test_a_cluster_secret_made_beforehand_is_used_as_it_is(cluster: Cluster) -> None:
    own = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "my-cluster-cluster-secret", "namespace": NS},
        "data": {"secret": base64.b64encode(b"chosen-by-the-admin").decode()},
    }
    resp = await cluster.k.post(f"/api/v1/namespaces/{NS}/secrets", json=own)
    assert resp.status < 300, await resp.text()
    await cluster.create(quick_start())
    await eventually(lambda: cluster.get(PDBS, "my-cluster"))
    await eventually(lambda: cluster.creates("secrets")[1:])  # the operator's attempt
    stored = cluster.get(SECRETS, "my-cluster-cluster-secret")
    assert secret_value(stored) == "chosen-by-the-admin"
    assert "ownerReferences" not in stored["metadata"]
    assert len(cluster.history(SECRETS, "my-cluster-cluster-secret")) == 1
    await eventually(lambda: cluster.get(CLUSTERS, "my-cluster")["status"]["phase"] == "Creating")


async def test_a_refused_cluster_secret_is_reported(cluster: Cluster) -> None:
    """An operator upgraded without its new RBAC rule (create on Secrets)."""
    message = 'secrets is forbidden: cannot create resource "secrets" in namespace "messaging"'
    key = (kmock.resource(SECRETS), NS, "my-cluster-cluster-secret")

    def forbidden() -> dict[str, Any]:
        # The emulator stores what is posted before it answers; a refused create stores
        # nothing, so every attempt (Kopf may reconcile twice) is refused alike.
        cluster.k.objects[key].delete()
        return {
            "apiVersion": "v1",
            "kind": "Status",
            "status": "Failure",
            "reason": "Forbidden",
            "message": message,
            "code": 403,
        }

    cluster.k["post /api/v1/namespaces/messaging/secrets"] << 403 << forbidden
    await cluster.create(quick_start())

    def failed() -> dict:
        body = cluster.get(CLUSTERS, "my-cluster")
        assert body["status"]["phase"] == "Failed"
        return condition(body, "Reconciled")

    reconciled = await eventually(failed)
    assert (reconciled["status"], reconciled["reason"]) == ("False", "ApplyFailed")
    assert reconciled["message"] == message
    await asyncio.sleep(0.3)
    assert cluster.get(SECRETS, "my-cluster-cluster-secret") is None
    assert cluster.get(STATEFULSETS, "my-cluster") is None  # no pods that cannot start


# -- one cluster: the frozen voters ------------------------------------------------------------


def voters_annotation(cluster: Cluster, name: str = "my-cluster") -> str | None:
    return (cluster.get(CLUSTERS, name)["metadata"].get("annotations") or {}).get(VOTERS_ANNOTATION)


def rendered_voters(cluster: Cluster, name: str = "my-cluster") -> tuple[int, ...] | None:
    return voter_ids_of_config(cluster.get(CONFIGMAPS, f"{name}-config")["data"]["shazamq.toml"])


async def scale(cluster: Cluster, replicas: int, name: str = "my-cluster") -> None:
    await cluster.json_patch(name, [{"op": "replace", "path": "/spec/replicas", "value": replicas}])


def sized(replicas: int) -> dict[str, Any]:
    body = quick_start()
    body["spec"]["replicas"] = replicas
    return body


async def test_the_first_reconciliation_freezes_the_voters(cluster: Cluster) -> None:
    await cluster.create(quick_start())
    await eventually(lambda: voters_annotation(cluster) == "0,1,2")
    await eventually(lambda: cluster.get(STATEFULSETS, "my-cluster"))
    assert rendered_voters(cluster) == (0, 1, 2)
    (event,) = await eventually(lambda: cluster.events("VotersFrozen"))
    assert event["type"] == "Normal" and "0,1,2" in event["message"]

    # The merge patch wrote the annotation only: the spec and Kopf's annotations are intact.
    def handled() -> str:
        return cluster.get(CLUSTERS, "my-cluster")["metadata"]["annotations"][
            "shazamq.io/last-handled-configuration"
        ]

    # Kopf leaves it out of the spec it compares (its own prefix), so writing it is not an
    # update to handle.
    assert VOTERS_ANNOTATION not in await eventually(handled)
    assert cluster.get(CLUSTERS, "my-cluster")["spec"] == quick_start()["spec"]
    await eventually(lambda: cluster.get(CLUSTERS, "my-cluster")["status"]["phase"] == "Creating")


async def test_scaling_1_to_3_keeps_the_single_voter(cluster: Cluster) -> None:
    await cluster.create(sized(1))
    await eventually(lambda: voters_annotation(cluster) == "0")
    await eventually(lambda: cluster.get(STATEFULSETS, "my-cluster")["spec"]["replicas"] == 1)
    checksum = "shazamq.io/config-checksum"
    annotations = cluster.get(STATEFULSETS, "my-cluster")["spec"]["template"]["metadata"]
    before = annotations["annotations"][checksum]

    await scale(cluster, 3)
    await eventually(lambda: cluster.get(STATEFULSETS, "my-cluster")["spec"]["replicas"] == 3)
    await eventually(lambda: len(cluster.get(CLUSTERS, "my-cluster")["status"]["brokers"]) == 3)
    assert voters_annotation(cluster) == "0"
    toml = cluster.get(CONFIGMAPS, "my-cluster-config")["data"]["shazamq.toml"]
    assert rendered_voters(cluster) == (0,)  # pods 1 and 2 are observers
    assert '"0@my-cluster-0.my-cluster-headless.messaging.svc:9093"' in toml
    assert "1@my-cluster-1" not in toml and "2@my-cluster-2" not in toml
    sts = cluster.get(STATEFULSETS, "my-cluster")
    assert sts["spec"]["template"]["metadata"]["annotations"][checksum] == before  # no roll


async def test_scaling_3_to_5_keeps_the_three_voters(cluster: Cluster) -> None:
    await cluster.create(quick_start())
    await eventually(lambda: voters_annotation(cluster) == "0,1,2")
    await eventually(lambda: cluster.get(STATEFULSETS, "my-cluster"))
    await scale(cluster, 5)
    await eventually(lambda: cluster.get(STATEFULSETS, "my-cluster")["spec"]["replicas"] == 5)
    assert voters_annotation(cluster) == "0,1,2"
    assert rendered_voters(cluster) == (0, 1, 2)


async def test_scaling_below_a_voter_is_refused_and_the_statefulset_kept(
    cluster: Cluster,
) -> None:
    await cluster.create(quick_start())
    await eventually(lambda: voters_annotation(cluster) == "0,1,2")
    await eventually(lambda: cluster.get(PDBS, "my-cluster"))
    await eventually(lambda: cluster.get(CLUSTERS, "my-cluster")["status"]["phase"] == "Creating")
    await scale(cluster, 2)

    def refused() -> dict:
        body = cluster.get(CLUSTERS, "my-cluster")
        assert body["status"]["phase"] == "Failed"
        return condition(body, "Reconciled")

    reconciled = await eventually(refused)
    message = (
        "spec.replicas: scaling to 2 would remove quorum voter pod my-cluster-2; "
        "the metadata quorum cannot change its voters yet"
    )
    assert (reconciled["status"], reconciled["reason"]) == ("False", "InvalidSpec")
    assert reconciled["message"] == message
    events = await eventually(lambda: cluster.events("InvalidSpec"))
    assert events[0]["type"] == "Warning" and events[0]["message"] == message
    await asyncio.sleep(0.3)
    assert cluster.get(STATEFULSETS, "my-cluster")["spec"]["replicas"] == 3
    assert rendered_voters(cluster) == (0, 1, 2)
    assert voters_annotation(cluster) == "0,1,2"

    await scale(cluster, 3)  # back to a size that keeps every voter: recovered
    await eventually(lambda: cluster.get(STATEFULSETS, "my-cluster")["spec"]["replicas"] == 3)
    await eventually(lambda: cluster.get(CLUSTERS, "my-cluster")["status"]["phase"] != "Failed")
    assert condition(cluster.get(CLUSTERS, "my-cluster"), "Reconciled")["status"] == "True"


async def test_a_malformed_voters_annotation_is_reported(cluster: Cluster) -> None:
    body = quick_start()
    body["metadata"]["annotations"] = {VOTERS_ANNOTATION: "0,1,x"}
    await cluster.create(body)

    def failed() -> dict:
        body = cluster.get(CLUSTERS, "my-cluster")
        assert body["status"]["phase"] == "Failed"
        return condition(body, "Reconciled")

    reconciled = await eventually(failed)
    assert reconciled["reason"] == "InvalidSpec"
    assert reconciled["message"] == (
        'metadata.annotations["shazamq.io/quorum-voters"]: '
        "'0,1,x' is not a comma-separated list of pod ordinals (such as '0,1,2')"
    )
    event = (await eventually(lambda: cluster.events("InvalidSpec")))[0]
    assert "shazamq.io/quorum-voters" in event["message"]
    await asyncio.sleep(0.3)
    assert cluster.get(STATEFULSETS, "my-cluster") is None  # nothing rendered from a guess
    assert voters_annotation(cluster) == "0,1,x"  # not overwritten: it is the admin's to fix


async def test_an_existing_cluster_is_frozen_with_the_voters_it_runs(cluster: Cluster) -> None:
    """A cluster from before the annotation, whose spec went 1 -> 3 since its ConfigMap was
    rendered: its running quorum (pod 0 alone) is frozen, not the spec's first three."""
    running = ClusterModel.from_resource(sized(1)).generate_config_map()
    resp = await cluster.k.post(f"/api/v1/namespaces/{NS}/configmaps", json=running)
    assert resp.status < 300, await resp.text()
    await cluster.create(sized(3))
    await eventually(lambda: voters_annotation(cluster) == "0")
    await eventually(lambda: cluster.get(STATEFULSETS, "my-cluster")["spec"]["replicas"] == 3)
    assert rendered_voters(cluster) == (0,)


async def test_an_existing_cluster_is_frozen_with_what_it_renders(cluster: Cluster) -> None:
    """Without a ConfigMap of its own (a look-alike of someone else's is ignored)."""
    foreign = ClusterModel.from_resource(sized(1)).generate_config_map()
    foreign["metadata"]["ownerReferences"][0]["uid"] = "00000000-0000-4000-8000-000000000000"
    resp = await cluster.k.post(f"/api/v1/namespaces/{NS}/configmaps", json=foreign)
    assert resp.status < 300, await resp.text()
    await cluster.create(sized(5))
    await eventually(lambda: voters_annotation(cluster) == "0,1,2")


async def test_no_pods_freeze_no_voters(cluster: Cluster) -> None:
    await cluster.create(sized(0))
    await eventually(lambda: cluster.get(STATEFULSETS, "my-cluster"))
    await eventually(lambda: cluster.get(CLUSTERS, "my-cluster")["status"])
    assert voters_annotation(cluster) is None
    await scale(cluster, 1)  # the first pod: frozen now
    await eventually(lambda: voters_annotation(cluster) == "0")
    await eventually(lambda: cluster.get(STATEFULSETS, "my-cluster")["spec"]["replicas"] == 1)


# -- the README's operations ------------------------------------------------------------------


async def test_scaling_and_upgrading_with_the_readme_s_json_patches(cluster: Cluster) -> None:
    await cluster.create(quick_start())
    await eventually(lambda: cluster.get(STATEFULSETS, "my-cluster"))

    # kubectl patch shazamqcluster my-cluster -n messaging --type='json'
    #   -p='[{"op": "replace", "path": "/spec/replicas", "value": 5}]'
    await cluster.json_patch(
        "my-cluster", [{"op": "replace", "path": "/spec/replicas", "value": 5}]
    )
    await eventually(lambda: cluster.get(STATEFULSETS, "my-cluster")["spec"]["replicas"] == 5)
    await eventually(lambda: len(cluster.get(CLUSTERS, "my-cluster")["status"]["brokers"]) == 5)

    # Scaling down drains the departing brokers first (test_operator_scale_flow): with no
    # broker running here, the StatefulSet keeps its size and the status says why.
    await cluster.json_patch(
        "my-cluster", [{"op": "replace", "path": "/spec/replicas", "value": 3}]
    )
    annotations = lambda: cluster.get(CLUSTERS, "my-cluster")["metadata"]["annotations"]  # noqa: E731
    await eventually(lambda: annotations()["shazamq.io/scale"] == "5->3")

    def draining() -> dict:
        scaling = cluster.get(CLUSTERS, "my-cluster")["status"]["scaling"]
        assert scaling["fromReplicas"] == 5 and scaling["toReplicas"] == 3
        return scaling

    scaling = await eventually(draining)
    assert "ready" in scaling["waitingFor"]
    assert cluster.get(STATEFULSETS, "my-cluster")["spec"]["replicas"] == 5

    # kubectl patch ... -p='[{"op": "replace", "path": "/spec/version", "value": "0.2.0"}]'
    await cluster.json_patch(
        "my-cluster", [{"op": "replace", "path": "/spec/version", "value": "0.2.0"}]
    )

    def upgraded() -> bool:
        sts = cluster.get(STATEFULSETS, "my-cluster")
        image = sts["spec"]["template"]["spec"]["containers"][0]["image"]
        return image == "shazamq/shazamq:0.2.0"

    await eventually(upgraded)


async def test_the_statefulset_status_drives_the_cluster_status(cluster: Cluster) -> None:
    await cluster.create(quick_start())
    await eventually(lambda: cluster.get(STATEFULSETS, "my-cluster"))
    sts_status = "/apis/apps/v1/namespaces/messaging/statefulsets/my-cluster/status"

    await cluster.merge_patch(sts_status, {"status": {**ready_sts_status(3), "readyReplicas": 1}})
    await eventually(lambda: cluster.get(CLUSTERS, "my-cluster")["status"]["readyReplicas"] == 1)
    assert cluster.get(CLUSTERS, "my-cluster")["status"]["phase"] == "Creating"

    await cluster.merge_patch(sts_status, {"status": ready_sts_status(3)})

    def running() -> bool:
        body = cluster.get(CLUSTERS, "my-cluster")
        assert body["status"]["phase"] == "Running"
        assert body["status"]["readyReplicas"] == 3
        assert body["status"]["replicas"] == 3
        assert condition(body, "Ready")["status"] == "True"
        return condition(body, "Ready")["reason"] == "AllBrokersReady"

    await eventually(running)

    # One broker goes down: Degraded, and a Warning event.
    await cluster.merge_patch(sts_status, {"status": {"readyReplicas": 2}})
    await eventually(lambda: cluster.get(CLUSTERS, "my-cluster")["status"]["phase"] == "Degraded")
    event = (await eventually(lambda: cluster.events("PhaseDegraded")))[0]
    assert event["type"] == "Warning"
    assert event["involvedObject"]["name"] == "my-cluster"

    # A rolling upgrade in progress: Updating.
    await cluster.json_patch(
        "my-cluster", [{"op": "replace", "path": "/spec/version", "value": "0.2.0"}]
    )
    await cluster.merge_patch(
        sts_status, {"status": {"readyReplicas": 3, "updateRevision": "r2", "updatedReplicas": 1}}
    )
    await eventually(lambda: cluster.get(CLUSTERS, "my-cluster")["status"]["phase"] == "Updating")
    await cluster.merge_patch(sts_status, {"status": ready_sts_status(3, revision="r2")})
    await eventually(lambda: cluster.get(CLUSTERS, "my-cluster")["status"]["phase"] == "Running")


# -- drift ---------------------------------------------------------------------------------


async def test_deleted_children_come_back(cluster: Cluster) -> None:
    await cluster.create(quick_start())
    await eventually(lambda: cluster.get(PDBS, "my-cluster"))
    for resource, path in [
        (STATEFULSETS, "/apis/apps/v1/namespaces/messaging/statefulsets/my-cluster"),
        (SERVICES, "/api/v1/namespaces/messaging/services/my-cluster-headless"),
        (CONFIGMAPS, "/api/v1/namespaces/messaging/configmaps/my-cluster-config"),
        (PDBS, "/apis/policy/v1/namespaces/messaging/poddisruptionbudgets/my-cluster"),
    ]:
        name = path.rsplit("/", 1)[-1]
        await cluster.delete(path)
        restored = await eventually(lambda r=resource, n=name: cluster.get(r, n))
        assert restored["metadata"]["ownerReferences"][0]["name"] == "my-cluster"
    await eventually(lambda: cluster.events("DriftRepaired"))


async def test_changed_children_are_repaired(cluster: Cluster) -> None:
    await cluster.create(quick_start())
    await eventually(lambda: cluster.get(STATEFULSETS, "my-cluster"))
    await cluster.merge_patch(
        "/apis/apps/v1/namespaces/messaging/statefulsets/my-cluster", {"spec": {"replicas": 7}}
    )
    await eventually(lambda: cluster.get(STATEFULSETS, "my-cluster")["spec"]["replicas"] == 3)
    await cluster.merge_patch(
        "/api/v1/namespaces/messaging/configmaps/my-cluster-config",
        {"data": {"shazamq.toml": "[broker]\nport = 1\n"}},
    )
    await eventually(
        lambda: (
            "node_id_from_hostname"
            in cluster.get(CONFIGMAPS, "my-cluster-config")["data"]["shazamq.toml"]
        )
    )
    # Additions by others (e.g. defaults a real API server fills in) are not drift.
    await cluster.merge_patch(
        "/api/v1/namespaces/messaging/services/my-cluster",
        {"spec": {"clusterIP": "10.0.0.10", "sessionAffinity": "None"}},
    )
    await asyncio.sleep(0.5)
    assert cluster.get(SERVICES, "my-cluster")["spec"]["clusterIP"] == "10.0.0.10"


async def test_deleting_the_cluster_leaves_its_children_to_the_garbage_collector(
    cluster: Cluster,
) -> None:
    """Owner references make Kubernetes delete the children; the operator must not fight
    that by recreating them (the emulator has no garbage collector: the test deletes)."""
    await cluster.create(quick_start())
    await eventually(lambda: cluster.get(PDBS, "my-cluster"))
    await eventually(lambda: (NS, "my-cluster") in cluster.memo.statuses)
    assert not cluster.get(CLUSTERS, "my-cluster")["metadata"].get("finalizers")
    await cluster.delete(
        "/apis/shazamq.io/v1alpha1/namespaces/messaging/shazamqclusters/my-cluster"
    )
    # Events queued before the deletion may still be handled (with the body they carried);
    # the contract starts once the operator has seen the deletion itself.
    await eventually(lambda: (NS, "my-cluster") not in cluster.memo.statuses)
    await cluster.delete("/apis/apps/v1/namespaces/messaging/statefulsets/my-cluster")
    await cluster.delete("/api/v1/namespaces/messaging/configmaps/my-cluster-config")
    await asyncio.sleep(0.5)
    assert cluster.get(STATEFULSETS, "my-cluster") is None
    assert cluster.get(CONFIGMAPS, "my-cluster-config") is None


async def test_objects_that_are_not_ours_are_left_alone(cluster: Cluster) -> None:
    await cluster.create(quick_start())
    await eventually(lambda: cluster.get(STATEFULSETS, "my-cluster"))
    foreign = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "my-cluster-config",
            "namespace": "other",
            "labels": {
                "app.kubernetes.io/managed-by": "shazamq-operator",
                "shazamq.io/cluster": "my-cluster",
            },
        },
        "data": {"x": "y"},
    }
    resp = await cluster.k.post("/api/v1/namespaces/other/configmaps", json=foreign)
    assert resp.status < 300
    await asyncio.sleep(0.5)
    assert cluster.get(CONFIGMAPS, "my-cluster-config", ns="other")["data"] == {"x": "y"}


# -- bad specs ------------------------------------------------------------------------------


async def test_a_bad_spec_is_a_condition_and_an_event_not_a_crash(cluster: Cluster) -> None:
    body = quick_start()
    body["spec"]["replicas"] = -1
    await cluster.create(body)

    def failed() -> dict:
        status = cluster.get(CLUSTERS, "my-cluster")["status"]
        assert status["phase"] == "Failed"
        return status

    status = await eventually(failed)
    reconciled = next(c for c in status["conditions"] if c["type"] == "Reconciled")
    assert reconciled["status"] == "False"
    assert reconciled["reason"] == "InvalidSpec"
    assert reconciled["message"].startswith("spec.replicas: Expected int >= 0")
    event = (await eventually(lambda: cluster.events("InvalidSpec")))[0]
    assert event["type"] == "Warning" and "spec.replicas" in event["message"]
    assert cluster.get(STATEFULSETS, "my-cluster") is None

    # Fixing the spec recovers.
    await cluster.json_patch(
        "my-cluster", [{"op": "replace", "path": "/spec/replicas", "value": 1}]
    )
    await eventually(lambda: cluster.get(STATEFULSETS, "my-cluster")["spec"]["replicas"] == 1)
    await eventually(lambda: cluster.get(CLUSTERS, "my-cluster")["status"]["phase"] == "Creating")
    assert condition(cluster.get(CLUSTERS, "my-cluster"), "Reconciled")["status"] == "True"


async def test_an_object_the_api_rejects_is_reported(cluster: Cluster) -> None:
    await cluster.create(quick_start())
    await eventually(lambda: cluster.get(PDBS, "my-cluster"))
    message = "spec: Forbidden: updates to statefulset spec for fields other than ..."
    (
        cluster.k["patch /apis/apps/v1/namespaces/messaging/statefulsets/my-cluster"]
        << 422
        << {
            "apiVersion": "v1",
            "kind": "Status",
            "status": "Failure",
            "reason": "Invalid",
            "message": message,
            "code": 422,
        }
    )
    await cluster.json_patch(
        "my-cluster", [{"op": "replace", "path": "/spec/version", "value": "0.2.0"}]
    )

    def failed() -> dict:
        body = cluster.get(CLUSTERS, "my-cluster")
        assert body["status"]["phase"] == "Failed"
        return condition(body, "Reconciled")

    reconciled = await eventually(failed)
    assert (reconciled["status"], reconciled["reason"]) == ("False", "ApplyFailed")
    assert reconciled["message"] == message
    event = (await eventually(lambda: cluster.events("ApplyFailed")))[0]
    assert event["type"] == "Warning" and "422" in event["message"]


# -- metrics and scope --------------------------------------------------------------------------


async def test_operator_metrics(cluster: Cluster) -> None:
    await cluster.create(quick_start())
    bad = quick_start()
    bad["metadata"]["name"] = "bad-cluster"
    bad["metadata"]["uid"] = "9a1d7e10-0000-4000-8000-00000000000b"
    bad["spec"]["replicas"] = -5
    await cluster.create(bad)
    await eventually(lambda: cluster.get(CLUSTERS, "bad-cluster")["status"]["phase"] == "Failed")
    await eventually(lambda: cluster.get(CLUSTERS, "my-cluster")["status"]["phase"] == "Creating")

    port = cluster.memo.metrics_server.port
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        assert resp.status == 200
        text = await resp.text()
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples['shazamq_operator_reconciliations_total{result="success"}'] >= 1
    assert samples['shazamq_operator_reconciliations_total{result="invalid_spec"}'] >= 1
    assert samples["shazamq_operator_reconcile_duration_seconds_count"] >= 2
    assert samples['shazamq_operator_clusters{phase="Creating"}'] == 1
    assert samples['shazamq_operator_clusters{phase="Failed"}'] == 1
    assert samples['shazamq_operator_clusters{phase="Running"}'] == 0


async def test_watch_namespace_limits_the_operator(
    kmock: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    operator = await start_operator(
        kmock, tmp_path, monkeypatch, environ={"WATCH_NAMESPACE": "messaging"}
    )
    try:
        api = Cluster(kmock, operator.memo)
        elsewhere = quick_start()
        elsewhere["metadata"].update(namespace="other", uid="1f0e2d3c-0000-4000-8000-000000000002")
        await api.create(elsewhere)
        await api.create(quick_start())
        await eventually(lambda: api.get(STATEFULSETS, "my-cluster"))
        await asyncio.sleep(0.5)
        assert api.get(STATEFULSETS, "my-cluster", ns="other") is None
    finally:
        await operator.stop()


async def test_a_cluster_written_for_the_original_crd_applies_and_reconciles(
    cluster: Cluster,
) -> None:
    """monitoring.enabled, security.enabled, imagePullSecrets, service.annotations, config:
    the original operator's fields are accepted and rendered."""
    await cluster.create(original())
    sts = await eventually(lambda: cluster.get(STATEFULSETS, "original-cluster"))
    pod = sts["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    svc = await eventually(lambda: cluster.get(SERVICES, "original-cluster"))
    assert svc["metadata"]["annotations"]
    assert await eventually(lambda: cluster.get(MONITORS, "original-cluster"))
    body = await eventually(
        lambda: (b := cluster.get(CLUSTERS, "original-cluster")) and b.get("status") and b
    )
    assert condition(body, "Reconciled")["status"] == "True"
    assert body["status"]["phase"] != "Failed"
