"""Monitoring objects of a ShazamqCluster: the PrometheusRule and the Grafana dashboard.

Covers: each object is optional (off by default, on with its `enabled`, none with
`monitoring.enabled: false`); the rule's alerts (offline, under-replicated, under min ISR,
controller absent, consumer lag, disk usage and filling, tiering lag with tiered storage
only) with the spec's thresholds and the cluster's selector; every `shazamq_*` metric an
expression or a panel reads is one the broker really exports (found in its sources, with
the `_total`/`_bucket` suffixes of counters and histograms); the expressions are balanced;
the dashboard is JSON with unique panel ids and the sidecar's label; both objects pass the
manifest checks.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from operator_support import ROOT, as_stored, production, validate_manifest

from shazamq.operator.resources import ClusterModel


def body(**monitoring: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"monitoring": monitoring}
    return as_stored({"metadata": {"name": "m1", "namespace": "ns1"}, "spec": spec})


def model(b: dict[str, Any]) -> ClusterModel:
    return ClusterModel.from_resource(b)


def exported_metrics() -> set[str]:
    """Every metric family name the broker's sources name (a string literal
    ``"shazamq_..."`` outside the operator), with the suffixes prometheus-client adds to
    counters (``_total``) and histograms (``_bucket``, ``_sum``, ``_count``). Lax about the
    kind (a gauge's name with ``_total`` passes), strict about the name."""
    names: set[str] = set()
    pattern = re.compile(r'"(shazamq_[a-z_]+)"')
    for path in (ROOT / "shazamq").rglob("*.py"):
        if "operator" in path.parts:
            continue
        for name in pattern.findall(path.read_text()):
            names |= {name, *(f"{name}_{s}" for s in ("total", "bucket", "sum", "count"))}
    return names


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(shazamq_[a-z_]+)\b", expr))


def balanced(expr: str) -> bool:
    depth: list[str] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    quoted = False
    for ch in expr:
        if ch == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif ch in "([{":
            depth.append(ch)
        elif ch in pairs and (not depth or depth.pop() != pairs[ch]):
            return False
    return not depth and not quoted


def rules_of(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (group,) = obj["spec"]["groups"]
    return {r["alert"]: r for r in group["rules"]}


def test_monitoring_objects_are_off_by_default() -> None:
    m = model(body())
    assert m.generate_prometheus_rule() is None
    assert m.generate_grafana_dashboard() is None
    assert {c.kind for c in m.children() if c.desired is not None} == {
        "ConfigMap",
        "Service",
        "StatefulSet",
        "PodDisruptionBudget",
    }


def test_monitoring_enabled_false_turns_every_monitoring_object_off() -> None:
    m = model(
        body(
            enabled=False,
            serviceMonitor={"enabled": True},
            prometheusRule={"enabled": True},
            grafanaDashboard={"enabled": True},
        )
    )
    assert m.generate_service_monitor() is None
    assert m.generate_prometheus_rule() is None
    assert m.generate_grafana_dashboard() is None


def test_prometheus_rule_has_the_alerts_of_the_issue() -> None:
    m = model(body(prometheusRule={"enabled": True, "labels": {"release": "prom"}}))
    rule = m.generate_prometheus_rule()
    assert rule is not None
    validate_manifest(rule)
    assert rule["metadata"]["name"] == "m1" and rule["metadata"]["namespace"] == "ns1"
    assert rule["metadata"]["labels"]["release"] == "prom"
    assert rule["metadata"]["labels"]["app.kubernetes.io/instance"] == "m1"
    assert rule["metadata"]["ownerReferences"][0]["kind"] == "ShazamqCluster"
    rules = rules_of(rule)
    assert set(rules) == {
        "ShazamqOfflinePartitions",
        "ShazamqUnderReplicatedPartitions",
        "ShazamqUnderMinIsrPartitions",
        "ShazamqActiveControllerAbsent",
        "ShazamqConsumerLag",
        "ShazamqDiskUsageHigh",
        "ShazamqDiskFillingUp",
    }
    sel = 'namespace="ns1",pod=~"m1-[0-9]+"'
    assert rules["ShazamqOfflinePartitions"]["expr"] == (
        f"max(shazamq_offline_partitions{{{sel}}}) > 0"
    )
    assert rules["ShazamqConsumerLag"]["expr"].endswith("> 10000")
    assert 'persistentvolumeclaim=~"data-m1-[0-9]+"' in rules["ShazamqDiskUsageHigh"]["expr"]
    assert rules["ShazamqDiskUsageHigh"]["expr"].endswith("> 85")
    assert rules["ShazamqUnderMinIsrPartitions"]["labels"]["severity"] == "critical"
    for r in rules.values():
        assert r["labels"]["shazamq_cluster"] == "m1"
        assert r["annotations"]["summary"] and r["annotations"]["description"]


def test_prometheus_rule_thresholds_and_tiering() -> None:
    b = body(
        prometheusRule={
            "enabled": True,
            "consumerLagThreshold": 5,
            "diskUsageThresholdPercent": 70,
            "tieringLagThresholdSeconds": 120,
        }
    )
    b["spec"]["tieredStorage"] = {"enabled": True, "provider": "s3", "s3": {"bucket": "bucket-1"}}
    rules = rules_of(model(b).generate_prometheus_rule() or {})
    assert rules["ShazamqConsumerLag"]["expr"].endswith("> 5")
    assert rules["ShazamqDiskUsageHigh"]["expr"].endswith("> 70")
    assert rules["ShazamqTieringLag"]["expr"].endswith("> 120")
    assert "shazamq_tier_bucket_reachable" in rules["ShazamqBucketUnreachable"]["expr"]
    refused = rules["ShazamqBucketRefused"]
    assert refused["expr"].startswith("max(shazamq_tier_bucket_refused{")
    assert refused["labels"]["severity"] == "critical"


def test_no_controller_alert_for_a_cluster_of_no_brokers() -> None:
    b = body(prometheusRule={"enabled": True})
    b["spec"]["replicas"] = 0
    assert "ShazamqActiveControllerAbsent" not in rules_of(model(b).generate_prometheus_rule())


@pytest.mark.parametrize("threshold", [0, 100])
def test_disk_threshold_is_a_percentage(threshold: int) -> None:
    with pytest.raises(ValueError, match=r"spec\.monitoring\.prometheusRule\.diskUsage"):
        model(body(prometheusRule={"enabled": True, "diskUsageThresholdPercent": threshold}))


def tiered_everything() -> ClusterModel:
    b = body(
        prometheusRule={"enabled": True},
        grafanaDashboard={"enabled": True, "folder": "Messaging"},
    )
    b["spec"]["tieredStorage"] = {"enabled": True, "provider": "s3", "s3": {"bucket": "bucket-1"}}
    return model(b)


def test_every_expression_reads_metrics_the_broker_exports() -> None:
    exported = exported_metrics()
    assert {"shazamq_requests_total", "shazamq_active_controller"} <= exported  # sanity
    m = tiered_everything()
    exprs = [r["expr"] for r in rules_of(m.generate_prometheus_rule() or {}).values()]
    board = json.loads(next(iter((m.generate_grafana_dashboard() or {})["data"].values())))
    exprs += [t["expr"] for p in board["panels"] for t in p["targets"]]
    read: set[str] = set()
    for expr in exprs:
        assert balanced(expr), expr
        read |= metric_names(expr)
    assert read, "no shazamq metric is read"
    assert read <= exported, f"not exported by the broker: {sorted(read - exported)}"


def test_grafana_dashboard_config_map() -> None:
    m = tiered_everything()
    cm = m.generate_grafana_dashboard()
    assert cm is not None
    validate_manifest(cm)
    assert cm["metadata"]["name"] == "m1-grafana-dashboard"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Messaging"}
    ((key, text),) = cm["data"].items()
    assert key.endswith(".json")
    board = json.loads(text)
    assert board["title"] == "Shazamq ns1/m1"
    assert len(board["uid"]) <= 40
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["targets"] and set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
    titles = {p["title"] for p in board["panels"]}
    assert "Consumer group lag" in titles and any("Tiering" in t for t in titles)
    # the same resource renders the same text (no churn on every reconciliation)
    assert tiered_everything().generate_grafana_dashboard() == cm


def test_dashboard_labels_replace_the_sidecar_default() -> None:
    cm = model(body(grafanaDashboard={"enabled": True, "labels": {"dash": "yes"}}))
    labels = cm.generate_grafana_dashboard()["metadata"]["labels"]
    assert labels["dash"] == "yes" and "grafana_dashboard" not in labels


def test_production_example_renders_all_three() -> None:
    m = model(production())
    kinds = {(c.kind, c.name) for c in m.children() if c.desired is not None}
    assert ("ServiceMonitor", "production-cluster") in kinds
    assert ("PrometheusRule", "production-cluster") in kinds
    assert ("ConfigMap", "production-cluster-grafana-dashboard") in kinds
