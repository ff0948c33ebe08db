"""Benchmark of reading one's own fields (S5 --IMAGES): peak memory against the field's decoded size.

Writes one field of SIDE x SIDE x 4 uint16 (smooth synthetic data, the default 4096 px: S5's whole
MAX_PIXELS) in each layout, one 4-plane TIFF, four 16-bit PNGs, four .tif.gz, and as 12-bit data (the
bit-depth rule's path) and float32 in [0, 1], then reads each with ``fields.read_field`` as S5 does,
traced by ``tracemalloc`` (numpy's buffers included). Prints one row per layout: decoded MB (the
arrays the files decode to), peak MB while reading, peak / decoded, seconds; the last row is S5's
whole ``FieldSource.load`` of the TIFF (read, pad square, segment at 512 px, label map at full size).
Target: peak <= 3 x decoded.

    python benchmarks/bench_field_memory.py
    python benchmarks/bench_field_memory.py --SIDE 2048
"""
# ---------------------------------------------------------------------------- data
SIDE = 4096                  # field side (px); 4096 x 4096 x 4 is S5's MAX_PIXELS
MAX_PIXELS = 4096 * 4096 * 4  # the budget of a read (S5's default)
SEGMENTER = "builtin"        # the last row: S5's whole load of the TIFF (read, pad, segment) with this
# ---------------------------------------------------------------------------- output
BENCH_DIR = ""               # keep the files here ("" = a temporary folder, removed)

import gzip
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np
import tifffile

from common import config, io
from common.predict import fields


def synthetic(side: int) -> np.ndarray:
    """4 x side x side uint16: smooth blobs (compresses like a micrograph, not like noise)."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    planes = [np.sin(7 * x + k) * np.cos(5 * y - k) for k in range(4)]
    return np.stack([((p + 1) * 30000).astype(np.uint16) for p in planes])


def layouts(folder: Path, img: np.ndarray) -> dict:
    """{name: (Field, decoded bytes)} of the layouts written to ``folder``."""
    out = {}
    tifffile.imwrite(folder / "tiff.tif", img, photometric="minisblack")
    out["4-plane TIFF, 16-bit"] = (fields.Field("tiff", (folder / "tiff.tif",)), img.nbytes)
    names = [folder / f"png_ch{k}.png" for k in range(4)]
    for k, p in enumerate(names):
        io.imwrite(p, img[k])
    out["4 PNGs, 16-bit"] = (fields.Field("png", tuple(names)), img.nbytes)
    gz = [folder / f"gz_ch{k}.tif.gz" for k in range(4)]
    for k, p in enumerate(gz):
        tifffile.imwrite(folder / "t.tif", img[k])
        p.write_bytes(gzip.compress((folder / "t.tif").read_bytes(), compresslevel=1))
    out["4 .tif.gz, 16-bit"] = (fields.Field("gz", tuple(gz)), img.nbytes)
    tifffile.imwrite(folder / "d12.tif", img >> 4, photometric="minisblack")
    out["4-plane TIFF, 12-bit data"] = (fields.Field("d12", (folder / "d12.tif",)), img.nbytes)
    f32 = (img / np.float32(65535)).astype(np.float32)
    tifffile.imwrite(folder / "f32.tif", f32, photometric="minisblack")
    out["4-plane TIFF, float32"] = (fields.Field("f32", (folder / "f32.tif",)), f32.nbytes)
    return out


def main(argv=None):
    cfg = config.parse(globals(), argv)
    config.require_positive(cfg, "SIDE")
    folder = Path(cfg.BENCH_DIR) if cfg.BENCH_DIR else Path(tempfile.mkdtemp(prefix="bench_fields_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        cases = layouts(folder, synthetic(cfg.SIDE))
        print(f"| layout ({cfg.SIDE}² x 4) | decoded MB | peak MB | peak / decoded | s |")
        print("|---|---|---|---|---|")
        s5 = dict(TIFF_PLANES=[0, 1, 2, 3], IMAGE_SIZE=512, SEG_AT="auto", TIFF_Z_PLANE=-1, RESCALE=False,
                  RESCALE_PERCENTILES=[0, 100], MAX_PIXELS=cfg.MAX_PIXELS, SEGMENTER=cfg.SEGMENTER,
                  HPA_SEG_DIR="input/hpa-seg", DEVICE="cpu")
        source = fields.FieldSource(s5, [cases["4-plane TIFF, 16-bit"][0]])
        cases[f"S5's load of the TIFF ({cfg.SEGMENTER})"] = (None, cases["4-plane TIFF, 16-bit"][1])
        for name, (f, decoded) in cases.items():
            tracemalloc.start()
            t0 = time.time()
            got = source.load("tiff") if f is None else fields.read_field(f, [0, 1, 2, 3], None, -1,
                                                                         cfg.MAX_PIXELS)
            seconds = time.time() - t0
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            del got
            mb = decoded / 2**20
            print(f"| {name} | {mb:.0f} | {peak / 2**20:.0f} | {peak / decoded:.2f} | {seconds:.1f} |")
    finally:
        if not cfg.BENCH_DIR:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
