"""Tiny fields of view for tests/test_own_images.py (``from own_images_data import ...``): a
one-step demo model and synthetic fields written in three layouts."""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from toy_data import make_toy_dataset

from common import images, io
from common.demo import demo_render

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
    img = demo_render.make_image(rng, max(height, width, 64), [0], min_cells=3, max_cells=5, bit16=True)
    return img["image16"][:height, :width]


def write_competition(folder: Path, fields: dict[str, np.ndarray]) -> None:
    """``test/{ID}_{red,green,blue,yellow}.png`` (8-bit) and ``sample_submission.csv``."""
    for image_id, img in fields.items():
        images.write_channels(folder / "test", image_id, images.to_uint8(img))
    rows = [{"ID": i, "ImageWidth": im.shape[1], "ImageHeight": im.shape[0], "PredictionString": ""}
            for i, im in fields.items()]
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


# ----------------------------------------------------------------------------- hostile inputs
def declared_tiff(path: Path, shape=(4, 16000, 16000)) -> Path:
    """A zlib TIFF that declares ``shape`` uint16 (2 GB decoded for the default) in ~2 MB: one
    compressed 1024 x 1024 tile of zeros written for every tile."""
    tile = zlib.compress(np.zeros((1024, 1024), np.uint16).tobytes(), 9)
    n = shape[0] * -(-shape[1] // 1024) * -(-shape[2] // 1024)
    tifffile.imwrite(path, data=(tile for _ in range(n)), shape=shape, dtype="uint16",
                     photometric="minisblack", compression="zlib", tile=(1024, 1024))
    return path


def gzip_bomb(path: Path, members: int = 1000) -> Path:
    """A .tif.gz of ``members`` gzip members of 64 MiB of zeros each: ~65 MB on disk for 1000 members,
    64 GiB gunzipped."""
    member = gzip.compress(bytes(64 << 20), compresslevel=9)
    with open(path, "wb") as f:
        for _ in range(members):
            f.write(member)
    return path


def png_declaring(path: Path, height: int, width: int) -> Path:
    """A small 8-bit PNG whose IHDR is rewritten to declare ``height`` x ``width`` (nothing decodes it)."""
    data = bytearray(images.encode_png(np.zeros((4, 4), np.uint8)))
    data[16:24] = struct.pack(">II", width, height)
    path.write_bytes(bytes(data))
    return path


def write_channel_bytes_name(folder: Path, name: bytes, img: np.ndarray, suffixes) -> None:
    """One 8-bit PNG per channel named ``{name}{suffix}.png`` from a bytes name (e.g. not UTF-8)."""
    for k, suffix in enumerate(suffixes):
        path = os.fsencode(folder) + b"/" + name + suffix.encode() + b".png"
        with open(path, "wb") as f:
            f.write(images.encode_png(images.to_uint8(img[..., k])))
