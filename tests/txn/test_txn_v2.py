"""Transactions v2 (KIP-890) at the wire, and aborting a hanging transaction by hand.

Covers: the hanging transaction a v1 broker lets a late produce open (the EndTxn overtook
a produce to a partition never added) refused by verification, with the last stable
offset and a ``read_committed`` consumer unaffected; transaction.version 2 finalized in
ApiVersions; EndTxn v5 bumping the epoch at every end (commit and abort), its retry
answered with the same id and epoch, markers written with the bumped epoch and a produce
from before the end fenced; partitions and the group partition added by the produce and
the TxnOffsetCommit of a v2 producer; a hanging transaction made by a restart that lost
the coordinator's state, shown by DescribeProducers and ended by WriteTxnMarkers as
``kafka-transactions.sh abort`` sends it; malformed requests of these APIs.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import struct
import time
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as CTopicPartition
from kafka_wire import WireClient
from test_txn_protocol import Txn, create_topic

from shazamq.protocol import framing
from shazamq.protocol.errors import ErrorCode as E
from shazamq.protocol.messages.add_partitions_to_txn_request import (
    AddPartitionsToTxnRequest,
    AddPartitionsToTxnTopic,
    AddPartitionsToTxnTransaction,
)
from shazamq.protocol.messages.api_versions_request import ApiVersionsRequest
from shazamq.protocol.messages.describe_producers_request import (
    DescribeProducersRequest,
    TopicRequest,
)
from shazamq.protocol.messages.describe_transactions_request import (
    DescribeTransactionsRequest,
)
from shazamq.protocol.messages.end_txn_request import EndTxnRequest
from shazamq.protocol.messages.list_offsets_request import (
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsTopic,
)
from shazamq.protocol.messages.list_transactions_request import ListTransactionsRequest
from shazamq.protocol.messages.txn_offset_commit_request import (
    TxnOffsetCommitRequest,
    TxnOffsetCommitRequestPartition,
    TxnOffsetCommitRequestTopic,
)
from shazamq.protocol.messages.write_txn_markers_request import (
    WritableTxnMarker,
    WritableTxnMarkerTopic,
    WriteTxnMarkersRequest,
)

LATEST = -1


def end_v5(t: Txn, commit: bool, epoch: int | None = None):
    r = t.c.call(
        EndTxnRequest(
            transactional_id=t.txn_id,
            producer_id=t.pid,
            producer_epoch=t.epoch if epoch is None else epoch,
            committed=commit,
        ),
        5,
    )
    return r.error_code, r.producer_id, r.producer_epoch


def offsets(c: WireClient, topic: str, partition: int) -> tuple[int, int]:
    """(high watermark, last stable offset) of a partition."""
    found = []
    for isolation in (0, 1):
        r = c.call(
            ListOffsetsRequest(
                replica_id=-1,
                isolation_level=isolation,
                topics=[
                    ListOffsetsTopic(
                        name=topic,
                        partitions=[
                            ListOffsetsPartition(partition_index=partition, timestamp=LATEST)
                        ],
                    )
                ],
            ),
            4,
        )
        part = r.topics[0].partitions[0]
        assert part.error_code == 0
        found.append(part.offset)
    return found[0], found[1]


def read_committed(bootstrap: str, topic: str, partition: int, expect: int) -> list[bytes]:
    """Values a read_committed consumer gets from the start, polling until ``expect``."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"rc-{uuid.uuid4().hex[:6]}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    got: list[bytes] = []
    try:
        c.assign([CTopicPartition(topic, partition, 0)])
        deadline = time.monotonic() + 30
        while len(got) < expect and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                got.append(m.value())
    finally:
        c.close()
    return got


def produce_plain(bootstrap: str, topic: str, partition: int, value: bytes) -> None:
    p = Producer({"bootstrap.servers": bootstrap})
    p.produce(topic, value=value, partition=partition)
    assert p.flush(15) == 0


def test_late_produce_after_abort_cannot_open_a_hanging_transaction(shared_broker):
    bootstrap = shared_broker.bootstrap
    topic = f"hang-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, 2)
    with WireClient(bootstrap) as c:
        t = Txn(c, f"hang-{topic}")
        assert t.init() == 0
        assert t.add(topic, 0) == 0  # a v1 producer
        assert t.produce(topic, 0) == 0
        assert t.end(commit=False) == 0
        # the produce to p1 the producer sent before aborting arrives only now: same id,
        # epoch and sequence. A v1 broker appends it and p1 hangs; here it is refused.
        assert t.produce(topic, 1) == E.INVALID_TXN_STATE
        # a late batch to a partition that was in the ended transaction is refused too
        t.seq[(topic, 0)] = 1
        assert t.produce(topic, 0) == E.INVALID_TXN_STATE
        r = c.call(
            DescribeProducersRequest(topics=[TopicRequest(name=topic, partition_indexes=[1])]), 0
        )
        assert r.topics[0].partitions[0].active_producers == []
        produce_plain(bootstrap, topic, 1, b"after")
        hw, lso = offsets(c, topic, 1)
        assert (hw, lso) == (1, 1)
        # the next transaction of the v1 producer still needs its AddPartitionsToTxn
        t.seq.clear()
        assert t.produce(topic, 1) == E.INVALID_TXN_STATE
        assert t.add(topic, 1) == 0
        assert t.produce(topic, 1) == 0
        assert t.end(commit=True) == 0
    assert read_committed(bootstrap, topic, 1, 2) == [b"after", b"v"]


def test_transaction_version_2_is_finalized(shared_broker):
    with WireClient(shared_broker.bootstrap) as c:
        r = c.call(ApiVersionsRequest(client_software_name="t", client_software_version="1"), 3)
        finalized = {f.name: f.max_version_level for f in r.finalized_features}
        assert finalized["transaction.version"] == 2
        versions = {k.api_key: k.max_version for k in r.api_keys}
        assert versions[26] >= 5 and versions[24] >= 5 and versions[27] >= 1


def test_v2_epoch_bump_and_implicit_partitions(shared_broker):
    bootstrap = shared_broker.bootstrap
    topic = f"v2-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, 2)
    with WireClient(bootstrap) as c:
        t = Txn(c, f"v2-{topic}")
        assert t.init() == 0 and t.epoch == 0
        pid = t.pid
        # no AddPartitionsToTxn: the produce adds its partition
        assert t.produce(topic, 0) == 0
        r = c.call(DescribeTransactionsRequest(transactional_ids=[t.txn_id]), 0)
        d = r.transaction_states[0]
        assert (d.transaction_state, [(x.topic, x.partitions) for x in d.topics]) == (
            "Ongoing",
            [(topic, [0])],
        )
        # the group partition is added by the TxnOffsetCommit itself
        r = c.call(
            TxnOffsetCommitRequest(
                transactional_id=t.txn_id,
                group_id=f"g-{topic}",
                producer_id=pid,
                producer_epoch=0,
                topics=[
                    TxnOffsetCommitRequestTopic(
                        name=topic,
                        partitions=[
                            TxnOffsetCommitRequestPartition(partition_index=0, committed_offset=1)
                        ],
                    )
                ],
            ),
            3,
        )
        assert r.topics[0].partitions[0].error_code == 0
        assert end_v5(t, commit=True) == (0, pid, 1)
        assert end_v5(t, commit=True) == (0, pid, 1)  # a retry: the same answer
        assert end_v5(t, commit=False)[0] == E.INVALID_TXN_STATE
        # the COMMIT marker carries the bumped epoch: the log fences the old one
        r = c.call(
            DescribeProducersRequest(topics=[TopicRequest(name=topic, partition_indexes=[0])]), 0
        )
        states = [
            (s.producer_id, s.producer_epoch, s.current_txn_start_offset)
            for s in r.topics[0].partitions[0].active_producers
        ]
        assert states == [(pid, 1, -1)]
        # a produce the producer sent before committing, arriving late: fenced everywhere
        assert t.produce(topic, 0, epoch=0) == E.INVALID_PRODUCER_EPOCH
        assert t.produce(topic, 1, epoch=0) == E.INVALID_PRODUCER_EPOCH
        # the next transaction, under epoch 1, adds p1 by producing and is aborted
        t.epoch = 1
        t.seq.clear()
        assert t.produce(topic, 1) == 0
        assert end_v5(t, commit=False) == (0, pid, 2)
        assert end_v5(t, commit=True, epoch=0)[0] == E.PRODUCER_FENCED
        # an end with nothing produced still moves the epoch on
        t.epoch = 2
        assert end_v5(t, commit=False) == (0, pid, 3)
        r = c.call(DescribeTransactionsRequest(transactional_ids=[t.txn_id]), 0)
        d = r.transaction_states[0]
        assert (d.transaction_state, d.producer_epoch, d.topics) == ("CompleteAbort", 3, [])
        for p in (0, 1):
            hw, lso = offsets(c, topic, p)
            assert hw == lso == 2  # a record and its marker each
    assert read_committed(bootstrap, topic, 0, 1) == [b"v"]
    produce_plain(bootstrap, topic, 1, b"plain")
    assert read_committed(bootstrap, topic, 1, 1) == [b"plain"]  # the aborted one hidden


def test_broker_side_add_partitions_verifies(shared_broker):
    """AddPartitionsToTxn v4/v5, as a partition leader sends it to a coordinator."""
    bootstrap = shared_broker.bootstrap
    topic = f"verify-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, 2)
    with WireClient(bootstrap) as c:
        t = Txn(c, f"verify-{topic}")
        assert t.init() == 0
        assert t.add(topic, 0) == 0

        def verify(version: int, parts: list[int], epoch: int, verify_only: bool = True):
            r = c.call(
                AddPartitionsToTxnRequest(
                    transactions=[
                        AddPartitionsToTxnTransaction(
                            transactional_id=t.txn_id,
                            producer_id=t.pid,
                            producer_epoch=epoch,
                            verify_only=verify_only,
                            topics=[AddPartitionsToTxnTopic(name=topic, partitions=parts)],
                        )
                    ]
                ),
                version,
            )
            assert r.error_code == 0
            (result,) = r.results_by_transaction
            assert result.transactional_id == t.txn_id
            return {
                p.partition_index: p.partition_error_code
                for x in result.topic_results
                for p in x.results_by_partition
            }

        assert verify(4, [0, 1], t.epoch) == {0: 0, 1: E.INVALID_TXN_STATE}
        assert verify(5, [0], t.epoch + 1) == {0: E.INVALID_PRODUCER_EPOCH}
        assert verify(5, [1], t.epoch, verify_only=False) == {1: 0}
        assert verify(4, [0, 1], t.epoch) == {0: 0, 1: 0}
        assert t.end(commit=False) == 0


def _frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def _answered_or_closed(port: int, data: bytes) -> None:
    """Send ``data``; the broker answers with an error or closes, within the timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(data)
        with contextlib.suppress(ConnectionError):
            s.recv(1)


def test_malformed_requests_of_the_new_apis(shared_broker):
    requests = [
        (
            AddPartitionsToTxnRequest(
                transactions=[
                    AddPartitionsToTxnTransaction(
                        transactional_id="x",
                        producer_id=1,
                        producer_epoch=0,
                        verify_only=True,
                        topics=[AddPartitionsToTxnTopic(name="t", partitions=[0, 1])],
                    )
                ]
            ),
            5,
        ),
        (EndTxnRequest(transactional_id="x", producer_id=1, producer_epoch=0), 5),
        (
            WriteTxnMarkersRequest(
                markers=[
                    WritableTxnMarker(
                        producer_id=1,
                        producer_epoch=0,
                        transaction_result=False,
                        topics=[WritableTxnMarkerTopic(name="t", partition_indexes=[0])],
                        coordinator_epoch=0,
                    )
                ]
            ),
            1,
        ),
        (DescribeTransactionsRequest(transactional_ids=["x", "y"]), 0),
        (ListTransactionsRequest(state_filters=["Ongoing"], producer_id_filters=[1]), 1),
        (DescribeProducersRequest(topics=[TopicRequest(name="t", partition_indexes=[0])]), 0),
    ]
    for request, version in requests:
        whole = framing.encode_request(request, version, 7, "bad")[4:]
        head = 14  # header v2: key, version, correlation id, client id "bad", no tags
        for body in (
            whole[: head + (len(whole) - head) // 2],  # truncated
            whole[:head] + b"\xff" * (len(whole) - head),  # impossible lengths, varints
            whole + b"\x00\x01\x02",  # trailing bytes
        ):
            _answered_or_closed(shared_broker.port, _frame(body))
    # the broker is still serving
    with WireClient(shared_broker.bootstrap) as c:
        r = c.call(ListTransactionsRequest(), 1)
        assert r.error_code == 0


def _hanging_transaction(broker_factory):
    """A broker whose partition holds an open transaction its coordinator forgot: the
    state topic is lost while the broker is down (the way a disk or an operator loses
    it). Returns (broker, topic, producer id, epoch)."""
    b = broker_factory()
    topic = f"lost-{uuid.uuid4().hex[:8]}"
    create_topic(b.bootstrap, topic, 1)
    with WireClient(b.bootstrap) as c:
        t = Txn(c, f"lost-{topic}")
        assert t.init() == 0
        assert t.add(topic, 0) == 0
        assert t.produce(topic, 0) == 0
    b.stop()
    lost = [d for d in b.data_dir.rglob("__transaction_state-*") if d.is_dir()]
    assert lost
    for d in lost:
        shutil.rmtree(d)
    b.start()
    return b, topic, t


def test_admin_aborts_a_hanging_transaction(broker_factory):
    b, topic, t = _hanging_transaction(broker_factory)
    produce_plain(b.bootstrap, topic, 0, b"behind")
    with WireClient(b.bootstrap) as c:
        # the coordinator knows nothing of it, so it will never time out
        r = c.call(DescribeTransactionsRequest(transactional_ids=[t.txn_id]), 0)
        assert r.transaction_states[0].error_code == E.TRANSACTIONAL_ID_NOT_FOUND
        r = c.call(ListTransactionsRequest(), 1)
        assert t.txn_id not in [x.transactional_id for x in r.transaction_states]
        hw, lso = offsets(c, topic, 0)
        assert (hw, lso) == (2, 0)  # read_committed consumers are stuck behind it
        # kafka-transactions.sh find-hanging: DescribeProducers shows the open transaction
        r = c.call(
            DescribeProducersRequest(topics=[TopicRequest(name=topic, partition_indexes=[0])]), 0
        )
        (state,) = r.topics[0].partitions[0].active_producers
        assert (state.producer_id, state.producer_epoch, state.current_txn_start_offset) == (
            t.pid,
            t.epoch,
            0,
        )
        # kafka-transactions.sh abort: an ABORT marker written by WriteTxnMarkers
        r = c.call(
            WriteTxnMarkersRequest(
                markers=[
                    WritableTxnMarker(
                        producer_id=state.producer_id,
                        producer_epoch=state.producer_epoch,
                        transaction_result=False,
                        topics=[WritableTxnMarkerTopic(name=topic, partition_indexes=[0])],
                        coordinator_epoch=max(state.coordinator_epoch, 0),
                    )
                ]
            ),
            1,
        )
        assert [
            (p.partition_index, p.error_code) for x in r.markers[0].topics for p in x.partitions
        ] == [(0, 0)]
        hw, lso = offsets(c, topic, 0)
        assert (hw, lso) == (3, 3)
        r = c.call(
            DescribeProducersRequest(topics=[TopicRequest(name=topic, partition_indexes=[0])]), 0
        )
        assert [s.current_txn_start_offset for s in r.topics[0].partitions[0].active_producers] == [
            -1
        ]
    assert read_committed(b.bootstrap, topic, 0, 1) == [b"behind"]
