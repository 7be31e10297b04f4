"""A small Kafka source for mirror tests: one topic, one partition, batches held in memory.

It answers what a mirror asks (ApiVersions, Metadata, DescribeConfigs, ListOffsets,
ListGroups, Fetch, OffsetForLeaderEpoch) the way a Kafka leader does, with a log the
test rewrites at will: ``rewrite(keep_until, new_epoch, batches)`` is an unclean election
(the new leader's log lost the tail from ``keep_until`` and took other writes under a
higher leader epoch). ``diverging_epoch=False`` makes its Fetch ignore
``last_fetched_epoch``, as sources before Kafka 2.7 (or other implementations) do;
``report_epochs=False`` hides the leader epoch from Metadata.
Runs its own event loop in a thread, so the broker under test is a real process.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

from shazamq.protocol.framing import decode_request, encode_response
from shazamq.protocol.messages.api_versions_response import ApiVersion, ApiVersionsResponse
from shazamq.protocol.messages.describe_configs_response import (
    DescribeConfigsResponse,
    DescribeConfigsResult,
)
from shazamq.protocol.messages.fetch_response import (
    EpochEndOffset as DivergingEpoch,
)
from shazamq.protocol.messages.fetch_response import (
    FetchableTopicResponse,
    FetchResponse,
    PartitionData,
)
from shazamq.protocol.messages.list_groups_response import ListGroupsResponse
from shazamq.protocol.messages.list_offsets_response import (
    ListOffsetsPartitionResponse,
    ListOffsetsResponse,
    ListOffsetsTopicResponse,
)
from shazamq.protocol.messages.metadata_response import (
    MetadataResponse,
    MetadataResponseBroker,
    MetadataResponsePartition,
    MetadataResponseTopic,
)
from shazamq.protocol.messages.offset_for_leader_epoch_response import (
    EpochEndOffset,
    OffsetForLeaderEpochResponse,
    OffsetForLeaderTopicResult,
)
from shazamq.protocol.records import Record, build_batch, iter_batches

FENCED_LEADER_EPOCH, UNKNOWN_LEADER_EPOCH, OFFSET_OUT_OF_RANGE = 74, 75, 1
UNKNOWN_TOPIC_OR_PARTITION = 3
VERSIONS = {18: (0, 3), 3: (0, 12), 32: (0, 4), 2: (0, 7), 16: (0, 4), 1: (4, 12), 23: (0, 4)}


def make_batches(
    first_offset: int, count: int, epoch: int, tag: str, producer_id: int = -1
) -> list[bytes]:
    """``count`` batches of two records each from ``first_offset``, under leader ``epoch``."""
    out = []
    for i in range(count):
        base = first_offset + 2 * i
        out.append(
            build_batch(
                [Record(offset_delta=d, value=f"{tag}-{base + d}".encode()) for d in range(2)],
                base_offset=base,
                partition_leader_epoch=epoch,
                producer_id=producer_id,
                producer_epoch=0 if producer_id >= 0 else -1,
                base_sequence=base if producer_id >= 0 else -1,
                base_timestamp=1_700_000_000_000 + base,
            )
        )
    return out


class FakeSource:
    def __init__(
        self, topic: str, *, diverging_epoch: bool = True, report_epochs: bool = True
    ) -> None:
        self.topic = topic
        self.report_epochs = report_epochs  # False: Metadata says -1, Fetch is not fenced
        self.topic_id = uuid.uuid4()
        self.answer_diverging = diverging_epoch
        self.leader_epoch = 0
        self.batches: list[bytes] = []
        self.requests: dict[int, int] = {}  # api key -> count
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    # -- the log -----------------------------------------------------------------------

    def append(self, batches: list[bytes]) -> None:
        self._loop.call_soon_threadsafe(self.batches.extend, batches)

    def rewrite(self, keep_until: int, new_epoch: int, batches: list[bytes]) -> None:
        """An unclean election: the log keeps offsets below ``keep_until``, the leader
        epoch becomes ``new_epoch`` and ``batches`` follow."""

        def apply() -> None:
            self.batches = [b for b in self.batches if _last(b) < keep_until] + batches
            self.leader_epoch = new_epoch

        self._loop.call_soon_threadsafe(apply)

    def log(self) -> list[tuple[int, bytes]]:
        return [(_header(b).base_offset, b) for b in list(self.batches)]

    def _end(self) -> int:
        return _last(self.batches[-1]) + 1 if self.batches else 0

    def _end_for(self, epoch: int) -> tuple[int, int]:
        """OffsetForLeaderEpoch as a Kafka leader answers it."""
        starts: list[tuple[int, int]] = []
        for b in self.batches:
            h = _header(b)
            if not starts or h.partition_leader_epoch > starts[-1][0]:
                starts.append((h.partition_leader_epoch, h.base_offset))
        if self.leader_epoch > (starts[-1][0] if starts else -1):
            starts.append((self.leader_epoch, self._end()))
        if not starts or epoch < 0:
            return -1, -1
        if starts[-1][0] == epoch:
            return epoch, self._end()
        higher = next((i for i, (e, _o) in enumerate(starts) if e > epoch), None)
        if higher is None:
            return -1, -1
        if higher == 0:
            return epoch, starts[0][1]
        return starts[higher - 1][0], starts[higher][1]

    def _epoch_error(self, current: int) -> int:
        if current < 0 or current == self.leader_epoch:
            return 0
        return FENCED_LEADER_EPOCH if current < self.leader_epoch else UNKNOWN_LEADER_EPOCH

    # -- serving -----------------------------------------------------------------------

    def start(self) -> FakeSource:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(4), "big")
                frame = await reader.readexactly(size)
                header, req = decode_request(frame)
                key, version = header.request_api_key, header.request_api_version
                self.requests[key] = self.requests.get(key, 0) + 1
                resp = await self._answer(key, version, req)
                writer.write(encode_response(key, version, header.correlation_id, resp))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _answer(self, key: int, version: int, req: Any) -> Any:
        if key == 18:
            return ApiVersionsResponse(
                error_code=0,
                api_keys=[
                    ApiVersion(api_key=k, min_version=a, max_version=b)
                    for k, (a, b) in VERSIONS.items()
                ],
            )
        if key == 3:
            return MetadataResponse(
                brokers=[MetadataResponseBroker(node_id=0, host="127.0.0.1", port=self.port)],
                cluster_id="fake-source",
                controller_id=0,
                topics=[
                    MetadataResponseTopic(
                        error_code=0,
                        name=self.topic,
                        topic_id=self.topic_id,
                        partitions=[
                            MetadataResponsePartition(
                                error_code=0,
                                partition_index=0,
                                leader_id=0,
                                leader_epoch=self.leader_epoch if self.report_epochs else -1,
                                replica_nodes=[0],
                                isr_nodes=[0],
                            )
                        ],
                    )
                ],
            )
        if key == 32:
            return DescribeConfigsResponse(
                results=[
                    DescribeConfigsResult(
                        error_code=0,
                        resource_type=r.resource_type,
                        resource_name=r.resource_name,
                        configs=[],
                    )
                    for r in req.resources
                ]
            )
        if key == 16:
            return ListGroupsResponse(error_code=0, groups=[])
        if key == 2:
            topics = []
            for t in req.topics:
                parts = []
                for p in t.partitions:
                    offset = 0 if p.timestamp == -2 else self._end()
                    parts.append(
                        ListOffsetsPartitionResponse(
                            partition_index=p.partition_index, error_code=0, offset=offset
                        )
                    )
                topics.append(ListOffsetsTopicResponse(name=t.name, partitions=parts))
            return ListOffsetsResponse(topics=topics)
        if key == 23:
            results = []
            for t in req.topics:
                out = []
                for p in t.partitions:
                    r = EpochEndOffset(partition=p.partition, error_code=0)
                    r.error_code = self._epoch_error(p.current_leader_epoch)
                    if not r.error_code:
                        r.leader_epoch, r.end_offset = self._end_for(p.leader_epoch)
                    out.append(r)
                results.append(OffsetForLeaderTopicResult(topic=t.topic, partitions=out))
            return OffsetForLeaderEpochResponse(topics=results)
        if key == 1:
            return await self._fetch(req)
        raise AssertionError(f"the fake source does not answer api key {key}")

    async def _fetch(self, req: Any) -> FetchResponse:
        topics = []
        waited = False
        for t in req.topics:
            parts = []
            for p in t.partitions:
                pd = PartitionData(partition_index=p.partition, log_start_offset=0)
                parts.append(pd)
                if t.topic != self.topic or p.partition != 0:
                    pd.error_code = UNKNOWN_TOPIC_OR_PARTITION
                    continue
                pd.error_code = self._epoch_error(p.current_leader_epoch)
                if pd.error_code:
                    continue
                end = self._end()
                pd.high_watermark = pd.last_stable_offset = end
                if self.answer_diverging and p.last_fetched_epoch >= 0:
                    epoch, epoch_end = self._end_for(p.last_fetched_epoch)
                    if epoch_end < 0:
                        pd.error_code = OFFSET_OUT_OF_RANGE
                        continue
                    if epoch < p.last_fetched_epoch or epoch_end < p.fetch_offset:
                        pd.diverging_epoch = DivergingEpoch(epoch=epoch, end_offset=epoch_end)
                        continue
                if p.fetch_offset > end:
                    pd.error_code = OFFSET_OUT_OF_RANGE
                    continue
                data = b"".join(b for b in self.batches if _last(b) >= p.fetch_offset)
                pd.records = data
                if not data and not waited:
                    waited = True  # a long poll, so an idle mirror does not spin
                    await asyncio.sleep(min(req.max_wait_ms, 200) / 1000)
            topics.append(FetchableTopicResponse(topic=t.topic, partitions=parts))
        return FetchResponse(error_code=0, responses=topics)


def _header(batch: bytes) -> Any:
    return next(iter_batches(batch))[1]


def _last(batch: bytes) -> int:
    h = _header(batch)
    return h.base_offset + h.last_offset_delta
