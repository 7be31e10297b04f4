"""The operator's own Prometheus metrics, and the small HTTP server that exposes them.

Why its own registry and server: the operator runs in its own process (not in a broker),
and tests run several operators in one process, so every `OperatorMetrics` has a private
`CollectorRegistry` rather than the global one. The server is aiohttp on the operator's
event loop (``GET /metrics``), started and stopped with the operator.

Series:

- ``shazamq_operator_reconciliations_total{result}``: reconciliations by outcome
  (``success``, ``invalid_spec``, ``apply_failed``, ``error``);
- ``shazamq_operator_reconcile_duration_seconds``: how long they took;
- ``shazamq_operator_clusters{phase}``: ShazamqClusters by phase, as last written to their
  status (a cluster that is deleted is forgotten).
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

PHASES = ("Creating", "Restoring", "Running", "Updating", "Degraded", "Failed")
RESULTS = ("success", "invalid_spec", "apply_failed", "error")


class _PhaseCollector(Collector):
    def __init__(self, phases: dict[tuple[str, str], str]) -> None:
        self._phases = phases

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "shazamq_operator_clusters", "ShazamqClusters by phase.", labels=["phase"]
        )
        for phase in PHASES:
            family.add_metric([phase], sum(1 for p in self._phases.values() if p == phase))
        yield family


class OperatorMetrics:
    """The operator's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.reconciliations = Counter(
            "shazamq_operator_reconciliations",
            "Reconciliations of ShazamqClusters, by result.",
            ["result"],
            registry=self.registry,
        )
        for result in RESULTS:
            self.reconciliations.labels(result=result)
        self.duration = Histogram(
            "shazamq_operator_reconcile_duration_seconds",
            "Time spent reconciling one ShazamqCluster.",
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self._phases: dict[tuple[str, str], str] = {}
        self.registry.register(_PhaseCollector(self._phases))

    def set_phase(self, namespace: str, name: str, phase: str | None) -> None:
        if phase is None:
            self._phases.pop((namespace, name), None)
        else:
            self._phases[namespace, name] = phase

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """``GET /metrics`` on a port of the operator's event loop."""

    def __init__(self, metrics: OperatorMetrics, host: str = "0.0.0.0", port: int = 8080) -> None:
        self._metrics = metrics
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def _serve(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        addresses = self._runner.addresses  # the real port, when 0 was asked for
        self.port = addresses[0][1] if addresses else self._port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
