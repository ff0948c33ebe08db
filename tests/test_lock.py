"""requirements-lock.txt: exact versions of everything requirements.txt pulls in (issue 15)."""
from __future__ import annotations

import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _lines(name):
    return [s for s in (ln.split("#", 1)[0].strip() for ln in (ROOT / name).read_text().splitlines()) if s]


def test_lock_pins_every_requirement_exactly_within_its_range():
    lock = {}
    for line in _lines("requirements-lock.txt"):
        req = Requirement(line)
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==", f"not an exact pin: {line}"
        lock[canonicalize_name(req.name)] = spec[0].version
    assert lock["torch"] == "2.14.1" and lock["torchvision"] == "0.29.1"
    for line in _lines("requirements.txt"):
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in lock, f"{req.name} of requirements.txt is not in the lock"
        assert req.specifier.contains(lock[name], prereleases=True), f"{name}=={lock[name]} is outside {req}"


def test_ci_and_readme_install_with_the_lock():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"pip install (-q )?-r requirements\.txt -c requirements-lock\.txt", ci)
    assert "pip install -r requirements.txt -c requirements-lock.txt" in readme
    assert "pip install -r requirements.txt &&" not in readme   # no install without the lock
