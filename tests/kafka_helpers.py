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
