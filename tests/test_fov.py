"""One field-of-view preparation and one resize: S5 without S2's masks segments like S2 does, and a
cell's training crop (S4.1) equals its test crop (S5) at 1728, 2048 and 3072 px originals."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import load_script

from common import cells, fov, images
from common.data import bag_datasets, crop_files
from common.predict import fields, views
from common.resize import resize_labels

SIZE = 128  # working size of the scale test (demo images are 256 px)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    demo_data = pytest.importorskip("common.demo.demo_data")
    d = tmp_path_factory.mktemp("demo")
    demo_data.make_dataset(d, demo_data.DemoPlan(n_train=1, n_test=3, size=256, seed=5,
                                                 min_cells=5, max_cells=9))
    return d


def _source(S5, data, hpa, tmp_path, keep_original=False):
    cfg = S5.config.parse(vars(S5), ["--HPA512_DIR", str(hpa), "--COMPETITION_DIR", str(data),
                                     "--IMAGE_SIZE", str(SIZE), "--SEGMENTER", "builtin", "--HPA_SEG_DIR",
                                     str(tmp_path / "no-weights"), "--DEVICE", "cpu"], quiet=True)
    return fields.ImageSource(cfg, S5._load_sample(data / "sample_submission.csv"), [], keep_original)


def test_s5_without_s2_masks_gives_s2s_cells(demo, tmp_path):
    S2, S5 = load_script("S2_data_process.py"), load_script("S5_predict.py")
    data = tmp_path / "data"
    shutil.copytree(demo, data)
    out = tmp_path / "hpa"
    S2.main(["--COMPETITION_DIR", str(data), "--HPA512_DIR", str(out), "--IMAGE_SIZE", str(SIZE),
             "--SEGMENTER", "builtin", "--NUM_WORKERS", "1"])
    with_s2, kept = _source(S5, data, out, tmp_path), _source(S5, data, out, tmp_path, keep_original=True)
    alone = _source(S5, data, tmp_path / "nothing", tmp_path)
    sample = pd.read_csv(data / "sample_submission.csv", dtype={"ID": str})
    ids = sample["ID"]
    assert with_s2.ids == alone.ids == ids.tolist() and with_s2.table() is with_s2.sample
    n_cells = 0
    for image_id, h, w in zip(ids, sample["ImageHeight"], sample["ImageWidth"]):
        a, b = with_s2.load(image_id), alone.load(image_id)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.cell, b.cell)
        assert a.cell_full is not None and np.array_equal(a.cell_full, b.cell_full)  # S2 kept them full size
        # one record from either path: the sample's size, the whole working map, the original when asked
        assert a.hw == b.hw == (h, w) and a.region == b.region == a.cell.shape
        assert a.original is None and b.original is not None
        assert np.array_equal(kept.load(image_id).original, b.original)
        n_cells += len(cells.cell_ids(a.cell))
    assert alone.n_segmented == len(ids) and with_s2.n_segmented == 0 and n_cells >= len(ids)


def _field(side: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """A smooth original image of ``side`` px (cheap PNGs) and a 512-px label map of a few cells."""
    yy, xx = np.mgrid[:side, :side].astype(np.float32) / side
    img = np.stack([(128 + 100 * np.sin(6 * yy + k) * np.cos(5 * xx - k)) for k in range(4)], -1)
    img = img.clip(0, 255).astype(np.uint8)
    lab = np.zeros((512, 512), np.uint16)
    yy, xx = np.ogrid[:512, :512]
    for k in range(1, 9):
        cy, cx, r = rng.integers(40, 472), rng.integers(40, 472), rng.integers(12, 40)
        lab[((yy - cy) ** 2 + ((xx - cx) * 1.3) ** 2 <= r * r) & (lab == 0)] = k
    return img, lab


@pytest.mark.parametrize("side", [1728, 2048, 3072])
@pytest.mark.parametrize("with_full", [False, True])
def test_training_and_test_crops_are_identical(side, with_full, tmp_path):
    rng = np.random.default_rng(side)
    original, lab = _field(side, rng)
    images.write_channels(tmp_path / "orig", "img", original)
    mask = tmp_path / "train_cell_mask" / "img.npz"
    images.save_masks(mask, lab, lab)
    full = None
    if with_full:  # S2's original-size mask (FULL_MASKS): both sides must take it
        full = resize_labels(lab, side)
        full[(full == 3) & (np.arange(side)[None, :] % 7 == 0)] = 0  # unlike the resized 512 map
        images.save_masks(fov.full_mask_path(mask), full, full)
    images.write_rgby(tmp_path / "small.png", fov.working_image(original, 512))
    task = {"image_id": "img", "mask_path": str(mask), "image_path": str(tmp_path / "small.png"),
            "original_dir": str(tmp_path / "orig"), "out_dir": str(tmp_path / "cells"), "size": 128,
            "margin": 0.05, "overwrite": True}
    res = crop_files.crop_image_cells(task)
    assert res["from_original"] and res["written"] == len(cells.cell_ids(lab))
    run = views.CropView(128, 0.05, from_original=True)  # the view of a p2 run trained on originals
    ids = cells.cell_ids(lab) if full is None else cells.cell_ids(full)
    test_crops = run.views(fov.FieldOfView.of(fov.working_image(original, 512), lab, ids, original, full))
    for c, crop in zip(ids, test_crops):
        train_crop = images.read_rgby(bag_datasets.crop_path(tmp_path / "cells", "img", c))
        assert np.array_equal(train_crop, crop), f"cell {c} at {side} px"


def test_seg_at_and_s2_choices_are_checked(demo, tmp_path):
    assert fov.resolve_seg_at("auto", "hpa") == "original"
    assert fov.resolve_seg_at("auto", "builtin") == "resized"
    assert fov.resolve_seg_at("Resized", "hpa") == "resized"
    with pytest.raises(ValueError, match="SEG_AT 'half'"):
        fov.resolve_seg_at("half", "hpa")
    S2 = load_script("S2_data_process.py")
    for name, bad in (("SEG_AT", "half"), ("LABEL_AT", "sometimes"), ("FULL_MASKS", "train")):
        with pytest.raises(SystemExit, match=name):
            S2.main(["--COMPETITION_DIR", str(demo), "--HPA512_DIR", str(tmp_path / "o"),
                     "--SEGMENTER", "builtin", f"--{name}", bad])
    full = fov.full_mask_path(tmp_path / "test_cell_mask" / "a.npz")
    assert full == tmp_path / "test_cell_mask_full" / "a.npz"
