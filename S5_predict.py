"""S5: score every cell of every test image with every trained run and write submission.csv.

Reads   COMPETITION_DIR/sample_submission.csv (ID, ImageWidth, ImageHeight: order and original sizes)
        HPA512_DIR/test/{ID}.png, test_cell_mask/{ID}.npz and test_cell_mask_full/{ID}.npz from S2
        (when the mask is absent: the original COMPETITION_DIR/test/{ID}_{red,green,blue,yellow}.png is
        read and prepared here by common.fov, exactly as S2 does it)
        or, with --IMAGES, a folder of one's own fields of view (no sample submission; common.predict.fields):
        {ID}{CHANNEL_SUFFIXES}.{png,jpg,tif,...} (one file per channel, 8/16-bit) or one multi-channel
        {ID}.tif/.tiff (TIFF_PLANES), any size (non-square padded square for the models), segmented here;
        or an OME-Zarr plate (IDs {plate}_{well}_{field}) or {ID}.ome.tif, channels by CHANNEL_NAMES
        RUNS_DIR/<run>/fold<k>/best.pth of S3 and S4.2 (each rebuilt from its saved constants;
                                         RUNS_DIR: output, where S3 and S4.2 write, or a pack_runs.py folder)
Writes  OUTPUT_DIR/submission.csv        one row per sample_submission row, masks at the original size
        OUTPUT_DIR/cell_predictions.csv  ID, cell_id, border, c0..c18 (the ensemble's probabilities)
        OUTPUT_DIR/overlays/{stem}.png   the first N_OVERLAYS images, cells outlined and labelled
        OUTPUT_DIR/submission_{cells,pipeline1,pipeline2,image_level,x_image}.csv  with VARIANTS (for S6):
                                         cells = the cell-level ensemble alone, image_level = every cell
                                         scored with its image's prediction, x_image = cells x image_level
        OUTPUT_DIR/s5_failures.csv       ID, reason: test images that could not be read or segmented
                                         (their rows stay, empty; the last line counts them)
        OUTPUT_DIR/s5_config.json        the resolved constants, the runs used and the environment
        OUTPUT_DIR/cells.csv             with CELL_TABLES: image, cell_id, x, y (centroid), area,
                                         touches_border, top_class, top_prob, one column per class name
        OUTPUT_DIR/images.csv            with CELL_TABLES: image, width, height, n_cells, per class the
                                         fraction of the cells at >= THRESHOLD (common.predict.cell_tables)
        OUTPUT_DIR/labels/{stem}.png     with CELL_TABLES: the 16-bit label map at the original size, ids
                                         as in cells.csv (opens as labels in Fiji and napari); {stem} =
                                         constants.file_stem(ID), the ID itself when it is a plain name
        OUTPUT_DIR/report.html, report/  with REPORT: the page of per-cell results (common.report.report)
        OUTPUT_DIR/cells.parquet         with CELL_TABLES: cells.csv's rows, typed (common.predict.merge);
                                         above CSV_MAX_CELLS cells only this one
        OUTPUT_DIR/.s5_parts/            parts of CHUNK fields each (common.predict.parts): a killed S5
                                         resumes (the same command; a chunk whose fields' files changed
                                         since is scored again), torchrun ranks or --SHARD runs share the
                                         fields, --MERGE true writes the outputs (no model loaded); removed
                                         at the end
        With --IMAGES, submission.csv has one row per field that was read (its size from its files); a
        field that could not be read is only in s5_failures.csv.
OUTPUT_DIR is output, or output/<IMAGES folder name> with --IMAGES (my_fields -> output/my_fields).
Fields are scored chunk by chunk; each chunk's part is saved (its label maps to labels/ first), but a single
process keeps its last chunk in memory. The outputs are then written from the parts, one part at a time:
the essential files (submission, cell predictions, cells, images, config, failures) first, the last
chunk's label maps, cells.parquet, report, comparison submissions and overlays after them (_outputs: the
one table). S5 owns what it wrote, and only that: OUTPUT_DIR/.s5.manifest.json records it (common.owned;
a shard or rank keeps its own record, which the merge takes in), and a fresh start removes the files of
that record before scoring (so the folder never mixes two runs; S6's scores written beside the
submission join the record); a resume keeps the label maps and parts of the run it continues. Anything
else in OUTPUT_DIR stays: a run folder or a user's file where S5 would write, a symbolic link there, or
an input among the outputs stops S5 before it writes, with one line. One S5 at a time per OUTPUT_DIR
(OUTPUT_DIR/.lock; a shard or rank holds .lock.shard{i}of{n} / .lock.rank{r}of{n}).

    python S5_predict.py                                   # every run under output/
    python S5_predict.py --RUNS output/p1_x/fold0,output/p2_y/fold0 --RUN_WEIGHTS 1,2 --TTA 8
    python S5_predict.py --IMAGES my_fields --CHANNEL_SUFFIXES _ch00,_ch01,_ch02,_ch03   # -> output/my_fields
    torchrun --nproc_per_node 4 S5_predict.py --IMAGES screen             # rank r scores chunks r, r+4, ...
    python S5_predict.py --IMAGES screen --SHARD 0/3   (1/3, 2/3), then --MERGE true   # machines, no barrier
"""
# ---------------------------------------------------------------------------- input
COMPETITION_DIR = "input/hpa-single-cell-image-classification"  # sample_submission.csv and the original test/
HPA512_DIR = "input/hpa-512"      # S2's resized test images and cell masks
MAX_PIXELS = 4096 * 4096 * 4      # the most pixel values (height x width x planes, all its files) one image
                                  # may hold, read from the headers before decoding (larger: a listed failure)
# ---------------------------------------------------------------------------- your own images
IMAGES = ""                       # a folder of your own fields of view ("" = the competition test set above)
CHANNEL_SUFFIXES = ["_red", "_green", "_blue", "_yellow"]  # IMAGES: file-name endings (before the extension)
                                  # of the microtubule, protein, nucleus and ER channel files of a field
TIFF_PLANES = [0, 1, 2, 3]        # IMAGES, one multi-channel {ID}.tif per field: the planes of microtubules,
                                  # protein, nucleus and ER
CHANNEL_NAMES = []                # IMAGES, OME-Zarr plates and OME-TIFFs: the channel names (OME metadata) of
                                  # microtubules, protein, nucleus and ER ([] = by TIFF_PLANES)
TIFF_Z_PLANE = -1                 # IMAGES: the plane to take of a TIFF's Z (depth) or T (time) axis
                                  # (-1 = refuse such a stack: its planes are never channels)
RESCALE = False                   # IMAGES: stretch each channel from RESCALE_PERCENTILES to 0..255
                                  # (any values); False = proportionally at the field's bit depth (fields.py)
RESCALE_PERCENTILES = [0.1, 99.9]  # RESCALE: the low and high percentiles of a channel that become 0 and 255
# ---------------------------------------------------------------------------- models
OUTPUT_DIR = ""                   # outputs go here ("" = output, or output/<IMAGES folder name> with IMAGES)
RUNS_DIR = "output"               # runs are found under here (where S3 and S4.2 write them; or a pack_runs.py
                                  # folder)
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
PIXEL_SIZE = 0.0                  # µm per pixel of the fields: the report's scale bar (0 = unknown: no bar)
REPORT_PAGE = 200                 # the report shows its fields in pages of this many
# ---------------------------------------------------------------------------- many fields (resume, spread)
CHUNK = 64                        # fields per part (OUTPUT_DIR/.s5_parts): a killed run redoes at most one
SHARD = ""                        # "i/n": score only chunks c % n == i (their parts); no final outputs
MERGE = False                     # make the final outputs from all shards' parts (stops if one is missing)
OVERWRITE = False                 # start afresh: remove an unfinished run's parts instead of resuming them
CSV_MAX_CELLS = 2_000_000         # above this many cells, cells.csv is skipped with a note (parquet kept)

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import pandas as pd
from tqdm import tqdm

from common import cells, config, constants, io, lock, memory, owned, parallel, plots, recipes, segmentation
from common.competition import encoding
from common.constants import NUM_CLASSES
from common.predict import cell_tables, fields, merge, parts, predict, views
from common.report import report
from common.training import distributed

# constants renamed in this release: an old name on the command line stops with the new one
_RENAMED = {"DATA_DIR": "COMPETITION_DIR"}


def _load_sample(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise SystemExit(constants.missing_input(
            f"S5: {path}: the sample submission", "hpa-single-cell-image-classification",
            f"run S0 for demo data, or put the competition data in {path.parent}"))
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
    out = constants.resolve(cfg.RUNS_DIR)
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
    out = constants.resolve(cfg.RUNS_DIR)
    runs = [constants.resolve(r) for r in cfg.RUNS] if cfg.RUNS else predict.find_runs(out, cfg.CHECKPOINT)
    if not runs:
        what = f"S5: a trained run ({cfg.CHECKPOINT}) under {out} (RUNS_DIR)"
        raise SystemExit(constants.missing_input(what, "hpa-runs", "run S3 and/or S4.2 first, or name the "
                                                 "runs' folder with --RUNS_DIR"))
    for r in runs:
        ckpt = predict.checkpoint_of(r, cfg.CHECKPOINT)
        if not ckpt.is_file():
            raise SystemExit(f"S5: {ckpt}: checkpoint not found")
    return runs


def _per_run(values: list, n: int, default, name: str) -> list:
    if not values:
        return [default] * n
    if len(values) != n:
        raise SystemExit(f"S5: --{name} has {len(values)} values for {n} runs")
    return list(values)


# S5's folders in OUTPUT_DIR: made by S5 (or empty) and recorded; what S5 did not write in them stays
_FOLDERS = ("labels", "report", "overlays")
# the essential outputs besides SUBMISSION (a SUBMISSION of one of these names, or report.html, is refused)
_ESSENTIAL_EXTRAS = ("cell_predictions.csv", "cells.csv", "images.csv", "s5_config.json", "s5_failures.csv")


@dataclass
class Output:
    """One file S5 writes: its path in OUTPUT_DIR, whether it is essential (written first; a failure
    stops S5) or optional (after them; a failure is listed, the others are still written), its writer."""

    rel: str
    essential: bool
    write: Callable[[Path], object]


@dataclass
class Role:
    """This process's share: the chunks ``c % world == rank`` (``scores``), and whether it makes the final
    outputs (``merges``); ``tag`` names its lock and record beside the main ones ("" = the main ones)."""

    rank: int = 0
    world: int = 1
    scores: bool = True
    merges: bool = True
    tag: str = ""
    desc: str = "S5"
    env: distributed.DistEnv | None = None  # under torchrun: the process group


def main(argv=None):
    cfg = config.parse(globals(), argv, renamed=_RENAMED)
    t_start = time.time()
    _check_constants(cfg)  # every constant, one line each, before anything is read or written
    role = _role(cfg)  # one process, a torchrun rank (the group joined here), a --SHARD, or --MERGE
    try:
        out_dir = _out_dir(cfg, role)  # checked writable at start; made when S5 writes
        sample, found = _inputs(cfg)  # the sample submission (IDs and sizes checked), or IMAGES' fields
        predictors = _predictors(cfg, role.scores)  # the runs and weights (a merge loads no model): a
        # missing run stops before the folder is made
        with lock.hold(out_dir, "S5", role.tag):  # one S5 per output folder (a shard or rank: its own lock)
            record = _claim(cfg, out_dir, found, role)  # stops here when an output is not S5's to write
            return _run(cfg, (sample, found), predictors, out_dir, record, role, t_start)
    finally:
        if role.env is not None:
            role.env.close(barrier=False)


def _out_dir(cfg, role: Role) -> Path:
    """OUTPUT_DIR, checked writable at start; under torchrun by rank 0 first (the check makes the folder
    and removes it again), then by the other ranks, which leave it."""
    if role.env is not None and role.rank:
        role.env.barrier()
    out_dir = constants.output_folder(_output_dir(cfg), "OUTPUT_DIR", keep=role.rank > 0)
    if role.env is not None and not role.rank:
        role.env.barrier()
    return out_dir


def _role(cfg) -> Role:
    """Who this process is: under torchrun rank r of N (rank 0 merges), a ``--SHARD i/n`` run, a
    ``--MERGE`` run, or the one process that does everything."""
    try:
        i, n = parallel.parse_shard(cfg.SHARD)
    except ValueError as e:
        raise SystemExit(f"S5: --{e}") from None
    if distributed.launch()[2]:
        if n > 1 or cfg.MERGE:
            raise SystemExit("S5: --SHARD and --MERGE are for separate runs; under torchrun the ranks share "
                             "the chunks and rank 0 merges: leave them out")
        env = distributed.DistEnv(cfg.DEVICE)
        tag = f"rank{env.rank}of{env.world}" if env.rank else ""
        return Role(env.rank, env.world, True, env.main, tag, f"S5 rank {env.rank}", env)
    if cfg.MERGE:
        return Role(scores=False)
    if n > 1:
        return Role(i, n, True, False, f"shard{i}of{n}", f"S5 shard {i}/{n}")
    return Role()


def _check_scale(cfg) -> None:
    """The constants of many fields: CHUNK, CSV_MAX_CELLS, REPORT_PAGE, SHARD with MERGE, OVERWRITE."""
    config.require_positive(cfg, "CHUNK", "REPORT_PAGE", step="S5")
    config.require_positive(cfg, "CSV_MAX_CELLS", minimum=0, step="S5")
    for name in ("MERGE", "OVERWRITE"):
        if not isinstance(cfg[name], bool):
            raise SystemExit(f"S5: --{name} {cfg[name]!r}: must be true or false")
    if not isinstance(cfg.SHARD, str):
        raise SystemExit(f"S5: --SHARD {cfg.SHARD!r}: must be 'i/n', e.g. 0/4")
    try:
        shard = parallel.parse_shard(cfg.SHARD)
    except ValueError as e:
        raise SystemExit(f"S5: --{e}") from None
    if cfg.MERGE and shard[1] > 1:
        raise SystemExit("S5: --MERGE true makes the final outputs of all shards: leave --SHARD out")
    if cfg.MERGE and cfg.OVERWRITE:
        raise SystemExit("S5: --MERGE true merges the parts there are; --OVERWRITE true would remove them")


def _output_dir(cfg) -> str:
    """OUTPUT_DIR; "" is ``output`` for the competition test set, ``output/<IMAGES folder name>`` with IMAGES
    (so runs on different folders never replace each other's files)."""
    if not cfg.OUTPUT_DIR:
        name = constants.resolve(cfg.IMAGES).name or "images"
        cfg.OUTPUT_DIR = f"output/{name}" if cfg.IMAGES else "output"
    return cfg.OUTPUT_DIR


def _check_constants(cfg) -> None:
    """Every constant S5 reads that a value can break, checked at start: one line naming it."""
    step = "S5"
    _check_scale(cfg)
    config.require_positive(cfg, "IMAGE_SIZE", "THUMB_SIZE", "BATCH_SIZE", "MAX_PIXELS", step=step)
    config.require_positive(cfg, "TIFF_Z_PLANE", minimum=-1, step=step)
    config.require_number(cfg, "PIXEL_SIZE", step=step)
    segmentation.check_precision(cfg.SEG_PRECISION, step)
    config.require_positive(cfg, "TTA", maximum=8, step=step)
    config.require_positive(cfg, "LIMIT", "N_OVERLAYS", "P1_CELLPOOL_STRIDE", "P1_CELLPOOL_SIZE", minimum=0,
                            step=step)
    try:
        predict.check_image_pred(cfg.IMAGE_PRED)
    except ValueError as e:
        raise SystemExit(f"{step}: {e}") from None
    config.require_number(cfg, "BORDER_WEIGHT", step=step)
    config.require_number(cfg, "MIN_CONF", "THRESHOLD", maximum=1, step=step)
    config.require_items(cfg, "RUN_TTA", "integers 1..8", lambda t: config.is_int(t) and 1 <= t <= 8,
                         step=step)
    weights = config.require_items(cfg, "RUN_WEIGHTS", "finite numbers >= 0",
                                   lambda w: config.is_number(w) and w >= 0, step=step)
    if weights and not sum(weights) > 0:
        raise SystemExit(f"S5: --RUN_WEIGHTS {weights}: must add up to more than 0")
    low_high = config.require_items(cfg, "RESCALE_PERCENTILES", "percentiles 0..100",
                                    lambda p: config.is_number(p) and 0 <= p <= 100, length=2, step=step)
    if not low_high[0] < low_high[1]:
        raise SystemExit(f"S5: --RESCALE_PERCENTILES {low_high}: the low percentile must come first, below "
                         "the high one")
    _check_channels(cfg, step)
    name = cfg.SUBMISSION
    if not (isinstance(name, str) and name.endswith(".csv") and name == Path(name).name and "\\" not in name
            and not name.startswith(".")):
        raise SystemExit(f"S5: --SUBMISSION {name!r}: must be a plain file name ending in .csv (S5 writes it "
                         "in OUTPUT_DIR)")
    if name in _ESSENTIAL_EXTRAS:
        raise SystemExit(f"S5: --SUBMISSION {name!r}: is the name of another output of S5; choose another")


def _check_channels(cfg, step: str) -> None:
    """IMAGES' channels: TIFF_PLANES, CHANNEL_NAMES (4 names or none), CHANNEL_SUFFIXES."""
    config.require_items(cfg, "TIFF_PLANES", "plane numbers >= 0", lambda p: config.is_int(p) and p >= 0,
                         length=4, distinct=True, step=step)
    names = config.require_items(cfg, "CHANNEL_NAMES", "channel names, not empty",
                                 lambda x: isinstance(x, (str, int, float)) and str(x).strip() != "",
                                 distinct=True, step=step)
    if len(names) not in (0, 4):
        raise SystemExit(f"{step}: --CHANNEL_NAMES {names}: give 4 names (microtubules, protein, nucleus, "
                         "ER), or none to pick the channels by TIFF_PLANES")
    config.require_items(cfg, "CHANNEL_SUFFIXES", "file-name endings, not empty, no '/'",
                         lambda x: isinstance(x, str) and x.strip() != "" and "/" not in x and "\\" not in x,
                         length=4, distinct=True, step=step)


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


def _read_paths(cfg, found: tuple | None) -> list[Path]:
    """What S5 reads that could lie in OUTPUT_DIR: IMAGES and its fields' files, or the test images."""
    if found is not None:
        return [constants.resolve(cfg.IMAGES), *(p for f in found[0] for p in f.files)]
    comp, hpa = constants.resolve(cfg.COMPETITION_DIR), constants.resolve(cfg.HPA512_DIR)
    return [comp / "test", comp / "sample_submission.csv", hpa / "test", hpa / "test_cell_mask",
            hpa / "test_cell_mask_full"]


def _final_files(cfg) -> list[str]:
    """The files of OUTPUT_DIR that only the merging process writes (not per field)."""
    stem = Path(cfg.SUBMISSION).stem
    return [cfg.SUBMISSION, *_ESSENTIAL_EXTRAS, *(["cells.parquet"] if cfg.CELL_TABLES else []),
            *(["report.html", "report/data.json"] if cfg.REPORT else []),
            *([f"{stem}_{n}.csv" for n in predict.COMPARISONS] if cfg.VARIANTS else [])]


def _claim(cfg, out_dir: Path, found: tuple | None, role: Role) -> owned.Record:
    """S5's record of OUTPUT_DIR (a shard's or rank's own one), checked: every output S5 may write is absent
    or S5's (its record; an earlier S5's files before records existed are taken as S5's), no link, no input
    among them."""
    record = owned.Record(out_dir, "S5", "OUTPUT_DIR", tag=role.tag)
    if record.empty():
        _adopt_earlier(record, out_dir)
    files = _final_files(cfg) if role.merges else []
    record.claim(files, _FOLDERS + (parts.FOLDER,), _read_paths(cfg, found))
    return record


def _planned(cfg, todo: list[str], chunks, merges: bool) -> list[str]:
    """Every file a process may write, recorded before it writes any: the parts of ``chunks`` and the
    label maps of their fields, and when it ``merges`` the final outputs, pictures and overlays."""
    files = [f"{parts.FOLDER}/{parts.RUN_FILE}"]
    for c in chunks:
        files.append(f"{parts.FOLDER}/{parts.part_name(c)}")
        if cfg.CELL_TABLES:
            files += [f"labels/{constants.label_file(i)}" for i in parts.chunk_ids(todo, cfg.CHUNK, c)]
    if merges:
        files += _final_files(cfg) + [f"overlays/{constants.file_stem(i)}.png" for i in todo[:cfg.N_OVERLAYS]]
        files += [f"report/{report.thumb_name(i)}" for i in todo] if cfg.REPORT else []
    return files


# constants that leave the parts unchanged (where and how fast they are made, what the merge names them or
# drops from the strings); the runs count by their checkpoints
_NOT_FINGERPRINTED = ("OUTPUT_DIR", "RUNS_DIR", "RUNS", "ENSEMBLE", "ENSEMBLE_RECIPES", "DEVICE",
                      "BATCH_SIZE", "SUBMISSION", "FAIL_ON_ERRORS", "PIXEL_SIZE", "REPORT_PAGE", "SHARD",
                      "MERGE", "OVERWRITE", "CSV_MAX_CELLS", "MIN_CONF")


def _run(cfg, inputs: tuple, runs: tuple, out_dir: Path, record: owned.Record, role: Role,
         t_start: float) -> Path | None:
    """Score this process's chunks of the fields (``runs``: the predictors and their ensemble weights),
    each kept as a part, then (the merging process) write the outputs from the parts."""
    predictors, _ = runs
    source = _source(cfg, *inputs, predictors if role.scores else None)
    n_stale = sum(io.remove_stale_temps(out_dir / d) for d in ("", *_FOLDERS, parts.FOLDER))
    if n_stale:
        print(f"S5: removed {n_stale} temporary file(s) left by an interrupted run in {out_dir}", flush=True)
    todo = source.ids if not cfg.LIMIT else source.ids[: int(cfg.LIMIT)]
    settings = {k: v for k, v in cfg.items() if k not in _NOT_FINGERPRINTED}
    fp = parts.fingerprint(settings, [p.path for p in predictors], todo)
    mine = parts.spread(parts.n_chunks(len(todo), cfg.CHUNK), role.rank, role.world) if role.scores else []
    done = _start(cfg, out_dir, record, role, (source, todo, fp), mine)
    held = _score(cfg, runs, source, todo, role, out_dir, fp, [c for c in mine if c not in done])
    if not role.merges:
        record.finish(record.files, [d for d in (*_FOLDERS, parts.FOLDER) if (out_dir / d).is_dir()])
    if role.env is not None:
        role.env.barrier()  # every rank's parts are written
    if not role.merges:
        print(f"{role.desc}: its {len(mine)} chunk(s) are in {out_dir / parts.FOLDER}" +
              ("; when every shard is done: S5 --MERGE true, with the same constants" if role.env is None
               else ""), flush=True)
        return None
    return _merge(cfg, source, (predictors, todo, fp, held), out_dir, record, t_start)


def _inputs_now(source, todo: list[str], size: int, chunk: int) -> str:
    """The signature of the files of a chunk's fields as they are now (``parts.signature``)."""
    return parts.signature([(i, source.inputs(i)) for i in parts.chunk_ids(todo, size, chunk)])


def _start(cfg, out_dir: Path, record: owned.Record, role: Role, run: tuple, mine: list[int]) -> set[int]:
    """Resume or start afresh (:func:`_prepare`; under torchrun rank 0 does it, the others follow), then
    record this process's files; returns its chunks already done (``run``: the source, the fields, the
    fingerprint), but those whose fields' files changed since."""
    source, todo, fp = run
    error = None
    if role.rank == 0 or role.env is None:
        try:
            _prepare(cfg, out_dir, record, role, todo, fp)
        except SystemExit as e:
            error = e.code
    if role.env is not None:
        error = role.env.broadcast(error)
    if error is not None:
        raise SystemExit(error)
    if role.scores:
        record.begin(_planned(cfg, todo, mine, False), _FOLDERS + (parts.FOLDER,))
    done = parts.done(out_dir / parts.FOLDER, fp["digest"], mine)
    changed = [c for c, h in done.items() if h.get("inputs") != _inputs_now(source, todo, cfg.CHUNK, c)]
    if changed:
        print(f"{role.desc}: {len(changed)} chunk(s) done before are scored again: their fields' files "
              f"changed since (chunks {', '.join(map(str, changed[:6]))}{', ...' * (len(changed) > 6)})",
              flush=True)
        done = {c: h for c, h in done.items() if c not in changed}
    if done:
        n_done = sum(h["fields"] for h in done.values())
        n = sum(len(parts.chunk_ids(todo, cfg.CHUNK, c)) for c in mine)
        print(f"{role.desc}: resuming: {n_done} of {n} fields already done", flush=True)
    return set(done)


def _prepare(cfg, out_dir: Path, record: owned.Record, role: Role, todo: list[str], fp: dict) -> None:
    """The parts in OUTPUT_DIR are this run's (resume), or none, or another run's: that stops S5, unless
    OVERWRITE. Starting afresh, the main process removes S5's earlier files (its shards' and ranks'
    included), a shard its own."""
    folder = out_dir / parts.FOLDER
    if not role.scores and not (folder / parts.RUN_FILE).is_file():
        raise SystemExit(f"S5: --MERGE: no parts in {folder}: run the shards first (--SHARD i/n), with "
                         "the same constants")
    resume = parts.check_run(folder, fp, cfg.OVERWRITE)
    if not role.scores or resume:
        return
    if role.tag:  # a shard: its own earlier files, and the fingerprint of an overwritten run
        record.remove()
        (folder / parts.RUN_FILE).unlink(missing_ok=True)
        return
    record.absorb()
    record.begin(_planned(cfg, todo, range(parts.n_chunks(len(todo), cfg.CHUNK)), True),
                 _FOLDERS + (parts.FOLDER,))
    record.remove()  # the previous run's files go first: the folder never mixes two runs
    parts.remove(folder)


def _score(cfg, runs: tuple, source, todo: list[str], role: Role, out_dir: Path, fp: dict,
           chunks: list[int]) -> dict[int, parts.Part]:
    """Score ``chunks``, each saved as a part as it is done, except the last chunk of a single process,
    merged from memory (a kill redoes it); returns the parts held."""
    held, last = {}, parts.n_chunks(len(todo), cfg.CHUNK) - 1
    total = sum(len(parts.chunk_ids(todo, cfg.CHUNK, c)) for c in chunks)
    with tqdm(total=total, desc=role.desc, unit="field", disable=not total) as bar:
        for c in chunks:
            inputs = _inputs_now(source, todo, cfg.CHUNK, c)  # before the files are read
            part = _score_chunk(cfg, runs, source, parts.chunk_ids(todo, cfg.CHUNK, c), c, bar)
            if role.world == 1 and role.merges and c == last:
                held[c] = part
            else:
                parts.save(out_dir, part, fp, role.world, inputs)
    return held


def _score_chunk(cfg, runs: tuple, source, ids: list[str], chunk: int, bar) -> parts.Part:
    """The part of one chunk: its fields scored in order."""
    names = predict.variant_names([p.pipeline for p in runs[0]], cfg.VARIANTS)
    tables = (cell_tables.CellTables(cfg.THRESHOLD, cfg.THUMB_SIZE, cfg.CELL_TABLES, cfg.REPORT)
              if cfg.CELL_TABLES or cfg.REPORT else None)
    part = parts.Part(chunk, list(ids), names, {n: {} for n in names}, tables=tables)
    n_segmented = source.n_segmented
    for j, image_id in enumerate(ids):
        _predict_image(cfg, runs, source, image_id, part, overlay=chunk * cfg.CHUNK + j < cfg.N_OVERLAYS)
        memory.trim()  # the field's temporaries given back: memory stays flat while the chunk's results grow
        bar.update()
    part.sizes = {i: tuple(source.sizes[i]) for i in ids if i in source.sizes}
    part.n_segmented = source.n_segmented - n_segmented
    return part


def _adopt_earlier(record: owned.Record, out_dir: Path) -> None:
    """The outputs of an S5 from before records (its s5_config.json, no record) count as S5's: the files
    it names, the label maps and overlays of its submission's IDs, its report's pictures; a folder only
    when it holds nothing else."""
    try:
        old = json.loads((out_dir / "s5_config.json").read_text())
        sub, _ = str(old["SUBMISSION"]), old["RUNS_USED"]
        ids = pd.read_csv(out_dir / sub, usecols=["ID"], dtype=str)["ID"].tolist()
    except (OSError, ValueError, KeyError, TypeError):
        return
    try:
        data = json.loads((out_dir / "report" / "data.json").read_text())
        pictures = [f["src"] for f in data["fields"]]
        if "page_size" in data:  # a paged report: its pages and their data besides data.json
            pictures += report.page_files(len(pictures), int(data["page_size"]))
    except (OSError, ValueError, KeyError, TypeError):
        pictures = []
    record.adopt([sub, *_ESSENTIAL_EXTRAS, "cells.parquet", "report.html", "report/data.json",
                  *(f"{Path(sub).stem}_{n}.csv" for n in predict.COMPARISONS),
                  *(f"{d}/{i}.png" for d in ("labels", "overlays") for i in ids),
                  *(f"report/{name}" for name in pictures)])
    record.adopt(folders=[d for d in _FOLDERS if (out_dir / d).is_dir()
                          and all(record.owns(f"{d}/{e}") for e in os.listdir(out_dir / d))])
    if record.adopted:
        print(f"S5: {len(record.adopted)} outputs of an earlier S5 in {out_dir} (before {record.path.name}) "
              "are taken as S5's", flush=True)


def _source(cfg, sample: pd.DataFrame | None, found: tuple | None, predictors: list | None):
    """Where the images come from, one interface (``predict.fields``): IMAGES' fields, or the test set
    (``predictors`` None: a merge, which reads no image)."""
    if found:
        return fields.FieldSource(cfg, *found, segment=predictors is not None)
    predictors = predictors or []
    keep_original = any(p.from_original for p in predictors)  # a run that crops the original needs it
    return fields.ImageSource(cfg, sample, [p.cfg for p in predictors], keep_original)


def _predictors(cfg, load: bool = True) -> tuple[list, list[float]]:
    """The runs (RUNS, the named ENSEMBLE, or every run found), each rebuilt from its checkpoint
    (``predict.RunPredictor``; without ``load``, a merge: ``predict.RunFile``, no model), and their
    ensemble weights."""
    if cfg.ENSEMBLE:
        _ensemble(cfg)
    runs = _runs(cfg)
    weights = [float(w) for w in _per_run(cfg.RUN_WEIGHTS, len(runs), 1.0, "RUN_WEIGHTS")]
    ttas = [int(t) for t in _per_run(cfg.RUN_TTA, len(runs), cfg.TTA, "RUN_TTA")]
    view = views.ViewChoice(cfg.P1_VARIANT, cfg.P1_CELLPOOL_STRIDE, cfg.P1_CELLPOOL_SIZE)
    predictors = [predict.RunPredictor(r, cfg.DEVICE, t, cfg.BATCH_SIZE, cfg.AMP, cfg.CHECKPOINT, view)
                  if load else predict.RunFile.read(r, cfg.CHECKPOINT) for r, t in zip(runs, ttas)]
    for p, w in zip(predictors, weights):
        print(f"S5: {p} weight {w}", flush=True)
    return predictors, weights


def _predict_image(cfg, runs: tuple, source, image_id: str, res: parts.Part, overlay: bool) -> None:
    """Score the cells of one test image and add its prediction strings, cell rows, per-cell results and
    overlay to ``res``; an image that cannot be read or segmented is listed instead."""
    try:
        f = source.load(image_id)
    except fields.FieldFailed as e:  # the row stays, empty; the image is listed in s5_failures.csv
        res.failures.append({"ID": image_id, "reason": str(e)})
        tqdm.write(f"S5: {image_id}: failed, its row stays empty: {e}")
        return
    # masks at the original resolution, exactly as labelled there when S2 kept them (or made here);
    # else the working map resized (a cell lost that way is dropped, counted)
    full = f.labels_full()
    ids = cells.cell_ids(f.cell)
    masks = encoding.encode_label_map(full) if ids else {}
    f.ids = [c for c in ids if c in masks]
    res.n_dropped += len(ids) - len(f.ids)
    ens = np.zeros((0, NUM_CLASSES))
    if f.ids:
        ens = _score_cells(cfg, runs, f, [masks[c] for c in f.ids], image_id, res)
    if res.tables is not None:
        res.tables.add(image_id, f, full, ens)
    if overlay and f.ids:  # drawn after the essential outputs are written
        res.overlays.append((image_id, f.image, f.cell, f.ids, ens))


def _score_cells(cfg, runs: tuple, f, cell_masks: list[str], image_id: str, res: parts.Part) -> np.ndarray:
    """The ensemble's probabilities of the cells ``f.ids`` (``runs``: the predictors and their weights);
    adds their masks, probabilities and cell rows to ``res``. A cell touches the border when its box
    reaches the edge of ``f.region`` (the field's part of the working map)."""
    predictors, weights = runs
    boxes = cells.bounding_boxes(f.cell)
    border = np.array([cells.touches_border(boxes[c], f.region) for c in f.ids])
    cell_p, image_p = predict.score_runs(predictors, f)
    mix = predict.Mix(cfg.IMAGE_PRED, cfg.MULTIPLY_IMAGE_PRED, cfg.BORDER_WEIGHT, cfg.VARIANTS)
    variants = predict.combine(cell_p, image_p, weights, [p.pipeline for p in predictors], border, mix)
    ens = variants["ensemble"]
    res.masks[image_id] = cell_masks  # the prediction strings are written from these by the merge
    for name, probs in variants.items():
        res.probs[name][image_id] = encoding.check_probs(cell_masks, probs)
    for c, b, pr in zip(f.ids, border, ens):
        res.rows.append([image_id, c, int(b), *np.round(pr, constants.PROB_DECIMALS)])
    res.n_cells += len(f.ids)
    return ens


def _merge(cfg, source, run: tuple, out_dir: Path, record: owned.Record, t_start: float) -> Path:
    """The final outputs from every part (``run``: the predictors, the fields, the fingerprint, the parts
    held in memory); a part missing stops S5 naming its shard. The parts are removed once all is written."""
    predictors, todo, fp, held = run
    folder, n = out_dir / parts.FOLDER, parts.n_chunks(len(todo), cfg.CHUNK)
    if not distributed.launch()[2]:  # a shard still running holds its lock: stop, naming it
        for other in sorted(out_dir.glob(f"{lock.LOCK_NAME}.*")):
            with lock.hold(out_dir, "S5", other.name[len(lock.LOCK_NAME) + 1:]):
                pass
    found = parts.done(folder, fp["digest"], [c for c in range(n) if c not in held])
    missing = [c for c in range(n) if c not in held and c not in found]
    if missing:
        raise SystemExit(parts.missing_message(folder, missing, found))
    store = parts.Store(folder, n, held)
    tot = merge.totals(store, source.failures)
    record.absorb()  # the shards' and ranks' records: their files are this record's now
    record.begin(_planned(cfg, todo, range(n), True), _FOLDERS + (parts.FOLDER,))
    record.remove(keep=_planned(cfg, todo, range(n), False))  # an earlier run's outputs; the parts stay
    outputs = _outputs(cfg, source, predictors, store, tot)
    written, stopped = _write(out_dir, record, outputs)
    seconds = time.time() - t_start
    print(f"S5: {tot.n_fields} images, {tot.n_cells} cells ({tot.n_dropped} dropped: lost at the original "
          f"size), {len(predictors)} runs, {seconds:.1f} s ({seconds / max(tot.n_fields, 1):.2f} s/image); "
          f"segmented here: {tot.n_segmented}", flush=True)
    names = predict.variant_names([p.pipeline for p in predictors], cfg.VARIANTS)
    return _close(cfg, out_dir, (len(todo) + len(source.failures), tot.failures, names), written, stopped)


def _close(cfg, out_dir: Path, run: tuple, written: set[str], stopped: list) -> Path:
    """The closing lines (``run``: the number of images, discovery's included, the failures, the
    submissions' names): what was written, how many images failed, and the one line that stops S5 when
    an output could not be written (exit status 1) or FAIL_ON_ERRORS (3)."""
    n_images, failures, names = run
    sub_path = out_dir / cfg.SUBMISSION
    comps = [f for n in names[1:] if (f := f"{Path(cfg.SUBMISSION).stem}_{n}.csv") in written]
    size = sum((out_dir / f).stat(follow_symlinks=False).st_size for f in comps) / 2**20
    extra = (f" and {len(comps)} comparison submission{'s' * (len(comps) != 1)} ({size:.1f} MB; --VARIANTS "
             "false leaves them out)" if comps else "")
    failed = (f"{len(failures)} of {n_images} images FAILED (empty rows; listed in "
              f"{out_dir / 's5_failures.csv'})" if failures else "0 images failed")
    print(f"S5: wrote {sub_path}{extra}; {failed}", flush=True)
    if stopped and getattr(stopped[-1], "disk_full", False):
        raise SystemExit(f"S5: {stopped[-1]}: {sub_path.name} and cell_predictions.csv are complete (and the "
                         "other essential outputs); the optional outputs after them were not written")
    if stopped:
        raise SystemExit(f"S5: {len(stopped)} optional output(s) not written, the first: {stopped[0]}; the "
                         "essential outputs and the other optional ones are complete")
    if failures and cfg.FAIL_ON_ERRORS:
        raise SystemExit(3)
    return sub_path


def _outputs(cfg, source, predictors: list, store: parts.Store, tot: merge.Totals) -> list[Output]:
    """Every file of this run, essential ones first, in the order they are written, each made from the
    parts one at a time (the one table the clean-up and the record's check come from)."""
    runs_used = [str(p.path) for p in predictors]
    sample = source.table()  # the competition's rows, or None: the fields read (IMAGES)
    names = predict.variant_names([p.pipeline for p in predictors], cfg.VARIANTS)
    out = [Output(cfg.SUBMISSION, True, lambda p: encoding.write_submission_parts(
               merge.submission_frames(store, "ensemble", sample, cfg.MIN_CONF), p)),
           Output("cell_predictions.csv", True,
                  lambda p: io.atomic_to_csv_parts(merge.prediction_frames(store), merge.PREDICTION_COLUMNS,
                                                   p))]
    locate, on_plates = source.location_columns, source.location_columns([]) is not None  # plate, well, field
    if cfg.CELL_TABLES and tot.n_cells <= cfg.CSV_MAX_CELLS:
        out.append(Output("cells.csv", True, lambda p: io.atomic_to_csv_parts(
            merge.cell_frames(store, locate), merge.located(report.CELL_COLUMNS, on_plates), p)))
    elif cfg.CELL_TABLES:
        print(f"S5: note: {tot.n_cells} cells, above CSV_MAX_CELLS {cfg.CSV_MAX_CELLS}: cells.csv is not "
              "written; cells.parquet holds them (pandas, polars and DuckDB read it)", flush=True)
    if cfg.CELL_TABLES:
        out.append(Output("images.csv", True, lambda p: io.atomic_to_csv_parts(
            merge.image_frames(store, locate), merge.located(cell_tables.IMAGE_COLUMNS, on_plates), p)))
    out += [Output("s5_config.json", True, lambda p: config.save(dict(cfg, RUNS_USED=runs_used), p)),
            Output("s5_failures.csv", True,
                   lambda p: io.atomic_to_csv(pd.DataFrame(tot.failures, columns=["ID", "reason"]), p))]
    return out + _optional(cfg, store, (sample, names, locate, on_plates), tot)


def _optional(cfg, store: parts.Store, tables: tuple, tot: merge.Totals) -> list[Output]:
    """The optional outputs, in order: the label maps still held, cells.parquet, the report, the
    comparison submissions, the overlays (``tables``: the sample or None, the submissions' names, the
    fields' plate locations ``source.location_columns`` and whether they lie on plates)."""
    sample, names, locate, on_plates = tables
    out = [Output(f"labels/{constants.label_file(image_id)}", False,
                  lambda p, b=png: io.atomic_write_bytes(p, b))
           for part in store.held.values() if cfg.CELL_TABLES for image_id, png in part.tables.pngs.items()]
    if cfg.CELL_TABLES:
        out.append(Output("cells.parquet", False,
                          lambda p: merge.write_parquet(merge.cell_frames(store, locate), p, on_plates)))
    if cfg.REPORT:
        out.append(Output("report.html", False, lambda p: _write_report(cfg, store, tot, p)))
    out += [Output(f"{Path(cfg.SUBMISSION).stem}_{name}.csv", False,
                   lambda p, name=name: encoding.write_submission_parts(
                       merge.submission_frames(store, name, sample, cfg.MIN_CONF), p))
            for name in names[1:]]
    out += [Output(f"overlays/{constants.file_stem(o[0])}.png", False,
                   lambda p, o=o: plots.plot_cell_overlay(o[1], o[2], o[3], o[4], p,
                                                          title=f"{o[0]}: {len(o[3])} cells"))
            for o in tot.overlays]
    return out


def _write(out_dir: Path, record: owned.Record, outputs: list[Output]) -> tuple[set, list]:
    """Write the essential outputs (each complete or absent: a full disk stops S5 with the file's name),
    then the optional ones; record what was written, and remove the parts once everything is. Returns the
    files written and the errors of the optional ones (a full disk's first: it stops the writing)."""
    before = _in_folders(out_dir)  # what stays in S5's folders is not S5's: only new files are recorded
    for o in outputs:
        if o.essential:
            o.write(out_dir / o.rel)
    stopped = _write_optional(out_dir, [o for o in outputs if not o.essential])
    if not stopped:
        parts.remove(out_dir / parts.FOLDER)
    written = {f for f in record.files | {o.rel for o in outputs} if (out_dir / f).is_file()}
    written |= _in_folders(out_dir) - before
    record.finish(written, [d for d in (*_FOLDERS, parts.FOLDER) if (out_dir / d).is_dir()])
    return written, stopped


def _in_folders(out_dir: Path) -> set[str]:
    """The files in S5's folders (relative paths)."""
    return {f"{d}/{e.name}" for d in _FOLDERS if (out_dir / d).is_dir() and not (out_dir / d).is_symlink()
            for e in os.scandir(out_dir / d) if e.is_file(follow_symlinks=False)}


def _write_report(cfg, store: parts.Store, tot: merge.Totals, path: Path) -> None:
    """report.html beside the submission, from the parts one field at a time, with the time it took and
    its size on disk."""
    t0 = time.time()
    title = f"S5: {cfg.IMAGES or 'competition test set'}"
    report.write_pages(path.parent, merge.report_entries(store), tot.failures, threshold=cfg.THRESHOLD,
                       title=title, pixel_size=cfg.PIXEL_SIZE, page_size=cfg.REPORT_PAGE)
    pictures = os.scandir(path.parent / report.REPORT_DIR)  # report/ is flat; no link followed
    size = path.stat().st_size + sum(e.stat(follow_symlinks=False).st_size for e in pictures
                                     if e.is_file(follow_symlinks=False))
    print(f"S5: wrote {path} ({tot.n_pictures} fields, {size / 2**20:.1f} MB with report/) in "
          f"{time.time() - t0:.1f} s: open it in a browser", flush=True)


def _write_optional(out_dir: Path, outputs: list[Output]) -> list:
    """Write the optional outputs after the essential ones: each failure is a warning line and the others
    go on, except a full disk, which stops the writing; returns the errors (a full disk's last)."""
    errors = []
    for o in outputs:
        path = out_dir / o.rel
        try:
            o.write(path)
        except io.WriteError as e:
            errors.append(e)
            if e.disk_full:
                return errors
        except Exception as e:  # noqa: BLE001 - an optional output never costs the submission
            errors.append(f"{path} not written ({type(e).__name__}: {e})")
        else:
            continue
        print(f"S5: warning: {errors[-1]}", file=sys.stderr, flush=True)
    return errors


if __name__ == "__main__":
    main()
