"""Each faster call of common.segmentation.hpa.exact returns exactly what the skimage / scipy call it
replaces returns (skimage < 0.26 size semantics, see tests/hpa_postprocess_oracle.py), on random
masks and label images shaped like label_cell's (blobs that touch, holes, specks, parts at the edge)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from hpa_postprocess_oracle import remove_small_holes, remove_small_objects
from scipy import ndimage as ndi
from skimage import measure
from skimage.filters import threshold_otsu
from skimage.morphology import closing, disk
from skimage.segmentation import find_boundaries
from skimage.segmentation import watershed as sk_watershed

from common.segmentation.hpa import exact


def blobs(rng, shape=(160, 144), n=25, rmax=16) -> np.ndarray:
    """Label image of random ellipses (later ones over earlier ones), some at the edge."""
    lab = np.zeros(shape, np.int32)
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    for k in range(1, n + 1):
        y, x = rng.integers(-5, shape[0] + 5), rng.integers(-5, shape[1] + 5)
        r = rng.integers(2, rmax)
        lab[(yy - y) ** 2 + ((xx - x) * rng.uniform(0.5, 1.8)) ** 2 <= r * r] = k
    return lab


def noisy_mask(rng, shape=(160, 144)) -> np.ndarray:
    mask = blobs(rng, shape) > 0
    mask[rng.random(shape) < 0.04] ^= True  # specks and pinholes
    return mask


SEEDS = range(6)


@pytest.mark.parametrize("seed", SEEDS)
def test_parts_number_like_scipy_and_skimage(seed):
    mask = noisy_mask(np.random.default_rng(seed))
    ids, n = exact.parts(mask)
    ref, nref = ndi.label(mask)
    assert n == nref and np.array_equal(ids, ref)
    ids8, n8 = exact.parts(mask, 8)
    assert np.array_equal(ids8, measure.label(mask, connectivity=2)) and n8 == ids8.max()
    assert np.array_equal(exact.part_sizes(ids, n), np.bincount(ref.ravel(), minlength=n + 1))


def test_parts_past_uint16():
    """More provisional labels than uint16 holds: int32 ids, still numbered as scipy numbers them."""
    mask = np.zeros((600, 600), bool)
    mask[::2, ::2] = True  # 90,000 one-pixel parts
    ids, n = exact.parts(mask)
    assert ids.dtype == np.int32 and n == 90000 and np.array_equal(ids, ndi.label(mask)[0])
    assert np.array_equal(exact.part_sizes(ids, n), np.bincount(ids.ravel()))


@pytest.mark.parametrize("seed", SEEDS)
def test_size_filters_and_holes(seed):
    rng = np.random.default_rng(seed)
    mask = noisy_mask(rng)
    for size in (1, 5, 40, 300):
        ids, _ = exact.drop_small_parts(mask, size)
        assert np.array_equal(ids > 0, remove_small_objects(mask, size)), size
        assert np.array_equal(exact.fill_small_holes(mask, size), remove_small_holes(mask, size)), size
    assert np.array_equal(exact.fill_holes(mask), ndi.binary_fill_holes(mask))
    lab = blobs(rng)
    for size in (0, 30, 200):
        assert np.array_equal(exact.remove_small_labels(lab, size), remove_small_objects(lab, size)), size
        lab16 = lab.astype(np.uint16)
        assert np.array_equal(exact.remove_small_labels(lab16, size), remove_small_objects(lab16, size))


@pytest.mark.parametrize("seed", SEEDS)
def test_label_equal_is_measure_label(seed):
    rng = np.random.default_rng(seed)
    lab = blobs(rng)                      # touching blobs of different values: the original runs
    assert np.array_equal(exact.label_equal(lab), measure.label(lab))
    apart = np.where(find_boundaries(lab), 0, lab)  # cut apart, one value per part: the fast way
    apart[rng.random(apart.shape) < 0.01] = 0
    assert np.array_equal(exact.label_equal(apart), measure.label(apart))


def watershed_case(rng, touching: bool):
    """(image, markers, mask) like label_cell's: markers inside a mask of blobs, integer image levels."""
    lab = blobs(rng, n=12, rmax=24)
    mask = lab > 0 if touching else np.where(find_boundaries(lab), 0, lab) > 0
    seeds = np.where(rng.random(lab.shape) < 0.002, lab, 0)
    markers = ndi.grey_dilation(seeds, size=3) * mask
    image = np.round(rng.integers(0, 6, lab.shape) + ndi.uniform_filter(rng.random(lab.shape) * 8, 5))
    return -image, markers.astype(np.int32), mask


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("touching", [False, True])
@pytest.mark.parametrize("line", [False, True])
def test_watershed_is_skimage(seed, touching, line, monkeypatch):
    rng = np.random.default_rng(seed)
    image, markers, mask = watershed_case(rng, touching)
    calls = []
    monkeypatch.setattr(exact, "sk_watershed", lambda *a, **k: calls.append(1) or sk_watershed(*a, **k))
    for min_size, dtype in ((0, None), (60, np.uint8)):
        got = exact.watershed(lambda: image, markers, mask, watershed_line=line, min_size=min_size,
                              dtype=dtype)
        ref = remove_small_objects(sk_watershed(image, markers, mask=mask, watershed_line=line), min_size)
        ref = ref.astype(markers.dtype if dtype is None else dtype)
        assert got.dtype == ref.dtype and np.array_equal(got, ref), (min_size, dtype)
    # parts holding one marker label are labelled whole; the original runs only where labels meet
    ids, n = exact.parts(mask)
    single = all(len(np.unique(markers[(ids == k) & (markers > 0)])) <= 1 for k in range(1, n + 1))
    assert bool(calls) != single


def test_watershed_of_an_empty_or_markerless_field():
    z = np.zeros((40, 50), np.int32)
    assert not exact.watershed(lambda: z, z, z > 0).any()
    mask = np.ones((40, 50), bool)
    assert not exact.watershed(lambda: z, z, mask, watershed_line=True).any()


@pytest.mark.parametrize("seed", SEEDS)
def test_otsu_from_256_bins(seed):
    rng = np.random.default_rng(seed)
    x = np.clip(rng.normal(rng.uniform(40, 200), 40, (90, 70)), 0, 255).astype(np.uint8)
    x[: seed * 10] = rng.integers(0, 256)
    assert exact.otsu_uint8(x) == threshold_otsu(x / 255)
    for flat in (np.zeros((5, 5), np.uint8), np.full((5, 5), 200, np.uint8)):  # one value: returned as is
        assert exact.otsu_uint8(flat) == threshold_otsu(flat / 255)
    two = np.zeros((5, 5), np.uint8)
    two[0, 0] = 255
    assert exact.otsu_uint8(two) == threshold_otsu(two / 255)


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_closing_and_boundaries(seed):
    lab = blobs(np.random.default_rng(seed))
    for dtype in (np.uint8, np.int32):
        x = lab.astype(dtype)
        for r in (1, 2, 6):
            assert np.array_equal(exact.grey_closing(x, r), closing(x, disk(r))), (dtype, r)
        assert np.array_equal(exact.thick_boundaries(x), find_boundaries(x))


def test_parts_stay_raster_ordered_where_opencvs_default_is_not():
    """The block-based 8-connected labelling OpenCV uses by default numbers parts in another order."""
    rng = np.random.default_rng(0)
    mask = rng.random((300, 300)) < 0.45
    ref = measure.label(mask, connectivity=2)
    assert np.array_equal(exact.parts(mask, 8)[0], ref)
    default = cv2.connectedComponents(mask.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)[1]
    assert not np.array_equal(default, ref)
