"""ApiVersions: tells a client exactly which APIs and versions this broker implements."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class Feature:
    """A feature flag as ApiVersions v3+ carries it: the levels this broker supports and the
    level it runs at (finalized). ``needs_api``: advertised only when that API is served,
    up to at least that version (key, version)."""

    name: str
    min_supported: int
    max_supported: int
    finalized: int
    needs_api: tuple[int, int] | None = None


# What the broker advertises (KIP-584). metadata.version is the one every Kafka 3.x/4.x
# broker finalizes; level 25 is 4.0-IV3, the release whose APIs this broker speaks (7, 3.3-IV3,
# is the oldest level Kafka 4 accepts). group.version 1 tells clients the consumer
# rebalance protocol (KIP-848, ConsumerGroupHeartbeat) is enabled; transaction.version 2
# that transactions v2 (KIP-890: an epoch bump at every EndTxn v5, partitions added by
# the produce) is; share.version 1 that share groups (KIP-932, ShareGroupHeartbeat) are.
FEATURES: tuple[Feature, ...] = (
    Feature("metadata.version", 7, 25, 25),
    Feature("group.version", 0, 1, 1, needs_api=(68, 0)),
    Feature("transaction.version", 0, 2, 2, needs_api=(26, 5)),
    Feature("share.version", 0, 1, 1, needs_api=(76, 0)),
)
# Kafka's epoch is the metadata offset of the last feature change; these levels are fixed
# by the release, so one epoch per set of features this code can advertise.
FEATURES_EPOCH = 1


def advertised(registered: dict[int, int]) -> list[Feature]:
    """The features whose APIs are served (``registered``: API key -> highest version)."""
    return [
        f
        for f in FEATURES
        if f.needs_api is None or registered.get(f.needs_api[0], -1) >= f.needs_api[1]
    ]


def register(d: Dispatcher, broker: Broker) -> None:
    async def handle(ctx: RequestContext, req: ApiVersionsRequest) -> ApiVersionsResponse:
        supported = d.supported()
        features = advertised({k: hi for k, _, hi in supported})
        if ctx.api_version >= 3:
            ctx.session.client_software = (
                f"{req.client_software_name}/{req.client_software_version}"
            )
        return ApiVersionsResponse(
            error_code=0,
            api_keys=[
                ApiVersion(api_key=k, min_version=lo, max_version=hi) for k, lo, hi in supported
            ],
            throttle_time_ms=0,
            supported_features=[
                SupportedFeatureKey(
                    name=f.name, min_version=f.min_supported, max_version=f.max_supported
                )
                for f in features
            ],
            finalized_features_epoch=FEATURES_EPOCH if features else -1,
            finalized_features=[
                FinalizedFeatureKey(
                    name=f.name, max_version_level=f.finalized, min_version_level=f.finalized
                )
                for f in features
                if f.finalized > 0  # level 0 means off: Kafka leaves it out
            ],
        )

    d.register(KEY, 0, 4, handle)
