"""The high-watermark checkpoint: round trip, and anything malformed reads as empty."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from shazamq.broker.cluster import hw_checkpoint

topics = st.from_regex(r"[a-zA-Z0-9._-]{1,20}", fullmatch=True)
marks = st.dictionaries(st.tuples(topics, st.integers(0, 1000)), st.integers(0, 2**62), max_size=30)


@settings(max_examples=50, deadline=None)
@given(marks)
def test_round_trip(tmp_path_factory, m) -> None:
    d = tmp_path_factory.mktemp("hw")
    hw_checkpoint.write(d, m)
    assert hw_checkpoint.read(d) == m
    assert not (d / (hw_checkpoint.FILE_NAME + ".tmp")).exists()


def test_missing_file_is_empty(tmp_path: Path) -> None:
    assert hw_checkpoint.read(tmp_path) == {}


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_malformed_bytes_never_raise(tmp_path_factory, data: bytes) -> None:
    d = tmp_path_factory.mktemp("bad")
    (d / hw_checkpoint.FILE_NAME).write_bytes(data)
    got = hw_checkpoint.read(d)
    assert isinstance(got, dict)


def test_other_versions_and_torn_lines_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / hw_checkpoint.FILE_NAME
    path.write_text("1\n1\norders 0 5\n")
    assert hw_checkpoint.read(tmp_path) == {}
    path.write_text("0\n2\norders 0 5\norders 1\n")
    assert hw_checkpoint.read(tmp_path) == {}
    path.write_text("0\n1\norders 0 5\n")
    assert hw_checkpoint.read(tmp_path) == {("orders", 0): 5}
