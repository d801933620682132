"""Transfer to classes nobody verified: class-agnostic signals + a calibrator learned on verified classes.

The paper's CleanNet learns relevance from verdicts, but on our benchmark (issue 6, benchmarks/README.md)
what it learns on the verified classes hardly carries over to the others. The signals below describe how an
image sits relative to its noisy class *without naming the class*, so a model fitted on verdicts of some
classes applies unchanged to every other class:

    cleannet         r(q, c): CleanNet relevance to the noisy class c
    cleannet_margin  r(q, c) - max_{c' != c} r(q, c')
    proto            cos(log q, mean of class c's log references)  (no training at all)
    proto_margin     proto to c minus the best other class
    nearref_margin   cos to c's nearest reference minus cos to the nearest reference of any other class
    z_cleannet       cleannet standardised within class c over all its images (per-class calibration)
    z_proto_margin   proto_margin standardised within class c

A logistic regression on these (standardised) signals, fitted on the verdicts, gives P(label correct); it
is the product's default score ("transfer"). The paper's relevance stays available ("paper").
Score direction everywhere: higher = the noisy label is more likely correct.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .model import CleanNet

SIGNALS = ("cleannet", "cleannet_margin", "proto", "proto_margin", "nearref_margin", "z_cleannet", "z_proto_margin")


@torch.inference_mode()
def agnostic_signals(model: CleanNet, features: np.ndarray, labels: np.ndarray, refs: np.ndarray, *,
                     valid_classes: np.ndarray | None = None, batch_size: int = 8192) -> np.ndarray:
    """(N, len(SIGNALS)) float64 class-agnostic signals of each image w.r.t. its noisy class.

    features: (N, d) raw; labels: (N,) int in [0, C); refs: (C, K, d) raw; valid_classes: (C,) bool classes
    that count as "other" classes (e.g. those with images). Runs on the model's device.
    """
    labels = np.asarray(labels, dtype=np.int64)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    refs_t = torch.as_tensor(refs, device=device, dtype=torch.float32)
    phi_s = model.class_embeddings(refs_t)                                     # (C, 128)
    r_log = F.normalize(torch.log1p(refs_t.clamp_min(0)), dim=2)               # (C, K, d)
    proto = F.normalize(r_log.mean(dim=1), dim=1)                              # (C, d)
    other_ok = (torch.ones(refs.shape[0], dtype=torch.bool, device=device) if valid_classes is None
                else torch.as_tensor(np.asarray(valid_classes, bool), device=device))
    out = np.empty((len(labels), len(SIGNALS)), dtype=np.float64)
    for start in range(0, len(labels), batch_size):
        sl = slice(start, start + batch_size)
        q = torch.as_tensor(features[sl], device=device).float()
        y = torch.as_tensor(labels[sl], device=device)
        x = F.normalize(torch.log1p(q.clamp_min(0)), dim=1)                     # (b, d)
        mats = [model.query_embeddings(q) @ phi_s.T,                           # (b, C) CleanNet relevance
                x @ proto.T,                                                    # (b, C) prototype cosine
                torch.einsum("bd,ckd->bck", x, r_log).amax(dim=2)]              # (b, C) nearest reference
        cols = []
        for m in mats:
            own, best_other = _own_and_best_other(m, y, other_ok)
            cols.append((own, own - best_other))
        (cn, cn_m), (pr, pr_m), (_, nr_m) = cols
        out[sl, :5] = torch.stack([cn, cn_m, pr, pr_m, nr_m], dim=1).double().cpu().numpy()
    model.train(was_training)
    out[:, 5] = _standardise_within(out[:, 0], labels)
    out[:, 6] = _standardise_within(out[:, 3], labels)
    return out


def _own_and_best_other(m: torch.Tensor, y: torch.Tensor, other_ok: torch.Tensor) -> tuple[torch.Tensor, ...]:
    rows = torch.arange(y.numel(), device=m.device)
    own = m[rows, y]
    masked = m.masked_fill(~other_ok, -torch.inf)
    masked[rows, y] = -torch.inf
    best = masked.amax(dim=1)
    return own, torch.where(torch.isfinite(best), best, own)  # a lone class has margin 0


def _standardise_within(v: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(v - mean) / std computed separately over the images of each noisy class (std floor 1e-6)."""
    out = np.zeros_like(v)
    for c in np.unique(labels):
        m = labels == c
        out[m] = (v[m] - v[m].mean()) / max(v[m].std(), 1e-6)
    return out


@dataclass
class Calibrator:
    """P(label correct | signals) = sigmoid(((X - mean) / std) @ w + b)."""
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


def fit_calibrator(x: np.ndarray, is_correct: np.ndarray, *, l2: float = 1.0) -> Calibrator:
    """L2-regularised logistic regression (L-BFGS) of verdicts (M,) on signals (M, F).

    Standardisation uses the signals' own mean/std over the M verdicts; loss = mean log-loss
    + l2 / (2 M) * |w|^2 (the bias is not penalised). With verdicts of one kind only, w = 0 and
    b = the log-odds of the (smoothed) rate.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(is_correct, np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise ValueError(f"need signals (M, F) and verdicts (M,), got {x.shape} and {y.shape}")
    mean, std = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-6)
    rate = (y.sum() + 1) / (y.size + 2)
    if y.min() == y.max():
        return Calibrator(mean, std, np.zeros(x.shape[1]), float(np.log(rate / (1 - rate))))
    xt = torch.as_tensor((x - mean) / std)
    yt = torch.as_tensor(y)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.tensor(float(np.log(rate / (1 - rate))), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xt @ w + b, yt) + l2 / (2 * len(y)) * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return Calibrator(mean, std, w.detach().numpy().copy(), float(b.detach()))
