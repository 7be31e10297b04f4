"""Producer id allocation that never hands out the same id twice, even across restarts.

A partition's log remembers producers by id (sequence numbers for idempotence, open
transactions), so an id reused after a restart would make a new producer look like a
retry of an old one. Ids are reserved in blocks: before the first id of a block is
handed out, the end of the block is written to ``<data_dir>/producer-id-block`` (write,
fsync, rename, fsync the directory). After a crash the broker continues after the last
reserved block; at most one block of ids is skipped, none is repeated.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["BLOCK_SIZE", "ProducerIdAllocator", "ProducerIdsExhaustedError"]

BLOCK_SIZE = 1000
FILE_NAME = "producer-id-block"
_MAX_PRODUCER_ID = 2**63 - 1


class ProducerIdsExhaustedError(Exception):
    """The 63-bit producer id space is used up."""


class ProducerIdAllocator:
    """Hands out producer ids from blocks reserved durably in the data directory."""

    def __init__(self, data_dir: str | os.PathLike[str], block_size: int = BLOCK_SIZE) -> None:
        self.path = Path(data_dir) / FILE_NAME
        self.block_size = block_size
        self._next = self._read()
        self._block_end = self._next  # nothing reserved by this process yet

    def _read(self) -> int:
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return 0
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{self.path} holds {text!r}, not a producer id") from None
        if value < 0:
            raise ValueError(f"{self.path} holds a negative producer id {value}")
        return value

    def _reserve(self, end: int) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, f"{end}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        with contextlib.suppress(OSError):
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        self._block_end = end

    @property
    def next_id(self) -> int:
        """The id the next call to :meth:`allocate` returns."""
        return self._next

    def ensure_above(self, producer_id: int) -> None:
        """Never hand out ``producer_id`` or anything below it (ids seen in the logs)."""
        if producer_id >= self._next:
            self._next = producer_id + 1

    @property
    def floor(self) -> int:
        """Every id below this is never handed out again, even after a restart."""
        return min(self._next, self._block_end)

    def keep_out(self, producer_id: int) -> None:
        """Never hand out ``producer_id`` or anything below it, now or after a restart
        (an id in copied data): recorded durably before it returns."""
        end = producer_id + 1
        if end > _MAX_PRODUCER_ID:
            raise ProducerIdsExhaustedError("no producer ids left")
        if end > self._block_end:
            self._reserve(end)
        if end > self._next:
            self._next = end

    def allocate(self) -> int:
        """A producer id never returned before by this data directory."""
        pid = self._next
        if pid >= _MAX_PRODUCER_ID:
            raise ProducerIdsExhaustedError("no producer ids left")
        if pid >= self._block_end:
            self._reserve(min(pid + self.block_size, _MAX_PRODUCER_ID))
        self._next = pid + 1
        return pid
