"""The official HPA post-processing, reproduced: the reference label maps of ../shared/hpa_seg_reference
from their softmax maps, by every path (label_from_maps, the default segmenter path with a stand-in
network, S5's fallback, S2 --SEG_AT resized, tools/label_from_maps.py); the oracle makes them too."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import load_script
from hpa_postprocess_oracle import label_cell as oracle
from hpa_postprocess_oracle import official_inputs
from torch import nn

from common import fov, images
from common.predict import fields
from common.segmentation import match_cells
from common.segmentation.hpa import HPASegmenter
from common.segmentation.hpa import postprocess as pp

torch.set_num_threads(1)
SCENARIOS = ("A_official_s0", "B_touching_s0")
SIDE = 2048  # the reference maps are of a 2048-px field of view


@pytest.fixture(scope="module", params=SCENARIOS)
def ref(request, shared_dir) -> dict:
    d = shared_dir / "hpa_seg_reference"
    with np.load(d / f"{request.param}_softmax512.npz") as z:
        maps = {k: z[k] for k in z.files}
    return {"name": request.param, "maps_path": d / f"{request.param}_softmax512.npz",
            "nuclei": maps["nuclei"], "cell": maps["cell"],
            "ref_cell": images.read_label_png(d / f"{request.param}_ref_cell.png"),
            "ref_nucleus": images.read_label_png(d / f"{request.param}_ref_nucleus.png")}


def check(ref: dict, cell: np.ndarray, nucleus: np.ndarray | None) -> None:
    """Every reference cell (and nucleus) matched at IoU >= 0.6, mean IoU >= 0.98."""
    assert cell.shape == ref["ref_cell"].shape
    pairs = [("cell", ref["ref_cell"], cell)]
    if nucleus is not None:
        assert nucleus.shape == cell.shape
        pairs.append(("nucleus", ref["ref_nucleus"], nucleus))
    for what, truth, pred in pairs:
        m = match_cells(truth, pred)
        assert m["matched"] == m["n_true"] > 0, f"{ref['name']} {what}: {m['matched']}/{m['n_true']} matched"
        assert m["mean_iou"] >= 0.98, f"{ref['name']} {what}: mean IoU {m['mean_iou']:.4f}"


class StandIn(nn.Module):
    """Returns the reference softmax maps (as logits) for an input of exactly their size: a network
    handed the wrong scale fails here instead of giving other maps."""

    def __init__(self, probs: np.ndarray):
        super().__init__()
        self.register_buffer("logits", torch.from_numpy(np.log(np.maximum(probs, 1e-12))).permute(2, 0, 1))

    def forward(self, x):
        assert tuple(x.shape[-2:]) == tuple(self.logits.shape[-2:]), f"network input {tuple(x.shape)}"
        return self.logits[None].expand(x.shape[0], -1, -1, -1)


def stand_in_segmenter(ref: dict) -> HPASegmenter:
    return HPASegmenter((StandIn(ref["nuclei"]), StandIn(ref["cell"])), device="cpu")


def blank_fov(folder, image_id: str) -> None:
    images.write_channels(folder, image_id, np.zeros((SIDE, SIDE, 4), np.uint8))


# ----------------------------------------------------------------------------- reference agreement
def test_label_from_maps_reproduces_the_reference(ref):
    cell, nucleus = pp.label_from_maps(ref["nuclei"], ref["cell"], (SIDE, SIDE))
    check(ref, cell, nucleus)
    assert cell.dtype == nucleus.dtype == np.uint16
    assert np.array_equal(cell, ref["ref_cell"]) and np.array_equal(nucleus, ref["ref_nucleus"])


def test_corrected_and_fast_paths_depart_from_the_reference(ref):
    cell, _ = pp.label_from_maps(ref["nuclei"], ref["cell"], (SIDE, SIDE), corrected=True)
    assert not np.array_equal(cell, ref["ref_cell"])           # the constant changes something
    fast, _ = pp.label_from_maps(ref["nuclei"], ref["cell"], (SIDE, SIDE), label_hw=(512, 512))
    assert match_cells(ref["ref_cell"], fast)["mean_iou"] < 0.97  # why 512 is not the default


def test_default_path_with_a_stand_in_network(ref):
    seg = stand_in_segmenter(ref)
    [f] = fov.prepare([np.zeros((SIDE, SIDE, 4), np.uint8)], 512, seg, full=True)
    check(ref, f.cell_full, f.nucleus_full)
    assert f.cell.shape == (512, 512) and set(np.unique(f.cell)) <= set(np.unique(f.cell_full))
    # handed the 512-px working copy (S2 --SEG_AT resized, S5 before): the networks still see 512 px
    [g] = fov.prepare([np.zeros((SIDE, SIDE, 4), np.uint8)], 512, seg, seg_at="resized", full=True)
    check(ref, g.cell_full, g.nucleus_full)


def test_s5_fallback_segments_at_the_right_scale(ref, tmp_path):
    S5 = load_script("S5_predict.py")
    blank_fov(tmp_path / "data" / "test", "fov1")
    cfg = S5.config.parse(vars(S5), ["--HPA512_DIR", str(tmp_path / "none"), "--COMPETITION_DIR",
                                     str(tmp_path / "data"), "--IMAGE_SIZE", "512", "--SEGMENTER", "hpa",
                                     "--HPA_SEG_DIR", str(tmp_path), "--DEVICE", "cpu"], quiet=True)
    sample = pd.DataFrame({"ID": ["fov1"], "ImageWidth": [SIDE], "ImageHeight": [SIDE]})
    source = fields.ImageSource(cfg, sample, [], False)
    source._segmenter = stand_in_segmenter(ref)
    f = source.load("fov1")
    image, labels, labels_full = f.image, f.cell, f.cell_full
    assert image.shape == (512, 512, 4) and labels.shape == (512, 512) and source.n_segmented == 1
    check(ref, labels_full, None)  # S5 keeps the cells only
    # what S5 encodes into the submission: the cells exactly as labelled at the original size
    assert fov.labels_at((SIDE, SIDE), labels, labels_full) is labels_full


def test_s2_seg_at_resized_keeps_the_official_cells(ref, tmp_path, monkeypatch):
    S2 = load_script("S2_data_process.py")
    data = tmp_path / "data"
    blank_fov(data / "test", "fov1")
    pd.DataFrame({"ID": ["fov1"], "ImageWidth": [SIDE], "ImageHeight": [SIDE]}).to_csv(
        data / "sample_submission.csv", index=False)
    seg = stand_in_segmenter(ref)
    monkeypatch.setattr(S2.segmentation, "get_segmenter", lambda *a, **k: seg)
    monkeypatch.setattr(S2.segmentation.hpa, "available", lambda *a, **k: True)  # the stand-in is its weights
    out = tmp_path / "out"
    res = S2.main(["--COMPETITION_DIR", str(data), "--HPA512_DIR", str(out), "--SEGMENTER", "hpa",
                   "--SEG_AT", "resized", "--NUM_WORKERS", "1"])
    assert res["processed"] == 1 and res["failed"] == 0
    cell, nucleus = images.load_masks(out / "test_cell_mask_full" / "fov1.npz")
    check(ref, cell, nucleus)
    small, _ = images.load_masks(out / "test_cell_mask" / "fov1.npz")
    assert small.shape == (512, 512) and len(np.unique(small)) == len(np.unique(cell))


def test_label_from_maps_tool(ref, tmp_path):
    tool = load_script("tools/label_from_maps.py", "label_from_maps_tool")
    cell_png, nucleus_png = tool.main([str(ref["maps_path"]), str(tmp_path / "out")])
    check(ref, images.read_label_png(cell_png), images.read_label_png(nucleus_png))
    # original_size given explicitly; a bad file is refused with its name
    z = tmp_path / "maps.npz"
    np.savez(z, nuclei=ref["nuclei"], cell=ref["cell"], original_size=np.array([SIDE, SIDE]))
    cell_png, _ = tool.main([str(z), str(tmp_path / "out2")])
    assert np.array_equal(images.read_label_png(cell_png),
                          images.read_label_png(tmp_path / "out" / "cell.png"))
    np.savez(tmp_path / "bad.npz", nuclei=ref["nuclei"])
    with pytest.raises(SystemExit, match="bad.npz.*cell"):
        tool.main([str(tmp_path / "bad.npz"), str(tmp_path / "out3")])


# ----------------------------------------------------------------------------- the oracle, the feeding
def test_the_oracle_is_the_official_code(ref):
    """tests/hpa_postprocess_oracle.py (the plain official label_cell, the oracle of
    tests/test_hpa_postprocess.py and the "before" of benchmarks/bench_hpa_seg.py) makes the reference
    (the touching scenario, the one where all three watersheds matter)."""
    if ref["name"] != "B_touching_s0":
        return
    cell, nucleus = oracle(*official_inputs(ref["nuclei"], ref["cell"], (SIDE, SIDE)))
    assert np.array_equal(cell, ref["ref_cell"]) and np.array_equal(nucleus, ref["ref_nucleus"])


def test_official_inputs_match_the_official_feeding():
    """nuclei: img_as_ubyte, channel 0 = 0, INTER_AREA; cell: channel 0 = 0, INTER_AREA in float, uint8
    (the oracle's official_inputs); label_from_maps reads channels 1 and 2 only, resized one by one."""
    rng = np.random.default_rng(0)
    for shape, out in (((32, 32), (128, 128)), ((37, 53), (150, 211)), ((40, 40), (40, 40))):
        p = rng.dirichlet(np.ones(3), size=shape).astype(np.float32)
        p[0, 0] = (-1e-4, 1e-4, 1 + 1e-4)  # slightly outside [0, 1], as float maps can be
        q = rng.dirichlet(np.ones(3), size=shape).astype(np.float32)
        nuc, cell = pp.official_inputs(p, q, out)
        want_nuc, want_cell = official_inputs(p, q, out)
        assert nuc.dtype == cell.dtype == np.uint8 and nuc.shape == (*out, 3)
        assert np.array_equal(nuc, want_nuc) and np.array_equal(cell, want_cell)
        wants = nuc[..., 1], nuc[..., 2], cell[..., 1], cell[..., 2]
        for got, want in zip(pp.input_planes(p, q, out), wants):
            assert got.flags.c_contiguous and np.array_equal(got, want)
