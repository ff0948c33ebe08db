"""The demo's renderer (S0's synthetic images, :mod:`common.demo.demo_data`): one HPA-like field of view
with its label maps (:func:`make_image`).

8-30 irregular, touching cells (some cut by the image border, :mod:`common.demo.demo_field`), each with
one nucleus; red = microtubules radiating from the nucleus, yellow = reticular ER (denser near the
nucleus), blue = textured nuclei, green = the protein of interest with a distinct pattern per class
(:data:`GREEN_PATTERNS`, :data:`GREEN`). The cytoplasm (red + yellow) fills each cell with a dimmer
seam along cell borders and dark background outside cells, so that a seeded watershed from the
nuclei over the cytoplasm recovers the cells. The cells' classes are :mod:`common.demo.demo_labels`'.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
from scipy import ndimage

from common.constants import CLASS_NAMES, NEGATIVE, NUM_CLASSES
from common.demo.demo_field import (
    Field,
    beside_nuclei,
    blur,
    dots,
    dots_for,
    geometry,
    lookup,
    noise,
    ridge,
    smoothstep,
    window,
)
from common.demo.demo_labels import assign_cell_labels

MIN_CELLS, MAX_CELLS = 8, 30   # default cells per image (inclusive)
BASE_SIZE = 512                # lengths are in pixels at this size and scale with the image

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


# ----------------------------------------------------------------------------- counterstains
def _nucleoli(f: Field) -> None:
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
            sl, (wy, wx) = window(y, x, rad_n * 2.5, size)
            blob = np.exp(-(((wy - y) ** 2 + (wx - x) ** 2) / rad_n ** 2) ** 2)
            f.nucleoli[sl] = np.maximum(f.nucleoli[sl], blob * (f.N[sl] == i + 1))
            if 0 <= int(y) < size and 0 <= int(x) < size:
                f.nucleoli_centres[i].append((int(y), int(x)))


def _microtubules(f: Field) -> None:
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
    curl = lookup([0] + list(rng.uniform(-0.6, 0.6, n)), L)
    th_eff = f.theta + curl * f.rad / (lookup([1] + list(f.R), L)) + 0.04 * f.geo["field"]
    mapx = ((th_eff / (2 * np.pi)) % 1.0 * M).astype(np.float32)
    mt = cv2.remap(lines, mapx, L.astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
    f.mt = np.clip(mt * (0.8 + 0.25 * f.fine), 0, 1.2)


def _spindles(f: Field) -> None:
    """``f.spindle``: mitotic spindles (red, and class 11's green); red's ``f.mt`` in mitotic cells."""
    s, size = f.s, f.size
    f.spindle = np.zeros(f.shape, np.float32)
    for i in np.flatnonzero(f.mit[1:]):
        cy_i, cx_i = f.pts[i]
        p = f.geo["phi"][i] + np.pi / 2  # spindle axis: perpendicular to the chromosome plate
        half = f.R[i] * 0.8
        width = f.r_n[i] * 0.8
        sl, (wy, wx) = window(cy_i, cx_i, half * 1.2, size)
        u = (wx - cx_i) * math.cos(p) + (wy - cy_i) * math.sin(p)
        v = -(wx - cx_i) * math.sin(p) + (wy - cy_i) * math.cos(p)
        env = np.clip(1 - (u / half) ** 2, 0, 1)
        t = v / (width * env + 1e-3)
        fib = (0.5 + 0.5 * np.cos(2 * np.pi * 3.5 * t + f.rng.uniform(0, 2 * np.pi))) ** 2
        sp = (0.5 + 0.5 * fib) * np.sqrt(np.clip(1 - np.abs(t), 0, 1)) * (np.abs(u) < half)
        poles = np.exp(-((np.abs(u) - half) ** 2 + v ** 2) / (2 * (1.5 * s) ** 2))
        f.spindle[sl] = np.maximum(f.spindle[sl], (sp + poles) * (f.L[sl] == i + 1))
    f.mt = np.where(f.mit[f.L], 0.25 + f.spindle, f.mt)


def _counterstains(f: Field) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(red, blue, yellow): microtubules, nuclei (dim nucleoli, bright mitotic chromosomes), a
    reticular ER denser near the nucleus; per-cell brightness, seam and radial falloff."""
    rng, s, L, N, nucm = f.rng, f.s, f.L, f.N, f.nucm
    er = ridge(noise(rng, f.shape, 1.6 * s, 3.5 * s), 0.35)
    er = er * (0.75 + 0.25 * f.fine)
    base_r = lookup([0] + list(rng.uniform(0.4, 0.75, f.n)), L)
    f.base_y = base_y = lookup([0] + list(rng.uniform(0.4, 0.75, f.n)), L)
    radial = 1.0 - 0.3 * f.rho ** 2
    red = base_r * f.seam * radial * np.where(nucm, 0.25 + 0.25 * f.mt, 0.45 + 0.55 * f.mt) * f.cell
    nuc_rim = np.exp(-(np.where(nucm, f.d_nuc_in, f.d_nuc_out) / (1.5 * s)) ** 2) * f.cell
    yel = base_y * f.seam * (1.15 - 0.55 * f.rho) * (0.35 + 0.65 * er) * f.cyto_f
    f.yel = yel = yel + base_y * (0.12 * nucm + 0.5 * nuc_rim * (1 - nucm)) * f.seam
    base_b = lookup([0] + list(rng.uniform(0.45, 0.85, f.n)), N)
    blue = base_b * f.nuc_soft * (0.8 + 0.15 * f.fine + 0.1 * f.mid) * (1 - 0.4 * f.nucleoli)
    blue = np.where(f.mit[N] & nucm, np.clip(base_b * 1.3 * (0.7 + 0.3 * f.fine), 0, 1) * f.nuc_soft, blue)
    return red, blue, yel


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
        g = g + 2 * dots(f.shape, np.concatenate(ys), np.concatenate(xs), np.concatenate(am), 0.8 * f.s)
    return g


def _g_speckles(f, A):
    return dots_for(f, 4, f.nucm & (f.nucleoli < 0.3), (10, 26), 1.7) * 0.8 + 0.2 * A * f.nucleoplasm


def _g_nuclear_bodies(f, A):
    return 2 * dots_for(f, 5, f.nucm & (f.nucleoli < 0.3), (1, 7), 1.2) + 0.04 * A * f.nucleoplasm


def _g_er(f, A):
    return A * f.yel / (f.base_y + 1e-3) * 1.1


def _g_golgi(f, A):
    gw = lookup([1] + list(f.rng.uniform(4, 9, f.n) * f.s), f.L)
    ang = np.clip((np.cos(f.theta - f.psi) - math.cos(0.9)) / (1 - math.cos(0.9)), 0, 1)
    cap = np.exp(-(f.d_nuc_out / gw) ** 2) * ang * f.cyto_f
    return A * cap * (0.6 + 0.4 * np.clip(f.mid * 0.5 + 0.5 + 0.5 * f.fine, 0, 1.5))


def _g_intermediate_filaments(f, A):
    rng, L = f.rng, f.L
    tex = ndimage.gaussian_filter(rng.standard_normal((128, 128)).astype(np.float32), (1.5, 6), mode="wrap")
    tex /= tex.std() + 1e-6
    offr = lookup([0] + list(rng.uniform(0, 128, f.n)), L)
    offt = lookup([0] + list(rng.uniform(0, 128, f.n)), L)
    my = (f.rad / (lookup([1] + list(f.R), L)) * 48 + offr).astype(np.float32)
    mx = (f.theta / (2 * np.pi) * 128 + offt + 3 * f.geo["field"]).astype(np.float32)
    fil = ridge(cv2.remap(tex, mx % 128, my % 128, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP), 0.25)
    return A * fil * (1.1 - 0.6 * f.rho) * (f.cyto_f + 0.3 * f.nucm)


def _g_actin(f, A):
    rng, L = f.rng, f.L
    ori = lookup([0] + list(rng.uniform(0, np.pi, f.n)), L)
    per = lookup([1] + list(rng.uniform(5, 8, f.n) * f.s), L)
    ph = lookup([0] + list(rng.uniform(0, 2 * np.pi, f.n)), L)
    u = f.xx * np.cos(ori) + f.yy * np.sin(ori)
    lin = (0.5 + 0.5 * np.cos(2 * np.pi * u / per + ph)) ** 6
    brk = smoothstep(noise(rng, f.shape, 6 * f.s) + 0.6)
    return A * lin * brk * (0.4 + 0.6 * f.rho) * (f.cyto_f + 0.4 * f.nucm) * f.seam


def _g_microtubules(f, A):
    return A * np.where(f.mit[f.L], 0.2, f.mt) * (f.cyto_f + 0.3 * f.nucm) * (0.6 + 0.4 * f.seam)


def _g_spindle(f, A):
    return A * f.spindle * 1.2


def _g_centrosome(f, A):
    ys, xs, am = beside_nuclei(f.rng, f.pts, f.r_n, f.amp[12, 1:f.n + 1], 3 * f.s, f.size, jitter=f.s,
                                several=True)
    return 2 * dots(f.shape, ys, xs, am, 1.5 * f.s) + 0.05 * A * f.cyto_f


def _g_plasma_membrane(f, A):
    return A * (np.exp(-(f.d_edge / (1.6 * f.s)) ** 2) * f.cell + 0.06 * f.cyto_f)


def _g_mitochondria(f, A):
    tub = ridge(noise(f.rng, f.shape, 1.8 * f.s, 3.6 * f.s), 0.4)
    seg = smoothstep(noise(f.rng, f.shape, 2.5 * f.s) * 0.8 + 0.2)
    return A * tub * seg * (1.2 - 0.7 * f.rho) * f.cyto_f


def _g_aggresome(f, A):
    ys, xs, am = beside_nuclei(f.rng, f.pts, f.r_n, f.amp[15, 1:f.n + 1] * 1.2, 5 * f.s, f.size)
    return 1.3 * dots(f.shape, ys, xs, am, 4 * f.s) + 0.08 * A * f.cyto_f


def _g_cytosol(f, A):
    return A * f.cyto_f * (0.7 + 0.1 * f.mid + 0.05 * f.fine) * f.seam


def _g_vesicles(f, A):
    return 1.6 * dots_for(f, 17, f.cyto, (40, 120), 0.9) + 0.05 * A * f.cyto_f


# the green pattern of each positive class (constants.CLASS_NAMES order); 18 Negative draws nothing
GREEN = (_g_nucleoplasm, _g_nuclear_membrane, _g_nucleoli, _g_fibrillar_center, _g_speckles,
         _g_nuclear_bodies, _g_er, _g_golgi, _g_intermediate_filaments, _g_actin, _g_microtubules,
         _g_spindle, _g_centrosome, _g_plasma_membrane, _g_mitochondria, _g_aggresome, _g_cytosol,
         _g_vesicles)
_UNMASKED = (4, 5, 12, 15, 17)  # dot patterns drawn whole (their dots may cross a cell's border)


def _green(f: Field, cell_labels: list[list[int]]) -> np.ndarray:
    """Green: one pattern per class, only in the cells that show it, over a faint autofluorescence."""
    f.amp = np.zeros((NUM_CLASSES, f.n + 1), np.float32)
    for i, labs in enumerate(cell_labels):
        for c in labs:
            f.amp[c, i + 1] = f.rng.uniform(0.5, 1.0)
    present = sorted({c for labs in cell_labels for c in labs} - {NEGATIVE})
    green = 0.04 * f.cyto_f + 0.02 * f.nucm
    f.psi = lookup([0] + list(f.rng.uniform(-np.pi, np.pi, f.n)), f.L)  # per-cell "front" direction
    f.nucleoplasm = f.nuc_soft * (0.85 + 0.15 * f.fine) * (1 - 0.75 * f.nucleoli)
    for c in present:
        g = GREEN[c](f, f.amp[c][f.L])
        green = green + g * (f.L > 0 if c not in _UNMASKED else 1)
    return green


def _render(rng, geo: dict, cell_labels: list[list[int]], mitotic: list[bool], s: float) -> np.ndarray:
    """H x W x 4 float32 RGBY in [0, 1] before optics and noise."""
    f = Field(rng, geo, cell_labels, mitotic, s)
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
        x = blur(np.ascontiguousarray(img[..., ch]), sigma) * gains[ch] * vign
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
    labels, mitotic = assign_cell_labels(rng, image_classes, n_cells)
    geo = geometry(rng, size, n_cells, mitotic, s)
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


assert len(CLASS_NAMES) == NUM_CLASSES == len(GREEN_PATTERNS)
