"""OAUTHBEARER's validator as configured, and the task keeping its JWKS keys fresh.

`build_validator` turns ``[security.sasl.oauthbearer]`` into a validator. For ``jwks``
the keys are loaded before the broker listens: a ``jwks_file`` that cannot be read or
holds no signing key stops the broker naming the key; a ``jwks_url`` that does not answer
is retried in the background (OAUTHBEARER logins fail until it does, other mechanisms are
unaffected). `JwksRefresher` then fetches the set again every ``jwks_refresh_ms``, and
sooner (at most every 10 s) when a token names a key id the set lacks, as an issuer's key
rotation does; a failed fetch keeps the keys there were. Fetches run in a worker thread
with a timeout and a size cap, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.request
from pathlib import Path

from shazamq.config import ConfigError, OAuthBearerConfig

from .oauthbearer import JwksKeys, JwksValidator, UnsecuredValidator, Validator

log = logging.getLogger(__name__)

KEY = "security.sasl.oauthbearer"
MAX_JWKS_BYTES = 1024 * 1024
FETCH_TIMEOUT_S = 10.0
# the soonest a token with an unknown key id makes the set be fetched again
MIN_UNKNOWN_KID_REFETCH_S = 10.0
RETRY_S = 10.0  # after a failed fetch


def _read(config: OAuthBearerConfig) -> bytes:
    """The key set's bytes from the file or URL (blocking)."""
    if config.jwks_file:
        data = Path(config.jwks_file).read_bytes()
    else:
        assert config.jwks_url
        request = urllib.request.Request(config.jwks_url, headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as response:
            data = response.read(MAX_JWKS_BYTES + 1)
    if len(data) > MAX_JWKS_BYTES:
        raise ValueError(f"the key set is larger than {MAX_JWKS_BYTES} bytes")
    return data


class JwksRefresher:
    """Keeps a `JwksKeys` loaded from the configured file or URL."""

    def __init__(self, config: OAuthBearerConfig, keys: JwksKeys) -> None:
        self.config = config
        self.keys = keys
        self.source = config.jwks_file or config.jwks_url or ""
        self._wake = asyncio.Event()
        self._last_unknown = 0.0
        self._task: asyncio.Task[None] | None = None
        keys.on_unknown_kid = self._unknown_kid

    def _unknown_kid(self) -> None:
        now = time.monotonic()
        if now - self._last_unknown >= MIN_UNKNOWN_KID_REFETCH_S:
            self._last_unknown = now
            self._wake.set()

    async def load(self) -> bool:
        """Fetch and load the set once; False (logged) if it failed."""
        loop = asyncio.get_running_loop()
        try:
            data = await loop.run_in_executor(None, _read, self.config)
            count = self.keys.load(data)
        except (OSError, ValueError) as exc:
            log.warning("OAUTHBEARER key set %s not loaded: %s", self.source, exc)
            return False
        log.info("OAUTHBEARER key set %s loaded: %d signing keys", self.source, count)
        return True

    async def start(self) -> None:
        if not await self.load() and self.config.jwks_file:
            raise ConfigError(f"{KEY}.jwks_file ({self.config.jwks_file}): no usable key set")
        self._task = asyncio.create_task(self._run(), name="oauthbearer-jwks")

    async def _run(self) -> None:
        interval = self.config.jwks_refresh_ms / 1000
        ok = bool(self.keys.loaded_at)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval if ok else RETRY_S)
            self._wake.clear()  # a kid unknown from here on asks again
            ok = await self.load() or ok

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def build_validator(config: OAuthBearerConfig) -> tuple[Validator, JwksRefresher | None]:
    """The validator of the section, and for ``jwks`` the refresher to start and stop."""
    rules = {
        "principal_claim": config.principal_claim,
        "scope_claim": config.scope_claim,
        "required_scopes": config.required_scopes,
        "clock_skew_seconds": config.clock_skew_seconds,
    }
    if config.validator == "unsecured":
        log.warning(
            "OAUTHBEARER accepts unsecured (unsigned) tokens: anyone can claim any principal; "
            "for development only"
        )
        return UnsecuredValidator(**rules), None
    keys = JwksKeys()
    validator = JwksValidator(
        keys,
        algorithms=config.algorithms,
        issuer=config.expected_issuer,
        audience=config.expected_audience,
        **rules,
    )
    return validator, JwksRefresher(config, keys)
