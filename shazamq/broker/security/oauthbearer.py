"""SASL/OAUTHBEARER (RFC 7628 as Kafka speaks it, KIP-255), sans I/O.

The client's one message is the GS2 header, then ``\\x01``-separated ``key=value`` pairs,
ended by a second ``\\x01``::

    n,[a=<authzid>],\\x01auth=Bearer <token>\\x01[<extension>=<value>\\x01...]\\x01

The token is a JWT. A validator turns it into claims or refuses it with a `TokenError`:

- `UnsecuredValidator`: an unsigned JWS (``alg`` ``none``, empty signature), for
  development, as Kafka's OAuthBearerUnsecuredValidatorCallbackHandler: the principal
  claim (``sub``) and ``exp`` are required, ``iat`` and ``nbf`` checked when present,
  scopes when some are required;
- `JwksValidator`: a JWT signed with one of the configured algorithms (RS256, ES256, ...)
  by a key of the issuer's JSON Web Key Set (chosen by ``kid``), verified with PyJWT;
  ``exp`` required, ``iss`` and ``aud`` checked when configured (KIP-768). The keys come
  from a `JwksKeys`, which the broker refreshes from a URL or file (`oauthbearer_keys`).

A refused token is answered as Kafka does: the server's challenge is a JSON error
(``{"status":"invalid_token"}``, or ``insufficient_scope`` with the scopes wanted); the
client acknowledges it with a lone ``\\x01`` and the authentication then fails with that
JSON as its message. Extensions are accepted and ignored (no extension is validated, as
with Kafka's default handlers). An authorization id, when given, must be the principal.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from .sasl import AuthenticationError, SaslServer

KVSEP = b"\x01"
_KEY = re.compile(rb"[A-Za-z]+")
_VALUE = re.compile(rb"[\x21-\x7e \t\r\n]+")
_AUTH = re.compile(rb"Bearer ([\x21-\x7e]+)", re.IGNORECASE)
_SASLNAME = re.compile(r"(?:[^=,]|=2C|=3D)+")
# a token is a few KB at most; the SASL layer already caps the whole message at 16 KiB
MAX_CLAIMS_BYTES = 16 * 1024


class TokenError(Exception):
    """A token refused: ``status`` is the RFC 6750 error code sent to the client."""

    def __init__(self, reason: str, status: str = "invalid_token", scope: str | None = None):
        super().__init__(reason)
        self.status = status
        self.scope = scope

    def response(self) -> bytes:
        """The server's error challenge, as Kafka's OAuthBearerSaslServer sends it."""
        body: dict[str, str] = {"status": self.status}
        if self.scope is not None:
            body["scope"] = self.scope
        return json.dumps(body, separators=(",", ":")).encode()


# -- the client's message ------------------------------------------------------------------


def parse_initial_response(message: bytes) -> tuple[str | None, str, dict[str, str]]:
    """(authzid or None, token, extensions) of a client's message, or AuthenticationError."""

    def bad(what: str) -> AuthenticationError:
        return AuthenticationError(f"Authentication failed: invalid OAUTHBEARER message: {what}")

    head, sep, rest = message.partition(KVSEP)
    if not sep:
        raise bad("no key/value separator")
    parts = head.split(b",")
    if len(parts) != 3 or parts[2] != b"":
        raise bad("bad GS2 header")
    if parts[0] == b"y" or parts[0].startswith(b"p="):
        raise bad("channel binding is not supported")
    if parts[0] != b"n":
        raise bad("bad GS2 header flag")
    authzid: str | None = None
    if parts[1]:
        if not parts[1].startswith(b"a="):
            raise bad("bad authorization id")
        try:
            name = parts[1][2:].decode("utf-8")
        except UnicodeDecodeError:
            raise bad("authorization id is not UTF-8") from None
        if not _SASLNAME.fullmatch(name):
            raise bad("bad authorization id")
        authzid = name.replace("=2C", ",").replace("=3D", "=")
    if not rest.endswith(KVSEP):
        raise bad("not terminated by a key/value separator")
    pairs = rest[:-1].split(KVSEP)
    if pairs[-1] != b"":
        raise bad("not terminated by a key/value separator")
    fields: dict[str, str] = {}
    for pair in pairs[:-1]:
        key, eq, value = pair.partition(b"=")
        if not eq or not _KEY.fullmatch(key) or not _VALUE.fullmatch(value):
            raise bad("bad key/value pair")
        k = key.decode()
        if k in fields:
            raise bad(f"key {k!r} given twice")
        fields[k] = value.decode()
    auth = fields.pop("auth", None)
    if auth is None:
        raise bad("no auth= pair")
    m = _AUTH.fullmatch(auth.encode())
    if m is None:
        raise bad("auth= is not a Bearer token")
    return authzid, m.group(1).decode(), fields


# -- validators -----------------------------------------------------------------------------


def _b64url(part: str, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise TokenError(f"the {what} is not base64url") from None


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    if len(raw) > MAX_CLAIMS_BYTES:
        raise TokenError(f"the {what} is too long")
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise TokenError(f"the {what} is not JSON") from None
    if not isinstance(value, dict):
        raise TokenError(f"the {what} is not a JSON object")
    return value


def _scopes(claims: Mapping[str, Any], claim: str) -> list[str]:
    value = claims.get(claim)
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise TokenError(f"claim {claim!r} is neither a string nor a list of strings")


class _Rules:
    """What both validators check of the claims once the token's form is trusted."""

    def __init__(
        self,
        principal_claim: str = "sub",
        scope_claim: str = "scope",
        required_scopes: tuple[str, ...] = (),
        clock_skew_seconds: int = 30,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.principal_claim = principal_claim
        self.scope_claim = scope_claim
        self.required_scopes = required_scopes
        self.skew = clock_skew_seconds
        self.clock = clock

    def principal(self, claims: Mapping[str, Any]) -> str:
        name = claims.get(self.principal_claim)
        if not isinstance(name, str) or not name.strip():
            raise TokenError(f"no principal claim {self.principal_claim!r}")
        return name

    def scopes(self, claims: Mapping[str, Any]) -> None:
        if not self.required_scopes:
            return
        missing = set(self.required_scopes) - set(_scopes(claims, self.scope_claim))
        if missing:
            raise TokenError(
                f"scopes missing: {' '.join(sorted(missing))}",
                status="insufficient_scope",
                scope=" ".join(self.required_scopes),
            )


class Token:
    """A validated token: its principal, expiry (seconds since the epoch) and claims."""

    __slots__ = ("claims", "expires_at", "principal")

    def __init__(self, principal: str, expires_at: float, claims: dict[str, Any]) -> None:
        self.principal = principal
        self.expires_at = expires_at
        self.claims = claims


class UnsecuredValidator(_Rules):
    """Unsigned JWS (alg none), for development: nothing proves who made the token."""

    def validate(self, token: str) -> Token:
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError("not a JWS in compact form (three dot-separated parts)")
        header = _json_object(_b64url(parts[0], "header"), "header")
        if header.get("alg") != "none":
            raise TokenError("an unsecured JWS must have alg none")
        if parts[2]:
            raise TokenError("an unsecured JWS must have an empty signature")
        claims = _json_object(_b64url(parts[1], "payload"), "payload")
        now = self.clock()
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise TokenError("no numeric exp claim")
        if exp + self.skew <= now:
            raise TokenError("the token has expired")
        for claim in ("iat", "nbf"):
            value = claims.get(claim)
            if value is None:
                continue
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise TokenError(f"claim {claim!r} is not a number")
            if value - self.skew > now:
                raise TokenError(f"claim {claim!r} is in the future")
        principal = self.principal(claims)
        self.scopes(claims)
        return Token(principal, float(exp), claims)


class JwksKeys:
    """The signing keys of a JSON Web Key Set, by key id (swapped whole on each load)."""

    def __init__(self) -> None:
        # (PyJWK, the alg the set declares for it or None), by kid and without one
        self.by_kid: dict[str, tuple[Any, str | None]] = {}
        self.unnamed: list[tuple[Any, str | None]] = []
        self.loaded_at = 0.0
        # called with nothing when a token names a key id this set lacks
        self.on_unknown_kid: Callable[[], None] | None = None

    def load(self, document: bytes | str) -> int:
        """Replace the keys with a JWKS document's signing keys; ValueError if it has none."""
        from jwt import PyJWK
        from jwt.exceptions import PyJWKError

        try:
            jwks = json.loads(document)
        except ValueError:
            raise ValueError("the key set is not JSON") from None
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            raise ValueError('the key set has no "keys" list')
        by_kid: dict[str, tuple[Any, str | None]] = {}
        unnamed: list[tuple[Any, str | None]] = []
        for jwk in jwks["keys"]:
            if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
                continue
            try:
                key = PyJWK(jwk)
            except PyJWKError:
                continue  # a key type or algorithm this build cannot use
            alg = jwk.get("alg")
            entry = (key, alg if isinstance(alg, str) else None)
            kid = jwk.get("kid")
            if isinstance(kid, str):
                by_kid[kid] = entry
            else:
                unnamed.append(entry)
        if not by_kid and not unnamed:
            raise ValueError("the key set holds no usable signing key")
        self.by_kid, self.unnamed = by_kid, unnamed
        self.loaded_at = time.monotonic()
        return len(by_kid) + len(unnamed)

    def key_for(self, kid: str | None) -> tuple[Any, str | None]:
        """The key a token's kid names and its declared alg; TokenError if none."""
        if kid is not None:
            key = self.by_kid.get(kid)
            if key is None:
                if self.on_unknown_kid is not None:
                    self.on_unknown_kid()
                raise TokenError(f"unknown key id {kid[:64]!r}")
            return key
        if len(self.unnamed) == 1 and not self.by_kid:
            return self.unnamed[0]
        raise TokenError("the token names no key id (kid)")


class JwksValidator(_Rules):
    """Signed JWTs, verified with PyJWT against the issuer's keys."""

    def __init__(
        self,
        keys: JwksKeys,
        *,
        algorithms: tuple[str, ...] = ("RS256", "ES256"),
        issuer: str | None = None,
        audience: tuple[str, ...] = (),
        **rules: Any,
    ) -> None:
        super().__init__(**rules)
        self.keys = keys
        self.algorithms = algorithms
        self.issuer = issuer
        self.audience = audience

    def validate(self, token: str) -> Token:
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("not a JWS in compact form") from None
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise TokenError(f"algorithm {str(alg)[:16]!r} is not accepted")
        kid = header.get("kid")
        key, declared = self.keys.key_for(kid if isinstance(kid, str) else None)
        if declared is not None and declared != alg:
            raise TokenError(f"the key is for {declared[:16]}, not {alg}")
        required = ["exp", *(["iss"] if self.issuer else []), *(["aud"] if self.audience else [])]
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                issuer=self.issuer,
                audience=list(self.audience) or None,
                leeway=self.skew,
                options={"require": required, "verify_aud": bool(self.audience)},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("the token has expired") from None
        except jwt.InvalidIssuerError:
            raise TokenError("the token's issuer is not the expected one") from None
        except jwt.InvalidAudienceError:
            raise TokenError("the token's audience is not an expected one") from None
        except jwt.InvalidSignatureError:
            raise TokenError("the signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise TokenError(f"the token is not valid: {exc}") from None
        principal = self.principal(claims)
        self.scopes(claims)
        return Token(principal, float(claims["exp"]), claims)


Validator = UnsecuredValidator | JwksValidator


# -- the mechanism --------------------------------------------------------------------------


class OAuthBearerServer(SaslServer):
    """The server side of one OAUTHBEARER exchange."""

    mechanism = "OAUTHBEARER"

    def __init__(self, validator: Validator) -> None:
        super().__init__()
        self._validator = validator
        self._error: TokenError | None = None  # sent; waiting for the client's \x01
        # when the token expires (seconds since the epoch): the session ends by then
        self.expires_at: float | None = None

    def _step(self, token: bytes) -> bytes:
        if self._error is not None:
            error, self._error = self._error, None
            if token != KVSEP:
                raise AuthenticationError(
                    "Authentication failed: unexpected OAUTHBEARER message after an error"
                )
            raise AuthenticationError(error.response().decode(), f"token refused: {error}")
        authzid, jws, _extensions = parse_initial_response(token)
        try:
            validated = self._validator.validate(jws)
        except TokenError as exc:
            self._error = exc
            return exc.response()
        if authzid is not None and authzid != validated.principal:
            raise AuthenticationError(
                "Authentication failed: the authorization id differs from the token's principal"
            )
        self.username = validated.principal
        self.expires_at = validated.expires_at
        self.complete = True
        return b""
