"""S6: score a submission with the competition metric (cell-level mAP, strict and lenient).

Reads a submission (ID,ImageWidth,ImageHeight,PredictionString) and the per-cell truth
(ID,ImageWidth,ImageHeight,cell_id,Label,EncodedMask; one row per cell and label, see
common/competition/metric.py), prints a per-class AP table and ends with exactly two lines
``mAP_strict=<x>`` and ``mAP_lenient=<x>``. Beside the submission it writes
``<stem>_scores.csv``, ``<stem>_ap.png`` (per-class AP bars), ``<stem>_pr.png`` (lenient
precision-recall envelopes) and ``<stem>_eval_config.json``. ``--REPORT`` re-renders S5's
``report.html`` (beside SUBMISSION, from its ``report/data.json`` and ``labels/``) with the
per-class AP table, each cell's true labels and a gallery of the most confident mistakes per
class (``common.report.report_truth``).

``--MAKE truth`` first writes ``submission_truth.csv`` (beside SUBMISSION) from the truth: each
true cell with its true labels at confidence 1 (must score 1.0). ``--MAKE broadcast`` writes
``submission_broadcast.csv``: every true cell gets ALL labels of its image (the union over the
image's cells) at confidence 1, the best a method that cannot tell cells apart can do. All its
confidences tie, so the metric's tie rule decides: ties keep submission order (images in truth
order, cells in truth order, classes ascending).

``--BASELINE other.csv`` compares: after the two mAP lines it prints ``delta_strict=`` and
``delta_lenient=`` lines, mAP(SUBMISSION) - mAP(BASELINE) with a paired bootstrap interval over
the test images (N_BOOT resamples, metric.bootstrap_difference). With a few dozen test images a
difference of a few points can be noise: the interval says whether it is.

    python S6_evaluate.py --SUBMISSION output/submission.csv --BASELINE output/submission_image_level.csv
"""
# ---------------------------------------------------------------------------- input
SUBMISSION = "output/submission.csv"  # the submission to score; MAKE writes submission_<MAKE>.csv beside it
TRUTH = "input/hpa-single-cell-image-classification/test_cells.csv"  # per-(cell, label) truth CSV
# ---------------------------------------------------------------------------- scoring
MAKE = ""  # "" = score SUBMISSION; "truth" | "broadcast" = build that reference submission and score it
IOU = 0.6  # mask IoU at or above which a detection matches a true cell
BASELINE = ""  # another submission: also print mAP(SUBMISSION) - mAP(BASELINE) with a bootstrap interval
N_BOOT = 1000  # bootstrap resamples of the test images for that interval
LEVEL = 0.95  # coverage of the interval
# ---------------------------------------------------------------------------- output
PLOTS = True  # write <stem>_ap.png and <stem>_pr.png beside the submission
REPORT = False  # re-render S5's report.html (beside SUBMISSION) with per-class AP and confident mistakes
REPORT_MISTAKES = 8  # cells per class in the report's gallery of the most confident mistakes

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
import pandas as pd

from common import config, constants, io, lock, owned
from common.competition import encoding, metric
from common.io import atomic_to_csv
from common.report import report_truth

_MAKE_CHOICES = ("", "truth", "broadcast")


def make_reference(truth: pd.DataFrame, kind: str, path: Path) -> Path:
    """Write the "truth" or "broadcast" reference submission built from the truth table."""
    cells, labels, images = metric.truth_cells(truth)
    pred = {}
    for img, idx in images.items():
        lab = labels[idx].astype(np.float64)
        if kind == "broadcast":
            lab = np.broadcast_to(lab.max(0), lab.shape)
        masks = cells["EncodedMask"].to_numpy()[idx].tolist()
        pred[img] = encoding.prediction_string(masks, lab, min_conf=0.5)  # the 1s, written as "1"
    sample = cells.drop_duplicates("ID")[["ID", "ImageWidth", "ImageHeight"]]
    return encoding.write_submission(pred, sample, path)


def score_table(strict: dict, lenient: dict) -> pd.DataFrame:
    rows = []
    for c in range(constants.NUM_CLASSES):
        rows.append({"class": c, "name": constants.CLASS_NAMES[c], "n_gt": strict["n_gt"][c],
                     "ap_strict": strict["per_class"].get(c, np.nan),
                     "ap_lenient": lenient["per_class"].get(c, np.nan)})
    return pd.DataFrame(rows)


def format_table(table: pd.DataFrame) -> str:
    def f(x):
        return "    -" if pd.isna(x) else f"{x:.4f}"

    lines = [f"{'class':>5}  {'name':<42} {'n_gt':>6}  {'AP_strict':>9}  {'AP_lenient':>10}"]
    for r in table.itertuples(index=False):
        lines.append(f"{r[0]:>5}  {r[1]:<42} {r[2]:>6}  {f(r[3]):>9}  {f(r[4]):>10}")
    return "\n".join(lines)


def _first(ids: list, k: int = 5) -> str:
    """The first ``k`` IDs, then how many more."""
    return ", ".join(ids[:k]) + (f" and {len(ids) - k} more" if len(ids) > k else "")


def main(argv=None):
    cfg = config.parse(globals(), argv)
    config.require_choice(cfg, "MAKE", _MAKE_CHOICES, step="S6")
    config.require_number(cfg, "IOU", "LEVEL", above=True, maximum=1, step="S6")
    config.require_positive(cfg, "N_BOOT", step="S6")
    config.require_positive(cfg, "REPORT_MISTAKES", minimum=0, step="S6")
    sub_path = constants.output_folder(cfg.SUBMISSION, "SUBMISSION", file=True)  # scores go beside it
    with lock.hold(sub_path.parent, "S6"):  # not while S5 (or another S6) writes that folder
        _claim(cfg, sub_path)  # stops here when a file S6 writes is not its to write
        return _evaluate(cfg, sub_path)


_WRITES = ("_scores.csv", "_eval_config.json", "_ap.png", "_pr.png")  # beside <stem>.csv (the last 2: PLOTS)


def _claim(cfg, sub_path: Path) -> None:
    """S6 writes beside the submission only files that are its own (common.owned): they join S5's record
    when S5 wrote the submission (S5's next run removes them with the submission they score), else
    S6's. An earlier S6's files (its <stem>_eval_config.json, no record) are taken as its own."""
    folder = sub_path.parent
    s5 = owned.Record(folder, "S6", "SUBMISSION", owner="S5")
    record = s5 if s5.owns(sub_path.name) else owned.Record(folder, "S6", "SUBMISSION")
    name = f"submission_{cfg.MAKE}.csv" if cfg.MAKE else sub_path.name
    stem = Path(name).stem
    files = [name] * bool(cfg.MAKE) + [stem + x for x in _WRITES[:4 if cfg.PLOTS else 2]]
    if (folder / f"{stem}_eval_config.json").is_file() and not record.owns(f"{stem}_eval_config.json"):
        record.adopt(files)
    files += ["report.html"] * bool(cfg.REPORT)  # S5's page, re-rendered
    if cfg.REPORT and (folder / "report" / "data.json").is_file() and not (folder / "report").is_symlink():
        record.adopt(["report.html"])  # S5's (or the report API's) page: its data beside it says so
    inputs = [constants.resolve(p) for p in (cfg.SUBMISSION, cfg.TRUTH, cfg.BASELINE) if p]
    record.claim(files, inputs=inputs)
    record.begin(files)


def _evaluate(cfg, sub_path: Path) -> dict:
    """Score the submission (or the reference made by MAKE), write the scores and plots beside it."""
    try:
        truth = metric.read_truth(constants.resolve(cfg.TRUTH))
        if cfg.MAKE:
            sub_path = make_reference(truth, cfg.MAKE, sub_path.parent / f"submission_{cfg.MAKE}.csv")
            print(f"wrote {sub_path}")
        sub = encoding.read_submission(sub_path)
        matched = metric.match_submission(sub, truth)  # once for both modes
        strict = metric.score_submission(sub, truth, "strict", cfg.IOU, matched=matched)
        lenient = metric.score_submission(sub, truth, "lenient", cfg.IOU, matched=matched)
        base = None
        if cfg.BASELINE:
            base_path = constants.resolve(cfg.BASELINE)
            base = metric.match_submission(encoding.read_submission(base_path), truth)
    except (OSError, ValueError) as e:
        raise SystemExit(f"S6: {e}") from None

    stem = sub_path.parent / sub_path.stem
    io.remove_stale_temps(sub_path.parent)  # temporaries of a killed run of this step
    table = score_table(strict, lenient)
    atomic_to_csv(table, f"{stem}_scores.csv")
    config.save(cfg, f"{stem}_eval_config.json")
    if cfg.PLOTS:
        from common import plots

        plots.plot_class_ap({"strict": strict["per_class"], "lenient": lenient["per_class"]},
                            f"{stem}_ap.png", title=f"per-class AP: {sub_path.name}")
        plots.plot_pr_curves(lenient["pr"], f"{stem}_pr.png",
                             title=f"precision-recall (lenient): {sub_path.name}")
    if cfg.REPORT:
        maps = {"strict": strict["mAP"], "lenient": lenient["mAP"]}
        try:
            page = report_truth.add_truth(sub_path.parent, table, maps, truth, cfg.IOU, cfg.REPORT_MISTAKES)
        except (OSError, ValueError) as e:
            raise SystemExit(f"S6 --REPORT: {e}") from None
        print(f"wrote {page} (with the truth)")
    if matched["ignored"]:
        print(f"note: {len(matched['ignored'])} submission row(s) have no truth and were ignored: "
              f"{_first(matched['ignored'])}")
    if matched["missing"]:
        print(f"note: {len(matched['missing'])} truth image(s) have no submission row and count as "
              f"predicting nothing (all their cells missed): {_first(matched['missing'])}")
    print(f"scored {sub_path} against {constants.resolve(cfg.TRUTH)} ({len(sub)} rows, IoU >= {cfg.IOU})")
    print(format_table(table))
    print(f"mAP_strict={strict['mAP']:.4f}")
    print(f"mAP_lenient={lenient['mAP']:.4f}")
    out = {"strict": strict, "lenient": lenient, "submission": sub_path}
    if base is not None:
        for mode in metric.MODES:
            d = metric.bootstrap_difference(matched, base, mode, cfg.N_BOOT, iou_threshold=cfg.IOU,
                                            level=cfg.LEVEL)
            out[f"delta_{mode}"] = d
            print(f"delta_{mode}={d['delta']:+.4f} ({cfg.LEVEL:.0%} interval "
                  f"{d['low']:+.4f}..{d['high']:+.4f}; higher in {d['p_better']:.0%} of {d['n_boot']} "
                  f"resamples of {d['n_images']} images) vs {base_path.name}")
    return out


if __name__ == "__main__":
    main()
