"""Every client library over every secured listener, with ACLs on.

Listeners (one broker process each, module-scoped): SASL_SSL with PLAIN, SCRAM-SHA-256
and SCRAM-SHA-512, and mTLS (client certificates mapped to principals by
``principal_mapping_rules``). Clients: confluent-kafka, aiokafka and kafka-python, each
logging in as ``User:alice`` (a password, or a certificate whose subject
``CN=alice,OU=clients,O=Example`` the rule maps to ``alice``).

alice's ACLs, created once per broker by the super user ``admin``:

- topics PREFIXED ``ok-``: READ, WRITE, CREATE, DELETE, DESCRIBE_CONFIGS;
- topics PREFIXED ``no-``: DESCRIBE only (visible, not readable or writable);
- groups PREFIXED ``ok-``: READ; transactional ids PREFIXED ``ok-``: WRITE;
- nothing on ``hidden-`` topics, ``no-`` groups or ``no-`` transactional ids.

Each client then, as alice: produces and consumes back with a group (join, fetch,
commit, committed offset read back); is refused produce and fetch on a ``no-`` topic
(TOPIC_AUTHORIZATION_FAILED, the log unchanged), the group join and an offset commit in a
``no-`` group (GROUP_AUTHORIZATION_FAILED); creates, describes the configs of and deletes
``ok-`` topics and is refused each on ``no-`` topics (TOPIC_AUTHORIZATION_FAILED); lists
topics without the ``hidden-`` one; produces in a transaction (read back by a
read_committed consumer) and is refused a ``no-`` transactional id
(TRANSACTIONAL_ID_AUTHORIZATION_FAILED).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)
from tls_helpers import write_certificates, write_client_certificate

from shazamq.protocol.errors import ErrorCode

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # kafka-python

TOPIC_DENIED = ErrorCode.TOPIC_AUTHORIZATION_FAILED
GROUP_DENIED = ErrorCode.GROUP_AUTHORIZATION_FAILED
TXN_DENIED = ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
PASSWORDS = {"admin": "admin-pw", "alice": "alice-pw"}
RULES = ["RULE:^CN=([^,]+),OU=clients,O=Example$/$1/L", "DEFAULT"]
LISTENERS = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "mTLS"]
CLIENTS = ["confluent-kafka", "aiokafka", "kafka-python"]


class Refused(Exception):
    """An operation a client reported failed, with the Kafka error code it reported."""

    def __init__(self, code: int, what: str = "") -> None:
        super().__init__(f"{what}: error {code}")
        self.code = int(code)


@dataclass
class Listener:
    """One broker, how to reach it, and as whom."""

    kind: str  # a SASL mechanism, or "mTLS"
    bootstrap: str
    pki: dict[str, Path]

    @property
    def mtls(self) -> bool:
        return self.kind == "mTLS"

    def confluent(self, user: str) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "ssl.ca.location": str(self.pki["ca"]),
        }
        if self.mtls:
            conf |= {
                "security.protocol": "SSL",
                "ssl.certificate.location": str(self.pki[user]),
                "ssl.key.location": str(self.pki[f"{user}-key"]),
            }
        else:
            conf |= {
                "security.protocol": "SASL_SSL",
                "sasl.mechanism": self.kind,
                "sasl.username": user,
                "sasl.password": PASSWORDS[user],
            }
        return conf

    def aiokafka(self, user: str) -> dict[str, Any]:
        from aiokafka.helpers import create_ssl_context

        cert = {"certfile": str(self.pki[user]), "keyfile": str(self.pki[f"{user}-key"])}
        ctx = create_ssl_context(cafile=str(self.pki["ca"]), **(cert if self.mtls else {}))
        kw: dict[str, Any] = {"bootstrap_servers": self.bootstrap, "ssl_context": ctx}
        if self.mtls:
            return kw | {"security_protocol": "SSL"}
        return kw | {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": self.kind,
            "sasl_plain_username": user,
            "sasl_plain_password": PASSWORDS[user],
        }

    def kafka_python(self, user: str) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "ssl_cafile": str(self.pki["ca"]),
        }
        if self.mtls:
            return kw | {
                "security_protocol": "SSL",
                "ssl_certfile": str(self.pki[user]),
                "ssl_keyfile": str(self.pki[f"{user}-key"]),
            }
        return kw | {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": self.kind,
            "sasl_plain_username": user,
            "sasl_plain_password": PASSWORDS[user],
        }


# -- the three clients, behind one small interface ------------------------------------------
#
# Each method does one thing as alice and returns what it got, or raises Refused with the
# error code the library reported.


def _code(exc: BaseException) -> int:
    """The Kafka error code a library's exception carries."""
    if isinstance(exc, KafkaException):
        return exc.args[0].code()
    errno = getattr(exc, "errno", None)
    if isinstance(errno, int):
        return errno
    raise exc


class ConfluentClient:
    def __init__(self, listener: Listener) -> None:
        self.conf = listener.confluent("alice")

    def produce(self, topic: str, values: list[bytes]) -> None:
        errors: list[Any] = []
        p = Producer({**self.conf, "message.timeout.ms": 10000, "retries": 0})
        for v in values:
            p.produce(topic, v, partition=0, on_delivery=lambda e, _m: e and errors.append(e))
        assert p.flush(20) == 0
        if errors:
            raise Refused(errors[0].code(), "produce")

    def consume(self, topic: str, group: str, n: int) -> tuple[list[bytes], int]:
        c = Consumer(
            {
                **self.conf,
                "group.id": group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        try:
            c.subscribe([topic])
            got: list[bytes] = []
            deadline = time.monotonic() + 30
            while len(got) < n and time.monotonic() < deadline:
                m = c.poll(0.5)
                if m is None:
                    continue
                if m.error() is not None:
                    if m.error().code() in (TOPIC_DENIED, GROUP_DENIED):
                        raise Refused(m.error().code(), "consume")
                    continue
                got.append(m.value())
            if len(got) < n:
                return got, -1
            try:
                c.commit(asynchronous=False)
            except KafkaException as exc:
                raise Refused(_code(exc), "commit") from None
            committed = c.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
            return got, committed
        finally:
            c.close()

    def commit(self, group: str, topic: str, offset: int) -> None:
        # librdkafka's consumer reports a refused FindCoordinator only as an error event and
        # then waits on close for the commit it could not send: the AdminClient's
        # AlterConsumerGroupOffsets (an OffsetCommit too) answers with the code itself.
        from confluent_kafka import ConsumerGroupTopicPartitions

        admin = self._admin()
        request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, offset)])
        try:
            (future,) = admin.alter_consumer_group_offsets([request]).values()
            future.result(15)
        except KafkaException as exc:
            raise Refused(_code(exc), "commit") from None

    def _admin(self) -> AdminClient:
        return AdminClient(self.conf)

    def create_topic(self, name: str) -> None:
        admin = self._admin()  # held until the result is in
        try:
            admin.create_topics([NewTopic(name, 1, 1)])[name].result(15)
        except KafkaException as exc:
            raise Refused(_code(exc), "create") from None

    def delete_topic(self, name: str) -> None:
        admin = self._admin()
        try:
            admin.delete_topics([name])[name].result(15)
        except KafkaException as exc:
            raise Refused(_code(exc), "delete") from None

    def describe_configs(self, topic: str) -> dict[str, str | None]:
        res = ConfigResource(ResourceType.TOPIC, topic)
        admin = self._admin()
        try:
            entries = admin.describe_configs([res])[res].result(15)
        except KafkaException as exc:
            raise Refused(_code(exc), "describe configs") from None
        return {k: e.value for k, e in entries.items()}

    def list_topics(self) -> set[str]:
        return set(self._admin().list_topics(timeout=15).topics)

    def transactional_produce(self, txn_id: str, topic: str, values: list[bytes]) -> None:
        p = Producer({**self.conf, "transactional.id": txn_id})
        try:
            p.init_transactions(15)
            p.begin_transaction()
            for v in values:
                p.produce(topic, v, partition=0)
            p.commit_transaction(15)
        except KafkaException as exc:
            raise Refused(_code(exc), "transaction") from None


class AiokafkaClient:
    def __init__(self, listener: Listener) -> None:
        self.kw = listener.aiokafka("alice")

    @staticmethod
    def _run(coro: Any) -> Any:
        return asyncio.run(asyncio.wait_for(coro, 60))

    def produce(self, topic: str, values: list[bytes]) -> None:
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError

        async def run() -> None:
            p = AIOKafkaProducer(**self.kw, request_timeout_ms=10000)
            await p.start()
            try:
                for v in values:
                    await p.send_and_wait(topic, v, partition=0)
            except KafkaError as exc:
                raise Refused(_code(exc), "produce") from None
            finally:
                await p.stop()

        self._run(run())

    def consume(self, topic: str, group: str, n: int) -> tuple[list[bytes], int]:
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.errors import KafkaError

        async def run() -> tuple[list[bytes], int]:
            c = AIOKafkaConsumer(
                topic,
                **self.kw,
                group_id=group,
                auto_offset_reset="earliest",
                enable_auto_commit=False,
            )
            got: list[bytes] = []
            try:
                await c.start()
                deadline = time.monotonic() + 30
                while len(got) < n and time.monotonic() < deadline:
                    batches = await c.getmany(timeout_ms=500)
                    got += [m.value for msgs in batches.values() for m in msgs]
                if len(got) < n:
                    return got, -1
                await c.commit()
                return got, await c.committed(TopicPartition(topic, 0))
            except KafkaError as exc:
                raise Refused(_code(exc), "consume") from None
            finally:
                await c.stop()

        return self._run(run())

    def commit(self, group: str, topic: str, offset: int) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.errors import KafkaError

        async def run() -> None:
            tp = TopicPartition(topic, 0)
            c = AIOKafkaConsumer(**self.kw, group_id=group, enable_auto_commit=False)
            await c.start()
            try:
                c.assign([tp])
                await c.commit({tp: offset})
            except KafkaError as exc:
                raise Refused(_code(exc), "commit") from None
            finally:
                await c.stop()

        self._run(run())

    async def _admin(self, call: str, *args: Any) -> Any:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(**self.kw)
        await admin.start()
        try:
            return await getattr(admin, call)(*args)
        finally:
            await admin.close()

    def create_topic(self, name: str) -> None:
        from aiokafka.admin import NewTopic as AioNewTopic

        resp = self._run(self._admin("create_topics", [AioNewTopic(name, 1, 1)]))
        ((_, code, *_),) = resp.topic_errors
        if code:
            raise Refused(code, "create")

    def delete_topic(self, name: str) -> None:
        resp = self._run(self._admin("delete_topics", [name]))
        ((_, code, *_),) = resp.topic_error_codes
        if code:
            raise Refused(code, "delete")

    def describe_configs(self, topic: str) -> dict[str, str | None]:
        from aiokafka.admin.config_resource import ConfigResource as AioConfigResource
        from aiokafka.admin.config_resource import ConfigResourceType

        res = AioConfigResource(ConfigResourceType.TOPIC, topic)
        (resp,) = self._run(self._admin("describe_configs", [res]))
        ((code, _msg, _rtype, _name, entries),) = resp.resources
        if code:
            raise Refused(code, "describe configs")
        return {e[0]: e[1] for e in entries}

    def list_topics(self) -> set[str]:
        return set(self._run(self._admin("list_topics")))

    def transactional_produce(self, txn_id: str, topic: str, values: list[bytes]) -> None:
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError

        async def run() -> None:
            p = AIOKafkaProducer(**self.kw, transactional_id=txn_id, request_timeout_ms=10000)
            try:
                await p.start()
                async with p.transaction():
                    for v in values:
                        await p.send_and_wait(topic, v, partition=0)
            except KafkaError as exc:
                raise Refused(_code(exc), "transaction") from None
            finally:
                await p.stop()

        self._run(run())


class KafkaPythonClient:
    def __init__(self, listener: Listener) -> None:
        self.kw = listener.kafka_python("alice")

    def produce(self, topic: str, values: list[bytes]) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        p = KafkaProducer(**self.kw, retries=0, request_timeout_ms=10000)
        try:
            for v in values:
                p.send(topic, v, partition=0).get(timeout=20)
        except KafkaError as exc:
            raise Refused(_code(exc), "produce") from None
        finally:
            p.close(timeout=5)

    def consume(self, topic: str, group: str, n: int) -> tuple[list[bytes], int]:
        from kafka import KafkaConsumer, TopicPartition
        from kafka.errors import KafkaError

        c = KafkaConsumer(
            topic,
            **self.kw,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        got: list[bytes] = []
        try:
            deadline = time.monotonic() + 30
            while len(got) < n and time.monotonic() < deadline:
                batches = c.poll(timeout_ms=500)
                got += [m.value for msgs in batches.values() for m in msgs]
            if len(got) < n:
                return got, -1
            c.commit()
            return got, c.committed(TopicPartition(topic, 0))
        except KafkaError as exc:
            raise Refused(_code(exc), "consume") from None
        finally:
            c.close()

    def commit(self, group: str, topic: str, offset: int) -> None:
        from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
        from kafka.errors import KafkaError

        c = KafkaConsumer(**self.kw, group_id=group, enable_auto_commit=False)
        try:
            c.commit({TopicPartition(topic, 0): OffsetAndMetadata(offset, "", -1)})
        except KafkaError as exc:
            raise Refused(_code(exc), "commit") from None
        finally:
            c.close()

    def _admin(self) -> Any:
        from kafka.admin import KafkaAdminClient

        return KafkaAdminClient(**self.kw)

    def _admin_call(self, what: str, call: str, *args: Any, **kw: Any) -> Any:
        from kafka.errors import KafkaError

        admin = self._admin()
        try:
            return getattr(admin, call)(*args, **kw)
        except KafkaError as exc:
            raise Refused(_code(exc), what) from None
        finally:
            admin.close()

    def create_topic(self, name: str) -> None:
        spec = {name: {"num_partitions": 1, "replication_factor": 1}}
        self._admin_call("create", "create_topics", spec)

    def delete_topic(self, name: str) -> None:
        self._admin_call("delete", "delete_topics", [name])

    def describe_configs(self, topic: str) -> dict[str, str | None]:
        from kafka.admin import ConfigResource as KpConfigResource
        from kafka.admin import ConfigResourceType

        # describe_configs() drops each resource's error code: send its request through
        # the admin client's own connection and read the answer whole.
        res = KpConfigResource(ConfigResourceType.TOPIC, topic)
        admin = self._admin()
        try:
            request = admin._describe_configs_request([res], False)

            async def send() -> Any:
                return await admin._manager.send(request)

            (result,) = admin._manager.run(send).results
        finally:
            admin.close()
        if result.error_code:
            raise Refused(result.error_code, "describe configs")
        return {c.name: c.value for c in result.configs}

    def list_topics(self) -> set[str]:
        return set(self._admin_call("list", "list_topics"))

    def transactional_produce(self, txn_id: str, topic: str, values: list[bytes]) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        p = KafkaProducer(**self.kw, transactional_id=txn_id, request_timeout_ms=10000)
        try:
            p.init_transactions()
            p.begin_transaction()
            for v in values:
                p.send(topic, v, partition=0)
            p.commit_transaction()
        except KafkaError as exc:
            raise Refused(_code(exc), "transaction") from None
        finally:
            p.close(timeout=5)


CLIENT_CLASSES = {
    "confluent-kafka": ConfluentClient,
    "aiokafka": AiokafkaClient,
    "kafka-python": KafkaPythonClient,
}


# -- brokers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("matrix-pki")
    paths = {n: d / f"{n}.pem" for n in ("ca", "ca-key", "cert", "key")}
    write_certificates(paths["ca"], paths["cert"], paths["key"], ca_key_path=paths["ca-key"])
    for user in PASSWORDS:
        paths[user], paths[f"{user}-key"] = d / f"{user}.pem", d / f"{user}-key.pem"
        subject = [("O", "Example"), ("OU", "clients"), ("CN", user.capitalize())]
        write_client_certificate(
            paths["ca"], paths["ca-key"], paths[user], paths[f"{user}-key"], subject
        )
    return paths


def _alice_acls() -> list[AclBinding]:
    allow, prefixed = AclPermissionType.ALLOW, ResourcePatternType.PREFIXED

    def acl(rtype: ResourceType, prefix: str, op: AclOperation) -> AclBinding:
        return AclBinding(rtype, prefix, prefixed, "User:alice", "*", op, allow)

    ops = ("READ", "WRITE", "CREATE", "DELETE", "DESCRIBE_CONFIGS")
    return [
        *(acl(ResourceType.TOPIC, "ok-", AclOperation[op]) for op in ops),
        acl(ResourceType.TOPIC, "no-", AclOperation.DESCRIBE),
        acl(ResourceType.GROUP, "ok-", AclOperation.READ),
        acl(ResourceType.TRANSACTIONAL_ID, "ok-", AclOperation.WRITE),
    ]


@pytest.fixture(scope="module", params=LISTENERS)
def listener(request: pytest.FixtureRequest, pki, tmp_path_factory) -> Iterator[Listener]:
    from tests.conftest import BrokerProcess

    kind = request.param
    settings: dict[str, Any] = {
        "security__tls__enabled": True,
        "security__tls__cert_file": str(pki["cert"]),
        "security__tls__key_file": str(pki["key"]),
        "security__authorization__enabled": True,
        "security__authorization__super_users": '["User:admin"]',
    }
    if kind == "mTLS":
        settings["security__tls__ca_file"] = str(pki["ca"])
        settings["security__tls__principal_mapping_rules"] = json.dumps(RULES)
    else:
        settings["security__sasl__enabled"] = True
        settings["security__sasl__mechanisms"] = json.dumps([kind])
        settings["security__sasl__users"] = json.dumps(PASSWORDS)
    broker = BrokerProcess(tmp_path_factory.mktemp(f"matrix-{kind}"), **settings).start()
    try:
        lst = Listener(kind, broker.bootstrap, pki)
        admin = AdminClient(lst.confluent("admin"))
        for f in admin.create_acls(_alice_acls()).values():
            f.result(15)
        yield lst
    finally:
        broker.stop()


@pytest.fixture(params=CLIENTS)
def client(request: pytest.FixtureRequest, listener: Listener) -> Any:
    return CLIENT_CLASSES[request.param](listener)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _admin_topic(listener: Listener, prefix: str, values: list[bytes] = ()) -> str:  # type: ignore[assignment]
    """A topic created (and filled) by the super user."""
    name = _name(prefix)
    admin = AdminClient(listener.confluent("admin"))
    admin.create_topics([NewTopic(name, 1, 1)])[name].result(15)
    if values:
        p = Producer(listener.confluent("admin"))
        for v in values:
            p.produce(name, v, partition=0)
        assert p.flush(15) == 0
    return name


def _end_offset(listener: Listener, topic: str) -> int:
    c = Consumer({**listener.confluent("admin"), "group.id": "matrix-check"})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, 0), timeout=15)[1]
    finally:
        c.close()


def _read_committed(listener: Listener, topic: str, n: int) -> list[bytes]:
    c = Consumer(
        {
            **listener.confluent("admin"),
            "group.id": _name("matrix-read"),
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        got: list[bytes] = []
        deadline = time.monotonic() + 20
        while len(got) < n and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                got.append(m.value())
        return got
    finally:
        c.close()


def _refused(call: Any, *args: Any) -> int:
    with pytest.raises(Refused) as info:
        call(*args)
    return info.value.code


# -- the matrix ------------------------------------------------------------------------------


def test_produce_consume_and_commit_in_a_group(listener: Listener, client: Any) -> None:
    topic = _admin_topic(listener, "ok")
    values = [f"{listener.kind}-{i}".encode() for i in range(5)]
    client.produce(topic, values)
    got, committed = client.consume(topic, _name("ok-group"), len(values))
    assert got == values
    assert committed == len(values)
    client.commit(_name("ok-group"), topic, 3)  # a standalone commit, allowed too


def test_denied_produce_fetch_join_and_commit(listener: Listener, client: Any) -> None:
    denied = _admin_topic(listener, "no", [b"kept"])
    assert _refused(client.produce, denied, [b"x"]) == TOPIC_DENIED
    assert _end_offset(listener, denied) == 1  # the denied produce never reached the log
    assert _refused(client.consume, denied, _name("ok-group"), 1) == TOPIC_DENIED
    readable = _admin_topic(listener, "ok", [b"v"])
    assert _refused(client.consume, readable, _name("no-group"), 1) == GROUP_DENIED
    assert _refused(client.commit, _name("no-group"), readable, 1) == GROUP_DENIED


def test_topic_admin_configs_and_metadata(listener: Listener, client: Any) -> None:
    hidden = _admin_topic(listener, "hidden")
    visible = _admin_topic(listener, "no")
    mine = _name("ok")
    client.create_topic(mine)
    assert _refused(client.create_topic, _name("no")) == TOPIC_DENIED
    configs = client.describe_configs(mine)
    assert configs["cleanup.policy"] == "delete"
    assert _refused(client.describe_configs, visible) == TOPIC_DENIED
    topics = client.list_topics()
    assert {mine, visible} <= topics
    assert hidden not in topics
    assert _refused(client.delete_topic, visible) == TOPIC_DENIED
    client.delete_topic(mine)
    admin = AdminClient(listener.confluent("admin"))
    deadline = time.monotonic() + 10
    while mine in admin.list_topics(timeout=10).topics and time.monotonic() < deadline:
        time.sleep(0.1)
    assert mine not in admin.list_topics(timeout=10).topics
    assert visible in admin.list_topics(timeout=10).topics


def test_transactional_produce(listener: Listener, client: Any) -> None:
    topic = _admin_topic(listener, "ok")
    values = [b"t0", b"t1", b"t2"]
    client.transactional_produce(_name("ok-txn"), topic, values)
    assert _read_committed(listener, topic, len(values)) == values
    assert _refused(client.transactional_produce, _name("no-txn"), topic, [b"x"]) == TXN_DENIED
    assert _end_offset(listener, topic) == len(values) + 1  # the records and the commit marker
