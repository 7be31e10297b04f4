"""The composition root: builds a running broker from its parts and tears it down.

Nothing else wires components together. The parts (metadata store, log manager,
partitions, group and transaction coordinators, API handlers, listener, metrics) know
only what they are handed here, so a new feature plugs in by being constructed and
started in this one place.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import functools
import logging
import os
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from shazamq.config import BrokerConfig, ConfigError
from shazamq.mirror.local import LocalBroker
from shazamq.mirror.service import MirrorService

from . import apis
from .apis import (
    acls,
    api_versions,
    authz,
    client_quotas,
    cluster,
    configs,
    fetch,
    list_offsets,
    log_dirs,
    metadata,
    produce,
    replication,
    scram,
    telemetry,
    topics,
)
from .apis import consumer_groups as consumer_groups_api
from .apis import groups as groups_api
from .apis import sasl as sasl_api
from .apis import share_groups as share_groups_api
from .apis import share_state as share_state_api
from .apis import txn as txn_api
from .cluster.metadata import MetadataStore, TopicInfo
from .groups import GroupCoordinator
from .groups.share_coordinator import ShareCoordinator
from .log import LogManager, count_partition_dirs, open_files
from .log.manager import LogDirsError, check_log_dirs_in_use
from .log.writer import LogWriter
from .log_dir_moves import LogDirMover
from .metrics import BrokerMetrics, BrokerState
from .partitions import PartitionManager, default_log_config, expected_topic_id
from .process import check_open_file_limit, raise_open_file_limit, tune_for_serving
from .security import INTERNAL_USER, CredentialStore, build_credential_store
from .security.acl import Authorizer
from .security.oauthbearer_keys import JwksRefresher, build_validator
from .security.tls import certificate_principals
from .security.tls_reload import CertificateReloader
from .server import ConnectionLimits, KafkaServer, Session
from .tasks import cancel_all
from .tier.manager import TierManager, open_store
from .tier.manifest import ClusterMetadata
from .tier.metrics import TierMetrics
from .tier.restore import (
    ClusterRestore,
    check_same_cluster,
    has_local_metadata,
    read_cluster,
    restore_if_empty,
)
from .tier.store import StoreError
from .txn import TransactionCoordinator

if TYPE_CHECKING:
    from .cluster.node import ClusterNode
    from .cluster.state import TopicState

log = logging.getLogger(__name__)

# how long a restarting broker (local data) waits for the bucket before it serves: the
# check of the bucket's cluster document then happens before the tier first uses it
BUCKET_AT_START_S = 3.0

_WILDCARD = {"", "0.0.0.0", "::"}


def resolve_node_id(config: BrokerConfig, hostname: str | None = None) -> int:
    """The broker id: configured, or the trailing ordinal of a StatefulSet pod's hostname."""
    b = config.broker
    if not b.node_id_from_hostname:
        return b.node_id
    hostname = hostname or socket.gethostname()
    m = re.search(r"-(\d+)$", hostname.split(".")[0])
    if m is None:
        raise ConfigError(
            f"broker.node_id_from_hostname is set but hostname {hostname!r} has no "
            "trailing -<ordinal>"
        )
    return int(m.group(1))


def _certificate_principals(
    config: BrokerConfig,
) -> Callable[[dict[str, Any]], str | None] | None:
    """mTLS: client certificates' principals, when the listener verifies them."""
    tls = config.security.tls
    if not (tls.enabled and tls.ca_file):
        return None
    try:
        return certificate_principals(tls.principal_mapping_rules)
    except ValueError as exc:
        raise ConfigError(f"security.tls.principal_mapping_rules: {exc}") from None


def _tls_context(config: BrokerConfig) -> ssl.SSLContext | None:
    tls = config.security.tls
    if not tls.enabled:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    assert tls.cert_file and tls.key_file
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"security.tls.cert_file ({tls.cert_file}) / key_file ({tls.key_file}): "
            f"cannot be loaded: {exc}"
        ) from None
    if tls.ca_file:
        try:
            ctx.load_verify_locations(tls.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"security.tls.ca_file ({tls.ca_file}): cannot be loaded: {exc}"
            ) from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _required_tls_context(config: BrokerConfig) -> ssl.SSLContext:
    ctx = _tls_context(config)
    assert ctx is not None, "only called with TLS enabled"
    return ctx


class Broker:
    """One running broker."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.node_id = resolve_node_id(config)
        self.metrics = BrokerMetrics()
        self.data_dir = Path(config.broker.data_dir)
        self._lock_fd: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.metrics_port: int | None = None
        self.metadata: MetadataStore
        self.logs: LogManager
        # every append (clients, followers, coordinators, mirrors) runs here, in order
        # per partition, off the event loop
        self.log_writer = LogWriter()
        self.partitions: PartitionManager
        self.groups: GroupCoordinator
        self.share: ShareCoordinator
        self.txn: TransactionCoordinator
        self.dispatcher = apis.Dispatcher(self.metrics)
        self.server: KafkaServer
        # SASL users (derived credentials only), when [security.sasl] is enabled
        self.credentials: CredentialStore | None = None
        # the threads that hash SASL passwords (security.sasl.hash_threads)
        self.sasl_pool: concurrent.futures.ThreadPoolExecutor | None = None
        # keeps OAUTHBEARER's JWKS keys fresh (validator "jwks")
        self.jwks_refresher: JwksRefresher | None = None
        # ACL decisions, when [security.authorization] is enabled
        self.authorizer: Authorizer | None = None
        # membership of a multi-broker cluster, when [cluster] voters are set
        self.cluster: ClusterNode | None = None
        # tiered storage, when [tiered_storage] is enabled
        self.tier: TierManager | None = None
        self.log_dir_moves: LogDirMover | None = None
        # mirroring from foreign Kafka clusters, when [mirror] is enabled
        self.mirror: MirrorService | None = None

    # -- identity ----------------------------------------------------------------------

    @property
    def advertised(self) -> tuple[str, int]:
        b = self.config.broker
        host = b.advertised_host or (b.host if b.host not in _WILDCARD else socket.gethostname())
        return host, b.advertised_port or self.server.port

    # -- lifecycle ---------------------------------------------------------------------

    def _lock_data_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"broker.data_dir {self.data_dir} is in use by another broker"
            ) from None
        self._lock_fd = fd

    async def start(self) -> None:
        started = time.monotonic()
        cfg = self.config
        loop = asyncio.get_running_loop()
        # Security first, so a bad certificate or users file stops the broker at once.
        ssl_context = _tls_context(cfg)
        certificate_principal = _certificate_principals(cfg)
        sasl = cfg.security.sasl
        if sasl.enabled:
            secret = cfg.cluster.read_secret() if cfg.cluster.enabled else None
            self.credentials = await loop.run_in_executor(
                None, build_credential_store, sasl, secret
            )
            self.sasl_pool = concurrent.futures.ThreadPoolExecutor(
                sasl.hash_threads, thread_name_prefix="sasl-hash"
            )
            if sasl.oauthbearer is not None and "OAUTHBEARER" in sasl.mechanisms:
                validator, self.jwks_refresher = build_validator(sasl.oauthbearer)
                if self.jwks_refresher is not None:
                    await self.jwks_refresher.start()
                self.credentials.oauthbearer = validator
            log.info(
                "SASL enabled (%s) for %d users",
                ", ".join(self.credentials.mechanisms),
                len(self.credentials),
            )
        self._lock_data_dir()
        raise_open_file_limit()
        partition_dirs = cfg.broker.partition_dirs()
        try:
            check_log_dirs_in_use(str(self.data_dir), partition_dirs)
        except LogDirsError as exc:
            raise ConfigError(f"broker.log_dirs: {exc}") from None
        open_files.BUDGET.set_limit(
            check_open_file_limit(
                count_partition_dirs(*partition_dirs), cfg.storage.max_open_segment_files
            )
        )
        self.metrics.state = BrokerState.RECOVERING
        clustered = cfg.cluster.enabled
        tier_store = None
        bucket_cluster = None
        bucket_later = False  # the bucket did not answer at start; the tier reads it later
        if cfg.tiered_storage.enabled:
            tier_metrics = TierMetrics(self.metrics.registry)
            tier_store = await open_store(cfg.tiered_storage, tier_metrics)
            if clustered:  # a cluster restores through its metadata log
                read: Awaitable[Any] = read_cluster(tier_store, cfg.broker.cluster_id)
            else:
                read = restore_if_empty(
                    tier_store,
                    self.data_dir,
                    cfg.broker.cluster_id,
                    [Path(d) for d in partition_dirs],
                )
            if not has_local_metadata(self.data_dir):
                # a restore (or a new broker): nothing to serve before the bucket answers
                got = await read
            else:
                # a restart: local data is served whether or not the bucket answers; it
                # is checked here if it answers at once, else before the tier uses it
                got = None
                try:
                    got = await asyncio.wait_for(read, BUCKET_AT_START_S)
                except (TimeoutError, StoreError) as exc:
                    bucket_later = True
                    log.warning(
                        "the bucket does not answer at start (%s): serving local data, "
                        "tiered storage catches up when it does",
                        exc if isinstance(exc, StoreError) else f"{BUCKET_AT_START_S:.0f}s",
                    )
            if clustered:
                bucket_cluster = got
        if not clustered:  # first: folders it does not know are quarantined, not opened
            self.metadata = MetadataStore(self.data_dir, cfg.broker.cluster_id)
        open_logs = functools.partial(
            LogManager,
            self.data_dir,
            default_log_config(cfg),
            log_dirs=partition_dirs,
            # in a cluster the leader moves the high watermark as followers catch up
            auto_high_watermark=not clustered,
            dedupe_buffer_bytes=cfg.storage.cleaner_dedupe_buffer_bytes,
            expected=None if clustered else functools.partial(expected_topic_id, self.metadata),
        )
        try:
            self.logs = await loop.run_in_executor(None, open_logs)
        except LogDirsError as exc:
            raise ConfigError(f"broker.log_dirs: {exc}") from None
        adopt_bucket: Callable[[ClusterMetadata | None], None] | None = None
        if clustered:
            self._build_cluster()
            assert self.cluster is not None
            node = self.cluster

            def adopt_bucket(meta: ClusterMetadata | None) -> None:
                """The bucket's cluster document (None: it has none), read at start or
                later: partitions of its topics with no local folder are laid out from
                it."""
                assert tier_store is not None
                if meta is not None and node.restorer is None:
                    node.restorer = ClusterRestore(
                        tier_store,
                        self.data_dir,
                        meta,
                        tier_metrics,
                        [Path(d) for d in partition_dirs],
                    )
                node.bucket_pending = False

            if tier_store is not None and not bucket_later:
                adopt_bucket(bucket_cluster)
            node.bucket_pending = bucket_later
        else:
            self.partitions = PartitionManager(cfg, self.metadata, self.logs)
        self.partitions.writer = self.log_writer
        await loop.run_in_executor(None, self.partitions.load)
        self.log_dir_moves = LogDirMover(self.partitions)
        if tier_store is not None:
            self.tier = TierManager(
                cfg.tiered_storage,
                self.partitions,
                tier_metrics,
                self.metrics,
                self.data_dir,
                on_bucket_cluster=adopt_bucket,
            )
        self.txn = TransactionCoordinator(self)
        self.groups = GroupCoordinator(self)
        self.share = ShareCoordinator(self)
        modules = [
            api_versions,
            metadata,
            produce,
            fetch,
            list_offsets,
            topics,
            configs,
            cluster,
            replication,
            log_dirs,
            groups_api,
            consumer_groups_api,
            share_groups_api,
            share_state_api,
            txn_api,
            scram,
            acls,
            client_quotas,
            telemetry,
        ]
        if sasl.enabled:
            modules.append(sasl_api)
        for module in modules:
            module.register(self.dispatcher, self)
        authorization = cfg.security.authorization
        if authorization.enabled:
            self.authorizer = Authorizer(
                acls.stored_acls(self),
                # the brokers' own principal (replica fetches, markers) may do anything
                super_users=[*authorization.super_users, f"User:{INTERNAL_USER}"],
                allow_everyone_if_no_acl_found=authorization.allow_everyone_if_no_acl_found,
            )
            if self.cluster is not None:
                self.cluster.on_acls_changed.append(self.refresh_acls)
            authz.install(self.dispatcher, self, self.authorizer)
            log.info("authorization enabled with %d ACLs", len(self.authorizer.acls))
        self.server = KafkaServer(
            self.dispatcher,
            self.metrics,
            host=cfg.broker.host,
            port=cfg.broker.port,
            max_request_bytes=cfg.broker.socket_request_max_bytes,
            ssl_context=ssl_context,
            on_connect=self._on_connect if sasl.enabled else None,
            require_authentication=sasl.enabled,
            certificate_principal=certificate_principal,
            limits=ConnectionLimits(
                max_unauthenticated_bytes=sasl.max_receive_bytes,
                idle_ms=cfg.broker.connections_max_idle_ms,
                authentication_timeout_ms=sasl.authentication_timeout_ms if sasl.enabled else 0,
                max_connections=cfg.broker.max_connections,
                max_connections_per_ip=cfg.broker.max_connections_per_ip,
                max_inflight_bytes=cfg.broker.queued_max_request_bytes,
            ),
        )
        if self.cluster is not None:
            # Clients are served only once this broker has caught up with the metadata log
            # (its registration, the newest record it waits for, has applied): a listener
            # opened during the replay would answer Metadata from a half-built image.
            await self.cluster.start()
            await self._await_membership()
            if bucket_cluster is not None:  # another cluster's bucket: never mix histories
                check_same_cluster(bucket_cluster, self.cluster.state.cluster_id)
            if self.cluster.registered.is_set():  # the metadata image is complete
                await loop.run_in_executor(None, self._quarantine_strays)
        await self.txn.start()
        await self.groups.start()
        await self.share.start()
        if self.tier is not None:
            await self.tier.start(tier_store)
        await self.server.start()
        tune_for_serving()
        if cfg.metrics.enabled:
            self.metrics_port = self.metrics.serve(cfg.metrics.host, cfg.metrics.port)
        self.metrics.add_probe(self._partition_probe)
        if self.cluster is not None:
            self.metrics.add_probe(self.cluster.probe)
            # DeleteTopics reaches only the controller; every broker drops its own children.
            self.cluster.on_topics_changed.append(self._forget_deleted_topics)
        if cfg.mirror.enabled:  # in a cluster: each broker copies what it leads
            self.mirror = MirrorService(
                cfg.mirror,
                LocalBroker(
                    self.partitions, self.groups, lambda: self.metadata.cluster_id, self.txn
                ),
                client_id=f"shazamq-mirror-{self.node_id}",
            )
            await self.mirror.start()
            self.metrics.add_probe(self.mirror.probe)
        self._tasks.append(asyncio.create_task(self._maintenance_loop(), name="maintenance"))
        self._tasks.append(asyncio.create_task(self._flush_loop(), name="flush"))
        tls = cfg.security.tls
        if self.server.ssl_context is not None and tls.reload_check_interval_ms > 0:
            assert tls.cert_file and tls.key_file
            reloader = CertificateReloader(
                self.server.ssl_context,
                functools.partial(_required_tls_context, cfg),
                [p for p in (tls.cert_file, tls.key_file, tls.ca_file) if p],
            )
            self._tasks.append(
                asyncio.create_task(
                    reloader.run(tls.reload_check_interval_ms / 1000), name="tls-reload"
                )
            )
        self.metrics.state = BrokerState.RUNNING
        log.info(
            "broker %d of cluster %s listening on %s:%d (advertised %s:%d), %d partitions, "
            "started in %.2fs",
            self.node_id,
            self.metadata.cluster_id,
            cfg.broker.host,
            self.server.port,
            *self.advertised,
            len(self.partitions.partitions),
            time.monotonic() - started,
        )

    async def stop(self) -> None:
        self.metrics.state = BrokerState.SHUTTING_DOWN
        grace = self.config.broker.shutdown_timeout_ms / 1000
        await cancel_all(self._tasks)
        if self.mirror is not None:
            await self.mirror.stop()
        if self.cluster is not None:
            await self.cluster.controlled_shutdown(
                min(self.config.cluster.controlled_shutdown_timeout_ms / 1000, grace)
            )
        await self.server.stop(grace=min(grace, 2.0))
        await self.share.stop()
        await self.groups.stop()
        await self.txn.stop()
        if self.tier is not None:  # the tail goes to the bucket before the logs close
            await self.tier.stop(grace)
        if self.cluster is not None:
            await self.cluster.stop()
        if self.log_dir_moves is not None:
            await self.log_dir_moves.stop()
        await self.log_writer.stop()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.logs.close)
        self.metrics.close()
        if self.sasl_pool is not None:
            self.sasl_pool.shutdown(wait=False, cancel_futures=True)
        if self.jwks_refresher is not None:
            await self.jwks_refresher.stop()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        log.info("broker %d stopped cleanly", self.node_id)

    def refresh_acls(self) -> None:
        """Decide by the ACLs now in the metadata (after a change or a restored snapshot)."""
        if self.authorizer is not None:
            self.authorizer.replace(acls.stored_acls(self))

    def _build_cluster(self) -> None:
        """Wire the cluster node, its metadata view and the partition manager together."""
        # imported here: a single broker never loads Raft (pysyncobj) or the replica fetcher
        from .cluster.node import ClusterNode
        from .cluster.view import ClusterMetadataView

        cfg = self.config
        self.partitions = PartitionManager(cfg, None, self.logs)  # type: ignore[arg-type]
        node = ClusterNode(
            cfg,
            node_id=self.node_id,
            data_dir=self.data_dir,
            advertised=lambda: self.advertised,
            partitions=self.partitions,
        )
        view = ClusterMetadataView(node, on_configs=self._topic_configs_changed)
        self.metadata = view  # type: ignore[assignment]
        self.partitions.metadata = view  # type: ignore[assignment]
        self.partitions.cluster = node
        self.cluster = node

    def _topic_configs_changed(self, topic: TopicInfo) -> None:
        try:
            cfg = self.partitions.log_config(topic)
        except Exception:
            log.exception("topic %s: configs from the cluster do not apply", topic.name)
            return
        for i in range(topic.partitions):
            p = self.partitions.get(topic.name, i)
            if p is not None:
                p.log.update_config(cfg)

    async def _await_membership(self) -> None:
        """Wait (bounded) until this broker is registered, so it starts as a member."""
        assert self.cluster is not None
        timeout = self.config.cluster.session_timeout_ms / 1000
        try:
            await asyncio.wait_for(self.cluster.registered.wait(), timeout)
        except TimeoutError:
            log.warning(
                "not registered with the cluster after %.0fs (no quorum yet?); serving what "
                "is known and retrying in the background",
                timeout,
            )

    def _quarantine_strays(self) -> None:
        """Quarantine (``-stray``) the logs of topics the cluster deleted, or created
        again under another id, while this broker was away."""
        for topic, index in self.partitions.strays():
            self.logs.quarantine(topic, index)

    async def _on_connect(self, session: Session) -> None:
        """With SASL enabled, a connection starts unauthenticated."""
        sasl_api.start_session(session)

    # -- background work ---------------------------------------------------------------

    async def _maintenance_loop(self) -> None:
        """Retention, compaction and the flush policy, off the event loop."""
        loop = asyncio.get_running_loop()
        interval = min(self.config.storage.retention_check_interval_ms, 30_000) / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                await loop.run_in_executor(None, self.logs.run_maintenance, int(time.time() * 1000))
            except Exception:
                log.exception("log maintenance failed")

    async def _flush_loop(self) -> None:
        """fsync on the flush.ms / flush.messages policies, once a second, off the loop.

        Without a policy (the default, as in Kafka) durability comes from the page cache
        surviving a process crash and the OS writing back; nothing is due and the pass
        costs a few attribute reads per partition.
        """
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            try:
                await loop.run_in_executor(None, self.logs.flush_due, int(time.time() * 1000))
            except Exception:
                log.exception("flushing failed")

    # -- metrics -----------------------------------------------------------------------

    def _partition_probe(self) -> Iterable[Metric]:
        leo = GaugeMetricFamily(
            "shazamq_log_end_offset", "Next offset to be written.", labels=["topic", "partition"]
        )
        start = GaugeMetricFamily(
            "shazamq_log_start_offset", "First offset kept.", labels=["topic", "partition"]
        )
        size = GaugeMetricFamily(
            "shazamq_log_size_bytes", "Bytes on disk.", labels=["topic", "partition"]
        )
        for (topic, index), p in list(self.partitions.partitions.items()):
            labels = [topic, str(index)]
            leo.add_metric(labels, p.log.log_end_offset)
            start.add_metric(labels, p.log.log_start_offset)
            size.add_metric(labels, p.log.size_bytes)
        conns = GaugeMetricFamily("shazamq_connections", "Open client connections.")
        conns.add_metric([], self.server.connection_count)
        storage_offline = GaugeMetricFamily(
            "shazamq_storage_offline_partitions",
            "Partitions hosted here whose log cannot be opened (see the broker log).",
        )
        storage_offline.add_metric([], len(self.partitions.offline))
        segment_files = GaugeMetricFamily(
            "shazamq_open_segment_files",
            "Segment log files open now, at most storage.max_open_segment_files.",
        )
        segment_files.add_metric([], open_files.BUDGET.open_count)
        evicted = CounterMetricFamily(
            "shazamq_segment_file_evictions",
            "Segment log files closed to open others within the budget (reopened on use).",
        )
        evicted.add_metric([], open_files.BUDGET.evictions)
        families = [leo, start, size, conns, storage_offline, segment_files, evicted]
        if self.cluster is None:
            # On one broker a partition without a log has no leader; in a cluster the
            # node reports leaderless partitions under this name, once.
            offline = GaugeMetricFamily(
                "shazamq_offline_partitions", "Partitions with no leader (see the broker log)."
            )
            offline.add_metric([], len(self.partitions.offline))
            families.append(offline)
        return families

    def _forget_deleted_topics(self, _changed: set[str], deleted: list[TopicState]) -> None:
        for t in deleted:
            self.metrics.forget_topic(t.name)
