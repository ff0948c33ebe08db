"""One field of view, prepared one way for S2 and S5: working image, segmentation, label maps.

    fovs = fov.prepare([original], size=512, segmenter=seg, full=True)
    f = fovs[0]   # f.image (512 x 512 x 4), f.cell / f.nucleus (512 x 512), f.cell_full (H x W) ...

This is the only place that decides which image a segmenter is handed and at which scale:

* ``seg_at="original"`` hands the original image, ``"resized"`` the working copy; ``"auto"`` is
  ``original`` for the official HPA networks and ``resized`` for the built-in watershed.
* The official networks (``segmenter.uses_original_size``) always see the ORIGINAL image scaled by 0.25,
  whatever they are handed (the working copy of a 2048-px image is already that size), and return label
  maps at the original size; the working-size maps are these resized with the one label kernel.
* The built-in watershed segments what it is handed at that size; the other size is made with the same
  kernel (:func:`common.resize.resize_labels`).

Ids: cells 1..n at the size they were labelled at; the other size keeps the same ids (a cell too small
to survive the resize is absent there, never renumbered), so S5 can score a cell at 512 px and write
its mask at the original size under one id.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.resize import resize_image, resize_labels
from common.segmentation import relabel

SEG_AT = ("auto", "original", "resized")


@dataclass
class FieldOfView:
    """One prepared field of view, the one record S2 writes and S5 scores: working image and label
    maps, the original-size label maps and image when there, the original's size and the field's part
    of the working map, and the cell ids scored (S5 sets them)."""

    image: np.ndarray                       # working image, size x size x 4 uint8
    cell: np.ndarray                        # working-size label maps (uint16), nucleus k in cell k
    nucleus: np.ndarray | None
    hw: tuple[int, int]                     # (height, width) of the original image
    cell_full: np.ndarray | None = None     # original-size label maps, when made or kept by S2
    nucleus_full: np.ndarray | None = None
    original: np.ndarray | None = None      # the original image, when kept (``keep_original=True``)
    region: tuple[int, int] | None = None   # the field's part (rows, columns) of the working map: all of it
    ids: list[int] | None = None            # the cells scored (S5), ids of ``cell``

    def __post_init__(self):
        self.hw = (int(self.hw[0]), int(self.hw[1]))
        if self.region is None:
            self.region = tuple(self.cell.shape[:2])

    @classmethod
    def of(cls, image: np.ndarray, cell: np.ndarray, ids: list[int] | None = None,
           original: np.ndarray | None = None, cell_full: np.ndarray | None = None) -> FieldOfView:
        """A record of a working image and label map as they are (tools, tests, benchmarks); ``hw`` is the
        original's size, else ``cell_full``'s, else the map's."""
        hw = next(a.shape[:2] for a in (original, cell_full, cell) if a is not None)
        return cls(image, cell, None, hw, cell_full, None, original, ids=None if ids is None else list(ids))

    def labels_full(self) -> np.ndarray:
        """The cell label map at the original size (:func:`labels_at`)."""
        return labels_at(self.hw, self.cell, self.cell_full)


def resolve_seg_at(seg_at: str, segmenter) -> str:
    """``original`` or ``resized``: what :func:`prepare` hands ``segmenter`` (an object or its name,
    ``hpa`` | ``builtin``) for ``seg_at``."""
    key = str(seg_at).strip().lower()
    if key not in SEG_AT:
        raise ValueError(f"SEG_AT {seg_at!r}: choose one of {SEG_AT}")
    if key == "auto":
        official = segmenter == "hpa" if isinstance(segmenter, str) else \
            getattr(segmenter, "uses_original_size", False)
        return "original" if official else "resized"
    return key


def full_mask_path(mask_path: str | Path) -> Path:
    """Where S2 keeps the original-size masks beside a working-size mask file:
    ``{split}_cell_mask/{ID}.npz`` -> ``{split}_cell_mask_full/{ID}.npz``."""
    mask_path = Path(mask_path)
    return mask_path.parent.with_name(mask_path.parent.name + "_full") / mask_path.name


def working_image(original: np.ndarray, size: int) -> np.ndarray:
    """The working copy (``size x size``) of an original image: the one image resize."""
    return resize_image(original, int(size))


def labels_at(shape: tuple[int, int], cell: np.ndarray, cell_full: np.ndarray | None = None) -> np.ndarray:
    """The cell label map at ``shape``: ``cell_full`` when it has that shape, else ``cell`` resized with
    the one label kernel. S4.1 (training crops) and S5 (test crops) both take their labels from here."""
    shape = (int(shape[0]), int(shape[1]))
    if cell_full is not None and cell_full.shape[:2] == shape:
        return cell_full
    return resize_labels(cell, shape)


def prepare(originals: list[np.ndarray], size: int, segmenter, seg_at: str = "auto", full: bool = False,
            workings: list[np.ndarray] | None = None, keep_original: bool = False) -> list[FieldOfView]:
    """Prepare a batch of fields of view (``H x W x 4`` uint8 RGBY originals; one ``segment`` call).

    ``size``: side of the working image and maps; ``full``: also return the original-size maps;
    ``workings``: the working images when already made (else :func:`working_image`).
    """
    originals = list(originals)
    workings = [working_image(o, size) for o in originals] if workings is None else list(workings)
    where = resolve_seg_at(seg_at, segmenter)
    handed = originals if where == "original" else workings
    hws = [tuple(int(v) for v in o.shape[:2]) for o in originals]
    at_original = getattr(segmenter, "uses_original_size", False)
    results = segmenter.segment(handed, sizes=hws) if at_original else segmenter.segment(handed)
    out = []
    for o, wimg, hw, (cell, nuc) in zip(originals, workings, hws, results):
        if nuc is None:
            nuc = np.zeros_like(cell)
        cell, nuc = relabel(cell, nuc)          # ids 1..n where they were labelled
        cell_w, nuc_w = resize_labels(cell, wimg.shape[:2]), resize_labels(nuc, wimg.shape[:2])
        cell_full = nuc_full = None
        if full:  # as labelled when that was at the original size, else the working maps resized
            cell_full, nuc_full = (cell, nuc) if cell.shape == hw else \
                (resize_labels(cell_w, hw), resize_labels(nuc_w, hw))
        out.append(FieldOfView(wimg, cell_w, nuc_w, hw, cell_full, nuc_full, o if keep_original else None))
    return out

