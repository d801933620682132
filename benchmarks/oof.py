"""Out-of-fold backbones: does a network that never saw an image's label find it better?

    python -m benchmarks.oof --data $CIFAR10N --labels worse --folds 2 --seeds 0,1,2 --json out.json

The backbone of `benchmarks.quality` is trained on every noisy label, so it can memorise the wrong ones. Here
`--folds` k extra backbones are each trained on the images of k - 1 folds and predict the k-th: every image
gets class probabilities from a network that never saw its label (cleanlab's recommended input). Rows, all
judged on classes 5-9 with the default's 2 % queue-drawn verdicts on classes 0-4:

- `default`: the product's score (probe log-odds + margin on the full backbone's features).
- `oof_logodds`: the calibrator on the out-of-fold backbone's log-odds of the noisy label alone.
- `default+oof`: the default's two signals plus that log-odds.
- `cleanlab_features`: cleanlab on the probe of the full backbone's features (the `cleanlab` row of quality).
- `cleanlab_oof`: cleanlab `find_label_issues` on the out-of-fold backbone probabilities.
- `all_clean`: flag nothing.
Costs k backbone trainings on (k-1)/k of the images each (cached in --cache).
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
from cleanlab.filter import find_label_issues

from cleannet_core.classifier import ClassifierConfig, predict, resolve_device
from cleannet_core.metrics import detection_report, flag_report
from cleannet_core.transfer import DEFAULT_SIGNALS, DELTA, probe_signals

from .common import Dataset, add_run_args, load_cifar10n, noisy_backbone, noisy_backbone_features
from .methods import cleanlab_flags, fit_and_score, seed_signals, transfer_verdicts
from .report import config_of, mean_over_seeds, write_json

log = logging.getLogger(__name__)
VERIFIED = np.arange(0, 5)
SETS = {"default": DEFAULT_SIGNALS, "oof_logodds": ("oof_logodds",),
        "default+oof": DEFAULT_SIGNALS + ("oof_logodds",)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(p, labels="worse")
    p.add_argument("--folds", type=int, default=2, help="out-of-fold backbones (each trained on (k-1)/k)")
    return p.parse_args(argv)


def oof_probs(ds: Dataset, config: ClassifierConfig, folds: np.ndarray, *, tag: str, device: str,
              cache: Path) -> np.ndarray:
    """(N, C) probabilities of each image from the backbone trained on the other folds."""
    out = np.zeros((len(ds.noisy), ds.num_classes), np.float32)
    for f in np.unique(folds):
        model = noisy_backbone(ds.subset(folds != f), config, tag=f"{tag}-oof{f}of{folds.max() + 1}",
                               device=device, cache=cache)
        _, probs, ok = predict(model, [ds.paths[i] for i in np.flatnonzero(folds == f)],
                               image_size=config.image_size, device=device)
        if not ok.all():
            raise SystemExit(f"{(~ok).sum()} images could not be read")
        out[folds == f] = probs
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.perf_counter()
    if "," in args.labels:
        raise SystemExit("--labels: one label set per oof.py run")
    device = resolve_device(args.device)
    ds = load_cifar10n(args.data, args.labels, args.n, args.data_seed)
    ccfg = ClassifierConfig(epochs=args.epochs, seed=args.data_seed)
    feats = noisy_backbone_features(ds, ccfg, tag=args.labels, device=str(device), cache=args.cache)
    folds = np.random.default_rng(args.data_seed).integers(0, args.folds, len(ds.noisy))
    probs = oof_probs(ds, ccfg, folds, tag=args.labels, device=str(device), cache=args.cache)
    t_backbones = round(time.perf_counter() - t0, 1)
    ok = ds.noisy == ds.clean
    held = ~np.isin(ds.noisy, VERIFIED)
    oof = probe_signals(probs, ds.noisy)[:, 0]
    fixed = {"all_clean": flag_report(np.zeros(held.sum(), bool), np.zeros(held.sum()), ok[held]),  # no seed in
             "cleanlab_oof": flag_report(find_label_issues(labels=ds.noisy, pred_probs=probs)[held],
                                         probs[held, ds.noisy[held]], ok[held])}
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        sigs = seed_signals(feats, ds.noisy, ds.num_classes, args.num_ref, seed, device) | {"oof_logodds": oof}
        sel = transfer_verdicts(sigs, ok, np.flatnonzero(~held), int(round(args.budget * len(ok))), args.rounds,
                                np.random.default_rng(seed))
        rows = {name: detection_report(fit_and_score(sigs, names, sel, ok)[held], ok[held], DELTA)
                for name, names in SETS.items()}
        flags, conf = cleanlab_flags(feats, ds.noisy, seed)
        rows |= {"cleanlab_features": flag_report(flags[held], conf[held], ok[held])} | fixed
        runs += [{"seed": seed, "row": k, "error": v["error"], "auroc": v["auroc"]} for k, v in rows.items()]
    summary = mean_over_seeds(runs, "row")
    oof_acc = float((probs.argmax(1) == ds.noisy).mean())
    out = {"config": config_of(args), "runs": runs, "summary": summary, "oof_accuracy_on_noisy_labels": oof_acc,
           "oof_accuracy_on_clean_labels": float((probs.argmax(1) == ds.clean).mean()),
           "backbones_s": t_backbones, "total_s": round(time.perf_counter() - t0, 1)}
    print(f"labels={args.labels} n={len(ok)} folds={args.folds} out-of-fold backbone accuracy: "
          f"{oof_acc:.3f} on the noisy labels, {out['oof_accuracy_on_clean_labels']:.3f} on the clean ones")
    print("| row | error | AUROC |\n|---|---|---|")
    for row, v in summary.items():
        print(f"| {row} | {v['error_mean']:.4f} ± {v['error_std']:.4f} | {v['auroc_mean']:.3f} |")
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
