"""Share group offsets (KIP-932): describing, altering and deleting share-partition state.

A share group has no committed offsets; what stands for them is each share-partition's
start offset (SPSO), below which the group is done with the partition. The three admin
APIs work on it as Kafka does:

* DescribeShareGroupOffsets: the start offset per partition asked for (or of every
  share-partition of the group), -1 where the group has no state; a topic that does not
  exist is answered with start offsets of -1, not an error. Version 1 adds the lag: the
  records up to the high watermark the group has not finished with.
* AlterShareGroupOffsets: only for an existing share group with no members
  (GROUP_ID_NOT_FOUND, NON_EMPTY_GROUP); each partition named gets a fresh state starting
  at the offset given (UNKNOWN_TOPIC_OR_PARTITION for a missing topic or partition).
* DeleteShareGroupOffsets: the same group checks; the state of every share-partition of
  each topic named is removed, so the group starts over there by
  ``share.auto.offset.reset``. A topic without state is UNKNOWN_TOPIC_OR_PARTITION.

The state itself, and its durability, are the share coordinator's: on a single broker
the local one; in a cluster the share coordinator of each key, reached with
Read/Initialize/DeleteShareGroupState (reads with leader epoch -1, which fence nobody).
There the lag is known only for partitions led by the broker answering, which reads the
whole state for it; elsewhere the lag is -1 and the start offset comes from
ReadShareGroupStateSummary, as Kafka describes share group offsets.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shazamq.protocol.errors import ErrorCode, KafkaError

from .share_partition import finished_in

if TYPE_CHECKING:
    from .share_coordinator import ShareCoordinator

__all__ = ["PartitionOffset", "ShareOffsets", "TopicOffsets"]

_E = ErrorCode
ZERO_UUID = uuid.UUID(int=0)


@dataclass(frozen=True, slots=True)
class PartitionOffset:
    partition: int
    start_offset: int = -1
    leader_epoch: int = 0
    lag: int = -1
    error: int = 0
    message: str | None = None


@dataclass(slots=True)
class TopicOffsets:
    name: str
    topic_id: uuid.UUID = ZERO_UUID
    partitions: list[PartitionOffset] = field(default_factory=list)
    error: int = 0
    message: str | None = None


Result = tuple[int, str | None, list[TopicOffsets]]


class ShareOffsets:
    """The three offset APIs over a share coordinator."""

    def __init__(self, share: ShareCoordinator) -> None:
        self.share = share

    # -- describing -------------------------------------------------------------------

    def _candidates(self, group_id: str) -> set[tuple[str, uuid.UUID, int]]:
        """The share-partitions the group may have state for."""
        keys = self.share.share_partition_keys(group_id)
        group = self.share.groups.get(group_id)
        if self.share.leader is not None and group is not None:
            # in a cluster the states are elsewhere: every partition the group subscribed to
            topics = self.share.broker.metadata.topics
            for name in group.subscribed_metadata:
                info = topics.get(name)
                if info is not None:
                    keys.update((group_id, info.uuid, i) for i in range(info.partitions))
        return keys

    async def _progress(
        self, key: tuple[str, uuid.UUID, int], window: bool = True
    ) -> tuple[int, int] | None:
        """(start offset, records of the window done with) of a share-partition; without
        ``window`` (in a cluster, where the lag is not computed) the summary only, as
        Kafka reads it, and 0 for the window."""
        leader = self.share.leader
        if leader is None:
            return self.share.progress(key)
        if not window:
            summary = await leader.persister.summary(key)
            if summary.error:
                raise KafkaError(ErrorCode(summary.error), summary.message or "")
            return None if summary.state is None else (summary.state.start_offset, 0)
        answer = await leader.persister.read(key, -1)
        if answer.error:
            raise KafkaError(ErrorCode(answer.error), answer.message or "")
        snap = answer.state
        if snap is None:
            return None
        return snap.start_offset, finished_in(snap.start_offset, snap.batches)

    async def describe(self, group_id: str, topics: list[tuple[str, list[int]]] | None) -> Result:
        """(group error, message, topics); ``topics`` None asks for every share-partition
        of the group."""
        status = self.share._key_status(group_id)
        if status:
            return status, None, []
        metadata = self.share.broker.metadata
        if topics is None:
            by_topic: dict[uuid.UUID, list[int]] = {}
            for key in await self._stateful(group_id):
                by_topic.setdefault(key[1], []).append(key[2])
            topics = []
            for tid, indexes in by_topic.items():
                info = metadata.by_id.get(tid)
                if info is not None:
                    topics.append((info.name, sorted(indexes)))
            topics.sort()
        out = []
        for name, indexes in topics:
            info = metadata.topics.get(name)
            if info is None:
                out.append(TopicOffsets(name, ZERO_UUID, [PartitionOffset(i) for i in indexes]))
                continue
            out.append(
                TopicOffsets(
                    name,
                    info.uuid,
                    [await self._describe_one(group_id, info.uuid, name, i) for i in indexes],
                )
            )
        return 0, None, out

    async def _describe_one(
        self, group_id: str, topic_id: uuid.UUID, name: str, index: int
    ) -> PartitionOffset:
        p = self.share.broker.partitions.get(name, index)
        led_here = p is not None and p.is_leader
        try:
            progress = await self._progress((group_id, topic_id, index), window=led_here)
        except KafkaError as exc:
            return PartitionOffset(index, error=int(exc.code), message=exc.message)
        if progress is None:
            return PartitionOffset(index)
        start, finished = progress
        if p is None or not led_here:  # led elsewhere: the log end is not known here
            return PartitionOffset(index, start)
        lag = max(p.log.high_watermark - max(start, p.log.log_start_offset) - finished, 0)
        return PartitionOffset(index, start, max(p.leader_epoch, 0), lag)

    # -- changing ---------------------------------------------------------------------

    def _changeable(self, group_id: str) -> tuple[int, str | None]:
        """0, or why the group's offsets cannot be changed now."""
        if not group_id:
            return int(_E.INVALID_GROUP_ID), "The group id is empty."
        status = self.share._key_status(group_id)
        if status:
            return status, None
        group = self.share.groups.get(group_id)
        if group is None:
            kind = "is not a share group" if self.share._other_kind(group_id) else "not found"
            return int(_E.GROUP_ID_NOT_FOUND), f"Group {group_id} {kind}."
        if group.members:
            return int(_E.NON_EMPTY_GROUP), f"Group {group_id} has members."
        return 0, None

    async def alter(self, group_id: str, topics: list[tuple[str, list[tuple[int, int]]]]) -> Result:
        """Set start offsets: ``topics`` is (name, [(partition, start offset)])."""
        code, message = self._changeable(group_id)
        if code:
            return (
                code,
                message,
                [
                    TopicOffsets(
                        name, ZERO_UUID, [PartitionOffset(i, error=code) for i, _o in parts]
                    )
                    for name, parts in topics
                ],
            )
        metadata = self.share.broker.metadata
        out = []
        starts: dict[tuple[str, uuid.UUID, int], int | None] = {}
        for name, parts in topics:
            info = metadata.topics.get(name)
            if info is None:
                unknown = int(_E.UNKNOWN_TOPIC_OR_PARTITION)
                out.append(
                    TopicOffsets(
                        name, ZERO_UUID, [PartitionOffset(i, error=unknown) for i, _o in parts]
                    )
                )
                continue
            answers = []
            for index, offset in parts:
                if not 0 <= index < info.partitions:
                    answers.append(
                        PartitionOffset(
                            index,
                            error=int(_E.UNKNOWN_TOPIC_OR_PARTITION),
                            message=f"{name} has no partition {index}.",
                        )
                    )
                elif offset < 0:
                    answers.append(
                        PartitionOffset(
                            index,
                            error=int(_E.INVALID_REQUEST),
                            message=f"The start offset {offset} is negative.",
                        )
                    )
                else:
                    starts[(group_id, info.uuid, index)] = offset
                    answers.append(PartitionOffset(index, offset))
            out.append(TopicOffsets(name, info.uuid, answers))
        if self.share.leader is not None:
            failed = await self._each_key(starts)
            for t in out:
                t.partitions = [
                    dataclasses.replace(p, error=failed[k][0], message=failed[k][1])
                    if (k := (group_id, t.topic_id, p.partition)) in failed
                    else p
                    for p in t.partitions
                ]
            return 0, None, out
        try:
            await self.share.reset_share_partitions(group_id, starts)
        except KafkaError as exc:
            return int(exc.code), exc.message, []
        return 0, None, out

    async def _each_key(
        self, starts: dict[tuple[str, uuid.UUID, int], int | None]
    ) -> dict[tuple[str, uuid.UUID, int], tuple[int, str | None]]:
        """Initialize (an offset) or delete (None) each key at its share coordinator, and
        forget what this broker holds of it; the keys that failed."""
        leader = self.share.leader
        assert leader is not None
        failed = {}
        for key, start in starts.items():
            if start is None:
                code, message = await leader.persister.delete(key)
            else:
                code, message = await leader.persister.initialize(key, start)
            leader.drop(key)
            if code:
                failed[key] = (code, message)
        return failed

    async def delete(self, group_id: str, topics: list[str]) -> Result:
        """Remove the share-partition state of the topics named."""
        code, message = self._changeable(group_id)
        if code:
            return code, message, []
        metadata = self.share.broker.metadata
        keys = await self._stateful(group_id)
        out = []
        doomed: dict[tuple[str, uuid.UUID, int], int | None] = {}
        for name in topics:
            info = metadata.topics.get(name)
            if info is None:
                out.append(
                    TopicOffsets(
                        name,
                        error=int(_E.UNKNOWN_TOPIC_OR_PARTITION),
                        message=f"Topic {name} does not exist.",
                    )
                )
                continue
            mine = [k for k in keys if k[1] == info.uuid]
            if not mine:
                out.append(
                    TopicOffsets(
                        name,
                        info.uuid,
                        error=int(_E.UNKNOWN_TOPIC_OR_PARTITION),
                        message="There is no offset information to delete.",
                    )
                )
                continue
            doomed.update(dict.fromkeys(mine))
            out.append(TopicOffsets(name, info.uuid))
        if self.share.leader is not None:
            failed = await self._each_key(doomed)
            for t in out:
                errors = [failed[k] for k in doomed if k[1] == t.topic_id and k in failed]
                if errors and not t.error:
                    t.error, t.message = errors[0]
            return 0, None, out
        try:
            await self.share.reset_share_partitions(group_id, doomed)
        except KafkaError as exc:
            return int(exc.code), exc.message, []
        return 0, None, out

    async def _stateful(self, group_id: str) -> set[tuple[str, uuid.UUID, int]]:
        """The share-partitions of the group that have state."""
        if self.share.leader is None:
            return self.share.share_partition_keys(group_id)
        out = set()
        for key in self._candidates(group_id):
            try:
                if await self._progress(key, window=False) is not None:
                    out.add(key)
            except KafkaError:
                out.add(key)  # not known: deleting it is harmless, describing shows the error
        return out
