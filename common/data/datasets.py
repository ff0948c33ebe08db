"""Pipeline-1 datasets: whole 4-channel images of ``input/hpa-512`` with their image-level labels
(:class:`ImageDataset`), and the same with each image's cells for S3 ``VARIANT="cellpool"``
(:class:`CellPoolDataset`; its model is ``cellpool.CellPoolModel``)."""
from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from common import images
from common.constants import NUM_CLASSES, parse_labels
from common.data import augment
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


def check_fold(cfg: dict, folds, table: str | Path, step: str) -> None:
    """FOLD (>= 0) must be a fold of the table's ``folds`` column (:func:`split_fold`)."""
    fold = cfg["FOLD"]
    if isinstance(fold, bool) or not isinstance(fold, int):
        raise SystemExit(f"{step}: --FOLD {fold!r}: must be a whole number (-1: train on everything)")
    present = sorted({int(f) for f in pd.to_numeric(pd.Series(folds), errors="coerce").dropna()})
    if fold >= 0 and fold not in present:
        raise SystemExit(f"{step}: --FOLD {fold}: {table} has no rows of that fold; folds present: "
                         f"{present} (--FOLD -1 trains on everything)")


def split_fold(df: pd.DataFrame, cfg: dict, table: str | Path, step: str,
               val_external: bool) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The one fold split of S3 and S4.2 -> training rows, validation rows (None when FOLD is -1).

    ``USE_EXTERNAL`` false drops the external images (``is_ext``) first; the validation rows are
    FOLD's competition images (and its external ones when ``val_external``, S3's VAL_EXTERNAL), the
    training rows every other row. FOLD must be a fold of the table (:func:`check_fold`); ``table``
    and ``step`` name the file and the script in its one line."""
    is_ext = pd.Series(external_flags(df).astype(int), index=df.index)
    if not cfg["USE_EXTERNAL"]:
        df, is_ext = df[is_ext == 0], is_ext[is_ext == 0]
    if cfg["FOLD"] < 0:
        return df, None
    if "fold" not in df:
        raise SystemExit(f"{table}: no 'fold' column (run S2), or use --FOLD -1")
    check_fold(cfg, df["fold"], table, step)
    val_mask = df["fold"] == cfg["FOLD"]
    val = df[val_mask] if val_external else df[val_mask & (is_ext == 0)]
    return df[~val_mask], val


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
                 cache_gb: float = 0.0, cache_threads: int = 4):
        missing = [c for c in ("ID", "Label") if c not in df.columns]
        if missing:
            raise ValueError(f"dataset table lacks column(s) {missing}; has {list(df.columns)}")
        self.df = df.reset_index(drop=True)
        self.image_dir = Path(image_dir)
        self.transforms = transforms
        self.label_aug = label_aug
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.epoch = 0
        self.ids = self.df["ID"].astype(str).tolist()
        labels = []
        for i, lab in enumerate(self.df["Label"].tolist()):
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
        return self.image_dir / f"{self.ids[i]}.png"

    def _read(self, i: int) -> np.ndarray:
        return resize_image(images.read_rgby(self.path(i)), self.image_size)

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




def _seeded_transforms(transforms, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
    """``augment.apply_transforms`` with the cell label map as the albumentations mask (nearest)."""
    if transforms is None:
        return image, mask
    seed = int(rng.integers(2**63 - 1))
    transforms.set_random_state(np.random.default_rng(seed), random.Random(seed))
    out = transforms(image=image, mask=mask)
    return out["image"], out["mask"]


class CellPoolDataset(ImageDataset):
    """:class:`ImageDataset` plus each image's cells:
    ``dict(image, label, id, index, cell_map (S, S) int32, cell_ids (N,) long)``.

    ``mask_dir/{ID}.npz``: S2's label map (resized to ``image_size`` with nearest neighbour,
    augmented with the image by the same spatial transforms). ``cells_per_image`` ids are drawn
    from the cells still visible after augmentation (with replacement when fewer); an image with no
    visible cell becomes one cell covering the whole image. Without transforms (validation) the
    draw depends on the index only.
    """

    def __init__(self, df, image_dir, mask_dir, cells_per_image: int, **kw):
        super().__init__(df, image_dir, **kw)
        self.mask_dir = Path(mask_dir)
        self.cells_per_image = max(1, int(cells_per_image))
        missing = [i for i in self.ids if not (self.mask_dir / f"{i}.npz").is_file()]
        if missing:
            raise FileNotFoundError(f"{self.mask_dir}: no cell mask for {len(missing)} image(s), e.g. "
                                    f"{missing[0]}.npz (run S2 first)")
        self._maps: dict[int, np.ndarray] = {}
        self._cache_maps = self.cache is not None

    def load_map(self, i: int) -> np.ndarray:
        if i in self._maps:
            return self._maps[i]
        lab = images.load_masks(self.mask_dir / f"{self.ids[i]}.npz")[0]
        if lab.shape != (self.image_size, self.image_size):  # not resize.resize_labels (NEAREST_EXACT):
            # cell-pool runs were trained with this kernel; switching would change their results
            lab = cv2.resize(lab, (self.image_size, self.image_size), interpolation=cv2.INTER_NEAREST)
        if self._cache_maps:
            self._maps[i] = lab
        return lab

    def __getitem__(self, i: int) -> dict:
        train = self.transforms is not None
        rng = np.random.default_rng([self.seed, self.epoch, int(i)] if train else [self.seed, int(i)])
        img, lab = _seeded_transforms(self.transforms, self.load(i), self.load_map(i).copy(), rng)
        label = self.labels[i].copy()
        if self.label_aug is not None:
            img, label = self.label_aug(img, label, rng)
        present = np.unique(lab)
        present = present[present > 0]
        if len(present) == 0:
            lab = np.ones_like(lab)
            present = np.array([1])
        chosen = rng.choice(present, size=self.cells_per_image, replace=len(present) < self.cells_per_image)
        return {"image": augment.normalize(img, self.sources[i]), "label": torch.from_numpy(label),
                "id": self.ids[i], "index": int(i), "cell_map": torch.from_numpy(lab.astype(np.int32)),
                "cell_ids": torch.from_numpy(chosen.astype(np.int64))}
