"""Near-duplicate groups at scale: time, peak memory, recall of planted copies, and the queue's latency meanwhile.

    nice -n 5 python -m benchmarks.duplicates_speed --n 1000000 --json benchmarks/results/duplicates-speed-n1000000.json

Builds the synthetic store of `round_speed.py` (``--n`` images, 1280-d float16 features in the content-keyed
cache, class prototypes plus noise, a current model and verdicts; no image file), then adds 1 % copies: new images
whose features are an existing image's plus noise (cosine about 0.98 to it), half of them under another label.
Runs `annotator.duplicates.refresh` (what the worker runs after a round) in a child process with the worker's
threads (all cores but one), records its phases and peak RSS, and meanwhile times the next queue item plus a
verdict on its own connection, as an annotator would. Baseline in the same run: every pair compared (the exact
blocked matmul) against the FAISS index on the first ``--baseline-n`` images with 1 % planted copies: time and
the planted pairs each joins (the exact search's time grows with the square of the images).
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import platform
import random
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from annotator.round_config import RoundConfig
from annotator.store import Store
from benchmarks import synthetic
from benchmarks.report import write_json
from benchmarks.round_speed import BACKBONE_ID, IMAGE_SIZE, _annotate_once, build_store, latency_during, stats_ms
from cleannet_core.duplicates import GroupConfig, components, similar_pairs
from cleannet_core.features import FeatureCache

log = logging.getLogger(__name__)
COPY_SHARE = 0.01


def plant_copies(db: Path, n: int, dim: int, *, seed: int = 1) -> set[tuple[int, int]]:
    """Add n * COPY_SHARE copies (ids n+1, ...) of random distinct images; returns the true (original, copy) id
    pairs."""
    rng = np.random.default_rng(seed)
    m = int(n * COPY_SHARE)
    src = np.sort(rng.choice(n, m, replace=False))
    store = Store(db)
    cache = FeatureCache.for_backbone(db.parent / "features", BACKBONE_ID, IMAGE_SIZE, dim)
    _, feats = cache.lookup([synthetic.image_key(int(i)) for i in src])
    x = feats.astype(np.float32)
    noise = rng.normal(0, 1, x.shape).astype(np.float32)
    noise *= 0.2 * np.linalg.norm(x, axis=1, keepdims=True) / np.linalg.norm(noise, axis=1, keepdims=True)
    cache.add([synthetic.image_key(n + j) for j in range(m)], x + noise)
    labels = {r["id"]: r["label_id"] for r in store._all(
        "SELECT id, label_id FROM images WHERE id IN (SELECT value FROM json_each(?))", [
            "[" + ",".join(str(int(i) + 1) for i in src) + "]"])}
    class_ids = [c["id"] for c in store.classes()]
    rows = []
    for j, i in enumerate(src.tolist()):
        label = labels[i + 1] if j % 2 == 0 else class_ids[(class_ids.index(labels[i + 1]) + 1) % len(class_ids)]
        rows.append({"path": f"/nowhere/copies/{j:07d}.jpg", "hash": synthetic.image_key(n + j), "label_id": label,
                     "width": 256, "height": 256})
    store.add_images(rows, batch=synthetic.BATCH)
    store.close()
    return {(int(i) + 1, n + j + 1) for j, i in enumerate(src.tolist())}


def _refresh(db: str, out: mp.Queue) -> None:
    """Child process: refresh with the worker's threads; sends phase start times, total and peak RSS."""
    from annotator.duplicates import refresh
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    store = Store(db)
    t0 = time.perf_counter()
    starts: dict[str, float] = {}
    steps: dict[str, float] = {}  # first time of each kind of message: where the grouping's time goes

    def report(phase: str, progress: float, message: str) -> None:
        key = "writing" if phase == "duplicates" and progress >= 0.9 else phase
        steps.setdefault(" ".join(w for w in message.split()[:3] if not w[0].isdigit()),
                         round(time.perf_counter() - t0, 1))
        if key not in starts:
            starts[key] = time.perf_counter() - t0
            store.worker_update(phase=key, progress=progress, message=message)
            print(f"{time.strftime('%H:%M:%S')} {key}: {message}", flush=True)

    run = refresh(store, RoundConfig(), force=True, report=report)
    total = time.perf_counter() - t0
    store.worker_update(phase="done")
    store.close()
    out.put({"total_s": total, "cpu_s": time.process_time(), "phase_start_s": starts, "steps_s": steps,
             "threads": torch.get_num_threads(), "run": run,
             "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20})


def baseline(db: Path, n: int, dim: int) -> dict:
    """Exact pairs against the index's on the first n images' features (same threads as the worker)."""
    cache = FeatureCache.for_backbone(db.parent / "features", BACKBONE_ID, IMAGE_SIZE, dim)
    _, feats = cache.lookup([synthetic.image_key(i) for i in range(n)])
    x = feats.copy()
    rng = np.random.default_rng(2)
    src = rng.choice(n, n // 100, replace=False)   # 1 % copies inside the sample, as in the store
    dst = rng.choice(np.setdiff1d(np.arange(n), src), len(src), replace=False)
    noise = rng.normal(0, 1, (len(src), dim)).astype(np.float32)
    xs = x[src].astype(np.float32)
    noise *= 0.2 * np.linalg.norm(xs, axis=1, keepdims=True) / np.linalg.norm(noise, axis=1, keepdims=True)
    x[dst] = (xs + noise).astype(np.float16)
    out = {}
    for name, cfg in (("exact", GroupConfig(exact_below=n + 1)), ("faiss-ivf", GroupConfig(exact_below=0))):
        t = time.perf_counter()
        pairs, _, method = similar_pairs(x, config=cfg)
        group = components(n, pairs)
        out[name] = {"seconds": time.perf_counter() - t, "pairs": len(pairs),
                     "planted_recall": float(np.mean([group[a] >= 0 and group[a] == group[b]
                                                      for a, b in zip(src.tolist(), dst.tolist())]))}
    return {"n": n, **out, "speedup": out["exact"]["seconds"] / out["faiss-ivf"]["seconds"],
            "exact_at_n_extrapolated_s": None}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="images before the copies")
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--baseline-n", type=int, default=20_000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    uptime = {"start": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "state" / "bench.db"
        db.parent.mkdir(parents=True)
        t = time.perf_counter()
        build = build_store(db, args.n, 10, args.dim, verdicts=2000)
        true = plant_copies(db, args.n, args.dim)
        build["copies_s"] = round(time.perf_counter() - t - sum(build.values()), 1)
        base = baseline(db, args.baseline_n, args.dim)
        store = Store(db)
        store.worker_update(phase="idle")
        rng = random.Random(0)
        idle = [_annotate_once(store, rng) for _ in range(200)]
        res, during = latency_during(store, rng, _refresh, (str(db),),
                                     pace={"features": 0.25, "duplicates": 0.25, "writing": 0.05}, timeout=120)
        group_of = {m["image_id"]: m["group_id"] for m in store.iter_duplicate_members()}
        store.close()
    uptime["end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    # pairs by arithmetic: a group of s images implies s(s-1)/2 pairs (the synthetic classes can chain into
    # groups of tens of thousands, whose pairs would not fit in memory)
    sizes = np.bincount(np.fromiter(group_of.values(), np.int64)) if group_of else np.zeros(0, np.int64)
    sizes = sizes[sizes > 0]
    n_found = int((sizes * (sizes - 1) // 2).sum())
    hit = sum(1 for a, b in true if a in group_of and group_of.get(b) == group_of[a])
    total_images = args.n + len(true)
    base["exact_at_n_extrapolated_s"] = base["exact"]["seconds"] * (total_images / base["n"]) ** 2
    out = {"n_images": total_images, "planted_pairs": len(true), "dim": args.dim,
           "machine": f"{platform.processor() or platform.machine()}, {mp.cpu_count()} cores",
           "uptime": uptime, "load_avg_1m": {"start": load_start, "end": os.getloadavg()[0]}, "build_s": build,
           "refresh": {k: v for k, v in res.items() if k != "run"} | {"method": res["run"]["method"],
                                                                      "n_groups": res["run"]["n_groups"]},
           "pair_recall": hit / max(1, len(true)), "pair_precision": hit / max(1, n_found), "found_pairs": n_found,
           "groups": {"n": int(len(sizes)), "largest": int(sizes.max()) if len(sizes) else 0,
                      "images_in_groups": int(sizes.sum())},
           "queue_ms": {"idle": stats_ms(idle)} | {f"during_{k}": stats_ms(v) for k, v in during.items()},
           "baseline": base}
    print(f"\nnear-duplicate groups at {total_images:,} images ({out['machine']}; {uptime['start']})")
    print(f"refresh {res['total_s']:.1f} s ({res['run']['method']}), phases start at "
          f"{ {k: round(v, 1) for k, v in res['phase_start_s'].items()} }, peak RSS {res['peak_rss_gb']:.2f} GB")
    print(f"planted pairs: recall {out['pair_recall']:.4f}, precision {out['pair_precision']:.4f}")
    print(f"baseline at {base['n']:,}: exact {base['exact']['seconds']:.1f} s (planted recall "
          f"{base['exact']['planted_recall']:.4f}), index {base['faiss-ivf']['seconds']:.1f} s (planted recall "
          f"{base['faiss-ivf']['planted_recall']:.4f}); every pair at {res['run']['n_images']:,} images: about "
          f"{base['exact_at_n_extrapolated_s'] / 3600:.1f} h")
    for k, s in out["queue_ms"].items():
        if s["n"]:
            print(f"queue {k}: n {s['n']} p50 {s['p50']:.1f} ms p95 {s['p95']:.1f} ms max {s['max']:.1f} ms")
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
