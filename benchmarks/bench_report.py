"""Benchmark of report.html: ``report.write_report`` on synthetic fields.

Makes synthetic fields (THUMB-px false-colour thumbnails, ~CELLS_PER_IMAGE disc cells each, random
probabilities) for each size in N_IMAGES (32: the demo set; 559: the competition's test set), times
``write_report`` (thumbnails handed as arrays, encoded as JPEG by the report) and prints one table
row per size: images, cells, seconds, MB on disk of report.html + report/. Target: < 60 s for 559
images on 2 CPU cores.

    python benchmarks/bench_report.py
    python benchmarks/bench_report.py --N_IMAGES 559 --BENCH_DIR /tmp/report559
"""
# ---------------------------------------------------------------------------- data
N_IMAGES = [32, 559]         # fields per run (the demo set, the test set)
CELLS_PER_IMAGE = 22         # disc cells drawn per field (some overlap and merge)
THUMB = 512                  # thumbnail side (px)
ORIGINAL = 2048              # side of the (pretended) originals
SEED = 0
# ---------------------------------------------------------------------------- output
BENCH_DIR = ""               # keep the reports here ("" = a temporary folder, removed)

import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cv2
import numpy as np
import pandas as pd

from common import config, constants, report


def synthetic_field(rng, image_id: str, n_cells: int, thumb: int, original: int):
    """A ReportField with disc cells and the cells.csv rows of its cells."""
    labels = np.zeros((thumb, thumb), np.uint16)
    img = np.zeros((thumb, thumb, 3), np.uint8)
    for c in range(1, n_cells + 1):
        x, y, r = (int(v) for v in (*rng.integers(20, thumb - 20, 2), rng.integers(12, 40)))
        cv2.circle(labels, (x, y), r, c, -1)
        cv2.circle(img, (x, y), r, tuple(int(v) for v in rng.integers(40, 255, 3)), -1)
    ids = [c for c in np.unique(labels).tolist() if c]
    p = rng.random((len(ids), constants.NUM_CLASSES)) ** 3
    s = original / thumb
    ys, xs = [np.array(v) for v in zip(*[np.argwhere(labels == c).mean(0) for c in ids])]
    names = constants.CLASS_NAMES
    rows = pd.DataFrame({"image": image_id, "cell_id": ids, "x": xs * s, "y": ys * s,
                         "area": [int((labels == c).sum() * s * s) for c in ids], "touches_border": False,
                         "top_class": [names[j] for j in p.argmax(1)], "top_prob": p.max(1)})
    rows = pd.concat([rows, pd.DataFrame(p, columns=list(constants.CLASS_NAMES))], axis=1)
    return report.ReportField(image_id, img, labels, (original, original)), rows


def disk_mb(folder: Path) -> float:
    files = [folder / "report.html", *(folder / report.REPORT_DIR).rglob("*")]
    return sum(f.stat().st_size for f in files if f.is_file()) / 2**20


def bench(n: int, cfg, folder: Path) -> dict:
    rng = np.random.default_rng(cfg.SEED)
    made = [synthetic_field(rng, f"img{i:04d}", cfg.CELLS_PER_IMAGE, cfg.THUMB, cfg.ORIGINAL)
            for i in range(n)]
    fields, cells = [m[0] for m in made], pd.concat([m[1] for m in made], ignore_index=True)
    t0 = time.perf_counter()
    report.write_report(folder, fields, cells, [("bad0001", "unreadable")], threshold=0.5,
                        title=f"bench {n}")
    seconds = time.perf_counter() - t0
    return {"images": n, "cells": len(cells), "seconds": seconds, "MB": disk_mb(folder),
            "html_MB": (folder / "report.html").stat().st_size / 2**20}


def main(argv=None):
    cfg = config.parse(globals(), argv)
    root = Path(cfg.BENCH_DIR) if cfg.BENCH_DIR else Path(tempfile.mkdtemp(prefix="bench_report_"))
    try:
        rows = [bench(n, cfg, root / f"n{n}") for n in cfg.N_IMAGES]
    finally:
        if not cfg.BENCH_DIR:
            shutil.rmtree(root, ignore_errors=True)
    print(f"{'images':>6} {'cells':>7} {'seconds':>8} {'MB':>7} {'html MB':>8}")
    for r in rows:
        print(f"{r['images']:>6} {r['cells']:>7} {r['seconds']:>8.2f} {r['MB']:>7.1f} {r['html_MB']:>8.1f}")
    return rows


if __name__ == "__main__":
    main()
