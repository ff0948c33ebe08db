"""Issue 25, training side: a refused or failed start leaves the run folder as it was, one writer per
run folder, a full disk while saving is one line, IDs "NA" / "nan" train, checkpoint errors name the file."""
from __future__ import annotations

import builtins
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch
from toy_data import make_toy_dataset

from common import io
from common.models import checkpoints, models
from common.training import checkpoint_saver

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--MODEL_NAME", "resnet10t", "--PRETRAINED", "false", "--IMAGE_SIZE", "48", "--BATCH_SIZE", "4",
        "--NUM_WORKERS", "0", "--DEVICE", "cpu", "--WARMUP_EPOCHS", "0", "--MAX_TRAIN_STEPS", "1"]
torch.set_num_threads(1)


def s3(args):
    from conftest import load_script

    return load_script("S3_train_pipeline1.py").main(args)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("hpa512")
    make_toy_dataset(root, n=16, size=40, seed=1)
    return root


def _args(data, out, *more):
    return ["--HPA512_DIR", str(data), "--OUTPUT_DIR", str(out), "--RUN_NAME", "r", *TINY, *more]


def _refused(args) -> str:
    """The one-line message a start stops with."""
    with pytest.raises(SystemExit) as e:
        s3(args)
    msg = e.value.code
    assert isinstance(msg, str) and "\n" not in msg, msg  # a message: exit status 1, no traceback
    return msg


# ----------------------------------------------------------------------------- start checks
@pytest.mark.parametrize("more,expected", [
    (["--EPOCHS", "-1"], "S3: --EPOCHS -1: must be a positive integer"),
    (["--BATCH_SIZE", "0"], "S3: --BATCH_SIZE 0: must be a positive integer"),
    (["--ACCUM_STEPS", "0"], "S3: --ACCUM_STEPS 0: must be a positive integer"),
    (["--LR", "-1"], "S3: --LR -1.0: must be a finite number > 0"),
    (["--LR", "nan"], "S3: --LR nan: must be a finite number > 0"),
    (["--MIN_LR", "inf"], "S3: --MIN_LR inf: must be a finite number >= 0"),
    (["--WEIGHT_DECAY", "-0.1"], "S3: --WEIGHT_DECAY -0.1: must be a finite number >= 0"),
    (["--FOLD", "9"], "S3: --FOLD 9: {csv} has no rows of that fold; folds present: [0, 1] "
                      "(--FOLD -1 trains on everything)"),
])
def test_a_bad_constant_stops_the_start_with_one_line_and_writes_nothing(data, tmp_path, more, expected):
    msg = _refused(_args(data, tmp_path, *more))
    assert msg == expected.format(csv=data / "train_all.csv")
    assert not (tmp_path / "r").exists()  # no run folder, no config.json, no train.log


def test_a_failed_start_leaves_no_files_and_the_corrected_run_is_accepted(data, tmp_path):
    run = tmp_path / "r" / "all"
    for bad in (["--BATCH_SIZE", "0"], ["--LR", "nan"]):
        assert "must be" in _refused(_args(data, tmp_path, "--FOLD", "-1", "--EPOCHS", "1", *bad))
        assert not (run / "config.json").exists() and not (run / "train.log").exists()
    res = s3(_args(data, tmp_path, "--FOLD", "-1", "--EPOCHS", "1"))
    assert res["last_epoch"] == 1 and json.loads((run / "config.json").read_text())["LR"] == 3e-4


def test_the_message_is_one_line_on_stderr_and_exit_status_1(data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "S3_train_pipeline1.py"), *_args(data, tmp_path, "--LR", "nan")]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.stderr.strip().splitlines()[-1] == "S3: --LR nan: must be a finite number > 0"


# ----------------------------------------------------------------------------- refused resumes
@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """A finished 2-epoch run (no validation) to resume."""
    out = tmp_path_factory.mktemp("runs")
    s3(_args(data, out, "--FOLD", "-1", "--EPOCHS", "2"))
    return out / "r" / "all"


def _copy(run: Path, tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "o"
    shutil.copytree(run, out / "r" / "all")
    return out, out / "r" / "all"


def _untouched(run: Path, before: dict) -> bool:
    return _snapshot(run) == before


def _snapshot(run: Path) -> dict:
    return {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"}


def test_a_refused_resume_leaves_config_json_byte_identical(data, finished, tmp_path):
    out, run = _copy(finished, tmp_path)
    before = _snapshot(run)
    msg = _refused(_args(data, out, "--FOLD", "-1", "--EPOCHS", "5", "--RESUME", "true"))
    assert msg == (f"RESUME: {run / 'last.pth'} was trained with other schedule constants (EPOCHS: 2 -> 5); "
                   "restore them, or start a new run (another RUN_NAME or without --RESUME)")
    assert _untouched(run, before)  # config.json (and every other file) byte-identical
    msg = _refused(_args(data, out, "--FOLD", "-1", "--EPOCHS", "2", "--LR", "1e-3"))  # a fresh start
    assert msg.startswith(f"{run} holds a run with other constants (LR: 0.0003 -> 0.001")
    assert _untouched(run, before)
    # the right command is still accepted
    assert s3(_args(data, out, "--FOLD", "-1", "--EPOCHS", "2", "--RESUME", "true"))["last_epoch"] == 2


def _evil_pickle(path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo evil",))

    torch.save({"model": Evil()}, path)


def test_an_unreadable_last_pth_is_one_line_naming_it(data, finished, tmp_path):
    out, run = _copy(finished, tmp_path)
    last = run / "last.pth"
    full = last.read_bytes()
    last.write_bytes(full[: len(full) // 2])  # a copy cut short
    before = _snapshot(run)
    msg = _refused(_args(data, out, "--FOLD", "-1", "--EPOCHS", "2", "--RESUME", "true"))
    assert msg.startswith(f"RESUME: {last} cannot be read (truncated or corrupt: ")
    assert msg.endswith("): remove it to start over, or restore it") and _untouched(run, before)
    _evil_pickle(last)
    before = _snapshot(run)
    msg = _refused(_args(data, out, "--FOLD", "-1", "--EPOCHS", "2", "--RESUME", "true"))
    assert msg.startswith(f"RESUME: {last}: holds objects beyond tensors and plain values (")
    assert msg.endswith("loading it with weights_only=False would run code from the file: do not, "
                        "unless you made the file yourself")
    assert "likely succeed" not in msg and _untouched(run, before)


def _ten_classes(ckpt: dict) -> dict:
    """The checkpoint of a model with a 10-class head."""
    for key in ("model", "ema"):
        if ckpt.get(key):
            sd = ckpt[key]
            sd["classifier.head.weight"] = torch.zeros(10, sd["classifier.head.weight"].shape[1])
            sd["classifier.head.bias"] = torch.zeros(10)
    return ckpt


def test_a_checkpoint_with_10_classes_is_one_line_naming_the_file(data, finished, tmp_path):
    out, run = _copy(finished, tmp_path)
    last, best = run / "last.pth", run / "best.pth"
    torch.save(_ten_classes(torch.load(last, weights_only=True)), last)
    torch.save(_ten_classes(torch.load(best, weights_only=True)), best)
    mismatch = ("its weights do not fit the model (size mismatch for classifier.head.weight: copying a param "
                "with shape torch.Size([10, 512]) from checkpoint, the shape in current model is "
                "torch.Size([19, 512]).)")
    before = _snapshot(run)
    msg = _refused(_args(data, out, "--FOLD", "-1", "--EPOCHS", "2", "--RESUME", "true"))
    assert msg == f"RESUME: {last}: {mismatch}: remove it to start over, or restore it"
    assert _untouched(run, before)
    with pytest.raises(SystemExit) as e:  # what S5 does
        checkpoints.load_checkpoint(best)
    assert e.value.code == f"{best}: {mismatch}: {checkpoints.CHECKPOINT_REMEDY}"
    # PRETRAINED_FILE: weights of another model (resnet18 for resnet10t); a refused pickle
    import timm

    other = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", num_classes=10).state_dict(), other)
    with pytest.raises(SystemExit) as e:
        models.Classifier("resnet10t", pretrained_file=str(other))
    assert e.value.code.startswith(f"PRETRAINED_FILE {other}: its weights do not fit the model (size mis")
    assert e.value.code.endswith(": give weights of resnet10t") and "\n" not in e.value.code
    evil = tmp_path / "evil.pth"
    _evil_pickle(evil)
    with pytest.raises(SystemExit, match=r"PRETRAINED_FILE .*evil.pth: holds objects beyond tensors .* "
                                         r"would run code from the file: do not, unless you made the file"):
        models.Classifier("resnet10t", pretrained_file=str(evil))
    with pytest.raises(SystemExit, match=r"evil.pth: holds objects beyond tensors"):
        checkpoints.load_checkpoint(evil)


# ----------------------------------------------------------------------------- checkpoints on a full disk
def _state():
    torch.manual_seed(0)
    return {"model": {"w": torch.randn(256, 256)}, "config": {"A": 1}, "epoch": 3, "history": [{"x": 1.5}]}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_checkpoint_bytes_depend_only_on_the_state(tmp_path):
    saver = checkpoint_saver.CheckpointSaver(tmp_path, True)
    saver._write(_state(), tmp_path / "a.pth")
    saver._write(_state(), tmp_path / "b.pth")
    assert _sha(tmp_path / "a.pth") == _sha(tmp_path / "b.pth")  # the temporary's name is not in the file
    # every entry equals what torch.save(state, path) writes; only the archive's folder name differs
    torch.save(_state(), tmp_path / "plain.pth")

    def entries(p):
        with zipfile.ZipFile(p) as z:
            return {n.split("/", 1)[1]: z.read(n) for n in z.namelist()}

    assert entries(tmp_path / "a.pth") == entries(tmp_path / "plain.pth")
    torch.testing.assert_close(torch.load(tmp_path / "a.pth", weights_only=True)["model"], _state()["model"])


def test_a_full_disk_while_saving_is_one_line_naming_the_file(tmp_path, monkeypatch):
    saver = checkpoint_saver.CheckpointSaver(tmp_path, True)
    # ENOSPC: the bytes go to /dev/full, as on a disk with no space left
    to_dev_full = lambda path, mode: builtins.open("/dev/full", mode)  # noqa: E731
    monkeypatch.setattr(checkpoints, "open", to_dev_full, raising=False)
    with pytest.raises(io.WriteError) as e:
        saver._write(_state(), tmp_path / "last.pth")
    assert e.value.disk_full and str(e.value).startswith(f"cannot write {tmp_path / 'last.pth'}: No space")
    assert str(e.value).endswith("free on that filesystem); nothing truncated was left")
    monkeypatch.undo()
    # a file size limit (EFBIG) stops the write partway through, through the real file
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(io.WriteError, match=r"cannot write .*last.pth: File too large"):
            saver._write(_state(), tmp_path / "last.pth")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no target, no temporary


# ----------------------------------------------------------------------------- IDs "NA" and "nan"
def test_s3_trains_on_images_named_na_and_nan(tmp_path):
    root = tmp_path / "hpa"
    make_toy_dataset(root, n=16, size=40, seed=1)
    names = {"toy0000": "nan", "toy0001": "NA"}  # fold 0 (validation) and fold 1 (training)
    for old, new in names.items():
        (root / "train" / f"{old}.png").rename(root / "train" / f"{new}.png")
    csv = root / "train_all.csv"
    csv.write_text(csv.read_text().replace("toy0000,", "nan,").replace("toy0001,", "NA,"))
    s3(["--HPA512_DIR", str(root), "--OUTPUT_DIR", str(tmp_path / "out"), "--RUN_NAME", "r", *TINY,
        "--EPOCHS", "1", "--FOLD", "0"])
    run = tmp_path / "out" / "r" / "fold0"
    assert "train=8 val=6" in (run / "train.log").read_text()  # fold 1: 8 images; fold 0: 6 not external
    oof = pd.read_csv(run / "oof.csv", dtype={"ID": str}, keep_default_na=False)
    assert "nan" in set(oof["ID"]) and len(oof) == 6


# ----------------------------------------------------------------------------- one writer per run folder
def test_a_second_s3_into_a_busy_run_folder_stops_at_once(data, tmp_path):
    args = _args(data, tmp_path, "--FOLD", "-1", "--EPOCHS", "100000")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen([sys.executable, str(ROOT / "S3_train_pipeline1.py"), *args], env=env,
                             cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "r" / "all"
    try:
        deadline = time.time() + 240
        while not ((run / ".lock").is_file() and (run / ".lock").read_text().strip()
                   and (run / "config.json").is_file()):                 # training has started
            assert first.poll() is None, first.stderr.read()[-2000:]
            assert time.time() < deadline, "the first S3 never took the lock"
            time.sleep(0.5)
        rec = json.loads((run / ".lock").read_text())
        assert rec["pid"] == first.pid and rec["step"] == "S3"
        config_json = (run / "config.json").read_bytes()
        t0 = time.time()
        with pytest.raises(SystemExit) as e:
            s3(args)
        msg = str(e.value.code)
        assert msg.startswith(f"S3: {run} is being written by S3 (pid {first.pid} on ") and "\n" not in msg
        assert time.time() - t0 < 60
        assert (run / "config.json").read_bytes() == config_json
    finally:
        first.kill()
        first.wait()
