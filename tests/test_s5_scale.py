"""S5 at scale (issue 35): its parts (OUTPUT_DIR/.s5_parts), a run killed and resumed, torchrun ranks,
--SHARD + --MERGE, cells.parquet, and peak memory that does not grow with the number of fields. Every
way gives the outputs of one uninterrupted process, byte for byte (cells.parquet: value for value; its
row groups follow CHUNK). One tiny run shared; fields of 64 px, in both modes (competition, --IMAGES)."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import load_script
from own_images_data import field, train_tiny, write_channel_files, write_competition

from common import lock
from common.predict import parts

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
S3 = load_script("S3_train_pipeline1.py")
S5 = load_script("S5_predict.py")
N_FIELDS = 7
CHANNELS = ["_red", "_green", "_blue", "_yellow"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}     # as this process: the same floats
# s5_config.json keys that say where and how the parts were made (the rest must agree)
WHERE = ("OUTPUT_DIR", "CHUNK", "SHARD", "MERGE", "OVERWRITE", "environment")
MEMORY_BOUND_MB = 24   # peak RSS at 400 fields minus at 40 (measured: +10 to +14 MB; +32 MB before streaming)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A 1-step run, N_FIELDS fields (two widths) as a competition test set and as an --IMAGES folder
    (there with a field whose protein file is broken), and one uninterrupted S5 of each."""
    root = tmp_path_factory.mktemp("scale")
    run = train_tiny(S3, root)
    fields = {f"f{k}": field(k, 64, 64 + 16 * (k % 2)) for k in range(N_FIELDS)}
    write_competition(root / "comp", fields)
    write_channel_files(root / "own", fields, CHANNELS, ".png")
    (root / "own" / "f3_green.png").write_bytes(b"\x89PNG broken")
    common = ["--RUNS", str(run), "--DEVICE", "cpu", "--TTA", "1", "--BATCH_SIZE", "8", "--N_OVERLAYS", "3",
              "--SEGMENTER", "builtin", "--IMAGE_SIZE", "64", "--HPA512_DIR", str(root / "no_s2"),
              "--COMPETITION_DIR", str(root / "comp")]
    modes = {"comp": common, "own": [*common, "--IMAGES", str(root / "own")]}
    for mode, args in modes.items():
        S5.main([*args, "--OUTPUT_DIR", str(root / f"ref_{mode}")])
    return dict(root=root, modes=modes, ref={m: root / f"ref_{m}" for m in modes})


def _files(folder: Path) -> dict[str, bytes]:
    """The files under ``folder`` but the lock (a killed run leaves it; the next takes it over)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _same(out: Path, ref: Path) -> None:
    """``out`` holds the files of ``ref``, byte for byte (s5_config.json but where the parts were made;
    cells.parquet value for value), and no parts, lock or shard record are left."""
    got, want = _files(out), _files(ref)
    assert sorted(got) == sorted(want)
    for name in want:
        if name == "s5_config.json":
            a, b = ({k: v for k, v in json.loads(x[name]).items() if k not in WHERE} for x in (got, want))
            assert a == b
        elif name == "cells.parquet":
            pd.testing.assert_frame_equal(pd.read_parquet(out / name), pd.read_parquet(ref / name))
        else:
            assert got[name] == want[name], name


def _cmd(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "S5_predict.py"), *args]


def _parts(out: Path) -> list[Path]:
    return sorted((out / ".s5_parts").glob("part-*.pkl"))


def _kill_after(args: list[str], n_parts: int) -> int:
    """Start S5 in a process, SIGKILL it once ``n_parts`` parts are written; the parts there."""
    out = Path(args[args.index("--OUTPUT_DIR") + 1])
    proc = subprocess.Popen(_cmd(*args), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    t0 = time.time()
    while len(_parts(out)) < n_parts and proc.poll() is None and time.time() - t0 < 120:
        time.sleep(0.01)
    assert proc.poll() is None, f"S5 ended (status {proc.returncode}) before {n_parts} part(s) were written"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    return len(_parts(out))


def _refused(fn) -> str:
    with pytest.raises(SystemExit) as e:
        fn()
    msg = str(e.value.code)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


@pytest.mark.parametrize("mode", ["comp", "own"])
def test_parts_of_any_chunk_size_give_one_process_outputs_and_parquet_equals_csv(setup, mode):
    out = setup["root"] / f"chunk2_{mode}"
    S5.main([*setup["modes"][mode], "--OUTPUT_DIR", str(out), "--CHUNK", "2"])
    _same(out, setup["ref"][mode])
    csv = pd.read_csv(out / "cells.csv", dtype={"image": str})
    parquet = pd.read_parquet(out / "cells.parquet")
    assert len(csv) > 0 and list(parquet.columns) == list(csv.columns)
    assert str(parquet["cell_id"].dtype) == "int32" and parquet["touches_border"].dtype == bool
    pd.testing.assert_frame_equal(parquet, csv, check_dtype=False)


@pytest.mark.parametrize("mode", ["comp", "own"])
def test_a_killed_run_resumes_and_other_constants_stop_it(setup, mode, capsys):
    rng = random.Random(mode)
    out = setup["root"] / f"killed_{mode}"
    args = [*setup["modes"][mode], "--OUTPUT_DIR", str(out), "--CHUNK", "1"]
    n_done = _kill_after(args, rng.randint(1, N_FIELDS - 2))
    assert 1 <= n_done < N_FIELDS and not (out / "submission.csv").exists()
    before = _files(out)
    msg = _refused(lambda: S5.main([*args, "--TTA", "2"]))
    assert msg.startswith(f"S5: {out / '.s5_parts'} holds the parts of an unfinished run with other settings "
                          "(TTA 1 -> 2)") and msg.endswith("start afresh with --OVERWRITE true")
    assert _files(out) == before
    first = setup["root"] / ("comp/test" if mode == "comp" else "own") / "f0_green.png"  # chunk 0's field
    st = first.stat()
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # its file changed since it was scored
    capsys.readouterr()
    S5.main(args)
    said = capsys.readouterr().out
    assert "S5: 1 chunk(s) done before are scored again: their fields' files changed since (chunks 0)" in said
    assert f"S5: resuming: {n_done - 1} of {N_FIELDS} fields already done" in said or n_done == 1
    _same(out, setup["ref"][mode])


def test_overwrite_starts_afresh_with_other_constants(setup, capsys):
    out, ref = setup["root"] / "overwritten", setup["root"] / "ref_tta2"
    args = [*setup["modes"]["comp"], "--OUTPUT_DIR", str(out), "--CHUNK", "1"]
    _kill_after(args, 2)
    S5.main([*setup["modes"]["comp"], "--OUTPUT_DIR", str(ref), "--TTA", "2"])
    capsys.readouterr()
    S5.main([*args, "--TTA", "2", "--OVERWRITE", "true"])
    assert "resuming" not in capsys.readouterr().out
    _same(out, ref)


def test_torchrun_two_ranks_give_one_process_outputs(setup):
    out = setup["root"] / "torchrun"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    proc = subprocess.run([*torchrun, str(ROOT / "S5_predict.py"), *setup["modes"]["own"], "--OUTPUT_DIR",
                           str(out), "--CHUNK", "2"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "S5 rank 0" in proc.stderr and "S5 rank 1" in proc.stderr
    assert proc.stdout.count("S5: wrote ") == 2  # rank 0 alone: the report and the submission
    _same(out, setup["ref"]["own"])


@pytest.mark.parametrize("mode", ["comp", "own"])
def test_shards_then_merge_give_one_process_outputs_and_a_missing_shard_is_named(setup, mode, monkeypatch):
    out = setup["root"] / f"shards_{mode}"
    args = [*setup["modes"][mode], "--OUTPUT_DIR", str(out), "--CHUNK", "1"]
    for i in (0, 1):
        assert S5.main([*args, "--SHARD", f"{i}/3"]) is None
    assert not (out / "submission.csv").exists()
    msg = _refused(lambda: S5.main([*args, "--MERGE", "true"]))
    assert msg.startswith(f"S5: --MERGE: shard(s) 2/3 missing (chunks 2, 5) in {out / '.s5_parts'}")
    S5.main([*args, "--SHARD", "2/3"])
    with lock.hold(out, "S5", "shard1of3"):  # a shard still running
        msg = _refused(lambda: S5.main([*args, "--MERGE", "true"]))
    assert msg.startswith(f"S5: {out} (shard1of3) is being written by S5 (pid {os.getpid()} on ")

    def no_model(*a, **k):
        raise AssertionError("the merge built a model or a segmenter")

    monkeypatch.setattr(S5.predict, "RunPredictor", no_model)  # the merge scores nothing: no model, no GPU
    monkeypatch.setattr(S5.fields.segmentation, "get_segmenter", no_model)
    S5.main([*args, "--MERGE", "true"])
    _same(out, setup["ref"][mode])


def test_csv_max_cells_skips_cells_csv_with_a_note(setup, capsys):
    out = setup["root"] / "no_csv"
    S5.main([*setup["modes"]["comp"], "--OUTPUT_DIR", str(out), "--CSV_MAX_CELLS", "1"])
    note = "above CSV_MAX_CELLS 1: cells.csv is not written; cells.parquet holds them"
    assert note in capsys.readouterr().out
    assert not (out / "cells.csv").exists()
    ref = pd.read_csv(setup["ref"]["comp"] / "cells.csv", dtype={"image": str})
    pd.testing.assert_frame_equal(pd.read_parquet(out / "cells.parquet"), ref, check_dtype=False)


def _peak_rss_mb(args: list[str]) -> float:
    """Peak RSS of S5 run to its end in a fresh process (MB): its VmHWM, as ``ru_maxrss`` would say
    but for this process alone (Linux keeps ``ru_maxrss`` across exec: a child of this big pytest process
    would report at least this one's peak)."""
    code = ("import re, runpy, sys, torch; torch.set_num_threads(1); "
            f"sys.argv = {['S5_predict.py', *args]!r}\n"
            "try:\n    runpy.run_path('S5_predict.py', run_name='__main__')\n"
            "finally:\n    status = open('/proc/self/status').read()\n"
            "    print('VmHWM', re.search(r'VmHWM:\\s+(\\d+)', status)[1])")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return int(proc.stdout.split("VmHWM")[-1]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmHWM of /proc (Linux)")
def test_peak_memory_does_not_grow_with_the_fields(setup):
    """400 fields of 256 px (4 pictures under distinct names, report on) against 40: the peak RSS grows
    by less than MEMORY_BOUND_MB (before streaming every field's label map, picture and rows stayed)."""
    base, peaks = setup["root"] / "mem_base", {}
    write_channel_files(base, {f"b{k}": field(k, 256, 256) for k in range(4)}, CHANNELS, ".png")
    for n in (40, 400):
        folder = setup["root"] / f"mem{n}"
        folder.mkdir()
        for i in range(n):
            for ch in CHANNELS:
                os.link(base / f"b{i % 4}{ch}.png", folder / f"x{i:05d}{ch}.png")
        peaks[n] = _peak_rss_mb([*setup["modes"]["comp"], "--N_OVERLAYS", "1", "--IMAGES", str(folder),
                                 "--OUTPUT_DIR", str(setup["root"] / f"mem_out{n}")])
    print(f"S5 peak RSS: {peaks[40]:.0f} MB at 40 fields, {peaks[400]:.0f} MB at 400")
    assert peaks[400] - peaks[40] < MEMORY_BOUND_MB, peaks


def test_the_inputs_signature_sees_a_changed_file_even_inside_a_field_folder_but_not_a_moved_folder(tmp_path):
    """``parts.signature``: a file's name, size and time, every file under a plate field's folder, an absent
    file; the folder moved elsewhere (a rename keeps the times) signs the same."""
    group = tmp_path / "screen" / "plate.zarr" / "A" / "1" / "0"
    (group / "0").mkdir(parents=True)
    (group / "0" / "c").write_bytes(b"x")
    (tmp_path / "screen" / "f_red.png").write_bytes(b"y")

    def sign(top: Path) -> str:
        return parts.signature([("A_1_0", [top / "plate.zarr" / "A" / "1" / "0"]),
                                ("f", [top / "f_red.png", top / "absent.png"])])

    first = sign(tmp_path / "screen")
    assert sign(tmp_path / "screen") == first
    os.rename(tmp_path / "screen", tmp_path / "moved")
    assert sign(tmp_path / "moved") == first
    (tmp_path / "moved" / "plate.zarr" / "A" / "1" / "0" / "0" / "c").write_bytes(b"xx")
    assert sign(tmp_path / "moved") != first
    second = sign(tmp_path / "moved")
    (tmp_path / "moved" / "absent.png").write_bytes(b"")
    assert sign(tmp_path / "moved") != second


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmRSS of /proc (Linux)")
def test_trim_gives_back_the_heap_pages_a_kept_result_pins():
    """``memory.trim`` (S5 after each field): 200 blocks of 1 MB freed between small kept results stay
    resident under glibc until it runs, then go (where the C library has no ``malloc_trim``: skipped)."""
    code = ("import re\nfrom common import memory\n"
            "def rss():\n"
            "    return int(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read())[1]) // 1024\n"
            "first = bytearray(1 << 20)\ndel first\n"  # glibc's mmap threshold now above 1 MB: heap blocks
            "bigs, keep = [], []\n"
            "for _ in range(200):\n    bigs.append(bytearray(1 << 20))\n    keep.append(bytearray(1024))\n"
            "del bigs\nfreed = rss()\nprint(memory.trim(), freed, rss())\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    trimmed, freed, after = proc.stdout.split()
    if trimmed != "True":
        pytest.skip("no malloc_trim in this C library")
    assert int(freed) - int(after) > 100, proc.stdout
