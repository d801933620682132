"""Image classification with CleanNet's weights on CIFAR-10N, evaluated on the clean CIFAR-10 test set (spec §6, §8).

    python -m benchmarks.classify --data ../shared/data/cifar10n --labels worse --budget 0.032 \
        --verified-classes 0,1,2,3,4 --seed 0 --json out.json

Rows, every classifier trained from scratch with the same settings (arch, epochs, LR schedule):
  noisy            the noisy labels as they are (also round 0 of the CleanNet rows: its features feed CleanNet)
  cleannet_soft    noisy labels weighted by w_soft = max(0, s), alternating classifier/CleanNet (--rounds extra)
  cleannet_hard    the same with w_hard = 1[s >= delta]
  cleanlab_pruned  only the images cleanlab's find_label_issues keeps (out-of-fold logistic regression on the
                   noisy classifier's features, benchmarks.methods.cleanlab_flags)
  clean            the true labels (the ceiling)
gain_recovered = (cleannet_soft - noisy) / (clean - noisy): the paper reports 47 % with 3.2 % of images verified.

Verdicts: --budget x N images, answered from clean_label, drawn only from --verified-classes by
benchmarks.methods.Runner.product_verdicts (a random audit slice that validates, then CleanNet uncertainty-queue
rounds), the same verdicts for every weighted row. Size: --n / --epochs / --batch-size / --lr default to
50,000 images x 15 epochs, batch 128, LR 0.1 on CUDA and to 3,000 x 3, batch 32, LR 0.02 on a CPU (12 minutes
cold with --steps 2000 --threads 1 --workers 1 on a 2-core CPU shared with other jobs; --threads 1 was 5x
faster there than torch's 2 threads); see benchmarks/README.md. Classifier checkpoints (per epoch) and features
are cached under benchmarks/.cache, so an interrupted run resumes and a rerun with the same settings retrains nothing.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from cleannet_core.alternate import AlternateConfig, train_alternating
from cleannet_core.classifier import ClassifierConfig, evaluate, resolve_device, train_classifier
from cleannet_core.features import backbone_id, extract_features
from cleannet_core.metrics import detection_report, flag_report
from cleannet_core.references import KMeansConfig, build_references
from cleannet_core.train import TrainConfig

from .report import config_of, write_json
from .common import CACHE, load_cifar10n
from .methods import Runner, cleanlab_flags

ROWS = ("noisy", "cleannet_soft", "cleannet_hard", "cleanlab_pruned", "clean")
EXTRA_ROWS = ("transfer_soft", "transfer_hard")  # weights from the product's default score; only with --rows
log = logging.getLogger(__name__)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the cifar10n folder (labels.csv, train/, test/)")
    p.add_argument("--labels", default="worse", help="aggre | worse | random1 | random2 | random3")
    p.add_argument("--budget", type=float, default=0.032, help="fraction of ALL training images that get a verdict")
    p.add_argument("--verified-classes", default="0,1,2,3,4", help="comma-separated class ids with verdicts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--n", type=int, help="training images (default: all 50k on CUDA, 3000 on CPU)")
    p.add_argument("--epochs", type=int, help="classifier epochs (default: 15 on CUDA, 3 on CPU)")
    p.add_argument("--n-test", type=int, help="test images, a seeded subset (default: all 10k)")
    p.add_argument("--arch", default="resnet18", help="classifier: resnet18 | resnet50")
    p.add_argument("--batch-size", type=int, help="images per SGD step (default: 128 on CUDA, 32 on CPU)")
    p.add_argument("--lr", type=float, help="peak SGD learning rate, cosine decay (default: 0.1 on CUDA, 0.02 on CPU)")
    p.add_argument("--workers", type=int, help="image loader processes (default: min(8, cores))")
    p.add_argument("--steps", type=int, default=4000, help="CleanNet steps per round (paper: 60,000)")
    p.add_argument("--rounds", type=int, default=1, help="extra classifier/CleanNet alternations")
    p.add_argument("--normalize", default="mean", help="weights: mean (w / mean w) | batch (raw w, (1/N) sum)")
    p.add_argument("--queue-rounds", type=int, default=3, help="uncertainty-queue rounds drawing the verdicts")
    p.add_argument("--audit-share", type=float, default=0.2, help="share of verdicts drawn at random (validate)")
    p.add_argument("--num-ref", type=int, default=32, help="K reference vectors per class")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of the rows to run")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 is far faster on a busy CPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--cache", type=Path, default=CACHE, help="checkpoint and feature cache folder")
    return p.parse_args(argv)


def load_test(data: Path, n: int | None, seed: int) -> tuple[list[str], np.ndarray]:
    with open(Path(data) / "test_labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if n is not None and n < len(rows):
        rows = [rows[i] for i in np.sort(np.random.default_rng(seed + 1).permutation(len(rows))[:n])]
    return [str((Path(data) / r["path"]).resolve()) for r in rows], np.array([int(r["label"]) for r in rows])


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    n = args.n if args.n is not None else (None if cuda else 3000)
    epochs = args.epochs if args.epochs is not None else (15 if cuda else 3)
    workers = args.workers if args.workers is not None else min(8, os.cpu_count() or 1)
    batch_size = args.batch_size if args.batch_size is not None else (128 if cuda else 32)  # 32: enough steps
    lr = args.lr if args.lr is not None else (0.1 if cuda else 0.02)  # 0.05 diverges in the first CPU epoch
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    if set(rows) - set(ROWS + EXTRA_ROWS):
        raise SystemExit(f"--rows must be a subset of {','.join(ROWS + EXTRA_ROWS)}")
    timings: dict[str, float] = {}
    ds = load_cifar10n(args.data, args.labels, n, args.seed)
    test_paths, test_labels = load_test(args.data, args.n_test, args.seed)
    verified = np.array(sorted({int(c) for c in args.verified_classes.split(",")}))
    if verified.size == 0 or verified.min() < 0 or verified.max() >= ds.num_classes:
        raise SystemExit(f"--verified-classes must be ids in [0, {ds.num_classes})")
    ccfg = ClassifierConfig(arch=args.arch, epochs=epochs, batch_size=batch_size, lr=lr, seed=args.seed,
                            num_workers=workers)
    key = hashlib.blake2b(json.dumps([args.labels, ds.index.tolist(), {k: v for k, v in ccfg.__dict__.items()
                                                                        if k != "num_workers"}]).encode(),
                          digest_size=6).hexdigest()
    run_dir = args.cache / "classify" / f"{args.labels}-n{len(ds.paths)}-s{args.seed}-{key}"
    feature_cache = args.cache / "features"

    def fit(name: str, paths, labels) -> torch.nn.Module:
        t = time.perf_counter()
        m = train_classifier(paths, labels, ds.num_classes, config=ccfg, device=str(device),
                             checkpoint=run_dir / f"{name}.pt")
        timings[f"{name}_train_s"] = round(time.perf_counter() - t, 2)
        return m

    def test_acc(name: str, model) -> float:
        t = time.perf_counter()
        acc = evaluate(model, test_paths, test_labels, image_size=ccfg.image_size, num_workers=workers,
                       device=str(device))
        timings[f"{name}_test_s"] = round(time.perf_counter() - t, 2)
        log.info("%s: test accuracy %.4f", name, acc)
        return acc

    acc: dict[str, float] = {}
    details: dict[str, dict] = {}
    ok = ds.noisy == ds.clean
    noisy_model = fit("noisy", ds.paths, ds.noisy)
    if "noisy" in rows:
        acc["noisy"] = test_acc("noisy", noisy_model)
    t = time.perf_counter()
    feats = extract_features(noisy_model, ds.paths, cache_dir=feature_cache, backbone_id=backbone_id(noisy_model),
                             image_size=ccfg.image_size, num_workers=workers, device=str(device)).features
    timings["features_s"] = round(time.perf_counter() - t, 2)

    tcfg = TrainConfig.shortened(args.steps, seed=args.seed)
    budget = int(round(args.budget * len(ds.noisy)))
    verdicts = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    if {"cleannet_soft", "cleannet_hard", *EXTRA_ROWS} & set(rows):  # the same verdicts for every weighted row
        t = time.perf_counter()
        refs, _ = build_references(feats, ds.noisy, ds.num_classes, config=KMeansConfig(k=args.num_ref,
                                                                                          seed=args.seed),
                                   device=device)
        runner = Runner(ds, feats, refs, ok, tcfg, device)
        candidates = np.flatnonzero(np.isin(ds.noisy, verified))
        verdicts = runner.product_verdicts(candidates, budget, args.audit_share, args.queue_rounds,
                                           np.random.default_rng(args.seed))
        timings["verdicts_s"] = round(time.perf_counter() - t, 2)
    train_idx, val_idx = verdicts
    # weighted rows resume from checkpoints only when everything that sets their weights is the same
    weights_key = hashlib.blake2b(json.dumps([args.budget, sorted(verified.tolist()), args.steps, args.rounds,
                                              args.normalize, args.queue_rounds, args.audit_share,
                                              args.num_ref]).encode(), digest_size=6).hexdigest()
    for name in ("cleannet_soft", "cleannet_hard", *EXTRA_ROWS):
        if name not in rows:
            continue
        method, mode = ("paper" if name.startswith("cleannet") else "transfer"), name.split("_")[1]
        t = time.perf_counter()
        acfg = AlternateConfig(rounds=args.rounds, weights=mode, method=method, normalize=args.normalize,
                               num_ref=args.num_ref,
                               classifier=ccfg, cleannet=tcfg, device=str(device),
                               checkpoint_dir=run_dir / f"{name}-{weights_key}",
                               cache_dir=feature_cache)
        res = train_alternating(ds.paths, ds.noisy, ds.num_classes, verified_idx=train_idx, verified_ok=ok[train_idx],
                                val_idx=val_idx, val_ok=ok[val_idx], config=acfg, init_model=noisy_model,
                                report=log.info)
        timings[f"{name}_train_s"] = round(time.perf_counter() - t, 2)
        acc[name] = test_acc(name, res.model)
        details[name] = {"rounds": [_round_details(r, ok, ds.noisy, verified) for r in res.rounds],
                         "history": [{k: v for k, v in h.items() if k != "epochs"} for h in res.history]}
    if "cleanlab_pruned" in rows:
        t = time.perf_counter()
        flags, conf = cleanlab_flags(feats, ds.noisy, args.seed)
        timings["cleanlab_s"] = round(time.perf_counter() - t, 2)
        keep = np.flatnonzero(~flags)
        details["cleanlab_pruned"] = {"kept": float(len(keep) / len(flags)),
                                      "kept_noise_rate": float(1 - ok[keep].mean()),
                                      "detection": flag_report(flags, conf, ok)}
        acc["cleanlab_pruned"] = test_acc("cleanlab_pruned", fit("cleanlab_pruned", [ds.paths[i] for i in keep],
                                                                 ds.noisy[keep]))
    if "clean" in rows:
        acc["clean"] = test_acc("clean", fit("clean", ds.paths, ds.clean))
    gain = gain_recovered(acc)
    timings["total_s"] = round(time.perf_counter() - t0, 2)
    out = {
        "config": config_of(args)
        | {"n": len(ds.paths), "epochs": epochs, "batch_size": batch_size, "lr": lr, "workers": workers,
           "n_test": len(test_paths), "device": str(device),
           "gpu": torch.cuda.get_device_name(device) if cuda else None, "cpu_cores": os.cpu_count(),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "budget_images": budget,
           "verified_images": int(len(train_idx) + len(val_idx)), "train_noise_rate": float(1 - ok.mean())},
        "test_acc": acc,
        "gain_recovered": gain,
        "details": details,
        "timings_s": timings,
    }
    print(markdown_table(out))
    write_json(args.json, out)
    return out


def gain_recovered(acc: dict[str, float]) -> float | None:
    """Share of the noisy -> clean test-accuracy gap that the cleannet_soft row closes (1 = as good as the true
    labels, 0 = no better than the noisy ones); None without those three rows or when clean == noisy."""
    if not {"noisy", "cleannet_soft", "clean"} <= acc.keys() or acc["clean"] == acc["noisy"]:
        return None
    return (acc["cleannet_soft"] - acc["noisy"]) / (acc["clean"] - acc["noisy"])


def _round_details(r, ok: np.ndarray, noisy: np.ndarray, verified: np.ndarray) -> dict:
    """How well one round's scores separate right from wrong labels, on all images and on held-out classes."""
    held = ~np.isin(noisy, verified)
    return {"round": r.round, "delta": r.delta, "val_accuracy": r.val_accuracy,
            "mean_weight_correct": float(r.weights[ok].mean()), "mean_weight_wrong": float(r.weights[~ok].mean()),
            "detection_all": detection_report(r.score, ok, r.delta),
            "detection_heldout": detection_report(r.score[held], ok[held], r.delta)}


def markdown_table(out: dict) -> str:
    c, acc = out["config"], out["test_acc"]
    lines = [f"labels={c['labels']} n={c['n']} epochs={c['epochs']} arch={c['arch']} budget={c['budget']} "
             f"(verified {c['verified_images']} images) rounds={c['rounds']} steps={c['steps']} "
             f"test images={c['n_test']} device={c['gpu'] or c['device']} seed={c['seed']}",
             "", "| row | test acc |", "|---|---|"]
    lines += [f"| {name} | {acc[name]:.4f} |" for name in ROWS + EXTRA_ROWS if name in acc]
    g = out["gain_recovered"]
    lines += ["", f"gain_recovered = (cleannet_soft - noisy) / (clean - noisy) = "
                  f"{'n/a' if g is None else f'{g:.3f}'}; wall time {out['timings_s']['total_s']:.0f} s"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
