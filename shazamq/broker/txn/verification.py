"""Verification of transactional produces at the partition leader (KIP-890 part 1).

Before KIP-890 a leader appended whatever transactional batch arrived. A produce delayed
past the end of its transaction (the EndTxn overtook it) then opened a transaction in the
partition that its coordinator never heard of: no marker ever closes it, the last stable
offset stops there, and ``read_committed`` consumers wait forever (a hanging transaction).

Here the first transactional batch of a producer in a partition, per producer id and
epoch, is checked with the transaction coordinator before it is appended: the partition
must be part of the producer's ongoing transaction (or be added to it, for the producers
the coordinator allows to add by producing; see ``verify_produce_async``). The partition
log itself is the cache: once a batch opened the producer's transaction there, the
following batches of that transaction carry the same id and epoch and need no check, and
the marker that closes it makes the next transaction's first batch ask again. A produce
without a transactional id never gets here.

On a single broker, and for ids coordinated by this broker, the coordinator is called
directly (on a single broker it never suspends). Otherwise the leader asks the
coordinator's broker with AddPartitionsToTxn v4+ ``verify_only``, on connections of its
own (a WriteTxnMarkers waiting for its replicas must not hold a verification up). While
an answer is on its way a marker may close the transaction in this partition; the
partition's marker count, taken before asking, tells the leader to refuse the batch
(retriably) rather than open a transaction that just ended.
"""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING, Any

from shazamq.broker.cluster.client import ClientPool
from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.add_partitions_to_txn_request import (
    AddPartitionsToTxnRequest,
    AddPartitionsToTxnTopic,
    AddPartitionsToTxnTransaction,
)

if TYPE_CHECKING:
    from shazamq.broker.cluster.node import ClusterNode
    from shazamq.broker.partitions import Partition

    from .coordinator import TransactionCoordinator

__all__ = ["ProduceVerifier", "batch_producer", "produce_error"]

log = logging.getLogger(__name__)

_E = ErrorCode
_PID_EPOCH = struct.Struct(">qh")
_BATCH_LENGTH = struct.Struct(">i")
_POS_PRODUCER_ID = 43
_MIN_BATCH = 61

ADD_PARTITIONS_KEY = 24
# the first version of AddPartitionsToTxn a broker sends on a producer's behalf
_BROKER_VERSION = 4
_VERIFY_TIMEOUT_S = 30.0

# Coordinator answers a produce cannot pass on as they are: a v1 producer does not retry
# them, but does retry NOT_ENOUGH_REPLICAS, which is what Kafka's leaders answer instead.
_RETRIABLE = frozenset(
    {
        int(_E.COORDINATOR_NOT_AVAILABLE),
        int(_E.NOT_COORDINATOR),
        int(_E.COORDINATOR_LOAD_IN_PROGRESS),
        int(_E.CONCURRENT_TRANSACTIONS),
        int(_E.NETWORK_EXCEPTION),
        int(_E.REQUEST_TIMED_OUT),
    }
)


def batch_producer(records: bytes | memoryview | bytearray) -> tuple[int, int] | None:
    """The (producer id, epoch) every batch of ``records`` carries; None if there is no
    complete batch header or the batches disagree (the log refuses those itself)."""
    end = len(records)
    pos = 0
    found: tuple[int, int] | None = None
    while pos + _MIN_BATCH <= end:
        ids = _PID_EPOCH.unpack_from(records, pos + _POS_PRODUCER_ID)
        if found is None:
            found = ids
        elif ids != found:
            return None
        (length,) = _BATCH_LENGTH.unpack_from(records, pos + 8)
        if length <= 0:
            break
        pos += length + 12
    return found


def produce_error(code: int) -> int:
    """What a produce answers for the coordinator's verification error ``code``."""
    if code in _RETRIABLE:
        return int(_E.NOT_ENOUGH_REPLICAS)
    if code == _E.PRODUCER_FENCED:
        return int(_E.INVALID_PRODUCER_EPOCH)
    return code


class ProduceVerifier:
    """Checks first transactional batches with the coordinator (see the module doc)."""

    def __init__(self, txn: TransactionCoordinator) -> None:
        self.txn = txn
        self.pool: ClientPool | None = None

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    async def verify(
        self, p: Partition, transactional_id: str, records: Any
    ) -> tuple[int, str] | None:
        """None if the batch may be appended to ``p``, else (error code, message)."""
        ids = batch_producer(records)
        if ids is None:
            return None
        producer_id, epoch = ids
        if p.log.in_open_txn(producer_id, epoch):
            return None
        txn = self.txn
        cluster = txn.cluster
        markers = p.txn_markers
        if cluster is None or txn.key_error(transactional_id) != _E.NOT_COORDINATOR:
            codes = await txn.verify_produce_async(
                transactional_id, producer_id, epoch, [(p.topic, p.index)]
            )
            code = codes[(p.topic, p.index)]
        else:
            code = await self._ask(cluster, transactional_id, producer_id, epoch, p)
        if not code and p.txn_markers != markers:
            code = int(_E.CONCURRENT_TRANSACTIONS)
        if not code:
            return None
        return (
            produce_error(code),
            f"{p.topic}-{p.index}: transactional produce of {transactional_id!r} not "
            f"verified with its coordinator (error {code})",
        )

    async def _ask(
        self,
        cluster: ClusterNode,
        transactional_id: str,
        producer_id: int,
        epoch: int,
        p: Partition,
    ) -> int:
        """The coordinator broker's verification of ``p``, as an error code."""
        from .coordinator import TRANSACTION_STATE_TOPIC

        index = self.txn.topic.partition_for(transactional_id)
        t = cluster.state.topics.get(TRANSACTION_STATE_TOPIC)
        node = t.partitions[index].leader if t is not None and index < len(t.partitions) else -1
        if node < 0:
            return int(_E.COORDINATOR_NOT_AVAILABLE)
        if self.pool is None:
            self.pool = ClientPool(
                self.txn._address_of,
                client_id="shazamq-txn-verify",
                **cluster.peer_client_options(),
            )
        request = AddPartitionsToTxnRequest(
            transactions=[
                AddPartitionsToTxnTransaction(
                    transactional_id=transactional_id,
                    producer_id=producer_id,
                    producer_epoch=epoch,
                    verify_only=True,
                    topics=[AddPartitionsToTxnTopic(name=p.topic, partitions=[p.index])],
                )
            ]
        )
        try:
            client = await self.pool.get(node)
            version = client.best_version(ADD_PARTITIONS_KEY, 5)
            if version < _BROKER_VERSION:
                return int(_E.COORDINATOR_NOT_AVAILABLE)
            response = await client.request(
                ADD_PARTITIONS_KEY, version, request, timeout=_VERIFY_TIMEOUT_S
            )
        except Exception as exc:  # unreachable, broken connection, undecodable answer
            log.info("verification of %s with broker %d failed: %s", transactional_id, node, exc)
            self.pool.invalidate(node)
            return int(_E.NETWORK_EXCEPTION)
        if response.error_code:
            return int(response.error_code)
        for result in response.results_by_transaction:
            for topic in result.topic_results:
                for part in topic.results_by_partition:
                    if topic.name == p.topic and part.partition_index == p.index:
                        return int(part.partition_error_code)
        return int(_E.UNKNOWN_SERVER_ERROR)
