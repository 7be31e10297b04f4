"""The Helm chart `helm/shazamq-operator`, rendered by Helm's own engine (helm-python-sdk).

Covers: the README's values and their defaults; `helm lint --strict` clean with default and
custom values; every rendered object valid (kubernetes-validate strict; the ServiceMonitor
by its own check); the README's custom install (`watchNamespace=messaging`,
`metrics.serviceMonitor.enabled=true`, `resources.limits.memory=1Gi`) giving a Role and
RoleBinding in the watched namespace and `WATCH_NAMESPACE`; `crds.keep` adding or leaving
out `helm.sh/resource-policy: keep`; `crds.install=false`; the ServiceMonitor only where
the Prometheus Operator's kind is served; the kubectl install's RBAC equal to the chart's.
"""

from __future__ import annotations

import json
from typing import Any

import helm_python as helm
import pytest
import yaml
from helm_python import _native
from operator_support import CHART, ROOT, validate_manifest

from shazamq.operator.crd import build_crd

SERVICE_MONITOR_API = "monitoring.coreos.com/v1/ServiceMonitor"
README_CUSTOM = {
    "watchNamespace": "messaging",
    "metrics": {"serviceMonitor": {"enabled": True}},
    "resources": {"limits": {"memory": "1Gi"}},
}


def render(
    values: dict[str, Any] | None = None, *, api_versions: list[str] | None = None
) -> list[dict[str, Any]]:
    """`helm template shazamq-operator -n shazamq-system`, as parsed objects."""
    opts = {"name": "shazamq-operator", "namespace": "shazamq-system", "is_install": True}
    with helm.Chart.load(CHART) as chart:
        if api_versions:
            # The SDK's render() takes no API versions (`helm template --api-versions`);
            # its C library does, through the same options object.
            opts["api_versions"] = api_versions
            manifests = json.loads(
                _native.call_string(
                    "helm_render",
                    chart._raw(),
                    json.dumps(values or {}),
                    json.dumps(opts),
                )
            )
        else:
            manifests = chart.render(values or {}, **opts)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(d for d in yaml.safe_load_all(text) if d)
    return objects


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def notes(values: dict[str, Any] | None = None) -> str:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values or {}, name="shazamq-operator", namespace="shazamq-system")
    return next(text for path, text in out.items() if path.endswith("NOTES.txt"))


def test_chart_metadata_and_readme_values() -> None:
    with helm.Chart.load(CHART) as chart:
        assert chart.name == "shazamq-operator"
        values = chart.values
    assert values["replicaCount"] == 1
    assert values["image"]["repository"] == "shazamq/shazamq-operator"
    assert values["image"]["tag"] == "0.1.0"
    assert values["resources"] == {
        "limits": {"cpu": "500m", "memory": "512Mi"},
        "requests": {"cpu": "100m", "memory": "128Mi"},
    }
    assert values["watchNamespace"] == ""
    assert values["metrics"]["enabled"] is True
    assert values["metrics"]["serviceMonitor"]["enabled"] is True
    assert values["crds"] == {"install": True, "keep": True}


@pytest.mark.parametrize(
    "values",
    [None, README_CUSTOM, {"crds": {"keep": False}}, {"metrics": {"enabled": False}}],
    ids=["default", "readme-custom", "crds-not-kept", "no-metrics"],
)
def test_lint_is_clean(values: dict[str, Any] | None) -> None:
    report = helm.lint(
        CHART, values, strict=True, namespace="shazamq-system", kube_version="v1.24.0"
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


@pytest.mark.parametrize(
    ("values", "api_versions"),
    [
        (None, None),
        (README_CUSTOM, [SERVICE_MONITOR_API]),
        ({"crds": {"keep": False}, "replicaCount": 2}, None),
        ({"watchNamespace": "a, b", "metrics": {"enabled": False}}, None),
    ],
    ids=["default", "readme-custom", "crds-not-kept", "two-namespaces"],
)
def test_every_rendered_object_is_valid(values: dict | None, api_versions: list | None) -> None:
    objects = render(values, api_versions=api_versions)
    assert by_kind(objects, "Deployment")
    for obj in objects:
        validate_manifest(obj)


def test_default_install_watches_every_namespace_with_a_cluster_role() -> None:
    objects = render()
    (deployment,) = by_kind(objects, "Deployment")
    assert deployment["metadata"]["name"] == "shazamq-operator"
    assert deployment["metadata"]["namespace"] == "shazamq-system"
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "shazamq/shazamq-operator:0.1.0"
    assert container["command"] == ["python", "-m", "shazamq.operator"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["WATCH_NAMESPACE"] == "" and env["METRICS_PORT"] == "8080"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": "512Mi"}
    assert pod["serviceAccountName"] == "shazamq-operator"
    assert not by_kind(objects, "Role") and not by_kind(objects, "RoleBinding")
    (role,) = by_kind(objects, "ClusterRole")
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert {"shazamqclusters", "shazamqclusters/status", "statefulsets", "services"} <= resources
    assert {"configmaps", "poddisruptionbudgets", "events"} <= resources
    assert {"servicemonitors", "prometheusrules"} <= resources
    assert {"customresourcedefinitions", "clusterkopfpeerings", "kopfpeerings"} <= resources
    # the cluster secrets: created once; read by name only (its credentials, the CA), never
    # listed or watched
    (secret_rule,) = [rule for rule in role["rules"] if "secrets" in rule["resources"]]
    assert secret_rule == {
        "apiGroups": [""],
        "resources": ["secrets"],
        "verbs": ["get", "create", "delete"],
    }
    (binding,) = by_kind(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "shazamq-operator", "namespace": "shazamq-system"}
    ]
    (svc,) = by_kind(objects, "Service")
    assert svc["spec"]["ports"][0]["port"] == 8080


def test_readme_custom_values() -> None:
    objects = render(README_CUSTOM, api_versions=[SERVICE_MONITOR_API])
    (deployment,) = by_kind(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {e["name"]: e["value"] for e in container["env"]}["WATCH_NAMESPACE"] == "messaging"
    assert container["resources"]["limits"]["memory"] == "1Gi"
    assert container["resources"]["limits"]["cpu"] == "500m"
    (role,) = by_kind(objects, "Role")
    (binding,) = by_kind(objects, "RoleBinding")
    secrets = {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "delete"]}
    assert secrets in role["rules"]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "messaging"
    assert binding["subjects"][0]["namespace"] == "shazamq-system"
    (cluster_role,) = by_kind(objects, "ClusterRole")
    cluster_resources = {r for rule in cluster_role["rules"] for r in rule["resources"]}
    assert cluster_resources == {"customresourcedefinitions"}  # nothing else cluster-wide
    (monitor,) = by_kind(objects, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert "messaging" in notes(README_CUSTOM)


def test_a_role_per_watched_namespace() -> None:
    objects = render({"watchNamespace": "a, b"})
    assert sorted(r["metadata"]["namespace"] for r in by_kind(objects, "Role")) == ["a", "b"]
    (deployment,) = by_kind(objects, "Deployment")
    env = {
        e["name"]: e["value"]
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["WATCH_NAMESPACE"] == "a,b"


def test_service_monitor_only_where_prometheus_operator_serves_it() -> None:
    assert not by_kind(render(), "ServiceMonitor")
    assert by_kind(render(api_versions=[SERVICE_MONITOR_API]), "ServiceMonitor")
    off = {"metrics": {"serviceMonitor": {"enabled": False}}}
    assert not by_kind(render(off, api_versions=[SERVICE_MONITOR_API]), "ServiceMonitor")
    assert "no ServiceMonitor was created" in notes()


def test_crds_keep_and_install() -> None:
    (kept,) = by_kind(render(), "CustomResourceDefinition")
    assert kept["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert {**kept, "metadata": {**kept["metadata"], "annotations": None}} != kept
    (dropped,) = by_kind(render({"crds": {"keep": False}}), "CustomResourceDefinition")
    assert "annotations" not in dropped["metadata"]
    assert dropped == build_crd()
    assert not by_kind(render({"crds": {"install": False}}), "CustomResourceDefinition")


def test_kubectl_install_has_the_chart_s_rbac() -> None:
    docs = [d for d in yaml.safe_load_all((ROOT / "config" / "operator.yaml").read_text()) if d]
    (plain,) = by_kind(docs, "ClusterRole")
    (charted,) = by_kind(render(), "ClusterRole")
    assert plain["rules"] == charted["rules"]
    (plain_dep,) = by_kind(docs, "Deployment")
    (chart_dep,) = by_kind(render(), "Deployment")
    plain_c = plain_dep["spec"]["template"]["spec"]["containers"][0]
    chart_c = chart_dep["spec"]["template"]["spec"]["containers"][0]
    for key in ("image", "command", "ports", "livenessProbe", "securityContext", "resources"):
        assert plain_c[key] == chart_c[key], key
