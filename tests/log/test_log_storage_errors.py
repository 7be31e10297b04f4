"""Storage errors under the log become Kafka errors, and never reused offsets.

* A read that meets a segment a retention pass (or DeleteRecords) removed meanwhile is
  OFFSET_OUT_OF_RANGE, not an OSError.
* A write that fails (data or index, ENOSPC) takes the log offline: KAFKA_STORAGE_ERROR
  from then on, the listener is told once, the partial write is cut back, and the log
  reopens (recovered) with exactly the acknowledged records.
"""

from __future__ import annotations

import errno

import pytest

from shazamq.broker.log import LogConfig
from shazamq.broker.log.errors import KafkaStorageError, OffsetOutOfRangeError
from shazamq.broker.log.index import OffsetIndex
from shazamq.broker.log.segment import LogSegment

CFG = LogConfig(segment_bytes=2048, index_interval_bytes=64, segment_index_bytes=4096)


def enospc(*_args: object, **_kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_read_of_a_segment_removed_meanwhile_is_out_of_range(open_log, mk_batch, monkeypatch):
    log = open_log(CFG)
    while len(log.segments) < 3:
        log.append(mk_batch(5, value=b"x" * 50))
    first = log.segments[0]
    cut = log.segments[1].base_offset
    original = LogSegment.locate
    raced = []

    def locate_after_retention(self, *args, **kwargs):
        if self is first and not raced:
            # what the maintenance thread does between a reader taking the segment
            # list and reading the segment: move the start, retire, reap at once
            raced.append(True)
            log.delete_records_before(cut)
            log.reap_deleted(0, force=True)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LogSegment, "locate", locate_after_retention)
    with pytest.raises(OffsetOutOfRangeError):
        log.read(0, 100_000)
    assert raced and log.failed is None
    monkeypatch.setattr(LogSegment, "locate", original)
    assert log.read(cut, 100_000)


def test_failed_index_write_after_the_data_never_reuses_offsets(open_log, mk_batch, monkeypatch):
    log = open_log(CFG)
    told = []
    log.on_failure = lambda plog, reason: told.append(reason)
    acked = [log.append(mk_batch(2)).last_offset for _ in range(3)]
    size = log.segments[-1].size
    monkeypatch.setattr(OffsetIndex, "append", enospc)
    with pytest.raises(KafkaStorageError):
        for _ in range(50):  # until the next index entry is due
            acked.append(log.append(mk_batch(2)).last_offset)
            size = log.segments[-1].size
    monkeypatch.undo()
    assert log.failed is not None and len(told) == 1
    assert log.log_end_offset == acked[-1] + 1
    assert log.segments[-1].size == size  # the failed batch was cut back
    with pytest.raises(KafkaStorageError):  # offline: no offset is handed out again
        log.append(mk_batch(1))
    with pytest.raises(KafkaStorageError):
        log.read(0, 1000)
    log.close()
    reopened = open_log(CFG)
    assert not reopened.had_clean_shutdown
    assert reopened.log_end_offset == acked[-1] + 1
    info = reopened.append(mk_batch(1))
    assert info.base_offset == acked[-1] + 1


def test_enospc_on_the_data_write_takes_the_log_offline(open_log, mk_batch, monkeypatch):
    log = open_log(CFG)
    told = []
    log.on_failure = lambda plog, reason: told.append(reason)
    last = log.append(mk_batch(3)).last_offset
    real_write = __import__("os").write

    def full_after_half(fd, data):  # a partial write, then ENOSPC
        n = real_write(fd, bytes(data)[: len(data) // 2])
        assert n
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("shazamq.broker.log.segment.os.write", full_after_half)
    with pytest.raises(KafkaStorageError, match="No space left"):
        log.append(mk_batch(3))
    monkeypatch.undo()
    assert told and "No space left" in told[0]
    assert log.log_end_offset == last + 1
    log.close()
    reopened = open_log(CFG)
    assert reopened.log_end_offset == last + 1


def test_failed_flush_takes_the_log_offline(open_log, mk_batch, monkeypatch):
    log = open_log(CFG)
    log.append(mk_batch(3))
    monkeypatch.setattr("shazamq.broker.log.segment.os.fsync", enospc)
    with pytest.raises(KafkaStorageError):
        log.flush()
    monkeypatch.undo()
    assert log.failed is not None
    with pytest.raises(KafkaStorageError):
        log.append(mk_batch(1))
