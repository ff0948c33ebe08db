"""The training loop's data: the loaders of a run (:func:`make_loaders`: seeded shuffling whose order
depends only on (SEED, epoch), a DistributedSampler under DDP, each rank's shard of the validation
set) and their plan, known without building them (:func:`epoch_plan`: batches and optimizer updates
per epoch, which ``last.pth`` records and a resume must match).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from common.training.distributed import DistEnv


class EpochShuffleSampler(Sampler):
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


@dataclass
class Loaders:
    """An epoch's data: the loaders and the datasets they read (``set_epoch`` each epoch)."""
    train: DataLoader
    sampler: Sampler
    val: DataLoader | None
    steps: int      # batches per epoch (MAX_TRAIN_STEPS applied)
    updates: int    # optimizer updates per epoch
    train_ds: Dataset
    val_ds: Dataset | None


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


def make_loaders(cfg: dict, train_ds: Dataset, val_ds: Dataset | None, env: DistEnv, collate_fn) -> Loaders:
    """Training loader (seeded shuffling, DistributedSampler under DDP), validation shard of this rank."""
    steps, updates, drop_last = epoch_plan(cfg, len(train_ds), env.world, env.enabled)
    bs, seed = int(cfg["BATCH_SIZE"]), int(cfg["SEED"])
    if env.enabled:
        sampler = DistributedSampler(train_ds, num_replicas=env.world, rank=env.rank, shuffle=True,
                                     seed=seed, drop_last=False)
    else:
        sampler = EpochShuffleSampler(len(train_ds), seed)
    kw = dict(num_workers=int(cfg["NUM_WORKERS"]), pin_memory=env.device.type == "cuda",
              collate_fn=collate_fn, persistent_workers=False)
    train = DataLoader(train_ds, batch_size=bs, sampler=sampler, drop_last=drop_last, **kw)
    val = None
    if val_ds is not None and len(val_ds) > 0:
        shard = Subset(val_ds, list(range(env.rank, len(val_ds), env.world))) if env.enabled else val_ds
        val = DataLoader(shard, batch_size=bs, sampler=None, drop_last=False, **kw)
    return Loaders(train, sampler, val, steps, updates, train_ds, val_ds)
