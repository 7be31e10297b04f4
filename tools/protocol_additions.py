"""Message versions newer than the Kafka snapshot the generator reads.

librdkafka 2.16's share consumer speaks only the KIP-932 APIs as Kafka 4.1/4.2 finalized
them (ShareGroupHeartbeat and ShareGroupDescribe v1, ShareFetch and ShareAcknowledge
v1-2), while the snapshot still has the unstable v0. The differences are small and are
stated here as edits of the snapshot's definitions: new version ranges, fields added at a
position, and fields whose version or nullability range changed. Facts of the wire
format only; the generator applies them after reading each JSON file.
"""

from __future__ import annotations

from typing import Any


def _field(name: str, type_: str, versions: str, about: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, "versions": versions, "about": about, **extra}


_LOCK_TIMEOUT = "How long, in milliseconds, acquired records stay locked to the member."

# message name -> edits. "insert": (field after which, path of the enclosing struct as
# field names from the top, fields to insert); "set": (path of the field, key, value).
ADDITIONS: dict[str, dict[str, Any]] = {
    "ShareGroupHeartbeatRequest": {"validVersions": "0-1"},
    "ShareGroupHeartbeatResponse": {"validVersions": "0-1"},
    "ShareGroupDescribeRequest": {"validVersions": "0-1"},
    "ShareGroupDescribeResponse": {"validVersions": "0-1"},
    "ShareAcknowledgeRequest": {
        "validVersions": "0-2",
        "insert": [
            (
                "ShareSessionEpoch",
                (),
                [
                    _field(
                        "IsRenewAck",
                        "bool",
                        "2+",
                        "True when the batches hold lock renewals (acknowledge type 4).",
                        default="false",
                    )
                ],
            )
        ],
    },
    "ShareAcknowledgeResponse": {
        "validVersions": "0-2",
        "insert": [
            (
                "ErrorMessage",
                (),
                [_field("AcquisitionLockTimeoutMs", "int32", "2+", _LOCK_TIMEOUT, ignorable=True)],
            )
        ],
    },
    "ShareFetchRequest": {
        "validVersions": "0-2",
        "insert": [
            (
                "MaxBytes",
                (),
                [
                    _field("MaxRecords", "int32", "1+", "Most records the member wants."),
                    _field(
                        "BatchSize",
                        "int32",
                        "1+",
                        "Preferred number of records per acquired range and acknowledgement.",
                    ),
                    _field(
                        "ShareAcquireMode",
                        "int8",
                        "2+",
                        "0: acquire whole batches; 1: acquire at most MaxRecords records.",
                    ),
                ],
            )
        ],
        "set": [(("Topics", "Partitions", "PartitionMaxBytes"), "versions", "0")],
    },
    "ShareFetchResponse": {
        "validVersions": "0-2",
        "insert": [
            (
                "ErrorMessage",
                (),
                [_field("AcquisitionLockTimeoutMs", "int32", "1+", _LOCK_TIMEOUT)],
            )
        ],
        "set": [(("Responses", "Partitions", "Records"), "nullableVersions", "0")],
    },
}


def _fields_at(spec: dict[str, Any], path: tuple[str, ...]) -> list[dict[str, Any]]:
    fields: list[dict[str, Any]] = spec["fields"]
    for name in path:
        fields = next(f for f in fields if f["name"] == name)["fields"]
    return fields


def apply_additions(spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` (one parsed message definition) with this module's edits applied."""
    edits = ADDITIONS.get(spec.get("name", ""))
    if edits is None:
        return spec
    spec = dict(spec, validVersions=edits["validVersions"])
    spec.pop("latestVersionUnstable", None)
    for after, path, new in edits.get("insert", ()):
        fields = _fields_at(spec, path)
        if any(f["name"] == n["name"] for f in fields for n in new):
            raise ValueError(f"{spec['name']}: the snapshot already has {new[0]['name']}")
        at = next(i for i, f in enumerate(fields) if f["name"] == after) + 1
        fields[at:at] = new
    for path, key, value in edits.get("set", ()):
        field = next(f for f in _fields_at(spec, path[:-1]) if f["name"] == path[-1])
        field[key] = value
    return spec
