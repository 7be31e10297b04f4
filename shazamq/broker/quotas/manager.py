"""Enforcing client quotas around the handlers, as Kafka's ClientQuotaManager does.

The dispatcher calls `QuotaManager.handle` instead of the handler only while some quota
exists (`Dispatcher.quotas` is None otherwise: one attribute test per request). After
the handler has answered, per request and never per record:

- Produce: the request's bytes count against ``producer_byte_rate``;
- Fetch from a consumer: its ``max_bytes`` is cut to what the quota allows over the
  padded span (Kafka's getMaxValueInQuotaWindow), and the record bytes of the response
  count against ``consumer_byte_rate``; over it, the answer is Kafka's throttled fetch
  response (no partitions, the throttle time) and its bytes are taken back from the
  rate, since the client asks for them again on its next fetch;
- every API a client throttles for: the time the event loop spent running the handler
  counts against ``request_percentage`` (100 is one loop busy all the time). The time a
  handler spends waiting (a long poll, replication of acks=all, a disk thread) is not
  counted, as Kafka counts request handler thread time and not purgatory time: the
  handler's coroutine is stepped through a wrapper that times each step.

Over a quota, the response carries ``throttle_time_ms`` (the largest of the quotas
exceeded) and is sent at once, and the connection is muted for that long: nothing more
is read or processed from it (KIP-219; clients back off by the same time). Other
connections are not touched. Rates are kept per quota type and per tag pair (see
`entities.resolve`), dropped once idle for a whole window span.

Not subject to client quotas: the brokers' own principal, replica fetches, and the
APIs Kafka exempts (ApiVersions, the SASL exchange, transaction markers).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any

from .entities import (
    CONSUMER_BYTE_RATE,
    PRODUCER_BYTE_RATE,
    QUOTA_KEYS,
    REQUEST_PERCENTAGE,
    Quotas,
    Tags,
    resolve,
)
from .rate import SampledRate

if TYPE_CHECKING:
    from prometheus_client import Histogram

    from ..server import RequestContext

__all__ = ["QuotaManager", "QuotaType"]

PRODUCE_KEY = 0
FETCH_KEY = 1
# ApiVersions, SaslHandshake, SaslAuthenticate, WriteTxnMarkers: never throttled
_EXEMPT_KEYS = frozenset({18, 17, 36, 27})


class QuotaType(enum.IntEnum):
    PRODUCE = 0
    FETCH = 1
    REQUEST = 2

    @property
    def label(self) -> str:
        return ("produce", "fetch", "request")[self]


_KEYS = (PRODUCER_BYTE_RATE, CONSUMER_BYTE_RATE, REQUEST_PERCENTAGE)

# per quota type: the bound and the tags its rate is kept under, or None
Limits = tuple[tuple[float, Tags] | None, ...]


class _Timed:
    """Awaits a coroutine, adding up the time spent running its steps (not waiting)."""

    __slots__ = ("coro", "elapsed")

    def __init__(self, coro: Awaitable[Any]) -> None:
        self.coro: Any = coro
        self.elapsed = 0.0

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self.coro
        clock = time.perf_counter
        value: Any = None
        error: BaseException | None = None
        while True:
            start = clock()
            try:
                if error is None:
                    yielded = coro.send(value)
                else:
                    yielded = coro.throw(error)
            except StopIteration as stop:
                self.elapsed += clock() - start
                return stop.value
            except BaseException:
                self.elapsed += clock() - start
                raise
            self.elapsed += clock() - start
            try:
                value = yield yielded
                error = None
            except BaseException as exc:  # cancellation reaches the handler as before
                value, error = None, exc


def _user(principal: str) -> str:
    """Kafka's quota user: the principal's name (``User:alice`` -> ``alice``)."""
    return principal.partition(":")[2] or principal


def _records_bytes(response: Any) -> int:
    total = 0
    for t in response.responses:
        for p in t.partitions:
            data = p.records
            if data:
                total += len(data)
    return total


class QuotaManager:
    """The quotas in force and the measured rates of the clients they apply to."""

    def __init__(
        self,
        *,
        samples: int,
        window_seconds: float,
        throttle_time: Histogram,
        internal_principal: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.samples = samples
        self.window = window_seconds
        self.clock = clock
        self.internal_principal = internal_principal
        self._observe = [throttle_time.labels(q.label).observe for q in QuotaType]
        self._quotas: Quotas = {}
        self._limits: dict[tuple[str, str], Limits] = {}
        self._rates: dict[tuple[int, str, str], SampledRate] = {}
        self._next_sweep = 0.0

    @property
    def active(self) -> bool:
        """Whether any quota this broker enforces is set."""
        return any(key in QUOTA_KEYS for values in self._quotas.values() for key in values)

    def update(self, quotas: Quotas) -> None:
        """The quotas changed: resolve every connection again on its next request."""
        self._quotas = {entity: dict(values) for entity, values in quotas.items()}
        self._limits = {}

    def limits(self, user: str, client_id: str) -> Limits:
        found = self._limits.get((user, client_id))
        if found is None:
            found = self._limits[(user, client_id)] = tuple(
                resolve(self._quotas, key, user, client_id) for key in _KEYS
            )
        return found

    def _rate(self, qtype: QuotaType, tags: Tags, now: float) -> SampledRate:
        key = (qtype, *tags)
        rate = self._rates.get(key)
        if rate is None:
            if now >= self._next_sweep:
                self._sweep(now)
            rate = self._rates[key] = SampledRate(self.samples, self.window, now)
        return rate

    def _sweep(self, now: float) -> None:
        """Forget the rates of clients gone quiet for a whole span (they measure as 0)."""
        span = self.samples * self.window
        self._rates = {k: r for k, r in self._rates.items() if now - r.last_used < span}
        self._next_sweep = now + span
        if len(self._limits) > 10_000:  # connections come and go with fresh client ids
            self._limits = {}

    def record(
        self, qtype: QuotaType, limit: tuple[float, Tags], value: float, now: float
    ) -> tuple[SampledRate, int]:
        """Count ``value`` against the quota; the rate and the throttle time it implies."""
        bound, tags = limit
        rate = self._rate(qtype, tags, now)
        rate.record(value, now)
        return rate, rate.throttle_ms(bound, now)

    async def handle(
        self,
        ctx: RequestContext,
        handler: Callable[[RequestContext, Any], Awaitable[Any]],
        request: Any,
        request_bytes: int,
    ) -> Any:
        """Run the handler, count what it did, and set the throttle time if over a quota."""
        key = ctx.api_key
        principal = ctx.session.principal
        if key in _EXEMPT_KEYS or principal == self.internal_principal:
            return await handler(ctx, request)
        produce, fetch, req = self.limits(_user(principal), ctx.client_id or "")
        if key == FETCH_KEY:
            replica_id = (
                request.replica_state.replica_id if ctx.api_version >= 15 else request.replica_id
            )
            if replica_id >= 0:
                return await handler(ctx, request)  # replication is not a client
            if fetch is not None:
                # as Kafka: never ask for more than the quota allows over the padded
                # span, or a fetch could bust the quota on its own every time, be thrown
                # away and never get through
                most = int(fetch[0] * max(self.samples - 1, 1) * self.window)
                if request.max_bytes > most:
                    request.max_bytes = most
                    request.min_bytes = min(request.min_bytes, most)
        timed = _Timed(handler(ctx, request))
        response = await timed
        now = self.clock()
        throttle = 0
        kind = QuotaType.REQUEST
        taken_back: tuple[SampledRate, int] | None = None
        if key == PRODUCE_KEY:
            if produce is not None:
                throttle = self.record(QuotaType.PRODUCE, produce, request_bytes, now)[1]
                kind = QuotaType.PRODUCE
        elif key == FETCH_KEY and fetch is not None and response is not None:
            nbytes = _records_bytes(response)
            rate, throttle = self.record(QuotaType.FETCH, fetch, nbytes, now)
            kind = QuotaType.FETCH
            taken_back = (rate, nbytes)
        if req is not None:
            t = self.record(QuotaType.REQUEST, req, timed.elapsed * 100.0, now)[1]
            if t > throttle:
                throttle, kind = t, QuotaType.REQUEST
        if throttle <= 0:
            return response
        self._observe[kind](throttle / 1000.0)
        ctx.throttle_ms = throttle
        if response is None:  # acks=0: no answer, the connection is still muted
            return None
        if taken_back is not None:
            # Kafka's throttled fetch: nothing is served now, so nothing is counted
            rate, nbytes = taken_back
            rate.record(-nbytes, now)
            response.responses = []
        if hasattr(response, "throttle_time_ms"):
            response.throttle_time_ms = max(response.throttle_time_ms, throttle)
        return response
