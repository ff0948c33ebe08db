"""The competition's mask string format (the only module that knows it) and submission files.

encode: (H, W) uint8 -> (H, W, 1) Fortran order -> pycocotools RLE counts -> zlib level 9
-> base64 -> ASCII. The empty 2048x2048 mask encodes to ``eNoLCAgIMAEABJkBdQ==``.
"""
from __future__ import annotations

import base64
import zlib

import numpy as np
from pycocotools import mask as mask_util


def encode_binary_mask(mask: np.ndarray) -> str:
    """Encode one (H, W) boolean/0-1 mask as the competition's ASCII string."""
    if mask.ndim != 2:
        raise ValueError(f"encode_binary_mask expects a 2-D mask, got shape {mask.shape}")
    m = np.asfortranarray(mask.astype(np.uint8, copy=False).reshape(mask.shape[0], mask.shape[1], 1))
    counts = mask_util.encode(m)[0]["counts"]
    return base64.b64encode(zlib.compress(counts, 9)).decode("ascii")


def decode_to_rle(s: str, height: int, width: int) -> dict:
    """The competition string -> a pycocotools compressed RLE dict (no full mask is built)."""
    counts = zlib.decompress(base64.b64decode(s))
    return {"size": [int(height), int(width)], "counts": counts}


def decode_binary_mask(s: str, height: int, width: int) -> np.ndarray:
    """The competition string -> (H, W) bool mask."""
    return mask_util.decode(decode_to_rle(s, height, width)).astype(bool)
