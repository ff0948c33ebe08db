"""The distributed helpers of the training loop (like timm's ``utils/distributed.py``): the process
as torchrun launched it (:func:`launch`), its device and process group with the few collectives the
loop uses (:class:`DistEnv`: barrier, mean, gather, broadcast), rank 0's buffers on every rank
(:func:`sync_buffers`), the DDP wrapper (:func:`wrap_ddp`, :func:`unwrap`).

Under ``torchrun`` the process group is initialised (nccl on CUDA, gloo on CPU) with a long timeout
(ranks > 0 wait in a broadcast while rank 0 runs S4.2's cell-level validation). This is the only
module touching ``torch.distributed``.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import nn

from common.device import resolve_device


def launch() -> tuple[int, int, bool]:
    """``(rank, world size, distributed)`` of this process, as torchrun's environment gives them."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    return rank, world, "RANK" in os.environ and world > 1


class DistEnv:
    """This process's place in the run: ``rank``, ``world``, ``enabled`` (under torchrun), ``main``
    (rank 0), its ``device``; the collectives the loop uses (each a no-op in a single process)."""

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


def sync_buffers(module: nn.Module | None, env: DistEnv) -> None:
    """Every rank takes rank 0's buffers (BatchNorm running statistics drift apart per rank)."""
    if module is None or not env.enabled:
        return
    with torch.no_grad():
        for buf in module.buffers():
            env.broadcast_tensor(buf.data)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def wrap_ddp(model: nn.Module, env: DistEnv) -> nn.Module:
    """What trains: the DDP wrapper of ``model`` under torchrun, else ``model`` itself."""
    if not env.enabled:
        return model
    ids = [env.device.index] if env.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)
