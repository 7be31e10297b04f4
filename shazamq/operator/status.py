"""The ShazamqCluster's status, computed from what was observed: pure functions, no I/O.

Why separate: the phase rules and the condition bookkeeping (a condition's
``lastTransitionTime`` moves only when its status changes) are easy to get subtly wrong
and easy to test as plain functions; the handlers only gather the inputs (the resource, its
StatefulSet, its pods, the outcome of the last reconciliation) and write the result.

Phases:

- ``Failed``: the last reconciliation could not be carried out (bad spec, rejected object);
- ``Creating``: the brokers have never all been ready yet;
- ``Updating``: the StatefulSet is rolling out a change or scaling;
- ``Running``: every broker is up to date and ready;
- ``Degraded``: no change is in progress but some brokers are not ready;
- ``Restoring``: the brokers restore the cluster from its bucket (``status.restore``).

Conditions: ``Ready`` (every broker ready) and ``Reconciled`` (the desired objects were
applied), each with a CamelCase reason; ``Restored`` once a cluster restored from a bucket
(False while it restores).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from shazamq.config import (
    AutoscalingStatus,
    BrokerStatus,
    ClusterCondition,
    DynamicConfigStatus,
    MirrorSourceStatus,
    RestoreStatus,
    RollStatus,
    ScalingStatus,
    ShazamqClusterStatus,
)

READY = "Ready"
RECONCILED = "Reconciled"
SCALED = "Scaled"  # present only while a scaling moves data or is refused
RESTORED = "Restored"  # present once a restore from the bucket was seen


@dataclass(frozen=True)
class Outcome:
    """How the last reconciliation ended: ``ok`` and a CamelCase ``reason`` with a message."""

    ok: bool
    reason: str
    message: str = ""


RECONCILE_OK = Outcome(True, "ReconcileSucceeded", "All objects are applied")


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def statefulset_rolled_out(sts: Mapping[str, Any], desired_replicas: int) -> bool:
    """Whether the StatefulSet has caught up with its spec (all pods on the latest revision)."""
    status = sts.get("status") or {}
    generation = (sts.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and observed is not None and observed < generation:
        return False
    if (sts.get("spec") or {}).get("replicas", desired_replicas) != desired_replicas:
        return False
    if status.get("replicas", 0) != desired_replicas:
        return False
    if status.get("updatedReplicas", 0) != desired_replicas:
        return False
    update, current = status.get("updateRevision"), status.get("currentRevision")
    return not (update and current and update != current)


def compute_phase(
    *,
    desired_replicas: int,
    sts: Mapping[str, Any] | None,
    previous_phase: str | None,
    outcome: Outcome,
) -> str:
    """The cluster's phase (see the module docstring)."""
    if not outcome.ok:
        return "Failed"
    if sts is None or not sts.get("status"):
        return "Creating" if desired_replicas else "Running"
    ready = (sts.get("status") or {}).get("readyReplicas", 0)
    rolled_out = statefulset_rolled_out(sts, desired_replicas)
    if rolled_out and ready >= desired_replicas:
        return "Running"
    if previous_phase in (None, "", "Creating"):
        return "Creating"
    if not rolled_out:
        return "Updating"
    return "Degraded"


def condition(
    type_: str,
    ok: bool | None,
    reason: str,
    message: str,
    *,
    previous: Iterable[Mapping[str, Any]] = (),
    generation: int | None = None,
    now: str | None = None,
) -> ClusterCondition:
    """One condition; its transition time is kept from `previous` unless its status changed."""
    status = "Unknown" if ok is None else ("True" if ok else "False")
    when = now or now_iso()
    for old in previous:
        if old.get("type") == type_ and old.get("status") == status:
            when = old.get("lastTransitionTime") or when
            break
    return ClusterCondition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=when,
        observed_generation=generation,
    )


def pod_ready(pod: Mapping[str, Any]) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or ():
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def cluster_status(
    *,
    desired_replicas: int,
    selector: str,
    brokers: list[dict[str, Any]],
    sts: Mapping[str, Any] | None,
    pods: Iterable[Mapping[str, Any]] = (),
    previous: Mapping[str, Any] | None,
    outcome: Outcome | None,
    generation: int | None,
    controller: int | None = None,
    roll: Mapping[str, Any] | None = None,
    scaling: Mapping[str, Any] | None = None,
    mirror_sources: Iterable[Mapping[str, Any]] | None = None,
    autoscaling: Mapping[str, Any] | type[Ellipsis] | None = ...,
    restore: Mapping[str, Any] | type[Ellipsis] | None = ...,
    dynamic_config: Mapping[str, Any] | type[Ellipsis] | None = ...,
    now: str | None = None,
) -> dict[str, Any]:
    """The whole ``status`` to write, as the camelCase dict of `ShazamqClusterStatus`.

    ``outcome=None`` means "no reconciliation ran now": the previous ``Reconciled``
    condition (and its verdict on the phase) is kept. `controller` is the id of the active
    controller, when known (its broker entry gets ``leader: true``); `roll` the rolling
    restart in progress (`RollStatus` as a dict), if any; `scaling` the scaling that moves
    data (`ScalingStatus` as a dict), if any: it adds the condition ``Scaled`` (False,
    reason ``Reassigning`` or ``ScaleDownRefused``) and keeps the phase ``Updating``.
    `mirror_sources` are the mirror sources as the brokers last reported them
    (`MirrorSourceStatus` dicts); None keeps the previous ones (the brokers were not read).
    `autoscaling` is the autoscaler's last decision (`AutoscalingStatus` as a dict) and
    `restore` the restore from the bucket (`RestoreStatus` as a dict): ``...`` keeps the
    previous one, None removes it. A restore in progress makes the phase ``Restoring``;
    either adds the condition ``Restored``. `dynamic_config` is the last application of
    dynamic settings to the running brokers (`DynamicConfigStatus` as a dict), ``...``
    keeping the previous one.
    """
    previous = previous or {}
    old_conditions = previous.get("conditions") or []
    if outcome is None:
        outcome = _previous_outcome(old_conditions)
    sts_status = (sts or {}).get("status") or {}
    ready = int(sts_status.get("readyReplicas", 0) or 0)
    phase = compute_phase(
        desired_replicas=desired_replicas,
        sts=sts,
        previous_phase=previous.get("phase"),
        outcome=outcome,
    )
    ready_pods = {p.get("metadata", {}).get("name") for p in pods if pod_ready(p)}
    if desired_replicas == 0:
        ready_cond = condition(
            READY,
            True,
            "ScaledToZero",
            "No brokers are requested",
            previous=old_conditions,
            generation=generation,
            now=now,
        )
    elif phase == "Running":
        ready_cond = condition(
            READY,
            True,
            "AllBrokersReady",
            f"{ready}/{desired_replicas} brokers ready",
            previous=old_conditions,
            generation=generation,
            now=now,
        )
    else:
        ready_cond = condition(
            READY,
            False,
            "BrokersNotReady" if outcome.ok else outcome.reason,
            f"{ready}/{desired_replicas} brokers ready",
            previous=old_conditions,
            generation=generation,
            now=now,
        )
    reconciled_cond = condition(
        RECONCILED,
        outcome.ok,
        outcome.reason,
        outcome.message,
        previous=old_conditions,
        generation=generation,
        now=now,
    )
    conditions = [ready_cond, reconciled_cond]
    if scaling is not None:
        if phase == "Running":
            phase = "Updating"
        refused = scaling.get("refused")
        conditions.append(
            condition(
                SCALED,
                False,
                "ScaleDownRefused" if refused else "Reassigning",
                refused or scaling.get("waitingFor") or "",
                previous=old_conditions,
                generation=generation,
                now=now,
            )
        )
    if autoscaling is ...:
        autoscaling = previous.get("autoscaling")
    if restore is ...:
        restore = previous.get("restore")
    if dynamic_config is ...:
        dynamic_config = previous.get("dynamicConfig")
    if restore:
        restoring = restore.get("state") == "Restoring"
        if restoring and outcome.ok:
            phase = "Restoring"
        done, total = restore.get("partitionsRestored", 0), restore.get("partitions", 0)
        conditions.append(
            condition(
                RESTORED,
                not restoring,
                "Restoring" if restoring else "RestoreComplete",
                f"{done}/{total} partitions restored from the bucket"
                if restoring
                else f"Restored {restore.get('topics', 0)} topics, {done} partitions, "
                f"{restore.get('bytes', 0)} bytes and {restore.get('groups', 0)} consumer "
                "groups from the bucket",
                previous=old_conditions,
                generation=generation,
                now=now,
            )
        )
    status = ShazamqClusterStatus(
        phase=phase,  # type: ignore[arg-type]
        replicas=int(sts_status.get("replicas", 0) or 0),
        ready_replicas=ready,
        selector=selector,
        observed_generation=generation,
        conditions=conditions,
        brokers=[
            BrokerStatus(**b, ready=b["pod"] in ready_pods, leader=b["id"] == controller)
            for b in brokers
        ],
        roll=None if roll is None else msgspec.convert(roll, RollStatus),
        scaling=None if scaling is None else msgspec.convert(scaling, ScalingStatus),
        mirror_sources=msgspec.convert(
            list(
                mirror_sources
                if mirror_sources is not None
                else previous.get("mirrorSources") or []
            ),
            list[MirrorSourceStatus],
        ),
        autoscaling=None if not autoscaling else msgspec.convert(autoscaling, AutoscalingStatus),
        restore=None if not restore else msgspec.convert(restore, RestoreStatus),
        dynamic_config=(
            None if not dynamic_config else msgspec.convert(dynamic_config, DynamicConfigStatus)
        ),
    )
    return msgspec.to_builtins(status)


def _previous_outcome(conditions: Iterable[Mapping[str, Any]]) -> Outcome:
    for cond in conditions:
        if cond.get("type") == RECONCILED:
            return Outcome(
                cond.get("status") != "False",
                cond.get("reason") or RECONCILE_OK.reason,
                cond.get("message") or "",
            )
    return RECONCILE_OK


def invalid_status(
    *,
    error: str,
    reason: str,
    previous: Mapping[str, Any] | None,
    generation: int | None,
    now: str | None = None,
) -> dict[str, Any]:
    """The status of a resource that cannot be reconciled at all (its spec is invalid).

    Only the phase and the conditions change: replicas, selector and brokers stay as they
    were, since the objects from the last good spec are left running.
    """
    previous = dict(previous or {})
    old_conditions = previous.get("conditions") or []
    conditions = [c for c in old_conditions if c.get("type") not in (READY, RECONCILED)]
    ready_old = next((c for c in old_conditions if c.get("type") == READY), None)
    ready = (
        dict(ready_old)
        if ready_old
        else msgspec.to_builtins(
            condition(READY, None, "Unknown", "", generation=generation, now=now)
        )
    )
    reconciled = msgspec.to_builtins(
        condition(
            RECONCILED,
            False,
            reason,
            error,
            previous=old_conditions,
            generation=generation,
            now=now,
        )
    )
    previous.update(
        phase="Failed",
        observedGeneration=generation,
        conditions=[ready, reconciled, *conditions],
    )
    return previous
