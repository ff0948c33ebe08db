"""Cell segmentation behind one interface (used by S2 and S5).

    seg = get_segmenter("auto")              # official HPA networks if their weights are there, else built-in
    [(cell, nucleus)] = seg.segment([img])   # img: H x W x 4 uint8 RGBY; label maps with the same ids

Which image a segmenter is handed, and at which scale, is decided in one place: :mod:`common.fov`.

Label maps: 0 = background, cells 1..n, the nucleus of cell k has id k; uint16 (int32 past 65535 cells).
``common.resize.resize_labels`` (the one label-map kernel, imported from there) and ``relabel``
bring label maps to another size and back to 1..n.
"""
from __future__ import annotations

import inspect

import numpy as np
from skimage.segmentation import relabel_sequential

from common.constants import HPA_SEG_DIR
from common.segmentation import hpa
from common.segmentation.builtin import BuiltinSegmenter
from common.segmentation.hpa import HPASegmenter
from common.segmentation.hpa.segmenter import PRECISIONS

NAMES = ("auto", "builtin", "hpa")
ALIASES = {"hpacellseg": "hpa", "hpa-cell-segmentation": "hpa", "watershed": "builtin"}

__all__ = ["NAMES", "PRECISIONS", "BuiltinSegmenter", "check_precision", "get_segmenter", "match_cells",
           "relabel", "resolve_name"]


def resolve_name(name: str = "auto", weights_dir=HPA_SEG_DIR) -> str:
    """``"builtin"`` or ``"hpa"``: what ``get_segmenter(name)`` builds (``auto`` looks for the weights)."""
    key = ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
    if key not in NAMES:
        raise ValueError(f"unknown segmenter {name!r}; choose one of {NAMES} (or alias 'hpacellseg')")
    if key == "auto":
        return "hpa" if hpa.available(weights_dir) else "builtin"
    return key


def check_precision(precision: str, step: str, networks: bool = True) -> str:
    """``SEG_PRECISION`` of ``step``: stops with one line unless it is one of ``PRECISIONS``; with ``bf16``
    and the official networks in use (``networks``) says that labels may then differ from the official
    cells."""
    if precision not in PRECISIONS:
        raise SystemExit(f"{step}: --SEG_PRECISION {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and networks:
        print(f"{step}: SEG_PRECISION bf16: where the HPA networks segment, they run under bfloat16 "
              "autocast, so cell labels may differ from the official cells (fp32 is the truth path)",
              flush=True)
    return precision


def _accepted(cls, kw: dict) -> dict:
    params = inspect.signature(cls).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return kw
    return {k: v for k, v in kw.items() if k in params}


def get_segmenter(name: str = "auto", weights_dir=HPA_SEG_DIR, device: str = "auto", precision: str = "fp32",
                  **kw):
    """A segmenter with ``.name`` and ``.segment(images) -> [(cell, nucleus)]``.

    ``name``: ``"auto"`` (the official HPA networks when ``hpa.available(weights_dir)``, else built-in),
    ``"builtin"`` (seeded watershed, no weights) or ``"hpa"`` (alias ``"hpacellseg"``). ``precision``
    (``SEG_PRECISION``): the HPA networks' arithmetic, ``fp32`` or ``bf16``. Extra keywords go to the
    chosen class; with ``"auto"`` the ones it does not take are dropped.
    """
    key = resolve_name(name, weights_dir)
    auto = str(name).strip().lower() == "auto"
    if key == "builtin":
        return BuiltinSegmenter(**(_accepted(BuiltinSegmenter, kw) if auto else kw))
    return HPASegmenter(weights_dir, device=device, precision=precision,
                        **(_accepted(HPASegmenter, kw) if auto else kw))


# ----------------------------------------------------------------------------- label-map helpers
def relabel(cell: np.ndarray, nucleus: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Cells renumbered 1..n in order of their old ids; nucleus pixels take their cell's new id.

    Nucleus pixels outside their cell (or of a vanished cell) become background. uint16 when n <= 65535.
    """
    new, _, _ = relabel_sequential(cell.astype(np.int64, copy=False))
    n = int(new.max()) if new.size else 0
    dtype = np.uint16 if n <= 65535 else np.int32
    new = new.astype(dtype)
    if nucleus is None:
        return new, None
    nuc = np.where((nucleus == cell) & (cell > 0), new, 0).astype(dtype)
    return new, nuc


def match_cells(truth: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.6) -> dict:
    """How well ``pred`` recovers the cells of ``truth`` (label maps of one shape).

    Each true cell is matched to the predicted cell of highest IoU (IoU > 0.5 makes the match
    one-to-one). Returns ``n_true``, ``n_pred``, ``matched`` (true cells with IoU >= threshold),
    ``matched_fraction``, ``mean_iou`` (over the matched ones) and ``ious`` (best IoU per true cell).
    """
    if truth.shape != pred.shape:
        raise ValueError(f"label maps differ in shape: {truth.shape} vs {pred.shape}")
    t, _, _ = relabel_sequential(truth.astype(np.int64, copy=False))
    p, _, _ = relabel_sequential(pred.astype(np.int64, copy=False))
    nt, npred = int(t.max()), int(p.max())
    if nt == 0:
        return {"n_true": 0, "n_pred": npred, "matched": 0, "matched_fraction": 1.0, "mean_iou": 1.0,
                "ious": np.zeros(0)}
    inter = np.bincount(t.ravel() * (npred + 1) + p.ravel(), minlength=(nt + 1) * (npred + 1))
    inter = inter.reshape(nt + 1, npred + 1)
    area_t, area_p = inter.sum(1), inter.sum(0)
    union = area_t[:, None] + area_p[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)[1:, 1:]
    best = iou.max(1) if npred else np.zeros(nt)
    ok = best >= iou_threshold
    return {"n_true": nt, "n_pred": npred, "matched": int(ok.sum()), "matched_fraction": float(ok.mean()),
            "mean_iou": float(best[ok].mean()) if ok.any() else 0.0, "ious": best}
