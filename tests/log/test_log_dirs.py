"""Several log dirs under one LogManager, and moving a partition between them.

Covers: new partitions placed in the dir with the fewest partitions; every dir loaded at
start; a partition found in two dirs refused with both paths named; an unusable dir
reported offline while the others serve; a move (copy while serving, switch, rename away,
plain name) keeping every record at its offset, with writes between its steps; and what a
restart finds after a stop at each step of the swap.
"""

from __future__ import annotations

import os

import pytest

from shazamq.broker.log import LogConfig, LogManager
from shazamq.broker.log.manager import FUTURE_SUFFIX, LogDirsError
from shazamq.protocol import records as r

CFG = LogConfig(segment_bytes=4096)


def append(log, n: int, tag: bytes = b"v") -> None:
    for i in range(n):
        log.append(r.build_batch([r.Record(key=b"k", value=tag + b"%d" % i)]))


def values(log) -> list[tuple[int, bytes]]:
    data = log.read(log.log_start_offset, 1 << 24)
    out = []
    for pos, h in r.iter_batches(data):
        _h, recs = r.decode_batch(memoryview(data)[pos : pos + h.size])
        out += [(h.base_offset + rec.offset_delta, rec.value) for rec in recs]
    return out


def test_new_partitions_spread_and_every_dir_loads(tmp_path) -> None:
    dirs = [str(tmp_path / "d1"), str(tmp_path / "d2")]
    m = LogManager(dirs[0], CFG, log_dirs=dirs)
    for i in range(5):
        append(m.get_or_create("t", i), 2)
    assert sorted(m.partition_counts().values()) == [2, 3]
    placed = {i: m.dir_of(m.get("t", i)) for i in range(5)}
    m.close()
    again = LogManager(dirs[0], CFG, log_dirs=dirs)
    assert {i: again.dir_of(again.get("t", i)) for i in range(5)} == placed
    assert all(again.get("t", i).log_end_offset == 2 for i in range(5))
    again.close()


def test_a_partition_in_two_dirs_is_refused(tmp_path) -> None:
    dirs = [str(tmp_path / "d1"), str(tmp_path / "d2")]
    m = LogManager(dirs[0], CFG, log_dirs=dirs)
    append(m.get_or_create("t", 0), 1)
    m.close()
    os.makedirs(os.path.join(dirs[1], "t-0"))
    with pytest.raises(LogDirsError) as info:
        LogManager(dirs[0], CFG, log_dirs=dirs)
    assert os.path.join(dirs[0], "t-0") in str(info.value)
    assert os.path.join(dirs[1], "t-0") in str(info.value)


def test_an_unusable_dir_is_offline_and_the_others_serve(tmp_path) -> None:
    bad = tmp_path / "not-a-dir"
    bad.write_bytes(b"")
    dirs = [str(tmp_path / "d1"), str(bad)]
    m = LogManager(dirs[0], CFG, log_dirs=dirs)
    assert list(m.offline_dirs) == [str(bad)]
    for i in range(3):
        assert m.dir_of(m.get_or_create("t", i)) == dirs[0]
    m.close()


def move(m: LogManager, target: str, *, steps: int = 3) -> None:
    """Drive a move the way the broker does, appending between its steps."""
    source = m.get("t", 0)
    future = m.begin_move("t", 0, target)
    while m.copy_to_future(source, future, 1000) >= 1000:  # until a round catches up
        append(source, 3, b"during")
    append(source, 2, b"late")  # left for the switch to copy
    if steps < 2:
        return
    old, new = m.switch_to_future("t", 0, source)
    append(new, 2, b"switched")
    m.retire(old)
    if steps < 3:
        return
    append(m.finish_move("t", 0), 2, b"after")


def test_move_keeps_every_record_at_its_offset(tmp_path) -> None:
    dirs = [str(tmp_path / "d1"), str(tmp_path / "d2")]
    m = LogManager(dirs[0], CFG, log_dirs=dirs)
    log = m.get_or_create("t", 0)
    append(log, 50)
    log.delete_records_before(5)
    src = m.dir_of(log)
    target = next(d for d in dirs if d != src)
    before = values(log)
    move(m, target)
    moved = m.get("t", 0)
    assert m.dir_of(moved) == target and not moved.closed
    after = values(moved)
    assert after[: len(before)] == before and after[0][0] == 5
    assert [o for o, _ in after] == list(range(5, 5 + len(after)))
    assert log.successor is not None  # a stale holder is forwarded
    append(log, 1, b"stale")
    assert values(m.get("t", 0))[-1][1] == b"stale0"
    m.run_maintenance()  # removes the old folder
    assert not os.path.exists(os.path.join(src, "t-0"))
    assert not [n for n in os.listdir(target) if n.endswith(FUTURE_SUFFIX)]
    final = values(m.get("t", 0))
    m.close()
    again = LogManager(dirs[0], CFG, log_dirs=dirs)
    assert again.dir_of(again.get("t", 0)) == target
    assert values(again.get("t", 0)) == final
    again.close()


@pytest.mark.parametrize("steps", [1, 2])
def test_restart_mid_move(tmp_path, steps: int) -> None:
    """Stopped while copying: the copy is dropped, the log stays where it was. Stopped
    after the old folder was renamed away: the copy, complete, becomes the log."""
    dirs = [str(tmp_path / "d1"), str(tmp_path / "d2")]
    m = LogManager(dirs[0], CFG, log_dirs=dirs)
    log = m.get_or_create("t", 0)
    append(log, 30)
    src = m.dir_of(log)
    target = next(d for d in dirs if d != src)
    move(m, target, steps=steps)
    expected = values(m.get("t", 0))
    m.close()  # the future of an unfinished copy is left as a stop would leave it
    again = LogManager(dirs[0], CFG, log_dirs=dirs)
    now = again.get("t", 0)
    assert again.dir_of(now) == (src if steps == 1 else target)
    assert values(now) == expected
    for d in dirs:
        assert not [n for n in os.listdir(d) if n.endswith(FUTURE_SUFFIX)]
    again.close()


def test_creating_partitions_in_one_dir_does_not_walk_every_log(tmp_path, monkeypatch) -> None:
    """Placement counts the partitions of each dir only when there is a choice: with one
    log dir, creating N partitions looks at no existing log (it looked at all of them
    for each new one: O(N^2), minutes for thousands of partitions)."""
    mgr = LogManager(str(tmp_path / "data"), LogConfig())
    looked = 0
    real = LogManager.dir_of

    def counting(self, log):  # type: ignore[no-untyped-def]
        nonlocal looked
        looked += 1
        return real(self, log)

    monkeypatch.setattr(LogManager, "dir_of", counting)
    for i in range(200):
        mgr.get_or_create("t", i)
    assert looked == 0
    assert len(os.listdir(tmp_path / "data")) == 200
    mgr.close()


def test_a_move_under_appends_through_the_writer_keeps_their_order(tmp_path, monkeypatch) -> None:
    """A move while appends keep arriving through the write pool: the switch to the copy
    runs on a writer thread in turn with them, and every append lands once, at the offset
    it was given, in the order it was queued, in the moved log."""
    import asyncio
    import threading
    from types import SimpleNamespace

    from shazamq.broker import log_dir_moves
    from shazamq.broker.log.writer import LogWriter

    dirs = [str(tmp_path / "d1"), str(tmp_path / "d2")]
    m = LogManager(dirs[0], CFG, log_dirs=dirs)
    plog = m.get_or_create("t", 0)
    append(plog, 20, b"before")
    monkeypatch.setattr(log_dir_moves, "COPY_CHUNK", 2048)  # several copy rounds
    switched_on: list[str] = []
    real_switch = LogManager.switch_to_future

    def recording_switch(self, *args):  # type: ignore[no-untyped-def]
        switched_on.append(threading.current_thread().name)
        return real_switch(self, *args)

    monkeypatch.setattr(LogManager, "switch_to_future", recording_switch)
    writer = LogWriter()
    hosted = SimpleNamespace(topic="t", index=0, log=plog)
    partitions = SimpleNamespace(
        logs=m,
        writer=writer,
        offline={},
        get=lambda topic, index: hosted if (topic, index) == ("t", 0) else None,
    )
    mover = log_dir_moves.LogDirMover(partitions)  # type: ignore[arg-type]
    target = dirs[1]

    async def main() -> list[int]:
        assert mover.request("t", 0, target) == 0
        task = mover._moves[("t", 0)][1]
        futures = []
        i = 0
        # appends at a bounded pace (a copy round must be able to catch up), until the
        # move is done or a bound is reached
        while (not task.done() or i < 40) and i < 2000:
            batch = r.build_batch([r.Record(key=b"k", value=b"during%d" % i + b"x" * 100)])
            current = hosted.log
            futures.append(writer.append(current, current.prepare_append(batch, now_ms=1), 0))
            i += 1
            await asyncio.sleep(0.001)
        await task
        infos = await asyncio.gather(*futures)
        await writer.stop()
        return [info.base_offset for info in infos]

    offsets = asyncio.run(main())
    assert offsets == list(range(20, 20 + len(offsets)))
    moved = hosted.log
    assert m.dir_of(moved) == target and not moved.directory.endswith(FUTURE_SUFFIX)
    assert switched_on and switched_on[0].startswith("log-writer")
    got: list[tuple[int, bytes]] = []
    while len(got) < moved.log_end_offset:  # a read stops at a segment's end
        data = moved.read(len(got), 1 << 24)
        for pos, h in r.iter_batches(data):
            _h, recs = r.decode_batch(memoryview(data)[pos : pos + h.size])
            got += [(h.base_offset + rec.offset_delta, rec.value) for rec in recs]
    assert [o for o, _v in got] == list(range(20 + len(offsets)))
    assert [v.split(b"x")[0] for _o, v in got[20:]] == [
        b"during%d" % i for i in range(len(offsets))
    ]
    m.close()
