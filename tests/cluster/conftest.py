"""Starting brokers for multi-broker fault tests: on loopback or inside network namespaces.

`cluster_factory.start(n, netns=...)` renders one TOML file per broker (distinct ``node_id``,
address, data dir, ports and, for more than one broker, the ``[cluster]`` voters and secret),
starts ``python -m shazamq.broker --config FILE`` for each, and waits until every Kafka port
answers ApiVersions. Each broker is a `BrokerProcess` with crash, pause and restart controls;
all of them are killed when the test ends, and their logs' tails are printed if it failed.

Modes:

* loopback (``netns=False``, no root needed): every broker on 127.0.0.1 with free ports;
* netns (``netns=True``, root): broker *i* runs in host *i* of a `NetnsLab`
  (``198.18.k.(i+1)``) on the fixed ports 9092 (Kafka), 9093 (quorum) and 9090 (metrics);
  the test's clients connect from the root namespace (``198.18.k.254``). The test is skipped
  when namespaces cannot be used here.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from shazamq.config import BrokerConfig, dump_toml, parse_config
from tests.conftest import free_port

from . import netns as netns_mod
from .netns import NetnsHost, NetnsLab

ROOT = Path(__file__).resolve().parents[2]

NETNS_KAFKA_PORT = 9092
NETNS_QUORUM_PORT = 9093
NETNS_METRICS_PORT = 9090
MAX_VOTERS = 3
START_TIMEOUT = 30.0

# Settings that make brokers quick to test (as tests/conftest.py uses): no rebalance delay,
# short sessions allowed, few internal partitions.
TEST_DEFAULTS: dict[str, Any] = {
    "groups": {
        "initial_rebalance_delay_ms": 0,
        "min_session_timeout_ms": 1000,
        "offsets_topic_num_partitions": 4,
    },
    "transactions": {"state_log_num_partitions": 4},
}

ExtraConfig = Mapping[str, Any] | Callable[[int], Mapping[str, Any]] | None


# -- readiness -------------------------------------------------------------------------------

API_VERSIONS_KEY = 18


def api_versions(
    host: str, port: int, timeout: float = 2.0, tls: ssl.SSLContext | None = None
) -> int:
    """Send ApiVersions v0 over a fresh connection; the response's error code.

    Raises OSError (``TimeoutError`` included) when the broker does not answer in `timeout`
    seconds, ConnectionError when it closes the connection. With `tls`, over TLS.
    """
    correlation_id = 0x5A5A
    client_id = b"shzq-harness"
    header = struct.pack(">hhih", API_VERSIONS_KEY, 0, correlation_id, len(client_id))
    request = header + client_id
    deadline = time.monotonic() + timeout
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(socket.create_connection((host, port), timeout=timeout))
        if tls is not None:
            sock = stack.enter_context(tls.wrap_socket(sock, server_hostname=host))
        sock.sendall(struct.pack(">i", len(request)) + request)

        def recv_exactly(n: int) -> bytes:
            buf = bytearray()
            while len(buf) < n:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                chunk = sock.recv(n - len(buf))
                if not chunk:
                    raise ConnectionError(f"{host}:{port} closed the connection")
                buf += chunk
            return bytes(buf)

        (size,) = struct.unpack(">i", recv_exactly(4))
        body = recv_exactly(size)
    got_id, error_code = struct.unpack_from(">ih", body)
    if got_id != correlation_id:
        raise ConnectionError(f"{host}:{port} answered correlation id {got_id}")
    return int(error_code)


def tcp_connect_time(host: str, port: int, timeout: float = 5.0) -> float:
    """Seconds one TCP handshake with host:port takes."""
    start = time.monotonic()
    with socket.create_connection((host, port), timeout=timeout):
        return time.monotonic() - start


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on 127.0.0.1, from this worker's slice (see
    `tests.conftest.free_port`: handed out in turn, so distinct)."""
    return [free_port() for _ in range(n)]


# -- one broker ------------------------------------------------------------------------------


class BrokerStartError(RuntimeError):
    """A broker exited or did not answer ApiVersions in time (the message has its log tail)."""


class BrokerProcess:
    """One broker subprocess: its config file, data dir and log outlive restarts."""

    def __init__(
        self,
        config: BrokerConfig,
        workdir: Path,
        host: NetnsHost | None = None,
    ) -> None:
        self.config = config
        self.node_id = config.broker.node_id
        self.host = host
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"node-{self.node_id}.toml"
        self.log_path = workdir / f"node-{self.node_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped = False
        self.starts = 0
        self.config_path.write_text(dump_toml(config), encoding="utf-8")

    def __repr__(self) -> str:
        where = self.host.name if self.host else "loopback"
        return f"BrokerProcess(node {self.node_id} at {self.bootstrap}, {where})"

    # where it is
    @property
    def address(self) -> str:
        """The address clients use (the advertised host)."""
        return self.config.broker.advertised_host or self.config.broker.host

    @property
    def port(self) -> int:
        return self.config.broker.port

    @property
    def bootstrap(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def metrics_port(self) -> int:
        return self.config.metrics.port

    @property
    def data_dir(self) -> Path:
        return Path(self.config.broker.data_dir)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # life cycle
    def launch(self) -> None:
        """Start the process without waiting for it (`wait_ready` does that)."""
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        argv = [sys.executable, "-m", "shazamq.broker", "--config", str(self.config_path)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHAZAMQ_")}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env["SHAZAMQ_LOG_LEVEL"] = "INFO"
        with open(self.log_path, "ab") as log:
            stamp = time.strftime("%H:%M:%S")
            log.write(f"==== harness: start #{self.starts} at {stamp} ====\n".encode())
            log.flush()
            popen: dict[str, Any] = {
                "env": env,
                "stdout": log,
                "stderr": subprocess.STDOUT,
                "stdin": subprocess.DEVNULL,
                "cwd": str(ROOT),
            }
            if self.host is not None:
                self.proc = self.host.run(argv, **popen)
            else:
                self.proc = subprocess.Popen(argv, **popen)
        self.stopped = False

    def wait_ready(self, timeout: float = START_TIMEOUT) -> BrokerProcess:
        """Wait until the Kafka port answers ApiVersions with error code 0."""
        deadline = time.monotonic() + timeout
        last: object = "no attempt"
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise BrokerStartError(
                    f"{self!r} exited with {code} before answering\n{self.log_tail()}"
                )
            try:
                error = api_versions(self.address, self.port, timeout=1.0, tls=self.tls_context())
            except OSError as exc:
                last = exc
            else:
                if error == 0:
                    return self
                last = f"ApiVersions error code {error}"
            time.sleep(0.05)
        raise BrokerStartError(
            f"{self!r} did not answer ApiVersions in {timeout}s (last: {last})\n{self.log_tail()}"
        )

    def start(self, timeout: float = START_TIMEOUT) -> BrokerProcess:
        self.launch()
        return self.wait_ready(timeout)

    def restart(self, timeout: float = START_TIMEOUT) -> BrokerProcess:
        """Same config file, same data dir: SIGTERM first if it still runs, then start."""
        if self.running:
            self.terminate()
        return self.start(timeout)

    def kill9(self) -> int:
        """SIGKILL, the crash path; the exit code (-9)."""
        assert self.proc is not None, "never started"
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.stopped = False
        return self.proc.wait(30)

    def sigstop(self) -> None:
        """Freeze the process (a GC pause or a hung VM): connections stay open, nothing answers."""
        assert self.proc is not None and self.running, "not running"
        self.proc.send_signal(signal.SIGSTOP)
        self.stopped = True

    def sigcont(self) -> None:
        assert self.proc is not None and self.running, "not running"
        self.proc.send_signal(signal.SIGCONT)
        self.stopped = False

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (the clean shutdown path) and wait; the exit code.

        Killed with SIGKILL if it has not exited after `timeout` seconds, then TimeoutError.
        """
        assert self.proc is not None, "never started"
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        if self.stopped:
            self.sigcont()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
            raise TimeoutError(
                f"{self!r} did not exit within {timeout}s of SIGTERM\n{self.log_tail()}"
            ) from None

    def stop(self) -> None:
        """Teardown: wake it if frozen, then SIGKILL. Never raises for a dead process."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(30)
        self.stopped = False

    # diagnosis
    def api_versions(self, timeout: float = 2.0) -> int:
        return api_versions(self.address, self.port, timeout, tls=self.tls_context())

    def tls_context(self) -> ssl.SSLContext | None:
        """For readiness checks against a TLS listener: its CA, and its own certificate
        where the listener requires client certificates."""
        tls = self.config.security.tls
        if not tls.enabled:
            return None
        ctx = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file:  # as the brokers verify each other: their shared certificate
            ctx.load_verify_locations(cafile=tls.cert_file)
            ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        if tls.ca_file and tls.cert_file and tls.key_file:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        return ctx

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return f"---- last {len(tail)} lines of {self.log_path} ----\n" + "\n".join(tail)


# -- configs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """Where one broker listens."""

    address: str  # bound and advertised
    kafka_port: int
    quorum_port: int
    metrics_port: int


def loopback_endpoints(n: int) -> list[Endpoint]:
    ports = free_ports(3 * n)
    return [Endpoint("127.0.0.1", *ports[3 * i : 3 * i + 3]) for i in range(n)]


def netns_endpoints(hosts: list[NetnsHost]) -> list[Endpoint]:
    return [
        Endpoint(h.address, NETNS_KAFKA_PORT, NETNS_QUORUM_PORT, NETNS_METRICS_PORT) for h in hosts
    ]


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, tables merged key by key, anything else replaced."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def render_configs(
    endpoints: list[Endpoint],
    workdir: Path,
    *,
    clustered: bool,
    secret: str | None = None,
    extra_config: ExtraConfig = None,
) -> list[BrokerConfig]:
    """The validated config of each broker: node ids 0..n-1, own address, data dir, ports.

    When `clustered`, every broker gets ``[cluster] voters`` naming the first min(3, n)
    brokers' quorum endpoints, and the shared `secret`. `extra_config` (a table, or a function
    of the node id giving one) is merged over each config last.
    """
    voters = [f"{i}@{ep.address}:{ep.quorum_port}" for i, ep in enumerate(endpoints[:MAX_VOTERS])]
    secret = secret or secrets.token_hex(16)
    configs = []
    for node_id, ep in enumerate(endpoints):
        tree: dict[str, Any] = deep_merge(
            TEST_DEFAULTS,
            {
                "broker": {
                    "node_id": node_id,
                    "host": ep.address,
                    "port": ep.kafka_port,
                    "advertised_host": ep.address,
                    "data_dir": str(workdir / f"node-{node_id}" / "data"),
                },
                "metrics": {"host": ep.address, "port": ep.metrics_port},
            },
        )
        if clustered:
            tree["cluster"] = {
                "voters": voters,
                "secret": secret,
                "quorum_host": ep.address,
            }
        extra = extra_config(node_id) if callable(extra_config) else extra_config
        if extra:
            tree = deep_merge(tree, extra)
        configs.append(parse_config(tree, f"node {node_id} test config"))
    return configs


# -- clusters --------------------------------------------------------------------------------


@dataclass
class Cluster:
    """Brokers started together by `cluster_factory`."""

    brokers: list[BrokerProcess]
    lab: NetnsLab | None = None
    secret: str | None = None
    workdir: Path | None = None
    voters: list[str] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return ",".join(b.bootstrap for b in self.brokers)

    def broker(self, node_id: int) -> BrokerProcess:
        return next(b for b in self.brokers if b.node_id == node_id)

    def host(self, node_id: int) -> NetnsHost:
        host = self.broker(node_id).host
        assert host is not None, "a loopback cluster has no hosts"
        return host

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        for b in self.brokers:
            b.wait_ready(max(0.1, deadline - time.monotonic()))

    def stop_all(self) -> None:
        """Kill every broker (SIGCONT first for frozen ones); safe to call twice."""
        for b in self.brokers:
            b.stop()

    def log_tails(self, lines: int = 40) -> str:
        return "\n".join(b.log_tail(lines) for b in self.brokers)

    def __len__(self) -> int:
        return len(self.brokers)

    def __iter__(self) -> Iterator[BrokerProcess]:
        return iter(self.brokers)

    def __getitem__(self, index: int) -> BrokerProcess:
        return self.brokers[index]


class ClusterFactory:
    """What the `cluster_factory` fixture gives: `start()` clusters, all torn down at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.clusters: list[Cluster] = []
        self._labs = contextlib.ExitStack()

    def start(
        self,
        n: int,
        *,
        netns: bool,
        extra_config: ExtraConfig = None,
        clustered: bool | None = None,
        timeout: float = START_TIMEOUT,
        root_config: Callable[[str], Mapping[str, Any]] | None = None,
    ) -> Cluster:
        """Start `n` brokers and wait until each answers ApiVersions.

        `clustered` (default: ``n > 1``) adds the ``[cluster]`` section; ``clustered=False``
        starts `n` independent single brokers. With ``netns=True`` the test is skipped when
        network namespaces are unavailable. `root_config` gives settings naming services
        of the test process (an S3 server, a source cluster), from the address at which
        the brokers reach the root namespace (the lab's root address, or 127.0.0.1); they
        are merged over `extra_config`.
        """
        if clustered is None:
            clustered = n > 1
        workdir = self.tmp_path / f"cluster-{len(self.clusters)}"
        lab: NetnsLab | None = None
        hosts: list[NetnsHost | None]
        if netns:
            reason = netns_mod.available()
            if reason is not None:
                pytest.skip(f"network namespaces unavailable: {reason}")
            lab = self._labs.enter_context(NetnsLab(n))
            endpoints = netns_endpoints(lab.hosts)
            hosts = list(lab.hosts)
        else:
            endpoints = loopback_endpoints(n)
            hosts = [None] * n
        secret = secrets.token_hex(16) if clustered else None
        if root_config is not None:
            extra_config = _with_root_config(
                extra_config, root_config(lab.root_address if lab is not None else "127.0.0.1")
            )
        configs = render_configs(
            endpoints, workdir, clustered=clustered, secret=secret, extra_config=extra_config
        )
        brokers = [BrokerProcess(c, workdir, h) for c, h in zip(configs, hosts, strict=True)]
        cluster = Cluster(
            brokers,
            lab=lab,
            secret=secret,
            workdir=workdir,
            voters=list(configs[0].cluster.voters),
        )
        self.clusters.append(cluster)
        for b in brokers:  # all first: voters need each other to form a quorum
            b.launch()
        cluster.wait_ready(timeout)
        return cluster

    __call__ = start

    def close(self, failed: bool) -> None:
        try:
            if failed:
                for cluster in self.clusters:
                    print(f"\n==== broker logs of {cluster.workdir} ====\n{cluster.log_tails()}")
            for cluster in self.clusters:
                cluster.stop_all()
        finally:
            self._labs.close()


def _with_root_config(extra: ExtraConfig, root: Mapping[str, Any]) -> ExtraConfig:
    if callable(extra):
        base = extra
        return lambda node_id: deep_merge(base(node_id), root)
    return deep_merge(extra or {}, root)


_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember on the item whether a phase failed, for the fixtures' teardown."""
    report = yield
    if report.failed:
        item.stash[_FAILED] = True
    return report


@pytest.fixture
def cluster_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ClusterFactory]:
    factory = ClusterFactory(tmp_path)
    yield factory
    factory.close(failed=request.node.stash.get(_FAILED, False))


@pytest.fixture
def netns_lab_factory() -> Iterator[Callable[[int], NetnsLab]]:
    """Build bare labs (no brokers); skips the test when namespaces are unavailable."""
    reason = netns_mod.available()
    if reason is not None:
        pytest.skip(f"network namespaces unavailable: {reason}")
    with contextlib.ExitStack() as stack:
        yield lambda n: stack.enter_context(NetnsLab(n))
