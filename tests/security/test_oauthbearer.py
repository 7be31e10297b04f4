"""SASL/OAUTHBEARER: KIP-255 framing, unsecured JWS and JWKS-verified tokens.

Unit: the client message (GS2 header, auth=Bearer, kvsep, extensions) and malformed ones;
the unsecured validator (alg none, empty signature, sub, exp, iat, scopes); the JWKS
validator with RS256 and ES256 keys (issuer, audience, expiry, a key of another set under
the same kid, alg none and HS256 refused, an unknown kid asking for a refetch); the
server's JSON error challenge and the client's \\x01 that ends it; the config's checks.

Broker processes: with the unsecured validator, confluent-kafka
(``enable.sasl.oauthbearer.unsecure.jwt``) and kafka-python log in as the token's
``sub``, which the ACLs then judge; with the JWKS validator (keys served over HTTP),
confluent-kafka's ``oauth_cb`` and kafka-python with signed tokens produce and consume, a
token of the wrong issuer gets the JSON error and then SASL_AUTHENTICATION_FAILED at the
wire, the session lifetime is cut to the token's, and a rotated key is fetched when a
token names it.
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from kafka_helpers import RawClient

from shazamq.broker.security.oauthbearer import (
    JwksKeys,
    JwksValidator,
    OAuthBearerServer,
    TokenError,
    UnsecuredValidator,
    parse_initial_response,
)
from shazamq.broker.security.sasl import AuthenticationError
from shazamq.config import ConfigError, parse_config
from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.sasl_authenticate_request import SaslAuthenticateRequest
from shazamq.protocol.messages.sasl_handshake_request import SaslHandshakeRequest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # kafka-python

ISSUER = "https://issuer.example"
AUDIENCE = "shazamq"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsecured(claims: dict[str, Any], header: dict[str, Any] | None = None, sig: str = "") -> str:
    head = b64(json.dumps(header or {"alg": "none"}).encode())
    return f"{head}.{b64(json.dumps(claims).encode())}.{sig}"


def message(token: str, authzid: str = "", extra: str = "") -> bytes:
    gs2 = f"n,a={authzid}," if authzid else "n,,"
    return f"{gs2}\x01auth=Bearer {token}\x01{extra}\x01".encode()


# -- framing --------------------------------------------------------------------------------


def test_client_message_parses() -> None:
    assert parse_initial_response(message("abc.def.")) == (None, "abc.def.", {})
    authzid, token, ext = parse_initial_response(message("t.o.k", "al=2Cice", "traceId=42\x01"))
    assert (authzid, token, ext) == ("al,ice", "t.o.k", {"traceId": "42"})


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"n,,auth=Bearer x\x01\x01",  # no kvsep after the GS2 header
        b"y,,\x01auth=Bearer x\x01\x01",  # channel binding
        b"p=tls-unique,,\x01auth=Bearer x\x01\x01",
        b"n,b=alice,\x01auth=Bearer x\x01\x01",
        b"n,,\x01auth=Bearer x\x01",  # one kvsep at the end
        b"n,,\x01\x01",  # no auth
        b"n,,\x01auth=Basic x\x01\x01",
        b"n,,\x01auth=Bearer \x01\x01",
        b"n,,\x01auth=Bearer x\x01auth=Bearer y\x01\x01",
        b"n,,\x01bad key=1\x01auth=Bearer x\x01\x01",
        b"n,,\x01k=\x00\x01auth=Bearer x\x01\x01",
        b"n,a=\xff,\x01auth=Bearer x\x01\x01",
    ],
)
def test_malformed_client_messages_are_refused(raw: bytes) -> None:
    with pytest.raises(AuthenticationError, match="invalid OAUTHBEARER message"):
        parse_initial_response(raw)


# -- the unsecured validator ----------------------------------------------------------------


def test_unsecured_tokens() -> None:
    now = 1_000_000.0
    v = UnsecuredValidator(clock=lambda: now, clock_skew_seconds=0, required_scopes=("kafka",))
    good = {"sub": "alice", "exp": now + 60, "iat": now, "scope": "kafka other"}
    token = v.validate(unsecured(good))
    assert (token.principal, token.expires_at) == ("alice", now + 60)
    assert v.validate(unsecured({**good, "scope": ["kafka"]})).principal == "alice"
    for claims, header, sig, why in (
        ({**good, "exp": now - 1}, None, "", "expired"),
        ({k: v for k, v in good.items() if k != "exp"}, None, "", "exp"),
        ({k: v for k, v in good.items() if k != "sub"}, None, "", "principal"),
        ({**good, "iat": now + 100}, None, "", "future"),
        (good, {"alg": "RS256"}, "", "alg none"),
        (good, None, "c2ln", "empty signature"),
    ):
        with pytest.raises(TokenError, match=why):
            v.validate(unsecured(claims, header, sig))
    with pytest.raises(TokenError) as info:
        v.validate(unsecured({**good, "scope": "other"}))
    assert info.value.status == "insufficient_scope"
    assert json.loads(info.value.response()) == {"status": "insufficient_scope", "scope": "kafka"}
    for bad in ("a.b", "!!.e30.", f"{b64(b'[]')}.{b64(b'{}')}."):
        with pytest.raises(TokenError):
            v.validate(bad)


def test_server_error_challenge_then_kvsep() -> None:
    v = UnsecuredValidator()
    server = OAuthBearerServer(v)
    challenge = server.step(message(unsecured({"sub": "alice", "exp": 1})))
    assert json.loads(challenge) == {"status": "invalid_token"}
    assert not server.complete
    with pytest.raises(AuthenticationError) as info:
        server.step(b"\x01")
    assert json.loads(str(info.value)) == {"status": "invalid_token"}
    # anything but the kvsep after the error is refused too
    server = OAuthBearerServer(v)
    server.step(message(unsecured({"sub": "alice", "exp": 1})))
    with pytest.raises(AuthenticationError, match="unexpected"):
        server.step(b"again")
    # success, and an authorization id that is not the principal
    ok = unsecured({"sub": "alice", "exp": time.time() + 60})
    server = OAuthBearerServer(v)
    assert server.step(message(ok, "alice")) == b""
    assert server.complete and server.username == "alice" and server.expires_at
    with pytest.raises(AuthenticationError, match="authorization id"):
        OAuthBearerServer(v).step(message(ok, "bob"))


# -- the JWKS validator ---------------------------------------------------------------------


class Issuer:
    """Signing keys and the JWKS that publishes them."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[Any, str]] = {}  # kid -> (private key, alg)
        self.add("rsa-1", rsa.generate_private_key(65537, 2048), "RS256")
        self.add("ec-1", ec.generate_private_key(ec.SECP256R1()), "ES256")

    def add(self, kid: str, key: Any, alg: str) -> None:
        self.keys[kid] = (key, alg)

    def jwks(self) -> str:
        out = []
        for kid, (key, alg) in self.keys.items():
            algo = jwt.get_algorithm_by_name(alg)
            jwk = json.loads(algo.to_jwk(key.public_key()))
            out.append({**jwk, "kid": kid, "use": "sig", "alg": alg})
        return json.dumps({"keys": out})

    def token(self, kid: str = "rsa-1", lifetime: float = 300, **claims: Any) -> str:
        key, alg = self.keys[kid]
        now = time.time()
        body = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + lifetime}
        body.update(claims)
        return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


def validator(issuer: Issuer) -> tuple[JwksValidator, JwksKeys]:
    keys = JwksKeys()
    assert keys.load(issuer.jwks()) == 2
    v = JwksValidator(
        keys,
        algorithms=("RS256", "PS256", "ES256"),
        issuer=ISSUER,
        audience=(AUDIENCE,),
        clock_skew_seconds=0,
    )
    return v, keys


def test_jwks_tokens(issuer: Issuer) -> None:
    v, keys = validator(issuer)
    assert v.validate(issuer.token("rsa-1")).principal == "alice"
    assert v.validate(issuer.token("ec-1", sub="svc")).principal == "svc"
    for token, why in (
        (issuer.token(iss="https://other.example"), "issuer"),
        (issuer.token(aud="someone-else"), "audience"),
        (issuer.token(lifetime=-10), "expired"),
        (unsecured({"sub": "alice", "exp": time.time() + 60}), "algorithm"),
        (
            jwt.encode({"sub": "a", "exp": time.time() + 60}, "k" * 32, "HS256", {"kid": "rsa-1"}),
            "algorithm",
        ),
        ("not-a-token", "compact"),
        (unsecured({"sub": "a"}, {"alg": "ES256", "kid": 7}, "c2ln"), "compact"),
        # the set says rsa-1 signs RS256: a PS256 token under it is refused
        (
            jwt.encode({"sub": "a"}, issuer.keys["rsa-1"][0], "PS256", {"kid": "rsa-1"}),
            "key is for",
        ),
    ):
        with pytest.raises(TokenError, match=why):
            v.validate(token)
    # a key of another issuer under a kid this set has: the signature does not verify
    forger = Issuer()
    with pytest.raises(TokenError, match="signature"):
        v.validate(forger.token("rsa-1"))
    # an unknown kid asks for the set to be fetched again
    asked: list[bool] = []
    keys.on_unknown_kid = lambda: asked.append(True)
    forger.add("rsa-2", rsa.generate_private_key(65537, 2048), "RS256")
    with pytest.raises(TokenError, match="unknown key id"):
        v.validate(forger.token("rsa-2"))
    assert asked == [True]


def test_jwks_documents_without_keys_are_refused() -> None:
    keys = JwksKeys()
    for doc, why in (
        ("nope", "not JSON"),
        ("{}", "keys"),
        ('{"keys": [{"kty": "oct", "k": "c2VjcmV0", "use": "enc"}]}', "no usable"),
    ):
        with pytest.raises(ValueError, match=why):
            keys.load(doc)


def test_config_checks() -> None:
    def load(sasl: dict[str, Any], **extra: Any) -> Any:
        return parse_config({"security": {"sasl": {"enabled": True, **sasl}}, **extra})

    with pytest.raises(ConfigError, match="OAUTHBEARER needs"):
        load({"mechanisms": ["OAUTHBEARER"]})
    with pytest.raises(ConfigError, match="jwks_url and jwks_file"):
        load({"mechanisms": ["OAUTHBEARER"], "oauthbearer": {}})
    with pytest.raises(ConfigError, match="jwks_url"):
        load({"mechanisms": ["OAUTHBEARER"], "oauthbearer": {"jwks_url": "file:///etc/x"}})
    with pytest.raises(ConfigError, match="algorithms"):
        load(
            {
                "mechanisms": ["OAUTHBEARER"],
                "oauthbearer": {"jwks_file": "/k.json", "algorithms": ["HS256"]},
            }
        )
    # brokers log in to each other with the cluster secret: a password mechanism is needed
    with pytest.raises(ConfigError, match="PLAIN or a SCRAM mechanism"):
        load(
            {"mechanisms": ["OAUTHBEARER"], "oauthbearer": {"validator": "unsecured"}},
            cluster={"voters": ["1@a:9093"], "secret": "s"},
        )
    # tokens alone need no users
    cfg = load({"mechanisms": ["OAUTHBEARER"], "oauthbearer": {"validator": "unsecured"}})
    assert cfg.security.sasl.oauthbearer.validator == "unsecured"


# -- broker processes -----------------------------------------------------------------------

USERS = {"admin": "admin-pw"}


def oauth_conf(broker, **extra: Any) -> dict[str, Any]:
    return {
        "bootstrap.servers": broker.bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "OAUTHBEARER",
        **extra,
    }


def unsecured_conf(broker, principal: str) -> dict[str, Any]:
    return oauth_conf(
        broker,
        **{
            "enable.sasl.oauthbearer.unsecure.jwt": True,
            "sasl.oauthbearer.config": f"principal={principal}",
        },
    )


def deliver(conf: dict[str, Any], topic: str, values: list[bytes]) -> KafkaError | None:
    errors: list[Any] = []
    p = Producer({**conf, "message.timeout.ms": 10000})
    for v in values:
        p.produce(topic, v, partition=0, on_delivery=lambda e, _m: errors.append(e))
    p.flush(15)
    assert len(errors) == len(values)
    return next((e for e in errors if e is not None), None)


def read(conf: dict[str, Any], topic: str, n: int) -> list[bytes]:
    c = Consumer({**conf, "group.id": "oauth-read", "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        got: list[bytes] = []
        deadline = time.monotonic() + 20
        while len(got) < n and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                got.append(m.value())
        return got
    finally:
        c.close()


class KafkaPythonToken:
    """kafka-python's token provider, built lazily (its base class is imported late)."""

    @staticmethod
    def of(token: str) -> Any:
        from kafka.net.sasl.oauth import AbstractTokenProvider

        class Provider(AbstractTokenProvider):
            def token(self) -> str:
                return token

        return Provider()


def kafka_python_round_trip(broker, token: str, topic: str) -> list[bytes]:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KpTopicPartition

    auth = {
        "bootstrap_servers": broker.bootstrap,
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "OAUTHBEARER",
        "sasl_oauth_token_provider": KafkaPythonToken.of(token),
    }
    producer = KafkaProducer(**auth)
    producer.send(topic, b"from-kafka-python", partition=0).get(timeout=20)
    producer.close(timeout=5)
    consumer = KafkaConsumer(**auth, enable_auto_commit=False)
    tp = KpTopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    got: list[bytes] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and b"from-kafka-python" not in got:
        for msgs in consumer.poll(timeout_ms=500).values():
            got += [m.value for m in msgs]
    consumer.close()
    return got


@pytest.fixture(scope="module")
def unsecured_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.conftest import BrokerProcess

    b = BrokerProcess(
        tmp_path_factory.mktemp("oauth-unsecured"),
        security__sasl__enabled=True,
        security__sasl__mechanisms='["OAUTHBEARER"]',
        security__sasl__oauthbearer='{"validator": "unsecured"}',
        security__authorization__enabled=True,
        security__authorization__super_users='["User:admin"]',
    ).start()
    yield b
    b.stop()


def test_unsecured_tokens_log_in_as_their_sub_and_acls_judge_it(unsecured_broker) -> None:
    admin_conf = unsecured_conf(unsecured_broker, "admin")
    admin = AdminClient(admin_conf)
    topic = f"oauth-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(15)
    alice = unsecured_conf(unsecured_broker, "alice")
    err = deliver(alice, topic, [b"denied"])
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    acls = [
        AclBinding(
            ResourceType.TOPIC,
            topic,
            ResourcePatternType.LITERAL,
            "User:alice",
            "*",
            op,
            AclPermissionType.ALLOW,
        )
        for op in (AclOperation.WRITE, AclOperation.READ)
    ]
    for f in admin.create_acls(acls).values():
        f.result(15)
    assert deliver(alice, topic, [b"a0", b"a1"]) is None
    assert read(alice, topic, 2) == [b"a0", b"a1"]
    # kafka-python sends its own unsecured token the same way
    token = unsecured({"sub": "alice", "exp": time.time() + 300, "iat": time.time()})
    assert kafka_python_round_trip(unsecured_broker, token, topic)[-1] == b"from-kafka-python"
    # bob's token: no ACL names him
    err = deliver(unsecured_conf(unsecured_broker, "bob"), topic, [b"x"])
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


class JwksServer:
    """The issuer's JWKS over HTTP on loopback; the document can be replaced."""

    def __init__(self, document: str) -> None:
        self.document = document
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = outer.document.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def jwks_broker(tmp_path_factory, issuer: Issuer) -> Iterator[tuple[Any, JwksServer]]:
    from tests.conftest import BrokerProcess

    server = JwksServer(issuer.jwks())
    oauth = {
        "jwks_url": server.url,
        "expected_issuer": ISSUER,
        "expected_audience": [AUDIENCE],
        "required_scopes": [],
    }
    b = BrokerProcess(
        tmp_path_factory.mktemp("oauth-jwks"),
        security__sasl__enabled=True,
        security__sasl__mechanisms='["OAUTHBEARER"]',
        security__sasl__oauthbearer=json.dumps(oauth),
        security__sasl__connections_max_reauth_ms=600_000,
    ).start()
    yield b, server
    b.stop()
    server.close()


def signed_conf(broker, issuer: Issuer, kid: str = "rsa-1", **claims: Any) -> dict[str, Any]:
    def oauth_cb(_config: str) -> tuple[str, float]:
        return issuer.token(kid, **claims), time.time() + 300

    return oauth_conf(broker, oauth_cb=oauth_cb)


def raw_authenticate(broker, token: str) -> tuple[RawClient, Any]:
    client = RawClient(broker.port)
    hs = client.request(SaslHandshakeRequest(mechanism="OAUTHBEARER"), 1)
    assert hs.error_code == 0 and "OAUTHBEARER" in hs.mechanisms
    return client, client.request(SaslAuthenticateRequest(auth_bytes=message(token)), 2)


def test_signed_tokens_with_confluent_and_kafka_python(jwks_broker, issuer: Issuer) -> None:
    broker, _ = jwks_broker
    conf = signed_conf(broker, issuer)
    topic = f"jwks-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(conf)
    admin.poll(1)  # serves the token callback
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(15)
    assert deliver(conf, topic, [b"s0", b"s1"]) is None
    assert read(signed_conf(broker, issuer, "ec-1"), topic, 2) == [b"s0", b"s1"]
    got = kafka_python_round_trip(broker, issuer.token("ec-1"), topic)
    assert got == [b"s0", b"s1", b"from-kafka-python"]


def test_a_refused_token_gets_kafkas_json_error_then_fails(jwks_broker, issuer: Issuer) -> None:
    broker, _ = jwks_broker
    client, resp = raw_authenticate(broker, issuer.token(iss="https://other.example"))
    try:
        assert resp.error_code == 0
        assert json.loads(bytes(resp.auth_bytes)) == {"status": "invalid_token"}
        final = client.request(SaslAuthenticateRequest(auth_bytes=b"\x01"), 2)
        assert final.error_code == ErrorCode.SASL_AUTHENTICATION_FAILED
        assert json.loads(final.error_message) == {"status": "invalid_token"}
    finally:
        client.close()
    # the client library sees an authentication failure
    p = Producer({**signed_conf(broker, issuer, aud="nobody"), "message.timeout.ms": 3000})
    errors: list[Any] = []
    p.produce("anything", b"x", on_delivery=lambda e, _m: errors.append(e))
    p.flush(10)
    assert errors and errors[0] is not None


def test_session_lifetime_is_the_tokens_if_shorter(jwks_broker, issuer: Issuer) -> None:
    broker, _ = jwks_broker
    client, resp = raw_authenticate(broker, issuer.token(lifetime=120))
    try:
        assert resp.error_code == 0 and bytes(resp.auth_bytes) == b""
        assert 0 < resp.session_lifetime_ms <= 120_000
    finally:
        client.close()
    client, resp = raw_authenticate(broker, issuer.token(lifetime=3600))
    try:
        assert resp.session_lifetime_ms == 600_000  # connections_max_reauth_ms
    finally:
        client.close()


def test_a_rotated_key_is_fetched_when_a_token_names_it(jwks_broker, issuer: Issuer) -> None:
    broker, server = jwks_broker
    rotated = Issuer()
    rotated.add("rsa-new", rsa.generate_private_key(65537, 2048), "RS256")
    server.document = rotated.jwks()
    token = rotated.token("rsa-new")
    deadline = time.monotonic() + 30
    while True:
        client, resp = raw_authenticate(broker, token)
        client.close()
        if resp.error_code == 0 and bytes(resp.auth_bytes) == b"":
            break
        assert time.monotonic() < deadline, "the rotated key was never fetched"
        time.sleep(0.5)
    # the old keys are gone with the old document
    client, resp = raw_authenticate(broker, issuer.token("rsa-1"))
    client.close()
    assert json.loads(bytes(resp.auth_bytes)) == {"status": "invalid_token"}
    server.document = issuer.jwks()  # put back for any later test


def test_an_unusable_jwks_file_stops_the_broker(broker_factory, tmp_path) -> None:
    (tmp_path / "jwks.json").write_text('{"keys": []}')
    oauth = {"jwks_file": str(tmp_path / "jwks.json")}
    with pytest.raises(RuntimeError, match="exited with 2"):
        broker_factory(
            security__sasl__enabled=True,
            security__sasl__mechanisms='["OAUTHBEARER"]',
            security__sasl__oauthbearer=json.dumps(oauth),
        )
    log = (tmp_path / "broker-0-broker.log").read_text()
    assert "security.sasl.oauthbearer.jwks_file" in log and "no usable signing key" in log
