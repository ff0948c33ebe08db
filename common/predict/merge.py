"""S5's final outputs made from its parts (``common.predict.parts``), one part at a time, in chunk order.

Each table is written in pieces, one per part (``io.atomic_to_csv_parts``: the header once), so its bytes
equal those of the whole table written at once, whatever the chunk size or the number of processes that
scored the parts. Nothing of a field stays in memory once its part is written out, except the failures
(one line each) and the overlays of the first N_OVERLAYS fields.

``cells.parquet`` holds the rows of cells.csv with typed columns (:data:`CELL_SCHEMA`: image and top_class
strings, cell_id int32, x / y / top_prob / the class probabilities float64 (as cells.csv's text reads
back), area int64, touches_border bool), one row group per part.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from common import io
from common.competition import encoding
from common.constants import CLASS_NAMES, NUM_CLASSES
from common.predict.cell_tables import with_location
from common.predict.parts import Store
from common.predict.plates import LOCATION_COLUMNS
from common.report import report

PREDICTION_COLUMNS = ["ID", "cell_id", "border"] + [f"c{c}" for c in range(NUM_CLASSES)]  # cell_predictions
CELL_SCHEMA = pa.schema([("image", pa.string()), ("cell_id", pa.int32()), ("x", pa.float64()),
                         ("y", pa.float64()), ("area", pa.int64()), ("touches_border", pa.bool_()),
                         ("top_class", pa.string()), ("top_prob", pa.float64()),
                         *[(name, pa.float64()) for name in CLASS_NAMES]])
LOCATION_SCHEMA = [pa.field("plate", pa.string()), pa.field("well", pa.string()),
                   pa.field("field", pa.int64())]  # with the plate's fields (plates.LOCATION_COLUMNS)
Locate = Callable[[list], "pd.DataFrame | None"] | None  # source.location_columns


@dataclass
class Totals:
    """What the closing lines and the small outputs need of all parts."""

    failures: list = field(default_factory=list)  # s5_failures.csv: discovery's, then the fields' in order
    overlays: list = field(default_factory=list)  # (ID, image, labels, ids, probs): the first N_OVERLAYS
    n_fields: int = 0
    n_cells: int = 0
    n_dropped: int = 0
    n_segmented: int = 0
    n_pictures: int = 0                           # fields in the report


def totals(store: Store, failures: list) -> Totals:
    """One pass over the parts: their failures (after ``failures``: discovery's), overlays and counts."""
    out = Totals(failures=list(failures))
    for part in store:
        out.failures += part.failures
        out.overlays += part.overlays
        out.n_fields += len(part.ids)
        out.n_cells += part.n_cells
        out.n_dropped += part.n_dropped
        out.n_segmented += part.n_segmented
        out.n_pictures += len(part.tables.report_fields) if part.tables is not None else 0
    return out


def submission_frames(store: Store, name: str, sample: pd.DataFrame | None, min_conf: float) -> Iterator:
    """The rows of submission ``name`` in pieces: with ``sample`` (the competition's) its rows in order,
    those beyond the fields scored empty; without, every field that was read, with its size. The
    prediction strings come from the parts' masks and probabilities (triplets from ``min_conf`` on)."""
    start = 0
    for part in store:
        strings = {i: encoding.prediction_string(part.masks[i], p, min_conf)
                   for i, p in part.probs.get(name, {}).items()}
        if sample is not None:
            rows = sample.iloc[start:start + len(part.ids)]
            start += len(part.ids)
        else:
            read = [i for i in part.ids if i in part.sizes]
            rows = pd.DataFrame({"ID": read, "ImageWidth": [part.sizes[i][1] for i in read],
                                 "ImageHeight": [part.sizes[i][0] for i in read]})
        yield encoding.submission_rows(rows, strings)
    if sample is not None and start < len(sample):  # beyond LIMIT: the rows stay, empty
        yield encoding.submission_rows(sample.iloc[start:], {})


def prediction_frames(store: Store) -> Iterator[pd.DataFrame]:
    for part in store:
        yield pd.DataFrame(part.rows, columns=PREDICTION_COLUMNS)


def cell_frames(store: Store, locate: Locate = None) -> Iterator[pd.DataFrame]:
    """cells.csv in pieces (a part without cell tables gives none), with the plate, well and field
    columns of ``locate(ids)`` (``source.location_columns``) when it gives them."""
    for part in store:
        if part.tables is not None:
            yield with_location(part.tables.cells_frame(), locate(part.ids) if locate else None)


def image_frames(store: Store, locate: Locate = None) -> Iterator[pd.DataFrame]:
    for part in store:
        if part.tables is not None:
            yield with_location(part.tables.images_frame(), locate(part.ids) if locate else None)


def located(columns, is_located: bool) -> list[str]:
    """A table's columns, with the plate, well and field after ``image`` when its fields lie on plates."""
    columns = list(columns)
    return columns[:1] + LOCATION_COLUMNS + columns[1:] if is_located else columns


def write_parquet(frames, path: Path, is_located: bool = False) -> Path:
    """cells.parquet from the pieces of cells.csv: one row group per piece, :data:`CELL_SCHEMA` (with
    :data:`LOCATION_SCHEMA` after ``image`` when the fields lie on plates)."""
    schema = CELL_SCHEMA
    if is_located:
        schema = pa.schema([CELL_SCHEMA.field(0), *LOCATION_SCHEMA, *list(CELL_SCHEMA)[1:]])
    with io.atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            for df in frames:
                if len(df):
                    typed = df.astype({"touches_border": bool, "cell_id": "int32", "area": "int64"})
                    writer.write_table(pa.Table.from_pandas(typed, schema=schema, preserve_index=False))
    return Path(path)


def report_entries(store: Store) -> Iterator[tuple[report.ReportField, pd.DataFrame]]:
    """The report's fields in order, each with its rows of cells.csv."""
    for part in store:
        cells = part.tables.cells_frame()
        image = cells["image"].astype(str).to_numpy()
        for image_id, picture, png, hw in part.tables.report_fields:
            yield report.ReportField(image_id, picture, png, hw), cells[image == str(image_id)]

