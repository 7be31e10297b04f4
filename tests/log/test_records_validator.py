"""The record walk of the produce path (`check_records`), against the full decoder.

For any bytes, `check_records` accepts exactly what `_decode_records` decodes with
offset deltas 0, 1, 2, ...; what it refuses raises CorruptRecordError, never anything
else; a compacted topic's records without keys are reported by index.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shazamq.protocol import records as r

record = st.builds(
    r.Record,
    attributes=st.just(0),
    timestamp_delta=st.integers(-(2**40), 2**40),
    key=st.none() | st.binary(max_size=40),
    value=st.none() | st.binary(max_size=200),
    headers=st.lists(
        st.tuples(st.text(max_size=8), st.none() | st.binary(max_size=16)), max_size=3
    ).map(tuple),
)


def encoded(recs: list[r.Record]) -> bytes:
    out = bytearray()
    for i, rec in enumerate(recs):
        r._encode_record(out, rec._replace(offset_delta=i))
    return bytes(out)


def decoder_accepts(data: bytes, count: int) -> bool:
    try:
        decoded = r._decode_records(data, count)
    except r.CorruptRecordError:
        return False
    return all(rec.offset_delta == i for i, rec in enumerate(decoded))


@given(st.lists(record, min_size=1, max_size=20))
def test_well_formed_records_pass(recs: list[r.Record]) -> None:
    data = encoded(recs)
    assert r.check_records(data, len(recs)) == []
    nulls = [i for i, rec in enumerate(recs) if rec.key is None]
    found = r.check_records(data, len(recs), keys_required=True, first_index=5)
    assert [i for i, _why in found] == [5 + i for i in nulls]


@settings(max_examples=400)
@given(
    st.lists(record, min_size=1, max_size=6),
    st.data(),
)
def test_mutated_records_agree_with_the_decoder(recs: list[r.Record], data: st.DataObject) -> None:
    raw = bytearray(encoded(recs))
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "cut", "grow", "count"]))
        if action == "flip" and raw:
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
        elif action == "cut" and raw:
            del raw[data.draw(st.integers(0, len(raw) - 1)) :]
        elif action == "grow":
            raw += data.draw(st.binary(min_size=1, max_size=8))
    count = len(recs) + data.draw(st.sampled_from([0, 0, 0, -1, 1]))
    blob = bytes(raw)
    want = decoder_accepts(blob, count)
    try:
        r.check_records(blob, count)
        got = True
    except r.CorruptRecordError:
        got = False
    assert got == want


@given(st.binary(max_size=300), st.integers(0, 60))
def test_random_bytes_never_raise_anything_but_corrupt(blob: bytes, count: int) -> None:
    with contextlib.suppress(r.CorruptRecordError):
        r.check_records(blob, count)


@pytest.mark.parametrize(
    "data,count",
    [
        (b"", 1),  # no record at all
        (b"\x0c\x00\x00\x00\x01\x01\x00", 1),  # one record, offset delta 0: fine below
        (b"\x0c\x00\x00\x02\x01\x01\x00", 1),  # offset delta 1 for record 0
        (b"\x0c\x00\x00\x00\x01\x01\x00\x00", 1),  # a byte after the last record
        (b"\xff\xff\xff\xff\xff\xff", 1),  # a varint longer than 5 bytes
        (b"\x0c\x00\x00\x00\x7f\x01\x00", 1),  # key length -64
        (b"\x0c\x00\x00\x00\x40\x01\x00", 1),  # key of 32 bytes in a 6-byte record
        (b"\x0c\x00\x00\x00\x01\x01\x02", 1),  # one header in no bytes
    ],
)
def test_malformed_records(data: bytes, count: int) -> None:
    if data == b"\x0c\x00\x00\x00\x01\x01\x00":
        assert r.check_records(data, count) == []
        assert r.check_records(data, count, keys_required=True) == [
            (0, "compacted topics require a key on every record")
        ]
        return
    with pytest.raises(r.CorruptRecordError):
        r.check_records(data, count)
