"""What a cluster's alerts and dashboard say: pure functions of its name, namespace and spec.

`resources.ClusterModel` wraps them into objects (a PrometheusRule, a dashboard ConfigMap).
Every expression reads the metrics the brokers export (``shazamq.broker.metrics``, the
cluster node's replication probe, the tier's and the consumer groups' probes), selected by
the cluster's namespace and its pods' names, which is how the Prometheus Operator labels
what a ServiceMonitor scrapes (``namespace``, ``pod``) and how the usual pod scrape
configurations do too. Disk usage is the kubelet's volume statistics of the brokers' claims
(``data-<name>-<ordinal>``): the broker does not measure its file system.

Where a metric is reported:

- ``shazamq_offline_partitions``: by every broker, for the whole cluster (max, not sum);
- ``shazamq_under_replicated_partitions`` and ``shazamq_under_min_isr_partitions``: by each
  partition's leader (sum over brokers);
- ``shazamq_active_controller``: 1 on the metadata quorum's leader only (sum is 1);
- ``shazamq_consumer_group_lag``: by each group's coordinator, per partition;
- ``shazamq_tier_upload_lag_seconds``: by each partition's leader, with tiered storage.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["alert_rules", "dashboard"]

DAY = 24 * 3600


def _selector(name: str, namespace: str) -> str:
    return f'namespace="{namespace}",pod=~"{name}-[0-9]+"'


def _volume_selector(name: str, namespace: str) -> str:
    return f'namespace="{namespace}",persistentvolumeclaim=~"data-{name}-[0-9]+"'


def _alert(
    alert: str, expr: str, for_: str, severity: str, summary: str, description: str, cluster: str
) -> dict[str, Any]:
    return {
        "alert": alert,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity, "shazamq_cluster": cluster},
        "annotations": {"summary": summary, "description": description},
    }


def alert_rules(
    name: str, namespace: str, *, rule: Any, replicas: int, tiered: bool
) -> list[dict[str, Any]]:
    """The alerting rules of the cluster `name` (`rule`: its PrometheusRuleSpec)."""
    sel = _selector(name, namespace)
    vol = _volume_selector(name, namespace)
    where = f"{namespace}/{name}"
    rules = [
        _alert(
            "ShazamqOfflinePartitions",
            f"max(shazamq_offline_partitions{{{sel}}}) > 0",
            "1m",
            "critical",
            f"Shazamq cluster {where} has partitions without a leader",
            "{{ $value }} partitions have no leader: they can be neither written nor read.",
            name,
        ),
        _alert(
            "ShazamqUnderReplicatedPartitions",
            f"sum(shazamq_under_replicated_partitions{{{sel}}}) > 0",
            "10m",
            "warning",
            f"Shazamq cluster {where} has under-replicated partitions",
            "{{ $value }} partitions have fewer in-sync replicas than replicas for 10 "
            "minutes (a broker is down or cannot keep up).",
            name,
        ),
        _alert(
            "ShazamqUnderMinIsrPartitions",
            f"sum(shazamq_under_min_isr_partitions{{{sel}}}) > 0",
            "1m",
            "critical",
            f"Shazamq cluster {where} has partitions below min.insync.replicas",
            "{{ $value }} partitions have fewer in-sync replicas than min.insync.replicas: "
            "producers with acks=all get NOT_ENOUGH_REPLICAS.",
            name,
        ),
    ]
    if replicas > 0:  # a cluster scaled to nothing has no controller on purpose
        rules.append(
            _alert(
                "ShazamqActiveControllerAbsent",
                f"(sum(shazamq_active_controller{{{sel}}}) or vector(0)) != 1",
                "2m",
                "critical",
                f"Shazamq cluster {where} has no active controller (or several)",
                "{{ $value }} brokers report being the active controller: metadata changes "
                "(topics, leaders, in-sync replicas) cannot be made.",
                name,
            )
        )
    rules += [
        _alert(
            "ShazamqConsumerLag",
            f"sum by (group, topic) (shazamq_consumer_group_lag{{{sel}}}) "
            f"> {rule.consumer_lag_threshold}",
            "15m",
            "warning",
            "Consumer group {{ $labels.group }} lags on {{ $labels.topic }}",
            f"The group is {{{{ $value }}}} records behind on the topic in {where} "
            f"(threshold {rule.consumer_lag_threshold}) for 15 minutes.",
            name,
        ),
        _alert(
            "ShazamqDiskUsageHigh",
            f"100 * (1 - kubelet_volume_stats_available_bytes{{{vol}}} "
            f"/ kubelet_volume_stats_capacity_bytes{{{vol}}}) "
            f"> {rule.disk_usage_threshold_percent}",
            "5m",
            "warning",
            "Broker volume {{ $labels.persistentvolumeclaim }} is "
            f"over {rule.disk_usage_threshold_percent}% full",
            f"{{{{ $value }}}}% of the volume is used (cluster {where}). Lower retention, "
            "enable tiered storage or grow the volume.",
            name,
        ),
        _alert(
            "ShazamqDiskFillingUp",
            f"predict_linear(kubelet_volume_stats_available_bytes{{{vol}}}[6h], {DAY}) < 0",
            "1h",
            "warning",
            "Broker volume {{ $labels.persistentvolumeclaim }} fills up within a day",
            f"At the rate of the last 6 hours the volume of cluster {where} is full within "
            "24 hours.",
            name,
        ),
    ]
    if tiered:
        rules += [
            _alert(
                "ShazamqTieringLag",
                f"max by (topic, partition) (shazamq_tier_upload_lag_seconds{{{sel}}}) "
                f"> {rule.tiering_lag_threshold_seconds}",
                "5m",
                "warning",
                "{{ $labels.topic }}-{{ $labels.partition }} is not uploaded to the bucket",
                f"The bucket has lacked part of the partition for {{{{ $value }}}} seconds "
                f"(cluster {where}, threshold {rule.tiering_lag_threshold_seconds}): local "
                "data is kept until it is uploaded, so the disk fills.",
                name,
            ),
            _alert(
                "ShazamqBucketUnreachable",
                f"min(shazamq_tier_bucket_reachable{{{sel}}}) == 0",
                "5m",
                "warning",
                f"A broker of {where} cannot upload to the tiered storage bucket",
                "Uploads fail; reads stay local and local data is kept until they succeed.",
                name,
            ),
            _alert(
                "ShazamqBucketRefused",
                f"max(shazamq_tier_bucket_refused{{{sel}}}) == 1",
                "1m",
                "critical",
                f"A broker of {where} leaves its tiered storage bucket alone",
                "The bucket's cluster document names another cluster: the broker uploads, "
                "reads and deletes nothing there, and its tiered topics keep all their data "
                "on disk. Point it at this cluster's bucket and prefix.",
                name,
            ),
        ]
    return rules


# -- the dashboard ------------------------------------------------------------------------------


def _panel(
    panel_id: int,
    title: str,
    kind: str,
    targets: list[tuple[str, str]],
    grid: tuple[int, int, int, int],
    unit: str = "short",
) -> dict[str, Any]:
    x, y, w, h = grid
    return {
        "id": panel_id,
        "title": title,
        "type": kind,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "expr": expr,
                "legendFormat": legend,
            }
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def dashboard(name: str, namespace: str, *, uid: str, tiered: bool) -> dict[str, Any]:
    """The Grafana dashboard (JSON model) of the cluster `name`; `uid` is its stable uid."""
    sel = _selector(name, namespace)
    vol = _volume_selector(name, namespace)
    stats: list[tuple[str, str, str]] = [
        ("Brokers up", f"sum(up{{{sel}}})", "short"),
        ("Active controller", f"max by (pod) (shazamq_active_controller{{{sel}}}) > 0", "short"),
        ("Offline partitions", f"max(shazamq_offline_partitions{{{sel}}})", "short"),
        (
            "Under-replicated partitions",
            f"sum(shazamq_under_replicated_partitions{{{sel}}})",
            "short",
        ),
        ("Under min ISR", f"sum(shazamq_under_min_isr_partitions{{{sel}}})", "short"),
        ("Connections", f"sum(shazamq_connections{{{sel}}})", "short"),
    ]
    panels: list[dict[str, Any]] = []
    for i, (title, expr, unit) in enumerate(stats):
        legend = "{{pod}}" if "by (pod)" in expr else title
        panels.append(_panel(i + 1, title, "stat", [(expr, legend)], (4 * i, 0, 4, 4), unit))
    series: list[tuple[str, list[tuple[str, str]], str]] = [
        (
            "Bytes in / out per second",
            [
                (f"sum(rate(shazamq_topic_bytes_in_total{{{sel}}}[5m]))", "in"),
                (f"sum(rate(shazamq_topic_bytes_out_total{{{sel}}}[5m]))", "out"),
            ],
            "Bps",
        ),
        (
            "Records in per second, by topic",
            [
                (
                    f"sum by (topic) (rate(shazamq_topic_messages_in_total{{{sel}}}[5m]))",
                    "{{topic}}",
                )
            ],
            "short",
        ),
        (
            "Requests per second, by API",
            [(f"sum by (api) (rate(shazamq_requests_total{{{sel}}}[5m]))", "{{api}}")],
            "reqps",
        ),
        (
            "Request latency p99, by API",
            [
                (
                    "histogram_quantile(0.99, sum by (api, le) "
                    f"(rate(shazamq_request_latency_seconds_bucket{{{sel}}}[5m])))",
                    "{{api}}",
                )
            ],
            "s",
        ),
        (
            "Request errors per second, by error",
            [
                (
                    f"sum by (api, error) (rate(shazamq_request_errors_total{{{sel}}}[5m]))",
                    "{{api}} {{error}}",
                )
            ],
            "short",
        ),
        (
            "Consumer group lag",
            [(f"sum by (group) (shazamq_consumer_group_lag{{{sel}}})", "{{group}}")],
            "short",
        ),
        (
            "Partition leaders, by broker",
            [(f"sum by (pod) (shazamq_leader_partitions{{{sel}}})", "{{pod}}")],
            "short",
        ),
        (
            "Log size on disk, by broker",
            [(f"sum by (pod) (shazamq_log_size_bytes{{{sel}}})", "{{pod}}")],
            "bytes",
        ),
        (
            "Volume available, by broker",
            [
                (
                    f"kubelet_volume_stats_available_bytes{{{vol}}}",
                    "{{persistentvolumeclaim}}",
                )
            ],
            "bytes",
        ),
        (
            "ISR shrinks / expands per second",
            [
                (f"sum(rate(shazamq_isr_shrinks_total{{{sel}}}[5m]))", "shrinks"),
                (f"sum(rate(shazamq_isr_expands_total{{{sel}}}[5m]))", "expands"),
            ],
            "short",
        ),
    ]
    if tiered:
        series += [
            (
                "Tiering: upload lag (seconds), worst partition",
                [(f"max(shazamq_tier_upload_lag_seconds{{{sel}}})", "lag")],
                "s",
            ),
            (
                "Tiering: bytes uploaded per second",
                [(f"sum(rate(shazamq_tier_uploaded_bytes_total{{{sel}}}[5m]))", "uploaded")],
                "Bps",
            ),
        ]
    first = len(panels) + 1
    for i, (title, targets, unit) in enumerate(series):
        grid = (12 * (i % 2), 4 + 8 * (i // 2), 12, 8)
        panels.append(_panel(first + i, title, "timeseries", targets, grid, unit))
    return {
        "uid": uid,
        "title": f"Shazamq {namespace}/{name}",
        "tags": ["shazamq"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                }
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def dashboard_json(name: str, namespace: str, *, uid: str, tiered: bool) -> str:
    """`dashboard()` as the text the ConfigMap holds (stable key order)."""
    return json.dumps(dashboard(name, namespace, uid=uid, tiered=tiered), indent=2, sort_keys=True)
