"""report.html: one self-contained offline page of per-cell results (fields, outlines, filters).

Contract (S5 calls it; S6 --REPORT adds the truth section, ``common.report.report_truth``):

    fields = [report.ReportField(image_id, thumb, thumb_labels, (height, width)), ...]
    report.write_report(out_dir, fields, cells, failures, threshold=0.5, title="...", pixel_size=0)

* ``thumb``: the field's four channels (RGBY, ``constants.CHANNELS``) at the thumbnail's size (longest
  side <= 512 px, the original's aspect ratio): an ``h x w x 4`` uint8 array, or those channels
  already encoded by :func:`encode_channels` (JPEG or PNG bytes, written as they are);
  ``thumb_labels``: ``h x w`` integer, the cell label map at the thumbnail's size, ids as in ``cells``
  (or its PNG bytes, decoded when the field is written).
* ``cells``: the rows of ``cells.csv`` (:data:`CELL_COLUMNS`); the page holds their values as given,
  so its "Download these cells" rows are cells.csv's.
* ``failures``: the fields that could not be read or segmented: dicts ``{"ID", "reason"}`` (as S5
  lists them), (ID, reason) pairs, or a DataFrame whose first two columns are those.
* ``pixel_size``: micrometres per pixel of the originals (0: unknown, no scale bar).

Each field's picture is one grey JPEG holding its channels as tiles (:func:`channel_tiles`): the
protein (green) at the thumbnail's size, the three reference stains at 1/``REFERENCE_SHRINK`` of it;
the page composes the false colour (``constants.FALSE_COLOUR``) on a canvas, so each stain can be
shown or hidden. Writes ``out_dir/report/{stem}.jpg|png`` (:func:`thumb_name`: the ID's file stem),
``out_dir/report/data.json`` (everything the page shows: S6 re-renders the page from it) and
``out_dir/report.html`` (``common.report.report_page``); returns the HTML path. Outlines are SVG paths in
thumbnail pixels, one per cell; a cell that vanished from the thumbnail's label map is drawn as a
small circle at its centroid.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage

from common import constants, images, io
from common.constants import CLASS_NAMES, GREEN, NUM_CLASSES
from common.report import report_page
from common.resize import resize_image

CELL_COLUMNS = ("image", "cell_id", "x", "y", "area", "touches_border", "top_class", "top_prob",
                *CLASS_NAMES)  # cells.csv: the report's input and its download
REPORT_DIR = "report"          # the page's pictures and data, beside report.html
DATA_FILE = "data.json"        # what the page shows (S6 re-renders from it)
JPEG_QUALITY = 85              # the channel pictures (encoded here, or by S5 while it holds them)
REFERENCE_SHRINK = 2           # microtubules, nucleus, ER kept at 1/2 the thumbnail's side (protein: 1)
TILE_ALIGN = 8                 # tiles (with their border) start on JPEG's 8-pixel blocks
TILE_PAD = 2                   # each tile's border: its edge pixels repeated
OUTLINE_EPS = 1.0              # approxPolyDP tolerance of the outlines (thumbnail pixels)
_PNG, _JPEG = b"\x89PNG\r\n\x1a\n", b"\xff\xd8"


@dataclass
class ReportField:
    """One field of view as the report shows it."""

    image_id: str
    thumb: np.ndarray | bytes      # h x w x 4 uint8 RGBY at the thumbnail's size, or encode_channels()
    labels: np.ndarray | bytes     # h x w cell label map at the thumbnail's size, or its PNG bytes
    size: tuple[int, int]          # (height, width) of the original


def thumb_name(image_id, ext: str = ".jpg") -> str:
    """The file name of a field's picture under ``report/``: its ID's file stem
    (``constants.file_stem``) + ``ext``. Raises ValueError (one line) for an ID that cannot name a file."""
    try:
        return constants.file_stem(image_id) + ext
    except ValueError as e:
        raise ValueError(f"report: {e}: it cannot name a picture file") from None


def channel_tiles(th: int, tw: int) -> list[list[int]]:
    """Where each channel (RGBY order) lies in a field's picture, ``[x, y, w, h]``: the protein at
    ``tw x th`` top left, below it the three reference stains side by side at 1/``REFERENCE_SHRINK``.
    Each tile has a border of ``TILE_PAD`` pixels (its edge repeated) and starts on an 8-pixel block."""
    rw, rh = -(-tw // REFERENCE_SHRINK), -(-th // REFERENCE_SHRINK)
    y, step = _align(th + 2 * TILE_PAD), _align(rw + 2 * TILE_PAD)
    refs = [c for c in range(len(constants.CHANNELS)) if c != GREEN]
    return [[TILE_PAD, TILE_PAD, tw, th] if c == GREEN else
            [refs.index(c) * step + TILE_PAD, y + TILE_PAD, rw, rh] for c in range(len(constants.CHANNELS))]


def _align(n: int) -> int:
    return -(-n // TILE_ALIGN) * TILE_ALIGN


def encode_channels(rgby: np.ndarray) -> bytes:
    """A field's ``h x w x 4`` uint8 channels as its picture: one grey JPEG of :func:`channel_tiles`."""
    rgby = np.asarray(rgby)
    if rgby.ndim != 3 or rgby.shape[2] != 4 or rgby.dtype != np.uint8:
        raise ValueError(f"report: the channels are {rgby.shape} {rgby.dtype}; expected h x w x 4 uint8")
    th, tw = rgby.shape[:2]
    tiles, pad = channel_tiles(th, tw), TILE_PAD
    mosaic = np.zeros((max(y + h for _, y, _, h in tiles) + pad, max(x + w for x, _, w, _ in tiles) + pad),
                      np.uint8)
    for c, (x, y, w, h) in enumerate(tiles):  # the border repeats the edge: a smooth scale reads no neighbour
        plane = resize_image(np.ascontiguousarray(rgby[..., c]), (h, w))
        mosaic[y - pad:y + h + pad, x - pad:x + w + pad] = cv2.copyMakeBorder(plane, pad, pad, pad, pad,
                                                                              cv2.BORDER_REPLICATE)
    return images.encode_jpeg(mosaic, JPEG_QUALITY)


def write_report(out_dir: str | Path, fields: list[ReportField], cells: pd.DataFrame, failures,
                 threshold: float = 0.5, title: str = "", pixel_size: float = 0.0) -> Path:
    """Write ``out_dir/report.html``, its pictures and ``report/data.json``; return the HTML path.
    Raises ValueError (one line) before writing for an ID that cannot name a file, or two fields
    of one ID or file name."""
    out_dir = Path(out_dir)
    names, failures = _picture_names(fields), _failure_rows(failures)
    missing = [c for c in CELL_COLUMNS if c not in cells.columns]
    if missing:
        raise ValueError(f"report: cells lack the column(s) {missing}")
    cells = cells.reset_index(drop=True)
    index = {str(f.image_id): i for i, f in enumerate(fields)}
    image = cells["image"].astype(str).to_numpy()
    unknown = sorted(set(image) - set(index))
    if unknown:
        raise ValueError(f"report: cells of {len(unknown)} image(s) without a field: {unknown[:5]}")
    field_of = np.array([index[i] for i in image], np.int64)
    shapes, boxes = [""] * len(cells), [[0, 0, 0, 0]] * len(cells)
    (out_dir / REPORT_DIR).mkdir(parents=True, exist_ok=True)
    model_fields = []
    for i, (f, name) in enumerate(zip(fields, names)):
        rows = np.flatnonzero(field_of == i)
        model_fields.append(_write_field(out_dir, f, name, cells.iloc[rows], rows, shapes, boxes))
    model = {"title": title, "threshold": float(threshold), "pixel_size": float(pixel_size),
             "fields": model_fields, "cells": _cell_table(cells, field_of, shapes, boxes),
             "failures": failures}
    io.atomic_write_text(out_dir / REPORT_DIR / DATA_FILE, json.dumps(model, separators=(",", ":")))
    return render(out_dir, model)


def _picture_names(fields: list[ReportField]) -> list[str]:
    """Each field's picture file name, checked before anything is written: a name the ID cannot make,
    two fields of one ID or one file name, channels of another size than the label map (ValueError)."""
    names = [thumb_name(f.image_id, _extension(f.thumb, f.image_id)) for f in fields]
    ids, taken = Counter(str(f.image_id) for f in fields), Counter(names)
    twice = sorted({str(f.image_id) for f, n in zip(fields, names)
                    if ids[str(f.image_id)] > 1 or taken[n] > 1})
    if twice:
        raise ValueError(f"report: two fields share an ID or a picture file name: {twice[:5]}")
    for f in fields:
        if isinstance(f.thumb, (bytes, bytearray, memoryview)):
            continue
        shape = (*_labels(f).shape[:2], 4)
        if np.shape(f.thumb) != shape:
            raise ValueError(f"report: the channels of {f.image_id} are {np.shape(f.thumb)}; expected "
                             f"{shape} (the label map's size, RGBY)")
    return names


def render(out_dir: str | Path, model: dict) -> Path:
    """(Re)write ``out_dir/report.html`` from the report's data (``data.json``, maybe + truth)."""
    page = report_page.page(model, REPORT_DIR, CELL_COLUMNS)
    return io.atomic_write_text(Path(out_dir) / "report.html", page)


def read_model(out_dir: str | Path) -> dict:
    """The data ``write_report`` saved in ``out_dir/report/data.json``."""
    path = Path(out_dir) / REPORT_DIR / DATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no report data (S5 writes it with report.html)")
    model = json.loads(path.read_text())
    if "pixel_size" not in model or any("tiles" not in f for f in model["fields"]):
        raise FileNotFoundError(f"{path}: report data of an older S5 (no channel pictures): run S5 again")
    return model


def _write_field(out_dir: Path, f: ReportField, name: str, rows: pd.DataFrame, index: np.ndarray,
                 shapes: list, boxes: list) -> dict:
    """Write one field's picture; fill the outlines and boxes of its cells; return its entry."""
    labels = _labels(f)
    th, tw = labels.shape[:2]
    data = bytes(f.thumb) if isinstance(f.thumb, (bytes, bytearray, memoryview)) else encode_channels(f.thumb)
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
            "n": len(index), "tiles": channel_tiles(int(th), int(tw))}


def _labels(f: ReportField) -> np.ndarray:
    """A field's label map (decoded when given as PNG bytes)."""
    return images.decode_png(bytes(f.labels)) if isinstance(f.labels, (bytes, bytearray, memoryview)) else \
        np.asarray(f.labels)


def _extension(thumb, image_id) -> str:
    """The picture's extension: given bytes by their signature; channels are encoded as JPEG."""
    if not isinstance(thumb, (bytes, bytearray, memoryview)):
        return ".jpg"
    head = bytes(thumb[:8])
    if head.startswith(_PNG):
        return ".png"
    if head.startswith(_JPEG):
        return ".jpg"
    raise ValueError(f"report: the picture of {image_id} is neither PNG nor JPEG bytes")


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
    """The cells as columns (compact JSON), values as given (cells.csv's): field index, id, centroid,
    area, border, top class, probabilities (row-major), outline, box."""
    top = cells["top_class"].map({n: i for i, n in enumerate(CLASS_NAMES)})
    if top.isna().any():
        raise ValueError(f"report: unknown top_class {cells['top_class'][top.isna()].iloc[0]!r}")
    return {"field": field_of.tolist(), "id": cells["cell_id"].astype(int).tolist(),
            "x": cells["x"].to_numpy(np.float64).tolist(), "y": cells["y"].to_numpy(np.float64).tolist(),
            "area": cells["area"].astype(int).tolist(),
            "border": cells["touches_border"].astype(bool).astype(int).tolist(),
            "top": top.astype(int).tolist(), "k": NUM_CLASSES,
            "p": cells[list(CLASS_NAMES)].to_numpy(np.float64).ravel().tolist(),
            "shape": shapes, "box": boxes}


def _failure_rows(failures) -> list[list[str]]:
    """[[ID, reason], ...] from dicts with the keys ID and reason (S5's list), pairs, or a DataFrame
    (first two columns)."""
    if failures is None:
        return []
    if isinstance(failures, pd.DataFrame):
        failures = failures.iloc[:, :2].itertuples(index=False)
    rows = []
    for row in failures:
        if isinstance(row, dict):
            if not {"ID", "reason"} <= set(row):
                raise ValueError(f"report: a failure {row!r} lacks the key ID or reason")
            row = (row["ID"], row["reason"])
        image_id, reason = row
        rows.append([str(image_id), str(reason)])
    return rows


# ---- TEMPORARY ADAPTER (branch stream, issue 35): the paged report's ``write_pages`` replaces this
# ---- function at merge. It takes the same arguments, collects the entries and writes the one page.
def write_pages(out_dir: str | Path, entries, failures, threshold: float, title: str, pixel_size: float,
                page_size: int) -> Path:
    """The report from ``entries`` (an iterator of ``(ReportField, that field's cells.csv rows)`` in field
    order): for now :func:`write_report` of them all (``page_size`` unused)."""
    fields, frames = [], []
    for f, rows in entries:
        fields.append(f)
        if len(rows):
            frames.append(rows)
    cells = (pd.concat(frames, ignore_index=True) if frames
             else pd.DataFrame([], columns=list(CELL_COLUMNS)))
    return write_report(out_dir, fields, cells, failures, threshold=threshold, title=title,
                        pixel_size=pixel_size)
