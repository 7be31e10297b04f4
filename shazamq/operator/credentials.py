"""The operator's own connection to a cluster, from the cluster's Secrets: pure, no I/O.

A cluster with a plaintext listener needs nothing. With `security.tls` the operator
verifies the brokers against the CA of the listener's Secret: its ``ca.crt`` (what
cert-manager writes), else its ``tls.crt`` (a self-signed certificate is its own anchor).
With `security.auth` it logs in as its own user (`admin.OPERATOR_USER`, with the
cluster's mechanism) with the password of ``<name>-operator-credentials``, the Secret the
operator creates once per cluster (or that its owner created beforehand) and renders into
every broker's users. Those two Secrets are the only ones the operator reads.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from shazamq.broker.cluster.client import SaslLogin
from shazamq.operator.admin import OPERATOR_USER, PLAINTEXT, Connection

__all__ = ["CredentialsError", "connection_of", "secrets_needed"]

_CA_KEYS = ("ca.crt", "tls.crt")
_PASSWORD_KEY = "password"


class CredentialsError(Exception):
    """The operator cannot log in to the cluster; the message names the Secret and key."""


def secrets_needed(model: Any) -> tuple[str | None, str | None]:
    """(TLS Secret, operator credentials Secret) to read for `model`; None: not needed."""
    tls = model.spec.security.tls.secret_name if model.tls_enabled else None
    auth = model.operator_secret_name if model.auth_enabled else None
    return tls, auth


def _decoded(secret: Mapping[str, Any], key: str) -> str | None:
    raw = (secret.get("data") or {}).get(key)
    if raw is None:
        plain = (secret.get("stringData") or {}).get(key)
        return plain if isinstance(plain, str) else None
    try:
        return base64.b64decode(raw, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, TypeError):
        return None


def connection_of(
    model: Any,
    tls_secret: Mapping[str, Any] | None,
    operator_secret: Mapping[str, Any] | None,
) -> Connection:
    """How the operator connects to `model`'s listener, given the Secrets
    `secrets_needed()` names (None where a needed one does not exist)."""
    tls_name, auth_name = secrets_needed(model)
    if tls_name is None and auth_name is None:
        return PLAINTEXT
    ca: str | None = None
    if tls_name is not None:
        if tls_secret is None:
            raise CredentialsError(f"Secret {tls_name} (spec.security.tls.secretName) not found")
        ca = next((v for k in _CA_KEYS if (v := _decoded(tls_secret, k))), None)
        if not ca:
            raise CredentialsError(f"Secret {tls_name} has neither ca.crt nor tls.crt")
    login: SaslLogin | None = None
    if auth_name is not None:
        if operator_secret is None:
            raise CredentialsError(f"Secret {auth_name} (the operator's credentials) not found")
        password = _decoded(operator_secret, _PASSWORD_KEY)
        if not password:
            raise CredentialsError(f"Secret {auth_name} has no key {_PASSWORD_KEY}")
        login = SaslLogin(model.spec.security.auth.password_mechanism, OPERATOR_USER, password)
    return Connection(tls=tls_name is not None, ca_pem=ca, login=login)
