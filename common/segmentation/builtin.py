"""Built-in cell segmentation without weights: a nucleus-seeded watershed.

In the spirit of HPA-Cell-Segmentation's ``label_cell``, but on the raw channels instead of network
outputs:

1. nuclei: blue smoothed, Otsu threshold (with a floor), holes filled, small specks removed; touching
   nuclei split by a watershed on the distance transform seeded at its local maxima; small nuclei
   dropped;
2. cells: red + yellow (+ a little blue) smoothed; foreground = above a fraction of its Otsu threshold
   (or a nucleus); a watershed on the inverted signal seeded with the nuclei, so cells meet at the
   dimmest seam between them; per-cell closing and hole filling; small cells dropped (with their
   nucleus: no cell without a nucleus, no nucleus without a cell);
3. ids relabelled 1..n; nucleus k lies in cell k. Cells touching the border are kept.

Every length is given in pixels of a ``REF_SIZE`` (2048 px) image and scaled by ``side / REF_SIZE``
(areas by its square), so a 512 px and a 2048 px version of one field of view give the same cells.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.morphology import disk
from skimage.segmentation import relabel_sequential, watershed

from common.resize import resize_labels

REF_SIZE = 2048  # image side (px) for which the lengths and areas below are given


@dataclass
class BuiltinParams:
    """Parameters of the built-in segmenter; lengths in px and areas in px² of a REF_SIZE image."""

    nuc_sigma: float = 4.0            # Gaussian smoothing of the blue channel
    nuc_otsu_factor: float = 1.0      # nucleus threshold = factor * Otsu(blue) ...
    nuc_floor: float = 20.0           # ... but at least this (0..255): a dark image has no nuclei
    nuc_min_area: float = 2500.0      # nuclei smaller than this are dropped (HPA: 2500 px at ~2048 px)
    nuc_speck_area: float = 500.0     # specks removed before splitting (HPA: 500)
    nuc_split_distance: float = 40.0  # min distance between two nucleus centres when splitting
    nuc_split_h: float = 8.0          # a distance peak must rise this much above its saddle to seed
    cyto_sigma: float = 4.0           # Gaussian smoothing of the cytoplasm signal
    cyto_blue_weight: float = 0.25    # weight of blue in the cytoplasm signal (red, yellow: 1, 1)
    cyto_otsu_factor: float = 0.5     # cell foreground = factor * Otsu(cytoplasm) (HPA: 0.5) ...
    cyto_floor: float = 8.0           # ... but at least this (0..255)
    cell_min_area: float = 5500.0     # cells smaller than this are dropped (HPA: 5500)
    closing_radius: float = 6.0       # per-cell closing (HPA: disk(6))


def _gauss(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of a float32 image (OpenCV: several times faster than scipy here)."""
    if sigma <= 0.3:
        return x
    return cv2.GaussianBlur(x, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)


def _otsu(x: np.ndarray) -> float:
    return float(threshold_otsu(x)) if float(x.max()) > float(x.min()) else float(x.max())


def _per_label(labels: np.ndarray, fn) -> np.ndarray:
    """Apply ``fn(binary) -> binary`` to each label inside its (padded) box; later ids win overlaps
    only where the pixel is background (existing labels are never overwritten)."""
    out = labels.copy()
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        pad = 8
        sl = tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(sl, labels.shape))
        grown = fn(labels[sl] == k)
        view = out[sl]
        view[grown & (view == 0)] = k
    return out


def _remove_small(labels: np.ndarray, min_area: float) -> np.ndarray:
    if labels.max() == 0:
        return labels
    areas = np.bincount(labels.ravel())
    small = areas < min_area
    small[0] = False
    labels = labels.copy()
    labels[small[labels]] = 0
    return labels


class BuiltinSegmenter:
    """Nucleus-seeded watershed on the raw RGBY channels. No weights, CPU only.

    ``segment(images)``: list of H x W x 4 uint8 RGBY -> list of ``(cell, nucleus)`` label maps.
    Keyword arguments override :class:`BuiltinParams` fields (e.g. ``cell_min_area=4000``).
    """

    name = "builtin"
    uses_original_size = False    # segments the handed image at its own size (common.fov)

    def __init__(self, ref_size: int = REF_SIZE, **params):
        bad = set(params) - set(BuiltinParams.__dataclass_fields__)
        if bad:
            raise TypeError(f"unknown built-in segmenter parameter(s) {sorted(bad)}; "
                            f"known: {sorted(BuiltinParams.__dataclass_fields__)}")
        self.ref_size = ref_size
        self.params = BuiltinParams(**params)

    def __repr__(self) -> str:
        return f"BuiltinSegmenter({asdict(self.params)})"

    def segment(self, images, sizes=None) -> list[tuple[np.ndarray, np.ndarray]]:
        """``[(cell, nucleus)]`` of each image, at ``sizes[i]`` when given (:func:`resize_labels`),
        else at the image's own size."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            raise TypeError("segment() takes a list of images; wrap a single image as [img]")
        out = [self.segment_one(img) for img in images]
        if sizes is not None:
            out = [(resize_labels(c, hw), resize_labels(n, hw)) for (c, n), hw in zip(out, sizes)]
        return out

    # ------------------------------------------------------------------ one image
    def segment_one(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if img.ndim != 3 or img.shape[2] != 4 or img.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 4 uint8 RGBY image, got {img.shape} {img.dtype}")
        p = self.params
        s = float(np.sqrt(img.shape[0] * img.shape[1])) / self.ref_size  # length scale
        a = s * s                                                         # area scale
        nuclei = self._nuclei(img[..., 2], s, a)
        if nuclei.max() == 0:
            z = np.zeros(img.shape[:2], np.uint16)
            return z, z.copy()
        cyto = (img[..., 0].astype(np.float32) + img[..., 3] + p.cyto_blue_weight * img[..., 2]) \
            / (2.0 + p.cyto_blue_weight)
        cyto = _gauss(cyto, p.cyto_sigma * s)
        thr = max(p.cyto_otsu_factor * _otsu(cyto), p.cyto_floor)
        fg = (cyto > thr) | (nuclei > 0)
        cells = watershed(-cyto, nuclei, mask=fg)
        r = max(int(round(p.closing_radius * s)), 1)
        se = disk(r).astype(np.uint8)

        def tidy(b: np.ndarray) -> np.ndarray:
            b = np.pad(b.astype(np.uint8), r)
            b = cv2.morphologyEx(b, cv2.MORPH_CLOSE, se)[r:-r, r:-r]
            return ndi.binary_fill_holes(b)

        cells = _per_label(cells, tidy)
        cells = _remove_small(cells, p.cell_min_area * a)
        # keep only the connected piece of each cell that holds its nucleus
        cells = self._nucleus_component(cells, nuclei)
        # the watershed gave cell k the id of its seed, nucleus k: renumber both together
        old_ids = cells
        cells, fw, _ = relabel_sequential(old_ids)
        nuc = fw[np.where((nuclei == old_ids) & (old_ids > 0), old_ids, 0)]
        dtype = np.uint16 if cells.max() <= 65535 else np.int32
        return cells.astype(dtype), nuc.astype(dtype)

    def _nuclei(self, blue: np.ndarray, s: float, a: float) -> np.ndarray:
        p = self.params
        b = _gauss(blue.astype(np.float32), p.nuc_sigma * s)
        thr = max(p.nuc_otsu_factor * _otsu(b), p.nuc_floor)
        fg = ndi.binary_fill_holes(b > thr)
        comp, n = ndi.label(fg)
        comp = _remove_small(comp, p.nuc_speck_area * a)
        if comp.max() == 0:
            return comp.astype(np.int32)
        fg = comp > 0
        # exact Euclidean distance; cv2.distanceTransform(DIST_MASK_PRECISE) alternates between two
        # results (last-bit differences) from one call to the next, which moved a cell's pixel
        dist = ndi.distance_transform_edt(fg).astype(np.float32)
        dist = _gauss(dist, max(1.0, 2.0 * s))
        md = max(int(round(p.nuc_split_distance * s)), 1)
        peaks = peak_local_max(dist, min_distance=md, labels=comp, exclude_border=False,
                               threshold_abs=max(p.nuc_split_h * s, 1.0))
        markers = np.zeros(blue.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        # a component without any peak (too thin) keeps one seed at its maximum
        seeded = np.zeros(int(comp.max()) + 1, bool)
        seeded[comp[markers > 0]] = True
        for k, sl in enumerate(ndi.find_objects(comp), start=1):
            if sl is None or seeded[k]:
                continue
            sub = np.where(comp[sl] == k, dist[sl], -1)
            y, x = np.unravel_index(int(np.argmax(sub)), sub.shape)
            markers[sl][y, x] = markers.max() + 1
        nuclei = watershed(-dist, markers, mask=fg)
        nuclei = _remove_small(nuclei, p.nuc_min_area * a)
        return nuclei

    @staticmethod
    def _nucleus_component(cells: np.ndarray, nuclei: np.ndarray) -> np.ndarray:
        """Drop pieces of a cell not connected to its nucleus, and cells whose nucleus is gone."""
        out = np.zeros_like(cells)
        for k, sl in enumerate(ndi.find_objects(cells), start=1):
            if sl is None:
                continue
            b = cells[sl] == k
            has_nuc = b & (nuclei[sl] > 0)
            if not has_nuc.any():
                continue
            comp, n = ndi.label(b)
            if n > 1:
                keep = np.unique(comp[has_nuc])
                b = np.isin(comp, keep[keep > 0])
            out[sl][b] = k
        return out
