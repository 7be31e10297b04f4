"""The ``__consumer_offsets`` records of share groups (KIP-932), in Kafka's formats.

Round trips of every record type written, Kafka's key layout byte for byte, refusal of
malformed keys and values (GroupRecordError, never another exception), and the loader of
``__consumer_offsets`` sorting share records by group with tombstones applied, apart from
the consumer groups' records.
"""

from __future__ import annotations

import contextlib
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shazamq.broker.groups import consumer_records as cr
from shazamq.broker.groups import share_records as sr
from shazamq.broker.groups.offsets_codec import GroupRecordError
from shazamq.broker.groups.offsets_store import LoadedPartition, OffsetsStore

names = st.text(min_size=0, max_size=20)
ids = st.uuids()
parts = st.dictionaries(ids, st.lists(st.integers(0, 2**31 - 1), max_size=5), max_size=4)
members = st.builds(
    sr.ShareMemberValue,
    st.none() | names,
    names,
    names,
    st.lists(names, max_size=4).map(tuple),
)
assignments = st.builds(
    sr.ShareAssignmentValue,
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-128, 127),
    parts,
)


@given(names, names)
def test_keys_round_trip(group: str, member: str) -> None:
    for kind in (sr.GROUP_METADATA, sr.TARGET_METADATA):
        assert sr.decode_share_key(sr.encode_share_key(kind, group)) == sr.ShareKey(kind, group)
    for kind in (sr.MEMBER_METADATA, sr.TARGET_MEMBER, sr.CURRENT_ASSIGNMENT):
        key = sr.encode_share_key(kind, group, member)
        assert sr.decode_share_key(key) == sr.ShareKey(kind, group, member)


def test_key_layout_is_kafkas() -> None:
    # int16 type, then int16-length strings
    assert sr.encode_share_key(sr.GROUP_METADATA, "g") == b"\x00\x0b\x00\x01g"
    assert sr.encode_share_key(sr.CURRENT_ASSIGNMENT, "g", "m") == b"\x00\x0e\x00\x01g\x00\x01m"
    # an epoch value: version 0, int32, no tagged fields
    assert sr.encode_share_value(sr.GROUP_METADATA, 7) == b"\x00\x00\x00\x00\x00\x07\x00"


@given(members, assignments, parts, st.integers(-(2**31), 2**31 - 1))
def test_values_round_trip(member, assignment, target, epoch) -> None:
    for kind, value in (
        (sr.MEMBER_METADATA, member),
        (sr.CURRENT_ASSIGNMENT, assignment),
        (sr.TARGET_MEMBER, target),
        (sr.GROUP_METADATA, epoch),
        (sr.TARGET_METADATA, epoch),
    ):
        assert sr.decode_share_value(kind, sr.encode_share_value(kind, value)) == value


@given(members, assignments, st.data())
def test_malformed_values_are_refused(member, assignment, data) -> None:
    for kind, value in ((sr.MEMBER_METADATA, member), (sr.CURRENT_ASSIGNMENT, assignment)):
        raw = sr.encode_share_value(kind, value)
        cut = data.draw(st.integers(0, len(raw) - 1))
        with pytest.raises(GroupRecordError):
            sr.decode_share_value(kind, raw[:cut])
        with pytest.raises(GroupRecordError):
            sr.decode_share_value(kind, raw + b"\x00")


@given(st.binary(max_size=40), st.sampled_from(sorted(sr.SHARE_KEY_TYPES)))
def test_garbage_is_a_record_error_or_a_value(blob: bytes, kind: int) -> None:
    for decode in (sr.decode_share_key, lambda b: sr.decode_share_value(kind, b)):
        with contextlib.suppress(GroupRecordError):
            decode(blob)


def test_unknown_versions_and_types_are_refused() -> None:
    with pytest.raises(GroupRecordError, match="version"):
        sr.decode_share_value(sr.GROUP_METADATA, b"\x00\x01\x00\x00\x00\x07\x00")
    with pytest.raises(GroupRecordError, match="not a share group key"):
        sr.decode_share_key(b"\x00\x03\x00\x01g")
    # Kafka's bookkeeping of initialized share-partitions is recognised and skipped
    assert sr.decode_share_value(15, b"anything") is None


class _Batch:
    def __init__(self, records: list[tuple[int, bytes, bytes | None]]) -> None:
        self.records = records
        self.control = None
        self.header = type("H", (), {"producer_id": -1, "is_transactional": False})()


def test_the_loader_sorts_share_records_by_group_with_tombstones() -> None:
    tid = uuid.UUID(int=5)
    member = sr.ShareMemberValue(None, "c", "/h", ("t",))
    assigned = sr.ShareAssignmentValue(3, 2, 0, {tid: [0, 1]})
    k = sr.encode_share_key
    v = sr.encode_share_value
    records = [
        (k(sr.GROUP_METADATA, "g"), v(sr.GROUP_METADATA, 2)),
        (k(sr.MEMBER_METADATA, "g", "m"), v(sr.MEMBER_METADATA, member)),
        (k(sr.CURRENT_ASSIGNMENT, "g", "m"), v(sr.CURRENT_ASSIGNMENT, assigned)),
        (k(sr.MEMBER_METADATA, "g", "gone"), v(sr.MEMBER_METADATA, member)),
        (k(sr.MEMBER_METADATA, "g", "gone"), None),
        (k(sr.GROUP_METADATA, "g"), v(sr.GROUP_METADATA, 3)),
        (k(sr.GROUP_METADATA, "bad"), b"\x00"),  # malformed: skipped, not fatal
    ]
    store = OffsetsStore.__new__(OffsetsStore)
    store.topic = type(  # type: ignore[assignment]
        "T", (), {"scan": lambda self, i: [_Batch([(n, a, b) for n, (a, b) in enumerate(records)])]}
    )()
    loaded = store.load_partition(0)
    assert isinstance(loaded, LoadedPartition)
    assert loaded.share == {
        "g": {
            (sr.GROUP_METADATA, None): 3,
            (sr.MEMBER_METADATA, "m"): member,
            (sr.CURRENT_ASSIGNMENT, "m"): assigned,
        },
        "bad": {},
    }
    assert loaded.consumer == {} and loaded.skipped == 1


def test_kafkas_regex_and_old_share_bookkeeping_keys_are_placed_by_their_types() -> None:
    # Kafka's ConsumerGroupRegularExpression is type 16 (group, regex); type 9 is its
    # ShareGroupPartitionMetadata of before 4.1, bookkeeping that a share group skips
    regex_key = b"\x00\x10\x00\x01g\x00\x09orders-.*"
    assert cr.decode_consumer_key(regex_key) == cr.ConsumerKey(16, "g", "orders-.*")
    assert cr.encode_consumer_key(cr.REGULAR_EXPRESSION, "g", "orders-.*") == regex_key
    with pytest.raises(GroupRecordError, match="not a consumer group key"):
        cr.decode_consumer_key(b"\x00\x09\x00\x01g")
    assert sr.decode_share_key(b"\x00\x09\x00\x01g") == sr.ShareKey(9, "g")
    assert sr.decode_share_value(9, b"anything") is None
