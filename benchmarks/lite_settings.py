"""Frozen EfficientNet-Lite0 settings by measurement: padding rule, input scaling and resolution vs CPU time.

    python -m benchmarks.lite_settings --data $CIFAR10N --n 2000 --json out.json

For each setting: extract frozen ImageNet features of --n CIFAR-10N images, fit cleanlab's out-of-fold probe
(benchmarks.methods.cleanlab_flags: 5-fold logistic regression on standardised log features) on each label set,
and report the self-confidence AUROC on the held-out classes 5-9 (as quality.py judges) and the extraction
speed in images/s. Features are not cached here, so the speed is real.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from cleannet_core import efficientnet
from cleannet_core.classifier import IMAGENET_MEAN, IMAGENET_STD, Backbone, predict, resolve_device
from cleannet_core.metrics import auroc

from .common import imagenet_state, load_cifar10n
from .methods import cleanlab_flags
from .report import config_of, write_json

SCALINGS = {"lite": (efficientnet.LITE_MEAN, efficientnet.LITE_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the cifar10n folder (labels.csv, train/)")
    p.add_argument("--n", type=int, default=2000, help="images (a seeded subset)")
    p.add_argument("--settings", default="tf_same:lite:128,symmetric:lite:128,tf_same:imagenet:128,"
                   "tf_same:lite:64,tf_same:lite:96,tf_same:lite:160,tf_same:lite:224",
                   help="comma-separated padding:scaling:size")
    p.add_argument("--labels", default="worse,random1,aggre")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


def lite_model(padding: str) -> Backbone:
    """ImageNet Lite0 with `padding` on every convolution (the weights do not depend on it)."""
    model = Backbone("efficientnet_lite0", 1000)
    for m in model.modules():
        if isinstance(m, efficientnet.SameConv2d):
            m.tf_same = padding == "tf_same"
            m.padding = (0, 0) if m.tf_same else (m.kernel_size[0] // 2,) * 2
    model.load_state_dict(imagenet_state())
    return model.eval()


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = resolve_device(args.device)
    sets = {ls: load_cifar10n(args.data, ls, args.n, args.seed) for ls in args.labels.split(",")}
    paths = next(iter(sets.values())).paths
    rows = []
    for setting in args.settings.split(","):
        padding, scaling, size = setting.split(":")
        efficientnet.LITE_MEAN, efficientnet.LITE_STD = SCALINGS[scaling]  # read by make_transform per call
        try:
            t = time.perf_counter()
            feats, _, ok = predict(lite_model(padding), paths, image_size=int(size), batch_size=args.batch_size,
                                   num_workers=args.workers, device=str(device))
            seconds = time.perf_counter() - t
        finally:
            efficientnet.LITE_MEAN, efficientnet.LITE_STD = SCALINGS["lite"]
        row = {"padding": padding, "scaling": scaling, "image_size": int(size),
               "images_per_s": round(len(paths) / seconds, 1), "auroc_heldout": {}}
        for name, ds in sets.items():
            _, conf = cleanlab_flags(feats, ds.noisy, args.seed)
            held = ds.noisy >= 5
            row["auroc_heldout"][name] = round(auroc(conf[held], (ds.noisy == ds.clean)[held]), 4)
        rows.append(row)
        print(f"{setting}: {row['images_per_s']} images/s, held-out AUROC {row['auroc_heldout']}", flush=True)
    out = {"config": config_of(args) | {"device": str(device), "threads": torch.get_num_threads(),
                                        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
           "rows": rows}
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
