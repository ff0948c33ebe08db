"""Reading and writing images and masks; atomic writes.

Every image in memory is ``H x W x 4`` uint8 in the canonical channel order of
:mod:`common.constants` (red, green, blue, yellow). 16-bit channels are scaled to 8 bits
proportionally (``round(x / 257)``: 65535 -> 255), never truncated.
"""
from __future__ import annotations

import contextlib
import errno
import gzip
import io as _io
import json
import os
import re
import secrets
import shutil
import socket
import struct
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import tifffile

from common.constants import CHANNELS, id_problem

cv2.setNumThreads(0)

CHANNEL_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".tif.gz", ".tiff.gz")


class ImageReadError(OSError):
    """A channel file is missing, unreadable, or of the wrong shape. The message names the file."""


# errors that say the output side failed (out of space, quota, read-only, I/O, file too large)
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG)


class WriteError(SystemExit):
    """An output could not be written (disk full, quota, read-only, I/O error): fatal for the step.

    Raised by :func:`atomic_path` for any ``OSError`` of its block or of the rename (where the error
    happens decides, not its type: a read error of an input stays the item's own failure). A
    ``SystemExit``, so per-image ``except Exception`` handlers let it through and the step stops
    with this one line (exit status 1); the target is never left truncated. ``disk_full`` tells
    out-of-space (ENOSPC, EDQUOT) from other write errors."""

    def __init__(self, path: str | Path, error: OSError | None = None, message: str = "",
                 errno_: int | None = None):
        self.path = Path(path)
        self.errno = error.errno if error is not None else errno_
        self.disk_full = self.errno in (errno.ENOSPC, errno.EDQUOT)
        if not message:
            why = (error.strerror or str(error)) if error is not None else "write error"
            message = (f"cannot write {self.path}: {why} ({free_space(self.path.parent)} free on that "
                       "filesystem); nothing truncated was left")
        super().__init__(message)

    def __reduce__(self):  # raised in a pool worker, re-raised in the parent
        return type(self), (self.path, None, str(self.code), self.errno)


def free_space(folder: str | Path) -> str:
    """Free space of the filesystem holding ``folder`` (or its nearest existing parent), e.g. ``12 KB``."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        n = float(shutil.disk_usage(folder).free)
    except OSError:
        return "unknown space"
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return ""  # pragma: no cover


# ----------------------------------------------------------------------------- atomic writes
# A temporary file of atomic_path is ``.{name}.{host}-{pid}-{token}.tmp`` beside its target: hidden,
# and ending in ".tmp", so no step's glob ("*.json", "*.png", "*.pth") ever matches it. Writers
# that choose a format by the extension use :func:`target_name` (see :func:`imwrite`).
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<tag>[A-Za-z0-9_-]+)\.tmp$")
# the names of earlier versions: ``.{name}.{8 random chars}.tmp{suffix}`` (suffix = name's)
_LEGACY_TMP_RE = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp(?P<suffix>(\.[A-Za-z0-9]+){1,2})$")
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
_STARTED = time.time()            # temporaries of this process older than this are a former process's
OTHER_HOST_TEMP_AGE_S = 3600.0    # a temporary of another machine (shared disk) is stale after this


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def target_name(path: str | Path) -> str:
    """The file name a temporary of :func:`atomic_path` stands for (the name itself otherwise)."""
    m = _TMP_RE.match(Path(path).name)
    return m["name"] if m else Path(path).name


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary name never ends in ``path``'s suffix (see :func:`target_name`); it is created
    empty with the umask's permissions, which the final file keeps. On an exception the
    temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            tmp = path.with_name(f".{path.name}.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp")
            try:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                break
            except FileExistsError:
                continue
    except OSError as e:
        raise WriteError(path, e) from e
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # writers that replace the file (os.replace, mkstemp) make 0600
        os.replace(tmp, path)
    except OSError as e:  # in the block or the rename: a write error of this output, fatal
        if isinstance(e, ImageReadError):
            raise
        raise WriteError(path, e) from e
    finally:
        with contextlib.suppress(OSError):
            if tmp.exists():
                tmp.unlink()


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user counts; a zombie too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def is_stale_temp(path: str | Path) -> bool:
    """Whether ``path`` is a temporary of :func:`atomic_path` (or a checkpoint's ``.{name}.{pid}.tmp``)
    whose writer is gone: its process has ended (this machine), it predates this process (same pid),
    it is older than ``OTHER_HOST_TEMP_AGE_S`` (another machine), or it has an earlier version's name."""
    path = Path(path)
    name = path.name
    legacy = _LEGACY_TMP_RE.match(name)
    if legacy and legacy["name"].endswith(legacy["suffix"]):
        return True
    m = _TMP_RE.match(name)
    if not m:
        return False
    parts = m["tag"].split("-")
    host, pid = (_HOST, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return False
    if host != _HOST:
        return time.time() - mtime > OTHER_HOST_TEMP_AGE_S
    if not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return mtime < _STARTED
    return not pid_alive(int(pid))


def remove_stale_temps(folder: str | Path, recursive: bool = False) -> int:
    """Delete the orphaned temporaries (see :func:`is_stale_temp`) in ``folder`` (and below it with
    ``recursive``); the number removed. A missing folder removes nothing."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in (folder.rglob(".*.tmp*") if recursive else folder.glob(".*.tmp*")):
        if p.is_file() and is_stale_temp(p):
            try:
                p.unlink()
                n += 1
            except FileNotFoundError:
                pass
    return n


def imwrite(path: str | Path, img: np.ndarray, params: tuple = ()) -> Path:
    """``cv2.imwrite`` whose format is chosen by the extension of :func:`target_name` (so it also
    works on a temporary of :func:`atomic_path`); raises OSError when encoding fails."""
    path = Path(path)
    ext = Path(target_name(path)).suffix or ".png"
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(img), list(params))
    if not ok:
        raise OSError(f"{target_name(path)}: cannot encode as {ext}")
    path.write_bytes(buf.tobytes())
    return path


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


# ----------------------------------------------------------------------------- Kaggle datasets
KAGGLE_METADATA = "dataset-metadata.json"  # what `kaggle datasets create -p <folder>` reads
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*/[a-z0-9][a-z0-9-]{1,48}[a-z0-9]$")


def dataset_metadata(dataset_id: str, title: str = "") -> dict:
    """What ``kaggle datasets create`` needs: title (default the slug), id ``owner/slug`` (slug:
    3-50 lower-case letters, digits, '-'), licence CC0-1.0. Raises ValueError naming the id."""
    if not _SLUG.match(dataset_id or ""):
        raise ValueError(f"DATASET_ID {dataset_id!r}: expected owner/slug (slug: 3-50 lower-case letters, "
                         "digits and '-')")
    return {"title": title or dataset_id.split("/")[1], "id": dataset_id, "licenses": [{"name": "CC0-1.0"}]}


def write_dataset_metadata(folder: str | Path, meta: dict) -> Path:
    """``folder/dataset-metadata.json`` (:func:`dataset_metadata`): ``kaggle datasets create -p folder``."""
    return atomic_write_text(Path(folder) / KAGGLE_METADATA, json.dumps(meta, indent=2) + "\n")


# ----------------------------------------------------------------------------- tables of images
def read_id_table(path: str | Path, columns: tuple[str, ...] | list[str] = ("ID",),
                  int_columns: tuple[str, ...] | list[str] = (), *, unique: bool = True,
                  str_columns: tuple[str, ...] | list[str] = ("Label",)):
    """The one reader of a CSV that holds image IDs (``train.csv``, ``train_external.csv``,
    ``sample_submission.csv``, ``train_all.csv``, ``test.csv``, crop indexes, OOF and pseudo-label
    tables), checked before any image is touched: the ``columns`` exist; every ID is present, a plain
    name (:func:`common.constants.id_problem`) and, with ``unique``, unique; ``int_columns`` hold
    positive integers. IDs and ``str_columns`` are read as strings with no NA parsing (an ID ``NA``
    or ``nan`` stays that string; an empty Label stays ""); other empty cells are NaN. Anything else
    is a SystemExit naming the file and the row (line numbers of the file: the header is line 1)."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"{path}: not found")
    try:
        header = list(pd.read_csv(path, nrows=0).columns)
        as_str = [c for c in header if c == "ID" or c in str_columns]
        df = pd.read_csv(path, dtype={c: str for c in as_str}, keep_default_na=False,
                         na_values={c: [""] for c in header if c not in as_str})
    except Exception as e:  # noqa: BLE001
        raise SystemExit(f"{path}: cannot read CSV ({e})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SystemExit(f"{path}: missing column(s) {missing}; has {list(df.columns)}")
    for i, image_id in enumerate(df["ID"] if "ID" in df.columns else []):
        why = id_problem(image_id)
        if why:
            shown = image_id if len(str(image_id)) <= 60 else f"{str(image_id)[:40]}...{str(image_id)[-8:]}"
            raise SystemExit(f"{path}: row {i + 2}: ID {shown!r} {why}")
    dup = df["ID"][df["ID"].duplicated()] if "ID" in df.columns and unique else []
    if len(dup):
        raise SystemExit(f"{path}: row {int(dup.index[0]) + 2}: duplicated ID {dup.iloc[0]!r}")
    for c in int_columns:
        values = pd.to_numeric(df[c], errors="coerce")
        bad = ~((values > 0) & (values == values.round()))
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise SystemExit(f"{path}: row {i + 2}: {c} {df[c].iloc[i]!r} is not a positive whole number")
        df[c] = values.astype(int)
    return df


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
