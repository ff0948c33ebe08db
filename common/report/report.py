"""report.html and its pages: offline per-cell results (fields, outlines, filters) at any number of fields.

Contract (S5 calls it; S6 --REPORT adds the truth section, ``common.report.report_truth``):

    report.write_pages(out_dir, entries, failures, threshold=0.5, title="...", pixel_size=0, page_size=200)
    report.write_report(out_dir, fields, cells, failures, threshold=0.5, title="...", pixel_size=0)

* ``entries``: an iterable of ``(ReportField(image_id, thumb, thumb_labels, (height, width)), rows)`` in
  field order, ``rows`` that field's rows of cells.csv; consumed once, one page at a time (a generator
  is never materialised). ``write_report`` takes a sequence of fields and all their cells and calls
  ``write_pages`` (``page_size`` 0: one page).
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
the pages and their data (``common.report.pages``: ``report.html`` the summary over every field and
page 1, ``report/page-NNNN.html`` the later pages, ``report/page-NNNN.json`` each page's data,
``report/index.js`` every field's ID and per-class field sets, ``report/data.json`` the header and
every field: S6 re-renders the pages from them, :func:`read_model`, :func:`render`); the HTML by
``common.report.report_page``. Outlines are SVG paths in thumbnail pixels, one per cell; a cell that
vanished from the thumbnail's label map is drawn as a small circle at its centroid.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage

from common import constants, images, io
from common.constants import CLASS_NAMES, GREEN, NUM_CLASSES
from common.report import pages, report_page
from common.resize import resize_image

CELL_COLUMNS = ("image", "cell_id", "x", "y", "area", "touches_border", "top_class", "top_prob",
                *CLASS_NAMES)  # cells.csv: the report's input and its download
REPORT_DIR = "report"          # the page's pictures and data, beside report.html
DATA_FILE = pages.DATA_FILE    # the report's header and every field (S6 re-renders from it and the pages)
JPEG_QUALITY = 85              # the channel pictures (encoded here, or by S5 while it holds them)
REFERENCE_SHRINK = 2           # microtubules, nucleus, ER kept at 1/2 the thumbnail's side (protein: 1)
TILE_ALIGN = 8                 # tiles (with their border) start on JPEG's 8-pixel blocks
TILE_PAD = 2                   # each tile's border: its edge pixels repeated
OUTLINE_EPS = 1.0              # approxPolyDP tolerance of the outlines (thumbnail pixels)
_PNG, _JPEG = b"\x89PNG\r\n\x1a\n", b"\xff\xd8"
_CLASS_INDEX = {n: j for j, n in enumerate(CLASS_NAMES)}  # class name -> its index


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


def write_report(out_dir: str | Path, fields, cells: pd.DataFrame, failures, threshold: float = 0.5,
                 title: str = "", pixel_size: float = 0.0, page_size: int = 0) -> Path:
    """Write the report of ``fields`` (a sequence of :class:`ReportField`) and all their ``cells``:
    :func:`write_pages` with the cells grouped by field, in pages of ``page_size`` fields (0: every field
    on one page); return report.html's path. Raises ValueError (one line) before writing anything for
    an ID that cannot name a file, two fields of one ID or file name, channels of another size than the
    label map, or cells of an image without a field."""
    seen: tuple[set, set] = (set(), set())
    for f in fields:
        _field_name(f, seen)
    _check_columns(cells)
    cells = cells.reset_index(drop=True)
    rows = cells.groupby(cells["image"].astype(str), sort=False).indices if len(cells) else {}
    unknown = sorted(set(rows) - seen[0])
    if unknown:
        raise ValueError(f"report: cells of {len(unknown)} image(s) without a field: {unknown[:5]}")
    _failure_rows(failures)
    entries = ((f, cells.iloc[rows.get(str(f.image_id), [])]) for f in fields)
    return write_pages(out_dir, entries, failures, threshold=threshold, title=title, pixel_size=pixel_size,
                       page_size=int(page_size) or max(len(fields), 1))


def write_pages(out_dir: str | Path, entries, failures, *, threshold: float, title: str, pixel_size: float,
                page_size: int) -> Path:
    """Write the report from ``entries``, an iterable of ``(ReportField, its rows of cells.csv)`` in field
    order, consumed once and one at a time: at most one page of fields is held (and per field its ID
    and class mask, ``pages.Summary``). A page's data is written when the next page's first field
    arrives; its HTML too, except page 1 (``report.html``, with the summary over every field), written
    last with ``report/index.js`` and ``report/data.json``. Returns report.html's path. Raises
    ValueError (one line) at a field that cannot be written (bad name, an ID twice, cells of another
    image, a missing column); what was written before it stays, report.html is not written."""
    out_dir, folder = Path(out_dir), Path(out_dir) / REPORT_DIR
    if isinstance(page_size, bool) or not isinstance(page_size, (int, np.integer)) or page_size < 1:
        raise ValueError(f"report: page_size {page_size!r}: must be a whole number >= 1")
    head = {"title": title, "threshold": float(threshold), "pixel_size": float(pixel_size),
            "page_size": int(page_size), "failures": _failure_rows(failures)}
    folder.mkdir(parents=True, exist_ok=True)
    summary, seen, page = pages.Summary(threshold), (set(), set()), pages.Page(0, 0)
    for n, (f, rows) in enumerate(entries):
        if len(page.fields) == page_size:
            _flush(out_dir, head, page.model(), True)
            page = pages.Page(page.number + 1, n)
        entry, cells = _write_field(out_dir, f, _field_name(f, seen), _field_rows(f, rows), n)
        page.add(entry, cells)
        summary.add(entry["id"], cells["top"], cells["p"])
    _flush(out_dir, head, page.model(), False)
    summary.write_index(folder / pages.INDEX_FILE, page_size)
    _write_data(folder, head, page.number + 1)
    return _write_html(out_dir, head, pages.read_page_data(folder, 0), page.number > 0, summary.view(), None)


def page_files(n_fields: int, page_size: int) -> list[str]:
    """The files :func:`write_pages` writes under ``report/`` besides the pictures, as names relative to
    ``report/``, for ``n_fields`` fields in pages of ``page_size`` (0: one page, as :func:`write_report`'s
    0): ``data.json``, ``index.js``, each page's ``page-NNNN.json`` and, from page 2 on,
    ``page-NNNN.html`` (page 1 is ``report.html`` beside ``report/``, not listed)."""
    return pages.page_files(n_fields, page_size)


def _flush(out_dir: Path, head: dict, page: dict, has_next: bool) -> None:
    """A full (or the last) page: its data; its HTML unless it is page 1 (written last)."""
    pages.write_page_data(out_dir / REPORT_DIR, page)
    if page["page"]:
        _write_html(out_dir, head, page, has_next, None, None)


def _write_html(out_dir: Path, head: dict, page: dict, has_next: bool, summary: dict | None,
                truth: dict | None) -> Path:
    """One page's HTML: page 1 is ``report.html`` (with ``summary``), page p ``report/page-NNNN.html``."""
    p = page["page"]
    view = {**head, **page, "has_next": has_next, "summary": summary, "truth": truth,
            "base": f"{REPORT_DIR}/" if p == 0 else "", "home": "report.html" if p == 0 else "../report.html"}
    path = out_dir / "report.html" if p == 0 else out_dir / REPORT_DIR / pages.page_html(p)
    return io.atomic_write_text(path, report_page.page(view, CELL_COLUMNS))


def _write_data(folder: Path, head: dict, n: int) -> Path:
    """``report/data.json``: the header and every field's entry, read back one page at a time."""
    path = folder / DATA_FILE
    with io.atomic_path(path) as tmp, open(tmp, "w") as out:
        out.write(json.dumps(head, separators=(",", ":"))[:-1] + ',"fields":[')
        sep = ""
        for p in range(n):
            for f in pages.read_page_data(folder, p)["fields"]:
                out.write(sep + json.dumps(f, separators=(",", ":")))
                sep = ","
        out.write("]}")
    return path


def _field_name(f: ReportField, seen: tuple[set, set]) -> str:
    """A field's picture file name, checked (ValueError): a name its ID can make, an ID and a file name
    not seen before (``seen``: the IDs and names so far, added to), channels the label map's size."""
    name = thumb_name(f.image_id, _extension(f.thumb, f.image_id))
    ids, names = seen
    if str(f.image_id) in ids or name in names:
        raise ValueError(f"report: two fields share an ID or a picture file name: {[str(f.image_id)]}")
    ids.add(str(f.image_id))
    names.add(name)
    if not isinstance(f.thumb, (bytes, bytearray, memoryview)):
        shape = (*_labels(f).shape[:2], 4)
        if np.shape(f.thumb) != shape:
            raise ValueError(f"report: the channels of {f.image_id} are {np.shape(f.thumb)}; expected "
                             f"{shape} (the label map's size, RGBY)")
    return name


def _check_columns(cells: pd.DataFrame) -> None:
    missing = [c for c in CELL_COLUMNS if c not in cells.columns]
    if missing:
        raise ValueError(f"report: cells lack the column(s) {missing}")


def _field_rows(f: ReportField, rows: pd.DataFrame) -> pd.DataFrame:
    """A field's rows of cells.csv, checked: the columns, and every row of this field's image."""
    _check_columns(rows)
    other = rows["image"].astype(str) != str(f.image_id)
    if other.any():
        raise ValueError(f"report: cells of {rows['image'][other].iloc[0]!r} given with the field "
                         f"{f.image_id!r}")
    return rows


def render(out_dir: str | Path, model: dict) -> Path:
    """(Re)write ``out_dir/report.html`` and the later pages from a whole report's model
    (:func:`read_model`, maybe + S6's ``truth``); return report.html's path."""
    out_dir = Path(out_dir)
    head = {key: model[key] for key in ("title", "threshold", "pixel_size", "page_size", "failures")}
    n, summary = pages.n_pages(len(model["fields"]), model["page_size"]), pages.summary_of(model)
    for p in range(n):
        part = pages.cut(model, p)
        truth = _page_truth(model, part) if model.get("truth") is not None else None  # only S6 adds it
        _write_html(out_dir, head, part, p < n - 1, summary.view() if p == 0 else None, truth)
    return out_dir / "report.html"


def _page_truth(model: dict, part: dict) -> dict:
    """S6's truth as page ``part`` shows it: its cells' truth; on page 1 the AP table and the gallery
    (crops of fields of any page: those not on page 1 listed as its extra ``fields``)."""
    truth, cells, (k0, k1) = model["truth"], model["cells"], part["rows"]
    out = {"iou": truth["iou"], "cells": truth["cells"][k0:k1], "fields": []}
    if part["page"]:
        return out
    lo, own, extra = part["first"], len(part["fields"]), {}
    gallery = []
    for c, ks in truth["gallery"]:
        crops = []
        for k in ks:
            fi = cells["field"][k]
            local = fi - lo if lo <= fi < lo + own else own + extra.setdefault(fi, len(extra))
            crops.append({"f": local, "image": model["fields"][fi]["id"], "cell": cells["id"][k],
                          "box": cells["box"][k], "shape": cells["shape"][k],
                          "p": cells["p"][k * NUM_CLASSES + c], "truth": truth["cells"][k]})
        gallery.append([c, crops])
    out.update(table=truth["table"], mAP=truth["mAP"], gallery=gallery,
               fields=[model["fields"][fi] for fi in extra])
    return out


def read_model(out_dir: str | Path) -> dict:
    """The whole report as written (``report/data.json`` and every page's data): title, threshold,
    pixel_size, page_size, failures, fields, cells (global field indices)."""
    folder = Path(out_dir) / REPORT_DIR
    path = folder / DATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no report data (S5 writes it with report.html)")
    model = json.loads(path.read_text())
    if "pixel_size" not in model or any("tiles" not in f for f in model["fields"]):
        raise FileNotFoundError(f"{path}: report data of an older S5 (no channel pictures): run S5 again")
    if "cells" in model:  # one page, everything in data.json (before pages)
        return {**model, "page_size": max(len(model["fields"]), 1)}
    cells: dict = {key: [] for key in pages.CELL_KEYS}
    for p in range(pages.n_pages(len(model["fields"]), model["page_size"])):
        part = pages.read_page_data(folder, p)["cells"]
        for key in pages.CELL_KEYS:
            cells[key] += part[key]
    return {**model, "cells": {**cells, "k": NUM_CLASSES}}


def _write_field(out_dir: Path, f: ReportField, name: str, rows: pd.DataFrame,
                 index: int) -> tuple[dict, dict]:
    """Write one field's picture; return its entry and its cells (outlines and boxes in thumbnail pixels)."""
    labels = _labels(f)
    th, tw = labels.shape[:2]
    data = bytes(f.thumb) if isinstance(f.thumb, (bytes, bytearray, memoryview)) else encode_channels(f.thumb)
    io.atomic_write_bytes(out_dir / REPORT_DIR / name, data)
    h, w = int(f.size[0]), int(f.size[1])
    objects = ndimage.find_objects(labels.astype(np.int64)) if labels.size and labels.max() > 0 else []
    shapes, boxes = [], []
    for cid, x, y in zip(rows["cell_id"].to_numpy(), rows["x"].to_numpy(), rows["y"].to_numpy()):
        sl = objects[cid - 1] if 0 < cid <= len(objects) else None
        if sl is None:
            cx, cy = float(x) * tw / w, float(y) * th / h
            shapes.append(f"M{cx - 2:.1f},{cy:.1f}a2,2 0 1,0 4,0a2,2 0 1,0 -4,0Z")
            boxes.append([int(cx) - 2, int(cy) - 2, int(cx) + 3, int(cy) + 3])
            continue
        shapes.append(_outline(labels[sl] == cid, sl[1].start, sl[0].start))
        boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
    entry = {"id": str(f.image_id), "h": h, "w": w, "th": int(th), "tw": int(tw), "src": name,
             "n": len(rows), "tiles": channel_tiles(int(th), int(tw))}
    return entry, _cell_table(rows, np.full(len(rows), index, np.int64), shapes, boxes)


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
    names = cells["top_class"].tolist()
    unknown = [n for n in names if n not in _CLASS_INDEX]
    if unknown:
        raise ValueError(f"report: unknown top_class {unknown[0]!r}")
    column = {c: cells[c].to_numpy() for c in ("cell_id", "x", "y", "area", "touches_border")}
    return {"field": field_of.tolist(), "id": column["cell_id"].astype(int).tolist(),
            "x": column["x"].astype(np.float64).tolist(), "y": column["y"].astype(np.float64).tolist(),
            "area": column["area"].astype(int).tolist(),
            "border": column["touches_border"].astype(bool).astype(int).tolist(),
            "top": [_CLASS_INDEX[n] for n in names], "k": NUM_CLASSES,
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
