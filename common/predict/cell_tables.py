"""Per-cell results a person can use: cells.csv, images.csv, label maps and the report's thumbnails.

Tables hold each image's ID as it is; a file made from an ID is named by ``constants.file_stem`` (the ID
itself for a plain name, e.g. every competition ID; ``Image 1`` -> ``Image_1~<hash>``).

Gathered field by field (:meth:`CellTables.add`), written after every field was scored. Memory stays
small: a field's original-size label map is held as its 16-bit PNG bytes and its report thumbnail
as its channel picture (``report.encode_channels``: JPEG) and label map (PNG) bytes, decoded again one
field at a time when the report is written (:class:`ReportFields`).

* ``cells.csv``: ``image, cell_id, x, y, area, touches_border, top_class, top_prob`` and one column
  per class (``constants.CLASS_NAMES``), the ensemble's probabilities rounded to 6 decimals (as
  cell_predictions.csv). ``x`` / ``y`` is the centroid (mean column / row of the cell's pixels) and
  ``area`` its pixel count in the written label map; ``touches_border`` is read on that map.
* ``labels/{stem}.png`` (:func:`constants.label_file`): the original-size (H x W) uint16 label map holding
  exactly the cells of ``cells.csv`` (any other id zeroed): Fiji and napari open it as labels.
* ``images.csv``: ``image, width, height, n_cells`` and per class the fraction of the field's cells
  whose probability is >= ``threshold`` (empty for a field without cells).
* ``plate, well, field`` after ``image`` in both tables, for fields of an OME-Zarr plate
  (:func:`with_location`; a table of fields on no plate has no such columns).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from common import cells, images
from common.constants import CLASS_NAMES, PROB_DECIMALS
from common.fov import FieldOfView
from common.report import report
from common.resize import resize_image, resize_labels

IMAGE_COLUMNS = ["image", "width", "height", "n_cells", *CLASS_NAMES]


def with_location(frame: pd.DataFrame, locations: pd.DataFrame | None) -> pd.DataFrame:
    """``frame`` (cells.csv or images.csv, or a part of either) with the ``plate, well, field`` columns of
    ``locations`` (``FieldSource.location_columns``: ``image`` and those) put after ``image``, matched by
    image; ``frame`` itself when ``locations`` is None (the table stays as it was, byte for byte)."""
    if locations is None:
        return frame
    where = locations.drop_duplicates("image").set_index("image").reindex(frame["image"])
    out = frame.copy()
    for k, column in enumerate(c for c in locations.columns if c != "image"):
        out.insert(1 + k, column, where[column].array)
    return out


def only(labels: np.ndarray, ids) -> np.ndarray:
    """``labels`` as uint16 with every id not in ``ids`` set to 0."""
    lut = np.zeros(int(labels.max(initial=0)) + 1, np.uint16)  # id -> id if kept, else 0: one lookup
    kept = [int(c) for c in ids if 0 < int(c) < lut.size]
    lut[kept] = kept
    return lut[labels]


def as_written(probs: np.ndarray) -> np.ndarray:
    """Probabilities rounded to ``PROB_DECIMALS`` decimals in their own dtype and read back as written: the
    values of cell_predictions.csv (one row per cell)."""
    rounded = np.round(np.asarray(probs), PROB_DECIMALS)
    return rounded.astype(str).astype(np.float64).reshape(-1, len(CLASS_NAMES))


def cell_rows(image_id: str, labels: np.ndarray, ids: list[int], probs: np.ndarray) -> list[list]:
    """The cells.csv rows of one field: ``labels`` is the written (original-size) map, ``probs``
    (:func:`as_written`) one row per id of ``ids`` (all present in ``labels``)."""
    geo = {r["cell_id"]: r for r in cells.cell_table(labels)}
    rows = []
    for c, p in zip(ids, probs):
        g, top = geo[int(c)], int(np.argmax(p))
        rows.append([image_id, int(c), round(g["x"], 3), round(g["y"], 3), g["area"], int(g["border"]),
                     CLASS_NAMES[top], float(p[top]), *p.tolist()])
    return rows


def image_row(image_id: str, hw: tuple[int, int], probs: np.ndarray, threshold: float) -> list:
    """The images.csv row of one field (``probs``: :func:`as_written`, one row per cell)."""
    frac = (probs >= threshold).mean(axis=0).tolist() if len(probs) else [np.nan] * len(CLASS_NAMES)
    return [image_id, int(hw[1]), int(hw[0]), len(probs), *frac]


def thumbnail(image: np.ndarray, labels: np.ndarray, hw: tuple[int, int], region: tuple[int, int],
              thumb_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The report's channels (RGBY) and label map of a field: the working image and map cut to
    ``region`` (the field's part), at the original's aspect ratio, longest side <= ``thumb_size``."""
    h, w = int(hw[0]), int(hw[1])
    scale = min(1.0, thumb_size / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    rgby = resize_image(image[: region[0], : region[1]], size)
    return rgby, resize_labels(labels[: region[0], : region[1]], size).astype(np.uint16)


@dataclass
class CellTables:
    """What S5 gathers for cells.csv, images.csv, labels/ and the report (``maps`` / ``thumbs``: keep
    the label-map PNGs / the report's thumbnails)."""

    threshold: float
    thumb_size: int
    maps: bool
    thumbs: bool
    rows: list = field(default_factory=list)          # cells.csv
    images: list = field(default_factory=list)        # images.csv
    pngs: dict = field(default_factory=dict)          # {ID: 16-bit PNG bytes of labels/{label_file(ID)}}
    report_fields: list = field(default_factory=list)  # (ID, channel JPEG bytes, label PNG bytes, (H, W))

    def add(self, image_id: str, f: FieldOfView, full: np.ndarray, probs: np.ndarray) -> None:
        """One scored field ``f``: ``full`` its original-size map, ``f.ids`` / ``probs`` the cells scored
        (all in ``full``), ``f.image`` / ``f.cell`` the working image and map, ``f.region`` the field's
        part of them."""
        hw, ids, labels = f.hw, f.ids, f.cell
        written, probs = only(full, ids), as_written(probs)
        self.rows += cell_rows(image_id, written, ids, probs)
        self.images.append(image_row(image_id, hw, probs, self.threshold))
        if self.maps:
            self.pngs[image_id] = images.encode_png(written)
        if self.thumbs:
            rgby, lab = thumbnail(f.image, only(labels, ids), hw, f.region, self.thumb_size)
            picture = report.encode_channels(rgby)
            self.report_fields.append((image_id, picture, images.encode_png(lab), (int(hw[0]), int(hw[1]))))

    def cells_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(report.CELL_COLUMNS))

    def images_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.images, columns=IMAGE_COLUMNS)


class ReportFields(Sequence):
    """The report's fields as ``report.ReportField``: the picture and the label map's PNG bytes as held
    (``report.write_report`` decodes one label map at a time)."""

    def __init__(self, held: list):
        self.held = list(held)

    def __len__(self) -> int:
        return len(self.held)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        image_id, picture, png, hw = self.held[i]
        return report.ReportField(image_id, picture, png, hw)  # both as held: the report decodes the labels
