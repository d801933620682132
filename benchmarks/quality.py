"""Label-noise detection on classes nobody verified: CleanNet (transfer) against cleanlab and kNN.

    python -m benchmarks.quality --data $CIFAR10N --labels worse \
        --verified-classes 0,1,2,3,4 --budget 0.02 --seed 0 --json out.json

`--backbone` picks the features every method gets: `pretrained` (default, the product's): the frozen ImageNet
EfficientNet-Lite0 at --image-size px; `noisy`: a ResNet trained from scratch on the noisy labels; `finetuned`:
Lite0 from ImageNet trained on the noisy labels; `concat`: pretrained and noisy side by side. `--budget` x N
images get a simulated human verdict (answered from clean_label), drawn only from the verified classes in
--rounds rounds, each method with its own imitation of the product's queue: the transfer rows with
methods.transfer_verdicts (a random first round, then lowest |p - 0.5| of the score fitted on every verdict
so far; no audit slice, every verdict trains), the paper rows with Runner.product_verdicts (a random audit
slice, --audit-share, that picks delta and the checkpoint, then lowest |relevance - delta|). All methods are
scored on the images whose noisy label is in a held-out (unverified) class. See benchmarks/README.md for recorded runs.

Methods. `--method` picks the product default, reported as `default` and used for the headline
ratio: `transfer` (default) is a calibrator over two class-agnostic signals, the out-of-fold linear-probe
log-odds of the noisy label and its margin over the best other class (cleannet_core.transfer), fitted on the
verdicts and flagged below 0.5, with its own uncertainty queue (|p - 0.5|); `paper` is the spec's CleanNet.
Ablation rows on the same features: `transfer_cleannet` (+ CleanNet relevance signals), `transfer_fallback`
(no verdicts: flag when the probe prefers another class), `selfconf_verdict_delta` (probe self-confidence,
threshold chosen on the same verdicts), `reference_margin` (threshold on the audit verdicts),
`transfer_all_classes` / `cleannet_all_classes` (the same budget spread over every class).
`--data-seed` fixes the image subset (and so the cached backbone) while `--seed` varies verdicts and models.
"""
from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from cleannet_core.classifier import resolve_device
from cleannet_core.metrics import best_threshold, detection_report, flag_report
from cleannet_core.references import KMeansConfig, build_references
from cleannet_core.train import TrainConfig
from cleannet_core.transfer import CLEANNET_SIGNALS, DEFAULT_SIGNALS, DELTA, signal_matrix

from .common import (Dataset, add_backbone_args, add_data_args, backbone_features, load_cifar10n, timing,
                     verified_classes)
from .methods import Runner, cleanlab_flags, fit_and_score, knn_agreement, transfer_signals, transfer_verdicts
from .report import config_of, write_json

METHODS = ("default", "transfer", "transfer_cleannet", "transfer_fallback", "selfconf_verdict_delta",
           "reference_margin", "cleannet", "cleannet_random_verdicts", "cleannet_no_verdicts",
           "transfer_all_classes", "cleannet_all_classes", "cleanlab", "knn", "all_clean")
T = TypeVar("T")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(p)
    add_backbone_args(p)
    p.add_argument("--labels", default="worse", help="aggre | worse | random1 | random2 | random3")
    p.add_argument("--verified-classes", default="0,1,2,3,4", help="comma-separated class ids with verdicts")
    p.add_argument("--seed", type=int, default=0, help="verdict draws, probe folds, CleanNet init")
    p.add_argument("--data-seed", type=int, help="image subset and backbone (default: --seed)")
    p.add_argument("--method", choices=("transfer", "paper"), default="transfer", help="the `default` row")
    p.add_argument("--arch", default="resnet18", help="backbone trained on the noisy labels")
    p.add_argument("--steps", type=int, default=4000, help="CleanNet steps (paper: 60,000; LR drops at half)")
    p.add_argument("--audit-share", type=float, default=0.2, help="share of verdicts drawn at random")
    p.add_argument("--no-paper", action="store_true",
                   help="skip the paper CleanNet rows (most of the time at 50k images on a CPU)")
    p.add_argument("--no-knn", action="store_true", help="skip the kNN row (a third of the rest at 50k)")
    return p.parse_args(argv)


@dataclass
class Bench:
    """One run's fixed inputs: features, references, ground truth, the held-out mask and the verdict budget."""
    args: argparse.Namespace
    ds: Dataset
    run: Runner                # CleanNet on these features; run.ok (N,) bool: noisy label == clean label
    heldout: np.ndarray        # (N,) bool: noisy label in a class without verdicts (where methods are scored)
    budget: int                # images that get a verdict
    rng: np.random.Generator   # verdict draws, in a fixed order
    timings: dict[str, float]

    def timed(self, name: str, fn: Callable[[], T]) -> T:
        with timing(self.timings, f"{name}_s"):
            return fn()

    def held(self, score: np.ndarray, delta: float) -> dict:
        """Detection report on the held-out images at `delta` (recorded alongside); higher score = cleaner."""
        ok = self.run.ok
        return detection_report(score[self.heldout], ok[self.heldout], delta) | {"delta": delta}


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.perf_counter()
    b = setup(args, timings={})
    results: dict[str, dict] = {}
    sigs, t_sel = transfer_rows(b, results)
    sel = None if args.no_paper else paper_rows(b, results, sigs)
    # thresholds of the one-signal rows: the paper queue's audit slice, else the transfer queue's random first round
    audit = t_sel[:int(round(b.budget / args.rounds))] if sel is None else sel[1]
    baseline_rows(b, results, sigs, audit)
    results["default"] = results["transfer" if args.method == "transfer" else "cleannet"]
    b.timings["total_s"] = round(time.perf_counter() - t0, 2)
    n_verified = len(t_sel) if args.method == "transfer" else len(sel[0]) + len(sel[1])
    out = summary(b, results, n_verified)
    print(markdown_table(out))
    write_json(args.json, out)
    return out


def setup(args: argparse.Namespace, *, timings: dict[str, float]) -> Bench:
    """Check the flags, load the images, their backbone features and k-means references."""
    device = resolve_device(args.device)
    data_seed = args.seed if args.data_seed is None else args.data_seed
    ds = load_cifar10n(args.data, args.labels, args.n, data_seed)
    verified = verified_classes(args.verified_classes, ds.num_classes)
    if args.no_paper and args.method == "paper":
        raise SystemExit("--no-paper skips the rows --method paper reports")
    feats = backbone_features(ds, args.backbone, tag=args.labels, epochs=args.epochs, seed=data_seed,
                              image_size=args.image_size, arch=args.arch, device=str(device), timings=timings,
                              cache=args.cache)
    with timing(timings, "references_s"):
        refs, _ = build_references(feats, ds.noisy, ds.num_classes,
                                   config=KMeansConfig(k=args.num_ref, seed=args.seed), device=device)
    tcfg = TrainConfig.shortened(args.steps, seed=args.seed)
    return Bench(args=args, ds=ds, run=Runner(ds, feats, refs, ds.noisy == ds.clean, tcfg, device),
                 heldout=~np.isin(ds.noisy, verified), budget=int(round(args.budget * len(ds.noisy))),
                 rng=np.random.default_rng(args.seed), timings=timings)


def transfer_rows(b: Bench, results: dict) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The product default (class-agnostic signals calibrated on verdicts drawn by its own queue) and its
    one-signal ablations; -> the signals and the verdict indices of the `transfer` row."""
    ds, run, ok, args = b.ds, b.run, b.run.ok, b.args
    sigs = b.timed("probe", lambda: transfer_signals(run.feats, ds.noisy, ds.num_classes, run.refs, run.valid,
                                                     args.seed, run.device))
    candidates = np.flatnonzero(~b.heldout)
    t_sel = b.timed("transfer", lambda: transfer_verdicts(sigs, ok, candidates, b.budget, args.rounds, b.rng))
    results["transfer"] = b.held(fit_and_score(sigs, DEFAULT_SIGNALS, t_sel, ok), DELTA)
    results["transfer_fallback"] = b.held((1 + sigs["probe_margin"]) / 2, DELTA)
    selfconf = sigs["probe_logodds"]
    results["selfconf_verdict_delta"] = b.held(selfconf, best_threshold(selfconf[t_sel], ok[t_sel])[0])
    t_all = transfer_verdicts(sigs, ok, np.arange(len(ds.noisy)), b.budget, args.rounds, b.rng)
    results["transfer_all_classes"] = b.held(fit_and_score(sigs, DEFAULT_SIGNALS, t_all, ok), DELTA)
    return sigs, t_sel


def paper_rows(b: Bench, results: dict, sigs: dict) -> tuple[np.ndarray, np.ndarray]:
    """The paper's CleanNet rows (and transfer_cleannet), each with verdicts drawn by its own queue (random
    audit slice + uncertainty rounds); fills `results`, adds the CleanNet signals to `sigs`, returns the
    (queue, audit) verdict indices of the `cleannet` row."""
    run, args = b.run, b.args
    candidates, everywhere = np.flatnonzero(~b.heldout), np.arange(len(b.ds.noisy))
    sel = b.timed("select", lambda: run.product_verdicts(candidates, b.budget, args.audit_share, args.rounds, b.rng))
    s, delta, model = b.timed("cleannet", lambda: run.fit_score(*sel))
    results["cleannet"] = b.held(s, delta)
    sigs |= dict(zip(CLEANNET_SIGNALS, signal_matrix(CLEANNET_SIGNALS, run.ds.noisy, features=run.feats,
                                                     refs=run.refs, model=model, valid_classes=run.valid).T))
    results["transfer_cleannet"] = b.held(fit_and_score(sigs, DEFAULT_SIGNALS + CLEANNET_SIGNALS,
                                                        np.concatenate(sel), run.ok), DELTA)

    rand = b.rng.choice(candidates, b.budget, replace=False)
    n_val = int(round(args.audit_share * b.budget))
    s, delta, _ = b.timed("cleannet_random_verdicts", lambda: run.fit_score(rand[n_val:], rand[:n_val]))
    results["cleannet_random_verdicts"] = b.held(s, delta)

    empty = np.zeros(0, dtype=np.int64)
    s, delta, _ = b.timed("cleannet_no_verdicts", lambda: run.fit_score(empty, empty))
    results["cleannet_no_verdicts"] = b.held(s, delta)

    sel_all = b.timed("select_all", lambda: run.product_verdicts(everywhere, b.budget, args.audit_share,
                                                                 args.rounds, b.rng))
    s, delta, _ = b.timed("cleannet_all_classes", lambda: run.fit_score(*sel_all))
    results["cleannet_all_classes"] = b.held(s, delta)
    return sel


def baseline_rows(b: Bench, results: dict, sigs: dict, audit: np.ndarray) -> None:
    """reference_margin, cleanlab, kNN (thresholds picked on the `audit` verdicts) and all_clean."""
    feats, noisy, ok, held = b.run.feats, b.ds.noisy, b.run.ok, b.heldout
    margin = sigs["proto_margin"]
    results["reference_margin"] = b.held(margin, best_threshold(margin[audit], ok[audit])[0])
    flags, conf = b.timed("cleanlab", lambda: cleanlab_flags(feats, noisy, b.args.seed))
    results["cleanlab"] = flag_report(flags[held], conf[held], ok[held])
    if not b.args.no_knn:
        agree = b.timed("knn", lambda: knn_agreement(feats, noisy))
        results["knn"] = b.held(agree, best_threshold(agree[audit], ok[audit])[0])
    results["all_clean"] = flag_report(np.zeros(held.sum(), bool), np.zeros(held.sum()), ok[held])


def summary(b: Bench, results: dict, n_verified: int) -> dict:
    """The JSON result: config, verified fraction, held-out reports, error ratios against cleanlab, timings."""
    args, n = b.args, len(b.ds.noisy)
    cleanlab_error = max(results["cleanlab"]["error"], 1e-12)
    return {
        "config": config_of(args)
        | {"data_seed": args.seed if args.data_seed is None else args.data_seed, "device": str(b.run.device),
           "torch": torch.__version__, "n_images": n, "n_heldout": int(b.heldout.sum()), "budget_images": b.budget},
        "verified_fraction": float(n_verified / n),
        "heldout": results,
        "default_vs_cleanlab_error": results["default"]["error"] / cleanlab_error,
        "cleannet_vs_cleanlab_error": (results["cleannet"]["error"] / cleanlab_error
                                       if "cleannet" in results else None),
        "timings_s": b.timings,
    }


def markdown_table(out: dict) -> str:
    rows = ["| method | error | precision | recall | F1 | AUROC |", "|---|---|---|---|---|---|"]
    for name in (m for m in METHODS if m in out["heldout"]):
        r = out["heldout"][name]
        rows.append(f"| {name} | {r['error']:.4f} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} "
                    f"| {r['auroc']:.3f} |")
    c = out["config"]
    head = (f"labels={c['labels']} n={c['n_images']} held-out images={c['n_heldout']} method={c['method']} "
            f"verified fraction={out['verified_fraction']:.4f} seed={c['seed']} data seed={c['data_seed']}")
    paper = out["cleannet_vs_cleanlab_error"]
    return "\n".join([head, *rows, f"default error / cleanlab error = {out['default_vs_cleanlab_error']:.3f}",
                      f"paper cleannet error / cleanlab error = {'not run' if paper is None else f'{paper:.3f}'}"])


if __name__ == "__main__":
    main()
