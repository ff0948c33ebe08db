"""Shared test fixtures. Tests never touch the internet; tests using ../shared skip without it."""
from __future__ import annotations

import importlib.util
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


def load_script(file: str, name: str | None = None):
    """Import a numbered script (``S4.1_crop_cells.py`` is no valid module name) as a fresh module.

    A fresh module per call: ``config.parse`` writes a run's overrides into the module's globals.
    """
    path = ROOT / file
    name = name or path.stem.replace(".", "_").lower()
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod



def nothing_in(folder: Path) -> bool:
    """True when ``folder`` does not exist or holds no file (a step's start check may create it)."""
    return not folder.exists() or not any(p.is_file() for p in folder.rglob("*"))
