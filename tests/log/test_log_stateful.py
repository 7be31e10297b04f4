"""A random walk over the log's life, checked against a simple model (hypothesis).

Steps: append (one or several batches, any codec), roll, read at random offsets and
sizes, DeleteRecords, clean restart, unclean restart, unclean restart with a torn tail.
Invariants: offsets are contiguous from the log start, every appended batch is readable
at its offsets with its records, reads start at the batch holding the requested offset,
and a restart loses only what a tear removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from shazamq.broker.log import LogConfig, PartitionLog
from shazamq.protocol import records as r

CFG = LogConfig(segment_bytes=1200, index_interval_bytes=128, segment_index_bytes=96)


def _crash(log: PartitionLog) -> None:
    for seg in log.segments:
        seg.close(discard_pending=True)
        for idx in (seg.offset_index, seg.time_index):
            idx._pending.clear()
    log._closed = True


class LogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="shazamq-log-")
        self.path = os.path.join(self.tmp, "walk-0")
        self.log = PartitionLog.open(self.path, CFG)
        self.batches: dict[int, bytes] = {}  # base offset -> batch bytes as stored
        self.start = 0
        self.end = 0

    def teardown(self) -> None:
        if not self.log.closed:
            self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    @rule(
        sizes=st.lists(st.integers(1, 5), min_size=1, max_size=3),
        value=st.binary(max_size=120),
        codec=st.sampled_from([0, 0, 1, 4]),
    )
    def append(self, sizes: list[int], value: bytes, codec: int) -> None:
        payload = bytearray()
        for n in sizes:
            payload += r.build_batch(
                [r.Record(offset_delta=i, key=b"%d" % i, value=value) for i in range(n)],
                compression=codec,
                base_timestamp=1_000 + self.end,
            )
        info = self.log.append(payload, leader_epoch=1)
        assert info.base_offset == self.end
        for pos, h in r.iter_batches(payload):
            self.batches[h.base_offset] = bytes(payload[pos : pos + h.size])
        self.end = info.last_offset + 1

    @rule()
    def roll(self) -> None:
        self.log.roll()

    @precondition(lambda self: self.end > self.start)
    @rule(data=st.data(), max_bytes=st.integers(1, 3000))
    def read(self, data: st.DataObject, max_bytes: int) -> None:
        offset = data.draw(st.integers(self.start, self.end - 1))
        got = self.log.read(offset, max_bytes)
        found = list(r.iter_batches(got))
        assert found, "at least one batch"
        first = found[0][1]
        assert first.base_offset <= offset <= first.last_offset
        expected_next = first.base_offset
        for pos, h in found:
            assert h.base_offset == expected_next
            assert got[pos : pos + h.size] == self.batches[h.base_offset]
            expected_next = h.next_offset
        assert len(got) <= max_bytes or len(found) == 1

    @precondition(lambda self: self.end > self.start)
    @rule(data=st.data())
    def delete_records(self, data: st.DataObject) -> None:
        offset = data.draw(st.integers(self.start, self.end))
        assert self.log.delete_records_before(offset) == offset
        self.start = offset

    @rule()
    def clean_restart(self) -> None:
        self.log.close()
        self.log = PartitionLog.open(self.path, CFG)
        assert self.log.had_clean_shutdown

    @rule()
    def unclean_restart(self) -> None:
        _crash(self.log)
        self.log = PartitionLog.open(self.path, CFG)

    @precondition(lambda self: self.end > self.start)
    @rule(cut=st.integers(1, 60))
    def torn_restart(self, cut: int) -> None:
        active = self.log.active_segment
        _crash(self.log)
        size = os.path.getsize(active.log_path)
        if size:
            os.truncate(active.log_path, max(0, size - cut))
        self.log = PartitionLog.open(self.path, CFG)
        survivors = {b: d for b, d in self.batches.items() if b < self.log.log_end_offset}
        lost = [b for b in self.batches if b >= self.log.log_end_offset]
        # only the batches of the torn active segment may go
        assert all(b >= active.base_offset for b in lost)
        self.batches = survivors
        self.end = self.log.log_end_offset
        self.start = min(self.start, self.end)
        if self.end == self.start:
            self.batches = {}

    @invariant()
    def offsets_are_contiguous(self) -> None:
        log = self.log
        assert log.log_end_offset == self.end
        assert log.log_start_offset == self.start
        offset = self.start
        while offset < self.end:
            got = log.read(offset, 4096)
            found = list(r.iter_batches(got))
            assert found
            for pos, h in found:
                assert h.base_offset <= offset <= h.last_offset
                assert got[pos : pos + h.size] == self.batches[h.base_offset]
                offset = h.next_offset


LogMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)
test_log_random_walk = LogMachine.TestCase
