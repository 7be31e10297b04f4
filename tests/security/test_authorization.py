"""ACLs on a real broker with SASL users, driven by real clients.

One broker with ``[security.authorization]`` on, the super user ``admin`` and the users
``alice`` and ``bob``. ACLs are created, listed and deleted with confluent-kafka's
AdminClient; then each operation is tried as the principal it is (or is not) allowed to:
produce (confluent-kafka, aiokafka), consume with a group (kafka-python), transactions, a
forged replica fetch and Metadata hiding, with Kafka's error codes; prefixed ACLs; deny
wins; a denied produce leaves the log untouched; super users pass everything.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)
from kafka_helpers import RawClient

from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.describe_acls_request import DescribeAclsRequest
from shazamq.protocol.messages.fetch_request import FetchPartition, FetchRequest, FetchTopic
from shazamq.protocol.messages.list_offsets_request import (
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsTopic,
)
from shazamq.protocol.messages.sasl_authenticate_request import SaslAuthenticateRequest
from shazamq.protocol.messages.sasl_handshake_request import SaslHandshakeRequest

USERS = {"admin": "admin-pw", "alice": "alice-pw", "bob": "bob-pw"}
ALLOW, DENY = AclPermissionType.ALLOW, AclPermissionType.DENY
LITERAL, PREFIXED = ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):
    from tests.conftest import BrokerProcess

    users = ", ".join(f'"{u}": "{p}"' for u, p in USERS.items())
    b = BrokerProcess(
        tmp_path_factory.mktemp("authz"),
        security__sasl__enabled=True,
        security__sasl__mechanisms='["PLAIN", "SCRAM-SHA-512"]',
        security__sasl__users=f"{{{users}}}",
        security__authorization__enabled=True,
        security__authorization__super_users='["User:admin"]',
        broker__auto_create_topics=True,
    ).start()
    yield b
    b.stop()


def conf(broker, user: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": broker.bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN",
        "sasl.username": user,
        "sasl.password": USERS[user],
    }


def admin(broker, user: str = "admin") -> AdminClient:
    return AdminClient(conf(broker, user))


def acl(rtype, name, principal, op, perm=ALLOW, pattern=LITERAL) -> AclBinding:
    return AclBinding(rtype, name, pattern, principal, "*", op, perm)


def create_acls(client: AdminClient, bindings: list[AclBinding]) -> None:
    for f in client.create_acls(bindings).values():
        f.result(15)


def new_topic(broker, prefix: str = "t") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    client = admin(broker)
    client.create_topics([NewTopic(name, 1, 1)])[name].result(15)
    return name


def produce(broker, user: str, topic: str, **extra: Any) -> KafkaError | None:
    """Deliver one record as `user`; None or the delivery error."""
    delivered: list[Any] = []
    p = Producer({**conf(broker, user), "message.timeout.ms": 5000, **extra})
    p.produce(topic, value=b"v", on_delivery=lambda err, _m: delivered.append(err))
    p.flush(8)
    assert len(delivered) == 1
    return delivered[0]


def raw_login(broker, user: str) -> RawClient:
    client = RawClient(broker.port)
    assert client.request(SaslHandshakeRequest(mechanism="PLAIN"), 1).error_code == 0
    token = f"\0{user}\0{USERS[user]}".encode()
    assert client.request(SaslAuthenticateRequest(auth_bytes=token), 2).error_code == 0
    return client


def end_offset(broker, topic: str) -> int:
    client = raw_login(broker, "admin")
    try:
        resp = client.request(
            ListOffsetsRequest(
                replica_id=-1,
                topics=[
                    ListOffsetsTopic(
                        name=topic,
                        partitions=[ListOffsetsPartition(partition_index=0, timestamp=-1)],
                    )
                ],
            ),
            5,
        )
        return resp.topics[0].partitions[0].offset
    finally:
        client.close()


def test_acl_admin_api_create_describe_delete(broker) -> None:
    client = admin(broker)
    topic = f"adm-{uuid.uuid4().hex[:6]}"
    bindings = [
        acl(ResourceType.TOPIC, topic, "User:alice", AclOperation.READ),
        acl(ResourceType.TOPIC, topic, "User:bob", AclOperation.WRITE, DENY),
        acl(ResourceType.GROUP, topic, "User:alice", AclOperation.READ, pattern=PREFIXED),
    ]
    create_acls(client, bindings)
    flt = AclBindingFilter(
        ResourceType.ANY, topic, ResourcePatternType.ANY, None, None, AclOperation.ANY,
        AclPermissionType.ANY,
    )  # fmt: skip
    assert set(client.describe_acls(flt).result(15)) == set(bindings)
    only_topic = AclBindingFilter(
        ResourceType.TOPIC, topic, LITERAL, None, None, AclOperation.ANY, AclPermissionType.ANY
    )
    assert len(client.describe_acls(only_topic).result(15)) == 2
    # an invalid ACL: operation not applicable to a group
    bad = acl(ResourceType.GROUP, "g", "User:alice", AclOperation.WRITE)
    with pytest.raises(KafkaException) as err:
        client.create_acls([bad])[bad].result(15)
    assert err.value.args[0].code() == KafkaError.INVALID_REQUEST
    # a principal without ALTER on the cluster cannot create, describe or delete
    bob = admin(broker, "bob")
    # librdkafka reports DescribeAcls' top-level error as an empty answer: nothing leaks,
    # and the wire carries CLUSTER_AUTHORIZATION_FAILED
    assert bob.describe_acls(flt).result(15) == []
    raw = raw_login(broker, "bob")
    answer = raw.request(DescribeAclsRequest(resource_type_filter=1, pattern_type_filter=1), 3)
    raw.close()
    assert answer.error_code == ErrorCode.CLUSTER_AUTHORIZATION_FAILED and not answer.resources
    b2 = acl(ResourceType.TOPIC, "x", "User:bob", AclOperation.ALL)
    with pytest.raises(KafkaException) as err:
        bob.create_acls([b2])[b2].result(15)
    assert err.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED
    deleted = client.delete_acls([only_topic])[only_topic].result(15)
    assert set(deleted) == set(bindings[:2])
    assert client.describe_acls(flt).result(15) == [bindings[2]]
    client.delete_acls([flt])[flt].result(15)


def test_produce_allowed_denied_prefixed_and_deny_wins(broker) -> None:
    client = admin(broker)
    prefix = f"pay{uuid.uuid4().hex[:4]}"
    ok, secret = new_topic(broker, prefix), new_topic(broker, prefix + "-secret")
    create_acls(
        client,
        [
            acl(ResourceType.TOPIC, prefix, "User:alice", AclOperation.WRITE, pattern=PREFIXED),
            acl(ResourceType.TOPIC, secret, "User:alice", AclOperation.ALL, DENY),
        ],
    )
    assert produce(broker, "alice", ok) is None
    err = produce(broker, "alice", secret)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    err = produce(broker, "bob", ok)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # the denied produces never reached the log
    assert end_offset(broker, ok) == 1
    assert end_offset(broker, secret) == 0
    assert produce(broker, "admin", secret) is None  # super user


def test_aiokafka_produce_denied(broker) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import TopicAuthorizationFailedError

    topic = new_topic(broker, "aio")

    async def run() -> None:
        p = AIOKafkaProducer(
            bootstrap_servers=broker.bootstrap,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="PLAIN",
            sasl_plain_username="bob",
            sasl_plain_password=USERS["bob"],
            request_timeout_ms=5000,
        )
        await p.start()
        try:
            with pytest.raises(TopicAuthorizationFailedError):
                await p.send_and_wait(topic, b"x")
        finally:
            await p.stop()

    asyncio.run(run())
    assert end_offset(broker, topic) == 0


def test_metadata_hides_undescribable_topics_and_auto_create_needs_create(broker) -> None:
    client = admin(broker)
    seen, hidden = new_topic(broker, "seen"), new_topic(broker, "hidden")
    create_acls(client, [acl(ResourceType.TOPIC, seen, "User:alice", AclOperation.DESCRIBE)])
    topics = admin(broker, "alice").list_topics(timeout=10).topics
    assert seen in topics and hidden not in topics
    assert hidden in client.list_topics(timeout=10).topics
    # named: TOPIC_AUTHORIZATION_FAILED
    named = admin(broker, "alice").list_topics(topic=hidden, timeout=10).topics
    assert named[hidden].error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # auto-creation: DESCRIBE alone is not enough, CREATE on the topic is
    fresh = f"auto-{uuid.uuid4().hex[:6]}"
    create_acls(client, [acl(ResourceType.TOPIC, fresh, "User:alice", AclOperation.DESCRIBE)])
    md = admin(broker, "alice").list_topics(topic=fresh, timeout=10).topics
    assert md[fresh].error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert fresh not in client.list_topics(timeout=10).topics
    create_acls(client, [acl(ResourceType.TOPIC, fresh, "User:alice", AclOperation.CREATE)])
    md = admin(broker, "alice").list_topics(topic=fresh, timeout=10).topics
    assert md[fresh].error is None or md[fresh].error.code() == KafkaError.LEADER_NOT_AVAILABLE
    assert fresh in client.list_topics(timeout=10).topics


def test_consume_needs_topic_read_and_group_read(broker) -> None:
    from kafka import KafkaConsumer
    from kafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError

    topic = new_topic(broker, "cons")
    assert produce(broker, "admin", topic) is None
    group = f"g-{uuid.uuid4().hex[:6]}"

    def consumer() -> Any:
        return KafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="PLAIN",
            sasl_plain_username="alice",
            sasl_plain_password=USERS["alice"],
            group_id=group,
            auto_offset_reset="earliest",
            consumer_timeout_ms=8000,
        )

    create_acls(admin(broker), [acl(ResourceType.TOPIC, topic, "User:alice", AclOperation.READ)])
    c = consumer()
    with pytest.raises(GroupAuthorizationFailedError):
        c.poll(timeout_ms=8000)
        c.poll(timeout_ms=2000)
    c.close()
    create_acls(admin(broker), [acl(ResourceType.GROUP, group, "User:alice", AclOperation.READ)])
    c = consumer()
    records = [m.value for m in c]
    c.commit()
    c.close()
    assert records == [b"v"]
    # READ taken away by a DENY: the fetch answers TOPIC_AUTHORIZATION_FAILED
    create_acls(
        admin(broker), [acl(ResourceType.TOPIC, topic, "User:alice", AclOperation.READ, DENY)]
    )
    c = consumer()
    with pytest.raises(TopicAuthorizationFailedError):
        for _ in range(4):
            c.poll(timeout_ms=2000)
    c.close()


def test_forged_replica_fetch_is_refused(broker) -> None:
    topic = new_topic(broker, "forge")
    assert produce(broker, "admin", topic) is None
    create_acls(admin(broker), [acl(ResourceType.TOPIC, topic, "User:alice", AclOperation.READ)])
    client = raw_login(broker, "alice")

    def fetch(replica_id: int) -> Any:
        return client.request(
            FetchRequest(
                replica_id=replica_id,
                max_wait_ms=0,
                min_bytes=1,
                max_bytes=1 << 20,
                topics=[
                    FetchTopic(
                        topic=topic,
                        partitions=[
                            FetchPartition(partition=0, fetch_offset=0, partition_max_bytes=1 << 20)
                        ],
                    )
                ],
            ),
            11,
        )

    try:
        forged = fetch(1).responses[0].partitions[0]
        assert forged.error_code == ErrorCode.TOPIC_AUTHORIZATION_FAILED
        assert not forged.records
        ok = fetch(-1).responses[0].partitions[0]
        assert ok.error_code == 0 and ok.records
    finally:
        client.close()


def test_transactional_id_write_needed(broker) -> None:
    topic = new_topic(broker, "txn")
    txn_id = f"tx-{uuid.uuid4().hex[:6]}"
    create_acls(admin(broker), [acl(ResourceType.TOPIC, topic, "User:alice", AclOperation.WRITE)])
    p = Producer({**conf(broker, "alice"), "transactional.id": txn_id})
    with pytest.raises(KafkaException) as err:
        p.init_transactions(10)
    assert err.value.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    create_acls(
        admin(broker),
        [acl(ResourceType.TRANSACTIONAL_ID, txn_id, "User:alice", AclOperation.WRITE)],
    )
    p = Producer({**conf(broker, "alice"), "transactional.id": txn_id})
    p.init_transactions(10)
    p.begin_transaction()
    p.produce(topic, value=b"t")
    p.commit_transaction(10)
    assert end_offset(broker, topic) == 2  # the record and the commit marker


def test_create_and_delete_topics_need_their_acls(broker) -> None:
    bob = admin(broker, "bob")
    name = f"bobs-{uuid.uuid4().hex[:6]}"
    with pytest.raises(KafkaException) as err:
        bob.create_topics([NewTopic(name, 1, 1)])[name].result(15)
    assert err.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    create_acls(
        admin(broker),
        [acl(ResourceType.TOPIC, "bobs-", "User:bob", AclOperation.CREATE, pattern=PREFIXED)],
    )
    bob.create_topics([NewTopic(name, 1, 1)])[name].result(15)
    with pytest.raises(KafkaException) as err:
        bob.delete_topics([name])[name].result(15)
    assert err.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_transaction_tooling_and_admin_abort_acls(broker) -> None:
    from shazamq.protocol.messages.add_partitions_to_txn_request import (
        AddPartitionsToTxnRequest,
        AddPartitionsToTxnTopic,
        AddPartitionsToTxnTransaction,
    )
    from shazamq.protocol.messages.describe_producers_request import (
        DescribeProducersRequest,
        TopicRequest,
    )
    from shazamq.protocol.messages.describe_transactions_request import (
        DescribeTransactionsRequest,
    )
    from shazamq.protocol.messages.list_transactions_request import ListTransactionsRequest
    from shazamq.protocol.messages.write_txn_markers_request import (
        WritableTxnMarker,
        WritableTxnMarkerTopic,
        WriteTxnMarkersRequest,
    )

    topic = new_topic(broker, "tool")
    txn_id = f"tool-{uuid.uuid4().hex[:6]}"
    p = Producer({**conf(broker, "admin"), "transactional.id": txn_id})
    p.init_transactions(10)
    p.begin_transaction()
    p.produce(topic, value=b"t")
    p.flush(10)
    abort = WriteTxnMarkersRequest(
        markers=[
            WritableTxnMarker(
                producer_id=10**12,
                producer_epoch=0,
                transaction_result=False,
                topics=[WritableTxnMarkerTopic(name=topic, partition_indexes=[0])],
                coordinator_epoch=0,
            )
        ]
    )
    verify = AddPartitionsToTxnRequest(
        transactions=[
            AddPartitionsToTxnTransaction(
                transactional_id=txn_id,
                producer_id=0,
                producer_epoch=0,
                verify_only=True,
                topics=[AddPartitionsToTxnTopic(name=topic, partitions=[0])],
            )
        ]
    )
    describe_producers = DescribeProducersRequest(
        topics=[TopicRequest(name=topic, partition_indexes=[0])]
    )
    client = raw_login(broker, "bob")
    try:
        r = client.request(abort, 1)
        assert r.markers[0].topics[0].partitions[0].error_code == (
            ErrorCode.CLUSTER_AUTHORIZATION_FAILED
        )
        assert client.request(verify, 4).error_code == ErrorCode.CLUSTER_AUTHORIZATION_FAILED
        r = client.request(describe_producers, 0)
        assert r.topics[0].partitions[0].error_code == ErrorCode.TOPIC_AUTHORIZATION_FAILED
        r = client.request(DescribeTransactionsRequest(transactional_ids=[txn_id]), 0)
        assert r.transaction_states[0].error_code == (
            ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
        )
        r = client.request(ListTransactionsRequest(), 1)
        assert txn_id not in [t.transactional_id for t in r.transaction_states]
        create_acls(
            admin(broker),
            [
                acl(ResourceType.TOPIC, topic, "User:bob", AclOperation.READ),
                acl(ResourceType.TRANSACTIONAL_ID, txn_id, "User:bob", AclOperation.DESCRIBE),
                acl(ResourceType.BROKER, "kafka-cluster", "User:bob", AclOperation.CLUSTER_ACTION),
            ],
        )
        r = client.request(describe_producers, 0)
        assert r.topics[0].partitions[0].error_code == 0
        assert [s.current_txn_start_offset for s in r.topics[0].partitions[0].active_producers] == [
            0
        ]
        r = client.request(DescribeTransactionsRequest(transactional_ids=[txn_id]), 0)
        assert r.transaction_states[0].transaction_state == "Ongoing"
        r = client.request(ListTransactionsRequest(state_filters=["Ongoing"]), 1)
        assert txn_id in [t.transactional_id for t in r.transaction_states]
        # with CLUSTER_ACTION an operator's abort is written (here for a producer with
        # nothing open: the marker is harmless)
        r = client.request(abort, 1)
        assert r.markers[0].topics[0].partitions[0].error_code == 0
    finally:
        client.close()
    p.abort_transaction(10)


def test_share_group_apis_need_group_and_topic_read(broker) -> None:
    from shazamq.protocol.messages.consumer_group_describe_request import (
        ConsumerGroupDescribeRequest,
    )
    from shazamq.protocol.messages.describe_configs_request import (
        DescribeConfigsRequest,
        DescribeConfigsResource,
    )
    from shazamq.protocol.messages.metadata_request import MetadataRequest, MetadataRequestTopic
    from shazamq.protocol.messages.share_fetch_request import (
        FetchPartition as ShareFetchPartition,
    )
    from shazamq.protocol.messages.share_fetch_request import (
        FetchTopic as ShareFetchTopic,
    )
    from shazamq.protocol.messages.share_fetch_request import ShareFetchRequest
    from shazamq.protocol.messages.share_group_describe_request import (
        ShareGroupDescribeRequest,
    )
    from shazamq.protocol.messages.share_group_heartbeat_request import (
        ShareGroupHeartbeatRequest,
    )

    topic = new_topic(broker, "share")
    group = f"sg-{uuid.uuid4().hex[:6]}"
    tid = (
        raw_login(broker, "admin")
        .request(MetadataRequest(topics=[MetadataRequestTopic(name=topic)]), 12)
        .topics[0]
        .topic_id
    )
    alice = raw_login(broker, "alice")

    def heartbeat() -> Any:
        return alice.request(
            ShareGroupHeartbeatRequest(
                group_id=group, member_id="m-alice", member_epoch=0, subscribed_topic_names=[topic]
            ),
            1,
        )

    def fetch() -> Any:
        return alice.request(
            ShareFetchRequest(
                group_id=group,
                member_id="m-alice",
                share_session_epoch=0,
                max_records=10,
                topics=[
                    ShareFetchTopic(
                        topic_id=tid, partitions=[ShareFetchPartition(partition_index=0)]
                    )
                ],
            ),
            1,
        )

    assert heartbeat().error_code == ErrorCode.GROUP_AUTHORIZATION_FAILED
    assert fetch().error_code == ErrorCode.GROUP_AUTHORIZATION_FAILED
    described = alice.request(ShareGroupDescribeRequest(group_ids=[group]), 1)
    assert described.groups[0].error_code == ErrorCode.GROUP_AUTHORIZATION_FAILED
    # the KIP-848 describe goes through the same per-group guard
    described = alice.request(ConsumerGroupDescribeRequest(group_ids=[group]), 0)
    assert [(g.group_id, g.error_code) for g in described.groups] == [
        (group, ErrorCode.GROUP_AUTHORIZATION_FAILED)
    ]
    configs = alice.request(
        DescribeConfigsRequest(
            resources=[DescribeConfigsResource(resource_type=32, resource_name=group)]
        ),
        4,
    )
    assert configs.results[0].error_code == ErrorCode.GROUP_AUTHORIZATION_FAILED
    create_acls(admin(broker), [acl(ResourceType.GROUP, group, "User:alice", AclOperation.READ)])
    assert heartbeat().error_code == 0
    r = fetch()  # the group is allowed, the topic is not: denied per partition
    assert r.error_code == 0
    assert r.responses[0].partitions[0].error_code == ErrorCode.TOPIC_AUTHORIZATION_FAILED
    create_acls(admin(broker), [acl(ResourceType.TOPIC, topic, "User:alice", AclOperation.READ)])
    r = fetch()
    assert r.error_code == 0 and all(p.error_code == 0 for t in r.responses for p in t.partitions)


def test_share_group_offset_apis_need_kafkas_acls(broker) -> None:
    """DescribeShareGroupOffsets: DESCRIBE on group and topics; AlterShareGroupOffsets:
    READ on group and topics; DeleteShareGroupOffsets: DELETE on the group, READ on the
    topics. A denied group is answered for the whole group, a denied topic per topic."""
    from shazamq.protocol.messages.alter_share_group_offsets_request import (
        AlterShareGroupOffsetsRequest,
        AlterShareGroupOffsetsRequestPartition,
        AlterShareGroupOffsetsRequestTopic,
    )
    from shazamq.protocol.messages.delete_share_group_offsets_request import (
        DeleteShareGroupOffsetsRequest,
        DeleteShareGroupOffsetsRequestTopic,
    )
    from shazamq.protocol.messages.describe_share_group_offsets_request import (
        DescribeShareGroupOffsetsRequest,
        DescribeShareGroupOffsetsRequestGroup,
        DescribeShareGroupOffsetsRequestTopic,
    )
    from shazamq.protocol.messages.share_group_heartbeat_request import (
        ShareGroupHeartbeatRequest,
    )

    topic = new_topic(broker, "sgo")
    group = f"sgo-{uuid.uuid4().hex[:6]}"
    root = raw_login(broker, "admin")
    # the group exists (a member joined and left), so only the ACLs stand in the way
    joined = root.request(
        ShareGroupHeartbeatRequest(
            group_id=group, member_id="m-root", member_epoch=0, subscribed_topic_names=[topic]
        ),
        1,
    )
    assert joined.error_code == 0
    left = root.request(
        ShareGroupHeartbeatRequest(group_id=group, member_id="m-root", member_epoch=-1), 1
    )
    assert left.error_code == 0
    bob = raw_login(broker, "bob")
    U = ErrorCode

    def describe() -> Any:
        return bob.request(
            DescribeShareGroupOffsetsRequest(
                groups=[
                    DescribeShareGroupOffsetsRequestGroup(
                        group_id=group,
                        topics=[
                            DescribeShareGroupOffsetsRequestTopic(topic_name=topic, partitions=[0])
                        ],
                    )
                ]
            ),
            1,
        ).groups[0]

    def alter() -> Any:
        return bob.request(
            AlterShareGroupOffsetsRequest(
                group_id=group,
                topics=[
                    AlterShareGroupOffsetsRequestTopic(
                        topic_name=topic,
                        partitions=[
                            AlterShareGroupOffsetsRequestPartition(
                                partition_index=0, start_offset=0
                            )
                        ],
                    )
                ],
            ),
            0,
        )

    def delete() -> Any:
        return bob.request(
            DeleteShareGroupOffsetsRequest(
                group_id=group, topics=[DeleteShareGroupOffsetsRequestTopic(topic_name=topic)]
            ),
            0,
        )

    assert describe().error_code == U.GROUP_AUTHORIZATION_FAILED
    assert alter().error_code == U.GROUP_AUTHORIZATION_FAILED
    assert delete().error_code == U.GROUP_AUTHORIZATION_FAILED
    # share coordinators are for brokers: CLUSTER_ACTION (which bob has from an earlier
    # test, alice not)
    from shazamq.protocol.messages.find_coordinator_request import FindCoordinatorRequest

    share_key = f"{group}:AAAAAAAAAAAAAAAAAAAAAQ:0"
    alice = raw_login(broker, "alice")
    found = alice.request(FindCoordinatorRequest(key_type=2, coordinator_keys=[share_key]), 6)
    assert found.coordinators[0].error_code == U.CLUSTER_AUTHORIZATION_FAILED
    found = root.request(FindCoordinatorRequest(key_type=2, coordinator_keys=[share_key]), 6)
    assert found.coordinators[0].error_code == 0
    grant = admin(broker)
    create_acls(grant, [acl(ResourceType.GROUP, group, "User:bob", AclOperation.DESCRIBE)])
    d = describe()  # the group may be described, the topic not
    assert d.error_code == 0
    assert [(p.partition_index, p.start_offset, p.error_code) for p in d.topics[0].partitions] == [
        (0, -1, U.TOPIC_AUTHORIZATION_FAILED)
    ]
    assert alter().error_code == U.GROUP_AUTHORIZATION_FAILED  # DESCRIBE is not READ
    create_acls(grant, [acl(ResourceType.GROUP, group, "User:bob", AclOperation.READ)])
    a = alter()
    assert a.error_code == 0
    assert a.responses[0].partitions[0].error_code == U.TOPIC_AUTHORIZATION_FAILED
    assert delete().error_code == U.GROUP_AUTHORIZATION_FAILED  # deleting needs DELETE
    create_acls(grant, [acl(ResourceType.GROUP, group, "User:bob", AclOperation.DELETE)])
    r = delete()
    assert r.error_code == 0
    assert [(t.topic_name, t.error_code) for t in r.responses] == [
        (topic, U.TOPIC_AUTHORIZATION_FAILED)
    ]
    create_acls(grant, [acl(ResourceType.TOPIC, topic, "User:bob", AclOperation.READ)])
    a = alter()  # READ on the topic implies DESCRIBE: everything passes now
    assert (a.error_code, a.responses[0].partitions[0].error_code) == (0, 0)
    d = describe()
    assert [(p.start_offset, p.error_code) for p in d.topics[0].partitions] == [(0, 0)]
    r = delete()
    assert [(t.topic_name, t.error_code) for t in r.responses] == [(topic, 0)]


def test_log_dir_apis_need_the_cluster_and_telemetry_needs_no_acl(broker) -> None:
    """AlterReplicaLogDirs needs ALTER and DescribeLogDirs DESCRIBE on the cluster (every
    partition / the whole answer CLUSTER_AUTHORIZATION_FAILED otherwise); the telemetry
    APIs need only a login, as in Kafka."""
    from shazamq.protocol.messages.alter_replica_log_dirs_request import (
        AlterReplicaLogDir,
        AlterReplicaLogDirsRequest,
        AlterReplicaLogDirTopic,
    )
    from shazamq.protocol.messages.describe_log_dirs_request import DescribeLogDirsRequest
    from shazamq.protocol.messages.get_telemetry_subscriptions_request import (
        GetTelemetrySubscriptionsRequest,
    )

    topic = new_topic(broker, "dirs")
    move = AlterReplicaLogDirsRequest(
        dirs=[
            AlterReplicaLogDir(
                path="/nowhere", topics=[AlterReplicaLogDirTopic(name=topic, partitions=[0, 1])]
            )
        ]
    )
    bob = raw_login(broker, "bob")
    try:
        denied = bob.request(move, 2).results[0].partitions
        assert [p.error_code for p in denied] == [ErrorCode.CLUSTER_AUTHORIZATION_FAILED] * 2
        described = bob.request(DescribeLogDirsRequest(topics=None), 4)
        assert described.error_code == ErrorCode.CLUSTER_AUTHORIZATION_FAILED
        assert described.results == []
        sub = bob.request(GetTelemetrySubscriptionsRequest(), 0)
        assert sub.error_code == 0 and sub.requested_metrics == []
    finally:
        bob.close()
    create_acls(
        admin(broker), [acl(ResourceType.BROKER, "kafka-cluster", "User:bob", AclOperation.ALTER)]
    )
    bob = raw_login(broker, "bob")
    try:
        allowed = bob.request(move, 2).results[0].partitions
        assert [p.error_code for p in allowed] == [ErrorCode.LOG_DIR_NOT_FOUND] * 2
    finally:
        bob.close()
