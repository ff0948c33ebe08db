"""Pipeline-2 data: the cell-crop files of S4.1 and the bag-of-cells dataset of S4.2.

Crops live at ``{cells_dir}/{ID}_{cell:04d}.png`` (:func:`common.data.crop_files.crop_path`, 4-channel RGBY
PNG written by S4.1's worker :func:`common.data.crop_files.crop_image_cells`), indexed by a CSV with columns
``ID, cell_id, x0, y0, x1, y1, area, border`` (512-px coordinates).

:class:`BagDataset` returns, per image, a bag of ``cells_per_image`` crops (sampled without
replacement, with replacement when the image has fewer cells), each augmented independently
(flips, transpose, shift-scale-rotate), then the HPA green-channel label augmentations drawn
ONCE per bag (so every cell and the bag label agree), normalised with ``augment.normalize``:
``dict(image (N, 4, S, S) float, label (19,) float, id str, cell_ids (N,) long)``.

Self-training (S4.2 ``PSEUDO_LABELS=<csv>``, made by ``tools/make_pseudo_labels.py``; columns
``ID, cell_id, fold, n_runs, t0..t18``): :func:`read_pseudo_labels` reads the table and
:class:`PseudoBagDataset` adds ``cell_target (N, 19)`` and ``cell_has_target (N,)`` to each bag (the
bag's label broadcast when a label augmentation rewrote it); ``mil.BagModel`` then adds
``PSEUDO_W *`` ``mil.pseudo_loss`` to its MIL loss.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from common import images, io
from common.constants import NUM_CLASSES
from common.data import augment as aug_lib
from common.data.crop_files import crop_path
from common.data.datasets import external_flags, labels_to_multihot
from common.resize import resize_image

log = logging.getLogger(__name__)
TARGET_COLS = [f"t{c}" for c in range(NUM_CLASSES)]  # the soft targets of a pseudo-label table


# ----------------------------------------------------------------------------- image table
# ----------------------------------------------------------------------------- augmentation
def cell_augmentation(p_flip: float = 0.5, p_ssr: float = 0.5, shift: float = 0.0625, scale: float = 0.1,
                      rotate: float = 45.0):
    """The per-cell albumentations pipeline: h/v flips, transpose, shift-scale-rotate (black border).

    The defaults are albumentations' ShiftScaleRotate defaults (milder than pipeline 1's 0.2/0.2:
    a crop is tight around its cell, a 20% shift would push part of the cell out).
    """
    return A.Compose([
        A.HorizontalFlip(p=p_flip),
        A.VerticalFlip(p=p_flip),
        A.Transpose(p=p_flip),
        A.Affine(translate_percent=(-shift, shift), scale=(1 - scale, 1 + scale), rotate=(-rotate, rotate),
                 interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_CONSTANT, fill=0, p=p_ssr),
    ])


# ----------------------------------------------------------------------------- the bag dataset
class BagDataset(Dataset):
    """Bags of cell crops of the images of ``df`` (columns ID, Label, optional is_ext).

    ``index_df``: S4.1's index (ID, cell_id, ...). Images of ``df`` with no cell in the index are
    left out (counted in ``self.n_without_cells`` and logged). Crops of another size than
    ``cell_size`` are resized. Randomness of bag ``i`` in epoch ``e`` comes from
    ``np.random.default_rng([seed, e, i])`` (``set_epoch`` is called by ``train.fit``), so it does
    not depend on the worker count and survives a resume; ``augment=False`` (validation) gives
    the same bag every epoch and no augmentation. ``label_aug``: a
    :class:`common.data.augment.LabelAugment` (S4.2's P_* constants), drawn once per bag.
    """

    def __init__(self, df: pd.DataFrame, cells_dir: str | Path, index_df: pd.DataFrame,
                 cells_per_image: int, cell_size: int, augment: bool,
                 label_aug: aug_lib.LabelAugment | None = None, seed: int = 0):
        for col in ("ID", "Label"):
            if col not in df.columns:
                raise ValueError(f"BagDataset: the image table has no {col!r} column; has {list(df.columns)}")
        for col in ("ID", "cell_id"):
            if col not in index_df.columns:
                raise ValueError(f"BagDataset: the cell index has no {col!r} column; "
                                 f"has {list(index_df.columns)}")
        if cells_per_image < 1:
            raise ValueError("cells_per_image must be >= 1")
        self.cells_dir = Path(cells_dir)
        self.cells_per_image = int(cells_per_image)
        self.cell_size = int(cell_size)
        self.augment = bool(augment)
        self.seed = int(seed)
        self.epoch = 0
        groups = {str(k): np.sort(g.to_numpy(np.int64))
                  for k, g in index_df.groupby(index_df["ID"].astype(str), sort=False)["cell_id"]}
        has = df["ID"].astype(str).isin(groups.keys()).to_numpy()
        self.n_without_cells = int((~has).sum())
        kept = df[has].reset_index(drop=True)
        self.ids = kept["ID"].astype(str).tolist()
        self.cells = [groups[i] for i in self.ids]
        labels = []
        for i, lab in enumerate(kept["Label"].tolist()):
            try:
                labels.append(labels_to_multihot(lab))
            except ValueError as e:
                raise ValueError(f"image {self.ids[i]}: {e}") from None
        self.labels = np.stack(labels) if labels else np.zeros((0, NUM_CLASSES), np.float32)
        self.sources = ["external" if e else "competition" for e in external_flags(kept)]
        if self.n_without_cells:
            log.warning("BagDataset: %d of %d images have no cell crops and are left out",
                        self.n_without_cells, len(df))
        self.transforms = cell_augmentation() if self.augment else None
        self.label_aug = label_aug if self.augment else None

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rng(self, idx: int) -> np.random.Generator:
        key = [self.seed, self.epoch, int(idx)] if self.augment else [self.seed, int(idx)]
        return np.random.default_rng(key)

    def sample_cells(self, idx: int, rng: np.random.Generator) -> np.ndarray:
        """``cells_per_image`` cell ids of image ``idx`` (with replacement only when it has fewer)."""
        cells = self.cells[idx]
        return rng.choice(cells, size=self.cells_per_image, replace=len(cells) < self.cells_per_image)

    def read_cell(self, image_id: str, cell_id: int) -> np.ndarray:
        img = images.read_rgby(crop_path(self.cells_dir, image_id, cell_id))
        return resize_image(img, self.cell_size)

    def load_bag(self, idx: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(stack (N, S, S, 4) uint8, label (19,) float32, cell_ids (N,))`` before normalisation."""
        image_id = self.ids[idx]
        chosen = self.sample_cells(idx, rng)
        stack = np.empty((len(chosen), self.cell_size, self.cell_size, 4), np.uint8)
        if self.transforms is not None:  # seeded once per bag from rng (cheaper than once per cell)
            seed = int(rng.integers(2**63 - 1))
            self.transforms.set_random_state(np.random.default_rng(seed), random.Random(seed))
        for k, c in enumerate(chosen):
            cell = self.read_cell(image_id, int(c))
            stack[k] = cell if self.transforms is None else self.transforms(image=cell)["image"]
        label = self.labels[idx].copy()
        if self.label_aug is not None:  # one draw for the whole bag: cells and label stay consistent
            stack, label = self.label_aug(stack, label, rng)
        return stack, label, chosen

    def __getitem__(self, idx: int) -> dict:
        stack, label, chosen = self.load_bag(idx, self.rng(idx))
        return dict(image=aug_lib.normalize(stack, self.sources[idx]),
                    label=torch.from_numpy(np.asarray(label, np.float32)),
                    id=self.ids[idx], cell_ids=torch.from_numpy(np.asarray(chosen, np.int64)))


# ----------------------------------------------------------------------------- self-training
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
    """:class:`BagDataset` whose bags also carry each cell's soft target."""

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
