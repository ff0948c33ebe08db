# ruff: noqa: E402  (constants block first, as in the numbered scripts)
"""Write requirements-lock.txt: the exact installed version of every package requirements.txt pulls in.

Reads   REQUIREMENTS (ranges) and the packages installed in this Python environment
Writes  LOCK: one ``name==version`` per line, the transitive closure of REQUIREMENTS (environment
        markers evaluated for this machine), sorted by name; used as a constraints file:

    pip install -r requirements.txt -c requirements-lock.txt

Run it in the environment whose results the README reports, after ``pip install -r requirements.txt``.
A requirement that is not installed is an error (the lock would be incomplete). Run:
    python tools/make_lock.py
"""
# ---------------------------------------------------------------------------- files
REQUIREMENTS = "requirements.txt"   # the ranges (top-level packages)
LOCK = "requirements-lock.txt"      # the exact versions written here

import sys
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from common import config, constants, io


def _requirements(path: Path) -> list[Requirement]:
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.append(Requirement(line))
    return out


def closure(top: list[Requirement]) -> dict[str, tuple[str, str]]:
    """canonical name -> (distribution name, installed version) of ``top`` and all they require."""
    seen: dict[str, tuple[str, str]] = {}
    todo = [(r, ()) for r in top]
    while todo:
        req, extras = todo.pop()
        env = [{"extra": e} for e in extras] or [{"extra": ""}]
        if req.marker is not None and not any(req.marker.evaluate(e) for e in env):
            continue
        key = canonicalize_name(req.name)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{req.name} is required but not installed: "
                             f"pip install -r {REQUIREMENTS}") from None
        new_extras = tuple(sorted(set(req.extras)))
        if key in seen and not new_extras:
            continue
        seen[key] = (dist.metadata["Name"], dist.version)
        for text in dist.requires or []:
            sub = Requirement(text)
            todo.append((sub, new_extras))
    return seen


def main(argv=None) -> Path:
    cfg = config.parse(globals(), argv)
    req_path, lock_path = constants.resolve(cfg.REQUIREMENTS), constants.resolve(cfg.LOCK)
    pins = closure(_requirements(req_path))
    lines = [f"# Exact versions of everything {req_path.name} pulls in (tools/make_lock.py); a constraints",
             f"# file: pip install -r {req_path.name} -c {lock_path.name}",
             f"# Python {sys.version.split()[0]} on {sys.platform}"]
    lines += [f"{name}=={version}" for _, (name, version) in sorted(pins.items())]
    io.atomic_write_text(lock_path, "\n".join(lines) + "\n")
    print(f"wrote {lock_path}: {len(pins)} packages")
    return lock_path


if __name__ == "__main__":
    main()
