"""The authorizer against a plain reference model (hypothesis), plus Kafka's named cases.

The reference model restates Kafka's rules as directly as possible, scanning every ACL for
every question; the authorizer (indexes, cache) must agree with it on any set of ACLs, and
keep agreeing as ACLs are added and removed.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shazamq.broker.security.acl import (
    CLUSTER_NAME,
    AclBinding,
    AclFilter,
    Authorizer,
    Operation,
    PatternType,
    Permission,
    ResourceType,
    validate,
)

ALLOW, DENY = Permission.ALLOW, Permission.DENY
TOPIC, GROUP = ResourceType.TOPIC, ResourceType.GROUP
LIT, PRE = PatternType.LITERAL, PatternType.PREFIXED

IMPLIES = {
    Operation.READ: {Operation.DESCRIBE},
    Operation.WRITE: {Operation.DESCRIBE},
    Operation.DELETE: {Operation.DESCRIBE},
    Operation.ALTER: {Operation.DESCRIBE},
    Operation.ALTER_CONFIGS: {Operation.DESCRIBE_CONFIGS},
}


def reference(
    acls: set[AclBinding],
    supers: set[str],
    allow_if_none: bool,
    principal: str,
    host: str,
    op: int,
    rtype: int,
    name: str,
) -> bool:
    if principal in supers:
        return True

    def on_resource(a: AclBinding) -> bool:
        if a.resource_type != rtype:
            return False
        if a.pattern_type == LIT:
            return a.resource_name in (name, "*")
        return name.startswith(a.resource_name)

    relevant = [a for a in acls if on_resource(a)]
    if not relevant:
        return allow_if_none
    mine = [a for a in relevant if a.principal in (principal, "User:*") and a.host in (host, "*")]
    if any(a.permission == DENY and a.operation in (op, Operation.ALL) for a in mine):
        return False
    return any(
        a.permission == ALLOW
        and (a.operation in (op, Operation.ALL) or op in IMPLIES.get(Operation(a.operation), ()))
        for a in mine
    )


names = st.sampled_from(["a", "ab", "abc", "b", "ba", "*", "orders", "ord"])
principals = st.sampled_from(["User:alice", "User:bob", "User:*"])
hosts = st.sampled_from(["10.0.0.1", "10.0.0.2", "*"])
ops = st.sampled_from(
    [
        Operation.ALL,
        Operation.READ,
        Operation.WRITE,
        Operation.DESCRIBE,
        Operation.DELETE,
        Operation.ALTER,
        Operation.ALTER_CONFIGS,
        Operation.DESCRIBE_CONFIGS,
        Operation.CREATE,
    ]
)
acl_st = st.builds(
    AclBinding,
    resource_type=st.sampled_from([TOPIC, GROUP]),
    resource_name=names,
    pattern_type=st.sampled_from([LIT, PRE]),
    principal=principals,
    host=hosts,
    operation=ops,
    permission=st.sampled_from([ALLOW, DENY]),
)
question = st.tuples(
    st.sampled_from(["User:alice", "User:bob", "User:carol"]),
    st.sampled_from(["10.0.0.1", "10.0.0.2"]),
    ops.filter(lambda o: o != Operation.ALL),
    st.sampled_from([TOPIC, GROUP]),
    st.sampled_from(["a", "ab", "abc", "b", "orders", "x", "ordersX"]),
)


@settings(max_examples=300, deadline=None)
@given(
    acls=st.sets(acl_st, max_size=12),
    removed=st.sets(acl_st, max_size=4),
    allow_if_none=st.booleans(),
    questions=st.lists(question, min_size=1, max_size=20),
)
def test_agrees_with_reference(
    acls: set[AclBinding],
    removed: set[AclBinding],
    allow_if_none: bool,
    questions: list[tuple[str, str, int, int, str]],
) -> None:
    supers = {"User:root"}
    authz = Authorizer(acls, super_users=supers, allow_everyone_if_no_acl_found=allow_if_none)
    for q in questions:  # twice: the second answer comes from the cache
        want = reference(acls, supers, allow_if_none, *q)
        assert authz.authorize(*q) == want, q
        assert authz.authorize(*q) == want, q
    authz.remove(removed)
    left = acls - removed
    for q in questions:
        assert authz.authorize(*q) == reference(left, supers, allow_if_none, *q), q
    authz.add(removed)
    for q in questions:
        assert authz.authorize(*q) == reference(acls | removed, supers, allow_if_none, *q), q


def acl(name: str, op: Operation, perm: Permission = ALLOW, **kw: object) -> AclBinding:
    fields: dict[str, object] = dict(
        resource_type=TOPIC,
        resource_name=name,
        pattern_type=LIT,
        principal="User:alice",
        host="*",
        operation=op,
        permission=perm,
    )
    fields.update(kw)
    return AclBinding(**fields)  # type: ignore[arg-type]


def test_named_cases() -> None:
    a = Authorizer(
        [
            acl("orders", Operation.READ),
            acl("pay", Operation.WRITE, pattern_type=PRE),
            acl("pay.secret", Operation.ALL, DENY),
            acl("*", Operation.DESCRIBE, principal="User:*"),
            acl("logs", Operation.READ, host="10.0.0.9"),
        ],
        super_users=["User:admin"],
    )
    alice = ("User:alice", "10.0.0.1")
    assert a.authorize(*alice, Operation.READ, TOPIC, "orders")
    assert a.authorize(*alice, Operation.DESCRIBE, TOPIC, "orders")  # READ implies DESCRIBE
    assert not a.authorize(*alice, Operation.WRITE, TOPIC, "orders")
    assert a.authorize(*alice, Operation.WRITE, TOPIC, "payments")  # prefixed
    assert not a.authorize(*alice, Operation.WRITE, TOPIC, "pay.secret")  # deny wins
    assert not a.authorize(*alice, Operation.READ, TOPIC, "logs")  # wrong host
    assert a.authorize("User:alice", "10.0.0.9", Operation.READ, TOPIC, "logs")
    assert a.authorize("User:bob", "1.2.3.4", Operation.DESCRIBE, TOPIC, "anything")
    assert not a.authorize("User:bob", "1.2.3.4", Operation.READ, TOPIC, "anything")
    assert a.authorize("User:admin", "1.2.3.4", Operation.ALTER, ResourceType.CLUSTER, CLUSTER_NAME)
    assert not a.authorize(*alice, Operation.READ, GROUP, "g")  # no ACL, default false
    assert a.authorize_any(*alice, Operation.WRITE, TOPIC)
    assert not a.authorize_any("User:bob", "h", Operation.WRITE, TOPIC)
    b = Authorizer([acl("x", Operation.WRITE), acl("*", Operation.WRITE, DENY)])
    assert not b.authorize_any(*alice, Operation.WRITE, TOPIC)


def test_validate_and_filters() -> None:
    good = acl("t", Operation.READ)
    assert validate(good) is None
    assert validate(acl("t", Operation.IDEMPOTENT_WRITE)) is not None
    assert validate(acl("t", Operation.READ, principal="alice")) is not None
    assert validate(acl("c", Operation.ALTER, resource_type=ResourceType.CLUSTER)) is not None
    assert validate(acl(CLUSTER_NAME, Operation.ALTER, resource_type=ResourceType.CLUSTER)) is None
    pre = acl("pa", Operation.READ, pattern_type=PRE)
    star = acl("*", Operation.READ)
    other = acl("q", Operation.READ)
    match = AclFilter(resource_type=TOPIC, resource_name="pay", pattern_type=PatternType.MATCH)
    assert [x for x in (pre, star, other, good) if match.matches(x)] == [pre, star]
    assert AclFilter().matches(other)
    assert AclFilter(pattern_type=PRE).matches(pre)
    assert not AclFilter(pattern_type=PRE).matches(star)
    assert AclFilter(resource_type=0).problem() is not None
