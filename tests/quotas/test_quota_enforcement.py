"""Client quotas enforced on a broker process: a tenant over its quota slows only itself.

The benchmark-style test runs two producers side by side for a few seconds, one under a
``producer_byte_rate`` quota. What is asserted is the protocol's throttle time field
(positive for the throttled client, zero for the other) and, generously, the bytes the
throttled one got through; the figures are printed (``-s``) and quoted in
docs/performance.md. The throttled producer here ignores the throttle times it is given,
so what holds it to its quota is the broker muting its connection (KIP-219).

The broker measures rates over 3 samples of 1 s (``quotas.window_num``) instead of
Kafka's 11, so a few seconds are enough for the rate to settle: with 11 samples the first
10 s are padded and a client gets 10 s of quota in its first burst.
"""

from __future__ import annotations

import threading
import time
import urllib.request

import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from shazamq.protocol.messages.fetch_request import FetchPartition, FetchRequest, FetchTopic
from shazamq.protocol.messages.metadata_request import MetadataRequest
from shazamq.protocol.records import iter_batches
from tests.kafka_helpers import RawClient, make_topic

from .quota_wire import alter_request, produce_request

QUOTA = 200 * 1024  # bytes per second
PAYLOAD = 20 * 1024
RUN_SECONDS = 3.0


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):
    from tests.conftest import BrokerProcess

    b = BrokerProcess(
        tmp_path_factory.mktemp("quota-enforce") / "data",
        quotas__window_num=3,
        quotas__window_size_seconds=1,
    ).start()
    yield b
    b.stop()


def set_quotas(broker, entries) -> None:
    c = RawClient(broker.port, client_id="quota-admin")
    try:
        resp = c.request(alter_request(entries), 1)
        assert [e.error_code for e in resp.entries] == [0] * len(entries)
    finally:
        c.close()


def scrape(port: int) -> dict[str, list]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    return {f.name: f.samples for f in text_string_to_metric_families(text.decode())}


class Run:
    """One producer's loop: what it sent and the throttle times it was given."""

    def __init__(self, port: int, client_id: str, topic: str) -> None:
        self.client = RawClient(port, client_id=client_id)
        self.client.sock.settimeout(30)
        self.topic = topic
        self.acked_bytes = 0
        self.throttles: list[int] = []
        self.elapsed = 0.0

    def loop(self, start: threading.Event, seconds: float) -> None:
        req = produce_request(self.topic, b"x" * PAYLOAD)
        start.wait()
        began = time.monotonic()
        while time.monotonic() - began < seconds:
            resp = self.client.request(req, 9)
            part = resp.responses[0].partition_responses[0]
            assert part.error_code == 0
            self.acked_bytes += PAYLOAD
            self.throttles.append(resp.throttle_time_ms)
            # no back-off on purpose: the broker's mute holds this client to its quota
        self.elapsed = time.monotonic() - began
        self.client.close()


def test_a_producer_over_its_quota_is_throttled_and_another_is_not(broker, topic_name):
    make_topic(broker.bootstrap, topic_name)
    set_quotas(broker, [({"client-id": "tenant-slow"}, {"producer_byte_rate": float(QUOTA)})])
    slow = Run(broker.port, "tenant-slow", topic_name)
    fast = Run(broker.port, "tenant-fast", topic_name)
    start = threading.Event()
    threads = [
        threading.Thread(target=r.loop, args=(start, RUN_SECONDS), daemon=True)
        for r in (slow, fast)
    ]
    for t in threads:
        t.start()
    start.set()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    slow_rate = slow.acked_bytes / slow.elapsed
    fast_rate = fast.acked_bytes / fast.elapsed
    print(
        f"\nquota {QUOTA / 1024:.0f} KiB/s over {RUN_SECONDS:.0f} s: throttled producer "
        f"{slow_rate / 1024:.0f} KiB/s ({len(slow.throttles)} requests, "
        f"{sum(t > 0 for t in slow.throttles)} throttled, max {max(slow.throttles)} ms), "
        f"other producer {fast_rate / 1024:.0f} KiB/s ({len(fast.throttles)} requests)"
    )
    # the throttled producer is told so, and held near its quota
    assert any(t > 0 for t in slow.throttles)
    assert slow.acked_bytes < 3 * QUOTA * slow.elapsed
    # the other producer is never throttled, and got more through
    assert fast.throttles and all(t == 0 for t in fast.throttles)
    assert fast.acked_bytes > slow.acked_bytes
    samples = scrape(broker.metrics_port)["shazamq_quota_throttle_time_seconds"]
    produce_count = [
        s.value
        for s in samples
        if s.name.endswith("_count") and s.labels.get("quota_type") == "produce"
    ]
    assert produce_count and produce_count[0] >= 1


def test_a_consumer_over_its_fetch_quota_gets_throttled_empty_answers(broker, topic_name):
    make_topic(broker.bootstrap, topic_name)
    producer = RawClient(broker.port, client_id="filler")
    for _ in range(20):
        producer.request(produce_request(topic_name, b"y" * PAYLOAD), 9)
    producer.close()
    set_quotas(broker, [({"client-id": "reader-slow"}, {"consumer_byte_rate": 100_000.0})])
    reader = RawClient(broker.port, client_id="reader-slow")
    reader.sock.settimeout(30)
    offset, served, throttled, empty_throttled = 0, 0, 0, 0
    for _ in range(12):
        req = FetchRequest(
            replica_id=-1,
            max_wait_ms=0,
            min_bytes=1,
            max_bytes=10_000_000,
            topics=[
                FetchTopic(
                    topic=topic_name,
                    partitions=[
                        FetchPartition(
                            partition=0, fetch_offset=offset, partition_max_bytes=PAYLOAD * 4
                        )
                    ],
                )
            ],
        )
        resp = reader.request(req, 11)
        if resp.throttle_time_ms > 0:
            throttled += 1
            empty_throttled += not resp.responses
            continue
        records = resp.responses[0].partitions[0].records
        for _, header in iter_batches(records or b""):
            offset = header.base_offset + header.last_offset_delta + 1
            served += 1
        if throttled >= 2:
            break
    reader.close()
    assert served >= 1  # within the quota, records are served
    # Kafka's throttled fetch: the throttle time, and nothing served with it
    assert throttled >= 1
    assert empty_throttled == throttled


def test_request_time_quota_throttles_a_busy_client(broker):
    set_quotas(broker, [({"user": None, "client-id": "busy"}, {"request_percentage": 0.01})])
    c = RawClient(broker.port, client_id="busy")
    c.sock.settimeout(30)
    throttled = 0
    for _ in range(200):  # each costs the handler a fraction of a millisecond
        throttled = c.request(MetadataRequest(topics=None), 12).throttle_time_ms
        if throttled:
            break
    c.close()
    assert throttled > 0
    # another client id of the same (anonymous) user has no quota
    other = RawClient(broker.port, client_id="idle")
    assert other.request(MetadataRequest(topics=None), 12).throttle_time_ms == 0
    other.close()


def test_librdkafka_reports_the_throttle_to_the_application(broker, topic_name):
    """confluent-kafka's producer gets the broker's throttle times (throttle_cb)."""
    make_topic(broker.bootstrap, topic_name)
    set_quotas(broker, [({"client-id": "lib-slow"}, {"producer_byte_rate": 50_000.0})])
    events: list[float] = []
    p = Producer(
        {
            "bootstrap.servers": broker.bootstrap,
            "client.id": "lib-slow",
            "linger.ms": 5,
            "throttle_cb": lambda ev: events.append(ev.throttle_time),
        }
    )
    deadline = time.monotonic() + 30
    for _ in range(30):
        p.produce(topic_name, value=b"z" * PAYLOAD)
        p.poll(0)
    while p.flush(1) and time.monotonic() < deadline:
        pass
    while not events and time.monotonic() < deadline:
        p.poll(0.2)
    assert events and max(events) > 0
