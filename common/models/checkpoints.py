"""Checkpoints on disk: written atomically, read safely, rebuilt into models.

``save_checkpoint`` (atomic; a full disk is ``io.WriteError``), ``read_checkpoint`` (``weights_only``;
a truncated file or a refused pickle is one line naming the file), ``slim_checkpoint`` (what
``best.pth`` and ``tools/pack_runs.py`` keep), ``load_checkpoint`` (any run rebuilt from the constants
saved in its checkpoint, by :func:`common.models.models.build_model`).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from common import io
from common.config import Config
from common.models.models import build_model
from common.models.weights import load_error
from common.needs import MissingConstants

SLIM_KEYS = ("epoch", "best_metric", "best_epoch", "metrics", "model_name")  # small facts kept in best.pth


def slim_checkpoint(ckpt: dict, path: Path | str = "checkpoint") -> dict:
    """What S5 needs of a training checkpoint: the evaluated weights (EMA when present) as ``model``,
    the ``config``, and a few small facts (:data:`SLIM_KEYS`); no optimizer, scheduler, RNG or history.
    A checkpoint that is slim already comes back unchanged."""
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise SystemExit(f"{path}: not a training checkpoint (needs 'model' and 'config')")
    # ckpt.get: a checkpoint file's optional parts (no EMA; weights_from only in a slim one), not config
    which = ckpt.get("weights_from") or ("ema" if ckpt.get("ema") else "model")
    weights = ckpt["ema"] if ckpt.get("ema") else ckpt["model"]
    return {"model": weights, "config": ckpt["config"], "weights_from": which,
            **{k: ckpt[k] for k in SLIM_KEYS if k in ckpt}}


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """``torch.save(state)`` to ``path`` through :func:`io.atomic_path` and a file object: the bytes do
    not depend on the temporary's name, and a write error (a full disk) is :class:`io.WriteError`
    (one line: the file, the free space) rather than torch's zip-writer error."""
    with io.atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                torch.save(state, f)
        except RuntimeError as e:  # torch ends the archive after the failed write and raises over it
            cause = e.__context__
            while cause is not None and not isinstance(cause, OSError):
                cause = cause.__context__
            if cause is None:
                raise
            raise cause from None
    return Path(path)


def read_checkpoint(path: str | Path, what: str, remedy: str, mmap: bool = False) -> dict:
    """``torch.load(path, weights_only=True)`` on the CPU (``mmap``: the tensors read only when used), or a
    one-line SystemExit (:func:`load_error`)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - truncated zip (OSError, RuntimeError), EOFError, refused pickle
        raise SystemExit(load_error(path, e, what, remedy)) from None


def read_config(path: str | Path) -> dict:
    """The constants saved in a checkpoint, its tensors left unread (``mmap``), or a one-line SystemExit."""
    ckpt = read_checkpoint(path, "", CHECKPOINT_REMEDY, mmap=True)
    if not isinstance(ckpt, dict) or "config" not in ckpt:
        raise SystemExit(f"{path}: not a training checkpoint (needs 'model' and 'config')")
    return dict(ckpt["config"])


def load_weights(module: nn.Module, state: dict, path: str | Path, what: str, remedy: str) -> None:
    """``module.load_state_dict(state)``, or a one-line SystemExit naming ``path`` and the first mismatch."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise SystemExit(load_error(path, e, what, remedy)) from None


CHECKPOINT_REMEDY = "give a checkpoint written by S3 / S4.2 (best.pth or last.pth of a run)"


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True):
    """Rebuild the model of a checkpoint written by ``train.fit`` -> ``(model, cfg)`` in eval mode.

    The model is rebuilt from the checkpoint's saved ``config`` (a constant it lacks is a ``KeyError``
    naming the file and the constant) with ``PRETRAINED`` forced off
    (no download; the weights come from the checkpoint). The EMA weights are loaded when the
    checkpoint has them and ``use_ema``, else the raw weights; ``model.loaded_weights`` says which
    ("ema" | "model").
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    ckpt = read_checkpoint(path, "", CHECKPOINT_REMEDY)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path}: not a training checkpoint (needs 'model' and 'config')")
    cfg = Config(ckpt["config"])
    cfg["PRETRAINED"] = False
    cfg["PRETRAINED_FILE"] = ""
    try:
        model = build_model(cfg)
    except MissingConstants as e:  # a config saved without a constant the model needs
        raise KeyError(f"{path}: the checkpoint's config has no {', '.join(map(repr, e.names))} "
                       f"({e.part}; saved by S3 / S4.2)") from None
    which = "ema" if use_ema and ckpt.get("ema") else "model"  # .get: the file's optional parts
    load_weights(model, ckpt[which], path, "", CHECKPOINT_REMEDY)
    model.loaded_weights = ckpt.get("weights_from", which)  # a slim best.pth holds the EMA as "model"
    return model.to(device).eval(), cfg
