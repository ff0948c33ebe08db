"""S3 - pipeline 1: train an image-level classifier on whole 4-channel images with the HPA
augmentations ("masked" or "center_cells" variant), one fold at a time.

Reads  HPA512_DIR/train_all.csv (ID, Label, is_ext, fold, ...) and HPA512_DIR/train/{ID}.png (S2).
Writes OUTPUT_DIR/<RUN_NAME>/fold<FOLD>/ (all/ when FOLD=-1):
       best.pth last.pth config.json summary.csv train.log curves.png

    python S3_train_pipeline1.py --FOLD 0 --VARIANT masked
    torchrun --nproc_per_node=4 S3_train_pipeline1.py --FOLD 0     # DDP, BATCH_SIZE per GPU
    python S3_train_pipeline1.py --FOLD 0 --RESUME                 # continue from last.pth
"""
# ---------------------------------------------------------------------------- recipe
RECIPE = ""                                # one of the original's models (--RECIPE list); overrides win
# ---------------------------------------------------------------------------- data
HPA512_DIR = "input/hpa-512"               # S2's output folder
TRAIN_CSV = "train_all.csv"                # table inside HPA512_DIR
IMAGE_SUBDIR = "train"                     # 4-channel PNGs inside HPA512_DIR
FOLD = 0                                   # validation fold; -1 = train on everything, no validation
USE_EXTERNAL = True                        # train on the external (is_ext=1) images too
VAL_EXTERNAL = False                       # validate on external images of the fold too
MAX_IMAGES = 0                             # keep only the first N rows (0 = all), for smoke runs
CACHE_GB = 4.0                             # RAM cache of the resized images, if they fit (GB; 0 = off)
# ---------------------------------------------------------------------------- model
VARIANT = "masked"                         # masked | center_cells | cellpool: augmentations, S5 views
MODEL_NAME = "tf_efficientnet_b0.ns_jft_in1k"  # timm model name (tag optional)
PRETRAINED = True                          # ImageNet weights (PRETRAINED_DIR, else the timm hub / its cache)
PRETRAINED_FILE = ""                       # one local weights file instead of the hub
PRETRAINED_DIR = "input/timm-weights"      # <model>.safetensors folder, tried first (tools/fetch_weights)
STEM_INIT = "timm"                         # 4-channel stem: timm (RGBR x 3/4) | original (common/weights)
DROPOUT = 0.5                              # p of each multi-sample-dropout mask
MSD_SAMPLES = 5                            # dropout masks averaged by the head
IMAGE_SIZE = 512                           # training resolution (images resized when different)
LOSS = "lovasz"                            # bce | focal | lovasz (focal+Lovász+hard log, 0.5 each) | spec
# ---------------------------------------------------------------------------- cell pooling (VARIANT cellpool)
MASK_SUBDIR = "train_cell_mask"            # S2's cell label maps {ID}.npz inside HPA512_DIR
CELLPOOL_CELLS = 16                        # cells pooled from each image's feature map per step
CELLPOOL_STRIDE = 0                        # backbone output_stride (0 = native 32; 8 | 16 dilated)
MIL_POOL = "max"                           # image logit from the cell logits: max | topk | lse | mean
MIL_W_MAX = 4.0                            # MIL loss weight of BCE(pooled logit)
MIL_W_MEAN = 1.0                           # MIL loss weight of BCE(mean cell logit)
MIL_TOPK = 4                               # k of MIL_POOL=topk
MIL_LSE_R = 5.0                            # sharpness r of MIL_POOL=lse
# ---------------------------------------------------------------------------- augmentation
P_FLIP = 0.5                               # each of transpose / h-flip / v-flip
P_AFFINE = 0.75                            # shift 0.2 / scale 0.2 / rotate 45
P_COARSE_DROPOUT = 0.7                     # one 70% hole ("masked" variant only)
P_GREEN_TO_NEGATIVE = 0.05                 # green * U(0, 0.1) and label -> {Negative}
P_GREEN_FROM_OTHER = 0.05                  # green <- red (-> {Microtubules}) or yellow (-> {ER}) * U(0.6, 1)
P_INTENSITY = 0.5                          # per-channel intensity scaling
INTENSITY_RANGE = [0.6, 1.1]               # range of the per-channel factor
# ---------------------------------------------------------------------------- training
EPOCHS = 20                                # training epochs
BATCH_SIZE = 16                            # images per GPU and step
LR = 3e-4                                  # peak learning rate
WEIGHT_DECAY = 1e-2                        # weight decay (weights only, not biases/norms)
OPTIMIZER = "adamw"                        # adamw | adam
ADAM_EPS = 1e-8                            # epsilon of adam / adamw
SCHEDULE = "cosine"                        # cosine (warm-up + cosine) | A | B (the original's)
WARMUP_EPOCHS = 1.0                        # warm-up epochs: linear (cosine), at LR (A)
WARMUP_MULT = 10.0                         # A: after the warm-up the lr is LR x this, then a cosine
MIN_LR = 1e-6                              # end of the cosine
LR_STEP_EPOCHS = [4, 7, 10]                # B: epochs (0-based) where the lr steps ...
LR_STEP_VALUES = [3e-4, 1.5e-4, 7.5e-5, 3e-5]  # ... to the next of these values
ACCUM_STEPS = 1                            # gradient accumulation
EMA_DECAY = 0.0                            # EMA of the weights (0 = off)
AMP = True                                 # mixed precision on CUDA
NUM_WORKERS = 8                            # DataLoader workers per process
SEED = 42                                  # global seed (data order, augmentations, init)
DEVICE = "auto"                            # auto | cpu | cuda
RESUME = False                             # continue from <run>/fold<k>/last.pth
OVERWRITE = False                          # replace a run folder that holds other constants
MONITOR = "val_mAP"                        # metric selecting best.pth
MAX_TRAIN_STEPS = 0                        # batches per epoch cap (0 = all)
VAL_EVERY = 1                              # validate every N epochs and after the last
GRAD_CLIP = 0.0                            # gradient norm clip (0 = off)
# ---------------------------------------------------------------------------- output
OUTPUT_DIR = "output"                      # runs go to OUTPUT_DIR/RUN_NAME/fold<k>
RUN_NAME = ""                              # empty: p1_<model>_<size>_<variant>_<loss>

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import config, constants, io, recipes
from common.data import augment
from common.data.datasets import CellPoolDataset, ImageDataset, split_fold
from common.models import models, weights
from common.training import train

# constants renamed or removed in this release: an old name on the command line stops with one line
_RENAMED = {"DATA_DIR": "HPA512_DIR"}
_REMOVED = {"PIPELINE": "S3 always trains pipeline 1 (it saves PIPELINE=1 in the run's config for S5)"}
_PIPELINE = 1  # saved as the run's PIPELINE: S5 (models.build_model) rebuilds the image model by it


def run_name(cfg: dict) -> str:
    if cfg.RUN_NAME:
        return cfg.RUN_NAME
    model = re.sub(r"[^A-Za-z0-9_-]+", "-", cfg.MODEL_NAME.split(".")[0])
    loss = re.sub(r"[^A-Za-z0-9_-]+", "-", cfg.LOSS)
    return f"p1_{model}_{cfg['IMAGE_SIZE']}_{cfg['VARIANT']}_{loss}"


def main(argv=None):
    cfg = config.parse(globals(), argv, recipes=recipes.for_script("S3"),
                       recipe_table=recipes.table("S3"), renamed=_RENAMED, removed=_REMOVED)
    cfg.PIPELINE = _PIPELINE
    s2 = config.saved_s2(constants.resolve(cfg.HPA512_DIR))  # S5 segments unseen test images at this size
    cfg.S2_IMAGE_SIZE = int(s2[0]["IMAGE_SIZE"]) if s2 else None
    config.require_positive(cfg, "IMAGE_SIZE", "CELLPOOL_CELLS", step="S3")
    config.require_number(cfg, "CACHE_GB", step="S3")
    config.require_number(cfg, "P_FLIP", "P_AFFINE", "P_COARSE_DROPOUT", maximum=1, step="S3")
    train.check_config(cfg, "S3")  # and in fit: here before the images are read
    train.check_model_constants(cfg, "S3")
    cellpool = cfg.VARIANT == "cellpool"  # trains like "masked", cells pooled (common/models/cellpool.py)
    if cfg.VARIANT not in augment.P1_VARIANTS:
        raise SystemExit(f"--VARIANT must be one of {augment.P1_VARIANTS}")
    constants.output_folder(cfg.OUTPUT_DIR, "OUTPUT_DIR")
    try:
        print(f"S3: initial weights: {weights.require(cfg)}")
    except weights.PretrainedUnavailable as e:
        raise SystemExit(f"S3: {e}") from None
    data_dir = constants.resolve(cfg.HPA512_DIR)
    csv = data_dir / cfg.TRAIN_CSV
    if not csv.is_file():
        raise SystemExit(constants.missing_input(csv, "hpa-512", "run S2 first: python S2_data_process.py"))
    df = io.read_id_table(csv, ("ID", "Label"))  # IDs as strings: an image "NA" stays "NA"
    if cfg.MAX_IMAGES > 0:
        df = df.iloc[: cfg.MAX_IMAGES]
    train_df, val_df = split_fold(df, cfg, csv, "S3", val_external=cfg.VAL_EXTERNAL)

    image_dir = data_dir / cfg.IMAGE_SUBDIR
    tfm = augment.build_transforms("masked" if cellpool else cfg.VARIANT, cfg.IMAGE_SIZE, True,
                                   p_flip=cfg.P_FLIP, p_affine=cfg.P_AFFINE,
                                   p_dropout=cfg.P_COARSE_DROPOUT)
    budget, threads = cfg.CACHE_GB, max(1, cfg.NUM_WORKERS)  # RAM cache, per process
    Dataset, cells_kw = ImageDataset, {}
    if cellpool:
        Dataset = CellPoolDataset
        cells_kw = dict(mask_dir=data_dir / cfg.MASK_SUBDIR, cells_per_image=cfg.CELLPOOL_CELLS)
    train_ds = Dataset(train_df, image_dir, **cells_kw, transforms=tfm,
                       label_aug=augment.LabelAugment.from_cfg(cfg), image_size=cfg.IMAGE_SIZE,
                       seed=cfg.SEED, cache_gb=budget, cache_threads=threads)
    if train_ds.cache is not None:
        budget -= train_ds.cache_bytes() / 1e9
    val_ds = None
    if val_df is not None:
        val_ds = Dataset(val_df, image_dir, **cells_kw, image_size=cfg.IMAGE_SIZE, seed=cfg.SEED,
                         cache_gb=budget, cache_threads=threads)
    for name, ds in (("train", train_ds), ("val", val_ds)):
        if ds is not None and cfg.CACHE_GB > 0:
            state = "cached in RAM" if ds.cache is not None else "read from disk (over CACHE_GB)"
            print(f"S3: {name}: {len(ds)} images at {cfg['IMAGE_SIZE']} px "
                  f"({ds.cache_bytes() / 1e9:.2f} GB), {state}")

    out_dir = constants.resolve(cfg.OUTPUT_DIR) / constants.run_folder(run_name(cfg), cfg.FOLD)
    model = models.new_model(cfg)  # seeded: the initial weights depend on SEED only
    result = train.fit(cfg, model, train_ds, val_ds, out_dir, step="S3")
    if result["rank"] == 0:  # under torchrun: one line, from rank 0
        print(f"S3 done: {out_dir}: {train.describe_result(cfg, result)}")
    return result


if __name__ == "__main__":
    main()
