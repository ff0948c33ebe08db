"""The one training loop (S3 pipeline 1, S4.2 pipeline 2), in small parts like timm's ``train.py``:

    fit(cfg, model, train_ds, val_ds, out_dir)      setup, resume, the epoch loop, the summary
      make_loaders / build_parts / resume           what the loop needs, restored from last.pth
      train_one_epoch -> optimizer_step             one pass over the training loader
      sync_buffers + validate (+ extra_metrics)     the same weights and buffers on every rank
      CheckpointSaver                               best.pth / last.pth, atomic, stale temps removed

The caller builds the model (``models.new_model(cfg)``) and the datasets. ``cfg`` is the script's
constants block; every key of ``needs.NEEDS["training"]`` must be there (no defaults live here): EPOCHS,
BATCH_SIZE (per process), LR, WEIGHT_DECAY, OPTIMIZER ("adamw" | "adam"), WARMUP_EPOCHS, MIN_LR,
ACCUM_STEPS, EMA_DECAY (0 = off), AMP, NUM_WORKERS, SEED, DEVICE ("auto" | "cpu" | "cuda"),
RESUME, MONITOR ("val_mAP", "val_loss" or an extra metric; higher is better unless the name
contains "loss"), MAX_TRAIN_STEPS (0 = all batches per epoch), VAL_EVERY (validate every N epochs
and after the last; other epochs have empty val columns and never become best.pth), GRAD_CLIP,
MODEL_NAME (recorded in the checkpoints).

Schedule: linear warm-up from LR/100 over WARMUP_EPOCHS, then cosine down to MIN_LR at the end
of EPOCHS (timm ``CosineLRScheduler``), stepped per optimizer update. Weight decay applies to
weights of rank >= 2 only. With EMA on, validation, MONITOR and ``best.pth`` use the EMA weights.
AMP (float16 + GradScaler) and channels_last only on CUDA.

Outputs in ``out_dir`` (rank 0): ``config.json``, ``summary.csv``, ``train.log``, ``curves.png``,
``last.pth`` (every epoch), ``best.pth`` (best MONITOR); checkpoints load with ``weights_only=True``.
A start writes nothing until it passed every check (constants, FOLD, the folder's config.json,
last.pth): a refused or failed start leaves the folder byte-identical. Rank 0 holds the folder's
lock (``common.lock``) for the whole run: a second writer stops at once, naming the first.

Resume: with RESUME and ``out_dir/last.pth``, training restarts after its epoch with model,
optimizer, scheduler, scaler, EMA and the random state of EVERY rank restored; a resume whose
schedule constants (:data:`SCHEDULE_KEYS`, world size) differ from the checkpoint's is refused.
Sample order and augmentations depend only on (SEED, epoch, index), so the final weights equal
those of an uninterrupted run (single process and DDP). Ctrl-C ends with one line saying which
epoch ``last.pth`` holds. ``HPA_STOP_AFTER_EPOCH=k`` (environment) stops cleanly after epoch k's
checkpoint, as a kill would (tests).

DDP: under ``torchrun`` the process group is initialised (nccl on CUDA, gloo on CPU), training
uses a DistributedSampler and a DDP wrapper. At each epoch end rank 0's buffers (BatchNorm
statistics, of the model and its EMA) are broadcast, so every rank validates, and saves, the same
model; validation is sharded and gathered, extra metrics run on rank 0 and are broadcast, rank 0
logs and saves. This is the only module touching ``torch.distributed``.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset
from tqdm import tqdm

from common import checkpoints, io, lock, metric, needs, owned, plots, schedules
from common import config as config_mod
from common.device import resolve_device

# a resume must see these as the checkpoint saw them: they fix the schedule and the data order
SCHEDULE_KEYS = ("EPOCHS", "LR", "SCHEDULE", "WARMUP_EPOCHS", "WARMUP_MULT", "MIN_LR", "LR_STEP_EPOCHS",
                 "LR_STEP_VALUES", "OPTIMIZER", "ADAM_EPS", "WEIGHT_DECAY", "BATCH_SIZE", "ACCUM_STEPS",
                 "MAX_TRAIN_STEPS", "EMA_DECAY", "SEED")
# constants that change how a run is executed, not what it trains: a run folder may differ in these
RUN_MECHANICS = ("RESUME", "OVERWRITE", "NUM_WORKERS", "DEVICE", "CACHE_GB", "RECIPE", "OVERRIDES",
                 "environment")
RUN_FILES = ("best.pth", "last.pth", "summary.csv", "curves.png", "oof.csv", "oof_cells.csv")
STOP_ENV = "HPA_STOP_AFTER_EPOCH"

log = logging.getLogger("hpa.train")


class StopTraining(Exception):
    """Raise (e.g. from ``extra_metrics``) to stop ``fit`` cleanly; used by tests to simulate a kill."""


# ----------------------------------------------------------------------------- small helpers
def check_config(cfg: dict, step: str) -> None:
    """The constants of a run, checked before anything is written: each bad value stops ``step``
    with one line naming the constant; a missing one is a ``KeyError`` naming it (``needs.NEEDS``)."""
    needs.need(cfg, "training")
    config_mod.require_positive(cfg, "EPOCHS", "VAL_EVERY", "BATCH_SIZE", "ACCUM_STEPS", step=step)
    config_mod.require_positive(cfg, "NUM_WORKERS", "MAX_TRAIN_STEPS", minimum=0, step=step)
    config_mod.require_number(cfg, "LR", "ADAM_EPS", "WARMUP_MULT", above=True, step=step)
    config_mod.require_number(cfg, "MIN_LR", "WEIGHT_DECAY", "WARMUP_EPOCHS", "GRAD_CLIP", step=step)
    config_mod.require_number(cfg, "EMA_DECAY", maximum=1, step=step)
    config_mod.require_choice({"OPTIMIZER": str(cfg["OPTIMIZER"]).lower()}, "OPTIMIZER", ("adamw", "adam"),
                              step=step)  # any case, as build_parts reads it


def check_model_constants(cfg: dict, step: str) -> None:
    """The model, MIL and bag-augmentation constants S3 and S4.2 share, checked at their start (one line
    naming the constant): probabilities in 0..1, counts >= 1, weights finite >= 0."""
    config_mod.require_positive(cfg, "MSD_SAMPLES", "MIL_TOPK", step=step)
    config_mod.require_positive(cfg, "MAX_IMAGES", minimum=0, step=step)
    config_mod.require_number(cfg, "MIL_W_MAX", "MIL_W_MEAN", step=step)
    config_mod.require_number(cfg, "MIL_LSE_R", above=True, step=step)
    config_mod.require_number(cfg, "DROPOUT", "P_GREEN_TO_NEGATIVE", "P_GREEN_FROM_OTHER", "P_INTENSITY",
                              maximum=1, step=step)
    low_high = config_mod.require_items(cfg, "INTENSITY_RANGE", "factors > 0",
                                        lambda x: config_mod.is_number(x) and x > 0, length=2, step=step)
    if low_high[0] > low_high[1]:
        raise SystemExit(f"{step}: --INTENSITY_RANGE {low_high}: the low factor must come first")


def check_fold(cfg: dict, folds, table: str | Path, step: str) -> None:
    """FOLD (>= 0) must be a fold of the table's ``folds`` column (S3, S4.2 at their start)."""
    fold = cfg["FOLD"]
    if isinstance(fold, bool) or not isinstance(fold, int):
        raise SystemExit(f"{step}: --FOLD {fold!r}: must be a whole number (-1: train on everything)")
    present = sorted({int(f) for f in pd.to_numeric(pd.Series(folds), errors="coerce").dropna()})
    if fold >= 0 and fold not in present:
        raise SystemExit(f"{step}: --FOLD {fold}: {table} has no rows of that fold; folds present: "
                         f"{present} (--FOLD -1 trains on everything)")


def check_run_folder(cfg: dict, out_dir: Path) -> None:
    """Never overwrite another run silently: a folder whose config.json holds other constants is
    refused (the differences shown) unless RESUME (checked against the checkpoint) or OVERWRITE
    (its old outputs are removed when training starts, :func:`start_run`). Writes nothing."""
    saved_path = out_dir / "config.json"
    if not saved_path.is_file() or bool(cfg["RESUME"]) or bool(cfg["OVERWRITE"]):
        return
    saved, new = config_mod.load(saved_path), _jsonable(cfg)  # .get: a constant only one of them has
    diff = [f"{k}: {saved.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}"
            for k in sorted(set(saved) | set(new)) if k not in RUN_MECHANICS and saved.get(k) != new.get(k)]
    if diff:
        raise SystemExit(f"{out_dir} holds a run with other constants ({'; '.join(diff)}): give another "
                         "RUN_NAME, --RESUME true to continue it, or --OVERWRITE true to replace it")


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


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _to_device(batch, device, channels_last: bool):
    if isinstance(batch, dict):
        return {k: _to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, torch.Tensor):
        t = batch.to(device, non_blocking=True)
        if channels_last and t.ndim == 4 and t.is_floating_point():
            t = t.contiguous(memory_format=torch.channels_last)
        return t
    return batch


def _jsonable(cfg: dict) -> dict:
    out = {}
    for k, v in config_mod.to_jsonable(dict(cfg)).items():
        try:
            json.dumps(v)
        except TypeError:
            v = str(v)
        out[k] = v
    return out


class _EpochShuffleSampler(Sampler):
    """Single-process shuffling whose order depends only on (seed, epoch)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


# ----------------------------------------------------------------------------- distributed
def launch() -> tuple[int, int, bool]:
    """``(rank, world size, distributed)`` of this process, as torchrun's environment gives them."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    return rank, world, "RANK" in os.environ and world > 1


class _Dist:
    def __init__(self, device_pref: str):
        self.rank, self.world, self.enabled = launch()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = resolve_device(device_pref)
        use_cuda = device.type == "cuda"
        if use_cuda and not torch.cuda.is_available():
            raise RuntimeError(f"DEVICE={device_pref} but CUDA is not available")
        if use_cuda:
            if self.enabled:  # torchrun: one GPU per local rank
                idx = self.local_rank
            else:  # current_device() only here: asked on a rank, it would open a context on GPU 0
                idx = device.index if device.index is not None else torch.cuda.current_device()
            torch.cuda.set_device(idx)
            self.device = torch.device("cuda", idx)
        else:
            self.device = torch.device("cpu")
        self.owns_group = False
        if self.enabled and not dist.is_initialized():
            # a long timeout: ranks > 0 wait in a broadcast while rank 0 runs extra_metrics
            dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                    timeout=datetime.timedelta(hours=2))
            self.owns_group = True
        self.main = self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, x: float) -> float:
        if not self.enabled:
            return x
        t = torch.tensor([x], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world

    def gather(self, obj) -> list:
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        if not self.enabled:
            return obj
        lst = [obj]
        dist.broadcast_object_list(lst, src=0)
        return lst[0]

    def broadcast_tensor(self, t: torch.Tensor) -> None:
        if self.enabled:
            dist.broadcast(t, src=0)

    def close(self, barrier: bool = True) -> None:
        if self.owns_group and dist.is_initialized():
            if barrier:
                dist.barrier()
            dist.destroy_process_group()


def sync_buffers(module: nn.Module | None, env: _Dist) -> None:
    """Every rank takes rank 0's buffers (BatchNorm running statistics drift apart per rank)."""
    if module is None or not env.enabled:
        return
    with torch.no_grad():
        for buf in module.buffers():
            env.broadcast_tensor(buf.data)


# ----------------------------------------------------------------------------- building blocks
def build_optimizer(cfg: dict, model: nn.Module) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": float(cfg["WEIGHT_DECAY"])},
              {"params": no_decay, "weight_decay": 0.0}]
    name, eps = str(cfg["OPTIMIZER"]).lower(), float(cfg["ADAM_EPS"])
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=float(cfg["LR"]), eps=eps)
    if name == "adam":
        return torch.optim.Adam(groups, lr=float(cfg["LR"]), eps=eps)
    raise ValueError(f"OPTIMIZER must be 'adamw' or 'adam', got {name!r}")


def build_scheduler(cfg: dict, optimizer, updates_per_epoch: int):
    """The SCHEDULE of ``cfg`` (cosine | A | B, see :mod:`common.schedules`)."""
    return schedules.build_scheduler(cfg, optimizer, updates_per_epoch)


@dataclass
class Loaders:
    train: DataLoader
    sampler: Sampler
    val: DataLoader | None
    steps: int      # batches per epoch (MAX_TRAIN_STEPS applied)
    updates: int    # optimizer updates per epoch


def epoch_plan(cfg: dict, n_train: int, world: int, distributed: bool) -> tuple[int, int, bool]:
    """``(batches, optimizer updates, drop_last)`` per epoch and process for ``n_train`` training
    samples (MAX_TRAIN_STEPS applied): what :func:`make_loaders` builds, known without building it."""
    if n_train == 0:
        raise ValueError("training dataset is empty")
    bs = int(cfg["BATCH_SIZE"])
    per_rank = math.ceil(n_train / world) if distributed else n_train   # the sampler's length
    drop_last = math.ceil(n_train / world) >= bs
    steps = per_rank // bs if drop_last else math.ceil(per_rank / bs)
    if int(cfg["MAX_TRAIN_STEPS"]) > 0:
        steps = min(steps, int(cfg["MAX_TRAIN_STEPS"]))
    return steps, math.ceil(steps / max(1, int(cfg["ACCUM_STEPS"]))), drop_last


def make_loaders(cfg: dict, train_ds: Dataset, val_ds: Dataset | None, env: _Dist, collate_fn) -> Loaders:
    """Training loader (seeded shuffling, DistributedSampler under DDP), validation shard of this rank."""
    steps, updates, drop_last = epoch_plan(cfg, len(train_ds), env.world, env.enabled)
    bs, seed = int(cfg["BATCH_SIZE"]), int(cfg["SEED"])
    if env.enabled:
        sampler = DistributedSampler(train_ds, num_replicas=env.world, rank=env.rank, shuffle=True,
                                     seed=seed, drop_last=False)
    else:
        sampler = _EpochShuffleSampler(len(train_ds), seed)
    kw = dict(num_workers=int(cfg["NUM_WORKERS"]), pin_memory=env.device.type == "cuda",
              collate_fn=collate_fn, persistent_workers=False)
    train = DataLoader(train_ds, batch_size=bs, sampler=sampler, drop_last=drop_last, **kw)
    val = None
    if val_ds is not None and len(val_ds) > 0:
        shard = Subset(val_ds, list(range(env.rank, len(val_ds), env.world))) if env.enabled else val_ds
        val = DataLoader(shard, batch_size=bs, sampler=None, drop_last=False, **kw)
    return Loaders(train, sampler, val, steps, updates)


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


def build_parts(cfg: dict, model: nn.Module, env: _Dist, updates_per_epoch: int) -> Parts:
    cuda = env.device.type == "cuda"
    amp = bool(cfg["AMP"]) and cuda
    model = model.to(env.device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    ema = None
    if float(cfg["EMA_DECAY"]) > 0:
        ema = ModelEmaV3(model, decay=float(cfg["EMA_DECAY"]))
    optimizer = build_optimizer(cfg, model)
    return Parts(model, model, optimizer, build_scheduler(cfg, optimizer, updates_per_epoch),
                 torch.amp.GradScaler("cuda", enabled=amp), ema, env.device, amp, cuda)


def wrap_ddp(parts: Parts, env: _Dist) -> None:
    if env.enabled:
        ids = [parts.device.index] if parts.device.type == "cuda" else None
        parts.net = nn.parallel.DistributedDataParallel(parts.model, device_ids=ids)


@dataclass
class Progress:
    """What the epoch loop carries from one epoch to the next (and what last.pth saves of it)."""
    epoch: int = 0                    # last finished epoch
    num_updates: int = 0
    best: float | None = None
    best_epoch: int = 0
    history: list = field(default_factory=list)
    stopped: bool = False


# ----------------------------------------------------------------------------- checkpoints
class CheckpointSaver:
    """``best.pth`` and ``last.pth`` of ``out_dir``, written by rank 0 through ``io.atomic_path``;
    temporary files a kill left behind are removed when the saver starts."""

    def __init__(self, out_dir: Path, main: bool):
        self.dir, self.main = Path(out_dir), main
        self.last, self.best = self.dir / "last.pth", self.dir / "best.pth"
        self.last_epoch: int | None = None  # the epoch last.pth holds (None: none of this run)
        if main:
            self.dir.mkdir(parents=True, exist_ok=True)
            n = io.remove_stale_temps(self.dir)
            if n:
                log.info(f"removed {n} temporary file(s) left by an interrupted run in {self.dir}")

    def _write(self, state: dict, path: Path) -> None:
        checkpoints.save_checkpoint(state, path)  # atomic; a full disk is io.WriteError

    def save(self, state: dict, improved: bool) -> None:
        """``best.pth`` (slim: the evaluated weights and the constants, for S5 and Kaggle) when
        ``improved``, then ``last.pth`` (everything a resume needs)."""
        if self.main:
            if improved:  # best first: a crash between the two writes never loses the best epoch
                self._write(checkpoints.slim_checkpoint(state, self.best), self.best)
            self._write(state, self.last)
        self.last_epoch = int(state["epoch"])

    def finish(self) -> None:
        """No epoch ever improved (e.g. every MONITOR value was NaN): best.pth is the slim last.pth."""
        if self.main and not self.best.is_file() and self.last.is_file():
            state = checkpoints.read_checkpoint(self.last, "", "run the step again with --OVERWRITE true")
            self._write(checkpoints.slim_checkpoint(state, self.last), self.best)


def checkpoint_state(cfg: dict, parts: Parts, prog: Progress, loaders: Loaders, env: _Dist) -> dict:
    """The state of ``last.pth``; ``rng_ranks`` holds every rank's random state (collective call)."""
    rng = env.gather(get_rng_state())
    model = unwrap(parts.model)
    return {
        "model": model.state_dict(), "config": _jsonable(cfg),
        "model_name": str(cfg["MODEL_NAME"]),
        "epoch": prog.epoch, "num_updates": prog.num_updates,
        "optimizer": parts.optimizer.state_dict(), "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict() if parts.amp else None,
        "ema": parts.ema.module.state_dict() if parts.ema is not None else None,
        "rng": rng[0], "rng_ranks": rng, "world_size": env.world, "updates_per_epoch": loaders.updates,
        "best_metric": prog.best, "best_epoch": prog.best_epoch,
        "metrics": prog.history[-1], "history": prog.history,
    }


RESUME_REMEDY = "remove it to start over, or restore it"


def check_resume(cfg: dict, path: Path, n_train: int) -> dict | None:
    """With RESUME and ``path`` (last.pth): the checkpoint, read and checked before anything is
    written: its schedule constants (:data:`SCHEDULE_KEYS`), world size and updates per epoch must
    be this run's (else one line, the differences). None when there is nothing to resume."""
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


def resume(cfg: dict, parts: Parts, ckpt: dict | None, path: Path, env: _Dist) -> Progress:
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


# ----------------------------------------------------------------------------- one epoch
def optimizer_step(parts: Parts, prog: Progress, grad_clip: float) -> None:
    """One optimizer update (after the accumulated backward passes), then schedule and EMA."""
    if grad_clip > 0:
        parts.scaler.unscale_(parts.optimizer)
        nn.utils.clip_grad_norm_(parts.model.parameters(), grad_clip)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.optimizer.zero_grad(set_to_none=True)
    prog.num_updates += 1
    parts.scheduler.step_update(prog.num_updates)
    if parts.ema is not None:
        parts.ema.update(parts.model, step=prog.num_updates)


def train_one_epoch(cfg: dict, parts: Parts, loaders: Loaders, prog: Progress, epoch: int,
                    env: _Dist) -> float:
    """One pass over the training loader -> mean training loss over every rank's samples."""
    accum, steps = max(1, int(cfg["ACCUM_STEPS"])), loaders.steps
    parts.net.train()
    parts.optimizer.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), dtype=torch.float64, device=parts.device)  # on device: no per-step sync
    n_bad = torch.zeros((), dtype=torch.int64, device=parts.device)
    n_seen = 0
    bar = tqdm(total=steps, desc=f"epoch {epoch}/{cfg['EPOCHS']}", disable=not env.main, leave=False,
               dynamic_ncols=True)
    for step, batch in enumerate(loaders.train):
        if step >= steps:
            break
        batch = _to_device(batch, parts.device, parts.channels_last)
        update_now = (step + 1) % accum == 0 or step + 1 == steps
        sync = contextlib.nullcontext() if (update_now or not env.enabled) else parts.net.no_sync()
        with sync:
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=parts.amp):
                out = parts.net(batch)
            loss = out["loss"]
            parts.scaler.scale(loss / accum).backward()
        if update_now:
            optimizer_step(parts, prog, float(cfg["GRAD_CLIP"]))
        b, ld = out["logits"].shape[0], loss.detach().double()
        finite = torch.isfinite(ld)
        loss_sum += torch.where(finite, ld * b, torch.zeros_like(ld))
        n_bad += (~finite).long()
        n_seen += b
        bar.update(1)
        if step % 20 == 0 or step + 1 == steps:  # one host sync every 20 steps
            if int(n_bad) and not parts.amp:  # under AMP the GradScaler skips non-finite steps
                raise FloatingPointError(f"epoch {epoch} step {step}: non-finite loss")
            bar.set_postfix(loss=f"{float(loss_sum) / max(n_seen, 1):.4f}",
                            lr=f"{parts.optimizer.param_groups[0]['lr']:.2e}")
    bar.close()
    if int(n_bad):
        log.warning(f"epoch {epoch}: {int(n_bad)} step(s) with a non-finite loss (skipped by AMP)")
    return env.mean(float(loss_sum) / max(n_seen, 1))


# ----------------------------------------------------------------------------- validation
@torch.no_grad()
def evaluate(model: nn.Module, loader, device, amp: bool, channels_last: bool, show: bool = False):
    """-> (probs (N,19), labels (N,19), loss sum, sample count, ids) of one (sharded) loader; ``ids``
    are the batches' ``id`` values (empty when the dataset gives none)."""
    model.eval()
    probs, labels, loss_sum, n, ids = [], [], 0.0, 0, []
    for batch in tqdm(loader, desc="val", leave=False, disable=not show, dynamic_ncols=True):
        ids += [str(i) for i in batch.get("id", [])]
        batch = _to_device(batch, device, channels_last)
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp):
            out = model(batch)
        b = out["logits"].shape[0]
        if "loss" in out:
            loss_sum += float(out["loss"].float()) * b
        n += b
        probs.append(torch.sigmoid(out["logits"].float()).cpu().numpy())
        labels.append(batch["label"].float().cpu().numpy())
    if not probs:
        return np.zeros((0, 19)), np.zeros((0, 19)), 0.0, 0, ids
    return np.concatenate(probs), np.concatenate(labels), loss_sum, n, ids


def validate(parts: Parts, loader, env: _Dist) -> dict:
    """``val_loss`` and image-level ``val_mAP`` of the evaluated model over every rank's shard; the
    gathered predictions stay in ``parts.oof`` (written as oof.csv when the epoch becomes best)."""
    probs, labels, vloss, vn, ids = evaluate(parts.eval_model, loader, parts.device, parts.amp,
                                             parts.channels_last, env.main)
    parts_ = env.gather((probs, labels, vloss, vn, ids))
    probs = np.concatenate([p[0] for p in parts_])
    labels = np.concatenate([p[1] for p in parts_])
    parts.oof = ([i for p in parts_ for i in p[4]], probs, labels)
    return {"val_loss": sum(p[2] for p in parts_) / max(1, sum(p[3] for p in parts_)),
            "val_mAP": metric.image_level_map(labels > 0.5, probs)[0]}


def run_extra_metrics(extra_metrics, parts: Parts, env: _Dist) -> tuple[dict, bool]:
    """``extra_metrics(model, device)`` on rank 0, its dict (and a StopTraining) sent to every rank."""
    extra, stopped = {}, False
    if env.main:
        try:
            values = extra_metrics(parts.eval_model, parts.device) or {}
            extra = {k: float(v) for k, v in dict(values).items()}
        except StopTraining:
            stopped = True
    return env.broadcast((extra, stopped))


# ----------------------------------------------------------------------------- the loop
def _improved(cfg: dict, row: dict, prog: Progress, validated: bool, has_val: bool) -> bool:
    monitor = str(cfg["MONITOR"])
    lower_better = "loss" in monitor
    value = row.get(monitor)
    if value is None and not has_val:
        value = -float(row["epoch"]) if lower_better else float(row["epoch"])  # no validation: best = last
    if value is None and validated:
        raise KeyError(f"MONITOR {monitor!r} is not among the metrics {sorted(row)}")
    better = value is not None and value == value and (
        prog.best is None or (value < prog.best if lower_better else value > prog.best))
    if better:
        prog.best, prog.best_epoch = float(value), int(row["epoch"])
    return better


def run_epoch(cfg, parts, loaders, prog, epoch, env, extra_metrics, train_ds, val_ds) -> dict | None:
    """Train, validate (when due), score the extra metrics -> the summary row (None: stopped)."""
    t0 = time.time()
    for obj in (train_ds, loaders.sampler, val_ds):
        if obj is not None and hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
    row = {"epoch": epoch, "lr": parts.optimizer.param_groups[0]["lr"]}  # at the epoch's first update
    row["train_loss"] = train_one_epoch(cfg, parts, loaders, prog, epoch, env)
    sync_buffers(parts.model, env)
    sync_buffers(parts.ema.module if parts.ema is not None else None, env)
    due = epoch % int(cfg["VAL_EVERY"]) == 0 or epoch == int(cfg["EPOCHS"])
    if loaders.val is not None and due:
        row.update(validate(parts, loaders.val, env))
    if extra_metrics is not None and due:
        extra, stopped = run_extra_metrics(extra_metrics, parts, env)
        if stopped:
            log.info(f"stopped during epoch {epoch} (before its checkpoint)")
            return None
        row.update(extra)
    row["seconds"] = round(time.time() - t0, 2)
    return row


def write_oof(out_dir: Path, parts: Parts, extra_metrics) -> None:
    """The best epoch's out-of-fold predictions (rank 0): ``oof.csv`` (ID, true labels ``y0..y18``,
    probabilities ``p0..p18``), and whatever ``extra_metrics.write_oof(out_dir)`` writes (S4.2's
    cell-level ``oof_cells.csv``)."""
    if parts.oof is not None:
        ids, probs, labels = parts.oof
        metric.write_oof(out_dir / "oof.csv", {"ID": ids if len(ids) == len(probs) else range(len(probs))},
                         probs, labels)
    if hasattr(extra_metrics, "write_oof"):
        extra_metrics.write_oof(out_dir)


def write_logs(out_dir: Path, row: dict, history: list, improved: bool) -> None:
    """summary.csv, curves.png and the epoch's line of train.log (rank 0)."""
    io.atomic_to_csv(pd.DataFrame(history), out_dir / "summary.csv")
    try:
        plots.plot_training_curves(out_dir / "summary.csv", out_dir / "curves.png")
    except Exception as e:  # noqa: BLE001 - a plot never stops training
        log.warning(f"curves.png not written: {e}")
    msg = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
    log.info(msg + (" *" if improved else ""))


def _setup_logging(out_dir: Path, main: bool) -> None:
    log.setLevel(logging.INFO)
    log.propagate = False
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               for h in log.handlers):
        sh = logging.StreamHandler()
        sh.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(sh)
    if not main:
        log.setLevel(logging.WARNING)
        return
    fh = logging.FileHandler(out_dir / "train.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(fh)


def fit(cfg: dict, model: nn.Module, train_ds: Dataset, val_ds: Dataset | None, out_dir: str | Path,
        extra_metrics=None, collate_fn=None, *, step: str = "train.fit") -> dict:
    """Train ``model`` (``forward(batch) -> {"logits", "loss"}``) and return a summary dict:
    ``best_metric``, ``best_epoch``, ``last_epoch``, ``metrics`` (of the last epoch), ``history``
    (rows of summary.csv), ``out_dir``, ``stopped`` (True when stopped early), ``rank``.

    ``extra_metrics(model, device) -> dict`` runs on rank 0 after each validation, with the
    evaluated model (EMA or raw, unwrapped, eval mode); its values reach every rank, go to
    summary.csv and may be the MONITOR. Datasets may define ``set_epoch(epoch)``. ``step`` names
    the script in messages and in the run folder's lock.

    Nothing is written until every check passed: the constants (:func:`check_config`), then, under
    the run folder's lock (rank 0 holds it for the whole run), the folder's config.json
    (:func:`check_run_folder`) and, with RESUME, last.pth (:func:`check_resume`, :func:`resume`).
    Only then are config.json and train.log written (:func:`start_run`).
    """
    check_config(cfg, step)
    out_dir = Path(out_dir)
    rank, _, _ = launch()
    with lock.hold(out_dir, step) if rank == 0 else contextlib.nullcontext():
        check_run_folder(cfg, out_dir)
        for name in (*RUN_FILES, "config.json", "train.log"):  # a link there is never written through
            owned.check_path(out_dir, name, step, "RUN_NAME")
        ckpt = check_resume(cfg, out_dir / "last.pth", len(train_ds))
        return _run(cfg, model, train_ds, val_ds, out_dir, ckpt, extra_metrics, collate_fn)


def _run(cfg, model, train_ds, val_ds, out_dir: Path, ckpt, extra_metrics, collate_fn) -> dict:
    env = _Dist(str(cfg["DEVICE"]))
    saver, interrupted = None, False
    try:
        seed_everything(int(cfg["SEED"]) + env.rank)
        loaders = make_loaders(cfg, train_ds, val_ds, env, collate_fn)
        parts = build_parts(cfg, model, env, loaders.updates)
        prog = resume(cfg, parts, ckpt, out_dir / "last.pth", env)
        saver = start_run(cfg, out_dir, env, prog.epoch if ckpt is not None else None)
        if bool(cfg["RESUME"]):
            log.info(f"resumed from {saver.last} after epoch {prog.epoch} (best {cfg['MONITOR']}={prog.best})"
                     if ckpt is not None else f"RESUME: no {saver.last}, starting from scratch")
        return _fit(cfg, parts, loaders, prog, train_ds, val_ds, saver, extra_metrics, env)
    except KeyboardInterrupt:
        interrupted = True
        where = "no last.pth written yet" if saver is None or saver.last_epoch is None else \
            f"{saver.last} holds epoch {saver.last_epoch}; continue with --RESUME"
        if env.main:
            log.warning(f"interrupted: {where}")
        raise SystemExit(130) from None
    finally:
        for h in list(log.handlers):
            if isinstance(h, logging.FileHandler):
                log.removeHandler(h)
                h.close()
        env.close(barrier=not interrupted)


def start_run(cfg: dict, out_dir: Path, env: _Dist, last_epoch: int | None) -> CheckpointSaver:
    """Training starts: the first writes into the run folder (rank 0): with OVERWRITE the old run's
    outputs removed, ``config.json`` (atomically), the checkpoint saver, ``train.log``."""
    replace = bool(cfg["OVERWRITE"]) and not bool(cfg["RESUME"]) and (out_dir / "config.json").is_file()
    if env.main and replace:
        for name in RUN_FILES:
            (out_dir / name).unlink(missing_ok=True)
    saver = CheckpointSaver(out_dir, env.main)
    if env.main:
        config_mod.save(_jsonable(cfg), out_dir / "config.json")
    env.barrier()
    saver.last_epoch = last_epoch
    _setup_logging(out_dir, env.main)
    return saver


def _fit(cfg, parts: Parts, loaders: Loaders, prog: Progress, train_ds, val_ds, saver: CheckpointSaver,
         extra_metrics, env: _Dist) -> dict:
    wrap_ddp(parts, env)
    stop_after = int(os.environ.get(STOP_ENV, "0") or 0)
    log.info(f"device {env.device} x{env.world}, amp={parts.amp}, "
             f"params={sum(p.numel() for p in parts.model.parameters()) / 1e6:.2f}M, "
             f"train={len(train_ds)} val={len(val_ds) if val_ds is not None else 0}, "
             f"steps/epoch={loaders.steps}, accum={cfg['ACCUM_STEPS']}, "
             f"epochs {prog.epoch + 1}..{cfg['EPOCHS']}")
    for epoch in range(prog.epoch + 1, int(cfg["EPOCHS"]) + 1):
        row = run_epoch(cfg, parts, loaders, prog, epoch, env, extra_metrics, train_ds, val_ds)
        if row is None:
            prog.stopped = True
            break
        prog.epoch = epoch
        prog.history.append(row)
        due = epoch % int(cfg["VAL_EVERY"]) == 0 or epoch == int(cfg["EPOCHS"])
        improved = _improved(cfg, row, prog, due, loaders.val is not None)
        saver.save(checkpoint_state(cfg, parts, prog, loaders, env), improved)
        if env.main:
            write_logs(saver.dir, row, prog.history, improved)
            if improved:
                write_oof(saver.dir, parts, extra_metrics)
        env.barrier()
        if epoch == stop_after and epoch < int(cfg["EPOCHS"]):
            log.info(f"{STOP_ENV}={stop_after}: stopping after epoch {epoch}")
            prog.stopped = True
            break
    saver.finish()
    env.barrier()
    return {"best_metric": prog.best, "best_epoch": prog.best_epoch,
            "last_epoch": prog.history[-1]["epoch"] if prog.history else 0,
            "metrics": prog.history[-1] if prog.history else {}, "history": prog.history,
            "out_dir": str(saver.dir), "stopped": prog.stopped, "rank": env.rank}


def describe_result(cfg: dict, result: dict) -> str:
    """One line on a finished ``fit``: the best monitored value, or that there was no validation."""
    if "val_loss" not in (result.get("metrics") or {}):
        return f"no validation (FOLD=-1): best.pth is the last epoch ({result['last_epoch']})"
    best = result.get("best_metric")
    best = f"{best:.4g}" if isinstance(best, float) else best
    return f"best {cfg['MONITOR']}={best} at epoch {result['best_epoch']}"
