"""From the networks' softmax maps to label maps: HPA-Cell-Segmentation's ``label_cell``, as it is.

The competition's true cells were made by the official code at the original resolution, so by default
everything here reproduces it, quirks included:

* :func:`official_inputs` feeds ``label_cell`` the way ``CellSegmentator`` does: the nuclei map goes to
  uint8 (``img_as_ubyte``) at the network's scale, channel 0 set to 0, then ``cv2.INTER_AREA`` to the
  original size; the cell map has channel 0 set to 0, is resized in float (``INTER_AREA``), then uint8.
* :func:`label_cell` is the official ``label_cell`` step by step, with the official sizes in original
  pixels (holes 1000, seeds 500, nucleus specks 8, nuclei 2500, cells 5500, closing disk(6)) and the
  official connectivities (4-connected components and holes, 8-connected ``measure.label``). Its
  quirks, kept because they made the truth: the two uint8 border maps are added in uint8 (wrapping past
  255); the ``np.invert`` of an int8 0/1 border test gives -1/-2, both true, so cell borders are NOT
  excluded from the first cell region; ``np.clip(x, t, x)`` leaves the distance map unchanged; cell ids
  are cast to uint8 (wrapping past 255) before the closing, so cells 256, 512, ... become background.
* ``corrected=True`` (module constant :data:`CORRECTED`, off by default) gives what the code meant
  instead: border maps added without wrapping, borders excluded from the first region, the distance map
  clipped at the threshold, ids never cast to uint8. It departs from the truth (mean IoU ~0.985 at
  2048 px on the reference scenarios) and is kept only for comparison.

Speed: the same operations, fewer passes. Small objects/holes are removed with one ``bincount``, holes
are filled from one labelling of the background, the grey closing and the thick boundaries use OpenCV
morphology (equal to skimage's for these symmetric, convex footprints; tests check it); the watersheds,
Otsu and ``measure.label`` are skimage's own calls, so ties are broken exactly as in the original.
``pixel_scale`` (< 1) labels at a lower resolution with every size scaled (areas by its square): the
"fast" path, which does NOT reproduce the truth (cells ~15 % smaller at 512 px).
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage import measure
from skimage.filters import threshold_otsu
from skimage.morphology import disk
from skimage.segmentation import watershed
from skimage.util import img_as_ubyte

from common.resize import resize_labels

# ---- behaviour
CORRECTED = False                 # True: the "meant" behaviour instead of the official quirks (see above)
# ---- thresholds of the official label_cell (fractions of 255)
NUC_MASK_THRESHOLD = 0.4          # nucleus mask: interior / 255 above this
NUC_SEED_ADJUST = -0.25           # nucleus seeds: interior / 255 above 0.4 + this (computed as the original)
SEED_BORDER_MARGIN = 0.05         # seeds only where 1 - (nuclei border + cell border) / 255 > this
CELL_THRESHOLD_FLOOR = 0.22       # cell region: interior / 255 above max(this, OTSU_FACTOR * Otsu)
CELL_OTSU_FACTOR = 0.5
CELL_BORDER_THRESHOLD = 0.05      # cell border pixels: border / 255 above this
# ---- sizes of the official label_cell, in pixels of the original image
SEED_MIN_AREA = 500               # nucleus seed specks (remove_small_objects)
NUC_HOLE_AREA = 1000              # holes filled in the nucleus mask (remove_small_holes)
NUC_MASK_MIN_AREA = 8             # specks removed from the nucleus mask
NUC_MIN_AREA = 2500               # nuclei smaller than this are dropped
CELL_MIN_AREA = 5500              # cells smaller than this are dropped
CELL_CLOSING_RADIUS = 6           # closing of the first cell labels (disk)
OFFICIAL_SCALE = 0.25             # the official networks see the original image scaled by this

_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
_V = np.arange(256, dtype=np.float64)


# ----------------------------------------------------------------------------- feeding
def official_inputs(nuclei: np.ndarray, cell: np.ndarray, out_hw: tuple[int, int]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``label_cell``'s uint8 ``(H, W, 3)`` inputs from the networks' float softmax maps ``(h, w, 3)``.

    As ``CellSegmentator.pred_nuclei`` / ``pred_cells`` do it (channel 0 = background, 1 = border,
    2 = interior): nuclei -> ``img_as_ubyte``, channel 0 = 0, ``cv2.INTER_AREA`` to ``out_hw``; cell ->
    channel 0 = 0, ``INTER_AREA`` in float, ``img_as_ubyte``. (The original passed ``(H, W)`` where OpenCV
    wants ``(W, H)``; all HPA images are square, and here the size is given the right way round.)
    """
    h, w = int(out_hw[0]), int(out_hw[1])
    nuc = img_as_ubyte(np.clip(np.asarray(nuclei, np.float32), 0.0, 1.0))
    nuc[..., 0] = 0
    c = np.array(cell, dtype=np.float32)
    c[..., 0] = 0
    if nuc.shape[:2] != (h, w):
        nuc = cv2.resize(nuc, (w, h), interpolation=cv2.INTER_AREA)
        c = cv2.resize(c, (w, h), interpolation=cv2.INTER_AREA)
    return nuc, img_as_ubyte(np.clip(c, 0.0, 1.0))


# ----------------------------------------------------------------------------- exact, faster pieces
def remove_small(labels: np.ndarray, min_size: float) -> np.ndarray:
    """``skimage.morphology.remove_small_objects``: labels (or 4-connected parts of a bool mask) with
    fewer than ``min_size`` pixels set to 0."""
    if labels.dtype == bool:
        lab, n = ndi.label(labels)
        if n == 0:
            return labels
        keep = np.bincount(lab.ravel()) >= min_size
        keep[0] = False
        return keep[lab]
    if labels.size == 0 or not labels.any():
        return labels
    keep = np.bincount(labels.ravel()) >= min_size
    keep[0] = False
    return np.where(keep[labels], labels, 0).astype(labels.dtype, copy=False)


def fill_small_holes(mask: np.ndarray, max_size: float) -> np.ndarray:
    """``remove_small_holes(mask, max_size)``: background parts (4-connected, border ones included)
    with fewer than ``max_size`` pixels set to True."""
    holes, n = ndi.label(~mask)
    if n == 0:
        return mask
    small = np.bincount(holes.ravel()) < max_size
    small[0] = False
    return mask | small[holes]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_fill_holes`` (background 4-connected to the image edge stays background)."""
    bg, n = ndi.label(~mask)
    if n == 0:
        return mask
    edge = np.zeros(n + 1, bool)
    for side in (bg[0], bg[-1], bg[:, 0], bg[:, -1]):
        edge[side] = True
    edge[0] = True
    return mask | ~edge[bg]


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


def _fill_label_holes(labels: np.ndarray) -> np.ndarray:
    """The official ``__fill_holes``: cut the label boundaries, fill holes of the union, 4-connected ids."""
    cut = (labels > 0) & ~thick_boundaries(labels)
    return ndi.label(fill_holes(cut))[0]


# ----------------------------------------------------------------------------- label_cell
def label_cell(nuclei: np.ndarray, cell: np.ndarray, pixel_scale: float = 1.0,
               corrected: bool = CORRECTED) -> tuple[np.ndarray, np.ndarray]:
    """The official ``label_cell`` on uint8 ``(H, W, 3)`` maps -> ``(cell, nucleus)`` label maps.

    Note the order: the original returned ``(nuclei, cell)``; here cell first, as everywhere in the
    project. Cell ids 1..n, nucleus k lies in cell k; uint16 (int32 past 65535 cells). ``pixel_scale``:
    map pixels per original pixel (1 = the official resolution; sizes are scaled by it, areas by its
    square). ``corrected``: see the module docstring.
    """
    if nuclei.shape != cell.shape or nuclei.ndim != 3 or nuclei.shape[2] < 3:
        raise ValueError(f"nuclei and cell maps must be (H, W, 3) of one shape, got {nuclei.shape} "
                         f"and {cell.shape}")
    if nuclei.dtype != np.uint8 or cell.dtype != np.uint8:
        raise ValueError(f"label_cell takes uint8 maps (see official_inputs), got {nuclei.dtype}, "
                         f"{cell.dtype}")
    a = float(pixel_scale) ** 2
    nuc_b, nuc_i = nuclei[..., 1], nuclei[..., 2]
    cell_b, cell_i = cell[..., 1], cell[..., 2]

    # 1. nuclei: __wsh(nuc_i / 255, 0.4, 1 - (nuc_b + cell_b) / 255 > 0.05, nuc_i / 255, -0.25, 500)
    if corrected:
        total = nuc_b.astype(np.int32) + cell_b
        border_ok = 1 - total / 255.0 > SEED_BORDER_MARGIN
    else:  # uint8 + uint8 wraps past 255, as in the original
        border_ok = (1 - _V / 255.0 > SEED_BORDER_MARGIN)[nuc_b + cell_b]
    seeds = border_ok & (_V / 255 > NUC_MASK_THRESHOLD + NUC_SEED_ADJUST)[nuc_i]
    seeds = remove_small(seeds, SEED_MIN_AREA * a)
    mask = (_V / 255.0 > NUC_MASK_THRESHOLD)[nuc_i]
    mask = fill_small_holes(mask, NUC_HOLE_AREA * a)
    mask = remove_small(mask, NUC_MASK_MIN_AREA * a)
    markers = ndi.label(seeds, output=np.uint32)[0]
    mask8 = mask.astype(np.uint8)
    nuclei_label = watershed(mask8, markers, mask=mask8, watershed_line=True)
    nuclei_label = remove_small(nuclei_label, NUC_MIN_AREA * a)
    nuclei_label = measure.label(nuclei_label)

    # 2. cells
    thr = max(CELL_THRESHOLD_FLOOR, threshold_otsu(cell_i / 255) * CELL_OTSU_FACTOR)
    borders = (_V / 255 > CELL_BORDER_THRESHOLD)[cell_b]
    region = (_V / 255 > thr)[cell_i]
    if corrected:
        region &= ~borders
        distance = np.clip(cell_i.astype(np.float64), 255 * thr, None)
    else:  # np.invert(int8 0/1) is -1/-2: nothing excluded; np.clip(x, t, x) is x
        distance = cell_i.astype(np.float64)
    cell_label = watershed(-distance, nuclei_label, mask=region.astype(np.int8))
    cell_label = remove_small(cell_label, CELL_MIN_AREA * a)
    if not corrected:
        cell_label = cell_label.astype(np.uint8)  # ids wrap past 255, as in the original
    cell_label = grey_closing(cell_label, int(np.round(CELL_CLOSING_RADIUS * pixel_scale)))
    cell_label = _fill_label_holes(cell_label)
    # extend the cells into the cell-border pixels
    sk = ((cell_label > 0) | borders).astype(np.int8)
    cell_label = watershed(-distance, cell_label, mask=sk)
    cell_label = _fill_label_holes(cell_label)
    cell_label = measure.label(cell_label > 0)
    cell_label = remove_small(cell_label, CELL_MIN_AREA * a)
    cell_label = measure.label(cell_label)
    dtype = np.uint16 if int(cell_label.max(initial=0)) <= 65535 else np.int32
    cell_label = cell_label.astype(dtype)

    # 3. each cell's nucleus: nucleus pixels inside cells, small parts dropped, the cell's id
    nuc = measure.label((cell_label > 0) & (nuclei_label > 0))
    nuc = remove_small(nuc, NUC_MIN_AREA * a)
    nucleus = np.where(nuc > 0, cell_label, 0).astype(dtype)
    return cell_label, nucleus


def label_from_maps(nuclei: np.ndarray, cell: np.ndarray, out_hw: tuple[int, int],
                    label_hw: tuple[int, int] | None = None, corrected: bool = CORRECTED
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(cell, nucleus)`` label maps at ``out_hw`` (the original size) from float softmax maps
    ``(h, w, 3)`` of the networks (the original image scaled by 0.25).

    ``label_hw``: where to label (default ``out_hw``, the official way). A smaller size is the fast
    path: sizes scaled to it, the labels brought to ``out_hw`` with :func:`common.resize.resize_labels`.
    """
    out_hw = (int(out_hw[0]), int(out_hw[1]))
    label_hw = out_hw if label_hw is None else (int(label_hw[0]), int(label_hw[1]))
    nuc8, cell8 = official_inputs(nuclei, cell, label_hw)
    scale = np.sqrt(label_hw[0] * label_hw[1] / (out_hw[0] * out_hw[1]))
    c, n = label_cell(nuc8, cell8, pixel_scale=float(scale), corrected=corrected)
    if label_hw != out_hw:
        c, n = resize_labels(c, out_hw), resize_labels(n, out_hw)
    return c, n


def label_cells(nuc_border: np.ndarray, nuc_interior: np.ndarray, cell_border: np.ndarray,
                cell_interior: np.ndarray, pixel_scale: float = 1.0, corrected: bool = CORRECTED
                ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`label_cell` on four float probability maps in [0, 1] of one shape, labelled where they are
    (``pixel_scale``: map pixels per original pixel)."""
    shapes = {np.shape(a) for a in (nuc_border, nuc_interior, cell_border, cell_interior)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"probability maps must be 2-D and of one shape, got {sorted(shapes)}")
    zero = np.zeros_like(np.asarray(nuc_border, np.float32))
    nuc = np.stack([zero, nuc_border, nuc_interior], -1)
    cel = np.stack([zero, cell_border, cell_interior], -1)
    nuc8, cell8 = official_inputs(nuc, cel, zero.shape)
    return label_cell(nuc8, cell8, pixel_scale=pixel_scale, corrected=corrected)
