"""The appends besides clients' go through the write pool too: the coordinators' internal
topics, transaction markers, a follower's fetched batches and a mirror's copied ones.

For each caller, over a real partition log: an append that is not small and light (a
batch above the inline limit, a roll, the first append after opening) runs on a writer
thread, never on the loop's; appends issued back to back without waiting (randomized
sizes and counts, seeded) land in the order they were issued, at the offsets asserted;
what the caller does after the write (the high watermark, a reload, the log end the next
fetch starts from) sees the write.
"""

from __future__ import annotations

import asyncio
import random
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from shazamq.broker.cluster.fetcher import FETCH, ReplicaFetcher, _Entry
from shazamq.broker.groups.internal_topic import InternalTopic, landed, run_now
from shazamq.broker.log import LogConfig, PartitionLog
from shazamq.broker.log.partition_log import AppendOrigin
from shazamq.broker.log.writer import INLINE_APPEND_BYTES, LogWriter
from shazamq.broker.txn.coordinator import TransactionCoordinator
from shazamq.mirror.copier import Copy, FetchSession
from shazamq.mirror.stats import PartitionStats
from shazamq.protocol.records import (
    ATTR_CONTROL,
    Record,
    build_batch,
    decode_batch,
    iter_batches,
)

BIG = INLINE_APPEND_BYTES + 512
SEEDS = [1, 2, 3]


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, AppendOrigin, bool]]:
    """Every locked append: (thread name, payload size, origin, whether a control batch)."""
    seen: list[tuple[str, int, AppendOrigin, bool]] = []
    real = PartitionLog.append_prepared

    def recording(self: PartitionLog, prepared: Any, *, leader_epoch: int = -1) -> Any:
        control = any(h.attributes & ATTR_CONTROL for _p, h in prepared.batches)
        seen.append((threading.current_thread().name, len(prepared.data), prepared.origin, control))
        return real(self, prepared, leader_epoch=leader_epoch)

    monkeypatch.setattr(PartitionLog, "append_prepared", recording)
    return seen


def _values(log: PartitionLog) -> list[int]:
    """The first four bytes of every data record's value, from the log start."""
    out: list[int] = []
    offset = log.log_start_offset
    while offset < log.log_end_offset:
        data = log.read(offset, 1 << 30, upper_bound=log.log_end_offset)
        for pos, h in iter_batches(data):
            offset = h.next_offset
            if h.attributes & ATTR_CONTROL:
                continue
            _, records = decode_batch(data[pos : pos + h.size])
            out.extend(int.from_bytes(r.value[:4], "big") for r in records)  # type: ignore[index]
    return out


def _value(i: int, size: int) -> bytes:
    return i.to_bytes(4, "big") + b"v" * max(0, size - 4)


class _Hosted:
    """What the callers need of a hosted partition."""

    def __init__(self, topic: str, index: int, log: PartitionLog) -> None:
        self.topic = topic
        self.index = index
        self.log = log
        self.leader_epoch = 0
        self.replica = None
        self.notified = 0

    def notify(self) -> None:
        self.notified += 1


class _Partitions:
    def __init__(self, writer: LogWriter | None, *hosted: _Hosted) -> None:
        self.writer = writer
        self.cluster = None
        self._hosted = {(h.topic, h.index): h for h in hosted}

    def get(self, topic: str, index: int) -> _Hosted | None:
        return self._hosted.get((topic, index))


def _open(
    tmp_path: Any, name: str, segment_bytes: int = 64 * 1024, *, compact: bool = False
) -> PartitionLog:
    policy = ("compact",) if compact else ("delete",)
    return PartitionLog.open(
        str(tmp_path / name), LogConfig(segment_bytes=segment_bytes, cleanup_policy=policy)
    )


# -- coordinators: __consumer_offsets, __transaction_state, __share_group_state ----------


@pytest.mark.parametrize("seed", SEEDS)
def test_internal_topic_appends_leave_the_loop_in_order(tmp_path, threads, seed: int) -> None:
    """The coordinators' appends (InternalTopic.append, as the offsets, transaction and
    share state stores make them): queued back to back, some large, with segment rolls
    on the way; each lands where its issue order says, the large ones and the rolls on
    a writer thread, and ``landed`` gives the offsets only once they are in the log."""
    rng = random.Random(seed)
    log = _open(tmp_path, "__consumer_offsets-0", compact=True)
    writer = LogWriter()
    hosted = _Hosted("__consumer_offsets", 0, log)
    topic = InternalTopic(_Partitions(writer, hosted), "__consumer_offsets", 1, {})  # type: ignore[arg-type]
    counts = [rng.randint(1, 3) for _ in range(rng.randint(20, 40))]
    sizes = [rng.choice((40, 200, BIG)) for _ in counts]
    loop_thread: list[str] = []

    async def main() -> list[tuple[int, int]]:
        loop_thread.append(threading.current_thread().name)
        landings = []
        value = 0
        for n, size in zip(counts, sizes, strict=True):
            records = []
            for _ in range(n):
                records.append((b"k%d" % value, _value(value, size // n)))
                value += 1
            landings.append(topic.append(0, records))  # no await between them
        out = []
        for landing in landings:
            appended = await landed(landing)
            assert appended is not None
            # written before the caller hears where: the log holds it
            assert log.log_end_offset >= appended.next_offset
            out.append((appended.base_offset, appended.next_offset))
        await writer.stop()
        return out

    placed = asyncio.run(main())
    expected = []
    offset = 0
    for n in counts:
        expected.append((offset, offset + n))
        offset += n
    assert placed == expected
    assert _values(log) == list(range(offset))
    assert len(log.segments) > 1  # rolls happened
    assert hosted.notified == len(counts)
    big = [t for t, size, _o, _c in threads if size >= INLINE_APPEND_BYTES]
    assert big and all(t.startswith("log-writer") for t in big)
    assert loop_thread[0] not in big
    log.close()


def test_a_coroutine_awaits_the_write_before_it_goes_on(tmp_path, threads) -> None:
    """A coordinator's write path (``await landed(append(...))``, then memory) resumes
    only after a write sent to a writer thread is in; under run_now the same path is
    written on the calling thread and completes in one step."""
    log = _open(tmp_path, "__transaction_state-0", compact=True)
    writer = LogWriter()
    hosted = _Hosted("__transaction_state", 0, log)
    topic = InternalTopic(_Partitions(writer, hosted), "__transaction_state", 1, {})  # type: ignore[arg-type]
    memory: list[tuple[int, int]] = []

    async def write_then_apply(i: int, size: int) -> int:
        appended = await landed(topic.append(0, [(b"t%d" % i, _value(i, size))]))
        assert appended is not None
        memory.append((i, log.log_end_offset))  # applied with the write in the log
        return appended.base_offset

    async def main() -> tuple[list[int], int]:
        # the first append after opening removes the clean-shutdown marker: a writer job
        offsets = await asyncio.gather(*(write_then_apply(i, BIG) for i in range(6)))
        await writer.drain()
        inline = run_now(write_then_apply(6, 50))
        await writer.stop()
        return list(offsets), inline

    offsets, inline = asyncio.run(main())
    assert offsets == list(range(6)) and inline == 6
    # each applied to memory once its own record was in the log
    assert [i for i, _end in memory] == list(range(7))
    assert all(end >= i + 1 for i, end in memory)
    assert [t.startswith("log-writer") for t, *_ in threads] == [True] * 6 + [False]
    log.close()


def test_a_coordinator_append_whose_turn_comes_after_a_leadership_change_is_not_written(
    tmp_path, monkeypatch
) -> None:
    """In a cluster a coordinator's append carries the writer thread's leadership fence,
    as a client's produce does: appends queued while this broker led the partition at
    epoch 5, whose turn comes after the epoch moved (or the leader changed), are refused
    (NOT_LEADER_OR_FOLLOWER, which the coordinators answer NOT_COORDINATOR) and never
    written; the one already being written when it moved stays."""
    from shazamq.broker.cluster.replica import ReplicaRole
    from shazamq.broker.groups.internal_topic import replicated
    from shazamq.broker.groups.offsets_store import append_error_code
    from shazamq.broker.log.errors import NotLeaderError
    from shazamq.broker.txn.coordinator import state_write_error
    from shazamq.protocol.errors import ErrorCode

    log = _open(tmp_path, "__consumer_offsets-0", compact=True)
    writer = LogWriter()
    hosted = _Hosted("__consumer_offsets", 0, log)
    role = ReplicaRole(
        broker_id=1, topic_id="t", replicas=[1], isr=[1], leader=1, leader_epoch=5,
        partition_epoch=0,
    )  # fmt: skip
    hosted.replica = role  # type: ignore[assignment]
    hosted.leader_epoch = 5
    hosted.topic_info = SimpleNamespace(configs={})  # type: ignore[attr-defined]
    partitions = _Partitions(writer, hosted)
    partitions.cluster = SimpleNamespace(min_isr=lambda configs: 1)  # type: ignore[assignment]
    topic = InternalTopic(partitions, "__consumer_offsets", 1, {})  # type: ignore[arg-type]
    inside = threading.Event()
    release = threading.Event()
    real = PartitionLog.append_prepared

    def held(self: PartitionLog, prepared: Any, *, leader_epoch: int = -1) -> Any:
        if not inside.is_set():  # the first write waits for the test, mid-way
            inside.set()
            assert release.wait(10)
        return real(self, prepared, leader_epoch=leader_epoch)

    monkeypatch.setattr(PartitionLog, "append_prepared", held)
    seen: dict[str, object] = {}

    async def main() -> None:
        first = topic.append(0, [(b"k0", _value(0, BIG))])
        second = topic.append(0, [(b"k1", _value(1, BIG))])
        third = topic.append(0, [(b"k2", _value(2, 40))])  # small, but queued behind
        assert all(isinstance(f, asyncio.Future) for f in (first, second, third))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, inside.wait, 10)
        role.leader_epoch = 6  # still the leader, at a newer epoch: the others are stale
        release.set()
        appended = await landed(first)
        assert appended is not None
        seen["first"] = (appended.base_offset, appended.next_offset)
        with pytest.raises(NotLeaderError) as refused:
            await landed(second)
        seen["second"] = append_error_code(refused.value)
        seen["txn"] = state_write_error(refused.value.error_code)
        seen["third"] = await replicated(None, third, 1.0)
        # a later append (its epoch read now) passes the fence again, until the leader
        # moves away: then it is refused before it is even queued
        hosted.leader_epoch = 6
        fourth = await landed(topic.append(0, [(b"k3", _value(3, BIG))]))
        assert fourth is not None
        seen["fourth"] = fourth.base_offset
        role.leader = 2
        with pytest.raises(Exception) as moved:
            topic.append(0, [(b"k4", _value(4, 40))])
        seen["moved"] = append_error_code(moved.value)
        await writer.stop()

    asyncio.run(main())
    assert seen == {
        "first": (0, 1),
        "second": ErrorCode.NOT_COORDINATOR,
        "txn": ErrorCode.NOT_COORDINATOR,
        "third": ErrorCode.NOT_LEADER_OR_FOLLOWER,
        "fourth": 1,
        "moved": ErrorCode.NOT_COORDINATOR,
    }
    assert _values(log) == [0, 3]  # nothing of the refused appends reached the log
    log.close()


# -- transaction markers (WriteTxnMarkers and the coordinator's own) ----------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_markers_go_through_the_writer_in_turn_with_the_data(
    tmp_path, threads, seed, monkeypatch
) -> None:
    """Transactional data (as produce queues it) and the COMMIT/ABORT markers the
    coordinator writes, issued back to back while the writer thread is held: every
    marker is queued behind the data, written on a writer thread, lands right after its
    transaction's data, and no transaction is left open."""
    rng = random.Random(seed)
    release = threading.Event()
    recording = PartitionLog.append_prepared

    def held(self: PartitionLog, prepared: Any, *, leader_epoch: int = -1) -> Any:
        if threading.current_thread().name.startswith("log-writer"):
            release.wait(10)
        return recording(self, prepared, leader_epoch=leader_epoch)

    monkeypatch.setattr(PartitionLog, "append_prepared", held)
    log = _open(tmp_path, "data-0", segment_bytes=1 << 20)
    writer = LogWriter()
    hosted = _Hosted("data", 0, log)
    coordinator: Any = SimpleNamespace(broker=SimpleNamespace(partitions=_Partitions(writer)))
    producers = list(range(1000, 1000 + rng.randint(4, 8)))
    commits = {pid: rng.random() < 0.5 for pid in producers}

    async def marker(pid: int) -> int:
        info = await TransactionCoordinator._append_marker(
            coordinator, hosted, pid, 0, commits[pid], 0
        )
        return info.base_offset

    async def main() -> list[int]:
        futures: list[Any] = []
        for i, pid in enumerate(producers):
            data = bytearray(
                build_batch(
                    [Record(value=_value(i, rng.choice((30, BIG))))],
                    producer_id=pid,
                    producer_epoch=0,
                    base_sequence=0,
                    transactional=True,
                    base_timestamp=10_000,
                )
            )
            futures.append(writer.append(log, log.prepare_append(data, now_ms=10_000), 0))
            futures.append(asyncio.ensure_future(marker(pid)))
            await asyncio.sleep(0)  # the marker's task runs up to its queued write
        release.set()
        results = await asyncio.gather(*futures)
        await writer.stop()
        return [r if isinstance(r, int) else r.base_offset for r in results]

    offsets = asyncio.run(main())
    assert offsets == list(range(2 * len(producers)))
    assert _values(log) == list(range(len(producers)))
    assert all(a.current_txn_start_offset < 0 for a in log.active_producers())
    assert log.last_stable_offset == log.log_end_offset
    markers = [t for t, _s, origin, control in threads if control]
    assert len(markers) == len(producers)
    assert all(t.startswith("log-writer") for t in markers)
    log.close()


def test_a_marker_whose_turn_comes_after_a_leadership_change_is_not_written(
    tmp_path, monkeypatch
) -> None:
    """In a cluster a transaction marker carries the writer thread's leadership fence too:
    queued while this broker led the data partition at epoch 3, its turn coming after the
    epoch moved, it is refused (NOT_LEADER_OR_FOLLOWER, which WriteTxnMarkers answers and
    the coordinator retries at the new leader) and never written."""
    from shazamq.broker.cluster.replica import ReplicaRole
    from shazamq.broker.log.errors import NotLeaderError

    inside = threading.Event()
    release = threading.Event()
    real = PartitionLog.append_prepared

    def held(self: PartitionLog, prepared: Any, *, leader_epoch: int = -1) -> Any:
        if not inside.is_set():  # the transaction's data waits mid-write for the test
            inside.set()
            assert release.wait(10)
        return real(self, prepared, leader_epoch=leader_epoch)

    monkeypatch.setattr(PartitionLog, "append_prepared", held)
    # every append to a writer thread, none written on the loop
    monkeypatch.setattr(PartitionLog, "append_is_light", lambda self, prepared: False)
    log = _open(tmp_path, "data-0", segment_bytes=1 << 20)
    writer = LogWriter()
    hosted = _Hosted("data", 0, log)
    role = ReplicaRole(
        broker_id=1, topic_id="t", replicas=[1], isr=[1], leader=1, leader_epoch=3,
        partition_epoch=0,
    )  # fmt: skip
    hosted.replica = role  # type: ignore[assignment]
    hosted.leader_epoch = 3
    coordinator: Any = SimpleNamespace(broker=SimpleNamespace(partitions=_Partitions(writer)))
    data = bytearray(
        build_batch(
            [Record(value=_value(0, 40))],
            producer_id=1000,
            producer_epoch=0,
            base_sequence=0,
            transactional=True,
            base_timestamp=10_000,
        )
    )

    async def main() -> tuple[int, int]:
        written = writer.append(log, log.prepare_append(data, now_ms=10_000), 3)
        marker = asyncio.ensure_future(
            TransactionCoordinator._append_marker(coordinator, hosted, 1000, 0, True, 0)
        )
        await asyncio.get_running_loop().run_in_executor(None, inside.wait, 10)
        await asyncio.sleep(0)  # the marker is queued behind the data
        role.leader_epoch = 4
        release.set()
        info = await written
        with pytest.raises(NotLeaderError) as refused:
            await marker
        await writer.stop()
        return info.base_offset, refused.value.error_code

    assert asyncio.run(main()) == (0, 6)
    assert log.log_end_offset == 1  # the data only: no marker after the epoch moved
    assert log.last_stable_offset == 0  # the transaction is still open here
    log.close()


# -- a follower's fetched batches ---------------------------------------------------------


class _FetchClient:
    """Answers each Fetch with the next prepared round of batches per partition."""

    def __init__(self, rounds: list[dict[tuple[str, int], tuple[bytes, int]]]) -> None:
        self.rounds = rounds
        self.asked: list[dict[tuple[str, int], int]] = []

    def best_version(self, key: int, version: int) -> int:
        return version

    async def request(self, key: int, version: int, req: Any, timeout: float) -> Any:
        assert key == FETCH
        self.asked.append(
            {(t.topic, p.partition): p.fetch_offset for t in req.topics for p in t.partitions}
        )
        answer = self.rounds.pop(0)
        topics: dict[str, list[Any]] = {}
        for (topic, index), (records, hw) in answer.items():
            topics.setdefault(topic, []).append(
                SimpleNamespace(
                    partition_index=index,
                    error_code=0,
                    diverging_epoch=SimpleNamespace(epoch=-1, end_offset=-1),
                    records=records,
                    high_watermark=hw,
                    log_start_offset=0,
                )
            )
        return SimpleNamespace(
            error_code=0,
            responses=[SimpleNamespace(topic=t, partitions=ps) for t, ps in topics.items()],
        )


def _leader_rounds(
    rng: random.Random, keys: list[tuple[str, int]], n_rounds: int
) -> tuple[list[dict[tuple[str, int], tuple[bytes, int]]], dict[tuple[str, int], int]]:
    """Rounds of replicated batches (offsets set, as a leader sends them) per partition."""
    ends = dict.fromkeys(keys, 0)
    rounds = []
    for _ in range(n_rounds):
        answer = {}
        for key in keys:
            chunk = bytearray()
            for _b in range(rng.randint(0, 3)):
                n = rng.randint(1, 3)
                size = rng.choice((40, 300, BIG)) // n
                base = ends[key]
                chunk += build_batch(
                    [Record(offset_delta=d, value=_value(base + d, size)) for d in range(n)],
                    base_offset=base,
                    partition_leader_epoch=0,
                    base_timestamp=10_000,
                )
                ends[key] = base + n
            answer[key] = (bytes(chunk), ends[key])
        rounds.append(answer)
    return rounds, ends


@pytest.mark.parametrize("seed", SEEDS)
def test_follower_appends_leave_the_loop_in_order(tmp_path, threads, seed) -> None:
    """A follower's fetcher over two partitions and several rounds of random batches: the
    large ones are written on writer threads, each round's writes are in before the next
    fetch (which asks from the log ends they moved), and the high watermark follows the
    leader's only up to what is written."""
    rng = random.Random(seed)
    writer = LogWriter()
    hosted = [_Hosted("t", i, _open(tmp_path, f"t-{i}")) for i in range(2)]
    keys = [(h.topic, h.index) for h in hosted]
    rounds, ends = _leader_rounds(rng, keys, rng.randint(4, 7))
    n_rounds = len(rounds)
    client = _FetchClient(rounds)
    fetcher = ReplicaFetcher(
        node_id=2,
        leader_id=1,
        pool=None,
        max_bytes=1 << 20,
        max_wait_ms=10,
        writer=writer,  # type: ignore[arg-type]
    )
    entries = [_Entry(h, 0, truncated=True) for h in hosted]  # type: ignore[arg-type]
    for e in entries:
        fetcher._entries[(e.partition.topic, e.partition.index)] = e
    seen_ends: list[dict[tuple[str, int], int]] = []

    async def main() -> None:
        for _ in range(n_rounds):
            await fetcher._fetch(client, entries)
            seen_ends.append({(h.topic, h.index): h.log.log_end_offset for h in hosted})
            for h in hosted:
                assert h.log.high_watermark == h.log.log_end_offset  # leader's hw = its end
        await writer.stop()

    asyncio.run(main())
    # each fetch asked from where the previous round's writes had moved the log end
    assert client.asked[1:] == seen_ends[:-1]
    for h in hosted:
        assert h.log.log_end_offset == ends[(h.topic, h.index)]
        assert _values(h.log) == list(range(ends[(h.topic, h.index)]))
    big = [t for t, size, origin, _c in threads if size >= INLINE_APPEND_BYTES]
    assert big and all(t.startswith("log-writer") for t in big)
    assert all(origin is AppendOrigin.REPLICATION for _t, _s, origin, _c in threads)
    for h in hosted:
        h.log.close()


# -- a mirror's copied batches -------------------------------------------------------------


class _Pool:
    def __init__(self, client: _FetchClient) -> None:
        self.client = client

    async def get(self, node: int) -> _FetchClient:
        return self.client


@pytest.mark.parametrize("seed", SEEDS)
def test_mirror_appends_leave_the_loop_in_order(tmp_path, threads, seed) -> None:
    """A mirror's fetch session over two partitions: copied batches keep the source's
    offsets, large ones are written on writer threads, the counters and the position of
    the next fetch follow only what is in the log, and ``on_appended`` (the high
    watermark in a cluster) runs after each write."""
    rng = random.Random(seed)
    writer = LogWriter()
    hosted = [_Hosted("m", i, _open(tmp_path, f"m-{i}")) for i in range(2)]
    keys = [("src", h.index) for h in hosted]
    rounds, ends = _leader_rounds(rng, keys, rng.randint(4, 7))
    n_rounds = len(rounds)
    client = _FetchClient(rounds)
    after_write: list[tuple[int, int]] = []
    session = FetchSession(
        source=SimpleNamespace(name="src"),  # type: ignore[arg-type]
        leader_id=1,
        pool=_Pool(client),  # type: ignore[arg-type]
        max_bytes=1 << 20,
        max_wait_ms=10,
        backoff_ms=10,
        backoff_max_ms=10,
        still_mirror=lambda c: True,
        on_stale=lambda: None,
        on_appended=lambda p: after_write.append((p.index, p.log.log_end_offset)),
        writer=writer,
    )
    copies = [
        Copy("src", h.index, h, "mark", PartitionStats("m", h.index), leader_id=1)  # type: ignore[arg-type]
        for h in hosted
    ]
    for c in copies:
        session.copies[c.key] = c
    seen_ends: list[dict[tuple[str, int], int]] = []

    async def main() -> None:
        for _ in range(n_rounds):
            await session._fetch(copies)
            seen_ends.append({("src", h.index): h.log.log_end_offset for h in hosted})
        await writer.stop()

    asyncio.run(main())
    assert client.asked[1:] == seen_ends[:-1]
    for c, h in zip(copies, hosted, strict=True):
        end = ends[("src", h.index)]
        assert h.log.log_end_offset == end == c.stats.local_end
        assert _values(h.log) == list(range(end))
        assert c.stats.bytes_copied == sum(len(r[("src", h.index)][0]) for r in _replay(seed))
        assert not c.problem
    # on_appended saw each write already in the log (its end had moved)
    assert all(end > 0 for _i, end in after_write)
    big = [t for t, size, origin, _c in threads if size >= INLINE_APPEND_BYTES]
    assert big and all(t.startswith("log-writer") for t in big)
    for h in hosted:
        h.log.close()


def _replay(seed: int) -> list[dict[tuple[str, int], tuple[bytes, int]]]:
    """The rounds the mirror test fetched (the same draws from the same seed)."""
    rng = random.Random(seed)
    rounds, _ends = _leader_rounds(rng, [("src", 0), ("src", 1)], rng.randint(4, 7))
    return rounds


def test_settled_returns_once_the_queued_appends_are_in(tmp_path, monkeypatch) -> None:
    """What a follower's reconciliation and a mirror promotion wait on: with the writer
    thread held, ``settled`` does not return; once released, every append queued for the
    partition is in the log when it does. An idle partition answers at once."""
    log = _open(tmp_path, "t-0")
    other = _open(tmp_path, "t-1")
    writer = LogWriter()
    release = threading.Event()
    real = PartitionLog.append_prepared

    def held(self: PartitionLog, prepared: Any, *, leader_epoch: int = -1) -> Any:
        if threading.current_thread().name.startswith("log-writer"):
            release.wait(10)
        return real(self, prepared, leader_epoch=leader_epoch)

    monkeypatch.setattr(PartitionLog, "append_prepared", held)
    seen: dict[str, object] = {}

    async def main() -> None:
        futures = []
        for i in range(5):
            data = bytearray(build_batch([Record(value=_value(i, BIG))]))
            futures.append(writer.append(log, log.prepare_append(data, now_ms=10_000), 0))
        await writer.settled(other)  # nothing queued there: no wait
        waiting = asyncio.ensure_future(writer.settled(log))
        for _ in range(20):
            await asyncio.sleep(0)
        seen["returned while held"] = waiting.done()
        seen["end while held"] = log.log_end_offset
        release.set()
        await waiting
        seen["end once settled"] = log.log_end_offset
        seen["all answered"] = all(f.done() for f in futures)
        await writer.stop()

    asyncio.run(main())
    assert seen == {
        "returned while held": False,
        "end while held": 0,
        "end once settled": 5,
        "all answered": True,
    }
    log.close()
    other.close()


def test_a_deferred_coordinator_append_that_fails_reports_its_error(tmp_path, monkeypatch) -> None:
    """A write that failed on a writer thread: ``landed`` raises the log's error, and
    ``replicated`` (what the synchronous paths wait on) answers its error code."""
    from shazamq.broker.groups.internal_topic import replicated
    from shazamq.broker.log import KafkaStorageError
    from shazamq.protocol.errors import ErrorCode

    log = _open(tmp_path, "__consumer_offsets-0", compact=True)
    writer = LogWriter()
    hosted = _Hosted("__consumer_offsets", 0, log)
    topic = InternalTopic(_Partitions(writer, hosted), "__consumer_offsets", 1, {})  # type: ignore[arg-type]
    real = PartitionLog.append_prepared

    def failing(self: PartitionLog, prepared: Any, *, leader_epoch: int = -1) -> Any:
        if threading.current_thread().name.startswith("log-writer"):
            raise KafkaStorageError("disk gone")
        return real(self, prepared, leader_epoch=leader_epoch)

    monkeypatch.setattr(PartitionLog, "append_prepared", failing)
    seen: dict[str, object] = {}

    async def main() -> None:
        first = topic.append(0, [(b"k", _value(0, BIG))])
        second = topic.append(0, [(b"k", _value(1, BIG))])
        seen["deferred"] = isinstance(first, asyncio.Future)
        with pytest.raises(KafkaStorageError):
            await landed(first)
        seen["code"] = await replicated(None, second, 1.0)
        await writer.stop()

    asyncio.run(main())
    assert seen == {"deferred": True, "code": ErrorCode.KAFKA_STORAGE_ERROR}
    assert log.log_end_offset == 0 and hosted.notified == 0
    log.close()


# -- other changes of a log in turn with its appends (run_in_turn) ----------------------


def test_a_job_in_turn_runs_on_a_writer_thread_between_the_appends(tmp_path) -> None:
    """A job queued between appends (a truncation, a switch of folders) runs on a writer
    thread after the appends queued before it and before those queued after it; its
    error comes back through its future and the appends after it go on."""
    log = _open(tmp_path, "t-0")
    writer = LogWriter()
    seen: list[tuple[str, int]] = []

    def job() -> int:
        seen.append((threading.current_thread().name, log.log_end_offset))
        return log.log_end_offset

    def failing() -> None:
        raise OSError("disk says no")

    async def main() -> tuple[int, str, list[int]]:
        def queue(i: int) -> asyncio.Future[Any]:
            data = bytearray(build_batch([Record(value=_value(i, BIG))]))
            return writer.append(log, log.prepare_append(data, now_ms=10_000), 0)

        before = [queue(i) for i in range(4)]
        in_turn = writer.run_in_turn(log, job)
        broken = writer.run_in_turn(log, failing)
        after = [queue(i) for i in range(4, 8)]
        result = await in_turn
        try:
            await broken
            error = ""
        except OSError as exc:
            error = str(exc)
        infos = await asyncio.gather(*before, *after)
        await writer.stop()
        return result, error, [info.base_offset for info in infos]

    result, error, offsets = asyncio.run(main())
    assert result == 4
    assert seen[0][0].startswith("log-writer") and seen[0][1] == 4
    assert error == "disk says no"
    assert offsets == list(range(8))
    assert _values(log) == list(range(8))
    log.close()


class _OutOfRangeClient:
    """Answers a Fetch with OFFSET_OUT_OF_RANGE and the leader's (later) log start."""

    def __init__(self, log_start: int) -> None:
        self.log_start = log_start

    async def request(self, key: int, version: int, req: Any, timeout: float) -> Any:
        assert key == FETCH
        parts = [
            SimpleNamespace(
                partition_index=p.partition,
                error_code=1,  # OFFSET_OUT_OF_RANGE
                diverging_epoch=SimpleNamespace(epoch=-1, end_offset=-1),
                records=None,
                high_watermark=self.log_start,
                log_start_offset=self.log_start,
            )
            for t in req.topics
            for p in t.partitions
        ]
        return SimpleNamespace(
            error_code=0, responses=[SimpleNamespace(topic="t", partitions=parts)]
        )


def test_a_follower_behind_the_leaders_log_start_restarts_its_log_off_the_loop(
    tmp_path, monkeypatch
) -> None:
    """The leader deleted what the follower would fetch next: the follower's log starts
    again, empty, at the leader's log start, on a writer thread; the next fetch asks
    from there."""
    log = _open(tmp_path, "t-0")
    for i in range(3):
        log.append(bytearray(build_batch([Record(value=_value(i, 40))])), now_ms=10_000)
    writer = LogWriter()
    hosted = _Hosted("t", 0, log)
    where: list[str] = []
    real = PartitionLog.truncate_fully_and_start_at

    def recording(self: PartitionLog, offset: int, **kwargs: Any) -> None:
        where.append(threading.current_thread().name)
        real(self, offset, **kwargs)

    monkeypatch.setattr(PartitionLog, "truncate_fully_and_start_at", recording)
    fetcher = ReplicaFetcher(
        node_id=2,
        leader_id=1,
        pool=None,  # type: ignore[arg-type]
        max_bytes=1 << 20,
        max_wait_ms=10,
        writer=writer,
    )
    entry = _Entry(hosted, 0, truncated=True)  # type: ignore[arg-type]
    fetcher._entries[("t", 0)] = entry

    async def main() -> None:
        await fetcher._fetch(_OutOfRangeClient(50), [entry])
        await writer.stop()

    asyncio.run(main())
    assert len(where) == 1 and where[0].startswith("log-writer")
    assert (log.log_start_offset, log.log_end_offset) == (50, 50)
    assert entry.truncated  # nothing to reconcile: the next fetch asks from 50
    log.close()
