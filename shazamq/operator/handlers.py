"""Make it so: the Kopf handlers that apply what `resources` says should exist.

Importing this module registers the handlers in Kopf's default registry;
`shazamq.operator.__main__` runs them. The layering: `resources` decides what should exist
(pure), `status` decides what to report (pure), `kube` talks to the API; this module only
sequences them.

- create/update/resume of a ShazamqCluster -> `reconcile()`: validate, create the cluster
  secret if it does not exist yet (a random value, never changed afterwards: a new value
  would split the metadata quorum), then apply every owned object in order (ConfigMap,
  Services, StatefulSet, PodDisruptionBudget, ServiceMonitor, where "None" means delete),
  then write the status. A bad spec becomes a
  ``Reconciled=False`` condition, phase ``Failed`` and a Warning event, never a crash loop;
  an object the API rejects is reported the same way; only transient API errors are retried.
- an event on an owned object (found by its ``app.kubernetes.io/managed-by`` label and the
  owner's uid) -> `child_event()`: if the object was deleted or no longer contains what we
  rendered (drift), apply it again; a StatefulSet's changes also refresh the status.
  ConfigMaps, Services, StatefulSets and PodDisruptionBudgets are watched; a
  ServiceMonitor (a kind that may not be served) is restored at the next reconciliation.
- The index ``clusters`` keeps the latest body of every ShazamqCluster, so an owned
  object's event can find its owner without an API call.

Every reconciliation of one cluster holds that cluster's lock, so the owner's handlers and
its children's events never apply concurrently.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any

import kopf

from shazamq.operator.crd import API_VERSION, GROUP, KIND, PLURAL, VERSION
from shazamq.operator.kube import Api, ApiError, login
from shazamq.operator.metrics import MetricsServer, OperatorMetrics
from shazamq.operator.resources import (
    CLUSTER_LABEL,
    MANAGED_BY,
    Child,
    ClusterModel,
    ModelError,
)
from shazamq.operator.status import RECONCILE_OK, Outcome, cluster_status, invalid_status

CLUSTERS = (GROUP, VERSION, PLURAL)
MANAGED = {"app.kubernetes.io/managed-by": MANAGED_BY}
ANNOTATION_PREFIX = "shazamq.io"


def configure(settings: kopf.OperatorSettings) -> None:
    """Kopf settings of this operator (also used by tests, which run it in-process)."""
    # Kopf's own bookkeeping goes to annotations, so the status holds only our schema.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/finalizer"
    # Our events are explicit (kopf.event); of the logs, Kopf turns only errors into events
    # (our own problems are logged as warnings, next to the explicit events).
    settings.posting.level = logging.ERROR
    settings.peering.name = "shazamq-operator"
    settings.peering.mandatory = False
    settings.networking.request_timeout = 60


# -- lifecycle ------------------------------------------------------------------------------


@kopf.on.login()
async def authenticate(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """Kopf and our API client log in the same way (service account, else kubeconfig)."""
    return await login(settings)


@kopf.on.startup()
async def startup(memo: kopf.Memo, settings: kopf.OperatorSettings, **_: Any) -> None:
    configure(settings)
    memo.api = await Api.connect(settings)
    memo.metrics = memo.get("metrics") or OperatorMetrics()
    memo.locks = {}
    memo.statuses = {}
    port = memo.get("metrics_port")
    memo.metrics_server = None
    if port is not None:
        memo.metrics_server = MetricsServer(memo.metrics, port=port)
        await memo.metrics_server.start()


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if memo.get("metrics_server") is not None:
        await memo.metrics_server.stop()
    if memo.get("api") is not None:
        await memo.api.close()


# -- the owner ------------------------------------------------------------------------------


@kopf.index(*CLUSTERS)
def clusters(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """(namespace, name) -> the latest body of every ShazamqCluster."""
    return {(namespace, name): copy.deepcopy(dict(body))}


@kopf.on.resume(*CLUSTERS)
@kopf.on.create(*CLUSTERS)
@kopf.on.update(*CLUSTERS)
async def reconcile_cluster(
    body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any
) -> None:
    await reconcile(copy.deepcopy(dict(body)), memo, logger)


@kopf.on.event(*CLUSTERS)
def cluster_event(
    event: Mapping[str, Any], namespace: str, name: str, memo: kopf.Memo, **_: Any
) -> None:
    """Forget a deleted cluster (its phase in the metrics, its last status)."""
    if event.get("type") == "DELETED":
        memo.metrics.set_phase(namespace, name, None)
        memo.statuses.pop((namespace, name), None)


def _lock(memo: kopf.Memo, namespace: str, name: str) -> asyncio.Lock:
    return memo.locks.setdefault((namespace, name), asyncio.Lock())


async def reconcile(body: dict[str, Any], memo: kopf.Memo, logger: logging.Logger) -> None:
    """Apply everything a ShazamqCluster implies, then report how it went in its status."""
    meta = body.get("metadata") or {}
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    metrics: OperatorMetrics = memo.metrics
    result = "error"
    started = time.monotonic()
    async with _lock(memo, namespace, name):
        try:
            try:
                model = ClusterModel.from_resource(body)
            except ModelError as exc:
                result = "invalid_spec"
                await _report_invalid(body, memo, logger, exc)
                return
            try:
                sts = await apply_children(memo.api, model, body, logger)
            except ApiError as exc:
                if exc.retriable:
                    raise kopf.TemporaryError(str(exc), delay=15) from exc
                result = "apply_failed"
                logger.warning("Could not apply the cluster's objects: %s", exc)
                kopf.event(body, type="Warning", reason="ApplyFailed", message=str(exc))
                outcome = Outcome(False, "ApplyFailed", exc.message)
                await refresh_status(memo, body, model, outcome=outcome)
                return
            result = "success"
            await refresh_status(memo, body, model, sts=sts, outcome=RECONCILE_OK)
        finally:
            metrics.reconciliations.labels(result=result).inc()
            metrics.duration.observe(time.monotonic() - started)


async def apply_children(
    api: Api, model: ClusterModel, owner: Mapping[str, Any], logger: logging.Logger
) -> dict[str, Any] | None:
    """Apply desired state, in order; returns the StatefulSet as the API stored it."""
    await ensure_cluster_secret(api, model, logger)
    sts = None
    for child in model.children():
        stored = await apply_child(api, model, child, owner, logger)
        if child.kind == "StatefulSet":
            sts = stored
    return sts


async def ensure_cluster_secret(api: Api, model: ClusterModel, logger: logging.Logger) -> None:
    """Create the cluster secret with a random value unless it exists; never change it.

    Not a `Child`: it is created, never applied, so neither a reconciliation nor drift repair
    can rotate it (brokers with different secrets cannot talk to each other). A Secret of that
    name made beforehand, by hand, is used as it is.
    """
    secret = model.generate_cluster_secret(secrets.token_urlsafe(32))
    if await api.create(secret) is not None:
        logger.info("Created Secret %s (the cluster secret)", model.cluster_secret_name)


async def apply_child(
    api: Api,
    model: ClusterModel,
    child: Child,
    owner: Mapping[str, Any],
    logger: logging.Logger,
) -> dict[str, Any] | None:
    """Make one owned object what it should be: apply it, or delete it when it is None."""
    if child.desired is None:
        if await api.delete(child.api_version, child.kind, model.namespace, child.name):
            logger.info("Deleted %s %s", child.kind, child.name)
        return None
    try:
        return await api.apply(child.desired)
    except ApiError as exc:
        if child.kind == "ServiceMonitor" and exc.status == 404:
            # The Prometheus Operator's CRD is not installed: report it, keep the rest.
            logger.warning("ServiceMonitor not applied: %s", exc)
            kopf.event(
                owner,
                type="Warning",
                reason="ServiceMonitorUnavailable",
                message="monitoring.serviceMonitor is enabled but the ServiceMonitor kind "
                "(monitoring.coreos.com/v1) is not served by this cluster",
            )
            return None
        raise


async def _report_invalid(
    body: Mapping[str, Any], memo: kopf.Memo, logger: logging.Logger, exc: ModelError
) -> None:
    meta = body.get("metadata") or {}
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    logger.warning("Invalid ShazamqCluster: %s", exc)
    kopf.event(body, type="Warning", reason="InvalidSpec", message=str(exc))
    previous = memo.statuses.get((namespace, name)) or body.get("status")
    status = invalid_status(
        error=str(exc), reason="InvalidSpec", previous=previous, generation=meta.get("generation")
    )
    await _write_status(memo, body, status, previous)


async def refresh_status(
    memo: kopf.Memo,
    body: Mapping[str, Any],
    model: ClusterModel,
    *,
    sts: Mapping[str, Any] | type[Ellipsis] | None = ...,
    outcome: Outcome | None = None,
) -> None:
    """Recompute the status from the StatefulSet and the pods; write it if it changed."""
    api: Api = memo.api
    if sts is ...:
        sts = await api.get("apps/v1", "StatefulSet", model.namespace, model.statefulset_name)
    try:
        pods = await api.list("v1", "Pod", model.namespace, selector=model.selector)
    except ApiError:
        pods = []
    previous = memo.statuses.get((model.namespace, model.name)) or body.get("status")
    status = cluster_status(
        desired_replicas=model.spec.replicas,
        selector=model.selector,
        brokers=model.brokers(),
        sts=sts,
        pods=pods,
        previous=previous,
        outcome=outcome,
        generation=model.generation,
    )
    await _write_status(memo, body, status, previous)


async def _write_status(
    memo: kopf.Memo,
    body: Mapping[str, Any],
    status: dict[str, Any],
    previous: Mapping[str, Any] | None,
) -> None:
    meta = body.get("metadata") or {}
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    memo.metrics.set_phase(namespace, name, status.get("phase"))
    if previous is not None and _without_kopf(previous) == status:
        return
    await memo.api.patch_status(API_VERSION, KIND, namespace, name, status)
    memo.statuses[namespace, name] = status
    old_phase = (previous or {}).get("phase")
    if status.get("phase") != old_phase:
        phase = status.get("phase")
        kopf.event(
            body,
            type="Warning" if phase in ("Failed", "Degraded") else "Normal",
            reason=f"Phase{phase}",
            message=f"Phase changed from {old_phase or 'none'} to {phase}",
        )


def _without_kopf(status: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in status.items() if k != "kopf"}


# -- owned objects --------------------------------------------------------------------------


def _owned_by(body: Mapping[str, Any], uid: str | None) -> bool:
    refs = (body.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


def contains(actual: Any, desired: Any) -> bool:
    """Whether `actual` holds everything `desired` says (extra keys, such as defaults, allowed)."""
    if isinstance(desired, Mapping):
        return isinstance(actual, Mapping) and all(
            k in actual and contains(actual[k], v) for k, v in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(desired)
            and all(contains(a, d) for a, d in zip(actual, desired, strict=True))
        )
    return bool(actual == desired)


@kopf.on.event("", "v1", "configmaps", labels=MANAGED, param="ConfigMap")
@kopf.on.event("", "v1", "services", labels=MANAGED, param="Service")
@kopf.on.event("apps", "v1", "statefulsets", labels=MANAGED, param="StatefulSet")
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=MANAGED, param="PodDisruptionBudget")
async def child_event(
    event: Mapping[str, Any],
    body: kopf.Body,
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    param: str,
    clusters: kopf.Index,  # type: ignore[type-arg]
    memo: kopf.Memo,
    logger: logging.Logger,
    **_: Any,
) -> None:
    """Repair an owned object that was deleted or changed; follow the StatefulSet's status."""
    owner_name = labels.get(CLUSTER_LABEL)
    store = clusters.get((namespace, owner_name)) if owner_name else None
    owner = next(iter(store), None) if store else None
    if owner is None or (owner.get("metadata") or {}).get("deletionTimestamp"):
        return
    actual = copy.deepcopy(dict(body))
    if not _owned_by(actual, (owner.get("metadata") or {}).get("uid")):
        return
    deleted = event.get("type") == "DELETED"
    async with _lock(memo, namespace, owner_name):  # type: ignore[arg-type]
        try:
            model = ClusterModel.from_resource(owner)
        except ModelError:
            return  # reported by the owner's handler; nothing valid to restore
        child = model.child(param, name)
        if child is None or child.desired is None:
            return
        stored: Mapping[str, Any] | None = None if deleted else actual
        if deleted or not contains(actual, child.desired):
            what = "deleted" if deleted else "changed"
            logger.info("%s %s was %s; applying it again", param, name, what)
            try:
                stored = await memo.api.apply(child.desired)
            except ApiError as exc:
                if exc.retriable:
                    raise kopf.TemporaryError(str(exc), delay=15) from exc
                logger.warning("Could not restore %s %s: %s", param, name, exc)
                return
            kopf.event(
                owner,
                type="Normal",
                reason="DriftRepaired",
                message=f"{param} {name} was {what} outside the operator; restored",
            )
        if param == "StatefulSet":
            await refresh_status(memo, owner, model, sts=stored)
