"""Appends off the event loop (LogWriter): order, offsets, visibility, and that the slow
parts (the write, segment rolls, producer snapshots, lazy index loads) leave the loop."""

from __future__ import annotations

import asyncio
import threading

from shazamq.broker.log import LogConfig, PartitionLog
from shazamq.broker.log import segment as segment_mod
from shazamq.broker.log.producer_state import ProducerStateManager
from shazamq.broker.log.writer import INLINE_APPEND_BYTES, LogWriter
from shazamq.protocol.records import Record, build_batch, iter_batches

BIG = INLINE_APPEND_BYTES + 1024


def _batch(i: int, size: int, **kwargs: object) -> bytearray:
    value = i.to_bytes(4, "big") + b"x" * max(0, size - 4)
    return bytearray(build_batch([Record(value=value)], base_timestamp=1_000 + i, **kwargs))  # type: ignore[arg-type]


def _values(log: PartitionLog) -> list[int]:
    """The first four bytes of every record value, reading the log from its start."""
    from shazamq.protocol.records import decode_batch

    out: list[int] = []
    offset = log.log_start_offset
    while offset < log.high_watermark:
        data = log.read(offset, 1 << 30, upper_bound=log.high_watermark)
        for pos, h in iter_batches(data):
            _, records = decode_batch(data[pos : pos + h.size])
            out.extend(int.from_bytes(r.value[:4], "big") for r in records)  # type: ignore[index]
            offset = h.base_offset + h.last_offset_delta + 1
    return out


def test_appends_keep_their_order_and_get_each_offset_once(tmp_path) -> None:
    """Small appends (written on the loop when nothing is queued) and large ones (sent to
    the pool) interleaved without waiting: every batch lands in submission order and the
    offsets handed back are 0, 1, 2, ... in that order."""
    log = PartitionLog.open(str(tmp_path / "t-0"), LogConfig(segment_bytes=256 * 1024))
    writer = LogWriter()
    sizes = [BIG if i % 3 == 0 else 100 for i in range(120)]

    async def main() -> list[int]:
        futures = [
            writer.append(log, log.prepare_append(_batch(i, size), now_ms=10_000), 0)
            for i, size in enumerate(sizes)
        ]
        infos = await asyncio.gather(*futures)
        await writer.stop()
        return [info.base_offset for info in infos]

    offsets = asyncio.run(main())
    assert offsets == list(range(len(sizes)))
    assert log.log_end_offset == len(sizes)
    assert _values(log) == list(range(len(sizes)))
    assert len(log.segments) > 1  # rolls happened along the way
    log.close()
    reopened = PartitionLog.open(str(tmp_path / "t-0"), LogConfig(segment_bytes=256 * 1024))
    assert _values(reopened) == list(range(len(sizes)))
    reopened.close()


def test_idempotent_producer_through_the_writer(tmp_path) -> None:
    """Sequences are checked in order on the writer thread: a retried batch gets its
    original offset and is not written twice."""
    log = PartitionLog.open(str(tmp_path / "t-0"), LogConfig())
    writer = LogWriter()

    def batch(seq: int) -> bytearray:
        return bytearray(
            build_batch(
                [Record(value=b"x" * BIG)],
                producer_id=7,
                producer_epoch=0,
                base_sequence=seq,
            )
        )

    async def main() -> list[tuple[int, bool]]:
        futures = [
            writer.append(log, log.prepare_append(batch(seq), now_ms=10_000), 0)
            for seq in (0, 1, 2, 1)
        ]
        infos = await asyncio.gather(*futures)
        await writer.stop()
        return [(i.base_offset, i.duplicate) for i in infos]

    assert asyncio.run(main()) == [(0, False), (1, False), (2, False), (1, True)]
    assert log.log_end_offset == 3
    log.close()


def test_the_loop_runs_while_a_write_is_stuck_and_readers_see_nothing_of_it(
    tmp_path, monkeypatch
) -> None:
    """A write held in the kernel (here: after the bytes are in the file, before the log
    moves its end) does not hold up the loop, and until the append completes neither the
    log end nor a read shows the batch."""
    log = PartitionLog.open(str(tmp_path / "t-0"), LogConfig())
    log.append(_batch(0, 10), now_ms=10_000)  # the first change removes the marker
    writer = LogWriter()
    inside = threading.Event()
    release = threading.Event()
    real_append = segment_mod.LogSegment.append

    def stuck_append(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        real_append(self, *args, **kwargs)
        if threading.current_thread().name.startswith("log-writer"):
            inside.set()
            release.wait(10)

    monkeypatch.setattr(segment_mod.LogSegment, "append", stuck_append)
    seen: dict[str, object] = {}

    async def main() -> None:
        fut = writer.append(log, log.prepare_append(_batch(1, BIG), now_ms=10_000), 0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not inside.is_set() and loop.time() < deadline:  # the loop runs meanwhile
            await asyncio.sleep(0.01)
        seen["stuck on a writer thread"] = inside.is_set()
        seen["end while stuck"] = log.log_end_offset
        seen["hw while stuck"] = log.high_watermark
        seen["read while stuck"] = _values(log)
        seen["ran while stuck"] = await loop.run_in_executor(None, lambda: not release.is_set())
        release.set()
        info = await fut
        seen["offset"] = info.base_offset
        await writer.stop()

    asyncio.run(main())
    assert seen == {
        "stuck on a writer thread": True,
        "end while stuck": 1,
        "hw while stuck": 1,
        "read while stuck": [0],
        "ran while stuck": True,
        "offset": 1,
    }
    assert _values(log) == [0, 1]
    log.close()


def test_rolls_and_producer_snapshots_run_on_the_writer_thread(tmp_path, monkeypatch) -> None:
    log = PartitionLog.open(str(tmp_path / "t-0"), LogConfig(segment_bytes=64 * 1024))
    writer = LogWriter()
    rolled_on: list[str] = []
    snapshot_on: list[str] = []
    real_roll = PartitionLog._roll
    real_snapshot = ProducerStateManager.take_snapshot

    def roll(self, base_offset):  # type: ignore[no-untyped-def]
        rolled_on.append(threading.current_thread().name)
        return real_roll(self, base_offset)

    def snapshot(self, offset, **kwargs):  # type: ignore[no-untyped-def]
        snapshot_on.append(threading.current_thread().name)
        return real_snapshot(self, offset, **kwargs)

    monkeypatch.setattr(PartitionLog, "_roll", roll)
    monkeypatch.setattr(ProducerStateManager, "take_snapshot", snapshot)

    async def main() -> None:
        for i in range(12):
            # small ones too: a small append that would roll is not written on the loop
            size = BIG if i % 2 else 100
            await writer.append(log, log.prepare_append(_batch(i, size), now_ms=10_000), 0)
        await writer.stop()

    asyncio.run(main())
    assert rolled_on and all(n.startswith("log-writer") for n in rolled_on)
    assert snapshot_on and all(n.startswith("log-writer") for n in snapshot_on)
    assert _values(log) == list(range(12))
    log.close()


def test_a_cold_index_is_loaded_by_load_index_not_by_the_read(tmp_path, monkeypatch) -> None:
    """After a restart a sealed segment's index is not in memory; unloaded_segment_for
    names it, load_index (an executor thread) reads it, and the read reads no index."""
    from shazamq.broker.log import index as index_mod

    cfg = LogConfig(segment_bytes=8 * 1024, index_interval_bytes=256)
    log = PartitionLog.open(str(tmp_path / "t-0"), cfg)
    for i in range(40):
        log.append(_batch(i, 700), now_ms=10_000)
    log.close()
    log = PartitionLog.open(str(tmp_path / "t-0"), cfg)
    seg = log.unloaded_segment_for(3)
    assert seg is not None and seg is log.segments[0]
    loads: list[str] = []
    real_load = index_mod._SparseIndex._load

    def load(self):  # type: ignore[no-untyped-def]
        loads.append(threading.current_thread().name)
        return real_load(self)

    monkeypatch.setattr(index_mod._SparseIndex, "_load", load)
    worker = threading.Thread(target=log.load_index, args=(seg,), name="loader")
    worker.start()
    worker.join()
    assert log.unloaded_segment_for(3) is None
    assert loads == ["loader"]
    assert len(log.read(3, 100)) > 0
    assert loads == ["loader"]  # the read found it loaded
    log.close()


def test_a_leaders_append_queued_past_a_role_change_is_refused_not_written(
    tmp_path, monkeypatch
) -> None:
    """A cluster leader's appends carry a leadership check that the writer thread asks
    right before the write: the append already being written when the broker stops
    leading lands (as if written before the change), the one queued behind it is refused
    with NOT_LEADER_OR_FOLLOWER and leaves nothing in the log."""
    from shazamq.broker.cluster.replica import ReplicaRole
    from shazamq.broker.log.errors import NotLeaderError

    log = PartitionLog.open(str(tmp_path / "t-0"), LogConfig())
    log.append(_batch(0, 10), now_ms=10_000, leader_epoch=3)
    role = ReplicaRole(
        broker_id=1, topic_id="t", replicas=[1, 2], isr=[1, 2], leader=1, leader_epoch=3,
        partition_epoch=0,
    )  # fmt: skip
    writer = LogWriter()
    inside = threading.Event()
    release = threading.Event()
    real_append = segment_mod.LogSegment.append

    def stuck_append(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        real_append(self, *args, **kwargs)
        if threading.current_thread().name.startswith("log-writer") and not inside.is_set():
            inside.set()
            release.wait(10)

    monkeypatch.setattr(segment_mod.LogSegment, "append", stuck_append)
    outcome: list[object] = []

    async def main() -> None:
        def queue(i: int) -> asyncio.Future:  # type: ignore[type-arg]
            prepared = log.prepare_append(_batch(i, BIG), now_ms=10_000)
            return writer.append(log, prepared, 3, still_leads=lambda: role.leads_at(3))

        first = queue(1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not inside.is_set() and loop.time() < deadline:
            await asyncio.sleep(0.01)
        second = queue(2)
        role.leader, role.leader_epoch = 2, 4  # broker 2 leads now (metadata applied)
        release.set()
        for fut in (first, second):
            try:
                outcome.append((await fut).base_offset)
            except NotLeaderError as exc:
                outcome.append(exc.error_code)
        await writer.stop()

    asyncio.run(main())
    assert outcome == [1, 6]  # offset 1 written; the second refused, NOT_LEADER_OR_FOLLOWER
    assert log.log_end_offset == 2
    assert _values(log) == [0, 1]
    assert log.latest_epoch == 3
    log.close()
