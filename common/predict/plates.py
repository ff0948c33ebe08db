"""OME fields of view for S5 ``--IMAGES``: the fields of an OME-Zarr plate, and the channels of a plate's
field or an OME-TIFF picked by name (CHANNEL_NAMES) or by index (TIFF_PLANES).

A plate (the OME-NGFF high-content-screening layout) is a folder whose metadata holds ``plate``: NGFF
0.4 in ``.zattrs``, 0.5 in ``zarr.json`` under ``attributes.ome``. Plate -> wells
(``plate.wells[].path``, e.g. ``A/1``) -> fields (the well's ``well.images[].path``) -> a multiscale
image, of which level 0 (``multiscales[0].datasets[0]``) is read. The metadata is read as JSON (finding
the fields needs no zarr); the pixels with ``zarr``, imported only there (a Kaggle notebook runs
without it), one field at a time and only the four channels asked for.

IDs are ``{plate}_{well}_{field}`` (:func:`plate_fields`): plate = ``plate.name``, else the folder's
name without ``.zarr`` / ``.ome.zarr``; well = its row's and column's names as the metadata spells them
(``A1``, ``B03``); field = the field's place in the well's ``images`` list (0, 1, ...).

Axes (:func:`read_plate_field`): ``y`` and ``x`` are the field; ``c`` (or the axis of type ``channel``)
holds the channels; any other axis (``t``, ``z``) of one plane is dropped, of more is refused unless
``z_plane`` (TIFF_Z_PLANE >= 0) picks its plane, as a TIFF's Z or T axis. Before any chunk is read, the
pixel budget takes the planes read (4 x H x W) from the array's shape, and a chunk of more values than
the budget allows, or a pixel type other than integers and floats, is refused.

Channel names: a plate's ``omero.channels[].label``, an OME-TIFF's ``Channel@Name`` in its OME-XML
(:func:`ome_channel_names`), matched exactly (:func:`channel_indices`).
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import tifffile

from common import images
from common.constants import shown_name
from common.io import ImageReadError

STACK_AXES = {"z": "a Z-stack", "t": "a time series"}  # axes never taken as channels (a plate's, a TIFF's)
LOCATION_COLUMNS = ["plate", "well", "field"]           # where a plate's field lies (images.csv, cells.csv)


@dataclass(frozen=True)
class PlateField:
    """One field of a plate: its image group, where it is shown as (``plate folder/A/1/0``) and its
    ``(plate, well, field)``."""

    group: Path
    where: str
    location: tuple[str, str, int]


# ----------------------------------------------------------------------------- metadata
def attributes(folder: Path) -> dict:
    """The OME attributes of a Zarr group folder: NGFF 0.5's ``zarr.json`` ``attributes.ome``, 0.4's
    ``.zattrs``; ``{}`` when it has neither. Unreadable metadata is an :class:`ImageReadError`."""
    for name in ("zarr.json", ".zattrs"):
        path = Path(folder) / name
        if not path.is_file():
            continue
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ImageReadError(f"{path}: unreadable metadata ({type(e).__name__})") from None
        attrs = meta.get("attributes", {}) if name == "zarr.json" and isinstance(meta, dict) else meta
        attrs = attrs.get("ome", attrs) if isinstance(attrs, dict) else {}
        return attrs if isinstance(attrs, dict) else {}
    return {}


def is_plate(folder: Path) -> bool:
    """Whether ``folder`` is an OME-Zarr plate (its metadata holds ``plate``)."""
    try:
        return Path(folder).is_dir() and isinstance(attributes(folder).get("plate"), dict)
    except ImageReadError:
        return False


def _inside(path: str) -> bool:
    """Whether a path from the metadata stays inside its folder (relative, no '..')."""
    p = PurePosixPath(path)
    return bool(path) and not p.is_absolute() and ".." not in p.parts and "\\" not in path


def _well_name(well: dict, rows: list, columns: list) -> str:
    """``A1`` / ``B03``: the well's row and column names as the plate spells them (else its path)."""
    r, c = well.get("rowIndex"), well.get("columnIndex")
    if isinstance(r, int) and isinstance(c, int) and 0 <= r < len(rows) and 0 <= c < len(columns):
        return f"{rows[r]}{columns[c]}"
    return str(well["path"]).replace("/", "")


def plate_fields(folder: Path) -> tuple[list[tuple[str, PlateField]], list[dict]]:
    """``[(ID, PlateField)]`` of the plate ``folder`` in the plate's order, and the failures
    (``{"ID", "reason"}``) of wells that hold no field list. Metadata that is no plate's is a ValueError
    naming the folder."""
    folder = Path(folder)
    try:
        plate = attributes(folder)["plate"]
        stem = folder.name[: -len(".zarr")] if folder.name.lower().endswith(".zarr") else folder.name
        name = str(plate.get("name") or (stem[:-4] if stem.lower().endswith(".ome") else stem))
        rows = [str(r["name"]) for r in plate.get("rows", [])]
        columns = [str(c["name"]) for c in plate.get("columns", [])]
        wells = [(str(w["path"]), _well_name(w, rows, columns)) for w in plate["wells"]]
    except (ImageReadError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{folder}: not a readable OME-Zarr plate ({type(e).__name__}: {e})") from None
    found, failures = [], []
    for path, well in wells:
        try:
            listed = _well_images(folder / path) if _inside(path) else "a path outside the plate"
        except (ImageReadError, KeyError, TypeError, AttributeError) as e:
            listed = f"{type(e).__name__}: {e}"
        if isinstance(listed, str):
            failures.append({"ID": f"{name}_{well}",
                             "reason": f"{folder.name}/{path}: no readable well metadata ({listed})"})
            continue
        for k, image in enumerate(listed):
            where = f"{folder.name}/{path}/{image}"
            found.append((f"{name}_{well}_{k}", PlateField(folder / path / image, where, (name, well, k))))
    return found, failures


def _well_images(well: Path) -> list[str] | str:
    """The paths of a well's fields (its ``well.images``), or why they cannot be used."""
    meta = attributes(well)
    if "well" not in meta:
        return "no 'well' in a zarr.json or .zattrs there"
    listed = [str(im["path"]) for im in meta["well"]["images"]]
    bad = [p for p in listed if not _inside(p)]
    return f"a field path outside the plate: {bad[0]!r}" if bad else listed


def find(folder: Path) -> tuple[dict[str, list[PlateField]], list[dict]]:
    """``{ID: [plate fields]}`` of the plate ``folder``, or of the plates in it, and the failures of their
    wells (a plate whose metadata is unreadable is one failure, named by its folder)."""
    found: dict[str, list[PlateField]] = {}
    failures: list[dict] = []
    listed = [folder] if is_plate(folder) else sorted(p for p in Path(folder).iterdir() if p.name[:1] != ".")
    for plate in filter(is_plate, listed):
        try:
            fields, wells = plate_fields(plate)
        except ValueError as e:
            failures.append({"ID": shown_name(plate.name), "reason": str(e)})
            continue
        failures += wells
        for image_id, pf in fields:
            found.setdefault(image_id, []).append(pf)
    return found, failures


def location_frame(locations: dict[str, tuple], ids: list[str]) -> pd.DataFrame | None:
    """``image, plate, well, field`` of ``ids`` (``locations``: ``{ID: (plate, well, field)}``; empty for
    a field on no plate); None when ``locations`` is empty."""
    if not locations:
        return None
    rows = [(i, *locations.get(i, (None, None, None))) for i in ids]
    frame = pd.DataFrame(rows, columns=["image", *LOCATION_COLUMNS])
    return frame.astype({"plate": "string", "well": "string", "field": "Int64"})


def ome_channel_names(path: Path) -> list[str] | None:
    """The channel names of an OME-TIFF (``Channel@Name`` of its first image's ``Pixels``, "" where a
    channel has none); None for a TIFF without OME-XML."""
    try:
        with tifffile.TiffFile(path) as tif:
            xml = tif.ome_metadata
        if not xml:
            return None
        tag = lambda e: e.tag.rsplit("}", 1)[-1]  # noqa: E731 - the name without its namespace
        pixels = next((e for e in ET.fromstring(xml).iter() if tag(e) == "Pixels"), None)
    except Exception as e:  # noqa: BLE001 - any reader failure is this field's
        why = images.decode_problem(e)
        raise ImageReadError(f"{Path(path).name}: cannot read its OME-XML ({why})") from None
    return [] if pixels is None else [str(ch.get("Name", "")) for ch in pixels if tag(ch) == "Channel"]


def channel_indices(labels: list[str] | None, names: list[str], planes: list[int], n: int,
                    where: str) -> list[int]:
    """The indices of the four channels among the ``n`` of a field: those named ``names`` (CHANNEL_NAMES)
    among ``labels`` (the file's names), or ``planes`` (TIFF_PLANES) when ``names`` is empty."""
    if not names:
        if max(planes) >= n:
            raise ImageReadError(f"{where}: {n} plane(s); TIFF_PLANES asks for planes {list(planes)}")
        return list(planes)
    if labels is None:
        raise ImageReadError(f"{where}: its metadata names no channel; CHANNEL_NAMES needs the names (set "
                             "CHANNEL_NAMES to [] to pick the channels by TIFF_PLANES)")
    has = ", ".join(repr(x) for x in labels) or "none"
    missing = [x for x in names if x not in labels]
    twice = [x for x in names if labels.count(x) > 1]
    if missing or twice:
        what = (f"no channel named {', '.join(map(repr, missing))}" if missing
                else f"two channels named {twice[0]!r}")
        raise ImageReadError(f"{where}: {what} (CHANNEL_NAMES); its channels: {has}")
    picked = [labels.index(x) for x in names]
    if max(picked) >= n:
        raise ImageReadError(f"{where}: {n} channel(s) hold pixels, its metadata names {len(labels)} ({has})")
    return picked


# ----------------------------------------------------------------------------- pixels
def _image_meta(pf: PlateField) -> tuple[str, list[str], list[str] | None]:
    """Level 0's path, the axes (``c`` for the channel axis; NGFF 0.1/0.2's implicit ``tczyx``) and
    the channel labels (None without ``omero``) of a plate's field."""
    try:
        attrs = attributes(pf.group)
        scales = attrs["multiscales"][0]
        dataset = str(scales["datasets"][0]["path"])
        axes = [("c" if a.get("type") == "channel" else str(a["name"]).lower()) if isinstance(a, dict)
                else str(a).lower() for a in scales.get("axes", list("tczyx"))]
        labels = [str(ch.get("label", "")) for ch in attrs["omero"]["channels"]] if "omero" in attrs else None
    except (ImageReadError, KeyError, IndexError, TypeError, AttributeError) as e:
        raise ImageReadError(f"{pf.where}: no readable multiscale image metadata ({type(e).__name__}: "
                             f"{e})") from None
    if not _inside(dataset):
        raise ImageReadError(f"{pf.where}: level 0 path {dataset!r} lies outside the field")
    return dataset, axes, labels


def stack_plane(axis: str, n: int, z_plane: int, where: str, axes: str) -> int:
    """The plane to take of a Z or T ``axis`` (any other non-image axis) of ``n`` planes: the only one, else
    ``z_plane`` (TIFF_Z_PLANE); an ImageReadError naming ``where`` when it picks none. Plates and TIFFs."""
    if n == 1:
        return 0
    if 0 <= z_plane < n:
        return z_plane
    ask = ("set TIFF_Z_PLANE to the plane to take" if z_plane < 0
           else f"TIFF_Z_PLANE {z_plane} is not one of them")
    kind = STACK_AXES.get(axis.lower(), f"an axis {axis!r}")
    raise ImageReadError(f"{where}: {kind} of {n} planes (axes {axes}), not channels: {ask}")


def _plane_index(axes: list[str], shape: tuple, z_plane: int, where: str) -> list:
    """Per axis: ``slice(None)`` for y and x, None for c, the plane taken of any other (t, z)."""
    return [None if a == "c" else slice(None) if a in ("y", "x")
            else stack_plane(a, n, z_plane, where, "".join(axes)) for a, n in zip(axes, shape)]


def _check_array(arr, where: str, limit: int) -> None:
    """Refuse, before any chunk is read, a pixel type other than integers and floats and a chunk (what
    zarr decodes at once) of more than ``limit`` (MAX_PIXELS) values."""
    kind = np.dtype(arr.dtype)
    if not (np.issubdtype(kind, np.integer) or np.issubdtype(kind, np.floating)):
        raise ImageReadError(f"{where}: pixel type {kind} is not read (integers or floats only)")
    chunk = int(np.prod([int(n) for n in arr.chunks], dtype=object))
    if chunk > limit:
        raise ImageReadError(f"{where}: too large to decode: chunks of {chunk} pixels "
                             f"({' x '.join(str(n) for n in arr.chunks)}; MAX_PIXELS {limit})")


def read_plate_field(pf: PlateField, names: list[str], planes: list[int], z_plane: int,
                     budget: images.PixelBudget) -> tuple[list[np.ndarray], list[str]]:
    """The four channels of a plate's field (2-D, dtype as stored) picked by :func:`channel_indices`,
    and how each is named in messages; the budget takes ``4 x H x W`` before any chunk is read."""
    try:
        import zarr  # only a plate's pixels need zarr (a Kaggle notebook runs without it)
    except ImportError:
        raise ImageReadError("reading an OME-Zarr plate needs the zarr package: pip install zarr") from None
    dataset, axes, labels = _image_meta(pf)
    try:
        arr = zarr.open_array(str(pf.group / dataset), mode="r")
    except Exception as e:  # noqa: BLE001 - any reader failure is this field's
        raise ImageReadError(f"{pf.where}/{dataset}: cannot open the array ({type(e).__name__})") from None
    if len(axes) != arr.ndim or not {"y", "x"} <= set(axes) or len(set(axes)) != len(axes):
        raise ImageReadError(f"{pf.where}: axes {axes} do not fit an array of shape {arr.shape} (y and x "
                             "needed, each axis once)")
    index = _plane_index(axes, arr.shape, z_plane, pf.where)
    n = arr.shape[axes.index("c")] if "c" in axes else 1
    picked = channel_indices(labels, list(names), list(planes), n, pf.where)
    budget.take((len(picked), arr.shape[axes.index("y")], arr.shape[axes.index("x")]))
    _check_array(arr, pf.where, budget.limit)
    try:  # the four channels in one read: each chunk is decoded once
        block = np.asarray(arr.oindex[tuple(picked if i is None else i for i in index)])
    except Exception as e:  # noqa: BLE001
        raise ImageReadError(f"{pf.where}/{dataset}: cannot read it ({type(e).__name__})") from None
    kept = [a for a, i in zip(axes, index) if not isinstance(i, int)]  # c, y and x in the stored order
    chans = list(np.moveaxis(block, [kept.index("c"), kept.index("y"), kept.index("x")], [0, 1, 2]))
    shown = [f"{pf.where} channel {labels[c]!r}" if labels and c < len(labels) else f"{pf.where} channel {c}"
             for c in picked]
    return chans, shown
