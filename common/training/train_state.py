"""The state a training run carries and ``last.pth`` restores: the random state of every generator
(:func:`seed_everything`, :func:`get_rng_state`, :func:`set_rng_state`), the model and what an
optimizer update changes (:class:`Parts`), what the epoch loop carries (:class:`Progress`), and the
resume: ``last.pth``'s contents (:func:`checkpoint_state`), checked against this run before anything
is written (:func:`check_resume`: :data:`SCHEDULE_KEYS`, world size, updates per epoch,
:func:`epoch_plan`) and restored
(:func:`resume`, each rank its own random state).

With RESUME and ``out_dir/last.pth``, training restarts after its epoch with model, optimizer,
scheduler, scaler, EMA and the random state of EVERY rank restored. Sample order and augmentations
depend only on (SEED, epoch, index), so the final weights equal those of an uninterrupted run
(single process and DDP).
"""
from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.config import to_jsonable
from common.models import checkpoints
from common.training.distributed import DistEnv, launch, unwrap
from common.training.train_loaders import epoch_plan

# a resume must see these as the checkpoint saw them: they fix the schedule and the data order
SCHEDULE_KEYS = ("EPOCHS", "LR", "SCHEDULE", "WARMUP_EPOCHS", "WARMUP_MULT", "MIN_LR", "LR_STEP_EPOCHS",
                 "LR_STEP_VALUES", "OPTIMIZER", "ADAM_EPS", "WEIGHT_DECAY", "BATCH_SIZE", "ACCUM_STEPS",
                 "MAX_TRAIN_STEPS", "EMA_DECAY", "SEED")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """torch / CUDA / numpy / python RNG states in a ``weights_only``-loadable form."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu() if hasattr(state["torch"], "cpu") else state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Parts:
    """The model and everything an optimizer update changes (all restored by a resume)."""
    model: nn.Module                  # unwrapped, on the device
    net: nn.Module                    # what trains: the DDP wrapper under torchrun, else ``model``
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    ema: nn.Module | None             # timm ModelEmaV3 or None
    device: torch.device
    amp: bool
    channels_last: bool
    oof: tuple | None = None          # (ids, probs, labels) of the last validation

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model


@dataclass
class Progress:
    """What the epoch loop carries from one epoch to the next (and what last.pth saves of it)."""
    epoch: int = 0                    # last finished epoch
    num_updates: int = 0
    best: float | None = None
    best_epoch: int = 0
    history: list = field(default_factory=list)
    stopped: bool = False


def checkpoint_state(cfg: dict, parts: Parts, prog: Progress, updates: int, env: DistEnv) -> dict:
    """The state of ``last.pth`` (``updates``: optimizer updates per epoch); ``rng_ranks`` holds every
    rank's random state (collective call)."""
    rng = env.gather(get_rng_state())
    model = unwrap(parts.model)
    return {
        "model": model.state_dict(), "config": to_jsonable(cfg),
        "model_name": str(cfg["MODEL_NAME"]),
        "epoch": prog.epoch, "num_updates": prog.num_updates,
        "optimizer": parts.optimizer.state_dict(), "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict() if parts.amp else None,
        "ema": parts.ema.module.state_dict() if parts.ema is not None else None,
        "rng": rng[0], "rng_ranks": rng, "world_size": env.world, "updates_per_epoch": updates,
        "best_metric": prog.best, "best_epoch": prog.best_epoch,
        "metrics": prog.history[-1], "history": prog.history,
    }


RESUME_REMEDY = "remove it to start over, or restore it"


def check_resume(cfg: dict, path: Path, n_train: int) -> dict | None:
    """With RESUME and ``path`` (last.pth): the checkpoint, read and checked before anything is
    written: its schedule constants (:data:`SCHEDULE_KEYS`), world size and updates per epoch (of
    ``n_train`` training samples, :func:`epoch_plan`) must be this run's (else one line, the
    differences). None when there is nothing to resume."""
    if not bool(cfg["RESUME"]) or not path.is_file():
        return None
    ckpt = checkpoints.read_checkpoint(path, "RESUME: ", RESUME_REMEDY)
    if not isinstance(ckpt, dict) or not {"model", "config", "epoch", "optimizer"} <= set(ckpt):
        raise SystemExit(f"RESUME: {path} is no last.pth of a run (no model, optimizer or epoch): "
                         f"{RESUME_REMEDY}")
    # ckpt.get: optional contents of a checkpoint file (older ones lack some), not config defaults
    saved = ckpt.get("config", {})
    diff = [f"{k}: {saved.get(k)!r} -> {cfg[k]!r}" for k in SCHEDULE_KEYS
            if k in saved and saved[k] != cfg[k]]
    _, world, distributed = launch()
    saved_world = int(ckpt.get("world_size", 1))
    if saved_world != world:
        diff.append(f"processes: {saved_world} -> {world}")
    updates = epoch_plan(cfg, n_train, world, distributed)[1]
    if not diff and ckpt.get("updates_per_epoch", updates) != updates:
        diff.append(f"updates per epoch: {ckpt['updates_per_epoch']} -> {updates}")
    if diff:
        raise SystemExit(f"RESUME: {path} was trained with other schedule constants ({'; '.join(diff)}); "
                         "restore them, or start a new run (another RUN_NAME or without --RESUME)")
    return ckpt


def resume(cfg: dict, parts: Parts, ckpt: dict | None, path: Path, env: DistEnv) -> Progress:
    """Everything restored from the checkpoint of :func:`check_resume` (each rank its own random
    state); a fresh :class:`Progress` without one. Writes nothing."""
    if ckpt is None:
        return Progress()
    checkpoints.load_weights(parts.model, ckpt["model"], path, "RESUME: ", RESUME_REMEDY)
    # ckpt.get below: parts a last.pth may lack (no AMP, no EMA, written before rng_ranks / best_epoch)
    try:
        parts.optimizer.load_state_dict(ckpt["optimizer"])
        parts.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            parts.scaler.load_state_dict(ckpt["scaler"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise SystemExit(f"RESUME: {path}: its optimizer state does not fit this model ({e}): "
                         f"{RESUME_REMEDY}") from None
    if parts.ema is not None and ckpt.get("ema"):
        checkpoints.load_weights(parts.ema.module, ckpt["ema"], path, "RESUME: ", RESUME_REMEDY)
    set_rng_state(ckpt.get("rng_ranks", [ckpt["rng"]])[env.rank])
    return Progress(int(ckpt["epoch"]), int(ckpt["num_updates"]), ckpt.get("best_metric"),
                    int(ckpt.get("best_epoch", 0)), [dict(r) for r in ckpt.get("history", [])])
