"""Fencing in the bucket: two uploaders of one partition, a deposed leader (a zombie that
has not heard of the new epoch yet) and the new one, against S3 servers that honour
conditional writes (SeaweedFS, moto). Whoever writes second against a manifest version
that is no longer current is refused; the stale writer stops, and nothing it stored is
referenced by the manifest or left in the bucket.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from shazamq.broker.log import LogConfig, PartitionLog
from shazamq.broker.tier.manager import TokenBucket
from shazamq.broker.tier.manifest import (
    FILE_EXTS,
    PartitionManifest,
    decode_manifest,
    manifest_key,
    segment_key,
)
from shazamq.broker.tier.metrics import TierMetrics
from shazamq.broker.tier.s3 import S3Store
from shazamq.broker.tier.uploader import Fenced, ManifestChanged, PartitionUploader
from shazamq.config import S3Config
from shazamq.protocol.records import Record, build_batch

from .conftest import unique_bucket

TOPIC, TOPIC_ID = "orders", "0123456789abcdef0123456789abcdef"
KEY = manifest_key(TOPIC, TOPIC_ID, 0)
PREFIX = KEY.removesuffix("manifest.json")


@pytest.fixture(params=["seaweedfs", "moto"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[S3Store]:
    name = "seaweed_endpoint" if request.param == "seaweedfs" else "moto_endpoint"
    endpoint = request.getfixturevalue(name)
    s = S3Store(S3Config(bucket=unique_bucket(), endpoint=endpoint, prefix="fence"))
    await s.open()
    await s.ensure_bucket()
    try:
        yield s
    finally:
        await s.close()


def _log(directory: Path, batches: int) -> PartitionLog:
    """A replica's log: ``batches`` batches of 5 records, a segment each."""
    plog = PartitionLog.open(
        str(directory / f"{TOPIC}-0"), LogConfig(), topic=TOPIC, partition=0, topic_id=TOPIC_ID
    )
    for _ in range(batches):
        records = [
            Record(offset_delta=i, timestamp_delta=i, key=b"k", value=b"v" * 50) for i in range(5)
        ]
        plog.append(build_batch(records, base_timestamp=int(time.time() * 1000)), leader_epoch=1)
        plog.roll()
    return plog


def _uploader(
    store: S3Store, plog: PartitionLog, epoch: int, metrics: TierMetrics
) -> PartitionUploader:
    info = SimpleNamespace(name=TOPIC, topic_id=TOPIC_ID, configs={})
    partition: Any = SimpleNamespace(
        log=plog,
        topic=TOPIC,
        index=0,
        topic_info=info,
        leader_epoch=epoch,
        is_leader=True,  # the zombie believes it still leads
        replica=object(),  # a replica of a cluster
    )
    tier: Any = SimpleNamespace(
        store=store,
        upload_slots=asyncio.Semaphore(2),
        bandwidth=TokenBucket(0),
        metrics=metrics,
        manifests={},
        config=SimpleNamespace(max_upload_interval_ms=60_000),
    )
    return PartitionUploader(tier, partition)


async def _bucket(store: S3Store) -> tuple[PartitionManifest, set[str]]:
    manifest = decode_manifest(await store.get(KEY))
    return manifest, {o.key for o in await store.list(PREFIX)}


def _referenced(m: PartitionManifest) -> set[str]:
    named = {KEY}
    for s in m.segments:
        for ext in FILE_EXTS:
            if ext == "txnindex" and not s.has_txn_index:
                continue
            if ext == "snapshot" and not s.has_snapshot:
                continue
            named.add(segment_key(PREFIX, s.base_offset, s.upload_id, ext))
    return named


async def test_a_deposed_leader_cannot_overwrite_the_new_leaders_manifest(
    store: S3Store, tmp_path: Path
) -> None:
    metrics = TierMetrics(CollectorRegistry())
    old = _uploader(store, _log(tmp_path / "a", 4), epoch=5, metrics=metrics)
    new = _uploader(store, _log(tmp_path / "b", 4), epoch=6, metrics=metrics)
    await old.load_manifest()
    await old.upload(old.pending()[0])  # offsets 0..4, under epoch 5

    # the new leader takes over from that manifest and uploads the next segment
    await new.load_manifest()
    assert new.manifest.end_offset == 5
    await new.upload(new.pending()[0])
    written, _ = await _bucket(store)
    assert written.leader_epoch == 6 and written.end_offset == 10

    # the zombie, still at epoch 5, uploads its next segment: refused, and it stops
    with pytest.raises(Fenced):
        await old.upload(old.pending()[0])
    manifest, keys = await _bucket(store)
    assert manifest == written
    assert keys == _referenced(manifest)  # its objects went again
    assert metrics.fenced_uploaders._value.get() == 1  # type: ignore[attr-defined]

    # a deposed leader that starts an uploader only now stops at once
    late = _uploader(store, _log(tmp_path / "c", 1), epoch=5, metrics=metrics)
    with pytest.raises(Fenced):
        await late.load_manifest()
    assert metrics.fenced_uploaders._value.get() == 2  # type: ignore[attr-defined]

    # the new leader is unaffected
    await new.upload_ready()
    manifest, keys = await _bucket(store)
    assert [s.base_offset for s in manifest.segments] == [0, 5, 10, 15]
    assert keys == _referenced(manifest)


async def test_a_zombie_write_that_lands_first_is_built_on_then_fenced(
    store: S3Store, tmp_path: Path
) -> None:
    """The new leader read the manifest, then the zombie wrote one more segment: the new
    leader's write is refused, it continues from the zombie's manifest (its own objects
    removed), and the zombie's next write is refused for good."""
    metrics = TierMetrics(CollectorRegistry())
    old = _uploader(store, _log(tmp_path / "a", 4), epoch=5, metrics=metrics)
    new = _uploader(store, _log(tmp_path / "b", 4), epoch=6, metrics=metrics)
    await old.load_manifest()
    await new.load_manifest()  # no manifest yet: it will create one
    await old.upload(old.pending()[0])

    with pytest.raises(ManifestChanged):
        await new.upload(new.pending()[0])
    manifest, keys = await _bucket(store)
    assert manifest.leader_epoch == 5 and manifest.end_offset == 5
    assert keys == _referenced(manifest)
    assert new.manifest == manifest  # adopted
    await new.upload_ready()  # from the zombie's manifest on
    manifest, keys = await _bucket(store)
    assert manifest.leader_epoch == 6
    assert [s.base_offset for s in manifest.segments] == [0, 5, 10, 15]

    with pytest.raises(Fenced):
        await old.upload(old.pending()[0])
    assert await _bucket(store) == (manifest, keys)
    assert keys == _referenced(manifest)


async def test_a_retried_write_that_had_landed_is_not_a_conflict(
    store: S3Store, tmp_path: Path
) -> None:
    """A manifest PUT whose answer was lost is retried and refused (the object is no
    longer the version it names); the bucket holds exactly what was sent: success."""
    metrics = TierMetrics(CollectorRegistry())
    up = _uploader(store, _log(tmp_path / "a", 3), epoch=2, metrics=metrics)
    await up.load_manifest()
    real_put_if = store.put_if

    async def lost_answer(key: str, data: bytes, version: str | None) -> str:
        await real_put_if(key, data, version)
        return await real_put_if(key, data, version)  # the retry: refused

    store.put_if = lost_answer  # type: ignore[method-assign]
    try:
        await up.upload(up.pending()[0])
    finally:
        store.put_if = real_put_if  # type: ignore[method-assign]
    await up.upload_ready()
    manifest, keys = await _bucket(store)
    assert [s.base_offset for s in manifest.segments] == [0, 5, 10]
    assert keys == _referenced(manifest)
