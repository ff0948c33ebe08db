"""The constants-block override mechanism shared by every numbered script.

A script declares UPPER_CASE constants at the top (nanoGPT style) and calls

    cfg = config.parse(globals(), argv)

which returns a :class:`Config` holding every constant, with ``--NAME value`` (or
``--name value``) from the command line applied. The value is converted to the type of the
default: int, float, str, bool (true/false/1/0/yes/no; a bare ``--FLAG`` means true), None
(accepts any string, "none" stays None), list/tuple (JSON ``[1,2]`` or comma-separated
``1,2``, items typed like the default's first item). Unknown names are rejected with the list
of valid ones; a renamed or removed constant (``renamed=``, ``removed=``: a script's ``_RENAMED``,
``_REMOVED``) stops with one line naming the new name or why it went. ``config.save(cfg, path)``
writes the resolved values as JSON.
"""
from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from common.constants import paths_line
from common.io import atomic_write_text
from common.provenance import environment


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
          quiet: bool = False, recipes: dict[str, dict] | None = None,
          recipe_table: str = "", renamed: dict[str, str] | None = None,
          removed: dict[str, str] | None = None) -> Config:
    """Apply ``--NAME value`` overrides to the constants of ``namespace`` and return them.

    ``recipes`` (``name -> constants``): when the script has a ``RECIPE`` constant and it names
    one (``--RECIPE name``), that recipe's constants are applied first and the explicit overrides
    after them, so an override always wins; ``cfg["OVERRIDES"]`` records the explicit ones. A block
    that holds :data:`RESOLVED_RECIPE` equal to its ``RECIPE`` (a generated notebook's constants cell)
    has the recipe's values written in already: they run as the block shows them.
    ``--RECIPE list`` prints ``recipe_table`` and exits.
    ``renamed`` (``old name -> new name``) and ``removed`` (``old name -> why``): the constants a
    script renamed or dropped in this release; an override of an old name stops with one line
    instead of "unknown constant".
    ``update=True`` also writes the new values back into ``namespace`` (the script's globals),
    so module-level code sees them. Unless ``quiet``, prints first how relative paths resolve
    (``constants.paths_line``: the repository root, or Kaggle mode), then the resolved values.
    """
    # The pristine defaults are remembered on the first call, so a second main() in the same
    # process (tests, notebooks) starts from the constants block, not from the last overrides.
    defaults = namespace.setdefault("_CONFIG_DEFAULTS", constants_of(namespace))
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = _read_overrides(defaults, argv, _retired(defaults, renamed or {}, removed or {}))
    cfg, said = Config(defaults), ""
    if "RECIPE" in defaults:
        name = overrides.get("RECIPE", defaults["RECIPE"])
        if name and "RECIPE" not in overrides and namespace.get(RESOLVED_RECIPE) == name:
            said = f"recipe {name}: resolved into the constants block when it was made; its values as shown"
            _recipe(name, recipes or {}, defaults, recipe_table)  # still a known recipe
        else:
            cfg.update(_recipe(name, recipes or {}, defaults, recipe_table))
            said = f"recipe {name}: its constants, then the overrides {sorted(overrides)}" if name else ""
        cfg.update(overrides)
        cfg["OVERRIDES"] = dict(overrides)
    else:
        cfg.update(overrides)
    if update:
        namespace.update(cfg)
    if not quiet:
        print(paths_line(), flush=True)  # how relative paths resolve (KAGGLE, common/constants.py)
        if said:
            print(said, flush=True)
        print("config: " + ", ".join(f"{k}={v!r}" for k, v in cfg.items()), flush=True)
    return cfg


# A constants block whose recipe was resolved into it (a notebook of tools/make_notebook.py) holds this name
# equal to its RECIPE: the recipe is recorded, not applied again over the values as edited.
RESOLVED_RECIPE = "_RECIPE_RESOLVED"


def _recipe(name: str, recipes: dict[str, dict], defaults: dict, table: str) -> dict:
    """The constants of recipe ``name`` (``{}`` for ""), checked against the script's constants."""
    if not name:
        return {}
    if name == "list":
        print(table or "\n".join(recipes))
        raise SystemExit(0)
    if name not in recipes:
        raise SystemExit(f"unknown --RECIPE {name!r}; known: {', '.join(recipes) or 'none'} "
                         "(--RECIPE list prints the table)")
    out = {"RECIPE": name}
    for key, value in recipes[name].items():
        if key not in defaults:
            raise SystemExit(f"recipe {name!r} sets {key}, which this script does not have")
        default = defaults[key]
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(default, (list, tuple)):
            value = type(default)(value)
        if type(value) is not type(default) and default is not None:
            raise SystemExit(f"recipe {name!r}: {key}={value!r} is not a {type(default).__name__}")
        out[key] = value
    return out


def _retired(defaults: dict, renamed: dict[str, str], removed: dict[str, str]) -> dict[str, str]:
    """``old name -> the one line an override of it stops with`` (the maps checked against the
    script's constants: a programming error is a ValueError)."""
    out = {}
    for old, new in renamed.items():
        if old in defaults or new not in defaults:
            raise ValueError(f"renamed {old} -> {new}: the old name must be gone and the new one a constant")
        out[old] = f"--{old} was renamed --{new} (default {defaults[new]!r}); use the new name"
    for old, why in removed.items():
        if old in defaults:
            raise ValueError(f"removed {old}: it is still a constant")
        out[old] = f"--{old} was removed: {why}"
    return out


def _read_overrides(defaults: dict, argv: list[str], retired: dict[str, str] | None = None) -> dict:
    """``--NAME value`` pairs of ``argv``, each typed like its default (``retired``: old names and
    the line each stops with)."""
    cfg: dict = {}
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok in ("-h", "--help"):
            print("constants (override with --NAME value):")
            for k, v in defaults.items():
                print(f"  --{k} {v!r}  ({type(v).__name__})")
            for line in (retired or {}).values():
                print(f"  ({line})")
            raise SystemExit(0)
        if not tok.startswith("--"):
            raise SystemExit(f"unexpected argument {tok!r}: overrides are --NAME value")
        key = tok[2:]
        value = None
        if "=" in key:
            key, value = key.split("=", 1)
        name = key.upper().replace("-", "_")
        if retired and name in retired:
            raise SystemExit(retired[name])
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
    return cfg


def _stop(step: str, name: str, value: Any, what: str) -> SystemExit:
    return SystemExit(f"{step + ': ' if step else ''}--{name} {value!r}: must be {what}")


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def require_positive(cfg: dict, *names: str, minimum: int = 1, maximum: int | None = None,
                     step: str = "") -> None:
    """Stop (SystemExit naming the constant) unless each constant of ``names`` is an int >= ``minimum``
    (and <= ``maximum`` when given)."""
    for name in names:
        v = cfg[name]
        if not is_int(v) or v < minimum or (maximum is not None and v > maximum):
            what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise _stop(step, name, v, f"an integer {minimum}..{maximum}" if maximum is not None else what)


def require_number(cfg: dict, *names: str, minimum: float = 0.0, above: bool = False,
                   maximum: float | None = None, step: str = "") -> None:
    """Stop (SystemExit naming the constant) unless each constant of ``names`` is a finite number
    >= ``minimum`` (> ``minimum`` with ``above``; <= ``maximum`` when given): learning rates, weight
    decay, probabilities."""
    for name in names:
        v = cfg[name]
        low_ok = is_number(v) and (v > minimum if above else v >= minimum)
        if not (low_ok and (maximum is None or v <= maximum)):
            top = f" and <= {maximum:g}" if maximum is not None else ""
            raise _stop(step, name, v, f"a finite number {'>' if above else '>='} {minimum:g}{top}")


def require_items(cfg: dict, name: str, what: str, ok, *, length: int | None = None, distinct: bool = False,
                  step: str = "") -> list:
    """Stop (one line naming the constant) unless ``cfg[name]`` is a list (``length`` items when
    given) whose every item passes ``ok`` (``what`` says what they must be), all different with
    ``distinct``; returns it as a list."""
    v = cfg[name]
    items = list(v) if isinstance(v, (list, tuple)) else None
    n = f"{length} " if length is not None else ""
    if items is None or (length is not None and len(items) != length) or not all(ok(x) for x in items):
        raise _stop(step, name, v, f"a list of {n}{what}")
    if distinct and len({repr(x) for x in items}) != len(items):
        raise _stop(step, name, v, f"{n}different {what}")
    return items


def require_choice(cfg: dict, name: str, choices, step: str = "") -> None:
    """Stop (one line naming the constant and the choices) unless ``cfg[name]`` is one of ``choices``."""
    if cfg[name] not in choices:
        raise _stop(step, name, cfg[name], "one of " + ", ".join(repr(c) for c in choices))


def to_jsonable(cfg: dict) -> dict:
    """The constants as plain JSON values (what ``config.json`` and a checkpoint's ``config`` hold, so
    a checkpoint loads with ``weights_only=True``): tuples as lists, anything JSON cannot write as
    its ``str``."""
    out = {}
    for k, v in cfg.items():
        v = list(v) if isinstance(v, tuple) else v
        try:
            json.dumps(v)
        except TypeError:
            v = str(v)
        out[k] = v
    return out


def save(cfg: dict, path: str | Path, record_environment: bool = True) -> Path:
    """Write the resolved constants as JSON (atomically), with ``environment``
    (:func:`common.provenance.environment`)."""
    path = Path(path)
    data = to_jsonable(cfg)
    if record_environment:
        # DEVICE is a constant of the steps that compute with torch only (S2, S3, S4.2, S5); the
        # others record the device torch would pick ("auto")
        data["environment"] = environment(cfg["DEVICE"] if "DEVICE" in cfg else "auto")
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return path


# S2's saved constants under HPA512_DIR, one file per shard (S2 writes meta/s2_config_shard{i}of{n}.json)
S2_SAVED = "meta/s2_config_shard*of*.json"


def saved_s2(hpa512_dir: str | Path) -> tuple[dict, Path] | None:
    """S2's saved constants under ``hpa512_dir`` and their file (the first readable shard's), or None."""
    for path in sorted(Path(hpa512_dir).glob(S2_SAVED)):
        try:
            return json.loads(path.read_text()), path
        except (OSError, json.JSONDecodeError):
            continue
    return None


def load(path: str | Path) -> Config:
    return Config(json.loads(Path(path).read_text()))
