"""Out-of-fold linear probe: p(class | features) for every image from a model that never saw its label.

The features come from a backbone trained on the noisy labels, so the backbone's own softmax has memorised
many wrong labels. A multinomial logistic regression fitted on k - 1 folds and applied to the k-th gives each
image a probability of its noisy label that its own label did not shape (cleanlab's "out-of-fold
self-confidence", the strongest verdict-free signal on our benchmark). Folds are given by the caller
(the app uses image id % k, so rescoring a new image later uses a model that never saw it either).

    probe = fit_probe(features, labels, folds, num_classes)     # k models
    probs = probe.predict(features, folds)                      # (N, C), image i by the model of folds[i]
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ProbeConfig:
    """The default: an L2-penalised logistic regression trained close to its optimum in a fixed number of steps,
    so the fit means the same thing at 2,000 images and at 100,000 (the penalty, not the data set's size, keeps
    it from fitting the wrong labels). `early_stopped()` is the `transfer` method's probe (3 epochs, AdamW)."""
    folds: int = 5
    steps: int | None = 300     # per fold, whatever the number of images; None: `epochs` passes instead
    epochs: int = 3             # passes over each fold's training images when steps is None (cosine LR to 0)
    batch_size: int = 1024
    lr: float = 1e-2
    l2: float = 0.3             # loss = mean cross-entropy + l2 / 2 * |w|^2 on standardised log features
    weight_decay: float = 0.0   # AdamW's decoupled decay on the weights (not the biases)
    max_rows: int = 100_000     # the fit sees at most this many images (a seeded sample); more cost only scoring
    max_steps: int = 2_500      # per fold; with max_rows, bounds the fit's cost whatever the number of images
    seed: int = 0

    @classmethod
    def early_stopped(cls, **kw) -> "ProbeConfig":
        """3 epochs of AdamW (weight decay 1e-3, LR 3e-3, batch 512), no penalty: the `transfer` method's probe."""
        return cls(**({"steps": None, "epochs": 3, "batch_size": 512, "lr": 3e-3, "l2": 0.0,
                       "weight_decay": 1e-3} | kw))


@dataclass
class Probe:
    """k linear models on standardised log features: logits = ((log1p(relu(x)) - mean) / std) @ w + b."""
    mean: torch.Tensor   # (k, d)
    std: torch.Tensor    # (k, d)
    w: torch.Tensor      # (k, d, C)
    b: torch.Tensor      # (k, C)
    history: list[float] = field(default_factory=list)  # last epoch's mean training loss, per fold

    @torch.inference_mode()
    def predict(self, features: np.ndarray, folds: np.ndarray, *, batch_size: int = 16_384) -> np.ndarray:
        """(N, C) float32 probabilities; row i comes from model folds[i] % k.

        The standardisation is folded into each model's weights (log1p(x) @ (w / std) + b - (mean / std) @ w),
        so each row costs one log1p and one matrix product."""
        k = self.w.shape[0]
        folds = np.asarray(folds, np.int64) % k
        out = np.empty((len(features), self.w.shape[2]), dtype=np.float32)
        dev = self.w.device
        w = self.w / self.std[:, :, None]
        b = self.b - torch.einsum("kd,kdc->kc", self.mean, w)
        for f in range(k):
            idx = np.flatnonzero(folds == f)
            for start in range(0, len(idx), batch_size):
                part = idx[start:start + batch_size]
                x = torch.log1p(torch.as_tensor(features[part], device=dev).float().clamp_min_(0))
                out[part] = torch.softmax(x @ w[f] + b[f], dim=1).cpu().numpy()
        return out

    def state(self) -> dict:
        return {"mean": self.mean.cpu(), "std": self.std.cpu(), "w": self.w.cpu(), "b": self.b.cpu()}

    @classmethod
    def from_state(cls, s: dict, device: str | torch.device = "cpu") -> "Probe":
        return cls(*(torch.as_tensor(s[key]).to(device) for key in ("mean", "std", "w", "b")))


def fit_rows(n: int, config: ProbeConfig) -> np.ndarray:
    """(M,) sorted indices of the images the probe fits on: all n, or a seeded sample of config.max_rows."""
    if n <= config.max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(config.seed).choice(n, config.max_rows, replace=False))


def _log_features(features: np.ndarray, rows: np.ndarray, dev: torch.device, chunk: int = 65_536) -> torch.Tensor:
    """(M, d) float32 log1p(relu(features[rows])) on dev."""
    out = torch.empty((len(rows), features.shape[1]), dtype=torch.float32, device=dev)
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        x = features[part] if len(rows) < len(features) else features[part[0]:part[-1] + 1]
        out[start:start + len(part)] = torch.log1p(torch.as_tensor(x).to(dev).float().clamp_min_(0))
    return out


def _moments(x: torch.Tensor, chunk: int = 65_536) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (floor 1e-3) per dimension of x (M, d), summed in float64 chunks. (d,), (d,)"""
    s1 = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    s2 = torch.zeros_like(s1)
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk].double()
        s1 += part.sum(0)
        s2 += (part * part).sum(0)
    n = max(len(x), 1)
    mean = s1 / n
    var = (s2 / n - mean * mean).clamp_min(0) * n / max(n - 1, 1)
    return mean.float(), var.sqrt().float().clamp_min(1e-3)


def fit_probe(features: np.ndarray, labels: np.ndarray, folds: np.ndarray, num_classes: int,
              config: ProbeConfig = ProbeConfig(), device: str | torch.device = "cpu",
              progress: Callable[[float], None] | None = None) -> Probe:
    """Fit one probe per fold f on the images with folds % k != f. features (N, d), labels/folds (N,) int.

    Past config.max_rows images the folds are fitted on a seeded sample (`fit_rows`) and at most
    config.max_steps steps each, so the fit costs the same at 100k or 10M images; predict scores all of them.
    progress, when given, is called with the fraction done in (0, 1] every 100 steps and after each fold."""
    labels = np.asarray(labels, np.int64)
    folds = np.asarray(folds, np.int64) % config.folds
    if features.shape[0] != labels.shape[0] or labels.shape != folds.shape:
        raise ValueError(f"features {features.shape}, labels {labels.shape}, folds {folds.shape} disagree")
    d, k = features.shape[1], config.folds
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(config.seed)
    means, stds, ws, bs, hist = [], [], [], [], []
    rows = fit_rows(len(labels), config)
    base = _log_features(features, rows, dev)
    labels, folds = labels[rows], folds[rows]
    y_all = torch.as_tensor(labels, device=dev)
    for f in range(k):
        train = torch.as_tensor(np.flatnonzero(folds != f) if k > 1 else np.arange(len(labels)), device=dev)
        x, y = base[train], y_all[train]
        mean, std = _moments(x)
        x.sub_(mean).div_(std)  # (M_f, d) standardised once per fold, in place
        w = torch.zeros(d, num_classes, device=dev, requires_grad=True)
        prior = torch.bincount(y, minlength=num_classes).float() + 1.0
        b = torch.log(prior / prior.sum()).requires_grad_(True)  # start at the class prior
        opt = torch.optim.AdamW([{"params": [w], "weight_decay": config.weight_decay},
                                 {"params": [b], "weight_decay": 0.0}], lr=config.lr)
        per_epoch = max(1, math.ceil(len(train) / config.batch_size))
        steps = min(config.steps or config.epochs * per_epoch, config.max_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
        for step in range(steps):
            if step % per_epoch == 0:
                order = torch.randperm(len(train), generator=gen).to(dev)
                total, count = torch.zeros((), device=dev), 0  # last epoch's loss, summed without a sync
            i = order[(step % per_epoch) * config.batch_size:(step % per_epoch + 1) * config.batch_size]
            loss = F.cross_entropy(x[i] @ w + b, y[i])
            if config.l2:
                loss = loss + config.l2 / 2 * (w * w).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, count = total + loss.detach(), count + 1
            if progress and (step + 1) % 100 == 0 and step + 1 < steps:
                progress((f + (step + 1) / steps) / k)
        if progress:
            progress((f + 1) / k)
        del x
        means.append(mean), stds.append(std), ws.append(w.detach()), bs.append(b.detach())
        hist.append(float(total) / max(count, 1))
    return Probe(torch.stack(means), torch.stack(stds), torch.stack(ws), torch.stack(bs), hist)


def self_confidence(probs: np.ndarray, labels: np.ndarray, *, valid: np.ndarray | None = None,
                    chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p of the noisy label, best other class, its p), each (N,), from probs (N, C).

    valid (C,) bool: classes that may be the best other one (its p is -inf when none may). Works on chunks of
    rows, so it never copies the whole (N, C) array.
    """
    labels = np.asarray(labels, np.int64)
    n = len(labels)
    own = np.empty(n, dtype=probs.dtype)
    best = np.empty(n, dtype=np.int64)
    best_p = np.empty(n, dtype=probs.dtype)
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        other = np.array(probs[sl], copy=True)
        rows, y = np.arange(other.shape[0]), labels[sl]
        own[sl] = other[rows, y]
        if valid is not None:
            other[:, ~np.asarray(valid, bool)] = -np.inf
        other[rows, y] = -np.inf
        best[sl] = other.argmax(axis=1)
        best_p[sl] = other[rows, best[sl]]
    return own, best, best_p
