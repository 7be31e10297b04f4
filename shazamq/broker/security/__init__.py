"""Security of the Kafka listener: SASL authentication.

`sasl` holds the mechanisms and the credential store, with no I/O. This module is the one
place that reads credentials: `build_credential_store()` merges ``[security.sasl] users``
with the users file and derives every user's SCRAM credentials, so the passwords are not
kept once the broker has started.

The users file is the format the operator mounts from the cluster's auth Secret (key
``users.toml``)::

    [users]
    alice = "alice-secret"
    "svc.orders" = "another-secret"

Any other top-level key, a non-string password, a user defined both inline and in the file,
an empty name or password: the broker does not start, and the error names
``security.sasl.users_file`` (or ``security.sasl.users``).

Configured users versus credentials set through the Kafka APIs (AlterUserScramCredentials,
kept in the cluster metadata; see `shazamq.broker.apis.scram`), the chosen rule: the
configured users are a bootstrap source. At each login the metadata is asked first, per
user and mechanism, so an API-set credential overrides the configured password for that
mechanism only; deleting it through the API makes the configured password good again, if
the user has one. A configured user cannot be removed through the API (take it out of
the configuration). PLAIN checks the password against the SHA-256 credential from
whichever source wins. The users file is read at start-up; the metadata is read live, so
API changes apply on every broker at once, without a restart.

TLS needs nothing here: `shazamq.broker.app` builds the listener's `ssl.SSLContext`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from shazamq.config import ConfigError, SaslConfig

from .sasl import MECHANISMS, CredentialStore

__all__ = [
    "INTERNAL_USER",
    "MECHANISMS",
    "CredentialStore",
    "build_credential_store",
    "load_users_file",
]

USERS_FILE_KEY = "security.sasl.users_file"
USERS_KEY = "security.sasl.users"


def load_users_file(path: str | Path) -> dict[str, str]:
    """The ``[users]`` table of a users file; ConfigError naming the key if it is unusable."""
    where = f"{USERS_FILE_KEY} ({path})"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot be read: {exc}") from None
    try:
        tree = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    unknown = sorted(k for k in tree if k != "users")
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}; the file holds one [users] table of "
            'name = "password" entries'
        )
    users = tree.get("users")
    if not isinstance(users, dict):
        raise ConfigError(f'{where}: missing the [users] table of name = "password" entries')
    for name, password in users.items():
        if not isinstance(password, str):
            raise ConfigError(
                f"{where}: users.{name} must be a string (the password), "
                f"not {type(password).__name__}"
            )
    return dict(users)


# The principal brokers authenticate as to each other's listeners; its password is the
# cluster secret, so only brokers of the same cluster hold it.
INTERNAL_USER = "__shazamq_broker"


def build_credential_store(
    config: SaslConfig, cluster_secret: str | None = None
) -> CredentialStore:
    """The credential store of an enabled ``[security.sasl]`` section (slow: derives keys).

    In a cluster (`cluster_secret` given) it also holds the brokers' own principal.
    """
    users: dict[str, str] = dict(config.users)
    if INTERNAL_USER in users:
        raise ConfigError(f"{USERS_KEY}: {INTERNAL_USER} is reserved for the brokers")
    key = USERS_KEY
    if config.users_file:
        from_file = load_users_file(config.users_file)
        both = sorted(set(users) & set(from_file))
        if both:
            raise ConfigError(f"{USERS_FILE_KEY}: user {both[0]!r} is also defined in {USERS_KEY}")
        users.update(from_file)
        key = USERS_FILE_KEY if not config.users else f"{USERS_KEY} / {USERS_FILE_KEY}"
    if INTERNAL_USER in users:
        raise ConfigError(f"{key}: {INTERNAL_USER} is reserved for the brokers")
    if not users and any(m != "OAUTHBEARER" for m in config.mechanisms):
        raise ConfigError(f"{key}: SASL is enabled but no user is defined")
    if cluster_secret is not None:
        users[INTERNAL_USER] = cluster_secret
    try:
        store = CredentialStore.from_passwords(users, config.mechanisms)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    users.clear()
    return store
