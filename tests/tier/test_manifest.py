"""The manifest codec: round trips (hypothesis) and clear errors for bad bytes."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shazamq.broker.tier.manifest import (
    ClusterMetadata,
    ManifestError,
    PartitionManifest,
    RemoteSegment,
    RemoteTopic,
    decode_cluster,
    decode_manifest,
    encode_cluster,
    encode_manifest,
)
from shazamq.broker.tier.uploader import epoch_slice

offsets = st.integers(min_value=0, max_value=2**62)


@st.composite
def manifests(draw: st.DrawFn) -> PartitionManifest:
    n = draw(st.integers(0, 8))
    base = draw(st.integers(0, 2**40))
    segs = []
    for _ in range(n):
        length = draw(st.integers(1, 10_000))
        segs.append(
            RemoteSegment(
                upload_id=draw(st.text("0123456789abcdef", min_size=32, max_size=32)),
                base_offset=base,
                last_offset=base + length - 1,
                base_timestamp=draw(st.integers(-1, 2**45)),
                max_timestamp=draw(st.integers(-1, 2**45)),
                offset_of_max_timestamp=base,
                size=draw(st.integers(0, 2**31)),
                crc32c=draw(st.integers(0, 2**32 - 1)),
                epochs=draw(st.lists(st.tuples(st.integers(0, 100), offsets), max_size=3)),
                has_txn_index=draw(st.booleans()),
                has_snapshot=draw(st.booleans()),
            )
        )
        base += length + draw(st.integers(0, 5))  # compaction may leave gaps
    return PartitionManifest(
        topic=draw(st.text("abc.-_", min_size=1, max_size=20)),
        topic_id="0" * 32,
        partition=draw(st.integers(0, 1000)),
        log_start_offset=segs[0].base_offset if segs else draw(offsets),
        segments=segs,
        generation=draw(st.integers(0, 2**31)),
    )


@given(manifests())
def test_manifest_round_trip(m: PartitionManifest) -> None:
    again = decode_manifest(encode_manifest(m))
    assert again == m
    for s in m.segments:
        assert again.find(s.base_offset) == s
        assert again.find(s.last_offset) == s
    if m.segments:
        assert again.find(m.end_offset) is None


@given(st.binary(max_size=200))
def test_garbage_is_a_clear_error(data: bytes) -> None:
    with pytest.raises(ManifestError, match="not a valid partition manifest"):
        decode_manifest(data, where="topics/x/0/manifest.json")


def _seg(base: int, last: int, upload_id: str = "ab12") -> RemoteSegment:
    return RemoteSegment(
        upload_id=upload_id,
        base_offset=base,
        last_offset=last,
        base_timestamp=0,
        max_timestamp=0,
        offset_of_max_timestamp=base,
        size=1,
        crc32c=0,
    )


@pytest.mark.parametrize(
    ("segments", "problem"),
    [
        ([_seg(10, 5)], "malformed"),
        ([_seg(0, 9), _seg(5, 9)], "does not follow"),
        ([_seg(0, 9, upload_id="../etc")], "bad upload id"),
    ],
)
def test_inconsistent_manifest_is_refused(segments: list[RemoteSegment], problem: str) -> None:
    m = PartitionManifest(topic="t", topic_id="0" * 32, partition=0, segments=segments)
    data = msgspec.json.encode(m)
    with pytest.raises(ManifestError, match=problem):
        decode_manifest(data)
    with pytest.raises(ManifestError, match=problem):
        encode_manifest(m)


def test_wrong_version_and_types() -> None:
    with pytest.raises(ManifestError, match="version 7"):
        decode_manifest(b'{"version":7,"topic":"t","topic_id":"x","partition":0}')
    with pytest.raises(ManifestError, match="not a valid"):
        decode_manifest(b'{"topic":"t","topic_id":"x","partition":"zero"}')
    with pytest.raises(ManifestError, match="not valid cluster metadata"):
        decode_cluster(b"[]")


def test_cluster_round_trip() -> None:
    c = ClusterMetadata(
        cluster_id="abc", topics=[RemoteTopic(name="t", topic_id="1" * 32, partitions=3)]
    )
    assert decode_cluster(encode_cluster(c)) == c


def test_epoch_slice() -> None:
    entries = [(0, 0), (3, 100), (5, 250)]
    assert epoch_slice(entries, 0, 100) == [(0, 0)]
    assert epoch_slice(entries, 50, 150) == [(0, 50), (3, 100)]
    assert epoch_slice(entries, 100, 250) == [(3, 100)]
    assert epoch_slice(entries, 300, 400) == [(5, 300)]
