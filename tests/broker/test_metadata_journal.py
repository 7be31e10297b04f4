"""The single broker's topic metadata: a snapshot plus an append-only journal.

Creating a topic writes one journal line (O(1) bytes), not the whole document; the
journal survives a torn last line; compaction keeps the state across restarts.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shazamq.broker.cluster import metadata as md
from shazamq.broker.cluster.metadata import METADATA_DIR, MetadataStore
from shazamq.broker.cluster.metadata_journal import (
    JournalError,
    encode_header,
    encode_line,
    parse_journal,
)


def _run(coro):
    return asyncio.run(coro)


def _journal(tmp_path) -> bytes:
    return (tmp_path / METADATA_DIR / "topics.journal").read_bytes()


def test_each_create_writes_a_constant_number_of_bytes(tmp_path, monkeypatch):
    """N creates cost O(N) bytes in all (the line per topic, plus compactions amortised),
    where rewriting the document each time costs O(N^2)."""
    monkeypatch.setattr(md, "COMPACT_MIN_BYTES", 4096)  # compactions happen in the test
    store = MetadataStore(tmp_path)
    start = store.bytes_written
    n = 400
    per_create = []

    async def create_all() -> None:
        for i in range(n):
            before = store.bytes_written
            await store.create_topic(f"topic-{i:05d}", 3, configs={"retention.ms": "1000"})
            per_create.append(store.bytes_written - before)

    _run(create_all())
    line = len(encode_line(md.msgspec.json.encode(md._Change(topic=store.topics["topic-00000"]))))
    total = store.bytes_written - start
    # the journal line and, amortised, about as much again for compactions; the whole
    # document for the last create alone is about n lines
    assert total <= 4 * n * line
    # most creates write exactly one line; the rest compacted
    assert sorted(per_create)[n // 2] <= line + 2
    assert max(per_create) < 3 * n * line  # a compaction: one snapshot, not more
    reopened = MetadataStore(tmp_path)
    assert sorted(reopened.topics) == sorted(store.topics)
    assert reopened.topics["topic-00399"].configs == {"retention.ms": "1000"}


def test_changes_survive_a_restart_through_the_journal(tmp_path):
    store = MetadataStore(tmp_path)

    async def changes() -> None:
        await store.create_topic("a", 1)
        await store.create_topic("b", 2)
        await store.set_partitions("b", 5)
        await store.set_configs("a", {"cleanup.policy": "compact"})
        await store.delete_topic("a")
        await store.create_topic("a", 7)  # recreated: a new id

    _run(changes())
    snapshot = (tmp_path / METADATA_DIR / "topics.json").read_bytes()
    assert b'"b"' not in snapshot  # nothing rewrote the document
    reopened = MetadataStore(tmp_path)
    assert reopened.cluster_id == store.cluster_id
    assert {n: t.partitions for n, t in reopened.topics.items()} == {"a": 7, "b": 5}
    assert reopened.topics["a"].configs == {}
    assert reopened.topics["a"].topic_id == store.topics["a"].topic_id
    assert set(reopened.by_id) == set(store.by_id)


def test_a_torn_last_line_is_dropped_and_cut(tmp_path):
    store = MetadataStore(tmp_path)
    _run(store.create_topic("kept", 1))
    path = tmp_path / METADATA_DIR / "topics.journal"
    good = path.read_bytes()
    line = encode_line(b'{"deleted":"kept"}')
    with open(path, "ab") as f:
        f.write(line[:-5])  # the crash came mid-write: never acknowledged
    reopened = MetadataStore(tmp_path)
    assert "kept" in reopened.topics
    assert path.read_bytes() == good  # cut, so the next line starts cleanly
    _run(reopened.create_topic("next", 1))
    again = MetadataStore(tmp_path)
    assert sorted(again.topics) == ["kept", "next"]


def test_damage_before_a_good_line_is_refused(tmp_path):
    store = MetadataStore(tmp_path)
    _run(store.create_topic("t1", 1))
    _run(store.create_topic("t2", 1))
    path = tmp_path / METADATA_DIR / "topics.journal"
    data = bytearray(path.read_bytes())
    first_line_end = data.index(b"\n", data.index(b"\n") + 1)
    data[first_line_end - 3] ^= 0x01  # a flipped bit inside the first record
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged"):
        MetadataStore(tmp_path)


def test_a_journal_of_the_previous_generation_is_ignored(tmp_path, monkeypatch):
    """A crash after the new snapshot and before the new journal: the old journal's
    changes are in the snapshot; replaying them must not undo later state."""
    store = MetadataStore(tmp_path)
    _run(store.create_topic("x", 1))
    path = tmp_path / METADATA_DIR / "topics.journal"
    old_journal = path.read_bytes()
    _run(store.delete_topic("x"))
    store._write()  # compaction: snapshot without x, fresh journal
    path.write_bytes(old_journal)  # as if the journal replacement never happened
    reopened = MetadataStore(tmp_path)
    assert "x" not in reopened.topics
    assert parse_journal(path.read_bytes()).generation == store._generation


def test_parser_round_trip():
    records = [b'{"deleted":"a"}', b'{"topic":{"name":"b"}}']
    data = encode_header(3) + b"".join(encode_line(r) for r in records)
    parsed = parse_journal(data)
    assert parsed == (3, records, len(data))
    # every cut of the file parses: a prefix of the records, never an error
    for cut in range(len(data)):
        p = parse_journal(data[:cut])
        assert p.records == records[: len(p.records)]
        assert p.good_length <= cut


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=300))
def test_parser_on_arbitrary_bytes(data):
    try:
        parsed = parse_journal(data)
    except JournalError:
        return
    assert parsed.good_length <= len(data)
    assert all(b"\n" not in r for r in parsed.records)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.lists(st.dictionaries(st.text(max_size=5), st.integers(), max_size=3), max_size=5),
    st.data(),
)
def test_parser_on_mutated_journals(records, data):
    import json

    raw = [json.dumps(r, separators=(",", ":")).encode() for r in records]
    good = encode_header(1) + b"".join(encode_line(r) for r in raw)
    mutated = bytearray(good)
    if mutated:
        i = data.draw(st.integers(0, len(mutated) - 1))
        mutated[i] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(mutated)))
        del mutated[cut:]
    try:
        parsed = parse_journal(bytes(mutated))
    except JournalError:
        return
    # what parses is always a prefix of what was written (a torn write loses the tail)
    # or, when a mutation left a line valid, exactly the records whose bytes survived
    for r in parsed.records:
        assert r.count(b"\n") == 0
    assert parsed.good_length <= len(mutated)


def test_files_are_fsynced_and_the_directory_too(tmp_path, monkeypatch):
    """A compaction replaces files atomically and fsyncs the directory."""
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    store = MetadataStore(tmp_path)
    monkeypatch.setattr(os, "fsync", spy)
    _run(store.create_topic("t", 1))
    assert any(p.endswith("topics.journal") for p in synced)
    synced.clear()
    store._write()
    meta = str(tmp_path / METADATA_DIR)
    assert any(p.endswith("topics.json.tmp") for p in synced)
    assert meta in synced  # the directory, after the renames
