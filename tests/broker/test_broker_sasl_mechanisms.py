"""The SASL mechanisms and the credential store, without a broker.

Covers: SCRAM against the worked examples of RFC 7677 (SCRAM-SHA-256) and RFC 5802
(SHA-1, through the same code with the hash swapped); SCRAM-SHA-512 against an
independent client written here; escaped user names, authorization ids; every kind of
malformed client message (gs2 header, missing attributes, wrong nonce, bad base64, channel
binding, NUL, UTF-8, size) and unknown users failing cleanly with AuthenticationError and
nothing else, also for random bytes (hypothesis); PLAIN; the credential store (salts,
iterations, no plaintext kept); the users file loader and its ConfigErrors; the operator's
auth Secret format loading as the broker expects; a broker refusing to start on a bad
users file or an unreadable certificate, before it touches its data directory.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shazamq.broker.app import Broker
from shazamq.broker.security import build_credential_store, load_users_file
from shazamq.broker.security.sasl import (
    MIN_ITERATIONS,
    AuthenticationError,
    CredentialStore,
    PlainServer,
    ScramCredential,
    ScramServer,
)
from shazamq.config import ConfigError, SaslConfig, parse_config

# -- an independent SCRAM client (straight from RFC 5802 section 3) ----------------------------


class Client:
    def __init__(self, user: str, password: str, hash_name: str, gs2: str = "n,,") -> None:
        self.user, self.password, self.hash_name, self.gs2 = user, password, hash_name, gs2
        self.nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        name = user.replace("=", "=3D").replace(",", "=2C")
        self.first_bare = f"n={name},r={self.nonce}"

    def first(self) -> bytes:
        return (self.gs2 + self.first_bare).encode()

    def final(self, server_first: bytes, *, nonce: str | None = None) -> bytes:
        attrs = dict(a.split("=", 1) for a in server_first.decode().split(","))
        salted = hashlib.pbkdf2_hmac(
            self.hash_name, self.password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
        )
        client_key = hmac.new(salted, b"Client Key", self.hash_name).digest()
        stored_key = hashlib.new(self.hash_name, client_key).digest()
        binding = base64.b64encode(self.gs2.encode()).decode()
        without_proof = f"c={binding},r={nonce or attrs['r']}"
        self.auth_message = f"{self.first_bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.new(stored_key, self.auth_message, self.hash_name).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self.server_key = hmac.new(salted, b"Server Key", self.hash_name).digest()
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def expected_server_final(self) -> bytes:
        sig = hmac.new(self.server_key, self.auth_message, self.hash_name).digest()
        return b"v=" + base64.b64encode(sig)


USERS = {"alice": "alice-secret", "bob,=x": "bob-secret", "zoë": "pässword"}


@pytest.fixture(scope="module")
def store() -> CredentialStore:
    return CredentialStore.from_passwords(USERS, ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])


# -- RFC test vectors ---------------------------------------------------------------------------


def test_rfc7677_scram_sha256_example() -> None:
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    credential = ScramCredential.derive("sha256", "pencil", salt, 4096)
    store = CredentialStore(["SCRAM-SHA-256"], {"user": {"sha256": credential}})
    server = store.server("SCRAM-SHA-256", nonce=lambda: "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")

    server_first = server.step(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    assert server_first == (
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    assert not server.complete
    server_final = server.step(
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    assert server_final == b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    assert server.complete and server.username == "user"


def test_rfc5802_example_through_the_same_code_with_sha1() -> None:
    salt = base64.b64decode("QSXCR+Q6sek8bf92")
    credential = ScramCredential.derive("sha1", "pencil", salt, 4096)
    store = CredentialStore(["SCRAM-SHA-256"], {"user": {"sha1": credential}})
    server = ScramServer(store, "SCRAM-SHA-1", hash_name="sha1", nonce=lambda: "3rfcNHYJY1ZVvWVs7j")
    assert server.step(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL") == (
        b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
    )
    assert (
        server.step(
            b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
        )
        == b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ="
    )
    assert server.username == "user"


# -- full exchanges ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mechanism", "hash_name"), [("SCRAM-SHA-256", "sha256"), ("SCRAM-SHA-512", "sha512")]
)
@pytest.mark.parametrize("user", sorted(USERS))
def test_scram_exchange(store: CredentialStore, mechanism: str, hash_name: str, user: str) -> None:
    client = Client(user, USERS[user], hash_name)
    server = store.server(mechanism)
    server_first = server.step(client.first())
    assert server_first.startswith(f"r={client.nonce}".encode())
    assert f",i={MIN_ITERATIONS}".encode() in server_first
    assert server.step(client.final(server_first)) == client.expected_server_final()
    assert server.complete and server.username == user


def test_scram_gs2_y_flag_and_matching_authzid_are_accepted(store: CredentialStore) -> None:
    for gs2 in ("y,,", "n,a=alice,"):
        client = Client("alice", USERS["alice"], "sha256", gs2=gs2)
        server = store.server("SCRAM-SHA-256")
        server.step(client.first())
        server_first = server._server_first.encode()
        assert server.step(client.final(server_first)) == client.expected_server_final()


def test_scram_extensions_are_ignored(store: CredentialStore) -> None:
    client = Client("alice", USERS["alice"], "sha256")
    client.first_bare += ",foo=bar"
    server = store.server("SCRAM-SHA-256")
    server_first = server.step(client.first())
    server.step(client.final(server_first))
    assert server.complete


def _fails(server, *tokens: bytes) -> AuthenticationError:
    """Feed the tokens; the last one must fail with AuthenticationError (nothing else)."""
    for token in tokens[:-1]:
        server.step(token)
    with pytest.raises(AuthenticationError) as info:
        server.step(tokens[-1])
    assert str(info.value).startswith("Authentication failed")
    assert server.failed and not server.complete
    with pytest.raises(AuthenticationError):  # a failed exchange stays failed
        server.step(b"n,,n=alice,r=abc")
    return info.value


@pytest.mark.parametrize(
    ("client_first", "why"),
    [
        (b"", "expected gs2 header"),
        (b"n=alice,r=abc", "expected gs2 header"),
        (b"x,,n=alice,r=abc", "bad gs2 header flag"),
        (b"N,,n=alice,r=abc", "bad gs2 header flag"),
        (b"p=tls-unique,,n=alice,r=abc", "channel binding is not supported"),
        (b"n,alice,n=alice,r=abc", "bad gs2 header authzid"),
        (b"n,a=bob,n=alice,r=abc", "authorization id differs"),
        (b"n,,r=abc,n=alice", "missing user name"),
        (b"n,,n=alice,x=abc", "missing nonce"),
        (b"n,,n=alice", "expected gs2 header"),
        (b"n,,m=ext,n=alice,r=abc", "mandatory extension"),
        (b"n,,n=al=ice,r=abc", "bad saslname"),
        (b"n,,n=,r=abc", "bad saslname"),
        (b"n,,n=alice,r=", "bad nonce"),
        (b"n,,n=alice,r=ab c", "bad nonce"),
        (b"n,,n=alice,r=abc,=x", "bad attribute"),
        (b"n,,n=alice,r=abc,tokenauth=true", "delegation tokens"),
        (b"n,,n=alice,r=\xff\xfe", "not valid UTF-8"),
        (b"n,,n=ali\x00ce,r=abc", "NUL"),
        (b"n,,n=alice,r=" + b"a" * 20_000, "too long"),
    ],
)
def test_malformed_client_first(store: CredentialStore, client_first: bytes, why: str) -> None:
    error = _fails(store.server("SCRAM-SHA-256"), client_first)
    assert why in str(error)


def _final_variants(nonce: str, proof: str) -> list[tuple[str, str]]:
    return [
        (f"c=biws,r={nonce}", "missing proof"),
        (f"r={nonce},c=biws,p={proof}", "missing channel binding"),
        (f"c=biws,p={proof}", "missing nonce"),
        (f"c=biws,x={nonce},p={proof}", "missing nonce"),
        (f"c=biws,r={nonce}x,p={proof}", "nonce does not match"),
        (f"c=biws,r={nonce[:-1]},p={proof}", "nonce does not match"),
        (f"c=biws,r={nonce},p=!!notbase64!!", "proof is not base64"),
        (f"c=biws,r={nonce},p={proof[:-2]}", "proof is not base64"),
        (f"c=biws,r={nonce},p=", "proof is not"),
        (f"c=biws,r={nonce},p={base64.b64encode(b'short').decode()}", "proof is not 32 bytes"),
        (f"c=bi*s,r={nonce},p={proof}", "channel binding is not base64"),
        (f"c=eSws,r={nonce},p={proof}", "channel binding does not match"),
        (f"c=biws,r={nonce},,p={proof}", "bad attribute"),
    ]


def test_malformed_client_final(store: CredentialStore) -> None:
    probe = Client("alice", USERS["alice"], "sha256")
    server = store.server("SCRAM-SHA-256")
    good = probe.final(server.step(probe.first())).decode()
    nonce = good.split(",")[1][2:]
    proof = good.rsplit(",p=", 1)[1]
    for final, why in _final_variants(nonce, proof):
        client = Client("alice", USERS["alice"], "sha256")
        server = store.server("SCRAM-SHA-256")
        server_first = server.step(client.first())
        real = client.final(server_first).decode()
        real_nonce, real_proof = real.split(",")[1][2:], real.rsplit(",p=", 1)[1]
        message = final.replace(nonce, real_nonce).replace(proof, real_proof)
        error = _fails(server, message.encode())
        assert why in str(error), (final, str(error))


def test_wrong_password_and_unknown_user_fail_alike(store: CredentialStore) -> None:
    errors = []
    firsts = []
    for user, password in (("alice", "wrong"), ("mallory", "anything"), ("mallory", "other")):
        client = Client(user, password, "sha512")
        server = store.server("SCRAM-SHA-512")
        server_first = server.step(client.first())
        firsts.append(server_first)
        errors.append(_fails(server, client.final(server_first)))
    assert len({str(e) for e in errors}) == 1  # the client cannot tell them apart
    assert "invalid credentials" in str(errors[0])
    assert "unknown user 'mallory'" in errors[1].detail
    assert "wrong proof for user 'alice'" in errors[0].detail
    # an unknown user gets a stable salt, like a real one would
    salt = [dict(a.split("=", 1) for a in f.decode().split(","))["s"] for f in firsts]
    assert salt[1] == salt[2]


def test_nothing_after_a_completed_exchange(store: CredentialStore) -> None:
    client = Client("alice", USERS["alice"], "sha256")
    server = store.server("SCRAM-SHA-256")
    server.step(client.final(server.step(client.first())))
    assert server.complete
    with pytest.raises(AuthenticationError, match="after the exchange ended"):
        server.step(b"c=biws")


@settings(max_examples=300, deadline=None)
@given(first=st.binary(max_size=200), final=st.binary(max_size=200))
def test_random_bytes_only_ever_fail_cleanly(store: CredentialStore, first, final) -> None:
    for mechanism in ("SCRAM-SHA-256", "PLAIN"):
        server = store.server(mechanism)
        for token in (first, final):
            try:
                server.step(token)
            except AuthenticationError:
                break
        assert not server.complete


@settings(max_examples=200, deadline=None)
@given(tail=st.text(max_size=80))
def test_random_client_final_after_a_valid_first(store: CredentialStore, tail: str) -> None:
    server = store.server("SCRAM-SHA-256")
    server_first = server.step(b"n,,n=alice,r=abcdef").decode()
    nonce = server_first.split(",")[0][2:]
    with pytest.raises(AuthenticationError):
        server.step(f"c=biws,r={nonce}{tail}".encode())


# -- PLAIN --------------------------------------------------------------------------------------


def test_plain(store: CredentialStore) -> None:
    for user, password in USERS.items():
        for authzid in ("", user):
            server = store.server("PLAIN")
            assert isinstance(server, PlainServer) and server.blocking
            assert server.step(f"{authzid}\0{user}\0{password}".encode()) == b""
            assert server.complete and server.username == user


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (b"\0alice\0wrong", "invalid credentials"),
        (b"\0mallory\0alice-secret", "invalid credentials"),
        (b"bob\0alice\0alice-secret", "authorization id differs"),
        (b"alice\0alice-secret", "authzid NUL authcid NUL passwd"),
        (b"\0alice\0alice-secret\0", "authzid NUL authcid NUL passwd"),
        (b"", "authzid NUL authcid NUL passwd"),
        (b"\0\0alice-secret", "empty user name or password"),
        (b"\0alice\0", "empty user name or password"),
        (b"\0alice\0\xff", "not valid UTF-8"),
    ],
)
def test_plain_failures(store: CredentialStore, token: bytes, why: str) -> None:
    error = _fails(store.server("PLAIN"), token)
    assert why in str(error)


# -- the credential store -----------------------------------------------------------------------


def test_store_keeps_derived_keys_only(store: CredentialStore) -> None:
    seen = []
    for user in USERS:
        for hash_name in ("sha256", "sha512"):
            cred = store.credential(user, hash_name)
            assert cred is not None and cred.iterations == MIN_ITERATIONS
            assert cred.matches(USERS[user]) and not cred.matches(USERS[user] + "x")
            seen.append(cred.salt)
            for value in (cred.salt, cred.stored_key, cred.server_key):
                assert USERS[user].encode() not in value
            assert "secret" not in repr(cred)
    assert len(set(seen)) == len(seen)  # a fresh salt per user and hash
    assert store.credential("mallory", "sha256") is None
    assert store.users == sorted(USERS)


def test_store_derives_only_what_the_mechanisms_need() -> None:
    only_512 = CredentialStore.from_passwords({"a": "pw"}, ["SCRAM-SHA-512"])
    assert only_512.credential("a", "sha512") is not None
    assert only_512.credential("a", "sha256") is None
    plain = CredentialStore.from_passwords({"a": "pw"}, ["PLAIN"])
    assert plain.credential("a", "sha256") is not None
    with pytest.raises(ValueError, match="not enabled"):
        plain.server("SCRAM-SHA-256")


@pytest.mark.parametrize(
    ("users", "kwargs", "why"),
    [
        ({"a": "pw"}, {"iterations": 4095}, "at least 4096"),
        ({"": "pw"}, {}, "empty"),
        ({"a": ""}, {}, "user 'a': the password is empty"),
        ({"a\0b": "pw"}, {}, "NUL"),
        ({"a": "p\0w"}, {}, "NUL"),
    ],
)
def test_store_refuses_unusable_users(users, kwargs, why) -> None:
    with pytest.raises(ValueError, match=why):
        CredentialStore.from_passwords(users, ["PLAIN"], **kwargs)
    with pytest.raises(ValueError, match="unsupported"):
        CredentialStore.from_passwords({"a": "pw"}, ["GSSAPI"])


# -- the users file -----------------------------------------------------------------------------


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "users.toml"
    path.write_text(text)
    return path


def test_users_file_and_inline_users_merge(tmp_path: Path) -> None:
    path = _write(tmp_path, '[users]\nalice = "a-secret"\n"svc.orders" = "o-secret"\n')
    assert load_users_file(path) == {"alice": "a-secret", "svc.orders": "o-secret"}
    config = SaslConfig(
        enabled=True,
        mechanisms=("SCRAM-SHA-256",),
        users={"carol": "c-secret"},
        users_file=str(path),
    )
    store = build_credential_store(config)
    assert store.users == ["alice", "carol", "svc.orders"]
    assert store.credential("carol", "sha256").matches("c-secret")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (None, "file not found"),
        ("[users\nalice = 1", "not valid TOML"),
        ('alice = "x"\n', "unknown key 'alice'"),
        ('[people]\nalice = "x"\n', "unknown key 'people'"),
        ("", "missing the [users] table"),
        ('users = "alice"\n', "missing the [users] table"),
        ("[users]\nalice = 42\n", "users.alice must be a string"),
        ('[users]\nalice = ""\n', "the password is empty"),
        ("[users]\n", "no user is defined"),
        ('[users]\ncarol = "again"\n', "'carol' is also defined in security.sasl.users"),
    ],
)
def test_bad_users_files_name_the_key(tmp_path: Path, text: str | None, why: str) -> None:
    path = tmp_path / "users.toml" if text is None else _write(tmp_path, text)
    users = {"carol": "c"} if "carol" in (text or "") else {}
    config = SaslConfig(enabled=True, users=users, users_file=str(path))
    with pytest.raises(ConfigError, match=r"security\.sasl\.users") as info:
        build_credential_store(config)
    assert why in str(info.value)


def test_the_operator_s_auth_secret_loads_as_the_broker_expects(tmp_path: Path) -> None:
    """The production example's auth Secret (key users.toml) holds what the broker reads."""
    import yaml

    from shazamq.operator.resources import AUTH_DIR, ClusterModel

    example = Path(__file__).resolve().parents[2] / "examples" / "production-cluster.yaml"
    body = yaml.safe_load(example.read_text())
    body["metadata"]["uid"] = "8f7c5e0e-0000-4000-8000-000000000001"
    model = ClusterModel.from_resource(body)
    sasl = model.config.security.sasl
    assert sasl.enabled and sasl.users_file == f"{AUTH_DIR}/users.toml"
    volumes = model.generate_statefulset()["spec"]["template"]["spec"]["volumes"]
    assert {"name": "auth", "secret": {"secretName": "shazamq-users"}} in volumes
    # The Secret's users.toml, as the example's comment tells users to write it:
    path = _write(tmp_path, '[users]\nalice = "secret"\n')
    local = SaslConfig(enabled=True, mechanisms=sasl.mechanisms, users_file=str(path))
    store = build_credential_store(local)
    client = Client("alice", "secret", "sha512")
    server = store.server("SCRAM-SHA-512")
    server.step(client.final(server.step(client.first())))
    assert server.complete


def test_broker_does_not_start_with_a_missing_users_file(tmp_path: Path) -> None:
    config = parse_config(
        {
            "broker": {"data_dir": str(tmp_path / "data"), "port": 1},
            "security": {
                "sasl": {"enabled": True, "users_file": str(tmp_path / "nope.toml")},
            },
        }
    )
    with pytest.raises(ConfigError, match=r"security\.sasl\.users_file .*file not found"):
        asyncio.run(Broker(config).start())
    assert not (tmp_path / "data").exists()  # refused before touching anything


def test_broker_does_not_start_with_an_unreadable_certificate(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate")
    config = parse_config(
        {
            "broker": {"data_dir": str(tmp_path / "data"), "port": 1},
            "security": {
                "tls": {
                    "enabled": True,
                    "cert_file": str(tmp_path / "cert.pem"),
                    "key_file": str(tmp_path / "key.pem"),
                },
            },
        }
    )
    with pytest.raises(ConfigError, match=r"security\.tls\.cert_file .*cannot be loaded"):
        asyncio.run(Broker(config).start())
    assert not (tmp_path / "data").exists()
