# ruff: noqa: E402  (constants block first, as in the numbered scripts)
"""Benchmark of the paged report: ``report.write_pages`` at screen scale, and its pages in headless Chromium.

Streams N synthetic fields (DISTINCT fields drawn as in ``bench_report.py``, repeated under distinct
IDs; the picture as S5 hands it: JPEG bytes, the label map as PNG bytes) into a report in pages of
PAGE_SIZE fields, for each N in N_FIELDS, and prints one row each: pages, MB on disk (report.html +
report/), KB per field, seconds to write, peak RSS so far, and the time to open the first page
(report.html, the summary) and the last page in Chromium: from the navigation's start to the page's
script done (``window.reportReady``), the median of OPEN_REPEATS opens. Then a row for ESTIMATE fields:
size and write time from the slope between the last two sizes; the open times measured on the last
report with its index.js replaced by one of ESTIMATE fields (the only file a page loads that grows
with the number of fields; each page's own data is at most PAGE_SIZE fields). GROWTH_THUMBS: what
report/ grows by per field at each thumbnail side (the picture, and the rest: pages, page data,
index), on GROWTH_FIELDS fields; with REAL_CHANNEL one more row at THUMB whose pictures hold that
real channel (as all four) instead of the synthetic drawing's noise.

    python benchmarks/bench_report_pages.py
    python benchmarks/bench_report_pages.py --N_FIELDS 1000 --GROWTH_THUMBS 64,512
    python benchmarks/bench_report_pages.py --REAL_CHANNEL ../shared/hpa_sample/1000_A12_2_green.png
"""
# ---------------------------------------------------------------------------- data
N_FIELDS = [1000, 10000]      # fields per paged report (the last two give the slope)
PAGE_SIZE = 200               # fields per page (S5's REPORT_PAGE)
THUMB = 512                   # thumbnail side of the paged reports (px; S5's THUMB_SIZE)
ORIGINAL = 1024               # side of the (pretended) originals (px)
CELLS_PER_FIELD = 25          # disc cells drawn per field (some overlap and merge)
DISTINCT = 16                 # distinct synthetic fields, repeated under distinct IDs
SEED = 0
ESTIMATE = 100000             # fields of the estimate from the slope
# ---------------------------------------------------------------------------- growth per field
GROWTH_THUMBS = [64, 128, 256, 512]  # thumbnail sides (px) of the growth rows
GROWTH_FIELDS = 50            # fields per growth row
REAL_CHANNEL = ""             # a real field's channel (PNG) for one more growth row ("" = none)
# ---------------------------------------------------------------------------- browser
OPEN_REPEATS = 3              # opens of each page timed (the median is printed)
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# ---------------------------------------------------------------------------- output
BENCH_DIR = ""                # keep the reports here ("" = a temporary folder, removed)

import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import cv2
import numpy as np
import pandas as pd
from bench_report import synthetic_field

from common import config, constants, images
from common.predict import cell_tables
from common.report import pages, report
from common.resize import resize_image, resize_labels


def distinct_fields(cfg, thumb: int, real: np.ndarray | None = None) -> list[tuple]:
    """DISTINCT fields: (picture JPEG bytes, label map PNG bytes at the thumbnail's size, cells.csv rows);
    ``real``: a real channel (8 bits) shown as all four instead of the drawing."""
    rng, out = np.random.default_rng(cfg.SEED), []
    for _ in range(cfg.DISTINCT):
        full, image, labels, ids, probs = synthetic_field(rng, cfg.CELLS_PER_FIELD, cfg.THUMB, cfg.ORIGINAL)
        if real is not None:
            image = np.repeat(resize_image(real, (cfg.THUMB, cfg.THUMB))[..., None], 4, axis=2)
        picture = report.encode_channels(resize_image(image, (thumb, thumb)))
        png = images.encode_png(resize_labels(labels, (thumb, thumb)))
        rows = pd.DataFrame(cell_tables.cell_rows("x", full, ids, cell_tables.as_written(probs)),
                            columns=list(report.CELL_COLUMNS))
        out.append((picture, png, rows))
    return out


def entries(made: list, n: int, original: int):
    """n fields, the distinct ones repeated under the IDs fov000000, fov000001, ..."""
    for i in range(n):
        picture, png, rows = made[i % len(made)]
        image_id = f"fov{i:06d}"
        yield report.ReportField(image_id, picture, png, (original, original)), rows.assign(image=image_id)


def write(made: list, n: int, cfg, folder: Path) -> dict:
    t0 = time.perf_counter()
    report.write_pages(folder, entries(made, n, cfg.ORIGINAL), [("bad000", "unreadable")], threshold=0.5,
                       title=f"bench {n}", pixel_size=0.0, page_size=cfg.PAGE_SIZE)
    seconds = time.perf_counter() - t0
    files = [folder / "report.html", *(folder / report.REPORT_DIR).iterdir()]
    pictures = sum(f.stat().st_size for f in files if f.suffix in (".jpg", ".png"))
    size = sum(f.stat().st_size for f in files)
    return {"fields": n, "pages": pages.n_pages(n, cfg.PAGE_SIZE), "MB": size / 2**20,
            "KB_field": size / 1024 / n, "pictures_KB_field": pictures / 1024 / n, "write_s": seconds,
            "rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def open_times(driver, page: Path, repeats: int) -> float:
    """Median seconds from the navigation's start to the page's script done (``window.reportReady``)."""
    times = []
    for _ in range(repeats):
        driver.get("about:blank")
        driver.get(page.as_uri())
        ready = None
        for _ in range(400):
            ready = driver.execute_script("return window.reportReady")
            if ready is not None:
                break
            time.sleep(0.025)
        if ready is None:
            raise SystemExit(f"{page}: the page's script never finished (no window.reportReady)")
        times.append(ready / 1000)
    return statistics.median(times)


def browser(cfg):
    import importlib.util

    tool_file = ROOT / "tools" / "report_screenshot.py"
    spec = importlib.util.spec_from_file_location("report_screenshot", tool_file)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool.open_browser(cfg.CHROMIUM, cfg.CHROMEDRIVER, 1400, 1000)


def open_both(driver, folder: Path, n_pages: int, repeats: int) -> dict:
    """Open times of report.html and of the last page."""
    last = folder / report.REPORT_DIR / pages.page_html(n_pages - 1) if n_pages > 1 else \
        folder / "report.html"
    return {"first_s": open_times(driver, folder / "report.html", repeats),
            "last_s": open_times(driver, last, repeats)}


def big_index(made: list, n: int, folder: Path, page_size: int) -> None:
    """Replace the report's index.js by one of n fields (the only file every page loads that grows with
    the number of fields): the pages' open times at n fields, measured."""
    summary = pages.Summary(0.5)
    for i in range(n):
        rows = made[i % len(made)][2]
        top = rows["top_class"].map({c: j for j, c in enumerate(report.CLASS_NAMES)}).to_numpy()
        summary.add(f"fov{i:06d}", top, rows[list(report.CLASS_NAMES)].to_numpy().ravel())
    summary.write_index(folder / report.REPORT_DIR / pages.INDEX_FILE, page_size)


def scale_rows(cfg, root: Path) -> list[dict]:
    made, rows = distinct_fields(cfg, cfg.THUMB), []
    driver = browser(cfg)
    try:
        for n in cfg.N_FIELDS:
            folder = root / f"n{n}"
            row = write(made, n, cfg, folder)
            rows.append({**row, **open_both(driver, folder, row["pages"], cfg.OPEN_REPEATS)})
            print(f"{n} fields written", flush=True)
        if len(rows) >= 2:
            big_index(made, cfg.ESTIMATE, folder, cfg.PAGE_SIZE)
            rows.append({**estimate(rows, cfg.ESTIMATE, cfg.PAGE_SIZE),
                         **open_both(driver, folder, rows[-1]["pages"], cfg.OPEN_REPEATS)})
    finally:
        driver.quit()
    return rows


def estimate(rows: list[dict], n: int, page_size: int) -> dict:
    """A row for n fields: size and write time from the slope between the last two rows."""
    a, b = rows[-2], rows[-1]
    out = {"fields": n, "pages": pages.n_pages(n, page_size), "rss_MB": float("nan"), "est": True}
    for key in ("MB", "write_s"):
        slope = (b[key] - a[key]) / (b["fields"] - a["fields"])
        out[key] = b[key] + slope * (n - b["fields"])
    out["KB_field"] = out["MB"] * 1024 / n
    return out


def growth_rows(cfg, root: Path) -> list[dict]:
    runs = [(str(side), side, None) for side in cfg.GROWTH_THUMBS]
    if cfg.REAL_CHANNEL:
        path = constants.resolve(cfg.REAL_CHANNEL)
        plane = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if plane is None or plane.ndim != 2:
            raise SystemExit(f"{path}: not a one-channel picture (REAL_CHANNEL)")
        plane = (plane / max(plane.max(), 1) * 255).astype(np.uint8)
        runs.append((f"{cfg.THUMB}, a real channel", cfg.THUMB, plane))
    rows = []
    for name, side, real in runs:
        folder = root / f"growth{side}"
        row = write(distinct_fields(cfg, side, real), cfg.GROWTH_FIELDS, cfg, folder)
        rows.append({"thumb": name, "KB_field": row["KB_field"], "pictures": row["pictures_KB_field"]})
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def main(argv=None):
    cfg = config.parse(globals(), argv)
    root = Path(cfg.BENCH_DIR) if cfg.BENCH_DIR else Path(tempfile.mkdtemp(prefix="bench_report_pages_"))
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        growth = growth_rows(cfg, root)
        rows = scale_rows(cfg, root)
    finally:
        if not cfg.BENCH_DIR:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nbefore writing: peak RSS {base_rss:.0f} MB (Python, numpy, pandas, the imports)")
    print("| thumbnail (px) | report/ KB per field | of it the picture | the rest (pages, data, index) |")
    print("|---|---|---|---|")
    for g in growth:
        rest = g["KB_field"] - g["pictures"]
        print(f"| {g['thumb']} | {g['KB_field']:.1f} | {g['pictures']:.1f} | {rest:.1f} |")
    print(f"\n| fields | pages of {cfg.PAGE_SIZE} | MB on disk | KB per field | write (s) | peak RSS (MB) "
          "| open report.html (s) | open the last page (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        name = f"{r['fields']:,} (estimate)" if "est" in r else f"{r['fields']:,}"
        print(f"| {name} | {r['pages']} | {r['MB']:.0f} | {r['KB_field']:.1f} | {r['write_s']:.0f} | "
              f"{r['rss_MB']:.0f} | {r['first_s']:.2f} | {r['last_s']:.2f} |")
    return rows


if __name__ == "__main__":
    main()
