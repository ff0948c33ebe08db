"""report.html's truth section (S6 --REPORT): per-class AP and the most confident mistakes.

``add_truth`` reloads what S5's ``report.write_report`` saved (``report/data.json``), matches each
reported cell to a true cell through S5's original-size label maps (``labels/{stem}.png``, ids as in
cells.csv) at mask IoU >= ``iou``, and re-renders ``report.html`` with the truth: the AP table, a
gallery per class X of the cells with the highest probability for X whose true cell lacks X (or
that match no true cell), and each cell's true labels in its info box.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from common import images
from common.competition import encoding, metric
from common.constants import NUM_CLASSES, label_file
from common.report import report


def add_truth(out_dir: str | Path, table: pd.DataFrame, maps: dict, truth: pd.DataFrame, iou: float,
              per_class: int) -> Path:
    """Re-render ``out_dir/report.html`` with the truth section; return its path.

    ``table``: S6's per-class scores (class, name, n_gt, ap_strict, ap_lenient); ``maps``:
    ``{"strict": mAP, "lenient": mAP}``; ``truth``: the per-(cell, label) truth table;
    ``per_class``: cells shown per class in the gallery.
    """
    out_dir = Path(out_dir)
    model = report.read_model(out_dir)
    labels = cell_truth(out_dir / "labels", model, truth, iou)
    rows = [[int(r[0]), str(r[1]), int(r[2]), _num(r[3]), _num(r[4])]
            for r in table[["class", "name", "n_gt", "ap_strict", "ap_lenient"]].itertuples(index=False)]
    model["truth"] = {"iou": float(iou), "table": rows, "cells": labels,
                      "mAP": {k: _num(v) for k, v in maps.items()},
                      "gallery": mistakes(model["cells"]["p"], labels, per_class)}
    return report.render(out_dir, model)


def _num(x) -> float | None:
    return None if x is None or pd.isna(x) else float(x)


def cell_truth(labels_dir: Path, model: dict, truth: pd.DataFrame, iou: float) -> list:
    """Per reported cell: its true cell's labels (class ids), ``[]`` when no true cell overlaps it at
    IoU >= ``iou``, ``None`` when unknown (its image has no truth or no label map)."""
    cells, labs, rows = metric.truth_cells(truth)  # rows: {image ID: its rows of cells}
    out: list = [None] * len(model["cells"]["id"])
    rows_of: dict[int, list[int]] = {}
    for k, f in enumerate(model["cells"]["field"]):
        rows_of.setdefault(f, []).append(k)
    for f, ks in rows_of.items():
        image_id = model["fields"][f]["id"]
        path = labels_dir / label_file(image_id)
        if image_id not in rows or not path.is_file():
            continue
        best = _best_truth(images.read_label_png(path), cells.iloc[rows[image_id]], iou)
        for k in ks:
            j = best.get(model["cells"]["id"][k], -1)
            out[k] = np.flatnonzero(labs[rows[image_id][j]]).tolist() if j >= 0 else []
    return out


def _best_truth(label_map: np.ndarray, true_cells: pd.DataFrame, iou: float) -> dict[int, int]:
    """{predicted cell id: position in ``true_cells`` of its best true cell at IoU >= ``iou``}."""
    h, w = label_map.shape
    area = np.bincount(label_map.ravel().astype(np.int64))
    best_iou = np.zeros(len(area))
    best = np.full(len(area), -1, np.int64)
    for j, s in enumerate(true_cells["EncodedMask"].tolist()):
        mask = encoding.decode_binary_mask(s, h, w)
        overlap = np.bincount(label_map[mask].astype(np.int64), minlength=len(area))
        with np.errstate(invalid="ignore", divide="ignore"):
            v = overlap / (area + mask.sum() - overlap)
        v[0] = 0.0
        better = (v >= iou) & (v > best_iou)
        best_iou[better], best[better] = v[better], j
    return {int(c): int(best[c]) for c in np.flatnonzero(best >= 0)}


def mistakes(p: list, labels: list, per_class: int) -> list[list]:
    """[[class, [cell rows]], ...]: per class X, up to ``per_class`` cells with known truth lacking X,
    highest probability for X first (classes without such a cell are left out)."""
    probs = np.asarray(p, np.float64).reshape(-1, NUM_CLASSES)
    known = np.array([t is not None for t in labels], bool)
    out = []
    for c in range(NUM_CLASSES):
        wrong = known & np.array([t is not None and c not in t for t in labels], bool)
        rows = np.flatnonzero(wrong)
        if not len(rows):
            continue
        order = rows[np.argsort(-probs[rows, c], kind="stable")][:per_class]
        out.append([c, order.tolist()])
    return out
