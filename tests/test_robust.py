"""The default `robust` score and the scoring-method seam: prior, MAP calibration, checkpoints, planted noise."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from annotator.artifacts import BackboneInfo
from annotator.estimates import STOP_SHARE
from annotator.pipeline import judged_wrong, round_metrics
from annotator.round_types import Data, RoundInputs, VerdictSplit
from cleannet_core import registry, scoring
from cleannet_core.metrics import auroc
from cleannet_core.noise_model import NoiseModel, fit_noise_model
from cleannet_core.probe import Probe
from cleannet_core.references import KMeansConfig, build_references
from cleannet_core.robust import (ANCHOR_ROWS, CLIP, ESTIMATE_B, ESTIMATE_W, FROZEN_SHARE, PRIOR_B, PRIOR_W, PSEUDO,
                                  RIDGE, STRENGTH, RobustScore, _map_logistic, _sigmoid, count_signals,
                                  fit_count_weights, fit_flag_weights, fit_weights, mix_probs)
from cleannet_core.score import Scores, counted_wrong


def structured(seed: int = 0, c: int = 6, per: int = 300, d: int = 32, rate: float = 0.35):
    """Features around c prototypes; `rate` of classes 0, 2, 4 filed under 1, 3, 5 (confusable pairs)."""
    rng = np.random.default_rng(seed)
    protos = rng.random((c, d)) * 3
    clean = np.repeat(np.arange(c), per)
    feats = np.maximum(protos[clean] + rng.normal(0, 1.0, (c * per, d)), 0).astype(np.float32)
    noisy = clean.copy()
    for src, dst in ((0, 1), (2, 3), (4, 5)):
        noisy[(clean == src) & (rng.random(len(clean)) < rate)] = dst
    return feats, clean, noisy


def round_data(feats, noisy, c, train_idx=(), train_ok=(), val_idx=(), val_ok=()) -> scoring.RoundData:
    refs, counts = build_references(feats, noisy, c, config=KMeansConfig(k=4))
    i = lambda v: np.asarray(v, np.int64)  # noqa: E731
    b = lambda v: np.asarray(v, bool)  # noqa: E731
    return scoring.RoundData(feats, noisy, np.arange(len(noisy)) % 5, c, refs, counts > 0, np.ones(len(noisy), bool),
                             i(train_idx), b(train_ok), i(val_idx), b(val_ok))


def test_no_verdicts_give_the_prior():
    w, b = fit_weights(np.zeros((0, 3)), np.zeros(0, bool), scale=np.array([2.0, 0.1, 3.0]))
    np.testing.assert_allclose(w, PRIOR_W)
    assert b == PRIOR_B


def test_weights_stay_non_negative_and_are_the_constrained_optimum():
    """Verdicts that say the opposite of every signal: the fit holds the weights at 0 rather than reverse them,
    and no feasible point on a grid has a lower loss."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (80, 3))
    ok = x[:, 2] < 0                                         # label_logit says "correct" where it is wrong
    scale = np.ones(3)
    w, b = fit_weights(x, ok, scale=scale)
    assert (w >= 0).all() and w[2] == 0
    best = _map_logistic(x, ok.astype(float), w, b, STRENGTH, fixed=np.zeros(0))[2]
    w0 = np.asarray(PRIOR_W)
    for w2 in np.linspace(0, 1, 11):
        for b2 in np.linspace(b - 1, b + 1, 11):
            trial = np.array([w[0], w[1], w2])
            z = x @ trial + b2
            loss = np.logaddexp(0, -z)[ok].sum() + np.logaddexp(0, z)[~ok].sum() + STRENGTH / 2 * (
                ((trial - w0) ** 2).sum() + (b2 - PRIOR_B) ** 2)
            assert loss >= best - 1e-6


def test_one_sided_verdicts_do_not_collapse_the_score():
    """50 verdicts, all "correct": the noise model keeps its weight (the transfer calibrator fell back to a rule
    that ignored them), and the bias moves towards "correct" only as far as the prior allows."""
    x = np.random.default_rng(1).normal(0, 1, (50, 3))
    w, b = fit_weights(x, np.ones(50, bool), scale=np.ones(3))
    assert w[0] > 0.5 * PRIOR_W[0] and b > PRIOR_B


def _signals(rng, n: int) -> np.ndarray:
    """(n, 3) signals with their usual spreads: noise_logit a few units, in_domain = log(1 - P(no class)) a few
    hundredths, label_logit a few units."""
    return np.c_[rng.normal(2, 2, n), -np.abs(rng.normal(0, 0.03, n)), rng.normal(1, 2, n)]


def test_the_flags_prior_is_the_constrained_optimum_of_verdicts_plus_pseudo_verdicts():
    """fit_flag_weights minimises the verdicts' summed log-loss + PSEUDO x the mean cross-entropy against the
    prior's own P(correct) on the sample + RIDGE / 2 |(w, b) - prior|^2 (weights x spread): no feasible point
    on a grid around it has a lower loss; no verdicts give the prior exactly."""
    rng = np.random.default_rng(4)
    sample = _signals(rng, 2000)
    np.testing.assert_allclose(fit_flag_weights(np.zeros((0, 3)), np.zeros(0, bool), sample)[0], PRIOR_W)
    x = sample[:60]
    ok = rng.random(60) < _sigmoid(0.5 * x[:, 0] + 0.3 * x[:, 2])
    w, b = fit_flag_weights(x, ok, sample)
    assert (w >= 0).all()
    scale = sample.std(0)
    target = _sigmoid(sample @ np.asarray(PRIOR_W) + PRIOR_B)

    def loss(wt: np.ndarray, bt: float) -> float:
        z, zs = x @ wt + bt, sample @ wt + bt
        anchor = -(target * -np.logaddexp(0, -zs) + (1 - target) * -np.logaddexp(0, zs)).mean()
        return float(np.logaddexp(0, -z)[ok].sum() + np.logaddexp(0, z)[~ok].sum() + PSEUDO * anchor + RIDGE / 2 * (
            (((wt - np.asarray(PRIOR_W)) * scale) ** 2).sum() + (bt - PRIOR_B) ** 2))

    best = loss(w, b)
    for dw in (-0.1, 0.0, 0.1):
        for dl in (-0.1, 0.0, 0.1):
            for db in (-0.1, 0.0, 0.1):
                trial = np.maximum(w + np.array([dw, 0, dl]), 0)
                assert loss(trial, b + db) >= best - 1e-6


def test_the_flags_prior_sits_on_at_most_anchor_rows_of_a_large_sample():
    """A sample of ANCHOR_ROWS rows or fewer: every row carries the pseudo-verdicts (exactly fit_weights on it). A
    larger one: a seeded draw of ANCHOR_ROWS rows carries them (the spread still comes from every row), which moves
    the fit less than the verdicts' own noise."""
    rng = np.random.default_rng(6)
    sample = _signals(rng, 4 * ANCHOR_ROWS)
    x = sample[:80]
    ok = rng.random(80) < _sigmoid(0.5 * x[:, 0] + 0.3 * x[:, 2])
    small = sample[:ANCHOR_ROWS]
    exact = fit_weights(x, ok, scale=small.std(0), strength=RIDGE, sample=small, pseudo=PSEUDO)
    np.testing.assert_array_equal(fit_flag_weights(x, ok, small)[0], exact[0])
    full = fit_weights(x, ok, scale=sample.std(0), strength=RIDGE, sample=sample, pseudo=PSEUDO)
    capped = fit_flag_weights(x, ok, sample)
    np.testing.assert_allclose(capped[0], full[0], rtol=0.05, atol=1e-3)
    assert abs(capped[1] - full[1]) < 0.05
    assert fit_flag_weights(x, ok, sample)[1] == capped[1]  # the draw is seeded


def test_one_sided_flag_verdicts_keep_the_ranking():
    """50 verdicts, all "correct", on signals with their usual spreads: the pseudo-verdicts keep the noise model's
    weight, so the score still ranks the data set (it does not go constant), and fewer images are flagged."""
    rng = np.random.default_rng(5)
    sample = _signals(rng, 3000)
    w, b = fit_flag_weights(sample[:50], np.ones(50, bool), sample)
    assert w[0] > 0.5 * PRIOR_W[0] and b > PRIOR_B
    before = _sigmoid(sample @ np.asarray(PRIOR_W) + PRIOR_B)
    after = _sigmoid(sample @ w + b)
    assert 0 < (after < 0.5).sum() < (before < 0.5).sum()
    assert np.corrcoef(before, after)[0, 1] > 0.9


def test_many_consistent_verdicts_outweigh_the_prior():
    rng = np.random.default_rng(2)
    # the signals' usual spreads: noise_logit a few units, in_domain = log(1 - P(no class)) a few hundredths
    x = np.c_[rng.normal(0, 2, 400), -np.abs(rng.normal(0, 0.03, 400)), rng.normal(0, 2, 400)]
    ok = x[:, 2] > 0.5                                       # only label_logit (prior weight 0) tells the truth
    w, b = fit_weights(x, ok, scale=x.std(0))
    assert w[2] > 2 and ((x @ w + b > 0) == ok).mean() > 0.95


def test_verdict_free_default_does_not_flag_the_clean_images_noise_flows_out_of():
    """Planted structured noise (35 % of classes 0, 2, 4 filed under 1, 3, 5), no verdicts: the default flags
    almost none of the clean images of the source classes and beats flagging nothing. The earlier default
    (`transfer`: flag where the probe prefers another class) flagged all of them."""
    feats, clean, noisy = structured()
    wrong = clean != noisy
    fitted = scoring.method(registry.DEFAULT).fit(round_data(feats, noisy, 6))
    flag = fitted.scores.score < fitted.delta
    clean_src = np.isin(noisy, [0, 2, 4]) & ~wrong
    assert flag[clean_src].mean() < 0.05
    assert (flag != wrong).mean() < wrong.mean()
    old = scoring.method("transfer").fit(round_data(feats, noisy, 6)).scores.score < 0.5
    assert old[clean_src].mean() > 0.5 and (old != wrong).mean() > wrong.mean()


@pytest.mark.parametrize("name", sorted(registry.METHODS))
def test_every_method_rescores_from_its_checkpoint_exactly(name):
    feats, clean, noisy = structured(c=4, per=60)
    wrong = clean != noisy
    idx = np.arange(0, len(noisy), 7)
    data = round_data(feats, noisy, 4, idx[::2], ~wrong[idx[::2]], idx[1::2], ~wrong[idx[1::2]])
    fitted = scoring.method(name).fit(data, cleannet=scoring.TrainConfig.shortened(40))
    assert fitted.state["method"] == name and fitted.state["version"] == registry.METHODS[name].version
    assert fitted.note
    again = scoring.rescore(fitted.state, data)
    np.testing.assert_array_equal(again.score, fitted.scores.score)
    np.testing.assert_array_equal(again.suggested, fitted.scores.suggested)
    # the counting P(label wrong) too: new images scored by the checkpoint count like the fitted ones
    assert (fitted.scores.expected_wrong is not None) == (name == "robust")
    if name == "robust":
        np.testing.assert_array_equal(again.expected_wrong, fitted.scores.expected_wrong)
    else:
        assert again.expected_wrong is None


def test_a_checkpoint_of_another_version_or_method_is_refused():
    with pytest.raises(registry.CheckpointMismatch, match="version 2"):
        registry.check_checkpoint({"method": "robust", "version": 2})
    with pytest.raises(registry.UnknownMethod, match="valid"):
        scoring.method("nope")
    assert registry.check_checkpoint({"cleannet": {}}).name == "paper"  # files written before versions: v1


def test_a_round_with_only_new_verdicts_reuses_the_probe_and_a_changed_one_refits():
    feats, clean, noisy = structured(c=4, per=60)
    first = scoring.method("robust").fit(replace(round_data(feats, noisy, 4), probe_key="k1"))
    wrong = clean != noisy
    again = replace(round_data(feats, noisy, 4, [0, 1, 2], ~wrong[:3]), probe_key="k1")
    reports = []
    reused = scoring.method("robust").fit(again, warm_start=first.state,
                                          progress=lambda frac, message: reports.append((frac, message)))
    assert "probe of the previous round reused" in reused.note
    # no probe steps to report, yet the fit still reports its later stages strictly between 0 and 1, in order
    assert [m for _, m in reports] == ["noise model, weights and scores"] * 2
    assert 0 < reports[0][0] < reports[1][0] < 1
    for k in ("w", "b", "mean", "std"):
        assert torch.equal(reused.state["probe"][k], first.state["probe"][k])
    changed = scoring.method("robust").fit(replace(again, probe_key="k2"), warm_start=first.state)
    assert "reused" not in changed.note and changed.state["probe_key"] == "k2"


def test_verdict_influence_tells_informative_newest_verdicts_from_redundant_ones():
    """Class 1's newest verdicts confirm images the model is already sure of: without them almost no flag moves
    (the stopping signal). Class 3's newest verdicts say "wrong" on mislabelled images the model missed: without
    them many flags move. Class 5 has too few verdicts to tell; each class leaves out exactly its newest half."""
    feats, clean, noisy = structured()
    wrong = clean != noisy
    score = scoring.method("robust").fit(round_data(feats, noisy, 6)).scores.score
    rng = np.random.default_rng(0)

    def pick(mask, n, order=None):
        rows = np.flatnonzero(mask)
        return rows[np.argsort(order[rows])][:n] if order is not None else rng.choice(rows, n, replace=False)

    old1, old3 = pick(noisy == 1, 12), pick(noisy == 3, 12)
    sure1 = pick((noisy == 1) & ~wrong & ~np.isin(np.arange(len(noisy)), old1), 12, order=-score)
    missed3 = pick((noisy == 3) & wrong & ~np.isin(np.arange(len(noisy)), old3), 12, order=-score)
    few5 = pick(noisy == 5, 9)
    rows = np.concatenate([old1, old3, few5, sure1, missed3])  # oldest first
    fitted = scoring.method("robust").fit(round_data(feats, noisy, 6, rows, ~wrong[rows]))
    inf = fitted.influence
    assert sorted(inf) == [1, 3]
    assert (inf[1]["verdicts"], inf[1]["held"], inf[3]["verdicts"], inf[3]["held"]) == (24, 12, 24, 12)
    flagged = int((fitted.scores.score < fitted.delta).sum())
    assert inf[1]["flagged"] == inf[3]["flagged"] == flagged  # the sample is every image here (< 50k)
    assert inf[1]["moved"] < STOP_SHARE * flagged <= inf[3]["moved"]
    assert scoring.method("transfer").fit(round_data(feats, noisy, 6, rows, ~wrong[rows])).influence is None


def test_counting_starts_at_the_noise_models_posterior_and_verdicts_move_it():
    """With no verdict, the P(wrong) the noise rates are counted with is exactly 1 - the noise model's posterior
    (not the cautious flag score, which counts fewer); verdicts refit it around that prior; the state keeps it,
    and a state saved without it counts with the prior. A fit on adapted probabilities carries it as well, and
    rescoring from that checkpoint gives it back exactly."""
    feats, clean, noisy = structured()
    wrong = clean != noisy
    fitted = scoring.method("robust").fit(round_data(feats, noisy, 6))
    rs = RobustScore.from_state(fitted.state["robust"])
    probs = Probe.from_state(fitted.state["probe"]).predict(feats, np.arange(len(noisy)) % 5)
    p_ok = np.clip(rs.noise.posterior(probs, noisy)[0], CLIP, 1 - CLIP)  # the signal's logit clips it
    np.testing.assert_allclose(fitted.scores.expected_wrong, 1 - p_ok, rtol=0, atol=1e-9)
    assert (rs.est_w.tolist(), rs.est_b) == (list(ESTIMATE_W), ESTIMATE_B)
    assert fitted.scores.expected_wrong.mean() > (1 - fitted.scores.score).mean()  # the flag score is cautious

    rows = np.arange(0, len(noisy), 9)
    taught = scoring.method("robust").fit(round_data(feats, noisy, 6, rows, ~wrong[rows]))
    back = RobustScore.from_state(taught.state["robust"])
    assert back.n_verdicts == len(rows) and not np.allclose(back.est_w, ESTIMATE_W)
    x = back.signals(probs, noisy)
    np.testing.assert_allclose(taught.scores.expected_wrong, back.expected_wrong(x), rtol=0, atol=1e-9)
    old = {k: v for k, v in taught.state["robust"].items() if k not in ("est_w", "est_b")}
    np.testing.assert_allclose(RobustScore.from_state(old).expected_wrong(x), 1 - p_ok, rtol=0, atol=1e-9)

    on_probs = replace(round_data(feats, noisy, 6, rows, ~wrong[rows]), probs=probs)
    adapted = scoring.method("robust").fit(on_probs)
    fitted_rs = RobustScore.from_state(adapted.state["robust"])
    frozen = Probe.from_state(adapted.state["probe"]).predict(feats, np.arange(len(noisy)) % 5)
    x = fitted_rs.signals(mix_probs(probs, frozen), noisy, frozen)
    np.testing.assert_allclose(adapted.scores.expected_wrong, fitted_rs.expected_wrong(x), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(scoring.rescore(adapted.state, on_probs).expected_wrong,
                                  adapted.scores.expected_wrong)


def test_counting_reads_the_noise_logit_in_two_parts():
    """count_signals splits noise_logit at 0; equal weights on the parts give noise_logit itself, so a state saved
    with one weight on it counts exactly as before."""
    x = np.array([[-13.8, -0.01, 1.0], [0.0, 0.0, -2.0], [2.5, -0.2, 3.0]])
    np.testing.assert_array_equal(count_signals(x), [[0.0, -13.8, -0.01, 1.0], [0.0, 0.0, 0.0, -2.0],
                                                     [2.5, 0.0, -0.2, 3.0]])
    np.testing.assert_array_equal(count_signals(x) @ np.asarray(ESTIMATE_W), x[:, 0])
    rs = RobustScore(NoiseModel(1.0, np.eye(2), np.full(2, 0.5)), np.asarray(PRIOR_W), PRIOR_B)
    old = rs.state() | {"est_w": [0.7, 0.0, 0.2], "est_b": 0.3}
    np.testing.assert_allclose(RobustScore.from_state(old).expected_wrong(x),
                               1 - _sigmoid(x @ np.array([0.7, 0.0, 0.2]) + 0.3), rtol=0, atol=1e-12)


def test_verdicts_on_the_noise_models_false_alarms_do_not_raise_the_count_of_the_confident_bulk():
    """Low noise: 3,000 images the noise model is sure of (all correct), 60 it puts at P(correct) = 0 of which about
    half are wrong, 300 in between. Verdicts drawn where the queue draws them (mostly the uncertain ones) teach the
    count that the "wrong" side is only half wrong; with noise_logit in two parts that flattens that side alone, and
    the bulk still counts under 1.5 % wrong (one weight on noise_logit would have to flatten it all: 5.6 %)."""
    rng = np.random.default_rng(7)
    bulk, sure_wrong, middle = 3000, 60, 300
    noise_logit = np.r_[rng.normal(6, 1.5, bulk), np.full(sure_wrong, np.log(CLIP)), rng.normal(0.5, 1.5, middle)]
    x = np.c_[noise_logit, -np.abs(rng.normal(0, 0.01, len(noise_logit))), rng.normal(2, 1, len(noise_logit))]
    ok = np.r_[np.ones(bulk, bool), rng.random(sure_wrong) < 0.45, rng.random(middle) < 0.85]
    rows = np.r_[rng.choice(bulk, 10, replace=False), bulk + np.arange(0, sure_wrong, 3),
                 bulk + sure_wrong + rng.choice(middle, 50, replace=False)]
    w, b = fit_count_weights(x[rows], ok[rows], x)
    assert (w >= 0).all() and w[1] < w[0]
    counted = RobustScore(NoiseModel(1.0, np.eye(2), np.full(2, 0.5)), np.asarray(PRIOR_W), PRIOR_B, len(rows), w,
                          b).expected_wrong(x)
    assert counted[:bulk].mean() < 0.015
    assert abs(counted[bulk:bulk + sure_wrong].mean() - (~ok[bulk:bulk + sure_wrong]).mean()) < 0.1


def _five_images() -> tuple[Data, RoundInputs, BackboneInfo]:
    """Two classes (cat: ids 1-2, dog: ids 3-5) and no verdict: round_metrics' inputs."""
    data = Data(ids=np.arange(1, 6), paths=[""] * 5, keys=[""] * 5, labels=np.array([0, 0, 1, 1, 1]),
                class_ids=np.array([7, 8]), class_names=["cat", "dog"])
    empty = np.zeros(0, np.int64)
    inputs = RoundInputs(data, np.zeros((5, 2), np.float16), np.ones(5, bool), np.zeros((2, 1, 2), np.float32),
                         np.ones(2, bool), VerdictSplit(empty, empty.astype(bool), empty, empty.astype(bool)))
    info = BackboneInfo(path="", id="x", source="test", arch="efficientnet_lite0", image_size=32, num_classes=2,
                        kind="pretrained")
    return data, inputs, info


def test_round_metrics_count_noise_rates_with_the_counting_calibration():
    """The chart's per-class noise rate is the class's mean of the scores' expected_wrong, and the overall rate the
    mean over every image; a method without one counts 1 - score."""
    _, inputs, info = _five_images()
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.1], np.float32)
    sc = Scores(score, np.zeros(5, np.int64), np.zeros(5, np.float32), np.array([0.5, 0.3, 0.2, 0.2, 0.8]))
    counted = scoring.Fitted(sc, 0.5, {"method": "robust"}, "")
    m = round_metrics(inputs, counted, backbone=info, max_verdict=0)
    assert m["per_class_noise_rate"] == {"cat": pytest.approx(0.4), "dog": pytest.approx(0.4)}
    assert m["estimated_noise_rate"] == pytest.approx(0.4) and m["noise_rate_kind"] == "expected"
    plain = round_metrics(inputs, replace(counted, scores=replace(sc, expected_wrong=None)), backbone=info,
                          max_verdict=0)
    assert plain["per_class_noise_rate"] == {"cat": pytest.approx(0.15), "dog": pytest.approx(1.6 / 3)}


def test_round_metrics_count_judged_images_by_their_verdict():
    """A judged image counts 1 (verdict 'wrong') or 0 ('correct') in the noise rates, not its expected_wrong; the
    rest count as before, and expected_wrong_left sums the unjudged ones only. The share flagged (a score that is
    not a probability) is left as it is."""
    data, inputs, info = _five_images()
    sc = Scores(np.array([0.9, 0.8, 0.7, 0.6, 0.1], np.float32), np.zeros(5, np.int64), np.zeros(5, np.float32),
                np.array([0.5, 0.3, 0.2, 0.2, 0.8]))
    verdicts = [{"image_id": 2, "verdict": "wrong"}, {"image_id": 3, "verdict": "correct"},
                {"image_id": 4, "verdict": "unsure"}, {"image_id": 99, "verdict": "wrong"}]
    judged = judged_wrong(data, verdicts)
    np.testing.assert_array_equal(judged, [np.nan, 1.0, 0.0, np.nan, np.nan])
    m = round_metrics(inputs, scoring.Fitted(sc, 0.5, {"method": "robust"}, ""), backbone=info, max_verdict=0,
                      judged=judged)
    assert m["per_class_noise_rate"] == {"cat": pytest.approx(0.75), "dog": pytest.approx(1 / 3)}
    assert m["estimated_noise_rate"] == pytest.approx(0.5)
    assert m["expected_wrong_left"] == pytest.approx(1.5)
    flagged = round_metrics(inputs, scoring.Fitted(sc, 0.5, {"method": "paper"}, ""), backbone=info, max_verdict=0,
                            judged=judged)
    assert flagged["per_class_noise_rate"] == {"cat": 0.0, "dog": pytest.approx(1 / 3)}


def test_counts_sum_the_counting_calibration_and_fall_back_on_one_minus_score_per_image():
    """counted_wrong, which both the chart (round_metrics) and the lead's estimates (States.p_wrong) sum: each
    image's expected_wrong where it has one, 1 - score where it is NaN, and 1 - score for all when it is None."""
    score = np.array([0.9, 0.25, 0.5], np.float32)
    assert counted_wrong(score, np.array([0.3, np.nan, 0.0])).tolist() == [0.3, 0.75, 0.0]
    np.testing.assert_allclose(counted_wrong(score, None), [0.1, 0.75, 0.5], rtol=0, atol=1e-7)
    assert counted_wrong(score, None).dtype == np.float64


def test_adapted_probabilities_are_read_with_the_frozen_probes_and_in_domain_from_the_probe_alone():
    """Adapted networks put every image in some class, images of no class included: the score reads their
    probabilities mixed with the frozen probe's (exactly softmax(0.75 log adapted + 0.25 log frozen)), and in_domain
    from the probe's noise model alone. 60 images of no class (random features, filed evenly) that the networks
    call confidently their label: in_domain still tells them apart (AUROC > 0.9) as the probe's does, where the
    networks' own noise model cannot (< 0.7). The probe of a warm state with the same probe_key is reused; a state
    without a domain model (the networks alone) rescores as it always did."""
    feats, clean, noisy = structured(seed=3)
    rng = np.random.default_rng(3)
    n_open = 60
    feats = np.vstack([feats, rng.random((n_open, feats.shape[1])).astype(np.float32) * 3])
    noisy = np.r_[noisy, np.arange(n_open) % 6]
    is_open = np.r_[np.zeros(len(clean), bool), np.ones(n_open, bool)]
    adapted = np.full((len(noisy), 6), 0.02, np.float32)
    adapted[np.arange(len(noisy)), np.where(is_open, noisy, np.r_[clean, noisy[len(clean):]])] = 0.9
    data = replace(round_data(feats, noisy, 6), probs=adapted, probe_key="k")
    fitted = scoring.method("robust").fit(data)
    rs = RobustScore.from_state(fitted.state["robust"])
    frozen = Probe.from_state(fitted.state["probe"]).predict(feats, np.arange(len(noisy)) % 5)
    mixed = mix_probs(adapted, frozen)
    want = np.exp(0.75 * np.log(adapted.astype(np.float64)) + FROZEN_SHARE * np.log(np.clip(frozen, CLIP, 1)))
    np.testing.assert_allclose(mixed, want / want.sum(1, keepdims=True), rtol=1e-5)
    x = rs.signals(mixed, noisy, frozen)
    np.testing.assert_allclose(fitted.scores.score, rs(x), rtol=1e-6)
    np.testing.assert_allclose(x[:, 1], np.log(np.clip(1 - rs.domain.posterior(frozen, noisy)[1], CLIP, 1)))
    assert auroc(x[:, 1], ~is_open) > 0.9
    alone_nm = fit_noise_model(adapted, noisy)  # the networks' probabilities read alone
    assert auroc(RobustScore(alone_nm, rs.w, rs.b).signals(adapted, noisy)[:, 1], ~is_open) < 0.7
    with pytest.raises(ValueError, match="frozen probe"):
        rs.signals(mixed, noisy)

    other = fitted.state | {"probe": fitted.state["probe"] | {"w": 2 * fitted.state["probe"]["w"]}}
    warm = scoring.method("robust").fit(data, warm_start=other)  # same probe_key: that probe, not a new fit
    assert torch.equal(warm.state["probe"]["w"], other["probe"]["w"]) and "reused" in warm.note
    assert not torch.equal(scoring.method("robust").fit(replace(data, probe_key="changed"), warm_start=other)
                           .state["probe"]["w"], other["probe"]["w"])

    alone = fitted.state | {"robust": {k: v for k, v in fitted.state["robust"].items() if k != "domain"}}
    back = RobustScore.from_state(alone["robust"])
    np.testing.assert_allclose(scoring.rescore(alone, data).score, back(back.signals(adapted, noisy)), rtol=1e-6)
