"""The Kafka wire protocol, with no I/O.

* ``messages``: codecs for every Kafka request, response, header and data type, generated
  from Kafka's JSON message definitions by ``tools/gen_protocol.py``, plus the api-key
  registry (``API_KEYS``) and the header-version rules.
* ``primitives``: the wire primitives (ints, varints, strings, bytes, records, uuids,
  arrays, tagged fields) and the ``Message`` base class of the generated codecs.
* ``framing``: request/response headers, decoding a body by api key, size-prefixed frames,
  and the answer to an unsupported version.
* ``errors``: Kafka's error codes and the exceptions of this layer.
"""

from shazamq.protocol.errors import DecodeError, ErrorCode, KafkaError, UnsupportedVersionError
from shazamq.protocol.framing import (
    decode_request,
    decode_request_body,
    decode_request_header,
    decode_response,
    encode_request,
    encode_response,
    unsupported_version_response,
)
from shazamq.protocol.messages import (
    API_BY_NAME,
    API_KEYS,
    ApiInfo,
    request_header_version,
    response_header_version,
)
from shazamq.protocol.primitives import ZERO_UUID, FieldSpec, Message

__all__ = [
    "API_BY_NAME",
    "API_KEYS",
    "ZERO_UUID",
    "ApiInfo",
    "DecodeError",
    "ErrorCode",
    "FieldSpec",
    "KafkaError",
    "Message",
    "UnsupportedVersionError",
    "decode_request",
    "decode_request_body",
    "decode_request_header",
    "decode_response",
    "encode_request",
    "encode_response",
    "request_header_version",
    "response_header_version",
    "unsupported_version_response",
]
