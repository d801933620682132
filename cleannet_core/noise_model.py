"""P(label correct) without verdicts: out-of-fold probabilities read through a class-conditional noise model.

A probe trained on the noisy labels estimates q(x) = P(noisy label | x), not the true class. If images of true class j
are filed under class i with probability T[j, i] (the transition matrix) and some images belong to no class at all
(filed like the labels overall: row u), then q(x) = pi(x) @ [T; u], where pi(x) is the image's distribution over the
true classes and "none". Given q(x) and the rows, pi(x) is the maximum-likelihood mixture (EM), and by Bayes

    P(label i correct | x) = pi_i(x) T[i, i] / q_i(x)

so an image filed under a class that noise flows *into* (35 % of birds filed as airplane) is judged by how well "a
bird filed as airplane" explains its q, not by whether the probe prefers another class. No verdict is used:

- one temperature, fitted to the noisy labels, makes q calibrated for them;
- T's row j is the mean q of the images most confidently of class j (anchor points: the top 3 % of column j;
  Patrini et al., "Making deep neural networks robust to label noise", CVPR 2017);
- the EM runs per image on its K most probable classes (the label always among them), the other classes' mass
  lumped into one bin: exact for C <= K, cost O(N K^2) per iteration for any C.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .optim import lbfgs

EPS = 1e-12


@dataclass
class NoiseModel:
    temperature: float   # q = softmax(temperature * log probs)
    transition: np.ndarray  # (C, C) T[j, i] = P(filed under i | true class j); rows sum to 1
    open_row: np.ndarray    # (C,) how images of no class are filed (the label shares)

    def state(self) -> dict:
        return {"temperature": self.temperature, "transition": torch.as_tensor(self.transition),
                "open_row": torch.as_tensor(self.open_row)}

    @classmethod
    def from_state(cls, s: dict) -> "NoiseModel":
        return cls(float(s["temperature"]), np.asarray(s["transition"], np.float64),
                   np.asarray(s["open_row"], np.float64))

    def calibrate(self, probs: np.ndarray) -> np.ndarray:
        """(N, C) float64 q: probs (N, C) sharpened or softened by the temperature."""
        return torch.softmax(self.temperature * torch.log(torch.as_tensor(probs, dtype=torch.float64)
                                                          .clamp_min(EPS)), dim=1).numpy()

    def posterior(self, probs: np.ndarray, labels: np.ndarray, *, k: int = 16, iters: int = 100,
                  chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
        """(P(label correct) (N,), P(no class) (N,)) float64 of images with probe probabilities probs (N, C) and
        noisy labels (N,). Higher first value = label more likely correct."""
        labels = np.asarray(labels, np.int64)
        out_ok, out_open = np.empty(len(labels)), np.empty(len(labels))
        t = torch.as_tensor(self.transition, dtype=torch.float64)
        u = torch.as_tensor(self.open_row, dtype=torch.float64)
        for start in range(0, len(labels), chunk):
            sl = slice(start, start + chunk)
            q = torch.as_tensor(self.calibrate(probs[sl]))
            ok, op = _posterior(q, torch.as_tensor(labels[sl]), t, u, k=min(k, q.shape[1]), iters=iters)
            out_ok[sl], out_open[sl] = ok.numpy(), op.numpy()
        return out_ok, out_open


def fit_noise_model(probs: np.ndarray, labels: np.ndarray, *, percentile: float = 97.0,
                    max_rows: int = 50_000, seed: int = 0) -> NoiseModel:
    """The temperature, T and u from out-of-fold probabilities (N, C) and noisy labels (N,); at most `max_rows`
    images (a seeded sample) are used."""
    labels = np.asarray(labels, np.int64)
    c = probs.shape[1]
    rows = np.arange(len(labels)) if len(labels) <= max_rows else np.sort(
        np.random.default_rng(seed).choice(len(labels), max_rows, replace=False))
    p, y = np.asarray(probs[rows], np.float64), labels[rows]
    temperature = fit_temperature(p, y)
    model = NoiseModel(temperature, np.eye(c), np.bincount(labels, minlength=c) / max(len(labels), 1))
    q = model.calibrate(p)
    cut = np.percentile(q, percentile, axis=0)  # (C,)
    t = np.empty((c, c))
    for j in range(c):
        anchors = q[:, j] >= cut[j]
        t[j] = q[anchors].mean(axis=0) if anchors.any() else np.eye(c)[j]
    model.transition = t / t.sum(axis=1, keepdims=True)
    return model


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The t > 0 minimising the noisy labels' cross-entropy under softmax(t * log probs); probs (N, C)."""
    lp = torch.log(torch.as_tensor(probs, dtype=torch.float64).clamp_min(EPS))
    y = torch.as_tensor(np.asarray(labels, np.int64))
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    lbfgs([log_t], lambda: F.cross_entropy(lp * log_t.exp(), y), lr=0.5, max_iter=100, tolerance_grad=1e-7,
          tolerance_change=1e-9)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def _posterior(q: torch.Tensor, y: torch.Tensor, t: torch.Tensor, u: torch.Tensor, *, k: int,
               iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """EM for pi over the k most probable classes + "none", observing q on those k bins + the rest.

    q (n, C), y (n,), t (C, C), u (C,) -> (P(correct) (n,), P(none) (n,))."""
    n, c = q.shape
    rows = torch.arange(n)
    boosted = q.clone()
    boosted[rows, y] = 2.0                            # the label is always among the k classes
    top = boosted.topk(k, dim=1).indices              # (n, k), column 0 = the label
    obs = torch.gather(q, 1, top)                     # (n, k) observed mass on the k bins
    obs = torch.cat([obs, (1 - obs.sum(1, keepdim=True)).clamp_min(0)], dim=1)  # (n, k + 1) + the rest
    rk = t[top[:, :, None], top[:, None, :]]          # (n, k, k) T among the k classes
    ru = u[top]                                       # (n, k) the "none" row on the k bins
    comp = torch.cat([rk, ru[:, None, :]], dim=1)     # (n, k + 1, k) components x bins
    comp = torch.cat([comp, (1 - comp.sum(2, keepdim=True)).clamp_min(0)], dim=2)  # (n, k + 1, k + 1)
    pi = torch.full((n, k + 1), 1.0 / (k + 1), dtype=q.dtype)
    for _ in range(iters):
        mix = torch.einsum("nc,ncb->nb", pi, comp).clamp_min(EPS)   # (n, k + 1) model of obs
        pi = pi * torch.einsum("ncb,nb->nc", comp, obs / mix)
        pi = pi / pi.sum(1, keepdim=True).clamp_min(EPS)
    mix = torch.einsum("nc,ncb->nb", pi, comp).clamp_min(EPS)
    p_ok = pi[:, 0] * t[y, y] / mix[:, 0]
    return p_ok.clamp(0, 1), pi[:, k]
