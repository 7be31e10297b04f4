"""Produce: validate each partition's record batches and append them.

The hot path: per partition, one header check per batch (CRC-32C in C), one pass over
the records (lengths and varints, keys on compacted topics; nothing is built), offsets
written into the batch header, one write to the active segment. Batches are stored as
they arrived unless the topic's `compression.type` names another codec. Refused records
are reported one by one (KIP-467 `record_errors`).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from shazamq.broker.cluster.metadata import INTERNAL_TOPICS
from shazamq.broker.cluster.replica import leadership_fence
from shazamq.broker.log.errors import LogError, NotLeaderError
from shazamq.broker.topic_configs import (
    MIRROR_PROMOTED_AT,
    MIRROR_SOURCE,
    mirror_read_only_message,
    promotion_points,
)
from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.produce_request import ProduceRequest
from shazamq.protocol.messages.produce_response import (
    BatchIndexAndErrorMessage,
    LeaderIdAndEpoch,
    NodeEndpoint,
    PartitionProduceResponse,
    ProduceResponse,
    TopicProduceResponse,
)
from shazamq.protocol.records import (
    ATTR_TRANSACTIONAL,
    LOG_OVERHEAD,
    MIN_BATCH_LENGTH,
    POS_LENGTH,
    InvalidRecordsError,
    RecordError,
    iter_batches,
)

if TYPE_CHECKING:
    from ..app import Broker
    from ..partitions import Partition
    from ..server import RequestContext
    from . import Dispatcher

KEY = 0

# a queued append: its answer, partition, payload size, leader epoch and write
Append = tuple[PartitionProduceResponse, "Partition", int, int, "asyncio.Future[Any]"]

# Produce v3+ carries exactly one batch per partition (Kafka's ProduceRequest rule): a
# second batch or trailing bytes after the first are refused before anything is appended.
ONE_BATCH = "produce requests of version 3 and above hold exactly one record batch per partition"


def one_batch(records: bytes | memoryview) -> bool:
    """Whether the first batch's length field leaves no bytes after it. A length too small
    for a batch, or running past the payload, is left to the batch checks (CORRUPT_MESSAGE)."""
    length = int.from_bytes(records[POS_LENGTH:LOG_OVERHEAD], "big", signed=True)
    return length < MIN_BATCH_LENGTH or LOG_OVERHEAD + length >= len(records)


def register(d: Dispatcher, broker: Broker) -> None:
    parts = broker.partitions
    metrics = broker.metrics
    cluster = broker.cluster
    verifier = broker.txn.verifier
    writer = broker.log_writer
    # topic -> (bytes in, messages in) counters: a label lookup takes a lock and hashes
    # the label tuple, once per topic per request is enough to show in a profile
    counters: dict[str, tuple[Any, Any]] = {}

    def topic_counters(name: str) -> tuple[Any, Any]:
        found = counters.get(name)
        if found is None:
            found = counters[name] = (
                metrics.bytes_in.labels(name),
                metrics.messages_in.labels(name),
            )
        return found

    def error(index: int, code: int, message: str | None = None) -> PartitionProduceResponse:
        return PartitionProduceResponse(
            index=index,
            error_code=code,
            base_offset=-1,
            log_start_offset=-1,
            error_message=message,
        )

    def refused(index: int, exc: RecordError | LogError) -> PartitionProduceResponse:
        resp = error(index, exc.error_code, exc.message)
        if isinstance(exc, InvalidRecordsError):  # KIP-467: which records, and why
            resp.record_errors = [
                BatchIndexAndErrorMessage(batch_index=i, batch_index_error_message=why)
                for i, why in exc.record_errors
            ]
        return resp

    def producer_error(transactional_id: str | None, records: Any) -> tuple[int, str] | None:
        """Per batch header: transactional batches need a transactional id (Kafka:
        TRANSACTIONAL_ID_AUTHORIZATION_FAILED) and producer ids must have been issued
        (UNKNOWN_PRODUCER_ID). Malformed payloads are left to the log's checks."""
        try:
            for _pos, h in iter_batches(records):
                if h.attributes & ATTR_TRANSACTIONAL and transactional_id is None:
                    return (
                        ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                        "transactional batches need a transactional id",
                    )
                if h.producer_id >= 0 and not broker.txn.producer_id_issued(h.producer_id):
                    return (
                        ErrorCode.UNKNOWN_PRODUCER_ID,
                        f"producer id {h.producer_id} was never issued by this cluster",
                    )
        except RecordError:
            return None
        return None

    def source_producer_error(
        p: Partition, records: Any, promoted_at: str
    ) -> tuple[int, str] | None:
        """On a promoted mirror: a producer id whose state here is a source producer's
        (written below the promotion point, under an epoch at least as new) belongs to
        someone else; its sequences would be checked against theirs (a first batch could
        even pass as their duplicate). UNKNOWN_PRODUCER_ID makes the client take a new id
        (idempotent) or a new epoch (transactional), which the log then accepts."""
        try:
            points = promotion_points(promoted_at)
            point = points[p.index] if p.index < len(points) else -1
            for _pos, h in iter_batches(records):
                if h.producer_id >= 0 and p.log.producer_state_below(
                    h.producer_id, h.producer_epoch, point
                ):
                    return (
                        ErrorCode.UNKNOWN_PRODUCER_ID,
                        f"producer id {h.producer_id} was a producer's of the mirrored source "
                        f"in {p.topic}-{p.index} (copied below offset {point}); it is not "
                        "yours here: take a new producer id or epoch",
                    )
        except (RecordError, ValueError):
            return None
        return None

    async def handle(ctx: RequestContext, req: ProduceRequest) -> ProduceResponse | None:
        acks = req.acks
        now = int(time.time() * 1000)
        responses = []
        redirects: set[int] = set()  # leaders named in NOT_LEADER answers (KIP-951)
        # acks=all in a cluster: (response, partition, future of the high watermark)
        replicated: list[tuple[PartitionProduceResponse, Partition, asyncio.Future[int]]] = []
        # per topic: (response, partition, bytes, leader epoch, future of the append)
        pending: list[tuple[str, list[Append]]] = []
        for topic in req.topic_data:
            name = topic.name
            out = []
            appends: list[Append] = []
            for pd in topic.partition_data:
                if acks not in (0, 1, -1):
                    out.append(error(pd.index, ErrorCode.INVALID_REQUIRED_ACKS))
                    continue
                if name in INTERNAL_TOPICS:  # only their coordinators write them
                    out.append(
                        error(
                            pd.index,
                            ErrorCode.INVALID_TOPIC_EXCEPTION,
                            f"cannot append to internal topic {name}",
                        )
                    )
                    continue
                p = parts.get(name, pd.index)
                if p is None:
                    if cluster is not None and cluster.leader_hint(name, pd.index) is not None:
                        out.append(not_leader(pd.index, name, redirects))
                    elif (name, pd.index) in parts.offline:
                        out.append(error(pd.index, ErrorCode.KAFKA_STORAGE_ERROR))
                    else:
                        out.append(error(pd.index, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION))
                    continue
                mark = p.topic_info.configs.get(MIRROR_SOURCE)
                if mark is not None:
                    out.append(
                        error(
                            pd.index,
                            ErrorCode.TOPIC_AUTHORIZATION_FAILED,
                            mirror_read_only_message(name, mark),
                        )
                    )
                    continue
                records = pd.records
                if records is None or len(records) == 0:
                    out.append(error(pd.index, ErrorCode.INVALID_RECORD, "no record batch"))
                    continue
                if len(records) > LOG_OVERHEAD and not one_batch(records):
                    out.append(error(pd.index, ErrorCode.INVALID_RECORD, ONE_BATCH))
                    continue
                role = p.replica
                if role is not None:
                    if not role.is_leader:
                        out.append(not_leader(pd.index, name, redirects))
                        continue
                    if acks == -1 and len(role.isr) < cluster_min_isr(p):
                        out.append(
                            error(
                                pd.index,
                                ErrorCode.NOT_ENOUGH_REPLICAS,
                                f"{len(role.isr)} in-sync replicas, "
                                f"min.insync.replicas is {cluster_min_isr(p)}",
                            )
                        )
                        continue
                refusal = producer_error(req.transactional_id, records)
                if refusal is not None:
                    out.append(error(pd.index, *refusal))
                    continue
                if req.transactional_id is not None:
                    # KIP-890: the partition must be in the producer's transaction
                    refusal = await verifier.verify(p, req.transactional_id, records)
                    if refusal is not None:
                        out.append(error(pd.index, *refusal))
                        continue
                    if role is not None and not role.is_leader:  # moved while asking
                        out.append(not_leader(pd.index, name, redirects))
                        continue
                promoted_at = p.topic_info.configs.get(MIRROR_PROMOTED_AT)
                if promoted_at is not None:  # checked right before the append: no await
                    refusal = source_producer_error(p, records, promoted_at)
                    if refusal is not None:
                        out.append(error(pd.index, *refusal))
                        continue
                try:
                    prepared = p.log.prepare_append(records, now_ms=now)
                except (RecordError, LogError) as exc:
                    out.append(refused(pd.index, exc))
                    continue
                resp = error(pd.index, 0)
                out.append(resp)
                # the write goes to the partition's writer thread (log/writer.py); every
                # partition of the request is queued before any is waited for. In a
                # cluster the writer asks again, right before the write, whether this
                # broker still leads at this epoch (a role change may come first)
                epoch = p.leader_epoch
                fut = writer.append(
                    p.log, prepared, epoch, still_leads=leadership_fence(role, epoch)
                )
                appends.append((resp, p, len(records), epoch, fut))
            if appends:
                pending.append((name, appends))
            responses.append(TopicProduceResponse(name=name, partition_responses=out))
        for name, appends in pending:
            bytes_in = 0
            msgs_in = 0
            for resp, p, size, epoch, fut in appends:
                try:
                    info = await fut
                except NotLeaderError:
                    answer_as(resp, not_leader(resp.index, name, redirects))
                    continue
                except (RecordError, LogError) as exc:
                    answer_as(resp, refused(resp.index, exc))
                    continue
                role = p.replica
                if role is not None and not role.leads_at(epoch):
                    # written, but the leadership it was written under changed before
                    # this answer: the new leader decides what survives; the producer
                    # retries there (an idempotent one is deduplicated)
                    p.notify()
                    answer_as(resp, not_leader(resp.index, name, redirects))
                    continue
                if not info.duplicate:
                    p.notify()
                    bytes_in += size
                    msgs_in += info.last_offset - info.base_offset + 1
                resp.base_offset = info.base_offset
                resp.log_append_time_ms = info.log_append_time
                resp.log_start_offset = p.log.log_start_offset
                if role is not None:
                    assert cluster is not None
                    if acks == -1:
                        # the waiter goes first: advancing may release it at once (ISR of one)
                        replicated.append((resp, p, role.wait_for_hw(info.last_offset + 1)))
                    cluster.advance_high_watermark(p)
                    if acks == -1 and p.log.high_watermark > info.last_offset:
                        role.release_waiters(p.log.high_watermark)
            if bytes_in:
                c_bytes, c_msgs = topic_counters(name)
                c_bytes.inc(bytes_in)
                c_msgs.inc(msgs_in)
        if replicated:
            await wait_replicated(replicated, req.timeout_ms / 1000)
        if acks == 0:
            return None
        endpoints = []
        if redirects:
            assert cluster is not None
            for node in sorted(redirects):
                ep = cluster.endpoint(node)
                if ep is not None:
                    endpoints.append(NodeEndpoint(node_id=node, host=ep[0], port=ep[1], rack=ep[2]))
        return ProduceResponse(responses=responses, throttle_time_ms=0, node_endpoints=endpoints)

    def answer_as(resp: PartitionProduceResponse, failed: PartitionProduceResponse) -> None:
        """Turn an already listed answer into an error answer."""
        resp.error_code = failed.error_code
        resp.error_message = failed.error_message
        resp.record_errors = failed.record_errors
        resp.current_leader = failed.current_leader
        resp.base_offset = -1

    def not_leader(index: int, topic: str, redirects: set[int]) -> PartitionProduceResponse:
        """NOT_LEADER_OR_FOLLOWER with the current leader, so the client goes straight there."""
        resp = error(index, ErrorCode.NOT_LEADER_OR_FOLLOWER)
        assert cluster is not None
        hint = cluster.leader_hint(topic, index)
        if hint is not None and hint[0] >= 0:
            resp.current_leader = LeaderIdAndEpoch(leader_id=hint[0], leader_epoch=hint[1])
            redirects.add(hint[0])
        return resp

    def cluster_min_isr(p: Partition) -> int:
        assert cluster is not None
        return cluster.min_isr(p.topic_info.configs)

    async def wait_replicated(
        pending: list[tuple[PartitionProduceResponse, Partition, asyncio.Future[int]]],
        timeout_s: float,
    ) -> None:
        """acks=all: answer each partition once its ISR has the records, or with the error."""
        futures = [fut for _, _, fut in pending]
        waiting = [f for f in futures if not f.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=max(timeout_s, 0.001))
        for resp, p, fut in pending:
            if not fut.done():
                fut.cancel()
                resp.error_code = ErrorCode.REQUEST_TIMED_OUT
                resp.error_message = "the in-sync replicas did not confirm in time"
            elif fut.result():
                resp.error_code = fut.result()
            elif p.replica is not None and len(p.replica.isr) < cluster_min_isr(p):
                resp.error_code = ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND
                resp.error_message = "written, but the ISR shrank below min.insync.replicas"
            else:
                continue
            resp.base_offset = -1

    d.register(KEY, 3, 11, handle)
