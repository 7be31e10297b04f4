"""Helpers of the operator tests: the README's clusters and the manifest checks.

- ``readme_clusters``: the clusters of the operator's README (the Quick Start's
  ``my-cluster``, the basic ``simple-cluster`` and ``examples/production-cluster.yaml``),
  as the API server would return them (namespace and uid filled in).
- ``validate_manifest()``: kubernetes-validate in strict mode against Kubernetes 1.24 (the
  support floor) and the newest version the installed kubernetes-validate knows. The
  test extra pins kubernetes-validate to the 1.33 line, the newest that still ships the
  1.24 schemas. ServiceMonitor and PrometheusRule are CRD kinds it does not know: their
  shape is checked by `check_service_monitor()` and `check_prometheus_rule()` instead.
"""

from __future__ import annotations

import copy
import re
import uuid
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from kubernetes_validate import utils as kv_utils

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CHART = ROOT / "helm" / "shazamq-operator"

QUICK_START = """
apiVersion: shazamq.io/v1alpha1
kind: ShazamqCluster
metadata:
  name: my-cluster
  namespace: messaging
spec:
  replicas: 3
  version: "0.1.0-rc1"
  storage:
    volumeClaimTemplate:
      spec:
        accessModes:
          - ReadWriteOnce
        resources:
          requests:
            storage: 100Gi
"""

BASIC = """
apiVersion: shazamq.io/v1alpha1
kind: ShazamqCluster
metadata:
  name: simple-cluster
spec:
  replicas: 3
  version: "0.1.0-rc1"
"""


# A cluster written for the original operator's CRD (shazamq.io/v1alpha1): every field its
# schema had, with the shapes it documented (security.enabled, monitoring.enabled,
# imagePullSecrets, service.annotations, the free-form config section, ...).
ORIGINAL = """
apiVersion: shazamq.io/v1alpha1
kind: ShazamqCluster
metadata:
  name: original-cluster
  namespace: messaging
spec:
  replicas: 3
  version: "0.1.0-rc1"
  image: shazamq/shazamq
  imagePullPolicy: IfNotPresent
  imagePullSecrets:
    - name: registry-credentials
  storage:
    volumeClaimTemplate:
      spec:
        accessModes: [ReadWriteOnce]
        resources:
          requests:
            storage: 100Gi
        storageClassName: standard
    segmentBytes: 1073741824
    retentionHours: 168
    retentionBytes: 107374182400
  tieredStorage:
    enabled: true
    provider: s3
    hotTierRetentionHours: 24
    s3:
      bucket: shazamq-data
      region: us-east-1
      endpoint: https://s3.example.com
      prefix: prod/shazamq
      credentialsSecret: aws-credentials
  mirror:
    enabled: true
    sources:
      - name: kafka-prod
        bootstrapServers: "kafka-1:9092,kafka-2:9092"
        securityProtocol: SASL_SSL
        saslMechanism: SCRAM-SHA-512
        credentialsSecret: kafka-credentials
        topicWhitelist: ["orders.*"]
        topicBlacklist: ["orders.internal.*"]
        consumerGroupId: shazamq-mirror
        numConsumers: 4
        exactlyOnce: true
  replication:
    defaultReplicationFactor: 3
    minInsyncReplicas: 2
  resources:
    requests: {cpu: "1000m", memory: "2Gi"}
    limits: {cpu: "4000m", memory: "8Gi"}
  podAnnotations:
    example.com/team: messaging
  podLabels:
    team: messaging
  nodeSelector:
    workload: messaging
  tolerations:
    - key: messaging
      operator: Equal
      value: "true"
      effect: NoSchedule
      tolerationSeconds: 60
  affinity:
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          podAffinityTerm:
            labelSelector:
              matchLabels: {app: shazamq}
            topologyKey: kubernetes.io/hostname
  service:
    type: LoadBalancer
    port: 9092
    metricsPort: 9090
    annotations:
      service.beta.kubernetes.io/aws-load-balancer-internal: "true"
  security:
    enabled: true
    tls:
      enabled: true
      secretName: shazamq-tls
    auth:
      enabled: true
      mechanism: SCRAM-SHA-512
      secretName: shazamq-users
  monitoring:
    enabled: true
    serviceMonitor:
      enabled: true
      interval: 30s
      scrapeTimeout: 10s
  config:
    broker:
      default_partitions: 6
    groups:
      max_session_timeout_ms: 600000
"""


def _versions() -> list[str]:
    known = kubernetes_validate.utils.all_versions()
    floor = [v for v in known if kv_utils.major_minor(v) == "1.24"]
    if not floor:
        raise RuntimeError(
            f"kubernetes-validate {kubernetes_validate.__version__} has no Kubernetes 1.24 "
            "schemas; install the version pinned in pyproject.toml"
        )
    return sorted({floor[0], known[-1]})


K8S_VERSIONS = _versions()


def as_stored(doc: dict[str, Any], namespace: str = "messaging") -> dict[str, Any]:
    """A resource as the API returns it: with a namespace, a uid and a generation."""
    body = copy.deepcopy(doc)
    meta = body.setdefault("metadata", {})
    meta.setdefault("namespace", namespace)
    meta.setdefault("uid", str(uuid.uuid5(uuid.NAMESPACE_DNS, meta["name"])))
    meta.setdefault("generation", 1)
    return body


def load_yaml(text: str) -> dict[str, Any]:
    return yaml.safe_load(text)


def quick_start() -> dict[str, Any]:
    return as_stored(load_yaml(QUICK_START))


def basic() -> dict[str, Any]:
    return as_stored(load_yaml(BASIC))


def production() -> dict[str, Any]:
    return as_stored(load_yaml((EXAMPLES / "production-cluster.yaml").read_text()))


def original() -> dict[str, Any]:
    return as_stored(load_yaml(ORIGINAL))


def simple_example() -> dict[str, Any]:
    return as_stored(load_yaml((EXAMPLES / "simple-cluster.yaml").read_text()))


def autoscaling_example() -> dict[str, Any]:
    return as_stored(load_yaml((EXAMPLES / "autoscaling-cluster.yaml").read_text()))


def restored_example() -> dict[str, Any]:
    return as_stored(load_yaml((EXAMPLES / "restored-cluster.yaml").read_text()))


README_CLUSTERS = {
    "quick-start": quick_start,
    "basic": basic,
    "simple-example": simple_example,
    "production": production,
    "original-crd": original,
    "autoscaling-example": autoscaling_example,
    "restored-example": restored_example,
}


def check_service_monitor(obj: dict[str, Any]) -> None:
    """Our own check of the ServiceMonitor kind (monitoring.coreos.com/v1), which
    kubernetes-validate does not know: the fields Prometheus Operator requires and the
    ones we set, with their types."""
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    assert obj["kind"] == "ServiceMonitor"
    assert set(obj) <= {"apiVersion", "kind", "metadata", "spec"}
    assert obj["metadata"]["name"]
    spec = obj["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    assert isinstance(spec["selector"]["matchLabels"], dict) and spec["selector"]["matchLabels"]
    assert all(isinstance(v, str) for v in spec["selector"]["matchLabels"].values())
    assert isinstance(spec["namespaceSelector"]["matchNames"], list)
    assert spec["endpoints"], "a ServiceMonitor needs at least one endpoint"
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert isinstance(endpoint["port"], str)
        for key in ("interval", "scrapeTimeout"):
            if key in endpoint:
                assert isinstance(endpoint[key], str)


_PROM_DURATION = re.compile(
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def check_prometheus_rule(obj: dict[str, Any]) -> None:
    """Our own check of the PrometheusRule kind (monitoring.coreos.com/v1), which
    kubernetes-validate does not know: the structure of the Prometheus Operator's schema
    (groups of named rules; each an alert or a recording rule with an expression, a
    duration, string labels and annotations), unique group and alert names."""
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    assert obj["kind"] == "PrometheusRule"
    assert set(obj) <= {"apiVersion", "kind", "metadata", "spec"}
    assert obj["metadata"]["name"]
    assert all(isinstance(v, str) for v in obj["metadata"]["labels"].values())
    spec = obj["spec"]
    assert set(spec) == {"groups"}
    names = [g["name"] for g in spec["groups"]]
    assert names and len(set(names)) == len(names)
    for group in spec["groups"]:
        assert set(group) <= {"name", "interval", "rules", "partial_response_strategy", "limit"}
        assert isinstance(group["name"], str) and group["name"]
        alerts = [r["alert"] for r in group["rules"] if "alert" in r]
        assert len(set(alerts)) == len(alerts), "alert names repeat in a group"
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}
            assert ("alert" in rule) != ("record" in rule)
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            if "for" in rule:
                assert _PROM_DURATION.match(rule["for"]), rule["for"]
            for key in ("labels", "annotations"):
                for k, v in (rule.get(key) or {}).items():
                    assert _LABEL_NAME.match(k) and isinstance(v, str), (key, k, v)


def validate_manifest(obj: dict[str, Any]) -> None:
    """Strict kubernetes-validate on every version of K8S_VERSIONS (see the module doc)."""
    if obj.get("kind") == "ServiceMonitor":
        check_service_monitor(obj)
        return
    if obj.get("kind") == "PrometheusRule":
        check_prometheus_rule(obj)
        return
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            name = obj.get("metadata", {}).get("name")
            raise AssertionError(
                f"{obj.get('kind')} {name} invalid for Kubernetes {version} at {where}: "
                f"{exc.message}"
            ) from None


# -- the Kubernetes emulator --------------------------------------------------------------------

CLUSTERS = "shazamq.io/v1alpha1/shazamqclusters"
MONITORS = "monitoring.coreos.com/v1/servicemonitors"
RULES = "monitoring.coreos.com/v1/prometheusrules"


def write_kubeconfig(path: Path, server: str) -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "kmock",
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
                "clusters": [{"name": "kmock", "cluster": {"server": server}}],
                "users": [{"name": "kmock", "user": {"token": "test-token"}}],
            }
        )
    )


def prepare_emulator(emulator: Any, tmp_path: Path) -> Path:
    """Serve the built-in kinds, ShazamqClusters, ServiceMonitors and PrometheusRules; return a
    kubeconfig."""
    import kmock

    emulator.resources.load_bundled()
    emulator.resources[CLUSTERS] = kmock.ResourceInfo(
        kind="ShazamqCluster",
        singular="shazamqcluster",
        namespaced=True,
        shortnames=["sqc"],
        verbs=["get", "list", "watch", "create", "update", "patch", "delete"],
        subresources=["status", "scale"],
    )
    emulator.resources[MONITORS] = kmock.ResourceInfo(
        kind="ServiceMonitor", namespaced=True, verbs=["get", "list", "create", "patch", "delete"]
    )
    emulator.resources[RULES] = kmock.ResourceInfo(
        kind="PrometheusRule", namespaced=True, verbs=["get", "list", "create", "patch", "delete"]
    )
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, str(emulator.url).rstrip("/"))
    return kubeconfig
