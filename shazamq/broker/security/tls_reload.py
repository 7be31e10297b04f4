"""Certificate rotation without a restart: the listener's files, watched and reloaded.

cert-manager, Vault and Kubernetes' Secret volumes replace certificate files in place
(Secret volumes by swapping a symlink), so the broker compares each file's identity
(inode, size, mtime, through symlinks) on an interval and loads the new certificate, key
and CA into the listener's existing `ssl.SSLContext`: connections opened afterwards get
them, open ones keep the session they negotiated. A half-written rotation (the new
certificate beside the old key) fails to load; the old ones stay in use and the load is
tried again at the next change.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Sequence

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
    """Reloads `cert_file`/`key_file` (and `ca_file`) into `context` when they change."""

    def __init__(
        self, context: ssl.SSLContext, cert_file: str, key_file: str, ca_file: str | None
    ) -> None:
        self.context = context
        self.cert_file, self.key_file, self.ca_file = cert_file, key_file, ca_file
        self.paths = [p for p in (cert_file, key_file, ca_file) if p]
        self.loaded = stamp_of(self.paths)  # what the context was built from
        self._failed: Stamp | None = None
        self.reloads = 0

    def check(self) -> bool:
        """Load the files if they changed since the last load; True if a load happened."""
        now = stamp_of(self.paths)
        if now == self.loaded or now == self._failed:
            return False
        try:
            # Tried on a scratch context first: a failed load into the live one can leave
            # it holding the new certificate with the old key, and every handshake fails.
            self._load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
            self._load(self.context)
        except (OSError, ssl.SSLError) as exc:
            if now != self._failed:
                log.warning(
                    "TLS files changed but cannot be loaded (%s); the previous certificate "
                    "stays in use until they change again",
                    exc,
                )
            self._failed = now
            return False
        self.loaded, self._failed = now, None
        self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.cert_file)
        return True

    def _load(self, context: ssl.SSLContext) -> None:
        context.load_cert_chain(self.cert_file, self.key_file)
        if self.ca_file:
            # adds to the trusted set: a CA being rotated in is trusted beside the old one
            context.load_verify_locations(self.ca_file)

    async def run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.check()  # a few small files: cheaper than an executor round trip
