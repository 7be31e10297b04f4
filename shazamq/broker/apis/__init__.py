"""API handlers, one module per API family, and the dispatcher that routes to them.

A handler is an async function ``(ctx, request) -> response | None`` registered for one
API key with the version range it implements. ApiVersions advertises exactly what is
registered here, so a handler's range is the single statement of what the broker speaks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shazamq.protocol import framing
from shazamq.protocol.errors import DecodeError, ErrorCode, UnsupportedVersionError
from shazamq.protocol.messages import API_KEYS

from ..server import CloseConnection, RequestContext

if TYPE_CHECKING:
    from ..metrics import BrokerMetrics
    from ..quotas.manager import QuotaManager

log = logging.getLogger(__name__)

Handler = Callable[[RequestContext, Any], Awaitable[Any | None]]

API_VERSIONS_KEY = 18
# What a connection may send before SASL authentication completes: ApiVersions,
# SaslHandshake, SaslAuthenticate.
UNAUTHENTICATED_API_KEYS = frozenset({API_VERSIONS_KEY, 17, 36})


@dataclass(frozen=True, slots=True)
class Api:
    """One implemented API: its key, the versions handled and the handler."""

    key: int
    min_version: int
    max_version: int
    handler: Handler

    @property
    def name(self) -> str:
        return API_KEYS[self.key].name

    @property
    def request_cls(self) -> Any:
        return API_KEYS[self.key].request


def _error_names(obj: Any, out: list[int], depth: int = 0) -> None:
    """Collect non-zero error codes anywhere in a response (top level and per partition)."""
    code = getattr(obj, "error_code", 0)
    if code:
        out.append(code)
    if depth > 4:
        return
    for name in getattr(type(obj), "__slots__", ()):
        value = getattr(obj, name, None)
        if isinstance(value, list) and value and hasattr(value[0], "__slots__"):
            for item in value:
                _error_names(item, out, depth + 1)


def strip_absent_fields(obj: Any, version: int) -> None:
    """Reset every field the given version lacks to its default, recursively.

    Handlers fill responses with everything they know; an old client's version may lack
    some fields (Metadata v0 has no controller id). The encoder refuses to drop a
    non-default value silently, so the dispatcher does it, deliberately, for responses.
    """
    cls = type(obj)
    fields = getattr(cls, "FIELDS", ())
    default = None
    for f in fields:
        if not f.present_in(version):
            if default is None:
                default = cls()
            setattr(obj, f.name, getattr(default, f.name))
        elif f.struct is not None:
            value = getattr(obj, f.name)
            if isinstance(value, list):
                for item in value:
                    strip_absent_fields(item, version)
            elif value is not None:
                strip_absent_fields(value, version)


class Dispatcher:
    """Routes decoded requests to handlers and encodes their responses."""

    def __init__(self, metrics: BrokerMetrics) -> None:
        self.metrics = metrics
        self.apis: dict[int, Api] = {}
        self._per_api_metrics: dict[str, tuple[Any, Any]] = {}
        # called when a connection whose SASL session expired is closed
        self.on_session_expired: Callable[[], None] | None = None
        # client quotas, while any is set (apis/client_quotas.py); None costs one test
        self.quotas: QuotaManager | None = None

    def register(self, key: int, min_version: int, max_version: int, handler: Handler) -> None:
        spec = API_KEYS[key]
        lo, hi = spec.min_version, spec.max_version
        if not (lo <= min_version <= max_version <= hi):
            raise ValueError(f"{spec.name}: versions {min_version}-{max_version} outside {lo}-{hi}")
        self.apis[key] = Api(key, min_version, max_version, handler)

    def supported(self) -> list[tuple[int, int, int]]:
        """(api key, min version, max version) for every registered API, sorted by key."""
        return sorted((a.key, a.min_version, a.max_version) for a in self.apis.values())

    async def dispatch(
        self, ctx: RequestContext, view: memoryview, offset: int
    ) -> bytes | bytearray | list[Any] | None:
        if not ctx.session.authenticated and ctx.api_key not in UNAUTHENTICATED_API_KEYS:
            # Kafka: ILLEGAL_SASL_STATE, and the connection is closed without an answer.
            spec = API_KEYS.get(ctx.api_key)
            raise CloseConnection(
                f"ILLEGAL_SASL_STATE: {spec.name if spec else ctx.api_key} request before "
                "SASL authentication completed"
            )
        expires_at = ctx.session.expires_at
        if (
            expires_at
            and ctx.received_at >= expires_at
            and ctx.api_key not in UNAUTHENTICATED_API_KEYS
        ):
            # KIP-368: an expired session may only re-authenticate.
            if self.on_session_expired is not None:
                self.on_session_expired()
            spec = API_KEYS.get(ctx.api_key)
            raise CloseConnection(
                f"SASL session expired (connections_max_reauth_ms) and the connection sent "
                f"{spec.name if spec else ctx.api_key} instead of re-authenticating"
            )
        api = self.apis.get(ctx.api_key)
        if api is None:
            raise CloseConnection(f"unsupported api key {ctx.api_key}")
        if not api.min_version <= ctx.api_version <= api.max_version:
            if ctx.api_key == API_VERSIONS_KEY:
                # Kafka answers an ApiVersions request it cannot parse with a v0 response
                # carrying UNSUPPORTED_VERSION and its ranges, so the client can downgrade.
                return framing.unsupported_version_response(
                    ctx.api_key,
                    ctx.api_version,
                    ctx.correlation_id,
                    (api.min_version, api.max_version),
                )
            raise CloseConnection(
                f"{api.name} v{ctx.api_version} is outside {api.min_version}-{api.max_version}"
            )
        try:
            request, _ = api.request_cls.decode(view, offset, ctx.api_version)
        except DecodeError as exc:
            raise CloseConnection(f"malformed {api.name} v{ctx.api_version}: {exc}") from None
        name = api.name
        quotas = self.quotas
        if quotas is None:
            response = await api.handler(ctx, request)
        else:
            response = await quotas.handle(ctx, api.handler, request, len(view))
        metrics = self.metrics
        children = self._per_api_metrics.get(name)
        if children is None:  # label lookups take a lock: once per API, not per request
            children = self._per_api_metrics[name] = (
                metrics.requests.labels(name),
                metrics.request_latency.labels(name),
            )
        children[0].inc()
        children[1].observe(time.monotonic() - ctx.received_at)
        if response is None:
            return None
        codes: list[int] = []
        _error_names(response, codes)
        for code in codes:
            try:
                err = ErrorCode(code).name
            except ValueError:
                err = str(code)
            metrics.record_error(name, err)
        try:
            return framing.encode_response_parts(
                ctx.api_key, ctx.api_version, ctx.correlation_id, response
            )
        except UnsupportedVersionError:
            # Rare path (old versions only): drop what the version cannot carry, retry.
            strip_absent_fields(response, ctx.api_version)
            return framing.encode_response_parts(
                ctx.api_key, ctx.api_version, ctx.correlation_id, response
            )
