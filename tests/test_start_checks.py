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
    args = {"S3_train_pipeline1.py": ["--HPA512_DIR", str(data), "--OUTPUT_DIR", str(tmp_path / "out")],
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


# every script's renamed and removed constants (issue 27): the old name stops before anything is read
RETIRED = [
    ("S0_make_demo_data.py", "OUT_DIR", "was renamed --COMPETITION_DIR"),
    ("S2_data_process.py", "DATA_DIR", "was renamed --COMPETITION_DIR"),
    ("S2_data_process.py", "OUT_DIR", "was renamed --HPA512_DIR (default 'input/hpa-512')"),
    ("S3_train_pipeline1.py", "DATA_DIR", "was renamed --HPA512_DIR (default 'input/hpa-512')"),
    ("S3_train_pipeline1.py", "PIPELINE", "was removed: S3 always trains pipeline 1"),
    ("S4.2_train_pipeline2.py", "COMP_DIR", "was renamed --COMPETITION_DIR"),
    ("S4.2_train_pipeline2.py", "PIPELINE", "was removed: S4.2 always trains pipeline 2"),
    ("S4.2_train_pipeline2.py", "LOSS", "was removed: S4.2's loss is the MIL loss"),
    ("S5_predict.py", "DATA_DIR", "was renamed --COMPETITION_DIR"),
    ("tools/make_pseudo_labels.py", "DATA_DIR", "was renamed --COMPETITION_DIR"),
]


@pytest.mark.parametrize("script,old,message", RETIRED)
def test_an_old_constant_name_says_what_became_of_it(tmp_path, script, old, message):
    mod = load_script(script)
    with pytest.raises(SystemExit) as e:
        mod.main([f"--{old}", str(tmp_path / "x")])
    assert str(e.value).startswith(f"--{old} {message}") and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []                            # stopped before anything was made
    new = {**getattr(mod, "_RENAMED", {}), **getattr(mod, "_REMOVED", {})}
    assert set(new) == {o for s, o, _ in RETIRED if s == script}    # the table lists every retired name
    if old in mod._RENAMED:                                          # the new name is a constant
        cfg = config.parse(dict(vars(mod)), [f"--{mod._RENAMED[old]}", "x"], quiet=True,
                           renamed=mod._RENAMED, removed=getattr(mod, "_REMOVED", {}))
        assert cfg[mod._RENAMED[old]] == "x" and old not in cfg


def test_pipeline_and_s42_loss_are_no_constants():
    """What a user must not change is set in main (test_s3 / test_s4 check the saved PIPELINE)."""
    for script in ("S3_train_pipeline1.py", "S4.2_train_pipeline2.py"):
        assert "PIPELINE" not in config.constants_of(vars(load_script(script)))
    assert "LOSS" not in config.constants_of(vars(load_script("S4.2_train_pipeline2.py")))
