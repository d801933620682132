"""Throughput on the current device: feature extraction (fp32 vs bf16), k-means references, CleanNet training,
full rescore, and the default transfer score's out-of-fold probe (5 folds) + scoring.

    python -m benchmarks.gpu_check --json out.json          # on a CUDA machine (the `device` tool)
    python -m benchmarks.gpu_check --small                  # a quick run on a CPU, to check it works

Synthetic inputs (random pixels, random features) so it needs no data set; shapes are the product's:
224 px images into a ResNet-50 (2048-d features), CleanNet with K = 32, 100 classes.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.report import write_json
from cleannet_core.classifier import Backbone, resolve_device
from cleannet_core.model import CleanNetConfig
from cleannet_core.probe import ProbeConfig, fit_probe
from cleannet_core.references import build_references
from cleannet_core.score import score_images
from cleannet_core.train import TrainConfig, train_cleannet
from cleannet_core.transfer import DEFAULT_SIGNALS, fit_transfer, score_transfer, signal_matrix


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def extraction_rate(arch: str, size: int, batch: int, iters: int, device: torch.device, bf16: bool) -> float:
    """Images per second through forward_features (the feature-extraction hot path)."""
    model = Backbone(arch, 10, small_input=size <= 64).to(device).eval()
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(batch, 3, size, size, device=device).to(memory_format=fmt)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        model.forward_features(x)  # warm-up (cuDNN autotune, allocations)
        _sync(device)
        t = time.perf_counter()
        for _ in range(iters):
            model.forward_features(x)
        _sync(device)
    return batch * iters / (time.perf_counter() - t)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--small", action="store_true", help="tiny sizes for a CPU smoke run")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    small = args.small
    arch, size, batch, iters = ("resnet18", 32, 16, 2) if small else ("resnet50", 224, 256, 20)
    n, d, c, steps = (2_000, 512, 10, 50) if small else (1_000_000, 2048, 100, 2000)
    rows: dict[str, float] = {}
    rows["extract_fp32_img_s"] = extraction_rate(arch, size, batch, iters, device, bf16=False)
    if device.type == "cuda":
        rows["extract_bf16_img_s"] = extraction_rate(arch, size, batch, iters, device, bf16=True)

    rng = np.random.default_rng(0)
    feats = rng.random((n, d), dtype=np.float32).astype(np.float16)     # (N, d) like the feature cache
    labels = rng.integers(0, c, n)
    refs = rng.random((c, 32, d), dtype=np.float32)
    verified = rng.choice(n, 2_000 if not small else 200, replace=False)
    t = time.perf_counter()
    build_references(feats, labels, c, device=device)  # K = 32 per class, the product's defaults
    _sync(device)
    rows["references_s"] = time.perf_counter() - t
    t = time.perf_counter()
    res = train_cleannet(feats, labels, refs, verified_idx=verified, verified_ok=rng.random(verified.size) > 0.2,
                         config=TrainConfig(steps=steps, val_interval=steps + 1), device=device,
                         model_config=CleanNetConfig(img_dim=d))
    _sync(device)
    rows["cleannet_train_steps_s"] = steps / (time.perf_counter() - t)
    t = time.perf_counter()
    score_images(res.model, feats, labels, refs)
    _sync(device)
    rows["rescore_s"] = time.perf_counter() - t
    rows["rescore_img_s"] = n / rows["rescore_s"]
    t = time.perf_counter()
    folds = np.arange(n) % ProbeConfig.folds
    probs = fit_probe(feats, labels, folds, c, ProbeConfig(), device=device).predict(feats, folds)
    _sync(device)
    rows["probe_fit_predict_s"] = time.perf_counter() - t
    t = time.perf_counter()
    ok = rng.random(verified.size) > 0.2
    x = signal_matrix(DEFAULT_SIGNALS, labels[verified], probs=probs[verified], features=feats[verified], refs=refs)
    score_transfer(fit_transfer(x, ok), labels, probs=probs, features=feats, refs=refs)
    rows["transfer_calibrate_score_s"] = time.perf_counter() - t
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out = {"device": name, "torch": torch.__version__, "arch": arch, "image_size": size, "n_rescore": n,
           "feature_dim": d, "results": rows}
    print(f"device: {name}\n| measure | value |\n|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v:,.1f} |")
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
