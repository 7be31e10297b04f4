"""CreateAcls (key 30), DescribeAcls (29) and DeleteAcls (31).

The ACLs live in the cluster metadata: in a cluster as `CreateAcl` / `DeleteAcl` records of
the replicated log (every broker applies them and its authorizer decides by them at
once), on a single broker in its metadata document. Creating needs ALTER on the cluster,
describing DESCRIBE, deleting ALTER (CLUSTER_AUTHORIZATION_FAILED); with
``[security.authorization]`` off every call answers SECURITY_DISABLED, as Kafka does
without an authorizer.

CreateAcls: each creation is checked (resource type topic, group, cluster or
transactional id; LITERAL or PREFIXED; ``Type:name`` principal; an operation the resource
type has; ALLOW or DENY) and answered INVALID_REQUEST otherwise; creating an ACL that
exists succeeds and changes nothing. DescribeAcls and DeleteAcls take Kafka's filters:
ANY matches every value, a null name/principal/host matches every one, and the pattern
type MATCH selects every ACL that would apply to a resource of that name (the literal
name, the wildcard ``*`` and every prefix of it). DeleteAcls answers, per filter, the
ACLs it removed.
"""

from __future__ import annotations

import logging
from itertools import groupby
from typing import TYPE_CHECKING

from shazamq.protocol.errors import ErrorCode, KafkaError
from shazamq.protocol.messages.create_acls_request import CreateAclsRequest
from shazamq.protocol.messages.create_acls_response import AclCreationResult, CreateAclsResponse
from shazamq.protocol.messages.delete_acls_request import DeleteAclsRequest
from shazamq.protocol.messages.delete_acls_response import (
    DeleteAclsFilterResult,
    DeleteAclsMatchingAcl,
    DeleteAclsResponse,
)
from shazamq.protocol.messages.describe_acls_request import DescribeAclsRequest
from shazamq.protocol.messages.describe_acls_response import (
    AclDescription,
    DescribeAclsResource,
    DescribeAclsResponse,
)

from ..cluster.metadata import MetadataStore
from ..security.acl import AclBinding, AclFilter, Operation, PatternType, validate
from .authz import CLUSTER, host_of

if TYPE_CHECKING:
    from ..app import Broker
    from ..server import RequestContext
    from . import Dispatcher

log = logging.getLogger(__name__)

DESCRIBE_KEY = 29
CREATE_KEY = 30
DELETE_KEY = 31
_DISABLED = "No Authorizer is configured on the broker"
_DENIED = "Cluster authorization failed."


def stored_acls(broker: Broker) -> set[AclBinding]:
    """The ACLs in the metadata as they are now."""
    if broker.cluster is not None:
        return broker.cluster.state.acls
    store = broker.metadata
    assert isinstance(store, MetadataStore)
    return store.acls


def _filter(f: DescribeAclsRequest | object, version: int) -> AclFilter:
    pattern = getattr(f, "pattern_type_filter", PatternType.LITERAL)
    return AclFilter(
        resource_type=f.resource_type_filter,  # type: ignore[attr-defined]
        resource_name=f.resource_name_filter,  # type: ignore[attr-defined]
        pattern_type=pattern if version >= 1 else PatternType.LITERAL,
        principal=f.principal_filter,  # type: ignore[attr-defined]
        host=f.host_filter,  # type: ignore[attr-defined]
        operation=f.operation,  # type: ignore[attr-defined]
        permission=f.permission_type,  # type: ignore[attr-defined]
    )


def register(d: Dispatcher, broker: Broker) -> None:
    def refusal(ctx: RequestContext, op: int) -> tuple[int, str] | None:
        authz = broker.authorizer
        if authz is None:
            return ErrorCode.SECURITY_DISABLED, _DISABLED
        s = ctx.session
        if not authz.authorize(s.principal, host_of(s.peer), op, CLUSTER, "kafka-cluster"):
            return ErrorCode.CLUSTER_AUTHORIZATION_FAILED, _DENIED
        return None

    async def describe(ctx: RequestContext, req: DescribeAclsRequest) -> DescribeAclsResponse:
        refused = refusal(ctx, Operation.DESCRIBE)
        if refused is not None:
            return DescribeAclsResponse(
                error_code=refused[0], error_message=refused[1], resources=[]
            )
        flt = _filter(req, ctx.api_version)
        problem = flt.problem()
        if problem is not None:
            return DescribeAclsResponse(
                error_code=ErrorCode.INVALID_REQUEST, error_message=problem, resources=[]
            )
        found = sorted(a for a in stored_acls(broker) if flt.matches(a))
        resources = [
            DescribeAclsResource(
                resource_type=rtype,
                resource_name=name,
                pattern_type=pattern,
                acls=[
                    AclDescription(
                        principal=a.principal,
                        host=a.host,
                        operation=a.operation,
                        permission_type=a.permission,
                    )
                    for a in group
                ],
            )
            for (rtype, name, pattern), group in groupby(
                found, key=lambda a: (a.resource_type, a.resource_name, a.pattern_type)
            )
        ]
        return DescribeAclsResponse(error_code=0, error_message=None, resources=resources)

    async def create(ctx: RequestContext, req: CreateAclsRequest) -> CreateAclsResponse:
        refused = refusal(ctx, Operation.ALTER)
        if refused is not None:
            return CreateAclsResponse(
                results=[
                    AclCreationResult(error_code=refused[0], error_message=refused[1])
                    for _ in req.creations
                ]
            )
        results: list[AclCreationResult] = []
        valid: list[tuple[int, AclBinding]] = []
        for i, c in enumerate(req.creations):
            acl = AclBinding(
                resource_type=c.resource_type,
                resource_name=c.resource_name,
                pattern_type=c.resource_pattern_type
                if ctx.api_version >= 1
                else PatternType.LITERAL,
                principal=c.principal,
                host=c.host,
                operation=c.operation,
                permission=c.permission_type,
            )
            problem = validate(acl)
            results.append(
                AclCreationResult(
                    error_code=ErrorCode.INVALID_REQUEST if problem else 0, error_message=problem
                )
            )
            if problem is None:
                valid.append((i, acl))
        if valid:
            node = broker.cluster
            if node is None:
                store = broker.metadata
                assert isinstance(store, MetadataStore)
                await store.alter_acls([a for _, a in valid], [])
                broker.refresh_acls()
            else:
                for i, acl in valid:
                    try:
                        code = await node.create_acl(acl)
                    except KafkaError as exc:
                        results[i] = AclCreationResult(
                            error_code=exc.code, error_message=exc.message
                        )
                        continue
                    if code:
                        results[i] = AclCreationResult(
                            error_code=code, error_message="the cluster metadata rejected the ACL"
                        )
            for i, acl in valid:
                if results[i].error_code == 0:
                    log.info("%s created ACL %s", ctx.session.principal, acl)
        return CreateAclsResponse(results=results)

    async def delete(ctx: RequestContext, req: DeleteAclsRequest) -> DeleteAclsResponse:
        refused = refusal(ctx, Operation.ALTER)
        if refused is not None:
            return DeleteAclsResponse(
                filter_results=[
                    DeleteAclsFilterResult(
                        error_code=refused[0], error_message=refused[1], matching_acls=[]
                    )
                    for _ in req.filters
                ]
            )
        current = stored_acls(broker)
        per_filter: list[list[AclBinding] | tuple[int, str]] = []
        doomed: set[AclBinding] = set()
        for f in req.filters:
            flt = _filter(f, ctx.api_version)
            problem = flt.problem()
            if problem is not None:
                per_filter.append((ErrorCode.INVALID_REQUEST, problem))
                continue
            found = sorted(a for a in current if flt.matches(a))
            per_filter.append(found)
            doomed.update(found)
        failed: dict[AclBinding, tuple[int, str]] = {}
        if doomed:
            node = broker.cluster
            if node is None:
                store = broker.metadata
                assert isinstance(store, MetadataStore)
                await store.alter_acls([], sorted(doomed))
                broker.refresh_acls()
            else:
                for acl in sorted(doomed):
                    try:
                        code = await node.delete_acl(acl)
                    except KafkaError as exc:
                        failed[acl] = (exc.code, exc.message or "")
                        continue
                    if code:
                        failed[acl] = (code, "the cluster metadata rejected the deletion")
            for acl in sorted(doomed):
                if acl not in failed:
                    log.info("%s deleted ACL %s", ctx.session.principal, acl)
        results = []
        for entry in per_filter:
            if isinstance(entry, tuple):
                results.append(
                    DeleteAclsFilterResult(
                        error_code=entry[0], error_message=entry[1], matching_acls=[]
                    )
                )
                continue
            matching = []
            for a in entry:
                code, message = failed.get(a, (0, None))
                matching.append(
                    DeleteAclsMatchingAcl(
                        error_code=code,
                        error_message=message,
                        resource_type=a.resource_type,
                        resource_name=a.resource_name,
                        pattern_type=a.pattern_type,
                        principal=a.principal,
                        host=a.host,
                        operation=a.operation,
                        permission_type=a.permission,
                    )
                )
            results.append(
                DeleteAclsFilterResult(error_code=0, error_message=None, matching_acls=matching)
            )
        return DeleteAclsResponse(filter_results=results)

    d.register(DESCRIBE_KEY, 0, 3, describe)
    d.register(CREATE_KEY, 0, 3, create)
    d.register(DELETE_KEY, 0, 3, delete)
