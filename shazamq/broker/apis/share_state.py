"""The share coordinator's RPCs between brokers (KIP-932), in a cluster only.

=================================  ========  ==========================================
API (key)                          versions  served by
=================================  ========  ==========================================
InitializeShareGroupState 83       0         groups/share_state_coordinator.py
ReadShareGroupState 84             0
WriteShareGroupState 85            0
DeleteShareGroupState 86           0
ReadShareGroupStateSummary 87      0
=================================  ========  ==========================================

Share-partition leaders and the offsets administration send them (the summary, start
offset and state epoch without the in-flight window, describes share group offsets) to the share
coordinator of each key (groups/share_persister.py); each partition is answered on its
own, in request order. A single broker keeps its share state itself and registers none.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.delete_share_group_state_request import (
    DeleteShareGroupStateRequest,
)
from shazamq.protocol.messages.delete_share_group_state_response import (
    DeleteShareGroupStateResponse,
    DeleteStateResult,
)
from shazamq.protocol.messages.delete_share_group_state_response import (
    PartitionResult as DeleteResult,
)
from shazamq.protocol.messages.initialize_share_group_state_request import (
    InitializeShareGroupStateRequest,
)
from shazamq.protocol.messages.initialize_share_group_state_response import (
    InitializeShareGroupStateResponse,
    InitializeStateResult,
)
from shazamq.protocol.messages.initialize_share_group_state_response import (
    PartitionResult as InitializeResult,
)
from shazamq.protocol.messages.read_share_group_state_request import ReadShareGroupStateRequest
from shazamq.protocol.messages.read_share_group_state_response import (
    PartitionResult as ReadResult,
)
from shazamq.protocol.messages.read_share_group_state_response import (
    ReadShareGroupStateResponse,
    ReadStateResult,
)
from shazamq.protocol.messages.read_share_group_state_response import (
    StateBatch as ReadBatch,
)
from shazamq.protocol.messages.read_share_group_state_summary_request import (
    ReadShareGroupStateSummaryRequest,
)
from shazamq.protocol.messages.read_share_group_state_summary_response import (
    PartitionResult as SummaryResult,
)
from shazamq.protocol.messages.read_share_group_state_summary_response import (
    ReadShareGroupStateSummaryResponse,
    ReadStateSummaryResult,
)
from shazamq.protocol.messages.write_share_group_state_request import WriteShareGroupStateRequest
from shazamq.protocol.messages.write_share_group_state_response import (
    PartitionResult as WriteResult,
)
from shazamq.protocol.messages.write_share_group_state_response import (
    WriteShareGroupStateResponse,
    WriteStateResult,
)

from ..groups.share_persister import from_wire
from ..groups.share_state_coordinator import StateAnswer

if TYPE_CHECKING:
    from ..app import Broker
    from ..server import RequestContext
    from . import Dispatcher

__all__ = ["register"]


async def _each(
    req: Any,
    answer: Callable[[str, Any, Any], Awaitable[Any]],
    result: Callable[..., Any],
) -> list[Any]:
    """One ``result(topic_id=..., partitions=[...])`` per topic of ``req``, each partition
    answered by ``answer(group, topic_id, partition data)``."""
    return [
        result(
            topic_id=t.topic_id,
            partitions=[await answer(req.group_id, t.topic_id, p) for p in t.partitions],
        )
        for t in req.topics
    ]


def register(d: Dispatcher, broker: Broker) -> None:
    if broker.cluster is None:
        return

    def coordinator() -> Any:
        return broker.share.state_coordinator

    async def read(ctx: RequestContext, req: ReadShareGroupStateRequest) -> Any:
        async def one(group: str, tid: Any, p: Any) -> ReadResult:
            c = coordinator()
            if c is None:
                return ReadResult(
                    partition=p.partition, error_code=ErrorCode.COORDINATOR_NOT_AVAILABLE
                )
            a = await c.read((group, tid, p.partition), p.leader_epoch)
            if a.error or a.state is None:
                return ReadResult(
                    partition=p.partition,
                    error_code=a.error,
                    error_message=a.message,
                    state_epoch=0,
                    start_offset=-1,
                )
            s = a.state
            return ReadResult(
                partition=p.partition,
                state_epoch=s.state_epoch,
                start_offset=s.start_offset,
                state_batches=[
                    ReadBatch(
                        first_offset=b.first,
                        last_offset=b.last,
                        delivery_state=int(b.state),
                        delivery_count=min(b.delivery_count, 0x7FFF),
                    )
                    for b in s.batches
                ],
            )

        return ReadShareGroupStateResponse(results=await _each(req, one, ReadStateResult))

    async def summary(ctx: RequestContext, req: ReadShareGroupStateSummaryRequest) -> Any:
        async def one(group: str, tid: Any, p: Any) -> SummaryResult:
            c = coordinator()
            if c is None:
                a = StateAnswer(int(ErrorCode.COORDINATOR_NOT_AVAILABLE))
            elif not group:
                a = StateAnswer(int(ErrorCode.INVALID_REQUEST), "the group id is empty")
            else:
                a = c.summary((group, tid, p.partition), p.leader_epoch)
            if a.error or a.state is None:
                return SummaryResult(
                    partition=p.partition,
                    error_code=a.error,
                    error_message=a.message,
                    state_epoch=0,
                    start_offset=-1,
                )
            return SummaryResult(
                partition=p.partition,
                state_epoch=a.state.state_epoch,
                start_offset=a.state.start_offset,
            )

        return ReadShareGroupStateSummaryResponse(
            results=await _each(req, one, ReadStateSummaryResult)
        )

    async def write(ctx: RequestContext, req: WriteShareGroupStateRequest) -> Any:
        async def one(group: str, tid: Any, p: Any) -> WriteResult:
            c = coordinator()
            if c is None:
                return WriteResult(
                    partition=p.partition, error_code=ErrorCode.COORDINATOR_NOT_AVAILABLE
                )
            try:
                batches = from_wire(p.state_batches)
            except ValueError as exc:
                return WriteResult(
                    partition=p.partition,
                    error_code=ErrorCode.INVALID_REQUEST,
                    error_message=str(exc),
                )
            code, message = await c.write(
                (group, tid, p.partition), p.state_epoch, p.leader_epoch, p.start_offset, batches
            )
            return WriteResult(partition=p.partition, error_code=code, error_message=message)

        return WriteShareGroupStateResponse(results=await _each(req, one, WriteStateResult))

    async def initialize(ctx: RequestContext, req: InitializeShareGroupStateRequest) -> Any:
        async def one(group: str, tid: Any, p: Any) -> InitializeResult:
            c = coordinator()
            if c is None:
                return InitializeResult(
                    partition=p.partition, error_code=ErrorCode.COORDINATOR_NOT_AVAILABLE
                )
            code, message = await c.initialize(
                (group, tid, p.partition), p.state_epoch, p.start_offset
            )
            return InitializeResult(partition=p.partition, error_code=code, error_message=message)

        return InitializeShareGroupStateResponse(
            results=await _each(req, one, InitializeStateResult)
        )

    async def delete(ctx: RequestContext, req: DeleteShareGroupStateRequest) -> Any:
        async def one(group: str, tid: Any, p: Any) -> DeleteResult:
            c = coordinator()
            if c is None:
                return DeleteResult(
                    partition=p.partition, error_code=ErrorCode.COORDINATOR_NOT_AVAILABLE
                )
            code, message = await c.delete((group, tid, p.partition))
            return DeleteResult(partition=p.partition, error_code=code, error_message=message)

        return DeleteShareGroupStateResponse(results=await _each(req, one, DeleteStateResult))

    d.register(83, 0, 0, initialize)
    d.register(84, 0, 0, read)
    d.register(85, 0, 0, write)
    d.register(86, 0, 0, delete)
    d.register(87, 0, 0, summary)


_RESPONSES: dict[int, tuple[Any, Any, Any]] = {
    83: (InitializeShareGroupStateResponse, InitializeStateResult, InitializeResult),
    84: (ReadShareGroupStateResponse, ReadStateResult, ReadResult),
    85: (WriteShareGroupStateResponse, WriteStateResult, WriteResult),
    86: (DeleteShareGroupStateResponse, DeleteStateResult, DeleteResult),
    87: (ReadShareGroupStateSummaryResponse, ReadStateSummaryResult, SummaryResult),
}


def refused(api_key: int, code: int, req: Any) -> Any:
    """The answer of request ``req`` of ``api_key`` with every partition ``code``."""
    response, result, partition = _RESPONSES[api_key]
    return response(
        results=[
            result(
                topic_id=t.topic_id,
                partitions=[
                    partition(partition=p.partition, error_code=code) for p in t.partitions
                ],
            )
            for t in req.topics
        ]
    )
