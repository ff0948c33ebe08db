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


def tmpfs_run(mounts: dict, argv: list[str], snapshot: Path | None = None, timeout: float = 300,
              env: dict | None = None):
    """Run ``argv`` in a private mount namespace (``unshare -m``) with a tmpfs of ``size`` bytes at each
    ``path`` of ``mounts`` ({path: size}), never on the machine's real mounts. With ``snapshot``,
    what the first mount holds afterwards is copied there (the tmpfs vanishes with the namespace).
    Skips the test, with the reason, where a private namespace cannot be made (not root, no unshare)."""
    import shlex
    import shutil
    import subprocess

    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1): a private tmpfs, a full disk that no other process sees")
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -m is not permitted here (a container without CAP_SYS_ADMIN)")
    q = shlex.quote
    lines = [f"mkdir -p {q(str(p))} && mount -t tmpfs -o size={int(n)} tmpfs {q(str(p))} || exit 99"
             for p, n in mounts.items()]
    lines.append(" ".join(q(str(a)) for a in argv) + "; rc=$?")
    if snapshot is not None:
        first = next(iter(mounts))
        lines.append(f"mkdir -p {q(str(snapshot))} && cp -a {q(str(first))}/. {q(str(snapshot))}/")
    lines.append("exit $rc")
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", "\n".join(lines)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    assert proc.returncode != 99, f"could not mount a tmpfs: {proc.stderr}"
    return proc
