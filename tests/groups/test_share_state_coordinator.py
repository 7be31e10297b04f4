"""The cluster's share coordinator without a cluster: its per-key state and fencing.

The coordinator is given stand-ins for what the cluster gives it (the internal topic it
appends to, leadership of its partitions); every append is recorded, so the test checks
both the answers and the records that make them durable. Covers: reads of unknown keys;
the leader epoch a read records fencing older readers and writers (FENCED_LEADER_EPOCH);
an initialization moving the state epoch so a leader holding the old window is fenced
(FENCED_STATE_EPOCH); deletion by tombstone; NOT_COORDINATOR for keys of partitions led
elsewhere; the key's placement as Kafka's ``group:topic id:partition`` string hash; and
the persister's conversion of wire batches, refusing unknown delivery states.
"""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from shazamq.broker.groups.partitioning import coordinator_partition
from shazamq.broker.groups.share_partition import RecordState, StateBatch
from shazamq.broker.groups.share_persister import from_wire, wire_batches
from shazamq.broker.groups.share_state_coordinator import ShareStateCoordinator, share_key
from shazamq.broker.groups.share_state_store import (
    SHARE_STATE_TOPIC,
    LoadedShareState,
    decode_key,
    decode_snapshot,
)
from shazamq.protocol.errors import ErrorCode as E

PARTITIONS = 4
TOPIC_ID = uuid.UUID("00000000-0000-0000-0000-0000000000ab")


class FakeTopic:
    count = PARTITIONS

    def __init__(self) -> None:
        self.appended: list[tuple[int, bytes, bytes | None]] = []

    def append(self, index: int, records: list[tuple[bytes, bytes | None]]) -> Any:
        for k, v in records:
            self.appended.append((index, k, v))
        return SimpleNamespace(partition=SimpleNamespace(replica=None), next_offset=0)

    def coordinator_of(self, key: str) -> int:
        return 1


class FakeStore:
    def __init__(self) -> None:
        self.topic = FakeTopic()

    def load(self, indexes: list[int]) -> LoadedShareState:
        return LoadedShareState()


async def coordinator(led: set[int]) -> tuple[ShareStateCoordinator, FakeStore]:
    store = FakeStore()
    cluster = SimpleNamespace(on_partition_role=[])
    c = ShareStateCoordinator(cluster, store)  # type: ignore[arg-type]
    c.start([])
    for index in led:
        c._owned.on_partition_role(SimpleNamespace(topic=SHARE_STATE_TOPIC, index=index), True)  # type: ignore[arg-type]
    for _ in range(200):
        if all(c._owned.get(i) is not None and c._owned.get(i).loaded for i in led):  # type: ignore[union-attr]
            break
        await asyncio.sleep(0.01)
    return c, store


def key_in(c: ShareStateCoordinator, led: bool) -> tuple[str, uuid.UUID, int]:
    """A key whose partition is led here (or not)."""
    for i in range(100):
        key = ("g", TOPIC_ID, i)
        if (c._owned.get(c.partition_for(share_key(key))) is not None) == led:
            return key
    raise AssertionError("no such key")


BATCHES = (
    StateBatch(5, 6, RecordState.ACKNOWLEDGED, 1),
    StateBatch(7, 9, RecordState.AVAILABLE, 2),
)


async def test_reads_writes_and_leader_fencing():
    c, store = await coordinator({0, 1, 2, 3})
    key = key_in(c, True)
    assert (await c.read(key, 3)).state is None
    assert await c.write(key, 0, 3, 5, BATCHES) == (0, None)
    state = (await c.read(key, 3)).state
    assert state is not None
    assert (state.start_offset, state.batches, state.leader_epoch) == (5, BATCHES, 3)
    # the record written is the state, keyed as on a single broker
    index, k, v = store.topic.appended[-1]
    assert index == c.partition_for(share_key(key)) and decode_key(k)[1:] == key
    assert v is not None and decode_snapshot(v).batches == BATCHES
    # a new leader reads at epoch 4: from now on epoch 3 is fenced, for reads and writes
    assert (await c.read(key, 4)).state.leader_epoch == 4  # type: ignore[union-attr]
    assert (await c.read(key, 3)).error == E.FENCED_LEADER_EPOCH
    code, _m = await c.write(key, 0, 3, 8, ())
    assert code == E.FENCED_LEADER_EPOCH
    assert (await c.read(key, -1)).state.start_offset == 5  # type: ignore[union-attr]
    # an admin's read (-1) fences nobody
    assert (await c.write(key, 0, 4, 7, BATCHES[1:]))[0] == 0
    assert (await c.read(key, -1)).state.start_offset == 7  # type: ignore[union-attr]
    assert (await c.write(key, 0, 4, -1, ()))[0] == E.INVALID_REQUEST


async def test_initialize_fences_the_old_state_epoch_and_delete_tombstones():
    c, store = await coordinator({0, 1, 2, 3})
    key = key_in(c, True)
    assert (await c.initialize(key, 0, 10))[0] == 0
    first = (await c.read(key, -1)).state
    assert first is not None and first.state_epoch >= 1 and first.start_offset == 10
    assert (await c.write(key, first.state_epoch, 2, 12, ()))[0] == 0
    assert (await c.initialize(key, 0, 3))[0] == 0
    reset = (await c.read(key, -1)).state
    assert reset is not None and reset.state_epoch > first.state_epoch
    assert (reset.start_offset, reset.batches, reset.leader_epoch) == (3, (), 2)
    # the leader still holding the window of the old state epoch is refused
    assert (await c.write(key, first.state_epoch, 2, 13, ()))[0] == E.FENCED_STATE_EPOCH
    assert (await c.delete(key))[0] == 0
    assert (await c.read(key, -1)).state is None
    assert store.topic.appended[-1][2] is None  # a tombstone
    assert (await c.delete(key))[0] == 0  # nothing left to delete: fine


async def test_keys_of_partitions_led_elsewhere_are_not_served():
    c, _store = await coordinator({0})
    key = key_in(c, False)
    assert (await c.read(key, 1)).error == E.NOT_COORDINATOR
    assert (await c.write(key, 0, 1, 0, ()))[0] == E.NOT_COORDINATOR
    assert (await c.initialize(key, 0, 0))[0] == E.NOT_COORDINATOR
    assert (await c.delete(key))[0] == E.NOT_COORDINATOR
    c._owned.on_partition_role(SimpleNamespace(topic=SHARE_STATE_TOPIC, index=0), False)  # type: ignore[arg-type]
    assert (await c.read(key_in(c, False), 1)).error == E.NOT_COORDINATOR


def test_key_placement_is_kafkas():
    key = ("my-group", uuid.UUID(int=1), 7)
    # Kafka's Uuid.toString(): URL-safe base64 of the 16 bytes, unpadded
    assert share_key(key) == "my-group:AAAAAAAAAAAAAAAAAAAAAQ:7"
    store = FakeStore()
    c = ShareStateCoordinator(SimpleNamespace(on_partition_role=[]), store)  # type: ignore[arg-type]
    assert c.partition_for(share_key(key)) == coordinator_partition(share_key(key), PARTITIONS)


def test_wire_batches_round_trip_and_bad_states():
    wire = wire_batches(BATCHES)
    assert from_wire(wire) == BATCHES
    wire[0].delivery_state = 3  # no such delivery state
    with pytest.raises(ValueError, match="delivery state"):
        from_wire(wire)
    wire = wire_batches(BATCHES)
    wire[1].last_offset = 1
    with pytest.raises(ValueError, match="reversed"):
        from_wire(wire)


def test_a_refused_state_rpc_answers_every_partition():
    """The ACL guard's answer (CLUSTER_ACTION missing) names each partition asked for."""
    from shazamq.broker.apis.share_state import refused
    from shazamq.protocol.messages.read_share_group_state_request import (
        PartitionData,
        ReadShareGroupStateRequest,
        ReadStateData,
    )

    req = ReadShareGroupStateRequest(
        group_id="g",
        topics=[
            ReadStateData(
                topic_id=TOPIC_ID,
                partitions=[PartitionData(partition=0), PartitionData(partition=3)],
            )
        ],
    )
    r = refused(84, int(E.CLUSTER_AUTHORIZATION_FAILED), req)
    assert [
        (t.topic_id, [(p.partition, p.error_code) for p in t.partitions]) for t in r.results
    ] == [(TOPIC_ID, [(0, E.CLUSTER_AUTHORIZATION_FAILED), (3, E.CLUSTER_AUTHORIZATION_FAILED)])]
    assert r.encode(0)  # a well-formed answer


async def test_summary_answers_start_and_state_epoch_and_records_nothing():
    c, store = await coordinator({0, 1, 2, 3})
    key = key_in(c, True)
    # nothing of the group here at all, then a group with state but not for this key
    assert c.summary(key, -1).error == E.GROUP_ID_NOT_FOUND
    other = (key[0], key[1], key[2] + 1000)
    assert (await c.initialize(other, 0, 4))[0] == 0
    assert c.summary(key, -1).error == E.UNKNOWN_TOPIC_OR_PARTITION
    assert (await c.write(key, 0, 3, 5, BATCHES))[0] == 0
    before = len(store.topic.appended)
    for epoch in (-1, 3, 9):  # a later leader epoch is not recorded: it fences nobody
        a = c.summary(key, epoch)
        assert a.error == 0 and a.state is not None
        assert (a.state.start_offset, a.state.state_epoch) == (5, 0)
    assert len(store.topic.appended) == before
    assert (await c.read(key, 3)).error == 0
    assert c.summary(key, 2).error == E.FENCED_LEADER_EPOCH  # older than the state's


async def test_summary_of_a_key_led_elsewhere_is_not_coordinator():
    c, _store = await coordinator({0})
    assert c.summary(key_in(c, False), -1).error == E.NOT_COORDINATOR


def test_a_refused_summary_names_every_partition():
    from shazamq.broker.apis.share_state import refused
    from shazamq.protocol.messages.read_share_group_state_summary_request import (
        PartitionData,
        ReadShareGroupStateSummaryRequest,
        ReadStateSummaryData,
    )

    req = ReadShareGroupStateSummaryRequest(
        group_id="g",
        topics=[ReadStateSummaryData(topic_id=TOPIC_ID, partitions=[PartitionData(partition=2)])],
    )
    r = refused(87, int(E.CLUSTER_AUTHORIZATION_FAILED), req)
    assert [(p.partition, p.error_code) for t in r.results for p in t.partitions] == [
        (2, E.CLUSTER_AUTHORIZATION_FAILED)
    ]
    assert r.encode(0)


async def test_the_summary_needs_cluster_action():
    """The guard of ReadShareGroupStateSummary: CLUSTER_ACTION on the cluster, else every
    partition is refused and the handler is not reached."""
    from shazamq.broker.apis.authz import _GUARDS
    from shazamq.broker.security.acl import Operation
    from shazamq.protocol.messages.read_share_group_state_summary_request import (
        PartitionData,
        ReadShareGroupStateSummaryRequest,
        ReadStateSummaryData,
    )

    asked: list[int] = []
    reached: list[Any] = []

    class Check:
        def __init__(self, allowed: bool) -> None:
            self.allowed = allowed

        def cluster(self, ctx: Any, op: int) -> bool:
            asked.append(op)
            return self.allowed

    async def handler(ctx: Any, req: Any) -> str:
        reached.append(req)
        return "served"

    req = ReadShareGroupStateSummaryRequest(
        group_id="g",
        topics=[ReadStateSummaryData(topic_id=TOPIC_ID, partitions=[PartitionData(partition=1)])],
    )
    denied = await _GUARDS[87](handler, Check(False), None)(None, req)  # type: ignore[arg-type]
    assert [p.error_code for t in denied.results for p in t.partitions] == [
        E.CLUSTER_AUTHORIZATION_FAILED
    ]
    assert reached == [] and asked == [int(Operation.CLUSTER_ACTION)]
    assert await _GUARDS[87](handler, Check(True), None)(None, req) == "served"  # type: ignore[arg-type]
