"""The client side of SASL PLAIN and SCRAM-SHA-256/512, sans I/O (RFC 4616, RFC 5802).

Brokers use it to authenticate to each other's listeners (replica fetches, transaction
markers) when SASL is enabled, as the internal principal whose password is the cluster
secret. `SaslClient.first()` gives the first token; `step(server_token)` the next, or
None when the exchange is complete. A server that cannot prove it knows the credential
(a wrong SCRAM server signature) raises AuthenticationError, so a broker never takes an
impostor for a peer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from .sasl import AuthenticationError

_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
# a server that asks for this many iterations is refused: a peer should never need more,
# and a hostile one could otherwise make us burn CPU
MAX_ITERATIONS = 65536


def _saslname(user: str) -> str:
    return user.replace("=", "=3D").replace(",", "=2C")


class SaslClient:
    """One authentication exchange, for one mechanism."""

    def __init__(self, mechanism: str, user: str, password: str, *, nonce: str | None = None):
        if mechanism != "PLAIN" and mechanism not in _HASHES:
            raise ValueError(f"unsupported SASL mechanism {mechanism!r}")
        self.mechanism = mechanism
        self._user = user
        self._password = password.encode()
        self._nonce = nonce or secrets.token_urlsafe(24)
        self._bare = f"n={_saslname(user)},r={self._nonce}"
        self._expected_signature: bytes | None = None
        self.done = False

    def first(self) -> bytes:
        if self.mechanism == "PLAIN":
            return b"\0" + self._user.encode() + b"\0" + self._password
        return ("n,," + self._bare).encode()

    def step(self, token: bytes) -> bytes | None:
        """The answer to the server's token; None once the server is verified."""
        if self.done:
            raise AuthenticationError("the SASL exchange is already complete")
        if self.mechanism == "PLAIN":
            self.done = True
            return None
        if self._expected_signature is None:
            return self._client_final(token)
        self._verify_server(token)
        self.done = True
        return None

    def _client_final(self, token: bytes) -> bytes:
        try:
            server_first = token.decode()
            attrs = dict(part.split("=", 1) for part in server_first.split(","))
            nonce, salt, iterations = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        except (UnicodeDecodeError, ValueError, KeyError) as exc:
            raise AuthenticationError(f"malformed SCRAM server-first message: {exc}") from None
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise AuthenticationError("the server's SCRAM nonce does not extend ours")
        if not 1 <= iterations <= MAX_ITERATIONS:
            raise AuthenticationError(f"the server asks for {iterations} SCRAM iterations")
        name = _HASHES[self.mechanism]
        salted = hashlib.pbkdf2_hmac(name, self._password, salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", name)
        stored_key = hashlib.new(name, client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self._bare},{server_first},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, name)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", name)
        self._expected_signature = hmac.digest(server_key, auth_message, name)
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def _verify_server(self, token: bytes) -> None:
        assert self._expected_signature is not None
        try:
            text = token.decode()
        except UnicodeDecodeError:
            raise AuthenticationError("malformed SCRAM server-final message") from None
        if text.startswith("e="):
            raise AuthenticationError(f"the server refused: {text[2:]}")
        if not text.startswith("v="):
            raise AuthenticationError("malformed SCRAM server-final message")
        try:
            got = base64.b64decode(text[2:], validate=True)
        except ValueError:
            raise AuthenticationError("malformed SCRAM server signature") from None
        if not hmac.compare_digest(got, self._expected_signature):
            raise AuthenticationError("the server's SCRAM signature is wrong")
