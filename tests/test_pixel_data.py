"""One's own fields read by rule (common.predict.fields.read_field): the pixel budget checked from the
headers, floats, signed and wide integers, Z / T stacks, dim fields and short reasons; no model needed."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import ROOT, load_script
from own_images_data import declared_tiff, field, gzip_bomb, png_declaring

from common import io
from common.predict import fields

PLANES = [0, 1, 2, 3]
MAX_PIXELS = load_script("S5_predict.py").MAX_PIXELS


def _tiff(path: Path, stack: np.ndarray, **kw) -> fields.Field:
    tifffile.imwrite(path, stack, **({"photometric": "minisblack"} | kw))
    return fields.Field(path.stem, (path,))


def _read(f: fields.Field, rescale=None, z_plane=-1, max_pixels=MAX_PIXELS):
    return fields.read_field(f, PLANES, rescale, z_plane, max_pixels, [])


def _cyx(img: np.ndarray) -> np.ndarray:
    """H x W x 4 -> 4 x H x W."""
    return np.ascontiguousarray(np.moveaxis(img, -1, 0))


def test_floats_in_0_1_are_scaled_other_ranges_refused_unless_rescaled(tmp_path):
    x = np.random.default_rng(0).random((4, 24, 32)).astype(np.float32)
    got, bits = _read(_tiff(tmp_path / "unit.tif", x))
    assert bits is None and np.array_equal(got, np.rint(np.moveaxis(x, 0, -1) * 255))
    y = x * 3
    y[0, 0, 0] = -2
    wide = _tiff(tmp_path / "wide.tif", y)
    with pytest.raises(io.ImageReadError, match=r"wide.tif plane 0: float values from -2 to 2.99.*, outside "
                                                r"\[0, 1\]: use --RESCALE true"):
        _read(wide)
    stretched, _ = _read(wide, rescale=[0, 100])
    assert stretched.min() == 0 and stretched.max() == 255


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused_even_with_rescale(tmp_path, bad):
    x = np.full((4, 16, 16), 0.5, np.float32)
    x[2, 3, 4] = bad
    f = _tiff(tmp_path / "n.tif", x)
    for rescale in (None, [1, 99]):
        with pytest.raises(io.ImageReadError, match="NaN or infinite"):
            _read(f, rescale)


def test_signed_and_wide_integers_by_rule_never_clipped(tmp_path):
    img = _cyx(field(1, 32, 32))
    as_u16, _ = _read(_tiff(tmp_path / "u16.tif", img))
    for dtype in (np.int32, np.uint32, np.int64, np.int16 if img.max() < 32768 else np.int32):
        same, _ = _read(_tiff(tmp_path / f"{np.dtype(dtype).name}.tif", img.astype(dtype)))
        assert np.array_equal(same, as_u16), dtype  # 0..65535 in any integer type: read as 16-bit
    neg = img.astype(np.int32)
    neg[1, 0, 0] = -5
    with pytest.raises(io.ImageReadError, match=r"plane 1: negative values \(down to -5; int32\): use --RES"):
        _read(_tiff(tmp_path / "neg.tif", neg))
    big = img.astype(np.int32)
    big[3, 0, 0] = 70000
    with pytest.raises(io.ImageReadError, match=r"values up to 70000 need more than 16 bits.*--RESCALE true"):
        _read(_tiff(tmp_path / "big.tif", big))
    for name in ("neg", "big"):  # RESCALE stretches any integer range
        got, _ = _read(fields.Field(name, (tmp_path / f"{name}.tif",)), rescale=[0, 100])
        assert got.dtype == np.uint8 and got.max() == 255


def test_z_and_t_axes_are_never_channels(tmp_path):
    img = _cyx(field(2, 32, 32))
    zyx = tmp_path / "zyx.tif"
    tifffile.imwrite(zyx, img, imagej=True, metadata={"axes": "ZYX"})  # 4 slices, not 4 channels
    with pytest.raises(io.ImageReadError, match=r"zyx.tif: a Z-stack of 4 planes \(axes ZYX\), not channels: "
                                                "set TIFF_Z_PLANE"):
        _read(fields.Field("zyx", (zyx,)))
    with pytest.raises(io.ImageReadError, match="1 plane"):  # one Z plane is one channel, not four
        _read(fields.Field("zyx", (zyx,)), z_plane=2)
    stack = np.stack([img // 2, img, img // 3])                      # 3 Z planes of 4 channels
    zcyx = tmp_path / "zcyx.tif"
    tifffile.imwrite(zcyx, stack, imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(io.ImageReadError, match="Z-stack of 3 planes"):
        _read(fields.Field("zcyx", (zcyx,)))
    got, _ = _read(fields.Field("zcyx", (zcyx,)), z_plane=1)
    assert np.array_equal(got, _read(_tiff(tmp_path / "plain.tif", img))[0])
    with pytest.raises(io.ImageReadError, match="TIFF_Z_PLANE 3 is not one of them"):
        _read(fields.Field("zcyx", (zcyx,)), z_plane=3)
    tcyx = tmp_path / "tcyx.tif"
    tifffile.imwrite(tcyx, stack, imagej=True, metadata={"axes": "TCYX"})
    with pytest.raises(io.ImageReadError, match="a time series of 3 planes"):
        _read(fields.Field("tcyx", (tcyx,)))


def test_12_bit_data_in_16_bit_files_read_as_the_same_data_at_full_range(tmp_path):
    img = _cyx(field(3, 48, 48))
    d12 = img >> 4                                                     # 12-bit camera data, max < 4096
    assert 2048 <= d12.max() < 4096
    full = ((d12.astype(np.uint64) * 65535 + 2047) // 4095).astype(np.uint16)  # scaled to the full range
    got12, bits = _read(_tiff(tmp_path / "d12.tif", d12))
    got16, bits16 = _read(_tiff(tmp_path / "full.tif", full))
    assert (bits, bits16) == (12, 16) and np.array_equal(got12, got16)
    assert got12.max() >= 127                                          # not the 16-bit reading (max 16)
    d8 = (img >> 8).astype(np.uint16)                                  # 8-bit data in a 16-bit file
    got8, bits8 = _read(_tiff(tmp_path / "d8.tif", d8))
    assert bits8 == 8 and np.array_equal(got8, d8.astype(np.uint8).transpose(1, 2, 0))


def test_a_field_that_stays_dim_is_listed_not_read_as_black(tmp_path):
    dim = np.zeros((4, 16, 16), np.uint8)
    dim[:, 4:8, 4:8] = 9
    with pytest.raises(io.ImageReadError, match=r"looks dim: brightest value 9 of 255 at 8 bits: use --RES"):
        _read(_tiff(tmp_path / "dim.tif", dim))
    faint = np.full((4, 16, 16), 0.03, np.float32)
    with pytest.raises(io.ImageReadError, match="looks dim"):
        _read(_tiff(tmp_path / "faint.tif", faint))
    got, _ = _read(fields.Field("dim", (tmp_path / "dim.tif",)), rescale=[0, 100])
    assert got.max() == 255


def test_the_budget_is_checked_from_the_headers(tmp_path):
    big = fields.Field("big", (declared_tiff(tmp_path / "big.tif"),))
    with pytest.raises(io.ImageReadError, match=rf"big.tif: too large to decode: 1024000000 pixels \(4 x "
                                                rf"16000 x 16000; MAX_PIXELS {MAX_PIXELS}\)"):
        _read(big)
    names = [tmp_path / f"c_{k}.png" for k in range(3)] + [png_declaring(tmp_path / "c_3.png", 3000, 3000)]
    for p in names[:3]:
        io.imwrite(p, np.full((3000, 3000), 100, np.uint8))
    with pytest.raises(io.ImageReadError, match=r"c_3.png: too large to decode: 36000000 pixels \(3000 x "
                                                r"3000 and 27000000 in the other files; MAX_PIXELS 30000000"):
        _read(fields.Field("c", tuple(names)), max_pixels=30_000_000)


def test_reasons_are_short_and_quote_no_bytes_of_a_link_target(tmp_path, monkeypatch):
    secret = tmp_path / "elsewhere.txt"
    secret.write_bytes(b"hunter2:x:0:0:hunter2:/home:/bin/bash\n")
    for name in ("link.tif", "link_red.png"):
        (tmp_path / name).symlink_to(secret)
        with pytest.raises(io.ImageReadError) as e:
            _read(fields.Field("link", (tmp_path / name,) * (1 if name.endswith(".tif") else 4)))
        assert "hunter2" not in str(e.value)
        assert "cannot decode image (not a PNG, JPEG or TIFF file)" in str(e.value)
    (tmp_path / "fake.tif").write_bytes(b"II*\x00" + b"hunter2:x:0:0" * 10)
    with pytest.raises(io.ImageReadError, match=r"cannot decode image \(not a valid TIFF file") as e:
        _read(fields.Field("fake", (tmp_path / "fake.tif",)))
    assert "hunter2" not in str(e.value)

    f = _tiff(tmp_path / "ok.tif", np.full((4, 8, 8), 100, np.uint8))

    def no_memory(*a, **k):
        raise MemoryError()

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", no_memory)
    with pytest.raises(io.ImageReadError, match=r"ok.tif: too large to decode: 256 pixels \(out of memory\)"):
        _read(f)
    assert fields.reason(MemoryError()) == "MemoryError" and fields.reason(ValueError("x")) == "x"


_MEASURE = """
import resource, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from common import io
from common.predict import fields
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # a broken check fails here, not the machine
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for name, files in {fields_!r}:
    try:
        f = fields.Field(name, tuple(map(Path, files)))
        fields.read_field(f, [0, 1, 2, 3], None, -1, {max_pixels}, [])
        print("READ", name)
    except io.ImageReadError as e:
        print("FAILED", name, e)
print("RSS_KB", before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_a_declared_giant_tiff_and_a_gzip_bomb_are_listed_in_little_memory(tmp_path):
    big = declared_tiff(tmp_path / "big.tif")
    bomb = gzip_bomb(tmp_path / "bomb_red.tif.gz")
    assert big.stat().st_size < 4 << 20 and bomb.stat().st_size > 60 << 20
    ok = [tmp_path / f"bomb_{c}.png" for c in ("green", "blue", "yellow")]
    for p in ok:
        io.imwrite(p, np.full((64, 64), 100, np.uint8))
    script = _MEASURE.format(root=str(ROOT), max_pixels=MAX_PIXELS,
                             fields_=[("big", [str(big)]), ("bomb", [str(bomb), *map(str, ok)])])
    # through sh, which forks: a process exec'd straight from pytest starts with pytest's ru_maxrss (Linux
    # keeps the high-water mark across vfork + exec), a fork of the small shell does not
    out = subprocess.run(["/bin/sh", "-c", '"$0" -c "$1"; exit $?', sys.executable, script],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert any(line.startswith("FAILED big ") and "too large to decode: 1024000000 pixels" in line
               for line in lines), lines
    assert any(line.startswith("FAILED bomb ") and "too large to decode: gunzips to more than" in line
               for line in lines), lines
    before, peak = (int(v) for v in lines[-1].split()[1:])
    print(f"peak RSS {peak >> 10} MB, {before >> 10} MB after the imports")
    assert peak < 1 << 20, f"peak RSS {peak} KB (after imports {before} KB)"   # < 1 GB
    assert peak - before < 128 << 10, f"reading them added {(peak - before) >> 10} MB"
