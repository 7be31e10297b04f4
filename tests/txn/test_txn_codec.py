"""The ``__transaction_state`` record format, transaction state transitions, producer ids.

Covers: round-trips of keys and values for hypothesis-generated transactions; decoding the
flexible v1 value Kafka 3.x+ writes (compact encoding, PreviousProducerId read, other
tagged fields skipped); v0 written unless a previous producer id or last epoch must be
kept, which go in v1 tagged fields;
truncated, extended and garbage bytes raising :class:`TxnRecordError` and nothing else;
the transitions :class:`TxnMetadata` allows and refuses; producer ids that never repeat,
across allocator restarts too, and skip past ids found in the logs.
"""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shazamq.broker.txn.metadata import IllegalTxnTransitionError, TxnMetadata
from shazamq.broker.txn.producer_ids import ProducerIdAllocator
from shazamq.broker.txn.state_log import (
    LAST_PRODUCER_EPOCH_TAG,
    TxnLogValue,
    TxnRecordError,
    TxnState,
    decode_txn_key,
    decode_txn_value,
    encode_txn_key,
    encode_txn_value,
)
from shazamq.protocol import primitives as p

states = st.sampled_from([s for s in TxnState if s is not TxnState.PREPARE_EPOCH_FENCE])
partitions = st.dictionaries(
    st.text(min_size=1, max_size=20),
    st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=6, unique=True).map(
        lambda ids: tuple(sorted(ids))
    ),
    max_size=4,
)
values = st.builds(
    TxnLogValue,
    producer_id=st.integers(0, 2**63 - 1),
    producer_epoch=st.integers(-1, 2**15 - 1),
    timeout_ms=st.integers(0, 2**31 - 1),
    state=states,
    partitions=partitions,
    last_update_ms=st.integers(-1, 2**62),
    start_ms=st.integers(-1, 2**62),
    last_producer_id=st.integers(-1, 2**63 - 1),
    last_producer_epoch=st.integers(-1, 2**15 - 1),
    next_producer_id=st.integers(-1, 2**63 - 1),
    client_txn_version=st.integers(0, 2),
)


@given(st.text(max_size=50))
def test_key_round_trip(txn_id):
    assert decode_txn_key(encode_txn_key(txn_id)) == txn_id


@settings(max_examples=200)
@given(values)
def test_value_round_trip(value):
    assert decode_txn_value(encode_txn_value(value)) == value


def test_flexible_v1_value():
    out = bytearray(struct.pack(">hqhib", 1, 77, 3, 60_000, int(TxnState.ONGOING)))
    p.write_compact_array_length(out, 1)
    p.write_compact_string(out, "orders")
    p.write_compact_array_length(out, 2)
    out += struct.pack(">ii", 0, 4)
    out.append(0)  # partition entry tagged fields
    out += struct.pack(">qq", 1000, 900)
    p.write_tagged_fields(out, [(0, struct.pack(">q", 76)), (2, struct.pack(">h", 2))])
    # PreviousProducerId (tag 0) and ClientTransactionVersion (tag 2) are read
    value = TxnLogValue(
        77,
        3,
        60_000,
        TxnState.ONGOING,
        {"orders": (0, 4)},
        1000,
        900,
        last_producer_id=76,
        client_txn_version=2,
    )
    assert decode_txn_value(bytes(out)) == value
    # and written in the same layout
    assert encode_txn_value(value) == bytes(out)
    # NextProducerId (tag 1) sits between them
    rolled = TxnLogValue(77, 3, 60_000, TxnState.PREPARE_COMMIT, {}, 1, 1, next_producer_id=91)
    assert decode_txn_value(encode_txn_value(rolled)) == rolled


def test_last_epoch_is_kept_in_a_tag_and_v0_otherwise():
    plain = TxnLogValue(5, 1, 1000, TxnState.ONGOING, {"a": (0, 1)}, 10, 5)
    data = encode_txn_value(plain)
    assert struct.unpack_from(">h", data)[0] == 0  # what Kafka writes
    bumped = TxnLogValue(5, 2, 1000, TxnState.EMPTY, {}, 10, -1, last_producer_epoch=1)
    data = encode_txn_value(bumped)
    assert struct.unpack_from(">h", data)[0] == 1
    # the tag section: one field, tag LAST_PRODUCER_EPOCH_TAG, two bytes, epoch 1
    tags = bytearray()
    p.write_tagged_fields(tags, [(LAST_PRODUCER_EPOCH_TAG, struct.pack(">h", 1))])
    assert data.endswith(bytes(tags))
    assert decode_txn_value(data) == bumped
    rolled = TxnLogValue(8, 0, 1000, TxnState.EMPTY, {}, 10, -1, 5, 32766)
    assert decode_txn_value(encode_txn_value(rolled)) == rolled


def test_empty_partitions_are_written_as_null():
    data = encode_txn_value(TxnLogValue(1, 0, 1000, TxnState.EMPTY))
    assert struct.unpack_from(">i", data, 2 + 8 + 2 + 4 + 1)[0] == -1


def test_every_truncation_and_extension_is_a_typed_error():
    samples = [
        (decode_txn_key, encode_txn_key("payments")),
        (
            decode_txn_value,
            encode_txn_value(
                TxnLogValue(5, 1, 1000, TxnState.ONGOING, {"a": (0, 1), "b": (2,)}, 10, 5)
            ),
        ),
        (
            decode_txn_value,
            encode_txn_value(TxnLogValue(5, 1, 1000, TxnState.ONGOING, {"a": (0, 1)}, 10, 5, 4, 0)),
        ),
    ]
    for decode, sample in samples:
        for end in range(len(sample)):
            with pytest.raises(TxnRecordError):
                decode(sample[:end])
        with pytest.raises(TxnRecordError):
            decode(sample + b"\x00")


def test_unknown_versions_and_states_are_typed_errors():
    with pytest.raises(TxnRecordError):
        decode_txn_key(struct.pack(">h", 1) + b"\x00\x01x")
    with pytest.raises(TxnRecordError):
        decode_txn_value(struct.pack(">h", 7) + b"\x00" * 40)
    bad_state = bytearray(encode_txn_value(TxnLogValue(1, 0, 1000, TxnState.EMPTY)))
    bad_state[16] = 42
    with pytest.raises(TxnRecordError):
        decode_txn_value(bytes(bad_state))


@settings(max_examples=300)
@given(st.binary(max_size=80))
def test_garbage_never_escapes_as_another_exception(data):
    for decode in (decode_txn_key, decode_txn_value):
        with contextlib.suppress(TxnRecordError):
            decode(data)


def test_display_names_are_kafkas():
    assert [s.display_name for s in TxnState] == [
        "Empty",
        "Ongoing",
        "PrepareCommit",
        "PrepareAbort",
        "CompleteCommit",
        "CompleteAbort",
        "Dead",
        "PrepareEpochFence",
    ]
    assert TxnState.from_display_name("Ongoing") is TxnState.ONGOING
    assert TxnState.from_display_name("nope") is None


def _meta(state: TxnState) -> TxnMetadata:
    return TxnMetadata("t", 1, 0, 1000, state)


@pytest.mark.parametrize(
    "start, target",
    [
        (TxnState.EMPTY, TxnState.ONGOING),
        (TxnState.ONGOING, TxnState.ONGOING),
        (TxnState.ONGOING, TxnState.PREPARE_COMMIT),
        (TxnState.ONGOING, TxnState.PREPARE_ABORT),
        (TxnState.PREPARE_COMMIT, TxnState.COMPLETE_COMMIT),
        (TxnState.PREPARE_ABORT, TxnState.COMPLETE_ABORT),
        (TxnState.COMPLETE_COMMIT, TxnState.ONGOING),
        (TxnState.COMPLETE_ABORT, TxnState.EMPTY),
        (TxnState.COMPLETE_COMMIT, TxnState.DEAD),
    ],
)
def test_allowed_transitions(start, target):
    assert _meta(start).to(target).state is target


@pytest.mark.parametrize(
    "start, target",
    [
        (TxnState.EMPTY, TxnState.PREPARE_COMMIT),
        (TxnState.PREPARE_COMMIT, TxnState.ONGOING),
        (TxnState.PREPARE_COMMIT, TxnState.COMPLETE_ABORT),
        (TxnState.PREPARE_ABORT, TxnState.COMPLETE_COMMIT),
        (TxnState.ONGOING, TxnState.EMPTY),
        (TxnState.ONGOING, TxnState.DEAD),
        (TxnState.COMPLETE_ABORT, TxnState.PREPARE_ABORT),
    ],
)
def test_refused_transitions(start, target):
    with pytest.raises(IllegalTxnTransitionError):
        _meta(start).to(target)


def test_metadata_log_value_round_trip():
    meta = TxnMetadata(
        "t",
        9,
        4,
        5000,
        TxnState.ONGOING,
        frozenset({("a", 1), ("a", 0), ("b", 3)}),
        start_ms=10,
        last_update_ms=20,
        last_producer_id=8,
        last_producer_epoch=3,
    )
    value = meta.to_log_value()
    assert value.partitions == {"a": (0, 1), "b": (3,)}
    assert TxnMetadata.from_log_value("t", decode_txn_value(encode_txn_value(value))) == meta


def test_producer_ids_never_repeat_across_restarts(tmp_path):
    a = ProducerIdAllocator(tmp_path, block_size=10)
    first = [a.allocate() for _ in range(15)]
    assert first == list(range(15))
    b = ProducerIdAllocator(tmp_path, block_size=10)  # as after a crash
    second = [b.allocate() for _ in range(5)]
    assert min(second) >= 20  # the reserved block is skipped, never reused
    assert len(set(first) | set(second)) == 20
    c = ProducerIdAllocator(tmp_path, block_size=10)
    c.ensure_above(1000)
    assert c.allocate() == 1001


def test_producer_id_file_that_is_not_a_number_is_refused(tmp_path):
    (tmp_path / "producer-id-block").write_text("garbage")
    with pytest.raises(ValueError):
        ProducerIdAllocator(tmp_path)
