"""End to end: the broker pods the operator renders really run, and Kafka clients use them.

The test plays the kubelet. For each replica of the StatefulSet rendered for the README's
Quick Start cluster it writes the ConfigMap where the pod mounts it, builds the pod's
environment (downward API, `$(VAR)` expansion, Secrets), runs the container's command
(`python -m shazamq.broker --config ...`) and waits for the readiness probe's port. Where
the machine allows it (`unshare --uts`), each broker runs with the pod's hostname, so the
broker id really comes from the pod ordinal; elsewhere the id is given explicitly.
Overrides, as a node would differ from a pod: data dir, ports and advertised host
(`SHAZAMQ_BROKER__DATA_DIR`, `SHAZAMQ_BROKER__PORT`, `SHAZAMQ_METRICS__PORT`,
`SHAZAMQ_BROKER__ADVERTISED_HOST=127.0.0.1`). A confluent-kafka client then produces to
and consumes from every broker.

Skipped (with the reason) when the broker's entry point does not exist yet.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_support import ROOT, quick_start

from shazamq.operator.resources import ClusterModel

BROKER_MAIN = ROOT / "shazamq" / "broker" / "__main__.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not BROKER_MAIN.exists(),
        reason="the broker entry point (shazamq/broker/__main__.py) is not written yet",
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


class Pod:
    """One broker pod, run as a local process."""

    def __init__(self, model: ClusterModel, ordinal: int, root: Path) -> None:
        self.name = f"{model.name}-{ordinal}"
        self.ordinal = ordinal
        self.root = root / self.name
        self.port = free_port()
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        sts = model.generate_statefulset()
        pod_spec = sts["spec"]["template"]["spec"]
        (self.container,) = pod_spec["containers"]
        config_maps = {model.config_map_name: model.generate_config_map()}
        # Volumes: ConfigMaps are written out, the PVC is a directory.
        self.mounts: dict[str, Path] = {}
        for volume in pod_spec["volumes"]:
            target = self.root / "volumes" / volume["name"]
            target.mkdir(parents=True)
            if "configMap" in volume:
                for key, text in config_maps[volume["configMap"]["name"]]["data"].items():
                    (target / key).write_text(text)
            self.mounts[volume["name"]] = target
        self.mounts["data"] = self.root / "volumes" / "data"
        self.mounts["data"].mkdir(parents=True)
        self.env = pod_environment(self.container, self.name, model.namespace, secrets={})
        self.advertised = self.env["SHAZAMQ_BROKER__ADVERTISED_HOST"]
        self.cluster_id = model.config.broker.cluster_id

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

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHAZAMQ_")}
        env.update(self.env)
        env.update(
            SHAZAMQ_BROKER__HOST="127.0.0.1",
            SHAZAMQ_BROKER__PORT=str(self.port),
            SHAZAMQ_BROKER__ADVERTISED_HOST="127.0.0.1",
            SHAZAMQ_BROKER__DATA_DIR=self.local_path("/data/shazamq"),
            SHAZAMQ_METRICS__HOST="127.0.0.1",
            SHAZAMQ_METRICS__PORT=str(self.metrics_port),
            PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        )
        if not can_set_hostname():  # the id the pod's hostname would give
            env.update(
                SHAZAMQ_BROKER__NODE_ID_FROM_HOSTNAME="false",
                SHAZAMQ_BROKER__NODE_ID=str(self.ordinal),
            )
        self.log = self.root / "broker.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                self.command(), env=env, stdout=out, stderr=subprocess.STDOUT, cwd=str(ROOT)
            )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """The readiness probe: a TCP connection to the Kafka port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited:\n{self.log.read_text(errors='replace')}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            time.sleep(0.05)
        raise AssertionError(f"{self.name} not ready:\n{self.log.read_text(errors='replace')}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[list[Pod]]:
    model = ClusterModel.from_resource(quick_start())
    started = [Pod(model, i, tmp_path) for i in range(model.spec.replicas)]
    try:
        for pod in started:
            pod.start()
        for pod in started:
            pod.wait_ready()
        yield started
    finally:
        for pod in started:
            pod.stop()


def test_rendered_pods_run_brokers_that_clients_use(pods: list[Pod]) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    admin = pytest.importorskip("confluent_kafka.admin")
    assert len(pods) == 3
    for pod in pods:
        assert pod.advertised == f"{pod.name}.my-cluster-headless.messaging.svc"
        bootstrap = f"127.0.0.1:{pod.port}"
        topic = f"e2e-{uuid.uuid4().hex[:8]}"
        producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "acks": "all"})
        for i in range(10):
            producer.produce(topic, key=str(i).encode(), value=f"{pod.name}-{i}".encode())
        assert producer.flush(30) == 0
        consumer = confluent_kafka.Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"e2e-{pod.name}",
                "enable.auto.commit": False,
            }
        )
        consumer.assign(
            [confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)]
        )
        values: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(values) < 10 and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                values.append(msg.value())
        consumer.close()
        assert values == [f"{pod.name}-{i}".encode() for i in range(10)]
        metadata = admin.AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
        assert metadata.cluster_id == pod.cluster_id  # shared by every broker of the cluster
        assert pod.ordinal in metadata.brokers, metadata.brokers  # the id is the pod ordinal
        del producer, consumer
