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
        code, result = broker.groups.delete_offsets("g", [("t", 1)])
        assert (code, result) == (0, {("t", 1): 0})
        assert commit(broker, "h", "", -1, {("t", 0): 1}) == {("t", 0): 0}
        assert broker.groups.delete_groups(["h"]) == {"h": 0}
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


async def test_offset_expiry_runs_at_the_configured_interval(tmp_path, monkeypatch):
    checks: list[int] = []
    broker = await start(tmp_path, offsets_retention_check_interval_ms=50)
    try:
        monkeypatch.setattr(broker.groups, "expire_offsets", checks.append)
        # three passes within seconds: the default interval (10 minutes) would give none
        await until(lambda: len(checks) >= 3)
    finally:
        await broker.stop()
