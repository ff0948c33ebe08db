"""The one training loop (S3 pipeline 1, S4.2 pipeline 2), in small parts like timm's ``train.py``:

    fit(cfg, model, train_ds, val_ds, out_dir)      start checks, then run_training under the folder's lock
      run_training                                  processes, loaders, parts, resume, first writes
        make_loaders / build_parts / resume         what the loop needs, restored from last.pth
      epoch_loop -> run_epoch                       the epochs: train, validate when due, save, log
        train_one_epoch -> optimizer_step           one pass over the training loader
        sync_buffers + validate (+ extra_metrics)   the same weights and buffers on every rank

Beside it, each in a module of its own (as timm keeps them in ``timm/utils``): the processes and
their collectives (:mod:`common.training.distributed`), the random and resume state with ``last.pth``'s
contents (:mod:`common.training.train_state`), ``best.pth`` / ``last.pth`` written atomically
(:mod:`common.training.checkpoint_saver`).

The caller builds the model (``models.new_model(cfg)``) and the datasets. ``cfg`` is the script's
constants block; every key of ``needs.NEEDS["training"]`` must be there (no defaults live here).
MONITOR is higher-is-better unless its name contains "loss"; VAL_EVERY validates every N epochs and
after the last (other epochs have empty val columns and never become best.pth). With EMA on,
validation, MONITOR and ``best.pth`` use the EMA weights. AMP (float16 + GradScaler) and
channels_last only on CUDA. Weight decay applies to weights of rank >= 2 only; the schedule is
:mod:`common.training.schedules`' (stepped per optimizer update).

Outputs in ``out_dir`` (rank 0): ``config.json``, ``summary.csv``, ``train.log``, ``curves.png``,
``last.pth`` (every epoch), ``best.pth`` (best MONITOR); checkpoints load with ``weights_only=True``.
A start writes nothing until it passed every check (constants, FOLD, the folder's config.json,
last.pth): a refused or failed start leaves the folder byte-identical. Rank 0 holds the folder's
lock (``common.lock``) for the whole run: a second writer stops at once, naming the first.
Resume (:mod:`common.training.train_state`) gives the bit-identical final weights of an uninterrupted run.
Ctrl-C ends with one line saying which epoch ``last.pth`` holds. ``HPA_STOP_AFTER_EPOCH=k``
(environment) stops cleanly after epoch k's checkpoint, as a kill would (tests).

DDP: under ``torchrun`` training uses a DistributedSampler and a DDP wrapper. At each epoch end rank
0's buffers (BatchNorm statistics, of the model and its EMA) are broadcast, so every rank validates,
and saves, the same model; validation is sharded and gathered, extra metrics run on rank 0 and are
broadcast, rank 0 logs and saves.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from common import config as config_mod
from common import lock, needs, owned
from common.competition import metric
from common.constants import NUM_CLASSES
from common.training import schedules
from common.training.checkpoint_saver import CheckpointSaver
from common.training.distributed import DistEnv, launch, sync_buffers, wrap_ddp
from common.training.run_folder import RUN_FILES, check_run_folder, close_log, start_run, write_logs
from common.training.train_loaders import Loaders, make_loaders
from common.training.train_state import (
    Parts,
    Progress,
    check_resume,
    checkpoint_state,
    resume,
    seed_everything,
)

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


def _to_device(batch, device, channels_last: bool):
    if isinstance(batch, dict):
        return {k: _to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, torch.Tensor):
        t = batch.to(device, non_blocking=True)
        if channels_last and t.ndim == 4 and t.is_floating_point():
            t = t.contiguous(memory_format=torch.channels_last)
        return t
    return batch


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


def build_parts(cfg: dict, model: nn.Module, env: DistEnv, updates_per_epoch: int) -> Parts:
    cuda = env.device.type == "cuda"
    amp = bool(cfg["AMP"]) and cuda
    model = model.to(env.device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    ema = None
    if float(cfg["EMA_DECAY"]) > 0:
        ema = ModelEmaV3(model, decay=float(cfg["EMA_DECAY"]))
    optimizer = build_optimizer(cfg, model)
    return Parts(model, model, optimizer, schedules.build_scheduler(cfg, optimizer, updates_per_epoch),
                 torch.amp.GradScaler("cuda", enabled=amp), ema, env.device, amp, cuda)


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
                    env: DistEnv) -> float:
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
    """-> (probs (N, 19), labels (N, 19), loss sum, sample count, ids) of one (sharded) loader; ``ids``
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
        return np.zeros((0, NUM_CLASSES)), np.zeros((0, NUM_CLASSES)), 0.0, 0, ids
    return np.concatenate(probs), np.concatenate(labels), loss_sum, n, ids


def validate(parts: Parts, loader, env: DistEnv) -> dict:
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


def run_extra_metrics(extra_metrics, parts: Parts, env: DistEnv) -> tuple[dict, bool]:
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


def run_epoch(cfg, parts: Parts, loaders: Loaders, prog: Progress, epoch: int, env: DistEnv, extra_metrics,
              due: bool) -> dict | None:
    """Train, validate and score the extra metrics (when ``due``) -> the summary row (None: stopped)."""
    t0 = time.time()
    for obj in (loaders.train_ds, loaders.sampler, loaders.val_ds):
        if obj is not None and hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
    row = {"epoch": epoch, "lr": parts.optimizer.param_groups[0]["lr"]}  # at the epoch's first update
    row["train_loss"] = train_one_epoch(cfg, parts, loaders, prog, epoch, env)
    sync_buffers(parts.model, env)
    sync_buffers(parts.ema.module if parts.ema is not None else None, env)
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
        return run_training(cfg, model, train_ds, val_ds, out_dir, ckpt, extra_metrics, collate_fn)


def run_training(cfg, model, train_ds, val_ds, out_dir: Path, ckpt, extra_metrics, collate_fn) -> dict:
    """The checked run: the processes (:class:`DistEnv`), the loaders, the parts, the resume, the
    first writes (:func:`start_run`), then the epochs (:func:`epoch_loop`); Ctrl-C ends with one line
    naming the epoch ``last.pth`` holds; the log file and the process group are closed in any case."""
    env = DistEnv(str(cfg["DEVICE"]))
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
        return epoch_loop(cfg, parts, loaders, prog, saver, extra_metrics, env)
    except KeyboardInterrupt:
        interrupted = True
        where = "no last.pth written yet" if saver is None or saver.last_epoch is None else \
            f"{saver.last} holds epoch {saver.last_epoch}; continue with --RESUME"
        if env.main:
            log.warning(f"interrupted: {where}")
        raise SystemExit(130) from None
    finally:
        close_log()
        env.close(barrier=not interrupted)


def epoch_loop(cfg, parts: Parts, loaders: Loaders, prog: Progress, saver: CheckpointSaver, extra_metrics,
               env: DistEnv) -> dict:
    """The epochs after ``prog.epoch``: each trained (:func:`run_epoch`), checkpointed, logged; the
    summary dict of :func:`fit`."""
    parts.net = wrap_ddp(parts.model, env)
    stop_after = int(os.environ.get(STOP_ENV, "0") or 0)
    log.info(f"device {env.device} x{env.world}, amp={parts.amp}, "
             f"params={sum(p.numel() for p in parts.model.parameters()) / 1e6:.2f}M, "
             f"train={len(loaders.train_ds)} val={len(loaders.val_ds) if loaders.val_ds is not None else 0}, "
             f"steps/epoch={loaders.steps}, accum={cfg['ACCUM_STEPS']}, "
             f"epochs {prog.epoch + 1}..{cfg['EPOCHS']}")
    for epoch in range(prog.epoch + 1, int(cfg["EPOCHS"]) + 1):
        due = epoch % int(cfg["VAL_EVERY"]) == 0 or epoch == int(cfg["EPOCHS"])  # validation this epoch
        row = run_epoch(cfg, parts, loaders, prog, epoch, env, extra_metrics, due)
        if row is None:
            prog.stopped = True
            break
        prog.epoch = epoch
        prog.history.append(row)
        improved = _improved(cfg, row, prog, due, loaders.val is not None)
        saver.save(checkpoint_state(cfg, parts, prog, loaders.updates, env), improved)
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
