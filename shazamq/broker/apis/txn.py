"""Transaction APIs: producer ids, transactions, and the tooling that inspects them.

Handlers translate request versions to the transaction coordinator
(:mod:`shazamq.broker.txn`) and back. Registered ranges (what ApiVersions advertises):

======================  ========  ======================================================
API (key)               versions  notes
======================  ========  ======================================================
InitProducerId 22       0-4       v3 producer id/epoch for recovery, v4 PRODUCER_FENCED
AddPartitionsToTxn 24   0-5       v0-3 from producers; v4+ from partition leaders,
                                  verifying a producer's partition (``verify_only``) or
                                  adding it (KIP-890)
AddOffsetsToTxn 25      0-4
EndTxn 26               0-5       v5 (transactions v2): the epoch is bumped at every
                                  end and the answer carries the new id and epoch
WriteTxnMarkers 27      0-1       from another broker's coordinator, or from an admin
                                  aborting a hanging transaction
TxnOffsetCommit 28      0-4       v3+ generation / member checks (KIP-447)
DescribeProducers 61    0
DescribeTransactions 65 0
ListTransactions 66     0-1       v1 duration filter
======================  ========  ======================================================

Versions from before PRODUCER_FENCED existed get INVALID_PRODUCER_EPOCH instead, which
is what those clients understand as "fenced".

WriteTxnMarkers is how a transaction coordinator ends a transaction in a partition led
by another broker, and how an operator aborts a hanging transaction (what
``kafka-transactions.sh abort`` sends, with the producer id, epoch and coordinator
epoch DescribeProducers shows): this broker, as the partition's leader, appends the
marker (checked against the producer's and the coordinator's epochs by the log) and
answers each partition once its in-sync replicas have it, with Kafka's per-partition
errors.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.add_offsets_to_txn_request import AddOffsetsToTxnRequest
from shazamq.protocol.messages.add_offsets_to_txn_response import AddOffsetsToTxnResponse
from shazamq.protocol.messages.add_partitions_to_txn_request import AddPartitionsToTxnRequest
from shazamq.protocol.messages.add_partitions_to_txn_response import (
    AddPartitionsToTxnPartitionResult,
    AddPartitionsToTxnResponse,
    AddPartitionsToTxnResult,
    AddPartitionsToTxnTopicResult,
)
from shazamq.protocol.messages.describe_producers_request import DescribeProducersRequest
from shazamq.protocol.messages.describe_producers_response import (
    DescribeProducersResponse,
    PartitionResponse,
    ProducerState,
    TopicResponse,
)
from shazamq.protocol.messages.describe_transactions_request import (
    DescribeTransactionsRequest,
)
from shazamq.protocol.messages.describe_transactions_response import (
    DescribeTransactionsResponse,
    TopicData,
)
from shazamq.protocol.messages.describe_transactions_response import (
    TransactionState as DescribedTransaction,
)
from shazamq.protocol.messages.end_txn_request import EndTxnRequest
from shazamq.protocol.messages.end_txn_response import EndTxnResponse
from shazamq.protocol.messages.init_producer_id_request import InitProducerIdRequest
from shazamq.protocol.messages.init_producer_id_response import InitProducerIdResponse
from shazamq.protocol.messages.list_transactions_request import ListTransactionsRequest
from shazamq.protocol.messages.list_transactions_response import (
    ListTransactionsResponse,
)
from shazamq.protocol.messages.list_transactions_response import (
    TransactionState as ListedTransaction,
)
from shazamq.protocol.messages.txn_offset_commit_request import TxnOffsetCommitRequest
from shazamq.protocol.messages.txn_offset_commit_response import (
    TxnOffsetCommitResponse,
    TxnOffsetCommitResponsePartition,
    TxnOffsetCommitResponseTopic,
)
from shazamq.protocol.messages.write_txn_markers_request import WriteTxnMarkersRequest
from shazamq.protocol.messages.write_txn_markers_response import (
    WritableTxnMarkerPartitionResult,
    WritableTxnMarkerResult,
    WritableTxnMarkerTopicResult,
    WriteTxnMarkersResponse,
)

from ..groups.coordinator import OffsetCommit

if TYPE_CHECKING:
    from ..app import Broker
    from ..server import RequestContext
    from . import Dispatcher

__all__ = ["register"]

TopicPartition = tuple[str, int]


def _fenced_for(version: int, first_with_fenced: int, code: int) -> int:
    """PRODUCER_FENCED as the request version can express it."""
    if code == ErrorCode.PRODUCER_FENCED and version < first_with_fenced:
        return int(ErrorCode.INVALID_PRODUCER_EPOCH)
    return code


def register(d: Dispatcher, broker: Broker) -> None:
    txn = broker.txn

    async def init_producer_id(
        ctx: RequestContext, req: InitProducerIdRequest
    ) -> InitProducerIdResponse:
        v = ctx.api_version
        result = await txn.init_producer_id_async(
            req.transactional_id,
            req.transaction_timeout_ms,
            req.producer_id if v >= 3 else -1,
            req.producer_epoch if v >= 3 else -1,
        )
        return InitProducerIdResponse(
            error_code=_fenced_for(v, 4, result.error),
            producer_id=result.producer_id,
            producer_epoch=result.producer_epoch,
        )

    async def add_partitions(
        ctx: RequestContext, req: AddPartitionsToTxnRequest
    ) -> AddPartitionsToTxnResponse:
        v = ctx.api_version
        if v >= 4:
            return await add_partitions_for_brokers(req)
        tps = [(t.name, i) for t in req.v3_and_below_topics for i in t.partitions]
        results = await txn.add_partitions_async(
            req.v3_and_below_transactional_id,
            req.v3_and_below_producer_id,
            req.v3_and_below_producer_epoch,
            tps,
        )
        by_topic: dict[str, list[AddPartitionsToTxnPartitionResult]] = {}
        for (topic, index), code in results.items():
            by_topic.setdefault(topic, []).append(
                AddPartitionsToTxnPartitionResult(
                    partition_index=index, partition_error_code=_fenced_for(v, 2, code)
                )
            )
        return AddPartitionsToTxnResponse(
            results_by_topic_v3_and_below=[
                AddPartitionsToTxnTopicResult(name=name, results_by_partition=parts)
                for name, parts in by_topic.items()
            ]
        )

    async def add_partitions_for_brokers(
        req: AddPartitionsToTxnRequest,
    ) -> AddPartitionsToTxnResponse:
        """v4+: partition leaders verifying (or adding) their producers' partitions."""
        results = []
        for t in req.transactions:
            tps = [(topic.name, i) for topic in t.topics for i in topic.partitions]
            if t.verify_only:
                codes = await txn.verify_produce_async(
                    t.transactional_id, t.producer_id, t.producer_epoch, tps
                )
            else:
                codes = await txn.add_partitions_async(
                    t.transactional_id, t.producer_id, t.producer_epoch, tps
                )
            by_topic: dict[str, list[AddPartitionsToTxnPartitionResult]] = {}
            for (topic, index), code in codes.items():
                by_topic.setdefault(topic, []).append(
                    AddPartitionsToTxnPartitionResult(
                        partition_index=index, partition_error_code=code
                    )
                )
            results.append(
                AddPartitionsToTxnResult(
                    transactional_id=t.transactional_id,
                    topic_results=[
                        AddPartitionsToTxnTopicResult(name=name, results_by_partition=parts)
                        for name, parts in by_topic.items()
                    ],
                )
            )
        return AddPartitionsToTxnResponse(error_code=0, results_by_transaction=results)

    async def add_offsets(
        ctx: RequestContext, req: AddOffsetsToTxnRequest
    ) -> AddOffsetsToTxnResponse:
        code = await txn.add_offsets_async(
            req.transactional_id, req.producer_id, req.producer_epoch, req.group_id
        )
        return AddOffsetsToTxnResponse(error_code=_fenced_for(ctx.api_version, 2, code))

    async def end_txn(ctx: RequestContext, req: EndTxnRequest) -> EndTxnResponse:
        result = await txn.end_transaction(
            req.transactional_id,
            req.producer_id,
            req.producer_epoch,
            req.committed,
            bump_epoch=ctx.api_version >= 5,
        )
        return EndTxnResponse(
            error_code=_fenced_for(ctx.api_version, 2, result.error),
            producer_id=result.producer_id,
            producer_epoch=result.producer_epoch,
        )

    async def txn_offset_commit(
        ctx: RequestContext, req: TxnOffsetCommitRequest
    ) -> TxnOffsetCommitResponse:
        v = ctx.api_version
        offsets: dict[TopicPartition, OffsetCommit] = {}
        for t in req.topics:
            for p in t.partitions:
                offsets[(t.name, p.partition_index)] = OffsetCommit(
                    offset=p.committed_offset,
                    leader_epoch=p.committed_leader_epoch if v >= 2 else -1,
                    metadata=p.committed_metadata,
                )
        results = await broker.groups.txn_commit_offsets_async(
            transactional_id=req.transactional_id,
            group_id=req.group_id,
            producer_id=req.producer_id,
            producer_epoch=req.producer_epoch,
            generation_id=req.generation_id if v >= 3 else -1,
            member_id=req.member_id if v >= 3 else "",
            group_instance_id=req.group_instance_id if v >= 3 else None,
            offsets=offsets,
        )
        by_topic: dict[str, list[TxnOffsetCommitResponsePartition]] = {}
        for (topic, index), code in results.items():
            by_topic.setdefault(topic, []).append(
                TxnOffsetCommitResponsePartition(partition_index=index, error_code=code)
            )
        return TxnOffsetCommitResponse(
            topics=[
                TxnOffsetCommitResponseTopic(name=name, partitions=parts)
                for name, parts in by_topic.items()
            ]
        )

    async def describe_producers(
        ctx: RequestContext, req: DescribeProducersRequest
    ) -> DescribeProducersResponse:
        topics = []
        for t in req.topics:
            parts = []
            for index in t.partition_indexes:
                p = broker.partitions.get(t.name, index)
                if p is None:
                    parts.append(
                        PartitionResponse(
                            partition_index=index,
                            error_code=int(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
                            error_message=f"{t.name}-{index} is not hosted here",
                        )
                    )
                    continue
                if not p.is_leader:
                    # a follower's producer state lags: only the leader answers
                    parts.append(
                        PartitionResponse(
                            partition_index=index,
                            error_code=int(ErrorCode.NOT_LEADER_OR_FOLLOWER),
                            error_message=f"{t.name}-{index} is led by another broker",
                        )
                    )
                    continue
                parts.append(
                    PartitionResponse(
                        partition_index=index,
                        error_code=0,
                        active_producers=[
                            ProducerState(
                                producer_id=a.producer_id,
                                producer_epoch=a.producer_epoch,
                                last_sequence=a.last_sequence,
                                last_timestamp=a.last_timestamp,
                                coordinator_epoch=a.coordinator_epoch,
                                current_txn_start_offset=a.current_txn_start_offset,
                            )
                            for a in p.log.active_producers()
                        ],
                    )
                )
            topics.append(TopicResponse(name=t.name, partitions=parts))
        return DescribeProducersResponse(topics=topics)

    async def describe_transactions(
        ctx: RequestContext, req: DescribeTransactionsRequest
    ) -> DescribeTransactionsResponse:
        out = []
        for txn_id in req.transactional_ids:
            error = txn.key_error(txn_id)
            if error:
                out.append(DescribedTransaction(error_code=error, transactional_id=txn_id))
                continue
            meta = txn.describe(txn_id)
            if meta is None:
                out.append(
                    DescribedTransaction(
                        error_code=int(ErrorCode.TRANSACTIONAL_ID_NOT_FOUND),
                        transactional_id=txn_id,
                    )
                )
                continue
            by_topic: dict[str, list[int]] = {}
            for topic, index in sorted(meta.partitions):
                by_topic.setdefault(topic, []).append(index)
            out.append(
                DescribedTransaction(
                    error_code=0,
                    transactional_id=txn_id,
                    transaction_state=meta.state.display_name,
                    transaction_timeout_ms=meta.timeout_ms,
                    transaction_start_time_ms=meta.start_ms,
                    producer_id=meta.producer_id,
                    producer_epoch=meta.producer_epoch,
                    topics=[TopicData(topic=t, partitions=ids) for t, ids in by_topic.items()],
                )
            )
        return DescribeTransactionsResponse(transaction_states=out)

    async def list_transactions(
        ctx: RequestContext, req: ListTransactionsRequest
    ) -> ListTransactionsResponse:
        error = txn.listing_error()
        if error:
            return ListTransactionsResponse(error_code=error)
        found, unknown = txn.list_transactions(
            req.state_filters,
            req.producer_id_filters,
            req.duration_filter if ctx.api_version >= 1 else -1,
        )
        return ListTransactionsResponse(
            error_code=0,
            unknown_state_filters=unknown,
            transaction_states=[
                ListedTransaction(
                    transactional_id=m.transactional_id,
                    producer_id=m.producer_id,
                    transaction_state=m.state.display_name,
                )
                for m in found
            ],
        )

    async def write_txn_markers(
        ctx: RequestContext, req: WriteTxnMarkersRequest
    ) -> WriteTxnMarkersResponse:
        # Started in request order, so markers for one partition are appended in order;
        # the replication waits then overlap.
        pending = [
            (
                marker,
                topic.name,
                index,
                asyncio.ensure_future(
                    txn.write_marker(
                        topic.name,
                        index,
                        marker.producer_id,
                        marker.producer_epoch,
                        marker.transaction_result,
                        marker.coordinator_epoch,
                    )
                ),
            )
            for marker in req.markers
            for topic in marker.topics
            for index in topic.partition_indexes
        ]
        if pending:
            await asyncio.wait([fut for *_, fut in pending])
        results: dict[int, dict[str, list[WritableTxnMarkerPartitionResult]]] = {}
        for marker, name, index, fut in pending:
            results.setdefault(id(marker), {}).setdefault(name, []).append(
                WritableTxnMarkerPartitionResult(partition_index=index, error_code=fut.result())
            )
        return WriteTxnMarkersResponse(
            markers=[
                WritableTxnMarkerResult(
                    producer_id=marker.producer_id,
                    topics=[
                        WritableTxnMarkerTopicResult(name=name, partitions=parts)
                        for name, parts in results.get(id(marker), {}).items()
                    ],
                )
                for marker in req.markers
            ]
        )

    d.register(22, 0, 4, init_producer_id)
    d.register(24, 0, 5, add_partitions)
    d.register(25, 0, 4, add_offsets)
    d.register(26, 0, 5, end_txn)
    # from another broker's coordinator, or from an admin aborting a hanging transaction
    d.register(27, 0, 1, write_txn_markers)
    d.register(28, 0, 4, txn_offset_commit)
    d.register(61, 0, 0, describe_producers)
    d.register(65, 0, 0, describe_transactions)
    d.register(66, 0, 1, list_transactions)
