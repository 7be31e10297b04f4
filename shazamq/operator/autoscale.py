"""The autoscaler's decision: how many brokers the load asks for, and whether to act on it.

Pure: the handler gathers each broker's samples (`BrokerLoad`, scraped from the brokers'
own Prometheus endpoints by the roll loop's probe), the current ``replicas``, the policy
(`Policy`, from ``spec.autoscaling``) and the recommendations of earlier evaluations;
`decide()` returns the replicas wanted, a reason in words, and the history to keep.

The rules are those of Kubernetes' HorizontalPodAutoscaler, applied to brokers:

1. **Usage per broker**, over the last ``metricsWindowSeconds``: bytes produced per second
   (the rate of ``shazamq_topic_bytes_in_total``), CPU (the rate of
   ``process_cpu_seconds_total`` over the pod's CPU request, else its limit, as a
   percentage) and partition replicas hosted (the latest count), averaged over the brokers
   that reported. A counter that went down (a restarted broker) is measured from its
   restart on.
2. **Recommendation**: for each target, ``ceil(replicas * usage / target)``, or
   ``replicas`` when ``usage / target`` is within the tolerance (10%) of 1; the largest
   over the targets. No usage at all: no recommendation, nothing changes.
3. **Stabilization**: the recommendation is recorded; a scale-up goes to the *smallest*
   recommendation of the scale-up window, and only if that is above ``replicas``; a
   scale-down to the *largest* of the scale-down window, only if that is below. So load
   that swings inside a window does not swing the cluster: after a scale-up, no
   scale-down can follow within the scale-down window, and the other way round.
4. **Bounds**: the result is kept within ``[minReplicas, maxReplicas]``; a cluster outside
   them is brought back inside without waiting for metrics.

Nothing is decided while something else changes the cluster (a rolling restart, a scaling
still moving data, brokers not ready): ``blocked`` says what, and no recommendation is
recorded then (the load of a cluster in motion is not its load).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "TOLERANCE",
    "BrokerLoad",
    "Decision",
    "Policy",
    "Recommendation",
    "Usage",
    "cpu_cores",
    "decide",
    "usage_of",
]

TOLERANCE = 0.1  # no change while usage is within 10% of the target (as the HPA)


@dataclass(frozen=True)
class BrokerLoad:
    """One scrape of one broker: its counters as read (None: the metric was absent)."""

    broker: int
    time: float  # seconds, of a monotonic clock
    bytes_in: float | None = None  # shazamq_topic_bytes_in_total, over every topic
    cpu_seconds: float | None = None  # process_cpu_seconds_total
    partitions: int | None = None  # partition replicas hosted


@dataclass(frozen=True)
class Recommendation:
    time: float
    replicas: int


@dataclass(frozen=True)
class Policy:
    """``spec.autoscaling`` as the decision needs it; `cpu_cores`: the pod's CPU request
    (else limit) in cores, needed by the CPU target."""

    min_replicas: int
    max_replicas: int
    bytes_in_per_second: float | None = None
    cpu_utilization_percent: float | None = None
    partitions: float | None = None
    scale_up_window: float = 60.0
    scale_down_window: float = 300.0
    metrics_window: float = 60.0
    cpu_cores: float | None = None
    tolerance: float = TOLERANCE

    @classmethod
    def from_spec(cls, spec: Any, resources: Mapping[str, Any]) -> Policy:
        t = spec.targets
        return cls(
            min_replicas=spec.min_replicas,
            max_replicas=spec.max_replicas,
            bytes_in_per_second=t.bytes_in_per_second,
            cpu_utilization_percent=t.cpu_utilization_percent,
            partitions=t.partitions,
            scale_up_window=float(spec.scale_up_stabilization_seconds),
            scale_down_window=float(spec.scale_down_stabilization_seconds),
            metrics_window=float(spec.metrics_window_seconds),
            cpu_cores=cpu_cores(resources),
        )


@dataclass(frozen=True)
class Usage:
    """Average usage per broker (None: not measured)."""

    bytes_in_per_second: float | None = None
    cpu_utilization_percent: float | None = None
    partitions: float | None = None


@dataclass(frozen=True)
class Decision:
    """`replicas`: what the cluster should have (the current count: no change);
    `recommendation`: what the load alone asked for this time (None: nothing measured, or
    blocked); `history`: the recommendations to pass to the next `decide()`."""

    replicas: int
    reason: str
    usage: Usage
    recommendation: int | None
    history: tuple[Recommendation, ...]


_CPU = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(m?)$")


def cpu_cores(resources: Mapping[str, Any]) -> float | None:
    """The pod's CPU request in cores, else its limit; None when neither is set (or is not
    a plain quantity such as ``2``, ``0.5`` or ``1500m``)."""
    for part in ("requests", "limits"):
        value = ((resources or {}).get(part) or {}).get("cpu")
        if value is None:
            continue
        m = _CPU.match(str(value).strip())
        if m is None:
            return None
        cores = float(m.group(1)) / (1000 if m.group(2) else 1)
        return cores if cores > 0 else None
    return None


def _rate(points: Sequence[tuple[float, float]]) -> float | None:
    """Per-second rate of a counter from (time, value) points sorted by time, measured from
    its last reset on."""
    start = 0
    for i in range(1, len(points)):
        if points[i][1] < points[i - 1][1]:
            start = i
    points = points[start:]
    if len(points) < 2:
        return None
    (t0, v0), (t1, v1) = points[0], points[-1]
    if t1 <= t0:
        return None
    return (v1 - v0) / (t1 - t0)


def _mean(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def usage_of(
    samples: Iterable[BrokerLoad], now: float, window: float, cores: float | None
) -> Usage:
    """Average usage per broker over the samples of the last `window` seconds."""
    by_broker: dict[int, list[BrokerLoad]] = {}
    for s in samples:
        if now - window <= s.time <= now:
            by_broker.setdefault(s.broker, []).append(s)
    bytes_in: list[float | None] = []
    cpu: list[float | None] = []
    partitions: list[float | None] = []
    for loads in by_broker.values():
        loads.sort(key=lambda s: s.time)
        bytes_in.append(_rate([(s.time, s.bytes_in) for s in loads if s.bytes_in is not None]))
        seconds = _rate([(s.time, s.cpu_seconds) for s in loads if s.cpu_seconds is not None])
        cpu.append(None if seconds is None or not cores else 100.0 * seconds / cores)
        counts = [s.partitions for s in loads if s.partitions is not None]
        partitions.append(float(counts[-1]) if counts else None)
    return Usage(_mean(bytes_in), _mean(cpu), _mean(partitions))


def _fmt_bytes(value: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:.1f} {unit}/s"
    return f"{value:.0f} B/s"


def _targets(usage: Usage, policy: Policy) -> list[tuple[str, float, float, str]]:
    """(name, usage, target, usage and target in words) of every target that was measured."""
    out = []
    if policy.bytes_in_per_second is not None and usage.bytes_in_per_second is not None:
        u, t = usage.bytes_in_per_second, policy.bytes_in_per_second
        out.append(("bytes in", u, t, f"{_fmt_bytes(u)} per broker (target {_fmt_bytes(t)})"))
    cpu_target = policy.cpu_utilization_percent
    if cpu_target is not None and usage.cpu_utilization_percent is not None:
        u = usage.cpu_utilization_percent
        out.append(("cpu", u, cpu_target, f"{u:.0f}% per broker (target {cpu_target:.0f}%)"))
    if policy.partitions is not None and usage.partitions is not None:
        u, t = usage.partitions, policy.partitions
        out.append(("partitions", u, t, f"{u:.0f} per broker (target {t:.0f})"))
    return out


def _recommend(usage: Usage, current: int, policy: Policy) -> tuple[int, str] | None:
    """The load's recommendation and the target behind it, or None when nothing was
    measured."""
    proposals = []
    for name, used, target, words in _targets(usage, policy):
        ratio = used / target
        if abs(ratio - 1.0) <= policy.tolerance or current == 0:
            proposal = current
        else:
            proposal = max(1, math.ceil(current * ratio - 1e-9))
        proposals.append((proposal, ratio, f"{name} {words}"))
    if not proposals:
        return None
    proposal, _, words = max(proposals)
    return proposal, words


def _clamp(n: int, policy: Policy) -> int:
    return max(policy.min_replicas, min(policy.max_replicas, n))


def decide(
    samples: Iterable[BrokerLoad],
    current: int,
    policy: Policy,
    history: Iterable[Recommendation],
    now: float,
    *,
    blocked: str | None = None,
) -> Decision:
    """The autoscaler's decision now (see the module docstring)."""
    keep = max(policy.scale_up_window, policy.scale_down_window)
    past = tuple(r for r in history if now - r.time <= keep)
    usage = usage_of(samples, now, policy.metrics_window, policy.cpu_cores)
    bounded = _clamp(current, policy)
    if bounded != current:
        why = "below minReplicas" if bounded > current else "above maxReplicas"
        return Decision(
            bounded, f"{current} brokers is {why}: {current} -> {bounded}", usage, None, past
        )
    if blocked is not None:
        return Decision(current, f"waiting for {blocked}", usage, None, past)
    recommended = _recommend(usage, current, policy)
    if recommended is None:
        return Decision(current, "no load measured yet", usage, None, past)
    raw, words = recommended
    history_now = (*past, Recommendation(now, raw))
    up = min(
        (r.replicas for r in history_now if now - r.time <= policy.scale_up_window), default=raw
    )
    down = max(
        (r.replicas for r in history_now if now - r.time <= policy.scale_down_window),
        default=raw,
    )
    desired = current
    if desired < up:
        desired = up
    if desired > down:
        desired = down
    desired = _clamp(desired, policy)
    if desired != current:
        reason = f"{words}: {current} -> {desired}"
    elif raw == current:
        reason = f"{words}: {current} brokers fit"
    else:
        limit = "maxReplicas" if raw > current and current == policy.max_replicas else None
        limit = limit or (
            "minReplicas" if raw < current and current == policy.min_replicas else None
        )
        if limit is not None:
            reason = f"{words}: {raw} brokers wanted, held at {current} by {limit}"
        else:
            window = "scale-up" if raw > current else "scale-down"
            seconds = policy.scale_up_window if raw > current else policy.scale_down_window
            reason = (
                f"{words}: {raw} brokers wanted, held at {current} by the {window} "
                f"stabilization window ({seconds:.0f}s)"
            )
    return Decision(desired, reason, usage, raw, history_now)
