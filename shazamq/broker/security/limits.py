"""Failed-login rate limiting per client address, sans I/O.

Each address has a bucket of ``per_minute`` failures that refills continuously (all of
it in a minute). A failed authentication takes one; while less than one is left, the
address's next authentications are refused without looking at their credentials (no
password hashing is spent on them). A legitimate client at the same address (behind the
same NAT) is refused too until the bucket refills: the price of slowing a guesser whose
connections each get a fresh 100 ms failure delay.

The table is bounded: at most `max_addresses` addresses are tracked, full buckets are
dropped as they are seen, and past the bound the oldest entry goes first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class FailedLoginLimiter:
    def __init__(
        self,
        per_minute: int,
        *,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.max_addresses = max_addresses
        self.clock = clock
        # address -> (tokens left, when last updated)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, address: str, now: float) -> float:
        entry = self._buckets.get(address)
        if entry is None:
            return self.capacity
        tokens, at = entry
        tokens = min(self.capacity, tokens + (now - at) * self.rate)
        if tokens >= self.capacity:
            del self._buckets[address]
        return tokens

    def allowed(self, address: str) -> bool:
        """Whether an authentication from `address` may be attempted now."""
        if not self.capacity:
            return True
        return self._tokens(address, self.clock()) >= 1.0

    def failed(self, address: str) -> None:
        """Count a failed authentication from `address`."""
        if not self.capacity:
            return
        now = self.clock()
        tokens = max(0.0, self._tokens(address, now) - 1.0)
        self._buckets[address] = (tokens, now)
        self._buckets.move_to_end(address)
        while len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)
