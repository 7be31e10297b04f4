"""Principals of TLS client certificates (mTLS), as Kafka's ``ssl.principal.mapping.rules``.

When the listener verifies client certificates (``[security.tls] ca_file``), a connection's
principal is ``User:<name>``, where the name comes from the certificate's subject written
as an RFC 2253 distinguished name (most specific first: ``CN=alice,OU=eng,O=Example,C=US``)
and put through the rules, first match wins:

- ``DEFAULT``: the distinguished name as it is;
- ``RULE:pattern/replacement/`` with an optional ``L`` or ``U`` after the last slash
  (lower or upper case): when the regular expression matches the whole name, the
  replacement with ``$1``, ``$2``... standing for its groups (``\\/`` for a slash in either
  part, ``\\$`` for a dollar).

A certificate no rule matches gets no principal: its connection is closed, as Kafka fails
its authentication. With SASL on the same listener, a successful SASL login's principal
replaces the certificate's (Kafka's SASL_SSL).

Attribute names are the RFC 2253 keywords (CN, L, ST, O, OU, C, STREET, DC, UID, as Java's
X500Principal writes them); other attributes appear under OpenSSL's long name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

_KEYWORDS = {
    "commonName": "CN",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}
_RULE = re.compile(r"RULE:((?:\\.|[^\\/])*)/((?:\\.|[^\\/])*)/([LU]?)")


def _escape(value: str) -> str:
    out = re.sub(r'([,+"\\<>;])', r"\\\1", value)
    if out.startswith(("#", " ")):
        out = "\\" + out
    if out.endswith(" ") and not out.endswith("\\ "):
        out = out[:-1] + "\\ "
    return out


def distinguished_name(subject: Sequence[Sequence[tuple[str, str]]]) -> str:
    """RFC 2253 form of a subject as `ssl.SSLSocket.getpeercert()` gives it."""
    rdns = []
    for rdn in reversed(subject):
        rdns.append("+".join(f"{_KEYWORDS.get(k, k)}={_escape(v)}" for k, v in rdn))
    return ",".join(rdns)


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern[str] | None  # None: DEFAULT
    replacement: str = ""
    case: str = ""

    def apply(self, name: str) -> str | None:
        if self.pattern is None:
            return name
        m = self.pattern.fullmatch(name)
        if m is None:
            return None
        out: list[str] = []
        r = self.replacement
        groups = m.re.groups
        i = 0
        while i < len(r):
            c = r[i]
            if c == "\\" and i + 1 < len(r):
                out.append(r[i + 1])
                i += 2
            elif c == "$" and i + 1 < len(r) and r[i + 1].isdigit():
                # as Java's Matcher: the longest group number that exists
                n, j = int(r[i + 1]), i + 2
                while j < len(r) and r[j].isdigit() and int(r[i + 1 : j + 1]) <= groups:
                    n, j = int(r[i + 1 : j + 1]), j + 1
                out.append(m.group(n) or "")
                i = j
            else:
                out.append(c)
                i += 1
        result = "".join(out)
        if self.case == "L":
            result = result.lower()
        elif self.case == "U":
            result = result.upper()
        return result


def parse_rules(rules: Sequence[str]) -> list[_Rule]:
    """The rules of ``principal_mapping_rules``; ValueError naming a bad one."""
    parsed: list[_Rule] = []
    for text in rules:
        rule = text.strip()
        if rule == "DEFAULT":
            parsed.append(_Rule(None))
            continue
        m = _RULE.fullmatch(rule)
        if m is None:
            raise ValueError(f"rule {text!r} is neither DEFAULT nor RULE:pattern/replacement/[LU]")
        pattern, replacement, case = m.groups()
        try:
            compiled = re.compile(pattern.replace("\\/", "/"))
        except re.error as exc:
            raise ValueError(f"rule {text!r}: bad pattern: {exc}") from None
        for ref in re.finditer(r"(?<!\\)\$(\d)", replacement):
            if int(ref.group(1)) > compiled.groups:
                raise ValueError(f"rule {text!r}: ${ref.group(1)} names a group the pattern lacks")
        parsed.append(_Rule(compiled, replacement.replace("\\/", "/"), case))
    if not parsed:
        raise ValueError("no rule given (use DEFAULT for the distinguished name as it is)")
    return parsed


def certificate_principals(rules: Sequence[str]) -> Callable[[dict[str, Any]], str | None]:
    """A function from a peer certificate (`getpeercert()`) to ``User:<name>`` or None."""
    parsed = parse_rules(rules)

    def principal(cert: dict[str, Any]) -> str | None:
        name = distinguished_name(cert.get("subject", ()))
        for rule in parsed:
            mapped = rule.apply(name)
            if mapped:
                return f"User:{mapped}"
        return None

    return principal
