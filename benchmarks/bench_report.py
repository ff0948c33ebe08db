"""Benchmark of report.html: ``report.write_report`` on synthetic fields.

Makes synthetic fields (ORIGINAL-px label maps with ~CELLS_PER_IMAGE disc cells, a 512-px working
image, random probabilities) for each size in N_IMAGES (32: the demo set; 559: the competition's test
set) and times what S5 adds to the scoring, as S5 does it: per field ``cell_tables.CellTables.add``
(cells.csv rows, the label map's PNG, the report's thumbnail), then the label maps written and
``write_report``. Prints one row per size: images, cells, seconds of each part and in all, MB on
disk of report.html + report/ and of labels/. Target: < 60 s for 559 images on 2 CPU cores.

    python benchmarks/bench_report.py
    python benchmarks/bench_report.py --N_IMAGES 559 --BENCH_DIR /tmp/report559
"""
# ---------------------------------------------------------------------------- data
N_IMAGES = [32, 559]         # fields per run (the demo set, the test set)
CELLS_PER_IMAGE = 22         # disc cells drawn per field (some overlap and merge)
THUMB = 512                  # thumbnail side (px)
WORK = 512                   # working image side (S2/S5 IMAGE_SIZE)
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

from common import config, constants, fov, io
from common.predict import cell_tables
from common.report import report
from common.resize import resize_labels


def synthetic_field(rng, n_cells: int, work: int, original: int):
    """(original-size label map, working image, working label map, cell ids, probabilities)."""
    full = np.zeros((original, original), np.uint16)
    for c in range(1, n_cells + 1):
        x, y = (int(v) for v in rng.integers(80, original - 80, 2))
        cv2.circle(full, (x, y), int(rng.integers(50, 160)), c, -1)
    ids = [c for c in np.unique(full).tolist() if c]
    labels = resize_labels(full, (work, work))
    ids = [c for c in ids if (labels == c).any()]
    colours = rng.integers(20, 230, (int(labels.max()) + 1, 4), dtype=np.uint8)  # each cell a flat colour,
    colours[0] = 0                                                                 # with mild noise: a JPEG
    noise = rng.integers(0, 24, (work, work, 4), dtype=np.uint8)                 # of it weighs about as
    image = np.clip(colours[labels].astype(np.int16) + noise, 0, 255).astype(np.uint8)  # much as a real one
    return full, image, labels, ids, rng.random((len(ids), constants.NUM_CLASSES)) ** 3


def disk_mb(paths) -> float:
    return sum(f.stat().st_size for f in paths if f.is_file()) / 2**20


def bench(n: int, cfg, folder: Path) -> dict:
    rng = np.random.default_rng(cfg.SEED)
    made = [synthetic_field(rng, cfg.CELLS_PER_IMAGE, cfg.WORK, cfg.ORIGINAL) for _ in range(n)]
    tables = cell_tables.CellTables(threshold=0.5, thumb_size=cfg.THUMB, maps=True, thumbs=True)
    t0 = time.perf_counter()
    for i, (full, image, labels, ids, probs) in enumerate(made):
        tables.add(f"img{i:04d}", fov.FieldOfView.of(image, labels, ids, cell_full=full), full, probs)
    t1 = time.perf_counter()
    for image_id, png in tables.pngs.items():
        io.atomic_write_bytes(folder / "labels" / f"{image_id}.png", png)
    t2 = time.perf_counter()
    report.write_report(folder, cell_tables.ReportFields(tables.report_fields), tables.cells_frame(),
                        [("bad0001", "unreadable")], threshold=0.5, title=f"bench {n}")
    t3 = time.perf_counter()
    pages = [folder / "report.html", *(folder / report.REPORT_DIR).rglob("*")]
    return {"images": n, "cells": len(tables.rows), "gather": t1 - t0, "labels": t2 - t1, "report": t3 - t2,
            "total": t3 - t0, "MB": disk_mb(pages),
            "labels_MB": disk_mb((folder / "labels").glob("*.png"))}


def main(argv=None):
    cfg = config.parse(globals(), argv)
    root = Path(cfg.BENCH_DIR) if cfg.BENCH_DIR else Path(tempfile.mkdtemp(prefix="bench_report_"))
    try:
        rows = [bench(n, cfg, root / f"n{n}") for n in cfg.N_IMAGES]
    finally:
        if not cfg.BENCH_DIR:
            shutil.rmtree(root, ignore_errors=True)
    print("| images | cells | gather in S5's loop (s) | labels/ written (s) | report written (s) | total (s) "
          "| report MB | labels/ MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['images']} | {r['cells']} | {r['gather']:.1f} | {r['labels']:.1f} | {r['report']:.1f} "
              f"| {r['total']:.1f} | {r['MB']:.1f} | {r['labels_MB']:.1f} |")
    return rows


if __name__ == "__main__":
    main()
