"""Pipeline 2: a bag of cells of one image, trained with the image's label (multiple-instance learning).

:class:`BagModel` wraps a cell classifier (anything with ``logits(x (B,4,H,W)) -> (B,19)``):

    batch["image"] (B, N, 4, S, S) -> (B*N, 4, S, S) -> classifier.logits -> (B, N, 19) "cell_logits"
    "logits" (B, 19) = pool over the N cells (``MIL_POOL``: max | topk | lse | mean)
    "loss" = (MIL_W_MAX * BCE(pool) + MIL_W_MEAN * BCE(mean)) / (MIL_W_MAX + MIL_W_MEAN)

Row ``b*N + i`` of the flattened batch is cell ``i`` of bag ``b``. Pooling and the loss work on
logits (the max of logits is the logit of the max probability; the mean is the mean logit, which
keeps BCE-with-logits stable under AMP). N may be anything (S5 passes one bag per image with all
its cells); in inference (no grad) the cells go through the classifier in chunks of ``MIL_CHUNK``.

:class:`MILHead` (``MIL_POOL``, ``MIL_W_MAX``, ``MIL_W_MEAN``, ``MIL_TOPK``, ``MIL_LSE_R``) is the one
pooling + loss of cell logits, shared by :class:`BagModel` and ``cellpool.CellPoolModel``. The classes
take typed arguments; ``models.build_model`` reads them from a config (``models.mil_head``).

Self-training (S4.2 ``PSEUDO_LABELS``): a bag that carries ``cell_target (B, N, 19)`` and
``cell_has_target (B, N)`` (``bag_datasets.PseudoBagDataset``) adds ``PSEUDO_W *``
:func:`pseudo_loss` (per-cell BCE on the cells that have a target) to the MIL loss. ``PSEUDO_W`` is
used only then (``BagModel(..., pseudo_w=None)`` refuses such a bag): a model rebuilt for inference
from an older run's config needs no such key.

Pure torch: no module here reads a file or knows a dataset.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

POOLS = ("max", "topk", "lse", "mean")


def pool_cells(cell_logits: torch.Tensor, mode: str, k: int, r: float) -> torch.Tensor:
    """(B, N, C) -> (B, C): pool cell logits over the bag dimension (``k``: topk's k, ``r``: lse's r)."""
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


def mil_loss(cell_logits: torch.Tensor, target: torch.Tensor, mode: str, w_max: float, w_mean: float,
             k: int, r: float) -> torch.Tensor:
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


def pseudo_loss(cell_logits: torch.Tensor, target: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
    """Mean per-cell BCE over the cells with a target: logits/targets (B, N, 19), has (B, N)."""
    per_cell = F.binary_cross_entropy_with_logits(cell_logits.float(), target.float(),
                                                  reduction="none").mean(-1)
    w = has.float()
    return (per_cell * w).sum() / w.sum().clamp(min=1.0)


@dataclass(frozen=True)
class MILHead:
    """The pooling of cell logits into the image logit and its MIL loss (the ``MIL_*`` constants, read
    from a config by ``models.mil_head``)."""

    mode: str      # MIL_POOL: max | topk | lse | mean
    w_max: float   # MIL_W_MAX
    w_mean: float  # MIL_W_MEAN
    topk: int      # MIL_TOPK
    lse_r: float   # MIL_LSE_R

    def __post_init__(self):
        if self.mode not in POOLS:
            raise ValueError(f"MIL_POOL {self.mode!r}: expected one of {POOLS}")

    def pool(self, cell_logits: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, C): :func:`pool_cells` with ``MIL_POOL``."""
        return pool_cells(cell_logits, self.mode, self.topk, self.lse_r)

    def loss(self, cell_logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """:func:`mil_loss` of the cell logits (B, N, C) against the image label (B, C)."""
        return mil_loss(cell_logits, label, self.mode, self.w_max, self.w_mean, self.topk, self.lse_r)


class BagModel(nn.Module):
    """A cell classifier applied to every cell of a bag, pooled to the image label (see the module doc)."""

    def __init__(self, classifier: nn.Module, mil: MILHead, chunk: int, pseudo_w: float | None):
        """``mil``: the pooling and loss; ``chunk``: cells per forward pass in inference (``MIL_CHUNK``);
        ``pseudo_w``: the weight of the per-cell pseudo-label BCE (``PSEUDO_W``), None when the run's
        config has none (a bag carrying targets is then refused)."""
        super().__init__()
        self.classifier = classifier
        self.mil = mil
        self.chunk = int(chunk)
        self.pseudo_w = pseudo_w

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
        out = {"cell_logits": cells, "logits": self.mil.pool(cells)}
        if "label" in batch:
            out["loss"] = self.mil.loss(cells, batch["label"])
            if "cell_target" in batch:  # self-training (bag_datasets.PseudoBagDataset)
                if self.pseudo_w is None:
                    raise KeyError("BagModel: bags carry pseudo-labels but the config lacks 'PSEUDO_W' "
                                   "(S4.2's constant)")
                if self.pseudo_w > 0:
                    out["loss"] = out["loss"] + self.pseudo_w * pseudo_loss(
                        cells, batch["cell_target"], batch["cell_has_target"])
        return out

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Cell logits of single cells (B, 4, S, S) -> (B, 19) (the wrapped classifier's)."""
        return self.classifier.logits(x)
