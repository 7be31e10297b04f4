"""Share groups (KIP-932) at the wire: exact requests, states and error codes.

Covers: ApiVersions advertising the share APIs and share.version; heartbeat errors
(UNKNOWN_MEMBER_ID, FENCED_MEMBER_EPOCH, INVALID_REQUEST) and the simple assignment;
members of one partition getting distinct records; share session errors
(SHARE_SESSION_NOT_FOUND, INVALID_SHARE_SESSION_EPOCH, acknowledgements on an opening
request); invalid acknowledgements (INVALID_RECORD_STATE, INVALID_REQUEST); REJECT and the
delivery limit archiving records for good; latest/earliest start; read_committed skipping
aborted records; group settings validated with INVALID_CONFIG; ListGroups, DescribeGroups,
ShareGroupDescribe and DeleteGroups; state kept over a restart; malformed bytes.
"""

from __future__ import annotations

import struct
import uuid

import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)
from kafka_helpers import closed_by_peer
from kafka_wire import WireClient
from share_wire import (
    ShareMember,
    acquired,
    create_topic,
    heartbeat,
    offsets,
    produce,
    set_group,
    values,
)

from shazamq.protocol.errors import ErrorCode as E
from shazamq.protocol.messages.api_versions_request import ApiVersionsRequest
from shazamq.protocol.messages.consumer_group_heartbeat_request import (
    ConsumerGroupHeartbeatRequest,
)
from shazamq.protocol.messages.delete_groups_request import DeleteGroupsRequest
from shazamq.protocol.messages.describe_groups_request import DescribeGroupsRequest
from shazamq.protocol.messages.join_group_request import (
    JoinGroupRequest,
    JoinGroupRequestProtocol,
)
from shazamq.protocol.messages.list_groups_request import ListGroupsRequest
from shazamq.protocol.messages.share_group_describe_request import ShareGroupDescribeRequest

pytestmark = pytest.mark.timeout(120)

ACCEPT, RELEASE, REJECT = 1, 2, 3
BROKER = {
    "groups__share_state_topic_num_partitions": 2,
    "groups__share_min_record_lock_duration_ms": 300,
}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):
    from tests.conftest import BrokerProcess

    b = BrokerProcess(tmp_path_factory.mktemp("share") / "data", **BROKER).start(timeout=120)
    yield b
    b.stop()


def setup(bootstrap: str, n: int = 10, **settings: str) -> tuple[str, str, uuid.UUID]:
    topic, group = f"t-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    tid = create_topic(bootstrap, topic, 1)
    set_group(bootstrap, group, share_auto_offset_reset="earliest", **settings)
    if n:
        produce(bootstrap, topic, [f"v{i}".encode() for i in range(n)])
    return topic, group, tid


def member(broker, group: str, topic: str, tid: uuid.UUID) -> ShareMember:
    m = ShareMember(broker.bootstrap, group, topic, tid)
    m.join()
    return m


def test_api_versions_advertise_share_apis_and_feature(broker):
    r = WireClient(broker.bootstrap).call(
        ApiVersionsRequest(client_software_name="t", client_software_version="1"), 3
    )
    keys = {k.api_key: (k.min_version, k.max_version) for k in r.api_keys}
    assert keys[76] == (0, 1) and keys[77] == (0, 1)
    assert keys[78] == (0, 2) and keys[79] == (0, 2)
    assert {(f.name, f.max_version_level) for f in r.finalized_features} >= {("share.version", 1)}


def test_heartbeat_errors_and_assignment(broker):
    topic, group, tid = setup(broker.bootstrap, 0)
    c = WireClient(broker.bootstrap)
    assert heartbeat(c, group, "", 0, [topic]).error_code == E.INVALID_REQUEST
    assert heartbeat(c, group, "m1", 0, None).error_code == E.INVALID_REQUEST
    r = heartbeat(c, group, "nobody", 3, None)
    assert r.error_code == E.UNKNOWN_MEMBER_ID
    a = heartbeat(c, group, "m1", 0, [topic])
    assert a.error_code == 0 and a.member_epoch >= 1 and a.heartbeat_interval_ms == 5000
    assert [(t.topic_id, t.partitions) for t in a.assignment.topic_partitions] == [(tid, [0])]
    b = heartbeat(c, group, "m2", 0, [topic])
    # every member of a share group gets every partition it subscribes to
    assert [(t.topic_id, t.partitions) for t in b.assignment.topic_partitions] == [(tid, [0])]
    assert heartbeat(c, group, "m1", a.member_epoch + 7, None).error_code == E.FENCED_MEMBER_EPOCH
    again = heartbeat(c, group, "m1", a.member_epoch, None)
    assert again.error_code == 0 and again.member_epoch == b.member_epoch
    d = c.call(ShareGroupDescribeRequest(group_ids=[group, "no-such-group"]), 1)
    assert d.groups[0].error_code == 0 and d.groups[0].group_state == "Stable"
    assert sorted(m.member_id for m in d.groups[0].members) == ["m1", "m2"]
    assert d.groups[1].error_code == E.GROUP_ID_NOT_FOUND
    assert heartbeat(c, group, "m2", -1, None).member_epoch == -1
    assert heartbeat(c, group, "m2", 1, None).error_code == E.UNKNOWN_MEMBER_ID


def test_members_of_one_partition_get_distinct_records(broker):
    topic, group, tid = setup(broker.bootstrap, 12)
    a, b, c = (member(broker, group, topic, tid) for _ in range(3))
    ra = a.fetch(max_records=5)
    rb = b.fetch(max_records=5)
    rc = c.fetch(max_records=5)
    assert ra.acquisition_lock_timeout_ms == 30000
    assert offsets(ra) == [0, 1, 2, 3, 4]
    assert offsets(rb) == [5, 6, 7, 8, 9]
    assert offsets(rc) == [10, 11]
    assert values(ra) == {i: f"v{i}".encode() for i in range(5)}
    assert values(rc) == {10: b"v10", 11: b"v11"}
    # acknowledgements ride on the next fetch; a's accepted records are gone for good
    r = a.fetch([(0, 4, [ACCEPT])], max_records=5)
    assert r.responses[0].partitions[0].acknowledge_error_code == 0
    assert offsets(r) == []
    # b releases two: they go to the next fetch, delivered a second time
    assert b.acknowledge([(5, 6, [RELEASE])]).responses[0].partitions[0].error_code == 0
    assert acquired(a.fetch(max_records=5)) == [(5, 6, 2)]


def test_share_session_errors(broker):
    topic, group, tid = setup(broker.bootstrap, 3)
    m = member(broker, group, topic, tid)
    # a session is opened by fetching, not acknowledging
    assert m.acknowledge([(0, 0, [ACCEPT])], session_epoch=0).error_code == (
        E.INVALID_SHARE_SESSION_EPOCH
    )
    assert m.fetch(session_epoch=4).error_code == E.SHARE_SESSION_NOT_FOUND
    assert m.fetch([(0, 0, [ACCEPT])], session_epoch=0).error_code == E.INVALID_REQUEST
    assert offsets(m.fetch()) == [0, 1, 2]
    assert m.fetch(session_epoch=7).error_code == E.INVALID_SHARE_SESSION_EPOCH
    stranger = ShareMember(broker.bootstrap, group, topic, tid)  # never joined
    assert stranger.fetch().error_code == E.UNKNOWN_MEMBER_ID
    # closing the session frees what the member holds
    assert m.fetch(session_epoch=-1).error_code == 0
    other = member(broker, group, topic, tid)
    assert acquired(other.fetch()) == [(0, 2, 2)]


@pytest.mark.parametrize(
    ("acks", "code"),
    [
        ([(3, 2, [ACCEPT])], E.INVALID_REQUEST),  # reversed
        ([(0, 2, [ACCEPT, ACCEPT])], E.INVALID_REQUEST),  # neither one type nor one each
        ([(0, 0, [7])], E.INVALID_REQUEST),  # unknown type
        ([(0, 0, [4])], E.INVALID_REQUEST),  # RENEW needs version 2
        ([(0, 1, [ACCEPT]), (1, 2, [ACCEPT])], E.INVALID_REQUEST),  # overlapping
        ([(0, 5, [ACCEPT])], E.INVALID_RECORD_STATE),  # past what it holds
    ],
)
def test_invalid_acknowledgements(broker, acks, code):
    topic, group, tid = setup(broker.bootstrap, 3)
    m = member(broker, group, topic, tid)
    assert offsets(m.fetch()) == [0, 1, 2]
    r = m.acknowledge(acks)
    assert r.error_code == 0 and r.responses[0].partitions[0].error_code == code
    # nothing was applied: the records are still this member's to accept
    ok = m.acknowledge([(0, 2, [ACCEPT])])
    assert ok.responses[0].partitions[0].error_code == 0


def test_acknowledging_anothers_records_is_refused(broker):
    topic, group, tid = setup(broker.bootstrap, 4)
    a, b = member(broker, group, topic, tid), member(broker, group, topic, tid)
    assert offsets(a.fetch(max_records=2)) == [0, 1]
    r = b.fetch([(0, 1, [ACCEPT])], session_epoch=0)
    assert r.error_code == E.INVALID_REQUEST  # not on an opening request
    b.fetch(max_records=0)
    r = b.fetch([(0, 1, [ACCEPT])], max_records=0)
    assert r.responses[0].partitions[0].acknowledge_error_code == E.INVALID_RECORD_STATE


def test_rejected_and_over_delivered_records_are_archived(broker):
    topic, group, tid = setup(broker.bootstrap, 4, share_delivery_count_limit="2")
    a, b = member(broker, group, topic, tid), member(broker, group, topic, tid)
    assert offsets(a.fetch()) == [0, 1, 2, 3]
    # 0 rejected; 1 and 2 released (first delivery), 3 accepted
    a.acknowledge([(0, 0, [REJECT]), (1, 2, [RELEASE]), (3, 3, [ACCEPT])])
    assert acquired(b.fetch()) == [(1, 2, 2)]
    b.acknowledge([(1, 2, [RELEASE])])  # the second delivery was the last allowed
    for m in (a, b):
        assert offsets(m.fetch(max_wait_ms=200)) == []
    produce(broker.bootstrap, topic, [b"late"])
    r = a.fetch(max_wait_ms=5000)
    assert acquired(r) == [(4, 4, 1)] and values(r) == {4: b"late"}


def test_lock_expiry_and_renew(broker):
    topic, group, tid = setup(broker.bootstrap, 2, share_record_lock_duration_ms="400")
    a, b = member(broker, group, topic, tid), member(broker, group, topic, tid)
    assert offsets(a.fetch()) == [0, 1]
    # b waits: the locks end within its wait, and it gets them (a second delivery)
    r = b.fetch(max_wait_ms=5000)
    assert acquired(r) == [(0, 1, 2)]
    assert b.acknowledge([(0, 1, [ACCEPT])]).responses[0].partitions[0].error_code == 0


def test_a_member_whose_session_ends_loses_its_records(broker):
    topic, group, tid = setup(
        broker.bootstrap,
        3,
        share_session_timeout_ms="1000",
        share_heartbeat_interval_ms="500",
        share_record_lock_duration_ms="60000",
    )
    a, b = member(broker, group, topic, tid), member(broker, group, topic, tid)
    assert offsets(a.fetch()) == [0, 1, 2]
    # a never heartbeats again; b keeps its membership and waits for the records
    got: list[tuple[int, int, int]] = []
    for _ in range(20):
        r = heartbeat(b.c, group, b.member_id, b.epoch, None)
        assert r.error_code == 0
        b.epoch = r.member_epoch
        got = acquired(b.fetch(max_wait_ms=400))
        if got:
            break
    assert got == [(0, 2, 2)]  # long before the locks' minute: a's session ended
    r = heartbeat(a.c, group, a.member_id, a.epoch, None)
    assert r.error_code == E.UNKNOWN_MEMBER_ID


def test_a_session_left_open_by_a_departed_member_is_closed(broker):
    import time

    topic, group, tid = setup(broker.bootstrap, 2, share_record_lock_duration_ms="400")
    a = member(broker, group, topic, tid)
    assert offsets(a.fetch()) == [0, 1]
    assert heartbeat(a.c, group, a.member_id, -1, None).error_code == 0
    code = 0
    deadline = time.monotonic() + 20
    while code == 0 and time.monotonic() < deadline:
        code = a.fetch(max_records=0).error_code  # the session serves until it is closed
        time.sleep(0.1)
    assert code == E.SHARE_SESSION_NOT_FOUND
    b = member(broker, group, topic, tid)
    assert acquired(b.fetch()) == [(0, 1, 2)]


def test_latest_start_skips_what_was_there(broker):
    topic, group = f"t-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    tid = create_topic(broker.bootstrap, topic, 1)
    produce(broker.bootstrap, topic, [b"old"] * 3)
    m = member(broker, group, topic, tid)
    assert offsets(m.fetch(max_wait_ms=100)) == []
    produce(broker.bootstrap, topic, [b"new"])
    r = m.fetch(max_wait_ms=5000)
    assert values(r) == {3: b"new"}


def test_read_committed_skips_aborted_records(broker):
    topic, group, tid = setup(broker.bootstrap, 0, share_isolation_level="read_committed")
    p = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": uuid.uuid4().hex})
    p.init_transactions(15)
    p.begin_transaction()
    p.produce(topic, b"aborted", partition=0)
    p.flush(15)
    p.abort_transaction(15)
    p.begin_transaction()
    p.produce(topic, b"committed", partition=0)
    p.commit_transaction(15)
    m = member(broker, group, topic, tid)
    r = m.fetch(max_wait_ms=3000)
    assert list(values(r).values()) == [b"committed"]


def test_group_settings_are_validated(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    group = f"g-{uuid.uuid4().hex[:8]}"
    bad = [
        ("share.auto.offset.reset", "sometimes", "latest or earliest"),
        ("share.record.lock.duration.ms", "100", "between 300 and 60000"),
        ("share.delivery.count.limit", "99", "between 2 and 10"),
        ("share.isolation.level", "dirty", "read_committed"),
        ("share.session.timeout.ms", "x", "integer"),
        ("share.session.timeout.ms", "2000", "must be lower than share.session.timeout.ms"),
        ("no.such.setting", "1", "not a group setting"),
    ]
    for name, value, words in bad:
        res = ConfigResource(
            ResourceType.GROUP,
            group,
            incremental_configs=[
                ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
            ],
        )
        with pytest.raises(KafkaException) as exc:
            admin.incremental_alter_configs([res])[res].result(15)
        assert exc.value.args[0].code() == E.INVALID_CONFIG and words in str(exc.value), name
    set_group(broker.bootstrap, group, share_delivery_count_limit="3")
    res = ConfigResource(ResourceType.GROUP, group)
    got = admin.describe_configs([res])[res].result(15)
    assert got["share.delivery.count.limit"].value == "3"
    assert not got["share.delivery.count.limit"].is_default
    assert got["share.record.lock.duration.ms"].value == "30000"
    assert got["share.record.lock.duration.ms"].is_default


def test_list_describe_delete_groups(broker):
    topic, group, tid = setup(broker.bootstrap, 1)
    m = member(broker, group, topic, tid)
    c = WireClient(broker.bootstrap)
    listed = c.call(ListGroupsRequest(types_filter=["share"]), 5)
    mine = [g for g in listed.groups if g.group_id == group]
    assert [(g.group_type, g.protocol_type, g.group_state) for g in mine] == [
        ("share", "share", "Stable")
    ]
    assert group not in {
        g.group_id for g in c.call(ListGroupsRequest(types_filter=["consumer"]), 5).groups
    }
    d = c.call(DescribeGroupsRequest(groups=[group]), 5)
    assert d.groups[0].error_code == E.GROUP_ID_NOT_FOUND
    # the id is a share group's: classic and consumer-protocol members are turned away
    join = c.call(
        JoinGroupRequest(
            group_id=group,
            session_timeout_ms=10000,
            rebalance_timeout_ms=10000,
            member_id="",
            protocol_type="consumer",
            protocols=[JoinGroupRequestProtocol(name="range", metadata=b"")],
        ),
        5,
    )
    assert join.error_code == E.INCONSISTENT_GROUP_PROTOCOL
    chb = c.call(
        ConsumerGroupHeartbeatRequest(
            group_id=group,
            member_id=uuid.uuid4().hex,
            member_epoch=0,
            rebalance_timeout_ms=5000,
            subscribed_topic_names=[topic],
            topic_partitions=[],
        ),
        1,
    )
    assert chb.error_code == E.GROUP_ID_NOT_FOUND
    r = c.call(DeleteGroupsRequest(groups_names=[group]), 2)
    assert r.results[0].error_code == E.NON_EMPTY_GROUP
    heartbeat(m.c, group, m.member_id, -1, None)
    r = c.call(DeleteGroupsRequest(groups_names=[group]), 2)
    assert r.results[0].error_code == 0
    listed = c.call(ListGroupsRequest(types_filter=["share"]), 5)
    assert group not in {g.group_id for g in listed.groups}


def test_malformed_share_requests_close_the_connection(broker):
    for key, version in ((76, 1), (78, 1), (79, 1)):
        c = WireClient(broker.bootstrap)
        body = struct.pack(">hhih", key, version, 1, 4) + b"test" + b"\x00" + b"\xff\xff\xff"
        c.sock.sendall(struct.pack(">i", len(body)) + body)
        assert closed_by_peer(c.sock, 10)


def test_restart_keeps_the_state(tmp_path):
    from tests.conftest import BrokerProcess

    b = BrokerProcess(tmp_path / "data", **BROKER).start(timeout=120)
    try:
        topic, group, tid = setup(b.bootstrap, 6, share_delivery_count_limit="2")
        m = member(b, group, topic, tid)
        assert offsets(m.fetch()) == [0, 1, 2, 3, 4, 5]
        m.acknowledge([(0, 1, [ACCEPT]), (2, 2, [REJECT]), (3, 3, [RELEASE])])
        b.stop()
        b.start(timeout=120)
        m = member(b, group, topic, tid)
        # 0-2 finished; 3 released and 4-5 held when the broker stopped: delivered again,
        # each for the second time (the delivery counts were persisted with the window)
        r = m.fetch(max_wait_ms=3000)
        assert acquired(r) == [(3, 5, 2)]
        assert values(r) == {3: b"v3", 4: b"v4", 5: b"v5"}
        listed = WireClient(b.bootstrap).call(ListGroupsRequest(types_filter=["share"]), 5)
        assert group in {g.group_id for g in listed.groups}
        admin = AdminClient({"bootstrap.servers": b.bootstrap})
        res = ConfigResource(ResourceType.GROUP, group)
        conf = admin.describe_configs([res])[res].result(15)
        assert conf["share.delivery.count.limit"].value == "2"
    finally:
        b.stop()
