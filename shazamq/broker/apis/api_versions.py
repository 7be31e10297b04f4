"""ApiVersions: tells a client exactly which APIs and versions this broker implements."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shazamq.protocol.messages.api_versions_request import ApiVersionsRequest
from shazamq.protocol.messages.api_versions_response import (
    ApiVersion,
    ApiVersionsResponse,
    FinalizedFeatureKey,
    SupportedFeatureKey,
)

if TYPE_CHECKING:
    from ..app import Broker
    from ..server import RequestContext
    from . import Dispatcher

KEY = 18

# Features the broker finalizes (v3+): group.version 1 tells clients the consumer
# rebalance protocol (KIP-848, ConsumerGroupHeartbeat) is enabled, share.version 1 that
# share groups (KIP-932, ShareGroupHeartbeat) are. Each is advertised with its API.
FEATURES = {"group.version": 1, "share.version": 1}
FEATURE_APIS = {"group.version": 68, "share.version": 76}
FEATURES_EPOCH = 1


def register(d: Dispatcher, broker: Broker) -> None:
    async def handle(ctx: RequestContext, req: ApiVersionsRequest) -> ApiVersionsResponse:
        registered = {k for k, _, _ in d.supported()}
        features = {n: v for n, v in FEATURES.items() if FEATURE_APIS[n] in registered}
        if ctx.api_version >= 3:
            ctx.session.client_software = (
                f"{req.client_software_name}/{req.client_software_version}"
            )
        return ApiVersionsResponse(
            error_code=0,
            api_keys=[
                ApiVersion(api_key=k, min_version=lo, max_version=hi) for k, lo, hi in d.supported()
            ],
            throttle_time_ms=0,
            supported_features=[
                SupportedFeatureKey(name=n, min_version=0, max_version=v)
                for n, v in features.items()
            ],
            finalized_features_epoch=FEATURES_EPOCH if features else -1,
            finalized_features=[
                FinalizedFeatureKey(name=n, max_version_level=v, min_version_level=v)
                for n, v in features.items()
            ],
        )

    d.register(KEY, 0, 4, handle)
