"""Share groups (KIP-932) across a cluster: the group itself survives its coordinator.

Three brokers. A share group's epochs, members and assignments are written to its
``__consumer_offsets`` partition (Kafka's share group records) and its settings to the
metadata log (Kafka's GROUP configs); the group's coordinator is killed with SIGKILL. The
broker that leads the partition next replays the group: same group epoch, the members
keep their epochs and heartbeat on without being fenced, and the settings set before the
kill (a share group's record lock duration and delivery limit, a consumer group's session
timeout) are still described and still applied (the lock duration a ShareFetch reports).
A controlled move of the coordinator (SIGTERM) then hands the group over the same way.

ReadShareGroupStateSummary, on the wire: at a key's share coordinator it answers the
start offset and state epoch ReadShareGroupState reads; an unknown group is
GROUP_ID_NOT_FOUND and an unknown partition of a group UNKNOWN_TOPIC_OR_PARTITION;
malformed request bytes close the connection and the broker serves on.
"""

from __future__ import annotations

import struct
import uuid
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from shazamq.broker.groups.partitioning import coordinator_partition
from shazamq.broker.groups.share_state_coordinator import share_key
from shazamq.protocol.errors import ErrorCode as E
from shazamq.protocol.messages.find_coordinator_request import FindCoordinatorRequest
from shazamq.protocol.messages.metadata_request import MetadataRequest, MetadataRequestTopic
from shazamq.protocol.messages.read_share_group_state_request import (
    PartitionData as ReadPartition,
)
from shazamq.protocol.messages.read_share_group_state_request import (
    ReadShareGroupStateRequest,
    ReadStateData,
)
from shazamq.protocol.messages.read_share_group_state_summary_request import (
    PartitionData as SummaryPartition,
)
from shazamq.protocol.messages.read_share_group_state_summary_request import (
    ReadShareGroupStateSummaryRequest,
    ReadStateSummaryData,
)
from shazamq.protocol.messages.share_group_describe_request import ShareGroupDescribeRequest
from shazamq.protocol.messages.share_group_heartbeat_request import ShareGroupHeartbeatRequest
from tests.groups.kafka_wire import WireClient
from tests.kafka_helpers import closed_by_peer

from .conftest import Cluster, ClusterFactory
from .test_cluster_basic import create_topic, start_cluster, wait_for
from .test_cluster_share import (
    TOPIC,
    Member,
    acquired,
    address,
    any_broker,
    gather,
    leader_of,
    share_coordinator,
)

pytestmark = pytest.mark.slow

LOCK_MS = "15000"  # not the default (30000), within the broker's bounds


def find_coordinator(cluster: Cluster, group: str, not_node: int = -1) -> int:
    """The node id of the group's coordinator (other than ``not_node``)."""

    def ask() -> tuple[int] | None:
        try:
            r = WireClient(any_broker(cluster)).call(
                FindCoordinatorRequest(key=group, key_type=0), 3
            )
        except OSError:
            return None
        if r.error_code or r.node_id == not_node:
            return None
        return (r.node_id,)

    return int(wait_for(ask, 60, f"the coordinator of {group}")[0])


def heartbeat(cluster: Cluster, node: int, group: str, m: Member, epoch: int) -> Any:
    return WireClient(address(cluster, node)).call(
        ShareGroupHeartbeatRequest(
            group_id=group,
            member_id=m.member_id,
            member_epoch=epoch,
            subscribed_topic_names=[TOPIC] if epoch == 0 else None,
        ),
        1,
    )


def describe(cluster: Cluster, node: int, group: str) -> Any:
    """(group epoch, assignment epoch, {member: epoch}) once the coordinator answers."""

    def ask() -> tuple[int, int, dict[str, int]] | None:
        try:
            r = WireClient(address(cluster, node)).call(
                ShareGroupDescribeRequest(group_ids=[group]), 1
            )
        except OSError:
            return None
        g = r.groups[0]
        if g.error_code:
            return None
        return g.group_epoch, g.assignment_epoch, {m.member_id: m.member_epoch for m in g.members}

    return wait_for(ask, 60, f"a description of {group}")


def set_group_configs(cluster: Cluster, group: str, values: dict[str, str]) -> None:
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    res = ConfigResource(
        ResourceType.GROUP,
        group,
        incremental_configs=[
            ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
            for k, v in values.items()
        ],
    )
    admin.incremental_alter_configs([res])[res].result(30)


def group_configs(bootstrap: str, group: str) -> dict[str, str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    res = ConfigResource(ResourceType.GROUP, group)
    return {k: e.value for k, e in admin.describe_configs([res])[res].result(30).items()}


def test_a_share_group_survives_the_loss_of_its_coordinator(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = start_cluster(cluster_factory)
    create_topic(cluster, TOPIC, 1)
    md = WireClient(any_broker(cluster)).call(
        MetadataRequest(topics=[MetadataRequestTopic(name=TOPIC)]), 12
    )
    tid = md.topics[0].topic_id
    group = f"sg-{uuid.uuid4().hex[:6]}"
    consumer_group = f"cg-{uuid.uuid4().hex[:6]}"
    set_group_configs(
        cluster,
        group,
        {"share.record.lock.duration.ms": LOCK_MS, "share.delivery.count.limit": "3"},
    )
    set_group_configs(cluster, consumer_group, {"consumer.session.timeout.ms": "50000"})

    coordinator = find_coordinator(cluster, group)
    a, b = Member(cluster, group, tid), Member(cluster, group, tid)
    assert heartbeat(cluster, coordinator, group, a, 0).error_code == 0
    assert heartbeat(cluster, coordinator, group, b, 0).error_code == 0
    # a catches up with the epoch b's join moved the group to
    ra = heartbeat(cluster, coordinator, group, a, 1)
    assert ra.error_code == 0
    a_epoch = ra.member_epoch
    before = describe(cluster, coordinator, group)
    assert before[0] == a_epoch and before[2] == {a.member_id: a_epoch, b.member_id: a_epoch}

    cluster.broker(coordinator).kill9()
    successor = find_coordinator(cluster, group, not_node=coordinator)
    # the same group: epochs and members as the records left them
    assert describe(cluster, successor, group) == before
    for m in (a, b):  # the members heartbeat on with their epochs: nobody is fenced
        r = heartbeat(cluster, successor, group, m, a_epoch)
        assert (r.error_code, r.member_epoch) == (0, a_epoch), r
    assert describe(cluster, successor, group)[0] == before[0]

    # the settings set before the kill are still described, from any broker left ...
    survivor = next(x.bootstrap for x in cluster if x.running)
    configs = group_configs(survivor, group)
    assert configs["share.record.lock.duration.ms"] == LOCK_MS
    assert configs["share.delivery.count.limit"] == "3"
    assert group_configs(survivor, consumer_group)["consumer.session.timeout.ms"] == "50000"
    # ... and applied: records are locked for the group's duration
    wait_for(lambda: leader_of(cluster, TOPIC, 0) not in (coordinator, -1), 40, "a live leader")
    leader = leader_of(cluster, TOPIC, 0)
    p = Producer({"bootstrap.servers": survivor, "acks": "all"})
    for i in range(3):
        p.produce(TOPIC, value=b"r%d" % i, partition=0)
    assert p.flush(30) == 0
    c = Member(cluster, group, tid)
    c.join()
    c.open(leader)
    # the share-partition starts at the log end on its first fetch (share.auto.offset.reset
    # latest): produce after it, then read
    first = c.fetch(max_wait_ms=0)
    assert first.acquisition_lock_timeout_ms == int(LOCK_MS)
    for i in range(3, 6):
        p.produce(TOPIC, value=b"r%d" % i, partition=0)
    assert p.flush(30) == 0
    got = gather(c, 3, 30)
    assert {o: v for o, (_dc, v) in got.items()} == {3: b"r3", 4: b"r4", 5: b"r5"}

    # a controlled move (SIGTERM: the broker hands its partitions over) with the killed
    # broker back, so the quorum keeps a majority: the next coordinator replays c's join too
    cluster.broker(coordinator).restart()
    moved = describe(cluster, successor, group)
    assert moved[0] > before[0] and c.member_id in moved[2]
    cluster.broker(successor).terminate()
    third = find_coordinator(cluster, group, not_node=successor)
    assert describe(cluster, third, group) == moved
    r = heartbeat(cluster, third, group, c, moved[2][c.member_id])
    assert (r.error_code, r.member_epoch) == (0, moved[2][c.member_id]), r


def summary(client: WireClient, group: str, tid: uuid.UUID, partition: int) -> Any:
    r = client.call(
        ReadShareGroupStateSummaryRequest(
            group_id=group,
            topics=[
                ReadStateSummaryData(
                    topic_id=tid,
                    partitions=[SummaryPartition(partition=partition, leader_epoch=-1)],
                )
            ],
        ),
        0,
    )
    assert [t.topic_id for t in r.results] == [tid]
    (part,) = r.results[0].partitions
    assert part.partition == partition
    return part


def test_read_share_group_state_summary_on_the_wire(cluster_factory: ClusterFactory) -> None:
    cluster = start_cluster(cluster_factory)
    create_topic(cluster, TOPIC, 1)
    md = WireClient(any_broker(cluster)).call(
        MetadataRequest(topics=[MetadataRequestTopic(name=TOPIC)]), 12
    )
    tid = md.topics[0].topic_id
    group = f"sg-{uuid.uuid4().hex[:6]}"
    m = Member(cluster, group, tid)
    m.join()
    m.open(leader_of(cluster, TOPIC, 0))
    assert acquired(m.fetch(max_wait_ms=0)) == {}
    p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
    for i in range(6):
        p.produce(TOPIC, value=b"r%d" % i, partition=0)
    assert p.flush(30) == 0
    assert len(gather(m, 6, 30)) == 6
    assert m.acknowledge(0, 3).error_code == 0

    node = share_coordinator(cluster, group, tid)
    c = WireClient(address(cluster, node))

    def settled() -> Any:
        r = c.call(
            ReadShareGroupStateRequest(
                group_id=group,
                topics=[
                    ReadStateData(
                        topic_id=tid, partitions=[ReadPartition(partition=0, leader_epoch=-1)]
                    )
                ],
            ),
            0,
        )
        part = r.results[0].partitions[0]
        return part if part.error_code == 0 and part.start_offset == 4 else None

    full = wait_for(settled, 30, "the acknowledgement at the share coordinator")
    s = summary(c, group, tid, 0)
    assert (s.error_code, s.start_offset, s.state_epoch) == (0, full.start_offset, full.state_epoch)

    # a partition without state of a known group, and a group nobody has state for, both
    # placed on this coordinator's partition of __share_group_state
    md = WireClient(any_broker(cluster)).call(
        MetadataRequest(topics=[MetadataRequestTopic(name="__share_group_state")]), 12
    )
    parts = len(md.topics[0].partitions)
    home = coordinator_partition(share_key((group, tid, 0)), parts)
    lonely = next(
        u
        for u in (uuid.uuid4() for _ in range(10_000))
        if coordinator_partition(share_key((group, u, 0)), parts) == home
    )
    other = summary(c, group, lonely, 0)
    assert (other.error_code, other.start_offset) == (E.UNKNOWN_TOPIC_OR_PARTITION, -1)
    nobody = next(
        g
        for g in (f"nobody-{i}" for i in range(10_000))
        if coordinator_partition(share_key((g, tid, 0)), parts) == home
    )
    assert summary(c, nobody, tid, 0).error_code == E.GROUP_ID_NOT_FOUND

    # malformed bytes: the connection is closed, the broker serves on
    bad = WireClient(address(cluster, node))
    body = struct.pack(">hhih", 87, 0, 1, 4) + b"test" + b"\x00" + b"\x05\xff\xff"
    bad.sock.sendall(struct.pack(">i", len(body)) + body)
    assert closed_by_peer(bad.sock, 10)
    again = summary(WireClient(address(cluster, node)), group, tid, 0)
    assert (again.error_code, again.start_offset) == (0, 4)
