"""Topic and group selection and the mirror marker (pure, no broker)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shazamq.broker.log.errors import InvalidConfigError
from shazamq.broker.topic_configs import (
    MIRROR_PROMOTED_AT,
    MIRROR_SOURCE,
    check_client_change,
    is_promoting,
    promoting,
    promotion_points,
)
from shazamq.mirror.selection import Decision, GroupSelector, MirrorMark, TopicSelector

topic_names = st.from_regex(r"[a-zA-Z0-9._-]{1,40}", fullmatch=True)


def test_whitelist_minus_blacklist_whole_name() -> None:
    s = TopicSelector(("orders.*", "events.*"), ("events.debug",))
    assert s.decide("orders") is Decision.MIRROR
    assert s.decide("orders.eu") is Decision.MIRROR
    assert s.decide("events.debug") is Decision.BLACKLISTED
    assert s.decide("events.debugging") is Decision.MIRROR  # whole-name match
    assert s.decide("my-orders") is Decision.NOT_WHITELISTED  # no search, a full match
    assert s.decide("__consumer_offsets") is Decision.INTERNAL
    assert TopicSelector().decide("__transaction_state") is Decision.INTERNAL


def test_prefix_promotion_and_name_length() -> None:
    s = TopicSelector(prefix="prod.", promoted=frozenset({"prod.orders"}))
    assert s.local_name("orders") == "prod.orders"
    assert s.decide("orders") is Decision.PROMOTED
    assert s.decide("payments") is Decision.MIRROR
    assert s.decide("x" * 245) is Decision.NAME_TOO_LONG
    assert TopicSelector().decide("x" * 249) is Decision.MIRROR


def test_loop_detection() -> None:
    s = TopicSelector()
    ours = MirrorMark("back", "orders", "LOCAL-ID").encode()
    theirs = MirrorMark("other", "orders", "ELSEWHERE").encode()
    assert s.decide("orders", source_mark=ours, local_cluster_id="LOCAL-ID") is Decision.LOOP
    assert s.decide("orders", source_mark=theirs, local_cluster_id="LOCAL-ID") is Decision.MIRROR
    assert s.decide("orders", source_mark="", local_cluster_id="LOCAL-ID") is Decision.MIRROR
    assert s.decide("orders", source_mark="junk", local_cluster_id="LOCAL-ID") is Decision.MIRROR


@pytest.mark.parametrize("bad", ["", "a", "a:b", "a@b", ":t@c", "s:@c", "s:t@x@y"])
def test_mark_parse_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="is not"):
        MirrorMark.parse(bad)


@given(
    source=st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True),
    topic=topic_names,
    cluster=st.from_regex(r"[A-Za-z0-9_-]{0,22}", fullmatch=True),
)
def test_mark_round_trips(source: str, topic: str, cluster: str) -> None:
    m = MirrorMark(source, topic, cluster)
    assert MirrorMark.parse(m.encode()) == m


@given(
    names=st.lists(topic_names, max_size=20),
    white=st.lists(st.sampled_from(["a.*", ".*b", "c", "[0-9]+", ".*"]), min_size=1, max_size=3),
    black=st.lists(st.sampled_from(["a.*", "x.*", ".*-dlq"]), max_size=2),
)
def test_decision_matches_the_definition(names: list[str], white: list[str], black: list[str]):
    s = TopicSelector(tuple(white), tuple(black))
    for n in names:
        expected = (
            not n.startswith("__")
            and any(re.fullmatch(w, n) for w in white)
            and not any(re.fullmatch(b, n) for b in black)
        )
        assert (s.decide(n) is Decision.MIRROR) == expected


def test_groups() -> None:
    g = GroupSelector(("app-.*",), ("app-test",), frozenset({"app-mirror"}))
    assert g.selects("app-orders")
    assert not g.selects("app-test")
    assert not g.selects("app-mirror")
    assert not g.selects("other")


def test_clients_may_only_delete_the_mirror_settings() -> None:
    mark = "src:t@c"
    old = {MIRROR_SOURCE: mark, "retention.ms": "1"}
    # a DELETE on a mirroring broker starts the promotion; elsewhere it removes the marker
    stepped = check_client_change(
        "t", old, {"retention.ms": "1"}, replace=False, promote_in_steps=True
    )
    assert is_promoting(stepped[MIRROR_SOURCE]) and not is_promoting(mark)
    assert check_client_change("t", old, {"retention.ms": "2"}, replace=False) == {
        "retention.ms": "2"
    }
    # AlterConfigs (a whole replacement) keeps both settings
    promoted = {MIRROR_PROMOTED_AT: "3,4"}
    assert check_client_change("t", promoted, {}, replace=True) == promoted
    assert check_client_change("t", old, {}, replace=True) == {MIRROR_SOURCE: mark}
    for key, value in ((MIRROR_SOURCE, "x:y@z"), (MIRROR_PROMOTED_AT, "0")):
        with pytest.raises(InvalidConfigError, match="mirroring only"):
            check_client_change("t", promoted, {key: value}, replace=False)
    assert promotion_points("3,-1,0") == (3, -1, 0)
    with pytest.raises(ValueError):
        promotion_points("3,x")


def test_a_source_topic_being_promoted_there_is_still_recognised_as_a_loop() -> None:
    mark = MirrorMark("back", "orders", "here-id")
    assert MirrorMark.parse(promoting(mark.encode())) == mark
    s = TopicSelector()
    decided = s.decide("orders", source_mark=promoting(mark.encode()), local_cluster_id="here-id")
    assert decided is Decision.LOOP
