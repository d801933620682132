"""Per-class reference sets: K-means centres of each class's raw features (spec §2).

The official code runs OpenCV k-means (k-means++ init, 10 attempts, 50 iterations, eps 1e-4) on the raw
features of every image carrying the noisy label. This is the same algorithm in torch, so it runs on the GPU
when there is one and on the CPU as batched matrix products otherwise.

Speed (documented deviation): 3 restarts instead of OpenCV's 10, and at most 4,096 randomly drawn images per
class (128 per centre), so 1M x 2048 features take minutes on a 2-core CPU instead of hours; the centres are
a summary the attention pools over, and k-means++ seeding already makes restarts matter little.

Classes with fewer than K images (documented deviation, the code assumes enough images): every image becomes
a centre and the set is tiled to K rows, so the attention sees each image equally often (counts differ by at
most one). A class with no image gets K zero vectors and `counts == 0`; callers must not use it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


@dataclass
class KMeansConfig:
    k: int = 32                       # K reference vectors per class (code default; a rerun used 50)
    attempts: int = 3                 # restarts, the best inertia wins (cv2.kmeans uses 10; see below)
    max_iter: int = 50                # Lloyd iterations per attempt
    eps: float = 1e-4                 # stop when no centre moves more than eps
    max_points: int = 4096            # larger classes are clustered on a random subsample (128 per centre)
    seed: int = 0


def kmeans(x: torch.Tensor, k: int, *, attempts: int = 10, max_iter: int = 50, eps: float = 1e-4,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, float]:
    """K-means++ initialised Lloyd's algorithm. x: (n, d) float32 with n >= k -> centres (k, d), inertia."""
    n = x.shape[0]
    assert n >= k, f"need at least k={k} points, got {n}"
    x_sq = (x * x).sum(dim=1)                                                   # (n,)
    best, best_inertia = None, float("inf")
    for _ in range(attempts):
        centres = _kmeans_pp(x, x_sq, k, generator)                             # (k, d)
        for _ in range(max_iter):
            # argmin_j |x - c_j|^2 = argmin_j (|c_j|^2 - 2 x.c_j): one (n, k) product per iteration
            assign = ((centres * centres).sum(dim=1)[None, :] - 2 * x @ centres.T).argmin(dim=1)  # (n,)
            onehot = F.one_hot(assign, k).to(x.dtype)                            # (n, k)
            sums = onehot.T @ x                                                  # (k, d), a BLAS product
            counts = onehot.sum(dim=0).unsqueeze(1)                              # (k, 1)
            new = torch.where(counts > 0, sums / counts.clamp_min(1), centres)  # empty cluster keeps its centre
            shift = (new - centres).norm(dim=1).max().item()
            centres = new
            if shift <= eps:
                break
        inertia = _sq_dist(x, x_sq, centres).min(dim=1).values.sum().item()
        if inertia < best_inertia:
            best, best_inertia = centres, inertia
    return best, best_inertia


def _sq_dist(x: torch.Tensor, x_sq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (n, d), (n,), (k, d) -> (n, k), clamped at 0."""
    return (x_sq[:, None] - 2 * x @ c.T + (c * c).sum(dim=1)[None, :]).clamp_min(0)


def _kmeans_pp(x: torch.Tensor, x_sq: torch.Tensor, k: int, gen: torch.Generator | None) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre drawn with probability ~ D(x)^2."""
    n = x.shape[0]
    idx = [int(torch.randint(n, (1,), generator=gen, device="cpu"))]
    d2 = _sq_dist(x, x_sq, x[idx]).squeeze(1)                                    # (n,)
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:  # fewer distinct points than k: pick uniformly among the rest
            probs = torch.ones(n, dtype=torch.float64)
        else:
            probs = (d2 / total).double().cpu()
        nxt = int(torch.multinomial(probs, 1, generator=gen))
        idx.append(nxt)
        d2 = torch.minimum(d2, _sq_dist(x, x_sq, x[nxt:nxt + 1]).squeeze(1))
    return x[idx].clone()


def build_references(features: np.ndarray, labels: np.ndarray, num_classes: int, *,
                     config: KMeansConfig = KMeansConfig(), device: str | torch.device = "cpu",
                     progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Reference sets for every class from raw (not log-normalised) features.

    features: (N, d) float; labels: (N,) int noisy class ids in [0, num_classes).
    Returns refs (C, K, d) float32 and counts (C,) int64 = images per class.
    """
    features = np.asarray(features)
    labels = np.asarray(labels, dtype=np.int64)
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"features must be (N, d) and labels (N,), got {features.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    if config.k < 1:
        raise ValueError(f"the reference set size K must be >= 1, got {config.k}")
    k, d = config.k, features.shape[1]
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    refs = np.zeros((num_classes, k, d), dtype=np.float32)
    counts = np.bincount(labels, minlength=num_classes)
    for c in tqdm(range(num_classes), desc="references", disable=not progress):
        idx = np.flatnonzero(labels == c)
        if idx.size == 0:
            log.warning("class %d has no images: its reference set is empty", c)
            continue
        if idx.size > config.max_points:
            idx = np.sort(rng.choice(idx, config.max_points, replace=False))
        x = torch.as_tensor(features[idx], dtype=torch.float32, device=device)
        if idx.size <= k:
            refs[c] = x[np.arange(k) % idx.size].cpu().numpy()  # tile: every image is a centre
            continue
        centres, _ = kmeans(x, k, attempts=config.attempts, max_iter=config.max_iter, eps=config.eps,
                            generator=gen)
        refs[c] = centres.cpu().numpy()
    return refs, counts
