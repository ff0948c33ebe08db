# ruff: noqa: E402  (constants block first, as in the numbered scripts)
"""Soft per-cell pseudo-labels of the training images from out-of-fold scores (a self-training round).

Reads   HPA512_DIR/train_all.csv (ID, Label, fold), HPA512_DIR/train/{ID}.png, train_cell_mask/{ID}.npz
        (S2), the original COMPETITION_DIR/train/ for pipeline-2 runs trained on original-resolution
        crops, and the RUNS (S3 / S4.2 run folders; each keeps its saved constants, among them its FOLD)
Writes  OUT_CSV: ID, cell_id, fold, n_runs, t0..t18 (read by common.data.bag_datasets.read_pseudo_labels),
        then train on it with
        python S4.2_train_pipeline2.py --PSEUDO_LABELS input/hpa-512/pseudo_labels.csv

An image of fold k is scored only by runs trained with FOLD=k (which never saw it); images of folds
without such a run get no pseudo-labels. Train one run per fold for pseudo-labels on every image:

    for f in 0 1 2 3 4; do python S3_train_pipeline1.py --FOLD $f; done
    python tools/make_pseudo_labels.py --RUNS output/p1_x/fold0,output/p1_x/fold1,...

:func:`make_pseudo_labels` scores every cell of the training images with the trained runs, but an
image is scored ONLY by runs whose validation fold is the image's fold (``config FOLD == fold``):
S3 and S4.2 train a ``FOLD=k`` run on the rows with ``fold != k``, so no run labels an image it
trained on; ``FOLD=-1`` runs (trained on everything) label nothing. The ensemble mean ``p`` of the
eligible runs becomes the soft target ``t = p * y`` (``y`` the image's multi-hot label: a cell
cannot have a class its image lacks); with ``NORMALIZE="max"`` each present class is divided by its
largest cell score in the image (the image label says at least one cell has it). Images with no
eligible run get no rows.
"""
# ---------------------------------------------------------------------------- input
HPA512_DIR = "input/hpa-512"                                    # S2's images, masks and train_all.csv
COMPETITION_DIR = "input/hpa-single-cell-image-classification"  # original train/ (FROM_ORIGINAL p2 runs)
RUNS = []                        # run folders or checkpoints; [] = every run under OUTPUT_DIR
OUTPUT_DIR = "output"            # where runs are found when RUNS is empty
CHECKPOINT = "best.pth"          # checkpoint of a run folder
# ---------------------------------------------------------------------------- targets
NORMALIZE = "max"                # none: target = score x image label | max: / the image's top cell per class
TTA = 2                          # flip/transpose variants per run
P1_VARIANT = ""                  # pipeline-1 scoring ("" = as trained | masked | center_cells | cellpool)
# ---------------------------------------------------------------------------- run
DEVICE = "auto"                  # auto | cpu | cuda
BATCH_SIZE = 8                   # views per forward pass
OUT_CSV = "input/hpa-512/pseudo_labels.csv"  # output table

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd
from tqdm import tqdm

from common import cells, config, constants, fov, images, io
from common.data import bag_datasets
from common.data.datasets import labels_to_multihot
from common.predict import predict, views

# (no upper-case names below the constants block: config.parse would read them as constants)
# constants renamed in this release: an old name on the command line stops with the new one
_RENAMED = {"DATA_DIR": "COMPETITION_DIR"}


def run_fold(predictor) -> int:
    """The validation fold of a run (its saved ``FOLD``; -1 = trained on all folds)."""
    return int(predictor.cfg.get("FOLD", -1))


def eligible(predictors: list, image_fold: int) -> list[int]:
    """Indices of the runs allowed to label an image of ``image_fold``: those that held it out."""
    return [i for i, p in enumerate(predictors) if run_fold(p) >= 0 and run_fold(p) == int(image_fold)]


def soft_targets(probs: np.ndarray, label: np.ndarray, normalize: str = "max") -> np.ndarray:
    """Cell probabilities ``(n, 19)`` x the image's multi-hot ``label`` -> targets ``(n, 19)`` in [0, 1]."""
    if normalize not in ("none", "max"):
        raise ValueError(f"normalize {normalize!r}: expected one of ('none', 'max')")
    t = probs.astype(np.float32) * label[None].astype(np.float32)
    if normalize == "max" and len(t):
        t = t / np.maximum(t.max(axis=0, keepdims=True), 1e-6)
    return np.clip(t, 0.0, 1.0)


def make_pseudo_labels(train_df: pd.DataFrame, predictors: list, image_dir: str | Path,
                       mask_dir: str | Path, original_dir: str | Path | None = None,
                       normalize: str = "max", progress: bool = False) -> pd.DataFrame:
    """Soft targets of every cell of ``train_df``'s images (ID, Label, fold) from out-of-fold runs."""
    rows = []
    for r in tqdm(list(train_df.itertuples(index=False)), disable=not progress, desc="pseudo-labels"):
        iid, fold = str(r.ID), int(r.fold)
        use = eligible(predictors, fold)
        if not use:
            continue
        image = images.read_rgby(Path(image_dir) / f"{iid}.png")
        labels = images.load_masks(Path(mask_dir) / f"{iid}.npz")[0]
        ids = cells.cell_ids(labels)
        if not ids:
            continue
        original = None
        if original_dir and any(predictors[i].pipeline == 2 and predictors[i].from_original for i in use) \
                and images.channel_path(original_dir, iid, "red").is_file():
            original = images.read_image(original_dir, iid)
        f = fov.FieldOfView.of(image, labels, ids, original)
        probs = np.mean([predictors[i].predict(f)[0] for i in use], axis=0)
        t = soft_targets(probs, labels_to_multihot(r.Label), normalize)
        for c, tc in zip(ids, t):
            rows.append([iid, int(c), fold, len(use), *np.round(tc, 6)])
    return pd.DataFrame(rows, columns=["ID", "cell_id", "fold", "n_runs", *bag_datasets.TARGET_COLS])


def main(argv=None) -> Path:
    cfg = config.parse(globals(), argv, renamed=_RENAMED)
    hpa = constants.resolve(cfg.HPA512_DIR)
    table = hpa / "train_all.csv"
    if not table.is_file():
        raise SystemExit(f"{table}: not found (run S2 first)")
    df = io.read_id_table(table, ("ID", "Label", "fold"))
    runs = [constants.resolve(r) for r in cfg.RUNS] if cfg.RUNS else \
        predict.find_runs(constants.resolve(cfg.OUTPUT_DIR), cfg.CHECKPOINT)
    if not runs:
        raise SystemExit("make_pseudo_labels: no run given and none found (train S3 / S4.2 runs first)")
    predictors = []
    for r in runs:  # (the variant applies to pipeline-1 runs only)
        p = predict.RunPredictor(r, cfg.DEVICE, cfg.TTA, cfg.BATCH_SIZE, checkpoint=cfg.CHECKPOINT,
                                 view=views.ViewChoice(cfg.P1_VARIANT))
        predictors.append(p)
        print(f"make_pseudo_labels: {p} labels fold {run_fold(p)}", flush=True)
    folds = sorted({run_fold(p) for p in predictors if run_fold(p) >= 0})
    if not folds:
        raise SystemExit("make_pseudo_labels: every run was trained on all folds (FOLD=-1): none can "
                         "label training images it did not see")
    out = make_pseudo_labels(df, predictors, hpa / "train", hpa / "train_cell_mask",
                             constants.resolve(cfg.COMPETITION_DIR) / "train", cfg.NORMALIZE, progress=True)
    path = constants.resolve(cfg.OUT_CSV)
    io.atomic_to_csv(out, path)
    print(f"make_pseudo_labels: {out['ID'].nunique()} images ({len(out)} cells) of folds {folds} -> {path}",
          flush=True)
    return path


if __name__ == "__main__":
    main()
