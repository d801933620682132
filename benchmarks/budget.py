"""How many verdicts, on how many classes, the default transfer score needs.

    python -m benchmarks.budget --data $CIFAR10N --labels worse,random1,aggre \
        --budgets 0,0.002,0.005,0.01,0.02,0.05 --verified 1,2,5 --seeds 0,1,2 --json out.json

Same features, probe and references as `benchmarks.quality` (cached backbone of --data-seed). For every
label set, number of verified classes v (classes 0 .. v-1) and budget b (fraction of all images), verdicts are
drawn by the transfer queue (random first round, then lowest |p - 0.5|) and the score is judged on the
images whose noisy label is in classes 5-9, which no setting verifies. Budget 0 is the verdict-free fallback.
Prints mean and spread over seeds; cleanlab's error on the same held-out images is the reference.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from cleannet_core.classifier import resolve_device
from cleannet_core.metrics import detection_report, flag_report
from cleannet_core.references import KMeansConfig
from cleannet_core.transfer import DEFAULT_SIGNALS, DELTA, MIN_EACH

from .common import CACHE, add_backbone_args, backbone_features, load_cifar10n
from .methods import cleanlab_flags, fit_and_score, seed_signals, transfer_verdicts
from .report import config_of, write_json

HELD = np.arange(5, 10)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--labels", default="worse,random1,aggre")
    p.add_argument("--budgets", default="0,0.002,0.005,0.01,0.02,0.05")
    p.add_argument("--verified", default="1,2,5", help="numbers of verified classes (taken from 0-4)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-each", type=int, default=MIN_EACH, help="verdicts of each kind the calibrator needs")
    p.add_argument("--device", default="auto")
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--json", type=Path)
    add_backbone_args(p)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.perf_counter()
    device = resolve_device(args.device)
    budgets = [float(b) for b in args.budgets.split(",")]
    verified_counts = [int(v) for v in args.verified.split(",")]
    if any(not 1 <= v <= 5 for v in verified_counts):
        raise SystemExit("--verified counts must be in 1..5 (classes 5-9 are always held out)")
    seeds = [int(s) for s in args.seeds.split(",")]
    runs: list[dict] = []
    cleanlab_err: dict[str, float] = {}
    for labels in args.labels.split(","):
        ds = load_cifar10n(args.data, labels, args.n, args.data_seed)
        feats = backbone_features(ds, args.backbone, tag=labels, epochs=args.epochs, seed=args.data_seed,
                                  image_size=args.image_size, device=str(device), cache=args.cache)
        ok = ds.noisy == ds.clean
        heldout = np.isin(ds.noisy, HELD)
        flags, conf = cleanlab_flags(feats, ds.noisy, args.data_seed)
        cleanlab_err[labels] = flag_report(flags[heldout], conf[heldout], ok[heldout])["error"]
        for seed in seeds:
            sigs = seed_signals(feats, ds.noisy, ds.num_classes, KMeansConfig.k, seed, device)
            for v in verified_counts:
                candidates = np.flatnonzero(np.isin(ds.noisy, np.arange(v)))
                for b in budgets:
                    n = int(round(b * len(ok)))
                    if n == 0:
                        score = (1 + sigs["probe_margin"]) / 2
                    else:
                        rng = np.random.default_rng(seed)
                        chosen = transfer_verdicts(sigs, ok, candidates, min(n, len(candidates)), args.rounds, rng,
                                                   args.min_each)
                        score = fit_and_score(sigs, DEFAULT_SIGNALS, chosen, ok, args.min_each)
                    r = detection_report(score[heldout], ok[heldout], DELTA)
                    runs.append({"labels": labels, "seed": seed, "verified": v, "budget": b, "verdicts": n,
                                 "error": r["error"], "auroc": r["auroc"], "f1": r["f1"]})
    out = {"config": config_of(args) | {"device": str(device)}, "cleanlab_error": cleanlab_err, "runs": runs,
           "total_s": round(time.perf_counter() - t0, 2)}
    print(markdown_table(out))
    write_json(args.json, out)
    return out


def markdown_table(out: dict) -> str:
    """Error on classes 5-9 (mean ± std over seeds) per label set, verified classes and budget."""
    runs = out["runs"]
    labels = list(dict.fromkeys(r["labels"] for r in runs))
    keys = list(dict.fromkeys((r["verified"], r["budget"], r["verdicts"]) for r in runs))
    rows = ["| verified classes | budget | verdicts | " + " | ".join(f"{lb} error" for lb in labels) + " |",
            "|---|---|---|" + "---|" * len(labels)]
    for v, b, n in keys:
        cells = []
        for lb in labels:
            e = np.array([r["error"] for r in runs if (r["labels"], r["verified"], r["budget"]) == (lb, v, b)])
            cells.append(f"{e.mean():.4f} ± {e.std():.4f}")
        rows.append(f"| {v} | {b:g} | {n} | " + " | ".join(cells) + " |")
    rows.append("| cleanlab | - | 0 | " + " | ".join(f"{out['cleanlab_error'][lb]:.4f}" for lb in labels) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
