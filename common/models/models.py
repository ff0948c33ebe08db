"""The models: a timm backbone with a multi-sample-dropout head, the pipeline-1 image model, and
``build_model``, which reads a config once and builds any run's model from it (its saved constants:
``checkpoints.load_checkpoint`` rebuilds a run so).

Config keys read (all required, no defaults here; ``needs.NEEDS`` lists them per part: "model",
"image model", "bag model", "cell pooling", ...): ``PIPELINE`` (1 image model | 2 bag model),
``MODEL_NAME`` (any timm name, tags allowed: ``tf_efficientnet_b0.ns_jft_in1k``), ``PRETRAINED``,
``PRETRAINED_FILE`` (a local state_dict / timm checkpoint / .safetensors; implies pretrained
loading from that file instead of the hub), ``PRETRAINED_DIR`` (a folder of ``<model>.safetensors``
looked in before the hub), ``STEM_INIT`` (timm | original; see :mod:`common.models.weights`: local files
and the hub both go through timm's ``load_pretrained``, so the 3-channel stem is widened to 4
channels by ``adapt_input_conv`` either way), ``DROPOUT`` (p of each dropout mask),
``MSD_SAMPLES`` (number of masks averaged), pipeline 1: ``LOSS`` (see :func:`common.models.losses.build_loss`)
and ``VARIANT`` ("cellpool" builds ``cellpool.CellPoolModel``).
"""
from __future__ import annotations

import timm
import torch
from torch import nn

from common.constants import CHANNELS, NUM_CLASSES
from common.models import weights
from common.models.cellpool import CellPoolModel
from common.models.losses import build_loss
from common.models.mil import BagModel, MILHead
from common.models.weights import load_error
from common.needs import need


class Classifier(nn.Module):
    """timm backbone (4 input channels, global pooling) + a 19-way multi-sample-dropout head.

    In training the head averages ``n_dropout`` linear outputs, each on its own dropout mask of
    the pooled features; in eval dropout is the identity so this equals one linear layer.
    """

    def __init__(self, model_name: str, pretrained: bool = False, pretrained_file: str = "",
                 dropout: float = 0.5, n_dropout: int = 5, pretrained_dir: str = "", stem_init: str = "timm"):
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
            self.backbone = timm.create_model(model_name, pretrained=pretrained, in_chans=len(CHANNELS),
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
        self.head = nn.Linear(self.num_features, NUM_CLASSES)

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
    ``PRETRAINED_FILE``): a run rebuilt from its checkpoint (``checkpoints.load_checkpoint`` turns both off)
    needs neither, so configs saved before those constants existed still load."""
    need(cfg, "classifier")
    pretrained = bool(cfg["PRETRAINED"])
    pretrained_file = str(cfg["PRETRAINED_FILE"] or "")
    loading = {}
    if pretrained:
        need(cfg, "pretrained weights")
        loading["pretrained_dir"] = str(cfg["PRETRAINED_DIR"] or "")
    if pretrained or pretrained_file:
        need(cfg, "weight loading")
        loading["stem_init"] = str(cfg["STEM_INIT"])
    return Classifier(cfg["MODEL_NAME"], pretrained=pretrained, pretrained_file=pretrained_file,
                      dropout=float(cfg["DROPOUT"]), n_dropout=int(cfg["MSD_SAMPLES"]), **loading)


def mil_head(cfg: dict) -> MILHead:
    """The :class:`common.models.mil.MILHead` of a config (``MIL_POOL``, ``MIL_W_MAX``, ``MIL_W_MEAN``,
    ``MIL_TOPK``, ``MIL_LSE_R``; a missing one is a ``KeyError`` naming it)."""
    need(cfg, "MIL head")
    return MILHead(str(cfg["MIL_POOL"]).lower(), float(cfg["MIL_W_MAX"]), float(cfg["MIL_W_MEAN"]),
                   int(cfg["MIL_TOPK"]), float(cfg["MIL_LSE_R"]))


def build_model(cfg: dict) -> nn.Module:
    """The model of a config, read here once and handed on as typed arguments: PIPELINE 1 ->
    :class:`ImageModel` (``VARIANT="cellpool"``: ``cellpool.CellPoolModel``); PIPELINE 2 ->
    ``mil.BagModel``. A constant the model needs and the config lacks is a ``KeyError`` naming it
    (``needs.NEEDS``), raised before the network is built."""
    need(cfg, "model")
    pipeline = int(cfg["PIPELINE"])
    if pipeline == 1:
        need(cfg, "image model")
        if str(cfg["VARIANT"]) == "cellpool":  # cells pooled from one pass
            need(cfg, "cell pooling")
            head = mil_head(cfg)
            return CellPoolModel(build_classifier(cfg), head, int(cfg["CELLPOOL_STRIDE"]))
        return ImageModel(build_classifier(cfg), build_loss(str(cfg["LOSS"])))
    if pipeline == 2:
        need(cfg, "bag model")
        head = mil_head(cfg)
        # PSEUDO_W, the weight of the per-cell pseudo-label BCE, is read only when a bag carries
        # targets (training): optional, a run rebuilt for scoring from an older run's config has none
        pseudo_w = float(cfg["PSEUDO_W"]) if "PSEUDO_W" in cfg else None
        return BagModel(build_classifier(cfg), head, int(cfg["MIL_CHUNK"]), pseudo_w)
    raise ValueError(f"PIPELINE must be 1 or 2, got {pipeline!r}")


def new_model(cfg: dict) -> nn.Module:
    """:func:`build_model` with torch's RNG seeded from ``cfg["SEED"]`` first: the initial weights
    of a training run depend on SEED only (S3 and S4.2 build their models here)."""
    need(cfg, "new model")
    torch.manual_seed(int(cfg["SEED"]))
    return build_model(cfg)
