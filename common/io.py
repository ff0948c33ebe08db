"""Files and tables: the one atomic writer (temporary name, then rename) and its stale temporaries,
write errors that stop a step, tables of image IDs checked on reading, Kaggle dataset metadata.

Pixels (images, channels, label maps) are :mod:`common.images`'.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from common.constants import id_problem

cv2.setNumThreads(0)

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


def atomic_to_csv_parts(frames: Iterable, columns, path: str | Path) -> Path:
    """The file :func:`atomic_to_csv` writes of the frames one below the other, written a frame at a time
    (the header once: ``columns``). Each frame must hold the whole table's column types."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        pd.DataFrame(columns=list(columns)).to_csv(f, index=False)
        for df in frames:
            if len(df):
                df.to_csv(f, index=False, header=False)
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
