"""Benchmark S1's downloader: images/s with 1 vs many workers against a local fake HPA server.

The server (the one the tests use) answers on 127.0.0.1 with an artificial per-request latency,
so the numbers show how well the thread pool hides network latency, not the network itself.

    python benchmarks/bench_download.py [--IMAGES 48] [--LATENCY 0.02] [--WORKERS 1,4,16]
"""
# ---------------------------------------------------------------------------- workload
IMAGES = 48  # images listed (4 JPEG channels each)
SIZE = 512  # channel side in pixels
LATENCY = 0.02  # seconds the server waits before each answer
# ---------------------------------------------------------------------------- runs
WORKERS = [1, 4, 16]  # NUM_WORKERS values compared
REPEATS = 1  # runs per setting (the best is reported)

import contextlib
import importlib.util
import io
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import pandas as pd

import S1_external_data_download as s1
from common import config

_spec = importlib.util.spec_from_file_location("test_s1_download", ROOT / "tests" / "test_s1_download.py")
_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tests)  # the fake HPA server of the tests
HPAServer, jpeg_channel = _tests.HPAServer, _tests.jpeg_channel


def main(argv=None):
    cfg = config.parse(globals(), argv)
    rows = [{"Image": f"https://images.proteinatlas.org/{1000 + k}/{k}_A1_1", "Label": "Nucleoplasm",
             "Label_idx": "0", "Cellline": "HeLa", "in_trainset": "False"} for k in range(cfg.IMAGES)]
    table = []
    with tempfile.TemporaryDirectory() as td, HPAServer(latency=cfg.LATENCY) as srv:
        td = Path(td)
        for k in range(cfg.IMAGES):
            for j, c in enumerate(("red", "green", "blue", "yellow")):
                srv.files[f"/{1000 + k}/{k}_A1_1_{c}.jpg"] = jpeg_channel(k * 4 + j, cfg.SIZE)
        mib = sum(len(b) for b in srv.files.values()) / 2**20
        tsv = td / "kaggle_2021.tsv"
        pd.DataFrame(rows).to_csv(tsv, sep="\t", index=False)
        for w in cfg.WORKERS:
            best = float("inf")
            for rep in range(cfg.REPEATS):
                out = td / f"w{w}_{rep}"
                args = ["--HPA_LIST", str(tsv), "--OUT_DIR", str(out / "train_external"),
                        "--OUT_CSV", str(out / "train_external.csv"), "--FAILURES_CSV", str(out / "f.csv"),
                        "--BASE_URL", srv.url, "--NUM_WORKERS", str(w), "--PROGRESS", "false",
                        "--MAX_IMAGES", "0", "--CLASSES", "[]"]
                t0 = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    summary = s1.main(args)
                dt = time.perf_counter() - t0
                if summary["complete"] != cfg.IMAGES:
                    raise SystemExit(f"benchmark run with {w} workers completed {summary['complete']} images")
                best = min(best, dt)
            table.append((w, best, cfg.IMAGES / best, mib / best))
    print(f"\nS1 download: {cfg.IMAGES} images x 4 JPEG channels ({cfg.SIZE} px, {mib:.1f} MiB), "
          f"{cfg.LATENCY * 1000:.0f} ms latency per request, 127.0.0.1")
    print("| workers | seconds | images/s | MiB/s | speed-up |\n|---:|---:|---:|---:|---:|")
    for w, dt, ips, mbs in table:
        print(f"| {w} | {dt:.2f} | {ips:.1f} | {mbs:.1f} | {table[0][1] / dt:.1f}x |")
    return table


if __name__ == "__main__":
    main()
