# ruff: noqa: E402  (constants block first, as in the numbered scripts)
"""Benchmark of S5 at screen scale: fields/s and peak memory as the number of fields grows, a kill and
a resume, one process against torchrun ranks and --SHARD runs, cells.parquet against cells.csv, and
the report; an estimate for ESTIMATE fields from the measured slopes.

Writes DISTINCT synthetic fields of SIDE px (S0's renderer, one 4-plane 16-bit TIFF each) and links them
under N distinct names (repeated content, distinct IDs: no disk per field), then runs S5 --IMAGES on
them as a user would (a subprocess, the built-in segmenter, the runs in RUNS), each run under
``/usr/bin/time`` (its peak RSS: the largest process of its tree). Prints one table per part:

* scale: for each N in N_FIELDS, seconds, fields/s and peak RSS; with BASELINE_REPO (a checkout of S5
  before it streamed, e.g. ``git worktree add ../old 085c78e``) the same for that S5, and the extra
  cost per field of the streaming S5 beyond the baseline's;
* kill: SPREAD_FIELDS fields, S5 killed (SIGKILL) at a random moment, run again: the time to the end,
  the fields it found done and redid, and whether the outputs equal an uninterrupted run's;
* spread: SPREAD_FIELDS fields in 1 process, under ``torchrun --nproc_per_node RANKS`` and as RANKS
  ``--SHARD i/RANKS`` runs side by side + ``--MERGE true`` (THREADS threads each): fields/s and equality;
* tables: cells.parquet and cells.csv of the largest run: MB and pandas read time;
* report: the largest run's report: pages, MB of report.html + report/, the time to open its first and
  last page in Chromium (``bench_report_pages.open_time``);
* estimate: seconds, peak RSS, parquet MB at ESTIMATE fields from the slopes between the last two N.

    python benchmarks/bench_scale.py                                  # needs bash run_all.sh's runs
    python benchmarks/bench_scale.py --N_FIELDS 1000,10000 --BASELINE_REPO ../old
"""

# ---------------------------------------------------------------------------- fields
N_FIELDS = [1000, 10000]      # fields per scale run (the last two give the slope)
SIDE = 256                    # field side (px)
DISTINCT = 8                  # distinct synthetic fields, repeated under distinct names
SEED = 0
# ---------------------------------------------------------------------------- S5
RUNS = ["output/demo_p1/fold0", "output/demo_p2/fold0"]  # the demo's runs (bash run_all.sh)
CHECKPOINT = "best.pth"       # which checkpoint of a run folder
TTA = 1                       # S5's TTA
IMAGE_SIZE = 256              # S5's working size (fields are segmented at it)
CHUNK = 64                    # S5's fields per part
REPORT_PAGE = 200             # S5's fields per report page
DEVICE = "cpu"                # S5's device (cuda: the S5 scale row of benchmarks/gpu_check.sh)
BASELINE_REPO = ""            # a checkout of S5 before streaming, timed on the same fields ("" = none)
# ---------------------------------------------------------------------------- kill / spread
SPREAD_FIELDS = 1000          # fields of the kill, torchrun and shard runs
RANKS = 2                     # torchrun processes and shards
THREADS = 1                   # torch threads per process in the spread runs
# ---------------------------------------------------------------------------- estimate / output
ESTIMATE = 100000             # fields of the estimate
OPEN_REPEATS = 3              # opens of each report page timed (the median is printed)
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
BENCH_DIR = ""                # keep fields and outputs here ("" = a temporary folder, removed)
PARTS = ["scale", "spread", "kill", "tables", "report", "estimate"]  # the parts to run, in this order

import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_report_pages
import numpy as np
import pandas as pd
import tifffile

from common import config, constants
from common.demo import demo_render
from common.report import report

COMPARED = ("submission.csv", "cell_predictions.csv", "cells.csv", "images.csv", "cells.parquet")


def make_fields(folder: Path, n: int, cfg) -> Path:
    """``folder/fields_{n}/f{i:06d}.tif``, i < n: hard links to DISTINCT synthetic 4-plane 16-bit fields."""
    src = folder / "distinct"
    src.mkdir(parents=True, exist_ok=True)
    for k in range(cfg.DISTINCT):
        if not (src / f"{k}.tif").is_file():
            img = demo_render.make_image(np.random.default_rng(cfg.SEED + k), cfg.SIDE, [k % 18], bit16=True)
            tifffile.imwrite(src / f"{k}.tif", np.moveaxis(img["image16"], -1, 0), photometric="minisblack")
    out = folder / f"fields_{n}"
    out.mkdir(exist_ok=True)
    for i in range(n):
        if not (out / f"f{i:06d}.tif").exists():
            os.link(src / f"{i % cfg.DISTINCT}.tif", out / f"f{i:06d}.tif")
    return out


def s5_command(cfg, images: Path, out: Path, *extra: str, repo: Path = ROOT) -> list[str]:
    """S5 on ``images`` as a user runs it (``repo``: another checkout's S5, which takes only the common
    constants)."""
    runs = ",".join(str(constants.resolve(r)) for r in cfg.RUNS)
    cmd = [
        str(repo / "S5_predict.py"),
        "--IMAGES",
        str(images),
        "--OUTPUT_DIR",
        str(out),
        "--RUNS",
        runs,
        "--CHECKPOINT",
        cfg.CHECKPOINT,
        "--TTA",
        str(cfg.TTA),
        "--IMAGE_SIZE",
        str(cfg.IMAGE_SIZE),
        "--SEGMENTER",
        "builtin",
        "--DEVICE",
        cfg.DEVICE,
        "--N_OVERLAYS",
        "0",
    ]
    if repo == ROOT:
        cmd += ["--CHUNK", str(cfg.CHUNK), "--REPORT_PAGE", str(cfg.REPORT_PAGE)]
    return cmd + list(extra)


def timed(cmd: list[str], env: dict | None = None, log: Path | None = None) -> dict:
    """Run ``cmd`` (a script and its arguments, or a launcher) under /usr/bin/time: seconds, peak RSS (MB)."""
    cmd = [sys.executable, *cmd] if cmd[0].endswith(".py") else cmd
    t0 = time.time()
    p = subprocess.run(
        ["/usr/bin/time", "-f", "RSS_KB %M", *cmd],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    seconds = time.time() - t0
    if log is not None:
        log.write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        raise SystemExit(f"bench_scale: {' '.join(cmd[:3])} ... failed ({p.returncode}):\n{p.stderr[-2000:]}")
    rss = int(re.findall(r"RSS_KB (\d+)", p.stderr)[-1]) / 1024
    return {"s": seconds, "rss": rss, "out": p.stdout + p.stderr}


def digests(out: Path) -> dict:
    return {
        f: hashlib.sha256((out / f).read_bytes()).hexdigest()[:16] for f in COMPARED if (out / f).is_file()
    }


def scale_rows(cfg, folder: Path) -> list[dict]:
    """S5 (and the baseline's) on each N of N_FIELDS: seconds, fields/s, peak RSS."""
    repos = [("streaming", ROOT)]
    if cfg.BASELINE_REPO:
        repos.append(("baseline", Path(cfg.BASELINE_REPO).resolve()))
    rows = []
    for n in cfg.N_FIELDS:
        images = make_fields(folder, n, cfg)
        for name, repo in repos:
            out = folder / f"out_{name}_{n}"
            r = timed(s5_command(cfg, images, out, repo=repo), log=folder / f"{out.name}.log")
            rows.append({"code": name, "n": n, "s": r["s"], "rss": r["rss"], "out": out})
    print(
        f"| S5 ({cfg.SIDE} px fields, TTA {cfg.TTA}) | fields | s | fields/s | ms per field | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['code']} | {r['n']} | {r['s']:.0f} | {r['n'] / r['s']:.1f} | {1000 * r['s'] / r['n']:.0f} "
            f"| {r['rss']:.0f} |"
        )
    return rows


def spread_rows(cfg, folder: Path) -> None:
    """SPREAD_FIELDS fields in 1 process, under torchrun, as shards + merge: seconds, equal outputs."""
    images = make_fields(folder, cfg.SPREAD_FIELDS, cfg)
    env = {"OMP_NUM_THREADS": str(cfg.THREADS), "MKL_NUM_THREADS": str(cfg.THREADS)}
    one, tr, sh = (folder / f"out_spread_{k}" for k in ("1", "torchrun", "shards"))
    rows = [("1 process", timed(s5_command(cfg, images, one), env, folder / "out_spread_1.log"), one)]
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={cfg.RANKS}",
    ]
    rows.append((f"torchrun x {cfg.RANKS}", timed([*launcher, *s5_command(cfg, images, tr)], env), tr))
    t0 = time.time()
    procs = [
        subprocess.Popen(
            [sys.executable, *s5_command(cfg, images, sh, "--SHARD", f"{i}/{cfg.RANKS}")],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(cfg.RANKS)
    ]
    if any(p.wait() for p in procs):
        raise SystemExit("bench_scale: a --SHARD run failed")
    timed(s5_command(cfg, images, sh, "--MERGE", "true"), env)
    rows.append((f"{cfg.RANKS} x --SHARD + --MERGE", {"s": time.time() - t0}, sh))
    ref = digests(one)
    print(
        f"\n| {cfg.SPREAD_FIELDS} fields, {cfg.THREADS} thread(s) per process | s | fields/s | outputs equal "
        "to 1 process's |"
    )
    print("|---|---|---|---|")
    for name, r, out in rows:
        print(f"| {name} | {r['s']:.0f} | {cfg.SPREAD_FIELDS / r['s']:.1f} | {digests(out) == ref} |")


def kill_row(cfg, folder: Path) -> None:
    """S5 killed (SIGKILL) at a random moment, then run again: time, fields found done, equality with an
    uninterrupted run's outputs."""
    images = make_fields(folder, cfg.SPREAD_FIELDS, cfg)
    reference, out = folder / "out_full", folder / "out_killed"
    full = timed(s5_command(cfg, images, reference), log=folder / "out_full.log")["s"]
    cmd = s5_command(cfg, images, out)
    when = random.Random(cfg.SEED).uniform(0.2, 0.8) * full
    p = subprocess.Popen(
        [sys.executable, *cmd], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(when)
    p.send_signal(signal.SIGKILL)
    p.wait()
    left = list((out / ".s5_parts").glob("part-*.pkl"))
    part_kb = sum(f.stat().st_size for f in left) / 1024 / max(len(left) * cfg.CHUNK, 1)
    r = timed(cmd, log=folder / "out_killed.log")
    done = re.findall(r"resuming: (\d+) of (\d+) fields", r["out"])
    found = int(done[-1][0]) if done else 0
    print(
        f"\n| {cfg.SPREAD_FIELDS} fields, CHUNK {cfg.CHUNK} | uninterrupted s | killed at s | rerun s | "
        "fields found done | fields left (of them redone: the chunk in progress) | outputs equal | "
        "parts on disk, KB per field |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| kill -9, then the same command | {full:.0f} | {when:.0f} | {r['s']:.0f} | {found} | "
        f"{cfg.SPREAD_FIELDS - found} | {digests(out) == digests(reference)} | {part_kb:.0f} |"
    )


def disk_row(out: Path) -> None:
    """What the largest run's outputs take on disk, by kind, in KB per field."""
    n = int(out.name.rsplit("_", 1)[1])
    kinds = {"submission.csv": ["submission.csv"],
             "the 5 comparison submissions (VARIANTS)": ["submission_*.csv"],
             "cells.csv + cells.parquet": ["cells.csv", "cells.parquet"], "labels/": ["labels/*"],
             "report.html + report/": ["report.html", "report/*"]}
    print("\n| outputs on disk | KB per field | MB at 100,000 fields |")
    print("|---|---|---|")
    for kind, patterns in kinds.items():
        size = sum(f.stat().st_size for pat in patterns for f in out.glob(pat) if f.is_file())
        print(f"| {kind} | {size / 1024 / n:.0f} | {size / n * 100000 / 2**20:.0f} |")


def table_rows(out: Path) -> dict:
    """cells.parquet against cells.csv: MB and the time pandas takes to read each."""
    sizes = {}
    print("\n| cells table | MB | pandas read s | rows |")
    print("|---|---|---|---|")
    for name, read in (("cells.parquet", pd.read_parquet), ("cells.csv", pd.read_csv)):
        if (out / name).is_file():
            t0 = time.time()
            df = read(out / name)
            sizes[name] = (out / name).stat().st_size / 2**20
            print(f"| {name} | {sizes[name]:.1f} | {time.time() - t0:.2f} | {len(df)} |")
    return sizes


def report_row(cfg, out: Path) -> None:
    """The largest run's report: pages, MB, the time to open its first and last page in Chromium."""
    n_pages = 1 + len(list((out / report.REPORT_DIR).glob("page-*.html")))
    size = sum(f.stat().st_size for f in (out / report.REPORT_DIR).rglob("*") if f.is_file())
    size += (out / "report.html").stat().st_size
    driver = bench_report_pages.browser(cfg)
    try:
        opened = bench_report_pages.open_both(driver, out, n_pages, cfg.OPEN_REPEATS)
    finally:
        driver.quit()
    print(
        f"\n| report of {out.name} | pages | MB | KB per field | open report.html s | open the last page s |"
    )
    print("|---|---|---|---|---|---|")
    n = int(out.name.rsplit("_", 1)[1])
    print(
        f"| S5 (REPORT_PAGE {cfg.REPORT_PAGE}) | {n_pages} | {size / 2**20:.0f} | {size / 1024 / n:.1f} | "
        f"{opened['first_s']:.2f} | {opened['last_s']:.2f} |"
    )


def estimate_row(cfg, rows: list[dict], sizes: dict) -> None:
    own = [r for r in rows if r["code"] == "streaming"][-2:]
    if len(own) < 2:
        return
    (a, b), e = own, cfg.ESTIMATE
    slope_s, slope_rss = (b["s"] - a["s"]) / (b["n"] - a["n"]), (b["rss"] - a["rss"]) / (b["n"] - a["n"])
    parquet = sizes.get("cells.parquet", 0) / b["n"] * e
    seconds = b["s"] + slope_s * (e - b["n"])
    print(
        f"\n| estimate at {e} fields (slope {a['n']} -> {b['n']}) | s | h | peak RSS MB | cells.parquet MB |"
    )
    print("|---|---|---|---|---|")
    print(
        f"| 1 CPU process | {seconds:.0f} | {seconds / 3600:.1f} | "
        f"{b['rss'] + slope_rss * (e - b['n']):.0f} | {parquet:.0f} |"
    )


def main(argv=None):
    cfg = config.parse(globals(), argv)
    config.require_positive(
        cfg,
        "SIDE",
        "DISTINCT",
        "SPREAD_FIELDS",
        "RANKS",
        "THREADS",
        "CHUNK",
        "ESTIMATE",
        "REPORT_PAGE",
        "OPEN_REPEATS",
    )
    missing = [r for r in cfg.RUNS if not (constants.resolve(r) / cfg.CHECKPOINT).is_file()]
    if missing:
        raise SystemExit(
            f"bench_scale: no {cfg.CHECKPOINT} in {missing}: run bash run_all.sh first, or "
            "name runs with --RUNS"
        )
    folder = Path(cfg.BENCH_DIR) if cfg.BENCH_DIR else Path(tempfile.mkdtemp(prefix="bench_scale_"))
    folder.mkdir(parents=True, exist_ok=True)
    unknown = sorted(set(cfg.PARTS) - set(PARTS))
    if unknown:
        raise SystemExit(f"bench_scale: unknown PARTS {unknown}; choose from {PARTS}")
    if set(cfg.PARTS) & {"tables", "report", "estimate"} and "scale" not in cfg.PARTS:
        raise SystemExit("bench_scale: PARTS tables, report and estimate read the scale runs: add scale")
    try:
        rows = scale_rows(cfg, folder) if "scale" in cfg.PARTS else []
        if "spread" in cfg.PARTS:
            spread_rows(cfg, folder)
        if "kill" in cfg.PARTS:
            kill_row(cfg, folder)
        largest = [r for r in rows if r["code"] == "streaming"][-1]["out"] if rows else None
        sizes = table_rows(largest) if "tables" in cfg.PARTS else {}
        if "tables" in cfg.PARTS:
            disk_row(largest)
        if "report" in cfg.PARTS:
            report_row(cfg, largest)
        if "estimate" in cfg.PARTS:
            estimate_row(cfg, rows, sizes)
    finally:
        if not cfg.BENCH_DIR:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
