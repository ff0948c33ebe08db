"""train.fit on tiny data on CPU: learning, outputs, checkpoints, exact resume after a kill."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch
from toy_data import make_toy_dataset

from common import config
from common.data import augment
from common.data.datasets import ImageDataset
from common.models import checkpoints, models
from common.training import train, train_state

torch.set_num_threads(1)

BASE = {"PIPELINE": 1, "MODEL_NAME": "resnet10t", "PRETRAINED": False, "PRETRAINED_FILE": "",
        "LOSS": "lovasz", "VARIANT": "masked", "DROPOUT": 0.5, "MSD_SAMPLES": 5,
        "EPOCHS": 3, "BATCH_SIZE": 8, "LR": 2e-3, "WEIGHT_DECAY": 1e-4, "OPTIMIZER": "adamw",
        "ADAM_EPS": 1e-8, "SCHEDULE": "cosine", "WARMUP_MULT": 10.0, "LR_STEP_EPOCHS": [4, 7, 10],
        "LR_STEP_VALUES": [3e-4, 1.5e-4, 7.5e-5, 3e-5], "WARMUP_EPOCHS": 0.5, "MIN_LR": 1e-5,
        "ACCUM_STEPS": 1, "EMA_DECAY": 0.0, "AMP": True, "NUM_WORKERS": 0, "SEED": 3, "DEVICE": "cpu",
        "RESUME": False, "OVERWRITE": False, "MONITOR": "val_mAP", "MAX_TRAIN_STEPS": 0, "VAL_EVERY": 1,
        "GRAD_CLIP": 0.0}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    df = make_toy_dataset(root, n=24, size=48, seed=0)
    return root, df


def _datasets(toy, aug: bool):
    root, df = toy
    tr, va = df[df.fold == 1], df[df.fold == 0]
    tfm = augment.build_transforms("masked", 48, True, 0.5, 0.3, 0.2) if aug else None
    lab = augment.LabelAugment(0.1, 0.1, 0.5, (0.6, 1.1)) if aug else None
    return (ImageDataset(tr, root / "train", tfm, lab, image_size=48, seed=5),
            ImageDataset(va, root / "train", image_size=48))


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    return models.build_model(cfg)


def test_fit_learns_and_writes_outputs(toy, tmp_path):
    cfg = {**BASE, "EPOCHS": 4, "LOSS": "bce", "LR": 3e-3, "WARMUP_EPOCHS": 0.0}
    tr, va = _datasets(toy, aug=False)
    calls = []

    def extra(model, device):
        calls.append(model.training)
        return {"cell_mAP": 0.5}

    res = train.fit(cfg, _model(cfg), tr, va, tmp_path, extra_metrics=extra)
    hist = res["history"]
    assert [r["epoch"] for r in hist] == [1, 2, 3, 4] and calls == [False] * 4
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    for name in ("best.pth", "last.pth", "config.json", "summary.csv", "train.log", "curves.png"):
        assert (tmp_path / name).is_file(), name
    df = pd.read_csv(tmp_path / "summary.csv")
    assert {"epoch", "lr", "train_loss", "val_loss", "val_mAP", "cell_mAP", "seconds"} <= set(df.columns)
    assert df.lr.iloc[-1] < df.lr.iloc[0]  # cosine decays
    ck = torch.load(tmp_path / "last.pth", map_location="cpu", weights_only=True)
    assert {"model", "config", "epoch", "optimizer", "scheduler", "scaler", "ema", "rng", "best_metric",
            "metrics"} <= set(ck)
    assert ck["epoch"] == 4 and ck["config"]["MODEL_NAME"] == "resnet10t"
    best = torch.load(tmp_path / "best.pth", map_location="cpu", weights_only=True)
    assert best["epoch"] == res["best_epoch"]
    assert best["metrics"]["val_mAP"] == pytest.approx(res["best_metric"])
    model, mcfg = checkpoints.load_checkpoint(tmp_path / "last.pth")
    assert model.loaded_weights == "model" and mcfg["LOSS"] == "bce"


def _final_weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_resume_after_kill_equals_uninterrupted(toy, tmp_path):
    cfg = {**BASE, "EMA_DECAY": 0.9, "ACCUM_STEPS": 2, "BATCH_SIZE": 4}
    tr, va = _datasets(toy, aug=True)
    train.fit(cfg, _model(cfg), tr, va, tmp_path / "full")

    def kill_at_2(model, device):
        if kill_at_2.epoch == 2:
            raise train.StopTraining
        kill_at_2.epoch += 1
        return {}

    kill_at_2.epoch = 1
    part = train.fit(cfg, _model(cfg), tr, va, tmp_path / "cut", extra_metrics=kill_at_2)
    assert part["stopped"] and part["last_epoch"] == 1
    assert _final_weights(tmp_path / "cut" / "last.pth")["epoch"] == 1
    # a resume starts from a *different* fresh model: everything must come from last.pth
    done = train.fit({**cfg, "RESUME": True}, _model(cfg, seed=99), tr, va, tmp_path / "cut")
    assert done["last_epoch"] == 3 and [r["epoch"] for r in done["history"]] == [1, 2, 3]
    a, b = _final_weights(tmp_path / "full" / "last.pth"), _final_weights(tmp_path / "cut" / "last.pth")
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    assert a["metrics"]["val_mAP"] == pytest.approx(b["metrics"]["val_mAP"])
    assert len(pd.read_csv(tmp_path / "cut" / "summary.csv")) == 3
    m, _ = checkpoints.load_checkpoint(tmp_path / "cut" / "best.pth")
    assert m.loaded_weights == "ema"
    # resuming a finished run does nothing more
    again = train.fit({**cfg, "RESUME": True}, _model(cfg), tr, va, tmp_path / "cut")
    assert again["last_epoch"] == 3


def test_fit_without_validation_and_step_cap(toy, tmp_path):
    cfg = {**BASE, "EPOCHS": 1, "MAX_TRAIN_STEPS": 1, "OPTIMIZER": "adam"}
    tr, _ = _datasets(toy, aug=False)
    res = train.fit(cfg, _model(cfg), tr, None, tmp_path)
    assert res["last_epoch"] == 1 and (tmp_path / "best.pth").is_file()
    assert _final_weights(tmp_path / "last.pth")["num_updates"] == 1
    with pytest.raises(SystemExit, match="^train.fit: --OPTIMIZER 'sgdx': must be one of 'adamw', 'adam'$"):
        train.fit({**cfg, "OPTIMIZER": "sgdx"}, _model(cfg), tr, None, tmp_path / "x")
    assert not (tmp_path / "x").exists()                              # at start: nothing written


def test_rng_state_round_trip():
    import random

    import numpy as np

    train_state.seed_everything(1)
    st = train_state.get_rng_state()
    a = (torch.rand(2), np.random.rand(2), random.random())
    train_state.set_rng_state(st)
    b = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_image_cache_gives_the_same_samples(toy):
    root, df = toy
    tfm = augment.build_transforms("masked", 32, True, 0.5, 0.5, 0.5)
    lab = augment.LabelAugment(0.3, 0.3, 0.5, (0.6, 1.1))
    plain = ImageDataset(df, root / "train", tfm, lab, image_size=32, seed=7)
    cached = ImageDataset(df, root / "train", tfm, lab, image_size=32, seed=7, cache_gb=1.0, cache_threads=2)
    assert plain.cache is None and cached.cache is not None
    assert cached.cache.shape == (len(df), 32, 32, 4) and cached.cache_bytes() == len(df) * 32 * 32 * 4
    for epoch in (1, 2):
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        for i in range(len(df)):
            a, b = plain[i], cached[i]
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    img = cached.load(0)
    img[:] = 0  # what an in-place augmentation would do: the cache must not change
    assert cached.load(0).any()
    # a budget smaller than the images: read from disk
    assert ImageDataset(df, root / "train", image_size=32, cache_gb=1e-6).cache is None


def test_val_every_validates_only_some_epochs(toy, tmp_path):
    cfg = {**BASE, "EPOCHS": 3, "VAL_EVERY": 2, "MAX_TRAIN_STEPS": 1, "LOSS": "bce"}
    tr, va = _datasets(toy, aug=False)
    calls = []

    def extra(model, device):
        calls.append(1)
        return {"cell_mAP_strict": 0.5}

    res = train.fit(cfg, _model(cfg), tr, va, tmp_path, extra_metrics=extra)
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert summary["epoch"].tolist() == [1, 2, 3]
    # epoch 2 (every 2nd) and epoch 3 (the last) are validated; epoch 1 is not
    assert summary["val_mAP"].isna().tolist() == [True, False, False]
    assert summary["cell_mAP_strict"].isna().tolist() == [True, False, False] and len(calls) == 2
    assert res["best_epoch"] in (2, 3) and (tmp_path / "best.pth").is_file()
    assert (tmp_path / "curves.png").is_file()
    with pytest.raises(SystemExit, match="--VAL_EVERY 0: must be a positive integer"):
        train.fit({**cfg, "VAL_EVERY": 0}, _model(cfg), tr, va, tmp_path / "bad")


def test_epochs_below_one_is_refused_at_start(toy, tmp_path):
    tr, va = _datasets(toy, aug=False)
    with pytest.raises(SystemExit, match="--EPOCHS 0: must be a positive integer"):
        train.fit({**BASE, "EPOCHS": 0}, _model(BASE), tr, va, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_resume_with_other_schedule_constants_is_refused(toy, tmp_path):
    cfg = {**BASE, "EPOCHS": 2, "MAX_TRAIN_STEPS": 1}
    tr, va = _datasets(toy, aug=False)

    def kill_in_epoch_2(model, device):
        kill_in_epoch_2.n += 1
        if kill_in_epoch_2.n == 2:
            raise train.StopTraining
        return {}

    kill_in_epoch_2.n = 0
    assert train.fit(cfg, _model(cfg), tr, va, tmp_path, extra_metrics=kill_in_epoch_2)["stopped"]
    with pytest.raises(SystemExit, match=r"EPOCHS: 2 -> 4.*LR: 0.002 -> 0.01"):
        train.fit({**cfg, "RESUME": True, "EPOCHS": 4, "LR": 1e-2}, _model(cfg), tr, va, tmp_path)
    with pytest.raises(SystemExit, match="MIN_LR"):
        train.fit({**cfg, "RESUME": True, "MIN_LR": 0.0}, _model(cfg), tr, va, tmp_path)
    assert torch.load(tmp_path / "last.pth", weights_only=True)["epoch"] == 1  # untouched
    assert train.fit({**cfg, "RESUME": True}, _model(cfg), tr, va, tmp_path)["last_epoch"] == 2


class _CtrlCAt(ImageDataset):
    """Raises KeyboardInterrupt (what Ctrl-C does) while loading a batch of epoch ``at``."""

    at = 2

    def __getitem__(self, i):
        if self.epoch == self.at:
            raise KeyboardInterrupt
        return super().__getitem__(i)


def test_ctrl_c_ends_with_one_line_on_last_pth(toy, tmp_path):
    root, df = toy
    tr = _CtrlCAt(df[df.fold == 1], root / "train", image_size=48)
    cfg = {**BASE, "MAX_TRAIN_STEPS": 1}
    with pytest.raises(SystemExit) as e:
        train.fit(cfg, _model(cfg), tr, None, tmp_path)
    assert e.value.code == 130 and e.value.__cause__ is None and e.value.__suppress_context__
    last = (tmp_path / "train.log").read_text().strip().splitlines()[-1]
    assert f"interrupted: {tmp_path / 'last.pth'} holds epoch 1; continue with --RESUME" in last


def test_temp_files_left_by_a_kill_are_removed_at_start(toy, tmp_path):
    tr, _ = _datasets(toy, aug=False)
    tmp_path.mkdir(exist_ok=True)
    stale = [tmp_path / ".last.pth.k1ll3d_x.tmp.pth", tmp_path / ".summary.csv.ab12cd34.tmp.csv"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    (tmp_path / ".keep").write_text("not ours")
    train.fit({**BASE, "EPOCHS": 1, "MAX_TRAIN_STEPS": 1}, _model(BASE), tr, None, tmp_path)
    assert not any(p.exists() for p in stale) and (tmp_path / ".keep").is_file()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_a_run_folder_with_other_constants_is_refused_unless_overwrite(toy, tmp_path):
    cfg = {**BASE, "EPOCHS": 1, "LOSS": "bce"}
    tr, va = _datasets(toy, aug=False)
    train.fit(cfg, _model(cfg), tr, va, tmp_path)
    with pytest.raises(SystemExit, match=r"other constants \(LR: 0.002 -> 0.001\)"):
        train.fit({**cfg, "LR": 1e-3}, _model(cfg), tr, va, tmp_path)
    # mechanics (workers, device) are no other run; OVERWRITE replaces the run
    train.fit({**cfg, "NUM_WORKERS": 0, "DEVICE": "cpu"}, _model(cfg), tr, va, tmp_path)
    res = train.fit({**cfg, "LR": 1e-3, "OVERWRITE": True}, _model(cfg), tr, va, tmp_path)
    assert res["last_epoch"] == 1 and config.load(tmp_path / "config.json")["LR"] == 1e-3


def test_best_is_slim_last_resumes_and_oof_is_written(toy, tmp_path):
    cfg = {**BASE, "EPOCHS": 2, "LOSS": "bce", "EMA_DECAY": 0.5}
    tr, va = _datasets(toy, aug=False)
    train.fit(cfg, _model(cfg), tr, va, tmp_path)
    best = torch.load(tmp_path / "best.pth", map_location="cpu", weights_only=True)
    last = torch.load(tmp_path / "last.pth", map_location="cpu", weights_only=True)
    assert not {"optimizer", "scheduler", "scaler", "rng", "history", "ema"} & set(best)
    assert {"optimizer", "scheduler", "rng", "ema"} <= set(last)
    assert (tmp_path / "best.pth").stat().st_size < 0.6 * (tmp_path / "last.pth").stat().st_size
    m, mcfg = checkpoints.load_checkpoint(tmp_path / "best.pth")  # what S5 does
    assert m.loaded_weights == "ema" and mcfg["MODEL_NAME"] == "resnet10t"
    oof = pd.read_csv(tmp_path / "oof.csv")
    assert len(oof) == len(va) and sorted(oof["ID"].astype(str)) == sorted(va.ids)
    assert {"y0", "p18"} <= set(oof.columns) and oof.filter(like="p").stack().between(0, 1).all()
    from conftest import load_script  # the OOF comparison tool reads it back

    runs = tmp_path / "runs" / "run" / "fold0"                          # this run alone, as its own tree
    runs.mkdir(parents=True)
    shutil.copy(tmp_path / "oof.csv", runs / "oof.csv")
    compare = load_script("tools/compare_oof.py")
    table = compare.main([str(tmp_path / "runs"), "--CSV", str(tmp_path / "t.csv")])
    row = table[table["fold"] == "fold0"].iloc[0]
    assert row["images"] == len(va) and 0 <= row["image_mAP"] <= 1 and (tmp_path / "t.csv").is_file()


def test_schedule_b_runs_the_fact_sheets_lr_per_epoch(toy, tmp_path):
    cfg = {**BASE, "EPOCHS": 4, "LOSS": "bce", "SCHEDULE": "B", "LR_STEP_EPOCHS": [1, 3],
           "LR_STEP_VALUES": [3e-4, 1.5e-4, 3e-5], "OPTIMIZER": "adam", "ADAM_EPS": 1e-5}
    tr, va = _datasets(toy, aug=False)
    train.fit(cfg, _model(cfg), tr, va, tmp_path)
    assert pd.read_csv(tmp_path / "summary.csv")["lr"].tolist() == [3e-4, 1.5e-4, 1.5e-4, 3e-5]
    last = torch.load(tmp_path / "last.pth", map_location="cpu", weights_only=True)
    assert last["optimizer"]["param_groups"][0]["eps"] == 1e-5
