"""The original solution's 22 models as named recipes, and the named ensembles of S5.

A recipe is a set of constants of S3 (pipeline 1) or S4.2 (pipeline 2) that reproduces one model of
the 9th-place solution (``ORIGINAL_RECIPES`` facts: models, folds, sizes, losses, schedules, label
augmentations, TTA counts). ``--RECIPE name`` applies them over the script's constants block;
explicit ``--NAME value`` overrides still win, and both are recorded in the run's ``config.json``
(``RECIPE``, ``OVERRIDES``). ``--RECIPE list`` prints the table. A recipe's run folder is
``OUTPUT_DIR/<recipe name>/fold<k>`` (the name ends with the fold).

Names: ``p1_<model>_<masked|center>_f<k>`` and ``p2_<model>_c<cell size>_f<k>``.
"""
from __future__ import annotations

from common.constants import run_folder

# ---- the original's backbones: the current timm names, with the tags of the weights the original's
# timm (0.4.x) loaded under the old names (dpn68b: the MXNet port, not today's default ra_in1k)
BACKBONES = {
    "rexnet150": "rexnet_150.nav_in1k",
    "resnet50d": "resnet50d.ra2_in1k",
    "resnet101d": "resnet101d.ra2_in1k",
    "densenet121": "densenet121.ra_in1k",
    "densenet169": "densenet169.tv_in1k",
    "dpn68b": "dpn68b.mx_in1k",
    "mixnetm": "mixnet_m.ft_in1k",
    "effb0": "tf_efficientnet_b0.ns_jft_in1k",
    "effb1": "tf_efficientnet_b1.ns_jft_in1k",
}

# ---- schedules of the fact sheet (epochs are 1-based there, 0-based in the constants)
SCHEDULE_A = {"OPTIMIZER": "adam", "LR": 1e-4, "SCHEDULE": "A", "WARMUP_EPOCHS": 1.0, "WARMUP_MULT": 10.0,
              "MIN_LR": 0.0, "WEIGHT_DECAY": 0.0}
SCHEDULE_B = {"OPTIMIZER": "adam", "LR": 3e-4, "SCHEDULE": "B", "ADAM_EPS": 1e-5, "WEIGHT_DECAY": 0.0,
              "LR_STEP_EPOCHS": [4, 7, 10], "LR_STEP_VALUES": [3e-4, 1.5e-4, 7.5e-5, 3e-5]}
COMMON = {"EPOCHS": 15, "BATCH_SIZE": 32, "PRETRAINED": True, "STEM_INIT": "original"}
P1_SPATIAL = {"P_FLIP": 0.5, "P_AFFINE": 0.75}  # flips/transpose, shift-scale-rotate (pipeline 2: fixed)
NO_LABEL_AUG = {"P_GREEN_TO_NEGATIVE": 0.0, "P_GREEN_FROM_OTHER": 0.0, "P_INTENSITY": 0.0}

# ---- test-time flip/transpose variants per input type (the original's)
TTA = {"masked": 3, "center_cells": 3, "cells_128": 8, "cells_256": 6}

# ---- the fact sheet's tables: (model key, fold) per configuration
P1_MASKED = [("rexnet150", 0), ("resnet50d", 1), ("densenet121", 2), ("effb0", 3), ("resnet101d", 4),
             ("dpn68b", 0), ("densenet169", 1)]
P1_CENTER_FOLDS = [0, 1, 2, 3, 4]          # configuration 7: densenet121, every fold
P2 = [("effb0", 2, 128), ("resnet50d", 0, 128), ("mixnetm", 0, 128), ("densenet121", 3, 128),
      ("effb0", 0, 256), ("effb1", 3, 256), ("densenet121", 2, 256), ("dpn68b", 4, 256),
      ("mixnetm", 2, 256), ("resnet50d", 1, 256)]


def _center_label_aug(fold: int) -> dict:
    """Configuration 7's label augmentations: Negative on every fold, red/yellow -> green on folds 2
    and 4, intensity on folds 3 and 4 (each 5 % of the samples)."""
    return {"P_GREEN_TO_NEGATIVE": 0.05, "P_GREEN_FROM_OTHER": 0.05 if fold in (2, 4) else 0.0,
            "P_INTENSITY": 0.05 if fold in (3, 4) else 0.0, "INTENSITY_RANGE": [0.6, 1.1]}


def _build() -> dict[str, dict]:
    out: dict[str, dict] = {}
    for key, fold in P1_MASKED:
        name = f"p1_{key}_masked_f{fold}"
        out[name] = {"script": "S3", "input": "masked", "constants": {
            **COMMON, **P1_SPATIAL, **SCHEDULE_A, **NO_LABEL_AUG, "MODEL_NAME": BACKBONES[key],
            "VARIANT": "masked", "IMAGE_SIZE": 512, "LOSS": "focal_sum", "P_COARSE_DROPOUT": 0.7,
            "FOLD": fold}}
    for fold in P1_CENTER_FOLDS:
        name = f"p1_densenet121_center_f{fold}"
        out[name] = {"script": "S3", "input": "center_cells", "constants": {
            **COMMON, **P1_SPATIAL, **SCHEDULE_B, **_center_label_aug(fold),
            "MODEL_NAME": BACKBONES["densenet121"], "VARIANT": "center_cells", "IMAGE_SIZE": 512,
            "LOSS": "lovasz", "P_COARSE_DROPOUT": 0.0, "FOLD": fold}}
    for key, fold, size in P2:
        name = f"p2_{key}_c{size}_f{fold}"
        out[name] = {"script": "S4.2", "input": f"cells_{size}", "constants": {
            **COMMON, **SCHEDULE_A, **NO_LABEL_AUG, "MODEL_NAME": BACKBONES[key], "CELL_SIZE": size,
            "CELLS_PER_IMAGE": 16, "MIL_POOL": "max", "MIL_W_MAX": 4.0, "MIL_W_MEAN": 1.0, "FOLD": fold}}
    for name, r in out.items():
        r["constants"]["RUN_NAME"] = name.rsplit("_f", 1)[0]
        r["tta"] = TTA[r["input"]]
    return out


RECIPES: dict[str, dict] = _build()

# ---- named ensembles of S5: recipe name -> weight of each of its TTA outputs
ENSEMBLES = {
    # the original: every (model, TTA variant) output once in a plain mean, no image factor
    "original": {"recipes": list(RECIPES), "multiply_image_pred": False},
    # this repository's recommendation: the same models, cell x image prediction (it down-ranks
    # classes the image does not have; +0.05 strict over the plain cell mean on the demo, README "Results")
    "recommended": {"recipes": list(RECIPES), "multiply_image_pred": True},
}


def run_dir(name: str) -> str:
    """A recipe's run folder below OUTPUT_DIR (``constants.run_folder``: ``<RUN_NAME>/fold<k>``)."""
    c = RECIPES[name]["constants"]
    return run_folder(c["RUN_NAME"], c["FOLD"])


def for_script(script: str) -> dict[str, dict]:
    """``name -> constants`` of the recipes of one script ("S3" or "S4.2")."""
    return {n: r["constants"] for n, r in RECIPES.items() if r["script"] == script}


def table(script: str | None = None) -> str:
    """The recipe table as text (``--RECIPE list``)."""
    rows = [("recipe", "script", "model", "input", "fold", "loss", "sched", "label aug (neg/other/int)",
             "tta")]
    for n, r in RECIPES.items():
        if script and r["script"] != script:
            continue
        c = r["constants"]
        aug = f"{c['P_GREEN_TO_NEGATIVE']:g}/{c['P_GREEN_FROM_OTHER']:g}/{c['P_INTENSITY']:g}"
        # pipeline 1 names its LOSS; pipeline 2's loss is the MIL weighting its recipes set
        loss = c["LOSS"] if r["script"] == "S3" else f"mil {c['MIL_W_MAX']:g}:{c['MIL_W_MEAN']:g}"
        rows.append((n, r["script"], c["MODEL_NAME"], r["input"], str(c["FOLD"]), loss, c["SCHEDULE"], aug,
                     str(r["tta"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows)


def ensemble_outputs(name: str) -> dict[str, int]:
    """``recipe -> number of TTA outputs`` of a named ensemble (the original's plain mean counts
    every output once: 104 in all)."""
    if name not in ENSEMBLES:
        raise SystemExit(f"unknown ENSEMBLE {name!r}; known: {', '.join(ENSEMBLES)}")
    return {r: RECIPES[r]["tta"] for r in ENSEMBLES[name]["recipes"]}
