"""DescribeUserScramCredentials (key 50) and AlterUserScramCredentials (key 51).

SCRAM credentials managed through the Kafka APIs (KIP-554), kept in the cluster metadata:
in a cluster as `UpsertScramCredential` / `DeleteScramCredential` records of the
replicated log (every broker applies them, so a credential set through one broker is
good on all of them at the next login), on a single broker in its metadata document.

Alter: an upsertion carries the user, the mechanism (1 = SCRAM-SHA-256, 2 = SCRAM-SHA-512),
the iteration count, the salt and the client-computed SaltedPassword; the broker derives
StoredKey and ServerKey from it and keeps only those (the salted password goes no further
than this handler). A deletion names the user and mechanism. Each user gets one result,
with Kafka's errors: UNACCEPTABLE_CREDENTIAL for an empty user name, an empty salt or
salted password, or iterations outside 4096..16384; UNSUPPORTED_SASL_MECHANISM for another
mechanism number; DUPLICATE_RESOURCE when the user appears more than once in the request
(none of that user's changes is made); RESOURCE_NOT_FOUND for deleting a credential that
is not there. A user's valid changes are made even when another user's fail.

Describe: the mechanisms and iteration counts of the named users (RESOURCE_NOT_FOUND for
a user without any credential, DUPLICATE_RESOURCE for a user named twice), of every user
when the list is null or empty.

Both describe only what the APIs manage: users of ``[security.sasl] users`` / the users
file are each broker's bootstrap configuration, not metadata, so they are neither listed
nor deletable here. Authentication looks a user up in the metadata first and falls back to
the configured users (see `shazamq.broker.security`); `register` attaches that lookup to
the broker's credential store, because this module is where the location of the
credentials (cluster state or single-broker document) is known. As in Kafka the APIs work
without SASL enabled: the credentials wait in the metadata until it is.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

from shazamq.protocol.errors import ErrorCode, KafkaError
from shazamq.protocol.messages.alter_user_scram_credentials_request import (
    AlterUserScramCredentialsRequest,
)
from shazamq.protocol.messages.alter_user_scram_credentials_response import (
    AlterUserScramCredentialsResponse,
    AlterUserScramCredentialsResult,
)
from shazamq.protocol.messages.describe_user_scram_credentials_request import (
    DescribeUserScramCredentialsRequest,
)
from shazamq.protocol.messages.describe_user_scram_credentials_response import (
    CredentialInfo,
    DescribeUserScramCredentialsResponse,
    DescribeUserScramCredentialsResult,
)

from ..cluster.metadata import MetadataStore, ScramCredentials, ScramEntry
from ..security import INTERNAL_USER
from ..security.sasl import (
    MAX_ITERATIONS,
    MIN_ITERATIONS,
    SCRAM_HASHES,
    SCRAM_MECHANISM_TYPES,
    CredentialLookup,
    ScramCredential,
)

if TYPE_CHECKING:
    from ..app import Broker
    from ..server import RequestContext
    from . import Dispatcher

log = logging.getLogger(__name__)

DESCRIBE_KEY = 50
ALTER_KEY = 51
_TYPE_OF_MECHANISM = {name: number for number, name in SCRAM_MECHANISM_TYPES.items()}
_MECHANISM_OF_HASH = {h: name for name, h in SCRAM_HASHES.items()}

_Result = tuple[int, str | None]


def _stored(broker: Broker) -> ScramCredentials:
    """The credentials as they are now (read at each call: a restore replaces the dict)."""
    if broker.cluster is not None:
        return broker.cluster.state.scram
    store = broker.metadata
    assert isinstance(store, MetadataStore)
    return store.scram


def credential_lookup(broker: Broker) -> CredentialLookup:
    """The lookup a `CredentialStore` consults first: the metadata's credential, or None."""

    def lookup(user: str, hash_name: str) -> ScramCredential | None:
        mechanism = _MECHANISM_OF_HASH.get(hash_name)
        entry = _stored(broker).get(user, {}).get(mechanism or "")
        if entry is None:
            return None
        return ScramCredential(
            hash_name=hash_name,
            salt=entry.salt,
            iterations=entry.iterations,
            stored_key=entry.stored_key,
            server_key=entry.server_key,
        )

    return lookup


def _check_user(name: str) -> _Result | None:
    if not name:
        return ErrorCode.UNACCEPTABLE_CREDENTIAL, "Username must not be empty"
    if name == INTERNAL_USER:
        # the brokers' own principal (its password is the cluster secret): not for the API
        return ErrorCode.UNACCEPTABLE_CREDENTIAL, f"{INTERNAL_USER} is reserved for the brokers"
    return None


def _check_mechanism(number: int) -> tuple[str | None, _Result | None]:
    mechanism = SCRAM_MECHANISM_TYPES.get(number)
    if mechanism is None:
        return None, (ErrorCode.UNSUPPORTED_SASL_MECHANISM, f"Unknown SCRAM mechanism {number}")
    return mechanism, None


def register(d: Dispatcher, broker: Broker) -> None:
    if broker.credentials is not None:
        broker.credentials.attach(credential_lookup(broker))

    async def describe(
        ctx: RequestContext, req: DescribeUserScramCredentialsRequest
    ) -> DescribeUserScramCredentialsResponse:
        stored = _stored(broker)
        if not req.users:
            names = sorted(stored)
            duplicated: set[str] = set()
        else:
            asked = [u.name for u in req.users]
            names = list(dict.fromkeys(asked))
            duplicated = {n for n, c in Counter(asked).items() if c > 1}
        results = []
        for name in names:
            by_mechanism = stored.get(name, {})
            error: _Result | None = None
            if name in duplicated:
                error = (
                    ErrorCode.DUPLICATE_RESOURCE,
                    "Cannot describe SCRAM credentials for the same user twice in a single request",
                )
            elif not by_mechanism:
                error = (
                    ErrorCode.RESOURCE_NOT_FOUND,
                    "Attempt to describe a user credential that does not exist",
                )
            if error is not None:
                results.append(
                    DescribeUserScramCredentialsResult(
                        user=name, error_code=error[0], error_message=error[1], credential_infos=[]
                    )
                )
                continue
            infos = [
                CredentialInfo(mechanism=_TYPE_OF_MECHANISM[m], iterations=e.iterations)
                for m, e in sorted(by_mechanism.items(), key=lambda me: _TYPE_OF_MECHANISM[me[0]])
            ]
            results.append(
                DescribeUserScramCredentialsResult(
                    user=name, error_code=0, error_message=None, credential_infos=infos
                )
            )
        return DescribeUserScramCredentialsResponse(
            throttle_time_ms=0, error_code=0, error_message=None, results=results
        )

    async def alter(
        ctx: RequestContext, req: AlterUserScramCredentialsRequest
    ) -> AlterUserScramCredentialsResponse:
        stored = _stored(broker)
        deletions = req.deletions or []
        upsertions = req.upsertions or []
        counts = Counter([x.name for x in deletions] + [x.name for x in upsertions])
        # user -> result; a user's first error decides it, insertion order is the answer's
        outcome: dict[str, _Result] = {}
        for name, count in counts.items():
            if count > 1:
                outcome[name] = (
                    ErrorCode.DUPLICATE_RESOURCE,
                    "A user credential cannot be altered twice in the same request",
                )
        to_delete: list[tuple[str, str]] = []
        for x in deletions:
            if x.name in outcome:
                continue
            mechanism, error = _check_mechanism(x.mechanism)
            error = _check_user(x.name) or error
            if error is None and mechanism not in stored.get(x.name, {}):
                error = (
                    ErrorCode.RESOURCE_NOT_FOUND,
                    "Attempt to delete a user credential that does not exist",
                )
            if error is not None:
                outcome[x.name] = error
            else:
                assert mechanism is not None
                to_delete.append((x.name, mechanism))
        to_upsert: list[tuple[str, str, ScramEntry]] = []
        for u in upsertions:
            if u.name in outcome:
                continue
            mechanism, error = _check_mechanism(u.mechanism)
            error = _check_user(u.name) or error
            if error is None:
                if u.iterations < MIN_ITERATIONS:
                    error = (ErrorCode.UNACCEPTABLE_CREDENTIAL, "Too few iterations")
                elif u.iterations > MAX_ITERATIONS:
                    error = (ErrorCode.UNACCEPTABLE_CREDENTIAL, "Too many iterations")
                elif not u.salt:
                    error = (ErrorCode.UNACCEPTABLE_CREDENTIAL, "Salt must not be empty")
                elif not u.salted_password:
                    error = (
                        ErrorCode.UNACCEPTABLE_CREDENTIAL,
                        "Salted password must not be empty",
                    )
            if error is not None:
                outcome[u.name] = error
                continue
            assert mechanism is not None
            salt = bytes(u.salt)
            keys = ScramCredential.from_salted_password(
                SCRAM_HASHES[mechanism], bytes(u.salted_password), salt, u.iterations
            )
            to_upsert.append(
                (
                    u.name,
                    mechanism,
                    ScramEntry(
                        salt=salt,
                        iterations=u.iterations,
                        stored_key=keys.stored_key,
                        server_key=keys.server_key,
                    ),
                )
            )
        for name, _ in to_delete:
            outcome[name] = (0, None)
        for name, _, _ in to_upsert:
            outcome[name] = (0, None)
        if to_delete or to_upsert:
            await _apply(broker, to_upsert, to_delete, outcome)
            who = ctx.session.principal
            for name, mechanism in to_delete:
                if outcome[name][0] == 0:
                    log.info("%s deleted the %s credential of user %r", who, mechanism, name)
            for name, mechanism, entry in to_upsert:
                if outcome[name][0] == 0:
                    log.info(
                        "%s set the %s credential of user %r (%d iterations)",
                        who,
                        mechanism,
                        name,
                        entry.iterations,
                    )
        return AlterUserScramCredentialsResponse(
            throttle_time_ms=0,
            results=[
                AlterUserScramCredentialsResult(user=name, error_code=code, error_message=message)
                for name, (code, message) in outcome.items()
            ],
        )

    d.register(DESCRIBE_KEY, 0, 0, describe)
    d.register(ALTER_KEY, 0, 0, alter)


async def _apply(
    broker: Broker,
    upserts: list[tuple[str, str, ScramEntry]],
    deletions: list[tuple[str, str]],
    outcome: dict[str, _Result],
) -> None:
    """Make the validated changes; a change the metadata rejects turns its user's result."""
    node = broker.cluster
    if node is None:
        store = broker.metadata
        assert isinstance(store, MetadataStore)
        await store.alter_scram(upserts, deletions)
        return
    # one record per change, as KRaft writes them; a user's changes are never split across
    # records because a user appears once per request
    for name, mechanism in deletions:
        try:
            code = await node.delete_scram(name, mechanism)
        except KafkaError as exc:
            outcome[name] = (int(exc.code), exc.message)
            continue
        if code:
            outcome[name] = (code, "the cluster metadata rejected the deletion")
    for name, mechanism, entry in upserts:
        try:
            code = await node.upsert_scram(
                name,
                mechanism,
                salt=entry.salt,
                iterations=entry.iterations,
                stored_key=entry.stored_key,
                server_key=entry.server_key,
            )
        except KafkaError as exc:
            outcome[name] = (int(exc.code), exc.message)
            continue
        if code:
            outcome[name] = (code, "the cluster metadata rejected the credential")
