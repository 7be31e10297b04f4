"""What the operator reads from the brokers' metrics: the probe's pure parsers.

The metrics text is the one a broker really exposes (its mirror probe rendered by
prometheus_client), so a renamed metric or label fails here, not in a cluster.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from shazamq.mirror.stats import PartitionStats, SourceStats, probe
from shazamq.operator.probe import merge_mirror_sources, mirror_sources_of, parse_metrics
from shazamq.operator.status import cluster_status


class _Collector:
    def __init__(self, sources: list[SourceStats]) -> None:
        self.sources = sources

    def collect(self):  # prometheus_client calls it at each scrape
        return probe(self.sources)


def exposition(*sources: SourceStats) -> str:
    registry = CollectorRegistry()
    registry.register(_Collector(list(sources)))  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def source(name: str, state: str, lags: dict[tuple[str, int], int]) -> SourceStats:
    s = SourceStats(name=name, state=state)
    for (topic, index), lag in lags.items():
        p = PartitionStats(topic=topic, partition=index)
        p.observe(100, 100 + lag, 0.0)
        s.partitions[(topic, index)] = p
    return s


def test_one_broker_s_mirror_sources_are_read_from_its_metrics() -> None:
    text = exposition(
        source("prod", "connected", {("orders", 0): 5, ("orders", 1): 0}),
        source("dr", "down", {}),
    )
    assert mirror_sources_of(text) == {
        "prod": {"state": "connected", "partitions": 2, "lagRecords": 5},
        "dr": {"state": "down", "partitions": 0, "lagRecords": 0},
    }
    # the unlabelled reader is unaffected by the labelled families
    assert parse_metrics(text + "shazamq_active_controller 1\n", ["shazamq_active_controller"]) == {
        "shazamq_active_controller": 1.0
    }


def test_the_cluster_reports_the_worst_state_and_adds_up_partitions_and_lag() -> None:
    b0 = mirror_sources_of(exposition(source("prod", "connected", {("orders", 0): 3})))
    b1 = mirror_sources_of(exposition(source("prod", "down", {("orders", 1): 4})))
    b2 = mirror_sources_of(exposition())  # a broker mirroring nothing
    assert b2 == {}
    assert merge_mirror_sources([b0, b1, b2]) == [
        {"name": "prod", "state": "down", "brokers": 2, "partitions": 2, "lagRecords": 7}
    ]
    assert merge_mirror_sources([b0]) == [
        {"name": "prod", "state": "connected", "brokers": 1, "partitions": 1, "lagRecords": 3}
    ]


def test_the_status_shows_the_sources_and_keeps_them_when_the_brokers_were_not_read() -> None:
    kw = dict(
        desired_replicas=1,
        selector="app=x",
        brokers=[],
        sts=None,
        outcome=None,
        generation=1,
        now="2026-12-02T00:00:00Z",
    )
    sources = [{"name": "prod", "state": "down", "brokers": 2, "partitions": 2, "lagRecords": 7}]
    status = cluster_status(previous=None, mirror_sources=sources, **kw)  # type: ignore[arg-type]
    assert status["mirrorSources"] == sources
    kept = cluster_status(previous=status, mirror_sources=None, **kw)  # type: ignore[arg-type]
    assert kept["mirrorSources"] == sources
    assert cluster_status(previous=None, **kw)["mirrorSources"] == []  # type: ignore[arg-type]


# -- the autoscaler's load and the restore, from a broker's registry ---------------------------


def test_a_broker_s_load_counters_are_read_from_its_metrics() -> None:
    from prometheus_client.core import GaugeMetricFamily

    from shazamq.broker.metrics import BrokerMetrics
    from shazamq.operator.probe import load_of

    metrics = BrokerMetrics()
    metrics.bytes_in.labels(topic="orders").inc(1000)
    metrics.bytes_in.labels(topic="events").inc(234)

    def hosted():  # the shape of the broker's partition probe
        g = GaugeMetricFamily("shazamq_log_end_offset", "x", labels=["topic", "partition"])
        for i in range(3):
            g.add_metric(["orders", str(i)], 10)
        return [g]

    metrics.add_probe(hosted)
    text = generate_latest(metrics.registry).decode()
    load = load_of(text, broker=2, now=7.0)
    assert (load.broker, load.time, load.bytes_in, load.partitions) == (2, 7.0, 1234.0, 3)
    assert load.cpu_seconds is not None and load.cpu_seconds >= 0  # the process collector
    empty = load_of("", broker=0, now=0.0)
    assert (empty.bytes_in, empty.cpu_seconds, empty.partitions) == (0.0, None, 0)


def test_a_broker_s_restore_report_is_read_from_its_metrics() -> None:
    from shazamq.broker.tier.metrics import TierMetrics
    from shazamq.operator.restore import RESTORE_METRICS, RestoreProgress, merge, progress_of

    registry = CollectorRegistry()
    tier = TierMetrics(registry)
    tier.restored_partitions.inc(4)
    tier.restored_bytes.inc(4096)
    text = generate_latest(registry).decode()
    assert progress_of(parse_metrics(text, RESTORE_METRICS)) is None  # no bucket cluster
    gauges = (
        "shazamq_restore_in_progress 1\nshazamq_restore_topics 2\nshazamq_restore_partitions 6\n"
        'shazamq_consumer_groups{state="Empty"} 3\n'
    )
    one = progress_of(parse_metrics(text + gauges, RESTORE_METRICS))
    assert one == RestoreProgress(
        in_progress=True, topics=2, partitions=6, restored=4, bytes=4096, groups=3
    )
    other = RestoreProgress(in_progress=False, topics=2, partitions=6, restored=2, bytes=10)
    assert merge([one, other, None]) == RestoreProgress(
        in_progress=True, topics=2, partitions=6, restored=6, bytes=4106, groups=3, brokers=2
    )
    assert merge([None]) is None
