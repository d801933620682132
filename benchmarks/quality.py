"""Label-noise detection on classes nobody verified: CleanNet (transfer) against cleanlab and kNN.

    python -m benchmarks.quality --data ../shared/data/cifar10n --labels worse \
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
import numpy as np
import torch

from cleannet_core.classifier import resolve_device
from cleannet_core.metrics import best_threshold, detection_report, flag_report
from cleannet_core.references import KMeansConfig, build_references
from cleannet_core.train import TrainConfig
from cleannet_core.transfer import CLEANNET_SIGNALS, DEFAULT_SIGNALS, DELTA, signal_matrix

from .common import add_backbone_args, add_data_args, backbone_features, load_cifar10n
from .methods import Runner, cleanlab_flags, fit_and_score, knn_agreement, transfer_signals, transfer_verdicts
from .report import config_of, write_json

METHODS = ("default", "transfer", "transfer_cleannet", "transfer_fallback", "selfconf_verdict_delta",
           "reference_margin", "cleannet", "cleannet_random_verdicts", "cleannet_no_verdicts",
           "transfer_all_classes", "cleannet_all_classes", "cleanlab", "knn", "all_clean")


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
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    device = resolve_device(args.device)
    data_seed = args.seed if args.data_seed is None else args.data_seed
    ds = load_cifar10n(args.data, args.labels, args.n, data_seed)
    verified = np.array(sorted({int(c) for c in args.verified_classes.split(",")}))
    if verified.size == 0 or verified.min() < 0 or verified.max() >= ds.num_classes:
        raise SystemExit(f"--verified-classes must be ids in [0, {ds.num_classes})")
    if args.no_paper and args.method == "paper":
        raise SystemExit("--no-paper skips the rows --method paper reports")
    feats = backbone_features(ds, args.backbone, tag=args.labels, epochs=args.epochs, seed=data_seed,
                              image_size=args.image_size, arch=args.arch, device=str(device), timings=timings,
                              cache=args.cache)

    t = time.perf_counter()
    refs, counts = build_references(feats, ds.noisy, ds.num_classes,
                                    config=KMeansConfig(k=args.num_ref, seed=args.seed), device=device)
    timings["references_s"] = round(time.perf_counter() - t, 2)

    ok = ds.noisy == ds.clean
    heldout = ~np.isin(ds.noisy, verified)
    budget = int(round(args.budget * len(ds.noisy)))
    tcfg = TrainConfig.shortened(args.steps, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    run = Runner(ds, feats, refs, ok, tcfg, device)
    results: dict[str, dict] = {}

    def timed(name, fn):
        t = time.perf_counter()
        out = fn()
        timings[f"{name}_s"] = round(time.perf_counter() - t, 2)
        return out

    def held(score: np.ndarray, delta: float) -> dict:
        """Detection report on the held-out images at `delta` (recorded alongside)."""
        return detection_report(score[heldout], ok[heldout], delta) | {"delta": delta}

    candidates = np.flatnonzero(~heldout)
    everywhere = np.arange(len(ds.noisy))

    # The product default: class-agnostic signals, calibrated on verdicts drawn by its own queue.
    sigs = timed("probe", lambda: transfer_signals(feats, ds.noisy, ds.num_classes, refs, run.valid, args.seed,
                                                   device))
    t_sel = timed("transfer", lambda: transfer_verdicts(sigs, ok, candidates, budget, args.rounds, rng))
    results["transfer"] = held(fit_and_score(sigs, DEFAULT_SIGNALS, t_sel, ok), DELTA)
    results["transfer_fallback"] = held((1 + sigs["probe_margin"]) / 2, DELTA)
    selfconf = sigs["probe_logodds"]
    results["selfconf_verdict_delta"] = held(selfconf, best_threshold(selfconf[t_sel], ok[t_sel])[0])
    t_all = transfer_verdicts(sigs, ok, everywhere, budget, args.rounds, rng)
    results["transfer_all_classes"] = held(fit_and_score(sigs, DEFAULT_SIGNALS, t_all, ok), DELTA)

    if args.no_paper:  # thresholds of the one-signal rows from the transfer queue's random first round
        audit = t_sel[:int(round(budget / args.rounds))]
    else:
        sel = paper_rows(args, run, results, sigs, candidates, everywhere, budget, rng, held, timed)
        audit = sel[1]
    margin = sigs["proto_margin"]
    results["reference_margin"] = held(margin, best_threshold(margin[audit], ok[audit])[0])

    flags, conf = timed("cleanlab", lambda: cleanlab_flags(feats, ds.noisy, args.seed))
    results["cleanlab"] = flag_report(flags[heldout], conf[heldout], ok[heldout])

    agree = timed("knn", lambda: knn_agreement(feats, ds.noisy))
    results["knn"] = held(agree, best_threshold(agree[audit], ok[audit])[0])

    results["all_clean"] = flag_report(np.zeros(heldout.sum(), bool), np.zeros(heldout.sum()), ok[heldout])
    results["default"] = results["transfer" if args.method == "transfer" else "cleannet"]
    timings["total_s"] = round(time.perf_counter() - t0, 2)
    out = {
        "config": config_of(args)
        | {"data_seed": data_seed, "device": str(device), "torch": torch.__version__, "n_images": len(ds.noisy),
           "n_heldout": int(heldout.sum()), "budget_images": budget},
        "verified_fraction": float(len(t_sel) / len(ds.noisy) if args.method == "transfer"
                                   else (len(sel[0]) + len(sel[1])) / len(ds.noisy)),
        "heldout": results,
        "default_vs_cleanlab_error": results["default"]["error"] / max(results["cleanlab"]["error"], 1e-12),
        "cleannet_vs_cleanlab_error": (results["cleannet"]["error"] / max(results["cleanlab"]["error"], 1e-12)
                                       if "cleannet" in results else None),
        "timings_s": timings,
    }
    print(markdown_table(out))
    write_json(args.json, out)
    return out


def paper_rows(args, run: "Runner", results: dict, sigs: dict, candidates: np.ndarray, everywhere: np.ndarray,
               budget: int, rng: np.random.Generator, held, timed) -> tuple[np.ndarray, np.ndarray]:
    """The paper's CleanNet rows (and transfer_cleannet), each with verdicts drawn by its own queue (random
    audit slice + uncertainty rounds); fills `results`, adds the CleanNet signals to `sigs`, returns the
    (queue, audit) verdict indices of the `cleannet` row."""
    sel = timed("select", lambda: run.product_verdicts(candidates, budget, args.audit_share, args.rounds, rng))
    s, delta, model = timed("cleannet", lambda: run.fit_score(*sel))
    results["cleannet"] = held(s, delta)
    sigs |= dict(zip(CLEANNET_SIGNALS, signal_matrix(CLEANNET_SIGNALS, run.ds.noisy, features=run.feats,
                                                     refs=run.refs, model=model, valid_classes=run.valid).T))
    results["transfer_cleannet"] = held(fit_and_score(sigs, DEFAULT_SIGNALS + CLEANNET_SIGNALS,
                                                      np.concatenate(sel), run.ok), DELTA)

    rand = rng.choice(candidates, budget, replace=False)
    n_val = int(round(args.audit_share * budget))
    s, delta, _ = timed("cleannet_random_verdicts", lambda: run.fit_score(rand[n_val:], rand[:n_val]))
    results["cleannet_random_verdicts"] = held(s, delta)

    empty = np.zeros(0, dtype=np.int64)
    s, delta, _ = timed("cleannet_no_verdicts", lambda: run.fit_score(empty, empty))
    results["cleannet_no_verdicts"] = held(s, delta)

    sel_all = timed("select_all", lambda: run.product_verdicts(everywhere, budget, args.audit_share,
                                                               args.rounds, rng))
    s, delta, _ = timed("cleannet_all_classes", lambda: run.fit_score(*sel_all))
    results["cleannet_all_classes"] = held(s, delta)
    return sel


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
