"""Benchmark of the native HPA segmentation networks (DPN-92 U-Net, random weights).

Prints one table: images/s and peak memory of one network forward at SIZE px (both official
networks share this architecture, so one row stands for either), of the whole ``HPASegmenter.segment``
(both networks + softmax + post-processing) on RAW_SIZE px images at scale 0.25, and of the
post-processing alone at SIZE px. CPU float32 always; CUDA float32 and AMP float16 when CUDA is
available. CPU peak memory is the process's max RSS (``resource.getrusage``), CUDA's
``torch.cuda.max_memory_allocated``. Random weights: speed and memory only, no accuracy.

    python benchmarks/bench_hpa_seg.py [--SIZE 512] [--N_CPU 2] [--THREADS 2]
"""
# ---------------------------------------------------------------------------- sizes
SIZE = 512            # network input side (px): the official working resolution of 2048 px images
RAW_SIZE = 2048       # side of the raw images given to segment() (scale 0.25 -> SIZE)
N_CPU = 2             # images per CPU measurement (a 512 px forward takes seconds on CPU)
N_CUDA = 16           # images per CUDA measurement
BATCH_CUDA = 8        # CUDA batch size
THREADS = 2           # torch CPU threads
SEED = 0

import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from common import config
from common.segmentation.dpn_unet import DPNUNet
from common.segmentation.hpa import HPASegmenter, label_cells


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _synthetic_maps(size: int, rng) -> tuple[np.ndarray, ...]:
    """Probability maps of a grid of round cells with nuclei, like a real 512 px working image."""
    yy, xx = np.mgrid[:size, :size]
    nb, ni, cb, ci = (np.zeros((size, size), np.float32) for _ in range(4))
    step = 64
    for cy in range(step // 2, size, step):
        for cx in range(step // 2, size, step):
            cy2, cx2 = cy + rng.integers(-6, 7), cx + rng.integers(-6, 7)
            d2 = (yy - cy2) ** 2 + (xx - cx2) ** 2
            ci[d2 <= 30 ** 2] = 0.9
            ni[d2 <= 14 ** 2] = 0.95
    return nb, ni, cb, ci


def main(argv=None):
    cfg = config.parse(globals(), argv)
    torch.set_num_threads(cfg.THREADS)
    torch.manual_seed(cfg.SEED)
    rng = np.random.default_rng(cfg.SEED)
    rows = []
    model = DPNUNet().eval()
    x_cpu = torch.randn(1, 3, cfg.SIZE, cfg.SIZE)

    # ---- one network, CPU
    with torch.no_grad():
        model(x_cpu[:, :, :64, :64])  # warm-up
        t = time.perf_counter()
        for _ in range(cfg.N_CPU):
            model(x_cpu)
        dt = time.perf_counter() - t
    rows.append(("network forward", f"cpu fp32 x{cfg.THREADS} thr", f"{cfg.SIZE}", cfg.N_CPU / dt,
                 f"{_rss_mb():.0f} MB rss"))

    # ---- segment(): both networks + post-processing, CPU
    raw = [rng.integers(0, 256, (cfg.RAW_SIZE, cfg.RAW_SIZE, 4), dtype=np.uint8)]
    seg = HPASegmenter(models=(model, model), device="cpu", scale=cfg.SIZE / cfg.RAW_SIZE, batch_size=1)
    t = time.perf_counter()
    seg.segment(raw)
    dt = time.perf_counter() - t
    rows.append(("segment() 2 nets + post", "cpu fp32", f"{cfg.RAW_SIZE}->{cfg.SIZE}", 1 / dt,
                 f"{_rss_mb():.0f} MB rss"))

    # ---- post-processing alone
    maps = _synthetic_maps(cfg.SIZE, rng)
    t = time.perf_counter()
    cell, _ = label_cells(*maps, pixel_scale=cfg.SIZE / cfg.RAW_SIZE)
    dt = time.perf_counter() - t
    rows.append((f"post-processing ({cell.max()} cells)", "cpu", f"{cfg.SIZE}", 1 / dt, "-"))

    # ---- CUDA
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        gpu = model.to(dev).to(memory_format=torch.channels_last)
        x = torch.randn(cfg.BATCH_CUDA, 3, cfg.SIZE, cfg.SIZE, device=dev).contiguous(
            memory_format=torch.channels_last)
        for amp in (False, True):
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                gpu(x)
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                t = time.perf_counter()
                n = 0
                while n < cfg.N_CUDA:
                    gpu(x)
                    n += cfg.BATCH_CUDA
                torch.cuda.synchronize()
                dt = time.perf_counter() - t
            rows.append(("network forward", f"cuda {'amp fp16' if amp else 'fp32'} b{cfg.BATCH_CUDA}",
                         f"{cfg.SIZE}", n / dt, f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MB"))
        seg = HPASegmenter(models=(gpu, gpu), device="cuda", scale=cfg.SIZE / cfg.RAW_SIZE,
                           batch_size=cfg.BATCH_CUDA, amp=True)
        imgs = raw * cfg.BATCH_CUDA
        seg.segment(imgs[:1])
        t = time.perf_counter()
        seg.segment(imgs)
        dt = time.perf_counter() - t
        rows.append(("segment() 2 nets + post", f"cuda amp b{cfg.BATCH_CUDA}", f"{cfg.RAW_SIZE}->{cfg.SIZE}",
                     len(imgs) / dt, "-"))
    else:
        rows.append(("network forward", "cuda fp32 / amp", f"{cfg.SIZE}", float("nan"), "no CUDA here"))

    print(f"\n{'what':<28} {'device':<20} {'px':>10} {'images/s':>9}  peak memory")
    for what, dev, px, ips, mem in rows:
        print(f"{what:<28} {dev:<20} {px:>10} {ips:>9.3f}  {mem}")
    print(f"(random weights; {torch.get_num_threads()} CPU threads; shared machine: timings are indicative)")
    return rows


if __name__ == "__main__":
    main()
