"""Near-duplicate groups and outlier scores from content hashes and pooled backbone features (numpy + torch).

Three kinds of evidence join images into one group (connected components, so a chain a~b~c is one group):

- **exact**: equal content hashes (the ingest hash of the file's bytes: free, since ingest computed it, and an
  image whose bytes are identical is identical; a copy with the same pixels in other bytes, e.g. PNG re-saved as
  BMP, has the same features and is caught by the next step);
- **similar**: cosine similarity >= ``threshold`` between L2-normalised features (re-encoded, resized, cropped,
  flipped copies);
- **confirmed by pixels**: below ``exact_below`` images, features alone join from ``pixel_until`` (not from
  ``threshold``), and a pair whose cosine is in [``pixel_from``, ``pixel_until``) joins when small grayscale
  thumbnails of the two images correlate >= ``pixel_min`` once aligned: either whole image, as it is or mirrored,
  against the other's whole image and its crops of 81-94 % of its side at a grid of positions
  (``crop_thumbnails``, ``aligned_similarity``). Heavy JPEG re-encoding moves a 32 px image's features far more
  than its coarse pixels, and a crop scaled back aligns with its original's crop; two different pictures that
  happen to have close features (two photos of one class, two drawings of one digit) rarely share their pixels.

Similar pairs: below ``exact_below`` images every pair is compared (blocked torch matmul, exact); above, a FAISS
inverted-file index over a PCA projection proposes ``k`` neighbours per image and every proposal is checked on the
full features. The projection of unit vectors onto orthonormal components is a contraction, so a pair with
cosine >= t lies within squared distance 2 - 2t in the projection too: proposals further apart are dropped
without being checked, and none above the threshold is lost that way.

Outlier score, per image: 1 - the largest cosine between its normalised feature and any class's centroid (the
normalised mean of the class's normalised features) or, given ``refs``, any class's reference vector. Higher =
further from every class (more outlying); in [0, 2].

Label conflicts in the score (``conflict_share``): a picture has one true class, so when a near-duplicate of an
image carries another label that is probably right, the image's own label probably is not.

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
    threshold: float = 0.79       # cosine at or above which two images are near-duplicates by their features alone
                                  # where pixels are not compared (from exact_below images); chosen on the dev case
                                  # of benchmarks/duplicates.py
    exact_below: int = 20_000     # images: below, every pair is compared and pixels confirm; from here, the index
    pixel_until: float = 0.90     # below exact_below: cosine from which features alone join
    pixel_from: float = 0.60      # below exact_below: cosine from which aligned thumbnails may confirm a pair
                                  # (>= pixel_until: off)
    pixel_min: float = 0.955      # aligned thumbnail correlation that confirms it (pixel_*: chosen on the dev case)
    k: int = 4                    # neighbours proposed per image by the index (a chain joins larger groups)
    pca_dim: int = 64             # the index's projection (k and pca_dim: benchmarks/README.md, "At 1M images")
    nprobe: int = 8               # inverted lists searched per image
    chunk: int = 4096             # rows per block (matmul, projection, checks)
    seed: int = 0

    def __post_init__(self) -> None:
        if not -1.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (-1, 1], got {self.threshold}")
        if not -1.0 < self.pixel_from <= 1.0 or not -1.0 < self.pixel_until <= 1.0 or not -1.0 <= self.pixel_min <= 1.0:
            raise ValueError(f"pixel_from and pixel_until must be in (-1, 1] and pixel_min in [-1, 1], got "
                             f"{self.pixel_from}, {self.pixel_until}, {self.pixel_min}")


THUMB_SIDE = 16  # pixels: the side of the grayscale thumbnails compared
GRAY_SIDE = 32   # pixels: the side of the grayscale image the thumbnails are cut from
CROPS = tuple((side, left, top) for side in (32, 30, 28, 26) for left in range(GRAY_SIDE - side + 1)
              for top in range(GRAY_SIDE - side + 1))  # the whole image, then 83 crops of 81-94 % of its side


def crop_thumbnails(gray: np.ndarray) -> np.ndarray:
    """(N, len(CROPS), THUMB_SIDE ** 2) float16 thumbnails of (N, GRAY_SIDE, GRAY_SIDE) grayscale images: the whole
    image first, then each crop of CROPS, resized to THUMB_SIDE (bilinear, antialiased), mean 0 and L2 norm 1 (a
    flat one stays all zeros, so it correlates with nothing; brightness and contrast do not matter)."""
    x = torch.from_numpy(np.asarray(gray, np.float32)).reshape(-1, 1, GRAY_SIDE, GRAY_SIDE)
    y = torch.stack([torch.nn.functional.interpolate(x[:, :, top:top + side, left:left + side], size=(THUMB_SIDE,) * 2,
                                                     mode="bilinear", antialias=True, align_corners=False)[:, 0]
                     for side, left, top in CROPS], dim=1).flatten(2)              # (N, K, S * S)
    y = y - y.mean(dim=2, keepdim=True)
    norm = torch.linalg.vector_norm(y, dim=2, keepdim=True)
    return torch.where(norm > 1e-4, y / norm.clamp_min(1e-4), 0.0).to(torch.float16).numpy()


def aligned_similarity(thumbs: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """(P,) float32 for (P, 2) pairs of rows of (R, K, S * S) crop thumbnails (``crop_thumbnails``): the largest
    correlation of either image's whole thumbnail, as it is or mirrored left-right, with any of the other's K
    thumbnails; in [-1, 1], higher = the same picture more likely (one a crop, mirror or re-encoding of the
    other). Computed image by image (its K thumbnails against the whole ones of all its partners), so each image's
    thumbnails are read once per side."""
    t = torch.from_numpy(np.asarray(thumbs))
    whole = t[:, 0].float()
    both = torch.stack([whole, whole.reshape(-1, THUMB_SIDE, THUMB_SIDE).flip(-1).flatten(1)], dim=1)  # (R, 2, D)
    best = torch.full((len(pairs),), -1.0)
    for side in (0, 1):
        order = np.argsort(pairs[:, side], kind="stable")
        rows, partners = pairs[order, side], torch.from_numpy(pairs[order, 1 - side])
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if len(rows) else np.zeros(0, np.int64)
        for lo, hi in zip(starts.tolist(), np.r_[starts[1:], len(rows)].tolist()):
            sims = t[int(rows[lo])].float() @ both[partners[lo:hi]].flatten(0, 1).T          # (K, 2n)
            got = sims.max(dim=0).values.reshape(-1, 2).max(dim=1).values
            idx = torch.from_numpy(order[lo:hi])
            best[idx] = torch.maximum(best[idx], got)
    return best.clamp(-1.0, 1.0).numpy()


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
        # numpy's einsum: several times faster than torch.linalg.vecdot on one CPU thread (benchmarks/README.md)
        cos = np.einsum("ij,ij->i", xa.numpy(), _rows(feats, b).numpy()) / (norms[a] * norms[b])
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


def conflict_share(score: np.ndarray, group: np.ndarray, labels: np.ndarray, *, weight: float) -> np.ndarray:
    """(N,) float64: P(label correct) scores (N,) in [0, 1] lowered by label conflicts: s_i * (1 - weight * o_i), o_i
    the highest score among the members of i's group (group (N,) int64, -1 = none) under another label than i's
    (labels (N,) int). Images without such a member (or whose members' scores are NaN) keep their score; a NaN
    score stays NaN. Lower = label more likely wrong, as before."""
    score = np.asarray(score, np.float64)
    out = score.copy()
    rows = np.flatnonzero((np.asarray(group) >= 0) & ~np.isnan(score))
    if weight == 0 or len(rows) == 0:
        return out
    g, lab, s = np.asarray(group)[rows], np.asarray(labels)[rows], score[rows]
    order = np.lexsort((-s, lab, g))                                   # by group, label, best score first
    g, lab, s = g[order], lab[order], s[order]
    first = np.ones(len(g), bool)
    first[1:] = (g[1:] != g[:-1]) | (lab[1:] != lab[:-1])              # each (group, label)'s best member
    bg, bl, bs = g[first], lab[first], s[first]
    top = np.lexsort((-bs, bg))                                        # per group, its labels by best score
    bg, bl, bs = bg[top], bl[top], bs[top]
    start = np.ones(len(bg), bool)
    start[1:] = bg[1:] != bg[:-1]
    head = np.flatnonzero(start)                                       # each group's best label
    nxt = head + 1                                                     # its second label, when it has one
    has2 = (nxt < len(bg)) & (bg[np.minimum(nxt, len(bg) - 1)] == bg[head])
    gi = np.searchsorted(bg[head], g)                                  # group of each member -> its head
    best_l, best_s = bl[head][gi], bs[head][gi]
    second_s = np.where(has2, bs[np.minimum(nxt, len(bg) - 1)], np.nan)[gi]
    other = np.where(lab != best_l, best_s, second_s)                  # best score under another label
    adjusted = np.where(np.isnan(other), s, s * (1 - weight * other))
    out[rows[order]] = adjusted
    return out
