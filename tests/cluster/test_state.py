"""The cluster state machine and replica placement: pure, so tested exhaustively here.

Invariants checked after every record of random histories: a leader is always a live
member of its ISR (or -1), the ISR is a non-empty subset of the replicas, epochs never go
down, replaying the same records gives the same snapshot, and a snapshot restores the
same state. Placement spreads leaders and racks.
"""

from __future__ import annotations

import uuid
from collections import Counter

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shazamq.broker.cluster import records as r
from shazamq.broker.cluster.placement import assign_replicas, choose_leader, validate_assignment
from shazamq.broker.cluster.state import ClusterState
from shazamq.protocol.errors import ErrorCode, KafkaError


def apply(state: ClusterState, record: r.Record) -> int:
    return state.apply(r.encode(record))


def registered(n: int, racks: list[str | None] | None = None) -> ClusterState:
    s = ClusterState()
    for b in range(n):
        rack = racks[b] if racks else None
        assert (
            apply(
                s, r.RegisterBroker(broker_id=b, incarnation=f"i{b}", host="h", port=b, rack=rack)
            )
            == 0
        )
    return s


def create(s: ClusterState, name: str, assignment: list[list[int]], **kw) -> str:
    tid = uuid.uuid4().hex
    assert apply(s, r.CreateTopic(name=name, topic_id=tid, assignment=assignment, **kw)) == 0
    return tid


def check_invariants(s: ClusterState) -> None:
    for t in s.topics.values():
        assert s.by_id[t.topic_id] is t
        for p in t.partitions:
            assert p.isr, "ISR never empty"
            assert set(p.isr) <= set(p.replicas)
            if p.leader >= 0:
                assert p.leader in p.isr
                assert p.leader in p.replicas


def test_create_elects_first_live_replica_and_rejects_duplicates() -> None:
    s = registered(3)
    tid = create(s, "orders", [[1, 2, 0], [2, 0, 1]])
    t = s.by_id[tid]
    assert [p.leader for p in t.partitions] == [1, 2]
    assert t.partitions[0].isr == [1, 2, 0]
    code = apply(s, r.CreateTopic(name="orders", topic_id=uuid.uuid4().hex, assignment=[[0]]))
    assert code == ErrorCode.TOPIC_ALREADY_EXISTS
    assert apply(s, r.CreateTopic(name="x", topic_id=uuid.uuid4().hex, assignment=[[7]])) == (
        ErrorCode.INVALID_REPLICA_ASSIGNMENT
    )


def test_fencing_moves_leadership_within_the_isr() -> None:
    s = registered(3)
    tid = create(s, "t", [[0, 1, 2]])
    p = s.by_id[tid].partitions[0]
    assert apply(s, r.FenceBroker(broker_id=0, incarnation="i0")) == 0
    assert p.leader == 1 and p.leader_epoch == 1 and p.isr == [1, 2]
    # a stale incarnation cannot fence the broker's next life
    apply(s, r.RegisterBroker(broker_id=0, incarnation="i0b", host="h", port=0))
    assert apply(s, r.FenceBroker(broker_id=0, incarnation="i0")) == ErrorCode.STALE_BROKER_EPOCH


def test_last_isr_member_stays_and_partition_goes_offline_then_returns() -> None:
    s = registered(2)
    tid = create(s, "t", [[0, 1]])
    p = s.by_id[tid].partitions[0]
    # the follower fell out of the ISR first
    assert (
        apply(
            s,
            r.AlterPartition(
                topic_id=tid, partition=0, leader_id=0, leader_epoch=0, partition_epoch=0, isr=[0]
            ),
        )
        == 0
    )
    apply(s, r.FenceBroker(broker_id=0, incarnation="i0"))
    assert p.leader == -1 and p.isr == [0], "no clean leader: offline, ISR kept"
    # the only in-sync replica comes back (heartbeat of the same incarnation)
    apply(s, r.BrokerHeartbeat(broker_id=0, incarnation="i0"))
    assert p.leader == 0 and p.leader_epoch == 2


def test_unclean_election_only_when_the_topic_allows_it() -> None:
    s = registered(2)
    tid = create(s, "t", [[0, 1]], configs={"unclean.leader.election.enable": "true"})
    p = s.by_id[tid].partitions[0]
    apply(
        s,
        r.AlterPartition(
            topic_id=tid, partition=0, leader_id=0, leader_epoch=0, partition_epoch=0, isr=[0]
        ),
    )
    apply(s, r.FenceBroker(broker_id=0, incarnation="i0"))
    assert p.leader == 1 and p.isr == [1]


def test_alter_partition_is_fenced_by_epochs() -> None:
    s = registered(3)
    tid = create(s, "t", [[0, 1, 2]])
    stale = r.AlterPartition(
        topic_id=tid, partition=0, leader_id=0, leader_epoch=0, partition_epoch=0, isr=[0, 1]
    )
    assert apply(s, stale) == 0
    assert apply(s, stale) == ErrorCode.INVALID_UPDATE_VERSION
    wrong_leader = r.AlterPartition(
        topic_id=tid, partition=0, leader_id=1, leader_epoch=0, partition_epoch=1, isr=[1]
    )
    assert apply(s, wrong_leader) == ErrorCode.NOT_LEADER_OR_FOLLOWER
    apply(s, r.FenceBroker(broker_id=2, incarnation="i2"))
    expand = r.AlterPartition(
        topic_id=tid, partition=0, leader_id=0, leader_epoch=0, partition_epoch=1, isr=[0, 1, 2]
    )
    assert apply(s, expand) == ErrorCode.INELIGIBLE_REPLICA


def test_reassignment_adds_then_drops_and_moves_leader() -> None:
    s = registered(4)
    tid = create(s, "t", [[0, 1]])
    p = s.by_id[tid].partitions[0]
    assert apply(s, r.Reassign(topic_id=tid, partition=0, target=[2, 3])) == 0
    assert p.replicas == [2, 3, 0, 1] and p.target == [2, 3] and p.leader == 0
    # new replicas caught up: the leader's ISR expansion completes the move
    assert (
        apply(
            s,
            r.AlterPartition(
                topic_id=tid,
                partition=0,
                leader_id=0,
                leader_epoch=0,
                partition_epoch=p.partition_epoch,
                isr=[0, 1, 2, 3],
            ),
        )
        == 0
    )
    assert p.target is None and p.replicas == [2, 3]
    assert p.leader == 2 and p.isr == [2, 3]


def test_preferred_leader_election() -> None:
    s = registered(3)
    tid = create(s, "t", [[0, 1, 2]])
    p = s.by_id[tid].partitions[0]
    apply(s, r.FenceBroker(broker_id=0, incarnation="i0"))
    apply(s, r.BrokerHeartbeat(broker_id=0, incarnation="i0"))
    assert p.leader == 1
    apply(s, r.ElectLeaders(partitions=[(tid, 0)]))
    assert p.leader == 1, "broker 0 is not in the ISR yet"
    apply(
        s,
        r.AlterPartition(
            topic_id=tid,
            partition=0,
            leader_id=1,
            leader_epoch=1,
            partition_epoch=p.partition_epoch,
            isr=[1, 2, 0],
        ),
    )
    apply(s, r.ElectLeaders(partitions=[(tid, 0)]))
    assert p.leader == 0 and p.leader_epoch == 2


def test_producer_id_blocks_never_overlap() -> None:
    s = ClusterState()
    assert apply(s, r.AllocateProducerIds(broker_id=0, start=0, count=1000)) == 0
    assert apply(s, r.AllocateProducerIds(broker_id=1, start=0, count=1000)) == (
        ErrorCode.INVALID_UPDATE_VERSION
    )
    assert apply(s, r.AllocateProducerIds(broker_id=1, start=1000, count=1000)) == 0
    assert s.next_producer_id == 2000


def test_unknown_record_bytes_are_skipped_everywhere() -> None:
    s = ClusterState()
    assert s.apply(b"\xc1garbage") == ErrorCode.UNSUPPORTED_VERSION
    future = msgspec.msgpack.encode({"type": "from_the_future", "v": 9})
    assert s.apply(future) == ErrorCode.UNSUPPORTED_VERSION


# -- random histories ----------------------------------------------------------------------

BROKERS = 4
_broker = st.integers(0, BROKERS - 1)


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[str, tuple]]:
    return draw(
        st.lists(
            st.one_of(
                st.tuples(st.just("create"), st.tuples(st.integers(1, 3), st.integers(1, 3))),
                st.tuples(st.just("fence"), st.tuples(_broker)),
                st.tuples(st.just("heartbeat"), st.tuples(_broker)),
                st.tuples(st.just("register"), st.tuples(_broker)),
                st.tuples(st.just("shutdown"), st.tuples(_broker)),
                st.tuples(st.just("shrink"), st.tuples(st.integers(0, 20), _broker)),
                st.tuples(st.just("expand"), st.tuples(st.integers(0, 20), _broker)),
                st.tuples(st.just("elect"), st.tuples(st.integers(0, 20))),
                st.tuples(
                    st.just("reassign"),
                    st.tuples(
                        st.integers(0, 20), st.lists(_broker, min_size=1, max_size=3, unique=True)
                    ),
                ),
            ),
            max_size=60,
        )
    )


def to_records(state: ClusterState, history: list[tuple[str, tuple]]) -> list[bytes]:
    """Turn abstract steps into concrete records against the evolving state."""
    out: list[bytes] = []
    incarnations = {b: 0 for b in range(BROKERS)}

    def emit(rec: r.Record) -> None:
        data = r.encode(rec)
        out.append(data)
        state.apply(data)
        check_invariants(state)

    for b in range(BROKERS):
        emit(r.RegisterBroker(broker_id=b, incarnation=f"{b}.0", host="h", port=b))
    n = 0
    for kind, args in history:
        parts = [(t, i) for t in sorted(state.by_id) for i in range(len(state.by_id[t].partitions))]
        if kind == "create":
            live = state.live_brokers()
            if args[1] > len(live):
                continue
            n += 1
            assignment = assign_replicas(live, args[0], args[1], start=n)
            emit(r.CreateTopic(name=f"t{n}", topic_id=f"{n:032x}", assignment=assignment))
        elif kind in ("fence", "heartbeat", "shutdown"):
            b = args[0]
            inc = f"{b}.{incarnations[b]}"
            cls = {
                "fence": r.FenceBroker,
                "heartbeat": r.BrokerHeartbeat,
                "shutdown": r.ControlledShutdown,
            }[kind]
            emit(cls(broker_id=b, incarnation=inc))
        elif kind == "register":
            b = args[0]
            incarnations[b] += 1
            emit(
                r.RegisterBroker(
                    broker_id=b, incarnation=f"{b}.{incarnations[b]}", host="h", port=b
                )
            )
        elif parts:
            tid, i = parts[args[0] % len(parts)]
            p = state.by_id[tid].partitions[i]
            if kind in ("shrink", "expand"):
                isr = (
                    [x for x in p.isr if x != args[1]]
                    if kind == "shrink"
                    else (
                        [*p.isr, args[1]]
                        if args[1] in p.replicas and args[1] not in p.isr
                        else p.isr
                    )
                )
                emit(
                    r.AlterPartition(
                        topic_id=tid,
                        partition=i,
                        leader_id=p.leader,
                        leader_epoch=p.leader_epoch,
                        partition_epoch=p.partition_epoch,
                        isr=isr,
                    )
                )
            elif kind == "elect":
                emit(r.ElectLeaders(partitions=[(tid, i)]))
            elif kind == "reassign":
                emit(r.Reassign(topic_id=tid, partition=i, target=args[1]))
    return out


@settings(max_examples=150, deadline=None)
@given(histories())
def test_random_histories_keep_invariants_and_replay_identically(history) -> None:
    first = ClusterState()
    log = to_records(first, history)
    epochs_seen: dict[tuple[str, int], int] = {}
    replay = ClusterState()
    for data in log:
        replay.apply(data)
        for t in replay.topics.values():
            for i, p in enumerate(t.partitions):
                key = (t.topic_id, i)
                assert p.leader_epoch >= epochs_seen.get(key, 0), "leader epochs never go down"
                epochs_seen[key] = p.leader_epoch
    assert replay.snapshot() == first.snapshot()
    restored = ClusterState()
    restored.restore(first.snapshot())
    assert restored.snapshot() == first.snapshot()


# -- placement -----------------------------------------------------------------------------


def test_placement_spreads_leaders_and_replicas() -> None:
    brokers = {b: None for b in range(5)}
    a = assign_replicas(brokers, 50, 3)
    leaders = Counter(replicas[0] for replicas in a)
    assert set(leaders.values()) == {10}
    load = Counter(b for replicas in a for b in replicas)
    assert max(load.values()) - min(load.values()) <= 1
    assert all(len(set(replicas)) == 3 for replicas in a)


def test_placement_uses_every_rack() -> None:
    brokers = {0: "a", 1: "a", 2: "b", 3: "b", 4: "c", 5: "c"}
    for replicas in assign_replicas(brokers, 30, 3, start=7):
        assert {brokers[b] for b in replicas} == {"a", "b", "c"}


@given(st.integers(1, 7), st.integers(1, 40), st.integers(1, 7), st.integers(0, 100))
def test_placement_is_valid(n: int, partitions: int, rf: int, start: int) -> None:
    brokers = {b: f"r{b % 3}" for b in range(n)}
    if rf > n:
        with pytest.raises(KafkaError) as err:
            assign_replicas(brokers, partitions, rf)
        assert err.value.code == ErrorCode.INVALID_REPLICATION_FACTOR
        return
    a = assign_replicas(brokers, partitions, rf, start=start)
    assert len(a) == partitions
    validate_assignment(a, brokers)


def test_validate_assignment_errors() -> None:
    for bad in ([[0, 0]], [[0, 9]], [[0, 1], [0]], [[]]):
        with pytest.raises(KafkaError) as err:
            validate_assignment(bad, [0, 1])
        assert err.value.code == ErrorCode.INVALID_REPLICA_ASSIGNMENT


def test_choose_leader() -> None:
    assert choose_leader([2, 0, 1], [0, 1], [0, 1, 2]) == 0
    assert choose_leader([2, 0, 1], [2], [0, 1]) == -1
    assert choose_leader([2, 0, 1], [2], [0, 1], unclean=True) == 0


def test_a_superseded_controller_cannot_fence_or_move_leaders() -> None:
    s = registered(3)
    tid = create(s, "t", [[0, 1, 2]])
    assert apply(s, r.ClaimController(node_id=0, epoch=1)) == 0
    assert apply(s, r.ClaimController(node_id=1, epoch=1)) == ErrorCode.NOT_CONTROLLER
    assert apply(s, r.ClaimController(node_id=1, epoch=2)) == 0
    # broker 0 was paused as controller; its decisions arrive late, under epoch 1
    stale = r.FenceBroker(broker_id=2, incarnation="i2", controller_epoch=1)
    assert apply(s, stale) == ErrorCode.NOT_CONTROLLER
    assert not s.brokers[2].fenced
    assert apply(s, r.ElectLeaders(partitions=[(tid, 0)], controller_epoch=1)) == (
        ErrorCode.NOT_CONTROLLER
    )
    assert apply(s, r.FenceBroker(broker_id=2, incarnation="i2", controller_epoch=2)) == 0
    assert s.brokers[2].fenced
    restored = ClusterState()
    restored.restore(s.snapshot())
    assert (restored.controller_id, restored.controller_epoch) == (1, 2)


def test_scram_credentials_upsert_delete_and_survive_a_snapshot() -> None:
    s = ClusterState()
    s.take_changes()

    def upsert(user: str, mechanism: str, iterations: int = 8192, salt: bytes = b"salt") -> int:
        return apply(
            s,
            r.UpsertScramCredential(
                user=user,
                mechanism=mechanism,
                salt=salt,
                iterations=iterations,
                stored_key=b"k" * 32,
                server_key=b"s" * 32,
            ),
        )

    assert upsert("alice", "SCRAM-SHA-256") == 0
    assert upsert("alice", "SCRAM-SHA-512", iterations=4096) == 0
    assert upsert("bob", "SCRAM-SHA-512") == 0
    assert s.take_changes().scram_users == {"alice", "bob"}
    # what no broker could use is rejected the same way everywhere
    assert upsert("carol", "SCRAM-SHA-1") == ErrorCode.UNSUPPORTED_SASL_MECHANISM
    assert upsert("carol", "SCRAM-SHA-256", iterations=4095) == ErrorCode.UNACCEPTABLE_CREDENTIAL
    assert upsert("carol", "SCRAM-SHA-256", iterations=16385) == ErrorCode.UNACCEPTABLE_CREDENTIAL
    assert upsert("carol", "SCRAM-SHA-256", salt=b"") == ErrorCode.UNACCEPTABLE_CREDENTIAL
    assert upsert("", "SCRAM-SHA-256") == ErrorCode.UNACCEPTABLE_CREDENTIAL
    assert "carol" not in s.scram and not s.take_changes()

    # an upsert replaces the credential of that mechanism only
    assert upsert("alice", "SCRAM-SHA-256", iterations=16384) == 0
    assert {m: e.iterations for m, e in s.scram["alice"].items()} == {
        "SCRAM-SHA-256": 16384,
        "SCRAM-SHA-512": 4096,
    }
    delete = r.DeleteScramCredential(user="alice", mechanism="SCRAM-SHA-512")
    assert apply(s, delete) == 0
    assert apply(s, delete) == ErrorCode.RESOURCE_NOT_FOUND
    assert set(s.scram["alice"]) == {"SCRAM-SHA-256"}
    assert apply(s, r.DeleteScramCredential(user="bob", mechanism="SCRAM-SHA-512")) == 0
    assert "bob" not in s.scram  # no empty entry left behind
    assert s.take_changes().scram_users == {"alice", "bob"}

    restored = ClusterState()
    restored.restore(s.snapshot())
    assert restored.scram == s.scram
    assert restored.snapshot() == s.snapshot()
    assert restored.take_changes().scram_users == {"alice"}
    # a restore tells listeners about users whose credentials went away too
    restored.restore(ClusterState().snapshot())
    assert restored.scram == {} and restored.take_changes().scram_users == {"alice"}

    # a snapshot written before credentials were replicated still restores
    old = msgspec.msgpack.encode({"version": 1, "cluster_id": "c", "brokers": [], "topics": []})
    older = ClusterState()
    older.restore(old)
    assert older.cluster_id == "c" and older.scram == {}


def test_acls_create_delete_and_survive_a_snapshot() -> None:
    s = ClusterState()
    fields = dict(
        resource_type=2,
        resource_name="orders",
        pattern_type=3,
        principal="User:alice",
        host="*",
        operation=3,
        permission=3,
    )
    assert apply(s, r.CreateAcl(**fields)) == 0
    assert apply(s, r.CreateAcl(**{**fields, "pattern_type": 4, "resource_name": "pay"})) == 0
    assert s.take_changes().acls
    assert apply(s, r.CreateAcl(**fields)) == 0  # already there: no change
    assert not s.take_changes()
    # an ACL no broker could use is rejected identically everywhere
    assert apply(s, r.CreateAcl(**{**fields, "operation": 12})) == ErrorCode.INVALID_REQUEST
    assert apply(s, r.CreateAcl(**{**fields, "principal": "alice"})) == ErrorCode.INVALID_REQUEST
    assert len(s.acls) == 2
    copy = ClusterState()
    copy.restore(s.snapshot())
    assert copy.acls == s.acls and copy.take_changes().acls
    assert apply(s, r.DeleteAcl(**fields)) == 0
    assert apply(s, r.DeleteAcl(**fields)) == 0  # gone already
    assert [a.resource_name for a in s.acls] == ["pay"]
    assert r.decode(r.encode(r.DeleteAcl(**fields))) == r.DeleteAcl(**fields)


def test_mirror_seals_are_fenced_by_leader_epoch_and_survive_a_snapshot() -> None:
    s = registered(3)
    tid = create(s, "m", [[0, 1, 2], [1, 2, 0]])
    s.take_changes()
    epoch = s.topics["m"].partitions[0].leader_epoch
    seal = r.SealMirrorPartition(topic_id=tid, partition=0, leader_epoch=epoch, offset=7)
    assert apply(s, seal) == 0
    assert s.topics["m"].mirror_sealed == {0: 7}
    assert tid in s.take_changes().topics
    # sealed once: a later seal of the same partition keeps the first promotion point
    assert apply(s, msgspec.structs.replace(seal, offset=9)) == 0
    assert s.topics["m"].mirror_sealed == {0: 7}
    # a deposed leader's seal is refused
    assert apply(s, r.FenceBroker(broker_id=1, incarnation="i1")) == 0
    p1 = s.topics["m"].partitions[1]
    assert p1.leader != 1 and p1.leader_epoch > 0
    stale = r.SealMirrorPartition(topic_id=tid, partition=1, leader_epoch=0, offset=3)
    assert apply(s, stale) == ErrorCode.FENCED_LEADER_EPOCH
    assert apply(s, r.SealMirrorPartition(topic_id=tid, partition=5, leader_epoch=0, offset=0)) == (
        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    )
    restored = ClusterState()
    restored.restore(s.snapshot())
    assert restored.topics["m"].mirror_sealed == {0: 7}


def test_group_settings_are_set_removed_and_restored_from_a_snapshot() -> None:
    s = registered(1)
    assert apply(s, r.SetGroupConfigs(group="g", configs={"share.delivery.count.limit": "3"})) == 0
    assert (
        apply(s, r.SetGroupConfigs(group="h", configs={"consumer.session.timeout.ms": "50000"}))
        == 0
    )
    assert s.take_changes().group_configs == {"g", "h"}
    assert apply(s, r.SetGroupConfigs(group="h", configs={})) == 0
    assert apply(s, r.SetGroupConfigs(group="", configs={"a": "b"})) == ErrorCode.INVALID_GROUP_ID
    assert s.group_configs == {"g": {"share.delivery.count.limit": "3"}}
    restored = ClusterState()
    restored.restore(s.snapshot())
    assert restored.group_configs == s.group_configs
    assert "g" in restored.take_changes().group_configs
