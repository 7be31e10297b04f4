"""LogConfig and LogManager.

Covers: Kafka-named overrides parsed and validated with INVALID_CONFIG (40) naming the
key; the settings table; the manager loading every partition directory at start,
creating and deleting partitions, per-topic configs, maintenance (retention, compaction,
flush policy, deferred deletions) and a clean close/reopen.
"""

from __future__ import annotations

import os

import pytest

from shazamq.broker.log import CONFIG_DEFS, InvalidConfigError, LogConfig, LogManager
from shazamq.protocol import records as r


def test_overrides_parse_kafka_strings() -> None:
    cfg = LogConfig().with_overrides(
        {
            "segment.bytes": "1048576",
            "retention.ms": "-1",
            "cleanup.policy": "compact, delete",
            "min.cleanable.dirty.ratio": "0.25",
            "message.timestamp.type": "LogAppendTime",
        }
    )
    assert cfg.segment_bytes == 1 << 20 and cfg.retention_ms == -1
    assert cfg.compact and cfg.delete and cfg.log_append_time
    assert cfg.min_cleanable_dirty_ratio == 0.25
    assert LogConfig.from_kafka(cfg.to_kafka()) == cfg
    assert set(cfg.to_kafka()) == set(CONFIG_DEFS)
    assert all(d.doc for d in CONFIG_DEFS.values())


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("segment.bytes", "abc"),
        ("segment.bytes", "10"),
        ("segment.bytes", str(2**31)),
        ("retention.ms", "-2"),
        ("cleanup.policy", "compact,shred"),
        ("min.cleanable.dirty.ratio", "1.5"),
        ("min.cleanable.dirty.ratio", "nan"),
        ("message.timestamp.type", "WallClock"),
        ("flush.messages", "0"),
        ("no.such.setting", "1"),
    ],
)
def test_invalid_overrides_name_the_key(key: str, value: str) -> None:
    with pytest.raises(InvalidConfigError) as info:
        LogConfig().with_overrides({key: value})
    assert info.value.error_code == 40
    assert info.value.key == key
    assert key in str(info.value)


def test_cross_field_rule_and_unknown_keys() -> None:
    with pytest.raises(InvalidConfigError) as info:
        LogConfig().with_overrides({"min.compaction.lag.ms": "10", "max.compaction.lag.ms": "5"})
    assert info.value.key == "min.compaction.lag.ms"
    assert (
        LogConfig().with_overrides({"min.insync.replicas": "2"}, ignore_unknown=True) == LogConfig()
    )


def test_manager_loads_creates_deletes_and_maintains(tmp_path, mk_batch) -> None:
    data_dir = str(tmp_path / "data")
    base = LogConfig(segment_bytes=800, retention_bytes=2000, file_delete_delay_ms=0)
    compacted = base.with_overrides({"cleanup.policy": "compact", "retention.bytes": "-1"})
    mgr = LogManager(data_dir, base)
    logs = [mgr.get_or_create("events", p) for p in range(3)]
    kv = mgr.get_or_create("my-topic.v2", 0, config=compacted)
    assert mgr.get_or_create("events", 1) is logs[1]
    for _ in range(30):
        for log in logs:
            log.append(mk_batch(1, value=b"e" * 100))
        kv.append(mk_batch(1, value=b"k" * 100))
    report = mgr.run_maintenance(now_ms=10**12)
    assert not report.errors and not report.skipped
    assert report.segments_deleted > 0 and report.logs_compacted == 1
    assert all(log.size_bytes <= 2000 + 800 for log in logs)
    assert kv.log_start_offset == 0
    assert mgr.delete_partition("events", 2)
    assert not mgr.delete_partition("events", 2)
    assert mgr.get("events", 2) is None
    mgr.run_maintenance(now_ms=10**12)
    assert sorted(os.listdir(data_dir)) == ["events-0", "events-1", "my-topic.v2-0"]
    mgr.close()

    again = LogManager(data_dir, base, topic_configs={"my-topic.v2": compacted})
    assert sorted(again.partitions()) == [("events", 0), ("events", 1), ("my-topic.v2", 0)]
    assert all(log.had_clean_shutdown for log in again)
    assert again.get("events", 0).log_end_offset == 30
    assert again.get("my-topic.v2", 0).config.compact
    again.flush_all()
    again.close()


def test_flush_policy(tmp_path, mk_batch) -> None:
    mgr = LogManager(str(tmp_path), LogConfig(flush_messages=5))
    log = mgr.get_or_create("f", 0)
    for _ in range(4):
        log.append(mk_batch(1))
    assert not log.flush_due(0)
    assert mgr.run_maintenance(now_ms=0).logs_flushed == 0
    log.append(mk_batch(1))
    assert log.flush_due(0)
    assert mgr.run_maintenance(now_ms=0).logs_flushed == 1
    assert log.recovery_point == 5 and not log.flush_due(0)
    mgr.close()


def test_update_topic_config_applies_to_open_logs(tmp_path) -> None:
    mgr = LogManager(str(tmp_path), LogConfig())
    log = mgr.get_or_create("t", 0)
    mgr.update_topic_config("t", LogConfig(max_message_bytes=100))
    with pytest.raises(r.MessageTooLargeError):
        log.append(r.build_batch([r.Record(value=b"x" * 200)]))
    mgr.update_topic_config("t", None)
    log.append(r.build_batch([r.Record(value=b"x" * 200)]))
    mgr.close()


def test_opening_a_topics_partitions_applies_its_config_once(tmp_path, monkeypatch) -> None:
    """get_or_create with the topic's config applies it only when it changed: applying
    walks every open log, so doing it per partition made opening (or creating) a topic
    of N partitions O(N^2)."""
    from shazamq.broker.log import LogConfig, LogManager, PartitionLog

    mgr = LogManager(str(tmp_path), LogConfig())
    cfg = LogConfig(segment_bytes=1 << 20)
    updates = 0
    real = PartitionLog.update_config

    def counting(self, config):  # type: ignore[no-untyped-def]
        nonlocal updates
        updates += 1
        return real(self, config)

    monkeypatch.setattr(PartitionLog, "update_config", counting)
    for i in range(100):
        mgr.get_or_create("t", i, config=cfg)
    assert updates <= 1
    assert all(mgr.get("t", i).config == cfg for i in range(100))  # type: ignore[union-attr]
    new_cfg = LogConfig(segment_bytes=2 << 20)
    mgr.get_or_create("t", 0, config=new_cfg)  # a change still reaches every open log
    assert all(mgr.get("t", i).config == new_cfg for i in range(100))  # type: ignore[union-attr]
    mgr.close()
