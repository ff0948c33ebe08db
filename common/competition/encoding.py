"""The competition's mask string format (the only module that knows it) and submission files.

encode: (H, W) uint8 -> (H, W, 1) Fortran order -> pycocotools RLE counts -> zlib level 9
-> base64 -> ASCII. The empty 2048x2048 mask encodes to ``eNoLCAgIMAEABJkBdQ==``.

A submission is a CSV ``ID,ImageWidth,ImageHeight,PredictionString``; the string holds
space-separated triplets ``label confidence mask``, one per (cell, class), masks at the
image's original resolution. An image without cells has an empty PredictionString.
"""
from __future__ import annotations

import base64
import binascii
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from pycocotools import mask as mask_util

from common.constants import NUM_CLASSES
from common.io import atomic_to_csv, atomic_to_csv_parts, read_id_table

SUBMISSION_COLUMNS = ("ID", "ImageWidth", "ImageHeight", "PredictionString")


# ----------------------------------------------------------------------------- one mask
def encode_binary_mask(mask: np.ndarray) -> str:
    """Encode one (H, W) boolean/0-1 mask as the competition's ASCII string."""
    if mask.ndim != 2:
        raise ValueError(f"encode_binary_mask expects a 2-D mask, got shape {mask.shape}")
    m = np.asfortranarray(mask.astype(np.uint8, copy=False).reshape(mask.shape[0], mask.shape[1], 1))
    counts = mask_util.encode(m)[0]["counts"]
    return base64.b64encode(zlib.compress(counts, 9)).decode("ascii")


def _pack(counts: bytes) -> str:
    return base64.b64encode(zlib.compress(counts, 9)).decode("ascii")


def decode_to_rle(s: str, height: int, width: int) -> dict:
    """The competition string -> a pycocotools compressed RLE dict (no full mask is built)."""
    counts = zlib.decompress(base64.b64decode(s))
    return {"size": [int(height), int(width)], "counts": counts}


def decode_binary_mask(s: str, height: int, width: int) -> np.ndarray:
    """The competition string -> (H, W) bool mask."""
    return mask_util.decode(decode_to_rle(s, height, width)).astype(bool)


# ----------------------------------------------------------------------------- label maps
def encode_label_map(labels: np.ndarray) -> dict[int, str]:
    """Every cell (id > 0) of an (H, W) integer label map -> ``{id: string}``, in one pass.

    Runs of equal value along the column-major scan are found once for the whole map; each
    cell's uncompressed RLE counts (zeros, ones, zeros, ...) are assembled from its runs and
    handed to pycocotools for compression, so the result is byte-identical to
    ``encode_binary_mask(labels == id)`` at a fraction of the cost.
    """
    if labels.ndim != 2:
        raise ValueError(f"encode_label_map expects a 2-D label map, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"encode_label_map expects an integer label map, got dtype {labels.dtype}")
    h, w = labels.shape
    n = h * w
    if n == 0:
        return {}
    # run starts in column-major order, found without transposing the map: changes down a column,
    # and changes between the last pixel of one column and the first of the next
    rows, cols = np.nonzero(labels[1:, :] != labels[:-1, :])
    inner = cols.astype(np.int64) * h + rows + 1
    across = (np.flatnonzero(labels[0, 1:] != labels[-1, :-1]) + 1).astype(np.int64) * h
    change = np.sort(np.concatenate((inner, across)))
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [n]))
    vals = labels[starts % h, starts // h]
    keep = vals > 0
    starts, ends, vals = starts[keep], ends[keep], vals[keep]
    if not len(vals):
        return {}
    order = np.argsort(vals, kind="stable")  # runs of one cell stay in scan order
    starts, ends, vals = starts[order], ends[order], vals[order]
    ids, first = np.unique(vals, return_index=True)
    bounds = np.append(first, len(vals))
    rles = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        s, e = starts[a:b], ends[a:b]
        k = b - a
        counts = np.empty(2 * k + 1, dtype=np.int64)
        counts[0] = s[0]
        counts[2:-1:2] = s[1:] - e[:-1]
        counts[1::2] = e - s
        counts[-1] = n - e[-1]
        if counts[-1] == 0:  # pycocotools never writes a trailing empty run
            counts = counts[:-1]
        rles.append({"size": [h, w], "counts": counts.tolist()})
    compressed = mask_util.frPyObjects(rles, h, w)
    return {int(i): _pack(r["counts"]) for i, r in zip(ids, compressed)}


# ----------------------------------------------------------------------------- validation
def rle_counts(counts: bytes | str) -> np.ndarray:
    """Decode pycocotools' compressed counts string into its run lengths (int64), vectorised.

    The inverse of pycocotools' ``rleToString`` (LEB128-like 6-bit groups, 0x20 = more,
    0x10 = sign, counts from the 4th on stored as deltas to the one two before).
    Raises ValueError on characters outside the alphabet or a truncated last number.
    """
    x = np.frombuffer(counts.encode("ascii") if isinstance(counts, str) else counts, np.uint8)
    if not len(x):
        return np.zeros(0, np.int64)
    x = x.astype(np.int64) - 48
    if x.min() < 0 or x.max() > 63:
        raise ValueError("RLE counts hold characters outside pycocotools' alphabet")
    more = (x & 0x20) != 0
    if more[-1]:
        raise ValueError("RLE counts end in the middle of a number")
    last = np.flatnonzero(~more)                     # index of each number's last character
    first = np.concatenate(([0], last[:-1] + 1))
    pos = np.arange(len(x)) - np.repeat(first, last - first + 1)  # group index inside its number
    if pos.max() > 10:
        raise ValueError("RLE counts hold a number too long to be a run length")
    raw = np.add.reduceat((x & 0x1F) << (5 * pos), first)
    neg = (x[last] & 0x10) != 0
    raw = raw - np.where(neg, np.left_shift(1, 5 * (pos[last] + 1)), 0)
    out = raw.copy()
    if len(out) > 3:  # cnts[m] += cnts[m-2] for m > 2
        out[3::2] = raw[1] + np.cumsum(raw[3::2])
    if len(out) > 4:
        out[4::2] = raw[2] + np.cumsum(raw[4::2])
    return out


def check_mask_string(s: str, height: int, width: int) -> None:
    """Raise ValueError unless ``s`` is base64 of zlib of an RLE of exactly ``height x width`` pixels."""
    try:
        data = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"mask is not valid base64 ({e})") from None
    try:
        counts = zlib.decompress(data)
    except zlib.error as e:
        raise ValueError(f"mask is not valid zlib data ({e})") from None
    runs = rle_counts(counts)
    if len(runs) == 0 or runs.min() < 0 or (len(runs) > 1 and runs[1:].min() == 0):
        raise ValueError("mask RLE has empty or negative runs")
    total = int(runs.sum())
    if total != int(height) * int(width):
        raise ValueError(f"mask RLE covers {total} pixels, expected {height}x{width}={height * width}")


# ----------------------------------------------------------------------------- prediction strings
def check_probs(masks: list[str], probs: np.ndarray) -> np.ndarray:
    """``probs`` as float64 ``(n_cells, 19)``, one row per mask, in [0, 1]; else a ValueError."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != NUM_CLASSES:
        raise ValueError(f"probs must be (n_cells, {NUM_CLASSES}), got shape {probs.shape}")
    if len(masks) != len(probs):
        raise ValueError(f"{len(masks)} masks but {len(probs)} rows of probabilities")
    if probs.size and (np.isnan(probs).any() or probs.min() < 0 or probs.max() > 1):
        raise ValueError("probabilities must be in [0, 1] and not NaN")
    return probs


def prediction_string(masks: list[str], probs: np.ndarray, min_conf: float = 0.0) -> str:
    """One image's PredictionString: a triplet for every cell x class with ``prob >= min_conf``.

    ``masks[i]`` is cell i's encoded mask, ``probs`` is ``(n_cells, 19)`` in [0, 1]. Triplets are
    cell-major (cell 0's classes in ascending order first); confidences use ``%.6g``.
    """
    probs = check_probs(masks, probs)
    cells, classes = np.nonzero(probs >= min_conf)
    return " ".join(f"{c} {probs[i, c]:.6g} {masks[i]}" for i, c in zip(cells.tolist(), classes.tolist()))


def parse_prediction_arrays(s, width: int, height: int, row=None, check_masks: bool = True
                            ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A PredictionString -> ``(labels int64, confidences float64, masks)`` (validated; see below)."""
    where = f"submission row {row}" if row is not None else "PredictionString"
    if s is None or (not isinstance(s, str) and pd.isna(s)):  # None, NaN, pd.NA: no detections
        s = ""
    tokens = str(s).split()
    if len(tokens) % 3:
        raise ValueError(f"{where}: {len(tokens)} tokens is not a multiple of 3 (label conf mask)")
    lab_tok, conf_tok, masks = tokens[0::3], tokens[1::3], tokens[2::3]
    try:
        labels = np.array([int(t) for t in lab_tok], dtype=np.int64)
    except ValueError as e:
        raise ValueError(f"{where}: label is not an integer ({e})") from None
    bad = (labels < 0) | (labels >= NUM_CLASSES)
    if bad.any():
        raise ValueError(f"{where}: label {labels[bad][0]} outside 0..{NUM_CLASSES - 1}")
    try:
        confs = np.array([float(t) for t in conf_tok], dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"{where}: confidence is not a number ({e})") from None
    bad = ~((confs >= 0) & (confs <= 1))  # also catches NaN
    if bad.any():
        raise ValueError(f"{where}: confidence {conf_tok[int(np.argmax(bad))]} is not in [0, 1]")
    if check_masks:
        for m in set(masks):
            try:
                check_mask_string(m, height, width)
            except ValueError as e:
                raise ValueError(f"{where}: invalid mask {m[:40]!r}: {e}") from None
    return labels, confs, masks


def parse_prediction_string(s: str, width: int, height: int, row=None,
                            check_masks: bool = True) -> list[tuple[int, float, str]]:
    """A PredictionString -> ``[(label, confidence, mask), ...]`` in string order.

    Raises ValueError naming ``row`` (e.g. the image ID) when the token count is not a multiple of
    3, a label is not an integer in 0..18, a confidence is not a number in [0, 1] (NaN rejected),
    or (``check_masks``) a mask is not base64 of zlib of an RLE of ``height x width`` pixels.
    """
    labels, confs, masks = parse_prediction_arrays(s, width, height, row, check_masks)
    return list(zip(labels.tolist(), confs.tolist(), masks))


# ----------------------------------------------------------------------------- submission files
def write_submission(pred: dict, sample_submission: pd.DataFrame, path: str | Path) -> Path:
    """Write ``ID,ImageWidth,ImageHeight,PredictionString`` atomically, one row per sample row.

    Rows follow ``sample_submission``'s order and sizes; an ID missing from ``pred`` (or mapped
    to None/"") gets an empty PredictionString. IDs in ``pred`` that the sample lacks are an error.
    """
    missing = [c for c in SUBMISSION_COLUMNS[:3] if c not in sample_submission.columns]
    if missing:
        raise ValueError(f"sample submission lacks column(s) {missing}")
    ids = sample_submission["ID"].astype(str)
    extra = sorted(set(map(str, pred)) - set(ids))
    if extra:
        raise ValueError(f"{path}: {len(extra)} predicted ID(s) not in the sample submission, "
                         f"e.g. {extra[:3]}")
    return atomic_to_csv(submission_rows(sample_submission, pred), path)


def submission_rows(rows: pd.DataFrame, pred: dict) -> pd.DataFrame:
    """The submission's rows of ``rows`` (ID, ImageWidth, ImageHeight), each with its string in ``pred``
    ("" when absent or None)."""
    ids = rows["ID"].astype(str)
    pred = {str(k): v for k, v in pred.items()}
    return pd.DataFrame({
        "ID": ids.to_numpy(),
        "ImageWidth": rows["ImageWidth"].astype(int).to_numpy(),
        "ImageHeight": rows["ImageHeight"].astype(int).to_numpy(),
        "PredictionString": [pred.get(i) or "" for i in ids],
    })


def write_submission_parts(frames, path: str | Path) -> Path:
    """The file :func:`write_submission` writes, from its rows in pieces (:func:`submission_rows`), one
    piece at a time (S5 writes a screen's submission without holding it)."""
    return atomic_to_csv_parts(frames, SUBMISSION_COLUMNS, path)


def read_submission(path: str | Path) -> pd.DataFrame:
    """Read a submission CSV through :func:`common.io.read_id_table` (columns, plain unique IDs,
    positive whole sizes); the strings are parsed later. An empty PredictionString stays ""."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: submission file is missing")
    return read_id_table(path, SUBMISSION_COLUMNS, ("ImageWidth", "ImageHeight"),
                         str_columns=("PredictionString",))
