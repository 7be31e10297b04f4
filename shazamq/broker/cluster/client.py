"""The client side of the Kafka protocol, for brokers talking to other brokers.

A follower fetches from its partition leader, asks it for epoch end offsets, and the
controller side sends reassignments, all as ordinary Kafka requests. ``BrokerClient`` is
one connection to one broker; ``ClientPool`` keeps one client per node id.

Requests are pipelined: each gets a correlation id and a future, its frame is written at
once, and one reader task per connection cuts the 4-byte-length-prefixed response frames
off the stream and resolves the future with that correlation id. A response whose id is
not outstanding means client and broker no longer agree on where frames start, so the
connection is closed and every request on it fails with ``BrokerConnectionError``.

A request whose caller stops waiting (cancelled, or its timeout expired) keeps its slot
until the broker answers, and the answer is dropped: removing it early would make that
answer look like an unknown correlation id and tear the connection down for everybody.
Kafka brokers answer a connection's requests in order, so a request that times out
delays those sent after it; a caller that thinks the peer is gone should close the
client (or ``ClientPool.invalidate`` it) rather than keep waiting on the same connection.

Each frame is read into a fresh, immutable ``bytes`` object. The decoder returns the
``records`` of a Fetch response as ``memoryview`` slices of the frame, which keep that
object alive, and nothing ever writes into it, so callers may keep the record batches
for as long as they like without copying them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from shazamq.broker.security.sasl import AuthenticationError
from shazamq.broker.security.sasl_client import SaslClient
from shazamq.protocol.errors import ErrorCode, KafkaError, UnsupportedVersionError
from shazamq.protocol.framing import API_VERSIONS_KEY, decode_response, encode_request
from shazamq.protocol.messages import API_KEYS
from shazamq.protocol.messages.api_versions_request import ApiVersionsRequest
from shazamq.protocol.messages.sasl_authenticate_request import SaslAuthenticateRequest
from shazamq.protocol.messages.sasl_handshake_request import SaslHandshakeRequest

__all__ = ["MAX_FRAME_BYTES", "BrokerClient", "BrokerConnectionError", "ClientPool"]

log = logging.getLogger(__name__)

# Larger than any response a broker sends on purpose (fetch sizes are capped well below),
# small enough that a corrupt length prefix cannot make us allocate gigabytes.
MAX_FRAME_BYTES = 128 * 1024 * 1024
# StreamReader's limit also sets when it pauses the socket (twice this much buffered);
# a larger one means fewer pause/resume round trips while a big Fetch response arrives.
_READ_LIMIT = 1024 * 1024
# How long close() waits for a TLS shutdown before giving up on it.
_CLOSE_GRACE = 1.0
_INT32_MAX = 0x7FFFFFFF
_I32 = struct.Struct(">i")
_I16 = struct.Struct(">h")
_PRODUCE_KEY = 0
_SASL_HANDSHAKE_KEY = 17
_SASL_AUTHENTICATE_KEY = 36


@dataclass(frozen=True, repr=False)
class SaslLogin:
    """Who a broker authenticates as to its peers' listeners (never printed)."""

    mechanism: str
    user: str
    password: str


try:
    _SOFTWARE_VERSION = metadata.version("shazamq")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    _SOFTWARE_VERSION = "0"


class BrokerConnectionError(Exception):
    """The broker could not be reached, the connection broke, or a request timed out.

    The message starts with the broker's ``host:port``. Retrying on a new connection is
    the usual answer.
    """


def _api_name(api_key: int) -> str:
    info = API_KEYS.get(api_key)
    return info.name if info is not None else f"api key {api_key}"


class _StreamError(Exception):
    """The byte stream cannot be trusted any more; the connection must go."""


class _Pending:
    __slots__ = ("api_key", "future", "version")

    def __init__(self, api_key: int, version: int, future: asyncio.Future[Any]) -> None:
        self.api_key = api_key
        self.version = version
        self.future = future


class _Connection:
    """One stream and the requests outstanding on it; never reused once it has failed."""

    def __init__(
        self,
        name: str,
        client_id: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.name = name
        self.client_id = client_id
        self.reader = reader
        self.writer = writer
        self.pending: dict[int, _Pending] = {}
        self.failure: str | None = None
        self.next_id = 0
        self.task = asyncio.get_running_loop().create_task(
            self._read_loop(), name=f"broker-client-reader {name}"
        )

    def error(self) -> BrokerConnectionError:
        # A fresh instance per raise: one exception object raised in several tasks would
        # have its traceback overwritten by each of them.
        return BrokerConnectionError(f"{self.name}: {self.failure}")

    def _correlation_id(self) -> int:
        while True:
            cid = self.next_id
            self.next_id = 0 if cid == _INT32_MAX else cid + 1
            # Only a wrap-around after two billion requests can meet a live id.
            if cid not in self.pending:
                return cid

    async def send(self, api_key: int, version: int, message: Any, expect_response: bool) -> Any:
        if self.failure is not None:
            raise self.error()
        cid = self._correlation_id()
        # Encoding first: a message that cannot be encoded leaves no trace on the stream.
        frame = encode_request(message, version, cid, self.client_id)
        if not expect_response:
            self.writer.write(frame)
            await self._drain()
            if self.failure is not None:
                raise self.error()
            return None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[cid] = _Pending(api_key, version, future)
        try:
            # write() queues the whole frame synchronously, so frames of concurrent
            # requests never interleave, whatever happens to this coroutine afterwards.
            self.writer.write(frame)
            await self._drain()
            # A failed drain has already failed the future along with the others.
            return await future
        finally:
            # Cancelled before awaiting the future (during drain): mark it abandoned, so
            # a later connection failure does not leave an exception nobody retrieves.
            if not future.done():
                future.cancel()

    async def _drain(self) -> None:
        try:
            await self.writer.drain()
        except Exception as exc:  # ConnectionResetError, SSL errors, closed transport
            self.fail(f"connection lost while sending: {exc!r}")

    async def _read_loop(self) -> None:
        reader = self.reader
        try:
            while True:
                head = await reader.readexactly(4)
                (size,) = _I32.unpack(head)
                if size < 4 or size > MAX_FRAME_BYTES:
                    raise _StreamError(
                        f"response frame of {size} bytes is outside 4..{MAX_FRAME_BYTES}"
                    )
                self._dispatch(await reader.readexactly(size))
        except asyncio.CancelledError:
            self.fail("connection closed by this client", expected=True)
            raise
        except asyncio.IncompleteReadError:
            self.fail("connection closed by the broker")
        except _StreamError as exc:
            self.fail(str(exc))
        except OSError as exc:
            self.fail(f"connection lost: {exc!r}")
        except Exception as exc:
            log.exception("%s: reader failed", self.name)
            self.fail(f"reader failed: {exc!r}")

    def _dispatch(self, frame: bytes) -> None:
        # Every response header version starts with the correlation id.
        (cid,) = _I32.unpack_from(frame, 0)
        entry = self.pending.pop(cid, None)
        if entry is None:
            raise _StreamError(f"response with unknown correlation id {cid}")
        future = entry.future
        if future.done():
            return  # its caller gave up waiting
        try:
            _, body = decode_response(entry.api_key, _response_version(entry, frame), frame)
        except Exception as exc:
            # The frame boundary is still known, so only this request is lost.
            future.set_exception(exc)
        else:
            future.set_result(body)

    def fail(self, reason: str, *, expected: bool = False) -> None:
        """Close the stream and fail every outstanding request; the first reason wins."""
        if self.failure is not None:
            return
        self.failure = reason
        log.log(logging.DEBUG if expected else logging.INFO, "%s: %s", self.name, reason)
        pending, self.pending = self.pending, {}
        for entry in pending.values():
            if not entry.future.done():
                entry.future.set_exception(self.error())
        self.writer.close()

    async def close(self) -> None:
        self.fail("connection closed by this client", expected=True)
        if self.task is not asyncio.current_task():
            self.task.cancel()
            # wait() rather than awaiting the task: its CancelledError must not be
            # mistaken for (or hide) a cancellation of whoever called close().
            await asyncio.wait([self.task])
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_GRACE):
                await self.writer.wait_closed()


def _response_version(entry: _Pending, frame: bytes) -> int:
    """The version to decode a response with.

    A broker that does not know the ApiVersions version it was asked for answers in
    ApiVersions v0 with UNSUPPORTED_VERSION (the header is v0 for every ApiVersions
    version, so the error code sits right after the correlation id).
    """
    if (
        entry.api_key == API_VERSIONS_KEY
        and entry.version > 0
        and len(frame) >= 6
        and _I16.unpack_from(frame, 4)[0] == ErrorCode.UNSUPPORTED_VERSION
    ):
        return 0
    return entry.version


class BrokerClient:
    """One connection to one broker, pipelined: many requests in flight, matched by correlation id.

    The connection is opened by ``connect()`` or by the first request, and opened again by
    the next request after it broke; ``close()`` is final.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str = "shazamq-broker",
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 5.0,
        sasl: SaslLogin | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self.ssl_context = ssl_context
        self.sasl = sasl
        self.connect_timeout = connect_timeout
        self.name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._conn: _Connection | None = None
        self._connect_lock = asyncio.Lock()
        self._closed = False
        self._versions: dict[int, tuple[int, int]] | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else "connected" if self.connected else "idle"
        return f"<BrokerClient {self.name} {state}>"

    @property
    def connected(self) -> bool:
        conn = self._conn
        return not self._closed and conn is not None and conn.failure is None

    @property
    def versions(self) -> dict[int, tuple[int, int]] | None:
        """What the last ``api_versions()`` returned, or None before it was called."""
        return self._versions

    async def connect(self) -> None:
        """Open the connection unless it is open; concurrent callers share one attempt."""
        if self.connected:
            return
        async with self._connect_lock:
            if self._closed:
                raise BrokerConnectionError(f"{self.name}: client is closed")
            if self.connected:
                return
            try:
                async with asyncio.timeout(self.connect_timeout):
                    reader, writer = await asyncio.open_connection(
                        self.host, self.port, ssl=self.ssl_context, limit=_READ_LIMIT
                    )
            except TimeoutError:
                raise BrokerConnectionError(
                    f"{self.name}: not connected after {self.connect_timeout}s"
                ) from None
            except OSError as exc:  # refused, unreachable, DNS, TLS handshake
                raise BrokerConnectionError(f"{self.name}: cannot connect: {exc}") from exc
            if self._closed:  # close() ran while we were connecting
                writer.close()
                raise BrokerConnectionError(f"{self.name}: client is closed")
            sock = writer.get_extra_info("socket")
            if sock is not None:
                # Small requests (OffsetForLeaderEpoch, fetches with no data) must not wait
                # for Nagle's algorithm.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self.name, self.client_id, reader, writer)
            if self.sasl is not None:
                try:
                    async with asyncio.timeout(self.connect_timeout):
                        await self._authenticate(conn, self.sasl)
                except BaseException as exc:
                    writer.close()
                    if isinstance(exc, TimeoutError):
                        raise BrokerConnectionError(
                            f"{self.name}: SASL authentication timed out"
                        ) from None
                    raise
            self._conn = conn

    async def _authenticate(self, conn: _Connection, login: SaslLogin) -> None:
        """SaslHandshake then SaslAuthenticate rounds, before anything else is sent."""
        hs = await conn.send(
            _SASL_HANDSHAKE_KEY, 1, SaslHandshakeRequest(mechanism=login.mechanism), True
        )
        if hs.error_code:
            raise BrokerConnectionError(
                f"{self.name}: SASL mechanism {login.mechanism} refused "
                f"(error {hs.error_code}; the broker offers {hs.mechanisms})"
            )
        client = SaslClient(login.mechanism, login.user, login.password)
        # PBKDF2 of the password is deliberately slow: keep it off the event loop
        loop = asyncio.get_running_loop()
        token: bytes | None = client.first()
        while token is not None:
            resp = await conn.send(
                _SASL_AUTHENTICATE_KEY, 2, SaslAuthenticateRequest(auth_bytes=token), True
            )
            if resp.error_code:
                raise BrokerConnectionError(
                    f"{self.name}: SASL authentication failed: {resp.error_message}"
                )
            try:
                token = await loop.run_in_executor(None, client.step, bytes(resp.auth_bytes))
            except AuthenticationError as exc:
                raise BrokerConnectionError(f"{self.name}: {exc}") from None

    async def request(
        self, api_key: int, version: int, message: Any, *, timeout: float = 30.0
    ) -> Any:
        """Send ``message`` as ``version`` of ``api_key`` and return the decoded response.

        Raises ``BrokerConnectionError`` if the connection cannot be opened (within
        ``connect_timeout``), breaks before the answer arrives, or no answer arrives within
        ``timeout`` seconds of sending;
        ``UnsupportedVersionError``/``ValueError`` if the message cannot be encoded in that
        version (nothing is sent then); ``DecodeError`` if the answer is malformed.
        Produce with ``acks=0`` gets no answer from a broker: it returns None once sent.
        """
        if getattr(message, "API_KEY", None) != api_key:
            raise ValueError(f"{type(message).__name__} is not a {_api_name(api_key)} request")
        conn = self._conn
        if conn is None or conn.failure is not None or self._closed:
            await self.connect()
            conn = self._conn
            assert conn is not None
        expect_response = not (api_key == _PRODUCE_KEY and getattr(message, "acks", -1) == 0)
        try:
            async with asyncio.timeout(timeout):
                return await conn.send(api_key, version, message, expect_response)
        except TimeoutError:
            raise BrokerConnectionError(
                f"{self.name}: no answer to {_api_name(api_key)} v{version} within {timeout}s"
            ) from None

    async def api_versions(self) -> dict[int, tuple[int, int]]:
        """Ask the broker which versions of which APIs it supports: api key -> (min, max)."""
        ours = API_KEYS[API_VERSIONS_KEY].max_version
        resp = await self.request(API_VERSIONS_KEY, ours, _api_versions_request(ours))
        if resp.error_code == ErrorCode.UNSUPPORTED_VERSION:
            # The answer lists the ApiVersions versions the broker does speak.
            theirs = {k.api_key: k.max_version for k in resp.api_keys}.get(API_VERSIONS_KEY, 0)
            version = min(theirs, ours)
            if version >= ours:
                raise UnsupportedVersionError(
                    f"{self.name} rejects ApiVersions v{ours} yet claims to support it"
                )
            resp = await self.request(API_VERSIONS_KEY, version, _api_versions_request(version))
        if resp.error_code != ErrorCode.NONE:
            raise KafkaError(resp.error_code, f"ApiVersions from {self.name}")
        self._versions = {k.api_key: (k.min_version, k.max_version) for k in resp.api_keys}
        return dict(self._versions)

    def best_version(self, api_key: int, wanted_max: int) -> int:
        """The highest version of ``api_key`` both sides support, at most ``wanted_max``.

        Needs ``api_versions()`` first (RuntimeError otherwise); raises
        ``UnsupportedVersionError`` when there is no common version.
        """
        if self._versions is None:
            raise RuntimeError(f"{self.name}: call api_versions() before best_version()")
        info = API_KEYS.get(api_key)
        theirs = self._versions.get(api_key)
        if info is None or theirs is None:
            raise UnsupportedVersionError(
                f"{_api_name(api_key)} is not supported by "
                f"{'this client' if info is None else self.name}"
            )
        low = max(theirs[0], info.min_version)
        high = min(theirs[1], info.max_version, wanted_max)
        if high < low:
            raise UnsupportedVersionError(
                f"no common version of {info.name}: {self.name} supports "
                f"{theirs[0]}-{theirs[1]}, this client {info.min_version}-"
                f"{min(info.max_version, wanted_max)}"
            )
        return high

    def _close_now(self) -> None:
        """The synchronous part of ``close()``: refuse new requests, fail outstanding ones."""
        self._closed = True
        if self._conn is not None:
            self._conn.fail("connection closed by this client", expected=True)

    async def close(self) -> None:
        self._close_now()
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


def _api_versions_request(version: int) -> ApiVersionsRequest:
    if version < 3:
        return ApiVersionsRequest()
    return ApiVersionsRequest(
        client_software_name="shazamq-broker", client_software_version=_SOFTWARE_VERSION
    )


def _retrieve(task: asyncio.Task[Any]) -> None:
    # Every caller may have stopped waiting; keep asyncio from logging the failure.
    if not task.cancelled():
        task.exception()


class ClientPool:
    """One BrokerClient per node id, created on demand from an address lookup.

    ``get`` hands out connected clients whose ``api_versions()`` has been answered, so
    ``best_version`` works on them right away. A client is replaced when its connection
    broke or the node's address changed; ``invalidate`` drops one explicitly.
    """

    def __init__(
        self, resolve: Callable[[int], tuple[str, int] | None], **client_kwargs: Any
    ) -> None:
        self._resolve = resolve
        self._client_kwargs = client_kwargs
        self._clients: dict[int, BrokerClient] = {}
        self._opening: dict[int, tuple[tuple[str, int], asyncio.Task[BrokerClient]]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    async def get(self, node_id: int) -> BrokerClient:
        """The client of ``node_id``, connecting if needed.

        Raises ``BrokerConnectionError`` if the node has no known address or cannot be
        reached. Concurrent callers for the same node share one connection attempt.
        """
        if self._closed:
            raise BrokerConnectionError(f"node {node_id}: the client pool is closed")
        address = self._resolve(node_id)
        if address is None:
            raise BrokerConnectionError(f"node {node_id}: no known address")
        address = (address[0], int(address[1]))
        client = self._clients.get(node_id)
        if client is not None:
            if client.connected and (client.host, client.port) == address:
                return client
            self.invalidate(node_id)
        opening = self._opening.get(node_id)
        if opening is None or opening[0] != address:
            task = asyncio.get_running_loop().create_task(
                self._open(node_id, address), name=f"broker-client-open node {node_id}"
            )
            task.add_done_callback(_retrieve)
            self._opening[node_id] = (address, task)
        else:
            task = opening[1]
        try:
            # Shielded: one caller giving up must not cancel the attempt the others share.
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                # The attempt was cancelled by close(), not this caller.
                raise BrokerConnectionError(f"node {node_id}: the client pool is closed") from None
            raise

    async def _open(self, node_id: int, address: tuple[str, int]) -> BrokerClient:
        client = BrokerClient(address[0], address[1], **self._client_kwargs)
        try:
            await client.connect()
            await client.api_versions()
        except BaseException:
            self._forget_opening(node_id)
            await client.close()
            raise
        if not self._forget_opening(node_id) or self._closed:
            # Superseded by an attempt at a newer address, or the pool closed meanwhile.
            await client.close()
            raise BrokerConnectionError(f"node {node_id}: connection attempt superseded")
        self._clients[node_id] = client
        return client

    def _forget_opening(self, node_id: int) -> bool:
        """Remove the running task's entry; False if another attempt replaced it."""
        opening = self._opening.get(node_id)
        if opening is not None and opening[1] is asyncio.current_task():
            del self._opening[node_id]
            return True
        return False

    def invalidate(self, node_id: int) -> None:
        """Drop the node's client; its requests fail now, its socket closes in the background."""
        client = self._clients.pop(node_id, None)
        if client is None:
            return
        client._close_now()
        task = asyncio.get_running_loop().create_task(client.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        self._closed = True
        clients = list(self._clients.values())
        self._clients.clear()
        opening = [task for _, task in self._opening.values()]
        self._opening.clear()
        for task in opening:
            task.cancel()
        await asyncio.gather(
            *(client.close() for client in clients),
            *opening,
            *list(self._closing),
            return_exceptions=True,
        )
