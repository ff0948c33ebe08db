"""Cell pooling: score every cell of an image from ONE forward pass through a pipeline-1 backbone.

The whole image goes through the backbone once (timm ``forward_features`` -> ``(B, F, h, w)``);
each cell's mask is downsampled to the feature grid with AREA weights (the fraction of each grid
cell the mask covers, :func:`cell_weights`), the feature map is averaged under those weights, and
the pooled vector goes through the rest of the network (timm ``forward_head`` of a ``1 x 1`` map,
which is the identity for average pooling and keeps any conv head after the pooling) and the
classifier head. With a linear head this equals the class-activation map averaged over the cell;
a one-cell image whose cell is the whole image gives exactly the plain image prediction.

* Test time (no retraining): ``RunPredictor(..., view=ViewChoice("cellpool"))`` (S5 ``P1_VARIANT``) scores
  any pipeline-1 checkpoint so (``views.CellPoolView``). ``stride`` rebuilds the backbone with timm's
  ``output_stride`` (8 | 16, dilated; same weights) and ``size`` changes the input side, for a grid
  that resolves cells (stride 32 at 128 px is a 4 x 4 grid).
* Training (S3 ``VARIANT="cellpool"``): ``datasets.CellPoolDataset`` returns the image, its augmented
  cell label map and ``CELLPOOL_CELLS`` sampled cell ids; :class:`CellPoolModel` pools each cell's
  logits from the one feature map and trains them with the MIL head of :mod:`common.models.mil`
  (``mil.MILHead``: ``MIL_POOL``, ``MIL_W_MAX``, ``MIL_W_MEAN``, ``MIL_TOPK``, ``MIL_LSE_R``).
  Its state dict has the keys of ``models.ImageModel``, so either scoring reads it.

Model code only (torch): no dataset, no file reading here.
"""
from __future__ import annotations

import timm
import torch
from torch import nn

from common.models.mil import MILHead


# ----------------------------------------------------------------------------- geometry
def cell_weights(cell_map: torch.Tensor, cell_ids: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Area weights of cells on a feature grid.

    ``cell_map`` (B, H, W) integer label maps, ``cell_ids`` (B, N) ids -> (B, N, h, w) float32,
    each row summing to 1: the number of the cell's pixels in each grid cell over its area. A pixel
    belongs to the grid cell holding its centre, so the weights are exact areas when h divides H
    (e.g. 512 -> 16). An id with no pixel (a cell pushed out by an augmentation) gets uniform
    weights, i.e. the whole image.
    """
    if cell_map.ndim != 3 or cell_ids.ndim != 2 or cell_map.shape[0] != cell_ids.shape[0]:
        raise ValueError(f"cell_weights: expected (B, H, W) and (B, N), got {tuple(cell_map.shape)} "
                         f"and {tuple(cell_ids.shape)}")
    b, hh, ww = cell_map.shape
    h, w = int(grid[0]), int(grid[1])
    dev = cell_map.device
    cell_map = cell_map.long()
    ids = cell_ids.long().clamp(min=0)
    n_ids = int(max(int(cell_map.max()) if cell_map.numel() else 0, int(ids.max()) if ids.numel() else 0)) + 1
    gy = ((torch.arange(hh, device=dev) + 0.5) * h / hh).long().clamp(max=h - 1)
    gx = ((torch.arange(ww, device=dev) + 0.5) * w / ww).long().clamp(max=w - 1)
    bins = gy[:, None] * w + gx[None, :]                                        # (H, W)
    offset = torch.arange(b, device=dev)[:, None, None] * n_ids
    idx = ((offset + cell_map) * (h * w) + bins[None]).reshape(-1)
    counts = torch.bincount(idx, minlength=b * n_ids * h * w).reshape(b, n_ids, h * w).float()
    rows = torch.gather(counts, 1, ids[:, :, None].expand(-1, -1, h * w))       # (B, N, h*w)
    total = rows.sum(-1, keepdim=True)
    rows = torch.where(total > 0, rows / total.clamp(min=1), torch.full_like(rows, 1.0 / (h * w)))
    return rows.reshape(b, ids.shape[1], h, w)


def set_output_stride(classifier: nn.Module, stride: int) -> nn.Module:
    """Rebuild ``classifier.backbone`` with timm's ``output_stride`` (dilated convolutions; the same
    parameters, copied over). ``stride`` 0 or 32 leaves it as it is."""
    stride = int(stride)
    if stride in (0, 32):
        return classifier
    if stride not in (8, 16):
        raise ValueError(f"output stride must be 0, 8, 16 or 32, got {stride}")
    old = classifier.backbone
    in_chans = next(m for m in old.modules() if isinstance(m, nn.Conv2d)).in_channels
    try:
        new = timm.create_model(classifier.model_name, pretrained=False, in_chans=in_chans, num_classes=0,
                                output_stride=stride)
    except TypeError as e:
        raise ValueError(f"{classifier.model_name}: timm cannot build it with output_stride={stride} "
                         f"({e})") from e
    new.load_state_dict(old.state_dict())
    classifier.backbone = new.to(next(old.parameters()).device).train(old.training)
    return classifier


def feature_map(classifier: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, 4, S, S) -> the backbone's last feature map (B, F, h, w) (before global pooling)."""
    fmap = classifier.backbone.forward_features(x)
    if fmap.ndim != 4:
        raise ValueError(f"{classifier.model_name}: forward_features gives shape {tuple(fmap.shape)}, "
                         "not a (B, F, h, w) map: cell pooling needs a convolutional backbone")
    return fmap


def pooled_logits(classifier: nn.Module, fmap: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Feature map (B, F, h, w) and weights (B, N, h, w) -> cell logits (B, N, 19)."""
    b, n = weights.shape[:2]
    pooled = torch.einsum("bfhw,bnhw->bnf", fmap, weights.to(fmap.dtype))
    feats = classifier.backbone.forward_head(pooled.reshape(b * n, -1, 1, 1))  # global pool of 1x1 = id
    return classifier.head_logits(feats).reshape(b, n, -1)


# ----------------------------------------------------------------------------- training
class CellPoolModel(nn.Module):
    """Pipeline 1 trained with cell pooling: one backbone pass per image, a logit per cell, MIL.

    ``batch["image"]`` (B, 4, S, S), ``batch["cell_map"]`` (B, S, S), ``batch["cell_ids"]`` (B, N)
    -> ``cell_logits`` (B, N, 19), ``logits`` (B, 19) = ``MIL_POOL`` over the cells, ``loss`` =
    the MIL loss (:class:`common.models.mil.MILHead`) against ``label``. Without ``cell_map`` (a plain
    image batch) the logits are the plain image logits.
    """

    def __init__(self, classifier: nn.Module, mil: MILHead, stride: int):
        """``stride``: the backbone's output stride (``CELLPOOL_STRIDE``, :func:`set_output_stride`)."""
        super().__init__()
        self.classifier = set_output_stride(classifier, stride)
        self.mil = mil

    def cell_logits(self, image: torch.Tensor, cell_map: torch.Tensor,
                    cell_ids: torch.Tensor) -> torch.Tensor:
        fmap = feature_map(self.classifier, image)
        weights = cell_weights(cell_map, cell_ids, tuple(fmap.shape[-2:]))
        return pooled_logits(self.classifier, fmap, weights)

    def forward(self, batch: dict) -> dict:
        if "cell_map" not in batch:
            return {"logits": self.classifier.logits(batch["image"])}
        cells = self.cell_logits(batch["image"], batch["cell_map"], batch["cell_ids"])
        out = {"cell_logits": cells, "logits": self.mil.pool(cells)}
        if "label" in batch:
            out["loss"] = self.mil.loss(cells, batch["label"])
        return out

