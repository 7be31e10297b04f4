"""Compaction.

Covers: the latest record per key survives with its offset; the active segment and
anything newer than min.compaction.lag.ms are untouched; tombstones survive the first
cleaning (delete horizon stamped) and vanish after delete.retention.ms; aborted
transactional data is dropped, committed data and markers kept; a producer's emptied
last batch is kept (empty) with its sequence; codecs and producer fields are preserved;
reads that started before a swap still complete; the dirty ratio decides when to clean.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shazamq.broker.log import AppendOrigin, LogCleaner, LogConfig, PartitionLog
from shazamq.broker.log.cleaner import KEY_MAP_ENTRY_OVERHEAD
from shazamq.protocol import records as r

COMPACT = LogConfig(
    cleanup_policy=("compact",),
    segment_bytes=1500,
    index_interval_bytes=200,
    delete_retention_ms=1_000,
    file_delete_delay_ms=0,
)


def put(log: PartitionLog, key: bytes, value: bytes | None, **kw: object):
    data = r.build_batch([r.Record(key=key, value=value)], base_timestamp=1_000, **kw)
    return log.append(data, now_ms=1_000)


def contents(log: PartitionLog) -> list[tuple[int, bytes | None, bytes | None]]:
    """Every (offset, key, value) readable from the log start, in order."""
    out = []
    offset = log.log_start_offset
    while offset < log.log_end_offset:
        data = log.read(offset, 10**6)
        if not data:
            break
        for pos, h in r.iter_batches(data):
            r.validate_batch(data, pos, h, from_client=False)
            if not h.is_control:
                for rec in r.iter_records(data[pos : pos + h.size]):
                    out.append((h.base_offset + rec.offset_delta, rec.key, rec.value))
            offset = h.next_offset
    return out


def test_keeps_the_latest_value_per_key_with_offsets_intact(open_log) -> None:
    log = open_log(COMPACT)
    for i in range(200):
        key = b"key%d" % (i % 7)
        value = b"value-%d-" % i + b"x" * 20
        put(log, key, value, compression=r.COMPRESSION_ZSTD if i % 2 else 0)
    active_base = log.active_segment.base_offset
    before = contents(log)
    stats = LogCleaner().clean(log, now_ms=2_000, force=True)
    assert stats is not None and stats.records_removed > 0
    after = contents(log)
    cleaned = [x for x in after if x[0] < active_base]
    # below the active segment (the cleanable range): the latest record of each key there
    expected_cleaned = {}
    for offset, key, value in before:
        if offset < active_base:
            expected_cleaned[key] = (offset, key, value)
    assert cleaned == sorted(expected_cleaned.values())
    assert [x for x in after if x[0] >= active_base] == [x for x in before if x[0] >= active_base]
    assert log.log_end_offset == 200
    data = log.read(0, 10**6)
    codecs = {h.compression for _p, h in r.iter_batches(data)}
    assert codecs <= {0, r.COMPRESSION_ZSTD}
    # a second pass with nothing new to do changes nothing
    assert LogCleaner().clean(log, now_ms=2_000) is None
    log.close()
    again = open_log(COMPACT)
    assert contents(again) == after
    assert not any(n.endswith((".cleaned", ".swap")) for n in os.listdir(log.directory))


def test_tombstones_live_until_the_delete_horizon(open_log) -> None:
    log = open_log(COMPACT)
    put(log, b"gone", b"old")
    tomb = put(log, b"gone", None)
    put(log, b"kept", b"v")
    for i in range(30):
        put(log, b"filler%d" % i, b"f" * 40)
    cleaner = LogCleaner()
    cleaner.clean(log, now_ms=10_000, force=True)
    records = contents(log)
    assert (tomb.base_offset, b"gone", None) in records
    assert not any(k == b"gone" and v == b"old" for _o, k, v in records)
    data = log.read(tomb.base_offset, 1)
    h = r.parse_header(data)
    assert h.has_delete_horizon and h.base_timestamp == 11_000
    assert r.decode_batch(data)[1][0].timestamp_delta == 1_000 - 11_000  # timestamp kept
    assert not cleaner.needs_cleaning(log, 10_500)
    assert cleaner.needs_cleaning(log, 11_000)
    cleaner.clean(log, now_ms=11_000)
    records = contents(log)
    assert not any(k == b"gone" for _o, k, _v in records)
    assert (2, b"kept", b"v") in records


def test_transactions_aborted_data_dropped_markers_kept(open_log) -> None:
    log = open_log(COMPACT)

    def txn(pid: int, seq: int, key: bytes) -> int:
        data = r.build_batch(
            [r.Record(key=key, value=b"t" + key)],
            producer_id=pid,
            producer_epoch=0,
            base_sequence=seq,
            transactional=True,
        )
        return log.append(data).base_offset

    def end(pid: int, commit: bool) -> int:
        data = r.build_control_batch(commit, pid, 0, 0, 1_000)
        return log.append(data, origin=AppendOrigin.COORDINATOR).base_offset

    aborted_at = txn(1, 0, b"a")
    abort_marker = end(1, False)
    committed_at = txn(2, 0, b"c")
    commit_marker = end(2, True)
    for i in range(40):
        put(log, b"filler%d" % i, b"f" * 40)
    LogCleaner().clean(log, now_ms=5_000, force=True)
    records = contents(log)
    assert not any(o == aborted_at for o, _k, _v in records)
    assert (committed_at, b"c", b"tc") in records
    data = log.read(0, 10**6)
    controls = {h.base_offset: h for _p, h in r.iter_batches(data) if h.is_control}
    assert commit_marker in controls  # its transaction still has data
    assert abort_marker in controls and controls[abort_marker].has_delete_horizon
    assert log.aborted_transactions(0, log.last_stable_offset) == [(1, aborted_at)]
    LogCleaner().clean(log, now_ms=7_000, force=True)
    data = log.read(0, 10**6)
    controls = {h.base_offset for _p, h in r.iter_batches(data) if h.is_control}
    assert abort_marker not in controls and commit_marker in controls


def test_a_producers_emptied_last_batch_is_kept(open_log) -> None:
    log = open_log(COMPACT)
    idem = r.build_batch(
        [r.Record(offset_delta=i, key=b"dup", value=b"%d" % i) for i in range(3)],
        producer_id=5,
        producer_epoch=2,
        base_sequence=10,
        compression=r.COMPRESSION_GZIP,
    )
    first = log.append(idem)
    put(log, b"dup", b"newer")
    for i in range(40):
        put(log, b"filler%d" % i, b"f" * 40)
    LogCleaner().clean(log, now_ms=5_000, force=True)
    data = log.read(0, 10**6)
    h = r.parse_header(data)
    assert (h.base_offset, h.last_offset, h.records_count) == (0, 2, 0)
    assert (h.producer_id, h.producer_epoch, h.base_sequence) == (5, 2, 10)
    assert h.compression == r.COMPRESSION_GZIP
    assert first.last_offset == 2
    retry = log.append(idem)
    assert retry.duplicate and retry.base_offset == 0


def test_respects_min_compaction_lag_and_dirty_ratio(open_log) -> None:
    cfg = LogConfig(
        cleanup_policy=("compact", "delete"),
        segment_bytes=1500,
        min_compaction_lag_ms=10_000,
        min_cleanable_dirty_ratio=0.5,
    )
    log = open_log(cfg)
    for i in range(60):
        data = r.build_batch([r.Record(key=b"k%d" % (i % 3), value=b"v" * 40)], base_timestamp=i)
        log.append(data)
    cleaner = LogCleaner()
    assert not cleaner.needs_cleaning(log, now_ms=5_000)  # every segment is too young
    assert cleaner.needs_cleaning(log, now_ms=20_000)
    cleaner.clean(log, now_ms=20_000)
    assert not cleaner.needs_cleaning(log, now_ms=20_000)
    assert log.read_cleaner_checkpoint() == log.active_segment.base_offset


def test_reads_started_before_a_swap_complete(open_log) -> None:
    log = open_log(COMPACT)
    for i in range(80):
        put(log, b"k%d" % (i % 3), b"v" * 40)
    pending = log.read_slice(0, 10**6)
    assert pending is not None
    expected = pending.read()
    LogCleaner().clean(log, now_ms=5_000, force=True)
    assert pending.segment.suffix == ".deleted"
    assert pending.read() == expected  # descriptor still open until reaped
    log.reap_deleted(5_000)
    assert not any(n.endswith(".deleted") for n in os.listdir(log.directory))


_records = st.lists(
    st.lists(
        st.tuples(
            st.sampled_from([b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h"]),
            st.one_of(st.none(), st.binary(min_size=0, max_size=40)),
        ),
        min_size=1,
        max_size=4,
    ),
    min_size=1,
    max_size=60,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=_records, budget_keys=st.integers(min_value=1, max_value=5), rounds=st.integers(1, 2)
)
def test_cleaning_in_passes_equals_one_pass(tmp_path_factory, batches, budget_keys, rounds) -> None:
    """A dedupe buffer too small for the dirty section's keys cleans in several passes;
    what remains is exactly what one pass with room for every key leaves."""
    results = []
    passes = []
    for buffer in (1 << 30, budget_keys * (1 + KEY_MAP_ENTRY_OVERHEAD)):
        d = str(tmp_path_factory.mktemp("passes") / "t-0")
        log = PartitionLog.open(d, COMPACT, topic_id=None)
        cleaner = LogCleaner(dedupe_buffer_bytes=buffer)
        try:
            for n in range(rounds):  # a second round dirties an already cleaned log
                for i, batch in enumerate(batches):
                    records = [
                        r.Record(key=k, value=v, offset_delta=j) for j, (k, v) in enumerate(batch)
                    ]
                    log.append(r.build_batch(records, base_timestamp=1_000 + i), now_ms=1_000)
                log.roll()
                stats = cleaner.clean(log, now_ms=2_000 + n, force=True)
                assert stats is not None and stats.aborted_swaps == 0
                passes.append(stats.passes)
            results.append(contents(log))
        finally:
            log.close()
    assert results[0] == results[1]
