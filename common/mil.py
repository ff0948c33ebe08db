"""Pipeline 2: a bag of cells of one image, trained with the image's label (multiple-instance learning).

:class:`BagModel` wraps a cell classifier (anything with ``logits(x (B,4,H,W)) -> (B,19)``):

    batch["image"] (B, N, 4, S, S) -> (B*N, 4, S, S) -> classifier.logits -> (B, N, 19) "cell_logits"
    "logits" (B, 19) = pool over the N cells (``MIL_POOL``: max | topk | lse | mean)
    "loss" = (MIL_W_MAX * BCE(pool) + MIL_W_MEAN * BCE(mean)) / (MIL_W_MAX + MIL_W_MEAN)

Row ``b*N + i`` of the flattened batch is cell ``i`` of bag ``b``. Pooling and the loss work on
logits (the max of logits is the logit of the max probability; the mean is the mean logit, which
keeps BCE-with-logits stable under AMP). N may be anything (S5 passes one bag per image with all
its cells); in inference (no grad) the cells go through the classifier in chunks of ``MIL_CHUNK``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

POOLS = ("max", "topk", "lse", "mean")
MIL_KEYS = ("MIL_POOL", "MIL_W_MAX", "MIL_W_MEAN", "MIL_TOPK", "MIL_LSE_R", "MIL_CHUNK")  # S4.2 constants


def pool_cells(cell_logits: torch.Tensor, mode: str = "max", k: int = 4, r: float = 5.0) -> torch.Tensor:
    """(B, N, C) -> (B, C): pool cell logits over the bag dimension."""
    if mode == "max":
        return cell_logits.amax(dim=1)
    if mode == "mean":
        return cell_logits.mean(dim=1)
    if mode == "topk":
        k = max(1, min(int(k), cell_logits.shape[1]))
        return cell_logits.topk(k, dim=1).values.mean(dim=1)
    if mode == "lse":  # (1/r) * log(mean(exp(r * x)))
        n = cell_logits.shape[1]
        return (torch.logsumexp(r * cell_logits, dim=1) - math.log(n)) / r
    raise ValueError(f"MIL_POOL {mode!r}: expected one of {POOLS}")


def mil_loss(cell_logits: torch.Tensor, target: torch.Tensor, mode: str = "max", w_max: float = 4.0,
             w_mean: float = 1.0, k: int = 4, r: float = 5.0) -> torch.Tensor:
    """``(w_max * BCE(pool(cells)) + w_mean * BCE(mean(cells))) / (w_max + w_mean)`` vs the image label."""
    if w_max + w_mean <= 0:
        raise ValueError("MIL_W_MAX + MIL_W_MEAN must be > 0")
    x = cell_logits.float()
    target = target.float()
    pooled = pool_cells(x, mode, k, r)
    loss = w_max * F.binary_cross_entropy_with_logits(pooled, target)
    if w_mean:
        loss = loss + w_mean * F.binary_cross_entropy_with_logits(x.mean(dim=1), target)
    return loss / (w_max + w_mean)


class BagModel(nn.Module):
    """A cell classifier applied to every cell of a bag, pooled to the image label (see the module doc)."""

    def __init__(self, classifier: nn.Module, cfg: dict):
        super().__init__()
        missing = [k for k in MIL_KEYS if k not in cfg]
        if missing:
            raise KeyError(f"BagModel: the config lacks {missing} (S4.2's constants)")
        self.classifier = classifier
        self.pool = str(cfg["MIL_POOL"]).lower()
        if self.pool not in POOLS:
            raise ValueError(f"MIL_POOL {self.pool!r}: expected one of {POOLS}")
        self.w_max, self.w_mean = float(cfg["MIL_W_MAX"]), float(cfg["MIL_W_MEAN"])
        self.topk, self.lse_r = int(cfg["MIL_TOPK"]), float(cfg["MIL_LSE_R"])
        self.chunk = int(cfg["MIL_CHUNK"])
        self.pseudo_w = float(cfg.get("PSEUDO_W", 1.0))  # weight of the per-cell pseudo-label BCE

    def cell_logits(self, image: torch.Tensor) -> torch.Tensor:
        """(B, N, 4, S, S) -> (B, N, 19); cell i of bag b is row b*N + i of the classifier's batch."""
        if image.ndim != 5:
            raise ValueError(f"BagModel expects image of shape (B, N, 4, S, S), got {tuple(image.shape)}")
        b, n = image.shape[:2]
        flat = image.reshape(b * n, *image.shape[2:])
        if not torch.is_grad_enabled() and self.chunk > 0 and flat.shape[0] > self.chunk:
            out = torch.cat([self.classifier.logits(flat[s:s + self.chunk])
                             for s in range(0, flat.shape[0], self.chunk)])
        else:
            out = self.classifier.logits(flat)
        return out.reshape(b, n, out.shape[-1])

    def forward(self, batch: dict) -> dict:
        cells = self.cell_logits(batch["image"])
        out = {"cell_logits": cells, "logits": pool_cells(cells, self.pool, self.topk, self.lse_r)}
        if "label" in batch:
            out["loss"] = mil_loss(cells, batch["label"], self.pool, self.w_max, self.w_mean,
                                   self.topk, self.lse_r)
            if "cell_target" in batch and self.pseudo_w > 0:  # self-training (common/pseudo.py)
                from common.pseudo import pseudo_loss

                out["loss"] = out["loss"] + self.pseudo_w * pseudo_loss(
                    cells, batch["cell_target"], batch["cell_has_target"])
        return out

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Cell logits of single cells (B, 4, S, S) -> (B, 19) (the wrapped classifier's)."""
        return self.classifier.logits(x)
