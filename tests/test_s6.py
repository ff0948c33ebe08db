"""S6_evaluate end to end on a tiny truth CSV built here."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import load_script

from common.competition import encoding

ROOT = Path(__file__).resolve().parents[1]


def _load_s6():
    return load_script("S6_evaluate.py", "S6_evaluate")


@pytest.fixture()
def truth_csv(tmp_path):
    """Two 16x16 images; in "x" the cells differ in labels, in "y" the single cell has 2 labels."""
    lab = np.zeros((16, 16), np.uint16)
    lab[0:6, 0:6], lab[8:14, 0:6], lab[0:6, 8:14] = 1, 2, 3
    masks = encoding.encode_label_map(lab)
    rows = [("x", 1, 0), ("x", 1, 16), ("x", 2, 16), ("x", 3, 5), ("y", 1, 2), ("y", 1, 18)]
    df = pd.DataFrame([{"ID": i, "ImageWidth": 16, "ImageHeight": 16, "cell_id": c, "Label": label,
                        "EncodedMask": masks[c]} for i, c, label in rows])
    path = tmp_path / "truth" / "test_cells.csv"
    path.parent.mkdir()
    df.to_csv(path, index=False)
    return path


def _run(capsys, *args):
    _load_s6().main(list(args))
    return capsys.readouterr().out.strip().splitlines()


def test_truth_submission_scores_one_and_writes_outputs(truth_csv, tmp_path, capsys):
    sub = tmp_path / "out" / "submission.csv"
    lines = _run(capsys, "--SUBMISSION", str(sub), "--TRUTH", str(truth_csv), "--MAKE", "truth")
    assert lines[-2:] == ["mAP_strict=1.0000", "mAP_lenient=1.0000"]
    made = tmp_path / "out" / "submission_truth.csv"
    df = encoding.read_submission(made)
    assert df["ID"].tolist() == ["x", "y"]
    assert len(df["PredictionString"][0].split()) == 3 * 4  # 4 (cell, label) pairs in "x"
    for suffix in ("_scores.csv", "_ap.png", "_pr.png", "_eval_config.json"):
        assert (tmp_path / "out" / f"submission_truth{suffix}").stat().st_size > 0
    scores = pd.read_csv(tmp_path / "out" / "submission_truth_scores.csv")
    assert len(scores) == 19
    assert scores.set_index("class").loc[16, "n_gt"] == 2
    assert scores.set_index("class")["ap_strict"].isna().sum() == 19 - 5  # classes 0, 2, 5, 16, 18
    # scoring the written file again (MAKE="") gives the same result, without plots
    lines = _run(capsys, "--SUBMISSION", str(made), "--TRUTH", str(truth_csv), "--PLOTS", "false")
    assert lines[-2:] == ["mAP_strict=1.0000", "mAP_lenient=1.0000"]


def test_broadcast_scores_below_one_when_cells_differ(truth_csv, tmp_path, capsys):
    sub = tmp_path / "submission.csv"
    lines = _run(capsys, "--SUBMISSION", str(sub), "--TRUTH", str(truth_csv), "--MAKE", "broadcast",
                 "--PLOTS", "false")
    # Image x's 3 cells all get {0, 5, 16}; y is exact. Ties keep submission order (cells 1, 2, 3):
    # class 0: TP, FP, FP -> 1; class 5: FP, FP, TP -> 1/3; class 16: TP, TP, FP -> 1; 2, 18: 1.
    # Strict mAP = (1 + 1/3 + 1 + 1 + 1) / 5; lenient is the same (every detection's class is in its image).
    expected = (4 + 1 / 3) / 5
    assert lines[-2] == f"mAP_strict={expected:.4f}"
    assert lines[-1] == f"mAP_lenient={expected:.4f}"
    assert expected < 1
    assert (tmp_path / "submission_broadcast.csv").is_file()
    assert not (tmp_path / "submission_broadcast_ap.png").exists()


def test_missing_files_are_named(truth_csv, tmp_path, capsys):
    with pytest.raises(SystemExit, match="nothere.csv"):
        _load_s6().main(["--SUBMISSION", str(tmp_path / "nothere.csv"), "--TRUTH", str(truth_csv)])
    with pytest.raises(SystemExit, match="notruth.csv"):
        _load_s6().main(["--SUBMISSION", str(tmp_path / "s.csv"), "--TRUTH", str(tmp_path / "notruth.csv")])
    with pytest.raises(SystemExit, match="MAKE"):
        _load_s6().main(["--TRUTH", str(truth_csv), "--MAKE", "bogus"])


def test_baseline_comparison_with_a_bootstrap_interval(truth_csv, tmp_path, capsys):
    from common.competition import metric

    truth_sub = _run(capsys, "--SUBMISSION", str(tmp_path / "s.csv"), "--TRUTH", str(truth_csv), "--MAKE",
                     "truth", "--PLOTS", "false")
    assert truth_sub[-1] == "mAP_lenient=1.0000"
    _run(capsys, "--SUBMISSION", str(tmp_path / "s.csv"), "--TRUTH", str(truth_csv), "--MAKE", "broadcast",
         "--PLOTS", "false")
    truth = metric.read_truth(truth_csv)
    exact = metric.match_submission(encoding.read_submission(tmp_path / "submission_truth.csv"), truth)
    broad = metric.match_submission(encoding.read_submission(tmp_path / "submission_broadcast.csv"), truth)
    # a resample holding image x twice: each copy matches its own cells (the truth still scores 1)
    assert metric._pool(exact, ["x", "x"], "strict", 0.6)["mAP"] == 1.0
    assert metric.bootstrap_difference(exact, exact, n_boot=50) == {
        "delta": 0.0, "low": 0.0, "high": 0.0, "p_better": 0.0, "n_boot": 50, "n_images": 2}
    d = metric.bootstrap_difference(exact, broad, "strict", n_boot=400, seed=1)
    assert d["delta"] == pytest.approx(1 - (4 + 1 / 3) / 5)
    # only resamples without image x tie (both 1): a quarter of them
    assert d["low"] == 0.0 and d["high"] > 0 and 0.65 < d["p_better"] < 0.85
    lines = _run(capsys, "--SUBMISSION", str(tmp_path / "submission_truth.csv"), "--TRUTH", str(truth_csv),
                 "--BASELINE", str(tmp_path / "submission_broadcast.csv"), "--N_BOOT", "100",
                 "--PLOTS", "false")
    assert lines[-4:-2] == ["mAP_strict=1.0000", "mAP_lenient=1.0000"]
    assert lines[-2].startswith("delta_strict=+0.1333 (95% interval +0.0000..")
    assert lines[-1].startswith("delta_lenient=+0.1333") and lines[-1].endswith("vs submission_broadcast.csv")


def test_missing_and_extra_images_are_noted_with_their_ids(truth_csv, tmp_path, capsys):
    """A truth image without a submission row counts as predicting nothing (its cells are missed);
    a submission row without truth is ignored: each said in one line, with how many and which."""
    _run(capsys, "--SUBMISSION", str(tmp_path / "submission.csv"), "--TRUTH", str(truth_csv),
         "--MAKE", "truth", "--PLOTS", "false")
    made = encoding.read_submission(tmp_path / "submission_truth.csv")
    only_x = made[made["ID"] == "x"].copy()
    extra = only_x.assign(ID="z")
    path = tmp_path / "partial.csv"
    pd.concat([only_x, extra]).to_csv(path, index=False)
    lines = _run(capsys, "--SUBMISSION", str(path), "--TRUTH", str(truth_csv), "--PLOTS", "false")
    assert "note: 1 submission row(s) have no truth and were ignored: z" in lines
    assert ("note: 1 truth image(s) have no submission row and count as predicting nothing "
            "(all their cells missed): y") in lines
    # y's cells are missed: the same scores as a row for y that predicts nothing
    assert float(lines[-2].split("=")[1]) < 1.0
    empty_y = made.assign(PredictionString=np.where(made["ID"] == "y", "", made["PredictionString"]))
    empty_y.to_csv(tmp_path / "empty_y.csv", index=False)
    same = _run(capsys, "--SUBMISSION", str(tmp_path / "empty_y.csv"), "--TRUTH", str(truth_csv),
                "--PLOTS", "false")
    assert same[-2:] == lines[-2:] and not any(x.startswith("note:") for x in same)
