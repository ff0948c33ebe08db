"""S4.1 cell crops (index, original resolution, resume, failures), the bag dataset, the MIL model and
loss, and a 2-epoch CPU run of S4.2 on tiny data made in tmp_path."""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import load_script
from torch import nn

from common import cells, images
from common.competition import encoding
from common.constants import NEGATIVE, NUM_CLASSES
from common.data.augment import LabelAugment
from common.data.bag_datasets import BagDataset
from common.data.crop_files import crop_path
from common.models import models
from common.models.mil import BagModel, MILHead, mil_loss, pool_cells

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)
S41_MARGIN = load_script("S4.1_crop_cells.py").CROP_MARGIN
MIL = dict(MIL_POOL="max", MIL_W_MAX=4.0, MIL_W_MEAN=1.0, MIL_TOPK=4, MIL_LSE_R=5.0, MIL_CHUNK=256)  # S4.2's
HEAD = MILHead("max", w_max=4.0, w_mean=1.0, topk=4, lse_r=5.0)  # the same, typed


def run_s41(args):
    """A fresh module per run: config.parse writes the overrides into the module's globals."""
    return load_script("S4.1_crop_cells.py").main(args)


def run_s42(args):
    return load_script("S4.2_train_pipeline2.py").main(args)


# ----------------------------------------------------------------------------- tiny data
def _label_map(rng, size: int, n: int, base: int) -> np.ndarray:
    lab = np.zeros((size, size), np.uint16)
    for k in range(n):
        y, x = rng.integers(0, size - 10, 2)
        h, w = rng.integers(6, 14, 2)
        lab[y:y + h, x:x + w] = base + k   # later cells may overlap earlier ones; ids stay unique
    return lab


def make_data(root: Path, n_images: int = 8) -> dict:
    """64-px "512" images, 128-px originals (competition only), masks, folds, per-cell truth."""
    rng = np.random.default_rng(0)
    hpa, comp = root / "hpa-512", root / "comp"
    rows, truth = [], []
    for i in range(n_images):
        iid = f"img{i:02d}"
        is_ext = int(i == 7)
        cls = 0 if i % 2 else 14               # class 0: bright green cells, class 14: dim green
        n_cells = 0 if i == 6 else int(rng.integers(2, 6))
        lab = _label_map(rng, 64, n_cells, base=300 if i == 1 else 1)
        img = rng.integers(0, 60, (64, 64, 4), dtype=np.uint8)
        img[..., 1][lab > 0] = 220 if cls == 0 else 30
        images.write_rgby(hpa / "train" / f"{iid}.png", img)
        if i != 5:                             # image 5 has no mask
            images.save_masks(hpa / "train_cell_mask" / f"{iid}.npz", lab, lab)
        if not is_ext:                         # originals at 2x
            big = cv2.resize(img, (128, 128), interpolation=cv2.INTER_NEAREST)
            images.write_channels(comp / "train", iid, big)
            big_lab = cv2.resize(lab, (128, 128), interpolation=cv2.INTER_NEAREST)
            images.write_label_png(comp / "train_cell_truth" / f"{iid}.png", big_lab)
            for c in cells.cell_ids(big_lab):
                truth.append(dict(ID=iid, ImageWidth=128, ImageHeight=128, cell_id=c, Label=cls,
                                  EncodedMask=encoding.encode_binary_mask(big_lab == c)))
        rows.append(dict(ID=iid, Label=str(cls), is_ext=is_ext, fold=i % 4 // 2 if i < 4 else 1,
                         ImageWidth=128, ImageHeight=128, n_cells=n_cells))
    pd.DataFrame(rows).to_csv(hpa / "train_all.csv", index=False)
    pd.DataFrame(truth).to_csv(comp / "train_cells.csv", index=False)
    return dict(hpa=hpa, comp=comp, rows=rows)


def _s41_args(d: dict, size: int = 32, **extra) -> list[str]:
    args = ["--HPA512_DIR", str(d["hpa"]), "--TRAIN_CSV", str(d["hpa"] / "train_all.csv"),
            "--COMP_TRAIN_DIR", str(d["comp"] / "train"),
            "--EXT_TRAIN_DIR", str(d["comp"] / "train_external"),
            "--CELL_SIZE", str(size), "--NUM_WORKERS", "1"]
    for k, v in extra.items():
        args += [f"--{k}", str(v)]
    return args


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    d = make_data(tmp_path_factory.mktemp("s4"))
    d["s41"] = run_s41(_s41_args(d))
    return d


# ----------------------------------------------------------------------------- S4.1
def test_s41_writes_crops_and_index(data):
    hpa = data["hpa"]
    index = pd.read_csv(hpa / "cells_32.csv", dtype={"ID": str})
    assert list(index.columns) == ["ID", "cell_id", "x0", "y0", "x1", "y1", "area", "border"]
    assert "img05" not in set(index["ID"]) and "img06" not in set(index["ID"])   # no mask / no cells
    assert data["s41"]["written"] == len(index) > 0 and data["s41"]["failed"] == 0
    assert (index.loc[index["ID"] == "img01", "cell_id"] >= 300).all()
    # a competition image is cropped from its 128-px original with the mask upscaled (nearest)
    lab, _ = images.load_masks(hpa / "train_cell_mask" / "img01.npz")
    orig = images.read_image(data["comp"] / "train", "img01")
    big = cv2.resize(lab, (128, 128), interpolation=cv2.INTER_NEAREST)
    c = int(index.loc[index["ID"] == "img01", "cell_id"].iloc[0])
    np.testing.assert_array_equal(images.read_rgby(crop_path(hpa / "cells_32", "img01", c)),
                                  cells.crop_cell(orig, big, c, 32, S41_MARGIN))
    row = index[(index["ID"] == "img01") & (index["cell_id"] == c)].iloc[0]
    assert (row.x0, row.y0, row.x1, row.y1) == cells.bounding_boxes(lab)[c]       # 512-px coordinates
    assert row.area == int((lab == c).sum())
    # the external image (no original) is cropped from its 64-px image
    lab7, _ = images.load_masks(hpa / "train_cell_mask" / "img07.npz")
    c7 = cells.cell_ids(lab7)[0]
    np.testing.assert_array_equal(images.read_rgby(crop_path(hpa / "cells_32", "img07", c7)),
                                  cells.crop_cell(images.read_rgby(hpa / "train" / "img07.png"), lab7, c7, 32,
                                                  S41_MARGIN))
    assert json.loads((hpa / "cells_32.json").read_text())["CROP_MARGIN"] == S41_MARGIN


def test_s41_resume_writes_nothing_new_and_lists_failures(data, tmp_path):
    hpa = data["hpa"]
    files = sorted((hpa / "cells_32").glob("*.png"))
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    index_before = pd.read_csv(hpa / "cells_32.csv")
    again = run_s41(_s41_args(data))
    assert again["written"] == 0 and again["failed"] == 0
    assert sorted((hpa / "cells_32").glob("*.png")) == files
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    pd.testing.assert_frame_equal(pd.read_csv(hpa / "cells_32.csv"), index_before)
    # a broken image fails alone, named in s41_failures.csv; shards split the images
    bad = tmp_path / "hpa"
    bad.mkdir()
    for sub in ("train", "train_cell_mask"):
        (bad / sub).symlink_to(hpa / sub, target_is_directory=True)
    df = pd.read_csv(hpa / "train_all.csv")
    df = pd.concat([df, pd.DataFrame([dict(ID="broken", Label="0", is_ext=1, fold=0)])])
    df.to_csv(bad / "train_all.csv", index=False)
    images.save_masks(bad / "mask_broken.npz", np.ones((8, 8), np.uint16))
    (hpa / "train_cell_mask" / "broken.npz").write_bytes((bad / "mask_broken.npz").read_bytes())
    try:
        out = run_s41(_s41_args(dict(hpa=bad, comp=data["comp"]), TRAIN_CSV=bad / "train_all.csv",
                                 SHARD="1/2"))
    finally:
        (hpa / "train_cell_mask" / "broken.npz").unlink()
    fails = pd.read_csv(bad / "s41_failures.csv")
    assert list(fails["ID"]) == ["broken"] and "broken.png" in fails["error"].iloc[0]
    assert out["failed"] == 1 and (bad / "cells_32.shard1of2.csv").is_file()


def test_s41_recrops_an_image_whose_mask_is_newer(data, tmp_path):
    hpa = data["hpa"]
    index = pd.read_csv(hpa / "cells_32.csv", dtype={"ID": str})
    image_id = index["ID"].iloc[0]
    mask = hpa / "train_cell_mask" / f"{image_id}.npz"
    crops = sorted((hpa / "cells_32").glob(f"{image_id}_*.png"))
    others = {p: p.stat().st_mtime_ns for p in (hpa / "cells_32").glob("*.png") if p not in crops}
    for p in crops:                               # crops made at t=1 s, then S2 wrote a new mask at t=2 s
        os.utime(p, ns=(10**9, 10**9))
    os.utime(mask, ns=(2 * 10**9, 2 * 10**9))
    out = run_s41(_s41_args(data))
    assert out["written"] == len(crops) and out["failed"] == 0
    assert all(p.stat().st_mtime_ns > 2 * 10**9 for p in crops)
    assert all(p.stat().st_mtime_ns == t for p, t in others.items())
    assert run_s41(_s41_args(data))["written"] == 0     # and then it is up to date


# ----------------------------------------------------------------------------- bag dataset
def test_bag_dataset_shapes_sampling_and_label_aug(data):
    hpa = data["hpa"]
    df = pd.read_csv(hpa / "train_all.csv", dtype={"ID": str, "Label": str})
    index = pd.read_csv(hpa / "cells_32.csv", dtype={"ID": str})
    ds = BagDataset(df, hpa / "cells_32", index, cells_per_image=16, cell_size=32, augment=True, seed=1)
    assert ds.n_without_cells == 2 and len(ds) == len(df) - 2 and "img06" not in ds.ids
    item = ds[0]
    assert item["image"].shape == (16, 4, 32, 32) and item["image"].dtype == torch.float32
    assert item["label"].shape == (NUM_CLASSES,) and item["label"][14] == 1 and item["id"] == ds.ids[0]
    assert set(item["cell_ids"].tolist()) <= set(ds.cells[0].tolist())      # with replacement (< 16 cells)
    ds.set_epoch(1)
    a = ds[0]["image"]
    ds.set_epoch(2)
    assert not torch.equal(a, ds[0]["image"])                                 # fresh draws each epoch
    ds.set_epoch(1)
    assert torch.equal(a, ds[0]["image"])                                     # ... reproducible
    few = BagDataset(df, hpa / "cells_32", index, cells_per_image=2, cell_size=16, augment=False)
    ids = few[0]["cell_ids"].tolist()
    assert len(set(ids)) == 2 and few[0]["image"].shape == (2, 4, 16, 16)    # no replacement; resized
    assert torch.equal(few[0]["image"], few[0]["image"])
    neg = BagDataset(df, hpa / "cells_32", index, 16, 32, True,
                     label_aug=LabelAugment(1.0, 0.0, 0.0, (0.6, 1.1)))
    stack, label, _ = neg.load_bag(1, neg.rng(1))
    plain, _, _ = BagDataset(df, hpa / "cells_32", index, 16, 32, True).load_bag(1, neg.rng(1))
    assert label.tolist() == [float(c == NEGATIVE) for c in range(NUM_CLASSES)]
    assert stack[..., 1].max() <= 0.1 * plain[..., 1].max() + 1                # every cell's green dimmed
    np.testing.assert_array_equal(stack[..., 0], plain[..., 0])


# ----------------------------------------------------------------------------- MIL
class _Echo(nn.Module):
    """logits(x) = the first 19 values of each row: exposes which row a cell went to."""

    def logits(self, x):
        return x.flatten(1)[:, :NUM_CLASSES]


def test_bag_model_reshape_round_trip():
    bs, n = 3, 16
    x = torch.arange(bs * n, dtype=torch.float32).view(bs, n, 1, 1, 1).expand(bs, n, 4, 8, 8).clone()
    model = BagModel(_Echo(), HEAD, chunk=5, pseudo_w=None)
    out = model({"image": x})
    assert out["cell_logits"].shape == (bs, n, NUM_CLASSES) and out["logits"].shape == (bs, NUM_CLASSES)
    expect = torch.arange(bs * n, dtype=torch.float32).view(bs, n, 1).expand(bs, n, NUM_CLASSES)
    torch.testing.assert_close(out["cell_logits"], expect)                   # cell i of bag b <-> row b*16+i
    torch.testing.assert_close(out["logits"][:, 0], torch.tensor([15.0, 31.0, 47.0]))
    with torch.no_grad():                                                     # chunked inference, same result
        torch.testing.assert_close(model({"image": x})["cell_logits"], expect)
    assert model({"image": x[:1, :7]})["cell_logits"].shape == (1, 7, NUM_CLASSES)  # any N


def test_mil_loss_equals_hand_computed_value():
    cell = torch.tensor([[[0.0, 2.0], [1.0, -1.0]]])      # 1 bag, 2 cells, 2 classes
    target = torch.tensor([[1.0, 0.0]])

    def sp(v):  # softplus: BCE-with-logits(z, 1) = sp(-z), (z, 0) = sp(z)
        return math.log1p(math.exp(v))

    bce_max = (sp(-1.0) + sp(2.0)) / 2                     # max over cells: [1, 2]
    bce_mean = (sp(-0.5) + sp(0.5)) / 2                    # mean over cells: [0.5, 0.5]
    expected = (4 * bce_max + 1 * bce_mean) / 5
    head = models.mil_head(MIL)
    assert head == HEAD
    assert mil_loss(cell, target, "max", 4.0, 1.0, 4, 5.0).item() == pytest.approx(expected, rel=1e-6)
    assert head.loss(cell, target).item() == pytest.approx(expected, rel=1e-6)
    bag = torch.randn(2, 3, 4, 8, 8)
    label = (torch.rand(2, NUM_CLASSES) > 0.5).float()
    out = BagModel(_Echo(), head, chunk=256, pseudo_w=None)({"image": bag, "label": label})
    torch.testing.assert_close(out["loss"], head.loss(out["cell_logits"], label))
    torch.testing.assert_close(out["logits"], head.pool(out["cell_logits"]))
    assert mil_loss(cell, target, "max", 1, 0, 4, 5.0).item() == pytest.approx(bce_max, rel=1e-6)


def test_pseudo_w_is_read_only_when_bags_carry_targets():
    """An older run's config without PSEUDO_W still builds and scores; training on pseudo-labels
    without it stops naming the key (no fallback weight in common/)."""
    bag, label = torch.randn(1, 3, 4, 8, 8), torch.zeros(1, NUM_CLASSES)
    model = BagModel(_Echo(), HEAD, chunk=256, pseudo_w=None)
    assert model({"image": bag, "label": label})["loss"].ndim == 0
    targets = {"cell_target": torch.full((1, 3, NUM_CLASSES), 0.5), "cell_has_target": torch.ones(1, 3)}
    with pytest.raises(KeyError, match="PSEUDO_W"):
        model({"image": bag, "label": label, **targets})
    out = BagModel(_Echo(), HEAD, chunk=256, pseudo_w=0.0)({"image": bag, "label": label, **targets})
    torch.testing.assert_close(out["loss"], model({"image": bag, "label": label})["loss"])
    # build_model reads the config once: PSEUDO_W when the config has it, else None
    p2 = dict(MIL, PIPELINE=2, MODEL_NAME="test_resnet", PRETRAINED=False, PRETRAINED_FILE="", DROPOUT=0.5,
              MSD_SAMPLES=1)
    old_run, new_run = models.build_model(p2), models.build_model({**p2, "PSEUDO_W": 2.0, "MIL_CHUNK": 7})
    assert (old_run.pseudo_w, old_run.chunk, old_run.mil) == (None, 256, HEAD)
    assert (new_run.pseudo_w, new_run.chunk) == (2.0, 7)


def test_pools():
    x = torch.randn(2, 5, NUM_CLASSES)
    torch.testing.assert_close(pool_cells(x, "topk", k=1, r=5.0), x.amax(1))
    torch.testing.assert_close(pool_cells(x, "topk", k=99, r=5.0), x.mean(1))
    torch.testing.assert_close(pool_cells(x, "lse", k=4, r=1e4), x.amax(1), atol=1e-3, rtol=0)
    torch.testing.assert_close(pool_cells(x, "lse", k=4, r=1e-2), x.mean(1), atol=3e-2, rtol=0)
    with pytest.raises(ValueError, match="MIL_POOL 'median'"):
        MILHead("median", w_max=4.0, w_mean=1.0, topk=4, lse_r=5.0)
    with pytest.raises(ValueError, match="MIL_POOL 'median'"):
        models.mil_head({**MIL, "MIL_POOL": "Median"})


# ----------------------------------------------------------------------------- S4.2
@pytest.mark.slow
def test_s42_two_epoch_cpu_run_lowers_loss(data, tmp_path):
    from common.models.checkpoints import load_checkpoint

    crops = run_s41(_s41_args(data, size=64))
    assert crops["failed"] == 0
    args = ["--HPA512_DIR", str(data["hpa"]), "--TRAIN_CSV", str(data["hpa"] / "train_all.csv"),
            "--COMPETITION_DIR", str(data["comp"]), "--OUTPUT_DIR", str(tmp_path), "--FOLD", "0",
            "--CELL_SIZE", "64", "--MODEL_NAME", "test_convnext", "--PRETRAINED", "false",
            "--EPOCHS", "2", "--BATCH_SIZE", "2", "--LR", "3e-3", "--WARMUP_EPOCHS", "0",
            "--NUM_WORKERS", "0", "--DEVICE", "cpu", "--DROPOUT", "0.0"]
    result = run_s42(args)
    out = tmp_path / "p2_test_convnext_64_max" / "fold0"
    hist = pd.read_csv(out / "summary.csv")
    assert len(hist) == 2
    assert hist["train_loss"].iloc[1] < hist["train_loss"].iloc[0]
    for col in ("val_mAP", "val_loss", "cell_mAP_strict", "cell_mAP_lenient"):
        assert col in hist.columns and hist[col].notna().all()
    saved = json.loads((out / "config.json").read_text())
    assert saved["PIPELINE"] == 2 and saved["CELL_SIZE"] == 64 and saved["CROP_MARGIN"] == S41_MARGIN
    model, cfg = load_checkpoint(out / "best.pth", "cpu")
    assert isinstance(model, BagModel) and result["best_epoch"] in (1, 2)
    with torch.no_grad():
        assert model({"image": torch.zeros(1, 5, 4, 64, 64)})["cell_logits"].shape == (1, 5, NUM_CLASSES)
    # the same SEED gives the same run: weight init, bags, augmentations and dropout are all seeded
    torch.manual_seed(12345)                      # whatever the global RNG holds before the run
    run_s42(args + ["--OUTPUT_DIR", str(tmp_path / "again"), "--EPOCHS", "1"])
    run_s42(args + ["--OUTPUT_DIR", str(tmp_path / "again2"), "--EPOCHS", "1"])
    a = torch.load(tmp_path / "again" / "p2_test_convnext_64_max" / "fold0" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "again2" / "p2_test_convnext_64_max" / "fold0" / "last.pth", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_s42_trains_and_validates_images_named_na_and_nan(tmp_path, capsys):
    """IDs "NA" / "nan" stay strings in train_all.csv, the crop index and train_cells.csv (issue 25)."""
    d = make_data(tmp_path / "d")
    names = {"img00": "nan", "img02": "NA"}   # fold 0 (validation), fold 1 (training)
    for old, new in names.items():
        for f in [*d["hpa"].rglob(f"{old}*"), *d["comp"].rglob(f"{old}*")]:
            f.rename(f.with_name(f.name.replace(old, new)))
    for csv in (d["hpa"] / "train_all.csv", d["comp"] / "train_cells.csv"):
        text = csv.read_text()
        for old, new in names.items():
            text = text.replace(f"{old},", f"{new},")
        csv.write_text(text)
    run_s41(_s41_args(d))
    run_s42(["--HPA512_DIR", str(d["hpa"]), "--TRAIN_CSV", str(d["hpa"] / "train_all.csv"),
             "--COMPETITION_DIR", str(d["comp"]), "--OUTPUT_DIR", str(tmp_path / "out"), "--FOLD", "0",
             "--CELL_SIZE", "32", "--MODEL_NAME", "test_convnext", "--PRETRAINED", "false", "--EPOCHS", "1",
             "--BATCH_SIZE", "2", "--MAX_TRAIN_STEPS", "1", "--NUM_WORKERS", "0", "--DEVICE", "cpu"])
    out = capsys.readouterr().out
    # training: fold 1 = images 2-7, less 5 (no mask) and 6 (no cells) -> 4 bags, "NA" (image 2) among them
    assert "S4.2: 4 training bags (2 images without cells left out), 2 validation bags (0 without" in out
    assert "cell-level validation on" in out and "true cells of 2 images" in out   # "nan" and img01
    oof = pd.read_csv(tmp_path / "out" / "p2_test_convnext_32_max" / "fold0" / "oof_cells.csv",
                      dtype={"ID": str}, keep_default_na=False)
    assert set(oof["ID"]) == {"nan", "img01"}


def test_s41_without_originals_crops_from_the_copies_says_so_and_records_it(data, tmp_path, capsys):
    """No competition data: S4.1 crops from S2's resized copies with a warning and records FROM_ORIGINAL
    false in cells_<S>.json; S4.2 says so and saves it; S5's run line says where its crops come from."""
    from common.predict import predict

    hpa = tmp_path / "hpa-512"
    shutil.copytree(data["hpa"], hpa, ignore=shutil.ignore_patterns("cells_*", "s41_*"))
    d = dict(data, hpa=hpa, comp=tmp_path / "no_competition_data")
    capsys.readouterr()
    run_s41(_s41_args(d))
    out = capsys.readouterr().out
    assert ("S4.1: warning: cropping from S2's resized copies (HPA512_DIR), recorded as FROM_ORIGINAL "
            "false in cells_32.json (S4.2 and S5 crop the same way): the original images "
            f"({d['comp'] / 'train'}): not found (put the competition data there to crop from the "
            "originals)") in out
    assert json.loads((hpa / "cells_32.json").read_text())["FROM_ORIGINAL"] is False
    lab, _ = images.load_masks(hpa / "train_cell_mask" / "img01.npz")              # a competition image
    c = cells.cell_ids(lab)[0]
    copy = images.read_rgby(hpa / "train" / "img01.png")
    np.testing.assert_array_equal(images.read_rgby(crop_path(hpa / "cells_32", "img01", c)),
                                  cells.crop_cell(copy, lab, c, 32, S41_MARGIN))
    run_s42(["--HPA512_DIR", str(hpa), "--TRAIN_CSV", str(hpa / "train_all.csv"), "--COMPETITION_DIR",
             str(d["comp"]), "--OUTPUT_DIR", str(tmp_path / "out"), "--FOLD", "-1", "--CELL_SIZE", "32",
             "--MODEL_NAME", "test_convnext", "--PRETRAINED", "false", "--EPOCHS", "1", "--BATCH_SIZE", "2",
             "--MAX_TRAIN_STEPS", "1", "--NUM_WORKERS", "0", "--DEVICE", "cpu"])
    assert ("S4.2: the crops of cells_32.json: from S2's resized copies (no originals at S4.1) "
            "(FROM_ORIGINAL False)") in capsys.readouterr().out
    run = tmp_path / "out" / "p2_test_convnext_32_max" / "all"
    assert json.loads((run / "config.json").read_text())["FROM_ORIGINAL"] is False
    p = predict.RunPredictor(run, "cpu")
    assert not p.from_original and "crop @ 32px from the working-size images" in repr(p)
