"""Cross-check against an independent codec: kafka-python's message classes.

Covers: for every request and response both implementations know, at every version both
support, a fully populated message encoded by us is decoded by kafka-python and
re-encoded by it to the very same bytes. Skipped when kafka-python (3.x, whose codecs
are built from Kafka's JSON definitions as well) is not installed or its layout changed.
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from hypothesis import HealthCheck, given, settings
from protocol_strategies import message_strategy, sample

from shazamq.protocol.messages import API_KEYS

kafka = pytest.importorskip("kafka")


def _their_classes() -> dict[str, type]:
    try:
        import kafka.protocol as kp
        from kafka.protocol.api_message import ApiMessage
    except ImportError:  # older kafka-python: different protocol package
        return {}
    for info in pkgutil.walk_packages(kp.__path__, "kafka.protocol."):
        try:
            importlib.import_module(info.name)
        except Exception:  # optional modules of kafka-python may not import
            continue
    found: dict[str, type] = {}
    todo = list(ApiMessage.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        json_def = getattr(cls, "_json", None)
        if getattr(cls, "_class_version", None) is None and isinstance(json_def, dict):
            found[json_def["name"]] = cls
    return found


THEIRS = _their_classes()
CASES = [
    (ours, version)
    for info in API_KEYS.values()
    for ours in (info.request, info.response)
    if ours.__name__ in THEIRS
    for version in range(info.min_version, info.max_version + 1)
    if version <= THEIRS[ours.__name__].max_version
]


@pytest.mark.skipif(len(CASES) < 100, reason="kafka-python 3.x message classes not available")
@pytest.mark.parametrize(("ours", "version"), CASES, ids=[f"{c.__name__}-v{v}" for c, v in CASES])
def test_kafka_python_reads_and_rewrites_our_bytes(ours, version):
    obj = sample(ours, version)
    if ours.__name__ == "ApiVersionsResponse":
        obj.error_code = 0  # kafka-python reads error responses as v0, as clients must
    data = obj.encode(version)
    theirs = THEIRS[ours.__name__].decode(data, version=version)
    theirs._header = None
    assert bytes(theirs.encode(version=version)) == data


@pytest.mark.skipif(len(CASES) < 100, reason="kafka-python 3.x message classes not available")
@pytest.mark.parametrize(("ours", "version"), CASES, ids=[f"{c.__name__}-v{v}" for c, v in CASES])
def test_kafka_python_agrees_on_generated_instances(ours, version):
    @settings(
        max_examples=3,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(obj=message_strategy(ours, version))
    def run(obj):
        if ours.__name__ == "ApiVersionsResponse":
            obj.error_code = 0
        data = obj.encode(version)
        theirs = THEIRS[ours.__name__].decode(data, version=version)
        theirs._header = None
        assert bytes(theirs.encode(version=version)) == data

    run()
