"""Benchmark of the built-in segmenter on demo images with their true cell masks.

Prints one table: fraction of true cells matched at IoU >= IOU and the mean IoU of the matches, for
segmenting at 512 px or at the original size (ORIG_SIZE, "original" demo images), each scored at
512 px and at the original size; images/s on one core; peak memory of one 3072 px image.
Targets: >= 95 % matched, mean IoU >= 0.85, >= 4 images/s at 512 px per core, 3072 px <= ~1.5 GB.

    python benchmarks/bench_segmentation.py [--N_IMAGES 4] [--ORIG_SIZE 2048] [--SEGMENTER builtin]
"""
# ---------------------------------------------------------------------------- data
N_IMAGES = 4          # demo images generated at ORIG_SIZE (quality)
ORIG_SIZE = 2048      # side of the "original" demo images (px)
SMALL_SIZE = 512      # side S2 writes (IMAGE_SIZE)
SEED = 2021           # demo generator seed
# ---------------------------------------------------------------------------- measures
IOU = 0.6             # a true cell is matched when the best predicted cell has IoU >= this
N_SPEED = 16          # 512 px images timed for images/s
MEM_SIZE = 3072       # side of the image whose peak memory is measured (0 = skip)
SEGMENTER = "builtin"  # builtin | hpa | auto
MEM_CHILD = 0         # internal: when > 0, measure one MEM_CHILD px image in this process and exit

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # "per core" numbers
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np

from common import config, segmentation
from common.demo import demo_labels, demo_render
from common.resize import resize_labels

cv2.setNumThreads(1)


def _rss_mb() -> float:
    """Peak resident memory (MB) of this process: VmHWM (ru_maxrss survives exec from a big parent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _mem_child(cfg) -> None:
    rng = np.random.default_rng(cfg.SEED)
    img = demo_render.make_image(rng, 512, [0])["image"]
    img = cv2.resize(img, (cfg.MEM_CHILD, cfg.MEM_CHILD), interpolation=cv2.INTER_LINEAR)
    seg = segmentation.get_segmenter(cfg.SEGMENTER)
    before = _rss_mb()
    t0 = time.perf_counter()
    cell, _ = seg.segment([img])[0]
    print(json.dumps({"before_mb": before, "peak_mb": _rss_mb(), "seconds": time.perf_counter() - t0,
                      "cells": int(cell.max())}))


def _score(pairs, iou):
    n = m = 0
    ious = []
    for truth, pred in pairs:
        r = segmentation.match_cells(truth, pred, iou)
        n, m = n + r["n_true"], m + r["matched"]
        ious.extend(r["ious"][r["ious"] >= iou])
    return m / max(n, 1), float(np.mean(ious)) if ious else 0.0, n


def main(argv=None):
    cfg = config.parse(globals(), argv, quiet=True)
    if cfg.MEM_CHILD:
        return _mem_child(cfg)
    mem = None  # first, in a fresh process, while this one is still small
    if cfg.MEM_SIZE:
        out = subprocess.run([sys.executable, __file__, "--MEM_CHILD", str(cfg.MEM_SIZE), "--SEGMENTER",
                              cfg.SEGMENTER, "--SEED", str(cfg.SEED)], capture_output=True, text=True)
        lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
        mem = json.loads(lines[-1]) if out.returncode == 0 and lines else None
        if mem is None:
            print(f"memory child failed: {out.stderr[-500:]}")

    seg = segmentation.get_segmenter(cfg.SEGMENTER)
    rng = np.random.default_rng(cfg.SEED)
    S, O = cfg.SMALL_SIZE, cfg.ORIG_SIZE  # noqa: E741
    print(f"segmenter {seg.name}; generating {cfg.N_IMAGES} demo images at {O} px ...", flush=True)
    data = [demo_render.make_image(rng, O, demo_labels.sample_image_labels(rng)) for _ in range(cfg.N_IMAGES)]
    rows, t_small, t_orig = {}, 0.0, 0.0
    a_s, a_o, b_s, b_o = [], [], [], []
    for d in data:
        truth_o = d["cells"]
        truth_s = resize_labels(truth_o, S)
        small = cv2.resize(d["image"], (S, S), interpolation=cv2.INTER_AREA)
        t0 = time.perf_counter()
        pred_s = seg.segment([small])[0][0]
        t1 = time.perf_counter()
        pred_o = seg.segment([d["image"]])[0][0]
        t2 = time.perf_counter()
        t_small, t_orig = t_small + t1 - t0, t_orig + t2 - t1
        a_s.append((truth_s, pred_s))
        a_o.append((truth_o, resize_labels(pred_s, O)))
        b_s.append((truth_s, resize_labels(pred_o, S)))
        b_o.append((truth_o, pred_o))
    rows[f"segment at {S}, score at {S}"] = _score(a_s, cfg.IOU)
    rows[f"segment at {S}, score at {O} (nearest up)"] = _score(a_o, cfg.IOU)
    rows[f"segment at {O}, score at {S} (nearest down)"] = _score(b_s, cfg.IOU)
    rows[f"segment at {O}, score at {O}"] = _score(b_o, cfg.IOU)

    speed_imgs = [demo_render.make_image(rng, S, demo_labels.sample_image_labels(rng))["image"]
                  for _ in range(cfg.N_SPEED)]
    seg.segment(speed_imgs[:1])
    t0 = time.perf_counter()
    seg.segment(speed_imgs)
    ips = cfg.N_SPEED / (time.perf_counter() - t0)

    print(f"\n| {'setting':44s} | matched@IoU{cfg.IOU:g} | mean IoU | true cells |")
    print(f"|{'-' * 46}|--------------|----------|------------|")
    for k, (frac, miou, n) in rows.items():
        print(f"| {k:44s} | {100 * frac:11.1f} % | {miou:8.3f} | {n:10d} |")
    print("\n| speed (1 thread)                 | value |\n|----------------------------------|-------|")
    print(f"| images/s at {S} px ({cfg.N_SPEED} images)      | {ips:5.2f} |")
    print(f"| images/s at {O} px ({cfg.N_IMAGES} images)      | {cfg.N_IMAGES / t_orig:5.2f} |")
    print(f"| s/image at {S} px in the quality run | {t_small / cfg.N_IMAGES:5.3f} |")
    if mem:
        print(f"| peak RSS, {cfg.MEM_SIZE} px image (MB)        | {mem['peak_mb']:5.0f} |")
        print(f"|   of which segmentation (MB)     | {mem['peak_mb'] - mem['before_mb']:5.0f} |")
        print(f"|   seconds for it                 | {mem['seconds']:5.1f} |")
    return {"quality": rows, "images_per_s": ips, "memory": mem}


if __name__ == "__main__":
    main()
