"""The api-key registry, header-version rules, error codes and framing helpers.

Covers: API_KEYS rows agree with the classes they name; every generated class declares its
version range, flexible version and FIELDS; header versions for flexible and
non-flexible versions, the ApiVersions and ControlledShutdown v0 exceptions and versions
newer than the known range; request/response frames round trip through framing;
ErrorCode values, retriability and KafkaError.
"""

from __future__ import annotations

import pytest
from protocol_strategies import all_classes, sample

from shazamq.protocol import (
    API_BY_NAME,
    API_KEYS,
    ErrorCode,
    KafkaError,
    decode_request,
    encode_request,
    request_header_version,
    response_header_version,
)
from shazamq.protocol.errors import DecodeError, UnsupportedVersionError
from shazamq.protocol.framing import request_class, response_class
from shazamq.protocol.messages import DATA_TYPES, HEADERS
from shazamq.protocol.messages.consumer_protocol_subscription import (
    ConsumerProtocolSubscription,
)


def test_registry_rows_match_their_classes():
    assert len(API_KEYS) >= 80
    for key, info in API_KEYS.items():
        assert info.api_key == key
        assert info.request.API_KEY == key == info.response.API_KEY
        assert info.request.__name__ == info.name + "Request"
        assert info.response.__name__ == info.name + "Response"
        assert (info.min_version, info.max_version) == info.request.VALID_VERSIONS
        assert (info.min_version, info.max_version) == info.response.VALID_VERSIONS
        assert info.flexible_min == info.request.FLEXIBLE_MIN
        assert API_BY_NAME[info.name] is info
    assert API_KEYS[0].name == "Produce"
    assert API_KEYS[1].name == "Fetch"
    assert API_KEYS[18].name == "ApiVersions"
    produce = API_KEYS[0]
    assert (produce.min_version, produce.max_version, produce.flexible_min) == (0, 11, 9)
    assert API_KEYS[47].flexible_min is None  # OffsetDelete is never flexible


def test_headers_and_data_types_are_registered():
    assert set(HEADERS) == {"RequestHeader", "ResponseHeader"}
    assert "ConsumerProtocolSubscription" in DATA_TYPES
    assert "ConsumerProtocolAssignment" in DATA_TYPES
    assert ConsumerProtocolSubscription.API_KEY is None
    assert ConsumerProtocolSubscription.FLEXIBLE_MIN is None


def test_every_class_describes_itself():
    for cls in all_classes():
        lo, hi = cls.VALID_VERSIONS
        assert 0 <= lo <= hi
        assert cls.FLEXIBLE_MIN is None or cls.FLEXIBLE_MIN >= 0
        names = [f.name for f in cls.FIELDS]
        assert names == list(cls.__slots__)
        for f in cls.FIELDS:
            if f.type.lstrip("[]")[:1].isupper():
                assert f.struct is not None and f.struct.FIELDS is not None


@pytest.mark.parametrize(
    ("api_key", "version", "request_header", "response_header"),
    [
        (0, 8, 1, 0),  # Produce before flexible versions
        (0, 9, 2, 1),
        (1, 12, 2, 1),
        (3, 8, 1, 0),
        (3, 9, 2, 1),
        (18, 2, 1, 0),
        (18, 3, 2, 0),  # ApiVersions: response header always v0
        (18, 4, 2, 0),
        (18, 99, 2, 0),  # newer than known: open-ended flexible rule
        (7, 0, 0, 0),  # ControlledShutdown v0: request header v0
        (7, 1, 1, 0),
        (7, 3, 2, 1),
        (47, 0, 1, 0),  # OffsetDelete: never flexible
    ],
)
def test_header_versions(api_key, version, request_header, response_header):
    assert request_header_version(api_key, version) == request_header
    assert response_header_version(api_key, version) == response_header


def test_header_version_of_unknown_api():
    with pytest.raises(KeyError):
        request_header_version(12345, 0)


def test_request_and_response_class_lookup():
    assert request_class(0, 9).__name__ == "ProduceRequest"
    assert response_class(0, 9).__name__ == "ProduceResponse"
    with pytest.raises(UnsupportedVersionError):
        request_class(0, 12)
    with pytest.raises(UnsupportedVersionError):
        response_class(4242, 0)


@pytest.mark.parametrize("api_key", sorted(API_KEYS))
def test_request_frames_round_trip(api_key):
    info = API_KEYS[api_key]
    for version in (info.min_version, info.max_version):
        request = sample(info.request, version)
        frame = encode_request(request, version, correlation_id=9, client_id="c")
        assert int.from_bytes(frame[:4], "big") == len(frame) - 4
        header, body = decode_request(memoryview(frame)[4:])
        assert header.request_api_key == api_key
        assert header.request_api_version == version
        assert header.correlation_id == 9
        assert header.client_id == ("c" if request_header_version(api_key, version) else "")
        assert body == request


def test_error_codes():
    assert ErrorCode.NONE == 0
    assert ErrorCode.UNKNOWN_SERVER_ERROR == -1
    assert ErrorCode.OFFSET_OUT_OF_RANGE == 1
    assert ErrorCode.NOT_LEADER_OR_FOLLOWER == 6
    assert ErrorCode.UNSUPPORTED_VERSION == 35
    assert ErrorCode.TRANSACTION_ABORTABLE == 120
    assert ErrorCode.NOT_LEADER_OR_FOLLOWER.retriable
    assert ErrorCode.REQUEST_TIMED_OUT.retriable
    assert ErrorCode.UNKNOWN_TOPIC_OR_PARTITION.retriable
    assert not ErrorCode.NONE.retriable
    assert not ErrorCode.TOPIC_AUTHORIZATION_FAILED.retriable
    assert not ErrorCode.OFFSET_OUT_OF_RANGE.retriable
    values = [e.value for e in ErrorCode]
    assert values == sorted(values) and len(set(values)) == len(values)
    assert values == list(range(-1, values[-1] + 1))  # no gaps
    assert ErrorCode.of(29) is ErrorCode.TOPIC_AUTHORIZATION_FAILED
    assert ErrorCode.of(31000) is ErrorCode.UNKNOWN_SERVER_ERROR


def test_kafka_error_and_decode_error():
    err = KafkaError(ErrorCode.NOT_COORDINATOR, "moved")
    assert err.code is ErrorCode.NOT_COORDINATOR
    assert err.retriable
    assert "NOT_COORDINATOR" in str(err) and "moved" in str(err)
    assert KafkaError(3).code is ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    assert issubclass(DecodeError, ValueError)
    assert issubclass(UnsupportedVersionError, ValueError)
