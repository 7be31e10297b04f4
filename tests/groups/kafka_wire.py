"""A minimal blocking Kafka protocol client for tests that need exact requests.

Real clients hide the protocol (they retry, rejoin and heartbeat on their own); tests of
error codes, session timeouts and fencing need to send one request at a time and look
at the answer. One connection, one request in flight, the generated codecs.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from shazamq.protocol import framing
from shazamq.protocol.messages.consumer_protocol_assignment import (
    ConsumerProtocolAssignment,
)
from shazamq.protocol.messages.consumer_protocol_assignment import (
    TopicPartition as AssignedTopic,
)
from shazamq.protocol.messages.consumer_protocol_subscription import (
    ConsumerProtocolSubscription,
)

__all__ = ["WireClient", "assignment_bytes", "subscription_bytes"]


def subscription_bytes(topics: list[str], version: int = 0) -> bytes:
    return struct.pack(">h", version) + ConsumerProtocolSubscription(topics=topics).encode(version)


def assignment_bytes(assigned: dict[str, list[int]], version: int = 0) -> bytes:
    return struct.pack(">h", version) + ConsumerProtocolAssignment(
        assigned_partitions=[AssignedTopic(topic=t, partitions=ps) for t, ps in assigned.items()]
    ).encode(version)


class WireClient:
    """One connection to a broker; :meth:`call` sends a request and waits for its answer."""

    def __init__(self, bootstrap: str, client_id: str = "wire-test", timeout: float = 30.0):
        host, port = bootstrap.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.client_id = client_id
        self._correlation = 0

    def _read(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            buf += chunk
        return bytes(buf)

    def call(self, request: Any, version: int) -> Any:
        self._correlation += 1
        self.sock.sendall(
            framing.encode_request(request, version, self._correlation, self.client_id)
        )
        (size,) = struct.unpack(">i", self._read(4))
        correlation, body = framing.decode_response(request.API_KEY, version, self._read(size))
        assert correlation == self._correlation
        return body

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> WireClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
