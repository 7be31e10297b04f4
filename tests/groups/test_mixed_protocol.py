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

import uuid

from kafka_wire import WireClient, assignment_bytes
from test_consumer_protocol import as_owned, create_topic, hb, join, owned
from test_groups_protocol import WireMember

from shazamq.broker.groups.conversion import decode_assignment
from shazamq.protocol.errors import ErrorCode as E
from shazamq.protocol.messages.consumer_group_describe_request import (
    ConsumerGroupDescribeRequest,
)
from shazamq.protocol.messages.describe_groups_request import DescribeGroupsRequest
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
