"""Fields of view from a folder of one's own images (S5 ``--IMAGES``): found, read, made square.

Layouts (one folder, files side by side; hidden files and other extensions are ignored):

* one file per channel, ``{ID}{suffix}{ext}``: the four ``suffixes`` name the microtubule, protein,
  nucleus and ER channels in the canonical order (``constants.CHANNELS``); the competition's
  ``_red, _green, _blue, _yellow`` by default, ``ext`` any of ``io.CHANNEL_EXTS``;
* one multi-channel TIFF per field, ``{ID}.tif`` / ``{ID}.tiff``: ``planes`` says which plane holds
  each channel. The plane axis: the axis that is not Y or X in tifffile's series axes (``CYX``,
  ``QYX``, ``YXS``, ...; singleton axes dropped); when the axes do not name Y and X, the smaller of
  the first and the last axis (``C x H x W`` or ``H x W x C``).

A file name ending in a suffix is a channel file (the longest matching suffix); another ``.tif`` /
``.tiff`` is a multi-channel TIFF. 8- or 16-bit (or float in [0, 1]); 16-bit is scaled to 8 bits
proportionally (``io.to_uint8``) unless ``rescale`` gives percentiles to stretch each channel to.

Any size: a non-square field is padded with zeros at the bottom and right to a square before
``fov.prepare`` (the working image and the models are square), and its original-size label map is
cut back to ``H x W``; a square field is unchanged. A field that cannot be used (bad ID, two files
for one ID or channel, a channel missing or unreadable, too few planes, channels of other sizes) is a
failure with its reason; the others go on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tifffile

from common import constants, fov, io, segmentation
from common.constants import CHANNELS, id_problem

TIFF_EXTS = (".tif", ".tiff")


class FieldFailed(Exception):
    """One field could not be read or segmented; S5 lists it with this reason and goes on."""


@dataclass(frozen=True)
class Field:
    """A field of view found in a folder: one multi-channel TIFF, or one file per channel (RGBY)."""

    image_id: str
    files: tuple[Path, ...]


class Loaded(NamedTuple):
    """A field ready to score: working image and label map, the original-size map and image."""

    image: np.ndarray                 # working image, size x size x 4 uint8
    labels: np.ndarray                # working-size cell label map
    labels_full: np.ndarray | None    # original-size (H x W) map (None: S2 kept none)
    original: np.ndarray | None       # original H x W x 4 image, when read
    hw: tuple[int, int] | None = None       # (H, W) of the original (None: the sample submission's)
    region: tuple[int, int] | None = None   # the field's part of the working map (None: all of it)


# ----------------------------------------------------------------------------- finding
def _split_ext(name: str) -> tuple[str, str] | None:
    low = name.lower()
    for ext in sorted(io.CHANNEL_EXTS, key=len, reverse=True):
        if low.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], ext
    return None


def _classify(folder: Path, suffixes: list[str]) -> tuple[dict, dict]:
    """``{ID: [tiff paths]}`` and ``{ID: {channel index: [paths]}}`` of the files in ``folder``."""
    tiffs: dict[str, list[Path]] = {}
    chans: dict[str, dict[int, list[Path]]] = {}
    order = sorted(range(len(suffixes)), key=lambda k: -len(suffixes[k]))
    for path in sorted(folder.iterdir()):
        split = _split_ext(path.name) if path.is_file() and not path.name.startswith(".") else None
        if split is None:
            continue
        stem, ext = split
        k = next((k for k in order if suffixes[k] and stem.endswith(suffixes[k])
                  and len(stem) > len(suffixes[k])), None)
        if k is not None:
            chans.setdefault(stem[: -len(suffixes[k])], {}).setdefault(k, []).append(path)
        elif ext in TIFF_EXTS:
            tiffs.setdefault(stem, []).append(path)
    return tiffs, chans


def _problem(image_id: str, tiffs: list[Path], chans: dict[int, list[Path]], suffixes: list[str]) -> str:
    """Why the files found for ``image_id`` make no field ("" when they do)."""
    names = [p.name for p in tiffs] + [p.name for k in sorted(chans) for p in chans[k]]
    why = id_problem(image_id)
    if why:
        return f"ID {image_id!r} (from {names[0]}) {why}"
    if tiffs and chans:
        return "two layouts claim this ID: " + ", ".join(names)
    if len(tiffs) > 1:
        return "several multi-channel TIFFs claim this ID: " + ", ".join(names)
    twice = [k for k in sorted(chans) if len(chans[k]) > 1]
    if twice:
        return (f"two files for the {CHANNELS[twice[0]]} channel ({suffixes[twice[0]]}): "
                + ", ".join(p.name for p in chans[twice[0]]))
    missing = [k for k in range(len(CHANNELS)) if k not in chans]
    if chans and missing:
        return "channel file missing: " + ", ".join(
            f"{image_id}{suffixes[k]}.* ({CHANNELS[k]})" for k in missing)
    return ""


def discover(folder: str | Path, suffixes: list[str]) -> tuple[list[Field], list[dict]]:
    """The fields of ``folder`` sorted by ID, and the failures (``{"ID", "reason"}``) of the IDs whose
    files make no field. Raises ValueError (naming the folder and what was looked for) when the folder
    does not exist or holds no recognisable field."""
    folder = Path(folder)
    if len(suffixes) != len(CHANNELS) or len(set(suffixes)) != len(suffixes):
        raise ValueError(f"CHANNEL_SUFFIXES {suffixes}: give {len(CHANNELS)} different file-name endings")
    looked = (f"one file per channel {{ID}}{{{','.join(suffixes)}}}.{{png,jpg,tif,...}} or one "
              "multi-channel {ID}.tif/.tiff")
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder (looked for {looked})")
    tiffs, chans = _classify(folder, list(suffixes))
    found, failures = [], []
    for image_id in sorted(set(tiffs) | set(chans)):
        t, c = tiffs.get(image_id, []), chans.get(image_id, {})
        why = _problem(image_id, t, c, list(suffixes))
        if why:
            failures.append({"ID": image_id, "reason": why})
        else:
            found.append(Field(image_id, tuple(t) if t else tuple(c[k][0] for k in range(len(CHANNELS)))))
    if not found and not failures:
        raise ValueError(f"{folder}: no field of view found (looked for {looked})")
    return found, failures


# ----------------------------------------------------------------------------- reading
def tiff_planes(path: str | Path) -> np.ndarray:
    """The planes of a multi-channel TIFF as ``P x H x W`` (see the module docstring for the axis)."""
    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            arr, axes = series.asarray(), series.axes
    except Exception as e:  # noqa: BLE001 - any decoder failure is reported with the file name
        raise io.ImageReadError(f"{path}: cannot decode image ({e})") from e
    keep = [i for i, n in enumerate(arr.shape) if n != 1]
    arr, axes = arr.squeeze(), "".join(axes[i] for i in keep) if len(axes) == arr.ndim else ""
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim != 3:
        raise io.ImageReadError(f"{path}: shape {arr.shape} (axes {axes or '?'}): expected one plane per "
                                "channel, C x H x W or H x W x C")
    if "Y" in axes and "X" in axes:
        axis = next(i for i, a in enumerate(axes) if a not in "YX")
    else:
        axis = 0 if arr.shape[0] <= arr.shape[2] else 2
    return np.moveaxis(arr, axis, 0)


def stretch(channel: np.ndarray, percentiles: list[float]) -> np.ndarray:
    """A channel stretched to uint8: ``percentiles[0]`` -> 0, ``percentiles[1]`` -> 255, clipped."""
    lo, hi = np.percentile(channel, [float(percentiles[0]), float(percentiles[1])])
    if hi <= lo:
        return np.zeros(channel.shape, np.uint8)
    scaled = (channel.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _channels(f: Field, planes: list[int]) -> list[np.ndarray]:
    if len(f.files) == 1:
        stack = tiff_planes(f.files[0])
        if max(planes) >= len(stack) or min(planes) < 0:
            raise io.ImageReadError(f"{f.files[0].name}: {len(stack)} plane(s) of {stack.shape[1]} x "
                                    f"{stack.shape[2]}; TIFF_PLANES asks for planes {list(planes)}")
        return [stack[p] for p in planes]
    return [io.read_gray(path) for path in f.files]


def read_field(f: Field, planes: list[int], rescale: list[float] | None) -> np.ndarray:
    """``H x W x 4`` uint8 RGBY of a field: ``io.to_uint8``, or ``stretch`` when ``rescale`` gives the
    percentiles. A reader failure or channels of different sizes is an ``io.ImageReadError``."""
    chans = _channels(f, list(planes))
    shapes = [c.shape for c in chans]
    if len(set(shapes)) != 1:
        raise io.ImageReadError("channel sizes differ: " + ", ".join(
            f"{p.name} {s[0]} x {s[1]}" for p, s in zip(f.files * len(chans), shapes)))
    return np.stack([stretch(c, rescale) if rescale else io.to_uint8(c) for c in chans], axis=-1)


def pad_square(image: np.ndarray) -> np.ndarray:
    """``image`` padded with zeros at the bottom and right to a square (the same array when square)."""
    h, w = image.shape[:2]
    if h == w:
        return image
    out = np.zeros((max(h, w), max(h, w), *image.shape[2:]), image.dtype)
    out[:h, :w] = image
    return out


def region(hw: tuple[int, int], side: int) -> tuple[int, int]:
    """The part ``(rows, columns)`` of a ``side``-px working map that an ``H x W`` field padded by
    :func:`pad_square` covers."""
    h, w = int(hw[0]), int(hw[1])
    s = max(h, w)
    return max(1, round(h * side / s)), max(1, round(w * side / s))


# ----------------------------------------------------------------------------- source
class FieldSource:
    """S5's images from ``cfg["IMAGES"]``: each field read, padded square, segmented by ``fov.prepare``
    (the SEGMENTER constants). ``sizes`` holds ``(H, W)`` of every field read."""

    def __init__(self, cfg, found: list[Field]):
        self.fields = {f.image_id: f for f in found}
        self.planes, self.size, self.seg_at = list(cfg["TIFF_PLANES"]), int(cfg["IMAGE_SIZE"]), cfg["SEG_AT"]
        self.rescale = list(cfg["RESCALE_PERCENTILES"]) if cfg["RESCALE"] else None
        self.segmenter = segmentation.get_segmenter(cfg["SEGMENTER"], constants.resolve(cfg["HPA_SEG_DIR"]),
                                                    device=cfg["DEVICE"], precision=cfg["SEG_PRECISION"])
        self.sizes: dict[str, tuple[int, int]] = {}
        self.n_segmented = 0

    def original(self, image_id: str) -> None:  # load() always returns the original
        return None

    def load(self, image_id: str) -> Loaded:
        try:
            original = read_field(self.fields[image_id], self.planes, self.rescale)
        except Exception as e:  # noqa: BLE001 - any reader failure is this field's
            raise FieldFailed(str(e)) from e
        hw = original.shape[:2]
        self.sizes[image_id] = hw
        try:
            f = fov.prepare([pad_square(original)], self.size, self.segmenter, self.seg_at, full=True)[0]
        except Exception as e:  # noqa: BLE001
            raise FieldFailed(f"segmentation failed: {type(e).__name__}: {e}") from e
        self.n_segmented += 1
        return Loaded(f.image, f.cell, f.cell_full[: hw[0], : hw[1]], original, hw,
                      region(hw, f.cell.shape[0]))
