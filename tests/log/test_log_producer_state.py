"""Idempotent and transactional producers.

Covers: retried batches answered with their original offsets and not rewritten (the
last five); sequence gaps (45); old epochs (47); a new epoch restarting at 0; unknown
producers; int32 wraparound; a duplicate mixed with new batches (46); transactions
bounding the last stable offset; COMMIT/ABORT markers; the aborted-transaction index and
its read_committed lookup; non-transactional writes inside a transaction (48); coordinator
fencing (52); coordinator appends checked for epochs but not sequences; the
active-producers snapshot; state kept across clean and unclean restarts; producer id
expiry.
"""

from __future__ import annotations

import os

import pytest

from shazamq.broker.log import (
    AppendOrigin,
    DuplicateSequenceError,
    InvalidProducerEpochError,
    InvalidTxnStateError,
    OutOfOrderSequenceError,
    PartitionLog,
    TransactionCoordinatorFencedError,
)
from shazamq.protocol import records as r


def crash(log: PartitionLog) -> None:
    for seg in log.segments:
        seg.close(discard_pending=True)
    log._closed = True


def idem(mk_batch, n: int, seq: int, *, pid: int = 7, epoch: int = 0, **kw: object) -> bytes:
    return mk_batch(n, producer_id=pid, producer_epoch=epoch, base_sequence=seq, **kw)


def marker(log: PartitionLog, commit: bool, pid: int, epoch: int = 0, coord: int = 0):
    return log.append(
        r.build_control_batch(commit, pid, epoch, coord, 0), origin=AppendOrigin.COORDINATOR
    )


def test_retries_are_answered_with_original_offsets(open_log, mk_batch) -> None:
    log = open_log()
    infos = [log.append(idem(mk_batch, 2, seq)) for seq in range(0, 14, 2)]
    end = log.log_end_offset
    for back in range(1, 6):  # the last five batches are remembered
        seq = 14 - 2 * back
        info = log.append(idem(mk_batch, 2, seq))
        original = infos[seq // 2]
        assert info.duplicate
        assert (info.base_offset, info.last_offset) == (original.base_offset, original.last_offset)
    assert log.log_end_offset == end
    with pytest.raises(OutOfOrderSequenceError):  # the sixth one back is forgotten
        log.append(idem(mk_batch, 2, 2))


def test_sequence_gap_and_epochs(open_log, mk_batch) -> None:
    log = open_log()
    log.append(idem(mk_batch, 1, 0))
    with pytest.raises(OutOfOrderSequenceError) as gap:
        log.append(idem(mk_batch, 1, 2))
    assert gap.value.error_code == 45
    log.append(idem(mk_batch, 1, 1))
    with pytest.raises(OutOfOrderSequenceError):  # a new epoch must start at 0
        log.append(idem(mk_batch, 1, 2, epoch=1))
    log.append(idem(mk_batch, 1, 0, epoch=1))
    with pytest.raises(InvalidProducerEpochError) as old:
        log.append(idem(mk_batch, 1, 2, epoch=0))
    assert old.value.error_code == 47
    # an unknown producer may start anywhere (its state may have expired)
    log.append(idem(mk_batch, 1, 500, pid=99))
    assert log.log_end_offset == 4


def test_sequence_wraps(open_log, mk_batch) -> None:
    log = open_log()
    log.append(idem(mk_batch, 2, 2**31 - 2))
    log.append(idem(mk_batch, 2, 0))
    with pytest.raises(OutOfOrderSequenceError):
        log.append(idem(mk_batch, 1, 5))


def test_duplicate_mixed_with_new_batches(open_log, mk_batch) -> None:
    log = open_log()
    log.append(idem(mk_batch, 1, 0))
    with pytest.raises(DuplicateSequenceError) as info:
        log.append(idem(mk_batch, 1, 0) + idem(mk_batch, 1, 1))
    assert info.value.error_code == 46
    # a fresh multi-batch payload from one producer is checked batch after batch
    log.append(idem(mk_batch, 1, 1) + idem(mk_batch, 2, 2))
    with pytest.raises(OutOfOrderSequenceError):
        log.append(idem(mk_batch, 1, 4) + idem(mk_batch, 1, 6))
    assert log.log_end_offset == 4
    assert log.producer_state.entries[7].last_seq == 3


def test_transactions_bound_the_last_stable_offset(open_log, mk_batch) -> None:
    log = open_log()
    log.append(mk_batch(2))
    t1 = log.append(idem(mk_batch, 2, 0, pid=1, transactional=True))
    log.append(mk_batch(1))
    t2 = log.append(idem(mk_batch, 1, 0, pid=2, transactional=True))
    assert log.last_stable_offset == t1.base_offset == 2
    committed = log.read(0, 10**6, upper_bound=log.last_stable_offset)
    assert [h.base_offset for _p, h in r.iter_batches(committed)] == [0]
    log.append(idem(mk_batch, 1, 2, pid=1, transactional=True))
    abort = marker(log, False, 1)
    assert log.last_stable_offset == t2.base_offset
    commit = marker(log, True, 2)
    assert log.last_stable_offset == log.high_watermark == log.log_end_offset
    assert log.aborted_transactions(0, log.last_stable_offset) == [(1, t1.base_offset)]
    assert log.aborted_transactions(abort.base_offset + 1, 100) == []
    assert log.aborted_transactions(0, t1.base_offset) == []
    seg = log.active_segment
    assert os.path.getsize(seg.txn_index.path) == 34
    (entry,) = seg.txn_index.entries
    assert (entry.producer_id, entry.first_offset, entry.last_offset) == (1, 2, abort.base_offset)
    assert entry.last_stable_offset == t2.base_offset
    assert commit.base_offset == abort.base_offset + 1


def test_transaction_rules(open_log, mk_batch) -> None:
    log = open_log()
    log.append(idem(mk_batch, 1, 0, pid=1, transactional=True))
    with pytest.raises(InvalidTxnStateError) as info:
        log.append(idem(mk_batch, 1, 1, pid=1))
    assert info.value.error_code == 48
    marker(log, True, 1, coord=5)
    with pytest.raises(TransactionCoordinatorFencedError) as fenced:
        marker(log, True, 1, coord=4)
    assert fenced.value.error_code == 52
    # a marker with a bumped epoch (coordinator fencing a producer) resets sequences
    marker(log, False, 1, epoch=1, coord=5)
    log.append(idem(mk_batch, 1, 0, pid=1, epoch=1, transactional=True))
    with pytest.raises(InvalidProducerEpochError):
        log.append(idem(mk_batch, 1, 1, pid=1, epoch=0, transactional=True))


def test_coordinator_data_batches_skip_sequence_checks(open_log, mk_batch) -> None:
    log = open_log()
    coordinator = AppendOrigin.COORDINATOR
    # transactional offset commits: every batch at sequence 0, none taken for a retry
    first = log.append(idem(mk_batch, 2, 0, pid=9, transactional=True), origin=coordinator)
    second = log.append(idem(mk_batch, 1, 0, pid=9, transactional=True), origin=coordinator)
    assert not second.duplicate and second.base_offset == first.last_offset + 1
    log.append(idem(mk_batch, 1, 41, pid=9, transactional=True), origin=coordinator)
    # the producer epoch and the transaction rules are still enforced
    marker(log, True, 9, epoch=1)
    with pytest.raises(InvalidProducerEpochError):
        log.append(idem(mk_batch, 1, 0, pid=9, transactional=True), origin=coordinator)
    log.append(idem(mk_batch, 1, 0, pid=9, epoch=1, transactional=True), origin=coordinator)
    with pytest.raises(InvalidTxnStateError):
        log.append(idem(mk_batch, 1, 0, pid=9, epoch=1), origin=coordinator)
    # a client append is still checked for sequences and duplicates
    log.append(idem(mk_batch, 1, 0, pid=10))
    assert log.append(idem(mk_batch, 1, 0, pid=10)).duplicate
    with pytest.raises(OutOfOrderSequenceError):
        log.append(idem(mk_batch, 1, 5, pid=10))


def test_active_producers_is_a_snapshot(open_log, mk_batch) -> None:
    log = open_log()
    assert log.active_producers() == []
    log.append(idem(mk_batch, 3, 0, pid=12), now_ms=5_000)
    t = log.append(idem(mk_batch, 1, 0, pid=11, epoch=2, transactional=True), now_ms=6_000)
    log.append(
        r.build_control_batch(False, 12, 0, 3, 0), now_ms=7_000, origin=AppendOrigin.COORDINATOR
    )
    snapshot = log.active_producers()
    assert snapshot == [
        (11, 2, 0, 6_000, -1, t.base_offset),
        (12, 0, 2, 7_000, 3, -1),
    ]
    assert snapshot[0].current_txn_start_offset == t.base_offset
    marker(log, True, 11, epoch=2)
    assert snapshot[0].current_txn_start_offset == t.base_offset  # a copy, not a view
    assert log.active_producers()[0].current_txn_start_offset == -1


def test_state_survives_clean_and_unclean_restarts(open_log, mk_batch) -> None:
    log = open_log()
    for seq in range(0, 60, 2):
        log.append(idem(mk_batch, 2, seq, value=b"p" * 50))
    t = log.append(idem(mk_batch, 1, 0, pid=3, transactional=True))
    assert len(log.segments) > 1
    log.close()
    again = open_log()
    assert again.last_stable_offset == t.base_offset
    dup = again.append(idem(mk_batch, 2, 58, value=b"p" * 50))
    assert dup.duplicate and dup.base_offset == 58
    abort = marker(again, False, 3)
    again.append(idem(mk_batch, 2, 60))
    crash(again)
    third = open_log()
    assert not third.had_clean_shutdown
    assert third.last_stable_offset == third.log_end_offset
    assert third.aborted_transactions(0, third.log_end_offset) == [(3, t.base_offset)]
    (entry,) = third.active_segment.txn_index.entries
    assert entry.last_offset == abort.base_offset
    assert third.append(idem(mk_batch, 2, 60)).duplicate
    with pytest.raises(OutOfOrderSequenceError):
        third.append(idem(mk_batch, 1, 63))


def test_recovery_rebuilds_aborted_index_of_recovered_segments(open_log, mk_batch) -> None:
    log = open_log()
    t = log.append(idem(mk_batch, 1, 0, pid=4, transactional=True))
    marker(log, False, 4)
    crash(log)
    txn_path = log.active_segment.txn_index.path
    os.remove(txn_path)
    again = open_log()
    assert again.aborted_transactions(0, 10) == [(4, t.base_offset)]
    assert os.path.exists(txn_path)


def test_producer_ids_expire(open_log, mk_batch) -> None:
    log = open_log(producer_id_expiration_ms=1_000)
    log.append(idem(mk_batch, 1, 0, pid=1), now_ms=10_000)
    log.append(idem(mk_batch, 1, 0, pid=2, transactional=True), now_ms=10_000)
    log.append(idem(mk_batch, 1, 0, pid=3), now_ms=10_900)
    assert log.expire_producers(11_500) == 1
    assert set(log.producer_state.entries) == {2, 3}
    log.append(idem(mk_batch, 1, 17, pid=1), now_ms=11_600)  # forgotten: any sequence


def test_producer_state_is_bounded(open_log, mk_batch) -> None:
    """Past the cap the longest idle producers are forgotten (not those in a
    transaction), so memory and the snapshot written at each roll stay bounded."""
    log = open_log()
    producers = log._producers
    producers.max_producers = 50
    log.append(mk_batch(1, producer_id=10_000, producer_epoch=0, base_sequence=0, ts=1))
    log.append(
        mk_batch(1, producer_id=10_001, producer_epoch=0, base_sequence=0, ts=1, transactional=True)
    )
    for pid in range(200):
        log.append(mk_batch(1, producer_id=pid, producer_epoch=0, base_sequence=0, ts=2 + pid))
        assert len(producers.entries) <= 50
    assert 10_000 not in producers.entries  # idle the longest: forgotten
    assert 10_001 in producers.entries  # its transaction is open: kept
    assert 199 in producers.entries
    path = producers.take_snapshot(log.log_end_offset)
    assert os.path.getsize(path) < 50 * 200
