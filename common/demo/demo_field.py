"""The demo's cell field (S0's synthetic images, :mod:`common.demo.demo_render`): touching cells, each with
one nucleus, placed and shaped at random (:func:`geometry`), the maps every channel is drawn from
(:class:`Field`), and the drawing primitives the channels share (smooth noise, blurred dots, ridges,
points of a cell). Lengths are in pixels of a ``BASE_SIZE`` image and scale with the image (``s``).
"""
from __future__ import annotations

import math

import cv2
import numpy as np
from scipy import ndimage
from skimage.segmentation import find_boundaries, watershed


# ----------------------------------------------------------------------------- drawing primitives
def blur(a: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(a, (0, 0), float(sigma), borderType=cv2.BORDER_REFLECT)


def noise(rng: np.random.Generator, shape, sigma: float, sigma2: float | None = None) -> np.ndarray:
    """Smooth (or band-pass, with ``sigma2``) Gaussian noise with unit standard deviation.

    Wide kernels are computed on a grid ``f`` times coarser and resized (same look, much faster).
    """
    f = max(1, int(sigma // 2))
    small = (-(-shape[0] // f), -(-shape[1] // f))
    w = rng.standard_normal(small, dtype=np.float32)
    n = blur(w, sigma / f)
    if sigma2 is not None:
        n = n - blur(w, sigma2 / f)
    if f > 1:
        n = cv2.resize(n, (small[1] * f, small[0] * f), interpolation=cv2.INTER_CUBIC)[: shape[0], : shape[1]]
    return np.ascontiguousarray(n / (n.std() + 1e-6))


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def ridge(n: np.ndarray, width: float) -> np.ndarray:
    """Thin lines along the zero crossings of a noise field."""
    return np.exp(-(n / width) ** 2)


def dots(shape, ys, xs, amps, sigma: float) -> np.ndarray:
    """Gaussian spots of peak ~``amps`` at integer pixel positions."""
    img = np.zeros(shape, np.float32)
    if len(ys):
        np.add.at(img, (np.asarray(ys), np.asarray(xs)), np.asarray(amps, np.float32))
    k = cv2.getGaussianKernel(2 * int(math.ceil(4 * sigma)) + 1, sigma)
    return blur(img, sigma) / float(k.max() ** 2)


def lookup(values, labels):
    """Per-label ``values`` spread over a label map."""
    return np.asarray(values, np.float32)[labels]


class Field:
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
        dy = self.yy - lookup([0] + list(self.pts[:, 0]), L)
        dx = self.xx - lookup([0] + list(self.pts[:, 1]), L)
        self.rad, self.theta = np.hypot(dy, dx), np.arctan2(dy, dx)
        self.d_edge = _dist_inside(L)                                 # to the cell border
        self.d_nuc_in = _dist_inside(N)                               # to the nucleus border, inside
        self.d_nuc_out = cv2.distanceTransform((~self.nucm).astype(np.uint8), cv2.DIST_L2, 5)  # outside
        # 0 at the centre, 1 at the border
        self.rho = np.where(self.cell, self.rad / (self.rad + self.d_edge + 1e-3), 1).astype(np.float32)
        self.seam = (0.3 + 0.7 * smoothstep(self.d_edge / (3.0 * s))).astype(np.float32)
        self.nuc_soft = smoothstep(self.d_nuc_in / (1.5 * s)) * self.nucm
        self.fine = noise(rng, self.shape, 0.8 * s)
        self.mid = noise(rng, self.shape, 4 * s)
        self.objs = ndimage.find_objects(L, max_label=self.n)


def _dist_inside(lab: np.ndarray) -> np.ndarray:
    inner = (lab > 0) & ~find_boundaries(lab, mode="inner")
    return cv2.distanceTransform(inner.astype(np.uint8), cv2.DIST_L2, 5)


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


def window(cy, cx, rad, size):
    y0, y1 = max(0, int(cy - rad)), min(size, int(cy + rad) + 2)
    x0, x1 = max(0, int(cx - rad)), min(size, int(cx + rad) + 2)
    return (slice(y0, y1), slice(x0, x1)), np.mgrid[y0:y1, x0:x1].astype(np.float32)


def geometry(rng, size: int, n: int, mitotic: list[bool], s: float) -> dict:
    """Nucleus and cell label maps (ids 1..n) plus the per-cell parameters used for rendering."""
    pts, r, a, spacing = _place_nuclei(rng, size, n, s)
    b = np.where(mitotic, 0.3 * r, r * rng.uniform(0.75, 1.0, n))
    a = np.where(mitotic, 0.9 * r, a)
    phi = rng.uniform(0, np.pi, n)
    R = np.where(mitotic, r * rng.uniform(1.7, 2.0, n),
                 np.clip(rng.uniform(0.6, 0.9, n) * spacing, 2.6 * r, 4.2 * r))
    field = noise(rng, (size, size), 12 * s)
    nuc = np.zeros((size, size), np.int32)
    land = np.full((size, size), 10.0, np.float32)
    for i in range(n):
        cy, cx = pts[i]
        # nucleus: a wobbly ellipse
        sl, (yy, xx) = window(cy, cx, a[i] * 1.2 + 2, size)
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
        sl, (yy, xx) = window(ay, ax, R[i] * 1.7, size)
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


# ----------------------------------------------------------------------------- points of a cell
def beside_nuclei(rng, pts, r_n, amps, gap: float, size: int, jitter: float = 0.0, several: bool = False):
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


def cell_points(f: Field, i: int, region: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``k`` random pixels of cell ``i`` (0-based) inside ``region`` (with replacement)."""
    sl = f.objs[i]
    if sl is None or k <= 0:
        return np.zeros(0, int), np.zeros(0, int)
    ys, xs = np.nonzero((f.L[sl] == i + 1) & region[sl])
    if not len(ys):
        return ys, xs
    j = f.rng.integers(0, len(ys), k)
    return ys[j] + sl[0].start, xs[j] + sl[1].start


def dots_for(f: Field, c: int, region: np.ndarray, count, sigma: float, amp_range=(0.6, 1.0)):
    """Gaussian dots of class ``c`` in ``region`` of each cell showing it (``count``: range per cell)."""
    ys, xs, am = [], [], []
    for i in range(f.n):
        if f.amp[c, i + 1] > 0:
            y, x = cell_points(f, i, region, int(f.rng.integers(*count)))
            ys.append(y)
            xs.append(x)
            am.append(f.amp[c, i + 1] * f.rng.uniform(*amp_range, len(y)))
    if not ys:
        return np.zeros(f.shape, np.float32)
    return dots(f.shape, np.concatenate(ys), np.concatenate(xs), np.concatenate(am), sigma * f.s)
