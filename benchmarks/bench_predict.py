"""Benchmark of S5's inference: batched vs one-forward-per-cell pipeline-1 scoring, mask encoding at
2048 px, and an estimate of a 22-model ensemble on one GPU within Kaggle's 9-hour limit.

Everything is made here (no S0..S4 outputs needed): N_IMAGES synthetic 512-px fields of view with
N_CELLS cells (common.demo.demo_render) and a randomly initialised timm model (pretrained=False, BatchNorm
statistics set on a few of the views so outputs are not saturated), saved as a checkpoint and
loaded by common.predict.predict.RunPredictor exactly as S5 loads a trained run. Times:
  1. pipeline-1 "masked" scoring of every cell: RunPredictor.predict (batches of BATCH_SIZE views,
     TTA variants in the same batch) vs predict_per_cell (one forward pass per cell view); seconds
     per image, and the largest |difference| of the probabilities (must be <= 1e-5). CPU, and CUDA
     (fp32 with TF32 off for the comparison, plus AMP) when a GPU is present.
  2. per 2048x2048 test image: the 512-px label map resized to 2048 (nearest), encode_label_map,
     and the PredictionString of N_CELLS cells x 19 classes.
  4. cellpool vs masked on the same checkpoint (MODEL_NAME @ CPU_IMAGE_SIZE, and CUDA_IMAGE_SIZE on a
     GPU): seconds per image at CELLPOOL_CELLS cells per image, and multiply-adds per image
     (torch.utils.flop_counter: FLOPs / 2) for masked and for cellpool at CELLPOOL_STRIDES.
  3. the ensemble estimate: views/s of the original's model size (EFF_MODEL at 512 px whole-image
     views and at 256 px cell crops) measured on this machine; on a GPU the estimate uses the
     measured GPU numbers, without one it uses ASSUMED_GPU_VIEWS_PER_S (stated, an assumption).

    python benchmarks/bench_predict.py
    python benchmarks/bench_predict.py --N_IMAGES 8 --MODEL_NAME resnet34 --CPU_IMAGE_SIZE 512
"""
# ---------------------------------------------------------------------------- data
N_IMAGES = 3                 # synthetic test images (512 px working resolution)
N_CELLS = 25                 # cells per image (the competition's test images average ~25)
SEED = 0                     # data and model initialisation
# ---------------------------------------------------------------------------- batched vs per cell
MODEL_NAME = "resnet18"      # timm backbone of the pipeline-1 model timed in part 1
CPU_IMAGE_SIZE = 256         # the model's IMAGE_SIZE on CPU (S3's default 512 is slow on 2 cores)
CUDA_IMAGE_SIZE = 512        # ... on CUDA (S3's default)
TTA = 2                      # flip/transpose variants per view (S5's default)
BATCH_SIZE = 32              # views per forward pass (S5's default)
THREADS = 2                  # torch CPU threads
TOLERANCE = 1e-5             # the largest allowed |batched - per cell| (fp32)
# ---------------------------------------------------------------------------- cellpool vs masked
CELLPOOL_CELLS = [5, 25, 50]  # cells per image of the cellpool-vs-masked table
CELLPOOL_STRIDES = [0, 16, 8]  # output strides of the cellpool rows (0 = the backbone's own, 32)
CELLPOOL_IMAGES = 2          # images per cell count
CELLPOOL_REPEATS = 3         # rounds of timings per image, the best kept (the machine may be shared)
# ---------------------------------------------------------------------------- encoding
ORIG_SIZE = 2048             # side of the original test images
ENCODE_REPEATS = 3           # timings per image, the best kept (the machine may be shared)
# ---------------------------------------------------------------------------- ensemble estimate
EFF_MODEL = "tf_efficientnet_b0"  # S3/S4.2's default backbone (the original's model size)
P1_MODELS = 11               # pipeline-1 runs (512-px masked / centred views: one per cell + the image)
P2_MODELS = 11               # pipeline-2 runs (256-px cell crops: one per cell)
P1_VIEW_SETS = 1             # distinct (VARIANT, IMAGE_SIZE) of the P1 runs (S5 builds each once per image)
P1_SIZE = 512                # S3's IMAGE_SIZE
P2_SIZE = 256                # S4.2's CELL_SIZE
KAGGLE_IMAGES = 559          # test images (public + private)
KAGGLE_HOURS = 9.0           # the notebook limit
ASSUMED_GPU_VIEWS_PER_S = 200.0  # ASSUMPTION used without a GPU: EFF_MODEL views/s at 512 px, AMP, P100-class
THROUGHPUT_SECONDS = 2.0     # time spent measuring each views/s figure (after one warm-up batch)

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np
import torch

from common import cells, config, fov
from common.competition import encoding
from common.constants import NUM_CLASSES
from common.data import augment
from common.demo import demo_render
from common.models import models
from common.predict import predict, views
from common.resize import resize_image, resize_labels


# ----------------------------------------------------------------------------- data and model
def make_images(n: int, n_cells: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` synthetic (512x512x4 uint8 image, uint16 label map with ``n_cells`` cells)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        r = demo_render.make_image(rng, 512, [0, 16], n_cells=n_cells)
        out.append((r["image"], r["cells"]))
    return out


def make_checkpoint(folder: Path, model_name: str, size: int, images, seed: int) -> Path:
    """A pipeline-1 checkpoint of a random model whose BatchNorm statistics come from real views."""
    cfg = {"PIPELINE": 1, "MODEL_NAME": model_name, "PRETRAINED": False, "PRETRAINED_FILE": "",
           "IMAGE_SIZE": size, "VARIANT": "masked", "LOSS": "bce", "DROPOUT": 0.5, "MSD_SAMPLES": 5}
    torch.manual_seed(seed)
    model = models.build_model(cfg)
    image, labels = images[0]
    ids = cells.cell_ids(labels)[:8]
    views = np.stack([resize_image(v, size) for v in cells.masked_views(image, labels, ids)])
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model.classifier.logits(augment.normalize(views, "competition"))
    path = folder / f"bench_{model_name}_{size}.pth"
    torch.save({"model": model.state_dict(), "config": cfg, "epoch": 0}, path)
    return path


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- part 1
def bench_batched(ckpt: Path, images, device: str, amp: bool, cfg) -> dict:
    p = predict.RunPredictor(ckpt, device, tta=cfg.TTA, batch_size=cfg.BATCH_SIZE, amp=amp)
    image, labels = images[0]
    p.predict(fov.FieldOfView.of(image, labels, cells.cell_ids(labels)[:4]))  # warm-up (cuDNN, allocator)
    p.predict_per_cell(fov.FieldOfView.of(image, labels, cells.cell_ids(labels)[:2]))
    t_batched = t_per_cell = 0.0
    diff, spread, n_cells = 0.0, 0.0, 0
    for image, labels in images:
        ids = cells.cell_ids(labels)
        _sync(p.device)
        t0 = time.perf_counter()
        batched = p.predict(fov.FieldOfView.of(image, labels, ids))[0]
        _sync(p.device)
        t1 = time.perf_counter()
        per_cell = p.predict_per_cell(fov.FieldOfView.of(image, labels, ids))
        _sync(p.device)
        t2 = time.perf_counter()
        t_batched += t1 - t0
        t_per_cell += t2 - t1
        diff = max(diff, float(np.abs(batched - per_cell).max()))
        spread = max(spread, float(np.ptp(batched, axis=0).max()))
        n_cells += len(ids)
    n = len(images)
    return dict(device=p.device.type + (" amp" if p.amp else " fp32"), model=f"{cfg.MODEL_NAME}@{p.size}",
                cells=n_cells / n, batched=t_batched / n, per_cell=t_per_cell / n, diff=diff, spread=spread,
                check=not p.amp)


# ----------------------------------------------------------------------------- part 2
def bench_encoding(images, cfg) -> dict:
    rng = np.random.default_rng(cfg.SEED)
    t = {"resize 512->2048": [], "encode_label_map": [], "PredictionString": []}
    n_masks = 0
    for _, labels in images:
        best = {k: float("inf") for k in t}
        for _ in range(cfg.ENCODE_REPEATS):
            t0 = time.perf_counter()
            full = resize_labels(labels, (cfg.ORIG_SIZE, cfg.ORIG_SIZE))
            t1 = time.perf_counter()
            masks = encoding.encode_label_map(full)
            t2 = time.perf_counter()
            ids = [c for c in cells.cell_ids(labels) if c in masks]
            encoding.prediction_string([masks[c] for c in ids], rng.random((len(ids), NUM_CLASSES)))
            t3 = time.perf_counter()
            for k, dt in zip(t, (t1 - t0, t2 - t1, t3 - t2)):
                best[k] = min(best[k], dt)
        for k in t:
            t[k].append(best[k])
        n_masks += len(masks)
    out = {k: float(np.mean(v)) for k, v in t.items()}
    out["masks/image"] = n_masks / len(images)
    return out


# ----------------------------------------------------------------------------- part 3
def views_per_second(model_name: str, size: int, device: torch.device, amp: bool, batch: int,
                     seconds: float) -> float:
    """Forward passes of random normalised views through a fresh classifier, views per second."""
    clf = models.Classifier(model_name, pretrained=False).to(device).eval()
    if device.type == "cuda":
        clf = clf.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 4, size, size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = torch.autocast("cuda", dtype=torch.float16) if amp else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), ctx:
        clf.logits(x)  # warm-up
        _sync(device)
        n, t0 = 0, time.perf_counter()
        while True:
            clf.logits(x)
            n += batch
            _sync(device)
            if time.perf_counter() - t0 >= seconds:
                break
    return n / (time.perf_counter() - t0)


def ensemble_hours(cfg, r1: float, r2: float, build_s: float, norm_s: float, encode_s: float) -> dict:
    """Hours for KAGGLE_IMAGES images: P1 runs see TTA x (cells + 1) views at P1_SIZE at r1 views/s,
    P2 runs TTA x cells crops at P2_SIZE at r2 views/s; plus CPU view building (once per view set,
    built and normalised once per view set and shared by its runs) and encoding."""
    v1 = cfg.TTA * (cfg.N_CELLS + 1)
    v2 = cfg.TTA * cfg.N_CELLS
    gpu = cfg.P1_MODELS * v1 / r1 + cfg.P2_MODELS * v2 / r2
    per_image = gpu + cfg.P1_VIEW_SETS * (build_s + norm_s) + encode_s
    return dict(v1=v1, v2=v2, gpu_s=gpu, per_image=per_image, hours=cfg.KAGGLE_IMAGES * per_image / 3600)


def view_prep_seconds(images, size: int) -> tuple[float, float]:
    """CPU seconds per image to build the masked views at ``size``, and to normalise them."""
    build = norm = 0.0
    for image, labels in images:
        t0 = time.perf_counter()
        views = np.stack([resize_image(v, size) for v in cells.masked_views(image, labels)])
        t1 = time.perf_counter()
        augment.normalize(views, "competition")
        build, norm = build + t1 - t0, norm + time.perf_counter() - t1
    return build / len(images), norm / len(images)


# ----------------------------------------------------------------------------- part 4
def multiply_adds(fn, *args) -> float:
    """Multiply-adds of one call ``fn(*args)`` (FLOPs / 2 as counted by torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops() / 2


def bench_cellpool(folder: Path, device: str, amp: bool, size: int, cfg) -> list[dict]:
    """Seconds per image and multiply-adds per image: masked vs cellpool (each stride), per cell count.

    The variants are timed in turn on each image, CELLPOOL_REPEATS rounds, the best of each kept:
    a shared machine's load then hits them alike."""
    rows = []
    for n_cells in cfg.CELLPOOL_CELLS:
        images = make_images(cfg.CELLPOOL_IMAGES, n_cells, cfg.SEED + n_cells)
        ck = make_checkpoint(folder, cfg.MODEL_NAME, size, images, cfg.SEED)
        kinds = [("masked", 0)] + [("cellpool", s) for s in cfg.CELLPOOL_STRIDES]
        preds = [predict.RunPredictor(ck, device, tta=cfg.TTA, batch_size=cfg.BATCH_SIZE, amp=amp,
                                      view=views.ViewChoice(v, s)) for v, s in kinds]
        image, labels = images[0]
        macs = []
        for p in preds:
            p.predict(fov.FieldOfView.of(image, labels))  # warm-up
            macs.append(multiply_adds(p.predict, fov.FieldOfView.of(image, labels)))
        best = np.full((len(preds), len(images)), np.inf)
        for _ in range(max(1, cfg.CELLPOOL_REPEATS)):
            for j, (image, labels) in enumerate(images):
                for i, p in enumerate(preds):
                    _sync(p.device)
                    t0 = time.perf_counter()
                    p.predict(fov.FieldOfView.of(image, labels))
                    _sync(p.device)
                    best[i, j] = min(best[i, j], time.perf_counter() - t0)
        n = sum(len(cells.cell_ids(lab)) for _, lab in images) / len(images)
        for (variant, stride), p, m, sec in zip(kinds, preds, macs, best.mean(1)):
            grid = size // (stride or 32)
            rows.append(dict(device=p.device.type + (" amp" if p.amp else " fp32"), cells=n, n_req=n_cells,
                             variant=variant if variant == "masked" else f"cellpool/{stride or 32}",
                             grid=f"{grid}x{grid}" if variant == "cellpool" else "-", seconds=float(sec),
                             macs=m))
    return rows


def print_cellpool(rows: list[dict], cfg, size_note: str) -> None:
    print(f"\n4. cellpool vs masked scoring, same checkpoint ({cfg.MODEL_NAME}, {size_note}, TTA {cfg.TTA}, "
          f"{cfg.CELLPOOL_IMAGES} images per row, best of {cfg.CELLPOOL_REPEATS};\n   cellpool/S = output "
          f"stride S, grid = its feature map; speed-up = masked s / this s)")
    print(f"{'device':<10} {'cells/img':>9} {'variant':<12} {'grid':>6} {'s/image':>9} {'GMACs/image':>12} "
          f"{'speed-up':>9}")
    for r in rows:
        base = next(b for b in rows if b["device"] == r["device"] and b["n_req"] == r["n_req"]
                    and b["variant"] == "masked")
        print(f"{r['device']:<10} {r['cells']:>9.1f} {r['variant']:<12} {r['grid']:>6} {r['seconds']:>9.3f} "
              f"{r['macs'] / 1e9:>12.2f} {base['seconds'] / r['seconds']:>8.1f}x")


# ----------------------------------------------------------------------------- main
def main(argv=None):
    cfg = config.parse(globals(), argv)
    torch.set_num_threads(cfg.THREADS)
    t_start = time.perf_counter()
    cuda = torch.cuda.is_available()
    images = make_images(cfg.N_IMAGES, cfg.N_CELLS, cfg.SEED)

    # 1. batched vs per cell
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as d:
        ck = make_checkpoint(Path(d), cfg.MODEL_NAME, cfg.CPU_IMAGE_SIZE, images, cfg.SEED)
        rows.append(bench_batched(ck, images, "cpu", False, cfg))
        if cuda:
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
            ck = make_checkpoint(Path(d), cfg.MODEL_NAME, cfg.CUDA_IMAGE_SIZE, images, cfg.SEED)
            rows.append(bench_batched(ck, images, "cuda", False, cfg))
            rows.append(bench_batched(ck, images, "cuda", True, cfg))
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cuda.matmul.allow_tf32 = True
    print(f"\n1. pipeline-1 scoring of every cell ({cfg.N_IMAGES} images, 512-px masked views resized to the "
          f"model's size, TTA {cfg.TTA}, BATCH_SIZE {cfg.BATCH_SIZE}, {cfg.THREADS} CPU threads;\n"
          f"   batched = RunPredictor.predict (also scores the whole image); per cell = predict_per_cell)")
    head = ("device", "model", "cells/img", "batched s/img", "per-cell s/img", "speed-up", "max|diff|", "")
    print("{:<10} {:<16} {:>9} {:>13} {:>14} {:>8} {:>10} {}".format(*head))
    ok = True
    for r in rows:
        verdict = ("ok" if r["diff"] <= cfg.TOLERANCE else "FAIL") if r["check"] else "(fp16: not checked)"
        ok &= verdict != "FAIL"
        print(f"{r['device']:<10} {r['model']:<16} {r['cells']:>9.1f} {r['batched']:>13.3f} "
              f"{r['per_cell']:>14.3f} {r['per_cell'] / r['batched']:>7.1f}x {r['diff']:>10.1e} {verdict}")
    print(f"(largest spread of a class probability across one image's cells: "
          f"{max(r['spread'] for r in rows):.3f}, so cells are told apart)")

    # 2. encoding
    enc = bench_encoding(images, cfg)
    encode_s = enc["resize 512->2048"] + enc["encode_label_map"] + enc["PredictionString"]
    print(f"\n2. per {cfg.ORIG_SIZE}x{cfg.ORIG_SIZE} test image ({enc['masks/image']:.0f} cells; best of "
          f"{cfg.ENCODE_REPEATS}), and for {cfg.KAGGLE_IMAGES} images")
    print(f"{'step':<20} {'s/image':>8} {f'{cfg.KAGGLE_IMAGES} images (s)':>18}")
    for k in ("resize 512->2048", "encode_label_map", "PredictionString"):
        print(f"{k:<20} {enc[k]:>8.4f} {enc[k] * cfg.KAGGLE_IMAGES:>18.1f}")
    print(f"{'total':<20} {encode_s:>8.4f} {encode_s * cfg.KAGGLE_IMAGES:>18.1f}")

    # 3. ensemble estimate
    cpu = torch.device("cpu")
    measured = [("cpu fp32", cfg.P1_SIZE, views_per_second(cfg.EFF_MODEL, cfg.P1_SIZE, cpu, False, 2,
                                                           cfg.THROUGHPUT_SECONDS)),
                ("cpu fp32", cfg.P2_SIZE, views_per_second(cfg.EFF_MODEL, cfg.P2_SIZE, cpu, False, 4,
                                                           cfg.THROUGHPUT_SECONDS))]
    if cuda:
        gpu = torch.device("cuda")
        for size in (cfg.P1_SIZE, cfg.P2_SIZE):
            measured.append(("cuda amp", size, views_per_second(cfg.EFF_MODEL, size, gpu, True, 64,
                                                                cfg.THROUGHPUT_SECONDS)))
    build, norm = view_prep_seconds(images, cfg.P1_SIZE)
    print(f"\n3. {cfg.P1_MODELS + cfg.P2_MODELS}-model ensemble ({cfg.P1_MODELS} pipeline-1 @ {cfg.P1_SIZE} "
          f"px, {cfg.P2_MODELS} pipeline-2 @ {cfg.P2_SIZE} px crops, {cfg.EFF_MODEL}, TTA {cfg.TTA}, "
          f"{cfg.N_CELLS} cells/image) on one GPU, {cfg.KAGGLE_IMAGES} images, limit {cfg.KAGGLE_HOURS:g} h")
    print(f"{'measured':<10} {'model':<26} {'views/s':>9}")
    for dev, size, rate in measured:
        print(f"{dev:<10} {f'{cfg.EFF_MODEL}@{size}':<26} {rate:>9.1f}")
    print(f"CPU per image: masked views @ {cfg.P1_SIZE} built {build:.3f} s (once per view set), "
          f"normalised {norm:.3f} s (once per view set); encoding {encode_s:.3f} s")
    if cuda:
        r1 = next(r for d, s, r in measured if d == "cuda amp" and s == cfg.P1_SIZE)
        r2 = next(r for d, s, r in measured if d == "cuda amp" and s == cfg.P2_SIZE)
        basis = f"MEASURED on this GPU ({torch.cuda.get_device_name(0)}): {r1:.0f} / {r2:.0f} views/s"
    else:
        r1 = cfg.ASSUMED_GPU_VIEWS_PER_S
        r2 = r1 * (cfg.P1_SIZE / cfg.P2_SIZE) ** 2
        basis = (f"ASSUMED (no GPU here): {r1:.0f} views/s at {cfg.P1_SIZE} px (--ASSUMED_GPU_VIEWS_PER_S), "
                 f"{r2:.0f} at {cfg.P2_SIZE} px (cost ~ pixels); CPU numbers above do not transfer to a GPU")
    est = ensemble_hours(cfg, r1, r2, build, norm, encode_s)
    print(f"ESTIMATE  hours = images x [P1 x TTA x (cells+1) / r{cfg.P1_SIZE} + P2 x TTA x cells / "
          f"r{cfg.P2_SIZE} + sets x (build + normalise) + encode] / 3600")
    print(f"          = {cfg.KAGGLE_IMAGES} x [{cfg.P1_MODELS} x {est['v1']} / {r1:.0f} + {cfg.P2_MODELS} x "
          f"{est['v2']} / {r2:.0f} + {cfg.P1_VIEW_SETS} x ({build:.3f} + {norm:.3f}) + "
          f"{encode_s:.3f}] / 3600")
    verdict = "within" if est["hours"] <= cfg.KAGGLE_HOURS else "OVER"
    print(f"          = {est['hours']:.2f} h ({est['per_image']:.2f} s/image, of which GPU "
          f"{est['gpu_s']:.2f} s) {verdict} the {cfg.KAGGLE_HOURS:g} h limit; "
          f"segmentation and image reading not included")
    print(f"          basis: {basis}")
    # 4. cellpool vs masked
    with tempfile.TemporaryDirectory(prefix="bench_cellpool_") as d:
        cp_rows = bench_cellpool(Path(d), "cpu", False, cfg.CPU_IMAGE_SIZE, cfg)
        note = f"{cfg.CPU_IMAGE_SIZE} px on CPU"
        if cuda:
            cp_rows += bench_cellpool(Path(d), "cuda", True, cfg.CUDA_IMAGE_SIZE, cfg)
            note += f", {cfg.CUDA_IMAGE_SIZE} px on CUDA"
    print_cellpool(cp_rows, cfg, note)

    print(f"\nbench_predict: {time.perf_counter() - t_start:.0f} s; batched == per cell within "
          f"{cfg.TOLERANCE:g}: {'yes' if ok else 'NO'}")
    return dict(rows=rows, encoding=enc, measured=measured, estimate=est, ok=ok, cellpool=cp_rows)


if __name__ == "__main__":
    main()
