"""Losses against their definitions, the classifier head, build_model, pretrained-file loading."""
from __future__ import annotations

import pytest
import timm
import torch
from torchvision.ops import sigmoid_focal_loss

from common.constants import NUM_CLASSES
from common.models import checkpoints, losses, models

torch.set_num_threads(1)


def _batch(seed=0, b=12):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, NUM_CLASSES, generator=g) * 2
    target = (torch.rand(b, NUM_CLASSES, generator=g) < 0.3).float()
    return logits, target


def test_focal_equals_torchvision():
    z, y = _batch()
    want = sigmoid_focal_loss(z, y, alpha=-1, gamma=2.5, reduction="mean")
    torch.testing.assert_close(losses.focal_loss(z, y), want)
    torch.testing.assert_close(losses.build_loss("focal")(z, y), want)


def test_bce():
    z, y = _batch(1)
    torch.testing.assert_close(losses.build_loss("bce")(z, y),
                               torch.nn.functional.binary_cross_entropy_with_logits(z, y))


def test_lovasz_zero_when_separated_positive_otherwise():
    _, y = _batch(2)
    z = (y * 2 - 1) * 5.0  # margin >= 1 on the right side everywhere
    assert float(losses.lovasz_loss(z, y)) == 0.0
    assert float(losses.lovasz_loss(-z, y)) > 1.0
    z2, _ = _batch(3)
    v = losses.lovasz_loss(z2.requires_grad_(), y)
    v.backward()
    assert v > 0 and z2.grad is not None and torch.isfinite(z2.grad).all()


def test_lovasz_flat_matches_hand_computation():
    # one positive with logit 0.5, one negative with logit 0.2: errors 0.5 (pos) and 1.2 (neg)
    # sorted: neg (1.2), pos (0.5); jaccard after neg = 1 - 1/2 = 0.5, after pos = 1 - 0/2 = 1
    # grads 0.5, 0.5 -> loss = 0.5 * 1.2 + 0.5 * 0.5
    v = losses.lovasz_hinge_flat(torch.tensor([0.5, 0.2]), torch.tensor([1.0, 0.0]))
    assert float(v) == pytest.approx(0.85)


def test_hard_log_loss_definition():
    z = torch.tensor([[2.0], [-1.0], [3.0], [0.5], [-4.0], [1.0], [-2.0], [0.0], [-3.0], [0.3]])
    y = torch.tensor([[1.0], [0], [0], [0], [0], [0], [0], [0], [0], [0]])
    # 1 positive, 9 negatives: k = min(max(2, 4), 6) = 4 hardest negatives: 3.0, 1.0, 0.5, 0.3
    sel = torch.tensor([2.0, 3.0, 1.0, 0.5, 0.3])
    want = torch.nn.functional.binary_cross_entropy_with_logits(sel, torch.tensor([1.0, 0, 0, 0, 0]))
    torch.testing.assert_close(losses.hard_log_loss(z, y), want)


def test_lovasz_preset_is_weighted_sum_and_spec():
    z, y = _batch(4)
    want = 0.5 * losses.focal_loss(z, y) + 0.5 * losses.lovasz_loss(z, y) + 0.5 * losses.hard_log_loss(z, y)
    torch.testing.assert_close(losses.build_loss("lovasz")(z, y), want)
    spec = losses.build_loss("focal:1, bce:0.25")
    assert spec.weights == {"focal": 1.0, "bce": 0.25}
    torch.testing.assert_close(spec(z, y), losses.focal_loss(z, y) + 0.25 * losses.bce_loss(z, y))
    for bad in ("nope", "focal:x", ""):
        with pytest.raises(ValueError):
            losses.build_loss(bad)


def test_classifier_msd_and_image_model():
    torch.manual_seed(0)
    clf = models.Classifier("resnet10t", dropout=0.5, n_dropout=5)
    x = torch.randn(2, 4, 64, 64)
    clf.eval()
    out = clf.logits(x)
    assert out.shape == (2, NUM_CLASSES)
    torch.testing.assert_close(out, clf.head(clf.features(x)))
    clf.train()
    f = torch.randn(3, clf.num_features)
    torch.manual_seed(1)
    a = clf.head_logits(f)
    torch.manual_seed(1)
    masks = [torch.nn.functional.dropout(f, 0.5, True) for _ in range(5)]
    torch.testing.assert_close(a, torch.stack([clf.head(m) for m in masks]).mean(0))

    cfg = {"PIPELINE": 1, "MODEL_NAME": "resnet10t", "PRETRAINED": False, "PRETRAINED_FILE": "",
           "LOSS": "bce", "VARIANT": "masked", "DROPOUT": 0.5, "MSD_SAMPLES": 5}
    m = models.build_model(cfg)
    assert isinstance(m, models.ImageModel)
    o = m({"image": x, "label": torch.zeros(2, NUM_CLASSES)})
    assert o["logits"].shape == (2, NUM_CLASSES) and o["loss"].ndim == 0
    assert "loss" not in m({"image": x})
    with pytest.raises(ValueError, match="PIPELINE"):
        models.build_model({**cfg, "PIPELINE": 3})


def test_pretrained_file_adapts_3_to_4_channels(tmp_path):
    torch.manual_seed(0)
    src = timm.create_model("resnet10t", pretrained=False, in_chans=3)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    clf = models.Classifier("resnet10t", pretrained_file=str(path))
    w3 = src.state_dict()["conv1.0.weight"]
    w4 = clf.backbone.state_dict()["conv1.0.weight"]
    assert w4.shape[1] == 4 and w3.shape[1] == 3
    # timm adapt_input_conv: repeat the RGB filters and rescale by 3 / in_chans
    torch.testing.assert_close(w4[:, :3], w3 * 3 / 4)
    torch.testing.assert_close(clf.backbone.state_dict()["layer1.0.conv1.weight"],
                               src.state_dict()["layer1.0.conv1.weight"])
    with pytest.raises(FileNotFoundError, match="nothere"):
        models.Classifier("resnet10t", pretrained_file=str(tmp_path / "nothere.pth"))


def test_load_checkpoint_round_trip_and_errors(tmp_path):
    cfg = {"PIPELINE": 1, "MODEL_NAME": "resnet10t", "PRETRAINED": True, "PRETRAINED_FILE": "/x/y.pth",
           "LOSS": "focal", "VARIANT": "masked", "DROPOUT": 0.3, "MSD_SAMPLES": 2}
    torch.manual_seed(0)
    m = models.build_model({**cfg, "PRETRAINED": False, "PRETRAINED_FILE": ""})
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in m.state_dict().items()}
    torch.save({"model": m.state_dict(), "config": cfg, "ema": None}, tmp_path / "a.pth")
    torch.save({"model": m.state_dict(), "config": cfg, "ema": ema}, tmp_path / "b.pth")
    x = torch.randn(1, 4, 64, 64)
    m.eval()
    a, acfg = checkpoints.load_checkpoint(tmp_path / "a.pth")
    assert a.loaded_weights == "model" and acfg["PRETRAINED"] is False and acfg.MSD_SAMPLES == 2
    torch.testing.assert_close(a({"image": x})["logits"], m({"image": x})["logits"])
    b, _ = checkpoints.load_checkpoint(tmp_path / "b.pth")
    assert b.loaded_weights == "ema"
    torch.testing.assert_close(b.classifier.head.bias, m.classifier.head.bias + 1)
    with pytest.raises(FileNotFoundError, match="none.pth"):
        checkpoints.load_checkpoint(tmp_path / "none.pth")
    torch.save({"weights": 1}, tmp_path / "c.pth")
    with pytest.raises(ValueError, match="c.pth"):
        checkpoints.load_checkpoint(tmp_path / "c.pth")


@pytest.mark.parametrize("name", ["lcnet_050", "mobilenetv3_small_050"])
def test_classifier_with_a_conv_head_after_pooling(name):
    # these timm models pool, then apply a 1x1 conv head: the pooled width is head_hidden_size,
    # not num_features, and the 19-way head must take that width
    clf = models.Classifier(name, dropout=0.5, n_dropout=5).eval()
    assert clf.backbone.head_hidden_size != clf.backbone.num_features
    assert clf.logits(torch.randn(2, 4, 64, 64)).shape == (2, NUM_CLASSES)
