"""Class-agnostic signals and the calibrator: values by hand, a check against scikit-learn, planted transfer."""
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from conftest import planted_noise

from cleannet_core.metrics import auroc
from cleannet_core.model import CleanNet, CleanNetConfig
from cleannet_core.references import KMeansConfig, build_references
from cleannet_core.train import TrainConfig, train_cleannet
from cleannet_core.transfer import SIGNALS, Calibrator, agnostic_signals, fit_calibrator


def test_signals_by_hand():
    """Two classes with one reference each along the axes: prototype cosines are computable by hand."""
    torch.manual_seed(0)
    model = CleanNet(CleanNetConfig(img_dim=2, num_ref=1))
    e = np.e - 1  # log1p(e - 1) = 1
    refs = np.array([[[e, 0.0]], [[0.0, e]]], dtype=np.float32)
    feats = np.array([[e, 0.0], [e, e], [0.0, e]], dtype=np.float32)
    labels = np.array([0, 0, 0])
    s = agnostic_signals(model, feats, labels, refs)
    assert s.shape == (3, len(SIGNALS))
    proto, proto_margin, near_margin = s[:, 2], s[:, 3], s[:, 4]
    np.testing.assert_allclose(proto, [1.0, 2 ** -0.5, 0.0], atol=1e-6)
    np.testing.assert_allclose(proto_margin, [1.0, 0.0, -1.0], atol=1e-6)
    np.testing.assert_allclose(near_margin, proto_margin, atol=1e-6)  # K = 1: nearest reference = prototype
    with torch.no_grad():
        r = model.query_embeddings(torch.as_tensor(feats)) @ model.class_embeddings(torch.as_tensor(refs)).T
    np.testing.assert_allclose(s[:, 0], r[:, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(s[:, 1], (r[:, 0] - r[:, 1]).numpy(), atol=1e-6)
    z = s[:, 6]  # standardised within the class
    assert z.mean() == pytest.approx(0, abs=1e-9) and z.std() == pytest.approx(1, abs=1e-9)


def test_invalid_other_classes_are_ignored_and_a_lone_class_has_zero_margin():
    model = CleanNet(CleanNetConfig(img_dim=2, num_ref=1))
    refs = np.array([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=np.float32)
    feats = np.array([[0.5, 2.0]], dtype=np.float32)
    s = agnostic_signals(model, feats, np.array([0]), refs, valid_classes=np.array([True, False]))
    assert s[0, 1] == 0 and s[0, 3] == 0 and s[0, 4] == 0


def test_calibrator_matches_sklearn_logistic_regression():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)) * [1.0, 5.0, 0.2] + [0.0, 3.0, -1.0]
    y = (x[:, 0] + 0.3 * x[:, 1] + rng.normal(size=200) > 1.0)
    cal = fit_calibrator(x, y, l2=2.0)
    xs = (x - x.mean(0)) / x.std(0)
    ref = LogisticRegression(C=1 / 2.0, tol=1e-10, max_iter=10_000).fit(xs, y)
    np.testing.assert_allclose(cal.w, ref.coef_[0], atol=1e-4)
    assert cal.b == pytest.approx(ref.intercept_[0], abs=1e-4)
    np.testing.assert_allclose(cal(x), ref.predict_proba(xs)[:, 1], atol=1e-5)
    again = Calibrator.from_state(cal.state())
    np.testing.assert_allclose(again(x), cal(x))


def test_calibrator_with_one_kind_of_verdict_is_the_smoothed_rate():
    cal = fit_calibrator(np.random.default_rng(0).normal(size=(8, 2)), np.ones(8, bool))
    assert (cal.w == 0).all() and cal(np.zeros((1, 2)))[0] == pytest.approx(9 / 10)


def test_calibrated_signals_transfer_to_classes_without_verdicts():
    """Planted noise in 8 classes, verdicts on 4: the class-agnostic score finds the errors in the other 4."""
    feats, clean, noisy = planted_noise(c=8)
    rng, c = np.random.default_rng(0), 8
    ok = noisy == clean
    refs, _ = build_references(feats, noisy, c, config=KMeansConfig(k=4, attempts=1))
    verified = rng.permutation(np.flatnonzero(noisy < 4))[:150]
    res = train_cleannet(feats, noisy, refs, verified_idx=verified[:120], verified_ok=ok[verified[:120]],
                         val_idx=verified[120:], val_ok=ok[verified[120:]], config=TrainConfig(steps=60, seed=0))
    sig = agnostic_signals(res.model, feats, noisy, refs)
    score = fit_calibrator(sig[verified], ok[verified])(sig)
    held = noisy >= 4
    assert auroc(score[held], ok[held]) > 0.9
