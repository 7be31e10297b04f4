"""Every manifest we produce or ship passes kubernetes-validate in strict mode.

Covers: every object rendered for the README's clusters (the cluster secret included) and
for variants that switch on each optional part (GCS, NodePort/LoadBalancer, auth without
TLS, no brokers, one broker, voters and observers); the
kubectl install `config/operator.yaml`; the examples are ShazamqClusters the operator
accepts. Versions: see `operator_support.K8S_VERSIONS`. ServiceMonitor and
PrometheusRule, CRD kinds kubernetes-validate does not know, get
`operator_support.check_service_monitor()` and `check_prometheus_rule()`.
Strictness itself is checked: an unknown field fails.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from operator_support import EXAMPLES, K8S_VERSIONS, ROOT, as_stored, production, validate_manifest

from shazamq.operator.resources import ClusterModel

VARIANTS: dict[str, dict[str, Any]] = {
    "gcs": {
        "tieredStorage": {
            "enabled": True,
            "provider": "gcs",
            "gcs": {"bucket": "bucket-1", "credentialsSecret": "gcp"},
        }
    },
    "node-port": {"service": {"type": "NodePort", "port": 19092, "metricsPort": 19090}},
    "load-balancer": {"service": {"type": "LoadBalancer"}},
    "auth-only": {"security": {"auth": {"enabled": True, "secretName": "users"}}},
    "stopped": {"replicas": 0},
    "one-broker": {"replicas": 1},
    "observers": {"replicas": 5},
    "pull-always": {"imagePullPolicy": "Always", "podAnnotations": {"a": "b"}},
    "all-monitoring": {
        "monitoring": {
            "serviceMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True, "labels": {"release": "prom"}},
            "grafanaDashboard": {"enabled": True, "folder": "Messaging"},
        },
        "tieredStorage": {"enabled": True, "provider": "s3", "s3": {"bucket": "bucket-1"}},
    },
}


def rendered(body: dict[str, Any]) -> list[dict[str, Any]]:
    model = ClusterModel.from_resource(body)
    children = [c.desired for c in model.children() if c.desired is not None]
    return [*children, model.generate_cluster_secret("not-so-random")]


def test_versions_cover_the_floor_and_the_newest() -> None:
    assert len(K8S_VERSIONS) == 2
    assert K8S_VERSIONS[0].startswith("1.24")


def test_every_rendered_object_of_the_readme_clusters_is_valid(readme_cluster: dict) -> None:
    objects = rendered(readme_cluster)
    assert {o["kind"] for o in objects} >= {"ConfigMap", "Secret", "Service", "StatefulSet"}
    for obj in objects:
        validate_manifest(obj)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_object_of_the_variants_is_valid(variant: str) -> None:
    body = as_stored({"metadata": {"name": "variant"}, "spec": VARIANTS[variant]})
    for obj in rendered(body):
        validate_manifest(obj)


def test_strict_validation_catches_unknown_fields() -> None:
    sts = next(o for o in rendered(production()) if o["kind"] == "StatefulSet")
    broken = copy.deepcopy(sts)
    broken["spec"]["template"]["spec"]["containers"][0]["cpuLimit"] = 2
    with pytest.raises(AssertionError, match="cpuLimit"):
        validate_manifest(broken)


def test_kubectl_install_manifest_is_valid() -> None:
    docs = [d for d in yaml.safe_load_all((ROOT / "config" / "operator.yaml").read_text()) if d]
    kinds = [d["kind"] for d in docs]
    assert kinds[0] == "Namespace" and docs[0]["metadata"]["name"] == "shazamq-system"
    assert {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"} <= set(kinds)
    for doc in docs:
        validate_manifest(doc)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["metadata"] == {
        **deployment["metadata"],
        "name": "shazamq-operator",
        "namespace": "shazamq-system",
    }
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "shazamq.operator"]
    account = next(d for d in docs if d["kind"] == "ServiceAccount")
    assert account["metadata"]["name"] == "shazamq-operator"


@pytest.mark.parametrize(
    "name",
    [
        "simple-cluster.yaml",
        "production-cluster.yaml",
        "autoscaling-cluster.yaml",
        "restored-cluster.yaml",
    ],
)
def test_examples_are_accepted_by_the_operator(name: str) -> None:
    doc = yaml.safe_load((EXAMPLES / name).read_text())
    assert doc["apiVersion"] == "shazamq.io/v1alpha1" and doc["kind"] == "ShazamqCluster"
    ClusterModel.from_resource(as_stored(doc))


def test_production_example_has_what_the_readme_promises() -> None:
    spec = yaml.safe_load((EXAMPLES / "production-cluster.yaml").read_text())["spec"]
    assert spec["resources"]["limits"]
    assert spec["tieredStorage"]["provider"] == "s3"
    assert spec["tieredStorage"]["s3"]["credentialsSecret"]
    assert spec["mirror"]["sources"][0]["securityProtocol"] == "SASL_SSL"
    assert spec["security"]["tls"]["enabled"] and spec["security"]["auth"]["enabled"]
    assert spec["affinity"] and spec["tolerations"] and spec["nodeSelector"]
    assert spec["monitoring"]["serviceMonitor"]["enabled"]


def test_the_restore_example_names_the_production_cluster_s_bucket() -> None:
    """The README's restore: a new cluster "with the same tiered storage configuration"
    renders brokers that read the same bucket and prefix."""

    def tiered(name: str) -> Any:
        doc = yaml.safe_load((EXAMPLES / name).read_text())
        return ClusterModel.from_resource(as_stored(doc)).config.tiered_storage

    old, new = tiered("production-cluster.yaml"), tiered("restored-cluster.yaml")
    assert new.enabled and new.provider == old.provider == "s3"
    assert new.s3 is not None and old.s3 is not None
    assert (new.s3.bucket, new.s3.prefix, new.s3.region) == (
        old.s3.bucket,
        old.s3.prefix,
        old.s3.region,
    )


def test_the_autoscaling_example_is_what_the_autoscaler_reads() -> None:
    from shazamq.operator.autoscale import Policy

    doc = yaml.safe_load((EXAMPLES / "autoscaling-cluster.yaml").read_text())
    model = ClusterModel.from_resource(as_stored(doc))
    policy = Policy.from_spec(model.spec.autoscaling, model.spec.resources)
    assert model.spec.autoscaling.enabled
    assert (policy.min_replicas, policy.max_replicas) == (3, 9)
    assert policy.cpu_cores == 2.0  # the request, not the limit
    assert policy.bytes_in_per_second == 50_000_000 and policy.partitions == 2000
