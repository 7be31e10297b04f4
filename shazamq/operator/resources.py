"""What should exist for a ShazamqCluster: pure functions from the resource to Kubernetes objects.

Kept apart from "make it so" (`handlers`) in the manner of Strimzi's model classes:
`ClusterModel.from_resource(body)` validates the resource once, with the models of
`shazamq.config`, and raises `ModelError` naming the offending field
(``spec.replicas: Expected int >= 0``). Each ``generate_*()`` method then returns one plain
dict, with no I/O, ready to be server-side applied; ``None`` means "must not exist".

Spec -> broker configuration: `broker_config()` is the one explicit mapping from the
camelCase spec to the broker's `BrokerConfig`. Fields shared with the broker come from
`shazamq.config.broker_settings()` (the spec structs are derived from the broker structs,
so names, bounds and defaults cannot drift); Kubernetes-only settings are translated here:
Secrets become environment variables (``valueFrom.secretKeyRef`` feeding the broker's
``SHAZAMQ_SECTION__KEY`` overrides) or mounted files whose paths go into the TOML. The
result is validated by the broker's own model and rendered with `shazamq.config.dump_toml`,
so the ConfigMap is exactly what `python -m shazamq.broker --config` loads.

Pod identity: the broker id is the pod's ordinal (``[broker] node_id_from_hostname``) and
the advertised host the pod's stable DNS name under the headless Service
(``$(POD_NAME).<name>-headless.<namespace>.svc``).

One cluster: every pod gets the same ``[cluster]`` section. Its metadata quorum (``voters``)
names pods by their stable names on the quorum port,
``<i>@<name>-<i>.<name>-headless.<namespace>.svc:9093``; the other pods join as observers.
Which pods vote is frozen when the cluster is first reconciled, because the quorum (Raft with
a fixed membership) cannot change its voters: the handler records the ordinals in the
annotation ``shazamq.io/quorum-voters`` (``"0,1,2"``), and from then on the model takes them
from there (`voter_ids_annotation`), so scaling up only adds observers and scaling below a
voter is a `ModelError`. Without the annotation the voters are the first min(3, replicas)
pods, what the handler then records. Quorum traffic is authenticated with the cluster
secret, a Secret ``<name>-cluster-secret`` mounted read-only at ``/etc/shazamq/cluster``
(``secret_file``). Its value is random, so it is not rendered here:
`generate_cluster_secret()` takes it, and the handler creates the Secret once, when it does
not exist, and never changes it.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import re
import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from shazamq.config import (
    BrokerConfig,
    ConfigError,
    ShazamqClusterSpec,
    broker_settings,
    dump_toml,
    parse_config,
    parse_voter,
)
from shazamq.operator.admin import OPERATOR_USER
from shazamq.operator.autoscale import cpu_cores
from shazamq.operator.crd import API_VERSION, KIND
from shazamq.operator.dynamic import restart_part
from shazamq.operator.monitoring import alert_rules, dashboard_json

__all__ = [
    "CLUSTER_SECRET_FILE",
    "CLUSTER_SECRET_KEY",
    "CONFIG_FILE",
    "DATA_DIR",
    "MANAGED_BY",
    "QUORUM_PORT",
    "VOTERS_ANNOTATION",
    "Child",
    "ClusterModel",
    "ModelError",
]

MANAGED_BY = "shazamq-operator"
CLUSTER_LABEL = "shazamq.io/cluster"
SERVICE_LABEL = "shazamq.io/service"
CHECKSUM_ANNOTATION = "shazamq.io/config-checksum"
MONITORING_API = "monitoring.coreos.com/v1"
DASHBOARD_FOLDER_ANNOTATION = "grafana_folder"
# The frozen voter ordinals of the metadata quorum, on the ShazamqCluster ("0,1,2").
VOTERS_ANNOTATION = "shazamq.io/quorum-voters"
VOTERS_FIELD = f'metadata.annotations["{VOTERS_ANNOTATION}"]'
# A scaling that moves data, on the ShazamqCluster: "<from>-><to>" brokers ("5->3").
SCALE_ANNOTATION = "shazamq.io/scale"
SCALE_FIELD = f'metadata.annotations["{SCALE_ANNOTATION}"]'
_SCALE = re.compile(r"^(?P<from>[0-9]+)->(?P<to>[0-9]+)$")

CONFIG_KEY = "shazamq.toml"
CONFIG_DIR = "/etc/shazamq/config"
CONFIG_FILE = f"{CONFIG_DIR}/{CONFIG_KEY}"
DATA_MOUNT = "/data"
DATA_DIR = "/data/shazamq"  # also the image's SHAZAMQ_BROKER__DATA_DIR
TLS_DIR = "/etc/shazamq/tls"
AUTH_DIR = "/etc/shazamq/auth"
GCS_DIR = "/etc/shazamq/gcs"
CLUSTER_SECRET_DIR = "/etc/shazamq/cluster"
MIRROR_DIR = "/etc/shazamq/mirror"  # /<source index>/{credentials,ca,client}
CLUSTER_SECRET_KEY = "secret"
OPERATOR_PASSWORD_KEY = "password"  # of the operator's credentials Secret (and `username`)
# the broker's environment override adding the operator's user to [security.sasl] users
OPERATOR_USER_ENV = f"SHAZAMQ_SECURITY__SASL__USERS__{OPERATOR_USER.upper()}"
CLUSTER_SECRET_FILE = f"{CLUSTER_SECRET_DIR}/{CLUSTER_SECRET_KEY}"
QUORUM_PORT = 9093  # the port of every voter's metadata quorum listener
MAX_VOTERS = 3  # a new cluster's first pods vote; the others are observers
BROKER_UID = 1000  # the `shazamq` user of the image

_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# A StatefulSet's pods carry a `controller-revision-hash` label of name + 11 characters.
MAX_NAME_LENGTH = 52
_AT = re.compile(r"^(?P<problem>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]+)`$")
_ORDINAL = re.compile(r"^[0-9]+$")  # not str.isdigit(): int() of other digits is surprising


class ModelError(ValueError):
    """The resource cannot be rendered; `field` names where (``spec.replicas``)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def _spec_error(exc: msgspec.ValidationError) -> ModelError:
    """msgspec's ``Expected `int` >= 0 - at `$.replicas``` -> ``spec.replicas: ...``."""
    m = _AT.match(str(exc))
    assert m is not None
    problem, path = m.group("problem"), m.group("path") or ""
    where = "spec" + path
    unknown = _UNKNOWN.match(problem)
    if unknown:
        return ModelError(f"{where}.{unknown.group('field')}", "unknown field")
    return ModelError(where, problem.replace("`", ""))


@dataclass(frozen=True)
class Child:
    """One object the cluster owns: where it lives, and what it should be (None: absent)."""

    api_version: str
    kind: str
    name: str
    desired: dict[str, Any] | None


def _cluster_id(uid: str) -> str:
    """A Kafka-style cluster id (22 characters of URL-safe base64) from the resource's uid."""
    try:
        raw = uuid.UUID(uid).bytes
    except ValueError:
        raw = hashlib.sha256(uid.encode()).digest()[:16]
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


@dataclass(frozen=True)
class ClusterModel:
    """A validated ShazamqCluster, and the objects it implies."""

    name: str
    namespace: str
    uid: str
    generation: int | None
    spec: Any  # ShazamqClusterSpec (its nested structs are derived at import time)
    config: BrokerConfig
    voter_ids: tuple[int, ...]  # the quorum's voters by pod ordinal, ascending
    voters_frozen: bool  # whether `voter_ids` came from VOTERS_ANNOTATION
    # (from, to) brokers of a scaling that moves data (SCALE_ANNOTATION), if one is going on
    scaling: tuple[int, int] | None = None

    # -- validation ---------------------------------------------------------------------

    @classmethod
    def from_resource(cls, body: Mapping[str, Any]) -> ClusterModel:
        """Validate a ShazamqCluster (as the API returns it); raise ModelError if it is bad."""
        meta = body.get("metadata") or {}
        name = meta.get("name") or ""
        if not _DNS_1035.match(name) or len(name) > MAX_NAME_LENGTH:
            raise ModelError(
                "metadata.name",
                f"{name!r} must be a DNS-1035 label of at most {MAX_NAME_LENGTH} characters",
            )
        namespace = meta.get("namespace")
        if not namespace:
            raise ModelError("metadata.namespace", "missing")
        uid = meta.get("uid")
        if not uid:
            raise ModelError("metadata.uid", "missing")
        try:
            spec = msgspec.convert(body.get("spec") or {}, ShazamqClusterSpec)
        except msgspec.ValidationError as exc:
            raise _spec_error(exc) from None
        clash = sorted(set(spec.pod_labels) & set(_selector_labels(name)))
        if clash:
            raise ModelError("spec.podLabels", f"cannot override the selector labels {clash}")
        taken = sorted({spec.service.port, spec.service.metrics_port} & {QUORUM_PORT})
        if taken:
            raise ModelError(
                "spec.service", f"port and metricsPort must differ from the quorum port {taken[0]}"
            )
        annotations = meta.get("annotations") or {}
        voters_frozen = VOTERS_ANNOTATION in annotations
        if voters_frozen:
            voter_ids = parse_voter_ids(annotations[VOTERS_ANNOTATION])
            _check_no_voter_removed(name, spec.replicas, voter_ids)
        else:
            voter_ids = default_voter_ids(spec.replicas)
        _check_autoscaling(spec, voter_ids)
        config = _broker_config(spec, name=name, namespace=namespace, uid=uid, voters=voter_ids)
        scaling = parse_scale(annotations.get(SCALE_ANNOTATION))
        if scaling is not None and scaling[1] != spec.replicas:
            scaling = (scaling[0], spec.replicas)  # the spec changed again: its size wins
        return cls(
            name=name,
            namespace=namespace,
            uid=uid,
            generation=meta.get("generation"),
            spec=spec,
            config=config,
            voter_ids=voter_ids,
            voters_frozen=voters_frozen,
            scaling=scaling,
        )

    @property
    def statefulset_replicas(self) -> int:
        """The StatefulSet's size: `spec.replicas`, except while departing brokers are
        drained (a scale-down keeps them until their partitions have moved away)."""
        if self.scaling is not None and self.scaling[0] > self.spec.replicas:
            return self.scaling[0]
        return int(self.spec.replicas)

    # -- names and labels ---------------------------------------------------------------

    @property
    def headless_service_name(self) -> str:
        return f"{self.name}-headless"

    @property
    def client_service_name(self) -> str:
        return self.name

    @property
    def config_map_name(self) -> str:
        return f"{self.name}-config"

    @property
    def statefulset_name(self) -> str:
        return self.name

    @property
    def cluster_secret_name(self) -> str:
        return cluster_secret_name(self.name)

    @property
    def operator_secret_name(self) -> str:
        """The Secret of the operator's own SASL user on this cluster."""
        return f"{self.name}-operator-credentials"

    @property
    def auth_enabled(self) -> bool:
        return auth_enabled(self.spec)

    @property
    def tls_enabled(self) -> bool:
        return tls_enabled(self.spec)

    @property
    def selector_labels(self) -> dict[str, str]:
        return _selector_labels(self.name)

    @property
    def selector(self) -> str:
        """The pods' label selector as a string (``status.selector``, for `kubectl scale`)."""
        return ",".join(f"{k}={v}" for k, v in self.selector_labels.items())

    @property
    def labels(self) -> dict[str, str]:
        return {
            **self.selector_labels,
            "app.kubernetes.io/component": "broker",
            "app.kubernetes.io/part-of": "shazamq",
            "app.kubernetes.io/managed-by": MANAGED_BY,
            "app.kubernetes.io/version": self.spec.version,
            CLUSTER_LABEL: self.name,
        }

    def owner_reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def _metadata(self, name: str, **extra_labels: str) -> dict[str, Any]:
        return {
            "name": name,
            "namespace": self.namespace,
            "labels": {**self.labels, **extra_labels},
            "ownerReferences": [self.owner_reference()],
        }

    def advertised_host(self, ordinal: int | str = "$(POD_NAME)") -> str:
        pod = ordinal if isinstance(ordinal, str) else f"{self.name}-{ordinal}"
        return f"{pod}.{self.headless_service_name}.{self.namespace}.svc"

    def voters(self) -> list[str]:
        """The metadata quorum: the voter pods' stable quorum addresses."""
        return _voters(self.name, self.namespace, self.voter_ids)

    def voter_ids_annotation(self) -> str:
        """The value of VOTERS_ANNOTATION that freezes this model's voters (``"0,1,2"``)."""
        return format_voter_ids(self.voter_ids)

    def brokers(self) -> list[dict[str, Any]]:
        """Id, pod and advertised address of every broker (for the status)."""
        port = self.spec.service.port
        return [
            {"id": i, "pod": f"{self.name}-{i}", "address": f"{self.advertised_host(i)}:{port}"}
            for i in range(self.spec.replicas)
        ]

    # -- the broker configuration ---------------------------------------------------------

    def config_toml(self) -> str:
        return dump_toml(self.config)

    def config_checksum(self) -> str:
        """The checksum of what a restart is needed for (the pods' annotation): dynamic
        settings are left out, so changing only them does not roll the brokers (the
        operator sends them to the running brokers; see `shazamq.operator.dynamic`)."""
        return hashlib.sha256(dump_toml(restart_part(self.config)).encode()).hexdigest()

    # -- generated objects --------------------------------------------------------------

    def generate_config_map(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": self._metadata(self.config_map_name),
            "data": {CONFIG_KEY: self.config_toml()},
        }

    def _ports(self, *, quorum: bool = False) -> list[dict[str, Any]]:
        svc = self.spec.service
        ports = [
            {"name": "kafka", "port": svc.port, "targetPort": "kafka", "protocol": "TCP"},
            {
                "name": "metrics",
                "port": svc.metrics_port,
                "targetPort": "metrics",
                "protocol": "TCP",
            },
        ]
        if quorum:  # peers only: the client Service does not expose it
            ports.append(
                {"name": "quorum", "port": QUORUM_PORT, "targetPort": "quorum", "protocol": "TCP"}
            )
        return ports

    def generate_headless_service(self) -> dict[str, Any]:
        """Stable per-pod DNS names; published before readiness so brokers find each other
        (the quorum forms before any broker is ready)."""
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": self._metadata(self.headless_service_name, **{SERVICE_LABEL: "headless"}),
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": self.selector_labels,
                "ports": self._ports(quorum=True),
            },
        }

    def generate_client_service(self) -> dict[str, Any]:
        """The bootstrap address clients are given (``<name>.<namespace>.svc:<port>``)."""
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                **self._metadata(self.client_service_name, **{SERVICE_LABEL: "client"}),
                **(
                    {"annotations": dict(self.spec.service.annotations)}
                    if self.spec.service.annotations
                    else {}
                ),
            },
            "spec": {
                "type": self.spec.service.type,
                "selector": self.selector_labels,
                "ports": self._ports(),
            },
        }

    def _env(self) -> list[dict[str, Any]]:
        spec = self.spec
        env: list[dict[str, Any]] = [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
            {"name": "SHAZAMQ_BROKER__ADVERTISED_HOST", "value": self.advertised_host()},
        ]
        s3 = spec.tiered_storage.s3
        if s3 is not None and s3.credentials_secret:
            prefix = "SHAZAMQ_TIERED_STORAGE__S3__"
            env.append(
                _secret_env(f"{prefix}ACCESS_KEY_ID", s3.credentials_secret, "access-key-id")
            )
            env.append(
                _secret_env(
                    f"{prefix}SECRET_ACCESS_KEY", s3.credentials_secret, "secret-access-key"
                )
            )
        if auth_enabled(spec):
            # the operator's own user, beside the users file: its password never enters
            # the ConfigMap
            env.append(
                _secret_env(OPERATOR_USER_ENV, self.operator_secret_name, OPERATOR_PASSWORD_KEY)
            )
        for i, source in enumerate(spec.mirror.sources):
            if source.credentials_secret:  # the password is a mounted file (_broker_config)
                prefix = f"SHAZAMQ_MIRROR__SOURCES__{i}__"
                env.append(
                    _secret_env(f"{prefix}SASL_USERNAME", source.credentials_secret, "username")
                )
        return env

    def _secret_volumes(self) -> list[tuple[str, str, str]]:
        """(volume name, Secret name, mount path) of every Secret mounted as files."""
        spec = self.spec
        mounts = [("cluster-secret", self.cluster_secret_name, CLUSTER_SECRET_DIR)]
        if tls_enabled(spec):
            mounts.append(("tls", spec.security.tls.secret_name, TLS_DIR))
        if auth_enabled(spec):
            mounts.append(("auth", spec.security.auth.secret_name, AUTH_DIR))
        gcs = spec.tiered_storage.gcs
        if gcs is not None and gcs.credentials_secret:
            mounts.append(("gcs-credentials", gcs.credentials_secret, GCS_DIR))
        for i, source in enumerate(spec.mirror.sources):
            for kind, secret in _mirror_secrets(source):
                mounts.append((f"mirror-{i}-{kind}", secret, f"{MIRROR_DIR}/{i}/{kind}"))
        return mounts

    def _affinity(self) -> dict[str, Any]:
        if self.spec.affinity:
            return copy.deepcopy(self.spec.affinity)
        return {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "labelSelector": {"matchLabels": self.selector_labels},
                            "topologyKey": "kubernetes.io/hostname",
                        },
                    }
                ]
            }
        }

    def _volume_claim_template(self) -> dict[str, Any]:
        template = copy.deepcopy(self.spec.storage.volume_claim_template)
        meta = template.get("metadata") or {}
        meta["name"] = "data"
        meta["labels"] = {**(meta.get("labels") or {}), **self.selector_labels}
        return {"metadata": meta, "spec": template.get("spec") or {}}

    def generate_statefulset(self) -> dict[str, Any]:
        spec = self.spec
        tcp_kafka = {"tcpSocket": {"port": "kafka"}}
        container: dict[str, Any] = {
            "name": "broker",
            "image": f"{spec.image}:{spec.version}",
            "imagePullPolicy": spec.image_pull_policy,
            "command": ["python", "-m", "shazamq.broker"],
            "args": ["--config", CONFIG_FILE],
            "ports": [
                {"name": "kafka", "containerPort": spec.service.port, "protocol": "TCP"},
                {"name": "metrics", "containerPort": spec.service.metrics_port, "protocol": "TCP"},
                {"name": "quorum", "containerPort": QUORUM_PORT, "protocol": "TCP"},
            ],
            "env": self._env(),
            "volumeMounts": [
                {"name": "data", "mountPath": DATA_MOUNT},
                {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                *(
                    {"name": vol, "mountPath": path, "readOnly": True}
                    for vol, _, path in self._secret_volumes()
                ),
            ],
            "startupProbe": {**tcp_kafka, "periodSeconds": 10, "failureThreshold": 180},
            "readinessProbe": {**tcp_kafka, "periodSeconds": 5, "failureThreshold": 3},
            "livenessProbe": {
                **tcp_kafka,
                "periodSeconds": 15,
                "timeoutSeconds": 5,
                "failureThreshold": 4,
            },
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            },
        }
        if spec.resources:
            container["resources"] = copy.deepcopy(spec.resources)
        pod_spec: dict[str, Any] = {
            "terminationGracePeriodSeconds": 60,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": BROKER_UID,
                "runAsGroup": BROKER_UID,
                "fsGroup": BROKER_UID,
            },
            "affinity": self._affinity(),
            "containers": [container],
            "volumes": [
                {"name": "config", "configMap": {"name": self.config_map_name}},
                *(
                    {"name": vol, "secret": {"secretName": secret}}
                    for vol, secret, _ in self._secret_volumes()
                ),
            ],
        }
        if spec.node_selector:
            pod_spec["nodeSelector"] = dict(spec.node_selector)
        if spec.tolerations:
            pod_spec["tolerations"] = copy.deepcopy(spec.tolerations)
        if spec.image_pull_secrets:
            pod_spec["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
        pod_labels = {"app": "shazamq", **spec.pod_labels, **self.labels}
        pod_annotations = {**spec.pod_annotations, CHECKSUM_ANNOTATION: self.config_checksum()}
        return {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": self._metadata(self.statefulset_name),
            "spec": {
                "replicas": self.statefulset_replicas,
                "serviceName": self.headless_service_name,
                "selector": {"matchLabels": self.selector_labels},
                "podManagementPolicy": "Parallel",
                # the operator restarts the brokers itself, one at a time, once the
                # cluster's partitions allow it (see `shazamq.operator.roll`)
                "updateStrategy": {"type": "OnDelete"},
                "persistentVolumeClaimRetentionPolicy": {
                    "whenDeleted": "Retain",
                    "whenScaled": "Retain",
                },
                "template": {
                    "metadata": {"labels": pod_labels, "annotations": pod_annotations},
                    "spec": pod_spec,
                },
                "volumeClaimTemplates": [self._volume_claim_template()],
            },
        }

    def generate_cluster_secret(self, value: str) -> dict[str, Any]:
        """The cluster secret holding `value` (random, chosen by the caller: created once,
        never applied again, since a new value would split the quorum)."""
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": self._metadata(self.cluster_secret_name),
            "type": "Opaque",
            "immutable": True,
            "data": {CLUSTER_SECRET_KEY: base64.b64encode(value.encode()).decode()},
        }

    def generate_operator_secret(self, password: str) -> dict[str, Any]:
        """The operator's credentials (random `password`, chosen by the caller: created
        once, never applied again, like the cluster secret)."""
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": self._metadata(self.operator_secret_name),
            "type": "Opaque",
            "immutable": True,
            "data": {
                "username": base64.b64encode(OPERATOR_USER.encode()).decode(),
                OPERATOR_PASSWORD_KEY: base64.b64encode(password.encode()).decode(),
            },
        }

    def generate_pod_disruption_budget(self) -> dict[str, Any]:
        return {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": self._metadata(self.name),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": self.selector_labels}},
        }

    def generate_service_monitor(self) -> dict[str, Any] | None:
        """A Prometheus Operator ServiceMonitor over the headless Service (every pod), or None."""
        monitor = self.spec.monitoring.service_monitor
        if not (self.spec.monitoring.enabled and monitor.enabled):
            return None
        return {
            "apiVersion": MONITORING_API,
            "kind": "ServiceMonitor",
            "metadata": self._metadata(self.name),
            "spec": {
                "selector": {"matchLabels": {**self.selector_labels, SERVICE_LABEL: "headless"}},
                "namespaceSelector": {"matchNames": [self.namespace]},
                "endpoints": [
                    {
                        "port": "metrics",
                        "path": "/metrics",
                        "interval": monitor.interval,
                        "scrapeTimeout": monitor.scrape_timeout,
                    }
                ],
            },
        }

    @property
    def dashboard_config_map_name(self) -> str:
        return f"{self.name}-grafana-dashboard"

    def _monitoring_on(self, part: Any) -> bool:
        return bool(self.spec.monitoring.enabled and part.enabled)

    def generate_prometheus_rule(self) -> dict[str, Any] | None:
        """A Prometheus Operator PrometheusRule alerting on the brokers' health, or None."""
        rule = self.spec.monitoring.prometheus_rule
        if not self._monitoring_on(rule):
            return None
        meta = self._metadata(self.name)
        meta["labels"] = {**rule.labels, **meta["labels"]}
        rules = alert_rules(
            self.name,
            self.namespace,
            rule=rule,
            replicas=self.spec.replicas,
            tiered=bool(self.spec.tiered_storage.enabled),
        )
        return {
            "apiVersion": MONITORING_API,
            "kind": "PrometheusRule",
            "metadata": meta,
            "spec": {"groups": [{"name": f"shazamq.{self.namespace}.{self.name}", "rules": rules}]},
        }

    def generate_grafana_dashboard(self) -> dict[str, Any] | None:
        """A ConfigMap holding the cluster's Grafana dashboard for Grafana's sidecar, or None."""
        board = self.spec.monitoring.grafana_dashboard
        if not self._monitoring_on(board):
            return None
        meta = self._metadata(self.dashboard_config_map_name)
        meta["labels"] = {**board.labels, **meta["labels"]}
        if board.folder:
            meta["annotations"] = {DASHBOARD_FOLDER_ANNOTATION: board.folder}
        uid = "shazamq-" + hashlib.sha256(self.uid.encode()).hexdigest()[:24]
        text = dashboard_json(
            self.name, self.namespace, uid=uid, tiered=bool(self.spec.tiered_storage.enabled)
        )
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta,
            "data": {f"shazamq-{self.namespace}-{self.name}.json": text},
        }

    def children(self) -> list[Child]:
        """Every owned object in the order they are applied (config first, pods last-but-two)."""
        return [
            Child("v1", "ConfigMap", self.config_map_name, self.generate_config_map()),
            Child("v1", "Service", self.headless_service_name, self.generate_headless_service()),
            Child("v1", "Service", self.client_service_name, self.generate_client_service()),
            Child("apps/v1", "StatefulSet", self.statefulset_name, self.generate_statefulset()),
            Child(
                "policy/v1", "PodDisruptionBudget", self.name, self.generate_pod_disruption_budget()
            ),
            Child(MONITORING_API, "ServiceMonitor", self.name, self.generate_service_monitor()),
            Child(MONITORING_API, "PrometheusRule", self.name, self.generate_prometheus_rule()),
            Child(
                "v1",
                "ConfigMap",
                self.dashboard_config_map_name,
                self.generate_grafana_dashboard(),
            ),
        ]

    def child(self, kind: str, name: str) -> Child | None:
        """The owned object of this kind and name, if the cluster owns one by that name."""
        for c in self.children():
            if c.kind == kind and c.name == name:
                return c
        return None


def _check_autoscaling(spec: Any, voter_ids: tuple[int, ...]) -> None:
    """What the autoscaler needs beyond its own fields' checks."""
    auto = spec.autoscaling
    if not auto.enabled:
        return
    if auto.targets.cpu_utilization_percent is not None and cpu_cores(spec.resources) is None:
        raise ModelError(
            "spec.autoscaling.targets.cpuUtilizationPercent",
            "needs a CPU request or limit in spec.resources (such as requests.cpu: 2000m)",
        )
    fewest = max(voter_ids, default=-1) + 1
    if auto.min_replicas < fewest:
        raise ModelError(
            "spec.autoscaling.minReplicas",
            f"must keep the metadata quorum's voters (pod ordinals "
            f"{format_voter_ids(voter_ids)}): at least {fewest}",
        )


def parse_scale(value: Any) -> tuple[int, int] | None:
    """SCALE_ANNOTATION's value (``"5->3"``) -> (5, 3); None when absent; ModelError naming
    the annotation when malformed."""
    if value is None:
        return None
    m = _SCALE.match(value) if isinstance(value, str) else None
    if m is None:
        raise ModelError(SCALE_FIELD, f"{value!r} is not '<from>-><to>' (such as '5->3')")
    return int(m.group("from")), int(m.group("to"))


def format_scale(from_: int, to: int) -> str:
    return f"{from_}->{to}"


def cluster_secret_name(name: str) -> str:
    """The Secret holding the quorum secret of the cluster `name`."""
    return f"{name}-cluster-secret"


def default_voter_ids(replicas: int) -> tuple[int, ...]:
    """The voters of a cluster whose voters are not frozen yet: the first min(3, replicas)."""
    return tuple(range(min(MAX_VOTERS, replicas)))


def format_voter_ids(ids: tuple[int, ...]) -> str:
    return ",".join(str(i) for i in ids)


def parse_voter_ids(value: Any) -> tuple[int, ...]:
    """VOTERS_ANNOTATION's value -> ascending ordinals; ModelError naming it if malformed.

    Strict on purpose: a voter set read wrongly is a quorum without its log, so a value that
    is not plainly distinct non-negative ordinals is reported rather than guessed at.
    """
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else []
    if not parts or not all(_ORDINAL.match(p) for p in parts):
        raise ModelError(
            VOTERS_FIELD,
            f"{value!r} is not a comma-separated list of pod ordinals (such as '0,1,2')",
        )
    ids = [int(p) for p in parts]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ModelError(VOTERS_FIELD, f"{value!r} names pod ordinal {duplicates[0]} twice")
    return tuple(sorted(ids))


def config_of_toml(toml_text: str) -> BrokerConfig | None:
    """The configuration a rendered ``shazamq.toml`` holds; None if it is not one the
    broker's model accepts (then there is nothing to compare it with)."""
    try:
        return parse_config(tomllib.loads(toml_text), source="ConfigMap")
    except (tomllib.TOMLDecodeError, ConfigError):
        return None


def voter_ids_of_config(toml_text: str) -> tuple[int, ...] | None:
    """The voter ordinals a rendered ``shazamq.toml`` names; None if it names none or is not
    one we rendered (the handler then falls back to `default_voter_ids`)."""
    try:
        voters = tomllib.loads(toml_text).get("cluster", {}).get("voters") or []
        ids = tuple(sorted(parse_voter(v)[0] for v in voters))
    except (tomllib.TOMLDecodeError, AttributeError, TypeError, ValueError):
        return None
    return ids if ids and len(set(ids)) == len(ids) else None


def _check_no_voter_removed(name: str, replicas: int, voter_ids: tuple[int, ...]) -> None:
    """Refuse a size that stops a frozen voter: the quorum cannot hand its vote to anyone
    else, so the spec is wrong rather than the voter set."""
    removed = [f"{name}-{i}" for i in voter_ids if i >= replicas]
    if removed:
        pods = f"pod {removed[0]}" if len(removed) == 1 else f"pods {', '.join(removed)}"
        raise ModelError(
            "spec.replicas",
            f"scaling to {replicas} would remove quorum voter {pods}; "
            "the metadata quorum cannot change its voters yet",
        )


def _voters(name: str, namespace: str, ids: tuple[int, ...]) -> list[str]:
    return [f"{i}@{name}-{i}.{name}-headless.{namespace}.svc:{QUORUM_PORT}" for i in ids]


def _mirror_secrets(source: Any) -> list[tuple[str, str]]:
    """(kind, Secret name) of a mirror source's Secrets mounted as files."""
    named = (
        ("credentials", source.credentials_secret),
        ("ca", source.ca_secret),
        ("client", source.client_certificate_secret),
    )
    return [(kind, secret) for kind, secret in named if secret]


def _mirror_settings(spec: Any) -> dict[str, Any]:
    """spec.mirror as broker settings, with each source's mounted Secret files named."""
    mirror = broker_settings(spec.mirror)
    for i, (source, settings) in enumerate(
        zip(spec.mirror.sources, mirror.get("sources", []), strict=True)
    ):
        base = f"{MIRROR_DIR}/{i}"
        if source.credentials_secret:
            settings["sasl_password_file"] = f"{base}/credentials/password"
        if source.ca_secret:
            settings["ssl_ca_file"] = f"{base}/ca/ca.crt"
        if source.client_certificate_secret:
            settings["ssl_cert_file"] = f"{base}/client/tls.crt"
            settings["ssl_key_file"] = f"{base}/client/tls.key"
    return mirror


def _selector_labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "shazamq", "app.kubernetes.io/instance": name}


def _broker_config(
    spec: Any, *, name: str, namespace: str, uid: str, voters: tuple[int, ...]
) -> BrokerConfig:
    """The explicit spec -> BrokerConfig mapping (see the module docstring)."""
    tiered = broker_settings(spec.tiered_storage)
    gcs = spec.tiered_storage.gcs
    if gcs is not None and gcs.credentials_secret:
        tiered["gcs"]["credentials_file"] = f"{GCS_DIR}/credentials.json"
    security: dict[str, Any] = {}
    if tls_enabled(spec):
        security["tls"] = {
            "enabled": True,
            "cert_file": f"{TLS_DIR}/tls.crt",
            "key_file": f"{TLS_DIR}/tls.key",
        }
    if auth_enabled(spec):
        auth = spec.security.auth
        sasl: dict[str, Any] = {
            "enabled": True,
            "mechanisms": auth.listener_mechanisms,
            "users_file": f"{AUTH_DIR}/users.toml",
        }
        if auth.oauthbearer is not None:
            sasl["oauthbearer"] = broker_settings(auth.oauthbearer)
        security["sasl"] = sasl
    if authorization_enabled(spec):
        if not auth_enabled(spec):
            raise ModelError(
                "spec.security.authorization.enabled",
                "needs spec.security.auth enabled: the brokers and the operator "
                "authenticate with SASL, and ACLs name authenticated users",
            )
        authz = broker_settings(spec.security.authorization)
        operator = f"User:{OPERATOR_USER}"
        if operator not in authz["super_users"]:
            authz["super_users"] = [*authz["super_users"], operator]
        security["authorization"] = authz
    tree: dict[str, Any] = {
        "broker": {
            "node_id_from_hostname": True,
            "port": spec.service.port,
            "data_dir": DATA_DIR,
        },
        "metrics": {"enabled": True, "port": spec.service.metrics_port},
        "storage": broker_settings(spec.storage),
        "replication": broker_settings(spec.replication),
        "tiered_storage": tiered,
        "mirror": _mirror_settings(spec),
        "security": security,
    }
    if not (spec.tiered_storage.enabled and spec.tiered_storage.restore):
        # a cluster that may restore from its bucket takes the bucket's id, when it holds one
        tree["broker"]["cluster_id"] = _cluster_id(uid)
    if voters:  # with no pods there is no quorum to describe
        tree["cluster"] = {
            "voters": _voters(name, namespace, voters),
            "secret_file": CLUSTER_SECRET_FILE,
            "quorum_host": "0.0.0.0",
        }
    try:
        rendered = parse_config(tree, source="spec")
    except ConfigError as exc:
        raise ModelError("spec", str(exc).removeprefix("spec: ")) from None
    if not spec.config:
        return rendered
    _check_extra_config(spec.config)
    for section, values in spec.config.items():
        tree.setdefault(section, {}).update(values)
    try:
        return parse_config(tree, source="spec.config")
    except ConfigError as exc:
        problem = str(exc).removeprefix("spec.config: ")
        m = _CONFIG_KEY_ERROR.match(problem)
        if m is None:
            raise ModelError("spec.config", problem) from None
        what = m.group("problem") or "unknown field"
        raise ModelError(f"spec.config.{m.group('key')}", what) from None


_CONFIG_KEY_ERROR = re.compile(
    r"^(?:invalid value for|unknown key) '(?P<key>[^']+)'(?:: (?P<problem>.*))?$", re.DOTALL
)


# Broker settings `spec.config` may not set: the operator renders them from the pod's
# identity or from other spec fields (named in the error, so the user knows where to go).
_RENDERED_SECTIONS = {
    "cluster": "the operator renders the metadata quorum",
    "security": "use spec.security",
    "tiered_storage": "use spec.tieredStorage",
    "mirror": "use spec.mirror",
}
_RENDERED_KEYS = {
    ("broker", "node_id"): "the broker id is the pod ordinal",
    ("broker", "node_id_from_hostname"): "the broker id is the pod ordinal",
    ("broker", "host"): "the operator renders the listener",
    ("broker", "port"): "use spec.service.port",
    ("broker", "advertised_host"): "the operator renders the pod's stable name",
    ("broker", "advertised_port"): "use spec.service.port",
    ("broker", "data_dir"): "the data directory is the pod's volume",
    ("broker", "cluster_id"): "the operator derives it from the resource",
    ("metrics", "enabled"): "the operator reads the brokers' metrics",
    ("metrics", "port"): "use spec.service.metricsPort",
    ("storage", "segment_bytes"): "use spec.storage.segmentBytes",
    ("storage", "retention_hours"): "use spec.storage.retentionHours",
    ("storage", "retention_bytes"): "use spec.storage.retentionBytes",
    ("replication", "default_replication_factor"): (
        "use spec.replication.defaultReplicationFactor"
    ),
    ("replication", "min_insync_replicas"): "use spec.replication.minInsyncReplicas",
}


def _check_extra_config(extra: Mapping[str, Any]) -> None:
    """`spec.config` holds sections of settings and none the operator renders itself."""
    for section, values in extra.items():
        where = f"spec.config.{section}"
        if section in _RENDERED_SECTIONS:
            raise ModelError(where, f"cannot be set here: {_RENDERED_SECTIONS[section]}")
        if not isinstance(values, Mapping):
            raise ModelError(where, "must be a section (an object of settings)")
        for key in values:
            why = _RENDERED_KEYS.get((section, key))
            if why is not None:
                raise ModelError(f"{where}.{key}", f"cannot be set here: {why}")


def tls_enabled(spec: Any) -> bool:
    """TLS on the listener: `security.tls.enabled` unless `security.enabled` is false."""
    return spec.security.enabled is not False and bool(spec.security.tls.enabled)


def authorization_enabled(spec: Any) -> bool:
    """ACLs on the brokers: `security.authorization.enabled` unless `security.enabled` is
    false."""
    return spec.security.enabled is not False and bool(spec.security.authorization.enabled)


def auth_enabled(spec: Any) -> bool:
    """SASL on the listener: `security.auth.enabled` unless `security.enabled` is false."""
    return spec.security.enabled is not False and bool(spec.security.auth.enabled)
