"""The server-side assignors: every partition once, balanced, sticky (property tests)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shazamq.broker.groups.assignors import Assignment, MemberSpec, range_assign, uniform_assign

TOPICS = st.dictionaries(st.sampled_from("abcdef"), st.integers(0, 24), min_size=1, max_size=6)


def _owners(result: dict[str, Assignment]) -> dict[tuple[str, int], list[str]]:
    out: dict[tuple[str, int], list[str]] = {}
    for m, a in result.items():
        for t, ps in a.items():
            for p in ps:
                out.setdefault((t, p), []).append(m)
    return out


def _check_exactly_once(
    members: dict[str, MemberSpec], topics: dict[str, int], result: dict[str, Assignment]
) -> None:
    owners = _owners(result)
    subscribed = set().union(*(s.subscribed for s in members.values())) if members else set()
    expected = {(t, p) for t, n in topics.items() if t in subscribed for p in range(n)}
    assert set(owners) == expected
    for (t, _), ms in owners.items():
        assert len(ms) == 1
        assert t in members[ms[0]].subscribed


@st.composite
def groups(draw: st.DrawFn, homogeneous: bool) -> tuple[dict[str, MemberSpec], dict[str, int]]:
    topics = draw(TOPICS)
    names = sorted(topics)
    n = draw(st.integers(1, 8))
    common = frozenset(draw(st.sets(st.sampled_from(names), min_size=1)))
    members = {}
    for i in range(n):
        subs = (
            common if homogeneous else frozenset(draw(st.sets(st.sampled_from(names), min_size=1)))
        )
        members[f"m{i}"] = MemberSpec(subs)
    return members, topics


def _count(a: Assignment) -> int:
    return sum(len(ps) for ps in a.values())


@settings(max_examples=100, deadline=None)
@given(groups(homogeneous=True), st.integers(0, 3))
def test_uniform_homogeneous_balanced_and_sticky(
    group: tuple[dict[str, MemberSpec], dict[str, int]], added: int
) -> None:
    members, topics = group
    first = uniform_assign(members, topics)
    _check_exactly_once(members, topics, first)
    counts = [_count(a) for a in first.values()]
    assert max(counts) - min(counts) <= 1
    # stable: run again with its own result as history, nothing moves
    again = {m: MemberSpec(s.subscribed, first[m]) for m, s in members.items()}
    assert uniform_assign(again, topics) == first
    # new members only take partitions; nobody else's partitions move among old members
    common = next(iter(members.values())).subscribed
    grown = dict(again)
    for i in range(added):
        grown[f"new{i}"] = MemberSpec(common)
    second = uniform_assign(grown, topics)
    _check_exactly_once(grown, topics, second)
    counts = [_count(a) for a in second.values()]
    assert max(counts) - min(counts) <= 1
    for m in members:
        for t, ps in second[m].items():
            assert ps <= first[m].get(t, frozenset())  # old members only lose


@settings(max_examples=100, deadline=None)
@given(groups(homogeneous=False))
def test_uniform_heterogeneous_no_helpful_move(
    group: tuple[dict[str, MemberSpec], dict[str, int]],
) -> None:
    members, topics = group
    result = uniform_assign(members, topics)
    _check_exactly_once(members, topics, result)
    for a in result.values():
        for taker, spec in members.items():
            if any(t in spec.subscribed and ps for t, ps in a.items()):
                assert _count(result[taker]) >= _count(a) - 1


@settings(max_examples=100, deadline=None)
@given(groups(homogeneous=False), st.data())
def test_range_balanced_per_topic_and_sticky(
    group: tuple[dict[str, MemberSpec], dict[str, int]], data: st.DataObject
) -> None:
    members, topics = group
    result = range_assign(members, topics)
    _check_exactly_once(members, topics, result)
    for t in topics:
        counts = [len(result[m].get(t, ())) for m, s in members.items() if t in s.subscribed]
        if counts:
            assert max(counts) - min(counts) <= 1
    again = {m: MemberSpec(s.subscribed, result[m]) for m, s in members.items()}
    assert range_assign(again, topics) == result
    # one member leaves: the others keep what they had
    gone = data.draw(st.sampled_from(sorted(members)))
    rest = {m: s for m, s in again.items() if m != gone}
    after = range_assign(rest, topics)
    _check_exactly_once(rest, topics, after)
    for m in rest:
        for t, ps in result[m].items():
            n_subs = sum(1 for s in rest.values() if t in s.subscribed)
            if len(ps) <= topics[t] // n_subs:
                assert ps <= after[m].get(t, frozenset())


def test_range_without_history_is_contiguous() -> None:
    members = {m: MemberSpec(frozenset({"t"})) for m in ("a", "b", "c")}
    result = range_assign(members, {"t": 7})
    assert result == {
        "a": {"t": frozenset({0, 1, 2})},
        "b": {"t": frozenset({3, 4})},
        "c": {"t": frozenset({5, 6})},
    }
