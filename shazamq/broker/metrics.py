"""Prometheus metrics of one broker, and the HTTP endpoint that serves them.

Each broker gets its own registry (tests run several brokers in one process). Counters on
the hot path are bumped once per partition per request, never per record. State that
already lives elsewhere (log end offsets, sizes, connection count, group states) is read
at scrape time by a collector instead of being mirrored into gauges on every change.
"""

from __future__ import annotations

import contextlib
import enum
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

_SHUTDOWN_POLL_S = 0.05


class _QuietHandler(WSGIRequestHandler):
    """Scrapes are not logged (as prometheus-client's own server does)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class BrokerState(enum.IntEnum):
    """Broker lifecycle, exported as `shazamq_broker_state`."""

    STARTING = 0
    RECOVERING = 1
    RUNNING = 2
    SHUTTING_DOWN = 3


_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class _LiveCollector(Collector):
    """Calls the registered probes at scrape time."""

    def __init__(self) -> None:
        self.probes: list[Callable[[], Iterable[Metric]]] = []

    def collect(self) -> Iterator[Metric]:
        for probe in list(self.probes):
            yield from probe()


class BrokerMetrics:
    """The broker's metric families."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # process_cpu_seconds_total and friends: the operator's autoscaler reads the CPU
        # rate (read from /proc at scrape time; nothing where /proc is absent)
        ProcessCollector(registry=r)
        self.requests = Counter(
            "shazamq_requests", "Requests handled, by API.", ["api"], registry=r
        )
        self.request_errors = Counter(
            "shazamq_request_errors",
            "Error codes returned, by API and Kafka error name (per partition where the "
            "protocol reports per partition).",
            ["api", "error"],
            registry=r,
        )
        self.request_latency = Histogram(
            "shazamq_request_latency_seconds",
            "Time from a request's arrival to its response being queued, by API.",
            ["api"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.bytes_in = Counter(
            "shazamq_topic_bytes_in",
            "Record batch bytes appended, by topic.",
            ["topic"],
            registry=r,
        )
        self.messages_in = Counter(
            "shazamq_topic_messages_in", "Records appended, by topic.", ["topic"], registry=r
        )
        self.messages_out = Counter(
            "shazamq_topic_messages_out",
            "Records served to fetches, by topic.",
            ["topic"],
            registry=r,
        )
        self.bytes_out = Counter(
            "shazamq_topic_bytes_out",
            "Record batch bytes fetched, by topic.",
            ["topic"],
            registry=r,
        )
        self.connections_total = Counter(
            "shazamq_connections_accepted", "Client connections accepted.", registry=r
        )
        self.connections_refused = Counter(
            "shazamq_connections_refused",
            "Connections closed at once because a cap was reached, by the cap "
            "(max_connections, max_connections_per_ip).",
            ["reason"],
            registry=r,
        )
        self.quota_throttle_time = Histogram(
            "shazamq_quota_throttle_time_seconds",
            "Throttle time given to clients over a quota, by the quota that decided it "
            "(produce, fetch, request).",
            ["quota_type"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
            registry=r,
        )
        self.fetch_session_evictions = Counter(
            "shazamq_fetch_session_evictions",
            "Incremental fetch sessions evicted from the full session cache to make room "
            "for another (Kafka's IncrementalFetchSessionEvictionsPerSec: take its rate).",
            registry=r,
        )
        self.state = BrokerState.STARTING
        self._live = _LiveCollector()
        r.register(self._live)
        self.add_probe(self._state_probe)
        self._http: Any = None
        self._http_thread: threading.Thread | None = None

    def forget_topic(self, topic: str) -> None:
        """Drop a deleted topic's label children, so deleted topics do not pile up."""
        for family in (self.bytes_in, self.messages_in, self.messages_out, self.bytes_out):
            with contextlib.suppress(KeyError):
                family.remove(topic)

    # -- live probes -----------------------------------------------------------------

    def add_probe(self, probe: Callable[[], Iterable[Metric]]) -> None:
        """Register a function producing metric families at scrape time."""
        self._live.probes.append(probe)

    def watch_fetch_sessions(self, stats: Callable[[], tuple[int, int]]) -> None:
        """Export the fetch session cache's (sessions, partitions cached) at scrape time."""

        def probe() -> Iterable[Metric]:
            sessions, partitions = stats()
            g = GaugeMetricFamily(
                "shazamq_fetch_sessions",
                "Incremental fetch sessions cached (Kafka's NumIncrementalFetchSessions).",
            )
            g.add_metric([], sessions)
            yield g
            g = GaugeMetricFamily(
                "shazamq_fetch_session_partitions",
                "Partitions held by all cached fetch sessions "
                "(Kafka's NumIncrementalFetchPartitionsCached).",
            )
            g.add_metric([], partitions)
            yield g

        self.add_probe(probe)

    def _state_probe(self) -> Iterable[Metric]:
        g = GaugeMetricFamily(
            "shazamq_broker_state",
            "Broker state: 0 starting, 1 recovering, 2 running, 3 shutting down.",
        )
        g.add_metric([], int(self.state))
        yield g

    # -- helpers for the hot path ----------------------------------------------------

    def record_error(self, api: str, error_name: str) -> None:
        self.request_errors.labels(api, error_name).inc()

    # -- the endpoint ------------------------------------------------------------------

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics HTTP endpoint in a daemon thread; returns the bound port.

        Scrapes are rendered in the server's threads, so a slow scrape never stalls the
        event loop.
        """
        family, _type, _proto, _name, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]

        class Server(ThreadingWSGIServer):
            address_family = family

        self._http = make_server(
            sockaddr[0], port, make_wsgi_app(self.registry), Server, handler_class=_QuietHandler
        )
        # prometheus-client's own server polls for shutdown every 0.5 s, so every broker
        # stop waited up to that long on the event loop; a tenth of that is still idle
        self._http_thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": _SHUTDOWN_POLL_S},
            name="metrics-http",
            daemon=True,
        )
        self._http_thread.start()
        return int(self._http.server_port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
