"""Tiny fields of view for tests/test_own_images.py (``from own_images_data import ...``): a
one-step demo model and synthetic fields written in three layouts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from toy_data import make_toy_dataset

from common import demo_data, io

TINY = ["--MODEL_NAME", "test_resnet", "--PRETRAINED", "false", "--EPOCHS", "1", "--MAX_TRAIN_STEPS", "1",
        "--WARMUP_EPOCHS", "0", "--NUM_WORKERS", "0", "--DEVICE", "cpu", "--FOLD", "-1",
        "--IMAGE_SIZE", "32", "--BATCH_SIZE", "4"]


def train_tiny(S3, root: Path) -> Path:
    """A pipeline-1 run trained for one step on the toy set; returns its folder."""
    make_toy_dataset(root / "hpa", n=8, size=32, seed=3)
    res = S3.main(["--HPA512_DIR", str(root / "hpa"), "--OUTPUT_DIR", str(root / "runs"),
                   "--RUN_NAME", "tiny", *TINY])
    return Path(res["out_dir"])


def field(seed: int, height: int, width: int) -> np.ndarray:
    """An H x W x 4 uint16 RGBY synthetic field (a demo field cut to the size)."""
    rng = np.random.default_rng(seed)
    img = demo_data.make_image(rng, max(height, width, 64), [0], min_cells=3, max_cells=5, bit16=True)
    return img["image16"][:height, :width]


def write_competition(folder: Path, images: dict[str, np.ndarray]) -> None:
    """``test/{ID}_{red,green,blue,yellow}.png`` (8-bit) and ``sample_submission.csv``."""
    for image_id, img in images.items():
        io.write_channels(folder / "test", image_id, io.to_uint8(img))
    rows = [{"ID": i, "ImageWidth": im.shape[1], "ImageHeight": im.shape[0], "PredictionString": ""}
            for i, im in images.items()]
    pd.DataFrame(rows).to_csv(folder / "sample_submission.csv", index=False)


def write_tiffs(folder: Path, images: dict[str, np.ndarray], planes=(0, 1, 2, 3)) -> None:
    """One 16-bit C x H x W TIFF per field, plane ``planes[k]`` holding RGBY channel k."""
    folder.mkdir(parents=True, exist_ok=True)
    for image_id, img in images.items():
        stack = np.zeros((max(planes) + 1, *img.shape[:2]), np.uint16)
        for k, p in enumerate(planes):
            stack[p] = img[..., k]
        tifffile.imwrite(folder / f"{image_id}.tif", stack, photometric="minisblack")


def write_channel_files(folder: Path, images: dict[str, np.ndarray], suffixes, ext: str = ".tif") -> None:
    """One 16-bit file per channel: ``{ID}{suffix}{ext}``."""
    folder.mkdir(parents=True, exist_ok=True)
    for image_id, img in images.items():
        for k, suffix in enumerate(suffixes):
            path = folder / f"{image_id}{suffix}{ext}"
            if ext in (".tif", ".tiff"):
                tifffile.imwrite(path, img[..., k])
            else:
                io.imwrite(path, img[..., k])
