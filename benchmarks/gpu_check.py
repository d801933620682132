"""Device figures: extraction throughput from JPEG files end to end (fp32 / bf16, CPU / GPU decoding), a
million-image default round, and the compute kernels (k-means references, CleanNet steps, rescore, probe).

    python -m benchmarks.gpu_check --json $OUT/gpu_check.json       # on a CUDA machine (~5 min on an H100)
    python -m benchmarks.gpu_check --small --device cpu             # a quick run on a CPU, to check it works

Needs no data set: the JPEGs are made from data/demo's images (upscaled, each file made distinct by a pixel
mark, so the content-keyed cache cannot deduplicate them) and the round's features are generated straight
into the cache (benchmarks.round_speed). Extraction runs `cleannet_core.features.fill_cache`, the code path of
`annotator extract` and the round: file read, ingest-hash check, decode (DataLoader workers, or
torchvision.io.decode_jpeg on the GPU), resize + crop, forward, float16 cache write.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.report import write_json
from cleannet_core.classifier import ALL_ARCHS, Backbone, resolve_device
from cleannet_core.features import FeatureCache, fill_cache
from cleannet_core.model import CleanNetConfig
from cleannet_core.probe import ProbeConfig, fit_probe
from cleannet_core.references import build_references
from cleannet_core.score import score_images
from cleannet_core.train import TrainConfig, train_cleannet
from cleannet_core.transfer import DEFAULT_SIGNALS, fit_transfer, score_transfer, signal_matrix

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _write_jpegs(job: tuple[list[str], int, int, str]) -> list[tuple[str, str]]:
    """Upscale demo images to `side` px JPEGs named from index `start`; -> [(path, blake2b-128 key)]."""
    sources, start, side, out = job
    rows = []
    for k, src in enumerate(sources):
        i = start + k
        with Image.open(src) as im:
            a = np.array(im.convert("RGB").resize((side, side), Image.BILINEAR))
        a[0, :4] = [(i >> 16) & 255, (i >> 8) & 255, i & 255]  # a distinct file per index
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=90)
        path = Path(out) / f"{i:07d}.jpg"
        path.write_bytes(buf.getvalue())
        rows.append((str(path), hashlib.blake2b(buf.getvalue(), digest_size=16).hexdigest()))
    return rows


def make_jpegs(folder: Path, n: int, side: int, workers: int) -> tuple[list[str], list[str]]:
    with open(DEMO / "labels.csv", newline="") as f:
        demo = [str(DEMO / r["path"]) for r in csv.DictReader(f)]
    folder.mkdir(parents=True, exist_ok=True)
    chunk = 512
    jobs = [([demo[i % len(demo)] for i in range(s, min(s + chunk, n))], s, side, str(folder))
            for s in range(0, n, chunk)]
    with ProcessPoolExecutor(workers) as pool:
        rows = [r for part in pool.map(_write_jpegs, jobs) for r in part]
    return [p for p, _ in rows], [k for _, k in rows]


def extraction_rate(arch: str, paths: list[str], keys: list[str], *, size: int, device: torch.device, bf16: bool,
                    decode: str, workers: int, batch: int, cache_root: Path) -> dict:
    """Images/s through fill_cache into a fresh cache, after a warm-up batch (cuDNN autotune, allocations)."""
    model = Backbone(arch, 10, small_input=size <= 64)
    kw = dict(image_size=size, batch_size=batch, num_workers=workers, device=str(device), decode=decode, bf16=bf16)
    warm = cache_root / f"warm-{arch}-{decode}-{bf16}"
    fill_cache(model, paths[:batch], keys[:batch], cache=FeatureCache(warm, "w", model.num_features), **kw)
    shutil.rmtree(warm)
    cache = FeatureCache(cache_root / f"{arch}-{decode}-{bf16}", "b", model.num_features)
    _sync(device)
    t = time.perf_counter()
    done, errors = fill_cache(model, paths, keys, cache=cache, **kw)
    _sync(device)
    dt = time.perf_counter() - t
    shutil.rmtree(cache.dir.parent)
    return {"img_s": done / dt, "images": done, "errors": len(errors), "seconds": dt}


def kernels(device: torch.device, small: bool) -> dict[str, float]:
    """Compute-only rates on synthetic features: references, CleanNet training and rescoring, the probe."""
    n, d, c, steps = (2_000, 512, 10, 50) if small else (1_000_000, 2048, 100, 2000)
    rows: dict[str, float] = {}
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
    return rows


def big_round(n: int, device: torch.device, tmp: Path) -> dict:
    """The default round (annotator.pipeline.run_round) on `n` images with generated 1,280-d cached features."""
    try:
        from benchmarks import round_speed
    except ImportError as e:  # the store needs sqlite-utils; say which module is missing instead of failing
        return {"skipped": f"{type(e).__name__}: {e}"}
    db = tmp / "round" / "bench.db"
    db.parent.mkdir(parents=True)
    t = time.perf_counter()
    build = round_speed.build_store(db, n, 10, 1280, verdicts=min(2000, n // 10))
    build_s = time.perf_counter() - t
    return round_speed.run(db, idle_calls=50, device=str(device)) | {"build_s": build, "build_total_s": build_s,
                                                                    "n_images": n}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--small", action="store_true", help="tiny sizes for a CPU smoke run")
    p.add_argument("--archs", default=None, help=f"backbones to time, of {ALL_ARCHS} (default: all)")
    p.add_argument("--images", type=int, default=None, help="JPEG files per extraction run (default 32,000)")
    p.add_argument("--round-n", type=int, default=None, help="images in the round (default 1,000,000)")
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="DataLoader decode workers")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: extract,round,kernels")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    small = args.small
    archs = args.archs.split(",") if args.archs else (["resnet18"] if small else list(ALL_ARCHS))
    n_img = args.images or (32 if small else 32_000)
    side, size, batch = (48, 32, 16) if small else (256, 224, 256)
    skip = set(filter(None, args.skip.split(",")))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out: dict = {"device": name, "torch": torch.__version__, "cpu_count": os.cpu_count(), "workers": args.workers}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "extract" not in skip:
            t = time.perf_counter()
            paths, keys = make_jpegs(tmp / "jpeg", n_img, side, args.workers or 1)
            out["jpegs"] = {"n": n_img, "side_px": side, "crop_px": size, "write_s": time.perf_counter() - t,
                            "mean_kb": sum(os.path.getsize(q) for q in paths[:500]) / min(500, n_img) / 1024}
            runs = {}
            for arch in archs:
                for decode in ("cpu", "gpu") if device.type == "cuda" else ("cpu",):
                    for bf16 in (False, True) if device.type == "cuda" else (False,):
                        key = f"{arch}/{decode}-decode/{'bf16' if bf16 else 'fp32'}"
                        try:
                            runs[key] = extraction_rate(arch, paths, keys, size=size, device=device, bf16=bf16,
                                                        decode=decode, workers=args.workers, batch=batch,
                                                        cache_root=tmp)
                        except Exception as e:  # one failing variant must not cost the other figures
                            runs[key] = {"error": f"{type(e).__name__}: {e}"}
                        print(f"{key}: {runs[key]}", flush=True)
                        out["extraction"] = runs
                        write_json(args.json, out)  # partial results survive a time limit
        if "round" not in skip:
            try:
                out["round"] = big_round(args.round_n or (400 if small else 1_000_000), device, tmp)
            except Exception as e:  # report it with whatever else was measured
                out["round"] = {"error": f"{type(e).__name__}: {e}"}
            print(f"round: {out['round']}", flush=True)
            write_json(args.json, out)
        if "kernels" not in skip:
            out["kernels"] = kernels(device, small)
    print(f"\ndevice: {name}\n| measure | value |\n|---|---|")
    for key, r in out.get("extraction", {}).items():
        print(f"| extract {key} (img/s, JPEG files end to end) | {r.get('img_s', r.get('error'))} |")
    rnd = out.get("round", {})
    if "round_s" in rnd:
        print(f"| round at {rnd['n_images']:,} images (s) | {rnd['round_s']:.1f} |")
        for ph, s in rnd["phase_s"].items():
            print(f"| round phase {ph} (s) | {s:.1f} |")
        print(f"| round peak RSS (GB) | {rnd['peak_rss_gb']:.2f} |")
    for k, v in out.get("kernels", {}).items():
        print(f"| {k} | {v:,.1f} |")
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
