"""Appends and reads on one thread while maintenance (flush, retention, compaction) runs
on another, as the broker does with its executor: nothing is lost or torn.
"""

from __future__ import annotations

import threading
import time

from shazamq.broker.log import LogConfig, LogManager
from shazamq.protocol import records as r


def test_appends_and_reads_during_maintenance(tmp_path) -> None:
    cfg = LogConfig(
        cleanup_policy=("compact",),
        segment_bytes=2048,
        index_interval_bytes=128,
        flush_messages=7,
        min_cleanable_dirty_ratio=0.01,
    )
    mgr = LogManager(str(tmp_path), cfg)
    log = mgr.get_or_create("busy", 0)
    stop = threading.Event()
    failures: list[BaseException] = []

    compactions = 0

    def maintain() -> None:
        nonlocal compactions
        while not stop.is_set():
            report = mgr.run_maintenance()
            compactions += report.logs_compacted
            failures.extend(exc for _tp, exc in report.errors)

    worker = threading.Thread(target=maintain)
    worker.start()
    latest: dict[bytes, tuple[int, bytes]] = {}
    try:
        i = -1
        # at least 1500 appends, and on until the maintenance thread compacted a few
        # times (however the machine schedules the two threads)
        while (i := i + 1) < 1500 or (compactions <= 3 and i < 100_000):
            key = b"k%d" % (i % 20)
            value = b"%d-" % i + b"v" * 30
            data = r.build_batch([r.Record(key=key, value=value)], base_timestamp=i)
            info = log.append(data)
            latest[key] = (info.base_offset, value)
            if i % 10 == 0:
                time.sleep(0.001)  # let the maintenance thread interleave
            if i % 25 == 0:
                got = log.read(log.log_start_offset, 4096)
                for pos, h in r.iter_batches(got):
                    r.validate_batch(got, pos, h, from_client=False)
    finally:
        stop.set()
        worker.join()
    assert not failures
    assert compactions > 3
    mgr.run_maintenance()
    seen: dict[bytes, tuple[int, bytes | None]] = {}
    offset = log.log_start_offset
    previous = -1
    while offset < log.log_end_offset:
        got = log.read(offset, 1 << 20)
        for pos, h in r.iter_batches(got):
            assert h.base_offset > previous
            previous = h.last_offset
            for rec in r.iter_records(got[pos : pos + h.size]):
                assert rec.key is not None
                seen[rec.key] = (h.base_offset + rec.offset_delta, rec.value)
            offset = h.next_offset
    assert seen == latest
    assert log.log_end_offset == i
    assert log.recovery_point > 0
    mgr.close()
    again = LogManager(str(tmp_path), cfg)
    assert again.get("busy", 0).log_end_offset == i
    again.close()


def test_append_never_waits_on_a_flush_fsync(tmp_path, monkeypatch) -> None:
    """Each fsync of a flush is held until the loop thread has appended once more: an
    append that needs a lock held across an fsync makes that fsync give up waiting."""
    import queue

    from shazamq.broker.log import partition_log

    mgr = LogManager(str(tmp_path), LogConfig())
    log = mgr.get_or_create("t", 0)
    batch = r.build_batch([r.Record(key=b"k", value=b"v")])
    log.append(batch)
    log.roll()
    log.append(batch)
    real_fsync = partition_log.os.fsync
    main = threading.get_ident()
    entered: queue.Queue[int] = queue.Queue()
    done: queue.Queue[bool] = queue.Queue()
    answered: list[bool] = []

    def held_fsync(fd: int) -> None:
        if threading.get_ident() != main:
            entered.put(fd)
            try:
                answered.append(done.get(timeout=5))
            except queue.Empty:
                answered.append(False)
        real_fsync(fd)

    monkeypatch.setattr(partition_log.os, "fsync", held_fsync)
    worker = threading.Thread(target=log.flush)
    worker.start()
    while worker.is_alive() or not entered.empty():
        try:
            entered.get(timeout=0.05)
        except queue.Empty:
            continue
        log.append(batch)  # must not wait for the fsync in progress
        done.put(True)
    worker.join()
    assert answered and all(answered)
    assert log.recovery_point >= 2
    mgr.close()
