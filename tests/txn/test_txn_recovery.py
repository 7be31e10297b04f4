"""Restart recovery of the transaction coordinator, with the broker run in-process.

Running the broker inside the test lets it stop at exactly the point a crash would
interrupt: after PrepareCommit reached ``__transaction_state`` and before any marker was
written. Covers: a prepared commit finished at the next start (COMMIT markers in the data
partition and in ``__consumer_offsets``, the last stable offset caught up, the
transaction's offsets visible to require_stable fetches); an Ongoing transaction whose
timeout passed while the broker was down aborted during start-up (producer fenced, the
aborted range recorded for read_committed fetches); an Ongoing transaction still within
its timeout kept, so its producer can commit after the restart; producer ids not reused
after a restart; epoch bumps, a retried InitProducerId answered without a second bump, a
stale epoch fenced, and an exhausted epoch moving to a new producer id; the epoch before
the last bump kept in ``__transaction_state`` so a retry is still answered after a
restart, and forgotten when a new instance or a timeout fences the producer; the state
topic created with the configured segment size.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from shazamq.broker.app import Broker
from shazamq.broker.groups.coordinator import OffsetCommit
from shazamq.broker.txn.metadata import MAX_EPOCH
from shazamq.broker.txn.state_log import TxnState
from shazamq.config import (
    BrokerConfig,
    BrokerSection,
    GroupsConfig,
    MetricsConfig,
    TransactionsConfig,
)
from shazamq.protocol.errors import ErrorCode as E
from shazamq.protocol.records import Record, build_batch
from tests.conftest import free_port


async def start(data_dir: Path, **transactions: int) -> Broker:
    config = BrokerConfig(
        broker=BrokerSection(host="127.0.0.1", port=free_port(), data_dir=str(data_dir)),
        metrics=MetricsConfig(enabled=False),
        groups=GroupsConfig(offsets_topic_num_partitions=2, initial_rebalance_delay_ms=0),
        transactions=TransactionsConfig(state_log_num_partitions=2, **transactions),
    )
    broker = Broker(config)
    await broker.start()
    # what a client's first FindCoordinator does; the synchronous calls below need both
    await broker.txn.topic.ensure_created()
    await broker.groups.create_offsets_topic()
    return broker


def append_txn_record(broker: Broker, topic: str, pid: int, epoch: int, seq: int) -> None:
    p = broker.partitions.get(topic, 0)
    assert p is not None
    batch = build_batch(
        [Record(value=b"x")],
        producer_id=pid,
        producer_epoch=epoch,
        base_sequence=seq,
        transactional=True,
    )
    p.log.append(bytearray(batch), leader_epoch=p.leader_epoch)


async def open_transaction(broker: Broker, txn_id: str, timeout_ms: int = 60_000):
    if broker.partitions.get("data", 0) is None:
        await broker.partitions.create_topic("data", 1)
    r = broker.txn.init_producer_id(txn_id, timeout_ms)
    assert r.error == 0
    assert broker.txn.add_partitions(txn_id, r.producer_id, r.producer_epoch, [("data", 0)]) == {
        ("data", 0): 0
    }
    append_txn_record(broker, "data", r.producer_id, r.producer_epoch, 0)
    return r


async def test_prepared_commit_is_finished_at_start(tmp_path):
    broker = await start(tmp_path)
    try:
        r = await open_transaction(broker, "tx")
        assert broker.txn.add_offsets("tx", r.producer_id, r.producer_epoch, "grp") == 0
        assert broker.groups.txn_commit_offsets(
            transactional_id="tx",
            group_id="grp",
            producer_id=r.producer_id,
            producer_epoch=r.producer_epoch,
            generation_id=-1,
            member_id="",
            group_instance_id=None,
            offsets={("data", 0): OffsetCommit(1)},
        ) == {("data", 0): 0}
        data = broker.partitions.get("data", 0)
        assert data is not None and data.log.last_stable_offset == 0
        # the crash point: PrepareCommit is in the log, no marker is
        meta = broker.txn.txns["tx"]
        broker.txn._store(meta.to(TxnState.PREPARE_COMMIT, last_update_ms=int(time.time() * 1000)))
    finally:
        await broker.stop()

    broker = await start(tmp_path)
    try:
        assert broker.txn.txns["tx"].state is TxnState.COMPLETE_COMMIT
        data = broker.partitions.get("data", 0)
        assert data is not None
        assert data.log.log_end_offset == 2  # the record and its COMMIT marker
        assert data.log.last_stable_offset == 2
        assert data.log.aborted_transactions(0, 2) == []
        code, fetched = broker.groups.fetch_offsets("grp", [("data", 0)], require_stable=True)
        assert (code, fetched[0].offset, fetched[0].error) == (0, 1, 0)
    finally:
        await broker.stop()

    broker = await start(tmp_path)  # and the group offsets were loaded from the log
    try:
        _, fetched = broker.groups.fetch_offsets("grp", [("data", 0)], require_stable=True)
        assert (fetched[0].offset, fetched[0].error) == (1, 0)
    finally:
        await broker.stop()


async def test_expired_transaction_is_aborted_at_start_and_a_live_one_kept(tmp_path):
    broker = await start(tmp_path)
    try:
        expired = await open_transaction(broker, "short", timeout_ms=200)
        live = await open_transaction(broker, "long", timeout_ms=60_000)
        seen_ids = {expired.producer_id, live.producer_id}
        short_meta = broker.txn.txns["short"]
        expires_ms = short_meta.start_ms + short_meta.timeout_ms
    finally:
        await broker.stop()
    # the restart comes once the short transaction's own deadline has passed (wall clock,
    # as the coordinator's recovery reads it), however long the stop took
    while time.time_ns() // 1_000_000 <= expires_ms:
        await asyncio.sleep(0.01)

    broker = await start(tmp_path)
    try:
        short = broker.txn.txns["short"]
        assert short.state is TxnState.COMPLETE_ABORT
        assert short.producer_epoch == expired.producer_epoch + 1  # fenced
        assert broker.txn.txns["long"].state is TxnState.ONGOING
        data = broker.partitions.get("data", 0)
        assert data is not None
        leo = data.log.log_end_offset
        aborted = data.log.aborted_transactions(0, leo)
        assert aborted == [(expired.producer_id, 0)]
        assert data.log.last_stable_offset == 1  # the live transaction's first offset
        # the live producer commits after the restart
        assert broker.txn.end_txn("long", live.producer_id, live.producer_epoch, True) == 0
        assert data.log.last_stable_offset == data.log.log_end_offset
        fresh = broker.txn.init_producer_id(None, 0)
        assert fresh.producer_id not in seen_ids and fresh.producer_id > max(seen_ids)
    finally:
        await broker.stop()


async def test_epoch_bumps_retries_and_exhaustion(tmp_path):
    broker = await start(tmp_path)
    try:
        txn = broker.txn
        first = txn.init_producer_id("t", 10_000)
        bumped = txn.init_producer_id("t", 10_000, first.producer_id, first.producer_epoch)
        assert (bumped.producer_id, bumped.producer_epoch) == (
            first.producer_id,
            first.producer_epoch + 1,
        )
        # the same request again (its answer was lost): the same answer, no new bump
        again = txn.init_producer_id("t", 10_000, first.producer_id, first.producer_epoch)
        assert again == bumped
        stale = txn.init_producer_id("t", 10_000, first.producer_id, first.producer_epoch - 1)
        assert stale.error == E.PRODUCER_FENCED
        # an exhausted epoch moves the transactional id to a new producer id
        meta = txn.txns["t"]
        txn._store(meta.to(TxnState.EMPTY, producer_epoch=MAX_EPOCH - 1))
        rolled = txn.init_producer_id("t", 10_000)
        assert rolled.producer_id != first.producer_id and rolled.producer_epoch == 0
    finally:
        await broker.stop()


async def test_init_producer_id_retries_are_recognised_across_restarts(tmp_path):
    broker = await start(tmp_path, state_log_segment_bytes=65_536)
    try:
        info = broker.partitions.metadata.get("__transaction_state")
        assert info is not None and info.configs["segment.bytes"] == "65536"
        txn = broker.txn
        first = txn.init_producer_id("t", 10_000)
        pid = first.producer_id
        bumped = txn.init_producer_id("t", 10_000, pid, first.producer_epoch)
        assert bumped.producer_epoch == first.producer_epoch + 1
    finally:
        await broker.stop()

    broker = await start(tmp_path)
    try:
        txn = broker.txn
        # the answer to the bump was lost and the broker restarted: the retry is recognised
        assert txn.init_producer_id("t", 10_000, pid, first.producer_epoch) == bumped
        # a new instance's InitProducerId forgets the last epoch, so the one it fenced
        # cannot take the new epoch over by "retrying", before or after a restart
        new = txn.init_producer_id("t", 10_000)
        assert new.producer_epoch == bumped.producer_epoch + 1
        zombie = txn.init_producer_id("t", 10_000, pid, bumped.producer_epoch)
        assert zombie.error == E.PRODUCER_FENCED
        # an exhausted epoch moves to a new producer id; that bump too is retried safely
        txn._store(txn.txns["t"].to(TxnState.EMPTY, producer_epoch=MAX_EPOCH - 1))
        rolled = txn.init_producer_id("t", 10_000, pid, MAX_EPOCH - 1)
        assert rolled.producer_id != pid and rolled.producer_epoch == 0
    finally:
        await broker.stop()

    broker = await start(tmp_path)
    try:
        txn = broker.txn
        assert txn.init_producer_id("t", 10_000, pid, bumped.producer_epoch).error == (
            E.PRODUCER_FENCED
        )
        assert txn.init_producer_id("t", 10_000, pid, MAX_EPOCH - 1) == rolled
        # a producer fenced by its transaction's timeout is not recognised either
        r = await open_transaction(broker, "slow", timeout_ms=100)
        txn.check_timeouts(int(time.time() * 1000) + 1_000)
        assert txn.txns["slow"].state is TxnState.COMPLETE_ABORT
        late = txn.init_producer_id("slow", 10_000, r.producer_id, r.producer_epoch)
        assert late.error == E.PRODUCER_FENCED
    finally:
        await broker.stop()


async def test_v2_end_exhausting_the_epoch_rolls_over_and_survives_a_restart(tmp_path):
    broker = await start(tmp_path)
    try:
        txn = broker.txn
        r = await open_transaction(broker, "v2")
        meta = txn.txns["v2"]
        # the producer is at the last epoch an end may bump from
        txn._store(meta.to(TxnState.ONGOING, producer_epoch=MAX_EPOCH - 1))
        p = broker.partitions.get("data", 0)
        assert p is not None and p.log.last_stable_offset == 0
        ended = txn.end_txn_v2("v2", r.producer_id, MAX_EPOCH - 1, True)
        assert ended.error == 0
        assert ended.producer_id != r.producer_id and ended.producer_epoch == 0
        # the marker went out under the old id with the bumped epoch
        (state,) = [s for s in p.log.active_producers() if s.producer_id == r.producer_id]
        assert (state.producer_epoch, state.current_txn_start_offset) == (MAX_EPOCH, -1)
        assert p.log.last_stable_offset == p.log.log_end_offset
        meta = txn.txns["v2"]
        assert (meta.producer_id, meta.producer_epoch, meta.last_producer_id) == (
            ended.producer_id,
            0,
            r.producer_id,
        )
        assert meta.is_v2 and meta.next_producer_id == -1
    finally:
        await broker.stop()

    broker = await start(tmp_path)
    try:
        txn = broker.txn
        # the answer was lost: the retry under the old id gets the same answer
        assert txn.end_txn_v2("v2", r.producer_id, MAX_EPOCH - 1, True) == ended
        assert txn.end_txn_v2("v2", r.producer_id, MAX_EPOCH - 1, False).error == (
            E.INVALID_TXN_STATE
        )
        # the v2 producer's next transaction adds its partition by producing
        codes = await txn.verify_produce_async("v2", ended.producer_id, 0, [("data", 0)])
        assert codes == {("data", 0): 0}
        assert txn.txns["v2"].partitions == {("data", 0)}
    finally:
        await broker.stop()


async def test_a_deleted_group_is_not_brought_back_by_its_open_transactions_commit(tmp_path):
    """DeleteGroups tombstones the offsets an open transaction holds for the group too (as
    Kafka's coordinator does): the transaction's COMMIT afterwards brings nothing back, in
    memory or when the log is replayed. OffsetDelete of such a partition alike."""
    broker = await start(tmp_path)
    try:
        r = await open_transaction(broker, "tx")
        for group in ("gone", "trimmed"):
            assert broker.txn.add_offsets("tx", r.producer_id, r.producer_epoch, group) == 0
            assert broker.groups.txn_commit_offsets(
                transactional_id="tx",
                group_id=group,
                producer_id=r.producer_id,
                producer_epoch=r.producer_epoch,
                generation_id=-1,
                member_id="",
                group_instance_id=None,
                offsets={("data", 0): OffsetCommit(1)},
            ) == {("data", 0): 0}
        assert await broker.groups.delete_groups(["gone"]) == {"gone": 0}
        code, result = await broker.groups.delete_offsets("trimmed", [("data", 0)])
        assert (code, result) == (0, {("data", 0): 0})
        assert broker.txn.end_txn("tx", r.producer_id, r.producer_epoch, True) == 0
        for group in ("gone", "trimmed"):
            _, fetched = broker.groups.fetch_offsets(group, [("data", 0)], require_stable=True)
            assert (fetched[0].offset, fetched[0].error) == (-1, 0), group
    finally:
        await broker.stop()

    broker = await start(tmp_path)
    try:
        for group in ("gone", "trimmed"):
            _, fetched = broker.groups.fetch_offsets(group, [("data", 0)], require_stable=True)
            assert (fetched[0].offset, fetched[0].error) == (-1, 0), group
        assert "gone" not in broker.groups.groups
    finally:
        await broker.stop()
