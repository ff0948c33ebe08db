"""The original's 22 models as named recipes: the fact sheet's numbers, the schedules, the ensemble."""
import math

import pytest
import torch

from common import config, recipes
from common.training import schedules

R = recipes.RECIPES


def test_22_recipes_with_the_fact_sheets_models_and_folds():
    assert len(R) == 22
    p1 = {n for n, r in R.items() if r["script"] == "S3"}
    assert len(p1) == 12 and len([n for n in p1 if "_masked_" in n]) == 7
    assert sorted(R[n]["constants"]["FOLD"] for n in p1 if "_center_" in n) == [0, 1, 2, 3, 4]
    c128 = [n for n, r in R.items() if r["input"] == "cells_128"]
    c256 = [n for n, r in R.items() if r["input"] == "cells_256"]
    assert len(c128) == 4 and len(c256) == 6
    assert R["p1_densenet121_center_f2"]["constants"]["MODEL_NAME"] == "densenet121.ra_in1k"
    assert R["p2_effb0_c256_f0"]["constants"]["CELL_SIZE"] == 256
    for name, r in R.items():  # the name ends with the fold; the run folder is name minus fold
        c = r["constants"]
        assert name.endswith(f"_f{c['FOLD']}") and c["RUN_NAME"] == name[: -len(f"_f{c['FOLD']}")]
        assert c["EPOCHS"] == 15 and c["BATCH_SIZE"] == 32 and c["OPTIMIZER"] == "adam"


def test_schedule_a_gives_the_fact_sheets_lr_in_every_epoch():
    lrs = schedules.epoch_lrs(R["p1_rexnet150_masked_f0"]["constants"])
    want = [1e-4] + [1e-3 * (1 + math.cos(math.pi * k / 14)) / 2 for k in range(14)]
    assert lrs == pytest.approx(want, rel=1e-12)
    assert schedules.epoch_lrs(R["p2_effb0_c256_f0"]["constants"]) == pytest.approx(want, rel=1e-12)


def test_schedule_b_gives_the_fact_sheets_lr_in_every_epoch():
    lrs = schedules.epoch_lrs(R["p1_densenet121_center_f3"]["constants"])
    assert lrs == [3e-4] * 4 + [1.5e-4] * 3 + [7.5e-5] * 3 + [3e-5] * 5


def test_epoch_table_scheduler_sets_the_epochs_lr_on_every_update():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = schedules.build_scheduler(R["p1_densenet121_center_f0"]["constants"], opt, updates_per_epoch=3)
    seen = []
    for u in range(15 * 3):
        sched.step_update(u)
        seen.append(opt.param_groups[0]["lr"])
    assert seen[::3] == schedules.epoch_lrs(R["p1_densenet121_center_f0"]["constants"])
    state = sched.state_dict()
    sched.load_state_dict(state)
    assert sched.lr_at(44) == 3e-5


def test_label_augmentations_match_the_fact_sheet():
    for name, r in R.items():
        c = r["constants"]
        if "_center_" not in name:  # masked models and pipeline 2: no label augmentation
            assert (c["P_GREEN_TO_NEGATIVE"], c["P_GREEN_FROM_OTHER"], c["P_INTENSITY"]) == (0, 0, 0), name
            continue
        fold = c["FOLD"]
        assert c["P_GREEN_TO_NEGATIVE"] == 0.05
        assert c["P_GREEN_FROM_OTHER"] == (0.05 if fold in (2, 4) else 0.0), name
        assert c["P_INTENSITY"] == (0.05 if fold in (3, 4) else 0.0), name
        assert c["INTENSITY_RANGE"] == [0.6, 1.1]
    masked = [r["constants"] for n, r in R.items() if "_masked_" in n]
    assert all(c["P_COARSE_DROPOUT"] == 0.7 and c["LOSS"] == "focal_sum" and c["SCHEDULE"] == "A"
               for c in masked)
    center = [r["constants"] for n, r in R.items() if "_center_" in n]
    assert all(c["LOSS"] == "lovasz" and c["SCHEDULE"] == "B" and c["ADAM_EPS"] == 1e-5 for c in center)


def test_original_ensemble_counts_104_outputs_with_the_stated_shares():
    outs = recipes.ensemble_outputs("original")
    assert sum(outs.values()) == 104
    p1 = sum(n for r, n in outs.items() if R[r]["script"] == "S3")
    assert p1 == 36 and round(p1 / 104, 2) == 0.35
    assert recipes.ENSEMBLES["original"]["multiply_image_pred"] is False
    with pytest.raises(SystemExit, match="unknown ENSEMBLE"):
        recipes.ensemble_outputs("nope")


def _namespace():
    return {"RECIPE": "", "MODEL_NAME": "resnet18", "FOLD": 0, "LR": 3e-4, "EPOCHS": 20}


def test_recipe_applies_and_explicit_overrides_win_and_are_recorded(capsys):
    rec = {"r1": {"MODEL_NAME": "densenet121", "FOLD": 2, "LR": 1e-4}}
    cfg = config.parse(_namespace(), ["--RECIPE", "r1", "--LR", "5e-4"], recipes=rec, quiet=True)
    assert (cfg.MODEL_NAME, cfg.FOLD, cfg.LR, cfg.RECIPE) == ("densenet121", 2, 5e-4, "r1")
    assert cfg.OVERRIDES == {"RECIPE": "r1", "LR": 5e-4}
    plain = config.parse(_namespace(), ["--EPOCHS", "3"], recipes=rec, quiet=True)
    assert plain.MODEL_NAME == "resnet18" and plain.OVERRIDES == {"EPOCHS": 3}
    with pytest.raises(SystemExit, match="unknown --RECIPE"):
        config.parse(_namespace(), ["--RECIPE", "r2"], recipes=rec, quiet=True)
    with pytest.raises(SystemExit) as e:
        config.parse(_namespace(), ["--RECIPE", "list"], recipes=rec, recipe_table="TABLE", quiet=True)
    assert e.value.code == 0 and "TABLE" in capsys.readouterr().out


def test_recipe_setting_an_unknown_constant_is_refused():
    with pytest.raises(SystemExit, match="does not have"):
        config.parse(_namespace(), ["--RECIPE", "r"], recipes={"r": {"NOPE": 1}}, quiet=True)


_SCRIPTS = {"S3": "S3_train_pipeline1.py", "S4.2": "S4.2_train_pipeline2.py"}


def _recipe_cfg(name: str, *extra: str):
    from conftest import load_script

    mod = load_script(_SCRIPTS[R[name]["script"]])
    cfg = config.parse(vars(mod), ["--RECIPE", name, *extra], recipes=recipes.for_script(R[name]["script"]),
                       quiet=True)
    cfg["PIPELINE"] = mod._PIPELINE  # as the script's main sets it
    return cfg


def test_every_recipe_is_accepted_by_its_script():
    for name, r in R.items():
        cfg = _recipe_cfg(name)
        assert cfg.RECIPE == name and all(cfg[k] == v for k, v in r["constants"].items()), name


@pytest.mark.slow
def test_every_recipe_builds_its_model_and_takes_one_training_step():
    """pretrained=False, tiny sizes by override: each of the 9 backbones x pipeline, one Adam step."""
    from common.models import models
    from common.training import train

    seen = set()
    for name, r in R.items():
        key = (r["script"], r["constants"]["MODEL_NAME"])
        if key in seen:
            continue
        seen.add(key)
        cfg = _recipe_cfg(name, "--PRETRAINED", "false", "--DEVICE", "cpu")
        model = models.build_model(cfg)
        opt = train.build_optimizer(cfg, model)
        if r["script"] == "S3":
            batch = {"image": torch.randn(2, 4, 64, 64), "label": torch.eye(19)[:2]}
        else:
            batch = {"image": torch.randn(2, 3, 4, 32, 32), "label": torch.eye(19)[:2]}
        model.train()
        loss = model(batch)["loss"]
        assert torch.isfinite(loss), name
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert len(seen) == 13  # 7 backbones in pipeline 1 (center: densenet121 again), 6 in pipeline 2


def test_gpu_check_runs_end_to_end_at_tiny_sizes(capsys):
    """benchmarks/gpu_check.py --QUICK on the CPU: builds a family, steps, prints the table."""
    from conftest import load_script

    mod = load_script("benchmarks/gpu_check.py")
    rows = mod.main(["--QUICK", "true", "--FAMILIES", "1", "--DDP", "false"])
    assert len(rows) == 1 and rows[0][1]["ok"] and rows[0][1]["train_ips"] > 0
    out = capsys.readouterr().out
    assert "GPU-h/recipe" in out and "HPA segmentation" in out
    assert len(mod.families()) == 17  # 7 pipeline-1 (model, size) + 10 pipeline-2


def test_the_real_plan_skips_finished_runs_and_resumes_interrupted_ones(tmp_path):
    """tools/recipes.py plan (run_all.sh --real): done / resume / new from each run folder."""
    from conftest import load_script

    tool = load_script("tools/recipes.py")
    names = ["p2_effb0_c256_f0", "p1_effb0_masked_f3", "p2_effb0_c128_f2"]
    done, cut = tmp_path / recipes.run_dir(names[0]), tmp_path / recipes.run_dir(names[1])
    for folder, epochs in ((done, 15), (cut, 4)):
        folder.mkdir(parents=True)
        (folder / "last.pth").write_bytes(b"x")
        rows = "".join(f"{e},0.1\n" for e in range(1, epochs + 1))
        (folder / "summary.csv").write_text("epoch,lr\n" + rows)
    plan = tool.plan(names, tmp_path)
    assert plan == [("S3", names[1], "resume", 0), ("S4.2", names[2], "new", 128),
                    ("S4.2", names[0], "done", 256)]  # pipeline 1 first, then by cell size
    assert tool.plan(names[1:2], tmp_path, epochs=4)[0][2] == "done"  # --epochs overrides EPOCHS
    with pytest.raises(SystemExit, match="unknown recipe"):
        tool.select("p9_nope_f0")
