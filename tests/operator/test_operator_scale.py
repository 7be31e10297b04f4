"""The scaling planner (`shazamq.operator.scale.plan`), with hypothesis.

Properties, for random clusters scaled up or down: every partition keeps its replication
factor on distinct brokers of the new set; departing brokers hold nothing; replica counts
end within one of each other (without racks); rack spread is kept as far as the remaining
racks allow; moves are few (no more replicas added than the drain needs plus the excess
above the balanced share); planning again changes nothing; a topic with more replicas than
brokers is refused, naming it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shazamq.operator.scale import plan


@st.composite
def clusters(draw: Any, racked: bool = False) -> tuple[dict, list[int], list[int], dict]:
    """(assignments, brokers before, brokers after, racks)."""
    before_n = draw(st.integers(1, 7))
    before = list(range(before_n))
    after_n = draw(st.integers(1, 9))
    after = list(range(after_n))
    rack_names = draw(st.integers(2, 3)) if racked else 0
    racks = {b: f"r{b % rack_names}" for b in range(max(before_n, after_n))} if racked else {}
    max_rf = min(before_n, after_n)
    assignments: dict[tuple[str, int], tuple[int, ...]] = {}
    for t in range(draw(st.integers(0, 4))):
        rf = draw(st.integers(1, max_rf))
        for p in range(draw(st.integers(1, 6))):
            replicas = draw(st.permutations(before).map(lambda x, rf=rf: tuple(x[:rf])))
            assignments[f"t{t}", p] = replicas
    return assignments, before, after, racks


def applied(assignments: dict, moves: dict) -> dict:
    return {**assignments, **moves}


@settings(max_examples=300, deadline=None)
@given(clusters())
def test_every_partition_keeps_its_replicas_on_distinct_live_brokers(c: tuple) -> None:
    assignments, _, after, _ = c
    result = plan(assignments, after)
    assert result.refused is None
    final = applied(assignments, result.moves)
    for key, replicas in final.items():
        assert len(replicas) == len(assignments[key])
        assert len(set(replicas)) == len(replicas)
        assert set(replicas) <= set(after)
    for key, replicas in result.moves.items():
        assert replicas != assignments[key]


@settings(max_examples=300, deadline=None)
@given(clusters())
def test_departing_brokers_hold_nothing_and_load_is_balanced(c: tuple) -> None:
    assignments, _before, after, _ = c
    final = applied(assignments, plan(assignments, after).moves)
    load = Counter(b for r in final.values() for b in r)
    assert not (set(load) - set(after)), "a departing broker keeps replicas"
    counts = [load.get(b, 0) for b in after]
    assert max(counts) - min(counts) <= 1


@settings(max_examples=300, deadline=None)
@given(clusters())
def test_moves_are_few(c: tuple) -> None:
    assignments, _, after, _ = c
    result = plan(assignments, after)
    total = sum(len(r) for r in assignments.values())
    share = -(-total // len(after))  # the most a broker holds when balanced
    drained = sum(1 for r in assignments.values() for b in r if b not in after)
    load = Counter(b for r in assignments.values() for b in r if b in after)
    excess = sum(max(0, n - share) for n in load.values())
    added = sum(len(set(new) - set(assignments[key])) for key, new in result.moves.items())
    assert added <= drained + excess + len(after)  # a little slack for ties at the share


@settings(max_examples=200, deadline=None)
@given(clusters())
def test_planning_again_changes_nothing(c: tuple) -> None:
    assignments, _, after, _ = c
    final = applied(assignments, plan(assignments, after).moves)
    assert plan(final, after).moves == {}


@settings(max_examples=300, deadline=None)
@given(clusters(racked=True))
def test_rack_spread_is_kept_as_far_as_the_racks_allow(c: tuple) -> None:
    assignments, _, after, racks = c
    result = plan(assignments, after, racks)
    final = applied(assignments, result.moves)
    racks_left = {racks[b] for b in after}
    for key, replicas in final.items():
        before = {racks[b] for b in assignments[key]}
        now = {racks[b] for b in replicas}
        assert len(now) >= min(len(before), len(racks_left), len(replicas))
        assert set(replicas) <= set(after)


def test_scale_up_moves_replicas_onto_the_new_brokers() -> None:
    assignments = {("orders", p): ((p + i) % 3 for i in range(3)) for p in range(6)}
    assignments = {k: tuple(v) for k, v in assignments.items()}
    result = plan(assignments, range(5))
    final = applied(assignments, result.moves)
    load = Counter(b for r in final.values() for b in r)
    assert load[3] >= 3 and load[4] >= 3  # 18 replicas on 5 brokers: 3 or 4 each
    leaders = Counter(r[0] for r in final.values())
    assert leaders[3] + leaders[4] >= 1


def test_scale_down_drains_the_departing_brokers() -> None:
    assignments = {("t", p): (p % 5, (p + 1) % 5) for p in range(10)}
    result = plan(assignments, [0, 1, 2])
    final = applied(assignments, result.moves)
    assert all(set(r) <= {0, 1, 2} for r in final.values())
    # a partition whose preferred leader stays keeps it
    for key, r in assignments.items():
        if r[0] in {0, 1, 2} and key in result.moves:
            assert final[key][0] in {0, 1, 2}


def test_a_topic_with_more_replicas_than_brokers_is_refused() -> None:
    assignments = {("small", 0): (0, 1), ("orders", 0): (0, 1, 2), ("orders", 1): (1, 2, 0)}
    result = plan(assignments, [0, 1])
    assert result.moves == {}
    assert result.refused is not None and "orders" in result.refused
    assert "replication factor 3" in result.refused
    assert plan({}, []).refused == "no broker would remain"
