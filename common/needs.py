"""Which constants each part of ``common/`` needs: the one list per part (:data:`NEEDS`), checked
by :func:`need`. The values live in the scripts' constants blocks only; ``common/`` keeps no
defaults. This module imports nothing, so ``models.build_model`` (which reads a config once and
hands the model classes typed arguments) checks it without reaching any file reader.
"""
from __future__ import annotations

CLASSIFIER = ("MODEL_NAME", "PRETRAINED", "PRETRAINED_FILE", "DROPOUT", "MSD_SAMPLES")
MIL_HEAD = ("MIL_POOL", "MIL_W_MAX", "MIL_W_MEAN", "MIL_TOPK", "MIL_LSE_R")
NEEDS: dict[str, tuple[str, ...]] = {
    # train.fit (S3 and S4.2 define them all)
    "training": ("EPOCHS", "BATCH_SIZE", "LR", "WEIGHT_DECAY", "OPTIMIZER", "ADAM_EPS", "SCHEDULE",
                 "WARMUP_EPOCHS", "WARMUP_MULT", "MIN_LR", "LR_STEP_EPOCHS", "LR_STEP_VALUES",
                 "ACCUM_STEPS", "EMA_DECAY", "AMP", "NUM_WORKERS", "SEED", "DEVICE", "RESUME", "OVERWRITE",
                 "MONITOR", "MAX_TRAIN_STEPS", "VAL_EVERY", "GRAD_CLIP", "MODEL_NAME"),
    # models.build_classifier (the backbone and its head), models.build_model (any pipeline)
    "classifier": CLASSIFIER,
    "model": ("PIPELINE", *CLASSIFIER),
    "pretrained weights": ("PRETRAINED_DIR",),     # read when PRETRAINED (where to look)
    "weight loading": ("STEM_INIT",),              # read when PRETRAINED or a PRETRAINED_FILE
    "image model": ("LOSS", "VARIANT"),            # pipeline 1 (S3)
    "MIL head": MIL_HEAD,                          # models.mil_head (-> mil.MILHead)
    "bag model": (*MIL_HEAD, "MIL_CHUNK"),         # pipeline 2, mil.BagModel (S4.2)
    "cell pooling": (*MIL_HEAD, "CELLPOOL_STRIDE"),  # cellpool.CellPoolModel (S3 VARIANT="cellpool")
    "new model": ("SEED",),                        # models.new_model
}


class MissingConstants(KeyError):
    """Constants a part needs are not in the config: ``part`` and the missing ``names``."""

    def __init__(self, part: str, names: list[str]):
        super().__init__(f"{part} needs {', '.join(names)}: define them in the script's constants")
        self.part, self.names = part, tuple(names)


def need(cfg, part: str) -> None:
    """Raise :class:`MissingConstants` (a ``KeyError``: "<part> needs X, Y: define them in the
    script's constants") unless ``cfg`` holds every constant :data:`NEEDS` lists for ``part``."""
    missing = [k for k in NEEDS[part] if k not in cfg]
    if missing:
        raise MissingConstants(part, missing)
