"""Kaggle notebooks: tools/make_notebook.py notebooks executed with nbclient on a tiny demo whose inputs
are a read-only bind mount (as /kaggle/input is), tools/pack_runs.py, the Kaggle path defaults and the
start check of unwritable output folders."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import load_script

from common import constants
from common.models import checkpoints, weights

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import make_notebook
import pack_runs

SIZE = 64        # demo images and S2's working size
TINY = ["--MODEL_NAME", "test_resnet", "--PRETRAINED", "false", "--EPOCHS", "1", "--MAX_TRAIN_STEPS", "1",
        "--WARMUP_EPOCHS", "0", "--NUM_WORKERS", "0", "--DEVICE", "cpu", "--FOLD", "-1"]
S5_ARGS = ["--DEVICE", "cpu", "--TTA", "2", "--BATCH_SIZE", "8", "--N_OVERLAYS", "0"]
# the notebook sequence trains by recipe, with the constants cell edited to EPOCHS = 1, PRETRAINED = False
RECIPES = {"S3_train_pipeline1.py": "p1_effb0_masked_f3", "S4.2_train_pipeline2.py": "p2_effb0_c256_f0"}
EDITS = {"EPOCHS": 1, "PRETRAINED": False}


@contextlib.contextmanager
def read_only(src: Path, dst: Path):
    """``dst``: a read-only bind mount of ``src`` (root writes through chmod); skips where mount fails."""
    dst.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "--bind", str(src), str(dst)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot bind-mount here ({p.stderr.strip()})")
    try:
        p = subprocess.run(["mount", "-o", "remount,bind,ro", str(dst)], capture_output=True, text=True)
        if p.returncode != 0:
            pytest.skip(f"cannot remount read-only here ({p.stderr.strip()})")
        yield dst
    finally:
        subprocess.run(["umount", str(dst)], capture_output=True)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    """S0 -> S2 -> S3 + S4.1 -> S4.2 on 6 train / 2 test 64-px images; one 1-step run per pipeline."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("kaggle")
    src, out = root / "src", root / "runs"
    comp, hpa = src / "comp", src / "hpa"
    load_script("S0_make_demo_data.py").main(
        ["--COMPETITION_DIR", str(comp), "--N_TRAIN", "6", "--N_TEST", "2", "--IMAGE_SIZE", str(SIZE),
         "--MIN_CELLS", "3", "--MAX_CELLS", "5", "--NUM_WORKERS", "1", "--SEED", "3"])
    load_script("S2_data_process.py").main(["--COMPETITION_DIR", str(comp), "--HPA512_DIR", str(hpa),
                                            "--IMAGE_SIZE", str(SIZE), "--SEGMENTER", "builtin",
                                            "--NUM_WORKERS", "1"])
    r1 = load_script("S3_train_pipeline1.py").main(
        ["--HPA512_DIR", str(hpa), "--OUTPUT_DIR", str(out), "--IMAGE_SIZE", str(SIZE), "--BATCH_SIZE", "4",
         "--CACHE_GB", "0", *TINY])
    load_script("S4.1_crop_cells.py").main(
        ["--HPA512_DIR", str(hpa), "--TRAIN_CSV", str(hpa / "train_all.csv"), "--COMP_TRAIN_DIR",
         str(comp / "train"), "--EXT_TRAIN_DIR", str(comp / "none"), "--CELL_SIZE", "32",
         "--NUM_WORKERS", "1"])
    r2 = load_script("S4.2_train_pipeline2.py").main(
        ["--HPA512_DIR", str(hpa), "--TRAIN_CSV", str(hpa / "train_all.csv"), "--COMPETITION_DIR", str(comp),
         "--OUTPUT_DIR", str(out), "--CELL_SIZE", "32", "--CELLS_PER_IMAGE", "4", "--BATCH_SIZE", "2", *TINY])
    runs = [Path(r1["out_dir"]), Path(r2["out_dir"])]
    pack_runs.main([str(out), "--OUT", str(src / "packed")])
    return dict(root=root, src=src, comp=comp, hpa=hpa, out=out, runs=runs)


def _execute(nb, cwd: Path, timeout: int = 300):
    """Run a notebook in a fresh kernel (cwd outside the repo; its env has no path to the repo)."""
    import nbclient

    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


def _outputs(nb) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []))


def _where_common(nb):
    """Append a cell printing where the notebook's `common` came from."""
    import nbformat

    nb.cells.append(nbformat.v4.new_code_cell("import common\nprint('COMMON_AT', common.__file__)"))


def _common_at(nb) -> Path:
    line = next(x for x in _outputs(nb).splitlines() if x.startswith("COMMON_AT"))
    return Path(line.split(" ", 1)[1])


# ----------------------------------------------------------------------------- notebooks
@pytest.mark.slow
def test_s5_notebook_on_read_only_inputs_matches_the_script(demo, tmp_path, monkeypatch):
    ro = tmp_path / "kaggle_input"
    ref_out, nb_out = tmp_path / "ref", tmp_path / "working"
    monkeypatch.setenv("TMPDIR", str(tmp_path))   # where the notebook unpacks common/
    with read_only(demo["src"], ro):
        comp, hpa, packed = ro / "comp", ro / "hpa", ro / "packed"
        # the script directly, on the original (full) checkpoints
        p = subprocess.run([sys.executable, str(ROOT / "S5_predict.py"), "--COMPETITION_DIR", str(comp),
                            "--HPA512_DIR", str(hpa), "--RUNS_DIR", str(demo["out"]),
                            "--OUTPUT_DIR", str(ref_out), *S5_ARGS], capture_output=True, text=True,
                           cwd=tmp_path, timeout=300)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        # the generated notebook, on the packed (slim) checkpoints read from the read-only mount
        nb = make_notebook.make_notebook(
            "S5_predict.py", ["--COMPETITION_DIR", str(comp), "--HPA512_DIR", str(hpa), "--RUNS_DIR",
                              str(packed), "--OUTPUT_DIR", str(nb_out), *S5_ARGS])
        _where_common(nb)
        t0 = time.time()
        _execute(nb, tmp_path)
        seconds = time.time() - t0
    text = _outputs(nb)
    print(f"S5 notebook: {seconds:.1f} s in all;", next(x for x in text.splitlines() if " s/image" in x))
    assert "imports ok" in text and "2 runs" in text
    assert tmp_path in _common_at(nb).parents and ROOT not in _common_at(nb).parents  # carried inside
    ref = (ref_out / "submission.csv").read_bytes()
    assert ref.count(b"\n") == 3 and len(ref) > 200          # header + 2 images, with cells
    assert (nb_out / "submission.csv").read_bytes() == ref
    assert (nb_out / "submission_image_level.csv").read_bytes() == (
        ref_out / "submission_image_level.csv").read_bytes()


def test_packed_runs_are_slim_and_load(demo):
    packed = demo["src"] / "packed"
    for run in demo["runs"]:
        dst = packed / run.parent.name / run.name / "best.pth"
        ck = torch.load(dst, map_location="cpu", weights_only=True)
        assert {"config", "model"} <= set(ck) <= {"config", "model", "weights_from", *checkpoints.SLIM_KEYS}
        assert dst.stat().st_size < (run / "last.pth").stat().st_size  # best.pth is slim already
        assert (dst.parent / "config.json").is_file()
        slim, _ = checkpoints.load_checkpoint(dst)
        full, _ = checkpoints.load_checkpoint(run / "best.pth")
        for (k, a), b in zip(slim.state_dict().items(), full.state_dict().values()):
            assert torch.equal(a, b), k
        again = checkpoints.slim_checkpoint(ck)                         # a slim checkpoint passes through
        assert again.keys() == ck.keys()
    with pytest.raises(SystemExit, match="no such run"):
        pack_runs.main([str(demo["root"] / "nothing"), "--OUT", str(demo["root"] / "p2")])


def test_packing_says_what_it_saved_and_keeps_no_local_path(demo, tmp_path, capsys):
    out = tmp_path / "packed"
    rows = pack_runs.main([str(demo["out"]), "--OUT", str(out), "--CHECKPOINT", "last.pth",
                           "--DATASET_ID", "me/hpa-runs"])
    said = capsys.readouterr().out
    text = (out / "runs.json").read_text()
    assert str(tmp_path) not in text and str(demo["root"]) not in text and '"/' not in text
    assert [r["run"] for r in rows] == [f"{r.parent.name}/{r.name}" for r in sorted(demo["runs"])]
    for r, run in zip(rows, sorted(demo["runs"])):
        assert r["source_bytes"] == (run / "last.pth").stat().st_size > r["bytes"]
        line = f"{r['run']}: last.pth {r['source_bytes']:,} bytes -> best.pth {r['bytes']:,} bytes (saved "
        assert line in said
    before, after = sum(r["source_bytes"] for r in rows), sum(r["bytes"] for r in rows)
    assert f"into {out}: {before:,} bytes -> {after:,} bytes (saved {before - after:,} bytes" in said
    assert json.loads((out / "dataset-metadata.json").read_text()) == {
        "title": "hpa-runs", "id": "me/hpa-runs", "licenses": [{"name": "CC0-1.0"}]}
    pack_runs.main([str(demo["out"]), "--OUT", str(tmp_path / "again")])   # best.pth: slim already
    assert "slim already" not in said
    assert capsys.readouterr().out.count("(slim already; its paths made portable)") == 2
    with pytest.raises(SystemExit, match="--DATASET_ID 'hpa-runs': expected owner/slug"):
        pack_runs.main([str(demo["out"]), "--OUT", str(tmp_path / "p3"), "--DATASET_ID", "hpa-runs"])
    assert not (tmp_path / "p3").exists()                                   # checked before any work


def test_packed_runs_carry_no_path_of_the_packing_machine(demo, tmp_path, tmp_path_factory, monkeypatch):
    """config.json and the constants inside best.pth: paths inside the run relative to it, inside the
    repository relative to its root, any other dropped; relative arguments taken from the current folder."""
    monkeypatch.chdir(tmp_path)
    rows = pack_runs.main([os.path.relpath(demo["out"], tmp_path), "--OUT", "packed"])
    out = tmp_path / "packed"
    assert (out / "runs.json").is_file() and not (ROOT / "packed").exists()
    machine = [str(tmp_path_factory.getbasetemp()), str(demo["root"]), str(ROOT), str(tmp_path)]
    files = [f for f in out.rglob("*") if f.is_file()]
    assert {f.name for f in files} >= {"best.pth", "config.json", "runs.json"}
    for f in files:
        data = f.read_bytes()
        assert not [m for m in machine if m.encode() in data], f
    for row, run in zip(rows, sorted(demo["runs"])):
        assert {"HPA512_DIR", "OUTPUT_DIR"} <= set(row["dropped"])
        model, cfg = checkpoints.load_checkpoint(out / row["file"])     # still loads
        saved = json.loads((run / "config.json").read_text())
        assert cfg["HPA512_DIR"] == "" and cfg["MODEL_NAME"] == saved["MODEL_NAME"] == "test_resnet"
        packed = json.loads((out / row["run"] / "config.json").read_text())
        assert packed["environment"] == saved["environment"] and packed["OUTPUT_DIR"] == ""
    assert constants.resolve("x") == ROOT / "x"                    # the repository's rule is unchanged


@pytest.mark.slow
def test_s3_notebook_trains_one_step_from_read_only_inputs(demo, tmp_path, monkeypatch):
    ro = tmp_path / "kaggle_input"
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    with read_only(demo["src"], ro):
        nb = make_notebook.make_notebook(
            "S3_train_pipeline1.py", ["--HPA512_DIR", str(ro / "hpa"), "--OUTPUT_DIR",
                                      str(tmp_path / "working"), "--IMAGE_SIZE", str(SIZE), "--BATCH_SIZE",
                                      "4", "--RUN_NAME", "nb", "--CACHE_GB", "0", *TINY])
        _execute(nb, tmp_path)
    run = tmp_path / "working" / "nb" / "all"
    model, cfg = checkpoints.load_checkpoint(run / "best.pth")
    assert cfg["MODEL_NAME"] == "test_resnet" and cfg["RUN_NAME"] == "nb"
    assert cfg["HPA512_DIR"] == str(ro / "hpa")
    assert "S3 done" in _outputs(nb)
    assert torch.load(run / "last.pth", map_location="cpu", weights_only=True)["epoch"] == 1


# ----------------------------------------------------------------------------- read-only outputs
STEPS = {  # script: (output constant, other arguments: inputs that do not exist)
    "S0_make_demo_data.py": ("COMPETITION_DIR", []),
    "S2_data_process.py": ("HPA512_DIR", ["--COMPETITION_DIR", "{missing}"]),
    "S3_train_pipeline1.py": ("OUTPUT_DIR", ["--HPA512_DIR", "{missing}"]),
    "S4.1_crop_cells.py": ("HPA512_DIR", ["--TRAIN_CSV", "{missing}/t.csv"]),
    "S4.2_train_pipeline2.py": ("OUTPUT_DIR", ["--TRAIN_CSV", "{missing}/t.csv"]),
    "S5_predict.py": ("OUTPUT_DIR", ["--COMPETITION_DIR", "{missing}"]),
    "S6_evaluate.py": ("SUBMISSION", ["--TRUTH", "{missing}/t.csv"]),
}


def test_a_read_only_output_folder_stops_each_step_at_start(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "existing").mkdir()
    with read_only(src, tmp_path / "ro") as ro:
        for script, (name, rest) in STEPS.items():
            mod = load_script(script)
            target = ro / "existing" if name != "SUBMISSION" else ro / "sub.csv"
            rest = [a.format(missing=tmp_path / "missing") for a in rest]
            with pytest.raises(SystemExit) as e:   # inputs are missing too: the output check comes first
                mod.main([f"--{name}", str(target), *rest])
            msg = str(e.value)
            folder = target if name != "SUBMISSION" else ro
            assert f"cannot write to {folder} " in msg and name in msg, (script, msg)
        with pytest.raises(SystemExit, match=f"cannot write to {ro / 'new'}.*OUTPUT_DIR"):
            constants.output_folder(ro / "new", "OUTPUT_DIR")            # a folder that cannot be created
    assert os.listdir(src / "existing") == []                             # no probe file left behind
    assert constants.output_folder(tmp_path / "w" / "x", "OUT_DIR") == tmp_path / "w" / "x"
    assert os.listdir(tmp_path / "w" / "x") == []


def test_kaggle_mode_is_explicit(tmp_path, monkeypatch):
    """A Kaggle tree alone changes nothing; KAGGLE=1 resolves under it (KAGGLE_ROOT: a tmp tree)."""
    kin, kw = tmp_path / "input", tmp_path / "working"
    (kin / "hpa-single-cell-image-classification").mkdir(parents=True)
    monkeypatch.setenv("KAGGLE_ROOT", str(tmp_path))
    monkeypatch.delenv("KAGGLE", raising=False)
    assert not constants.on_kaggle() and "(KAGGLE unset)" in constants.paths_line()
    assert constants.resolve("output") == constants.ROOT / "output"           # a /kaggle/input is no switch
    monkeypatch.setenv("KAGGLE", "0")
    assert constants.resolve("output") == constants.ROOT / "output"
    monkeypatch.setenv("KAGGLE", "1")
    assert constants.on_kaggle() and f"from {kin}/<name>" in constants.paths_line()
    assert constants.resolve("output") == kw / "output"
    assert constants.resolve("output/p1/fold0") == kw / "output" / "p1" / "fold0"
    assert constants.resolve("input/hpa-single-cell-image-classification/test") == (
        kin / "hpa-single-cell-image-classification" / "test")               # an attached dataset
    assert constants.resolve("input/hpa-512") == kw / "input" / "hpa-512"   # none attached: written here
    assert constants.resolve("/abs/x") == Path("/abs/x")


def test_a_script_says_how_it_resolves_paths_and_does_so(tmp_path):
    """S6 from a terminal with a Kaggle tree present: relative paths from the repository root unless
    KAGGLE=1; the first line says which."""
    (tmp_path / "input" / "i28_data").mkdir(parents=True)
    argv = [sys.executable, str(ROOT / "S6_evaluate.py"), "--SUBMISSION", "output/i28_probe/sub.csv",
            "--TRUTH", "input/i28_data/truth.csv"]
    env = {k: v for k, v in os.environ.items() if k != "KAGGLE"}
    env["KAGGLE_ROOT"] = str(tmp_path)
    runs = {}
    try:
        for kaggle in (None, "1"):
            e = env if kaggle is None else {**env, "KAGGLE": kaggle}
            p = subprocess.run(argv, env=e, cwd=tmp_path, capture_output=True, text=True, timeout=120)
            assert p.returncode != 0                                  # no truth file: stops naming it
            runs[kaggle] = (p.stdout.splitlines()[0], p.stdout + p.stderr)
    finally:
        with contextlib.suppress(OSError):
            (ROOT / "output" / "i28_probe").rmdir()                   # the output check's folder
    first, text = runs[None]
    assert first == f"paths: relative to {ROOT} (KAGGLE unset)"
    assert f"{ROOT / 'input' / 'i28_data' / 'truth.csv'}: truth file is missing" in text
    first, text = runs["1"]
    assert first.startswith("paths: Kaggle mode (KAGGLE=1)") and str(tmp_path / "working") in first
    assert f"{tmp_path / 'input' / 'i28_data' / 'truth.csv'}: truth file is missing" in text
    assert (tmp_path / "working" / "output" / "i28_probe").is_dir()          # the output check, there


def _no_network() -> list[str]:
    """A command prefix running in a private network namespace (no interfaces), where unshare works."""
    ok = subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    return ["unshare", "-n"] if ok else []


@pytest.mark.parametrize("script", ["S2_data_process.py", "S3_train_pipeline1.py", "S4.1_crop_cells.py",
                                    "S4.2_train_pipeline2.py", "S5_predict.py"])
def test_no_albumentations_update_check(script):
    """Every step that imports albumentations does it after `common`, which turns its online update
    check off: no network attempt, no warning (offline it would warn 'Error fetching version info')."""
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    p = subprocess.run([*_no_network(), sys.executable, str(ROOT / script), "--help"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "version info" not in p.stderr and "albumentations" not in p.stderr.lower(), p.stderr


# ----------------------------------------------------------------------------- messages in Kaggle mode
COMP = "hpa-single-cell-image-classification"
STOPS = {  # a dataset missing: the steps that stop on it (with their notebook's other constants)
    COMP: [("S2_data_process.py", []), ("S5_predict.py", [])],
    "hpa-512": [("S3_train_pipeline1.py", ["--PRETRAINED", "false"]), ("S4.1_crop_cells.py", []),
                ("S4.2_train_pipeline2.py", ["--PRETRAINED", "false"])],
    "hpa-cells": [("S4.2_train_pipeline2.py", ["--PRETRAINED", "false"])],
    "hpa-runs": [("S5_predict.py", [])],
    "hpa-seg": [("S2_data_process.py", ["--SEGMENTER", "hpa"])],
}


def _kaggle_tree(root: Path, names: list[str]) -> None:
    """A Kaggle tree whose /kaggle/input holds ``names``, each with what the steps look for first."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "working").mkdir(parents=True)
    files = {COMP: {"sample_submission.csv": "ID,ImageWidth,ImageHeight\na,64,64\n",
                    "train.csv": "ID,Label\na,0\n"},
             "hpa-512": {"train_all.csv": "ID,Label,fold\na,0,0\n"}}
    for name in names:
        (root / "input" / name).mkdir(parents=True)
        for file, text in files.get(name.replace("hpa512", "hpa-512"), {}).items():
            (root / "input" / name / file).write_text(text)


def _stop(root: Path, script: str, extra: list[str]) -> str:
    """The one line ``script`` stops with, run with its notebook's constants (make_notebook)."""
    block = make_notebook.split_script((ROOT / script).read_text())["constants"]
    defaults = make_notebook.block_defaults(block)
    values = make_notebook.kaggle_values(script, defaults, root)
    with pytest.raises(SystemExit) as e:
        load_script(script).main([a for k, v in values.items() for a in (f"--{k}", v)] + extra)
    return str(e.value)


def test_a_missing_dataset_is_named_in_kaggle_mode_with_what_is_attached(tmp_path, monkeypatch):
    root = tmp_path / "kaggle"
    monkeypatch.setenv("KAGGLE_ROOT", str(root))
    monkeypatch.setenv("KAGGLE", "1")
    everything = [COMP, "hpa-512", "hpa-cells", "hpa-runs", "hpa-seg", "timm-weights"]
    for missing, steps in STOPS.items():
        attached = [n for n in everything if n != missing]
        for script, extra in steps:
            _kaggle_tree(root, attached)
            msg = _stop(root, script, extra)
            how = constants.KAGGLE_DATASETS[missing]
            assert f"attach the dataset `{missing}` ({how})" in msg, (script, msg)
            assert f"{root / 'input'} holds: {', '.join(sorted(attached))}" in msg, (script, msg)
    # timm-weights: the weights message of S3 / S4.2
    attached = [n for n in everything if n != "timm-weights"]
    _kaggle_tree(root, attached)
    msg = weights.unavailable_message("resnet18", "input/timm-weights", "offline")
    assert "attach the dataset `timm-weights`" in msg
    assert f"{root / 'input'} holds: {', '.join(sorted(attached))}" in msg
    assert "PRETRAINED = False in the constants cell" in msg and "--PRETRAINED_DIR" not in msg
    # a dataset attached under another name: listed, and named as the likely one
    for wrong, right, script in (("hpa512", "hpa-512", "S3_train_pipeline1.py"),
                                 ("hpa-runs-v1", "hpa-runs", "S5_predict.py")):
        _kaggle_tree(root, [n if n != right else wrong for n in everything])
        msg = _stop(root, script, ["--PRETRAINED", "false"] if script.startswith("S3") else [])
        assert f"attach the dataset `{right}`" in msg and wrong in msg.split("holds: ")[1]
        assert (f"`{wrong}` looks like it: attach it under the name `{right}`, or replace "
                f"{root / 'input' / right} by {root / 'input' / wrong} in the constants cell") in msg
    # in a shell: the command to run, no dataset
    monkeypatch.delenv("KAGGLE")
    msg = _stop(root, "S3_train_pipeline1.py", ["--HPA512_DIR", str(tmp_path / "none"), "--OUTPUT_DIR",
                                                str(tmp_path / "out"), "--PRETRAINED", "false"])
    csv = tmp_path / "none" / "train_all.csv"
    assert msg == f"{csv}: not found (run S2 first: python S2_data_process.py)"


@pytest.mark.slow
def test_a_stop_in_a_notebook_is_its_one_line(tmp_path, monkeypatch):
    """S4.1's notebook with nothing attached: the last cell shows the step's line (the dataset to attach),
    no traceback and no IPython "To exit" warning; Run all ends there."""
    import nbclient

    root = tmp_path / "kaggle"
    _kaggle_tree(root, ["hpa512"])
    monkeypatch.setenv("KAGGLE_ROOT", str(root))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("KAGGLE", raising=False)
    nb = make_notebook.make_notebook("S4.1_crop_cells.py", [])
    with pytest.raises(nbclient.exceptions.CellExecutionError):
        _execute(nb, tmp_path)
    error = next(o for o in nb.cells[-1].outputs if o.output_type == "error")
    assert len(error.traceback) == 1 and error.traceback[0].startswith(
        f"stopped: {root / 'input' / 'hpa-512' / 'train_all.csv'}: not found: attach the dataset `hpa-512`")
    assert "`hpa512` looks like it" in error.traceback[0]
    assert "To exit" not in _outputs(nb) and "IProgress" not in _outputs(nb)


# ----------------------------------------------------------------------------- the generator
ATTACH = {  # what each notebook reads (README, Kaggle, step by step)
    "S2_data_process.py": [COMP, "hpa-seg"],
    "S3_train_pipeline1.py": ["hpa-512", "timm-weights"],
    "S4.1_crop_cells.py": ["hpa-512", COMP],
    "S4.2_train_pipeline2.py": ["hpa-512", "hpa-cells", COMP, "timm-weights"],
    "S5_predict.py": [COMP, "hpa-512", "hpa-runs", "hpa-seg"],
}
WRITES = {"S2_data_process.py": "hpa-512", "S4.1_crop_cells.py": "hpa-cells"}  # dataset of its output
WRITES.update({k: "" for k in ATTACH if k not in WRITES})


@pytest.mark.parametrize("script", ["S2_data_process.py", "S3_train_pipeline1.py", "S4.1_crop_cells.py",
                                    "S4.2_train_pipeline2.py", "S5_predict.py"])
def test_notebook_cells_follow_the_script(script, tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_ROOT", raising=False)
    import nbformat

    given = "BATCH_SIZE" if script in ("S3_train_pipeline1.py", "S4.2_train_pipeline2.py", "S5_predict.py") \
        else "NUM_WORKERS"
    out = make_notebook.main([script, f"--{given}", "3", "-o", str(tmp_path / "n.ipynb")])
    nb = nbformat.read(out, as_version=4)
    nbformat.validate(nb)
    cells = [c.source for c in nb.cells]
    mod = load_script(script)
    block = make_notebook.split_script((ROOT / script).read_text())["constants"]
    ns: dict = {}
    exec(cells[3], ns)                                                  # the constants cell alone
    got = make_notebook.config.constants_of(ns)
    assert set(got) == set(make_notebook.block_defaults(block))
    changed = {k for k in got if got[k] != getattr(mod, k) and not (
        isinstance(got[k], list) and list(getattr(mod, k)) == got[k])}
    paths = {k for k, v in got.items() if isinstance(v, str) and v.startswith("/kaggle/")}
    assert changed == paths | {given} and got[given] == 3
    assert all(got[k].startswith("/kaggle/input/") or got[k].startswith("/kaggle/working")
               for k in paths) and paths
    # the editable cell holds constants only: comments and NAME = literal
    import ast

    assert all(isinstance(n, ast.Assign) and n.targets[0].id.isupper() for n in ast.parse(cells[3]).body)
    assert "__file__" not in cells[4] and '__name__ == "__main__"' not in cells[4]
    assert "def main(" in cells[4] and "    result = main([])  # no command line" in cells[5]
    assert "_render_traceback_" in cells[5] and "IProgress" in cells[2]    # a stop is one line; no tqdm noise
    assert "_CONFIG_DEFAULTS" in cells[5] and "os.environ['KAGGLE'] = '1'" in cells[2]   # Kaggle mode, set
    assert "--find-links" in cells[1] and "'torch'" in cells[1] and "_ZIP" in cells[2]
    # the note names exactly the datasets the constants point at, under /kaggle/input/<name>
    named = set(re.findall(r"^- `/kaggle/input/([^`/]+)`", cells[0], re.M)) - {"hpa-wheels"}
    pointed = {Path(v).parts[3] for v in paths for v in [got[v]] if v.startswith("/kaggle/input/")}
    assert named == pointed == set(ATTACH[script]), (named, pointed)
    assert f"named `{WRITES[script]}`" in cells[0] if WRITES[script] else "**Writes**" in cells[0]


def test_generator_rejects_unknown_constants_and_keeps_comments():
    with pytest.raises(SystemExit, match="unknown constant --NOPE"):
        make_notebook.make_notebook("S5_predict.py", ["--NOPE", "1"])
    block = 'A = 1            # one\nB = "x"  # two\nC = [1, 2]  # three\n'
    assert make_notebook.edit_block(block, {"A": 22, "B": "/kaggle/working/x", "C": ["a"]}) == (
        'A = 22           # one\nB = "/kaggle/working/x"  # two\nC = ["a"]   # three\n')
    required, optional = make_notebook.needed_packages((ROOT / "S5_predict.py").read_text())
    assert {"torch", "timm", "pycocotools", "cv2", "albumentations"} <= set(required)
    assert "requests" not in required and "iterstrat" not in required   # S1's and S2's only
    required, optional = make_notebook.needed_packages((ROOT / "S2_data_process.py").read_text())
    assert "iterstrat" in required                                      # S2's folds: checked up front


def test_a_notebook_made_without_git_names_the_hash_of_its_common_package(tmp_path, monkeypatch):
    data = make_notebook.common_zip()
    monkeypatch.setattr(make_notebook, "ROOT", tmp_path)                 # an unpacked archive: no git
    digest = make_notebook.hashlib.sha256(data).hexdigest()
    assert make_notebook._commit(data) == f"no git: common/ sha256 {digest[:16]}"
    assert make_notebook.common_cell(data, "x").count(digest) == 1       # the hash the setup cell checks


def test_import_check_names_the_missing_package_and_the_offline_install_line(tmp_path):
    wheels = str(tmp_path / "w")
    cell = make_notebook.check_cell(["hpa_no_such_module", "numpy"], ["hpa_other_missing"], wheels)
    with pytest.raises(ModuleNotFoundError) as e:
        exec(cell, {})
    msg = str(e.value)
    assert "hpa_no_such_module" in msg and "numpy" not in msg.split("run:")[0]
    assert f"pip install --no-index --find-links {tmp_path / 'w'} hpa-no-such-module" in msg
    exec(make_notebook.check_cell(["numpy"], ["hpa_other_missing"], str(tmp_path / "w")), {})  # only a note


def test_make_wheelhouse_downloads_binary_wheels_at_the_required_versions():
    p = subprocess.run(["bash", str(ROOT / "tools" / "make_wheelhouse.sh"), "w", "albucore"],
                       env={**os.environ, "DRY_RUN": "1", "KAGGLE_PYTHON": "3.11"}, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    cmd = p.stdout.split()
    assert cmd[:4] == ["python", "-m", "pip", "download"] and "--only-binary=:all:" in cmd
    assert "--no-deps" in cmd and cmd[cmd.index("--python-version") + 1] == "3.11"
    reqs = (ROOT / "requirements.txt").read_text()
    for spec in ("iterative-stratification>=", "timm>=", "albumentations>=", "pycocotools>="):
        got = next(c for c in cmd if c.startswith(spec))
        assert got in reqs.replace(" ", "")                              # the requirements.txt range
    assert cmd[-1] == "albucore"


def test_import_check_accepts_any_recent_torch_and_names_what_it_found(tmp_path, monkeypatch, capsys):
    """requirements.txt pins torch exactly (bit-exact repeats); a notebook takes Kaggle's torch."""
    import importlib.metadata

    real = importlib.metadata.version
    found = {"torch": "2.6.0+cu124"}
    monkeypatch.setattr(importlib.metadata, "version", lambda d: found.get(d) or real(d))
    cell = make_notebook.check_cell(["torch", "numpy"], [], str(tmp_path / "w"))
    exec(cell, {})
    out = capsys.readouterr().out
    assert "warning" not in out and f"imports ok: torch 2.6.0+cu124, numpy {real('numpy')}" in out
    found["torch"] = "2.0.1"                                               # too old for the code
    exec(cell, {})
    assert "warning: torch 2.0.1 installed, this step wants >=2.3" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the notebook sequence
def _save_output_as_dataset(working: Path, datasets: Path, name: str) -> Path:
    """What a user does between two notebooks: the output (/kaggle/working) becomes a dataset."""
    import shutil

    dst = datasets / name
    shutil.copytree(working, dst)
    shutil.rmtree(working)
    working.mkdir()
    return dst


@pytest.mark.slow
def test_notebook_sequence_on_a_kaggle_tree(tmp_path, monkeypatch):
    """S2 -> S3, S4.1 -> S4.2 -> pack_runs -> S5 as generated notebooks, executed in order in a
    Kaggle-like tree (KAGGLE_ROOT, never the real /kaggle): each output is saved as the dataset the next
    notebook's note names, then attached read-only at <root>/input/<name>. No path constant is edited
    (the notebooks point at the attached datasets); only sizes are shrunk for speed (64-px demo images,
    a 1-step test_resnet without pretrained weights, 32-px cells, workers 1, CPU)."""
    torch.set_num_threads(1)
    root, datasets = tmp_path / "kaggle", tmp_path / "datasets"
    working = root / "working"
    working.mkdir(parents=True)
    monkeypatch.setenv("KAGGLE_ROOT", str(root))
    monkeypatch.setenv("TMPDIR", str(tmp_path))          # where the notebooks unpack common/
    monkeypatch.delenv("KAGGLE", raising=False)           # each notebook turns Kaggle mode on itself
    load_script("S0_make_demo_data.py").main(
        ["--COMPETITION_DIR", str(datasets / COMP), "--N_TRAIN", "6", "--N_TEST", "2",
         "--IMAGE_SIZE", str(SIZE), "--MIN_CELLS", "3", "--MAX_CELLS", "5", "--NUM_WORKERS", "1",
         "--SEED", "3"])
    pairs = dict(zip(TINY[::2], TINY[1::2]))
    by_recipe = [a for k, v in pairs.items() if k[2:] not in EDITS for a in (k, v)]  # the rest: the cell
    tiny = {"S2_data_process.py": ["--IMAGE_SIZE", str(SIZE), "--NUM_WORKERS", "1"],
            "S3_train_pipeline1.py": ["--RECIPE", RECIPES["S3_train_pipeline1.py"], *by_recipe,
                                      "--IMAGE_SIZE", str(SIZE), "--BATCH_SIZE", "4", "--CACHE_GB", "0"],
            "S4.1_crop_cells.py": ["--CELL_SIZE", "32", "--NUM_WORKERS", "1"],
            "S4.2_train_pipeline2.py": ["--RECIPE", RECIPES["S4.2_train_pipeline2.py"], *by_recipe,
                                        "--CELL_SIZE", "32", "--CELLS_PER_IMAGE", "4", "--BATCH_SIZE", "2"],
            "S5_predict.py": S5_ARGS}
    seconds, notes = {}, {}

    def run(script: str, stack: contextlib.ExitStack) -> str:
        nb = make_notebook.make_notebook(script, tiny[script])
        notes[script] = nb.cells[0].source
        if script in RECIPES:                  # the user's edits of the constants cell, over the recipe's
            cell = nb.cells[3].source
            assert "EPOCHS = 15" in cell and "PRETRAINED = True" in cell      # the recipe's, written in
            for k, v in EDITS.items():
                cell, n = re.subn(rf"^{k} = \S+", f"{k} = {v!r}", cell, flags=re.M)
                assert n == 1, k
            nb.cells[3].source = cell
        for name in ATTACH[script]:                         # attach what the note names, if it exists
            if (datasets / name).is_dir():
                stack.enter_context(read_only(datasets / name, root / "input" / name))
        assert f"`{root}/input/hpa-512`" in notes[script] or script == "S2_data_process.py"
        t0 = time.time()
        _execute(nb, tmp_path)
        seconds[script] = time.time() - t0
        text = _outputs(nb)
        assert re.match(r"imports ok: .*\bnumpy \d", text.splitlines()[0])      # the versions found
        assert f"paths: Kaggle mode (KAGGLE=1): input/<name> from {root}/input/<name>" in text
        assert "IProgress" not in text and "To exit" not in text              # no notebook noise
        if script in RECIPES:                                                 # what runs is said first
            assert (f"recipe {RECIPES[script]}: resolved into the constants block when it was made; its "
                    "values as shown") in text and "EPOCHS=1," in text and "PRETRAINED=False," in text
        return text

    with contextlib.ExitStack() as stack:
        run("S2_data_process.py", stack)
        _save_output_as_dataset(working, datasets, "hpa-512")             # named in S2's note
        assert "named `hpa-512`" in notes["S2_data_process.py"]
        run("S3_train_pipeline1.py", stack)
        s3_runs = _save_output_as_dataset(working, tmp_path, "s3_output")  # downloaded for pack_runs
        run("S4.1_crop_cells.py", stack)
        _save_output_as_dataset(working, datasets, "hpa-cells")           # named in S4.1's note
        assert "named `hpa-cells`" in notes["S4.1_crop_cells.py"]
        run("S4.2_train_pipeline2.py", stack)
        s42_runs = _save_output_as_dataset(working, tmp_path, "s42_output")
        pack_runs.main([str(s3_runs), str(s42_runs), "--OUT", str(datasets / "hpa-runs"),
                        "--DATASET_ID", "me/hpa-runs"])
        text = run("S5_predict.py", stack)
    print("notebooks:", ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()),
          f"(in all {sum(seconds.values()):.1f} s)")
    for runs, script in ((s3_runs, "S3_train_pipeline1.py"), (s42_runs, "S4.2_train_pipeline2.py")):
        run_dir = runs / make_notebook.recipes.run_dir(RECIPES[script]).split("/")[0] / "all"
        saved = json.loads((run_dir / "config.json").read_text())             # the cell's values ran
        assert {k: saved[k] for k in EDITS} == EDITS and saved["RECIPE"] == RECIPES[script]
        assert torch.load(run_dir / "last.pth", map_location="cpu", weights_only=True)["epoch"] == 1
    assert "2 runs" in text
    sub = (working / "submission.csv").read_text().splitlines()
    sample = (datasets / COMP / "sample_submission.csv").read_text().splitlines()
    assert len(sub) == len(sample) == 3                                   # header + one row per test image
    assert [r.split(",")[0] for r in sub[1:]] == [r.split(",")[0] for r in sample[1:]]
    assert all(len(r.split(",")[3]) > 10 for r in sub[1:])                 # cells were predicted
