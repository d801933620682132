"""Transfer to classes nobody verified: class-agnostic signals + a calibrator fitted on the verified classes.

The paper's CleanNet learns relevance from verdicts, but what it learns on the verified classes hardly
carries over to the others (benchmarks/README.md). The signals below describe how an
image sits relative to its noisy class *without naming the class*, so a calibrator fitted on verdicts of some
classes applies unchanged to every other class. Score direction everywhere: higher = label more likely correct.

    probe_logodds    log p / (1 - p), p = out-of-fold probe probability of the noisy label (probe.py)
    probe_margin     p - the best other class's probe probability
    proto_margin     cos(log q, class prototype) minus the best other class's; prototype = mean of the class's
                     normalised log reference vectors (the CleanNet reference set, no training at all)
    cleannet         r(q, c): the paper's CleanNet relevance to the noisy class c
    cleannet_margin  r(q, c) - max_{c' != c} r(q, c')
    z_cleannet       cleannet standardised within the noisy class over all its images

The product's default score ("transfer") is P(label correct) from a monotone logistic calibrator (every weight
>= 0: no signal may rank against its known direction) over DEFAULT_SIGNALS fitted on the live verdicts,
flagged below 0.5. DEFAULT_SIGNALS are the probe's log-odds and margin: a threshold on the prototype margin or
the log-odds learnt on the verified classes carries class-specific offsets to the others, while the probe
margin's natural threshold (another class preferred) does not depend on the class (benchmarks/README.md,
"Which signals", measures the signal sets). With fewer than `min_each` verdicts of either kind, or when no
signal ranks the verdicts the right way round (every weight 0), it falls back to the verdict-free rule "the
probe prefers another class": score (1 + probe_margin) / 2, also flagged below 0.5.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .model import CleanNet
from .optim import lbfgs
from .probe import Probe, ProbeConfig, fit_probe, self_confidence
from .score import Scores

DEFAULT_SIGNALS = ("probe_logodds", "probe_margin")
CLEANNET_SIGNALS = ("cleannet", "cleannet_margin", "z_cleannet")
DELTA = 0.5  # a calibrated probability is flagged below one half
MIN_EACH = 2  # verdicts of each kind (correct, wrong) the calibrator needs; fewer: the verdict-free fallback


@torch.inference_mode()
def proto_margin(features: np.ndarray, labels: np.ndarray, refs: np.ndarray, *,
                 valid_classes: np.ndarray | None = None, batch_size: int = 65_536) -> np.ndarray:
    """(N,) float64 prototype cosine to the noisy class minus the best other valid class (0 for a lone class).

    features (N, d) raw, labels (N,), refs (C, K, d) raw; classes with all-zero references are never "other".
    """
    refs_t = torch.as_tensor(refs, dtype=torch.float32)
    proto = F.normalize(F.normalize(torch.log1p(refs_t.clamp_min(0)), dim=2).mean(dim=1), dim=1)  # (C, d)
    ok = torch.as_tensor(np.abs(refs).sum(axis=(1, 2)) > 0 if valid_classes is None
                         else np.asarray(valid_classes, bool))
    out = np.empty(len(labels), dtype=np.float64)
    for start in range(0, len(labels), batch_size):
        sl = slice(start, start + batch_size)
        x = F.normalize(torch.log1p(torch.as_tensor(features[sl]).float().clamp_min(0)), dim=1)
        own, other = _own_and_best_other(x @ proto.T, torch.as_tensor(labels[sl], dtype=torch.long), ok)
        out[sl] = (own - other).double().numpy()
    return out


@torch.inference_mode()
def cleannet_signals(model: CleanNet, features: np.ndarray, labels: np.ndarray, refs: np.ndarray, *,
                     valid_classes: np.ndarray | None = None, batch_size: int = 65_536) -> np.ndarray:
    """(N, 3) float64: CLEANNET_SIGNALS of each image. Runs on the model's device."""
    labels = np.asarray(labels, dtype=np.int64)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    phi_s = model.class_embeddings(torch.as_tensor(refs, device=device, dtype=torch.float32))  # (C, 128)
    ok = torch.as_tensor(np.ones(len(refs), bool) if valid_classes is None else np.asarray(valid_classes, bool),
                         device=device)
    out = np.empty((len(labels), 3), dtype=np.float64)
    for start in range(0, len(labels), batch_size):
        sl = slice(start, start + batch_size)
        r = model.query_embeddings(torch.as_tensor(features[sl], device=device).float()) @ phi_s.T   # (b, C)
        own, other = _own_and_best_other(r, torch.as_tensor(labels[sl], device=device), ok)
        out[sl, 0], out[sl, 1] = own.double().cpu().numpy(), (own - other).double().cpu().numpy()
    model.train(was_training)
    out[:, 2] = standardise_within(out[:, 0], labels)
    return out


def probe_signals(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N, 2) float64 probe_logodds (p clipped to [1e-6, 1 - 1e-6]) and probe_margin from probs (N, C)."""
    own, _, other = self_confidence(probs, labels)
    p = np.clip(own.astype(np.float64), 1e-6, 1 - 1e-6)
    return np.stack([np.log(p) - np.log1p(-p), own.astype(np.float64) - other], axis=1)


def signal_matrix(names: tuple[str, ...], labels: np.ndarray, *, probs: np.ndarray | None = None,
                  features: np.ndarray | None = None, refs: np.ndarray | None = None,
                  model: CleanNet | None = None, valid_classes: np.ndarray | None = None) -> np.ndarray:
    """(N, len(names)) the named signals; computes only the groups the names need."""
    cols: dict[str, np.ndarray] = {}
    if {"probe_logodds", "probe_margin"} & set(names):
        cols |= dict(zip(("probe_logodds", "probe_margin"), probe_signals(probs, labels).T))
    if "proto_margin" in names:
        cols["proto_margin"] = proto_margin(features, labels, refs, valid_classes=valid_classes)
    if set(CLEANNET_SIGNALS) & set(names):
        cols |= dict(zip(CLEANNET_SIGNALS, cleannet_signals(model, features, labels, refs,
                                                            valid_classes=valid_classes).T))
    unknown = set(names) - set(cols)
    if unknown:
        raise ValueError(f"unknown signals {sorted(unknown)}")
    return np.stack([cols[n] for n in names], axis=1)


def _own_and_best_other(m: torch.Tensor, y: torch.Tensor, other_ok: torch.Tensor) -> tuple[torch.Tensor, ...]:
    rows = torch.arange(y.numel(), device=m.device)
    own = m[rows, y]
    masked = m.masked_fill(~other_ok, -torch.inf)
    masked[rows, y] = -torch.inf
    best = masked.amax(dim=1)
    return own, torch.where(torch.isfinite(best), best, own)  # a lone class has margin 0


def standardise_within(v: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(v - mean) / std computed separately over the images of each noisy class (std floor 1e-6)."""
    out = np.zeros_like(v, dtype=np.float64)
    for c in np.unique(labels):
        m = labels == c
        out[m] = (v[m] - v[m].mean()) / max(v[m].std(), 1e-6)
    return out


@dataclass
class Calibrator:
    """P(label correct | signals) = sigmoid(((X - mean) / std) @ w + b); fitted with w >= 0 it never decreases
    when a signal grows."""
    mean: np.ndarray  # (F,)
    std: np.ndarray   # (F,)
    w: np.ndarray     # (F,)
    b: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, np.float64) - self.mean) / self.std @ self.w + self.b
        return 1.0 / (1.0 + np.exp(-z))

    def state(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "w": self.w.tolist(), "b": self.b}

    @classmethod
    def from_state(cls, s: dict) -> "Calibrator":
        return cls(np.array(s["mean"]), np.array(s["std"]), np.array(s["w"]), float(s["b"]))


def fit_calibrator(x: np.ndarray, is_correct: np.ndarray, *, l2: float = 1.0, monotone: bool = True) -> Calibrator:
    """L2-regularised logistic regression (L-BFGS) of verdicts (M,) on signals (M, F).

    Standardisation uses the signals' own mean/std over the M verdicts; loss = mean log-loss
    + l2 / (2 M) * |w|^2 (the bias is not penalised). With verdicts of one kind only, w = 0 and
    b = the log-odds of the (smoothed) rate.

    monotone (default): every weight is constrained to w >= 0, because every signal's direction is known
    (higher = label more likely correct). A few dozen verdicts drawn near the decision boundary can make two
    correlated signals look opposed by chance; unconstrained, the fit then ranks part of the images backwards.
    The constrained optimum is exact: the loss is convex, so it is the best of the unconstrained fits over
    subsets of the signals (the rest held at 0) whose weights all come out >= 0 (2^F fits at most, F is small).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(is_correct, np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise ValueError(f"need signals (M, F) and verdicts (M,), got {x.shape} and {y.shape}")
    mean, std = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-6)
    rate = (y.sum() + 1) / (y.size + 2)
    if y.min() == y.max():
        return Calibrator(mean, std, np.zeros(x.shape[1]), float(np.log(rate / (1 - rate))))
    xs = (x - mean) / std
    w, b, _ = _fit_logistic(xs, y, l2=l2, b0=float(np.log(rate / (1 - rate))))
    if monotone and (w < 0).any():
        best = None
        for subset in itertools.product((False, True), repeat=x.shape[1]):
            cols = np.flatnonzero(subset)
            ws, bs, loss = _fit_logistic(xs[:, cols], y, l2=l2, b0=b)
            if (ws >= 0).all() and (best is None or loss < best[3]):
                best = (cols, ws, bs, loss)
        cols, ws, b, _ = best  # the empty subset (w = 0) is always feasible
        w = np.zeros(x.shape[1])
        w[cols] = ws
    return Calibrator(mean, std, w, b)


def _fit_logistic(xs: np.ndarray, y: np.ndarray, *, l2: float, b0: float) -> tuple[np.ndarray, float, float]:
    """-> (w (F,), b, loss) minimising mean log-loss + l2 / (2 M) |w|^2 on standardised xs (M, F)."""
    xt, yt = torch.as_tensor(xs), torch.as_tensor(y)
    w = torch.zeros(xs.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.tensor(b0, dtype=torch.float64, requires_grad=True)

    def loss_fn() -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(xt @ w + b, yt) + l2 / (2 * len(y)) * (w * w).sum()

    loss = lbfgs([w, b], loss_fn)
    return w.detach().numpy().copy(), float(b.detach()), loss


@dataclass
class TransferScore:
    """The default score: a calibrator over `signals`, or (calibrator None) the verdict-free fallback
    (1 + probe_margin) / 2 with signals = ('probe_margin',). Call it on signal_matrix(self.signals, ...)."""
    signals: tuple[str, ...]
    calibrator: Calibrator | None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(N,) P(label correct) from the signals (N, len(self.signals))."""
        return self.calibrator(x) if self.calibrator is not None else (1.0 + np.asarray(x)[:, 0]) / 2.0

    def state(self) -> dict:
        return {"signals": list(self.signals), "calibrator": self.calibrator.state() if self.calibrator else None}

    @classmethod
    def from_state(cls, s: dict) -> "TransferScore":
        cal = s.get("calibrator")
        return cls(tuple(s["signals"]), Calibrator.from_state(cal) if cal else None)


def fit_transfer(x: np.ndarray, is_correct: np.ndarray, signals: tuple[str, ...] = DEFAULT_SIGNALS, *,
                 min_each: int = MIN_EACH, l2: float = 1.0) -> TransferScore:
    """Monotone calibrator on the verdicts' signals x (M, len(signals)), or the fallback when fewer than
    `min_each` verdicts of either kind exist (then x is not used) or when every fitted weight is 0."""
    y = np.asarray(is_correct, bool)
    if min(int(y.sum()), int((~y).sum())) < min_each:
        return TransferScore(("probe_margin",), None)
    cal = fit_calibrator(x, y, l2=l2)
    if not cal.w.any():  # no signal ranks the verdicts the right way round: a constant would flag all or nothing
        return TransferScore(("probe_margin",), None)
    return TransferScore(tuple(signals), cal)


def score_transfer(ts: TransferScore, labels: np.ndarray, *, probs: np.ndarray, features: np.ndarray,
                   refs: np.ndarray, valid_classes: np.ndarray | None = None) -> Scores:
    """Scores of every image: P(label correct) under `ts`; the suggestion is the probe's best other valid class.

    probs (N, C) out-of-fold probe probabilities, features (N, d), refs (C, K, d), labels (N,).
    """
    labels = np.asarray(labels, np.int64)
    score = ts(signal_matrix(ts.signals, labels, probs=probs, features=features, refs=refs,
                             valid_classes=valid_classes)).astype(np.float32)
    _, best, best_p = self_confidence(probs, labels, valid=valid_classes)
    has = np.isfinite(best_p)
    return Scores(score=score, suggested=np.where(has, best, -1).astype(np.int64),
                  suggested_score=np.where(has, best_p, np.nan).astype(np.float32))


def score_with_probe(ts: TransferScore, probe: Probe, features: np.ndarray, labels: np.ndarray,
                     folds: np.ndarray, refs: np.ndarray, *, valid_classes: np.ndarray | None = None,
                     chunk: int = 131_072) -> Scores:
    """score_transfer on the probe's out-of-fold probabilities, `chunk` rows at a time: the (N, C)
    probabilities never exist at once (10M images x 1,000 classes would be 40 GB). Shapes as score_transfer."""
    labels, folds = np.asarray(labels, np.int64), np.asarray(folds, np.int64)
    parts = []
    for start in range(0, len(labels), chunk):
        sl = slice(start, start + chunk)
        parts.append(score_transfer(ts, labels[sl], probs=probe.predict(features[sl], folds[sl]),
                                    features=features[sl], refs=refs, valid_classes=valid_classes))
    if not parts:
        return Scores(np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))
    return Scores(*(np.concatenate([getattr(p, f) for p in parts])
                    for f in ("score", "suggested", "suggested_score")))


@dataclass
class TransferFit:
    probe: Probe          # the k fold models (predict with the same folds to score new images)
    score: TransferScore  # the calibrator, or the fallback when the verdicts were too one-sided
    scores: Scores        # every image's score and suggestion


def fit_transfer_scores(features: np.ndarray, labels: np.ndarray, folds: np.ndarray, num_classes: int,
                        refs: np.ndarray, verified_idx: np.ndarray, verified_ok: np.ndarray, *,
                        valid_classes: np.ndarray | None = None, fit_rows: np.ndarray | None = None,
                        probe_config: ProbeConfig = ProbeConfig.early_stopped(), device="cpu",
                        progress: Callable[[float], None] | None = None) -> TransferFit:
    """The whole default score: out-of-fold probe -> signals of the verified images -> calibrator -> scores.

    features (N, d), labels and folds (N,) ints, refs (C, K, d); verified_idx (M,) indices with verified_ok (M,)
    bool verdicts; fit_rows (N,) bool: the images the probe trains on (default all, e.g. not the unreadable);
    progress: called with the probe's fraction done (the step that takes the time).
    """
    rows = np.ones(len(labels), bool) if fit_rows is None else np.asarray(fit_rows, bool)
    sub = slice(None) if rows.all() else rows  # a boolean index would copy all N rows
    probe = fit_probe(features[sub], labels[sub], folds[sub], num_classes, probe_config, device=device,
                      progress=progress)
    v = np.asarray(verified_idx, np.int64)
    x = signal_matrix(DEFAULT_SIGNALS, labels[v], probs=probe.predict(features[v], folds[v]), features=features[v],
                      refs=refs, valid_classes=valid_classes)
    ts = fit_transfer(x, verified_ok)
    return TransferFit(probe, ts, score_with_probe(ts, probe, features, labels, folds, refs,
                                                   valid_classes=valid_classes))
