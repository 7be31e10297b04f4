"""The configuration models: the original operator's TOML, errors, env, round-trips."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shazamq.config import (
    BrokerConfig,
    ConfigError,
    dump_toml,
    load_config,
    parse_config,
)

ROOT = Path(__file__).resolve().parents[2]

# The file the original (Rust) operator rendered into the broker's ConfigMap.
ORIGINAL_OPERATOR_TOML = textwrap.dedent(
    """\
    [broker]
    host = "0.0.0.0"
    port = 9092
    data_dir = "/data/shazamq"

    [storage]
    segment_bytes = 1073741824
    retention_hours = 168

    [metrics]
    enabled = true
    host = "0.0.0.0"
    port = 9090

    [tiered_storage]
    enabled = true
    provider = "s3"

    [tiered_storage.s3]
    bucket = "shazamq-data"
    region = "us-east-1"
    prefix = "prod/shazamq"

    [mirror]
    enabled = true

    [[mirror.sources]]
    name = "kafka-prod"
    bootstrap_servers = "kafka-1:9092,kafka-2:9092"
    security_protocol = "SASL_SSL"
    sasl_mechanism = "SCRAM-SHA-512"
    consumer_group_id = "shazamq-mirror"
    topic_whitelist = ["orders.*", "events.*"]
    """
)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


def test_original_operator_toml_loads(tmp_path):
    cfg = load_config(write(tmp_path, ORIGINAL_OPERATOR_TOML), environ={})
    assert cfg.broker.data_dir == "/data/shazamq"
    assert cfg.storage.segment_bytes == 1073741824
    assert cfg.storage.effective_retention_ms() == 168 * 3600 * 1000
    assert cfg.metrics.port == 9090
    assert cfg.tiered_storage.s3 is not None and cfg.tiered_storage.s3.bucket == "shazamq-data"
    (src,) = cfg.mirror.sources
    assert src.sasl_mechanism == "SCRAM-SHA-512"
    assert src.topic_whitelist == ("orders.*", "events.*")


def test_defaults_without_file():
    cfg = load_config(None, environ={})
    assert (cfg.broker.port, cfg.metrics.port, cfg.broker.data_dir) == (9092, 9090, "./data")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[broker]\nprot = 9092\n", "unknown key 'broker.prot'"),
        ("[brokr]\nport = 9092\n", "unknown key 'brokr'"),
        ("[broker]\nport = 'abc'\n", "invalid value for 'broker.port'"),
        ("[broker]\nport = 70000\n", "invalid value for 'broker.port'"),
        ("[storage]\nsegment_bytes = -1\n", "invalid value for 'storage.segment_bytes'"),
        (
            "[storage]\nmax_open_segment_files = 3\n",
            "invalid value for 'storage.max_open_segment_files'",
        ),
        ("[tiered_storage]\nenabled = true\nprovider = 'gcs'\n", "[tiered_storage.gcs]"),
        ("[tiered_storage]\nprovider = 'azure'\n", "tiered_storage.provider"),
        (
            "[tiered_storage]\nupload_part_size_bytes = 1048576\n",
            "invalid value for 'tiered_storage.upload_part_size_bytes'",
        ),
        (
            "[tiered_storage]\nupload_part_size_bytes = 6000000\n",
            "invalid value for 'tiered_storage.upload_part_size_bytes'",
        ),
        (
            "[[mirror.sources]]\nname = 'a'\nbootstrap_servers = 'x:1'\ntopic_whitelist = ['(']\n",
            "mirror.sources[0]",
        ),
        ("[broker\n", "not valid TOML"),
        (
            "[cluster]\nvoters = ['1@a:9093']\nsecret = 's'\n"
            "[security.authorization]\nenabled = true\n",
            "arrive as User:ANONYMOUS",
        ),
    ],
)
def test_bad_files_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text), environ={})
    assert message in str(e.value)
    assert str(tmp_path / "config.toml") in str(e.value)


def test_environment_overrides_file(tmp_path):
    path = write(tmp_path, "[broker]\nport = 9092\n")
    env = {
        "SHAZAMQ_BROKER__PORT": "19092",
        "SHAZAMQ_BROKER__AUTO_CREATE_TOPICS": "false",
        "SHAZAMQ_STORAGE__RETENTION_HOURS": "24",
        "SHAZAMQ_MIRROR__SOURCES__0__NAME": "src",
        "SHAZAMQ_MIRROR__SOURCES__0__BOOTSTRAP_SERVERS": "k:9092",
        "SHAZAMQ_MIRROR__SOURCES__0__TOPIC_WHITELIST": '["a.*", "b"]',
        "UNRELATED": "x",
    }
    cfg = load_config(path, environ=env)
    assert cfg.broker.port == 19092
    assert cfg.broker.auto_create_topics is False
    assert cfg.storage.retention_hours == 24
    assert cfg.mirror.sources[0].topic_whitelist == ("a.*", "b")


def test_environment_typo_is_an_error():
    with pytest.raises(ConfigError) as e:
        load_config(None, environ={"SHAZAMQ_BROKER__PROT": "1"})
    assert "unknown key 'broker.prot'" in str(e.value)


# -- round-trips ----------------------------------------------------------------------


@st.composite
def broker_configs(draw):
    tree = {
        "broker": {
            "node_id": draw(st.integers(0, 1000)),
            "port": draw(st.integers(1, 65535)),
            "data_dir": draw(
                st.text(
                    st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=20
                )
            ),
            "auto_create_topics": draw(st.booleans()),
            "default_partitions": draw(st.integers(1, 1000)),
        },
        "storage": {
            "segment_bytes": draw(st.integers(14, 2**40)),
            "retention_hours": draw(st.integers(-1, 10**5)),
            "retention_bytes": draw(st.integers(-1, 2**50)),
            "cleanup_policy": draw(st.sampled_from(["delete", "compact", "compact,delete"])),
        },
        "metrics": {"enabled": draw(st.booleans()), "port": draw(st.integers(1, 65535))},
        "mirror": {
            "enabled": draw(st.booleans()),
            "sources": [
                {
                    "name": f"src{i}",
                    "bootstrap_servers": "h:9092",
                    "num_consumers": draw(st.integers(1, 64)),
                }
                for i in range(draw(st.integers(0, 3)))
            ],
        },
    }
    return parse_config(tree)


@settings(max_examples=60, deadline=None)
@given(broker_configs())
def test_toml_round_trip(tmp_path_factory, cfg):
    path = tmp_path_factory.mktemp("rt") / "c.toml"
    path.write_text(dump_toml(cfg))
    assert load_config(path, environ={}) == cfg


@settings(max_examples=60, deadline=None)
@given(broker_configs())
def test_json_builtins_round_trip(cfg):
    assert msgspec.convert(msgspec.to_builtins(cfg), BrokerConfig) == cfg


def test_broker_refuses_bad_config_with_one_line(tmp_path):
    path = write(tmp_path, "[broker]\nprot = 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "shazamq.broker", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"shazamq: {path}: unknown key 'broker.prot'"


def test_check_config_prints_toml(tmp_path):
    path = write(tmp_path, ORIGINAL_OPERATOR_TOML)
    proc = subprocess.run(
        [sys.executable, "-m", "shazamq.broker", "--config", str(path), "--check-config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert 'bucket = "shazamq-data"' in proc.stdout


def test_fetch_session_cache_settings(tmp_path):
    cfg = load_config(None, environ={})
    assert cfg.broker.max_incremental_fetch_session_cache_slots == 1000
    assert cfg.broker.min_incremental_fetch_session_eviction_ms == 120_000
    cfg = load_config(
        write(tmp_path, "[broker]\nmax_incremental_fetch_session_cache_slots = 0\n"), environ={}
    )
    assert cfg.broker.max_incremental_fetch_session_cache_slots == 0  # sessions off
    for key in (
        "max_incremental_fetch_session_cache_slots",
        "min_incremental_fetch_session_eviction_ms",
    ):
        with pytest.raises(ConfigError, match=f"invalid value for 'broker.{key}'"):
            load_config(write(tmp_path, f"[broker]\n{key} = -1\n"), environ={})
