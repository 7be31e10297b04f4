"""End to end: the broker pods the operator renders really run, as ONE cluster clients use.

The test plays the kubelet. For each replica of the StatefulSet rendered for the README's
Quick Start cluster (3 brokers) it writes the ConfigMap and the cluster Secret (as the
operator would create it) where the pod mounts them, builds the pod's environment (downward
API, `$(VAR)` expansion, Secrets), runs the container's command
(`python -m shazamq.broker --config ...`) and waits for the readiness probe's port. Where
the machine allows it (`unshare --uts`), each broker runs with the pod's hostname, so the
broker id really comes from the pod ordinal; elsewhere the id is given explicitly.

Overrides, as a node differs from a pod: data dir, ports and advertised host
(`SHAZAMQ_BROKER__DATA_DIR`, `SHAZAMQ_BROKER__PORT`, `SHAZAMQ_METRICS__PORT`,
`SHAZAMQ_BROKER__ADVERTISED_HOST=127.0.0.1`), and the quorum: the rendered voters
(`<i>@my-cluster-<i>.my-cluster-headless.messaging.svc:9093`, names only cluster DNS
resolves) become `<i>@127.0.0.1:<free port>` (`SHAZAMQ_CLUSTER__VOTERS`, a JSON list), bound
on loopback (`SHAZAMQ_CLUSTER__QUORUM_HOST`), and the rendered `secret_file` is pointed at
the file written where the Secret is mounted (`SHAZAMQ_CLUSTER__SECRET_FILE`). Everything
else is the rendered configuration.

Then, with confluent-kafka: every broker's Metadata lists all three brokers (one cluster
id, one controller); a topic created with replication factor 3 has 3 replicas and an ISR of
3 on every partition, as seen from every broker; records produced with acks=all through one
broker are consumed through another. A failure shows the tail of every broker's log.

Skipped (with the reason) when the broker's entry point does not exist yet.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_support import ROOT, quick_start

from shazamq.config import parse_voter
from shazamq.operator.resources import QUORUM_PORT, ClusterModel
from tests.conftest import free_port

BROKER_MAIN = ROOT / "shazamq" / "broker" / "__main__.py"
SECRET_VALUE = "e2e-cluster-secret-0123456789abcdefghijklmnopqrstuv"

# Generous: three Python brokers start, elect a quorum leader and register on a 2-core box.
READY_TIMEOUT = 60.0
FORM_TIMEOUT = 120.0
REPLICATED_TIMEOUT = 90.0
CLIENT_TIMEOUT = 60.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not BROKER_MAIN.exists(),
        reason="the broker entry point (shazamq/broker/__main__.py) is not written yet",
    ),
]


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on 127.0.0.1, from this worker's slice."""
    return [free_port() for _ in range(n)]


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
    container: dict[str, Any], pod: str, namespace: str, secrets: dict[str, dict[str, str]]
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


def decoded(secret: dict[str, Any]) -> dict[str, str]:
    """A Secret's keys and values, as a kubelet hands them to the pod."""
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


class Pod:
    """One broker pod, run as a local process."""

    def __init__(
        self,
        model: ClusterModel,
        ordinal: int,
        root: Path,
        *,
        ports: tuple[int, int, int],
        secrets: dict[str, dict[str, str]],
    ) -> None:
        self.name = f"{model.name}-{ordinal}"
        self.ordinal = ordinal
        self.root = root / self.name
        self.port, self.metrics_port, self.quorum_port = ports
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.root / "broker.log"
        self.overrides: dict[str, str] = {}
        sts = model.generate_statefulset()
        pod_spec = sts["spec"]["template"]["spec"]
        (self.container,) = pod_spec["containers"]
        config_maps = {model.config_map_name: model.generate_config_map()}
        # Volumes: ConfigMaps and Secrets are written out (a file per key), the PVC is a
        # directory.
        self.mounts: dict[str, Path] = {}
        for volume in pod_spec["volumes"]:
            target = self.root / "volumes" / volume["name"]
            target.mkdir(parents=True)
            if "configMap" in volume:
                files = config_maps[volume["configMap"]["name"]]["data"]
            else:
                files = secrets[volume["secret"]["secretName"]]
            for key, text in files.items():
                (target / key).write_text(text)
            self.mounts[volume["name"]] = target
        self.mounts["data"] = self.root / "volumes" / "data"
        self.mounts["data"].mkdir(parents=True)
        self.env = pod_environment(self.container, self.name, model.namespace, secrets)
        self.advertised = self.env["SHAZAMQ_BROKER__ADVERTISED_HOST"]
        self.cluster_id = model.config.broker.cluster_id
        self.secret_file = model.config.cluster.secret_file

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

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

    def start(self, voters: list[str]) -> None:
        """Launch the broker, its quorum at `voters` (the rendered ones, on loopback)."""
        assert self.secret_file is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHAZAMQ_")}
        env.update(self.env)
        self.overrides = {
            "SHAZAMQ_BROKER__HOST": "127.0.0.1",
            "SHAZAMQ_BROKER__PORT": str(self.port),
            "SHAZAMQ_BROKER__ADVERTISED_HOST": "127.0.0.1",
            "SHAZAMQ_BROKER__DATA_DIR": self.local_path("/data/shazamq"),
            "SHAZAMQ_METRICS__HOST": "127.0.0.1",
            "SHAZAMQ_METRICS__PORT": str(self.metrics_port),
            "SHAZAMQ_CLUSTER__VOTERS": json.dumps(voters),
            "SHAZAMQ_CLUSTER__QUORUM_HOST": "127.0.0.1",
            # the rendered path, where this "kubelet" mounted the Secret
            "SHAZAMQ_CLUSTER__SECRET_FILE": self.local_path(self.secret_file),
        }
        if not can_set_hostname():  # the id the pod's hostname would give
            self.overrides.update(
                SHAZAMQ_BROKER__NODE_ID_FROM_HOSTNAME="false",
                SHAZAMQ_BROKER__NODE_ID=str(self.ordinal),
            )
        env.update(self.overrides)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                self.command(),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(ROOT),
            )

    def wait_ready(self, deadline: float) -> None:
        """The readiness probe: a TCP connection to the Kafka port."""
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode}\n{self.log_tail()}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            time.sleep(0.05)
        raise AssertionError(f"{self.name} not ready\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        tail = text.splitlines()[-lines:]
        return f"---- last {len(tail)} lines of {self.name}'s log ({self.log}) ----\n" + "\n".join(
            tail
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
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

    def wait_for(self, cond: Callable[[], Any], timeout: float, what: str) -> Any:
        """Poll `cond` until it is truthy; else fail with the last answer and the logs."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            for pod in self:
                if pod.proc is not None and pod.proc.poll() is not None:
                    raise AssertionError(
                        f"{pod.name} exited with {pod.proc.returncode} while waiting for "
                        f"{what}\n{self.tails()}"
                    )
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


def loopback_voters(model: ClusterModel, pods: list[Pod]) -> list[str]:
    """The rendered voters, each moved to its pod's quorum port on 127.0.0.1."""
    voters = []
    for entry in model.config.cluster.voters:
        node, host, port = parse_voter(entry)
        assert (host, port) == (model.advertised_host(node), QUORUM_PORT), entry
        voters.append(f"{node}@127.0.0.1:{pods[node].quorum_port}")
    return voters


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[Brokers]:
    model = ClusterModel.from_resource(quick_start())
    # What the operator's handler creates once (with a random value) for this cluster.
    secrets = {model.cluster_secret_name: decoded(model.generate_cluster_secret(SECRET_VALUE))}
    replicas = model.spec.replicas
    ports = free_ports(3 * replicas)
    started = Brokers(
        Pod(
            model,
            i,
            tmp_path,
            ports=(ports[3 * i], ports[3 * i + 1], ports[3 * i + 2]),
            secrets=secrets,
        )
        for i in range(replicas)
    )
    voters = loopback_voters(model, started)
    assert len(voters) == 3, voters  # the Quick Start's three brokers all vote
    try:
        for pod in started:  # all first, as the StatefulSet's Parallel policy does
            pod.start(voters)
        deadline = time.monotonic() + READY_TIMEOUT
        for pod in started:
            pod.wait_ready(deadline)
        yield started
    finally:
        for pod in started:
            pod.stop()


def metadata(bootstrap: str, topic: str | None = None) -> Any:
    from confluent_kafka.admin import AdminClient

    client = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 5000})
    return client.list_topics(topic, timeout=5)


def replication(bootstrap: str, topic: str) -> dict[int, tuple[int, list[int], list[int]]]:
    """partition -> (leader, replicas, ISR), as the broker at `bootstrap` tells it."""
    t = metadata(bootstrap, topic).topics.get(topic)
    if t is None or t.error is not None:
        return {}
    return {p.id: (p.leader, sorted(p.replicas), sorted(p.isrs)) for p in t.partitions.values()}


def test_rendered_pods_form_one_cluster_that_clients_use(pods: Brokers) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    admin = pytest.importorskip("confluent_kafka.admin")
    assert len(pods) == 3
    ids = [0, 1, 2]
    for pod in pods:
        assert pod.advertised == f"{pod.name}.my-cluster-headless.messaging.svc"

    # One cluster: every broker's Metadata lists all three, with one id (the rendered one,
    # recorded in the metadata log once the quorum has a leader) and a live controller.
    for pod in pods:
        pods.wait_for(
            lambda pod=pod: sorted(metadata(pod.bootstrap).brokers) == ids,
            FORM_TIMEOUT,
            f"{pod.name}'s Metadata to list brokers {ids} (the cluster to form)",
        )
        pods.wait_for(
            lambda pod=pod: metadata(pod.bootstrap).cluster_id == pod.cluster_id,
            FORM_TIMEOUT,
            f"{pod.name}'s Metadata to carry the rendered cluster id {pod.cluster_id}",
        )
    with pods.explained():
        views = []
        for pod in pods:
            md = metadata(pod.bootstrap)
            brokers = {b.id: (b.host, b.port) for b in md.brokers.values()}
            # the id is the pod ordinal; the address the one each broker advertises
            assert brokers == {p.ordinal: ("127.0.0.1", p.port) for p in pods}, brokers
            assert md.cluster_id == pod.cluster_id  # the rendered one, shared by all
            # as in KRaft, the controller a broker names is a live broker that forwards
            # admin requests to the metadata quorum, not necessarily the same one
            assert md.controller_id in ids, f"no controller: {md.controller_id}"
            views.append(md.cluster_id)
        assert all(v == views[0] for v in views), views

    # A topic with replication factor 3: 3 replicas and an ISR of 3 on every partition.
    topic = f"e2e-{uuid.uuid4().hex[:8]}"
    partitions = 3
    creator = admin.AdminClient({"bootstrap.servers": pods[1].bootstrap})
    futures = creator.create_topics([admin.NewTopic(topic, partitions, 3)])
    with pods.explained():
        futures[topic].result(timeout=CLIENT_TIMEOUT)

    def fully_replicated() -> bool:
        states = [replication(pod.bootstrap, topic) for pod in pods]
        return all(
            len(state) == partitions
            and all(
                leader in ids and replicas == ids and isr == ids
                for leader, replicas, isr in state.values()
            )
            for state in states
        )

    pods.wait_for(
        fully_replicated,
        REPLICATED_TIMEOUT,
        f"every broker to show {topic}'s {partitions} partitions with 3 replicas, ISR 3",
    )

    # acks=all through broker 0, read back through broker 2.
    count = 30
    failures: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    producer = confluent_kafka.Producer({"bootstrap.servers": pods[0].bootstrap, "acks": "all"})
    for i in range(count):
        producer.produce(topic, key=str(i).encode(), value=f"v{i}".encode(), on_delivery=delivered)
    with pods.explained():
        assert producer.flush(CLIENT_TIMEOUT) == 0, "records left undelivered"
        assert not failures, failures

    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": pods[2].bootstrap,
            "group.id": f"e2e-{topic}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign(
        [
            confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
            for p in range(partitions)
        ]
    )
    values: set[bytes] = set()
    errors: list[str] = []
    deadline = time.monotonic() + CLIENT_TIMEOUT
    while len(values) < count and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error() is not None:
            errors.append(str(msg.error()))
        else:
            values.add(msg.value())
    consumer.close()
    with pods.explained():
        assert values == {f"v{i}".encode() for i in range(count)}, (
            f"consumed {len(values)} of {count} records; consumer errors: {errors[-5:]}"
        )
    del producer, consumer, creator
