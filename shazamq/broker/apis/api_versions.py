"""ApiVersions: tells a client exactly which APIs and versions this broker implements."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shazamq.protocol.messages.api_versions_request import ApiVersionsRequest
from shazamq.protocol.messages.api_versions_response import ApiVersion, ApiVersionsResponse

if TYPE_CHECKING:
    from ..app import Broker
    from ..server import RequestContext
    from . import Dispatcher

KEY = 18


def register(d: Dispatcher, broker: Broker) -> None:
    async def handle(ctx: RequestContext, req: ApiVersionsRequest) -> ApiVersionsResponse:
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
        )

    d.register(KEY, 0, 4, handle)
