"""How long the out-of-fold probe should train, and at which input size: its ranking of the wrong labels.

    python -m benchmarks.probe_epochs --data $CIFAR10N --sizes 3000,10000,50000 \
        --image-sizes 128,224 --epochs 1,2,3,6,20 --labels aggre,random1,worse --json out.json

For every image count, input size (frozen ImageNet Lite0 features, cached as `benchmarks.quality` caches them),
label set and epoch count: the probe (`cleannet_core.probe`, 5 random folds, seed 0) is fitted on the noisy
labels, and the AUROC of its out-of-fold probability of the noisy label is judged against the clean labels on
the images whose noisy label is in classes 5-9 (the classes `benchmarks.quality` holds out). No verdicts and no
calibrator: this isolates the probe, whose ranking the default score's calibrator keeps (it is monotone).
A probe trained longer fits more of the wrong labels, and then ranks them as right.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from cleannet_core.metrics import auroc
from cleannet_core.probe import ProbeConfig, fit_probe

from .common import CACHE, load_cifar10n, pretrained_features
from .report import config_of, write_json

log = logging.getLogger(__name__)
HELD_OUT_FROM = 5  # classes 5-9


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the cifar10n folder (labels.csv, train/)")
    p.add_argument("--sizes", default="3000,10000,50000", help="image counts (first n of the data seed's order)")
    p.add_argument("--image-sizes", default="128,224", help="Lite0 input sizes in px")
    p.add_argument("--epochs", default="1,2,3,6,20", help="probe epochs to compare")
    p.add_argument("--labels", default="aggre,random1,worse", help="comma-separated label sets")
    p.add_argument("--seed", type=int, default=0, help="image subset, probe folds and probe init")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache", type=Path, default=CACHE, help="feature cache folder")
    p.add_argument("--json", type=Path, help="write the results here")
    return p.parse_args(argv)


def probe_auroc(feats: np.ndarray, noisy: np.ndarray, clean: np.ndarray, num_classes: int, *,
                config: ProbeConfig, device: str) -> float:
    """Held-out AUROC of the out-of-fold p(noisy label) (higher = label more likely right) on classes 5-9."""
    folds = np.random.default_rng(config.seed).integers(0, config.folds, len(noisy))
    probs = fit_probe(feats, noisy, folds, num_classes, config, device=device).predict(feats, folds)
    held = noisy >= HELD_OUT_FROM
    own = probs[np.arange(len(noisy)), noisy]
    return auroc(own[held], (noisy == clean)[held])


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    runs = []
    for n in ints(args.sizes):
        for label_set in args.labels.split(","):
            ds = load_cifar10n(args.data, label_set, n, args.seed)
            for px in ints(args.image_sizes):
                feats = pretrained_features(ds, image_size=px, device=args.device, cache=args.cache)
                for epochs in ints(args.epochs):
                    t = time.perf_counter()
                    value = probe_auroc(feats, ds.noisy, ds.clean, ds.num_classes, device=args.device,
                                        config=ProbeConfig(seed=args.seed, epochs=epochs))
                    runs.append({"n": n, "labels": label_set, "image_size": px, "epochs": epochs, "auroc": value,
                                 "seconds": round(time.perf_counter() - t, 1)})
                    log.info("n=%d %s %d px, %d epochs: AUROC %.4f", n, label_set, px, epochs, value)
    out = {"config": config_of(args), "default_epochs": ProbeConfig.epochs, "runs": runs}
    write_json(args.json, out)
    print(markdown_table(runs))
    return out


def markdown_table(runs: list[dict]) -> str:
    """One row per (images, labels, px), one column per epoch count."""
    epochs = sorted({r["epochs"] for r in runs})
    rows = ["| images | labels | px | " + " | ".join(f"{e} ep" for e in epochs) + " |",
            "|---|---|---|" + "---|" * len(epochs)]
    keys = dict.fromkeys((r["n"], r["labels"], r["image_size"]) for r in runs)
    for n, label_set, px in keys:
        cells = {r["epochs"]: r["auroc"] for r in runs if (r["n"], r["labels"], r["image_size"]) == (n, label_set, px)}
        rows.append(f"| {n:,} | {label_set} | {px} | " + " | ".join(f"{cells[e]:.3f}" if e in cells else "-"
                                                                    for e in epochs) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
