"""The status computation (`shazamq.operator.status`): phases, conditions, brokers.

Covers: every phase (Creating, Running, Updating, Degraded, Failed) from StatefulSet
states; the Ready and Reconciled conditions and their reasons; lastTransitionTime kept
while a condition's status does not change; broker readiness from pods; the status of an
invalid spec keeping what the last good spec produced; the result fits the CRD's status
model.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from shazamq.config import ShazamqClusterStatus
from shazamq.operator.status import (
    RECONCILE_OK,
    Outcome,
    cluster_status,
    compute_phase,
    invalid_status,
    statefulset_rolled_out,
)

T0, T1 = "2025-01-01T00:00:00Z", "2025-01-01T00:05:00Z"


def sts(replicas: int = 3, **status: Any) -> dict[str, Any]:
    base = {
        "replicas": replicas,
        "readyReplicas": replicas,
        "updatedReplicas": replicas,
        "currentRevision": "r1",
        "updateRevision": "r1",
    }
    base.update(status)
    return {"metadata": {"generation": 2}, "spec": {"replicas": replicas}, "status": base}


def phase(sts_: dict | None, previous: str | None = "Running", desired: int = 3) -> str:
    return compute_phase(
        desired_replicas=desired, sts=sts_, previous_phase=previous, outcome=RECONCILE_OK
    )


def test_creating_until_the_statefulset_reports() -> None:
    assert phase(None, previous=None) == "Creating"
    assert phase({"spec": {"replicas": 3}}, previous=None) == "Creating"


def test_creating_until_every_broker_was_ready_once() -> None:
    assert phase(sts(readyReplicas=1), previous="Creating") == "Creating"
    assert phase(sts(readyReplicas=3), previous="Creating") == "Running"


def test_running_when_rolled_out_and_ready() -> None:
    assert phase(sts()) == "Running"


def test_updating_while_rolling_out_or_scaling() -> None:
    assert phase(sts(updateRevision="r2", updatedReplicas=1, readyReplicas=2)) == "Updating"
    assert phase(sts(replicas=3), desired=5) == "Updating"
    stale = sts(observedGeneration=1)
    assert phase(stale) == "Updating"


def test_degraded_when_settled_but_not_ready() -> None:
    assert phase(sts(readyReplicas=2)) == "Degraded"


def test_failed_when_the_reconciliation_failed() -> None:
    outcome = Outcome(False, "ApplyFailed", "rejected")
    assert compute_phase(desired_replicas=3, sts=sts(), previous_phase=None, outcome=outcome) == (
        "Failed"
    )


def test_rolled_out_needs_every_signal() -> None:
    assert statefulset_rolled_out(sts(), 3)
    assert not statefulset_rolled_out(sts(updatedReplicas=2), 3)
    assert not statefulset_rolled_out(sts(currentRevision="r0"), 3)
    assert statefulset_rolled_out(sts(currentRevision=None, updateRevision=None), 3)


def status_of(**kwargs: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "desired_replicas": 3,
        "selector": "app=x",
        "brokers": [{"id": i, "pod": f"c-{i}", "address": f"c-{i}.h:9092"} for i in range(3)],
        "sts": sts(),
        "pods": [],
        "previous": None,
        "outcome": RECONCILE_OK,
        "generation": 2,
        "now": T0,
    }
    args.update(kwargs)
    return cluster_status(**args)


def conditions(status: dict) -> dict[str, dict]:
    return {c["type"]: c for c in status["conditions"]}


def test_a_running_cluster_s_status() -> None:
    status = status_of()
    assert status["phase"] == "Running"
    assert (status["replicas"], status["readyReplicas"]) == (3, 3)
    assert status["selector"] == "app=x"
    assert status["observedGeneration"] == 2
    ready, reconciled = conditions(status)["Ready"], conditions(status)["Reconciled"]
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "True",
        "AllBrokersReady",
        "3/3 brokers ready",
    )
    assert (reconciled["status"], reconciled["reason"]) == ("True", "ReconcileSucceeded")
    assert ready["lastTransitionTime"] == T0 and ready["observedGeneration"] == 2
    msgspec.convert(status, ShazamqClusterStatus)  # fits the CRD's status model


def test_transition_time_moves_only_when_the_status_changes() -> None:
    first = status_of(now=T0)
    same = status_of(previous=first, now=T1)
    assert conditions(same)["Ready"]["lastTransitionTime"] == T0
    assert same == first
    degraded = status_of(previous=first, sts=sts(readyReplicas=2), now=T1)
    assert degraded["phase"] == "Degraded"
    assert conditions(degraded)["Ready"]["status"] == "False"
    assert conditions(degraded)["Ready"]["lastTransitionTime"] == T1
    assert conditions(degraded)["Reconciled"]["lastTransitionTime"] == T0


def test_no_outcome_keeps_the_previous_reconciled_condition() -> None:
    failed = status_of(outcome=Outcome(False, "ApplyFailed", "nope"))
    assert failed["phase"] == "Failed"
    later = status_of(previous=failed, outcome=None, now=T1)
    assert later["phase"] == "Failed"
    assert conditions(later)["Reconciled"]["reason"] == "ApplyFailed"
    assert conditions(later)["Ready"]["reason"] == "ApplyFailed"


def test_brokers_are_ready_when_their_pods_are() -> None:
    pods = [
        {
            "metadata": {"name": "c-0"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        },
        {
            "metadata": {"name": "c-1"},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]},
        },
    ]
    status = status_of(pods=pods)
    assert [b["ready"] for b in status["brokers"]] == [True, False, False]
    assert status["brokers"][0] == {
        "id": 0,
        "pod": "c-0",
        "address": "c-0.h:9092",
        "ready": True,
        "leader": False,
    }


def test_scaled_to_zero_is_ready() -> None:
    status = status_of(desired_replicas=0, brokers=[], sts=sts(replicas=0))
    assert status["phase"] == "Running"
    assert conditions(status)["Ready"]["reason"] == "ScaledToZero"


@pytest.mark.parametrize("previous", [None, "running"])
def test_invalid_spec_status(previous: str | None) -> None:
    before = status_of() if previous else None
    status = invalid_status(
        error="spec.replicas: Expected int >= 0",
        reason="InvalidSpec",
        previous=before,
        generation=3,
        now=T1,
    )
    assert status["phase"] == "Failed"
    assert status["observedGeneration"] == 3
    reconciled = conditions(status)["Reconciled"]
    assert (reconciled["status"], reconciled["reason"]) == ("False", "InvalidSpec")
    assert reconciled["message"] == "spec.replicas: Expected int >= 0"
    if before:
        assert status["brokers"] == before["brokers"]
        assert conditions(status)["Ready"] == conditions(before)["Ready"]
    else:
        assert conditions(status)["Ready"]["status"] == "Unknown"
    msgspec.convert(status, ShazamqClusterStatus)


def test_leader_marks_the_active_controller() -> None:
    status = status_of(controller=1)
    assert [b["leader"] for b in status["brokers"]] == [False, True, False]
    assert [b["leader"] for b in status_of()["brokers"]] == [False, False, False]
