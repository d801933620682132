"""The class-conditional noise model: temperature, anchor rows, and the posterior P(label correct)."""
import numpy as np
import pytest

from cleannet_core.noise_model import NoiseModel, fit_noise_model, fit_temperature

BIRD, PLANE, CAT = 0, 1, 2
# 35 % of birds are filed as airplane; airplanes and cats are filed correctly.
T = np.array([[0.65, 0.35, 0.00],
              [0.00, 1.00, 0.00],
              [0.00, 0.00, 1.00]])


def model(t=T, u=None):
    return NoiseModel(1.0, np.asarray(t, float), np.full(len(t), 1 / len(t)) if u is None else np.asarray(u, float))


def test_a_bird_filed_as_airplane_is_wrong_and_a_bird_filed_as_bird_is_right():
    q = np.array([T[BIRD], T[BIRD], T[PLANE]])              # two birds and an airplane, as the probe sees them
    ok, _ = model().posterior(q, np.array([PLANE, BIRD, PLANE]))
    assert ok[0] < 0.05 and ok[1] > 0.99 and ok[2] > 0.99


def test_a_clean_image_of_a_class_noise_flows_out_of_is_not_flagged():
    """The probe prefers airplane for this bird (0.55 > 0.45), which "another class preferred" flags; the noise
    model explains q as a bird (0.45 / 0.65 of its mass) plus airplane leakage, so the bird label stands."""
    q = np.array([[0.45, 0.55, 0.0]])
    ok, _ = model().posterior(q, np.array([BIRD]))
    assert q[0].argmax() != BIRD and ok[0] > 0.9


def test_posterior_is_bayes_on_the_fitted_mixture():
    """P(label i correct) = pi_i T[i, i] / q_i: with T = identity every bit of q_i is class i's own mass."""
    rng = np.random.default_rng(0)
    q = rng.dirichlet(np.full(4, 2.0), size=50)
    u = np.array([0.7, 0.1, 0.1, 0.1])                      # an open row unlike any peaked q
    ok, p_open = model(np.eye(4), u).posterior(q, rng.integers(0, 4, 50), iters=2000)
    assert ((0 <= ok) & (ok <= 1)).all() and ((0 <= p_open) & (p_open <= 1)).all()
    ok_closed, _ = NoiseModel(1.0, np.eye(4), np.zeros(4)).posterior(q, np.zeros(50, int))
    np.testing.assert_allclose(ok_closed, 1.0, atol=1e-9)   # no noise, no open set: every label is correct


def test_a_flat_probe_reads_as_no_class_and_a_peaked_one_does_not():
    q = np.array([[1 / 3, 1 / 3, 1 / 3], [0.96, 0.02, 0.02]])
    ok, p_open = model(np.eye(3) * 0.94 + 0.02).posterior(q, np.array([0, 0]))
    assert p_open[0] > 5 * p_open[1] and ok[0] < ok[1]


def test_the_label_is_always_among_the_k_classes_and_k_at_least_c_is_exact():
    rng = np.random.default_rng(1)
    c = 12
    t = np.eye(c) * 0.8 + rng.dirichlet(np.ones(c), size=c) * 0.2
    q = rng.dirichlet(np.full(c, 0.3), size=40)
    y = q.argmin(axis=1)                                    # the least probable class: outside any small top-k
    m = model(t / t.sum(1, keepdims=True))
    full, _ = m.posterior(q, y, k=c)
    np.testing.assert_allclose(m.posterior(q, y, k=c + 5)[0], full, atol=1e-12)
    small, _ = m.posterior(q, y, k=3)
    assert np.isfinite(small).all() and (small <= 1).all()


def test_chunks_do_not_change_the_posterior():
    rng = np.random.default_rng(2)
    q = rng.dirichlet(np.ones(3), size=101)
    y = rng.integers(0, 3, 101)
    np.testing.assert_array_equal(model().posterior(q, y, chunk=7)[0], model().posterior(q, y)[0])


def test_temperature_recovers_a_sharpened_probe():
    """Labels drawn from softmax(z) and a probe that says softmax(3 z): the fitted temperature is about 1/3."""
    rng = np.random.default_rng(3)
    z = rng.normal(0, 1.5, (20_000, 5))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = (p.cumsum(1) > rng.random((len(p), 1))).argmax(1)
    sharp = np.exp(3 * z) / np.exp(3 * z).sum(1, keepdims=True)
    assert fit_temperature(sharp, y) == pytest.approx(1 / 3, abs=0.03)


def test_anchor_rows_recover_the_transition_matrix():
    """Confident images of every class (their q is their true class's row of T): the fitted T is that T."""
    rng = np.random.default_rng(4)
    t = np.array([[0.8, 0.2, 0.0], [0.0, 0.9, 0.1], [0.05, 0.0, 0.95]])
    true = rng.integers(0, 3, 6000)
    probs = t[true] * 0.98 + rng.dirichlet(np.ones(3), 6000) * 0.02
    labels = (t[true].cumsum(1) > rng.random((6000, 1))).argmax(1)
    fitted = fit_noise_model(probs, labels)
    assert fitted.temperature == pytest.approx(1.0, abs=0.1)
    np.testing.assert_allclose(fitted.transition, t, atol=0.03)
    np.testing.assert_allclose(fitted.open_row, np.bincount(labels, minlength=3) / 6000)


def test_state_round_trips():
    m = model()
    back = NoiseModel.from_state(m.state())
    assert back.temperature == m.temperature
    np.testing.assert_array_equal(back.transition, m.transition)
    np.testing.assert_array_equal(back.open_row, m.open_row)
