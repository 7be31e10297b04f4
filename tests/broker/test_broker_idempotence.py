"""Idempotent producers at the wire level: duplicates, gaps, fencing, restart.

A retried batch (same producer id, epoch and sequence) is acknowledged with its original
offset and not written twice; a sequence gap gets OUT_OF_ORDER_SEQUENCE_NUMBER; an old
epoch gets INVALID_PRODUCER_EPOCH; all of it holds across a broker restart.
"""

from __future__ import annotations

from kafka_helpers import RawClient, make_topic

from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.init_producer_id_request import InitProducerIdRequest
from shazamq.protocol.messages.list_offsets_request import (
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsTopic,
)
from shazamq.protocol.messages.produce_request import (
    PartitionProduceData,
    ProduceRequest,
    TopicProduceData,
)
from shazamq.protocol.records import Record, build_batch


def batch(pid: int, epoch: int, seq: int, n: int = 3) -> bytes:
    return build_batch(
        [Record(offset_delta=i, value=b"s%d" % (seq + i)) for i in range(n)],
        producer_id=pid,
        producer_epoch=epoch,
        base_sequence=seq,
    )


def produce(client: RawClient, topic: str, records: bytes) -> tuple[int, int]:
    req = ProduceRequest(
        acks=-1,
        timeout_ms=5000,
        topic_data=[
            TopicProduceData(
                name=topic, partition_data=[PartitionProduceData(index=0, records=records)]
            )
        ],
    )
    part = client.request(req, 9).responses[0].partition_responses[0]
    return part.error_code, part.base_offset


def end_offset(client: RawClient, topic: str) -> int:
    req = ListOffsetsRequest(
        replica_id=-1,
        topics=[ListOffsetsTopic(name=topic, partitions=[ListOffsetsPartition(timestamp=-1)])],
    )
    return client.request(req, 7).topics[0].partitions[0].offset


def test_duplicates_gaps_epochs_and_restart(broker_factory, topic_name):
    b = broker_factory()
    make_topic(b.bootstrap, topic_name)
    c = RawClient(b.port)
    init = c.request(InitProducerIdRequest(transactional_id=None, transaction_timeout_ms=-1), 4)
    assert init.error_code == 0 and init.producer_id >= 0 and init.producer_epoch == 0
    pid = init.producer_id

    assert produce(c, topic_name, batch(pid, 0, 0)) == (0, 0)
    assert produce(c, topic_name, batch(pid, 0, 3)) == (0, 3)
    # A retry of the first batch: acknowledged at its original offset, not appended.
    assert produce(c, topic_name, batch(pid, 0, 0)) == (0, 0)
    assert end_offset(c, topic_name) == 6
    # A gap.
    code, _ = produce(c, topic_name, batch(pid, 0, 10))
    assert code == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
    assert end_offset(c, topic_name) == 6
    # A new producer id never repeats an old one.
    second = c.request(
        InitProducerIdRequest(transactional_id=None, transaction_timeout_ms=-1), 4
    ).producer_id
    assert second != pid
    c.close()

    b.restart()
    c = RawClient(b.port)
    # The state survived: the retry is still a duplicate, the gap still a gap.
    assert produce(c, topic_name, batch(pid, 0, 3)) == (0, 3)
    assert produce(c, topic_name, batch(pid, 0, 6))[0] == 0
    code, _ = produce(c, topic_name, batch(pid, 0, 20))
    assert code == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
    # A bumped epoch starts again at sequence 0; the old epoch is then fenced.
    assert produce(c, topic_name, batch(pid, 1, 0))[0] == 0
    code, _ = produce(c, topic_name, batch(pid, 0, 9))
    assert code == ErrorCode.INVALID_PRODUCER_EPOCH
    assert end_offset(c, topic_name) == 12
    third = c.request(
        InitProducerIdRequest(transactional_id=None, transaction_timeout_ms=-1), 4
    ).producer_id
    assert third not in (pid, second)
    c.close()
