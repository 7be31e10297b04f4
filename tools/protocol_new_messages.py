"""Message definitions the Kafka snapshot the generator reads does not have at all.

The share group offset administration of KIP-932 (DescribeShareGroupOffsets, key 90;
AlterShareGroupOffsets, 91; DeleteShareGroupOffsets, 92) came after the snapshot. Their
wire format is stated here as the generator's input, in the shape of a parsed message
definition, from the facts of Kafka 4.1/4.2: field names, types, versions and
nullability. Version 1 of DescribeShareGroupOffsets adds the share-partition lag (4.2).

A definition the snapshot does have wins (a newer snapshot makes an entry here
redundant, and it is then to be removed).
"""

from __future__ import annotations

from typing import Any

__all__ = ["NEW_MESSAGES"]


def _field(name: str, type_: str, about: str, **extra: Any) -> dict[str, Any]:
    versions = extra.pop("versions", "0+")
    return {"name": name, "type": type_, "versions": versions, "about": about, **extra}


def _struct(
    name: str, type_: str, about: str, fields: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    return _field(name, type_, about, fields=fields, **extra)


def _message(
    key: int, kind: str, name: str, valid: str, fields: list[dict[str, Any]]
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "apiKey": key,
        "type": kind,
        "name": name,
        "validVersions": valid,
        "flexibleVersions": "0+",
        "fields": fields,
    }
    if kind == "request":
        spec["listeners"] = ["broker"]
    return spec


_THROTTLE = _field(
    "ThrottleTimeMs", "int32", "How long the request was throttled by a quota, in milliseconds."
)


def _error(level: str) -> list[dict[str, Any]]:
    return [
        _field("ErrorCode", "int16", f"The {level} error code, 0 when there is none."),
        _field(
            "ErrorMessage",
            "string",
            f"The {level} error message, null when there is none.",
            nullableVersions="0+",
            default="null",
        ),
    ]


_GROUP_ID = _field("GroupId", "string", "The share group.", entityType="groupId")
_TOPIC_NAME = _field("TopicName", "string", "The topic.", entityType="topicName")
_TOPIC_ID = _field("TopicId", "uuid", "The topic's id.")
_PARTITION_INDEX = _field("PartitionIndex", "int32", "The partition.")


NEW_MESSAGES: list[dict[str, Any]] = [
    _message(
        90,
        "request",
        "DescribeShareGroupOffsetsRequest",
        "0-1",
        [
            _struct(
                "Groups",
                "[]DescribeShareGroupOffsetsRequestGroup",
                "The groups whose share-partition start offsets are asked for.",
                [
                    _GROUP_ID,
                    _struct(
                        "Topics",
                        "[]DescribeShareGroupOffsetsRequestTopic",
                        "The topics asked for; null asks for every share-partition of the group.",
                        [
                            _TOPIC_NAME,
                            _field("Partitions", "[]int32", "The partitions asked for."),
                        ],
                        nullableVersions="0+",
                    ),
                ],
            )
        ],
    ),
    _message(
        90,
        "response",
        "DescribeShareGroupOffsetsResponse",
        "0-1",
        [
            _THROTTLE,
            _struct(
                "Groups",
                "[]DescribeShareGroupOffsetsResponseGroup",
                "One answer per group asked for.",
                [
                    _GROUP_ID,
                    _struct(
                        "Topics",
                        "[]DescribeShareGroupOffsetsResponseTopic",
                        "One answer per topic.",
                        [
                            _TOPIC_NAME,
                            _TOPIC_ID,
                            _struct(
                                "Partitions",
                                "[]DescribeShareGroupOffsetsResponsePartition",
                                "One answer per partition.",
                                [
                                    _PARTITION_INDEX,
                                    _field(
                                        "StartOffset",
                                        "int64",
                                        "The share-partition start offset, -1 when it has none.",
                                    ),
                                    _field(
                                        "LeaderEpoch", "int32", "The leader epoch of the partition."
                                    ),
                                    _field(
                                        "Lag",
                                        "int64",
                                        "Records of the partition the group has not finished "
                                        "with, -1 when unknown.",
                                        versions="1+",
                                        ignorable=True,
                                        default="-1",
                                    ),
                                    *_error("partition-level"),
                                ],
                            ),
                        ],
                    ),
                    *_error("group-level"),
                ],
            ),
        ],
    ),
    _message(
        91,
        "request",
        "AlterShareGroupOffsetsRequest",
        "0",
        [
            _GROUP_ID,
            _struct(
                "Topics",
                "[]AlterShareGroupOffsetsRequestTopic",
                "The topics whose start offsets are set.",
                [
                    _TOPIC_NAME,
                    _struct(
                        "Partitions",
                        "[]AlterShareGroupOffsetsRequestPartition",
                        "The partitions whose start offsets are set.",
                        [
                            _PARTITION_INDEX,
                            _field("StartOffset", "int64", "The new share-partition start offset."),
                        ],
                    ),
                ],
            ),
        ],
    ),
    _message(
        91,
        "response",
        "AlterShareGroupOffsetsResponse",
        "0",
        [
            _THROTTLE,
            *_error("top-level"),
            _struct(
                "Responses",
                "[]AlterShareGroupOffsetsResponseTopic",
                "One answer per topic.",
                [
                    _TOPIC_NAME,
                    _TOPIC_ID,
                    _struct(
                        "Partitions",
                        "[]AlterShareGroupOffsetsResponsePartition",
                        "One answer per partition.",
                        [_PARTITION_INDEX, *_error("partition-level")],
                    ),
                ],
            ),
        ],
    ),
    _message(
        92,
        "request",
        "DeleteShareGroupOffsetsRequest",
        "0",
        [
            _GROUP_ID,
            _struct(
                "Topics",
                "[]DeleteShareGroupOffsetsRequestTopic",
                "The topics whose share-partition state is deleted.",
                [_TOPIC_NAME],
            ),
        ],
    ),
    _message(
        92,
        "response",
        "DeleteShareGroupOffsetsResponse",
        "0",
        [
            _THROTTLE,
            *_error("top-level"),
            _struct(
                "Responses",
                "[]DeleteShareGroupOffsetsResponseTopic",
                "One answer per topic.",
                [_TOPIC_NAME, _TOPIC_ID, *_error("topic-level")],
            ),
        ],
    ),
]
