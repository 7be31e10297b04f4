"""SaslHandshake (key 17) and SaslAuthenticate (key 36): authenticating a connection.

Registered only when ``[security.sasl] enabled = true``; the broker then starts every
connection unauthenticated, and the dispatcher lets an unauthenticated connection send
only ApiVersions, SaslHandshake and SaslAuthenticate (anything else closes it, as Kafka
does with ILLEGAL_SASL_STATE). A connection goes through:

- handshake: the client names a mechanism. An enabled one is answered with the list of
  enabled mechanisms; another with UNSUPPORTED_SASL_MECHANISM (33) and the list, and the
  connection fails.
- authenticate: each SaslAuthenticate carries the client's next token to the mechanism
  (`shazamq.broker.security.sasl`) and returns its answer. On success the session is
  authenticated with principal ``User:<name>``; ``session_lifetime_ms`` is 0, so clients
  never re-authenticate. On failure the answer is SASL_AUTHENTICATION_FAILED (58) with a
  message, sent after a short delay (as Kafka's
  ``connection.failed.authentication.delay.ms``), and the connection fails.
- A failed connection is closed right after its failure answer is sent.
- Once authenticated, SaslHandshake and SaslAuthenticate are answered with
  ILLEGAL_SASL_STATE (34), and the connection stays open.

SaslHandshake v0 (followed by SASL tokens without Kafka framing, from clients older than
Kafka 1.0) is answered with UNSUPPORTED_VERSION (35): every current client negotiates v1
through ApiVersions and uses SaslAuthenticate.

A malformed token or a mechanism's unexpected error is a failed authentication for that
connection, never an exception out of the connection's handler.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import Counter

from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.sasl_authenticate_request import SaslAuthenticateRequest
from shazamq.protocol.messages.sasl_authenticate_response import SaslAuthenticateResponse
from shazamq.protocol.messages.sasl_handshake_request import SaslHandshakeRequest
from shazamq.protocol.messages.sasl_handshake_response import SaslHandshakeResponse

from ..security.sasl import AuthenticationError, SaslServer
from ..server import CloseConnection

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
    authentications = Counter(
        "shazamq_sasl_authentications",
        "SASL authentications, by mechanism and result (success, failure); a handshake "
        "naming a mechanism that is not enabled counts as mechanism 'unsupported'.",
        ["mechanism", "result"],
        registry=broker.metrics.registry,
    )
    for mechanism in mechanisms:
        for result in ("success", "failure"):
            authentications.labels(mechanism, result)

    async def handshake(ctx: RequestContext, req: SaslHandshakeRequest) -> SaslHandshakeResponse:
        session = ctx.session
        sasl = _sasl(session)
        if sasl.state is SaslState.COMPLETE:
            return SaslHandshakeResponse(
                error_code=ErrorCode.ILLEGAL_SASL_STATE, mechanisms=mechanisms
            )
        if sasl.state is not SaslState.HANDSHAKE:
            raise CloseConnection(f"ILLEGAL_SASL_STATE: SaslHandshake in state {sasl.state.value}")
        if ctx.api_version == 0:
            sasl.state = SaslState.FAILED
            log.info(
                "refusing SaslHandshake v0 from %s (client %s): SASL tokens without Kafka "
                "framing are not supported; the client must use SaslHandshake v1 and "
                "SaslAuthenticate",
                session.peer,
                ctx.client_id,
            )
            return SaslHandshakeResponse(
                error_code=ErrorCode.UNSUPPORTED_VERSION, mechanisms=mechanisms
            )
        if req.mechanism not in mechanisms:
            sasl.state = SaslState.FAILED
            authentications.labels("unsupported", "failure").inc()
            log.info(
                "SASL mechanism %r asked by %s is not enabled (enabled: %s)",
                req.mechanism[:64],
                session.peer,
                ", ".join(mechanisms),
            )
            return SaslHandshakeResponse(
                error_code=ErrorCode.UNSUPPORTED_SASL_MECHANISM, mechanisms=mechanisms
            )
        sasl.server = store.server(req.mechanism)
        sasl.state = SaslState.AUTHENTICATE
        return SaslHandshakeResponse(error_code=0, mechanisms=mechanisms)

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
        server = sasl.server
        if sasl.state is not SaslState.AUTHENTICATE or server is None:
            raise CloseConnection(
                f"ILLEGAL_SASL_STATE: SaslAuthenticate in state {sasl.state.value}"
            )
        token = bytes(req.auth_bytes)
        try:
            if server.blocking:
                # PLAIN's password hash runs in the SASL pool, never the default
                # executor that flushes and cleans logs.
                loop = asyncio.get_running_loop()
                answer = await loop.run_in_executor(broker.sasl_pool, server.step, token)
            else:
                answer = server.step(token)
        except AuthenticationError as exc:
            return await _failed(ctx, sasl, server, str(exc), exc.detail)
        except Exception:
            log.exception(
                "SASL %s exchange with %s failed unexpectedly", server.mechanism, session.peer
            )
            return await _failed(
                ctx, sasl, server, "Authentication failed: internal error", "internal error"
            )
        if server.complete:
            sasl.state = SaslState.COMPLETE
            sasl.server = None
            session.principal = f"User:{server.username}"
            session.authenticated = True
            authentications.labels(server.mechanism, "success").inc()
            log.debug(
                "%s authenticated as %s with %s", session.peer, session.principal, server.mechanism
            )
        return SaslAuthenticateResponse(
            error_code=0, error_message=None, auth_bytes=answer, session_lifetime_ms=0
        )

    async def _failed(
        ctx: RequestContext, sasl: SaslSession, server: SaslServer, message: str, detail: str
    ) -> SaslAuthenticateResponse:
        sasl.state = SaslState.FAILED
        sasl.server = None
        authentications.labels(server.mechanism, "failure").inc()
        log.info(
            "failed %s authentication from %s (client %s): %s",
            server.mechanism,
            ctx.session.peer,
            ctx.client_id,
            detail,
        )
        await asyncio.sleep(FAILED_AUTHENTICATION_DELAY_S)
        ctx.session.close_after_response = True  # as Kafka: answer, then disconnect
        return SaslAuthenticateResponse(
            error_code=ErrorCode.SASL_AUTHENTICATION_FAILED, error_message=message
        )

    d.register(HANDSHAKE_KEY, 0, 1, handshake)
    d.register(AUTHENTICATE_KEY, 0, 2, authenticate)
