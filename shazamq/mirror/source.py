"""One source cluster as the mirror sees it: connections, metadata, configs, offsets, groups.

Requests go over the broker's own pipelined Kafka client (``broker.cluster.client``), with
the source's TLS and SASL (PLAIN, SCRAM-SHA-256/512). It was chosen over aiokafka because
it already speaks every request the mirror needs through the generated codecs at current
versions (Fetch v12 with log start offsets, Metadata with topic ids), and leaves a Fetch
response's record batches as zero-copy views of the received frame, which is exactly what
a verbatim copy appends; aiokafka would add a second protocol stack that parses into its
own structures.

Administrative requests (metadata, configs, list offsets, groups) share one ``ClientPool``;
node ids below zero stand for the bootstrap addresses. Fetch sessions open their own pools
(see ``pool()``), so a long-polling fetch never delays an administrative answer.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from dataclasses import dataclass, field
from typing import Any

from shazamq.broker.cluster.client import BrokerClient, BrokerConnectionError, ClientPool, SaslLogin
from shazamq.config import ConfigError, MirrorSource
from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.describe_configs_request import (
    DescribeConfigsRequest,
    DescribeConfigsResource,
)
from shazamq.protocol.messages.find_coordinator_request import FindCoordinatorRequest
from shazamq.protocol.messages.list_groups_request import ListGroupsRequest
from shazamq.protocol.messages.list_offsets_request import (
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsTopic,
)
from shazamq.protocol.messages.metadata_request import MetadataRequest
from shazamq.protocol.messages.offset_fetch_request import OffsetFetchRequest

__all__ = [
    "SourceCluster",
    "SourceError",
    "SourceMetadata",
    "SourcePartition",
    "SourceTopic",
    "parse_bootstrap",
    "source_ssl_context",
]

log = logging.getLogger(__name__)

METADATA, LIST_OFFSETS, OFFSET_FETCH, FIND_COORDINATOR, LIST_GROUPS = 3, 2, 9, 10, 16
DESCRIBE_CONFIGS = 32
EARLIEST, LATEST = -2, -1
TOPIC_RESOURCE = 2
REQUEST_TIMEOUT_S = 30.0


class SourceError(Exception):
    """The source answered with an error the mirror cannot act on right now."""


@dataclass(frozen=True, slots=True)
class SourcePartition:
    index: int
    leader_id: int  # -1: no leader now
    leader_epoch: int


@dataclass(frozen=True, slots=True)
class SourceTopic:
    name: str
    topic_id: uuid.UUID | None  # None: the source does not report topic ids
    partitions: dict[int, SourcePartition]


@dataclass(frozen=True, slots=True)
class SourceMetadata:
    cluster_id: str
    brokers: dict[int, tuple[str, int]]
    topics: dict[str, SourceTopic] = field(default_factory=dict)


def parse_bootstrap(servers: str) -> list[tuple[str, int]]:
    """``host:port,host:port`` (IPv6 as ``[addr]:port``) -> addresses; ConfigError if bad."""
    out = []
    for item in servers.split(","):
        item = item.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"bootstrap server {item!r} is not host:port")
        out.append((host, int(port)))
    if not out:
        raise ConfigError("bootstrap_servers names no server")
    return out


def source_ssl_context(src: MirrorSource) -> ssl.SSLContext | None:
    """The TLS context for SSL / SASL_SSL sources (blocking file reads: call off the loop)."""
    if src.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    try:
        if src.ssl_ca_file:
            ctx.load_verify_locations(src.ssl_ca_file)
        if src.ssl_cert_file and src.ssl_key_file:
            ctx.load_cert_chain(src.ssl_cert_file, src.ssl_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"mirror source {src.name}: TLS files cannot be loaded: {exc}") from None
    return ctx


def source_sasl_login(src: MirrorSource) -> SaslLogin | None:
    """The SASL login for SASL_* sources (may read the password file: call off the loop)."""
    if not src.security_protocol.startswith("SASL_"):
        return None
    password = src.read_sasl_password()
    if src.sasl_username is None or password is None:
        raise ConfigError(
            f"mirror source {src.name}: {src.security_protocol} needs sasl_username and "
            "sasl_password (or sasl_password_file)"
        )
    assert src.sasl_mechanism is not None
    return SaslLogin(src.sasl_mechanism, src.sasl_username, password)


class SourceCluster:
    """Requests to one source cluster; raises BrokerConnectionError or SourceError."""

    def __init__(
        self,
        config: MirrorSource,
        *,
        ssl_context: ssl.SSLContext | None,
        sasl: SaslLogin | None,
        client_id: str,
    ) -> None:
        self.config = config
        self.name = config.name
        self.bootstrap = parse_bootstrap(config.bootstrap_servers)
        self._client_kwargs: dict[str, Any] = {
            "client_id": client_id,
            "ssl_context": ssl_context,
            "sasl": sasl,
            "connect_timeout": 10.0,
        }
        self.brokers: dict[int, tuple[str, int]] = {}
        self.cluster_id = ""
        self._pools: list[ClientPool] = []
        self._admin = self.pool()

    def address(self, node_id: int) -> tuple[str, int] | None:
        if node_id < 0:
            i = -node_id - 1
            return self.bootstrap[i] if i < len(self.bootstrap) else None
        return self.brokers.get(node_id)

    def pool(self) -> ClientPool:
        """A new connection pool to the source's brokers (one per fetch session)."""
        p = ClientPool(self.address, **self._client_kwargs)
        self._pools.append(p)
        return p

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self._pools), return_exceptions=True)

    # -- requests ----------------------------------------------------------------------

    async def _any(self) -> tuple[int, BrokerClient]:
        """A connected admin client: a known broker, else a bootstrap address."""
        errors = []
        candidates = [*self.brokers, *(-i - 1 for i in range(len(self.bootstrap)))]
        for node in candidates:
            try:
                return node, await self._admin.get(node)
            except BrokerConnectionError as exc:
                errors.append(str(exc))
        raise BrokerConnectionError(
            f"source {self.name}: no broker reachable ({'; '.join(errors)})"
        )

    async def _request(self, node: int | None, api_key: int, wanted: int, message: Any) -> Any:
        if node is None:
            node, client = await self._any()
        else:
            client = await self._admin.get(node)
        version = client.best_version(api_key, wanted)
        try:
            return await client.request(api_key, version, message, timeout=REQUEST_TIMEOUT_S)
        except BrokerConnectionError:
            self._admin.invalidate(node)
            raise

    async def metadata(self) -> SourceMetadata:
        """Brokers and every topic with its partitions' leaders; updates the addresses."""
        resp = await self._request(
            None, METADATA, 12, MetadataRequest(topics=None, allow_auto_topic_creation=False)
        )
        brokers = {b.node_id: (b.host, b.port) for b in resp.brokers}
        if brokers:
            self.brokers = brokers
        self.cluster_id = resp.cluster_id or ""
        topics = {}
        for t in resp.topics:
            if t.error_code or not t.name:
                continue
            tid = t.topic_id if t.topic_id.int else None
            topics[t.name] = SourceTopic(
                t.name,
                tid,
                {
                    p.partition_index: SourcePartition(
                        p.partition_index,
                        p.leader_id if p.error_code != ErrorCode.LEADER_NOT_AVAILABLE else -1,
                        p.leader_epoch,
                    )
                    for p in t.partitions
                },
            )
        return SourceMetadata(self.cluster_id, dict(self.brokers), topics)

    async def topic_configs(self, names: list[str]) -> dict[str, dict[str, str]]:
        """Every topic's effective configs (value per name); topics in error are left out."""
        if not names:
            return {}
        resp = await self._request(
            None,
            DESCRIBE_CONFIGS,
            4,
            DescribeConfigsRequest(
                resources=[
                    DescribeConfigsResource(
                        resource_type=TOPIC_RESOURCE, resource_name=n, configuration_keys=None
                    )
                    for n in names
                ]
            ),
        )
        out = {}
        for r in resp.results:
            if r.error_code:
                log.warning(
                    "source %s: DescribeConfigs of %s: error %d %s",
                    self.name,
                    r.resource_name,
                    r.error_code,
                    r.error_message or "",
                )
                continue
            out[r.resource_name] = {c.name: c.value for c in r.configs if c.value is not None}
        return out

    async def list_offsets(
        self, leader: int, topic: str, partition: int, timestamp: int
    ) -> tuple[int, int]:
        """(error code, offset) of EARLIEST (-2) or LATEST (-1) at the partition's leader."""
        resp = await self._request(
            leader,
            LIST_OFFSETS,
            7,
            ListOffsetsRequest(
                replica_id=-1,
                isolation_level=0,
                topics=[
                    ListOffsetsTopic(
                        name=topic,
                        partitions=[
                            ListOffsetsPartition(partition_index=partition, timestamp=timestamp)
                        ],
                    )
                ],
            ),
        )
        for t in resp.topics:
            for p in t.partitions:
                return p.error_code, p.offset
        raise SourceError(f"source {self.name}: ListOffsets for {topic}-{partition}: no answer")

    async def list_groups(self) -> list[str]:
        """Every consumer group of every broker (ListGroups goes to each one)."""
        groups: set[str] = set()
        for node in list(self.brokers):
            try:
                resp = await self._request(node, LIST_GROUPS, 4, ListGroupsRequest())
            except BrokerConnectionError as exc:
                raise BrokerConnectionError(f"ListGroups: {exc}") from None
            if resp.error_code:
                raise SourceError(f"source {self.name}: ListGroups error {resp.error_code}")
            groups.update(g.group_id for g in resp.groups if g.protocol_type in ("consumer", ""))
        return sorted(groups)

    async def group_offsets(self, group_id: str) -> dict[tuple[str, int], int]:
        """The group's committed offsets, ``(topic, partition) -> offset`` (none: -1 left out)."""
        fc = await self._request(
            None, FIND_COORDINATOR, 3, FindCoordinatorRequest(key=group_id, key_type=0)
        )
        if fc.error_code:
            raise SourceError(
                f"source {self.name}: FindCoordinator({group_id}) error {fc.error_code}"
            )
        self.brokers.setdefault(fc.node_id, (fc.host, fc.port))
        resp = await self._request(
            fc.node_id,
            OFFSET_FETCH,
            7,
            OffsetFetchRequest(group_id=group_id, topics=None, require_stable=True),
        )
        if resp.error_code:
            raise SourceError(
                f"source {self.name}: OffsetFetch({group_id}) error {resp.error_code}"
            )
        out = {}
        for t in resp.topics:
            for p in t.partitions:
                if p.error_code == 0 and p.committed_offset >= 0:
                    out[(t.name, p.partition_index)] = p.committed_offset
        return out
