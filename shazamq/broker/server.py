"""The Kafka listener: accepts connections, cuts frames, dispatches by API key.

Each connection is an ``asyncio.BufferedProtocol``: the event loop receives straight into
buffers the connection hands out, so bytes are not copied on their way to a handler.
Small frames arrive many to a read in a scratch buffer and are copied out one by one; a
larger frame gets its own ``bytearray`` of exactly its size (checked against
`socket.request.max.bytes` first) and the rest of it is received directly into it. Frames
over 8 MiB are received in 1 MiB pieces allocated as their bytes arrive and joined once
complete, so a size prefix alone never commits memory. The frame is writable, so the
produce path patches offsets into the record batches in place and writes them to the log
without another copy.

One task per connection decodes the request header, hands the body to the handler
registered for the API key and writes the response. As in Kafka, a connection's requests
are processed one at a time, in order, so responses go out in request order without any
reordering machinery. Reading continues while a request is processed, up to a bounded
amount of queued frames, then pauses until the task catches up. Responses may be a list
of buffers (a Fetch response with its record batches as read from the log), written with
one ``writelines`` call. Anything a peer sends that cannot be parsed closes that
connection only; other clients never notice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shazamq.broker.tasks import cancel_all
from shazamq.protocol import framing
from shazamq.protocol.errors import DecodeError

if TYPE_CHECKING:
    from shazamq.broker.apis import Dispatcher
    from shazamq.broker.metrics import BrokerMetrics

log = logging.getLogger(__name__)

_SIZE = struct.Struct(">i")
_unpack_size = _SIZE.unpack_from
# Receive buffer for small frames; a frame that does not arrive whole in it is received
# into its own buffer instead.
_SCRATCH_BYTES = 64 * 1024
# Frames this small that arrive in pieces wait in the scratch buffer for the rest.
_SMALL_FRAME = 16 * 1024
# Frames larger than this are received in pieces of _PIECE_BYTES, allocated as they fill.
_BIG_FRAME = 8 * 1024 * 1024
_PIECE_BYTES = 1024 * 1024
# Stop reading from a connection while this much is received but not yet processed.
_READ_AHEAD_BYTES = 8 * 1024 * 1024
# Stop processing a connection's requests while this much of its responses is unsent.
_WRITE_HIGH_WATER = 8 * 1024 * 1024


@dataclass
class Session:
    """What the broker knows about one client connection."""

    peer: str
    client_id: str | None = None
    client_software: str | None = None
    principal: str = "User:ANONYMOUS"
    authenticated: bool = True
    # Set by a handler whose answer must be the connection's last (failed authentication).
    close_after_response: bool = False
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
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self),
            self.host,
            self.port,
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
            await cancel_all(list(pending))
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=grace)
            self._server = None


class _Connection(asyncio.BufferedProtocol):
    """One client connection: frames in, responses out, one request at a time."""

    def __init__(self, server: KafkaServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.session = Session(peer="?")
        self.task: asyncio.Task[None] | None = None
        self.max_bytes = server.max_request_bytes
        # scratch buffer: bytes [start, end) are received but not yet cut into frames
        self.scratch = bytearray(_SCRATCH_BYTES)
        self.scratch_view = memoryview(self.scratch)
        self.start = 0
        self.end = 0
        # a large frame being received into its own buffer (or, over _BIG_FRAME, into
        # pieces: `pieces` holds the full ones, `unallocated` counts the bytes to come
        # after the current one)
        self.frame: bytearray | None = None
        self.frame_view: memoryview | None = None
        self.filled = 0
        self.pieces: list[bytearray] | None = None
        self.unallocated = 0
        # complete frames waiting for the task, with their arrival time
        self.frames: collections.deque[tuple[bytearray, float]] = collections.deque()
        self.queued_bytes = 0
        self.reading_paused = False
        self.writing_paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None
        self.eof = False
        self.lost = False
        self.error: str | None = None  # why reading stopped on a protocol error

    # -- transport callbacks -----------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        # uvloop's transports implement asyncio.Transport without deriving from it
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.session.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)
        self.server.metrics.connections_total.inc()
        self.task = asyncio.get_running_loop().create_task(self._run())
        self.server._connections.add(self.task)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.frame_view is not None:
            return self.frame_view[self.filled :]
        return self.scratch_view[self.end :]

    def buffer_updated(self, nbytes: int) -> None:
        if self.error is not None:
            return  # reading has stopped; nothing more is looked at
        frame = self.frame
        if frame is not None:
            self.filled += nbytes
            if self.filled < len(frame):
                return
            self.frame = self.frame_view = None
            pieces = self.pieces
            if pieces is None:
                self._push(frame)
                return
            pieces.append(frame)
            if not self.unallocated:
                self.pieces = None
                self._push(bytearray().join(pieces))
                return
            n = min(self.unallocated, _PIECE_BYTES)
            self.unallocated -= n
            self._receive_into(bytearray(n), 0)
            return
        self.end += nbytes
        self._cut_frames()

    def eof_received(self) -> bool:
        self.eof = True
        if self.frame is not None or self.end > self.start:
            self._fail_read("connection closed inside a frame")
        self._wake()
        # Keep the transport open so responses to queued requests still go out (a TLS
        # transport closes on EOF whatever this returns, and warns if it is True).
        return self.server.ssl_context is None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._wake()
        self._wake_drain()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake_drain()

    # -- framing -------------------------------------------------------------------------

    def _cut_frames(self) -> None:
        buf = self.scratch
        view = self.scratch_view
        start, end = self.start, self.end
        max_bytes = self.max_bytes
        while end - start >= 4:
            (size,) = _unpack_size(buf, start)
            if size < 0 or size > max_bytes:
                self.start = self.end = 0
                self._fail_read(
                    f"frame of {size} bytes is outside 0..socket.request.max.bytes ({max_bytes})"
                )
                return
            have = end - start - 4
            if have >= size:
                self._push(bytearray(view[start + 4 : start + 4 + size]))
                start += 4 + size
                continue
            if size > _SMALL_FRAME or size + 4 > len(buf):
                # Give the frame its own buffer; the rest is received straight into it.
                if size > _BIG_FRAME:
                    first = bytearray(_PIECE_BYTES)
                    self.pieces = []
                    self.unallocated = size - _PIECE_BYTES
                else:
                    first = bytearray(size)
                first[:have] = view[start + 4 : end]
                self._receive_into(first, have)
                start = end = 0
            break
        if start == end:
            start = end = 0
        elif start and len(buf) - end < _SMALL_FRAME + 4:
            # Move the partial frame to the front so the rest of it fits behind it.
            n = end - start
            buf[:n] = bytes(view[start:end])
            start, end = 0, n
        self.start, self.end = start, end

    def _receive_into(self, buffer: bytearray, filled: int) -> None:
        self.frame = buffer
        self.frame_view = memoryview(buffer)
        self.filled = filled

    def _push(self, frame: bytearray) -> None:
        self.frames.append((frame, time.monotonic()))
        self.queued_bytes += len(frame)
        if self.queued_bytes > _READ_AHEAD_BYTES and not self.reading_paused:
            self.reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        self._wake()

    def _fail_read(self, reason: str) -> None:
        if self.error is None:
            self.error = reason
        self.frame = self.frame_view = None
        self.pieces = None
        if self.transport is not None and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _wake_drain(self) -> None:
        waiter = self.drain_waiter
        if waiter is not None:
            self.drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- the request loop ----------------------------------------------------------------

    async def _next_frame(self) -> tuple[bytearray, float] | None:
        """The next complete frame; None once the peer is gone or sent garbage."""
        while not self.frames:
            if self.error is not None or self.eof or self.lost:
                return None
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        frame, received = self.frames.popleft()
        self.queued_bytes -= len(frame)
        if self.reading_paused and self.error is None and self.queued_bytes <= _READ_AHEAD_BYTES:
            self.reading_paused = False
            assert self.transport is not None
            self.transport.resume_reading()
        return frame, received

    async def _drain(self) -> None:
        while self.writing_paused and not self.lost:
            self.drain_waiter = asyncio.get_running_loop().create_future()
            await self.drain_waiter

    async def _run(self) -> None:
        server = self.server
        session = self.session
        transport = self.transport
        assert transport is not None
        try:
            if server.on_connect is not None:
                await server.on_connect(session)
            await self._serve(transport, session)
        except ConnectionError:
            pass
        except CloseConnection as exc:
            log.info("closing connection from %s: %s", session.peer, exc)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("connection from %s failed", session.peer)
        finally:
            server._connections.discard(asyncio.current_task())  # type: ignore[arg-type]
            transport.close()

    async def _serve(self, transport: asyncio.Transport, session: Session) -> None:
        dispatch = self.server.dispatcher.dispatch
        while True:
            item = await self._next_frame()
            if item is None:
                if self.error is not None and not self.lost:
                    raise CloseConnection(self.error)
                return
            frame, received = item
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
            if response is None or self.lost or transport.is_closing():
                continue
            if response.__class__ is list:
                transport.writelines(response)
            else:
                transport.write(response)
            if session.close_after_response:
                # transport.close() still sends what is buffered, then closes.
                raise CloseConnection("the last answer of this connection was sent")
            if self.writing_paused:
                await self._drain()
