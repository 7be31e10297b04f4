"""Topic administration through confluent-kafka's AdminClient.

Covers: create (and validate-only), describe configs, alter configs (legacy and
incremental), create partitions, delete records, delete topics, and Kafka's error codes
for bad requests.
"""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from shazamq.protocol.errors import ErrorCode


@pytest.fixture
def admin(shared_broker):
    return AdminClient({"bootstrap.servers": shared_broker.bootstrap})


def error_code(exc_info) -> int:
    err = exc_info.value.args[0]
    return err.code()


def test_create_describe_alter_delete(admin, topic_name):
    fs = admin.create_topics(
        [
            NewTopic(
                topic_name,
                num_partitions=2,
                replication_factor=1,
                config={"retention.ms": "3600000", "cleanup.policy": "delete"},
            )
        ]
    )
    fs[topic_name].result(15)
    meta = admin.list_topics(topic_name, timeout=10)
    assert sorted(meta.topics[topic_name].partitions) == [0, 1]

    res = ConfigResource(ConfigResource.Type.TOPIC, topic_name)
    configs = admin.describe_configs([res])[res].result(15)
    assert configs["retention.ms"].value == "3600000"
    assert not configs["retention.ms"].is_default
    assert configs["segment.bytes"].value == str(1073741824)
    assert configs["cleanup.policy"].value == "delete"

    # Incremental: set one key, others untouched.
    res = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic_name,
        incremental_configs=[
            ConfigEntry("max.message.bytes", "2000000", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    admin.incremental_alter_configs([res])[res].result(15)
    res = ConfigResource(ConfigResource.Type.TOPIC, topic_name)
    configs = admin.describe_configs([res])[res].result(15)
    assert configs["max.message.bytes"].value == "2000000"
    assert configs["retention.ms"].value == "3600000"

    # Legacy AlterConfigs replaces the whole set.
    res = ConfigResource(
        ConfigResource.Type.TOPIC, topic_name, set_config={"retention.bytes": "1048576"}
    )
    with pytest.warns(DeprecationWarning):
        admin.alter_configs([res])[res].result(15)
    res = ConfigResource(ConfigResource.Type.TOPIC, topic_name)
    configs = admin.describe_configs([res])[res].result(15)
    assert configs["retention.bytes"].value == "1048576"
    assert configs["retention.ms"].is_default

    admin.create_partitions([NewPartitions(topic_name, 5)])[topic_name].result(15)
    meta = admin.list_topics(topic_name, timeout=10)
    assert sorted(meta.topics[topic_name].partitions) == [0, 1, 2, 3, 4]

    admin.delete_topics([topic_name])[topic_name].result(15)
    meta = admin.list_topics(timeout=10)
    assert topic_name not in meta.topics


def test_create_errors(admin, topic_name):
    admin.create_topics([NewTopic(topic_name, 1, 1)])[topic_name].result(15)
    with pytest.raises(KafkaException) as e:
        admin.create_topics([NewTopic(topic_name, 1, 1)])[topic_name].result(15)
    assert error_code(e) == ErrorCode.TOPIC_ALREADY_EXISTS

    bad = topic_name + "-bad-config"
    with pytest.raises(KafkaException) as e:
        admin.create_topics([NewTopic(bad, 1, 1, config={"retention.ms": "soon"})])[bad].result(15)
    assert error_code(e) == ErrorCode.INVALID_CONFIG

    with pytest.raises(KafkaException) as e:
        admin.create_topics([NewTopic(bad, 1, 1, config={"no.such.setting": "1"})])[bad].result(15)
    assert error_code(e) == ErrorCode.INVALID_CONFIG

    with pytest.raises(KafkaException) as e:
        admin.create_topics([NewTopic("bad/name", 1, 1)])["bad/name"].result(15)
    assert error_code(e) == ErrorCode.INVALID_TOPIC_EXCEPTION

    with pytest.raises(KafkaException) as e:
        admin.create_topics([NewTopic(bad, 1, 3)])[bad].result(15)
    assert error_code(e) == ErrorCode.INVALID_REPLICATION_FACTOR

    with pytest.raises(KafkaException) as e:
        admin.create_partitions([NewPartitions(topic_name, 1)])[topic_name].result(15)
    assert error_code(e) == ErrorCode.INVALID_PARTITIONS

    with pytest.raises(KafkaException) as e:
        admin.delete_topics(["does-not-exist"])["does-not-exist"].result(15)
    assert error_code(e) == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


def test_validate_only_creates_nothing(admin, topic_name):
    admin.create_topics([NewTopic(topic_name, 3, 1)], validate_only=True)[topic_name].result(15)
    assert topic_name not in admin.list_topics(timeout=10).topics


def test_delete_records_moves_log_start(admin, shared_broker, topic_name):
    admin.create_topics([NewTopic(topic_name, 1, 1)])[topic_name].result(15)
    p = Producer({"bootstrap.servers": shared_broker.bootstrap})
    for i in range(10):
        p.produce(topic_name, value=b"%d" % i, partition=0)
    p.flush(10)
    res = admin.delete_records([TopicPartition(topic_name, 0, 6)])
    deleted = res[TopicPartition(topic_name, 0, 6)].result(15)
    assert deleted.low_watermark == 6
    from confluent_kafka import Consumer

    c = Consumer(
        {
            "bootstrap.servers": shared_broker.bootstrap,
            "group.id": "dr",
            "auto.offset.reset": "earliest",
        }
    )
    try:
        assert c.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=10) == (6, 10)
        c.assign([TopicPartition(topic_name, 0, 6)])
        msg = None
        for _ in range(20):
            msg = c.poll(0.5)
            if msg is not None:
                break
        assert msg is not None and msg.offset() == 6 and msg.value() == b"6"
    finally:
        c.close()


def test_describe_broker_and_cluster(admin, shared_broker):
    res = ConfigResource(ConfigResource.Type.BROKER, "0")
    configs = admin.describe_configs([res])[res].result(15)
    assert configs["log.dirs"].value == str(shared_broker.data_dir)
    assert configs["log.dirs"].is_read_only
    cluster = admin.describe_cluster().result(15)
    assert [n.id for n in cluster.nodes] == [0]
    assert cluster.controller.id == 0
    assert cluster.cluster_id
