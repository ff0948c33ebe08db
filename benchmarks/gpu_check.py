"""GPU check in one command: every recipe family of the original at its real size, the HPA
segmentation networks, and DDP on all visible GPUs; one table. Run by ``benchmarks/gpu_check.sh``.

Per family (pipeline, timm model, input size) of ``common/recipes.py``: build the model
(``pretrained=False``: speed only), one AMP training step (loss finite), then training images/s
(pipeline 1: 512-px images; pipeline 2: bags of 16 cells, per image = per bag) and S5 images/s
(a test image = CELLS cells x the recipe's TTA views; pipeline 1 masked/center views, pipeline 2
cell crops). GPU-hours per recipe = EPOCHS x TRAIN_IMAGES / training images/s (+ S5 for 559 test
images). The HPA networks: one 512-px forward, AMP, images/s (two networks per test image).
DDP: ``torchrun --nproc_per_node=<GPUs>`` runs this file with ``--DDP_WORKER true``, which trains
a synthetic pipeline-1 model through ``train.fit`` (the real DDP path) and reports images/s.

    bash benchmarks/gpu_check.sh                 # on a GPU machine (< 8 min on one H200)
    python benchmarks/gpu_check.py --QUICK true  # CPU smoke run at tiny sizes (tests)
"""
# ---------------------------------------------------------------------------- what
QUICK = False            # tiny sizes, few steps (CPU smoke run; the numbers mean nothing)
FAMILIES = 0             # measure only the first N families (0 = all)
DDP = True               # also run the DDP check under torchrun (all visible GPUs)
DDP_WORKER = False       # internal: this process is a torchrun worker of the DDP check
ESTIMATE_ONLY = False    # no timing: the FLOP-based GPU-hour estimate of every recipe (any machine)
ASSUMED_TFLOPS = 60.0    # effective AMP training throughput assumed by the estimate (TFLOP/s)
# ---------------------------------------------------------------------------- sizes
BATCH = 32               # images (pipeline 1) or bags (pipeline 2) per training step, as the original
CELLS_PER_BAG = 16       # cells per bag (pipeline 2)
CELLS = 22               # cells per test image (competition average)
TRAIN_STEPS = 6          # timed training steps per family (after one warm-up step)
INFER_BATCHES = 6        # timed inference batches per family
TRAIN_IMAGES = 80000     # training images per epoch for the GPU-hour estimate (4/5 of ~100k with external)
TEST_IMAGES = 559        # competition test images
EPOCHS = 15              # the original's epochs
SEED = 0

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

from common import config, recipes
from common.models import models
from common.training import train


def families(limit: int = 0) -> list[dict]:
    """One entry per distinct (pipeline, model, size) of the recipes, with the recipes it covers."""
    out: dict[tuple, dict] = {}
    for name, r in recipes.RECIPES.items():
        c = r["constants"]
        pipeline = 1 if r["script"] == "S3" else 2
        size = int(c["IMAGE_SIZE"] if pipeline == 1 else c["CELL_SIZE"])
        key = (pipeline, c["MODEL_NAME"], size)
        fam = out.setdefault(key, {"pipeline": pipeline, "model": c["MODEL_NAME"], "size": size,
                                   "recipes": [], "tta": r["tta"], "constants": c})
        fam["recipes"].append(name)
    fams = list(out.values())
    return fams[:limit] if limit else fams


def _cfg(fam: dict, quick: bool) -> dict:
    cfg = dict(fam["constants"], PIPELINE=fam["pipeline"], PRETRAINED=False, PRETRAINED_FILE="",
               DROPOUT=0.5, MSD_SAMPLES=5, MIL_POOL="max", MIL_TOPK=4, MIL_LSE_R=5.0, MIL_CHUNK=256)
    cfg.setdefault("LOSS", "bce")
    cfg.setdefault("ADAM_EPS", 1e-8)
    return cfg


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def measure(fam: dict, dev: torch.device, quick: bool, cfg_run: dict) -> dict:
    size = 32 if quick else fam["size"]
    if fam["pipeline"] == 1 and quick:
        size = 64
    bs = 2 if quick else int(cfg_run["BATCH"])
    bag = 2 if quick else int(cfg_run["CELLS_PER_BAG"])
    cfg = _cfg(fam, quick)
    model = models.build_model(cfg).to(dev)
    cuda = dev.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = train.build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    shape = (bs, 4, size, size) if fam["pipeline"] == 1 else (bs, bag, 4, size, size)
    x = torch.randn(shape, device=dev)
    y = (torch.rand(bs, 19, device=dev) > 0.8).float()

    def step():
        with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            loss = model({"image": x, "label": y})["loss"]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    model.train()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    loss = step()
    ok = bool(torch.isfinite(loss).item())
    n_steps = 1 if quick else int(cfg_run["TRAIN_STEPS"])
    _sync(dev)
    t = time.perf_counter()
    for _ in range(n_steps):
        step()
    _sync(dev)
    train_ips = n_steps * bs / (time.perf_counter() - t)
    mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")

    # inference: views of the test-time input through the classifier, AMP on CUDA
    model.eval()
    views = torch.randn(bs if fam["pipeline"] == 1 else bs * bag, 4, size, size, device=dev)
    if cuda:
        views = views.contiguous(memory_format=torch.channels_last)
    n_inf = 1 if quick else int(cfg_run["INFER_BATCHES"])
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
        model.classifier.logits(views)
        _sync(dev)
        t = time.perf_counter()
        for _ in range(n_inf):
            model.classifier.logits(views)
        _sync(dev)
    views_per_s = n_inf * len(views) / (time.perf_counter() - t)
    s5_ips = views_per_s / (int(cfg_run["CELLS"]) * fam["tta"])
    hours = (int(cfg_run["EPOCHS"]) * int(cfg_run["TRAIN_IMAGES"]) / train_ips
             + int(cfg_run["TEST_IMAGES"]) / s5_ips) / 3600
    return {"ok": ok, "train_ips": train_ips, "s5_ips": s5_ips, "mem_gb": mem, "gpu_h": hours}


def forward_gflops(fam: dict, probe: int = 128) -> float:
    """Forward GFLOPs of one view at the family's size (counted at ``probe`` px, scaled by area)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = models.build_model(_cfg(fam, False)).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.classifier.logits(torch.randn(1, 4, probe, probe))
    return fc.get_total_flops() / 1e9 * (fam["size"] / probe) ** 2


def estimate(cfg_run: dict) -> None:
    """GPU-hours per recipe from FLOPs: training = 3 x forward (forward + backward) per view, a
    pipeline-2 image = CELLS_PER_BAG views; S5 = CELLS x TTA views per test image."""
    tflops = float(cfg_run["ASSUMED_TFLOPS"]) * 1e12
    print(f"{'family':<34} {'px':>4} {'recipes':>7} {'GFLOP/view':>10} {'est. GPU-h/recipe':>17}")
    total = 0.0
    for fam in families(cfg_run["FAMILIES"]):
        g = forward_gflops(fam)
        views = 1 if fam["pipeline"] == 1 else int(cfg_run["CELLS_PER_BAG"])
        train_flops = 3 * g * 1e9 * views * int(cfg_run["EPOCHS"]) * int(cfg_run["TRAIN_IMAGES"])
        s5_flops = g * 1e9 * int(cfg_run["CELLS"]) * fam["tta"] * int(cfg_run["TEST_IMAGES"])
        hours = (train_flops + s5_flops) / tflops / 3600
        total += hours * len(fam["recipes"])
        label = f"p{fam['pipeline']} {fam['model']}"
        print(f"{label:<34} {fam['size']:>4} {len(fam['recipes']):>7} {g:>10.2f} {hours:>17.2f}")
    print(f"all recipes: {total:.1f} GPU-hours, an ESTIMATE at an assumed {cfg_run['ASSUMED_TFLOPS']:g} "
          f"TFLOP/s effective ({cfg_run['EPOCHS']} epochs x {cfg_run['TRAIN_IMAGES']} images + S5 on "
          f"{cfg_run['TEST_IMAGES']} test images)")


def hpa_networks(dev: torch.device, quick: bool) -> float:
    from common.segmentation.dpn_unet import DPNUNet

    size, bs = (64, 1) if quick else (512, 8)
    net = DPNUNet().to(dev).eval()
    cuda = dev.type == "cuda"
    if cuda:
        net = net.to(memory_format=torch.channels_last)
    x = torch.randn(bs, 3, size, size, device=dev)
    n = 1 if quick else 5
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
        net(x)
        _sync(dev)
        t = time.perf_counter()
        for _ in range(n):
            net(x)
        _sync(dev)
    return n * bs / (time.perf_counter() - t) / 2  # two networks per test image


class _Synthetic(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int):
        self.n, self.size = n, size

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"image": torch.randn(4, self.size, self.size, generator=g),
                "label": (torch.rand(19, generator=g) > 0.8).float()}


def ddp_worker(cfg_run: dict) -> None:
    """Under torchrun: a pipeline-1 densenet121 trained through train.fit on synthetic images."""
    quick = bool(cfg_run["QUICK"])
    size, n = (64, 16) if quick else (512, 64 * 32)
    cfg = dict(_cfg(families()[0], quick), MODEL_NAME="densenet121", LOSS="bce", EPOCHS=1, BATCH_SIZE=2
               if quick else 32, NUM_WORKERS=2, DEVICE="auto", AMP=True, RESUME=False, MONITOR="val_mAP",
               VAL_EVERY=1, MAX_TRAIN_STEPS=0, SEED=0, OVERWRITE=False, ACCUM_STEPS=1, EMA_DECAY=0.0,
               GRAD_CLIP=0.0, SCHEDULE="cosine", WARMUP_EPOCHS=0.0, WARMUP_MULT=1.0, MIN_LR=0.0, LR=1e-4,
               LR_STEP_EPOCHS=[], LR_STEP_VALUES=[1e-4], OPTIMIZER="adam", ADAM_EPS=1e-8, WEIGHT_DECAY=0.0)
    model = models.build_model(cfg)
    out = Path(tempfile.mkdtemp(prefix="gpu_check_ddp_"))
    t = time.perf_counter()
    train.fit(cfg, model, _Synthetic(n, size), None, out)
    dt = time.perf_counter() - t
    if int(os.environ.get("RANK", "0")) == 0:
        print("DDP_RESULT " + json.dumps({"world": int(os.environ.get("WORLD_SIZE", "1")), "images": n,
                                           "seconds": dt, "ips": n / dt}), flush=True)


def run_ddp(quick: bool) -> dict | None:
    n_gpu = torch.cuda.device_count()
    if n_gpu == 0 and not quick:
        return None
    procs = max(1, n_gpu) if n_gpu else 2
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", __file__,
           "--DDP_WORKER", "true", "--QUICK", str(quick).lower()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    for line in res.stdout.splitlines():
        if line.startswith("DDP_RESULT "):
            return json.loads(line[len("DDP_RESULT "):])
    print(res.stdout[-3000:], res.stderr[-3000:], file=sys.stderr)
    return {"world": procs, "images": 0, "seconds": float("nan"), "ips": float("nan"), "failed": True}


def main(argv=None):
    cfg = config.parse(globals(), argv, quiet=True)
    torch.manual_seed(cfg.SEED)
    if cfg.DDP_WORKER:
        return ddp_worker(cfg)
    if cfg.ESTIMATE_ONLY:
        return estimate(cfg)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows = []
    t0 = time.perf_counter()
    for fam in families(cfg.FAMILIES):
        m = measure(fam, dev, cfg.QUICK, cfg)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        rows.append((fam, m))
        print(f"  {fam['model']} p{fam['pipeline']} @{fam['size']}: train {m['train_ips']:.1f} img/s, "
              f"S5 {m['s5_ips']:.2f} img/s ({time.perf_counter() - t0:.0f} s)", flush=True)
    hpa = hpa_networks(dev, cfg.QUICK)
    ddp = run_ddp(cfg.QUICK) if cfg.DDP else None

    print(f"\nGPU check on {name} (torch {torch.__version__}; AMP and channels_last on CUDA; "
          f"random weights){' QUICK: tiny sizes, numbers meaningless' if cfg.QUICK else ''}")
    head = (f"{'family':<34} {'px':>4} {'recipes':>7} {'step':>4} {'train img/s':>11} {'S5 img/s':>9} "
            f"{'peak GB':>7} {'GPU-h/recipe':>12}")
    print(head)
    total = 0.0
    for fam, m in rows:
        n = len(fam["recipes"])
        total += n * m["gpu_h"]
        label = f"p{fam['pipeline']} {fam['model']}"
        print(f"{label:<34} {fam['size']:>4} {n:>7} "
              f"{'ok' if m['ok'] else 'NaN':>4} {m['train_ips']:>11.1f} {m['s5_ips']:>9.2f} "
              f"{m['mem_gb']:>7.1f} {m['gpu_h']:>12.2f}")
    print(f"all {sum(len(f['recipes']) for f, _ in rows)} recipes: {total:.1f} GPU-hours "
          f"({cfg.EPOCHS} epochs x {cfg.TRAIN_IMAGES} images, + S5 on {cfg.TEST_IMAGES} test images)")
    print(f"HPA segmentation (2 networks at 512 px, AMP): {hpa:.1f} test images/s")
    if ddp:
        print(f"DDP ({ddp['world']} processes, train.fit, densenet121): {ddp['ips']:.1f} images/s"
              f"{' FAILED' if ddp.get('failed') else ''}")
    elif cfg.DDP:
        print("DDP: no GPU visible, not run")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return rows


if __name__ == "__main__":
    main()
