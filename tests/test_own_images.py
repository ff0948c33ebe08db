"""S5 on one's own images (--IMAGES: multi-channel TIFFs, per-channel files with a suffix map) and the
per-cell results of both modes (cells.csv, images.csv, labels/{ID}.png): one tiny run shared."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from conftest import load_script
from own_images_data import (
    declared_tiff,
    field,
    gzip_bomb,
    train_tiny,
    write_channel_bytes_name,
    write_channel_files,
    write_competition,
    write_tiffs,
)

from common import constants, images
from common.competition import encoding
from common.constants import CLASS_NAMES, file_stem
from common.report.report import read_model

torch.set_num_threads(1)
S3 = load_script("S3_train_pipeline1.py")
S5 = load_script("S5_predict.py")
SUFFIXES = ["_ch00", "_ch01", "_ch02", "_ch03"]
SIZES = {"square": (96, 96), "wide": (72, 112)}          # (H, W): one field non-square


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """One 1-step run; S5 on a TIFF folder, a per-channel folder and the competition layout (twice)."""
    root = tmp_path_factory.mktemp("own")
    run = train_tiny(S3, root)
    images = {name: field(k, *hw) for k, (name, hw) in enumerate(SIZES.items(), start=1)}
    tif = root / "tif"
    write_tiffs(tif, images, planes=(3, 0, 2, 1))                  # planes in another order
    write_tiffs(tif, {"few": images["square"]}, planes=(0, 1))    # only 2 planes
    (tif / "garbled.tif").write_bytes(b"II*\x00 not really a tiff")
    write_tiffs(tif, {"twice": images["square"]})
    write_channel_files(tif, {"twice": images["square"]}, ["_red", "_green", "_blue", "_yellow"], ".png")
    chan = root / "chan"
    write_channel_files(chan, images, SUFFIXES, ".png")
    write_channel_files(chan, {"nogreen": images["square"]}, SUFFIXES[:1] + SUFFIXES[2:], ".png")
    write_channel_files(chan, {"mixed": images["square"]}, SUFFIXES[:3], ".tif")
    write_channel_files(chan, {"mixed": images["wide"][..., 3:]}, SUFFIXES[3:], ".tif")
    write_competition(root / "comp", images)
    common = ["--RUNS", str(run), "--DEVICE", "cpu", "--TTA", "2", "--BATCH_SIZE", "8", "--N_OVERLAYS", "1",
              "--SEGMENTER", "builtin", "--IMAGE_SIZE", "64", "--HPA512_DIR", str(root / "no_s2"),
              "--COMPETITION_DIR", str(root / "comp")]
    out = {k: root / f"out_{k}" for k in ("tif", "chan", "comp", "plain")}
    S5.main([*common, "--IMAGES", str(tif), "--TIFF_PLANES", "3,0,2,1", "--OUTPUT_DIR", str(out["tif"])])
    S5.main([*common, "--IMAGES", str(chan), "--CHANNEL_SUFFIXES", ",".join(SUFFIXES),
             "--OUTPUT_DIR", str(out["chan"])])
    S5.main([*common, "--OUTPUT_DIR", str(out["comp"])])
    S5.main([*common, "--OUTPUT_DIR", str(out["plain"]), "--CELL_TABLES", "false", "--REPORT", "false"])
    return dict(root=root, out=out, images=images, common=common)


def _read(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(out / name, dtype={"image": str, "ID": str}, keep_default_na=False,
                       na_values={"reason": []})


def _check_tables_agree_with_label_maps(out: Path, sizes: dict) -> pd.DataFrame:
    cells_df, images_df = _read(out, "cells.csv"), _read(out, "images.csv")
    assert sorted(images_df["image"]) == sorted(sizes)
    assert list(cells_df.columns[:8]) == ["image", "cell_id", "x", "y", "area", "touches_border", "top_class",
                                          "top_prob"] and list(cells_df.columns[8:]) == list(CLASS_NAMES)
    for image_id, (h, w) in sizes.items():
        lab = cv2.imread(str(out / "labels" / constants.label_file(image_id)), cv2.IMREAD_UNCHANGED)
        assert lab.dtype == np.uint16 and lab.shape == (h, w), (image_id, lab.dtype, lab.shape)
        mine = cells_df[cells_df["image"] == image_id].set_index("cell_id")
        ids = sorted(int(i) for i in np.unique(lab) if i)
        assert ids and ids == sorted(mine.index), (image_id, ids, sorted(mine.index))
        row = images_df.set_index("image").loc[image_id]
        assert (row["width"], row["height"], row["n_cells"]) == (w, h, len(ids))
        for c in ids:
            ys, xs = np.nonzero(lab == c)
            assert mine.loc[c, "area"] == len(ys)
            assert abs(mine.loc[c, "x"] - xs.mean()) < 1 and abs(mine.loc[c, "y"] - ys.mean()) < 1
            edge = ys.min() == 0 or xs.min() == 0 or ys.max() == h - 1 or xs.max() == w - 1
            assert mine.loc[c, "touches_border"] == int(edge)
        probs = mine[list(CLASS_NAMES)].to_numpy()
        assert (mine["top_class"] == [CLASS_NAMES[k] for k in probs.argmax(1)]).all()
        assert np.allclose(mine["top_prob"], probs.max(1))
        assert np.allclose(row[list(CLASS_NAMES)].to_numpy(float), (probs >= 0.5).mean(0))
    return cells_df


def _failures(out: Path) -> dict[str, str]:
    df = _read(out, "s5_failures.csv")
    return dict(zip(df["ID"], df["reason"]))


def test_tiff_folder_two_sizes_and_its_broken_fields(runs):
    out = runs["out"]["tif"]
    _check_tables_agree_with_label_maps(out, SIZES)
    fails = _failures(out)
    assert set(fails) == {"few", "garbled", "twice"}
    assert "2 plane(s)" in fails["few"] and "TIFF_PLANES" in fails["few"]
    assert "garbled.tif" in fails["garbled"] and "cannot decode" in fails["garbled"]
    assert "twice.tif" in fails["twice"] and "twice_red.png" in fails["twice"]
    sub = encoding.read_submission(out / "submission.csv").set_index("ID")
    assert sorted(sub.index) == sorted(SIZES)  # fields never read have no size, so no row
    for image_id, (h, w) in SIZES.items():
        assert (sub.loc[image_id, "ImageHeight"], sub.loc[image_id, "ImageWidth"]) == (h, w)
        assert sub.loc[image_id, "PredictionString"]
    assert (out / "report.html").is_file()


def test_suffix_map_reads_the_same_fields_as_the_tiffs(runs):
    tif = _check_tables_agree_with_label_maps(runs["out"]["tif"], SIZES)
    chan = _check_tables_agree_with_label_maps(runs["out"]["chan"], SIZES)
    # the same pixels in both layouts (16-bit, planes reordered): the same cells and probabilities
    assert np.allclose(tif.iloc[:, 8:].to_numpy(float), chan.iloc[:, 8:].to_numpy(float), atol=1e-5)
    key = ["image", "cell_id", "area"]
    assert (tif[key].to_numpy() == chan[key].to_numpy()).all()
    fails = _failures(runs["out"]["chan"])
    assert set(fails) == {"nogreen", "mixed"}
    assert "nogreen_ch01.*" in fails["nogreen"] and "missing" in fails["nogreen"]
    assert "sizes differ" in fails["mixed"] and "mixed_ch03.tif 72 x 112" in fails["mixed"]


def test_competition_layout_cells_match_cell_predictions(runs):
    out = runs["out"]["comp"]
    cells_df = _check_tables_agree_with_label_maps(out, SIZES)
    preds = _read(out, "cell_predictions.csv")
    assert preds[["ID", "cell_id"]].astype(str).values.tolist() == \
        cells_df[["image", "cell_id"]].astype(str).values.tolist()
    assert np.array_equal(preds[[f"c{k}" for k in range(len(CLASS_NAMES))]].to_numpy(float),
                          cells_df[list(CLASS_NAMES)].to_numpy(float))
    # the label maps hold the cells of the submission's masks, id for id
    sub = encoding.read_submission(out / "submission.csv").set_index("ID")
    for image_id, (h, w) in SIZES.items():
        lab = images.read_label_png(out / "labels" / f"{image_id}.png")
        string = sub.loc[image_id, "PredictionString"]
        masks = {m for _, _, m in encoding.parse_prediction_string(string, w, h)}
        assert masks == set(encoding.encode_label_map(lab).values())


def test_new_outputs_leave_the_submission_unchanged_and_old_ones_are_removed(runs):
    comp, plain = runs["out"]["comp"], runs["out"]["plain"]
    for name in ("submission.csv", "cell_predictions.csv"):
        assert (comp / name).read_bytes() == (plain / name).read_bytes()
    new = ("cells.csv", "images.csv", "labels/square.png", "report.html")
    assert all((comp / n).exists() for n in new) and not any((plain / n).exists() for n in new)
    # a run with them off after a run with them on leaves none of the former's
    S5.main([*runs["common"], "--OUTPUT_DIR", str(comp), "--CELL_TABLES", "false", "--REPORT", "false",
             "--VARIANTS", "false"])
    assert not any((comp / n).exists() for n in new)
    assert (comp / "submission.csv").read_bytes() == (plain / "submission.csv").read_bytes()


def test_a_missing_or_empty_folder_stops_with_one_line(runs, tmp_path):
    for folder in (tmp_path / "absent", tmp_path):
        (tmp_path / "notes.txt").write_text("not an image")
        with pytest.raises(SystemExit, match=rf"--IMAGES {folder}: (no such folder|no field of view).*_red"):
            S5.main([*runs["common"], "--IMAGES", str(folder), "--OUTPUT_DIR", str(tmp_path / "o")])


# ----------------------------------------------------------------------------- names and pixel data
NAMES = {"Image 1": (64, 80), "Zelle_é": (72, 72), "-ctrl": (80, 64)}   # (H, W)
COMPETITION_SUFFIXES = ["_red", "_green", "_blue", "_yellow"]


@pytest.fixture(scope="module")
def odd(runs) -> dict:
    """S5 on a folder of names a microscope writes (spaces, accents, a leading '-', bytes that are not
    UTF-8), 12-bit data beside the same data at full range, and inputs that must be refused."""
    root = runs["root"]
    folder = root / "odd"
    folder.mkdir(exist_ok=True)
    write_channel_files(folder, {n: field(10 + k, *hw) for k, (n, hw) in enumerate(NAMES.items())},
                        COMPETITION_SUFFIXES, ".png")
    write_channel_bytes_name(folder, b"bad\xff", field(20, 64, 64), COMPETITION_SUFFIXES)
    d12 = field(21, 80, 80) >> 4                                        # 12-bit camera data in 16-bit files
    full = ((d12.astype(np.uint64) * 65535 + 2047) // 4095).astype(np.uint16)
    write_tiffs(folder, {"twelve": d12, "full": full})
    tifffile.imwrite(folder / "zstack.tif", np.moveaxis(field(22, 64, 64), -1, 0).copy(), imagej=True,
                     metadata={"axes": "ZYX"})
    declared_tiff(folder / "giant.tif")
    gzip_bomb(folder / "bomb_red.tif.gz", members=10)
    write_channel_files(folder, {"bomb": field(23, 64, 64)}, COMPETITION_SUFFIXES[1:], ".png")
    secret = root / "secret.txt"
    secret.write_bytes(b"hunter2:x:0:0::/home:/bin/sh\n")
    (folder / "link.tif").symlink_to(secret)
    out = root / "out_odd"
    S5.main([*runs["common"], "--IMAGES", str(folder), "--OUTPUT_DIR", str(out), "--MAX_PIXELS", "4000000"])
    return {"out": out, "fails": _failures(out)}


def test_names_with_spaces_accents_or_a_leading_dash_are_fields_and_bad_bytes_are_listed(odd):
    out = odd["out"]
    read = {**NAMES, "twelve": (80, 80), "full": (80, 80)}
    _check_tables_agree_with_label_maps(out, read)            # rows keep the names; labels/ by file_stem
    files = sorted(p.name for p in (out / "labels").iterdir())
    assert files == sorted(constants.label_file(n) for n in read)
    assert all(f.isascii() and " " not in f and not f.startswith("-") for f in files)
    assert file_stem("Image 1").startswith("Image_1~") and file_stem("twelve") == "twelve"
    sub = _read(out, "submission.csv")  # S6 reads competition IDs only
    assert sorted(sub["ID"]) == sorted(read) and sub["PredictionString"].str.len().gt(0).all()
    assert "not valid UTF-8" in odd["fails"]["bad\\xff"] and "bad\\xff_" in odd["fails"]["bad\\xff"]
    report = read_model(out)  # data.json and the pages' data
    assert sorted(f["id"] for f in report["fields"]) == sorted(read)
    assert all((out / "report" / f["src"]).is_file() for f in report["fields"])
    assert {f["id"]: f["src"] for f in report["fields"]} == {n: f"{file_stem(n)}.jpg" for n in read}
    cells = _read(out, "cells.csv")                            # the report's cells are cells.csv's, per name
    ids = [f["id"] for f in report["fields"]]
    per_field = pd.Series([ids[k] for k in report["cells"]["field"]]).value_counts().to_dict()
    assert per_field == cells["image"].value_counts().to_dict()


def test_12_bit_fields_give_the_cells_of_the_same_data_at_full_range(odd):
    cells_df = _read(odd["out"], "cells.csv").set_index("image")
    twelve, full = cells_df.loc["twelve"], cells_df.loc["full"]
    assert len(twelve) >= 3
    assert twelve.reset_index(drop=True).equals(full.reset_index(drop=True))


def test_stacks_giants_bombs_and_links_are_listed_with_short_reasons(odd):
    fails = odd["fails"]
    assert set(fails) == {"bad\\xff", "zstack", "giant", "bomb", "link"}
    assert "a Z-stack of 4 planes (axes ZYX), not channels: set TIFF_Z_PLANE" in fails["zstack"]
    assert "too large to decode: 1024000000 pixels (4 x 16000 x 16000; MAX_PIXELS 4000000)" in fails["giant"]
    assert "bomb_red.tif.gz: too large to decode: gunzips to more than" in fails["bomb"]
    assert "cannot decode image (not a PNG, JPEG or TIFF file)" in fails["link"]
    assert all(0 < len(r) < 300 and "hunter2" not in r for r in fails.values()), fails
