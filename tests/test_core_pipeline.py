"""metrics, references, train and score on small inputs with known answers or planted noise."""
import numpy as np
import pytest
import torch

from helpers import planted_noise

from cleannet_core.metrics import auroc, best_threshold, detection_report, per_class_report
from cleannet_core.references import KMeansConfig, build_references, kmeans
from cleannet_core.score import hard_weights, noise_flags, score_images, soft_weights
from cleannet_core.train import TrainConfig, _Sampler, train_cleannet


# ---- metrics ----

def test_best_threshold_by_hand():
    score = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    ok = np.array([False, False, True, False, True])
    # cut between 0.2 and 0.3 -> 4/5 correct; between 0.4 and 0.5 -> also 4/5; ties go to the smaller delta
    delta, acc = best_threshold(score, ok)
    assert acc == pytest.approx(0.8) and delta == pytest.approx(0.25)


def test_best_threshold_never_cuts_between_equal_scores():
    delta, acc = best_threshold(np.array([0.3, 0.3, 0.9]), np.array([False, True, True]))
    assert acc == pytest.approx(2 / 3) and (delta < 0.3 or delta == pytest.approx(0.6))


def test_best_threshold_extremes():
    delta, acc = best_threshold(np.array([0.2, 0.4]), np.array([True, True]))
    assert acc == 1.0 and delta < 0.2
    delta, acc = best_threshold(np.array([0.2, 0.4]), np.array([False, False]))
    assert acc == 1.0 and delta > 0.4


def test_auroc_by_hand_with_ties():
    score = np.array([0.1, 0.5, 0.5, 0.9])
    ok = np.array([False, False, True, True])
    # wrong/correct pairs: (0.1,0.5)=1 (0.1,0.9)=1 (0.5,0.5)=0.5 (0.5,0.9)=1 -> 3.5/4
    assert auroc(score, ok) == pytest.approx(0.875)
    assert np.isnan(auroc(score, np.ones(4, bool)))


def test_detection_report_by_hand():
    score = np.array([0.0, 0.05, 0.2, 0.3, 0.9, 0.02])
    ok = np.array([False, True, False, True, True, False])
    r = detection_report(score, ok, delta=0.1)
    # flagged: idx 0, 1, 5 (score < 0.1); wrong: 0, 2, 5 -> tp 2, fp 1, fn 1
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 / 3) and r["error"] == pytest.approx(2 / 6)
    assert r["noise_rate"] == pytest.approx(0.5) and r["n"] == 6
    per = per_class_report(score, ok, np.array([0, 0, 1, 1, 1, 0]), 0.1)
    assert per[0]["error"] == pytest.approx(1 / 3) and per[1]["recall"] == 0.0


# ---- references ----

def test_kmeans_recovers_separated_clusters():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = (centres.repeat_interleave(50, 0) + 0.1 * torch.randn(150, 2, generator=gen))
    found, inertia = kmeans(x, 3, attempts=3, generator=torch.Generator().manual_seed(1))
    found = found[found[:, 0].argsort() + 0]
    dist = torch.cdist(found, centres).min(dim=1).values
    assert (dist < 0.1).all() and inertia < 150 * 0.1


def test_build_references_small_and_empty_classes():
    rng = np.random.default_rng(0)
    feats = rng.random((50, 4)).astype(np.float32)
    labels = np.array([0] * 45 + [1] * 5)  # class 1 has 5 < K images, class 2 has none
    refs, counts = build_references(feats, labels, 3, config=KMeansConfig(k=8, attempts=2))
    assert refs.shape == (3, 8, 4) and counts.tolist() == [45, 5, 0]
    tiled = refs[1]
    for row in tiled:  # every reference of a small class is one of its images
        assert np.isclose(feats[45:], row).all(axis=1).any()
    assert sorted(np.unique(tiled, axis=0).tolist()) == sorted(feats[45:].tolist())
    assert (refs[2] == 0).all()
    # determinism for a seed
    again, _ = build_references(feats, labels, 3, config=KMeansConfig(k=8, attempts=2))
    np.testing.assert_array_equal(refs, again)


def test_build_references_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels"):
        build_references(np.zeros((3, 2)), np.array([0, 1, 5]), 2)


# ---- a planted-noise dataset ----

@pytest.fixture(scope="module")
def planted():
    """8 classes of non-negative features around class prototypes; 20% of labels flipped."""
    return planted_noise()


def test_sampler_is_class_uniform_and_wraps():
    labels = np.array([0] * 90 + [1] * 10)
    cfg = TrainConfig(batch_sup=4, batch_unsup=2000, seed=0)
    s = _Sampler(labels, np.array([3, 5, 7]), np.array([True, False, True]), cfg)
    idx, l, f = s.batch()
    assert f.tolist()[:4] == [1, 1, 1, 1] and f[4:].sum() == 0
    assert set(idx[:3].tolist()) == {3, 5, 7}  # one full pass before any repeat
    share_1 = (labels[idx[4:].numpy()] == 1).mean()
    assert 0.45 < share_1 < 0.55  # class-uniform, not image-uniform (which would give 0.1)


def test_sampler_draws_the_unverified_half_from_the_pool_only():
    """pool=False rows (the zero features of unreadable images) are never drawn; class-uniform over the rest."""
    labels = np.array([0] * 90 + [1] * 10 + [2] * 5)
    pool = np.ones(labels.size, bool)
    pool[[0, 1, 95, 96]] = False
    pool[100:] = False  # class 2 has no readable image: not drawn at all
    s = _Sampler(labels, np.array([3]), np.array([True]), TrainConfig(batch_sup=1, batch_unsup=3000, seed=0), pool)
    unsup = s.batch()[0][1:].numpy()
    assert set(unsup.tolist()) == set(np.flatnonzero(pool).tolist())  # every pool row, nothing else
    assert 0.45 < (labels[unsup] == 1).mean() < 0.55


def test_training_finds_planted_noise_beyond_its_verdicts(planted):
    """Verdicts on 300 images of classes 0-3 find the planted errors among the other images of those classes.

    (Transfer to classes without verdicts is measured by benchmarks/quality.py, not asserted here: on these
    random prototypes the paper's model does not transfer.)"""
    feats, clean, noisy = planted
    refs, _ = build_references(feats, noisy, 8, config=KMeansConfig(k=4, attempts=1))
    ok = noisy == clean
    verified = np.flatnonzero(noisy < 4)               # verdicts only on classes 0-3
    rng = np.random.default_rng(1)
    rng.shuffle(verified)
    tr, va = verified[:200], verified[200:300]
    cfg = TrainConfig(steps=400, val_interval=100, lr=0.05, seed=0)
    res = train_cleannet(feats, noisy, refs, verified_idx=tr, verified_ok=ok[tr], val_idx=va,
                         val_ok=ok[va], config=cfg)
    assert len(res.log) == 400 and {"val_acc", "delta"} <= set(res.log[99])
    assert res.best_step in (100, 200, 300, 400) and res.val_accuracy > 0.8
    sc = score_images(res.model, feats, noisy, refs)
    unseen = np.setdiff1d(np.flatnonzero(noisy < 4), verified[:300])
    assert auroc(sc.score[unseen], ok[unseen]) > 0.95
    # the relabel suggestion is mostly the true class for wrong labels whose true class is verified
    wrong = np.intersect1d(unseen, np.flatnonzero(~ok & (clean < 4)))
    assert (sc.suggested[wrong] == clean[wrong]).mean() > 0.6


def test_training_is_deterministic_on_cpu_and_works_without_verdicts(planted):
    feats, clean, noisy = planted
    refs, _ = build_references(feats, noisy, 8, config=KMeansConfig(k=4, attempts=1))
    cfg = TrainConfig(steps=30, seed=3)
    a = train_cleannet(feats, noisy, refs, verified_idx=np.arange(0, 900, 9), verified_ok=np.ones(100, bool),
                       config=cfg)
    b = train_cleannet(feats, noisy, refs, verified_idx=np.arange(0, 900, 9), verified_ok=np.ones(100, bool),
                       config=cfg)
    for (k, va), (_, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(va, vb), k
    none = train_cleannet(feats, noisy, refs, verified_idx=np.zeros(0, int), verified_ok=np.zeros(0, bool),
                          config=cfg)
    assert none.delta == 0.1 and none.val_accuracy is None and np.isfinite([r["loss"] for r in none.log]).all()


def test_weight_decay_only_on_weight_matrices():
    from cleannet_core.model import CleanNet, CleanNetConfig
    from cleannet_core.train import _optimizer
    opt = _optimizer(CleanNet(CleanNetConfig(img_dim=8, num_ref=2)), TrainConfig())
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 1e-4 and all(p.dim() == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0 and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) == 8 and len(no_decay["params"]) == 9  # 8 Linear layers; 8 biases + context


def test_score_weights_and_flags():
    s = np.array([-0.2, 0.05, 0.3])
    assert soft_weights(s).tolist() == pytest.approx([0.0, 0.05, 0.3])
    assert hard_weights(s, 0.1).tolist() == [0.0, 0.0, 1.0]
    assert noise_flags(s, 0.1).tolist() == [True, True, False]


def test_score_images_excludes_own_and_invalid_classes():
    from cleannet_core.model import CleanNet, CleanNetConfig
    torch.manual_seed(0)
    model = CleanNet(CleanNetConfig(img_dim=6, num_ref=2))
    feats = np.random.default_rng(0).random((10, 6)).astype(np.float32)
    refs = np.random.default_rng(1).random((3, 2, 6)).astype(np.float32)
    labels = np.array([0, 1, 2] * 3 + [0])
    sc = score_images(model, feats, labels, refs, valid_classes=np.array([True, True, False]), batch_size=4)
    assert (sc.suggested != labels).all() and (sc.suggested != 2).all()
    full = score_images(model, feats, labels, refs)
    np.testing.assert_allclose(sc.score, full.score, atol=1e-6)  # float32, batch-size dependent rounding
    assert model.training  # mode restored
