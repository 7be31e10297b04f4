"""The one source of truth for Shazamq's configuration.

Everything a broker can be told lives here as msgspec models: the broker loads its TOML
file (and ``SHAZAMQ_*`` environment overrides) with them, the operator renders the
broker's ConfigMap from them, and the ShazamqCluster CRD schema is generated from them.
A setting described anywhere else is a bug.

Names: TOML keys are snake_case (``[broker] data_dir``); the CRD uses the same models with
camelCase keys (see ``shazamq.operator``). Validation happens once, at load: an unknown key
or a bad value fails with one message naming the key.
"""

from __future__ import annotations

import functools
import json
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

__all__ = [
    "BrokerConfig",
    "BrokerSection",
    "ClusterConfig",
    "ConfigError",
    "GcsConfig",
    "GroupsConfig",
    "MetricsConfig",
    "MirrorConfig",
    "MirrorSource",
    "ReplicationConfig",
    "S3Config",
    "SecurityConfig",
    "StorageConfig",
    "TieredStorageConfig",
    "TransactionsConfig",
    "dump_toml",
    "dynamic_settings",
    "load_config",
]

ENV_PREFIX = "SHAZAMQ_"
ENV_SEPARATOR = "__"

Port = Annotated[int, Meta(ge=1, le=65535, description="A TCP port.")]
NonNegInt = Annotated[int, Meta(ge=0)]
PosInt = Annotated[int, Meta(ge=1)]
# Kafka uses -1 for "unlimited" on byte and time limits.
LimitOrUnlimited = Annotated[int, Meta(ge=-1)]


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the file."""


def _dynamic(kafka_name: str) -> dict[str, str]:
    """The marker of a setting a running broker takes without a restart: its Kafka name,
    under which IncrementalAlterConfigs on a BROKER resource changes it (`dynamic_settings`)."""
    return {"dynamic": kafka_name}


class _Section(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Base for every section: unknown keys are errors, never silently ignored."""


class BrokerSection(_Section):
    """Identity, listener and protocol limits of one broker."""

    node_id: Annotated[int, Meta(ge=0, description="Broker id, unique in the cluster.")] = 0
    node_id_from_hostname: Annotated[
        bool,
        Meta(description="Take node_id from the hostname's trailing ordinal (StatefulSet pods)."),
    ] = False
    host: Annotated[str, Meta(description="Address the Kafka listener binds.")] = "0.0.0.0"
    port: Port = 9092
    advertised_host: Annotated[
        str | None,
        Meta(description="Host clients are told to connect to; defaults to the hostname."),
    ] = None
    advertised_port: Port | None = None
    data_dir: Annotated[str, Meta(description="Directory holding the partition logs.")] = "./data"
    log_dirs: Annotated[
        tuple[str, ...],
        Meta(
            description="Directories holding the partition logs (log.dirs), one per disk; "
            "a new partition goes to the one with the fewest. Empty: data_dir alone. "
            "data_dir keeps the broker's own state either way.",
        ),
    ] = ()
    cluster_id: Annotated[
        str | None, Meta(description="Cluster id; generated and stored on first start.")
    ] = None
    rack: str | None = None
    auto_create_topics: Annotated[
        bool, Meta(description="Create a topic when a client asks for an unknown one.")
    ] = True
    auto_create_topics_max_partitions: Annotated[
        int,
        Meta(
            ge=0,
            description="Auto-creation refuses (POLICY_VIOLATION) a topic that would bring "
            "the partitions of clients' topics on this broker (in a cluster: all it hosts) "
            "over this count, so clients asking for "
            "unknown names cannot grow the broker without bound; 0: only max_partitions.",
        ),
    ] = 0
    auto_create_topics_pattern: Annotated[
        str | None,
        Meta(
            description="Regular expression a name must match in full for the topic to be "
            "auto-created; others are refused (POLICY_VIOLATION). Unset: any legal name."
        ),
    ] = None
    default_partitions: Annotated[int, Meta(ge=1, le=100_000)] = 1
    max_partitions_per_request: Annotated[
        int,
        Meta(
            ge=1,
            description="Most partitions one CreateTopics or CreatePartitions request may "
            "add, all its topics together; more is refused (INVALID_PARTITIONS) before "
            "anything is created.",
        ),
    ] = 10_000
    max_partitions: Annotated[
        int,
        Meta(
            ge=1,
            description="Most partition replicas one broker may host, internal topics "
            "included; a create that would pass it is refused (POLICY_VIOLATION). Each "
            "hosted partition needs at least one open file.",
        ),
    ] = 50_000
    message_max_bytes: Annotated[
        int,
        Meta(
            ge=0,
            description="Largest record batch the broker accepts (message.max.bytes).",
            extra=_dynamic("message.max.bytes"),
        ),
    ] = 1048588
    socket_request_max_bytes: Annotated[
        int, Meta(ge=1024, description="Largest request frame accepted (socket.request.max.bytes).")
    ] = 104857600
    queued_max_request_bytes: Annotated[
        int,
        Meta(
            ge=0,
            description="Memory all connections together may hold in requests being "
            "received or processed and responses not yet sent (queued.max.request.bytes); "
            "over it, connections stop reading until memory is released. 0: no bound.",
        ),
    ] = 268435456
    connections_max_idle_ms: Annotated[
        int,
        Meta(
            ge=0,
            description="Close a connection with no traffic for this long "
            "(connections.max.idle.ms); 0: never.",
        ),
    ] = 600_000
    max_connections: Annotated[
        int,
        Meta(
            ge=0,
            description="Most client connections at once (max.connections); a new one over "
            "it is closed at once. 0: no cap.",
            extra=_dynamic("max.connections"),
        ),
    ] = 10_000
    max_connections_per_ip: Annotated[
        int,
        Meta(
            ge=0,
            description="Most client connections from one address (max.connections.per.ip); "
            "a new one over it is closed at once. 0: no cap.",
            extra=_dynamic("max.connections.per.ip"),
        ),
    ] = 2_000
    max_incremental_fetch_session_cache_slots: Annotated[
        int,
        Meta(
            ge=0,
            description="Most incremental fetch sessions (KIP-227) the broker keeps "
            "(max.incremental.fetch.session.cache.slots); when full, a new session takes "
            "the slot of an idle or a smaller one, or the fetcher goes on with full "
            "fetches. 0: no sessions, every fetch carries its whole partition list.",
        ),
    ] = 1000
    min_incremental_fetch_session_eviction_ms: Annotated[
        int,
        Meta(
            ge=0,
            description="A fetch session unused for longer than this may be evicted by any "
            "new one, and only a session older than this may be displaced by a larger one "
            "(min.incremental.fetch.session.eviction.ms).",
        ),
    ] = 120_000
    delete_topic_enable: bool = True
    shutdown_timeout_ms: Annotated[int, Meta(ge=0)] = 10_000

    def __post_init__(self) -> None:
        if self.auto_create_topics_pattern is not None:
            try:
                re.compile(self.auto_create_topics_pattern)
            except re.error as exc:
                raise ValueError(f"auto_create_topics_pattern is not a regex: {exc}") from None
        check_log_dirs(self.log_dirs)

    def partition_dirs(self) -> list[str]:
        """Where partition logs live: ``log_dirs``, or ``data_dir`` when none is listed."""
        return list(self.log_dirs) or [self.data_dir]


def check_log_dirs(dirs: tuple[str, ...]) -> None:
    """No empty path, no directory twice, none inside another (they would see each
    other's partitions as their own)."""
    seen: dict[str, str] = {}
    for d in dirs:
        if not d.strip():
            raise ValueError("log_dirs holds an empty path")
        norm = os.path.normpath(os.path.abspath(d))
        if norm in seen:
            raise ValueError(f"log_dirs lists {seen[norm]!r} and {d!r}, the same directory")
        for other, given in seen.items():
            if os.path.commonpath([norm, other]) in (norm, other):
                raise ValueError(f"log_dirs: {d!r} and {given!r} are nested")
        seen[norm] = d


class StorageConfig(_Section):
    """Broker-wide defaults of the segment log; topics may override them."""

    segment_bytes: Annotated[
        int,
        Meta(
            ge=14, description="Roll a segment at this size.", extra=_dynamic("log.segment.bytes")
        ),
    ] = 1073741824
    segment_ms: Annotated[
        int,
        Meta(ge=1, description="Roll a segment after this age.", extra=_dynamic("log.roll.ms")),
    ] = 604800000
    retention_hours: Annotated[
        int,
        Meta(
            ge=-1,
            description="Delete segments older than this; -1 keeps forever.",
            extra=_dynamic("log.retention.hours"),
        ),
    ] = 168
    retention_ms: (
        Annotated[
            int,
            Meta(
                ge=-1,
                description="Overrides retention_hours when set.",
                extra=_dynamic("log.retention.ms"),
            ),
        ]
        | None
    ) = None
    retention_bytes: Annotated[
        int,
        Meta(
            ge=-1,
            description="Keep at most this many bytes per partition; -1: no limit.",
            extra=_dynamic("log.retention.bytes"),
        ),
    ] = -1
    cleanup_policy: Annotated[
        Literal["delete", "compact", "compact,delete", "delete,compact"],
        Meta(extra=_dynamic("log.cleanup.policy")),
    ] = "delete"
    delete_retention_ms: Annotated[
        int, Meta(ge=0, extra=_dynamic("log.cleaner.delete.retention.ms"))
    ] = 86400000
    min_compaction_lag_ms: Annotated[
        int, Meta(ge=0, extra=_dynamic("log.cleaner.min.compaction.lag.ms"))
    ] = 0
    index_interval_bytes: Annotated[int, Meta(ge=0, extra=_dynamic("log.index.interval.bytes"))] = (
        4096
    )
    flush_messages: (
        Annotated[
            int,
            Meta(
                ge=1,
                description="fsync after this many messages; unset: the OS.",
                extra=_dynamic("log.flush.interval.messages"),
            ),
        ]
        | None
    ) = None
    flush_ms: (
        Annotated[
            int,
            Meta(
                ge=0,
                description="fsync at least this often; unset: the OS.",
                extra=_dynamic("log.flush.interval.ms"),
            ),
        ]
        | None
    ) = None
    retention_check_interval_ms: Annotated[int, Meta(ge=100)] = 300000
    cleaner_dedupe_buffer_bytes: Annotated[
        int,
        Meta(
            ge=1024,
            description="Memory the compaction key map of one cleaning may take "
            "(log.cleaner.dedupe.buffer.size); a dirty section whose keys do not fit is "
            "cleaned in several passes.",
        ),
    ] = 134217728
    max_open_segment_files: (
        Annotated[
            int,
            Meta(
                ge=16,
                description="Segment log files kept open at once; the least recently used "
                "is closed (and reopened on its next use) to open another, so idle "
                "partitions hold no descriptor. Unset: three quarters of the process's "
                "open-file limit (RLIMIT_NOFILE), the rest left for connections. Must "
                "fit in that limit.",
            ),
        ]
        | None
    ) = None

    def effective_retention_ms(self) -> int:
        if self.retention_ms is not None:
            return self.retention_ms
        if self.retention_hours < 0:
            return -1
        return self.retention_hours * 3_600_000


class MetricsConfig(_Section):
    """The Prometheus endpoint."""

    enabled: bool = True
    host: str = "0.0.0.0"
    port: Port = 9090


class GroupsConfig(_Section):
    """The consumer group coordinator."""

    initial_rebalance_delay_ms: Annotated[int, Meta(ge=0)] = 3000
    min_session_timeout_ms: Annotated[int, Meta(ge=1)] = 6000
    max_session_timeout_ms: Annotated[int, Meta(ge=1)] = 1800000
    max_size: Annotated[int, Meta(ge=1)] = 2147483647
    offsets_retention_minutes: Annotated[int, Meta(ge=1)] = 10080
    offsets_topic_num_partitions: Annotated[int, Meta(ge=1, le=1000)] = 50
    offsets_topic_segment_bytes: Annotated[int, Meta(ge=14)] = 104857600
    offsets_retention_check_interval_ms: Annotated[
        int,
        Meta(
            ge=1,
            description="How often committed offsets are checked for expiry "
            "(offsets.retention.check.interval.ms).",
        ),
    ] = 600000
    consumer_session_timeout_ms: Annotated[
        int,
        Meta(
            ge=1,
            description="Session timeout of consumer-protocol (KIP-848) group members "
            "(group.consumer.session.timeout.ms).",
        ),
    ] = 45000
    consumer_heartbeat_interval_ms: Annotated[
        int,
        Meta(
            ge=1,
            description="Heartbeat interval told to consumer-protocol group members "
            "(group.consumer.heartbeat.interval.ms).",
        ),
    ] = 5000
    consumer_min_session_timeout_ms: Annotated[
        int,
        Meta(
            ge=1,
            description="Lowest consumer.session.timeout.ms a group may set "
            "(group.consumer.min.session.timeout.ms).",
        ),
    ] = 45000
    consumer_max_session_timeout_ms: Annotated[
        int,
        Meta(
            ge=1,
            description="Highest consumer.session.timeout.ms a group may set "
            "(group.consumer.max.session.timeout.ms).",
        ),
    ] = 60000
    consumer_min_heartbeat_interval_ms: Annotated[
        int,
        Meta(
            ge=1,
            description="Lowest consumer.heartbeat.interval.ms a group may set "
            "(group.consumer.min.heartbeat.interval.ms).",
        ),
    ] = 5000
    consumer_max_heartbeat_interval_ms: Annotated[
        int,
        Meta(
            ge=1,
            description="Highest consumer.heartbeat.interval.ms a group may set "
            "(group.consumer.max.heartbeat.interval.ms).",
        ),
    ] = 15000
    consumer_max_size: Annotated[
        int,
        Meta(
            ge=1,
            description="Most members a consumer-protocol group may have, classic members "
            "of a group being upgraded included (group.consumer.max.size); a member "
            "beyond it is refused with GROUP_MAX_SIZE_REACHED, and a classic group with "
            "as many members is not upgraded.",
        ),
    ] = 2147483647
    consumer_migration_policy: Annotated[
        Literal["bidirectional", "upgrade", "downgrade", "disabled"],
        Meta(
            description="Conversion between classic and consumer groups during an online "
            "upgrade (group.consumer.migration.policy): upgrade lets a consumer-protocol "
            "member join a classic group, downgrade turns a consumer group whose last "
            "consumer-protocol member left back into a classic group, bidirectional both, "
            "disabled neither.",
        ),
    ] = "bidirectional"
    share_record_lock_duration_ms: Annotated[
        int,
        Meta(
            ge=1,
            description="How long a share group member holds records it fetched before they "
            "go back to the group (group.share.record.lock.duration.ms); a group may "
            "override it with share.record.lock.duration.ms.",
        ),
    ] = 30000
    share_min_record_lock_duration_ms: Annotated[
        int,
        Meta(
            ge=1,
            description="Lowest share.record.lock.duration.ms a group may set "
            "(group.share.min.record.lock.duration.ms).",
        ),
    ] = 15000
    share_max_record_lock_duration_ms: Annotated[
        int,
        Meta(
            ge=1,
            description="Highest share.record.lock.duration.ms a group may set "
            "(group.share.max.record.lock.duration.ms).",
        ),
    ] = 60000
    share_delivery_count_limit: Annotated[
        int,
        Meta(
            ge=2,
            le=10,
            description="Deliveries of a record to share group members before it is "
            "archived (group.share.delivery.count.limit).",
        ),
    ] = 5
    share_session_timeout_ms: Annotated[
        int,
        Meta(
            ge=1,
            description="Session timeout of share group members (group.share.session.timeout.ms).",
        ),
    ] = 45000
    share_heartbeat_interval_ms: Annotated[
        int,
        Meta(
            ge=1,
            description="Heartbeat interval told to share group members "
            "(group.share.heartbeat.interval.ms).",
        ),
    ] = 5000
    share_partition_max_record_locks: Annotated[
        int,
        Meta(
            ge=1,
            description="Records in flight (between the start and end offsets) per "
            "share-partition (group.share.partition.max.record.locks).",
        ),
    ] = 2000
    share_state_topic_num_partitions: Annotated[
        int,
        Meta(
            ge=1,
            le=1000,
            description="Partitions of the __share_group_state topic "
            "(share.coordinator.state.topic.num.partitions).",
        ),
    ] = 50

    def __post_init__(self) -> None:
        lo, hi = self.share_min_record_lock_duration_ms, self.share_max_record_lock_duration_ms
        if not lo <= self.share_record_lock_duration_ms <= hi:
            raise ValueError(
                f"share_record_lock_duration_ms ({self.share_record_lock_duration_ms}) must lie "
                f"between share_min_record_lock_duration_ms ({lo}) and "
                f"share_max_record_lock_duration_ms ({hi})"
            )
        if self.share_heartbeat_interval_ms >= self.share_session_timeout_ms:
            raise ValueError("share_session_timeout_ms must exceed share_heartbeat_interval_ms")
        if self.consumer_min_session_timeout_ms > self.consumer_max_session_timeout_ms:
            raise ValueError(
                "consumer_min_session_timeout_ms must not exceed consumer_max_session_timeout_ms"
            )
        if self.consumer_min_heartbeat_interval_ms > self.consumer_max_heartbeat_interval_ms:
            raise ValueError(
                "consumer_min_heartbeat_interval_ms must not exceed "
                "consumer_max_heartbeat_interval_ms"
            )


class TransactionsConfig(_Section):
    """Producer ids, idempotence and the transaction coordinator."""

    max_timeout_ms: Annotated[int, Meta(ge=1)] = 900000
    transactional_id_expiration_ms: Annotated[int, Meta(ge=1)] = 604800000
    producer_id_expiration_ms: Annotated[int, Meta(ge=1)] = 86400000
    abort_timed_out_check_interval_ms: Annotated[int, Meta(ge=1)] = 10000
    state_log_num_partitions: Annotated[int, Meta(ge=1, le=1000)] = 50
    state_log_segment_bytes: Annotated[
        int,
        Meta(
            ge=14,
            description="Segment size of the __transaction_state topic "
            "(transaction.state.log.segment.bytes).",
        ),
    ] = 104857600
    state_log_min_isr: Annotated[
        int,
        Meta(
            ge=1,
            le=32767,
            description="min.insync.replicas of the __transaction_state topic, bounded by "
            "the replication factor it is created with (transaction.state.log.min.isr).",
        ),
    ] = 2


class ReplicationConfig(_Section):
    """Replication defaults for new topics."""

    default_replication_factor: Annotated[
        int, Meta(ge=1, le=32767, description="Replication factor of automatically created topics.")
    ] = 1
    min_insync_replicas: Annotated[
        int,
        Meta(
            ge=1, le=32767, description="Replicas that must have a write for acks=all to succeed."
        ),
    ] = 1
    replica_lag_time_max_ms: Annotated[
        int,
        Meta(
            ge=1,
            description="A follower that has not caught up for this long leaves the ISR "
            "(replica.lag.time.max.ms).",
        ),
    ] = 30000
    replica_fetch_max_bytes: Annotated[
        int, Meta(ge=1024, description="Bytes a follower asks for per partition fetch.")
    ] = 1048576
    replica_fetch_wait_max_ms: Annotated[
        int, Meta(ge=0, description="Longest a follower's fetch waits at the leader for data.")
    ] = 500
    reassignment_throttle_bytes_per_second: Annotated[
        int,
        Meta(
            ge=-1,
            description="Cap on bytes per second copied to replicas being added by a "
            "reassignment; -1: no cap.",
        ),
    ] = -1
    unclean_leader_election_enable: Annotated[
        bool,
        Meta(description="Elect an out-of-sync replica when no in-sync one is alive (loses data)."),
    ] = False
    auto_leader_rebalance_enable: Annotated[
        bool, Meta(description="Move leadership back to preferred replicas periodically.")
    ] = True
    leader_imbalance_check_interval_ms: Annotated[int, Meta(ge=1000)] = 30000


_VOTER = re.compile(r"^(?P<id>\d+)@(?P<host>\[[0-9a-fA-F:.]+\]|[^:@\s]+):(?P<port>\d+)$")


def parse_voter(entry: str) -> tuple[int, str, int]:
    """``"1@host:9093"`` -> ``(1, "host", 9093)``; ValueError naming the entry otherwise."""
    m = _VOTER.match(entry.strip())
    if m is None:
        raise ValueError(f"voter {entry!r} is not of the form ID@HOST:PORT")
    port = int(m.group("port"))
    if not 1 <= port <= 65535:
        raise ValueError(f"voter {entry!r}: port {port} is out of range")
    return int(m.group("id")), m.group("host").strip("[]"), port


class ClusterConfig(_Section):
    """Membership of a multi-broker cluster; without voters the broker runs alone."""

    voters: Annotated[
        list[str],
        Meta(
            description="The metadata quorum as ID@HOST:PORT entries (controller.quorum.voters); "
            "empty: a single broker."
        ),
    ] = msgspec.field(default_factory=list)
    secret: Annotated[
        str | None,
        Meta(description="Shared secret that authenticates and encrypts quorum traffic."),
    ] = None
    secret_file: Annotated[
        str | None, Meta(description="File holding the cluster secret (a mounted Secret).")
    ] = None
    quorum_host: Annotated[
        str, Meta(description="Address the quorum listener binds (port: this voter's entry).")
    ] = "0.0.0.0"
    heartbeat_interval_ms: Annotated[
        int, Meta(ge=10, description="How often a broker heartbeats to the controller.")
    ] = 1000
    session_timeout_ms: Annotated[
        int,
        Meta(
            ge=100,
            description="A broker silent for this long is fenced and loses its leaderships "
            "(broker.session.timeout.ms).",
        ),
    ] = 9000
    controlled_shutdown_timeout_ms: Annotated[
        int, Meta(ge=0, description="Longest SIGTERM waits for leaderships to move away.")
    ] = 15000
    quorum_tls: Annotated[
        bool,
        Meta(
            description="Run quorum traffic over TLS with [security.tls]'s certificate and key; "
            "peers must present certificates signed by its ca_file."
        ),
    ] = False

    def __post_init__(self) -> None:
        ids: list[int] = []
        for entry in self.voters:
            ids.append(parse_voter(entry)[0])
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"voter ids must be unique, repeated: {dupes}")
        if self.voters and not (self.secret or self.secret_file):
            raise ValueError("voters need secret or secret_file (quorum traffic is authenticated)")
        if self.session_timeout_ms <= self.heartbeat_interval_ms:
            raise ValueError("session_timeout_ms must exceed heartbeat_interval_ms")

    @property
    def enabled(self) -> bool:
        return bool(self.voters)

    def voter_map(self) -> dict[int, tuple[str, int]]:
        out = {}
        for entry in self.voters:
            node, host, port = parse_voter(entry)
            out[node] = (host, port)
        return out

    def read_secret(self) -> str:
        if self.secret:
            return self.secret
        assert self.secret_file
        try:
            return Path(self.secret_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cluster.secret_file ({self.secret_file}): {exc}") from None


class S3Config(_Section):
    """An S3 (or S3-compatible) bucket for the remote tier."""

    bucket: Annotated[str, Meta(min_length=3, max_length=63, description="Bucket name.")]
    region: Annotated[str, Meta(description="AWS region of the bucket.")] = "us-east-1"
    prefix: Annotated[str, Meta(description="Key prefix of every object written.")] = ""
    endpoint: Annotated[
        str | None, Meta(description="Custom endpoint URL, for S3-compatible stores.")
    ] = None
    access_key_id: Annotated[
        str | None, Meta(description="Static credentials; default: the AWS credential chain.")
    ] = None
    secret_access_key: str | None = None


class GcsConfig(_Section):
    """A Google Cloud Storage bucket for the remote tier."""

    bucket: Annotated[str, Meta(min_length=3, max_length=222, description="Bucket name.")]
    prefix: Annotated[str, Meta(description="Object name prefix of every object written.")] = ""
    endpoint: Annotated[str | None, Meta(description="Custom endpoint URL (emulators).")] = None
    credentials_file: Annotated[
        str | None, Meta(description="Service account JSON; default: application default.")
    ] = None


class TieredStorageConfig(_Section):
    """Moving closed segments to object storage and reading them back."""

    enabled: Annotated[bool, Meta(description="Turn tiered storage on.")] = False
    provider: Annotated[
        Literal["s3", "gcs"], Meta(description="Object store: the s3 or the gcs section.")
    ] = "s3"
    hot_tier_retention_hours: (
        Annotated[int, Meta(ge=0, description="Hours a segment stays local once uploaded.")] | None
    ) = None
    max_upload_interval_ms: Annotated[
        int,
        Meta(
            ge=1000,
            description="A segment holding data this long is rolled and uploaded: the most "
            "the bucket lags behind the log (the recovery point objective).",
        ),
    ] = 300_000
    upload_concurrency: Annotated[
        int, Meta(ge=1, le=64, description="Segments uploaded at once, over all partitions.")
    ] = 4
    upload_bytes_per_second: Annotated[
        int, Meta(ge=0, description="Upload bandwidth cap in bytes per second; 0: none.")
    ] = 0
    read_cache_bytes: Annotated[
        int, Meta(ge=0, description="On-disk cache of remote chunks read by fetches.")
    ] = 268_435_456
    read_chunk_bytes: Annotated[
        int,
        Meta(ge=65_536, le=268_435_456, description="Size of one ranged read of a remote segment."),
    ] = 4_194_304
    upload_part_size_bytes: Annotated[
        int,
        Meta(
            ge=5_242_880,
            le=5_368_709_120,
            multiple_of=262_144,
            description="Segments larger than this go up part by part (S3 multipart, GCS "
            "resumable), one part in memory at a time: 5 MiB to 5 GiB (S3's limits), a "
            "multiple of 256 KiB (GCS's chunk unit).",
        ),
    ] = 8_388_608
    request_timeout_ms: Annotated[
        int,
        Meta(
            ge=100,
            le=600_000,
            description="One object store request times out after this long without an "
            "answer (connecting, or between bytes of the answer), and is retried.",
        ),
    ] = 30_000
    remote_fetch_timeout_ms: Annotated[
        int,
        Meta(
            ge=100,
            le=600_000,
            description="A fetch below the local log start waits this long for the bucket, "
            "then answers the retriable KAFKA_STORAGE_ERROR (the read goes on, for the cache).",
        ),
    ] = 10_000
    s3: S3Config | None = None
    gcs: GcsConfig | None = None

    def __post_init__(self) -> None:
        if self.enabled and self.provider == "s3" and self.s3 is None:
            raise ValueError("provider 's3' needs a [tiered_storage.s3] section")
        if self.enabled and self.provider == "gcs" and self.gcs is None:
            raise ValueError("provider 'gcs' needs a [tiered_storage.gcs] section")


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
# what the broker's own listener may offer: the password mechanisms and OAUTHBEARER
ListenerSaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]
JwsAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"
]


class MirrorSource(_Section):
    """One foreign Kafka cluster whose topics this broker mirrors."""

    name: Annotated[
        str,
        Meta(
            pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
            max_length=63,
            description="Unique name of the source (a DNS label).",
        ),
    ]
    bootstrap_servers: Annotated[
        str, Meta(min_length=1, description="Comma-separated host:port list of the source.")
    ]
    security_protocol: Annotated[
        SecurityProtocol, Meta(description="How to connect to the source.")
    ] = "PLAINTEXT"
    sasl_mechanism: Annotated[
        SaslMechanism | None, Meta(description="SASL mechanism; required with SASL_*.")
    ] = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    sasl_password_file: Annotated[
        str | None,
        Meta(description="File holding the SASL password (a mounted Secret), instead of it."),
    ] = None
    ssl_ca_file: Annotated[
        str | None, Meta(description="CA bundle verifying the source's certificates.")
    ] = None
    ssl_cert_file: Annotated[
        str | None, Meta(description="Client certificate (PEM) presented to the source.")
    ] = None
    ssl_key_file: Annotated[str | None, Meta(description="Key of ssl_cert_file (PEM).")] = None
    topic_whitelist: Annotated[
        tuple[str, ...],
        Meta(description="Regular expressions of the topics to mirror (whole-name match)."),
    ] = (".*",)
    topic_blacklist: Annotated[
        tuple[str, ...], Meta(description="Regular expressions of topics never mirrored.")
    ] = ()
    topic_prefix: Annotated[
        str,
        Meta(
            pattern=r"^[a-zA-Z0-9._-]*$",
            max_length=100,
            description="Prefix of the local names of this source's topics.",
        ),
    ] = ""
    promoted_topics: Annotated[
        tuple[str, ...],
        Meta(
            description="Local mirrored topics to promote: mirroring of them stops and they "
            "become writable (the failover step of a migration)."
        ),
    ] = ()
    sync_group_offsets: Annotated[
        bool, Meta(description="Copy the source groups' committed offsets on mirrored topics.")
    ] = True
    group_whitelist: Annotated[
        tuple[str, ...], Meta(description="Regular expressions of the groups whose offsets sync.")
    ] = (".*",)
    group_blacklist: Annotated[
        tuple[str, ...], Meta(description="Regular expressions of groups never synced.")
    ] = ()
    sync_group_offsets_interval_ms: Annotated[
        int, Meta(ge=100, description="How often committed group offsets are synced.")
    ] = 10_000
    metadata_refresh_interval_ms: Annotated[
        int,
        Meta(ge=100, description="How often the source is asked for new topics and partitions."),
    ] = 30_000
    fetch_max_bytes: Annotated[
        int, Meta(ge=1024, description="Most bytes fetched per partition per request.")
    ] = 1_048_576
    fetch_max_wait_ms: Annotated[
        int, Meta(ge=0, le=60_000, description="How long the source may hold a fetch open.")
    ] = 500
    retry_backoff_ms: Annotated[
        int, Meta(ge=1, description="First wait before reconnecting to a source that is down.")
    ] = 500
    retry_backoff_max_ms: Annotated[
        int, Meta(ge=1, description="Longest wait between reconnection attempts.")
    ] = 30_000
    consumer_group_id: Annotated[str, Meta(description="Consumer group used on the source.")] = (
        "shazamq-mirror"
    )
    num_consumers: Annotated[
        int,
        Meta(ge=1, le=1024, description="Fetch sessions sharing the source's partitions."),
    ] = 1
    exactly_once: Annotated[
        bool,
        Meta(
            description="Copy without duplicates or holes. The verbatim copy is exactly once "
            "by construction (its position is the local log end), so false is refused."
        ),
    ] = True

    def __post_init__(self) -> None:
        for pattern in (*self.topic_whitelist, *self.topic_blacklist):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"topic pattern {pattern!r} is not a regular expression: {exc}"
                ) from None
        for pattern in (*self.group_whitelist, *self.group_blacklist):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"group pattern {pattern!r} is not a regular expression: {exc}"
                ) from None
        if self.security_protocol.startswith("SASL_") and self.sasl_mechanism is None:
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism")
        if self.sasl_password is not None and self.sasl_password_file is not None:
            raise ValueError("set sasl_password or sasl_password_file, not both")
        if (self.ssl_cert_file is None) != (self.ssl_key_file is None):
            raise ValueError("ssl_cert_file and ssl_key_file go together")
        if not self.exactly_once:
            raise ValueError(
                "exactly_once = false is not offered: the verbatim copy is exactly once"
            )
        if self.retry_backoff_max_ms < self.retry_backoff_ms:
            raise ValueError("retry_backoff_max_ms is below retry_backoff_ms")

    def read_sasl_password(self) -> str | None:
        """The SASL password, from the setting or its file (trailing newline dropped)."""
        if self.sasl_password_file is None:
            return self.sasl_password
        try:
            text = Path(self.sasl_password_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"mirror source {self.name}: sasl_password_file "
                f"{self.sasl_password_file}: {exc.strerror or exc}"
            ) from None
        return text.rstrip("\r\n")


class MirrorConfig(_Section):
    """Mirroring topics in from existing Kafka clusters."""

    enabled: Annotated[bool, Meta(description="Turn mirroring on.")] = False
    sources: Annotated[list[MirrorSource], Meta(description="The clusters to mirror from.")] = (
        msgspec.field(default_factory=list)
    )

    def __post_init__(self) -> None:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"mirror source names must be unique, repeated: {', '.join(dupes)}")


class TlsConfig(_Section):
    """TLS on the Kafka listener."""

    enabled: bool = False
    cert_file: str | None = None
    key_file: str | None = None
    ca_file: Annotated[str | None, Meta(description="CA bundle to verify client certificates.")] = (
        None
    )
    principal_mapping_rules: Annotated[
        tuple[str, ...],
        Meta(
            description="With ca_file: how a client certificate's subject (RFC 2253) becomes "
            "the principal, as Kafka's ssl.principal.mapping.rules: DEFAULT or "
            "RULE:pattern/replacement/[LU], first match wins.",
        ),
    ] = ("DEFAULT",)  # a plain default, so the rendered TOML leaves it out
    reload_check_interval_ms: Annotated[
        int,
        Meta(
            ge=0,
            description="How often the certificate, key and CA files are checked for a "
            "change and reloaded without a restart (0: never).",
        ),
    ] = 10_000

    def __post_init__(self) -> None:
        if self.enabled and not (self.cert_file and self.key_file):
            raise ValueError("TLS needs cert_file and key_file")


class OAuthBearerConfig(_Section):
    """How SASL/OAUTHBEARER tokens are validated (KIP-255; KIP-768's settings by their
    Kafka names in the descriptions)."""

    validator: Annotated[
        Literal["jwks", "unsecured"],
        Meta(
            description="jwks: signed JWTs verified against the keys of jwks_url or jwks_file "
            "(production); unsecured: unsigned JWS (alg none) taken at their word, for "
            "development only, as Kafka's OAuthBearerUnsecuredValidatorCallbackHandler.",
        ),
    ] = "jwks"
    jwks_url: (
        Annotated[
            str,
            Meta(
                pattern=r"^https?://",
                description="The JSON Web Key Set of the issuer "
                "(sasl.oauthbearer.jwks.endpoint.url).",
            ),
        ]
        | None
    ) = None
    jwks_file: Annotated[
        str | None, Meta(description="A JSON Web Key Set file, read again on every refresh.")
    ] = None
    jwks_refresh_ms: Annotated[
        int,
        Meta(
            ge=1000,
            description="How often the key set is fetched again "
            "(sasl.oauthbearer.jwks.endpoint.refresh.ms); a token naming an unknown key id "
            "also triggers a fetch, at most once every 10 s.",
        ),
    ] = 3_600_000
    algorithms: Annotated[
        tuple[JwsAlgorithm, ...],
        Meta(min_length=1, description="Signature algorithms a token may use (alg)."),
    ] = ("RS256", "ES256")
    expected_issuer: Annotated[
        str | None,
        Meta(description="Required iss claim (sasl.oauthbearer.expected.issuer); unset: any."),
    ] = None
    expected_audience: Annotated[
        tuple[str, ...],
        Meta(
            description="The aud claim must name one of these "
            "(sasl.oauthbearer.expected.audience); empty: not checked.",
        ),
    ] = ()
    principal_claim: Annotated[
        str,
        Meta(
            min_length=1,
            description="Claim holding the principal's name (sasl.oauthbearer.sub.claim.name).",
        ),
    ] = "sub"
    scope_claim: Annotated[
        str,
        Meta(
            min_length=1,
            description="Claim holding the scopes (sasl.oauthbearer.scope.claim.name).",
        ),
    ] = "scope"
    required_scopes: Annotated[
        tuple[str, ...], Meta(description="Scopes every token must carry; empty: none.")
    ] = ()
    clock_skew_seconds: Annotated[
        int,
        Meta(
            ge=0,
            le=3600,
            description="Leeway on exp, nbf and iat (sasl.oauthbearer.clock.skew.seconds).",
        ),
    ] = 30

    def __post_init__(self) -> None:
        if self.validator == "jwks" and bool(self.jwks_url) == bool(self.jwks_file):
            raise ValueError("validator 'jwks' needs exactly one of jwks_url and jwks_file")


class SaslConfig(_Section):
    """SASL authentication on the Kafka listener."""

    enabled: bool = False
    mechanisms: tuple[ListenerSaslMechanism, ...] = ("PLAIN",)
    users_file: Annotated[
        str | None, Meta(description='TOML file of [users] name = "password" entries.')
    ] = None
    users: dict[str, str] = msgspec.field(default_factory=dict)
    max_receive_bytes: Annotated[
        int,
        Meta(
            ge=1024,
            description="Largest frame a connection may send before it has authenticated "
            "(sasl.server.max.receive.size); a larger one closes the connection.",
        ),
    ] = 524288
    authentication_timeout_ms: Annotated[
        int,
        Meta(
            ge=0,
            description="Close a connection that has not authenticated this long after it "
            "was accepted; 0: only connections_max_idle_ms applies.",
        ),
    ] = 30_000
    connections_max_reauth_ms: Annotated[
        int,
        Meta(
            ge=0,
            description="Session lifetime given to clients at login (KIP-368, "
            "connections.max.reauth.ms): past it a connection must re-authenticate, and "
            "one that sends anything else is closed; 0: sessions never expire.",
        ),
    ] = 0
    max_failed_logins_per_minute: Annotated[
        int,
        Meta(
            ge=0,
            description="Failed authentications one client address may make per minute; "
            "past it, its logins are refused without checking credentials until the "
            "allowance refills. 0: no limit.",
        ),
    ] = 30
    hash_threads: Annotated[
        int,
        Meta(
            ge=1,
            le=64,
            description="Threads computing SCRAM/PLAIN password hashes, apart from the ones "
            "flushing and cleaning logs, so a login flood delays only logins.",
        ),
    ] = 2

    oauthbearer: Annotated[
        OAuthBearerConfig | None,
        Meta(description="Token validation, required when mechanisms has OAUTHBEARER."),
    ] = None

    def __post_init__(self) -> None:
        passwords = any(m != "OAUTHBEARER" for m in self.mechanisms)
        if self.enabled and passwords and not (self.users or self.users_file):
            raise ValueError("SASL needs users or users_file")
        if self.enabled and "OAUTHBEARER" in self.mechanisms and self.oauthbearer is None:
            raise ValueError("mechanism OAUTHBEARER needs a [security.sasl.oauthbearer] section")


class AuthorizationConfig(_Section):
    """ACLs (Kafka's StandardAuthorizer): who may do what, managed with CreateAcls/DeleteAcls."""

    enabled: Annotated[
        bool, Meta(description="Enforce ACLs on every request (off: anyone may do anything).")
    ] = False
    super_users: Annotated[
        list[str],
        Meta(description='Principals allowed everything, ACLs or not, e.g. ["User:admin"].'),
    ] = msgspec.field(default_factory=list)
    allow_everyone_if_no_acl_found: Annotated[
        bool,
        Meta(description="Allow any principal on a resource that has no ACL at all."),
    ] = False

    def __post_init__(self) -> None:
        for p in self.super_users:
            kind, sep, name = p.partition(":")
            if not (sep and kind and name):
                raise ValueError(f"super user {p!r} is not of the form User:name")


class QuotasConfig(_Section):
    """How client quota rates are measured (the quotas themselves are set with
    AlterClientQuotas and live in the cluster metadata)."""

    window_num: Annotated[
        int,
        Meta(
            ge=1,
            le=100,
            description="Samples a client's rate is kept over (quota.window.num).",
        ),
    ] = 11
    window_size_seconds: Annotated[
        int,
        Meta(
            ge=1,
            le=3600,
            description="Length of each sample in seconds (quota.window.size.seconds).",
        ),
    ] = 1


class SecurityConfig(_Section):
    """Listener security."""

    tls: TlsConfig = msgspec.field(default_factory=TlsConfig)
    sasl: SaslConfig = msgspec.field(default_factory=SaslConfig)
    authorization: AuthorizationConfig = msgspec.field(default_factory=AuthorizationConfig)


class BrokerConfig(_Section):
    """The whole configuration file of one broker."""

    broker: BrokerSection = msgspec.field(default_factory=BrokerSection)
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    groups: GroupsConfig = msgspec.field(default_factory=GroupsConfig)
    transactions: TransactionsConfig = msgspec.field(default_factory=TransactionsConfig)
    replication: ReplicationConfig = msgspec.field(default_factory=ReplicationConfig)
    cluster: ClusterConfig = msgspec.field(default_factory=ClusterConfig)
    tiered_storage: TieredStorageConfig = msgspec.field(default_factory=TieredStorageConfig)
    mirror: MirrorConfig = msgspec.field(default_factory=MirrorConfig)
    security: SecurityConfig = msgspec.field(default_factory=SecurityConfig)
    quotas: QuotasConfig = msgspec.field(default_factory=QuotasConfig)

    def __post_init__(self) -> None:
        if self.cluster.quorum_tls and not (
            self.security.tls.cert_file and self.security.tls.key_file and self.security.tls.ca_file
        ):
            raise ValueError(
                "cluster.quorum_tls needs security.tls cert_file, key_file and ca_file"
            )
        sec = self.security
        if (
            self.cluster.enabled
            and sec.sasl.enabled
            and all(m == "OAUTHBEARER" for m in sec.sasl.mechanisms)
        ):
            raise ValueError(
                "security.sasl in a cluster needs PLAIN or a SCRAM mechanism beside OAUTHBEARER: "
                "brokers log in to each other with the cluster secret"
            )
        if (
            self.cluster.enabled
            and sec.authorization.enabled
            and not sec.sasl.enabled
            and not sec.tls.ca_file
        ):
            # Brokers would reach each other's listeners unauthenticated: every replica
            # fetch and transaction marker refused as User:ANONYMOUS.
            raise ValueError(
                "security.authorization in a cluster needs security.sasl enabled (brokers "
                "authenticate to each other as the internal principal) or TLS client "
                "certificates (security.tls.ca_file); without either, replica fetches "
                "arrive as User:ANONYMOUS and are refused"
            )
        if self.replication.min_insync_replicas > self.replication.default_replication_factor:
            raise ValueError(
                "replication.min_insync_replicas cannot exceed default_replication_factor"
            )
        if self.groups.min_session_timeout_ms > self.groups.max_session_timeout_ms:
            raise ValueError("groups.min_session_timeout_ms exceeds max_session_timeout_ms")


# -- loading -------------------------------------------------------------------------------

_UNKNOWN_FIELD = re.compile(r"Object contains unknown field `([^`]+)`(?: - at `\$(.*)`)?")
_AT_PATH = re.compile(r"^(.*?)(?: - at `\$(.*)`)?$")


def _dotted(path: str) -> str:
    """`$.broker.port` / `$.mirror.sources[0]` -> `broker.port` / `mirror.sources[0]`."""
    return path.lstrip(".")


def _explain(exc: msgspec.ValidationError, source: str) -> ConfigError:
    text = str(exc)
    m = _UNKNOWN_FIELD.match(text)
    if m:
        where = _dotted(m.group(2) or "")
        key = f"{where}.{m.group(1)}" if where else m.group(1)
        return ConfigError(f"{source}: unknown key '{key}'")
    m = _AT_PATH.match(text)
    assert m is not None
    problem, where = m.group(1), _dotted(m.group(2) or "")
    if where:
        return ConfigError(f"{source}: invalid value for '{where}': {problem}")
    return ConfigError(f"{source}: {problem}")


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node: Any = tree
    for i, part in enumerate(path[:-1]):
        nxt_is_index = path[i + 1].isdigit()
        if isinstance(node, list):
            idx = int(part)
            while len(node) <= idx:
                node.append({})
            node = node[idx]
            continue
        if part not in node or not isinstance(node[part], dict | list):
            node[part] = [] if nxt_is_index else {}
        node = node[part]
    last = path[-1]
    if isinstance(node, list):
        idx = int(last)
        while len(node) <= idx:
            node.append({})
        node[idx] = value
    else:
        node[last] = value


def _env_value(raw: str) -> Any:
    """Environment values are strings; JSON lists/objects are accepted for list settings."""
    stripped = raw.strip()
    if stripped[:1] in "[{":
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return raw
    return raw


def apply_env(tree: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    """Overlay ``SHAZAMQ_SECTION__KEY=value`` variables onto a parsed TOML tree.

    Returns the dotted keys that were set, so errors can say where a value came from.
    """
    applied = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or ENV_SEPARATOR not in name:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split(ENV_SEPARATOR)]
        if any(not p for p in path):
            raise ConfigError(f"environment variable {name}: empty key segment")
        _set_path(tree, path, _env_value(raw))
        applied.append(".".join(path))
    return applied


def parse_config(tree: dict[str, Any], source: str = "configuration") -> BrokerConfig:
    """Validate an already-parsed tree (TOML + env) into a BrokerConfig."""
    try:
        return msgspec.convert(tree, BrokerConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise _explain(exc, source) from None


def load_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> BrokerConfig:
    """Load the broker configuration: embedded defaults, then the file, then the environment."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        try:
            tree = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{source}: file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    if environ is None:
        environ = os.environ
    if apply_env(tree, environ):
        source = f"{source} + {ENV_PREFIX}* environment"
    return parse_config(tree, source)


def _drop_empty(node: Any) -> Any:
    if isinstance(node, dict):
        pruned = {k: _drop_empty(v) for k, v in node.items()}
        return {k: v for k, v in pruned.items() if v != {}}
    if isinstance(node, list):
        return [_drop_empty(v) for v in node]
    return node


def to_builtins(config: Struct) -> dict[str, Any]:
    """The config as plain dicts, defaults and empty sections omitted, for TOML or JSON."""
    out = _drop_empty(msgspec.to_builtins(config))
    assert isinstance(out, dict)
    return out


def _dynamic_name(typ: Any) -> str | None:
    """The Kafka name a field's type is marked dynamic under (`_dynamic`), if any."""
    for arg in typing.get_args(typ):
        if isinstance(arg, Meta) and arg.extra and "dynamic" in arg.extra:
            return str(arg.extra["dynamic"])
        found = _dynamic_name(arg) if typing.get_args(arg) else None
        if found is not None:
            return found
    return None


@functools.cache
def dynamic_settings() -> dict[str, tuple[str, str]]:
    """Every setting a running broker takes without a restart: Kafka name -> (section,
    key) of `BrokerConfig`, from the fields' ``dynamic`` markers (this file's metadata is
    the one list; the broker applies them, the operator sends them instead of a roll)."""
    out: dict[str, tuple[str, str]] = {}
    for section in msgspec.structs.fields(BrokerConfig):
        model = section.type
        if not (isinstance(model, type) and issubclass(model, Struct)):
            continue
        for f in msgspec.structs.fields(model):
            name = _dynamic_name(f.type)
            if name is not None:
                out[name] = (section.name, f.name)
    return out


def dump_toml(config: BrokerConfig) -> str:
    """Render a BrokerConfig as the TOML the broker loads (the operator's ConfigMap)."""
    import tomli_w

    return tomli_w.dumps(to_builtins(config))


# == The ShazamqCluster custom resource (operator) =========================================
#
# The spec and status of the `ShazamqCluster` CRD (shazamq.io/v1alpha1). The CRD's OpenAPI
# schema is generated from these models (`python -m shazamq.operator.crd`), and the operator
# validates every resource with them before rendering anything.
#
# Naming: Python fields are snake_case like the broker's; the CRD spells them in camelCase
# (`rename="camel"`), so `hot_tier_retention_hours` is `hotTierRetentionHours` in YAML.
#
# One source of truth: where a spec field is a broker setting, the spec model is *derived*
# from the broker model by `_derive()` (same name, type, bounds, enum and default, copied
# from the broker struct's field) rather than declared again, and a derived struct is valid
# only if the broker struct accepts its shared fields (its `__post_init__` builds one).
# `broker_settings()` gives back those shared fields as the broker's snake_case dict; the
# operator's explicit spec -> BrokerConfig mapping (`shazamq.operator.resources`) uses it.
# Fields that only make sense in Kubernetes (Secret names, pod scheduling, the PVC
# template) are declared here once, beside the derived ones.

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

SecretName = Annotated[
    str,
    Meta(
        pattern=DNS_SUBDOMAIN,
        max_length=253,
        description="Name of a Secret in the cluster's namespace.",
    ),
]
KubeObject = Annotated[
    dict[str, Any],
    Meta(
        description="A Kubernetes object, passed through unchanged.",
        extra_json_schema={"x-kubernetes-preserve-unknown-fields": True},
    ),
]
StringMap = dict[str, str]
PromDuration = Annotated[str, Meta(pattern=r"^([0-9]+(ms|s|m|h|d|w|y))+$")]


class _Spec(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True, rename="camel"):
    """Base of the custom resource's spec models: camelCase keys, unknown keys rejected."""


class _Status(Struct, kw_only=True, rename="camel"):
    """Base of the status models; every field is always written (a merge patch must reset)."""


def _field_default(model: type[Struct], name: str) -> Any:
    """The default of ``model.name``, so a spec field can share a broker field's default."""
    info = {f.name: f for f in msgspec.structs.fields(model)}[name]
    if info.default is not msgspec.NODEFAULT:
        return info.default
    if info.default_factory is not msgspec.NODEFAULT:
        return info.default_factory()
    raise TypeError(f"{model.__name__}.{name} has no default")


def broker_settings(spec: Struct) -> dict[str, Any]:
    """The broker settings a derived spec struct holds, as the broker model's snake_case dict.

    Nested derived structs and lists of them are converted too; spec-only fields (such as
    ``credentials_secret``) are left out.
    """
    shared: tuple[str, ...] = getattr(type(spec), "__shared_fields__", ())

    def convert(value: Any) -> Any:
        if isinstance(value, Struct) and hasattr(type(value), "__shared_fields__"):
            return broker_settings(value)
        if isinstance(value, list | tuple):
            return [convert(v) for v in value]
        return value

    return {name: convert(getattr(spec, name)) for name in shared}


def _check_with_broker_model(self: Struct) -> None:
    """`__post_init__` of derived structs: the broker model must accept the shared fields."""
    model: type[Struct] = type(self).__broker_model__  # type: ignore[attr-defined]
    try:
        msgspec.convert(broker_settings(self), model)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None
    extra_check = getattr(type(self), "__extra_check__", None)
    if extra_check is not None:
        extra_check(self)


def _derive(
    model: type[Struct],
    name: str,
    doc: str,
    *,
    keep: tuple[str, ...],
    types: Mapping[str, Any] | None = None,
    extra: tuple[tuple[Any, ...], ...] = (),
) -> type[_Spec]:
    """A spec struct whose `keep` fields are copied (type, bounds, default) from `model`.

    `types` replaces the type of nested struct fields by their derived spec counterparts
    (the default is still the broker's); `extra` adds spec-only fields as
    ``(name, type[, default])`` tuples.
    """
    infos = {f.name: f for f in msgspec.structs.fields(model)}
    fields: list[tuple[Any, ...]] = []
    for field_name in keep:
        info = infos[field_name]
        typ = (types or {}).get(field_name, info.type)
        if info.default is not msgspec.NODEFAULT:
            fields.append((field_name, typ, info.default))
        elif info.default_factory is not msgspec.NODEFAULT:
            fields.append((field_name, typ, msgspec.field(default_factory=info.default_factory)))
        else:
            fields.append((field_name, typ))
    fields.extend(extra)
    return msgspec.defstruct(
        name,
        fields,
        bases=(_Spec,),
        module=__name__,
        kw_only=True,
        namespace={
            "__doc__": doc,
            "__broker_model__": model,
            "__shared_fields__": keep,
            "__post_init__": _check_with_broker_model,
        },
    )


def _default_volume_claim_template() -> dict[str, Any]:
    return {
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "10Gi"}},
        }
    }


StorageSpec = _derive(
    StorageConfig,
    "StorageSpec",
    "Broker storage: the volume of each broker and the log's roll and retention settings.",
    keep=("segment_bytes", "retention_hours", "retention_bytes"),
    extra=(
        (
            "volume_claim_template",
            Annotated[
                KubeObject,
                Meta(
                    description="PersistentVolumeClaim template (metadata and spec) of each "
                    "broker's data volume. Claims are kept when the cluster is deleted."
                ),
            ],
            msgspec.field(default_factory=_default_volume_claim_template),
        ),
    ),
)

_CredentialsSecret = Annotated[
    SecretName | None,
    Meta(description="Secret holding the credentials (see the field's parent for its keys)."),
]

S3Spec = _derive(
    S3Config,
    "S3Spec",
    "An S3 (or S3-compatible) bucket. The credentials Secret holds the keys "
    "`access-key-id` and `secret-access-key`; without it the AWS credential chain is used.",
    keep=("bucket", "region", "prefix", "endpoint"),
    extra=(("credentials_secret", _CredentialsSecret, None),),
)

GcsSpec = _derive(
    GcsConfig,
    "GcsSpec",
    "A Google Cloud Storage bucket. The credentials Secret holds a service account JSON "
    "under the key `credentials.json`; without it the application default credentials are "
    "used.",
    keep=("bucket", "prefix", "endpoint"),
    extra=(("credentials_secret", _CredentialsSecret, None),),
)

TieredStorageSpec = _derive(
    TieredStorageConfig,
    "TieredStorageSpec",
    TieredStorageConfig.__doc__ or "",
    keep=("enabled", "provider", "hot_tier_retention_hours", "s3", "gcs"),
    types={"s3": S3Spec | None, "gcs": GcsSpec | None},
    extra=(
        (
            "restore",
            Annotated[
                bool,
                Meta(
                    description="A new cluster whose bucket and prefix hold an earlier "
                    "cluster restores it (its brokers take that cluster's id). False ties "
                    "the cluster id to this resource: brokers then refuse a bucket "
                    "holding another cluster's data."
                ),
            ],
            True,
        ),
    ),
)

MirrorSourceSpec = _derive(
    MirrorSource,
    "MirrorSourceSpec",
    "One foreign Kafka cluster whose topics the brokers mirror. The credentials Secret "
    "holds the SASL `username` and `password`; the CA Secret the source's CA certificate "
    "(`ca.crt`); the client certificate Secret a `tls.crt` and `tls.key` for sources that "
    "authenticate clients by certificate. Each is mounted as files into the brokers.",
    keep=(
        "name",
        "bootstrap_servers",
        "security_protocol",
        "sasl_mechanism",
        "topic_whitelist",
        "topic_blacklist",
        "topic_prefix",
        "promoted_topics",
        "consumer_group_id",
        "num_consumers",
        "exactly_once",
        "sync_group_offsets",
        "group_whitelist",
        "group_blacklist",
        "sync_group_offsets_interval_ms",
        "metadata_refresh_interval_ms",
    ),
    extra=(
        ("credentials_secret", _CredentialsSecret, None),
        (
            "ca_secret",
            Annotated[
                SecretName | None,
                Meta(description="Secret with the source's CA certificate, key `ca.crt`."),
            ],
            None,
        ),
        (
            "client_certificate_secret",
            Annotated[
                SecretName | None,
                Meta(
                    description="Secret with a client certificate for the source, keys "
                    "`tls.crt` and `tls.key` (a kubernetes.io/tls Secret)."
                ),
            ],
            None,
        ),
    ),
)

MirrorSpec = _derive(
    MirrorConfig,
    "MirrorSpec",
    MirrorConfig.__doc__ or "",
    keep=("enabled", "sources"),
    types={
        "sources": Annotated[
            list[MirrorSourceSpec],  # type: ignore[valid-type]
            Meta(description="The clusters to mirror from."),
        ]
    },
)

ReplicationSpec = _derive(
    ReplicationConfig,
    "ReplicationSpec",
    ReplicationConfig.__doc__ or "",
    keep=("default_replication_factor", "min_insync_replicas"),
)


class LocalObjectReference(_Spec):
    """A reference to an object of the cluster's namespace, by name."""

    name: Annotated[str, Meta(pattern=DNS_SUBDOMAIN, max_length=253, description="Its name.")]


class ServiceSpec(_Spec):
    """The client Service, and the broker ports behind it."""

    type: Annotated[
        Literal["ClusterIP", "NodePort", "LoadBalancer"],
        Meta(description="Type of the client Service."),
    ] = "ClusterIP"
    port: Annotated[
        Port, Meta(description="Kafka port of the brokers and of the client Service.")
    ] = _field_default(BrokerSection, "port")
    metrics_port: Annotated[Port, Meta(description="Prometheus port of the brokers.")] = (
        _field_default(MetricsConfig, "port")
    )
    annotations: Annotated[
        StringMap,
        Meta(description="Annotations of the client Service (for example a load balancer's)."),
    ] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.port == self.metrics_port:
            raise ValueError("port and metricsPort must differ")


class TlsSpec(_Spec):
    """TLS on the brokers' Kafka listener."""

    enabled: Annotated[bool, Meta(description="Serve the Kafka listener over TLS.")] = (
        _field_default(TlsConfig, "enabled")
    )
    secret_name: Annotated[
        SecretName | None,
        Meta(description="A kubernetes.io/tls Secret (keys tls.crt and tls.key)."),
    ] = None

    def __post_init__(self) -> None:
        if self.enabled and not self.secret_name:
            raise ValueError("TLS needs secretName")


OAuthBearerSpec = _derive(
    OAuthBearerConfig,
    "OAuthBearerSpec",
    "How the brokers validate SASL/OAUTHBEARER tokens: signed JWTs checked against the "
    "issuer's JSON Web Key Set (jwksUrl), its iss and aud claims, scopes and clock skew.",
    keep=(
        "validator",
        "jwks_url",
        "jwks_refresh_ms",
        "algorithms",
        "expected_issuer",
        "expected_audience",
        "principal_claim",
        "scope_claim",
        "required_scopes",
        "clock_skew_seconds",
    ),
    types={
        "validator": Annotated[
            Literal["jwks", "unsecured"],
            Meta(
                description="jwks: signed JWTs verified against the keys at jwksUrl "
                "(production); unsecured: unsigned tokens (alg none) taken at their word, "
                "for development only."
            ),
        ]
    },
)

# The password mechanism the operator (and a cluster's brokers) log in with when clients
# use OAUTHBEARER: a cluster's listener always offers one beside tokens.
OAUTHBEARER_PASSWORD_MECHANISM: SaslMechanism = "SCRAM-SHA-512"


class AuthSpec(_Spec):
    """SASL authentication on the brokers' Kafka listener."""

    enabled: Annotated[
        bool, Meta(description="Require SASL authentication on the Kafka listener.")
    ] = _field_default(SaslConfig, "enabled")
    mechanism: Annotated[
        ListenerSaslMechanism,
        Meta(
            description="The SASL mechanism clients use. OAUTHBEARER needs oauthbearer; the "
            "listener then also offers SCRAM-SHA-512, which the operator's own user logs in "
            "with."
        ),
    ] = _field_default(SaslConfig, "mechanisms")[0]
    secret_name: Annotated[
        SecretName | None,
        Meta(
            description='Secret whose key `users.toml` holds `[users]` name = "password": '
            "the password users (with OAUTHBEARER too: it may hold none but the header)."
        ),
    ] = None
    oauthbearer: Annotated[
        OAuthBearerSpec | None,  # type: ignore[valid-type]
        Meta(
            description="Token validation for OAUTHBEARER: required with mechanism "
            "OAUTHBEARER; beside a password mechanism, the listener offers both."
        ),
    ] = None

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        if not self.secret_name:
            raise ValueError("authentication needs secretName")
        if self.mechanism == "OAUTHBEARER" and self.oauthbearer is None:
            raise ValueError("mechanism OAUTHBEARER needs oauthbearer (how tokens are validated)")

    @property
    def password_mechanism(self) -> SaslMechanism:
        """The mechanism the operator's user (a password user) logs in with."""
        if self.mechanism == "OAUTHBEARER":
            return OAUTHBEARER_PASSWORD_MECHANISM
        return self.mechanism

    @property
    def listener_mechanisms(self) -> list[ListenerSaslMechanism]:
        """What the brokers' listener offers: the clients' mechanism first."""
        out: list[ListenerSaslMechanism] = [self.mechanism]
        if self.mechanism == "OAUTHBEARER":
            out.append(OAUTHBEARER_PASSWORD_MECHANISM)
        elif self.oauthbearer is not None:
            out.append("OAUTHBEARER")
        return out


AuthorizationSpec = _derive(
    AuthorizationConfig,
    "AuthorizationSpec",
    "ACLs on the brokers: who may do what, managed with the Kafka admin APIs (CreateAcls). "
    "Needs auth (the brokers and the operator authenticate with SASL); the operator's own "
    "user is added to the super users.",
    keep=("enabled", "super_users", "allow_everyone_if_no_acl_found"),
)


class SecuritySpec(_Spec):
    """Listener security."""

    enabled: Annotated[
        bool | None,
        Meta(
            description="Master switch of tls, auth and authorization: false turns them off "
            "whatever they say; true or unset leaves each to its own enabled."
        ),
    ] = None
    tls: TlsSpec = msgspec.field(default_factory=TlsSpec)
    auth: AuthSpec = msgspec.field(default_factory=AuthSpec)
    authorization: AuthorizationSpec = msgspec.field(  # type: ignore[valid-type]
        default_factory=AuthorizationSpec
    )


class ServiceMonitorSpec(_Spec):
    """A Prometheus Operator ServiceMonitor scraping every broker."""

    enabled: Annotated[bool, Meta(description="Create the ServiceMonitor.")] = False
    interval: Annotated[PromDuration, Meta(description="Scrape interval.")] = "30s"
    scrape_timeout: Annotated[PromDuration, Meta(description="Scrape timeout.")] = "10s"


class PrometheusRuleSpec(_Spec):
    """A Prometheus Operator PrometheusRule alerting on the brokers' metrics."""

    enabled: Annotated[bool, Meta(description="Create the PrometheusRule.")] = False
    labels: Annotated[
        StringMap,
        Meta(description="Extra labels of the PrometheusRule (for a Prometheus ruleSelector)."),
    ] = msgspec.field(default_factory=dict)
    consumer_lag_threshold: Annotated[
        int,
        Meta(ge=1, description="Records a consumer group may lag on a topic before it alerts."),
    ] = 10000
    disk_usage_threshold_percent: Annotated[
        int,
        Meta(ge=1, le=99, description="Used percentage of a broker volume that alerts."),
    ] = 85
    tiering_lag_threshold_seconds: Annotated[
        int,
        Meta(
            ge=1,
            description="Seconds a partition may wait for its upload to the bucket before "
            "it alerts (with tiered storage).",
        ),
    ] = 600


def _grafana_sidecar_labels() -> dict[str, str]:
    return {"grafana_dashboard": "1"}


class GrafanaDashboardSpec(_Spec):
    """A ConfigMap holding a Grafana dashboard of the cluster, for Grafana's sidecar."""

    enabled: Annotated[bool, Meta(description="Create the dashboard ConfigMap.")] = False
    labels: Annotated[
        StringMap,
        Meta(
            description="Labels of the ConfigMap: those the Grafana sidecar looks for "
            '(its default is grafana_dashboard: "1").'
        ),
    ] = msgspec.field(default_factory=_grafana_sidecar_labels)
    folder: Annotated[
        Annotated[str, Meta(max_length=253)] | None,
        Meta(
            description="Grafana folder, as the annotation grafana_folder (for a sidecar "
            "with folderAnnotation: grafana_folder).",
        ),
    ] = None


class MonitoringSpec(_Spec):
    """Prometheus integration."""

    enabled: Annotated[
        bool,
        Meta(
            description="Master switch of the monitoring objects below: false renders none "
            "of them. The brokers serve /metrics either way (the operator reads it)."
        ),
    ] = True
    service_monitor: ServiceMonitorSpec = msgspec.field(default_factory=ServiceMonitorSpec)
    prometheus_rule: PrometheusRuleSpec = msgspec.field(default_factory=PrometheusRuleSpec)
    grafana_dashboard: GrafanaDashboardSpec = msgspec.field(default_factory=GrafanaDashboardSpec)


class AutoscalingTargetsSpec(_Spec):
    """The load each broker is kept at; the autoscaler follows whichever is furthest above
    its target (at least one must be set when autoscaling is enabled)."""

    bytes_in_per_second: (
        Annotated[int, Meta(ge=1, description="Produced bytes per second per broker.")] | None
    ) = None
    cpu_utilization_percent: (
        Annotated[
            int,
            Meta(
                ge=1,
                le=1000,
                description="Broker process CPU as a percentage of the pod's CPU request "
                "(its limit when there is no request) in spec.resources.",
            ),
        ]
        | None
    ) = None
    partitions: (
        Annotated[int, Meta(ge=1, description="Partition replicas hosted per broker.")] | None
    ) = None


class AutoscalingSpec(_Spec):
    """Horizontal scaling on load, decided by the operator from the brokers' own metrics and
    carried out like a change of `replicas` (partitions move; departing brokers drain)."""

    enabled: Annotated[
        bool,
        Meta(
            description="Let the operator set `replicas`. Off: `replicas` is left to you, "
            "or to an HPA or KEDA through the scale subresource."
        ),
    ] = False
    min_replicas: Annotated[int, Meta(ge=1, le=1000, description="Fewest brokers.")] = 3
    max_replicas: Annotated[int, Meta(ge=1, le=1000, description="Most brokers.")] = 10
    targets: AutoscalingTargetsSpec = msgspec.field(default_factory=AutoscalingTargetsSpec)
    scale_up_stabilization_seconds: Annotated[
        int,
        Meta(
            ge=0,
            le=3600,
            description="A scale-up happens only when every recommendation of this window "
            "asks for more brokers (to the fewest of them).",
        ),
    ] = 60
    scale_down_stabilization_seconds: Annotated[
        int,
        Meta(
            ge=0,
            le=3600,
            description="A scale-down happens only when every recommendation of this window "
            "asks for fewer brokers (to the most of them).",
        ),
    ] = 300
    metrics_window_seconds: Annotated[
        int,
        Meta(ge=1, le=3600, description="Rates (bytes in, CPU) are measured over this window."),
    ] = 60

    def __post_init__(self) -> None:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must not exceed maxReplicas")
        t = self.targets
        no_target = t.bytes_in_per_second is None and t.cpu_utilization_percent is None
        if self.enabled and no_target and t.partitions is None:
            raise ValueError("enabled autoscaling needs at least one of targets")


class ShazamqClusterSpec(_Spec):
    """The desired state of a Shazamq cluster."""

    replicas: Annotated[int, Meta(ge=0, le=1000, description="Number of brokers.")] = 3
    version: Annotated[
        str,
        Meta(
            pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$",
            description="Shazamq version: the tag of the broker image.",
        ),
    ] = "0.1.0-rc1"
    image: Annotated[
        str,
        Meta(
            pattern=r"^([a-z0-9.-]+(:[0-9]+)?/)?[a-z0-9._/-]+$",
            description="Broker image repository, without a tag (the tag is `version`).",
        ),
    ] = "shazamq/shazamq"
    image_pull_policy: Annotated[
        Literal["Always", "IfNotPresent", "Never"],
        Meta(description="Pull policy of the broker image."),
    ] = "IfNotPresent"
    image_pull_secrets: Annotated[
        list[LocalObjectReference],
        Meta(description="Secrets for pulling the broker image (the pods' imagePullSecrets)."),
    ] = msgspec.field(default_factory=list)
    storage: StorageSpec = msgspec.field(default_factory=StorageSpec)  # type: ignore[valid-type]
    tiered_storage: TieredStorageSpec = msgspec.field(  # type: ignore[valid-type]
        default_factory=TieredStorageSpec
    )
    mirror: MirrorSpec = msgspec.field(default_factory=MirrorSpec)  # type: ignore[valid-type]
    replication: ReplicationSpec = msgspec.field(  # type: ignore[valid-type]
        default_factory=ReplicationSpec
    )
    resources: Annotated[
        KubeObject, Meta(description="Compute resources (requests, limits) of each broker.")
    ] = msgspec.field(default_factory=dict)
    pod_annotations: Annotated[StringMap, Meta(description="Extra broker pod annotations.")] = (
        msgspec.field(default_factory=dict)
    )
    pod_labels: Annotated[StringMap, Meta(description="Extra broker pod labels.")] = msgspec.field(
        default_factory=dict
    )
    node_selector: Annotated[
        StringMap, Meta(description="Node labels the broker pods must run on.")
    ] = msgspec.field(default_factory=dict)
    tolerations: Annotated[
        list[KubeObject], Meta(description="Tolerations of the broker pods.")
    ] = msgspec.field(default_factory=list)
    affinity: Annotated[
        KubeObject,
        Meta(
            description="Pod affinity. When empty, brokers prefer distinct nodes "
            "(pod anti-affinity on kubernetes.io/hostname)."
        ),
    ] = msgspec.field(default_factory=dict)
    service: ServiceSpec = msgspec.field(default_factory=ServiceSpec)
    security: SecuritySpec = msgspec.field(default_factory=SecuritySpec)
    monitoring: MonitoringSpec = msgspec.field(default_factory=MonitoringSpec)
    autoscaling: AutoscalingSpec = msgspec.field(default_factory=AutoscalingSpec)
    config: Annotated[
        KubeObject,
        Meta(
            description="More broker settings, as the sections and keys of shazamq.toml "
            "(`{broker: {default_partitions: 6}}`), checked by the broker's configuration "
            "model. Settings the operator renders from other fields or from the pod's "
            "identity (ports, data directory, node id, cluster, security, tiered storage, "
            "mirror, storage and replication fields of the spec) are refused here."
        ),
    ] = msgspec.field(default_factory=dict)


ClusterPhase = Literal["Creating", "Restoring", "Running", "Updating", "Degraded", "Failed"]


class ClusterCondition(_Status, kw_only=True):
    """A Kubernetes-style condition (`Ready`, `Reconciled`)."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: Annotated[str, Meta(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")]
    message: str = ""
    last_transition_time: Annotated[str, Meta(extra_json_schema={"format": "date-time"})]
    observed_generation: int | None = None


class BrokerStatus(_Status, kw_only=True):
    """One broker: its id, pod, the address it advertises to clients, and its roles."""

    id: int
    pod: str
    address: str
    ready: bool = False
    leader: Annotated[
        bool, Meta(description="Whether this broker is the active controller (quorum leader).")
    ] = False


class RollStatus(_Status, kw_only=True):
    """A rolling restart in progress: the broker being rolled and what the roll waits for."""

    revision: Annotated[
        str | None, Meta(description="The StatefulSet revision the brokers are rolled to.")
    ] = None
    broker: Annotated[
        str | None, Meta(description="The pod being restarted or waited for, if any.")
    ] = None
    waiting_for: Annotated[str, Meta(description="Why the roll is not restarting now.")] = ""
    restarted: Annotated[
        list[str], Meta(description="Pods restarted so far in this roll, in order.")
    ] = msgspec.field(default_factory=list)
    paused: Annotated[
        bool, Meta(description="Paused by the annotation shazamq.io/pause-reconcile.")
    ] = False


class ScalingStatus(_Status, kw_only=True):
    """A scaling that moves data: partitions reassigned onto new brokers, or away from
    departing ones before the StatefulSet shrinks."""

    from_replicas: Annotated[int, Meta(description="Brokers before the scaling.")] = 0
    to_replicas: Annotated[int, Meta(description="Brokers after it (spec.replicas).")] = 0
    waiting_for: Annotated[str, Meta(description="What the scaling waits for now.")] = ""
    moving: Annotated[int, Meta(description="Partitions whose reassignment is in progress.")] = 0
    refused: Annotated[str | None, Meta(description="Why the scaling is refused, if it is.")] = None


class MirrorSourceStatus(_Status, kw_only=True):
    """One mirror source as the brokers report it (their shazamq_mirror_* metrics)."""

    name: Annotated[str, Meta(description="The source's name (spec.mirror.sources[].name).")]
    state: Annotated[
        str,
        Meta(
            description="connected, starting, down or stopped; the worst any broker reports "
            "(each broker copies the mirrored partitions it leads)."
        ),
    ] = "starting"
    brokers: Annotated[int, Meta(description="Brokers reporting this source.")] = 0
    partitions: Annotated[int, Meta(description="Mirrored partitions being copied.")] = 0
    lag_records: Annotated[
        int, Meta(description="Records the copies are behind the source, all partitions.")
    ] = 0


class AutoscalingStatus(_Status, kw_only=True):
    """The operator's autoscaler: its last decision and the load it saw."""

    desired_replicas: Annotated[int, Meta(description="Brokers the last decision asked for.")]
    reason: Annotated[str, Meta(description="Why (the last decision, in words).")] = ""
    last_decision_time: str | None = None
    last_scale_time: Annotated[
        str | None, Meta(description="When the autoscaler last changed `replicas`.")
    ] = None
    bytes_in_per_second: Annotated[
        float | None, Meta(description="Produced bytes per second per broker.")
    ] = None
    cpu_utilization_percent: Annotated[
        float | None, Meta(description="Broker CPU, percent of the pod's request (or limit).")
    ] = None
    partitions: Annotated[
        float | None, Meta(description="Partition replicas hosted per broker.")
    ] = None
    disabled_by: Annotated[
        str | None,
        Meta(description="The HorizontalPodAutoscaler that scales this cluster instead, if any."),
    ] = None


class RestoreStatus(_Status, kw_only=True):
    """A restore of this cluster from its tiered storage bucket, as the brokers report it."""

    state: Literal["Restoring", "Restored"]
    topics: Annotated[int, Meta(description="Topics in the bucket's cluster document.")] = 0
    partitions: Annotated[int, Meta(description="Their partitions.")] = 0
    partitions_restored: Annotated[
        int, Meta(description="Partitions whose local log was laid out from the bucket.")
    ] = 0
    bytes: Annotated[
        int, Meta(description="Bytes of history in the bucket behind the restored partitions.")
    ] = 0
    groups: Annotated[
        int, Meta(description="Consumer groups the brokers held when the restore ended.")
    ] = 0
    start_time: str | None = None
    completion_time: str | None = None


class DynamicConfigStatus(_Status, kw_only=True):
    """Settings applied to the running brokers without a restart (IncrementalAlterConfigs)."""

    settings: Annotated[
        dict[str, str],
        Meta(description="The settings last changed this way, by their Kafka names."),
    ] = msgspec.field(default_factory=dict)
    brokers: Annotated[
        list[str], Meta(description="Pods running the current dynamic settings.")
    ] = msgspec.field(default_factory=list)
    pending: Annotated[
        list[str], Meta(description="Pods not yet given them (not ready, or not answering).")
    ] = msgspec.field(default_factory=list)
    error: Annotated[str | None, Meta(description="Why the last attempt failed, if it did.")] = None
    last_applied_time: str | None = None


class ShazamqClusterStatus(_Status, kw_only=True):
    """The observed state of a Shazamq cluster, written by the operator."""

    phase: ClusterPhase | None = None
    replicas: int = 0
    ready_replicas: int = 0
    selector: Annotated[
        str | None, Meta(description="Label selector of the broker pods (scale subresource).")
    ] = None
    observed_generation: int | None = None
    conditions: list[ClusterCondition] = msgspec.field(default_factory=list)
    brokers: list[BrokerStatus] = msgspec.field(default_factory=list)
    roll: RollStatus | None = None
    scaling: ScalingStatus | None = None
    mirror_sources: Annotated[
        list[MirrorSourceStatus],
        Meta(description="Each mirror source's state, read from the brokers' metrics."),
    ] = msgspec.field(default_factory=list)
    autoscaling: AutoscalingStatus | None = None
    restore: RestoreStatus | None = None
    dynamic_config: DynamicConfigStatus | None = None
