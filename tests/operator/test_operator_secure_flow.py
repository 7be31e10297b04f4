"""The operator's credentials on a cluster with TLS, SASL and ACLs, against kmock's emulator.

Covers, rendered (each object checked by kubernetes-validate): the operator's credentials
Secret, the pod environment that adds the operator's user to the brokers' users from it,
``spec.security.authorization`` as the brokers' ``[security.authorization]`` with the
operator among the super users, and the errors of an authorization without
authentication. Running: the operator creates its Secret once (keeping one made
beforehand), and its admin calls (here, a dynamic setting sent to every broker) go over
TLS trusting the listener Secret's CA, logged in as its own user with that Secret's
password.
"""

from __future__ import annotations

import base64
import tomllib
from pathlib import Path
from typing import Any

import kmock
import kopf
import pytest
from operator_support import prepare_emulator, quick_start, validate_manifest
from test_operator_dynamic_flow import FakeConfigs
from test_operator_reconcile import STATEFULSETS, Cluster, OperatorThread, eventually
from test_operator_roll_flow import NS, FakeBrokers, gone, put_pod, ready_sts_status

from shazamq.operator.__main__ import parse_options
from shazamq.operator.admin import OPERATOR_USER, Connection
from shazamq.operator.dynamic import desired
from shazamq.operator.resources import OPERATOR_USER_ENV, ClusterModel, ModelError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:kmock")

SECRETS = "v1/secrets"
CA = "-----BEGIN CERTIFICATE-----\nTHE CLUSTER CA\n-----END CERTIFICATE-----\n"


def secure(body: dict[str, Any], **authorization: Any) -> dict[str, Any]:
    body["spec"]["security"] = {
        "tls": {"enabled": True, "secretName": "my-tls"},
        "auth": {"enabled": True, "mechanism": "SCRAM-SHA-512", "secretName": "my-users"},
        "authorization": {"enabled": True, "superUsers": ["User:admin"], **authorization},
    }
    return body


def test_rendered_objects_of_a_secure_cluster() -> None:
    model = ClusterModel.from_resource(secure(quick_start()))
    secret = model.generate_operator_secret("pw")
    validate_manifest(secret)
    assert secret["metadata"]["name"] == "my-cluster-operator-credentials"
    assert base64.b64decode(secret["data"]["username"]).decode() == OPERATOR_USER
    sts = model.generate_statefulset()
    validate_manifest(sts)
    env = {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[OPERATOR_USER_ENV]["valueFrom"]["secretKeyRef"] == {
        "name": "my-cluster-operator-credentials",
        "key": "password",
    }
    cm = model.generate_config_map()
    validate_manifest(cm)
    authz = tomllib.loads(cm["data"]["shazamq.toml"])["security"]["authorization"]
    assert authz == {"enabled": True, "super_users": ["User:admin", f"User:{OPERATOR_USER}"]}
    assert "pw" not in cm["data"]["shazamq.toml"]  # the password is never in the ConfigMap

    # Without authentication, ACLs would name nobody: refused, naming the field.
    body = secure(quick_start())
    body["spec"]["security"]["auth"] = {"enabled": False}
    with pytest.raises(ModelError, match=r"spec\.security\.authorization\.enabled: needs"):
        ClusterModel.from_resource(body)
    with pytest.raises(ModelError, match=r"spec\.security\.authorization"):
        ClusterModel.from_resource(secure(quick_start(), superUsers=["admin"]))
    # the master switch turns it off with the rest; a plain cluster has no operator user
    off = secure(quick_start())
    off["spec"]["security"]["enabled"] = False
    plain = ClusterModel.from_resource(off)
    assert not plain.config.security.authorization.enabled
    env = plain.generate_statefulset()["spec"]["template"]["spec"]["containers"][0]["env"]
    assert OPERATOR_USER_ENV not in {e["name"] for e in env}


async def test_admin_calls_log_in_as_the_operator(
    kmock: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = secure(quick_start())
    seen: list[Connection] = []

    class Recording(FakeConfigs):
        async def describe(self, connection, host, port, broker, names):  # type: ignore[override]
            seen.append(connection)
            return {k: v for k, v in self.running[broker].items() if k in names}

    configs = Recording(desired(ClusterModel.from_resource(body).config))
    fake = FakeBrokers()
    fake.in_sync()
    monkeypatch.setenv("KUBECONFIG", str(prepare_emulator(kmock, tmp_path)))
    options = parse_options([], {"METRICS_PORT": "0"})
    memo = kopf.Memo(metrics_port=0, probe=fake, configurer=configs, roll_interval=0.2)
    operator = OperatorThread(options.namespaces, memo)
    await operator.start()
    cluster = Cluster(kmock, operator.memo)
    try:
        tls = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "my-tls", "namespace": NS},
            "type": "kubernetes.io/tls",
            "data": {
                k: base64.b64encode(v.encode()).decode()
                for k, v in {"tls.crt": "CERT", "tls.key": "KEY", "ca.crt": CA}.items()
            },
        }
        resp = await cluster.k.post(f"/api/v1/namespaces/{NS}/secrets", json=tls)
        assert resp.status < 300, await resp.text()
        await cluster.create(body)
        secret = await eventually(lambda: cluster.get(SECRETS, "my-cluster-operator-credentials"))
        password = base64.b64decode(secret["data"]["password"]).decode()
        assert len(password) >= 43 and secret["immutable"] is True
        await eventually(lambda: cluster.get(STATEFULSETS, "my-cluster"))
        for i in range(3):
            await put_pod(cluster, i, "r1", ready=True)
        sts_status = f"/apis/apps/v1/namespaces/{NS}/statefulsets/my-cluster/status"
        await cluster.merge_patch(sts_status, {"status": ready_sts_status(3, "r1")})
        await eventually(lambda: fake.calls > 3)

        path = f"/apis/shazamq.io/v1alpha1/namespaces/{NS}/shazamqclusters/my-cluster"
        await cluster.merge_patch(path, {"spec": {"storage": {"retentionHours": 12}}})
        await eventually(lambda: len(configs.altered) == 3, timeout=15)
        assert {b for b, _ in configs.altered} == {0, 1, 2}
        conn = seen[-1]
        assert conn.tls and conn.ca_pem == CA and conn.protocol == "SASL_SSL"
        assert conn.login is not None
        assert (conn.login.mechanism, conn.login.user) == ("SCRAM-SHA-512", OPERATOR_USER)
        assert conn.login.password == password
        assert not any(gone(cluster, i) for i in range(3))

        # created once: a later reconciliation keeps the password the brokers know
        await cluster.merge_patch(path, {"spec": {"storage": {"retentionHours": 6}}})
        await eventually(lambda: len(configs.altered) == 6, timeout=15)
        again = cluster.get(SECRETS, "my-cluster-operator-credentials")
        assert again["data"]["password"] == secret["data"]["password"]
        assert seen[-1].login is not None and seen[-1].login.password == password
    finally:
        await operator.stop()
