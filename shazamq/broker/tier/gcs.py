"""The Google Cloud Storage store, through gcloud-aio-storage.

Credentials: ``credentials_file`` (a service account JSON) or the application-default
chain (``GOOGLE_APPLICATION_CREDENTIALS``, workload identity through the metadata server).
With ``endpoint`` set (an emulator) requests go there unauthenticated. Every upload is
checked against the MD5 the service reports for what it stored. Large files go by a
resumable upload sent in chunks: a chunk that fails is sent again from what the service
reports it persisted, and the finished object's CRC-32C and size are checked.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
from typing import Any
from urllib.parse import quote

import aiohttp
import crc32c
import msgspec
from gcloud.aio.storage import Storage

from shazamq.config import GcsConfig

from .store import (
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    PreconditionFailedError,
    StoreError,
    StoreErrorKind,
    read_part,
)

__all__ = ["GcsStore"]

_TIMEOUT = 60
_API_ROOT = "https://storage.googleapis.com"
_RANGE = re.compile(r"bytes=0-(\d+)")


def _classify(exc: BaseException, key: str) -> StoreError:
    if isinstance(exc, aiohttp.ClientResponseError):
        status = exc.status
        if status == 404:
            return ObjectNotFoundError(key)
        if status == 412:
            return PreconditionFailedError(key)
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

    def __init__(
        self, config: GcsConfig, *, request_timeout: float = _TIMEOUT, **kwargs: Any
    ) -> None:
        super().__init__(config.prefix, **kwargs)
        self.config = config
        self.timeout = request_timeout
        self.bucket = config.bucket
        self._session: aiohttp.ClientSession | None = None
        self._storage: Storage | None = None

    async def open(self) -> None:
        cfg = self.config
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=min(10.0, self.timeout), sock_read=self.timeout
            )
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
                # metadata makes it a multipart upload: an empty object (an offset index
                # of a segment smaller than index.interval.bytes) is then a body with one
                # empty part, which emulators that cannot take an empty media body store
                metadata={"contentType": "application/octet-stream"} if not data else None,
                timeout=self.timeout,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _classify(exc, key) from exc
        reported = meta.get("md5Hash") if isinstance(meta, dict) else None
        if reported and base64.b64decode(reported) != digest:
            raise StoreError(StoreErrorKind.INTEGRITY, f"{key}: stored MD5 is not ours")
        size = meta.get("size") if isinstance(meta, dict) else None
        if size is not None and int(size) != len(data):
            raise StoreError(StoreErrorKind.INTEGRITY, f"{key}: stored {size} of {len(data)} B")

    async def _auth(self) -> dict[str, str]:
        if self.config.endpoint:
            return {}
        return {"Authorization": f"Bearer {await self._api.token.get()}"}

    async def _http(
        self, method: str, url: str, key: str, *, data: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        assert self._session is not None
        try:
            async with self._session.request(
                method,
                url,
                data=data,
                headers={**headers, **await self._auth()},
                timeout=aiohttp.ClientTimeout(
                    sock_connect=min(10.0, self.timeout), sock_read=self.timeout
                ),
            ) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    raise aiohttp.ClientResponseError(
                        resp.request_info, (), status=resp.status, message=body[:200].decode()
                    )
                return resp.status, dict(resp.headers), body
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _classify(exc, key) from exc

    @property
    def _root(self) -> str:
        return (self.config.endpoint or _API_ROOT).rstrip("/")

    def _object_url(self, key: str) -> str:
        name = quote(self.full_key(key), safe="")
        return f"{self._root}/storage/v1/b/{quote(self.bucket, safe='')}/o/{name}"

    async def _put_if(self, key: str, data: bytes, version: str | None) -> str:
        # generation 0 names an object that does not exist
        url = (
            f"{self._root}/upload/storage/v1/b/{quote(self.bucket, safe='')}/o"
            f"?uploadType=media&name={quote(self.full_key(key), safe='')}"
            f"&ifGenerationMatch={version or 0}"
        )
        _, _, body = await self._http(
            "POST", url, key, data=data, headers={"Content-Type": "application/octet-stream"}
        )
        meta = msgspec.json.decode(body)
        reported = meta.get("md5Hash")
        digest = hashlib.md5(data, usedforsecurity=False).digest()
        if reported and base64.b64decode(reported) != digest:
            raise StoreError(StoreErrorKind.INTEGRITY, f"{key}: stored MD5 is not ours")
        return str(meta["generation"])

    async def _get_versioned(self, key: str) -> tuple[bytes, str]:
        url = self._object_url(key)
        for _ in range(8):
            _, _, body = await self._http("GET", url, key, data=b"", headers={})
            generation = str(msgspec.json.decode(body)["generation"])
            try:
                # the bytes of that generation, or 412 when a write came in between
                _, _, data = await self._http(
                    "GET",
                    f"{url}?alt=media&ifGenerationMatch={generation}",
                    key,
                    data=b"",
                    headers={},
                )
            except PreconditionFailedError:
                continue
            return data, generation
        raise StoreError(StoreErrorKind.SERVER, f"{key}: rewritten during every read")

    async def _put_parts(self, key: str, fd: int, size: int) -> int:
        root = self._root
        url = (
            f"{root}/upload/storage/v1/b/{quote(self.bucket, safe='')}/o"
            f"?uploadType=resumable&name={quote(self.full_key(key), safe='')}"
        )
        _, headers, _ = await self._retrying(
            f"start upload {key}",
            lambda: self._http(
                "POST",
                url,
                key,
                data=b"{}",
                headers={
                    "Content-Type": "application/json; charset=UTF-8",
                    "X-Upload-Content-Type": "application/octet-stream",
                    "X-Upload-Content-Length": str(size),
                },
            ),
        )
        session = headers["Location"]
        crc = 0
        meta: dict[str, Any] = {}
        loop = asyncio.get_running_loop()
        try:
            pos = 0
            while pos < size:
                data = await read_part(fd, pos, min(self.part_bytes, size - pos))
                crc = await loop.run_in_executor(None, crc32c.crc32c, data, crc)
                tried = False

                async def attempt(p: int = pos, d: bytes = data) -> int | dict[str, Any]:
                    # a retry first asks the service how much of the chunk it kept
                    nonlocal tried
                    query, tried = tried, True
                    return await self._put_chunk(key, session, p, d, size, query=query)

                sent = await self._retrying(f"chunk at {pos} of {key}", attempt)
                if isinstance(sent, dict):
                    meta = sent
                    break
                pos = sent
        except BaseException:
            # a resumable session that is not finished stores nothing; end it anyway
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._http("DELETE", session, key, data=b"", headers={})
            raise
        reported = meta.get("crc32c")
        if reported is not None and int.from_bytes(base64.b64decode(reported), "big") != crc:
            raise StoreError(StoreErrorKind.INTEGRITY, f"{key}: stored CRC-32C is not ours")
        if int(meta.get("size", -1)) != size:
            raise StoreError(
                StoreErrorKind.INTEGRITY, f"{key}: stored {meta.get('size')} of {size} B"
            )
        return crc

    async def _put_chunk(
        self, key: str, session: str, pos: int, data: bytes, size: int, *, query: bool
    ) -> int | dict[str, Any]:
        """Send ``data`` (at ``pos``), with ``query`` from where the service has the
        upload: the next offset to send, or the object's metadata once complete."""
        have = pos
        if query:
            status, headers, body = await self._http(
                "PUT", session, key, data=b"", headers={"Content-Range": f"bytes */{size}"}
            )
            if status in (200, 201):
                return msgspec.json.decode(body)
            match = _RANGE.fullmatch(headers.get("Range", ""))
            have = int(match.group(1)) + 1 if match else 0
        if have < pos or have > pos + len(data):
            raise StoreError(
                StoreErrorKind.INTEGRITY, f"{key}: the service has {have} B, not {pos}"
            )
        rest = data[have - pos :]
        end = have + len(rest)
        status, headers, body = await self._http(
            "PUT",
            session,
            key,
            data=rest,
            headers={
                "Content-Range": f"bytes {have}-{end - 1}/{size}",
                "Content-Type": "application/octet-stream",
            },
        )
        if status in (200, 201):
            return msgspec.json.decode(body)
        match = _RANGE.fullmatch(headers.get("Range", ""))
        if status != 308 or match is None or int(match.group(1)) + 1 != end:
            raise StoreError(StoreErrorKind.SERVER, f"{key}: chunk at {have} not persisted")
        return end

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
            await self._api.delete(self.bucket, self.full_key(key), timeout=self.timeout)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _classify(exc, key) from exc
