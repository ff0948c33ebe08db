"""S4.1: crop every segmented cell of every training image into a square PNG (pipeline 2's input).

Reads   input/hpa-512/train_all.csv, train_cell_mask/{ID}.npz, train/{ID}.png (512 px), and the
        original-resolution images (competition train/ or train_external/) when FROM_ORIGINAL
Writes  CELLS_DIR/cells_{CELL_SIZE}/{ID}_{cell:04d}.png   one crop per cell (common.cells.crop_cells)
        CELLS_DIR/cells_{CELL_SIZE}.csv   ID, cell_id, x0, y0, x1, y1, area, border (512-px coords)
        CELLS_DIR/cells_{CELL_SIZE}.json  this run's constants (S4.2 takes CROP_MARGIN, FROM_ORIGINAL)
        CELLS_DIR/s41_failures.csv        images that failed, with the error (absent if none)
        (CELLS_DIR is input/hpa-512 itself unless set: a Kaggle notebook writes beside a read-only copy)

Competition and external images alike (every image of train_all.csv that has a mask). Resumable:
an image whose crops all exist is not re-cropped (its index rows are recomputed from the mask).
With --SHARD i/n only every n-th image is done and the index goes to cells_{S}.shard{i}of{n}.csv;
a final run without SHARD then writes the full index (it skips every cropped image).

    python S4.1_crop_cells.py                      # 256-px crops
    python S4.1_crop_cells.py --CELL_SIZE 128      # 128-px crops for the small model
"""
# ---------------------------------------------------------------------------- crops
CELL_SIZE = 256              # side of a saved crop (px); 128 is also used
CROP_MARGIN = 0.05           # margin each side of the cell's box, fraction of its longer side
FROM_ORIGINAL = True         # crop from the original-resolution image when it exists (mask upscaled, nearest)
# ---------------------------------------------------------------------------- paths
HPA512_DIR = "input/hpa-512"                                       # S2's output folder
CELLS_DIR = ""                                                     # crops, index, settings ("" = HPA512_DIR)
TRAIN_CSV = "input/hpa-512/train_all.csv"                          # S2's image table
COMP_TRAIN_DIR = "input/hpa-single-cell-image-classification/train"             # originals
EXT_TRAIN_DIR = "input/hpa-single-cell-image-classification/train_external"     # external originals
# ---------------------------------------------------------------------------- run
NUM_WORKERS = 2              # processes (<= 1: in this process)
SHARD = ""                   # "i/n": only every n-th image starting at i (0-based); "" = all
OVERWRITE = False            # re-crop images whose crops already exist
LIMIT = 0                    # only the first LIMIT images (0 = all); for quick tries

import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import config, constants, images, io, lock, owned, parallel
from common.data.crop_files import crop_image_cells
from common.data.datasets import external_flags

_INDEX_COLUMNS = ["ID", "cell_id", "x0", "y0", "x1", "y1", "area", "border"]


def main(argv=None):
    cfg = config.parse(globals(), argv)
    config.require_positive(cfg, "CELL_SIZE", step="S4.1")
    config.require_positive(cfg, "NUM_WORKERS", "LIMIT", minimum=0, step="S4.1")
    config.require_number(cfg, "CROP_MARGIN", step="S4.1")
    cells_name = "CELLS_DIR" if cfg.CELLS_DIR else "HPA512_DIR"  # the crops are written inside it
    cells = constants.output_folder(cfg.CELLS_DIR or cfg.HPA512_DIR, cells_name)
    hpa = constants.resolve(cfg.HPA512_DIR)
    train_csv = constants.resolve(cfg.TRAIN_CSV)
    if not train_csv.is_file():
        raise SystemExit(constants.missing_input(train_csv, "hpa-512",
                                                 "run S2 first: python S2_data_process.py"))
    df = io.read_id_table(train_csv, ["ID"])  # IDs name the crop files: plain names only
    try:
        i, n = parallel.parse_shard(cfg.SHARD)
    except ValueError as e:
        raise SystemExit(f"S4.1: --{e}") from None
    tag = f"cells_{cfg.CELL_SIZE}" + (f".shard{i}of{n}" if n > 1 else "")  # shards: disjoint images
    with lock.hold(cells, "S4.1", tag):  # one writer of these crops for the whole run
        _claim(cfg, cells, cells_name, tag, [hpa / "train", hpa / "train_cell_mask", train_csv,
                                              constants.resolve(cfg.COMP_TRAIN_DIR),
                                              constants.resolve(cfg.EXT_TRAIN_DIR)])
        return _run(cfg, hpa, cells, df, (i, n))


def _originals(cfg, tasks: list[dict]) -> None:
    """Where the crops come from, said before any image: with FROM_ORIGINAL and no original image at all
    (no competition data), from S2's 512-px copies, with a warning, and FROM_ORIGINAL recorded false in
    cells_<S>.json (S4.2 and S5 then crop the same way); a few images without their original too."""
    if not cfg.FROM_ORIGINAL or not tasks:
        return
    found = sum(images.channel_path(t["original_dir"], t["image_id"], "red").is_file() for t in tasks)
    if found == len(tasks):
        print(f"S4.1: cropping from the original images ({found} found)", flush=True)
        return
    if found:
        print(f"S4.1: warning: {len(tasks) - found} of {len(tasks)} images have no original image: those are "
              "cropped from S2's resized copies in HPA512_DIR", flush=True)
        return
    cfg.FROM_ORIGINAL = False
    for t in tasks:
        t["original_dir"] = ""
    where = constants.missing_input(f"the original images ({constants.resolve(cfg.COMP_TRAIN_DIR)})",
                                    "hpa-single-cell-image-classification",
                                    "put the competition data there to crop from the originals")
    print(f"S4.1: warning: cropping from S2's resized copies (HPA512_DIR), recorded as FROM_ORIGINAL false "
          f"in cells_{cfg.CELL_SIZE}.json (S4.2 and S5 crop the same way): {where}", flush=True)


def _index_name(cfg, shard: tuple[int, int]) -> str:
    i, n = shard
    return f"cells_{cfg.CELL_SIZE}.csv" if n == 1 else f"cells_{cfg.CELL_SIZE}.shard{i}of{n}.csv"


def _claim(cfg, cells: Path, constant: str, tag: str, inputs: list[Path]) -> None:
    """S4.1 writes only its own crop folder and files in CELLS_DIR (common.owned), recorded before the
    first crop; an earlier S4.1's (its cells_<S>.json, no record yet) are taken as its own. A folder or
    file of that name S4.1 did not make, a link, or an input there stops it."""
    record = owned.Record(cells, "S4.1", constant, tag)
    size = cfg.CELL_SIZE
    files = [_index_name(cfg, parallel.parse_shard(cfg.SHARD)), f"cells_{size}.json", "s41_failures.csv"]
    if not record.owns(f"cells_{size}", folder=True) and (cells / f"cells_{size}.json").is_file():
        record.adopt([*files, f"cells_{size}.csv", *(p.name for p in cells.glob(f"cells_{size}.shard*.csv"))],
                     [f"cells_{size}"])
    record.claim(files, [f"cells_{size}"], inputs)
    record.begin(files, [f"cells_{size}"])


def _run(cfg, hpa: Path, cells: Path, df: pd.DataFrame, shard: tuple[int, int]) -> dict:
    """Crop the images of this shard, then write the index, the constants and the failures."""
    out_dir = cells / f"cells_{cfg.CELL_SIZE}"
    n_stale = io.remove_stale_temps(out_dir) + io.remove_stale_temps(cells)
    if n_stale:
        print(f"S4.1: removed {n_stale} temporary file(s) left by an interrupted run", flush=True)
    mask_dir = hpa / "train_cell_mask"
    is_ext = external_flags(df)
    tasks = []
    for image_id, ext in zip(df["ID"].astype(str), is_ext):
        mask = mask_dir / f"{image_id}.npz"
        if not mask.is_file():
            continue
        orig = constants.resolve(cfg.EXT_TRAIN_DIR if ext else cfg.COMP_TRAIN_DIR)
        tasks.append(dict(image_id=image_id, mask_path=str(mask),
                          image_path=str(hpa / "train" / f"{image_id}.png"),
                          original_dir=str(orig) if cfg.FROM_ORIGINAL else "", out_dir=str(out_dir),
                          size=cfg.CELL_SIZE, margin=cfg.CROP_MARGIN, overwrite=cfg.OVERWRITE))
    n_no_mask = len(df) - len(tasks)
    if cfg.LIMIT:
        tasks = tasks[:cfg.LIMIT]
    i, n = shard
    tasks = parallel.shard(tasks, shard)
    _originals(cfg, tasks)
    print(f"S4.1: {len(tasks)} images to crop at {cfg.CELL_SIZE} px (shard {i}/{n}; "
          f"{n_no_mask} of {len(df)} images have no mask) -> {out_dir}", flush=True)

    t0 = time.perf_counter()
    rows, fails, written, skipped, from_orig = [], [], 0, 0, 0
    for o in parallel.run_parallel(crop_image_cells, tasks, cfg.NUM_WORKERS, desc="S4.1 images"):
        if not o.ok:
            fails.append(dict(ID=o.item["image_id"], error=o.error))
            continue
        rows.extend(o.value["rows"])
        written += o.value["written"]
        skipped += o.value["written"] == 0 and bool(o.value["rows"])
        from_orig += o.value["from_original"]
    dt = time.perf_counter() - t0

    index = pd.DataFrame(rows, columns=_INDEX_COLUMNS)
    index["border"] = index["border"].astype(int)
    name = _index_name(cfg, shard)
    io.atomic_to_csv(index, cells / name)
    config.save(cfg, cells / f"cells_{cfg.CELL_SIZE}.json")  # S4.2 reads CROP_MARGIN / FROM_ORIGINAL
    fail_csv = cells / "s41_failures.csv"
    if fails:
        io.atomic_to_csv(pd.DataFrame(fails), fail_csv)
    elif n == 1:  # S4.1's own (its record), never through a link
        owned.remove_files(cells, [fail_csv.name])
    n_img = len(tasks) - len(fails)
    print(f"S4.1 done in {dt:.1f} s: {n_img} images ({skipped} already cropped, {from_orig} from the "
          f"original resolution), {len(index)} cells indexed, {written} crops written "
          f"({written / max(dt, 1e-9):.0f} crops/s), {int(index['border'].sum()) if len(index) else 0} "
          f"touch the border; index {cells / name}", flush=True)
    if fails:
        print(f"S4.1: {len(fails)} images FAILED, listed in {fail_csv}; first: {fails[0]['ID']}: "
              f"{fails[0]['error']}", flush=True)
    return dict(images=n_img, cells=len(index), written=written, failed=len(fails), seconds=dt)


if __name__ == "__main__":
    main()
