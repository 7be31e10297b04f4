"""Fixtures of the operator tests (helpers live in `operator_support`)."""

from __future__ import annotations

from typing import Any

import pytest
from operator_support import README_CLUSTERS


@pytest.fixture(params=sorted(README_CLUSTERS))
def readme_cluster(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Each cluster of the README, as the API server returns it."""
    return README_CLUSTERS[request.param]()
