"""The one training loop (S3 pipeline 1, S4.2 pipeline 2): schedule, AMP, gradient accumulation,
EMA, validation, logs, atomic checkpoints, exact resume, DDP.

``fit(cfg, model, train_ds, val_ds, out_dir)`` reads these config keys (defaults in
:data:`DEFAULTS`): EPOCHS, BATCH_SIZE (per process), LR, WEIGHT_DECAY, OPTIMIZER ("adamw" |
"adam"), WARMUP_EPOCHS, MIN_LR, ACCUM_STEPS, EMA_DECAY (0 = off), AMP, NUM_WORKERS, SEED, DEVICE
("auto" | "cpu" | "cuda"), RESUME, MONITOR ("val_mAP", "val_loss" or any extra metric; higher is
better unless the name contains "loss"), MAX_TRAIN_STEPS (0 = all batches per epoch), VAL_EVERY
(validate every N epochs and after the last; the other epochs have empty val columns in
summary.csv and never become best.pth). Optional: GRAD_CLIP (0 = off), DDP_FIND_UNUSED (False).

Schedule: linear warm-up from LR/100 over WARMUP_EPOCHS, then cosine down to MIN_LR at the end
of EPOCHS (timm ``CosineLRScheduler``), stepped per optimizer update (not per epoch).
Weight decay applies to weights of rank >= 2 only (not to biases and norm parameters).
With EMA on, validation, MONITOR and ``best.pth`` use the EMA weights (``load_checkpoint``
loads them too). AMP (float16 + GradScaler) and channels_last only on CUDA.

Outputs in ``out_dir`` (rank 0): ``config.json``, ``summary.csv`` (epoch, lr, train_loss,
val_loss, val_mAP, extra metrics…, seconds), ``train.log``, ``curves.png``, ``last.pth`` (every
epoch), ``best.pth`` (best MONITOR). Checkpoints load with ``weights_only=True``.

Resume: with RESUME and an ``out_dir/last.pth``, training restarts after its epoch with the
model, optimizer, scheduler, scaler, EMA and RNG states restored; sample order and augmentations
depend only on (SEED, epoch, index), so on CPU with the same settings the final weights equal
those of an uninterrupted run.

DDP: under ``torchrun`` (env RANK / WORLD_SIZE / LOCAL_RANK) the process group is initialised
(nccl on CUDA, gloo on CPU), training uses a DistributedSampler and a DDP wrapper, validation
is sharded and gathered, rank 0 logs and saves. This is the only module touching
``torch.distributed``.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset
from tqdm import tqdm

from common import config as config_mod
from common import io

DEFAULTS = {
    "EPOCHS": 10,              # training epochs
    "BATCH_SIZE": 16,          # images (or bags) per process and step
    "LR": 3e-4,                # peak learning rate
    "WEIGHT_DECAY": 1e-2,      # decoupled (adamw) / L2 (adam) weight decay
    "OPTIMIZER": "adamw",      # adamw | adam
    "WARMUP_EPOCHS": 1.0,      # linear warm-up length (epochs, may be fractional)
    "MIN_LR": 1e-6,            # final learning rate of the cosine
    "ACCUM_STEPS": 1,          # gradient accumulation steps per optimizer update
    "EMA_DECAY": 0.0,          # EMA of the weights (0 = off), e.g. 0.999
    "AMP": True,               # mixed precision (CUDA only)
    "NUM_WORKERS": 4,          # DataLoader workers per process
    "SEED": 42,                # global seed
    "DEVICE": "auto",          # auto | cpu | cuda
    "RESUME": False,           # continue from out_dir/last.pth when present
    "MONITOR": "val_mAP",      # metric selecting best.pth
    "MAX_TRAIN_STEPS": 0,      # cap on batches per epoch (0 = all), for smoke runs
    "VAL_EVERY": 1,            # validate every N epochs and after the last (best.pth moves only then)
    "GRAD_CLIP": 0.0,          # max gradient norm (0 = off)
    "DDP_FIND_UNUSED": False,  # DDP find_unused_parameters
}

log = logging.getLogger("hpa.train")


class StopTraining(Exception):
    """Raise (e.g. from ``extra_metrics``) to stop ``fit`` cleanly; used by tests to simulate a kill."""


# ----------------------------------------------------------------------------- small helpers
def _opt(cfg: dict, key: str):
    return cfg.get(key, DEFAULTS[key])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def new_model(cfg: dict) -> nn.Module:
    """``models.build_model(cfg)`` with the RNGs seeded from SEED first: the weight initialisation
    of a training run depends on SEED only (S3 and S4.2 build their models here)."""
    from common import models

    seed_everything(int(_opt(cfg, "SEED")))
    return models.build_model(cfg)


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


def image_map(labels: np.ndarray, probs: np.ndarray) -> float:
    """Macro average precision over the classes that have at least one positive (NaN if none)."""
    from sklearn.metrics import average_precision_score

    labels = np.asarray(labels) > 0.5
    aps = [average_precision_score(labels[:, c], probs[:, c]) for c in range(labels.shape[1])
           if labels[:, c].any()]
    return float(np.mean(aps)) if aps else float("nan")


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


def save_checkpoint(state: dict, path: Path) -> None:
    """``torch.save`` to a temporary name in the same folder, then ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
class _Dist:
    def __init__(self, device_pref: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = "RANK" in os.environ and self.world > 1
        use_cuda = torch.cuda.is_available() if device_pref == "auto" else device_pref == "cuda"
        if use_cuda and not torch.cuda.is_available():
            raise RuntimeError("DEVICE=cuda but CUDA is not available")
        if use_cuda:
            idx = self.local_rank if self.enabled else torch.cuda.current_device()
            torch.cuda.set_device(idx)
            self.device = torch.device("cuda", idx)
        else:
            self.device = torch.device("cpu")
        self.owns_group = False
        if self.enabled and not dist.is_initialized():
            # a long timeout: ranks > 0 wait at a barrier while rank 0 runs extra_metrics
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

    def gather(self, obj):
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

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- building blocks
def build_optimizer(cfg: dict, model: nn.Module) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": float(_opt(cfg, "WEIGHT_DECAY"))},
              {"params": no_decay, "weight_decay": 0.0}]
    name = str(_opt(cfg, "OPTIMIZER")).lower()
    lr = float(_opt(cfg, "LR"))
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    raise ValueError(f"OPTIMIZER must be 'adamw' or 'adam', got {name!r}")


def build_scheduler(cfg: dict, optimizer, updates_per_epoch: int):
    from timm.scheduler import CosineLRScheduler

    epochs = int(_opt(cfg, "EPOCHS"))
    warm = int(round(float(_opt(cfg, "WARMUP_EPOCHS")) * updates_per_epoch))
    total = max(1, epochs * updates_per_epoch)
    warm = min(warm, total - 1) if total > 1 else 0
    return CosineLRScheduler(optimizer, t_initial=max(1, total - warm), lr_min=float(_opt(cfg, "MIN_LR")),
                             warmup_t=warm, warmup_lr_init=float(_opt(cfg, "LR")) / 100,
                             warmup_prefix=True, t_in_epochs=False)


def _loader(ds: Dataset, batch_size: int, sampler, cfg: dict, device, collate_fn, drop_last: bool):
    workers = int(_opt(cfg, "NUM_WORKERS"))
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", drop_last=drop_last, collate_fn=collate_fn,
                      persistent_workers=False)


def _setup_logging(out_dir: Path, main: bool) -> logging.Handler | None:
    log.setLevel(logging.INFO)
    log.propagate = False
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               for h in log.handlers):
        sh = logging.StreamHandler()
        sh.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(sh)
    if not main:
        log.setLevel(logging.WARNING)
        return None
    fh = logging.FileHandler(out_dir / "train.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(fh)
    return fh


@torch.no_grad()
def evaluate(model: nn.Module, loader, device, amp: bool, channels_last: bool, show: bool = False):
    """-> (indices, probs (N,19), labels (N,19), loss sum, sample count) of one (sharded) loader."""
    model.eval()
    idx, probs, labels, loss_sum, n = [], [], [], 0.0, 0
    for batch in tqdm(loader, desc="val", leave=False, disable=not show, dynamic_ncols=True):
        batch = _to_device(batch, device, channels_last)
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp):
            out = model(batch)
        b = out["logits"].shape[0]
        if "loss" in out:
            loss_sum += float(out["loss"].float()) * b
        n += b
        probs.append(torch.sigmoid(out["logits"].float()).cpu().numpy())
        labels.append(batch["label"].float().cpu().numpy())
        if "index" in batch and isinstance(batch["index"], torch.Tensor):
            idx.append(batch["index"].cpu().numpy())
        else:
            idx.append(np.full(b, -1))
    if not probs:
        return np.zeros(0, int), np.zeros((0, 19)), np.zeros((0, 19)), 0.0, 0
    return np.concatenate(idx), np.concatenate(probs), np.concatenate(labels), loss_sum, n


# ----------------------------------------------------------------------------- the loop
def fit(cfg: dict, model: nn.Module, train_ds: Dataset, val_ds: Dataset | None, out_dir: str | Path,
        extra_metrics=None, collate_fn=None) -> dict:
    """Train ``model`` (``forward(batch) -> {"logits", "loss"}``) and return a summary dict:
    ``best_metric``, ``best_epoch``, ``last_epoch``, ``metrics`` (of the last epoch), ``history``
    (rows of summary.csv), ``out_dir``, ``stopped`` (True when StopTraining was raised).

    ``extra_metrics(model, device) -> dict`` runs on rank 0 after each validation, with the
    evaluated model (EMA or raw, unwrapped, eval mode); its values go to summary.csv and may be
    the MONITOR. Datasets may define ``set_epoch(epoch)``; it is called before each epoch.
    """
    out_dir = Path(out_dir)
    env = _Dist(str(_opt(cfg, "DEVICE")))
    try:
        return _fit(cfg, model, train_ds, val_ds, out_dir, extra_metrics, collate_fn, env)
    finally:
        for h in list(log.handlers):
            if isinstance(h, logging.FileHandler):
                log.removeHandler(h)
                h.close()
        env.close()


def _fit(cfg, model, train_ds, val_ds, out_dir, extra_metrics, collate_fn, env: _Dist) -> dict:
    device, main = env.device, env.main
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    env.barrier()
    _setup_logging(out_dir, main)
    epochs = int(_opt(cfg, "EPOCHS"))
    bs = int(_opt(cfg, "BATCH_SIZE"))
    accum = max(1, int(_opt(cfg, "ACCUM_STEPS")))
    seed = int(_opt(cfg, "SEED"))
    max_steps = int(_opt(cfg, "MAX_TRAIN_STEPS"))
    val_every = int(_opt(cfg, "VAL_EVERY"))
    if val_every < 1:
        raise ValueError(f"VAL_EVERY must be >= 1, got {val_every}")
    monitor = str(_opt(cfg, "MONITOR"))
    lower_better = "loss" in monitor
    cuda = device.type == "cuda"
    amp = bool(_opt(cfg, "AMP")) and cuda
    channels_last = cuda
    ema_decay = float(_opt(cfg, "EMA_DECAY"))
    grad_clip = float(_opt(cfg, "GRAD_CLIP"))
    if len(train_ds) == 0:
        raise ValueError("training dataset is empty")

    seed_everything(seed + env.rank)
    if main:
        config_mod.save(_jsonable(cfg), out_dir / "config.json")

    # --- model, optimizer, schedule
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = None
    if ema_decay > 0:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=ema_decay)
    optimizer = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    if env.enabled:
        sampler = DistributedSampler(train_ds, num_replicas=env.world, rank=env.rank, shuffle=True,
                                     seed=seed, drop_last=False)
    else:
        sampler = _EpochShuffleSampler(len(train_ds), seed)
    per_rank = math.ceil(len(train_ds) / env.world)
    drop_last = per_rank >= bs
    train_loader = _loader(train_ds, bs, sampler, cfg, device, collate_fn, drop_last)
    steps_per_epoch = len(train_loader)
    if max_steps > 0:
        steps_per_epoch = min(steps_per_epoch, max_steps)
    updates_per_epoch = math.ceil(steps_per_epoch / accum)
    scheduler = build_scheduler(cfg, optimizer, updates_per_epoch)

    val_loader = None
    if val_ds is not None and len(val_ds) > 0:
        shard = Subset(val_ds, list(range(env.rank, len(val_ds), env.world))) if env.enabled else val_ds
        val_loader = _loader(shard, bs, None, cfg, device, collate_fn, False)

    # --- resume
    start_epoch, num_updates = 1, 0
    best, best_epoch, history = None, 0, []
    last_path, best_path = out_dir / "last.pth", out_dir / "best.pth"
    if bool(_opt(cfg, "RESUME")) and last_path.is_file():
        ckpt = torch.load(last_path, map_location="cpu", weights_only=True)
        unwrap(model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if ema is not None and ckpt.get("ema"):
            ema.module.load_state_dict(ckpt["ema"])
        set_rng_state(ckpt["rng"])
        if env.rank > 0:
            torch.manual_seed(seed + 1000 * env.rank + int(ckpt["epoch"]))
        start_epoch = int(ckpt["epoch"]) + 1
        num_updates = int(ckpt.get("num_updates", (start_epoch - 1) * updates_per_epoch))
        best, best_epoch = ckpt.get("best_metric"), int(ckpt.get("best_epoch", 0))
        history = [dict(r) for r in ckpt.get("history", [])]
        log.info(f"resumed from {last_path} after epoch {start_epoch - 1} (best {monitor}={best})")
    elif bool(_opt(cfg, "RESUME")):
        log.info(f"RESUME: no {last_path}, starting from scratch")

    ddp_model = model
    if env.enabled:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if cuda else None,
            find_unused_parameters=bool(_opt(cfg, "DDP_FIND_UNUSED")))

    n_params = sum(p.numel() for p in model.parameters())
    log.info(f"device {device} x{env.world}, amp={amp}, params={n_params / 1e6:.2f}M, "
             f"train={len(train_ds)} val={len(val_ds) if val_ds is not None else 0}, "
             f"steps/epoch={steps_per_epoch}, accum={accum}, epochs {start_epoch}..{epochs}")

    stopped = False
    metrics: dict = history[-1] if history else {}
    for epoch in range(start_epoch, epochs + 1):
        t0 = time.time()
        for obj in (train_ds, sampler, val_ds):
            if obj is not None and hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
        ddp_model.train()
        optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # on device: no per-step sync
        n_bad = torch.zeros((), dtype=torch.int64, device=device)
        n_seen = 0
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{epochs}", disable=not main,
                   leave=False, dynamic_ncols=True)
        for step, batch in enumerate(train_loader):
            if step >= steps_per_epoch:
                break
            batch = _to_device(batch, device, channels_last)
            update_now = (step + 1) % accum == 0 or step + 1 == steps_per_epoch
            sync = contextlib.nullcontext() if (update_now or not env.enabled) else ddp_model.no_sync()
            with sync:
                with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp):
                    out = ddp_model(batch)
                loss = out["loss"]
                scaler.scale(loss / accum).backward()
            if update_now:
                if grad_clip > 0:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                num_updates += 1
                scheduler.step_update(num_updates)
                if ema is not None:
                    ema.update(model, step=num_updates)
            b = out["logits"].shape[0]
            ld = loss.detach().double()
            finite = torch.isfinite(ld)
            loss_sum += torch.where(finite, ld * b, torch.zeros_like(ld))
            n_bad += (~finite).long()
            n_seen += b
            bar.update(1)
            if step % 20 == 0 or step + 1 == steps_per_epoch:  # one host sync every 20 steps
                if int(n_bad) and not amp:  # under AMP the GradScaler skips non-finite steps
                    raise FloatingPointError(f"epoch {epoch} step {step}: non-finite loss")
                lr_now = optimizer.param_groups[0]["lr"]
                bar.set_postfix(loss=f"{float(loss_sum) / max(n_seen, 1):.4f}", lr=f"{lr_now:.2e}")
        bar.close()
        if int(n_bad):
            log.warning(f"epoch {epoch}: {int(n_bad)} step(s) with a non-finite loss (skipped by AMP)")
        train_loss = env.mean(float(loss_sum) / max(n_seen, 1))

        # --- validation (sharded, gathered)
        eval_model = ema.module if ema is not None else model
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "train_loss": train_loss}
        validate = epoch % val_every == 0 or epoch == epochs
        if val_loader is not None and validate:
            idx, probs, labels, vloss, vn = evaluate(eval_model, val_loader, device, amp, channels_last, main)
            parts = env.gather((idx, probs, labels, vloss, vn))
            probs = np.concatenate([p[1] for p in parts])
            labels = np.concatenate([p[2] for p in parts])
            row["val_loss"] = sum(p[3] for p in parts) / max(1, sum(p[4] for p in parts))
            row["val_mAP"] = image_map(labels, probs)
        extra = {}
        if main and extra_metrics is not None and validate:
            try:
                extra = dict(extra_metrics(eval_model, device) or {})
            except StopTraining:
                stopped = True
        stopped = bool(env.broadcast(stopped))
        if stopped:
            log.info(f"stopped during epoch {epoch} (before its checkpoint)")
            break
        row.update({k: float(v) for k, v in extra.items()})
        row["seconds"] = round(time.time() - t0, 2)
        metrics = row
        history.append(row)

        # --- best / last checkpoints, logs (rank 0)
        value = row.get(monitor)
        if value is None and val_loader is None:
            value = -float(epoch) if lower_better else float(epoch)  # no validation: best = last
        if value is None and validate:
            raise KeyError(f"MONITOR {monitor!r} is not among the metrics {sorted(row)}")
        improved = value is not None and value == value and (
            best is None or (value < best if lower_better else value > best))
        if improved:
            best, best_epoch = float(value), epoch
        if main:
            state = {
                "model": unwrap(model).state_dict(),
                "config": _jsonable(cfg),
                "model_name": str(cfg.get("MODEL_NAME", type(unwrap(model)).__name__)),
                "epoch": epoch,
                "num_updates": num_updates,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if amp else None,
                "ema": ema.module.state_dict() if ema is not None else None,
                "rng": get_rng_state(),
                "best_metric": best,
                "best_epoch": best_epoch,
                "metrics": row,
                "history": history,
            }
            if improved:  # best first: a crash between the two writes never loses the best epoch
                save_checkpoint(state, best_path)
            save_checkpoint(state, last_path)
            io.atomic_to_csv(pd.DataFrame(history), out_dir / "summary.csv")
            try:
                from common.plots import plot_training_curves

                plot_training_curves(out_dir / "summary.csv", out_dir / "curves.png")
            except Exception as e:  # noqa: BLE001 - a plot never stops training
                log.warning(f"curves.png not written: {e}")
            msg = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
            log.info(msg + (" *" if improved else ""))
        env.barrier()

    if main and not best_path.is_file() and last_path.is_file():  # e.g. every MONITOR value was NaN
        with io.atomic_path(best_path) as tmp:
            shutil.copyfile(last_path, tmp)
    env.barrier()
    last_epoch = history[-1]["epoch"] if history else 0
    return {"best_metric": best, "best_epoch": best_epoch, "last_epoch": last_epoch, "metrics": metrics,
            "history": history, "out_dir": str(out_dir), "stopped": stopped}


def describe_result(cfg: dict, result: dict) -> str:
    """One line on a finished ``fit``: the best monitored value, or that there was no validation."""
    if "val_loss" not in (result.get("metrics") or {}):
        return f"no validation (FOLD=-1): best.pth is the last epoch ({result['last_epoch']})"
    best = result.get("best_metric")
    best = f"{best:.4g}" if isinstance(best, float) else best
    return f"best {cfg['MONITOR']}={best} at epoch {result['best_epoch']}"
