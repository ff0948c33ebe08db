# ruff: noqa: E402  (constants block first, as in the numbered scripts)
"""Fill a PRETRAINED_DIR with timm's pretrained weights, on a machine with internet, to carry to one
without (a Kaggle dataset can hold the folder; S3 / S4.2 then take ``--PRETRAINED_DIR <folder>``).

usage: python tools/fetch_weights.py [--RECIPES names] [--MODELS m1,m2] [--DATASET_ID owner/slug] [OUT_DIR]

Writes  OUT_DIR/<model>.<tag>.safetensors  (the checkpoint timm's hub / URL serves, unchanged tensors)
        OUT_DIR/manifest.json              (model, file, source, sha256, bytes per file; no local path)
        OUT_DIR/dataset-metadata.json      (with --DATASET_ID: for `kaggle datasets create -p OUT_DIR`)

A file already in the manifest with the same sha256 is skipped; a missing or changed one is fetched
again. Writes go to a temporary name and are renamed.

example (the original's 9 backbones, about 534 MB, as the Kaggle dataset <you>/timm-weights; a
notebook then finds them at /kaggle/input/timm-weights, the notebooks' PRETRAINED_DIR):

    python tools/fetch_weights.py --RECIPES all --DATASET_ID <you>/timm-weights input/timm-weights
    kaggle datasets create -p input/timm-weights
    python tools/fetch_weights.py --MODELS resnet18,mixnet_m /tmp/w      # any timm names (tag optional)
"""
# ---------------------------------------------------------------------------- what to fetch
RECIPES = ""                       # all | recipe names | original_pipeline1 | original_pipeline2
MODELS = ""                        # comma-separated timm names (tag optional: timm's default tag)
# ---------------------------------------------------------------------------- output
OUT_DIR = "input/timm-weights"     # the folder (also the last positional argument)
DATASET_ID = ""                    # owner/slug: also write dataset-metadata.json (a Kaggle dataset)

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import config, constants, io
from common.models import weights, weights_fetch


def _split_positional(argv: list[str]) -> tuple[list[str], list[str]]:
    """``--NAME value`` pairs and the positional rest (OUT_DIR)."""
    flags, rest, i = [], [], 0
    while i < len(argv):
        tok = argv[i]
        if tok.startswith("--") and "=" not in tok and tok not in ("--help",) and i + 1 < len(argv):
            flags += argv[i:i + 2]
            i += 2
            continue
        (flags if tok.startswith("-") else rest).append(tok)
        i += 1
    return flags, rest


def main(argv=None, download=weights.hub_state_dict, location=weights.hub_location) -> list[dict]:
    flags, rest = _split_positional(list(sys.argv[1:] if argv is None else argv))
    if len(rest) > 1:
        raise SystemExit(f"one output folder expected, got {rest}")
    if "-h" in flags or "--help" in flags:
        print(__doc__.strip() + "\n")  # usage and example; config.parse then lists the constants
    cfg = config.parse(globals(), flags + (["--OUT_DIR", rest[0]] if rest else []))
    try:
        names = weights_fetch.recipe_models(cfg.RECIPES, cfg.MODELS)
        meta = io.dataset_metadata(cfg.DATASET_ID) if cfg.DATASET_ID else None
    except ValueError as e:
        raise SystemExit(f"fetch_weights: {e}") from None
    if not names:
        raise SystemExit("nothing to fetch: give --RECIPES all (the original's backbones) or --MODELS m1,m2")
    out = constants.resolve(cfg.OUT_DIR)
    print(f"fetch_weights: {len(names)} model(s) -> {out}")
    try:
        rows = weights_fetch.fetch(names, out, download=download, location=location)
    except (RuntimeError, ValueError) as e:
        raise SystemExit(f"fetch_weights: {e}") from None
    if meta:
        io.write_dataset_metadata(out, meta)
    total = sum(r["bytes"] for r in rows)
    print(f"fetch_weights: {len(rows)} file(s), {total / 1e6:.1f} MB in {out} "
          f"(manifest {weights_fetch.MANIFEST}"
          f"{', ' + io.KAGGLE_METADATA + ' for ' + cfg.DATASET_ID if meta else ''})")
    return rows


if __name__ == "__main__":
    main()
