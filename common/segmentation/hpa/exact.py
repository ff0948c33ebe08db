"""Faster equivalents of the skimage / scipy calls of the official ``label_cell``, equal pixel for pixel.

Each function names the call it replaces and returns exactly what that call returns on the inputs
``label_cell`` hands it (``tests/test_hpa_exact.py`` compares every one with its original; the whole
``label_cell`` is compared with the plain official code, ``tests/hpa_postprocess_oracle.py``).

* Connected parts: OpenCV's pixel-based SAUF labelling (``CCL_WU``) numbers parts in raster order of
  their first pixel, as ``scipy.ndimage.label`` and ``skimage.measure.label`` do (OpenCV's block-based
  8-connected labellings do not); part sizes are a histogram of the ids; holes are the background a
  flood fill from the edge does not reach.
* :func:`watershed`: ``skimage.segmentation.watershed(image, markers, mask=mask)`` (with or without
  ``watershed_line``). skimage floods from all markers through one priority queue; markers of one
  value all enter it with the same priority, so the queue's internal layout (which depends on every
  pixel of the image) decides their order. Two parts of the mask that do not touch never exchange
  pixels, but they share that queue, so running them apart could break ties differently where two
  labels meet. Where every 4-connected part of the mask holds markers of one label only, that order
  cannot matter: every pixel of a part is reached and takes its label, with or without watershed
  lines (a line needs two labels). Such a field is labelled from one connected-component pass.
  Otherwise the original is called, on the box holding the mask (the queue sees the same pixels in the
  same order, so the result is the same).
* :func:`label_equal`: ``skimage.measure.label`` of a label image (parts of equal value, 8-connected):
  the binary parts when no part holds two values, else the original.
* :func:`otsu_uint8`: ``skimage.filters.threshold_otsu(x / 255)`` from a 256-bin count instead of a
  float histogram of every pixel (the same bins, counts and arithmetic).
"""
from __future__ import annotations

import cv2
import numpy as np
from skimage import measure
from skimage.filters import threshold_otsu
from skimage.morphology import disk
from skimage.segmentation import watershed as sk_watershed

_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


# ----------------------------------------------------------------------------- connected parts
def parts(mask: np.ndarray, connectivity: int = 4) -> tuple[np.ndarray, int]:
    """``(ids, n)``: ``scipy.ndimage.label(mask)`` (``connectivity`` 4) or ``measure.label(mask)`` (8) of
    a bool mask: ids 1..n in raster order of each part's first pixel (uint16, int32 past 65534 parts)."""
    src = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
    try:
        n, ids = cv2.connectedComponentsWithAlgorithm(src, connectivity, cv2.CV_16U, cv2.CCL_WU)
    except cv2.error:  # more provisional labels than uint16 holds
        n, ids = cv2.connectedComponentsWithAlgorithm(src, connectivity, cv2.CV_32S, cv2.CCL_WU)
    return ids, n - 1


def part_sizes(ids: np.ndarray, n: int | None = None) -> np.ndarray:
    """Pixel count of each id 0..n (default n: the largest id), int64: ``np.bincount(ids.ravel())``."""
    if n is None:
        n = int(ids.max(initial=0))
    if ids.dtype in (np.uint8, np.uint16) and ids.size < 2 ** 24:  # float32 counts are exact below 2**24
        hist = cv2.calcHist([np.ascontiguousarray(ids)], [0], None, [n + 1], [0, n + 1])
        return hist.ravel().astype(np.int64)
    return np.bincount(ids.ravel(), minlength=n + 1)


def _small(ids: np.ndarray, n: int, size: float) -> np.ndarray:
    small = part_sizes(ids, n) < size
    small[0] = False
    return small


def drop_small_parts(mask: np.ndarray, min_size: float) -> tuple[np.ndarray, int]:
    """``remove_small_objects(mask, min_size)`` of skimage < 0.26 on a bool mask (4-connected parts with
    fewer than ``min_size`` pixels removed), as ``(ids, n)``: the kept parts' ids (``ids > 0`` is the
    result; removed parts' ids are 0, the others keep theirs, so ids need not be consecutive)."""
    ids, n = parts(mask)
    small = _small(ids, n, min_size)
    if small.any():
        ids = np.where(small[ids], 0, ids).astype(ids.dtype, copy=False)
    return ids, n


def fill_small_holes(mask: np.ndarray, max_size: float) -> np.ndarray:
    """``remove_small_holes(mask, max_size)`` of skimage < 0.26: background parts (4-connected, those at
    the edge included) with fewer than ``max_size`` pixels set to True."""
    ids, n = parts(~mask)
    small = _small(ids, n, max_size)
    return mask | small[ids] if small.any() else mask


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes(mask)``: the background not 4-connected to the edge set to True
    (a flood fill from a one-pixel frame around the image)."""
    h, w = mask.shape
    frame = np.zeros((h + 2, w + 2), np.uint8)
    frame[1:-1, 1:-1] = mask
    cv2.floodFill(frame, None, (0, 0), 2, flags=4)
    return frame[1:-1, 1:-1] != 2


def remove_small_labels(labels: np.ndarray, min_size: float) -> np.ndarray:
    """``remove_small_objects(labels, min_size)`` of skimage < 0.26 on a label image: ids with fewer
    than ``min_size`` pixels set to 0."""
    if not min_size or not labels.size:
        return labels
    small = part_sizes(labels) < min_size
    small[0] = False
    if not small.any():
        return labels
    return np.where(small[labels], 0, labels).astype(labels.dtype, copy=False)


# ----------------------------------------------------------------------------- label images
def _value_per_part(ids: np.ndarray, n: int, values: np.ndarray) -> np.ndarray | None:
    """The one nonzero ``values`` entry of each part of ``ids`` (0 where a part has none), or None
    when a part holds two different nonzero values."""
    at = np.flatnonzero(values)
    part = ids.ravel()[at]
    inside = part > 0
    at, part = at[inside], part[inside]
    val = values.ravel()[at]
    rep = np.zeros(n + 1, values.dtype)
    rep[part] = val
    return rep if np.array_equal(rep[part], val) else None


def label_equal(labels: np.ndarray) -> np.ndarray:
    """``skimage.measure.label(labels)``: parts of equal nonzero value, 8-connected, numbered in raster
    order (the binary parts when none of them holds two values; else the original call)."""
    ids, n = parts(labels > 0, 8)
    if _value_per_part(ids, n, labels) is None:
        return measure.label(labels)
    return ids


def _box(mask: np.ndarray) -> tuple[slice, slice]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def watershed(image, markers: np.ndarray, mask: np.ndarray, watershed_line: bool = False,
              min_size: float = 0, dtype=None, mask_parts: tuple[np.ndarray, int] | None = None
              ) -> np.ndarray:
    """``remove_small_objects(skimage.segmentation.watershed(image(), markers, mask=mask,
    watershed_line=...), min_size).astype(dtype)`` (skimage < 0.26 sizes; ``dtype`` default: the
    markers'); 4-connected, no compactness. ``image``: a callable, called only when the original runs.
    ``mask_parts``: ``(ids, n)`` of the mask's 4-connected parts when known (``mask`` is then ids > 0).

    One label per 4-connected part of the mask: each part is labelled whole (module docstring), sizes
    from the parts. Otherwise the original, on the box of the mask (outside it nothing is queued).
    """
    ids, n = parts(mask) if mask_parts is None else mask_parts
    dtype = markers.dtype if dtype is None else dtype
    rep = _value_per_part(ids, n, markers)
    if rep is not None:
        if min_size and n:
            sizes = np.bincount(rep, weights=part_sizes(ids, n))
            rep = np.where(sizes < min_size, 0, np.arange(len(sizes)))[rep]
        return rep.astype(dtype)[ids]
    mask = ids > 0
    out = np.zeros(markers.shape, markers.dtype)
    box = _box(mask)
    out[box] = sk_watershed(image()[box], markers[box], mask=mask[box], watershed_line=watershed_line)
    return remove_small_labels(out, min_size).astype(dtype, copy=False)


# ----------------------------------------------------------------------------- thresholds, morphology
def otsu_uint8(x: np.ndarray) -> float:
    """``skimage.filters.threshold_otsu(x / 255)`` of a uint8 image: the same 256-bin histogram over the
    image's range (``np.histogram`` of the 256 possible values weighted by their counts)."""
    counts = cv2.calcHist([np.ascontiguousarray(x)], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    values = np.arange(256) / 255
    present = np.flatnonzero(counts)
    if len(present) == 1:
        return float(values[present[0]])
    lo, hi = values[present[0]], values[present[-1]]
    hist, edges = np.histogram(values[present], bins=256, range=(lo, hi), weights=counts[present])
    return float(threshold_otsu(hist=(hist.astype(np.int64), (edges[:-1] + edges[1:]) / 2.0)))


def _morph_dtype(labels: np.ndarray) -> np.ndarray:
    top = int(labels.max()) if labels.size else 0
    if labels.dtype in (np.uint8, np.uint16) or top < 65536:
        return labels.astype(np.uint16 if labels.dtype != np.uint8 else np.uint8, copy=False)
    if top < 2 ** 24:
        return labels.astype(np.float32)
    raise ValueError(f"label ids up to {top}: too many for the morphology")


def grey_closing(labels: np.ndarray, radius: int) -> np.ndarray:
    """``skimage.morphology.closing(labels, disk(radius))`` (reflect border = ignore, for a disk)."""
    if radius < 1:
        return labels
    src = _morph_dtype(labels)
    out = cv2.morphologyEx(src, cv2.MORPH_CLOSE, disk(radius).astype(np.uint8))  # border: ignored
    return out.astype(labels.dtype, copy=False)


def thick_boundaries(labels: np.ndarray) -> np.ndarray:
    """``skimage.segmentation.find_boundaries(labels)`` (mode ``thick``, connectivity 1)."""
    src = _morph_dtype(labels)
    return cv2.dilate(src, _CROSS) != cv2.erode(src, _CROSS)
