"""A restore from the bucket, as the brokers report it, and what the status says of it.

There is nothing to ask for: a new ShazamqCluster whose tiered storage names the bucket and
prefix of an earlier cluster restores from it, because its brokers do (an empty data
directory and a bucket holding a cluster: see docs/tiered-storage.md). The operator follows
the brokers' metrics (read by the roll loop's probe):

- ``shazamq_restore_in_progress``: 1 while the metadata log marks a restore or the broker
  lays partitions out from the bucket;
- ``shazamq_restore_topics`` and ``shazamq_restore_partitions``: the bucket's cluster;
- ``shazamq_restore_partitions_restored_total`` and ``shazamq_restore_bytes_total``:
  counted by each partition's first replica, so the sums over brokers are the cluster's;
- ``shazamq_consumer_groups``: the groups the coordinators hold (summed when it ends).

Pure: `progress_of()` reads one broker's samples, `merge()` the cluster's, and
`restore_status()` turns them and the previous ``status.restore`` into the new one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["RESTORE_METRICS", "RestoreProgress", "merge", "progress_of", "restore_status"]

RESTORE_METRICS = (
    "shazamq_restore_in_progress",
    "shazamq_restore_topics",
    "shazamq_restore_partitions",
    "shazamq_restore_partitions_restored_total",
    "shazamq_restore_bytes_total",
    "shazamq_consumer_groups",
)


@dataclass(frozen=True)
class RestoreProgress:
    """The cluster's restore as `brokers` brokers report it."""

    in_progress: bool
    topics: int = 0
    partitions: int = 0
    restored: int = 0
    bytes: int = 0
    groups: int = 0
    brokers: int = 1


def progress_of(values: Mapping[str, float]) -> RestoreProgress | None:
    """One broker's report (`parse_metrics` of `RESTORE_METRICS`); None when the broker has
    no bucket holding a cluster (no restore gauges)."""
    if "shazamq_restore_in_progress" not in values:
        return None
    return RestoreProgress(
        in_progress=values["shazamq_restore_in_progress"] >= 1,
        topics=int(values.get("shazamq_restore_topics", 0)),
        partitions=int(values.get("shazamq_restore_partitions", 0)),
        restored=int(values.get("shazamq_restore_partitions_restored_total", 0)),
        bytes=int(values.get("shazamq_restore_bytes_total", 0)),
        groups=int(values.get("shazamq_consumer_groups", 0)),
    )


def merge(reports: Iterable[RestoreProgress | None]) -> RestoreProgress | None:
    """The cluster's view: in progress if any broker is; counts summed (each partition is
    counted by one broker), the bucket's totals as the brokers agree on them."""
    known = [r for r in reports if r is not None]
    if not known:
        return None
    return RestoreProgress(
        in_progress=any(r.in_progress for r in known),
        topics=max(r.topics for r in known),
        partitions=max(r.partitions for r in known),
        restored=sum(r.restored for r in known),
        bytes=sum(r.bytes for r in known),
        groups=sum(r.groups for r in known),
        brokers=len(known),
    )


def restore_status(
    previous: Mapping[str, Any] | None,
    observed: RestoreProgress | None,
    *,
    expected_brokers: int,
    now: str,
) -> dict[str, Any] | None:
    """The new ``status.restore`` (a `RestoreStatus` dict), or None when there is none.

    A restore is ``Restoring`` while any broker says so, and ``Restored`` once every
    expected broker reports it is not and partitions were restored; a finished restore is
    kept as it was (brokers restarted later report no count). What cannot be told (no
    report, or some brokers unheard) leaves the previous status as it is.
    """
    prev = dict(previous) if previous else None
    if observed is None:
        return prev
    if observed.in_progress:
        start = (prev or {}).get("startTime") if (prev or {}).get("state") == "Restoring" else None
        return {
            "state": "Restoring",
            "topics": observed.topics,
            "partitions": observed.partitions,
            "partitionsRestored": min(observed.restored, observed.partitions),
            "bytes": observed.bytes,
            "groups": 0,
            "startTime": start or now,
            "completionTime": None,
        }
    finished = observed.restored > 0 and observed.brokers >= expected_brokers
    if finished and (prev is None or prev.get("state") == "Restoring"):
        return {
            "state": "Restored",
            "topics": observed.topics,
            "partitions": observed.partitions,
            "partitionsRestored": min(observed.restored, observed.partitions),
            "bytes": observed.bytes,
            "groups": observed.groups,
            "startTime": (prev or {}).get("startTime"),
            "completionTime": now,
        }
    return prev
