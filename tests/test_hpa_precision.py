"""SEG_PRECISION: the official networks in float32 (the truth path, unchanged) or under bfloat16 autocast
with channels-last tensors; S2 and S5 check the constant and say that bf16 labels may differ."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import load_script
from torch import nn

from common import segmentation
from common.segmentation.hpa import HPASegmenter


def small_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3, 3, padding=1)).eval()


def image(seed=0, hw=(160, 128)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*hw, 4), dtype=np.uint8)


def test_fp32_is_plain_float32_and_bf16_is_close():
    nets = small_net(0), small_net(1)
    img = [image()]
    fp32 = HPASegmenter(nets, device="cpu")
    assert not fp32.channels_last and fp32.precision == "fp32"
    assert all(p.is_contiguous() for m in nets for p in m.parameters())  # untouched by fp32
    p32 = fp32.predict(img)[0]
    with torch.no_grad():  # the same forward by hand, float32, contiguous: the same numbers
        x = fp32._probs(nets[1], torch.ones(1, 3, 64, 64), False)
        ref = nets[1](torch.ones(1, 3, 64, 64)).softmax(1)
    assert torch.equal(x, ref)
    bf16 = HPASegmenter((small_net(0), small_net(1)), device="cpu", precision="bf16")
    assert bf16.channels_last and bf16.cell_model[0].weight.is_contiguous(memory_format=torch.channels_last)
    p16 = bf16.predict(img)[0]
    assert p16.dtype == np.float32 and p16.shape == p32.shape
    diff = np.abs(p16 - p32)
    assert 0 < diff.max() < 0.05  # bfloat16 arithmetic: close, not equal


def test_precision_is_checked():
    with pytest.raises(ValueError, match="precision 'fp16'"):
        HPASegmenter((small_net(0), small_net(1)), device="cpu", precision="fp16")
    assert segmentation.get_segmenter("builtin", precision="bf16").name == "builtin"


def test_check_precision_says_why(capsys):
    with pytest.raises(SystemExit, match=r"^S2: --SEG_PRECISION 'half': choose one of fp32, bf16$"):
        segmentation.check_precision("half", "S2")
    assert segmentation.check_precision("fp32", "S2") == "fp32" and capsys.readouterr().out == ""
    segmentation.check_precision("bf16", "S2", networks=False)  # the built-in segmenter: nothing to say
    assert capsys.readouterr().out == ""
    segmentation.check_precision("bf16", "S5")
    assert "labels may differ from the official cells" in capsys.readouterr().out


@pytest.mark.parametrize("script", ["S2_data_process.py", "S5_predict.py"])
def test_scripts_stop_on_a_bad_precision(script, tmp_path):
    mod = load_script(script)
    assert mod.SEG_PRECISION == "fp32"
    out = "--HPA512_DIR" if script.startswith("S2") else "--OUTPUT_DIR"
    with pytest.raises(SystemExit, match="SEG_PRECISION 'fp16'"):
        mod.main(["--COMPETITION_DIR", str(tmp_path / "none"), out, str(tmp_path / "out"),
                  "--SEG_PRECISION", "fp16", "--SEGMENTER", "builtin"])
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
