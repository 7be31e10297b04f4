"""Client telemetry (KIP-714): GetTelemetrySubscriptions and PushTelemetry.

The broker has no metrics exporter, so every client gets an empty subscription: no
metrics requested, a client instance id when it sent the zero uuid, Kafka's default push
interval. Clients (librdkafka pushes by default) then have nothing to push and log no
error. A push that comes anyway (a terminating one) is checked as Kafka checks it and its
payload dropped.

The subscription id is derived from the client instance id, so a push can be checked
without remembering clients: nothing grows with the number of clients, and a push after
a restart or to another broker is still recognised.
"""

from __future__ import annotations

import uuid
import zlib
from typing import TYPE_CHECKING

from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.get_telemetry_subscriptions_request import (
    GetTelemetrySubscriptionsRequest,
)
from shazamq.protocol.messages.get_telemetry_subscriptions_response import (
    GetTelemetrySubscriptionsResponse,
)
from shazamq.protocol.messages.push_telemetry_request import PushTelemetryRequest
from shazamq.protocol.messages.push_telemetry_response import PushTelemetryResponse
from shazamq.protocol.records import (
    COMPRESSION_GZIP,
    COMPRESSION_LZ4,
    COMPRESSION_NONE,
    COMPRESSION_SNAPPY,
    COMPRESSION_ZSTD,
)

if TYPE_CHECKING:
    from ..app import Broker
    from ..server import RequestContext
    from . import Dispatcher

GET_KEY = 71
PUSH_KEY = 72

# Kafka's defaults: the push interval of a client no subscription matches, and
# telemetry.max.bytes. Accepted codecs in Kafka's order of preference.
PUSH_INTERVAL_MS = 300_000
TELEMETRY_MAX_BYTES = 1 << 20
ACCEPTED_COMPRESSION = [COMPRESSION_ZSTD, COMPRESSION_LZ4, COMPRESSION_GZIP, COMPRESSION_SNAPPY]
_ZERO = uuid.UUID(int=0)


def subscription_id(client_instance_id: uuid.UUID) -> int:
    """The (empty) subscription's id for a client instance: stable and non-negative."""
    return zlib.crc32(client_instance_id.bytes) & 0x7FFFFFFF


def subscription(client_instance_id: uuid.UUID) -> GetTelemetrySubscriptionsResponse:
    """The answer to GetTelemetrySubscriptions: an id for a new client, no metrics."""
    assigned = uuid.uuid4() if client_instance_id == _ZERO else client_instance_id
    return GetTelemetrySubscriptionsResponse(
        error_code=0,
        client_instance_id=assigned if client_instance_id == _ZERO else _ZERO,
        subscription_id=subscription_id(assigned),
        accepted_compression_types=list(ACCEPTED_COMPRESSION),
        push_interval_ms=PUSH_INTERVAL_MS,
        telemetry_max_bytes=TELEMETRY_MAX_BYTES,
        delta_temporality=True,
        requested_metrics=[],
    )


def push_error(req: PushTelemetryRequest) -> int:
    """The error code of a push, checked in Kafka's order; 0 when it is accepted."""
    if req.client_instance_id == _ZERO:
        return int(ErrorCode.INVALID_REQUEST)
    if req.subscription_id != subscription_id(req.client_instance_id):
        return int(ErrorCode.UNKNOWN_SUBSCRIPTION_ID)
    metrics = req.metrics or b""
    if req.compression_type != COMPRESSION_NONE and req.compression_type not in (
        ACCEPTED_COMPRESSION
    ):
        return int(ErrorCode.UNSUPPORTED_COMPRESSION_TYPE)
    if len(metrics) > TELEMETRY_MAX_BYTES:
        return int(ErrorCode.TELEMETRY_TOO_LARGE)
    return 0


def register(d: Dispatcher, broker: Broker) -> None:
    async def get(
        ctx: RequestContext, req: GetTelemetrySubscriptionsRequest
    ) -> GetTelemetrySubscriptionsResponse:
        return subscription(req.client_instance_id)

    async def push(ctx: RequestContext, req: PushTelemetryRequest) -> PushTelemetryResponse:
        return PushTelemetryResponse(error_code=push_error(req))

    d.register(GET_KEY, 0, 0, get)
    d.register(PUSH_KEY, 0, 0, push)
