"""Pretrained weights offline (common.models.weights, tools/fetch_weights.py): the clear error of S3 / S4.2
without network or cache, PRETRAINED_DIR == PRETRAINED_FILE == the hub path, the original's stem,
and the fetcher against a stand-in download. Nothing here touches the network."""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from conftest import nothing_in
from safetensors.torch import save_file

from common import recipes
from common.constants import CHANNELS
from common.models import models, weights, weights_fetch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """The in-process PRETRAINED=True calls below read local files or a monkeypatched hub: any
    connection attempt (e.g. a timm release that bypasses the patch) fails the test, never downloads."""
    def refuse(*args, **kwargs):
        raise OSError("tests/test_weights.py: no network in tests")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _offline_env(tmp_path: Path) -> dict:
    cache = tmp_path / "empty-cache"
    cache.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(cache), TORCH_HOME=str(cache), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return env


@pytest.mark.parametrize("script", ["S3_train_pipeline1.py", "S4.2_train_pipeline2.py"])
def test_scripts_stop_at_start_with_one_message_offline(script, tmp_path):
    empty = tmp_path / "weights"
    empty.mkdir()
    # the defaults of the issue (tf_efficientnet_b0.ns_jft_in1k, PRETRAINED true); no data either:
    # the weights are checked before any input is read
    proc = subprocess.run([sys.executable, str(ROOT / script), "--PRETRAINED_DIR", str(empty),
                           "--OUTPUT_DIR", str(tmp_path / "out"), "--EPOCHS", "1", "--MAX_IMAGES", "8"],
                          env=_offline_env(tmp_path), cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    err = proc.stderr
    assert proc.returncode == 1, (proc.returncode, err[-2000:])
    assert "Traceback" not in err
    assert "'tf_efficientnet_b0.ns_jft_in1k'" in err and str(empty) in err
    assert "timm hub" in err and "cache" in err
    for way in ("--PRETRAINED_DIR", "--PRETRAINED_FILE", "--PRETRAINED false", "fetch_weights.py"):
        assert way in err
    assert len(err.strip().splitlines()) <= 6
    assert nothing_in(tmp_path / "out")


def test_s3_stops_fast_without_network_and_without_hf_hub_offline(tmp_path):
    """A Kaggle notebook with internet off sets no HF_HUB_OFFLINE: S3 (default model, no local weights)
    run in a private network namespace tries the hub's host once and stops with the whole message,
    no retries, about as fast as with HF_HUB_OFFLINE=1 (the issue: 55 s and 24 'Retrying' lines, 7 s
    with the variable; here the bound is that time plus HUB_CONNECT_TIMEOUT and a margin)."""
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -n (a private network namespace) is not available here")
    empty = tmp_path / "weights"
    empty.mkdir()
    argv = [sys.executable, str(ROOT / "S3_train_pipeline1.py"), "--PRETRAINED_DIR", str(empty),
            "--OUTPUT_DIR", str(tmp_path / "out")]
    seconds, errs = {}, {}
    for offline in (True, False):
        env = _offline_env(tmp_path)
        if not offline:
            del env["HF_HUB_OFFLINE"]
        t0 = time.monotonic()
        proc = subprocess.run(["unshare", "-n", *argv], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
        seconds[offline], errs[offline] = time.monotonic() - t0, proc.stderr
        assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    err = errs[False]
    print(f"S3 offline: {seconds[True]:.1f} s with HF_HUB_OFFLINE=1, {seconds[False]:.1f} s without")
    assert "Traceback" not in err and "Retrying" not in err and "HF_HUB_OFFLINE" not in err
    assert len(err.strip().splitlines()) == 4                             # the one message, whole
    assert "huggingface.co:443 cannot be reached" in err and "the caches have no copy" in err
    assert err.rstrip().endswith("or --PRETRAINED false (random initial weights)")
    assert seconds[False] < min(15.0, seconds[True]) + weights.HUB_CONNECT_TIMEOUT + 5, seconds
    assert nothing_in(tmp_path / "out")


def _resnet18_file(path: Path) -> dict:
    torch.manual_seed(3)
    sd = timm.create_model("resnet18", pretrained=False).state_dict()  # a 3-channel, 1000-class checkpoint
    save_file(sd, str(path))
    return sd


def test_pretrained_dir_equals_pretrained_file_and_the_hub(tmp_path, monkeypatch):
    folder = tmp_path / "w"
    folder.mkdir()
    sd = _resnet18_file(folder / "resnet18.a1_in1k.safetensors")  # the name fetch_weights writes
    conv = "conv1.weight"
    torch.manual_seed(0)
    from_dir = models.Classifier("resnet18", pretrained=True, pretrained_dir=str(folder))
    torch.manual_seed(1)
    from_file = models.Classifier("resnet18", pretrained_file=str(folder / "resnet18.a1_in1k.safetensors"))
    # the hub path: timm's own download replaced by the same checkpoint
    import timm.models._builder as builder

    calls = []
    monkeypatch.setattr(builder, "load_state_dict_from_hf",
                        lambda *a, **k: calls.append(a) or {k2: v.clone() for k2, v in sd.items()})
    torch.manual_seed(2)
    from_hub = models.Classifier("resnet18", pretrained=True, pretrained_dir=str(tmp_path / "nothing"))
    assert calls and calls[0][0] == "timm/resnet18.a1_in1k"
    w_dir, w_file, w_hub = (m.backbone.state_dict()[conv] for m in (from_dir, from_file, from_hub))
    assert w_dir.shape == (64, 4, 7, 7)
    assert torch.equal(w_dir, w_file) and torch.equal(w_dir, w_hub)
    # timm's widening: (R, G, B, R) x 3/4, and the rest of the checkpoint unchanged
    torch.testing.assert_close(w_dir, torch.cat([sd[conv], sd[conv][:, :1]], 1) * 0.75)
    key = "layer4.1.bn2.running_var"
    assert torch.equal(from_dir.backbone.state_dict()[key], sd[key])


def test_dir_lookup_names_and_the_original_stem(tmp_path):
    folder = tmp_path / "w"
    folder.mkdir()
    sd = _resnet18_file(folder / "resnet18.safetensors")  # tag-less file: found for any tag
    assert weights.find_in_dir("resnet18.tv_in1k", folder) == folder / "resnet18.safetensors"
    assert weights.find_in_dir("resnet34", folder) is None
    assert weights.file_names("resnet18")[:4] == ["resnet18.safetensors", "resnet18.pth", "resnet18.bin",
                                                   "resnet18.a1_in1k.safetensors"]
    clf = models.Classifier("resnet18", pretrained=True, pretrained_dir=str(folder), stem_init="original")
    w3, w4 = sd["conv1.weight"], clf.backbone.conv1.weight.detach()
    # the original: filters (R, G, B, R), unscaled, on its channels (blue, green, red, yellow)
    rgb = {"blue": 0, "green": 1, "red": 2, "yellow": 0}
    torch.testing.assert_close(w4, torch.stack([w3[:, rgb[c]] for c in CHANNELS], 1))
    assert not torch.equal(w4[:, 0], w4[:, 2])
    # a 4-channel checkpoint is no timm widening: left as it is
    four = folder / "four.safetensors"
    save_file(clf.backbone.state_dict(), str(four))
    again = models.Classifier("resnet18", pretrained_file=str(four), stem_init="original")
    assert torch.equal(again.backbone.conv1.weight, clf.backbone.conv1.weight)
    with pytest.raises(ValueError, match="stem_init"):
        models.Classifier("resnet18", stem_init="rgb")


def test_require_sources(tmp_path):
    folder = tmp_path / "w"
    folder.mkdir()
    _resnet18_file(folder / "resnet18.safetensors")
    base = {"MODEL_NAME": "resnet18", "PRETRAINED": True, "PRETRAINED_FILE": "",
            "PRETRAINED_DIR": str(folder), "STEM_INIT": "timm"}
    assert weights.require(base) == str(folder / "resnet18.safetensors")
    assert weights.require({**base, "PRETRAINED": False, "PRETRAINED_DIR": ""}) == "random init"
    with pytest.raises(weights.PretrainedUnavailable, match="nope.pth"):
        weights.require({**base, "PRETRAINED_FILE": str(tmp_path / "nope.pth")})
    with pytest.raises(weights.PretrainedUnavailable, match="STEM_INIT"):
        weights.require({**base, "STEM_INIT": "bgr"})


def _load_tool():
    spec = importlib.util.spec_from_file_location("fetch_weights_tool", ROOT / "tools" / "fetch_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_recipes_all_is_the_originals_nine_backbones():
    names = weights_fetch.recipe_models("all")
    assert len(names) == 9 and set(names) == set(recipes.BACKBONES.values())
    for name in names:  # every one is a current timm name with pretrained weights
        assert name in timm.list_pretrained(name)
    assert weights_fetch.recipe_models("original_pipeline2", "resnet18,mixnet_m.ft_in1k")[-1] == "resnet18"
    assert weights_fetch.recipe_models("p1_densenet121_center_f2") == ["densenet121.ra_in1k"]
    with pytest.raises(ValueError, match="unknown recipe"):
        weights_fetch.recipe_models("nine")


def test_fetch_weights_with_a_stand_in_download(tmp_path):
    tool = _load_tool()
    calls = []

    def fake_download(name):
        calls.append(name)
        torch.manual_seed(len(calls))
        arch = name.partition(".")[0]
        return {"state_dict": timm.create_model(arch, pretrained=False).state_dict()}  # a wrapped checkpoint

    out = tmp_path / "w"
    argv = ["--MODELS", "resnet18,test_resnet", "--DATASET_ID", "me/timm-weights", str(out)]
    rows = tool.main(argv, download=fake_download, location=lambda n: f"fake:{n}")
    assert json.loads((out / "dataset-metadata.json").read_text()) == {
        "title": "timm-weights", "id": "me/timm-weights", "licenses": [{"name": "CC0-1.0"}]}
    text = (out / weights_fetch.MANIFEST).read_text()
    assert str(tmp_path) not in text and '"/' not in text                 # no absolute path
    assert calls == ["resnet18.a1_in1k", "test_resnet.r160_in1k"]
    manifest = json.loads((out / weights_fetch.MANIFEST).read_text())
    names = ["resnet18.a1_in1k", "test_resnet.r160_in1k"]
    assert [r["model"] for r in manifest] == names == [r["model"] for r in rows]
    for r in manifest:
        f = out / r["file"]
        assert f.is_file() and r["sha256"] == weights_fetch.sha256(f) and r["bytes"] == f.stat().st_size
        assert r["source"] == f"fake:{r['model']}"
    assert not list(out.glob("*.tmp"))
    # a second run skips both; a changed file is fetched again
    tool.main(argv, download=fake_download, location=lambda n: f"fake:{n}")
    assert len(calls) == 2
    (out / "test_resnet.r160_in1k.safetensors").write_bytes(b"broken")
    tool.main(argv, download=fake_download, location=lambda n: f"fake:{n}")
    assert calls[2:] == ["test_resnet.r160_in1k"]
    # the fetched file is a PRETRAINED_DIR for the scripts' model builder
    clf = models.build_classifier({"MODEL_NAME": "resnet18", "PRETRAINED": True, "PRETRAINED_DIR": str(out),
                                   "PRETRAINED_FILE": "", "STEM_INIT": "timm", "DROPOUT": 0.5,
                                   "MSD_SAMPLES": 5})
    torch.manual_seed(1)
    ref = timm.create_model("resnet18", pretrained=False).state_dict()["conv1.weight"]
    torch.testing.assert_close(clf.backbone.conv1.weight[:, :3].detach(), ref * 0.75)


def test_fetch_weights_help_and_a_bad_dataset_id(tmp_path, capsys):
    tool = _load_tool()
    with pytest.raises(SystemExit) as e:
        tool.main(["--help"])
    assert e.value.code == 0
    shown = capsys.readouterr().out
    assert "usage: python tools/fetch_weights.py" in shown and "--DATASET_ID" in shown
    assert "kaggle datasets create -p" in shown and "--RECIPES all" in shown     # the example
    with pytest.raises(SystemExit, match="DATASET_ID 'timm-weights': expected owner/slug"):
        tool.main(["--MODELS", "resnet18", "--DATASET_ID", "timm-weights", str(tmp_path / "w")],
                  download=lambda n: pytest.fail("downloaded despite a bad DATASET_ID"))
    assert not (tmp_path / "w").exists()


def test_fetch_weights_reports_a_failed_download(tmp_path):
    tool = _load_tool()

    def offline(name):
        raise OSError("no network")

    with pytest.raises(SystemExit, match="could not fetch 1 model"):
        tool.main(["--MODELS", "resnet18", str(tmp_path / "w")], download=offline)
    assert not (tmp_path / "w" / weights_fetch.MANIFEST).exists()
