"""A small async client for the Kubernetes API: get, list, server-side apply, create-if-absent,
merge patch, delete, status.

Why our own: Kopf watches and patches the resources it handles but ships no client for
the objects an operator creates. The operator needs only a handful of verbs on a fixed set
of kinds, so a thin layer over aiohttp (which Kopf already depends on) is smaller and more
predictable than a generated client, and it talks to Kubernetes and to test emulators alike.

Credentials come from Kopf's own login functions (`kopf.login_with_service_account`, then
`kopf.login_with_kubeconfig`), so the operator and Kopf use the same identity. On a 401 the
client logs in again once (service account tokens rotate) and retries.

Applying is server-side apply (``PATCH`` with ``application/apply-patch+yaml``,
``fieldManager=shazamq-operator``, ``force=true``): the operator owns the fields it sets and
nothing else, and a field it stops setting is removed. A ``404`` on that patch (an API that
does not create on apply, such as a test emulator) falls back to ``POST``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import kopf

__all__ = ["FIELD_MANAGER", "Api", "ApiError", "login"]

FIELD_MANAGER = "shazamq-operator"
logger = logging.getLogger(__name__)

# Kind -> (plural, namespaced) of every kind the operator touches.
_RESOURCES: dict[str, tuple[str, bool]] = {
    "ConfigMap": ("configmaps", True),
    "Secret": ("secrets", True),
    "Service": ("services", True),
    "Pod": ("pods", True),
    "StatefulSet": ("statefulsets", True),
    "PodDisruptionBudget": ("poddisruptionbudgets", True),
    "ServiceMonitor": ("servicemonitors", True),
    "PrometheusRule": ("prometheusrules", True),
    "ShazamqCluster": ("shazamqclusters", True),
    "HorizontalPodAutoscaler": ("horizontalpodautoscalers", True),
}


class ApiError(Exception):
    """An error answer of the API server, with its HTTP status and Status reason/message."""

    def __init__(self, status: int, reason: str, message: str, *, method: str, path: str) -> None:
        super().__init__(f"{method} {path}: {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def retriable(self) -> bool:
        """Whether trying again later may help (conflicts, throttling, server trouble)."""
        return self.status in (409, 429) or self.status >= 500


LoginFn = Callable[[], Awaitable[kopf.ConnectionInfo]]


async def login(settings: kopf.OperatorSettings | None = None) -> kopf.ConnectionInfo:
    """Credentials as Kopf finds them: in-cluster service account first, then kubeconfig."""
    settings = settings or kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
        settings=settings
    )
    if info is None:
        raise kopf.LoginError("no service account and no kubeconfig to log in with")
    return info


def path_for(
    api_version: str,
    kind: str,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """The URL path of a collection or of one object."""
    plural, namespaced = _RESOURCES[kind]
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    if namespaced and namespace:
        base += f"/namespaces/{namespace}"
    path = f"{base}/{plural}"
    if name:
        path += f"/{name}"
        if subresource:
            path += f"/{subresource}"
    return path


class Api:
    """An authenticated session against one API server."""

    def __init__(self, info: kopf.ConnectionInfo, *, relogin: LoginFn | None = None) -> None:
        self._info = info
        self._relogin = relogin
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    async def connect(cls, settings: kopf.OperatorSettings | None = None) -> Api:
        return cls(await login(settings), relogin=lambda: login(settings))

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._info.as_ssl_context()),
                headers={"User-Agent": FIELD_MANAGER, **self._info.as_http_headers()},
                timeout=aiohttp.ClientTimeout(total=60),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        _retried: bool = False,
    ) -> dict[str, Any]:
        url = self._info.server.rstrip("/") + path
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        async with self._open().request(
            method, url, params=params, data=data, headers=headers
        ) as resp:
            if resp.status == 401 and self._relogin is not None and not _retried:
                await self.close()
                self._info = await self._relogin()
                return await self.request(
                    method, path, params=params, body=body, content_type=content_type, _retried=True
                )
            text = await resp.text()
            try:
                payload: Any = json.loads(text) if text.strip() else {}
            except ValueError:  # not JSON: a proxy's error page, say
                payload = {}
            if resp.status >= 400:
                payload = payload if isinstance(payload, dict) else {}
                raise ApiError(
                    resp.status,
                    payload.get("reason") or resp.reason or "",
                    payload.get("message") or text[:500],
                    method=method,
                    path=path,
                )
            return payload if isinstance(payload, dict) else {}

    # -- verbs --------------------------------------------------------------------------

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        """The object, or None if it does not exist."""
        try:
            return await self.request("GET", path_for(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self, api_version: str, kind: str, namespace: str | None, *, selector: str | None = None
    ) -> list[dict[str, Any]]:
        params = {"labelSelector": selector} if selector else None
        answer = await self.request("GET", path_for(api_version, kind, namespace), params=params)
        return list(answer.get("items") or [])

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply `obj` (created if absent); returns the object as stored."""
        api_version, kind = obj["apiVersion"], obj["kind"]
        meta = obj["metadata"]
        path = path_for(api_version, kind, meta.get("namespace"), meta["name"])
        try:
            return await self.request(
                "PATCH",
                path,
                params={"fieldManager": FIELD_MANAGER, "force": "true"},
                body=obj,
                content_type="application/apply-patch+yaml",
            )
        except ApiError as exc:
            if exc.status != 404:
                raise
        collection = path_for(api_version, kind, meta.get("namespace"))
        return await self.request(
            "POST", collection, params={"fieldManager": FIELD_MANAGER}, body=obj
        )

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create `obj` unless an object of that name exists: None then, and it is untouched.

        Needs only the ``create`` verb: an existing object answers 409 AlreadyExists, so the
        caller never reads it (the operator's cluster secrets, which must never change).
        """
        meta = obj["metadata"]
        collection = path_for(obj["apiVersion"], obj["kind"], meta.get("namespace"))
        try:
            return await self.request(
                "POST", collection, params={"fieldManager": FIELD_MANAGER}, body=obj
            )
        except ApiError as exc:
            if exc.status == 409:
                return None
            raise

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        """Delete the object; False if it did not exist (or its kind is not served)."""
        try:
            await self.request("DELETE", path_for(api_version, kind, namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def merge_patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch the object itself: sets only the keys `patch` names (an annotation,
        without taking the other fields' ownership as an apply would)."""
        return await self.request(
            "PATCH",
            path_for(api_version, kind, namespace, name),
            body=patch,
            content_type="application/merge-patch+json",
        )

    async def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch the status subresource."""
        return await self.request(
            "PATCH",
            path_for(api_version, kind, namespace, name, "status"),
            body={"status": status},
            content_type="application/merge-patch+json",
        )
