"""The Google Cloud Storage store, through gcloud-aio-storage.

Credentials: ``credentials_file`` (a service account JSON) or the application-default
chain (``GOOGLE_APPLICATION_CREDENTIALS``, workload identity through the metadata server).
With ``endpoint`` set (an emulator) requests go there unauthenticated. Every upload is
checked against the MD5 the service reports for what it stored.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

import aiohttp
from gcloud.aio.storage import Storage

from shazamq.config import GcsConfig

from .store import ObjectInfo, ObjectNotFoundError, ObjectStore, StoreError, StoreErrorKind

__all__ = ["GcsStore"]

_TIMEOUT = 60


def _classify(exc: BaseException, key: str) -> StoreError:
    if isinstance(exc, aiohttp.ClientResponseError):
        status = exc.status
        if status == 404:
            return ObjectNotFoundError(key)
        if status == 429:
            return StoreError(StoreErrorKind.THROTTLED, f"{key}: throttled (429)")
        if status == 408:
            return StoreError(StoreErrorKind.TIMEOUT, f"{key}: request timeout (408)")
        if status >= 500:
            return StoreError(StoreErrorKind.SERVER, f"{key}: server error {status}")
        return StoreError(StoreErrorKind.CLIENT, f"{key}: HTTP {status}: {exc.message}")
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return StoreError(StoreErrorKind.TIMEOUT, f"{key}: timed out")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return StoreError(StoreErrorKind.CONNECTION, f"{key}: {exc}")
    raise exc


class GcsStore(ObjectStore):
    """One bucket under one prefix. Call :meth:`open` before use."""

    def __init__(self, config: GcsConfig, **kwargs: Any) -> None:
        super().__init__(config.prefix, **kwargs)
        self.config = config
        self.bucket = config.bucket
        self._session: aiohttp.ClientSession | None = None
        self._storage: Storage | None = None

    async def open(self) -> None:
        cfg = self.config
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=_TIMEOUT)
        )
        if cfg.endpoint:
            self._storage = Storage(
                session=self._session, api_root=cfg.endpoint.rstrip("/"), api_is_dev=True
            )
        else:
            self._storage = Storage(session=self._session, service_file=cfg.credentials_file)

    async def close(self) -> None:
        if self._storage is not None:
            await self._storage.close()
            self._storage = None
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    @property
    def _api(self) -> Storage:
        if self._storage is None:
            raise RuntimeError("GcsStore used before open()")
        return self._storage

    async def _put(self, key: str, data: bytes) -> None:
        digest = hashlib.md5(data, usedforsecurity=False).digest()
        try:
            meta = await self._api.upload(
                self.bucket,
                self.full_key(key),
                data,
                content_type="application/octet-stream",
                timeout=_TIMEOUT,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _classify(exc, key) from exc
        reported = meta.get("md5Hash") if isinstance(meta, dict) else None
        if reported and base64.b64decode(reported) != digest:
            raise StoreError(StoreErrorKind.INTEGRITY, f"{key}: stored MD5 is not ours")
        size = meta.get("size") if isinstance(meta, dict) else None
        if size is not None and int(size) != len(data):
            raise StoreError(StoreErrorKind.INTEGRITY, f"{key}: stored {size} of {len(data)} B")

    async def _get(self, key: str, start: int, end: int | None) -> bytes:
        headers = {}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            data = await self._api.download(
                self.bucket, self.full_key(key), headers=headers, timeout=_TIMEOUT
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _classify(exc, key) from exc
        if end is not None and len(data) > end - start:
            data = data[: end - start]
        return data

    async def _head(self, key: str) -> ObjectInfo:
        try:
            meta = await self._api.download_metadata(self.bucket, self.full_key(key))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _classify(exc, key) from exc
        return ObjectInfo(key, int(meta["size"]))

    async def _list(self, prefix: str) -> list[ObjectInfo]:
        out: list[ObjectInfo] = []
        params = {"prefix": self.full_key(prefix)}
        cut = len(self.prefix)
        while True:
            try:
                resp = await self._api.list_objects(self.bucket, params=params)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise _classify(exc, prefix) from exc
            if "error" in resp:
                err = resp["error"]
                raise StoreError(StoreErrorKind.CLIENT, f"list {prefix}: {err}")
            for item in resp.get("items", ()):
                out.append(ObjectInfo(item["name"][cut:], int(item["size"])))
            token = resp.get("nextPageToken")
            if not token:
                return out
            params = {**params, "pageToken": token}

    async def _delete(self, key: str) -> None:
        try:
            await self._api.delete(self.bucket, self.full_key(key), timeout=_TIMEOUT)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _classify(exc, key) from exc
