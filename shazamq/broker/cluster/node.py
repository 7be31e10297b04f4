"""This broker's membership of a cluster: the metadata image, its roles, and the controller.

`ClusterNode` owns the metadata quorum client, the broker's copy of the cluster state
(built by applying the same committed records as every other node), the replica fetchers
and the active controller's duties. Each committed record is applied on the event loop;
the partitions it touched are reconciled at once: a partition this broker now leads
starts tracking its followers, one it follows is reconciled with its leader and fetched,
one it no longer hosts is stopped and removed.

The active controller is the quorum's Raft leader. It fences brokers whose heartbeats
stopped (their leaderships move to in-sync replicas), moves leadership back to preferred
replicas, and sets the cluster id. Decisions are records applied deterministically by
`state.ClusterState`; the controller only proposes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from shazamq.broker.cluster.metadata import new_cluster_id
from shazamq.broker.quotas.entities import Entity
from shazamq.broker.security import INTERNAL_USER
from shazamq.broker.security.acl import AclBinding
from shazamq.config import ConfigError
from shazamq.protocol.errors import ErrorCode, KafkaError

from . import hw_checkpoint
from . import records as r
from .client import ClientPool, SaslLogin
from .fetcher import ReplicaFetcher
from .placement import assign_replicas, validate_assignment
from .quorum import MetadataQuorum, QuorumUnavailable
from .replica import ReplicaRole
from .state import ClusterState, PartitionInfo, TopicState

if TYPE_CHECKING:
    from shazamq.broker.partitions import Partition, PartitionManager
    from shazamq.broker.tier.manifest import ClusterMetadata
    from shazamq.broker.tier.restore import ClusterRestore
    from shazamq.config import BrokerConfig

log = logging.getLogger(__name__)

PROPOSE_TIMEOUT_S = 8.0
CHECKPOINT_INTERVAL_S = 5.0
# how long topic creation waits for a restore from the bucket to finish
RESTORE_WAIT_S = 60.0


class ClusterNode:
    """One broker's part in the cluster."""

    def __init__(
        self,
        config: BrokerConfig,
        *,
        node_id: int,
        data_dir,
        advertised: Callable[[], tuple[str, int]],
        partitions: PartitionManager,
    ) -> None:
        self.config = config
        self.node_id = node_id
        self.incarnation = uuid.uuid4().hex
        self._advertised = advertised
        self.partitions = partitions
        cc = config.cluster
        self.voters = cc.voter_map()
        rep = config.replication
        self.min_isr_default = rep.min_insync_replicas
        self.lag_max_s = rep.replica_lag_time_max_ms / 1000
        self.state = ClusterState(unclean_default=rep.unclean_leader_election_enable)
        tls = config.security.tls
        quorum_tls = None
        if cc.quorum_tls:  # BrokerConfig has checked that all three files are set
            assert tls.cert_file and tls.key_file and tls.ca_file
            try:
                quorum_tls = MetadataQuorum.tls_contexts(tls.cert_file, tls.key_file, tls.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"cluster.quorum_tls: security.tls cert_file ({tls.cert_file}), key_file "
                    f"({tls.key_file}) or ca_file ({tls.ca_file}) cannot be loaded: {exc}"
                ) from None
        self.quorum = MetadataQuorum(
            node_id=node_id,
            voters=self.voters,
            bind_host=cc.quorum_host,
            journal_dir=data_dir / "__cluster_metadata" / "quorum",
            secret=cc.read_secret(),
            machine=ClusterState(unclean_default=rep.unclean_leader_election_enable),
            on_apply=self._on_apply,
            on_restore=self._on_restore,
            on_leadership=self._on_leadership,
            tls=quorum_tls,
        )
        self.pool = ClientPool(self._broker_address, **self.peer_client_options())
        self._data_dir = data_dir
        # high watermarks of the last run, applied once as each replica is hosted again
        self._restored_hw = hw_checkpoint.read(data_dir)
        self.fetchers: dict[int, ReplicaFetcher] = {}
        self.registered = asyncio.Event()
        # controller bookkeeping: monotonic time each broker was last heard of
        self._last_seen: dict[int, float] = {}
        self._controller_since: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[object]] = set()
        self._stopping = False
        self.isr_shrinks = 0
        self.isr_expands = 0
        # reassignment.throttle: bytes per second served to replicas being added
        self._throttle_rate = rep.reassignment_throttle_bytes_per_second
        self._throttle_tokens = float(max(self._throttle_rate, 0))
        self._throttle_at = time.monotonic()
        # listeners told about topic-level changes (the metadata adapter)
        self.on_topics_changed: list[Callable[[set[str], list[TopicState]], None]] = []
        # called on the event loop after ACLs were created, deleted or restored
        self.on_acls_changed: list[Callable[[], None]] = []
        # called on the event loop after client quotas were set, removed or restored
        self.on_quotas_changed: list[Callable[[], None]] = []
        # called on the event loop with the groups whose settings were set or restored
        self.on_group_configs_changed: list[Callable[[set[str]], None]] = []
        self.on_partition_role: list[Callable[[Partition, bool], None]] = []
        # tiered storage's bucket, when it holds a cluster: a new cluster restores from it
        # and partitions of its topics without a local folder are laid out from it
        self.restorer: ClusterRestore | None = None
        # the bucket did not answer at start: whether it holds a restore to finish (or
        # a cluster to take the id of) is not known until the tier has read it
        self.bucket_pending = False
        self._laying_out: set[tuple[str, int]] = set()
        self._restore_task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        await self.quorum.start()
        self._tasks.append(asyncio.create_task(self._membership_loop(), name="cluster-member"))
        self._tasks.append(asyncio.create_task(self._controller_loop(), name="cluster-controller"))
        self._tasks.append(asyncio.create_task(self._isr_loop(), name="cluster-isr"))
        self._tasks.append(asyncio.create_task(self._checkpoint_loop(), name="cluster-hw"))

    async def controlled_shutdown(self, timeout_s: float) -> None:
        """Move this broker's leaderships away before it stops (Kafka's controlled shutdown)."""
        if not self.registered.is_set():
            return
        deadline = time.monotonic() + timeout_s
        try:
            await self.propose(
                r.ControlledShutdown(broker_id=self.node_id, incarnation=self.incarnation),
                timeout=max(timeout_s, 0.5),
            )
        except KafkaError as exc:
            log.warning("controlled shutdown not acknowledged: %s", exc.message)
            return
        while time.monotonic() < deadline and self.leader_count() > 0:
            await asyncio.sleep(0.05)
        led = self.leader_count()
        if led:
            log.warning("controlled shutdown: still leading %d partitions", led)
        else:
            log.info("controlled shutdown: leaderships moved away")

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for task in list(self._background):
            task.cancel()
        for f in self.fetchers.values():
            await f.stop()
        self.fetchers.clear()
        await self._write_checkpoint()
        await self.pool.close()
        await self.quorum.stop()

    def peer_client_options(self) -> dict[str, Any]:
        """How this broker connects to its peers' listeners: their TLS and SASL, if any.

        With SASL on the listener, brokers authenticate as the internal principal whose
        password is the cluster secret (SCRAM where enabled, so the secret never crosses
        the wire); with TLS, they verify the peer against the listener's CA and their own
        certificate chain, and present the listener's own certificate where client
        certificates are required.
        """
        sec = self.config.security
        options: dict[str, Any] = {}
        if sec.sasl.enabled:
            enabled = sec.sasl.mechanisms
            mechanism = next(
                (m for m in ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN") if m in enabled),
                enabled[0],
            )
            options["sasl"] = SaslLogin(mechanism, INTERNAL_USER, self.config.cluster.read_secret())
        if sec.tls.enabled:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=sec.tls.ca_file)
            if sec.tls.cert_file:
                # Peers present the certificate this broker presents (one Secret for the
                # cluster, as the operator mounts it) or one issued by a CA in its chain.
                # Trusting that chain, partial chains allowed, lets brokers verify each
                # other without a CA file, which a listener without client certificates
                # has no other use for, and without the system's public CAs.
                ctx.load_verify_locations(cafile=sec.tls.cert_file)
                ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
            if sec.tls.ca_file and sec.tls.cert_file and sec.tls.key_file:
                ctx.load_cert_chain(sec.tls.cert_file, sec.tls.key_file)
            options["ssl_context"] = ctx
        return options

    # -- queries -----------------------------------------------------------------------

    @property
    def controller_id(self) -> int:
        """The active controller as clients see it: the quorum leader that has claimed."""
        leader = self.quorum.leader_id
        if leader is not None and leader == self.state.controller_id:
            return leader
        return leader if leader is not None else self.state.controller_id

    def leader_count(self) -> int:
        return sum(
            1 for t in self.state.topics.values() for p in t.partitions if p.leader == self.node_id
        )

    def leader_hint(self, topic: str, index: int) -> tuple[int, int] | None:
        """(leader id, leader epoch) of a partition, for KIP-951 redirects; None if unknown."""
        t = self.state.topics.get(topic)
        if t is None or not 0 <= index < len(t.partitions):
            return None
        p = t.partitions[index]
        return p.leader, p.leader_epoch

    def endpoint(self, node_id: int) -> tuple[str, int, str | None] | None:
        b = self.state.brokers.get(node_id)
        return (b.host, b.port, b.rack) if b is not None else None

    def _broker_address(self, node_id: int) -> tuple[str, int] | None:
        b = self.state.brokers.get(node_id)
        return (b.host, b.port) if b is not None else None

    def min_isr(self, topic_configs: dict[str, str]) -> int:
        value = topic_configs.get("min.insync.replicas")
        return int(value) if value is not None else self.min_isr_default

    def probe(self) -> Iterable[Metric]:
        """Replication health as Kafka's broker metrics report it, computed at scrape time."""
        state = self.state
        under = offline = under_min = led = 0
        for t in state.topics.values():
            min_isr = self.min_isr(t.configs)
            for p in t.partitions:
                if p.leader < 0:
                    offline += 1
                    continue
                if p.leader != self.node_id:
                    continue
                led += 1
                if len(p.isr) < len(p.replicas):
                    under += 1
                if len(p.isr) < min_isr:
                    under_min += 1
        gauges = [
            (
                "shazamq_under_replicated_partitions",
                "Partitions led here whose ISR is smaller than their replica set.",
                under,
            ),
            (
                "shazamq_under_min_isr_partitions",
                "Partitions led here whose ISR is below min.insync.replicas.",
                under_min,
            ),
            ("shazamq_offline_partitions", "Partitions of the cluster with no leader.", offline),
            ("shazamq_leader_partitions", "Partitions led by this broker.", led),
            (
                "shazamq_active_controller",
                "1 on the active controller.",
                1 if self.quorum.is_leader else 0,
            ),
            (
                "shazamq_fenced_brokers",
                "Brokers the controller has fenced.",
                sum(1 for b in state.brokers.values() if b.fenced),
            ),
        ]
        if self.restorer is not None:
            # the bucket's cluster, and whether this broker is still restoring from it (the
            # metadata log says so, or partitions are being laid out here)
            meta = self.restorer.meta
            gauges += [
                (
                    "shazamq_restore_in_progress",
                    "1 while the cluster restores from the bucket or this broker lays "
                    "partitions out from it.",
                    1 if state.restoring or self._laying_out else 0,
                ),
                (
                    "shazamq_restore_topics",
                    "Topics in the bucket's cluster document.",
                    len(meta.topics),
                ),
                (
                    "shazamq_restore_partitions",
                    "Partitions of those topics.",
                    sum(t.partitions for t in meta.topics),
                ),
            ]
        out: list[Metric] = []
        for name, doc, value in gauges:
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            out.append(g)
        status = self.quorum.status()
        lag = status.get("lag")
        g = GaugeMetricFamily(
            "shazamq_quorum_lag_records", "Committed metadata records not applied here yet."
        )
        g.add_metric([], lag if lag is not None else 0)
        out.append(g)
        commit = GaugeMetricFamily("shazamq_quorum_commit_index", "Raft commit index seen here.")
        commit.add_metric([], status.get("commit_index") or 0)
        out.append(commit)
        for name, doc, value in (
            (
                "shazamq_isr_shrinks",
                "ISR shrinks proposed by this broker as leader.",
                self.isr_shrinks,
            ),
            (
                "shazamq_isr_expands",
                "ISR expansions proposed by this broker as leader.",
                self.isr_expands,
            ),
        ):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], value)
            out.append(c)
        return out

    # -- proposing ---------------------------------------------------------------------

    async def propose(self, record: r.Record, timeout: float = PROPOSE_TIMEOUT_S) -> int:
        """Commit a record; its result code. KafkaError when the quorum cannot be reached."""
        try:
            return await self.quorum.propose(r.encode(record), timeout=timeout)
        except QuorumUnavailable as exc:
            raise KafkaError(
                ErrorCode.REQUEST_TIMED_OUT, f"metadata quorum unavailable: {exc}"
            ) from None

    def _propose_soon(self, record: r.Record) -> None:
        async def go() -> None:
            try:
                code = await self.propose(record)
                if code:
                    log.debug("%s rejected: %d", type(record).__name__, code)
            except KafkaError as exc:
                log.debug("%s not committed: %s", type(record).__name__, exc.message)

        task = asyncio.create_task(go())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- topic admin (called through the metadata adapter) -------------------------------

    def plan_assignment(
        self, partitions: int, replication_factor: int, first_partition: int = 0, seed: str = ""
    ) -> list[list[int]]:
        live = self.state.live_brokers()
        start = random.Random(seed).randrange(max(len(live), 1)) if seed else 0
        return assign_replicas(
            live, partitions, replication_factor, start=start, first_partition=first_partition
        )

    def check_assignment(self, assignment: list[list[int]]) -> None:
        validate_assignment(assignment, self.state.brokers)

    async def create_topic(
        self,
        name: str,
        assignment: list[list[int]],
        configs: dict[str, str],
        *,
        internal: bool = False,
        topic_id: uuid.UUID | None = None,
    ) -> TopicState:
        """Propose the topic; ``topic_id`` keeps a given id (a mirror keeps its source's)."""
        await self._wait_restored()
        code = await self.propose(
            r.CreateTopic(
                name=name,
                topic_id=(topic_id or uuid.uuid4()).hex,
                assignment=assignment,
                configs=configs,
                internal=internal,
            )
        )
        if code:
            raise KafkaError(code, f"creating topic {name!r} was rejected")
        return self.state.topics[name]

    async def _wait_restored(self) -> None:
        """New topics wait until the bucket's topics are back (their names are taken)."""
        deadline = time.monotonic() + RESTORE_WAIT_S
        while self.state.restoring:
            if time.monotonic() > deadline:
                raise KafkaError(
                    ErrorCode.REQUEST_TIMED_OUT, "the cluster is still restoring from the bucket"
                )
            await asyncio.sleep(0.1)

    async def delete_topic(self, name: str) -> TopicState:
        t = self.state.topics.get(name)
        if t is None:
            raise KafkaError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"no topic {name!r}")
        code = await self.propose(r.DeleteTopic(name=name, topic_id=t.topic_id))
        if code:
            raise KafkaError(code, f"deleting topic {name!r} was rejected")
        return t

    async def add_partitions(self, name: str, assignment: list[list[int]]) -> TopicState:
        t = self.state.topics[name]
        code = await self.propose(
            r.CreatePartitions(name=name, topic_id=t.topic_id, assignment=assignment)
        )
        if code:
            raise KafkaError(code, f"adding partitions to {name!r} was rejected")
        return self.state.topics[name]

    async def set_configs(self, name: str, configs: dict[str, str]) -> TopicState:
        t = self.state.topics[name]
        code = await self.propose(
            r.SetTopicConfigs(name=name, topic_id=t.topic_id, configs=configs)
        )
        if code:
            raise KafkaError(code, f"changing the configs of {name!r} was rejected")
        return self.state.topics[name]

    async def allocate_producer_ids(self, count: int) -> int:
        """The first id of a fresh block of `count`, unique in the cluster."""
        await self._wait_restored()  # the restored producers' ids are reserved first
        for _ in range(20):
            start = self.state.next_producer_id
            code = await self.propose(
                r.AllocateProducerIds(broker_id=self.node_id, start=start, count=count)
            )
            if code == 0:
                return start
            await asyncio.sleep(0.01)
        raise KafkaError(ErrorCode.REQUEST_TIMED_OUT, "could not allocate producer ids")

    async def reserve_producer_ids(self, producer_id: int) -> None:
        """Never hand out ``producer_id`` or any id below it (ids in copied or restored
        data): the quorum allocates the ids up to it as a block nobody hands out."""
        for _ in range(20):
            start = self.state.next_producer_id
            if start > producer_id:
                return
            code = await self.propose(
                r.AllocateProducerIds(
                    broker_id=self.node_id, start=start, count=producer_id + 1 - start
                )
            )
            if code == 0:
                return
        raise KafkaError(ErrorCode.REQUEST_TIMED_OUT, "could not reserve producer ids")

    async def elect_leaders(
        self, wanted: list[tuple[str, int]], *, unclean: bool
    ) -> dict[tuple[str, int], int]:
        """ElectLeaders: (topic name, partition) -> 0 or Kafka's per-partition error."""
        state = self.state
        live = state.live_brokers()
        results: dict[tuple[str, int], int] = {}
        eligible: list[tuple[str, int]] = []
        for name, index in wanted:
            t = state.topics.get(name)
            if t is None or not 0 <= index < len(t.partitions):
                results[(name, index)] = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                continue
            p = t.partitions[index]
            if unclean:
                if p.leader >= 0:
                    results[(name, index)] = ErrorCode.ELECTION_NOT_NEEDED
                elif not any(b in live for b in p.replicas):
                    results[(name, index)] = ErrorCode.ELIGIBLE_LEADERS_NOT_AVAILABLE
                else:
                    eligible.append((t.topic_id, index))
                    results[(name, index)] = 0
                continue
            preferred = p.replicas[0]
            if p.leader == preferred:
                results[(name, index)] = ErrorCode.ELECTION_NOT_NEEDED
            elif preferred not in p.isr or preferred not in live:
                results[(name, index)] = ErrorCode.PREFERRED_LEADER_NOT_AVAILABLE
            else:
                eligible.append((t.topic_id, index))
                results[(name, index)] = 0
        if eligible:
            await self.propose(r.ElectLeaders(partitions=eligible, unclean=unclean))
            for name, index in list(results):
                if results[(name, index)] != 0:
                    continue
                t = state.topics.get(name)
                p = t.partitions[index] if t is not None else None
                done = p is not None and (p.leader >= 0 if unclean else p.leader == p.replicas[0])
                if not done:
                    results[(name, index)] = ErrorCode.ELIGIBLE_LEADERS_NOT_AVAILABLE
        return results

    async def reassign(self, name: str, index: int, target: list[int] | None) -> int:
        """Start (target) or cancel (None) a partition reassignment; 0 or the error."""
        t = self.state.topics.get(name)
        if t is None or not 0 <= index < len(t.partitions):
            return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        if target is not None:
            try:
                validate_assignment([target], self.state.brokers)
            except KafkaError as exc:
                return exc.code
        return await self.propose(r.Reassign(topic_id=t.topic_id, partition=index, target=target))

    async def upsert_scram(
        self,
        user: str,
        mechanism: str,
        *,
        salt: bytes,
        iterations: int,
        stored_key: bytes,
        server_key: bytes,
    ) -> int:
        """Set a user's SCRAM credential (derived keys only); 0 or the rejection's error."""
        return await self.propose(
            r.UpsertScramCredential(
                user=user,
                mechanism=mechanism,
                salt=salt,
                iterations=iterations,
                stored_key=stored_key,
                server_key=server_key,
            )
        )

    async def delete_scram(self, user: str, mechanism: str) -> int:
        """Delete a user's SCRAM credential; 0 or RESOURCE_NOT_FOUND."""
        return await self.propose(r.DeleteScramCredential(user=user, mechanism=mechanism))

    async def create_acl(self, acl: AclBinding) -> int:
        """Add an ACL on every broker; 0 or the rejection's error."""
        return await self.propose(r.CreateAcl(**msgspec.structs.asdict(acl)))

    async def delete_acl(self, acl: AclBinding) -> int:
        """Remove an ACL on every broker; 0 or the rejection's error."""
        return await self.propose(r.DeleteAcl(**msgspec.structs.asdict(acl)))

    async def alter_client_quota(self, entity: Entity, ops: list[tuple[str, float | None]]) -> int:
        """Set (a value) and remove (None) one entity's quota keys on every broker; 0 or
        the rejection's error."""
        return await self.propose(r.AlterClientQuota(entity=list(entity), ops=ops))

    async def set_group_configs(self, group: str, configs: dict[str, str]) -> None:
        """Replace a group's settings on every broker (empty: back to the defaults);
        KafkaError if the quorum refuses or cannot be reached."""
        code = await self.propose(r.SetGroupConfigs(group=group, configs=configs))
        if code:
            raise KafkaError(code, f"changing the settings of group {group!r} was rejected")

    # -- applying the log ----------------------------------------------------------------

    def _on_apply(self, data: bytes) -> None:
        self.state.apply(data)
        try:
            rec = r.decode(data)
        except Exception:
            rec = None
        if isinstance(rec, r.ClaimController):
            if self.state.controller_id == self.node_id and rec.node_id == self.node_id:
                now = time.monotonic()
                # a new controller gives every broker a full session before fencing it
                self._last_seen = dict.fromkeys(self.state.brokers, now)
                self._controller_since = now
                log.info(
                    "broker %d is the active controller (epoch %d)",
                    self.node_id,
                    self.state.controller_epoch,
                )
            elif self.state.controller_id != self.node_id:
                self._controller_since = None
        if isinstance(rec, r.BrokerHeartbeat | r.RegisterBroker):
            self._last_seen[rec.broker_id] = time.monotonic()
            if (
                isinstance(rec, r.RegisterBroker)
                and rec.broker_id == self.node_id
                and rec.incarnation == self.incarnation
            ):
                self.registered.set()
        self._react()

    def _on_restore(self, data: bytes) -> None:
        self.state.restore(data)
        now = time.monotonic()
        for b in self.state.brokers:
            self._last_seen.setdefault(b, now)
        self._react()

    def _on_leadership(self, leader: bool) -> None:
        # the quorum's leader acts as controller only once its claim (the next controller
        # epoch) has committed: decisions made under an older epoch are rejected
        self._controller_since = None
        if leader:
            self._claim_controller()

    def _claim_controller(self) -> None:
        self._propose_soon(
            r.ClaimController(node_id=self.node_id, epoch=self.state.controller_epoch + 1)
        )

    def _react(self) -> None:
        changes = self.state.take_changes()
        if not changes:
            return
        if changes.acls:
            for acl_listener in self.on_acls_changed:
                acl_listener()
        if changes.quotas:
            for quota_listener in self.on_quotas_changed:
                quota_listener()
        if changes.group_configs:
            for group_listener in self.on_group_configs_changed:
                group_listener(changes.group_configs)
        if changes.topics or changes.deleted_topics:
            for listener in self.on_topics_changed:
                listener(changes.topics, changes.deleted_topics)
        for t in changes.deleted_topics:
            for i in range(len(t.partitions)):
                self._stop_hosting(t.name, i, delete=True)
        for topic_id, index in sorted(changes.partitions):
            t = self.state.by_id.get(topic_id)
            if t is None:
                continue
            self._reconcile(t, index, t.partitions[index])

    def _reconcile(self, t: TopicState, index: int, info: PartitionInfo) -> None:
        parts = self.partitions
        if self.node_id not in info.replicas:
            self._stop_hosting(t.name, index, delete=True)
            return
        p = parts.get(t.name, index)
        now = time.monotonic()
        if p is None:
            if self.restorer is not None and self.restorer.needs_layout(t.name, t.topic_id, index):
                first = bool(info.replicas) and info.replicas[0] == self.node_id
                self._lay_out_then_host(t.name, t.topic_id, index, count=first)
                return
            p = parts.host_partition(t.name, index)
            if p is None:  # its log cannot be opened: offline here, logged
                return
            hw = self._restored_hw.pop((t.name, index), None)
            if hw is not None:
                p.log.high_watermark = hw  # clamped to the log's own bounds
        role = p.replica
        if role is None:
            role = p.replica = ReplicaRole(
                broker_id=self.node_id,
                topic_id=t.topic_id,
                replicas=[],
                isr=[],
                leader=-2,
                leader_epoch=-1,
                partition_epoch=-1,
            )
        changed, epoch_changed = role.update(info, now)
        p.leader_epoch = info.leader_epoch
        if role.is_leader:
            if changed or epoch_changed:
                self._unfollow(p)
                log.info(
                    "%s-%d: leader at epoch %d, ISR %s", t.name, index, info.leader_epoch, info.isr
                )
                for listener in self.on_partition_role:
                    listener(p, True)
            self.advance_high_watermark(p)
        else:
            if changed or epoch_changed:
                role.fail_waiters(ErrorCode.NOT_LEADER_OR_FOLLOWER)
                p.notify()
                self._unfollow(p)
                if info.leader >= 0:
                    self._fetcher(info.leader).add(p, info.leader_epoch)
                if changed:
                    for listener in self.on_partition_role:
                        listener(p, False)

    def _lay_out_then_host(self, name: str, topic_id: str, index: int, *, count: bool) -> None:
        """Lay the partition's log out from the bucket (off the loop), then host it as the
        metadata then says; until then it is not served here (clients retry)."""
        key = (name, index)
        if key in self._laying_out:
            return
        self._laying_out.add(key)
        restorer = self.restorer
        assert restorer is not None

        async def go() -> None:
            delay = 0.5
            try:
                while not self._stopping:
                    try:
                        await restorer.lay_out(name, topic_id, index, count=count)
                        break
                    except Exception as exc:  # the bucket away: retry, nothing is hosted
                        log.warning("%s-%d: restoring from the bucket: %s", name, index, exc)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 10.0)
            finally:
                self._laying_out.discard(key)
            t = self.state.topics.get(name)
            if not self._stopping and t is not None and t.topic_id == topic_id:
                self._reconcile(t, index, t.partitions[index])

        task = asyncio.create_task(go(), name=f"restore-{name}-{index}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _stop_hosting(self, name: str, index: int, *, delete: bool) -> None:
        p = self.partitions.get(name, index)
        if p is None:
            self.partitions.offline.pop((name, index), None)
            return
        self._unfollow(p)
        if p.replica is not None:
            p.replica.fail_waiters(ErrorCode.NOT_LEADER_OR_FOLLOWER)
            for listener in self.on_partition_role:
                listener(p, False)
        # unhosted (and its log detached) now, so a record applied next, such as the
        # topic created again, never meets this partition; the folder rename runs later
        pending = self.partitions.stop_hosting(name, index, delete=delete)
        if pending is None:
            return
        task = asyncio.create_task(pending)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _fetcher(self, leader: int) -> ReplicaFetcher:
        f = self.fetchers.get(leader)
        if f is None:
            rep = self.config.replication
            f = self.fetchers[leader] = ReplicaFetcher(
                node_id=self.node_id,
                leader_id=leader,
                pool=self.pool,
                max_bytes=rep.replica_fetch_max_bytes,
                max_wait_ms=rep.replica_fetch_wait_max_ms,
                writer=self.partitions.writer,
            )
        return f

    def _unfollow(self, p: Partition) -> None:
        for f in self.fetchers.values():
            f.remove(p)

    # -- the leader's side of replication ------------------------------------------------

    def advance_high_watermark(self, p: Partition) -> None:
        """Move the high watermark to what every ISR member has; wake who waits on it."""
        role = p.replica
        assert role is not None
        plog = p.log
        hw = role.high_watermark(plog.log_end_offset)
        if hw > plog.high_watermark:
            plog.high_watermark = hw
            role.release_waiters(plog.high_watermark)
            p.notify()

    def follower_fetched(self, p: Partition, follower: int, fetch_offset: int) -> None:
        """A follower's fetch reached the leader: its position, the HW, maybe the ISR."""
        role = p.replica
        if role is None or not role.is_leader:
            return
        plog = p.log
        role.record_fetch(follower, fetch_offset, plog.log_end_offset, time.monotonic())
        self.advance_high_watermark(p)
        if not role.isr_change_pending and follower not in role.isr:
            # only live brokers: one that died caught up (nothing written since) still
            # looks caught up, and the controller refuses a whole proposal naming it
            # (INELIGIBLE_REPLICA), which would keep out the live follower asking now
            add = [b for b in role.isr_to_add(plog.high_watermark) if self.state.is_live(b)]
            if add:
                self._alter_isr(p, role.isr + add)

    def throttle_allows(self) -> bool:
        """Whether replicas being added may be served now (reassignment throttle).

        One token bucket for all reassignment traffic this leader serves, refilled at the
        configured rate and holding at most one second of it. A read may overdraw it;
        until the debt is repaid those partitions get no data (their fetch long-polls as
        usual), so the average copy rate stays at the limit, as Kafka's throttle does.
        """
        rate = self._throttle_rate
        if rate <= 0:
            return True
        now = time.monotonic()
        self._throttle_tokens = min(
            float(rate), self._throttle_tokens + (now - self._throttle_at) * rate
        )
        self._throttle_at = now
        return self._throttle_tokens > 0

    def throttle_consume(self, nbytes: int) -> None:
        if self._throttle_rate > 0:
            self._throttle_tokens -= nbytes

    def _alter_isr(self, p: Partition, isr: list[int]) -> None:
        role = p.replica
        assert role is not None
        role.isr_change_pending = True
        if len(isr) < len(role.isr):
            self.isr_shrinks += 1
        else:
            self.isr_expands += 1
        log.info("%s-%d: proposing ISR %s (was %s)", p.topic, p.index, isr, role.isr)
        self._propose_soon(
            r.AlterPartition(
                topic_id=role.topic_id,
                partition=p.index,
                leader_id=self.node_id,
                leader_epoch=role.leader_epoch,
                partition_epoch=role.partition_epoch,
                isr=isr,
            )
        )

        def clear() -> None:
            role.isr_change_pending = False

        asyncio.get_running_loop().call_later(PROPOSE_TIMEOUT_S, clear)

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL_S)
            try:
                await self._write_checkpoint()
            except OSError:
                log.exception("writing the high-watermark checkpoint failed")

    async def _write_checkpoint(self) -> None:
        marks = {key: p.log.high_watermark for key, p in self.partitions.partitions.items()}
        await asyncio.get_running_loop().run_in_executor(
            None, hw_checkpoint.write, self._data_dir, marks
        )

    async def _isr_loop(self) -> None:
        """Drop followers that stopped keeping up (replica.lag.time.max.ms)."""
        interval = max(min(self.lag_max_s / 2, 5.0), 0.1)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for p in list(self.partitions.partitions.values()):
                role = p.replica
                if role is None or not role.is_leader or role.isr_change_pending:
                    continue
                drop = role.isr_to_drop(now, self.lag_max_s)
                if drop:
                    self._alter_isr(p, [b for b in role.isr if b not in drop])

    # -- membership ---------------------------------------------------------------------

    async def _membership_loop(self) -> None:
        """Register this incarnation, then heartbeat; re-register if the cluster forgot us."""
        cc = self.config.cluster
        interval = cc.heartbeat_interval_ms / 1000
        while True:
            try:
                if self.state.cluster_id is None:
                    # the first broker to get here names the cluster; the others adopt it
                    configured = self.config.broker.cluster_id
                    if self.bucket_pending:
                        # its metadata log names it, or the bucket does, once read
                        await asyncio.sleep(interval)
                    elif self.restorer is not None:  # a new cluster from the bucket's history
                        bucket_id = self.restorer.meta.cluster_id
                        await self.propose(r.InitCluster(cluster_id=bucket_id, restore=True))
                    else:
                        await self.propose(r.InitCluster(cluster_id=configured or new_cluster_id()))
                    continue
                if self.state.cluster_id is not None and self.config.broker.cluster_id not in (
                    None,
                    self.state.cluster_id,
                ):
                    log.error(
                        "configured cluster_id %s differs from the cluster's %s; not joining",
                        self.config.broker.cluster_id,
                        self.state.cluster_id,
                    )
                    await asyncio.sleep(5.0)
                    continue
                if not self.registered.is_set():
                    host, port = self._advertised()
                    await self.propose(
                        r.RegisterBroker(
                            broker_id=self.node_id,
                            incarnation=self.incarnation,
                            host=host,
                            port=port,
                            rack=self.config.broker.rack,
                        )
                    )
                    if self.registered.is_set():
                        log.info("broker %d registered with the cluster", self.node_id)
                else:
                    code = await self.propose(
                        r.BrokerHeartbeat(broker_id=self.node_id, incarnation=self.incarnation),
                        timeout=max(interval * 3, 1.0),
                    )
                    if code == ErrorCode.STALE_BROKER_EPOCH and not self._stopping:
                        self.registered.clear()
                        continue
            except KafkaError as exc:
                log.debug("membership: %s", exc.message)
            await asyncio.sleep(interval)

    # -- the active controller -------------------------------------------------------------

    async def _controller_loop(self) -> None:
        cc = self.config.cluster
        rep = self.config.replication
        session_s = cc.session_timeout_ms / 1000
        interval = cc.heartbeat_interval_ms / 1000
        rebalance_s = rep.leader_imbalance_check_interval_ms / 1000
        last_rebalance = last_tick = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            stalled = now - last_tick > session_s / 2
            last_tick = now
            if not self.quorum.is_leader:
                continue
            if self.state.controller_id != self.node_id:
                self._claim_controller()
                continue
            if self._controller_since is None:
                continue
            if stalled:
                # this process was paused (or starved), not the others: their silence
                # was ours, so everyone gets a fresh session rather than being fenced
                self._last_seen = dict.fromkeys(self.state.brokers, now)
                continue
            epoch = self.state.controller_epoch
            if (
                self.state.restoring
                and not self.bucket_pending  # the topics to recreate are in the bucket
                and (self._restore_task is None or self._restore_task.done())
            ):
                self._restore_task = asyncio.create_task(
                    self._restore_topics(epoch), name="cluster-restore"
                )
                self._background.add(self._restore_task)
                self._restore_task.add_done_callback(self._background.discard)
            for b in list(self.state.brokers.values()):
                if b.fenced:
                    continue
                seen = self._last_seen.get(b.broker_id, self._controller_since)
                if now - seen > session_s:
                    log.warning(
                        "fencing broker %d: no heartbeat for %.1fs", b.broker_id, now - seen
                    )
                    self._propose_soon(
                        r.FenceBroker(
                            broker_id=b.broker_id,
                            incarnation=b.incarnation,
                            controller_epoch=epoch,
                        )
                    )
            if rep.auto_leader_rebalance_enable and now - last_rebalance >= rebalance_s:
                last_rebalance = now
                wanted = self.imbalanced_partitions()
                if wanted:
                    log.info("moving %d leaderships back to preferred replicas", len(wanted))
                    self._propose_soon(r.ElectLeaders(partitions=wanted, controller_epoch=epoch))

    async def _restore_topics(self, controller_epoch: int) -> None:
        """The active controller recreates the bucket's topics (ids, configs, leader epochs
        above the restored ones), once: FinishRestore ends the restore for good."""
        try:
            restorer = self.restorer
            if restorer is not None:
                # place replicas on the whole cluster: wait (bounded) for every voter
                deadline = time.monotonic() + 2 * self.config.cluster.session_timeout_ms / 1000
                while (
                    len(self.state.live_brokers()) < len(self.voters)
                    and time.monotonic() < deadline
                ):
                    await asyncio.sleep(0.2)
                # before any topic exists: a producer retrying into a restored partition
                # must find its id issued, and no new producer may be given it
                used = await restorer.producer_ids_used()
                if used > 0:
                    await self.reserve_producer_ids(used - 1)
                    log.info("restore: producer ids below %d reserved", used)
                default_rf = self.config.replication.default_replication_factor
                live = len(self.state.live_brokers())
                for t in restorer.meta.topics:
                    existing = self.state.topics.get(t.name)
                    if existing is not None:
                        if existing.topic_id != t.topic_id:
                            log.error(
                                "restore: topic %s exists with id %s, not the bucket's %s",
                                t.name,
                                existing.topic_id,
                                t.topic_id,
                            )
                        continue
                    rf = min(t.replication_factor or default_rf, live)
                    code = await self.propose(
                        r.CreateTopic(
                            name=t.name,
                            topic_id=t.topic_id,
                            assignment=self.plan_assignment(t.partitions, rf, seed=t.name),
                            configs=dict(t.configs),
                            internal=t.internal,
                            leader_epoch=await restorer.first_leader_epoch(t),
                        )
                    )
                    if code:
                        log.error("restore: recreating topic %s was rejected (%d)", t.name, code)
                log.info("restored %d topics from the bucket", len(restorer.meta.topics))
                await self._restore_security(restorer.meta)
            await self.propose(r.FinishRestore(controller_epoch=controller_epoch))
        except Exception:
            log.exception("restoring the topics from the bucket failed; retrying")

    async def _restore_security(self, meta: ClusterMetadata) -> None:
        """The bucket's SCRAM credentials, ACLs and client quotas, through the metadata
        log. A credential or quota key this cluster set already (the operator's own user,
        say) is kept."""
        for user, mechanisms in meta.scram.items():
            for mechanism, e in mechanisms.items():
                if mechanism in self.state.scram.get(user, {}):
                    continue
                await self.propose(
                    r.UpsertScramCredential(
                        user=user,
                        mechanism=mechanism,
                        salt=e.salt,
                        iterations=e.iterations,
                        stored_key=e.stored_key,
                        server_key=e.server_key,
                    )
                )
        for acl in meta.acls:
            if acl not in self.state.acls:
                await self.propose(r.CreateAcl(**msgspec.structs.asdict(acl)))
        for q in meta.quotas:
            have = self.state.quotas.get(tuple(q.entity), {})
            ops: list[tuple[str, float | None]] = [
                (key, value) for key, value in sorted(q.values.items()) if key not in have
            ]
            if ops:
                await self.propose(r.AlterClientQuota(entity=list(q.entity), ops=ops))
        if meta.scram or meta.acls or meta.quotas:
            log.info(
                "restored %d SCRAM users, %d ACLs and %d client quota entities from the bucket",
                len(meta.scram),
                len(meta.acls),
                len(meta.quotas),
            )

    def imbalanced_partitions(self) -> list[tuple[str, int]]:
        live = self.state.live_brokers()
        out = []
        for t in self.state.topics.values():
            for i, p in enumerate(t.partitions):
                preferred = p.replicas[0]
                if p.leader != preferred and preferred in p.isr and preferred in live:
                    out.append((t.topic_id, i))
        return out
