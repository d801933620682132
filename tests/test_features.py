"""Tests for cleannet_core.features: offline ImageNet weights, content keys, feature cache, extraction."""
from __future__ import annotations

import logging
import re
import shutil

import numpy as np
import pytest
import torch
from torchvision.models import resnet18

from helpers import DEMO, demo_rows, write_images

from cleannet_core.classifier import Backbone, predict
from cleannet_core.features import (FeatureCache, backbone_id, content_key, extract_features,
                                    load_imagenet_weights)

KW = dict(image_size=32, batch_size=8, num_workers=0, device="cpu", progress=False)


@pytest.fixture
def model() -> Backbone:
    torch.manual_seed(0)
    return Backbone("resnet18", 2, small_input=True).eval()


def test_imagenet_weights_explicit_file(tmp_path):
    sd = resnet18(weights=None).state_dict()
    f = tmp_path / "r18.pth"
    torch.save(sd, f)
    state, msg = load_imagenet_weights("resnet18", weights_path=f)
    assert state.keys() == sd.keys() and torch.equal(state["conv1.weight"], sd["conv1.weight"])
    assert str(f) in msg
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_imagenet_weights("resnet18", weights_path=tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="cannot load ImageNet weights"):
        load_imagenet_weights("resnet18", weights_path=tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="not a resnet50 state_dict"):
        load_imagenet_weights("resnet50", weights_path=f)


def test_imagenet_weights_torch_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state, msg = load_imagenet_weights("resnet18")
    assert state is None and "noisy labels" in msg and str(tmp_path) in msg
    ckpt_dir = tmp_path / "hub" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    sd = resnet18(weights=None).state_dict()
    torch.save(sd, ckpt_dir / "resnet18-f37072fd.pth")
    state, msg = load_imagenet_weights("resnet18")
    assert state is not None and torch.equal(state["fc.weight"], sd["fc.weight"]) and "torch cache" in msg
    assert load_imagenet_weights("resnet50")[0] is None  # a resnet18 file does not satisfy resnet50


def test_content_key(tmp_path):
    a, b, c = tmp_path / "a.bin", tmp_path / "b.bin", tmp_path / "c.bin"
    a.write_bytes(b"hello")
    b.write_bytes(b"hello")
    c.write_bytes(b"hellO")
    assert content_key(a) == content_key(b) != content_key(c)
    assert len(content_key(a)) == 32


def test_backbone_id_tracks_weights(model):
    bid = backbone_id(model)
    assert bid.startswith("resnet18-") and bid == backbone_id(model)
    with torch.no_grad():
        model.layer2[0].bn1.running_mean += 1.0
    assert backbone_id(model) != bid


def test_feature_cache_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.random((5, 8), dtype=np.float32) * 10
    keys = [f"k{i}" for i in range(5)]
    cache = FeatureCache(tmp_path, "bb", 8)
    assert cache.add(keys[:3], feats[:3]) == 3
    assert cache.add(keys[2:], feats[2:]) == 2  # k2 is already cached
    assert cache.add(keys, feats) == 0
    for c in (cache, FeatureCache(tmp_path, "bb", 8)):  # in-memory index and a fresh reload from disk
        hit, out = c.lookup(["k4", "zz", "k0", "k2"])
        assert hit.tolist() == [True, False, True, True] and out.dtype == np.float32
        np.testing.assert_array_equal(out[[0, 2, 3]], feats[[4, 0, 2]].astype(np.float16).astype(np.float32))
        assert not out[1].any() and len(c) == 5
    names = sorted(p.name for p in (tmp_path / "bb").iterdir())
    assert [re.sub("-[0-9a-f]{8}-", "-W-", n) for n in names] == [
        "shard-W-00000.keys.npy", "shard-W-00000.npy", "shard-W-00001.keys.npy", "shard-W-00001.npy"]
    # a crash between the two writes leaves a features file without keys: invisible, and overwritten later
    np.save(tmp_path / "bb" / "shard-00002.npy", np.zeros((1, 8), np.float16))
    fresh = FeatureCache(tmp_path, "bb", 8)
    assert len(fresh) == 5 and fresh.add(["k9"], feats[:1]) == 1
    assert FeatureCache(tmp_path, "bb", 8).lookup(["k9"])[0].all()
    with pytest.raises(ValueError, match="shape"):
        fresh.add(["x"], np.zeros((1, 4), np.float32))


def test_extract_features_cache_and_errors(model, tmp_path, caplog):
    good = write_images(tmp_path / "img", np.arange(10) % 3)
    dup = tmp_path / "img" / "copy.png"
    shutil.copy(good[0], dup)
    corrupt, empty, missing = tmp_path / "bad.jpg", tmp_path / "empty.jpg", tmp_path / "missing.jpg"
    corrupt.write_bytes(np.random.default_rng(1).bytes(500))
    empty.write_bytes(b"")
    paths = [*good[:5], corrupt, dup, empty, *good[5:], missing]
    cache_dir = tmp_path / "cache"
    bid = backbone_id(model)
    model.train()
    with caplog.at_level(logging.WARNING, logger="cleannet_core.features"):
        r1 = extract_features(model, paths, cache_dir=cache_dir, backbone_id=bid, **KW)
    assert model.training  # mode restored
    bad = {str(corrupt), str(empty), str(missing)}
    assert r1.features.shape == (14, 512) and r1.features.dtype == np.float32
    assert r1.readable.tolist() == [str(p) not in bad for p in paths]
    reasons = dict(r1.errors)
    assert reasons.keys() == bad and reasons[str(missing)].startswith("missing") and "empty" in reasons[str(empty)]
    assert "cannot decode" in reasons[str(corrupt)]
    assert any("3 of 14 images" in r.getMessage() for r in caplog.records)
    assert (r1.n_cached, r1.n_extracted) == (0, 11)
    assert (r1.features >= 0).all() and not r1.features[~r1.readable].any()
    np.testing.assert_array_equal(r1.features[6], r1.features[0])  # duplicate content, same vector
    ref, _, _ = predict(model, good, image_size=32, num_workers=0, device="cpu")
    np.testing.assert_allclose(r1.features[r1.readable][[0, 1, 2, 3, 4, 6, 7, 8, 9, 10]], ref, rtol=1e-2, atol=1e-3)

    r2 = extract_features(model, paths, cache_dir=cache_dir, backbone_id=bid, **KW)
    assert (r2.n_cached, r2.n_extracted, len(r2.errors)) == (11, 0, 3)
    np.testing.assert_array_equal(r2.features, r1.features)

    new = write_images(tmp_path / "img", [0], start=50)
    r3 = extract_features(model, [*paths, *new], cache_dir=cache_dir, backbone_id=bid, **KW)
    assert (r3.n_cached, r3.n_extracted) == (11, 1) and r3.readable[-1]
    assert (cache_dir / f"{bid}-32px").is_dir()


def test_extract_features_demo_images(model, tmp_path):
    paths = [DEMO / r["path"] for r in demo_rows(64)]
    calls = []
    r = extract_features(model, paths, cache_dir=tmp_path, backbone_id=backbone_id(model),
                         on_batch=lambda done, total: calls.append((done, total)), **KW)
    assert r.readable.all() and r.errors == [] and r.features.shape == (64, 512) and r.n_extracted == 64
    assert calls == [(8 * (i + 1), 64) for i in range(8)]  # batch_size 8: progress after every batch
    assert (r.features >= 0).all() and r.features.std(0).max() > 0
    r2 = extract_features(model, paths[:32], cache_dir=tmp_path, backbone_id=backbone_id(model), **KW)
    assert r2.n_cached == 32 and r2.n_extracted == 0
    np.testing.assert_array_equal(r2.features, r.features[:32])


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_lite0"])
def test_gpu_jpeg_path_matches_the_pil_transform(tmp_path, arch):
    """The decode_jpeg + tensor resize/crop/normalise path (run here on the CPU) gives the DataLoader's pixels up
    to resampling differences; a broken JPEG in the batch fails alone."""
    from cleannet_core.classifier import make_transform
    from PIL import Image

    from cleannet_core.loading import _gpu_pixels
    rng = np.random.default_rng(0)
    blobs, ref = [], []
    for i in range(3):
        a = np.kron(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))  # smooth
        p = tmp_path / f"{i}.jpg"
        Image.fromarray(a).save(p, quality=95)
        blobs.append(torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8))
        with Image.open(p) as im:
            ref.append(make_transform(32, train=False, arch=arch)(im.convert("RGB")))
    blobs.insert(1, torch.frombuffer(bytearray(b"\xff\xd8\xff not really a jpeg"), dtype=torch.uint8))
    out, errs = _gpu_pixels(blobs, 32, arch, torch.device("cpu"))
    assert errs[1].startswith("cannot decode image") and out[1] is None and errs[0] == errs[2] == errs[3] == ""
    for got, want in zip([out[0], out[2], out[3]], ref):
        assert got.shape == want.shape == (3, 32, 32)
        assert (got - want).abs().mean() < 0.05
