"""The pure parts of mixed groups and consumer group settings.

Member metadata records with the classic member metadata (tag 0) round-trip for
hypothesis-generated content and refuse malformed bytes with GroupRecordError; the
embedded subscription and assignment codecs; the classic -> consumer -> classic
conversions keep members, epochs and partitions; consumer.* settings validation.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka_wire import assignment_bytes, subscription_bytes

from shazamq.broker.groups import consumer_records as cr
from shazamq.broker.groups import consumer_settings as cs
from shazamq.broker.groups.consumer_group import MemberState
from shazamq.broker.groups.conversion import (
    classic_from_consumer,
    common_protocol,
    consumer_from_classic,
    decode_assignment,
    decode_subscription,
    encode_assignment,
)
from shazamq.broker.groups.group import Group, GroupState, Member
from shazamq.broker.groups.offsets_codec import GroupRecordError

names = st.text(min_size=0, max_size=12)
classic = st.builds(
    cr.ClassicMetadata,
    st.integers(-(2**31), 2**31 - 1),
    st.lists(st.tuples(names, st.binary(max_size=20)), max_size=3).map(tuple),
)
member_values = st.builds(
    cr.MemberMetadataValue,
    st.none() | names,
    st.none() | names,
    names,
    names,
    st.lists(names, max_size=4).map(tuple),
    st.none() | names,
    st.integers(-(2**31), 2**31 - 1),
    st.none() | names,
    st.none() | classic,
)


@settings(max_examples=200, deadline=None)
@given(member_values)
def test_member_metadata_round_trips(value: cr.MemberMetadataValue) -> None:
    data = cr.encode_member_metadata(value)
    assert cr.decode_consumer_value(cr.MEMBER_METADATA, data) == value


@settings(max_examples=300, deadline=None)
@given(member_values, st.data())
def test_member_metadata_malformed_is_refused(value: cr.MemberMetadataValue, data) -> None:
    raw = bytearray(cr.encode_member_metadata(value))
    cut = data.draw(st.integers(0, len(raw) - 1))
    for mangled in (bytes(raw[:cut]), bytes(raw) + b"\x00"):
        with pytest.raises(GroupRecordError):
            cr.decode_consumer_value(cr.MEMBER_METADATA, mangled)


@given(st.binary(max_size=64))
def test_embedded_protocol_garbage_is_not_a_subscription(blob: bytes) -> None:
    sub = decode_subscription(blob)  # None or a subscription, never an exception
    assert sub is None or isinstance(sub.topics, tuple)
    assert isinstance(decode_assignment(blob), dict)


def test_assignment_and_subscription_codecs() -> None:
    a = {"t": frozenset({0, 2}), "u": frozenset({1})}
    assert decode_assignment(encode_assignment(a)) == a
    assert decode_assignment(assignment_bytes({"t": [0, 2]}, version=1)) == {"t": frozenset({0, 2})}
    sub = decode_subscription(subscription_bytes(["a", "b"], version=3))
    assert sub is not None and sub.topics == ("a", "b") and sub.owned == frozenset()


def _classic_group() -> Group:
    g = Group("g")
    g.protocol_type = "consumer"
    g.protocol_name = "range"
    g.generation_id = 7
    for mid, parts in (("a", [0, 1]), ("b", [2, 3])):
        g.add(
            Member(
                member_id=mid,
                group_instance_id=None,
                client_id=mid,
                client_host="/h",
                rebalance_timeout_ms=5000,
                session_timeout_ms=10000,
                protocol_type="consumer",
                protocols=[("range", subscription_bytes(["t"])), ("roundrobin", b"")],
                assignment=assignment_bytes({"t": parts, "gone": [0]}),
            )
        )
    g.state = GroupState.STABLE
    return g


def test_classic_to_consumer_and_back() -> None:
    cg = consumer_from_classic(_classic_group(), {"t": 4})
    assert cg is not None and cg.group_epoch == cg.target_epoch == 7
    a, b = cg.members["a"], cg.members["b"]
    assert a.member_epoch == 7 and a.state == MemberState.STABLE and a.is_classic
    assert a.assigned == {"t": frozenset({0, 1})}  # a topic that is gone is dropped
    assert b.subscribed_topic_names == ("t",) and cg.target["b"] == {"t": frozenset({2, 3})}
    assert cg.owners[("t", 3)] == "b"
    back = classic_from_consumer(cg)
    assert back is not None and back.is_state(GroupState.STABLE)
    assert back.generation_id == 7 and back.protocol_name == "range"
    assert decode_assignment(back.members["a"].assignment) == {"t": frozenset({0, 1})}
    assert back.members["a"].session_timeout_ms == 10000


def test_conversion_refusals() -> None:
    g = _classic_group()
    g.protocol_type = "connect"
    assert consumer_from_classic(g, {"t": 4}) is None
    g = _classic_group()
    g.members["a"].protocols = [("range", b"\xff\xff junk")]
    g.protocol_name = "range"
    assert consumer_from_classic(g, {"t": 4}) is None
    assert common_protocol([(("x", b""), ("y", b"")), (("y", b""),)]) == "y"
    assert common_protocol([(("x", b""),), (("y", b""),)]) is None


def test_consumer_settings_validation() -> None:
    d = cs.ConsumerDefaults()
    assert cs.validate(d, {cs.SESSION_TIMEOUT: " 50000 "}) == {cs.SESSION_TIMEOUT: "50000"}
    assert cs.validate(d, {"share.delivery.count.limit": "3"}) == {}  # not ours
    for bad in ({cs.SESSION_TIMEOUT: "44999"}, {cs.HEARTBEAT_INTERVAL: "x"}):
        with pytest.raises(cs.ConsumerSettingError):
            cs.validate(d, bad)
    with pytest.raises(cs.ConsumerSettingError, match="must be lower"):
        cs.validate(
            cs.ConsumerDefaults(max_heartbeat_interval_ms=60000),
            {cs.HEARTBEAT_INTERVAL: "50000", cs.SESSION_TIMEOUT: "45000"},
        )
