"""How the operator reaches a cluster's Kafka listener, and its broker-config calls.

`Connection` is what the operator's admin connections (the roll's partition reads,
reassignments, dynamic broker settings) need for the cluster's listener: nothing on a
plaintext one; the cluster CA to verify the brokers' certificates with TLS; the operator's
own user with SASL. That user (`OPERATOR_USER`) is rendered into every broker's users with
the password of the Secret ``<name>-operator-credentials`` (created by the operator, like
the cluster secret), and made a super user when authorization is on
(`shazamq.operator.resources`). The handler reads that Secret and the CA from the TLS
Secret (`ca.crt`, else its `tls.crt` as the trust anchor of a self-signed certificate)
and builds the Connection; it never prints it.

The same Connection serves both clients the operator uses: the project's own
`BrokerClient` (reassignments, broker configs) and confluent-kafka's AdminClient
(`librdkafka()`, for Metadata and topic DescribeConfigs).

`describe_broker_configs()` and `alter_broker_configs()` speak DescribeConfigs and
IncrementalAlterConfigs (SET) to one broker, on its own BROKER resource (its id): the
broker applies its dynamic settings (`shazamq.broker.dynamic_config`) without a restart.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shazamq.broker.cluster.client import BrokerClient, BrokerConnectionError, SaslLogin
from shazamq.protocol.errors import ErrorCode
from shazamq.protocol.messages.alter_user_scram_credentials_request import (
    AlterUserScramCredentialsRequest,
    ScramCredentialUpsertion,
)
from shazamq.protocol.messages.api_versions_request import ApiVersionsRequest
from shazamq.protocol.messages.describe_configs_request import (
    DescribeConfigsRequest,
    DescribeConfigsResource,
)
from shazamq.protocol.messages.incremental_alter_configs_request import (
    AlterableConfig,
    AlterConfigsResource,
    IncrementalAlterConfigsRequest,
)

__all__ = [
    "OPERATOR_USER",
    "PLAINTEXT",
    "AdminError",
    "Connection",
    "alter_broker_configs",
    "can_log_in",
    "describe_broker_configs",
    "set_scram_credential",
]

# The operator's SASL user on every cluster with authentication (one SCRAM/PLAIN user
# like any other; its name is a plain identifier so it can be given to the broker as
# the environment override SHAZAMQ_SECURITY__SASL__USERS__SHAZAMQ_OPERATOR).
OPERATOR_USER = "shazamq_operator"
CLIENT_ID = "shazamq-operator"
TIMEOUT = 30.0
_BROKER_RESOURCE = 4
_DESCRIBE_CONFIGS_KEY = 32
_INCREMENTAL_ALTER_CONFIGS_KEY = 44
_ALTER_USER_SCRAM_CREDENTIALS_KEY = 51
_API_VERSIONS_KEY = 18
_OP_SET = 0


class AdminError(Exception):
    """A broker refused or did not answer an admin call; the message says which and why."""


@dataclass(frozen=True, repr=False)
class Connection:
    """The listener's security as a client sees it (never printed: it holds a password)."""

    tls: bool = False
    ca_pem: str | None = None  # the certificates the brokers' chain must end in
    login: SaslLogin | None = None

    def __repr__(self) -> str:
        user = self.login.user if self.login else None
        return f"Connection(tls={self.tls}, user={user!r})"

    @property
    def protocol(self) -> str:
        """Kafka's security.protocol of this connection."""
        if self.login is not None:
            return "SASL_SSL" if self.tls else "SASL_PLAINTEXT"
        return "SSL" if self.tls else "PLAINTEXT"

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=self.ca_pem)
        # a self-signed broker certificate may be its own trust anchor
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        return ctx

    def client(self, host: str, port: int) -> BrokerClient:
        return BrokerClient(
            host, port, client_id=CLIENT_ID, ssl_context=self.ssl_context(), sasl=self.login
        )

    def librdkafka(self) -> dict[str, str]:
        """The settings of a confluent-kafka client over this connection."""
        out = {"security.protocol": self.protocol}
        if self.tls and self.ca_pem:
            out["ssl.ca.pem"] = self.ca_pem
        if self.login is not None:
            out["sasl.mechanism"] = self.login.mechanism
            out["sasl.username"] = self.login.user
            out["sasl.password"] = self.login.password
        return out


PLAINTEXT = Connection()


async def _request(
    connection: Connection, host: str, port: int, api_key: int, message: object
) -> object:
    client = connection.client(host, port)
    try:
        return await client.request(api_key, 0, message, timeout=TIMEOUT)
    except (BrokerConnectionError, OSError) as exc:
        raise AdminError(f"{host}:{port}: {exc}") from None
    finally:
        await client.close()


async def describe_broker_configs(
    connection: Connection, host: str, port: int, broker_id: int, names: Iterable[str]
) -> dict[str, str]:
    """The values broker `broker_id` (at host:port) runs with for `names`."""
    request = DescribeConfigsRequest(
        resources=[
            DescribeConfigsResource(
                resource_type=_BROKER_RESOURCE,
                resource_name=str(broker_id),
                configuration_keys=sorted(names),
            )
        ]
    )
    resp = await _request(connection, host, port, _DESCRIBE_CONFIGS_KEY, request)
    (result,) = resp.results  # type: ignore[attr-defined]
    if result.error_code:
        raise AdminError(
            f"DescribeConfigs of broker {broker_id}: {ErrorCode(result.error_code).name}: "
            f"{result.error_message}"
        )
    return {c.name: c.value for c in result.configs if c.value is not None}


async def alter_broker_configs(
    connection: Connection, host: str, port: int, broker_id: int, settings: Mapping[str, str]
) -> None:
    """SET `settings` (Kafka names -> values) on broker `broker_id`; AdminError if refused."""
    request = IncrementalAlterConfigsRequest(
        resources=[
            AlterConfigsResource(
                resource_type=_BROKER_RESOURCE,
                resource_name=str(broker_id),
                configs=[
                    AlterableConfig(name=k, config_operation=_OP_SET, value=v)
                    for k, v in sorted(settings.items())
                ],
            )
        ],
        validate_only=False,
    )
    resp = await _request(connection, host, port, _INCREMENTAL_ALTER_CONFIGS_KEY, request)
    for r in resp.responses:  # type: ignore[attr-defined]
        if r.error_code:
            raise AdminError(
                f"IncrementalAlterConfigs of broker {broker_id}: "
                f"{ErrorCode(r.error_code).name}: {r.error_message}"
            )


async def can_log_in(connection: Connection, host: str, port: int) -> bool:
    """Whether `connection` logs in to the broker at host:port (and it answers)."""
    client = connection.client(host, port)
    try:
        await client.request(_API_VERSIONS_KEY, 0, ApiVersionsRequest(), timeout=TIMEOUT)
    except (BrokerConnectionError, OSError, TimeoutError):
        return False
    finally:
        await client.close()
    return True


async def set_scram_credential(
    connection: Connection,
    host: str,
    port: int,
    user: str,
    credential: tuple[int, bytes, bytes, int],
) -> None:
    """Upsert `user`'s SCRAM credential ((mechanism type, salt, salted password,
    iterations), `rotation.scram_upsertion`) through the broker at host:port; AdminError if
    refused."""
    mechanism, salt, salted, iterations = credential
    request = AlterUserScramCredentialsRequest(
        deletions=[],
        upsertions=[
            ScramCredentialUpsertion(
                name=user,
                mechanism=mechanism,
                iterations=iterations,
                salt=salt,
                salted_password=salted,
            )
        ],
    )
    resp = await _request(connection, host, port, _ALTER_USER_SCRAM_CREDENTIALS_KEY, request)
    for r in resp.results:  # type: ignore[attr-defined]
        if r.error_code:
            raise AdminError(
                f"AlterUserScramCredentials of {r.user}: {ErrorCode(r.error_code).name}: "
                f"{r.error_message}"
            )
