"""The rolling-restart planner (`shazamq.operator.roll`), with properties and a simulation.

Covers: a restart never takes a partition below min.insync.replicas (unless min ISR equals
the replication factor), never happens while another broker is down, unready outdated
brokers go first and the active controller last; the broker restarted last is waited for
until ready, back in every ISR and leading its preferred partitions again; with metrics
only, no restart while anything is under-replicated; the progress survives a round trip
through its annotation text and a new revision keeps only the wait; a simulated cluster
rolled step by step restarts every outdated broker exactly once, one at a time.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shazamq.operator.roll import Broker, ClusterView, Decision, Partition, RollProgress, plan


def broker(i: int, *, ready: bool = True, outdated: bool = True, exists: bool = True) -> Broker:
    return Broker(id=i, pod=f"c-{i}", exists=exists, ready=ready, outdated=outdated)


def part(
    topic: str, index: int, replicas: tuple[int, ...], isr: tuple[int, ...], min_isr: int = 2
) -> Partition:
    leader = isr[0] if isr else -1
    return Partition(topic, index, replicas, isr, leader, min_isr)


def test_an_under_replicated_partition_blocks_the_brokers_in_its_isr() -> None:
    brokers = [broker(0), broker(1), broker(2)]
    view = ClusterView(controller=0, partitions=(part("orders", 3, (0, 1, 2), (0, 1)),))
    # 2 is not in sync for orders-3: restarting it costs nothing
    assert plan(brokers, view, RollProgress("r2")) == Decision("restart", 2, "c-2 is outdated")
    done_2 = RollProgress("r2", (2,), None)
    decision = plan([broker(0), broker(1), broker(2, outdated=False)], view, done_2)
    assert decision.action == "wait"
    assert decision.broker == 1
    assert "orders-3 below min.insync.replicas" in decision.reason
    assert "2 in sync, minimum 2" in decision.reason
    assert decision.blocked == ("orders-3",)


def test_min_isr_equal_to_the_replication_factor_never_blocks() -> None:
    view = ClusterView(controller=None, partitions=(part("solo", 0, (0,), (0,), min_isr=1),))
    assert plan([broker(0)], view, RollProgress("r")).action == "restart"


def test_unready_first_controller_last() -> None:
    view = ClusterView(controller=2, partitions=())
    brokers = [broker(0), broker(1, ready=False), broker(2)]
    assert plan(brokers, view, RollProgress("r")).broker == 1
    brokers = [broker(0), broker(1), broker(2)]
    assert plan(brokers, view, RollProgress("r")).broker == 1  # highest ordinal, not 2
    brokers = [broker(0, outdated=False), broker(1, outdated=False), broker(2)]
    decision = plan(brokers, view, RollProgress("r"))
    assert decision.broker == 2 and "active controller" in decision.reason


def test_one_broker_down_at_a_time() -> None:
    view = ClusterView(controller=0, partitions=())
    brokers = [broker(0), broker(1), broker(2, ready=False, outdated=False)]
    decision = plan(brokers, view, RollProgress("r"))
    assert decision.action == "wait" and "c-2 not ready" in decision.reason


def test_the_restarted_broker_is_waited_for() -> None:
    progress = RollProgress("r", (2,), 2)
    view = ClusterView(controller=0, partitions=(part("t", 0, (2, 0, 1), (0, 1)),))
    restarting = [broker(0), broker(1), broker(2, ready=False, outdated=False)]
    assert "c-2 is restarting" in plan(restarting, view, progress).reason
    back = [broker(0), broker(1), broker(2, outdated=False)]
    decision = plan(back, view, progress)
    assert decision.action == "wait" and "not back in the in-sync replicas of t-0" in (
        decision.reason
    )
    in_sync = ClusterView(controller=0, partitions=(part("t", 0, (2, 0, 1), (0, 1, 2)),))
    waiting = plan(back, in_sync, progress)
    assert "preferred leader" in waiting.reason
    assert waiting.elect == (("t", 0),)  # the election the handler asks for
    assert decision.elect == ()  # not while the broker is out of the ISR
    led = ClusterView(controller=0, partitions=(Partition("t", 0, (2, 0, 1), (0, 1, 2), 2, 2),))
    assert plan(back, led, progress).broker == 1


def test_an_unreadable_cluster_waits_with_the_error() -> None:
    decision = plan([broker(0), broker(1)], None, RollProgress("r"), error="timed out")
    assert decision.action == "wait" and "timed out" in decision.reason
    # an unready broker is restarted without asking the cluster
    assert plan([broker(0), broker(1, ready=False)], None, RollProgress("r")).broker == 1


def test_metrics_only_view_needs_no_under_replicated_partition() -> None:
    brokers = [broker(0), broker(1)]
    under = ClusterView(controller=1, partitions=None, under_replicated=3)
    assert plan(brokers, under, RollProgress("r")).action == "wait"
    clean = ClusterView(controller=1, partitions=None, under_replicated=0)
    assert plan(brokers, clean, RollProgress("r")).broker == 0
    progress = RollProgress("r", (0,), 0)
    after = [broker(0, outdated=False), broker(1)]
    assert "under-replicated" in plan(after, under, progress).reason
    assert plan(after, clean, progress).broker == 1


def test_nothing_outdated_is_done() -> None:
    view = ClusterView(controller=0, partitions=())
    assert plan([broker(0, outdated=False)], view, RollProgress("r")).action == "done"


@given(
    st.integers(0, 2**31),
    st.lists(st.integers(-1, 40), max_size=4),
    st.one_of(st.none(), st.integers(0, 5)),
)
def test_progress_round_trips_and_a_new_revision_keeps_only_the_wait(
    seed: int, restarted: list[int], in_flight: int | None
) -> None:
    progress = RollProgress(f"rev-{seed}", tuple(restarted), in_flight)
    assert RollProgress.loads(progress.dumps()) == progress
    assert progress.for_revision(f"rev-{seed}") == progress
    assert progress.for_revision("other") == RollProgress("other", (), in_flight)


@given(st.text(max_size=30))
def test_garbage_progress_is_no_progress(text: str) -> None:
    loaded = RollProgress.loads(text)
    assert isinstance(loaded, RollProgress)


# -- properties over random clusters -------------------------------------------------------


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list[Broker], ClusterView]:
    n = draw(st.integers(1, 6))
    brokers = [
        Broker(i, f"c-{i}", exists=True, ready=draw(st.booleans()), outdated=draw(st.booleans()))
        for i in range(n)
    ]
    partitions = []
    for t in range(draw(st.integers(0, 8))):
        rf = draw(st.integers(1, n))
        replicas = tuple(draw(st.permutations(range(n)))[:rf])
        isr = tuple(r for r in replicas if draw(st.booleans())) or replicas[:1]
        min_isr = draw(st.integers(1, rf))
        partitions.append(Partition(f"t{t}", 0, replicas, isr, isr[0], min_isr))
    controller = draw(st.one_of(st.none(), st.integers(0, n - 1)))
    return brokers, ClusterView(controller, tuple(partitions))


@given(clusters())
def test_a_restart_is_always_safe(cluster: tuple[list[Broker], ClusterView]) -> None:
    brokers, view = cluster
    decision = plan(brokers, view, RollProgress("r"))
    outdated = [b for b in brokers if b.outdated]
    if not outdated:
        assert decision.action == "done"
        return
    if decision.action != "restart":
        assert decision.reason
        return
    chosen = next(b for b in brokers if b.id == decision.broker)
    assert chosen.outdated
    if not chosen.ready:
        return  # an unready broker serves nothing: first, and free
    assert all(b.ready for b in outdated), "unready outdated brokers go first"
    assert all(b.ready for b in brokers), "never two brokers down"
    assert view.partitions is not None
    for p in view.partitions:
        if chosen.id in p.isr and p.min_isr < len(p.replicas):
            assert len(p.isr) - 1 >= p.min_isr, p
    if chosen.id == view.controller:
        others = [b for b in outdated if b.id != chosen.id]
        for b in others:  # every other outdated broker was blocked
            assert any(
                b.id in p.isr and len(p.isr) - 1 < p.min_isr < len(p.replicas)
                for p in view.partitions
            )


@settings(max_examples=60)
@given(st.integers(1, 6), st.integers(1, 3), st.data())
def test_a_simulated_roll_restarts_each_broker_once_one_at_a_time(
    n: int, rf_wanted: int, data: st.DataObject
) -> None:
    """A healthy cluster whose brokers come back in sync after each restart is rolled
    completely: every broker restarted exactly once, never two down at once."""
    rf = min(rf_wanted, n)
    min_isr = max(1, rf - 1)
    topics = data.draw(st.integers(0, 6))
    replicas = [tuple((t + k) % n for k in range(rf)) for t in range(topics)]
    controller = data.draw(st.integers(0, n - 1))
    outdated = set(range(n))
    down: int | None = None
    in_sync: set[int] = set(range(n))
    progress = RollProgress("r2")
    restarts: list[int] = []
    for _ in range(10 * n + 10):
        brokers = [
            Broker(i, f"c-{i}", True, ready=i != down, outdated=i in outdated) for i in range(n)
        ]
        parts = tuple(
            Partition(
                f"t{t}",
                0,
                r,
                tuple(b for b in r if b in in_sync),
                next((b for b in r if b in in_sync), -1),
                min_isr,
            )
            for t, r in enumerate(replicas)
        )
        decision = plan(brokers, ClusterView(controller, parts), progress)
        if decision.action == "done":
            break
        if decision.action == "restart":
            assert decision.broker is not None
            assert down is None, "two brokers down at once"
            restarts.append(decision.broker)
            progress = progress.with_restart(decision.broker)
            down = decision.broker
            outdated.discard(down)
            in_sync.discard(down)
        elif down is not None:  # the kubelet and the replicas catch up, one step each
            down = None
        else:
            in_sync = set(range(n))
    assert sorted(restarts) == list(range(n))
    assert restarts[-1] == controller or n == 1
