"""S4.2's cell-level validation: pipeline 2 scored on the TRUE cells of the validation fold.

The ``extra_metrics`` of ``train.fit`` (called after each validation, on rank 0): the fold's images
with per-cell truth (the demo data's ``train_cells.csv`` and ``train_cell_truth/{ID}.png``) are
cropped once, exactly as S4.1 crops (:func:`cells.crop_cells`: from the original image with the
true map when the run trains on such crops and the original is there, else from the 512-px image
with the true map resized with nearest neighbour), each image's cells one bag through the model;
the result is ``cell_mAP_strict`` / ``cell_mAP_lenient`` (:func:`metric.score_cells`), and at a
best epoch ``oof_cells.csv`` (:func:`metric.write_oof`, read by ``tools/compare_oof.py``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common import cells, constants, images, io
from common.competition import encoding, metric
from common.data import augment
from common.resize import resize_labels


def truth_map(comp: Path, image_id: str, rows: pd.DataFrame, shape: tuple[int, int]) -> np.ndarray:
    """The true cell label map of an image at ``shape`` (truth PNG, else decoded EncodedMasks)."""
    png = comp / "train_cell_truth" / f"{image_id}.png"
    if png.is_file():
        lab = images.read_label_png(png)
    else:
        h, w = int(rows["ImageHeight"].iloc[0]), int(rows["ImageWidth"].iloc[0])
        lab = np.zeros((h, w), np.uint16)
        for cid, mask in rows.groupby("cell_id", sort=False)["EncodedMask"].first().items():
            lab[encoding.decode_binary_mask(mask, h, w)] = int(cid)
    return resize_labels(lab, shape) if lab.shape != tuple(shape) else lab


class CellValidation:
    """``extra_metrics`` of train.fit: cell mAP (strict, lenient) on the true cells of the fold.

    ``cfg``: the run's ``CELL_SIZE``, ``CROP_MARGIN``, ``FROM_ORIGINAL`` and ``CELL_VAL_MAX_IMAGES``
    (at most this many images, 0 = all); ``hpa``: S2's folder (``train/{ID}.png``); ``comp``: the
    competition folder (``train_cells.csv``, the truth and the originals); ``sources``: each image's
    normalisation source (competition | external). The crops are built once (uint8, in memory).
    """

    def __init__(self, cfg: dict, val_ids: list[str], hpa: Path, comp: Path, sources: dict[str, str]):
        truth_df = io.read_id_table(comp / "train_cells.csv", ("ID", "cell_id", "Label"), unique=False)
        truth_df = truth_df[truth_df["ID"].isin(set(val_ids))]
        keep = list(dict.fromkeys(truth_df["ID"]))
        if cfg["CELL_VAL_MAX_IMAGES"]:
            keep = keep[:cfg["CELL_VAL_MAX_IMAGES"]]
        truth_df = truth_df[truth_df["ID"].isin(set(keep))]
        self.truth: dict = {}
        for (iid, cid), labs in truth_df.groupby(["ID", "cell_id"], sort=False)["Label"]:
            self.truth[(iid, int(cid))] = sorted({x for lab in labs for x in constants.parse_labels(lab)})
        self.bags: list[tuple[str, list[int], np.ndarray, str]] = []
        size, margin = int(cfg["CELL_SIZE"]), float(cfg["CROP_MARGIN"])
        for iid, rows in truth_df.groupby("ID", sort=False):
            orig = comp / "train"
            if cfg["FROM_ORIGINAL"] and images.channel_path(orig, iid, "red").is_file():
                img = images.read_image(orig, iid)
            else:
                img = images.read_rgby(hpa / "train" / f"{iid}.png")
            lab = truth_map(comp, iid, rows, img.shape[:2])
            ids = [c for c in cells.cell_ids(lab) if (iid, c) in self.truth]
            if ids:
                crops = cells.crop_cells(img, lab, ids, size, margin)
                self.bags.append((iid, ids, crops, sources.get(iid, "competition")))
        self.n_cells = sum(len(b[1]) for b in self.bags)
        self.last: tuple | None = None  # (image ids, cell ids, probs) of the last call

    def write_oof(self, out_dir: Path) -> None:
        """The cell-level out-of-fold predictions of the last call: ``oof_cells.csv`` (ID, cell_id, the
        cell's true labels, p0..p18); train.fit calls it when an epoch becomes best."""
        if self.last is None:
            return
        image_ids, cell_ids, probs = self.last
        labels = ["|".join(map(str, self.truth[(i, c)])) for i, c in zip(image_ids, cell_ids)]
        metric.write_oof(out_dir / "oof_cells.csv", {"ID": image_ids, "cell_id": cell_ids, "Label": labels},
                         probs)

    @torch.no_grad()
    def __call__(self, model, device) -> dict:
        was_training = model.training
        model.eval()
        image_ids, cell_ids, probs = [], [], []
        for iid, ids, crops, source in self.bags:
            x = augment.normalize(crops, source).unsqueeze(0).to(device)
            p = torch.sigmoid(model({"image": x})["cell_logits"][0].float()).cpu().numpy()
            image_ids += [iid] * len(ids)
            cell_ids += ids
            probs.append(p)
        model.train(was_training)
        if not probs:
            return {}
        probs = np.concatenate(probs)
        self.last = (image_ids, cell_ids, probs)
        return {f"cell_mAP_{mode}": metric.score_cells(image_ids, cell_ids, probs, self.truth, mode)["mAP"]
                for mode in ("strict", "lenient")}
