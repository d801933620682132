"""Out-of-fold probe: a fold's model never sees that fold's labels; it finds planted noise; state round-trips."""
import numpy as np
import pytest
import torch

from helpers import planted_noise

from cleannet_core.metrics import auroc
from cleannet_core.probe import Probe, ProbeConfig, fit_probe, fit_rows, self_confidence


def test_a_folds_predictions_do_not_depend_on_its_own_labels():
    feats, _, noisy = planted_noise(c=4, per=60)
    folds = np.arange(len(noisy)) % 3
    cfg = ProbeConfig.early_stopped(folds=3, epochs=5)
    a = fit_probe(feats, noisy, folds, 4, cfg).predict(feats, folds)
    changed = noisy.copy()
    changed[folds == 0] = (changed[folds == 0] + 1) % 4         # rewrite every label of fold 0
    b = fit_probe(feats, changed, folds, 4, cfg).predict(feats, folds)
    np.testing.assert_array_equal(a[folds == 0], b[folds == 0])  # model 0 never saw fold 0
    assert not np.allclose(a[folds == 1], b[folds == 1])        # the others did see it


def test_out_of_fold_self_confidence_finds_planted_noise():
    feats, clean, noisy = planted_noise(c=6)
    folds = np.random.default_rng(0).integers(0, 5, len(noisy))
    probe = fit_probe(feats, noisy, folds, 6, ProbeConfig.early_stopped(epochs=30))
    probs = probe.predict(feats, folds)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    own, best, best_p = self_confidence(probs, noisy)
    ok = noisy == clean
    assert auroc(own, ok) > 0.95
    assert (best[~ok] == clean[~ok]).mean() > 0.8                # the suggestion is mostly the true class
    assert (best != noisy).all() and (best_p <= 1).all()
    again = Probe.from_state(probe.state())
    np.testing.assert_allclose(again.predict(feats, folds), probs, atol=1e-6)


def test_probe_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="disagree"):
        fit_probe(np.zeros((5, 3), np.float32), np.zeros(4, int), np.zeros(4, int), 2)


def test_progress_rises_to_one_over_the_folds():
    feats, _, noisy = planted_noise(c=4, per=300)
    seen: list[float] = []
    cfg = ProbeConfig(folds=5, steps=120)                       # 120 steps per fold: one mid-fold call each
    fit_probe(feats, noisy, np.arange(len(noisy)), 4, cfg, progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1.0 and all(0 < p <= 1 for p in seen)
    assert [p for p in seen if p in (0.2, 0.4, 0.6, 0.8, 1.0)] == [0.2, 0.4, 0.6, 0.8, 1.0]  # each fold's end
    assert len(seen) == 10 and seen[0] == pytest.approx(100 / 120 / 5)


def test_past_max_rows_the_fit_sees_only_a_seeded_sample_and_scores_every_image():
    feats, _, noisy = planted_noise(c=4, per=100)               # 400 images
    folds = np.arange(len(noisy)) % 5
    capped = ProbeConfig.early_stopped(epochs=4, max_rows=150)
    rows = fit_rows(len(noisy), capped)
    assert len(rows) == 150 and (np.diff(rows) > 0).all()
    np.testing.assert_array_equal(rows, fit_rows(len(noisy), capped))          # seeded
    np.testing.assert_array_equal(fit_rows(150, capped), np.arange(150))       # at the cap: every image
    probe = fit_probe(feats, noisy, folds, 4, capped)
    alone = fit_probe(feats[rows], noisy[rows], folds[rows], 4, ProbeConfig.early_stopped(epochs=4))
    for key in ("mean", "std", "w", "b"):                                       # exactly the sample's fit
        np.testing.assert_array_equal(probe.state()[key].numpy(), alone.state()[key].numpy(), err_msg=key)
    assert probe.predict(feats, folds).shape == (400, 4)


def test_max_steps_bounds_each_folds_steps():
    feats, _, noisy = planted_noise(c=4, per=300)
    seen: list[float] = []
    fit_probe(feats, noisy, np.arange(len(noisy)), 4, ProbeConfig(steps=300, max_steps=100), progress=seen.append)
    assert len(seen) == 5                                        # 100 steps per fold: no mid-fold call


def test_predict_equals_the_standardised_formula():
    feats, _, noisy = planted_noise(c=3, per=50)
    folds = np.arange(len(noisy)) % 5
    probe = fit_probe(feats, noisy, folds, 3, ProbeConfig.early_stopped(epochs=3))
    x = torch.log1p(torch.as_tensor(feats).clamp_min(0))
    f = torch.as_tensor(folds)
    logits = torch.einsum("nd,ndc->nc", (x - probe.mean[f]) / probe.std[f], probe.w[f]) + probe.b[f]
    np.testing.assert_allclose(probe.predict(feats, folds), torch.softmax(logits, 1).numpy(), atol=1e-6)
