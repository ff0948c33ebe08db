"""Test-time scoring of cells by trained runs, and the ensemble S5 writes (used by S5, tools and
benchmarks/bench_predict.py).

A :class:`RunPredictor` rebuilds a run from its checkpoint (``checkpoints.load_checkpoint``: the
constants saved at training time decide the model, the pipeline and its view) and scores all cells
of an image in as few forward passes as ``batch_size`` allows. How it sees the cells is its
test-time view, one class per name in :data:`VIEWS`, chosen once when the run is loaded:

* ``masked`` (pipeline 1): :func:`cells.masked_views` (the whole image with only this cell kept),
  resized to the run's ``IMAGE_SIZE``;
* ``center_cells`` (pipeline 1): :func:`cells.centered_views` at ``IMAGE_SIZE``;
* ``cellpool`` (pipeline 1, trained so or asked for with ``variant=``): the whole image once per TTA
  variant, each cell pooled from the feature map (:mod:`common.models.cellpool`; ``cellpool_stride`` /
  ``cellpool_size`` for a finer feature grid);
* ``crop`` (pipeline 2): :func:`cells.crop_cells` at the run's ``CELL_SIZE`` and ``CROP_MARGIN``,
  from the original-resolution image when the run was trained on such crops (``FROM_ORIGINAL``) and
  it is given, else from the 512-px image.

A view builds the uint8 views of an image's cells (:meth:`View.views`; runs of equal
:attr:`View.key` share them, S5 builds them once per image) and scores them with a run
(:meth:`View.score` -> cell and image probabilities). Each view is also seen under ``tta`` of the 8
flip/transpose variants (:func:`tta.dihedral`, a fixed order, so results are deterministic);
the sigmoid outputs are averaged. A view calls its run through one method, :meth:`RunPredictor.forward`
(a batch under TTA, AMP and the device). The image-level prediction of a run is the whole image through a
pipeline-1 model, or the pooled cell logits of a pipeline-2 model.

:func:`score_runs` scores an image with every run (shared views); :func:`combine` turns the runs'
outputs into S5's submissions: the weighted ensemble, the image prediction it may be multiplied by
(``IMAGE_PRED``), the border weight, and the comparison variants.
"""
from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from common import cells
from common.constants import NUM_CLASSES, run_of
from common.data import augment
from common.device import resolve_device
from common.fov import FieldOfView, labels_at
from common.models import checkpoints
from common.models.cellpool import cell_weights, feature_map, pooled_logits, set_output_stride
from common.resize import resize_image
from common.tta import N_DIHEDRAL, dihedral


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

    def score(self, run: RunPredictor, prepared: np.ndarray | torch.Tensor | None,
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

    def image_probs(self, run: RunPredictor, image: np.ndarray, cell_logits: np.ndarray | None) -> np.ndarray:
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


# ----------------------------------------------------------------------------- one run
class RunPredictor:
    """One trained run, ready to score cells. ``path``: a checkpoint file or a folder with ``best.pth``."""

    def __init__(self, path: str | Path, device: str = "auto", tta: int = 1, batch_size: int = 32,
                 amp: bool = True, checkpoint: str = "best.pth", variant: str = "",
                 cellpool_stride: int = 0, cellpool_size: int = 0):
        path = Path(path)
        self.path = path / checkpoint if path.is_dir() else path
        self.device = resolve_device(device)
        self.model, self.cfg = checkpoints.load_checkpoint(self.path, self.device)
        self.pipeline = int(self.cfg["PIPELINE"])
        self.tta = int(tta)
        if not 1 <= self.tta <= N_DIHEDRAL:
            raise ValueError(f"tta must be 1..{N_DIHEDRAL}, got {tta}")
        self.batch_size = max(1, int(batch_size))
        self.cuda = self.device.type == "cuda"
        self.amp = bool(amp) and self.cuda
        if self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        try:
            self.view = make_view(self.pipeline, self.cfg, self.model, variant, cellpool_stride,
                                  cellpool_size)
        except KeyError as e:
            raise KeyError(f"{self.path}: the checkpoint's config has no {e.args[0]!r} "
                           f"(pipeline {self.pipeline}; saved by S3 / S4.2)") from None
        self.name = run_of(self.path)

    @property
    def variant(self) -> str:
        return self.view.name

    @property
    def size(self) -> int:
        return self.view.size

    @property
    def from_original(self) -> bool:
        return self.view.from_original

    @property
    def view_key(self) -> tuple:
        """Runs with equal keys score the same views: S5 builds them once per image for all of them."""
        return self.view.key

    def __repr__(self) -> str:
        return (f"RunPredictor({self.name}: pipeline {self.pipeline}, {self.cfg['MODEL_NAME']}, "
                f"{self.view}, tta {self.tta})")

    # ------------------------------------------------------------------ forward passes
    @torch.no_grad()
    def forward(self, x: torch.Tensor, fn=None) -> torch.Tensor:
        """The one forward pass of the run: the ``tta`` flip/transpose variants of ``x`` (n, 4, S, S),
        normalised, as one batch (variant-major: row ``k * n + i`` is variant ``k`` of view ``i``) on the
        run's device (channels_last on CUDA) through ``fn`` (default: the classifier's logits) under
        AMP -> its output as float32 (on the device)."""
        batch = torch.cat([dihedral(x, k) for k in range(self.tta)])
        batch = batch.to(self.device, non_blocking=True)
        if self.cuda:
            batch = batch.contiguous(memory_format=torch.channels_last)
        ctx = torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()
        with ctx:
            return (fn or self.model.classifier.logits)(batch).float()

    def score_views(self, views: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
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
            out = self.forward(chunk).cpu().reshape(self.tta, len(chunk), -1)
            probs[s:s + len(chunk)] = torch.sigmoid(out).mean(0)
            logits[s:s + len(chunk)] = out.mean(0)
        return probs.numpy(), logits.numpy()

    # ------------------------------------------------------------------ views
    def views(self, f: FieldOfView) -> np.ndarray:
        """The uint8 views this run scores for the cells ``f.ids`` (n, S, S, 4) (:meth:`View.views`)."""
        return self.view.views(_with_ids(f))

    def prepare(self, f: FieldOfView) -> torch.Tensor:
        """The normalised views ``(n, 4, S, S)`` of the cells ``f.ids``, ready for :meth:`predict`."""
        return self.view.prepare(_with_ids(f))

    def predict(self, f: FieldOfView, views: np.ndarray | torch.Tensor | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """Score the cells ``f.ids`` (None: every cell) of one field -> ``(cell_probs (n, 19), image_probs
        (19,))``. ``f.image`` / ``f.cell``: the working-resolution image and cell label map; ``f.original``:
        the original-resolution image (used by pipeline-2 runs trained on such crops); ``views``:
        ``self.views(f)`` or ``self.prepare(f)`` when already built (by a run of the same
        :attr:`view_key`: S5 builds and normalises them once per image)."""
        return self.view.score(self, views, _with_ids(f))

    def predict_per_cell(self, f: FieldOfView) -> np.ndarray:
        """The slow reference: one forward pass per cell view (for tests and the benchmark)."""
        f = _with_ids(f)
        keep, self.batch_size = self.batch_size, self.tta
        try:
            return np.concatenate([self.score_views(self.views(replace(f, ids=[c])))[0]
                                   for c in f.ids]) if f.ids else np.zeros((0, NUM_CLASSES), np.float32)
        finally:
            self.batch_size = keep


def _with_ids(f: FieldOfView) -> FieldOfView:
    """``f``, or a copy listing every cell of ``f.cell`` when ``f.ids`` is None."""
    return f if f.ids is not None else replace(f, ids=cells.cell_ids(f.cell))


def find_runs(output_dir: str | Path, checkpoint: str = "best.pth") -> list[Path]:
    """Every run folder under ``output_dir`` holding ``checkpoint`` (sorted)."""
    return sorted(p.parent for p in Path(output_dir).rglob(checkpoint))


# ----------------------------------------------------------------------------- the ensemble
def score_runs(runs: list[RunPredictor], f: FieldOfView) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every run's cell probabilities and image probabilities of the cells ``f.ids`` of one field; runs
    of the same :attr:`RunPredictor.view_key` share the views, built and normalised once."""
    cell_probs, image_probs, views = [], [], {}
    for run in runs:
        if run.view_key not in views:
            views[run.view_key] = run.prepare(f)
        cp, ip = run.predict(f, views=views[run.view_key])
        cell_probs.append(cp)
        image_probs.append(ip)
    return cell_probs, image_probs


def ensemble(per_run: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Weighted mean of per-run probability arrays of the same shape."""
    w = np.asarray(weights, np.float64)
    return (np.tensordot(w / w.sum(), np.stack(per_run), axes=1)).astype(np.float32)


IMAGE_PREDS = ("model", "cells", "both")


def check_image_pred(how: str) -> None:
    """The one check of ``IMAGE_PRED``: a ``ValueError`` ("--IMAGE_PRED 'x': must be one of ...") unless it
    is one of :data:`IMAGE_PREDS` (S5 checks it at its start with this, before any image is read)."""
    if how not in IMAGE_PREDS:
        raise ValueError(f"--IMAGE_PRED {how!r}: must be one of " + ", ".join(repr(c) for c in IMAGE_PREDS))


def image_prediction(model_image: np.ndarray, cell_probs: np.ndarray, how: str = "model") -> np.ndarray:
    """An image's class probabilities: the runs' own image outputs (``model``; pipeline 2's is the
    max-pooled bag), the mean of the ensemble's probabilities over the image's cells (``cells``), or
    the average of the two (``both``). ``cell_probs``: (n_cells, C); ``model_image``: (C,)."""
    check_image_pred(how)
    if how == "model":
        return model_image
    mean = cell_probs.mean(0).astype(np.float32)
    return mean if how == "cells" else ((model_image + mean) / 2).astype(np.float32)


# the comparison submissions :func:`combine` may return besides ``ensemble``
COMPARISONS = ("cells", "pipeline1", "pipeline2", "image_level", "x_image")


def variant_names(pipelines: list[int], comparisons: bool) -> list[str]:
    """The names :func:`combine` returns for runs of these ``pipelines``: ``ensemble``, and with
    ``comparisons`` ``cells``, ``pipeline{k}`` (when the runs are of several pipelines),
    ``image_level`` and ``x_image``."""
    kinds = sorted(set(pipelines))
    names = ["ensemble"]
    if comparisons:
        names += ["cells"] + [f"pipeline{k}" for k in kinds if len(kinds) > 1] + ["image_level", "x_image"]
    return names


def combine(cell_probs: list[np.ndarray], image_probs: list[np.ndarray], weights: list[float],
            pipelines: list[int], border: np.ndarray, *, image_pred: str, multiply: bool,
            border_weight: float, comparisons: bool) -> dict[str, np.ndarray]:
    """The cell probabilities ``(n, 19)`` S5 writes for one image, by name (:func:`variant_names`).

    ``cell_probs``/``image_probs``/``weights``/``pipelines``: one per run; ``border``: (n,) bool,
    the cells touching the image's edge. ``ensemble`` is the weighted mean of the runs, multiplied
    by the image prediction (:func:`image_prediction` of the weighted mean of the runs' image
    outputs, ``image_pred``) when ``multiply``; ``cells`` the mean alone, ``pipeline{k}`` the mean of
    one pipeline's runs, ``image_level`` every cell at the image prediction, ``x_image`` their
    product. Last, every one's border cells are multiplied by ``border_weight`` (unless 1)."""
    ens = ensemble(cell_probs, weights)
    img_ens = image_prediction(ensemble(image_probs, weights), ens, image_pred)
    out = {"ensemble": ens}
    if comparisons:
        out["cells"] = ens
        kinds = sorted(set(pipelines))
        for pl in kinds:
            if len(kinds) > 1:
                sel = [i for i, p in enumerate(pipelines) if p == pl]
                out[f"pipeline{pl}"] = ensemble([cell_probs[i] for i in sel], [weights[i] for i in sel])
        out["image_level"] = np.broadcast_to(img_ens, ens.shape)
        out["x_image"] = ens * img_ens[None]
    if multiply:
        out["ensemble"] = ens * img_ens[None]
    if border_weight != 1.0:
        for name in out:
            out[name] = np.where(border[:, None], out[name] * border_weight, out[name])
    return out
