"""The competition metric: cell-level mAP (strict and lenient) and image-level mAP.

Cell-level mAP (``score_submission``, ``score_cells``)
    For every class c with at least one ground-truth (GT) cell, the detections of class c are
    pooled over images and sorted by descending confidence. Ties are broken by submission order
    (row order, then triplet order inside the PredictionString) because the sort is stable
    (mergesort), so results are deterministic. Walking that order, a detection is matched to
    the GT cell of class c *in its image* with the highest mask IoU (the lowest GT index wins an
    exact IoU tie); it is a true positive if that IoU >= ``iou_threshold`` (0.6) and that GT cell
    was not matched before, else a false positive (a duplicate of an already-found cell is a
    false positive). AP is the area under the precision envelope (Open Images / VOC style:
    precision made monotonically non-increasing from the right, summed over the recall steps);
    a class with GT but no detections scores 0. mAP is the mean over classes with GT; classes
    with no GT anywhere are skipped.

    mode="lenient" is the organisers' evaluator: a detection of class c in an image that has no
    GT cell of class c is ignored. mode="strict" counts it as a false positive.
    Submission rows whose ID is not in the truth are ignored (counted in ``n_images_ignored``);
    truth images without a submission row simply have all their cells missed.

Truth format (written by the demo data generator, read by ``read_truth``)
    A CSV / DataFrame with columns ``ID,ImageWidth,ImageHeight,cell_id,Label,EncodedMask``, one
    row per (cell, label): a cell with two labels has two rows with the same ``cell_id`` and the
    same ``EncodedMask`` (the competition mask string at the original resolution). ``Label`` is an
    int 0..18 ("8|5" strings are also accepted and expanded).

IoUs come from ``pycocotools.mask.iou`` on the compressed RLEs (``encoding.decode_to_rle``);
full masks are never decoded.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pycocotools import mask as mask_util
from sklearn.metrics import average_precision_score

from common import io
from common.competition import encoding
from common.constants import NUM_CLASSES, PROB_DECIMALS, parse_labels

TRUTH_COLUMNS = ("ID", "ImageWidth", "ImageHeight", "cell_id", "Label", "EncodedMask")
MODES = ("strict", "lenient")


# ----------------------------------------------------------------------------- AP core
def average_precision(tp: np.ndarray, n_gt: int) -> tuple[float, np.ndarray, np.ndarray]:
    """AP of detections already sorted by descending confidence (``tp``: 1 = true positive).

    Returns ``(ap, precision, recall)`` (the raw curves, one point per detection). The AP is the
    area under the precision envelope (precision made non-increasing, summed over recall steps),
    as in the Open Images / VOC evaluators. ``n_gt`` must be > 0.
    """
    tp = np.asarray(tp, dtype=np.float64)
    if n_gt <= 0:
        raise ValueError("average_precision needs at least one ground-truth instance")
    tp_cum = np.cumsum(tp)
    fp_cum = np.cumsum(1.0 - tp)
    recall = tp_cum / n_gt
    precision = tp_cum / np.maximum(tp_cum + fp_cum, 1e-300)
    r = np.concatenate(([0.0], recall, [1.0]))
    p = np.concatenate(([0.0], precision, [0.0]))
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.flatnonzero(r[1:] != r[:-1]) + 1
    ap = float(np.sum((r[steps] - r[steps - 1]) * p[steps]))
    return ap, precision, recall


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _evaluate(cls, conf, gt, iou, has_gt, n_gt, mode: str, iou_threshold: float) -> dict:
    """Score pooled detections.

    Per detection: class ``cls``, confidence ``conf``, the global index ``gt`` of its best GT cell
    of that class in its image (-1: none), that ``iou``, and ``has_gt`` (its image has a GT cell of
    its class). Arrays are in submission order; ``n_gt`` is the (19,) count of GT cells per class.
    """
    _check_mode(mode)
    cls = np.asarray(cls, np.int64)
    conf = np.asarray(conf, np.float64)
    order = np.argsort(-conf, kind="stable")
    order = order[np.argsort(cls[order], kind="stable")]  # by class, then confidence, then submission
    cls, gt = cls[order], np.asarray(gt, np.int64)[order]
    iou, has_gt = np.asarray(iou, np.float64)[order], np.asarray(has_gt, bool)[order]
    hit = (gt >= 0) & (iou >= iou_threshold)
    tp = np.zeros(len(cls), bool)
    idx = np.flatnonzero(hit)
    if len(idx):  # first (highest-confidence) hit of each (GT cell, class) is the true positive
        _, first = np.unique(gt[idx] * NUM_CLASSES + cls[idx], return_index=True)
        tp[idx[first]] = True
    keep = has_gt if mode == "lenient" else np.ones(len(cls), bool)
    bounds = np.searchsorted(cls, np.arange(NUM_CLASSES + 1))
    per_class, pr = {}, {}
    for c in range(NUM_CLASSES):
        if n_gt[c] == 0:
            continue
        sl = slice(bounds[c], bounds[c + 1])
        ap, p, r = average_precision(tp[sl][keep[sl]], int(n_gt[c]))
        per_class[c], pr[c] = ap, (p, r)
    m = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    return {"mAP": m, "per_class": per_class, "n_gt": {c: int(n_gt[c]) for c in range(NUM_CLASSES)},
            "pr": pr}


# ----------------------------------------------------------------------------- truth
def read_truth(path: str | Path) -> pd.DataFrame:
    """Read a truth CSV (see the module docstring); a missing file or column is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: truth file is missing")
    df = io.read_id_table(path, TRUTH_COLUMNS, ("ImageWidth", "ImageHeight", "cell_id"), unique=False,
                          str_columns=("Label", "EncodedMask"))
    return _check_truth(df, str(path))


def _check_truth(truth: pd.DataFrame, name: str = "truth") -> pd.DataFrame:
    missing = [c for c in TRUTH_COLUMNS if c not in truth.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {missing}; expected {list(TRUTH_COLUMNS)}")
    t = truth[list(TRUTH_COLUMNS)].copy()
    t["ID"] = t["ID"].astype(str)
    if not pd.api.types.is_integer_dtype(t["Label"]):
        try:
            t["Label"] = t["Label"].astype(str).map(parse_labels)
        except ValueError as e:
            raise ValueError(f"{name}: bad Label ({e})") from None
        t = t.explode("Label").dropna(subset=["Label"])
    t["Label"] = t["Label"].astype(np.int64)
    if len(t) and ((t["Label"] < 0) | (t["Label"] >= NUM_CLASSES)).any():
        raise ValueError(f"{name}: Label outside 0..{NUM_CLASSES - 1}")
    if t.groupby(["ID", "cell_id"], sort=False)["EncodedMask"].nunique().gt(1).any():
        raise ValueError(f"{name}: one (ID, cell_id) has rows with different EncodedMask")
    return t.reset_index(drop=True)


def truth_cells(truth: pd.DataFrame):
    """Unique GT cells (first-appearance order), their (n_cells, 19) label matrix, per-image index."""
    key = truth.groupby(["ID", "cell_id"], sort=False).ngroup().to_numpy()
    first = np.unique(key, return_index=True)[1]
    cells = truth.iloc[first].reset_index(drop=True)
    labels = np.zeros((len(cells), NUM_CLASSES), bool)
    labels[key, truth["Label"].to_numpy()] = True
    images = {i: np.asarray(v) for i, v in cells.groupby("ID", sort=False).indices.items()}
    return cells, labels, images


# ----------------------------------------------------------------------------- scoring
def match_submission(sub: pd.DataFrame, truth: pd.DataFrame | str | Path) -> dict:
    """Match a submission's detections to the true cells, image by image (the metric's first half).

    Returns ``{"images": {ID: (cls, conf, gt, iou, has_gt)}`` (per-detection arrays, see
    :func:`_evaluate`; ``gt`` indexes ``labels``), ``"labels"``: the (n_cells, 19) truth matrix,
    ``"cells_of"``: ``{ID: indices of its true cells}``, ``"n_images_ignored"``, ``"ignored"``: the
    submission's IDs without truth (ignored), ``"missing"``: the truth's IDs without a submission row
    (all their cells missed: as if nothing was predicted)}, both in file order. Each detection
    keeps its best-IoU true cell of its class whatever the IoU; the threshold applies later.
    """
    truth = read_truth(truth) if isinstance(truth, (str, Path)) else _check_truth(truth)
    missing = [c for c in encoding.SUBMISSION_COLUMNS if c not in sub.columns]
    if missing:
        raise ValueError(f"submission lacks column(s) {missing}")
    cells, labels, images = truth_cells(truth)
    matched, ignored = {}, []
    for row in sub.itertuples(index=False):
        img = str(row.ID)
        if img not in images:
            ignored.append(img)
            continue
        g = images[img]
        w, h = int(cells.at[g[0], "ImageWidth"]), int(cells.at[g[0], "ImageHeight"])
        if (int(row.ImageWidth), int(row.ImageHeight)) != (w, h):
            raise ValueError(f"submission row {img}: size {row.ImageWidth}x{row.ImageHeight} differs "
                             f"from the truth's {w}x{h}")
        cls, conf, masks = encoding.parse_prediction_arrays(row.PredictionString, w, h, row=img)
        if not len(cls):
            continue
        codes, uniq = pd.factorize(pd.Series(masks, dtype=object))
        dt = [encoding.decode_to_rle(m, h, w) for m in uniq]
        gt_rles = []
        for j in g:
            s = cells.at[j, "EncodedMask"]
            try:
                encoding.check_mask_string(s, h, w)
            except ValueError as e:
                raise ValueError(f"truth {img} cell {cells.at[j, 'cell_id']}: invalid mask: {e}") from None
            gt_rles.append(encoding.decode_to_rle(s, h, w))
        ious = np.asarray(mask_util.iou(dt, gt_rles, [0] * len(gt_rles)), np.float64).reshape(len(dt), len(g))
        lab = labels[g]                                       # (n_gt_img, 19)
        cand = np.where(lab.T[cls], ious[codes], -1.0)        # IoU with GT cells of the det's class
        best = cand.argmax(1)
        best_iou = cand[np.arange(len(cls)), best]
        gt = np.where(best_iou >= 0, g[best], -1)
        part = (np.asarray(cls, np.int64), np.asarray(conf, np.float64), gt, best_iou, lab.any(0)[cls])
        if img in matched:  # the same ID twice: its detections pool, as in the metric
            part = tuple(np.concatenate(x) for x in zip(matched[img], part))
        matched[img] = part
    submitted = set(map(str, sub["ID"]))
    return {"images": matched, "labels": labels, "cells_of": images, "n_images_ignored": len(ignored),
            "ignored": ignored, "missing": [i for i in images if i not in submitted]}


def _pool(matched: dict, images: list, mode: str, iou_threshold: float) -> dict:
    """_evaluate the detections of ``images`` (IDs; repeats are distinct copies, as in a bootstrap)."""
    labels, cells_of = matched["labels"], matched["cells_of"]
    n_cells = len(labels)
    parts, n_gt = [], np.zeros(NUM_CLASSES, np.int64)
    for k, img in enumerate(images):
        n_gt += labels[cells_of[img]].sum(0)
        if img in matched["images"]:
            cls, conf, gt, iou, has_gt = matched["images"][img]
            parts.append((cls, conf, np.where(gt >= 0, gt + k * n_cells, -1), iou, has_gt))
    if parts:
        cls, conf, gt, iou, has_gt = (np.concatenate(x) for x in zip(*parts))
    else:
        cls = conf = gt = iou = has_gt = np.zeros(0)
    return _evaluate(cls, conf, gt, iou, has_gt, n_gt, mode, iou_threshold)


def score_submission(sub: pd.DataFrame, truth: pd.DataFrame | str | Path, mode: str = "strict",
                     iou_threshold: float = 0.6, matched: dict | None = None) -> dict:
    """Cell-level mAP of a submission DataFrame against the truth (see the module docstring).

    Returns ``{"mAP", "per_class": {c: AP}, "n_gt": {c: n}, "pr": {c: (precision, recall)},
    "n_images_ignored"}``; ``per_class``/``pr`` hold only classes with GT. ``matched``: the
    :func:`match_submission` of this submission, when already computed (scoring both modes).
    """
    _check_mode(mode)
    matched = match_submission(sub, truth) if matched is None else matched
    out = _pool(matched, list(matched["cells_of"]), mode, iou_threshold)
    out["n_images_ignored"] = matched["n_images_ignored"]
    return out


def bootstrap_difference(matched_a: dict, matched_b: dict, mode: str = "strict", n_boot: int = 1000,
                         seed: int = 0, iou_threshold: float = 0.6, level: float = 0.95) -> dict:
    """Paired bootstrap over test images of ``mAP(a) - mAP(b)`` (both from :func:`match_submission`
    against the same truth).

    Each resample draws the truth's images with replacement (a repeated image counts as a new
    one) and scores both submissions on it. Returns ``{"delta": mAP(a) - mAP(b) on all images,
    "low", "high": the percentile interval at ``level``, "p_better": the fraction of resamples
    where a scores higher, "n_boot", "n_images"}``.
    """
    _check_mode(mode)
    if list(matched_a["cells_of"]) != list(matched_b["cells_of"]):
        raise ValueError("bootstrap_difference: the two submissions were matched against different truths")
    ids = list(matched_a["cells_of"])
    delta = (_pool(matched_a, ids, mode, iou_threshold)["mAP"]
             - _pool(matched_b, ids, mode, iou_threshold)["mAP"])
    rng = np.random.default_rng(seed)
    diffs = np.empty(int(n_boot))
    for i in range(int(n_boot)):
        pick = [ids[j] for j in rng.integers(0, len(ids), len(ids))]
        diffs[i] = (_pool(matched_a, pick, mode, iou_threshold)["mAP"]
                    - _pool(matched_b, pick, mode, iou_threshold)["mAP"])
    alpha = (1.0 - level) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return {"delta": float(delta), "low": float(low), "high": float(high),
            "p_better": float(np.mean(diffs > 0)), "n_boot": int(n_boot), "n_images": len(ids)}


def score_cells(image_ids, cell_ids, probs: np.ndarray, truth: dict, mode: str = "strict") -> dict:
    """Cell-level mAP when the predicted cells ARE the true cells (no masks needed).

    ``image_ids[i], cell_ids[i]`` name predicted cell i, ``probs`` is ``(n, 19)``, ``truth`` maps
    ``(ID, cell_id) -> [labels]``. A predicted cell has IoU 1 with its own true cell and 0 with any
    other; every (cell, class) pair is a detection, in row-then-class order. Gives the same result
    as :func:`score_submission` on the equivalent submission. Same return value.
    """
    probs = np.asarray(probs, np.float64)
    image_ids, cell_ids = list(image_ids), list(cell_ids)
    n = len(image_ids)
    if probs.shape != (n, NUM_CLASSES) or len(cell_ids) != n:
        raise ValueError(f"need {n} cell ids and probs of shape ({n}, {NUM_CLASSES}), "
                         f"got {len(cell_ids)} and {probs.shape}")
    keys = list(truth)
    index = {k: i for i, k in enumerate(keys)}
    labels = np.zeros((len(keys), NUM_CLASSES), bool)
    img_labels: dict = {}
    for i, k in enumerate(keys):
        lab = list(truth[k])
        labels[i, lab] = True
        img_labels.setdefault(k[0], np.zeros(NUM_CLASSES, bool))[lab] = True
    rows = np.array([image_ids[i] in img_labels for i in range(n)], bool)
    cell = np.array([index.get((image_ids[i], cell_ids[i]), -1) for i in range(n)], np.int64)[rows]
    img_has = np.array([img_labels[image_ids[i]] for i in np.flatnonzero(rows)],
                       bool).reshape(-1, NUM_CLASSES)
    m = len(cell)
    cls = np.tile(np.arange(NUM_CLASSES), m)
    cell_rep = np.repeat(cell, NUM_CLASSES)
    is_gt = (cell_rep >= 0) & labels[np.maximum(cell_rep, 0), cls]
    gt = np.where(is_gt, cell_rep, -1)
    return _evaluate(cls, probs[rows].ravel(), gt, is_gt.astype(np.float64), img_has.ravel(),
                     labels.sum(0), mode, 0.6)


def image_level_map(y_true: np.ndarray, y_score: np.ndarray) -> tuple[float, dict[int, float]]:
    """Macro average precision (sklearn) over the classes that have at least one positive."""
    y_true, y_score = np.asarray(y_true), np.asarray(y_score, np.float64)
    if y_true.shape != y_score.shape or y_true.ndim != 2:
        raise ValueError(f"y_true {y_true.shape} and y_score {y_score.shape} must be the same (N, C)")
    per = {c: float(average_precision_score(y_true[:, c], y_score[:, c]))
           for c in range(y_true.shape[1]) if y_true[:, c].sum() > 0}
    return (float(np.mean(list(per.values()))) if per else float("nan")), per


# ----------------------------------------------------------------------------- out-of-fold tables
def write_oof(path: str | Path, columns: dict, probs: np.ndarray, truth: np.ndarray | None = None) -> None:
    """An out-of-fold table (read by ``tools/compare_oof.py``): ``columns`` (``ID`` first), the true
    labels ``y0..y18`` when ``truth`` (multi-hot, one row per row) is given, the probabilities
    ``p0..p18``; values rounded to ``PROB_DECIMALS`` decimals, written atomically. train's ``oof.csv``
    (ID, y, p) and the cell-level validation's ``oof_cells.csv`` (ID, cell_id, Label, p)."""
    df = pd.DataFrame(columns)
    arrays = ([("y", truth)] if truth is not None else []) + [("p", probs)]
    for name, arr in arrays:
        cols = [f"{name}{c}" for c in range(arr.shape[1])]
        df = df.join(pd.DataFrame(np.round(arr, PROB_DECIMALS), columns=cols))
    io.atomic_to_csv(df, Path(path))
