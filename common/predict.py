"""Test-time scoring of cells by one trained run (used by S5 and benchmarks/bench_predict.py).

A :class:`RunPredictor` rebuilds a run from its checkpoint (``models.load_checkpoint``: the
constants saved at training time decide the model, the pipeline and its views) and scores all
cells of an image in as few forward passes as ``batch_size`` allows:

* pipeline 1, ``VARIANT="masked"``: :func:`cells.masked_views` (the whole image with only this
  cell kept), resized to the run's ``IMAGE_SIZE``;
* pipeline 1, ``VARIANT="center_cells"``: :func:`cells.centered_views` at ``IMAGE_SIZE``;
* pipeline 1, ``VARIANT="cellpool"`` (trained so, or asked for with ``variant=``): the whole image
  once per TTA variant, each cell pooled from the feature map (:mod:`common.cellpool`;
  ``cellpool_stride`` / ``cellpool_size`` for a finer feature grid);
* pipeline 2: :func:`cells.crop_cells` at the run's ``CELL_SIZE`` and ``CROP_MARGIN``, from the
  original-resolution image when the run was trained on such crops (``FROM_ORIGINAL``) and it is
  given, else from the 512-px image.

Each view is also seen under ``tta`` of the 8 flip/transpose variants (:func:`augment.dihedral`, a
fixed order, so results are deterministic); the sigmoid outputs are averaged. The image-level
prediction of a run is the whole image through a pipeline-1 model, or the pooled cell logits of a
pipeline-2 model.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from common import augment, cells, config, io, models
from common.constants import NUM_CLASSES
from common.fov import labels_at

P1_VARIANTS = ("masked", "center_cells", "cellpool")  # how a pipeline-1 run scores cells


class RunPredictor:
    """One trained run, ready to score cells. ``path``: a checkpoint file or a folder with ``best.pth``."""

    def __init__(self, path: str | Path, device: str = "auto", tta: int = 1, batch_size: int = 32,
                 amp: bool = True, checkpoint: str = "best.pth", variant: str = "",
                 cellpool_stride: int = 0, cellpool_size: int = 0):
        path = Path(path)
        self.path = path / checkpoint if path.is_dir() else path
        self.device = config.resolve_device(device)
        self.model, self.cfg = models.load_checkpoint(self.path, self.device)
        self.pipeline = int(self.cfg["PIPELINE"])
        self.tta = int(tta)
        if not 1 <= self.tta <= augment.N_DIHEDRAL:
            raise ValueError(f"tta must be 1..{augment.N_DIHEDRAL}, got {tta}")
        self.batch_size = max(1, int(batch_size))
        self.cuda = self.device.type == "cuda"
        self.amp = bool(amp) and self.cuda
        if self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.pipeline == 1:
            self.variant = str(variant or self.cfg.get("VARIANT", "masked"))
            if self.variant not in P1_VARIANTS:
                raise ValueError(f"pipeline-1 variant {self.variant!r}: expected one of {P1_VARIANTS}")
            self.size = int(self.cfg["IMAGE_SIZE"])
            if self.variant == "cellpool":  # one pass per image, cells pooled (common/cellpool.py)
                import copy

                from common.cellpool import set_output_stride

                # the image prediction stays the run's own (at its trained stride): one more pass
                self.image_classifier = copy.deepcopy(self.model.classifier) if int(cellpool_stride) else None
                set_output_stride(self.model.classifier, cellpool_stride)
                self.size = int(cellpool_size) or self.size
                self.stride = int(cellpool_stride)
        else:
            self.variant = "crop"
            self.size = int(self.cfg["CELL_SIZE"])
            self.margin = float(self.cfg["CROP_MARGIN"])  # S4.1's, saved by S4.2
            self.from_original = bool(self.cfg.get("FROM_ORIGINAL", False))
        self.name = self.path.parent.parent.name + "/" + self.path.parent.name

    @property
    def view_key(self) -> tuple:
        """Runs with equal keys score the same views: S5 builds them once per image for all of them."""
        if self.pipeline == 2:
            return ("crop", self.size, self.margin, self.from_original)
        return (self.variant, self.size)

    def __repr__(self) -> str:
        return (f"RunPredictor({self.name}: pipeline {self.pipeline}, {self.cfg.get('MODEL_NAME')}, "
                f"{self.variant}{f'/{self.stride}' if getattr(self, 'stride', 0) else ''} @ {self.size}px, "
                f"tta {self.tta})")

    # ------------------------------------------------------------------ forward passes
    @torch.no_grad()
    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()
        with ctx:
            return self.model.classifier.logits(x).float()

    def _score_views(self, views: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``(n, S, S, 4)`` uint8 views, or :meth:`prepare`'s tensor -> (sigmoid averaged over TTA
        (n, 19), mean logits (n, 19))."""
        x = views if isinstance(views, torch.Tensor) else augment.normalize(views, "competition")
        n = len(x)
        probs = torch.zeros(n, NUM_CLASSES)
        logits = torch.zeros_like(probs)
        # all TTA variants of a chunk of views go through in one batch
        per = max(1, self.batch_size // self.tta)
        for s in range(0, n, per):
            chunk = x[s:s + per]
            batch = torch.cat([augment.dihedral(chunk, k) for k in range(self.tta)])
            out = self._logits(batch).cpu().reshape(self.tta, len(chunk), -1)
            probs[s:s + len(chunk)] = torch.sigmoid(out).mean(0)
            logits[s:s + len(chunk)] = out.mean(0)
        return probs.numpy(), logits.numpy()

    # ------------------------------------------------------------------ views
    def views(self, image: np.ndarray, labels: np.ndarray, ids: list[int],
              original: np.ndarray | None = None, labels_full: np.ndarray | None = None) -> np.ndarray:
        """The uint8 views this run scores for the cells ``ids`` (n, S, S, 4). ``labels_full``: the
        original-size label map when there is one (else ``labels`` resized, as S4.1 does)."""
        if self.pipeline == 2:
            if self.from_original and original is not None and original.shape[:2] != labels.shape:
                big = labels_at(original.shape[:2], labels, labels_full)
                return cells.crop_cells(original, big, ids, self.size, self.margin)
            src = original if (self.from_original and original is not None) else image
            return cells.crop_cells(src, labels, ids, self.size, self.margin)
        if self.variant == "center_cells":
            return cells.centered_views(image, labels, ids, self.size)
        if self.variant == "cellpool":  # the whole image once; the cells are pooled in predict
            return io.resize_image(image, self.size)[None]
        views = cells.masked_views(image, labels, ids)
        return np.stack([io.resize_image(v, self.size) for v in views]) if len(views) else \
            np.zeros((0, self.size, self.size, image.shape[2]), np.uint8)

    def prepare(self, image: np.ndarray, labels: np.ndarray, ids: list[int],
                original: np.ndarray | None = None, labels_full: np.ndarray | None = None) -> torch.Tensor:
        """The normalised views ``(n, 4, S, S)`` of the cells ``ids``, ready for :meth:`predict`."""
        return augment.normalize(self.views(image, labels, ids, original, labels_full), "competition")

    def predict(self, image: np.ndarray, labels: np.ndarray, ids: list[int] | None = None,
                original: np.ndarray | None = None, views: np.ndarray | torch.Tensor | None = None,
                labels_full: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Score every cell of one image -> ``(cell_probs (n, 19), image_probs (19,))``.

        ``image``/``labels``: the working-resolution (512 px) image and cell label map;
        ``original``: the original-resolution image (used by pipeline-2 runs trained on such crops);
        ``views``: ``self.views(...)`` or ``self.prepare(...)`` of these cells when already built
        (by a run of the same :attr:`view_key`: S5 builds and normalises them once per image).
        """
        ids = cells.cell_ids(labels) if ids is None else list(ids)
        if self.variant == "cellpool":
            from common.cellpool import predict_image

            return predict_image(self, image, labels, ids, views)
        cell_probs = np.zeros((len(ids), NUM_CLASSES), np.float32)
        if ids:
            if views is None:
                views = self.prepare(image, labels, ids, original, labels_full)
            cell_probs, cell_logits = self._score_views(views)
        if self.pipeline == 1:
            whole = io.resize_image(image, self.size)[None]
            image_probs = self._score_views(whole)[0][0]
        elif ids:
            from common.mil import pool_cells

            pooled = pool_cells(torch.from_numpy(cell_logits)[None], self.model.pool,
                                self.model.topk, self.model.lse_r)[0]
            image_probs = torch.sigmoid(pooled).numpy()
        else:
            image_probs = np.zeros(NUM_CLASSES, np.float32)
        return cell_probs, image_probs

    def predict_per_cell(self, image: np.ndarray, labels: np.ndarray, ids: list[int] | None = None,
                         original: np.ndarray | None = None) -> np.ndarray:
        """The slow reference: one forward pass per cell view (for tests and the benchmark)."""
        ids = cells.cell_ids(labels) if ids is None else list(ids)
        keep, self.batch_size = self.batch_size, self.tta
        try:
            return np.concatenate([self._score_views(self.views(image, labels, [c], original))[0]
                                   for c in ids]) if ids else np.zeros((0, NUM_CLASSES), np.float32)
        finally:
            self.batch_size = keep


def find_runs(output_dir: str | Path, checkpoint: str = "best.pth") -> list[Path]:
    """Every run folder under ``output_dir`` holding ``checkpoint`` (sorted)."""
    return sorted(p.parent for p in Path(output_dir).rglob(checkpoint))


def ensemble(per_run: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Weighted mean of per-run probability arrays of the same shape."""
    w = np.asarray(weights, np.float64)
    return (np.tensordot(w / w.sum(), np.stack(per_run), axes=1)).astype(np.float32)


IMAGE_PREDS = ("model", "cells", "both")


def image_prediction(model_image: np.ndarray, cell_probs: np.ndarray, how: str = "model") -> np.ndarray:
    """An image's class probabilities: the runs' own image outputs (``model``; pipeline 2's is the
    max-pooled bag), the mean of the ensemble's probabilities over the image's cells (``cells``), or
    the average of the two (``both``). ``cell_probs``: (n_cells, C); ``model_image``: (C,)."""
    if how == "model":
        return model_image
    if how not in IMAGE_PREDS:
        raise ValueError(f"IMAGE_PRED must be one of {IMAGE_PREDS}, not {how!r}")
    mean = cell_probs.mean(0).astype(np.float32)
    return mean if how == "cells" else ((model_image + mean) / 2).astype(np.float32)
