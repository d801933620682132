"""The default round at scale: time per phase, peak memory, and the review queue's latency while it publishes.

Builds (or reuses, ``--db``) a store with ``--n`` images in ``--classes`` classes (every 10th verified), a
current model scoring every image, ``--verdicts`` verdicts, and the images' features generated straight into
the content-keyed cache (``--dim``-d float16, class prototypes plus noise, 10 % of labels flipped); no image
file exists, so the round proves it reads none. Then runs ``pipeline.run_round`` (the worker's default round)
in a child process, records when each phase starts and the child's peak RSS, and meanwhile times
``next_items`` + a verdict on its own connection, as an annotator would, apart for the publishing phase.

    python -m benchmarks.round_speed --n 100000 --json benchmarks/results/round-speed-n100000.json
    nice -n 10 python -m benchmarks.round_speed --n 1000000 --json benchmarks/results/round-speed-n1000000.json
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import platform
import random
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from annotator import pipeline
from annotator.publish import publish_scores
from annotator.round_config import RoundConfig
from annotator.queue import next_items
from annotator.store import Store
from benchmarks import synthetic
from benchmarks.report import write_json
from cleannet_core.features import FeatureCache
from cleannet_core.score import Scores

log = logging.getLogger(__name__)
BACKBONE_ID, IMAGE_SIZE = "synthetic", 224
PHASES = ("load", "features", "references", "training", "writing", "idle")


def build_store(path: Path, n: int, classes: int, dim: int, *, verdicts: int, features: bool = True,
                seed: int = 0) -> dict:
    """Fill `path` (a new file) as the module docstring says (`features` False: no feature cache, for timing
    the publishing alone); returns build times in seconds."""
    store, reused = synthetic.reuse_or_refuse(path, n)
    if reused:
        store.close()
        return {}
    log.info("building %s: %d images, %d classes, %d-d features", path, n, classes, dim)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    names, cids = synthetic.add_classes(store, classes, digits=4)
    clean = np.sort(rng.integers(0, classes, n))                 # a contiguous id block per class
    noisy = np.where(rng.random(n) < 0.1, rng.integers(0, classes, n), clean)
    keys = [synthetic.image_key(i) for i in range(n)]
    synthetic.add_images(store, noisy, names, cids, root="/nowhere", width=256, height=256)
    times = {"images_s": time.perf_counter() - t0}
    t = time.perf_counter()
    cache = FeatureCache.for_backbone(path.parent / "features", BACKBONE_ID, IMAGE_SIZE, dim)
    protos = rng.gamma(1.0, 1.0, (classes, dim)).astype(np.float32)
    for start in range(0, n if features else 0, 65_536):         # features keyed by the ingest hashes
        sl = slice(start, min(start + 65_536, n))
        x = protos[clean[sl]] + rng.normal(0, 1.0, (sl.stop - sl.start, dim)).astype(np.float32)
        cache.add(keys[sl], np.maximum(x, 0))
    times["features_s"] = time.perf_counter() - t
    t = time.perf_counter()
    (path.parent / "backbone-synthetic.pt").write_bytes(b"")     # never loaded: every image is cached
    cfg = RoundConfig()  # registered as the default round's backbone, so the round keeps it
    store.add_artifact(kind="backbone", path=str(path.parent / "backbone-synthetic.pt"), backbone_id=BACKBONE_ID,
                       source="synthetic features (benchmark)",
                       provenance={"arch": cfg.arch, "kind": cfg.backbone, "image_size": IMAGE_SIZE,
                                   "num_classes": classes, "dim": dim})
    s = rng.random(n)
    version = synthetic.publish_scores(store, ((i + 1, cids[c], float(v), abs(float(v) - 0.5))
                                               for i, (c, v) in enumerate(zip(noisy.tolist(), s.tolist()))), delta=0.5)
    verify = np.flatnonzero(noisy % synthetic.VERIFY_EVERY == 0)
    for k, i in enumerate(rng.choice(verify, min(verdicts, len(verify)), replace=False).tolist()):
        store.record_verdict(i + 1, f"ann{k % 5}", "correct" if noisy[i] == clean[i] else "wrong",
                             reason="audit" if k % 4 == 0 else "uncertain", model_version=version)
    times["scores_verdicts_s"] = time.perf_counter() - t
    store.close()
    return {k: round(v, 1) for k, v in times.items()}


def _round(db: str, device: str, publish_only: bool, out: mp.Queue) -> None:
    """Child process: one default round; sends phase start times, total and peak RSS. Threads as the worker
    sets them (all cores but one, left to the app)."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    store = Store(db)
    starts = {"load": time.perf_counter()}
    cpu = {"load": time.process_time()}  # CPU seconds of all threads: what the phase costs on a busy machine

    def report(phase: str, progress: float, message: str) -> None:
        if phase not in starts:
            starts[phase], cpu[phase] = time.perf_counter(), time.process_time()
            store.worker_update(phase=phase, progress=progress, message=message)
            print(f"{time.strftime('%H:%M:%S')} {phase}: {message}", flush=True)

    if publish_only:  # only the last phase: a new version's scores written, made current, the old ones dropped
        data = pipeline.load_data(store)
        rng = np.random.default_rng(1)
        score = rng.uniform(-1, 1, len(data.ids)).astype(np.float32)
        sc = Scores(score, rng.integers(0, len(data.class_ids), len(score)), rng.random(len(score), np.float32),
                    expected_wrong=rng.random(len(score)))  # the default (robust) stores its counting P too
        version = store.add_model(delta=0.5, metrics={"synthetic": True})
        publish_scores(store, version, data, sc, 0.5, report)
    else:
        version = pipeline.run_round(store, RoundConfig(device=device), report=report)
    end, cpu_end = time.perf_counter(), time.process_time()
    store.worker_update(phase="done")
    store.close()
    order = [p for p in PHASES if p in starts]
    phase_s = {p: (starts[order[k + 1]] if k + 1 < len(order) else end) - starts[p] for k, p in enumerate(order)}
    phase_cpu_s = {p: (cpu[order[k + 1]] if k + 1 < len(order) else cpu_end) - cpu[p] for k, p in enumerate(order)}
    out.put({"version": version, "round_s": end - starts["load"], "round_cpu_s": cpu_end - cpu["load"],
             "phase_s": phase_s, "phase_cpu_s": phase_cpu_s, "threads": torch.get_num_threads(),
             "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20})


def stats_ms(samples: list[float]) -> dict:
    ms = sorted(s * 1000 for s in samples)
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "p50": statistics.median(ms), "p95": ms[min(len(ms) - 1, int(0.95 * len(ms)))],
            "max": ms[-1]}


def _annotate_once(store: Store, rng: random.Random) -> float:
    """Seconds for one next item plus its verdict: both are write transactions, as for an annotator."""
    t = time.perf_counter()
    items = next_items(store, "bench", n=1, rng=rng)
    if items:
        store.record_verdict(items[0].image_id, "bench", "correct", reason=items[0].reason,
                             model_version=items[0].model_version)
    return time.perf_counter() - t


def latency_during(store: Store, rng: random.Random, target, args: tuple, *, pace: dict[str, float],
                   timeout: float) -> tuple[dict, dict[str, list[float]]]:
    """Run target(*args, queue) in a spawned child that puts its result on the queue; meanwhile, while the worker
    row's phase is one of `pace`, time one next item + verdict (`_annotate_once`) and sleep pace[phase] seconds.
    -> (the child's result, seconds per sampled call by phase)."""
    q: mp.Queue = mp.get_context("spawn").Queue()
    child = mp.get_context("spawn").Process(target=target, args=(*args, q))
    child.start()
    during: dict[str, list[float]] = {}
    while child.is_alive() and q.empty():
        phase = store.worker_state()["phase"]
        if phase in pace:
            during.setdefault(phase, []).append(_annotate_once(store, rng))
            time.sleep(pace[phase])
        else:
            time.sleep(0.05)
    res = q.get(timeout=timeout)
    child.join()
    return res, during


def run(db: Path, *, idle_calls: int = 200, device: str = "cpu", publish_only: bool = False, seed: int = 0) -> dict:
    """The round in a child process; next-item latency here, before it (idle) and during each phase."""
    load_start = os.getloadavg()[0]  # the machine's load: wall times and latencies depend on it
    store = Store(db)
    store.worker_update(phase="idle")
    rng = random.Random(seed)
    idle = [_annotate_once(store, rng) for _ in range(idle_calls)]
    # writing is short: sample it densely; elsewhere a few annotators' pace, not a CPU hog of our own
    res, during = latency_during(store, rng, _round, (str(db), device, publish_only),
                                 pace={"writing": 0.02, "training": 0.5, "references": 0.5}, timeout=60)
    store.close()
    return res | {"load_avg_1m": {"start": load_start, "end": os.getloadavg()[0]},
                  "queue_ms": {"idle": stats_ms(idle)} | {f"during_{k}": stats_ms(v) for k, v in during.items()}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="images")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--dim", type=int, default=1280, help="feature size (EfficientNet-Lite0: 1280)")
    ap.add_argument("--verdicts", type=int, default=2000)
    ap.add_argument("--db", type=Path, help="store file to build or reuse (default: a temp dir, deleted)")
    ap.add_argument("--publish-only", action="store_true", help="time only the publishing of a new version")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "state" / "bench.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        build = build_store(db, args.n, args.classes, args.dim, verdicts=args.verdicts,
                            features=not args.publish_only)
        res = run(db, publish_only=args.publish_only)
    machine = f"{platform.processor() or platform.machine()}, {mp.cpu_count()} cores"
    out = {"n_images": args.n, "classes": args.classes, "dim": args.dim, "verdicts": args.verdicts,
           "publish_only": args.publish_only,
           "machine": machine, "build_s": build} | res
    print(f"\nround at {args.n:,} images, {args.classes} classes, {args.dim}-d features ({machine})\n")
    print("| phase | wall s | CPU s |\n|---|---|---|")
    for p, s in res["phase_s"].items():
        print(f"| {p} | {s:.1f} | {res['phase_cpu_s'][p]:.1f} |")
    print(f"| **round** | **{res['round_s']:.1f}** | {res['round_cpu_s']:.1f} |\n\n"
          f"peak RSS {res['peak_rss_gb']:.2f} GB; load average (1 min) {res['load_avg_1m']['start']:.1f} at the "
          f"start, {res['load_avg_1m']['end']:.1f} at the end\n")
    print("| next item + verdict | n | p50 ms | p95 ms | max ms |\n|---|---|---|---|---|")
    for k, s in res["queue_ms"].items():
        if s["n"]:
            print(f"| {k} | {s['n']} | {s['p50']:.1f} | {s['p95']:.1f} | {s['max']:.1f} |")
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
