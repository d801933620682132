"""Review-queue latency on a synthetic store (target: next item p95 < 50 ms at 1M images).

Builds (or reuses, ``--db``) a store with ``--n`` images in 100 classes (10 verified, each
class a contiguous id block as a folder ingest gives), a current model scoring every
image, and ``--verdicts`` verdicts placed the way the queue places them (80 % on the most
uncertain images of the verify classes, 20 % at random, a few undone), plus live leases
held by 7 other annotators. Then times, on one warm connection:

- ``next_items(n=1)`` incl. its lease, ``--calls`` times, each followed by a verdict
  (timed apart), split by reason (uncertain / audit; audit is also the cold-start path);
- ``grid_items(n=16)`` on a random verify class, each grid answered with verdicts;
- ``queue_status`` and, as a floor, a primary-key ``get_image`` in the same run.

Usage::

    python -m benchmarks.queue_speed --n 1000000 --json benchmarks/out/queue_speed.json
"""

import argparse
import logging
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from annotator.queue import grid_items, next_items, queue_status
from annotator.store import Store
from benchmarks import synthetic
from benchmarks.report import write_json

log = logging.getLogger(__name__)

N_CLASSES, DELTA = 100, 0.1


def build_store(path: Path, n: int, *, verdicts: int = 5000, seed: int = 0) -> tuple[Store, dict]:
    """Open ``path``; if it does not hold ``n`` images yet, fill it as described in the module docstring.
    Returns the store and the build phase times in seconds (empty when reused)."""
    store, reused = synthetic.reuse_or_refuse(path, n)
    if reused:
        return store, {}
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    names, cids = synthetic.add_classes(store, N_CLASSES)
    labels = np.sort(rng.integers(0, N_CLASSES, n))  # contiguous block per class
    synthetic.add_images(store, labels, names, cids, root="/data")
    t_images = time.perf_counter() - t0
    scores = np.clip(rng.normal(0.45, 0.35, n), -1, 1)  # image ids are 1..n in insertion order
    suggested = rng.integers(0, N_CLASSES, n)
    sugg_scores = rng.uniform(-1, 1, n)
    version = synthetic.publish_scores(store, ((i + 1, cids[c], s, abs(s - DELTA), cids[g], ss) for i, (c, s, g, ss)
                                               in enumerate(zip(labels.tolist(), scores.tolist(), suggested.tolist(),
                                                                sugg_scores.tolist()))), delta=DELTA)
    t_scores = time.perf_counter() - t0 - t_images
    # verdicts where the queue puts them: mostly the most uncertain images of the verify classes
    candidates = np.flatnonzero(labels % synthetic.VERIFY_EVERY == 0)
    order = candidates[np.argsort(np.abs(scores[candidates] - DELTA))]
    verdicts = min(verdicts, len(candidates) // 2)
    n_head = int(verdicts * 0.8)
    picked = np.concatenate([order[:n_head], rng.choice(order[n_head:], verdicts - n_head, replace=False)])
    kinds = rng.choice(["correct", "wrong", "unsure"], len(picked), p=[0.7, 0.2, 0.1])
    for k, (i, verdict) in enumerate(zip(picked.tolist(), kinds.tolist())):
        store.record_verdict(i + 1, f"ann{k % 5}", verdict, reason="uncertain" if k < n_head else "audit",
                             model_version=version)
    for k in range(5):
        store.undo_last(f"ann{k}")
    t_verdicts = time.perf_counter() - t0 - t_images - t_scores
    log.info("built %s: images %.1fs, scores %.1fs, %d verdicts %.1fs", path, t_images, t_scores, verdicts,
             t_verdicts)
    return store, {"images_s": round(t_images, 1), "scores_s": round(t_scores, 1), "verdicts_s": round(t_verdicts, 1)}


def stats_ms(samples: list[float]) -> dict:
    ms = sorted(s * 1000 for s in samples)
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "p50": statistics.median(ms), "p95": ms[min(len(ms) - 1, int(0.95 * len(ms)))],
            "max": ms[-1], "mean": statistics.fmean(ms)}


def run(store: Store, calls: int, seed: int) -> dict:
    rng = random.Random(seed)
    verify = list(store.verify_classes())
    for k in range(7):  # other annotators hold live leases (16 each) that the queue must skip
        next_items(store, f"other{k}", n=8, rng=rng)
        grid_items(store, f"other{k}", rng.choice(verify), n=8, rng=rng)
    timings: dict[str, list[float]] = {"next_item": [], "uncertain": [], "audit": [], "verdict": [], "grid16": [],
                                       "queue_status": [], "get_image": []}
    for _ in range(calls):
        t = time.perf_counter()
        (item,) = next_items(store, "bench", n=1, rng=rng)
        dt = time.perf_counter() - t
        timings["next_item"].append(dt)
        timings[item.reason].append(dt)
        t = time.perf_counter()
        store.record_verdict(item.image_id, "bench", "correct", reason=item.reason, model_version=item.model_version)
        timings["verdict"].append(time.perf_counter() - t)
        t = time.perf_counter()
        store.get_image(item.image_id)
        timings["get_image"].append(time.perf_counter() - t)
    for _ in range(max(calls // 5, 1)):
        t = time.perf_counter()
        items = grid_items(store, "bench", rng.choice(verify), n=16, rng=rng)
        timings["grid16"].append(time.perf_counter() - t)
        for it in items:
            store.record_verdict(it.image_id, "bench", "correct", reason="grid", model_version=it.model_version)
    for _ in range(10):
        t = time.perf_counter()
        queue_status(store, "bench")
        timings["queue_status"].append(time.perf_counter() - t)
    return {k: stats_ms(v) for k, v in timings.items()}


def table(rows: dict) -> str:
    out = ["| call | n | p50 ms | p95 ms | max ms | ratio p50 / get_image p50 |", "|---|---|---|---|---|---|"]
    floor = rows["get_image"]["p50"]
    for name, s in rows.items():
        if s["n"]:
            out.append(f"| {name} | {s['n']} | {s['p50']:.2f} | {s['p95']:.2f} | {s['max']:.2f} | "
                       f"{s['p50'] / floor:.1f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="images in the synthetic store")
    ap.add_argument("--verdicts", type=int, default=5000, help="verdicts before timing")
    ap.add_argument("--calls", type=int, default=500, help="timed next_items calls")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--db", type=Path, help="store file to build or reuse (default: a temp dir, deleted)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        path = args.db or Path(tmp) / "bench.db"
        t = time.perf_counter()
        store, build = build_store(path, args.n, verdicts=args.verdicts, seed=args.seed)
        build_s = time.perf_counter() - t
        results = run(store, args.calls, args.seed)
        report = {"n_images": args.n, "verdicts_before": args.verdicts, "build_s": round(build_s, 1),
                  "build": build, "latency_ms": results, "plans": store.query_plans()}
        store.close()
    print(f"\nqueue latency, {args.n:,} images, {args.verdicts:,} verdicts before timing\n")
    print(table(results))
    target = results["next_item"]["p95"]
    print(f"\nnext_item p95 {target:.2f} ms (target < 50 ms): {'OK' if target < 50 else 'MISSED'}")
    write_json(args.json, report)


if __name__ == "__main__":
    main()
