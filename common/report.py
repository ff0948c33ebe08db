"""report.html: one self-contained offline page of per-cell results (thumbnails, outlines, filters).

Contract (S5 calls it; S6 --REPORT adds the truth section, ``common.report_truth``):

    fields = [report.ReportField(image_id, thumb, thumb_labels, (height, width)), ...]
    report.write_report(out_dir, fields, cells, failures, threshold=0.5, title="...")

* ``thumb``: the field in HPA false colour (``plots.false_colour``), longest side <= 512 px, the
  original's aspect ratio: an ``h x w x 3`` uint8 RGB array, or that picture already encoded as JPEG
  or PNG bytes (written as they are); ``thumb_labels``: ``h x w`` integer, the cell label map at the
  thumbnail's size, ids as in ``cells`` (``cell_id``).
* ``cells``: the rows of ``cells.csv`` (image, cell_id, x, y, area, touches_border, top_class,
  top_prob, then one column per class named by class).
* ``failures``: rows (ID, reason) of the fields that could not be read or segmented (pairs, or a
  DataFrame whose first two columns are those).

Writes ``out_dir/report/{ID}.jpg|png`` (the thumbnails), ``out_dir/report/data.json`` (everything
the page shows: S6 re-renders the page from it) and ``out_dir/report.html`` (the page, from
``common.report_page``); returns the HTML path. Outlines are SVG paths in thumbnail pixels, one per
cell; a cell that vanished from the thumbnail's label map is drawn as a small circle at its centroid.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage

from common import io, report_page
from common.constants import CLASS_NAMES, NUM_CLASSES

REPORT_DIR = "report"          # the page's pictures and data, beside report.html
DATA_FILE = "data.json"        # what the page shows (S6 re-renders from it)
JPEG_QUALITY = 90              # thumbnails (encoded here, or by S5 while it holds them)
OUTLINE_EPS = 1.0              # approxPolyDP tolerance of the outlines (thumbnail pixels)
DIGITS = 4                     # decimals of the probabilities kept for the page (cells.csv's "%.4f")
_PNG, _JPEG = b"\x89PNG\r\n\x1a\n", b"\xff\xd8"


@dataclass
class ReportField:
    """One field of view as the report shows it."""

    image_id: str
    thumb: np.ndarray | bytes      # h x w x 3 uint8 RGB (false colour) or its JPEG/PNG bytes
    labels: np.ndarray             # h x w cell label map at the thumbnail's size
    size: tuple[int, int]          # (height, width) of the original


def write_report(out_dir: str | Path, fields: list[ReportField], cells: pd.DataFrame, failures,
                 threshold: float = 0.5, title: str = "") -> Path:
    """Write ``out_dir/report.html``, its thumbnails and ``report/data.json``; return the HTML path."""
    out_dir = Path(out_dir)
    (out_dir / REPORT_DIR).mkdir(parents=True, exist_ok=True)
    cells = cells.reset_index(drop=True)
    index = {str(f.image_id): i for i, f in enumerate(fields)}
    image = cells["image"].astype(str).to_numpy()
    unknown = sorted(set(image) - set(index))
    if unknown:
        raise ValueError(f"report: cells of {len(unknown)} image(s) without a field: {unknown[:5]}")
    field_of = np.array([index[i] for i in image], np.int64)
    shapes, boxes = [""] * len(cells), [[0, 0, 0, 0]] * len(cells)
    model_fields = []
    for i, f in enumerate(fields):
        rows = np.flatnonzero(field_of == i)
        model_fields.append(_write_field(out_dir, f, cells.iloc[rows], rows, shapes, boxes))
    model = {"title": title, "threshold": float(threshold), "fields": model_fields,
             "cells": _cell_table(cells, field_of, shapes, boxes), "failures": _failure_rows(failures)}
    io.atomic_write_text(out_dir / REPORT_DIR / DATA_FILE, json.dumps(model, separators=(",", ":")))
    return render(out_dir, model)


def render(out_dir: str | Path, model: dict) -> Path:
    """(Re)write ``out_dir/report.html`` from the report's data (``data.json``, maybe + truth)."""
    return io.atomic_write_text(Path(out_dir) / "report.html", report_page.page(model, REPORT_DIR))


def read_model(out_dir: str | Path) -> dict:
    """The data ``write_report`` saved in ``out_dir/report/data.json``."""
    path = Path(out_dir) / REPORT_DIR / DATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no report data (S5 writes it with report.html)")
    return json.loads(path.read_text())


def _write_field(out_dir: Path, f: ReportField, rows: pd.DataFrame, index: np.ndarray,
                 shapes: list, boxes: list) -> dict:
    """Write one thumbnail; fill the outlines and boxes of its cells; return its entry."""
    labels = np.asarray(f.labels)
    th, tw = labels.shape[:2]
    data, ext = _encoded(f.thumb, labels.shape[:2], f.image_id)
    name = f"{f.image_id}{ext}"
    io.atomic_write_bytes(out_dir / REPORT_DIR / name, data)
    h, w = int(f.size[0]), int(f.size[1])
    objects = ndimage.find_objects(labels.astype(np.int64)) if labels.size and labels.max() > 0 else []
    for k, cid, x, y in zip(index, rows["cell_id"].to_numpy(), rows["x"].to_numpy(), rows["y"].to_numpy()):
        sl = objects[cid - 1] if 0 < cid <= len(objects) else None
        if sl is None:
            cx, cy = float(x) * tw / w, float(y) * th / h
            shapes[k] = f"M{cx - 2:.1f},{cy:.1f}a2,2 0 1,0 4,0a2,2 0 1,0 -4,0Z"
            boxes[k] = [int(cx) - 2, int(cy) - 2, int(cx) + 3, int(cy) + 3]
            continue
        shapes[k] = _outline(labels[sl] == cid, sl[1].start, sl[0].start)
        boxes[k] = [sl[1].start, sl[0].start, sl[1].stop, sl[0].stop]
    return {"id": str(f.image_id), "h": h, "w": w, "th": int(th), "tw": int(tw), "src": name,
            "n": len(index)}


def _encoded(thumb, shape: tuple, image_id: str) -> tuple[bytes, str]:
    """The thumbnail's bytes and extension: given bytes as they are, an array as JPEG."""
    if isinstance(thumb, (bytes, bytearray, memoryview)):
        data = bytes(thumb)
        if data.startswith(_PNG):
            return data, ".png"
        if data.startswith(_JPEG):
            return data, ".jpg"
        raise ValueError(f"report: thumbnail of {image_id} is neither PNG nor JPEG bytes")
    thumb = np.asarray(thumb)
    if thumb.shape != (*shape, 3) or thumb.dtype != np.uint8:
        raise ValueError(f"report: thumbnail of {image_id} is {thumb.shape} {thumb.dtype}; "
                         f"expected {(*shape, 3)} uint8 (the label map's size)")
    return io.encode_jpeg(thumb[..., ::-1], JPEG_QUALITY), ".jpg"


def _outline(mask: np.ndarray, x0: int, y0: int) -> str:
    """SVG path data of a cell's outer contours (thumbnail pixels, pixel centres at +0.5)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE,
                                   offset=(int(x0), int(y0)))
    parts = []
    for c in contours:
        pts = cv2.approxPolyDP(c, OUTLINE_EPS, True).reshape(-1, 2)
        parts.append("M" + " ".join(f"{x},{y}" for x, y in pts.tolist()) + "Z")
    return "".join(parts)


def _cell_table(cells: pd.DataFrame, field_of: np.ndarray, shapes: list, boxes: list) -> dict:
    """The cells as columns (compact JSON): field index, id, centroid, area, border, top class,
    probabilities (row-major, ``DIGITS`` decimals), outline, box."""
    missing = [c for c in CLASS_NAMES if c not in cells.columns]
    if missing:
        raise ValueError(f"report: cells lack the class column(s) {missing}")
    top = cells["top_class"].map({n: i for i, n in enumerate(CLASS_NAMES)})
    if top.isna().any():
        raise ValueError(f"report: unknown top_class {cells['top_class'][top.isna()].iloc[0]!r}")
    probs = np.round(cells[list(CLASS_NAMES)].to_numpy(np.float64), DIGITS)
    return {"field": field_of.tolist(), "id": cells["cell_id"].astype(int).tolist(),
            "x": np.round(cells["x"].to_numpy(np.float64), 1).tolist(),
            "y": np.round(cells["y"].to_numpy(np.float64), 1).tolist(),
            "area": cells["area"].astype(int).tolist(),
            "border": cells["touches_border"].astype(bool).astype(int).tolist(),
            "top": top.astype(int).tolist(), "p": probs.ravel().tolist(), "k": NUM_CLASSES,
            "shape": shapes, "box": boxes}


def _failure_rows(failures) -> list[list[str]]:
    """[[ID, reason], ...] from pairs or a DataFrame (first two columns)."""
    if failures is None:
        return []
    if isinstance(failures, pd.DataFrame):
        failures = failures.iloc[:, :2].itertuples(index=False)
    return [[str(a), str(b)] for a, b in failures]
