"""The operator rotates its own password on a running SCRAM cluster of real brokers.

The operator runs against kmock's emulator; the test plays the kubelet
(`kubelet.KubeletLoop`, three brokers from the rendered StatefulSet, the users Secret and
the operator's credentials Secret as the pods get them). The operator's broker calls are
its own (`handlers.OperatorLogins`), with each pod's DNS name resolved to its address.

``kubectl annotate secret my-cluster-operator-credentials shazamq.io/force-renew=true``
asks for the rotation. Covers: all along, a password the operator holds in its Secrets
(``-operator-credentials``, and ``-operator-credentials-next`` while rotating) logs in to
every broker; afterwards the Secret holds a new password that every broker takes, the old
one is refused, the ``-next`` Secret is gone, the Secret says when it was rotated and no
longer asks for it, and events tell it; the users of the users file are untouched; a
broker restarted afterwards (configured from the new Secret) takes the new password too.
A PLAIN cluster's rotation is refused with an event, its Secret left as it was.
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import kmock
import kopf
import pytest
from kubelet import KubeletLoop, loopback_addresses, post_secret
from operator_support import ROOT, prepare_emulator, quick_start
from test_operator_reconcile import Cluster, OperatorThread, eventually

from shazamq.broker.cluster.client import SaslLogin
from shazamq.operator.__main__ import parse_options
from shazamq.operator.admin import OPERATOR_USER, Connection, can_log_in
from shazamq.operator.handlers import OperatorLogins
from shazamq.operator.rotation import (
    FORCE_RENEW_ANNOTATION,
    ROTATED_ANNOTATION,
    next_secret,
    next_secret_name,
    password_of,
    rotation_requested,
    scram_upsertion,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:kmock")

NS = "messaging"
NAME = "my-cluster"
SECRETS = "v1/secrets"
CREDENTIALS = f"{NAME}-operator-credentials"
MECHANISM = "SCRAM-SHA-512"


def login(user: str, password: str) -> Connection:
    return Connection(login=SaslLogin(MECHANISM, user, password))


class ResolvingLogins(OperatorLogins):
    """The operator's own calls, with each pod's DNS name resolved to its address."""

    def __init__(self, hosts: dict[str, str]) -> None:
        self.hosts = hosts

    async def works(self, connection: Connection, host: str, port: int) -> bool:
        return await super().works(connection, self.hosts[host], port)

    async def set(self, connection: Connection, host: str, port: int, credential: Any) -> None:
        await super().set(connection, self.hosts[host], port, credential)


# -- pure --------------------------------------------------------------------------------------


def test_the_annotation_asks_and_the_next_secret_keeps_the_new_password() -> None:
    secret = {"metadata": {"name": CREDENTIALS, "namespace": NS, "labels": {"a": "b"}}}
    assert not rotation_requested(secret) and not rotation_requested(None)
    secret["metadata"]["annotations"] = {FORCE_RENEW_ANNOTATION: "True"}
    assert rotation_requested(secret)
    nxt = next_secret(secret, "new-password")
    assert nxt["metadata"]["name"] == next_secret_name(CREDENTIALS) == f"{CREDENTIALS}-next"
    assert nxt["metadata"]["labels"] == {"a": "b"}
    assert password_of(nxt) == "new-password"
    assert base64.b64decode(nxt["data"]["username"]).decode() == OPERATOR_USER
    assert password_of(next_secret(secret)) != password_of(next_secret(secret))  # random
    assert password_of({"data": {"password": "%%%"}}) is None


def test_a_scram_credential_is_rfc_5802_salted_password() -> None:
    import hashlib

    kind, salt, salted, iterations = scram_upsertion(MECHANISM, "pw", salt=b"s" * 16)
    assert salt == b"s" * 16
    assert (kind, iterations) == (2, 4096)
    assert salted == hashlib.pbkdf2_hmac("sha512", b"pw", b"s" * 16, 4096)
    assert scram_upsertion("SCRAM-SHA-256", "pw")[0] == 1
    with pytest.raises(ValueError, match="PLAIN"):
        scram_upsertion("PLAIN", "pw")


# -- running -----------------------------------------------------------------------------------


async def test_a_plain_cluster_refuses_the_rotation(
    kmock: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = quick_start()
    body["spec"]["security"] = {"auth": {"enabled": True, "mechanism": "PLAIN", "secretName": "u"}}
    monkeypatch.setenv("KUBECONFIG", str(prepare_emulator(kmock, tmp_path)))
    options = parse_options([], {"METRICS_PORT": "0"})
    operator = OperatorThread(options.namespaces, kopf.Memo(metrics_port=0, roll_interval=0.2))
    await operator.start()
    cluster = Cluster(kmock, operator.memo)
    try:
        await cluster.create(body)
        secret = await eventually(lambda: cluster.get(SECRETS, CREDENTIALS))
        await cluster.merge_patch(
            f"/api/v1/namespaces/{NS}/secrets/{CREDENTIALS}",
            {"metadata": {"annotations": {FORCE_RENEW_ANNOTATION: "true"}}},
        )
        (event,) = await eventually(lambda: cluster.events("CredentialsRotationRefused"))
        assert "PLAIN" in event["message"] and event["type"] == "Warning"
        assert password_of(cluster.get(SECRETS, CREDENTIALS)) == password_of(secret)
        assert cluster.get(SECRETS, f"{CREDENTIALS}-next") is None
    finally:
        await operator.stop()


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(
    not (ROOT / "shazamq" / "broker" / "__main__.py").exists(),
    reason="the broker entry point is not written yet",
)
async def test_the_operator_rotates_its_password_without_a_gap(
    kmock: kmock.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    addresses = loopback_addresses(3, cluster=2)
    body = quick_start()
    body["spec"]["service"] = {"port": addresses[0].port, "metricsPort": addresses[0].metrics_port}
    body["spec"]["security"] = {
        "auth": {"enabled": True, "mechanism": MECHANISM, "secretName": "users"}
    }
    monkeypatch.setenv("KUBECONFIG", str(prepare_emulator(kmock, tmp_path)))
    options = parse_options([], {"METRICS_PORT": "0"})
    hosts = {f"{NAME}-{i}.{NAME}-headless.{NS}.svc": a.host for i, a in enumerate(addresses)}
    memo = kopf.Memo(metrics_port=0, roll_interval=0.3, logins=ResolvingLogins(hosts))
    operator = OperatorThread(options.namespaces, memo)
    await operator.start()
    cluster = Cluster(kmock, operator.memo)
    kubelet = KubeletLoop(
        kmock,
        name=NAME,
        namespace=NS,
        root=tmp_path / "nodes",
        addresses=addresses,
        voter_ids=[0, 1, 2],
    )
    gaps: list[str] = []
    rounds = [0]
    stop = asyncio.Event()

    def held() -> list[str]:
        """The passwords the operator holds in its Secrets, right now."""
        found = [password_of(cluster.get(SECRETS, n)) for n in (CREDENTIALS, f"{CREDENTIALS}-next")]
        return [p for p in found if p]

    async def logs_in(password: str, pod: Any) -> bool:
        return await can_log_in(login(OPERATOR_USER, password), pod.host, pod.port)

    async def watch() -> None:
        """Every moment, some password of the operator's Secrets logs in to every broker."""
        while not stop.is_set():
            for pod in kubelet.pods:
                if pod.ordinal in kubelet.down:
                    continue
                ok = False
                for _ in range(2):  # the Secrets may change while we try: read them again
                    if any([await logs_in(p, pod) for p in held()]):
                        ok = True
                        break
                if not ok and pod.ordinal not in kubelet.down:
                    gaps.append(f"{pod.name} at {time.monotonic():.1f}: none of {held()}")
            rounds[0] += 1
            await asyncio.sleep(0.1)

    watcher: asyncio.Task[None] | None = None
    try:
        await post_secret(kmock, NS, "users", {"users.toml": '[users]\nalice = "alice-password"\n'})
        await cluster.create(body)
        await kubelet.start()
        old = held()
        assert len(old) == 1
        (old_password,) = old

        async def everyone(password: str, user: str = OPERATOR_USER) -> list[bool]:
            return [await can_log_in(login(user, password), p.host, p.port) for p in kubelet.pods]

        deadline = time.monotonic() + 90
        while await everyone(old_password) != [True] * 3:
            kubelet.pods.check_alive("the operator's user to log in")
            assert time.monotonic() < deadline, kubelet.pods.tails()
            await asyncio.sleep(0.5)
        watcher = asyncio.create_task(watch())

        # kubectl annotate secret my-cluster-operator-credentials shazamq.io/force-renew=true
        await cluster.merge_patch(
            f"/api/v1/namespaces/{NS}/secrets/{CREDENTIALS}",
            {"metadata": {"annotations": {FORCE_RENEW_ANNOTATION: "true"}}},
        )

        def rotated() -> dict[str, Any] | None:
            secret = cluster.get(SECRETS, CREDENTIALS)
            if secret is None or cluster.get(SECRETS, f"{CREDENTIALS}-next") is not None:
                return None
            return secret if password_of(secret) != old_password else None

        deadline = time.monotonic() + 90
        while (secret := rotated()) is None:
            kubelet.pods.check_alive("the rotation")
            assert time.monotonic() < deadline, "the operator did not rotate its password"
            await asyncio.sleep(0.2)
        new_password = password_of(secret)
        assert new_password and new_password != old_password
        annotations = secret["metadata"].get("annotations") or {}
        assert ROTATED_ANNOTATION in annotations and FORCE_RENEW_ANNOTATION not in annotations
        assert secret["metadata"]["ownerReferences"][0]["name"] == NAME
        await asyncio.sleep(1.0)  # a few more rounds of the watcher after the switch
        stop.set()
        await watcher
        assert not gaps, gaps[:5]
        assert rounds[0] > 5, rounds  # the watcher did look, before and after the switch

        assert await everyone(new_password) == [True] * 3
        assert await everyone(old_password) == [False] * 3
        assert await everyone("alice-password", "alice") == [True] * 3
        reasons = {e.get("reason") for e in cluster.events("RotatingCredentials")}
        assert reasons == {"RotatingCredentials"}
        assert cluster.events("CredentialsRotated")

        # A broker restarted now is configured from the new Secret: same answer.
        await cluster.delete(f"/api/v1/namespaces/{NS}/pods/{NAME}-1")
        deadline = time.monotonic() + 90
        while kubelet.restarts[1] < 1 or kubelet.down:
            kubelet.pods.check_alive("broker 1's restart")
            assert not kubelet.errors, kubelet.errors
            assert time.monotonic() < deadline, kubelet.pods.tails()
            await asyncio.sleep(0.2)
        pod = kubelet.pods[1]
        assert await logs_in(new_password, pod)
        assert not await logs_in(old_password, pod)
    finally:
        stop.set()
        if watcher is not None:
            await watcher
        await kubelet.stop()
        await operator.stop()
