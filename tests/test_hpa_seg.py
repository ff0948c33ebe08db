"""The official HPA segmentation networks: native DPN-92 U-Net, safe loader, segmenter, post-processing.

The official weight files are whole pickled ``pytorch_zoo`` models. The tests make such files
themselves: stand-in ``pytorch_zoo`` classes (built here from the spec's description, independently of
the native model) are registered in ``sys.modules``, the model is ``torch.save``d, the fake modules are
removed again, and the file is read back through the restricted unpickler.
"""
from __future__ import annotations

import json
import os
import pickle
import sys
import types
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from common.constants import BLUE, RED, YELLOW
from common.segmentation.dpn_unet import DPNUNet, normalize
from common.segmentation.hpa import (
    HPASegmenter,
    HPAWeightsError,
    UnsafePickleError,
    available,
    convert_to_safetensors,
    label_cells,
    load_hpa_model,
    load_state_dict_file,
    weight_file,
)
from common.segmentation.hpa.segmenter import pad_amounts, pad_reflect, rescale, working_size

torch.set_num_threads(1)
FAKE_MODULES = ("pytorch_zoo", "pytorch_zoo.unet", "pytorch_zoo.dpn", "pytorch_zoo.abstract_model")


# ----------------------------------------------------------------------------- fake pytorch_zoo
def _install_fake_zoo() -> dict:
    """Classes named like pytorch_zoo's, registered under its module paths; returns them by name."""
    mods = {name: types.ModuleType(name) for name in FAKE_MODULES}
    shared_relu = nn.ReLU(inplace=True)  # the original shares one ReLU through a default argument

    class BnActConv2d(nn.Module):
        def __init__(self, cin, cout, k, stride=1, pad=0, groups=1, act=shared_relu):
            super().__init__()
            self.bn = nn.BatchNorm2d(cin, eps=0.001)
            self.act = act
            self.conv = nn.Conv2d(cin, cout, k, stride, pad, groups=groups, bias=False)

    class CatBnAct(nn.Module):
        def __init__(self, c, act=shared_relu):
            super().__init__()
            self.bn = nn.BatchNorm2d(c, eps=0.001)
            self.act = act

    class DualPathBlock(nn.Module):
        def __init__(self, cin, r, bw, inc, kind):
            super().__init__()
            self.num_1x1_c, self.inc, self.b = bw, inc, False
            self.key_stride = 2 if kind == "down" else 1
            self.has_proj = kind in ("proj", "down")
            if kind == "proj":
                self.c1x1_w_s1 = BnActConv2d(cin, bw + 2 * inc, 1)
            elif kind == "down":
                self.c1x1_w_s2 = BnActConv2d(cin, bw + 2 * inc, 1, stride=2)
            self.c1x1_a = BnActConv2d(cin, r, 1)
            self.c3x3_b = BnActConv2d(r, r, 3, self.key_stride, 1, groups=32)
            self.c1x1_c = BnActConv2d(r, bw + inc, 1)

    class ConvBottleneck(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.seq = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True))

    class UnetDecoderBlock(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.layer = nn.Sequential(nn.Upsample(scale_factor=2.0), nn.Conv2d(cin, cout, 3, padding=1),
                                       nn.ReLU(inplace=True))

    class DPNUnet(nn.Module):
        def __init__(self):
            super().__init__()
            f = [64, 336, 704, 1552, 2688]
            self.filters, self.first_layer_stride_two, self.need_center = f, True, False
            self.decoder_type, self.input_channel_num, self.target_channel_num = 1, 3, 3
            self.bottleneck_type, self.decoder_block = ConvBottleneck, UnetDecoderBlock
            self.bottlenecks = nn.ModuleList([ConvBottleneck(2 * c, c) for c in reversed(f[:-1])])
            self.decoder_stages = nn.ModuleList([UnetDecoderBlock(f[i + 1], f[i]) for i in range(4)])
            self.last_upsample = UnetDecoderBlock(64, 64)
            self.final = nn.Sequential(nn.Conv2d(64, 3, 3, padding=1))
            stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64, eps=0.001),
                                 nn.ReLU(inplace=True))
            stages, cin = [stem], 64
            for si, (bw, inc, n) in enumerate([(256, 16, 3), (512, 32, 4), (1024, 24, 20), (2048, 128, 3)]):
                r = {256: 96, 512: 192, 1024: 384, 2048: 768}[bw]
                blocks = [nn.MaxPool2d(3, 2, 1)] if si == 0 else []
                for b in range(n):
                    kind = "normal" if b else ("proj" if si == 0 else "down")
                    blocks.append(DualPathBlock(cin, r, bw, inc, kind))
                    cin = bw + 3 * inc if b == 0 else cin + inc
                if si == 3:
                    blocks.append(CatBnAct(cin))
                stages.append(nn.Sequential(*blocks))
            self.encoder_stages = nn.ModuleList(stages)

    classes = {}
    for mod, cls in [("pytorch_zoo.dpn", BnActConv2d), ("pytorch_zoo.dpn", CatBnAct),
                     ("pytorch_zoo.dpn", DualPathBlock), ("pytorch_zoo.abstract_model", ConvBottleneck),
                     ("pytorch_zoo.abstract_model", UnetDecoderBlock), ("pytorch_zoo.unet", DPNUnet)]:
        cls.__module__, cls.__qualname__ = mod, cls.__name__
        setattr(mods[mod], cls.__name__, cls)
        classes[cls.__name__] = cls
    for name in ("unet", "dpn", "abstract_model"):
        setattr(mods["pytorch_zoo"], name, mods[f"pytorch_zoo.{name}"])
    sys.modules.update(mods)
    return classes


def _remove_fake_zoo() -> None:
    for name in FAKE_MODULES:
        sys.modules.pop(name, None)


def _save_fake(path, build, *, legacy=False, edit=None) -> dict:
    """Build a fake official model with ``build(classes)``, optionally ``edit`` it, torch.save the whole
    model, remove the fake modules. Returns the fake's state_dict."""
    classes = _install_fake_zoo()
    try:
        model = build(classes)
        if edit is not None:
            edit(model)
        sd = {k: v.detach() for k, v in model.state_dict().items()}  # the model is dropped: no copy
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # legacy save: "couldn't retrieve source code"
            torch.save(model, path, _use_new_zipfile_serialization=not legacy)
    finally:
        _remove_fake_zoo()
    return sd


def _random_fake(classes):
    g = torch.Generator().manual_seed(0)
    model = classes["DPNUnet"]().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
    return model


def _tiny_fake(classes):
    """The same tree with every tensor a stride-0 view of one element: a file of a few hundred kB."""
    with torch.device("meta"):
        model = classes["DPNUnet"]().eval()
    one_f, one_i = torch.tensor(0.5), torch.tensor(7, dtype=torch.int64)
    for m in model.modules():
        for slot in (m._parameters, m._buffers):
            for k, t in list(slot.items()):
                if t is not None:
                    base = one_i if t.dtype == torch.int64 else one_f
                    v = base.expand(t.shape)
                    slot[k] = nn.Parameter(v, requires_grad=False) if slot is m._parameters else v
    return model


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """A random-weight model in the official whole-pickle zip format, and its state_dict."""
    path = tmp_path_factory.mktemp("hpa") / "dpn_unet_nuclei_v1.pth"
    sd = _save_fake(path, _random_fake)
    return path, sd


@pytest.fixture(scope="module")
def loaded(official):
    return load_hpa_model(official[0], kind="nuclei", device="cpu")


# ----------------------------------------------------------------------------- architecture
def test_state_dict_layout_without_spec():
    with torch.device("meta"):
        sd = DPNUNet().state_dict()
    assert len(sd) == 595
    params = [t for k, t in sd.items() if "running" not in k and "num_batches" not in k]
    assert len(params) == 307 and sum(t.numel() for t in params) == 139_108_867
    keys = list(sd)
    assert keys[0] == "bottlenecks.0.seq.0.weight" and keys[-1] == "encoder_stages.4.3.bn.num_batches_tracked"
    expect = {
        "bottlenecks.0.seq.0.weight": (1552, 3104, 3, 3),
        "decoder_stages.3.layer.1.weight": (1552, 2688, 3, 3),
        "last_upsample.layer.1.bias": (64,),
        "final.0.weight": (3, 64, 3, 3),
        "encoder_stages.0.0.weight": (64, 3, 7, 7),
        "encoder_stages.1.1.c1x1_w_s1.conv.weight": (288, 64, 1, 1),
        "encoder_stages.2.0.c1x1_w_s2.conv.weight": (576, 336, 1, 1),
        "encoder_stages.3.19.c3x3_b.conv.weight": (384, 12, 3, 3),
        "encoder_stages.4.2.c1x1_c.conv.weight": (2176, 768, 1, 1),
        "encoder_stages.4.3.bn.running_var": (2688,),
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert sd["encoder_stages.4.3.bn.num_batches_tracked"].dtype == torch.int64
    with torch.device("meta"):
        eps = {m.eps for m in DPNUNet().modules() if isinstance(m, nn.BatchNorm2d)}
    assert eps == {1e-3}


def test_state_dict_equals_spec(shared_dir):
    with torch.device("meta"):
        sd = DPNUNet().state_dict()
    mine = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()]
    for kind in ("nuclei", "cell"):
        spec = json.loads((shared_dir / "hpa_seg_spec" / f"{kind}_model_state.json").read_text())
        assert mine == [(e["name"], e["shape"], e["dtype"]) for e in spec["entries"]]


def test_layer_hyperparameters_equal_spec(shared_dir):
    tree = json.loads((shared_dir / "hpa_seg_spec" / "module_tree.json").read_text())["modules"]
    with torch.device("meta"):
        mods = dict(DPNUNet().named_modules())
    checked = 0
    for node in tree:
        cls, attrs = node["class"].rsplit(".", 1)[-1], node["attributes"]
        if cls not in ("Conv2d", "BatchNorm2d", "MaxPool2d", "Upsample"):
            continue
        m = mods[node["path"]]
        assert type(m).__name__ == cls, node["path"]
        names = {"Conv2d": ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                            "groups"),
                 "BatchNorm2d": ("num_features", "eps", "momentum", "affine", "track_running_stats"),
                 "MaxPool2d": ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
                 "Upsample": ("scale_factor", "mode", "size")}[cls]
        for a in names:
            v = getattr(m, a)
            assert (list(v) if isinstance(v, tuple) else v) == attrs[a], (node["path"], a)
        checked += 1
    assert checked == 105 + 96 + 1 + 5


def test_fake_model_tree_equals_spec(shared_dir):
    """The stand-in pytorch_zoo tree used by these tests has the spec's tree (so the tests mean something)."""
    tree = json.loads((shared_dir / "hpa_seg_spec" / "module_tree.json").read_text())["modules"]
    classes = _install_fake_zoo()
    try:
        with torch.device("meta"):
            model = classes["DPNUnet"]()
        fake = {("<root>" if not p else p): m for p, m in model.named_modules(remove_duplicate=False)}
        for node in tree:
            m = fake[node["path"]]
            assert f"{type(m).__module__}.{type(m).__name__}" == node["class"], node["path"]
            assert [[k, f"{type(c).__module__}.{type(c).__name__}"] for k, c in m._modules.items()] == \
                node["children"], node["path"]
    finally:
        _remove_fake_zoo()


def test_forward_shapes_and_size_check(loaded):
    with torch.no_grad():
        for h, w in ((64, 64), (96, 128)):
            out = loaded(torch.randn(1, 3, h, w))
            assert out.shape == (1, 3, h, w) and torch.isfinite(out).all()
        with pytest.raises(ValueError, match="multiples of 32"):
            loaded(torch.randn(1, 3, 80, 70))


# ----------------------------------------------------------------------------- safe loading
def test_official_zip_file_loads_exactly(official, loaded):
    _, sd = official
    assert "pytorch_zoo" not in sys.modules  # loading never needed (or imported) the package
    got = loaded.state_dict()
    assert list(got) == list(sd)
    for k, v in sd.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    assert not loaded.training and loaded.hpa_source["format"] == "zip"
    assert loaded.hpa_source["training"] is False


def test_safetensors_round_trip_and_preference(official, loaded, tmp_path):
    pth, sd = official
    st = convert_to_safetensors(pth, tmp_path / "dpn_unet_nuclei_v1.safetensors")
    model = load_hpa_model(st, kind="nuclei")
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    with pytest.raises(HPAWeightsError, match="nuclei network, asked for cell"):
        load_hpa_model(st, kind="cell")
    # a folder with both formats: the safetensors file is chosen
    (tmp_path / "dpn_unet_nuclei_v1.pth").write_bytes(b"not read")
    assert weight_file(tmp_path, "nuclei").suffix == ".safetensors"
    assert not available(tmp_path)  # the cell network is missing
    (tmp_path / "dpn_unet_cell_3ch_v1.pth").write_bytes(b"")
    assert available(tmp_path)
    model = load_hpa_model(tmp_path, kind="nuclei")  # folder + kind
    assert torch.equal(model.final[0].weight, sd["final.0.weight"])


def test_legacy_format_and_data_parallel_prefix(tmp_path):
    p = tmp_path / "legacy.pth"
    sd = _save_fake(p, _tiny_fake, legacy=True)
    assert not __import__("zipfile").is_zipfile(p)
    got, info = load_state_dict_file(p, kind="cell")  # (load_hpa_model would materialise 557 MB)
    assert info["format"] == "legacy" and list(got) == list(sd)
    assert all(torch.equal(got[k], v) for k, v in sd.items())

    def wrap(classes):  # a DataParallel wrapper: every key gets "module."
        return nn.DataParallel(_tiny_fake(classes))

    p2 = tmp_path / "dp.pth"
    _save_fake(p2, wrap)
    got, _ = load_state_dict_file(p2)
    assert list(got) == list(sd) and torch.equal(got["final.0.bias"], torch.full((3,), 0.5))


@pytest.mark.parametrize("what,needle", [("missing", "missing key(s) ['final.0.bias']"),
                                         ("extra", "unexpected key(s) ['final.0.extra']"),
                                         ("shape", "final.0.weight has shape (3, 64, 1, 1)")])
def test_key_mismatch_names_the_key(tmp_path, what, needle):
    def edit(model):
        conv = model.final[0]
        if what == "missing":
            conv._parameters["bias"] = None
        elif what == "extra":
            conv._buffers["extra"] = torch.zeros(2)
        else:
            conv._parameters["weight"] = nn.Parameter(torch.zeros(3, 64, 1, 1), requires_grad=False)

    p = tmp_path / "bad.pth"
    _save_fake(p, _tiny_fake, edit=edit)
    with pytest.raises(HPAWeightsError) as e:
        load_hpa_model(p)
    assert needle in str(e.value)


class _Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


@pytest.mark.parametrize("fmt", ["zip", "legacy", "plain-pickle"])
def test_code_running_pickle_is_refused(tmp_path, fmt):
    target = tmp_path / "pwned"
    payload = {"model": _Evil(os.system, f"touch {target}")}
    p = tmp_path / "evil.pth"
    if fmt == "plain-pickle":
        p.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, p, _use_new_zipfile_serialization=fmt == "zip")
    with pytest.raises(UnsafePickleError, match=rf"{os.system.__module__}\.system"):
        load_hpa_model(p)
    assert not target.exists()
    torch.save({"x": _Evil(eval, f"open({str(target)!r}, 'w')")}, p)
    with pytest.raises(UnsafePickleError, match="eval"):
        load_hpa_model(p)
    assert not target.exists()


def test_wrong_root_class_is_refused(tmp_path):
    p = tmp_path / "sd.pth"
    torch.save({"final.0.bias": torch.zeros(3)}, p)  # a plain state_dict is not the official format
    with pytest.raises(HPAWeightsError, match="not a pytorch_zoo DPNUnet"):
        load_hpa_model(p)
    with pytest.raises(HPAWeightsError, match="missing"):
        load_hpa_model(tmp_path / "nothing.pth")


# ----------------------------------------------------------------------------- input pipeline
def test_rescale_matches_skimage():
    from skimage.transform import rescale as sk_rescale

    rng = np.random.default_rng(0)
    for shape, s in (((64, 48), 0.25), ((50, 70), 0.5), ((33, 31), 0.25)):
        a = rng.random(shape)
        out = rescale(torch.from_numpy(a)[None, None], working_size(*shape, s))[0, 0].numpy()
        ref = sk_rescale(a, s)
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, atol=1e-6)


def test_rescale_channels_last_gives_the_same_numbers():
    """The Gaussian on channels-last tensors sums exactly as on contiguous ones: segment()'s network
    input, and so its labels, are those of the contiguous computation, bit for bit."""
    import torch.nn.functional as F

    from common.segmentation.hpa.segmenter import GAUSS_TRUNCATE, _gaussian_kernel

    def contiguous(x, size):
        lo, hi = x.amin(dim=(-2, -1), keepdim=True), x.amax(dim=(-2, -1), keepdim=True)
        for axis, (n_in, n_out) in enumerate(zip(x.shape[-2:], size)):
            sigma = (n_in / n_out - 1.0) / 2.0
            radius = min(int(GAUSS_TRUNCATE * sigma + 0.5), n_in - 1)
            k = _gaussian_kernel(sigma, radius, x.device, x.dtype)
            k = k.view((1, 1, -1, 1) if axis == 0 else (1, 1, 1, -1))
            pad = (0, 0, radius, radius) if axis == 0 else (radius, radius, 0, 0)
            x = F.conv2d(F.pad(x, pad, mode="reflect"), k.repeat(x.shape[1], 1, 1, 1), groups=x.shape[1])
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        return torch.minimum(torch.maximum(x, lo), hi)

    g = torch.Generator().manual_seed(0)
    cases = (((512, 512), (128, 128), 1), ((432, 300), (108, 75), 2), ((257, 333), (64, 83), 1))
    for shape, size, batch in cases:
        img = torch.randint(0, 256, (batch, *shape, 3), generator=g, dtype=torch.uint8)
        x = img.permute(0, 3, 1, 2).float() / 255  # as predict() makes it
        assert torch.equal(rescale(x, size), contiguous(x.contiguous(), size))


def test_padding_matches_opencv_reflect():
    import cv2

    a = np.random.default_rng(1).integers(0, 255, (50, 45), dtype=np.uint8)
    pads = pad_amounts(50, 45)
    assert pads == (32, 14, 32, 19) and pad_amounts(64, 96) == (0, 0, 0, 0)
    ref = cv2.copyMakeBorder(a, *pads, cv2.BORDER_REFLECT)
    out = pad_reflect(torch.from_numpy(a), pads).numpy()
    assert out.shape == (96, 96) and np.array_equal(out, ref)


class _PointwiseNet(nn.Module):
    """A stand-in network: interior logit = 4 * (input channel 0), border logit = -10, background 0."""

    def forward(self, x):
        assert x.shape[-2] % 32 == 0 and x.shape[-1] % 32 == 0
        zero = torch.zeros_like(x[:, 0])
        return torch.stack([zero, zero - 10.0, 4.0 * x[:, 0]], dim=1)


def _disk(img, cy, cx, r, value):
    yy, xx = np.ogrid[: img.shape[0], : img.shape[1]]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = value


def test_segmenter_geometry_channels_padding_tta():
    rng = np.random.default_rng(2)
    imgs = [rng.integers(0, 256, (120, 100, 4), dtype=np.uint8) for _ in range(3)]
    imgs.append(rng.integers(0, 256, (64, 96, 4), dtype=np.uint8))  # a second size, no padding needed
    net = _PointwiseNet()
    for tta in (False, True):
        seg = HPASegmenter((net, net), device="cpu", scale=0.5, batch_size=2, tta=tta)
        probs = seg.predict(imgs)
        for img, p in zip(imgs, probs):
            h, w = working_size(*img.shape[:2], 0.5)
            x = torch.from_numpy(img[..., [RED, YELLOW, BLUE]]).permute(2, 0, 1)[None].double() / 255
            x = normalize(rescale(x, (h, w)))[0]
            expect_cell = torch.softmax(torch.stack([x[0] * 0, x[0] * 0 - 10, 4 * x[0]]), 0)[2]
            xn = normalize(rescale(torch.from_numpy(img[..., BLUE]).double()[None, None] / 255, (h, w))
                           .expand(-1, 3, -1, -1))[0]
            expect_nuc = torch.softmax(torch.stack([xn[0] * 0, xn[0] * 0 - 10, 4 * xn[0]]), 0)[2]
            assert p.shape == (4, h, w) and p.dtype == np.float32
            np.testing.assert_allclose(p[3], expect_cell.numpy(), atol=1e-5)
            np.testing.assert_allclose(p[1], expect_nuc.numpy(), atol=1e-5)


def test_segmenter_end_to_end_two_cells():
    img = np.zeros((480, 400, 4), np.uint8)  # network size 120 x 100, not a multiple of 32: padding
    for cy, cx in ((160, 120), (320, 288)):
        _disk(img[..., BLUE], cy, cx, 40, 220)
        _disk(img[..., RED], cy, cx, 72, 200)
        _disk(img[..., YELLOW], cy, cx, 72, 200)
    net = _PointwiseNet()
    seg = HPASegmenter((net, net), device="cpu")
    assert seg.name == "hpa" and seg.uses_original_size
    [(cell, nucleus)] = seg.segment([img])
    assert cell.shape == nucleus.shape == (480, 400) and cell.dtype == np.uint16
    assert sorted(np.unique(cell)) == [0, 1, 2] and sorted(np.unique(nucleus)) == [0, 1, 2]
    assert np.all(cell[nucleus > 0] == nucleus[nucleus > 0])
    assert cell[160, 120] != cell[320, 288] and nucleus[160, 120] == cell[160, 120]
    # handed the quarter-size copy with the original size, the networks see the same scale: same cells
    # (the S5 fallback of before handed a 512 copy as if it were the original, and got no cells)
    small = img[::4, ::4].copy()
    [(cell_s, _)] = seg.segment([small], sizes=[(480, 400)])
    assert cell_s.shape == (480, 400) and sorted(np.unique(cell_s)) == [0, 1, 2]
    inter = ((cell_s > 0) & (cell > 0)).sum() / ((cell_s > 0) | (cell > 0)).sum()
    assert inter > 0.95
    [(cell_w, _)] = HPASegmenter((net, net), device="cpu", label_at="working").segment([img])
    assert cell_w.shape == (480, 400) and sorted(np.unique(cell_w)) == [0, 1, 2]
    # post-processing in worker processes: the same label maps
    par = HPASegmenter((net, net), device="cpu", post_workers=2)
    try:
        both = par.segment([img, small], sizes=[(480, 400), (480, 400)])
    finally:
        par.close()
    assert np.array_equal(both[0][0], cell) and np.array_equal(both[1][0], cell_s)


def test_segmenter_with_the_network(loaded):
    """The real (random-weight) network through the whole path: shapes, dtypes, input resolution."""
    rng = np.random.default_rng(3)
    imgs = [rng.integers(0, 256, (200, 180, 4), dtype=np.uint8)]
    seg = HPASegmenter((loaded, loaded), device="cpu", scale=0.25)
    [(cell, nucleus)] = seg.segment(imgs)
    assert cell.shape == nucleus.shape == (200, 180) and cell.dtype == nucleus.dtype == np.uint16
    assert np.all((nucleus == 0) | (nucleus == cell))


def test_segmenter_without_weights_says_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="dpn_unet_nuclei_v1"):
        HPASegmenter(tmp_path, device="cpu")


# ----------------------------------------------------------------------------- post-processing
def test_two_touching_blobs_give_two_cells():
    h, w = 64, 96
    nb, ni, cb, ci = (np.zeros((h, w), np.float32) for _ in range(4))
    _disk(ni, 32, 33, 11, 0.95)
    _disk(ni, 32, 55, 11, 0.95)        # the two nuclei overlap around x = 44
    ni[:, 43:46] = np.minimum(ni[:, 43:46], 0.05)
    nb[20:45, 43:46] = 0.9              # the nuclei network's border between them
    _disk(ci, 32, 33, 20, 0.9)
    _disk(ci, 32, 55, 20, 0.9)         # the cells overlap widely
    cb[:, 43:46] = np.where(ci[:, 43:46] > 0, 0.6, 0)
    cell, nucleus = label_cells(nb, ni, cb, ci, pixel_scale=0.25)
    assert cell.max() == 2 and len(np.unique(cell)) == 3
    assert len(np.unique(nucleus)) == 3 and np.all(cell[nucleus > 0] == nucleus[nucleus > 0])
    assert cell[32, 33] != cell[32, 55]
    assert cell[32, 16] == cell[32, 33]  # the left cell extends beyond its nucleus


@pytest.mark.parametrize("corrected", [False, True])
def test_more_than_255_cells_survive(corrected):
    n, step = 17, 16                    # 289 separate cells. The official uint8 cast before the closing
    # turns cell 256 into background (lost, as in the truth); the others survive (ids made anew after
    # it) and the final ids never wrap. Corrected: all 289.
    h = w = n * step
    nb, ni, cb, ci = (np.zeros((h, w), np.float32) for _ in range(4))
    for i in range(n):
        for j in range(n):
            cy, cx = i * step + step // 2, j * step + step // 2
            _disk(ni, cy, cx, 4, 0.95)
            ci[i * step + 1:(i + 1) * step - 1, j * step + 1:(j + 1) * step - 1] = 0.9
    cell, nucleus = label_cells(nb, ni, cb, ci, pixel_scale=0.1, corrected=corrected)
    expect = n * n if corrected else n * n - 1
    assert cell.dtype == np.uint16 and cell.max() == expect
    assert len(np.unique(cell)) == expect + 1 and len(np.unique(nucleus)) == expect + 1
    assert np.all(cell[nucleus > 0] == nucleus[nucleus > 0])


# ----------------------------------------------------------------------------- conversion tool
def test_convert_tool_finds_converts_and_skips(tmp_path, monkeypatch):
    """The tool's wiring (the conversion itself is tested above, on a full-size file)."""
    from conftest import load_script

    from common import segmentation

    tool = load_script("tools/convert_hpa_seg_weights.py", "convert_tool")
    calls = []

    def fake_convert(src, dst, kind):
        calls.append((src.name, kind))
        dst.write_bytes(b"x")
        return dst

    monkeypatch.setattr(tool, "convert_to_safetensors", fake_convert)
    with pytest.raises(SystemExit, match="zenodo"):
        tool.main(["--WEIGHTS_DIR", str(tmp_path), "--VERIFY", "false"])
    for stem in ("dpn_unet_nuclei_v1", "dpn_unet_cell_3ch_v1"):
        (tmp_path / f"{stem}.pth").write_bytes(b"")
    written = tool.main(["--WEIGHTS_DIR", str(tmp_path), "--VERIFY", "false"])
    assert sorted(p.name for p in written) == ["dpn_unet_cell_3ch_v1.safetensors",
                                              "dpn_unet_nuclei_v1.safetensors"]
    assert sorted(calls) == [("dpn_unet_cell_3ch_v1.pth", "cell"), ("dpn_unet_nuclei_v1.pth", "nuclei")]
    assert weight_file(tmp_path, "cell").suffix == ".safetensors"
    assert available(tmp_path) and segmentation.resolve_name("auto", tmp_path) == "hpa"
    assert tool.main(["--WEIGHTS_DIR", str(tmp_path)]) == []  # already converted: nothing redone
