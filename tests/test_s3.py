"""S3_train_pipeline1.py end to end on a tiny data set, and under torchrun with 2 gloo processes."""
from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from toy_data import make_toy_dataset

from common import constants, recipes
from common.data.datasets import split_fold
from common.models import checkpoints, models

ROOT = Path(__file__).resolve().parents[1]
S3 = importlib.import_module("S3_train_pipeline1")
TINY = ["--MODEL_NAME", "resnet10t", "--PRETRAINED", "false", "--IMAGE_SIZE", "48", "--BATCH_SIZE", "4",
        "--NUM_WORKERS", "0", "--DEVICE", "cpu", "--WARMUP_EPOCHS", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("hpa512")
    make_toy_dataset(root, n=16, size=40, seed=1)
    return root


def test_s3_main_writes_a_loadable_run(data, tmp_path):
    torch.set_num_threads(1)
    res = S3.main(["--HPA512_DIR", str(data), "--OUTPUT_DIR", str(tmp_path), "--EPOCHS", "2", "--VARIANT",
                   "center_cells", *TINY])
    run = tmp_path / "p1_resnet10t_48_center_cells_lovasz" / "fold0"
    assert Path(res["out_dir"]) == run and (run / "best.pth").is_file()
    saved = json.loads((run / "config.json").read_text())
    assert saved["PIPELINE"] == 1 and saved["VARIANT"] == "center_cells" and saved["FOLD"] == 0
    model, cfg = checkpoints.load_checkpoint(run / "best.pth")
    assert cfg["IMAGE_SIZE"] == 48 and isinstance(model, models.ImageModel)
    out = model({"image": torch.zeros(1, 4, 48, 48)})
    assert out["logits"].shape == (1, 19)


def test_s3_all_folds_and_bad_input(data, tmp_path):
    torch.set_num_threads(1)
    res = S3.main(["--HPA512_DIR", str(data), "--OUTPUT_DIR", str(tmp_path), "--EPOCHS", "1", "--FOLD", "-1",
                   "--RUN_NAME", "r", "--MAX_TRAIN_STEPS", "1", *TINY])
    assert Path(res["out_dir"]) == tmp_path / "r" / "all" and res["last_epoch"] == 1
    with pytest.raises(SystemExit, match="train_all.csv"):
        S3.main(["--HPA512_DIR", str(tmp_path / "nothing"), *TINY])
    with pytest.raises(SystemExit, match=r"--FOLD 7: .* folds present: \[0, 1\]"):
        S3.main(["--HPA512_DIR", str(data), "--OUTPUT_DIR", str(tmp_path), "--FOLD", "7", *TINY])


def test_one_fold_split_and_one_run_folder_for_s3_and_s42():
    """S3 and S4.2 split a table the same way (datasets.split_fold; S4.2 never validates on external
    images) and name a run folder the same way (constants.run_folder; recipes and S5 read it)."""
    df = pd.DataFrame({"ID": list("abcdef"), "fold": [0, 0, 1, 1, 0, 1], "is_ext": [0, 1, 0, 1, 0, 0]})
    cfg = {"FOLD": 0, "USE_EXTERNAL": True}
    tr, va = split_fold(df, cfg, "t.csv", "S3", val_external=False)
    assert list(tr["ID"]) == ["c", "d", "f"] and list(va["ID"]) == ["a", "e"]
    assert list(split_fold(df, cfg, "t.csv", "S3", val_external=True)[1]["ID"]) == ["a", "b", "e"]
    tr, va = split_fold(df, {**cfg, "USE_EXTERNAL": False}, "t.csv", "S4.2", val_external=False)
    assert list(tr["ID"]) == ["c", "f"] and list(va["ID"]) == ["a", "e"]
    tr, va = split_fold(df, {**cfg, "FOLD": -1}, "t.csv", "S4.2", val_external=False)
    assert va is None and list(tr["ID"]) == list("abcdef")
    with pytest.raises(SystemExit, match=r"S4.2: --FOLD 3: t.csv has no rows of that fold; folds present"):
        split_fold(df, {**cfg, "FOLD": 3}, "t.csv", "S4.2", val_external=False)
    assert constants.run_folder("r", 2) == "r/fold2" and constants.run_folder("r", -1) == "r/all"
    assert constants.run_of(Path("/runs/r/all/best.pth")) == "r/all"
    name = next(iter(recipes.RECIPES))
    c = recipes.RECIPES[name]["constants"]
    assert recipes.run_dir(name) == constants.run_folder(c["RUN_NAME"], c["FOLD"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_gloo_processes(data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(ROOT / "S3_train_pipeline1.py"),
           "--HPA512_DIR", str(data), "--OUTPUT_DIR", str(tmp_path), "--RUN_NAME", "ddp", "--EPOCHS", "2",
           "--EMA_DECAY", "0.5", *TINY]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    run = tmp_path / "ddp" / "fold0"
    ck = torch.load(run / "last.pth", map_location="cpu", weights_only=True)
    assert ck["epoch"] == 2 and not any(k.startswith("module.") for k in ck["model"])
    assert "device cpu x2" in (run / "train.log").read_text()
    model, _ = checkpoints.load_checkpoint(run / "last.pth")
    assert model.loaded_weights == "ema"
    assert model({"image": torch.zeros(1, 4, 48, 48)})["logits"].shape == (1, 19)
