"""Hosts in Linux network namespaces, joined by one bridge, for fault tests.

A `NetnsLab` is a small private network:

* a hub namespace ``shzq-<id>-hub`` holding the bridge ``br0``;
* N host namespaces ``shzq-<id>-<i>``, each with ``eth0`` = ``198.x.y.(i+1)/24`` whose veth
  peer ``h<i>`` is a port of the bridge;
* one veth leg into the root namespace, ``shzq<id>`` = ``198.x.y.254/24``, so the test
  process (and the Kafka clients it runs) reaches every host directly.

The /24 comes from 198.18.0.0/15, the range RFC 2544 reserves for benchmarking labs; each lab
takes a /24 no other lab and no route of this machine uses. Nothing is routed out of the lab:
no host has a default route, and the root namespace only gains the connected route of the
lab's /24.

The bridge lives in a namespace of its own rather than in the root one because there the
root namespace's firewall (Docker's FORWARD policy, ``br_netfilter``) never sees bridged
traffic, and because deleting the namespaces deletes every link of the lab: a veth dies with
its peer, so removing the hub removes the root leg too, and nothing else has to be tracked.

Every lab registers its id with its owner's pid under a lock (``/run/shzq-labs``);
`cleanup_stale()` removes what labs of dead owners left behind (namespaces, root legs,
processes still inside them), so a crashed run is cleaned by the next one without touching
labs of concurrent runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "LAB_RANGE",
    "NETNS_PREFIX",
    "NetemUnavailable",
    "NetnsError",
    "NetnsHost",
    "NetnsLab",
    "available",
    "cleanup_stale",
    "netem_available",
]

NETNS_PREFIX = "shzq-"
LAB_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
ROOT_HOST_NUMBER = 254
MAX_HOSTS = 253  # .1 .. .253; .254 is the root namespace
BRIDGE = "br0"
HOST_IF = "eth0"
HUB_ROOT_IF = "root"
_ROOT_IF = re.compile(r"^shzq([0-9a-f]{6})$")
_LAB_NS = re.compile(r"^shzq-([0-9a-f]{6})-(?:hub|probe|\d+)$")
_REGISTRY = Path("/run/shzq-labs") if Path("/run").is_dir() else Path("/tmp/shzq-labs")
_COMMAND_TIMEOUT = 30.0


class NetnsError(RuntimeError):
    """A namespace, link or qdisc command failed."""


class NetemUnavailable(NetnsError):
    """The kernel has no netem qdisc (CONFIG_NET_SCH_NETEM / module sch_netem)."""


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=_COMMAND_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"{' '.join(argv)}: {exc}") from None
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *(["-n", ns] if ns else []), *args], check=check)


def _tc(*args: str, ns: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["tc", "-n", ns, *args], check=check)


# -- ownership registry ---------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (survives pid reuse checks), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; fields follow the last ')'.
    return stat.rsplit(")", 1)[1].split()[19]


@contextlib.contextmanager
def _registry_lock() -> Iterator[None]:
    _REGISTRY.mkdir(parents=True, exist_ok=True)
    with open(_REGISTRY / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _register(lab_id: str, subnet: ipaddress.IPv4Network | None) -> None:
    """Record this process as the owner of `lab_id` (call with the registry lock held)."""
    entry = {"pid": os.getpid(), "start": _start_time(os.getpid()), "subnet": str(subnet or "")}
    (_REGISTRY / lab_id).write_text(json.dumps(entry))


def _unregister(lab_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (_REGISTRY / lab_id).unlink()


def _owner_alive(lab_id: str) -> bool:
    try:
        entry = json.loads((_REGISTRY / lab_id).read_text())
    except (OSError, ValueError):
        return False
    return _start_time(int(entry["pid"])) == entry["start"]


def _registered_subnets() -> set[ipaddress.IPv4Network]:
    out = set()
    for path in _REGISTRY.glob("[0-9a-f]*"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            subnet = json.loads(path.read_text())["subnet"]
            if subnet:
                out.add(ipaddress.IPv4Network(subnet))
    return out


def _new_lab_id() -> str:
    while True:
        lab_id = secrets.token_hex(3)
        if not (_REGISTRY / lab_id).exists():
            return lab_id


# -- stale labs ------------------------------------------------------------------------------


def _namespaces() -> list[str]:
    listed = _ip("netns", "list").stdout.splitlines()
    return [line.split()[0] for line in listed if line.strip()]


def _root_links() -> list[str]:
    out = _ip("-o", "link", "show").stdout.splitlines()
    # "12: shzqa1b2c3@if11: <BROADCAST,...": the name, without the peer suffix.
    return [line.split(":", 2)[1].strip().split("@")[0] for line in out if ":" in line]


def _kill_namespace_processes(ns: str) -> None:
    pids = _ip("netns", "pids", ns, check=False).stdout.split()
    for pid in (int(p) for p in pids if p.isdigit()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)


def _cleanup_stale_locked(kill_processes: bool) -> list[str]:
    removed: list[str] = []
    for ns in _namespaces():
        m = _LAB_NS.match(ns)
        if not ns.startswith(NETNS_PREFIX) or m is None or _owner_alive(m.group(1)):
            continue
        if kill_processes:
            _kill_namespace_processes(ns)
        _ip("netns", "del", ns, check=False)
        removed.append(ns)
    for link in _root_links():
        m = _ROOT_IF.match(link)
        if m is not None and not _owner_alive(m.group(1)):
            _ip("link", "del", link, check=False)
            removed.append(link)
    for path in _REGISTRY.glob("[0-9a-f]*"):
        if not _owner_alive(path.name):
            _unregister(path.name)
    return removed


def cleanup_stale(*, kill_processes: bool = True) -> list[str]:
    """Remove namespaces and root links of labs whose owning process is gone.

    Only names of the lab patterns (``shzq-<6 hex>-hub|probe|<n>`` namespaces, ``shzq<6 hex>``
    root links) are considered, and only when their owner is dead or unknown, so labs of test
    runs in progress are left alone. Processes still running inside a stale namespace (brokers
    of a crashed run) are killed first when `kill_processes`. Returns what was removed.
    """
    with _registry_lock():
        return _cleanup_stale_locked(kill_processes)


# -- availability ----------------------------------------------------------------------------

_available_reason: list[str | None] = []
_netem_reason: list[str | None] = []


@contextlib.contextmanager
def _probe_namespace() -> Iterator[str]:
    with _registry_lock():
        lab_id = _new_lab_id()
        _register(lab_id, None)
    ns = f"{NETNS_PREFIX}{lab_id}-probe"
    try:
        _ip("netns", "add", ns)
        yield ns
    finally:
        _ip("netns", "del", ns, check=False)
        _unregister(lab_id)


def _probe() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"'{tool}' not found (Debian/Ubuntu package iproute2)"
    try:
        with _probe_namespace() as ns:
            _ip("link", "add", BRIDGE, "type", "bridge", ns=ns)
            _ip("link", "add", "p0", "type", "veth", "peer", "name", "p1", ns=ns)
            _ip("link", "set", "p0", "master", BRIDGE, ns=ns)
    except (NetnsError, OSError) as exc:
        return f"cannot create a network namespace with a bridge and veths: {exc}"
    return None


def available() -> str | None:
    """None when labs can be built here, else why not (for ``pytest.skip``). Cached."""
    if not _available_reason:
        _available_reason.append(_probe())
    return _available_reason[0]


def netem_available() -> str | None:
    """None when the kernel has the netem qdisc, else why not. Cached."""
    if not _netem_reason:
        reason = available()
        if reason is None:
            try:
                with _probe_namespace() as ns:
                    _ip("link", "add", "p0", "type", "veth", "peer", "name", "p1", ns=ns)
                    _tc("qdisc", "add", "dev", "p0", "root", "netem", "delay", "1ms", ns=ns)
            except NetnsError as exc:
                reason = f"the kernel has no netem qdisc (sch_netem): {exc}"
        _netem_reason.append(reason)
    return _netem_reason[0]


# -- the lab -----------------------------------------------------------------------------------


_ROUTE_TYPES = frozenset(
    [
        "unicast",
        "local",
        "broadcast",
        "multicast",
        "unreachable",
        "blackhole",
        "prohibit",
        "throw",
        "nat",
        "anycast",
    ]
)


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the root namespace has an address or a route in (not default)."""
    used = []
    for line in _ip("-o", "-4", "addr", "show").stdout.splitlines():
        m = re.search(r"\binet (\S+)", line)
        if m:
            used.append(ipaddress.IPv4Interface(m.group(1)).network)
    for line in _ip("-4", "route", "show", "table", "all").stdout.splitlines():
        words = line.split()
        if words and words[0] in _ROUTE_TYPES:
            words = words[1:]  # "local 10.0.0.5 dev eth0 ...": the destination comes second
        if not words or words[0] == "default":
            continue
        with contextlib.suppress(ValueError):
            used.append(ipaddress.IPv4Network(words[0], strict=False))
    return used


def _allocate_subnet() -> ipaddress.IPv4Network:
    """A /24 of 198.18.0.0/15 that no address, route or registered lab uses (lock held)."""
    taken = [
        n
        for n in _used_networks()
        if n.overlaps(LAB_RANGE) and n.prefixlen > 0 and n != LAB_RANGE  # not the guard route
    ]
    taken.extend(_registered_subnets())
    for subnet in LAB_RANGE.subnets(new_prefix=24):
        if not any(subnet.overlaps(n) for n in taken):
            return subnet
    raise NetnsError(f"every /24 of {LAB_RANGE} is in use")


class NetnsHost:
    """One host of a lab: a namespace with one address, cabled to the lab's bridge."""

    def __init__(self, lab: NetnsLab, index: int, address: str) -> None:
        self.lab = lab
        self.index = index
        self.name = f"{NETNS_PREFIX}{lab.lab_id}-{index}"
        self.address = address
        self.bridge_port = f"h{index}"
        self._processes: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        return f"NetnsHost({self.name}, {self.address})"

    def run(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside this host's namespace.

        ``ip netns exec`` execs the command in place, so the Popen's pid is the command's own
        pid: signals sent to it reach the program, not a wrapper.
        """
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", self.name, *argv], **popen_kwargs
        )
        self._processes.append(proc)
        return proc

    def run_capture(
        self, argv: Sequence[str], timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in this host to completion; its exit code, stdout and stderr as text."""
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def link_down(self) -> None:
        """Pull the host's cable: its bridge port goes down, it reaches nobody and nobody it.

        Addresses and sockets inside the host stay as they are; packets are dropped, not
        refused, so peers see timeouts as with a real partition.
        """
        _ip("link", "set", self.bridge_port, "down", ns=self.lab.hub)

    def link_up(self) -> None:
        """Plug the cable back in; peers can reach the host again right away.

        Address resolutions that failed while the link was down would make the next
        connections fail with "No route to host" for a few seconds, so every neighbour entry
        of this host (and the host's own) is forgotten and resolved afresh.
        """
        _ip("link", "set", self.bridge_port, "up", ns=self.lab.hub)
        _ip("neigh", "flush", "dev", HOST_IF, ns=self.name, check=False)
        for other in self.lab.hosts:
            if other is not self:
                _ip("neigh", "flush", "to", self.address, ns=other.name, check=False)
        _ip("neigh", "flush", "to", self.address, "dev", self.lab.root_link, check=False)

    @property
    def link_is_up(self) -> bool:
        out = _ip("-o", "link", "show", self.bridge_port, ns=self.lab.hub).stdout
        m = re.search(r"<([^>]*)>", out)
        return m is not None and "UP" in m.group(1).split(",")

    @staticmethod
    def netem_args(delay_ms: float, jitter_ms: float = 0, loss_pct: float = 0) -> list[str]:
        """The netem parameters of `netem()` for the host's outgoing side."""
        args = ["delay", f"{int(delay_ms * 1000)}us"]
        if jitter_ms:
            args.append(f"{int(jitter_ms * 1000)}us")
        if loss_pct:
            args += ["loss", f"{loss_pct:g}%"]
        return args

    def netem(self, delay_ms: float, jitter_ms: float = 0, loss_pct: float = 0) -> None:
        """Delay (and lose) this host's traffic with ``tc qdisc ... netem``.

        The delay and jitter apply to the packets the host sends, so every round trip between
        it and anyone grows by `delay_ms` (as ``netem delay`` on one interface does). The loss
        applies to both directions: each packet to or from the host is dropped with
        probability `loss_pct` percent. Calling again replaces the settings.
        """
        if not 0 <= loss_pct <= 100 or delay_ms < 0 or jitter_ms < 0:
            raise ValueError("delay and jitter must be >= 0 and loss_pct within 0..100")
        try:
            _tc(
                "qdisc",
                "replace",
                "dev",
                HOST_IF,
                "root",
                "netem",
                *self.netem_args(delay_ms, jitter_ms, loss_pct),
                ns=self.name,
            )
            if loss_pct:
                _tc(
                    "qdisc",
                    "replace",
                    "dev",
                    self.bridge_port,
                    "root",
                    "netem",
                    "loss",
                    f"{loss_pct:g}%",
                    ns=self.lab.hub,
                )
            else:
                self._clear_qdisc(self.lab.hub, self.bridge_port)
        except NetnsError as exc:
            if "unknown" in str(exc).lower():
                raise NetemUnavailable(str(exc)) from None
            raise

    def clear_netem(self) -> None:
        self._clear_qdisc(self.name, HOST_IF)
        self._clear_qdisc(self.lab.hub, self.bridge_port)

    @staticmethod
    def _clear_qdisc(ns: str, dev: str) -> None:
        done = _tc("qdisc", "del", "dev", dev, "root", ns=ns, check=False)
        # Deleting the default qdisc fails harmlessly ("Cannot delete qdisc with handle of
        # zero" / "No such file or directory"); anything else is a real error.
        if done.returncode != 0 and not re.search(
            r"handle of zero|No such file|Invalid handle", done.stderr
        ):
            raise NetnsError(f"tc qdisc del dev {dev} root in {ns}: {done.stderr.strip()}")

    def _stop_processes(self) -> None:
        for proc in self._processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)


class NetnsLab:
    """N hosts in network namespaces on one bridge, reachable from the root namespace.

    Use as a context manager; everything is removed on exit, also after failures, also when
    setting up failed halfway.
    """

    def __init__(self, n_hosts: int) -> None:
        if not 1 <= n_hosts <= MAX_HOSTS:
            raise ValueError(f"a lab has 1..{MAX_HOSTS} hosts")
        self.n_hosts = n_hosts
        self.lab_id = ""
        self.subnet: ipaddress.IPv4Network | None = None
        self.hosts: list[NetnsHost] = []
        self._created: list[str] = []
        self._closed = False

    # names
    @property
    def hub(self) -> str:
        return f"{NETNS_PREFIX}{self.lab_id}-hub"

    @property
    def root_link(self) -> str:
        return f"shzq{self.lab_id}"

    @property
    def root_address(self) -> str:
        """The root namespace's address on the bridge: where the test's clients come from."""
        assert self.subnet is not None
        return str(self.subnet.network_address + ROOT_HOST_NUMBER)

    @property
    def namespaces(self) -> list[str]:
        return list(self._created)

    def __enter__(self) -> NetnsLab:
        reason = available()
        if reason is not None:
            raise NetnsError(f"network namespaces unavailable: {reason}")
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except NetnsError:
            if exc is None:
                raise

    def _build(self) -> None:
        with _registry_lock():
            _cleanup_stale_locked(kill_processes=True)
            # Guard: a client still dialling a lab after it is gone must fail here, not reach
            # the default route. The labs' own /24 routes are more specific and win while
            # they exist; the guard stays (198.18.0.0/15 is reserved for labs like these).
            _ip("route", "replace", "blackhole", str(LAB_RANGE))
            self.lab_id = _new_lab_id()
            self.subnet = _allocate_subnet()
            _register(self.lab_id, self.subnet)
        prefix = self.subnet.prefixlen
        hub = self.hub
        self._add_namespace(hub)
        _ip("link", "add", BRIDGE, "type", "bridge", ns=hub)
        _ip("link", "set", BRIDGE, "up", ns=hub)
        # The root namespace's leg: created in the root namespace with its peer in the hub.
        _ip(
            "link", "add", self.root_link, "type", "veth", "peer", "name", HUB_ROOT_IF, "netns", hub
        )
        _disable_ipv6(None, self.root_link)
        _ip("link", "set", HUB_ROOT_IF, "master", BRIDGE, "up", ns=hub)
        _ip("addr", "add", f"{self.root_address}/{prefix}", "dev", self.root_link)
        _ip("link", "set", self.root_link, "up")
        for i in range(self.n_hosts):
            host = NetnsHost(self, i, str(self.subnet.network_address + i + 1))
            self._add_namespace(host.name)
            _ip("link", "set", "lo", "up", ns=host.name)
            _ip(
                "link",
                "add",
                host.bridge_port,
                "type",
                "veth",
                "peer",
                "name",
                HOST_IF,
                "netns",
                host.name,
                ns=hub,
            )
            _disable_ipv6(host.name, HOST_IF)
            _ip("link", "set", host.bridge_port, "master", BRIDGE, "up", ns=hub)
            _ip("addr", "add", f"{host.address}/{prefix}", "dev", HOST_IF, ns=host.name)
            _ip("link", "set", HOST_IF, "up", ns=host.name)
            self.hosts.append(host)

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._created.append(name)

    def close(self) -> None:
        """Stop what runs in the hosts, delete every namespace (and so every link)."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for host in self.hosts:
            host._stop_processes()
        for ns in reversed(self._created):
            done = _ip("netns", "del", ns, check=False)
            if done.returncode != 0:
                errors.append(f"netns del {ns}: {done.stderr.strip()}")
        if self.lab_id:
            # The root leg dies with its peer in the hub; wait for that, then make sure.
            deadline = time.monotonic() + 5
            while self.root_link in _root_links() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.root_link in _root_links():
                done = _ip("link", "del", self.root_link, check=False)
                if done.returncode != 0:
                    errors.append(f"link del {self.root_link}: {done.stderr.strip()}")
            _unregister(self.lab_id)
        if errors:
            raise NetnsError("; ".join(errors))

    def __getitem__(self, index: int) -> NetnsHost:
        return self.hosts[index]

    def __len__(self) -> int:
        return len(self.hosts)

    def __iter__(self) -> Iterator[NetnsHost]:
        return iter(self.hosts)


def _disable_ipv6(ns: str | None, dev: str) -> None:
    """No IPv6 on lab links: no router solicitations or DAD noise, IPv4 only."""
    argv = ["sysctl", "-q", "-w", f"net.ipv6.conf.{dev}.disable_ipv6=1"]
    if shutil.which("sysctl") is None:
        return
    if ns is not None:
        argv = ["ip", "netns", "exec", ns, *argv]
    _run(argv, check=False)
