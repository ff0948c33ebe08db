"""Synthetic softmax maps of the official HPA networks, for comparing the post-processing with its oracle.

``maps(rng, side, ...)`` -> ``(nuclei, cell)``, float32 ``(side / 4, side / 4, 3)`` maps (channels
background, border, interior) of a ``side``-px field: cells around random or grid centres, split where
they meet (a border ridge whose strength and the interior's dip there are parameters, so cells can touch
through their borders or through their interiors), nuclei around the centres (pairs close enough to
touch), smooth noise and, optionally, probabilities rounded to a few levels (wide plateaus: ties in the
watersheds). Cells that reach the field's edge are kept.
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy.spatial import cKDTree


def _smooth_noise(rng, shape, scale: float, amount: float) -> np.ndarray:
    small = rng.normal(0, 1, (max(2, int(shape[0] / scale)), max(2, int(shape[1] / scale))))
    return amount * cv2.resize(small, shape[::-1], interpolation=cv2.INTER_CUBIC)


def _centres(rng, m: int, n: int, grid: bool, jitter: float) -> np.ndarray:
    if grid:
        k = int(np.ceil(np.sqrt(n)))
        step = m / k
        yy, xx = np.mgrid[:k, :k]
        c = (np.stack([yy.ravel(), xx.ravel()], 1) + 0.5) * step
        return (c + rng.uniform(-jitter, jitter, c.shape) * step)[:n]
    return rng.uniform(-0.05 * m, 1.05 * m, (n, 2))


def maps(rng, side: int, n_cells: int = 12, grid: bool = False, reach: float = 0.6, spread: float = 0.3,
         border: float = 0.6, dip: float = 0.3, nuc_frac: float = 0.45, pair: float = 0.3,
         split: float = 0.97, noise: float = 0.05, levels: int = 0, jitter: float = 0.12
         ) -> tuple[np.ndarray, np.ndarray]:
    """``(nuclei, cell)`` maps of a ``side``-px field (see the module docstring). ``reach``: cell radius
    over the centres' spacing (above ~0.5 cells touch); ``border``: the border ridge where cells meet;
    ``spread``: the radii's spread around it; ``dip``: how far the interior falls where cells meet;
    ``pair``: chance of a second nucleus touching the first, ``split``: the border ridge between the two;
    ``jitter``: grid centres moved by up to this fraction of the spacing."""
    m = side // 4
    yy, xx = np.mgrid[:m, :m].astype(np.float32)
    centres = _centres(rng, m, n_cells, grid, jitter)
    spacing = m / np.sqrt(max(n_cells, 1))
    radius = spacing * reach * rng.uniform(1 - spread, 1 + spread, len(centres))
    cell_b, cell_i = np.zeros((m, m), np.float32), np.zeros((m, m), np.float32)
    if len(centres):
        d, near = cKDTree(centres).query(np.stack([yy.ravel(), xx.ravel()], 1), k=min(2, len(centres)))
        d, near = d.reshape(m, m, -1), near.reshape(m, m, -1)
        gap = d[..., 1] - d[..., 0] if len(centres) > 1 else np.full((m, m), 1e9)  # twice the way to the edge
        rim = radius[near[..., 0]] - d[..., 0]
        inside = rim > 0
        edge = np.exp(-(gap / 2.5) ** 2) * inside + np.exp(-(rim / 2.0) ** 2) * (np.abs(rim) < 6)
        cell_b = np.clip(border * edge + _smooth_noise(rng, (m, m), 6, noise), 0, 1)
        interior = inside * (0.92 - dip * np.exp(-(gap / 3.0) ** 2))
        cell_i = np.clip(interior + _smooth_noise(rng, (m, m), 5, noise), 0, 1)
    # nuclei: a disk near each centre; some centres get a second nucleus close by (touching nuclei)
    nuc_i = np.zeros((m, m), np.float32)
    nuc_b = np.zeros((m, m), np.float32)
    ridge = np.zeros((m, m), np.float32)
    for (y, x), r in zip(centres, radius):
        rn = r * nuc_frac
        spots = [(y, x)]
        if rng.random() < pair:
            a = rng.uniform(0, 2 * np.pi)
            spots.append((y + np.sin(a) * rn * 1.3, x + np.cos(a) * rn * 1.3))
        y0, y1 = max(0, int(y - 3 * rn - 8)), min(m, int(y + 3 * rn + 9))
        x0, x1 = max(0, int(x - 3 * rn - 8)), min(m, int(x + 3 * rn + 9))
        if y0 >= y1 or x0 >= x1:
            continue
        win = (slice(y0, y1), slice(x0, x1))
        wy, wx = yy[win], xx[win]
        dn = np.min([np.hypot(wy - sy, wx - sx) - rn * rng.uniform(0.8, 1.1) for sy, sx in spots], axis=0)
        nuc_i[win] = np.maximum(nuc_i[win], 0.95 / (1 + np.exp(np.minimum(dn / 1.2, 50))))
        nuc_b[win] = np.maximum(nuc_b[win], 0.7 * np.exp(-(dn / 1.5) ** 2))
        if len(spots) == 2:  # a border ridge on the line halfway between the two nuclei
            (ay, ax), (by, bx) = spots
            my, mx = (ay + by) / 2, (ax + bx) / 2
            half = ((wy - my) * (by - ay) + (wx - mx) * (bx - ax)) / np.hypot(by - ay, bx - ax)
            close = np.hypot(wy - my, wx - mx) < rn * 2
            ridge[win] = np.maximum(ridge[win], split * np.exp(-(half / 2.0) ** 2) * close)
    nuc_i = np.clip(nuc_i + _smooth_noise(rng, (m, m), 4, noise), 0, 1)
    # the ridge: nuclei border 0.55 and cell border 0.45 of it (their uint8 sum passes 243 of 255 near its
    # crest, where the seeds stop, or wraps past 255), the nuclei interior kept above the mask threshold
    nuc_b = np.maximum(nuc_b * (1 - ridge), 0.55 * ridge)
    nuc_i = np.minimum(nuc_i, np.maximum(0.45, 1 - 0.55 * ridge))
    cell_b = np.maximum(cell_b, 0.45 * ridge)
    out = []
    for b, i in ((nuc_b, nuc_i), (cell_b, cell_i)):
        if levels:
            b, i = (np.round(v * levels) / levels for v in (b, i))
        i = np.minimum(i, 1 - b)
        out.append(np.stack([1 - b - i, b, i], -1).astype(np.float32))
    return out[0], out[1]


def random_case(seed: int) -> tuple[int, dict, tuple[np.ndarray, np.ndarray]]:
    """``(side, parameters, (nuclei, cell))`` of seeded random maps: 384-512 px fields of 2-11 cells,
    apart or touching, with or without border ridges, touching nuclei and plateaus."""
    rng = np.random.default_rng(seed)
    side = int(rng.choice([384, 448, 512]))
    kw = dict(n_cells=int(rng.integers(2, 12)), reach=float(rng.uniform(0.2, 0.8)),
              border=float(rng.uniform(0, 0.9)), dip=float(rng.uniform(0, 1.0)),
              pair=float(rng.uniform(0, 0.6)), split=float(rng.uniform(0.97, 1.03)),
              noise=float(rng.uniform(0.01, 0.1)), levels=int(rng.choice([0, 0, 8, 20])))
    return side, kw, maps(rng, side, **kw)
