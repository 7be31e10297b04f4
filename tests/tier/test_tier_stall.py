"""A bucket that stalls: requests hang instead of failing.

Uploads time out (``request_timeout_ms``) and are retried, the hot path goes on, nothing
leaves the disk and no manifest names a half-written object; once the bucket answers
the uploads catch up. A fetch that needs the stalled bucket answers the retriable
KAFKA_STORAGE_ERROR after ``remote_fetch_timeout_ms`` on a connection that stays open,
and reads everything once the bucket is back.
"""

from __future__ import annotations

import urllib.request

import crc32c
from kafka_helpers import RawClient, make_topic

from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages import ApiVersionsRequest, FetchRequest
from shazamq.protocol.messages.fetch_request import FetchPartition, FetchTopic

from .tierutil import TOPIC_CONFIG, Bucket, consume_all, local_segments, produce, wait_for


def _check_referenced(direct: Bucket, topic: str) -> int:
    """Every object the manifest names is whole (size and CRC); returns its end."""
    m = direct.manifest(topic)
    if m is None:
        return 0
    objects = direct.objects()
    for s in m.segments:
        stem = f"topics/{topic}-{m.topic_id}/0/{s.base_offset:020d}-{s.upload_id}"
        assert objects[stem + ".log"] == s.size
        assert crc32c.crc32c(direct.get(stem + ".log")) == s.crc32c
    return m.end_offset


def test_stalled_bucket(broker_factory, fault_proxy, moto_endpoint: str) -> None:
    bucket = Bucket(fault_proxy.endpoint)
    bucket.create()
    direct = Bucket(moto_endpoint, name=bucket.config.bucket)  # around the proxy
    b = broker_factory(
        **bucket.settings(
            tiered_storage__request_timeout_ms=1000,
            tiered_storage__remote_fetch_timeout_ms=1500,
        )
    )
    topic = "stalled"
    make_topic(b.bootstrap, topic, 1, TOPIC_CONFIG)

    # uploads stall: produce and consume go on, nothing leaves the disk
    fault_proxy.stall_seconds = 3
    fault_proxy.mode = "stall"
    values = produce(b.bootstrap, topic, 150)
    wait_for(lambda: fault_proxy.faults >= 3, what="stalled requests")
    assert local_segments(b.data_dir, topic)[0] == 0
    assert [v for _, v in consume_all(b.bootstrap, topic, 150)] == values
    _check_referenced(direct, topic)  # nothing half-written is named
    assert local_segments(b.data_dir, topic)[0] == 0

    # the bucket answers again: uploads catch up, then the disk lets go
    fault_proxy.mode = "ok"
    wait_for(lambda: _check_referenced(direct, topic) == 150, timeout=120, what="catch-up")
    wait_for(lambda: local_segments(b.data_dir, topic)[0] > 0, what="local deletion")

    # reads stall: the fetch below the local log start answers a retriable error in time
    # and the connection stays open for the next request
    fault_proxy.stall_seconds = 20
    fault_proxy.mode = "stall"
    client = RawClient(b.port)
    try:
        req = FetchRequest(
            max_wait_ms=100,
            topics=[
                FetchTopic(topic=topic, partitions=[FetchPartition(partition=0, fetch_offset=0)])
            ],
        )
        client.sock.settimeout(15)  # well under the 20 s stall
        resp = client.request(req, 12)
        part = resp.responses[0].partitions[0]
        assert part.error_code == ErrorCode.KAFKA_STORAGE_ERROR
        assert part.log_start_offset == 0 and part.high_watermark == 150
        assert client.request(ApiVersionsRequest(), 0).error_code == 0
    finally:
        client.close()
    fault_proxy.mode = "ok"
    got = consume_all(b.bootstrap, topic, 150)
    assert [o for o, _ in got] == list(range(150))
    assert [v for _, v in got] == values
    # the timeouts were counted as such
    with urllib.request.urlopen(f"http://127.0.0.1:{b.metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert any(
        line.startswith('shazamq_tier_errors_total{kind="timeout"}') and float(line.split()[-1]) > 0
        for line in text.splitlines()
    )
