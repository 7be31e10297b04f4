"""The broker's SASL client against the broker's own SASL server, sans I/O."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shazamq.broker.security.sasl import AuthenticationError, CredentialStore
from shazamq.broker.security.sasl_client import SaslClient

MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
STORE = CredentialStore.from_passwords({"__shazamq_broker": "s3cret", "a=b,c": "pw"}, MECHANISMS)


def exchange(mechanism: str, user: str, password: str) -> None:
    client = SaslClient(mechanism, user, password)
    server = STORE.server(mechanism)
    token = server.step(client.first())
    while True:
        reply = client.step(token)
        if reply is None:
            return
        token = server.step(reply)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_authenticates_and_verifies_the_server(mechanism: str) -> None:
    exchange(mechanism, "__shazamq_broker", "s3cret")
    exchange(mechanism, "a=b,c", "pw")  # names with SCRAM's escaped characters


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_wrong_password_is_refused(mechanism: str) -> None:
    with pytest.raises(AuthenticationError):
        exchange(mechanism, "__shazamq_broker", "guess")


def test_an_impostor_server_is_detected() -> None:
    client = SaslClient("SCRAM-SHA-512", "__shazamq_broker", "s3cret")
    other = CredentialStore.from_passwords({"__shazamq_broker": "other"}, MECHANISMS)
    server = other.server("SCRAM-SHA-512")
    final = client.step(server.step(client.first()))
    assert final is not None
    # the impostor cannot verify our proof; a forged "v=" must not satisfy us either
    with pytest.raises(AuthenticationError):
        client.step(b"v=" + b"A" * 88)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_malformed_server_tokens_raise_authentication_error(token: bytes) -> None:
    client = SaslClient("SCRAM-SHA-256", "u", "p", nonce="abc")
    client.first()
    with contextlib.suppress(AuthenticationError):
        client.step(token)


def test_iteration_bomb_is_refused() -> None:
    client = SaslClient("SCRAM-SHA-256", "u", "p", nonce="abc")
    client.first()
    with pytest.raises(AuthenticationError):
        client.step(b"r=abcdef,s=c2FsdA==,i=100000000")
