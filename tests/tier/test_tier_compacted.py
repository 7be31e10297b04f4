"""Compacted topics in the bucket: cleaned segments replace their remote copies.

Segments are uploaded when they close; compaction rewrites them afterwards. The cleaned
segments are then stored and swapped in for the entries they cover by one manifest
write, and the old objects are deleted after it. A broker restored from the bucket
serves the compacted log at the same offsets and continues them where the log ended.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from confluent_kafka import Producer
from kafka_helpers import RawClient, make_topic
from kafka_helpers import send_idempotent as send_one
from msgspec.structs import replace as msgspec_replace

from shazamq.broker.tier.manifest import PartitionManifest, RemoteSegment, segment_key
from shazamq.broker.tier.uploader import PartitionUploader, cleaned_run
from shazamq.protocol.messages.init_producer_id_request import InitProducerIdRequest
from shazamq.protocol.records import Record

from .test_restore_metrics import MemoryStore
from .tierutil import Bucket, consume_all, read_until, wait_for

KEYS = 10
N = 200


def _seg(base: int, nxt: int, size: int) -> SimpleNamespace:
    return SimpleNamespace(base_offset=base, next_offset=nxt, size=size)


def _entry(base: int, last: int, size: int) -> RemoteSegment:
    return RemoteSegment(
        upload_id="u",
        base_offset=base,
        last_offset=last,
        base_timestamp=0,
        max_timestamp=0,
        offset_of_max_timestamp=0,
        size=size,
        crc32c=0,
    )


def _manifest(*entries: RemoteSegment) -> PartitionManifest:
    return PartitionManifest(topic="t", topic_id="i", partition=0, segments=list(entries))


def test_cleaned_run_finds_what_compaction_rewrote() -> None:
    m = _manifest(_entry(0, 99, 1000), _entry(100, 199, 1000), _entry(200, 299, 1000))
    active = _seg(300, 300, 0)
    # nothing cleaned: every local segment is its remote copy
    same = [_seg(0, 100, 1000), _seg(100, 200, 1000), _seg(200, 300, 1000), active]
    assert cleaned_run(same, m) is None  # type: ignore[arg-type]
    # the first two cleaned into one (with a gap at its end): they replace entries 0..1
    merged = [_seg(0, 180, 700), _seg(200, 300, 1000), active]
    run = cleaned_run(merged, m)  # type: ignore[arg-type]
    assert run is not None and run[0] == merged[:1] and run[1:] == (0, 2)
    # the middle one cleaned to a smaller size
    mid = [_seg(0, 100, 1000), _seg(100, 150, 400), _seg(200, 300, 1000), active]
    run = cleaned_run(mid, m)  # type: ignore[arg-type]
    assert run is not None and run[0] == mid[1:2] and run[1:] == (1, 2)
    # cleaned to nothing and merged: an empty segment below the first entry left
    m4 = _manifest(_entry(30, 99, 700), _entry(100, 189, 900), _entry(190, 199, 100))
    empty = [_seg(0, 0, 0), _seg(190, 200, 100), _seg(200, 200, 0)]
    run = cleaned_run(empty, m4)  # type: ignore[arg-type]
    assert run is not None and run[0] == empty[:1] and run[1:] == (0, 2)
    # a segment not wholly in the bucket yet is not compared
    m2 = _manifest(_entry(0, 99, 1000))
    assert cleaned_run([_seg(0, 100, 1000), _seg(100, 200, 500), active], m2) is None  # type: ignore[arg-type]
    # an entry reaching past the run (a new leader's overlapping upload) waits
    m3 = _manifest(_entry(0, 149, 1500), _entry(150, 299, 1500))
    overlap = [_seg(0, 100, 900), _seg(100, 400, 2000), _seg(400, 400, 0)]
    assert cleaned_run(overlap, m3) is None  # type: ignore[arg-type]
    # once the bucket holds both, they replace both entries together
    whole = [_seg(0, 100, 900), _seg(100, 300, 2000), active]
    run = cleaned_run(whole, m3)  # type: ignore[arg-type]
    assert run is not None and run[0] == whole[:2] and run[1:] == (0, 2)


def _produce(bootstrap: str, topic: str, start: int, n: int) -> dict[bytes, bytes]:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    latest: dict[bytes, bytes] = {}
    for i in range(start, start + n):
        k = f"k{i % KEYS}".encode()
        v = f"value-{i:06d}-".encode() + bytes([i % 251]) * 300
        latest[k] = v
        p.produce(topic, key=k, value=v, partition=0)
        if i % 10 == 9:
            p.flush(10)
    assert p.flush(10) == 0
    return latest


def test_compacted_topic_cleaned_segments_replace_remote_ones(
    broker_factory, bucket: Bucket
) -> None:
    b = broker_factory(**bucket.settings())
    topic = "compacted"
    make_topic(
        b.bootstrap,
        topic,
        1,
        {
            "cleanup.policy": "compact",
            "segment.bytes": "4000",
            "min.cleanable.dirty.ratio": "0.01",
            # the segments reach the bucket before they may be cleaned
            "min.compaction.lag.ms": "6000",
        },
    )
    latest = _produce(b.bootstrap, topic, 0, N)
    produced_bytes = N * 320
    local_dir = b.data_dir / f"{topic}-0"
    uncleaned = wait_for(
        lambda: (m := bucket.manifest(topic)) and m.size_bytes > produced_bytes // 2 and m,
        what="the uncleaned segments in the bucket",
    )
    assert uncleaned.segments[0].base_offset == 0

    def replaced() -> PartitionManifest | None:
        m = bucket.manifest(topic)
        if m is None or m.end_offset < N - 20 or m.size_bytes > produced_bytes // 3:
            return None
        # settled: every remote entry is the local segment of the same base, same size
        for s in m.segments:
            f = local_dir / f"{s.base_offset:020d}.log"
            if not f.exists() or f.stat().st_size != s.size:
                return None
        return m

    m = wait_for(replaced, timeout=90, what="cleaned segments in the bucket")
    # the start of the log was cleaned after its upload: its first entry is a cleaned
    # segment now (the cleaner may keep base offset 0 for a group it merged, or leave the
    # group's first offsets out), and the log still starts at 0
    assert m.log_start_offset == 0
    assert m.segments[0].upload_id != uncleaned.segments[0].upload_id
    first_uncleaned = uncleaned.segments[0]
    assert (
        m.segments[0].base_offset > 0
        or m.segments[0].size < first_uncleaned.size
        or m.segments[0].last_offset > first_uncleaned.last_offset
    )
    prefix = f"topics/{topic}-{m.topic_id}/0/"
    # the bytes in the bucket are the cleaned local segments'
    for s in m.segments:
        stem = f"{prefix}{s.base_offset:020d}-{s.upload_id}"
        local = (local_dir / f"{s.base_offset:020d}.log").read_bytes()
        assert bucket.get(stem + ".log") == local
    # the uncleaned objects are gone once no manifest names them
    referenced = {f"{prefix}{s.base_offset:020d}-{s.upload_id}" for s in m.segments}
    m_now = bucket.manifest(topic)
    assert m_now is not None
    referenced |= {f"{prefix}{s.base_offset:020d}-{s.upload_id}" for s in m_now.segments}
    stale = [
        k
        for k in bucket.objects()
        if k.startswith(prefix)
        and not k.endswith("manifest.json")
        and k.rsplit(".", 1)[0] not in referenced
    ]
    assert stale == []
    assert not referenced & {
        f"{prefix}{s.base_offset:020d}-{s.upload_id}" for s in uncleaned.segments[:5]
    }

    before = read_until(b.bootstrap, topic, "read_uncommitted", N)  # the compacted log
    offsets = [o for o, _ in before]
    assert offsets == sorted(offsets) and len(offsets) < N // 2
    assert set(latest.values()) <= {v for _, v in before}

    # a broker restored from the bucket serves the same compacted log at the same
    # offsets, and continues them where the log ended
    assert b.stop() == 0
    fresh = broker_factory(**bucket.settings())
    after = read_until(fresh.bootstrap, topic, "read_uncommitted", N)
    assert after == before
    _produce(fresh.bootstrap, topic, N, 1)
    tail = consume_all(fresh.bootstrap, topic, 1, start=N)
    assert [o for o, _ in tail] == [N]


def _send(client: RawClient, topic: str, pid: int, seq: int) -> tuple[int, int]:
    """One idempotent batch of one record (keys repeat every 3); (error, base offset)."""
    record = Record(offset_delta=0, key=b"k%d" % (seq % 3), value=b"v%06d" % seq * 40)
    return send_one(client, topic, record, pid, seq)


def test_a_cleaned_last_segment_keeps_the_producer_snapshot(broker_factory, bucket: Bucket) -> None:
    """Compaction replaces the bucket's last segment with a cleaned one; the entry still
    carries the producer snapshot at the log's end, so a restored broker knows the
    idempotent producer: a retried batch is a duplicate, the next sequence follows."""
    b = broker_factory(**bucket.settings())
    topic = "compacted-idempotent"
    make_topic(
        b.bootstrap,
        topic,
        1,
        {
            "cleanup.policy": "compact",
            "segment.bytes": "2000",
            "min.cleanable.dirty.ratio": "0.01",
            "min.compaction.lag.ms": "4000",
        },
    )
    client = RawClient(b.port)
    init = InitProducerIdRequest(transactional_id=None, transaction_timeout_ms=-1)
    pid = client.request(init, 4).producer_id
    n = 40
    for seq in range(n):
        assert _send(client, topic, pid, seq) == (0, seq)
    client.close()

    first = wait_for(
        lambda: (m := bucket.manifest(topic)) and m.end_offset == n and m.segments[-1],
        what="the last segment in the bucket",
    )

    def tail_replaced() -> RemoteSegment | None:
        m = bucket.manifest(topic)
        if m is None or m.end_offset != n or m.segments[-1].upload_id == first.upload_id:
            return None
        return m.segments[-1]

    tail = wait_for(tail_replaced, timeout=90, what="the cleaned last segment in the bucket")
    assert tail.size < first.size  # compaction rewrote it
    assert tail.has_snapshot
    assert b.stop() == 0

    fresh = broker_factory(**bucket.settings())
    client = RawClient(fresh.port)
    try:
        # the retried last batch is recognised: its original offset, nothing appended
        assert _send(client, topic, pid, n - 1) == (0, n - 1)
        assert _send(client, topic, pid, n) == (0, n)
    finally:
        client.close()


def test_the_replaced_last_segments_snapshot_is_carried_over() -> None:
    """A cleaned segment whose end compaction emptied (a trailing transaction marker
    removed, say) has no producer snapshot at the bucket's end offset: the entry that
    replaces the last one gets the replaced entry's snapshot, copied under its upload."""
    store = MemoryStore()
    partition: Any = SimpleNamespace(
        log=SimpleNamespace(),
        topic="t",
        index=0,
        leader_epoch=0,
        topic_info=SimpleNamespace(name="t", topic_id="ab" * 16),
    )
    up = PartitionUploader(SimpleNamespace(store=store), partition)  # type: ignore[arg-type]
    replaced = msgspec_replace(_entry(100, 199, 1000), upload_id="old", has_snapshot=True)
    store.objects[segment_key(up.prefix, 100, "old", "snapshot")] = b"state at 200"
    # the cleaned segment ends at 180, with no snapshot of its own
    cleaned = msgspec_replace(_entry(100, 180, 600), upload_id="new")
    kept = asyncio.run(up._keep_tail(cleaned, replaced))
    assert (kept.last_offset, kept.has_snapshot) == (199, True)
    assert store.objects[segment_key(up.prefix, 100, "new", "snapshot")] == b"state at 200"
    # one that took its snapshot below the end it now names loses it
    early = msgspec_replace(cleaned, upload_id="early", has_snapshot=True)
    store.objects[segment_key(up.prefix, 100, "early", "snapshot")] = b"state at 181"
    no_old = msgspec_replace(replaced, has_snapshot=False)
    kept = asyncio.run(up._keep_tail(early, no_old))
    assert (kept.last_offset, kept.has_snapshot) == (199, False)
    assert segment_key(up.prefix, 100, "early", "snapshot") not in store.objects
    # a cleaned segment reaching the end with its snapshot is kept as it is
    whole = msgspec_replace(_entry(100, 199, 900), upload_id="whole", has_snapshot=True)
    assert asyncio.run(up._keep_tail(whole, replaced)) is whole
