"""Pipeline-2 data: the cell-crop files of S4.1 and the bag-of-cells dataset of S4.2.

Crops live at ``{cells_dir}/{ID}_{cell:04d}.png`` (:func:`crop_path`, 4-channel RGBY PNG written by
:func:`crop_image_cells` with :func:`common.cells.crop_cells`), indexed by a CSV with columns
``ID, cell_id, x0, y0, x1, y1, area, border`` (512-px coordinates).

:class:`BagDataset` returns, per image, a bag of ``cells_per_image`` crops (sampled without
replacement, with replacement when the image has fewer cells), each augmented independently
(flips, transpose, shift-scale-rotate), then the HPA green-channel label augmentations drawn
ONCE per bag (so every cell and the bag label agree), normalised with ``augment.normalize``:
``dict(image (N, 4, S, S) float, label (19,) float, id str, cell_ids (N,) long)``.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from common import augment as aug_lib
from common import fov, io
from common.cells import CROP_MARGIN, cell_table, crop_cells
from common.constants import NUM_CLASSES, parse_labels
from common.parallel import up_to_date
from common.resize import resize_image

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- crop files (S4.1)
def external_flags(df: pd.DataFrame) -> np.ndarray:
    """Boolean ``is_ext`` per row (0/1, true/false, missing column or NaN -> False)."""
    if "is_ext" not in df.columns:
        return np.zeros(len(df), bool)
    return df["is_ext"].astype(str).str.strip().str.lower().isin(["1", "1.0", "true", "yes"]).to_numpy()


def crop_path(cells_dir: str | Path, image_id: str, cell_id: int) -> Path:
    """``{cells_dir}/{ID}_{cell:04d}.png``."""
    return Path(cells_dir) / f"{image_id}_{int(cell_id):04d}.png"


def _original_available(folder: str | Path, image_id: str) -> bool:
    return bool(folder) and io.channel_path(folder, image_id, "red").is_file()


def crop_image_cells(task: dict) -> dict:
    """Crop every cell of one image (the S4.1 worker; a module-level function for the process pool).

    ``task``: image_id, mask_path (.npz, 512 px), image_path (512-px RGBY PNG), original_dir
    ("" = never use the original), out_dir, size, margin, overwrite. Crops come from the
    original-resolution image when its channel files are there and it is not smaller than the
    mask (with S2's original-size mask when there is one, else the mask resized with the one label
    kernel: :func:`common.fov.labels_at`, as S5 does), else from the 512-px image. Returns
    ``dict(rows=[index rows], written=int, from_original=bool)``; ``written == 0`` when every
    crop already existed.
    """
    image_id = str(task["image_id"])
    size, margin = int(task["size"]), float(task.get("margin", CROP_MARGIN))
    cell, _ = io.load_masks(task["mask_path"])
    rows = [dict(ID=image_id, **r) for r in cell_table(cell)]
    ids = [r["cell_id"] for r in rows]
    # a crop is redone when missing or older than the mask (S2 re-segmented the image)
    todo = [c for c in ids if task.get("overwrite")
            or not up_to_date([crop_path(task["out_dir"], image_id, c)], [task["mask_path"]])]
    if not todo:
        return dict(rows=rows, written=0, from_original=False)
    image, labels, from_original = None, cell, False
    if task.get("original_dir") and _original_available(task["original_dir"], image_id):
        image = io.read_image(task["original_dir"], image_id)
        if image.shape[0] >= cell.shape[0] and image.shape[1] >= cell.shape[1]:
            from_original = True
            full = fov.full_mask_path(task["mask_path"])
            cell_full = io.load_masks(full)[0] if full.is_file() else None
            labels = fov.labels_at(image.shape[:2], cell, cell_full)
        else:
            image = None
    if image is None:
        image = io.read_rgby(task["image_path"])
        if image.shape[:2] != cell.shape:
            raise ValueError(f"{task['image_path']}: image {image.shape[:2]} and mask {task['mask_path']} "
                             f"{cell.shape} differ in size")
    for c, crop in zip(todo, crop_cells(image, labels, todo, size, margin)):
        io.write_rgby(crop_path(task["out_dir"], image_id, c), crop)
    return dict(rows=rows, written=len(todo), from_original=from_original)


# ----------------------------------------------------------------------------- augmentation
def cell_augmentation(p_flip: float = 0.5, p_ssr: float = 0.5, shift: float = 0.0625, scale: float = 0.1,
                      rotate: float = 45.0):
    """The per-cell albumentations pipeline: h/v flips, transpose, shift-scale-rotate (black border).

    The defaults are albumentations' ShiftScaleRotate defaults (milder than pipeline 1's 0.2/0.2:
    a crop is tight around its cell, a 20% shift would push part of the cell out).
    """
    import albumentations as A

    return A.Compose([
        A.HorizontalFlip(p=p_flip),
        A.VerticalFlip(p=p_flip),
        A.Transpose(p=p_flip),
        A.Affine(translate_percent=(-shift, shift), scale=(1 - scale, 1 + scale), rotate=(-rotate, rotate),
                 interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_CONSTANT, fill=0, p=p_ssr),
    ])


def labels_to_vector(label) -> np.ndarray:
    """``'8|5|0'`` or a list of ids -> (19,) float32 multi-hot."""
    ids = parse_labels(label) if isinstance(label, (str, float)) or label is None else list(label)
    v = np.zeros(NUM_CLASSES, np.float32)
    v[ids] = 1.0
    return v


# ----------------------------------------------------------------------------- the bag dataset
class BagDataset(Dataset):
    """Bags of cell crops of the images of ``df`` (columns ID, Label, optional is_ext).

    ``index_df``: S4.1's index (ID, cell_id, ...). Images of ``df`` with no cell in the index are
    left out (counted in ``self.n_without_cells`` and logged). Crops of another size than
    ``cell_size`` are resized. Randomness of bag ``i`` in epoch ``e`` comes from
    ``np.random.default_rng([seed, e, i])`` (``set_epoch`` is called by ``train.fit``), so it does
    not depend on the worker count and survives a resume; ``augment=False`` (validation) gives
    the same bag every epoch and no augmentation. ``p_green_to_negative`` / ``p_green_from_other``
    / ``p_intensity``: probabilities of :class:`common.augment.LabelAugment`, drawn once per bag.
    """

    def __init__(self, df: pd.DataFrame, cells_dir: str | Path, index_df: pd.DataFrame,
                 cells_per_image: int = 16, cell_size: int = 256, augment: bool = True,
                 p_green_to_negative: float = 0.0, p_green_from_other: float = 0.0,
                 p_intensity: float = 0.0, seed: int = 0):
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
                labels.append(labels_to_vector(lab))
            except ValueError as e:
                raise ValueError(f"image {self.ids[i]}: {e}") from None
        self.labels = np.stack(labels) if labels else np.zeros((0, NUM_CLASSES), np.float32)
        self.sources = ["external" if e else "competition" for e in external_flags(kept)]
        if self.n_without_cells:
            log.warning("BagDataset: %d of %d images have no cell crops and are left out",
                        self.n_without_cells, len(df))
        self.transforms = cell_augmentation() if self.augment else None
        self.label_aug = aug_lib.LabelAugment(p_green_to_negative, p_green_from_other, p_intensity) \
            if self.augment and (p_green_to_negative or p_green_from_other or p_intensity) else None

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
        img = io.read_rgby(crop_path(self.cells_dir, image_id, cell_id))
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
