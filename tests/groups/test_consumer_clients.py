"""confluent-kafka consumers with ``group.protocol: consumer`` against a real broker.

Several members join and leave while records are produced; every record is consumed
exactly once (offsets committed synchronously after processing), the final assignment is
balanced, and the group epoch stays small (no rebalance storm). A static member that
restarts gets its partitions back.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

PARTITIONS = 6


def consumer(bootstrap: str, group: str, **extra: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "group.protocol": "consumer",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **extra,
        }
    )


def close(c: Consumer) -> None:
    """Close once, whatever happened. A consumer of this protocol that is left to the
    garbage collector unclosed makes librdkafka's destroy spin forever while holding the
    GIL, which hangs the whole test run (and pytest-timeout with it)."""
    with contextlib.suppress(RuntimeError):  # already closed
        c.close()


def commit_sync(c: Consumer, m) -> None:
    """Commit after a record, as Kafka's own clients do across an epoch change.

    The coordinator accepts a commit only with the member's current epoch (Kafka's
    ConsumerGroup.validateOffsetCommit), so a commit sent just before a heartbeat
    answer moved the epoch is refused with STALE_MEMBER_EPOCH. librdkafka hands that
    error to a synchronous commit; the Java consumer instead retries with the new epoch.
    Do the same: librdkafka's background heartbeat picks up the new epoch, and the
    commit is sent again while the partition is still assigned here (once revoked, the
    new owner's position rules)."""
    for _ in range(50):
        try:
            c.commit(message=m, asynchronous=False)
            return
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.STALE_MEMBER_EPOCH:
                raise
        owned = {(tp.topic, tp.partition) for tp in c.assignment()}
        if (m.topic(), m.partition()) not in owned:
            return
        time.sleep(0.05)  # a back-off between attempts, not a wait for an event
    raise AssertionError("commit stayed STALE_MEMBER_EPOCH for 50 attempts")


def test_members_join_and_leave_under_load(broker_factory) -> None:
    broker = broker_factory(groups__consumer_heartbeat_interval_ms=500)
    b = broker.bootstrap
    topic = f"load-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": b})
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])[
        topic
    ].result(timeout=15)
    group = "load-group"
    total = 3000
    seen: dict[bytes, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    assigned: set[int] = set()  # the consumers that have been given partitions
    errors: list[Exception] = []

    def run(c: Consumer, until: threading.Event, index: int) -> None:
        def on_assign(_c: Consumer, partitions: list) -> None:
            if partitions:
                with lock:
                    assigned.add(index)

        try:
            c.subscribe([topic], on_assign=on_assign)
            while not until.is_set():
                m = c.poll(0.2)
                if m is None or m.error():
                    continue
                with lock:
                    seen[m.value()] = seen.get(m.value(), 0) + 1
                commit_sync(c, m)
        except Exception as exc:  # reported below; the thread's consumer is closed anyway
            errors.append(exc)
        finally:
            close(c)

    def produce() -> None:
        p = Producer({"bootstrap.servers": b, "enable.idempotence": True})
        for i in range(total):
            p.produce(topic, value=str(i).encode(), partition=i % PARTITIONS)
            if i % 100 == 0:
                p.flush()
                time.sleep(0.05)
        p.flush()

    stops = [threading.Event() for _ in range(4)]
    consumers = [consumer(b, group, **{"client.id": f"c{i}"}) for i in range(4)]

    def wait_assigned(index: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                if index in assigned:
                    return
            time.sleep(0.05)
        raise AssertionError(f"consumer {index} was never given partitions")

    threads: list[threading.Thread] = []
    try:
        threads.append(threading.Thread(target=run, args=(consumers[0], stops[0], 0)))
        threads[0].start()
        producer = threading.Thread(target=produce)
        producer.start()
        # members join one after the other while records flow, then one leaves: the
        # spacing is the scenario (rebalances under load), not a wait for anything
        for i in (1, 2, 3):
            time.sleep(1.0)
            t = threading.Thread(target=run, args=(consumers[i], stops[i], i))
            t.start()
            threads.append(t)
        time.sleep(2.0)
        wait_assigned(3)  # the fourth member took part before one leaves
        stops[1].set()  # one member leaves in the middle
        producer.join()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                if len(seen) >= total:
                    break
            time.sleep(0.2)
        # every record committed (the producer is done): nothing is left that a later
        # rebalance could hand out again
        wanted = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        request = [ConsumerGroupTopicPartitions(group, wanted)]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = admin.list_consumer_group_offsets(request)[group].result(timeout=10)
            if sum(max(tp.offset, 0) for tp in done.topic_partitions) == total:
                break
            time.sleep(0.2)
        # the remaining three converge to a balanced assignment
        desc = None
        for _ in range(50):
            desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
            counts = [len(m.assignment.topic_partitions) for m in desc.members]
            if (
                len(desc.members) == 3
                and sum(counts) == PARTITIONS
                and max(counts) - min(counts) <= 1
            ):
                break
            time.sleep(0.3)
        for s in stops:
            s.set()
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert not errors, errors
        assert len(seen) == total
        dupes = {k: n for k, n in seen.items() if n > 1}
        assert not dupes, f"{len(dupes)} records consumed more than once"
        assert desc is not None and len(desc.members) == 3
        counts = [len(m.assignment.topic_partitions) for m in desc.members]
        assert sum(counts) == PARTITIONS and max(counts) - min(counts) <= 1
        # no storm: 4 joins + 1 leave move the group epoch a handful of times, not hundreds
        from kafka_wire import WireClient

        from shazamq.protocol.messages.consumer_group_describe_request import (
            ConsumerGroupDescribeRequest,
        )

        d = WireClient(b).call(ConsumerGroupDescribeRequest(group_ids=[group]), 0).groups[0]
        assert d.group_epoch <= 12, d.group_epoch
    finally:
        # every consumer closed, also when an assertion or a thread failed above
        for s in stops:
            s.set()
        for t in threads:
            t.join(timeout=30)
        for i, c in enumerate(consumers):  # threads[i] runs consumers[i]
            if i >= len(threads) or not threads[i].is_alive():
                close(c)


def test_static_member_restart_keeps_partitions(broker_factory) -> None:
    broker = broker_factory(groups__consumer_heartbeat_interval_ms=500)
    b = broker.bootstrap
    topic = f"static-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": b})
    admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])[topic].result(
        timeout=15
    )
    group = "static-group"

    def assigned(c: Consumer, want: int) -> set[int]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            c.poll(0.2)
            parts = {tp.partition for tp in c.assignment()}
            if len(parts) == want:
                return parts
        return {tp.partition for tp in c.assignment()}

    made: list[Consumer] = []  # all closed at the end, whatever happens

    def member(instance: str) -> Consumer:
        made.append(consumer(b, group, **{"group.instance.id": instance}))
        return made[-1]

    try:
        a = member("a")
        other = member("b")
        a.subscribe([topic])
        other.subscribe([topic])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            a.poll(0.1)
            other.poll(0.1)
            if len(a.assignment()) == 2 and len(other.assignment()) == 2:
                break
        before = {tp.partition for tp in a.assignment()}
        assert len(before) == 2
        a.close()
        a2 = member("a")
        a2.subscribe([topic])
        after = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            a2.poll(0.1)
            other.poll(0.1)
            after = {tp.partition for tp in a2.assignment()}
            if after:
                break
        assert after == before
        assert {tp.partition for tp in other.assignment()} == {0, 1, 2, 3} - before
    finally:
        for c in made:
            close(c)
