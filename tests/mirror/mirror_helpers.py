"""Helpers of the mirror tests: raw batches, waiting for convergence, brokers with [mirror]."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from kafka_helpers import RawClient

from shazamq.protocol.messages.fetch_request import FetchPartition, FetchRequest, FetchTopic
from shazamq.protocol.messages.metadata_request import MetadataRequest
from shazamq.protocol.records import iter_batches


def mirror_settings(**source: Any) -> dict[str, Any]:
    """Broker settings (environment overrides) of a mirror of one source."""
    src = {
        "name": "src",
        "metadata_refresh_interval_ms": 500,
        "sync_group_offsets_interval_ms": 300,
        "fetch_max_wait_ms": 200,
        "retry_backoff_ms": 100,
        "retry_backoff_max_ms": 1000,
        **source,
    }
    return {"mirror__enabled": True, "mirror__sources": json.dumps([src])}


def batches(port: int, topic: str, partition: int, isolation: int = 0) -> list[tuple[int, bytes]]:
    """Every batch of a partition as ``(base offset, exact bytes)``, read with Fetch v12."""
    c = RawClient(port)
    try:
        out: list[tuple[int, bytes]] = []
        offset = 0
        while True:
            req = FetchRequest(
                replica_id=-1,
                max_wait_ms=0,
                min_bytes=0,
                max_bytes=64 << 20,
                isolation_level=isolation,
                topics=[
                    FetchTopic(
                        topic=topic,
                        partitions=[
                            FetchPartition(
                                partition=partition,
                                fetch_offset=offset,
                                partition_max_bytes=16 << 20,
                            )
                        ],
                    )
                ],
            )
            resp = c.request(req, 12)
            pd = resp.responses[0].partitions[0]
            if pd.error_code == 1 and not out and pd.log_start_offset > offset:
                offset = pd.log_start_offset  # OFFSET_OUT_OF_RANGE: start at the log start
                continue
            assert pd.error_code == 0, (topic, partition, pd.error_code)
            data = bytes(pd.records or b"")
            got = [
                (h.base_offset, data[pos : pos + h.size])
                for pos, h in iter_batches(data, allow_partial=True)
                if h.base_offset + h.last_offset_delta >= offset
            ]
            if not got:
                return out
            out.extend(got)
            last = got[-1][0]
            h = next(iter_batches(got[-1][1]))[1]
            offset = last + h.last_offset_delta + 1
    finally:
        c.close()


def topics(port: int) -> dict[str, tuple[Any, int]]:
    """name -> (topic id, partition count)."""
    c = RawClient(port)
    try:
        resp = c.request(MetadataRequest(topics=None, allow_auto_topic_creation=False), 12)
        return {t.name: (t.topic_id, len(t.partitions)) for t in resp.topics if not t.error_code}
    finally:
        c.close()


def wait_until(check: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (AssertionError, ConnectionError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")


def same_copy(src_port: int, dst_port: int, topic: str, partitions: int, dst_topic: str = ""):
    """True once every partition of the mirror holds exactly the source's batches."""
    for p in range(partitions):
        a = batches(src_port, topic, p)
        b = batches(dst_port, dst_topic or topic, p)
        if a != b:
            return False
    return True
