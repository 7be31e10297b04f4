"""Make it so: the Kopf handlers that apply what `resources` says should exist.

Importing this module registers the handlers in Kopf's default registry;
`shazamq.operator.__main__` runs them. The layering: `resources` decides what should exist
(pure), `status` decides what to report (pure), `kube` talks to the API; this module only
sequences them.

- create/update/resume of a ShazamqCluster -> `reconcile()`: validate, freeze the metadata
  quorum's voters if they are not frozen yet (`freeze_voters()`: the annotation
  ``shazamq.io/quorum-voters``, written once, since the quorum cannot change its voters),
  create the cluster secret if it does not exist yet (a random value, never changed
  afterwards: a new value would split the metadata quorum), then apply every owned object
  in order (ConfigMap, Services, StatefulSet, PodDisruptionBudget, ServiceMonitor,
  PrometheusRule, the Grafana dashboard's ConfigMap, where "None" means delete), then
  write the status. A bad spec (scaling below a frozen voter
  included) becomes a ``Reconciled=False`` condition, phase ``Failed`` and a Warning event,
  never a crash loop, and leaves the objects as they are; an object the API rejects is
  reported the same way; only transient API errors are retried.
- an event on an owned object (found by its ``app.kubernetes.io/managed-by`` label and the
  owner's uid) -> `child_event()`: if the object was deleted or no longer contains what we
  rendered (drift), apply it again; a StatefulSet's changes also refresh the status.
  ConfigMaps, Services, StatefulSets and PodDisruptionBudgets are watched; a
  ServiceMonitor or PrometheusRule (kinds that may not be served) is restored at the next
  reconciliation.
- every few seconds, for every cluster seen (`cluster_event` keeps ``memo.bodies``),
  `roll_loop()` runs `roll_step()`: the rolling restart. The StatefulSet's
  update strategy is ``OnDelete``; the operator reads the cluster (`probe`), asks the pure
  planner (`roll.plan`) for the next broker to restart or the reason to wait, records its
  progress in the annotation ``shazamq.io/roll`` *before* deleting the pod (so an operator
  restarted mid-roll keeps waiting for that broker and never restarts one twice), and
  reports the roll in ``status.roll``. The annotation ``shazamq.io/pause-reconcile: "true"``
  pauses it. The same tick reads the active controller for ``status.brokers[].leader``.
- The same tick records each broker's load counters (the probe's scrape) and follows a
  restore from the bucket (``status.restore``, phase ``Restoring``, condition
  ``Restored``, events ``Restoring`` and ``Restored``: `shazamq.operator.restore`); then
  `autoscale_step()` runs the autoscaler (``spec.autoscaling``) every AUTOSCALE_INTERVAL:
  the pure `autoscale.decide()` gives the replicas the load asks for, and a change is made
  by patching ``spec.replicas``, so it goes the way of any scaling (`track_scaling`,
  `scale_step`: partitions move, departing brokers drain first), with an event naming
  the reason. It stands down while a HorizontalPodAutoscaler (or KEDA's) targets the
  cluster.
- The same loop rotates the operator's own password when its Secret asks
  (``shazamq.io/force-renew``; `credentials_step`, `shazamq.operator.rotation`).
- The index ``clusters`` keeps the latest body of every ShazamqCluster, so an owned
  object's event can find its owner without an API call. Until the index holds the frozen
  voters, the ones the owner's handler wrote (``memo.voters``) stand in.
- A watch event's body can be several changes old (Kopf hands them over in order, and each
  status or annotation we write is one more): whatever is applied is rendered from the
  cluster as stored (`stored_cluster()`): a reconciliation and a roll tick read it first,
  an owned object's event before it puts anything back.

Every reconciliation of one cluster holds that cluster's lock, so the owner's handlers and
its children's events never apply concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import dataclasses
import functools
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any

import kopf

from shazamq.config import ShazamqClusterSpec
from shazamq.operator.admin import (
    OPERATOR_USER,
    AdminError,
    Connection,
    alter_broker_configs,
    can_log_in,
    describe_broker_configs,
    set_scram_credential,
)
from shazamq.operator.autoscale import BrokerLoad, Policy, Recommendation, decide
from shazamq.operator.crd import API_VERSION, GROUP, KIND, PLURAL, VERSION
from shazamq.operator.credentials import CredentialsError, connection_of, secrets_needed
from shazamq.operator.dynamic import classify, desired
from shazamq.operator.kube import Api, ApiError, login
from shazamq.operator.metrics import MetricsServer, OperatorMetrics
from shazamq.operator.probe import ProbeError, read_cluster
from shazamq.operator.reassign import (
    ReassignError,
    alter_reassignments,
    elect_preferred_leaders,
    list_reassignments,
)
from shazamq.operator.resources import (
    CLUSTER_LABEL,
    CONFIG_KEY,
    MANAGED_BY,
    SCALE_ANNOTATION,
    VOTERS_ANNOTATION,
    Child,
    ClusterModel,
    ModelError,
    config_of_toml,
    format_scale,
    format_voter_ids,
    voter_ids_of_config,
)
from shazamq.operator.restore import RestoreProgress, restore_status
from shazamq.operator.roll import Broker, ClusterView, Decision, RollProgress, plan
from shazamq.operator.rotation import (
    ROTATED_ANNOTATION,
    SCRAM_MECHANISM_TYPES,
    ScramCredential,
    next_secret,
    next_secret_name,
    password_of,
    rotation_requested,
    scram_upsertion,
)
from shazamq.operator.scale import plan as plan_scaling
from shazamq.operator.status import (
    RECONCILE_OK,
    Outcome,
    cluster_status,
    invalid_status,
    now_iso,
    pod_ready,
)

CLUSTERS = (GROUP, VERSION, PLURAL)
MANAGED = {"app.kubernetes.io/managed-by": MANAGED_BY}
ANNOTATION_PREFIX = "shazamq.io"
DIFFBASE_ANNOTATION = f"{ANNOTATION_PREFIX}/last-handled-configuration"  # Kopf's diff base
ROLL_ANNOTATION = "shazamq.io/roll"  # the roll's progress (`RollProgress`, JSON)
PAUSE_ANNOTATION = "shazamq.io/pause-reconcile"  # "true" pauses the roll
# the digest of the dynamic settings every broker is known to run (`config_step`)
DYNAMIC_ANNOTATION = "shazamq.io/dynamic-config"
REVISION_LABEL = "controller-revision-hash"  # set on pods by the StatefulSet controller
ROLL_INTERVAL = 3.0  # seconds between two roll steps of one cluster
AUTOSCALE_INTERVAL = 15.0  # seconds between two decisions of one cluster's autoscaler


def configure(settings: kopf.OperatorSettings) -> None:
    """Kopf settings of this operator (also used by tests, which run it in-process)."""
    # Kopf's own bookkeeping goes to annotations, so the status holds only our schema.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key=DIFFBASE_ANNOTATION.removeprefix(f"{ANNOTATION_PREFIX}/")
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
    memo.voters = {}  # (namespace, name) -> the VOTERS_ANNOTATION this operator wrote
    memo.rolls = {}  # (namespace, name) -> status.roll (camelCase dict) or None
    memo.scalings = {}  # (namespace, name) -> status.scaling (camelCase dict) or None
    memo.scales = {}  # (namespace, name) -> the SCALE_ANNOTATION this operator last wrote
    memo.controllers = {}  # (namespace, name) -> the active controller's id, if known
    memo.mirrors = {}  # (namespace, name) -> status.mirrorSources as the brokers report them
    memo.bodies = {}  # (namespace, name) -> the latest body of each ShazamqCluster
    memo.loads = {}  # (namespace, name) -> [BrokerLoad] of the last metrics window
    memo.autoscalers = {}  # (namespace, name) -> the autoscaler's memory (`_Autoscaler`)
    memo.autoscaling = {}  # (namespace, name) -> status.autoscaling, or None to remove it
    memo.restores = {}  # (namespace, name) -> status.restore as last computed
    memo.dynamic = {}  # (namespace, name) -> `_DynamicSync`: brokers given the dynamic settings
    memo.dynamic_status = {}  # (namespace, name) -> status.dynamicConfig as last computed
    if memo.get("clock") is None:
        memo.clock = time.monotonic
    if memo.get("hpa_finder") is None:
        memo.hpa_finder = find_hpa
    memo.contexts = {}  # "post" -> the context of Kopf's handlers (its event poster)
    if memo.get("probe") is None:
        memo.probe = functools.partial(probe_cluster, memo)
    if memo.get("reassigner") is None:
        memo.reassigner = Reassigner()
    if memo.get("configurer") is None:
        memo.configurer = BrokerConfigs()
    if memo.get("connections") is None:
        memo.connections = functools.partial(cluster_connection, memo)
    if memo.get("logins") is None:
        memo.logins = OperatorLogins()
    memo.rotation_refused = set()  # (namespace, name) told once that PLAIN cannot rotate
    memo.roll_task = asyncio.create_task(roll_loop(memo), name="shazamq-roll")
    port = memo.get("metrics_port")
    memo.metrics_server = None
    if port is not None:
        memo.metrics_server = MetricsServer(memo.metrics, port=port)
        await memo.metrics_server.start()


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("roll_task")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
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
    """Remember each cluster for the roll loop; forget a deleted one (its phase in the
    metrics, its last status)."""
    # Kopf's event poster lives in its handlers' context: the roll loop posts through it.
    # (memo is copied per object: the shared dict carries it to the loop)
    memo.contexts["post"] = contextvars.copy_context()
    body = event.get("object")
    if event.get("type") != "DELETED" and isinstance(body, Mapping):
        memo.bodies[namespace, name] = copy.deepcopy(dict(body))
    if event.get("type") == "DELETED":
        memo.bodies.pop((namespace, name), None)
        memo.metrics.set_phase(namespace, name, None)
        memo.statuses.pop((namespace, name), None)
        memo.voters.pop((namespace, name), None)
        memo.rolls.pop((namespace, name), None)
        memo.scalings.pop((namespace, name), None)
        memo.scales.pop((namespace, name), None)
        memo.controllers.pop((namespace, name), None)
        memo.mirrors.pop((namespace, name), None)
        memo.loads.pop((namespace, name), None)
        memo.autoscalers.pop((namespace, name), None)
        memo.autoscaling.pop((namespace, name), None)
        memo.restores.pop((namespace, name), None)
        memo.dynamic.pop((namespace, name), None)
        memo.dynamic_status.pop((namespace, name), None)


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
            stored = await stored_cluster(memo, namespace, name)
            if stored is None:
                result = "success"  # deleted meanwhile: nothing left to apply
                return
            body = stored
            model: ClusterModel | None = None
            try:
                model = ClusterModel.from_resource(body)
                if not model.voters_frozen:
                    body = await freeze_voters(memo, model, body, logger)
                    # Again, with the frozen voters: the running ones may refuse this spec.
                    model = ClusterModel.from_resource(body)
                body = await track_scaling(memo, model, body)
                model = ClusterModel.from_resource(body)
                await note_config_change(memo, model, body, logger)
                sts = await apply_children(memo.api, model, body, logger)
            except ModelError as exc:
                result = "invalid_spec"
                await _report_invalid(body, memo, logger, exc)
                return
            except ApiError as exc:
                if exc.retriable:
                    raise kopf.TemporaryError(str(exc), delay=15) from exc
                assert model is not None  # the API is called only once the spec is valid
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


async def stored_cluster(memo: kopf.Memo, namespace: str, name: str) -> dict[str, Any] | None:
    """The ShazamqCluster as the API stores it now (None: gone).

    Kopf hands each handler the body of one watch event, in order; when events come faster
    than they are handled (every status or annotation we write is one), that body can be
    several changes old, and rendering from it would undo a newer spec (a version patch
    during a scale-down put the old image back). What is applied is always the newest."""
    try:
        return await memo.api.get(API_VERSION, KIND, namespace, name)
    except ApiError as exc:
        raise kopf.TemporaryError(str(exc), delay=15) from exc


async def freeze_voters(
    memo: kopf.Memo, model: ClusterModel, body: dict[str, Any], logger: logging.Logger
) -> dict[str, Any]:
    """Record the quorum's voters in VOTERS_ANNOTATION; returns `body` with it.

    Written before any object is applied, so no pod ever runs with voters that are not
    recorded. The voters are those of the running ConfigMap when there is one (a cluster
    made by an operator that did not freeze them, or whose annotation was removed: its
    brokers' quorum is what must not change, whatever the spec says now), else the model's
    (the first min(3, replicas) pods). With no voters (``replicas: 0``, nothing ever ran)
    nothing is frozen yet. A merge patch, so the rest of the resource is left alone.
    """
    api: Api = memo.api
    ids = await running_voter_ids(api, model) or model.voter_ids
    if not ids:
        return body
    value = format_voter_ids(ids)
    patch = {"metadata": {"annotations": {VOTERS_ANNOTATION: value}}}
    await api.merge_patch(API_VERSION, KIND, model.namespace, model.name, patch)
    memo.voters[model.namespace, model.name] = value
    logger.info("Froze the metadata quorum's voters: %s=%s", VOTERS_ANNOTATION, value)
    kopf.event(
        body,
        type="Normal",
        reason="VotersFrozen",
        message=f"The metadata quorum's voters are the pods of ordinals {value} "
        f"(annotation {VOTERS_ANNOTATION}); scaling keeps them",
    )
    return _with_voters(body, value)


async def track_scaling(
    memo: kopf.Memo, model: ClusterModel, body: dict[str, Any]
) -> dict[str, Any]:
    """Record a change of `spec.replicas` of a running cluster in SCALE_ANNOTATION
    (``"<from>-><to>"``) before anything is applied, so a scale-down keeps the StatefulSet's
    size until `scale_step()` has drained the departing brokers, and a scale-up is followed
    by a reassignment onto the new ones. Returns `body` with the annotation.

    "From" is the spec Kopf last handled (its diff base), not the StatefulSet's size: a
    StatefulSet resized by hand is drift, put back, not a scaling."""
    api: Api = memo.api
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    stored = annotations.get(SCALE_ANNOTATION)
    previous = _handled_replicas(annotations.get(DIFFBASE_ANNOTATION))
    if model.scaling is not None:
        value = format_scale(max(model.scaling[0], previous or 0), model.spec.replicas)
    elif previous and previous != model.spec.replicas:
        sts = await api.get("apps/v1", "StatefulSet", model.namespace, model.statefulset_name)
        if sts is None:
            return body  # nothing runs yet: nothing to move
        value = format_scale(previous, model.spec.replicas)
    else:
        return body
    if value == stored:
        return body
    patch = {"metadata": {"annotations": {SCALE_ANNOTATION: value}}}
    await api.merge_patch(API_VERSION, KIND, model.namespace, model.name, patch)
    memo.scales[model.namespace, model.name] = value
    out = copy.deepcopy(body)
    out.setdefault("metadata", {}).setdefault("annotations", {})[SCALE_ANNOTATION] = value
    return out


def _handled_replicas(diffbase: Any) -> int | None:
    """`spec.replicas` of the spec Kopf last handled (its diff base annotation), if known."""
    try:
        spec = json.loads(diffbase).get("spec") or {}
    except (TypeError, ValueError, AttributeError):
        return None
    default = ShazamqClusterSpec().replicas
    value = spec.get("replicas", default) if isinstance(spec, dict) else None
    return value if isinstance(value, int) else None


async def running_voter_ids(api: Api, model: ClusterModel) -> tuple[int, ...] | None:
    """The voters named by this cluster's ConfigMap, if it exists and is ours."""
    cm = await api.get("v1", "ConfigMap", model.namespace, model.config_map_name)
    if cm is None or not _owned_by(cm, model.uid):
        return None
    toml = (cm.get("data") or {}).get(CONFIG_KEY)
    return voter_ids_of_config(toml) if isinstance(toml, str) else None


def _with_voters(body: Mapping[str, Any], value: str | None) -> dict[str, Any]:
    """A copy of `body` whose VOTERS_ANNOTATION is `value` unless it has one already."""
    out = copy.deepcopy(dict(body))
    if value is not None:
        meta = out.setdefault("metadata", {})
        annotations = meta["annotations"] = dict(meta.get("annotations") or {})
        annotations.setdefault(VOTERS_ANNOTATION, value)
    return out


async def apply_children(
    api: Api, model: ClusterModel, owner: Mapping[str, Any], logger: logging.Logger
) -> dict[str, Any] | None:
    """Apply desired state, in order; returns the StatefulSet as the API stored it."""
    await ensure_cluster_secret(api, model, logger)
    if model.auth_enabled:
        await ensure_operator_secret(api, model, logger)
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


async def ensure_operator_secret(api: Api, model: ClusterModel, logger: logging.Logger) -> None:
    """Create the operator's credentials on this cluster (a random password) unless the
    Secret exists; never change it (the running brokers know the password it holds)."""
    secret = model.generate_operator_secret(secrets.token_urlsafe(32))
    if await api.create(secret) is not None:
        logger.info("Created Secret %s (the operator's credentials)", model.operator_secret_name)


async def note_config_change(
    memo: kopf.Memo, model: ClusterModel, body: Mapping[str, Any], logger: logging.Logger
) -> None:
    """Say what a change of the rendered configuration does: its dynamic settings go to
    the running brokers (`config_step`), the rest rolls them."""
    cm = await memo.api.get("v1", "ConfigMap", model.namespace, model.config_map_name)
    toml = ((cm or {}).get("data") or {}).get(CONFIG_KEY)
    old = config_of_toml(toml) if isinstance(toml, str) and _owned_by(cm or {}, model.uid) else None
    if old is None:
        return
    change = classify(old, model.config)
    if change.dynamic:
        # what the brokers run until `config_step` has given them the new values
        memo.dynamic.setdefault((model.namespace, model.name), _DynamicSync(dynamic_digest(old)))
        settings = ", ".join(f"{k}={v}" for k, v in sorted(change.dynamic.items()))
        logger.info("Dynamic settings changed: %s", settings)
        kopf.event(
            body,
            type="Normal",
            reason="ConfigChanged",
            message=f"Applied to the running brokers without a restart: {settings}",
        )
    if change.restart:
        keys = ", ".join(change.restart[:5]) + (" ..." if len(change.restart) > 5 else "")
        kopf.event(
            body,
            type="Normal",
            reason="ConfigChanged",
            message=f"The brokers are rolled for: {keys}",
        )


# Kinds of the Prometheus Operator, which may not be served, and the spec field asking for each.
_PROMETHEUS_OPERATOR_KINDS = {
    "ServiceMonitor": "monitoring.serviceMonitor",
    "PrometheusRule": "monitoring.prometheusRule",
}


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
        field = _PROMETHEUS_OPERATOR_KINDS.get(child.kind)
        if field is not None and exc.status == 404:
            # The Prometheus Operator's CRDs are not installed: report it, keep the rest.
            logger.warning("%s not applied: %s", child.kind, exc)
            kopf.event(
                owner,
                type="Warning",
                reason=f"{child.kind}Unavailable",
                message=f"{field} is enabled but the {child.kind} kind "
                f"({child.api_version}) is not served by this cluster",
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
        controller=memo.controllers.get((model.namespace, model.name)),
        roll=memo.rolls.get((model.namespace, model.name)),
        scaling=memo.scalings.get((model.namespace, model.name)),
        mirror_sources=memo.mirrors.get((model.namespace, model.name)),
        autoscaling=memo.autoscaling.get((model.namespace, model.name), ...),
        restore=memo.restores.get((model.namespace, model.name), ...),
        dynamic_config=memo.dynamic_status.get((model.namespace, model.name), ...),
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
        # through _post_event: the roll loop writes statuses too, outside Kopf's handlers
        _post_event(
            memo,
            body,
            "Warning" if phase in ("Failed", "Degraded") else "Normal",
            f"Phase{phase}",
            f"Phase changed from {old_phase or 'none'} to {phase}",
        )


def _without_kopf(status: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in status.items() if k != "kopf"}


# -- rolling restarts -----------------------------------------------------------------------


async def cluster_connection(memo: kopf.Memo, model: ClusterModel) -> Connection:
    """How the operator logs in to `model`'s listener (`shazamq.operator.credentials`),
    from the Secrets it names; CredentialsError when one is missing. Tests put their own
    in ``memo.connections``."""
    api: Api = memo.api
    tls_name, auth_name = secrets_needed(model)
    tls = await api.get("v1", "Secret", model.namespace, tls_name) if tls_name else None
    auth = await api.get("v1", "Secret", model.namespace, auth_name) if auth_name else None
    return connection_of(model, tls, auth)


async def probe_cluster(
    memo: kopf.Memo, model: ClusterModel, live: list[tuple[int, str]], partitions: bool
) -> ClusterView:
    """The cluster's view of itself (`shazamq.operator.probe`); tests put their own in
    ``memo.probe``. Without credentials (a Secret missing) only the metrics are read."""
    connection: Connection | None = None
    if partitions:
        try:
            connection = await memo.connections(model)
        except (CredentialsError, ApiError) as exc:
            # the roll then says what it waits for; a log line every tick would only repeat it
            logging.getLogger("shazamq.operator.roll").debug("Metrics only: %s", exc)
    return await read_cluster(
        brokers=live,
        metrics_port=model.spec.service.metrics_port,
        kafka_port=model.spec.service.port,
        connection=connection,
        default_min_isr=model.spec.replication.min_insync_replicas,
        partitions=partitions,
    )


async def roll_loop(memo: kopf.Memo) -> None:
    """Every ROLL_INTERVAL, one roll step per known cluster. Our own task rather than a
    Kopf timer, which would put a finalizer on every ShazamqCluster."""
    logger = logging.getLogger("shazamq.operator.roll")
    while True:
        await asyncio.sleep(memo.get("roll_interval") or ROLL_INTERVAL)
        for key in list(memo.bodies):
            try:
                # Not the last event's body, which may be behind (see `stored_cluster`).
                body = await memo.api.get(API_VERSION, KIND, *key)
                if body is None:
                    continue
                await roll_step(copy.deepcopy(body), memo, logger)
                await config_step(copy.deepcopy(body), memo, logger)
                await scale_step(copy.deepcopy(body), memo, logger)
                await autoscale_step(copy.deepcopy(body), memo, logger)
                await credentials_step(copy.deepcopy(body), memo, logger)
            except ApiError as exc:
                logger.warning("Roll step of %s/%s failed: %s", *key, exc)
            except Exception:
                logger.exception("Roll step of %s/%s failed", *key)


def brokers_of(model: ClusterModel, pods: list[dict[str, Any]], revision: str) -> list[Broker]:
    """Each broker pod's state for the planner: a pod is outdated when the StatefulSet
    controller labelled it with another revision than the update revision."""
    by_name = {(p.get("metadata") or {}).get("name"): p for p in pods}
    out = []
    for i in range(model.spec.replicas):
        name = f"{model.name}-{i}"
        pod = by_name.get(name)
        meta = (pod or {}).get("metadata") or {}
        exists = pod is not None and not meta.get("deletionTimestamp")
        hash_ = (meta.get("labels") or {}).get(REVISION_LABEL)
        out.append(
            Broker(
                id=i,
                pod=name,
                exists=exists,
                ready=exists and pod_ready(pod or {}),
                outdated=exists and hash_ is not None and hash_ != revision,
            )
        )
    return out


async def roll_step(body: dict[str, Any], memo: kopf.Memo, logger: logging.Logger) -> None:
    """One step of the rolling restart (see the module docstring): restart a broker, or
    record why not, and refresh the status."""
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return
    try:
        model = ClusterModel.from_resource(body)
    except ModelError:
        return  # reported by the owner's handler
    key = (model.namespace, model.name)
    api: Api = memo.api
    async with _lock(memo, *key):
        sts = await api.get("apps/v1", "StatefulSet", model.namespace, model.statefulset_name)
        revision = ((sts or {}).get("status") or {}).get("updateRevision")
        if sts is None or not revision:
            return
        pods = await api.list("v1", "Pod", model.namespace, selector=model.selector)
        brokers = brokers_of(model, pods, revision)
        annotations = meta.get("annotations") or {}
        stored = annotations.get(ROLL_ANNOTATION)
        progress = RollProgress.loads(stored).for_revision(revision)
        rolling = any(b.outdated for b in brokers) or progress.in_flight is not None
        live = [(b.id, model.advertised_host(b.id)) for b in brokers if b.exists and b.ready]
        view: ClusterView | None = None
        error: str | None = None
        try:
            view = await memo.probe(model, live, rolling)
        except ProbeError as exc:
            error = str(exc)
        if view is not None:
            memo.controllers[key] = view.controller
            memo.mirrors[key] = list(view.mirror_sources)
            if model.spec.autoscaling.enabled:
                _record_loads(memo, key, view.loads, model.spec.autoscaling.metrics_window_seconds)
            _follow_restore(memo, body, key, view.restore, len(brokers))
        decision = plan(brokers, view, progress, error=error)
        paused = annotations.get(PAUSE_ANNOTATION, "").lower() == "true"
        roll: dict[str, Any] | None = None
        if decision.action == "done":
            progress = RollProgress()
        elif paused:
            roll = _roll_status(model, progress, None, "paused (shazamq.io/pause-reconcile)")
            roll["paused"] = True
        elif decision.action == "restart":
            assert decision.broker is not None
            pod = f"{model.name}-{decision.broker}"
            progress = progress.with_restart(decision.broker)
            # recorded before the pod goes: a restarted operator waits for it, once
            await _save_progress(api, model, progress.dumps())
            stored = progress.dumps()
            await api.delete("v1", "Pod", model.namespace, pod)
            logger.info("Restarted broker %s: %s", pod, decision.reason)
            _post_event(
                memo, body, "Normal", "BrokerRestarted", f"Restarted {pod} ({decision.reason})"
            )
            roll = _roll_status(model, progress, pod, f"{pod} is restarting")
        else:
            pod = None if decision.broker is None else f"{model.name}-{decision.broker}"
            roll = _roll_status(model, progress, pod, decision.reason)
            if memo.rolls.get(key, {}) and memo.rolls[key].get("waitingFor") != decision.reason:
                logger.info("Roll waits: %s", decision.reason)
            if decision.elect:
                await _elect_preferred(memo, model, live, decision, logger)
        new = progress.dumps() if progress != RollProgress() else None
        if new != stored:
            await _save_progress(api, model, new)
        memo.rolls[key] = roll
        await refresh_status(memo, body, model, sts=sts)


async def _elect_preferred(
    memo: kopf.Memo,
    model: ClusterModel,
    live: list[tuple[int, str]],
    decision: Decision,
    logger: logging.Logger,
) -> None:
    """The restarted broker is back in sync: give it its preferred leaderships now rather
    than at the controller's next imbalance check. A failure only leaves the roll waiting
    for that check."""
    brokers = [(host, model.spec.service.port) for _, host in live]
    try:
        connection = await memo.connections(model)
        elected = await memo.reassigner.elect(brokers, decision.elect, connection)
    except (ReassignError, AdminError, CredentialsError, ApiError, OSError) as exc:
        logger.warning("Preferred leader election for the roll failed: %s", exc)
        return
    if elected:
        logger.info(
            "Preferred leaders restored for %s",
            ", ".join(f"{t}-{i}" for t, i in sorted(elected)),
        )


def _post_event(
    memo: kopf.Memo, body: Mapping[str, Any], type_: str, reason: str, msg: str
) -> None:
    """`kopf.event` from the roll loop, run in the context of Kopf's handlers."""
    context = memo.contexts.get("post")
    if context is None:
        logging.getLogger("shazamq.operator.roll").info("%s: %s", reason, msg)
        return
    context.run(kopf.event, body, type=type_, reason=reason, message=msg)


def _roll_status(
    model: ClusterModel, progress: RollProgress, pod: str | None, waiting_for: str
) -> dict[str, Any]:
    return {
        "revision": progress.revision,
        "broker": pod,
        "waitingFor": waiting_for,
        "restarted": [f"{model.name}-{i}" for i in progress.restarted],
        "paused": False,
    }


async def _save_progress(api: Api, model: ClusterModel, value: str | None) -> None:
    patch = {"metadata": {"annotations": {ROLL_ANNOTATION: value}}}
    await api.merge_patch(API_VERSION, KIND, model.namespace, model.name, patch)


# -- the operator's password ------------------------------------------------------------------

ROTATION_WAIT = 15.0  # seconds the brokers get to take the new credential from the metadata


class OperatorLogins:
    """The operator's own SCRAM credential on a cluster's brokers (`shazamq.admin`); tests
    put their own in ``memo.logins``."""

    async def works(self, connection: Connection, host: str, port: int) -> bool:
        return await can_log_in(connection, host, port)

    async def set(
        self, connection: Connection, host: str, port: int, credential: ScramCredential
    ) -> None:
        await set_scram_credential(connection, host, port, OPERATOR_USER, credential)


async def credentials_step(body: dict[str, Any], memo: kopf.Memo, logger: logging.Logger) -> None:
    """Rotate the operator's password when its Secret asks (`shazamq.operator.rotation`),
    or finish a rotation an earlier operator began."""
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return
    try:
        model = ClusterModel.from_resource(body)
    except ModelError:
        return
    if not model.auth_enabled:
        return
    api: Api = memo.api
    ns, name = model.namespace, model.operator_secret_name
    current = await api.get("v1", "Secret", ns, name)
    pending = await api.get("v1", "Secret", ns, next_secret_name(name))
    if pending is None and not rotation_requested(current):
        return
    key = (ns, model.name)
    mechanism = model.spec.security.auth.password_mechanism
    if mechanism not in SCRAM_MECHANISM_TYPES:
        if key not in memo.rotation_refused:
            memo.rotation_refused.add(key)
            msg = (
                f"Cannot rotate {name}: the brokers can change a SCRAM credential without a "
                f"restart, not a {mechanism} password"
            )
            logger.warning(msg)
            _post_event(memo, body, "Warning", "CredentialsRotationRefused", msg)
        return
    async with _lock(memo, *key):
        pods = await api.list("v1", "Pod", ns, selector=model.selector)
        ready = {(p.get("metadata") or {}).get("name") for p in pods if pod_ready(p)}
        port = model.spec.service.port
        live = [
            (model.advertised_host(i), port)
            for i in range(model.spec.replicas)
            if f"{model.name}-{i}" in ready
        ]
        if not live or (current is None and pending is None):
            return
        if pending is None:
            assert current is not None
            # kept before anything changes: an operator restarted halfway finishes this one
            await api.create(next_secret(current))
            pending = await api.get("v1", "Secret", ns, next_secret_name(name))
            if pending is None:
                return
            _post_event(memo, body, "Normal", "RotatingCredentials", f"Rotating {name}")
        password = password_of(pending)
        if password is None:
            logger.warning("Secret %s has no password: rotation stopped", next_secret_name(name))
            return
        tls_name, _ = secrets_needed(model)
        tls = await api.get("v1", "Secret", ns, tls_name) if tls_name else None
        try:
            new = connection_of(model, tls, pending)
            host, kafka_port = live[0]
            if not await memo.logins.works(new, host, kafka_port):
                if current is None:
                    logger.warning("Rotation of %s: no password logs in", name)
                    return
                old = connection_of(model, tls, current)
                credential = await asyncio.to_thread(scram_upsertion, mechanism, password)
                await memo.logins.set(old, host, kafka_port, credential)
        except (CredentialsError, AdminError) as exc:
            logger.warning("Rotation of %s waits: %s", name, exc)
            return
        # The credential is in the metadata log; the brokers apply it as they replay it.
        deadline = time.monotonic() + ROTATION_WAIT
        waiting = list(live)
        while waiting and time.monotonic() < deadline:
            waiting = [b for b in waiting if not await memo.logins.works(new, *b)]
            if waiting:
                await asyncio.sleep(0.2)
        if waiting:  # the old password is gone already: the new one is the only one left
            logger.warning("Rotation of %s: %s not yet taking the new password", name, waiting)
        replacement = model.generate_operator_secret(password)
        replacement["metadata"].setdefault("annotations", {})[ROTATED_ANNOTATION] = now_iso()
        if current is not None:
            await api.delete("v1", "Secret", ns, name)  # immutable: replaced, not patched
        await api.create(replacement)
        await api.delete("v1", "Secret", ns, next_secret_name(name))
    logger.info("Rotated the operator's password on %s/%s", *key)
    _post_event(memo, body, "Normal", "CredentialsRotated", f"Rotated {name}")


# -- dynamic settings -----------------------------------------------------------------------


class BrokerConfigs:
    """Dynamic settings of one broker (`shazamq.operator.admin`); tests put their own in
    ``memo.configurer``."""

    async def describe(
        self, connection: Connection, host: str, port: int, broker: int, names: list[str]
    ) -> dict[str, str]:
        return await describe_broker_configs(connection, host, port, broker, names)

    async def alter(
        self, connection: Connection, host: str, port: int, broker: int, settings: dict[str, str]
    ) -> None:
        await alter_broker_configs(connection, host, port, broker, settings)


@dataclasses.dataclass
class _DynamicSync:
    """What one cluster's brokers run of the dynamic settings: `running`, the digest of the
    settings every broker is known to run; while they lag, `target` and the pods (by uid)
    given it so far."""

    running: str
    target: str | None = None
    synced: set[str] = dataclasses.field(default_factory=set)


def dynamic_digest(config: Any) -> str:
    """The digest of a configuration's dynamic settings (`dynamic.desired`)."""
    return hashlib.sha256(json.dumps(desired(config), sort_keys=True).encode()).hexdigest()


def _pod_uid(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return str(meta.get("uid") or f"{meta.get('name')}@{meta.get('creationTimestamp')}")


async def _running_digest(api: Api, model: ClusterModel) -> str | None:
    """The digest of the dynamic settings of the ConfigMap as it is (what the brokers
    started with, unless it was changed since), if there is one of ours."""
    cm = await api.get("v1", "ConfigMap", model.namespace, model.config_map_name)
    toml = ((cm or {}).get("data") or {}).get(CONFIG_KEY)
    if not isinstance(toml, str) or not _owned_by(cm or {}, model.uid):
        return None
    config = config_of_toml(toml)
    return None if config is None else dynamic_digest(config)


async def config_step(body: dict[str, Any], memo: kopf.Memo, logger: logging.Logger) -> None:
    """Give the running brokers the dynamic settings of the rendered configuration,
    without a restart (see `shazamq.operator.dynamic`).

    What every broker is known to run is DYNAMIC_ANNOTATION (a digest), or, before any
    change, what the ConfigMap held when this operator first saw the cluster. Nothing is
    asked of the brokers while that is what the spec renders. When it is not, each ready
    broker is asked what it runs (DescribeConfigs) and sent the difference
    (IncrementalAlterConfigs on its own resource); a broker not ready or not answering is
    pending, tried again at the next tick. Once every broker has it, the annotation moves
    on. It is written before the first broker is changed, so an operator restarted
    mid-way asks every broker again."""
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return
    try:
        model = ClusterModel.from_resource(body)
    except ModelError:
        return
    key = (model.namespace, model.name)
    wanted = desired(model.config)
    target = dynamic_digest(model.config)
    recorded = (meta.get("annotations") or {}).get(DYNAMIC_ANNOTATION)
    api: Api = memo.api
    state: _DynamicSync | None = memo.dynamic.get(key)
    if state is None:
        running = recorded or await _running_digest(api, model) or target
        state = memo.dynamic.setdefault(key, _DynamicSync(running))
    if state.running == target:
        return  # the usual case: no lock taken, nothing asked of anyone
    async with _lock(memo, *key):
        if state.target != target:
            state.target, state.synced = target, set()
        if recorded is None:
            await _save_annotation(api, model, DYNAMIC_ANNOTATION, state.running)
        pods = await api.list("v1", "Pod", model.namespace, selector=model.selector)
        by_name = {(p.get("metadata") or {}).get("name"): p for p in pods}
        names = [f"{model.name}-{i}" for i in range(model.statefulset_replicas)]
        changed: dict[str, str] = {}
        updated: list[str] = []
        error: str | None = None
        connection: Connection | None = None
        try:
            connection = await memo.connections(model)
        except CredentialsError as exc:
            error = f"the operator's credentials: {exc}"
        port = model.spec.service.port
        for i, name in enumerate(names):
            pod = by_name.get(name)
            if connection is None or pod is None or not pod_ready(pod):
                continue
            if _pod_uid(pod) in state.synced:
                continue
            host = model.advertised_host(i)
            try:
                running = await memo.configurer.describe(connection, host, port, i, sorted(wanted))
                diff = {k: v for k, v in wanted.items() if running.get(k) != v}
                if diff:
                    await memo.configurer.alter(connection, host, port, i, diff)
                    changed.update(diff)
                    updated.append(name)
            except AdminError as exc:
                error = f"{name}: {exc}"
                continue
            state.synced.add(_pod_uid(pod))
        synced = [n for n in names if n in by_name and _pod_uid(by_name[n]) in state.synced]
        pending = [n for n in names if n not in synced]
        previous = memo.dynamic_status.get(key) or (body.get("status") or {}).get("dynamicConfig")
        previous = previous or {}
        status = {
            "settings": changed or previous.get("settings") or {},
            "brokers": synced,
            "pending": pending,
            "error": error,
            "lastAppliedTime": now_iso() if changed else previous.get("lastAppliedTime"),
        }
        if changed:
            settings = ", ".join(f"{k}={v}" for k, v in sorted(changed.items()))
            logger.info("Applied %s to %s without a restart", settings, ", ".join(updated))
            _post_event(
                memo,
                body,
                "Normal",
                "ConfigApplied",
                f"Applied {settings} to {', '.join(updated)} without a restart",
            )
        if error is not None and error != previous.get("error"):
            logger.warning("Dynamic settings not applied: %s", error)
            _post_event(memo, body, "Warning", "ConfigApplyFailed", error)
        if not pending:
            await _save_annotation(api, model, DYNAMIC_ANNOTATION, target)
            state.running, state.target, state.synced = target, None, set()
        memo.dynamic_status[key] = status
        await refresh_status(memo, body, model)


async def _save_annotation(api: Api, model: ClusterModel, name: str, value: str | None) -> None:
    patch = {"metadata": {"annotations": {name: value}}}
    await api.merge_patch(API_VERSION, KIND, model.namespace, model.name, patch)


# -- scaling with data -----------------------------------------------------------------------


class Reassigner:
    """Partition reassignments through the brokers (`shazamq.operator.reassign`); tests put
    their own in ``memo.reassigner``."""

    async def ongoing(
        self, brokers: list[tuple[str, int]], connection: Connection
    ) -> set[tuple[str, int]]:
        return await list_reassignments(brokers, connection)

    async def submit(
        self,
        brokers: list[tuple[str, int]],
        moves: Mapping[tuple[str, int], tuple[int, ...]],
        connection: Connection,
    ) -> None:
        await alter_reassignments(brokers, moves, connection)

    async def elect(
        self,
        brokers: list[tuple[str, int]],
        partitions: tuple[tuple[str, int], ...],
        connection: Connection,
    ) -> set[tuple[str, int]]:
        return await elect_preferred_leaders(brokers, partitions, connection)


async def scale_step(body: dict[str, Any], memo: kopf.Memo, logger: logging.Logger) -> None:
    """One step of a scaling that moves data (SCALE_ANNOTATION): wait for every broker to be
    ready and for no reassignment to be in progress, then plan (`scale.plan`); submit the
    moves, or, when there are none left, finish: a scale-down shrinks the StatefulSet only
    now. A scale-down that would leave a topic more replicas than brokers is refused (the
    ``Scaled`` condition says why) and the StatefulSet keeps its size."""
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return
    body = _with_scale(body, memo.scales.get((meta.get("namespace"), meta.get("name")), ...))
    try:
        model = ClusterModel.from_resource(body)
    except ModelError:
        return
    key = (model.namespace, model.name)
    if model.scaling is None:
        memo.scalings.pop(key, None)
        return
    api: Api = memo.api
    from_, to = model.scaling
    size = model.statefulset_replicas
    state: dict[str, Any] = {"fromReplicas": from_, "toReplicas": to, "moving": 0}
    async with _lock(memo, *key):
        sts = await api.get("apps/v1", "StatefulSet", model.namespace, model.statefulset_name)
        if sts is None:
            return
        pods = await api.list("v1", "Pod", model.namespace, selector=model.selector)
        ready = {(p.get("metadata") or {}).get("name") for p in pods if pod_ready(p)}
        waiting = [f"{model.name}-{i}" for i in range(size) if f"{model.name}-{i}" not in ready]
        live = [(model.advertised_host(i), model.spec.service.port) for i in range(size)]
        done = False
        if memo.rolls.get(key):
            state["waitingFor"] = "the rolling restart"
        elif waiting:
            state["waitingFor"] = f"brokers to be ready: {', '.join(waiting)}"
        else:
            try:
                connection = await memo.connections(model)
                moving = await memo.reassigner.ongoing(live, connection)
                if moving:
                    state["moving"] = len(moving)
                    state["waitingFor"] = f"{len(moving)} partitions to finish moving"
                else:
                    view = await memo.probe(model, [(i, h) for i, (h, _) in enumerate(live)], True)
                    if view.partitions is None:
                        raise ProbeError("the partitions could not be read")
                    assignments = {(p.topic, p.index): p.replicas for p in view.partitions}
                    decision = plan_scaling(assignments, range(to))
                    if decision.refused is not None:
                        state["refused"] = f"scaling to {to} brokers is refused: {decision.refused}"
                    elif decision.moves:
                        await memo.reassigner.submit(live, decision.moves, connection)
                        state["moving"] = len(decision.moves)
                        state["waitingFor"] = f"{len(decision.moves)} partitions to finish moving"
                        _post_event(
                            memo,
                            body,
                            "Normal",
                            "PartitionsReassigned",
                            f"Moving {len(decision.moves)} partitions for scaling {from_} -> {to}",
                        )
                    else:
                        done = True
            except (ProbeError, ReassignError) as exc:
                state["waitingFor"] = f"the cluster to answer ({exc})"
            except CredentialsError as exc:
                state["waitingFor"] = f"the operator's credentials ({exc})"
        if done:
            await api.merge_patch(
                API_VERSION,
                KIND,
                model.namespace,
                model.name,
                {"metadata": {"annotations": {SCALE_ANNOTATION: None}}},
            )
            memo.scales[key] = None
            finished = ClusterModel.from_resource(_without_scale(body))
            sts = await api.apply(finished.generate_statefulset())
            memo.scalings.pop(key, None)
            logger.info("Scaling %s -> %s done", from_, to)
            _post_event(memo, body, "Normal", "Scaled", f"Scaled from {from_} to {to} brokers")
            await refresh_status(memo, body, finished, sts=sts)
            return
        previous = memo.scalings.get(key)
        if state.get("refused") and (previous or {}).get("refused") != state["refused"]:
            _post_event(memo, body, "Warning", "ScaleDownRefused", state["refused"])
        memo.scalings[key] = state
        await refresh_status(memo, body, model, sts=sts)


def _without_scale(body: Mapping[str, Any]) -> dict[str, Any]:
    return _with_scale(body, None)


def _with_scale(body: Mapping[str, Any], value: str | type[Ellipsis] | None) -> dict[str, Any]:
    """A copy of `body` whose SCALE_ANNOTATION is `value` (None: absent; ...: as it is).

    The bodies the roll loop and the index hold may predate what this operator wrote last;
    an owned object's repair rendered from a stale one could shrink the StatefulSet before
    the departing brokers are drained."""
    out = copy.deepcopy(dict(body))
    if value is ...:
        return out
    meta = out.setdefault("metadata", {})
    annotations = meta["annotations"] = dict(meta.get("annotations") or {})
    if value is None:
        annotations.pop(SCALE_ANNOTATION, None)
    else:
        annotations[SCALE_ANNOTATION] = value
    return out


# -- restore from the bucket ----------------------------------------------------------------


def _follow_restore(
    memo: kopf.Memo,
    body: Mapping[str, Any],
    key: tuple[str, str],
    observed: RestoreProgress | None,
    expected_brokers: int,
) -> None:
    """Fold the brokers' report of a restore into ``status.restore``; an event when it
    starts and when it ends (the status itself is written by the caller)."""
    previous = memo.restores.get(key, ...)
    if previous is ...:
        previous = (body.get("status") or {}).get("restore")
    new = restore_status(previous, observed, expected_brokers=expected_brokers, now=now_iso())
    if new == previous:
        return
    memo.restores[key] = new
    state = (new or {}).get("state")
    if state == (previous or {}).get("state") or new is None:
        return
    if state == "Restoring":
        _post_event(
            memo,
            body,
            "Normal",
            "Restoring",
            f"Restoring from the bucket: {new['topics']} topics, {new['partitions']} partitions",
        )
    else:
        _post_event(
            memo,
            body,
            "Normal",
            "Restored",
            f"Restored from the bucket: {new['topics']} topics, {new['partitionsRestored']} "
            f"partitions, {new['bytes']} bytes, {new['groups']} consumer groups",
        )


# -- autoscaling ----------------------------------------------------------------------------


@dataclasses.dataclass
class _Autoscaler:
    """What one cluster's autoscaler remembers between decisions (not persisted: a new
    operator starts its windows afresh, from the current size, so it neither scales up nor
    down before a whole window of its own recommendations asks for it)."""

    history: tuple[Recommendation, ...]
    last: float | None = None  # when it last decided
    pending: int | None = None  # the replicas it patched, until the resource shows them


def _record_loads(
    memo: kopf.Memo, key: tuple[str, str], loads: tuple[BrokerLoad, ...], window: float
) -> None:
    """Keep the brokers' load counters of the last metrics window, stamped by memo.clock."""
    now = memo.clock()
    kept = [s for s in memo.loads.get(key, ()) if now - s.time <= window]
    kept.extend(dataclasses.replace(load, time=now) for load in loads)
    memo.loads[key] = kept


async def find_hpa(api: Api, model: ClusterModel) -> str | None:
    """The HorizontalPodAutoscaler whose scaleTargetRef is this cluster (KEDA makes one
    too), if any; unknown (the kind not served, or not allowed) counts as none."""
    try:
        hpas = await api.list("autoscaling/v2", "HorizontalPodAutoscaler", model.namespace)
    except ApiError as exc:
        if exc.retriable:
            raise
        return None
    for hpa in hpas:
        ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        group = str(ref.get("apiVersion") or "").split("/")[0]
        if ref.get("kind") == KIND and ref.get("name") == model.name and group == GROUP:
            return str((hpa.get("metadata") or {}).get("name"))
    return None


async def autoscale_step(body: dict[str, Any], memo: kopf.Memo, logger: logging.Logger) -> None:
    """One decision of the autoscaler (``spec.autoscaling``), every AUTOSCALE_INTERVAL.

    Stands down when a HorizontalPodAutoscaler targets the cluster (it owns ``replicas``
    then; the status and a Warning event say so). Decides nothing while a roll or a
    scaling is going on or brokers are not ready. A change patches ``spec.replicas``: the
    owner's handler records it as a scaling that moves data, exactly as a change by hand.
    Every change is an event with its reason; the status keeps the last decision."""
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return
    body = _with_scale(body, memo.scales.get((meta.get("namespace"), meta.get("name")), ...))
    try:
        model = ClusterModel.from_resource(body)
    except ModelError:
        return
    key = (model.namespace, model.name)
    spec = model.spec.autoscaling
    if not spec.enabled:
        memo.autoscalers.pop(key, None)
        memo.loads.pop(key, None)
        if (body.get("status") or {}).get("autoscaling") and memo.autoscaling.get(key, ...):
            memo.autoscaling[key] = None
            async with _lock(memo, *key):
                await refresh_status(memo, body, model)
        return
    now = memo.clock()
    current = int(model.spec.replicas)
    state: _Autoscaler | None = memo.autoscalers.get(key)
    if state is None:
        state = memo.autoscalers[key] = _Autoscaler(history=(Recommendation(now, current),))
    interval = memo.get("autoscale_interval") or AUTOSCALE_INTERVAL
    if state.pending is not None:
        waited = now - (state.last if state.last is not None else now)
        if state.pending != current and waited < 4 * interval:
            return  # our own patch is not in the body yet (or replicas changed meanwhile)
        state.pending = None
    if state.last is not None and now - state.last < interval:
        return
    state.last = now
    api: Api = memo.api
    previous = memo.autoscaling.get(key) or (body.get("status") or {}).get("autoscaling") or {}
    async with _lock(memo, *key):
        hpa = await memo.hpa_finder(api, model)
        if hpa is not None:
            reason = (
                f"HorizontalPodAutoscaler {hpa} scales this cluster: spec.autoscaling stands "
                "down while it exists"
            )
            if previous.get("disabledBy") != hpa:
                logger.warning("%s", reason)
                _post_event(memo, body, "Warning", "AutoscalingDisabled", reason)
            memo.autoscaling[key] = {
                "desiredReplicas": current,
                "reason": reason,
                "lastDecisionTime": now_iso(),
                "lastScaleTime": previous.get("lastScaleTime"),
                "disabledBy": hpa,
            }
            await refresh_status(memo, body, model)
            return
        sts = await api.get("apps/v1", "StatefulSet", model.namespace, model.statefulset_name)
        ready = int((((sts or {}).get("status") or {}).get("readyReplicas")) or 0)
        paused = (meta.get("annotations") or {}).get(PAUSE_ANNOTATION, "").lower() == "true"
        blocked: str | None = None
        if memo.rolls.get(key):
            blocked = "the rolling restart to finish"
        elif model.scaling is not None:
            blocked = f"the scaling {model.scaling[0]} -> {model.scaling[1]} to finish"
        elif paused:
            blocked = f"{PAUSE_ANNOTATION} to be lifted"
        elif ready < current:
            blocked = f"every broker to be ready ({ready}/{current})"
        policy = Policy.from_spec(spec, model.spec.resources)
        decision = decide(
            memo.loads.get(key, ()), current, policy, state.history, now, blocked=blocked
        )
        state.history = decision.history
        usage = decision.usage
        status: dict[str, Any] = {
            "desiredReplicas": decision.replicas,
            "reason": decision.reason,
            "lastDecisionTime": now_iso(),
            "lastScaleTime": previous.get("lastScaleTime"),
            "bytesInPerSecond": _round(usage.bytes_in_per_second),
            "cpuUtilizationPercent": _round(usage.cpu_utilization_percent),
            "partitions": _round(usage.partitions),
            "disabledBy": None,
        }
        if decision.replicas != current:
            patch = {"spec": {"replicas": decision.replicas}}
            await api.merge_patch(API_VERSION, KIND, model.namespace, model.name, patch)
            state.pending = decision.replicas
            # the load of the old size says nothing of the new one: measure afresh
            memo.loads.pop(key, None)
            status["lastScaleTime"] = status["lastDecisionTime"]
            up = decision.replicas > current
            logger.info("Autoscaling: %s", decision.reason)
            _post_event(
                memo,
                body,
                "Normal",
                "AutoscaledUp" if up else "AutoscaledDown",
                f"Scaling {'up' if up else 'down'}: {decision.reason}",
            )
        memo.autoscaling[key] = status
        await refresh_status(memo, body, model)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


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
        rendered = _render_child(memo, owner, param, name)
        if rendered is None:
            return
        model, child = rendered
        if deleted or not contains(actual, child.desired):
            # The index may lag behind the owner (see `stored_cluster`): before anything is
            # put back, check against the owner as stored, so a newer spec is never undone.
            fresh = await stored_cluster(memo, namespace, owner_name)  # type: ignore[arg-type]
            if fresh is None or (fresh.get("metadata") or {}).get("deletionTimestamp"):
                return
            owner = fresh
            rendered = _render_child(memo, owner, param, name)
            if rendered is None:
                return
            model, child = rendered
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


def _render_child(
    memo: kopf.Memo, owner: Mapping[str, Any], param: str, name: str
) -> tuple[ClusterModel, Child] | None:
    """The model of `owner` and its child `param`/`name` as it should be, or None when
    there is nothing to restore."""
    meta = owner.get("metadata") or {}
    key = (meta.get("namespace"), meta.get("name"))
    # The owner's body may not have the annotations our handler just wrote.
    owner = _with_voters(owner, memo.voters.get(key))
    owner = _with_scale(owner, memo.scales.get(key, ...))
    try:
        model = ClusterModel.from_resource(owner)
    except ModelError:
        return None  # reported by the owner's handler; nothing valid to restore
    if model.voter_ids and not model.voters_frozen:
        # The owner's handler freezes the voters (perhaps from the running ConfigMap)
        # before it applies anything; rendering them from the spec here could change a
        # running quorum's voters.
        return None
    child = model.child(param, name)
    if child is None or child.desired is None:
        return None
    return model, child
