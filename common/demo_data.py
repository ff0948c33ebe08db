"""A deterministic synthetic HPA-like dataset with per-cell truth (the demo data of S0).

An image is drawn like an HPA field of view: 8-30 irregular, touching cells (some cut by the
image border), each with one nucleus; red = microtubules radiating from the nucleus, yellow =
reticular ER (denser near the nucleus), blue = textured nuclei, green = the protein of interest
with a distinct pattern per class (:data:`GREEN_PATTERNS`). The cytoplasm (red + yellow) fills
each cell with a dimmer seam along cell borders and dark background outside cells, so that a
seeded watershed from the nuclei over the cytoplasm recovers the cells.

Weak labels, as in HPA: an image's label set is drawn from the real label combinations of the
HPA 2021 training set (:data:`LABEL_COMBOS`, tempered so rare classes show up in a small demo).
Each cell then expresses a random non-empty subset of those classes, and in some images a
fraction of cells is Negative (class 18). The image label is the union of its cells' labels, so
giving every cell the image label is measurably worse than predicting each cell's own classes.
Mitotic spindle (11) is only expressed by rounded mitotic cells.

Public API: :func:`sample_image_labels`, :func:`make_image`, :func:`make_dataset`,
:func:`make_image_id`, :func:`label_table`.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage
from skimage.segmentation import find_boundaries, watershed
from tqdm import tqdm

from common import io, owned, parallel
from common.constants import CHANNELS, CLASS_NAMES, NEGATIVE, NUM_CLASSES, format_labels
from common.encoding import encode_binary_mask

VERSION = 2                    # bump when the generator's output changes (invalidates S0's skip)
MIN_CELLS, MAX_CELLS = 8, 30   # default cells per image (inclusive)
BASE_SIZE = 512                # lengths below are in pixels at this size and scale with the image
LABEL_TEMPER = 0.5             # combo weight = count ** LABEL_TEMPER (1 = real frequencies)
RARE_BOOST = 0.5               # chance to draw a combo containing a uniformly chosen class
CELL_EXPRESS_PROB = 0.7        # chance a cell shows each class of its image (at least one kept)
NEG_IMAGE_PROB = 0.35          # chance an image (not all-Negative) has some Negative cells
NEG_CELL_FRAC = (0.1, 0.4)     # fraction of Negative cells in such an image
DISTRACTOR_MITOSIS_PROB = 0.3  # chance of one mitotic cell that does not show class 11
CONFIG_NAME = "demo_config.json"  # written last in COMPETITION_DIR (S0): the config that made the dataset
MANIFEST_NAME = "demo_manifest.json"  # written first: every file the generator writes (all it may delete)

GREEN_PATTERNS = {
    0: "nucleoplasm fill (dim in nucleoli)", 1: "thin rim on the nuclear border",
    2: "1-4 nucleoli blobs", 3: "tiny dots inside nucleoli", 4: "10-25 speckles in the nucleus",
    5: "1-6 bright nuclear dots", 6: "ER network (the yellow texture)",
    7: "perinuclear cap on one side of the nucleus", 8: "wavy filaments circling the nucleus",
    9: "straight parallel stress fibres", 10: "radial microtubules (the red texture)",
    11: "bipolar spindle in a rounded mitotic cell", 12: "1-2 dots beside the nucleus",
    13: "rim along the cell border", 14: "short tubular fragments", 15: "one big blob by the nucleus",
    16: "smooth cytoplasm fill", 17: "many small cytoplasmic dots", 18: "faint background only",
}

# ----------------------------------------------------------------------------- label table
# Label combinations of the HPA 2021 competition train set (21,806 images; labels as sets,
# class ids ascending) seen in at least 3 images, with their image counts ("combo:count").
# Derived from train_labels.csv; tests/test_demo_data.py checks it against ../shared.
N_REAL_IMAGES = 21806
LABEL_COMBOS_TEXT = """
0:1551 0|16:1278 14:1054 16:906 13:880 4:788 7:719 5:636 0|2:596 0|13:588 12:561 3:549 8:529 2:515
0|7:481 6:476 0|12:414 10:404 0|5:383 0|14:378 13|16:365 0|1:305 17:302 9:300 0|3:286 5|16:238
2|16:225 1:221 4|16:211 0|13|16:188 12|16:188 0|2|16:157 0|8:136 0|12|16:135 0|9:132 0|17:113
0|10:103 9|13:99 9|16:99 0|5|16:98 3|16:98 4|13:93 14|16:91 7|16:88 0|7|16:87 10|16:87 1|16:85 15:82
2|13:78 2|14:78 0|3|16:76 0|1|16:70 6|16:61 8|16:59 0|2|13:55 0|2|7:54 1|2:53 0|4:51 0|1|2:50
0|9|16:50 2|7:46 0|2|14:45 16|17:43 9|13|16:42 5|13:38 7|13:38 0|15:37 0|14|16:36 5|7:36 12|13:35
15|16:35 0|6:34 4|14:34 18:34 0|5|13:32 2|6|16:31 2|10:31 12|14:30 0|8|16:29 0|9|13:29 3|14:29
0|10|16:25 1|4:25 2|8:25 2|12:25 6|13:25 0|2|13|16:24 0|5|7:24 0|12|13:24 2|13|16:24 0|7|13:23
1|14:23 2|6:23 5|15:23 3|7:22 4|13|16:22 5|14:22 13|14:22 1|6:21 0|2|5:20 2|4:20 2|13|14:20 9|12:20
4|7:19 7|12:19 12|13|16:19 1|13:18 4|9:18 6|7:18 0|2|8|16:17 0|11|16:17 3|6:17 5|12:17 4|10:16
8|15:16 0|1|13:15 0|2|8:15 0|2|10:15 0|2|12:15 0|7|9:15 0|13|14:15 10|13:15 0|3|14:14 0|14|17:14
0|16|17:14 1|5:14 1|13|16:14 2|5|16:14 3|13:14 8|13:14 11|16:14 0|1|12:13 0|6|16:13 4|17:13 10|12:13
0|1|9:12 0|8|12:12 0|9|13|16:12 0|13|17:12 5|8:12 5|9:12 5|10:12 5|13|16:12 0|5|14:11 0|9|14:11
2|5:11 4|8:11 4|12:11 7|13|16:11 0|1|14:10 0|2|9:10 0|3|10:10 0|3|12:10 0|15|16:10 2|7|16:10
2|14|16:10 2|17:10 9|10:10 9|12|16:10 10|11:10 12|15:10 13|16|17:10 0|3|7:9 0|5|8:9 0|5|12:9 1|7:9
1|12:9 3|10:9 3|13|16:9 3|17:9 6|12:9 8|9:9 0|1|7|16:8 0|1|8:8 0|2|17:8 0|5|9:8 1|2|16:8 1|3:8
2|10|16:8 4|9|13:8 4|12|13:8 8|13|16:8 10|13|16:8 13|14|16:8 0|1|5:7 0|2|15:7 0|3|8:7 0|5|9|17:7
0|7|13|16:7 0|9|12:7 0|11:7 3|9:7 4|7|16:7 5|12|16:7 8|12:7 11|13:7 0|1|2|7:6 0|2|9|16:6 0|5|15:6
0|12|13|14:6 1|5|7:6 1|5|13:6 1|8:6 2|8|16:6 2|12|13:6 5|6:6 6|17:6 11|12:6 0|1|3:5 0|1|7:5
0|1|7|13:5 0|2|12|13:5 0|3|5|16:5 0|3|6|16:5 0|4|5:5 0|4|13:5 0|7|12|16:5 0|12|13|16:5 0|12|14:5
1|5|16:5 1|9|13:5 2|4|7:5 2|9|16:5 3|4|16:5 3|8:5 4|5:5 4|15:5 10|11|13:5 13|15:5 0|2|6:4
0|2|12|16:4 0|3|13:4 0|5|13|16:4 0|7|9|16:4 0|7|14:4 0|10|11:4 0|10|13:4 0|12|17:4 1|4|16:4 2|9:4
3|4:4 3|5:4 3|12:4 3|14|16:4 4|9|16:4 4|12|16:4 6|13|16:4 7|9:4 7|10:4 9|14:4 0|1|3|13:3 0|2|3:3
0|2|7|16:3 0|6|13|16:3 0|7|12:3 0|13|15:3 1|17:3 2|4|16:3 2|7|12:3 2|9|13:3 3|15:3 4|7|13:3 5|7|16:3
6|9:3 6|14:3 7|8|10:3 7|14:3 8|10|16:3 10|11|12:3 13|17:3 14|15:3
"""
# Images per class in the same file (all 21,806 images, duplicates within a label removed).
CLASS_COUNTS = (8797, 1095, 2451, 1262, 1425, 1792, 775, 1846, 964, 998, 818, 78, 1734, 3111, 2013,
                252, 5685, 593, 34)


def label_table() -> list[tuple[tuple[int, ...], int]]:
    """The embedded combinations as ``[((class ids ascending), image count), ...]``, most frequent first."""
    out = []
    for tok in LABEL_COMBOS_TEXT.split():
        combo, count = tok.split(":")
        out.append((tuple(int(c) for c in combo.split("|")), int(count)))
    return out


_TABLE = label_table()


def sample_image_labels(rng: np.random.Generator, temper: float = LABEL_TEMPER,
                        rare_boost: float = RARE_BOOST, must_have: int | None = None) -> list[int]:
    """Draw one image label set (ascending class ids) from the real HPA combinations.

    A combination is drawn with weight ``count ** temper``; with probability ``rare_boost`` a
    class is first chosen uniformly among the 19 and the combination among those containing it.
    ``must_have`` forces that class (the draw is among the combinations containing it).
    """
    combos = [c for c, _ in _TABLE]
    w = np.array([n for _, n in _TABLE], float) ** temper
    if must_have is not None or rng.random() < rare_boost:
        k = int(rng.integers(NUM_CLASSES)) if must_have is None else int(must_have)
        keep = np.array([k in c for c in combos])
        w = np.where(keep, w, 0.0)
    return list(combos[int(rng.choice(len(combos), p=w / w.sum()))])


def make_image_id(rng: np.random.Generator) -> str:
    """A competition-looking id such as ``5c27f04c-bb99-11e8-b2b9-ac1f6b6435d0`` (random hex parts)."""
    a, b, c = int(rng.integers(16 ** 8)), int(rng.integers(256)), int(rng.integers(16 ** 6))
    return f"{a:08x}-bb{b:02x}-11e8-b2b9-ac1f6b{c:06x}"


# ----------------------------------------------------------------------------- small helpers
def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(a, (0, 0), float(sigma), borderType=cv2.BORDER_REFLECT)


def _noise(rng: np.random.Generator, shape, sigma: float, sigma2: float | None = None) -> np.ndarray:
    """Smooth (or band-pass, with ``sigma2``) Gaussian noise with unit standard deviation.

    Wide kernels are computed on a grid ``f`` times coarser and resized (same look, much faster).
    """
    f = max(1, int(sigma // 2))
    small = (-(-shape[0] // f), -(-shape[1] // f))
    w = rng.standard_normal(small, dtype=np.float32)
    n = _blur(w, sigma / f)
    if sigma2 is not None:
        n = n - _blur(w, sigma2 / f)
    if f > 1:
        n = cv2.resize(n, (small[1] * f, small[0] * f), interpolation=cv2.INTER_CUBIC)[: shape[0], : shape[1]]
    return np.ascontiguousarray(n / (n.std() + 1e-6))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _ridge(n: np.ndarray, width: float) -> np.ndarray:
    """Thin lines along the zero crossings of a noise field."""
    return np.exp(-(n / width) ** 2)


def _dots(shape, ys, xs, amps, sigma: float) -> np.ndarray:
    """Gaussian spots of peak ~``amps`` at integer pixel positions."""
    img = np.zeros(shape, np.float32)
    if len(ys):
        np.add.at(img, (np.asarray(ys), np.asarray(xs)), np.asarray(amps, np.float32))
    k = cv2.getGaussianKernel(2 * int(math.ceil(4 * sigma)) + 1, sigma)
    return _blur(img, sigma) / float(k.max() ** 2)


# ----------------------------------------------------------------------------- cell labels
def _beside_nuclei(rng, pts, r_n, amps, gap: float, size: int, jitter: float = 0.0, several: bool = False):
    """Dot positions at ``gap`` beyond each nucleus (radius ``r_n``) in a random direction, for the
    cells with ``amps > 0``: one dot, or 1-2 dots jittered by ``jitter`` when ``several``."""
    ys, xs, am = [], [], []
    for i, a in enumerate(amps):
        if a > 0:
            ang = rng.uniform(-np.pi, np.pi)
            dist = r_n[i] + gap
            for _ in range(int(rng.integers(1, 3)) if several else 1):
                dy = rng.normal(0, jitter) if several else 0.0
                dx = rng.normal(0, jitter) if several else 0.0
                ys.append(int(np.clip(pts[i][0] + dist * math.sin(ang) + dy, 0, size - 1)))
                xs.append(int(np.clip(pts[i][1] + dist * math.cos(ang) + dx, 0, size - 1)))
                am.append(a)
    return ys, xs, am


def _assign_cell_labels(rng, image_classes: list[int], n: int) -> tuple[list[list[int]], list[bool]]:
    """Per-cell class lists and mitotic flags; every class of the image is shown by some cell."""
    classes = sorted(set(int(c) for c in image_classes))
    if not classes:
        raise ValueError("image_classes is empty")
    bad = [c for c in classes if not 0 <= c < NUM_CLASSES]
    if bad:
        raise ValueError(f"class ids {bad} outside 0..{NUM_CLASSES - 1}")
    pos = [c for c in classes if c != NEGATIVE]
    if not pos:
        return [[NEGATIVE] for _ in range(n)], [False] * n
    n_neg = 0
    if n >= 2 and (NEGATIVE in classes or rng.random() < NEG_IMAGE_PROB):
        n_neg = int(np.clip(round(rng.uniform(*NEG_CELL_FRAC) * n), 1, n - 1))
    order = rng.permutation(n)
    neg = set(order[:n_neg].tolist())
    live = order[n_neg:]
    labels: list[list[int]] = [[NEGATIVE] if i in neg else [] for i in range(n)]
    mitotic = [False] * n
    other = [c for c in pos if c != 11]
    if 11 in pos:  # 1-3 mitotic cells show the spindle (and maybe the other classes)
        k = int(min(len(live), rng.integers(1, 4)))
        for i in live[:k]:
            mitotic[i] = True
            labels[i] = [11] + [c for c in other if rng.random() < CELL_EXPRESS_PROB]
        live_rest = live[k:] if other else []
    else:
        live_rest = live
    for i in live_rest:
        got = [c for c in other if rng.random() < CELL_EXPRESS_PROB]
        labels[i] = got or [other[int(rng.integers(len(other)))]]
    if len(live_rest) == 0 and other and 11 in pos:  # all live cells mitotic: they carry the rest
        for i in live:
            labels[i] = sorted(set(labels[i]) | set(other))
    for c in other:  # every image class is shown by at least one live cell
        if not any(c in labels[i] for i in live_rest) and len(live_rest):
            i = live_rest[int(rng.integers(len(live_rest)))]
            labels[i].append(c)
    if 11 not in pos and len(live) > 1 and rng.random() < DISTRACTOR_MITOSIS_PROB:
        mitotic[int(live[int(rng.integers(len(live)))])] = True  # mitotic, no spindle protein
    return [sorted(set(x)) for x in labels], mitotic


# ----------------------------------------------------------------------------- geometry
def _place_nuclei(rng, size: int, n: int, s: float):
    spacing = size / math.sqrt(n)
    r0 = float(np.clip(0.2 * spacing, 13 * s, 24 * s))
    for _attempt in range(30):
        r = r0 * rng.uniform(0.85, 1.15, n)
        a = r * rng.uniform(1.0, 1.3, n)  # semi-major axis
        pts: list[tuple[float, float]] = []
        for i in range(n):
            m = 0.35 * a[i]
            cand = rng.uniform(m, size - m, (300, 2))
            if pts:
                p = np.array(pts)
                d = np.hypot(cand[:, None, 0] - p[None, :, 0], cand[:, None, 1] - p[None, :, 1])
                ok = np.all(d >= 1.2 * (a[i] + a[: len(pts)])[None, :] + 3 * s, axis=1)
                cand = cand[ok]
            if not len(cand):
                break
            pts.append((float(cand[0, 0]), float(cand[0, 1])))
        if len(pts) == n:
            return np.array(pts), r, a, spacing
        r0 *= 0.9
    raise RuntimeError(f"cannot place {n} nuclei in a {size}px image")


def _window(cy, cx, rad, size):
    y0, y1 = max(0, int(cy - rad)), min(size, int(cy + rad) + 2)
    x0, x1 = max(0, int(cx - rad)), min(size, int(cx + rad) + 2)
    return (slice(y0, y1), slice(x0, x1)), np.mgrid[y0:y1, x0:x1].astype(np.float32)


def _geometry(rng, size: int, n: int, mitotic: list[bool], s: float) -> dict:
    """Nucleus and cell label maps (ids 1..n) plus the per-cell parameters used for rendering."""
    pts, r, a, spacing = _place_nuclei(rng, size, n, s)
    b = np.where(mitotic, 0.3 * r, r * rng.uniform(0.75, 1.0, n))
    a = np.where(mitotic, 0.9 * r, a)
    phi = rng.uniform(0, np.pi, n)
    R = np.where(mitotic, r * rng.uniform(1.7, 2.0, n),
                 np.clip(rng.uniform(0.6, 0.9, n) * spacing, 2.6 * r, 4.2 * r))
    field = _noise(rng, (size, size), 12 * s)
    nuc = np.zeros((size, size), np.int32)
    land = np.full((size, size), 10.0, np.float32)
    for i in range(n):
        cy, cx = pts[i]
        # nucleus: a wobbly ellipse
        sl, (yy, xx) = _window(cy, cx, a[i] * 1.2 + 2, size)
        dy, dx = yy - cy, xx - cx
        u = dx * math.cos(phi[i]) + dy * math.sin(phi[i])
        v = -dx * math.sin(phi[i]) + dy * math.cos(phi[i])
        th = np.arctan2(v, u)
        wob = 1 + sum(rng.uniform(0, 0.06 / k) * np.cos(k * th + rng.uniform(0, 2 * np.pi))
                      for k in (2, 3, 5))
        inside = (u / a[i]) ** 2 + (v / b[i]) ** 2 < wob ** 2
        nuc[sl][inside & (nuc[sl] == 0)] = i + 1
        # cell: a cone with an angle-dependent radius, apex near the nucleus centre
        off = rng.uniform(0, 0.4 * r[i]) * np.exp(1j * rng.uniform(0, 2 * np.pi))
        ay, ax = cy + off.imag, cx + off.real
        sl, (yy, xx) = _window(ay, ax, R[i] * 1.7, size)
        dy, dx = yy - ay, xx - ax
        amp = 0.0 if mitotic[i] else 0.22
        grid = np.linspace(-np.pi, np.pi, 361)
        table = 1 + sum(rng.uniform(0, amp / k) * np.cos(k * grid + rng.uniform(0, 2 * np.pi))
                        for k in range(1, 6))
        rth = np.interp(np.arctan2(dy, dx), grid, np.maximum(table, 0.55)).astype(np.float32)
        rth = R[i] * rth * (1 + (0.03 if mitotic[i] else 0.1) * field[sl])
        np.minimum(land[sl], np.hypot(dy, dx) / rth, out=land[sl])
    cells = watershed(land, markers=nuc, mask=(land < 1) | (nuc > 0))
    return dict(cells=cells.astype(np.int32), nuclei=nuc, field=field, centres=pts, r=r, a=a, b=b,
                phi=phi, R=R)


# ----------------------------------------------------------------------------- rendering
def _lookup(values, labels):
    return np.asarray(values, np.float32)[labels]


class _Field:
    """What every channel of one rendered field of view is drawn from: label maps, geometry, the
    distance maps, shared noise, and the random generator (used in a fixed order, so the same seed
    gives the same image)."""

    def __init__(self, rng, geo: dict, cell_labels: list[list[int]], mitotic: list[bool], s: float):
        self.rng, self.geo, self.s = rng, geo, s
        self.L, self.N = L, N = geo["cells"], geo["nuclei"]
        self.size, self.shape, self.n = L.shape[0], L.shape, len(cell_labels)
        self.pts, self.r_n, self.R = geo["centres"], geo["r"], geo["R"]
        self.mitotic, self.mit = mitotic, np.array([False] + list(mitotic))
        self.cell, self.nucm = L > 0, N > 0
        self.cyto = self.cell & ~self.nucm
        self.cyto_f = self.cyto.astype(np.float32)
        self.yy, self.xx = np.mgrid[0:self.size, 0:self.size].astype(np.float32)
        dy = self.yy - _lookup([0] + list(self.pts[:, 0]), L)
        dx = self.xx - _lookup([0] + list(self.pts[:, 1]), L)
        self.rad, self.theta = np.hypot(dy, dx), np.arctan2(dy, dx)
        self.d_edge = _dist_inside(L)                                 # to the cell border
        self.d_nuc_in = _dist_inside(N)                               # to the nucleus border, inside
        self.d_nuc_out = cv2.distanceTransform((~self.nucm).astype(np.uint8), cv2.DIST_L2, 5)  # outside
        # 0 at the centre, 1 at the border
        self.rho = np.where(self.cell, self.rad / (self.rad + self.d_edge + 1e-3), 1).astype(np.float32)
        self.seam = (0.3 + 0.7 * _smoothstep(self.d_edge / (3.0 * s))).astype(np.float32)
        self.nuc_soft = _smoothstep(self.d_nuc_in / (1.5 * s)) * self.nucm
        self.fine = _noise(rng, self.shape, 0.8 * s)
        self.mid = _noise(rng, self.shape, 4 * s)
        self.objs = ndimage.find_objects(L, max_label=self.n)


def _dist_inside(lab: np.ndarray) -> np.ndarray:
    inner = (lab > 0) & ~find_boundaries(lab, mode="inner")
    return cv2.distanceTransform(inner.astype(np.uint8), cv2.DIST_L2, 5)


def _nucleoli(f: _Field) -> None:
    """Nucleoli of every non-mitotic nucleus (shared by blue and classes 0, 2, 3): ``f.nucleoli`` and
    their centres ``f.nucleoli_centres``."""
    geo, rng, size = f.geo, f.rng, f.size
    f.nucleoli_centres = [[] for _ in range(f.n)]
    f.nucleoli = np.zeros(f.shape, np.float32)
    for i in range(f.n):
        if f.mitotic[i]:
            continue
        cy_i, cx_i = f.pts[i]
        for _ in range(int(rng.integers(1, 5))):
            rr = rng.uniform(0, 0.5) * np.array([geo["a"][i], geo["b"][i]])
            ang = rng.uniform(0, 2 * np.pi)
            u, v = rr[0] * math.cos(ang), rr[1] * math.sin(ang)
            p = geo["phi"][i]
            y = cy_i + u * math.sin(p) + v * math.cos(p)
            x = cx_i + u * math.cos(p) - v * math.sin(p)
            rad_n = f.r_n[i] * rng.uniform(0.15, 0.28)
            sl, (wy, wx) = _window(y, x, rad_n * 2.5, size)
            blob = np.exp(-(((wy - y) ** 2 + (wx - x) ** 2) / rad_n ** 2) ** 2)
            f.nucleoli[sl] = np.maximum(f.nucleoli[sl], blob * (f.N[sl] == i + 1))
            if 0 <= int(y) < size and 0 <= int(x) < size:
                f.nucleoli_centres[i].append((int(y), int(x)))


def _microtubules(f: _Field) -> None:
    """``f.mt``: microtubules radiating from the nucleus (angle-bin lines per cell, curled)."""
    rng, n, L = f.rng, f.n, f.L
    fs = math.sqrt(max(f.s, 1.0))  # more, thinner fibres in big images
    M = int(360 * fs)
    lines = np.zeros((n + 1, M), np.float32)
    for i in range(1, n + 1):
        idx = rng.integers(0, M, int(rng.integers(30, 60) * fs))
        lines[i, idx] = rng.uniform(0.5, 1.0, len(idx))
    lines = ndimage.gaussian_filter1d(lines, 1.0, axis=1, mode="wrap")
    lines /= lines.max() + 1e-6
    curl = _lookup([0] + list(rng.uniform(-0.6, 0.6, n)), L)
    th_eff = f.theta + curl * f.rad / (_lookup([1] + list(f.R), L)) + 0.04 * f.geo["field"]
    mapx = ((th_eff / (2 * np.pi)) % 1.0 * M).astype(np.float32)
    mt = cv2.remap(lines, mapx, L.astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
    f.mt = np.clip(mt * (0.8 + 0.25 * f.fine), 0, 1.2)


def _spindles(f: _Field) -> None:
    """``f.spindle``: mitotic spindles (red, and class 11's green); red's ``f.mt`` in mitotic cells."""
    s, size = f.s, f.size
    f.spindle = np.zeros(f.shape, np.float32)
    for i in np.flatnonzero(f.mit[1:]):
        cy_i, cx_i = f.pts[i]
        p = f.geo["phi"][i] + np.pi / 2  # spindle axis: perpendicular to the chromosome plate
        half = f.R[i] * 0.8
        width = f.r_n[i] * 0.8
        sl, (wy, wx) = _window(cy_i, cx_i, half * 1.2, size)
        u = (wx - cx_i) * math.cos(p) + (wy - cy_i) * math.sin(p)
        v = -(wx - cx_i) * math.sin(p) + (wy - cy_i) * math.cos(p)
        env = np.clip(1 - (u / half) ** 2, 0, 1)
        t = v / (width * env + 1e-3)
        fib = (0.5 + 0.5 * np.cos(2 * np.pi * 3.5 * t + f.rng.uniform(0, 2 * np.pi))) ** 2
        sp = (0.5 + 0.5 * fib) * np.sqrt(np.clip(1 - np.abs(t), 0, 1)) * (np.abs(u) < half)
        poles = np.exp(-((np.abs(u) - half) ** 2 + v ** 2) / (2 * (1.5 * s) ** 2))
        f.spindle[sl] = np.maximum(f.spindle[sl], (sp + poles) * (f.L[sl] == i + 1))
    f.mt = np.where(f.mit[f.L], 0.25 + f.spindle, f.mt)


def _counterstains(f: _Field) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(red, blue, yellow): microtubules, nuclei (dim nucleoli, bright mitotic chromosomes), a
    reticular ER denser near the nucleus; per-cell brightness, seam and radial falloff."""
    rng, s, L, N, nucm = f.rng, f.s, f.L, f.N, f.nucm
    er = _ridge(_noise(rng, f.shape, 1.6 * s, 3.5 * s), 0.35)
    er = er * (0.75 + 0.25 * f.fine)
    base_r = _lookup([0] + list(rng.uniform(0.4, 0.75, f.n)), L)
    f.base_y = base_y = _lookup([0] + list(rng.uniform(0.4, 0.75, f.n)), L)
    radial = 1.0 - 0.3 * f.rho ** 2
    red = base_r * f.seam * radial * np.where(nucm, 0.25 + 0.25 * f.mt, 0.45 + 0.55 * f.mt) * f.cell
    nuc_rim = np.exp(-(np.where(nucm, f.d_nuc_in, f.d_nuc_out) / (1.5 * s)) ** 2) * f.cell
    yel = base_y * f.seam * (1.15 - 0.55 * f.rho) * (0.35 + 0.65 * er) * f.cyto_f
    f.yel = yel = yel + base_y * (0.12 * nucm + 0.5 * nuc_rim * (1 - nucm)) * f.seam
    base_b = _lookup([0] + list(rng.uniform(0.45, 0.85, f.n)), N)
    blue = base_b * f.nuc_soft * (0.8 + 0.15 * f.fine + 0.1 * f.mid) * (1 - 0.4 * f.nucleoli)
    blue = np.where(f.mit[N] & nucm, np.clip(base_b * 1.3 * (0.7 + 0.3 * f.fine), 0, 1) * f.nuc_soft, blue)
    return red, blue, yel


def _cell_points(f: _Field, i: int, region: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``k`` random pixels of cell ``i`` (0-based) inside ``region`` (with replacement)."""
    sl = f.objs[i]
    if sl is None or k <= 0:
        return np.zeros(0, int), np.zeros(0, int)
    ys, xs = np.nonzero((f.L[sl] == i + 1) & region[sl])
    if not len(ys):
        return ys, xs
    j = f.rng.integers(0, len(ys), k)
    return ys[j] + sl[0].start, xs[j] + sl[1].start


def _dots_for(f: _Field, c: int, region: np.ndarray, count, sigma: float, amp_range=(0.6, 1.0)):
    """Gaussian dots of class ``c`` in ``region`` of each cell showing it (``count``: range per cell)."""
    ys, xs, am = [], [], []
    for i in range(f.n):
        if f.amp[c, i + 1] > 0:
            y, x = _cell_points(f, i, region, int(f.rng.integers(*count)))
            ys.append(y)
            xs.append(x)
            am.append(f.amp[c, i + 1] * f.rng.uniform(*amp_range, len(y)))
    if not ys:
        return np.zeros(f.shape, np.float32)
    return _dots(f.shape, np.concatenate(ys), np.concatenate(xs), np.concatenate(am), sigma * f.s)


# ----------------------------------------------------------------------------- green, one class each
# ``A``: the class's per-cell amplitude at every pixel (0 in cells that do not show it)
def _g_nucleoplasm(f, A):
    return A * f.nucleoplasm


def _g_nuclear_membrane(f, A):
    rim = np.exp(-(np.where(f.nucm, f.d_nuc_in, f.d_nuc_out) / (1.2 * f.s)) ** 2) * f.cell
    return A * (rim + 0.08 * f.nuc_soft)


def _g_nucleoli(f, A):
    return A * np.clip(f.nucleoli * 1.5, 0, 1) * (0.9 + 0.1 * f.fine)


def _g_fibrillar_center(f, A):
    ys, xs, am = [], [], []
    for i in range(f.n):
        if f.amp[3, i + 1] <= 0:
            continue
        for (y, x) in f.nucleoli_centres[i]:
            k = int(f.rng.integers(2, 5))
            oy = np.clip(y + np.rint(f.rng.normal(0, 1.5 * f.s, k)).astype(int), 0, f.size - 1)
            ox = np.clip(x + np.rint(f.rng.normal(0, 1.5 * f.s, k)).astype(int), 0, f.size - 1)
            ys.append(oy)
            xs.append(ox)
            am.append(np.full(k, f.amp[3, i + 1]))
    g = 0.12 * A * f.nucleoli
    if ys:
        g = g + 2 * _dots(f.shape, np.concatenate(ys), np.concatenate(xs), np.concatenate(am), 0.8 * f.s)
    return g


def _g_speckles(f, A):
    return _dots_for(f, 4, f.nucm & (f.nucleoli < 0.3), (10, 26), 1.7) * 0.8 + 0.2 * A * f.nucleoplasm


def _g_nuclear_bodies(f, A):
    return 2 * _dots_for(f, 5, f.nucm & (f.nucleoli < 0.3), (1, 7), 1.2) + 0.04 * A * f.nucleoplasm


def _g_er(f, A):
    return A * f.yel / (f.base_y + 1e-3) * 1.1


def _g_golgi(f, A):
    gw = _lookup([1] + list(f.rng.uniform(4, 9, f.n) * f.s), f.L)
    ang = np.clip((np.cos(f.theta - f.psi) - math.cos(0.9)) / (1 - math.cos(0.9)), 0, 1)
    cap = np.exp(-(f.d_nuc_out / gw) ** 2) * ang * f.cyto_f
    return A * cap * (0.6 + 0.4 * np.clip(f.mid * 0.5 + 0.5 + 0.5 * f.fine, 0, 1.5))


def _g_intermediate_filaments(f, A):
    rng, L = f.rng, f.L
    tex = ndimage.gaussian_filter(rng.standard_normal((128, 128)).astype(np.float32), (1.5, 6), mode="wrap")
    tex /= tex.std() + 1e-6
    offr = _lookup([0] + list(rng.uniform(0, 128, f.n)), L)
    offt = _lookup([0] + list(rng.uniform(0, 128, f.n)), L)
    my = (f.rad / (_lookup([1] + list(f.R), L)) * 48 + offr).astype(np.float32)
    mx = (f.theta / (2 * np.pi) * 128 + offt + 3 * f.geo["field"]).astype(np.float32)
    fil = _ridge(cv2.remap(tex, mx % 128, my % 128, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP), 0.25)
    return A * fil * (1.1 - 0.6 * f.rho) * (f.cyto_f + 0.3 * f.nucm)


def _g_actin(f, A):
    rng, L = f.rng, f.L
    ori = _lookup([0] + list(rng.uniform(0, np.pi, f.n)), L)
    per = _lookup([1] + list(rng.uniform(5, 8, f.n) * f.s), L)
    ph = _lookup([0] + list(rng.uniform(0, 2 * np.pi, f.n)), L)
    u = f.xx * np.cos(ori) + f.yy * np.sin(ori)
    lin = (0.5 + 0.5 * np.cos(2 * np.pi * u / per + ph)) ** 6
    brk = _smoothstep(_noise(rng, f.shape, 6 * f.s) + 0.6)
    return A * lin * brk * (0.4 + 0.6 * f.rho) * (f.cyto_f + 0.4 * f.nucm) * f.seam


def _g_microtubules(f, A):
    return A * np.where(f.mit[f.L], 0.2, f.mt) * (f.cyto_f + 0.3 * f.nucm) * (0.6 + 0.4 * f.seam)


def _g_spindle(f, A):
    return A * f.spindle * 1.2


def _g_centrosome(f, A):
    ys, xs, am = _beside_nuclei(f.rng, f.pts, f.r_n, f.amp[12, 1:f.n + 1], 3 * f.s, f.size, jitter=f.s,
                                several=True)
    return 2 * _dots(f.shape, ys, xs, am, 1.5 * f.s) + 0.05 * A * f.cyto_f


def _g_plasma_membrane(f, A):
    return A * (np.exp(-(f.d_edge / (1.6 * f.s)) ** 2) * f.cell + 0.06 * f.cyto_f)


def _g_mitochondria(f, A):
    tub = _ridge(_noise(f.rng, f.shape, 1.8 * f.s, 3.6 * f.s), 0.4)
    seg = _smoothstep(_noise(f.rng, f.shape, 2.5 * f.s) * 0.8 + 0.2)
    return A * tub * seg * (1.2 - 0.7 * f.rho) * f.cyto_f


def _g_aggresome(f, A):
    ys, xs, am = _beside_nuclei(f.rng, f.pts, f.r_n, f.amp[15, 1:f.n + 1] * 1.2, 5 * f.s, f.size)
    return 1.3 * _dots(f.shape, ys, xs, am, 4 * f.s) + 0.08 * A * f.cyto_f


def _g_cytosol(f, A):
    return A * f.cyto_f * (0.7 + 0.1 * f.mid + 0.05 * f.fine) * f.seam


def _g_vesicles(f, A):
    return 1.6 * _dots_for(f, 17, f.cyto, (40, 120), 0.9) + 0.05 * A * f.cyto_f


# the green pattern of each positive class (constants.CLASS_NAMES order); 18 Negative draws nothing
GREEN = (_g_nucleoplasm, _g_nuclear_membrane, _g_nucleoli, _g_fibrillar_center, _g_speckles,
         _g_nuclear_bodies, _g_er, _g_golgi, _g_intermediate_filaments, _g_actin, _g_microtubules,
         _g_spindle, _g_centrosome, _g_plasma_membrane, _g_mitochondria, _g_aggresome, _g_cytosol,
         _g_vesicles)
_UNMASKED = (4, 5, 12, 15, 17)  # dot patterns drawn whole (their dots may cross a cell's border)


def _green(f: _Field, cell_labels: list[list[int]]) -> np.ndarray:
    """Green: one pattern per class, only in the cells that show it, over a faint autofluorescence."""
    f.amp = np.zeros((NUM_CLASSES, f.n + 1), np.float32)
    for i, labs in enumerate(cell_labels):
        for c in labs:
            f.amp[c, i + 1] = f.rng.uniform(0.5, 1.0)
    present = sorted({c for labs in cell_labels for c in labs} - {NEGATIVE})
    green = 0.04 * f.cyto_f + 0.02 * f.nucm
    f.psi = _lookup([0] + list(f.rng.uniform(-np.pi, np.pi, f.n)), f.L)  # per-cell "front" direction
    f.nucleoplasm = f.nuc_soft * (0.85 + 0.15 * f.fine) * (1 - 0.75 * f.nucleoli)
    for c in present:
        g = GREEN[c](f, f.amp[c][f.L])
        green = green + g * (f.L > 0 if c not in _UNMASKED else 1)
    return green


def _render(rng, geo: dict, cell_labels: list[list[int]], mitotic: list[bool], s: float) -> np.ndarray:
    """H x W x 4 float32 RGBY in [0, 1] before optics and noise."""
    f = _Field(rng, geo, cell_labels, mitotic, s)
    _nucleoli(f)
    _microtubules(f)
    _spindles(f)
    red, blue, yel = _counterstains(f)
    green = _green(f, cell_labels)
    return np.clip(np.stack([red, green, blue, yel], axis=-1), 0, None).astype(np.float32)


def _optics(rng, img: np.ndarray, s: float) -> np.ndarray:
    """Per-image gain, blur, uneven illumination, background and Poisson-Gaussian noise."""
    size = img.shape[0]
    out = np.empty_like(img)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    vign = 1.0 - rng.uniform(0.0, 0.3) * (xx ** 2 + yy ** 2) * 2
    sigma = rng.uniform(0.6, 1.2) * s
    gains = rng.uniform([0.25, 0.3, 0.6, 0.3], [0.5, 0.8, 1.0, 0.6])  # means near real HPA
    for ch in range(4):
        x = _blur(np.ascontiguousarray(img[..., ch]), sigma) * gains[ch] * vign
        x = x + rng.uniform(0.01, 0.04)
        shot, read = rng.uniform(0.001, 0.004), rng.uniform(0.004, 0.012)
        x = x + rng.standard_normal(x.shape, dtype=np.float32) * np.sqrt(shot * np.maximum(x, 0) + read ** 2)
        out[..., ch] = x
    return np.clip(out, 0.0, 1.0)


def make_image(rng: np.random.Generator, size: int, image_classes: list[int], n_cells: int | None = None,
               *, min_cells: int = MIN_CELLS, max_cells: int = MAX_CELLS, bit16: bool = False) -> dict:
    """One synthetic field of view.

    Returns ``dict(image=H x W x 4 uint8 RGBY, cells=uint16 label map (0 = background, 1..n),
    nuclei=uint16 label map (same ids), cell_labels={cell_id: [classes ascending]},
    labels=[image classes ascending] (the union of the cells'))``, plus ``image16`` (uint16,
    the same picture at 16 bits) when ``bit16``. ``n_cells`` defaults to a random count in
    ``[min_cells, max_cells]``. Deterministic given the state of ``rng``.
    """
    size = int(size)
    if size < 64:
        raise ValueError(f"image size {size} is too small (at least 64 px)")
    if n_cells is None:
        n_cells = int(rng.integers(min_cells, max_cells + 1))
    if n_cells < 1:
        raise ValueError(f"n_cells must be >= 1, got {n_cells}")
    s = size / BASE_SIZE
    labels, mitotic = _assign_cell_labels(rng, image_classes, n_cells)
    geo = _geometry(rng, size, n_cells, mitotic, s)
    img = _optics(rng, _render(rng, geo, labels, mitotic, s), s)
    out = dict(
        image=np.rint(img * 255).astype(np.uint8),
        cells=geo["cells"].astype(np.uint16),
        nuclei=geo["nuclei"].astype(np.uint16),
        cell_labels={i + 1: labels[i] for i in range(n_cells)},
        labels=sorted({c for lab in labels for c in lab}),
    )
    if bit16:
        out["image16"] = np.rint(img * 65535).astype(np.uint16)
    return out


# ----------------------------------------------------------------------------- dataset
SPLITS = ("train", "test")


def _generate_one(job: dict) -> dict:
    """Worker: make, write and describe one image (module level so a process pool can pickle it)."""
    out_dir = Path(job["out_dir"])
    ss = np.random.SeedSequence([job["seed"], SPLITS.index(job["split"]), job["index"]])
    rng = np.random.default_rng(ss)
    res = make_image(rng, job["size"], job["classes"], min_cells=job["min_cells"],
                     max_cells=job["max_cells"], bit16=job["bit16"])
    image_id, split = job["id"], job["split"]
    io.write_channels(out_dir / split, image_id, res["image16"] if job["bit16"] else res["image"])
    io.write_label_png(out_dir / f"{split}_cell_truth" / f"{image_id}.png", res["cells"])
    io.write_label_png(out_dir / f"{split}_nucleus_truth" / f"{image_id}.png", res["nuclei"])
    h, w = res["cells"].shape
    rows = []
    for cid, labs in res["cell_labels"].items():
        enc = encode_binary_mask(res["cells"] == cid)
        rows.extend((image_id, w, h, cid, c, enc) for c in labs)
    return dict(id=image_id, split=split, labels=res["labels"], width=w, height=h, rows=rows,
                n_cells=len(res["cell_labels"]))


def plan_dataset(n_train: int, n_test: int, seed: int, *, temper: float = LABEL_TEMPER,
                 rare_boost: float = RARE_BOOST, frac_16bit: float = 0.0) -> list[dict]:
    """The per-image jobs (split, index, id, sampled classes, bit depth), drawn in order from ``seed``.

    With at least 19 training images, 19 of them (at random positions) are drawn with
    ``must_have`` = 0..18, so every class is in some training image's label.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 99]))
    jobs, seen = [], set()
    forced = {}
    if n_train >= NUM_CLASSES:
        forced = {int(i): k for k, i in enumerate(rng.permutation(int(n_train))[:NUM_CLASSES])}
    for split, count in zip(SPLITS, (n_train, n_test)):
        for i in range(int(count)):
            must = forced.get(i) if split == "train" else None
            image_id = make_image_id(rng)
            while image_id in seen:
                image_id = make_image_id(rng)
            seen.add(image_id)
            classes = sample_image_labels(rng, temper, rare_boost, must_have=must)
            jobs.append(dict(split=split, index=i, id=image_id, classes=classes,
                             bit16=bool(rng.random() < frac_16bit)))
    return jobs


def make_dataset(out_dir: str | Path, n_train: int, n_test: int, size: int, seed: int, *,
                 min_cells: int = MIN_CELLS, max_cells: int = MAX_CELLS, frac_16bit: float = 0.0,
                 temper: float = LABEL_TEMPER, rare_boost: float = RARE_BOOST, num_workers: int = 1,
                 progress: bool = False) -> dict:
    """Write a demo dataset in the competition layout with per-cell truth; returns a summary.

    Writes ``train/``, ``test/`` (``{ID}_{red,green,blue,yellow}.png``), ``train.csv`` (ID,Label),
    ``sample_submission.csv`` (ID,ImageWidth,ImageHeight,PredictionString),
    ``{train,test}_cell_truth/{ID}.png`` and ``{train,test}_nucleus_truth/{ID}.png`` (uint16 label
    maps, same ids) and ``{train,test}_cells.csv`` (ID,ImageWidth,ImageHeight,cell_id,Label,
    EncodedMask; one row per cell and label). The output depends only on the arguments, not on
    ``num_workers``.
    """
    if not 1 <= min_cells <= max_cells:
        raise ValueError(f"need 1 <= min_cells <= max_cells, got {min_cells}, {max_cells}")
    out_dir = Path(out_dir)
    jobs = plan_dataset(n_train, n_test, seed, temper=temper, rare_boost=rare_boost, frac_16bit=frac_16bit)
    files = planned_files(jobs)
    own = set(read_manifest(out_dir) or [])
    foreign = [f for f in files if f not in own and os.path.lexists(out_dir / f)]
    if foreign:
        raise FileExistsError(f"{out_dir / foreign[0]} (and {len(foreign) - 1} more) exist but were not made "
                              f"by the demo generator ({MANIFEST_NAME}); not writing over them")
    for split in SPLITS:
        for sub in (split, f"{split}_cell_truth", f"{split}_nucleus_truth"):
            owned.check_path(out_dir, sub, "S0", "COMPETITION_DIR", folder=True)  # no link followed
            (out_dir / sub).mkdir(parents=True, exist_ok=True)
    io.atomic_write_text(out_dir / MANIFEST_NAME, json.dumps(sorted(own | set(files)), indent=0) + "\n")
    for j in jobs:
        j.update(out_dir=str(out_dir), seed=int(seed), size=int(size), min_cells=int(min_cells),
                 max_cells=int(max_cells))
    if num_workers > 1 and len(jobs) > 1:
        with parallel.process_pool(num_workers) as pool:
            results = list(_progress(pool.map(_generate_one, jobs), len(jobs), progress))
    else:
        results = list(_progress(map(_generate_one, jobs), len(jobs), progress))
    cols = ["ID", "ImageWidth", "ImageHeight", "cell_id", "Label", "EncodedMask"]
    for split in SPLITS:
        rows = [row for r in results if r["split"] == split for row in r["rows"]]
        io.atomic_to_csv(pd.DataFrame(rows, columns=cols), out_dir / f"{split}_cells.csv")
    train = [r for r in results if r["split"] == "train"]
    test = [r for r in results if r["split"] == "test"]
    io.atomic_to_csv(pd.DataFrame({"ID": [r["id"] for r in train],
                                   "Label": [format_labels(r["labels"]) for r in train]}),
                     out_dir / "train.csv")
    empty = {}
    for r in test:
        key = (r["height"], r["width"])
        if key not in empty:
            empty[key] = encode_binary_mask(np.zeros(key, np.uint8))
    io.atomic_to_csv(pd.DataFrame({
        "ID": [r["id"] for r in test], "ImageWidth": [r["width"] for r in test],
        "ImageHeight": [r["height"] for r in test],
        "PredictionString": [f"0 1 {empty[(r['height'], r['width'])]}" for r in test]}),
        out_dir / "sample_submission.csv")
    return dict(out_dir=str(out_dir), n_train=len(train), n_test=len(test),
                n_cells=sum(r["n_cells"] for r in results),
                class_images=[sum(c in r["labels"] for r in train + test) for c in range(NUM_CLASSES)])


def _progress(it, total, on):
    if not on:
        return it
    return tqdm(it, total=total, desc="demo images")


def planned_files(jobs: list[dict]) -> list[str]:
    """The files (relative posix paths) :func:`make_dataset` writes for ``jobs``, the manifest included."""
    names = ["train.csv", "sample_submission.csv", "train_cells.csv", "test_cells.csv", CONFIG_NAME,
             MANIFEST_NAME]
    return names + [f for j in jobs for f in _image_files(j["split"], j["id"])]


def _image_files(split: str, image_id: str) -> list[str]:
    return ([f"{split}/{image_id}_{c}.png" for c in CHANNELS]
            + [f"{split}_cell_truth/{image_id}.png", f"{split}_nucleus_truth/{image_id}.png"])


def demo_outputs(out_dir: str | Path) -> list[Path]:
    """The top-level files and folders a demo dataset has in ``out_dir`` (all must exist to skip)."""
    out_dir = Path(out_dir)
    names = ["train.csv", "sample_submission.csv", "train_cells.csv", "test_cells.csv", CONFIG_NAME]
    for split in SPLITS:
        names += [split, f"{split}_cell_truth", f"{split}_nucleus_truth"]
    return [out_dir / n for n in names]


def read_manifest(out_dir: str | Path) -> list[str] | None:
    """The files the generator wrote in ``out_dir`` (relative paths), or None when it wrote none.

    A demo written before manifests existed (a config but no manifest) gets one rebuilt from its
    own tables: the CSVs and config, and the image and truth files of the ids they list.
    """
    out_dir = Path(out_dir)
    p = out_dir / MANIFEST_NAME
    if p.is_file():
        try:
            return [str(x) for x in json.loads(p.read_text())]
        except (json.JSONDecodeError, TypeError):
            return None
    if read_config(out_dir) is None:
        return None
    names = ["train.csv", "sample_submission.csv", "train_cells.csv", "test_cells.csv", CONFIG_NAME]
    for split, table in (("train", "train.csv"), ("test", "sample_submission.csv")):
        if (out_dir / table).is_file():
            ids = io.read_id_table(out_dir / table)["ID"]
            names += [f for iid in ids for f in _image_files(split, iid)]
    return names


def remove_outputs(out_dir: str | Path) -> int:
    """Delete the files the generator wrote (its manifest) and the demo folders left empty.

    Never deletes anything else: real data or a user's files in the same folders stay. Returns
    the number of files deleted.
    """
    out_dir = Path(out_dir)
    names = read_manifest(out_dir) or []
    n = len(owned.remove_files(out_dir, [x for x in names if x != MANIFEST_NAME]))  # never through a link
    n += len(owned.remove_files(out_dir, [MANIFEST_NAME] if MANIFEST_NAME in names else []))  # then it
    for p in demo_outputs(out_dir):
        if p.is_dir() and not p.is_symlink() and not any(p.iterdir()):
            p.rmdir()
    return n


def read_config(out_dir: str | Path) -> dict | None:
    """The generator config saved with a demo dataset, or None when there is none."""
    p = Path(out_dir) / CONFIG_NAME
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


assert len(CLASS_NAMES) == NUM_CLASSES == len(CLASS_COUNTS) == len(GREEN_PATTERNS)
