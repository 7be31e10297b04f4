"""Shared fixtures: real broker processes that tests start, stop and kill.

A broker under test is a real `python -m shazamq.broker` process on loopback with its own
data directory and free ports, configured the way users configure it (environment
overrides), so the tests exercise the same start-up, shutdown and recovery paths.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parent.parent

# Hypothesis' per-example deadline and its "too slow" health check are timings: on a loaded
# two-core machine (tests run side by side) they fail tests whose code is correct. What a
# property test asserts is the property; speed is measured in benchmarks/.
settings.register_profile(
    "suite", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("suite")


def _keep_bytecode() -> None:
    """Every broker, node and operator under test is a fresh interpreter. Where the
    environment turns bytecode caches off (PYTHONDONTWRITEBYTECODE, usual in containers),
    each of them compiled the ~190 generated protocol modules again: one to several seconds
    per start, hundreds of starts per run. The children, and this process for the modules
    it has yet to import (pytest's rewritten test modules too), get a cache outside the
    source tree instead, so the tree stays clean and only the first start compiles."""
    if os.environ.get("PYTHONDONTWRITEBYTECODE") and not os.environ.get("PYTHONPYCACHEPREFIX"):
        del os.environ["PYTHONDONTWRITEBYTECODE"]
        cache = str(Path(tempfile.gettempdir()) / f"shazamq-test-pycache-{os.getuid()}")
        os.environ["PYTHONPYCACHEPREFIX"] = cache
        sys.pycache_prefix = cache
        sys.dont_write_bytecode = False


_keep_bytecode()


# Ports for the servers tests start come from below the kernel's ephemeral range
# (32768-60999 here), a slice per pytest-xdist worker, handed out in turn. A port the
# kernel chose for bind(0) and that was closed again can be chosen again at once, for
# another worker's server or any outgoing connection, and a server started on it then
# loses the bind while the test talks to whoever holds the port.
_PORT_LOW, _PORT_HIGH = 20000, 32000
# One counter per process: this file is imported both as pytest's `conftest` and as
# `tests.conftest`, and two counters would hand out the same ports.
_port_state: dict[str, int] = sys.__dict__.setdefault("_shazamq_test_ports", {})


def _port_slice() -> tuple[int, int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    size = (_PORT_HIGH - _PORT_LOW) // max(count, 1)
    low = _PORT_LOW + size * (index % max(count, 1))
    return low, low + size


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, from this worker's slice."""
    low, high = _port_slice()
    if "next" not in _port_state:
        # different runs (and restarted workers) start at different places in the slice
        _port_state["next"] = low + (os.getpid() * 7919) % (high - low)
    for _ in range(high - low):
        port = _port_state["next"]
        _port_state["next"] = low if port + 1 >= high else port + 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {low}-{high}")


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


class BrokerProcess:
    """A broker subprocess with a data dir that outlives restarts."""

    def __init__(self, data_dir: Path, *, nofile: int | None = None, **settings: object) -> None:
        self.data_dir = data_dir
        self.nofile = nofile  # RLIMIT_NOFILE (soft and hard) of the broker process
        self.port = free_port()
        self.metrics_port = free_port()
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-broker.log"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHAZAMQ_")}
        env.update(
            SHAZAMQ_BROKER__HOST="127.0.0.1",
            SHAZAMQ_BROKER__PORT=str(self.port),
            SHAZAMQ_BROKER__ADVERTISED_HOST="127.0.0.1",
            SHAZAMQ_BROKER__DATA_DIR=str(self.data_dir),
            SHAZAMQ_METRICS__HOST="127.0.0.1",
            SHAZAMQ_METRICS__PORT=str(self.metrics_port),
            SHAZAMQ_GROUPS__INITIAL_REBALANCE_DELAY_MS="0",
            SHAZAMQ_GROUPS__MIN_SESSION_TIMEOUT_MS="1000",
            SHAZAMQ_GROUPS__OFFSETS_TOPIC_NUM_PARTITIONS="4",
            SHAZAMQ_TRANSACTIONS__STATE_LOG_NUM_PARTITIONS="4",
            SHAZAMQ_LOG_LEVEL="INFO",
        )
        for key, value in self.settings.items():
            section, _, name = key.partition("__")
            env[f"SHAZAMQ_{section.upper()}__{name.upper()}"] = (
                str(value).lower() if isinstance(value, bool) else str(value)
            )
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def start(self, timeout: float = 30.0) -> BrokerProcess:
        assert self.proc is None or self.proc.poll() is not None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        start_at = log.tell()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shazamq.broker"],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
            preexec_fn=self._limit_files if self.nofile is not None else None,
        )
        log.close()
        deadline = time.monotonic() + timeout
        wait_for_port(self.port, timeout, self.proc)
        # the port answering is not proof: another process may hold it. The broker's own
        # "listening on" line, written after this start, is.
        while b" listening on " not in self._log_since(start_at):
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode} before listening")
            if time.monotonic() > deadline:
                raise TimeoutError(f"broker on port {self.port} never logged that it listens")
            time.sleep(0.05)
        return self

    def _log_since(self, offset: int) -> bytes:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read()

    def _limit_files(self) -> None:
        import resource

        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the clean shutdown path."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        """SIGKILL: the crash path."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> BrokerProcess:
        self.stop()
        return self.start()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator:
    """Start brokers on demand; all are stopped (or killed) at the end of the test."""
    started: list[BrokerProcess] = []

    def make(**settings: object) -> BrokerProcess:
        b = BrokerProcess(tmp_path / f"broker-{len(started)}", **settings)
        started.append(b)
        return b.start()

    yield make
    for b in started:
        try:
            b.stop(timeout=15)
        except Exception:
            b.kill()


@pytest.fixture(scope="session")
def shared_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One broker for the tests that only need a working broker and unique topic names."""
    b = BrokerProcess(tmp_path_factory.mktemp("shared") / "data")
    b.start()
    yield b
    try:
        b.stop(timeout=15)
    except Exception:
        b.kill()


@pytest.fixture
def topic_name() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"
