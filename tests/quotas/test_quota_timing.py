"""The handler timer of the request-time quota: running time counts, waiting does not,
and results, errors and cancellation pass through unchanged."""

from __future__ import annotations

import asyncio

import pytest

from shazamq.broker.quotas.manager import _Timed


async def test_running_time_counts_and_waiting_does_not(monkeypatch):
    """A fake clock: the handler's two steps take 2 and 3 units, the wait between them
    100 units spent by others; only the 5 count."""
    from shazamq.broker.quotas import manager

    now = [0.0]
    monkeypatch.setattr(manager.time, "perf_counter", lambda: now[0])
    wake = asyncio.Event()

    async def handler() -> str:
        now[0] += 2
        await wake.wait()  # a long poll: not the handler's running time
        now[0] += 3
        return "answer"

    async def others() -> None:
        await asyncio.sleep(0)
        now[0] += 100
        wake.set()

    timed = _Timed(handler())
    other = asyncio.create_task(others())
    assert await timed == "answer"
    await other
    assert timed.elapsed == 5


async def test_errors_and_cancellation_pass_through():
    async def fails() -> None:
        await asyncio.sleep(0)
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        await _Timed(fails())

    cleaned: list[bool] = []

    async def waits() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            cleaned.append(True)

    async def run() -> None:
        await _Timed(waits())

    task = asyncio.create_task(run())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == [True]
