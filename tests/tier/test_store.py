"""The object store interface against real servers: SeaweedFS, moto (with faults), GCS."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from shazamq.broker.tier.gcs import GcsStore
from shazamq.broker.tier.s3 import S3Store
from shazamq.broker.tier.store import ObjectStore, RetryPolicy, StoreError, StoreErrorKind
from shazamq.config import GcsConfig, S3Config

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
