"""Pipeline-1 dataset: whole 4-channel images of ``input/hpa-512`` with their image-level labels."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from common import augment, io
from common.constants import NUM_CLASSES, parse_labels
from common.resize import resize_image


def labels_to_multihot(label) -> np.ndarray:
    """``'8|5|0'`` (a number, NaN or empty too) or a list of class ids -> (19,) float32 multi-hot."""
    ids = list(label) if isinstance(label, (list, tuple, np.ndarray)) else parse_labels(label)
    out = np.zeros(NUM_CLASSES, np.float32)
    out[ids] = 1.0
    return out


def external_flags(df: pd.DataFrame) -> np.ndarray:
    """Boolean ``is_ext`` per row (0/1, true/false, missing column or NaN -> False): the one parser."""
    if "is_ext" not in df.columns:
        return np.zeros(len(df), bool)
    return df["is_ext"].astype(str).str.strip().str.lower().isin(["1", "1.0", "true", "yes"]).to_numpy()


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """``img`` at ``size x size`` (:func:`common.resize.resize_image`)."""
    return resize_image(img, int(size))


class ImageDataset(Dataset):
    """Rows of a ``train_all.csv``-like table -> ``dict(image, label, id, index)``.

    ``image``: float ``(4, S, S)`` normalised with the competition or external statistics (column
    ``is_ext``; all competition when absent); ``label``: float ``(19,)`` multi-hot (after the label
    augmentation); ``id``: the image id; ``index``: the row position.
    Sample ``i`` of epoch ``e`` draws its randomness from ``np.random.default_rng([seed, e, i])``,
    so it is the same whatever the worker count, and after a resume. ``set_epoch`` is called by
    ``train.fit`` before each epoch.

    ``cache_gb``: when the decoded, resized images (``n * S * S * 4`` bytes) fit in this many GB,
    they are read once here (threads) and kept in one array that forked DataLoader workers share;
    reading and resizing a 512-px PNG is most of the data cost of an epoch. 0 = read every time.
    """

    def __init__(self, df: pd.DataFrame, image_dir: str | Path, transforms=None,
                 label_aug: augment.LabelAugment | None = None, image_size: int = 512, seed: int = 0,
                 id_col: str = "ID", label_col: str = "Label", ext: str = ".png", cache_gb: float = 0.0,
                 cache_threads: int = 4):
        missing = [c for c in (id_col, label_col) if c not in df.columns]
        if missing:
            raise ValueError(f"dataset table lacks column(s) {missing}; has {list(df.columns)}")
        self.df = df.reset_index(drop=True)
        self.image_dir = Path(image_dir)
        self.transforms = transforms
        self.label_aug = label_aug
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.epoch = 0
        self.ext = ext
        self.ids = self.df[id_col].astype(str).tolist()
        labels = []
        for i, lab in enumerate(self.df[label_col].tolist()):
            try:
                labels.append(labels_to_multihot(lab))
            except ValueError as e:
                raise ValueError(f"row {i} (ID {self.ids[i]}): {e}") from None
        self.labels = np.stack(labels) if labels else np.zeros((0, NUM_CLASSES), np.float32)
        self.sources = ["external" if e else "competition" for e in external_flags(self.df)]
        self.cache: np.ndarray | None = None
        if cache_gb > 0 and len(self) and self.cache_bytes() <= cache_gb * 1e9:
            self.cache = np.empty((len(self), self.image_size, self.image_size, 4), np.uint8)

            def fill(i: int) -> None:
                self.cache[i] = self._read(i)

            with ThreadPoolExecutor(max(1, int(cache_threads))) as pool:  # cv2 releases the GIL
                list(pool.map(fill, range(len(self))))

    def cache_bytes(self) -> int:
        """RAM the image cache takes (or would take)."""
        return len(self) * self.image_size * self.image_size * 4

    def __len__(self) -> int:
        return len(self.df)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def path(self, i: int) -> Path:
        return self.image_dir / f"{self.ids[i]}{self.ext}"

    def _read(self, i: int) -> np.ndarray:
        return resize_square(io.read_rgby(self.path(i)), self.image_size)

    def load(self, i: int) -> np.ndarray:
        """Image ``i`` as ``S x S x 4`` uint8 (a copy when cached: augmentations may write to it)."""
        return self.cache[i].copy() if self.cache is not None else self._read(i)

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        img = self.load(i)
        label = self.labels[i].copy()
        img = augment.apply_transforms(self.transforms, img, rng)
        if self.label_aug is not None:
            img, label = self.label_aug(img, label, rng)
        return {"image": augment.normalize(img, self.sources[i]), "label": torch.from_numpy(label),
                "id": self.ids[i], "index": int(i)}


def make_toy_dataset(folder: str | Path, n: int = 32, size: int = 64, seed: int = 0,
                     classes: tuple[int, ...] = (0, 1, 2, 3), n_folds: int = 2) -> pd.DataFrame:
    """A tiny learnable S2-like set for tests and benchmarks: ``folder/train/{ID}.png`` and
    ``folder/train_all.csv``. Class ``classes[k]`` <-> a bright green square in cell ``k`` of a
    2 x 2 grid (1-2 labels per image); red/blue/yellow are noise with a few "nuclei"."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    rows = []
    half = size // 2
    for i in range(n):
        img = rng.integers(0, 40, (size, size, 4), dtype=np.uint8)
        for _ in range(3):
            y, x = rng.integers(0, size - size // 8, 2)
            img[y:y + size // 8, x:x + size // 8, 2] = 200
        chosen = sorted(rng.choice(len(classes), size=int(rng.integers(1, 3)), replace=False).tolist())
        for k in chosen:
            y0, x0 = (k // 2) * half, (k % 2) * half
            m = size // 8
            img[y0 + m:y0 + half - m, x0 + m:x0 + half - m, 1] = 220
        image_id = f"toy{i:04d}"
        io.write_rgby(folder / "train" / f"{image_id}.png", img)
        rows.append({"ID": image_id, "Label": "|".join(str(classes[k]) for k in chosen),
                     "is_ext": int(i % 5 == 4), "fold": i % n_folds, "ImageWidth": size,
                     "ImageHeight": size, "n_cells": 3})
    df = pd.DataFrame(rows)
    io.atomic_to_csv(df, folder / "train_all.csv")
    return df
