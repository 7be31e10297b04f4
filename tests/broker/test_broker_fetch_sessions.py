"""Incremental fetch sessions (KIP-227) over the wire, with raw Fetch v12+ requests.

Covers: a full fetch opening a session; incremental fetches answering only partitions with
something new; adding, moving and forgetting partitions; epoch and session id errors; a
session closed with epoch -1; topic ids (v13) against names (v12); a long poll of a
session woken by one partition; the cache's bound and eviction; its metrics; sessionless
fetches unchanged; malformed session requests.
"""

from __future__ import annotations

import threading
import time
import urllib.request
import uuid

from kafka_helpers import RawClient, make_topic

from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.fetch_request import (
    FetchPartition,
    FetchRequest,
    FetchTopic,
    ForgottenTopic,
)
from shazamq.protocol.messages.metadata_request import MetadataRequest, MetadataRequestTopic
from shazamq.protocol.messages.produce_request import (
    PartitionProduceData,
    ProduceRequest,
    TopicProduceData,
)
from shazamq.protocol.records import Record, build_batch, iter_batches, iter_records


def produce(c: RawClient, topic: str, partition: int, values: list[bytes]) -> int:
    records = build_batch(
        [Record(offset_delta=i, timestamp_delta=0, value=v) for i, v in enumerate(values)],
        base_timestamp=0,
        max_timestamp=0,
    )
    req = ProduceRequest(
        acks=1,
        timeout_ms=5000,
        topic_data=[
            TopicProduceData(
                name=topic,
                partition_data=[PartitionProduceData(index=partition, records=records)],
            )
        ],
    )
    part = c.request(req, 9).responses[0].partition_responses[0]
    assert part.error_code == 0
    return part.base_offset


def topic_id(c: RawClient, topic: str) -> uuid.UUID:
    resp = c.request(MetadataRequest(topics=[MetadataRequestTopic(name=topic)]), 12)
    return resp.topics[0].topic_id


def fetch(
    c: RawClient,
    version: int,
    session_id: int,
    epoch: int,
    topics: dict[str | uuid.UUID, dict[int, int]],
    forgotten: dict[str | uuid.UUID, list[int]] | None = None,
    *,
    max_wait: int = 0,
    min_bytes: int = 0,
):
    """A Fetch of `topics` ({topic or id: {partition: offset}}) in a session."""

    def topic_fields(key):
        return {"topic_id": key} if isinstance(key, uuid.UUID) else {"topic": key}

    req = FetchRequest(
        replica_id=-1,
        max_wait_ms=max_wait,
        min_bytes=min_bytes,
        max_bytes=1 << 20,
        session_id=session_id,
        session_epoch=epoch,
        topics=[
            FetchTopic(
                **topic_fields(t),
                partitions=[
                    FetchPartition(partition=p, fetch_offset=o, partition_max_bytes=1 << 16)
                    for p, o in parts.items()
                ],
            )
            for t, parts in topics.items()
        ],
        forgotten_topics_data=[
            ForgottenTopic(**topic_fields(t), partitions=ps) for t, ps in (forgotten or {}).items()
        ],
    )
    return c.request(req, version)


def answered(resp) -> dict[tuple[str, int], tuple[int, int, list[bytes]]]:
    """{(topic, partition): (error, high watermark, record values)} of a response."""
    out = {}
    for t in resp.responses:
        for p in t.partitions:
            values = []
            data = bytes(p.records or b"")
            for pos, h in iter_batches(data):
                values += [r.value for r in iter_records(data[pos : pos + h.size])]
            out[(t.topic, p.partition_index)] = (p.error_code, p.high_watermark, values)
    return out


def test_session_answers_only_what_changed(shared_broker, topic_name):
    make_topic(shared_broker.bootstrap, topic_name, partitions=3)
    c = RawClient(shared_broker.port)
    produce(c, topic_name, 0, [b"a", b"b"])
    t = topic_name

    # a full fetch at epoch 0 opens a session and answers every partition
    resp = fetch(c, 12, 0, 0, {t: {0: 0, 1: 0, 2: 0}})
    assert resp.error_code == 0 and resp.session_id != 0
    sid = resp.session_id
    assert answered(resp) == {(t, 0): (0, 2, [b"a", b"b"]), (t, 1): (0, 0, []), (t, 2): (0, 0, [])}

    # the consumer moved on in partition 0: nothing new anywhere, an empty answer
    resp = fetch(c, 12, sid, 1, {t: {0: 2}})
    assert resp.error_code == 0 and resp.session_id == sid and resp.responses == []
    # nothing changed and nothing sent: still empty
    resp = fetch(c, 12, sid, 2, {})
    assert resp.session_id == sid and resp.responses == []

    # new records in partition 1 only: the answer has partition 1 only
    produce(c, t, 1, [b"c"])
    assert answered(fetch(c, 12, sid, 3, {})) == {(t, 1): (0, 1, [b"c"])}
    # not yet moved on: its records again (the session reads from its cached offset)
    assert answered(fetch(c, 12, sid, 4, {})) == {(t, 1): (0, 1, [b"c"])}
    assert fetch(c, 12, sid, 5, {t: {1: 1}}).responses == []

    # a forgotten partition is no longer read; added back, it is answered at once
    resp = fetch(c, 12, sid, 6, {}, {t: [2]})
    assert resp.responses == []
    produce(c, t, 2, [b"d"])
    assert fetch(c, 12, sid, 7, {}).responses == []
    assert answered(fetch(c, 12, sid, 8, {t: {2: 0}})) == {(t, 2): (0, 1, [b"d"])}
    # an unknown partition added to the session answers its error on every fetch
    resp = fetch(c, 12, sid, 9, {t: {2: 1, 7: 0}})
    assert answered(resp) == {(t, 7): (ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, -1, [])}
    resp = fetch(c, 12, sid, 10, {}, {t: [7]})
    assert resp.error_code == 0 and resp.responses == []
    c.close()


def test_session_epoch_and_id_errors_and_close(shared_broker, topic_name):
    make_topic(shared_broker.bootstrap, topic_name, partitions=2)
    c = RawClient(shared_broker.port)
    produce(c, topic_name, 0, [b"x"])
    t = topic_name
    sid = fetch(c, 12, 0, 0, {t: {0: 0, 1: 0}}).session_id
    assert sid != 0

    resp = fetch(c, 12, sid, 5, {})
    assert resp.error_code == ErrorCode.INVALID_FETCH_SESSION_EPOCH
    assert resp.session_id == 0 and resp.responses == []
    resp = fetch(c, 12, sid ^ 0x5A5A5A, 1, {})
    assert resp.error_code == ErrorCode.FETCH_SESSION_ID_NOT_FOUND and resp.session_id == 0
    resp = fetch(c, 12, 0, 1, {})
    assert resp.error_code == ErrorCode.FETCH_SESSION_ID_NOT_FOUND
    # the errors left the session alone: its expected epoch still works
    resp = fetch(c, 12, sid, 1, {t: {0: 1}})
    assert resp.error_code == 0 and resp.session_id == sid
    # the same epoch twice is a stale retry
    assert fetch(c, 12, sid, 1, {}).error_code == ErrorCode.INVALID_FETCH_SESSION_EPOCH

    # epoch -1 closes it: a full sessionless answer, then the id is gone
    resp = fetch(c, 12, sid, -1, {t: {0: 0}})
    assert resp.error_code == 0 and resp.session_id == 0
    assert answered(resp) == {(t, 0): (0, 1, [b"x"])}
    assert fetch(c, 12, sid, 2, {}).error_code == ErrorCode.FETCH_SESSION_ID_NOT_FOUND

    # epoch 0 naming an old session replaces it with a new one
    sid = fetch(c, 12, 0, 0, {t: {0: 0}}).session_id
    sid2 = fetch(c, 12, sid, 0, {t: {1: 0}}).session_id
    assert sid2 not in (0, sid)
    assert fetch(c, 12, sid, 1, {}).error_code == ErrorCode.FETCH_SESSION_ID_NOT_FOUND
    assert fetch(c, 12, sid2, 1, {}).error_code == 0
    c.close()


def test_session_by_topic_id(shared_broker, topic_name):
    make_topic(shared_broker.bootstrap, topic_name, partitions=2)
    c = RawClient(shared_broker.port)
    tid = topic_id(c, topic_name)
    produce(c, topic_name, 1, [b"y"])
    resp = fetch(c, 13, 0, 0, {tid: {0: 0, 1: 0}})
    sid = resp.session_id
    assert sid != 0 and [t.topic_id for t in resp.responses] == [tid]
    resp = fetch(c, 13, sid, 1, {tid: {1: 1}})
    assert resp.error_code == 0 and resp.responses == []
    produce(c, topic_name, 0, [b"z"])
    resp = fetch(c, 13, sid, 2, {})
    assert [t.topic_id for t in resp.responses] == [tid]
    assert [(p.partition_index, p.high_watermark) for p in resp.responses[0].partitions] == [(0, 1)]

    # a name-keyed request to an id-keyed session
    resp = fetch(c, 12, sid, 3, {})
    assert resp.error_code == ErrorCode.FETCH_SESSION_TOPIC_ID_ERROR and resp.session_id == 0
    # an unknown topic id in the session: UNKNOWN_TOPIC_ID for it, every time
    ghost = uuid.uuid4()
    for epoch in (3, 4):
        resp = fetch(c, 13, sid, epoch, {tid: {0: 1}, ghost: {0: 0}} if epoch == 3 else {})
        assert [(t.topic_id, [p.error_code for p in t.partitions]) for t in resp.responses] == [
            (ghost, [ErrorCode.UNKNOWN_TOPIC_ID])
        ]
    resp = fetch(c, 13, sid, 5, {}, {ghost: [0]})
    assert resp.error_code == 0 and resp.responses == []

    # and an id-keyed request to a name-keyed session
    sid = fetch(c, 12, 0, 0, {topic_name: {0: 0}}).session_id
    resp = fetch(c, 13, sid, 1, {})
    assert resp.error_code == ErrorCode.FETCH_SESSION_TOPIC_ID_ERROR
    c.close()


def test_session_long_poll_wakes_on_any_partition(shared_broker, topic_name):
    make_topic(shared_broker.bootstrap, topic_name, partitions=8)
    c = RawClient(shared_broker.port)
    t = topic_name
    sid = fetch(c, 12, 0, 0, {t: dict.fromkeys(range(8), 0)}).session_id
    assert sid != 0
    producer = RawClient(shared_broker.port)
    timer = threading.Timer(0.5, produce, (producer, t, 5, [b"late"]))
    timer.start()
    try:
        resp = fetch(c, 12, sid, 1, {}, max_wait=30_000, min_bytes=1)
    finally:
        timer.join()
        producer.close()
    assert answered(resp) == {(t, 5): (0, 1, [b"late"])}
    c.close()


def test_sessionless_fetches_unchanged(shared_broker, topic_name):
    make_topic(shared_broker.bootstrap, topic_name, partitions=2)
    c = RawClient(shared_broker.port)
    produce(c, topic_name, 0, [b"s"])
    for version in (4, 7, 12):
        resp = fetch(c, version, 0, -1, {topic_name: {0: 0, 1: 0}})
        assert resp.error_code == 0 and resp.session_id == 0
        assert answered(resp) == {(topic_name, 0): (0, 1, [b"s"]), (topic_name, 1): (0, 0, [])}
    c.close()


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def test_cache_bound_eviction_and_metrics(broker_factory, topic_name):
    # one slot, sessions evictable as soon as they are idle for a moment
    b = broker_factory(
        broker__max_incremental_fetch_session_cache_slots=1,
        broker__min_incremental_fetch_session_eviction_ms=0,
    )
    make_topic(b.bootstrap, topic_name, partitions=3)
    c = RawClient(b.port)
    t = topic_name
    a = fetch(c, 12, 0, 0, {t: {0: 0}}).session_id
    assert a != 0
    assert metric(b.metrics_port, "shazamq_fetch_sessions") == 1
    assert metric(b.metrics_port, "shazamq_fetch_session_partitions") == 1
    time.sleep(0.01)  # let `a` be idle for longer than 0 ms
    bigger = fetch(c, 12, 0, 0, {t: {0: 0, 1: 0, 2: 0}}).session_id
    assert bigger not in (0, a)
    assert fetch(c, 12, a, 1, {}).error_code == ErrorCode.FETCH_SESSION_ID_NOT_FOUND
    assert fetch(c, 12, bigger, 1, {}).error_code == 0
    assert metric(b.metrics_port, "shazamq_fetch_sessions") == 1
    assert metric(b.metrics_port, "shazamq_fetch_session_partitions") == 3
    assert metric(b.metrics_port, "shazamq_fetch_session_evictions_total") == 1
    c.close()


def test_full_cache_refuses_young_sessions(broker_factory, topic_name):
    b = broker_factory(broker__max_incremental_fetch_session_cache_slots=1)
    make_topic(b.bootstrap, topic_name, partitions=2)
    c = RawClient(b.port)
    a = fetch(c, 12, 0, 0, {topic_name: {0: 0}}).session_id
    assert a != 0
    # full, and `a` is neither idle nor old enough to be displaced: sessionless answer
    resp = fetch(c, 12, 0, 0, {topic_name: {0: 0, 1: 0}})
    assert resp.error_code == 0 and resp.session_id == 0 and len(answered(resp)) == 2
    assert fetch(c, 12, a, 1, {}).error_code == 0
    c.close()


def test_disabled_cache_answers_sessionless(broker_factory, topic_name):
    b = broker_factory(broker__max_incremental_fetch_session_cache_slots=0)
    make_topic(b.bootstrap, topic_name)
    c = RawClient(b.port)
    resp = fetch(c, 12, 0, 0, {topic_name: {0: 0}})
    assert resp.error_code == 0 and resp.session_id == 0
    assert fetch(c, 12, 1, 1, {}).error_code == ErrorCode.FETCH_SESSION_ID_NOT_FOUND
    c.close()


def test_malformed_session_requests(shared_broker, topic_name):
    import socket
    import struct

    from shazamq.protocol import framing

    make_topic(shared_broker.bootstrap, topic_name, partitions=2)
    c = RawClient(shared_broker.port)
    t = topic_name
    produce(c, t, 0, [b"m"])
    sid = fetch(c, 12, 0, 0, {t: {0: 0, 1: 0}}).session_id
    assert sid != 0

    # values no client sends: an epoch below -1, partitions that do not exist, forgetting
    # what the session never had
    assert fetch(c, 12, sid, -7, {}).error_code == ErrorCode.INVALID_FETCH_SESSION_EPOCH
    resp = fetch(c, 12, sid, 1, {t: {0: 1, -3: 5}}, {t: [99, -1], "nope": [0]})
    assert answered(resp) == {(t, -3): (ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, -1, [])}
    resp = fetch(c, 12, sid, 2, {}, {t: [-3]})
    assert resp.error_code == 0 and resp.responses == []

    # an incremental request cut short or with a corrupt tail: that connection
    # is closed or answered with an error, never the broker harmed
    req = FetchRequest(
        max_wait_ms=0,
        session_id=sid,
        session_epoch=3,
        topics=[FetchTopic(topic=t, partitions=[FetchPartition(partition=1, fetch_offset=0)])],
        forgotten_topics_data=[ForgottenTopic(topic=t, partitions=[0])],
    )
    good = framing.encode_request(req, 12, 7, "bad")[4:]
    cuts = [good[:n] for n in range(10, len(good), 9)]
    corrupt_tail = good[:-8] + b"\xff\xff\xff\x7f" + good[-4:]
    for payload in [*cuts, corrupt_tail]:
        s = socket.create_connection(("127.0.0.1", shared_broker.port), timeout=15)
        s.sendall(struct.pack(">i", len(payload)) + payload)
        s.shutdown(socket.SHUT_WR)
        try:
            while s.recv(65536):
                pass
        except ConnectionError:
            pass
        s.close()
    # the session is intact: the malformed frames never reached it as requests
    resp = fetch(c, 12, sid, 3, {t: {0: 0}})
    assert resp.error_code == 0 and answered(resp) == {(t, 0): (0, 1, [b"m"])}
    c.close()
