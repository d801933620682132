"""Near-duplicate groups and outlier scores from content hashes and pooled backbone features (numpy + torch).

Two kinds of evidence join images into one group (connected components, so a chain a~b~c is one group):

- **exact**: equal content hashes (the ingest hash of the file's bytes: free, since ingest computed it, and an
  image whose bytes are identical is identical; a copy with the same pixels in other bytes, e.g. PNG re-saved as
  BMP, has the same features and is caught by the next step);
- **similar**: cosine similarity >= ``threshold`` between L2-normalised features (re-encoded, resized, cropped,
  flipped copies). Below ``exact_below`` images every pair is compared (blocked torch matmul, exact); above, a
  FAISS inverted-file index over a PCA projection proposes ``k`` neighbours per image and every proposal is
  checked on the full features. The projection of unit vectors onto orthonormal components is a contraction, so
  a pair with cosine >= t lies within squared distance 2 - 2t in the projection too: proposals further apart are
  dropped without being checked, and none above the threshold is lost that way.

Outlier score, per image: 1 - the largest cosine between its normalised feature and any class's centroid (the
normalised mean of the class's normalised features) or, given ``refs``, any class's reference vector. Higher =
further from every class (more outlying); in [0, 2].

    pairs, sims = similar_pairs(feats, config=GroupConfig())
    group = components(len(feats), np.concatenate([hash_pairs(keys), pairs]))
    score = outlier_scores(feats, labels, num_classes)
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

Progress = Callable[[float, str], None]  # (share done in [0, 1], message)


def _quiet(frac: float, message: str) -> None:
    """The default Progress: says nothing."""


@dataclass(frozen=True)
class GroupConfig:
    threshold: float = 0.79       # cosine at or above which two images are near-duplicates (chosen on the dev case
                                  # of benchmarks/duplicates.py)
    exact_below: int = 20_000     # images: below, every pair is compared; from here, the FAISS index
    k: int = 8                    # neighbours proposed per image by the index (a chain joins larger groups)
    pca_dim: int = 128            # the index's projection
    nprobe: int = 8               # inverted lists searched per image
    chunk: int = 4096             # rows per block (matmul, projection, checks)
    seed: int = 0

    def __post_init__(self) -> None:
        if not -1.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (-1, 1], got {self.threshold}")


def row_norms(feats: np.ndarray, *, chunk: int = 65_536) -> np.ndarray:
    """(N,) float32 L2 norms of (N, D) features, computed in chunks of float32 (1 where a row is zero)."""
    out = np.empty(len(feats), np.float32)
    for s in range(0, len(feats), chunk):
        x = torch.from_numpy(np.ascontiguousarray(feats[s:s + chunk])).float()
        out[s:s + chunk] = torch.linalg.vector_norm(x, dim=1).numpy()
    out[out == 0] = 1.0
    return out


def _rows(feats: np.ndarray, rows: slice | np.ndarray) -> torch.Tensor:
    """Rows of feats as float32. Gathered and converted by torch (numpy's fancy indexing and float16 conversion
    are several times slower); a contiguous array is not copied first."""
    if not (isinstance(feats, np.ndarray) and feats.flags.c_contiguous):
        return torch.from_numpy(np.ascontiguousarray(feats[rows])).float()
    base = torch.from_numpy(feats)
    if isinstance(rows, slice):
        return base[rows].float()
    return base.index_select(0, torch.from_numpy(np.asarray(rows, np.int64))).float()


def _unit(feats: np.ndarray, norms: np.ndarray, rows: slice | np.ndarray) -> torch.Tensor:
    """Rows of feats as float32 unit vectors."""
    return _rows(feats, rows) / torch.from_numpy(norms[rows])[:, None]


def hash_pairs(keys: Sequence[str]) -> np.ndarray:
    """(P, 2) int64 pairs (first index of a key, each later index with the same key): exact copies."""
    out, first = [], {}
    for i, key in enumerate(keys):
        if key in first:
            out.append((first[key], i))
        else:
            first[key] = i
    return np.array(out, np.int64).reshape(-1, 2)


def similar_pairs(feats: np.ndarray, *, config: GroupConfig = GroupConfig(),
                  progress: Progress = _quiet) -> tuple[np.ndarray, np.ndarray, str]:
    """Pairs of rows of (N, D) features whose cosine is >= config.threshold.

    -> (pairs (P, 2) int64 with i < j, cosine (P,) float32, method: 'exact' or 'faiss-ivf'). Zero rows match
    nothing. float16 features are read in float32 blocks; the whole matrix is never converted at once.
    """
    n = len(feats)
    norms = row_norms(feats)
    if n < 2:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32), "exact"
    if n < config.exact_below:
        pairs, sims = _exact_pairs(feats, norms, config, progress)
        return pairs, sims, "exact"
    cand = _ivf_candidates(feats, norms, config, progress)
    pairs, sims = _check(feats, norms, cand, config, progress)
    return pairs, sims, "faiss-ivf"


def _exact_pairs(feats: np.ndarray, norms: np.ndarray, config: GroupConfig,
                 progress: Progress) -> tuple[np.ndarray, np.ndarray]:
    """Every pair compared: blocks of rows against all later rows."""
    x = _unit(feats, norms, slice(None))
    pairs, sims = [], []
    for s in range(0, len(x), config.chunk):
        block = x[s:s + config.chunk] @ x[s:].T                     # (B, N - s)
        block = torch.triu(block, diagonal=1)                        # j > i only
        i, j = torch.nonzero(block >= config.threshold, as_tuple=True)
        sims.append(block[i, j].numpy())
        pairs.append(np.stack([i.numpy() + s, j.numpy() + s], axis=1))
        progress(min(1.0, (s + config.chunk) / len(x)), "comparing every pair")
    return np.concatenate(pairs).astype(np.int64), np.concatenate(sims).astype(np.float32)


def _pca(feats: np.ndarray, norms: np.ndarray, config: GroupConfig) -> torch.Tensor:
    """(D, d) orthonormal top principal directions of the unit features, fitted on up to 100,000 rows."""
    rng = np.random.default_rng(config.seed)
    rows = np.sort(rng.choice(len(feats), min(len(feats), 100_000), replace=False))
    x = _unit(feats, norms, rows)
    x = x - x.mean(dim=0)
    _, vecs = torch.linalg.eigh(x.T @ x / len(x))                   # ascending eigenvalues
    return vecs[:, -min(config.pca_dim, x.shape[1]):].contiguous()


def _ivf_candidates(feats: np.ndarray, norms: np.ndarray, config: GroupConfig, progress: Progress) -> np.ndarray:
    """(P, 2) int64 unique pairs i < j that the index proposes and that can still reach the threshold."""
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())  # the worker leaves a core to the app
    w = _pca(feats, norms, config)
    n, d = len(feats), w.shape[1]
    z = np.empty((n, d), np.float32)
    for s in range(0, n, 65_536):
        z[s:s + 65_536] = (_unit(feats, norms, slice(s, s + 65_536)) @ w).numpy()
    progress(0.1, f"projected {n} features to {d} dimensions")
    nlist = max(1, min(int(2 * math.sqrt(n)), n // 39))
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist, faiss.METRIC_L2)
    train = np.random.default_rng(config.seed + 1).choice(n, min(n, 40 * nlist), replace=False)
    index.cp.seed, index.cp.niter = config.seed, 10  # lists need not be optimal: every proposal is checked
    index.train(z[np.sort(train)])
    index.add(z)
    index.nprobe = min(config.nprobe, nlist)
    progress(0.3, f"index of {nlist} lists built")
    reach = 2.0 - 2.0 * config.threshold + 1e-4                     # squared distance a match can have
    found = []
    step = 16_384
    for s in range(0, n, step):
        dist, nn = index.search(z[s:s + step], config.k + 1)
        i = np.repeat(np.arange(s, s + len(nn)), nn.shape[1])
        j, dd = nn.ravel(), dist.ravel()
        keep = (j >= 0) & (j != i) & (dd <= reach)
        found.append(np.minimum(i, j)[keep] * n + np.maximum(i, j)[keep])  # pair (i, j) as one int64 key
        progress(0.3 + 0.5 * min(1.0, (s + step) / n), f"neighbours of {min(n, s + step)} of {n} images")
    keys = np.unique(np.concatenate(found).astype(np.int64))           # sorted: by i, then j
    return np.stack([keys // n, keys % n], axis=1)


def _check(feats: np.ndarray, norms: np.ndarray, cand: np.ndarray, config: GroupConfig,
           progress: Progress) -> tuple[np.ndarray, np.ndarray]:
    """The candidate pairs whose cosine on the full features is >= the threshold, with that cosine."""
    keep, sims = [], []
    step = 16_384
    for s in range(0, len(cand), step):  # cand is sorted by its first column: a's rows are a short slice
        a, b = cand[s:s + step, 0], cand[s:s + step, 1]
        lo, hi = int(a[0]), int(a[-1]) + 1
        xa = _rows(feats, slice(lo, hi))[torch.from_numpy(a - lo)] if hi - lo <= 4 * step else _rows(feats, a)
        cos = (torch.linalg.vecdot(xa, _rows(feats, b)) / torch.from_numpy(norms[a] * norms[b])).numpy()
        ok = cos >= config.threshold
        keep.append(cand[s:s + step][ok])
        sims.append(cos[ok])
    progress(1.0, f"{sum(len(k) for k in keep)} of {len(cand)} proposed pairs are near-duplicates")
    if not keep:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    return np.concatenate(keep), np.concatenate(sims).astype(np.float32)


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """(N,) int64 group of each of n items joined by (P, 2) pairs: the smallest index in its connected component
    for items in a group of two or more, -1 for items in no pair (min-label propagation with pointer jumping)."""
    label = np.arange(n, dtype=np.int64)
    if len(pairs) == 0:
        return np.full(n, -1, np.int64)
    a, b = pairs[:, 0], pairs[:, 1]
    while True:
        m = np.minimum(label[a], label[b])
        before = label.copy()
        np.minimum.at(label, a, m)
        np.minimum.at(label, b, m)
        while not np.array_equal(label, label[label]):
            label = label[label]
        if np.array_equal(label, before):
            break
    sizes = np.bincount(label, minlength=n)
    return np.where(sizes[label] > 1, label, -1)


def class_centroids(feats: np.ndarray, labels: np.ndarray, num_classes: int, *,
                    chunk: int = 65_536) -> np.ndarray:
    """(C, D) float32 unit mean of each class's unit features (zero rows for a class without images)."""
    norms = row_norms(feats)
    total = torch.zeros(num_classes, feats.shape[1])
    for s in range(0, len(feats), chunk):
        total.index_add_(0, torch.from_numpy(np.asarray(labels[s:s + chunk], np.int64)),
                         _unit(feats, norms, slice(s, s + chunk)))
    return torch.nn.functional.normalize(total, dim=1).numpy()


def outlier_scores(feats: np.ndarray, labels: np.ndarray, num_classes: int, *, refs: np.ndarray | None = None,
                   chunk: int = 65_536) -> np.ndarray:
    """(N,) float32: 1 - the largest cosine of each image to any class centroid (refs (C, K, D) given: to any
    class's reference vector). Higher = further from every class; in [0, 2]."""
    protos = class_centroids(feats, labels, num_classes) if refs is None else np.asarray(refs, np.float32).reshape(
        -1, np.shape(refs)[-1])
    p = torch.nn.functional.normalize(torch.from_numpy(np.ascontiguousarray(protos)), dim=1)
    norms = row_norms(feats)
    out = np.empty(len(feats), np.float32)
    for s in range(0, len(feats), chunk):
        out[s:s + chunk] = 1.0 - (_unit(feats, norms, slice(s, s + chunk)) @ p.T).max(dim=1).values.numpy()
    return out
