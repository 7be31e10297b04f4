"""SASL mechanisms of the Kafka listener, sans I/O: PLAIN and SCRAM-SHA-256/512.

Nothing here touches a socket or a file. A `CredentialStore` is built once from the
configured ``name -> password`` pairs; each connection that completes a SaslHandshake gets
a fresh `SaslServer` from `CredentialStore.server()` and feeds it the client's tokens, one
per SaslAuthenticate request, with `SaslServer.step()`. `step()` returns the token to send
back or raises `AuthenticationError`; once `complete` is true, `username` is the
authenticated user.

PLAIN (RFC 4616): one token, ``[authzid] NUL authcid NUL passwd``. An authorization id,
when given, must equal the user name (as in Kafka).

SCRAM (RFC 5802, with SHA-256 from RFC 7677 and SHA-512 as Kafka registers it), as Kafka
speaks it:

- client-first ``n,,n=<user>,r=<client nonce>[,ext=value...]``: gs2 header ``n`` or ``y``
  (no channel binding; ``p=`` is refused), an optional ``a=<authzid>`` that must equal the
  user, no ``m=`` mandatory extension, extensions otherwise ignored except Kafka's
  ``tokenauth=true`` (delegation tokens), which is refused;
- server-first ``r=<client nonce><server nonce>,s=<salt>,i=<iterations>``;
- client-final ``c=<base64 gs2 header>,r=<nonce>,p=<proof>``: the channel-binding value
  must be the gs2 header the client sent, the nonce the combined one;
- server-final ``v=<server signature>``.

User names travel as ``saslname`` (``=2C`` for a comma, ``=3D`` for an equals sign).
Passwords are used as their UTF-8 bytes without SASLprep, like Kafka and librdkafka.

Credentials: for each user and hash, only the salt, the iteration count, StoredKey and
ServerKey are kept (RFC 5802 section 3); the passwords themselves are dropped once those
are derived. PLAIN is checked by deriving StoredKey from the offered password with the
user's SHA-256 salt and comparing. Proofs and keys are compared with
`hmac.compare_digest`.

Two sources of credentials: the ones the store was built with (the configured users, a
bootstrap source), and a lookup attached later with `CredentialStore.attach()` that reads
the credentials set through AlterUserScramCredentials from the cluster metadata at the
moment of each login. The lookup is asked first, per user and hash: an API-set credential
overrides the configured one for that mechanism, and once it is deleted the configured
one (if any) applies again. PLAIN uses the SHA-256 credential from whichever source wins.

An unknown user is not revealed: SCRAM answers with a salt derived from the name and a
key no password matches, so the exchange fails at the proof exactly as a wrong password
does; PLAIN spends the same key derivation on a decoy. Error messages sent to the client
say what was malformed in its own message, never whether a user exists.
"""

from __future__ import annotations

import abc
import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_ITERATIONS",
    "MECHANISMS",
    "MIN_ITERATIONS",
    "SCRAM_MECHANISM_TYPES",
    "AuthenticationError",
    "CredentialLookup",
    "CredentialStore",
    "PlainServer",
    "SaslServer",
    "ScramCredential",
    "ScramServer",
]

MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
# OAUTHBEARER checks tokens, not passwords (security.oauthbearer); its validator is attached
OAUTHBEARER = "OAUTHBEARER"
SCRAM_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
# RFC 7677 asks for at least 4096 iterations; Kafka's minimum for both SCRAM mechanisms.
MIN_ITERATIONS = 4096
# Kafka's maximum for credentials set through AlterUserScramCredentials: every login
# costs the client that many HMACs, and the broker as many for PLAIN.
MAX_ITERATIONS = 16384
# The mechanism numbers of DescribeUserScramCredentials / AlterUserScramCredentials.
SCRAM_MECHANISM_TYPES = {1: "SCRAM-SHA-256", 2: "SCRAM-SHA-512"}
SALT_BYTES = 24
NONCE_BYTES = 24
# No SASL token of these mechanisms comes near this; anything longer is refused unparsed.
MAX_TOKEN_BYTES = 16 * 1024
# The hash whose credential checks PLAIN passwords.
_PLAIN_HASH = "sha256"

_SASLNAME = re.compile(r"(?:[^=,]|=2C|=3D)+")
_NONCE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
_EXTENSION = re.compile(r"[A-Za-z]+=[^,]+")
_ESCAPES = {"=2C": ",", "=3D": "="}


class AuthenticationError(Exception):
    """The exchange failed.

    ``str(exc)`` is meant for the client (SaslAuthenticate's error message) and says
    nothing about which users exist; ``detail`` adds what only the broker's log should see.
    """

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail or message


@dataclass(frozen=True, slots=True, repr=False)
class ScramCredential:
    """What a server keeps of one password for one hash (RFC 5802 section 3)."""

    hash_name: str
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def derive(
        cls, hash_name: str, password: str | bytes, salt: bytes, iterations: int
    ) -> ScramCredential:
        salted = _salted_password(hash_name, password, salt, iterations)
        return cls.from_salted_password(hash_name, salted, salt, iterations)

    @classmethod
    def from_salted_password(
        cls, hash_name: str, salted_password: bytes, salt: bytes, iterations: int
    ) -> ScramCredential:
        """The keys of a SaltedPassword (what AlterUserScramCredentials sends, not the password)."""
        client_key = hmac.digest(salted_password, b"Client Key", hash_name)
        return cls(
            hash_name=hash_name,
            salt=salt,
            iterations=iterations,
            stored_key=hashlib.new(hash_name, client_key).digest(),
            server_key=hmac.digest(salted_password, b"Server Key", hash_name),
        )

    def matches(self, password: str | bytes) -> bool:
        """Whether `password` is the one this credential was derived from (constant time)."""
        salted = _salted_password(self.hash_name, password, self.salt, self.iterations)
        client_key = hmac.digest(salted, b"Client Key", self.hash_name)
        stored_key = hashlib.new(self.hash_name, client_key).digest()
        return hmac.compare_digest(stored_key, self.stored_key)

    def __repr__(self) -> str:  # keys stay out of logs and tracebacks
        return f"ScramCredential({self.hash_name}, iterations={self.iterations})"


def _shown(user: str) -> str:
    """A user name as the log shows it: quoted, escaped, at most 64 characters."""
    return repr(user[:64]) + ("..." if len(user) > 64 else "")


def _salted_password(hash_name: str, password: str | bytes, salt: bytes, iterations: int) -> bytes:
    raw = password.encode() if isinstance(password, str) else password
    return hashlib.pbkdf2_hmac(hash_name, raw, salt, iterations)


# (user, hash name) -> the credential kept elsewhere, or None to fall back to the store's own
CredentialLookup = Callable[[str, str], "ScramCredential | None"]


class CredentialStore:
    """The users a broker accepts, as SCRAM credentials, for the enabled mechanisms."""

    def __init__(
        self,
        mechanisms: Iterable[str],
        credentials: Mapping[str, Mapping[str, ScramCredential]],
        *,
        iterations: int = MIN_ITERATIONS,
    ) -> None:
        self.mechanisms = tuple(mechanisms)
        unknown = [m for m in self.mechanisms if m not in MECHANISMS]
        if unknown:
            raise ValueError(f"unsupported SASL mechanism(s): {', '.join(unknown)}")
        if iterations < MIN_ITERATIONS:
            raise ValueError(f"SCRAM iterations must be at least {MIN_ITERATIONS}")
        self.iterations = iterations
        # user -> hash name -> credential
        self._credentials = {user: dict(by_hash) for user, by_hash in credentials.items()}
        self._decoy_key = secrets.token_bytes(32)
        self._lookup: CredentialLookup | None = None
        self.oauthbearer: Any = None  # the token validator, with OAUTHBEARER enabled

    @classmethod
    def from_passwords(
        cls,
        users: Mapping[str, str],
        mechanisms: Iterable[str],
        *,
        iterations: int = MIN_ITERATIONS,
        salt: Callable[[], bytes] = lambda: secrets.token_bytes(SALT_BYTES),
    ) -> CredentialStore:
        """Derive every user's credentials (a fresh random salt per user and hash).

        Raises ValueError naming the user whose name or password cannot be used.
        """
        mechanisms = tuple(mechanisms)
        if iterations < MIN_ITERATIONS:
            raise ValueError(f"SCRAM iterations must be at least {MIN_ITERATIONS}")
        hashes = required_hashes(mechanisms)
        credentials: dict[str, dict[str, ScramCredential]] = {}
        for user, password in users.items():
            check_user(user, password)
            credentials[user] = {
                h: ScramCredential.derive(h, password, salt(), iterations) for h in hashes
            }
        return cls(mechanisms, credentials, iterations=iterations)

    @property
    def users(self) -> list[str]:
        return sorted(self._credentials)

    def __len__(self) -> int:
        return len(self._credentials)

    def attach(self, lookup: CredentialLookup) -> None:
        """Consult `lookup` (the credentials kept in the cluster metadata) before our own."""
        self._lookup = lookup

    def credential(self, user: str, hash_name: str) -> ScramCredential | None:
        """The user's credential for a hash: the attached lookup's, else the configured one.

        Called at each login (PLAIN's from a worker thread), so a credential set or deleted
        through the Kafka APIs applies to the next login without a restart.
        """
        if self._lookup is not None:
            found = self._lookup(user, hash_name)
            if found is not None:
                return found
        return self._credentials.get(user, {}).get(hash_name)

    def decoy(self, user: str, hash_name: str) -> ScramCredential:
        """A credential for a user that does not exist: stable salt, unmatchable keys."""
        salt = hmac.digest(self._decoy_key, user.encode(), "sha256")[:SALT_BYTES]
        size = hashlib.new(hash_name).digest_size
        return ScramCredential(
            hash_name=hash_name,
            salt=salt,
            iterations=self.iterations,
            stored_key=secrets.token_bytes(size),
            server_key=secrets.token_bytes(size),
        )

    def server(self, mechanism: str, *, nonce: Callable[[], str] | None = None) -> SaslServer:
        """A fresh server side of one exchange for an enabled mechanism."""
        if mechanism not in self.mechanisms:
            raise ValueError(f"SASL mechanism {mechanism} is not enabled")
        if mechanism == "PLAIN":
            return PlainServer(self)
        if mechanism == OAUTHBEARER:
            from .oauthbearer import OAuthBearerServer

            assert self.oauthbearer is not None, "OAUTHBEARER is enabled without a validator"
            return OAuthBearerServer(self.oauthbearer)
        return ScramServer(self, mechanism, nonce=nonce)


def required_hashes(mechanisms: Iterable[str]) -> tuple[str, ...]:
    """The hashes whose credentials the mechanisms need (PLAIN checks against SHA-256)."""
    hashes: list[str] = []
    for m in mechanisms:
        if m == OAUTHBEARER:
            continue
        h = _PLAIN_HASH if m == "PLAIN" else SCRAM_HASHES.get(m)
        if h is None:
            raise ValueError(f"unsupported SASL mechanism: {m}")
        if h not in hashes:
            hashes.append(h)
    return tuple(hashes)


def check_user(user: str, password: str) -> None:
    """Refuse a user no mechanism could carry (PLAIN separates fields with NUL)."""
    if not isinstance(user, str) or not user:
        raise ValueError("a user name is empty")
    if "\0" in user:
        raise ValueError(f"user {user!r}: the name contains a NUL character")
    if not isinstance(password, str):
        raise ValueError(f"user {user!r}: the password is not a string")
    if not password:
        raise ValueError(f"user {user!r}: the password is empty")
    if "\0" in password:
        raise ValueError(f"user {user!r}: the password contains a NUL character")


# -- the mechanisms --------------------------------------------------------------------------


class SaslServer(abc.ABC):
    """The server side of one SASL exchange."""

    mechanism: str
    # Whether step() runs a key derivation (milliseconds of CPU): run it off the event loop.
    blocking: bool = False

    def __init__(self) -> None:
        self.complete = False
        self.failed = False
        self.username: str | None = None

    def step(self, token: bytes) -> bytes:
        """Consume the client's next token; return the server's answer (may be empty)."""
        if self.complete or self.failed:
            self.failed = True
            raise AuthenticationError(
                f"Authentication failed: unexpected {self.mechanism} message after the "
                "exchange ended"
            )
        if len(token) > MAX_TOKEN_BYTES:
            self.failed = True
            raise AuthenticationError(
                f"Authentication failed: {self.mechanism} message of {len(token)} bytes is too long"
            )
        try:
            return self._step(bytes(token))
        except AuthenticationError:
            self.failed = True
            raise

    @abc.abstractmethod
    def _step(self, token: bytes) -> bytes: ...

    def _invalid_credentials(self, detail: str) -> AuthenticationError:
        return AuthenticationError(
            "Authentication failed: invalid credentials with SASL mechanism " + self.mechanism,
            detail,
        )


class PlainServer(SaslServer):
    """SASL PLAIN (RFC 4616): one message, user name and password in the clear."""

    mechanism = "PLAIN"
    blocking = True

    def __init__(self, store: CredentialStore) -> None:
        super().__init__()
        self._store = store

    def _step(self, token: bytes) -> bytes:
        try:
            text = token.decode("utf-8")
        except UnicodeDecodeError:
            raise AuthenticationError(
                "Authentication failed: PLAIN message is not valid UTF-8"
            ) from None
        parts = text.split("\0")
        if len(parts) != 3:
            raise AuthenticationError(
                "Authentication failed: PLAIN message must be authzid NUL authcid NUL passwd"
            )
        authzid, user, password = parts
        if not user or not password:
            raise AuthenticationError(
                "Authentication failed: PLAIN message has an empty user name or password"
            )
        credential = self._store.credential(user, _PLAIN_HASH)
        if credential is None:
            self._store.decoy(user, _PLAIN_HASH).matches(password)  # same work, no answer
            raise self._invalid_credentials(f"unknown user {_shown(user)}")
        if not credential.matches(password):
            raise self._invalid_credentials(f"wrong password for user {_shown(user)}")
        if authzid and authzid != user:
            raise AuthenticationError(
                "Authentication failed: the authorization id differs from the user name"
            )
        self.username = user
        self.complete = True
        return b""


class ScramServer(SaslServer):
    """SCRAM-SHA-256 / SCRAM-SHA-512 (RFC 5802, RFC 7677) without channel binding."""

    def __init__(
        self,
        store: CredentialStore,
        mechanism: str,
        *,
        hash_name: str | None = None,
        nonce: Callable[[], str] | None = None,
    ) -> None:
        super().__init__()
        self.mechanism = mechanism
        self.hash_name = hash_name or SCRAM_HASHES[mechanism]
        self._store = store
        self._nonce = nonce or (lambda: secrets.token_urlsafe(NONCE_BYTES))
        self._credential: ScramCredential | None = None
        self._user: str | None = None  # None while the named user is unknown
        self._attempted_user = ""
        self._gs2_header = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._combined_nonce = ""

    def _step(self, token: bytes) -> bytes:
        if self._credential is None:
            return self._client_first(self._text(token, "client-first"))
        return self._client_final(self._text(token, "client-final"))

    # -- client-first -> server-first ---------------------------------------------------------

    def _client_first(self, message: str) -> bytes:
        parts = message.split(",")
        if len(parts) < 4:
            raise self._malformed("client-first", "expected gs2 header, n= and r=")
        cbind, authz = parts[0], parts[1]
        if cbind.startswith("p="):
            raise self._malformed("client-first", "channel binding is not supported")
        if cbind not in ("n", "y"):
            raise self._malformed("client-first", f"bad gs2 header flag {cbind[:16]!r}")
        authzid = ""
        if authz:
            if not authz.startswith("a="):
                raise self._malformed("client-first", "bad gs2 header authzid")
            authzid = self._saslname(authz[2:], "client-first")
        self._gs2_header = f"{cbind},{authz},"
        bare = message[len(self._gs2_header) :]
        attrs = parts[2:]
        if attrs[0].startswith("m="):
            raise self._malformed("client-first", "mandatory extension m= is not supported")
        if not attrs[0].startswith("n="):
            raise self._malformed("client-first", "missing user name (n=)")
        user = self._saslname(attrs[0][2:], "client-first")
        if not attrs[1].startswith("r="):
            raise self._malformed("client-first", "missing nonce (r=)")
        client_nonce = attrs[1][2:]
        if not _NONCE.fullmatch(client_nonce):
            raise self._malformed("client-first", "bad nonce")
        extensions = self._extensions(attrs[2:], "client-first")
        if extensions.get("tokenauth", "").lower() == "true":
            raise AuthenticationError("Authentication failed: delegation tokens are not supported")
        if authzid and authzid != user:
            raise AuthenticationError(
                "Authentication failed: the authorization id differs from the user name"
            )
        credential = self._store.credential(user, self.hash_name)
        if credential is None:
            credential = self._store.decoy(user, self.hash_name)
            self._user = None
        else:
            self._user = user
        self._credential = credential
        self._client_first_bare = bare
        self._combined_nonce = client_nonce + self._nonce()
        salt = base64.b64encode(credential.salt).decode()
        self._server_first = f"r={self._combined_nonce},s={salt},i={credential.iterations}"
        self._attempted_user = user
        return self._server_first.encode()

    # -- client-final -> server-final ---------------------------------------------------------

    def _client_final(self, message: str) -> bytes:
        credential = self._credential
        assert credential is not None
        cut = message.rfind(",p=")
        if cut < 0:
            raise self._malformed("client-final", "missing proof (p=)")
        without_proof, proof_b64 = message[:cut], message[cut + 3 :]
        attrs = without_proof.split(",")
        if not attrs[0].startswith("c="):
            raise self._malformed("client-final", "missing channel binding (c=)")
        if len(attrs) < 2 or not attrs[1].startswith("r="):
            raise self._malformed("client-final", "missing nonce (r=)")
        self._extensions(attrs[2:], "client-final")
        binding = self._b64(attrs[0][2:], "client-final", "channel binding")
        if binding != self._gs2_header.encode():
            raise self._malformed("client-final", "channel binding does not match the gs2 header")
        if attrs[1][2:] != self._combined_nonce:
            raise self._malformed("client-final", "nonce does not match")
        proof = self._b64(proof_b64, "client-final", "proof")
        size = len(credential.stored_key)
        if len(proof) != size:
            raise self._malformed("client-final", f"proof is not {size} bytes")
        auth_message = ",".join(
            (self._client_first_bare, self._server_first, without_proof)
        ).encode()
        client_signature = hmac.digest(credential.stored_key, auth_message, self.hash_name)
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
        stored_key = hashlib.new(self.hash_name, client_key).digest()
        valid = hmac.compare_digest(stored_key, credential.stored_key)
        user = self._user
        self._credential = None  # the exchange is over either way
        if not valid or user is None:
            who = _shown(self._attempted_user)
            raise self._invalid_credentials(
                f"unknown user {who}" if user is None else f"wrong proof for user {who}"
            )
        server_signature = hmac.digest(credential.server_key, auth_message, self.hash_name)
        self.username = user
        self.complete = True
        return b"v=" + base64.b64encode(server_signature)

    # -- parsing ------------------------------------------------------------------------------

    def _malformed(self, which: str, what: str) -> AuthenticationError:
        return AuthenticationError(
            f"Authentication failed: invalid {self.mechanism} {which} message: {what}"
        )

    def _text(self, token: bytes, which: str) -> str:
        try:
            text = token.decode("utf-8")
        except UnicodeDecodeError:
            raise self._malformed(which, "not valid UTF-8") from None
        if "\0" in text:
            raise self._malformed(which, "contains a NUL character")
        return text

    def _saslname(self, value: str, which: str) -> str:
        if not _SASLNAME.fullmatch(value):
            raise self._malformed(which, "bad saslname")
        return re.sub("=2C|=3D", lambda m: _ESCAPES[m.group(0)], value)

    def _extensions(self, attrs: list[str], which: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for attr in attrs:
            if not _EXTENSION.fullmatch(attr):
                raise self._malformed(which, f"bad attribute {attr[:16]!r}")
            key, _, value = attr.partition("=")
            out[key] = value
        return out

    def _b64(self, value: str, which: str, what: str) -> bytes:
        try:
            return binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise self._malformed(which, f"{what} is not base64") from None
