"""The test's kubelet: broker pods of a rendered StatefulSet run as local processes.

`Pod` runs one replica of a StatefulSet's pod template: it writes the ConfigMaps and
Secrets the pod mounts where the volumes are (a file per key), builds the container's
environment as the kubelet does (downward API, `$(VAR)` expansion, Secrets), runs the
container's command (`python -m shazamq.broker --config ...`) and answers the readiness
probe (a TCP connection to the Kafka port). The data volume (the PVC) outlives restarts;
`Pod.start()` takes the pod spec, ConfigMaps and Secrets of the revision it starts, so a
restarted pod runs the new revision's template.

Where the machine allows it (`unshare --uts`) each broker runs with the pod's hostname, so
its id really comes from the pod ordinal; elsewhere the id is given explicitly.

Overrides, as a node differs from a pod: data dir, listener and metrics addresses, the
advertised host, and the metadata quorum (the rendered voters name cluster DNS; they
become `<id>@<pod address>:<quorum port>`, `SHAZAMQ_CLUSTER__VOTERS`, a JSON list), with
the rendered `secret_file` pointed at the file written where the Secret is mounted; the
paths the mounted broker config names inside the container (the users file, the TLS
files) are rewritten to where those volumes are on this machine. Each
pod has its own address: all on 127.0.0.1 with ports of their own, or (`PodAddress` with
one loopback address per pod, e.g. 127.x.y.1, .2, .3) the rendered ports on each, as pods
have, so the operator's probe reaches every broker on `spec.service.port` and
`metricsPort` once a pod's DNS name is resolved to its address.

`KubeletLoop` plays the kubelet and the StatefulSet controller against kmock's emulator:
it starts a pod for every replica, posts the Pod objects (labelled with the template's
revision, Ready once the broker listens) and the StatefulSet's status, and when the
operator deletes a pod it stops that broker (SIGTERM) and starts it again from the
StatefulSet's current template, recording how many brokers were down at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from operator_support import ROOT

__all__ = [
    "Brokers",
    "KubeletLoop",
    "Pod",
    "PodAddress",
    "can_set_hostname",
    "decoded",
    "loopback_addresses",
    "loopback_voters",
    "pod_environment",
    "resolving_probe",
    "revision_of",
]


@functools.cache
def can_set_hostname() -> bool:
    """Whether `unshare --uts` can give a process its own hostname here (root, no sandbox)."""
    if shutil.which("unshare") is None or shutil.which("hostname") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--uts", "sh", "-c", "hostname pod-0 && hostname"],
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.returncode == 0 and probe.stdout.strip() == "pod-0"


def pod_environment(
    container: dict[str, Any], pod: str, namespace: str, secrets: Mapping[str, Mapping[str, str]]
) -> dict[str, str]:
    """The container's env as the kubelet builds it (fieldRef, secretKeyRef, `$(VAR)`)."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), item["value"])
        else:
            source = item["valueFrom"]
            if "fieldRef" in source:
                value = {"metadata.name": pod, "metadata.namespace": namespace}[
                    source["fieldRef"]["fieldPath"]
                ]
            else:
                ref = source["secretKeyRef"]
                value = secrets[ref["name"]][ref["key"]]
        env[item["name"]] = value
    return env


def decoded(secret: Mapping[str, Any]) -> dict[str, str]:
    """A Secret's keys and values, as a kubelet hands them to the pod."""
    out = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    out.update(secret.get("stringData") or {})
    return out


def revision_of(template: Mapping[str, Any]) -> str:
    """A StatefulSet controller's revision name for a pod template (a hash of it)."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class PodAddress:
    """Where one pod's broker listens on this machine."""

    host: str
    port: int
    metrics_port: int
    quorum_port: int


class Pod:
    """One broker pod, run as a local process."""

    def __init__(self, name: str, ordinal: int, namespace: str, root: Path, address: PodAddress):
        self.name = name
        self.ordinal = ordinal
        self.namespace = namespace
        self.root = root / name
        self.address = address
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.root / "broker.log"
        self.overrides: dict[str, str] = {}
        self.container: dict[str, Any] = {}
        self.env: dict[str, str] = {}
        self.mounts: dict[str, Path] = {}
        self.data = self.root / "volumes" / "data"  # the PVC: kept across restarts
        self.data.mkdir(parents=True, exist_ok=True)
        self.starts = 0

    @property
    def host(self) -> str:
        return self.address.host

    @property
    def port(self) -> int:
        return self.address.port

    @property
    def metrics_port(self) -> int:
        return self.address.metrics_port

    @property
    def quorum_port(self) -> int:
        return self.address.quorum_port

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def advertised(self) -> str:
        return self.env["SHAZAMQ_BROKER__ADVERTISED_HOST"]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def mount(
        self,
        pod_spec: Mapping[str, Any],
        config_maps: Mapping[str, Mapping[str, Any]],
        secrets: Mapping[str, Mapping[str, str]],
    ) -> None:
        """Take a revision's pod spec: its container, volumes written out, its env."""
        (self.container,) = pod_spec["containers"]
        self.mounts = {"data": self.data}
        files: dict[Path, str] = {}
        for volume in pod_spec["volumes"]:
            target = self.root / "volumes" / volume["name"]
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            if "configMap" in volume:
                data = config_maps[volume["configMap"]["name"]]["data"]
            else:
                data = secrets[volume["secret"]["secretName"]]
            files.update({target / key: text for key, text in data.items()})
            self.mounts[volume["name"]] = target
        for path, text in files.items():
            # the broker's config names other mounts by their path in the container
            path.write_text(self._localised(text) if path.suffix == ".toml" else text)
        self.env = pod_environment(self.container, self.name, self.namespace, secrets)

    def _localised(self, text: str) -> str:
        """`text` with the container's mount paths ("/etc/shazamq/auth/...") as they are on
        this machine: what the container's filesystem does for the broker."""
        for mount in self.container.get("volumeMounts", []):
            prefix = mount["mountPath"].rstrip("/")
            local = self.mounts.get(mount["name"])
            if local is not None:
                text = text.replace(f'"{prefix}/', f'"{local}/').replace(
                    f'"{prefix}"', f'"{local}"'
                )
        return text

    def local_path(self, path: str) -> str:
        """A path inside the container -> where its volume is on this machine."""
        for mount in self.container["volumeMounts"]:
            prefix = mount["mountPath"].rstrip("/")
            if path == prefix or path.startswith(prefix + "/"):
                return str(self.mounts[mount["name"]]) + path[len(prefix) :]
        return path

    def command(self) -> list[str]:
        cmd = [*self.container["command"], *self.container["args"]]
        cmd = [self.local_path(part) if part.startswith("/") else part for part in cmd]
        assert cmd[:3] == ["python", "-m", "shazamq.broker"], cmd
        cmd[0] = sys.executable
        if can_set_hostname():
            return ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.name, *cmd]
        return cmd

    def start(self, voters: list[str], secret_file: str, extra: Mapping[str, str] = {}) -> None:
        """Launch the broker (`mount()` first), its quorum at `voters` (the rendered ones, on
        loopback); `secret_file` is the rendered path of the cluster secret."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHAZAMQ_")}
        env.update(self.env)
        self.overrides = {
            "SHAZAMQ_BROKER__HOST": self.host,
            "SHAZAMQ_BROKER__PORT": str(self.port),
            "SHAZAMQ_BROKER__ADVERTISED_HOST": self.host,
            "SHAZAMQ_BROKER__DATA_DIR": self.local_path("/data/shazamq"),
            "SHAZAMQ_METRICS__HOST": self.host,
            "SHAZAMQ_METRICS__PORT": str(self.metrics_port),
            "SHAZAMQ_CLUSTER__VOTERS": json.dumps(voters),
            "SHAZAMQ_CLUSTER__QUORUM_HOST": self.host,
            # the rendered path, where this "kubelet" mounted the Secret
            "SHAZAMQ_CLUSTER__SECRET_FILE": self.local_path(secret_file),
            **extra,
        }
        if not can_set_hostname():  # the id the pod's hostname would give
            self.overrides.update(
                SHAZAMQ_BROKER__NODE_ID_FROM_HOSTNAME="false",
                SHAZAMQ_BROKER__NODE_ID=str(self.ordinal),
            )
        env.update(self.overrides)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.starts += 1
        with open(self.log, "ab") as out:
            out.write(f"==== start {self.starts} ====\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.command(),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(ROOT),
            )

    def listening(self) -> bool:
        """The readiness probe: a TCP connection to the Kafka port."""
        with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 0.2):
            return True
        return False

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode}\n{self.log_tail()}"
                )
            if self.listening():
                return
            time.sleep(0.05)
        raise AssertionError(f"{self.name} not ready\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        tail = text.splitlines()[-lines:]
        return f"---- last {len(tail)} lines of {self.name}'s log ({self.log}) ----\n" + "\n".join(
            tail
        )

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM (the broker's controlled shutdown), SIGKILL after `grace` seconds."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Brokers(list[Pod]):
    """The pods of one cluster, with what a failure message needs."""

    def tails(self) -> str:
        return "\n".join(pod.log_tail() for pod in self)

    @property
    def bootstrap(self) -> str:
        return ",".join(pod.bootstrap for pod in self)

    def check_alive(self, what: str) -> None:
        for pod in self:
            if pod.proc is not None and pod.proc.poll() is not None:
                raise AssertionError(
                    f"{pod.name} exited with {pod.proc.returncode} while waiting for "
                    f"{what}\n{self.tails()}"
                )

    def wait_for(self, cond: Callable[[], Any], timeout: float, what: str) -> Any:
        """Poll `cond` until it is truthy; else fail with the last answer and the logs."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            self.check_alive(what)
            try:
                last = cond()
            except Exception as exc:  # a client error is an answer too: keep polling
                last = exc
            else:
                if last:
                    return last
            time.sleep(0.5)
        raise AssertionError(
            f"timed out after {timeout:.0f}s waiting for {what}; last answer: {last!r}\n"
            f"{self.tails()}"
        )

    @contextlib.contextmanager
    def explained(self) -> Iterator[None]:
        """Any failure inside (an assertion, a client error) gets every broker's log tail."""
        try:
            yield
        except Exception as exc:
            raise AssertionError(f"{type(exc).__name__}: {exc}\n{self.tails()}") from exc

    def stop_all(self) -> None:
        for pod in self:
            pod.stop(grace=20)


def loopback_addresses(replicas: int, cluster: int = 0) -> list[PodAddress]:
    """One loopback address per pod (127.x.y.1, .2, ...; `cluster` varies y), the same
    ports on each, as pods have."""
    from tests.conftest import free_port

    pid = os.getpid()
    base = f"127.{100 + pid % 100}.{(pid // 100 + cluster) % 250}"
    port, metrics, quorum = free_port(), free_port(), free_port()
    return [PodAddress(f"{base}.{i + 1}", port, metrics, quorum) for i in range(replicas)]


def resolving_probe(memo: Any, hosts: Mapping[str, list[str]]) -> Any:
    """The operator's own probe (`handlers.probe_cluster`), with each pod's DNS name
    resolved to its address (``hosts``: cluster name -> address of each ordinal)."""
    from shazamq.operator.handlers import probe_cluster

    async def probe(model: Any, live: list[tuple[int, str]], partitions: bool) -> Any:
        resolved = [(i, hosts[model.name][i]) for i, _ in live]
        return await probe_cluster(memo, model, resolved, partitions)

    return probe


def resolving_reassigner(hosts: Mapping[str, list[str]], namespace: str) -> Any:
    """The operator's own reassignments and elections (`handlers.Reassigner`), with each
    pod's DNS name resolved to its address (``hosts`` as for :func:`resolving_probe`)."""
    from shazamq.operator.handlers import Reassigner

    names = {
        f"{cluster}-{i}.{cluster}-headless.{namespace}.svc": address
        for cluster, addresses in hosts.items()
        for i, address in enumerate(addresses)
    }

    def resolved(brokers: list[tuple[str, int]]) -> list[tuple[str, int]]:
        return [(names.get(host, host), port) for host, port in brokers]

    class Resolving(Reassigner):
        async def ongoing(self, brokers: Any, connection: Any) -> Any:
            return await super().ongoing(resolved(brokers), connection)

        async def submit(self, brokers: Any, moves: Any, connection: Any) -> None:
            await super().submit(resolved(brokers), moves, connection)

        async def elect(self, brokers: Any, partitions: Any, connection: Any) -> Any:
            return await super().elect(resolved(brokers), partitions, connection)

    return Resolving()


def loopback_voters(voter_ids: list[int], pods: list[Pod]) -> list[str]:
    """The quorum's voters, each at its pod's quorum address on loopback."""
    return [f"{i}@{pods[i].host}:{pods[i].quorum_port}" for i in voter_ids]


# -- against the emulator ----------------------------------------------------------------------


def _stored(emulator: Any, resource: str, ns: str, name: str) -> dict[str, Any] | None:
    import kmock

    key = (kmock.resource(resource), ns, name)
    if key not in emulator.objects or emulator.objects[key].deleted:
        return None
    return emulator.objects[key].raw


class KubeletLoop:
    """The kubelet and the StatefulSet controller of one cluster, against kmock (see the
    module docstring). Runs in the test's event loop; blocking work goes to threads."""

    def __init__(
        self,
        emulator: Any,
        *,
        name: str,
        namespace: str,
        root: Path,
        addresses: list[PodAddress],
        voter_ids: list[int],
        extra_env: Mapping[str, str] = {},
        ready_timeout: float = 90.0,
    ) -> None:
        self.k = emulator
        self.name = name
        self.ns = namespace
        self.pods = Brokers(
            Pod(f"{name}-{i}", i, namespace, root, address) for i, address in enumerate(addresses)
        )
        self.voters = loopback_voters(voter_ids, self.pods)
        self.extra_env = dict(extra_env)
        self.ready_timeout = ready_timeout
        self.down: set[int] = set()
        self.most_down = 0  # the most brokers down at once while the cluster ran
        self.restarts: dict[int, int] = dict.fromkeys(range(len(addresses)), 0)
        self.revisions: dict[int, str] = {}
        self.errors: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._handling: dict[int, asyncio.Task[None]] = {}

    # -- what the API holds

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        return _stored(self.k, resource, self.ns, name)

    def statefulset(self) -> dict[str, Any] | None:
        return self.get("apps/v1/statefulsets", self.name)

    def _revision_inputs(
        self,
    ) -> tuple[dict[str, Any], str, dict[str, Any], dict[str, dict[str, str]]] | None:
        """The StatefulSet's template, its revision, and the ConfigMaps and Secrets it
        mounts, once they all exist."""
        sts = self.statefulset()
        if sts is None:
            return None
        pod_spec = sts["spec"]["template"]["spec"]
        config_maps: dict[str, Any] = {}
        secrets: dict[str, dict[str, str]] = {}
        for volume in pod_spec["volumes"]:
            if "configMap" in volume:
                cm = self.get("v1/configmaps", volume["configMap"]["name"])
                if cm is None:
                    return None
                config_maps[volume["configMap"]["name"]] = cm
            elif "secret" in volume:
                secret = self.get("v1/secrets", volume["secret"]["secretName"])
                if secret is None:
                    return None
                secrets[volume["secret"]["secretName"]] = decoded(secret)
        (container,) = pod_spec["containers"]
        for item in container.get("env", []):
            ref = (item.get("valueFrom") or {}).get("secretKeyRef")
            if ref and ref["name"] not in secrets:
                secret = self.get("v1/secrets", ref["name"])
                if secret is None:
                    return None
                secrets[ref["name"]] = decoded(secret)
        return pod_spec, revision_of(sts["spec"]["template"]), config_maps, secrets

    def _secret_file(self, config_maps: Mapping[str, Any]) -> str:
        from shazamq.operator.resources import config_of_toml

        for cm in config_maps.values():
            for text in cm["data"].values():
                config = config_of_toml(text)
                if config is not None and config.cluster.secret_file:
                    return config.cluster.secret_file
        raise AssertionError("no rendered broker config names the cluster secret file")

    async def _post_pod(self, i: int, revision: str, ready: bool) -> None:
        name = f"{self.name}-{i}"
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": self.ns,
                "labels": {
                    "app.kubernetes.io/name": "shazamq",
                    "app.kubernetes.io/instance": self.name,
                    "controller-revision-hash": revision,
                },
            },
            "spec": {"containers": [{"name": "broker", "image": "local"}]},
            "status": {
                "podIP": self.pods[i].host,
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            },
        }
        if self.get("v1/pods", name) is not None:
            resp = await self.k.patch(
                f"/api/v1/namespaces/{self.ns}/pods/{name}",
                json={"metadata": body["metadata"], "status": body["status"]},
                headers={"Content-Type": "application/merge-patch+json"},
            )
        else:
            resp = await self.k.post(f"/api/v1/namespaces/{self.ns}/pods", json=body)
        assert resp.status < 300, await resp.text()

    async def _post_sts_status(self) -> None:
        sts = self.statefulset()
        if sts is None:
            return
        update = revision_of(sts["spec"]["template"])
        replicas = len(self.pods)
        ready = sum(1 for i in range(replicas) if i not in self.down and i in self.revisions)
        updated = sum(1 for r in self.revisions.values() if r == update)
        current = update if updated == replicas else next(iter(self.revisions.values()), update)
        status = {
            "replicas": replicas,
            "readyReplicas": ready,
            "updatedReplicas": updated,
            "currentReplicas": replicas,
            "currentRevision": current,
            "updateRevision": update,
            "observedGeneration": (sts.get("metadata") or {}).get("generation", 1),
        }
        resp = await self.k.patch(
            f"/apis/apps/v1/namespaces/{self.ns}/statefulsets/{self.name}/status",
            json={"status": status},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert resp.status < 300, await resp.text()

    # -- running pods

    async def _start(self, ordinals: list[int]) -> None:
        inputs = self._revision_inputs()
        assert inputs is not None
        pod_spec, revision, config_maps, secrets = inputs
        secret_file = self._secret_file(config_maps)
        for i in ordinals:
            pod = self.pods[i]
            pod.mount(pod_spec, config_maps, secrets)
            pod.start(self.voters, secret_file, self.extra_env)
        deadline = time.monotonic() + self.ready_timeout
        for i in ordinals:
            await asyncio.to_thread(self.pods[i].wait_ready, deadline)
        for i in ordinals:
            self.revisions[i] = revision
            self.down.discard(i)
            await self._post_pod(i, revision, ready=True)
        await self._post_sts_status()

    async def start(self, timeout: float = 30.0) -> None:
        """Wait for the operator's objects, start every pod (Parallel, as the StatefulSet's
        pod management policy), then follow the operator's deletions."""
        deadline = time.monotonic() + timeout
        while self._revision_inputs() is None:
            assert time.monotonic() < deadline, "the operator did not create the cluster's objects"
            await asyncio.sleep(0.1)
        self.down = set(range(len(self.pods)))
        await self._start(list(range(len(self.pods))))
        self._task = asyncio.create_task(self._follow(), name="kubelet")

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            sts = self.statefulset()
            if sts is not None:
                revision = revision_of(sts["spec"]["template"])
                status = sts.get("status") or {}
                if status.get("updateRevision") != revision:
                    await self._post_sts_status()  # the controller sees a new template
            for i in range(len(self.pods)):
                if i in self._handling:
                    continue
                pod = self.get("v1/pods", f"{self.name}-{i}")
                if pod is None or (pod.get("metadata") or {}).get("deletionTimestamp"):
                    self._handling[i] = asyncio.create_task(self._restart(i))
            for i, task in list(self._handling.items()):
                if task.done():
                    del self._handling[i]
                    if not task.cancelled() and task.exception() is not None:
                        self.errors.append(f"restart of {i}: {task.exception()!r}")

    async def _restart(self, i: int) -> None:
        self.down.add(i)
        self.most_down = max(self.most_down, len(self.down))
        await asyncio.to_thread(self.pods[i].stop)
        self.restarts[i] += 1
        await self._start([i])

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in self._handling.values():
            task.cancel()
        await asyncio.to_thread(self.pods.stop_all)


async def until(check: Any, timeout: float, what: str, kubelet: KubeletLoop) -> Any:
    """Poll `check` (run in a thread: it may call a client) without blocking the emulator."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        kubelet.pods.check_alive(what)
        assert not kubelet.errors, kubelet.errors
        try:
            last = await asyncio.to_thread(check)
        except Exception as exc:  # a client's error is an answer too: keep polling
            last = exc
        else:
            if last:
                return last
        await asyncio.sleep(0.5)
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what}; last answer: {last!r}\n"
        f"{kubelet.pods.tails()}"
    )


# the marks of a test that runs real brokers as the pods of a rendered StatefulSet
E2E_MARKS = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:kmock"),
]


async def post_secret(emulator: Any, namespace: str, name: str, data: Mapping[str, str]) -> None:
    """Create an Opaque Secret with ``stringData`` in the emulator, as `kubectl create`."""
    resp = await emulator.post(
        f"/api/v1/namespaces/{namespace}/secrets",
        json={
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "stringData": dict(data),
        },
    )
    assert resp.status < 300, await resp.text()
