"""Request and response framing: headers, bodies by api key, size prefixes.

On the wire every request and response is ``int32 size`` followed by ``size`` bytes: a
header, then the body. Cutting frames off a stream is the connection's job; this module
works on one frame's bytes (``frame`` below means the bytes after the size prefix).

Request headers (``RequestHeader``): v0 is ``api_key, api_version, correlation_id`` and is
only used by ControlledShutdown v0; v1 adds ``client_id``, a nullable STRING with an int16
length; v2, used by flexible request versions, adds a tagged-field section after it. The
client id stays a non-compact STRING even in v2, so a broker can read the header of any
ApiVersions request, however new. Response headers: v0 is ``correlation_id``; v1 adds a
tagged-field section and is used by flexible response versions, except ApiVersions, whose
responses always use v0 (a client reads them before it knows what the broker speaks).

Unsupported versions: Kafka answers an ApiVersions request of a version it does not know
with an ApiVersions v0 response carrying UNSUPPORTED_VERSION and the range of ApiVersions
versions it does support, so that the client can retry with one of them
(``unsupported_version_response``). For every other api key, a request of an unsupported
version (or an unknown api key) gets no answer: the broker closes the connection.
"""

from __future__ import annotations

import struct
from typing import Any

from shazamq.protocol.errors import DecodeError, ErrorCode, UnsupportedVersionError
from shazamq.protocol.messages import (
    API_KEYS,
    request_header_version,
    response_header_version,
)
from shazamq.protocol.messages.api_versions_response import ApiVersion, ApiVersionsResponse
from shazamq.protocol.messages.request_header import RequestHeader
from shazamq.protocol.messages.response_header import ResponseHeader
from shazamq.protocol.primitives import GatherBuffer, Message

__all__ = [
    "API_VERSIONS_KEY",
    "decode_request",
    "decode_request_body",
    "decode_request_header",
    "decode_response",
    "encode_request",
    "encode_response",
    "encode_response_header",
    "encode_response_parts",
    "request_class",
    "response_class",
    "unsupported_version_response",
]

API_VERSIONS_KEY = 18

_HH = struct.Struct(">hh")
_I = struct.Struct(">i")
_pack_i32 = _I.pack


def request_class(api_key: int, api_version: int) -> type[Message]:
    """The request class of an api key, checking that the version is one it defines.

    Raises ``UnsupportedVersionError`` for an unknown api key or a version outside the
    generated range. (A broker that supports a narrower range checks its own table.)
    """
    info = API_KEYS.get(api_key)
    if info is None:
        raise UnsupportedVersionError(f"unknown api key {api_key}")
    if not info.min_version <= api_version <= info.max_version:
        raise UnsupportedVersionError(
            f"{info.name} v{api_version} is not supported "
            f"(versions {info.min_version}-{info.max_version})"
        )
    return info.request


def response_class(api_key: int, api_version: int) -> type[Message]:
    """The response class of an api key; same checks as ``request_class``."""
    request_class(api_key, api_version)
    return API_KEYS[api_key].response


def decode_request_header(frame: Any, offset: int = 0) -> tuple[RequestHeader, int]:
    """Decode the request header at ``offset``; returns it and the offset of the body.

    The header version follows from the api key and version it starts with. For an
    unknown api key the header is read as v1 (enough to log the client id and correlation
    id before closing the connection); the body offset is then only a guess.
    """
    if frame.__class__ is not memoryview:
        frame = memoryview(frame)
    if len(frame) - offset < 4:
        raise DecodeError(f"request header truncated: {max(len(frame) - offset, 0)} bytes")
    api_key, api_version = _HH.unpack_from(frame, offset)
    try:
        version = request_header_version(api_key, api_version)
    except KeyError:
        version = 1
    return RequestHeader.decode(frame, offset, version)


def decode_request_body(
    api_key: int, api_version: int, frame: Any, offset: int
) -> tuple[Message, int]:
    """Decode a request body via the registry; returns the request and its end offset.

    Raises ``UnsupportedVersionError`` for unknown api keys or versions, and
    ``DecodeError`` for malformed bytes. Bytes after the body are left to the caller
    (Kafka ignores them).
    """
    return request_class(api_key, api_version).decode(frame, offset, api_version)


def decode_request(frame: Any) -> tuple[RequestHeader, Message]:
    """Header and body of one request frame (without its size prefix)."""
    header, offset = decode_request_header(frame)
    body, _ = decode_request_body(header.request_api_key, header.request_api_version, frame, offset)
    return header, body


def encode_response_header(out: bytearray, api_key: int, version: int, correlation_id: int) -> None:
    """Append the response header (v0 or v1, as the api key and version require)."""
    out += _pack_i32(correlation_id)
    if response_header_version(api_key, version) >= 1:
        out.append(0)  # no tagged fields


def encode_response(api_key: int, version: int, correlation_id: int, response: Message) -> bytes:
    """The complete response frame: size prefix, header, body."""
    out = bytearray(4)
    encode_response_header(out, api_key, version, correlation_id)
    response.encode_into(out, version)
    _I.pack_into(out, 0, len(out) - 4)
    return bytes(out)


def encode_response_parts(
    api_key: int, version: int, correlation_id: int, response: Message
) -> bytearray | list[Any]:
    """The response frame, with large record sets left as separate buffers.

    Returns one buffer when nothing was left out of line, else a list of buffers to write
    in order (``transport.writelines``): the record batches of a Fetch response are sent
    as they were read, without being copied into the frame.
    """
    out = GatherBuffer(4)
    encode_response_header(out, api_key, version, correlation_id)
    response.encode_into(out, version)
    _I.pack_into(out, 0, out.total_size - 4)
    if not out.refs:
        return out
    return out.pieces()


def encode_request(
    request: Message, version: int, correlation_id: int, client_id: str | None = None
) -> bytes:
    """The complete request frame (size prefix, header, body), as a client sends it."""
    api_key = request.API_KEY
    if api_key is None:
        raise ValueError(f"{type(request).__name__} is not a request")
    header = RequestHeader(
        request_api_key=api_key,
        request_api_version=version,
        correlation_id=correlation_id,
        client_id=client_id,
    )
    out = bytearray(4)
    header.encode_into(out, request_header_version(api_key, version))
    request.encode_into(out, version)
    _I.pack_into(out, 0, len(out) - 4)
    return bytes(out)


def decode_response(api_key: int, version: int, frame: Any) -> tuple[int, Message]:
    """Correlation id and body of one response frame (without its size prefix)."""
    if frame.__class__ is not memoryview:
        frame = memoryview(frame)
    header, offset = ResponseHeader.decode(frame, 0, response_header_version(api_key, version))
    body, _ = response_class(api_key, version).decode(frame, offset, version)
    return header.correlation_id, body


def unsupported_version_response(
    api_key: int,
    api_version: int,
    correlation_id: int,
    supported: tuple[int, int] | None = None,
) -> bytes | None:
    """Kafka's answer to a request whose version the broker does not support.

    For ApiVersions: the full frame of an ApiVersions v0 response with error
    UNSUPPORTED_VERSION, listing only ApiVersions itself with the ``supported`` range
    (default: the generated range). For any other api key: ``None``, meaning "close the
    connection", which is what Kafka does.
    """
    if api_key != API_VERSIONS_KEY:
        return None
    info = API_KEYS[API_VERSIONS_KEY]
    lo, hi = supported if supported is not None else (info.min_version, info.max_version)
    response = ApiVersionsResponse(
        error_code=ErrorCode.UNSUPPORTED_VERSION,
        api_keys=[ApiVersion(api_key=API_VERSIONS_KEY, min_version=lo, max_version=hi)],
    )
    return encode_response(API_VERSIONS_KEY, 0, correlation_id, response)
