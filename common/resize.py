"""The one image resize and the one label-map resize of the project.

Every step that changes the size of an image (S2's working copy, the datasets, the cell crops, S5's
views) calls :func:`resize_image`; every step that changes the size of a label map (S2, S4.1, S4.2, S5,
the segmenters) calls :func:`resize_labels`. One kernel each, so a cell's training crop (S4.1) and its
test crop (S5) are the same pixels whatever the original size (1728, 2048, 3072 px ...).
"""
from __future__ import annotations

import cv2
import numpy as np

IMAGE_SHRINK = cv2.INTER_AREA      # images made smaller: area averaging
IMAGE_GROW = cv2.INTER_LINEAR      # images made larger (or kept in area): bilinear
LABEL_KERNEL = cv2.INTER_NEAREST_EXACT  # label maps: nearest pixel centre (symmetric, ids unchanged)


def _hw(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    return int(size[0]), int(size[1])


def resize_image(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """An ``H x W (x C)`` image at ``size`` (a side, or ``(height, width)``): area averaging when the
    result has fewer pixels, bilinear otherwise. The same array back when the size already matches."""
    h, w = _hw(size)
    if img.shape[:2] == (h, w):
        return img
    shrink = h * w < img.shape[0] * img.shape[1]
    out = cv2.resize(img, (w, h), interpolation=IMAGE_SHRINK if shrink else IMAGE_GROW)
    return out.reshape(h, w, *img.shape[2:])


def resize_labels(labels: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """A label map at ``size`` (a side, or ``(height, width)``) with :data:`LABEL_KERNEL`.

    Keeps the dtype and the ids (no new ids appear; very small cells may vanish when shrinking).
    A copy when the size already matches.
    """
    h, w = _hw(size)
    if labels.shape[:2] == (h, w):
        return labels.copy()
    native = (np.uint8, np.uint16, np.int16, np.int32)
    src = labels if labels.dtype in native else labels.astype(np.int32)  # ids < 2**31 assumed
    out = cv2.resize(src, (w, h), interpolation=LABEL_KERNEL)
    return out.astype(labels.dtype, copy=False)
