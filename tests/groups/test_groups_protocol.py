"""The group protocol at the wire: exact requests, exact error codes, real timers.

Covers: a member that stops heartbeating expelled after its session timeout while the
other member is told to rebalance and ends up alone in the next generation; the
MEMBER_ID_REQUIRED round; UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION, INVALID_SESSION_TIMEOUT,
REBALANCE_IN_PROGRESS and INCONSISTENT_GROUP_PROTOCOL; static membership (a restarted
instance takes over without a rebalance and its old member id is FENCED_INSTANCE_ID;
LeaveGroup by instance id); FindCoordinator for groups and transactions, batched and
not; the admin APIs through confluent-kafka's AdminClient (list, describe, offsets,
alter offsets, delete with NON_EMPTY_GROUP) and OffsetDelete (GROUP_SUBSCRIBED_TO_TOPIC);
the group and transaction metrics on the Prometheus endpoint (lag per partition).
"""

from __future__ import annotations

import threading
import time
import urllib.request
import uuid
from concurrent.futures import Future, ThreadPoolExecutor

from confluent_kafka import ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka_wire import WireClient, assignment_bytes, subscription_bytes

from shazamq.protocol.errors import ErrorCode as E
from shazamq.protocol.messages.describe_groups_request import DescribeGroupsRequest
from shazamq.protocol.messages.find_coordinator_request import FindCoordinatorRequest
from shazamq.protocol.messages.heartbeat_request import HeartbeatRequest
from shazamq.protocol.messages.join_group_request import (
    JoinGroupRequest,
    JoinGroupRequestProtocol,
)
from shazamq.protocol.messages.leave_group_request import LeaveGroupRequest, MemberIdentity
from shazamq.protocol.messages.offset_commit_request import (
    OffsetCommitRequest,
    OffsetCommitRequestPartition,
    OffsetCommitRequestTopic,
)
from shazamq.protocol.messages.offset_delete_request import (
    OffsetDeleteRequest,
    OffsetDeleteRequestPartition,
    OffsetDeleteRequestTopic,
)
from shazamq.protocol.messages.sync_group_request import (
    SyncGroupRequest,
    SyncGroupRequestAssignment,
)

JOIN_V = 5
SYNC_V = 3
HB_V = 3


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[
        name
    ].result(timeout=15)


class WireMember:
    """One group member speaking the protocol by hand."""

    def __init__(self, bootstrap: str, group: str, topic: str, **kw: object) -> None:
        self.client = WireClient(bootstrap)
        self.group = group
        self.topic = topic
        self.member_id = ""
        self.generation = -1
        self.instance = kw.get("instance")
        self.session = int(kw.get("session", 1000))  # type: ignore[call-overload]
        self.protocol = str(kw.get("protocol", "range"))

    def join(self, version: int = JOIN_V):
        r = self.client.call(
            JoinGroupRequest(
                group_id=self.group,
                session_timeout_ms=self.session,
                rebalance_timeout_ms=5000,
                member_id=self.member_id,
                group_instance_id=self.instance,
                protocol_type="consumer",
                protocols=[
                    JoinGroupRequestProtocol(
                        name=self.protocol, metadata=subscription_bytes([self.topic])
                    )
                ],
            ),
            version,
        )
        if r.error_code in (0, E.MEMBER_ID_REQUIRED):
            self.member_id = r.member_id
        if r.error_code == 0:
            self.generation = r.generation_id
        return r

    def join_until_member(self):
        r = self.join()
        if r.error_code == E.MEMBER_ID_REQUIRED:
            r = self.join()
        return r

    def sync(self, assignments: dict[str, bytes] | None = None):
        return self.client.call(
            SyncGroupRequest(
                group_id=self.group,
                generation_id=self.generation,
                member_id=self.member_id,
                group_instance_id=self.instance,
                assignments=[
                    SyncGroupRequestAssignment(member_id=m, assignment=a)
                    for m, a in (assignments or {}).items()
                ],
            ),
            SYNC_V,
        )

    def heartbeat(self, generation: int | None = None) -> int:
        return self.client.call(
            HeartbeatRequest(
                group_id=self.group,
                generation_id=self.generation if generation is None else generation,
                member_id=self.member_id,
                group_instance_id=self.instance,
            ),
            HB_V,
        ).error_code

    def commit(self, offset: int, generation: int | None = None) -> int:
        r = self.client.call(
            OffsetCommitRequest(
                group_id=self.group,
                generation_id_or_member_epoch=(
                    self.generation if generation is None else generation
                ),
                member_id=self.member_id,
                group_instance_id=self.instance,
                topics=[
                    OffsetCommitRequestTopic(
                        name=self.topic,
                        partitions=[
                            OffsetCommitRequestPartition(partition_index=0, committed_offset=offset)
                        ],
                    )
                ],
            ),
            7,
        )
        return r.topics[0].partitions[0].error_code

    def close(self) -> None:
        self.client.close()


def describe(bootstrap: str, group: str):
    with WireClient(bootstrap) as c:
        return c.call(DescribeGroupsRequest(groups=[group]), 4).groups[0]


def test_silent_member_is_expelled_after_its_session_timeout(shared_broker):
    bootstrap = shared_broker.bootstrap
    topic, group = f"st-{uuid.uuid4().hex[:8]}", f"st-g-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, 2)
    a = WireMember(bootstrap, group, topic)
    b = WireMember(bootstrap, group, topic)
    pool = ThreadPoolExecutor(2)
    try:
        ra = a.join_until_member()
        assert (ra.error_code, ra.generation_id, ra.leader) == (0, 1, a.member_id)
        assert a.sync({a.member_id: assignment_bytes({topic: [0, 1]})}).error_code == 0
        assert b.join().error_code == E.MEMBER_ID_REQUIRED
        b_join: Future = pool.submit(b.join)  # parked until a rejoins
        time.sleep(0.2)
        assert a.heartbeat() == E.REBALANCE_IN_PROGRESS
        ra = a.join()
        rb = b_join.result(10)
        assert ra.generation_id == rb.generation_id == 2
        assert sorted(m.member_id for m in ra.members) == sorted([a.member_id, b.member_id])
        b_sync = pool.submit(b.sync)
        assigned = {a.member_id: assignment_bytes({topic: [0]})}
        assigned[b.member_id] = assignment_bytes({topic: [1]})
        assert a.sync(assigned).error_code == 0
        assert b_sync.result(10).assignment == assigned[b.member_id]
        # b goes silent; a keeps heartbeating and is told to rebalance once b expires
        silent_since = time.monotonic()
        code = 0
        while code == 0 and time.monotonic() - silent_since < 10:
            time.sleep(0.1)
            code = a.heartbeat()
            if time.monotonic() - silent_since < 0.5:
                assert len(describe(bootstrap, group).members) == 2
        assert code == E.REBALANCE_IN_PROGRESS
        assert time.monotonic() - silent_since >= 0.9
        ra = a.join()
        assert ra.error_code == 0 and ra.generation_id == 3
        assert [m.member_id for m in ra.members] == [a.member_id]
        assert b.heartbeat() == E.UNKNOWN_MEMBER_ID
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        a.close()
        b.close()


def test_error_codes(shared_broker):
    bootstrap = shared_broker.bootstrap
    topic, group = f"err-{uuid.uuid4().hex[:8]}", f"err-g-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, 1)
    a = WireMember(bootstrap, group, topic)
    ghost = WireMember(bootstrap, f"nope-{group}", topic)
    short = WireMember(bootstrap, group, topic, session=500)
    rr = WireMember(bootstrap, group, topic, protocol="roundrobin")
    b = WireMember(bootstrap, group, topic)
    try:
        ghost.member_id = "ghost"
        assert ghost.join().error_code == E.UNKNOWN_MEMBER_ID
        assert ghost.heartbeat(1) == E.UNKNOWN_MEMBER_ID
        assert short.join().error_code == E.INVALID_SESSION_TIMEOUT
        r = a.join()
        assert r.error_code == E.MEMBER_ID_REQUIRED and r.member_id
        assert a.join().error_code == 0
        assert a.sync().error_code == 0
        assert a.heartbeat(generation=0) == E.ILLEGAL_GENERATION
        assert a.commit(5, generation=7) == E.ILLEGAL_GENERATION
        assert a.commit(5) == 0
        assert rr.join(version=3).error_code == E.INCONSISTENT_GROUP_PROTOCOL
        # a newcomer starts a rebalance: a's SyncGroup of the old generation is refused
        b.join()
        with ThreadPoolExecutor(1) as pool:
            parked = pool.submit(b.join)
            time.sleep(0.2)
            assert a.sync().error_code == E.REBALANCE_IN_PROGRESS
            assert a.join().error_code == 0
            assert parked.result(10).error_code == 0
    finally:
        for m in (a, ghost, short, rr, b):
            m.close()


def test_static_membership(shared_broker):
    bootstrap = shared_broker.bootstrap
    topic, group = f"static-{uuid.uuid4().hex[:8]}", f"static-g-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, 1)
    first = WireMember(bootstrap, group, topic, instance="instance-1", session=10_000)
    second = WireMember(bootstrap, group, topic, instance="instance-1", session=10_000)
    try:
        r = first.join()
        assert r.error_code == 0 and r.generation_id == 1  # no MEMBER_ID_REQUIRED round
        asg = assignment_bytes({topic: [0]})
        assert first.sync({first.member_id: asg}).error_code == 0
        # the "restarted" instance comes back with no member id: no rebalance
        r2 = second.join()
        assert r2.error_code == 0 and r2.generation_id == 1
        assert second.member_id != first.member_id
        assert second.sync().assignment == asg
        assert first.heartbeat() == E.FENCED_INSTANCE_ID
        assert first.commit(1) == E.FENCED_INSTANCE_ID
        assert second.heartbeat() == 0
        assert describe(bootstrap, group).members[0].group_instance_id == "instance-1"
        left = second.client.call(
            LeaveGroupRequest(
                group_id=group,
                members=[MemberIdentity(member_id="", group_instance_id="instance-1")],
            ),
            4,
        )
        assert left.error_code == 0 and left.members[0].error_code == 0
        assert describe(bootstrap, group).group_state == "Empty"
    finally:
        first.close()
        second.close()


def test_find_coordinator(shared_broker):
    host, port = shared_broker.bootstrap.rsplit(":", 1)
    with WireClient(shared_broker.bootstrap) as c:
        r = c.call(FindCoordinatorRequest(key="some-group"), 0)
        assert (r.error_code, r.host, r.port) == (0, host, int(port))
        r = c.call(FindCoordinatorRequest(key="txn-id", key_type=1), 3)
        assert (r.error_code, r.node_id) == (0, 0)
        r = c.call(FindCoordinatorRequest(key_type=0, coordinator_keys=["a", "b"]), 4)
        assert [(x.key, x.error_code, x.port) for x in r.coordinators] == [
            ("a", 0, int(port)),
            ("b", 0, int(port)),
        ]
        r = c.call(FindCoordinatorRequest(key="x", key_type=7), 3)
        assert r.error_code == E.INVALID_REQUEST


def test_admin_client_and_offset_delete(shared_broker):
    bootstrap = shared_broker.bootstrap
    topic, other = f"adm-{uuid.uuid4().hex[:8]}", f"adm2-{uuid.uuid4().hex[:8]}"
    group, idle = f"adm-g-{uuid.uuid4().hex[:8]}", f"adm-idle-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, 1)
    create_topic(bootstrap, other, 1)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    active = WireMember(bootstrap, group, topic)
    stop = threading.Event()
    try:
        active.join_until_member()
        active.sync({active.member_id: assignment_bytes({topic: [0]})})
        assert active.commit(3) == 0
        active.topic = other
        assert active.commit(4) == 0  # a topic no member subscribes to
        active.topic = topic

        # an "idle" group holds offsets only (as an assign() user would leave it)
        admin.alter_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(idle, [TopicPartition(topic, 0, 9)])]
        )[idle].result(10)
        listed = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(idle)])
        assert [tp.offset for tp in listed[idle].result(10).topic_partitions] == [9]

        groups = {g.group_id: g for g in admin.list_consumer_groups().result(10).valid}
        assert str(groups[group].state).endswith("STABLE")
        assert str(groups[idle].state).endswith("EMPTY")
        desc = admin.describe_consumer_groups([group])[group].result(10)
        assert [m.member_id for m in desc.members] == [active.member_id]
        assert desc.partition_assignor == "range"

        with WireClient(bootstrap) as c:
            r = c.call(
                OffsetDeleteRequest(
                    group_id=group,
                    topics=[
                        OffsetDeleteRequestTopic(
                            name=n, partitions=[OffsetDeleteRequestPartition(partition_index=0)]
                        )
                        for n in (topic, other)
                    ],
                ),
                0,
            )
            codes = {t.name: t.partitions[0].error_code for t in r.topics}
            assert codes == {topic: E.GROUP_SUBSCRIBED_TO_TOPIC, other: 0}

        futures = admin.delete_consumer_groups([group, idle])
        try:
            futures[group].result(10)
            raise AssertionError("deleting an active group must fail")
        except Exception as exc:
            assert "NON_EMPTY_GROUP" in str(exc) or "not empty" in str(exc).lower()
        futures[idle].result(10)
        remaining = {g.group_id for g in admin.list_consumer_groups().result(10).valid}
        assert idle not in remaining and group in remaining
    finally:
        stop.set()
        active.close()


def test_metrics(shared_broker):
    bootstrap = shared_broker.bootstrap
    topic, group = f"met-{uuid.uuid4().hex[:8]}", f"met-g-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, 1)
    p = Producer({"bootstrap.servers": bootstrap})
    for i in range(10):
        p.produce(topic, str(i).encode(), partition=0)
    assert p.flush(15) == 0
    m = WireMember(bootstrap, group, topic, session=10_000)
    try:
        m.join_until_member()
        m.sync({m.member_id: assignment_bytes({topic: [0]})})
        assert m.commit(4) == 0
        url = f"http://127.0.0.1:{shared_broker.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
    finally:
        m.close()
    lag = f'shazamq_consumer_group_lag{{group="{group}",partition="0",topic="{topic}"}}'
    assert f"{lag} 6.0" in text
    assert f'shazamq_consumer_group_members{{group="{group}"}} 1.0' in text
    assert 'shazamq_consumer_groups{state="Stable"}' in text
    assert "shazamq_group_rebalances_total" in text
    assert 'shazamq_transactions{state="Ongoing"}' in text
