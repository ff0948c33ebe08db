"""Bad values stop each step at its start, naming the constant (issue 15); the shared check."""
from __future__ import annotations

import pytest
from conftest import load_script

from common import config


@pytest.mark.parametrize("script,name,value", [
    ("S3_train_pipeline1.py", "IMAGE_SIZE", "0"),
    ("S3_train_pipeline1.py", "IMAGE_SIZE", "-1"),
    ("S4.1_crop_cells.py", "CELL_SIZE", "0"),
    ("S4.2_train_pipeline2.py", "CELL_SIZE", "-8"),
])
def test_sizes_not_positive_stop_at_start(tmp_path, script, name, value):
    mod = load_script(script)
    data = tmp_path / "hpa"
    data.mkdir()
    (data / "train_all.csv").write_text("ID,Label,is_ext,fold\na,0,0,0\n")
    args = {"S3_train_pipeline1.py": ["--DATA_DIR", str(data), "--OUTPUT_DIR", str(tmp_path / "out")],
            "S4.1_crop_cells.py": ["--HPA512_DIR", str(data), "--TRAIN_CSV", str(data / "train_all.csv")],
            "S4.2_train_pipeline2.py": ["--HPA512_DIR", str(data), "--TRAIN_CSV", str(data / "train_all.csv"),
                                        "--OUTPUT_DIR", str(tmp_path / "out")]}[script]
    with pytest.raises(SystemExit, match=rf"--{name} {value}: must be a positive integer"):
        mod.main([*args, f"--{name}", value])
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["hpa", "train_all.csv"]  # nothing written


def test_require_positive():
    cfg = {"A": 3, "B": 0, "C": True, "D": 2.0, "E": 16}
    config.require_positive(cfg, "A", "E")
    config.require_positive(cfg, "E", minimum=16)
    for name in ("B", "C", "D"):
        with pytest.raises(SystemExit, match=rf"S9: --{name} .*: must be a positive integer"):
            config.require_positive(cfg, name, step="S9")
    with pytest.raises(SystemExit, match=r"--A 3: must be an integer >= 16"):
        config.require_positive(cfg, "A", minimum=16)
