"""Rotating the operator's own password on a cluster, with no moment it cannot log in.

Asked for as Strimzi users ask for a certificate renewal: annotate the operator's
credentials Secret (``kubectl annotate secret <name>-operator-credentials
shazamq.io/force-renew=true``). The roll loop then (`handlers.credentials_step`):

1. keeps the new password in a Secret of its own, ``<name>-operator-credentials-next``,
   created first, so an operator restarted halfway finishes the same rotation;
2. sets it as the SCRAM credential of its user through the Kafka API
   (AlterUserScramCredentials), logged in with the old one: the credential lives in the
   cluster metadata and replaces the old password on every broker at its next login
   (an API credential overrides the configured one for its mechanism);
3. once the brokers accept the new password, replaces ``<name>-operator-credentials``
   with it (a new Secret: it is immutable), which the brokers' pods read at their next
   start, so a restarted broker is configured with the password the metadata holds;
4. deletes the ``-next`` Secret.

The operator's admin calls all run in the roll loop, one after the other, so none falls
between 2 and 3. SCRAM only: PLAIN has no per-user credential the brokers can change
without a restart, so a rotation asked of a PLAIN cluster is refused with an event.

`rotation_requested()`, `next_secret()` and `scram_upsertion()` are pure.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping
from typing import Any

from shazamq.operator.admin import OPERATOR_USER

__all__ = [
    "FORCE_RENEW_ANNOTATION",
    "ITERATIONS",
    "ROTATED_ANNOTATION",
    "SCRAM_MECHANISM_TYPES",
    "ScramCredential",
    "next_secret",
    "next_secret_name",
    "password_of",
    "rotation_requested",
    "scram_upsertion",
]

FORCE_RENEW_ANNOTATION = "shazamq.io/force-renew"
ROTATED_ANNOTATION = "shazamq.io/rotated-at"  # on the replaced Secret: when
# Kafka's ScramMechanism ids (AlterUserScramCredentials)
SCRAM_MECHANISM_TYPES = {"SCRAM-SHA-256": 1, "SCRAM-SHA-512": 2}
ITERATIONS = 4096  # Kafka's minimum, as the brokers derive the configured users
# (mechanism type, salt, salted password, iterations), as AlterUserScramCredentials has it
ScramCredential = tuple[int, bytes, bytes, int]
_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}


def next_secret_name(operator_secret_name: str) -> str:
    return f"{operator_secret_name}-next"


def rotation_requested(secret: Mapping[str, Any] | None) -> bool:
    """Whether the credentials Secret carries ``shazamq.io/force-renew: "true"``."""
    annotations = ((secret or {}).get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(FORCE_RENEW_ANNOTATION, "")).lower() == "true"


def password_of(secret: Mapping[str, Any] | None) -> str | None:
    raw = ((secret or {}).get("data") or {}).get("password")
    if raw is None:
        return None
    try:
        return base64.b64decode(raw, validate=True).decode() or None
    except (ValueError, UnicodeDecodeError):
        return None


def next_secret(operator_secret: Mapping[str, Any], password: str | None = None) -> dict[str, Any]:
    """The ``-next`` Secret of a rotation: the operator's Secret's labels and owner, a new
    random password (or `password`)."""
    meta = operator_secret.get("metadata") or {}
    value = password or secrets.token_urlsafe(32)
    metadata: dict[str, Any] = {
        "name": next_secret_name(meta["name"]),
        "namespace": meta.get("namespace"),
        "labels": dict(meta.get("labels") or {}),
    }
    if meta.get("ownerReferences"):
        metadata["ownerReferences"] = list(meta["ownerReferences"])
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "data": {
            "username": base64.b64encode(OPERATOR_USER.encode()).decode(),
            "password": base64.b64encode(value.encode()).decode(),
        },
    }


def scram_upsertion(
    mechanism: str, password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS
) -> ScramCredential:
    """(mechanism type, salt, salted password, iterations) of a SCRAM credential, as
    AlterUserScramCredentials carries it (RFC 5802's SaltedPassword: PBKDF2 of the
    password). ValueError for a mechanism that is not SCRAM."""
    if mechanism not in _HASHES:
        raise ValueError(f"{mechanism} has no SCRAM credential to change")
    salt = salt if salt is not None else secrets.token_bytes(32)
    salted = hashlib.pbkdf2_hmac(_HASHES[mechanism], password.encode(), salt, iterations)
    return SCRAM_MECHANISM_TYPES[mechanism], salt, salted, iterations
