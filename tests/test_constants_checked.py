"""Every constant a value can break is checked at the step's start (issue 32): one line naming it and
what it must be, before anything is read or written."""
from __future__ import annotations

import pytest
from conftest import load_script

from common import config

# (script, constant, bad value, what the line says after "--NAME value: ")
BAD = [
    ("S5_predict.py", "TTA", "0", "must be an integer 1..8"),
    ("S5_predict.py", "TTA", "9", "must be an integer 1..8"),
    ("S5_predict.py", "RUN_TTA", "2,0", "must be a list of integers 1..8"),
    ("S5_predict.py", "RUN_WEIGHTS", "0,0", "must add up to more than 0"),
    ("S5_predict.py", "CHUNK", "0", "must be a positive integer"),
    ("S5_predict.py", "SHARD", "3/2", "need n >= 1 and 0 <= i < n"),
    ("S5_predict.py", "CSV_MAX_CELLS", "-1", "must be an integer >= 0"),
    ("S5_predict.py", "RUN_WEIGHTS", "1,nan", "must be a list of finite numbers >= 0"),
    ("S5_predict.py", "RUN_WEIGHTS", "1,-1", "must be a list of finite numbers >= 0"),
    ("S5_predict.py", "RESCALE_PERCENTILES", "99,1", "the low percentile must come first"),
    ("S5_predict.py", "RESCALE_PERCENTILES", "0,101", "must be a list of 2 percentiles 0..100"),
    ("S5_predict.py", "RESCALE_PERCENTILES", "5", "must be a list of 2 percentiles 0..100"),
    ("S5_predict.py", "TIFF_PLANES", "0,1", "must be a list of 4 plane numbers >= 0"),
    ("S5_predict.py", "TIFF_PLANES", "0,0,1,2", "must be 4 different plane numbers >= 0"),
    ("S5_predict.py", "TIFF_PLANES", "-1,0,1,2", "must be a list of 4 plane numbers >= 0"),
    ("S5_predict.py", "CHANNEL_SUFFIXES", "_a,_b,_c", "must be a list of 4 file-name endings"),
    ("S5_predict.py", "CHANNEL_SUFFIXES", "_a,_a,_b,_c", "must be 4 different file-name endings"),
    ("S5_predict.py", "LIMIT", "-1", "must be an integer >= 0"),
    ("S5_predict.py", "N_OVERLAYS", "-2", "must be an integer >= 0"),
    ("S5_predict.py", "BATCH_SIZE", "0", "must be a positive integer"),
    ("S5_predict.py", "MIN_CONF", "2", "must be a finite number >= 0 and <= 1"),
    ("S5_predict.py", "THRESHOLD", "-0.5", "must be a finite number >= 0 and <= 1"),
    ("S5_predict.py", "BORDER_WEIGHT", "-1", "must be a finite number >= 0"),
    ("S5_predict.py", "SUBMISSION", "cells.csv", "is the name of another output of S5"),
    ("S5_predict.py", "SUBMISSION", "s5_failures.csv", "is the name of another output of S5"),
    ("S5_predict.py", "SUBMISSION", "../x.csv", "must be a plain file name ending in .csv"),
    ("S5_predict.py", "SUBMISSION", "sub/x.csv", "must be a plain file name ending in .csv"),
    ("S5_predict.py", "SUBMISSION", "x.txt", "must be a plain file name ending in .csv"),
    ("S2_data_process.py", "N_FOLDS", "1", "must be an integer >= 2"),
    ("S2_data_process.py", "SEG_BATCH", "0", "must be a positive integer"),
    ("S2_data_process.py", "NUM_WORKERS", "-1", "must be an integer >= 0"),
    ("S3_train_pipeline1.py", "P_FLIP", "1.5", "must be a finite number >= 0 and <= 1"),
    ("S3_train_pipeline1.py", "DROPOUT", "-0.1", "must be a finite number >= 0 and <= 1"),
    ("S3_train_pipeline1.py", "MSD_SAMPLES", "0", "must be a positive integer"),
    ("S3_train_pipeline1.py", "INTENSITY_RANGE", "1.1,0.6", "the low factor must come first"),
    ("S3_train_pipeline1.py", "CACHE_GB", "-1", "must be a finite number >= 0"),
    ("S3_train_pipeline1.py", "ADAM_EPS", "0", "must be a finite number > 0"),
    ("S3_train_pipeline1.py", "OPTIMIZER", "sgd", "must be one of 'adamw', 'adam'"),
    ("S3_train_pipeline1.py", "EMA_DECAY", "2", "must be a finite number >= 0 and <= 1"),
    ("S3_train_pipeline1.py", "CELLPOOL_CELLS", "0", "must be a positive integer"),
    ("S4.2_train_pipeline2.py", "CELLS_PER_IMAGE", "0", "must be a positive integer"),
    ("S4.2_train_pipeline2.py", "MIL_TOPK", "0", "must be a positive integer"),
    ("S4.2_train_pipeline2.py", "MIL_LSE_R", "0", "must be a finite number > 0"),
    ("S4.2_train_pipeline2.py", "PSEUDO_W", "-1", "must be a finite number >= 0"),
    ("S4.2_train_pipeline2.py", "NUM_WORKERS", "-1", "must be an integer >= 0"),
    ("S4.1_crop_cells.py", "CROP_MARGIN", "-0.1", "must be a finite number >= 0"),
    ("S4.1_crop_cells.py", "LIMIT", "-1", "must be an integer >= 0"),
    ("S6_evaluate.py", "IOU", "0", "must be a finite number > 0 and <= 1"),
    ("S6_evaluate.py", "IOU", "1.5", "must be a finite number > 0 and <= 1"),
    ("S6_evaluate.py", "LEVEL", "0", "must be a finite number > 0 and <= 1"),
    ("S6_evaluate.py", "N_BOOT", "0", "must be a positive integer"),
    ("S6_evaluate.py", "REPORT_MISTAKES", "-1", "must be an integer >= 0"),
]
# every path a step could read or write, inside the test's folder
PATHS = ("COMPETITION_DIR", "HPA512_DIR", "OUTPUT_DIR", "RUNS_DIR", "CELLS_DIR", "TRAIN_CSV", "SUBMISSION",
         "TRUTH", "COMP_TRAIN_DIR", "EXT_TRAIN_DIR")


@pytest.mark.parametrize("script,name,value,says", BAD)
def test_a_bad_constant_stops_at_start_with_one_line(tmp_path, script, name, value, says):
    mod = load_script(script)
    step = script.split("_")[0]
    args = [a for k in PATHS if k in mod.__dict__ and k != name
            for a in (f"--{k}", str(tmp_path / "x" / k.lower()) + (".csv" if k == "SUBMISSION" else ""))]
    with pytest.raises(SystemExit) as e:
        mod.main([*args, f"--{name}", value])
    msg = str(e.value.code)
    assert msg.startswith(f"{step}: --{name} ") and says in msg and "\n" not in msg, msg
    assert list(tmp_path.iterdir()) == []                           # nothing read, nothing written


def test_require_items_and_choice():
    cfg = {"L": [1, 2, 3, 4], "S": ["a", "b"], "C": "x"}
    assert config.require_items(cfg, "L", "ints", config.is_int, length=4, distinct=True) == [1, 2, 3, 4]
    with pytest.raises(SystemExit, match=r"^S9: --S \['a', 'b'\]: must be a list of 3 names$"):
        config.require_items(cfg, "S", "names", lambda x: isinstance(x, str), length=3, step="S9")
    with pytest.raises(SystemExit, match=r"^--C 'x': must be one of 'y', 'z'$"):
        config.require_choice(cfg, "C", ("y", "z"))
    config.require_positive({"T": 8}, "T", maximum=8)
    with pytest.raises(SystemExit, match=r"--T 9: must be an integer 1\.\.8"):
        config.require_positive({"T": 9}, "T", maximum=8)
