"""The autoscaler's decision (`shazamq.operator.autoscale`), pure.

Covers: usage per broker from counters (rates over the window, a counter reset, CPU over
the pod's request), the recommendation (ceil of replicas times the worst ratio, the 10%
tolerance), the stabilization windows (the HPA's rules: up to the smallest recommendation
of the up window, down to the largest of the down window), the bounds, and a blocked
autoscaler; with Hypothesis: the result is always within [min, max], a load within the
tolerance never changes anything, and no scale-down follows a scale-up inside the
scale-down window (nor the other way round).
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from operator_support import as_stored, quick_start

from shazamq.operator.autoscale import (
    BrokerLoad,
    Policy,
    Recommendation,
    cpu_cores,
    decide,
    usage_of,
)
from shazamq.operator.resources import ClusterModel, ModelError

MB = 1_000_000


def policy(**kw: object) -> Policy:
    base: dict[str, object] = {
        "min_replicas": 3,
        "max_replicas": 10,
        "bytes_in_per_second": 10 * MB,
        "scale_up_window": 0.0,
        "scale_down_window": 0.0,
        "metrics_window": 60.0,
    }
    base.update(kw)
    return Policy(**base)  # type: ignore[arg-type]


def steady(brokers: int, rate: float, *, t0: float = 0.0, t1: float = 60.0) -> list[BrokerLoad]:
    """Each broker receives `rate` bytes per second between t0 and t1."""
    return [
        BrokerLoad(b, t, bytes_in=rate * t, cpu_seconds=None, partitions=None)
        for b in range(brokers)
        for t in (t0, t1)
    ]


def test_cpu_cores_from_request_else_limit() -> None:
    assert cpu_cores({"requests": {"cpu": "2000m"}, "limits": {"cpu": "8"}}) == 2.0
    assert cpu_cores({"limits": {"cpu": "0.5"}}) == 0.5
    assert cpu_cores({"requests": {"memory": "1Gi"}}) is None
    assert cpu_cores({}) is None
    assert cpu_cores({"requests": {"cpu": "two"}}) is None


def test_usage_is_the_average_rate_per_broker_over_the_window() -> None:
    samples = [
        BrokerLoad(0, 0.0, bytes_in=0, cpu_seconds=0, partitions=10),
        BrokerLoad(0, 10.0, bytes_in=100, cpu_seconds=5, partitions=12),
        BrokerLoad(1, 0.0, bytes_in=0, cpu_seconds=0, partitions=20),
        BrokerLoad(1, 10.0, bytes_in=300, cpu_seconds=15, partitions=20),
        BrokerLoad(1, -100.0, bytes_in=0, cpu_seconds=0, partitions=99),  # out of the window
    ]
    usage = usage_of(samples, now=10.0, window=30.0, cores=2.0)
    assert usage.bytes_in_per_second == 20.0  # (10 + 30) / 2
    assert usage.cpu_utilization_percent == 50.0  # (0.5 + 1.5) cores / 2 / 2 cores
    assert usage.partitions == 16.0  # (12 + 20) / 2, the latest counts


def test_a_restarted_broker_is_measured_from_its_restart() -> None:
    samples = [
        BrokerLoad(0, 0.0, bytes_in=5000),
        BrokerLoad(0, 10.0, bytes_in=10),  # restarted: the counter went down
        BrokerLoad(0, 20.0, bytes_in=110),
    ]
    assert usage_of(samples, now=20.0, window=60.0, cores=None).bytes_in_per_second == 10.0


def test_load_above_target_scales_up_by_the_ratio() -> None:
    d = decide(steady(3, 25 * MB), 3, policy(), (), now=60.0)
    assert d.replicas == math.ceil(3 * 2.5) == 8
    assert d.recommendation == 8
    assert d.reason == "bytes in 25.0 MB/s per broker (target 10.0 MB/s): 3 -> 8"


def test_load_within_the_tolerance_changes_nothing() -> None:
    d = decide(steady(3, 10.9 * MB), 3, policy(), (), now=60.0)
    assert d.replicas == 3 and "fit" in d.reason


def test_the_worst_target_wins() -> None:
    samples = [
        BrokerLoad(b, t, bytes_in=1 * MB * t, cpu_seconds=1.8 * t, partitions=100)
        for b in range(4)
        for t in (0.0, 60.0)
    ]
    p = policy(cpu_utilization_percent=60, partitions=200, cpu_cores=2.0)
    d = decide(samples, 4, p, (), now=60.0)
    # bytes 0.1x (-> 1), cpu 90% / 60% = 1.5x (-> 6), partitions 0.5x (-> 2)
    assert d.replicas == 6 and d.reason.startswith("cpu 90% per broker")


def test_partitions_alone_scale_down_to_what_holds_them() -> None:
    samples = [BrokerLoad(b, 0.0, partitions=50) for b in range(6)]
    d = decide(samples, 6, policy(bytes_in_per_second=None, partitions=100), (), now=0.0)
    assert d.replicas == 3


def test_no_metrics_no_change_and_no_recommendation() -> None:
    d = decide([], 4, policy(), (), now=0.0)
    assert d.replicas == 4 and d.recommendation is None and d.reason == "no load measured yet"


def test_bounds_apply_without_metrics() -> None:
    assert decide([], 2, policy(), (), now=0.0).replicas == 3
    assert decide([], 12, policy(), (), now=0.0).replicas == 10
    assert decide(steady(10, 50 * MB), 10, policy(), (), now=60.0).replicas == 10
    held = decide(steady(10, 50 * MB), 10, policy(), (), now=60.0)
    assert "held at 10 by maxReplicas" in held.reason


def test_blocked_decides_nothing_and_records_nothing() -> None:
    history = (Recommendation(50.0, 3),)
    p = policy(scale_down_window=300.0)
    d = decide(steady(3, 50 * MB), 3, p, history, now=60.0, blocked="the rolling restart")
    assert d.replicas == 3 and d.history == history
    assert d.reason == "waiting for the rolling restart"


def test_scale_up_waits_for_the_whole_up_window() -> None:
    p = policy(scale_up_window=60.0)
    history = (Recommendation(0.0, 3),)  # the quiet past (or the operator's start)
    d = decide(steady(3, 25 * MB, t0=10, t1=30), 3, p, history, now=30.0)
    assert d.replicas == 3 and "scale-up stabilization window (60s)" in d.reason
    history = d.history
    d = decide(steady(3, 25 * MB, t0=30, t1=61), 3, p, history, now=61.0)
    assert d.replicas == 8  # the quiet recommendation left the window


def test_scale_down_takes_the_largest_recommendation_of_the_down_window() -> None:
    p = policy(scale_down_window=300.0)
    history = (Recommendation(0.0, 8), Recommendation(100.0, 6))
    d = decide(steady(8, 1 * MB, t0=140, t1=200), 8, p, history, now=200.0)
    assert d.replicas == 8  # 8 was recommended within 300 s
    d = decide(steady(8, 1 * MB, t0=340, t1=350), 8, p, d.history, now=350.0)
    assert d.replicas == 6  # the 8 left the window; 6 is the largest since


def _run(loads: list[float], windows: tuple[float, float], tol_load: bool = False) -> list[int]:
    """Feed one evaluation every 15 s with the given per-broker load (in MB/s); returns the
    replicas after each."""
    up, down = windows
    p = policy(scale_up_window=up, scale_down_window=down, min_replicas=1, max_replicas=20)
    current, history, out = 3, (Recommendation(0.0, 3),), []
    for i, load in enumerate(loads):
        now = 15.0 * (i + 1)
        d = decide(steady(current, load * MB, t0=now - 15, t1=now), current, p, history, now)
        history, current = d.history, d.replicas
        out.append(current)
    return out


loads = st.lists(st.floats(min_value=0, max_value=200, allow_nan=False), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    samples=st.lists(
        st.tuples(
            st.integers(0, 5),
            st.floats(0, 120, allow_nan=False),
            st.floats(0, 1e10, allow_nan=False),
            st.integers(0, 10000),
        ),
        max_size=30,
    ),
    current=st.integers(0, 30),
    bounds=st.tuples(st.integers(1, 15), st.integers(0, 15)),
    history=st.lists(
        st.tuples(st.floats(0, 120, allow_nan=False), st.integers(0, 50)), max_size=10
    ),
    blocked=st.booleans(),
)
def test_the_result_is_always_within_the_bounds(samples, current, bounds, history, blocked):
    lo, extra = bounds
    p = policy(min_replicas=lo, max_replicas=lo + extra, partitions=100, scale_up_window=30.0)
    loads_ = [BrokerLoad(b, t, bytes_in=v, partitions=n) for b, t, v, n in samples]
    recs = [Recommendation(t, n) for t, n in history]
    d = decide(loads_, current, p, recs, now=120.0, blocked="x" if blocked else None)
    assert lo <= d.replicas <= lo + extra


@settings(max_examples=200, deadline=None)
@given(
    current=st.integers(3, 10),
    ratio=st.floats(min_value=0.901, max_value=1.099, allow_nan=False),
    down=st.sampled_from([0.0, 300.0]),
)
def test_a_load_within_the_tolerance_never_changes_anything(current, ratio, down):
    p = policy(scale_down_window=down)
    d = decide(steady(current, 10 * MB * ratio), current, p, (), now=60.0)
    assert d.replicas == current and d.recommendation == current


@settings(max_examples=300, deadline=None)
@given(load=loads, windows=st.sampled_from([(0.0, 60.0), (30.0, 120.0), (60.0, 300.0)]))
def test_no_flapping_inside_the_windows(load: list[float], windows: tuple[float, float]):
    up, down = windows
    sizes = _run(load, windows)
    changes = [
        (15.0 * (i + 1), b - a)
        for i, (a, b) in enumerate(itertools.pairwise([3, *sizes]))
        if a != b
    ]
    for (t0, d0), (t1, d1) in itertools.pairwise(changes):
        if d0 > 0 > d1:
            assert t1 - t0 >= down  # no scale-down within the down window of a scale-up
        if d0 < 0 < d1:
            assert t1 - t0 >= up


def test_flapping_load_does_not_flap_the_cluster() -> None:
    # load swinging between far above and far below the target every evaluation
    sizes = _run([30, 1] * 20, (60.0, 300.0))
    assert len(set(sizes)) == 1
    # a sustained load scales up once the up window is over, a quiet one down after 300 s
    sizes = _run([30] * 6 + [1] * 30, (60.0, 300.0))
    assert sizes[0] == 3 and max(sizes) > 3 and sizes[-1] < max(sizes)


# -- the spec ---------------------------------------------------------------------------------


def autoscaled(**autoscaling: object) -> dict:
    body = quick_start()
    body["spec"]["autoscaling"] = {"enabled": True, **autoscaling}
    return as_stored(body)


@pytest.mark.parametrize(
    ("autoscaling", "field", "words"),
    [
        ({"minReplicas": 5, "maxReplicas": 4, "targets": {"partitions": 9}}, "spec", "minReplicas"),
        ({}, "spec", "at least one of targets"),
        (
            {"targets": {"cpuUtilizationPercent": 70}},
            "spec.autoscaling.targets.cpuUtilizationPercent",
            "CPU request or limit",
        ),
        (
            {"minReplicas": 2, "targets": {"partitions": 9}},
            "spec.autoscaling.minReplicas",
            "at least 3",
        ),
    ],
)
def test_bad_autoscaling_specs_name_the_field(autoscaling: dict, field: str, words: str) -> None:
    with pytest.raises(ModelError) as exc:
        ClusterModel.from_resource(autoscaled(**autoscaling))
    assert str(exc.value).startswith(field) and words in str(exc.value)


def test_disabled_autoscaling_is_not_checked_and_defaults_are_the_documented_ones() -> None:
    model = ClusterModel.from_resource(autoscaled(enabled=False))
    spec = model.spec.autoscaling
    assert not spec.enabled
    assert (spec.min_replicas, spec.max_replicas) == (3, 10)
    assert (spec.scale_up_stabilization_seconds, spec.scale_down_stabilization_seconds) == (
        60,
        300,
    )
    body = autoscaled(targets={"cpuUtilizationPercent": 70})
    body["spec"]["resources"] = {"limits": {"cpu": "4"}}
    policy = Policy.from_spec(
        ClusterModel.from_resource(body).spec.autoscaling, {"limits": {"cpu": "4"}}
    )
    assert policy.cpu_cores == 4.0 and policy.cpu_utilization_percent == 70
