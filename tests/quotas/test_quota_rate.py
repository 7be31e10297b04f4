"""The sampled rate and the throttle time it implies (pure, clock passed in)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shazamq.broker.quotas.rate import SampledRate, throttle_ms


def test_a_first_burst_is_spread_over_the_padded_window():
    r = SampledRate(11, 1.0, now=0.0)
    r.record(1000.0, 0.0)
    # 11 samples of 1 s: the span is padded to 10 whole windows
    assert r.span(0.0) == pytest.approx(10.0)
    assert r.rate(0.5) == pytest.approx(1000.0 / 10.5)


def test_steady_rate_is_measured_and_old_samples_expire():
    r = SampledRate(3, 1.0, now=0.0)
    t = 0.0
    while t < 10.0:
        r.record(100.0, t)  # 1000 per second
        t = round(t + 0.1, 6)
    assert r.rate(t) == pytest.approx(1000.0, rel=0.2)
    # silent for longer than all samples span: nothing is left of it
    assert r.rate(t + 3.5) == 0.0


def test_throttle_formula():
    assert throttle_ms(100.0, 100.0, 10.0, 11.0) == 0
    assert throttle_ms(50.0, 100.0, 10.0, 11.0) == 0
    assert throttle_ms(150.0, 100.0, 10.0, 11.0) == 5000  # 50% over a 10 s span
    assert throttle_ms(1e9, 100.0, 10.0, 11.0) == 11000  # capped at the whole span


@settings(deadline=None, max_examples=60)
@given(
    samples=st.integers(2, 11),
    window=st.sampled_from([0.5, 1.0, 2.0]),
    bound=st.floats(1e3, 1e7),
    request_fraction=st.floats(0.02, 1.0),
    gap=st.floats(0.001, 0.05),
)
def test_a_client_that_honours_its_throttle_times_is_held_to_its_quota(
    samples, window, bound, request_fraction, gap
):
    """A client sends as fast as it may, waiting out every throttle time it is given:
    over a long run it gets about the quota, plus the first span's allowance (the padded
    span) and one request."""
    size = bound * window * request_fraction
    r = SampledRate(samples, window, now=0.0)
    now, sent, throttled = 0.0, 0.0, 0
    duration = 40 * window
    while now < duration:
        r.record(size, now)
        sent += size
        delay = r.throttle_ms(bound, now)
        assert 0 <= delay <= samples * window * 1000
        throttled += delay > 0
        now += gap + delay / 1000.0
    # (samples dropping out of the span let a little more through: a tenth at most)
    assert sent <= 1.1 * bound * now + bound * samples * window + size
    if size / gap > 2 * bound:  # a client faster than its quota is held back
        assert throttled


@given(st.lists(st.floats(0.0, 1e5), min_size=1, max_size=30))
def test_unrecording_takes_back_exactly(values):
    r = SampledRate(11, 1.0, now=0.0)
    for i, v in enumerate(values):
        r.record(v, i * 0.01)
    before = r.rate(1.0)
    r.record(5000.0, 1.0)
    r.record(-5000.0, 1.0)
    assert r.rate(1.0) == pytest.approx(before, abs=1e-6)
