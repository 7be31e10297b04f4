"""The broker as the mirror sees it: topics, partitions and group offsets, nothing more.

The composition root hands the mirror one ``LocalBroker`` built from the partition
manager and the group coordinator; the mirror never reaches into them otherwise.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from shazamq.broker.groups.group import GroupState
from shazamq.broker.groups.offsets import OffsetCommit
from shazamq.broker.topic_configs import MIRROR_SOURCE

if TYPE_CHECKING:
    from shazamq.broker.cluster.metadata import TopicInfo
    from shazamq.broker.groups import GroupCoordinator
    from shazamq.broker.partitions import Partition, PartitionManager

__all__ = ["LocalBroker"]

TopicPartition = tuple[str, int]


class LocalBroker:
    """Topic admin, hosted partitions and committed offsets of this broker."""

    def __init__(
        self,
        partitions: PartitionManager,
        groups: GroupCoordinator,
        cluster_id: Callable[[], str],
    ) -> None:
        self._parts = partitions
        self._groups = groups
        self._cluster_id = cluster_id

    @property
    def cluster_id(self) -> str:
        return self._cluster_id()

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
        return await self._parts.create_topic(name, partitions, 1, dict(configs), topic_id=topic_id)

    async def add_partitions(self, name: str, total: int) -> None:
        await self._parts.add_partitions(name, total)

    async def set_configs(self, name: str, configs: Mapping[str, str]) -> None:
        await self._parts.set_topic_configs(name, dict(configs))

    def partition(self, name: str, index: int) -> Partition | None:
        return self._parts.get(name, index)

    # -- groups ------------------------------------------------------------------------

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
