"""S5: score every cell of every test image with every trained run and write submission.csv.

Reads   COMPETITION_DIR/sample_submission.csv (ID, ImageWidth, ImageHeight: order and original sizes)
        HPA512_DIR/test/{ID}.png, test_cell_mask/{ID}.npz and test_cell_mask_full/{ID}.npz from S2
        (when the mask is absent: the original COMPETITION_DIR/test/{ID}_{red,green,blue,yellow}.png is
        read and prepared here by common.fov, exactly as S2 does it)
        or, with --IMAGES, a folder of one's own fields of view (no sample submission; common.fields):
        {ID}{CHANNEL_SUFFIXES}.{png,jpg,tif,...} (one file per channel, 8/16-bit) or one multi-channel
        {ID}.tif/.tiff (TIFF_PLANES), any size (non-square padded square for the models), segmented here
        RUNS_DIR/<run>/fold<k>/best.pth of S3 and S4.2 (each rebuilt from its saved constants;
                                         RUNS_DIR is OUTPUT_DIR by default, or a tools/pack_runs.py folder)
Writes  OUTPUT_DIR/submission.csv        one row per sample_submission row, masks at the original size
        OUTPUT_DIR/cell_predictions.csv  ID, cell_id, border, c0..c18 (the ensemble's probabilities)
        OUTPUT_DIR/overlays/{ID}.png     the first N_OVERLAYS images, cells outlined and labelled
        OUTPUT_DIR/submission_{cells,pipeline1,pipeline2,image_level,x_image}.csv  with VARIANTS (for S6):
                                         cells = the cell-level ensemble alone, image_level = every cell
                                         scored with its image's prediction, x_image = cells x image_level
        OUTPUT_DIR/s5_failures.csv       ID, reason: test images that could not be read or segmented
                                         (their rows stay, empty; the last line counts them)
        OUTPUT_DIR/s5_config.json        the resolved constants, the runs used and the environment
        OUTPUT_DIR/cells.csv             with CELL_TABLES: image, cell_id, x, y (centroid), area,
                                         touches_border, top_class, top_prob, one column per class name
        OUTPUT_DIR/images.csv            with CELL_TABLES: image, width, height, n_cells, per class the
                                         fraction of the cells at >= THRESHOLD (common.cell_tables)
        OUTPUT_DIR/labels/{ID}.png       with CELL_TABLES: the 16-bit label map at the original size, ids
                                         as in cells.csv (opens as labels in Fiji and napari)
        OUTPUT_DIR/report.html, report/  with REPORT: the page of per-cell results (common.report)
        With --IMAGES, submission.csv has one row per field that was read (its size from its files); a
        field that could not be read is only in s5_failures.csv.
The essential files (submission, cell predictions, cells, images, config, failures) are written first,
the label maps, report, overlays and comparison submissions after them; the previous run's files are
removed just before, so the folder never mixes two runs. One S5 at a time per OUTPUT_DIR
(OUTPUT_DIR/.lock while it runs).

    python S5_predict.py                                   # every run under output/
    python S5_predict.py --RUNS output/p1_x/fold0,output/p2_y/fold0 --RUN_WEIGHTS 1,2 --TTA 8
    python S5_predict.py --IMAGES my_fields --CHANNEL_SUFFIXES _ch00,_ch01,_ch02,_ch03 --OUTPUT_DIR out/mine
"""
# ---------------------------------------------------------------------------- input
COMPETITION_DIR = "input/hpa-single-cell-image-classification"  # sample_submission.csv and the original test/
HPA512_DIR = "input/hpa-512"      # S2's resized test images and cell masks
# ---------------------------------------------------------------------------- your own images
IMAGES = ""                       # a folder of your own fields of view ("" = the competition test set above)
CHANNEL_SUFFIXES = ["_red", "_green", "_blue", "_yellow"]  # IMAGES: file-name endings (before the extension)
                                  # of the microtubule, protein, nucleus and ER channel files of a field
TIFF_PLANES = [0, 1, 2, 3]        # IMAGES, one multi-channel {ID}.tif per field: the planes of microtubules,
                                  # protein, nucleus and ER
RESCALE = False                   # IMAGES: stretch each channel from RESCALE_PERCENTILES to 0..255 (dim
                                  # 12-bit data); False = 16 -> 8 bit proportionally, as everywhere else
RESCALE_PERCENTILES = [0.1, 99.9]  # RESCALE: the low and high percentiles of a channel that become 0 and 255
# ---------------------------------------------------------------------------- models
OUTPUT_DIR = "output"             # outputs are written here (and runs found here, see RUNS_DIR)
RUNS_DIR = ""                     # runs are found under here ("" = OUTPUT_DIR; or a pack_runs.py folder)
RUNS = []                         # run folders or checkpoint files; [] = every run under RUNS_DIR
ENSEMBLE = ""                     # a named ensemble of recipes (original | recommended) instead of RUNS
ENSEMBLE_RECIPES = []             # only these recipes of ENSEMBLE ([] = all of them)
CHECKPOINT = "best.pth"           # which checkpoint of a run folder
RUN_WEIGHTS = []                  # one ensemble weight per run ([] = all 1)
RUN_TTA = []                      # flip/transpose variants per run, 1..8 ([] = TTA for every run)
TTA = 2                           # default number of TTA variants (1 = none)
P1_VARIANT = ""                   # pipeline-1 scoring: "" = as trained | masked | center_cells | cellpool
P1_CELLPOOL_STRIDE = 0            # cellpool: backbone output_stride (0 = as trained; 8 | 16 dilated)
P1_CELLPOOL_SIZE = 0              # cellpool: input side (0 = the run's IMAGE_SIZE)
# ---------------------------------------------------------------------------- ensemble
MULTIPLY_IMAGE_PRED = False       # multiply each cell's probabilities by its image's prediction
IMAGE_PRED = "model"              # the image's prediction: model (the runs' image outputs) | cells (mean
                                  # of the ensemble's cell probabilities) | both (their average)
BORDER_WEIGHT = 1.0               # multiply cells touching the image edge by this (1 = off)
MIN_CONF = 0.0                    # drop (cell, class) triplets below this confidence
# ---------------------------------------------------------------------------- segmentation
SEGMENTER = "auto"                # used only when S2's test mask is missing: auto | builtin | hpa
HPA_SEG_DIR = "input/hpa-seg"     # official HPA segmentation weights (for auto | hpa)
IMAGE_SIZE = 512                  # working resolution when S2's outputs are missing (S2's IMAGE_SIZE)
SEG_AT = "auto"                   # image the segmenter gets when S2's mask is missing (S2's SEG_AT)
SEG_PRECISION = "fp32"            # HPA networks then: fp32 (the truth) | bf16 (AMX/CUDA; labels may differ)
# ---------------------------------------------------------------------------- run
DEVICE = "auto"                   # auto | cpu | cuda
AMP = True                        # mixed precision (CUDA only)
BATCH_SIZE = 32                   # views per forward pass, TTA variants included (8 suits a CPU)
N_OVERLAYS = 4                    # overlay PNGs for the first N test images (0 = none)
VARIANTS = True                   # also write per-pipeline / image-level submissions for comparison
SUBMISSION = "submission.csv"     # file name of the submission inside OUTPUT_DIR
LIMIT = 0                         # only the first LIMIT test images (0 = all); rows kept, strings empty
FAIL_ON_ERRORS = False            # exit with status 3 (after writing everything) if an image failed
# ---------------------------------------------------------------------------- per-cell results
CELL_TABLES = True                # write cells.csv, images.csv and labels/{ID}.png
THRESHOLD = 0.5                   # images.csv: a cell counts for a class from this probability on
REPORT = True                     # write report.html (and its pictures under report/)
THUMB_SIZE = 512                  # report pictures: longest side in pixels

import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import pandas as pd
from tqdm import tqdm

from common import (
    cell_tables,
    cells,
    config,
    constants,
    encoding,
    fields,
    fov,
    io,
    lock,
    plots,
    predict,
    recipes,
    report,
    segmentation,
)
from common.constants import NUM_CLASSES

# constants renamed in this release: an old name on the command line stops with the new one
_RENAMED = {"DATA_DIR": "COMPETITION_DIR"}


def _load_sample(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise SystemExit(f"S5: {path}: sample submission not found (run S0 for demo data, or put the "
                         f"competition data in {path.parent})")
    size = ("ImageWidth", "ImageHeight")  # IDs are plain names, sizes positive integers, else it stops
    return io.read_id_table(path, ("ID", *size), int_columns=size)


def _ensemble(cfg) -> None:
    """Fill RUNS, RUN_TTA, RUN_WEIGHTS and MULTIPLY_IMAGE_PRED from the named ENSEMBLE: each recipe's
    run folder, its TTA count, and a weight equal to that count, so that every (model, TTA variant)
    output counts once in the mean (the original's plain mean over 104 outputs)."""
    outputs = recipes.ensemble_outputs(cfg.ENSEMBLE)
    if cfg.ENSEMBLE_RECIPES:
        unknown = sorted(set(cfg.ENSEMBLE_RECIPES) - set(outputs))
        if unknown:
            raise SystemExit(f"S5: --ENSEMBLE_RECIPES {unknown} are not in ENSEMBLE {cfg.ENSEMBLE!r}")
        outputs = {r: outputs[r] for r in cfg.ENSEMBLE_RECIPES}
    out = constants.resolve(cfg.RUNS_DIR or cfg.OUTPUT_DIR)
    runs = {r: out / recipes.run_dir(r) for r in outputs}
    missing = [f"{r} ({p / cfg.CHECKPOINT})" for r, p in runs.items() if not (p / cfg.CHECKPOINT).is_file()]
    if missing:
        raise SystemExit(f"S5: ENSEMBLE {cfg.ENSEMBLE!r} lacks {len(missing)} of its {len(runs)} runs: "
                         + ", ".join(missing) + " (train them with bash run_all.sh --real, "
                         "or choose some with --ENSEMBLE_RECIPES)")
    cfg.RUNS, cfg.RUN_TTA = [str(p) for p in runs.values()], list(outputs.values())
    cfg.RUN_WEIGHTS = [float(n) for n in outputs.values()]
    cfg.MULTIPLY_IMAGE_PRED = recipes.ENSEMBLES[cfg.ENSEMBLE]["multiply_image_pred"]
    print(f"S5: ENSEMBLE {cfg.ENSEMBLE}: {len(runs)} runs, {sum(outputs.values())} outputs", flush=True)


def _runs(cfg) -> list[Path]:
    out = constants.resolve(cfg.RUNS_DIR or cfg.OUTPUT_DIR)
    runs = [constants.resolve(r) for r in cfg.RUNS] if cfg.RUNS else predict.find_runs(out, cfg.CHECKPOINT)
    if not runs:
        raise SystemExit(f"S5: no trained run ({cfg.CHECKPOINT}) under {out}: run S3 and/or S4.2 first")
    for r in runs:
        ckpt = r / cfg.CHECKPOINT if r.is_dir() else r
        if not ckpt.is_file():
            raise SystemExit(f"S5: {ckpt}: checkpoint not found")
    return runs


def _per_run(values: list, n: int, default, name: str) -> list:
    if not values:
        return [default] * n
    if len(values) != n:
        raise SystemExit(f"S5: --{name} has {len(values)} values for {n} runs")
    return list(values)


ImageFailed = fields.FieldFailed  # one image could not be read or segmented: listed, its row stays empty


class ImageSource:
    """The working-resolution image and mask of a test image, from S2 or made here."""

    def __init__(self, cfg):
        self.hpa = constants.resolve(cfg.HPA512_DIR)
        self.test_dir = constants.resolve(cfg.COMPETITION_DIR) / "test"
        self.size = int(cfg.IMAGE_SIZE)
        self.segmenter_name = cfg.SEGMENTER
        self.seg_dir = constants.resolve(cfg.HPA_SEG_DIR)
        self.device = cfg.DEVICE
        self.seg_at, self.precision = cfg.SEG_AT, cfg.SEG_PRECISION
        try:
            fov.resolve_seg_at(self.seg_at, "hpa")  # a bad value stops here, not at the first image
        except ValueError as e:
            raise SystemExit(f"S5: --{e}") from None
        self._segmenter = None
        self.n_segmented = 0

    def original(self, image_id: str) -> np.ndarray | None:
        if io.channel_path(self.test_dir, image_id, "red").is_file():
            try:
                return io.read_image(self.test_dir, image_id)
            except Exception as e:  # noqa: BLE001 - any reader failure is this image's
                raise ImageFailed(str(e)) from e
        return None

    def _cached(self, image_id: str) -> tuple | None:
        """S2's working image and masks of ``image_id`` (None when S2 made none); raises when unreadable."""
        small = self.hpa / "test" / f"{image_id}.png"
        mask_path = self.hpa / "test_cell_mask" / f"{image_id}.npz"
        if not (small.is_file() and mask_path.is_file()):
            return None
        image, labels = io.read_rgby(small), io.load_masks(mask_path)[0]
        full_path = fov.full_mask_path(mask_path)
        full = io.load_masks(full_path)[0] if full_path.is_file() else None
        if labels.shape != image.shape[:2]:
            labels = segmentation.resize_labels(labels, image.shape[:2])
        return fields.Loaded(image, labels, full, None)

    def load(self, image_id: str) -> fields.Loaded:
        """(image, cell label map) at the working resolution, the original-size cell label map (S2's, or
        made here; None when S2 kept none), and the original image if read. S2's files when they are
        there and readable, else prepared from the original (a corrupt cache file is noted and made
        again here). An unreadable or unsegmentable image raises :class:`ImageFailed`."""
        try:
            cached = self._cached(image_id)
            if cached is not None:
                return cached
        except Exception as e:  # noqa: BLE001 - a corrupt cache: the original may still be intact
            if not io.channel_path(self.test_dir, image_id, "red").is_file():
                raise ImageFailed(str(e)) from e
            tqdm.write(f"S5: {image_id}: S2's file is unreadable ({e}); preparing it again from the original")
        try:
            original = io.read_image(self.test_dir, image_id)  # names a missing channel file
        except Exception as e:  # noqa: BLE001 - any reader failure is this image's
            raise ImageFailed(str(e)) from e
        if self._segmenter is None:  # a segmenter that cannot be built stops S5; one image failing does not
            self._segmenter = segmentation.get_segmenter(self.segmenter_name, self.seg_dir,
                                                         device=self.device, precision=self.precision)
            print(f"S5: segmenting test images without an S2 mask with '{self._segmenter.name}' "
                  f"(common.fov, as S2)", flush=True)
        try:
            f = fov.prepare([original], self.size, self._segmenter, self.seg_at, full=True)[0]
        except Exception as e:  # noqa: BLE001
            raise ImageFailed(f"segmentation failed: {type(e).__name__}: {e}") from e
        self.n_segmented += 1
        return fields.Loaded(f.image, f.cell, f.cell_full, original)


# the essential outputs besides SUBMISSION (the previous run's are removed before the new are written)
_ESSENTIAL_EXTRAS = ("cell_predictions.csv", "cells.csv", "images.csv", "s5_config.json", "s5_failures.csv")


@dataclass
class Results:
    """What S5 gathers over the test images before it writes anything."""

    names: list[str]                              # the submissions: ensemble, then the comparisons
    strings: dict[str, dict[str, str]]            # {name: {ID: PredictionString}}
    rows: list = field(default_factory=list)      # cell_predictions.csv
    failures: list = field(default_factory=list)  # s5_failures.csv
    overlays: list = field(default_factory=list)  # (ID, image, labels, ids, probs) of the first N_OVERLAYS
    tables: cell_tables.CellTables | None = None  # cells.csv, images.csv, labels/, the report's pictures
    n_cells: int = 0
    n_dropped: int = 0                            # cells lost at the original size


def main(argv=None):
    cfg = config.parse(globals(), argv, renamed=_RENAMED)
    t_start = time.time()
    config.require_positive(cfg, "IMAGE_SIZE", "THUMB_SIZE", step="S5")
    if cfg.IMAGE_PRED not in predict.IMAGE_PREDS:
        raise SystemExit(f"S5: --IMAGE_PRED must be one of {predict.IMAGE_PREDS}, not {cfg.IMAGE_PRED!r}")
    segmentation.check_precision(cfg.SEG_PRECISION, "S5")
    out_dir = constants.output_folder(cfg.OUTPUT_DIR, "OUTPUT_DIR", keep=False)  # made when S5 writes
    sample, found = _inputs(cfg)  # the sample submission (IDs and sizes checked), or IMAGES' fields
    with lock.hold(out_dir, "S5"):  # one S5 per output folder: its files are always one run's
        return _run(cfg, sample, found, out_dir, t_start)


def _inputs(cfg) -> tuple[pd.DataFrame | None, tuple | None]:
    """``(sample submission, None)``, or with IMAGES ``(None, (fields found, failures of discovery))``."""
    if not cfg.IMAGES:
        return _load_sample(constants.resolve(cfg.COMPETITION_DIR) / "sample_submission.csv"), None
    try:
        found = fields.discover(constants.resolve(cfg.IMAGES), list(cfg.CHANNEL_SUFFIXES))
    except ValueError as e:
        raise SystemExit(f"S5: --IMAGES {e}") from None
    print(f"S5: --IMAGES: {len(found[0])} field(s) of view, {len(found[1])} unusable", flush=True)
    return None, found


def _own_sample(found: list, sizes: dict) -> pd.DataFrame:
    """IMAGES' submission rows: every field that was read, in ID order, with its size."""
    rows = [(f.image_id, sizes[f.image_id][1], sizes[f.image_id][0]) for f in found if f.image_id in sizes]
    return pd.DataFrame(rows, columns=["ID", "ImageWidth", "ImageHeight"])


def _run(cfg, sample: pd.DataFrame | None, found: tuple | None, out_dir: Path, t_start: float) -> Path:
    """Score the test images with every run, then write the outputs (essential ones first)."""
    predictors, weights = _predictors(cfg)
    source = fields.FieldSource(cfg, found[0]) if found else ImageSource(cfg)
    n_stale = io.remove_stale_temps(out_dir) + io.remove_stale_temps(out_dir / "overlays")
    if n_stale:
        print(f"S5: removed {n_stale} temporary file(s) left by an interrupted run in {out_dir}", flush=True)
    names = predict.variant_names([p.pipeline for p in predictors], cfg.VARIANTS)
    tables = (cell_tables.CellTables(cfg.THRESHOLD, cfg.THUMB_SIZE, cfg.CELL_TABLES, cfg.REPORT)
              if cfg.CELL_TABLES or cfg.REPORT else None)
    res = Results(names, {n: {} for n in names}, failures=list(found[1]) if found else [], tables=tables)
    todo = sample if found is None else pd.DataFrame({"ID": [f.image_id for f in found[0]],
                                                      "ImageWidth": 0, "ImageHeight": 0})
    todo = todo if not cfg.LIMIT else todo.head(int(cfg.LIMIT))
    for k, row in enumerate(tqdm(todo.itertuples(index=False), total=len(todo), desc="S5 predict")):
        _predict_image(cfg, predictors, weights, source, row, res, overlay=k < cfg.N_OVERLAYS)
    sample = sample if found is None else _own_sample(found[0], source.sizes)
    sub_path = out_dir / cfg.SUBMISSION
    disk_full = _write(cfg, sample, out_dir, sub_path, predictors, res)

    seconds = time.time() - t_start
    n_img = len(todo)
    print(f"S5: {n_img} images, {res.n_cells} cells ({res.n_dropped} dropped: lost at the original size), "
          f"{len(predictors)} runs, {seconds:.1f} s ({seconds / max(n_img, 1):.2f} s/image); "
          f"segmented here: {source.n_segmented}", flush=True)
    extra = f" and {len(names) - 1} comparison submissions" if len(names) > 1 else ""
    failed = (f"{len(res.failures)} of {n_img} images FAILED (empty rows; listed in "
              f"{out_dir / 's5_failures.csv'})" if res.failures else "0 images failed")
    print(f"S5: wrote {sub_path}{extra}; {failed}", flush=True)
    if disk_full is not None:
        raise SystemExit(f"S5: {disk_full}: {sub_path.name} and cell_predictions.csv are complete (and the "
                         "other essential outputs); the optional outputs after them were not written")
    if res.failures and cfg.FAIL_ON_ERRORS:
        raise SystemExit(3)
    return sub_path


def _predictors(cfg) -> tuple[list[predict.RunPredictor], list[float]]:
    """The runs (RUNS, the named ENSEMBLE, or every run found), each rebuilt from its checkpoint, and
    their ensemble weights."""
    if cfg.ENSEMBLE:
        _ensemble(cfg)
    runs = _runs(cfg)
    weights = [float(w) for w in _per_run(cfg.RUN_WEIGHTS, len(runs), 1.0, "RUN_WEIGHTS")]
    ttas = [int(t) for t in _per_run(cfg.RUN_TTA, len(runs), cfg.TTA, "RUN_TTA")]
    predictors = [predict.RunPredictor(r, cfg.DEVICE, t, cfg.BATCH_SIZE, cfg.AMP, cfg.CHECKPOINT,
                                       cfg.P1_VARIANT, cfg.P1_CELLPOOL_STRIDE, cfg.P1_CELLPOOL_SIZE)
                  for r, t in zip(runs, ttas)]
    for p, w in zip(predictors, weights):
        print(f"S5: {p} weight {w}", flush=True)
    return predictors, weights


def _predict_image(cfg, predictors: list, weights: list[float], source, row, res: Results,
                   overlay: bool) -> None:
    """Score the cells of one test image (a ``sample_submission`` row; IMAGES: the size is the field's)
    and add its prediction strings, cell rows, per-cell results and overlay to ``res``; an image that
    cannot be read or segmented is listed instead."""
    image_id = str(row.ID)
    try:
        got = source.load(image_id)
        image, labels, labels_full, original = got[:4]
        if original is None and any(p.from_original for p in predictors):
            original = source.original(image_id)
    except ImageFailed as e:  # the row stays, empty; the image is listed in s5_failures.csv
        res.failures.append({"ID": image_id, "reason": str(e)})
        tqdm.write(f"S5: {image_id}: failed, its row stays empty: {e}")
        return
    hw = got.hw or (int(row.ImageHeight), int(row.ImageWidth))
    # masks at the original resolution, exactly as labelled there when S2 kept them (or made here);
    # else the working map resized (a cell lost that way is dropped, counted)
    full = fov.labels_at(hw, labels, labels_full)
    ids = cells.cell_ids(labels)
    masks = encoding.encode_label_map(full) if ids else {}
    kept = [c for c in ids if c in masks]
    res.n_dropped += len(ids) - len(kept)
    ids = kept
    ens = np.zeros((0, NUM_CLASSES))
    if ids:
        ens = _score_cells(cfg, predictors, weights, image, labels, ids, original, labels_full,
                           got.region or labels.shape, [masks[c] for c in ids], image_id, res)
    if res.tables is not None:
        res.tables.add(image_id, hw, full, ids, ens, image, labels, got.region)
    if overlay and ids:  # drawn after the essential outputs are written
        res.overlays.append((image_id, image, labels, ids, ens))


def _score_cells(cfg, predictors: list, weights: list[float], image, labels, ids, original, labels_full,
                 region, cell_masks: list[str], image_id: str, res: Results) -> np.ndarray:
    """The ensemble's probabilities of the cells ``ids``; adds their strings and cell rows to ``res``.
    A cell touches the border when its box reaches the edge of ``region`` (the field's part of the
    working map)."""
    boxes = cells.bounding_boxes(labels)
    border = np.array([cells.touches_border(boxes[c], region) for c in ids])
    cell_p, image_p = predict.score_runs(predictors, image, labels, ids, original, labels_full)
    variants = predict.combine(cell_p, image_p, weights, [p.pipeline for p in predictors], border,
                               image_pred=cfg.IMAGE_PRED, multiply=cfg.MULTIPLY_IMAGE_PRED,
                               border_weight=cfg.BORDER_WEIGHT, comparisons=cfg.VARIANTS)
    ens = variants["ensemble"]
    for name, probs in variants.items():
        res.strings[name][image_id] = encoding.prediction_string(cell_masks, probs, cfg.MIN_CONF)
    for c, b, pr in zip(ids, border, ens):
        res.rows.append([image_id, c, int(b), *np.round(pr, 6)])
    res.n_cells += len(ids)
    return ens


def _write(cfg, sample: pd.DataFrame, out_dir: Path, sub_path: Path, predictors: list,
           res: Results) -> io.WriteError | None:
    """Remove the previous run's files, write the essential outputs (each complete or absent: a full disk
    stops S5 with the file's name), then the optional ones; returns the error that stopped those."""
    overlay_dir, label_dir = out_dir / "overlays", out_dir / "labels"
    owned = ([sub_path.with_name(f"{sub_path.stem}_{n}.csv") for n in predict.COMPARISONS]
             + sorted(overlay_dir.glob("*.png")) + sorted(label_dir.glob("*.png"))
             + [out_dir / n for n in (*_ESSENTIAL_EXTRAS, "report.html")])
    for path in owned:  # the previous run's files go first: the folder never mixes two runs
        path.unlink(missing_ok=True)
    shutil.rmtree(out_dir / "report", ignore_errors=True)
    encoding.write_submission(res.strings["ensemble"], sample, sub_path)
    cols = ["ID", "cell_id", "border"] + [f"c{c}" for c in range(NUM_CLASSES)]
    io.atomic_to_csv(pd.DataFrame(res.rows, columns=cols), out_dir / "cell_predictions.csv")
    if cfg.CELL_TABLES:
        io.atomic_to_csv(res.tables.cells_frame(), out_dir / "cells.csv")
        io.atomic_to_csv(res.tables.images_frame(), out_dir / "images.csv")
    config.save(dict(cfg, RUNS_USED=[str(p.path) for p in predictors]), out_dir / "s5_config.json")
    io.atomic_to_csv(pd.DataFrame(res.failures, columns=["ID", "reason"]), out_dir / "s5_failures.csv")
    optional = [(label_dir / f"{image_id}.png", lambda path, b=png: io.atomic_write_bytes(path, b))
                for image_id, png in (res.tables.pngs.items() if cfg.CELL_TABLES else ())]
    if cfg.REPORT:
        optional.append((out_dir / "report.html", lambda path: _write_report(cfg, res, path)))
    optional += [(sub_path.with_name(f"{sub_path.stem}_{name}.csv"),
                  lambda path, name=name: encoding.write_submission(res.strings[name], sample, path))
                 for name in res.names[1:]]
    optional += [(overlay_dir / f"{image_id}.png",
                  lambda path, o=(image_id, image, labels, ids, ens): plots.plot_cell_overlay(
                      o[1], o[2], o[3], o[4], path, title=f"{o[0]}: {len(o[3])} cells"))
                 for image_id, image, labels, ids, ens in res.overlays]
    return _write_optional(optional)


def _write_report(cfg, res: Results, path: Path) -> None:
    """report.html beside the submission, with the time it took and its size on disk."""
    t0 = time.time()
    title = f"S5: {cfg.IMAGES or 'competition test set'}"
    fields = cell_tables.ReportFields(res.tables.report_fields)
    report.write_report(path.parent, fields, res.tables.cells_frame(), res.failures, threshold=cfg.THRESHOLD,
                        title=title)
    pictures = [f for f in (path.parent / "report").rglob("*") if f.is_file()]
    size = path.stat().st_size + sum(f.stat().st_size for f in pictures)
    print(f"S5: wrote {path} ({len(fields)} fields, {size / 2**20:.1f} MB with report/) in "
          f"{time.time() - t0:.1f} s: open it in a browser", flush=True)


def _write_optional(outputs: list) -> io.WriteError | None:
    """Write the optional outputs (``(path, write(path))``) after the essential ones: a failure is a
    warning line, except a full disk, which stops the writing; returns that error (else None)."""
    for path, write in outputs:
        try:
            write(path)
        except io.WriteError as e:
            if e.disk_full:
                return e
            print(f"S5: warning: {e}", file=sys.stderr, flush=True)
        except Exception as e:  # noqa: BLE001 - an optional output never costs the submission
            print(f"S5: warning: {path} not written ({type(e).__name__}: {e})", file=sys.stderr, flush=True)
    return None


if __name__ == "__main__":
    main()
