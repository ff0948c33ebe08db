# ruff: noqa: E402  (constants block first, as in the numbered scripts)
"""Soft per-cell pseudo-labels of the training images from out-of-fold scores (a self-training round).

Reads   HPA512_DIR/train_all.csv (ID, Label, fold), HPA512_DIR/train/{ID}.png, train_cell_mask/{ID}.npz
        (S2), the original DATA_DIR/train/ for pipeline-2 runs trained on original-resolution crops,
        and the RUNS (S3 / S4.2 run folders; each keeps its saved constants, among them its FOLD)
Writes  OUT_CSV: ID, cell_id, fold, n_runs, t0..t18 (common/pseudo.py), then train on it with
        python S4.2_train_pipeline2.py --PSEUDO_LABELS input/hpa-512/pseudo_labels.csv

An image of fold k is scored only by runs trained with FOLD=k (which never saw it); images of folds
without such a run get no pseudo-labels. Train one run per fold for pseudo-labels on every image:

    for f in 0 1 2 3 4; do python S3_train_pipeline1.py --FOLD $f; done
    python tools/make_pseudo_labels.py --RUNS output/p1_x/fold0,output/p1_x/fold1,...
"""
# ---------------------------------------------------------------------------- input
HPA512_DIR = "input/hpa-512"                             # S2's images, masks and train_all.csv
DATA_DIR = "input/hpa-single-cell-image-classification"  # original train/ (for FROM_ORIGINAL pipeline-2 runs)
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

from common import config, constants, io, predict, pseudo


def main(argv=None) -> Path:
    cfg = config.parse(globals(), argv)
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
                                 variant=cfg.P1_VARIANT)
        predictors.append(p)
        print(f"make_pseudo_labels: {p} labels fold {pseudo.run_fold(p)}", flush=True)
    folds = sorted({pseudo.run_fold(p) for p in predictors if pseudo.run_fold(p) >= 0})
    if not folds:
        raise SystemExit("make_pseudo_labels: every run was trained on all folds (FOLD=-1): none can "
                         "label training images it did not see")
    out = pseudo.make_pseudo_labels(df, predictors, hpa / "train", hpa / "train_cell_mask",
                                    constants.resolve(cfg.DATA_DIR) / "train", cfg.NORMALIZE, progress=True)
    path = constants.resolve(cfg.OUT_CSV)
    io.atomic_to_csv(out, path)
    print(f"make_pseudo_labels: {out['ID'].nunique()} images ({len(out)} cells) of folds {folds} -> {path}",
          flush=True)
    return path


if __name__ == "__main__":
    main()
