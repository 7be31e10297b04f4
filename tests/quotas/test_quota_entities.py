"""Quota entities: validation, Kafka's precedence order and describe filters (pure)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shazamq.broker.quotas.entities import (
    CLIENT_ID,
    CONSUMER_BYTE_RATE,
    CONTROLLER_MUTATION_RATE,
    MATCH_ANY,
    MATCH_DEFAULT,
    MATCH_EXACT,
    PRODUCER_BYTE_RATE,
    REQUEST_PERCENTAGE,
    USER,
    apply_ops,
    check_entity,
    check_filter,
    check_op,
    check_ops,
    from_stored,
    matches,
    parse_entity,
    resolve,
    to_stored,
)
from shazamq.protocol.errors import ErrorCode, KafkaError

USERS = ["alice", "bob"]
CLIENTS = ["app", "tool"]


def _entities() -> list[tuple[tuple[str, str | None], ...]]:
    names_u: list[str | None] = [*USERS, None]
    names_c: list[str | None] = [*CLIENTS, None]
    out = [((USER, u),) for u in names_u]
    out += [((CLIENT_ID, c),) for c in names_c]
    out += [((CLIENT_ID, c), (USER, u)) for u in names_u for c in names_c]
    return out


ALL_ENTITIES = _entities()


def _rank(entity: tuple[tuple[str, str | None], ...], user: str, client: str) -> int | None:
    """Kafka's documented order written out as rules: lower applies first, None: never."""
    parts = dict(entity)
    u, c = parts.get(USER, "-"), parts.get(CLIENT_ID, "-")
    if u not in ("-", None, user) or c not in ("-", None, client):
        return None
    table = {
        (user, client): 1,
        (user, None): 2,
        (user, "-"): 3,
        (None, client): 4,
        (None, None): 5,
        (None, "-"): 6,
        ("-", client): 7,
        ("-", None): 8,
    }
    return table[(u, c)]


@given(
    st.dictionaries(st.sampled_from(ALL_ENTITIES), st.integers(1, 10**6), max_size=12),
    st.sampled_from([*USERS, "carol"]),
    st.sampled_from([*CLIENTS, "other"]),
)
def test_resolution_follows_kafkas_precedence(quotas, user, client):
    stored = {e: {PRODUCER_BYTE_RATE: float(v)} for e, v in quotas.items()}
    found = resolve(stored, PRODUCER_BYTE_RATE, user, client)
    ranked = [(r, e) for e in quotas if (r := _rank(e, user, client)) is not None]
    if not ranked:
        assert found is None
        return
    _, best = min(ranked)
    assert found is not None
    bound, tags = found
    assert bound == quotas[best]
    # the rate is shared by what the entity names: user, client id or both
    types = {t for t, _ in best}
    assert tags == (user if USER in types else "", client if CLIENT_ID in types else "")


def test_each_key_resolves_on_its_own():
    quotas = {
        ((USER, "alice"),): {PRODUCER_BYTE_RATE: 100.0},
        ((CLIENT_ID, None),): {CONSUMER_BYTE_RATE: 50.0, PRODUCER_BYTE_RATE: 7.0},
    }
    assert resolve(quotas, PRODUCER_BYTE_RATE, "alice", "x") == (100.0, ("alice", ""))
    assert resolve(quotas, CONSUMER_BYTE_RATE, "alice", "x") == (50.0, ("", "x"))
    assert resolve(quotas, PRODUCER_BYTE_RATE, "bob", "x") == (7.0, ("", "x"))
    assert resolve(quotas, REQUEST_PERCENTAGE, "bob", "x") is None


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([(USER, "a")], ((USER, "a"),)),
        ([(USER, "a"), (CLIENT_ID, None)], ((CLIENT_ID, None), (USER, "a"))),
        ([(CLIENT_ID, "c")], ((CLIENT_ID, "c"),)),
    ],
)
def test_entities_are_canonical(parts, expected):
    entity = parse_entity(parts)
    assert entity == expected
    assert check_entity(entity)


@pytest.mark.parametrize(
    ("parts", "needle"),
    [
        ([], "empty"),
        ([(USER, "a"), (USER, "b")], "Duplicate"),
        ([("topic", "t")], "Unhandled"),
        ([(USER, "")], "empty"),
        ([("ip", "1.2.3.4")], "ip quotas"),
        ([("ip", None), (USER, "a")], "combination"),
    ],
)
def test_bad_entities_are_invalid_requests(parts, needle):
    with pytest.raises(KafkaError) as err:
        parse_entity(parts)
    assert err.value.code == ErrorCode.INVALID_REQUEST
    assert needle in (err.value.message or "")


@pytest.mark.parametrize(
    ("key", "value", "remove", "code"),
    [
        (PRODUCER_BYTE_RATE, 1024.0, False, None),
        (REQUEST_PERCENTAGE, 12.5, False, None),
        ("bogus_rate", 1.0, False, ErrorCode.INVALID_REQUEST),
        ("bogus_rate", 0.0, True, ErrorCode.INVALID_REQUEST),
        (PRODUCER_BYTE_RATE, 0.0, False, ErrorCode.INVALID_CONFIG),
        (CONSUMER_BYTE_RATE, -5.0, False, ErrorCode.INVALID_CONFIG),
        (CONSUMER_BYTE_RATE, 10.5, False, ErrorCode.INVALID_CONFIG),
        (REQUEST_PERCENTAGE, math.inf, False, ErrorCode.INVALID_CONFIG),
        (REQUEST_PERCENTAGE, math.nan, False, ErrorCode.INVALID_CONFIG),
        (CONTROLLER_MUTATION_RATE, 10.0, False, ErrorCode.INVALID_CONFIG),
        (CONTROLLER_MUTATION_RATE, 0.0, True, None),
        (PRODUCER_BYTE_RATE, -1.0, True, None),  # a removal's value is ignored
    ],
)
def test_ops(key, value, remove, code):
    problem = check_op(key, value, remove)
    assert (problem[0] if problem else None) == code
    if problem:
        assert key in problem[1]


def test_duplicate_keys_in_one_entry_are_refused():
    with pytest.raises(KafkaError) as err:
        check_ops([(PRODUCER_BYTE_RATE, 1.0, False), (PRODUCER_BYTE_RATE, 2.0, False)])
    assert err.value.code == ErrorCode.INVALID_REQUEST


@given(
    st.lists(
        st.tuples(
            st.sampled_from(ALL_ENTITIES),
            st.lists(
                st.tuples(
                    st.sampled_from([PRODUCER_BYTE_RATE, CONSUMER_BYTE_RATE, REQUEST_PERCENTAGE]),
                    st.one_of(st.none(), st.integers(1, 1000).map(float)),
                ),
                max_size=4,
            ),
        ),
        max_size=20,
    )
)
def test_applying_ops_matches_a_plain_model_and_survives_storage(changes):
    quotas: dict = {}
    model: dict = {}
    for entity, ops in changes:
        apply_ops(quotas, entity, ops)
        for key, value in ops:
            if value is None:
                model.pop((entity, key), None)
            else:
                model[(entity, key)] = value
    flat = {(e, k): v for e, values in quotas.items() for k, v in values.items()}
    assert flat == model
    assert all(values for values in quotas.values())  # no empty entity is kept
    assert from_stored(to_stored(quotas)) == quotas


# -- describe filters ---------------------------------------------------------------------


def _select(components, strict):
    assert check_filter(components) is None
    return {e for e in ALL_ENTITIES if matches(e, components, strict)}


def test_filters_exact_default_any_and_strict():
    alice = (USER, MATCH_EXACT, "alice")
    assert _select([alice], strict=True) == {((USER, "alice"),)}
    assert _select([alice], strict=False) == {
        ((USER, "alice"),),
        ((CLIENT_ID, "app"), (USER, "alice")),
        ((CLIENT_ID, "tool"), (USER, "alice")),
        ((CLIENT_ID, None), (USER, "alice")),
    }
    assert _select([(USER, MATCH_DEFAULT, None)], strict=True) == {((USER, None),)}
    assert _select([(CLIENT_ID, MATCH_ANY, None)], strict=True) == {
        ((CLIENT_ID, c),) for c in [*CLIENTS, None]
    }
    both = [(USER, MATCH_ANY, None), (CLIENT_ID, MATCH_DEFAULT, None)]
    assert _select(both, strict=True) == {((CLIENT_ID, None), (USER, u)) for u in [*USERS, None]}
    assert _select([], strict=False) == set(ALL_ENTITIES)
    assert _select([], strict=True) == set()


@pytest.mark.parametrize(
    ("components", "needle"),
    [
        ([("topic", MATCH_ANY, None)], "not supported"),
        ([(USER, MATCH_ANY, None), (USER, MATCH_EXACT, "a")], "Duplicate"),
        ([(USER, MATCH_EXACT, None)], "null match"),
        ([(USER, MATCH_DEFAULT, "a")], "match string"),
        ([(USER, 7, None)], "match type"),
        ([("ip", MATCH_ANY, None), (USER, MATCH_ANY, None)], "ip"),
    ],
)
def test_bad_filters(components, needle):
    problem = check_filter(components)
    assert problem is not None and needle in problem
