"""Where the index search of near-duplicates spends its CPU time, per setting, at a size below 1M.

    python -m benchmarks.duplicates_profile --n 200000 --json benchmarks/results/duplicates-profile-n200000.json

Features as `round_speed.py` builds them (10 class prototypes plus noise, 1,280-d float16) with 1 % planted copies
(an image's features plus noise, cosine about 0.98), in memory. For each setting (`GroupConfig` fields
``pca_dim``, ``k``, ``nprobe``) on one thread: CPU seconds of the PCA and projection, the index, the search and
the check of the proposals on the full features (process time, so other jobs on the machine weigh less than on
wall time), the proposals, and two recalls: of the planted copies, and of the pairs the first setting finds
(share of them whose two images share a group).
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from cleannet_core import duplicates as dups

from .report import write_json

SETTINGS = ({"pca_dim": 128, "k": 8, "nprobe": 8}, {"pca_dim": 64, "k": 4, "nprobe": 8},
            {"pca_dim": 64, "k": 8, "nprobe": 8}, {"pca_dim": 128, "k": 4, "nprobe": 8},
            {"pca_dim": 128, "k": 8, "nprobe": 4})


def synthetic(n: int, dim: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features (n, dim) float16, copy sources, copies): 1 % of the rows replaced by copies of others."""
    rng = np.random.default_rng(seed)
    clean = np.sort(rng.integers(0, 10, n))
    protos = rng.gamma(1.0, 1.0, (10, dim)).astype(np.float32)
    feats = np.empty((n, dim), np.float16)
    for s in range(0, n, 65_536):
        sl = slice(s, min(n, s + 65_536))
        feats[sl] = protos[clean[sl]] + rng.normal(0, 1.0, (sl.stop - sl.start, dim)).astype(np.float32)
    src = np.sort(rng.choice(n, n // 100, replace=False))
    dst = rng.choice(np.setdiff1d(np.arange(n), src), len(src), replace=False)
    x = feats[src].astype(np.float32)
    noise = rng.normal(0, 1, x.shape).astype(np.float32)
    noise *= 0.2 * np.linalg.norm(x, axis=1, keepdims=True) / np.linalg.norm(noise, axis=1, keepdims=True)
    feats[dst] = (x + noise).astype(np.float16)
    return feats, src, dst


def profile(feats: np.ndarray, config: dups.GroupConfig) -> tuple[dict, np.ndarray]:
    marks: dict[str, float] = {}
    t0 = time.process_time()

    def progress(frac: float, message: str) -> None:
        marks.setdefault(message.split()[0], time.process_time() - t0)

    norms = dups.row_norms(feats)
    cand = dups._ivf_candidates(feats, norms, config, progress)
    searched = time.process_time() - t0
    pairs, _ = dups._check(feats, norms, cand, config, dups._quiet)
    total = time.process_time() - t0
    return {"pca_and_projection_cpu_s": marks["projected"], "index_cpu_s": marks["index"] - marks["projected"],
            "search_cpu_s": searched - marks["index"], "check_cpu_s": total - searched, "total_cpu_s": total,
            "proposals": int(len(cand)), "pairs": int(len(pairs))}, pairs


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # the worker's threads on 2 cores
    feats, src, dst = synthetic(args.n, args.dim)
    out = {"n": args.n, "dim": args.dim, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "load_avg_1m": {"start": os.getloadavg()[0]}, "settings": []}
    first = None
    for setting in SETTINGS:
        row, pairs = profile(feats, dups.GroupConfig(exact_below=0, **setting))
        group = dups.components(len(feats), pairs)
        first = pairs if first is None else first
        row |= {"setting": setting, "planted_recall": float(np.mean((group[src] >= 0) & (group[src] == group[dst]))),
                "first_setting_pairs_grouped": float(np.mean(group[first[:, 0]] == group[first[:, 1]]))}
        out["settings"].append(row)
        print({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    out["load_avg_1m"]["end"] = os.getloadavg()[0]
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
