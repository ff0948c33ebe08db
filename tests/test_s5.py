"""S5_predict end to end: S0 -> S2 -> S3 + S4.1 -> S4.2 -> S5 -> S6 on a few 128-px demo images with
tiny models trained for one step (pipeline 1 and pipeline 2, so the ensemble has 2 pipelines);
an image with zero cells; a missing channel file; batched vs one-forward-per-cell inference."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import load_script, tmpfs_run

from common import cells, fov, images, owned, segmentation
from common.competition import encoding
from common.constants import NUM_CLASSES
from common.predict import predict, views
from common.resize import resize_labels

ROOT = Path(__file__).resolve().parents[1]
ORIG = 128      # side of the demo images (the "original" resolution of the submission masks)
SHORT = 96      # the first test image is cut to ORIG wide x SHORT high (catches swapped H/W)
WORK = 64       # S2's IMAGE_SIZE: the working resolution, so masks must be upscaled 2x
TINY = ["--MODEL_NAME", "test_resnet", "--PRETRAINED", "false", "--EPOCHS", "1", "--MAX_TRAIN_STEPS", "1",
        "--WARMUP_EPOCHS", "0", "--NUM_WORKERS", "0", "--DEVICE", "cpu", "--FOLD", "-1"]
torch.set_num_threads(1)  # tiny tensors: more threads only contend (and the machine may be shared)




S0 = load_script("S0_make_demo_data.py")
S2 = load_script("S2_data_process.py")
S3 = load_script("S3_train_pipeline1.py")
S41 = load_script("S4.1_crop_cells.py")
S42 = load_script("S4.2_train_pipeline2.py")
S5 = load_script("S5_predict.py")
S6 = load_script("S6_evaluate.py")


def _cut_first_test_image(comp: Path) -> None:
    """Crop the first test image (channels, truth PNG, truth rows, sample size) to SHORT x ORIG."""
    sample = pd.read_csv(comp / "sample_submission.csv", dtype={"ID": str})
    iid = sample["ID"][0]
    images.write_channels(comp / "test", iid, images.read_image(comp / "test", iid)[:SHORT])
    truth_png = comp / "test_cell_truth" / f"{iid}.png"
    truth_map = images.read_label_png(truth_png)[:SHORT]
    images.write_label_png(truth_png, truth_map)
    sample.loc[0, "ImageHeight"] = SHORT
    sample.to_csv(comp / "sample_submission.csv", index=False)
    truth = pd.read_csv(comp / "test_cells.csv", dtype={"ID": str, "Label": str})
    masks = encoding.encode_label_map(truth_map)
    mine = truth["ID"] == iid
    truth = truth[~mine | truth["cell_id"].isin(list(masks))].copy()
    mine = truth["ID"] == iid
    truth.loc[mine, "ImageHeight"] = SHORT
    truth.loc[mine, "EncodedMask"] = truth.loc[mine, "cell_id"].map(masks)
    truth.to_csv(comp / "test_cells.csv", index=False)


@pytest.fixture(scope="module")
def e2e(tmp_path_factory) -> dict:
    """S0..S4.2 once (two 1-step runs), then S5 on the 3 test images (TTA 2, both runs)."""
    root = tmp_path_factory.mktemp("s5")
    comp, hpa, out = root / "comp", root / "hpa", root / "out"
    S0.main(["--COMPETITION_DIR", str(comp), "--N_TRAIN", "8", "--N_TEST", "3", "--IMAGE_SIZE", str(ORIG),
             "--MIN_CELLS", "4", "--MAX_CELLS", "8", "--NUM_WORKERS", "1", "--SEED", "5"])
    _cut_first_test_image(comp)
    S2.main(["--COMPETITION_DIR", str(comp), "--HPA512_DIR", str(hpa), "--IMAGE_SIZE", str(WORK),
             "--SEGMENTER", "builtin", "--NUM_WORKERS", "1"])
    r1 = S3.main(["--HPA512_DIR", str(hpa), "--OUTPUT_DIR", str(out), "--IMAGE_SIZE", str(WORK),
                  "--BATCH_SIZE", "4", *TINY])
    S41.main(["--HPA512_DIR", str(hpa), "--TRAIN_CSV", str(hpa / "train_all.csv"),
              "--COMP_TRAIN_DIR", str(comp / "train"), "--EXT_TRAIN_DIR", str(comp / "train_external"),
              "--CELL_SIZE", "32", "--NUM_WORKERS", "1"])
    r2 = S42.main(["--HPA512_DIR", str(hpa), "--TRAIN_CSV", str(hpa / "train_all.csv"),
                   "--COMPETITION_DIR", str(comp), "--OUTPUT_DIR", str(out), "--CELL_SIZE", "32",
                   "--CELLS_PER_IMAGE", "4", "--BATCH_SIZE", "2", *TINY])
    runs = {1: Path(r1["out_dir"]), 2: Path(r2["out_dir"])}
    assert all((r / "best.pth").is_file() for r in runs.values())
    sub = S5.main(["--COMPETITION_DIR", str(comp), "--HPA512_DIR", str(hpa), "--OUTPUT_DIR", str(out),
                   "--RUNS_DIR", str(out), "--DEVICE", "cpu", "--TTA", "2", "--BATCH_SIZE", "8",
                   "--N_OVERLAYS", "1"])
    sample = pd.read_csv(comp / "sample_submission.csv", dtype={"ID": str})
    return dict(comp=comp, hpa=hpa, out=out, runs=runs, sub=Path(sub), sample=sample)


def _labels(hpa: Path, image_id: str) -> np.ndarray:
    return images.load_masks(hpa / "test_cell_mask" / f"{image_id}.npz")[0]


def _by_mask(s: str, width: int, height: int) -> dict[str, dict[int, float]]:
    """{mask string: {class: confidence}} of one PredictionString (masks in first-seen order)."""
    out: dict[str, dict[int, float]] = {}
    for label, conf, mask in encoding.parse_prediction_string(s, width, height):
        assert label not in out.setdefault(mask, {}), f"class {label} twice for one cell"
        out[mask][label] = conf
    return out


def _flat(s: str, width: int, height: int) -> list[tuple[str, int, float]]:
    return [(m, c, p) for m, confs in _by_mask(s, width, height).items() for c, p in confs.items()]


def _size(e2e: dict, image_id: str) -> tuple[int, int]:
    """(ImageWidth, ImageHeight) of a test image in the sample submission."""
    row = e2e["sample"].set_index("ID").loc[image_id]
    return int(row["ImageWidth"]), int(row["ImageHeight"])


def _upscale(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize written out: output pixel i takes source pixel floor((i + 0.5) * n / N)."""
    rows = ((np.arange(height) + 0.5) * labels.shape[0] / height).astype(int)
    cols = ((np.arange(width) + 0.5) * labels.shape[1] / width).astype(int)
    return labels[np.ix_(rows, cols)]


def _copy_inputs(e2e: dict, dst: Path) -> tuple[Path, Path]:
    """A private copy of what S5 reads (sample submission, originals, S2's test images and masks)."""
    comp, hpa = dst / "comp", dst / "hpa"
    shutil.copytree(e2e["comp"] / "test", comp / "test")
    shutil.copy(e2e["comp"] / "sample_submission.csv", comp / "sample_submission.csv")
    for sub in ("test", "test_cell_mask"):
        shutil.copytree(e2e["hpa"] / sub, hpa / sub)
    return comp, hpa


def _s5_args(e2e: dict, comp: Path, hpa: Path, out: Path, *extra: str) -> list[str]:
    runs = ",".join(str(e2e["runs"][k]) for k in (1, 2))
    return ["--COMPETITION_DIR", str(comp), "--HPA512_DIR", str(hpa), "--OUTPUT_DIR", str(out),
            "--RUNS", runs, "--DEVICE", "cpu", "--TTA", "2", "--BATCH_SIZE", "8", "--N_OVERLAYS", "0", *extra]


# ----------------------------------------------------------------------------- end to end
def test_submission_rows_masks_at_original_size_and_19_classes_per_cell(e2e):
    sample, hpa = e2e["sample"], e2e["hpa"]
    sub = encoding.read_submission(e2e["sub"])
    assert sub["ID"].tolist() == sample["ID"].tolist()                   # one row per sample row, in order
    assert sub["ImageWidth"].tolist() == sample["ImageWidth"].tolist() == [ORIG] * len(sample)
    heights = [SHORT] + [ORIG] * (len(sample) - 1)
    assert sub["ImageHeight"].tolist() == sample["ImageHeight"].tolist() == heights
    preds = pd.read_csv(e2e["out"] / "cell_predictions.csv", dtype={"ID": str})
    n_cells = 0
    for row in sub.itertuples(index=False):
        labels = _labels(hpa, row.ID)
        assert labels.shape == (WORK, WORK)
        full = resize_labels(labels, (row.ImageHeight, row.ImageWidth))
        big = _upscale(labels, row.ImageHeight, row.ImageWidth)         # independent of cv2
        ids = cells.cell_ids(labels)
        assert ids, "the demo test images all have cells"
        per_mask = _by_mask(row.PredictionString, row.ImageWidth, row.ImageHeight)
        assert len(per_mask) == len(ids)                                 # every cell, once
        mine = preds[preds["ID"] == row.ID].set_index("cell_id")
        assert sorted(mine.index) == ids
        for (mask, confs), c in zip(per_mask.items(), ids):             # cells in id order
            assert sorted(confs) == list(range(NUM_CLASSES))             # all 19 classes per cell
            m = encoding.decode_binary_mask(mask, row.ImageHeight, row.ImageWidth)
            assert m.shape == (row.ImageHeight, row.ImageWidth)          # masks at the original size
            np.testing.assert_array_equal(m, full == c)                  # ... the S2 cell, resized
            iou = (m & (big == c)).sum() / (m | (big == c)).sum()
            assert iou > 0.9                                             # ... at its place
            np.testing.assert_allclose([confs[k] for k in range(NUM_CLASSES)],
                                       mine.loc[c, [f"c{k}" for k in range(NUM_CLASSES)]].to_numpy(float),
                                       atol=2e-6)
        n_cells += len(ids)
    assert len(preds) == n_cells
    assert (e2e["out"] / "overlays" / f"{sample['ID'][0]}.png").stat().st_size > 0
    assert not (e2e["out"] / "overlays" / f"{sample['ID'][1]}.png").exists()   # N_OVERLAYS 1


def test_ensemble_is_the_mean_of_the_two_pipelines(e2e):
    out, sample = e2e["out"], e2e["sample"]
    subs = {name: encoding.read_submission(out / f"submission{name}.csv").set_index("ID")["PredictionString"]
            for name in ("", "_cells", "_pipeline1", "_pipeline2", "_image_level", "_x_image")}
    n_diff = 0
    for iid in sample["ID"]:
        parsed = {k: _by_mask(v[iid], *_size(e2e, iid)) for k, v in subs.items()}
        assert all(list(p) == list(parsed[""]) for p in parsed.values())     # same cells, same order
        for mask in parsed[""]:
            ens, p1, p2 = (np.array([parsed[k][mask][c] for c in range(NUM_CLASSES)])
                           for k in ("", "_pipeline1", "_pipeline2"))
            np.testing.assert_allclose(ens, (p1 + p2) / 2, atol=2e-6)
            assert parsed["_cells"][mask] == parsed[""][mask]          # MULTIPLY_IMAGE_PRED off
            n_diff += np.abs(p1 - p2).max() > 1e-3
            img = np.array([parsed["_image_level"][mask][c] for c in range(NUM_CLASSES)])
            x_img = np.array([parsed["_x_image"][mask][c] for c in range(NUM_CLASSES)])
            np.testing.assert_allclose(x_img, ens * img, atol=2e-6)
        # image-level: the same probabilities for every cell of the image
        first = next(iter(parsed["_image_level"].values()))
        assert all(v == first for v in parsed["_image_level"].values())
    assert n_diff > 0   # the two runs really differ, so the mean above is a real check


def test_s6_scores_the_submission_above_zero(e2e, capsys):
    res = S6.main(["--SUBMISSION", str(e2e["sub"]), "--TRUTH", str(e2e["comp"] / "test_cells.csv"),
                   "--PLOTS", "false"])
    lines = capsys.readouterr().out.strip().splitlines()
    strict = float(lines[-2].removeprefix("mAP_strict="))
    assert lines[-2].startswith("mAP_strict=") and strict > 0
    assert res["strict"]["mAP"] > 0 and res["strict"]["mAP"] == pytest.approx(strict, abs=1e-4)


# ----------------------------------------------------------------------------- edge cases
def test_image_with_zero_cells_keeps_an_empty_row(e2e, tmp_path):
    comp, hpa = _copy_inputs(e2e, tmp_path)
    empty_id = e2e["sample"]["ID"][0]
    images.save_masks(hpa / "test_cell_mask" / f"{empty_id}.npz", np.zeros((WORK, WORK), np.uint16))
    out = tmp_path / "out"
    sub_path = S5.main(_s5_args(e2e, comp, hpa, out, "--N_OVERLAYS", "3"))
    sub = encoding.read_submission(sub_path)
    ref = encoding.read_submission(e2e["sub"])
    assert sub["ID"].tolist() == e2e["sample"]["ID"].tolist()
    got = sub.set_index("ID")["PredictionString"]
    assert got[empty_id] == ""
    for iid, s in ref.set_index("ID")["PredictionString"].items():      # the others are untouched
        if iid != empty_id:
            mine, theirs = _flat(got[iid], *_size(e2e, iid)), _flat(s, *_size(e2e, iid))
            assert s and [t[:2] for t in mine] == [t[:2] for t in theirs]
            np.testing.assert_allclose([t[2] for t in mine], [t[2] for t in theirs], atol=2e-6)
    for name in ("cells", "pipeline1", "pipeline2", "image_level", "x_image"):
        assert encoding.read_submission(out / f"submission_{name}.csv").set_index("ID")[
            "PredictionString"][empty_id] == ""
    preds = pd.read_csv(out / "cell_predictions.csv", dtype={"ID": str})
    assert empty_id not in set(preds["ID"]) and len(preds) > 0
    assert not (out / "overlays" / f"{empty_id}.png").exists()


def test_multiply_image_pred_submits_cells_times_image(e2e, tmp_path):
    out = tmp_path / "out"
    S5.main(_s5_args(e2e, e2e["comp"], e2e["hpa"], out, "--MULTIPLY_IMAGE_PRED", "true"))
    ref = e2e["out"]
    for name, ref_name in (("submission.csv", "submission_x_image.csv"),
                           ("submission_cells.csv", "submission_cells.csv")):
        got = encoding.read_submission(out / name).set_index("ID")["PredictionString"]
        want = encoding.read_submission(ref / ref_name).set_index("ID")["PredictionString"]
        for iid in e2e["sample"]["ID"]:
            mine, theirs = _flat(got[iid], *_size(e2e, iid)), _flat(want[iid], *_size(e2e, iid))
            assert [t[:2] for t in mine] == [t[:2] for t in theirs]
            np.testing.assert_allclose([t[2] for t in mine], [t[2] for t in theirs], atol=2e-6)
    # the product really differs from the cell ensemble (else the check above proves nothing)
    a = encoding.read_submission(out / "submission.csv")["PredictionString"].iloc[1]
    b = encoding.read_submission(out / "submission_cells.csv")["PredictionString"].iloc[1]
    assert a != b


@pytest.mark.parametrize("how", ["cells", "both"])
def test_image_pred_from_the_cells(e2e, tmp_path, how):
    """IMAGE_PRED cells: each image's prediction is the mean of its cells' ensemble probabilities;
    both: the average of that mean and the runs' own image outputs (the default, model)."""
    out = tmp_path / "out"
    S5.main(_s5_args(e2e, e2e["comp"], e2e["hpa"], out, "--IMAGE_PRED", how))
    subs = {k: encoding.read_submission(out / f"submission{k}.csv").set_index("ID")["PredictionString"]
            for k in ("_cells", "_image_level", "_x_image")}
    model_img = encoding.read_submission(e2e["out"] / "submission_image_level.csv").set_index("ID")
    n_checked = 0
    for iid in e2e["sample"]["ID"]:
        size = _size(e2e, iid)
        cells_ = _by_mask(subs["_cells"][iid], *size)
        if not cells_:
            continue
        probs = np.array([[c[k] for k in range(NUM_CLASSES)] for c in cells_.values()])
        want = probs.mean(0)
        if how == "both":
            own = next(iter(_by_mask(model_img.loc[iid, "PredictionString"], *size).values()))
            want = (want + np.array([own[k] for k in range(NUM_CLASSES)])) / 2
        img = _by_mask(subs["_image_level"][iid], *size)
        x_img = _by_mask(subs["_x_image"][iid], *size)
        for mask, p in cells_.items():
            np.testing.assert_allclose([img[mask][k] for k in range(NUM_CLASSES)], want, atol=2e-5)
            np.testing.assert_allclose([x_img[mask][k] for k in range(NUM_CLASSES)],
                                       [p[k] * want[k] for k in range(NUM_CLASSES)], atol=2e-5)
        n_checked += 1
    assert n_checked >= 2
    # the cells' mean is not the runs' image output (else the check proves nothing)
    assert not subs["_image_level"].equals(model_img["PredictionString"].reindex(subs["_image_level"].index))


def test_unknown_image_pred_is_rejected(e2e, tmp_path):
    with pytest.raises(SystemExit, match="IMAGE_PRED"):
        S5.main(_s5_args(e2e, e2e["comp"], e2e["hpa"], tmp_path / "out", "--IMAGE_PRED", "max"))


def test_missing_channel_file_is_named(e2e, tmp_path, capsys):
    comp, hpa = _copy_inputs(e2e, tmp_path)
    iid = e2e["sample"]["ID"][1]
    (hpa / "test" / f"{iid}.png").unlink()                             # no S2 outputs for this image:
    (hpa / "test_cell_mask" / f"{iid}.npz").unlink()                   # S5 reads the original itself
    out = tmp_path / "out"
    args = _s5_args(e2e, comp, hpa, out, "--SEGMENTER", "builtin", "--IMAGE_SIZE", str(WORK),
                    "--VARIANTS", "false")
    sub = encoding.read_submission(S5.main(args)).set_index("ID")
    assert "segmented here: 1" in capsys.readouterr().out
    masks = _by_mask(sub.loc[iid, "PredictionString"], *_size(e2e, iid))  # segmented and scored here
    assert masks and all(sorted(v) == list(range(NUM_CLASSES)) for v in masks.values())
    shutil.rmtree(out)
    no_weights = tmp_path / "no_hpa_weights"                            # the official networks are
    no_weights.mkdir()                                                  # looked for where S5 is told
    with pytest.raises((OSError, SystemExit, RuntimeError, ValueError)) as err:
        S5.main(_s5_args(e2e, comp, hpa, out, "--SEGMENTER", "hpa", "--HPA_SEG_DIR", str(no_weights),
                         "--IMAGE_SIZE", str(WORK), "--VARIANTS", "false"))
    assert str(no_weights) in str(err.value)


def test_corrupt_and_missing_images_keep_empty_rows_and_are_listed(e2e, tmp_path, capsys):
    comp, hpa = _copy_inputs(e2e, tmp_path)
    ids = e2e["sample"]["ID"].tolist()
    corrupt, missing, good = ids[0], ids[1], ids[2]
    for iid in (corrupt, missing):                                     # no S2 outputs for either
        (hpa / "test" / f"{iid}.png").unlink()
        (hpa / "test_cell_mask" / f"{iid}.npz").unlink()
    (comp / "test" / f"{corrupt}_green.png").write_bytes(b"\x89PNG not really")
    for p in (comp / "test").glob(f"{missing}_*"):
        p.unlink()
    out = tmp_path / "out"
    (out / "s5_failures.csv").parent.mkdir()
    (out / "s5_failures.csv").write_text("ID,reason\nstale,from an earlier run\n")
    owned.Record(out, "S5", "OUTPUT_DIR").finish(["s5_failures.csv"])  # S5's, from an earlier run
    args = _s5_args(e2e, comp, hpa, out, "--SEGMENTER", "builtin", "--IMAGE_SIZE", str(WORK))
    sub = encoding.read_submission(S5.main(args))
    assert sub["ID"].tolist() == ids                                   # every row, in order
    got = sub.set_index("ID")["PredictionString"]
    assert got[corrupt] == "" and got[missing] == "" and got[good] != ""
    for name in ("cells", "image_level"):
        assert len(encoding.read_submission(out / f"submission_{name}.csv")) == len(ids)
    fails = pd.read_csv(out / "s5_failures.csv", dtype={"ID": str}).set_index("ID")["reason"]
    assert sorted(fails.index) == sorted([corrupt, missing])
    assert f"{corrupt}_green.png" in fails[corrupt] and "decode" in fails[corrupt]
    assert f"{missing}_red.png" in fails[missing] and "missing" in fails[missing]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "submission.csv" in last and "2 of 3 images FAILED" in last
    env = json.loads((out / "s5_config.json").read_text())["environment"]    # what made the result
    assert env["device"] == "cpu" and env["packages"]["torch"] and env["cpu"]
    (out / "submission.csv").unlink()
    with pytest.raises(SystemExit) as err:                             # a pipeline can ask to notice
        S5.main([*args, "--FAIL_ON_ERRORS", "true"])
    assert err.value.code == 3 and (out / "submission.csv").is_file()
    for src, dst in ((e2e["comp"], comp), (e2e["hpa"], hpa)):           # all readable again:
        for sub in ("test", "test_cell_mask"):
            if (src / sub).is_dir():
                shutil.copytree(src / sub, dst / sub, dirs_exist_ok=True)
    S5.main(args)                                                      # the list is emptied
    assert len(pd.read_csv(out / "s5_failures.csv")) == 0
    assert "0 images failed" in capsys.readouterr().out.strip().splitlines()[-1]


@pytest.mark.parametrize("bad_id, why", [
    ("", r"ID '' is empty"),
    ("a" * 300, r"ID 'a{40}[.]{3}a{8}' is 300 characters long: at most 128, so that every file made"),
])
def test_empty_or_too_long_sample_id_stops_before_any_image(tmp_path, bad_id, why):
    """Read before the runs or any image: no trained run is needed to see the message."""
    comp = tmp_path / "comp"
    comp.mkdir()
    sample = comp / "sample_submission.csv"
    sample.write_text(f"ID,ImageWidth,ImageHeight,PredictionString\nimg1,8,8,\n{bad_id},8,8,\n")
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=rf"^{re.escape(str(sample))}: row 3: {why}") as e:
        S5.main(["--COMPETITION_DIR", str(comp), "--HPA512_DIR", str(tmp_path / "hpa"), "--OUTPUT_DIR",
                 str(out), "--RUNS", str(tmp_path / "no_run"), "--DEVICE", "cpu"])
    assert "\n" not in str(e.value) and not out.exists()


@pytest.mark.parametrize("bad_id", ["../evil", "sub/evil", "/tmp/evil", "..\\evil"])
def test_hostile_sample_ids_are_rejected_before_anything_is_written(e2e, tmp_path, bad_id):
    comp, hpa = _copy_inputs(e2e, tmp_path)
    sample = pd.read_csv(comp / "sample_submission.csv", dtype={"ID": str})
    sample.loc[1, "ID"] = bad_id
    sample.to_csv(comp / "sample_submission.csv", index=False)
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=r"sample_submission\.csv: row 3: ID .*evil"):
        S5.main(_s5_args(e2e, comp, hpa, out, "--N_OVERLAYS", "3"))
    assert not out.exists() and not (tmp_path / "evil.png").exists()     # not even an empty folder


@pytest.mark.parametrize("column,value", [("ImageWidth", "wide"), ("ImageHeight", ""), ("ImageWidth", "-4")])
def test_bad_sizes_in_the_sample_submission_are_named(e2e, tmp_path, column, value):
    comp, hpa = _copy_inputs(e2e, tmp_path)
    sample = pd.read_csv(comp / "sample_submission.csv", dtype=str)
    sample.loc[2, column] = value
    sample.to_csv(comp / "sample_submission.csv", index=False)
    with pytest.raises(SystemExit, match=rf"sample_submission\.csv: row 4: {column} .*positive whole number"):
        S5.main(_s5_args(e2e, comp, hpa, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_image_size_zero_stops_s5_at_start(e2e, tmp_path):
    with pytest.raises(SystemExit, match="IMAGE_SIZE 0: must be a positive integer"):
        S5.main(_s5_args(e2e, e2e["comp"], e2e["hpa"], tmp_path / "out", "--IMAGE_SIZE", "0"))
    assert not (tmp_path / "out").exists()


def test_combine_ensembles_then_multiplies_then_weights_the_border():
    rng = np.random.default_rng(0)
    cell = [rng.random((3, NUM_CLASSES), dtype=np.float32) for _ in range(3)]
    image = [rng.random(NUM_CLASSES, dtype=np.float32) for _ in range(3)]
    weights, pipelines, border = [1.0, 2.0, 1.0], [1, 2, 1], np.array([True, False, False])
    out = predict.combine(cell, image, weights, pipelines, border, predict.Mix("both", True, 0.5, True))
    assert list(out) == predict.variant_names(pipelines, True) == \
        ["ensemble", "cells", "pipeline1", "pipeline2", "image_level", "x_image"]
    ens = predict.ensemble(cell, weights)
    img = predict.image_prediction(predict.ensemble(image, weights), ens, "both")
    edge = np.where(border[:, None], 0.5, 1.0).astype(np.float32)
    np.testing.assert_array_equal(out["ensemble"], ens * img[None] * edge)
    np.testing.assert_array_equal(out["cells"], ens * edge)
    np.testing.assert_array_equal(out["pipeline1"], predict.ensemble([cell[0], cell[2]], [1.0, 1.0]) * edge)
    np.testing.assert_array_equal(out["pipeline2"], cell[1] * edge)
    np.testing.assert_array_equal(out["image_level"], np.broadcast_to(img, ens.shape) * edge)
    assert all(v.dtype == np.float32 for v in out.values())
    plain = predict.combine(cell, image, weights, [1, 1, 1], border, predict.Mix("model", False, 1.0, False))
    assert list(plain) == ["ensemble"] and plain["ensemble"] is not None
    np.testing.assert_array_equal(plain["ensemble"], ens)


# ----------------------------------------------------------------------------- batched inference
@pytest.mark.parametrize("pipeline", [1, 2])
def test_batched_and_per_cell_inference_agree(e2e, pipeline):
    pred = predict.RunPredictor(e2e["runs"][pipeline], "cpu", tta=3, batch_size=7, amp=False)
    plain = predict.RunPredictor(e2e["runs"][pipeline], "cpu", tta=1, batch_size=7, amp=False)
    assert pred.pipeline == pipeline and pred.batch_size // pred.tta == 2   # several chunks per image
    if pipeline == 2:
        assert pred.from_original                                          # S4.1 cropped the originals
    for iid in e2e["sample"]["ID"]:
        image = images.read_rgby(e2e["hpa"] / "test" / f"{iid}.png")
        labels = _labels(e2e["hpa"], iid)
        original = images.read_image(e2e["comp"] / "test", iid)
        ids = cells.cell_ids(labels)
        f = fov.FieldOfView.of(image, labels, ids, original)
        batched, image_probs = pred.predict(f)
        per_cell = pred.predict_per_cell(f)
        assert pred.batch_size == 7                                        # restored
        assert batched.shape == per_cell.shape == (len(ids), NUM_CLASSES)
        assert image_probs.shape == (NUM_CLASSES,)
        np.testing.assert_allclose(batched, per_cell, atol=1e-5, rtol=0)
        assert np.ptp(batched, axis=0).max() > 1e-4                        # cells differ: order matters
        assert np.abs(batched - plain.predict(f)[0]).max() > 1e-5  # TTA is used
        # S5 builds the views once per image for runs of the same view_key and passes them in
        assert plain.view_key == pred.view_key
        for shared in (plain.views(f), plain.prepare(f)):
            np.testing.assert_array_equal(pred.predict(f, views=shared)[0], batched)


def test_an_image_that_cannot_be_segmented_keeps_an_empty_row(e2e, tmp_path, monkeypatch):
    class Broken:
        name = "broken"

        def segment(self, images):
            raise RuntimeError("out of memory")

    monkeypatch.setattr(segmentation, "get_segmenter", lambda *a, **k: Broken())
    comp, hpa = _copy_inputs(e2e, tmp_path)
    iid = e2e["sample"]["ID"][2]
    (hpa / "test_cell_mask" / f"{iid}.npz").unlink()                    # S5 must segment it itself
    out = tmp_path / "out"
    sub = encoding.read_submission(S5.main(_s5_args(e2e, comp, hpa, out, "--VARIANTS", "false")))
    got = sub.set_index("ID")["PredictionString"]
    assert got[iid] == "" and all(got[i] for i in e2e["sample"]["ID"] if i != iid)
    fails = pd.read_csv(out / "s5_failures.csv", dtype={"ID": str})
    assert fails["ID"].tolist() == [iid]
    assert "segmentation failed: RuntimeError: out of memory" in fails["reason"][0]


def test_p1_variant_cellpool_scores_pipeline1_from_one_pass(e2e, tmp_path):
    out = tmp_path / "out"
    run = e2e["runs"][1]
    args = _s5_args(e2e, e2e["comp"], e2e["hpa"], out, "--P1_VARIANT", "cellpool",
                    "--P1_CELLPOOL_STRIDE", "16")
    args[args.index("--RUNS") + 1] = str(run)
    S5.main(args)
    preds = pd.read_csv(out / "cell_predictions.csv", dtype={"ID": str})
    ref = predict.RunPredictor(run, "cpu", tta=2, view=views.ViewChoice("cellpool", 16))
    masked = predict.RunPredictor(run, "cpu", tta=2)
    differs = False
    for iid, rows in preds.groupby("ID"):
        image = images.read_rgby(e2e["hpa"] / "test" / f"{iid}.png")
        labels = _labels(e2e["hpa"], iid)
        want = ref.predict(fov.FieldOfView.of(image, labels, rows["cell_id"].tolist()))[0]
        got = rows[[f"c{c}" for c in range(NUM_CLASSES)]].to_numpy()
        np.testing.assert_allclose(got, want, atol=2e-6)
        plain = masked.predict(fov.FieldOfView.of(image, labels, rows["cell_id"].tolist()))[0]
        differs |= bool(np.abs(plain - want).max() > 1e-4)
    assert differs  # not the masked scoring under another name
    with pytest.raises(ValueError, match="variant"):
        predict.RunPredictor(run, "cpu", view=views.ViewChoice("nope"))


def test_checkpoint_last_reads_each_runs_last_epoch(e2e, tmp_path):
    """CHECKPOINT=last.pth (the demo's S5): every run folder is read at its full training checkpoint,
    exactly as if its last.pth were listed in RUNS, and not at best.pth."""
    runs = tmp_path / "runs"
    for k, r in e2e["runs"].items():  # private copies whose last.pth differs from best.pth
        dst = runs / f"run{k}"
        shutil.copytree(r, dst)
        state = torch.load(dst / "last.pth", map_location="cpu", weights_only=True)
        for key in ("model", "ema"):
            if state.get(key):
                state[key] = {n: (t + 0.05 * torch.randn_like(t)) if t.is_floating_point() else t
                              for n, t in state[key].items()}
        torch.save(state, dst / "last.pth")
    folders = [runs / "run1", runs / "run2"]

    def submission(name: str, run_list, *extra: str) -> pd.Series:
        out = tmp_path / name
        S5.main([*_s5_args(e2e, e2e["comp"], e2e["hpa"], out, *extra),
                 "--RUNS", ",".join(str(p) for p in run_list)])
        return encoding.read_submission(out / "submission.csv").set_index("ID")["PredictionString"]

    last = submission("last", folders, "--CHECKPOINT", "last.pth")
    files = submission("files", [p / "last.pth" for p in folders])
    best = submission("best", folders)
    pd.testing.assert_series_equal(last, files)
    assert not last.equals(best)


# ----------------------------------------------------------------------------- faults (issue 25)
def _s5_cmd(e2e: dict, comp: Path, hpa: Path, out: Path, *extra: str) -> list[str]:
    import sys

    return [sys.executable, str(ROOT / "S5_predict.py"), *_s5_args(e2e, comp, hpa, out, *extra)]


def test_two_s5_into_one_folder_one_runs_the_other_stops_at_start(e2e, tmp_path):
    import subprocess
    import time

    comp, hpa = _copy_inputs(e2e, tmp_path)
    out = tmp_path / "out"
    first = subprocess.Popen(_s5_cmd(e2e, comp, hpa, out, "--TTA", "8", "--BATCH_SIZE", "1"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not ((out / ".lock").is_file() and (out / ".lock").stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(SystemExit) as second:                          # in-process: it starts at once
        S5.main(_s5_args(e2e, comp, hpa, out, "--TTA", "1"))
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert f"S5: {out} is being written by S5 (pid {first.pid} on " in str(second.value.code)
    saved = json.loads((out / "s5_config.json").read_text())          # one consistent set: the first's
    assert saved["TTA"] == 8
    sub = encoding.read_submission(out / "submission.csv")
    assert sub["ID"].tolist() == e2e["sample"]["ID"].tolist()
    rerun = S5.main(_s5_args(e2e, comp, hpa, tmp_path / "again", "--TTA", "8", "--BATCH_SIZE", "1"))
    assert rerun.read_bytes() == (out / "submission.csv").read_bytes()
    assert not (out / ".lock").exists()


def test_a_run_with_fewer_pipelines_leaves_no_stale_comparison_files(e2e, tmp_path):
    comp, hpa = _copy_inputs(e2e, tmp_path)
    out = tmp_path / "out"
    S5.main(_s5_args(e2e, comp, hpa, out, "--N_OVERLAYS", "2"))
    assert (out / "submission_pipeline1.csv").is_file() and len(list((out / "overlays").glob("*.png"))) == 2
    S5.main([*_s5_args(e2e, comp, hpa, out, "--N_OVERLAYS", "1"), "--RUNS", str(e2e["runs"][2])])
    assert not (out / "submission_pipeline1.csv").exists() and not (out / "submission_pipeline2.csv").exists()
    assert (out / "submission_cells.csv").is_file() and len(list((out / "overlays").glob("*.png"))) == 1


def test_s5_full_disk_writes_the_essential_outputs_first(e2e, tmp_path):
    """A disk with room for the submission but not for the optional outputs: the essential files are
    complete and equal to a normal run's, then S5 stops naming the file it could not write."""
    comp, hpa = _copy_inputs(e2e, tmp_path)
    ref = tmp_path / "ref"
    S5.main(_s5_args(e2e, comp, hpa, ref, "--N_OVERLAYS", "3"))
    essential = ["submission.csv", "cell_predictions.csv", "cells.csv", "images.csv", "s5_config.json",
                 "s5_failures.csv"]
    pages = sum(-(-(ref / n).stat().st_size // 4096) for n in essential) + 2  # + the lock, a margin
    out, snap = tmp_path / "out", tmp_path / "snap"
    proc = tmpfs_run({out: pages * 4096}, _s5_cmd(e2e, comp, hpa, out, "--N_OVERLAYS", "3"), snapshot=snap,
                     env={"OMP_NUM_THREADS": "1"})                    # as this process: the same floats
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"S5: cannot write {out}/") and "No space left on device" in last
    assert "submission.csv and cell_predictions.csv are complete" in last and "Traceback" not in proc.stderr
    wrote = [line for line in proc.stdout.splitlines() if line.startswith("S5: wrote ")][-1]
    assert wrote.startswith(f"S5: wrote {out / 'submission.csv'};")  # not "and 5 comparison submissions"
    for name in ("submission.csv", "cell_predictions.csv", "cells.csv", "images.csv"):
        assert (snap / name).read_bytes() == (ref / name).read_bytes()
    assert not [p for p in snap.rglob("*") if p.name.endswith(".tmp")]


def test_an_optional_output_that_fails_is_listed_and_stops_s5_after_the_others(e2e, tmp_path, monkeypatch,
                                                                             capsys):
    """A failing optional output (here an overlay) is a warning line; the other outputs are written,
    then S5 ends with one line and exit status 1 (README: any write error is exit 1)."""
    comp, hpa = _copy_inputs(e2e, tmp_path)

    def broken(*args, **kw):
        raise RuntimeError("no renderer")

    monkeypatch.setattr(S5.plots, "plot_cell_overlay", broken)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as err:
        S5.main(_s5_args(e2e, comp, hpa, out, "--N_OVERLAYS", "1"))
    assert str(err.value.code).startswith("S5: 1 optional output(s) not written, the first: ")
    assert "RuntimeError: no renderer" in str(err.value.code) and "\n" not in str(err.value.code)
    assert "S5: warning: " in capsys.readouterr().err
    assert all((out / n).is_file() for n in ("submission.csv", "report.html", "submission_cells.csv"))
    assert not (out / "overlays").exists() or not any((out / "overlays").iterdir())


def test_a_corrupt_s2_file_is_prepared_again_from_the_original(e2e, tmp_path, capsys):
    comp, hpa = _copy_inputs(e2e, tmp_path)
    seg = ("--SEGMENTER", "builtin", "--IMAGE_SIZE", str(WORK))
    ref = S5.main(_s5_args(e2e, comp, hpa, tmp_path / "ref", *seg))
    iid = e2e["sample"]["ID"][2]
    (hpa / "test" / f"{iid}.png").write_bytes(b"\x89PNG cut short")
    out = tmp_path / "out"
    sub = S5.main(_s5_args(e2e, comp, hpa, out, "--SEGMENTER", "builtin", "--IMAGE_SIZE", str(WORK)))
    assert len(pd.read_csv(out / "s5_failures.csv")) == 0
    assert f"S5: {iid}: S2's file is unreadable" in capsys.readouterr().out
    got = encoding.read_submission(sub).set_index("ID")["PredictionString"]
    assert got[iid] == encoding.read_submission(ref).set_index("ID")["PredictionString"][iid] != ""
