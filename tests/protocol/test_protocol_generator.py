"""The generator: parsing helpers, a synthetic definition exercising every feature, the CLI,
and (when Kafka's definitions are available) that the committed files are up to date.

The regeneration check reads Kafka's message *.json files from SHAZAMQ_KAFKA_MESSAGES or,
when that is unset, from ``../shared/kafka-protocol/message`` beside the repository (where
CI places them); with neither it is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from tools import gen_protocol as gen
from tools.protocol_new_messages import NEW_MESSAGES

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "shazamq" / "protocol" / "messages"

SYNTHETIC = """\
// A made-up message with every feature the generator handles.
{
  "apiKey": 9999,
  "type": "request",
  "name": "SyntheticRequest",
  // comment lines may sit anywhere
  "validVersions": "0-4",
  "flexibleVersions": "2+",
  "fields": [
    { "name": "ClientId", "type": "string", "versions": "0+", "nullableVersions": "0+",
      "flexibleVersions": "none", "about": "stays a non-compact string // even here" },
    { "name": "timeoutMs", "type": "int32", "versions": "0+", "default": "0x7fffffff" },
    { "name": "Flag", "type": "bool", "versions": "1+", "default": "true" },
    { "name": "Gone", "type": "int16", "versions": "1-2", "default": -1, "ignorable": true },
    { "name": "Small", "type": "uint16", "versions": "0+" },
    { "name": "Big", "type": "uint32", "versions": "0+" },
    { "name": "Ratio", "type": "float64", "versions": "0+" },
    { "name": "Id", "type": "uuid", "versions": "3+" },
    { "name": "Offsets", "type": "[]int64", "versions": "0+", "nullableVersions": "1+" },
    { "name": "Names", "type": "[]string", "versions": "0+" },
    { "name": "Blob", "type": "bytes", "versions": "0+", "nullableVersions": "0+",
      "default": "null" },
    { "name": "Data", "type": "records", "versions": "0+", "nullableVersions": "0+" },
    { "name": "Leader", "type": "Leader", "versions": "2+", "taggedVersions": "2+", "tag": 3,
      "fields": [
        { "name": "LeaderId", "type": "int32", "versions": "2+", "default": "-1" },
        { "name": "isKRaftLeader", "type": "bool", "versions": "2+" }
      ]},
    { "name": "Note", "type": "string", "versions": "2+", "taggedVersions": "2+", "tag": 0,
      "nullableVersions": "2+", "default": "null" },
    { "name": "Maybe", "type": "Shared", "versions": "0+", "nullableVersions": "0+",
      "default": "null" },
    { "name": "Items", "type": "[]Shared", "versions": "0+" }
  ],
  "commonStructs": [
    { "name": "Shared", "versions": "0+", "fields": [
      { "name": "Key", "type": "string", "versions": "0+", "mapKey": true },
      { "name": "Value", "type": "int8", "versions": "0+" }
    ]}
  ]
}
"""


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_helpers():
    assert gen.parse_versions("3+") == (3, gen.MAX_VERSION)
    assert gen.parse_versions("1-4") == (1, 4)
    assert gen.parse_versions("7") == (7, 7)
    assert gen.parse_versions("none") == gen.EMPTY
    assert gen.snake("TopicData") == "topic_data"
    assert gen.snake("KRaftVersionRecord") == "kraft_version_record"
    assert gen.snake("isKRaftController") == "is_kraft_controller"
    assert gen.snake("timeoutMs") == "timeout_ms"
    assert gen.snake("ClusterAuthorizedOperations") == "cluster_authorized_operations"
    stripped = gen.strip_comments('{"a": "x // y"} // gone\n// all gone\n{"b": "\\"//"}')
    assert json.loads(stripped.splitlines()[0]) == {"a": "x // y"}
    assert stripped.splitlines()[1] == ""
    assert json.loads(stripped.splitlines()[2]) == {"b": '"//'}


@pytest.fixture
def synthetic(tmp_path: Path):
    messages = tmp_path / "messages"
    messages.mkdir()
    (messages / "SyntheticRequest.json").write_text(SYNTHETIC)
    response = {
        "apiKey": 9999,
        "type": "response",
        "name": "SyntheticResponse",
        "validVersions": "0-4",
        "flexibleVersions": "2+",
        "fields": [{"name": "ErrorCode", "type": "int16", "versions": "0+"}],
    }
    (messages / "SyntheticResponse.json").write_text(json.dumps(response))
    files = gen.render_all(messages)
    out = tmp_path / "out"
    out.mkdir()
    for name, text in files.items():
        (out / name).write_text(text)
    return messages, out, files


def test_synthetic_definition(synthetic):
    _messages, out, files = synthetic
    # the messages newer than any snapshot join every generation
    added = {f"{gen.snake(spec['name'])}.py" for spec in NEW_MESSAGES}
    assert set(files) == {"__init__.py", "synthetic_request.py", "synthetic_response.py"} | added
    assert files["synthetic_request.py"].startswith(gen.HEADER_MARK)
    mod = load_module(out / "synthetic_request.py", "_synthetic_request_under_test")
    cls, leader, shared = mod.SyntheticRequest, mod.Leader, mod.Shared
    assert cls.API_KEY == 9999 and cls.VALID_VERSIONS == (0, 4) and cls.FLEXIBLE_MIN == 2
    default = cls()
    assert default.timeout_ms == 0x7FFFFFFF and default.flag is True and default.gone == -1
    assert default.blob is None and default.note is None and default.maybe is None
    assert default.leader == leader(leader_id=-1, is_kraft_leader=False)
    import uuid

    obj = cls(
        client_id="cli",
        timeout_ms=5,
        flag=False,
        small=65535,
        big=2**32 - 1,
        ratio=0.25,
        id=uuid.UUID(int=5),
        offsets=[1, -2],
        names=["a", "b"],
        blob=b"\x00\x01",
        data=b"rec",
        leader=leader(leader_id=7, is_kraft_leader=True),
        note="hi",
        maybe=shared(key="k", value=-1),
        items=[shared(key="x", value=1)],
    )
    for version in range(5):
        # fields a version lacks are left at their defaults for the comparison
        present = {f.name: getattr(obj, f.name) for f in cls.FIELDS if f.present_in(version)}
        expected = cls(**present)
        data = expected.encode(version)
        assert cls.decode(data, 0, version) == (expected, len(data))
    # the client id stays an int16-length string in flexible versions
    assert obj.encode(3).startswith(b"\x00\x03cli")
    # v2 and v3 differ only by the uuid; v0 has no flag, so a non-default flag fails there
    with pytest.raises(ValueError, match="flag"):
        cls(flag=False).encode(0)
    # the ignorable field is dropped silently
    assert cls(gone=3).encode(3) == cls().encode(3)
    # the tagged section holds the note (tag 0) then the leader (tag 3), in tag order
    tagged = cls(note="n", leader=leader(leader_id=1)).encode(2)
    assert tagged.endswith(b"\x02\x00\x02\x02n\x03\x06\x00\x00\x00\x01\x00\x00")


def test_cli_writes_checks_and_removes_stale_files(synthetic, capsys):
    messages, _out, files = synthetic
    out = messages.parent / "generated"
    assert gen.main(["--messages", str(messages), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(files)
    assert gen.main(["--messages", str(messages), "--out", str(out), "--check"]) == 0
    (out / "synthetic_response.py").write_text(files["synthetic_response.py"] + "# edited\n")
    (out / "old_message.py").write_text(gen.HEADER_MARK + "\n")
    (out / "hand_written.py").write_text("# not generated\n")
    assert gen.main(["--messages", str(messages), "--out", str(out), "--check"]) == 1
    err = capsys.readouterr().err
    assert "synthetic_response.py" in err and "old_message.py" in err
    assert "hand_written.py" not in err
    assert gen.main(["--messages", str(messages), "--out", str(out)]) == 0
    assert not (out / "old_message.py").exists()
    assert (out / "hand_written.py").exists()
    assert gen.main(["--messages", str(messages), "--out", str(out), "--check"]) == 0


def test_output_is_deterministic(synthetic):
    messages, _out, files = synthetic
    assert gen.render_all(messages) == files


def _kafka_messages() -> Path | None:
    configured = os.environ.get("SHAZAMQ_KAFKA_MESSAGES")
    if configured:
        return Path(configured)
    beside = Path(__file__).resolve().parents[2].parent / "shared" / "kafka-protocol" / "message"
    return beside if beside.is_dir() else None


KAFKA_MESSAGES = _kafka_messages()


@pytest.mark.skipif(
    KAFKA_MESSAGES is None,
    reason="neither SHAZAMQ_KAFKA_MESSAGES nor ../shared/kafka-protocol/message is there",
)
def test_committed_files_match_the_definitions():
    assert KAFKA_MESSAGES is not None
    files = gen.render_all(KAFKA_MESSAGES)
    committed = {p.name for p in COMMITTED.glob("*.py")}
    assert committed == set(files), "generated file set differs: regenerate"
    stale = [name for name, text in files.items() if (COMMITTED / name).read_text() != text]
    assert not stale, f"out of date, regenerate: {stale}"


def test_error_table_check(tmp_path: Path):
    page = tmp_path / "protocol.html"
    page.write_text(
        "<table><tr><th>Error</th><th>Code</th><th>Retriable</th><th>Description</th></tr>"
        "<tr><td>NONE</td><td>0</td><td>False</td><td></td></tr>"
        "<tr><td>NOT_LEADER_OR_FOLLOWER</td><td>6</td><td>True</td><td></td></tr>"
        "<tr><td>INVALID_TOPIC_EXCEPTION</td><td>17</td><td>True</td><td></td></tr>"
        "<tr><td>FUTURE_ERROR</td><td>9000</td><td>False</td><td></td></tr></table>"
    )
    problems = gen.check_error_table(page)
    assert len(problems) == 2
    assert any("INVALID_TOPIC_EXCEPTION" in x and "retriable" in x for x in problems)
    assert any("FUTURE_ERROR" in x for x in problems)
    page.write_text("<p>no table here</p>")
    assert "no error-code table" in gen.check_error_table(page)[0]


def test_new_messages_yield_to_the_snapshot(synthetic):
    """A snapshot that has one of the added messages keeps its own definition."""
    messages, _out, _files = synthetic
    spec = dict(NEW_MESSAGES[0], validVersions="0")
    (messages / "Own.json").write_text(json.dumps(spec))
    loaded = {m.name: m for m in gen.load_all(messages)}
    assert loaded[spec["name"]].file == "Own.json"
    assert loaded[spec["name"]].valid == (0, 0)
    assert sum(1 for m in gen.load_all(messages) if m.name == spec["name"]) == 1


def test_new_message_round_trip():
    import uuid

    from shazamq.protocol.messages import DescribeShareGroupOffsetsResponse as R
    from shazamq.protocol.messages.describe_share_group_offsets_response import (
        DescribeShareGroupOffsetsResponseGroup as G,
    )
    from shazamq.protocol.messages.describe_share_group_offsets_response import (
        DescribeShareGroupOffsetsResponsePartition as P,
    )
    from shazamq.protocol.messages.describe_share_group_offsets_response import (
        DescribeShareGroupOffsetsResponseTopic as T,
    )

    part = P(partition_index=1, start_offset=7, leader_epoch=2, lag=3)
    msg = R(
        groups=[
            G(group_id="g", topics=[T(topic_name="t", topic_id=uuid.uuid4(), partitions=[part])])
        ]
    )
    for v in (0, 1):
        data = msg.encode(v)
        back, n = R.decode(data, 0, v)
        assert n == len(data)
        assert back.groups[0].topics[0].partitions[0].start_offset == 7
        # the lag exists from v1 only; v0 drops it (ignorable) and decodes the default
        assert back.groups[0].topics[0].partitions[0].lag == (3 if v else -1)
