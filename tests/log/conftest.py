"""Fixtures shared by the log and record-format tests: a batch builder and a log opener.

Helpers are fixtures (never imported from here) so the tests work in any import mode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from shazamq.broker.log import LogConfig, PartitionLog
from shazamq.protocol.records import Record, build_batch

SMALL = LogConfig(segment_bytes=4096, index_interval_bytes=256, segment_index_bytes=4096)


def _batch(
    n: int = 1,
    *,
    value: bytes | None = b"v",
    key: bytes | None = b"k",
    ts: int = 1_000,
    **kwargs: object,
) -> bytes:
    records = [
        Record(
            offset_delta=i,
            timestamp_delta=i,
            key=None if key is None else key + str(i).encode(),
            value=value,
        )
        for i in range(n)
    ]
    return build_batch(records, base_timestamp=ts, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def small_config() -> LogConfig:
    """4 KiB segments, an index entry every 256 bytes."""
    return SMALL


@pytest.fixture
def mk_batch() -> Callable[..., bytes]:
    """``mk_batch(n, value=, key=, ts=, **build_batch kwargs)``: records keyed key0.., with
    timestamps ts, ts+1, ..."""
    return _batch


@pytest.fixture
def open_log(tmp_path) -> Iterator[Callable[..., PartitionLog]]:
    """``open_log(config=SMALL, name="t-0", **open kwargs)``: (re)open a log under tmp_path;
    whatever is still open at the end is closed."""
    opened: list[PartitionLog] = []

    def _open(config: LogConfig = SMALL, name: str = "t-0", **kwargs: object) -> PartitionLog:
        log = PartitionLog.open(str(tmp_path / name), config, **kwargs)  # type: ignore[arg-type]
        opened.append(log)
        return log

    yield _open
    for log in opened:
        if not log.closed:
            log.close()
