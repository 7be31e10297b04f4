"""The object store interface against real servers: SeaweedFS, moto (with faults), GCS."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import crc32c
import pytest

from shazamq.broker.tier.gcs import GcsStore
from shazamq.broker.tier.manager import open_store
from shazamq.broker.tier.s3 import S3Store
from shazamq.broker.tier.store import (
    MIN_PART_BYTES,
    ObjectStore,
    RetryPolicy,
    StoreError,
    StoreErrorKind,
)
from shazamq.config import GcsConfig, S3Config, TieredStorageConfig

from .conftest import FaultProxy, create_gcs_bucket, unique_bucket

FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)


async def _s3(endpoint: str, **kwargs: object) -> S3Store:
    store = S3Store(S3Config(bucket=unique_bucket(), endpoint=endpoint, prefix="pre/fix"), **kwargs)
    await store.open()
    await store.ensure_bucket()
    return store


@pytest.fixture(params=["seaweedfs", "moto", "gcs"])
async def store(
    request: pytest.FixtureRequest,
) -> AsyncIterator[ObjectStore]:
    if request.param == "gcs":
        endpoint = request.getfixturevalue("gcs_endpoint")
        bucket = unique_bucket()
        create_gcs_bucket(endpoint, bucket)
        s: ObjectStore = GcsStore(GcsConfig(bucket=bucket, endpoint=endpoint, prefix="pre/fix"))
        await s.open()  # type: ignore[attr-defined]
    else:
        name = "seaweed_endpoint" if request.param == "seaweedfs" else "moto_endpoint"
        s = await _s3(request.getfixturevalue(name))
    try:
        yield s
    finally:
        await s.close()


async def test_put_get_range_list_head_delete(store: ObjectStore) -> None:
    data = os.urandom(300_000)
    await store.put("a/one", data)
    await store.put("a/two", b"x")
    await store.put("b/three", b"z")
    assert await store.get("a/one") == data
    assert await store.get("a/one", 1000, 2000) == data[1000:2000]
    assert await store.get("a/one", 299_990) == data[299_990:]
    info = await store.head("a/one")
    assert info is not None and info.size == len(data)
    assert await store.head("a/missing") is None
    listed = await store.list("a/")
    assert [(o.key, o.size) for o in listed] == [("a/one", len(data)), ("a/two", 1)]
    assert [o.key for o in await store.list()] == ["a/one", "a/two", "b/three"]
    await store.delete("a/one")
    await store.delete("a/one")  # deleting twice is fine
    assert await store.head("a/one") is None
    with pytest.raises(StoreError) as err:
        await store.get("a/one")
    assert err.value.kind is StoreErrorKind.NOT_FOUND


async def test_empty_objects(store: ObjectStore) -> None:
    """A segment smaller than index.interval.bytes has an empty offset index: it is uploaded
    as an empty object like any other file of the segment."""
    await store.put("seg/empty.index", b"")
    info = await store.head("seg/empty.index")
    assert info is not None and info.size == 0
    assert await store.get("seg/empty.index") == b""


async def _put_file(store: ObjectStore, path: Path, key: str, data: bytes) -> int:
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        return await store.put_file(key, fd, len(data))
    finally:
        os.close(fd)


async def test_put_file_whole_and_in_parts(store: ObjectStore, tmp_path: Path) -> None:
    store.part_bytes = MIN_PART_BYTES
    small = os.urandom(100_000)
    assert await _put_file(store, tmp_path / "s", "small", small) == crc32c.crc32c(small)
    assert await store.get("small") == small
    # three parts, the last one short: multipart (S3) or chunked resumable (GCS)
    big = os.urandom(2 * MIN_PART_BYTES + 12_345)
    assert await _put_file(store, tmp_path / "b", "big", big) == crc32c.crc32c(big)
    info = await store.head("big")
    assert info is not None and info.size == len(big)
    assert await store.get("big") == big
    assert (
        await store.get("big", MIN_PART_BYTES - 10, MIN_PART_BYTES + 10)
        == big[MIN_PART_BYTES - 10 : MIN_PART_BYTES + 10]
    )


async def test_multipart_part_retried_then_aborted(fault_proxy: FaultProxy, tmp_path: Path) -> None:
    store = await _s3(fault_proxy.endpoint, retry=FAST_RETRY)
    store.part_bytes = MIN_PART_BYTES
    data = os.urandom(2 * MIN_PART_BYTES + 1)
    try:
        # a part that fails twice is sent again on its own; the object is whole
        fault_proxy.fail_matching, fault_proxy.fail_count = "partNumber=2", 2
        assert await _put_file(store, tmp_path / "f", "k", data) == crc32c.crc32c(data)
        assert await store.get("k") == data
        sent = [line for line in fault_proxy.seen if "partNumber=" in line]
        assert sum("partNumber=1" in line for line in sent) == 1
        assert sum("partNumber=2" in line for line in sent) == 3

        # a part that keeps failing: the upload is aborted, nothing is stored
        fault_proxy.fail_matching, fault_proxy.fail_count = "partNumber=3", -1
        with pytest.raises(StoreError) as err:
            await _put_file(store, tmp_path / "f", "k2", data)
        assert err.value.kind is StoreErrorKind.SERVER
        fault_proxy.fail_matching = None
        assert any(line.startswith("DELETE ") and "uploadId=" in line for line in fault_proxy.seen)
        assert await store.head("k2") is None
        pending = await store._call("", "list_multipart_uploads")
        assert pending.get("Uploads", []) == []
    finally:
        await store.close()


async def test_bad_range_is_refused(store: ObjectStore) -> None:
    with pytest.raises(ValueError, match="bad byte range"):
        await store.get("k", 10, 5)


async def test_retries_through_500s_and_throttling(fault_proxy: FaultProxy) -> None:
    errors: list[StoreErrorKind] = []
    store = await _s3(fault_proxy.endpoint, retry=FAST_RETRY, on_error=errors.append)
    try:
        await store.put("k", b"v1")
        for mode, kind in (("500", StoreErrorKind.SERVER), ("slowdown", StoreErrorKind.THROTTLED)):
            fault_proxy.mode = mode
            with pytest.raises(StoreError) as err:
                await store.put("k", b"never")
            assert err.value.kind is kind
            assert errors[-FAST_RETRY.attempts :] == [kind] * FAST_RETRY.attempts
            fault_proxy.mode = "ok"
        assert await store.get("k") == b"v1"  # nothing half-written replaced it

        # transient faults that clear while retrying are invisible to the caller
        fault_proxy.mode = "500"
        calls = 0
        original = store._put

        async def flaky(key: str, data: bytes) -> None:
            nonlocal calls
            calls += 1
            if calls == 2:
                fault_proxy.mode = "ok"
            await original(key, data)

        store._put = flaky  # type: ignore[method-assign]
        await store.put("k", b"v2")
        assert calls == 2  # one injected 500, then through
        assert await store.get("k") == b"v2"
    finally:
        await store.close()


async def test_missing_bucket_is_a_clear_permanent_error(moto_endpoint: str) -> None:
    store = S3Store(S3Config(bucket="no-such-bucket-here", endpoint=moto_endpoint))
    await store.open()
    try:
        with pytest.raises(StoreError) as err:
            await store.put("k", b"v")
        assert not err.value.kind.transient
    finally:
        await store.close()


async def test_conditional_writes(store: ObjectStore) -> None:
    """SeaweedFS and moto honour S3's If-Match / If-None-Match; the GCS emulator ignores
    ifGenerationMatch (real GCS honours it), which the probe finds out."""
    supported = await store.probe_conditional("probe/conditional")
    assert supported is not isinstance(store, GcsStore)
    assert await store.head("probe/conditional") is None  # the probe cleans up
    if not supported:
        return
    v1 = await store.put_if("m", b"one", None)
    with pytest.raises(StoreError) as err:
        await store.put_if("m", b"other", None)
    assert err.value.kind is StoreErrorKind.PRECONDITION
    got = await store.get_versioned("m")
    assert got == (b"one", v1)
    v2 = await store.put_if("m", b"two", v1)
    with pytest.raises(StoreError) as err:
        await store.put_if("m", b"stale", v1)
    assert err.value.kind is StoreErrorKind.PRECONDITION
    assert await store.get_versioned("m") == (b"two", v2)
    assert await store.get_versioned("missing") is None


async def test_the_part_size_setting_reaches_the_store(moto_endpoint: str) -> None:
    cfg = TieredStorageConfig(
        enabled=True,
        s3=S3Config(bucket=unique_bucket(), endpoint=moto_endpoint),
        upload_part_size_bytes=MIN_PART_BYTES,
    )
    store = await open_store(cfg, None)
    try:
        assert store.part_bytes == MIN_PART_BYTES
    finally:
        await store.close()
