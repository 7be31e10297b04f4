"""The S3 store (and any S3 API: MinIO, SeaweedFS, Ceph), through aiobotocore.

botocore's own retries are off; :class:`~.store.ObjectStore` retries with backoff so both
providers behave the same. Every put carries its MD5 (``Content-MD5``), which S3 checks
before it stores anything, and the returned ETag is compared with it as well. Large
files go by multipart upload: each part carries its MD5 and its ETag is checked, the
completed object's size (and composite ETag) too; a failed upload is aborted so no
parts linger in the bucket.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import crc32c
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    ReadTimeoutError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from shazamq.config import S3Config

from .store import (
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    PreconditionFailedError,
    StoreError,
    StoreErrorKind,
    read_part,
)

__all__ = ["S3Store"]

_THROTTLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestThrottled",
}
_TIMEOUT_CODES = {"RequestTimeout", "RequestTimeTooSkewed"}
# 412 for a condition that does not hold; 409 when a concurrent conditional write to the
# same key won the race
_PRECONDITION_CODES = {"PreconditionFailed", "ConditionalRequestConflict"}


def _classify(exc: BaseException, key: str) -> StoreError:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in ("NoSuchKey", "404", "NotFound") or (status == 404 and code != "NoSuchBucket"):
            return ObjectNotFoundError(key)
        if code in _PRECONDITION_CODES or status == 412:
            return PreconditionFailedError(key)
        if code in _THROTTLE_CODES or status in (429, 503):
            return StoreError(StoreErrorKind.THROTTLED, f"{key}: throttled ({code or status})")
        if code in _TIMEOUT_CODES or status == 408:
            return StoreError(StoreErrorKind.TIMEOUT, f"{key}: {code or status}")
        if code == "BadDigest":
            return StoreError(StoreErrorKind.INTEGRITY, f"{key}: the store saw other bytes")
        if status >= 500:
            return StoreError(StoreErrorKind.SERVER, f"{key}: server error {status} {code}")
        return StoreError(StoreErrorKind.CLIENT, f"{key}: {code or status}: {exc}")
    if isinstance(exc, ConnectTimeoutError | ReadTimeoutError | asyncio.TimeoutError):
        return StoreError(StoreErrorKind.TIMEOUT, f"{key}: timed out: {exc}")
    if isinstance(exc, BotoConnectionError | aiohttp.ClientError | ConnectionError):
        return StoreError(StoreErrorKind.CONNECTION, f"{key}: {exc}")
    if isinstance(exc, BotoCoreError):
        return StoreError(StoreErrorKind.CONNECTION, f"{key}: {exc}")
    raise exc


class S3Store(ObjectStore):
    """One bucket under one prefix. Call :meth:`open` before use."""

    def __init__(self, config: S3Config, *, request_timeout: float = 60.0, **kwargs: Any) -> None:
        super().__init__(config.prefix, **kwargs)
        self.config = config
        self.request_timeout = request_timeout
        self.bucket = config.bucket
        self._stack = AsyncExitStack()
        self._client: Any = None

    async def open(self) -> None:
        cfg = self.config
        session = get_session()
        client_cfg = AioConfig(
            connect_timeout=min(10.0, self.request_timeout),
            read_timeout=self.request_timeout,
            retries={"total_max_attempts": 1},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=32,
        )
        creds: dict[str, str] = {}
        if cfg.access_key_id and cfg.secret_access_key:
            creds = {
                "aws_access_key_id": cfg.access_key_id,
                "aws_secret_access_key": cfg.secret_access_key,
            }
        self._client = await self._stack.enter_async_context(
            session.create_client(
                "s3",
                region_name=cfg.region,
                endpoint_url=cfg.endpoint,
                config=client_cfg,
                **creds,
            )
        )

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    async def _call(self, key: str, name: str, **kwargs: Any) -> Any:
        try:
            return await getattr(self._client, name)(Bucket=self.bucket, **kwargs)
        except (ClientError, BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _classify(exc, key) from exc

    async def _put(self, key: str, data: bytes) -> None:
        digest = hashlib.md5(data, usedforsecurity=False).digest()
        resp = await self._call(
            key,
            "put_object",
            Key=self.full_key(key),
            Body=data,
            ContentMD5=base64.b64encode(digest).decode(),
            ContentLength=len(data),
        )
        etag = str(resp.get("ETag", "")).strip('"')
        if etag and "-" not in etag and etag != digest.hex():
            raise StoreError(StoreErrorKind.INTEGRITY, f"{key}: ETag {etag} is not our MD5")

    async def _put_if(self, key: str, data: bytes, version: str | None) -> str:
        digest = hashlib.md5(data, usedforsecurity=False).digest()
        condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        resp = await self._call(
            key,
            "put_object",
            Key=self.full_key(key),
            Body=data,
            ContentMD5=base64.b64encode(digest).decode(),
            ContentLength=len(data),
            **condition,
        )
        etag = str(resp.get("ETag", ""))
        bare = etag.strip('"')
        if bare and "-" not in bare and bare != digest.hex():
            raise StoreError(StoreErrorKind.INTEGRITY, f"{key}: ETag {etag} is not our MD5")
        return etag

    async def _get_versioned(self, key: str) -> tuple[bytes, str]:
        resp = await self._call(key, "get_object", Key=self.full_key(key))
        try:
            async with resp["Body"] as stream:
                data: bytes = await stream.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _classify(exc, key) from exc
        # the ETag of the bytes returned, whatever was written since
        return data, str(resp["ETag"])

    async def _put_parts(self, key: str, fd: int, size: int) -> int:
        full = self.full_key(key)
        created = await self._retrying(
            f"create upload {key}", lambda: self._call(key, "create_multipart_upload", Key=full)
        )
        upload_id = created["UploadId"]
        parts: list[dict[str, Any]] = []
        digests: list[bytes] = []
        crc = 0
        loop = asyncio.get_running_loop()
        try:
            for number, pos in enumerate(range(0, size, self.part_bytes), 1):
                data = await read_part(fd, pos, min(self.part_bytes, size - pos))
                digest = await loop.run_in_executor(None, _md5, data)
                crc = await loop.run_in_executor(None, crc32c.crc32c, data, crc)
                etag = await self._retrying(
                    f"part {number} of {key}",
                    lambda n=number, d=data, m=digest: self._put_part(key, upload_id, n, d, m),
                )
                parts.append({"ETag": etag, "PartNumber": number})
                digests.append(digest)
            done = await self._retrying(
                f"complete {key}",
                lambda: self._call(
                    key,
                    "complete_multipart_upload",
                    Key=full,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                ),
            )
        except BaseException:
            # no half-object may stay behind, nor parts the bucket keeps (and bills)
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._call(key, "abort_multipart_upload", Key=full, UploadId=upload_id)
            raise
        etag = str(done.get("ETag", "")).strip('"')
        composite = f"{_md5(b''.join(digests)).hex()}-{len(parts)}"
        if etag and "-" in etag and etag != composite:
            raise StoreError(StoreErrorKind.INTEGRITY, f"{key}: ETag {etag} is not {composite}")
        stored = await self._retrying(f"head {key}", lambda: self._head(key))
        if stored.size != size:
            raise StoreError(StoreErrorKind.INTEGRITY, f"{key}: stored {stored.size} of {size} B")
        return crc

    async def _put_part(
        self, key: str, upload_id: str, number: int, data: bytes, digest: bytes
    ) -> str:
        resp = await self._call(
            key,
            "upload_part",
            Key=self.full_key(key),
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
            ContentMD5=base64.b64encode(digest).decode(),
            ContentLength=len(data),
        )
        etag = str(resp.get("ETag", ""))
        if etag.strip('"') != digest.hex():
            raise StoreError(StoreErrorKind.INTEGRITY, f"{key}: part {number} ETag {etag}")
        return etag

    async def _get(self, key: str, start: int, end: int | None) -> bytes:
        rng = f"bytes={start}-{'' if end is None else end - 1}"
        kwargs: dict[str, Any] = {"Key": self.full_key(key)}
        if start or end is not None:
            kwargs["Range"] = rng
        resp = await self._call(key, "get_object", **kwargs)
        try:
            async with resp["Body"] as stream:
                data: bytes = await stream.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _classify(exc, key) from exc
        want = None if end is None else end - start
        if want is not None and len(data) > want:
            data = data[:want]  # a store that ignored the range
        return data

    async def _head(self, key: str) -> ObjectInfo:
        resp = await self._call(key, "head_object", Key=self.full_key(key))
        return ObjectInfo(key, int(resp["ContentLength"]))

    async def _list(self, prefix: str) -> list[ObjectInfo]:
        out: list[ObjectInfo] = []
        token: str | None = None
        cut = len(self.prefix)
        while True:
            kwargs: dict[str, Any] = {"Prefix": self.full_key(prefix)}
            if token:
                kwargs["ContinuationToken"] = token
            resp = await self._call(prefix, "list_objects_v2", **kwargs)
            for item in resp.get("Contents", ()):
                out.append(ObjectInfo(item["Key"][cut:], int(item["Size"])))
            if not resp.get("IsTruncated"):
                return out
            token = resp.get("NextContinuationToken")

    async def _delete(self, key: str) -> None:
        await self._call(key, "delete_object", Key=self.full_key(key))

    async def ensure_bucket(self) -> None:
        """Create the bucket if it is missing (tests and first deployments)."""
        try:
            await self._call("", "head_bucket")
        except StoreError as exc:
            if exc.kind not in (StoreErrorKind.NOT_FOUND, StoreErrorKind.CLIENT):
                raise
            await self._call("", "create_bucket")


def _md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()
