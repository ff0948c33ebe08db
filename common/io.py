"""Reading and writing images and masks; atomic writes.

Every image in memory is ``H x W x 4`` uint8 in the canonical channel order of
:mod:`common.constants` (red, green, blue, yellow). 16-bit channels are scaled to 8 bits
proportionally (``round(x / 257)``: 65535 -> 255), never truncated.
"""
from __future__ import annotations

import contextlib
import gzip
import io as _io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from common.constants import CHANNELS
from common.resize import resize_image  # noqa: F401 - the one image resize, re-exported

cv2.setNumThreads(0)

CHANNEL_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".tif.gz", ".tiff.gz")


class ImageReadError(OSError):
    """A channel file is missing, unreadable, or of the wrong shape. The message names the file."""


# ----------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_to_csv(df, path: str | Path, **kw) -> Path:
    """``DataFrame.to_csv`` written to a temporary name and renamed."""
    kw.setdefault("index", False)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **kw)
    return Path(path)


# ----------------------------------------------------------------------------- channels
def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale an 8/16-bit (or float in [0,1]) single channel to uint8 proportionally."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):  # e.g. int32 from some TIFF readers: assume 16-bit range
        return to_uint8(np.clip(arr, 0, 65535).astype(np.uint16))
    raise ImageReadError(f"unsupported dtype {arr.dtype}")


def _decode(data: bytes, path: Path) -> np.ndarray:
    name = path.name.lower()
    if name.endswith((".tif", ".tiff", ".tif.gz", ".tiff.gz")):
        import tifffile

        if name.endswith(".gz"):
            data = gzip.decompress(data)
        return tifffile.imread(_io.BytesIO(data))
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError("not a decodable image")
    return arr


def read_channel(path: str | Path) -> np.ndarray:
    """One grayscale channel file (PNG 8/16-bit, JPG, TIF, TIF.GZ) as a 2-D uint8 array."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: channel file is missing")
    try:
        arr = _decode(path.read_bytes(), path)
    except Exception as e:  # noqa: BLE001 - any decoder failure is reported with the file name
        raise ImageReadError(f"{path}: cannot decode image ({e})") from e
    if arr.ndim == 3:  # RGB(A) saved channel (some external JPGs): take the brightest plane
        arr = arr.max(axis=2) if arr.shape[2] in (3, 4) else arr[..., 0]
    if arr.ndim != 2:
        raise ImageReadError(f"{path}: expected a 2-D grayscale image, got shape {arr.shape}")
    try:
        return to_uint8(arr)
    except ImageReadError as e:
        raise ImageReadError(f"{path}: {e}") from e


def channel_path(folder: str | Path, image_id: str, channel: str) -> Path:
    """The first existing ``{folder}/{image_id}_{channel}{ext}`` (PNG preferred), else the PNG path."""
    folder = Path(folder)
    for ext in CHANNEL_EXTS:
        p = folder / f"{image_id}_{channel}{ext}"
        if p.is_file():
            return p
    return folder / f"{image_id}_{channel}.png"


def read_image(folder: str | Path, image_id: str) -> np.ndarray:
    """The 4 channel files of one image in the competition/HPA layout -> H x W x 4 uint8 (RGBY)."""
    chans = [read_channel(channel_path(folder, image_id, c)) for c in CHANNELS]
    shapes = {c.shape for c in chans}
    if len(shapes) != 1:
        raise ImageReadError(f"{Path(folder) / image_id}_*: channel sizes differ: {sorted(shapes)}")
    return np.stack(chans, axis=-1)


def write_channels(folder: str | Path, image_id: str, img: np.ndarray) -> None:
    """Write H x W x 4 (RGBY) as the competition layout ``{id}_{red,green,blue,yellow}.png``."""
    for i, c in enumerate(CHANNELS):
        p = Path(folder) / f"{image_id}_{c}.png"
        with atomic_path(p) as tmp:
            if not cv2.imwrite(str(tmp), np.ascontiguousarray(img[..., i])):
                raise OSError(f"{p}: cannot write")


# ----------------------------------------------------------------------------- 4-channel PNG
def write_rgby(path: str | Path, img: np.ndarray) -> Path:
    """Write an H x W x 4 uint8 RGBY image as one 4-channel PNG (stored as R,G,B,A = R,G,B,Y)."""
    if img.ndim != 3 or img.shape[2] != 4 or img.dtype != np.uint8:
        raise ValueError(f"{path}: expected H x W x 4 uint8, got {img.shape} {img.dtype}")
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(img[..., [2, 1, 0, 3]])):  # cv2 wants BGRA
            raise OSError(f"{path}: cannot write")
    return Path(path)


def read_rgby(path: str | Path) -> np.ndarray:
    """Read a 4-channel PNG written by :func:`write_rgby` -> H x W x 4 uint8 RGBY."""
    path = Path(path)
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageReadError(f"{path}: missing or not a decodable image")
    if arr.ndim != 3 or arr.shape[2] != 4:
        raise ImageReadError(f"{path}: expected a 4-channel PNG, got shape {arr.shape}")
    return to_uint8(arr)[..., [2, 1, 0, 3]]


# ----------------------------------------------------------------------------- label maps
def save_masks(path: str | Path, cell: np.ndarray, nucleus: np.ndarray | None = None) -> Path:
    """Save a cell label map (and its nucleus map, same ids) as ``.npz`` with keys cell/nucleus.

    Label maps are uint16 (0 = background, cells 1..n); more than 65535 cells is an error.
    """
    def u16(a: np.ndarray, what: str) -> np.ndarray:
        if a.size and int(a.max()) > 65535:
            raise ValueError(f"{path}: {what} label map has ids above 65535")
        return a.astype(np.uint16)

    arrays = {"cell": u16(cell, "cell")}
    if nucleus is not None:
        arrays["nucleus"] = u16(nucleus, "nucleus")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return Path(path)


def load_masks(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(cell, nucleus)`` uint16 label maps from :func:`save_masks` (nucleus may be None)."""
    path = Path(path)
    try:
        with np.load(path) as z:
            return z["cell"], (z["nucleus"] if "nucleus" in z.files else None)
    except Exception as e:  # noqa: BLE001
        raise ImageReadError(f"{path}: cannot read mask file ({e})") from e


def write_label_png(path: str | Path, labels: np.ndarray) -> Path:
    """A uint16 label map as a 16-bit PNG (the format of the HPA official masks)."""
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), labels.astype(np.uint16)):
            raise OSError(f"{path}: cannot write")
    return Path(path)


def read_label_png(path: str | Path) -> np.ndarray:
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageReadError(f"{path}: missing or not a decodable label map")
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr.astype(np.uint16) if arr.dtype != np.uint16 else arr
