"""S1: download the public HPA images of the 17 competition cell lines as extra training data.

Reads the HPA public-data list (kaggle_2021.tsv), keeps labelled rows outside the competition
training set, downloads their 4 channels ({Image}_{red,green,blue,yellow}.jpg; a missing JPG
falls back to .tif.gz, stored as 8-bit PNG) into train_external/, and writes train_external.csv
(ID, Label, Cellline) listing only complete images, plus s1_failures.csv. Re-running resumes:
valid files already there are not fetched again.
"""
# ---------------------------------------------------------------------------- input
HPA_LIST = "input/hpa-single-cell-image-classification/kaggle_2021.tsv"  # HPA public list (tab or comma)
# ---------------------------------------------------------------------------- output
OUT_DIR = "input/hpa-single-cell-image-classification/train_external"  # {ID}_{color}.jpg/.png
OUT_CSV = "input/hpa-single-cell-image-classification/train_external.csv"  # ID,Label,Cellline
FAILURES_CSV = "input/hpa-single-cell-image-classification/s1_failures.csv"  # ID,Image,reason
# ---------------------------------------------------------------------------- selection
CELL_LINES = ["A-431", "A549", "EFO-21", "HAP1", "HEK 293", "HUVEC TERT2", "HaCaT", "HeLa", "PC-3",
              "RH-30", "RPTEC TERT1", "SH-SY5Y", "SK-MEL-30", "SiHa", "U-2 OS", "U-251 MG",
              "hTCEpi"]  # the 17 cell lines of the competition
CLASSES = []  # keep rows with at least one of these class ids (e.g. 11,15 for rare ones); [] = all
MAX_IMAGES = 0  # at most this many images (list order, after filtering); 0 = all
# ---------------------------------------------------------------------------- network
BASE_URL = "https://images.proteinatlas.org"  # replaces the host of the list's URLs (mirrors, tests)
SOURCE_HOST = "images.proteinatlas.org"  # host the list's Image URLs may name (besides BASE_URL's)
NUM_WORKERS = 16  # download threads sharing one HTTP session
RETRIES = 5  # retries of connection errors, timeouts and 5xx per request (never 404)
BACKOFF = 0.5  # seconds; retry k sleeps BACKOFF * 2**(k-1)
TIMEOUT = 30.0  # seconds per connect / socket read
MAX_SECONDS = 600.0  # seconds at most for one file attempt (a slow drip is cut off); 0 = no limit
ATTEMPTS = 3  # fetches of a file whose body is cut off mid-stream
TIF_FALLBACK = True  # a channel whose .jpg is 404 is fetched as .tif.gz and stored as 8-bit PNG
VERIFY_EXISTING = True  # decode files already present before skipping them (False: trust them)
PROGRESS = True  # tqdm bars (images, bytes)

import logging
import re
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pandas as pd
from tqdm import tqdm

from common import config, constants, images, lock
from common import io as hio
from common.data import download

# HPA location names that are not competition classes but map onto one (the original's table)
EXTRA_NAMES = {
    "focal adhesion sites": 9, "centriolar satellite": 12, "cell junctions": 13,
    "peroxisomes": 17, "endosomes": 17, "lysosomes": 17, "lipid droplets": 17,
    "cytoplasmic bodies": 17, "vesicles": 17, "no staining": 18,
}
NAME_TO_CLASS = {**{n.lower(): i for i, n in enumerate(constants.CLASS_NAMES)}, **EXTRA_NAMES}
_REQUIRED = ("Image", "Cellline", "in_trainset")
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


# ---------------------------------------------------------------------------- the list
def detect_separator(path: str | Path) -> str:
    """Tab or comma, from the header line (the public kaggle_2021.tsv is in fact comma-separated)."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        header = f.readline()
    if "\t" in header:
        return "\t"
    if "," in header:
        return ","
    raise ValueError(f"{path}: header {header.strip()!r} is neither tab- nor comma-separated")


def read_hpa_list(path: str | Path) -> pd.DataFrame:
    """The list as strings ('' for missing); a clear error naming the file when it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"{path}: HPA public-data list not found (kaggle_2021.tsv, columns Image, Label, "
                         f"Cellline, in_trainset); put it there or pass --HPA_LIST")
    try:
        df = pd.read_csv(path, sep=detect_separator(path), dtype=str, keep_default_na=False,
                         encoding="utf-8-sig")
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise SystemExit(f"{path}: cannot parse the HPA list ({e})") from e
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in _REQUIRED if c not in df.columns]
    if "Label" not in df.columns and "Label_idx" not in df.columns:
        missing.append("Label or Label_idx")
    if missing:
        raise SystemExit(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    return df


def labels_from_names(text: str) -> list[int]:
    """'Nucleoplasm,Golgi apparatus' -> [0, 7]; names matched case-insensitively, unknown ones
    ignored, duplicates dropped (order kept). Separators: ',' (HPA), ';' or '|'."""
    out: list[int] = []
    for name in re.split(r"[,;|]", str(text)):
        idx = NAME_TO_CLASS.get(" ".join(name.split()).lower())
        if idx is not None and idx not in out:
            out.append(idx)
    return out


def row_labels(label_idx: str, label: str) -> list[int]:
    """Class ids of one row: ``Label_idx`` when it is present and valid, else the mapped names."""
    if label_idx.strip():
        try:
            ids = constants.parse_labels(label_idx.replace(",", "|").replace(" ", ""))
            if ids:
                return list(dict.fromkeys(ids))
        except ValueError:
            pass
    return labels_from_names(label)


def _truthy(value: str, path: Path, row: int) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise SystemExit(f"{path}: row {row + 2}: in_trainset {value!r} is not true/false")


def image_id(image: str, base_url: str, source_host: str) -> tuple[str, str]:
    """``https://images.proteinatlas.org/1234/567_A1_1`` -> ``('1234_567_A1_1',
    '{base_url}/1234/567_A1_1')``. ``Image`` may also be the bare path ``1234/567_A1_1``.

    Raises ValueError for another scheme/host, a query, or parts that are not plain names.
    """
    text = str(image).strip()
    parts = urlsplit(text)
    if parts.scheme or parts.netloc:
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"URL scheme {parts.scheme!r} is not http/https")
        allowed = {source_host.lower(), (urlsplit(base_url).hostname or "").lower()}
        if (parts.hostname or "").lower() not in allowed:
            raise ValueError(f"host {parts.hostname!r} is not one of {sorted(h for h in allowed if h)}")
    if parts.query or parts.fragment:
        raise ValueError("URL has a query or fragment")
    segs = parts.path.strip("/").split("/")
    if len(segs) != 2 or any(constants.id_problem(s) for s in segs):
        raise ValueError(f"path {parts.path!r} is not /<antibody>/<plate>_<well>_<field> of plain names")
    return f"{segs[0]}_{segs[1]}", f"{base_url.rstrip('/')}/{segs[0]}/{segs[1]}"


def select_rows(df: pd.DataFrame, cfg, path: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(selected: ID, Image, url, Label, Cellline; rejected: ID, Image, reason; counts)."""
    lines = {c.strip().lower() for c in cfg.CELL_LINES}
    try:
        wanted = {int(c) for c in cfg.CLASSES}
    except ValueError as e:
        raise SystemExit(f"--CLASSES {cfg.CLASSES!r}: expected class ids 0..18 ({e})") from None
    bad = sorted(c for c in wanted if not 0 <= c < constants.NUM_CLASSES)
    if bad:
        raise SystemExit(f"--CLASSES: class id(s) {bad} outside 0..{constants.NUM_CLASSES - 1}")
    has_idx, has_names = "Label_idx" in df.columns, "Label" in df.columns
    counts = {"rows": len(df), "in_trainset": 0, "other_cell_line": 0, "unlabelled": 0,
              "other_classes": 0, "duplicates": 0, "invalid": 0}
    keep, rejected, seen = [], [], set()
    for i, r in enumerate(df.itertuples(index=False, name=None)):
        row = dict(zip(df.columns, r))
        if _truthy(row["in_trainset"], path, i):
            counts["in_trainset"] += 1
            continue
        if row["Cellline"].strip().lower() not in lines:
            counts["other_cell_line"] += 1
            continue
        labels = row_labels(row["Label_idx"] if has_idx else "", row["Label"] if has_names else "")
        if not labels:
            counts["unlabelled"] += 1
            continue
        if wanted and not wanted.intersection(labels):
            counts["other_classes"] += 1
            continue
        try:
            iid, url = image_id(row["Image"], cfg.BASE_URL, cfg.SOURCE_HOST)
        except ValueError as e:
            counts["invalid"] += 1
            rejected.append({"ID": "", "Image": row["Image"], "reason": f"rejected: {e}"})
            continue
        if iid in seen:
            counts["duplicates"] += 1
            continue
        seen.add(iid)
        keep.append({"ID": iid, "Image": row["Image"], "url": url,
                     "Label": constants.format_labels(labels), "Cellline": row["Cellline"].strip()})
        if cfg.MAX_IMAGES and len(keep) >= cfg.MAX_IMAGES:
            break
    sel = pd.DataFrame(keep, columns=["ID", "Image", "url", "Label", "Cellline"])
    return sel, pd.DataFrame(rejected, columns=["ID", "Image", "reason"]), counts


# ---------------------------------------------------------------------------- downloads
def tif_to_png(src: Path, dst: Path) -> None:
    """A downloaded (gzipped) TIFF channel -> 8-bit PNG (16-bit scaled by ``images.to_uint8``)."""
    hio.imwrite(dst, images.read_channel(src))  # dst may be a temporary name: the format is its target's


@dataclass
class ImageResult:
    ID: str
    ok: bool = True
    nbytes: int = 0
    fetched: int = 0        # channels downloaded now
    fallback: int = 0       # channels taken from .tif.gz
    reasons: list = field(default_factory=list)


def _existing(paths: list[Path], verify: bool):
    """(path, shape) of the first present channel file that is valid; invalid leftovers are removed."""
    for p in paths:
        if p.is_file():
            if not verify:
                return p, None
            try:
                return p, download.validate_image(p)
            except hio.ImageReadError:
                p.unlink(missing_ok=True)
    return None, None


def fetch_image(session, iid: str, url: str, out_dir: Path, cfg, on_bytes=None) -> ImageResult:
    """The 4 channels of one image (JPG, else TIF.GZ -> PNG); what happened."""
    res = ImageResult(iid)
    shapes = set()
    patience = download.Patience(cfg.TIMEOUT, cfg.MAX_SECONDS or None, cfg.ATTEMPTS, cfg.BACKOFF)
    kw = dict(validate=download.validate_image, patience=patience, skip_existing=False, on_bytes=on_bytes)
    for color in constants.CHANNELS:
        jpg, png = out_dir / f"{iid}_{color}.jpg", out_dir / f"{iid}_{color}.png"
        found, shape = _existing([jpg, png], cfg.VERIFY_EXISTING)
        if found is not None:
            if shape is not None:
                shapes.add(tuple(shape))
            continue
        r = download.download_file(session, f"{url}_{color}.jpg", jpg, **kw)
        res.nbytes += r.nbytes
        if r.status == download.NOT_FOUND and cfg.TIF_FALLBACK:
            r2 = download.download_file(session, f"{url}_{color}.tif.gz", png, transform=tif_to_png, **kw)
            res.nbytes += r2.nbytes
            res.fallback += r2.ok
            if not r2.ok:
                r2 = download.DownloadResult(r2.status, 0, f"jpg: {r.detail}; tif.gz: {r2.detail}")
            r = r2
        if r.ok:
            res.fetched += 1
            shapes.add(tuple(r.info))
        else:
            res.ok = False
            res.reasons.append(f"{color}: {r.status} ({r.detail})")
    if res.ok and len(shapes) > 1:
        res.ok = False
        res.reasons.append(f"channel sizes differ: {sorted(shapes)}")
    return res


def run_downloads(sel: pd.DataFrame, out_dir: Path, cfg) -> list[ImageResult]:
    """All images of ``sel`` with a pool of NUM_WORKERS threads; results in ``sel`` order."""
    session = download.make_session(cfg.RETRIES, cfg.BACKOFF, pool_size=cfg.NUM_WORKERS)
    results: dict[int, ImageResult] = {}
    lock = threading.Lock()
    bars = tqdm(total=len(sel), unit="img", desc="S1 images", disable=not cfg.PROGRESS, position=0)
    bbar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc="S1 bytes", disable=not cfg.PROGRESS,
                position=1)

    def on_bytes(n: int) -> None:
        with lock:
            bbar.update(n)

    def task(i: int, iid: str, url: str) -> ImageResult:
        try:
            return fetch_image(session, iid, url, out_dir, cfg, on_bytes)
        except Exception as e:  # noqa: BLE001 - a local problem (disk full...) is reported per image
            return ImageResult(iid, ok=False, reasons=[f"error: {type(e).__name__}: {e}"])

    rows = list(enumerate(zip(sel["ID"], sel["url"])))
    pool = futures.ThreadPoolExecutor(max_workers=max(1, cfg.NUM_WORKERS))
    pending: dict = {}
    failed = 0
    try:
        it = iter(rows)
        while True:
            while len(pending) < 4 * max(1, cfg.NUM_WORKERS):
                nxt = next(it, None)
                if nxt is None:
                    break
                i, (iid, url) = nxt
                pending[pool.submit(task, i, iid, url)] = i
            if not pending:
                break
            done, _ = futures.wait(pending, return_when=futures.FIRST_COMPLETED)
            for fut in done:
                r = results[pending.pop(fut)] = fut.result()
                failed += not r.ok
                bars.update(1)
                bars.set_postfix(failed=failed, refresh=False)
    except KeyboardInterrupt:
        pool.shutdown(wait=True, cancel_futures=True)
        raise SystemExit("S1 interrupted: files saved so far are kept; run again to resume") from None
    finally:
        pool.shutdown(wait=True)
        bars.close()
        bbar.close()
        session.close()
    return [results[i] for i in range(len(rows))]


# ---------------------------------------------------------------------------- main
def main(argv=None):
    cfg = config.parse(globals(), argv)
    hpa_list, out_dir = constants.resolve(cfg.HPA_LIST), constants.output_folder(cfg.OUT_DIR, "OUT_DIR")
    out_csv = constants.output_folder(cfg.OUT_CSV, "OUT_CSV", file=True)
    fail_csv = constants.output_folder(cfg.FAILURES_CSV, "FAILURES_CSV", file=True)
    base = urlsplit(cfg.BASE_URL)
    if base.scheme not in ("http", "https") or not base.hostname or base.query:
        raise SystemExit(f"--BASE_URL {cfg.BASE_URL!r}: expected http(s)://host[:port][/path]")
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # retries are summed up in s1_failures.csv
    t0 = time.monotonic()
    df = read_hpa_list(hpa_list)
    sel, rejected, counts = select_rows(df, cfg, hpa_list)
    print(f"S1: {hpa_list.name}: {counts['rows']} rows -> {len(sel)} images to fetch "
          f"(skipped: {counts['in_trainset']} in train set, {counts['other_cell_line']} other cell lines, "
          f"{counts['unlabelled']} unlabelled, {counts['other_classes']} other classes, "
          f"{counts['duplicates']} duplicates; {counts['invalid']} rejected)", flush=True)
    with lock.hold(out_dir, "S1"):  # one downloader per folder
        return _download(cfg, sel, rejected, out_dir, out_csv, fail_csv, t0)


def _download(cfg, sel: pd.DataFrame, rejected: pd.DataFrame, out_dir: Path, out_csv: Path, fail_csv: Path,
              t0: float) -> dict:
    """Fetch the selected images into ``out_dir``, then write the list, the failures and the config."""
    stale = [p for p in out_dir.glob(".*") if p.is_file() and (".part" in p.name or ".tmp" in p.name)]
    for p in stale:  # temporaries of a run that was killed (never a finished file)
        p.unlink(missing_ok=True)
    if stale:
        print(f"S1: removed {len(stale)} temporary file(s) left by an interrupted run", flush=True)
    results = run_downloads(sel, out_dir, cfg)

    ok = [r.ok for r in results]
    hio.atomic_to_csv(sel.loc[ok, ["ID", "Label", "Cellline"]], out_csv)
    fails = pd.DataFrame([{"ID": r.ID, "Image": img, "reason": "; ".join(r.reasons)}
                          for r, img in zip(results, sel["Image"]) if not r.ok],
                         columns=["ID", "Image", "reason"])
    fails = pd.concat([rejected, fails], ignore_index=True) if len(rejected) else fails
    hio.atomic_to_csv(fails, fail_csv)
    config.save(cfg, out_csv.with_name("s1_config.json"))

    dt = time.monotonic() - t0
    summary = {"selected": len(sel), "complete": sum(ok), "failed": len(fails), "rejected": len(rejected),
               "channels_fetched": sum(r.fetched for r in results),
               "tif_fallback": sum(r.fallback for r in results),
               "already_present": sum(r.ok and r.fetched == 0 for r in results),
               "bytes": sum(r.nbytes for r in results), "seconds": round(dt, 2)}
    print(f"S1 done in {dt:.1f}s: {summary['complete']}/{len(sel)} images complete "
          f"({summary['already_present']} already present), {summary['channels_fetched']} channels fetched "
          f"({summary['tif_fallback']} from .tif.gz), {summary['bytes'] / 2**20:.1f} MiB; "
          f"{len(fails)} failed -> {fail_csv}; list -> {out_csv}", flush=True)
    return summary


if __name__ == "__main__":
    main()
