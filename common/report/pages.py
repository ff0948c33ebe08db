"""The report's pages: their file names, each page's data, the summary over every field and the index.

A report of n fields in pages of at most ``page_size`` fields (``common.report.report.write_pages``):

* ``report.html``: page 1 (the summary over every field, then the first page's fields);
* ``report/page-0002.html`` ... (:func:`page_html`): the later pages, each with its own data inline;
* ``report/page-0001.json`` ... (:func:`page_json`): each page's fields and cells (outlines, boxes),
  global field indices: what ``report.read_model`` puts together again (S6 ``--REPORT``);
* ``report/data.json``: the title, threshold, pixel size, page size, failures and every field's entry;
* ``report/index.js`` (:data:`INDEX_FILE`): ``window.REPORT_INDEX``, loaded by every page with a
  ``<script>`` tag (pages from file:// may not fetch): each field's ID in order (its page is
  ``index // page_size``), the page size, and per class a bit set (base64, bit i = field i) of the
  fields with a cell of that class at p >= the threshold: the jump box and the class filter over all
  fields read it.

:class:`Summary` keeps running totals (cells per top class, the confidence histogram, one class
mask per field); :class:`Page` gathers one page's fields and cells until it is written.
"""
from __future__ import annotations

import base64
import json
from array import array
from pathlib import Path

import numpy as np

from common import io
from common.constants import NUM_CLASSES

DATA_FILE = "data.json"       # the report's header and every field's entry (S6 re-renders from it)
INDEX_FILE = "index.js"       # every field's ID and per-class field sets, for all pages
HIST_BINS = 20                # bins of the confidence histogram
CELL_KEYS = ("field", "id", "x", "y", "area", "border", "top", "p", "shape", "box")  # a page's cells


def n_pages(n_fields: int, page_size: int) -> int:
    """Pages of a report of ``n_fields`` (one, empty, when there is none; one when ``page_size`` is 0)."""
    return max(1, -(-int(n_fields) // int(page_size))) if page_size else 1


def page_stem(p: int) -> str:
    """The file stem of page ``p`` (0-based) under report/: ``page-0001``, ``page-0002``, ..."""
    return f"page-{p + 1:04d}"


def page_html(p: int) -> str:
    """Page ``p``'s HTML under report/ (page 0 is ``report.html`` beside the folder, not this)."""
    return page_stem(p) + ".html"


def page_json(p: int) -> str:
    """Page ``p``'s data under report/."""
    return page_stem(p) + ".json"


def page_files(n_fields: int, page_size: int) -> list[str]:
    """The files ``write_pages`` writes under report/ besides the pictures (names relative to report/):
    data.json, index.js, ``page-NNNN.json`` for every page and ``page-NNNN.html`` from page 2 on
    (``page_size`` 0: one page, as ``write_report``'s 0). ``report.html`` (page 1) lies beside report/
    and is not listed."""
    n = n_pages(n_fields, page_size)
    return [DATA_FILE, INDEX_FILE, *(name for p in range(n) for name in
                                     ([page_json(p)] + ([page_html(p)] if p else [])))]


class Page:
    """One page's fields (entries) and cells (columns, global field indices) while it is gathered."""

    def __init__(self, number: int, first: int):
        self.number, self.first = number, first
        self.fields: list[dict] = []
        self.cells: dict = {key: [] for key in CELL_KEYS}

    def add(self, entry: dict, cells: dict) -> None:
        self.fields.append(entry)
        for key in CELL_KEYS:
            self.cells[key] += cells[key]

    def model(self) -> dict:
        return {"page": self.number, "first": self.first, "fields": self.fields,
                "cells": {**self.cells, "k": NUM_CLASSES}}


def write_page_data(folder: Path, page: dict) -> Path:
    return io.atomic_write_text(folder / page_json(page["page"]), json.dumps(page, separators=(",", ":")))


def read_page_data(folder: Path, p: int) -> dict:
    path = folder / page_json(p)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: a page of the report's data is missing: run S5 again")
    return json.loads(path.read_text())


def cut(model: dict, p: int) -> dict:
    """Page ``p`` of a whole report's model (``report.read_model``), as :meth:`Page.model` makes it."""
    size, cells = model["page_size"], model["cells"]
    lo, hi = p * size, min((p + 1) * size, len(model["fields"]))
    field = np.asarray(cells["field"], np.int64)
    k0, k1 = np.searchsorted(field, lo), np.searchsorted(field, hi)  # cells are in field order
    part = {key: cells[key][k0:k1] for key in CELL_KEYS if key != "p"}
    part["p"] = cells["p"][k0 * NUM_CLASSES:k1 * NUM_CLASSES]
    return {"page": p, "first": lo, "fields": model["fields"][lo:hi], "cells": {**part, "k": NUM_CLASSES},
            "rows": (int(k0), int(k1))}


def summary_of(model: dict) -> Summary:
    """The :class:`Summary` of a whole report's model (``report.read_model``)."""
    cells, summary = model["cells"], Summary(model["threshold"])
    edges = np.searchsorted(np.asarray(cells["field"], np.int64), np.arange(len(model["fields"]) + 1))
    for i, f in enumerate(model["fields"]):
        a, b = int(edges[i]), int(edges[i + 1])
        summary.add(f["id"], cells["top"][a:b], cells["p"][a * NUM_CLASSES:b * NUM_CLASSES])
    return summary


class Summary:
    """Running totals over every field: fields, cells, cells per top class, the histogram of the top
    class's probability, and per field its ID and the classes it has a cell of at p >= threshold."""

    def __init__(self, threshold: float):
        self.threshold = float(threshold)
        self.ids: list[str] = []
        self.masks = array("I")  # bit c: the field has a cell of class c at p >= threshold
        self.counts = np.zeros(NUM_CLASSES, np.int64)
        self.hist = np.zeros(HIST_BINS, np.int64)

    def add(self, field_id: str, top, p) -> None:
        """One field: its cells' top classes and probabilities (row-major, NUM_CLASSES a cell)."""
        top = np.asarray(top, np.int64)
        probs = np.asarray(p, np.float64).reshape(-1, NUM_CLASSES)
        self.ids.append(str(field_id))
        self.counts += np.bincount(top, minlength=NUM_CLASSES)
        self.hist += np.histogram(probs[np.arange(len(top)), top], bins=HIST_BINS, range=(0.0, 1.0))[0]
        hit = (probs >= self.threshold).any(0)
        self.masks.append(int((hit.astype(np.int64) << np.arange(NUM_CLASSES)).sum()))

    def view(self) -> dict:
        """What the summary shows: fields, cells, cells per top class, the histogram."""
        return {"n_fields": len(self.ids), "n_cells": int(self.counts.sum()), "counts": self.counts,
                "hist": self.hist}

    def write_index(self, path: Path, page_size: int) -> Path:
        """``report/index.js``: ``window.REPORT_INDEX`` (see the module's docstring)."""
        masks = np.frombuffer(self.masks, np.uint32) if len(self.masks) else np.zeros(0, np.uint32)
        sets = [base64.b64encode(np.packbits((masks >> c) & 1 == 1, bitorder="little").tobytes()).decode()
                for c in range(NUM_CLASSES)]
        index = {"page_size": int(page_size), "threshold": self.threshold, "ids": self.ids, "classes": sets}
        text = json.dumps(index, separators=(",", ":")).replace("<", "\\u003c")
        return io.atomic_write_text(path, f"window.REPORT_INDEX={text};\n")
