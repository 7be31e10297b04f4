"""The classic group state machine and the coordinator's rebalance rules, without I/O.

Covers, on :class:`Group` alone: allowed and refused state transitions, protocol
selection by vote among the protocols every member supports, leader election among the
members that rejoined, static member replacement, transactional offsets applied or
dropped (a later plain commit wins), subscription parsing.

Covers, on :class:`GroupCoordinator` with an in-memory store (real timers, millisecond
timeouts): the MEMBER_ID_REQUIRED round; a first generation; a second member forcing a
rebalance that parks the joiners until the first member rejoins; followers' SyncGroup
parked until the leader's assignment; ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID,
REBALANCE_IN_PROGRESS and INCONSISTENT_GROUP_PROTOCOL where Kafka gives them; a silent
member expelled after its session timeout; a member that does not rejoin dropped at the
rebalance timeout; a follower that never syncs removed; static members rejoining
without a rebalance and fencing their old member id (FENCED_INSTANCE_ID); offset commit
rules (simple commits, generations, rebalance in progress, unknown partitions, metadata
size); require_stable fetches around transactional offsets; retention of Empty groups
and of unsubscribed topics; DeleteGroups; a failed assignment write.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from shazamq.broker.groups.coordinator import GroupCoordinator, OffsetCommit
from shazamq.broker.groups.group import (
    CommittedOffset,
    Group,
    GroupState,
    IllegalStateError,
    Member,
    parse_subscription,
)
from shazamq.broker.groups.partitioning import coordinator_partition
from shazamq.broker.log import KafkaStorageError
from shazamq.broker.metrics import BrokerMetrics
from shazamq.config import BrokerConfig, GroupsConfig
from shazamq.protocol.errors import ErrorCode as E
from shazamq.protocol.messages.consumer_protocol_subscription import (
    ConsumerProtocolSubscription,
)

# -- the Group alone ------------------------------------------------------------------


def member(mid: str, *protocols: str, instance: str | None = None, meta: bytes = b"m") -> Member:
    return Member(
        member_id=mid,
        group_instance_id=instance,
        client_id="c",
        client_host="/h",
        rebalance_timeout_ms=1000,
        session_timeout_ms=1000,
        protocol_type="consumer",
        protocols=[(p, meta) for p in (protocols or ("range",))],
    )


def test_transitions():
    g = Group("g")
    assert g.state is GroupState.EMPTY
    with pytest.raises(IllegalStateError):
        g.transition(GroupState.STABLE)
    g.transition(GroupState.PREPARING_REBALANCE)
    with pytest.raises(IllegalStateError):
        g.transition(GroupState.STABLE)
    g.transition(GroupState.COMPLETING_REBALANCE)
    g.transition(GroupState.STABLE)
    assert g.can_rebalance()
    g.transition(GroupState.DEAD)
    assert not g.can_rebalance()


def test_protocol_selection_by_vote():
    g = Group("g")
    g.add(member("a", "cooperative-sticky", "range"))
    g.add(member("b", "range", "cooperative-sticky"))
    g.add(member("c", "range", "roundrobin", "cooperative-sticky"))
    assert g.candidate_protocols() == {"range", "cooperative-sticky"}
    assert g.select_protocol() == "range"
    assert g.supports_protocols("consumer", ["cooperative-sticky"])
    assert not g.supports_protocols("consumer", ["roundrobin"])
    assert not g.supports_protocols("connect", ["range"])


def test_leader_election_prefers_members_that_rejoined():
    g = Group("g")
    a, b = member("a"), member("b")
    g.add(a)
    g.add(b)
    assert g.leader_id == "a"
    loop = asyncio.new_event_loop()
    try:
        b.join_future = loop.create_future()
        assert g.elect_joined_leader()
        assert g.leader_id == "b"
        b.join_future = None
        assert not g.elect_joined_leader()
    finally:
        loop.close()
    g.remove("b")
    assert g.leader_id == "a"
    g.remove("a")
    assert g.leader_id is None


def test_static_member_replacement_keeps_state():
    g = Group("g")
    m = member("old", instance="i1")
    m.assignment = b"asg"
    g.add(m)
    g.pending_sync.add("old")
    replaced = g.replace_static_member("i1", "old", "new")
    assert replaced is m and m.member_id == "new"
    assert g.static_member_id("i1") == "new"
    assert g.leader_id == "new" and g.pending_sync == {"new"}
    assert g.is_static_member_fenced("old", "i1")
    assert not g.is_static_member_fenced("new", "i1")


def test_transactional_offsets():
    g = Group("g")
    g.offsets[("t", 0)] = CommittedOffset(5, "", 0, record_offset=10)
    g.pending_txn_offsets[7] = {
        ("t", 0): CommittedOffset(8, "", 0, record_offset=5),  # older than the plain commit
        ("t", 1): CommittedOffset(9, "", 0, record_offset=6),
    }
    assert g.has_pending_txn_offsets(("t", 1))
    assert g.complete_txn_offsets(7, commit=True) == 1
    assert g.offsets[("t", 0)].offset == 5 and g.offsets[("t", 1)].offset == 9
    g.pending_txn_offsets[8] = {("t", 2): CommittedOffset(1, "", 0, record_offset=20)}
    assert g.complete_txn_offsets(8, commit=False) == 0
    assert ("t", 2) not in g.offsets and not g.has_pending_txn_offsets()


def test_parse_subscription():
    sub = ConsumerProtocolSubscription(topics=["a", "b"])
    for version in (0, 1, 3):
        data = version.to_bytes(2, "big") + sub.encode(version)
        assert parse_subscription(data) == ["a", "b"]
    assert parse_subscription(b"\x00") is None
    assert parse_subscription(b"\x00\x00\xff\xff\xff\xff") is None


# -- the coordinator with an in-memory store -----------------------------------------


class FakeStore:
    """Stands in for ``__consumer_offsets``: remembers what was written."""

    partition_count = 4
    needs_creation = False  # the topic "exists"

    def __init__(self) -> None:
        self.next_offset = 0
        self.writes: list[tuple[str, str, object]] = []
        self.fail: Exception | None = None

    def partition_for(self, group_id: str) -> int:
        return coordinator_partition(group_id, self.partition_count)

    def _check(self) -> None:
        if self.fail is not None:
            raise self.fail

    async def write_offsets(self, group_id, offsets, *, producer_id=-1, producer_epoch=-1):
        self._check()
        for c in offsets.values():
            c.record_offset = self.next_offset
            self.next_offset += 1
        self.writes.append(("offsets", group_id, dict(offsets)))

    def delete_offsets(self, group_id, tps):
        self._check()
        self.writes.append(("delete", group_id, list(tps)))

    def write_group(self, group_id, value):
        self._check()
        self.writes.append(("group", group_id, value))

    def delete_group(self, group_id, offsets, *, metadata=True):
        self._check()
        self.writes.append(("delete_group", group_id, list(offsets)))


class FakePartitions:
    def get(self, topic, index):
        if topic.startswith("missing"):
            return None
        return SimpleNamespace(log=SimpleNamespace(high_watermark=100))


class FakeTxn:
    def __init__(self) -> None:
        self.error = 0

    def verify_txn_offset_commit(self, txn_id, pid, epoch, partition):
        return self.error

    async def txn_offset_commit_check_async(self, txn_id, pid, epoch, partition):
        return self.error


@pytest.fixture
def coord():
    config = BrokerConfig(
        groups=GroupsConfig(
            initial_rebalance_delay_ms=0,
            min_session_timeout_ms=10,
            offsets_retention_minutes=1,
        )
    )
    broker = SimpleNamespace(
        config=config, metrics=BrokerMetrics(), partitions=FakePartitions(), txn=FakeTxn()
    )
    c = GroupCoordinator(broker)  # type: ignore[arg-type]
    c.store = FakeStore()  # type: ignore[assignment]
    c.loaded = True
    yield c
    for group in c.groups.values():
        group.cancel_timers()
        for m in group.members.values():
            if m.timer is not None:
                m.timer.cancel()


SUB = (0).to_bytes(2, "big") + ConsumerProtocolSubscription(topics=["t"]).encode(0)


def join(
    c,
    group="g",
    member_id="",
    *,
    session=1000,
    rebalance=1000,
    instance=None,
    v4=True,
    protocols=None,
    skip=False,
):
    return asyncio.ensure_future(
        c.join_group(
            group_id=group,
            member_id=member_id,
            group_instance_id=instance,
            require_known_member_id=v4,
            client_id="client",
            client_host="/127.0.0.1",
            session_timeout_ms=session,
            rebalance_timeout_ms=rebalance,
            protocol_type="consumer",
            protocols=protocols or [("range", SUB)],
            supports_skip_assignment=skip,
        )
    )


def sync(c, generation, member_id, assignments=None, group="g", instance=None):
    return asyncio.ensure_future(
        c.sync_group(
            group_id=group,
            generation_id=generation,
            member_id=member_id,
            group_instance_id=instance,
            protocol_type=None,
            protocol_name=None,
            assignments=assignments or {},
        )
    )


async def until(condition, timeout=10.0):
    """Wait for a condition of the coordinator's state (read, never driven, by the wait)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def settle(*futs, timeout=2.0):
    return await asyncio.wait_for(asyncio.gather(*futs), timeout)


async def first_member(c, group="g", **kw):
    r = await join(c, group, **kw)
    assert r.error == E.MEMBER_ID_REQUIRED and r.member_id
    r = await join(c, group, r.member_id, **kw)
    assert r.error == 0 and r.generation_id >= 1
    return r


async def test_member_id_required_then_first_generation(coord):
    r = await join(coord)
    assert r.error == E.MEMBER_ID_REQUIRED
    assert coord.groups["g"].pending_members == {r.member_id}
    r2 = await join(coord, member_id=r.member_id)
    assert (r2.error, r2.generation_id, r2.leader, r2.protocol_name) == (0, 1, r.member_id, "range")
    assert [m[0] for m in r2.members] == [r.member_id]
    assert coord.groups["g"].state is GroupState.COMPLETING_REBALANCE
    s = await sync(coord, 1, r.member_id, {r.member_id: b"mine"})
    assert (s.error, s.assignment) == (0, b"mine")
    assert coord.groups["g"].state is GroupState.STABLE
    kind, _gid, value = coord.store.writes[-1]
    assert kind == "group" and value.generation == 1 and value.members[0].assignment == b"mine"


async def test_unknown_member_join_before_v4_joins_directly(coord):
    r = await join(coord, v4=False)
    assert r.error == 0 and r.generation_id == 1


async def test_second_member_rebalances_and_followers_wait_for_the_leader(coord):
    a = await first_member(coord)
    await sync(coord, 1, a.member_id, {a.member_id: b"all"})
    b_id = (await join(coord)).member_id
    b_join = join(coord, member_id=b_id)
    await asyncio.sleep(0.02)
    assert not b_join.done()
    assert coord.groups["g"].state is GroupState.PREPARING_REBALANCE
    assert coord.heartbeat("g", 1, a.member_id, None) == E.REBALANCE_IN_PROGRESS
    # a commit of the old generation is still accepted while preparing
    assert coord.commit_offsets(
        group_id="g",
        generation_id=1,
        member_id=a.member_id,
        group_instance_id=None,
        retention_ms=-1,
        offsets={("t", 0): OffsetCommit(3)},
    ) == {("t", 0): 0}
    a_join = join(coord, member_id=a.member_id)
    ra, rb = await settle(a_join, b_join)
    assert ra.generation_id == rb.generation_id == 2
    assert ra.leader == a.member_id and len(ra.members) == 2 and rb.members == ()
    # the follower's SyncGroup waits for the leader's
    b_sync = sync(coord, 2, b_id)
    await asyncio.sleep(0.02)
    assert not b_sync.done()
    assert coord.heartbeat("g", 2, b_id, None) == 0  # CompletingRebalance: heartbeats are fine
    assert coord.commit_offsets(
        group_id="g",
        generation_id=2,
        member_id=b_id,
        group_instance_id=None,
        retention_ms=-1,
        offsets={("t", 0): OffsetCommit(4)},
    ) == {("t", 0): E.REBALANCE_IN_PROGRESS}
    sa = await sync(coord, 2, a.member_id, {a.member_id: b"A", b_id: b"B"})
    sb = await settle(b_sync)
    assert sa.assignment == b"A" and sb[0].assignment == b"B"
    assert coord.heartbeat("g", 1, b_id, None) == E.ILLEGAL_GENERATION
    assert coord.heartbeat("g", 2, "nobody", None) == E.UNKNOWN_MEMBER_ID
    assert coord.heartbeat("nogroup", 2, b_id, None) == E.UNKNOWN_MEMBER_ID
    r = await sync(coord, 1, b_id)
    assert r.error == E.ILLEGAL_GENERATION


async def test_inconsistent_protocols_are_refused(coord):
    await first_member(coord)
    r = await join(coord, v4=False, protocols=[("roundrobin", SUB)])
    assert r.error == E.INCONSISTENT_GROUP_PROTOCOL


async def test_invalid_session_timeout_and_group_id(coord):
    assert (await join(coord, session=5)).error == E.INVALID_SESSION_TIMEOUT
    assert (await join(coord, group="")).error == E.INVALID_GROUP_ID
    assert (await join(coord, member_id="ghost")).error == E.UNKNOWN_MEMBER_ID


async def test_silent_member_is_expelled_after_its_session_timeout(coord):
    a = await first_member(coord, session=400)
    await sync(coord, 1, a.member_id)
    for _ in range(5):  # heartbeats keep it alive past its session timeout
        await asyncio.sleep(0.1)
        assert coord.heartbeat("g", 1, a.member_id, None) == 0
    group = coord.groups["g"]
    await until(lambda: not group.members)  # silent now: expelled once its session ends
    assert group.state is GroupState.EMPTY
    assert coord.heartbeat("g", 1, a.member_id, None) == E.UNKNOWN_MEMBER_ID
    assert coord.member_expirations._value.get() == 1


async def test_member_that_does_not_rejoin_is_dropped_at_the_rebalance_timeout(coord):
    a = await first_member(coord, session=5000, rebalance=150)
    await sync(coord, 1, a.member_id)
    b = (await join(coord, rebalance=150)).member_id
    rb = await settle(join(coord, member_id=b, rebalance=150), timeout=1.0)
    assert rb[0].generation_id == 2 and rb[0].leader == b
    assert list(coord.groups["g"].members) == [b]


async def test_follower_that_never_syncs_is_removed(coord):
    a_id = (await join(coord, rebalance=150)).member_id
    b_id = (await join(coord, rebalance=150)).member_id
    ra, rb = await settle(
        join(coord, member_id=a_id, rebalance=150), join(coord, member_id=b_id, rebalance=150)
    )
    assert ra.generation_id == rb.generation_id
    leader = ra.leader
    follower = b_id if leader == a_id else a_id
    await sync(coord, ra.generation_id, leader)
    for _ in range(100):
        if follower not in coord.groups["g"].members:
            break
        await asyncio.sleep(0.01)
    assert follower not in coord.groups["g"].members
    assert coord.heartbeat("g", ra.generation_id, leader, None) == E.REBALANCE_IN_PROGRESS


async def test_static_member_rejoins_without_rebalance_and_fences_its_old_id(coord):
    r = await join(coord, instance="i1")  # static members skip MEMBER_ID_REQUIRED
    assert r.error == 0 and r.member_id.startswith("i1-")
    await sync(coord, 1, r.member_id, {r.member_id: b"asg"}, instance="i1")
    again = await join(coord, instance="i1")
    assert again.error == 0 and again.member_id != r.member_id
    assert again.generation_id == 1 and again.leader == r.member_id  # old leader id: no assign
    assert coord.groups["g"].state is GroupState.STABLE
    assert coord.heartbeat("g", 1, r.member_id, "i1") == E.FENCED_INSTANCE_ID
    assert coord.heartbeat("g", 1, again.member_id, "i1") == 0
    s = await sync(coord, 1, again.member_id, instance="i1")
    assert s.assignment == b"asg"
    # with v9 the rejoining static leader is told to skip the assignment
    v9 = await join(coord, instance="i1", skip=True)
    assert v9.skip_assignment and v9.leader == v9.member_id and len(v9.members) == 1


async def test_leave_group(coord):
    a = await first_member(coord)
    await sync(coord, 1, a.member_id)
    top, results = coord.leave_group("g", [(a.member_id, None), ("ghost", None)])
    assert top == 0 and [r[2] for r in results] == [0, E.UNKNOWN_MEMBER_ID]
    assert coord.groups["g"].state is GroupState.EMPTY
    assert coord.groups["g"].generation_id == 2


def commit(c, tps, *, generation=-1, member="", group="g", metadata=""):
    return c.commit_offsets(
        group_id=group,
        generation_id=generation,
        member_id=member,
        group_instance_id=None,
        retention_ms=-1,
        offsets={tp: OffsetCommit(5, metadata=metadata) for tp in tps},
    )


async def test_offset_commit_rules(coord):
    assert commit(coord, [("t", 0)], group="simple") == {("t", 0): 0}
    assert coord.groups["simple"].offsets[("t", 0)].offset == 5
    assert commit(coord, [("t", 0)], group="other", generation=3) == {
        ("t", 0): E.ILLEGAL_GENERATION
    }
    assert commit(coord, [("missing", 0)], group="simple") == {
        ("missing", 0): E.UNKNOWN_TOPIC_OR_PARTITION
    }
    assert commit(coord, [("t", 1)], group="simple", metadata="x" * 5000) == {
        ("t", 1): E.OFFSET_METADATA_TOO_LARGE
    }
    a = await first_member(coord)
    assert commit(coord, [("t", 0)], generation=1, member="ghost") == {
        ("t", 0): E.UNKNOWN_MEMBER_ID
    }
    assert commit(coord, [("t", 0)]) == {("t", 0): E.UNKNOWN_MEMBER_ID}  # active group
    await sync(coord, 1, a.member_id)
    assert commit(coord, [("t", 0)], generation=1, member=a.member_id) == {("t", 0): 0}
    code, fetched = coord.fetch_offsets("g", [("t", 0), ("t", 9)])
    assert code == 0 and [(f.offset, f.error) for f in fetched] == [(5, 0), (-1, 0)]
    coord.store.fail = KafkaStorageError("disk gone")
    assert commit(coord, [("t", 0)], generation=1, member=a.member_id) == {
        ("t", 0): E.COORDINATOR_NOT_AVAILABLE
    }


async def test_transactional_offsets_and_require_stable(coord):
    offsets = {("t", 0): OffsetCommit(11)}
    kw = dict(
        transactional_id="tx",
        group_id="g",
        producer_id=7,
        producer_epoch=0,
        generation_id=-1,
        member_id="",
        group_instance_id=None,
        offsets=offsets,
    )
    assert coord.txn_commit_offsets(**kw) == {("t", 0): 0}
    _, fetched = coord.fetch_offsets("g", None, require_stable=True)
    assert fetched[0].error == E.UNSTABLE_OFFSET_COMMIT
    _, fetched = coord.fetch_offsets("g", [("t", 0)])
    assert fetched[0].offset == -1
    coord.complete_txn(coord.partition_for("g"), 7, commit=True)
    _code, fetched = coord.fetch_offsets("g", [("t", 0)], require_stable=True)
    assert (fetched[0].offset, fetched[0].error) == (11, 0)
    coord.broker.txn.error = E.INVALID_TXN_STATE
    assert coord.txn_commit_offsets(**kw) == {("t", 0): E.INVALID_TXN_STATE}


async def test_retention_of_empty_groups_and_unsubscribed_topics(coord):
    now = 10_000_000
    commit(coord, [("t", 0), ("t", 1)], group="old")
    for c in coord.groups["old"].offsets.values():
        c.commit_timestamp = now - 61_000
    assert coord.expire_offsets(now) == 2
    assert "old" not in coord.groups
    # a Stable consumer group keeps offsets of subscribed topics, loses the others
    a = await first_member(coord)
    await sync(coord, 1, a.member_id)
    commit(coord, [("t", 0), ("gone", 0)], generation=1, member=a.member_id)
    for c in coord.groups["g"].offsets.values():
        c.commit_timestamp = now - 61_000
    assert coord.expire_offsets(now) == 1
    assert set(coord.groups["g"].offsets) == {("t", 0)}


async def test_delete_groups(coord):
    a = await first_member(coord)
    await sync(coord, 1, a.member_id)
    commit(coord, [("t", 0)], group="idle")
    assert await coord.delete_groups(["g", "idle", "nope"]) == {
        "g": E.NON_EMPTY_GROUP,
        "idle": 0,
        "nope": E.GROUP_ID_NOT_FOUND,
    }
    assert "idle" not in coord.groups
    assert coord.store.writes[-1] == ("delete_group", "idle", [("t", 0)])


async def test_failed_assignment_write_sends_everyone_back_to_join(coord):
    a = await first_member(coord)
    coord.store.fail = KafkaStorageError("disk gone")
    s = await sync(coord, 1, a.member_id, {a.member_id: b"x"})
    assert s.error == E.COORDINATOR_NOT_AVAILABLE
    assert coord.groups["g"].state is GroupState.PREPARING_REBALANCE


async def test_describe_and_list(coord):
    a = await first_member(coord)
    await sync(coord, 1, a.member_id, {a.member_id: b"A"})
    d = coord.describe_group("g")
    assert (d.state, d.protocol, d.members[0].assignment) == ("Stable", "range", b"A")
    assert coord.describe_group("nope").state == "Dead"
    _code, listed = coord.list_groups(["stable"])
    assert [g.group_id for g in listed] == ["g"]
    assert coord.list_groups(None, ["consumer"])[1] == []
