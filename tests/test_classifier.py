"""Tests for cleannet_core.classifier: backbone, weighted loss, training, inference, checkpoints."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import DEMO, demo_rows, write_images

from cleannet_core.classifier import (Backbone, ClassifierConfig, evaluate, load_backbone, predict, resolve_device,
                                      save_backbone, train_classifier, weighted_cross_entropy)

FAST = dict(epochs=3, batch_size=32, lr=0.02, num_workers=0, image_size=32)


@pytest.fixture(scope="module")
def colors(tmp_path_factory) -> tuple[list[Path], np.ndarray]:
    """200 images, label 0 = red-ish, 1 = green-ish (tests/helpers.write_images)."""
    labels = np.arange(200) % 2
    return write_images(tmp_path_factory.mktemp("colors"), labels), labels


@pytest.mark.parametrize("arch,small,size,dim", [("resnet18", True, 32, 512), ("resnet18", False, 64, 512),
                                                 ("resnet50", True, 32, 2048)])
def test_backbone_shapes(arch, small, size, dim):
    torch.manual_seed(0)
    m = Backbone(arch, 7, small_input=small).eval()
    assert (m.arch, m.num_features, m.num_classes, m.small_input) == (arch, dim, 7, small)
    assert m.conv1.kernel_size == ((3, 3) if small else (7, 7))
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        f = m.forward_features(x)
        assert f.shape == (2, dim) and (f >= 0).all()
        assert m.forward_head(f).shape == (2, 7)
        torch.testing.assert_close(m(x), m.forward_head(f))


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    m = Backbone("resnet18", 3, small_input=True)
    m(torch.randn(4, 3, 32, 32)).logsumexp(1).sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_weighted_cross_entropy_hand_computed():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    target = torch.tensor([1, 0])
    w = torch.tensor([0.5, 2.0])
    ce = [math.log(sum(math.exp(v) for v in row)) - row[t] for row, t in zip(logits.tolist(), target.tolist())]
    expected = (0.5 * ce[0] + 2.0 * ce[1]) / 2  # divided by the batch size, not by sum(w) = 2.5
    assert abs(weighted_cross_entropy(logits, target, w).item() - expected) < 1e-6
    # a zero-weight row still counts in N
    assert abs(weighted_cross_entropy(logits, target, torch.tensor([1.0, 0.0])).item() - ce[0] / 2) < 1e-6
    assert weighted_cross_entropy(logits, target, torch.zeros(2)).item() == 0.0


@pytest.mark.slow
def test_train_reaches_high_accuracy_and_is_deterministic(colors):
    paths, labels = colors
    cfg = ClassifierConfig(**FAST, seed=3)
    m1 = train_classifier(paths, labels, 2, config=cfg, device="cpu", progress=False)
    m2 = train_classifier(paths, labels, 2, config=cfg, device="cpu", progress=False)
    assert not m1.training
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert evaluate(m1, paths, labels, image_size=32, num_workers=0, device="cpu") > 0.9


def test_zero_weights_and_unreadable_images(colors, tmp_path, caplog):
    paths, labels = colors
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    paths = [*paths[:40], bad]
    labels = np.append(labels[:40], 0)
    w = np.ones(len(paths), np.float32)
    w[::3] = 0.0
    cfg = ClassifierConfig(**{**FAST, "epochs": 1}, seed=1)
    with caplog.at_level(logging.WARNING, logger="cleannet_core.classifier"):
        m = train_classifier(paths, labels, 2, sample_weights=w, config=cfg, device="cpu", progress=False)
    assert isinstance(m, Backbone)
    assert any("1 of 41 images could not be read" in r.getMessage() for r in caplog.records)


def test_invalid_training_inputs(colors):
    paths, labels = colors
    cfg = ClassifierConfig(**FAST)
    with pytest.raises(ValueError, match="labels must lie"):
        train_classifier(paths, labels + 5, 2, config=cfg, device="cpu", progress=False)
    with pytest.raises(ValueError, match="sample_weights"):
        train_classifier(paths, labels, 2, sample_weights=-np.ones(len(paths)), config=cfg, device="cpu")
    with pytest.raises(ValueError, match="as many labels"):
        train_classifier(paths[:3], labels, 2, config=cfg, device="cpu")


def test_load_pretrained_skips_head_and_stem_only():
    torch.manual_seed(0)
    imagenet = Backbone("resnet18", 1000).state_dict()
    m = Backbone("resnet18", 2, small_input=True)
    assert sorted(m.load_pretrained(imagenet)) == ["conv1.weight", "fc.bias", "fc.weight"]
    assert torch.equal(m.layer3[0].conv1.weight, imagenet["layer3.0.conv1.weight"])
    with pytest.raises(RuntimeError, match="unexpected"):
        m.load_pretrained({**imagenet, "extra.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="missing"):
        m.load_pretrained({k: v for k, v in imagenet.items() if k != "layer1.0.bn1.weight"})
    with pytest.raises(RuntimeError):  # a mis-shaped conv1 on a large-input model is not skipped
        Backbone("resnet18", 2).load_pretrained(m.state_dict())


def test_predict_and_save_load_roundtrip(colors, tmp_path):
    paths, _ = colors
    torch.manual_seed(0)
    m = Backbone("resnet18", 2, small_input=True).train()
    paths = [*paths[:10], tmp_path / "missing.png"]
    f, p, ok = predict(m, paths, image_size=32, batch_size=4, num_workers=0, device="cpu")
    assert m.training  # mode restored
    assert f.shape == (11, 512) and p.shape == (11, 2) and f.dtype == p.dtype == np.float32
    assert ok.tolist() == [True] * 10 + [False] and not f[10].any() and not p[10].any()
    np.testing.assert_allclose(p[:10].sum(1), 1.0, rtol=1e-5)

    ckpt = tmp_path / "sub" / "backbone.pt"
    save_backbone(m, ckpt, class_names=["red", "blue"], meta={"image_size": 32, "epochs": 0})
    assert [x.name for x in ckpt.parent.iterdir()] == ["backbone.pt"]  # no temp file left behind
    m2, info = load_backbone(ckpt)
    assert not m2.training and (m2.arch, m2.num_classes, m2.small_input) == ("resnet18", 2, True)
    assert info["class_names"] == ["red", "blue"] and info["meta"]["image_size"] == 32 and info["format"] == 1
    f2, p2, _ = predict(m2, paths, image_size=32, batch_size=4, num_workers=0, device="cpu")
    np.testing.assert_array_equal(f, f2)
    np.testing.assert_array_equal(p, p2)


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")  # an explicit device wins over 'auto'
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(RuntimeError):
        resolve_device("gpu")


def test_evaluate_is_the_share_of_argmax_predictions_that_match(colors):
    paths, _ = colors
    torch.manual_seed(0)
    m = Backbone("resnet18", 3, small_input=True).eval()
    _, probs, _ = predict(m, paths[:20], image_size=32, batch_size=8, num_workers=0, device="cpu")
    pred = probs.argmax(1)
    labels = pred.copy()
    labels[:5] = (labels[:5] + 1) % 3  # 5 of 20 disagree with the model
    assert evaluate(m, paths[:20], pred, image_size=32, num_workers=0, device="cpu") == 1.0
    assert evaluate(m, paths[:20], labels, image_size=32, num_workers=0, device="cpu") == 0.75


@pytest.mark.slow
def test_demo_images_train_above_chance():
    """Airplane vs frog, 160 demo images: 3 epochs fit them well above chance (0.5; its std here is 0.04)."""
    rows = [r for r in demo_rows() if r["clean_label"] in ("airplane", "frog")][:160]
    paths = [DEMO / r["path"] for r in rows]
    labels = np.array([int(r["clean_label"] == "frog") for r in rows])
    cfg = ClassifierConfig(**FAST, seed=0)
    m = train_classifier(paths, labels, 2, config=cfg, device="cpu", progress=False)
    assert evaluate(m, paths, labels, image_size=32, num_workers=0, device="cpu") > 0.65  # 0.72 seen
