"""SaslHandshake (key 17) and SaslAuthenticate (key 36): authenticating a connection.

Registered only when ``[security.sasl] enabled = true``; the broker then starts every
connection unauthenticated, and the dispatcher lets an unauthenticated connection send
only ApiVersions, SaslHandshake and SaslAuthenticate (anything else closes it, as Kafka
does with ILLEGAL_SASL_STATE). A connection goes through:

- handshake: the client names a mechanism. An enabled one is answered with the list of
  enabled mechanisms; another with UNSUPPORTED_SASL_MECHANISM (33) and the list, and the
  connection is closed after that answer.
- authenticate: each SaslAuthenticate carries the client's next token to the mechanism
  (`shazamq.broker.security.sasl`) and returns its answer. On success the session is
  authenticated with principal ``User:<name>``. On failure the answer is
  SASL_AUTHENTICATION_FAILED (58) with a message, sent after a short delay (as Kafka's
  ``connection.failed.authentication.delay.ms``), and the connection is closed after it.
- failed logins are rate-limited per client address (``max_failed_logins_per_minute``,
  `security.limits`): past the allowance, an authentication is refused (and counted as
  result ``throttled``) without its credentials being checked.
- SaslHandshake v0 (clients older than Kafka 1.0, KIP-43): the SASL tokens that follow
  are raw size-prefixed frames without Kafka headers, answered the same way (the server
  `Session.raw_tokens` hook). Success sends the mechanism's answer (PLAIN: an empty
  token); a failure cannot be reported in that framing, so the connection is closed
  after the delay.

Re-authentication (KIP-368): with ``connections_max_reauth_ms`` set, a successful login
tells the client (SaslAuthenticate v1+) ``session_lifetime_ms``, and the session expires
then, whatever version was used. Past it the dispatcher serves only ApiVersions and the
SASL requests; anything else closes the connection (counted). On an authenticated
connection whose session has a lifetime, a SaslHandshake starts a re-authentication
(at most one a second, as Kafka; otherwise, or when sessions never expire, it is
answered ILLEGAL_SASL_STATE and the connection stays as it is). While it runs the
session counts as expired, so nothing but SASL requests is served. The mechanism must
be the one of the first login (else, as Kafka, the handshake succeeds and the next
SaslAuthenticate fails), and the principal must not change; a failed re-authentication
(a deleted user, a changed password, another principal) closes the connection. The
brokers' own principal is given no lifetime: its password is the cluster secret, which
no API changes.

A malformed token or a mechanism's unexpected error is a failed authentication for that
connection, never an exception out of the connection's handler.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import Counter

from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.sasl_authenticate_request import SaslAuthenticateRequest
from shazamq.protocol.messages.sasl_authenticate_response import SaslAuthenticateResponse
from shazamq.protocol.messages.sasl_handshake_request import SaslHandshakeRequest
from shazamq.protocol.messages.sasl_handshake_response import SaslHandshakeResponse

from ..security import INTERNAL_USER
from ..security.limits import FailedLoginLimiter
from ..security.sasl import AuthenticationError, SaslServer
from ..server import CloseConnection
from .authz import host_of

if TYPE_CHECKING:
    from ..app import Broker
    from ..server import RequestContext, Session
    from . import Dispatcher

log = logging.getLogger(__name__)

HANDSHAKE_KEY = 17
AUTHENTICATE_KEY = 36
# The answer to a failed authentication waits this long (Kafka's default is 100 ms), which
# slows password guessing on one connection without holding up any other.
FAILED_AUTHENTICATION_DELAY_S = 0.1
# A connection may start a re-authentication at most this often (Kafka: one second).
MIN_REAUTH_INTERVAL_S = 1.0
_SESSION_KEY = "sasl"


class SaslState(enum.Enum):
    HANDSHAKE = "handshake"
    AUTHENTICATE = "authenticate"
    COMPLETE = "complete"
    FAILED = "failed"


@dataclass
class SaslSession:
    """Where one connection is in its SASL exchange."""

    state: SaslState = SaslState.HANDSHAKE
    server: SaslServer | None = None
    # the mechanism of the completed login (a re-authentication must use it again)
    mechanism: str | None = None
    reauthenticating: bool = False
    reauth_started: float = 0.0
    # why the re-authentication's next SaslAuthenticate fails (another mechanism)
    refusal: str | None = None


def start_session(session: Session) -> None:
    """Make a new connection unauthenticated, waiting for its SaslHandshake."""
    session.authenticated = False
    session.attrs[_SESSION_KEY] = SaslSession()


def _sasl(session: Session) -> SaslSession:
    state = session.attrs.get(_SESSION_KEY)
    if state is None:
        state = SaslSession(SaslState.COMPLETE if session.authenticated else SaslState.HANDSHAKE)
        session.attrs[_SESSION_KEY] = state
    return state


def register(d: Dispatcher, broker: Broker) -> None:
    store = broker.credentials
    assert store is not None, "SASL handlers need the broker's credential store"
    mechanisms = list(store.mechanisms)
    reauth_ms = broker.config.security.sasl.connections_max_reauth_ms
    limiter = FailedLoginLimiter(broker.config.security.sasl.max_failed_logins_per_minute)
    registry = broker.metrics.registry
    authentications = Counter(
        "shazamq_sasl_authentications",
        "SASL authentications, by mechanism and result (success, failure); a handshake "
        "naming a mechanism that is not enabled counts as mechanism 'unsupported'.",
        ["mechanism", "result"],
        registry=registry,
    )
    reauthentications = Counter(
        "shazamq_sasl_reauthentications",
        "SASL re-authentications of live connections (KIP-368), by mechanism and result.",
        ["mechanism", "result"],
        registry=registry,
    )
    expired = Counter(
        "shazamq_sasl_expired_connections_closed",
        "Connections closed because their SASL session expired and they sent something "
        "other than a re-authentication (Kafka's expired-connections-killed-count).",
        registry=registry,
    )
    for mechanism in mechanisms:
        for result in ("success", "failure", "throttled"):
            authentications.labels(mechanism, result)
            if reauth_ms:
                reauthentications.labels(mechanism, result)
    d.on_session_expired = expired.inc

    def counter(sasl: SaslSession) -> Counter:
        return reauthentications if sasl.reauthenticating else authentications

    async def handshake(ctx: RequestContext, req: SaslHandshakeRequest) -> SaslHandshakeResponse:
        session = ctx.session
        sasl = _sasl(session)
        if sasl.state is SaslState.COMPLETE:
            now = ctx.received_at
            if (
                not session.expires_at
                or ctx.api_version == 0
                or (sasl.reauth_started and now - sasl.reauth_started < MIN_REAUTH_INTERVAL_S)
            ):
                return SaslHandshakeResponse(
                    error_code=ErrorCode.ILLEGAL_SASL_STATE, mechanisms=mechanisms
                )
            # KIP-368: re-authentication. Until it completes the session counts as
            # expired, so only SASL requests are served.
            sasl.state = SaslState.HANDSHAKE
            sasl.reauthenticating = True
            sasl.reauth_started = now
            session.expires_at = now
        if sasl.state is not SaslState.HANDSHAKE:
            raise CloseConnection(f"ILLEGAL_SASL_STATE: SaslHandshake in state {sasl.state.value}")
        if req.mechanism not in mechanisms:
            sasl.state = SaslState.FAILED
            counter(sasl).labels("unsupported", "failure").inc()
            log.info(
                "SASL mechanism %r asked by %s is not enabled (enabled: %s)",
                req.mechanism[:64],
                session.peer,
                ", ".join(mechanisms),
            )
            session.close_after_response = True
            return SaslHandshakeResponse(
                error_code=ErrorCode.UNSUPPORTED_SASL_MECHANISM, mechanisms=mechanisms
            )
        sasl.state = SaslState.AUTHENTICATE
        if sasl.reauthenticating and req.mechanism != sasl.mechanism:
            # as Kafka: the handshake succeeds, the next SaslAuthenticate fails
            sasl.refusal = (
                f"SASL mechanism {req.mechanism!r} requested by the client is not supported "
                f"for re-authentication of mechanism {sasl.mechanism!r}"
            )
            return SaslHandshakeResponse(error_code=0, mechanisms=mechanisms)
        sasl.server = store.server(req.mechanism)
        if ctx.api_version == 0:
            # the legacy flow: raw SASL tokens follow, without Kafka headers
            session.raw_tokens = functools.partial(raw_token, session, sasl)
        return SaslHandshakeResponse(error_code=0, mechanisms=mechanisms)

    async def step(server: SaslServer, token: bytes) -> bytes:
        if server.blocking:
            # PLAIN's password hash runs in the SASL pool, never the default executor
            # that flushes and cleans logs.
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(broker.sasl_pool, server.step, token)
        return server.step(token)

    async def exchange(
        ctx_peer: str, client_id: str | None, sasl: SaslSession, token: bytes, session: Session
    ) -> tuple[bytes | None, str | None, int]:
        """One token through the mechanism: (answer, None, lifetime) or (None, failure, 0)."""
        server = sasl.server
        if sasl.refusal is not None or server is None:
            message = sasl.refusal or "Authentication failed: no exchange in progress"
            return None, await failed(ctx_peer, client_id, sasl, message, message), 0
        address = host_of(ctx_peer)
        if not limiter.allowed(address):
            counter(sasl).labels(server.mechanism, "throttled").inc()
            log.info("refusing SASL authentication from %s: too many failed logins", ctx_peer)
            sasl.state = SaslState.FAILED
            sasl.server = None
            await asyncio.sleep(FAILED_AUTHENTICATION_DELAY_S)
            message = "Authentication failed: too many failed logins from this address"
            return None, message, 0
        try:
            answer = await step(server, token)
        except AuthenticationError as exc:
            return None, await failed(ctx_peer, client_id, sasl, str(exc), exc.detail), 0
        except Exception:
            log.exception("SASL %s exchange with %s failed", server.mechanism, ctx_peer)
            message = "Authentication failed: internal error"
            return None, await failed(ctx_peer, client_id, sasl, message, "internal error"), 0
        if not server.complete:
            return answer, None, 0
        principal = f"User:{server.username}"
        if sasl.reauthenticating and principal != session.principal:
            message = (
                f"Cannot change principals during re-authentication from {session.principal}: "
                f"{principal}"
            )
            return None, await failed(ctx_peer, client_id, sasl, message, message), 0
        lifetime_ms = reauth_ms if server.username != INTERNAL_USER else 0
        expires_at = getattr(server, "expires_at", None)  # a token's exp (OAUTHBEARER)
        if lifetime_ms and expires_at is not None:
            # KIP-368: the session ends when the token does, if that is sooner
            lifetime_ms = max(1, min(lifetime_ms, int((expires_at - time.time()) * 1000)))
        counter(sasl).labels(server.mechanism, "success").inc()
        log.debug(
            "%s %s as %s with %s",
            ctx_peer,
            "re-authenticated" if sasl.reauthenticating else "authenticated",
            principal,
            server.mechanism,
        )
        sasl.state = SaslState.COMPLETE
        sasl.mechanism = server.mechanism
        sasl.server = None
        sasl.reauthenticating = False
        session.principal = principal
        session.authenticated = True
        session.expires_at = time.monotonic() + lifetime_ms / 1000 if lifetime_ms else 0.0
        return answer, None, lifetime_ms

    async def failed(
        peer: str, client_id: str | None, sasl: SaslSession, message: str, detail: str
    ) -> str:
        server = sasl.server
        mechanism = server.mechanism if server is not None else (sasl.mechanism or "?")
        counter(sasl).labels(mechanism, "failure").inc()
        limiter.failed(host_of(peer))
        log.info(
            "failed %s %s from %s (client %s): %s",
            mechanism,
            "re-authentication" if sasl.reauthenticating else "authentication",
            peer,
            client_id,
            detail,
        )
        sasl.state = SaslState.FAILED
        sasl.server = None
        await asyncio.sleep(FAILED_AUTHENTICATION_DELAY_S)
        return message

    async def authenticate(
        ctx: RequestContext, req: SaslAuthenticateRequest
    ) -> SaslAuthenticateResponse:
        session = ctx.session
        sasl = _sasl(session)
        if sasl.state is SaslState.COMPLETE:
            return SaslAuthenticateResponse(
                error_code=ErrorCode.ILLEGAL_SASL_STATE,
                error_message="the connection is already authenticated",
            )
        if sasl.state is not SaslState.AUTHENTICATE:
            raise CloseConnection(
                f"ILLEGAL_SASL_STATE: SaslAuthenticate in state {sasl.state.value}"
            )
        answer, failure, lifetime_ms = await exchange(
            session.peer, ctx.client_id, sasl, bytes(req.auth_bytes), session
        )
        if failure is not None:
            session.close_after_response = True  # as Kafka: answer, then disconnect
            return SaslAuthenticateResponse(
                error_code=ErrorCode.SASL_AUTHENTICATION_FAILED, error_message=failure
            )
        return SaslAuthenticateResponse(
            error_code=0,
            error_message=None,
            auth_bytes=answer or b"",
            # v0 has no such field: the session still expires, the client is not told
            session_lifetime_ms=lifetime_ms if ctx.api_version >= 1 else 0,
        )

    async def raw_token(session: Session, sasl: SaslSession, token: bytes) -> bytes:
        """A token of the legacy flow (after SaslHandshake v0); its raw answer."""
        answer, failure, _ = await exchange(session.peer, session.client_id, sasl, token, session)
        if failure is not None:
            # no framing to carry an error: the connection just ends (as Kafka)
            raise CloseConnection(f"SASL authentication failed: {failure}")
        if sasl.state is SaslState.COMPLETE:
            session.raw_tokens = None
        return answer or b""

    d.register(HANDSHAKE_KEY, 0, 1, handshake)
    d.register(AUTHENTICATE_KEY, 0, 2, authenticate)
