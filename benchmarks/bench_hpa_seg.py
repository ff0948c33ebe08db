"""Benchmark of the official HPA segmentation: the post-processing before / after, stage by stage; the
networks and the whole segment() in fp32 and bf16; S2 end to end.

Prints tables, seconds per field of view (best of REPEAT runs, each variant timed in turn):
* post-processing of the official default path (the networks' maps -> label maps at the original size)
  per 2048² and 3072² field: "before" is the plain official code (tests/hpa_postprocess_oracle.py: its
  feeding and ``label_cell``, skimage's own calls step by step), "after" is ``label_from_maps``; whether
  both give the same cells and nuclei, pixel for pixel; one row per stage (feeding, the three
  watersheds, labelling, size filters and holes, closing, boundaries, Otsu, the rest) and the peak
  memory each adds (a fresh process per variant). Maps: the reference softmax maps of
  ../shared/hpa_seg_reference (both scenarios; resized x1.5 for 3072²), else synthetic round cells;
* one forward of the official network architecture (random weights) at the network size, fp32 and
  bf16 (autocast, channels-last), and the whole ``HPASegmenter.segment`` on a 2048² field with the
  same networks (their outputs replaced by the reference maps, so the post-processing is a real one);
* label agreement with the reference cells when the networks' arithmetic changes (channels-last fp32, bf16
  autocast): without the real weights, the change a variant makes to the logits of the official
  architecture (random weights, a smooth input), relative to their spread, is added to the reference
  maps' logits at the same relative size; the labels of those maps are compared with the reference;
* with ``--S2 true``: ``S2_data_process.py`` end to end on S2_IMAGES random 2048² fields (NUM_WORKERS
  2: the networks in the main process on the CPU as above, the post-processing in 2 processes),
  images/s; ``--CODE_DIR`` runs another checkout's S2 (e.g. the commit before, for the "before" column).

    python benchmarks/bench_hpa_seg.py [--SIDES 2048,3072] [--REPEAT 3] [--THREADS 2]
    python benchmarks/bench_hpa_seg.py --POST false --S2 true [--CODE_DIR /tmp/before]
"""
# ---------------------------------------------------------------------------- what
POST = True             # the post-processing table (before / after, stages, memory)
SEGMENT_CPU = True      # the network forwards and the whole segment() on the CPU
AGREEMENT = True        # label agreement of channels-last fp32 and bf16 with fp32 (transplanted errors)
S2 = False              # S2 end to end (slow: S2_IMAGES fields through both networks on the CPU)
# ---------------------------------------------------------------------------- sizes
SIDES = [2048, 3072]    # original sides of the fields of view (px); the networks see a quarter of it
REPEAT = 3              # runs per timing (the best is kept; the machine may be shared)
THREADS = 2             # torch CPU threads
PRECISIONS = ["fp32", "bf16"]  # the networks' arithmetic (SEG_PRECISION)
S2_IMAGES = 8           # fields of view for the S2 run
S2_WORKERS = 2          # S2's NUM_WORKERS
CODE_DIR = ""           # S2 from this checkout instead of this one ("" = this one)
SEED = 0

import inspect
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import cv2
import hpa_postprocess_oracle as oracle
import numpy as np
import torch

from common import config
from common.images import read_label_png
from common.segmentation import match_cells
from common.segmentation.dpn_unet import DPNUNet
from common.segmentation.hpa import HPASegmenter, exact
from common.segmentation.hpa import postprocess as pp

REFERENCE = ROOT.parent / "shared" / "hpa_seg_reference"
SCENARIOS = ("A_official_s0", "B_touching_s0")


# ----------------------------------------------------------------------------- maps
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


def maps(side: int, scenario: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(nuclei, cell) float maps of a ``side``-px field: a reference scenario (resized to side / 4)."""
    n = side // 4
    path = REFERENCE / f"{scenario}_softmax512.npz"
    if not path.is_file():
        nuc, cell = _synthetic(n, np.random.default_rng(SEED))
        return nuc, cell, "synthetic"
    with np.load(path) as z:
        nuc, cell = z["nuclei"], z["cell"]
    if nuc.shape[0] != n:
        nuc, cell = (cv2.resize(a, (n, n), interpolation=cv2.INTER_LINEAR) for a in (nuc, cell))
    return nuc, cell, scenario.split("_")[0]


# ----------------------------------------------------------------------------- post-processing
def before(nuc, cell, hw):
    return oracle.label_cell(*oracle.official_inputs(nuc, cell, hw))


def after(nuc, cell, hw):
    return pp.label_from_maps(nuc, cell, hw)


# what each stage is made of: (module, function name) -> stage; only the outermost timed call counts
STAGES_BEFORE = {(oracle, "official_inputs"): "feeding", (oracle.segmentation, "watershed"): "watershed",
                 (oracle.measure, "label"): "labelling", (oracle.ndi, "label"): "labelling",
                 (oracle, "remove_small_objects"): "size filters, holes",
                 (oracle, "remove_small_holes"): "size filters, holes", (oracle, "closing"): "closing",
                 (oracle.segmentation, "find_boundaries"): "boundaries, hole filling",
                 (oracle.ndi, "binary_fill_holes"): "boundaries, hole filling",
                 (oracle.filters, "threshold_otsu"): "Otsu"}
STAGES_AFTER = {(pp, "input_planes"): "feeding", (exact, "watershed"): "watershed",
                (exact, "parts"): "labelling", (exact, "label_equal"): "labelling",
                (exact, "drop_small_parts"): "size filters, holes",
                (exact, "fill_small_holes"): "size filters, holes",
                (exact, "part_sizes"): "size filters, holes", (exact, "grey_closing"): "closing",
                (exact, "thick_boundaries"): "boundaries, hole filling",
                (exact, "fill_holes"): "boundaries, hole filling", (exact, "otsu_uint8"): "Otsu"}
ORDER = ["feeding", "watershed 1 (nuclei)", "watershed 2 (cells)", "watershed 3 (cell borders)", "labelling",
         "size filters, holes", "closing", "boundaries, hole filling", "Otsu", "the rest (thresholds, casts)"]


def staged(fn, stages: dict, *args) -> tuple[float, dict, object]:
    """``fn(*args)`` with the time of each stage (the outermost named call; watersheds numbered)."""
    spent, depth, saved, n_ws = {}, [0], {}, [0]

    def timed(f, stage):
        def g(*a, **k):
            if depth[0]:
                return f(*a, **k)
            name = stage
            if stage == "watershed":
                n_ws[0] += 1
                name = ORDER[n_ws[0]]
            depth[0] += 1
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                depth[0] -= 1
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t
        return g
    for (mod, name), stage in stages.items():
        saved[(mod, name)] = getattr(mod, name)
        setattr(mod, name, timed(saved[(mod, name)], stage))
    try:
        t = time.perf_counter()
        out = fn(*args)
        total = time.perf_counter() - t
    finally:
        for (mod, name), f in saved.items():
            setattr(mod, name, f)
    spent[ORDER[-1]] = total - sum(spent.values())
    return total, spent, out


def peak_mb(variant: str, side: int, scenario: str) -> float:
    """Peak memory (MB) one post-processing adds, in a fresh process: the high-water mark of its resident
    memory is reset once the maps are loaded (Linux: /proc/self/clear_refs), then read after the call."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
            "import bench_hpa_seg as b\n"
            f"nuc, cell, _ = b.maps({side}, {scenario!r})\n"
            f"b.{variant}(nuc[:8, :8], cell[:8, :8], (32, 32))\n"  # warm: every module loaded
            "st = lambda: open('/proc/self/status').read().split('\\n')\n"
            "rss = lambda key: int(next(x for x in st() if x.startswith(key)).split()[1])\n"
            "open('/proc/self/clear_refs', 'w').write('5')\n"
            "base = rss('VmRSS')\n"
            f"b.{variant}(nuc, cell, ({side}, {side}))\n"
            "print((rss('VmHWM') - base) / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    try:
        return float(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return float("nan")  # no /proc (not Linux)


def post_table(cfg) -> None:
    print(f"\npost-processing, official default path: s per field (best of {cfg.REPEAT}), before = the plain "
          "official code, after = label_from_maps")
    for side in cfg.SIDES:
        for scenario in SCENARIOS:
            nuc, cell, src = maps(side, scenario)
            best = {}
            for _ in range(max(1, cfg.REPEAT)):
                for name, fn, stages in (("before", before, STAGES_BEFORE), ("after", after, STAGES_AFTER)):
                    run = staged(fn, stages, nuc, cell, (side, side))
                    if name not in best or run[0] < best[name][0]:
                        best[name] = run
            (tb, sb, (cb, nb)), (ta, sa, (ca, na)) = best["before"], best["after"]
            same = np.array_equal(cb, ca) and np.array_equal(nb, na)
            mem = [peak_mb(v, side, scenario) for v in ("before", "after")]
            print(f"\n{side}² {src} ({int(ca.max())} cells), identical: {same}")
            print(f"  {'stage':<32} {'before':>8} {'after':>8}")
            for stage in ORDER:
                print(f"  {stage:<32} {sb.get(stage, 0.0):>8.3f} {sa.get(stage, 0.0):>8.3f}")
            print(f"  {'total':<32} {tb:>8.3f} {ta:>8.3f}   ({tb / ta:.1f}x)")
            print(f"  {'peak memory added (MB)':<32} {mem[0]:>8.0f} {mem[1]:>8.0f}")


# ----------------------------------------------------------------------------- networks, segment()
class TimedStandIn(torch.nn.Module):
    """The official architecture's forward (random weights: the arithmetic is timed), returning the
    reference logits instead of its own (so that the post-processing labels real-looking maps)."""

    def __init__(self, probs: np.ndarray):
        super().__init__()
        self.net = DPNUNet().eval()
        self.register_buffer("logits", torch.from_numpy(np.log(np.maximum(probs, 1e-12))).permute(2, 0, 1))

    def forward(self, x):
        self.net(x)
        return self.logits[None].expand(x.shape[0], -1, -1, -1)


def network_table(cfg) -> None:
    print(f"\nnetworks on the CPU ({cfg.THREADS} threads; CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}): s per image, best of {cfg.REPEAT}")
    nuc, cell, src = maps(2048, SCENARIOS[1])
    img = [np.random.default_rng(cfg.SEED).integers(0, 256, (2048, 2048, 4), dtype=np.uint8)]
    x = torch.randn(1, 3, 512, 512)
    segs = {p: HPASegmenter((TimedStandIn(nuc), TimedStandIn(cell)), device="cpu", precision=p)
            for p in cfg.PRECISIONS}
    best: dict[str, list[float]] = {}
    for _ in range(max(1, cfg.REPEAT)):
        for p, seg in segs.items():  # each variant in turn
            forward = _timed(lambda seg=seg: seg._probs(seg.cell_model.net, x, False))
            whole = _timed(lambda seg=seg: seg.segment(img))
            best[p] = [min(a, b) for a, b in zip(best.get(p, [np.inf, np.inf]), (forward, whole))]
    for p, (forward, whole) in best.items():
        print(f"  {p}: one network forward at 512²: {forward:.2f}; segment() of a 2048² field (both networks "
              f"+ post-processing, {src} maps): {whole:.2f}")


def agreement_table(cfg) -> None:
    print("\nlabels when the networks' arithmetic changes (its error on the official architecture, random "
          "weights, transplanted onto the reference maps' logits):")
    variants = {"fp32 channels-last": (True, False), "bf16 autocast channels-last": (True, True)}
    errors = {}
    for k, (kind, seed) in enumerate((("nuclei", 1), ("cell", 2))):
        torch.manual_seed(cfg.SEED + k)
        net = DPNUNet().eval()
        g = torch.Generator().manual_seed(seed)
        x = torch.nn.functional.interpolate(torch.rand(1, 3, 32, 32, generator=g), size=(512, 512),
                                            mode="bilinear") * 4 - 2
        z = _logits(net, x, False, False)
        errors[kind] = {v: (_logits(net, x, *flags) - z) / z.std() for v, flags in variants.items()}
    for scenario in SCENARIOS:
        if not (REFERENCE / f"{scenario}_ref_cell.png").is_file():
            print("  (no reference maps)")
            return
        nuc, cell, _ = maps(2048, scenario)
        ref = [read_label_png(REFERENCE / f"{scenario}_ref_{w}.png") for w in ("cell", "nucleus")]
        for v in [*variants, "bf16 rounding of the logits only"]:
            probs = []
            for kind, p in (("nuclei", nuc), ("cell", cell)):
                z = torch.from_numpy(np.log(np.maximum(p, 1e-7)))
                z = z.to(torch.bfloat16).float() if v not in variants else z + errors[kind][v] * z.std()
                probs.append(z.softmax(-1).numpy())
            got = pp.label_from_maps(*probs, (2048, 2048))
            m = [match_cells(r, g_) for r, g_ in zip(ref, got)]
            px = [int((r != g_).sum()) for r, g_ in zip(ref, got)]
            c, n = m
            print(f"  {scenario} {v}: pixels that differ: cells {px[0]}, nuclei {px[1]}; cells matched "
                  f"{c['matched']}/{c['n_true']}, mean IoU {c['mean_iou']:.4f} (worst "
                  f"{c['ious'].min():.3f}); nuclei {n['matched']}/{n['n_true']}, {n['mean_iou']:.4f}")


def _logits(net, x, channels_last: bool, bf16: bool) -> torch.Tensor:
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = net(x).float()[0].permute(1, 2, 0).contiguous()
    net.to(memory_format=torch.contiguous_format)
    return out


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ----------------------------------------------------------------------------- S2 end to end
_S2_DRIVER = """
import json, sys, time, resource
sys.path.insert(0, {code!r})
import cv2, numpy as np, torch
torch.set_num_threads({threads})
from common.segmentation.dpn_unet import DPNUNet
from common.segmentation.hpa import HPASegmenter, postprocess
import S2_data_process as S2
assert postprocess.__file__.startswith({code!r}), postprocess.__file__
with np.load({maps!r}) as z:
    maps = z["nuclei"], z["cell"]

{stand_in}

def get_segmenter(name, weights_dir=None, device="cpu", **kw):
    kw = {{k: v for k, v in kw.items() if k in ("label_at", "post_workers", "precision")}}
    return HPASegmenter((TimedStandIn(maps[0]), TimedStandIn(maps[1])), device="cpu", **kw)
S2.segmentation.get_segmenter = get_segmenter
S2.segmentation.resolve_name = lambda name, d=None: "hpa"
t = time.perf_counter()
S2.main(["--COMPETITION_DIR", {data!r}, "--HPA512_DIR", {out!r}, "--SEGMENTER", "hpa", "--NUM_WORKERS",
         "{workers}", "--DEVICE", "cpu"] + {extra!r})
dt = time.perf_counter() - t
print(json.dumps({{"s": dt, "rss_main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def s2_table(cfg) -> None:
    code = str(Path(cfg.CODE_DIR).resolve()) if cfg.CODE_DIR else str(ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        rng = np.random.default_rng(cfg.SEED)
        ids = [f"f{i:02d}" for i in range(cfg.S2_IMAGES)]
        for i in ids:
            for c in ("red", "green", "blue", "yellow"):
                (data / "test").mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(data / "test" / f"{i}_{c}.png"), rng.integers(0, 256, (2048, 2048), np.uint8))
        maps_file = Path(tmp) / "maps.npz"
        nuc, cell, _ = maps(2048, SCENARIOS[1])
        np.savez(maps_file, nuclei=nuc, cell=cell)
        (data / "sample_submission.csv").write_text(
            "ID,ImageWidth,ImageHeight,PredictionString\n" + "".join(f"{i},2048,2048,\n" for i in ids))
        print(f"\nS2 end to end, {cfg.S2_IMAGES} fields of 2048² (NUM_WORKERS {cfg.S2_WORKERS}, networks on "
              f"the CPU, {cfg.THREADS} threads), code from {code}")
        for precision in cfg.PRECISIONS:
            extra = ["--SEG_PRECISION", precision] if precision != "fp32" else []
            if extra and cfg.CODE_DIR:
                continue  # another checkout may not know SEG_PRECISION
            driver = _S2_DRIVER.format(code=code, threads=cfg.THREADS, maps=str(maps_file), data=str(data),
                                       out=str(Path(tmp) / precision), workers=cfg.S2_WORKERS, extra=extra,
                                       stand_in=inspect.getsource(TimedStandIn))  # that checkout's DPNUNet
            run = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, cwd=code)
            if run.returncode:
                print(run.stdout[-2000:], run.stderr[-4000:])
                raise SystemExit(f"S2 run failed ({precision})")
            res = json.loads(run.stdout.strip().splitlines()[-1])
            ips = cfg.S2_IMAGES / res["s"]
            print(f"  {precision}: {res['s']:.1f} s, {ips:.3f} images/s; peak RSS of the main process "
                  f"{res['rss_main']:.0f} MB")


def main(argv=None):
    cfg = config.parse(globals(), argv)
    torch.set_num_threads(cfg.THREADS)
    torch.manual_seed(cfg.SEED)
    print(f"{torch.get_num_threads()} torch threads, {cv2.getNumThreads()} OpenCV threads; "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB RSS at start")
    if cfg.POST:
        post_table(cfg)
    if cfg.SEGMENT_CPU:
        network_table(cfg)
    if cfg.AGREEMENT:
        agreement_table(cfg)
    if cfg.S2:
        s2_table(cfg)
    print("(shared machine: the best of several runs, indicative)")


if __name__ == "__main__":
    main()
