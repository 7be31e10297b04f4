"""Small helpers shared by the tests that drive a broker with real clients."""

from __future__ import annotations


def make_topic(
    bootstrap: str, name: str, partitions: int = 1, config: dict[str, str] | None = None
) -> None:
    """Create a topic through the AdminClient and wait for the result.

    The AdminClient must outlive the future: a handle destroyed early fails the request.
    """
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, partitions, 1, config=config or {})])
    futures[name].result(15)


def closed_by_peer(sock, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the broker to close ``sock``, reading and
    discarding whatever it sends first. True on end of stream or a reset; a timeout is
    not a close and fails the test (it never reads as one)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        raise AssertionError(f"the connection stayed open for {timeout} s") from None
    except ConnectionError:  # reset, broken pipe, aborted
        return True
    return True


class RawClient:
    """A minimal Kafka client over a plain socket, for byte-exact protocol tests."""

    def __init__(self, port: int, client_id: str = "raw-test", host: str = "127.0.0.1") -> None:
        import socket

        self.sock = socket.create_connection((host, port), timeout=10)
        self.client_id = client_id
        self.correlation = 0

    def request(self, req, version: int):
        from shazamq.protocol import framing

        self.correlation += 1
        self.sock.sendall(framing.encode_request(req, version, self.correlation, self.client_id))
        size = int.from_bytes(self._recv(4), "big")
        corr, resp = framing.decode_response(req.API_KEY, version, self._recv(size))
        assert corr == self.correlation
        return resp

    def _recv(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("connection closed by the broker")
            buf += chunk
        return bytes(buf)

    def request_closes(self, req, version: int) -> bool:
        """Send ``req``: True when the broker closes the connection instead of answering,
        False when it answers; a timeout fails the test rather than pass for a close."""
        try:
            self.request(req, version)
        except TimeoutError:
            raise AssertionError("no answer and no close before the timeout") from None
        except ConnectionError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()


def send_idempotent(
    client: RawClient, topic: str, record: object, producer_id: int, sequence: int
) -> tuple[int, int]:
    """One idempotent batch of one record to partition 0 with acks=all (Produce v9);
    (error code, base offset)."""
    import time

    from shazamq.protocol.messages.produce_request import (
        PartitionProduceData,
        ProduceRequest,
        TopicProduceData,
    )
    from shazamq.protocol.records import build_batch

    batch = build_batch(
        [record],  # type: ignore[list-item]
        producer_id=producer_id,
        producer_epoch=0,
        base_sequence=sequence,
        base_timestamp=int(time.time() * 1000),
    )
    req = ProduceRequest(
        acks=-1,
        timeout_ms=10_000,
        topic_data=[
            TopicProduceData(
                name=topic, partition_data=[PartitionProduceData(index=0, records=batch)]
            )
        ],
    )
    part = client.request(req, 9).responses[0].partition_responses[0]
    return part.error_code, part.base_offset
