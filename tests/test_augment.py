"""Augmentations: normalisation, the HPA label rewrites, the spatial pipelines, the dataset."""
from __future__ import annotations

import numpy as np
import pytest
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
from common.data import augment

P1 = (0.5, 0.75, 0.7)  # p_flip, p_affine, p_dropout (S3's values)


def _img(shape=(32, 32, 4), seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _label(*cls):
    out = np.zeros(NUM_CLASSES, np.float32)
    out[list(cls)] = 1
    return out


def test_normalize_values_and_shapes():
    img = _img((8, 9, 4))
    x = augment.normalize(img, "competition")
    assert x.shape == (4, 8, 9) and x.dtype == torch.float32
    st = CHANNEL_STATS["competition"]
    for c in range(4):
        want = (img[..., c] / 255.0 - st["mean"][c]) / st["std"][c]
        np.testing.assert_allclose(x[c].numpy(), want, rtol=1e-4, atol=1e-4)
    ext = augment.normalize(img, "external")
    assert not torch.allclose(ext, x)
    assert augment.normalize(np.stack([img] * 3), "external").shape == (3, 4, 8, 9)
    bags = _img((2, 3, 8, 9, 4), seed=1)        # (bags, cells, H, W, 4): each image as if alone
    xb = augment.normalize(bags)
    assert xb.shape == (2, 3, 4, 8, 9)
    assert all(torch.equal(xb[i, j], augment.normalize(bags[i, j])) for i in range(2) for j in range(3))
    assert augment.normalize(bags[:0]).shape == (0, 3, 4, 8, 9)
    with pytest.raises(ValueError, match="source"):
        augment.normalize(img, "nope")


@pytest.mark.parametrize("shape", [(16, 16, 4), (3, 16, 16, 4)])
def test_green_to_negative(shape):
    img = _img(shape)
    out, lab = augment.green_to_negative(img, _label(0, 5), np.random.default_rng(1))
    assert set(np.flatnonzero(lab)) == {NEGATIVE} and lab.shape == (NUM_CLASSES,)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert out[..., GREEN].max() <= round(255 * 0.1)
    for c in (RED, BLUE, YELLOW):
        np.testing.assert_array_equal(out[..., c], img[..., c])
    out, _ = augment.green_to_negative(img, _label(0), np.random.default_rng(1), factor=0.05)
    want = np.rint(img[..., GREEN] * np.float32(0.05)).astype(np.uint8)
    np.testing.assert_array_equal(out[..., GREEN], want)


@pytest.mark.parametrize("shape", [(16, 16, 4), (3, 16, 16, 4)])
def test_green_from_red_and_yellow(shape):
    img = _img(shape, seed=2)
    out, lab = augment.green_from_other(img, _label(0, 5), np.random.default_rng(0), source="red", factor=0.8)
    assert set(np.flatnonzero(lab)) == {MICROTUBULES}
    np.testing.assert_array_equal(out[..., GREEN], np.rint(img[..., RED] * np.float32(0.8)).astype(np.uint8))
    # the original copied BLUE where red was meant: make sure that is not what happens
    assert not np.array_equal(out[..., GREEN], np.rint(img[..., BLUE] * np.float32(0.8)).astype(np.uint8))
    for c in (RED, BLUE, YELLOW):
        np.testing.assert_array_equal(out[..., c], img[..., c])

    out, lab = augment.green_from_other(img, _label(0), np.random.default_rng(0), source="yellow", factor=0.7)
    assert set(np.flatnonzero(lab)) == {ENDOPLASMIC_RETICULUM}
    want = np.rint(img[..., YELLOW] * np.float32(0.7)).astype(np.uint8)
    np.testing.assert_array_equal(out[..., GREEN], want)


def test_green_from_other_random_factor_and_source():
    img = np.full((8, 8, 4), 10, np.uint8)
    img[..., RED], img[..., YELLOW] = 200, 150
    seen = set()
    for s in range(30):
        out, lab = augment.green_from_other(img, _label(3), np.random.default_rng(s))
        cls = int(np.flatnonzero(lab)[0])
        src = img[..., RED] if cls == MICROTUBULES else img[..., YELLOW]
        ratio = out[..., GREEN].astype(float) / src
        assert np.all(ratio >= 0.6 - 0.01) and np.all(ratio <= 1.0 + 0.01)
        assert np.ptp(ratio) < 1e-9  # one factor for the whole image
        seen.add(cls)
    assert seen == {MICROTUBULES, ENDOPLASMIC_RETICULUM}


def test_scale_intensity_per_channel_range():
    img = np.full((2, 4, 4, 4), 100, np.uint8)  # a stack: same factors for every cell
    out = augment.scale_intensity(img, np.random.default_rng(0), (0.6, 1.1))
    f = out[0, 0, 0].astype(float) / 100
    assert np.all(f >= 0.6 - 0.01) and np.all(f <= 1.1 + 0.01) and len(set(f.tolist())) > 1
    np.testing.assert_array_equal(out[0], out[1])


def test_label_augment_probabilities_and_reproducibility():
    img, lab = _img((8, 8, 4)), _label(0)
    never = augment.LabelAugment(p_negative=0, p_other=0, p_intensity=0, intensity_range=(0.6, 1.1))
    o, l2 = never(img, lab, np.random.default_rng(0))
    np.testing.assert_array_equal(o, img)
    np.testing.assert_array_equal(l2, lab)
    always_neg = augment.LabelAugment(p_negative=1, p_other=0, p_intensity=0, intensity_range=(0.6, 1.1))
    assert set(np.flatnonzero(always_neg(img, lab, np.random.default_rng(0))[1])) == {NEGATIVE}
    always_other = augment.LabelAugment(p_negative=0, p_other=1, p_intensity=0, intensity_range=(0.6, 1.1))
    assert set(np.flatnonzero(always_other(img, lab, np.random.default_rng(0))[1])) <= {
        MICROTUBULES, ENDOPLASMIC_RETICULUM}
    mixed = augment.LabelAugment(p_negative=0.3, p_other=0.3, p_intensity=0.5, intensity_range=(0.6, 1.1))
    a = mixed(img, lab, np.random.default_rng(7))
    b = mixed(img, lab, np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    counts = {"neg": 0, "other": 0, "same": 0}
    for s in range(400):
        _, lb = mixed(img, lab, np.random.default_rng(s))
        k = int(np.flatnonzero(lb)[0])
        other = k in (MICROTUBULES, ENDOPLASMIC_RETICULUM)
        counts["neg" if k == NEGATIVE else "other" if other else "same"] += 1
    assert 80 < counts["neg"] < 160 and 80 < counts["other"] < 160
    with pytest.raises(ValueError):
        augment.LabelAugment(p_negative=0.7, p_other=0.5, p_intensity=0, intensity_range=(0.6, 1.1))


@pytest.mark.parametrize("variant", augment.VARIANTS)
@pytest.mark.parametrize("size", [64, 96])
def test_spatial_pipelines(variant, size):
    img = _img((size, size, 4))
    t = augment.build_transforms(variant, size, True, *P1)
    a = augment.apply_transforms(t, img, np.random.default_rng(3))
    b = augment.apply_transforms(t, img, np.random.default_rng(3))
    c = augment.apply_transforms(t, img, np.random.default_rng(4))
    assert a.shape == (size, size, 4) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert augment.build_transforms(variant, size, False, *P1) is None
    with pytest.raises(ValueError, match="VARIANT"):
        augment.build_transforms("bogus", size, True, *P1)


def test_masked_coarse_dropout_hole_is_70_percent():
    img = np.full((100, 100, 4), 255, np.uint8)
    t = augment.build_transforms("masked", 100, True, p_flip=0, p_affine=0, p_dropout=1.0)
    out = augment.apply_transforms(t, img, np.random.default_rng(0))
    assert (out[..., 0] == 0).sum() == 70 * 70


def test_image_dataset(tmp_path):
    from toy_data import make_toy_dataset

    from common.data.datasets import ImageDataset

    df = make_toy_dataset(tmp_path, n=6, size=32)
    ds = ImageDataset(df, tmp_path / "train", transforms=augment.build_transforms("masked", 48, True, *P1),
                      label_aug=augment.LabelAugment(0.05, 0.05, 0.5, (0.6, 1.1)), image_size=48, seed=1)
    item = ds[0]
    assert item["image"].shape == (4, 48, 48) and item["image"].dtype == torch.float32
    assert item["label"].shape == (NUM_CLASSES,) and item["id"] == df.ID[0]
    torch.testing.assert_close(ds[2]["image"], ds[2]["image"])  # same (seed, epoch, index)
    ds.set_epoch(1)
    assert not torch.equal(ds[2]["image"], ImageDataset(df, tmp_path / "train", ds.transforms, ds.label_aug,
                                                        48, seed=1)[2]["image"])
    assert ds.sources[4] == "external" and ds.sources[0] == "competition"
    bad = df.copy()
    bad.loc[0, "ID"] = "missing_image"
    with pytest.raises(OSError, match="missing_image"):
        ImageDataset(bad, tmp_path / "train")[0]
