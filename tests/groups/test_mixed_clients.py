"""An online upgrade with real clients: kafka-python and aiokafka (classic protocol) and
confluent-kafka (``group.protocol: consumer``) in one group, on one topic of several
partitions.

The two classic consumers form a classic group; a consumer-protocol consumer joins and the
group becomes a consumer group whose classic members the broker drives; the broker
restarts in between; the consumer-protocol member leaves and the classic members go on as
a classic group. Records are produced all along. Asserted on data: every partition has
at most one owner at any time (rebalance callbacks), every record is consumed, no record
is consumed again once its offset was committed, and the group's type at each stage.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kafka_wire import WireClient
from test_consumer_clients import close, commit_sync

from shazamq.protocol.messages.consumer_group_describe_request import (
    ConsumerGroupDescribeRequest,
)
from shazamq.protocol.messages.describe_groups_request import DescribeGroupsRequest
from shazamq.protocol.messages.list_groups_request import ListGroupsRequest

PARTITIONS = 6


class Ledger:
    """What every consumer saw, in one order: assignments, records and commits."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.owner: dict[int, str] = {}
        self.overlaps: list[str] = []
        self.committed: dict[int, int] = {}  # partition -> highest acknowledged commit
        self.consumed: dict[tuple[int, int], int] = {}  # (partition, offset) -> times
        self.reconsumed: list[tuple[int, int, str]] = []
        self.assigned: dict[str, set[int]] = {}

    def assign(self, who: str, parts: list[int]) -> None:
        with self.lock:
            for p in parts:
                holder = self.owner.get(p)
                if holder is not None and holder != who:
                    self.overlaps.append(f"partition {p} given to {who} while {holder} has it")
                self.owner[p] = who
            self.assigned.setdefault(who, set()).update(parts)

    def revoke(self, who: str, parts: list[int]) -> None:
        with self.lock:
            for p in parts:
                if self.owner.get(p) == who:
                    del self.owner[p]
            self.assigned.setdefault(who, set()).difference_update(parts)

    def consume(self, who: str, p: int, offset: int) -> None:
        with self.lock:
            if offset < self.committed.get(p, 0):
                self.reconsumed.append((p, offset, who))
            self.consumed[(p, offset)] = self.consumed.get((p, offset), 0) + 1

    def commit(self, p: int, next_offset: int) -> None:
        with self.lock:
            self.committed[p] = max(self.committed.get(p, 0), next_offset)

    def owned_by(self, who: str) -> set[int]:
        with self.lock:
            return set(self.assigned.get(who, set()))


def classic_consumer(b: str, topic: str, group: str, name: str, ledger: Ledger, stop) -> None:
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP
    from kafka.consumer.subscription_state import ConsumerRebalanceListener
    from kafka.errors import KafkaError as KPError
    from kafka.structs import OffsetAndMetadata

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked) -> None:
            ledger.revoke(name, [tp.partition for tp in revoked])

        def on_partitions_assigned(self, assigned) -> None:
            ledger.assign(name, [tp.partition for tp in assigned])

    c = KafkaConsumer(
        bootstrap_servers=b,
        group_id=group,
        client_id=name,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=10000,
        heartbeat_interval_ms=300,
        max_poll_records=20,
    )
    try:
        c.subscribe([topic], listener=Listener())
        while not stop.is_set():
            try:
                batch = c.poll(timeout_ms=200)
            except KPError:
                continue  # the coordinator moved or restarted: the client finds it again
            for tp, records in batch.items():
                for r in records:
                    ledger.consume(name, tp.partition, r.offset)
                last = records[-1].offset + 1
                try:
                    c.commit({KTP(topic, tp.partition): OffsetAndMetadata(last, "", -1)})
                except KPError:
                    continue  # refused (a rebalance): whoever gets it next reads it again
                ledger.commit(tp.partition, last)
    finally:
        ledger.revoke(name, list(range(PARTITIONS)))
        with contextlib.suppress(Exception):
            c.close(autocommit=False)


def aio_classic_consumer(b: str, topic: str, group: str, name: str, ledger: Ledger, stop) -> None:
    """The same classic member, as aiokafka (asyncio) runs it."""
    import asyncio

    from aiokafka import AIOKafkaConsumer
    from aiokafka.abc import ConsumerRebalanceListener
    from aiokafka.errors import KafkaError as AIOError
    from aiokafka.structs import TopicPartition as ATP

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked) -> None:
            ledger.revoke(name, [tp.partition for tp in revoked])

        def on_partitions_assigned(self, assigned) -> None:
            ledger.assign(name, [tp.partition for tp in assigned])

    async def run() -> None:
        c = AIOKafkaConsumer(
            bootstrap_servers=b,
            group_id=group,
            client_id=name,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=10000,
            heartbeat_interval_ms=300,
            max_poll_records=20,
        )
        await c.start()
        try:
            c.subscribe([topic], listener=Listener())
            while not stop.is_set():
                try:
                    batch = await c.getmany(timeout_ms=200)
                except AIOError:
                    continue
                for tp, records in batch.items():
                    for r in records:
                        ledger.consume(name, tp.partition, r.offset)
                    last = records[-1].offset + 1
                    try:
                        await c.commit({ATP(topic, tp.partition): last})
                    except AIOError:
                        continue
                    ledger.commit(tp.partition, last)
        finally:
            ledger.revoke(name, list(range(PARTITIONS)))
            with contextlib.suppress(Exception):
                await c.stop()

    asyncio.run(run())


def modern_consumer(b: str, topic: str, group: str, ledger: Ledger, stop) -> None:
    name = "modern"
    c = Consumer(
        {
            "bootstrap.servers": b,
            "group.id": group,
            "group.protocol": "consumer",
            "client.id": name,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        c.subscribe(
            [topic],
            on_assign=lambda _c, ps: ledger.assign(name, [tp.partition for tp in ps]),
            on_revoke=lambda _c, ps: ledger.revoke(name, [tp.partition for tp in ps]),
            on_lost=lambda _c, ps: ledger.revoke(name, [tp.partition for tp in ps]),
        )
        while not stop.is_set():
            m = c.poll(0.2)
            if m is None or m.error():
                continue
            ledger.consume(name, m.partition(), m.offset())
            try:
                commit_sync(c, m)
            except Exception:  # a commit lost to the restart: the record may come back
                continue
            ledger.commit(m.partition(), m.offset() + 1)
    finally:
        ledger.revoke(name, list(range(PARTITIONS)))
        close(c)


def wait_for(what: str, check, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def group_type(b: str, group: str) -> str | None:
    with WireClient(b) as c:
        listed = {g.group_id: g.group_type for g in c.call(ListGroupsRequest(), 5).groups}
    return listed.get(group)


def test_classic_and_consumer_members_share_a_group(broker_factory) -> None:
    broker = broker_factory(groups__consumer_heartbeat_interval_ms=300)
    b = broker.bootstrap
    topic = f"mixed-{uuid.uuid4().hex[:6]}"
    group = f"mixed-g-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": b})
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])[
        topic
    ].result(timeout=15)
    ledger = Ledger()
    produced = 0

    def produce(n: int) -> None:
        nonlocal produced
        p = Producer({"bootstrap.servers": b, "enable.idempotence": True})
        for _ in range(n):
            p.produce(topic, value=str(produced).encode(), partition=produced % PARTITIONS)
            produced += 1
        assert p.flush(30) == 0

    stops = {n: threading.Event() for n in ("k1", "k2", "modern")}
    threads = {
        n: threading.Thread(target=run, args=(b, topic, group, n, ledger, stops[n]), daemon=True)
        for n, run in (("k1", classic_consumer), ("k2", aio_classic_consumer))
    }
    threads["modern"] = threading.Thread(
        target=modern_consumer, args=(b, topic, group, ledger, stops["modern"]), daemon=True
    )
    try:
        produce(300)
        threads["k1"].start()
        threads["k2"].start()
        wait_for("a classic group of two", lambda: ledger.owned_by("k1") and ledger.owned_by("k2"))
        assert group_type(b, group) == "classic"

        threads["modern"].start()
        produce(300)
        wait_for("the consumer-protocol member's partitions", lambda: ledger.owned_by("modern"))
        assert group_type(b, group) == "consumer"
        with WireClient(b) as c:
            d = c.call(ConsumerGroupDescribeRequest(group_ids=[group]), 0).groups[0]
            assert {m.client_id for m in d.members} == {"k1", "k2", "modern"}
            dg = c.call(DescribeGroupsRequest(groups=[group]), 5).groups[0]
            kinds = {m.client_id: bool(m.member_metadata) for m in dg.members}
            assert kinds == {"k1": True, "k2": True, "modern": False}

        broker.restart()  # the converted group is loaded back from __consumer_offsets
        produce(300)
        wait_for(
            "all three consuming after the restart",
            lambda: all(ledger.owned_by(n) for n in ("k1", "k2", "modern")),
        )

        stops["modern"].set()  # the consumer-protocol member leaves
        threads["modern"].join(timeout=60)
        wait_for("the classic group again", lambda: group_type(b, group) == "classic")
        produce(300)
        wait_for(
            "the classic members sharing every partition",
            lambda: (
                ledger.owned_by("k1") | ledger.owned_by("k2") == set(range(PARTITIONS))
                and not ledger.owned_by("modern")
            ),
        )
        wait_for(
            "every record consumed and committed",
            lambda: sum(ledger.committed.values()) == produced,
        )
        with WireClient(b) as c:
            dg = c.call(DescribeGroupsRequest(groups=[group]), 5).groups[0]
            assert dg.protocol_type == "consumer" and {m.client_id for m in dg.members} == {
                "k1",
                "k2",
            }
    finally:
        for s in stops.values():
            s.set()
        for t in threads.values():
            if t.is_alive() or t.ident is not None:
                t.join(timeout=60)
    assert not ledger.overlaps, ledger.overlaps[:5]
    assert not ledger.reconsumed, ledger.reconsumed[:5]
    assert len(ledger.consumed) == produced == 1200
    assert ledger.committed == {p: produced // PARTITIONS for p in range(PARTITIONS)}
