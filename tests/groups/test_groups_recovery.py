"""What the group coordinator reloads from ``__consumer_offsets``, broker run in-process.

Covers: a Stable group (generation, leader, members, assignments) and its committed
offsets reloaded after a restart, the reloaded member heartbeating on at its generation
and expelled once it stops; offsets deleted by OffsetDelete, and groups deleted by
DeleteGroups, staying deleted after a restart (their tombstones are replayed); the
internal topic created compacted with the configured partition count, and a group placed
in the partition Kafka would choose; the offset expiry check run at
``offsets_retention_check_interval_ms``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from shazamq.broker.app import Broker
from shazamq.broker.groups.coordinator import OffsetCommit
from shazamq.broker.groups.group import GroupState
from shazamq.broker.groups.partitioning import coordinator_partition
from shazamq.config import BrokerConfig, BrokerSection, GroupsConfig, MetricsConfig
from shazamq.protocol.errors import ErrorCode as E
from tests.conftest import free_port

SUB = b"\x00\x00\x00\x00\x00\x01\x00\x01t\xff\xff\xff\xff"  # v0 subscription to topic "t"


async def start(data_dir: Path, **groups: int) -> Broker:
    config = BrokerConfig(
        broker=BrokerSection(host="127.0.0.1", port=free_port(), data_dir=str(data_dir)),
        metrics=MetricsConfig(enabled=False),
        groups=GroupsConfig(
            offsets_topic_num_partitions=3,
            initial_rebalance_delay_ms=0,
            min_session_timeout_ms=10,
            **groups,
        ),
    )
    broker = Broker(config)
    await broker.start()
    # what a client's first FindCoordinator does; the synchronous calls below need it
    await broker.groups.create_offsets_topic()
    return broker


async def until(condition, timeout: float = 10.0) -> None:
    """Wait for a condition of the broker's state (read, never driven, by the wait)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def stable_group(broker: Broker, group: str, session_ms: int = 600) -> str:
    c = broker.groups
    kw = dict(
        group_id=group,
        group_instance_id=None,
        require_known_member_id=False,
        client_id="c",
        client_host="/127.0.0.1",
        session_timeout_ms=session_ms,
        rebalance_timeout_ms=1000,
        protocol_type="consumer",
        protocols=[("range", SUB)],
    )
    r = await c.join_group(member_id="", **kw)
    assert r.error == 0
    s = await c.sync_group(
        group_id=group,
        generation_id=r.generation_id,
        member_id=r.member_id,
        group_instance_id=None,
        protocol_type=None,
        protocol_name=None,
        assignments={r.member_id: b"the-assignment"},
    )
    assert s.error == 0
    return r.member_id


def commit(broker: Broker, group: str, member: str, generation: int, offsets: dict) -> dict:
    return broker.groups.commit_offsets(
        group_id=group,
        generation_id=generation,
        member_id=member,
        group_instance_id=None,
        retention_ms=-1,
        offsets={tp: OffsetCommit(o) for tp, o in offsets.items()},
    )


async def test_stable_group_and_offsets_survive_a_restart(tmp_path):
    broker = await start(tmp_path)
    try:
        info = broker.partitions.metadata.get("__consumer_offsets")
        assert info is not None and info.partitions == 3 and info.internal
        assert info.configs["cleanup.policy"] == "compact"
        await broker.partitions.create_topic("t", 2)
        member = await stable_group(broker, "g")
        assert commit(broker, "g", member, 1, {("t", 0): 7, ("t", 1): 9}) == {
            ("t", 0): 0,
            ("t", 1): 0,
        }
        part = broker.partitions.get("__consumer_offsets", coordinator_partition("g", 3))
        assert part is not None and part.log.log_end_offset == 3  # group record, two offsets
    finally:
        await broker.stop()

    broker = await start(tmp_path)
    try:
        group = broker.groups.groups["g"]
        assert group.state is GroupState.STABLE and group.generation_id == 1
        assert group.leader_id == member and group.members[member].assignment == b"the-assignment"
        _, fetched = broker.groups.fetch_offsets("g", None)
        assert [(f.topic, f.partition, f.offset) for f in fetched] == [("t", 0, 7), ("t", 1, 9)]
        for _ in range(3):  # the member carries on at its generation
            await asyncio.sleep(0.15)
            assert broker.groups.heartbeat("g", 1, member, None) == 0
        await until(lambda: group.state is GroupState.EMPTY)  # silent now: expelled
        assert broker.groups.heartbeat("g", 1, member, None) == E.UNKNOWN_MEMBER_ID
        # offsets of the now empty group can be deleted, and the group too
        code, result = await broker.groups.delete_offsets("g", [("t", 1)])
        assert (code, result) == (0, {("t", 1): 0})
        assert commit(broker, "h", "", -1, {("t", 0): 1}) == {("t", 0): 0}
        assert await broker.groups.delete_groups(["h"]) == {"h": 0}
    finally:
        await broker.stop()

    broker = await start(tmp_path)
    try:
        _, fetched = broker.groups.fetch_offsets("g", None)
        assert [(f.topic, f.partition, f.offset) for f in fetched] == [("t", 0, 7)]
        assert broker.groups.groups["g"].state is GroupState.EMPTY
        assert "h" not in broker.groups.groups
    finally:
        await broker.stop()


async def test_deletes_answer_after_their_write_and_a_failed_one_changes_nothing(
    tmp_path, monkeypatch
):
    """OffsetDelete and DeleteGroups answer only once their tombstones are written: while
    the write is held on a writer thread neither has answered nor changed memory (the
    group being deleted refuses commits meanwhile); when the disk then refuses it
    (ENOSPC), each answers COORDINATOR_NOT_AVAILABLE and the offsets and the group are
    as before, here and after a restart."""
    import errno
    import threading

    from shazamq.broker.log import PartitionLog
    from shazamq.broker.log.segment import LogSegment

    # two groups in different partitions of __consumer_offsets (a failed write takes
    # its partition offline, so each delete meets a healthy one)
    names = iter(f"grp{i}" for i in range(100))
    g = next(names)
    h = next(n for n in names if coordinator_partition(n, 3) != coordinator_partition(g, 3))
    broker = await start(tmp_path)
    try:
        await broker.partitions.create_topic("t", 2)
        assert commit(broker, g, "", -1, {("t", 0): 5, ("t", 1): 6}) == {("t", 0): 0, ("t", 1): 0}
        assert commit(broker, h, "", -1, {("t", 0): 1}) == {("t", 0): 0}
        # every append goes to a writer thread from here, where the segment write waits
        # for the test, then fails as a full disk does
        monkeypatch.setattr(PartitionLog, "append_is_light", lambda self, prepared: False)
        inside = threading.Event()
        release = threading.Event()

        def full_disk(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            inside.set()
            release.wait(10)
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(LogSegment, "append", full_disk)

        def offsets(group: str) -> list[tuple[str, int, int]]:
            _, fetched = broker.groups.fetch_offsets(group, None)
            return [(f.topic, f.partition, f.offset) for f in fetched]

        deleting = asyncio.ensure_future(broker.groups.delete_offsets(g, [("t", 1)]))
        await until(inside.is_set)
        assert not deleting.done()
        assert offsets(g) == [("t", 0, 5), ("t", 1, 6)]
        release.set()
        assert await deleting == (E.COORDINATOR_NOT_AVAILABLE, {})
        assert offsets(g) == [("t", 0, 5), ("t", 1, 6)]

        inside.clear()
        release.clear()
        deleting_group = asyncio.ensure_future(broker.groups.delete_groups([h]))
        await until(inside.is_set)
        assert not deleting_group.done()
        assert offsets(h) == [("t", 0, 1)]
        # a commit while the group is being deleted is refused, not applied
        assert commit(broker, h, "", -1, {("t", 1): 3}) == {("t", 1): E.COORDINATOR_NOT_AVAILABLE}
        release.set()
        assert await deleting_group == {h: E.COORDINATOR_NOT_AVAILABLE}
        assert broker.groups.groups[h].state is GroupState.EMPTY
        assert broker.groups.describe_group(h).state == GroupState.EMPTY.value
        assert offsets(h) == [("t", 0, 1)]
    finally:
        release.set()
        monkeypatch.undo()
        await broker.stop()

    broker = await start(tmp_path)
    try:
        _, fetched = broker.groups.fetch_offsets(g, None)
        assert [(f.topic, f.partition, f.offset) for f in fetched] == [("t", 0, 5), ("t", 1, 6)]
        _, fetched = broker.groups.fetch_offsets(h, None)
        assert [(f.topic, f.partition, f.offset) for f in fetched] == [("t", 0, 1)]
    finally:
        await broker.stop()


async def test_offset_expiry_runs_at_the_configured_interval(tmp_path, monkeypatch):
    checks: list[int] = []
    broker = await start(tmp_path, offsets_retention_check_interval_ms=50)
    try:
        monkeypatch.setattr(broker.groups, "expire_offsets", checks.append)
        # three passes within seconds: the default interval (10 minutes) would give none
        await until(lambda: len(checks) >= 3)
    finally:
        await broker.stop()


async def test_delete_during_a_commit_in_flight_covers_it(tmp_path, monkeypatch):
    """A commit accepted before DeleteGroups and still being written when the delete
    starts is applied before the delete's tombstones are written, and they cover it: the
    group is gone from memory and stays gone after a restart (the commit neither
    resurrects it in memory nor survives in the log)."""
    import threading

    from shazamq.broker.log import PartitionLog
    from shazamq.broker.log.segment import LogSegment

    broker = await start(tmp_path)
    try:
        await broker.partitions.create_topic("t", 2)
        assert commit(broker, "h", "", -1, {("t", 0): 1}) == {("t", 0): 0}
        # every append goes to a writer thread from here; the first one (the commit)
        # waits there for the test, the later ones are written as usual
        monkeypatch.setattr(PartitionLog, "append_is_light", lambda self, prepared: False)
        inside = threading.Event()
        release = threading.Event()
        real_append = LogSegment.append
        calls = []

        def held(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(1)
            if len(calls) == 1:
                inside.set()
                release.wait(10)
            return real_append(self, *args, **kwargs)

        monkeypatch.setattr(LogSegment, "append", held)
        committing = asyncio.ensure_future(
            broker.groups.commit_offsets_async(
                group_id="h",
                generation_id=-1,
                member_id="",
                group_instance_id=None,
                retention_ms=-1,
                offsets={("t", 0): OffsetCommit(2), ("t", 1): OffsetCommit(3)},
            )
        )
        await until(inside.is_set)
        deleting = asyncio.ensure_future(broker.groups.delete_groups(["h"]))
        await asyncio.sleep(0)  # the delete has started: the group is Dead meanwhile
        assert broker.groups.groups["h"].state is GroupState.DEAD
        assert not deleting.done() and not committing.done()
        release.set()
        assert await committing == {("t", 0): 0, ("t", 1): 0}
        assert await deleting == {"h": 0}
        assert len(calls) == 2  # the commit, then the tombstones
        assert "h" not in broker.groups.groups
        assert broker.groups.fetch_offsets("h", None) == (0, [])
        # the tombstones name both partitions, the one only the in-flight commit had too
        part = broker.partitions.get("__consumer_offsets", coordinator_partition("h", 3))
        assert part is not None
        tombstoned = [
            r for b in broker.groups.store.topic.scan(part.index) for r in b.records if r[2] is None
        ]
        # ("h" only ever committed offsets: it has no group record to tombstone)
        assert [r[0] for r in tombstoned] == [3, 4]  # after the commits at 0 and 1, 2
    finally:
        release.set()
        monkeypatch.undo()
        await broker.stop()

    broker = await start(tmp_path)
    try:
        assert "h" not in broker.groups.groups
        assert broker.groups.fetch_offsets("h", None) == (0, [])
    finally:
        await broker.stop()
