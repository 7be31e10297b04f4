"""Make the wire-level test client of ``tests/groups`` importable from the txn tests."""

from __future__ import annotations

import sys
from pathlib import Path

_GROUPS = str(Path(__file__).resolve().parent.parent / "groups")
if _GROUPS not in sys.path:
    sys.path.insert(0, _GROUPS)
