"""A sampled rate and the throttle time it implies (pure, clock passed in, seconds).

This is Kafka's quota sensor: a `Rate` over a `SampledStat` of ``samples`` windows of
``window`` seconds each (quota.window.num, quota.window.size.seconds). A value goes to
the current sample, a new sample starts once the current one is ``window`` old, and the
oldest is reused when all exist; samples older than ``samples * window`` count for
nothing. The rate is the sum of the samples over the time they span, that time padded
to at least ``samples - 1`` whole windows, so a client's first burst is spread over
the full window instead of reading as an enormous rate.

Over the quota, the throttle time is how long the client must stay silent for the rate
to come back down to the bound with the same samples: ``(rate - bound) / bound`` times
the window the rate was measured over, capped at the whole window span.
"""

from __future__ import annotations

__all__ = ["SampledRate", "throttle_ms"]

# the smallest span a rate is measured over (Kafka: 1 ms)
_MIN_SPAN = 0.001


class SampledRate:
    """The rate of one quota for one group of connections (one set of tags)."""

    __slots__ = ("current", "last_used", "samples", "starts", "values", "window")

    def __init__(self, samples: int, window: float, now: float) -> None:
        self.samples = samples
        self.window = window
        self.starts = [now]
        self.values = [0.0]
        self.current = 0
        self.last_used = now

    def record(self, value: float, now: float) -> None:
        """Add ``value`` (negative to take back what was recorded) at time ``now``."""
        self.last_used = now
        i = self.current
        if now - self.starts[i] >= self.window:
            i = self.current = (i + 1) % self.samples
            if i == len(self.starts):
                self.starts.append(now)
                self.values.append(0.0)
            else:
                self.starts[i] = now
                self.values[i] = 0.0
        self.values[i] += value

    def _purge(self, now: float) -> None:
        expire = self.samples * self.window
        starts, values = self.starts, self.values
        for i, start in enumerate(starts):
            if now - start >= expire:
                starts[i] = now
                values[i] = 0.0

    def span(self, now: float) -> float:
        """The time the rate is measured over, in seconds."""
        self._purge(now)
        elapsed = now - min(self.starts)
        whole = int(elapsed // self.window)
        least = self.samples - 1
        if whole < least:
            elapsed += (least - whole) * self.window
        return max(elapsed, _MIN_SPAN)

    def rate(self, now: float) -> float:
        span = self.span(now)
        return sum(self.values) / span

    def throttle_ms(self, bound: float, now: float) -> int:
        """How long to throttle now to bring this rate back to ``bound``; 0 if within it."""
        span = self.span(now)
        return throttle_ms(sum(self.values) / span, bound, span, self.samples * self.window)


def throttle_ms(rate: float, bound: float, span: float, max_span: float) -> int:
    """Milliseconds of silence that bring ``rate`` (measured over ``span`` seconds) down
    to ``bound``, at most ``max_span`` seconds; 0 when the rate is within the bound."""
    if rate <= bound:
        return 0
    return round(min((rate - bound) / bound * span, max_span) * 1000)
