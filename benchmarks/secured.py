"""The load benchmark behind SASL, with or without ACLs (``benchmarks.load --sasl/--acls``).

The broker gets two SASL users: ``admin`` (a super user, only used to install the ACLs)
and ``bench``, whom every client of the benchmark logs in as. With ACLs on, ``bench`` is
allowed what the benchmark does through PREFIXED ACLs on ``bench-`` / ``check-`` names,
and the ACL set around it is shaped like a shared cluster's: many services with literal
and prefixed topic and group ACLs, wildcard-principal and host-bound entries, and DENYs,
some of them on the very prefixes the benchmark's topics fall under (so every uncached
decision for them has several candidate ACLs to weigh).

The "off" side of a comparison keeps SASL and only turns authorization off, so the
difference is the ACLs alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

ADMIN = "admin"
USER = "bench"
PASSWORD = "bench-secret"  # a local loopback broker, started and stopped by the benchmark


@dataclass(frozen=True)
class Security:
    """How the benchmark's broker and clients are secured."""

    mechanism: str | None = None  # SASL mechanism the clients log in with; None: plaintext
    acls: int = 0  # ACLs installed with authorization on; 0: authorization off

    @property
    def label(self) -> str:
        if self.mechanism is None:
            return "plaintext"
        return f"{self.mechanism}, " + (f"{self.acls} ACLs" if self.acls else "ACLs off")

    def broker_env(self) -> dict[str, str]:
        if self.mechanism is None:
            return {}
        env = {
            "SHAZAMQ_SECURITY__SASL__ENABLED": "true",
            "SHAZAMQ_SECURITY__SASL__MECHANISMS": json.dumps([self.mechanism]),
            "SHAZAMQ_SECURITY__SASL__USERS": json.dumps({ADMIN: PASSWORD, USER: PASSWORD}),
        }
        if self.acls:
            env["SHAZAMQ_SECURITY__AUTHORIZATION__ENABLED"] = "true"
            env["SHAZAMQ_SECURITY__AUTHORIZATION__SUPER_USERS"] = json.dumps([f"User:{ADMIN}"])
        return env

    def client(self, user: str = USER) -> dict[str, Any]:
        """librdkafka settings logging a client in (empty in plaintext)."""
        if self.mechanism is None:
            return {}
        return {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": self.mechanism,
            "sasl.username": user,
            "sasl.password": PASSWORD,
        }


# (resource type, name, pattern, principal, host, operation, permission): confluent-kafka's
# enum member names, so the set can be built and inspected without the client.
AclSpec = tuple[str, str, str, str, str, str, str]


def acl_set(n: int) -> list[AclSpec]:
    """``n`` (at least 8) ACLs: what ``bench`` needs, and a shared cluster's worth besides."""
    own: list[AclSpec] = [
        ("TOPIC", "bench-", "PREFIXED", f"User:{USER}", "*", op, "ALLOW")
        for op in ("CREATE", "WRITE", "READ", "DESCRIBE")
    ]
    own += [
        ("GROUP", "bench-", "PREFIXED", f"User:{USER}", "*", "READ", "ALLOW"),
        ("GROUP", "check-", "PREFIXED", f"User:{USER}", "*", "READ", "ALLOW"),
        # denials the benchmark's topics fall under, for someone else: weighed, not hit
        ("TOPIC", "bench", "PREFIXED", "User:intruder", "*", "ALL", "DENY"),
        ("TOPIC", "bench-", "PREFIXED", "User:*", "10.9.9.9", "WRITE", "DENY"),
    ]
    out = own[:n]
    ops = ("READ", "WRITE", "DESCRIBE", "DESCRIBE_CONFIGS", "ALTER_CONFIGS", "DELETE")
    i = 0
    while len(out) < n:
        team = f"team{i % 25}"
        svc = f"User:svc-{i}"
        kind = i % 10
        if kind < 4:  # a service reading or writing one topic
            out.append(("TOPIC", f"{team}.events-{i}", "LITERAL", svc, "*", ops[i % 3], "ALLOW"))
        elif kind < 6:  # a team's services on the team's prefix
            out.append(("TOPIC", f"{team}.", "PREFIXED", svc, "*", ops[i % 6], "ALLOW"))
        elif kind == 6:  # its consumer group
            out.append(("GROUP", f"{team}-consumers-{i}", "LITERAL", svc, "*", "READ", "ALLOW"))
        elif kind == 7:  # host-bound, as for a legacy client
            host = f"10.0.{i % 250}.7"
            out.append(("TOPIC", f"legacy-{i}", "LITERAL", svc, host, "ALL", "ALLOW"))
        elif kind == 8:  # a reader on the benchmark's own prefix: a candidate, not a match
            out.append(("TOPIC", f"bench-{i % 7}", "PREFIXED", svc, "*", "READ", "ALLOW"))
        else:  # denials and wildcard principals
            out.append(("TOPIC", f"{team}.secret-{i}", "PREFIXED", "User:*", "*", "READ", "DENY"))
        i += 1
    return out


def install_acls(bootstrap: str, security: Security) -> int:
    """Create ``security.acls`` ACLs as the super user; returns how many the broker holds."""
    from confluent_kafka.admin import (
        AclBinding,
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
    )

    admin = AdminClient({"bootstrap.servers": bootstrap, **security.client(ADMIN)})
    bindings = [
        AclBinding(
            ResourceType[rtype],
            name,
            ResourcePatternType[pattern],
            principal,
            host,
            AclOperation[op],
            AclPermissionType[perm],
        )
        for rtype, name, pattern, principal, host, op, perm in acl_set(security.acls)
    ]
    for chunk in range(0, len(bindings), 100):
        for future in admin.create_acls(bindings[chunk : chunk + 100]).values():
            future.result(30)
    everything = AclBindingFilter(
        ResourceType.ANY,
        None,
        ResourcePatternType.ANY,
        None,
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    return len(admin.describe_acls(everything).result(30))
