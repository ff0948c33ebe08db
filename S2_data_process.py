"""S2: resize every image to IMAGE_SIZE, segment its cells, assign folds.

Reads   COMPETITION_DIR/{train,test}/{ID}_{red,green,blue,yellow}.png, train.csv, sample_submission.csv
        (+ COMPETITION_DIR/train_external/ and train_external.csv from S1, when present)
Writes  HPA512_DIR/{train,test}/{ID}.png              4-channel RGBY PNG, IMAGE_SIZE x IMAGE_SIZE
        HPA512_DIR/{train,test}_cell_mask/{ID}.npz    keys cell, nucleus (uint16, same ids, 0 = background)
        HPA512_DIR/{split}_cell_mask_full/{ID}.npz    the same at the original size (FULL_MASKS splits): the
                                                      cells exactly as labelled, for S5's submission masks
        HPA512_DIR/meta/{train,test}/{ID}.json        one record per finished image (sizes, n_cells)
        HPA512_DIR/train_all.csv, test.csv            rebuilt from all records at the end of every run
        HPA512_DIR/s2_failures.csv                    images that could not be processed, with the reason

Finished images are skipped (resume after an interruption; --OVERWRITE redoes them). --SHARD i/n does
every n-th image so a cluster array can split the work; any shard's end rebuilds the CSVs from the
records present. Run:  python S2_data_process.py [--SEGMENTER builtin] [--NUM_WORKERS 8] [--SHARD 0/4]
"""
# ---------------------------------------------------------------------------- data
COMPETITION_DIR = "input/hpa-single-cell-image-classification"  # competition layout (or S0's demo data)
HPA512_DIR = "input/hpa-512"                              # where the processed images, masks, CSVs go
EXTERNAL = True                                           # include COMPETITION_DIR/train_external (S1)
# ---------------------------------------------------------------------------- images
IMAGE_SIZE = 512                                          # side of the written images and masks (px)
MAX_PIXELS = 4096 * 4096 * 4                              # the most pixel values (H x W x planes of its 4
                                                          # files) an image may hold, read from the headers
                                                          # before decoding (larger: in s2_failures.csv)
# ---------------------------------------------------------------------------- folds
N_FOLDS = 5                                               # MultilabelStratifiedKFold splits
SEED = 42                                                 # fold shuffling seed
# ---------------------------------------------------------------------------- segmentation
SEGMENTER = "auto"                                        # auto | builtin | hpa (alias hpacellseg)
HPA_SEG_DIR = "input/hpa-seg"                             # official HPA segmentation weights
SEG_AT = "auto"                                           # image the segmenter gets: resized|original|auto
LABEL_AT = "original"                                     # HPA label_cell at: original (official) | working
FULL_MASKS = "test"                                       # splits with original-size masks: test | all | none
SEG_BATCH = 8                                             # images per segment() call (HPA networks)
DEVICE = "auto"                                           # device of the HPA networks (auto | cpu | cuda)
SEG_PRECISION = "fp32"                                    # HPA networks: fp32 (the truth) | bf16 (AMX/CUDA)
# ---------------------------------------------------------------------------- run
NUM_WORKERS = 4                                           # processes (builtin); 1 = in this process
SHARD = ""                                                # "i/n": do every n-th image from the i-th (0-based)
OVERWRITE = False                                         # redo images whose outputs already exist

import json
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import pandas as pd

from common import config, constants, fov, images, io, lock, owned, parallel, segmentation

_SPLITS = ("train", "test")
# constants renamed in this release: an old name on the command line stops with the new one
_RENAMED = {"DATA_DIR": "COMPETITION_DIR", "OUT_DIR": "HPA512_DIR"}


# ----------------------------------------------------------------------------- layout
def out_paths(out_dir: Path, split: str, image_id: str) -> dict[str, Path]:
    """Where S2 writes the outputs of one image."""
    mask = out_dir / f"{split}_cell_mask" / f"{image_id}.npz"
    return {"image": out_dir / split / f"{image_id}.png",
            "mask": mask, "mask_full": fov.full_mask_path(mask),
            "meta": out_dir / "meta" / split / f"{image_id}.json",
            "failed": out_dir / "meta" / "failed" / split / f"{image_id}.json"}


def list_images(data_dir: Path, external: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test): train = ID, Label, is_ext, folder; test = ID, folder (sample_submission order)."""
    parts = []
    ext_csv = data_dir / "train_external.csv"
    for csv, is_ext, folder in ((data_dir / "train.csv", 0, "train"), (ext_csv, 1, "train_external")):
        if csv.is_file() and (external or not is_ext):
            t = io.read_id_table(csv, ["ID", "Label"])[["ID", "Label"]]  # IDs checked: plain names
            for i, label in enumerate(t["Label"]):
                try:
                    if not constants.parse_labels(label):
                        raise ValueError("empty Label (at least one class id; 18 = Negative)")
                except ValueError as err:
                    raise SystemExit(f"{csv}: row {i + 2}: image {t['ID'].iloc[i]}: {err}") from None
            parts.append(t.assign(is_ext=is_ext, folder=str(data_dir / folder)))
    train = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["ID", "Label", "is_ext", "folder"])
    dup = train["ID"][train["ID"].duplicated()]
    if len(dup):
        raise SystemExit(f"{data_dir}: IDs in both train.csv and train_external.csv, "
                         f"e.g. {dup.head(3).tolist()}")
    test = pd.DataFrame(columns=["ID", "folder"])
    if (data_dir / "sample_submission.csv").is_file():
        s = io.read_id_table(data_dir / "sample_submission.csv", ["ID"])
        test = pd.DataFrame({"ID": s["ID"], "folder": str(data_dir / "test")})
    if train.empty and test.empty:
        raise SystemExit(constants.missing_input(
            f"{data_dir}: train.csv and sample_submission.csv", "hpa-single-cell-image-classification",
            "run S0_make_demo_data.py for demo data, or download the competition data"))
    return train, test


# ----------------------------------------------------------------------------- folds
def assign_folds(train: pd.DataFrame, n_folds: int, seed: int) -> pd.Series:
    """Fold of each row (index-aligned): multilabel-stratified on the 19 classes and is_ext; rows are
    sorted by ID first, so the folds depend only on the set of (ID, Label, is_ext), not on CSV order."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    order = train.sort_values("ID", kind="stable").index
    n = len(order)
    folds = pd.Series(-1, index=train.index, dtype=int)
    if n == 0:
        return folds
    if n < n_folds:
        print(f"warning: only {n} training images for {n_folds} folds; folds assigned round-robin")
        folds.loc[order] = np.arange(n) % n_folds
        return folds
    y = np.zeros((n, constants.NUM_CLASSES + 1), np.int8)
    for r, i in enumerate(order):
        y[r, constants.parse_labels(train.at[i, "Label"])] = 1
        y[r, -1] = int(train.at[i, "is_ext"])
    mskf = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, val) in enumerate(mskf.split(np.zeros(n), y)):
        folds.loc[order[val]] = k
    return folds


# ----------------------------------------------------------------------------- one batch (in a worker)
_SEGMENTERS: dict = {}


def _segmenter(opts: dict):
    key = (opts["segmenter"], opts["hpa_seg_dir"], opts["device"], opts["label_at"], opts["seg_precision"])
    if key not in _SEGMENTERS:
        kw = {}
        if opts["segmenter"] == "hpa":
            kw = {"label_at": opts["label_at"], "post_workers": opts["io_threads"],
                  "precision": opts["seg_precision"]}
        _SEGMENTERS[key] = segmentation.get_segmenter(opts["segmenter"], weights_dir=opts["hpa_seg_dir"],
                                                      device=opts["device"], **kw)
    return _SEGMENTERS[key]


def keeps_full(full_masks: str, split: str) -> bool:
    """Whether S2 keeps the original-size masks of ``split`` (FULL_MASKS: test | all | none)."""
    return full_masks == "all" or (full_masks == "test" and split == "test")


def _fail(paths: dict, split: str, image_id: str, reason: str) -> dict:
    rec = {"ID": image_id, "split": split, "ok": False, "reason": reason}
    io.atomic_write_text(paths["failed"], json.dumps(rec) + "\n")
    return rec


def _prepare(task: tuple, opts: dict, out_dir: Path):
    """Read one image, write its IMAGE_SIZE version; (split, id, paths, (h, w), segmentation input)."""
    split, folder, image_id = task
    paths = out_paths(out_dir, split, image_id)
    try:
        img = images.read_image(folder, image_id, opts["max_pixels"])
        small = fov.working_image(img, opts["image_size"])
        images.write_rgby(paths["image"], small)
        return split, image_id, paths, img, small
    except Exception as e:  # noqa: BLE001 - a bad image is reported, the others go on
        return _fail(paths, split, image_id, f"{type(e).__name__}: {e}")


def process_batch(batch: dict) -> list[dict]:
    """Read, resize, write, segment and save a few images; one record per image (``ok`` or ``reason``)."""
    opts, out_dir = batch["opts"], Path(batch["opts"]["out_dir"])
    tasks = batch["tasks"]
    if len(tasks) > 1 and opts.get("io_threads", 1) > 1:  # decoding PNGs releases the GIL
        with ThreadPoolExecutor(min(opts["io_threads"], len(tasks))) as ex:
            prepared = list(ex.map(lambda t: _prepare(t, opts, out_dir), tasks))
    else:
        prepared = [_prepare(t, opts, out_dir) for t in tasks]
    records = [r for r in prepared if isinstance(r, dict)]
    ready = [r for r in prepared if not isinstance(r, dict)]
    if not ready:
        return records
    full = any(keeps_full(opts["full_masks"], r[0]) for r in ready)
    try:  # common.fov decides what the segmenter sees and at which scale (as in S5)
        fovs = fov.prepare([r[3] for r in ready], opts["image_size"], _segmenter(opts), opts["seg_at"],
                           full=full, workings=[r[4] for r in ready])
    except Exception as e:  # noqa: BLE001
        return records + [_fail(r[2], r[0], r[1], f"segmentation failed: {type(e).__name__}: {e}")
                          for r in ready]
    for (split, image_id, paths, _, _), f in zip(ready, fovs):
        h, w = f.hw
        try:
            images.save_masks(paths["mask"], f.cell, f.nucleus)
            if keeps_full(opts["full_masks"], split):
                images.save_masks(paths["mask_full"], f.cell_full, f.nucleus_full)
            rec = {"ID": image_id, "split": split, "ok": True, "ImageWidth": int(w), "ImageHeight": int(h),
                   "n_cells": len(np.unique(f.cell[f.cell > 0])), "segmenter": opts["segmenter"],
                   "seg_at": opts["seg_at"], "label_at": opts["label_at"]}
            io.atomic_write_text(paths["meta"], json.dumps(rec) + "\n")  # written last: marks the image done
            paths["failed"].unlink(missing_ok=True)
            records.append(rec)
        except Exception as e:  # noqa: BLE001
            records.append(_fail(paths, split, image_id, f"{type(e).__name__}: {e}"))
    return records


# ----------------------------------------------------------------------------- tables
def _records(folder: Path) -> pd.DataFrame:
    rows = []
    for p in sorted(folder.glob("*.json")):
        try:
            rows.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError):
            print(f"warning: {p}: unreadable record, ignored (the image will be redone next run)")
            p.unlink(missing_ok=True)
    return pd.DataFrame(rows)


def build_tables(out_dir: Path, train: pd.DataFrame, test: pd.DataFrame, n_folds: int, seed: int) -> dict:
    """(Re)write train_all.csv, test.csv and s2_failures.csv from every record under HPA512_DIR/meta."""
    counts = {}
    train = train.assign(fold=assign_folds(train, n_folds, seed))
    for split, table, cols in (
            ("train", train, ["ID", "Label", "is_ext", "fold", "ImageWidth", "ImageHeight", "n_cells"]),
            ("test", test, ["ID", "ImageWidth", "ImageHeight", "n_cells"])):
        rec = _records(out_dir / "meta" / split)
        if rec.empty:
            rec = pd.DataFrame(columns=["ID", "ImageWidth", "ImageHeight", "n_cells"])
        df = table.merge(rec[["ID", "ImageWidth", "ImageHeight", "n_cells"]], on="ID", how="inner")
        for c in ("ImageWidth", "ImageHeight", "n_cells"):
            df[c] = df[c].astype(int)
        name = "train_all.csv" if split == "train" else "test.csv"
        io.atomic_to_csv(df[cols], out_dir / name)
        counts[split] = (len(df), len(table), df["n_cells"].to_numpy())
    fails = pd.concat([_records(out_dir / "meta" / "failed" / s) for s in _SPLITS], ignore_index=True)
    if fails.empty:
        fails = pd.DataFrame(columns=["ID", "split", "reason"])
    io.atomic_to_csv(fails[["ID", "split", "reason"]], out_dir / "s2_failures.csv")
    counts["failed"] = fails
    return counts


# ----------------------------------------------------------------------------- main
def main(argv=None):
    cfg = config.parse(globals(), argv, renamed=_RENAMED)
    data_dir = constants.resolve(cfg.COMPETITION_DIR)
    out_dir = constants.output_folder(cfg.HPA512_DIR, "HPA512_DIR", keep=False)  # made when S2 writes
    seg_dir = constants.resolve(cfg.HPA_SEG_DIR)
    config.require_positive(cfg, "IMAGE_SIZE", minimum=16, step="S2")
    config.require_positive(cfg, "MAX_PIXELS", step="S2")
    config.require_positive(cfg, "N_FOLDS", minimum=2, step="S2")
    config.require_positive(cfg, "SEG_BATCH", step="S2")
    config.require_positive(cfg, "NUM_WORKERS", minimum=0, step="S2")
    try:
        shard = parallel.parse_shard(cfg.SHARD)
        seg_name = segmentation.resolve_name(cfg.SEGMENTER, seg_dir)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    try:
        seg_at = fov.resolve_seg_at(cfg.SEG_AT, seg_name)
    except ValueError as e:
        raise SystemExit(f"--{e}") from None
    config.require_choice(cfg, "LABEL_AT", ("original", "working"), step="S2")
    config.require_choice(cfg, "FULL_MASKS", ("test", "all", "none"), step="S2")
    why = ""
    if cfg.SEGMENTER.strip().lower() == "auto":
        why = f" (auto: HPA weights {'found' if seg_name == 'hpa' else 'not found'} in {seg_dir})"
    print(f"S2: segmenter {seg_name}{why}, segmenting at {seg_at} size, shard {shard[0]}/{shard[1]}")
    segmentation.check_precision(cfg.SEG_PRECISION, "S2", networks=seg_name == "hpa")

    if seg_name == "hpa" and not why and not segmentation.hpa.available(seg_dir):  # named, not auto
        raise SystemExit(constants.missing_input(f"S2: --SEGMENTER hpa: {seg_dir}: the HPA weights",
                                                 "hpa-seg", "docs/SEGMENTATION.md says where to get them"))
    train, test = list_images(data_dir, cfg.EXTERNAL)  # IDs and labels checked before anything is written
    if len(train) >= cfg.N_FOLDS:  # the folds (at the end) need iterstrat: checked before the first image
        missing = constants.missing_package("iterstrat", "S2: the folds (MultilabelStratifiedKFold)")
        if missing:
            raise SystemExit(missing)
    tag = f"shard{shard[0]}of{shard[1]}" if shard[1] > 1 else ""  # shards write disjoint images
    with lock.hold(out_dir, "S2", tag):  # one writer (per shard) for the whole run
        _claim(cfg, data_dir, out_dir, tag)  # stops here when an output is not S2's to write
        return _run(cfg, data_dir, out_dir, seg_dir, seg_name, seg_at, shard, train, test)


_TABLES = ["train_all.csv", "test.csv", "s2_failures.csv"]  # S2's files in HPA512_DIR (beside its folders)


def _claim(cfg, data_dir: Path, out_dir: Path, tag: str) -> None:
    """S2 writes only its own folders and tables of HPA512_DIR (common.owned), recorded before the first
    image; an earlier S2's (its saved config in meta/, no record yet) are taken as its own. A folder or
    file of that name that S2 did not make, a link, or the competition data there stops it."""
    record = owned.Record(out_dir, "S2", "HPA512_DIR", tag)
    folders = ["meta", *(f"meta/{s}" for s in _SPLITS), "meta/failed", *(f"meta/failed/{s}" for s in _SPLITS)]
    for split in _SPLITS:
        folders += [split, f"{split}_cell_mask"] + ([f"{split}_cell_mask_full"]
                                                    if keeps_full(cfg.FULL_MASKS, split) else [])
    if record.empty() and any((out_dir / "meta").glob("s2_config_shard*.json")):
        record.adopt(_TABLES, folders)
    record.claim(_TABLES, folders, [data_dir, *(data_dir / d for d in ("train", "test", "train_external"))])
    record.begin(_TABLES, folders)


def _run(cfg, data_dir: Path, out_dir: Path, seg_dir: Path, seg_name: str, seg_at: str, shard: tuple,
         train: pd.DataFrame, test: pd.DataFrame) -> dict:
    """Everything S2 writes, under its lock: the images not done yet, then the tables."""
    mine = [out_dir] + [out_dir / sub for s in _SPLITS for sub in (s, f"{s}_cell_mask")]  # S2's folders
    n_stale = sum(io.remove_stale_temps(d) for d in mine) + io.remove_stale_temps(out_dir / "meta", True)
    if n_stale:
        print(f"S2: removed {n_stale} temporary file(s) left by an interrupted run under {out_dir}")
    tasks = [("train", r.folder, r.ID) for r in train.itertuples()] + \
            [("test", r.folder, r.ID) for r in test.itertuples()]
    tasks = parallel.shard(tasks, shard)  # the full list first: shard i always owns the same images

    def outputs(t):
        p = out_paths(out_dir, t[0], t[2])
        full = [p["mask_full"]] if keeps_full(cfg.FULL_MASKS, t[0]) else []
        return [p["meta"], p["image"], p["mask"], *full]

    def inputs(t):  # a channel file newer than the outputs (e.g. regenerated demo data) redoes the image
        return [images.channel_path(t[1], t[2], c) for c in constants.CHANNELS]

    todo, done = parallel.split_done(tasks, outputs, overwrite=cfg.OVERWRITE, inputs=inputs)
    print(f"S2: {len(tasks)} images in this shard: {len(done)} already done, {len(todo)} to do")
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save(cfg, out_dir / "meta" / f"s2_config_shard{shard[0]}of{shard[1]}.json")

    opts = {"out_dir": str(out_dir), "image_size": cfg.IMAGE_SIZE, "seg_at": seg_at, "segmenter": seg_name,
            "hpa_seg_dir": str(seg_dir), "device": cfg.DEVICE, "io_threads": max(cfg.NUM_WORKERS, 1),
            "label_at": cfg.LABEL_AT, "full_masks": cfg.FULL_MASKS, "max_pixels": cfg.MAX_PIXELS,
            "seg_precision": cfg.SEG_PRECISION}
    if seg_name == "hpa":  # one process holds the networks; NUM_WORKERS threads read each batch and
        # NUM_WORKERS processes post-process it
        step, workers = max(cfg.SEG_BATCH, 1), 1
    else:
        step, workers = 1, cfg.NUM_WORKERS
    batches = [{"opts": opts, "tasks": todo[i:i + step]} for i in range(0, len(todo), step)]
    records = []
    for o in parallel.run_parallel(process_batch, batches, workers, desc="S2 images"):
        if o.ok:
            records.extend(o.value)
        else:  # the batch itself died (e.g. a worker killed for memory): record each image
            for split, _, image_id in o.item["tasks"]:
                records.append(_fail(out_paths(out_dir, split, image_id), split, image_id, o.error))

    counts = build_tables(out_dir, train, test, cfg.N_FOLDS, cfg.SEED)
    ok = [r for r in records if r["ok"]]
    failed = [r for r in records if not r["ok"]]
    print(f"S2 done: {len(ok)} processed, {len(done)} skipped (already done), {len(failed)} failed")
    for r in failed[:20]:
        print(f"  failed {r['split']}/{r['ID']}: {r['reason']}")
    if len(failed) > 20:
        print(f"  ... {len(failed) - 20} more in {out_dir / 's2_failures.csv'}")
    for split in _SPLITS:
        n, total, cells = counts[split]
        stats = (f"cells/image min {cells.min()} median {np.median(cells):.0f} mean {cells.mean():.1f} "
                 f"max {cells.max()}, {int((cells == 0).sum())} without cells") if n else "no images"
        print(f"  {split}: {n}/{total} images in {'train_all' if split == 'train' else 'test'}.csv; {stats}")
    if len(counts["failed"]):
        reasons = Counter(r.split(":")[0] for r in counts["failed"]["reason"])
        print(f"  {len(counts['failed'])} images listed in s2_failures.csv ({dict(reasons)})")
    return {"processed": len(ok), "skipped": len(done), "failed": len(failed), "segmenter": seg_name,
            "train_rows": counts["train"][0], "test_rows": counts["test"][0],
            "failures_listed": len(counts["failed"])}


if __name__ == "__main__":
    main()
