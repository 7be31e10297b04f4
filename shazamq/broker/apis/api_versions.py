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
# rebalance protocol (KIP-848, ConsumerGroupHeartbeat) is enabled; transaction.version 2
# that transactions v2 (KIP-890: an epoch bump at every EndTxn v5, partitions added by
# the produce) is; share.version 1 that share groups (KIP-932, ShareGroupHeartbeat) are.
FEATURES = {"group.version": 1, "transaction.version": 2, "share.version": 1}
FEATURES_EPOCH = 1
# the API (key, lowest max version) a feature needs registered to be advertised
FEATURE_APIS = {"group.version": (68, 0), "transaction.version": (26, 5), "share.version": (76, 0)}


def register(d: Dispatcher, broker: Broker) -> None:
    async def handle(ctx: RequestContext, req: ApiVersionsRequest) -> ApiVersionsResponse:
        registered = {k: hi for k, _, hi in d.supported()}
        features = {
            name: level
            for name, level in FEATURES.items()
            if registered.get(FEATURE_APIS[name][0], -1) >= FEATURE_APIS[name][1]
        }
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
