"""Image classification with CleanNet's weights on CIFAR-10N, evaluated on the clean CIFAR-10 test set (spec §6, §8).

    python -m benchmarks.classify --data $CIFAR10N --labels worse --budget 0.032 \
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
from dataclasses import dataclass
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
from .common import CACHE, Dataset, load_cifar10n, timing, verified_classes
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


@dataclass
class Bench:
    """One run's settings (CPU/CUDA defaults filled in), images, test set and cache folders."""
    args: argparse.Namespace
    device: torch.device
    rows: list[str]
    ds: Dataset
    test_paths: list[str]
    test_labels: np.ndarray
    verified: np.ndarray       # class ids with verdicts
    ccfg: ClassifierConfig     # every classifier row trains with these settings
    run_dir: Path              # per-epoch classifier checkpoints of this data and config
    feature_cache: Path
    timings: dict[str, float]

    @property
    def ok(self) -> np.ndarray:
        """(N,) bool: the noisy label is the clean one."""
        return self.ds.noisy == self.ds.clean

    def fit(self, name: str, paths: list[str], labels: np.ndarray) -> torch.nn.Module:
        """A classifier trained (or resumed from run_dir) on (paths, labels)."""
        with timing(self.timings, f"{name}_train_s"):
            return train_classifier(paths, labels, self.ds.num_classes, config=self.ccfg, device=str(self.device),
                                    checkpoint=self.run_dir / f"{name}.pt")

    def test_acc(self, name: str, model: torch.nn.Module) -> float:
        """Top-1 accuracy of `model` on the clean test images."""
        with timing(self.timings, f"{name}_test_s"):
            acc = evaluate(model, self.test_paths, self.test_labels, image_size=self.ccfg.image_size,
                           num_workers=self.ccfg.num_workers, device=str(self.device))
        log.info("%s: test accuracy %.4f", name, acc)
        return acc


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.perf_counter()
    b = setup(args, timings={})
    acc: dict[str, float] = {}
    details: dict[str, dict] = {}
    noisy_model = b.fit("noisy", b.ds.paths, b.ds.noisy)
    if "noisy" in b.rows:
        acc["noisy"] = b.test_acc("noisy", noisy_model)
    with timing(b.timings, "features_s"):
        feats = extract_features(noisy_model, b.ds.paths, cache_dir=b.feature_cache,
                                 backbone_id=backbone_id(noisy_model), image_size=b.ccfg.image_size,
                                 num_workers=b.ccfg.num_workers, device=str(b.device)).features
    tcfg = TrainConfig.shortened(args.steps, seed=args.seed)
    verdicts = draw_verdicts(b, feats, tcfg)
    weighted_rows(b, verdicts, tcfg, noisy_model, acc, details)
    if "cleanlab_pruned" in b.rows:
        cleanlab_row(b, feats, acc, details)
    if "clean" in b.rows:
        acc["clean"] = b.test_acc("clean", b.fit("clean", b.ds.paths, b.ds.clean))
    b.timings["total_s"] = round(time.perf_counter() - t0, 2)
    out = summary(b, acc, details, verdicts)
    print(markdown_table(out))
    write_json(args.json, out)
    return out


def setup(args: argparse.Namespace, *, timings: dict[str, float]) -> Bench:
    """Check the flags, fill in the CPU/CUDA defaults, load the training and test images."""
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
    ds = load_cifar10n(args.data, args.labels, n, args.seed)
    test_paths, test_labels = load_test(args.data, args.n_test, args.seed)
    verified = verified_classes(args.verified_classes, ds.num_classes)
    ccfg = ClassifierConfig(arch=args.arch, epochs=epochs, batch_size=batch_size, lr=lr, seed=args.seed,
                            num_workers=workers)
    key = hashlib.blake2b(json.dumps([args.labels, ds.index.tolist(), {k: v for k, v in ccfg.__dict__.items()
                                                                        if k != "num_workers"}]).encode(),
                          digest_size=6).hexdigest()
    return Bench(args=args, device=device, rows=rows, ds=ds, test_paths=test_paths, test_labels=test_labels,
                 verified=verified, ccfg=ccfg, feature_cache=args.cache / "features", timings=timings,
                 run_dir=args.cache / "classify" / f"{args.labels}-n{len(ds.paths)}-s{args.seed}-{key}")


def draw_verdicts(b: Bench, feats: np.ndarray, tcfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) verdict indices drawn by the product's queue from the verified classes, the same for
    every weighted row; empty when no weighted row runs."""
    if not {"cleannet_soft", "cleannet_hard", *EXTRA_ROWS} & set(b.rows):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    args, ds = b.args, b.ds
    with timing(b.timings, "verdicts_s"):
        refs, _ = build_references(feats, ds.noisy, ds.num_classes,
                                   config=KMeansConfig(k=args.num_ref, seed=args.seed), device=b.device)
        runner = Runner(ds, feats, refs, b.ok, tcfg, b.device)
        candidates = np.flatnonzero(np.isin(ds.noisy, b.verified))
        return runner.product_verdicts(candidates, budget_images(args, ds), args.audit_share, args.queue_rounds,
                                       np.random.default_rng(args.seed))


def weighted_rows(b: Bench, verdicts: tuple[np.ndarray, np.ndarray], tcfg: TrainConfig, noisy_model: torch.nn.Module,
                  acc: dict[str, float], details: dict[str, dict]) -> None:
    """The cleannet_* and transfer_* rows asked for: classifier/score alternation from the noisy model."""
    args, ds, ok = b.args, b.ds, b.ok
    train_idx, val_idx = verdicts
    # weighted rows resume from checkpoints only when everything that sets their weights is the same
    weights_key = hashlib.blake2b(json.dumps([args.budget, sorted(b.verified.tolist()), args.steps, args.rounds,
                                              args.normalize, args.queue_rounds, args.audit_share,
                                              args.num_ref]).encode(), digest_size=6).hexdigest()
    for name in ("cleannet_soft", "cleannet_hard", *EXTRA_ROWS):
        if name not in b.rows:
            continue
        method, mode = ("paper" if name.startswith("cleannet") else "transfer"), name.split("_")[1]
        acfg = AlternateConfig(rounds=args.rounds, weights=mode, method=method, normalize=args.normalize,
                               num_ref=args.num_ref, classifier=b.ccfg, cleannet=tcfg, device=str(b.device),
                               checkpoint_dir=b.run_dir / f"{name}-{weights_key}", cache_dir=b.feature_cache)
        with timing(b.timings, f"{name}_train_s"):
            res = train_alternating(ds.paths, ds.noisy, ds.num_classes, verified_idx=train_idx,
                                    verified_ok=ok[train_idx], val_idx=val_idx, val_ok=ok[val_idx], config=acfg,
                                    init_model=noisy_model, report=log.info)
        acc[name] = b.test_acc(name, res.model)
        details[name] = {"rounds": [_round_details(r, ok, ds.noisy, b.verified) for r in res.rounds],
                         "history": [{k: v for k, v in h.items() if k != "epochs"} for h in res.history]}


def cleanlab_row(b: Bench, feats: np.ndarray, acc: dict[str, float], details: dict[str, dict]) -> None:
    """A classifier trained only on the images cleanlab keeps, and how well cleanlab found the wrong labels."""
    ok = b.ok
    with timing(b.timings, "cleanlab_s"):
        flags, conf = cleanlab_flags(feats, b.ds.noisy, b.args.seed)
    keep = np.flatnonzero(~flags)
    details["cleanlab_pruned"] = {"kept": float(len(keep) / len(flags)), "kept_noise_rate": float(1 - ok[keep].mean()),
                                  "detection": flag_report(flags, conf, ok)}
    model = b.fit("cleanlab_pruned", [b.ds.paths[i] for i in keep], b.ds.noisy[keep])
    acc["cleanlab_pruned"] = b.test_acc("cleanlab_pruned", model)


def budget_images(args: argparse.Namespace, ds: Dataset) -> int:
    """--budget as a number of images."""
    return int(round(args.budget * len(ds.noisy)))


def summary(b: Bench, acc: dict[str, float], details: dict[str, dict],
            verdicts: tuple[np.ndarray, np.ndarray]) -> dict:
    """The JSON result: config (with the filled-in defaults), test accuracies, gain_recovered, details, timings."""
    c, cuda = b.ccfg, b.device.type == "cuda"
    return {
        "config": config_of(b.args)
        | {"n": len(b.ds.paths), "epochs": c.epochs, "batch_size": c.batch_size, "lr": c.lr, "workers": c.num_workers,
           "n_test": len(b.test_paths), "device": str(b.device),
           "gpu": torch.cuda.get_device_name(b.device) if cuda else None, "cpu_cores": os.cpu_count(),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "budget_images": budget_images(b.args, b.ds),
           "verified_images": int(len(verdicts[0]) + len(verdicts[1])), "train_noise_rate": float(1 - b.ok.mean())},
        "test_acc": acc,
        "gain_recovered": gain_recovered(acc),
        "details": details,
        "timings_s": b.timings,
    }


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
