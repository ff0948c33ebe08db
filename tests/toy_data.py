"""A tiny learnable S2-like image set for the tests (``from toy_data import make_toy_dataset``;
pytest puts ``tests/`` on ``sys.path``, as for ``conftest``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from common import images, io


def make_toy_dataset(folder: str | Path, n: int = 32, size: int = 64, seed: int = 0,
                     classes: tuple[int, ...] = (0, 1, 2, 3), n_folds: int = 2) -> pd.DataFrame:
    """A tiny learnable S2-like set for the tests: ``folder/train/{ID}.png`` and
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
        images.write_rgby(folder / "train" / f"{image_id}.png", img)
        rows.append({"ID": image_id, "Label": "|".join(str(classes[k]) for k in chosen),
                     "is_ext": int(i % 5 == 4), "fold": i % n_folds, "ImageWidth": size,
                     "ImageHeight": size, "n_cells": 3})
    df = pd.DataFrame(rows)
    io.atomic_to_csv(df, folder / "train_all.csv")
    return df
