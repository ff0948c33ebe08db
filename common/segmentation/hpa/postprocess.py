"""From the networks' probability maps to label maps: HPA-Cell-Segmentation's ``label_cell``, fixed.

Inputs are float probability maps in [0, 1] at the working resolution: the nuclei network's and the
cell network's ``border`` (softmax channel 1) and ``interior`` (channel 2). The steps follow the
official ``label_cell``:

1. nuclei: seeds = nucleus interior > 0.15 where the two border maps sum below 0.95, specks removed;
   mask = interior > 0.4 with small holes filled and specks removed; a watershed of the mask from the
   seeds (with watershed lines) splits touching nuclei; small nuclei are dropped;
2. cells: threshold t = max(0.22, Otsu(cell interior) / 2); region = interior > t minus the cell borders
   (border > 0.05); a watershed on -clip(interior, t) seeded with the nuclei; small cells dropped, a
   closing, holes filled; a second watershed extends the cells into the border pixels; holes filled,
   small cells dropped, ids 1..n;
3. each cell's nucleus = its nucleus pixels inside it (small ones dropped), with the cell's id.

Differences from the original, all deliberate bug fixes: the two border maps are added in float (the
original added uint8 maps, which wrapped past 255); the cell borders really are excluded in step 2 (the
original's ``np.invert`` of an int8 0/1 array gave -1/-2, both true, so it excluded nothing); labels
are never cast to uint8 (the original wrapped ids past 255, merging cells). The original ran at the raw
image resolution; here every area (px²) and length (px) of the original is given at the raw
resolution and scaled by ``pixel_scale`` (working px per raw px): areas by its square.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage import measure
from skimage.filters import threshold_otsu
from skimage.morphology import closing, disk
from skimage.segmentation import find_boundaries, watershed

# ---- thresholds of the official label_cell (probabilities)
NUC_MASK_THRESHOLD = 0.4          # nucleus mask: interior above this
NUC_SEED_THRESHOLD = 0.15         # nucleus seeds: interior above this (0.4 - 0.25) ...
SEED_BORDER_MAX = 0.95            # ... where nuclei border + cell border stays below this (1 - x > 0.05)
CELL_THRESHOLD_FLOOR = 0.22       # cell region: interior above max(this, OTSU_FACTOR * Otsu)
CELL_OTSU_FACTOR = 0.5
CELL_BORDER_THRESHOLD = 0.05      # cell border pixels: border above this
# ---- sizes of the official label_cell, in pixels of the raw (~2048 px) image
SEED_MIN_AREA = 500               # nucleus seed specks
NUC_HOLE_AREA = 1000              # holes filled in the nucleus mask
NUC_MASK_MIN_AREA = 8             # specks removed from the nucleus mask
NUC_MIN_AREA = 2500               # nuclei smaller than this are dropped
CELL_MIN_AREA = 5500              # cells smaller than this are dropped
CELL_CLOSING_RADIUS = 6           # closing of the first cell labels (disk)
OFFICIAL_SCALE = 0.25             # the official networks saw images at 1/4 of the raw resolution


def remove_small(labels: np.ndarray, min_area: float) -> np.ndarray:
    """Label map with the labels (or, for a bool mask, its 4-connected parts) under ``min_area`` px zeroed."""
    if labels.dtype == bool:
        lab, _ = ndi.label(labels)
        return remove_small(lab, min_area) > 0
    if labels.size == 0 or min_area <= 1:
        return labels
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_area
    keep[0] = False
    return np.where(keep[labels], labels, 0).astype(labels.dtype, copy=False)


def fill_small_holes(mask: np.ndarray, max_area: float) -> np.ndarray:
    """``mask`` with background parts (4-connected) smaller than ``max_area`` px set to True."""
    holes, _ = ndi.label(~mask)
    if holes.max() == 0:
        return mask
    sizes = np.bincount(holes.ravel())
    small = sizes < max_area
    small[0] = False
    return mask | small[holes]


def _fill_holes(labels: np.ndarray) -> np.ndarray:
    """Official ``__fill_holes``: cut label boundaries, fill holes of the union, relabel (4-connected)."""
    cut = np.where(find_boundaries(labels), 0, labels)
    filled = ndi.binary_fill_holes(cut > 0)
    return ndi.label(filled)[0].astype(np.int32)


def _seeded_watershed(interior: np.ndarray, border_ok: np.ndarray, area: float) -> np.ndarray:
    """Official ``__wsh`` for nuclei: seeds from interior*border_ok, mask from interior, watershed lines."""
    seeds = (interior * border_ok) > NUC_SEED_THRESHOLD
    seeds = remove_small(seeds, SEED_MIN_AREA * area)
    mask = interior > NUC_MASK_THRESHOLD
    mask = fill_small_holes(mask, NUC_HOLE_AREA * area)
    mask = remove_small(mask, NUC_MASK_MIN_AREA * area)
    markers = ndi.label(seeds)[0].astype(np.int32)
    return watershed(mask.astype(np.uint8), markers, mask=mask, watershed_line=True).astype(np.int32)


def label_cells(nuc_border: np.ndarray, nuc_interior: np.ndarray, cell_border: np.ndarray,
                cell_interior: np.ndarray,
                pixel_scale: float = OFFICIAL_SCALE) -> tuple[np.ndarray, np.ndarray]:
    """``(cell_labels, nucleus_labels)`` int32 at the maps' resolution; nucleus k lies in cell k.

    Maps: float in [0, 1], all of one shape. ``pixel_scale``: working pixels per raw-image pixel (0.25 when
    the maps are at the official networks' working resolution).
    """
    shapes = {a.shape for a in (nuc_border, nuc_interior, cell_border, cell_interior)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"probability maps must be 2-D and of one shape, got {sorted(shapes)}")
    area = float(pixel_scale) ** 2
    nuc_border, nuc_interior, cell_border, cell_interior = (
        np.asarray(a, dtype=np.float32) for a in (nuc_border, nuc_interior, cell_border, cell_interior))

    # 1. nuclei (border maps added in float: no uint8 wrap-around)
    border_ok = (nuc_border + cell_border) < SEED_BORDER_MAX
    nuclei = _seeded_watershed(nuc_interior, border_ok, area)
    nuclei = remove_small(nuclei, NUC_MIN_AREA * area)
    nuclei = measure.label(nuclei).astype(np.int32)

    # 2. cells
    thr = CELL_THRESHOLD_FLOOR
    if cell_interior.size and cell_interior.max() > cell_interior.min():
        thr = max(CELL_THRESHOLD_FLOOR, float(threshold_otsu(cell_interior)) * CELL_OTSU_FACTOR)
    borders = cell_border > CELL_BORDER_THRESHOLD
    region = (cell_interior > thr) & ~borders          # the exclusion the original meant
    distance = np.clip(cell_interior, thr, None)
    cells = watershed(-distance, nuclei, mask=region).astype(np.int32)
    cells = remove_small(cells, CELL_MIN_AREA * area)
    radius = int(np.round(CELL_CLOSING_RADIUS * pixel_scale))
    if radius >= 1:
        cells = closing(cells, disk(radius))
    cells = _fill_holes(cells)
    cells = watershed(-distance, cells, mask=(cells > 0) | borders).astype(np.int32)
    cells = _fill_holes(cells)
    cells = measure.label(cells > 0)
    cells = remove_small(cells, CELL_MIN_AREA * area)
    cells = measure.label(cells).astype(np.int32)       # ids 1..n, never uint8

    # 3. nuclei inside cells, with their cell's id
    nuc = measure.label((cells > 0) & (nuclei > 0))
    nuc = remove_small(nuc, NUC_MIN_AREA * area)
    nucleus = np.where(nuc > 0, cells, 0).astype(np.int32)
    return cells, nucleus
