"""Benchmark: mask encoding, prediction strings and metric scoring at competition scale.

Synthetic 2048x2048 label maps (Voronoi cells from seeds on a 512 grid, upsampled) stand in for
the 559 test images x 25 cells; predictions come from jittered seeds (IoU ~0.6-0.95 with the
truth) with 19 noisy class probabilities per cell. Times: per-cell ``encode_binary_mask`` (on
PER_CELL_IMAGES images, extrapolated) vs one-pass ``encode_label_map``, building the prediction
strings, and ``score_submission`` (strict + lenient). Images are generated one at a time; only
strings are kept.

    python benchmarks/bench_encode_metric.py [--N_IMAGES 50]
"""
# ---------------------------------------------------------------------------- load
N_IMAGES = 559  # images (the competition's public + private test set size)
N_CELLS = 25  # cells per image
SIZE = 2048  # image side in pixels
PER_CELL_IMAGES = 10  # images on which the slow per-cell encoder is timed (then extrapolated)
SEED = 0  # random seed

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np
import pandas as pd

from common import config, constants
from common.competition import encoding, metric


def voronoi(seeds: np.ndarray, size: int, grid: int = 512, radius: float = 0.09) -> np.ndarray:
    """A (size, size) uint16 label map: cell k+1 is the region nearest seed k (within radius)."""
    import cv2

    yy, xx = np.mgrid[0:grid, 0:grid].astype(np.float32) / grid
    d = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
    lab = (d.argmin(0) + 1).astype(np.uint16)
    lab[d.min(0) > radius ** 2] = 0
    return cv2.resize(lab, (size, size), interpolation=cv2.INTER_NEAREST)


def main(argv=None):
    cfg = config.parse(globals(), argv)
    rng = np.random.default_rng(cfg.SEED)
    t = {"generate maps": 0.0, "encode per-cell": 0.0, "encode_label_map": 0.0,
         "prediction strings": 0.0}
    truth_rows, pred, n_pc, n_masks, identical = [], {}, 0, 0, True
    for k in range(cfg.N_IMAGES):
        img = f"img{k:04d}"
        t0 = time.perf_counter()
        seeds = rng.random((cfg.N_CELLS, 2))
        true_map = voronoi(seeds, cfg.SIZE)
        pred_map = voronoi(np.clip(seeds + rng.normal(0, 0.008, seeds.shape), 0, 1), cfg.SIZE)
        t1 = time.perf_counter()
        true_masks = encoding.encode_label_map(true_map)
        pred_masks = encoding.encode_label_map(pred_map)
        t2 = time.perf_counter()
        t["generate maps"] += t1 - t0
        t["encode_label_map"] += t2 - t1
        n_masks += len(true_masks) + len(pred_masks)
        if k < cfg.PER_CELL_IMAGES:
            t2 = time.perf_counter()
            slow_true = {i: encoding.encode_binary_mask(true_map == i) for i in true_masks}
            slow_pred = {i: encoding.encode_binary_mask(pred_map == i) for i in pred_masks}
            t["encode per-cell"] += time.perf_counter() - t2
            n_pc += len(true_masks) + len(pred_masks)
            identical &= slow_true == true_masks and slow_pred == pred_masks
        pool = rng.choice(constants.NUM_CLASSES, size=rng.integers(1, 4), replace=False)
        labels = {}
        for c, m in true_masks.items():
            labels[c] = rng.choice(pool, size=rng.integers(1, len(pool) + 1), replace=False)
            truth_rows += [(img, cfg.SIZE, cfg.SIZE, c, int(lab), m) for lab in labels[c]]
        ids = sorted(pred_masks)
        probs = rng.random((len(ids), constants.NUM_CLASSES)) * 0.5
        for r, c in enumerate(ids):
            if c in labels:
                probs[r, labels[c]] += 0.5
        t3 = time.perf_counter()
        pred[img] = encoding.prediction_string([pred_masks[c] for c in ids], probs)
        t["prediction strings"] += time.perf_counter() - t3
    truth = pd.DataFrame(truth_rows, columns=list(metric.TRUTH_COLUMNS))
    sub = pd.DataFrame({"ID": list(pred), "ImageWidth": cfg.SIZE, "ImageHeight": cfg.SIZE,
                        "PredictionString": list(pred.values())})
    n_det = sum(len(s.split()) // 3 for s in pred.values())
    res = {}
    for mode in ("strict", "lenient"):
        t0 = time.perf_counter()
        res[mode] = metric.score_submission(sub, truth, mode)
        t[f"score {mode}"] = time.perf_counter() - t0

    per_cell_total = t["encode per-cell"] / max(n_pc, 1) * n_masks
    print(f"\n{cfg.N_IMAGES} images x {cfg.N_CELLS} cells at {cfg.SIZE}^2 "
          f"({n_masks} masks: truth + predicted), {n_det} detections, "
          f"{len(truth)} truth rows; shared 2-core machine")
    print(f"{'step':<32} {'seconds':>9} {'per image (ms)':>15}")
    rows = [("generate maps (not timed work)", t["generate maps"]),
            (f"encode per-cell (extrap. from {n_pc})", per_cell_total),
            ("encode_label_map (all masks)", t["encode_label_map"]),
            ("prediction strings", t["prediction strings"]),
            ("score_submission strict", t["score strict"]),
            ("score_submission lenient", t["score lenient"])]
    for name, sec in rows:
        print(f"{name:<32} {sec:>9.2f} {1000 * sec / cfg.N_IMAGES:>15.1f}")
    print(f"encode_label_map speed-up: {per_cell_total / max(t['encode_label_map'], 1e-9):.1f}x; "
          f"byte-identical on timed images: {identical}")
    print(f"mAP_strict={res['strict']['mAP']:.4f} mAP_lenient={res['lenient']['mAP']:.4f}")
    return t


if __name__ == "__main__":
    main()
