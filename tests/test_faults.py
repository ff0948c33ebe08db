"""A full disk is fatal, never a bad image; one writer per output folder (S2, S4.1, run_all.sh).

The full disks are tiny tmpfs mounts inside a private mount namespace (``conftest.tmpfs_run``),
so the steps run as subprocesses; nothing is mounted where other processes would see it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import ROOT, load_script, tmpfs_run
from own_images_data import (
    declared_tiff,
    field,
    gzip_bomb,
    write_channel_bytes_name,
    write_channel_files,
    write_tiffs,
)

from common import images, io, lock

S2 = load_script("S2_data_process.py")
S41 = load_script("S4.1_crop_cells.py")
S5 = load_script("S5_predict.py")
SIZE = 128


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    """Tiny demo data, and S2's outputs of it on a normal disk."""
    from common.demo import demo_data

    root = tmp_path_factory.mktemp("faults")
    data = root / "data"
    demo_data.make_dataset(data, demo_data.DemoPlan(n_train=6, n_test=2, size=256, seed=3,
                                                    min_cells=6, max_cells=12))
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
            images.load_masks(p)
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


# ----------------------------------------------------------------------------- the README's table
"""README "Bad input and failures": each row's first cell is a case name, and ``README_CASES`` maps it to
the function below that runs that case and checks the row's other two cells. ``test_every_row_has_a_case``
fails when a row has no function or a function no row, so the table and the behaviour cannot drift.
To add a row: write it in the README's table, then a function here decorated ``@case("<its first cell>")``
taking ``(request, tmp_path)`` (``request.getfixturevalue`` gives the module's fixtures: ``demo``, tiny
demo data with S2's outputs; ``tiny_run``, a one-step pipeline-1 run; ``monkeypatch``)."""
README_CASES: dict = {}


def case(name: str):
    def register(check):
        README_CASES[name] = check
        return check
    return register


def _readme_rows() -> list[str]:
    """The first cells of the rows of the README's "Bad input and failures" table."""
    text = (ROOT / "README.md").read_text().split("## Bad input and failures", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    return [r.split(" | ")[0].removeprefix("| ").strip() for r in rows[1:]]   # rows[0]: the header


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from own_images_data import train_tiny

    return train_tiny(load_script("S3_train_pipeline1.py"), tmp_path_factory.mktemp("faults_run"))


def _tree(path: Path) -> dict:
    """Every file and link under ``path`` (links not followed): {relative path: bytes or link target}."""
    return {str(p.relative_to(path)): (os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file()
                                       else "folder") for p in sorted(path.rglob("*"))}


def _stops(call) -> str:
    with pytest.raises(SystemExit) as e:
        call()
    msg = str(e.value.code)
    assert e.value.code not in (0, None) and "\n" not in msg, msg
    return msg


def _s5(request, out: Path, *extra: str) -> list[str]:
    demo = request.getfixturevalue("demo")
    return ["--COMPETITION_DIR", str(demo["data"]), "--HPA512_DIR", str(demo["hpa"]),
            "--OUTPUT_DIR", str(out), "--RUNS", str(request.getfixturevalue("tiny_run")), "--DEVICE", "cpu",
            "--TTA", "1", "--SEGMENTER", "builtin", "--IMAGE_SIZE", str(SIZE), "--N_OVERLAYS", "1", *extra]


@case("a bad ID, label or size in a table; a constant out of range (`--TTA 9`, `--RUN_WEIGHTS 0`, "
      "`--RESCALE_PERCENTILES 99,1`, `--SUBMISSION ../x.csv`, a size ≤ 0, …)")
def _bad_input(request, tmp_path):
    _each(request, tmp_path, _bad_table, _bad_constant)


def _each(request, tmp_path, *checks) -> None:
    """Run ``checks``, each in a folder of its own."""
    for check in checks:
        (tmp_path / check.__name__).mkdir()
        check(request, tmp_path / check.__name__)


def _bad_table(request, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(request.getfixturevalue("demo")["data"], data)
    table = pd.read_csv(data / "train.csv", dtype=str)
    table.loc[1, "ID"] = "../evil"
    table.to_csv(data / "train.csv", index=False)
    msg = _stops(lambda: S2.main(["--COMPETITION_DIR", str(data), "--HPA512_DIR", str(tmp_path / "out")]))
    assert msg.startswith(f"{data / 'train.csv'}: row 3: ID '../evil'") and not (tmp_path / "out").exists()


def _bad_constant(request, tmp_path):
    for bad, says in ((["--TTA", "9"], "S5: --TTA 9: must be an integer 1..8"),
                      (["--RUN_WEIGHTS", "0"], "S5: --RUN_WEIGHTS [0]: must add up to more than 0"),
                      (["--SUBMISSION", "../x.csv"], "S5: --SUBMISSION '../x.csv': must be a plain file")):
        args = _s5(request, tmp_path / "out", *bad)
        assert _stops(lambda a=args: S5.main(a)).startswith(says)
    assert list(tmp_path.iterdir()) == []


@case("an image that cannot be read")
def _unreadable_image(request, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(request.getfixturevalue("demo")["data"], data)
    bad = pd.read_csv(data / "train.csv", dtype=str)["ID"][0]
    (data / "train" / f"{bad}_red.png").write_bytes(b"not a png")
    res = S2.main(["--COMPETITION_DIR", str(data), "--HPA512_DIR", str(tmp_path / "out"),
                   "--IMAGE_SIZE", str(SIZE), "--SEGMENTER", "builtin", "--NUM_WORKERS", "1"])
    assert res["failed"] == 1 and res["processed"] == 7                  # exit 0, the others done
    assert pd.read_csv(tmp_path / "out" / "s2_failures.csv", dtype=str)["ID"].tolist() == [bad]


@case("an S2 file that S5 cannot read")
def _bad_s2_file(request, tmp_path):
    demo = request.getfixturevalue("demo")
    hpa = tmp_path / "hpa"
    shutil.copytree(demo["hpa"], hpa)
    iid = pd.read_csv(demo["data"] / "sample_submission.csv", dtype=str)["ID"][0]
    (hpa / "test" / f"{iid}.png").write_bytes(b"\x89PNG cut short")
    out = tmp_path / "out"
    S5.main([*_s5(request, out), "--HPA512_DIR", str(hpa)])
    assert len(pd.read_csv(out / "s5_failures.csv")) == 0
    assert pd.read_csv(out / "submission.csv", dtype=str).set_index("ID")["PredictionString"][iid]


@case("an own field that cannot be used as it is (more than `MAX_PIXELS` values by its header, a gzip bomb, "
      "NaN, negatives, floats outside [0, 1], a Z-stack, a name that is not UTF-8)")
def _unusable_field(request, tmp_path):

    folder = tmp_path / "fields"
    write_tiffs(folder, {"good": field(1, 64, 64)})
    declared_tiff(folder / "giant.tif")
    gzip_bomb(folder / "bomb_red.tif.gz", members=4)
    write_channel_files(folder, {"bomb": field(6, 64, 64)}, ["_green", "_blue", "_yellow"], ".png")
    nan = np.moveaxis(field(2, 64, 64), -1, 0).astype(np.float32) / 65535
    nan[1, 0, 0] = np.nan
    tifffile.imwrite(folder / "nan.tif", nan, photometric="minisblack")
    tifffile.imwrite(folder / "negative.tif", np.moveaxis(field(3, 64, 64), -1, 0).astype(np.int32) - 5,
                     photometric="minisblack")
    tifffile.imwrite(folder / "zstack.tif", np.moveaxis(field(4, 64, 64), -1, 0).copy(), imagej=True,
                     metadata={"axes": "ZYX"})
    write_channel_bytes_name(folder, b"bad\xff", field(5, 64, 64), ["_red", "_green", "_blue", "_yellow"])
    out = tmp_path / "out"
    before = _tree(folder)
    S5.main([*_s5(request, out), "--IMAGES", str(folder), "--MAX_PIXELS", "4000000"])   # exit 0: on it goes
    fails = dict(pd.read_csv(out / "s5_failures.csv", dtype=str, keep_default_na=False).values)
    assert "too large to decode" in fails["giant"] and "too large to decode" in fails["bomb"]
    assert "NaN" in fails["nan"] and "use --RESCALE true" in fails["negative"]
    assert "TIFF_Z_PLANE" in fails["zstack"] and "not valid UTF-8" in fails["bad\\xff"]
    assert pd.read_csv(out / "submission.csv", dtype=str)["ID"].tolist() == ["good"]
    assert _tree(folder) == before                                       # the inputs as they were


@case("a missing input, dataset or package")
def _missing_input(request, tmp_path):
    empty = tmp_path / "runs"
    empty.mkdir()
    args = [a for a in _s5(request, tmp_path / "out") if a != str(request.getfixturevalue("tiny_run"))]
    args.remove("--RUNS")
    msg = _stops(lambda: S5.main([*args, "--RUNS_DIR", str(empty)]))
    assert msg.startswith(f"S5: a trained run (best.pth) under {empty} (RUNS_DIR)") and "run S3" in msg
    mp = request.getfixturevalue("monkeypatch")
    mp.setenv("KAGGLE", "1")
    mp.setenv("KAGGLE_ROOT", str(tmp_path / "kaggle"))
    (tmp_path / "kaggle" / "input" / "hpa-512").mkdir(parents=True)
    msg = _stops(lambda: S5.main([*args, "--RUNS_DIR", str(empty)]))
    assert "attach the dataset `hpa-runs`" in msg and "/kaggle/input holds: hpa-512" in msg
    mp.delenv("KAGGLE")
    mp.setitem(sys.modules, "iterstrat", None)                           # as if it were not installed
    data = request.getfixturevalue("demo")["data"]
    msg = _stops(lambda: S2.main(["--COMPETITION_DIR", str(data), "--HPA512_DIR", str(tmp_path / "s2")]))
    assert "iterative-stratification (import iterstrat) is not installed: pip install" in msg
    assert not (tmp_path / "s2").exists() and not (tmp_path / "out").exists()


@case("out of space, any write error")
def _out_of_space(request, tmp_path):
    test_s2_full_disk_stops_naming_the_file_and_the_free_space(request.getfixturevalue("demo"), tmp_path, 1)


@case("an optional S5 output that cannot be written (a label map, the report, an overlay, a comparison "
      "submission)")
def _optional_output(request, tmp_path):
    def broken(*args, **kw):
        raise RuntimeError("no renderer")

    request.getfixturevalue("monkeypatch").setattr(S5.plots, "plot_cell_overlay", broken)
    out = tmp_path / "out"
    msg = _stops(lambda: S5.main(_s5(request, out)))
    assert msg.startswith("S5: 1 optional output(s) not written, the first: ") and "no renderer" in msg
    assert all((out / n).is_file() for n in ("submission.csv", "cells.csv", "report.html",
                                              "submission_image_level.csv"))


@case("a second run into the same output folder")
def _second_run(request, tmp_path):
    out = tmp_path / "out"
    with lock.hold(out, "another step"):
        msg = _stops(lambda: S5.main(_s5(request, out)))
    assert msg.startswith(f"S5: {out} is being written by another step (pid {os.getpid()} on ")
    assert list(out.iterdir()) == []


@case("a `.lock` that is a folder or unreadable; an output folder on a read-only or full filesystem")
def _bad_lock(request, tmp_path):
    out = tmp_path / "out"
    (out / ".lock").mkdir(parents=True)
    msg = _stops(lambda: S5.main(_s5(request, out)))
    assert msg.startswith(f"S5: {out / '.lock'} is a folder, where S5 keeps its lock file")
    ro = tmp_path / "ro"
    proc = tmpfs_run({ro: 64 * 1024}, ["sh", "-c", f"mount -o remount,ro {ro} && exec {sys.executable} "
                                       "\"$@\"", "sh", str(ROOT / "S5_predict.py"), *_s5(request, ro)])
    assert proc.returncode == 1 and "Read-only file system" in proc.stderr and "Traceback" not in proc.stderr


@case("where a step writes, something it did not write (a run folder named `report` or `labels`, a user's "
      "file, the input folder) or a symbolic link (`.lock`, `labels`, `report`, `train`, …)")
def _not_the_steps(request, tmp_path):
    _each(request, tmp_path, _run_folder_named_report, _link)
    far = tmp_path / "far.txt"
    far.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".lock").symlink_to(far)
    msg = _stops(lambda: S5.main(_s5(request, out)))
    assert msg.startswith(f"S5: {out / '.lock'} is a symbolic link") and far.read_text() == "precious"


def _run_folder_named_report(request, tmp_path):
    out = tmp_path / "out"
    (out / "report" / "fold0").mkdir(parents=True)
    (out / "report" / "fold0" / "best.pth").write_bytes(b"a week of training")
    before = _tree(tmp_path)
    msg = _stops(lambda: S5.main(_s5(request, out)))
    assert msg.startswith(f"S5: {out / 'report'} is not S5's folder (it holds 'fold0'")
    assert msg.endswith("move it, or choose another OUTPUT_DIR") and _tree(tmp_path) == before


def _link(request, tmp_path):
    far = tmp_path / "far"
    far.mkdir()
    (far / "photo.png").write_bytes(b"\x89PNG holiday")
    out = tmp_path / "out"
    out.mkdir()
    (out / "train").symlink_to(far)
    before = _tree(tmp_path)
    msg = _stops(lambda: S2.main(["--COMPETITION_DIR", str(request.getfixturevalue("demo")["data"]),
                                  "--HPA512_DIR", str(out), "--SEGMENTER", "builtin"]))
    assert msg.startswith(f"S2: {out / 'train'} is a symbolic link (to {far})") and _tree(tmp_path) == before


@case("a rerun into the same output folder")
def _rerun(request, tmp_path):
    out = tmp_path / "out"
    S5.main(_s5(request, out))
    S6 = load_script("S6_evaluate.py")
    S6.main(["--SUBMISSION", str(out / "submission.csv"), "--PLOTS", "false",
             "--TRUTH", str(request.getfixturevalue("demo")["data"] / "test_cells.csv")])
    (out / "report" / "thesis.docx").write_bytes(b"three years")
    (out / "notes.csv").write_text("mine")
    S5.main([*_s5(request, out), "--VARIANTS", "false"])
    assert (out / "report" / "thesis.docx").read_bytes() == b"three years" and (out / "notes.csv").is_file()
    assert not (out / "submission_scores.csv").exists() and not list(out.glob("submission_*.csv"))


@case("a bad training constant, `--RESUME` with other schedule constants, a checkpoint that does not fit")
def _training_constant(request, tmp_path):
    from own_images_data import TINY

    hpa = request.getfixturevalue("tiny_run").parents[2] / "hpa"
    args = ["--HPA512_DIR", str(hpa), "--OUTPUT_DIR", str(tmp_path / "runs"), *TINY]
    msg = _stops(lambda: load_script("S3_train_pipeline1.py").main([*args, "--OPTIMIZER", "sgd"]))
    assert msg == "S3: --OPTIMIZER 'sgd': must be one of 'adamw', 'adam'" and list(tmp_path.iterdir()) == []


@case("Ctrl-C or a kill")
def _kill(request, tmp_path):
    import torch
    from own_images_data import TINY

    hpa = request.getfixturevalue("tiny_run").parents[2] / "hpa"
    mp = request.getfixturevalue("monkeypatch")
    S3 = load_script("S3_train_pipeline1.py")

    def run(name: str, *more: str) -> Path:
        return Path(S3.main(["--HPA512_DIR", str(hpa), "--OUTPUT_DIR", str(tmp_path), "--RUN_NAME", name,
                             *TINY, "--EPOCHS", "2", *more])["out_dir"])

    whole = run("whole")
    mp.setenv("HPA_STOP_AFTER_EPOCH", "1")
    run("cut")
    mp.delenv("HPA_STOP_AFTER_EPOCH")
    cut = run("cut", "--RESUME", "true")
    a, b = (torch.load(p / "last.pth", weights_only=True) for p in (whole, cut))
    assert a["epoch"] == b["epoch"] == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@case("a checkpoint holding code (a crafted pickle)")
def _crafted_pickle(request, tmp_path):
    import torch

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": Evil(), "config": {}}, tmp_path / "best.pth")
    msg = _stops(lambda: S5.main(_s5(request, tmp_path / "out", "--RUNS", str(tmp_path / "best.pth"))))
    assert "holds objects beyond tensors and plain values" in msg and not marker.exists()


def test_every_row_has_a_case():
    rows = _readme_rows()
    assert len(rows) == len(set(rows)) >= 12
    assert sorted(set(rows) - set(README_CASES)) == [], "README rows without a case function"
    assert sorted(set(README_CASES) - set(rows)) == [], "case functions without a README row"


@pytest.mark.parametrize("name", list(README_CASES))
def test_readme_row(request, tmp_path, name):
    README_CASES[name](request, tmp_path)
