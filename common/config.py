"""The constants-block override mechanism shared by every numbered script.

A script declares UPPER_CASE constants at the top (nanoGPT style) and calls

    cfg = config.parse(globals(), argv)

which returns a :class:`Config` holding every constant, with ``--NAME value`` (or
``--name value``) from the command line applied. The value is converted to the type of the
default: int, float, str, bool (true/false/1/0/yes/no; a bare ``--FLAG`` means true), None
(accepts any string, "none" stays None), list/tuple (JSON ``[1,2]`` or comma-separated
``1,2``, items typed like the default's first item). Unknown names are rejected with the list
of valid ones. ``config.save(cfg, path)`` writes the resolved values as JSON.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class Config(dict):
    """A dict of resolved constants that also allows ``cfg.NAME``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no constant {name!r}; known: {', '.join(sorted(self))}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


def constants_of(namespace: dict) -> dict:
    """The UPPER_CASE, JSON-friendly constants of a module namespace (``globals()``)."""
    ok = (bool, int, float, str, list, tuple, type(None))
    return {k: v for k, v in namespace.items()
            if k.isupper() and not k.startswith("_") and isinstance(v, ok)}


_TRUE = {"1", "true", "yes", "y", "on"}
_FALSE = {"0", "false", "no", "n", "off"}


def _auto(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _convert(name: str, text: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError("expected true/false")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, (list, tuple)):
            text = text.strip()
            if text.startswith("["):
                items = json.loads(text)
            else:
                items = [t.strip() for t in text.split(",") if t.strip()]
            if default:
                items = [_convert(name, i, default[0]) if isinstance(i, str) else i for i in items]
            else:  # empty default: numbers where they look like numbers
                items = [_auto(i) if isinstance(i, str) else i for i in items]
            return type(default)(items)
        if default is None:
            return None if text.lower() in ("none", "null") else text
        return text
    except (ValueError, json.JSONDecodeError) as e:
        kind = type(default).__name__
        raise SystemExit(f"--{name}: cannot read {text!r} as {kind} ({e})") from None


def parse(namespace: dict, argv: Iterable[str] | None = None, *, update: bool = True,
          quiet: bool = False) -> Config:
    """Apply ``--NAME value`` overrides to the constants of ``namespace`` and return them.

    ``update=True`` also writes the new values back into ``namespace`` (the script's globals),
    so module-level code sees them. Prints the resolved values unless ``quiet``.
    """
    # The pristine defaults are remembered on the first call, so a second main() in the same
    # process (tests, notebooks) starts from the constants block, not from the last overrides.
    defaults = namespace.setdefault("_CONFIG_DEFAULTS", constants_of(namespace))
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = Config(defaults)
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok in ("-h", "--help"):
            print("constants (override with --NAME value):")
            for k, v in defaults.items():
                print(f"  --{k} {v!r}  ({type(v).__name__})")
            raise SystemExit(0)
        if not tok.startswith("--"):
            raise SystemExit(f"unexpected argument {tok!r}: overrides are --NAME value")
        key = tok[2:]
        value = None
        if "=" in key:
            key, value = key.split("=", 1)
        name = key.upper().replace("-", "_")
        if name not in defaults:
            raise SystemExit(f"unknown constant --{key}; valid: {', '.join('--' + k for k in defaults)}")
        default = defaults[name]
        if value is None:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if isinstance(default, bool) and (nxt is None or nxt.startswith("--")):
                value = "true"
            elif nxt is None:
                raise SystemExit(f"--{key} needs a value")
            else:
                value = nxt
                i += 1
        cfg[name] = _convert(name, value, default)
        i += 1
    if update:
        namespace.update(cfg)
    if not quiet:
        print("config: " + ", ".join(f"{k}={v!r}" for k, v in cfg.items()), flush=True)
    return cfg


def to_jsonable(cfg: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


def save(cfg: dict, path: str | Path) -> Path:
    """Write the resolved constants as JSON (atomically)."""
    from common.io import atomic_write_text

    path = Path(path)
    atomic_write_text(path, json.dumps(to_jsonable(cfg), indent=2, sort_keys=True) + "\n")
    return path


def load(path: str | Path) -> Config:
    return Config(json.loads(Path(path).read_text()))


def resolve_device(device="auto"):
    """A DEVICE constant ("auto" | "cpu" | "cuda" | "cuda:1" | torch.device) -> ``torch.device``."""
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
