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

Speed, with the same labels: the maps are fed plane by plane (channel 0 is never read), thresholds
are lookups on uint8, and each skimage / scipy call is replaced by a faster one that returns exactly
what it returns (:mod:`.exact`: OpenCV labelling, sizes and flood fills; a watershed that labels whole
mask parts holding one marker label and calls skimage's own where labels meet). The plain official
code is the test oracle, ``tests/hpa_postprocess_oracle.py``; docs/SEGMENTATION.md has the profile.
``pixel_scale`` (< 1) labels at a lower resolution with every size scaled (areas by its square): the
"fast" path, which does NOT reproduce the truth (cells ~15 % smaller at 512 px).
"""
from __future__ import annotations

import cv2
import numpy as np
from skimage.util import img_as_ubyte

from common.resize import resize_labels
from common.segmentation.hpa import exact

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

_V = np.arange(256, dtype=np.float64)


# ----------------------------------------------------------------------------- feeding
def input_planes(nuclei: np.ndarray, cell: np.ndarray, out_hw: tuple[int, int]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Channels 1 and 2 (border, interior) of :func:`official_inputs`, as four contiguous uint8 planes
    ``(nuclei border, nuclei interior, cell border, cell interior)``: the channels are resized one by
    one (OpenCV treats channels independently) and channel 0, set to 0 and never read, is left out."""
    h, w = int(out_hw[0]), int(out_hw[1])

    def resized(plane):
        return plane if plane.shape == (h, w) else cv2.resize(plane, (w, h), interpolation=cv2.INTER_AREA)

    def to_ubyte(x):  # img_as_ubyte(np.clip(x, 0, 1)): rint(255 x) in float32, saturated to 0..255
        return cv2.convertScaleAbs(cv2.threshold(x, 0, 0, cv2.THRESH_TOZERO)[1], alpha=255)

    nb, ni = (resized(img_as_ubyte(np.clip(np.asarray(nuclei[..., k], np.float32), 0, 1))) for k in (1, 2))
    cb, ci = (to_ubyte(resized(np.ascontiguousarray(cell[..., k], np.float32))) for k in (1, 2))
    return nb, ni, cb, ci


def official_inputs(nuclei: np.ndarray, cell: np.ndarray, out_hw: tuple[int, int]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``label_cell``'s uint8 ``(H, W, 3)`` inputs from the networks' float softmax maps ``(h, w, 3)``.

    As ``CellSegmentator.pred_nuclei`` / ``pred_cells`` do it (channel 0 = background, 1 = border,
    2 = interior): nuclei -> ``img_as_ubyte``, channel 0 = 0, ``cv2.INTER_AREA`` to ``out_hw``; cell ->
    channel 0 = 0, ``INTER_AREA`` in float, ``img_as_ubyte``. (The original passed ``(H, W)`` where OpenCV
    wants ``(W, H)``; all HPA images are square, and here the size is given the right way round.)
    """
    nb, ni, cb, ci = input_planes(nuclei, cell, out_hw)
    zero = np.zeros_like(nb)
    return np.stack([zero, nb, ni], -1), np.stack([zero, cb, ci], -1)


# ----------------------------------------------------------------------------- label_cell
def _lut(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``table[x]`` (bool, 256 entries) of a uint8 image, by OpenCV's lookup."""
    return cv2.LUT(np.ascontiguousarray(x), table.astype(np.uint8)).view(bool)


def _nuclei(nuc_b: np.ndarray, nuc_i: np.ndarray, cell_b: np.ndarray, a: float, corrected: bool
            ) -> np.ndarray:
    """Step 1 of ``label_cell``: the official ``__wsh(nuc_i / 255, 0.4, 1 - (nuc_b + cell_b) / 255 > 0.05,
    nuc_i / 255, -0.25, 500)``, nuclei under 2500 px dropped, ``measure.label``."""
    if corrected:
        total = nuc_b.astype(np.int32) + cell_b
        border_ok = (1 - np.arange(511) / 255.0 > SEED_BORDER_MARGIN)[total]
    else:  # uint8 + uint8 wraps past 255, as in the original
        border_ok = _lut(nuc_b + cell_b, 1 - _V / 255.0 > SEED_BORDER_MARGIN)
    seeds = border_ok & _lut(nuc_i, _V / 255 > NUC_MASK_THRESHOLD + NUC_SEED_ADJUST)
    # the seeds' ids stand for ndi.label's (numbered otherwise: the watershed only compares them)
    markers = exact.drop_small_parts(seeds, SEED_MIN_AREA * a)[0]
    mask = _lut(nuc_i, _V / 255.0 > NUC_MASK_THRESHOLD)
    mask = exact.fill_small_holes(mask, NUC_HOLE_AREA * a)
    mask_parts = exact.drop_small_parts(mask, NUC_MASK_MIN_AREA * a)
    nuclei = exact.watershed(lambda: (mask_parts[0] > 0).view(np.uint8), markers, None,
                             watershed_line=True, min_size=NUC_MIN_AREA * a, mask_parts=mask_parts)
    return exact.label_equal(nuclei)


def _fill_label_holes(labels: np.ndarray) -> np.ndarray:
    """The official ``__fill_holes`` before its ``ndi.label``: label boundaries cut, holes filled (bool)."""
    return exact.fill_holes((labels > 0) & ~exact.thick_boundaries(labels))


def _cells(nuclei: np.ndarray, cell_b: np.ndarray, cell_i: np.ndarray, a: float, radius: int,
           corrected: bool) -> tuple[np.ndarray, int]:
    """Step 2 of ``label_cell``: the two cell watersheds, the closing, holes, the size floor; ``(ids, n)``
    with ids 1..n in raster order (the last ``measure.label``)."""
    thr = max(CELL_THRESHOLD_FLOOR, exact.otsu_uint8(cell_i) * CELL_OTSU_FACTOR)
    borders = _lut(cell_b, _V / 255 > CELL_BORDER_THRESHOLD)
    region = _lut(cell_i, _V / 255 > thr)
    if corrected:
        region = region & ~borders

        def neg_distance():
            return -np.clip(cell_i.astype(np.float64), 255 * thr, None)
    else:  # np.invert(int8 0/1) is -1/-2: nothing excluded; np.clip(x, t, x) is x
        def neg_distance():
            return -cell_i.astype(np.float64)
    # ids wrap past 255 (cast to uint8), as in the original
    cell = exact.watershed(neg_distance, nuclei, region, min_size=CELL_MIN_AREA * a,
                           dtype=None if corrected else np.uint8)
    cell = exact.grey_closing(cell, radius)
    cell = exact.parts(_fill_label_holes(cell))[0]
    # extend the cells into the cell-border pixels
    cell = exact.watershed(neg_distance, cell, (cell > 0) | borders)
    ids, n = exact.parts(_fill_label_holes(cell), 8)
    keep = exact.part_sizes(ids, n) >= CELL_MIN_AREA * a
    keep[0] = False
    if keep[1:].all():
        return ids, n
    return (np.cumsum(keep) * keep).astype(ids.dtype)[ids], int(keep.sum())


def label_cell(nuclei: np.ndarray, cell: np.ndarray, pixel_scale: float = 1.0,
               corrected: bool = CORRECTED) -> tuple[np.ndarray, np.ndarray]:
    """The official ``label_cell`` on uint8 ``(H, W, 3)`` maps -> ``(cell, nucleus)`` label maps.

    Note the order: the original returned ``(nuclei, cell)``; here cell first, as everywhere in the
    project. Cell ids 1..n, nucleus k lies in cell k; uint16 (int32 past 65535 cells). ``pixel_scale``:
    map pixels per original pixel (1 = the official resolution; sizes are scaled by it, areas by its
    square). ``corrected``: see the module docstring. Pixel for pixel the official code
    (``tests/hpa_postprocess_oracle.py``), by the faster equal calls of :mod:`.exact`.
    """
    if nuclei.shape != cell.shape or nuclei.ndim != 3 or nuclei.shape[2] < 3:
        raise ValueError(f"nuclei and cell maps must be (H, W, 3) of one shape, got {nuclei.shape} "
                         f"and {cell.shape}")
    if nuclei.dtype != np.uint8 or cell.dtype != np.uint8:
        raise ValueError(f"label_cell takes uint8 maps (see official_inputs), got {nuclei.dtype}, "
                         f"{cell.dtype}")
    planes = (np.ascontiguousarray(m[..., k]) for m, k in ((nuclei, 1), (nuclei, 2), (cell, 1), (cell, 2)))
    return label_planes(*planes, pixel_scale=pixel_scale, corrected=corrected)


def label_planes(nuc_b: np.ndarray, nuc_i: np.ndarray, cell_b: np.ndarray, cell_i: np.ndarray,
                 pixel_scale: float = 1.0, corrected: bool = CORRECTED) -> tuple[np.ndarray, np.ndarray]:
    """:func:`label_cell` on the four uint8 planes of :func:`input_planes`."""
    a = float(pixel_scale) ** 2
    nuclei_label = _nuclei(nuc_b, nuc_i, cell_b, a, corrected)
    radius = int(np.round(CELL_CLOSING_RADIUS * pixel_scale))
    cell_label, n = _cells(nuclei_label, cell_b, cell_i, a, radius, corrected)
    dtype = np.uint16 if n <= 65535 else np.int32
    cell_label = cell_label.astype(dtype, copy=False)
    # each cell's nucleus: nucleus pixels inside cells, small parts (8-connected) dropped, the cell's id
    ids, n = exact.parts((cell_label > 0) & (nuclei_label > 0), 8)
    keep = exact.part_sizes(ids, n) >= NUC_MIN_AREA * a
    keep[0] = False
    nucleus = np.where(keep[ids], cell_label, 0).astype(dtype)
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
    scale = np.sqrt(label_hw[0] * label_hw[1] / (out_hw[0] * out_hw[1]))
    c, n = label_planes(*input_planes(nuclei, cell, label_hw), pixel_scale=float(scale), corrected=corrected)
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
    return label_planes(*input_planes(nuc, cel, zero.shape), pixel_scale=pixel_scale, corrected=corrected)
