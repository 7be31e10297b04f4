"""Authorization: Kafka's ACL model and the authorizer that decides by it (pure, no I/O).

An ACL (`AclBinding`) says: *principal* from *host* is ALLOWed or DENYed *operation* on
the resources a *pattern* names. A pattern is a resource type (topic, group, cluster,
transactional id) with a name that is either LITERAL (the name itself, or ``*`` for every
resource of the type) or PREFIXED (every name starting with it). A principal is
``User:<name>`` or ``User:*``; a host an address or ``*``.

Deciding (`Authorizer.authorize`), as Kafka's StandardAuthorizer does:

- a super user (``super_users``, and the brokers' own principal) may do anything;
- of the ACLs whose pattern matches the resource, any DENY matching the principal, host
  and operation (or ALL) refuses, whatever else allows: deny wins;
- otherwise an ALLOW matching principal and host, whose operation is the one asked, ALL,
  or one implying it (READ, WRITE, DELETE and ALTER imply DESCRIBE; ALTER_CONFIGS implies
  DESCRIBE_CONFIGS) permits;
- with no ACL at all on the resource, ``allow_everyone_if_no_acl_found`` decides.

Decisions are cached per (principal, host, operation, resource type, name) until the ACLs
change, so the hot paths (one check per partition of a Produce or Fetch) cost a tuple and
a dict lookup. The ACLs are indexed by resource type, then literal name or prefix.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum

import msgspec

WILDCARD = "*"
WILDCARD_PRINCIPAL = "User:*"
CLUSTER_NAME = "kafka-cluster"


class ResourceType(IntEnum):
    UNKNOWN = 0
    ANY = 1
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5
    DELEGATION_TOKEN = 6
    USER = 7


class PatternType(IntEnum):
    UNKNOWN = 0
    ANY = 1
    MATCH = 2
    LITERAL = 3
    PREFIXED = 4


class Operation(IntEnum):
    UNKNOWN = 0
    ANY = 1
    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    CLUSTER_ACTION = 9
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12
    CREATE_TOKENS = 13
    DESCRIBE_TOKENS = 14


class Permission(IntEnum):
    UNKNOWN = 0
    ANY = 1
    DENY = 2
    ALLOW = 3


# the resource types ACLs may be set on (delegation tokens and users are left out)
RESOURCE_TYPES = frozenset(
    {ResourceType.TOPIC, ResourceType.GROUP, ResourceType.CLUSTER, ResourceType.TRANSACTIONAL_ID}
)
# the operations that make sense per resource type (Kafka's AclEntry.supportedOperations)
SUPPORTED_OPERATIONS: dict[int, frozenset[int]] = {
    ResourceType.TOPIC: frozenset(
        {
            Operation.READ,
            Operation.WRITE,
            Operation.CREATE,
            Operation.DESCRIBE,
            Operation.DELETE,
            Operation.ALTER,
            Operation.DESCRIBE_CONFIGS,
            Operation.ALTER_CONFIGS,
        }
    ),
    ResourceType.GROUP: frozenset({Operation.READ, Operation.DESCRIBE, Operation.DELETE}),
    ResourceType.CLUSTER: frozenset(
        {
            Operation.CREATE,
            Operation.CLUSTER_ACTION,
            Operation.DESCRIBE_CONFIGS,
            Operation.ALTER_CONFIGS,
            Operation.IDEMPOTENT_WRITE,
            Operation.ALTER,
            Operation.DESCRIBE,
        }
    ),
    ResourceType.TRANSACTIONAL_ID: frozenset({Operation.DESCRIBE, Operation.WRITE}),
}
# an ALLOW of the key also allows these
_IMPLIED: dict[int, frozenset[int]] = {
    Operation.DESCRIBE: frozenset(
        {Operation.DESCRIBE, Operation.READ, Operation.WRITE, Operation.DELETE, Operation.ALTER}
    ),
    Operation.DESCRIBE_CONFIGS: frozenset({Operation.DESCRIBE_CONFIGS, Operation.ALTER_CONFIGS}),
}


class AclBinding(msgspec.Struct, frozen=True, kw_only=True, order=True):
    """One ACL, as stored in the metadata and carried by CreateAcls/DescribeAcls."""

    resource_type: int
    resource_name: str
    pattern_type: int  # LITERAL or PREFIXED
    principal: str
    host: str
    operation: int
    permission: int  # ALLOW or DENY


def validate(acl: AclBinding) -> str | None:
    """Why this ACL cannot be created (Kafka's INVALID_REQUEST cases), or None."""
    if acl.resource_type not in RESOURCE_TYPES:
        return f"resource type {acl.resource_type} cannot have ACLs"
    if acl.pattern_type not in (PatternType.LITERAL, PatternType.PREFIXED):
        return "the pattern type must be LITERAL or PREFIXED"
    if not acl.resource_name:
        return "the resource name must not be empty"
    if acl.resource_type == ResourceType.CLUSTER and (
        acl.pattern_type != PatternType.LITERAL or acl.resource_name != CLUSTER_NAME
    ):
        return f"the cluster resource is LITERAL {CLUSTER_NAME!r}"
    kind, sep, name = acl.principal.partition(":")
    if not sep or not kind or not name:
        return f"principal {acl.principal!r} is not of the form Type:name"
    if not acl.host:
        return "the host must not be empty"
    if acl.permission not in (Permission.ALLOW, Permission.DENY):
        return "the permission must be ALLOW or DENY"
    if acl.operation != Operation.ALL and acl.operation not in SUPPORTED_OPERATIONS.get(
        acl.resource_type, ()
    ):
        try:
            op = Operation(acl.operation).name
        except ValueError:
            op = str(acl.operation)
        return f"operation {op} does not apply to {ResourceType(acl.resource_type).name}"
    return None


class AclFilter(msgspec.Struct, frozen=True, kw_only=True):
    """A DescribeAcls / DeleteAcls filter: None or ANY fields match everything."""

    resource_type: int = ResourceType.ANY
    resource_name: str | None = None
    pattern_type: int = PatternType.ANY
    principal: str | None = None
    host: str | None = None
    operation: int = Operation.ANY
    permission: int = Permission.ANY

    def problem(self) -> str | None:
        """Why the filter is malformed (INVALID_REQUEST), or None."""
        for value, enum in (
            (self.resource_type, ResourceType),
            (self.pattern_type, PatternType),
            (self.operation, Operation),
            (self.permission, Permission),
        ):
            if value not in enum._value2member_map_ or value == 0:
                return f"unknown {enum.__name__} {value} in the filter"
        return None

    def matches(self, acl: AclBinding) -> bool:
        if self.resource_type != ResourceType.ANY and acl.resource_type != self.resource_type:
            return False
        if self.principal is not None and acl.principal != self.principal:
            return False
        if self.host is not None and acl.host != self.host:
            return False
        if self.operation != Operation.ANY and acl.operation != self.operation:
            return False
        if self.permission != Permission.ANY and acl.permission != self.permission:
            return False
        pt = self.pattern_type
        name = self.resource_name
        if pt == PatternType.MATCH:
            # every pattern that would match a resource of this name
            if name is None:
                return True
            if acl.pattern_type == PatternType.LITERAL:
                return acl.resource_name in (name, WILDCARD)
            return name.startswith(acl.resource_name)
        if pt != PatternType.ANY and acl.pattern_type != pt:
            return False
        return name is None or acl.resource_name == name


class _TypeIndex:
    """The ACLs of one resource type: literal name -> ACLs, prefix -> ACLs."""

    __slots__ = ("literal", "prefix_lengths", "prefixed")

    def __init__(self) -> None:
        self.literal: dict[str, list[AclBinding]] = {}
        self.prefixed: dict[str, list[AclBinding]] = {}
        self.prefix_lengths: list[int] = []  # distinct prefix lengths, ascending

    def matching(self, name: str) -> list[AclBinding]:
        found: list[AclBinding] = []
        literal = self.literal
        if literal:
            hit = literal.get(name)
            if hit:
                found.extend(hit)
            if name != WILDCARD:
                hit = literal.get(WILDCARD)
                if hit:
                    found.extend(hit)
        prefixed = self.prefixed
        if prefixed:
            n = len(name)
            for length in self.prefix_lengths:
                if length > n:
                    break
                hit = prefixed.get(name[:length])
                if hit:
                    found.extend(hit)
        return found


def _allows(acl_op: int, op: int) -> bool:
    if acl_op == op or acl_op == Operation.ALL:
        return True
    implied = _IMPLIED.get(op)
    return implied is not None and acl_op in implied


class Authorizer:
    """Decides by a set of ACLs; `replace`/`add`/`remove` keep its indexes and cache true."""

    _CACHE_LIMIT = 100_000

    def __init__(
        self,
        acls: Iterable[AclBinding] = (),
        *,
        super_users: Iterable[str] = (),
        allow_everyone_if_no_acl_found: bool = False,
    ) -> None:
        self.super_users = frozenset(super_users)
        self.allow_if_no_acl = allow_everyone_if_no_acl_found
        self._acls: set[AclBinding] = set()
        self._index: dict[int, _TypeIndex] = {}
        self._cache: dict[tuple[str, str, int, int, str], bool] = {}
        self.replace(acls)

    # -- the ACLs ------------------------------------------------------------------------

    @property
    def acls(self) -> frozenset[AclBinding]:
        return frozenset(self._acls)

    def replace(self, acls: Iterable[AclBinding]) -> None:
        """Decide by these ACLs from now on (a snapshot restored, the store loaded)."""
        self._acls = set(acls)
        self._rebuild()

    def _rebuild(self) -> None:
        index: dict[int, _TypeIndex] = {}
        for acl in self._acls:
            ti = index.get(acl.resource_type)
            if ti is None:
                ti = index[acl.resource_type] = _TypeIndex()
            table = ti.literal if acl.pattern_type == PatternType.LITERAL else ti.prefixed
            table.setdefault(acl.resource_name, []).append(acl)
        for ti in index.values():
            ti.prefix_lengths = sorted({len(p) for p in ti.prefixed})
        self._index = index
        self._cache = {}

    def add(self, acls: Iterable[AclBinding]) -> None:
        self._acls.update(acls)
        self._rebuild()

    def remove(self, acls: Iterable[AclBinding]) -> None:
        self._acls.difference_update(acls)
        self._rebuild()

    def matching(self, flt: AclFilter) -> list[AclBinding]:
        """The ACLs a DescribeAcls/DeleteAcls filter selects, in a stable order."""
        return sorted(a for a in self._acls if flt.matches(a))

    # -- deciding ------------------------------------------------------------------------

    def authorize(
        self, principal: str, host: str, operation: int, resource_type: int, name: str
    ) -> bool:
        key = (principal, host, operation, resource_type, name)
        decision = self._cache.get(key)
        if decision is None:
            decision = self._decide(principal, host, operation, resource_type, name)
            cache = self._cache
            if len(cache) >= self._CACHE_LIMIT:
                cache.clear()
            cache[key] = decision
        return decision

    def _decide(
        self, principal: str, host: str, operation: int, resource_type: int, name: str
    ) -> bool:
        if principal in self.super_users:
            return True
        ti = self._index.get(resource_type)
        acls = ti.matching(name) if ti is not None else []
        if not acls:
            return self.allow_if_no_acl
        allowed = False
        for acl in acls:
            if acl.principal != principal and acl.principal != WILDCARD_PRINCIPAL:
                continue
            if acl.host != host and acl.host != WILDCARD:
                continue
            if acl.permission == Permission.DENY:
                if acl.operation == operation or acl.operation == Operation.ALL:
                    return False
            elif not allowed and _allows(acl.operation, operation):
                allowed = True
        return allowed

    def authorize_any(self, principal: str, host: str, operation: int, resource_type: int) -> bool:
        """May the principal do `operation` on at least one resource of the type?

        Kafka's authorizeByResourceType (InitProducerId without a transactional id is
        allowed to a principal that may WRITE some topic): some ALLOW (literal or prefixed)
        for the principal and host that no DENY of the same or a wider pattern cancels.
        """
        if principal in self.super_users:
            return True
        ti = self._index.get(resource_type)
        if ti is None:
            return self.allow_if_no_acl

        def applies(acl: AclBinding) -> bool:
            return acl.principal in (principal, WILDCARD_PRINCIPAL) and acl.host in (host, WILDCARD)

        denies = [
            a
            for a in self._acls
            if a.resource_type == resource_type
            and a.permission == Permission.DENY
            and a.operation in (operation, Operation.ALL)
            and applies(a)
        ]
        if any(
            d.pattern_type == PatternType.LITERAL and d.resource_name == WILDCARD for d in denies
        ):
            return False
        for a in self._acls:
            if (
                a.resource_type != resource_type
                or a.permission != Permission.ALLOW
                or not _allows(a.operation, operation)
                or not applies(a)
            ):
                continue
            cancelled = any(
                (
                    d.pattern_type == PatternType.PREFIXED
                    and a.resource_name.startswith(d.resource_name)
                )
                or (
                    d.pattern_type == PatternType.LITERAL
                    and a.pattern_type == PatternType.LITERAL
                    and d.resource_name == a.resource_name
                )
                for d in denies
            )
            if not cancelled:
                return True
        return False
