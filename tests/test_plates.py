"""S5 --IMAGES on the screen's formats: an OME-Zarr plate (2 wells x 2 fields, written here with ome-zarr)
and OME-TIFFs, channels picked by name (CHANNEL_NAMES) in a stored order other than the canonical one,
give the cells of the same pixels as per-channel PNG files; plate fields carry plate, well and field."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
import zarr
from conftest import ROOT, load_script
from ome_zarr.format import FormatV04
from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata
from own_images_data import field, train_tiny, write_channel_files

from common import config, constants
from common.predict import cell_tables, fields
from common.report import report

torch.set_num_threads(1)
S3 = load_script("S3_train_pipeline1.py")
S5 = load_script("S5_predict.py")
CANONICAL = ["Tubulin", "GFP", "DAPI", "Calreticulin"]    # microtubules, protein, nucleus, ER: CHANNEL_NAMES
IN_PLATE = ["DAPI", "Tubulin", "Calreticulin", "GFP"]     # the order the plate stores them in
IN_TIFF = ["GFP", "Calreticulin", "DAPI", "Tubulin"]      # the order the OME-TIFFs store them in
WELLS = {"A/1": "A1", "B/03": "B03"}                      # path -> the well's name, as the metadata spells it
SUFFIXES = ["_ch00", "_ch01", "_ch02", "_ch03"]
SIDE = 96


def _fields() -> dict[str, np.ndarray]:
    """``{plate_well_field: H x W x 4 RGBY}``: uint16, one field uint8 (a plate may hold either)."""
    out = {}
    for w, well in enumerate(WELLS.values()):
        for k in range(2):
            img = field(40 + 2 * w + k, SIDE, SIDE)
            out[f"P1_{well}_{k}"] = (img // 257).astype(np.uint8) if (w, k) == (1, 1) else img
    return out


def _stored(img: np.ndarray, order: list[str]) -> np.ndarray:
    """C x H x W: the channels of an RGBY field in the stored ``order`` (a stain it lacks: its first)."""
    return np.stack([img[..., CANONICAL.index(n) if n in CANONICAL else 0] for n in order])


def write_plate(folder: Path, images: dict, fmt=None, order=IN_PLATE, z: int = 0) -> Path:
    """An OME-Zarr plate named P1 (NGFF 0.5, or ``fmt``) of the fields of :func:`_fields`: ``c, y, x``, or
    with ``z`` ``t, c, z, y, x`` with the field in plane ``z - 1`` of ``z`` (zeros before it)."""
    group = zarr.open_group(folder, mode="w", zarr_format=2 if isinstance(fmt, FormatV04) else 3)
    write_plate_metadata(group, ["A", "B"], ["1", "03"], list(WELLS), fmt=fmt, name="P1", field_count=2)
    window = {"start": 0, "end": 65535, "min": 0, "max": 65535}
    omero = {"channels": [{"label": n, "color": "FFFFFF", "window": window} for n in order]}
    for path, well in WELLS.items():
        row, col = path.split("/")
        wg = group.require_group(row).require_group(col)
        write_well_metadata(wg, [{"path": "0"}, {"path": "1"}], fmt=fmt)
        for k in range(2):
            data = _stored(images[f"P1_{well}_{k}"], order)
            if z:
                stack = np.zeros((1, len(order), z, SIDE, SIDE), data.dtype)
                stack[0, :, z - 1] = data
                data = stack
            write_image(data, wg.require_group(str(k)), axes="tczyx" if z else "cyx", scale_factors=[],
                        fmt=fmt, omero=omero)
    return folder


def write_ome_tiffs(folder: Path, images: dict, labels=IN_TIFF) -> None:
    """``{ID}.ome.tif``: C x Y x X in the order IN_TIFF, the channels named ``labels`` in the OME-XML."""
    folder.mkdir(parents=True, exist_ok=True)
    for image_id, img in images.items():
        meta = {"axes": "CYX", "Channel": {"Name": list(labels)}}
        tifffile.imwrite(folder / f"{image_id}.ome.tif", _stored(img, IN_TIFF), ome=True,
                         photometric="minisblack", metadata=meta)


@pytest.fixture(scope="module")
def screen(tmp_path_factory) -> dict:
    """One 1-step run; S5 on the plate itself, on a folder of OME-TIFFs (one lacking GFP) and on the same
    pixels as per-channel PNG files, named alike."""
    root = tmp_path_factory.mktemp("plates")
    run = train_tiny(S3, root)
    images = _fields()
    plate = write_plate(root / "my_plate.zarr", images)
    ome = root / "ome"
    write_ome_tiffs(ome, images)
    write_ome_tiffs(ome, {"nogfp": images["P1_A1_0"]}, labels=["YFP", *IN_TIFF[1:]])
    png = root / "png"
    write_channel_files(png, images, SUFFIXES, ".png")
    common = ["--RUNS", str(run), "--DEVICE", "cpu", "--TTA", "1", "--BATCH_SIZE", "8", "--N_OVERLAYS", "0",
              "--SEGMENTER", "builtin", "--IMAGE_SIZE", "64", "--VARIANTS", "false"]
    names = ["--CHANNEL_NAMES", ",".join(CANONICAL)]
    out = {k: root / f"out_{k}" for k in ("plate", "ome", "png")}
    S5.main([*common, *names, "--IMAGES", str(plate), "--OUTPUT_DIR", str(out["plate"])])
    S5.main([*common, *names, "--IMAGES", str(ome), "--OUTPUT_DIR", str(out["ome"])])
    S5.main([*common, "--IMAGES", str(png), "--CHANNEL_SUFFIXES", ",".join(SUFFIXES),
             "--OUTPUT_DIR", str(out["png"])])
    return dict(root=root, out=out, images=images, plate=plate)


def _read(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(out / name, dtype={"image": str, "ID": str, "plate": str, "well": str},
                       keep_default_na=False, na_values={"reason": []})


def _cfg(*argv: str):
    return config.parse(vars(S5), ["--SEGMENTER", "builtin", "--IMAGE_SIZE", "64", *argv], update=False,
                        quiet=True)


def _loaded(folder: Path, *argv: str) -> dict:
    """``{ID: (original, cell map at the original size)}`` of a folder read by ``FieldSource``."""
    source = fields.FieldSource(_cfg(*argv), *fields.discover(folder, SUFFIXES))
    return {i: (f.original, f.labels_full()) for i in source.ids for f in [source.load(i)]}


# ----------------------------------------------------------------------------- S5 on a plate
def test_a_plate_and_ome_tiffs_give_the_cells_of_the_same_pixels_as_png_files(screen):
    out, ids = screen["out"], sorted(screen["images"])
    png = _read(out["png"], "cells.csv")
    assert sorted(set(png["image"])) == ids and len(png) >= 4 * 3
    for kind in ("plate", "ome"):
        cells = _read(out[kind], "cells.csv").drop(columns=["plate", "well", "field"], errors="ignore")
        pd.testing.assert_frame_equal(cells, png)
        images_csv = _read(out[kind], "images.csv").drop(columns=["plate", "well", "field"], errors="ignore")
        pd.testing.assert_frame_equal(images_csv, _read(out["png"], "images.csv"))
        for i in ids:
            label = f"labels/{constants.label_file(i)}"
            assert (out[kind] / label).read_bytes() == (out["png"] / label).read_bytes(), (kind, i)
        assert (out[kind] / "submission.csv").read_bytes() == (out["png"] / "submission.csv").read_bytes()


def test_plate_tables_carry_plate_well_and_field_and_plain_ones_do_not(screen):
    out = screen["out"]
    cells, images_csv = _read(out["plate"], "cells.csv"), _read(out["plate"], "images.csv")
    assert list(cells.columns) == ["image", "plate", "well", "field", *report.CELL_COLUMNS[1:]]
    assert list(images_csv.columns) == ["image", "plate", "well", "field", *cell_tables.IMAGE_COLUMNS[1:]]
    assert [tuple(r) for r in images_csv[["image", "plate", "well", "field"]].to_numpy()] == [
        ("P1_A1_0", "P1", "A1", 0), ("P1_A1_1", "P1", "A1", 1), ("P1_B03_0", "P1", "B03", 0),
        ("P1_B03_1", "P1", "B03", 1)]
    assert (cells["image"] == cells["plate"] + "_" + cells["well"] + "_" + cells["field"].astype(str)).all()
    parquet = pd.read_parquet(out["plate"] / "cells.parquet")  # the same columns, typed, value for value
    assert list(parquet.columns) == list(cells.columns) and parquet["field"].dtype == "int64"
    pd.testing.assert_frame_equal(parquet, cells, check_dtype=False)
    for kind in ("ome", "png"):   # files on no plate: the tables as they always were
        assert list(_read(out[kind], "cells.csv").columns) == list(report.CELL_COLUMNS)
        assert list(_read(out[kind], "images.csv").columns) == cell_tables.IMAGE_COLUMNS
    frame = _read(out["png"], "images.csv")
    assert cell_tables.with_location(frame, None) is frame


def test_a_missing_channel_name_is_one_failure_line_naming_the_field_and_its_channels(screen):
    fails = _read(screen["out"]["ome"], "s5_failures.csv")
    assert list(fails["ID"]) == ["nogfp"]
    why = fails["reason"][0]
    assert why == ("nogfp.ome.tif: no channel named 'GFP' (CHANNEL_NAMES); its channels: 'YFP', "
                   "'Calreticulin', 'DAPI', 'Tubulin'"), why
    for kind in ("plate", "png"):
        assert _read(screen["out"][kind], "s5_failures.csv").empty


# ----------------------------------------------------------------------------- reading, without S5
def test_channels_by_name_or_by_index_from_either_ngff_version_are_the_same_pixels(screen, tmp_path):
    write_channel_files(tmp_path / "png", screen["images"], SUFFIXES, ".png")
    png = _loaded(tmp_path / "png")
    v04 = write_plate(tmp_path / "v04.zarr", screen["images"], fmt=FormatV04(), order=CANONICAL[::-1])
    by_name = _loaded(v04, "--CHANNEL_NAMES", ",".join(CANONICAL))
    by_index = _loaded(screen["plate"], "--TIFF_PLANES", ",".join(str(IN_PLATE.index(n)) for n in CANONICAL))
    assert sorted(png) == sorted(by_name) == sorted(by_index) == sorted(screen["images"])
    for i, (original, labels) in png.items():
        for other in (by_name, by_index):
            assert np.array_equal(other[i][0], original) and np.array_equal(other[i][1], labels), i


def test_a_z_stack_in_a_plate_is_refused_unless_TIFF_Z_PLANE_picks_a_plane(screen, tmp_path):
    names = ["--CHANNEL_NAMES", ",".join(CANONICAL)]
    flat = _loaded(screen["plate"], *names)
    single = write_plate(tmp_path / "single.zarr", screen["images"], z=1)    # t = z = 1: read as it is
    assert all(np.array_equal(v[0], flat[i][0]) for i, v in _loaded(single, *names).items())
    stack = write_plate(tmp_path / "stack.zarr", screen["images"], z=2)      # the field in plane 1 of 2
    source = fields.FieldSource(_cfg(*names), *fields.discover(stack, SUFFIXES))
    with pytest.raises(fields.FieldFailed, match=r"stack.zarr/A/1/0: a Z-stack of 2 planes \(axes tczyx\), "
                                                 "not channels: set TIFF_Z_PLANE to the plane to take"):
        source.load("P1_A1_0")
    picked = _loaded(stack, *names, "--TIFF_Z_PLANE", "1")
    assert all(np.array_equal(v[0], flat[i][0]) for i, v in picked.items())


def test_a_folder_of_plates_and_files_lists_both_and_a_clash_names_both(screen, tmp_path):
    write_plate(tmp_path / "p.zarr", screen["images"])
    images = screen["images"]
    write_channel_files(tmp_path, {"P1_A1_0": images["P1_A1_0"], "lone": images["P1_A1_1"]}, SUFFIXES, ".png")
    found, fails = fields.discover(tmp_path, SUFFIXES)
    assert [f.image_id for f in found] == ["P1_A1_1", "P1_B03_0", "P1_B03_1", "lone"]
    assert fails == [{"ID": "P1_A1_0", "reason": "two layouts claim this ID: P1_A1_0_ch00.png, "
                      "P1_A1_0_ch01.png, P1_A1_0_ch02.png, P1_A1_0_ch03.png, p.zarr/A/1/0"}]
    source = fields.FieldSource(_cfg(), found, fails)
    loc = source.location_columns(["lone", "P1_B03_1"])
    assert loc.astype(object).where(loc.notna(), None).values.tolist() == [
        ["lone", None, None, None], ["P1_B03_1", "P1", "B03", 1]]


def test_a_well_without_metadata_is_one_failure_and_its_plate_goes_on(screen, tmp_path):
    plate = write_plate(tmp_path / "broken.zarr", screen["images"])
    (plate / "B" / "03" / "zarr.json").unlink()
    found, fails = fields.discover(plate, SUFFIXES)
    assert [f.image_id for f in found] == ["P1_A1_0", "P1_A1_1"]
    why = "broken.zarr/B/03: no readable well metadata (no 'well' in a zarr.json or .zattrs there)"
    assert fails == [{"ID": "P1_B03", "reason": why}]


def test_the_plate_budget_is_taken_from_the_shape_before_reading(screen):
    n = 4 * SIDE * SIDE
    cfg = _cfg("--CHANNEL_NAMES", ",".join(CANONICAL), "--MAX_PIXELS", str(n - 1))
    source = fields.FieldSource(cfg, *fields.discover(screen["plate"], SUFFIXES))
    with pytest.raises(fields.FieldFailed, match=rf"too large to decode: {n} pixels \(4 x {SIDE} x {SIDE}; "
                                                 rf"MAX_PIXELS {n - 1}\)"):
        source.load("P1_A1_0")


def test_a_chunk_over_MAX_PIXELS_and_a_plain_tiff_under_CHANNEL_NAMES_are_listed(screen, tmp_path):
    wide = write_plate(tmp_path / "wide.zarr", screen["images"], order=[*IN_PLATE, "Actin", "Golgi"])
    n = 5 * SIDE * SIDE                                 # 4 planes fit; a chunk of all 6 does not
    names = ["--CHANNEL_NAMES", ",".join(CANONICAL)]
    source = fields.FieldSource(_cfg(*names, "--MAX_PIXELS", str(n)), *fields.discover(wide, SUFFIXES))
    why = rf"wide.zarr/A/1/0: too large to decode: chunks of {6 * SIDE * SIDE} pixels \(6 x {SIDE} x {SIDE}; "
    with pytest.raises(fields.FieldFailed, match=why + rf"MAX_PIXELS {n}\)"):
        source.load("P1_A1_0")
    plain = tmp_path / "plain"
    plain.mkdir()
    data = _stored(screen["images"]["P1_A1_0"], CANONICAL)
    tifffile.imwrite(plain / "t.tif", data, photometric="minisblack")
    source = fields.FieldSource(_cfg(*names), *fields.discover(plain, SUFFIXES))
    with pytest.raises(fields.FieldFailed, match=r"^t.tif: its metadata names no channel; CHANNEL_NAMES"):
        source.load("t")
    by_index = fields.FieldSource(_cfg(), *fields.discover(plain, SUFFIXES)).load("t").original
    assert np.array_equal(by_index, _loaded(screen["plate"], *names)["P1_A1_0"][0])


@pytest.mark.parametrize("names, why", [("a,b,c", "give 4 names"), ("a,b,a,c", "different channel"),
                                        ('["a","b"," ","c"]', "not empty")])
def test_CHANNEL_NAMES_is_four_different_names_or_none(names, why, tmp_path):
    with pytest.raises(SystemExit, match=rf"S5: --CHANNEL_NAMES .*({why})"):
        S5.main(["--IMAGES", str(tmp_path), "--CHANNEL_NAMES", names, "--OUTPUT_DIR", str(tmp_path / "o")])


def test_the_kaggle_notebook_needs_no_zarr():
    make_notebook = load_script("tools/make_notebook.py")
    required, optional = make_notebook.needed_packages((ROOT / "S5_predict.py").read_text())
    assert "zarr" in optional and "zarr" not in required and "ome_zarr" not in required
