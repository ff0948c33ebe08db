"""Every step owns what it wrote, and only that (common.owned): things planted in an output folder (a
run folder named like an output, a user's file, the input folder, links to files and folders outside)
stay byte-identical, or the step refuses with one line before it writes. S5 in both modes, S2, S4.1,
S6 and S0 in their output folders; and S5 finds the trained runs whatever its OUTPUT_DIR."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import load_script
from own_images_data import field, train_tiny, write_channel_files, write_competition

from common import owned
from common.demo import demo_data

torch.set_num_threads(1)
S0, S2, S3, S41, S5, S6 = (load_script(f) for f in ("S0_make_demo_data.py", "S2_data_process.py",
                                                     "S3_train_pipeline1.py", "S4.1_crop_cells.py",
                                                     "S5_predict.py", "S6_evaluate.py"))
SUFFIXES = ["_red", "_green", "_blue", "_yellow"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A one-step run, two own fields (per-channel PNGs), the same as a competition test set, and
    tiny demo data with S2's outputs (for S2, S4.1 and S6)."""
    root = tmp_path_factory.mktemp("owned")
    run = train_tiny(S3, root)
    images = {f"f{k}": field(k, 48, 48) for k in (1, 2)}
    write_channel_files(root / "fields", images, SUFFIXES, ".png")
    write_competition(root / "comp", images)
    data, hpa = root / "data", root / "hpa512"   # (root / "hpa" is the toy set of the run)
    demo_data.make_dataset(data, demo_data.DemoPlan(n_train=4, n_test=1, size=64, seed=3,
                                                    min_cells=3, max_cells=5))
    S2.main(_s2_args(data, hpa))
    return dict(root=root, run=run, data=data, hpa=hpa)


def _s2_args(data: Path, out: Path) -> list[str]:
    return ["--COMPETITION_DIR", str(data), "--HPA512_DIR", str(out), "--IMAGE_SIZE", "64",
            "--SEGMENTER", "builtin", "--NUM_WORKERS", "1"]


def _s5_args(setup: dict, out: Path | None, images: Path | None = None) -> list[str]:
    args = ["--RUNS", str(setup["run"]), "--DEVICE", "cpu", "--TTA", "1", "--BATCH_SIZE", "8",
            "--N_OVERLAYS", "1", "--SEGMENTER", "builtin", "--IMAGE_SIZE", "64",
            "--HPA512_DIR", str(setup["root"] / "no_s2"), "--COMPETITION_DIR", str(setup["root"] / "comp")]
    args += ["--OUTPUT_DIR", str(out)] if out is not None else []
    return args + (["--IMAGES", str(images)] if images is not None else [])


def _s41_args(setup: dict, out: Path, originals: Path | None = None) -> list[str]:
    hpa = setup["hpa"]
    return ["--HPA512_DIR", str(hpa), "--TRAIN_CSV", str(hpa / "train_all.csv"), "--CELLS_DIR", str(out),
            "--COMP_TRAIN_DIR", str(originals or setup["data"] / "train"), "--CELL_SIZE", "32",
            "--NUM_WORKERS", "1"]


def tree(path: Path) -> dict:
    """Everything at and under ``path``, links not followed: {relative path: bytes, ("link", target)
    or "folder"}."""
    out: dict = {}

    def walk(p: Path, rel: str) -> None:
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = "folder"
            for c in sorted(p.iterdir()):
                walk(c, f"{rel}/{c.name}")
        elif p.exists():
            out[rel] = p.read_bytes()

    walk(path, ".")
    return out


def refused(call) -> str:
    """The one line a step stops with (exit status 1, no traceback)."""
    with pytest.raises(SystemExit) as e:
        call()
    msg = str(e.value.code)
    assert e.value.code not in (0, None, 3) and "\n" not in msg and "Traceback" not in msg, msg
    return msg


# ----------------------------------------------------------------------------- what is planted
def _run_folder(path: Path) -> None:
    """A training run's folder (S3 --RUN_NAME <name>)."""
    (path / "fold0").mkdir(parents=True)
    (path / "fold0" / "best.pth").write_bytes(b"weights of a week on a GPU")
    (path / "fold0" / "config.json").write_text("{}")


def _outside(tmp: Path) -> Path:
    """A folder outside every output folder, with a file and a PNG that a link may point at."""
    far = tmp / "outside"
    far.mkdir(exist_ok=True)
    (far / "precious.txt").write_text("never to be truncated")
    (far / "photo.png").write_bytes(b"\x89PNG holiday")
    return far


def _plant(out: Path, what: str, target: str = "") -> None:
    """``what`` in ``out``: a run folder, a user's file (``dir/name``), a folder of that name, or a link
    to ``target`` (``outside`` or ``outside/precious.txt``)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / what
    if target:
        path.symlink_to(out.parent / target)
    elif what.startswith("run:"):
        _run_folder(out / what[4:])
    elif what.endswith("/"):
        (path / "keep.txt").parent.mkdir(parents=True)
        (path / "keep.txt").write_text("a folder where a file goes")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"a user's own file")


S5_CASES = {  # what is planted in OUTPUT_DIR -> the one line S5 stops with
    "run folder named report": (("run:report", ""), r"/report is not S5's folder \(it holds 'fold0'"),
    "run folder named labels": (("run:labels", ""), r"/labels is not S5's folder \(it holds 'fold0'"),
    "a user's file in report": (("report/thesis.docx", ""), r"/report is not S5's folder \(it holds 'thesis"),
    ".lock links to a file": ((".lock", "outside/precious.txt"), r"/\.lock is a symbolic link"),
    ".lock links to a folder": ((".lock", "outside"), r"/\.lock is a symbolic link"),
    "labels links to a folder": (("labels", "outside"), r"/labels is a symbolic link \(to .*outside\)"),
    "labels links to a file": (("labels", "outside/precious.txt"), r"/labels is a symbolic link"),
    "report links to a folder": (("report", "outside"), r"/report is a symbolic link"),
    "report links to a file": (("report", "outside/precious.txt"), r"/report is a symbolic link"),
    "cells.csv is a folder": (("cells.csv/", ""), r"/cells\.csv is a folder, where S5 writes a file"),
    "a user's submission.csv": (("submission.csv", ""), r"/submission\.csv was not written by S5"),
}


@pytest.mark.parametrize("mode", ["competition", "images"])
@pytest.mark.parametrize("case", list(S5_CASES))
def test_s5_leaves_what_it_did_not_write_or_refuses_before_writing(setup, tmp_path, case, mode):
    (what, target), message = S5_CASES[case]
    _outside(tmp_path)
    out = tmp_path / "out"
    _plant(out, what, target)
    before = tree(tmp_path)
    images = setup["root"] / "fields" if mode == "images" else None
    msg = refused(lambda: S5.main(_s5_args(setup, out, images)))
    assert msg.startswith(f"S5: {out}") and re.search(message, msg), msg
    assert msg.endswith("or choose another OUTPUT_DIR") or msg.endswith("another output folder"), msg
    assert tree(tmp_path) == before                              # byte for byte, links and targets too


@pytest.mark.parametrize("step", ["S5", "S4.1"])
def test_inputs_inside_an_output_folder_of_the_step_are_refused(setup, tmp_path, step):
    """S5 --IMAGES out/labels --OUTPUT_DIR out; S4.1 with its originals in CELLS_DIR/cells_32."""
    out = tmp_path / "out"
    src, sub, constant = ((setup["root"] / "fields", "labels", "OUTPUT_DIR") if step == "S5"
                          else (setup["data"] / "train", "cells_32", "CELLS_DIR"))
    shutil.copytree(src, out / sub)
    before = tree(tmp_path)
    msg = refused(lambda: S5.main(_s5_args(setup, out, out / sub)) if step == "S5"
                  else S41.main(_s41_args(setup, out, out / sub)))
    assert msg.startswith(f"{step}: {out / sub} is an input of {step}"), msg
    assert msg.endswith(f"choose another {constant}"), msg
    assert tree(tmp_path) == before


@pytest.mark.parametrize("mode", ["competition", "images"])
def test_s5_rerun_replaces_only_its_own_files(setup, tmp_path, mode, capsys):
    """A user's files put in S5's folders after a run, and a run folder beside them, stay byte-identical;
    S5's own files of the first run are replaced, and those the second does not write are removed."""
    out = tmp_path / "out"
    images = setup["root"] / "fields" if mode == "images" else None
    S5.main([*_s5_args(setup, out, images), "--N_OVERLAYS", "2"])
    assert len(list((out / "overlays").glob("*.png"))) == 2
    for what in ("report/thesis.docx", "labels/notes.txt", "overlays/mine.png", "notes.csv"):
        _plant(out, what)
    _run_folder(out / "p1_run")
    mine = {k: v for k, v in tree(out).items() if any(w in k for w in ("thesis", "notes", "mine", "p1_run"))}
    S5.main([*_s5_args(setup, out, images), "--N_OVERLAYS", "1", "--VARIANTS", "false"])
    after = tree(out)
    assert {k: after.get(k) for k in mine} == mine
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["f1.png", "mine.png"]
    record = owned.load(out / owned.record_name("S5"))[0]
    assert "overlays/f1.png" in record and "overlays/f2.png" not in record
    assert "report/thesis.docx" not in record and "notes.csv" not in record
    assert not list(out.glob("submission_*.csv"))                # VARIANTS false: the old ones went


def test_s5_images_inside_output_dir_and_output_dir_inside_images(setup, tmp_path, capsys):
    """--IMAGES out/fields --OUTPUT_DIR out, and --IMAGES fields --OUTPUT_DIR fields/out: both run
    twice, no input touched; the closing line counts the field discovery could not use."""
    inner = tmp_path / "out" / "fields"
    shutil.copytree(setup["root"] / "fields", inner)
    (inner / "lonely_red.png").write_bytes((inner / "f1_red.png").read_bytes())  # no other channel
    outer = tmp_path / "fields"
    shutil.copytree(inner, outer)
    for images, out in ((inner, tmp_path / "out"), (outer, outer / "out")):
        inputs = {k: v for k, v in tree(images).items() if "/out" not in k}
        for _ in range(2):
            S5.main(_s5_args(setup, out, images))
            last = capsys.readouterr().out.strip().splitlines()[-1]
            assert "1 of 3 images FAILED" in last, last
        assert {k: v for k, v in tree(images).items() if "/out" not in k} == inputs
        assert len(pd.read_csv(out / "submission.csv")) == 2


def test_s5_finds_the_runs_where_training_put_them_whatever_output_dir(setup, tmp_path, monkeypatch):
    """RUNS_DIR is where S3 and S4.2 write (output), not S5's OUTPUT_DIR; with --IMAGES the outputs go to
    output/<folder name> by default. Relative paths are taken in a private tree (Kaggle mode)."""
    fresh = [load_script(f, f"fresh{k}") for k, f in enumerate(("S5_predict.py", "S3_train_pipeline1.py",
                                                                 "S4.2_train_pipeline2.py"))]
    assert fresh[0].RUNS_DIR == fresh[1].OUTPUT_DIR == fresh[2].OUTPUT_DIR == "output"
    monkeypatch.setenv("KAGGLE", "1")
    monkeypatch.setenv("KAGGLE_ROOT", str(tmp_path))
    working = tmp_path / "working"
    shutil.copytree(setup["run"], working / "output" / "tiny" / "all")
    base = [a for a in _s5_args(setup, None) if a != "--RUNS" and a != str(setup["run"])]
    fields = setup["root"] / "fields"
    S5.main([*base, "--IMAGES", str(fields), "--OUTPUT_DIR", "output/mine"])
    S5.main([*base, "--IMAGES", str(fields)])
    for out in (working / "output" / "mine", working / "output" / "fields"):
        assert len(pd.read_csv(out / "submission.csv")) == 2


# ----------------------------------------------------------------------------- S2, S4.1, S6, S0
S2_CASES = {  # planted in HPA512_DIR -> the one line S2 stops with
    "run folder named train": (("run:train", ""), r"/train is not S2's folder \(it holds 'fold0'"),
    "a user's file in test": (("test/notes.txt", ""), r"/test is not S2's folder \(it holds 'notes.txt'"),
    ".lock links to a file": ((".lock", "outside/precious.txt"), r"/\.lock is a symbolic link"),
    ".lock links to a folder": ((".lock", "outside"), r"/\.lock is a symbolic link"),
    "train links to a folder": (("train", "outside"), r"/train is a symbolic link"),
    "test_cell_mask links to a file": (("test_cell_mask", "outside/precious.txt"),
                                       r"/test_cell_mask is a symbolic link"),
}


def test_s2_refuses_the_competition_data_as_its_output_folder(setup, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(setup["data"], data)
    before = tree(tmp_path)
    msg = refused(lambda: S2.main(_s2_args(data, data)))
    assert msg.startswith(f"S2: {data} is an input of S2") and "choose another HPA512_DIR" in msg
    assert tree(tmp_path) == before


S41_CASES = {  # planted in CELLS_DIR -> the one line S4.1 stops with
    "run folder named cells_32": (("run:cells_32", ""), r"/cells_32 is not S4.1's folder"),
    "a user's file in cells_32": (("cells_32/mine.png", ""), r"/cells_32 is not S4.1's folder"),
    "a user's s41_failures.csv": (("s41_failures.csv", ""), r"/s41_failures\.csv was not written by S4\.1"),
    ".lock.cells_32 links to a file": ((".lock.cells_32", "outside/precious.txt"),
                                       r"/\.lock\.cells_32 is a symbolic link"),
    "cells_32 links to a folder": (("cells_32", "outside"), r"/cells_32 is a symbolic link"),
    "cells_32 links to a file": (("cells_32", "outside/precious.txt"), r"/cells_32 is a symbolic link"),
}


PLANTED = {"S2": S2_CASES, "S4.1": S41_CASES}


@pytest.mark.parametrize("step,case", [(step, c) for step, cases in PLANTED.items() for c in cases])
def test_s2_and_s41_leave_what_they_did_not_write_or_refuse_before_writing(setup, tmp_path, step, case):
    (what, target), message = PLANTED[step][case]
    _outside(tmp_path)
    out = tmp_path / "out"
    _plant(out, what, target)
    before = tree(tmp_path)
    msg = refused(lambda: S2.main(_s2_args(setup["data"], out)) if step == "S2"
                  else S41.main(_s41_args(setup, out)))
    assert msg.startswith(f"{step}: {out}") and re.search(message, msg), msg
    assert tree(tmp_path) == before


def test_s6_refuses_a_link_where_it_writes_its_scores(setup, tmp_path):
    far = _outside(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "submission_truth_scores.csv").symlink_to(far / "precious.txt")
    before = tree(tmp_path)
    msg = refused(lambda: S6.main(["--SUBMISSION", str(out / "submission.csv"), "--MAKE", "truth",
                                   "--TRUTH", str(setup["data"] / "test_cells.csv"), "--PLOTS", "false"]))
    assert msg.startswith(f"S6: {out / 'submission_truth_scores.csv'} is a symbolic link"), msg
    assert tree(tmp_path) == before


def test_s0_never_writes_through_a_linked_folder(tmp_path):
    far = _outside(tmp_path)
    out = tmp_path / "comp"
    out.mkdir()
    (out / "train").symlink_to(far)
    before = tree(tmp_path)
    msg = refused(lambda: S0.main(["--COMPETITION_DIR", str(out), "--N_TRAIN", "1", "--N_TEST", "0",
                                   "--IMAGE_SIZE", "64", "--NUM_WORKERS", "1"]))
    assert msg.startswith(f"S0: {out / 'train'} is a symbolic link"), msg
    assert tree(tmp_path) == before


def test_s3_never_writes_through_a_link_in_its_run_folder(setup, tmp_path):
    from own_images_data import TINY

    far = _outside(tmp_path)
    run = tmp_path / "runs" / "r" / "all"
    run.mkdir(parents=True)
    (run / "train.log").symlink_to(far / "precious.txt")
    before = tree(tmp_path)
    msg = refused(lambda: S3.main(["--HPA512_DIR", str(setup["root"] / "hpa"), "--OUTPUT_DIR",
                                   str(tmp_path / "runs"), "--RUN_NAME", "r", *TINY]))
    assert msg.startswith(f"S3: {run / 'train.log'} is a symbolic link") and msg.endswith("another RUN_NAME")
    assert tree(tmp_path) == before


def test_pack_runs_never_writes_through_a_link(setup, tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import pack_runs

    far = _outside(tmp_path)
    out = tmp_path / "packed"
    out.mkdir()
    (out / "tiny").symlink_to(far)
    before = tree(tmp_path)
    msg = refused(lambda: pack_runs.main([str(setup["run"]), "--OUT", str(out)]))
    assert msg.startswith(f"pack_runs: {out / 'tiny'} is a symbolic link") and msg.endswith("another --OUT")
    assert tree(tmp_path) == before


def test_s5_takes_the_outputs_of_an_earlier_s5_as_its_own(setup, tmp_path):
    """A folder an S5 from before records wrote (its s5_config.json, no record): its files are replaced;
    a PNG of the user's in its labels/ is not S5's, so S5 stops and it stays."""
    out = tmp_path / "out"
    S5.main(_s5_args(setup, out))
    record = out / owned.record_name("S5")
    record.unlink()                                              # as an S5 before records left it
    _run_folder(out / "p1_run")
    S5.main(_s5_args(setup, out))
    files = owned.load(record)[0]
    assert {"submission.csv", "labels/f1.png", "report/data.json"} <= files and (out / "p1_run").is_dir()
    record.unlink()
    (out / "labels" / "mine.png").write_bytes(b"\x89PNG mine")
    before = tree(tmp_path)
    msg = refused(lambda: S5.main(_s5_args(setup, out)))
    assert msg.startswith(f"S5: {out / 'labels'} is not S5's folder (it holds 'mine.png'"), msg
    assert tree(tmp_path) == before
