"""The tier's metrics, registered on the broker's registry by the manager."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class TierMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.bytes_uploaded = Counter(
            "shazamq_tier_uploaded_bytes", "Bytes written to the bucket.", registry=r
        )
        self.segments_uploaded = Counter(
            "shazamq_tier_uploaded_segments", "Segments referenced by a manifest.", registry=r
        )
        self.bytes_deleted = Counter(
            "shazamq_tier_deleted_bytes", "Segment bytes deleted from the bucket.", registry=r
        )
        self.errors = Counter(
            "shazamq_tier_errors", "Failed object store requests, by kind.", ["kind"], registry=r
        )
        self.fenced_uploaders = Counter(
            "shazamq_tier_fenced_uploaders",
            "Partition uploaders stopped because the bucket's manifest came from a newer leader.",
            registry=r,
        )
        self.remote_fetch_latency = Histogram(
            "shazamq_tier_remote_fetch_seconds",
            "Time to answer a read of the remote tier.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.remote_fetch_bytes = Counter(
            "shazamq_tier_remote_fetch_bytes", "Bytes served from the remote tier.", registry=r
        )
        self.cache_hits = Counter(
            "shazamq_tier_cache_hits", "Remote chunk reads served by the local cache.", registry=r
        )
        self.cache_misses = Counter(
            "shazamq_tier_cache_misses", "Remote chunk reads that went to the bucket.", registry=r
        )
        # a cluster restored from the bucket: each partition is counted by the broker that is
        # its first replica when it lays the partition out, so the sum over brokers is the
        # cluster's (the operator reports it as the restore's progress)
        self.restored_partitions = Counter(
            "shazamq_restore_partitions_restored",
            "Partitions laid out from the bucket, counted by their first replica.",
            registry=r,
        )
        self.restored_bytes = Counter(
            "shazamq_restore_bytes",
            "Bytes of history in the bucket behind those partitions.",
            registry=r,
        )
