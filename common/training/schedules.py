"""Learning-rate schedules of the training loop, chosen by the ``SCHEDULE`` constant.

* ``cosine`` (this repository's default): linear warm-up from LR/100 over ``WARMUP_EPOCHS``, then a
  cosine to ``MIN_LR``, updated every optimizer step (timm's ``CosineLRScheduler``).
* ``A`` (the original's pipeline-1 masked and pipeline-2 models): the first ``WARMUP_EPOCHS`` at
  ``LR``, then ``LR * WARMUP_MULT`` decaying by a cosine over the remaining epochs toward
  ``MIN_LR``, one value per epoch (``GradualWarmupScheduler(multiplier=10)`` + ``CosineAnnealingLR``).
  At LR 1e-4, 15 epochs: 1e-4, then 1e-3 … 1.25e-5.
* ``B`` (the original's center_cells models): a step schedule, ``LR_STEP_VALUES[i]`` from epoch
  ``LR_STEP_EPOCHS[i-1]`` on (0-based epochs): 3e-4 for epochs 1–4, 1.5e-4 for 5–7, 7.5e-5 for
  8–10, 3e-5 for 11–15 in the fact sheet's 1-based numbering.

Every scheduler has timm's interface (``step_update(num_updates)``, ``state_dict``), so the loop
treats them alike.
"""
from __future__ import annotations

import math

from timm.scheduler import CosineLRScheduler

SCHEDULES = ("cosine", "A", "B")


def epoch_lrs(cfg: dict) -> list[float] | None:
    """The learning rate of every epoch for the per-epoch schedules (None for ``cosine``)."""
    name, epochs, lr = str(cfg["SCHEDULE"]), int(cfg["EPOCHS"]), float(cfg["LR"])
    if name == "cosine":
        return None
    if name == "A":
        warm = int(round(float(cfg["WARMUP_EPOCHS"])))
        peak, low, rest = lr * float(cfg["WARMUP_MULT"]), float(cfg["MIN_LR"]), max(1, epochs - warm)
        return [lr if e < warm else low + (peak - low) * (1 + math.cos(math.pi * (e - warm) / rest)) / 2
                for e in range(epochs)]
    if name == "B":
        bounds, values = [int(b) for b in cfg["LR_STEP_EPOCHS"]], [float(v) for v in cfg["LR_STEP_VALUES"]]
        if len(values) != len(bounds) + 1 or bounds != sorted(bounds):
            raise SystemExit("SCHEDULE B needs len(LR_STEP_VALUES) == len(LR_STEP_EPOCHS) + 1 and "
                             f"increasing LR_STEP_EPOCHS; got {bounds} / {values}")
        return [values[sum(e >= b for b in bounds)] for e in range(epochs)]
    raise SystemExit(f"SCHEDULE must be one of {SCHEDULES}, got {name!r}")


class EpochTableScheduler:
    """A per-epoch learning-rate table behind timm's scheduler interface."""

    def __init__(self, optimizer, lrs: list[float], updates_per_epoch: int):
        self.optimizer, self.lrs = optimizer, list(lrs)
        self.updates_per_epoch = max(1, int(updates_per_epoch))
        self.step_update(0)

    def lr_at(self, num_updates: int) -> float:
        return self.lrs[min(len(self.lrs) - 1, num_updates // self.updates_per_epoch)]

    def step_update(self, num_updates: int, metric=None) -> None:
        lr = self.lr_at(int(num_updates))
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, epoch: int, metric=None) -> None:  # timm interface; the table is per update
        pass

    def state_dict(self) -> dict:
        return {"lrs": self.lrs, "updates_per_epoch": self.updates_per_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.lrs, self.updates_per_epoch = list(state["lrs"]), int(state["updates_per_epoch"])


def build_scheduler(cfg: dict, optimizer, updates_per_epoch: int):
    """The scheduler of ``cfg["SCHEDULE"]`` (see the module doc)."""
    lrs = epoch_lrs(cfg)
    if lrs is not None:
        return EpochTableScheduler(optimizer, lrs, updates_per_epoch)
    epochs = int(cfg["EPOCHS"])
    warm = int(round(float(cfg["WARMUP_EPOCHS"]) * updates_per_epoch))
    total = max(1, epochs * updates_per_epoch)
    warm = min(warm, total - 1) if total > 1 else 0
    return CosineLRScheduler(optimizer, t_initial=max(1, total - warm), lr_min=float(cfg["MIN_LR"]),
                             warmup_t=warm, warmup_lr_init=float(cfg["LR"]) / 100,
                             warmup_prefix=True, t_in_epochs=False)
