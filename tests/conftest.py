"""Shared test fixtures. Tests never touch the internet; tests using ../shared skip without it."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("OMP_NUM_THREADS", "2")
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only reference data beside the checkout; skips the test when it is absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not present (it only exists on developer and CI machines)")
    return SHARED
