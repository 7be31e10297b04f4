"""The compiled record walk (`_recordwalk.check_records`) against the Python reference.

For any bytes, count and options both walks return the same refused list or raise the
same CorruptRecordError message, whether the data comes as bytes, bytearray or
memoryview. A guard page behind (and before) the data turns any read outside the buffer
into a crash of the test run instead of a silent pass.
"""

from __future__ import annotations

import ctypes
import mmap

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shazamq.protocol import records as r

_recordwalk = pytest.importorskip(
    "shazamq.protocol._recordwalk", reason="the C extension was not built"
)
check_c = _recordwalk.check_records
check_py = r._check_records_py


def outcome(fn, data, count, keys_required, first_index):
    try:
        return ("ok", fn(data, count, keys_required=keys_required, first_index=first_index))
    except r.CorruptRecordError as exc:
        assert type(exc) is r.CorruptRecordError
        return ("corrupt", exc.message, str(exc), exc.error_code)


def assert_agree(data: bytes, count: int, keys_required: bool = False, first_index: int = 0):
    expected = outcome(check_py, data, count, keys_required, first_index)
    for form in (bytes(data), bytearray(data), memoryview(data), memoryview(b"xx" + data)[2:]):
        assert outcome(check_c, form, count, keys_required, first_index) == expected
    return expected


def varint(value: int) -> bytes:
    out = bytearray()
    r._write_varint(out, value)
    return bytes(out)


record = st.builds(
    r.Record,
    attributes=st.integers(0, 255),
    timestamp_delta=st.integers(-(2**62), 2**62),
    key=st.none() | st.binary(max_size=80),
    value=st.none() | st.binary(max_size=300),
    headers=st.lists(
        st.tuples(st.text(max_size=8), st.none() | st.binary(max_size=16)), max_size=3
    ).map(tuple),
)


def encoded(recs: list[r.Record], deltas: list[int] | None = None) -> bytes:
    out = bytearray()
    for i, rec in enumerate(recs):
        delta = i if deltas is None else deltas[i]
        r._encode_record(out, rec._replace(offset_delta=delta))
    return bytes(out)


counts = st.integers(-3, 40) | st.sampled_from([2**31 - 1, -(2**31), 2**63, 2**70, -(2**70)])


@settings(max_examples=500)
@given(st.binary(max_size=200), counts, st.booleans(), st.integers(-5, 2**40))
@example(b"", 0, False, 0)
@example(b"", -1, False, 0)
@example(b"\x00" * 7, 1, False, 0)
@example(b"\xff" * 40, 1, False, 0)
@example(b"\x80" * 20 + b"\x00", 1, False, 0)
def test_arbitrary_bytes(data, count, keys_required, first_index):
    assert_agree(data, count, keys_required, first_index)


@settings(max_examples=300)
@given(st.lists(record, min_size=1, max_size=12), st.booleans(), st.integers(0, 10**6))
def test_well_formed(recs, keys_required, first_index):
    data = encoded(recs)
    result = assert_agree(data, len(recs), keys_required, first_index)
    assert result[0] == "ok"


mutation = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=12)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 12)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(
        st.just("varint"),
        st.integers(0, 10**6),
        st.sampled_from([-1, -2, -(2**31), 2**31 - 1, 2**34, -(2**34), 2**62, -(2**63)]),
    ),
    st.tuples(st.just("run"), st.integers(0, 10**6), st.integers(1, 16)),
)


def mutate(data: bytes, mutations) -> bytes:
    out = bytearray(data)
    for kind, where, arg in mutations:
        at = where % (len(out) + 1)
        if kind == "set" and out:
            out[where % len(out)] = arg
        elif kind == "insert":
            out[at:at] = arg
        elif kind == "delete":
            del out[at : at + arg]
        elif kind == "truncate":
            del out[at:]
        elif kind == "varint":
            out[at:at] = varint(arg)
        elif kind == "run":  # a varint that never ends
            out[at:at] = b"\xff" * arg
    return bytes(out)


@settings(max_examples=1000)
@given(
    st.lists(record, min_size=1, max_size=6),
    st.lists(mutation, min_size=1, max_size=4),
    st.integers(-2, 2),
    st.booleans(),
)
def test_mutated(recs, mutations, count_shift, keys_required):
    assert_agree(mutate(encoded(recs), mutations), len(recs) + count_shift, keys_required, 3)


@settings(max_examples=300)
@given(st.lists(record, min_size=1, max_size=6), st.data())
def test_wrong_offset_deltas(recs, data):
    deltas = data.draw(
        st.lists(
            st.integers(-(2**40), 2**40) | st.integers(-3, 8),
            min_size=len(recs),
            max_size=len(recs),
        )
    )
    assert_agree(encoded(recs, deltas), len(recs))


def record_bytes(body: bytes, length: int | None = None) -> bytes:
    return varint(len(body) if length is None else length) + body


@pytest.mark.parametrize(
    "data,count",
    [
        (record_bytes(b"\x00\x00\x00\x01\x01\x00", -6), 1),  # negative record length
        (varint(2**34) + b"\x00" * 10, 1),  # huge record length
        (b"\xff\xff\xff\xff\x7f" + b"\x00" * 10, 1),  # 5-byte length, 35 bits
        (b"\xff\xff\xff\xff\xff\x01" + b"\x00" * 10, 1),  # 6-byte length
        (b"\x80\x80\x80", 1),  # length varint runs off the end
        (b"\x8c", 1),  # two-byte length cut
        (record_bytes(b"\x00" + b"\xff" * 12 + b"\x00\x00\x01\x01\x00"), 1),  # 13-byte timestamp
        (record_bytes(b"\x00" + b"\xff" * 9 + b"\x7f\x00\x01\x01\x00"), 1),  # 10-byte timestamp
        (record_bytes(b"\x00\x00" + varint(-5) + b"\x01\x01\x00"), 1),  # negative offset delta
        (record_bytes(b"\x00\x00\x00" + varint(-3) + b"\x01\x00"), 1),  # negative key length
        (record_bytes(b"\x00\x00\x00" + b"\x81\x00" + b"\x01\x00"), 1),  # long-form null key
        (record_bytes(b"\x00\x00\x00" + varint(2**30) + b"\x01\x00"), 1),  # key past the end
        (record_bytes(b"\x00\x00\x00\x01" + varint(-7) + b"\x00"), 1),  # negative value length
        (record_bytes(b"\x00\x00\x00\x01" + b"\xc0\x80\x80\x80\x80\x01" + b"\x00"), 1),
        (record_bytes(b"\x00\x00\x00\x01\x01" + varint(-1)), 1),  # negative header count
        (record_bytes(b"\x00\x00\x00\x01\x01" + varint(2**20)), 1),  # too many headers
        (record_bytes(b"\x00\x00\x00\x01\x01\x02" + varint(-2) + b"\x00"), 1),
        (record_bytes(b"\x00\x00\x00\x01\x01\x02" + varint(40) + b"\x00"), 1),
        (record_bytes(b"\x00\x00\x00\x01\x01\x02\x00" + varint(-2)), 1),  # header value < -1
        (record_bytes(b"\x00\x00\x00\x01\x01\x02\x00" + varint(30)), 1),
        (record_bytes(b"\x00\x00\x00\x01\x01\x02\x00\x01"), 1),  # null header value: fine
        (record_bytes(b"\x00\x00\x00\x01\x01\x00\x00"), 1),  # a byte too many
        (record_bytes(b"\x00\x00\x00\x01\x01\x00") + b"\x00", 1),  # trailing byte
        (record_bytes(b"\x00\x00\x00\x01\x01\x00") * 3, 2),
        (record_bytes(b"\x00\x00\x00\x01\x01\x00") * 3, 4),
    ],
)
def test_malformed(data, count):
    assert_agree(data, count)
    assert_agree(data, count, True, 7)


def test_refused_indexes_and_types():
    recs = [r.Record(key=None if i % 3 else b"k", value=b"v") for i in range(10)]
    data = encoded(recs)
    found = check_c(data, 10, keys_required=True, first_index=100)
    assert found == check_py(data, 10, keys_required=True, first_index=100)
    assert [i for i, _ in found] == [101, 102, 104, 105, 107, 108]
    assert check_c(data, 10, True, 2**80)[0][0] == 2**80 + 1  # positional, big index
    assert check_c(data, 10) == []
    with pytest.raises(TypeError):
        check_c("text", 1)
    with pytest.raises(TypeError):
        check_c(data, "10")


# ----------------------------------------------------------------- reads stay in bounds

_PAGE = mmap.PAGESIZE


class GuardedPage:
    """One readable page between two inaccessible ones: reading a byte outside it is
    a segmentation fault."""

    def __init__(self) -> None:
        self.map = mmap.mmap(-1, 3 * _PAGE)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        for start in (base, base + 2 * _PAGE):
            if libc.mprotect(start, _PAGE, 0) != 0:  # PROT_NONE
                pytest.skip("mprotect is not available")
        self.view = memoryview(self.map)

    def at_end(self, data: bytes) -> memoryview:
        """``data`` ending on the last byte before the guard page."""
        start = 2 * _PAGE - len(data)
        self.view[start : 2 * _PAGE] = data
        return self.view[start : 2 * _PAGE]

    def at_start(self, data: bytes) -> memoryview:
        self.view[_PAGE : _PAGE + len(data)] = data
        return self.view[_PAGE : _PAGE + len(data)]


@pytest.fixture(scope="module")
def guarded():
    return GuardedPage()


@settings(max_examples=1000)
@given(
    st.lists(record, min_size=1, max_size=4),
    st.lists(mutation, max_size=3),
    st.integers(-1, 1),
    st.booleans(),
)
def test_reads_stay_inside_the_buffer(guarded, recs, mutations, count_shift, keys_required):
    data = mutate(encoded(recs), mutations)[: _PAGE // 2]
    count = len(recs) + count_shift
    expected = outcome(check_py, data, count, keys_required, 0)
    for view in (guarded.at_end(data), guarded.at_start(data)):
        assert outcome(check_c, view, count, keys_required, 0) == expected
