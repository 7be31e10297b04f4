"""Helpers for share group tests: raw share requests and the group settings admin calls."""

from __future__ import annotations

import uuid
from typing import Any

from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)
from kafka_wire import WireClient

from shazamq.protocol.messages.metadata_request import MetadataRequest, MetadataRequestTopic
from shazamq.protocol.messages.share_acknowledge_request import (
    AcknowledgementBatch as AckBatchMsg,
)
from shazamq.protocol.messages.share_acknowledge_request import (
    AcknowledgePartition,
    AcknowledgeTopic,
    ShareAcknowledgeRequest,
)
from shazamq.protocol.messages.share_fetch_request import (
    AcknowledgementBatch,
    FetchPartition,
    FetchTopic,
    ShareFetchRequest,
)
from shazamq.protocol.messages.share_group_heartbeat_request import ShareGroupHeartbeatRequest
from shazamq.protocol.records import decode_batch, iter_batches

HB_V = 1
FETCH_V = 1
ACK_V = 1


def create_topic(bootstrap: str, name: str, partitions: int = 1) -> uuid.UUID:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[
        name
    ].result(timeout=15)
    r = WireClient(bootstrap).call(MetadataRequest(topics=[MetadataRequestTopic(name=name)]), 12)
    return r.topics[0].topic_id


def set_group(bootstrap: str, group: str, **settings: str) -> None:
    """IncrementalAlterConfigs SET on the GROUP resource (names with dots for underscores)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    res = ConfigResource(
        ResourceType.GROUP,
        group,
        incremental_configs=[
            ConfigEntry(k.replace("_", "."), v, incremental_operation=AlterConfigOpType.SET)
            for k, v in settings.items()
        ],
    )
    admin.incremental_alter_configs([res])[res].result(timeout=15)


def produce(bootstrap: str, topic: str, values: list[bytes], partition: int = 0) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap})
    for v in values:
        p.produce(topic, value=v, partition=partition)
    assert p.flush(15) == 0


def heartbeat(c: WireClient, group: str, member: str, epoch: int, topics: list[str] | None):
    return c.call(
        ShareGroupHeartbeatRequest(
            group_id=group, member_id=member, member_epoch=epoch, subscribed_topic_names=topics
        ),
        HB_V,
    )


class ShareMember:
    """A share group member speaking the protocol one request at a time."""

    def __init__(self, bootstrap: str, group: str, topic: str, topic_id: uuid.UUID) -> None:
        self.c = WireClient(bootstrap)
        self.group, self.topic, self.topic_id = group, topic, topic_id
        self.member_id = uuid.uuid4().hex
        self.epoch = 0
        self.session_epoch = 0

    def join(self) -> Any:
        r = heartbeat(self.c, self.group, self.member_id, 0, [self.topic])
        assert r.error_code == 0, r
        self.epoch = r.member_epoch
        return r

    def fetch(
        self,
        acks: list[tuple[int, int, list[int]]] | None = None,
        *,
        max_records: int = 100,
        max_wait_ms: int = 0,
        session_epoch: int | None = None,
        partition: int = 0,
    ) -> Any:
        epoch = self.session_epoch if session_epoch is None else session_epoch
        req = ShareFetchRequest(
            group_id=self.group,
            member_id=self.member_id,
            share_session_epoch=epoch,
            max_wait_ms=max_wait_ms,
            min_bytes=1,
            max_records=max_records,
            batch_size=max_records,
            topics=[
                FetchTopic(
                    topic_id=self.topic_id,
                    partitions=[
                        FetchPartition(
                            partition_index=partition,
                            acknowledgement_batches=[
                                AcknowledgementBatch(
                                    first_offset=f, last_offset=last, acknowledge_types=t
                                )
                                for f, last, t in acks or []
                            ],
                        )
                    ],
                )
            ],
        )
        r = self.c.call(req, FETCH_V)
        if r.error_code == 0 and session_epoch is None:
            self.session_epoch = -1 if epoch == -1 else epoch + 1
        return r

    def acknowledge(
        self, acks: list[tuple[int, int, list[int]]], *, session_epoch: int | None = None
    ) -> Any:
        epoch = self.session_epoch if session_epoch is None else session_epoch
        req = ShareAcknowledgeRequest(
            group_id=self.group,
            member_id=self.member_id,
            share_session_epoch=epoch,
            topics=[
                AcknowledgeTopic(
                    topic_id=self.topic_id,
                    partitions=[
                        AcknowledgePartition(
                            partition_index=0,
                            acknowledgement_batches=[
                                AckBatchMsg(first_offset=f, last_offset=last, acknowledge_types=t)
                                for f, last, t in acks
                            ],
                        )
                    ],
                )
            ],
        )
        r = self.c.call(req, ACK_V)
        if r.error_code == 0 and session_epoch is None:
            self.session_epoch = epoch + 1
        return r


def acquired(r: Any) -> list[tuple[int, int, int]]:
    """(first, last, delivery count) runs of a ShareFetch answer (all partitions)."""
    return [
        (a.first_offset, a.last_offset, a.delivery_count)
        for t in r.responses
        for p in t.partitions
        for a in p.acquired_records
    ]


def offsets(r: Any) -> list[int]:
    return [o for f, last, _dc in acquired(r) for o in range(f, last + 1)]


def values(r: Any) -> dict[int, bytes]:
    """offset -> value of the acquired records, decoded from the answer's batches."""
    wanted = set(offsets(r))
    out = {}
    for t in r.responses:
        for p in t.partitions:
            data = memoryview(p.records or b"")
            for pos, h in iter_batches(data, allow_partial=False):
                _h, records = decode_batch(data[pos : pos + h.size])
                for rec in records:
                    o = h.base_offset + rec.offset_delta
                    if o in wanted:
                        out[o] = bytes(rec.value or b"")
    return out
