"""The demo dataset writer (S0): a deterministic synthetic HPA-like dataset with per-cell truth in the
competition layout (:func:`make_dataset`), and its manifest: the only files S0 may overwrite or delete
(:func:`read_manifest`, :func:`remove_outputs`).

Each image's labels are drawn by :mod:`common.demo.demo_labels` (the real HPA label combinations, weak
per-cell labels), its pixels and label maps by :mod:`common.demo.demo_render` (one field of view,
:func:`common.demo.demo_render.make_image`); everything follows from the seed, whatever the number of
workers.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from common import images, io, owned, parallel
from common.competition.encoding import encode_binary_mask
from common.constants import CHANNELS, NUM_CLASSES, format_labels
from common.demo.demo_labels import LABEL_TEMPER, RARE_BOOST, sample_image_labels
from common.demo.demo_render import MAX_CELLS, MIN_CELLS, make_image

VERSION = 2                    # bump when the generator's output changes (invalidates S0's skip)
CONFIG_NAME = "demo_config.json"  # written last in COMPETITION_DIR (S0): the config that made the dataset
MANIFEST_NAME = "demo_manifest.json"  # written first: every file the generator writes (all it may delete)


def make_image_id(rng: np.random.Generator) -> str:
    """A competition-looking id such as ``5c27f04c-bb99-11e8-b2b9-ac1f6b6435d0`` (random hex parts)."""
    a, b, c = int(rng.integers(16 ** 8)), int(rng.integers(256)), int(rng.integers(16 ** 6))
    return f"{a:08x}-bb{b:02x}-11e8-b2b9-ac1f6b{c:06x}"


# ----------------------------------------------------------------------------- dataset
SPLITS = ("train", "test")


def _generate_one(job: dict) -> dict:
    """Worker: make, write and describe one image (module level so a process pool can pickle it)."""
    out_dir = Path(job["out_dir"])
    ss = np.random.SeedSequence([job["seed"], SPLITS.index(job["split"]), job["index"]])
    rng = np.random.default_rng(ss)
    res = make_image(rng, job["size"], job["classes"], min_cells=job["min_cells"],
                     max_cells=job["max_cells"], bit16=job["bit16"])
    image_id, split = job["id"], job["split"]
    images.write_channels(out_dir / split, image_id, res["image16"] if job["bit16"] else res["image"])
    images.write_label_png(out_dir / f"{split}_cell_truth" / f"{image_id}.png", res["cells"])
    images.write_label_png(out_dir / f"{split}_nucleus_truth" / f"{image_id}.png", res["nuclei"])
    h, w = res["cells"].shape
    rows = []
    for cid, labs in res["cell_labels"].items():
        enc = encode_binary_mask(res["cells"] == cid)
        rows.extend((image_id, w, h, cid, c, enc) for c in labs)
    return dict(id=image_id, split=split, labels=res["labels"], width=w, height=h, rows=rows,
                n_cells=len(res["cell_labels"]))


def plan_dataset(n_train: int, n_test: int, seed: int, *, temper: float = LABEL_TEMPER,
                 rare_boost: float = RARE_BOOST, frac_16bit: float = 0.0) -> list[dict]:
    """The per-image jobs (split, index, id, sampled classes, bit depth), drawn in order from ``seed``.

    With at least 19 training images, 19 of them (at random positions) are drawn with
    ``must_have`` = 0..18, so every class is in some training image's label.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 99]))
    jobs, seen = [], set()
    forced = {}
    if n_train >= NUM_CLASSES:
        forced = {int(i): k for k, i in enumerate(rng.permutation(int(n_train))[:NUM_CLASSES])}
    for split, count in zip(SPLITS, (n_train, n_test)):
        for i in range(int(count)):
            must = forced.get(i) if split == "train" else None
            image_id = make_image_id(rng)
            while image_id in seen:
                image_id = make_image_id(rng)
            seen.add(image_id)
            classes = sample_image_labels(rng, temper, rare_boost, must_have=must)
            jobs.append(dict(split=split, index=i, id=image_id, classes=classes,
                             bit16=bool(rng.random() < frac_16bit)))
    return jobs


@dataclass(frozen=True)
class DemoPlan:
    """What a demo dataset holds: image counts, side, seed, cells per image, the share of 16-bit
    images and the label sampling (S0's constants)."""

    n_train: int
    n_test: int
    size: int
    seed: int
    min_cells: int = MIN_CELLS
    max_cells: int = MAX_CELLS
    frac_16bit: float = 0.0
    temper: float = LABEL_TEMPER
    rare_boost: float = RARE_BOOST


def make_dataset(out_dir: str | Path, plan: DemoPlan, num_workers: int = 1, progress: bool = False) -> dict:
    """Write the demo dataset ``plan`` in the competition layout with per-cell truth; returns a summary.

    Writes ``train/``, ``test/`` (``{ID}_{red,green,blue,yellow}.png``), ``train.csv`` (ID,Label),
    ``sample_submission.csv`` (ID,ImageWidth,ImageHeight,PredictionString),
    ``{train,test}_cell_truth/{ID}.png`` and ``{train,test}_nucleus_truth/{ID}.png`` (uint16 label
    maps, same ids) and ``{train,test}_cells.csv`` (ID,ImageWidth,ImageHeight,cell_id,Label,
    EncodedMask; one row per cell and label). The output depends only on the arguments, not on
    ``num_workers``.
    """
    if not 1 <= plan.min_cells <= plan.max_cells:
        raise ValueError(f"need 1 <= min_cells <= max_cells, got {plan.min_cells}, {plan.max_cells}")
    out_dir = Path(out_dir)
    jobs = plan_dataset(plan.n_train, plan.n_test, plan.seed, temper=plan.temper, rare_boost=plan.rare_boost,
                        frac_16bit=plan.frac_16bit)
    files = planned_files(jobs)
    own = set(read_manifest(out_dir) or [])
    foreign = [f for f in files if f not in own and os.path.lexists(out_dir / f)]
    if foreign:
        raise FileExistsError(f"{out_dir / foreign[0]} (and {len(foreign) - 1} more) exist but were not made "
                              f"by the demo generator ({MANIFEST_NAME}); not writing over them")
    for split in SPLITS:
        for sub in (split, f"{split}_cell_truth", f"{split}_nucleus_truth"):
            owned.check_path(out_dir, sub, "S0", "COMPETITION_DIR", folder=True)  # no link followed
            (out_dir / sub).mkdir(parents=True, exist_ok=True)
    io.atomic_write_text(out_dir / MANIFEST_NAME, json.dumps(sorted(own | set(files)), indent=0) + "\n")
    for j in jobs:
        j.update(out_dir=str(out_dir), seed=int(plan.seed), size=int(plan.size),
                 min_cells=int(plan.min_cells), max_cells=int(plan.max_cells))
    if num_workers > 1 and len(jobs) > 1:
        with parallel.process_pool(num_workers) as pool:
            results = list(_progress(pool.map(_generate_one, jobs), len(jobs), progress))
    else:
        results = list(_progress(map(_generate_one, jobs), len(jobs), progress))
    cols = ["ID", "ImageWidth", "ImageHeight", "cell_id", "Label", "EncodedMask"]
    for split in SPLITS:
        rows = [row for r in results if r["split"] == split for row in r["rows"]]
        io.atomic_to_csv(pd.DataFrame(rows, columns=cols), out_dir / f"{split}_cells.csv")
    train = [r for r in results if r["split"] == "train"]
    test = [r for r in results if r["split"] == "test"]
    io.atomic_to_csv(pd.DataFrame({"ID": [r["id"] for r in train],
                                   "Label": [format_labels(r["labels"]) for r in train]}),
                     out_dir / "train.csv")
    empty = {}
    for r in test:
        key = (r["height"], r["width"])
        if key not in empty:
            empty[key] = encode_binary_mask(np.zeros(key, np.uint8))
    io.atomic_to_csv(pd.DataFrame({
        "ID": [r["id"] for r in test], "ImageWidth": [r["width"] for r in test],
        "ImageHeight": [r["height"] for r in test],
        "PredictionString": [f"0 1 {empty[(r['height'], r['width'])]}" for r in test]}),
        out_dir / "sample_submission.csv")
    return dict(out_dir=str(out_dir), n_train=len(train), n_test=len(test),
                n_cells=sum(r["n_cells"] for r in results),
                class_images=[sum(c in r["labels"] for r in train + test) for c in range(NUM_CLASSES)])


def _progress(it, total, on):
    if not on:
        return it
    return tqdm(it, total=total, desc="demo images")


def planned_files(jobs: list[dict]) -> list[str]:
    """The files (relative posix paths) :func:`make_dataset` writes for ``jobs``, the manifest included."""
    names = ["train.csv", "sample_submission.csv", "train_cells.csv", "test_cells.csv", CONFIG_NAME,
             MANIFEST_NAME]
    return names + [f for j in jobs for f in _image_files(j["split"], j["id"])]


def _image_files(split: str, image_id: str) -> list[str]:
    return ([f"{split}/{image_id}_{c}.png" for c in CHANNELS]
            + [f"{split}_cell_truth/{image_id}.png", f"{split}_nucleus_truth/{image_id}.png"])


def demo_outputs(out_dir: str | Path) -> list[Path]:
    """The top-level files and folders a demo dataset has in ``out_dir`` (all must exist to skip)."""
    out_dir = Path(out_dir)
    names = ["train.csv", "sample_submission.csv", "train_cells.csv", "test_cells.csv", CONFIG_NAME]
    for split in SPLITS:
        names += [split, f"{split}_cell_truth", f"{split}_nucleus_truth"]
    return [out_dir / n for n in names]


def read_manifest(out_dir: str | Path) -> list[str] | None:
    """The files the generator wrote in ``out_dir`` (relative paths), or None when it wrote none.

    A demo written before manifests existed (a config but no manifest) gets one rebuilt from its
    own tables: the CSVs and config, and the image and truth files of the ids they list.
    """
    out_dir = Path(out_dir)
    p = out_dir / MANIFEST_NAME
    if p.is_file():
        try:
            return [str(x) for x in json.loads(p.read_text())]
        except (json.JSONDecodeError, TypeError):
            return None
    if read_config(out_dir) is None:
        return None
    names = ["train.csv", "sample_submission.csv", "train_cells.csv", "test_cells.csv", CONFIG_NAME]
    for split, table in (("train", "train.csv"), ("test", "sample_submission.csv")):
        if (out_dir / table).is_file():
            ids = io.read_id_table(out_dir / table)["ID"]
            names += [f for iid in ids for f in _image_files(split, iid)]
    return names


def remove_outputs(out_dir: str | Path) -> int:
    """Delete the files the generator wrote (its manifest) and the demo folders left empty.

    Never deletes anything else: real data or a user's files in the same folders stay. Returns
    the number of files deleted.
    """
    out_dir = Path(out_dir)
    names = read_manifest(out_dir) or []
    n = len(owned.remove_files(out_dir, [x for x in names if x != MANIFEST_NAME]))  # never through a link
    n += len(owned.remove_files(out_dir, [MANIFEST_NAME] if MANIFEST_NAME in names else []))  # then it
    for p in demo_outputs(out_dir):
        if p.is_dir() and not p.is_symlink() and not any(p.iterdir()):
            p.rmdir()
    return n


def read_config(out_dir: str | Path) -> dict | None:
    """The generator config saved with a demo dataset, or None when there is none."""
    p = Path(out_dir) / CONFIG_NAME
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None
