"""Share groups (KIP-932) across a cluster: share-partition state survives leader failover.

Three brokers; a share group reads a topic partition replicated three times. The group's
membership lives with its group coordinator, the share-partition on the partition's
leader, and its durable state with the share coordinator of the key
``group:topic id:partition`` (the leader of its ``__share_group_state`` partition). A
member acquires ten records and acknowledges five; the partition leader is killed. A new
member, on the new leader, is given exactly the five unacknowledged records, each for the
second time, and nothing acknowledged comes back. The offsets administration then sees and
resets the state through the share coordinator.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Producer

from shazamq.protocol.messages.alter_share_group_offsets_request import (
    AlterShareGroupOffsetsRequest,
    AlterShareGroupOffsetsRequestPartition,
    AlterShareGroupOffsetsRequestTopic,
)
from shazamq.protocol.messages.describe_share_group_offsets_request import (
    DescribeShareGroupOffsetsRequest,
    DescribeShareGroupOffsetsRequestGroup,
    DescribeShareGroupOffsetsRequestTopic,
)
from shazamq.protocol.messages.find_coordinator_request import FindCoordinatorRequest
from shazamq.protocol.messages.metadata_request import MetadataRequest, MetadataRequestTopic
from shazamq.protocol.messages.share_acknowledge_request import (
    AcknowledgementBatch as AckBatch,
)
from shazamq.protocol.messages.share_acknowledge_request import (
    AcknowledgePartition,
    AcknowledgeTopic,
    ShareAcknowledgeRequest,
)
from shazamq.protocol.messages.share_fetch_request import (
    FetchPartition,
    FetchTopic,
    ShareFetchRequest,
)
from shazamq.protocol.messages.share_group_heartbeat_request import ShareGroupHeartbeatRequest
from shazamq.protocol.records import decode_batch, iter_batches
from tests.groups.kafka_wire import WireClient

from .conftest import Cluster, ClusterFactory
from .test_cluster_basic import create_topic, fully_replicated, leader_of, start_cluster, wait_for

pytestmark = pytest.mark.slow
TOPIC = "share-queue"
ACCEPT = 1


def address(cluster: Cluster, node_id: int) -> str:
    return cluster.broker(node_id).bootstrap


def any_broker(cluster: Cluster) -> str:
    return next(b.bootstrap for b in cluster if b.running)


def coordinator_of(cluster: Cluster, group: str) -> str:
    """host:port of the group's coordinator (FindCoordinator, retried while it moves)."""

    def ask() -> str | None:
        try:
            r = WireClient(any_broker(cluster)).call(
                FindCoordinatorRequest(key=group, key_type=0), 3
            )
        except OSError:
            return None
        return None if r.error_code else f"{r.host}:{r.port}"

    return wait_for(ask, 40, f"the coordinator of {group}")


class Member:
    """One share group member: heartbeats at the coordinator, fetches at the leader."""

    def __init__(self, cluster: Cluster, group: str, topic_id: uuid.UUID) -> None:
        self.cluster, self.group, self.topic_id = cluster, group, topic_id
        self.member_id = uuid.uuid4().hex
        self.session_epoch = 0
        self.leader: WireClient | None = None

    def join(self) -> None:
        def attempt() -> bool:
            try:
                c = WireClient(coordinator_of(self.cluster, self.group))
                r = c.call(
                    ShareGroupHeartbeatRequest(
                        group_id=self.group,
                        member_id=self.member_id,
                        member_epoch=0,
                        subscribed_topic_names=[TOPIC],
                    ),
                    1,
                )
            except OSError:
                return False
            return r.error_code == 0

        wait_for(attempt, 40, "the member to join")

    def open(self, leader: int) -> None:
        self.leader = WireClient(address(self.cluster, leader))
        self.session_epoch = 0

    def fetch(self, max_wait_ms: int = 1000) -> Any:
        assert self.leader is not None
        r = self.leader.call(
            ShareFetchRequest(
                group_id=self.group,
                member_id=self.member_id,
                share_session_epoch=self.session_epoch,
                max_wait_ms=max_wait_ms,
                min_bytes=1,
                max_records=100,
                batch_size=100,
                topics=[
                    FetchTopic(
                        topic_id=self.topic_id, partitions=[FetchPartition(partition_index=0)]
                    )
                ],
            ),
            1,
        )
        assert r.error_code == 0, r
        self.session_epoch += 1
        return r

    def acknowledge(self, first: int, last: int) -> Any:
        assert self.leader is not None
        r = self.leader.call(
            ShareAcknowledgeRequest(
                group_id=self.group,
                member_id=self.member_id,
                share_session_epoch=self.session_epoch,
                topics=[
                    AcknowledgeTopic(
                        topic_id=self.topic_id,
                        partitions=[
                            AcknowledgePartition(
                                partition_index=0,
                                acknowledgement_batches=[
                                    AckBatch(
                                        first_offset=first,
                                        last_offset=last,
                                        acknowledge_types=[ACCEPT],
                                    )
                                ],
                            )
                        ],
                    )
                ],
            ),
            1,
        )
        self.session_epoch += 1
        return r


def acquired(r: Any) -> dict[int, tuple[int, bytes]]:
    """offset -> (delivery count, value) of what a ShareFetch answer hands out."""
    counts = {
        o: a.delivery_count
        for t in r.responses
        for p in t.partitions
        for a in p.acquired_records
        for o in range(a.first_offset, a.last_offset + 1)
    }
    out = {}
    for t in r.responses:
        for p in t.partitions:
            if p.error_code:  # the state is still being read after a move: asked again
                continue
            data = memoryview(p.records or b"")
            for pos, h in iter_batches(data, allow_partial=False):
                _h, records = decode_batch(data[pos : pos + h.size])
                for rec in records:
                    o = h.base_offset + rec.offset_delta
                    if o in counts:
                        out[o] = (counts[o], bytes(rec.value or b""))
    assert set(out) <= set(counts)
    return out


def gather(m: Member, want: int, timeout: float) -> dict[int, tuple[int, bytes]]:
    """Fetch until ``want`` records are held (a new leader's high watermark catches up)."""
    got: dict[int, tuple[int, bytes]] = {}
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got.update(acquired(m.fetch()))
    return got


def test_share_state_survives_leader_failover(cluster_factory: ClusterFactory) -> None:
    cluster = start_cluster(cluster_factory)
    create_topic(cluster, TOPIC, 1)
    md = WireClient(any_broker(cluster)).call(
        MetadataRequest(topics=[MetadataRequestTopic(name=TOPIC)]), 12
    )
    tid = md.topics[0].topic_id
    group = f"sg-{uuid.uuid4().hex[:6]}"
    leader = leader_of(cluster, TOPIC, 0)

    a = Member(cluster, group, tid)
    a.join()
    a.open(leader)
    # the first fetch creates the share-partition at the (empty) log end, durably
    assert acquired(a.fetch(max_wait_ms=0)) == {}
    p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
    for i in range(10):
        p.produce(TOPIC, value=b"r%d" % i, partition=0)
    assert p.flush(30) == 0
    got = gather(a, 10, 30)
    assert got == {i: (1, b"r%d" % i) for i in range(10)}
    r = a.acknowledge(0, 4)
    assert r.error_code == 0
    assert [p.error_code for t in r.responses for p in t.partitions] == [0]

    cluster.broker(leader).kill9()
    wait_for(lambda: leader_of(cluster, TOPIC, 0) not in (leader, -1), 40, "a new leader")
    successor = leader_of(cluster, TOPIC, 0)

    b = Member(cluster, group, tid)
    b.join()
    b.open(successor)
    got = gather(b, 5, 40)
    # exactly the unacknowledged records, delivered for the second time
    assert got == {i: (2, b"r%d" % i) for i in range(5, 10)}
    assert acquired(b.fetch(max_wait_ms=500)) == {}

    # the offsets administration goes through the share coordinator too
    def start_offset() -> int:
        return int(wait_for(lambda: describe_start() or None, 40, "a description")[0])

    def describe_start() -> tuple[int] | None:
        try:
            c = WireClient(coordinator_of(cluster, group))
        except OSError:
            return None
        r = c.call(
            DescribeShareGroupOffsetsRequest(
                groups=[
                    DescribeShareGroupOffsetsRequestGroup(
                        group_id=group,
                        topics=[
                            DescribeShareGroupOffsetsRequestTopic(topic_name=TOPIC, partitions=[0])
                        ],
                    )
                ]
            ),
            0,
        )
        if r.groups[0].error_code:
            return None
        return (r.groups[0].topics[0].partitions[0].start_offset,)

    assert start_offset() == 5
    c = WireClient(coordinator_of(cluster, group))
    for m in (a, b):  # the group must be empty; a is unknown if its coordinator died
        left = c.call(
            ShareGroupHeartbeatRequest(group_id=group, member_id=m.member_id, member_epoch=-1), 1
        )
        assert left.error_code in (0, 25), left  # UNKNOWN_MEMBER_ID
    r = c.call(
        AlterShareGroupOffsetsRequest(
            group_id=group,
            topics=[
                AlterShareGroupOffsetsRequestTopic(
                    topic_name=TOPIC,
                    partitions=[
                        AlterShareGroupOffsetsRequestPartition(partition_index=0, start_offset=8)
                    ],
                )
            ],
        ),
        0,
    )
    assert r.error_code == 0 and r.responses[0].partitions[0].error_code == 0
    assert start_offset() == 8
    d = Member(cluster, group, tid)
    d.join()
    d.open(successor)
    assert gather(d, 2, 30) == {8: (1, b"r8"), 9: (1, b"r9")}


def share_coordinator(cluster: Cluster, group: str, tid: uuid.UUID) -> int:
    """The broker leading the ``__share_group_state`` partition of the group's key."""
    from shazamq.broker.groups.partitioning import coordinator_partition
    from shazamq.broker.groups.share_state_coordinator import share_key

    def ask() -> tuple[int] | None:  # a tuple: node 0 is a leader too
        md = WireClient(any_broker(cluster)).call(
            MetadataRequest(topics=[MetadataRequestTopic(name="__share_group_state")]), 12
        )
        parts = sorted(md.topics[0].partitions, key=lambda p: p.partition_index)
        if md.topics[0].error_code or not parts:
            return None
        leader = parts[coordinator_partition(share_key((group, tid, 0)), len(parts))].leader_id
        return (leader,) if leader >= 0 else None

    return int(wait_for(ask, 40, "the share coordinator")[0])


def test_share_state_survives_the_loss_of_its_share_coordinator(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = start_cluster(cluster_factory)
    create_topic(cluster, TOPIC, 1)
    md = WireClient(any_broker(cluster)).call(
        MetadataRequest(topics=[MetadataRequestTopic(name=TOPIC)]), 12
    )
    tid = md.topics[0].topic_id
    group = f"sg-{uuid.uuid4().hex[:6]}"
    a = Member(cluster, group, tid)
    a.join()
    first_leader = leader_of(cluster, TOPIC, 0)
    a.open(first_leader)
    assert acquired(a.fetch(max_wait_ms=0)) == {}
    p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
    for i in range(10):
        p.produce(TOPIC, value=b"r%d" % i, partition=0)
    assert p.flush(30) == 0
    assert gather(a, 10, 30) == {i: (1, b"r%d" % i) for i in range(10)}
    assert a.acknowledge(0, 2).error_code == 0

    # the share coordinator dies; its successor loads the state from its replica, and the
    # leader's next acknowledgement is written there
    coordinator = share_coordinator(cluster, group, tid)
    cluster.broker(coordinator).kill9()
    wait_for(lambda: share_coordinator(cluster, group, tid) != coordinator, 40, "a new coordinator")
    if first_leader == coordinator:  # the same broker led both: a's session is gone with it
        wait_for(lambda: leader_of(cluster, TOPIC, 0) not in (coordinator, -1), 40, "leader")
        a = Member(cluster, group, tid)
        a.join()
        a.open(leader_of(cluster, TOPIC, 0))
        assert gather(a, 7, 40) == {i: (2, b"r%d" % i) for i in range(3, 10)}

    def acked() -> bool:
        r = a.acknowledge(3, 4)
        return r.error_code == 0 and [p.error_code for t in r.responses for p in t.partitions] == [
            0
        ]

    wait_for(acked, 40, "the acknowledgement written at the new coordinator")

    # with all three brokers back, the partition leader goes too: what is left is 5-9
    cluster.broker(coordinator).restart()
    leader = leader_of(cluster, TOPIC, 0)
    wait_for(lambda: fully_replicated(any_broker(cluster), TOPIC, 1), 60, "the ISR whole again")
    cluster.broker(leader).kill9()
    wait_for(lambda: leader_of(cluster, TOPIC, 0) not in (leader, -1), 40, "a new leader")
    b = Member(cluster, group, tid)
    b.join()
    b.open(leader_of(cluster, TOPIC, 0))
    got = gather(b, 5, 40)
    assert set(got) == set(range(5, 10))
    assert all(dc >= 2 and v == b"r%d" % o for o, (dc, v) in got.items())
