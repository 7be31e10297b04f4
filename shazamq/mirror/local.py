"""The broker as the mirror sees it: topics, partitions and group offsets, nothing more.

The composition root hands the mirror one ``LocalBroker`` built from the partition
manager and the group coordinator; the mirror never reaches into them otherwise.

In a cluster the same questions have cluster answers: topics are created through the
controller (with the source's topic id, at the cluster's replication factor), topic
administration is done by one broker (the active controller), a partition is copied only
where it is led, and a copied append moves the leader's high watermark as a produce does.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, NamedTuple

from shazamq.broker.cluster import records
from shazamq.broker.groups.group import GroupState
from shazamq.broker.groups.offsets import OffsetCommit
from shazamq.broker.topic_configs import MIRROR_SOURCE, is_promoting
from shazamq.protocol.errors import ErrorCode, KafkaError

if TYPE_CHECKING:
    from shazamq.broker.cluster.metadata import TopicInfo
    from shazamq.broker.groups import GroupCoordinator
    from shazamq.broker.log.writer import LogWriter
    from shazamq.broker.partitions import Partition, PartitionManager
    from shazamq.broker.txn import TransactionCoordinator

__all__ = ["AbortedTxn", "LocalBroker"]

TopicPartition = tuple[str, int]


class AbortedTxn(NamedTuple):
    """A transaction left open in a partition, ended here with an ABORT marker."""

    producer_id: int
    producer_epoch: int
    first_offset: int
    error_code: int  # 0: the marker is in (on the in-sync replicas in a cluster)


class LocalBroker:
    """Topic admin, hosted partitions and committed offsets of this broker."""

    def __init__(
        self,
        partitions: PartitionManager,
        groups: GroupCoordinator,
        cluster_id: Callable[[], str],
        txn: TransactionCoordinator | None = None,
    ) -> None:
        self._parts = partitions
        self._groups = groups
        self._cluster_id = cluster_id
        self._txn = txn
        # single broker: partitions of topics being promoted whose copy has ended (the
        # cluster keeps these in its metadata, where every broker and a new leader see them)
        self._sealed: dict[TopicPartition, int] = {}

    @property
    def cluster_id(self) -> str:
        return self._cluster_id()

    @property
    def manages_topics(self) -> bool:
        """Whether this broker creates, grows, configures and promotes mirrored topics:
        a single broker always; in a cluster only the active controller, so the brokers
        do not race each other's proposals."""
        cluster = self._parts.cluster
        return cluster is None or cluster.controller_id == cluster.node_id

    def on_partition_role(self, listener: Callable[[Partition, bool], None]) -> None:
        """Call ``listener(partition, leads_here)`` as leadership comes and goes (never on
        a single broker, where every hosted partition is led here)."""
        cluster = self._parts.cluster
        if cluster is not None:
            cluster.on_partition_role.append(listener)

    def forget_partition_role(self, listener: Callable[[Partition, bool], None]) -> None:
        cluster = self._parts.cluster
        if cluster is not None and listener in cluster.on_partition_role:
            cluster.on_partition_role.remove(listener)

    @property
    def writer(self) -> LogWriter | None:
        """The broker's write pool, which copied appends go through."""
        return self._parts.writer

    @staticmethod
    def leads(p: Partition) -> bool:
        """Whether ``p`` is led here (and so is the one replica a mirror appends to)."""
        return p.is_leader

    def appended(self, p: Partition) -> None:
        """After a copied append on the leader: the high watermark follows the in-sync
        replicas (at once when the leader is the only one), as after a produce."""
        cluster = self._parts.cluster
        if cluster is not None and p.replica is not None and p.replica.is_leader:
            cluster.advance_high_watermark(p)

    @staticmethod
    def copied_up_to(p: Partition) -> int:
        """How far the copy of ``p`` is durable here: its log end on a single broker, its
        high watermark (what every in-sync replica has) in a cluster."""
        return p.log.log_end_offset if p.replica is None else p.log.high_watermark

    # -- producer ids ------------------------------------------------------------------

    def producer_id_floor(self) -> int:
        """No producer id below this will be handed out here from now on (-1: no
        allocator yet). A single broker's durable allocation floor; in a cluster the
        quorum's next unallocated id."""
        cluster = self._parts.cluster
        if cluster is not None:
            return cluster.state.next_producer_id
        ids = None if self._txn is None else self._txn.producer_ids
        return -1 if ids is None else ids.floor

    async def reserve_producer_ids(self, producer_id: int) -> None:
        """Raise the floor above ``producer_id`` durably (an id in copied batches), so a
        promoted topic never sees a local producer reuse it. Rare (once per new highest
        source id), so the single broker's small fsync'd write runs here, as its
        allocator's block reservations do; in a cluster the quorum allocates the ids up to
        it as a block nobody hands out."""
        cluster = self._parts.cluster
        if cluster is None:
            ids = None if self._txn is None else self._txn.producer_ids
            if ids is not None:
                ids.keep_out(producer_id)
            return
        await cluster.reserve_producer_ids(producer_id)

    # -- transactions ------------------------------------------------------------------

    async def abort_open_transactions(self, p: Partition) -> list[AbortedTxn]:
        """Append an ABORT marker for every transaction open in ``p`` (led here), as a
        coordinator would: under the producer's epoch and its latest coordinator epoch,
        which the log accepts. For a mirrored partition that stops being copied: the
        source's open transactions would never get their marker here, and the last
        stable offset would stay at their first offset forever."""
        if self._txn is None:
            return []
        writer = self.writer
        if writer is not None:
            # a copied append queued before the copy stopped may open a transaction: the
            # producer state is read once it is in
            await writer.settled(p.log)
        open_txns = [a for a in p.log.active_producers() if a.current_txn_start_offset >= 0]
        out = []
        for a in open_txns:
            code = await self._txn.write_marker(
                p.topic,
                p.index,
                a.producer_id,
                a.producer_epoch,
                False,
                max(a.coordinator_epoch, 0),
            )
            first = a.current_txn_start_offset
            out.append(AbortedTxn(a.producer_id, a.producer_epoch, first, code))
        return out

    # -- promotion ---------------------------------------------------------------------

    def promoting_topics(self) -> list[str]:
        """Topics whose promotion is under way (the marker in its promoting form)."""
        return [
            name
            for name, info in self._parts.metadata.topics.items()
            if is_promoting(info.configs.get(MIRROR_SOURCE, ""))
        ]

    def on_topics_changed(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after topics or their configs changed (cluster only: a
        single broker's changes are its own)."""
        cluster = self._parts.cluster
        if cluster is not None:
            cluster.on_topics_changed.append(lambda _changed, _deleted: listener())

    def sealed(self, name: str, index: int) -> bool:
        """Whether the leader of the partition has ended its copy (a promotion)."""
        cluster = self._parts.cluster
        if cluster is None:
            return (name, index) in self._sealed
        t = cluster.state.topics.get(name)
        return t is not None and index in t.mirror_sealed

    async def seal(self, p: Partition) -> None:
        """Record that the copy of ``p`` (led here) has ended, with its log end (the
        promotion point); in a cluster durably, under this leader's epoch, so a deposed
        leader's seal is refused (a single broker that restarts seals again, finding
        nothing open). Raises KafkaError."""
        cluster = self._parts.cluster
        if cluster is None:
            self._sealed[(p.topic, p.index)] = p.log.log_end_offset
            return
        t = cluster.state.topics.get(p.topic)
        if t is None or p.replica is None:
            raise KafkaError(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"{p.topic}-{p.index}")
        code = await cluster.propose(
            records.SealMirrorPartition(
                topic_id=t.topic_id,
                partition=p.index,
                leader_epoch=p.replica.leader_epoch,
                offset=p.log.log_end_offset,
            )
        )
        if code:
            raise KafkaError(code, f"sealing {p.topic}-{p.index} was refused")

    def promotion_points(self, name: str) -> dict[int, int]:
        """Partition -> the log end at which its leader sealed it (every batch below is
        the source's), for the sealed partitions of ``name``."""
        cluster = self._parts.cluster
        if cluster is None:
            return {i: end for (t, i), end in self._sealed.items() if t == name}
        t = cluster.state.topics.get(name)
        return {} if t is None else dict(t.mirror_sealed)

    def forget_seals(self, name: str) -> None:
        self._sealed = {tp: end for tp, end in self._sealed.items() if tp[0] != name}

    # -- topics ------------------------------------------------------------------------

    def topic(self, name: str) -> TopicInfo | None:
        return self._parts.metadata.get(name)

    def mark_of(self, name: str) -> str | None:
        """The topic's mirror marker, None if it is not (or no longer) a mirror."""
        info = self._parts.metadata.get(name)
        return None if info is None else info.configs.get(MIRROR_SOURCE)

    def topic_id_in_use(self, topic_id: uuid.UUID) -> bool:
        return self._parts.topic_by_id(topic_id) is not None

    def validate_configs(self, configs: Mapping[str, str]) -> None:
        """Raises KafkaError(INVALID_CONFIG) if this broker does not accept them."""
        self._parts.validate_configs(dict(configs))

    async def create_topic(
        self, name: str, partitions: int, configs: Mapping[str, str], topic_id: uuid.UUID | None
    ) -> TopicInfo:
        rf = 1
        cluster = self._parts.cluster
        if cluster is not None:
            live = len(cluster.state.live_brokers())
            rf = min(self._parts.config.replication.default_replication_factor, max(live, 1))
        return await self._parts.create_topic(
            name, partitions, rf, dict(configs), topic_id=topic_id
        )

    async def add_partitions(self, name: str, total: int) -> None:
        await self._parts.add_partitions(name, total)

    async def set_configs(self, name: str, configs: Mapping[str, str]) -> None:
        await self._parts.set_topic_configs(name, dict(configs))

    def partition(self, name: str, index: int) -> Partition | None:
        return self._parts.get(name, index)

    # -- groups ------------------------------------------------------------------------

    def coordinates(self, group_id: str) -> bool:
        """Whether this broker is the group's coordinator now (always on a single broker;
        in a cluster, the leader of the group's ``__consumer_offsets`` partition)."""
        return self._groups.coordinates(group_id)

    def group_active(self, group_id: str) -> bool:
        """Whether the group has members here (its offsets are then its own)."""
        group = self._groups.groups.get(group_id)
        return group is not None and not group.is_state(GroupState.EMPTY, GroupState.DEAD)

    def committed(
        self, group_id: str, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, tuple[int, str]]:
        """``(offset, metadata)`` of the partitions with a committed offset here."""
        code, fetched = self._groups.fetch_offsets(group_id, partitions)
        if code:
            return {}
        return {(f.topic, f.partition): (f.offset, f.metadata) for f in fetched if f.offset >= 0}

    async def commit(
        self, group_id: str, offsets: Mapping[TopicPartition, int], metadata: str
    ) -> dict[TopicPartition, int]:
        """Commit as an admin would (no member, generation -1): refused for active groups."""
        return await self._groups.commit_offsets_async(
            group_id=group_id,
            generation_id=-1,
            member_id="",
            group_instance_id=None,
            retention_ms=-1,
            offsets={tp: OffsetCommit(offset, -1, metadata) for tp, offset in offsets.items()},
        )
