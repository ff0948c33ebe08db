"""Test-time flips: the eight flip/transpose variants of a square and their inverses.

One home for the dihedral group that S5's TTA, cell pooling and the HPA segmenter share (torch only,
no augmentation library)."""
from __future__ import annotations

import torch

N_DIHEDRAL = 8  # the flip/transpose variants of a square: k = 0 (identity) .. 7


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th flip/transpose variant of ``(..., H, W)``: bit 4 transposes (first), bit 2 flips H,
    bit 1 flips W; k = 0 is the identity (TTA of S5 and of the HPA segmenter)."""
    if k & 4:
        x = x.transpose(-2, -1)
    dims = [d for d, bit in ((-2, 2), (-1, 1)) if k & bit]
    return x.flip(dims) if dims else x


def undo_dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of :func:`dihedral` (the flips first, then the transpose)."""
    dims = [d for d, bit in ((-2, 2), (-1, 1)) if k & bit]
    if dims:
        x = x.flip(dims)
    return x.transpose(-2, -1) if k & 4 else x
