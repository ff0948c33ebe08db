"""The test-time views: how a run sees the cells of a field (one class per name in :data:`VIEWS`).

* ``masked`` (pipeline 1): :func:`cells.masked_views` (the whole image with only this cell kept),
  resized to the run's ``IMAGE_SIZE``;
* ``center_cells`` (pipeline 1): :func:`cells.centered_views` at ``IMAGE_SIZE``;
* ``cellpool`` (pipeline 1, trained so or chosen with :class:`ViewChoice`): the whole image once per
  TTA variant, each cell pooled from the feature map (:mod:`common.models.cellpool`);
* ``crop`` (pipeline 2): :func:`cells.crop_cells` at the run's ``CELL_SIZE`` and ``CROP_MARGIN``.

A view builds the uint8 views of a field's cells (:meth:`View.views`), and scores them through its
run's one forward (:meth:`View.score`: ``run.forward``, a batch under TTA, AMP and the device).
To add a view: a subclass of :class:`View` with its ``name``, entered in :data:`VIEWS`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from common import cells
from common.constants import NUM_CLASSES
from common.data import augment
from common.fov import FieldOfView, labels_at
from common.models.cellpool import cell_weights, feature_map, pooled_logits, set_output_stride
from common.resize import resize_image
from common.tta import dihedral


# ----------------------------------------------------------------------------- test-time views
class View:
    """How a run sees the cells of an image: ``name`` (the variant), ``size`` (a view's side).

    The interface: :meth:`views` (uint8 ``(n, S, S, 4)``), :meth:`prepare` (normalised), :attr:`key`
    (equal keys, equal views), :meth:`score` (a run's probabilities of the cells and of the image),
    ``from_original`` (whether the views read the original-resolution image)."""

    name = ""
    from_original = False

    def __init__(self, size: int):
        self.size = int(size)

    @classmethod
    def for_run(cls, cfg: dict, model, cellpool_stride: int, cellpool_size: int) -> View:
        """The view of a pipeline-1 run (only the cell-pool view reads the ``cellpool_*`` options)."""
        return cls(int(cfg["IMAGE_SIZE"]))

    @property
    def key(self) -> tuple:
        """Runs with equal keys score the same views: S5 builds them once per image for all of them."""
        return (self.name, self.size)

    def __str__(self) -> str:
        return f"{self.name} @ {self.size}px"

    def views(self, f: FieldOfView) -> np.ndarray:
        """The uint8 views of the cells ``f.ids`` of the field ``f``."""
        raise NotImplementedError

    def prepare(self, f: FieldOfView) -> torch.Tensor:
        """The normalised views ``(n, 4, S, S)``."""
        return augment.normalize(self.views(f), "competition")

    def score(self, run, prepared: np.ndarray | torch.Tensor | None,
              f: FieldOfView) -> tuple[np.ndarray, np.ndarray]:
        """``run``'s ``(cell_probs (n, 19), image_probs (19,))`` of the cells ``f.ids``: each cell's view
        in batches (:meth:`RunPredictor.score_views`); ``prepared``: these views (or :meth:`prepare`'s)
        when built."""
        cell_probs = np.zeros((len(f.ids), NUM_CLASSES), np.float32)
        cell_logits = None
        if f.ids:
            if prepared is None:
                prepared = self.prepare(f)
            cell_probs, cell_logits = run.score_views(prepared)
        return cell_probs, self.image_probs(run, f.image, cell_logits)

    def image_probs(self, run, image: np.ndarray, cell_logits: np.ndarray | None) -> np.ndarray:
        """The image prediction of a pipeline-1 run: the whole image at the view's size."""
        return run.score_views(resize_image(image, self.size)[None])[0][0]


class MaskedView(View):
    """The whole image with only the cell kept (:func:`cells.masked_views`), resized to ``size``."""

    name = "masked"

    def views(self, f) -> np.ndarray:
        views = cells.masked_views(f.image, f.cell, f.ids)
        return np.stack([resize_image(v, self.size) for v in views]) if len(views) else \
            np.zeros((0, self.size, self.size, f.image.shape[2]), np.uint8)


class CenteredView(View):
    """A window of ``size`` centred on the cell (:func:`cells.centered_views`)."""

    name = "center_cells"

    def views(self, f) -> np.ndarray:
        return cells.centered_views(f.image, f.cell, f.ids, self.size)


class CellPoolView(View):
    """The whole image once (at ``size``); each cell pooled from the feature map (:mod:`models.cellpool`).

    ``stride``: the backbone's output stride set at loading (0 = as trained); with one, the image
    prediction is one more pass of the run as trained (``image_classifier``, a copy made before)."""

    name = "cellpool"

    def __init__(self, size: int, stride: int = 0, image_classifier: torch.nn.Module | None = None):
        super().__init__(size)
        self.stride = int(stride)
        self.image_classifier = image_classifier

    @classmethod
    def for_run(cls, cfg: dict, model, cellpool_stride: int, cellpool_size: int) -> CellPoolView:
        """Sets ``model``'s output stride to ``cellpool_stride`` (0: as trained); ``cellpool_size``: the
        input side (0: the run's ``IMAGE_SIZE``)."""
        size = int(cellpool_size) or int(cfg["IMAGE_SIZE"])
        # the image prediction stays the run's own (at its trained stride): one more pass
        image_classifier = copy.deepcopy(model.classifier) if int(cellpool_stride) else None
        set_output_stride(model.classifier, cellpool_stride)
        return cls(size, int(cellpool_stride), image_classifier)

    def __str__(self) -> str:
        return f"{self.name}{f'/{self.stride}' if self.stride else ''} @ {self.size}px"

    def views(self, f) -> np.ndarray:
        return resize_image(f.image, self.size)[None]  # the whole image once; the cells are pooled

    def score(self, run, prepared, f):
        """One batch of the ``tta`` variants of the image goes through the backbone; each variant's
        weights are the same dihedral transform of the cell weights. The image prediction is the
        whole-grid average of the same pass (the plain image prediction at the trained stride and
        size); with a stride override it is one more pass of the run at its trained stride: the dilated
        model's whole-image average is a worse image prediction than the model's own."""
        if prepared is None:
            prepared = self.prepare(f)
        x = prepared if isinstance(prepared, torch.Tensor) else augment.normalize(prepared, "competition")
        clf = run.model.classifier

        def cells_and_image(batch: torch.Tensor) -> torch.Tensor:  # (T, 4, S, S) -> (T, n + 1, 19)
            fmap = feature_map(clf, batch)
            grid = tuple(fmap.shape[-2:])
            lab = torch.from_numpy(np.ascontiguousarray(f.cell).astype(np.int64))[None].to(run.device)
            cid = torch.as_tensor(list(f.ids) + [-1], dtype=torch.long, device=run.device)[None]  # -1: image
            w = cell_weights(lab, cid, grid)[0]
            w[-1] = 1.0 / (grid[0] * grid[1])
            ws = torch.stack([dihedral(w, k) for k in range(run.tta)])       # (T, n+1, h, w)
            return pooled_logits(clf, fmap, ws)

        probs = torch.sigmoid(run.forward(x, cells_and_image)).mean(0).cpu().numpy()
        if self.image_classifier is not None:  # a stride override: the image prediction as trained
            probs[-1] = torch.sigmoid(run.forward(x, self.image_classifier.logits)).mean(0).cpu().numpy()
        return probs[:-1].astype(np.float32), probs[-1].astype(np.float32)


class CropView(View):
    """Pipeline 2: square crops of ``size`` around each cell with ``margin`` (:func:`cells.crop_cells`),
    from the original image when ``from_original`` and it is given (S4.1's crops)."""

    name = "crop"

    def __init__(self, size: int, margin: float, from_original: bool):
        super().__init__(size)
        self.margin = float(margin)
        self.from_original = bool(from_original)

    @classmethod
    def for_run(cls, cfg: dict, model, cellpool_stride: int, cellpool_size: int) -> CropView:
        # S4.1's crop settings, saved by S4.2
        return cls(int(cfg["CELL_SIZE"]), float(cfg["CROP_MARGIN"]), bool(cfg["FROM_ORIGINAL"]))

    @property
    def key(self) -> tuple:
        return (self.name, self.size, self.margin, self.from_original)

    def __str__(self) -> str:  # where S4.1 cropped (its FROM_ORIGINAL, saved by S4.2): the same here
        return f"{super().__str__()} from the {'original' if self.from_original else 'working-size'} images"

    def views(self, f) -> np.ndarray:
        """From ``f.original`` with ``f.cell_full``, the original-size label map, when there is one (else
        ``f.cell`` resized, as S4.1 does)."""
        original, labels = f.original, f.cell
        if self.from_original and original is not None and original.shape[:2] != labels.shape:
            big = labels_at(original.shape[:2], labels, f.cell_full)
            return cells.crop_cells(original, big, f.ids, self.size, self.margin)
        src = original if (self.from_original and original is not None) else f.image
        return cells.crop_cells(src, labels, f.ids, self.size, self.margin)

    def image_probs(self, run, image, cell_logits) -> np.ndarray:
        """The run's pool (``MIL_POOL``) of the cell logits; zeros without cells."""
        if cell_logits is None:
            return np.zeros(NUM_CLASSES, np.float32)
        pooled = run.model.mil.pool(torch.from_numpy(cell_logits)[None])[0]
        return torch.sigmoid(pooled).numpy()


VIEWS: dict[str, type[View]] = {"masked": MaskedView, "center_cells": CenteredView, "cellpool": CellPoolView,
                                "crop": CropView}


def make_view(pipeline: int, cfg: dict, model, variant: str, cellpool_stride: int,
              cellpool_size: int) -> View:
    """The view of a run: pipeline 2 crops; pipeline 1 ``variant``, else the one it was trained with
    (its ``VARIANT``). A checkpoint's config lacking a key raises ``KeyError`` naming it."""
    if pipeline == 2:
        name = "crop"
    else:
        name = str(variant or cfg["VARIANT"])
        if name not in augment.P1_VARIANTS:  # how a pipeline-1 run scores cells
            raise ValueError(f"pipeline-1 variant {name!r}: expected one of {augment.P1_VARIANTS}")
    return VIEWS[name].for_run(cfg, model, cellpool_stride, cellpool_size)


@dataclass(frozen=True)
class ViewChoice:
    """How a pipeline-1 run scores cells (S5's P1_* constants): ``variant`` "" = as trained, or one of
    ``augment.P1_VARIANTS``; the cell-pool view's backbone ``cellpool_stride`` and input
    ``cellpool_size`` (0 = as trained)."""

    variant: str = ""
    cellpool_stride: int = 0
    cellpool_size: int = 0
