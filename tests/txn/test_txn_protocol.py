"""The transaction APIs at the wire: exact requests, exact error codes.

Covers: InitProducerId without a transactional id (fresh ids, epoch 0) and with one
(epoch bumps); a transactional Produce to a partition not added to the transaction
refused with INVALID_TXN_STATE in a transaction begun by AddPartitionsToTxn (v1), and
one from a fenced epoch with INVALID_PRODUCER_EPOCH;
AddPartitionsToTxn / EndTxn from a fenced epoch refused with PRODUCER_FENCED (v2+) or
INVALID_PRODUCER_EPOCH (older versions); an unknown producer id refused with
INVALID_PRODUCER_ID_MAPPING; EndTxn retries and wrong-way ends; TxnOffsetCommit without
AddOffsetsToTxn refused; DescribeTransactions, ListTransactions (state, producer id and
duration filters) and DescribeProducers for tooling.
"""

from __future__ import annotations

import uuid

from confluent_kafka.admin import AdminClient, NewTopic
from kafka_wire import WireClient

from shazamq.protocol.errors import ErrorCode as E
from shazamq.protocol.messages.add_offsets_to_txn_request import AddOffsetsToTxnRequest
from shazamq.protocol.messages.add_partitions_to_txn_request import (
    AddPartitionsToTxnRequest,
    AddPartitionsToTxnTopic,
)
from shazamq.protocol.messages.describe_producers_request import (
    DescribeProducersRequest,
    TopicRequest,
)
from shazamq.protocol.messages.describe_transactions_request import (
    DescribeTransactionsRequest,
)
from shazamq.protocol.messages.end_txn_request import EndTxnRequest
from shazamq.protocol.messages.init_producer_id_request import InitProducerIdRequest
from shazamq.protocol.messages.list_transactions_request import ListTransactionsRequest
from shazamq.protocol.messages.produce_request import (
    PartitionProduceData,
    ProduceRequest,
    TopicProduceData,
)
from shazamq.protocol.messages.txn_offset_commit_request import (
    TxnOffsetCommitRequest,
    TxnOffsetCommitRequestPartition,
    TxnOffsetCommitRequestTopic,
)
from shazamq.protocol.records import Record, build_batch


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[
        name
    ].result(timeout=15)


class Txn:
    """A transactional producer spoken by hand."""

    def __init__(self, client: WireClient, txn_id: str) -> None:
        self.c = client
        self.txn_id = txn_id
        self.pid = -1
        self.epoch = -1
        self.seq: dict[tuple[str, int], int] = {}

    def init(self) -> int:
        r = self.c.call(
            InitProducerIdRequest(transactional_id=self.txn_id, transaction_timeout_ms=60_000), 4
        )
        if r.error_code == 0:
            self.pid, self.epoch = r.producer_id, r.producer_epoch
            self.seq.clear()
        return r.error_code

    def add(self, topic: str, partition: int, *, version: int = 3, epoch: int | None = None):
        r = self.c.call(
            AddPartitionsToTxnRequest(
                v3_and_below_transactional_id=self.txn_id,
                v3_and_below_producer_id=self.pid,
                v3_and_below_producer_epoch=self.epoch if epoch is None else epoch,
                v3_and_below_topics=[AddPartitionsToTxnTopic(name=topic, partitions=[partition])],
            ),
            version,
        )
        return r.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code

    def produce(self, topic: str, partition: int, *, epoch: int | None = None) -> int:
        seq = self.seq.get((topic, partition), 0)
        batch = build_batch(
            [Record(value=b"v")],
            producer_id=self.pid,
            producer_epoch=self.epoch if epoch is None else epoch,
            base_sequence=seq,
            transactional=True,
        )
        r = self.c.call(
            ProduceRequest(
                transactional_id=self.txn_id,
                acks=-1,
                timeout_ms=5000,
                topic_data=[
                    TopicProduceData(
                        name=topic,
                        partition_data=[PartitionProduceData(index=partition, records=batch)],
                    )
                ],
            ),
            8,
        )
        code = r.responses[0].partition_responses[0].error_code
        if code == 0:
            self.seq[(topic, partition)] = seq + 1
        return code

    def end(self, commit: bool, *, version: int = 3, epoch: int | None = None) -> int:
        return self.c.call(
            EndTxnRequest(
                transactional_id=self.txn_id,
                producer_id=self.pid,
                producer_epoch=self.epoch if epoch is None else epoch,
                committed=commit,
            ),
            version,
        ).error_code


def test_idempotent_producer_ids_are_fresh(shared_broker):
    with WireClient(shared_broker.bootstrap) as c:
        ids = set()
        for version in (0, 2, 4):
            r = c.call(InitProducerIdRequest(transactional_id=None), version)
            assert (r.error_code, r.producer_epoch) == (0, 0)
            ids.add(r.producer_id)
        assert len(ids) == 3
        r = c.call(InitProducerIdRequest(transactional_id="", transaction_timeout_ms=1000), 4)
        assert r.error_code == E.INVALID_REQUEST
        r = c.call(InitProducerIdRequest(transactional_id="x", transaction_timeout_ms=10**9), 4)
        assert r.error_code == E.INVALID_TRANSACTION_TIMEOUT


def test_produce_checks_and_fencing(shared_broker):
    bootstrap = shared_broker.bootstrap
    topic = f"wire-tx-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, 2)
    with WireClient(bootstrap) as c1, WireClient(bootstrap) as c2:
        t = Txn(c1, f"wire-{topic}")
        assert t.init() == 0 and t.epoch == 0
        assert t.add(topic, 0) == 0  # a v1 transaction: begun by AddPartitionsToTxn
        assert t.produce(topic, 0) == 0
        assert t.produce(topic, 1) == E.INVALID_TXN_STATE  # another partition
        assert t.end(commit=True) == 0
        assert t.end(commit=True) == 0  # a retried EndTxn is answered again
        assert t.end(commit=False) == E.INVALID_TXN_STATE
        assert t.add(topic, 0) == 0
        # a new instance fences this one and aborts its open transaction
        zombie_epoch = t.epoch
        t2 = Txn(c2, t.txn_id)
        assert t2.init() == 0 and t2.pid == t.pid and t2.epoch > zombie_epoch
        assert t.produce(topic, 0, epoch=zombie_epoch) == E.INVALID_PRODUCER_EPOCH
        assert t.add(topic, 1, epoch=zombie_epoch) == E.PRODUCER_FENCED
        assert t.add(topic, 1, epoch=zombie_epoch, version=1) == E.INVALID_PRODUCER_EPOCH
        assert t.end(True, epoch=zombie_epoch) == E.PRODUCER_FENCED
        assert t.end(True, epoch=zombie_epoch, version=1) == E.INVALID_PRODUCER_EPOCH
        t.pid = 10**12
        assert t.add(topic, 0) == E.INVALID_PRODUCER_ID_MAPPING
        # in a v1 transaction the group partition must be added before a TxnOffsetCommit
        assert t2.add(topic, 0) == 0
        r = c2.call(
            TxnOffsetCommitRequest(
                transactional_id=t2.txn_id,
                group_id="some-group",
                producer_id=t2.pid,
                producer_epoch=t2.epoch,
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
        assert r.topics[0].partitions[0].error_code == E.INVALID_TXN_STATE
        r = c2.call(
            AddOffsetsToTxnRequest(
                transactional_id=t2.txn_id,
                producer_id=t2.pid,
                producer_epoch=t2.epoch,
                group_id="some-group",
            ),
            3,
        )
        assert r.error_code == 0


def test_tooling_apis(shared_broker):
    bootstrap = shared_broker.bootstrap
    topic = f"tool-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, 1)
    with WireClient(bootstrap) as c:
        t = Txn(c, f"tool-{topic}")
        assert t.init() == 0
        assert t.add(topic, 0) == 0
        assert t.produce(topic, 0) == 0
        r = c.call(DescribeTransactionsRequest(transactional_ids=[t.txn_id, "nope-" + topic]), 0)
        found, missing = r.transaction_states
        assert (found.error_code, found.transaction_state, found.producer_id) == (
            0,
            "Ongoing",
            t.pid,
        )
        assert [(d.topic, d.partitions) for d in found.topics] == [(topic, [0])]
        assert found.transaction_start_time_ms > 0
        assert missing.error_code == E.TRANSACTIONAL_ID_NOT_FOUND
        r = c.call(
            ListTransactionsRequest(
                state_filters=["Ongoing", "Bogus"], producer_id_filters=[t.pid]
            ),
            1,
        )
        assert [x.transactional_id for x in r.transaction_states] == [t.txn_id]
        assert r.unknown_state_filters == ["Bogus"]
        r = c.call(ListTransactionsRequest(duration_filter=3_600_000), 1)
        assert t.txn_id not in [x.transactional_id for x in r.transaction_states]
        r = c.call(
            DescribeProducersRequest(topics=[TopicRequest(name=topic, partition_indexes=[0, 5])]),
            0,
        )
        p0, p5 = r.topics[0].partitions
        states = [
            (s.producer_id, s.last_sequence, s.current_txn_start_offset)
            for s in p0.active_producers
        ]
        assert states == [(t.pid, 0, 0)]
        assert p5.error_code == E.UNKNOWN_TOPIC_OR_PARTITION
        assert t.end(commit=False) == 0
        r = c.call(DescribeTransactionsRequest(transactional_ids=[t.txn_id]), 0)
        assert r.transaction_states[0].transaction_state == "CompleteAbort"
