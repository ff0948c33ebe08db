"""The fetcher behind ``tools/fetch_weights.py``: timm's pretrained checkpoints saved as
``<arch.tag>.safetensors`` in a folder (a PRETRAINED_DIR, see :mod:`common.models.weights`) and listed in its
:data:`MANIFEST` (model, file, source, sha256, bytes), for a machine without internet; which models
the original's recipes need (:func:`recipe_models`).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file

from common import io, recipes
from common.models.weights import first_line, full_name, hub_location, hub_state_dict

MANIFEST = "manifest.json"


# ----------------------------------------------------------------------------- the original's models
def recipe_model_lists() -> dict[str, list[str]]:
    """``name -> timm model names`` that ``--RECIPES`` of tools/fetch_weights.py accepts: every named
    recipe of :mod:`common.recipes`, plus ``original_pipeline1`` / ``original_pipeline2`` (their
    backbones; the current timm names with the tags of the weights the original loaded)."""
    out = {n: [r["constants"]["MODEL_NAME"]] for n, r in recipes.RECIPES.items()}
    for script, key in (("S3", "original_pipeline1"), ("S4.2", "original_pipeline2")):
        out[key] = list(dict.fromkeys(c["MODEL_NAME"] for c in recipes.for_script(script).values()))
    return out


def recipe_models(recipes: str = "", models: str = "") -> list[str]:
    """``"all"`` | ``"a,b"`` recipe names and/or ``"m1,m2"`` timm names -> unique model names."""
    out: list[str] = []
    lists = recipe_model_lists()
    for r in [s.strip() for s in str(recipes or "").split(",") if s.strip()]:
        if r == "all":
            out += [m for ms in lists.values() for m in ms]
        elif r in lists:
            out += lists[r]
        else:
            raise ValueError(f"unknown recipe {r!r}; known: all, {', '.join(lists)}")
    out += [s.strip() for s in str(models or "").split(",") if s.strip()]
    return list(dict.fromkeys(out))


# ----------------------------------------------------------------------------- fetching
def sha256(path: str | Path) -> str:
    """The file's sha256 (hex), read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(out_dir: str | Path) -> dict[str, dict]:
    """``model -> row`` of ``out_dir``'s :data:`MANIFEST` ({} when there is none)."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return {}
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); delete it to start over") from None
    return {r["model"]: r for r in rows}


def _write_manifest(out_dir: Path, rows: dict[str, dict]) -> None:
    text = json.dumps(sorted(rows.values(), key=lambda r: r["model"]), indent=1) + "\n"
    io.atomic_write_text(out_dir / MANIFEST, text)


def _plain_state_dict(sd) -> dict[str, torch.Tensor]:
    """Unwrap {'state_dict' | 'model': ...} checkpoints and strip DataParallel prefixes, the way
    timm's file loader does, so the saved file loads to the same tensors."""
    from timm.models._helpers import clean_state_dict  # timm's private API: read when asked

    if isinstance(sd, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(sd.get(key), dict):
                sd = sd[key]
                break
    sd = clean_state_dict(sd)
    return {k: v.detach().cpu().contiguous().clone() for k, v in sd.items() if isinstance(v, torch.Tensor)}


def fetch(model_names: Iterable[str], out_dir: str | Path,
          download: Callable[[str], dict] = hub_state_dict,
          location: Callable[[str], str] = hub_location, log: Callable[[str], None] = print) -> list[dict]:
    """Save each model's pretrained checkpoint as ``out_dir/<arch.tag>.safetensors`` and list it in
    ``out_dir/manifest.json`` (model, file, source, sha256, bytes). A file already listed with
    the same sha256 is skipped; a missing or changed one is fetched again. Writes are atomic (a
    temporary name, then a rename), the manifest after every model. ``download`` (the hub by
    default) is injectable so tests never touch the network. Returns the manifest rows."""
    model_names = list(model_names)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    rows = read_manifest(out)
    failed = []
    for requested in model_names:
        name = full_name(requested)
        path = out / f"{name}.safetensors"
        row = rows.get(name)
        if row and path.is_file() and sha256(path) == row["sha256"]:
            log(f"{name}: present ({row['bytes'] / 1e6:.1f} MB, sha256 ok), skipped")
            continue
        try:
            sd = _plain_state_dict(download(name))
        except Exception as e:  # noqa: BLE001 - report and go on with the others
            log(f"{name}: FAILED ({first_line(e)})")
            failed.append(name)
            continue
        with io.atomic_path(path) as tmp:
            save_file(sd, str(tmp), metadata={"model": name})
        rows[name] = {"model": name, "file": path.name, "source": location(name), "sha256": sha256(path),
                      "bytes": path.stat().st_size, "tensors": len(sd),
                      "elements": int(sum(v.numel() for v in sd.values()))}
        _write_manifest(out, rows)
        log(f"{name}: saved {path} ({rows[name]['bytes'] / 1e6:.1f} MB)")
    if failed:
        raise RuntimeError(f"could not fetch {len(failed)} model(s): {', '.join(failed)} "
                           f"(the others are in {out})")
    return [rows[full_name(m)] for m in model_names]
