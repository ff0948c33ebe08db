"""The fast official post-processing (common.segmentation.hpa.postprocess) gives exactly the labels of
the plain official code (tests/hpa_postprocess_oracle.py): stress cases (touching cells, more than 255
cells, cells cut by the field's edge, 1728 and 3072 px fields, empty fields) and 20 seeded random ones.
Each compares cells and nuclei pixel for pixel, and checks that the case took the way it is meant to
exercise (skimage's watershed where labels meet, the connected-component way elsewhere)."""
from __future__ import annotations

import numpy as np
import pytest
from hpa_maps import maps, random_case
from hpa_postprocess_oracle import label_cell as oracle
from hpa_postprocess_oracle import official_inputs
from skimage.segmentation import watershed as sk_watershed

from common.segmentation.hpa import exact
from common.segmentation.hpa import postprocess as pp


@pytest.fixture
def ways(monkeypatch) -> list[bool]:
    """One entry per watershed of label_cell (nuclei, cells, cells into their borders): True where
    skimage's own watershed ran (labels meet), False where the connected-component way did."""
    seen: list[bool] = []
    fast = exact.watershed

    def watershed(*a, **k):
        seen.append(False)
        return fast(*a, **k)

    def original(*a, **k):
        seen[-1] = True
        return sk_watershed(*a, **k)
    monkeypatch.setattr(exact, "watershed", watershed)
    monkeypatch.setattr(exact, "sk_watershed", original)
    return seen


def same_as_oracle(nuclei: np.ndarray, cell: np.ndarray, side: int, **kw) -> np.ndarray:
    """label_from_maps at the original size equals the oracle (with the official feeding); the cells."""
    c, n = pp.label_from_maps(nuclei, cell, (side, side), **kw)
    oc, on = oracle(*official_inputs(nuclei, cell, (side, side)), corrected=kw.get("corrected", False))
    assert c.dtype == n.dtype == np.uint16
    assert np.array_equal(c, oc), f"cells differ at {int((c != oc).sum())} px"
    assert np.array_equal(n, on), f"nuclei differ at {int((n != on).sum())} px"
    return c


def test_touching_cells_and_nuclei(ways):
    nuc, cell = maps(np.random.default_rng(11), 1024, n_cells=30, reach=0.75, border=0.5, dip=0.2, pair=0.5)
    c = same_as_oracle(nuc, cell, 1024)
    assert c.max() >= 10
    assert ways == [True, True, True]  # all three watersheds see labels meet


def test_more_than_255_cells_at_3072(ways):
    """400 nuclei: cell ids past 255 wrap in uint8 before the closing (ids 256, 512, ... vanish)."""
    nuc, cell = maps(np.random.default_rng(2), 3072, n_cells=400, grid=True, reach=0.4, spread=0.05,
                     nuc_frac=0.65, pair=0.0, noise=0.0, jitter=0.03)
    c = same_as_oracle(nuc, cell, 3072)
    assert 256 < c.max() < 400


def test_cells_cut_by_the_edge_at_1728():
    nuc, cell = maps(np.random.default_rng(3), 1728, n_cells=36, grid=True, reach=0.45, border=0.7, dip=0.4,
                     pair=0.3)
    nuc, cell = (np.roll(m, (17, 23), axis=(0, 1)) for m in (nuc, cell))  # cells across every edge
    c = same_as_oracle(nuc, cell, 1728)
    for edge in (c[0], c[-1], c[:, 0], c[:, -1]):
        assert edge.any()


@pytest.mark.parametrize("what", ["empty", "cells without nuclei", "nuclei without cells"])
def test_empty_fields(what):
    nuc, cell = maps(np.random.default_rng(4), 512, n_cells=6)
    if what != "nuclei without cells":
        nuc = np.stack([np.ones_like(nuc[..., 0]), 0 * nuc[..., 0], 0 * nuc[..., 0]], -1)
    if what != "cells without nuclei":
        cell = np.stack([np.ones_like(cell[..., 0]), 0 * cell[..., 0], 0 * cell[..., 0]], -1)
    assert same_as_oracle(nuc, cell, 512).max() == 0


RANDOM = range(20)
_WAYS: dict[int, list[bool]] = {}  # seed -> ways, kept by test_random_maps for the next test


@pytest.mark.parametrize("seed", RANDOM)
def test_random_maps(seed, ways):
    side, _, (nuc, cell) = random_case(seed)
    same_as_oracle(nuc, cell, side)
    _WAYS[seed] = list(ways)


def test_random_maps_cover_both_ways(ways):
    """Among the random cases above, each of the three watersheds runs both ways."""
    count = np.zeros((3, 2), int)
    for seed in RANDOM:
        if seed not in _WAYS:  # this test run alone
            side, _, (nuc, cell) = random_case(seed)
            ways.clear()
            pp.label_from_maps(nuc, cell, (side, side))
            _WAYS[seed] = list(ways)
        count[np.arange(3), np.array(_WAYS[seed], int)] += 1
    assert count.min() > 0, f"watershed x (connected parts, skimage's own) over the cases: {count.tolist()}"


@pytest.mark.parametrize("seed", [0, 5])
def test_corrected_and_working_size_paths(seed):
    side, _, (nuc, cell) = random_case(seed)
    same_as_oracle(nuc, cell, side, corrected=True)
    planes = pp.input_planes(nuc, cell, nuc.shape[:2])  # labelled at the networks' size, sizes scaled
    c, n = pp.label_planes(*planes, pixel_scale=0.25)
    oc, on = oracle(*official_inputs(nuc, cell, nuc.shape[:2]), pixel_scale=0.25)
    assert np.array_equal(c, oc) and np.array_equal(n, on)
