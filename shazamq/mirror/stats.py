"""What the mirror counts, per source and per partition, and its Prometheus probe."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["PartitionStats", "SourceStats", "probe"]


@dataclass(slots=True)
class PartitionStats:
    """One mirrored partition (updated by its fetch session on the event loop)."""

    topic: str  # the local topic
    partition: int
    local_end: int = 0
    source_high_watermark: int = -1
    bytes_copied: int = 0
    batches_copied: int = 0
    errors: int = 0
    jumps: int = 0  # source log start passed our position: offsets skipped
    truncations: int = 0  # source log end fell below ours: our tail removed
    divergences: int = 0  # source log differs at offsets we hold: our tail from there removed
    last_fetch: float = 0.0  # wall clock of the last answered fetch
    caught_up_at: float = field(default_factory=time.time)  # last time lag was zero

    @property
    def lag(self) -> int:
        if self.source_high_watermark < 0:
            return 0
        return max(self.source_high_watermark - self.local_end, 0)

    def observe(self, local_end: int, source_high_watermark: int, now: float) -> None:
        self.local_end = local_end
        self.source_high_watermark = source_high_watermark
        self.last_fetch = now
        if self.lag == 0:
            self.caught_up_at = now

    def lag_seconds(self, now: float) -> float:
        return 0.0 if self.lag == 0 else max(now - self.caught_up_at, 0.0)


@dataclass(slots=True)
class SourceStats:
    """One source cluster."""

    name: str
    state: str = "starting"  # starting, connected, down, stopped
    error: str = ""
    connect_errors: int = 0
    last_metadata: float = 0.0
    groups_synced: int = 0
    offsets_synced: int = 0
    # transactions left open by the source in promoted partitions, aborted here
    promotion_aborts: int = 0
    partitions: dict[tuple[str, int], PartitionStats] = field(default_factory=dict)


STATES = ("starting", "connected", "down", "stopped")


def probe(sources: Iterable[SourceStats]) -> list[Metric]:
    """Scrape-time metric families of every source and partition."""
    now = time.time()
    state = GaugeMetricFamily(
        "shazamq_mirror_source_state",
        "1 for the state each mirror source is in.",
        labels=["source", "state"],
    )
    conn_err = CounterMetricFamily(
        "shazamq_mirror_source_connect_errors",
        "Failed attempts to reach the source.",
        labels=["source"],
    )
    offsets = CounterMetricFamily(
        "shazamq_mirror_group_offsets_synced",
        "Committed group offsets copied from the source.",
        labels=["source"],
    )
    aborts = CounterMetricFamily(
        "shazamq_mirror_promotion_aborts",
        "Source transactions still open when their partition was promoted, aborted here.",
        labels=["source"],
    )
    pl = ["source", "topic", "partition"]
    lag = GaugeMetricFamily(
        "shazamq_mirror_lag_offsets", "Source high watermark - local end.", labels=pl
    )
    lag_s = GaugeMetricFamily(
        "shazamq_mirror_lag_seconds", "Seconds since the copy was last caught up.", labels=pl
    )
    copied = CounterMetricFamily(
        "shazamq_mirror_bytes_copied", "Record batch bytes copied.", labels=pl
    )
    batches = CounterMetricFamily(
        "shazamq_mirror_batches_copied", "Record batches copied.", labels=pl
    )
    errors = CounterMetricFamily("shazamq_mirror_errors", "Fetch and append errors.", labels=pl)
    jumps = CounterMetricFamily(
        "shazamq_mirror_offset_jumps",
        "Times the source's log start passed the copy's position (offsets lost at the source).",
        labels=pl,
    )
    truncs = CounterMetricFamily(
        "shazamq_mirror_truncations",
        "Times the source's log end fell below the copy's (the copy's tail was removed).",
        labels=pl,
    )
    diverged = CounterMetricFamily(
        "shazamq_mirror_divergences",
        "Times the source's log differed from the copy at offsets already copied (found by "
        "leader epochs; the copy was cut back to where both agree).",
        labels=pl,
    )
    last = GaugeMetricFamily(
        "shazamq_mirror_last_fetch_timestamp_seconds", "Time of the last answered fetch.", labels=pl
    )
    for s in sources:
        for st in STATES:
            state.add_metric([s.name, st], 1.0 if s.state == st else 0.0)
        conn_err.add_metric([s.name], s.connect_errors)
        offsets.add_metric([s.name], s.offsets_synced)
        aborts.add_metric([s.name], s.promotion_aborts)
        for p in list(s.partitions.values()):
            labels = [s.name, p.topic, str(p.partition)]
            lag.add_metric(labels, p.lag)
            lag_s.add_metric(labels, p.lag_seconds(now))
            copied.add_metric(labels, p.bytes_copied)
            batches.add_metric(labels, p.batches_copied)
            errors.add_metric(labels, p.errors)
            jumps.add_metric(labels, p.jumps)
            truncs.add_metric(labels, p.truncations)
            diverged.add_metric(labels, p.divergences)
            last.add_metric(labels, p.last_fetch)
    return [
        state,
        conn_err,
        offsets,
        aborts,
        lag,
        lag_s,
        copied,
        batches,
        errors,
        jumps,
        truncs,
        diverged,
        last,
    ]
