"""Self-training: soft per-cell pseudo-labels from out-of-fold scores, and the bags that train on them.

:func:`make_pseudo_labels` (used by ``tools/make_pseudo_labels.py``) scores every cell of the
training images with trained runs, but an image is scored ONLY by runs whose validation fold is
the image's fold (``config FOLD == fold``): S3 and S4.2 train a ``FOLD=k`` run on the rows with
``fold != k``, so no run labels an image it trained on; ``FOLD=-1`` runs (trained on everything)
label nothing. The ensemble mean ``p`` of the eligible runs becomes the soft target
``t = p * y`` (``y`` the image's multi-hot label: a cell cannot have a class its image lacks);
with ``normalize="max"`` each present class is divided by its largest cell score in the image
(the image label says at least one cell has it). Images with no eligible run get no rows.

CSV columns: ``ID, cell_id, fold, n_runs, t0..t18``.

S4.2 ``PSEUDO_LABELS=<csv>``: :class:`PseudoBagDataset` adds ``cell_target (N, 19)`` and
``cell_has_target (N,)`` to each bag (the bag's label broadcast when a label augmentation rewrote
it); ``mil.BagModel`` then adds ``PSEUDO_W *`` :func:`pseudo_loss` (per-cell BCE on the cells that
have a target) to its MIL loss.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from common import cells, io
from common.bag_datasets import BagDataset
from common.constants import NUM_CLASSES
from common.datasets import labels_to_multihot

TARGET_COLS = [f"t{c}" for c in range(NUM_CLASSES)]
NORMALIZE = ("none", "max")


def run_fold(predictor) -> int:
    """The validation fold of a run (its saved ``FOLD``; -1 = trained on all folds)."""
    return int(predictor.cfg.get("FOLD", -1))


def eligible(predictors: list, image_fold: int) -> list[int]:
    """Indices of the runs allowed to label an image of ``image_fold``: those that held it out."""
    return [i for i, p in enumerate(predictors) if run_fold(p) >= 0 and run_fold(p) == int(image_fold)]


def soft_targets(probs: np.ndarray, label: np.ndarray, normalize: str = "max") -> np.ndarray:
    """Cell probabilities ``(n, 19)`` x the image's multi-hot ``label`` -> targets ``(n, 19)`` in [0, 1]."""
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize {normalize!r}: expected one of {NORMALIZE}")
    t = probs.astype(np.float32) * label[None].astype(np.float32)
    if normalize == "max" and len(t):
        t = t / np.maximum(t.max(axis=0, keepdims=True), 1e-6)
    return np.clip(t, 0.0, 1.0)


def make_pseudo_labels(train_df: pd.DataFrame, predictors: list, image_dir: str | Path,
                       mask_dir: str | Path, original_dir: str | Path | None = None,
                       normalize: str = "max", progress: bool = False) -> pd.DataFrame:
    """Soft targets of every cell of ``train_df``'s images (ID, Label, fold) from out-of-fold runs."""
    from tqdm import tqdm

    rows = []
    for r in tqdm(list(train_df.itertuples(index=False)), disable=not progress, desc="pseudo-labels"):
        iid, fold = str(r.ID), int(r.fold)
        use = eligible(predictors, fold)
        if not use:
            continue
        image = io.read_rgby(Path(image_dir) / f"{iid}.png")
        labels = io.load_masks(Path(mask_dir) / f"{iid}.npz")[0]
        ids = cells.cell_ids(labels)
        if not ids:
            continue
        original = None
        if original_dir and any(predictors[i].pipeline == 2 and predictors[i].from_original for i in use) \
                and io.channel_path(original_dir, iid, "red").is_file():
            original = io.read_image(original_dir, iid)
        probs = np.mean([predictors[i].predict(image, labels, ids, original)[0] for i in use], axis=0)
        t = soft_targets(probs, labels_to_multihot(r.Label), normalize)
        for c, tc in zip(ids, t):
            rows.append([iid, int(c), fold, len(use), *np.round(tc, 6)])
    return pd.DataFrame(rows, columns=["ID", "cell_id", "fold", "n_runs", *TARGET_COLS])


def read_pseudo_labels(path: str | Path) -> dict[tuple[str, int], np.ndarray]:
    """A pseudo-label CSV -> ``{(ID, cell_id): (19,) float32}`` (names the file when malformed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pseudo-label CSV not found "
                                "(make it with tools/make_pseudo_labels.py)")
    df = io.read_id_table(path, ["ID", "cell_id", *TARGET_COLS], ["cell_id"], unique=False, str_columns=())
    t = df[TARGET_COLS].to_numpy(np.float32)
    if not np.isfinite(t).all() or (t < 0).any() or (t > 1).any():
        raise ValueError(f"{path}: targets must be finite and in [0, 1]")
    return {(i, int(c)): v for i, c, v in zip(df["ID"], df["cell_id"], t)}


class PseudoBagDataset(BagDataset):
    """:class:`common.bag_datasets.BagDataset` whose bags also carry each cell's soft target."""

    def __init__(self, *args, pseudo: dict[tuple[str, int], np.ndarray], **kw):
        super().__init__(*args, **kw)
        self.pseudo = pseudo

    def __getitem__(self, idx: int) -> dict:
        out = super().__getitem__(idx)
        iid, label = out["id"], out["label"].numpy()
        rewritten = not np.array_equal(label, self.labels[idx])  # a label augmentation fired
        target = np.zeros((len(out["cell_ids"]), NUM_CLASSES), np.float32)
        has = np.zeros(len(out["cell_ids"]), np.float32)
        for k, c in enumerate(out["cell_ids"].tolist()):
            t = self.pseudo.get((iid, int(c)))
            if rewritten:
                target[k], has[k] = label, 1.0
            elif t is not None:
                target[k], has[k] = t, 1.0
        out["cell_target"] = torch.from_numpy(target)
        out["cell_has_target"] = torch.from_numpy(has)
        return out


def pseudo_loss(cell_logits: torch.Tensor, target: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
    """Mean per-cell BCE over the cells with a target: logits/targets (B, N, 19), has (B, N)."""
    per_cell = F.binary_cross_entropy_with_logits(cell_logits.float(), target.float(),
                                                  reduction="none").mean(-1)
    w = has.float()
    return (per_cell * w).sum() / w.sum().clamp(min=1.0)
