"""A full disk is fatal, never a bad image; one writer per output folder (S2, S4.1, run_all.sh).

The full disks are tiny tmpfs mounts inside a private mount namespace (``conftest.tmpfs_run``),
so the steps run as subprocesses; nothing is mounted where other processes would see it."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pandas as pd
import pytest
from conftest import ROOT, load_script, tmpfs_run

from common import io, lock

S2 = load_script("S2_data_process.py")
S41 = load_script("S4.1_crop_cells.py")
SIZE = 128


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    """Tiny demo data, and S2's outputs of it on a normal disk."""
    from common import demo_data

    root = tmp_path_factory.mktemp("faults")
    data = root / "data"
    demo_data.make_dataset(data, n_train=6, n_test=2, size=256, seed=3, min_cells=6, max_cells=12)
    hpa = root / "hpa"
    S2.main(["--COMPETITION_DIR", str(data), "--HPA512_DIR", str(hpa), "--IMAGE_SIZE", str(SIZE),
             "--SEGMENTER", "builtin", "--NUM_WORKERS", "1"])
    return {"data": data, "hpa": hpa}


def _s2_argv(data: Path, out: Path, workers: int = 2) -> list[str]:
    return [sys.executable, str(ROOT / "S2_data_process.py"), "--COMPETITION_DIR", str(data),
            "--HPA512_DIR", str(out), "--IMAGE_SIZE", str(SIZE), "--SEGMENTER", "builtin",
            "--NUM_WORKERS", str(workers)]


def _no_partial_files(folder: Path) -> int:
    """Every file under ``folder`` is complete (PNGs decode, .npz load); no temporary is left.
    Returns the number of files checked."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith(".tmp")], "a temporary was left behind"
    for p in files:
        if p.suffix == ".png":
            assert cv2.imread(str(p), cv2.IMREAD_UNCHANGED) is not None, f"{p} is truncated"
        elif p.suffix == ".npz":
            io.load_masks(p)
    return len(files)


@pytest.mark.parametrize("workers", [1, 2])
def test_s2_full_disk_stops_naming_the_file_and_the_free_space(demo, tmp_path, workers):
    out, snap = tmp_path / "out", tmp_path / "snap"
    proc = tmpfs_run({out: 48 * 1024}, _s2_argv(demo["data"], out, workers), snapshot=snap)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"cannot write {out}/") and "No space left on device" in last
    assert "free on that filesystem" in last and "Traceback" not in proc.stderr
    assert "S2 done" not in proc.stdout and "s2_failures.csv" not in proc.stdout  # not a bad image
    assert _no_partial_files(snap) > 0


def test_s41_full_disk_stops_instead_of_failing_images(demo, tmp_path):
    hpa = tmp_path / "hpa"
    shutil.copytree(demo["hpa"], hpa)
    crops, snap = hpa / "cells_32", tmp_path / "snap"
    argv = [sys.executable, str(ROOT / "S4.1_crop_cells.py"), "--HPA512_DIR", str(hpa),
            "--TRAIN_CSV", str(hpa / "train_all.csv"), "--COMP_TRAIN_DIR", str(demo["data"] / "train"),
            "--CELL_SIZE", "32", "--NUM_WORKERS", "2"]
    proc = tmpfs_run({crops: 16 * 1024}, argv, snapshot=snap)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"cannot write {crops}/") and "No space left on device" in last
    assert "FAILED" not in proc.stdout and not (hpa / "cells_32.csv").exists()
    assert _no_partial_files(snap) > 0


def test_run_all_stops_at_the_step_that_ran_out_of_space(demo, tmp_path):
    """run_all.sh on 'real' data (no S0) with input/hpa-512 on a full disk: S2 stops it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ["run_all.sh", *(p.name for p in ROOT.glob("S*.py"))]:
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "common", repo / "common", ignore=shutil.ignore_patterns("__pycache__"))
    comp = repo / "input" / "hpa-single-cell-image-classification"
    shutil.copytree(demo["data"], comp)
    (comp / "demo_config.json").unlink(missing_ok=True)          # looks like real data: S0 is skipped
    proc = tmpfs_run({repo / "input" / "hpa-512": 64 * 1024}, ["bash", str(repo / "run_all.sh")])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "run_all.sh: step failed: S2_data_process.py" in proc.stderr
    assert "No space left on device" in proc.stderr and "=== S3" not in proc.stdout


def test_s2_second_writer_stops_at_once_and_a_killed_holder_is_taken_over(demo, tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from common import lock\n"
        "with lock.hold(sys.argv[2], 'S2'):\n    print('held', flush=True); time.sleep(60)"),
        str(ROOT), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        busy = rf"S2: {out} is being written by S2 \(pid {holder.pid} on "
        with pytest.raises(lock.FolderBusy, match=busy):
            S2.main(["--COMPETITION_DIR", str(demo["data"]), "--HPA512_DIR", str(out),
                     "--SEGMENTER", "builtin"])
        assert time.monotonic() - t0 < 10 and not (out / "train").exists()
    finally:
        holder.kill()
        holder.wait()
    res = S2.main(["--COMPETITION_DIR", str(demo["data"]), "--HPA512_DIR", str(out),
                   "--IMAGE_SIZE", str(SIZE), "--SEGMENTER", "builtin", "--NUM_WORKERS", "1"])
    assert res["failed"] == 0 and res["processed"] == 8
    err = capsys.readouterr().err
    assert f"took over the lock of {out} left by S2 (pid {holder.pid}" in err
    assert not (out / ".lock").exists()                             # released: nothing left behind


def test_shards_lock_separately(demo, tmp_path):
    """Two shards of one S2 may run at once; the same shard twice may not."""
    out = tmp_path / "out"
    with lock.hold(out, "S2", "shard0of2"):
        S2.main(["--COMPETITION_DIR", str(demo["data"]), "--HPA512_DIR", str(out), "--IMAGE_SIZE", str(SIZE),
                 "--SEGMENTER", "builtin", "--NUM_WORKERS", "1", "--SHARD", "1/2"])
        with pytest.raises(lock.FolderBusy, match=r"\(shard0of2\) is being written by S2"):
            S2.main(["--COMPETITION_DIR", str(demo["data"]), "--HPA512_DIR", str(out),
                     "--SEGMENTER", "builtin", "--SHARD", "0/2"])
    assert len(pd.read_csv(out / "train_all.csv")) == 3


def test_a_read_error_stays_a_failure_of_that_image(demo, tmp_path):
    """Where the error happened decides: an unreadable input is listed, the step goes on (exit 0)."""
    data = tmp_path / "data"
    shutil.copytree(demo["data"], data)
    bad = pd.read_csv(data / "train.csv", dtype=str)["ID"][0]
    (data / "train" / f"{bad}_red.png").write_bytes(b"not a png")
    res = S2.main(["--COMPETITION_DIR", str(data), "--HPA512_DIR", str(tmp_path / "out"),
                   "--IMAGE_SIZE", str(SIZE), "--SEGMENTER", "builtin", "--NUM_WORKERS", "1"])
    assert res["failed"] == 1 and res["processed"] == 7
    fails = pd.read_csv(tmp_path / "out" / "s2_failures.csv", dtype=str)
    assert fails["ID"].tolist() == [bad] and "ImageReadError" in fails["reason"][0]


def test_write_error_survives_a_process_pool(tmp_path):
    """A WriteError raised in a pool worker reaches the parent as the same one-line error."""
    from common import parallel

    with pytest.raises(io.WriteError, match="cannot write .*x.bin") as err:
        parallel.run_parallel(_raise_write_error, [str(tmp_path / "x.bin")] * 2, num_workers=2,
                              progress=False)
    assert err.value.disk_full


def _raise_write_error(path: str):
    import errno

    raise io.WriteError(path, OSError(errno.ENOSPC, "No space left on device"))


@pytest.mark.parametrize("script, args", [
    ("S0_make_demo_data.py", ["--COMPETITION_DIR", "{out}", "--N_TRAIN", "1", "--N_TEST", "0"]),
    ("S6_evaluate.py", ["--SUBMISSION", "{out}/submission.csv", "--TRUTH", "{out}/none.csv"]),
    ("S4.1_crop_cells.py", ["--HPA512_DIR", "{out}", "--TRAIN_CSV", "{train_csv}", "--CELL_SIZE", "32"]),
])
def test_every_step_stops_when_its_folder_is_held(demo, tmp_path, script, args):
    out = tmp_path / "out"
    tag = "cells_32" if script.startswith("S4.1") else ""
    values = {"out": out, "train_csv": demo["hpa"] / "train_all.csv"}
    with lock.hold(out, "another step", tag):
        with pytest.raises(lock.FolderBusy, match="is being written by another step"):
            load_script(script).main([a.format(**values) for a in args])
    assert sorted(p.name for p in out.iterdir()) == []
