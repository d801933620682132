"""Label-noise detection metrics (spec §5, §7).

Conventions used throughout: `score` (N,) is a relevance, higher = label more likely correct;
`is_correct` (N,) bool is the human (or ground-truth) verdict that the noisy label is right. A label is
flagged as noise when score < delta. The "positive" class for precision/recall/F1/AUROC is *wrong label*.
"""
from __future__ import annotations

import numpy as np


def best_threshold(score: np.ndarray, is_correct: np.ndarray) -> tuple[float, float]:
    """The delta maximising verification accuracy of (score >= delta) == is_correct.

    Candidates are midpoints between consecutive distinct scores plus one below the minimum and one above
    the maximum; ties go to the smallest delta. Returns (delta, accuracy).
    """
    score, is_correct = _check(score, is_correct)
    if score.size == 0:
        raise ValueError("need at least one verdict to choose a threshold")
    order = np.argsort(score, kind="stable")
    s, ok = score[order], is_correct[order]
    # Threshold between position i-1 and i: items [0, i) are predicted wrong, [i, n) predicted correct.
    wrong_below = np.concatenate([[0], np.cumsum(~ok)])                   # (n+1,)
    correct_above = ok.sum() - np.concatenate([[0], np.cumsum(ok)])       # (n+1,)
    acc = (wrong_below + correct_above) / s.size
    valid = np.ones(s.size + 1, dtype=bool)
    valid[1:-1] = s[1:] > s[:-1]                                          # cut only between distinct scores
    i = int(np.flatnonzero(valid)[np.argmax(acc[valid])])
    if i == 0:
        delta = float(s[0]) - 1e-6
    elif i == s.size:
        delta = float(s[-1]) + 1e-6
    else:
        delta = float(s[i - 1] + s[i]) / 2
    return delta, float(acc[i])


def auroc(score: np.ndarray, is_correct: np.ndarray) -> float:
    """Probability that a random wrong label scores below a random correct one (ties count 1/2).

    NaN when either group is empty. Mann-Whitney U with average ranks, O(N log N).
    """
    score, is_correct = _check(score, is_correct)
    n_pos, n_neg = int((~is_correct).sum()), int(is_correct.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(-score)  # rank by "wrongness": low score = high rank
    u = ranks[~is_correct].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    boundaries = np.concatenate([[True], xs[1:] != xs[:-1], [True]])
    starts = np.flatnonzero(boundaries)
    avg = (starts[:-1] + starts[1:] + 1) / 2                 # mean of 1-based ranks start+1 .. end
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, np.diff(starts))
    return ranks


def detection_report(score: np.ndarray, is_correct: np.ndarray, delta: float) -> dict[str, float]:
    """`flag_report` for the flags score < delta."""
    return flag_report(np.asarray(score) < delta, score, is_correct)


def flag_report(flagged: np.ndarray, score: np.ndarray, is_correct: np.ndarray) -> dict[str, float]:
    """error, precision, recall, f1 of the wrong-label flags (N,) bool; auroc of score; n; noise_rate."""
    score, is_correct = _check(score, is_correct)
    flagged = np.asarray(flagged, dtype=bool).ravel()
    wrong = ~is_correct
    tp = int((flagged & wrong).sum())
    precision = tp / flagged.sum() if flagged.any() else 0.0
    recall = tp / wrong.sum() if wrong.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "error": float((flagged != wrong).mean()) if score.size else float("nan"),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "auroc": auroc(score, is_correct),
        "n": int(score.size),
        "noise_rate": float(wrong.mean()) if score.size else float("nan"),
    }


def per_class_report(score: np.ndarray, is_correct: np.ndarray, labels: np.ndarray,
                     delta: float) -> dict[int, dict[str, float]]:
    """`detection_report` for each noisy class id present in `labels` (N,)."""
    labels = np.asarray(labels)
    return {int(c): detection_report(score[labels == c], is_correct[labels == c], delta)
            for c in np.unique(labels)}


def _check(score: np.ndarray, is_correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    score = np.asarray(score, dtype=np.float64).ravel()
    is_correct = np.asarray(is_correct).astype(bool).ravel()
    if score.shape != is_correct.shape:
        raise ValueError(f"score {score.shape} and is_correct {is_correct.shape} differ in length")
    if np.isnan(score).any():
        raise ValueError("score contains NaN")
    return score, is_correct
