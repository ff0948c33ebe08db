"""Mask strings, label-map encoding, prediction strings and submission files (common.competition.encoding)."""
from __future__ import annotations

import base64
import zlib

import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_util

from common.competition import encoding
from common.images import read_label_png


def _runs(mask: np.ndarray) -> np.ndarray:
    """Column-major run lengths (zeros first) of a binary mask, computed the slow obvious way."""
    flat = mask.ravel(order="F").astype(np.int8)
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    return np.array(runs)


def test_empty_2048_mask_has_the_known_string():
    assert encoding.encode_binary_mask(np.zeros((2048, 2048), bool)) == "eNoLCAgIMAEABJkBdQ=="


def test_random_masks_round_trip_through_pycocotools():
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (7, 13), (64, 48), (31, 200)]:
        for p in (0.0, 0.1, 0.5, 1.0):
            m = rng.random((h, w)) < p
            s = encoding.encode_binary_mask(m)
            assert np.array_equal(encoding.decode_binary_mask(s, h, w), m)
            rle = encoding.decode_to_rle(s, h, w)
            assert np.array_equal(mask_util.decode(rle).astype(bool), m)
            assert int(mask_util.area(rle)) == int(m.sum())
            encoding.check_mask_string(s, h, w)
            assert np.array_equal(encoding.rle_counts(rle["counts"]), _runs(m))


def test_encode_label_map_is_byte_identical_to_per_cell_encoding():
    rng = np.random.default_rng(1)
    maps = [rng.integers(0, 5, (23, 17)), np.repeat(rng.integers(0, 4, (9, 11)), 25, axis=0),
            np.full((8, 6), 3), np.zeros((5, 5), int)]
    edge = np.zeros((10, 10), np.uint16)
    edge[0, 0] = 7      # first pixel of the scan
    edge[-1, -1] = 2    # last pixel of the scan: no trailing zero run
    edge[3:6, 2:9] = 300
    maps.append(edge)
    for lab in maps:
        got = encoding.encode_label_map(lab)
        ids = sorted(set(np.unique(lab).tolist()) - {0})
        assert sorted(got) == ids
        for i in ids:
            assert got[i] == encoding.encode_binary_mask(lab == i)


def test_real_hpa_masks_round_trip_exactly(shared_dir):
    lab = read_label_png(shared_dir / "hpa_sample" / "1000_A12_2_cellmask.png")
    assert lab.shape == (2048, 2048)
    got = encoding.encode_label_map(lab)
    assert sorted(got) == list(range(1, 22))
    for i, s in got.items():
        m = lab == i
        assert s == encoding.encode_binary_mask(m)
        assert np.array_equal(encoding.decode_binary_mask(s, 2048, 2048), m)


# ----------------------------------------------------------------------------- prediction strings
def _masks(n=3, h=6, w=5):
    lab = np.zeros((h, w), int)
    for i in range(n):
        lab[i, :] = i + 1
    d = encoding.encode_label_map(lab)
    return [d[i + 1] for i in range(n)]


def test_prediction_string_and_parse_round_trip():
    masks = _masks()
    probs = np.zeros((3, 19))
    probs[0, [0, 16]] = [0.9, 0.123456789]
    probs[2, 18] = 1.0
    s = encoding.prediction_string(masks, probs, min_conf=0.01)
    assert s == f"0 0.9 {masks[0]} 16 0.123457 {masks[0]} 18 1 {masks[2]}"
    assert encoding.parse_prediction_string(s, 5, 6) == [(0, 0.9, masks[0]), (16, 0.123457, masks[0]),
                                                          (18, 1.0, masks[2])]
    assert len(encoding.prediction_string(masks, probs).split()) == 3 * 3 * 19  # min_conf 0: every pair
    assert encoding.prediction_string([], np.zeros((0, 19))) == ""
    assert encoding.parse_prediction_string("", 5, 6) == []
    with pytest.raises(ValueError, match="shape"):
        encoding.prediction_string(masks, np.zeros((3, 18)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        encoding.prediction_string(masks, np.full((3, 19), 1.5))


@pytest.mark.parametrize("bad, reason", [
    ("0 0.5", "multiple of 3"),
    ("19 0.5 {m}", "outside 0..18"),
    ("-1 0.5 {m}", "outside 0..18"),
    ("x 0.5 {m}", "not an integer"),
    ("0 1.5 {m}", "not in \\[0, 1\\]"),
    ("0 nan {m}", "not in \\[0, 1\\]"),
    ("0 abc {m}", "not a number"),
    ("0 0.5 !!notbase64", "base64"),
    ("0 0.5 " + base64.b64encode(b"not zlib").decode(), "zlib"),
    ("0 0.5 " + base64.b64encode(zlib.compress(b"\x7f\x7f")).decode(), "RLE"),
    ("0 0.5 {wrong_size}", "pixels"),
])
def test_parser_rejects_malformed_strings_naming_the_row(bad, reason):
    m = _masks(1)[0]
    wrong = encoding.encode_binary_mask(np.ones((4, 4), bool))
    s = bad.format(m=m, wrong_size=wrong)
    with pytest.raises(ValueError, match=f"row img_42.*{reason}"):
        encoding.parse_prediction_string(s, 5, 6, row="img_42")


# ----------------------------------------------------------------------------- submission files
def test_write_and_read_submission(tmp_path):
    sample = pd.DataFrame({"ID": ["b", "a", "c"], "ImageWidth": [5, 5, 7], "ImageHeight": [6, 6, 7],
                           "PredictionString": ["x", "y", "z"]})
    masks = _masks()
    s = encoding.prediction_string(masks, np.full((3, 19), 0.5), min_conf=0.5)
    path = tmp_path / "sub" / "submission.csv"
    encoding.write_submission({"a": s, "c": ""}, sample, path)
    df = encoding.read_submission(path)
    assert list(df.columns) == list(encoding.SUBMISSION_COLUMNS)
    assert df["ID"].tolist() == ["b", "a", "c"]
    assert df["PredictionString"].tolist() == ["", s, ""]
    assert df["ImageWidth"].tolist() == [5, 5, 7]
    assert not any(p.name.endswith(".tmp.csv") for p in path.parent.iterdir())
    with pytest.raises(ValueError, match="not in the sample"):
        encoding.write_submission({"zzz": s}, sample, tmp_path / "x.csv")


def test_read_submission_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        encoding.read_submission(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("ID,ImageWidth,PredictionString\na,5,\n")
    with pytest.raises(SystemExit, match="bad.csv.*ImageHeight"):
        encoding.read_submission(bad)
    dup = tmp_path / "dup.csv"
    dup.write_text("ID,ImageWidth,ImageHeight,PredictionString\na,5,5,\na,5,5,\n")
    with pytest.raises(SystemExit, match="dup.csv: row 3: duplicated ID 'a'"):
        encoding.read_submission(dup)
