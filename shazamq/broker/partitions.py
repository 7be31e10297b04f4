"""The partitions this broker hosts: their logs, and the signal that data arrived.

`PartitionManager` ties the metadata store (which topics exist) to the log manager (their
bytes on disk). Every API that touches records goes through it: produce appends, fetch
reads and long-polls, admin creates and deletes. Fetch long-polls wait on a per-partition
list of futures that an append resolves, so a waiting consumer wakes the moment data
lands instead of sleeping and re-checking.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

from shazamq.broker import topic_configs
from shazamq.broker.cluster.metadata import MetadataStore, TopicInfo, validate_topic_name
from shazamq.broker.log import LogConfig, LogManager, PartitionLog
from shazamq.broker.log.errors import InvalidConfigError
from shazamq.protocol.errors import ErrorCode, KafkaError

if TYPE_CHECKING:
    from shazamq.broker.cluster.node import ClusterNode
    from shazamq.broker.cluster.replica import ReplicaRole
    from shazamq.config import BrokerConfig

log = logging.getLogger(__name__)

INTERNAL_TOPICS = frozenset({"__consumer_offsets", "__transaction_state"})


def default_log_config(config: BrokerConfig) -> LogConfig:
    """The broker's `[storage]` section as the log's topic-level defaults."""
    s = config.storage
    return LogConfig(
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


class Partition:
    """One hosted partition: its log plus the futures of fetches waiting for data."""

    __slots__ = ("index", "leader_epoch", "log", "replica", "topic", "topic_info", "waiters")

    def __init__(self, topic_info: TopicInfo, index: int, log_: PartitionLog) -> None:
        self.topic_info = topic_info
        self.topic = topic_info.name
        self.index = index
        self.log = log_
        self.leader_epoch = 0
        self.waiters: list[asyncio.Future[None]] = []
        # the replication role in a cluster; None on a single broker
        self.replica: ReplicaRole | None = None

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
        # in a cluster: where replicas go and who leads; partitions are hosted as the
        # cluster's metadata assigns them, not as topics are created here
        self.cluster: ClusterNode | None = None

    # -- start-up ----------------------------------------------------------------------

    def load(self) -> None:
        """Open the log of every partition the metadata lists (creating missing dirs)."""
        if self.cluster is not None:
            return
        for topic in self.metadata.topics.values():
            self._open_topic(topic, range(topic.partitions))

    def host_partition(self, name: str, index: int) -> Partition:
        """Open (creating) the local log of a partition the cluster assigned here."""
        topic = self.require_topic(name)
        plog = self.logs.get_or_create(name, index, topic.uuid, self.log_config(topic))
        p = self.partitions[(name, index)] = Partition(topic, index, plog)
        return p

    async def unhost_partition(self, name: str, index: int, *, delete: bool) -> None:
        """Stop serving a partition the cluster moved away or deleted; drop its log."""
        p = self.partitions.pop((name, index), None)
        if p is None:
            return
        p.notify()
        if delete:
            await asyncio.get_running_loop().run_in_executor(
                None, self.logs.delete_partition, name, index
            )

    def _open_topic(self, topic: TopicInfo, indexes: Iterable[int]) -> None:
        cfg = self.log_config(topic)
        for i in indexes:
            plog = self.logs.get_or_create(topic.name, i, topic.uuid, cfg)
            self.partitions[(topic.name, i)] = Partition(topic, i, plog)

    # -- lookups -----------------------------------------------------------------------

    def get(self, topic: str, index: int) -> Partition | None:
        return self.partitions.get((topic, index))

    def require(self, topic: str, index: int) -> Partition:
        p = self.partitions.get((topic, index))
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
        self, name: str, partitions: int, replication_factor: int, configs: dict[str, str]
    ) -> None:
        validate_topic_name(name)
        if name in INTERNAL_TOPICS:
            raise KafkaError(ErrorCode.INVALID_TOPIC_EXCEPTION, f"{name} is an internal topic")
        if name in self.metadata.topics:
            raise KafkaError(ErrorCode.TOPIC_ALREADY_EXISTS, f"topic {name!r} already exists")
        if partitions < 1:
            raise KafkaError(ErrorCode.INVALID_PARTITIONS, "number of partitions must be >= 1")
        if partitions > 100_000:
            raise KafkaError(ErrorCode.INVALID_PARTITIONS, "at most 100000 partitions")
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

    def validate_configs(self, configs: dict[str, str]) -> LogConfig:
        try:
            return topic_configs.validate(self.defaults, configs)
        except InvalidConfigError as exc:
            raise KafkaError(ErrorCode.INVALID_CONFIG, str(exc)) from None

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
            if topic_id is not None:
                raise KafkaError(
                    ErrorCode.INVALID_REQUEST, "a given topic id needs a single broker"
                )
            if assignment is None:
                assignment = self.cluster.plan_assignment(partitions, replication_factor, seed=name)
            else:
                self.cluster.check_assignment(assignment)
            state = await self.cluster.create_topic(name, assignment, configs, internal=internal)
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
        self._open_topic(topic, range(partitions))
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
        rf = 1
        if self.cluster is not None:
            live = len(self.cluster.state.live_brokers())
            rf = min(self.config.replication.default_replication_factor, max(live, 1))
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
        loop = asyncio.get_running_loop()
        for i in range(topic.partitions):
            p = self.partitions.pop((name, i), None)
            if p is not None:
                p.notify()
            await loop.run_in_executor(None, self.logs.delete_partition, name, i)
        log.info("deleted topic %s", name)
        return topic

    def validate_partition_increase(self, name: str, total: int) -> TopicInfo:
        """The topic, if growing it to `total` partitions is allowed; else the Kafka error."""
        topic = self.require_topic(name)
        if total <= topic.partitions:
            raise KafkaError(
                ErrorCode.INVALID_PARTITIONS,
                f"topic {name} has {topic.partitions} partitions; {total} would not add any",
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
        self._open_topic(topic, range(old, total))
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
