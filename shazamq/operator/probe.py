"""Reading a cluster's own view of itself, for the roll planner and the status.

Two sources, both the brokers' public interfaces (never their internals):

- each broker's Prometheus endpoint (``http://<pod address>:<metricsPort>/metrics``, plain
  HTTP, no credentials): ``shazamq_active_controller`` names the active controller and
  ``shazamq_under_replicated_partitions`` (counted by each partition's leader) sums to the
  cluster's under-replicated partitions;
- a Kafka admin client (confluent-kafka's AdminClient, run in a thread) against the
  brokers' listener, over the operator's `admin.Connection` (the cluster CA with TLS, its
  own user with SASL): every partition's replicas, ISR and leader (Metadata) and every
  topic's ``min.insync.replicas`` (DescribeConfigs). When the operator cannot log in (its
  credentials Secret is missing) only the metrics are read and the planner applies its
  stricter metrics-only rule.

The same scrape gives each broker's load counters (`load_of()`, for the autoscaler) and
its report of a restore from the bucket (`shazamq.operator.restore`).

`parse_metrics()` and `partitions_of()` are pure and tested on their own.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import aiohttp

from shazamq.operator.admin import Connection
from shazamq.operator.autoscale import BrokerLoad
from shazamq.operator.restore import RESTORE_METRICS, RestoreProgress, merge, progress_of
from shazamq.operator.roll import ClusterView, Partition

__all__ = [
    "ProbeError",
    "load_of",
    "merge_mirror_sources",
    "mirror_sources_of",
    "parse_metrics",
    "partitions_of",
    "read_cluster",
]

ADMIN_TIMEOUT = 10.0
METRICS_TIMEOUT = 5.0
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(?P<value>\S+)")
_LABELLED = re.compile(r"^(?P<name>shazamq_mirror_\w+)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
# a source's state as the cluster reports it: the worst any broker sees
_STATE_RANK = {"down": 3, "starting": 2, "connected": 1, "stopped": 0}


class ProbeError(Exception):
    """The cluster could not be read; the message says what failed."""


def parse_metrics(text: str, names: Iterable[str]) -> dict[str, float]:
    """The unlabelled samples of `names` in a Prometheus text exposition (summed over labels)."""
    wanted = set(names)
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None or m.group("name") not in wanted:
            continue
        try:
            value = float(m.group("value"))
        except ValueError:
            continue
        out[m.group("name")] = out.get(m.group("name"), 0.0) + value
    return out


def mirror_sources_of(text: str) -> dict[str, dict[str, Any]]:
    """One broker's mirror sources from its metrics: ``name -> {state, partitions,
    lagRecords}`` (``shazamq_mirror_source_state`` and ``shazamq_mirror_lag_offsets``)."""
    out: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        m = _LABELLED.match(line)
        if m is None:
            continue
        labels = dict(_LABEL.findall(m.group("labels")))
        source = labels.get("source")
        if source is None:
            continue
        try:
            value = float(m.group("value"))
        except ValueError:
            continue
        entry = out.setdefault(source, {"state": "starting", "partitions": 0, "lagRecords": 0})
        name = m.group("name")
        if name == "shazamq_mirror_source_state" and value >= 1:
            entry["state"] = labels.get("state", "starting")
        elif name == "shazamq_mirror_lag_offsets":
            entry["partitions"] += 1
            entry["lagRecords"] += max(0, int(value))
    return out


def merge_mirror_sources(per_broker: Iterable[Mapping[str, Mapping[str, Any]]]) -> list[dict]:
    """The cluster's view of each source (`MirrorSourceStatus` dicts, sorted by name):
    the worst state any broker reports, partitions and lag added up."""
    merged: dict[str, dict[str, Any]] = {}
    for sources in per_broker:
        for name, s in sources.items():
            m = merged.setdefault(
                name,
                {"name": name, "state": "stopped", "brokers": 0, "partitions": 0, "lagRecords": 0},
            )
            if _STATE_RANK.get(s["state"], 2) > _STATE_RANK.get(m["state"], 2):
                m["state"] = s["state"]
            m["brokers"] += 1
            m["partitions"] += s["partitions"]
            m["lagRecords"] += s["lagRecords"]
    return [merged[name] for name in sorted(merged)]


def partitions_of(
    topics: Mapping[str, Sequence[tuple[int, Sequence[int], Sequence[int], int]]],
    min_isr: Mapping[str, int],
    default_min_isr: int,
) -> tuple[Partition, ...]:
    """Partitions from ``topic -> [(index, replicas, isr, leader)]`` and the topics'
    min.insync.replicas (a topic without one has the broker default)."""
    return tuple(
        Partition(
            topic,
            index,
            tuple(replicas),
            tuple(isr),
            leader,
            min_isr.get(topic, default_min_isr),
        )
        for topic, parts in sorted(topics.items())
        for index, replicas, isr, leader in sorted(parts)
    )


_LOAD_METRICS = ("shazamq_topic_bytes_in_total", "process_cpu_seconds_total")
_HOSTED = "shazamq_log_end_offset"  # one series per partition replica hosted


def load_of(text: str, broker: int, now: float) -> BrokerLoad:
    """One broker's load counters (for the autoscaler) from its metrics exposition."""
    values = parse_metrics(text, _LOAD_METRICS)
    hosted = sum(1 for line in text.splitlines() if line.startswith(_HOSTED + "{"))
    return BrokerLoad(
        broker=broker,
        time=now,
        bytes_in=values.get("shazamq_topic_bytes_in_total", 0.0),
        cpu_seconds=values.get("process_cpu_seconds_total"),
        partitions=hosted,
    )


async def _scrape(
    session: aiohttp.ClientSession, url: str, broker: int
) -> tuple[dict[str, float], dict[str, dict[str, Any]], BrokerLoad, RestoreProgress | None]:
    async with session.get(url) as resp:
        if resp.status != 200:
            raise ProbeError(f"{url}: HTTP {resp.status}")
        text = await resp.text()
    wanted = ("shazamq_active_controller", "shazamq_under_replicated_partitions")
    load = load_of(text, broker, time.monotonic())
    restore = progress_of(parse_metrics(text, RESTORE_METRICS))
    return parse_metrics(text, wanted), mirror_sources_of(text), load, restore


def _admin_read(
    bootstrap: str, default_min_isr: int, connection: Connection
) -> tuple[Partition, ...]:  # pragma: no cover - runs in a thread, covered end to end
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

    admin = AdminClient(
        {"bootstrap.servers": bootstrap, "socket.timeout.ms": 5000, **connection.librdkafka()}
    )
    try:
        md = admin.list_topics(timeout=ADMIN_TIMEOUT)
        topics = {
            name: [(pid, p.replicas, p.isrs, p.leader) for pid, p in t.partitions.items()]
            for name, t in md.topics.items()
            if t.error is None
        }
        resources = [ConfigResource(ResourceType.TOPIC, name) for name in topics]
        min_isr: dict[str, int] = {}
        if resources:
            futures = admin.describe_configs(resources, request_timeout=ADMIN_TIMEOUT)
            for res, fut in futures.items():
                entry = fut.result(timeout=ADMIN_TIMEOUT).get("min.insync.replicas")
                if entry is not None and entry.value is not None:
                    min_isr[res.name] = int(entry.value)
    except KafkaException as exc:
        raise ProbeError(f"admin client: {exc}") from None
    return partitions_of(topics, min_isr, default_min_isr)


async def read_cluster(
    *,
    brokers: Sequence[tuple[int, str]],
    metrics_port: int,
    kafka_port: int,
    connection: Connection | None,
    default_min_isr: int,
    partitions: bool = True,
) -> ClusterView:
    """The view of the cluster whose live brokers are ``(id, address host)``; raises
    ProbeError when nothing useful could be read. ``partitions=False`` reads the metrics
    only (the controller, for the status), as does ``connection=None`` (the operator
    cannot log in to the listener)."""
    if not brokers:
        raise ProbeError("no broker is running")
    timeout = aiohttp.ClientTimeout(total=METRICS_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        results = await asyncio.gather(
            *(
                _scrape(session, f"http://{host}:{metrics_port}/metrics", broker_id)
                for broker_id, host in brokers
            ),
            return_exceptions=True,
        )
    controller: int | None = None
    under: int | None = 0
    mirrors: list[dict[str, dict[str, Any]]] = []
    loads: list[BrokerLoad] = []
    restores: list[RestoreProgress | None] = []
    for (broker_id, _), result in zip(brokers, results, strict=True):
        if isinstance(result, BaseException):
            under = None  # one broker's count is missing: the total is unknown
            if not isinstance(result, ProbeError | aiohttp.ClientError | TimeoutError):
                raise result
            continue
        values, sources, load, restore = result
        mirrors.append(sources)
        loads.append(load)
        restores.append(restore)
        if values.get("shazamq_active_controller", 0.0) >= 1:
            controller = broker_id
        if under is not None:
            under += int(values.get("shazamq_under_replicated_partitions", 0.0))
    mirror = tuple(merge_mirror_sources(mirrors))
    extra = {"loads": tuple(loads), "restore": merge(restores)}
    if connection is None or not partitions:
        return ClusterView(controller, None, under, mirror, **extra)
    bootstrap = ",".join(f"{host}:{kafka_port}" for _, host in brokers)
    loop = asyncio.get_running_loop()
    partitions = await loop.run_in_executor(
        None, _admin_read, bootstrap, default_min_isr, connection
    )
    return ClusterView(controller, partitions, under, mirror, **extra)
