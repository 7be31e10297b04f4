"""Share group offsets at the wire: DescribeShareGroupOffsets (90), AlterShareGroupOffsets
(91) and DeleteShareGroupOffsets (92), with Kafka's semantics and error codes.

confluent-kafka 2.16's AdminClient has no share group offset calls, so these are raw
protocol tests: start offsets and lag as consumption moves, -1 where there is no state,
GROUP_ID_NOT_FOUND / NON_EMPTY_GROUP / UNKNOWN_TOPIC_OR_PARTITION, an altered start
offset (and a deleted state) seen by the next fetch and kept over a restart, malformed
bytes.
"""

from __future__ import annotations

import struct
import uuid

import pytest
from kafka_helpers import closed_by_peer
from kafka_wire import WireClient
from share_wire import ShareMember, create_topic, heartbeat, offsets, produce, set_group

from shazamq.protocol.errors import ErrorCode as E
from shazamq.protocol.messages.alter_share_group_offsets_request import (
    AlterShareGroupOffsetsRequest,
    AlterShareGroupOffsetsRequestPartition,
    AlterShareGroupOffsetsRequestTopic,
)
from shazamq.protocol.messages.api_versions_request import ApiVersionsRequest
from shazamq.protocol.messages.delete_share_group_offsets_request import (
    DeleteShareGroupOffsetsRequest,
    DeleteShareGroupOffsetsRequestTopic,
)
from shazamq.protocol.messages.describe_share_group_offsets_request import (
    DescribeShareGroupOffsetsRequest,
    DescribeShareGroupOffsetsRequestGroup,
    DescribeShareGroupOffsetsRequestTopic,
)

pytestmark = pytest.mark.timeout(120)

ACCEPT, RELEASE, REJECT = 1, 2, 3
BROKER = {"groups__share_state_topic_num_partitions": 2}
ZERO = uuid.UUID(int=0)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):
    from tests.conftest import BrokerProcess

    b = BrokerProcess(tmp_path_factory.mktemp("shareoff") / "data", **BROKER).start(timeout=120)
    yield b
    b.stop()


def setup(bootstrap: str, n: int = 6, partitions: int = 1) -> tuple[str, str, uuid.UUID]:
    topic, group = f"t-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    tid = create_topic(bootstrap, topic, partitions)
    set_group(bootstrap, group, share_auto_offset_reset="earliest")
    if n:
        produce(bootstrap, topic, [f"v{i}".encode() for i in range(n)])
    return topic, group, tid


def describe(c: WireClient, group: str, topics: dict[str, list[int]] | None, version: int = 1):
    asked = (
        None
        if topics is None
        else [
            DescribeShareGroupOffsetsRequestTopic(topic_name=t, partitions=ps)
            for t, ps in topics.items()
        ]
    )
    r = c.call(
        DescribeShareGroupOffsetsRequest(
            groups=[DescribeShareGroupOffsetsRequestGroup(group_id=group, topics=asked)]
        ),
        version,
    )
    assert len(r.groups) == 1 and r.groups[0].group_id == group
    return r.groups[0]


def starts(g) -> dict[tuple[str, int], tuple[int, int]]:
    """(topic, partition) -> (start offset, lag) of a described group."""
    return {
        (t.topic_name, p.partition_index): (p.start_offset, p.lag)
        for t in g.topics
        for p in t.partitions
    }


def alter(c: WireClient, group: str, topics: dict[str, list[tuple[int, int]]]):
    return c.call(
        AlterShareGroupOffsetsRequest(
            group_id=group,
            topics=[
                AlterShareGroupOffsetsRequestTopic(
                    topic_name=t,
                    partitions=[
                        AlterShareGroupOffsetsRequestPartition(partition_index=i, start_offset=o)
                        for i, o in ps
                    ],
                )
                for t, ps in topics.items()
            ],
        ),
        0,
    )


def delete(c: WireClient, group: str, topics: list[str]):
    return c.call(
        DeleteShareGroupOffsetsRequest(
            group_id=group,
            topics=[DeleteShareGroupOffsetsRequestTopic(topic_name=t) for t in topics],
        ),
        0,
    )


def leave(m: ShareMember) -> None:
    assert heartbeat(m.c, m.group, m.member_id, -1, None).error_code == 0


def joined(broker, group: str, topic: str, tid: uuid.UUID) -> ShareMember:
    m = ShareMember(broker.bootstrap, group, topic, tid)
    m.join()
    return m


def test_api_versions_advertise_the_offset_apis(broker):
    r = WireClient(broker.bootstrap).call(
        ApiVersionsRequest(client_software_name="t", client_software_version="1"), 3
    )
    keys = {k.api_key: (k.min_version, k.max_version) for k in r.api_keys}
    assert keys[90] == (0, 1) and keys[91] == (0, 0) and keys[92] == (0, 0)
    # the share coordinator's RPCs are between the brokers of a cluster only
    assert not {83, 84, 85, 86, 87} & set(keys)


def test_describe_follows_consumption(broker):
    topic, group, tid = setup(broker.bootstrap, 6)
    c = WireClient(broker.bootstrap)
    # nothing consumed yet: no state, start offset -1 and no lag, no error
    g = describe(c, group, {topic: [0]})
    assert g.error_code == 0 and starts(g) == {(topic, 0): (-1, -1)}
    m = joined(broker, group, topic, tid)
    assert offsets(m.fetch()) == [0, 1, 2, 3, 4, 5]
    m.acknowledge([(0, 1, [ACCEPT]), (3, 3, [ACCEPT])])
    g = describe(c, group, {topic: [0]})
    # 0-1 done: the start is 2; of the six records 2, 4 and 5 are still to be finished
    assert starts(g) == {(topic, 0): (2, 3)}
    assert g.topics[0].topic_id == tid and g.topics[0].partitions[0].leader_epoch >= 0
    # v0 has no lag
    g0 = describe(c, group, {topic: [0]}, version=0)
    assert starts(g0) == {(topic, 0): (2, -1)}
    # all share-partitions of the group when no topic is named
    assert starts(describe(c, group, None)) == {(topic, 0): (2, 3)}
    # an unknown topic is not an error: start -1 and the zero topic id
    g = describe(c, group, {"no-such-topic": [0, 1]})
    assert g.error_code == 0 and g.topics[0].topic_id == ZERO
    assert starts(g) == {("no-such-topic", 0): (-1, -1), ("no-such-topic", 1): (-1, -1)}
    # an unknown group has no state anywhere
    g = describe(c, f"nobody-{uuid.uuid4().hex[:6]}", {topic: [0]})
    assert g.error_code == 0 and starts(g) == {(topic, 0): (-1, -1)}


def test_alter_only_an_empty_share_group(broker):
    topic, group, tid = setup(broker.bootstrap, 8, partitions=2)
    c = WireClient(broker.bootstrap)
    r = alter(c, f"nobody-{uuid.uuid4().hex[:6]}", {topic: [(0, 1)]})
    assert r.error_code == E.GROUP_ID_NOT_FOUND
    m = joined(broker, group, topic, tid)
    assert offsets(m.fetch(max_records=3)) == [0, 1, 2]
    r = alter(c, group, {topic: [(0, 5)]})
    assert r.error_code == E.NON_EMPTY_GROUP
    assert [p.error_code for t in r.responses for p in t.partitions] == [E.NON_EMPTY_GROUP]
    leave(m)
    r = alter(c, group, {topic: [(1, 0), (7, 0), (0, -3)], "no-such-topic": [(0, 0)]})
    assert r.error_code == 0
    answers = {
        (t.topic_name, p.partition_index): p.error_code for t in r.responses for p in t.partitions
    }
    assert answers == {
        (topic, 1): 0,
        (topic, 7): E.UNKNOWN_TOPIC_OR_PARTITION,
        (topic, 0): E.INVALID_REQUEST,
        ("no-such-topic", 0): E.UNKNOWN_TOPIC_OR_PARTITION,
    }
    assert {t.topic_name: t.topic_id for t in r.responses} == {topic: tid, "no-such-topic": ZERO}
    assert starts(describe(c, group, {topic: [1]})) == {(topic, 1): (0, 0)}
    r = alter(c, group, {topic: [(0, 5)]})
    assert r.error_code == 0
    assert starts(describe(c, group, {topic: [0]})) == {(topic, 0): (5, 3)}
    # the records of partition 0 are produced there only; the next member starts at 5
    m = joined(broker, group, topic, tid)
    assert offsets(m.fetch(max_wait_ms=2000)) == [5, 6, 7]


def test_delete_removes_the_state(broker):
    topic, group, tid = setup(broker.bootstrap, 4)
    other = f"t-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, other, 1)
    c = WireClient(broker.bootstrap)
    r = delete(c, f"nobody-{uuid.uuid4().hex[:6]}", [topic])
    assert r.error_code == E.GROUP_ID_NOT_FOUND
    m = joined(broker, group, topic, tid)
    assert offsets(m.fetch()) == [0, 1, 2, 3]
    m.acknowledge([(0, 3, [ACCEPT])])
    assert delete(c, group, [topic]).error_code == E.NON_EMPTY_GROUP
    leave(m)
    r = delete(c, group, [topic, other, "no-such-topic"])
    assert r.error_code == 0
    assert [(t.topic_name, t.error_code) for t in r.responses] == [
        (topic, 0),
        (other, E.UNKNOWN_TOPIC_OR_PARTITION),  # the group has no state there
        ("no-such-topic", E.UNKNOWN_TOPIC_OR_PARTITION),
    ]
    assert r.responses[0].topic_id == tid
    assert starts(describe(c, group, {topic: [0]})) == {(topic, 0): (-1, -1)}
    assert starts(describe(c, group, None)) == {}
    # without state the group starts over by share.auto.offset.reset (earliest)
    m = joined(broker, group, topic, tid)
    assert offsets(m.fetch(max_wait_ms=2000)) == [0, 1, 2, 3]


def test_malformed_offset_requests_close_the_connection(broker):
    for key, version in ((90, 1), (91, 0), (92, 0)):
        c = WireClient(broker.bootstrap)
        body = struct.pack(">hhih", key, version, 1, 4) + b"test" + b"\x00" + b"\xff\xff\xff"
        c.sock.sendall(struct.pack(">i", len(body)) + body)
        assert closed_by_peer(c.sock, 10)


def test_altered_offsets_survive_a_restart(tmp_path):
    from tests.conftest import BrokerProcess

    b = BrokerProcess(tmp_path / "data", **BROKER).start(timeout=120)
    try:
        topic, group, tid = setup(b.bootstrap, 5)
        m = joined(b, group, topic, tid)
        assert offsets(m.fetch()) == [0, 1, 2, 3, 4]
        leave(m)
        assert alter(WireClient(b.bootstrap), group, {topic: [(0, 3)]}).error_code == 0
        b.stop()
        b.start(timeout=120)
        assert starts(describe(WireClient(b.bootstrap), group, {topic: [0]})) == {
            (topic, 0): (3, 2)
        }
        m = joined(b, group, topic, tid)
        assert offsets(m.fetch(max_wait_ms=3000)) == [3, 4]
    finally:
        b.stop()


def test_find_coordinator_of_a_share_partition_key(broker):
    """FindCoordinator v6 key type 2: Kafka's ``group:topic id:partition`` key (brokers
    look up share coordinators with it); malformed keys and older versions are refused."""
    from shazamq.protocol.messages.find_coordinator_request import FindCoordinatorRequest

    c = WireClient(broker.bootstrap)
    good = "my-group:AAAAAAAAAAAAAAAAAAAAAQ:3"
    r = c.call(FindCoordinatorRequest(key_type=2, coordinator_keys=[good, "g:nope:1", "g:x"]), 6)
    answers = {x.key: x.error_code for x in r.coordinators}
    assert answers == {good: 0, "g:nope:1": E.INVALID_REQUEST, "g:x": E.INVALID_REQUEST}
    assert [x.port for x in r.coordinators if x.key == good] == [broker.port]
    r = c.call(FindCoordinatorRequest(key_type=2, coordinator_keys=[good]), 5)
    assert r.coordinators[0].error_code == E.INVALID_REQUEST
