"""The two quota APIs' request decoders on arbitrary bytes: a value or DecodeError,
nothing else (the dispatcher turns DecodeError into closing that connection)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shazamq.protocol.errors import DecodeError
from shazamq.protocol.messages.alter_client_quotas_request import AlterClientQuotasRequest
from shazamq.protocol.messages.describe_client_quotas_request import (
    DescribeClientQuotasRequest,
)

from .quota_wire import alter_request, describe_request


@pytest.mark.parametrize("cls", [AlterClientQuotasRequest, DescribeClientQuotasRequest])
@pytest.mark.parametrize("version", [0, 1])
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_decode_error(cls, version, data):
    with contextlib.suppress(DecodeError):
        cls.decode(memoryview(data), 0, version)


@pytest.mark.parametrize("version", [0, 1])
@given(
    cut=st.integers(0, 200),
    names=st.lists(st.one_of(st.none(), st.text(max_size=8)), min_size=1, max_size=3),
)
def test_truncated_requests_raise_decode_error(version, cut, names):
    alter = alter_request([({"user": n}, {"producer_byte_rate": 1.0}) for n in names])
    describe = describe_request([("user", 0, n) for n in names])
    for req in (alter, describe):
        whole = req.encode(version)
        decoded, _ = type(req).decode(memoryview(whole), 0, version)
        assert decoded == req
        if cut < len(whole):
            with pytest.raises(DecodeError):
                type(req).decode(memoryview(whole[:cut]), 0, version)
