"""S4.2: pipeline 2 - bags of CELLS_PER_IMAGE cell crops trained with the image label (MIL).

Reads   input/hpa-512/train_all.csv (ID, Label, is_ext, fold), S4.1's CELLS_DIR/cells_{CELL_SIZE}/ crops and
        cells_{CELL_SIZE}.csv index (and cells_{CELL_SIZE}.json, S4.1's settings); for the
        cell-level validation (demo data only) COMPETITION_DIR's train_cells.csv,
        train_cell_truth/{ID}.png and train/ originals
Writes  output/<RUN_NAME>/fold<FOLD>/  best.pth last.pth config.json summary.csv train.log curves.png
        (and at the best epoch oof.csv, and oof_cells.csv with the cell-level validation)

Model: common.models.models.build_model with PIPELINE=2 -> common.models.mil.BagModel (cell classifier on
every cell, "logits" = MIL_POOL over the bag, loss (MIL_W_MAX*BCE(pool) + MIL_W_MEAN*BCE(mean)) / sum).
Validation: image-level mAP of the pooled logits on the fold's bags (val_mAP), and, when the
per-cell truth exists, cell_mAP_strict / cell_mAP_lenient of every TRUE cell of the fold's
images (common.training.cell_validation: cropped exactly like S4.1 crops, scored with metric.score_cells).

    python S4.2_train_pipeline2.py --FOLD 0
    python S4.2_train_pipeline2.py --CELL_SIZE 128 --MODEL_NAME resnet18 --EPOCHS 2 --DEVICE cpu
    torchrun --nproc_per_node 4 S4.2_train_pipeline2.py --FOLD 0       # DDP
"""
# ---------------------------------------------------------------------------- data
RECIPE = ""                  # one of the original's models (--RECIPE list); explicit overrides win
HPA512_DIR = "input/hpa-512"                            # S2's output folder (train images and masks)
CELLS_DIR = ""                                          # S4.1's CELLS_DIR: crops, index ("" = HPA512_DIR)
TRAIN_CSV = "input/hpa-512/train_all.csv"               # image table with folds
COMPETITION_DIR = "input/hpa-single-cell-image-classification"  # per-cell truth for the cell-level validation
FOLD = 0                     # validation fold (the others train); -1: train on all, no validation
CELL_SIZE = 256              # crop side: reads cells_{CELL_SIZE}/ (saved in the config for S5)
CELLS_PER_IMAGE = 16         # cells per bag (with replacement when an image has fewer)
USE_EXTERNAL = True          # train on the external images too (validation is always competition only)
MAX_IMAGES = 0               # use only this many training images (0 = all); for smoke runs
# ---------------------------------------------------------------------------- augmentation
P_GREEN_TO_NEGATIVE = 0.05   # per bag: green dimmed, label -> Negative
P_GREEN_FROM_OTHER = 0.05    # per bag: green <- red (Microtubules) or yellow (ER)
P_INTENSITY = 0.0            # per bag: per-channel intensity scaling (pipeline 1 uses 0.5)
INTENSITY_RANGE = [0.6, 1.1] # range of the per-channel factor
# ---------------------------------------------------------------------------- model
MODEL_NAME = "tf_efficientnet_b0.ns_jft_in1k"  # timm backbone of the cell classifier
PRETRAINED = True            # ImageNet weights (PRETRAINED_DIR, else the timm hub / its cache)
PRETRAINED_FILE = ""         # one local weights file instead of the hub
PRETRAINED_DIR = "input/timm-weights"  # <model>.safetensors folder, tried first (tools/fetch_weights)
STEM_INIT = "timm"           # 4-channel stem: timm (RGBR x 3/4) | original (common/weights)
DROPOUT = 0.5                # multi-sample-dropout p
MSD_SAMPLES = 5              # multi-sample-dropout masks
MIL_POOL = "max"             # image logit from the cells: max | topk | lse | mean
MIL_W_MAX = 4.0              # weight of BCE(pooled logit)
MIL_W_MEAN = 1.0             # weight of BCE(mean cell logit)
MIL_TOPK = 4                 # k of MIL_POOL=topk
MIL_LSE_R = 5.0              # r of MIL_POOL=lse
MIL_CHUNK = 256              # cells per forward at inference (memory bound)
# ---------------------------------------------------------------------------- self-training
PSEUDO_LABELS = ""           # CSV of soft per-cell targets (tools/make_pseudo_labels.py); "" = off
PSEUDO_W = 1.0               # weight of the per-cell BCE on them, added to the MIL loss
# ------------------------------------------------------------------------ training (common.training.train)
EPOCHS = 20                  # epochs
BATCH_SIZE = 8               # bags per step and process (x CELLS_PER_IMAGE cells)
LR = 3e-4                    # peak learning rate
WEIGHT_DECAY = 1e-2          # weight decay
OPTIMIZER = "adamw"          # adamw | adam
ADAM_EPS = 1e-8              # epsilon of adam / adamw
SCHEDULE = "cosine"          # cosine (warm-up + cosine) | A | B (the original's)
WARMUP_EPOCHS = 1.0          # warm-up epochs: linear (cosine), at LR (A)
WARMUP_MULT = 10.0           # A: after the warm-up the lr is LR x this, then a cosine
MIN_LR = 1e-6                # end of the cosine
LR_STEP_EPOCHS = [4, 7, 10]  # B: epochs (0-based) where the lr steps ...
LR_STEP_VALUES = [3e-4, 1.5e-4, 7.5e-5, 3e-5]  # ... to the next of these values
ACCUM_STEPS = 1              # gradient accumulation
EMA_DECAY = 0.0              # weight EMA (0 = off)
AMP = True                   # mixed precision on CUDA
NUM_WORKERS = 4              # DataLoader workers per process
SEED = 42                    # seed
DEVICE = "auto"              # auto | cpu | cuda
RESUME = False               # continue from last.pth
OVERWRITE = False            # replace a run folder that holds other constants
MONITOR = "val_mAP"          # best.pth metric (val_mAP | val_loss | cell_mAP_strict | cell_mAP_lenient)
MAX_TRAIN_STEPS = 0          # batches per epoch cap (0 = all)
VAL_EVERY = 1                # validate every N epochs and after the last
GRAD_CLIP = 0.0              # gradient norm clip (0 = off)
# ---------------------------------------------------------------------------- cell-level validation
CELL_VAL = True              # score the true cells of the fold when train_cells.csv exists
CELL_VAL_MAX_IMAGES = 200    # at most this many validation images for it (0 = all)
# ---------------------------------------------------------------------------- output
OUTPUT_DIR = "output"        # runs folder
RUN_NAME = ""                # "" -> p2_{model}_{CELL_SIZE}_{MIL_POOL}

import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import config, constants, io, recipes
from common.data import augment
from common.data.bag_datasets import BagDataset, PseudoBagDataset, read_pseudo_labels
from common.data.datasets import external_flags, split_fold
from common.models import models, weights
from common.training import train
from common.training.cell_validation import CellValidation

log = logging.getLogger("hpa.s42")
# constants renamed or removed in this release: an old name on the command line stops with one line
_RENAMED = {"COMP_DIR": "COMPETITION_DIR"}
_REMOVED = {"PIPELINE": "S4.2 always trains pipeline 2 (it saves PIPELINE=2 in the run's config for S5)",
            "LOSS": "S4.2's loss is the MIL loss (MIL_POOL, MIL_W_MAX, MIL_W_MEAN)"}
_PIPELINE = 2  # saved as the run's PIPELINE: S5 (models.build_model) rebuilds the bag model by it


def run_name(cfg: dict) -> str:
    if cfg.RUN_NAME:
        return cfg.RUN_NAME
    model = str(cfg.MODEL_NAME).split(".")[0]
    return f"p2_{model}_{cfg['CELL_SIZE']}_{cfg['MIL_POOL']}"


def _read_crop_settings(cfg: dict, hpa: Path) -> None:
    """CROP_MARGIN / FROM_ORIGINAL come from S4.1's cells_{S}.json (the crops trained on; one source);
    they are saved in this run's config for S5."""
    path = hpa / f"cells_{cfg['CELL_SIZE']}.json"
    s41 = json.loads(path.read_text()) if path.is_file() else {}
    missing = [k for k in ("CROP_MARGIN", "FROM_ORIGINAL") if k not in s41]
    if missing:
        raise SystemExit(f"{path}: no {missing} (run S4.1 --CELL_SIZE {cfg['CELL_SIZE']} again)")
    cfg.CROP_MARGIN, cfg.FROM_ORIGINAL = float(s41["CROP_MARGIN"]), bool(s41["FROM_ORIGINAL"])
    where = "the original images" if cfg.FROM_ORIGINAL else "S2's resized copies (no originals at S4.1)"
    print(f"S4.2: the crops of {path.name}: from {where} (FROM_ORIGINAL {cfg['FROM_ORIGINAL']}), CROP_MARGIN "
          f"{cfg['CROP_MARGIN']:g}; S5 crops test cells the same way", flush=True)


# ----------------------------------------------------------------------------- main
def main(argv=None):
    cfg = config.parse(globals(), argv, recipes=recipes.for_script("S4.2"),
                       recipe_table=recipes.table("S4.2"), renamed=_RENAMED, removed=_REMOVED)
    cfg.PIPELINE = _PIPELINE
    s2 = config.saved_s2(constants.resolve(cfg.HPA512_DIR))  # S5 segments an unseen test image at this size
    cfg.S2_IMAGE_SIZE = int(s2[0]["IMAGE_SIZE"]) if s2 else None
    config.require_positive(cfg, "CELL_SIZE", "CELLS_PER_IMAGE", "MIL_CHUNK", step="S4.2")
    config.require_number(cfg, "PSEUDO_W", step="S4.2")
    train.check_config(cfg, "S4.2")  # and in fit: here before the crops are read
    train.check_model_constants(cfg, "S4.2")
    constants.output_folder(cfg.OUTPUT_DIR, "OUTPUT_DIR")
    try:
        print(f"S4.2: initial weights: {weights.require(cfg)}", flush=True)
    except weights.PretrainedUnavailable as e:
        raise SystemExit(f"S4.2: {e}") from None
    hpa = constants.resolve(cfg.HPA512_DIR)
    comp = constants.resolve(cfg.COMPETITION_DIR)
    train_csv = constants.resolve(cfg.TRAIN_CSV)
    cells_root = constants.resolve(cfg.CELLS_DIR) if cfg.CELLS_DIR else hpa
    cells_dir = cells_root / f"cells_{cfg.CELL_SIZE}"
    index_csv = cells_root / f"cells_{cfg.CELL_SIZE}.csv"
    for p, dataset, what in (
            (train_csv, "hpa-512", "run S2 first: python S2_data_process.py"),
            (index_csv, "hpa-cells", f"run S4.1: python S4.1_crop_cells.py --CELL_SIZE {cfg.CELL_SIZE}")):
        if not p.is_file():
            raise SystemExit(constants.missing_input(p, dataset, what))
    _read_crop_settings(cfg, cells_root)
    df = io.read_id_table(train_csv, ("ID", "Label", "fold"))  # IDs as strings: "NA" stays "NA"
    df["is_ext"] = external_flags(df).astype(int)
    tr, va = split_fold(df, cfg, train_csv, "S4.2", val_external=False)  # validation: competition only
    index_df = io.read_id_table(index_csv, ("ID",), unique=False)  # several crops per image
    out_dir = constants.resolve(cfg.OUTPUT_DIR) / constants.run_folder(run_name(cfg), cfg.FOLD)

    if cfg.MAX_IMAGES:  # S4.2 caps the training rows (S3 the table before its split)
        tr = tr.iloc[:cfg.MAX_IMAGES]
    kw = dict(cells_per_image=cfg.CELLS_PER_IMAGE, cell_size=cfg.CELL_SIZE, seed=cfg.SEED)
    Bags = BagDataset
    if cfg.PSEUDO_LABELS:  # self-training: each cell also gets its out-of-fold soft target
        from functools import partial

        pseudo = read_pseudo_labels(constants.resolve(cfg.PSEUDO_LABELS))
        Bags = partial(PseudoBagDataset, pseudo=pseudo)
        print(f"S4.2: {len(pseudo)} cells with pseudo-labels from {cfg.PSEUDO_LABELS}", flush=True)
    train_ds = Bags(tr, cells_dir, index_df, augment=True, label_aug=augment.LabelAugment.from_cfg(cfg), **kw)
    val_ds = BagDataset(va, cells_dir, index_df, augment=False, **kw) if va is not None and len(va) else None
    print(f"S4.2: {len(train_ds)} training bags ({train_ds.n_without_cells} images without cells left out), "
          f"{len(val_ds) if val_ds else 0} validation bags"
          f"{f' ({val_ds.n_without_cells} without cells)' if val_ds else ''}; "
          f"{cfg.CELLS_PER_IMAGE} cells of {cfg.CELL_SIZE} px per bag -> {out_dir}", flush=True)

    extra = None
    if cfg.CELL_VAL and val_ds is not None and (comp / "train_cells.csv").is_file():
        sources = dict(zip(va["ID"], np.where(va["is_ext"] > 0, "external", "competition")))
        extra = CellValidation(cfg, val_ds.ids, hpa, comp, sources)
        print(f"S4.2: cell-level validation on {extra.n_cells} true cells of {len(extra.bags)} images",
              flush=True)

    model = models.new_model(cfg)  # seeded: the initial weights depend on SEED only
    result = train.fit(cfg, model, train_ds, val_ds, out_dir, extra_metrics=extra, step="S4.2")
    if result["rank"] == 0:  # under torchrun: one line, from rank 0
        print(f"S4.2 done: {train.describe_result(cfg, result)}; "
              f"last metrics {result['metrics']}; outputs in {out_dir}", flush=True)
    return result


if __name__ == "__main__":
    main()
