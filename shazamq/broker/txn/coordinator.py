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

On a single broker ``__transaction_state`` is created on first use (FindCoordinator or
the first transactional InitProducerId), as Kafka does; idempotent producers never need
it. Restart recovery: the state topic, once it exists, is replayed at start. A transaction found in
PrepareCommit or PrepareAbort has its markers written (again: a repeated marker is
harmless) and is completed; an Ongoing one is left to its timeout, which the periodic
check (``transactions.abort_timed_out_check_interval_ms``) enforces by fencing the
producer and aborting, exactly as Kafka does. Transactions that already timed out while
the broker was down are aborted during start-up, before any client is served.

In a cluster, as in Kafka, a transactional id belongs to the broker leading its
``__transaction_state`` partition: that partition is loaded (and recovered as above)
when it becomes led here and dropped when it stops being led here, and requests for ids
of any other partition are answered NOT_COORDINATOR. A state change counts once the
in-sync replicas have it; while one is in flight, other requests for the same id are
answered CONCURRENT_TRANSACTIONS (Kafka's pending state). EndTxn is answered once the
Prepare state is replicated; the markers are then written in the background: directly
into partitions led here, with WriteTxnMarkers to the leader of every other one,
retried until written or the partition is gone, and only then is the transaction
completed. Producer ids come in blocks the controller hands out, unique in the cluster.

The implementation is one set of coroutines for both modes. On a single broker they
never suspend, and the synchronous methods (``init_producer_id``, ``end_txn``, ...) run
them to completion at once; the request handlers await the ``*_async`` forms.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily, Metric

from shazamq.broker.cluster.client import ClientPool
from shazamq.broker.cluster.replica import leadership_fence
from shazamq.broker.groups.internal_topic import (
    Appended,
    InternalTopic,
    landed,
    partition_exists,
    replicated,
    run_now,
)
from shazamq.broker.groups.offsets_store import OFFSETS_TOPIC
from shazamq.broker.groups.ownership import OwnedPartitions, Ownership
from shazamq.broker.log import AppendOrigin, LogError
from shazamq.broker.log.errors import (
    InvalidProducerEpochError,
    NotLeaderError,
    TransactionCoordinatorFencedError,
)
from shazamq.broker.log.writer import append_through
from shazamq.broker.tasks import cancel_all
from shazamq.broker.topic_configs import MIRROR_SOURCE
from shazamq.protocol.errors import ErrorCode, KafkaError
from shazamq.protocol.messages.write_txn_markers_request import (
    WritableTxnMarker,
    WritableTxnMarkerTopic,
    WriteTxnMarkersRequest,
)
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
from .verification import ProduceVerifier

if TYPE_CHECKING:
    from shazamq.broker.app import Broker
    from shazamq.broker.cluster.node import ClusterNode
    from shazamq.broker.log.partition_log import AppendInfo
    from shazamq.broker.partitions import Partition, PartitionManager

__all__ = ["TRANSACTION_STATE_TOPIC", "EndTxnResult", "TransactionCoordinator"]

log = logging.getLogger(__name__)

TRANSACTION_STATE_TOPIC = "__transaction_state"

TopicPartition = tuple[str, int]

_E = ErrorCode

WRITE_TXN_MARKERS_KEY = 27
# Kafka waits request.timeout.ms (30 s) for the in-sync replicas of a state write and of
# the markers a WriteTxnMarkers appends.
STATE_WRITE_TIMEOUT_S = 30.0
MARKER_WRITE_TIMEOUT_S = 30.0
# The leader answers a WriteTxnMarkers within its own wait; the margin covers the trip.
_MARKER_REQUEST_TIMEOUT_S = MARKER_WRITE_TIMEOUT_S + 5.0
# Producer ids taken from the controller at a time (KRaft's block size).
PRODUCER_ID_BLOCK = 1000
_MARKER_RETRY_FIRST_S = 0.05
_MARKER_RETRY_MAX_S = 1.0

# Marker outcomes that end the attempt at a partition. Success; the producer or the
# coordinator moved on (a newer epoch wrote there, so nothing of this transaction is
# open); and the refusals Kafka treats as bugs, which a retry cannot fix. Every other
# error (leadership moving, replicas short or slow, the broker unreachable) is retried.
_MARKER_FINAL = frozenset(
    {
        0,
        int(_E.INVALID_PRODUCER_EPOCH),
        int(_E.TRANSACTION_COORDINATOR_FENCED),
        int(_E.UNSUPPORTED_FOR_MESSAGE_FORMAT),
        int(_E.CORRUPT_MESSAGE),
        int(_E.MESSAGE_TOO_LARGE),
        int(_E.RECORD_LIST_TOO_LARGE),
        int(_E.INVALID_REQUIRED_ACKS),
    }
)
_MARKER_REFUSED = frozenset(
    {int(_E.INVALID_PRODUCER_EPOCH), int(_E.TRANSACTION_COORDINATOR_FENCED)}
)


def is_mirrored(parts: PartitionManager, topic: str) -> bool:
    """Whether ``topic`` is a read-only mirror (local transactions may not touch it)."""
    info = parts.metadata.get(topic)
    return info is not None and MIRROR_SOURCE in info.configs


@dataclass(frozen=True, slots=True)
class InitProducerIdResult:
    error: int
    producer_id: int = -1
    producer_epoch: int = -1


@dataclass(frozen=True, slots=True)
class EndTxnResult:
    """EndTxn's answer; v5 (transactions v2) also tells the producer its bumped epoch."""

    error: int
    producer_id: int = -1
    producer_epoch: int = -1


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class _StoreFailed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def state_write_error(code: int) -> int:
    """What a failed ``__transaction_state`` write answers (Kafka's mapping: the client
    retries, or looks the coordinator up again)."""
    if code in (
        _E.UNKNOWN_TOPIC_OR_PARTITION,
        _E.NOT_ENOUGH_REPLICAS,
        _E.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        _E.REQUEST_TIMED_OUT,
    ):
        return int(_E.COORDINATOR_NOT_AVAILABLE)
    if code in (_E.NOT_LEADER_OR_FOLLOWER, _E.KAFKA_STORAGE_ERROR):
        return int(_E.NOT_COORDINATOR)
    return int(code)


class TransactionCoordinator:
    """Producer ids and every transactional id of the broker."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.config = broker.config.transactions
        self.topic = InternalTopic(
            broker.partitions,
            TRANSACTION_STATE_TOPIC,
            self.config.state_log_num_partitions,
            {  # Kafka's TransactionLog topic configs
                "cleanup.policy": "compact",
                "segment.bytes": str(self.config.state_log_segment_bytes),
                "compression.type": "uncompressed",
                "unclean.leader.election.enable": "false",
            },
            min_insync_replicas=self.config.state_log_min_isr,
        )
        self.txns: dict[str, TxnMetadata] = {}
        self.loaded = False
        self.producer_ids: ProducerIdAllocator | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # cluster mode: the __transaction_state partitions led here
        self._owned: OwnedPartitions[dict[str, TxnMetadata], Ownership] = OwnedPartitions(
            TRANSACTION_STATE_TOPIC,
            self.topic.partition_for,
            new=Ownership,
            read=self._load_partition_records,
            install=lambda _index, loaded: self.txns.update(loaded),
            then=self._partition_loaded,
            unload=self._unload_partition,
            log=log,
        )
        # ids with a request or a state change in flight: others get CONCURRENT_TRANSACTIONS
        self._busy: set[str] = set()
        # ids with background work (completing, aborting, expiring), one job per id
        self._jobs: dict[str, asyncio.Task[None]] = {}
        # (producer id, epoch) per transactional id whose AddPartitions/AddOffsets was
        # turned away while the previous transaction was completing: that producer has
        # begun its next transaction, so an abort it sends is about that (still empty) one
        self._next_begun: dict[str, tuple[int, int]] = {}
        # cluster mode: the block of producer ids being handed out, and its refill
        self._pid_next = 0
        self._pid_end = 0
        self._pid_fetch: asyncio.Task[None] | None = None
        # cluster mode: connections for WriteTxnMarkers, apart from the replica fetchers'
        # (a broker answers a connection's requests in order, so a marker waiting for its
        # replication would hold up the very fetches that replicate it)
        self.marker_pool: ClientPool | None = None
        self.verifier = ProduceVerifier(self)
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

    @property
    def cluster(self) -> ClusterNode | None:
        return getattr(self.broker, "cluster", None)

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        cluster = self.cluster
        if cluster is not None:
            self._start_in_cluster(cluster)
            return
        self.producer_ids = ProducerIdAllocator(self.broker.data_dir)
        started = time.monotonic()
        # a fresh broker has no __transaction_state: FindCoordinator or the first
        # transactional InitProducerId creates it, and there is nothing to load before
        if self.topic.exists:
            await self.topic.ensure_created()
            self.txns = await asyncio.get_running_loop().run_in_executor(None, self._load_all)
        for meta in self.txns.values():
            self.producer_ids.ensure_above(meta.producer_id)
        self.loaded = True
        # awaited (not run_now): its markers may take a writer thread; nothing is served yet
        await self._recover(_now_ms(), list(self.txns.values()))
        self.broker.metrics.add_probe(self._probe)
        self._tasks.append(asyncio.create_task(self._timeout_loop(), name="txn-timeouts"))
        if self.topic.needs_creation:
            log.info(
                "transaction coordinator started; %s is created on first use",
                TRANSACTION_STATE_TOPIC,
            )
            return
        log.info(
            "transaction coordinator loaded %d transactional ids in %.2fs",
            len(self.txns),
            time.monotonic() - started,
        )

    def _start_in_cluster(self, cluster: ClusterNode) -> None:
        # The topic is created on the first FindCoordinator; until then nothing is led here.
        if self.marker_pool is None:
            self.marker_pool = ClientPool(
                self._address_of,
                client_id="shazamq-txn-markers",
                **cluster.peer_client_options(),
            )
        self.loaded = True
        self._owned.attach(cluster, list(self.broker.partitions.partitions.values()))
        self.broker.metrics.add_probe(self._probe)
        self._tasks.append(asyncio.create_task(self._timeout_loop(), name="txn-timeouts"))
        log.info(
            "transaction coordinator started; it loads the %s partitions led here",
            TRANSACTION_STATE_TOPIC,
        )

    async def stop(self) -> None:
        self._owned.detach(self.cluster)
        await cancel_all(self._tasks)
        await cancel_all(list(self._jobs.values()))
        self._jobs.clear()
        if self._pid_fetch is not None:
            await cancel_all([self._pid_fetch])
        if self.marker_pool is not None:
            await self.marker_pool.close()
            self.marker_pool = None
        await self.verifier.close()
        self.loaded = False

    def _address_of(self, node_id: int) -> tuple[str, int] | None:
        cluster = self.cluster
        b = cluster.state.brokers.get(node_id) if cluster is not None else None
        return (b.host, b.port) if b is not None else None

    def _load_all(self) -> dict[str, TxnMetadata]:
        txns: dict[str, TxnMetadata] = {}
        for index in range(self.topic.count):
            txns.update(self._load_partition_records(index))
        return txns

    def _load_partition_records(self, index: int) -> dict[str, TxnMetadata]:
        """Replay partition ``index`` of the state topic; safe in an executor thread."""
        txns: dict[str, TxnMetadata] = {}
        for batch in self.topic.scan(index):
            for record_offset, key, value in batch.records:
                if key is None:
                    continue
                try:
                    txn_id = decode_txn_key(key)
                    if value is None:
                        txns.pop(txn_id, None)
                    else:
                        txns[txn_id] = TxnMetadata.from_log_value(txn_id, decode_txn_value(value))
                except TxnRecordError as exc:
                    log.error(
                        "%s-%d: skipping malformed record at offset %d: %s",
                        TRANSACTION_STATE_TOPIC,
                        index,
                        record_offset,
                        exc,
                    )
        return txns

    async def _recover(self, now_ms: int, metas: Iterable[TxnMetadata]) -> None:
        """Finish what a crash (or the previous coordinator) interrupted: complete
        prepared transactions, abort expired ones."""
        for meta in metas:
            if meta.in_prepare:
                log.info(
                    "completing %s of transactional id %s left by the previous coordinator",
                    meta.state.display_name,
                    meta.transactional_id,
                )
                await self._complete(meta)
            elif meta.state is TxnState.ONGOING and meta.start_ms + meta.timeout_ms < now_ms:
                log.info(
                    "aborting transaction of %s: it timed out while no coordinator ran it",
                    meta.transactional_id,
                )
                self.timed_out.inc()
                await self._exclusively(meta.transactional_id, self._fence_and_abort, meta)

    # -- which transactional ids are coordinated here ---------------------------------

    def key_error(self, transactional_id: str) -> int:
        """0 if this broker serves ``transactional_id`` now; else
        COORDINATOR_LOAD_IN_PROGRESS or NOT_COORDINATOR."""
        if self.cluster is None:
            return 0 if self.loaded else int(_E.COORDINATOR_LOAD_IN_PROGRESS)
        return self._owned.key_error(transactional_id, self.loaded)

    def listing_error(self) -> int:
        """The error of a request about every transaction (ListTransactions)."""
        if self.cluster is None:
            return 0 if self.loaded else int(_E.COORDINATOR_LOAD_IN_PROGRESS)
        if not self.loaded:
            return int(_E.COORDINATOR_NOT_AVAILABLE)
        if self._owned.loading:
            return int(_E.COORDINATOR_LOAD_IN_PROGRESS)
        return 0

    async def _partition_loaded(
        self, index: int, own: Ownership, loaded: dict[str, TxnMetadata], started: float
    ) -> None:
        log.info(
            "%s-%d: now coordinating %d transactional ids (loaded in %.2fs)",
            TRANSACTION_STATE_TOPIC,
            index,
            len(loaded),
            time.monotonic() - started,
        )
        await self._recover(_now_ms(), list(loaded.values()))

    def _unload_partition(self, index: int) -> None:
        part = self.topic.partition_for
        for txn_id in [t for t in self._jobs if part(t) == index]:
            self._jobs.pop(txn_id).cancel()
        doomed = [t for t in self.txns if part(t) == index]
        for txn_id in doomed:
            del self.txns[txn_id]
            self._next_begun.pop(txn_id, None)
        log.info(
            "%s-%d: no longer led here; %d transactional ids unloaded",
            TRANSACTION_STATE_TOPIC,
            index,
            len(doomed),
        )

    # -- background work per transactional id ------------------------------------------

    def _running(self, txn_id: str) -> bool:
        job = self._jobs.get(txn_id)
        return job is not None and not job.done()

    def _start_job(self, txn_id: str, work: Callable[[], Awaitable[object]]) -> None:
        async def run() -> None:
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background work for transactional id %s failed", txn_id)
            finally:
                if self._jobs.get(txn_id) is task:
                    del self._jobs[txn_id]

        task = asyncio.get_running_loop().create_task(run(), name=f"txn {txn_id}")
        self._jobs[txn_id] = task

    async def _complete(self, meta: TxnMetadata) -> bool:
        """Finish a prepared transaction: at once on a single broker (False if some
        partition refused its marker), in the background in a cluster (False: not yet)."""
        if self.cluster is None:
            return await self._finish(meta)
        txn_id = meta.transactional_id
        if not self._running(txn_id):

            async def finish() -> None:
                current = self.txns.get(txn_id)
                if current is not None and current.in_prepare:
                    await self._finish(current)

            self._start_job(txn_id, finish)
        return False

    async def _exclusively(
        self,
        txn_id: str,
        work: Callable[[TxnMetadata], Awaitable[object]],
        meta: TxnMetadata,
    ) -> None:
        """Run the coordinator's own change of ``txn_id`` (a timeout's abort, an expiry)
        holding the id against requests: inline on a single broker, as a job in a
        cluster. Skipped if the id is busy; the periodic check comes back to it."""
        if txn_id in self._busy or self._running(txn_id):
            return
        self._busy.add(txn_id)
        if self.cluster is None:
            try:
                await work(meta)
            finally:
                self._busy.discard(txn_id)
            return

        async def run() -> None:
            try:
                if self.txns.get(txn_id) is meta:
                    await work(meta)
            finally:
                self._busy.discard(txn_id)

        self._start_job(txn_id, run)

    # -- persistence ------------------------------------------------------------------

    def _coordinator_epoch(self, txn_id: str) -> int:
        p = self.broker.partitions.get(TRANSACTION_STATE_TOPIC, self.topic.partition_for(txn_id))
        return p.leader_epoch if p is not None else 0

    def _store(self, meta: TxnMetadata) -> TxnMetadata:
        """:meth:`_write_state` on a single broker, where it never waits."""
        return run_now(self._write_state(meta))

    async def _write_state(self, meta: TxnMetadata) -> TxnMetadata:
        """Write ``meta`` to the state topic, then make it current. Raises _StoreFailed."""
        txn_id = meta.transactional_id
        index = self.topic.partition_for(txn_id)
        own = self._owned.get(index)
        try:
            appended = await landed(
                self.topic.append(
                    index, [(encode_txn_key(txn_id), encode_txn_value(meta.to_log_value()))]
                )
            )
        except NotLeaderError as exc:  # led elsewhere by the time its turn came
            raise _StoreFailed(int(_E.NOT_COORDINATOR), str(exc)) from exc
        except (LogError, RecordError) as exc:
            raise _StoreFailed(int(_E.COORDINATOR_NOT_AVAILABLE), str(exc)) from exc
        except KafkaError as exc:
            raise _StoreFailed(state_write_error(int(exc.code)), str(exc)) from exc
        await self._replicated(appended, index, own)
        self.txns[txn_id] = meta
        return meta

    async def _replicated(self, appended: Appended, index: int, own: Ownership | None) -> None:
        """Wait for the in-sync replicas of a state write; _StoreFailed if they did not
        confirm, or the partition's leadership changed meanwhile."""
        cluster = self.cluster
        code = await replicated(cluster, appended, STATE_WRITE_TIMEOUT_S)
        if not code and cluster is not None and self._owned.get(index) is not own:
            code = int(_E.NOT_LEADER_OR_FOLLOWER)
        if code:
            raise _StoreFailed(
                state_write_error(code), f"the in-sync replicas did not confirm (error {code})"
            )

    async def _allocate(self) -> int:
        cluster = self.cluster
        if cluster is None:
            assert self.producer_ids is not None
            return self.producer_ids.allocate()
        while self._pid_next >= self._pid_end:
            fetch = self._pid_fetch
            if fetch is None or fetch.done():
                fetch = self._pid_fetch = asyncio.get_running_loop().create_task(
                    self._fetch_producer_ids(cluster), name="producer-id-block"
                )
                fetch.add_done_callback(_retrieve)
            await asyncio.shield(fetch)
        pid = self._pid_next
        self._pid_next += 1
        return pid

    async def _fetch_producer_ids(self, cluster: ClusterNode) -> None:
        start = await cluster.allocate_producer_ids(PRODUCER_ID_BLOCK)
        self._pid_next, self._pid_end = start, start + PRODUCER_ID_BLOCK
        log.info("producer ids %d-%d reserved", start, start + PRODUCER_ID_BLOCK - 1)

    # -- InitProducerId ---------------------------------------------------------------

    def init_producer_id(
        self,
        transactional_id: str | None,
        timeout_ms: int,
        expected_producer_id: int = -1,
        expected_epoch: int = -1,
    ) -> InitProducerIdResult:
        """:meth:`init_producer_id_async` on a single broker, where it never waits."""
        return run_now(
            self.init_producer_id_async(
                transactional_id, timeout_ms, expected_producer_id, expected_epoch
            )
        )

    async def init_producer_id_async(
        self,
        transactional_id: str | None,
        timeout_ms: int,
        expected_producer_id: int = -1,
        expected_epoch: int = -1,
    ) -> InitProducerIdResult:
        if transactional_id is None:
            try:
                return InitProducerIdResult(0, await self._allocate(), 0)
            except (ProducerIdsExhaustedError, OSError) as exc:
                log.error("cannot allocate a producer id: %s", exc)
                return InitProducerIdResult(int(_E.UNKNOWN_SERVER_ERROR))
            except KafkaError as exc:
                # Kafka's answer while a new block is on its way: the client retries
                log.warning("cannot allocate a producer id yet: %s", exc)
                return InitProducerIdResult(int(_E.COORDINATOR_LOAD_IN_PROGRESS))
        if transactional_id == "":
            return InitProducerIdResult(int(_E.INVALID_REQUEST))
        if self.topic.needs_creation:  # a single broker's first transactional producer
            await self.topic.created()
        error = self.key_error(transactional_id)
        if error:
            return InitProducerIdResult(error)
        if timeout_ms <= 0 or timeout_ms > self.config.max_timeout_ms:
            return InitProducerIdResult(int(_E.INVALID_TRANSACTION_TIMEOUT))
        if transactional_id in self._busy:
            return InitProducerIdResult(int(_E.CONCURRENT_TRANSACTIONS))
        self._busy.add(transactional_id)
        try:
            return await self._init_producer_id(
                transactional_id, timeout_ms, expected_producer_id, expected_epoch
            )
        finally:
            self._busy.discard(transactional_id)

    async def _init_producer_id(
        self,
        transactional_id: str,
        timeout_ms: int,
        expected_producer_id: int,
        expected_epoch: int,
    ) -> InitProducerIdResult:
        now = _now_ms()
        meta = self.txns.get(transactional_id)
        try:
            if meta is None:
                meta = TxnMetadata(
                    transactional_id=transactional_id,
                    producer_id=await self._allocate(),
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
                if not await self._complete(meta):
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
                if not await self._fence_and_abort(meta):
                    # in a cluster the abort completes in the background: the producer
                    # retries, as Kafka's does
                    return InitProducerIdResult(int(_E.CONCURRENT_TRANSACTIONS))
                meta = self.txns[transactional_id]
            if meta.epoch_exhausted:
                new_pid, new_epoch = await self._allocate(), 0
                last_pid = meta.producer_id
            else:
                new_pid, new_epoch = meta.producer_id, meta.producer_epoch + 1
                last_pid = meta.last_producer_id
            # Kafka's rule: the epoch before this bump is remembered only for a producer
            # recovering its own epoch; a new instance's bump forgets it, so the instance
            # it fenced cannot take the new epoch over by "retrying"
            meta = await self._write_state(
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
        except KafkaError as exc:
            log.warning("cannot allocate a producer id yet: %s", exc)
            return InitProducerIdResult(int(_E.COORDINATOR_LOAD_IN_PROGRESS))
        return InitProducerIdResult(0, meta.producer_id, meta.producer_epoch)

    # -- AddPartitionsToTxn / AddOffsetsToTxn -----------------------------------------

    def _owned_by(
        self, transactional_id: str, producer_id: int, epoch: int
    ) -> tuple[TxnMetadata | None, int]:
        """The transaction's metadata if (producer_id, epoch) owns it, else the error."""
        if not transactional_id:
            return None, int(_E.INVALID_REQUEST)
        error = self.key_error(transactional_id)
        if error:
            return None, error
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

    def _check_adding(self, transactional_id: str, producer_id: int, epoch: int) -> int:
        """:meth:`_check_producer` for a request that adds to the producer's transaction:
        one turned away while the previous transaction completes marks the next as begun."""
        error = self._check_producer(transactional_id, producer_id, epoch)
        if error == _E.CONCURRENT_TRANSACTIONS:
            self._next_begun[transactional_id] = (producer_id, epoch)
        return error

    def add_partitions(
        self,
        transactional_id: str,
        producer_id: int,
        epoch: int,
        partitions: Iterable[TopicPartition],
    ) -> dict[TopicPartition, int]:
        """:meth:`add_partitions_async` on a single broker, where it never waits."""
        return run_now(self.add_partitions_async(transactional_id, producer_id, epoch, partitions))

    async def add_partitions_async(
        self,
        transactional_id: str,
        producer_id: int,
        epoch: int,
        partitions: Iterable[TopicPartition],
    ) -> dict[TopicPartition, int]:
        wanted = list(dict.fromkeys(partitions))
        error = self._check_adding(transactional_id, producer_id, epoch)
        if error:
            return dict.fromkeys(wanted, error)
        refused = self._unaddable(wanted)
        if refused is not None:
            return refused
        error = await self._add(transactional_id, wanted)
        return dict.fromkeys(wanted, error)

    def _unaddable(self, wanted: list[TopicPartition]) -> dict[TopicPartition, int] | None:
        """Per-partition errors if some partition cannot join a transaction, else None."""
        parts = self.broker.partitions
        cluster = self.cluster
        missing = {tp for tp in wanted if not partition_exists(parts, cluster, tp[0], tp[1])}
        if missing:
            return {
                tp: int(
                    _E.UNKNOWN_TOPIC_OR_PARTITION if tp in missing else _E.OPERATION_NOT_ATTEMPTED
                )
                for tp in wanted
            }
        mirrored = {tp for tp in wanted if is_mirrored(parts, tp[0])}
        if mirrored:
            # a marker written here would sit in the middle of the source's offsets
            return {
                tp: int(
                    _E.TOPIC_AUTHORIZATION_FAILED if tp in mirrored else _E.OPERATION_NOT_ATTEMPTED
                )
                for tp in wanted
            }
        return None

    def add_offsets(
        self, transactional_id: str, producer_id: int, epoch: int, group_id: str
    ) -> int:
        """:meth:`add_offsets_async` on a single broker, where it never waits."""
        return run_now(self.add_offsets_async(transactional_id, producer_id, epoch, group_id))

    async def add_offsets_async(
        self, transactional_id: str, producer_id: int, epoch: int, group_id: str
    ) -> int:
        error = self._check_adding(transactional_id, producer_id, epoch)
        if error:
            return error
        # the transaction's markers go to the group's partition of __consumer_offsets
        await self.broker.groups.create_offsets_topic()
        index = self.broker.groups.partition_for(group_id)
        return await self._add(transactional_id, [(OFFSETS_TOPIC, index)])

    async def _add(
        self, transactional_id: str, partitions: list[TopicPartition], *, implicit: bool = False
    ) -> int:
        if transactional_id in self._busy:
            return int(_E.CONCURRENT_TRANSACTIONS)
        meta = self.txns[transactional_id]
        new = frozenset(partitions)
        if meta.state is TxnState.ONGOING and new <= meta.partitions:
            return 0
        self._next_begun.pop(transactional_id, None)
        now = _now_ms()
        version = meta.client_txn_version
        if implicit and meta.state is TxnState.EMPTY:
            # a transaction begun by a produce is a v2 one: only such a client skips
            # AddPartitionsToTxn
            version = 2
        self._busy.add(transactional_id)
        try:
            await self._write_state(
                meta.to(
                    TxnState.ONGOING,
                    partitions=meta.partitions | new,
                    start_ms=meta.start_ms if meta.state is TxnState.ONGOING else now,
                    last_update_ms=now,
                    client_txn_version=version,
                )
            )
        except _StoreFailed as exc:
            log.warning("adding partitions to %s: %s", transactional_id, exc)
            return exc.code
        finally:
            self._busy.discard(transactional_id)
        return 0

    # -- EndTxn -----------------------------------------------------------------------

    def end_txn(self, transactional_id: str, producer_id: int, epoch: int, commit: bool) -> int:
        """:meth:`end_txn_async` on a single broker, where it never waits."""
        return run_now(self.end_txn_async(transactional_id, producer_id, epoch, commit))

    def end_txn_v2(
        self, transactional_id: str, producer_id: int, epoch: int, commit: bool
    ) -> EndTxnResult:
        """:meth:`end_transaction` with the epoch bump, on a single broker."""
        return run_now(
            self.end_transaction(transactional_id, producer_id, epoch, commit, bump_epoch=True)
        )

    async def end_txn_async(
        self, transactional_id: str, producer_id: int, epoch: int, commit: bool
    ) -> int:
        """EndTxn before transactions v2: the epoch stays; the error, or 0."""
        result = await self.end_transaction(transactional_id, producer_id, epoch, commit)
        return result.error

    async def end_transaction(
        self,
        transactional_id: str,
        producer_id: int,
        epoch: int,
        commit: bool,
        *,
        bump_epoch: bool = False,
    ) -> EndTxnResult:
        """End the producer's transaction. With ``bump_epoch`` (EndTxn v5, KIP-890 part 2)
        the prepared transaction takes the next epoch, its markers are written with it
        (so the log fences anything the producer sent before), and the answer carries
        the producer id and epoch for its next transaction."""
        if bump_epoch:
            retried = self._retried_v2_end(transactional_id, producer_id, epoch, commit)
            if retried is not None:
                return retried
        meta, error = self._owned_by(transactional_id, producer_id, epoch)
        if meta is None:
            return EndTxnResult(error)
        if transactional_id in self._busy:
            # a state write (an AddPartitions, say) is still replicating: the state seen
            # here is the one before it, so the client must retry, not be told it is wrong
            return EndTxnResult(int(_E.CONCURRENT_TRANSACTIONS))
        state = meta.state
        begun = self._next_begun.pop(transactional_id, None) == (producer_id, epoch)
        if bump_epoch and meta.completed:
            # a v2 producer ends every transaction it began, even one no partition joined
            # (nothing was added, or its produces were refused): the epoch moves on all
            # the same, through a transaction with no partitions and so no markers
            meta = meta.to(TxnState.ONGOING, partitions=frozenset(), start_ms=_now_ms())
            state = meta.state
        if state is TxnState.ONGOING:
            target = TxnState.PREPARE_COMMIT if commit else TxnState.PREPARE_ABORT
            changes: dict[str, object] = {"client_txn_version": 0}
            if bump_epoch:
                changes = {
                    "client_txn_version": 2,
                    "producer_epoch": epoch + 1,
                    "last_producer_epoch": epoch,
                }
            self._busy.add(transactional_id)
            try:
                if bump_epoch and meta.epoch_exhausted:
                    changes["next_producer_id"] = await self._allocate()
                prepared = await self._write_state(
                    meta.to(target, last_update_ms=_now_ms(), **changes)
                )
            except _StoreFailed as exc:
                log.warning("ending transaction of %s: %s", transactional_id, exc)
                return EndTxnResult(exc.code)
            except (ProducerIdsExhaustedError, OSError, KafkaError) as exc:
                log.warning(
                    "ending transaction of %s: no next producer id: %s", transactional_id, exc
                )
                return EndTxnResult(int(_E.COORDINATOR_NOT_AVAILABLE))
            finally:
                self._busy.discard(transactional_id)
            await self._complete(prepared)
            if not bump_epoch:
                return EndTxnResult(0, prepared.producer_id, prepared.producer_epoch)
            if prepared.next_producer_id >= 0:
                return EndTxnResult(0, prepared.next_producer_id, 0)
            return EndTxnResult(0, prepared.producer_id, prepared.producer_epoch)
        if meta.in_prepare:
            # the previous transaction's markers are still being written (Kafka's pending
            # transition): whatever this asks, the answer is "not yet"
            if begun:
                self._next_begun[transactional_id] = (producer_id, epoch)
            return EndTxnResult(int(_E.CONCURRENT_TRANSACTIONS))
        ok = EndTxnResult(0, meta.producer_id, meta.producer_epoch)
        if state is TxnState.COMPLETE_COMMIT:
            if commit:
                return ok
            # librdkafka sends EndTxn(abort) once it has sent an AddPartitions, even when
            # that was turned away because the previous commit was still completing: the
            # producer then aborts its next transaction, which holds nothing here yet
            return ok if begun else EndTxnResult(int(_E.INVALID_TXN_STATE))
        if state is TxnState.COMPLETE_ABORT:
            return ok if not commit else EndTxnResult(int(_E.INVALID_TXN_STATE))
        return EndTxnResult(int(_E.INVALID_TXN_STATE))

    def _retried_v2_end(
        self, transactional_id: str, producer_id: int, epoch: int, commit: bool
    ) -> EndTxnResult | None:
        """The answer to an EndTxn v5 repeated after its epoch bump (the producer did not
        get the first answer), or None if this is not such a retry. A fence forgets the
        epoch before it, so a fenced producer is not taken for a retrying one."""
        if not transactional_id or self.key_error(transactional_id):
            return None
        meta = self.txns.get(transactional_id)
        if meta is None or not meta.is_v2 or meta.last_producer_epoch < 0:
            return None
        same_id = producer_id == meta.producer_id and epoch == meta.producer_epoch - 1
        rolled = (
            meta.producer_epoch == 0
            and producer_id == meta.last_producer_id
            and producer_id != meta.producer_id
        )
        if epoch != meta.last_producer_epoch or not (same_id or rolled):
            return None
        if meta.in_prepare:
            return EndTxnResult(int(_E.CONCURRENT_TRANSACTIONS))
        wanted = TxnState.COMPLETE_COMMIT if commit else TxnState.COMPLETE_ABORT
        if meta.state is wanted:
            return EndTxnResult(0, meta.producer_id, meta.producer_epoch)
        if meta.state in (TxnState.COMPLETE_COMMIT, TxnState.COMPLETE_ABORT):
            return EndTxnResult(int(_E.INVALID_TXN_STATE))
        return None

    async def _fence_and_abort(self, meta: TxnMetadata) -> bool:
        """Bump the epoch of an Ongoing transaction (fencing its producer) and abort it.
        True once aborted (a single broker); False if not (yet)."""
        try:
            prepared = await self._write_state(
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
        if self.cluster is not None and self._running(meta.transactional_id):
            # called from this id's own job: finish within it
            return await self._finish(prepared)
        return await self._complete(prepared)

    async def _finish(self, meta: TxnMetadata) -> bool:
        """Write the markers of a prepared transaction and complete it. False if some
        partition could not take its marker (the periodic check retries)."""
        commit = meta.state is TxnState.PREPARE_COMMIT
        if not await self._write_markers(meta, commit):
            return False
        try:
            rollover: dict[str, object] = {}
            if meta.next_producer_id >= 0:
                # the v2 end used up the epoch: the producer goes on under the next id
                rollover = {
                    "producer_id": meta.next_producer_id,
                    "producer_epoch": 0,
                    "last_producer_id": meta.producer_id,
                    "next_producer_id": -1,
                }
            await self._write_state(
                meta.to(
                    TxnState.COMPLETE_COMMIT if commit else TxnState.COMPLETE_ABORT,
                    partitions=frozenset(),
                    last_update_ms=_now_ms(),
                    **rollover,
                )
            )
        except _StoreFailed as exc:
            log.warning("completing transaction of %s: %s", meta.transactional_id, exc)
            return False
        self.completed.labels("commit" if commit else "abort").inc()
        return True

    async def _write_markers(self, meta: TxnMetadata, commit: bool) -> bool:
        coordinator_epoch = self._coordinator_epoch(meta.transactional_id)
        cluster = self.cluster
        if cluster is not None:
            await self._write_markers_in_cluster(cluster, meta, commit, coordinator_epoch)
            return True
        parts = self.broker.partitions
        ok = True
        for topic, index in sorted(meta.partitions):
            if parts.get(topic, index) is None:
                log.info("%s-%d is gone: no marker for %s", topic, index, meta.transactional_id)
                continue
            code = await self.write_marker(
                topic, index, meta.producer_id, meta.producer_epoch, commit, coordinator_epoch
            )
            if code and code not in _MARKER_REFUSED:
                ok = False
        return ok

    async def _write_markers_in_cluster(
        self, cluster: ClusterNode, meta: TxnMetadata, commit: bool, coordinator_epoch: int
    ) -> None:
        """Every partition of the transaction gets its marker from its current leader:
        this broker's own directly, the others' through WriteTxnMarkers. Rounds repeat
        (leaders looked up again each time) until every partition has its marker or is
        gone; the job is cancelled if this broker stops coordinating the id."""
        pending = set(meta.partitions)
        delay = _MARKER_RETRY_FIRST_S
        while pending:
            local: list[TopicPartition] = []
            remote: dict[int, list[TopicPartition]] = {}
            for tp in sorted(pending):
                t = cluster.state.topics.get(tp[0])
                if t is None or not 0 <= tp[1] < len(t.partitions):
                    log.info("%s-%d is gone: no marker for %s", *tp, meta.transactional_id)
                    pending.discard(tp)
                    continue
                leader = t.partitions[tp[1]].leader
                if leader == cluster.node_id:
                    local.append(tp)
                elif leader >= 0:
                    remote.setdefault(leader, []).append(tp)
            writes: list[Awaitable[list[tuple[TopicPartition, int]]]] = [
                self._local_markers(local, meta, commit, coordinator_epoch)
            ]
            writes.extend(
                self._send_markers(cluster, node, tps, meta, commit, coordinator_epoch)
                for node, tps in remote.items()
            )
            for results in await asyncio.gather(*writes):
                for tp, code in results:
                    if code in _MARKER_FINAL:
                        if code and code not in _MARKER_REFUSED:
                            log.error(
                                "marker of %s in %s-%d refused for good: error %d",
                                meta.transactional_id,
                                *tp,
                                code,
                            )
                        pending.discard(tp)
            if pending:
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MARKER_RETRY_MAX_S)

    async def _local_markers(
        self,
        tps: list[TopicPartition],
        meta: TxnMetadata,
        commit: bool,
        coordinator_epoch: int,
    ) -> list[tuple[TopicPartition, int]]:
        codes = await asyncio.gather(
            *(
                self.write_marker(
                    topic, index, meta.producer_id, meta.producer_epoch, commit, coordinator_epoch
                )
                for topic, index in tps
            )
        )
        return list(zip(tps, codes, strict=True))

    async def _send_markers(
        self,
        cluster: ClusterNode,
        node: int,
        tps: list[TopicPartition],
        meta: TxnMetadata,
        commit: bool,
        coordinator_epoch: int,
    ) -> list[tuple[TopicPartition, int]]:
        """WriteTxnMarkers for ``tps`` to their leader ``node``: each partition's error."""
        by_topic: dict[str, list[int]] = {}
        for topic, index in tps:
            by_topic.setdefault(topic, []).append(index)
        request = WriteTxnMarkersRequest(
            markers=[
                WritableTxnMarker(
                    producer_id=meta.producer_id,
                    producer_epoch=meta.producer_epoch,
                    transaction_result=commit,
                    topics=[
                        WritableTxnMarkerTopic(name=t, partition_indexes=ids)
                        for t, ids in by_topic.items()
                    ],
                    coordinator_epoch=coordinator_epoch,
                )
            ]
        )
        codes = dict.fromkeys(tps, int(_E.NETWORK_EXCEPTION))
        pool = self.marker_pool
        assert pool is not None
        try:
            client = await pool.get(node)
            version = client.best_version(WRITE_TXN_MARKERS_KEY, 1)
            response = await client.request(
                WRITE_TXN_MARKERS_KEY, version, request, timeout=_MARKER_REQUEST_TIMEOUT_S
            )
        except Exception as exc:  # unreachable, broken connection, undecodable answer
            log.info(
                "markers of %s to broker %d not sent: %s; retrying",
                meta.transactional_id,
                node,
                exc,
            )
            # a fresh connection next round: an unanswered request would delay what follows
            pool.invalidate(node)
            return list(codes.items())
        for marker in response.markers:
            if marker.producer_id != meta.producer_id:
                continue
            for t in marker.topics:
                for part in t.partitions:
                    if (t.name, part.partition_index) in codes:
                        codes[(t.name, part.partition_index)] = part.error_code
        for tp, code in codes.items():
            if code not in _MARKER_FINAL:
                log.debug("marker of %s in %s-%d: error %d", meta.transactional_id, *tp, code)
        return list(codes.items())

    async def write_marker(
        self,
        topic: str,
        index: int,
        producer_id: int,
        producer_epoch: int,
        commit: bool,
        coordinator_epoch: int,
    ) -> int:
        """Append a COMMIT or ABORT marker to a partition led here; 0 once it is in (and,
        in a cluster, on the in-sync replicas), else the error, as WriteTxnMarkers
        answers per partition. A marker in ``__consumer_offsets`` completes the
        transaction's offsets in the group coordinator."""
        p = self.broker.partitions.get(topic, index)
        if p is None:
            return int(_E.UNKNOWN_TOPIC_OR_PARTITION)
        cluster = self.cluster
        role = p.replica if cluster is not None else None
        if role is not None and cluster is not None:
            if not role.is_leader:
                return int(_E.NOT_LEADER_OR_FOLLOWER)
            if len(role.isr) < cluster.min_isr(p.topic_info.configs):
                return int(_E.NOT_ENOUGH_REPLICAS)
        p.txn_markers += 1  # counted even if refused: a verification in flight retries
        try:
            info = await self._append_marker(
                p, producer_id, producer_epoch, commit, coordinator_epoch
            )
        except (InvalidProducerEpochError, TransactionCoordinatorFencedError) as exc:
            # a newer epoch already wrote to this partition: nothing of ours is open
            log.info("marker of producer %d in %s-%d refused: %s", producer_id, topic, index, exc)
            p.notify()
            self._marker_written(topic, index, producer_id, commit, None)
            return int(exc.error_code)
        except (LogError, RecordError) as exc:
            log.warning(
                "cannot write the marker of producer %d to %s-%d: %s",
                producer_id,
                topic,
                index,
                exc,
            )
            return int(exc.error_code)
        p.notify()
        appended = Appended(p, info.base_offset, info.last_offset + 1)
        code = await replicated(cluster, appended, MARKER_WRITE_TIMEOUT_S)
        if code:
            return code
        self._marker_written(topic, index, producer_id, commit, info.base_offset)
        return 0

    async def _append_marker(
        self,
        p: Partition,
        producer_id: int,
        producer_epoch: int,
        commit: bool,
        coordinator_epoch: int,
    ) -> AppendInfo:
        """The marker goes through the write pool, in turn with the partition's produce
        appends (a roll it triggers runs on a writer thread). In a cluster the writer asks,
        right before the write, whether this broker still leads at this epoch, as for a
        client's append (NotLeaderError, NOT_LEADER_OR_FOLLOWER, otherwise)."""
        now = _now_ms()
        batch = build_control_batch(commit, producer_id, producer_epoch, coordinator_epoch, now)
        epoch = p.leader_epoch
        return await append_through(
            getattr(self.broker.partitions, "writer", None),
            p.log,
            bytearray(batch),
            leader_epoch=epoch,
            now_ms=now,
            origin=AppendOrigin.COORDINATOR,
            still_leads=leadership_fence(p.replica, epoch),
        )

    def _marker_written(
        self, topic: str, index: int, producer_id: int, commit: bool, offset: int | None
    ) -> None:
        if topic == OFFSETS_TOPIC:
            self.broker.groups.complete_txn(index, producer_id, commit, offset)

    # -- TxnOffsetCommit and Produce checks -------------------------------------------

    def verify_txn_offset_commit(
        self, transactional_id: str, producer_id: int, epoch: int, offsets_partition: int
    ) -> int:
        """Error for a TxnOffsetCommit whose group partition is not in the transaction."""
        if not transactional_id:
            return int(_E.INVALID_REQUEST)
        error = self.key_error(transactional_id)
        if error:
            # coordinated by another broker (or loading): like Kafka before KIP-890, the
            # group coordinator does not ask it; the log still fences stale epochs
            return 0 if self.cluster is not None else error
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

    async def txn_offset_commit_check_async(
        self, transactional_id: str, producer_id: int, epoch: int, offsets_partition: int
    ) -> int:
        """:meth:`verify_txn_offset_commit`, where the group partition joins the
        transaction by the commit itself when a produce could add a partition (a v2
        producer skips AddOffsetsToTxn, as it skips AddPartitionsToTxn)."""
        error = self.verify_txn_offset_commit(
            transactional_id, producer_id, epoch, offsets_partition
        )
        if error != _E.INVALID_TXN_STATE or self.txns[transactional_id].in_prepare:
            return error
        tp = (OFFSETS_TOPIC, offsets_partition)
        return (await self.verify_produce_async(transactional_id, producer_id, epoch, [tp]))[tp]

    def producer_id_issued(self, producer_id: int) -> bool:
        """Whether InitProducerId ever handed out ``producer_id`` here (single broker:
        below the durably reserved block; cluster: below the next block the quorum
        would allocate). A produce under any other id is forged or from another
        cluster and is refused."""
        if self.cluster is not None:
            return producer_id < self.cluster.state.next_producer_id
        ids = self.producer_ids
        return ids is None or producer_id < ids.next_id

    # -- verification of transactional produces (KIP-890) ------------------------------

    async def verify_produce_async(
        self,
        transactional_id: str,
        producer_id: int,
        epoch: int,
        partitions: Iterable[TopicPartition],
    ) -> dict[TopicPartition, int]:
        """Whether a partition leader may append the producer's first transactional
        batch to each partition: 0 when the partition is part of the producer's ongoing
        transaction, else the error (INVALID_TXN_STATE: it is not). The coordinator, not
        the leader, knows the producer's transaction version (the Produce versions that
        carry it are newer than this broker's protocol), so here a produce also adds its
        partition when that is safe: to a transaction not begun yet after InitProducerId
        (nothing of an older transaction can carry the current epoch), and to any
        transaction of a v2 producer (every end bumped its epoch). A v1 producer's late
        produce, after the end of the transaction it belonged to, is refused: it would
        otherwise open a transaction no coordinator ever ends."""
        wanted = list(dict.fromkeys(partitions))
        error = self._verify_producer(transactional_id, producer_id, epoch)
        if error:
            return dict.fromkeys(wanted, error)
        meta = self.txns[transactional_id]
        if meta.state is TxnState.ONGOING and meta.partitions.issuperset(wanted):
            return dict.fromkeys(wanted, 0)
        implicit = meta.state is TxnState.EMPTY or (
            meta.is_v2 and (meta.completed or meta.state is TxnState.ONGOING)
        )
        if not implicit:
            return {
                tp: 0
                if meta.state is TxnState.ONGOING and tp in meta.partitions
                else int(_E.INVALID_TXN_STATE)
                for tp in wanted
            }
        refused = self._unaddable(wanted)
        if refused is not None:
            return refused
        return dict.fromkeys(wanted, await self._add(transactional_id, wanted, implicit=True))

    def _verify_producer(self, transactional_id: str, producer_id: int, epoch: int) -> int:
        """The produce-side errors of (producer_id, epoch) against the transactional id."""
        if not transactional_id:
            return int(_E.INVALID_REQUEST)
        error = self.key_error(transactional_id)
        if error:
            return error
        meta = self.txns.get(transactional_id)
        if meta is None:
            return int(_E.INVALID_PRODUCER_ID_MAPPING)
        if meta.in_prepare and producer_id in (meta.producer_id, meta.next_producer_id):
            # the previous transaction is still being completed: the producer retries
            return int(_E.CONCURRENT_TRANSACTIONS)
        if producer_id != meta.producer_id:
            if producer_id == meta.last_producer_id:
                return int(_E.INVALID_PRODUCER_EPOCH)
            return int(_E.INVALID_PRODUCER_ID_MAPPING)
        if epoch != meta.producer_epoch:
            return int(_E.INVALID_PRODUCER_EPOCH)
        if transactional_id in self._busy:
            return int(_E.CONCURRENT_TRANSACTIONS)
        return 0

    # -- timeouts and expiry ----------------------------------------------------------

    async def _timeout_loop(self) -> None:
        interval = self.config.abort_timed_out_check_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                await self._check_timeouts(_now_ms())
            except Exception:
                log.exception("transaction timeout check failed")

    def check_timeouts(self, now_ms: int) -> None:
        """Abort timed-out transactions, retry unfinished ones, expire idle ids (on a
        single broker at once; the loop awaits the same work in a cluster)."""
        run_now(self._check_timeouts(now_ms))

    async def _check_timeouts(self, now_ms: int) -> None:
        expiration = self.config.transactional_id_expiration_ms
        for meta in list(self.txns.values()):
            txn_id = meta.transactional_id
            if self.txns.get(txn_id) is not meta or txn_id in self._busy or self._running(txn_id):
                continue
            if meta.state is TxnState.ONGOING and meta.start_ms + meta.timeout_ms < now_ms:
                log.info(
                    "transaction of %s (producer %d epoch %d) timed out after %d ms; aborting",
                    txn_id,
                    meta.producer_id,
                    meta.producer_epoch,
                    meta.timeout_ms,
                )
                self.timed_out.inc()
                await self._exclusively(txn_id, self._fence_and_abort, meta)
            elif meta.in_prepare:
                await self._complete(meta)
            elif meta.completed and now_ms - meta.last_update_ms >= expiration:
                await self._exclusively(txn_id, self._expire, meta)

    async def _expire(self, meta: TxnMetadata) -> None:
        txn_id = meta.transactional_id
        index = self.topic.partition_for(txn_id)
        own = self._owned.get(index)
        try:
            meta.to(TxnState.DEAD)
            appended = await landed(self.topic.append(index, [(encode_txn_key(txn_id), None)]))
            await self._replicated(appended, index, own)
        except (LogError, RecordError, KafkaError, _StoreFailed) as exc:
            log.warning("cannot expire transactional id %s: %s", txn_id, exc)
            return
        if self.txns.get(txn_id) is meta:
            del self.txns[txn_id]
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


def _retrieve(task: asyncio.Task[None]) -> None:
    # every caller may have stopped waiting: keep asyncio from logging the failure
    if not task.cancelled():
        task.exception()
