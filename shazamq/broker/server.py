"""The Kafka listener: accepts connections, cuts frames, dispatches by API key.

One task per connection reads a frame (4-byte big-endian size, bounded by
`socket.request.max.bytes` before anything is allocated), decodes the request header,
hands the body to the handler registered for the API key and writes the response. As in
Kafka, a connection's requests are processed one at a time, in order, so responses go out
in request order without any reordering machinery. Anything a peer sends that cannot be
parsed closes that connection only; other clients never notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shazamq.protocol import framing
from shazamq.protocol.errors import DecodeError

if TYPE_CHECKING:
    from shazamq.broker.apis import Dispatcher
    from shazamq.broker.metrics import BrokerMetrics

log = logging.getLogger(__name__)

_SIZE = struct.Struct(">i")
# StreamReader pauses the socket once this much is buffered; large enough that a 1 MiB
# produce request arrives without a pause/resume cycle per 64 KiB.
_READ_LIMIT = 8 * 1024 * 1024


@dataclass
class Session:
    """What the broker knows about one client connection."""

    peer: str
    client_id: str | None = None
    client_software: str | None = None
    principal: str = "User:ANONYMOUS"
    authenticated: bool = True
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RequestContext:
    """A decoded request's header and connection, handed to every API handler."""

    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    session: Session
    received_at: float


class CloseConnection(Exception):
    """Raised by a handler (or the framing) when the connection must be dropped."""


class KafkaServer:
    """The asyncio listener for the Kafka protocol."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        metrics: BrokerMetrics,
        *,
        host: str,
        port: int,
        max_request_bytes: int,
        ssl_context: ssl.SSLContext | None = None,
        on_connect: Callable[[Session], Awaitable[None]] | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.host = host
        self.port = port
        self.max_request_bytes = max_request_bytes
        self.ssl_context = ssl_context
        self.on_connect = on_connect
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def start(self) -> int:
        """Bind and listen; returns the bound port (useful when port 0 was asked for)."""
        self._server = await asyncio.start_server(
            self._on_client,
            self.host,
            self.port,
            limit=_READ_LIMIT,
            ssl=self.ssl_context,
            reuse_address=True,
            backlog=1024,
        )
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        return self.port

    async def stop(self, grace: float = 1.0) -> None:
        """Stop accepting, let in-flight requests finish briefly, then drop connections."""
        if self._server is not None:
            self._server.close()
        if self._connections:
            _, pending = await asyncio.wait(set(self._connections), timeout=grace)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(BaseException):
                    await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=grace)
            self._server = None

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        session = Session(peer=f"{peer[0]}:{peer[1]}" if peer else "?")
        self.metrics.connections_total.inc()
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                import socket

                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if self.on_connect is not None:
                await self.on_connect(session)
            await self._serve(reader, writer, session)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except CloseConnection as exc:
            log.info("closing connection from %s: %s", session.peer, exc)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("connection from %s failed", session.peer)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session: Session
    ) -> None:
        max_bytes = self.max_request_bytes
        dispatch = self.dispatcher.dispatch
        while True:
            try:
                head = await reader.readexactly(4)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    raise CloseConnection("truncated frame size") from None
                return  # clean close between requests
            (size,) = _SIZE.unpack(head)
            if size < 0 or size > max_bytes:
                raise CloseConnection(
                    f"frame of {size} bytes is outside 0..socket.request.max.bytes ({max_bytes})"
                )
            frame = await reader.readexactly(size)
            received = time.monotonic()
            view = memoryview(frame)
            try:
                header, body_offset = framing.decode_request_header(view)
            except DecodeError as exc:
                raise CloseConnection(f"bad request header: {exc}") from None
            if session.client_id is None:
                session.client_id = header.client_id
            ctx = RequestContext(
                api_key=header.request_api_key,
                api_version=header.request_api_version,
                correlation_id=header.correlation_id,
                client_id=header.client_id,
                session=session,
                received_at=received,
            )
            response = await dispatch(ctx, view, body_offset)
            if response is not None:
                writer.write(response)
                if writer.transport.get_write_buffer_size() > _READ_LIMIT:
                    await writer.drain()
