"""Augmentations: ``normalize``, the albumentations pipelines of pipeline 1, and the HPA label
augmentations.

Order in a training sample: spatial albumentations pipeline (uint8 ``H x W x 4``) ->
:class:`LabelAugment` (channel edits that may rewrite the label) -> :func:`normalize`.

HPA label augmentations (image-level label, work on one image ``(H, W, 4)`` or a stack of
cells ``(N, H, W, 4)`` that share one label; channel indices from :mod:`common.constants`):

* :func:`green_to_negative`: the protein channel is dimmed to ``green * U(0, 0.1)``; the label
  becomes ``{Negative}`` (18) only.
* :func:`green_from_other`: the protein channel is replaced by the red (microtubules) channel
  -> label ``{Microtubules}`` (10) only, or by the yellow (ER) channel -> label
  ``{Endoplasmic reticulum}`` (6) only, times ``U(0.6, 1.0)``. (The original code copied the
  blue channel where red was meant; here it really is red.)
* :func:`scale_intensity`: each channel times its own ``U(0.6, 1.1)``; label unchanged.

All randomness comes from an explicit ``np.random.Generator`` (the datasets derive one per
sample from ``(seed, epoch, index)``), so samples are reproducible across workers and resumes.
"""
from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np
import torch

from common.constants import (
    BLUE,
    CHANNEL_STATS,
    ENDOPLASMIC_RETICULUM,
    GREEN,
    MICROTUBULES,
    NEGATIVE,
    NUM_CLASSES,
    RED,
    YELLOW,
)

# ----------------------------------------------------------------------------- fixed factors
# (the probabilities and INTENSITY_RANGE are the scripts' constants: P_*, INTENSITY_RANGE)
NEGATIVE_FACTOR = (0.0, 0.1)        # green * U(a, b) for green_to_negative
OTHER_FACTOR = (0.6, 1.0)           # red/yellow * U(a, b) for green_from_other

VARIANTS = ("masked", "center_cells")
P1_VARIANTS = (*VARIANTS, "cellpool")  # pipeline 1's VARIANT: cellpool trains as "masked", pools cells
_ = BLUE  # the nucleus channel is never copied into green (the original's bug)


# ----------------------------------------------------------------------------- normalisation
def normalize(img: np.ndarray, source: str = "competition") -> torch.Tensor:
    """uint8 ``(..., H, W, 4)`` RGBY -> float32 tensor ``(..., 4, H, W)``, standardised with
    ``constants.CHANNEL_STATS[source]`` ("competition" | "external")."""
    if source not in CHANNEL_STATS:
        raise ValueError(f"unknown channel-statistics source {source!r}; known: {sorted(CHANNEL_STATS)}")
    if img.ndim < 3 or img.shape[-1] != 4:
        raise ValueError(f"expected (..., H, W, 4) RGBY, got shape {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGBY, got {img.dtype}")
    lut = _norm_lut(source)
    out = np.empty(img.shape[:-3] + (4,) + img.shape[-3:-1], np.float32)
    for c in range(4):  # a 256-entry lookup per channel: exact and ~10x faster than float maths
        np.take(lut[c], img[..., c], out=out[..., c, :, :], mode="clip")
    return torch.from_numpy(out)


_NORM_LUTS: dict[str, np.ndarray] = {}


def _norm_lut(source: str) -> np.ndarray:
    if source not in _NORM_LUTS:
        stats = CHANNEL_STATS[source]
        v = np.arange(256, dtype=np.float32)[None, :] / np.float32(255.0)
        mean = np.asarray(stats["mean"], np.float32)[:, None]
        std = np.asarray(stats["std"], np.float32)[:, None]
        _NORM_LUTS[source] = ((v - mean) / std).astype(np.float32)
    return _NORM_LUTS[source]


# ----------------------------------------------------------------------------- label augmentations
def _one_hot(k: int, like: np.ndarray | None = None) -> np.ndarray:
    out = np.zeros(NUM_CLASSES, np.float32 if like is None else like.dtype)
    out[k] = 1
    return out


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def green_to_negative(img: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                      factor: float | None = None, factor_range=NEGATIVE_FACTOR):
    """Dim green to ``green * U(factor_range)`` (or ``* factor``); label -> {Negative} only.

    ``img``: uint8 ``(..., H, W, 4)`` (one image or a stack sharing one label). Returns new arrays.
    """
    f = float(rng.uniform(*factor_range)) if factor is None else float(factor)
    out = img.copy()
    out[..., GREEN] = _to_uint8(img[..., GREEN].astype(np.float32) * f)
    return out, _one_hot(NEGATIVE, np.asarray(label))


def green_from_other(img: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                     source: str | None = None, factor: float | None = None, factor_range=OTHER_FACTOR):
    """Replace green by ``red * f`` (label -> {Microtubules}) or ``yellow * f`` (label -> {ER}).

    ``source`` "red" | "yellow" (random 50/50 when None); ``f`` ~ U(factor_range) unless given.
    """
    if source is None:
        source = "red" if rng.random() < 0.5 else "yellow"
    if source not in ("red", "yellow"):
        raise ValueError(f"source must be 'red' or 'yellow', got {source!r}")
    f = float(rng.uniform(*factor_range)) if factor is None else float(factor)
    ch, cls = (RED, MICROTUBULES) if source == "red" else (YELLOW, ENDOPLASMIC_RETICULUM)
    out = img.copy()
    out[..., GREEN] = _to_uint8(img[..., ch].astype(np.float32) * f)
    return out, _one_hot(cls, np.asarray(label))


def scale_intensity(img: np.ndarray, rng: np.random.Generator, factor_range) -> np.ndarray:
    """Each channel times its own ``U(factor_range)`` (same factors for all cells of a stack)."""
    f = rng.uniform(*factor_range, size=img.shape[-1]).astype(np.float32)
    levels = np.arange(256, dtype=np.float32)
    out = np.empty_like(img)
    for c in range(img.shape[-1]):  # lookup table == clip(rint(x * f_c)) for every uint8 x
        np.take(_to_uint8(levels * f[c]), img[..., c], out=out[..., c], mode="clip")
    return out


class LabelAugment:
    """The HPA channel/label augmentations as one callable ``(img, label, rng) -> (img, label)``.

    With probability ``p_negative`` green_to_negative, else with ``p_other`` green_from_other
    (mutually exclusive), then with ``p_intensity`` scale_intensity. Labels are float (19,).
    """

    def __init__(self, p_negative: float, p_other: float, p_intensity: float, intensity_range,
                 negative_factor=NEGATIVE_FACTOR, other_factor=OTHER_FACTOR):
        if p_negative + p_other > 1:
            raise ValueError("p_negative + p_other must be <= 1")
        self.p_negative, self.p_other, self.p_intensity = p_negative, p_other, p_intensity
        self.intensity_range = tuple(intensity_range)
        self.negative_factor, self.other_factor = tuple(negative_factor), tuple(other_factor)

    def __call__(self, img: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        u = rng.random()
        if u < self.p_negative:
            img, label = green_to_negative(img, label, rng, factor_range=self.negative_factor)
        elif u < self.p_negative + self.p_other:
            img, label = green_from_other(img, label, rng, factor_range=self.other_factor)
        if self.p_intensity > 0 and rng.random() < self.p_intensity:
            img = scale_intensity(img, rng, self.intensity_range)
        return img, label

    @classmethod
    def from_cfg(cls, cfg: dict) -> LabelAugment:
        """From the script's P_GREEN_TO_NEGATIVE, P_GREEN_FROM_OTHER, P_INTENSITY, INTENSITY_RANGE."""
        return cls(p_negative=float(cfg["P_GREEN_TO_NEGATIVE"]), p_other=float(cfg["P_GREEN_FROM_OTHER"]),
                   p_intensity=float(cfg["P_INTENSITY"]), intensity_range=tuple(cfg["INTENSITY_RANGE"]))


# ----------------------------------------------------------------------------- spatial pipelines
def _affine(p: float) -> A.Affine:
    # = ShiftScaleRotate(shift_limit=0.2, scale_limit=0.2, rotate_limit=45), constant black border
    return A.Affine(translate_percent=(-0.2, 0.2), scale=(0.8, 1.2), rotate=(-45, 45),
                    interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_CONSTANT, fill=0, p=p)


def build_transforms(variant: str, image_size: int, train: bool, p_flip: float, p_affine: float,
                     p_dropout: float) -> A.Compose | None:
    """The albumentations pipeline of a pipeline-1 variant on uint8 ``(S, S, 4)`` images.

    "masked": transpose, h/v flips (each ``p_flip``), shift-scale-rotate (0.2, 0.2, 45 deg,
    ``p_affine``), coarse dropout (one hole of 70% x 70% of the side, ``p_dropout``).
    "center_cells": random square crop of side ``U(2/3 S, S)`` resized to ``S`` (identical to the
    original "upsample to 768, crop U(512, 768), resize to 512" at S = 512, with one resize
    instead of two), h/v flips, shift-scale-rotate. Returns None when not ``train`` (no TTA here).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown VARIANT {variant!r}; known: {VARIANTS}")
    if not train:
        return None
    s = int(image_size)
    flips = [A.HorizontalFlip(p=p_flip), A.VerticalFlip(p=p_flip)]
    if variant == "masked":
        ts = [A.Transpose(p=p_flip), *flips, _affine(p_affine),
              A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(0.7, 0.7),
                              hole_width_range=(0.7, 0.7), fill=0, p=p_dropout)]
    else:
        ts = [A.RandomSizedCrop(min_max_height=(int(round(s * 2 / 3)), s), size=(s, s), w2h_ratio=1.0,
                                p=1.0),
              *flips, _affine(p_affine)]
    return A.Compose(ts)


def apply_transforms(transforms: A.Compose | None, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Run an albumentations pipeline with randomness drawn from ``rng`` (reproducible)."""
    if transforms is None:
        return img
    seed = int(rng.integers(2**63 - 1))
    transforms.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return transforms(image=img)["image"]
