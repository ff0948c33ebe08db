"""Benchmark of S4.1 (crops/s) and of the pipeline-2 bag loader (cells/s per worker) on synthetic data.

Makes N_IMAGES synthetic 512-px images with ~CELLS_PER_IMAGE_SYN cells (label ids >= 256) and
ORIG_SIZE-px originals in a temporary folder, then times
  * S4.1 (the real script, fresh output each time) for each (cell size, source, workers);
  * BagDataset.__getitem__ in one process (= one DataLoader worker), augmentation on, at 128/256 px.
Target: >= 800 cells/s per worker at 128 px. Numbers depend on the machine (and its load).

    python benchmarks/bench_cells.py
    python benchmarks/bench_cells.py --N_IMAGES 16 --ORIG_SIZE 2048
"""
# ---------------------------------------------------------------------------- data
N_IMAGES = 16                # synthetic images
CELLS_PER_IMAGE_SYN = 30     # cells drawn per image (some overlap and merge)
ORIG_SIZE = 1024             # side of the synthetic originals (the competition has 1728..3072)
# ---------------------------------------------------------------------------- runs
CELL_SIZES = [128, 256]      # crop sides timed
WORKERS = [1, 2]             # S4.1 process counts timed
BAGS = 32                    # bags (of 16 cells) read per loader timing
REPEATS = 3                  # loader timings repeated, the best kept (the machine is shared)
BENCH_DIR = ""               # keep the data here ("" = a temporary folder, removed)

import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import config, images
from common.data.augment import LabelAugment
from common.data.bag_datasets import BagDataset


def make_images(root: Path, n: int, n_cells: int, orig: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    hpa, comp = root / "hpa-512", root / "comp" / "train"
    rows = []
    for i in range(n):
        iid = f"bench{i:03d}"
        lab = np.zeros((512, 512), np.uint16)
        for k in range(n_cells):
            cy, cx = rng.integers(0, 512, 2)
            ax = tuple(int(a) for a in rng.integers(20, 45, 2))
            cv2.ellipse(lab, (int(cx), int(cy)), ax, float(rng.uniform(0, 180)), 0, 360, 256 + k, -1)
        low = rng.integers(0, 255, (32, 32, 4), dtype=np.uint8)
        img = cv2.resize(low, (512, 512), interpolation=cv2.INTER_LINEAR)
        images.write_rgby(hpa / "train" / f"{iid}.png", img)
        images.save_masks(hpa / "train_cell_mask" / f"{iid}.npz", lab, lab)
        images.write_channels(comp, iid, cv2.resize(low, (orig, orig), interpolation=cv2.INTER_LINEAR))
        rows.append(dict(ID=iid, Label="0|16", is_ext=0, fold=i % 5))
    pd.DataFrame(rows).to_csv(hpa / "train_all.csv", index=False)
    return hpa, comp


def run_s41(args: list[str]) -> dict:
    spec = importlib.util.spec_from_file_location("s41_bench", ROOT / "S4.1_crop_cells.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["s41_bench"] = mod
    spec.loader.exec_module(mod)
    return mod.main(args)


def main(argv=None):
    cfg = config.parse(globals(), argv)
    torch.set_num_threads(1)
    tmp = Path(cfg.BENCH_DIR) if cfg.BENCH_DIR else Path(tempfile.mkdtemp(prefix="bench_cells_"))
    try:
        hpa, comp = make_images(tmp, cfg.N_IMAGES, cfg.CELLS_PER_IMAGE_SYN, cfg.ORIG_SIZE)
        table = []
        for size in cfg.CELL_SIZES:
            for from_orig in (False, True):
                for w in cfg.WORKERS:
                    shutil.rmtree(hpa / f"cells_{size}", ignore_errors=True)
                    t = time.perf_counter()
                    r = run_s41(["--HPA512_DIR", str(hpa), "--TRAIN_CSV", str(hpa / "train_all.csv"),
                                 "--COMP_TRAIN_DIR", str(comp), "--CELL_SIZE", str(size),
                                 "--FROM_ORIGINAL", str(from_orig), "--NUM_WORKERS", str(w)])
                    dt = time.perf_counter() - t
                    src = f"original {cfg.ORIG_SIZE}px" if from_orig else "512px"
                    table.append(("S4.1 crop+write", size, src, w, r["written"], dt, r["written"] / dt))
            index = pd.read_csv(hpa / f"cells_{size}.csv", dtype={"ID": str})
            df = pd.read_csv(hpa / "train_all.csv", dtype={"ID": str, "Label": str})
            ds = BagDataset(df, hpa / f"cells_{size}", index, cells_per_image=16, cell_size=size,
                            augment=True, label_aug=LabelAugment(0.05, 0.05, 0.0, (0.6, 1.1)))
            ds[0]
            times = []
            for _ in range(cfg.REPEATS):
                t = time.perf_counter()
                for b in range(cfg.BAGS):
                    ds.set_epoch(b // len(ds))
                    ds[b % len(ds)]
                times.append(time.perf_counter() - t)
            dt = min(times)
            table.append(("bag loader (aug on)", size, "png crops", 1, cfg.BAGS * 16, dt, cfg.BAGS * 16 / dt))
        head = ("step", "size", "source", "workers", "cells", "sec", "cells/s")
        print("\n{:<20} {:>5} {:<16} {:>7} {:>6} {:>7} {:>8}".format(*head))
        for name, size, src, w, n, dt, rate in table:
            print(f"{name:<20} {size:>5} {src:<16} {w:>7} {n:>6} {dt:>7.2f} {rate:>8.0f}")
        return table
    finally:
        if not cfg.BENCH_DIR:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
