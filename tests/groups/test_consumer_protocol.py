"""The consumer group protocol (KIP-848) at the wire: exact heartbeats and error codes.

Covers: joining, the assignment by topic id and the heartbeat interval; a second member
joining makes the first revoke before the partitions move (incremental reconciliation);
FENCED_MEMBER_EPOCH, UNKNOWN_MEMBER_ID, INVALID_REGULAR_EXPRESSION (lookaround is not
RE2), UNSUPPORTED_ASSIGNOR, UNRELEASED_INSTANCE_ID; OffsetCommit v9 with member epochs
(STALE_MEMBER_EPOCH, UNKNOWN_MEMBER_ID); ListGroups type filters; ConsumerGroupDescribe;
ApiVersions advertising the APIs and group.version; the group surviving a restart.
"""

from __future__ import annotations

import uuid

from confluent_kafka.admin import AdminClient, NewTopic
from kafka_wire import WireClient

from shazamq.protocol.errors import ErrorCode as E
from shazamq.protocol.messages.api_versions_request import ApiVersionsRequest
from shazamq.protocol.messages.consumer_group_describe_request import (
    ConsumerGroupDescribeRequest,
)
from shazamq.protocol.messages.consumer_group_heartbeat_request import (
    ConsumerGroupHeartbeatRequest,
    TopicPartitions,
)
from shazamq.protocol.messages.list_groups_request import ListGroupsRequest
from shazamq.protocol.messages.metadata_request import MetadataRequest, MetadataRequestTopic
from shazamq.protocol.messages.offset_commit_request import (
    OffsetCommitRequest,
    OffsetCommitRequestPartition,
    OffsetCommitRequestTopic,
)

HB_V = 1


def create_topic(bootstrap: str, name: str, partitions: int) -> uuid.UUID:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[
        name
    ].result(timeout=15)
    c = WireClient(bootstrap)
    r = c.call(MetadataRequest(topics=[MetadataRequestTopic(name=name)]), 12)
    return r.topics[0].topic_id


def hb(c: WireClient, group: str, member: str, epoch: int, **kw: object):
    req = ConsumerGroupHeartbeatRequest(group_id=group, member_id=member, member_epoch=epoch, **kw)
    return c.call(req, HB_V)


def join(c: WireClient, group: str, topics: list[str], **kw: object):
    member = uuid.uuid4().hex
    kw.setdefault("subscribed_topic_names", topics)
    return member, hb(c, group, member, 0, rebalance_timeout_ms=5000, topic_partitions=[], **kw)


def owned(r) -> dict[uuid.UUID, set[int]]:
    return {tp.topic_id: set(tp.partitions) for tp in r.assignment.topic_partitions}


def as_owned(parts: dict[uuid.UUID, set[int]]) -> list[TopicPartitions]:
    return [TopicPartitions(topic_id=t, partitions=sorted(ps)) for t, ps in parts.items()]


def test_join_revoke_then_assign(shared_broker) -> None:
    b = shared_broker.bootstrap
    topic = f"cg-{uuid.uuid4().hex[:8]}"
    tid = create_topic(b, topic, 4)
    group = f"g-{uuid.uuid4().hex[:8]}"
    c = WireClient(b)
    m1, r = join(c, group, [topic])
    assert r.error_code == 0, r.error_message
    assert r.member_epoch >= 1 and r.heartbeat_interval_ms > 0
    assert owned(r) == {tid: {0, 1, 2, 3}}
    e1 = r.member_epoch
    # the second member joins: it gets nothing until m1 released its share
    m2, r2 = join(c, group, [topic])
    assert r2.error_code == 0
    assert sum(len(ps) for ps in owned(r2).values()) == 0
    r = hb(c, group, m1, e1, topic_partitions=as_owned({tid: {0, 1, 2, 3}}))
    assert r.error_code == 0
    assert r.member_epoch == e1  # the epoch moves once the revocation is confirmed
    kept = owned(r)[tid]
    assert len(kept) == 2
    r2 = hb(c, group, m2, r2.member_epoch, topic_partitions=[])
    assert r2.error_code == 0 and (r2.assignment is None or not owned(r2).get(tid))
    r = hb(c, group, m1, e1, topic_partitions=as_owned({tid: kept}))
    assert r.error_code == 0 and r.member_epoch > e1
    r2 = hb(c, group, m2, r2.member_epoch, topic_partitions=[])
    assert r2.error_code == 0
    assert owned(r2)[tid] == {0, 1, 2, 3} - kept
    # describe and list
    d = c.call(ConsumerGroupDescribeRequest(group_ids=[group]), 0).groups[0]
    assert d.error_code == 0 and {m.member_id for m in d.members} == {m1, m2}
    listed = c.call(ListGroupsRequest(types_filter=["consumer"]), 5).groups
    assert any(g.group_id == group and g.group_type == "consumer" for g in listed)
    assert all(
        g.group_id != group for g in c.call(ListGroupsRequest(types_filter=["classic"]), 5).groups
    )
    # leaving
    assert hb(c, group, m1, -1).member_epoch == -1
    assert hb(c, group, m2, -1).error_code == 0


def test_error_paths(shared_broker) -> None:
    b = shared_broker.bootstrap
    topic = f"cg-{uuid.uuid4().hex[:8]}"
    tid = create_topic(b, topic, 2)
    group = f"g-{uuid.uuid4().hex[:8]}"
    c = WireClient(b)
    m1, r = join(c, group, [topic])
    epoch = r.member_epoch
    assert hb(c, group, m1, epoch + 5, topic_partitions=[]).error_code == E.FENCED_MEMBER_EPOCH
    assert hb(c, group, "nobody", 3).error_code == E.UNKNOWN_MEMBER_ID
    _, r = join(c, group, [], subscribed_topic_names=None, subscribed_topic_regex="(?=x).*")
    assert r.error_code == E.INVALID_REGULAR_EXPRESSION and "RE2" in r.error_message
    _, r = join(c, group, [], subscribed_topic_names=None, subscribed_topic_regex="(a")
    assert r.error_code == E.INVALID_REGULAR_EXPRESSION
    _, r = join(c, group, [topic], server_assignor="sticky")
    assert r.error_code == E.UNSUPPORTED_ASSIGNOR
    _, r = join(c, group, [topic], instance_id="inst")
    assert r.error_code == 0
    _, r2 = join(c, group, [topic], instance_id="inst")
    assert r2.error_code == E.UNRELEASED_INSTANCE_ID

    def commit(member: str, epoch: int) -> int:
        req = OffsetCommitRequest(
            group_id=group,
            generation_id_or_member_epoch=epoch,
            member_id=member,
            topics=[
                OffsetCommitRequestTopic(
                    name=topic,
                    partitions=[
                        OffsetCommitRequestPartition(partition_index=0, committed_offset=1)
                    ],
                )
            ],
        )
        return c.call(req, 9).topics[0].partitions[0].error_code

    assert commit(m1, epoch) == 0
    assert commit(m1, epoch + 1) == E.STALE_MEMBER_EPOCH
    assert commit("nobody", epoch) == E.UNKNOWN_MEMBER_ID
    assert tid is not None


def test_api_versions_and_regex_and_restart(broker_factory) -> None:
    broker = broker_factory()
    b = broker.bootstrap
    c = WireClient(b)
    av = c.call(ApiVersionsRequest(client_software_name="t", client_software_version="1"), 3)
    keys = {k.api_key: (k.min_version, k.max_version) for k in av.api_keys}
    assert keys[68] == (0, 1) and keys[69] == (0, 0)
    assert {f.name: f.max_version_level for f in av.finalized_features}["group.version"] == 1
    t1 = create_topic(b, "orders-eu", 3)
    t2 = create_topic(b, "orders-us", 3)
    create_topic(b, "payments", 3)
    group = "regex-group"
    m1, r = join(c, group, [], subscribed_topic_names=None, subscribed_topic_regex="orders-.*")
    assert r.error_code == 0
    assert owned(r) == {t1: {0, 1, 2}, t2: {0, 1, 2}}
    epoch = r.member_epoch
    c.close() if hasattr(c, "close") else None
    broker.restart()
    c = WireClient(b)
    d = c.call(ConsumerGroupDescribeRequest(group_ids=[group]), 0).groups[0]
    assert d.error_code == 0, d
    assert d.group_epoch == epoch and [m.member_id for m in d.members] == [m1]
    assert d.members[0].subscribed_topic_regex == "orders-.*"
    parts = {tp.topic_name: set(tp.partitions) for tp in d.members[0].assignment.topic_partitions}
    assert parts == {"orders-eu": {0, 1, 2}, "orders-us": {0, 1, 2}}
    r = hb(c, group, m1, epoch, topic_partitions=as_owned({t1: {0, 1, 2}, t2: {0, 1, 2}}))
    assert r.error_code == 0 and r.member_epoch == epoch
