"""Adapting Lite0's last blocks on cached maps at toy size (a randomly initialised Lite0, 32 px): the prefix/suffix
split computes exactly the whole network's features, and the cross-fitted tails keep every image's
probabilities out-of-fold, deterministic under a seed."""
import numpy as np
import pytest
import torch

from cleannet_core.adapt import CrossFit, TailConfig, cross_fit_maps, prefix_maps
from cleannet_core.efficientnet import EfficientNetLite, lite_features, lite_prefix, lite_suffix

CUT = 11  # stage 6's first block: its input is (112, 2, 2) at 32 px
TINY = TailConfig(cut=CUT, epochs=2, batch_size=16, lr=1e-3)  # 0.01 diverges on random weights


@pytest.fixture(scope="module")
def net() -> EfficientNetLite:
    """Random weights at a scale that keeps the activations near 1 (torch's default conv init fades them to
    ~1e-6 by block 11, below float16's resolution)."""
    torch.manual_seed(0)
    m = EfficientNetLite(num_classes=2).eval()
    for conv in m.modules():
        if isinstance(conv, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    return m


@pytest.fixture(scope="module")
def toy(net):
    """40 images, 20 per class: class 1 is brighter. -> maps (40, 2, 112, 2, 2) float16, labels (40,), folds (40,)."""
    g = torch.Generator().manual_seed(1)
    labels = np.arange(40) % 2
    x = torch.rand(40, 3, 32, 32, generator=g) - 1 + torch.from_numpy(labels).float().view(-1, 1, 1, 1)
    return prefix_maps(net, x.split(16), cut=CUT), labels, (np.arange(40) // 2) % 2


def test_features_are_the_suffix_of_the_prefix(net):
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        whole = lite_features(net, x)
        for cut, shape in ((0, (2, 32, 32, 32)), (8, (2, 80, 4, 4)), (16, (2, 320, 2, 2))):
            h = lite_prefix(net, x, cut)
            assert h.shape == shape
            assert torch.equal(lite_suffix(net, h, cut), whole)
    with pytest.raises(ValueError, match=r"cut must be in \[0, 16\]"):
        lite_prefix(net, x, 17)


def test_prefix_maps_hold_the_image_and_its_mirror(net):
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    maps = prefix_maps(net, x.split(2), cut=CUT)
    assert maps.shape == (5, 2, 112, 2, 2) and maps.dtype == np.float16
    with torch.no_grad():
        assert np.array_equal(maps[:, 0], lite_prefix(net, x, CUT).half().numpy())
        assert np.array_equal(maps[:, 1], lite_prefix(net, x.flip(3), CUT).half().numpy())


def test_each_image_is_scored_by_the_tail_that_did_not_learn_its_label(net, toy):
    """Relabelling fold 0's images changes only what fold 1 is predicted by (the tail that trained on fold 0)."""
    maps, labels, folds = toy
    fit = cross_fit_maps(maps, labels, folds, 2, backbone=net, config=TINY, device="cpu")
    assert isinstance(fit, CrossFit) and len(fit.states) == 2 and fit.readable.all()
    assert fit.probs.shape == (40, 2) and np.allclose(fit.probs.sum(1), 1, atol=1e-5)
    assert fit.probs[np.arange(40), labels].mean() > 0.5  # the brighter class is told apart out-of-fold
    flipped = np.where(folds == 0, 1 - labels, labels)
    other = cross_fit_maps(maps, flipped, folds, 2, backbone=net, config=TINY, device="cpu")
    assert np.array_equal(other.probs[folds == 0], fit.probs[folds == 0])
    assert not np.allclose(other.probs[folds == 1], fit.probs[folds == 1])


def test_the_same_maps_give_each_fold_the_other_folds_label(net, toy):
    """Every image has the same maps; fold 0 is labelled 1 and fold 1 is labelled 0: a tail that saw an image's
    label would lean to it, the out-of-fold one gives the image's own label the lower probability."""
    maps, _, folds = toy
    same = np.repeat(maps[:1], 40, axis=0)
    fit = cross_fit_maps(same, 1 - folds, folds, 2, backbone=net, config=TINY, device="cpu")
    assert (fit.probs[np.arange(40), 1 - folds] < 0.5).all()


def test_a_seed_repeats_the_fit_and_the_backbone_is_untouched(net, toy):
    maps, labels, folds = toy
    before = {k: v.clone() for k, v in net.state_dict().items()}
    a, b = (cross_fit_maps(maps, labels, folds, 2, backbone=net, config=TINY, device="cpu", seed=3)
            for _ in range(2))
    assert np.array_equal(a.probs, b.probs)
    assert all(torch.equal(a.states[k][n], b.states[k][n]) for k in range(2) for n in a.states[k])
    c = cross_fit_maps(maps, labels, folds, 2, backbone=net, config=TINY, device="cpu", seed=4)
    assert not np.array_equal(a.probs, c.probs)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_unreadable_images_are_neither_learnt_nor_scored(net, toy):
    maps, labels, folds = toy
    readable = np.arange(40) % 5 != 0
    fit = cross_fit_maps(maps, labels, folds, 2, backbone=net, readable=readable, config=TINY, device="cpu")
    assert np.array_equal(fit.readable, readable) and not fit.probs[~readable].any()
    relabelled = np.where(readable, labels, 1 - labels)
    again = cross_fit_maps(maps, relabelled, folds, 2, backbone=net, readable=readable, config=TINY, device="cpu")
    assert np.array_equal(again.probs, fit.probs)


def test_bad_folds_are_refused_with_a_count(net, toy):
    maps, labels, folds = toy
    with pytest.raises(ValueError, match="3 of 40 images have a negative fold"):
        cross_fit_maps(maps, labels, np.where(np.arange(40) < 3, -1, folds), 2, backbone=net, config=TINY)
    with pytest.raises(ValueError, match="one row per image: 40, 39"):
        cross_fit_maps(maps, labels[:39], folds, 2, backbone=net, config=TINY)


def test_clipping_and_warm_up_shorten_the_first_steps(net, toy):
    """The same seed and data (no weight decay, which acts beside the gradient): a gradient clipped to a tiny norm,
    or an LR ramped up over every step, moves the tails' blocks less from their copies of the backbone than plain
    training does."""
    from dataclasses import replace
    maps, labels, folds = toy
    start = {n: t for n, t in net.state_dict().items() if n.startswith("_blocks.")}

    def moved(config: TailConfig) -> float:
        fit = cross_fit_maps(maps, labels, folds, 2, backbone=net, config=config, device="cpu", seed=0)
        return sum(float((fit.states[0][f"_blocks.{i}.{rest}"] - start[f"_blocks.{CUT + i}.{rest}"]).abs().sum())
                   for name in start if int(name.split(".")[1]) >= CUT
                   for i, rest in [(int(name.split(".")[1]) - CUT, name.split(".", 2)[2])])

    base = replace(TINY, weight_decay=0.0)
    plain = moved(base)
    assert moved(replace(base, clip=1e-6)) < 0.01 * plain
    assert moved(replace(base, warmup=1.0)) < plain
