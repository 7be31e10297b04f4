"""The object store the remote tier writes to: a small async interface.

Two implementations live beside it (:mod:`.s3`, :mod:`.gcs`); everything else in the tier
sees only :class:`ObjectStore`. Errors are classified once, here: an operation that fails
with a transient error (5xx, throttling, timeouts, dropped connections) is retried with
capped exponential backoff and full jitter; anything else (not found, access denied, a
missing bucket) raises at once.

Files larger than one part (``part_bytes``, ``tiered_storage.upload_part_size_bytes``) are
stored part by part, each read from the file in the executor when it is sent, so an
upload holds one part in memory whatever the segment's size: S3 multipart uploads, GCS
chunked resumable uploads. Every part is
verified as it lands and retried on its own; an upload that fails is aborted.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import crc32c

__all__ = [
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectStore",
    "PreconditionFailedError",
    "RetryPolicy",
    "StoreError",
    "StoreErrorKind",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

# the default part of a multipart (S3) or chunked resumable (GCS) upload: at least S3's
# 5 MiB minimum, a multiple of GCS's 256 KiB chunk unit (the setting is checked for both)
PART_BYTES = 8 << 20
MIN_PART_BYTES = 5 << 20


class StoreErrorKind(enum.Enum):
    """Why a store operation failed; also the label of the error metric."""

    NOT_FOUND = "not_found"
    THROTTLED = "throttled"
    SERVER = "server"  # 5xx
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    INTEGRITY = "integrity"  # the store kept something other than what was sent
    CLIENT = "client"  # 4xx other than throttling: permissions, missing bucket, bad request
    # a conditional write found another version than the one it was made against
    PRECONDITION = "precondition"

    @property
    def transient(self) -> bool:
        return self in _TRANSIENT


_TRANSIENT = {
    StoreErrorKind.THROTTLED,
    StoreErrorKind.SERVER,
    StoreErrorKind.TIMEOUT,
    StoreErrorKind.CONNECTION,
    StoreErrorKind.INTEGRITY,
}


# answers a caller asks for, not failures of the store
_EXPECTED = {StoreErrorKind.NOT_FOUND, StoreErrorKind.PRECONDITION}


class StoreError(Exception):
    """An object store operation failed; ``kind`` says how."""

    def __init__(self, kind: StoreErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class ObjectNotFoundError(StoreError):
    def __init__(self, key: str) -> None:
        super().__init__(StoreErrorKind.NOT_FOUND, f"object {key!r} does not exist")
        self.key = key


class PreconditionFailedError(StoreError):
    """A conditional write lost: the object is not (or no longer) the version it named."""

    def __init__(self, key: str) -> None:
        super().__init__(StoreErrorKind.PRECONDITION, f"{key}: changed by another writer")
        self.key = key


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str  # without the store's prefix
    size: int


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 8
    base_delay: float = 0.1
    max_delay: float = 10.0

    def delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, base * 2**attempt)]."""
        return random.uniform(0, min(self.max_delay, self.base_delay * (2**attempt)))


class ObjectStore(abc.ABC):
    """Keys are relative to the configured prefix; implementations add it.

    Subclasses implement the ``_``-methods, each one attempt that raises
    :class:`StoreError`; the public methods retry transient failures.
    """

    def __init__(
        self,
        prefix: str,
        *,
        retry: RetryPolicy | None = None,
        on_error: Callable[[StoreErrorKind], None] | None = None,
    ) -> None:
        prefix = prefix.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        self.retry = retry or RetryPolicy()
        self._on_error = on_error
        self.part_bytes = PART_BYTES
        # whether the server honours conditional writes: None until probed
        self.conditional: bool | None = None
        # when the store last answered (an expected "not found" counts) and when an
        # attempt last failed otherwise (monotonic; 0 = never): the bucket counts as
        # unreachable from its first failed attempt, not only once retries ran out
        self.last_answer = 0.0
        self.last_failure = 0.0
        self._probing = asyncio.Lock()

    def full_key(self, key: str) -> str:
        return self.prefix + key

    # -- the interface ---------------------------------------------------------------

    async def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``; returns once the store has verified it (MD5/CRC)."""
        await self._retrying(f"put {key}", lambda: self._put(key, data))

    async def put_file(self, key: str, fd: int, size: int) -> int:
        """Store the first ``size`` bytes of the open file ``fd`` under ``key``; returns
        their CRC-32C. Up to one part it is one verified put; larger files go part by
        part (multipart or resumable), read as they are sent, each part verified and
        retried, the upload aborted if it cannot finish. The caller keeps ``fd`` open
        and unchanged until this returns."""
        if size <= self.part_bytes:
            data = await read_part(fd, 0, size)
            await self.put(key, data)
            return await asyncio.get_running_loop().run_in_executor(None, crc32c.crc32c, data)
        return await self._put_parts(key, fd, size)

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of the object (to its end when ``end`` is None)."""
        if start < 0 or (end is not None and end <= start):
            raise ValueError(f"bad byte range [{start}, {end}) of {key}")
        return await self._retrying(f"get {key}", lambda: self._get(key, start, end))

    async def head(self, key: str) -> ObjectInfo | None:
        """Size of the object, or None when it does not exist."""
        try:
            return await self._retrying(f"head {key}", lambda: self._head(key))
        except ObjectNotFoundError:
            return None

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix``, sorted by key."""
        found = await self._retrying(f"list {prefix}", lambda: self._list(prefix))
        return sorted(found, key=lambda o: o.key)

    async def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""
        with contextlib.suppress(ObjectNotFoundError):
            await self._retrying(f"delete {key}", lambda: self._delete(key))

    async def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The object and its version (an S3 ETag, a GCS generation), or None when it
        does not exist. The bytes are never newer than the version: a write made against
        it fails if the object changed since."""
        try:
            return await self._retrying(f"get {key}", lambda: self._get_versioned(key))
        except ObjectNotFoundError:
            return None

    async def put_if(self, key: str, data: bytes, version: str | None) -> str:
        """Store ``data`` only if the object is still at ``version`` (with None: only if
        it does not exist); its new version. Raises :class:`PreconditionFailedError`
        otherwise, also when a retry finds the object an attempt before it already wrote
        (the caller reads the object to tell)."""
        return await self._retrying(f"put {key}", lambda: self._put_if(key, data, version))

    async def probe_conditional(self, key: str) -> bool:
        """Find out once whether the server honours conditional writes, by writing the
        scratch object ``key``: created only if absent, refused when created again,
        replaced against its version, refused against the version it replaced. A
        transient failure raises (asked again later); a server that ignores or rejects
        the conditions answers False."""
        async with self._probing:
            if self.conditional is None:
                self.conditional = await self._probe(key)
            return self.conditional

    async def _probe(self, key: str) -> bool:
        try:
            await self.delete(key)
            first = await self.put_if(key, b"1", None)
            if not await _refused(self.put_if(key, b"2", None)):
                return False
            await self.put_if(key, b"3", first)
            return await _refused(self.put_if(key, b"4", first))
        except StoreError as exc:
            if exc.kind.transient:
                raise
            log.debug("conditional write probe: %s", exc)
            return False
        finally:
            with contextlib.suppress(StoreError):
                await self.delete(key)

    async def answers(self, key: str) -> bool:
        """Whether the store answers now: one attempt (no retries) to read the size of
        ``key``; a missing object is an answer, and so is a refusal that retrying would
        not change (permissions: the requests that follow say so). Cheap enough to ask
        again and again while the bucket is away."""
        try:
            await self._retrying(f"head {key}", lambda: self._head(key), attempts=1)
        except StoreError as exc:
            return not exc.kind.transient
        return True

    async def close(self) -> None:
        return None

    # -- for implementations ---------------------------------------------------------

    @abc.abstractmethod
    async def _put(self, key: str, data: bytes) -> None: ...

    @abc.abstractmethod
    async def _put_parts(self, key: str, fd: int, size: int) -> int:
        """A file of more than one part, part by part; its CRC-32C. Retries each part
        itself (through :meth:`_retrying`) and aborts the upload when it fails."""

    @abc.abstractmethod
    async def _get(self, key: str, start: int, end: int | None) -> bytes: ...

    async def _get_versioned(self, key: str) -> tuple[bytes, str]:
        raise StoreError(StoreErrorKind.CLIENT, f"{key}: no versioned reads in this store")

    async def _put_if(self, key: str, data: bytes, version: str | None) -> str:
        raise StoreError(StoreErrorKind.CLIENT, f"{key}: no conditional writes in this store")

    @abc.abstractmethod
    async def _head(self, key: str) -> ObjectInfo: ...

    @abc.abstractmethod
    async def _list(self, prefix: str) -> list[ObjectInfo]: ...

    @abc.abstractmethod
    async def _delete(self, key: str) -> None: ...

    async def _retrying(
        self, what: str, op: Callable[[], Awaitable[T]], attempts: int | None = None
    ) -> T:
        policy = self.retry
        attempts = policy.attempts if attempts is None else attempts
        attempt = 0
        while True:
            try:
                result = await op()
            except StoreError as exc:
                if exc.kind in _EXPECTED:
                    self.last_answer = time.monotonic()
                else:
                    self.last_failure = time.monotonic()
                    if self._on_error is not None:
                        self._on_error(exc.kind)
                attempt += 1
                if not exc.kind.transient or attempt >= attempts:
                    raise
                delay = policy.delay(attempt)
                log.debug("%s failed (%s), retry %d in %.2fs", what, exc, attempt, delay)
                await asyncio.sleep(delay)
            else:
                self.last_answer = time.monotonic()
                return result

    @property
    def answering(self) -> bool:
        """False from a failed attempt until the store next answers."""
        return self.last_failure <= self.last_answer


async def _refused(write: Awaitable[str]) -> bool:
    try:
        await write
    except PreconditionFailedError:
        return True
    return False


async def read_part(fd: int, pos: int, n: int) -> bytes:
    """``n`` bytes of ``fd`` at ``pos``, read in the executor; a short file is an error."""
    data = await asyncio.get_running_loop().run_in_executor(None, os.pread, fd, n, pos)
    if len(data) != n:
        raise StoreError(StoreErrorKind.INTEGRITY, f"the file ended at {pos + len(data)}")
    return data
