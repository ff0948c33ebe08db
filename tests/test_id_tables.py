"""Every CSV that holds image IDs goes through ``io.read_id_table``: an ID ``NA`` or ``nan`` stays that
string (never dropped, never NaN), and a bad ID stops with one line naming the file and row."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import load_script

from common.competition import metric
from common.constants import NUM_CLASSES
from common.data import bag_datasets
from common.demo import demo_data

IDS = ["NA", "nan"]  # pandas' default reader turns both into NaN


def test_pseudo_labels_keep_ids_na_and_nan(tmp_path):
    t = np.zeros((2, NUM_CLASSES))
    t[0, 3], t[1, 5] = 0.7, 0.4
    pl = pd.DataFrame({"ID": IDS, "cell_id": [2, 1], "fold": 0, "n_runs": 1})
    pl = pl.join(pd.DataFrame(t, columns=bag_datasets.TARGET_COLS))
    pl.to_csv(tmp_path / "pl.csv", index=False)
    table = bag_datasets.read_pseudo_labels(tmp_path / "pl.csv")
    assert sorted(table) == [("NA", 2), ("nan", 1)]
    assert table[("NA", 2)][3] == pytest.approx(0.7) and table[("nan", 1)][5] == pytest.approx(0.4)


def _oof_run(folder, cell_ids):
    folder.mkdir(parents=True)
    oof = pd.DataFrame({"ID": IDS})
    for c in range(NUM_CLASSES):
        oof[f"y{c}"] = [float(c == 0), float(c == 1)]
    for c in range(NUM_CLASSES):
        oof[f"p{c}"] = [0.9 * (c == 0), 0.9 * (c == 1)]
    oof.to_csv(folder / "oof.csv", index=False)
    cells = pd.DataFrame({"ID": cell_ids, "cell_id": [1, 1], "Label": ["0", "1"]})
    for c in range(NUM_CLASSES):
        cells[f"p{c}"] = [0.9 * (c == 0), 0.9 * (c == 1)]
    cells.to_csv(folder / "oof_cells.csv", index=False)


def test_compare_oof_keeps_ids_na_and_nan_and_names_a_bad_id(tmp_path):
    compare = load_script("tools/compare_oof.py")
    _oof_run(tmp_path / "good" / "fold0", IDS)
    row = compare.score_run(tmp_path / "good" / "fold0")
    assert row["images"] == 2 and row["image_mAP"] == 1.0
    assert row["cell_mAP_strict"] == row["cell_mAP_lenient"] == 1.0  # cells NA/1 and nan/1 kept apart
    _oof_run(tmp_path / "bad" / "fold0", ["NA", ""])
    with pytest.raises(SystemExit, match=r"oof_cells.csv: row 3: ID '' is empty"):
        compare.score_run(tmp_path / "bad" / "fold0")


def test_truth_keeps_ids_na_and_nan_and_names_a_bad_id(tmp_path):
    rows = "".join(f"{i},8,8,1,{lab},m{i}\n" for i, lab in zip(IDS, ("0|3", "5")))
    (tmp_path / "truth.csv").write_text("ID,ImageWidth,ImageHeight,cell_id,Label,EncodedMask\n" + rows)
    truth = metric.read_truth(tmp_path / "truth.csv")
    assert truth["ID"].tolist() == ["NA", "NA", "nan"] and truth["Label"].tolist() == [0, 3, 5]
    (tmp_path / "bad.csv").write_text("ID,ImageWidth,ImageHeight,cell_id,Label,EncodedMask\n"
                                      "NA,8,8,1,0,m\n../x,8,8,1,0,m\n")
    with pytest.raises(SystemExit, match=r"bad.csv: row 3: ID '\.\./x' contains a path separator"):
        metric.read_truth(tmp_path / "bad.csv")


def test_demo_manifest_of_a_legacy_demo_keeps_id_na(tmp_path):
    """A demo made before manifests: its files are listed from its tables, an image ``NA`` included."""
    (tmp_path / demo_data.CONFIG_NAME).write_text(json.dumps({"seed": 0}))
    (tmp_path / "train.csv").write_text("ID,Label\nNA,0\n")
    (tmp_path / "sample_submission.csv").write_text("ID,ImageWidth,ImageHeight,PredictionString\nnan,8,8,\n")
    names = demo_data.read_manifest(tmp_path)
    assert "train/NA_red.png" in names and "test/nan_red.png" in names
    assert "train_cell_truth/NA.png" in names
