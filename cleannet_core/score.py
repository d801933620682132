"""Scoring every image with a trained CleanNet, and the classifier weights derived from it (spec §5, §6).

Class embeddings are computed once for all classes, so scoring N images is one (N, 128) x (128, C) product,
not N attention passes. Relevance in [-1, 1]; higher = the noisy label is more likely correct.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .model import CleanNet


@dataclass
class Scores:
    score: np.ndarray            # (N,) float32 relevance to the image's own noisy class
    suggested: np.ndarray        # (N,) int64 best-matching *other* class (relabel suggestion), -1 if none
    suggested_score: np.ndarray  # (N,) float32 its relevance
    expected_wrong: np.ndarray | None = None  # (N,) float64 P(label wrong) for counting wrong labels (the robust
                                              # score's counting calibration); None: the method has none


@torch.inference_mode()
def score_images(model: CleanNet, features: np.ndarray, labels: np.ndarray, refs: np.ndarray, *,
                 valid_classes: np.ndarray | None = None, batch_size: int = 65_536,
                 progress=None) -> Scores:
    """Relevance of every image to its noisy class, and the best other class.

    features: (N, d) raw; labels: (N,) int in [0, C); refs: (C, K, d) raw reference vectors;
    valid_classes: (C,) bool, classes that may be suggested (e.g. those with images). `progress`, if given,
    is called with the fraction done after each batch. Runs on the model's device; the model's train/eval
    mode is restored afterwards.
    """
    n = features.shape[0]
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (n,):
        raise ValueError(f"labels must be ({n},), got {labels.shape}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    phi_s = model.class_embeddings(torch.as_tensor(refs, device=device))          # (C, 128), unit length
    if valid_classes is not None:
        invalid = ~torch.as_tensor(np.asarray(valid_classes, dtype=bool), device=device)
    score = np.empty(n, dtype=np.float32)
    suggested = np.full(n, -1, dtype=np.int64)
    suggested_score = np.full(n, np.nan, dtype=np.float32)
    for start in range(0, n, batch_size):
        sl = slice(start, min(start + batch_size, n))
        q = model.query_embeddings(torch.as_tensor(features[sl], device=device).float())  # (b, 128)
        sims = q @ phi_s.T                                                        # (b, C)
        y = torch.as_tensor(labels[sl], device=device)
        rows = torch.arange(y.numel(), device=device)
        score[sl] = sims[rows, y].float().cpu().numpy()
        sims[rows, y] = -torch.inf
        if valid_classes is not None:
            sims[:, invalid] = -torch.inf
        best = sims.max(dim=1)
        has = torch.isfinite(best.values)
        suggested[sl] = torch.where(has, best.indices, -1).cpu().numpy()
        suggested_score[sl] = torch.where(has, best.values, torch.nan).float().cpu().numpy()
        if progress is not None:
            progress(sl.stop / n)
    model.train(was_training)
    return Scores(score=score, suggested=suggested, suggested_score=suggested_score)


def counted_wrong(score: np.ndarray, expected_wrong: np.ndarray | None) -> np.ndarray:
    """(N,) float64 P(label wrong) that counts of wrong labels sum: expected_wrong (N,) (NaN or None: the method
    has no counting calibration) where given, else 1 - score (N,) of a method whose score is P(label correct)."""
    score = np.asarray(score, np.float64)
    if expected_wrong is None:
        return 1.0 - score
    counted = np.asarray(expected_wrong, np.float64)
    return np.where(np.isnan(counted), 1.0 - score, counted)


def noise_flags(score: np.ndarray, delta: float) -> np.ndarray:
    """(N,) bool: True where the label is judged noise (score < delta)."""
    return np.asarray(score) < delta


def soft_weights(score: np.ndarray) -> np.ndarray:
    """w_soft = max(0, s) (spec §6). (N,) float32."""
    return np.maximum(np.asarray(score, dtype=np.float32), 0)


def hard_weights(score: np.ndarray, delta: float) -> np.ndarray:
    """w_hard = 1[s >= delta]: drop what is flagged as noise (spec §6). (N,) float32."""
    return (np.asarray(score) >= delta).astype(np.float32)
