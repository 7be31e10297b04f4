"""The transaction coordinator: producer ids, epochs, transactions and their markers.

Every producer id comes from here: a fresh one per idempotent producer, and for a
``transactional.id`` the same id with a bumped epoch at each InitProducerId, which
fences the previous instance (its requests then fail with PRODUCER_FENCED or
INVALID_PRODUCER_EPOCH). A transaction moves Empty -> Ongoing (AddPartitionsToTxn /
AddOffsetsToTxn) -> PrepareCommit or PrepareAbort (EndTxn, fencing or timeout) ->
CompleteCommit or CompleteAbort, each step written to ``__transaction_state`` before it
is acted upon or acknowledged.

Ending a transaction writes a COMMIT or ABORT control batch into every partition the
transaction touched. The partition's log closes the producer's open transaction on that
marker, which advances the last stable offset and, for an abort, records the aborted
range in the segment's transaction index that ``read_committed`` fetches return. A marker
in a ``__consumer_offsets`` partition makes the group coordinator apply (or drop) the
offsets the transaction committed. All of this happens synchronously on the event loop:
there is no window in which another request sees a half-ended transaction.

Restart recovery: the state topic is replayed at start. A transaction found in
PrepareCommit or PrepareAbort has its markers written (again: a repeated marker is
harmless) and is completed; an Ongoing one is left to its timeout, which the periodic
check (``transactions.abort_timed_out_check_interval_ms``) enforces by fencing the
producer and aborting, exactly as Kafka does. Transactions that already timed out while
the broker was down are aborted during start-up, before any client is served.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily, Metric

from shazamq.broker.groups.internal_topic import InternalTopic
from shazamq.broker.groups.offsets_store import OFFSETS_TOPIC
from shazamq.broker.log import AppendOrigin, LogError
from shazamq.broker.log.errors import (
    InvalidProducerEpochError,
    TransactionCoordinatorFencedError,
)
from shazamq.broker.tasks import cancel_all
from shazamq.protocol.errors import ErrorCode, KafkaError
from shazamq.protocol.records import RecordError, build_control_batch

from .metadata import MAX_EPOCH, TxnMetadata
from .producer_ids import ProducerIdAllocator, ProducerIdsExhaustedError
from .state_log import (
    TxnRecordError,
    TxnState,
    decode_txn_key,
    decode_txn_value,
    encode_txn_key,
    encode_txn_value,
)

if TYPE_CHECKING:
    from shazamq.broker.app import Broker

__all__ = ["TRANSACTION_STATE_TOPIC", "TransactionCoordinator"]

log = logging.getLogger(__name__)

TRANSACTION_STATE_TOPIC = "__transaction_state"

TopicPartition = tuple[str, int]

_E = ErrorCode
_PID_EPOCH = struct.Struct(">qh")
_BATCH_LENGTH = struct.Struct(">i")
_POS_PRODUCER_ID = 43
_MIN_BATCH = 61


@dataclass(frozen=True, slots=True)
class InitProducerIdResult:
    error: int
    producer_id: int = -1
    producer_epoch: int = -1


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class _StoreFailed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class TransactionCoordinator:
    """Producer ids and every transactional id of the broker."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.config = broker.config.transactions
        self.topic = InternalTopic(
            broker.partitions,
            TRANSACTION_STATE_TOPIC,
            self.config.state_log_num_partitions,
            {
                "cleanup.policy": "compact",
                "segment.bytes": str(self.config.state_log_segment_bytes),
            },
        )
        self.txns: dict[str, TxnMetadata] = {}
        self.loaded = False
        self.producer_ids: ProducerIdAllocator | None = None
        self._tasks: list[asyncio.Task[None]] = []
        r = broker.metrics.registry
        self.completed = Counter(
            "shazamq_transactions_completed",
            "Transactions ended, by result (commit, abort).",
            ["result"],
            registry=r,
        )
        self.timed_out = Counter(
            "shazamq_transactions_timed_out",
            "Transactions aborted by the coordinator because they ran past their timeout.",
            registry=r,
        )
        self.fenced = Counter(
            "shazamq_transactions_fenced",
            "Ongoing transactions aborted because a new producer instance fenced them.",
            registry=r,
        )

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        self.producer_ids = ProducerIdAllocator(self.broker.data_dir)
        await self.topic.ensure()
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        self.txns = await loop.run_in_executor(None, self._load_all)
        for meta in self.txns.values():
            self.producer_ids.ensure_above(meta.producer_id)
        self.loaded = True
        self._recover(_now_ms())
        self.broker.metrics.add_probe(self._probe)
        self._tasks.append(asyncio.create_task(self._timeout_loop(), name="txn-timeouts"))
        log.info(
            "transaction coordinator loaded %d transactional ids in %.2fs",
            len(self.txns),
            time.monotonic() - started,
        )

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        self.loaded = False

    def _load_all(self) -> dict[str, TxnMetadata]:
        txns: dict[str, TxnMetadata] = {}
        for index in range(self.topic.count):
            for batch in self.topic.scan(index):
                for record_offset, key, value in batch.records:
                    if key is None:
                        continue
                    try:
                        txn_id = decode_txn_key(key)
                        if value is None:
                            txns.pop(txn_id, None)
                        else:
                            txns[txn_id] = TxnMetadata.from_log_value(
                                txn_id, decode_txn_value(value)
                            )
                    except TxnRecordError as exc:
                        log.error(
                            "%s-%d: skipping malformed record at offset %d: %s",
                            TRANSACTION_STATE_TOPIC,
                            index,
                            record_offset,
                            exc,
                        )
        return txns

    def _recover(self, now_ms: int) -> None:
        """Finish what a crash interrupted: complete prepared transactions, abort expired
        ones."""
        for meta in list(self.txns.values()):
            if meta.in_prepare:
                log.info(
                    "completing %s of transactional id %s left by the previous run",
                    meta.state.display_name,
                    meta.transactional_id,
                )
                self._finish(meta)
            elif meta.state is TxnState.ONGOING and meta.start_ms + meta.timeout_ms < now_ms:
                log.info(
                    "aborting transaction of %s: it timed out while the broker was down",
                    meta.transactional_id,
                )
                self.timed_out.inc()
                self._fence_and_abort(meta)

    # -- persistence ------------------------------------------------------------------

    def _coordinator_epoch(self, txn_id: str) -> int:
        p = self.broker.partitions.get(TRANSACTION_STATE_TOPIC, self.topic.partition_for(txn_id))
        return p.leader_epoch if p is not None else 0

    def _store(self, meta: TxnMetadata) -> TxnMetadata:
        """Write ``meta`` to the state topic, then make it current. Raises _StoreFailed."""
        try:
            self.topic.append(
                self.topic.partition_for(meta.transactional_id),
                [(encode_txn_key(meta.transactional_id), encode_txn_value(meta.to_log_value()))],
            )
        except (LogError, RecordError) as exc:
            raise _StoreFailed(int(_E.COORDINATOR_NOT_AVAILABLE), str(exc)) from exc
        except KafkaError as exc:
            raise _StoreFailed(int(exc.code), str(exc)) from exc
        self.txns[meta.transactional_id] = meta
        return meta

    def _allocate(self) -> int:
        assert self.producer_ids is not None
        return self.producer_ids.allocate()

    # -- InitProducerId ---------------------------------------------------------------

    def init_producer_id(
        self,
        transactional_id: str | None,
        timeout_ms: int,
        expected_producer_id: int = -1,
        expected_epoch: int = -1,
    ) -> InitProducerIdResult:
        if transactional_id is None:
            try:
                return InitProducerIdResult(0, self._allocate(), 0)
            except (ProducerIdsExhaustedError, OSError) as exc:
                log.error("cannot allocate a producer id: %s", exc)
                return InitProducerIdResult(int(_E.UNKNOWN_SERVER_ERROR))
        if transactional_id == "":
            return InitProducerIdResult(int(_E.INVALID_REQUEST))
        if not self.loaded:
            return InitProducerIdResult(int(_E.COORDINATOR_LOAD_IN_PROGRESS))
        if timeout_ms <= 0 or timeout_ms > self.config.max_timeout_ms:
            return InitProducerIdResult(int(_E.INVALID_TRANSACTION_TIMEOUT))
        now = _now_ms()
        meta = self.txns.get(transactional_id)
        try:
            if meta is None:
                meta = TxnMetadata(
                    transactional_id=transactional_id,
                    producer_id=self._allocate(),
                    producer_epoch=-1,
                    timeout_ms=timeout_ms,
                    state=TxnState.EMPTY,
                    last_update_ms=now,
                )
            # a producer recovering its own id and epoch (KIP-360), not a new instance
            recovering = expected_producer_id >= 0 and transactional_id in self.txns
            if recovering:
                if (
                    expected_producer_id == meta.producer_id
                    and expected_epoch == meta.producer_epoch
                ):
                    pass  # the producer recovers from an error: bump below
                elif (
                    meta.completed
                    and meta.last_producer_epoch >= 0
                    and expected_epoch == meta.last_producer_epoch
                    and (
                        expected_producer_id == meta.producer_id
                        or (
                            expected_producer_id == meta.last_producer_id
                            and expected_epoch >= MAX_EPOCH - 1
                        )
                    )
                ):
                    # a retry of the InitProducerId that already bumped: same answer
                    return InitProducerIdResult(0, meta.producer_id, meta.producer_epoch)
                else:
                    return InitProducerIdResult(int(_E.PRODUCER_FENCED))
            if meta.in_prepare:
                if not self._finish(meta):
                    return InitProducerIdResult(int(_E.CONCURRENT_TRANSACTIONS))
                meta = self.txns[transactional_id]
            if meta.state is TxnState.ONGOING:
                log.info(
                    "InitProducerId for %s fences producer %d epoch %d and aborts its transaction",
                    transactional_id,
                    meta.producer_id,
                    meta.producer_epoch,
                )
                self.fenced.inc()
                if not self._fence_and_abort(meta):
                    return InitProducerIdResult(int(_E.CONCURRENT_TRANSACTIONS))
                meta = self.txns[transactional_id]
            if meta.epoch_exhausted:
                new_pid, new_epoch = self._allocate(), 0
                last_pid = meta.producer_id
            else:
                new_pid, new_epoch = meta.producer_id, meta.producer_epoch + 1
                last_pid = meta.last_producer_id
            # Kafka's rule: the epoch before this bump is remembered only for a producer
            # recovering its own epoch; a new instance's bump forgets it, so the instance
            # it fenced cannot take the new epoch over by "retrying"
            meta = self._store(
                meta.to(
                    TxnState.EMPTY,
                    producer_id=new_pid,
                    producer_epoch=new_epoch,
                    last_producer_id=last_pid,
                    last_producer_epoch=expected_epoch if recovering else -1,
                    timeout_ms=timeout_ms,
                    partitions=frozenset(),
                    start_ms=-1,
                    last_update_ms=now,
                )
            )
        except _StoreFailed as exc:
            log.warning("InitProducerId for %s: %s", transactional_id, exc)
            return InitProducerIdResult(exc.code)
        except (ProducerIdsExhaustedError, OSError) as exc:
            log.error("cannot allocate a producer id: %s", exc)
            return InitProducerIdResult(int(_E.UNKNOWN_SERVER_ERROR))
        return InitProducerIdResult(0, meta.producer_id, meta.producer_epoch)

    # -- AddPartitionsToTxn / AddOffsetsToTxn -----------------------------------------

    def _owned_by(
        self, transactional_id: str, producer_id: int, epoch: int
    ) -> tuple[TxnMetadata | None, int]:
        """The transaction's metadata if (producer_id, epoch) owns it, else the error."""
        if not transactional_id:
            return None, int(_E.INVALID_REQUEST)
        if not self.loaded:
            return None, int(_E.COORDINATOR_LOAD_IN_PROGRESS)
        meta = self.txns.get(transactional_id)
        if meta is None or meta.producer_id != producer_id:
            return None, int(_E.INVALID_PRODUCER_ID_MAPPING)
        if meta.producer_epoch != epoch:
            return None, int(_E.PRODUCER_FENCED)
        return meta, 0

    def _check_producer(self, transactional_id: str, producer_id: int, epoch: int) -> int:
        """Error for a request of (producer_id, epoch) on this transactional id, or 0."""
        meta, error = self._owned_by(transactional_id, producer_id, epoch)
        if meta is not None and meta.in_prepare:
            return int(_E.CONCURRENT_TRANSACTIONS)
        return error

    def add_partitions(
        self,
        transactional_id: str,
        producer_id: int,
        epoch: int,
        partitions: Iterable[TopicPartition],
    ) -> dict[TopicPartition, int]:
        wanted = list(dict.fromkeys(partitions))
        error = self._check_producer(transactional_id, producer_id, epoch)
        if error:
            return dict.fromkeys(wanted, error)
        parts = self.broker.partitions
        missing = {tp for tp in wanted if parts.get(tp[0], tp[1]) is None}
        if missing:
            return {
                tp: int(
                    _E.UNKNOWN_TOPIC_OR_PARTITION if tp in missing else _E.OPERATION_NOT_ATTEMPTED
                )
                for tp in wanted
            }
        error = self._add(transactional_id, wanted)
        return dict.fromkeys(wanted, error)

    def add_offsets(
        self, transactional_id: str, producer_id: int, epoch: int, group_id: str
    ) -> int:
        error = self._check_producer(transactional_id, producer_id, epoch)
        if error:
            return error
        index = self.broker.groups.partition_for(group_id)
        return self._add(transactional_id, [(OFFSETS_TOPIC, index)])

    def _add(self, transactional_id: str, partitions: list[TopicPartition]) -> int:
        meta = self.txns[transactional_id]
        new = frozenset(partitions)
        if meta.state is TxnState.ONGOING and new <= meta.partitions:
            return 0
        now = _now_ms()
        try:
            self._store(
                meta.to(
                    TxnState.ONGOING,
                    partitions=meta.partitions | new,
                    start_ms=meta.start_ms if meta.state is TxnState.ONGOING else now,
                    last_update_ms=now,
                )
            )
        except _StoreFailed as exc:
            log.warning("adding partitions to %s: %s", transactional_id, exc)
            return exc.code
        return 0

    # -- EndTxn -----------------------------------------------------------------------

    def end_txn(self, transactional_id: str, producer_id: int, epoch: int, commit: bool) -> int:
        meta, error = self._owned_by(transactional_id, producer_id, epoch)
        if meta is None:
            return error
        state = meta.state
        if state is TxnState.ONGOING:
            target = TxnState.PREPARE_COMMIT if commit else TxnState.PREPARE_ABORT
            try:
                prepared = self._store(meta.to(target, last_update_ms=_now_ms()))
            except _StoreFailed as exc:
                log.warning("ending transaction of %s: %s", transactional_id, exc)
                return exc.code
            self._finish(prepared)
            return 0
        if state is TxnState.COMPLETE_COMMIT:
            return 0 if commit else int(_E.INVALID_TXN_STATE)
        if state is TxnState.COMPLETE_ABORT:
            return 0 if not commit else int(_E.INVALID_TXN_STATE)
        if state is TxnState.PREPARE_COMMIT:
            return int(_E.CONCURRENT_TRANSACTIONS) if commit else int(_E.INVALID_TXN_STATE)
        if state is TxnState.PREPARE_ABORT:
            return int(_E.CONCURRENT_TRANSACTIONS) if not commit else int(_E.INVALID_TXN_STATE)
        return int(_E.INVALID_TXN_STATE)

    def _fence_and_abort(self, meta: TxnMetadata) -> bool:
        """Bump the epoch of an Ongoing transaction (fencing its producer) and abort it."""
        try:
            prepared = self._store(
                meta.to(
                    TxnState.PREPARE_ABORT,
                    producer_epoch=meta.producer_epoch + 1,
                    last_producer_epoch=-1,  # the fenced epoch must not be recognised
                    last_update_ms=_now_ms(),
                )
            )
        except _StoreFailed as exc:
            log.warning("aborting transaction of %s: %s", meta.transactional_id, exc)
            return False
        return self._finish(prepared)

    def _finish(self, meta: TxnMetadata) -> bool:
        """Write the markers of a prepared transaction and complete it. False if some
        partition could not take its marker (the periodic check retries)."""
        commit = meta.state is TxnState.PREPARE_COMMIT
        if not self._write_markers(meta, commit):
            return False
        try:
            self._store(
                meta.to(
                    TxnState.COMPLETE_COMMIT if commit else TxnState.COMPLETE_ABORT,
                    partitions=frozenset(),
                    last_update_ms=_now_ms(),
                )
            )
        except _StoreFailed as exc:
            log.warning("completing transaction of %s: %s", meta.transactional_id, exc)
            return False
        self.completed.labels("commit" if commit else "abort").inc()
        return True

    def _write_markers(self, meta: TxnMetadata, commit: bool) -> bool:
        parts = self.broker.partitions
        groups = self.broker.groups
        coordinator_epoch = self._coordinator_epoch(meta.transactional_id)
        ok = True
        now = _now_ms()
        for topic, index in sorted(meta.partitions):
            p = parts.get(topic, index)
            if p is None:
                log.info("%s-%d is gone: no marker for %s", topic, index, meta.transactional_id)
                continue
            batch = build_control_batch(
                commit, meta.producer_id, meta.producer_epoch, coordinator_epoch, now
            )
            try:
                p.log.append(
                    bytearray(batch),
                    leader_epoch=p.leader_epoch,
                    now_ms=now,
                    origin=AppendOrigin.COORDINATOR,
                )
            except (InvalidProducerEpochError, TransactionCoordinatorFencedError) as exc:
                # a newer epoch already wrote to this partition: nothing of ours is open
                log.info(
                    "marker for %s in %s-%d refused: %s", meta.transactional_id, topic, index, exc
                )
            except (LogError, RecordError) as exc:
                log.warning(
                    "cannot write the marker of %s to %s-%d: %s",
                    meta.transactional_id,
                    topic,
                    index,
                    exc,
                )
                ok = False
                continue
            p.notify()
            if topic == OFFSETS_TOPIC:
                groups.complete_txn(index, meta.producer_id, commit)
        return ok

    # -- TxnOffsetCommit and Produce checks -------------------------------------------

    def verify_txn_offset_commit(
        self, transactional_id: str, producer_id: int, epoch: int, offsets_partition: int
    ) -> int:
        """Error for a TxnOffsetCommit whose group partition is not in the transaction."""
        if not transactional_id:
            return int(_E.INVALID_REQUEST)
        if not self.loaded:
            return int(_E.COORDINATOR_LOAD_IN_PROGRESS)
        meta = self.txns.get(transactional_id)
        if meta is None or meta.producer_id != producer_id:
            return int(_E.INVALID_PRODUCER_ID_MAPPING)
        if epoch != meta.producer_epoch:
            return int(_E.INVALID_PRODUCER_EPOCH)
        if meta.state is not TxnState.ONGOING or (OFFSETS_TOPIC, offsets_partition) not in (
            meta.partitions
        ):
            return int(_E.INVALID_TXN_STATE)
        return 0

    def check_produce(
        self, transactional_id: str, topic: str, partition: int, records: bytes | memoryview
    ) -> None:
        """Refuse a transactional produce the coordinator has not seen coming.

        Reads only the producer id and epoch of each batch header. Raises KafkaError:
        INVALID_PRODUCER_ID_MAPPING (unknown id), INVALID_PRODUCER_EPOCH (fenced or
        unknown epoch), INVALID_TXN_STATE (partition not added to an ongoing transaction).
        """
        meta = self.txns.get(transactional_id)
        if meta is None:
            raise KafkaError(
                _E.INVALID_PRODUCER_ID_MAPPING,
                f"transactional id {transactional_id!r} has no producer id",
            )
        end = len(records)
        pos = 0
        while pos + _MIN_BATCH <= end:
            pid, epoch = _PID_EPOCH.unpack_from(records, pos + _POS_PRODUCER_ID)
            if pid != meta.producer_id:
                if pid == meta.last_producer_id:
                    raise KafkaError(
                        _E.INVALID_PRODUCER_EPOCH,
                        f"producer {pid} of {transactional_id!r} has been fenced",
                    )
                raise KafkaError(
                    _E.INVALID_PRODUCER_ID_MAPPING,
                    f"producer {pid} is not the producer of {transactional_id!r}",
                )
            if epoch != meta.producer_epoch:
                raise KafkaError(
                    _E.INVALID_PRODUCER_EPOCH,
                    f"epoch {epoch} of producer {pid} is not the current {meta.producer_epoch}",
                )
            (length,) = _BATCH_LENGTH.unpack_from(records, pos + 8)
            if length <= 0:
                break
            pos += length + 12
        if meta.state is not TxnState.ONGOING or (topic, partition) not in meta.partitions:
            raise KafkaError(
                _E.INVALID_TXN_STATE,
                f"{topic}-{partition} is not part of an ongoing transaction of "
                f"{transactional_id!r}",
            )

    # -- timeouts and expiry ----------------------------------------------------------

    async def _timeout_loop(self) -> None:
        interval = self.config.abort_timed_out_check_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                self.check_timeouts(_now_ms())
            except Exception:
                log.exception("transaction timeout check failed")

    def check_timeouts(self, now_ms: int) -> None:
        """Abort timed-out transactions, retry unfinished ones, expire idle ids."""
        expiration = self.config.transactional_id_expiration_ms
        for meta in list(self.txns.values()):
            if meta.state is TxnState.ONGOING and meta.start_ms + meta.timeout_ms < now_ms:
                log.info(
                    "transaction of %s (producer %d epoch %d) timed out after %d ms; aborting",
                    meta.transactional_id,
                    meta.producer_id,
                    meta.producer_epoch,
                    meta.timeout_ms,
                )
                self.timed_out.inc()
                self._fence_and_abort(meta)
            elif meta.in_prepare:
                self._finish(meta)
            elif meta.completed and now_ms - meta.last_update_ms >= expiration:
                self._expire(meta)

    def _expire(self, meta: TxnMetadata) -> None:
        txn_id = meta.transactional_id
        try:
            meta.to(TxnState.DEAD)
            self.topic.append(self.topic.partition_for(txn_id), [(encode_txn_key(txn_id), None)])
        except (LogError, RecordError, KafkaError) as exc:
            log.warning("cannot expire transactional id %s: %s", txn_id, exc)
            return
        self.txns.pop(txn_id, None)
        log.info("transactional id %s expired", txn_id)

    # -- tooling ----------------------------------------------------------------------

    def describe(self, transactional_id: str) -> TxnMetadata | None:
        return self.txns.get(transactional_id)

    def list_transactions(
        self,
        states: Iterable[str] = (),
        producer_ids: Iterable[int] = (),
        min_duration_ms: int = -1,
    ) -> tuple[list[TxnMetadata], list[str]]:
        """Transactions matching the filters, and the state names that are unknown."""
        wanted: set[TxnState] = set()
        unknown: list[str] = []
        for name in states:
            state = TxnState.from_display_name(name)
            if state is None:
                unknown.append(name)
            else:
                wanted.add(state)
        pids = set(producer_ids)
        now = _now_ms()
        out = []
        for meta in list(self.txns.values()):
            if (states and meta.state not in wanted) or (pids and meta.producer_id not in pids):
                continue
            if min_duration_ms >= 0 and (
                meta.state is not TxnState.ONGOING or now - meta.start_ms < min_duration_ms
            ):
                continue
            out.append(meta)
        return out, unknown

    def _probe(self) -> Iterable[Metric]:
        g = GaugeMetricFamily(
            "shazamq_transactions", "Transactional ids by transaction state.", labels=["state"]
        )
        counts = dict.fromkeys((s.display_name for s in TxnState if s is not TxnState.DEAD), 0)
        for meta in list(self.txns.values()):
            counts[meta.state.display_name] = counts.get(meta.state.display_name, 0) + 1
        for state, n in counts.items():
            g.add_metric([state], n)
        return [g]
