"""Pixels: reading and writing images, channels and label maps within a pixel budget.

Every image in memory is ``H x W x 4`` uint8 in the canonical channel order of
:mod:`common.constants` (red, green, blue, yellow). 16-bit channels are scaled to 8 bits
proportionally (``round(x / 257)``: 65535 -> 255), never truncated. Files, tables and atomic writes
are :mod:`common.io`'s.
"""
from __future__ import annotations

import gzip
import io as _io
import struct
import tempfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import tifffile

from common.constants import CHANNELS
from common.io import ImageReadError, atomic_path, imwrite

CHANNEL_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".tif.gz", ".tiff.gz")


# ----------------------------------------------------------------------------- pixel budget
# What one image or field may hold before anything is decoded: its files' headers are read first (a
# TIFF's series shape, a PNG's IHDR, a JPEG's frame header); a .tif.gz is gunzipped to a temporary
# file, at most GZ_BYTES_PER_PIXEL bytes per pixel value of the budget left (+ GZ_SLACK), then read
# as a TIFF.
GZ_BYTES_PER_PIXEL = 8   # float64, the widest pixel type
GZ_SLACK = 1 << 20       # bytes of a TIFF's own structure beyond its pixels
_CHUNK = 1 << 20         # bytes (gunzip) or pixel values (conversions) handled at a time
_PNG = b"\x89PNG\r\n\x1a\n"
_TIFF = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_PLANES = {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}  # IHDR colour type -> planes as cv2 decodes it (BGR(A))
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class PixelBudget:
    """At most ``limit`` pixel values (height x width x planes of every file) decoded for one image,
    all its files together (the constant MAX_PIXELS); :meth:`take` is called with each file's header
    shape before that file is decoded."""

    def __init__(self, limit: int):
        self.limit, self.used, self.last = int(limit), 0, 0

    def take(self, shape: tuple) -> None:
        n = int(np.prod([int(s) for s in shape], dtype=object))
        if self.used + n > self.limit:
            others = f" and {self.used} in the other files" if self.used else ""
            dims = " x ".join(str(int(s)) for s in shape)
            raise ImageReadError(f"too large to decode: {self.used + n} pixels ({dims}{others}; "
                                 f"MAX_PIXELS {self.limit})")
        self.used, self.last = self.used + n, n

    def gunzip(self, path: Path, out) -> None:
        """Stream-decompress ``path`` into the open file ``out``, at most :data:`GZ_BYTES_PER_PIXEL` bytes
        per pixel value left (+ :data:`GZ_SLACK`); more is an :class:`ImageReadError`."""
        cap, total = (self.limit - self.used) * GZ_BYTES_PER_PIXEL + GZ_SLACK, 0
        with gzip.open(path, "rb") as src:
            while chunk := src.read(_CHUNK):
                total += len(chunk)
                if total > cap:
                    raise ImageReadError(f"too large to decode: gunzips to more than {cap} bytes "
                                         f"({GZ_BYTES_PER_PIXEL} bytes per pixel of MAX_PIXELS {self.limit})")
                out.write(chunk)
        out.seek(0)


class _Undecodable(ValueError):
    """A file that is no image of a known kind; its message is safe to show (it quotes no bytes)."""


def _png_shape(head: bytes) -> tuple:
    if len(head) < 26 or head[12:16] != b"IHDR" or head[25] not in _PNG_PLANES:
        raise _Undecodable("damaged PNG header")
    (w, h), planes = struct.unpack_from(">II", head, 16), _PNG_PLANES[head[25]]
    return (h, w) if planes == 1 else (h, w, planes)


def _jpeg_shape(data: bytes) -> tuple:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD8:  # fill byte, markers without length
            i += 1 if marker == 0xFF else 2
            continue
        if marker in _JPEG_SOF:
            h, w, planes = struct.unpack_from(">HHB", data, i + 5)
            return (h, w) if planes == 1 else (h, w, planes)
        i += 2 + struct.unpack_from(">H", data, i + 2)[0]
    raise _Undecodable("no JPEG frame header")


def _read_tiff(path: Path, budget: PixelBudget | None) -> tuple[np.ndarray, str]:
    """The first series of a TIFF (gzipped or not) and tifffile's axes letters for it; with a budget, a
    gzipped one is gunzipped to a temporary file by :meth:`PixelBudget.gunzip`."""
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    if not gzipped:
        return _tiff_series(path, budget)
    if budget is None:
        return _tiff_series(_io.BytesIO(gzip.decompress(path.read_bytes())), budget)
    with tempfile.NamedTemporaryFile(suffix=".tif") as fh:  # tifffile wants a named file
        budget.gunzip(path, fh)
        return _tiff_series(fh, budget)


def _tiff_series(src, budget: PixelBudget | None) -> tuple[np.ndarray, str]:
    with tifffile.TiffFile(src) as tif:
        if not tif.series:
            raise _Undecodable("not a valid TIFF file: no image found in it")
        series = tif.series[0]
        if budget is not None:
            budget.take(series.shape)
        return series.asarray(), series.axes


def _decode(path: Path, budget: PixelBudget | None) -> tuple[np.ndarray, str]:
    with open(path, "rb") as fh:
        head = fh.read(26)
    if head.startswith(_TIFF) or head.startswith(b"\x1f\x8b"):
        return _read_tiff(path, budget)
    if not head.startswith((_PNG, b"\xff\xd8")):
        raise _Undecodable("not a PNG, JPEG or TIFF file")
    data = path.read_bytes()
    if budget is not None:
        budget.take(_png_shape(head) if head.startswith(_PNG) else _jpeg_shape(data))
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise _Undecodable("damaged PNG or JPEG data")
    return arr, "YX" if arr.ndim == 2 else "YXS"


def decode_problem(e: BaseException) -> str:
    """A short reason for a decoder's exception that quotes none of the file's bytes (tifffile's
    ``not a TIFF file: header=b'...'`` would show the start of whatever a link points to)."""
    if isinstance(e, _Undecodable):
        return str(e)
    if isinstance(e, tifffile.TiffFileError):
        return "not a valid TIFF file"
    if "imagecodecs" in str(e):
        return "its compression needs the imagecodecs package: pip install imagecodecs"
    if isinstance(e, (EOFError, zlib.error, gzip.BadGzipFile)):
        return "damaged or truncated gzip data"
    if isinstance(e, OSError) and e.strerror:
        return f"cannot read it: {e.strerror}"
    return f"damaged image data ({type(e).__name__})"


def read_planes(path: str | Path, budget: PixelBudget | None = None) -> tuple[np.ndarray, str]:
    """An image file (PNG, JPG, TIF, TIF.GZ, told by its first bytes) as decoded, dtype and axes
    unchanged, and its axes letters (tifffile's for a TIFF: ``CYX``, ``ZYX``, ``QYX``, ...; ``YX`` or
    ``YXS`` for a PNG / JPEG); with ``budget`` its header's shape is taken from it first. A missing
    file is an :class:`ImageReadError` naming its path; an undecodable or too large one names the file
    and says why in a few words (never quoting its bytes)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: channel file is missing")
    try:
        return _decode(path, budget)
    except ImageReadError as e:
        raise ImageReadError(f"{path.name}: {e}") from None
    except MemoryError:
        n = f": {budget.last} pixels" if budget is not None and budget.last else ""
        raise ImageReadError(f"{path.name}: too large to decode{n} (out of memory)") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is reported with the file name
        raise ImageReadError(f"{path.name}: cannot decode image ({decode_problem(e)})") from None


def read_array(path: str | Path, budget: PixelBudget | None = None) -> np.ndarray:
    """The array of :func:`read_planes`."""
    return read_planes(path, budget)[0]


# ----------------------------------------------------------------------------- pixel values
def blockwise(arr: np.ndarray, fn) -> np.ndarray:
    """``fn`` applied to blocks of rows of ``arr`` into one uint8 array, so its temporaries stay small
    (a conversion of a large field costs little more than the field and its 8-bit copy)."""
    out = np.empty(arr.shape, np.uint8)
    step = max(1, _CHUNK // max(1, arr[0].size if arr.ndim else 1))
    for a in range(0, len(arr), step):
        out[a:a + step] = fn(arr[a:a + step])
    return out


def value_range(arr: np.ndarray) -> tuple:
    """``(lowest, highest)`` value of ``arr`` (NaN or inf when it holds them)."""
    return (arr.min().item(), arr.max().item()) if arr.size else (0, 0)


def value_problem(arr: np.ndarray, bits: int = 16) -> str:
    """Why :func:`to_uint8` refuses ``arr`` ("" when it does not): NaN or inf; floats outside [0, 1];
    negative integers; integers beyond ``bits`` bits; other types. Nothing is clipped."""
    if arr.dtype == np.uint8:
        return ""
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        return f"pixel type {arr.dtype} is not read (integers or floats only)"
    lo, hi = value_range(arr)
    if np.issubdtype(arr.dtype, np.floating):
        if not (np.isfinite(lo) and np.isfinite(hi)):
            return "holds NaN or infinite values"
        return "" if 0 <= lo and hi <= 1 else f"float values from {lo:g} to {hi:g}, outside [0, 1]"
    if lo < 0:
        return f"negative values (down to {lo}; {arr.dtype})"
    return "" if hi < 2 ** bits else f"values up to {hi} need more than {bits} bits ({arr.dtype})"


def to_uint8(arr: np.ndarray, bits: int = 16) -> np.ndarray:
    """A channel (or several) as uint8, proportionally and never clipped: uint8 as it is; integers
    in 0..2**bits-1 (16 by default) taken to 16 bits (``x * 65535 / (2**bits - 1)``, rounded) and then
    ``round(x / 257)`` (65535 -> 255); floats in [0, 1] as ``round(x * 255)``. Anything else
    (:func:`value_problem`) is an :class:`ImageReadError` with its reason."""
    why = value_problem(arr, bits)
    if why:
        raise ImageReadError(why)
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        return blockwise(arr, lambda b: np.rint(b * 255.0))
    top = 2 ** bits - 1
    if bits == 16:
        return blockwise(arr, lambda b: (b.astype(np.uint32) + 128) // 257)
    return blockwise(arr, lambda b: ((b.astype(np.uint64) * 65535 + top // 2) // top + 128) // 257)


def encode_png(img: np.ndarray) -> bytes:
    """An image (uint8 or uint16; 1, 3 (BGR) or 4 channels) as PNG bytes, e.g. to hold many in memory."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img))
    if not ok:
        raise ValueError(f"cannot encode a {img.shape} {img.dtype} array as PNG")
    return buf.tobytes()


def encode_jpeg(img: np.ndarray, quality: int) -> bytes:
    """A uint8 image (gray or BGR) as JPEG bytes of ``quality`` (0..100)."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"cannot encode a {img.shape} {img.dtype} array as JPEG")
    return buf.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """The array of :func:`encode_png` (or any PNG/JPG bytes), unchanged."""
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


# ----------------------------------------------------------------------------- channels
def read_gray(path: str | Path, budget: PixelBudget | None = None) -> np.ndarray:
    """One grayscale channel file as a 2-D array, dtype unchanged (8/16-bit, float); ``budget``: see
    :func:`read_array`."""
    path = Path(path)
    arr = read_array(path, budget)
    if arr.ndim == 3:  # RGB(A) saved channel (some external JPGs): take the brightest plane
        arr = arr.max(axis=2) if arr.shape[2] in (3, 4) else arr[..., 0]
    if arr.ndim != 2:
        raise ImageReadError(f"{path}: expected a 2-D grayscale image, got shape {arr.shape}")
    return arr


def read_channel(path: str | Path, budget: PixelBudget | None = None) -> np.ndarray:
    """One grayscale channel file (PNG 8/16-bit, JPG, TIF, TIF.GZ) as a 2-D uint8 array (:func:`to_uint8`)."""
    path = Path(path)
    arr = read_gray(path, budget)
    try:
        return to_uint8(arr)
    except ImageReadError as e:
        raise ImageReadError(f"{path}: {e}") from None


def channel_path(folder: str | Path, image_id: str, channel: str) -> Path:
    """The first existing ``{folder}/{image_id}_{channel}{ext}`` (PNG preferred), else the PNG path."""
    folder = Path(folder)
    for ext in CHANNEL_EXTS:
        p = folder / f"{image_id}_{channel}{ext}"
        if p.is_file():
            return p
    return folder / f"{image_id}_{channel}.png"


def read_image(folder: str | Path, image_id: str, max_pixels: int | None = None) -> np.ndarray:
    """The 4 channel files of one image in the competition/HPA layout -> H x W x 4 uint8 (RGBY).
    ``max_pixels`` (the constant MAX_PIXELS of the step): the four files' headers together may
    declare at most this many pixel values, else an :class:`ImageReadError` before the file that
    crosses it is decoded (None: no budget, for originals a step before has read)."""
    budget = PixelBudget(max_pixels) if max_pixels is not None else None
    chans = [read_channel(channel_path(folder, image_id, c), budget) for c in CHANNELS]
    shapes = {c.shape for c in chans}
    if len(shapes) != 1:
        raise ImageReadError(f"{Path(folder) / image_id}_*: channel sizes differ: {sorted(shapes)}")
    return np.stack(chans, axis=-1)

def write_channels(folder: str | Path, image_id: str, img: np.ndarray) -> None:
    """Write H x W x 4 (RGBY) as the competition layout ``{id}_{red,green,blue,yellow}.png``."""
    for i, c in enumerate(CHANNELS):
        p = Path(folder) / f"{image_id}_{c}.png"
        with atomic_path(p) as tmp:
            imwrite(tmp, img[..., i])


# ----------------------------------------------------------------------------- 4-channel PNG
def write_rgby(path: str | Path, img: np.ndarray) -> Path:
    """Write an H x W x 4 uint8 RGBY image as one 4-channel PNG (stored as R,G,B,A = R,G,B,Y)."""
    if img.ndim != 3 or img.shape[2] != 4 or img.dtype != np.uint8:
        raise ValueError(f"{path}: expected H x W x 4 uint8, got {img.shape} {img.dtype}")
    with atomic_path(path) as tmp:
        imwrite(tmp, img[..., [2, 1, 0, 3]])  # cv2 wants BGRA
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
        imwrite(tmp, labels.astype(np.uint16))
    return Path(path)


def read_label_png(path: str | Path) -> np.ndarray:
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageReadError(f"{path}: missing or not a decodable label map")
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr.astype(np.uint16) if arr.dtype != np.uint16 else arr
