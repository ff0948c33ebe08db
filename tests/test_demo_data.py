"""The synthetic HPA-like generator (common/demo/demo_data.py) and S0_make_demo_data.py."""
from __future__ import annotations

import collections
import hashlib
import json

import cv2
import numpy as np
import pandas as pd
import pytest
from skimage.segmentation import watershed

from common import images
from common.competition.encoding import decode_binary_mask
from common.constants import CHANNELS, NEGATIVE, NUM_CLASSES, parse_labels
from common.demo import demo_data as dd
from common.demo import demo_labels, demo_render


def _img(seed, size=256, classes=(0, 13, 16), n_cells=None):
    return demo_render.make_image(np.random.default_rng(seed), size, list(classes), n_cells=n_cells)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    dd.make_dataset(out, dd.DemoPlan(5, 2, 256, seed=7, frac_16bit=0.5), num_workers=1)
    return out


# ----------------------------------------------------------------------------- labels
def test_label_table_matches_real_file(shared_dir):
    real = pd.read_csv(shared_dir / "hpa_meta" / "train_labels.csv")
    assert len(real) == demo_labels.N_REAL_IMAGES
    sets = [tuple(sorted(set(parse_labels(s)))) for s in real["Label"]]
    counts = collections.Counter(sets)
    expected = sorted(((k, v) for k, v in counts.items() if v >= 3), key=lambda kv: (-kv[1], kv[0]))
    assert demo_labels.label_table() == expected
    per_class = collections.Counter(c for st in sets for c in st)
    assert demo_labels.CLASS_COUNTS == tuple(per_class[c] for c in range(NUM_CLASSES))


def test_sample_image_labels_valid_and_deterministic():
    table = {c for c, _ in demo_labels.label_table()}
    a = [demo_labels.sample_image_labels(np.random.default_rng(3)) for _ in range(3)]
    rng1, rng2 = np.random.default_rng(11), np.random.default_rng(11)
    draws = [demo_labels.sample_image_labels(rng1) for _ in range(300)]
    assert draws == [demo_labels.sample_image_labels(rng2) for _ in range(300)]
    assert a[0] == a[1] == a[2]
    assert all(tuple(d) in table and d == sorted(d) for d in draws)
    seen = collections.Counter(c for d in draws for c in d)
    assert seen[0] > seen[11]  # real frequencies still show through the tempering
    assert len(seen) >= 17
    for k in range(NUM_CLASSES):
        assert k in demo_labels.sample_image_labels(np.random.default_rng(k), must_have=k)


def test_plan_covers_every_class_in_train():
    jobs = dd.plan_dataset(24, 4, seed=1)
    train = [j for j in jobs if j["split"] == "train"]
    assert {c for j in train for c in j["classes"]} == set(range(NUM_CLASSES))
    ids = [j["id"] for j in jobs]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 36 and i.count("-") == 4 for i in ids)
    assert dd.plan_dataset(24, 4, seed=1) == jobs and dd.plan_dataset(24, 4, seed=2) != jobs


# ----------------------------------------------------------------------------- one image
def test_make_image_contract():
    r = _img(0, n_cells=12)
    img, cells, nuc = r["image"], r["cells"], r["nuclei"]
    assert img.shape == (256, 256, 4) and img.dtype == np.uint8
    assert cells.dtype == nuc.dtype == np.uint16 and cells.shape == nuc.shape == (256, 256)
    assert set(np.unique(cells)) - {0} == set(range(1, 13)) == set(r["cell_labels"])
    assert set(np.unique(nuc)) - {0} == set(range(1, 13))
    assert np.all(cells[nuc > 0] == nuc[nuc > 0])  # every nucleus lies in its own cell
    assert (cells == 0).any()  # background exists
    for labs in r["cell_labels"].values():
        assert labs and labs == sorted(labs) and (labs == [NEGATIVE] or NEGATIVE not in labs)
    assert r["labels"] == sorted({c for labs in r["cell_labels"].values() for c in labs})
    assert set(r["labels"]) - {NEGATIVE} == {0, 13, 16}


def test_make_image_deterministic_and_seed_dependent():
    a, b, c = _img(5), _img(5), _img(6)
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["cells"], b["cells"])
    assert a["cell_labels"] == b["cell_labels"]
    assert not np.array_equal(a["image"], c["image"])


def test_cell_count_range_and_border_cells():
    counts, border = [], 0
    for seed in range(6):
        r = _img(seed, classes=[16])
        cells = r["cells"]
        counts.append(len(r["cell_labels"]))
        edge = np.concatenate([cells[0], cells[-1], cells[:, 0], cells[:, -1]])
        border += len(set(edge.tolist()) - {0})
    assert all(demo_render.MIN_CELLS <= n <= demo_render.MAX_CELLS for n in counts)
    assert len(set(counts)) > 1
    assert border > 0


def test_cells_differ_and_image_label_is_worse_than_cell_labels():
    r = _img(1, classes=[0, 7, 16], n_cells=20)
    assert len({tuple(v) for v in r["cell_labels"].values()}) > 1
    # over several images, a good share of cells do not carry their image's full label
    differ = total = 0
    for seed in range(6):
        r = _img(seed, classes=[2, 14])
        for labs in r["cell_labels"].values():
            total += 1
            differ += labs != r["labels"]
    assert differ / total > 0.2


def test_all_negative_and_mitotic_cells():
    r = _img(2, classes=[NEGATIVE])
    assert r["labels"] == [NEGATIVE] and all(v == [NEGATIVE] for v in r["cell_labels"].values())
    r = _img(3, classes=[10, 11], n_cells=15)
    spindle = [k for k, v in r["cell_labels"].items() if 11 in v]
    assert 1 <= len(spindle) <= 3
    with pytest.raises(ValueError, match="outside"):
        _img(0, classes=[19])


def test_green_patterns_differ_between_classes():
    """Each class puts its green signal in a different place (nucleus / rim / cytoplasm ...)."""
    def profile(c):
        r = _img(10 + c, size=256, classes=[c], n_cells=10)
        g = r["image"][..., 1].astype(float)
        cells, nuc = r["cells"], r["nuclei"]
        shown = np.isin(cells, [k for k, v in r["cell_labels"].items() if c in v])
        inside = shown & (nuc > 0)
        cyto = shown & (nuc == 0)
        return g[inside].mean(), g[cyto].mean(), g[shown].std()

    nucleoplasm, cytosol, negative = profile(0), profile(16), profile(NEGATIVE)
    assert nucleoplasm[0] > 2 * nucleoplasm[1]
    assert cytosol[1] > 2 * cytosol[0]
    assert negative[0] < nucleoplasm[0] / 3 and negative[1] < cytosol[1] / 3


def test_cells_recoverable_by_seeded_watershed():
    ious = []
    for seed in range(2):
        r = demo_render.make_image(np.random.default_rng(100 + seed), 512, [0, 16])
        im = r["image"].astype(np.float32) / 255
        cyto = cv2.GaussianBlur(im[..., 0] + im[..., 3], (0, 0), 2)
        nuc = r["nuclei"].astype(np.int32)
        pred = watershed(-cyto, markers=nuc, mask=(cyto > 0.5 * cyto[r["cells"] > 0].mean()) | (nuc > 0))
        for k in r["cell_labels"]:
            m = r["cells"] == k
            p = pred == k
            ious.append((m & p).sum() / (m | p).sum())
    assert np.mean(np.array(ious) >= 0.6) >= 0.95


def test_real_size_mode():
    r = demo_render.make_image(np.random.default_rng(0), 2048, [4, 13], n_cells=8)
    assert r["image"].shape == (2048, 2048, 4) and r["cells"].shape == (2048, 2048)
    assert len(r["cell_labels"]) == 8
    areas = np.bincount(r["cells"].ravel())[1:]
    assert areas.min() > 2000  # cells scale with the image


# ----------------------------------------------------------------------------- dataset on disk
def test_dataset_layout_and_truth(dataset):
    train = pd.read_csv(dataset / "train.csv")
    sub = pd.read_csv(dataset / "sample_submission.csv")
    assert list(train.columns) == ["ID", "Label"] and len(train) == 5
    assert list(sub.columns) == ["ID", "ImageWidth", "ImageHeight", "PredictionString"] and len(sub) == 2
    assert sub["PredictionString"].str.match(r"^0 1 \S+$").all()
    bits = set()
    for split, ids in (("train", train["ID"]), ("test", sub["ID"])):
        cells_csv = pd.read_csv(dataset / f"{split}_cells.csv")
        assert list(cells_csv.columns) == ["ID", "ImageWidth", "ImageHeight", "cell_id", "Label",
                                           "EncodedMask"]
        assert set(cells_csv["ID"]) == set(ids)
        for image_id in ids:
            for c in CHANNELS:
                bits.add(cv2.imread(str(dataset / split / f"{image_id}_{c}.png"), cv2.IMREAD_UNCHANGED).dtype)
            img = images.read_image(dataset / split, image_id)
            assert img.shape == (256, 256, 4)
            cells = images.read_label_png(dataset / f"{split}_cell_truth" / f"{image_id}.png")
            nuc = images.read_label_png(dataset / f"{split}_nucleus_truth" / f"{image_id}.png")
            assert np.all(cells[nuc > 0] == nuc[nuc > 0])
            rows = cells_csv[cells_csv["ID"] == image_id]
            assert set(rows["cell_id"]) == set(np.unique(cells)) - {0}
            for cid, grp in rows.groupby("cell_id"):
                assert grp["EncodedMask"].nunique() == 1  # one mask string per cell, one row per label
                mask = decode_binary_mask(grp["EncodedMask"].iloc[0], 256, 256)
                assert np.array_equal(mask, cells == cid)
            if split == "train":
                label = train.loc[train["ID"] == image_id, "Label"].iloc[0]
                assert sorted(parse_labels(label)) == sorted(set(rows["Label"]))
    assert bits == {np.dtype(np.uint8), np.dtype(np.uint16)}


def test_dataset_matches_make_image_and_is_deterministic(dataset, tmp_path):
    job = dd.plan_dataset(5, 2, seed=7, frac_16bit=0.5)[0]
    rng = np.random.default_rng(np.random.SeedSequence([7, 0, 0]))
    r = demo_render.make_image(rng, 256, job["classes"])
    disk = images.read_image(dataset / "train", job["id"])
    assert np.abs(disk.astype(int) - r["image"].astype(int)).max() <= 1  # 16-bit PNGs round to within 1
    dd.make_dataset(tmp_path, dd.DemoPlan(5, 2, 256, seed=7, frac_16bit=0.5), num_workers=2)

    def digest(root):
        return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    assert digest(tmp_path) == digest(dataset)


def test_s0_skips_same_config_and_refuses_real_data(tmp_path, capsys):
    import S0_make_demo_data as s0

    args = ["--COMPETITION_DIR", str(tmp_path / "d"), "--N_TRAIN", "2", "--N_TEST", "1",
            "--IMAGE_SIZE", "128", "--NUM_WORKERS", "1"]
    out = s0.main(args)
    saved = json.loads((out / dd.CONFIG_NAME).read_text())
    assert saved["SEED"] == s0.SEED and saved["GENERATOR_VERSION"] == dd.VERSION
    first = (out / "train.csv").read_text()
    s0.main(args)
    assert "skipping" in capsys.readouterr().out
    s0.main(args + ["--SEED", "5"])  # a different config regenerates
    assert (out / "train.csv").read_text() != first
    assert len(list((out / "train").glob("*.png"))) == 8
    real = tmp_path / "real"
    real.mkdir()
    (real / "train.csv").write_text("ID,Label\nx,0\n")
    with pytest.raises(SystemExit, match="real"):
        s0.main(["--COMPETITION_DIR", str(real), "--N_TRAIN", "1", "--N_TEST", "0", "--IMAGE_SIZE", "128"])


def test_s0_overwrite_never_deletes_files_it_did_not_make(tmp_path):
    import S0_make_demo_data as s0

    small = ["--N_TRAIN", "2", "--N_TEST", "1", "--IMAGE_SIZE", "64", "--NUM_WORKERS", "1"]
    real = tmp_path / "real"                      # real data: a train.csv and its images, no manifest
    (real / "train").mkdir(parents=True)
    (real / "train.csv").write_text("ID,Label\nabc,0\n")
    (real / "train" / "abc_red.png").write_bytes(b"not really a png")
    before = {p: p.read_bytes() for p in real.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit, match="did not make"):
        s0.main(["--COMPETITION_DIR", str(real), "--OVERWRITE", "true", *small])
    assert {p: p.read_bytes() for p in real.rglob("*") if p.is_file()} == before

    demo = tmp_path / "demo"                      # a demo beside which the user put a file of their own
    s0.main(["--COMPETITION_DIR", str(demo), *small])
    own = set(dd.read_manifest(demo))
    assert "train.csv" in own and len([f for f in own if f.startswith("train/")]) == 8
    mine = demo / "train" / "mine_red.png"
    mine.write_bytes(b"mine")
    s0.main(["--COMPETITION_DIR", str(demo), "--OVERWRITE", "true", "--SEED", "3", *small])
    assert mine.read_bytes() == b"mine"           # kept; the old demo images are gone, new ones there
    assert not any((demo / f).exists() for f in own - set(dd.read_manifest(demo)))
    assert len(list((demo / "train").glob("*.png"))) == 9
    # a demo made before manifests existed: its own files are rebuilt from its tables
    legacy = set(dd.read_manifest(demo))
    (demo / dd.MANIFEST_NAME).unlink()
    assert set(dd.read_manifest(demo)) == legacy - {dd.MANIFEST_NAME}
    # a planned file that exists without being in the manifest is never written over
    (demo / dd.MANIFEST_NAME).write_text("[]")
    with pytest.raises(FileExistsError, match="not made"):
        dd.make_dataset(demo, dd.DemoPlan(2, 1, 64, seed=3))
