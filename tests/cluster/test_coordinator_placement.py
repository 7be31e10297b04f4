"""The group and transaction coordinators in a cluster, without a running cluster.

A broker here is real logs and partitions under a stand-in for the cluster node: the
cluster's state machine (``ClusterState``, fed the same records a controller commits),
replica roles on the hosted partitions, and leadership changes delivered to
``on_partition_role`` the way the node delivers them. Broker 1 is "this" broker; broker 2
leads what this one does not.

Covers: the internal topics created on first need with min(3, live brokers) replicas
(another broker's creation adopted); FindCoordinator in every version naming the leader
of the key's partition with its registered address, and COORDINATOR_NOT_AVAILABLE while
the topic or a leader is missing; NOT_COORDINATOR for groups and transactional ids of
partitions led elsewhere, COORDINATOR_LOAD_IN_PROGRESS (and Kafka's blind heartbeat)
while a partition loads; a partition loaded when it becomes led here and unloaded, with
its parked requests answered NOT_COORDINATOR, when it stops being; commits answered
only once the in-sync replicas have them (REQUEST_TIMED_OUT, NOT_COORDINATOR otherwise,
and nothing applied); an assignment that did not replicate sending the group back to
rebalance; producer ids from the controller's blocks; markers written directly where
this broker leads and sent with WriteTxnMarkers (retried) where another does; the
WriteTxnMarkers handler's per-partition answers, and its marker completing transactional
offsets in ``__consumer_offsets``; a leader verifying a producer's first transactional
batch with the coordinator on another broker (AddPartitionsToTxn verify_only), a marker
landing meanwhile refusing it, and the partition's open transaction sparing the ask.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from shazamq.broker.apis import groups as groups_api
from shazamq.broker.apis import txn as txn_api
from shazamq.broker.cluster import records as r
from shazamq.broker.cluster.client import ClientPool
from shazamq.broker.cluster.metadata import MetadataStore
from shazamq.broker.cluster.replica import ReplicaRole
from shazamq.broker.cluster.state import ClusterState, TopicState
from shazamq.broker.groups.coordinator import GroupCoordinator, OffsetCommit
from shazamq.broker.groups.group import GroupState
from shazamq.broker.groups.internal_topic import InternalTopic
from shazamq.broker.groups.offsets_store import OFFSETS_TOPIC
from shazamq.broker.groups.partitioning import coordinator_partition
from shazamq.broker.log import LogConfig, LogManager
from shazamq.broker.metrics import BrokerMetrics
from shazamq.broker.partitions import Partition, PartitionManager
from shazamq.broker.txn import coordinator as txn_coordinator
from shazamq.broker.txn.coordinator import TRANSACTION_STATE_TOPIC, TransactionCoordinator
from shazamq.broker.txn.state_log import TxnState
from shazamq.config import BrokerConfig, GroupsConfig, TransactionsConfig
from shazamq.protocol.errors import ErrorCode as E
from shazamq.protocol.errors import KafkaError
from shazamq.protocol.messages.add_partitions_to_txn_request import AddPartitionsToTxnRequest
from shazamq.protocol.messages.add_partitions_to_txn_response import (
    AddPartitionsToTxnPartitionResult,
    AddPartitionsToTxnResponse,
    AddPartitionsToTxnResult,
    AddPartitionsToTxnTopicResult,
)
from shazamq.protocol.messages.describe_transactions_request import (
    DescribeTransactionsRequest,
)
from shazamq.protocol.messages.find_coordinator_request import FindCoordinatorRequest
from shazamq.protocol.messages.write_txn_markers_request import (
    WritableTxnMarker,
    WritableTxnMarkerTopic,
    WriteTxnMarkersRequest,
)
from shazamq.protocol.messages.write_txn_markers_response import (
    WritableTxnMarkerPartitionResult,
    WritableTxnMarkerResult,
    WritableTxnMarkerTopicResult,
    WriteTxnMarkersResponse,
)
from shazamq.protocol.records import Record, build_batch

NODE = 1
OTHER = 2
PARTITIONS = 4
ADDRESSES = {1: ("broker-1.test", 9101), 2: ("broker-2.test", 9102), 3: ("broker-3.test", 9103)}


def apply(state: ClusterState, record: r.Record) -> None:
    assert state.apply(r.encode(record)) == 0


# -- stand-ins for what the cluster node gives the coordinators --------------------------


class FakeClient:
    """A leader's connection: answers WriteTxnMarkers with the errors the test scripts."""

    def __init__(self, answers: list[int]) -> None:
        self.answers = answers
        self.requests: list[WriteTxnMarkersRequest] = []
        self.gate: asyncio.Event | None = None  # when set, answers wait for it

    def best_version(self, api_key: int, wanted_max: int) -> int:
        assert api_key == 27
        return wanted_max

    async def request(self, api_key: int, version: int, message: Any, *, timeout: float) -> Any:
        assert api_key == 27 and isinstance(message, WriteTxnMarkersRequest)
        self.requests.append(message)
        if self.gate is not None:
            await self.gate.wait()
        code = self.answers.pop(0) if self.answers else 0
        return WriteTxnMarkersResponse(
            markers=[
                WritableTxnMarkerResult(
                    producer_id=m.producer_id,
                    topics=[
                        WritableTxnMarkerTopicResult(
                            name=t.name,
                            partitions=[
                                WritableTxnMarkerPartitionResult(partition_index=i, error_code=code)
                                for i in t.partition_indexes
                            ],
                        )
                        for t in m.topics
                    ],
                )
                for m in message.markers
            ]
        )


class FakePool:
    def __init__(self) -> None:
        self.clients: dict[int, FakeClient] = {}

    async def get(self, node_id: int) -> FakeClient:
        return self.clients.setdefault(node_id, FakeClient([]))

    def invalidate(self, node_id: int) -> None:
        pass

    async def close(self) -> None:
        pass


class FakeCluster:
    """What the coordinators use of ``ClusterNode``, over a real ``ClusterState``."""

    def __init__(self, state: ClusterState, metadata: MetadataStore) -> None:
        self.node_id = NODE
        self.state = state
        self.metadata = metadata
        self.on_partition_role: list[Any] = []
        self.next_producer_id = 5000
        self.blocks = 0
        self.created: list[tuple[str, list[list[int]], bool]] = []

    def peer_client_options(self) -> dict[str, object]:
        return {}  # plaintext peers, no SASL

    def min_isr(self, configs: dict[str, str]) -> int:
        return int(configs.get("min.insync.replicas", "1"))

    def advance_high_watermark(self, p: Partition) -> None:
        role = p.replica
        assert role is not None
        hw = role.high_watermark(p.log.log_end_offset)
        if hw > p.log.high_watermark:
            p.log.high_watermark = hw
            role.release_waiters(hw)

    async def allocate_producer_ids(self, count: int) -> int:
        start = self.next_producer_id
        self.next_producer_id += count
        self.blocks += 1
        return start

    def plan_assignment(self, partitions: int, rf: int, seed: str = "") -> list[list[int]]:
        live = sorted(self.state.live_brokers())
        return [[live[(i + k) % len(live)] for k in range(rf)] for i in range(partitions)]

    def check_assignment(self, assignment: list[list[int]]) -> None:
        pass

    async def create_topic(
        self,
        name: str,
        assignment: list[list[int]],
        configs: dict[str, str],
        *,
        internal: bool,
        topic_id: uuid.UUID | None = None,
    ) -> TopicState:
        self.created.append((name, assignment, internal))
        apply(
            self.state,
            r.CreateTopic(
                name=name,
                topic_id=(topic_id or uuid.uuid4()).hex,
                assignment=assignment,
                configs=configs,
                internal=internal,
            ),
        )
        await self.metadata.create_topic(
            name, len(assignment), len(assignment[0]), configs, internal=internal
        )
        return self.state.topics[name]


class Cluster:
    """This broker (node 1) with its coordinators, and the levers a test pulls."""

    def __init__(self, tmp_path: Path, live: int = 2) -> None:
        self.config = BrokerConfig(
            groups=GroupsConfig(
                initial_rebalance_delay_ms=0,
                min_session_timeout_ms=10,
                offsets_topic_num_partitions=PARTITIONS,
            ),
            transactions=TransactionsConfig(state_log_num_partitions=PARTITIONS),
        )
        self.logs = LogManager(str(tmp_path), LogConfig(), auto_high_watermark=False)
        self.metadata = MetadataStore(tmp_path)
        self.parts = PartitionManager(self.config, self.metadata, self.logs)
        self.state = ClusterState()
        for b in range(1, live + 1):
            host, port = ADDRESSES[b]
            apply(
                self.state,
                r.RegisterBroker(broker_id=b, incarnation=f"i{b}", host=host, port=port),
            )
        self.node = FakeCluster(self.state, self.metadata)
        self.parts.cluster = self.node  # type: ignore[assignment]
        self.leaders = FakePool()
        self.broker = SimpleNamespace(
            config=self.config,
            metrics=BrokerMetrics(),
            partitions=self.parts,
            cluster=self.node,
            data_dir=tmp_path,
            node_id=NODE,
            advertised=ADDRESSES[NODE],
        )
        self.groups = GroupCoordinator(self.broker)  # type: ignore[arg-type]
        self.txn = TransactionCoordinator(self.broker)  # type: ignore[arg-type]
        self.broker.groups = self.groups
        self.broker.txn = self.txn

    async def topic(self, name: str, leaders: list[int], *, internal: bool = False) -> None:
        """A topic whose partition i is led by ``leaders[i]``, every one hosted here (as
        leader or follower) with an ISR of its leader alone."""
        self.parts.cluster = None  # the logs are opened the single broker's way
        await self.parts.create_topic(name, len(leaders), 1, {}, internal=internal)
        self.parts.cluster = self.node  # type: ignore[assignment]
        assignment = [[leader, NODE if leader != NODE else OTHER] for leader in leaders]
        apply(
            self.state,
            r.CreateTopic(
                name=name, topic_id=uuid.uuid4().hex, assignment=assignment, internal=internal
            ),
        )
        t = self.state.topics[name]
        for i, info in enumerate(t.partitions):
            assert info.leader == leaders[i]
            info.isr = [info.leader]
            p = self.parts.get(name, i)
            assert p is not None
            p.replica = ReplicaRole(
                broker_id=NODE,
                topic_id=t.topic_id,
                replicas=[],
                isr=[],
                leader=-2,
                leader_epoch=-1,
                partition_epoch=-1,
            )
            p.replica.update(info, time.monotonic())
            p.leader_epoch = info.leader_epoch

    def elect(self, name: str, index: int, leader: int, isr: list[int] | None = None) -> None:
        """A committed leadership change, as the node reconciles it."""
        info = self.state.topics[name].partitions[index]
        info.leader = leader
        info.leader_epoch += 1
        info.partition_epoch += 1
        info.isr = isr or [leader]
        p = self.parts.get(name, index)
        assert p is not None and p.replica is not None
        changed, _ = p.replica.update(info, time.monotonic())
        p.leader_epoch = info.leader_epoch
        if not p.replica.is_leader:
            p.replica.fail_waiters(E.NOT_LEADER_OR_FOLLOWER)
        if changed:
            for listener in list(self.node.on_partition_role):
                listener(p, p.replica.is_leader)

    def catch_up(self, name: str, index: int, follower: int = OTHER) -> None:
        """``follower`` fetches everything the leader has."""
        p = self.parts.get(name, index)
        assert p is not None and p.replica is not None
        leo = p.log.log_end_offset
        p.replica.record_fetch(follower, leo, leo, time.monotonic())
        self.node.advance_high_watermark(p)

    async def start(self) -> None:
        await self.txn.start()
        await self.groups.start()
        # markers travel on connections of their own, not the replica fetchers'; here the
        # leaders answer them as the test scripts
        assert isinstance(self.txn.marker_pool, ClientPool)
        await self.txn.marker_pool.close()
        self.txn.marker_pool = self.leaders  # type: ignore[assignment]
        await self.loaded()

    async def loaded(self) -> None:
        for coordinator in (self.groups, self.txn):
            tasks = [o.task for o in coordinator._owned.values() if o.task is not None]
            if tasks:
                await asyncio.wait(tasks)

    async def close(self) -> None:
        await self.groups.stop()
        await self.txn.stop()
        self.logs.close()


def led_by(leader: int, leaders: list[int], prefix: str = "g") -> str:
    """A key whose partition of a ``leaders``-led internal topic is led by ``leader``."""
    for n in range(1000):
        key = f"{prefix}{n}"
        if leaders[coordinator_partition(key, len(leaders))] == leader:
            return key
    raise AssertionError("no such key")


INTERNAL_LEADERS = [NODE, OTHER, NODE, OTHER]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path)
    await c.topic(OFFSETS_TOPIC, INTERNAL_LEADERS, internal=True)
    await c.topic(TRANSACTION_STATE_TOPIC, INTERNAL_LEADERS, internal=True)
    await c.topic("data", [NODE, OTHER])
    yield c
    await c.close()


class Handlers:
    """A dispatcher that keeps the handlers an API module registers."""

    def __init__(self) -> None:
        self.by_key: dict[int, Any] = {}

    def register(self, key: int, lo: int, hi: int, handler: Any) -> None:
        self.by_key[key] = handler

    async def call(self, key: int, version: int, request: Any) -> Any:
        return await self.by_key[key](SimpleNamespace(api_version=version), request)


def commit_kw(group: str, offset: int = 5, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(
        group_id=group,
        generation_id=-1,
        member_id="",
        group_instance_id=None,
        retention_ms=-1,
        offsets={("data", 0): OffsetCommit(offset)},
    )
    args.update(kw)
    return args


def fetched(c: Cluster, group: str) -> int:
    code, out = c.groups.fetch_offsets(group, [("data", 0)])
    assert code == 0
    return out[0].offset


# -- creating the internal topics ---------------------------------------------------------


class _TopicsOnly:
    """A partition manager reduced to what ``InternalTopic.ensure`` asks of it."""

    def __init__(self, cluster: Any, race: bool = False) -> None:
        self.cluster = cluster
        self.metadata = self
        self.topics: dict[str, Any] = {}
        self.calls: list[tuple[str, int, int, bool]] = []
        self.race = race

    def get(self, name: str) -> Any:
        return self.topics.get(name)

    async def create_topic(
        self, name: str, partitions: int, rf: int, configs: dict[str, str], *, internal: bool
    ) -> Any:
        self.calls.append((name, partitions, rf, internal))
        # another broker's creation commits first: this one is refused, the topic exists
        self.topics[name] = SimpleNamespace(partitions=partitions + 1 if self.race else partitions)
        if self.race:
            raise KafkaError(E.TOPIC_ALREADY_EXISTS, f"topic {name!r} already exists")
        return self.topics[name]


@pytest.mark.parametrize(("live", "rf"), [(1, 1), (2, 2), (3, 3), (5, 3)])
async def test_internal_topic_gets_up_to_three_replicas(live: int, rf: int) -> None:
    state = ClusterState()
    for b in range(live):
        apply(state, r.RegisterBroker(broker_id=b, incarnation="i", host="h", port=b))
    parts = _TopicsOnly(SimpleNamespace(state=state))
    topic = InternalTopic(parts, OFFSETS_TOPIC, 7, {"cleanup.policy": "compact"})  # type: ignore[arg-type]
    await topic.ensure()
    assert parts.calls == [(OFFSETS_TOPIC, 7, rf, True)]
    assert topic.count == 7


async def test_a_concurrent_creation_is_adopted() -> None:
    state = ClusterState()
    apply(state, r.RegisterBroker(broker_id=1, incarnation="i", host="h", port=1))
    parts = _TopicsOnly(SimpleNamespace(state=state), race=True)
    topic = InternalTopic(parts, TRANSACTION_STATE_TOPIC, 7, {})  # type: ignore[arg-type]
    await topic.ensure()
    assert topic.count == 8  # the winner's partition count, not the configured one


async def test_no_live_broker_means_not_available() -> None:
    parts = _TopicsOnly(SimpleNamespace(state=ClusterState()))
    topic = InternalTopic(parts, OFFSETS_TOPIC, 7, {})  # type: ignore[arg-type]
    with pytest.raises(KafkaError) as info:
        await topic.ensure()
    assert info.value.code == E.COORDINATOR_NOT_AVAILABLE and not parts.calls


# -- FindCoordinator ---------------------------------------------------------------------


async def test_find_coordinator_creates_the_topic_then_names_the_leader(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    try:
        await c.start()
        h = Handlers()
        groups_api.register(h, c.broker)  # type: ignore[arg-type]
        resp = await h.call(10, 1, FindCoordinatorRequest(key="g", key_type=0))
        assert (resp.error_code, resp.node_id) == (E.COORDINATOR_NOT_AVAILABLE, -1)
        creating = c.groups.store.topic._creating
        assert creating is not None
        await creating
        ((name, assignment, internal),) = c.node.created
        assert name == OFFSETS_TOPIC and internal
        assert len(assignment) == PARTITIONS and all(len(a) == 2 for a in assignment)
        resp = await h.call(10, 1, FindCoordinatorRequest(key="g", key_type=0))
        leader = c.state.topics[OFFSETS_TOPIC].partitions[coordinator_partition("g", 4)].leader
        assert (resp.error_code, resp.node_id) == (0, leader)
        assert (resp.host, resp.port) == ADDRESSES[leader]
    finally:
        await c.close()


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4, 5])
async def test_find_coordinator_names_the_leader_of_the_keys_partition(
    cluster: Cluster, version: int
) -> None:
    await cluster.start()
    h = Handlers()
    groups_api.register(h, cluster.broker)  # type: ignore[arg-type]
    key_types = [0] if version == 0 else [0, 1]
    for key_type in key_types:
        keys = [led_by(NODE, INTERNAL_LEADERS), led_by(OTHER, INTERNAL_LEADERS)]
        if version >= 4:
            resp = await h.call(
                10, version, FindCoordinatorRequest(key_type=key_type, coordinator_keys=keys)
            )
            answers = [(x.key, x.error_code, x.node_id, x.host, x.port) for x in resp.coordinators]
        else:
            answers = []
            for key in keys:
                resp = await h.call(10, version, FindCoordinatorRequest(key=key, key_type=key_type))
                answers.append((key, resp.error_code, resp.node_id, resp.host, resp.port))
        assert answers == [
            (keys[0], 0, NODE, *ADDRESSES[NODE]),
            (keys[1], 0, OTHER, *ADDRESSES[OTHER]),
        ]


async def test_find_coordinator_without_a_live_leader(cluster: Cluster) -> None:
    await cluster.start()
    h = Handlers()
    groups_api.register(h, cluster.broker)  # type: ignore[arg-type]
    key = led_by(OTHER, INTERNAL_LEADERS)
    index = coordinator_partition(key, PARTITIONS)
    cluster.state.topics[TRANSACTION_STATE_TOPIC].partitions[index].leader = -1
    resp = await h.call(10, 3, FindCoordinatorRequest(key=key, key_type=1))
    assert (resp.error_code, resp.node_id, resp.host, resp.port) == (
        E.COORDINATOR_NOT_AVAILABLE,
        -1,
        "",
        -1,
    )
    apply(cluster.state, r.FenceBroker(broker_id=OTHER, incarnation=f"i{OTHER}"))
    cluster.state.topics[OFFSETS_TOPIC].partitions[index].leader = OTHER  # not yet moved
    resp = await h.call(10, 3, FindCoordinatorRequest(key=key, key_type=0))
    assert resp.error_code == E.COORDINATOR_NOT_AVAILABLE
    resp = await h.call(10, 3, FindCoordinatorRequest(key="", key_type=1))
    assert resp.error_code == E.INVALID_REQUEST


# -- which broker serves a key -----------------------------------------------------------


async def test_groups_led_elsewhere_get_not_coordinator(cluster: Cluster) -> None:
    await cluster.start()
    g = cluster.groups
    away = led_by(OTHER, INTERNAL_LEADERS)
    nc = E.NOT_COORDINATOR
    join = await g.join_group(
        group_id=away,
        member_id="",
        group_instance_id=None,
        require_known_member_id=True,
        client_id="c",
        client_host="/h",
        session_timeout_ms=1000,
        rebalance_timeout_ms=1000,
        protocol_type="consumer",
        protocols=[("range", b"")],
    )
    assert join.error == nc
    sync = await g.sync_group(
        group_id=away,
        generation_id=1,
        member_id="m",
        group_instance_id=None,
        protocol_type=None,
        protocol_name=None,
        assignments={},
    )
    assert sync.error == nc
    assert g.heartbeat(away, 1, "m", None) == nc
    assert g.leave_group(away, [("m", None)]) == (nc, [])
    assert await g.commit_offsets_async(**commit_kw(away)) == {("data", 0): nc}
    assert g.fetch_offsets(away, None) == (nc, [])
    assert await g.delete_offsets(away, [("data", 0)]) == (nc, {})
    assert g.describe_group(away).error == nc
    assert await g.delete_groups([away]) == {away: nc}
    txn_commit = await g.txn_commit_offsets_async(
        transactional_id="t",
        group_id=away,
        producer_id=1,
        producer_epoch=0,
        generation_id=-1,
        member_id="",
        group_instance_id=None,
        offsets={("data", 0): OffsetCommit(1)},
    )
    assert txn_commit == {("data", 0): nc}
    # a group of a partition led here is served, and may commit offsets of a partition
    # led by another broker (it exists in the cluster)
    here = led_by(NODE, INTERNAL_LEADERS)
    assert await g.commit_offsets_async(
        **commit_kw(here, offsets={("data", 1): OffsetCommit(3)})
    ) == {("data", 1): 0}
    assert await g.commit_offsets_async(
        **commit_kw(here, offsets={("nope", 0): OffsetCommit(3)})
    ) == {("nope", 0): E.UNKNOWN_TOPIC_OR_PARTITION}


async def test_transactional_ids_led_elsewhere_get_not_coordinator(cluster: Cluster) -> None:
    await cluster.start()
    t = cluster.txn
    away = led_by(OTHER, INTERNAL_LEADERS, "tx")
    nc = E.NOT_COORDINATOR
    assert (await t.init_producer_id_async(away, 10_000)).error == nc
    assert await t.add_partitions_async(away, 1, 0, [("data", 0)]) == {("data", 0): nc}
    assert await t.add_offsets_async(away, 1, 0, "g") == nc
    assert await t.end_txn_async(away, 1, 0, True) == nc
    assert t.key_error(away) == nc
    h = Handlers()
    txn_api.register(h, cluster.broker)  # type: ignore[arg-type]
    resp = await h.call(65, 0, DescribeTransactionsRequest(transactional_ids=[away]))
    assert resp.transaction_states[0].error_code == nc
    # a leader asks the coordinator elsewhere (AddPartitionsToTxn verify_only), not this one
    assert await t.verify_produce_async(away, 1, 0, [("data", 0)]) == {("data", 0): nc}


async def test_a_loading_partition_answers_load_in_progress(cluster: Cluster) -> None:
    g = cluster.groups
    gate = threading.Event()
    real_load = g.store.load_partition

    def slow_load(index: int) -> Any:
        gate.wait(5)
        return real_load(index)

    g.store.load_partition = slow_load  # type: ignore[method-assign]
    await cluster.txn.start()
    await g.start()
    here = led_by(NODE, INTERNAL_LEADERS)
    try:
        assert g.describe_group(here).error == E.COORDINATOR_LOAD_IN_PROGRESS
        assert g.heartbeat(here, 1, "m", None) == 0  # answered blindly while loading
        sync = await g.sync_group(
            group_id=here,
            generation_id=1,
            member_id="m",
            group_instance_id=None,
            protocol_type=None,
            protocol_name=None,
            assignments={},
        )
        assert sync.error == E.REBALANCE_IN_PROGRESS
        assert (await g.commit_offsets_async(**commit_kw(here)))[("data", 0)] == (
            E.COORDINATOR_LOAD_IN_PROGRESS
        )
        assert g.list_groups()[0] == E.COORDINATOR_LOAD_IN_PROGRESS
    finally:
        gate.set()
    await cluster.loaded()
    assert g.describe_group(here).error == 0
    assert g.list_groups() == (0, [])


# -- loading and unloading on leadership changes ---------------------------------------------


async def join_and_sync(g: GroupCoordinator, group: str) -> str:
    kw: dict[str, Any] = dict(
        group_id=group,
        group_instance_id=None,
        require_known_member_id=False,
        client_id="c",
        client_host="/h",
        session_timeout_ms=5000,
        rebalance_timeout_ms=5000,
        protocol_type="consumer",
        protocols=[("range", b"")],
    )
    joined = await g.join_group(member_id="", **kw)
    assert joined.error == 0
    synced = await g.sync_group(
        group_id=group,
        generation_id=joined.generation_id,
        member_id=joined.member_id,
        group_instance_id=None,
        protocol_type=None,
        protocol_name=None,
        assignments={joined.member_id: b"a"},
    )
    assert synced.error == 0
    return joined.member_id


async def test_partitions_load_and_unload_with_leadership(cluster: Cluster) -> None:
    g = cluster.groups
    away = led_by(OTHER, INTERNAL_LEADERS)
    index = coordinator_partition(away, PARTITIONS)
    await cluster.start()
    assert g.describe_group(away).error == E.NOT_COORDINATOR

    # leadership moves here: the partition's groups are loaded
    cluster.elect(OFFSETS_TOPIC, index, NODE)
    assert g.describe_group(away).error == E.COORDINATOR_LOAD_IN_PROGRESS
    await cluster.loaded()
    assert await g.commit_offsets_async(**commit_kw(away, 42)) == {("data", 0): 0}
    member = await join_and_sync(g, away)
    assert g.describe_group(away).state == "Stable"

    # a second member parks in JoinGroup waiting for the first to rejoin
    parked = asyncio.ensure_future(
        g.join_group(
            group_id=away,
            member_id="",
            group_instance_id=None,
            require_known_member_id=False,
            client_id="c",
            client_host="/h",
            session_timeout_ms=5000,
            rebalance_timeout_ms=5000,
            protocol_type="consumer",
            protocols=[("range", b"")],
        )
    )
    await asyncio.sleep(0.02)
    assert not parked.done()

    # leadership moves away: parked requests are answered, the groups forgotten
    cluster.elect(OFFSETS_TOPIC, index, OTHER)
    result = await asyncio.wait_for(parked, 1)
    assert result.error == E.NOT_COORDINATOR
    assert away not in g.groups
    assert g.heartbeat(away, 1, member, None) == E.NOT_COORDINATOR

    # and back: what was committed (and replicated) is loaded again
    cluster.elect(OFFSETS_TOPIC, index, NODE)
    await cluster.loaded()
    assert fetched(cluster, away) == 42
    assert g.describe_group(away).state == "Stable"


async def test_transaction_state_loads_and_unloads_with_leadership(cluster: Cluster) -> None:
    t = cluster.txn
    away = led_by(OTHER, INTERNAL_LEADERS, "tx")
    index = coordinator_partition(away, PARTITIONS)
    await cluster.start()
    cluster.elect(TRANSACTION_STATE_TOPIC, index, NODE)
    await cluster.loaded()
    first = await t.init_producer_id_async(away, 10_000)
    assert first.error == 0
    cluster.elect(TRANSACTION_STATE_TOPIC, index, OTHER)
    assert away not in t.txns and t.key_error(away) == E.NOT_COORDINATOR
    cluster.elect(TRANSACTION_STATE_TOPIC, index, NODE)
    await cluster.loaded()
    assert t.txns[away].producer_id == first.producer_id
    again = await t.init_producer_id_async(away, 10_000)
    assert (again.producer_id, again.producer_epoch) == (
        first.producer_id,
        first.producer_epoch + 1,
    )


# -- replicated writes -------------------------------------------------------------------------


async def test_commits_wait_for_the_in_sync_replicas(cluster: Cluster) -> None:
    g = cluster.groups
    here = led_by(NODE, INTERNAL_LEADERS)
    index = coordinator_partition(here, PARTITIONS)
    await cluster.start()
    cluster.elect(OFFSETS_TOPIC, index, NODE, isr=[NODE, OTHER])  # same leader, wider ISR
    await cluster.loaded()

    pending = asyncio.ensure_future(g.commit_offsets_async(**commit_kw(here, 7)))
    await asyncio.sleep(0.05)
    assert not pending.done()
    assert fetched(cluster, here) == -1  # not visible before it is replicated
    cluster.catch_up(OFFSETS_TOPIC, index)
    assert await asyncio.wait_for(pending, 1) == {("data", 0): 0}
    assert fetched(cluster, here) == 7

    g.commit_timeout_s = 0.05
    assert await g.commit_offsets_async(**commit_kw(here, 8)) == {("data", 0): E.REQUEST_TIMED_OUT}
    assert fetched(cluster, here) == 7

    g.commit_timeout_s = 5
    pending = asyncio.ensure_future(g.commit_offsets_async(**commit_kw(here, 9)))
    await asyncio.sleep(0.02)
    cluster.elect(OFFSETS_TOPIC, index, OTHER)
    assert await asyncio.wait_for(pending, 1) == {("data", 0): E.NOT_COORDINATOR}


async def test_an_assignment_that_does_not_replicate_means_rebalance(cluster: Cluster) -> None:
    g = cluster.groups
    here = led_by(NODE, INTERNAL_LEADERS)
    index = coordinator_partition(here, PARTITIONS)
    await cluster.start()
    cluster.elect(OFFSETS_TOPIC, index, NODE, isr=[NODE, OTHER])
    await cluster.loaded()
    g.commit_timeout_s = 0.05
    joined = await g.join_group(
        group_id=here,
        member_id="",
        group_instance_id=None,
        require_known_member_id=False,
        client_id="c",
        client_host="/h",
        session_timeout_ms=5000,
        rebalance_timeout_ms=5000,
        protocol_type="consumer",
        protocols=[("range", b"")],
    )
    synced = await g.sync_group(
        group_id=here,
        generation_id=joined.generation_id,
        member_id=joined.member_id,
        group_instance_id=None,
        protocol_type=None,
        protocol_name=None,
        assignments={joined.member_id: b"a"},
    )
    assert synced.error == E.REBALANCE_IN_PROGRESS  # Kafka's answer to a timed-out write
    assert g.groups[here].state is GroupState.PREPARING_REBALANCE
    assert g.groups[here].members[joined.member_id].assignment == b""


# -- producer ids and markers ------------------------------------------------------------------


async def test_producer_ids_come_from_the_controllers_blocks(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(txn_coordinator, "PRODUCER_ID_BLOCK", 2)
    await cluster.start()
    ids = [(await cluster.txn.init_producer_id_async(None, 0)).producer_id for _ in range(5)]
    assert ids == [5000, 5001, 5002, 5003, 5004]
    assert cluster.node.blocks == 3
    assert not (cluster.broker.data_dir / "producer-id-block").exists()


def open_txn_record(c: Cluster, index: int, pid: int, epoch: int) -> None:
    p = c.parts.get("data", index)
    assert p is not None
    batch = build_batch(
        [Record(value=b"x")],
        producer_id=pid,
        producer_epoch=epoch,
        base_sequence=0,
        transactional=True,
    )
    p.log.append(bytearray(batch), leader_epoch=p.leader_epoch)


async def test_markers_go_to_each_partitions_leader(cluster: Cluster) -> None:
    t = cluster.txn
    await cluster.start()
    txn_id = led_by(NODE, INTERNAL_LEADERS, "tx")
    init = await t.init_producer_id_async(txn_id, 60_000)
    pid, epoch = init.producer_id, init.producer_epoch
    assert await t.add_partitions_async(txn_id, pid, epoch, [("data", 0), ("data", 1)]) == {
        ("data", 0): 0,
        ("data", 1): 0,
    }
    open_txn_record(cluster, 0, pid, epoch)
    local = cluster.parts.get("data", 0)
    assert local is not None
    cluster.node.advance_high_watermark(local)
    assert local.log.last_stable_offset == 0  # the transaction holds it back
    # broker 2 is not ready at first: the marker is sent again
    client = await cluster.leaders.get(OTHER)
    client.answers = [int(E.NOT_LEADER_OR_FOLLOWER)]

    assert await t.end_txn_async(txn_id, pid, epoch, True) == 0
    job = t._jobs.get(txn_id)
    assert job is not None
    await asyncio.wait_for(job, 5)

    assert t.txns[txn_id].state is TxnState.COMPLETE_COMMIT
    assert len(client.requests) == 2
    (marker,) = client.requests[-1].markers
    assert (marker.producer_id, marker.producer_epoch, marker.transaction_result) == (
        pid,
        epoch,
        True,
    )
    assert [(x.name, x.partition_indexes) for x in marker.topics] == [("data", [1])]
    state_p = cluster.parts.get(TRANSACTION_STATE_TOPIC, coordinator_partition(txn_id, 4))
    assert state_p is not None and marker.coordinator_epoch == state_p.leader_epoch
    assert local.log.last_stable_offset == local.log.log_end_offset  # committed here


async def test_write_txn_markers_on_the_leader(cluster: Cluster) -> None:
    await cluster.start()
    h = Handlers()
    txn_api.register(h, cluster.broker)  # type: ignore[arg-type]
    g = cluster.groups
    group = led_by(NODE, INTERNAL_LEADERS)
    offsets_index = coordinator_partition(group, PARTITIONS)
    pid = 77
    open_txn_record(cluster, 0, pid, 0)
    # the transaction also committed offsets: they stay pending until the marker
    assert await g.txn_commit_offsets_async(
        transactional_id=led_by(OTHER, INTERNAL_LEADERS, "tx"),  # its coordinator is broker 2
        group_id=group,
        producer_id=pid,
        producer_epoch=0,
        generation_id=-1,
        member_id="",
        group_instance_id=None,
        offsets={("data", 0): OffsetCommit(11)},
    ) == {("data", 0): 0}
    assert fetched(cluster, group) == -1

    request = WriteTxnMarkersRequest(
        markers=[
            WritableTxnMarker(
                producer_id=pid,
                producer_epoch=0,
                transaction_result=True,
                coordinator_epoch=3,
                topics=[
                    WritableTxnMarkerTopic(name="data", partition_indexes=[0, 1]),
                    WritableTxnMarkerTopic(name=OFFSETS_TOPIC, partition_indexes=[offsets_index]),
                    WritableTxnMarkerTopic(name="gone", partition_indexes=[0]),
                ],
            )
        ]
    )
    resp = await h.call(27, 1, request)
    (result,) = resp.markers
    codes = {(t.name, p.partition_index): p.error_code for t in result.topics for p in t.partitions}
    assert codes == {
        ("data", 0): 0,
        ("data", 1): E.NOT_LEADER_OR_FOLLOWER,  # led by broker 2
        (OFFSETS_TOPIC, offsets_index): 0,
        ("gone", 0): E.UNKNOWN_TOPIC_OR_PARTITION,
    }
    data = cluster.parts.get("data", 0)
    assert data is not None and data.log.last_stable_offset == data.log.log_end_offset
    assert fetched(cluster, group) == 11

    # an older coordinator's marker is refused once a newer one wrote there
    stale = WriteTxnMarkersRequest(
        markers=[
            WritableTxnMarker(
                producer_id=pid,
                producer_epoch=0,
                transaction_result=False,
                coordinator_epoch=1,
                topics=[WritableTxnMarkerTopic(name="data", partition_indexes=[0])],
            )
        ]
    )
    resp = await h.call(27, 0, stale)
    assert resp.markers[0].topics[0].partitions[0].error_code == E.TRANSACTION_COORDINATOR_FENCED


async def test_an_abort_racing_the_previous_commit_is_about_the_next_transaction(
    cluster: Cluster,
) -> None:
    """librdkafka's abort right after its AddPartitions was turned away (the previous commit
    still completing) ends the new, empty transaction: it is neither refused as in the
    wrong state nor allowed to touch the committed one."""
    t = cluster.txn
    await cluster.start()
    txn_id = led_by(NODE, INTERNAL_LEADERS, "tx")
    init = await t.init_producer_id_async(txn_id, 60_000)
    pid, epoch = init.producer_id, init.producer_epoch
    data = [("data", 0), ("data", 1)]
    assert await t.add_partitions_async(txn_id, pid, epoch, data) == dict.fromkeys(data, 0)
    client = await cluster.leaders.get(OTHER)
    client.gate = asyncio.Event()  # broker 2 holds the commit's marker

    assert await t.end_txn_async(txn_id, pid, epoch, True) == 0
    assert t.txns[txn_id].state is TxnState.PREPARE_COMMIT
    busy = int(E.CONCURRENT_TRANSACTIONS)
    # the next transaction's first partition, and its abort, while the markers are out
    assert await t.add_partitions_async(txn_id, pid, epoch, data[:1]) == {data[0]: busy}
    assert await t.end_txn_async(txn_id, pid, epoch, False) == busy
    assert await t.end_txn_async(txn_id, pid, epoch, True) == busy

    client.gate.set()
    job = t._jobs.get(txn_id)
    assert job is not None
    await asyncio.wait_for(job, 5)
    assert t.txns[txn_id].state is TxnState.COMPLETE_COMMIT
    # the abort retried: the empty next transaction ends, the commit stays a commit
    assert await t.end_txn_async(txn_id, pid, epoch, False) == 0
    assert t.txns[txn_id].state is TxnState.COMPLETE_COMMIT
    assert [m.transaction_result for r in client.requests for m in r.markers] == [True]
    # once only: a second abort of the committed transaction is the client's error
    assert await t.end_txn_async(txn_id, pid, epoch, False) == int(E.INVALID_TXN_STATE)
    # and the producer goes on with a transaction of its own
    assert await t.add_partitions_async(txn_id, pid, epoch, data[:1]) == {data[0]: 0}
    assert t.txns[txn_id].state is TxnState.ONGOING


async def test_an_abort_after_a_commit_without_a_new_transaction_is_refused(
    cluster: Cluster,
) -> None:
    t = cluster.txn
    await cluster.start()
    txn_id = led_by(NODE, INTERNAL_LEADERS, "tx")
    init = await t.init_producer_id_async(txn_id, 60_000)
    pid, epoch = init.producer_id, init.producer_epoch
    assert await t.add_partitions_async(txn_id, pid, epoch, [("data", 1)]) == {("data", 1): 0}
    assert await t.end_txn_async(txn_id, pid, epoch, True) == 0
    job = t._jobs.get(txn_id)
    assert job is not None
    await asyncio.wait_for(job, 5)
    assert await t.end_txn_async(txn_id, pid, epoch, False) == int(E.INVALID_TXN_STATE)
    assert await t.end_txn_async(txn_id, pid, epoch, True) == 0  # a retried commit


class VerifyClient:
    """A coordinator broker's connection: answers AddPartitionsToTxn v4+ as scripted."""

    def __init__(self, answers: list[int]) -> None:
        self.answers = answers
        self.requests: list[AddPartitionsToTxnRequest] = []
        self.gate: asyncio.Event | None = None

    def best_version(self, api_key: int, wanted_max: int) -> int:
        assert api_key == 24
        return wanted_max

    async def request(self, api_key: int, version: int, message: Any, *, timeout: float) -> Any:
        assert api_key == 24 and version >= 4
        self.requests.append(message)
        if self.gate is not None:
            await self.gate.wait()
        code = self.answers.pop(0)
        (t,) = message.transactions
        return AddPartitionsToTxnResponse(
            results_by_transaction=[
                AddPartitionsToTxnResult(
                    transactional_id=t.transactional_id,
                    topic_results=[
                        AddPartitionsToTxnTopicResult(
                            name=x.name,
                            results_by_partition=[
                                AddPartitionsToTxnPartitionResult(
                                    partition_index=i, partition_error_code=code
                                )
                                for i in x.partitions
                            ],
                        )
                        for x in t.topics
                    ],
                )
            ]
        )


class VerifyPool:
    def __init__(self, client: VerifyClient) -> None:
        self.client = client

    async def get(self, node_id: int) -> VerifyClient:
        assert node_id == OTHER
        return self.client

    def invalidate(self, node_id: int) -> None:
        pass

    async def close(self) -> None:
        pass


async def test_leaders_verify_with_the_coordinator_elsewhere(cluster: Cluster) -> None:
    await cluster.start()
    v = cluster.txn.verifier
    client = VerifyClient([0, int(E.INVALID_TXN_STATE), int(E.NOT_COORDINATOR), 0])
    v.pool = VerifyPool(client)  # type: ignore[assignment]
    away = led_by(OTHER, INTERNAL_LEADERS, "tx")
    p = cluster.parts.get("data", 0)  # led here
    assert p is not None
    batch = build_batch(
        [Record(value=b"x")], producer_id=7, producer_epoch=3, base_sequence=0, transactional=True
    )
    assert await v.verify(p, away, batch) is None
    (tx,) = client.requests[0].transactions
    assert (tx.transactional_id, tx.producer_id, tx.producer_epoch, tx.verify_only) == (
        away,
        7,
        3,
        True,
    )
    assert [(x.name, x.partitions) for x in tx.topics] == [("data", [0])]
    refused = await v.verify(p, away, batch)
    assert refused is not None and refused[0] == E.INVALID_TXN_STATE
    retry = await v.verify(p, away, batch)  # the coordinator moved: the producer retries
    assert retry is not None and retry[0] == E.NOT_ENOUGH_REPLICAS
    # a marker lands here while the answer is on its way: the batch would open a
    # transaction that just ended, so it is refused (retriably) even though verified
    client.gate = asyncio.Event()
    pending = asyncio.ensure_future(v.verify(p, away, batch))
    for _ in range(100):
        if len(client.requests) == 4:
            break
        await asyncio.sleep(0)
    assert len(client.requests) == 4
    p.txn_markers += 1
    client.gate.set()
    raced = await pending
    assert raced is not None and raced[0] == E.NOT_ENOUGH_REPLICAS
    # once a batch opened the producer's transaction here, its next ones ask nobody
    open_txn_record(cluster, 0, 7, 3)
    assert await v.verify(p, away, batch) is None
    assert len(client.requests) == 4
