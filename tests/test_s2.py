"""S2 end to end on tiny demo data; resume, shards, failures, folds; common.parallel."""
from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import load_script, nothing_in

from common import images, owned, parallel
from common.predict import fields

S2 = importlib.import_module("S2_data_process")
SIZE = 128  # IMAGE_SIZE of these tests (the demo images are 256 px)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    demo_data = pytest.importorskip("common.demo.demo_data")
    d = tmp_path_factory.mktemp("demo")
    demo_data.make_dataset(d, demo_data.DemoPlan(n_train=6, n_test=2, size=256, seed=3,
                                                 min_cells=6, max_cells=12))
    # a blank field of view: no cells
    images.write_channels(d / "train", "blank", np.zeros((200, 240, 4), np.uint8))
    t = pd.read_csv(d / "train.csv")
    pd.concat([t, pd.DataFrame({"ID": ["blank"], "Label": ["18"]})]).to_csv(d / "train.csv", index=False)
    return d


@pytest.fixture
def data(demo_dir, tmp_path):
    shutil.copytree(demo_dir, tmp_path / "data")
    return tmp_path / "data"


def run(data, out, *extra):
    return S2.main(["--COMPETITION_DIR", str(data), "--HPA512_DIR", str(out), "--IMAGE_SIZE", str(SIZE),
                    "--SEGMENTER", "builtin", "--NUM_WORKERS", "1", *extra])


def meta_mtimes(out):
    return {p.name: p.stat().st_mtime_ns for p in (out / "meta").glob("*/*.json")}


def test_end_to_end_resume_failures(data, tmp_path):
    out = tmp_path / "out"
    train_ids = pd.read_csv(data / "train.csv")["ID"].tolist()
    test_ids = pd.read_csv(data / "sample_submission.csv")["ID"].tolist()
    bad = train_ids[1]
    green = data / "train" / f"{bad}_green.png"
    good_bytes = green.read_bytes()
    green.write_bytes(b"\x89PNG not really")

    res = run(data, out, "--NUM_WORKERS", "2")
    assert (res["processed"], res["failed"], res["skipped"]) == (len(train_ids) + len(test_ids) - 1, 1, 0)
    fails = pd.read_csv(out / "s2_failures.csv")
    assert fails["ID"].tolist() == [bad] and f"{bad}_green.png" in fails["reason"][0]

    tr = pd.read_csv(out / "train_all.csv", dtype={"ID": str})
    assert list(tr.columns) == ["ID", "Label", "is_ext", "fold", "ImageWidth", "ImageHeight", "n_cells"]
    assert tr["ID"].tolist() == [i for i in train_ids if i != bad]
    te = pd.read_csv(out / "test.csv", dtype={"ID": str})
    assert list(te.columns) == ["ID", "ImageWidth", "ImageHeight", "n_cells"]
    assert te["ID"].tolist() == test_ids
    for split, df in (("train", tr), ("test", te)):
        for r in df.itertuples():
            orig = images.read_image(data / split, r.ID)
            assert (r.ImageHeight, r.ImageWidth) == orig.shape[:2]  # original sizes
            small = images.read_rgby(out / split / f"{r.ID}.png")
            assert np.array_equal(small, cv2.resize(orig, (SIZE, SIZE), interpolation=cv2.INTER_AREA))
            cell, nuc = images.load_masks(out / f"{split}_cell_mask" / f"{r.ID}.npz")
            assert cell.dtype == np.uint16 and cell.shape == (SIZE, SIZE) and nuc.shape == (SIZE, SIZE)
            assert set(np.unique(cell)) == set(range(r.n_cells + 1))  # ids 1..n_cells
            assert np.all(cell[nuc > 0] == nuc[nuc > 0])
    blank = tr.set_index("ID").loc["blank"]
    assert blank["n_cells"] == 0 and (blank["ImageWidth"], blank["ImageHeight"]) == (240, 200)
    assert tr.loc[tr["ID"] != "blank", "n_cells"].min() > 0
    assert tr["fold"].between(0, 4).all() and (tr["is_ext"] == 0).all()

    # a re-run does only what is left: nothing, except the still-broken image
    before = meta_mtimes(out)
    res = run(data, out)
    assert (res["processed"], res["skipped"], res["failed"]) == (0, len(before), 1)
    assert meta_mtimes(out) == before
    # the image is repaired: only it is processed, and it leaves the failure list
    green.write_bytes(good_bytes)
    res = run(data, out)
    assert (res["processed"], res["failed"]) == (1, 0)
    assert pd.read_csv(out / "s2_failures.csv").empty
    assert bad in pd.read_csv(out / "train_all.csv", dtype={"ID": str})["ID"].tolist()
    after = meta_mtimes(out)
    assert all(after[k] == v for k, v in before.items())
    # --OVERWRITE redoes all
    res = run(data, out, "--OVERWRITE")
    assert res["processed"] == len(after) and all(meta_mtimes(out)[k] > v for k, v in after.items())


def test_shards_split_the_work(data, tmp_path):
    out = tmp_path / "out"
    n = len(pd.read_csv(data / "train.csv")) + len(pd.read_csv(data / "sample_submission.csv"))
    r0 = run(data, out, "--SHARD", "0/2")
    first = set(meta_mtimes(out))
    assert r0["processed"] == (n + 1) // 2 == len(first)
    assert r0["train_rows"] + r0["test_rows"] == len(first)  # CSVs hold what is done so far
    r1 = run(data, out, "--SHARD", "1/2")
    assert r1["processed"] == n // 2 and r1["skipped"] == 0
    assert len(meta_mtimes(out)) == n and r1["train_rows"] + r1["test_rows"] == n
    with pytest.raises(SystemExit, match="SHARD"):
        run(data, out, "--SHARD", "2/2")


def test_bad_label_names_the_file(data, tmp_path):
    t = pd.read_csv(data / "train.csv")
    t.loc[0, "Label"] = "3|25"
    t.to_csv(data / "train.csv", index=False)
    with pytest.raises(SystemExit, match=r"train\.csv.*25"):
        run(data, tmp_path / "out")
    assert not (tmp_path / "out" / "train_all.csv").exists()


def _label_table(n, seed):
    rng = np.random.default_rng(seed)
    labels = ["|".join(map(str, sorted(rng.choice(19, rng.integers(1, 4), replace=False)))) for _ in range(n)]
    return pd.DataFrame({"ID": [f"img{i:04d}" for i in range(n)], "Label": labels,
                         "is_ext": (rng.random(n) < 0.3).astype(int)})


def test_folds_stratified_and_reproducible():
    t = _label_table(400, 0)
    f1 = S2.assign_folds(t, 5, seed=42)
    assert f1.between(0, 4).all() and np.array_equal(f1, S2.assign_folds(t, 5, seed=42))
    assert not np.array_equal(f1, S2.assign_folds(t, 5, seed=1))
    shuffled = t.sample(frac=1.0, random_state=0)  # CSV order does not matter
    assert S2.assign_folds(shuffled, 5, seed=42).sort_index().equals(f1)
    assert np.bincount(f1, minlength=5).min() >= 0.9 * 400 / 5
    y = np.zeros((len(t), 20), int)
    for i, lab in enumerate(t["Label"]):
        y[i, [int(x) for x in lab.split("|")]] = 1
    y[:, 19] = t["is_ext"]
    per_fold = np.stack([y[f1.to_numpy() == k].sum(0) for k in range(5)])
    spread = per_fold.max(0) - per_fold.min(0)  # random folds: a median spread of ~7 images
    assert np.median(spread) <= 1 and (spread <= 2).mean() >= 0.75, per_fold


@pytest.mark.parametrize("bad_id, why", [
    ("", r"ID '' is empty"),
    ("a" * 300, r"ID 'a{40}[.]{3}a{8}' is 300 characters long: at most 128, so that every file made"),
])
def test_empty_or_too_long_train_id_stops_with_one_line(data, tmp_path, bad_id, why):
    """Not ``ID nan is empty``, nor an ``OSError: File name too long`` traceback from the first write."""
    t = pd.read_csv(data / "train.csv", dtype=str, keep_default_na=False)
    t.loc[1, "ID"] = bad_id
    t.to_csv(data / "train.csv", index=False)
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=rf"^{re.escape(str(data / 'train.csv'))}: row 3: {why}") as e:
        run(data, out)
    assert "\n" not in str(e.value) and not out.exists()


# ----------------------------------------------------------------------------- common.parallel
def _square_or_fail(x):
    if x % 3 == 0:
        raise ValueError(f"bad {x}")
    return x * x


@pytest.mark.parametrize("workers", [1, 2])
def test_run_parallel_keeps_order_and_captures_errors(workers):
    out = parallel.run_parallel(_square_or_fail, list(range(10)), workers, progress=False)
    assert [o.item for o in out] == list(range(10))
    assert [o.value for o in out if o.ok] == [x * x for x in range(10) if x % 3]
    bad = [o for o in out if not o.ok]
    assert [o.item for o in bad] == [0, 3, 6, 9] and bad[1].error == "ValueError: bad 3" and bad[1].trace


WORKERS_SCRIPT = """
import os, sys, time
sys.path.insert(0, {root!r})
from common import parallel

def slow(x):  # module level: pickled to the workers
    with open({pids!r}, "a") as f:
        f.write(f"{{os.getpid()}}\\n")
    time.sleep(120)

if __name__ == "__main__":
    if {no_prctl}:
        parallel._parent_death_signal = lambda: False  # the watchdog thread (no prctl)
    parallel.run_parallel(slow, list(range(4)), 2, progress=False)
"""


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is no zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("no_prctl", [False, True], ids=["prctl", "watchdog"])
def test_pool_workers_end_when_the_parent_is_killed(tmp_path, no_prctl):
    import signal
    import subprocess
    import sys
    import time

    pids_file = tmp_path / "pids.txt"
    script = tmp_path / "pool.py"
    script.write_text(WORKERS_SCRIPT.format(root=str(Path(__file__).resolve().parents[1]),
                                            pids=str(pids_file), no_prctl=no_prctl))
    parent = subprocess.Popen([sys.executable, str(script)])
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.1)
            workers = {int(x) for x in pids_file.read_text().split()} if pids_file.exists() else set()
        assert len(workers) == 2 and parent.poll() is None, (workers, parent.returncode)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while any(_running(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in workers if _running(p)], "pool workers outlived their parent"
    finally:
        parent.kill()
        for p in workers:  # the workers this test started, if the code under test left them
            if _running(p):
                os.kill(p, signal.SIGKILL)


def test_shard_and_parse_shard():
    items = list(range(11))
    parts = [parallel.shard(items, f"{i}/3") for i in range(3)]
    assert sorted(sum(parts, [])) == items and parts[1] == [1, 4, 7, 10]
    assert parallel.parse_shard("") == (0, 1) and parallel.parse_shard(None) == (0, 1)
    assert parallel.shard(items, (0, 1)) == items
    for bad in ("3/3", "-1/2", "1/0", "a/b", "2"):
        with pytest.raises(ValueError, match="SHARD"):
            parallel.parse_shard(bad)


def test_split_done(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.txt").write_text("x")
    todo, done = parallel.split_done(["a", "b", "c"], lambda k: [tmp_path / f"{k}.txt", tmp_path / "a.txt"])
    assert (todo, done) == (["c"], ["a", "b"])
    todo, done = parallel.split_done(["a"], lambda k: [tmp_path / f"{k}.txt"], overwrite=True)
    assert (todo, done) == (["a"], [])


def test_split_done_redoes_items_whose_inputs_are_newer(tmp_path):
    src, out = tmp_path / "src.png", tmp_path / "out.png"
    src.write_text("x")
    out.write_text("y")
    os.utime(src, ns=(1_000_000_000, 1_000_000_000))
    os.utime(out, ns=(2_000_000_000, 2_000_000_000))
    inputs = lambda k: [src, tmp_path / "missing_input.png"]  # noqa: E731 - a missing input is ignored
    assert parallel.split_done(["a"], lambda k: [out], inputs=inputs) == ([], ["a"])
    os.utime(src, ns=(3_000_000_000, 3_000_000_000))          # the input changed after the output
    assert parallel.split_done(["a"], lambda k: [out], inputs=inputs) == (["a"], [])
    assert parallel.split_done(["a"], lambda k: [out]) == ([], ["a"])   # without inputs: exists = done


def test_a_replaced_image_is_processed_again(data, tmp_path):
    out = tmp_path / "out"
    run(data, out)
    ids = pd.read_csv(data / "train.csv")["ID"].tolist()
    before = meta_mtimes(out)
    # the same ID with new pixels (e.g. demo data regenerated): its outputs are stale
    other = images.read_image(data / "train", ids[2])
    images.write_channels(data / "train", ids[0], other)
    res = run(data, out)
    assert res["processed"] == 1 and res["skipped"] == len(before) - 1
    after = meta_mtimes(out)
    assert after[f"{ids[0]}.json"] != before[f"{ids[0]}.json"]
    assert all(after[k] == v for k, v in before.items() if k != f"{ids[0]}.json")
    np.testing.assert_array_equal(images.load_masks(out / "train_cell_mask" / f"{ids[0]}.npz")[0],
                                  images.load_masks(out / "train_cell_mask" / f"{ids[2]}.npz")[0])


def test_records_are_json(data, tmp_path):
    out = tmp_path / "out"
    run(data, out, "--SHARD", "0/4")
    rec = json.loads(next((out / "meta" / "train").glob("*.json")).read_text())
    assert rec["ok"] and {"ID", "ImageWidth", "ImageHeight", "n_cells"} <= set(rec)


class _FakeNetworks:
    """Stands in for the HPA networks: batches, original-size input, optional failure."""

    name = "hpa"
    calls: list = []

    def __init__(self, fail=False):
        from common.segmentation import BuiltinSegmenter

        self.inner, self.fail = BuiltinSegmenter(), fail

    def segment(self, images):
        _FakeNetworks.calls.append([im.shape for im in images])
        if self.fail:
            raise RuntimeError("CUDA out of memory")
        return self.inner.segment(images)


@pytest.mark.parametrize("fail", [False, True])
def test_network_segmenter_gets_batches_of_originals(data, tmp_path, monkeypatch, fail):
    monkeypatch.setattr(S2.segmentation, "resolve_name", lambda name, weights_dir=None: "hpa")
    monkeypatch.setattr(S2.segmentation, "get_segmenter", lambda *a, **k: _FakeNetworks(fail))
    monkeypatch.setattr(S2, "_SEGMENTERS", {})
    _FakeNetworks.calls = []
    out = tmp_path / "out"
    n = len(pd.read_csv(data / "train.csv")) + len(pd.read_csv(data / "sample_submission.csv"))
    res = S2.main(["--COMPETITION_DIR", str(data), "--HPA512_DIR", str(out), "--IMAGE_SIZE", str(SIZE),
                   "--SEG_BATCH", "4", "--NUM_WORKERS", "2"])
    assert [len(c) for c in _FakeNetworks.calls] == [4] * (n // 4) + ([n % 4] if n % 4 else [])
    assert all(shape[0] > SIZE for call in _FakeNetworks.calls for shape in call)  # SEG_AT auto: original
    if fail:
        assert res["failed"] == n and res["processed"] == 0
        assert pd.read_csv(out / "s2_failures.csv")["reason"].str.contains("CUDA out of memory").all()
    else:
        assert res["processed"] == n and res["segmenter"] == "hpa"
        assert json.loads(next((out / "meta" / "test").glob("*.json")).read_text())["seg_at"] == "original"


# ----------------------------------------------------------------------------- hostile input (issue 15)
def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("csv", ["train.csv", "train_external.csv", "sample_submission.csv"])
@pytest.mark.parametrize("kind", ["parent", "subfolder", "absolute", "backslash"])
def test_hostile_ids_are_rejected_before_anything_is_read_or_written(data, tmp_path, csv, kind):
    bad = {"parent": "../../evil", "subfolder": "train/evil", "absolute": str(tmp_path / "evil"),
           "backslash": "..\\evil"}[kind]
    images.write_channels(tmp_path, "evil", np.full((64, 64, 4), 50, np.uint8))  # what the ID points at
    if csv == "train_external.csv":
        pd.DataFrame({"ID": ["ext_ok", bad], "Label": ["0", "1"]}).to_csv(data / csv, index=False)
    else:
        t = pd.read_csv(data / csv, dtype=str)
        t.loc[1, "ID"] = bad
        t.to_csv(data / csv, index=False)
    before = _files(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=rf"{csv.replace('.', r'[.]')}: row 3: ID .*evil"):
        run(data, out)
    assert _files(tmp_path) == before and not out.exists()                # not even an empty folder


def test_empty_label_stops_s2_with_the_row(data, tmp_path):
    t = pd.read_csv(data / "train.csv", dtype=str)
    t.loc[2, "Label"] = ""
    t.to_csv(data / "train.csv", index=False)
    with pytest.raises(SystemExit, match=r"train\.csv: row 4: image .*: empty Label"):
        run(data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("size", ["0", "-5"])
def test_image_size_not_positive_stops_s2(data, tmp_path, size):
    with pytest.raises(SystemExit, match=rf"IMAGE_SIZE {size}: must be an integer >= 16"):
        run(data, tmp_path / "out", "--IMAGE_SIZE", size)
    assert not (tmp_path / "out").exists()


_KILLED_WRITER = """
import os, sys
sys.path.insert(0, sys.argv[1])
from common import io
with io.atomic_path(sys.argv[2]) as tmp:
    tmp.write_text(open(sys.argv[2]).read())
    os._exit(9)   # killed mid-write: the temporary file stays
"""


def test_a_leftover_temp_file_neither_duplicates_a_row_nor_survives_the_next_run(data, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out"
    run(data, out)
    first = pd.read_csv(out / "train_all.csv", dtype={"ID": str})
    rec = out / "meta" / "train" / f"{first['ID'][0]}.json"
    root = str(Path(__file__).resolve().parents[1])
    subprocess.run([sys.executable, "-c", _KILLED_WRITER, root, str(rec)], check=False)
    legacy = rec.with_name(f".{rec.name}.ab12cd34.tmp.json")            # the name earlier versions used
    legacy.write_text(rec.read_text())
    left = [p for p in rec.parent.iterdir() if p.name != rec.name and first["ID"][0] in p.name]
    assert len(left) == 2
    res = run(data, out)
    again = pd.read_csv(out / "train_all.csv", dtype={"ID": str})
    assert not again["ID"].duplicated().any() and again["ID"].tolist() == first["ID"].tolist()
    assert res["processed"] == 0 and not any(p.exists() for p in left)
    assert [p.name for p in out.rglob(".*") if p.is_file()] == [owned.record_name("S2")]  # S2's record only


def test_s2_outputs_follow_the_umask(data, tmp_path):
    old = os.umask(0o027)
    try:
        run(data, tmp_path / "out")
    finally:
        os.umask(old)
    out = tmp_path / "out"
    files = [out / "train_all.csv", out / "s2_failures.csv", *(out / "train").glob("*.png"),
             *(out / "train_cell_mask").glob("*.npz"), *(out / "meta" / "train").glob("*.json")]
    assert len(files) > 5
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o640)}


def test_a_missing_iterstrat_stops_s2_before_its_first_image(data, tmp_path, monkeypatch):
    """The folds need iterstrat (iterative-stratification): checked before any image, with the install
    line of where the user is (a shell, or a Kaggle notebook: offline from the wheels dataset)."""
    monkeypatch.setitem(sys.modules, "iterstrat", None)                 # as if it were not installed
    out = tmp_path / "out"
    wheels = tmp_path / "kaggle" / "input" / "hpa-wheels"
    for kaggle, line in ((False, "pip install -r requirements.txt -c requirements-lock.txt"),
                         (True, f"!pip install --no-index --find-links {wheels} iterative-stratification")):
        if kaggle:
            monkeypatch.setenv("KAGGLE", "1")
            monkeypatch.setenv("KAGGLE_ROOT", str(tmp_path / "kaggle"))
        with pytest.raises(SystemExit) as e:
            run(data, out)
        assert str(e.value).startswith("S2: the folds (MultilabelStratifiedKFold): the package "
                                       "iterative-stratification (import iterstrat) is not installed: ")
        assert line in str(e.value)
        assert nothing_in(out)                                              # no image was processed


def test_s5_segments_an_image_without_an_s2_mask_at_s2s_working_size(data, tmp_path, capsys):
    """S5 (ImageSource) prepares a test image S2 left no mask for at S2's IMAGE_SIZE: from S2's saved
    constants, else the runs' S2_IMAGE_SIZE, else its own IMAGE_SIZE; it says which, and warns when its
    IMAGE_SIZE differs. The cells are then S2's."""
    out = tmp_path / "out"
    run(data, out)                                                          # S2 at SIZE (128)
    test_id = pd.read_csv(data / "sample_submission.csv")["ID"][0]
    want = images.load_masks(out / "test_cell_mask" / f"{test_id}.npz")[0]
    for p in (out / "test" / f"{test_id}.png", out / "test_cell_mask" / f"{test_id}.npz"):
        p.unlink()
    S5 = load_script("S5_predict.py")
    cfg = S5.config.parse(vars(S5), ["--HPA512_DIR", str(out), "--COMPETITION_DIR", str(data),
                                     "--SEGMENTER", "builtin"], quiet=True)          # IMAGE_SIZE 512
    capsys.readouterr()
    sample = S5._load_sample(data / "sample_submission.csv")
    got = fields.ImageSource(cfg, sample, [], False).load(test_id)
    assert np.array_equal(got.cell, want)
    saved = out / "meta" / "s2_config_shard0of1.json"
    said = capsys.readouterr().out
    assert (f"S5: warning: S2 worked at {SIZE} px (S2's saved constants ({saved})), IMAGE_SIZE is 512: "
            f"segmenting at {SIZE} px, as S2 did") in said
    assert f"S5: segmenting at {SIZE} px: S2's working size, from S2's saved constants ({saved})" in said
    saved.unlink()                                                          # the runs' record instead
    got = fields.ImageSource(cfg, sample, [{"S2_IMAGE_SIZE": SIZE, "PIPELINE": 1}], False).load(test_id)
    assert np.array_equal(got.cell, want)
    assert f"from the runs' configs (S2_IMAGE_SIZE [{SIZE}])" in capsys.readouterr().out
    got = fields.ImageSource(cfg, sample, [{"PIPELINE": 1}], False).load(test_id)  # no record
    assert got.cell.shape == (512, 512)
    assert "from IMAGE_SIZE (S2's saved constants and the runs' configs lack it)" in capsys.readouterr().out


def test_an_image_over_max_pixels_is_listed_from_its_header(data, tmp_path):
    from own_images_data import png_declaring

    big = pd.read_csv(data / "train.csv")["ID"].tolist()[0]
    png_declaring(data / "train" / f"{big}_blue.png", 30000, 30000)  # 900 M pixels declared, 4 x 4 inside
    res = run(data, tmp_path / "out")
    fails = pd.read_csv(tmp_path / "out" / "s2_failures.csv")
    assert res["failed"] == 1 and fails["ID"].tolist() == [big]
    assert (f"{big}_blue.png: too large to decode: {900_000_000 + 2 * 256 * 256} pixels (30000 x 30000 and "
            f"{2 * 256 * 256} in the other files; MAX_PIXELS {S2.MAX_PIXELS})") in fails["reason"][0]
