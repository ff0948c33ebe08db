"""Cell pooling (common/models/cellpool.py, datasets.CellPoolDataset) and the self-training round
(tools/make_pseudo_labels.py, bag_datasets.PseudoBagDataset, the pseudo-label loss of common/models/mil.py).

* cellpool scoring equals the masked global-average pooling computed by hand (cv2 INTER_AREA masks);
* a one-cell image (the cell is the whole image) gives the plain image prediction;
* S3 VARIANT=cellpool trains, and its cell scores are what cellpool scoring reads;
* pseudo-labels of an image never come from a run that trained on it.
"""
from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import load_script
from toy_data import make_toy_dataset

from common import fov, images, tta
from common.constants import NUM_CLASSES
from common.data import augment
from common.data.bag_datasets import TARGET_COLS, BagDataset, PseudoBagDataset, crop_path, read_pseudo_labels
from common.data.datasets import CellPoolDataset
from common.models import cellpool, checkpoints, models
from common.models.mil import BagModel
from common.predict import predict, views
from common.resize import resize_image

torch.set_num_threads(1)
P1 = dict(PIPELINE=1, MODEL_NAME="test_resnet", PRETRAINED=False, PRETRAINED_FILE="", IMAGE_SIZE=128,
          VARIANT="masked", LOSS="bce", DROPOUT=0.5, MSD_SAMPLES=5, SEED=0)


def _checkpoint(path, cfg=P1):
    """A checkpoint whose saved config is ``cfg`` (the model built with P1's constants where it lacks one)."""
    torch.manual_seed(0)
    model = models.build_model({**P1, **cfg})
    with torch.no_grad():  # a head with visible spread, so the test can fail
        model.classifier.head.weight.normal_(0, 1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "config": dict(cfg)}, path)
    return path


def _toy_image(seed=0, side=256):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (side, side, 4), dtype=np.uint8)
    labels = np.zeros((side, side), np.uint16)
    labels[10:90, 20:70] = 1
    labels[100:250, 100:180] = 2
    yy, xx = np.mgrid[:side, :side]
    labels[(yy - 60) ** 2 + (xx - 190) ** 2 < 40 ** 2] = 3
    labels[200:230, 5:40] = 4
    return image, labels


def test_cellpool_equals_masked_gap_by_hand(tmp_path):
    pred = predict.RunPredictor(_checkpoint(tmp_path / "r" / "fold0" / "best.pth"), "cpu", tta=4,
                                view=views.ViewChoice("cellpool"))
    image, labels = _toy_image()
    ids = [1, 2, 3, 4]
    cell_p, image_p = pred.predict(fov.FieldOfView.of(image, labels, ids))
    clf = pred.model.classifier
    x = augment.normalize(resize_image(image, 128)[None], "competition")
    want = np.zeros((len(ids), NUM_CLASSES))
    with torch.no_grad():
        for k in range(4):
            fmap = clf.backbone.forward_features(tta.dihedral(x, k))[0]          # (F, 4, 4)
            assert fmap.shape[-2:] == (4, 4)
            for i, c in enumerate(ids):
                mask = tta.dihedral(torch.from_numpy((labels == c).astype(np.float32)), k).numpy()
                w = torch.from_numpy(cv2.resize(mask, (4, 4), interpolation=cv2.INTER_AREA))
                gap = (fmap * w).sum((-1, -2)) / w.sum()
                want[i] += torch.sigmoid(clf.head(gap)).numpy() / 4
    np.testing.assert_allclose(cell_p, want, atol=1e-5)
    assert np.abs(cell_p[0] - cell_p[1]).max() > 1e-3  # cells really differ
    # the image prediction of the same pass is the plain one of the masked scorer
    plain = predict.RunPredictor(tmp_path / "r" / "fold0", "cpu", tta=4)
    assert plain.variant == "masked"
    np.testing.assert_allclose(image_p, plain.predict(fov.FieldOfView.of(image, labels, ids))[1], atol=1e-5)


@pytest.mark.parametrize("stride", [0, 16])
def test_one_cell_image_gives_the_image_prediction(tmp_path, stride):
    ckpt = _checkpoint(tmp_path / "r" / "fold0" / "best.pth")
    pred = predict.RunPredictor(ckpt, "cpu", tta=2, view=views.ViewChoice("cellpool", stride))
    image, _ = _toy_image(1)
    whole = np.ones(image.shape[:2], np.uint16)
    f = fov.FieldOfView.of(image, whole)
    cell_p, image_p = pred.predict(f)
    plain = predict.RunPredictor(ckpt, "cpu", tta=2, view=views.ViewChoice("masked"))
    np.testing.assert_allclose(image_p, plain.predict(f)[1], atol=1e-5)  # the run's own
    x = augment.normalize(resize_image(image, 128)[None], "competition")
    with torch.no_grad():
        ref = torch.stack([torch.sigmoid(pred.model.classifier.logits(tta.dihedral(x, k)))[0]
                           for k in range(2)]).mean(0).numpy()
        grid = pred.model.classifier.backbone.forward_features(x).shape[-1]
    assert grid == (8 if stride == 16 else 4)
    np.testing.assert_allclose(cell_p[0], ref, atol=1e-5)
    if stride == 0:
        np.testing.assert_allclose(cell_p[0], image_p, atol=1e-6)
    else:  # the dilated model is another model: its whole-image score differs from the run's own
        assert np.abs(cell_p[0] - image_p).max() > 1e-4


def test_views_reach_the_run_through_one_forward(tmp_path):
    """Every view's passes go through RunPredictor.forward (TTA, AMP, the device: one place), the cell-pool
    view's own pooling and its stride override's image pass included; the crop view pools the cells with
    the run's own MIL head (BagModel keeps no copy of its constants)."""
    ckpt = _checkpoint(tmp_path / "r" / "fold0" / "best.pth")
    image, labels = _toy_image(2)
    for variant, stride in (("masked", 0), ("center_cells", 0), ("cellpool", 0), ("cellpool", 16)):
        pred = predict.RunPredictor(ckpt, "cpu", tta=2, view=views.ViewChoice(variant, stride))
        calls, forward = [], pred.forward
        pred.forward = lambda x, fn=None, calls=calls, forward=forward: calls.append(len(x)) or forward(x, fn)
        pred.predict(fov.FieldOfView.of(image, labels, [1, 2]))
        assert calls == ([1, 1] if stride else [1] if variant == "cellpool" else [2, 1]), (variant, calls)
    mil = dict(MIL_POOL="topk", MIL_W_MAX=4.0, MIL_W_MEAN=1.0, MIL_TOPK=2, MIL_LSE_R=5.0, MIL_CHUNK=256)
    p2 = _checkpoint(tmp_path / "p2" / "fold0" / "best.pth",
                     dict(P1, PIPELINE=2, **mil, CELL_SIZE=32, CROP_MARGIN=0.05, FROM_ORIGINAL=False))
    run = predict.RunPredictor(p2, "cpu", tta=1)
    assert run.variant == "crop" and not hasattr(run.model, "pool")
    f = fov.FieldOfView.of(image, labels, [1, 2, 3])
    _, image_p = run.predict(f)
    logits = torch.from_numpy(run.score_views(run.prepare(f))[1])
    np.testing.assert_allclose(image_p, torch.sigmoid(run.model.mil.pool(logits[None])[0]).numpy(), atol=1e-6)


def test_cell_weights_are_area_fractions():
    rng = np.random.default_rng(0)
    lab = torch.from_numpy(rng.integers(0, 5, (2, 32, 32)))
    ids = torch.tensor([[1, 4, 9], [2, 2, 0]])  # 9 is absent -> uniform (the whole image)
    w = cellpool.cell_weights(lab, ids, (4, 4))
    assert w.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(w.sum((-1, -2)).numpy(), 1.0, atol=1e-6)
    for b in range(2):
        for n in range(3):
            c = int(ids[b, n])
            onehot = (lab[b] == c).float()[None, None]
            ref = F.adaptive_avg_pool2d(onehot, 4)[0, 0] if onehot.sum() else torch.ones(4, 4)
            np.testing.assert_allclose(w[b, n].numpy(), (ref / ref.sum()).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="cell_weights"):
        cellpool.cell_weights(lab[0], ids, (4, 4))


def test_a_checkpoint_without_its_variant_is_named(tmp_path):
    cfg = {k: v for k, v in P1.items() if k != "VARIANT"}
    ckpt = _checkpoint(tmp_path / "r" / "fold0" / "best.pth", cfg)
    with pytest.raises(KeyError, match=r"best\.pth: the checkpoint's config has no 'VARIANT'"):
        predict.RunPredictor(ckpt, "cpu")
    # the model itself depends on VARIANT (cellpool or not): no test-time view makes up for it
    with pytest.raises(KeyError, match=r"best\.pth: the checkpoint's config has no 'VARIANT'"):
        predict.RunPredictor(ckpt, "cpu", view=views.ViewChoice("center_cells"))
    cfg = {k: v for k, v in P1.items() if k != "IMAGE_SIZE"}
    ckpt = _checkpoint(tmp_path / "s" / "fold0" / "best.pth", cfg)
    with pytest.raises(KeyError, match=r"best\.pth: the checkpoint's config has no 'IMAGE_SIZE'"):
        predict.RunPredictor(ckpt, "cpu")


def test_output_stride_refused_clearly():
    clf = models.build_classifier(dict(P1))
    with pytest.raises(ValueError, match="output stride"):
        cellpool.set_output_stride(clf, 12)


# ----------------------------------------------------------------------------- cell-pool training
@pytest.fixture(scope="module")
def cell_data(tmp_path_factory):
    """The toy S2-like set plus a 2 x 2 grid of cells per image (the toy classes live in them)."""
    root = tmp_path_factory.mktemp("hpa512cp")
    df = make_toy_dataset(root, n=16, size=40, seed=1)
    lab = np.zeros((40, 40), np.uint16)
    for k in range(4):
        y0, x0 = (k // 2) * 20, (k % 2) * 20
        lab[y0 + 1:y0 + 19, x0 + 1:x0 + 19] = k + 1
    for iid in df["ID"]:
        images.save_masks(root / "train_cell_mask" / f"{iid}.npz", lab)
    return root, lab


def test_cellpool_training_step_and_scoring(cell_data, tmp_path):
    root, lab = cell_data
    s3 = load_script("S3_train_pipeline1.py")
    args = ["--HPA512_DIR", str(root), "--OUTPUT_DIR", str(tmp_path), "--EPOCHS", "1",
            "--VARIANT", "cellpool", "--MODEL_NAME", "resnet10t", "--PRETRAINED", "false",
            "--IMAGE_SIZE", "48", "--BATCH_SIZE", "4", "--NUM_WORKERS", "0", "--DEVICE", "cpu",
            "--WARMUP_EPOCHS", "0", "--CELLPOOL_CELLS", "3", "--CELLPOOL_STRIDE", "16", "--LR", "1e-2"]
    res = s3.main(args)
    run = tmp_path / "p1_resnet10t_48_cellpool_lovasz" / "fold0"
    assert (run / "best.pth").is_file() and "val_mAP" in res["metrics"]
    model, cfg = checkpoints.load_checkpoint(run / "best.pth")
    assert isinstance(model, cellpool.CellPoolModel) and cfg["CELLPOOL_STRIDE"] == 16
    init = models.new_model(dict(cfg, PRETRAINED=False))
    moved = [not torch.equal(a, b) for a, b in zip(init.state_dict().values(), model.state_dict().values())
             if a.is_floating_point()]
    assert any(moved)  # the optimizer took steps
    # cellpool scoring of the run (as trained) reads exactly the trained cell logits
    pred = predict.RunPredictor(run, "cpu", tta=1)
    assert pred.variant == "cellpool"
    image = images.read_rgby(root / "train" / "toy0000.png")
    cell_p, _ = pred.predict(fov.FieldOfView.of(image, lab))
    x = augment.normalize(resize_image(image, 48)[None], "competition")
    with torch.no_grad():
        ref = torch.sigmoid(model.cell_logits(x, torch.from_numpy(lab.astype(np.int64))[None],
                                              torch.tensor([[1, 2, 3, 4]])))[0].numpy()
        assert model.classifier.backbone.forward_features(x).shape[-1] == 3  # stride 16 at 48 px
    np.testing.assert_allclose(cell_p, ref, atol=1e-5)
    # a training batch: per-cell logits and the MIL loss
    ds = CellPoolDataset(pd.read_csv(root / "train_all.csv"), root / "train",
                         root / "train_cell_mask", cells_per_image=5, image_size=48)
    item = ds[0]
    assert item["cell_map"].shape == (48, 48) and set(item["cell_ids"].tolist()) <= {1, 2, 3, 4}
    with pytest.raises(FileNotFoundError, match="cell mask"):
        CellPoolDataset(pd.DataFrame({"ID": ["nope"], "Label": ["0"]}), root / "train",
                        root / "train_cell_mask", cells_per_image=5)

    # self-training from this FOLD=0 run: only fold-0 images get pseudo-labels (the tool end to end)
    tool = load_script("tools/make_pseudo_labels.py")
    out = tool.main(["--HPA512_DIR", str(root), "--COMPETITION_DIR", str(root), "--RUNS", str(run),
                     "--DEVICE", "cpu", "--OUT_CSV", str(tmp_path / "pl.csv"), "--TTA", "1"])
    pl = pd.read_csv(out, dtype={"ID": str})
    df = pd.read_csv(root / "train_all.csv", dtype={"ID": str})
    assert set(pl["ID"]) == set(df.loc[df["fold"] == 0, "ID"]) and (pl["fold"] == 0).all()
    assert len(pl) == 4 * (df["fold"] == 0).sum()


# ----------------------------------------------------------------------------- self-training
class _FakeRun:
    """A run of a given FOLD that records which images it scored (image pixel value = row number)."""

    def __init__(self, fold, value):
        self.cfg, self.pipeline, self.value, self.seen = {"FOLD": fold}, 1, value, []

    def predict(self, f):
        self.seen.append(int(f.image[0, 0, 0]))
        return np.full((len(f.ids), NUM_CLASSES), self.value, np.float32), np.zeros(NUM_CLASSES, np.float32)


def test_pseudo_labels_never_come_from_a_model_that_trained_on_the_image(tmp_path):
    n = 9
    df = pd.DataFrame({"ID": [f"im{i}" for i in range(n)], "Label": ["0|3"] * n,
                       "fold": [i % 3 for i in range(n)]})
    lab = np.zeros((16, 16), np.uint16)
    lab[2:8, 2:8], lab[9:14, 9:14] = 1, 2
    for i, iid in enumerate(df["ID"]):
        images.write_rgby(tmp_path / "train" / f"{iid}.png", np.full((16, 16, 4), i, np.uint8))
        images.save_masks(tmp_path / "mask" / f"{iid}.npz", lab)
    runs = [_FakeRun(0, 0.2), _FakeRun(1, 0.6), _FakeRun(0, 0.4), _FakeRun(-1, 0.9)]
    tool = load_script("tools/make_pseudo_labels.py")
    out = tool.make_pseudo_labels(df, runs, tmp_path / "train", tmp_path / "mask", normalize="none")
    for r in runs:  # a run of FOLD k trained on the rows with fold != k: it never scored one of those
        trained_on = set(np.flatnonzero(df["fold"] != r.cfg["FOLD"])) if r.cfg["FOLD"] >= 0 else set(range(n))
        assert not trained_on & set(r.seen)
    assert runs[3].seen == [] and sorted(runs[0].seen) == [0, 3, 6]
    assert set(out["fold"]) == {0, 1} and len(out) == 2 * 6  # fold 2 has no held-out run
    f0, f1 = out[out["fold"] == 0], out[out["fold"] == 1]
    np.testing.assert_allclose(f0[["t0", "t3"]].to_numpy(), 0.3, atol=1e-6)   # mean of 0.2 and 0.4
    np.testing.assert_allclose(f1[["t0", "t3"]].to_numpy(), 0.6, atol=1e-6)
    assert (out[[f"t{c}" for c in range(NUM_CLASSES) if c not in (0, 3)]].to_numpy() == 0).all()
    assert (f0["n_runs"] == 2).all()
    t = tool.soft_targets(np.array([[0.2, 0.5], [0.4, 0.1]]), np.array([1.0, 0.0]), "max")
    np.testing.assert_allclose(t, [[0.5, 0.0], [1.0, 0.0]])


def test_pseudo_bags_and_loss(tmp_path):
    ids = ["a", "b"]
    rows = []
    rng = np.random.default_rng(0)
    for iid in ids:
        for c in (1, 2, 3):
            images.write_rgby(crop_path(tmp_path, iid, c), rng.integers(0, 255, (16, 16, 4), dtype=np.uint8))
            rows.append({"ID": iid, "cell_id": c})
    index = pd.DataFrame(rows)
    df = pd.DataFrame({"ID": ids, "Label": ["0|3", "5"]})
    target = np.zeros(NUM_CLASSES, np.float32)
    target[3] = 0.7
    pl = pd.DataFrame([["a", 2, 0, 1, *target]],
                      columns=["ID", "cell_id", "fold", "n_runs", *TARGET_COLS])
    pl.to_csv(tmp_path / "pl.csv", index=False)
    table = read_pseudo_labels(tmp_path / "pl.csv")
    ds = PseudoBagDataset(df, tmp_path, index, cells_per_image=3, cell_size=16, augment=False,
                          pseudo=table)
    item = ds[0]
    has = item["cell_has_target"].numpy()
    assert has.sum() == (item["cell_ids"].numpy() == 2).sum() >= 1
    np.testing.assert_allclose(item["cell_target"][has > 0][:, 3].numpy(), 0.7)
    assert ds[1]["cell_has_target"].sum() == 0
    plain = BagDataset(df, tmp_path, index, cells_per_image=3, cell_size=16, augment=False)[0]
    assert torch.equal(plain["image"], item["image"])
    # the model adds PSEUDO_W x per-cell BCE on the cells with a target
    torch.manual_seed(0)
    mil_cfg = dict(MIL_POOL="max", MIL_W_MAX=4.0, MIL_W_MEAN=1.0, MIL_TOPK=4, MIL_LSE_R=5.0, MIL_CHUNK=256)
    model = BagModel(models.build_classifier(dict(P1, MSD_SAMPLES=1)), models.mil_head(mil_cfg),
                     chunk=256, pseudo_w=2.0)
    model.eval()
    batch = {k: v[None] for k, v in item.items() if isinstance(v, torch.Tensor)}
    with torch.no_grad():
        with_t = model(batch)
        without = model({k: v for k, v in batch.items() if not k.startswith("cell_")})
        bce = F.binary_cross_entropy_with_logits(with_t["cell_logits"][0], batch["cell_target"][0],
                                                 reduction="none").mean(-1)
        manual = (bce * batch["cell_has_target"][0]).sum() / batch["cell_has_target"][0].sum()
    assert float(with_t["loss"] - without["loss"]) == pytest.approx(2.0 * float(manual), rel=1e-5)
    bad = pl.copy()
    bad["t3"] = 1.5
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="bad.csv"):
        read_pseudo_labels(tmp_path / "bad.csv")


def test_cellpool_model_names_the_missing_constants():
    """No fallback values in common/: a config without S3's cell-pooling constants is refused by name,
    by build_model (the one reader of the config) before any network is built; the model classes
    take typed arguments."""
    mil = dict(MIL_POOL="max", MIL_W_MAX=4.0, MIL_W_MEAN=1.0, MIL_TOPK=4, MIL_LSE_R=5.0)
    with pytest.raises(KeyError, match="CELLPOOL_STRIDE"):
        models.build_model({**P1, "VARIANT": "cellpool", **mil})
    model = models.build_model({**P1, "VARIANT": "cellpool", **mil, "CELLPOOL_STRIDE": 0})
    assert isinstance(model, cellpool.CellPoolModel) and model.mil == models.mil_head(mil)
    typed = cellpool.CellPoolModel(models.build_classifier(P1), models.mil_head(mil), stride=0)
    assert typed.mil.mode == "max"
