"""The Kafka listener: accepts connections, cuts frames, dispatches by API key.

Each connection is an ``asyncio.BufferedProtocol``: the event loop receives straight into
buffers the connection hands out, so bytes are not copied on their way to a handler.
Small frames arrive many to a read in a scratch buffer and are copied out one by one; a
larger frame (its size checked first against `socket.request.max.bytes`, or against the
much smaller `sasl.server.max.receive.size` until the connection has authenticated) is
received into pieces allocated as its bytes arrive, each as large as what already came
(so at most twice what was received is ever allocated), and joined once complete: a size
prefix alone never commits memory. The frame is writable, so the produce path patches
offsets into the record batches in place and writes them to the log without another copy.

Limits (`ConnectionLimits`): connections in total and per address (over the cap a new one
is closed at once), idle connections closed after `connections.max.idle.ms`,
unauthenticated ones after the SASL timeout, and one budget for every connection's
requests (reserved at their announced size when they start arriving, released once
answered) and unsent responses, as Kafka's `queued.max.request.bytes`: a connection that
would start a frame while the broker is over it stops reading until memory is released.

One task per connection decodes the request header, hands the body to the handler
registered for the API key and writes the response. As in Kafka, a connection's requests
are processed one at a time, in order, so responses go out in request order without any
reordering machinery. Reading continues while a request is processed, up to a bounded
amount of queued frames, then pauses until the task catches up. Responses may be a list
of buffers (a Fetch response with its record batches as read from the log), written with
one ``writelines`` call. A response over a client quota carries its throttle time and is
sent at once; then the connection is muted (not read, nothing processed) for that time.
Anything a peer sends that cannot be parsed closes that connection only; other clients
never notice.
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
# into its own buffer instead. Unauthenticated connections start with a small one.
_SCRATCH_BYTES = 64 * 1024
_SMALL_SCRATCH_BYTES = 4 * 1024
# Frames this small that arrive in pieces wait in the scratch buffer for the rest.
_SMALL_FRAME = 16 * 1024
# A larger frame is received into pieces: the first of _FIRST_PIECE (or what is already
# in hand), each next one as large as all before it, at most _MAX_PIECE.
_FIRST_PIECE = 16 * 1024
_MAX_PIECE = 4 * 1024 * 1024
# Stop reading from a connection while this much is received but not yet processed.
_READ_AHEAD_BYTES = 8 * 1024 * 1024
# Stop processing a connection's requests while this much of its responses is unsent.
_WRITE_HIGH_WATER = 8 * 1024 * 1024


# Session.attrs key: callables run once the connection is gone
ON_CLOSE = "on_close"


@dataclass
class Session:
    """What the broker knows about one client connection."""

    peer: str
    client_id: str | None = None
    client_software: str | None = None
    principal: str = "User:ANONYMOUS"
    authenticated: bool = True
    # monotonic time the SASL session expires (connections.max.reauth.ms); 0: never. Past
    # it, only SASL requests are served (re-authentication); anything else closes.
    expires_at: float = 0.0
    # after SaslHandshake v0: takes each frame as a raw SASL token, answers a raw token
    raw_tokens: Callable[[bytes], Awaitable[bytes]] | None = None
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
    # set by the quota manager: the response's throttle time, for which the connection
    # is then muted (KIP-219)
    throttle_ms: int = 0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one listener allows its connections (0 means no limit where noted)."""

    # frame bound before authentication (sasl.server.max.receive.size)
    max_unauthenticated_bytes: int = 512 * 1024
    # close a connection with no traffic and nothing in process for this long; 0: never
    idle_ms: int = 600_000
    # close a connection still unauthenticated this long after it was accepted
    authentication_timeout_ms: int = 30_000
    max_connections: int = 0  # 0: no cap
    max_connections_per_ip: int = 0  # 0: no cap
    # requests in flight plus unsent responses, all connections together; 0: no bound
    max_inflight_bytes: int = 0


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
        require_authentication: bool = False,
        limits: ConnectionLimits | None = None,
        certificate_principal: Callable[[dict[str, Any]], str | None] | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.host = host
        self.port = port
        self.max_request_bytes = max_request_bytes
        self.ssl_context = ssl_context
        self.on_connect = on_connect
        self.require_authentication = require_authentication
        self.limits = limits or ConnectionLimits()
        # mTLS: the principal of a verified client certificate; None closes the connection
        self.certificate_principal = certificate_principal
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._open: set[_Connection] = set()
        self._per_ip: collections.Counter[str] = collections.Counter()
        # the memory budget: bytes reserved by requests plus unsent responses
        self.inflight_bytes = 0
        self._blocked: collections.deque[_Connection] = collections.deque()
        self._sweeper: asyncio.Task[None] | None = None
        self.refused = metrics.connections_refused

    @property
    def connection_count(self) -> int:
        return len(self._open)

    # -- the memory budget ---------------------------------------------------------------

    def try_reserve(self, conn: _Connection, nbytes: int) -> bool:
        """Reserve a frame's bytes; False (and `conn` queued) while over the budget.

        As Kafka's memory pool: a reservation succeeds while anything is left, so one
        request may overshoot the budget by its own size, and a started frame can always
        complete (no two connections wait on each other's half-received frames).
        """
        budget = self.limits.max_inflight_bytes
        if budget and self.inflight_bytes >= budget:
            self._refresh_unsent()
            if self.inflight_bytes >= budget:
                self._blocked.append(conn)
                return False
        self.inflight_bytes += nbytes
        conn.reserved += nbytes
        return True

    def release(self, conn: _Connection, nbytes: int) -> None:
        conn.reserved -= nbytes
        self.inflight_bytes -= nbytes
        if self._blocked:
            self._unblock()

    def _refresh_unsent(self) -> None:
        """Unsent response bytes are counted as last seen; look at them again."""
        for conn in self._open:
            conn.note_unsent()

    def _unblock(self) -> None:
        budget = self.limits.max_inflight_bytes
        while self._blocked and (not budget or self.inflight_bytes < budget):
            conn = self._blocked.popleft()
            conn.unblock()

    def _admit(self, conn: _Connection, ip: str) -> str | None:
        """Why a new connection must be refused, or None (and it is counted)."""
        limits = self.limits
        if limits.max_connections and len(self._open) >= limits.max_connections:
            return "max_connections"
        if limits.max_connections_per_ip and self._per_ip[ip] >= limits.max_connections_per_ip:
            return "max_connections_per_ip"
        self._open.add(conn)
        self._per_ip[ip] += 1
        return None

    def _forget(self, conn: _Connection) -> None:
        if conn in self._open:
            self._open.discard(conn)
            n = self._per_ip[conn.ip] - 1
            if n:
                self._per_ip[conn.ip] = n
            else:
                del self._per_ip[conn.ip]
        with contextlib.suppress(ValueError):
            self._blocked.remove(conn)
        if conn.reserved or conn.unsent:
            self.inflight_bytes -= conn.reserved + conn.unsent
            conn.reserved = conn.unsent = 0
            self._unblock()

    async def _sweep(self) -> None:
        """Close idle connections and those that did not authenticate in time."""
        limits = self.limits
        checks = [ms for ms in (limits.idle_ms, limits.authentication_timeout_ms) if ms]
        if not checks:
            return
        period = max(0.05, min(1.0, min(checks) / 4000))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for conn in list(self._open):
                conn.check_timeouts(now)
            if self._blocked:
                self._refresh_unsent()
                self._unblock()

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
        self._sweeper = loop.create_task(self._sweep(), name="connection-sweeper")
        return self.port

    async def stop(self, grace: float = 1.0) -> None:
        """Stop accepting, let in-flight requests finish briefly, then drop connections."""
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            await cancel_all([self._sweeper])
            self._sweeper = None
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
        self.session = Session(peer="?", authenticated=not server.require_authentication)
        self.ip = "?"
        self.task: asyncio.Task[None] | None = None
        self.max_bytes = server.max_request_bytes
        self.max_unauthenticated_bytes = min(
            server.max_request_bytes, server.limits.max_unauthenticated_bytes
        )
        self.budgeted = bool(server.limits.max_inflight_bytes)
        # scratch buffer: bytes [start, end) are received but not yet cut into frames
        size = _SCRATCH_BYTES if self.session.authenticated else _SMALL_SCRATCH_BYTES
        self.scratch = bytearray(size)
        self.scratch_view = memoryview(self.scratch)
        self.start = 0
        self.end = 0
        # a large frame being received into pieces: `pieces` holds the full ones, `frame`
        # is being filled, `remaining` counts the bytes not allocated yet
        self.frame: bytearray | None = None
        self.frame_view: memoryview | None = None
        self.filled = 0
        self.pieces: list[bytearray] = []
        self.allocated = 0
        self.remaining = 0
        # complete frames waiting for the task, with their arrival time
        self.frames: collections.deque[tuple[bytearray, float]] = collections.deque()
        self.queued_bytes = 0
        # bytes counted against the server's budget: reserved frames, unsent responses
        self.reserved = 0
        self.unsent = 0
        # why reading is paused: too much queued here, or the broker over its budget
        self.reading_paused = False
        self.queue_full = False
        self.blocked = False
        self.muted = False  # over a client quota: nothing is read until the throttle ends
        self.writing_paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None
        self.eof = False
        self.lost = False
        self.busy = False
        self.accepted = self.last_active = time.monotonic()
        self.error: str | None = None  # why reading stopped on a protocol error

    # -- transport callbacks -----------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        # uvloop's transports implement asyncio.Transport without deriving from it
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.session.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.ip = str(peer[0]) if peer else "?"
        refused = self.server._admit(self, self.ip)
        if refused is not None:
            # As Kafka: over a connection cap, the new connection is closed at once.
            self.lost = True
            self.error = refused
            self.server.refused.labels(refused).inc()
            log.debug("refusing connection from %s: %s reached", self.session.peer, refused)
            transport.abort()
            return
        if self.server.certificate_principal is not None:
            cert = transport.get_extra_info("peercert")
            principal = self.server.certificate_principal(cert) if cert else None
            if principal is None:
                log.info(
                    "closing connection from %s: no principal for its certificate",
                    self.session.peer,
                )
                self.lost = True
                self.error = "no principal for the client certificate"
                self.server._forget(self)
                transport.abort()
                return
            self.session.principal = principal
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
        self.last_active = time.monotonic()
        frame = self.frame
        if frame is not None:
            self.filled += nbytes
            if self.filled < len(frame):
                return
            pieces = self.pieces
            pieces.append(frame)
            if self.remaining:
                # the next piece: as large as all before it, so allocation follows arrival
                n = min(self.remaining, max(_FIRST_PIECE, min(self.allocated, _MAX_PIECE)))
                self.remaining -= n
                self.allocated += n
                self._receive_into(bytearray(n), 0)
                return
            self.frame = self.frame_view = None
            self.pieces = []
            self._push(pieces[0] if len(pieces) == 1 else bytearray().join(pieces))
            if not self.blocked and self.end > self.start:
                self._cut_frames()
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
        if self.budgeted:
            self.note_unsent()
        self._wake_drain()

    # -- limits ----------------------------------------------------------------------------

    def note_unsent(self) -> None:
        """Count this connection's unsent response bytes against the budget as they are."""
        transport = self.transport
        n = 0 if transport is None or self.lost else transport.get_write_buffer_size()
        if n != self.unsent:
            self.server.inflight_bytes += n - self.unsent
            self.unsent = n

    def unblock(self) -> None:
        """The broker is under its memory budget again: go on cutting and reading."""
        self.blocked = False
        if self.error is None and not self.lost:
            self._cut_frames()
        self._update_reading()

    def check_timeouts(self, now: float) -> None:
        if self.lost or self.error is not None:
            return
        limits = self.server.limits
        timeout = limits.authentication_timeout_ms
        if timeout and not self.session.authenticated and now - self.accepted > timeout / 1000:
            self.close_now(f"not authenticated within {timeout} ms")
            return
        idle = limits.idle_ms
        if idle and not self.busy and not self.frames and now - self.last_active > idle / 1000:
            self.close_now(f"idle for {idle} ms (connections.max.idle.ms)")

    def close_now(self, reason: str) -> None:
        log.info("closing connection from %s: %s", self.session.peer, reason)
        self._fail_read(reason)
        if self.transport is not None:
            self.transport.abort()

    # -- framing -------------------------------------------------------------------------

    def _cut_frames(self) -> None:
        authenticated = self.session.authenticated
        if authenticated:
            max_bytes = self.max_bytes
            if len(self.scratch) < _SCRATCH_BYTES:
                self._grow_scratch()
        else:
            max_bytes = self.max_unauthenticated_bytes
        buf = self.scratch
        view = self.scratch_view
        start, end = self.start, self.end
        server = self.server
        while end - start >= 4:
            (size,) = _unpack_size(buf, start)
            if size < 0 or size > max_bytes:
                self.start = self.end = 0
                self._fail_read(
                    f"frame of {size} bytes is outside 0..socket.request.max.bytes ({max_bytes})"
                    if authenticated
                    else f"frame of {size} bytes before authentication is over "
                    f"sasl.server.max.receive.size ({max_bytes})"
                )
                return
            have = end - start - 4
            if have >= size:
                server.inflight_bytes += size  # bounded by what one read brings
                self.reserved += size
                self._push(bytearray(view[start + 4 : start + 4 + size]))
                start += 4 + size
                continue
            if size > _SMALL_FRAME or size + 4 > len(buf):
                if not server.try_reserve(self, size):
                    self.blocked = True
                    self._update_reading()
                    break
                # The frame gets pieces of its own, allocated as its bytes arrive.
                n = min(size, max(_FIRST_PIECE, 2 * have))
                first = bytearray(n)
                first[:have] = view[start + 4 : end]
                self.pieces = []
                self.allocated = n
                self.remaining = size - n
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

    def _grow_scratch(self) -> None:
        """Once authenticated, a connection gets the full-size scratch buffer."""
        n = self.end - self.start
        scratch = bytearray(_SCRATCH_BYTES)
        scratch[:n] = self.scratch_view[self.start : self.end]
        self.scratch = scratch
        self.scratch_view = memoryview(scratch)
        self.start, self.end = 0, n

    def _receive_into(self, buffer: bytearray, filled: int) -> None:
        self.frame = buffer
        self.frame_view = memoryview(buffer)
        self.filled = filled

    def _push(self, frame: bytearray) -> None:
        self.frames.append((frame, time.monotonic()))
        self.queued_bytes += len(frame)
        if self.queued_bytes > _READ_AHEAD_BYTES and not self.queue_full:
            self.queue_full = True
            self._update_reading()
        self._wake()

    def _update_reading(self) -> None:
        pause = self.error is not None or self.queue_full or self.blocked or self.muted
        if pause != self.reading_paused and self.transport is not None and not self.lost:
            self.reading_paused = pause
            if pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def _fail_read(self, reason: str) -> None:
        if self.error is None:
            self.error = reason
        self.frame = self.frame_view = None
        self.pieces = []
        self._update_reading()
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
        if self.queue_full and self.queued_bytes <= _READ_AHEAD_BYTES:
            self.queue_full = False
            self._update_reading()
        return frame, received

    async def _mute(self, seconds: float) -> None:
        self.muted = True
        self._update_reading()
        try:
            await asyncio.sleep(seconds)
        finally:
            self.muted = False
            self._update_reading()
        self.last_active = time.monotonic()

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
            server._forget(self)
            transport.close()
            for callback in session.attrs.pop(ON_CLOSE, ()):
                try:  # what a handler tied to this connection (a share session)
                    callback()
                except Exception:
                    log.exception("connection close callback failed")

    async def _raw_token(
        self,
        transport: asyncio.Transport,
        frame: bytearray,
        step: Callable[[bytes], Awaitable[bytes]],
    ) -> None:
        """A SASL token without a Kafka header (after SaslHandshake v0), answered likewise."""
        try:
            answer = await step(bytes(frame))
        finally:
            self.server.release(self, len(frame))
        if not self.lost and not transport.is_closing():
            transport.write(_SIZE.pack(len(answer)) + answer)
            self.last_active = time.monotonic()

    async def _serve(self, transport: asyncio.Transport, session: Session) -> None:
        dispatch = self.server.dispatcher.dispatch
        while True:
            item = await self._next_frame()
            if item is None:
                if self.error is not None and not self.lost:
                    raise CloseConnection(self.error)
                return
            frame, received = item
            if session.raw_tokens is not None:
                await self._raw_token(transport, frame, session.raw_tokens)
                continue
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
            self.busy = True
            try:
                response = await dispatch(ctx, view, body_offset)
            finally:
                self.busy = False
                del view
                self.server.release(self, len(frame))
            if response is not None and not self.lost and not transport.is_closing():
                if response.__class__ is list:
                    transport.writelines(response)
                else:
                    transport.write(response)
                self.last_active = time.monotonic()
                if self.budgeted:
                    self.note_unsent()
                if session.close_after_response:
                    # transport.close() still sends what is buffered, then closes.
                    raise CloseConnection("the last answer of this connection was sent")
                if self.writing_paused:
                    await self._drain()
            if ctx.throttle_ms:
                # Over a client quota the answer (with its throttle time) went out at once;
                # now the connection is muted for that time (KIP-219): the client backs
                # off, and one that does not gets nothing read or processed meanwhile.
                await self._mute(ctx.throttle_ms / 1000.0)
