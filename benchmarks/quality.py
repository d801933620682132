"""Label-noise detection on classes nobody verified: CleanNet (transfer) against cleanlab and kNN.

    python -m benchmarks.quality --data ../shared/data/cifar10n --labels worse \
        --verified-classes 0,1,2,3,4 --budget 0.02 --seed 0 --json out.json

A backbone is trained on the noisy labels (no ImageNet weights offline; the paper's features come from such
a classifier anyway), its pool features feed every method. `--budget` x N images get a simulated human
verdict (answered from clean_label), drawn only from the verified classes the way the product draws them:
a random audit slice (20 %, used to pick delta and the checkpoint) plus an uncertainty queue filled in rounds
(random at cold start, then lowest |score - delta| of the current model). All methods are scored on the
images whose noisy label is in a held-out (unverified) class. See benchmarks/README.md for recorded runs.

Extra rows (issue 6 ablations, same model and verdicts): `reference_margin`, the verdict-free cosine margin
of an image to its class's reference prototype over the best other class, and `cleannet_calibrated`, a
logistic calibrator over the class-agnostic signals of cleannet_core.transfer fitted on the audit verdicts.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from cleannet_core.classifier import ClassifierConfig, resolve_device
from cleannet_core.metrics import best_threshold, detection_report, flag_report
from cleannet_core.model import CleanNet
from cleannet_core.references import KMeansConfig, build_references
from cleannet_core.score import score_images
from cleannet_core.train import TrainConfig, relevance, train_cleannet
from cleannet_core.transfer import SIGNALS, agnostic_signals, fit_calibrator

from .report import config_of, write_json
from .common import CACHE, Dataset, load_cifar10n, noisy_backbone_features

METHODS = ("cleannet", "cleannet_random_verdicts", "cleannet_no_verdicts", "cleanlab", "knn",
           "cleannet_all_classes", "all_clean", "reference_margin", "cleannet_calibrated")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the cifar10n folder (labels.csv, train/)")
    p.add_argument("--labels", default="worse", help="aggre | worse | random1 | random2 | random3")
    p.add_argument("--verified-classes", default="0,1,2,3,4", help="comma-separated class ids with verdicts")
    p.add_argument("--budget", type=float, default=0.02, help="fraction of ALL images that get a verdict")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--n", type=int, default=10_000, help="images used (default 10k: ~15 min cold on 2 cores)")
    p.add_argument("--arch", default="resnet18", help="backbone trained on the noisy labels")
    p.add_argument("--epochs", type=int, default=10, help="backbone epochs")
    p.add_argument("--steps", type=int, default=4000, help="CleanNet steps (paper: 60,000; LR drops at half)")
    p.add_argument("--rounds", type=int, default=3, help="uncertainty-queue rounds before the final model")
    p.add_argument("--audit-share", type=float, default=0.2, help="share of verdicts drawn at random")
    p.add_argument("--num-ref", type=int, default=32, help="K reference vectors per class")
    p.add_argument("--device", default="auto")
    p.add_argument("--cache", type=Path, default=CACHE, help="backbone and feature cache folder")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    device = resolve_device(args.device)
    ds = load_cifar10n(args.data, args.labels, args.n, args.seed)
    verified = np.array(sorted({int(c) for c in args.verified_classes.split(",")}))
    if verified.size == 0 or verified.min() < 0 or verified.max() >= ds.num_classes:
        raise SystemExit(f"--verified-classes must be ids in [0, {ds.num_classes})")
    ccfg = ClassifierConfig(arch=args.arch, epochs=args.epochs, seed=args.seed)
    feats = noisy_backbone_features(ds, ccfg, tag=args.labels, device=str(device), timings=timings,
                                    cache=args.cache)

    t = time.perf_counter()
    refs, counts = build_references(feats, ds.noisy, ds.num_classes,
                                    config=KMeansConfig(k=args.num_ref, seed=args.seed), device=device)
    timings["references_s"] = round(time.perf_counter() - t, 2)

    ok = ds.noisy == ds.clean
    heldout = ~np.isin(ds.noisy, verified)
    budget = int(round(args.budget * len(ds.noisy)))
    tcfg = TrainConfig(steps=args.steps, lr_step=max(args.steps // 2, 1), val_interval=max(args.steps // 10, 1),
                       seed=args.seed)
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

    def held_at_audit_delta(score: np.ndarray) -> dict:
        """`held` with delta chosen on the audit verdicts: the verdicts CleanNet gets too."""
        return held(score, best_threshold(score[audit], ok[audit])[0])

    candidates = np.flatnonzero(~heldout)
    sel = timed("select", lambda: run.product_verdicts(candidates, budget, args.audit_share, args.rounds, rng))
    s, delta, model = timed("cleannet", lambda: run.fit_score(*sel))
    results["cleannet"] = held(s, delta)
    audit = sel[1]

    # Issue 6 ablations on the same model and verdicts: class-agnostic signals (cleannet_core.transfer).
    sig = timed("signals", lambda: agnostic_signals(model, feats, ds.noisy, refs, valid_classes=run.valid))
    margin = sig[:, SIGNALS.index("proto_margin")]       # verdict-free: no training at all
    results["reference_margin"] = held_at_audit_delta(margin)
    calibrated = fit_calibrator(sig[audit], ok[audit])(sig)  # fitted on the audit verdicts only
    results["cleannet_calibrated"] = held_at_audit_delta(calibrated)

    rand = rng.choice(candidates, budget, replace=False)
    n_val = int(round(args.audit_share * budget))
    s, delta, _ = timed("cleannet_random_verdicts", lambda: run.fit_score(rand[n_val:], rand[:n_val]))
    results["cleannet_random_verdicts"] = held(s, delta)

    empty = np.zeros(0, dtype=np.int64)
    s, delta, _ = timed("cleannet_no_verdicts", lambda: run.fit_score(empty, empty))
    results["cleannet_no_verdicts"] = held(s, delta)

    everywhere = np.arange(len(ds.noisy))
    sel_all = timed("select_all", lambda: run.product_verdicts(everywhere, budget, args.audit_share,
                                                               args.rounds, rng))
    s, delta, _ = timed("cleannet_all_classes", lambda: run.fit_score(*sel_all))
    results["cleannet_all_classes"] = held(s, delta)

    flags, conf = timed("cleanlab", lambda: cleanlab_flags(feats, ds.noisy, args.seed))
    results["cleanlab"] = flag_report(flags[heldout], conf[heldout], ok[heldout])

    agree = timed("knn", lambda: knn_agreement(feats, ds.noisy))
    results["knn"] = held_at_audit_delta(agree)

    results["all_clean"] = flag_report(np.zeros(heldout.sum(), bool), np.zeros(heldout.sum()), ok[heldout])
    timings["total_s"] = round(time.perf_counter() - t0, 2)
    out = {
        "config": config_of(args)
        | {"device": str(device), "torch": torch.__version__, "n_images": len(ds.noisy),
           "n_heldout": int(heldout.sum()), "budget_images": budget},
        "verified_fraction": float((len(sel[0]) + len(sel[1])) / len(ds.noisy)),
        "heldout": results,
        "cleannet_vs_cleanlab_error": results["cleannet"]["error"] / max(results["cleanlab"]["error"], 1e-12),
        "timings_s": timings,
    }
    print(markdown_table(out))
    write_json(args.json, out)
    return out


class Runner:
    """Trains and scores CleanNet on fixed features, references and ground truth."""

    def __init__(self, ds: Dataset, feats: np.ndarray, refs: np.ndarray, ok: np.ndarray, tcfg: TrainConfig,
                 device: torch.device):
        self.ds, self.feats, self.refs, self.ok, self.tcfg, self.device = ds, feats, refs, ok, tcfg, device
        self.valid = np.bincount(ds.noisy, minlength=ds.num_classes) > 0

    def train(self, train_idx: np.ndarray, val_idx: np.ndarray, steps: int | None = None):
        cfg = self.tcfg if steps is None else TrainConfig(**{**self.tcfg.__dict__, "steps": steps,
                                                              "lr_step": max(steps // 2, 1),
                                                              "val_interval": max(steps // 5, 1)})
        return train_cleannet(self.feats, self.ds.noisy, self.refs, verified_idx=train_idx,
                              verified_ok=self.ok[train_idx], val_idx=val_idx, val_ok=self.ok[val_idx],
                              config=cfg, device=self.device)

    def fit_score(self, train_idx: np.ndarray, val_idx: np.ndarray) -> tuple[np.ndarray, float, CleanNet]:
        res = self.train(train_idx, val_idx)
        sc = score_images(res.model, self.feats, self.ds.noisy, self.refs, valid_classes=self.valid)
        return sc.score, res.delta, res.model

    def product_verdicts(self, candidates: np.ndarray, budget: int, audit_share: float, rounds: int,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(queue verdicts, audit verdicts) as the product's queue would draw them from `candidates`."""
        n_audit = int(round(audit_share * budget))
        audit = rng.choice(candidates, n_audit, replace=False)
        pool = np.setdiff1d(candidates, audit)
        sizes = np.diff(np.linspace(0, budget - n_audit, rounds + 1).round().astype(int))
        chosen = rng.choice(pool, sizes[0], replace=False)          # cold start: random
        for size in sizes[1:]:
            res = self.train(chosen, audit, steps=max(self.tcfg.steps // 4, 1))
            rest = np.setdiff1d(pool, chosen)
            refs_t = torch.as_tensor(self.refs, device=self.device)
            s = relevance(res.model, self.feats[rest], self.ds.noisy[rest], refs_t)
            chosen = np.concatenate([chosen, rest[np.argsort(np.abs(s - res.delta), kind="stable")[:size]]])
        return chosen, audit


def cleanlab_flags(feats: np.ndarray, noisy: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab find_label_issues on 5-fold out-of-fold logistic-regression probabilities.

    Returns flags (N,) bool and self-confidence p(noisy label) (N,), the score used for its AUROC.
    """
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.log1p(np.maximum(feats, 0))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=0.1))
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    probs = cross_val_predict(clf, x, noisy, cv=cv, method="predict_proba")
    flags = find_label_issues(labels=noisy, pred_probs=probs)
    return flags, probs[np.arange(len(noisy)), noisy]


def knn_agreement(feats: np.ndarray, noisy: np.ndarray, k: int = 10) -> np.ndarray:
    """Similarity-weighted share of the k nearest neighbours (cosine, log features) with the same label."""
    x = torch.nn.functional.normalize(torch.log1p(torch.as_tensor(feats).float().clamp_min(0)), dim=1)
    y = torch.as_tensor(noisy)
    out = np.empty(len(noisy), dtype=np.float64)
    for start in range(0, len(noisy), 2048):
        sims = x[start:start + 2048] @ x.T                                  # (b, N)
        sims[torch.arange(sims.shape[0]), torch.arange(start, start + sims.shape[0])] = -2  # not itself
        top, idx = sims.topk(k, dim=1)
        w = top.clamp_min(0)
        same = (y[idx] == y[start:start + sims.shape[0], None]).float()
        out[start:start + sims.shape[0]] = ((w * same).sum(1) / w.sum(1).clamp_min(1e-12)).numpy()
    return out


def markdown_table(out: dict) -> str:
    rows = ["| method | error | precision | recall | F1 | AUROC |", "|---|---|---|---|---|---|"]
    for name in METHODS:
        r = out["heldout"][name]
        rows.append(f"| {name} | {r['error']:.4f} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} "
                    f"| {r['auroc']:.3f} |")
    c = out["config"]
    head = (f"labels={c['labels']} n={c['n_images']} held-out images={c['n_heldout']} "
            f"verified fraction={out['verified_fraction']:.4f} seed={c['seed']}")
    return "\n".join([head, *rows, f"cleannet error / cleanlab error = {out['cleannet_vs_cleanlab_error']:.3f}"])


if __name__ == "__main__":
    main()
