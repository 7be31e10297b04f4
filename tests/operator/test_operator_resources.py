"""Rendering a ShazamqCluster into Kubernetes objects (`shazamq.operator.resources`).

Covers: validation once, with errors naming the field; the broker TOML of the ConfigMap
(loaded back with the broker's own loader, every spec field mapped, defaults left out);
the headless and client Services; the StatefulSet (image, identity, advertised listener,
probes, PVC template and retention, resources and scheduling, pod labels and annotations,
config checksum, credentials from Secrets, TLS/auth/GCS mounts); one cluster per resource
(the voters of 0, 1, 3 and 5 brokers, observers beyond three, the quorum port on the pod and
the headless Service only, the cluster secret mounted and named in the TOML, the Secret
itself); voters frozen by the ``shazamq.io/quorum-voters`` annotation (scaling up adds
observers only and does not roll the pods, scaling below a voter is refused naming the pod,
a malformed annotation is refused naming the annotation, the voters of a rendered TOML); the
PodDisruptionBudget; the ServiceMonitor on and off; owner references on every object.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest
from operator_support import (
    as_stored,
    basic,
    original,
    production,
    quick_start,
    validate_manifest,
)

from shazamq.config import (
    BrokerConfig,
    StorageConfig,
    apply_env,
    load_config,
    parse_config,
    parse_voter,
)
from shazamq.operator.resources import (
    CHECKSUM_ANNOTATION,
    CLUSTER_SECRET_FILE,
    CLUSTER_SECRET_KEY,
    CONFIG_FILE,
    CONFIG_KEY,
    DATA_DIR,
    QUORUM_PORT,
    VOTERS_ANNOTATION,
    ClusterModel,
    ModelError,
    voter_ids_of_config,
)


def model(body: dict[str, Any]) -> ClusterModel:
    return ClusterModel.from_resource(body)


def with_spec(**spec: Any) -> dict[str, Any]:
    return as_stored(
        {
            "apiVersion": "shazamq.io/v1alpha1",
            "kind": "ShazamqCluster",
            "metadata": {"name": "c1"},
            "spec": spec,
        }
    )


def container(sts: dict[str, Any]) -> dict[str, Any]:
    (only,) = sts["spec"]["template"]["spec"]["containers"]
    return only


def env_of(sts: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(sts)["env"]}


def rendered_config(m: ClusterModel, tmp_path) -> BrokerConfig:
    path = tmp_path / CONFIG_KEY
    path.write_text(m.generate_config_map()["data"][CONFIG_KEY])
    return load_config(path, environ={})


# -- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"replicas": -1}, "spec.replicas", ">= 0"),
        ({"replicas": "three"}, "spec.replicas", "int"),
        ({"version": "bad tag!"}, "spec.version", "regex"),
        ({"image": "shazamq/shazamq:1.0"}, "spec.image", "regex"),
        ({"imagePullPolicy": "Sometimes"}, "spec.imagePullPolicy", "enum"),
        ({"storage": {"segmentBytes": 1}}, "spec.storage.segmentBytes", ">= 14"),
        ({"storage": {"retentionHours": -2}}, "spec.storage.retentionHours", ">= -1"),
        ({"storage": {"sizeGb": 1}}, "spec.storage.sizeGb", "unknown field"),
        ({"tieredStorage": {"enabled": True}}, "spec.tieredStorage", "s3"),
        ({"tieredStorage": {"provider": "azure"}}, "spec.tieredStorage.provider", "enum"),
        (
            {"tieredStorage": {"enabled": True, "s3": {"bucket": "ab"}}},
            "spec.tieredStorage.s3.bucket",
            "length >= 3",
        ),
        (
            {"tieredStorage": {"s3": {"bucket": "abc", "credentialsSecret": "Not_A_Name"}}},
            "spec.tieredStorage.s3.credentialsSecret",
            "regex",
        ),
        (
            {
                "mirror": {
                    "sources": [{"name": "a", "bootstrapServers": "k:9092", "numConsumers": 0}]
                }
            },
            "spec.mirror.sources[0].numConsumers",
            ">= 1",
        ),
        (
            {
                "mirror": {
                    "sources": [
                        {"name": "a", "bootstrapServers": "k:9092", "securityProtocol": "SASL_SSL"}
                    ]
                }
            },
            "spec.mirror.sources[0]",
            "sasl_mechanism",
        ),
        (
            {
                "mirror": {
                    "sources": [{"name": "a", "bootstrapServers": "k", "topicWhitelist": ["("]}]
                }
            },
            "spec.mirror.sources[0]",
            "regular expression",
        ),
        (
            {
                "mirror": {
                    "sources": [
                        {"name": "a", "bootstrapServers": "k"},
                        {"name": "a", "bootstrapServers": "j"},
                    ]
                }
            },
            "spec.mirror",
            "unique",
        ),
        ({"replication": {"minInsyncReplicas": 0}}, "spec.replication.minInsyncReplicas", ">= 1"),
        (
            {"replication": {"defaultReplicationFactor": 1, "minInsyncReplicas": 2}},
            "spec",
            "min_insync_replicas",
        ),
        ({"service": {"type": "Ingress"}}, "spec.service.type", "enum"),
        ({"service": {"port": 70000}}, "spec.service.port", "<= 65535"),
        ({"service": {"port": 9090}}, "spec.service", "differ"),
        ({"service": {"port": 9093}}, "spec.service", "quorum port 9093"),
        ({"service": {"metricsPort": 9093}}, "spec.service", "quorum port 9093"),
        ({"security": {"tls": {"enabled": True}}}, "spec.security.tls", "secretName"),
        ({"security": {"auth": {"enabled": True}}}, "spec.security.auth", "secretName"),
        ({"security": {"auth": {"mechanism": "GSSAPI"}}}, "spec.security.auth.mechanism", "enum"),
        (
            {"monitoring": {"serviceMonitor": {"interval": "often"}}},
            "spec.monitoring.serviceMonitor.interval",
            "regex",
        ),
        ({"podLabels": {"app.kubernetes.io/instance": "x"}}, "spec.podLabels", "selector"),
        ({"nodeSelector": {"disk": 1}}, "spec.nodeSelector[...]", "str"),
        ({"tolerations": {"key": "x"}}, "spec.tolerations", "array"),
        ({"unknown": 1}, "spec.unknown", "unknown field"),
    ],
)
def test_bad_values_are_rejected_naming_the_field(spec: dict, field: str, words: str) -> None:
    with pytest.raises(ModelError) as info:
        model(with_spec(**spec))
    assert info.value.field == field, str(info.value)
    assert str(info.value).startswith(f"{field}: ")
    assert words in str(info.value)


def test_the_brief_s_example_message() -> None:
    with pytest.raises(ModelError, match=r"^spec\.replicas: Expected int >= 0"):
        model(with_spec(replicas=-1))


@pytest.mark.parametrize(
    ("meta", "field"),
    [
        ({"name": "Bad_Name"}, "metadata.name"),
        ({"name": "a" * 53}, "metadata.name"),
        ({"name": "9lives"}, "metadata.name"),
        ({"name": "ok", "namespace": ""}, "metadata.namespace"),
        ({"name": "ok", "uid": ""}, "metadata.uid"),
    ],
)
def test_bad_metadata_is_rejected(meta: dict, field: str) -> None:
    body = as_stored({"metadata": dict(meta), "spec": {}})
    body["metadata"].update(meta)
    with pytest.raises(ModelError) as info:
        model(body)
    assert info.value.field == field


def test_a_missing_spec_means_every_default() -> None:
    body = as_stored({"metadata": {"name": "c1"}})
    m = model(body)
    assert m.spec.replicas == 3
    assert m.generate_statefulset()["spec"]["replicas"] == 3


# -- the broker configuration ------------------------------------------------------------------


def test_config_map_holds_toml_the_broker_loads(readme_cluster: dict, tmp_path) -> None:
    m = model(readme_cluster)
    cm = m.generate_config_map()
    assert cm["metadata"]["name"] == f"{m.name}-config"
    assert set(cm["data"]) == {CONFIG_KEY}
    config = rendered_config(m, tmp_path)
    assert config == m.config
    assert config.broker.node_id_from_hostname is True
    assert config.broker.data_dir == DATA_DIR
    assert config.broker.port == m.spec.service.port
    assert config.metrics.port == m.spec.service.metrics_port


def test_defaults_are_left_out_of_the_toml() -> None:
    toml = model(basic()).config_toml()
    assert "[storage]" not in toml
    assert "[tiered_storage]" not in toml
    assert "[mirror]" not in toml
    assert "[security" not in toml
    assert "node_id_from_hostname = true" in toml


def test_every_production_field_reaches_the_broker(tmp_path) -> None:
    m = model(production())
    config = rendered_config(m, tmp_path)
    assert config.storage.segment_bytes == 1073741824
    assert config.storage.retention_hours == 168
    assert config.storage.retention_bytes == -1
    assert config.replication.default_replication_factor == 3
    assert config.replication.min_insync_replicas == 2
    tiered = config.tiered_storage
    assert (tiered.enabled, tiered.provider, tiered.hot_tier_retention_hours) == (True, "s3", 24)
    assert tiered.s3 is not None
    assert (tiered.s3.bucket, tiered.s3.region, tiered.s3.prefix) == (
        "shazamq-data",
        "us-east-1",
        "prod/shazamq",
    )
    assert tiered.s3.access_key_id is None  # from the Secret, through the environment
    assert config.mirror.enabled
    (source,) = config.mirror.sources
    assert source.name == "kafka-prod"
    assert source.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert source.security_protocol == "SASL_SSL"
    assert source.sasl_mechanism == "SCRAM-SHA-512"
    assert source.topic_whitelist == ("orders.*", "events.*")
    assert source.topic_blacklist == ()
    assert source.consumer_group_id == "shazamq-mirror"
    assert source.num_consumers == 8
    assert source.exactly_once is True
    tls = config.security.tls
    assert (tls.enabled, tls.cert_file, tls.key_file) == (
        True,
        "/etc/shazamq/tls/tls.crt",
        "/etc/shazamq/tls/tls.key",
    )
    sasl = config.security.sasl
    assert sasl.enabled and sasl.mechanisms == ("SCRAM-SHA-512",)
    assert sasl.users_file == "/etc/shazamq/auth/users.toml"


def test_gcs_tiered_storage_uses_the_mounted_credentials_file(tmp_path) -> None:
    m = model(
        with_spec(
            tieredStorage={
                "enabled": True,
                "provider": "gcs",
                "gcs": {
                    "bucket": "shazamq-gcs",
                    "prefix": "p",
                    "endpoint": "http://gcs:4443",
                    "credentialsSecret": "gcp-sa",
                },
            }
        )
    )
    gcs = rendered_config(m, tmp_path).tiered_storage.gcs
    assert gcs is not None
    assert (gcs.bucket, gcs.prefix, gcs.endpoint) == ("shazamq-gcs", "p", "http://gcs:4443")
    assert gcs.credentials_file == "/etc/shazamq/gcs/credentials.json"
    sts = m.generate_statefulset()
    mounts = {v["name"]: v["mountPath"] for v in container(sts)["volumeMounts"]}
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert mounts["gcs-credentials"] == "/etc/shazamq/gcs"
    assert volumes["gcs-credentials"]["secret"]["secretName"] == "gcp-sa"


def test_the_pod_environment_completes_the_configuration(tmp_path) -> None:
    """The ConfigMap plus the pod's env, as the broker reads them, give the full config."""
    m = model(production())
    env = {}
    for item in container(m.generate_statefulset())["env"]:
        if "value" in item:
            env[item["name"]] = item["value"].replace("$(POD_NAME)", "production-cluster-1")
        elif "secretKeyRef" in item["valueFrom"]:
            env[item["name"]] = f"<{item['valueFrom']['secretKeyRef']['key']}>"
    path = tmp_path / CONFIG_KEY
    path.write_text(m.config_toml())
    config = load_config(path, environ=env)
    assert config.broker.advertised_host == (
        "production-cluster-1.production-cluster-headless.messaging.svc"
    )
    assert config.tiered_storage.s3 is not None
    assert config.tiered_storage.s3.access_key_id == "<access-key-id>"
    assert config.tiered_storage.s3.secret_access_key == "<secret-access-key>"
    assert config.mirror.sources[0].sasl_username == "<username>"
    assert config.mirror.sources[0].sasl_password is None
    assert config.mirror.sources[0].sasl_password_file == (
        "/etc/shazamq/mirror/0/credentials/password"
    )


def test_shared_settings_keep_the_broker_s_bounds_and_defaults() -> None:
    """The spec's storage fields are the broker's: same default, same minimum."""
    toml_tree = {"storage": {"segment_bytes": 14}}
    assert parse_config(toml_tree).storage.segment_bytes == 14
    assert model(with_spec(storage={"segmentBytes": 14})).config.storage.segment_bytes == 14
    assert model(basic()).config.storage == StorageConfig()


def test_cluster_id_is_shared_by_every_broker_and_stable() -> None:
    a, b = model(quick_start()), model(quick_start())
    assert a.config.broker.cluster_id == b.config.broker.cluster_id
    assert len(a.config.broker.cluster_id or "") == 22
    other = quick_start()
    other["metadata"]["uid"] = "7b0f8a4e-0000-4000-8000-000000000001"
    assert model(other).config.broker.cluster_id != a.config.broker.cluster_id


def test_a_cluster_on_a_bucket_may_restore_it_unless_told_not_to() -> None:
    """With tiered storage (and ``restore``, the default) the cluster id is not pinned: a new
    cluster's brokers take the id of the cluster the bucket holds, and restore it. With
    ``restore: false`` the resource's id is pinned, so a bucket holding another cluster is
    refused by the brokers."""
    tiered = {"enabled": True, "provider": "s3", "s3": {"bucket": "bucket-1", "prefix": "p"}}
    assert model(with_spec(tieredStorage=tiered)).config.broker.cluster_id is None
    pinned = model(with_spec(tieredStorage={**tiered, "restore": False}))
    assert pinned.config.broker.cluster_id == model(with_spec()).config.broker.cluster_id
    off = model(with_spec(tieredStorage={**tiered, "enabled": False}))
    assert off.config.broker.cluster_id is not None


# -- Services --------------------------------------------------------------------------------


def test_headless_service_publishes_not_ready_pods() -> None:
    m = model(quick_start())
    svc = m.generate_headless_service()
    assert svc["metadata"]["name"] == "my-cluster-headless"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == m.selector_labels
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    assert ports == {
        "kafka": (9092, "kafka"),
        "metrics": (9090, "metrics"),
        "quorum": (9093, "quorum"),
    }


def test_client_service_type_and_ports_come_from_the_spec() -> None:
    m = model(with_spec(service={"type": "LoadBalancer", "port": 19092, "metricsPort": 19090}))
    svc = m.generate_client_service()
    assert svc["metadata"]["name"] == "c1"
    assert svc["spec"]["type"] == "LoadBalancer"
    assert {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        "kafka": (19092, "kafka"),
        "metrics": (19090, "metrics"),
    }
    ports = {p["name"]: p["containerPort"] for p in container(m.generate_statefulset())["ports"]}
    assert ports == {"kafka": 19092, "metrics": 19090, "quorum": QUORUM_PORT}
    assert m.config.broker.port == 19092 and m.config.metrics.port == 19090


def test_client_service_defaults_to_cluster_ip() -> None:
    assert model(basic()).generate_client_service()["spec"]["type"] == "ClusterIP"


# -- StatefulSet ----------------------------------------------------------------------------


def test_statefulset_of_the_quick_start() -> None:
    m = model(quick_start())
    sts = m.generate_statefulset()
    spec = sts["spec"]
    assert sts["metadata"]["name"] == "my-cluster"
    assert spec["replicas"] == 3
    assert spec["serviceName"] == "my-cluster-headless"
    assert spec["selector"]["matchLabels"] == m.selector_labels
    assert spec["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "100Gi"}},
    }
    c = container(sts)
    assert c["image"] == "shazamq/shazamq:0.1.0-rc1"
    assert c["command"] == ["python", "-m", "shazamq.broker"]
    assert c["args"] == ["--config", CONFIG_FILE]
    mounts = {v["name"]: v["mountPath"] for v in c["volumeMounts"]}
    assert mounts["data"] == "/data" and DATA_DIR.startswith("/data/")
    assert CONFIG_FILE.startswith(mounts["config"] + "/")
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "my-cluster-config"


def test_broker_identity_and_advertised_listener() -> None:
    m = model(quick_start())
    env = env_of(m.generate_statefulset())
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["SHAZAMQ_BROKER__ADVERTISED_HOST"] == "$(POD_NAME).my-cluster-headless.messaging.svc"
    names = [e["name"] for e in container(m.generate_statefulset())["env"]]
    assert names.index("POD_NAME") < names.index("SHAZAMQ_BROKER__ADVERTISED_HOST")
    assert m.config.broker.node_id_from_hostname
    assert m.brokers()[2] == {
        "id": 2,
        "pod": "my-cluster-2",
        "address": "my-cluster-2.my-cluster-headless.messaging.svc:9092",
    }


def test_probes_check_the_kafka_port() -> None:
    c = container(model(basic()).generate_statefulset())
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["tcpSocket"] == {"port": "kafka"}


def test_version_and_image_make_the_image_reference() -> None:
    m = model(with_spec(version="0.2.0", image="registry.local:5000/team/shazamq"))
    c = container(m.generate_statefulset())
    assert c["image"] == "registry.local:5000/team/shazamq:0.2.0"
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert m.generate_statefulset()["metadata"]["labels"]["app.kubernetes.io/version"] == "0.2.0"


def test_production_scheduling_resources_and_pod_metadata() -> None:
    sts = model(production()).generate_statefulset()
    pod = sts["spec"]["template"]
    c = container(sts)
    assert c["resources"] == {
        "requests": {"cpu": "2000m", "memory": "4Gi"},
        "limits": {"cpu": "8000m", "memory": "16Gi"},
    }
    assert pod["spec"]["nodeSelector"] == {"workload": "messaging", "disk": "nvme"}
    assert pod["spec"]["tolerations"] == [
        {"key": "messaging", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
    ]
    required = pod["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert required[0]["labelSelector"]["matchExpressions"][0] == {
        "key": "app",
        "operator": "In",
        "values": ["shazamq"],
    }
    # The README's anti-affinity selects `app: shazamq`, which every broker pod carries.
    assert pod["metadata"]["labels"]["app"] == "shazamq"
    assert pod["metadata"]["labels"]["team"] == "messaging"
    assert pod["metadata"]["annotations"]["example.com/team"] == "messaging"
    assert CHECKSUM_ANNOTATION in pod["metadata"]["annotations"]
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "fast-ssd"


def test_default_anti_affinity_spreads_brokers_over_nodes() -> None:
    m = model(basic())
    affinity = m.generate_statefulset()["spec"]["template"]["spec"]["affinity"]
    (term,) = affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == m.selector_labels
    pod = m.generate_statefulset()["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert "resources" not in container(m.generate_statefulset())


def test_default_volume_claim_template() -> None:
    (claim,) = model(basic()).generate_statefulset()["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"


def test_volume_claim_template_metadata_is_kept_and_named_data() -> None:
    body = with_spec(
        storage={
            "volumeClaimTemplate": {
                "metadata": {"name": "ignored", "annotations": {"a": "b"}},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            }
        }
    )
    (claim,) = model(body).generate_statefulset()["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["metadata"]["annotations"] == {"a": "b"}


def test_a_config_change_changes_the_pod_template_checksum() -> None:
    def checksum(body: dict) -> str:
        sts = model(body).generate_statefulset()
        return sts["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION]

    base = quick_start()
    changed = copy.deepcopy(base)
    changed["spec"]["config"] = {"broker": {"default_partitions": 6}}
    dynamic = copy.deepcopy(base)
    dynamic["spec"]["storage"]["retentionHours"] = 24
    dynamic["spec"]["config"] = {"broker": {"message_max_bytes": 2000000}}
    scaled = copy.deepcopy(base)
    scaled["spec"]["replicas"] = 5
    assert checksum(base) == checksum(copy.deepcopy(base))
    assert checksum(changed) != checksum(base)
    assert checksum(scaled) == checksum(base)  # scaling does not roll the pods
    # settings the brokers take without a restart change the ConfigMap, not the pods
    assert checksum(dynamic) == checksum(base)
    assert model(dynamic).config_toml() != model(base).config_toml()


def test_credentials_come_from_the_named_secrets() -> None:
    env = env_of(model(production()).generate_statefulset())
    assert env["SHAZAMQ_TIERED_STORAGE__S3__ACCESS_KEY_ID"] == {
        "secretKeyRef": {"name": "aws-credentials", "key": "access-key-id"}
    }
    assert env["SHAZAMQ_TIERED_STORAGE__S3__SECRET_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "aws-credentials", "key": "secret-access-key"}
    }
    assert env["SHAZAMQ_MIRROR__SOURCES__0__SASL_USERNAME"] == {
        "secretKeyRef": {"name": "kafka-credentials", "key": "username"}
    }
    # the password is a file of the mounted Secret, never in the environment
    assert "SHAZAMQ_MIRROR__SOURCES__0__SASL_PASSWORD" not in env


def test_mirror_credentials_env_follows_the_source_index() -> None:
    body = with_spec(
        mirror={
            "enabled": True,
            "sources": [
                {"name": "a", "bootstrapServers": "a:9092"},
                {"name": "b", "bootstrapServers": "b:9092", "credentialsSecret": "b-creds"},
            ],
        }
    )
    m = model(body)
    env = env_of(m.generate_statefulset())
    assert "SHAZAMQ_MIRROR__SOURCES__0__SASL_USERNAME" not in env
    assert env["SHAZAMQ_MIRROR__SOURCES__1__SASL_USERNAME"]["secretKeyRef"]["name"] == "b-creds"
    tree = {"mirror": {"sources": [{"name": "a"}, {"name": "b"}]}}
    apply_env(tree, {"SHAZAMQ_MIRROR__SOURCES__1__SASL_USERNAME": "u"})
    assert tree["mirror"]["sources"][1]["sasl_username"] == "u"


def test_tls_and_auth_secrets_are_mounted() -> None:
    sts = model(production()).generate_statefulset()
    mounts = {v["name"]: v for v in container(sts)["volumeMounts"]}
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert mounts["tls"]["mountPath"] == "/etc/shazamq/tls" and mounts["tls"]["readOnly"]
    assert volumes["tls"]["secret"]["secretName"] == "shazamq-tls"
    assert mounts["auth"]["mountPath"] == "/etc/shazamq/auth"
    assert volumes["auth"]["secret"]["secretName"] == "shazamq-users"


def test_no_secrets_named_only_the_cluster_secret_mounted_and_no_secret_env() -> None:
    sts = model(basic()).generate_statefulset()
    volumes = sts["spec"]["template"]["spec"]["volumes"]
    assert [v["name"] for v in volumes] == ["config", "cluster-secret"]
    assert all("secretKeyRef" not in str(e) for e in container(sts)["env"])


# -- one cluster ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("replicas", "voter_ids"),
    [(1, [0]), (2, [0, 1]), (3, [0, 1, 2]), (5, [0, 1, 2])],
)
def test_the_first_three_pods_are_the_voters(replicas: int, voter_ids: list[int], tmp_path) -> None:
    body = quick_start()
    body["spec"]["replicas"] = replicas
    m = model(body)
    config = rendered_config(m, tmp_path)  # the ConfigMap, as the broker loads it
    cluster = config.cluster
    assert cluster.enabled
    assert (
        cluster.voters
        == m.voters()
        == [f"{i}@my-cluster-{i}.my-cluster-headless.messaging.svc:9093" for i in voter_ids]
    )
    assert [parse_voter(v) for v in cluster.voters] == [
        (i, m.advertised_host(i), QUORUM_PORT) for i in voter_ids
    ]
    assert cluster.quorum_host == "0.0.0.0"
    assert (cluster.secret, cluster.secret_file) == (None, CLUSTER_SECRET_FILE)
    # every pod gets the same ConfigMap; its id (the ordinal) says what it is
    voters = cluster.voter_map()
    observers = [b["id"] for b in m.brokers() if b["id"] not in voters]
    assert sorted(voters) == voter_ids
    assert observers == list(range(3, replicas))
    for obj in [c.desired for c in m.children() if c.desired is not None]:
        validate_manifest(obj)
    validate_manifest(m.generate_cluster_secret("s3cr3t"))


def test_no_brokers_no_quorum() -> None:
    m = model(with_spec(replicas=0))
    assert m.voters() == []
    assert not m.config.cluster.enabled
    assert "[cluster]" not in m.config_toml()


def test_each_pod_s_identity_and_the_voters_agree(tmp_path) -> None:
    """What pod my-cluster-1 loads (ConfigMap + env) names it as the voter with its own
    advertised name: the quorum and the Kafka listener are the same host."""
    m = model(quick_start())
    env = {}
    for item in container(m.generate_statefulset())["env"]:
        if "value" in item:
            env[item["name"]] = item["value"].replace("$(POD_NAME)", "my-cluster-1")
    path = tmp_path / CONFIG_KEY
    path.write_text(m.config_toml())
    config = load_config(path, environ=env)
    host, port = config.cluster.voter_map()[1]
    assert (host, port) == (config.broker.advertised_host, QUORUM_PORT)


def test_the_quorum_port_is_on_the_pod_and_the_headless_service_only() -> None:
    m = model(quick_start())
    ports = {p["name"]: p["containerPort"] for p in container(m.generate_statefulset())["ports"]}
    assert ports["quorum"] == QUORUM_PORT
    client = {p["name"] for p in m.generate_client_service()["spec"]["ports"]}
    assert client == {"kafka", "metrics"}
    headless = m.generate_headless_service()["spec"]
    assert headless["publishNotReadyAddresses"] is True  # peers find each other unready
    assert {p["name"] for p in headless["ports"]} == {"kafka", "metrics", "quorum"}


def test_the_cluster_secret_is_mounted_read_only_where_the_toml_says() -> None:
    m = model(quick_start())
    sts = m.generate_statefulset()
    mounts = {v["name"]: v for v in container(sts)["volumeMounts"]}
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    mount = mounts["cluster-secret"]
    assert mount["readOnly"] is True
    assert m.config.cluster.secret_file == f"{mount['mountPath']}/{CLUSTER_SECRET_KEY}"
    assert volumes["cluster-secret"]["secret"]["secretName"] == "my-cluster-cluster-secret"
    assert m.cluster_secret_name == "my-cluster-cluster-secret"


def test_the_cluster_secret_object() -> None:
    m = model(quick_start())
    secret = m.generate_cluster_secret("a-random-value")
    validate_manifest(secret)
    meta = secret["metadata"]
    assert (meta["name"], meta["namespace"]) == ("my-cluster-cluster-secret", "messaging")
    assert meta["ownerReferences"] == [m.owner_reference()]
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "shazamq-operator"
    assert secret["type"] == "Opaque" and secret["immutable"] is True
    assert base64.b64decode(secret["data"][CLUSTER_SECRET_KEY]) == b"a-random-value"
    # not a child: it is created once by the handler, never applied
    assert "Secret" not in {c.kind for c in m.children()}


def test_scaling_within_the_voters_changes_the_quorum_beyond_does_not() -> None:
    def checksum(replicas: int) -> str:
        body = quick_start()
        body["spec"]["replicas"] = replicas
        sts = model(body).generate_statefulset()
        return sts["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION]

    assert checksum(3) == checksum(4) == checksum(7)  # observers only: no roll
    assert checksum(1) != checksum(2) != checksum(3)  # the voters change: every pod rolls


# -- frozen voters ---------------------------------------------------------------------------

VOTERS_FIELD = 'metadata.annotations["shazamq.io/quorum-voters"]'


def frozen(replicas: int, voters: str) -> dict[str, Any]:
    body = quick_start()
    body["spec"]["replicas"] = replicas
    body["metadata"]["annotations"] = {VOTERS_ANNOTATION: voters}
    return body


def test_without_the_annotation_the_voters_are_computed_and_not_frozen() -> None:
    m = model(quick_start())
    assert (m.voter_ids, m.voters_frozen) == ((0, 1, 2), False)
    assert m.voter_ids_annotation() == "0,1,2"  # what the handler records
    assert model(with_spec(replicas=0)).voter_ids == ()


@pytest.mark.parametrize(
    ("replicas", "voters", "voter_ids"),
    [(3, "0", [0]), (1, "0", [0]), (5, "0,1,2", [0, 1, 2]), (4, " 2, 0 ,1", [0, 1, 2])],
)
def test_frozen_voters_stay_and_the_other_pods_observe(
    replicas: int, voters: str, voter_ids: list[int], tmp_path
) -> None:
    m = model(frozen(replicas, voters))
    assert (list(m.voter_ids), m.voters_frozen) == (voter_ids, True)
    config = rendered_config(m, tmp_path)
    assert sorted(config.cluster.voter_map()) == voter_ids
    assert config.cluster.voters == [
        f"{i}@my-cluster-{i}.my-cluster-headless.messaging.svc:9093" for i in voter_ids
    ]
    observers = [b["id"] for b in m.brokers() if b["id"] not in voter_ids]
    assert observers == [i for i in range(replicas) if i not in voter_ids]
    assert m.generate_statefulset()["spec"]["replicas"] == replicas


def test_with_frozen_voters_scaling_up_does_not_roll_the_pods() -> None:
    def checksum(replicas: int, voters: str) -> str:
        sts = model(frozen(replicas, voters)).generate_statefulset()
        return sts["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION]

    assert checksum(1, "0") == checksum(2, "0") == checksum(3, "0")  # 1 -> 3: observers only
    assert checksum(3, "0,1,2") == checksum(5, "0,1,2")


@pytest.mark.parametrize(
    ("replicas", "voters", "pods"),
    [
        (2, "0,1,2", "pod my-cluster-2"),
        (1, "0,1,2", "pods my-cluster-1, my-cluster-2"),
        (0, "0", "pod my-cluster-0"),
        (4, "0,1,4", "pod my-cluster-4"),
    ],
)
def test_scaling_below_a_frozen_voter_is_refused(replicas: int, voters: str, pods: str) -> None:
    with pytest.raises(ModelError) as info:
        model(frozen(replicas, voters))
    assert info.value.field == "spec.replicas"
    assert str(info.value) == (
        f"spec.replicas: scaling to {replicas} would remove quorum voter {pods}; "
        "the metadata quorum cannot change its voters yet"
    )


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("", "is not a comma-separated list of pod ordinals"),
        ("0,,2", "is not a comma-separated list of pod ordinals"),
        ("0,1,x", "is not a comma-separated list of pod ordinals"),
        ("-1", "is not a comma-separated list of pod ordinals"),
        ("0;1", "is not a comma-separated list of pod ordinals"),
        ("\uff11", "is not a comma-separated list of pod ordinals"),  # a fullwidth digit
        (["0"], "is not a comma-separated list of pod ordinals"),
        ("0,1,0", "names pod ordinal 0 twice"),
    ],
)
def test_a_malformed_voters_annotation_is_refused_naming_it(value: Any, words: str) -> None:
    with pytest.raises(ModelError) as info:
        model(frozen(3, value))
    assert info.value.field == VOTERS_FIELD
    assert str(info.value).startswith(f"{VOTERS_FIELD}: {value!r} ")
    assert words in info.value.problem


def test_the_voters_of_a_rendered_config() -> None:
    assert voter_ids_of_config(model(quick_start()).config_toml()) == (0, 1, 2)
    assert voter_ids_of_config(model(frozen(5, "0")).config_toml()) == (0,)
    assert voter_ids_of_config(model(with_spec(replicas=0)).config_toml()) is None
    for foreign in ["not toml [", "cluster = 1", '[cluster]\nvoters = ["x"]', "[cluster]\n"]:
        assert voter_ids_of_config(foreign) is None


# -- PodDisruptionBudget, ServiceMonitor, ownership -----------------------------------------


def test_pod_disruption_budget_allows_one_broker_down() -> None:
    m = model(quick_start())
    pdb = m.generate_pod_disruption_budget()
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": m.selector_labels}}


def test_service_monitor_only_when_enabled() -> None:
    assert model(basic()).generate_service_monitor() is None
    m = model(production())
    sm = m.generate_service_monitor()
    assert sm is not None
    assert sm["spec"]["selector"]["matchLabels"] == {
        **m.selector_labels,
        "shazamq.io/service": "headless",
    }
    assert m.generate_headless_service()["metadata"]["labels"]["shazamq.io/service"] == "headless"
    assert sm["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]


def test_every_child_is_owned_by_the_cluster(readme_cluster: dict) -> None:
    m = model(readme_cluster)
    uid = readme_cluster["metadata"]["uid"]
    children = [c for c in m.children() if c.desired is not None]
    assert {c.kind for c in children} >= {
        "ConfigMap",
        "Service",
        "StatefulSet",
        "PodDisruptionBudget",
    }
    for child in children:
        meta = child.desired["metadata"]
        assert (child.desired["apiVersion"], child.desired["kind"], meta["name"]) == (
            child.api_version,
            child.kind,
            child.name,
        )
        assert meta["namespace"] == m.namespace
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "shazamq-operator"
        assert meta["labels"]["shazamq.io/cluster"] == m.name
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "shazamq.io/v1alpha1",
                "kind": "ShazamqCluster",
                "name": m.name,
                "uid": uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]


def test_rendering_is_pure_and_repeatable() -> None:
    body = production()
    snapshot = copy.deepcopy(body)
    first = [c.desired for c in model(body).children()]
    second = [c.desired for c in model(body).children()]
    assert first == second
    assert body == snapshot


# -- the original operator's fields -------------------------------------------------------------


def test_every_field_of_the_original_crd_has_its_meaning() -> None:
    model = ClusterModel.from_resource(original())
    sts = model.generate_statefulset()
    pod = sts["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    client = model.generate_client_service()
    assert client["spec"]["type"] == "LoadBalancer"
    assert client["metadata"]["annotations"] == {
        "service.beta.kubernetes.io/aws-load-balancer-internal": "true"
    }
    assert "annotations" not in model.generate_headless_service()["metadata"]
    config = model.config
    assert config.security.tls.enabled and config.security.sasl.enabled
    assert config.storage.retention_bytes == 107374182400
    assert config.tiered_storage.s3 is not None
    assert config.tiered_storage.s3.endpoint == "https://s3.example.com"
    assert list(config.mirror.sources[0].topic_blacklist) == ["orders.internal.*"]
    # spec.config: more broker settings, checked by the broker's model
    assert config.broker.default_partitions == 6
    assert config.groups.max_session_timeout_ms == 600000
    assert model.generate_service_monitor() is not None
    for obj in (sts, client, model.generate_config_map()):
        validate_manifest(obj)


def test_monitoring_enabled_false_renders_no_monitoring_objects() -> None:
    body = original()
    body["spec"]["monitoring"]["enabled"] = False
    model = ClusterModel.from_resource(body)
    assert model.generate_service_monitor() is None
    assert model.config.metrics.enabled  # the brokers still serve /metrics


def test_security_enabled_false_turns_tls_and_auth_off() -> None:
    body = original()
    body["spec"]["security"]["enabled"] = False
    model = ClusterModel.from_resource(body)
    assert not model.config.security.tls.enabled
    assert not model.config.security.sasl.enabled
    mounts = model.generate_statefulset()["spec"]["template"]["spec"]["volumes"]
    # the listener's Secrets go; a mirror source's own credentials are not listener security
    assert {v["name"] for v in mounts} - {"mirror-0-credentials"} == {"config", "cluster-secret"}


@pytest.mark.parametrize(
    ("config", "field", "words"),
    [
        ({"broker": {"default_partitions": 0}}, "spec.config.broker.default_partitions", ">= 1"),
        ({"broker": {"nope": 1}}, "spec.config.broker.nope", "unknown"),
        ({"broker": {"port": 1234}}, "spec.config.broker.port", "spec.service.port"),
        ({"cluster": {"voters": []}}, "spec.config.cluster", "quorum"),
        ({"security": {}}, "spec.config.security", "spec.security"),
        ({"storage": {"segment_bytes": 100}}, "spec.config.storage.segment_bytes", "segmentBytes"),
        ({"groups": 3}, "spec.config.groups", "section"),
    ],
)
def test_spec_config_errors_name_the_setting(config: dict, field: str, words: str) -> None:
    body = quick_start()
    body["spec"]["config"] = config
    with pytest.raises(ModelError) as info:
        ClusterModel.from_resource(body)
    assert info.value.field == field
    assert words in info.value.problem


def test_mirror_source_secrets_are_mounted_as_files(tmp_path) -> None:
    """Each source's credentials, CA and client certificate Secrets are mounted under its
    index, and the rendered configuration names the files in them."""
    body = with_spec(
        mirror={
            "enabled": True,
            "sources": [
                {"name": "a", "bootstrapServers": "a:9092"},
                {
                    "name": "b",
                    "bootstrapServers": "b:9093",
                    "securityProtocol": "SASL_SSL",
                    "saslMechanism": "SCRAM-SHA-512",
                    "credentialsSecret": "b-creds",
                    "caSecret": "b-ca",
                    "clientCertificateSecret": "b-client",
                },
            ],
        }
    )
    m = model(body)
    sts = m.generate_statefulset()
    mounts = {v["name"]: v for v in container(sts)["volumeMounts"]}
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    expected = {
        "mirror-1-credentials": ("b-creds", "/etc/shazamq/mirror/1/credentials"),
        "mirror-1-ca": ("b-ca", "/etc/shazamq/mirror/1/ca"),
        "mirror-1-client": ("b-client", "/etc/shazamq/mirror/1/client"),
    }
    for name, (secret, path) in expected.items():
        assert mounts[name]["mountPath"] == path and mounts[name]["readOnly"]
        assert volumes[name]["secret"]["secretName"] == secret
    assert not [n for n in mounts if n.startswith("mirror-0-")]
    a, b = rendered_config(m, tmp_path).mirror.sources
    assert (a.sasl_password_file, a.ssl_ca_file, a.ssl_cert_file) == (None, None, None)
    assert b.sasl_password_file == "/etc/shazamq/mirror/1/credentials/password"
    assert b.ssl_ca_file == "/etc/shazamq/mirror/1/ca/ca.crt"
    assert (b.ssl_cert_file, b.ssl_key_file) == (
        "/etc/shazamq/mirror/1/client/tls.crt",
        "/etc/shazamq/mirror/1/client/tls.key",
    )
