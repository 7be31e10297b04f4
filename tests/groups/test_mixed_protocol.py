"""Mixed groups at the wire: a classic group upgraded by a consumer-protocol member, its
classic members driven by the broker, and the way back when that member leaves.

Covers: the upgrade keeps the classic member's partitions and epoch; the classic member
is told REBALANCE_IN_PROGRESS, rejoins (no leader duties) and SyncGroup hands it the
server-side assignment; partitions never have two owners; offsets committed with the
generation (= member epoch) and ILLEGAL_GENERATION with a stale one; DescribeGroups and
ConsumerGroupDescribe list both kinds of members; the converted group survives a
restart; the last consumer member leaving makes the group classic again (a rebalance
with a leader); the ``disabled`` policy refuses the upgrade.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from kafka_wire import WireClient, assignment_bytes, subscription_bytes
from test_consumer_protocol import as_owned, create_topic, hb, join, owned
from test_groups_protocol import WireMember

from shazamq.broker.groups.conversion import decode_assignment
from shazamq.protocol.errors import ErrorCode as E
from shazamq.protocol.messages.consumer_group_describe_request import (
    ConsumerGroupDescribeRequest,
)
from shazamq.protocol.messages.describe_groups_request import DescribeGroupsRequest
from shazamq.protocol.messages.join_group_request import (
    JoinGroupRequest,
    JoinGroupRequestProtocol,
)
from shazamq.protocol.messages.list_groups_request import ListGroupsRequest


def classic_stable(b: str, group: str, topic: str) -> WireMember:
    m = WireMember(b, group, topic, session=10000)
    r = m.join_until_member()
    assert r.error_code == 0 and r.leader == m.member_id
    s = m.sync({m.member_id: assignment_bytes({topic: [0, 1, 2, 3]})})
    assert s.error_code == 0
    return m


def rejoin(m: WireMember) -> set[int]:
    """The classic member rejoins (after revoking everything, as an eager client does)
    and syncs; returns its partitions."""
    r = m.join()
    assert r.error_code == 0, r.error_code
    assert r.leader == "" and r.members == []  # the broker assigns
    s = m.sync()
    assert s.error_code == 0, s.error_code
    return {p for ps in decode_assignment(bytes(s.assignment)).values() for p in ps}


def test_upgrade_drive_classic_member_and_downgrade(broker_factory) -> None:
    broker = broker_factory()
    b = broker.bootstrap
    topic = f"mx-{uuid.uuid4().hex[:8]}"
    tid = create_topic(b, topic, 4)
    group = f"g-{uuid.uuid4().hex[:8]}"
    classic = classic_stable(b, group, topic)
    gen = classic.generation
    assert classic.commit(5) == 0

    # a consumer-protocol member joins: the group is converted, the classic member keeps
    # its four partitions (the newcomer gets none until they are released)
    c = WireClient(b)
    cm, r = join(c, group, [topic])
    assert r.error_code == 0, r.error_message
    assert owned(r) == {}
    listed = {g.group_id: g for g in c.call(ListGroupsRequest(), 5).groups}
    assert listed[group].group_type == "consumer"
    # the classic member's generation is its member epoch: its commit is still good
    assert classic.commit(6) == 0
    assert classic.heartbeat() == E.REBALANCE_IN_PROGRESS
    assert classic.commit(7, generation=gen - 1) == E.ILLEGAL_GENERATION

    # it rejoins owning nothing (eager): it keeps its target share at once
    mine = rejoin(classic)
    assert len(mine) == 2
    assert classic.heartbeat() == 0
    # the consumer member gets the two others, now released
    r = hb(c, group, cm, r.member_epoch, topic_partitions=[])
    assert r.error_code == 0
    theirs = owned(r).get(tid, set())
    assert theirs == {0, 1, 2, 3} - mine
    assert classic.commit(8) == 0  # with the new epoch

    d = c.call(ConsumerGroupDescribeRequest(group_ids=[group]), 0).groups[0]
    assert {m.member_id for m in d.members} == {cm, classic.member_id}
    dg = c.call(DescribeGroupsRequest(groups=[group]), 5).groups[0]
    assert dg.error_code == 0 and dg.protocol_type == "consumer"
    kinds = {m.member_id: bool(m.member_metadata) for m in dg.members}
    assert kinds == {classic.member_id: True, cm: False}  # classic members carry metadata

    # the converted group survives a restart
    broker.restart()
    c = WireClient(b)
    classic.client = WireClient(b)
    d = c.call(ConsumerGroupDescribeRequest(group_ids=[group]), 0).groups[0]
    assert d.error_code == 0 and {m.member_id for m in d.members} == {cm, classic.member_id}
    assert classic.heartbeat() == 0
    r = hb(c, group, cm, r.member_epoch, topic_partitions=as_owned({tid: theirs}))
    assert r.error_code == 0

    # the consumer member leaves: the group is classic again and rebalances
    assert hb(c, group, cm, -1).error_code == 0
    listed = {g.group_id: g for g in c.call(ListGroupsRequest(), 5).groups}
    assert listed[group].group_type == "classic"
    assert classic.heartbeat() == E.REBALANCE_IN_PROGRESS
    r = classic.join()
    assert r.error_code == 0 and r.leader == classic.member_id
    assert [m.member_id for m in r.members] == [classic.member_id]
    s = classic.sync({classic.member_id: assignment_bytes({topic: [0, 1, 2, 3]})})
    assert s.error_code == 0
    assert classic.heartbeat() == 0
    assert classic.commit(9) == 0
    broker.restart()
    c = WireClient(b)
    dg = c.call(DescribeGroupsRequest(groups=[group]), 5).groups[0]
    assert dg.error_code == 0 and dg.group_state == "Stable"
    assert [m.member_id for m in dg.members] == [classic.member_id]


def test_disabled_policy_refuses_the_upgrade(broker_factory) -> None:
    broker = broker_factory(groups__consumer_migration_policy="disabled")
    b = broker.bootstrap
    topic = f"mx-{uuid.uuid4().hex[:8]}"
    create_topic(b, topic, 2)
    group = f"g-{uuid.uuid4().hex[:8]}"
    classic_stable(b, group, topic)
    _, r = join(WireClient(b), group, [topic])
    assert r.error_code == E.GROUP_ID_NOT_FOUND
    assert "migration policy" in (r.error_message or "")


def consumer_group_of(b: str, group: str) -> set[str]:
    """The member ids ConsumerGroupDescribe lists for ``group``."""
    d = WireClient(b).call(ConsumerGroupDescribeRequest(group_ids=[group]), 0).groups[0]
    assert d.error_code == 0, d.error_code
    return {m.member_id for m in d.members}


def test_static_classic_member_replaced_in_consumer_group(broker_factory) -> None:
    broker = broker_factory()
    b = broker.bootstrap
    topic = f"mx-{uuid.uuid4().hex[:8]}"
    tid = create_topic(b, topic, 4)
    group = f"g-{uuid.uuid4().hex[:8]}"
    old = WireMember(b, group, topic, session=10000, instance="i-1")
    r = old.join_until_member()
    assert r.error_code == 0 and r.leader == old.member_id
    assert old.sync({old.member_id: assignment_bytes({topic: [0, 1, 2, 3]})}).error_code == 0
    c = WireClient(b)
    cm, r = join(c, group, [topic])
    assert r.error_code == 0, r.error_message
    mine = rejoin(old)
    assert len(mine) == 2
    r = hb(c, group, cm, r.member_epoch, topic_partitions=[])
    theirs = owned(r).get(tid, set())
    assert theirs == {0, 1, 2, 3} - mine
    epoch = r.member_epoch

    # the static member restarts: a new member id, the same instance id
    new = WireMember(b, group, topic, session=10000, instance="i-1")
    r = new.join()
    assert r.error_code == 0, r.error_code
    assert new.member_id != old.member_id
    assert new.generation == old.generation  # its predecessor's epoch...
    s = new.sync()
    assert s.error_code == 0
    assert {p for ps in decode_assignment(bytes(s.assignment)).values() for p in ps} == mine
    assert new.heartbeat() == 0
    assert new.commit(3) == 0
    # ... and no rebalance for the others
    r = hb(c, group, cm, epoch, topic_partitions=as_owned({tid: theirs}))
    assert r.error_code == 0 and r.member_epoch == epoch
    assert consumer_group_of(b, group) == {cm, new.member_id}

    # the old instance is fenced
    assert old.heartbeat() == E.FENCED_INSTANCE_ID
    assert old.sync().error_code == E.FENCED_INSTANCE_ID
    assert old.join().error_code == E.FENCED_INSTANCE_ID
    assert old.commit(4) == E.UNKNOWN_MEMBER_ID  # no such member of the consumer group

    # the replacement was written: a restart keeps it, with its partitions
    broker.restart()
    new.client = WireClient(b)
    assert consumer_group_of(b, group) == {cm, new.member_id}
    assert new.heartbeat() == 0
    s = new.sync()
    assert s.error_code == 0
    assert {p for ps in decode_assignment(bytes(s.assignment)).values() for p in ps} == mine


def test_consumer_group_size_limit_for_classic_members(broker_factory) -> None:
    broker = broker_factory(groups__consumer_max_size=2)
    b = broker.bootstrap
    topic = f"mx-{uuid.uuid4().hex[:8]}"
    create_topic(b, topic, 2)
    group = f"g-{uuid.uuid4().hex[:8]}"
    c = WireClient(b)
    cm, r = join(c, group, [topic])
    assert r.error_code == 0, r.error_message
    static = WireMember(b, group, topic, session=10000, instance="s-1")
    assert static.join().error_code == 0  # the second member: at the limit now
    extra = WireMember(b, group, topic, session=10000)
    assert extra.join().error_code == E.GROUP_MAX_SIZE_REACHED
    assert extra.member_id == ""
    _, r = join(WireClient(b), group, [topic])  # a consumer-protocol member too
    assert r.error_code == E.GROUP_MAX_SIZE_REACHED
    assert consumer_group_of(b, group) == {cm, static.member_id}
    # a restarted static member replaces its predecessor: the group does not grow
    again = WireMember(b, group, topic, session=10000, instance="s-1")
    assert again.join().error_code == 0
    assert consumer_group_of(b, group) == {cm, again.member_id}

    # a classic group as large as the limit is not upgraded
    classic_group = f"g-{uuid.uuid4().hex[:8]}"
    first = WireMember(b, classic_group, topic, session=10000)
    second = WireMember(b, classic_group, topic, session=10000)
    assert first.join_until_member().error_code == 0
    assert first.sync({first.member_id: assignment_bytes({topic: [0, 1]})}).error_code == 0
    with ThreadPoolExecutor(1) as pool:
        joined = pool.submit(second.join_until_member)  # parked until first rejoins
        deadline = time.monotonic() + 30
        while first.heartbeat() != E.REBALANCE_IN_PROGRESS:
            assert time.monotonic() < deadline, "no rebalance for the second member"
            time.sleep(0.05)
        assert first.join().error_code == 0
        assert joined.result(30).error_code == 0
    _, r = join(WireClient(b), classic_group, [topic])
    assert r.error_code == E.GROUP_ID_NOT_FOUND
    assert "consumer_max_size" in (r.error_message or "")


def classic_join(m: WireMember, rebalance_ms: int):
    """A JoinGroup of ``m`` with its own rebalance timeout (WireMember's is 5 s)."""
    r = m.client.call(
        JoinGroupRequest(
            group_id=m.group,
            session_timeout_ms=m.session,
            rebalance_timeout_ms=rebalance_ms,
            member_id=m.member_id,
            group_instance_id=m.instance,
            protocol_type="consumer",
            protocols=[
                JoinGroupRequestProtocol(name=m.protocol, metadata=subscription_bytes([m.topic]))
            ],
        ),
        5,
    )
    if r.error_code in (0, E.MEMBER_ID_REQUIRED):
        m.member_id = r.member_id
    if r.error_code == 0:
        m.generation = r.generation_id
    return r


def test_classic_member_without_sync_is_removed(broker_factory) -> None:
    broker = broker_factory()
    b = broker.bootstrap
    topic = f"mx-{uuid.uuid4().hex[:8]}"
    create_topic(b, topic, 2)
    group = f"g-{uuid.uuid4().hex[:8]}"
    c = WireClient(b)
    cm, r = join(c, group, [topic])
    assert r.error_code == 0, r.error_message
    # both join with a session far longer than their rebalance timeout: only the missing
    # SyncGroup can remove the silent one
    silent = WireMember(b, group, topic, session=60000)
    synced = WireMember(b, group, topic, session=60000)
    for m in (silent, synced):
        r = classic_join(m, 1500)
        if r.error_code == E.MEMBER_ID_REQUIRED:
            r = classic_join(m, 1500)
        assert r.error_code == 0, r.error_code
    assert synced.sync().error_code in (0, E.REBALANCE_IN_PROGRESS)
    assert consumer_group_of(b, group) == {cm, silent.member_id, synced.member_id}
    deadline = time.monotonic() + 30
    while silent.member_id in consumer_group_of(b, group):
        assert time.monotonic() < deadline, "the member that never synced is still there"
        time.sleep(0.1)
    assert consumer_group_of(b, group) == {cm, synced.member_id}
    assert silent.sync().error_code == E.UNKNOWN_MEMBER_ID
    assert silent.heartbeat() == E.UNKNOWN_MEMBER_ID
