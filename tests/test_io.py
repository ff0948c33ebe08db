"""Image and mask reading/writing (common/io.py)."""
from __future__ import annotations

import gzip

import cv2
import numpy as np
import pytest
import tifffile

from common import images, io
from common.constants import CHANNELS


def _rgby(seed=0, h=40, w=56):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)


def test_real_16bit_hpa_channel(shared_dir):
    path = shared_dir / "hpa_sample" / "1000_A12_2_green.png"
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.max() > 255
    got = images.read_channel(path)
    assert got.dtype == np.uint8 and got.shape == (2048, 2048)
    assert np.array_equal(got, np.rint(raw / 257.0).astype(np.uint8))
    assert not np.array_equal(got, raw.astype(np.uint8))  # not wrapped / truncated


def test_16bit_scaling_is_proportional(tmp_path):
    vals = np.array([[0, 128, 129, 257, 512, 1000, 32768, 65535]], np.uint16)
    cv2.imwrite(str(tmp_path / "a.png"), vals)
    got = images.read_channel(tmp_path / "a.png")
    assert got.tolist() == [[0, 0, 1, 1, 2, 4, 128, 255]]
    assert images.to_uint8(np.array([0.0, 0.5, 1.0], np.float32)).tolist() == [0, 128, 255]


def test_competition_layout_png_round_trip(tmp_path):
    img = _rgby()
    images.write_channels(tmp_path, "abc", img)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"abc_{c}.png" for c in CHANNELS)
    assert np.array_equal(images.read_image(tmp_path, "abc"), img)
    images.write_channels(tmp_path / "b", "abc", img.astype(np.uint16) * 257)  # 16-bit layout
    assert np.array_equal(images.read_image(tmp_path / "b", "abc"), img)


@pytest.mark.parametrize("ext", [".jpg", ".tif", ".tif.gz"])
def test_other_formats(tmp_path, ext):
    img = np.zeros((32, 48, 4), np.uint8)
    img[8:24, 10:30] = [200, 100, 50, 250]  # flat blocks survive JPEG nearly exactly
    for i, c in enumerate(CHANNELS):
        p = tmp_path / f"x_{c}{ext}"
        if ext == ".jpg":
            cv2.imwrite(str(p), img[..., i], [cv2.IMWRITE_JPEG_QUALITY, 100])
        elif ext == ".tif":
            tifffile.imwrite(p, img[..., i].astype(np.uint16) * 257)
        else:
            tmp = tmp_path / "t.tif"
            tifffile.imwrite(tmp, img[..., i])
            p.write_bytes(gzip.compress(tmp.read_bytes()))
    got = images.read_image(tmp_path, "x")
    assert got.shape == (32, 48, 4) and got.dtype == np.uint8
    tol = 3 if ext == ".jpg" else 0
    assert np.abs(got.astype(int) - img.astype(int)).max() <= tol


def test_missing_or_bad_channel_names_the_file(tmp_path):
    images.write_channels(tmp_path, "abc", _rgby())
    (tmp_path / "abc_yellow.png").unlink()
    with pytest.raises(io.ImageReadError, match="abc_yellow"):
        images.read_image(tmp_path, "abc")
    (tmp_path / "abc_yellow.png").write_bytes(b"not a png")
    with pytest.raises(io.ImageReadError, match="abc_yellow.png"):
        images.read_image(tmp_path, "abc")
    cv2.imwrite(str(tmp_path / "abc_yellow.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(io.ImageReadError, match="sizes differ"):
        images.read_image(tmp_path, "abc")


def test_rgby_png_round_trip_keeps_channel_order(tmp_path):
    img = np.zeros((8, 9, 4), np.uint8)
    img[..., 0], img[..., 1], img[..., 2], img[..., 3] = 10, 20, 30, 40
    p = images.write_rgby(tmp_path / "a.png", img)
    assert images.read_rgby(p)[0, 0].tolist() == [10, 20, 30, 40]
    rnd = _rgby(3)
    assert np.array_equal(images.read_rgby(images.write_rgby(tmp_path / "b.png", rnd)), rnd)
    with pytest.raises(ValueError):
        images.write_rgby(tmp_path / "c.png", rnd[..., :3])
    with pytest.raises(io.ImageReadError):
        images.read_rgby(tmp_path / "missing.png")


def test_masks_round_trip_many_cells(tmp_path):
    cell = np.arange(30 * 30, dtype=np.int32).reshape(30, 30) % 300  # ids 0..299
    nuc = np.where(cell % 2 == 0, cell, 0)
    p = images.save_masks(tmp_path / "m.npz", cell, nuc)
    c2, n2 = images.load_masks(p)
    assert c2.dtype == np.uint16 and c2.max() == 299
    assert np.array_equal(c2, cell) and np.array_equal(n2, nuc)
    c3, n3 = images.load_masks(images.save_masks(tmp_path / "only.npz", cell))
    assert n3 is None and np.array_equal(c3, cell)
    with pytest.raises(ValueError, match="65535"):
        images.save_masks(tmp_path / "big.npz", np.full((2, 2), 70000, np.int32))
    lab = images.read_label_png(images.write_label_png(tmp_path / "l.png", cell))
    assert lab.dtype == np.uint16 and np.array_equal(lab, cell)


def test_atomic_path_leaves_no_trace_on_error(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]
    io.atomic_write_text(target, "new")
    assert target.read_text() == "new" and len(list(tmp_path.iterdir())) == 1


# ----------------------------------------------------------------------------- temporaries (issue 15)
def test_temp_names_match_no_glob_of_the_steps_and_writers_still_pick_the_format(tmp_path):
    seen = {}
    for name in ("rec.json", "img.png", "masks.npz", "table.csv", "best.pth", "x.tif.gz"):
        with io.atomic_path(tmp_path / name) as tmp:
            seen[name] = tmp.name
            assert io.target_name(tmp) == name
            globs = ["*.json", "*.png", "*.npz", "*.csv", "*.pth", "*.gz", "*" + name]
            assert not any(p == tmp for g in globs for p in tmp_path.glob(g)), tmp.name
            assert io.is_stale_temp(tmp) is False                     # this process is writing it
            tmp.write_bytes(b"x")
    assert all(n.startswith(".") and n.endswith(".tmp") for n in seen.values())
    img = _rgby(3)
    assert np.array_equal(images.read_rgby(images.write_rgby(tmp_path / "a.png", img)), img)  # PNG (imencode)
    with io.atomic_path(tmp_path / "b.jpg") as tmp:
        io.imwrite(tmp, img[..., 0])
    assert (tmp_path / "b.jpg").read_bytes()[:2] == b"\xff\xd8"           # a JPEG, as the name says
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_remove_stale_temps_keeps_live_writers(tmp_path):
    import os
    import subprocess
    import sys
    import time

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    host = io._HOST
    (tmp_path / "sub").mkdir()
    stale = [tmp_path / f".a.json.{host}-{dead}-00ff00ff.tmp",       # its process has ended
             tmp_path / f".last.pth.{dead}.tmp",                     # a checkpoint's temporary
             tmp_path / ".b.json.ab12cd34.tmp.json",                 # an earlier version's name
             tmp_path / "sub" / f".c.png.{host}-{dead}-12345678.tmp"]
    live = [tmp_path / f".d.json.{host}-{os.getpid()}-abcdef01.tmp",  # this process, written now
            tmp_path / f".e.json.otherhost-{dead}-abcdef01.tmp",     # another machine, recent
            tmp_path / "keep.json", tmp_path / ".hidden.tmp"]
    for p in stale + live:
        p.write_text("{}")
    old = tmp_path / f".f.json.otherhost-{dead}-abcdef01.tmp"      # another machine, an hour old
    old.write_text("{}")
    os.utime(old, (time.time() - 2 * io.OTHER_HOST_TEMP_AGE_S,) * 2)
    stale.append(old)
    assert io.remove_stale_temps(tmp_path) == 4                       # not below tmp_path
    assert stale[3].exists()
    assert io.remove_stale_temps(tmp_path, recursive=True) == 1
    assert not any(p.exists() for p in stale) and all(p.exists() for p in live)
    assert io.remove_stale_temps(tmp_path / "absent") == 0


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_outputs_follow_the_umask(tmp_path, umask, mode):
    import os

    import pandas as pd

    old = os.umask(umask)
    try:
        paths = [io.atomic_write_text(tmp_path / "a.txt", "x"),
                 io.atomic_to_csv(pd.DataFrame({"a": [1]}), tmp_path / "b.csv"),
                 images.write_rgby(tmp_path / "c.png", _rgby()),
                 images.save_masks(tmp_path / "d.npz", np.zeros((4, 4), np.uint16))]
        with io.atomic_path(tmp_path / "e.bin") as tmp:                 # a writer that replaces the file
            src = tmp_path / "src"
            src.write_bytes(b"y")
            os.chmod(src, 0o600)
            os.replace(src, tmp)
        paths.append(tmp_path / "e.bin")
    finally:
        os.umask(old)
    assert {oct(p.stat().st_mode & 0o777) for p in paths} == {oct(mode)}


# ----------------------------------------------------------------------------- values and budget
def test_to_uint8_refuses_what_it_would_clip(tmp_path):
    rng = np.random.default_rng(1)
    u16 = rng.integers(0, 65536, (1100, 1000), dtype=np.uint16)  # more than one block of the conversion
    assert np.array_equal(images.to_uint8(u16), ((u16.astype(np.uint32) + 128) // 257).astype(np.uint8))
    unit = rng.random((1100, 1000), dtype=np.float32)
    assert np.array_equal(images.to_uint8(unit), np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8))
    for arr, why in ((np.array([0.0, 1.5], np.float32), r"float values from 0 to 1.5, outside \[0, 1\]"),
                     (np.array([0.0, np.nan]), "NaN or infinite"),
                     (np.array([5, -3], np.int32), r"negative values \(down to -3; int32\)"),
                     (np.array([5, 70000], np.int32), r"values up to 70000 need more than 16 bits"),
                     (np.array([True, False]), "pixel type bool is not read")):
        with pytest.raises(io.ImageReadError, match=why):
            images.to_uint8(arr)
    tifffile.imwrite(tmp_path / "x_red.tif", np.array([[0.25, 2.0]], np.float32))
    with pytest.raises(io.ImageReadError, match=r"x_red.tif: float values from 0.25 to 2"):
        images.read_channel(tmp_path / "x_red.tif")


def test_headers_are_checked_against_the_budget_before_decoding(tmp_path):
    from own_images_data import declared_tiff, png_declaring

    png = png_declaring(tmp_path / "a_red.png", 20000, 30000)
    jpg = tmp_path / "b_red.jpg"
    data = bytearray(images.encode_jpeg(np.zeros((8, 8), np.uint8), 90))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = (20000).to_bytes(2, "big") + (30000).to_bytes(2, "big")
    jpg.write_bytes(bytes(data))
    tif = declared_tiff(tmp_path / "c_red.tif", (2, 20000, 30000))
    for path, dims in ((png, "20000 x 30000"), (jpg, "20000 x 30000"), (tif, "2 x 20000 x 30000")):
        n = 600_000_000 * (2 if path == tif else 1)
        with pytest.raises(io.ImageReadError, match=rf"{path.name}: too large to decode: {n} pixels "
                                                    rf"\({dims}; MAX_PIXELS 1000000\)"):
            images.read_array(path, images.PixelBudget(1_000_000))
    small = tmp_path / "s"
    images.write_channels(small, "abc", _rgby(h=40, w=50))  # 2000 pixels a channel
    assert images.read_image(small, "abc", max_pixels=8000).shape == (40, 50, 4)
    with pytest.raises(io.ImageReadError, match=r"abc_yellow.png: too large to decode: 8000 pixels \(40 x 50 "
                                                r"and 6000 in the other files; MAX_PIXELS 7999\)"):
        images.read_image(small, "abc", max_pixels=7999)


def test_a_tif_gz_is_gunzipped_within_the_budget_only(tmp_path):
    img = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    plain = tmp_path / "t.tif"
    tifffile.imwrite(plain, img)
    gz = tmp_path / "x_red.tif.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    assert np.array_equal(images.read_array(gz, images.PixelBudget(64 * 64)), img)
    bomb = tmp_path / "bomb_red.tif.gz"
    bomb.write_bytes(gzip.compress(bytes(32 << 20)) * 2)  # two members, 64 MiB gunzipped
    with pytest.raises(io.ImageReadError, match=rf"bomb_red.tif.gz: too large to decode: gunzips to more "
                                                rf"than {1000 * 8 + images.GZ_SLACK} bytes \(8 bytes per "
                                                r"pixel of MAX_PIXELS 1000\)"):
        images.read_array(bomb, images.PixelBudget(1000))


def test_decoder_messages_quote_no_bytes_of_the_file(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"hunter2:x:0:0::/home:/bin/sh\n")
    for name in ("a_red.tif", "b_red.png"):
        (tmp_path / name).symlink_to(secret)
        with pytest.raises(io.ImageReadError, match=rf"{name}: cannot decode image \(not a PNG, JPEG or"):
            images.read_channel(tmp_path / name)
    (tmp_path / "c_red.tif").write_bytes(b"MM\x00*" + b"hunter2" * 20)
    with pytest.raises(io.ImageReadError, match=r"c_red.tif: cannot decode image \(not a valid TIFF") as e:
        images.read_channel(tmp_path / "c_red.tif")
    assert "hunter2" not in str(e.value)
