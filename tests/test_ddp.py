"""Exact DDP under torchrun with 2 gloo processes on CPU: the logged validation is the saved
model's, kill + resume is bit-identical to an uninterrupted run, an extra metric as MONITOR."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_s4 import _s41_args, make_data, run_s41
from toy_data import make_toy_dataset

from common.competition import metric
from common.data.datasets import ImageDataset, split_fold
from common.models import checkpoints

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--MODEL_NAME", "resnet10t", "--PRETRAINED", "false", "--IMAGE_SIZE", "32", "--BATCH_SIZE", "2",
        "--NUM_WORKERS", "0", "--DEVICE", "cpu", "--WARMUP_EPOCHS", "0.5", "--EMA_DECAY", "0.5",
        "--EPOCHS", "3", "--LR", "3e-3", "--CACHE_GB", "0", "--LOSS", "bce"]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script: str, args: list[str], cwd: Path, **env_extra) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **env_extra}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(ROOT / script), *args]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def p1(tmp_path_factory):
    """An uninterrupted 3-epoch DDP run of S3 and the same run killed after epoch 1, then resumed."""
    root = tmp_path_factory.mktemp("ddp")
    data = root / "data"
    make_toy_dataset(data, n=16, size=40, seed=1)
    common = ["--HPA512_DIR", str(data), "--OUTPUT_DIR", str(root), *TINY]
    full = torchrun("S3_train_pipeline1.py", [*common, "--RUN_NAME", "full"], root)
    torchrun("S3_train_pipeline1.py", [*common, "--RUN_NAME", "cut"], root, HPA_STOP_AFTER_EPOCH="1")
    cut_epoch = torch.load(root / "cut" / "fold0" / "last.pth", weights_only=True)["epoch"]
    resumed = torchrun("S3_train_pipeline1.py", [*common, "--RUN_NAME", "cut", "--RESUME", "true"], root)
    return dict(root=root, data=data, full=full, resumed=resumed, cut_epoch=cut_epoch)


def _rescore(ckpt: Path, data: Path) -> tuple[float, float]:
    """(val_loss, val_mAP) of a checkpoint on fold 0, in one process, as S3 splits it."""
    model, cfg = checkpoints.load_checkpoint(ckpt)
    _, val_df = split_fold(pd.read_csv(data / "train_all.csv"), cfg, data / "train_all.csv", "S3",
                           val_external=cfg["VAL_EXTERNAL"])
    ds = ImageDataset(val_df, data / "train", image_size=cfg["IMAGE_SIZE"], seed=cfg["SEED"])
    probs, labels, losses = [], [], []
    with torch.no_grad():
        for i in range(len(ds)):
            item = ds[i]
            out = model({"image": item["image"][None], "label": item["label"][None]})
            probs.append(torch.sigmoid(out["logits"][0]).numpy())
            labels.append(item["label"].numpy())
            losses.append(float(out["loss"]))
    return float(np.mean(losses)), metric.image_level_map(np.stack(labels) > 0.5, np.stack(probs))[0]


def test_ddp_logged_validation_equals_rescoring_best(p1):
    run = p1["root"] / "full" / "fold0"
    best = torch.load(run / "best.pth", weights_only=True)
    summary = pd.read_csv(run / "summary.csv").set_index("epoch")
    loss, m = _rescore(run / "best.pth", p1["data"])
    # BCE is a mean over samples: one image at a time gives the same val_loss
    assert summary.loc[best["epoch"], "val_mAP"] == pytest.approx(m, abs=1e-6)
    assert summary.loc[best["epoch"], "val_loss"] == pytest.approx(loss, rel=1e-4)
    assert p1["full"].stdout.count("S3 done") == 1  # rank 0 only


def test_ddp_kill_and_resume_is_bit_identical(p1):
    assert p1["cut_epoch"] == 1 and "resumed from" in p1["resumed"].stdout + p1["resumed"].stderr
    a = torch.load(p1["root"] / "full" / "fold0" / "last.pth", weights_only=True)
    b = torch.load(p1["root"] / "cut" / "fold0" / "last.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3 and len(a["rng_ranks"]) == 2
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        differ = [k for k in a[key] if not torch.equal(a[key][k], b[key][k])]
        assert not differ, (key, differ[:5])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [r["val_mAP"] for r in a["history"]] == [r["val_mAP"] for r in b["history"]]


def test_ddp_cell_metric_as_monitor(tmp_path):
    d = make_data(tmp_path / "s4")
    assert run_s41(_s41_args(d, size=32))["failed"] == 0
    args = ["--HPA512_DIR", str(d["hpa"]), "--TRAIN_CSV", str(d["hpa"] / "train_all.csv"),
            "--COMPETITION_DIR", str(d["comp"]), "--OUTPUT_DIR", str(tmp_path), "--RUN_NAME", "r",
            "--FOLD", "0", "--CELL_SIZE", "32", "--CELLS_PER_IMAGE", "4", "--MODEL_NAME", "test_convnext",
            "--PRETRAINED", "false", "--EPOCHS", "3", "--BATCH_SIZE", "1", "--LR", "3e-3",
            "--WARMUP_EPOCHS", "0", "--NUM_WORKERS", "0", "--DEVICE", "cpu", "--MONITOR", "cell_mAP_strict"]
    p = torchrun("S4.2_train_pipeline2.py", args, tmp_path)
    done = [line for line in p.stdout.splitlines() if line.startswith("S4.2 done")]
    assert len(done) == 1 and "cell_mAP_strict" in done[0]
    summary = pd.read_csv(tmp_path / "r" / "fold0" / "summary.csv")
    best = torch.load(tmp_path / "r" / "fold0" / "best.pth", weights_only=True)
    expect = int(summary.loc[summary["cell_mAP_strict"].idxmax(), "epoch"])  # first maximum
    assert best["epoch"] == best["best_epoch"] == expect
    assert best["best_metric"] == pytest.approx(summary["cell_mAP_strict"].max())
