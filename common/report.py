"""report.html: one self-contained offline page of per-cell results (thumbnails, outlines, filters).

Contract (S5 calls it; S6 --REPORT adds the truth section):

    fields = [report.ReportField(image_id, thumb_rgb, thumb_labels, (height, width)), ...]
    report.write_report(out_dir, fields, cells, failures, threshold=0.5, title="...")

* ``thumb_rgb``: ``h x w x 3`` uint8, the field in HPA false colour, longest side <= 512 px, the
  original's aspect ratio; ``thumb_labels``: ``h x w`` uint16, the cell label map at that size, ids
  as in ``cells`` (``cell_id``).
* ``cells``: the rows of ``cells.csv`` (image, cell_id, x, y, area, touches_border, top_class,
  top_prob, then one column per class named by class).
* ``failures``: rows (ID, reason) of the fields that could not be read or segmented.

Writes ``out_dir/report.html`` and its pictures under ``out_dir/report/``; returns the HTML path.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common import io


@dataclass
class ReportField:
    """One field of view as the report shows it."""

    image_id: str
    thumb: np.ndarray              # h x w x 3 uint8 RGB (false colour), longest side <= 512
    labels: np.ndarray             # h x w uint16 cell label map at the thumbnail's size
    size: tuple[int, int]          # (height, width) of the original


def write_report(out_dir: str | Path, fields: list[ReportField], cells: pd.DataFrame, failures,
                 threshold: float = 0.5, title: str = "") -> Path:
    """Write ``out_dir/report.html`` (placeholder until the page is built)."""
    path = Path(out_dir) / "report.html"
    io.atomic_write_text(path, f"<!doctype html><title>{title}</title><p>{len(fields)} fields, "
                               f"{len(cells)} cells</p>\n")
    return path
