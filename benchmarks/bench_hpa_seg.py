"""Benchmark of the official HPA segmentation: post-processing at full resolution vs 512, whole segment().

Prints one table, seconds per image (and images/s):
* post-processing alone (``label_from_maps``: the official feeding + ``label_cell``) per 2048² and 3072²
  field of view: at the original resolution (the default, the official behaviour), with CORRECTED, and
  labelled at the network's size (``label_at="working"``, the fast path). Maps: the reference softmax
  maps of ../shared/hpa_seg_reference when present (scaled x1.5 for 3072²), else synthetic round cells;
* one network forward at the network size (both official networks share this architecture);
* the whole ``HPASegmenter.segment`` (both networks, random weights, + default post-processing) on a
  2048² and a 3072² image: CPU float32 always, CUDA AMP when CUDA is available.
CPU peak memory is the process's max RSS, CUDA's ``torch.cuda.max_memory_allocated``.

    python benchmarks/bench_hpa_seg.py [--SIDES 2048,3072] [--REPEAT 2] [--THREADS 2]
"""
# ---------------------------------------------------------------------------- sizes
SIDES = [2048, 3072]  # original sides of the fields of view (px); the networks see a quarter of it
REPEAT = 2            # post-processing runs per row (the best is kept)
N_CUDA = 8            # images per CUDA segment() measurement
BATCH_CUDA = 4        # CUDA batch size
THREADS = 2           # torch CPU threads
SEGMENT_CPU = True    # include the (slow) CPU segment() rows
SEED = 0

import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np
import torch

from common import config
from common.segmentation.dpn_unet import DPNUNet
from common.segmentation.hpa import HPASegmenter
from common.segmentation.hpa.postprocess import label_from_maps

REF = Path(__file__).resolve().parents[2] / "shared" / "hpa_seg_reference" / "B_touching_s0_softmax512.npz"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _synthetic(size: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Softmax-like maps of a grid of round cells with nuclei (size = network side)."""
    yy, xx = np.mgrid[:size, :size]
    nuc, cell = np.zeros((size, size, 3), np.float32), np.zeros((size, size, 3), np.float32)
    step = size // 8
    for cy in range(step // 2, size, step):
        for cx in range(step // 2, size, step):
            d2 = (yy - cy - rng.integers(-6, 7)) ** 2 + (xx - cx - rng.integers(-6, 7)) ** 2
            cell[..., 2][d2 <= (0.47 * step) ** 2] = 0.9
            nuc[..., 2][d2 <= (0.22 * step) ** 2] = 0.95
    for m in (nuc, cell):
        m[..., 0] = 1 - m[..., 1] - m[..., 2]
    return nuc, cell


def _maps(side: int, rng) -> tuple[np.ndarray, np.ndarray, str]:
    n = side // 4
    if REF.is_file():
        with np.load(REF) as z:
            nuc, cell = z["nuclei"], z["cell"]
        if nuc.shape[0] != n:
            nuc, cell = (cv2.resize(a, (n, n), interpolation=cv2.INTER_LINEAR) for a in (nuc, cell))
        return nuc, cell, "reference"
    nuc, cell = _synthetic(n, rng)
    return nuc, cell, "synthetic"


def _best(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(max(1, repeat)):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv=None):
    cfg = config.parse(globals(), argv)
    torch.set_num_threads(cfg.THREADS)
    torch.manual_seed(cfg.SEED)
    rng = np.random.default_rng(cfg.SEED)
    rows = []
    for side in cfg.SIDES:
        nuc, cell, src = _maps(side, rng)
        n = nuc.shape[0]
        for what, kw in (("post: original (default)", {}), ("post: original CORRECTED", {"corrected": True}),
                         (f"post: at {n} (fast)", {"label_hw": (n, n)})):
            dt, (c, _) = _best(lambda kw=kw, a=nuc, b=cell, hw=(side, side): label_from_maps(a, b, hw, **kw),
                               cfg.REPEAT)
            rows.append((f"{what} {int(c.max())} cells", "cpu", f"{side}² ({src})", dt,
                         f"{_rss_mb():.0f} MB rss"))

    model = DPNUNet().eval()
    if cfg.SEGMENT_CPU:
        for side in cfg.SIDES:
            x = torch.randn(1, 3, side // 4, side // 4)
            with torch.no_grad():
                dt, _ = _best(lambda x=x: model(x), 1)
            rows.append(("network forward", f"cpu fp32 x{cfg.THREADS}", f"{side // 4}²", dt,
                         f"{_rss_mb():.0f} MB rss"))
            img = [rng.integers(0, 256, (side, side, 4), dtype=np.uint8)]
            seg = HPASegmenter(models=(model, model), device="cpu", batch_size=1)
            dt, _ = _best(lambda img=img, seg=seg: seg.segment(img), 1)
            rows.append(("segment() 2 nets + post", "cpu fp32", f"{side}²", dt, f"{_rss_mb():.0f} MB rss"))
    if torch.cuda.is_available():
        gpu = model.cuda()
        for side in cfg.SIDES:
            imgs = [rng.integers(0, 256, (side, side, 4), dtype=np.uint8)] * cfg.N_CUDA
            seg = HPASegmenter(models=(gpu, gpu), device="cuda", batch_size=cfg.BATCH_CUDA, amp=True)
            seg.predict(imgs[:1])
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            seg.predict(imgs)
            torch.cuda.synchronize()
            dt = (time.perf_counter() - t) / len(imgs)
            mem = f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MB"
            rows.append((f"networks only b{cfg.BATCH_CUDA}", "cuda amp", f"{side}²", dt, mem))
            t = time.perf_counter()
            seg.segment(imgs)
            dt = (time.perf_counter() - t) / len(imgs)
            rows.append((f"segment() 2 nets + post b{cfg.BATCH_CUDA}", "cuda amp + cpu post", f"{side}²", dt,
                         mem))
    else:
        rows.append(("segment()", "cuda", "-", float("nan"), "no CUDA here"))

    print(f"\n{'what':<40} {'device':<20} {'field of view':>18} {'s/image':>8} {'images/s':>9}  peak memory")
    for what, dev, px, s, mem in rows:
        ips = 1 / s if s == s and s > 0 else float("nan")
        print(f"{what:<40} {dev:<20} {px:>18} {s:>8.3f} {ips:>9.3f}  {mem}")
    print(f"(random network weights; {torch.get_num_threads()} CPU threads; shared machine: indicative)")
    return rows


if __name__ == "__main__":
    main()
