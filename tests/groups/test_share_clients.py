"""Share groups (KIP-932) with confluent-kafka's ShareConsumer (librdkafka 2.16).

Covers: four share consumers on one partition share the records, each consumed once in
total; records held by a member that dies go to a ShareConsumer: at once when its
connection closes (its share session ends with it, as in Kafka), once their acquisition
lock ends when it hangs with the connection open; a broker restart keeps what was
acknowledged (nothing redelivered, new records still flow).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import pytest
from confluent_kafka import ShareConsumer
from share_wire import ShareMember, create_topic, offsets, produce, set_group

pytestmark = pytest.mark.timeout(120)

BROKER = {
    "groups__share_state_topic_num_partitions": 2,
    "groups__share_min_record_lock_duration_ms": 300,
}


def consumer(bootstrap: str, group: str, **extra: object) -> ShareConsumer:
    c = ShareConsumer({"bootstrap.servers": bootstrap, "group.id": group, **extra})
    return c


def drain(c: ShareConsumer, want: int, timeout: float) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        for m in c.poll(0.5):
            if m.error() is None:
                got.append(m.value())
    return got


def test_four_consumers_on_one_partition_share_the_records(broker_factory):
    b = broker_factory(**BROKER)
    topic, group = f"t-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    create_topic(b.bootstrap, topic, 1)
    set_group(b.bootstrap, group, share_auto_offset_reset="earliest")
    n = 400
    sent = [f"r{i}".encode() for i in range(n)]
    produce(b.bootstrap, topic, sent)
    got: dict[int, list[bytes]] = {i: [] for i in range(4)}
    lock = threading.Lock()
    done = threading.Event()

    def run(i: int) -> None:
        c = consumer(b.bootstrap, group, **{"max.poll.records": 10})
        c.subscribe([topic])
        try:
            deadline = time.monotonic() + 60
            while not done.is_set() and time.monotonic() < deadline:
                batch = [m.value() for m in c.poll(0.5) if m.error() is None]
                with lock:
                    got[i].extend(batch)
                    if sum(len(v) for v in got.values()) >= n:
                        done.set()
                time.sleep(0.02)  # each member slow enough for the others to get a share
            c.commit_sync(15)  # the last poll's records: accepted, not released by close
        finally:
            c.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    everything = [v for vs in got.values() for v in vs]
    assert Counter(everything) == Counter(sent)  # each record consumed once in total
    assert sum(1 for vs in got.values() if vs) >= 2, {i: len(v) for i, v in got.items()}


@pytest.mark.parametrize("death", ["socket closed", "hung"])
def test_records_of_a_dead_member_are_redelivered(broker_factory, death):
    b = broker_factory(**BROKER)
    topic, group = f"t-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    tid = create_topic(b.bootstrap, topic, 1)
    set_group(
        b.bootstrap,
        group,
        share_auto_offset_reset="earliest",
        share_record_lock_duration_ms="1000",
    )
    produce(b.bootstrap, topic, [f"v{i}".encode() for i in range(10)])
    dead = ShareMember(b.bootstrap, group, topic, tid)
    dead.join()
    r = dead.fetch(max_records=100, max_wait_ms=2000)
    assert r.acquisition_lock_timeout_ms == 1000
    assert offsets(r) == list(range(10))
    if death == "socket closed":
        dead.c.sock.close()  # gone without a word
    # else it holds the connection but never acknowledges: the locks end after a second
    c = consumer(b.bootstrap, group)
    c.subscribe([topic])
    try:
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 10 and time.monotonic() < deadline:
            got.extend(m for m in c.poll(0.5) if m.error() is None)
        assert sorted(m.value() for m in got) == sorted(f"v{i}".encode() for i in range(10))
        assert {m.delivery_count() for m in got} == {2}  # the second delivery of each
    finally:
        c.close()


def test_restart_keeps_what_was_acknowledged(broker_factory):
    b = broker_factory(**BROKER)
    topic, group = f"t-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    create_topic(b.bootstrap, topic, 1)
    set_group(b.bootstrap, group, share_auto_offset_reset="earliest")
    produce(b.bootstrap, topic, [f"a{i}".encode() for i in range(20)])
    c = consumer(b.bootstrap, group)
    c.subscribe([topic])
    got = drain(c, 20, 30)
    assert sorted(got) == sorted(f"a{i}".encode() for i in range(20))
    assert c.commit_sync(15) is not None  # the implicit acknowledgements, now
    c.close()
    b.stop()
    b.start()
    produce(b.bootstrap, topic, [f"b{i}".encode() for i in range(5)])
    c = consumer(b.bootstrap, group)
    c.subscribe([topic])
    try:
        got = drain(c, 5, 30)
        got += drain(c, 1, 2)  # anything redelivered would show up here too
        assert sorted(got) == sorted(f"b{i}".encode() for i in range(5))
    finally:
        c.close()
