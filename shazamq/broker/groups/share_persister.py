"""How a share-partition leader reaches the share coordinator of a key (cluster mode).

Each call finds the coordinator of the key from the cluster's metadata (the leader of the
key's ``__share_group_state`` partition), answers it directly when that is this broker,
and otherwise sends the Read/Write/Initialize/DeleteShareGroupState(Summary) RPC over a pooled
connection. Errors a coordinator move explains (NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS,
COORDINATOR_NOT_AVAILABLE, a broken connection, a replication timeout) are retried with a
short backoff until the call's deadline; what remains is returned as an error code.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.delete_share_group_state_request import (
    DeleteShareGroupStateRequest,
    DeleteStateData,
)
from shazamq.protocol.messages.delete_share_group_state_request import (
    PartitionData as DeletePartition,
)
from shazamq.protocol.messages.initialize_share_group_state_request import (
    InitializeShareGroupStateRequest,
    InitializeStateData,
)
from shazamq.protocol.messages.initialize_share_group_state_request import (
    PartitionData as InitializePartition,
)
from shazamq.protocol.messages.read_share_group_state_request import (
    PartitionData as ReadPartition,
)
from shazamq.protocol.messages.read_share_group_state_request import (
    ReadShareGroupStateRequest,
    ReadStateData,
)
from shazamq.protocol.messages.read_share_group_state_summary_request import (
    PartitionData as SummaryPartition,
)
from shazamq.protocol.messages.read_share_group_state_summary_request import (
    ReadShareGroupStateSummaryRequest,
    ReadStateSummaryData,
)
from shazamq.protocol.messages.write_share_group_state_request import (
    PartitionData as WritePartition,
)
from shazamq.protocol.messages.write_share_group_state_request import (
    StateBatch as WireBatch,
)
from shazamq.protocol.messages.write_share_group_state_request import (
    WriteShareGroupStateRequest,
    WriteStateData,
)

from .share_partition import RecordState, StateBatch
from .share_state_coordinator import PartKey, ShareStateCoordinator, StateAnswer
from .share_state_store import Snapshot

if TYPE_CHECKING:
    from shazamq.broker.cluster.client import ClientPool
    from shazamq.broker.cluster.node import ClusterNode

__all__ = ["SharePersister"]

log = logging.getLogger(__name__)
_E = ErrorCode
T = TypeVar("T")

INITIALIZE_KEY, READ_KEY, WRITE_KEY, DELETE_KEY, SUMMARY_KEY = 83, 84, 85, 86, 87
_RETRIABLE = frozenset(
    int(c)
    for c in (
        _E.NOT_COORDINATOR,
        _E.COORDINATOR_LOAD_IN_PROGRESS,
        _E.COORDINATOR_NOT_AVAILABLE,
        _E.NETWORK_EXCEPTION,
        _E.REQUEST_TIMED_OUT,
        _E.NOT_ENOUGH_REPLICAS,
        _E.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        _E.NOT_LEADER_OR_FOLLOWER,
    )
)
_RPC_TIMEOUT_S = 10.0


def _one(response: Any) -> tuple[int, str | None, Any]:
    """(error, message, partition result) of a one-partition state answer."""
    for result in response.results:
        for part in result.partitions:
            return int(part.error_code), part.error_message, part
    return int(_E.UNKNOWN_SERVER_ERROR), "the answer names no partition", None


def wire_batches(batches: tuple[StateBatch, ...]) -> list[WireBatch]:
    return [
        WireBatch(
            first_offset=b.first,
            last_offset=b.last,
            delivery_state=int(b.state),
            delivery_count=min(b.delivery_count, 0x7FFF),
        )
        for b in batches
    ]


def from_wire(batches: Any) -> tuple[StateBatch, ...]:
    """State batches of a request or answer; ValueError names a bad one."""
    out = []
    for b in batches:
        try:
            state = RecordState(b.delivery_state)
        except ValueError:
            raise ValueError(f"unknown delivery state {b.delivery_state}") from None
        if b.last_offset < b.first_offset:
            raise ValueError(f"state batch {b.first_offset}-{b.last_offset} is reversed")
        out.append(StateBatch(b.first_offset, b.last_offset, state, b.delivery_count))
    return tuple(out)


def _summary_answer(code: int, message: str | None, part: Any) -> StateAnswer:
    """A summary's answer; a key or group without state is no error to its askers."""
    if code in (_E.UNKNOWN_TOPIC_OR_PARTITION, _E.GROUP_ID_NOT_FOUND):
        return StateAnswer()
    if code:
        return StateAnswer(code, message)
    return StateAnswer(state=Snapshot(0, part.state_epoch, part.start_offset, ()))


class SharePersister:
    """A share-partition leader's door to the share coordinators."""

    def __init__(
        self,
        cluster: ClusterNode,
        node_id: int,
        coordinator: ShareStateCoordinator,
        pool: ClientPool,
        *,
        deadline_s: float = 15.0,
    ) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.coordinator = coordinator
        self.pool = pool
        self.deadline_s = deadline_s

    async def _call(
        self,
        key: PartKey,
        local: Callable[[], Awaitable[T]],
        remote: Callable[[Any], Awaitable[T]],
        error_of: Callable[[T], int],
        failed: Callable[[int, str], T],
    ) -> T:
        deadline = time.monotonic() + self.deadline_s
        delay = 0.05
        result: T = failed(int(_E.COORDINATOR_NOT_AVAILABLE), "no share coordinator")
        while True:
            node = self.coordinator.coordinator_of(key)
            if node < 0:
                result = failed(int(_E.COORDINATOR_NOT_AVAILABLE), "no share coordinator yet")
            elif node == self.node_id:
                result = await local()
            else:
                try:
                    client = await self.pool.get(node)
                    result = await remote(client)
                except Exception as exc:  # unreachable, broken, undecodable
                    log.info("share state call to broker %d failed: %s", node, exc)
                    self.pool.invalidate(node)
                    result = failed(int(_E.NETWORK_EXCEPTION), str(exc))
            if error_of(result) not in _RETRIABLE or time.monotonic() + delay > deadline:
                return result
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def read(self, key: PartKey, leader_epoch: int) -> StateAnswer:
        group, tid, index = key

        async def remote(client: Any) -> StateAnswer:
            request = ReadShareGroupStateRequest(
                group_id=group,
                topics=[
                    ReadStateData(
                        topic_id=tid,
                        partitions=[ReadPartition(partition=index, leader_epoch=leader_epoch)],
                    )
                ],
            )
            response = await client.request(READ_KEY, 0, request, timeout=_RPC_TIMEOUT_S)
            code, message, part = _one(response)
            if code:
                return StateAnswer(code, message)
            if part.start_offset < 0:
                return StateAnswer()
            return StateAnswer(
                state=Snapshot(
                    0, part.state_epoch, part.start_offset, from_wire(part.state_batches)
                )
            )

        return await self._call(
            key,
            lambda: self.coordinator.read(key, leader_epoch),
            remote,
            lambda a: a.error,
            lambda code, message: StateAnswer(code, message),
        )

    async def summary(self, key: PartKey) -> StateAnswer:
        """The start offset and state epoch of ``key`` (no window: ``batches`` is empty);
        a state of None if the key has none."""
        group, tid, index = key

        async def remote(client: Any) -> StateAnswer:
            request = ReadShareGroupStateSummaryRequest(
                group_id=group,
                topics=[
                    ReadStateSummaryData(
                        topic_id=tid,
                        partitions=[SummaryPartition(partition=index, leader_epoch=-1)],
                    )
                ],
            )
            response = await client.request(SUMMARY_KEY, 0, request, timeout=_RPC_TIMEOUT_S)
            code, message, part = _one(response)
            return _summary_answer(code, message, part)

        async def local() -> StateAnswer:
            a = self.coordinator.summary(key, -1)
            if a.state is None:
                return _summary_answer(a.error, a.message, None)
            return StateAnswer(state=Snapshot(0, a.state.state_epoch, a.state.start_offset, ()))

        return await self._call(
            key,
            local,
            remote,
            lambda a: a.error,
            lambda code, message: StateAnswer(code, message),
        )

    async def write(
        self, key: PartKey, snap: Snapshot, leader_epoch: int
    ) -> tuple[int, str | None]:
        group, tid, index = key

        async def remote(client: Any) -> tuple[int, str | None]:
            request = WriteShareGroupStateRequest(
                group_id=group,
                topics=[
                    WriteStateData(
                        topic_id=tid,
                        partitions=[
                            WritePartition(
                                partition=index,
                                state_epoch=snap.state_epoch,
                                leader_epoch=leader_epoch,
                                start_offset=snap.start_offset,
                                state_batches=wire_batches(snap.batches),
                            )
                        ],
                    )
                ],
            )
            response = await client.request(WRITE_KEY, 0, request, timeout=_RPC_TIMEOUT_S)
            code, message, _p = _one(response)
            return code, message

        return await self._call(
            key,
            lambda: self.coordinator.write(
                key, snap.state_epoch, leader_epoch, snap.start_offset, snap.batches
            ),
            remote,
            lambda r: r[0],
            lambda code, message: (code, message),
        )

    async def initialize(self, key: PartKey, start_offset: int) -> tuple[int, str | None]:
        group, tid, index = key

        async def remote(client: Any) -> tuple[int, str | None]:
            request = InitializeShareGroupStateRequest(
                group_id=group,
                topics=[
                    InitializeStateData(
                        topic_id=tid,
                        partitions=[
                            InitializePartition(
                                partition=index, state_epoch=0, start_offset=start_offset
                            )
                        ],
                    )
                ],
            )
            response = await client.request(INITIALIZE_KEY, 0, request, timeout=_RPC_TIMEOUT_S)
            code, message, _p = _one(response)
            return code, message

        return await self._call(
            key,
            lambda: self.coordinator.initialize(key, 0, start_offset),
            remote,
            lambda r: r[0],
            lambda code, message: (code, message),
        )

    async def delete(self, key: PartKey) -> tuple[int, str | None]:
        group, tid, index = key

        async def remote(client: Any) -> tuple[int, str | None]:
            request = DeleteShareGroupStateRequest(
                group_id=group,
                topics=[
                    DeleteStateData(topic_id=tid, partitions=[DeletePartition(partition=index)])
                ],
            )
            response = await client.request(DELETE_KEY, 0, request, timeout=_RPC_TIMEOUT_S)
            code, message, _p = _one(response)
            return code, message

        return await self._call(
            key,
            lambda: self.coordinator.delete(key),
            remote,
            lambda r: r[0],
            lambda code, message: (code, message),
        )
