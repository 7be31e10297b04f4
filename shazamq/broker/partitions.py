"""The partitions this broker hosts: their logs, and the signal that data arrived.

`PartitionManager` ties the metadata store (which topics exist) to the log manager (their
bytes on disk). Every API that touches records goes through it: produce appends, fetch
reads and long-polls, admin creates and deletes. Fetch long-polls wait on a per-partition
list of futures that an append resolves, so a waiting consumer wakes the moment data
lands instead of sleeping and re-checking.

A partition whose log cannot be opened is offline (:attr:`PartitionManager.offline`):
it is listed without a leader, its requests get KAFKA_STORAGE_ERROR, the others serve.
Creating partitions is bounded (`broker.max_partitions_per_request`,
`broker.max_partitions`) before anything is created, and the logs are opened off the
event loop. Deleting detaches the logs at once, so a topic created again under the same
name never meets the old files.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from shazamq.broker import topic_configs
from shazamq.broker.cluster.metadata import (
    INTERNAL_TOPICS,
    MetadataStore,
    TopicInfo,
    validate_topic_name,
)
from shazamq.broker.log import LogConfig, LogManager, PartitionLog
from shazamq.broker.log.errors import InvalidConfigError, KafkaStorageError
from shazamq.broker.tier.manager import tiered
from shazamq.protocol.errors import ErrorCode, KafkaError

if TYPE_CHECKING:
    from shazamq.broker.cluster.node import ClusterNode
    from shazamq.broker.cluster.replica import ReplicaRole
    from shazamq.broker.log.writer import LogWriter
    from shazamq.config import BrokerConfig

log = logging.getLogger(__name__)


def default_log_config(config: BrokerConfig) -> LogConfig:
    """The broker's `[storage]` section as the log's topic-level defaults."""
    s = config.storage
    hot_hours = config.tiered_storage.hot_tier_retention_hours
    return LogConfig(
        local_retention_ms=-2 if hot_hours is None else hot_hours * 3_600_000,
        segment_bytes=s.segment_bytes,
        segment_ms=s.segment_ms,
        retention_ms=s.effective_retention_ms(),
        retention_bytes=s.retention_bytes,
        cleanup_policy=tuple(s.cleanup_policy.split(",")),
        delete_retention_ms=s.delete_retention_ms,
        min_compaction_lag_ms=s.min_compaction_lag_ms,
        index_interval_bytes=s.index_interval_bytes,
        max_message_bytes=config.broker.message_max_bytes,
        flush_messages=s.flush_messages if s.flush_messages is not None else 2**63 - 1,
        flush_ms=s.flush_ms if s.flush_ms is not None else 2**63 - 1,
    )


def expected_topic_id(metadata: MetadataStore, name: str, index: int) -> uuid.UUID | None:
    """The topic id a single broker's metadata has for a partition folder found on disk
    (None: the folder is a stray, quarantined at start)."""
    topic = metadata.get(name)
    if topic is None or index >= topic.partitions:
        return None
    return topic.uuid


class Partition:
    """One hosted partition: its log plus the futures of fetches waiting for data."""

    __slots__ = (
        "index",
        "leader_epoch",
        "log",
        "replica",
        "topic",
        "topic_info",
        "txn_markers",
        "waiters",
    )

    def __init__(self, topic_info: TopicInfo, index: int, log_: PartitionLog) -> None:
        self.topic_info = topic_info
        self.topic = topic_info.name
        self.index = index
        self.log = log_
        self.leader_epoch = 0
        self.waiters: list[asyncio.Future[None]] = []
        # the replication role in a cluster; None on a single broker
        self.replica: ReplicaRole | None = None
        # transaction markers appended here as leader: a produce verified with a remote
        # coordinator is refused if one arrived meanwhile (see txn.verification)
        self.txn_markers = 0

    @property
    def is_leader(self) -> bool:
        return self.replica is None or self.replica.is_leader

    def epoch_error(self, current_leader_epoch: int) -> int:
        """The error for a request made under another leader epoch (-1: unchecked), or 0.

        A follower answers NOT_LEADER_OR_FOLLOWER; older epochs are fenced; newer ones
        are unknown to this broker (yet).
        """
        if self.replica is not None and not self.replica.is_leader:
            return ErrorCode.NOT_LEADER_OR_FOLLOWER
        if current_leader_epoch < 0 or current_leader_epoch == self.leader_epoch:
            return 0
        if current_leader_epoch < self.leader_epoch:
            return ErrorCode.FENCED_LEADER_EPOCH
        return ErrorCode.UNKNOWN_LEADER_EPOCH

    def notify(self) -> None:
        """Wake every fetch waiting on this partition."""
        if self.waiters:
            waiters, self.waiters = self.waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)


class PartitionManager:
    """Topics and partitions hosted here, their logs and configuration."""

    def __init__(self, config: BrokerConfig, metadata: MetadataStore, logs: LogManager) -> None:
        self.config = config
        self.metadata = metadata
        self.logs = logs
        self.defaults = logs.default_config
        self.partitions: dict[tuple[str, int], Partition] = {}
        # partitions whose log could not be opened -> why (logged, in metrics)
        self.offline: dict[tuple[str, int], str] = {}
        # in a cluster: where replicas go and who leads; partitions are hosted as the
        # cluster's metadata assigns them, not as topics are created here
        self.cluster: ClusterNode | None = None
        # the broker's write pool (log/writer.py): every append to a hosted log goes
        # through it, so one partition's appends stay in order; None in a bare manager
        self.writer: LogWriter | None = None
        # a log whose storage fails at run time goes offline here (on the event loop)
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        logs.failure_listener = self._log_failed

    # -- start-up ----------------------------------------------------------------------

    def load(self) -> None:
        """Open the log of every partition the metadata lists (creating missing dirs).

        Blocking (an executor thread at start). A partition that cannot be opened goes
        offline; the broker serves the rest.
        """
        if self.cluster is not None:
            return
        unreadable = self.logs.offline_dirs
        for topic in self.metadata.topics.values():
            indexes: Iterable[int] = range(topic.partitions)
            if unreadable:  # a missing log may be in the offline dir: never start it empty
                found = [i for i in indexes if self.logs.get(topic.name, i) is not None]
                for i in set(indexes) - set(found):
                    self.offline[(topic.name, i)] = (
                        "its log may be in an offline log dir: " + ", ".join(unreadable)
                    )
                indexes = found
            self._open_topic(topic, indexes)
        self.logs.sync_new_dirs()

    def strays(self) -> list[tuple[str, int]]:
        """Open logs not hosted whose topic the metadata does not know (or knows under
        another id): to be quarantined once the metadata is complete."""
        out = []
        for plog in self.logs.logs():
            key = (plog.topic, plog.partition)
            if key in self.partitions:
                continue
            topic = self.metadata.get(plog.topic)
            if topic is None or (plog.topic_id is not None and plog.topic_id != topic.uuid):
                out.append(key)
        return out

    def host_partition(self, name: str, index: int) -> Partition | None:
        """Open (creating) the local log of a partition the cluster assigned here; None
        (and the partition offline) when it cannot be opened."""
        topic = self.require_topic(name)
        self._open_topic(topic, (index,))
        return self.partitions.get((name, index))

    def stop_hosting(
        self, name: str, index: int, *, delete: bool
    ) -> Coroutine[Any, Any, None] | None:
        """Stop serving a partition now (no I/O); with ``delete`` its log is detached at
        once and the returned coroutine renames its folder off the loop."""
        self.offline.pop((name, index), None)
        p = self.partitions.pop((name, index), None)
        if p is not None:
            p.notify()
        if delete and self.logs.detach(name, index):
            return self._delete_detached()
        return None

    async def unhost_partition(self, name: str, index: int, *, delete: bool) -> None:
        """Stop serving a partition the cluster moved away or deleted; drop its log."""
        pending = self.stop_hosting(name, index, delete=delete)
        if pending is not None:
            await pending

    async def _delete_detached(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.logs.delete_detached)

    def _open_topic(self, topic: TopicInfo, indexes: Iterable[int]) -> None:
        for i, plog, exc in self._open_logs(topic, indexes):
            self._install(topic, i, plog, exc)

    def _open_logs(
        self, topic: TopicInfo, indexes: Iterable[int]
    ) -> list[tuple[int, PartitionLog | None, Exception | None]]:
        """Open (creating) the logs; thread-safe, so it may run in an executor."""
        cfg = self.log_config(topic)
        out: list[tuple[int, PartitionLog | None, Exception | None]] = []
        for i in indexes:
            try:
                out.append((i, self.logs.get_or_create(topic.name, i, topic.uuid, cfg), None))
            except (KafkaStorageError, OSError) as exc:
                out.append((i, None, exc))
        return out

    def _install(
        self, topic: TopicInfo, i: int, plog: PartitionLog | None, exc: Exception | None
    ) -> None:
        key = (topic.name, i)
        if plog is None:
            if key not in self.offline:
                log.error("partition %s-%d is offline: %s", topic.name, i, exc)
            self.offline[key] = str(exc)
            return
        self.offline.pop(key, None)
        p = self.partitions[key] = Partition(topic, i, plog)
        if self.config.tiered_storage.enabled and tiered(p):
            # nothing leaves the disk until the tier says what the bucket holds
            plog.remote_log_end = 0

    async def _open_topic_off_loop(self, topic: TopicInfo, indexes: range) -> None:
        """Create/open the logs in an executor thread and make their folders durable;
        the partitions are published here, on the event loop."""

        def work() -> list[tuple[int, PartitionLog | None, Exception | None]]:
            opened = self._open_logs(topic, indexes)
            self.logs.sync_new_dirs()
            return opened

        loop = asyncio.get_running_loop()
        for i, plog, exc in await loop.run_in_executor(None, work):
            self._install(topic, i, plog, exc)

    def _log_failed(self, plog: PartitionLog, reason: str) -> None:
        """Called by the log manager from the thread that saw the failure."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self.take_offline(plog, reason)
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self.take_offline(plog, reason)
        else:
            loop.call_soon_threadsafe(self.take_offline, plog, reason)

    def take_offline(self, plog: PartitionLog, reason: str) -> None:
        """The partition's storage failed: stop serving it (KAFKA_STORAGE_ERROR,
        leaderless in Metadata, `shazamq_offline_partitions`) until the next start,
        which recovers its log; the other partitions go on."""
        key = (plog.topic, plog.partition)
        p = self.partitions.get(key)
        if p is None or p.log is not plog:
            return
        del self.partitions[key]
        self.offline[key] = reason
        p.notify()

    # -- lookups -----------------------------------------------------------------------

    def get(self, topic: str, index: int) -> Partition | None:
        return self.partitions.get((topic, index))

    def require(self, topic: str, index: int) -> Partition:
        p = self.partitions.get((topic, index))
        if p is None and (topic, index) in self.offline:
            raise KafkaError(
                ErrorCode.KAFKA_STORAGE_ERROR, f"{topic}-{index} is offline on this broker"
            )
        if p is None:
            raise KafkaError(
                ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"{topic}-{index} is not hosted here"
            )
        return p

    def require_topic(self, name: str) -> TopicInfo:
        """The topic, or UNKNOWN_TOPIC_OR_PARTITION."""
        topic = self.metadata.get(name)
        if topic is None:
            raise KafkaError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"no topic {name!r}")
        return topic

    def topic_by_id(self, topic_id: uuid.UUID) -> TopicInfo | None:
        return self.metadata.by_id.get(topic_id)

    def log_config(self, topic: TopicInfo) -> LogConfig:
        return topic_configs.validate(self.defaults, topic.configs)

    # -- admin -------------------------------------------------------------------------

    def validate_new_topic(
        self,
        name: str,
        partitions: int,
        replication_factor: int,
        configs: dict[str, str],
        *,
        already_in_request: int = 0,
    ) -> None:
        validate_topic_name(name)
        if name in INTERNAL_TOPICS:
            raise KafkaError(ErrorCode.INVALID_TOPIC_EXCEPTION, f"{name} is an internal topic")
        if name in self.metadata.topics:
            raise KafkaError(ErrorCode.TOPIC_ALREADY_EXISTS, f"topic {name!r} already exists")
        if partitions < 1:
            raise KafkaError(ErrorCode.INVALID_PARTITIONS, "number of partitions must be >= 1")
        self.check_partition_limits(
            partitions, max(replication_factor, 1), already_in_request=already_in_request
        )
        if replication_factor < 1:
            raise KafkaError(
                ErrorCode.INVALID_REPLICATION_FACTOR, "replication factor must be >= 1"
            )
        if self.cluster is not None:
            live = len(self.cluster.state.live_brokers())
            if replication_factor > live:
                raise KafkaError(
                    ErrorCode.INVALID_REPLICATION_FACTOR,
                    f"replication factor {replication_factor} is larger than the {live} "
                    "available brokers",
                )
        elif replication_factor > 1:
            raise KafkaError(
                ErrorCode.INVALID_REPLICATION_FACTOR,
                f"replication factor {replication_factor} is larger than the 1 available broker",
            )
        self.validate_configs(configs)

    def check_partition_limits(
        self, new: int, replication_factor: int = 1, *, already_in_request: int = 0
    ) -> None:
        """Refuse adding ``new`` partitions beyond `broker.max_partitions_per_request`
        (INVALID_PARTITIONS) or, counting what this broker hosts, `broker.max_partitions`
        (POLICY_VIOLATION). Cheap, and called before anything is planned or created."""
        b = self.config.broker
        if new + already_in_request > b.max_partitions_per_request:
            raise KafkaError(
                ErrorCode.INVALID_PARTITIONS,
                f"{new} new partitions (with {already_in_request} earlier in this request) "
                f"exceed broker.max_partitions_per_request = {b.max_partitions_per_request}",
            )
        busiest, added = self._hosted_after(new, replication_factor)
        if busiest + added > b.max_partitions:
            raise KafkaError(
                ErrorCode.POLICY_VIOLATION,
                f"{new} new partitions would make {busiest + added} on a broker, more than "
                f"broker.max_partitions = {b.max_partitions}",
            )

    def _hosted_after(self, new: int, replication_factor: int) -> tuple[int, int]:
        """(partition replicas the busiest broker hosts, how many of ``new`` it gets)."""
        if self.cluster is not None:
            state = self.cluster.state
            live = max(len(state.live_brokers()), 1)
            hosted: dict[int, int] = {}
            for t in state.topics.values():
                for p in t.partitions:
                    for r in p.replicas:
                        hosted[r] = hosted.get(r, 0) + 1
            # placement spreads replicas evenly: the busiest broker gets its share
            busiest = max(hosted.values(), default=0)
            return busiest, -(-new * min(replication_factor, live) // live)
        return sum(t.partitions for t in self.metadata.topics.values()), new

    def validate_configs(self, configs: dict[str, str]) -> LogConfig:
        try:
            cfg = topic_configs.validate(self.defaults, configs)
        except InvalidConfigError as exc:
            raise KafkaError(ErrorCode.INVALID_CONFIG, str(exc)) from None
        for key in topic_configs.deprecated_in(configs):
            log.info("topic setting %s=%s is deprecated and ignored", key, configs[key])
        return cfg

    async def create_topic(
        self,
        name: str,
        partitions: int,
        replication_factor: int = 1,
        configs: dict[str, str] | None = None,
        *,
        internal: bool = False,
        assignment: list[list[int]] | None = None,
        topic_id: uuid.UUID | None = None,
    ) -> TopicInfo:
        """Create a topic; ``topic_id`` keeps a given id (a mirror keeps its source's)."""
        configs = dict(configs or {})
        if not internal:
            self.validate_new_topic(name, partitions, replication_factor, configs)
        if self.cluster is not None:
            if assignment is None:
                assignment = self.cluster.plan_assignment(partitions, replication_factor, seed=name)
            else:
                self.cluster.check_assignment(assignment)
            state = await self.cluster.create_topic(
                name, assignment, configs, internal=internal, topic_id=topic_id
            )
            log.info(
                "created topic %s (%d partitions, RF %d, id %s)",
                name,
                len(assignment),
                len(assignment[0]),
                state.topic_id,
            )
            return self.require_topic(name)
        topic = await self.metadata.create_topic(
            name, partitions, replication_factor, configs, internal=internal, topic_id=topic_id
        )
        await self._open_topic_off_loop(topic, range(partitions))
        log.info("created topic %s (%d partitions, id %s)", name, partitions, topic.uuid)
        return topic

    async def auto_create(self, name: str) -> TopicInfo:
        """Create a topic a client asked for, when `auto_create_topics` allows it."""
        b = self.config.broker
        if not b.auto_create_topics:
            raise KafkaError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"no topic {name!r}")
        existing = self.metadata.get(name)
        if existing is not None:
            return existing
        pattern = b.auto_create_topics_pattern
        if pattern is not None and re.fullmatch(pattern, name) is None:
            raise KafkaError(
                ErrorCode.POLICY_VIOLATION,
                f"{name!r} does not match broker.auto_create_topics_pattern; create it explicitly",
            )
        rf = 1
        if self.cluster is not None:
            live = len(self.cluster.state.live_brokers())
            rf = min(self.config.replication.default_replication_factor, max(live, 1))
        cap = b.auto_create_topics_max_partitions
        if cap:
            if self.cluster is None:  # clients' topics only: internal ones are bounded
                busiest = sum(t.partitions for t in self.metadata.topics.values() if not t.internal)
                added = b.default_partitions
            else:
                busiest, added = self._hosted_after(b.default_partitions, rf)
            if busiest + added > cap:
                raise KafkaError(
                    ErrorCode.POLICY_VIOLATION,
                    f"auto-creating {name!r} would make {busiest + added} partitions on a "
                    f"broker, more than broker.auto_create_topics_max_partitions = {cap}",
                )
        return await self.create_topic(name, b.default_partitions, rf)

    async def delete_topic(self, name: str) -> TopicInfo:
        if not self.config.broker.delete_topic_enable:
            raise KafkaError(
                ErrorCode.TOPIC_DELETION_DISABLED, "topic deletion is disabled on this broker"
            )
        topic = self.require_topic(name)
        if topic.internal:
            raise KafkaError(ErrorCode.INVALID_TOPIC_EXCEPTION, f"{name} is an internal topic")
        if self.cluster is not None:
            await self.cluster.delete_topic(name)
            log.info("deleted topic %s", name)
            return topic
        await self.metadata.delete_topic(name)
        # No await from here until every partition is detached: a CreateTopics of the
        # same name (waiting on the metadata lock) never meets these partitions or logs.
        deleting = False
        for i in range(topic.partitions):
            deleting = self.stop_hosting(name, i, delete=True) is not None or deleting
        if deleting:  # rename the folders away and fsync the data directory, off the loop
            await self._delete_detached()
        log.info("deleted topic %s", name)
        return topic

    def validate_partition_increase(
        self, name: str, total: int, *, already_in_request: int = 0
    ) -> TopicInfo:
        """The topic, if growing it to `total` partitions is allowed; else the Kafka error."""
        topic = self.require_topic(name)
        if total <= topic.partitions:
            raise KafkaError(
                ErrorCode.INVALID_PARTITIONS,
                f"topic {name} has {topic.partitions} partitions; {total} would not add any",
            )
        self.check_partition_limits(
            total - topic.partitions,
            topic.replication_factor,
            already_in_request=already_in_request,
        )
        return topic

    async def add_partitions(
        self, name: str, total: int, assignment: list[list[int]] | None = None
    ) -> TopicInfo:
        topic = self.validate_partition_increase(name, total)
        old = topic.partitions
        if self.cluster is not None:
            if assignment is None:
                assignment = self.cluster.plan_assignment(
                    total - old, topic.replication_factor, first_partition=old, seed=name
                )
            else:
                self.cluster.check_assignment(assignment)
            await self.cluster.add_partitions(name, assignment)
            return self.require_topic(name)
        topic = await self.metadata.set_partitions(name, total)
        await self._open_topic_off_loop(topic, range(old, total))
        return topic

    async def set_topic_configs(self, name: str, configs: dict[str, str]) -> TopicInfo:
        cfg = self.validate_configs(configs)
        if self.cluster is not None:
            await self.cluster.set_configs(name, configs)
            return self.require_topic(name)
        topic = await self.metadata.set_configs(name, configs)
        for i in range(topic.partitions):
            p = self.partitions.get((name, i))
            if p is not None:
                p.log.update_config(cfg)
        return topic

    # -- waiting for data --------------------------------------------------------------

    async def wait_for_data(self, partitions: Iterable[Partition], timeout_s: float) -> None:
        """Return when any of the partitions gets data, or after the timeout."""
        partitions = list(partitions)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        for p in partitions:
            p.waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            pass
        finally:
            for p in partitions:
                if fut in p.waiters:
                    p.waiters.remove(fut)


def now_ms() -> int:
    return int(time.time() * 1000)
