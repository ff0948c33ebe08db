"""Benchmark: pipeline-1 data loading (read PNG + augment + normalise, per worker) and training-step
throughput of a small model on CPU (and CUDA with AMP + channels_last when available).

    python benchmarks/bench_train.py [--N_IMAGES 48 --IMAGE_SIZE 512 --MODEL_NAME resnet18]

Target: >= 40 images/s per data-loading worker at 512 px.
"""
# ---------------------------------------------------------------------------- data loading
N_IMAGES = 48                   # synthetic 4-channel PNGs written to a temp dir
IMAGE_SIZE = 512                # image side (px)
LOAD_ROUNDS = 2                 # passes over the images per variant
# ---------------------------------------------------------------------------- training step
MODEL_NAME = "resnet18"         # small timm model for the step benchmark
STEP_SIZE = 256                 # image side for the CPU step benchmark (512 on CUDA)
STEP_BATCH = 8                  # batch size of the step benchmark
STEPS = 4                       # timed steps (after 1 warm-up step)
THREADS = 2                     # torch CPU threads

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np
import torch

import S3_train_pipeline1 as S3  # its constants: the augmentation and model settings benchmarked
from common import config, images
from common.data import augment
from common.data.datasets import ImageDataset
from common.models import models


def _write_images(folder: Path, n: int, size: int):
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        img = (rng.random((size // 8, size // 8, 4)) * 255).astype(np.uint8)  # smooth-ish, PNG-realistic
        img = np.asarray(np.kron(img, np.ones((8, 8, 1))), np.uint8)
        img = (img // 2 + rng.integers(0, 30, img.shape, dtype=np.uint8)).astype(np.uint8)
        images.write_rgby(folder / f"b{i:03d}.png", img)
        rows.append({"ID": f"b{i:03d}", "Label": "0|5", "is_ext": i % 2})
    return pd.DataFrame(rows)


def bench_loading(cfg) -> list[tuple[str, float]]:
    rows = []
    with tempfile.TemporaryDirectory() as d:
        df = _write_images(Path(d), cfg["N_IMAGES"], cfg["IMAGE_SIZE"])
        read_only = ImageDataset(df, d, image_size=cfg["IMAGE_SIZE"])
        t0 = time.perf_counter()
        for i in range(len(df)):
            read_only.load(i)
        rows.append(("read PNG only", len(df) / (time.perf_counter() - t0)))
        for variant in augment.VARIANTS:
            tfm = augment.build_transforms(variant, cfg["IMAGE_SIZE"], True, S3.P_FLIP, S3.P_AFFINE,
                                           S3.P_COARSE_DROPOUT)
            ds = ImageDataset(df, d, transforms=tfm, label_aug=augment.LabelAugment.from_cfg(vars(S3)),
                              image_size=cfg["IMAGE_SIZE"])
            t0 = time.perf_counter()
            n = 0
            for r in range(cfg["LOAD_ROUNDS"]):
                ds.set_epoch(r)
                for i in range(len(ds)):
                    ds[i]
                    n += 1
            rows.append((f"{variant}: read+augment+normalize", n / (time.perf_counter() - t0)))
    return rows


def bench_steps(cfg, device: str) -> tuple[str, float]:
    cuda = device == "cuda"
    size = 512 if cuda else cfg["STEP_SIZE"]
    torch.manual_seed(0)
    keys = ("PRETRAINED_FILE", "LOSS", "DROPOUT", "MSD_SAMPLES")
    model = models.build_model({**{k: getattr(S3, k) for k in keys}, "PIPELINE": S3._PIPELINE,
                                "MODEL_NAME": cfg["MODEL_NAME"], "VARIANT": "masked",
                                "PRETRAINED": False}).to(device).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    x = torch.randn(cfg["STEP_BATCH"], 4, size, size, device=device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(cfg["STEP_BATCH"], 19, device=device) < 0.2).float()

    def step():
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=cuda):
            loss = model({"image": x, "label": y})["loss"]
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    step()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(cfg["STEPS"]):
        step()
    if cuda:
        torch.cuda.synchronize()
    ips = cfg["STEPS"] * cfg["STEP_BATCH"] / (time.perf_counter() - t0)
    label = f"train step {cfg['MODEL_NAME']} {size}px bs{cfg['STEP_BATCH']} {device}"
    label += " AMP" if cuda else ""
    return label, ips


def main(argv=None):
    cfg = config.parse(globals(), argv)
    torch.set_num_threads(cfg["THREADS"])
    rows = bench_loading(cfg)
    rows.append(bench_steps(cfg, "cpu"))
    if torch.cuda.is_available():
        rows.append(bench_steps(cfg, "cuda"))
    w = max(len(r[0]) for r in rows)
    print(f"\n{'what':<{w}}  images/s   (data rows: one process = one worker, {cfg['IMAGE_SIZE']} px)")
    for name, ips in rows:
        print(f"{name:<{w}}  {ips:8.1f}")
    return rows


if __name__ == "__main__":
    main()
