"""Hypothesis strategies and sample values for every generated class, built from FIELDS.

The generator emits a ``FIELDS`` table per class (name, Kafka type, versions, nullable
versions, tag, struct class). These helpers walk it, so the tests cover every message
without a hand-written strategy per message.
"""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import strategies as st

from shazamq.protocol.messages import API_KEYS, DATA_TYPES, HEADERS
from shazamq.protocol.primitives import ZERO_UUID, Message

INT_RANGES = {
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint16": (0, 2**16 - 1),
    "uint32": (0, 2**32 - 1),
}


def all_classes() -> list[type[Message]]:
    """Every top-level generated class: requests, responses, headers, data types."""
    classes: list[type[Message]] = []
    for info in API_KEYS.values():
        classes += [info.request, info.response]
    classes += list(HEADERS.values()) + list(DATA_TYPES.values())
    return classes


def class_versions() -> list[tuple[type[Message], int]]:
    return [
        (cls, v)
        for cls in all_classes()
        for v in range(cls.VALID_VERSIONS[0], cls.VALID_VERSIONS[1] + 1)
    ]


def _scalar(kind: str) -> st.SearchStrategy[Any]:
    if kind in INT_RANGES:
        lo, hi = INT_RANGES[kind]
        return st.integers(lo, hi)
    if kind == "bool":
        return st.booleans()
    if kind == "float64":
        return st.floats(allow_nan=False)
    if kind == "string":
        return st.text(max_size=6)
    if kind == "bytes":
        return st.binary(max_size=6)
    if kind == "records":
        return st.binary(max_size=12)
    if kind == "uuid":
        return st.one_of(st.just(ZERO_UUID), st.uuids())
    raise AssertionError(f"unknown type {kind}")


_CACHE: dict[tuple[type[Message], int, int], st.SearchStrategy[Any]] = {}


def message_strategy(cls: type[Message], version: int, depth: int = 0) -> st.SearchStrategy[Any]:
    """Instances valid for ``version``: fields absent from it keep their defaults."""
    key = (cls, version, depth)
    if key in _CACHE:
        return _CACHE[key]
    kwargs: dict[str, st.SearchStrategy[Any]] = {}
    for f in cls.FIELDS:
        if not f.present_in(version):
            continue
        if f.type.startswith("[]"):
            if f.struct is not None:
                elem = message_strategy(f.struct, version, depth + 1)
            else:
                elem = _scalar(f.type[2:])
            s: st.SearchStrategy[Any] = st.lists(elem, max_size=max(1, 3 - depth))
        elif f.struct is not None:
            s = message_strategy(f.struct, version, depth + 1)
        else:
            s = _scalar(f.type)
        if f.nullable_in(version):
            s = st.none() | s
        kwargs[f.name] = s
    strategy = st.builds(cls, **kwargs)
    _CACHE[key] = strategy
    return strategy


_SAMPLE_UUID = uuid.UUID("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")


def _sample_scalar(kind: str, n: int) -> Any:
    if kind in INT_RANGES:
        return n + 1 if kind.startswith("uint") else -(n + 2)
    if kind == "bool":
        return True
    if kind == "float64":
        return 1.5 + n
    if kind == "string":
        return f"s{n}é"
    if kind in ("bytes", "records"):
        return bytes(range(n, n + 5))
    if kind == "uuid":
        return _SAMPLE_UUID
    raise AssertionError(kind)


def sample(cls: type[Message], version: int, n: int = 0) -> Any:
    """A deterministic instance with every field present in ``version`` set to a
    non-default value and every array holding two elements."""
    kwargs: dict[str, Any] = {}
    for i, f in enumerate(cls.FIELDS):
        if not f.present_in(version):
            continue
        if f.type.startswith("[]"):
            if f.struct is not None:
                value: Any = [sample(f.struct, version, n + 1), sample(f.struct, version, n + 2)]
            else:
                value = [_sample_scalar(f.type[2:], n + i), _sample_scalar(f.type[2:], n + i + 1)]
        elif f.struct is not None:
            value = sample(f.struct, version, n + 1)
        else:
            value = _sample_scalar(f.type, n + i)
        kwargs[f.name] = value
    return cls(**kwargs)
