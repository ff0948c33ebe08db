"""The models: a timm backbone with a multi-sample-dropout head, the pipeline-1 image model, and
``build_model`` / ``load_checkpoint`` that rebuild any run from its saved constants.

Config keys read (all required, no defaults here): ``PIPELINE`` (1 image model | 2 bag model),
``MODEL_NAME`` (any timm name, tags allowed: ``tf_efficientnet_b0.ns_jft_in1k``), ``PRETRAINED``,
``PRETRAINED_FILE`` (a local state_dict / timm checkpoint / .safetensors; implies pretrained
loading from that file instead of the hub), ``PRETRAINED_DIR`` (a folder of ``<model>.safetensors``
looked in before the hub), ``STEM_INIT`` (timm | original; see :mod:`common.weights`: local files
and the hub both go through timm's ``load_pretrained``, so the 3-channel stem is widened to 4
channels by ``adapt_input_conv`` either way), ``DROPOUT`` (p of each dropout mask),
``MSD_SAMPLES`` (number of masks averaged), ``LOSS`` (see :func:`common.losses.build_loss`).
"""
from __future__ import annotations

import pickle
from pathlib import Path

import timm
import torch
from torch import nn

from common import io, weights
from common.cellpool import CellPoolModel
from common.config import Config
from common.constants import NUM_CLASSES
from common.losses import build_loss
from common.mil import BagModel


def _get(cfg: dict, key: str):
    """``cfg[key]``; the script's constants block is the one source of every value."""
    if key not in cfg:
        raise KeyError(f"model config lacks {key!r} (define it in the script's constants)")
    return cfg[key]


class Classifier(nn.Module):
    """timm backbone (4 input channels, global pooling) + a 19-way multi-sample-dropout head.

    In training the head averages ``n_dropout`` linear outputs, each on its own dropout mask of
    the pooled features; in eval dropout is the identity so this equals one linear layer.
    """

    def __init__(self, model_name: str, pretrained: bool = False, pretrained_file: str = "",
                 num_classes: int = NUM_CLASSES, dropout: float = 0.5, n_dropout: int = 5,
                 in_chans: int = 4, pretrained_dir: str = "", stem_init: str = "timm"):
        super().__init__()
        kw = {}
        # a local file (PRETRAINED_FILE, else <PRETRAINED_DIR>/<model>.safetensors) goes through
        # timm's own load_pretrained like a hub download: same filter, same stem widening
        path = weights.local_source(model_name, pretrained, pretrained_file, pretrained_dir)
        if path is not None:
            kw["pretrained_cfg_overlay"] = dict(file=str(path))
            pretrained = True
        self.model_name = model_name
        try:
            self.backbone = timm.create_model(model_name, pretrained=pretrained, in_chans=in_chans,
                                              num_classes=0, **kw)
        except Exception as e:
            if path is not None and timm.is_model(model_name):  # the file: refused, truncated, other model
                what = "PRETRAINED_FILE" if pretrained_file else "PRETRAINED_DIR"
                raise SystemExit(load_error(path, e, f"{what} ", f"give weights of {model_name}")) from None
            if not pretrained or not isinstance(e, OSError):
                raise
            # hub / cache unreachable (LocalEntryNotFoundError, URLError, ...)
            raise weights.PretrainedUnavailable(
                weights.unavailable_message(model_name, pretrained_dir, e)) from e
        if pretrained and stem_init == "original":
            weights.widen_stem_original(self.backbone)
        elif stem_init not in weights.STEM_INITS:
            raise ValueError(f"stem_init must be one of {weights.STEM_INITS}, got {stem_init!r}")
        # pooled-feature width: models with a conv head after pooling (LCNet, MobileNetV3) report
        # it as head_hidden_size, which differs from num_features
        width = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        self.num_features = int(width)
        self.dropouts = nn.ModuleList([nn.Dropout(dropout) for _ in range(max(1, int(n_dropout)))])
        self.head = nn.Linear(self.num_features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 4, H, W) -> pooled features (B, F)."""
        return self.backbone(x)

    def head_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Pooled features (..., F) -> logits (..., 19) with multi-sample dropout in training."""
        if not self.training or len(self.dropouts) == 1:
            return self.head(self.dropouts[0](feats))
        return torch.stack([self.head(d(feats)) for d in self.dropouts], 0).mean(0)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 4, H, W) normalised images -> (B, 19) logits."""
        return self.head_logits(self.features(x))

    forward = logits


class ImageModel(nn.Module):
    """Pipeline 1: a :class:`Classifier` on whole images and its loss (batch dict in, dict out)."""

    def __init__(self, classifier: Classifier, loss_fn=None):
        super().__init__()
        self.classifier = classifier
        self.loss_fn = loss_fn

    def forward(self, batch: dict) -> dict:
        logits = self.classifier.logits(batch["image"])
        out = {"logits": logits}
        if "label" in batch and self.loss_fn is not None:
            out["loss"] = self.loss_fn(logits, batch["label"])
        return out


def build_classifier(cfg: dict) -> Classifier:
    """The :class:`Classifier` of a config. ``PRETRAINED_DIR`` is read only when ``PRETRAINED`` (where
    to look for the weights) and ``STEM_INIT`` only when weights are loaded (``PRETRAINED`` or a
    ``PRETRAINED_FILE``): a run rebuilt from its checkpoint (:func:`load_checkpoint` turns both off)
    needs neither, so configs saved before those constants existed still load."""
    pretrained = bool(_get(cfg, "PRETRAINED"))
    pretrained_file = str(_get(cfg, "PRETRAINED_FILE") or "")
    loading = {}
    if pretrained:
        loading["pretrained_dir"] = str(_get(cfg, "PRETRAINED_DIR") or "")
    if pretrained or pretrained_file:
        loading["stem_init"] = str(_get(cfg, "STEM_INIT"))
    return Classifier(_get(cfg, "MODEL_NAME"), pretrained=pretrained, pretrained_file=pretrained_file,
                      dropout=float(_get(cfg, "DROPOUT")), n_dropout=int(_get(cfg, "MSD_SAMPLES")), **loading)


def build_model(cfg: dict) -> nn.Module:
    """PIPELINE 1 -> :class:`ImageModel` (``VARIANT="cellpool"``: ``common.cellpool.CellPoolModel``);
    PIPELINE 2 -> ``common.mil.BagModel(Classifier, cfg)``."""
    pipeline = int(_get(cfg, "PIPELINE"))
    if pipeline == 1 and str(cfg.get("VARIANT", "")) == "cellpool":  # cells pooled from one pass
        return CellPoolModel(build_classifier(cfg), cfg)
    if pipeline == 1:
        return ImageModel(build_classifier(cfg), build_loss(str(_get(cfg, "LOSS"))))
    if pipeline == 2:
        return BagModel(build_classifier(cfg), cfg)
    raise ValueError(f"PIPELINE must be 1 or 2, got {pipeline!r}")


def new_model(cfg: dict) -> nn.Module:
    """:func:`build_model` with torch's RNG seeded from ``cfg["SEED"]`` first: the initial weights
    of a training run depend on SEED only (S3 and S4.2 build their models here)."""
    torch.manual_seed(int(_get(cfg, "SEED")))
    return build_model(cfg)


SLIM_KEYS = ("epoch", "best_metric", "best_epoch", "metrics", "model_name")  # small facts kept in best.pth


def slim_checkpoint(ckpt: dict, path: Path | str = "checkpoint") -> dict:
    """What S5 needs of a training checkpoint: the evaluated weights (EMA when present) as ``model``,
    the ``config``, and a few small facts (:data:`SLIM_KEYS`); no optimizer, scheduler, RNG or history.
    A checkpoint that is slim already comes back unchanged."""
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise SystemExit(f"{path}: not a training checkpoint (needs 'model' and 'config')")
    which = ckpt.get("weights_from") or ("ema" if ckpt.get("ema") else "model")
    weights = ckpt["ema"] if ckpt.get("ema") else ckpt["model"]
    return {"model": weights, "config": ckpt["config"], "weights_from": which,
            **{k: ckpt[k] for k in SLIM_KEYS if k in ckpt}}


# ----------------------------------------------------------------------------- reading checkpoints
def _first_problem(error: BaseException) -> str:
    """The first line of ``load_state_dict``'s error that says what is wrong (e.g. a size mismatch)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    detail = [ln for ln in lines if not ln.startswith("Error(s) in loading")] or [type(error).__name__]
    return detail[0] if len(detail[0]) <= 300 else detail[0][:297] + "..."


def _refused_pickle(error: BaseException | None) -> BaseException | None:
    """torch's refusal of a pickle under ``weights_only=True``, when ``error`` is it or was raised
    from it (timm wraps it in a RuntimeError with advice of its own)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, pickle.UnpicklingError) and "weights only load failed" in str(error).lower():
            return error
        error = error.__cause__ or error.__context__
    return None


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


def load_error(path: str | Path, error: BaseException, what: str, remedy: str) -> str:
    """The one line for a weights file that cannot be used: ``what`` (e.g. ``"RESUME: "``) and ``path``,
    then why, then ``remedy``. A pickle that ``weights_only=True`` refuses gets the opposite of
    torch's advice: the file holds more than tensors and plain values, and loading it with
    ``weights_only=False`` would run code from the file."""
    text = str(error)
    refused = _refused_pickle(error)
    if refused is not None:
        reason = [ln.strip() for ln in str(refused).splitlines() if ln.strip() and not ln.startswith(
            ("Weights only load failed", "Check the documentation")) and "weights_only" not in ln]
        reason = (reason[0].split(". ")[0].rstrip(".") if reason else "refused by torch.load")[:200]
        return (f"{what}{path}: holds objects beyond tensors and plain values ({reason}); loading it with "
                "weights_only=False would run code from the file: do not, unless you made the file yourself")
    if isinstance(error, RuntimeError) and ("size mismatch" in text or "state_dict" in text):
        return f"{what}{path}: its weights do not fit the model ({_first_problem(error)}): {remedy}"
    reason = _first_problem(error) if text.strip() else type(error).__name__
    return f"{what}{path} cannot be read (truncated or corrupt: {reason}): {remedy}"


def read_checkpoint(path: str | Path, what: str, remedy: str) -> dict:
    """``torch.load(path, weights_only=True)`` on the CPU, or a one-line SystemExit (:func:`load_error`)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip (OSError, RuntimeError), EOFError, refused pickle
        raise SystemExit(load_error(path, e, what, remedy)) from None


def load_weights(module: nn.Module, state: dict, path: str | Path, what: str, remedy: str) -> None:
    """``module.load_state_dict(state)``, or a one-line SystemExit naming ``path`` and the first mismatch."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise SystemExit(load_error(path, e, what, remedy)) from None


CHECKPOINT_REMEDY = "give a checkpoint written by S3 / S4.2 (best.pth or last.pth of a run)"


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True):
    """Rebuild the model of a checkpoint written by ``train.fit`` -> ``(model, cfg)`` in eval mode.

    The model is rebuilt from the checkpoint's saved ``config`` with ``PRETRAINED`` forced off
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
    model = build_model(cfg)
    which = "ema" if use_ema and ckpt.get("ema") else "model"
    load_weights(model, ckpt[which], path, "", CHECKPOINT_REMEDY)
    model.loaded_weights = ckpt.get("weights_from", which)  # a slim best.pth holds the EMA as "model"
    return model.to(device).eval(), cfg
