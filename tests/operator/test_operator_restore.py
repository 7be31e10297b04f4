"""``status.restore`` from the brokers' reports (`shazamq.operator.restore`) and what the
cluster's status makes of it (phase ``Restoring``, condition ``Restored``), pure."""

from __future__ import annotations

from shazamq.operator.restore import RestoreProgress, restore_status
from shazamq.operator.status import cluster_status

T0, T1 = "2026-12-02T10:00:00Z", "2026-12-02T10:05:00Z"


def progress(**kw: object) -> RestoreProgress:
    base: dict[str, object] = {"in_progress": True, "topics": 2, "partitions": 6, "brokers": 3}
    base.update(kw)
    return RestoreProgress(**base)  # type: ignore[arg-type]


def test_a_restore_goes_from_restoring_to_restored_and_stays() -> None:
    assert restore_status(None, None, expected_brokers=3, now=T0) is None
    assert restore_status(None, progress(in_progress=False), expected_brokers=3, now=T0) is None
    going = restore_status(None, progress(restored=2, bytes=10), expected_brokers=3, now=T0)
    assert going == {
        "state": "Restoring",
        "topics": 2,
        "partitions": 6,
        "partitionsRestored": 2,
        "bytes": 10,
        "groups": 0,
        "startTime": T0,
        "completionTime": None,
    }
    later = restore_status(going, progress(restored=5), expected_brokers=3, now=T1)
    assert later is not None and later["startTime"] == T0 and later["partitionsRestored"] == 5
    # a broker unheard: not finished yet as far as anyone can tell
    quiet = progress(in_progress=False, restored=6, brokers=2)
    assert restore_status(later, quiet, expected_brokers=3, now=T1) == later
    done = restore_status(
        later,
        progress(in_progress=False, restored=6, bytes=99, groups=4),
        expected_brokers=3,
        now=T1,
    )
    assert done is not None
    assert (done["state"], done["groups"], done["startTime"], done["completionTime"]) == (
        "Restored",
        4,
        T0,
        T1,
    )
    # brokers restarted afterwards count nothing: the result is kept as it was
    assert restore_status(done, progress(in_progress=False), expected_brokers=3, now=T1) == done
    again = progress(in_progress=False, restored=6, groups=9)
    assert restore_status(done, again, expected_brokers=3, now="2027-01-01T00:00:00Z") == done


def status_with(restore: dict | None) -> dict:
    sts = {
        "metadata": {"generation": 1},
        "spec": {"replicas": 3},
        "status": {
            "observedGeneration": 1,
            "replicas": 3,
            "readyReplicas": 3,
            "updatedReplicas": 3,
            "currentRevision": "r1",
            "updateRevision": "r1",
        },
    }
    return cluster_status(
        desired_replicas=3,
        selector="app=x",
        brokers=[],
        sts=sts,
        previous=None,
        outcome=None,
        generation=1,
        restore=restore,
        now=T0,
    )


def test_the_phase_and_the_condition_follow_the_restore() -> None:
    going = restore_status(None, progress(restored=2), expected_brokers=3, now=T0)
    status = status_with(going)
    assert status["phase"] == "Restoring"
    (cond,) = [c for c in status["conditions"] if c["type"] == "Restored"]
    assert (cond["status"], cond["reason"]) == ("False", "Restoring")
    assert cond["message"] == "2/6 partitions restored from the bucket"
    done = restore_status(
        going, progress(in_progress=False, restored=6, groups=1), expected_brokers=3, now=T1
    )
    status = status_with(done)
    assert status["phase"] == "Running"
    (cond,) = [c for c in status["conditions"] if c["type"] == "Restored"]
    assert (cond["status"], cond["reason"]) == ("True", "RestoreComplete")
    assert status["restore"]["state"] == "Restored"
    plain = status_with(None)
    assert plain["restore"] is None
    assert all(c["type"] != "Restored" for c in plain["conditions"])
