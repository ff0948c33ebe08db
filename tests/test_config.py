"""The constants-block override mechanism shared by all scripts."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from common import config, device, needs, provenance


def _ns():
    return {"EPOCHS": 3, "LR": 1e-3, "NAME": "run", "AMP": True, "SIZES": (128, 256),
            "TAGS": ["a"], "OPTIONAL": None, "lowercase": 1, "_PRIVATE": 2}


def test_defaults_and_typed_overrides():
    ns = _ns()
    cfg = config.parse(ns, ["--EPOCHS", "7", "--lr", "0.5", "--NAME=x", "--AMP", "false",
                            "--SIZES", "64,96", "--TAGS", '["b","c"]', "--OPTIONAL", "path"], quiet=True)
    assert cfg.EPOCHS == 7 and isinstance(cfg.EPOCHS, int)
    assert cfg.LR == 0.5 and isinstance(cfg.LR, float)
    assert cfg.NAME == "x" and cfg.AMP is False
    assert cfg.SIZES == (64, 96) and cfg.TAGS == ["b", "c"] and cfg.OPTIONAL == "path"
    assert ns["EPOCHS"] == 7, "the script's globals are updated"
    assert "lowercase" not in cfg and "_PRIVATE" not in cfg


def test_bare_bool_flag_means_true():
    cfg = config.parse({"OVERWRITE": False, "N": 1}, ["--OVERWRITE", "--N", "2"], quiet=True)
    assert cfg.OVERWRITE is True and cfg.N == 2


@pytest.mark.parametrize("argv, message", [
    (["--EPOCH", "3"], "unknown constant --EPOCH"),
    (["--EPOCHS", "three"], "--EPOCHS: cannot read 'three' as int"),
    (["--AMP", "maybe"], "--AMP: cannot read 'maybe' as bool"),
    (["--EPOCHS"], "--EPOCHS needs a value"),
    (["EPOCHS", "3"], "unexpected argument"),
])
def test_bad_overrides_are_rejected(argv, message):
    with pytest.raises(SystemExit) as e:
        config.parse(_ns(), argv, quiet=True)
    assert message in str(e.value)
    if "unknown" in message:
        assert "--EPOCHS" in str(e.value) and "--LR" in str(e.value), "lists the valid names"


def test_renamed_and_removed_constants_stop_with_one_line(capsys):
    renamed, removed = {"OLD_DIR": "NAME", "EPOCH": "EPOCHS"}, {"PIPELINE": "it is always 1"}
    for argv, message in (
            (["--OLD_DIR", "x"], "--OLD_DIR was renamed --NAME (default 'run'); use the new name"),
            (["--epoch=4"], "--EPOCH was renamed --EPOCHS (default 3); use the new name"),
            (["--EPOCHS", "2", "--PIPELINE", "2"], "--PIPELINE was removed: it is always 1")):
        with pytest.raises(SystemExit) as e:
            config.parse(_ns(), argv, quiet=True, renamed=renamed, removed=removed)
        assert str(e.value) == message and e.value.code == message  # one line: exit status 1
    cfg = config.parse(_ns(), ["--NAME", "x", "--EPOCHS", "4"], quiet=True, renamed=renamed, removed=removed)
    assert cfg.NAME == "x" and cfg.EPOCHS == 4 and "OLD_DIR" not in cfg and "PIPELINE" not in cfg
    with pytest.raises(SystemExit):
        config.parse(_ns(), ["--help"], renamed=renamed, removed=removed)
    assert "(--OLD_DIR was renamed --NAME" in capsys.readouterr().out
    with pytest.raises(ValueError, match="NOPE"):    # a map that does not fit the constants: the script's bug
        config.parse(_ns(), [], quiet=True, renamed={"X": "NOPE"})
    with pytest.raises(ValueError, match="EPOCHS"):
        config.parse(_ns(), [], quiet=True, removed={"EPOCHS": "gone"})


def test_save_and_load_round_trip(tmp_path):
    cfg = config.parse(_ns(), ["--EPOCHS", "5"], quiet=True)
    path = config.save(cfg, tmp_path / "run" / "config.json")
    data = json.loads(path.read_text())
    assert data["EPOCHS"] == 5 and data["SIZES"] == [128, 256]
    assert config.load(path).EPOCHS == 5
    assert not list((tmp_path / "run").glob(".*tmp*")), "no temporary file left behind"


def test_to_jsonable_is_the_one_conversion_of_constants_to_json():
    """config.json and a checkpoint's ``config`` hold the same plain values (train keeps no second
    converter): tuples as lists, values JSON cannot write as their ``str``."""
    out = config.to_jsonable({"A": (1, 2), "P": Path("x/y"), "N": None, "L": [1.5, "s"]})
    assert out == {"A": [1, 2], "P": "x/y", "N": None, "L": [1.5, "s"]}
    json.dumps(out)


def test_empty_list_default_reads_numbers():
    cfg = config.parse({"CLASSES": []}, ["--CLASSES", "11,15,x"], quiet=True)
    assert cfg.CLASSES == [11, 15, "x"]


def test_second_parse_starts_from_the_constants_block():
    ns = _ns()
    config.parse(ns, ["--EPOCHS", "9"], quiet=True)
    assert ns["EPOCHS"] == 9
    cfg = config.parse(ns, [], quiet=True)
    assert cfg.EPOCHS == 3 and ns["EPOCHS"] == 3


def test_save_records_the_environment(tmp_path):
    import torch  # noqa: F401 - a step that uses torch records its threads (and CUDA when used)

    path = config.save({"EPOCHS": 1, "DEVICE": "cpu"}, tmp_path / "config.json")
    env = json.loads(path.read_text())["environment"]
    assert env["device"] == "cpu" and env["cpu"] and env["python"] and env["cpu_count"] >= 1
    for name in ("torch", "timm", "numpy", "albumentations", "pandas", "scikit-image", "scipy"):
        assert env["packages"][name], name
    assert any(k.startswith("opencv") for k in env["packages"])
    assert env["packages"]["torch"].startswith("2.14.1") and "torch_threads" in env
    assert "gpu" not in env                                     # a CPU run names no GPU
    bare = config.save({"A": 1}, tmp_path / "b.json", record_environment=False)
    assert json.loads(bare.read_text()) == {"A": 1}


def test_every_saved_environment_holds_the_cpu_capability(tmp_path):
    """What picks the floating-point kernels is saved with every config, also by a step that never
    imported torch (S0, S2, S6): torch's CPU capability, the CPU flags that matter, the threads."""
    import subprocess
    import sys

    import torch

    code = ("import sys; from common import config, device; assert 'torch' not in sys.modules; "
            f"config.save({{'A': 1}}, {str(tmp_path / 'c.json')!r})")
    env = {**os.environ, "PYTHONPATH": str(config.Path(config.__file__).resolve().parents[1]),
           "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    saved = [json.loads((tmp_path / "c.json").read_text())["environment"],
             json.loads(config.save({"A": 1}, tmp_path / "d.json").read_text())["environment"]]
    for e in saved:
        assert e["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        cap = e["cpu_capability"]
        assert cap in ("DEFAULT", "AVX2", "AVX512", "NO AVX") or cap.startswith(("SVE", "VSX", "ZVECTOR"))
        assert e["torch_threads"] >= 1
        flags = provenance._cpu_flags()
        assert e["cpu_flags"] == flags and (flags is None or set(flags) <= set(provenance.CPU_FLAGS))
    assert saved[0]["omp_num_threads"] == "1" and saved[0]["torch_threads"] == 1
    if config.Path("/proc/cpuinfo").is_file() and "avx2" in config.Path("/proc/cpuinfo").read_text():
        assert "avx2" in saved[0]["cpu_flags"]


def test_environment_names_the_gpu_on_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA Test GPU")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91000)
    env = provenance.environment("auto")
    assert env["device"] == "cuda" and env["gpu"] == ["NVIDIA Test GPU"] and "cuda" in env
    assert "gpu" not in provenance.environment("cpu")            # CUDA present but not used


def test_need_names_the_part_and_every_missing_constant():
    """One table says which constants a part of common/ needs; a missing one is a KeyError naming it."""
    needs.need({k: 1 for k in needs.NEEDS["MIL head"]}, "MIL head")
    cfg = {k: 1 for k in needs.NEEDS["cell pooling"] if k not in ("MIL_TOPK", "CELLPOOL_STRIDE")}
    with pytest.raises(KeyError, match="cell pooling needs MIL_TOPK, CELLPOOL_STRIDE: define them in "
                                       "the script's constants") as e:
        needs.need(cfg, "cell pooling")
    assert e.value.names == ("MIL_TOPK", "CELLPOOL_STRIDE") and e.value.part == "cell pooling"


def test_common_reads_no_config_key_with_a_default():
    """No ``cfg.get(key, default)`` in common/: every default lives in a script's constants block."""
    import ast

    root = config.Path(config.__file__).resolve().parent
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            f = node.func if isinstance(node, ast.Call) else None
            if (isinstance(f, ast.Attribute) and f.attr == "get" and isinstance(f.value, ast.Name)
                    and f.value.id in ("cfg", "config", "c")):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not found, f"config read with a default: {found}"


def test_one_device_rule():
    import torch

    assert device.device_name("auto", True) == "cuda" and device.device_name("auto", False) == "cpu"
    assert device.device_name("cuda:1", False) == "cuda:1"
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert device.resolve_device("auto") == torch.device(want)
    assert device.resolve_device("cpu") == device.resolve_device(torch.device("cpu")) == torch.device("cpu")
