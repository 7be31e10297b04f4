"""DescribeClientQuotas and AlterClientQuotas against a broker process, byte-exact.

Every entity kind (user, client-id, both, each with named and default entities), every
match type of the describe filter, strict and not, removal, validate_only, the errors of
bad entities, keys and values, both protocol versions, malformed request bytes, and the
quotas surviving a restart. No client library in use speaks these APIs (confluent-kafka
2.16 and kafka-python have no client quota admin calls), so the raw protocol is used.
"""

from __future__ import annotations

import socket
import struct

import pytest

from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.api_versions_request import ApiVersionsRequest
from tests.kafka_helpers import RawClient, closed_by_peer, make_topic

from .quota_wire import alter_request, describe_request, described, produce_request

EXACT, DEFAULT, ANY = 0, 1, 2
USER, CLIENT = "user", "client-id"
PRODUCE, FETCH, REQUEST = "producer_byte_rate", "consumer_byte_rate", "request_percentage"
BIG = 1e9  # large enough that the test's own requests are never throttled


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):
    from tests.conftest import BrokerProcess

    b = BrokerProcess(tmp_path_factory.mktemp("quotas") / "data").start()
    yield b
    b.stop()


@pytest.fixture
def client(broker):
    c = RawClient(broker.port, client_id="quota-admin")
    yield c
    # leave no quota behind for the next test
    everything = described(c.request(describe_request([]), 1))
    if everything:
        resp = c.request(
            alter_request([(dict(e), dict.fromkeys(v)) for e, v in everything.items()]), 1
        )
        assert all(e.error_code == 0 for e in resp.entries)
    c.close()


def alter(c: RawClient, entries, validate_only=False, version=1) -> list[tuple[int, str | None]]:
    resp = c.request(alter_request(entries, validate_only), version)
    assert len(resp.entries) == len(entries)
    return [(e.error_code, e.error_message) for e in resp.entries]


def test_api_versions_advertise_both_apis(client):
    resp = client.request(ApiVersionsRequest(), 3)
    got = {k.api_key: (k.min_version, k.max_version) for k in resp.api_keys}
    assert got[48] == (0, 1)
    assert got[49] == (0, 1)


ENTITIES = [
    {USER: "alice"},
    {USER: None},
    {CLIENT: "app"},
    {CLIENT: None},
    {USER: "alice", CLIENT: "app"},
    {USER: "alice", CLIENT: None},
    {USER: None, CLIENT: "app"},
    {USER: None, CLIENT: None},
    {USER: "bob", CLIENT: "tool"},
]


def key(entity: dict[str, str | None]) -> tuple[tuple[str, str | None], ...]:
    return tuple(sorted(entity.items()))


@pytest.mark.parametrize("version", [0, 1])
def test_every_entity_kind_and_every_filter(client, version):
    entries = [(e, {PRODUCE: float(1000 + i), REQUEST: BIG}) for i, e in enumerate(ENTITIES)]
    assert alter(client, entries, version=version) == [(0, None)] * len(entries)

    def select(components, strict=False):
        return set(described(client.request(describe_request(components, strict), version)))

    all_keys = {key(e) for e in ENTITIES}
    assert select([]) == all_keys
    assert select([], strict=True) == set()
    # exact
    assert select([(USER, EXACT, "alice")], strict=True) == {key({USER: "alice"})}
    assert select([(USER, EXACT, "alice")]) == {
        key(e) for e in ENTITIES if e.get(USER, "-") == "alice"
    }
    # default
    assert select([(USER, DEFAULT, None)], strict=True) == {key({USER: None})}
    assert select([(CLIENT, DEFAULT, None)]) == {
        key(e) for e in ENTITIES if CLIENT in e and e[CLIENT] is None
    }
    # any
    assert select([(CLIENT, ANY, None)], strict=True) == {key({CLIENT: "app"}), key({CLIENT: None})}
    assert select([(USER, ANY, None), (CLIENT, ANY, None)], strict=True) == {
        key(e) for e in ENTITIES if len(e) == 2
    }
    assert select([(USER, DEFAULT, None), (CLIENT, EXACT, "app")]) == {
        key({USER: None, CLIENT: "app"})
    }
    assert select([(USER, EXACT, "nobody")]) == set()
    # the values come back as set
    values = described(client.request(describe_request([(USER, EXACT, "bob")]), version))
    assert values == {key({USER: "bob", CLIENT: "tool"}): {PRODUCE: 1008.0, REQUEST: BIG}}


def test_set_change_and_remove_keys(client):
    alice = {USER: "alice"}
    assert alter(client, [(alice, {PRODUCE: 100.0, FETCH: 200.0})]) == [(0, None)]
    assert alter(client, [(alice, {PRODUCE: 150.0, FETCH: None})]) == [(0, None)]
    got = described(client.request(describe_request([(USER, EXACT, "alice")], True), 1))
    assert got == {key(alice): {PRODUCE: 150.0}}
    # removing the last key removes the entity; removing what is not there is fine
    assert alter(client, [(alice, {PRODUCE: None, REQUEST: None})]) == [(0, None)]
    assert described(client.request(describe_request([(USER, EXACT, "alice")]), 1)) == {}


def test_validate_only_checks_without_storing(client):
    results = alter(
        client,
        [({CLIENT: "dry"}, {PRODUCE: 10.0}), ({CLIENT: "dry"}, {"nonsense": 1.0})],
        validate_only=True,
    )
    assert results[0] == (0, None)
    assert results[1][0] == ErrorCode.INVALID_REQUEST
    assert described(client.request(describe_request([(CLIENT, EXACT, "dry")]), 1)) == {}


@pytest.mark.parametrize(
    ("entity", "ops", "code", "needle"),
    [
        ({}, {PRODUCE: 1.0}, ErrorCode.INVALID_REQUEST, "empty"),
        ({"topic": "t"}, {PRODUCE: 1.0}, ErrorCode.INVALID_REQUEST, "entity type"),
        ({USER: ""}, {PRODUCE: 1.0}, ErrorCode.INVALID_REQUEST, "empty"),
        ({"ip": "10.0.0.1"}, {"connection_creation_rate": 1.0}, ErrorCode.INVALID_REQUEST, "ip"),
        ({USER: "a", "ip": None}, {PRODUCE: 1.0}, ErrorCode.INVALID_REQUEST, "ip"),
        ({USER: "a"}, {"producer_bytes_rate": 1.0}, ErrorCode.INVALID_REQUEST, "key"),
        ({USER: "a"}, {PRODUCE: 0.0}, ErrorCode.INVALID_CONFIG, PRODUCE),
        ({USER: "a"}, {FETCH: -1.0}, ErrorCode.INVALID_CONFIG, FETCH),
        ({USER: "a"}, {PRODUCE: 1.5}, ErrorCode.INVALID_CONFIG, PRODUCE),
        ({USER: "a"}, {REQUEST: float("nan")}, ErrorCode.INVALID_CONFIG, REQUEST),
        (
            {USER: "a"},
            {"controller_mutation_rate": 5.0},
            ErrorCode.INVALID_CONFIG,
            "not enforced",
        ),
    ],
)
def test_bad_entries_are_refused_alone(client, entity, ops, code, needle):
    good = ({CLIENT: "fine"}, {PRODUCE: 5000.0})
    results = alter(client, [good, (entity, ops)])
    assert results[0] == (0, None)
    assert results[1][0] == code
    assert needle in (results[1][1] or "")
    # a refused entry stores nothing, the good one is stored
    stored = described(client.request(describe_request([]), 1))
    assert stored == {key({CLIENT: "fine"}): {PRODUCE: 5000.0}}


def test_duplicate_entity_types_in_one_entry(client):
    # a dict cannot carry the same type twice: build the entry by hand
    req = alter_request([({USER: "a"}, {PRODUCE: 1.0})])
    req.entries[0].entity.append(req.entries[0].entity[0])
    resp = client.request(req, 1)
    assert resp.entries[0].error_code == ErrorCode.INVALID_REQUEST
    assert "Duplicate" in resp.entries[0].error_message


@pytest.mark.parametrize(
    ("components", "needle"),
    [
        ([("topic", ANY, None)], "not supported"),
        ([(USER, EXACT, None)], "null"),
        ([(USER, DEFAULT, "x")], "match string"),
        ([(USER, 9, None)], "match type"),
        ([(USER, ANY, None), (USER, ANY, None)], "Duplicate"),
    ],
)
def test_bad_describe_filters(client, components, needle):
    resp = client.request(describe_request(components), 1)
    assert resp.error_code == ErrorCode.INVALID_REQUEST
    assert needle in resp.error_message
    assert resp.entries is None


def _frame(api_key: int, version: int, body: bytes) -> bytes:
    client_id = b"garbage"
    header = struct.pack(">hhih", api_key, version, 7, len(client_id)) + client_id
    if version >= 1:
        header += b"\x00"  # flexible header: no tagged fields
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


@pytest.mark.parametrize(
    ("api_key", "version", "body"),
    [
        (49, 0, b"\x00\x00\x00\x05\x00"),  # five entries announced, none there
        (49, 1, b"\x02\x02\x05us"),  # a string cut short
        (48, 0, b"\x7f\xff\xff\xff"),  # two billion components
        (48, 1, b""),
    ],
)
def test_malformed_requests_close_only_that_connection(broker, client, api_key, version, body):
    with socket.create_connection(("127.0.0.1", broker.port), timeout=10) as sock:
        sock.sendall(_frame(api_key, version, body))
        assert closed_by_peer(sock, 10)
    # the broker goes on serving
    assert client.request(describe_request([]), 1).error_code == 0


def test_quotas_survive_a_restart(tmp_path):
    from tests.conftest import BrokerProcess

    b = BrokerProcess(tmp_path / "data").start()
    try:
        entries = [
            ({USER: "alice", CLIENT: None}, {PRODUCE: 2048.0, REQUEST: 50.0}),
            ({CLIENT: None}, {FETCH: 4096.0}),
            ({CLIENT: "capped"}, {PRODUCE: 1000.0}),
        ]
        c = RawClient(b.port)
        assert alter(c, entries) == [(0, None)] * 3
        before = described(c.request(describe_request([]), 1))
        c.close()
        b.restart()
        c = RawClient(b.port)
        assert described(c.request(describe_request([]), 1)) == before
        assert before == {key(e): v for e, v in entries}
        c.close()
        # and enforced after the restart: 20 KB over a 10 s padded span is twice the quota
        make_topic(b.bootstrap, "after-restart")
        capped = RawClient(b.port, client_id="capped")
        resp = capped.request(produce_request("after-restart", b"r" * 20_000), 9)
        assert resp.responses[0].partition_responses[0].error_code == 0
        assert resp.throttle_time_ms > 0
        capped.close()
    finally:
        b.stop()
