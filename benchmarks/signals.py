"""Which signals the transfer calibrator should use: one row per signal set.

    python -m benchmarks.signals --data $CIFAR10N --labels aggre,random1,worse \
        --seeds 0,1,2 --json out.json

Same cached features, probe, references and verdicts as `benchmarks.quality` (the default score's own queue
draws `--budget` x N verdicts from classes 0-4); every signal set is calibrated on those same verdicts and
judged on the images whose noisy label is in classes 5-9. Sets: the probe log-odds with the prototype margin,
the same standardised within each noisy class (`_z`), with the kNN label agreement or the probe margin added,
the log-odds or the probe margin alone, the two together (DEFAULT_SIGNALS), and `class_cv`: the set chosen per
run by leave-one-verified-class-out log loss of the verdicts (model selection on verified classes held out as
if unverified; it sees no verdict of classes 5-9).
"""
from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from cleannet_core.classifier import resolve_device
from cleannet_core.metrics import detection_report
from cleannet_core.transfer import DEFAULT_SIGNALS, DELTA, standardise_within

from .common import add_backbone_args, add_run_args, backbone_features, load_cifar10n
from .methods import fit_and_score, knn_agreement, seed_signals, transfer_verdicts
from .report import config_of, mean_over_seeds, write_json

log = logging.getLogger(__name__)
VERIFIED = np.arange(0, 5)
SETS: dict[str, tuple[str, ...]] = {
    "logodds+proto_margin": ("probe_logodds", "proto_margin"),
    "within_class_z": ("probe_logodds_z", "proto_margin_z"),
    "logodds+proto_margin+z": ("probe_logodds", "proto_margin", "probe_logodds_z", "proto_margin_z"),
    "logodds+proto_margin+knn": ("probe_logodds", "proto_margin", "knn"),
    "logodds+proto_margin+probe_margin": ("probe_logodds", "proto_margin", "probe_margin"),
    "logodds_only": ("probe_logodds",),
    "probe_margin_only": ("probe_margin",),
    "logodds+probe_margin": ("probe_logodds", "probe_margin"),   # DEFAULT_SIGNALS now
    "logodds+logodds_z": ("probe_logodds", "probe_logodds_z"),
}
DEFAULT_SET = next(name for name, names in SETS.items() if names == DEFAULT_SIGNALS)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(p, labels="aggre,random1,worse")
    add_backbone_args(p)
    p.add_argument("--queue", choices=list(SETS), default=DEFAULT_SET,
                   help="the signal set whose uncertainty queue draws the verdicts (default: the product's)")
    return p.parse_args(argv)


def class_cv_loss(sigs: dict[str, np.ndarray], names: tuple[str, ...], idx: np.ndarray, ok: np.ndarray,
                  noisy: np.ndarray) -> float:
    """Mean log loss on each verified class's verdicts of the calibrator fitted on the other classes' verdicts."""
    losses = []
    for c in np.unique(noisy[idx]):
        test, train = idx[noisy[idx] == c], idx[noisy[idx] != c]
        p = np.clip(fit_and_score(sigs, names, train, ok)[test], 1e-6, 1 - 1e-6)
        losses.append(-np.where(ok[test], np.log(p), np.log1p(-p)).sum())
    return float(np.sum(losses) / len(idx))


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.perf_counter()
    device = resolve_device(args.device)
    runs = []
    for labels in args.labels.split(","):
        ds = load_cifar10n(args.data, labels, args.n, args.data_seed)
        feats = backbone_features(ds, args.backbone, tag=labels, epochs=args.epochs, seed=args.data_seed,
                                  image_size=args.image_size, device=str(device), cache=args.cache)
        ok = ds.noisy == ds.clean
        held = ~np.isin(ds.noisy, VERIFIED)
        knn = knn_agreement(feats, ds.noisy)
        for seed in (int(s) for s in args.seeds.split(",")):
            sigs = seed_signals(feats, ds.noisy, ds.num_classes, args.num_ref, seed, device)
            sigs |= {f"{n}_z": standardise_within(sigs[n], ds.noisy) for n in ("probe_logodds", "proto_margin")}
            sigs["knn"] = knn
            sel = transfer_verdicts(sigs, ok, np.flatnonzero(~held), int(round(args.budget * len(ok))),
                                    args.rounds, np.random.default_rng(seed), signals=SETS[args.queue])
            cv = {name: class_cv_loss(sigs, names, sel, ok, ds.noisy) for name, names in SETS.items()}
            chosen = min(cv, key=cv.get)
            for name, names in [*SETS.items(), ("class_cv", SETS[chosen])]:
                r = detection_report(fit_and_score(sigs, names, sel, ok)[held], ok[held], DELTA)
                runs.append({"labels": labels, "seed": seed, "set": name, "error": r["error"], "auroc": r["auroc"],
                             "cv_loss": cv.get(name), "chosen": chosen if name == "class_cv" else None})
            log.info("%s seed %d: class_cv chose %s", labels, seed, chosen)
    out = {"config": config_of(args), "runs": runs, "summary": mean_over_seeds(runs, "labels", "set"),
           "total_s": round(time.perf_counter() - t0, 1)}
    print(markdown_table(out["summary"]))
    write_json(args.json, out)
    return out


def markdown_table(summary: dict) -> str:
    labels = list(summary)
    rows = ["| signal set | " + " | ".join(f"{lb} error | {lb} AUROC" for lb in labels) + " |",
            "|---|" + "---|---|" * len(labels)]
    for name in [*SETS, "class_cv"]:
        label = f"{name} (default)" if name == DEFAULT_SET else name
        cells = [f"{summary[lb][name]['error_mean']:.4f} ± {summary[lb][name]['error_std']:.4f} | "
                 f"{summary[lb][name]['auroc_mean']:.3f}" for lb in labels]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
