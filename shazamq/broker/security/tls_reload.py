"""Certificate rotation without a restart: the listener's files, watched and reloaded.

cert-manager, Vault and Kubernetes' Secret volumes replace certificate files in place
(Secret volumes by swapping a symlink), so the broker compares each file's identity
(inode, size, mtime, through symlinks) on an interval and, when they changed, builds a new
`ssl.SSLContext` from them. The listener's context stays the one the server was created
with; its SNI callback, which OpenSSL runs on every ClientHello (with or without a server
name), hands each new connection the newest context. Open connections keep the session
they negotiated.

A whole new context, rather than loading into the live one, is what lets a CA that was
rotated *out* stop being trusted: OpenSSL can add to a context's trust store but never
remove from it. A half-written rotation (the new certificate beside the old key) fails to
build; the previous context stays in use and the build is tried again at the next change.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable, Sequence

from shazamq.config import ConfigError

log = logging.getLogger(__name__)

Stamp = tuple[tuple[int, int, int] | None, ...]


def stamp_of(paths: Sequence[str]) -> Stamp:
    """Each file's (inode, size, mtime in ns), None for a file that cannot be read."""
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class CertificateReloader:
    """Serves connections to `listener` from a context `build` makes anew when `paths`
    change. `build` reads the files and raises on a pair or CA that cannot be loaded."""

    def __init__(
        self,
        listener: ssl.SSLContext,
        build: Callable[[], ssl.SSLContext],
        paths: Sequence[str],
    ) -> None:
        self.listener = listener
        self.current = listener
        self.build = build
        self.paths = list(paths)
        self.loaded = stamp_of(self.paths)  # what the current context was built from
        self._failed: Stamp | None = None
        self.reloads = 0
        listener.sni_callback = self._select

    def _select(self, conn: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        current = self.current
        if current is not self.listener:
            conn.context = current
        return None

    def check(self) -> bool:
        """Build a new context if the files changed since the last build; True if one
        was built and is now served."""
        now = stamp_of(self.paths)
        if now == self.loaded or now == self._failed:
            return False
        try:
            fresh = self.build()
        except (OSError, ssl.SSLError, ConfigError) as exc:
            if now != self._failed:
                log.warning(
                    "TLS files changed but cannot be loaded (%s); the previous certificate "
                    "stays in use until they change again",
                    exc,
                )
            self._failed = now
            return False
        self.current = fresh
        self.loaded, self._failed = now, None
        self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.paths[0])
        return True

    async def run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.check()  # a few small files: cheaper than an executor round trip
