"""Test-time scoring of cells by trained runs, and the ensemble S5 writes (used by S5, tools and
benchmarks/bench_predict.py).

A :class:`RunPredictor` rebuilds a run from its checkpoint (``checkpoints.load_checkpoint``: the
constants saved at training time decide the model, the pipeline and its view) and scores all cells
of an image in as few forward passes as ``batch_size`` allows. How it sees the cells is its
test-time view (:mod:`common.predict.views`), chosen once when the run is loaded. Each view is also
seen under ``tta`` of the 8 flip/transpose variants (:func:`tta.dihedral`, a fixed order, so results
are deterministic); the sigmoid outputs are averaged. A view calls its run through one method,
:meth:`RunPredictor.forward` (a batch under TTA, AMP and the device). The image-level prediction of
a run is the whole image through a pipeline-1 model, or the pooled cell logits of a pipeline-2 model.

:func:`score_runs` scores an image with every run (runs of equal :attr:`RunPredictor.view_key` share
the views, built once per image); :func:`combine` turns the runs' outputs into S5's submissions: the
weighted ensemble, the image prediction it may be multiplied by (``IMAGE_PRED``), the border weight,
and the comparison variants.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from common import cells
from common.constants import NUM_CLASSES, run_of
from common.data import augment
from common.device import resolve_device
from common.fov import FieldOfView
from common.models import checkpoints
from common.predict.views import ViewChoice, make_view
from common.tta import N_DIHEDRAL, dihedral


# ----------------------------------------------------------------------------- one run
def checkpoint_of(path: str | Path, checkpoint: str = "best.pth") -> Path:
    """A run's checkpoint: ``path`` itself when it is a file, else ``path / checkpoint`` (a run folder)."""
    path = Path(path)
    return path / checkpoint if path.is_dir() else path


@dataclass(frozen=True, repr=False)
class RunFile:
    """A run as S5's merge (``--MERGE``) needs it: its checkpoint and pipeline; no model is built or loaded,
    so the merge needs neither a GPU nor the memory of the models."""

    path: Path
    pipeline: int

    @classmethod
    def read(cls, path: str | Path, checkpoint: str = "best.pth") -> RunFile:
        path = checkpoint_of(path, checkpoint)
        return cls(path, int(checkpoints.read_config(path)["PIPELINE"]))

    def __repr__(self) -> str:
        return f"RunFile({run_of(self.path)}: pipeline {self.pipeline}, not loaded: the merge scores nothing)"


class RunPredictor:
    """One trained run, ready to score cells. ``path``: a checkpoint file or a folder with ``best.pth``."""

    def __init__(self, path: str | Path, device: str = "auto", tta: int = 1, batch_size: int = 32,
                 amp: bool = True, checkpoint: str = "best.pth", view: ViewChoice = ViewChoice()):
        self.path = checkpoint_of(path, checkpoint)
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
            self.view = make_view(self.pipeline, self.cfg, self.model, view.variant, view.cellpool_stride,
                                  view.cellpool_size)
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


@dataclass(frozen=True)
class Mix:
    """How the runs' outputs become the probabilities S5 writes (S5's ensemble constants): the image
    prediction (``image_pred``, :func:`check_image_pred`), whether cells are ``multiply``-ed by it,
    the ``border_weight`` of cells on the edge, and whether the ``comparisons`` are made too."""

    image_pred: str = "model"
    multiply: bool = False
    border_weight: float = 1.0
    comparisons: bool = False


def combine(cell_probs: list[np.ndarray], image_probs: list[np.ndarray], weights: list[float],
            pipelines: list[int], border: np.ndarray, mix: Mix) -> dict[str, np.ndarray]:
    """The cell probabilities ``(n, 19)`` S5 writes for one image, by name (:func:`variant_names`).

    ``cell_probs``/``image_probs``/``weights``/``pipelines``: one per run; ``border``: (n,) bool,
    the cells touching the image's edge. ``ensemble`` is the weighted mean of the runs, multiplied
    by the image prediction (:func:`image_prediction` of the weighted mean of the runs' image
    outputs, ``mix.image_pred``) when ``mix.multiply``; ``cells`` the mean alone, ``pipeline{k}`` the
    mean of one pipeline's runs, ``image_level`` every cell at the image prediction, ``x_image`` their
    product. Last, every one's border cells are multiplied by ``mix.border_weight`` (unless 1)."""
    ens = ensemble(cell_probs, weights)
    img_ens = image_prediction(ensemble(image_probs, weights), ens, mix.image_pred)
    out = {"ensemble": ens}
    if mix.comparisons:
        out["cells"] = ens
        kinds = sorted(set(pipelines))
        for pl in kinds:
            if len(kinds) > 1:
                sel = [i for i, p in enumerate(pipelines) if p == pl]
                out[f"pipeline{pl}"] = ensemble([cell_probs[i] for i in sel], [weights[i] for i in sel])
        out["image_level"] = np.broadcast_to(img_ens, ens.shape)
        out["x_image"] = ens * img_ens[None]
    if mix.multiply:
        out["ensemble"] = ens * img_ens[None]
    if mix.border_weight != 1.0:
        for name in out:
            out[name] = np.where(border[:, None], out[name] * mix.border_weight, out[name])
    return out
