"""Compaction of ``__consumer_offsets`` against what the group coordinator reloads.

Unit level: an :class:`OffsetsStore` over one real compacted partition log with tiny
segments, cleaned by force. Covers: a reload after compaction (and after a restart of the
compacted log) restores exactly the committed offsets, group metadata and still-open
transactional offsets it restored before; aborted transactional commits are gone from
the log while the aborted ranges stay indexed; COMMIT markers of transactions whose
offsets survive are kept, markers left without data and tombstones go once the delete
horizon passed; a producer's later transaction after an aborted one, a plain commit
superseding a transactional one, and a deleted group all reload as before.
"""

from __future__ import annotations

import time
from pathlib import Path

from shazamq.broker.groups.group import CommittedOffset
from shazamq.broker.groups.internal_topic import run_now
from shazamq.broker.groups.offsets_codec import GroupMetadataValue
from shazamq.broker.groups.offsets_store import LoadedPartition, OffsetsStore
from shazamq.broker.log import AppendOrigin, LogCleaner, LogConfig, PartitionLog
from shazamq.config import GroupsConfig
from shazamq.protocol import records as r

RETENTION_MS = 1_000
COMPACT = LogConfig(
    cleanup_policy=("compact",),
    segment_bytes=1024,
    index_interval_bytes=200,
    delete_retention_ms=RETENTION_MS,
    file_delete_delay_ms=0,
)


class _Hosted:
    """What the store needs of a hosted partition."""

    def __init__(self, log: PartitionLog) -> None:
        self.log = log
        self.leader_epoch = 0

    def notify(self) -> None:
        pass


class _Partitions:
    def __init__(self, log: PartitionLog) -> None:
        self.hosted = _Hosted(log)

    def get(self, topic: str, index: int) -> _Hosted | None:
        return self.hosted if (topic, index) == ("__consumer_offsets", 0) else None


def store_over(log: PartitionLog) -> OffsetsStore:
    return OffsetsStore(_Partitions(log), GroupsConfig(offsets_topic_num_partitions=1))  # type: ignore[arg-type]


def commit(store: OffsetsStore, group: str, offsets: dict, pid: int = -1) -> list[int]:
    """Commit ``{(topic, partition): offset}``; returns the records' offsets in the log."""
    now = int(time.time() * 1000)
    committed = {tp: CommittedOffset(o, "m", now) for tp, o in offsets.items()}
    run_now(
        store.write_offsets(group, committed, producer_id=pid, producer_epoch=0 if pid >= 0 else -1)
    )
    return [c.record_offset for c in committed.values()]


def end_txn(log: PartitionLog, pid: int, commit: bool) -> int:
    batch = r.build_control_batch(commit, pid, 0, 0, int(time.time() * 1000))
    return log.append(bytearray(batch), origin=AppendOrigin.COORDINATOR).base_offset


def summary(loaded: LoadedPartition) -> tuple[dict, dict, dict]:
    offsets = {
        g: {tp: (c.offset, c.record_offset) for tp, c in tps.items()}
        for g, tps in loaded.offsets.items()
    }
    pending = {
        pid: {g: {tp: c.offset for tp, c in tps.items()} for g, tps in per_group.items()}
        for pid, per_group in loaded.pending.items()
    }
    return offsets, dict(loaded.groups), pending


def batches(log: PartitionLog) -> list[tuple[r.BatchHeader, list[r.Record]]]:
    out = []
    offset = log.log_start_offset
    while offset < log.log_end_offset:
        data = log.read(offset, 10**7)  # one segment at a time
        for pos, h in r.iter_batches(data):
            recs = [] if h.is_control else list(r.iter_records(data[pos : pos + h.size]))
            out.append((h, recs))
            offset = h.next_offset
    return out


def test_reload_after_compaction_restores_the_same_offsets(tmp_path: Path) -> None:
    path = str(tmp_path / "__consumer_offsets-0")
    log = PartitionLog.open(path, COMPACT)
    store = store_over(log)
    t = "orders"
    # plain commits, superseded again and again
    for i in range(5):
        commit(store, "g", {(t, 0): i, (t, 1): 100 + i})
    store.write_group("g", GroupMetadataValue("consumer", 3, "range", "m-1", 1_000))
    # producer 1000 commits, producer 1001 aborts
    commit(store, "g", {(t, 2): 5}, pid=1000)
    aborted = commit(store, "g", {(t, 2): 99, (t, 3): 99}, pid=1001)
    commit_1000 = end_txn(log, 1000, True)
    abort_1001 = end_txn(log, 1001, False)
    # producer 1002's transactional commit is superseded by a plain commit before its marker
    superseded = commit(store, "g", {(t, 4): 7}, pid=1002)
    commit(store, "g", {(t, 4): 8})
    commit_1002 = end_txn(log, 1002, True)
    # producer 1003 commits, then aborts a second transaction on the same partition
    commit(store, "g2", {(t, 0): 11}, pid=1003)
    commit_1003 = end_txn(log, 1003, True)
    aborted += commit(store, "g2", {(t, 0): 12}, pid=1003)
    end_txn(log, 1003, False)
    # a group deleted with its offsets
    commit(store, "gone", {(t, 0): 1})
    store.write_group("gone", GroupMetadataValue("consumer", 1, "range", "m-9", 1_000))
    store.delete_group("gone", [(t, 0)])
    for i in range(30):  # fill segments so everything above is cleanable
        commit(store, "filler", {(t, i % 6): i})
    # a transaction still open at the end: its offsets stay pending
    commit(store, "g3", {(t, 5): 42}, pid=1004)
    commit(store, "filler", {(t, 0): 1_000})
    assert len(log.segments) > 5

    before = summary(store.load_partition(0))
    offsets, groups, pending = before
    assert {tp: o for tp, (o, _at) in offsets["g"].items()} == {
        (t, 0): 4,
        (t, 1): 104,
        (t, 2): 5,
        (t, 4): 8,
    }
    assert offsets["g2"][(t, 0)][0] == 11
    assert "gone" not in offsets and "gone" not in groups and "g" in groups
    assert pending == {1004: {"g3": {(t, 5): 42}}}
    lso = log.last_stable_offset
    aborted_ranges = log.aborted_transactions(0, lso)
    assert {pid for pid, _first in aborted_ranges} == {1001, 1003}
    size_before = log.size_bytes
    written = {h.base_offset + rec.offset_delta for h, recs in batches(log) for rec in recs}
    assert set(aborted) | set(superseded) <= written

    now = int(time.time() * 1000)
    cleaner = LogCleaner()
    stats = cleaner.clean(log, now_ms=now, force=True)
    assert stats is not None and stats.records_removed > 0
    assert log.size_bytes < size_before
    assert summary(store.load_partition(0)) == before

    kept = batches(log)
    offsets_kept = {h.base_offset + rec.offset_delta for h, recs in kept for rec in recs}
    assert not offsets_kept & set(aborted)  # aborted transactional commits dropped
    assert not offsets_kept & set(superseded)
    controls = {h.base_offset for h, _recs in kept if h.is_control}
    assert {commit_1000, commit_1003} <= controls  # their transactions still have data
    assert log.aborted_transactions(0, lso) == aborted_ranges
    assert log.last_stable_offset == lso

    # past the delete horizon: tombstones and markers without data go, nothing else changes
    cleaner.clean(log, now_ms=now + 5 * RETENTION_MS, force=True)
    assert summary(store.load_partition(0)) == before
    kept = batches(log)
    keys = [rec.key for _h, recs in kept for rec in recs]
    assert not any(b"gone" in (k or b"") for k in keys)
    assert all(rec.value is not None for h, recs in kept for rec in recs if h.last_offset < lso)
    controls = {h.base_offset for h, _recs in kept if h.is_control}
    assert {commit_1000, commit_1003} <= controls
    assert not {abort_1001, commit_1002} & controls

    # and a restart of the compacted log reloads the same state
    log.close()
    log = PartitionLog.open(path, COMPACT)
    try:
        assert summary(store_over(log).load_partition(0)) == before
        assert log.last_stable_offset == lso
        # the open transaction can still be committed and its offsets then apply
        end_txn(log, 1004, True)
        offsets, _groups, pending = summary(store_over(log).load_partition(0))
        assert pending == {} and offsets["g3"][(t, 5)][0] == 42
    finally:
        log.close()
