"""Multi-label losses on logits ``(B, C)`` and float targets ``(B, C)`` in [0, 1].

* ``bce``    binary cross-entropy with logits, mean over all elements.
* ``focal``  sigmoid focal loss (``torchvision.ops.sigmoid_focal_loss``), gamma
  :data:`FOCAL_GAMMA`, no alpha weighting, mean over all elements.
* ``focal_sum`` the original's focal of its "masked" models: alpha 0.25, gamma 2, summed.
* ``lovasz`` symmetric Lovász hinge, per class over the batch:
  ``(L(z_c, y_c) + L(-z_c, 1 - y_c)) / 2`` averaged over the classes, where ``L`` is the Lovász
  hinge of Berman et al. 2018 (a convex surrogate of 1 - IoU of the batch's positives).
* ``hard``   hard log loss (the HPA-2019 winner's ``HardLogLoss``): for each class, BCE over all
  positives of the batch plus the hardest negatives (highest logits), their number being
  ``min(max(2 * n_pos, n_neg // 2), int(0.7 * n_neg))``; averaged over the classes that select
  anything.

:func:`build_loss` turns a name or spec into one callable: ``"bce"``, ``"focal"``,
``"lovasz"`` (the original "lovasz" config: 0.5 focal + 0.5 symmetric Lovász + 0.5 hard log loss)
or ``"focal:1,bce:0.5"`` (term:weight pairs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

FOCAL_GAMMA = 2.5          # focusing parameter of the focal term (the original used 2.5)
FOCAL_SUM_ALPHA = 0.25     # focal_sum (the original's masked models): alpha ...
FOCAL_SUM_GAMMA = 2.0      # ... and gamma
HARD_NEG_MORE = 2          # hard log loss: at least this many negatives per positive
HARD_NEG_LEAST = 0.5       # ... and at least this fraction of the negatives
HARD_NEG_MAX = 0.7         # ... but at most this fraction of the negatives

PRESETS: dict[str, dict[str, float]] = {
    "bce": {"bce": 1.0},
    "focal": {"focal": 1.0},
    "focal_sum": {"focal_sum": 1.0},
    "lovasz": {"focal": 0.5, "lovasz": 0.5, "hard": 0.5},
}


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    return sigmoid_focal_loss(logits.float(), target.float(), alpha=-1, gamma=gamma, reduction="mean")


def focal_sum_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The original's pipeline-1 "focal": alpha 0.25, gamma 2, summed over the batch and classes."""
    return sigmoid_focal_loss(logits.float(), target.float(), alpha=FOCAL_SUM_ALPHA, gamma=FOCAL_SUM_GAMMA,
                              reduction="sum")


def _lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


def lovasz_hinge_flat(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Lovász hinge of one flat vector of logits against binary labels."""
    if logits.numel() == 0:
        return logits.sum() * 0.0
    signs = 2.0 * labels - 1.0
    errors = 1.0 - logits * signs
    errors_sorted, perm = torch.sort(errors, descending=True)
    grad = _lovasz_grad(labels[perm])
    return torch.dot(F.relu(errors_sorted), grad)


def lovasz_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Symmetric Lovász hinge, per class over the batch, averaged over the classes."""
    z, y = logits.float(), (target.float() > 0.5).float()
    per_class = [(lovasz_hinge_flat(z[:, c], y[:, c]) + lovasz_hinge_flat(-z[:, c], 1.0 - y[:, c])) / 2
                 for c in range(z.shape[1])]
    return torch.stack(per_class).mean()


def hard_log_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE per class on the positives plus the hardest negatives, averaged over classes."""
    z, y = logits.float(), target.float()
    terms = []
    for c in range(z.shape[1]):
        zc, yc = z[:, c], y[:, c]
        pos = yc > 0.5
        neg_z = zc[~pos]
        n_pos, n_neg = int(pos.sum()), int(neg_z.numel())
        k = min(max(n_pos * HARD_NEG_MORE, int(n_neg * HARD_NEG_LEAST)), int(n_neg * HARD_NEG_MAX))
        hard = torch.topk(neg_z, k).values if k > 0 else neg_z[:0]
        sel_z = torch.cat([zc[pos], hard])
        if sel_z.numel() == 0:
            continue
        sel_y = torch.cat([yc[pos], torch.zeros_like(hard)])
        terms.append(F.binary_cross_entropy_with_logits(sel_z, sel_y))
    if not terms:
        return z.sum() * 0.0
    return torch.stack(terms).mean()


TERMS = {"bce": bce_loss, "focal": focal_loss, "focal_sum": focal_sum_loss, "lovasz": lovasz_loss,
         "hard": hard_log_loss, "hardlog": hard_log_loss}


def parse_spec(name: str) -> dict[str, float]:
    """``"lovasz"`` -> preset weights; ``"focal:1,bce:0.5"`` -> {"focal": 1.0, "bce": 0.5}."""
    name = str(name).strip().lower()
    if name in PRESETS:
        return dict(PRESETS[name])
    out: dict[str, float] = {}
    for part in name.split(","):
        part = part.strip()
        if not part:
            continue
        term, _, w = part.partition(":")
        term = term.strip()
        if term not in TERMS:
            raise ValueError(f"unknown loss term {term!r} in {name!r}; terms: {sorted(TERMS)}, "
                             f"presets: {sorted(PRESETS)}")
        try:
            out[term] = out.get(term, 0.0) + (float(w) if w.strip() else 1.0)
        except ValueError:
            raise ValueError(f"bad weight {w!r} for loss term {term!r} in {name!r}") from None
    if not out:
        raise ValueError(f"empty loss spec {name!r}")
    return out


class WeightedLoss(nn.Module):
    """sum_i w_i * term_i(logits, target); ``.weights`` holds the parsed spec."""

    def __init__(self, weights: dict[str, float]):
        super().__init__()
        self.weights = dict(weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = None
        for term, w in self.weights.items():
            v = w * TERMS[term](logits, target)
            total = v if total is None else total + v
        return total

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v:g}" for k, v in self.weights.items())


def build_loss(name: str) -> WeightedLoss:
    """A callable ``(logits, target) -> scalar`` from a preset name or a ``term:weight,…`` spec."""
    return WeightedLoss(parse_spec(name))
