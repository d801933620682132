"""CleanNet's per-sample losses, exactly as the official code (spec §4.1).

s: (B,) cosine relevance; l: (B,) verification label in {0, 1} (1 = noisy label correct).
"""
from __future__ import annotations

import torch

MARGIN = 0.1            # m, hard-coded in the official losses.py
PSEUDO_THRESHOLD = 0.1  # pseudo-label threshold, hard-coded and independent of delta


def verification_loss(s: torch.Tensor, l: torch.Tensor, *, neg_weight: float = 5.0,
                      margin: float = MARGIN) -> torch.Tensor:
    """L_cos = l (1 - s) + w (1 - l) max(0, s - m), per sample (B,)."""
    l = l.to(s.dtype)
    return l * (1 - s) + neg_weight * (1 - l) * torch.clamp(s - margin, min=0)


def reconstruction_loss(v: torch.Tensor, v_hat: torch.Tensor) -> torch.Tensor:
    """L_r = sum_j (v_j - v_hat_j)^2: a sum over the d dimensions, not a mean. (B, d) -> (B,)."""
    return ((v - v_hat) ** 2).sum(dim=1)


def pseudo_label_loss(s: torch.Tensor, *, neg_weight: float = 5.0) -> torch.Tensor:
    """L_unsup = L_cos(s, 1[s >= 0.1]) with the pseudo label a constant (no gradient), per sample (B,).

    Since threshold == margin, pseudo-negatives contribute 0, so this equals 1[s >= 0.1] (1 - s).
    """
    l_hat = (s.detach() >= PSEUDO_THRESHOLD).to(s.dtype)
    return verification_loss(s, l_hat, neg_weight=neg_weight)


def cleannet_loss(s: torch.Tensor, l: torch.Tensor, f: torch.Tensor, v: torch.Tensor, v_hat: torch.Tensor, *,
                  neg_weight: float = 5.0, beta: float = 0.1, gamma: float = 0.1) -> torch.Tensor:
    """Mean over the batch of f L_cos(s, l) + beta L_r + gamma (1 - f) L_unsup(s).

    f: (B,) 1 for verified samples, 0 for samples from the unverified pool. Returns a scalar.
    Weight decay is not part of this: the optimiser applies it to the weight matrices only (§10).
    """
    f = f.to(s.dtype)
    per_sample = (f * verification_loss(s, l, neg_weight=neg_weight)
                  + beta * reconstruction_loss(v, v_hat)
                  + gamma * (1 - f) * pseudo_label_loss(s, neg_weight=neg_weight))
    return per_sample.mean()
