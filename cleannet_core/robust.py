"""The default score (`robust`): P(label correct) from a noise model, calibrated by the verdicts around a prior.

    probe      out-of-fold L2-penalised linear probe: q(x) = P(noisy label | x)           (probe.py)
    noise      the class-conditional noise model read on q: P_noise(correct), P(no class) (noise_model.py)
    signals    noise_logit = logit P_noise(correct); in_domain = log(1 - P(no class));
               label_logit = logit q_label(x) (temperature-scaled)
    score      P(correct) = sigmoid(w . signals + b), w >= 0

The weights start at PRIOR, chosen on the robustness suite's dev cases (benchmarks/robust_prior.py: the weights
whose first model is not worse than flagging nothing on any dev case, then the lowest mean error), so the first
model flags from the noise model alone, before any verdict; label_logit starts at 0 and only verdicts give it
weight. Verdicts move them by maximum a posteriori logistic regression (`fit_flag_weights`): log-loss summed over
the verdicts, plus a prior in function space: PSEUDO pseudo-verdicts on a sample of the whole data set, answered
by the prior's own P(correct), plus a weak pull RIDGE / 2 |(w, b) - PRIOR|^2. The pseudo-verdicts hold the flags
where they are over the bulk of the data set, while the weights are free to follow the verdicts near the threshold,
where the queue draws them; a few verdicts adjust it a little and many a lot, and one-sided verdicts do not
collapse it to "flag nothing" or "flag everything". (A pull on the weights alone, STRENGTH, held them too close to
the prior: on the dev cases the function-space prior gives 0.674 against 0.700 x flagging nothing on average and
6 against 9 of 144 runs worse than flagging nothing; benchmarks/README.md, "The flags' prior".) Both signals
describe an image relative to its noisy class without naming the class, so what verdicts on the verified classes
teach applies to every class. Higher score = label more likely correct; flagged below DELTA.

The prior is cautious on purpose (its flags must beat flagging nothing), so its P(wrong) undercounts wrong labels
where noise is high. Counting uses a second calibration of the same signals, `expected_wrong`: its prior is the
noise model's own posterior (ESTIMATE_W, ESTIMATE_B: P(correct) = P_noise(correct)) and the same verdicts move it
around that prior with the pull STRENGTH. On the dev cases with no verdict its per-class noise rates are 4.8
points off the truth on average (worst case 8.2) against the cautious score's 6.1 (worst 16.8, CIFAR-10N `worse`).
It reads noise_logit in two parts, split at 0 (`count_signals`), so verdicts can flatten the "wrong" side alone:
on the dev runs with verdicts 3.72 points against 3.85 for one weight (3 % noise, 100 verdicts: 1.1 against
2.9).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .noise_model import NoiseModel, fit_noise_model
from .optim import lbfgs
from .probe import Probe, ProbeConfig, fit_probe, self_confidence
from .score import Scores

SIGNALS = ("noise_logit", "in_domain", "label_logit")
PRIOR_W = (0.8, 30.0, 0.0)  # the verdict-free weights chosen on the dev cases (benchmarks/robust_prior.py)
PRIOR_B = 1.5
ESTIMATE_W = (1.0, 1.0, 0.0, 0.0)  # counting, on count_signals: the noise model's posterior itself, before any verdict
ESTIMATE_B = 0.0
STRENGTH = 3.0              # prior precision on weight x signal spread (the counting calibration's prior)
PSEUDO = 10.0               # the flags' prior: as many verdicts as this, on images drawn from the whole data set
                            # and answered by PRIOR's own P(correct) (benchmarks/README.md, "The flags' prior")
RIDGE = 0.1                 # ... and a weak pull of each weight x signal spread towards PRIOR_W
ANCHOR_ROWS = 10_000        # the pseudo-verdicts sit on at most this many images of the sample (a seeded draw)
DELTA = 0.5
FROZEN_SHARE = 0.25          # the frozen probe's share of the probabilities beside adapted networks' (mix_probs)
NEWEST = 0.5                 # verdict_influence leaves out each class's newest half of its verdicts
MIN_HELD = 5                 # ... when that is at least this many
PROBE_SHARE = 0.8            # the probe's share of a fit's progress; the noise model and scoring take the rest
CLIP = 1e-6


@dataclass
class RobustScore:
    """The calibrated map from signals to P(label correct); n_verdicts = how many verdicts moved it off the prior.
    (est_w, est_b): the counting calibration (expected_wrong), on count_signals. domain: on adapted networks'
    probabilities, the noise model of the frozen probe's, which in_domain is read from (`mix_probs`)."""
    noise: NoiseModel
    w: np.ndarray          # (3,) >= 0, on the raw signals
    b: float
    n_verdicts: int = 0
    est_w: np.ndarray = field(default_factory=lambda: np.asarray(ESTIMATE_W, np.float64))
    est_b: float = ESTIMATE_B
    domain: NoiseModel | None = None

    def signals(self, probs: np.ndarray, labels: np.ndarray, domain_probs: np.ndarray | None = None) -> np.ndarray:
        """(N, 3) float64 SIGNALS of images with probabilities probs (N, C) and noisy labels (N,); with a domain
        model, in_domain comes from the frozen probe's probabilities domain_probs (N, C), which it then needs."""
        labels = np.asarray(labels, np.int64)
        p_ok, p_open = self.noise.posterior(probs, labels)
        if self.domain is not None:
            if domain_probs is None:
                raise ValueError("this score reads in_domain from the frozen probe: pass its probabilities")
            p_open = self.domain.posterior(domain_probs, labels)[1]
        q = self.noise.calibrate(probs)[np.arange(len(labels)), labels]
        return np.stack([_logit(p_ok), np.log(np.clip(1 - p_open, CLIP, 1)), _logit(q)], axis=1)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(N,) P(label correct) from signals x (N, 3)."""
        return _sigmoid(np.asarray(x, np.float64) @ self.w + self.b)

    def expected_wrong(self, x: np.ndarray) -> np.ndarray:
        """(N,) P(label wrong) for counting wrong labels (its mean over a class estimates the class's noise rate)
        from signals x (N, 3); not the flags' calibration, which is cautious."""
        return 1.0 - _sigmoid(count_signals(x) @ self.est_w + self.est_b)

    def state(self) -> dict:
        return {"noise": self.noise.state(), "w": self.w.tolist(), "b": self.b, "n_verdicts": self.n_verdicts,
                "est_w": self.est_w.tolist(), "est_b": self.est_b} | (
            {"domain": self.domain.state()} if self.domain is not None else {})

    @classmethod
    def from_state(cls, s: dict) -> "RobustScore":
        """A state of state(); one saved without a counting calibration counts with its prior, and one whose
        calibration had a single weight a on noise_logit gets a on both of its parts (the same function)."""
        est_w = np.array(s.get("est_w", ESTIMATE_W), np.float64)
        if len(est_w) == len(SIGNALS):
            est_w = np.insert(est_w, 1, est_w[0])
        return cls(NoiseModel.from_state(s["noise"]), np.array(s["w"], np.float64), float(s["b"]),
                   int(s["n_verdicts"]), est_w, float(s.get("est_b", ESTIMATE_B)),
                   NoiseModel.from_state(s["domain"]) if s.get("domain") is not None else None)


def mix_probs(adapted: np.ndarray, frozen: np.ndarray, share: float = FROZEN_SHARE) -> np.ndarray:
    """(N, C) float32 the geometric mixture softmax((1 - share) log adapted + share log frozen) of two models'
    out-of-fold probabilities (N, C) each: what the robust score reads where adapted networks exist. Adapted
    networks are trained to put every image in some class, so the frozen probe keeps a share of the ranking and
    all of in_domain (RobustScore.domain)."""
    z = (1 - share) * np.log(np.clip(np.asarray(adapted, np.float64), CLIP, 1)) + share * np.log(
        np.clip(np.asarray(frozen, np.float64), CLIP, 1))
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def count_signals(x: np.ndarray) -> np.ndarray:
    """(N, 4) float64 the counting calibration's inputs from signals x (N, 3): noise_logit split at 0 into its
    positive and negative parts, then in_domain and label_logit. With equal weights on the two parts it is
    noise_logit itself; verdicts can flatten the part where the noise model says "wrong" (where it puts P(correct)
    at 0 for images a low-noise data set mostly labels right) without raising the count of the confident bulk."""
    x = np.asarray(x, np.float64).reshape(-1, len(SIGNALS))
    return np.column_stack([np.maximum(x[:, 0], 0), np.minimum(x[:, 0], 0), x[:, 1:]])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), CLIP, 1 - CLIP)
    return np.log(p) - np.log1p(-p)


def fit_weights(x: np.ndarray, is_correct: np.ndarray, *, scale: np.ndarray, prior_w=PRIOR_W,
                prior_b: float = PRIOR_B, strength: float | None = None, sample: np.ndarray | None = None,
                pseudo: float = 0.0) -> tuple[np.ndarray, float]:
    """MAP logistic regression of verdicts (M,) on signals x (M, F) around the prior, every weight >= 0.

    scale (F,): each signal's spread over the whole data set; the prior (precision `strength`, default STRENGTH) is
    on the weights times it, so a signal's weight moves as easily whatever its units. sample (S, F), pseudo > 0:
    the prior also counts like `pseudo` verdicts on the sample's images answered by the prior's own P(correct) (its
    mean cross-entropy on them times pseudo), which holds the flags over the bulk of the data set where they are,
    while the weights are free to follow the verdicts near the threshold. The constrained optimum is the best of
    the fits over subsets of weights held at 0 whose free weights all come out >= 0 (the loss is convex; F is
    small). No verdicts: the prior.
    """
    strength = STRENGTH if strength is None else strength
    x, y = np.asarray(x, np.float64).reshape(-1, len(prior_w)), np.asarray(is_correct, np.float64)
    scale = np.maximum(np.asarray(scale, np.float64), 1e-6)
    w0, b0 = np.asarray(prior_w, np.float64) * scale, float(prior_b)
    if len(y) == 0:
        return w0 / scale, b0
    x = x / scale
    anchor = None
    if sample is not None and pseudo > 0:
        xs = np.asarray(sample, np.float64).reshape(-1, len(prior_w)) / scale
        anchor = (xs, _sigmoid(xs @ w0 + b0), float(pseudo))
    best = None
    for free in itertools.product((True, False), repeat=len(w0)):
        cols = np.flatnonzero(free)
        part = None if anchor is None else (anchor[0][:, cols], anchor[1], anchor[2])
        w, b, loss = _map_logistic(x[:, cols], y, w0[cols], b0, strength, fixed=np.delete(w0, cols), anchor=part)
        if (w >= 0).all() and (best is None or loss < best[3] - 1e-12):
            best = (cols, w, b, loss)
        if best is not None and len(cols) == len(w0):
            break  # the unconstrained optimum is feasible
    cols, w, b, _ = best
    out = np.zeros(len(w0))
    out[cols] = w
    return out / scale, b


def fit_flag_weights(x: np.ndarray, is_correct: np.ndarray, sample: np.ndarray) -> tuple[np.ndarray, float]:
    """The flag score's weights from verdicts (M,) on signals x (M, 3): fit_weights around PRIOR_W, PRIOR_B, the
    prior counting like PSEUDO verdicts on the signals of a sample (S, 3) of the whole data set (at most
    ANCHOR_ROWS of its rows, a seeded draw, so a fit costs the same for any S), plus RIDGE."""
    sample = np.asarray(sample, np.float64)
    anchor = sample if len(sample) <= ANCHOR_ROWS else sample[
        np.sort(np.random.default_rng(0).choice(len(sample), ANCHOR_ROWS, replace=False))]
    return fit_weights(x, is_correct, scale=sample.std(axis=0), strength=RIDGE, sample=anchor, pseudo=PSEUDO)


def fit_count_weights(x: np.ndarray, is_correct: np.ndarray, sample: np.ndarray) -> tuple[np.ndarray, float]:
    """The counting calibration's weights (4,) and bias from verdicts (M,) on signals x (M, 3): fit_weights on
    count_signals around ESTIMATE_W, ESTIMATE_B with the pull STRENGTH, spreads from a sample (S, 3)."""
    return fit_weights(count_signals(x), is_correct, scale=count_signals(sample).std(axis=0), prior_w=ESTIMATE_W,
                       prior_b=ESTIMATE_B)


def _map_logistic(x: np.ndarray, y: np.ndarray, w0: np.ndarray, b0: float, strength: float, *,
                  fixed: np.ndarray, anchor: tuple | None = None) -> tuple[np.ndarray, float, float]:
    """-> (w, b, loss): summed log-loss + strength / 2 (|w - w0|^2 + (b - b0)^2 + |fixed|^2), the weights
    not in x held at 0 (their distance from the prior counts in the loss); anchor (xs (S, len(w)), targets (S,),
    pseudo): + pseudo x the mean cross-entropy of sigmoid(xs @ w + b) against the targets."""
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    w = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(b0, dtype=torch.float64, requires_grad=True)
    wt0 = torch.as_tensor(w0)
    xs, ts = (None, None) if anchor is None else (torch.as_tensor(anchor[0]), torch.as_tensor(anchor[1]))

    def loss_fn() -> torch.Tensor:
        nll = F.binary_cross_entropy_with_logits(xt @ w + b, yt, reduction="sum")
        if xs is not None:
            nll = nll + anchor[2] * F.binary_cross_entropy_with_logits(xs @ w + b, ts)
        return nll + strength / 2 * (((w - wt0) ** 2).sum() + (b - b0) ** 2 + float((fixed ** 2).sum()))

    loss = lbfgs([w, b], loss_fn, max_iter=200, tolerance_grad=1e-9, tolerance_change=1e-12)
    return w.detach().numpy().copy(), float(b.detach()), loss


def score_robust(rs: RobustScore, probs: np.ndarray, labels: np.ndarray, *,
                 valid_classes: np.ndarray | None = None, domain_probs: np.ndarray | None = None) -> Scores:
    """P(label correct) of every image and its counting P(label wrong) (`RobustScore.expected_wrong`) from
    probabilities probs (N, C) and noisy labels (N,) (domain_probs (N, C): the frozen probe's, for a score with a
    domain model); the suggestion is the best other class of probs."""
    labels = np.asarray(labels, np.int64)
    x = rs.signals(probs, labels, domain_probs)
    _, best, best_p = self_confidence(probs, labels, valid=valid_classes)
    has = np.isfinite(best_p)
    return Scores(score=rs(x).astype(np.float32), suggested=np.where(has, best, -1).astype(np.int64),
                  suggested_score=np.where(has, best_p, np.nan).astype(np.float32), expected_wrong=rs.expected_wrong(x))


def score_with_probe(rs: RobustScore, probe: Probe, features: np.ndarray, labels: np.ndarray, folds: np.ndarray, *,
                     valid_classes: np.ndarray | None = None, chunk: int = 131_072) -> Scores:
    """score_robust on the probe's out-of-fold probabilities, `chunk` rows at a time (the (N, C) probabilities
    never exist at once)."""
    labels, folds = np.asarray(labels, np.int64), np.asarray(folds, np.int64)
    parts = [score_robust(rs, probe.predict(features[s], folds[s]), labels[s], valid_classes=valid_classes)
             for s in (slice(i, i + chunk) for i in range(0, len(labels), chunk))]
    if not parts:
        return Scores(np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0))
    return Scores(*(np.concatenate([getattr(p, f) for p in parts])
                    for f in ("score", "suggested", "suggested_score", "expected_wrong")))


def fit_robust_score(probs: np.ndarray, labels: np.ndarray, verified_probs: np.ndarray, verified_labels: np.ndarray,
                     verified_ok: np.ndarray, *, domain: tuple[np.ndarray, np.ndarray] | None = None,
                     progress: Callable[[], None] | None = None) -> RobustScore:
    """The noise model read on out-of-fold probabilities probs (N, C) of images with noisy labels (N,), then the
    weights fitted on the verdicts: verified_probs (M, C), verified_labels (M,), verified_ok (M,) bool (True =
    label correct). domain: the frozen probe's probabilities of the same images and of the verified ones ((N, C),
    (M, C)), where probs are adapted networks': in_domain is read from their own noise model. progress: called
    once the noise model is fitted."""
    rs = RobustScore(fit_noise_model(probs, labels), np.asarray(PRIOR_W, np.float64), PRIOR_B,
                     domain=None if domain is None else fit_noise_model(domain[0], labels))
    if progress:
        progress()
    if len(verified_ok):
        d, dv = domain or (None, None)
        x, sample = rs.signals(verified_probs, verified_labels, dv), rs.signals(probs, labels, d)
        rs.w, rs.b = fit_flag_weights(x, verified_ok, sample)
        rs.est_w, rs.est_b = fit_count_weights(x, verified_ok, sample)
        rs.n_verdicts = len(verified_ok)
    return rs


def verdict_influence(rs: RobustScore, probs: np.ndarray, labels: np.ndarray, verified_probs: np.ndarray,
                      verified_labels: np.ndarray, verified_ok: np.ndarray, *, newest: float = NEWEST,
                      min_held: int = MIN_HELD, domain: tuple[np.ndarray, np.ndarray] | None = None
                      ) -> dict[int, dict]:
    """What each class's latest verdicts still teach the weights: per class c of the verdicts, the weights are
    refitted without c's newest `newest` share of them (verdicts (M,) oldest first, as fit_robust_score takes
    them) and the flags (score < DELTA) of the images probs (S, C), labels (S,) compared with rs's.

    -> {c: {"verdicts": n_c, "held": verdicts left out, "moved": images whose flag changed, "flagged": rs's flags}};
    classes with fewer than 2 * min_held verdicts are left out (domain: as fit_robust_score's). moved / flagged
    small: more verdicts in c no longer move the model (they still fix the images they judge)."""
    verified_labels, verified_ok = np.asarray(verified_labels, np.int64), np.asarray(verified_ok, bool)
    d, dv = domain or (None, None)
    x = rs.signals(probs, labels, d)
    xv = rs.signals(verified_probs, verified_labels, dv)
    flags = rs(x) < DELTA
    out = {}
    for c in np.unique(verified_labels):
        rows = np.flatnonzero(verified_labels == c)
        held = int(len(rows) * newest)
        if held < min_held:
            continue
        keep = np.ones(len(verified_ok), bool)
        keep[rows[-held:]] = False
        w, b = fit_flag_weights(xv[keep], verified_ok[keep], x)
        moved = int(((RobustScore(rs.noise, w, b, domain=rs.domain)(x) < DELTA) != flags).sum())
        out[int(c)] = {"verdicts": int(len(rows)), "held": held, "moved": moved, "flagged": int(flags.sum())}
    return out


@dataclass
class RobustFit:
    probe: Probe
    score: RobustScore
    scores: Scores              # with expected_wrong
    influence: dict[int, dict]  # verdict_influence on the noise model's sample


def fit_robust_scores(features: np.ndarray, labels: np.ndarray, folds: np.ndarray, num_classes: int,
                      verified_idx: np.ndarray, verified_ok: np.ndarray, *, valid_classes: np.ndarray | None = None,
                      fit_rows: np.ndarray | None = None, probe_config: ProbeConfig = ProbeConfig(), device="cpu",
                      probe: Probe | None = None, progress: Callable[[float], None] | None = None) -> RobustFit:
    """Probe -> noise model -> weights fitted on the verdicts -> every image's score.

    features (N, d), labels and folds (N,) ints; verified_idx (M,) rows with verdicts, oldest first, verified_ok
    (M,) bool (True = label correct); fit_rows (N,) bool: the images the probe and the noise model learn from
    (default all); probe: one fitted on these very features, labels and folds (it does not depend on the
    verdicts), else it is fitted.
    progress: called with the fraction done, the probe's training being the first PROBE_SHARE of it."""
    rows = np.ones(len(labels), bool) if fit_rows is None else np.asarray(fit_rows, bool)
    sub = slice(None) if rows.all() else rows
    report = progress or (lambda frac: None)
    if probe is None:
        probe = fit_probe(features[sub], labels[sub], folds[sub], num_classes, probe_config, device=device,
                          progress=lambda frac: report(PROBE_SHARE * frac))
    report(PROBE_SHARE)
    fit_idx = np.flatnonzero(rows)
    sample = fit_idx if len(fit_idx) <= 50_000 else np.sort(np.random.default_rng(0).choice(fit_idx, 50_000, False))
    v = np.asarray(verified_idx, np.int64)
    probs, verified_probs = probe.predict(features[sample], folds[sample]), probe.predict(features[v], folds[v])
    rs = fit_robust_score(probs, labels[sample], verified_probs, labels[v], verified_ok,
                          progress=lambda: report(PROBE_SHARE + 0.5 * (1 - PROBE_SHARE)))
    influence = verdict_influence(rs, probs, labels[sample], verified_probs, labels[v], verified_ok)
    return RobustFit(probe, rs, score_with_probe(rs, probe, features, labels, folds, valid_classes=valid_classes),
                     influence)
