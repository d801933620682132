"""Shared pieces of the benchmarks: CIFAR-10N loading and the cached noisy-label backbone features."""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cleannet_core.classifier import Backbone, ClassifierConfig, load_backbone, save_backbone, train_classifier
from cleannet_core.features import backbone_id, extract_features, load_imagenet_weights

log = logging.getLogger(__name__)

LABEL_SETS = {"aggre": "aggre_label", "worse": "worse_label", "random1": "random_label1",
              "random2": "random_label2", "random3": "random_label3"}
CACHE = Path(__file__).resolve().parent / ".cache"


@dataclass
class Dataset:
    paths: list[str]          # absolute image paths, (N,)
    clean: np.ndarray         # (N,) ground-truth labels
    noisy: np.ndarray         # (N,) noisy labels of the chosen label set
    class_names: list[str]
    index: np.ndarray         # (N,) CIFAR-10N index of each image

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, rows: np.ndarray) -> "Dataset":
        """The images at `rows` (indices or a bool mask), in order."""
        idx = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows)
        return Dataset([self.paths[i] for i in idx], self.clean[idx], self.noisy[idx], self.class_names,
                       self.index[idx])


def verified_classes(spec: str, num_classes: int) -> np.ndarray:
    """--verified-classes "0,1,2" -> sorted unique class ids; SystemExit when empty or out of [0, num_classes)."""
    verified = np.array(sorted({int(c) for c in spec.split(",")}))
    if verified.size == 0 or verified.min() < 0 or verified.max() >= num_classes:
        raise SystemExit(f"--verified-classes must be ids in [0, {num_classes})")
    return verified


@contextmanager
def timing(timings: dict[str, float], key: str) -> Iterator[None]:
    """Record the seconds the `with` block took in timings[key], rounded to 0.01 s."""
    t = time.perf_counter()
    yield
    timings[key] = round(time.perf_counter() - t, 2)


def load_cifar10n(data: Path, labels: str, n: int | None, seed: int) -> Dataset:
    """The first `n` images of a seeded permutation of the 50k training images (all when n is None)."""
    if labels not in LABEL_SETS:
        raise SystemExit(f"--labels must be one of {sorted(LABEL_SETS)}, got {labels!r}")
    data = Path(data)
    with open(data / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = json.loads((data / "stats.json").read_text())["classes"]
    order = np.random.default_rng(seed).permutation(len(rows))
    if n is not None:
        order = np.sort(order[:n])
    rows = [rows[i] for i in order]
    return Dataset(paths=[str((data / r["path"]).resolve()) for r in rows],
                   clean=np.array([int(r["clean_label"]) for r in rows]),
                   noisy=np.array([int(r[LABEL_SETS[labels]]) for r in rows]),
                   class_names=names, index=order)


def noisy_backbone(ds: Dataset, config: ClassifierConfig, *, tag: str, device: str = "auto",
                   cache: Path = CACHE, init_state: dict | None = None) -> Backbone:
    """A backbone trained on ds's noisy labels (from `init_state`, e.g. ImageNet weights, when given; say so in
    `tag`), cached under `cache` keyed by the images, labels and settings."""
    key = hashlib.blake2b(json.dumps([tag, ds.index.tolist(), ds.noisy.tolist(), config.__dict__],
                                     sort_keys=True).encode(), digest_size=8).hexdigest()
    ckpt = Path(cache) / f"backbone-{tag}-{key}.pt"
    if ckpt.exists():
        log.info("backbone from cache %s", ckpt)
        return load_backbone(ckpt)[0]
    model = train_classifier(ds.paths, ds.noisy, ds.num_classes, config=config, device=device, init_state=init_state)
    save_backbone(model, ckpt, class_names=ds.class_names, meta={"tag": tag, "config": config.__dict__})
    return model


def noisy_backbone_features(ds: Dataset, config: ClassifierConfig, *, tag: str, device: str = "auto",
                            timings: dict | None = None, cache: Path = CACHE,
                            init_state: dict | None = None) -> np.ndarray:
    """Pool features (N, D) float32 of a backbone trained on the noisy labels themselves (spec §1, §6).

    The backbone checkpoint and the features are cached under `cache` (default benchmarks/.cache), so a
    second run with the same data, labels and settings trains nothing and extracts nothing.
    """
    timings = timings if timings is not None else {}
    t = time.perf_counter()
    model = noisy_backbone(ds, config, tag=tag, device=device, cache=cache, init_state=init_state)
    timings["backbone_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    res = extract_features(model, ds.paths, cache_dir=Path(cache) / "features", backbone_id=backbone_id(model),
                           image_size=config.image_size, device=device)
    timings["features_s"] = round(time.perf_counter() - t, 2)
    if not res.readable.all():
        raise SystemExit(f"{(~res.readable).sum()} images could not be read, e.g. {res.errors[:3]}")
    return res.features


BACKBONES = ("pretrained", "noisy", "finetuned", "concat")


def imagenet_state(arch: str = "efficientnet_lite0") -> dict:
    state, message = load_imagenet_weights(arch)
    if state is None:
        raise SystemExit(message)
    return state


def backbone_features(ds: Dataset, kind: str, *, tag: str, epochs: int, seed: int, image_size: int = 128,
                      arch: str = "resnet18", device: str = "auto", timings: dict | None = None,
                      cache: Path = CACHE) -> np.ndarray:
    """Features (N, D) of one of BACKBONES: `pretrained` frozen ImageNet Lite0 at image_size; `noisy` an `arch`
    trained from scratch on the noisy labels at 32 px; `finetuned` Lite0 from ImageNet trained on the noisy labels
    (SGD, LR 0.01) at image_size; `concat` pretrained and noisy side by side."""
    if kind not in BACKBONES:
        raise SystemExit(f"--backbone must be one of {BACKBONES}, got {kind!r}")
    if kind == "pretrained":
        return pretrained_features(ds, image_size=image_size, device=device, timings=timings, cache=cache)
    if kind == "finetuned":
        ccfg = ClassifierConfig(arch="efficientnet_lite0", epochs=epochs, image_size=image_size, lr=0.01, seed=seed)
        return noisy_backbone_features(ds, ccfg, tag=f"{tag}-finetuned", device=device, timings=timings,
                                       cache=cache, init_state=imagenet_state())
    noisy = noisy_backbone_features(ds, ClassifierConfig(arch=arch, epochs=epochs, seed=seed), tag=tag,
                                    device=device, timings=timings, cache=cache)
    if kind == "noisy":
        return noisy
    return np.concatenate([pretrained_features(ds, image_size=image_size, device=device, cache=cache), noisy], 1)


def pretrained_features(ds: Dataset, *, arch: str = "efficientnet_lite0", image_size: int = 128,
                        device: str = "auto", batch_size: int | None = None, timings: dict | None = None,
                        cache: Path = CACHE) -> np.ndarray:
    """Pool features (N, D) float32 of the frozen ImageNet backbone (weights found offline). They do not depend
    on the labels: cached by image content under `cache`, so every label set, seed and size reuses them."""
    timings = timings if timings is not None else {}
    state = imagenet_state(arch)
    model = Backbone(arch, 1000)
    model.load_pretrained(state)
    t = time.perf_counter()
    res = extract_features(model.eval(), ds.paths, cache_dir=Path(cache) / "features", backbone_id=backbone_id(model),
                           image_size=image_size, batch_size=batch_size, device=device)
    timings["features_s"] = round(time.perf_counter() - t, 2)
    if not res.readable.all():
        raise SystemExit(f"{(~res.readable).sum()} images could not be read, e.g. {res.errors[:3]}")
    return res.features


def add_data_args(p: argparse.ArgumentParser) -> None:
    """The flags every CIFAR-10N quality benchmark shares: data, size, backbone, verdict budget, cache, --json."""
    p.add_argument("--data", type=Path, required=True, help="the cifar10n folder (labels.csv, train/)")
    p.add_argument("--budget", type=float, default=0.02, help="fraction of ALL images that get a verdict")
    p.add_argument("--n", type=int, default=10_000, help="images used")
    p.add_argument("--epochs", type=int, default=10, help="backbone epochs")
    p.add_argument("--rounds", type=int, default=3, help="uncertainty-queue rounds")
    p.add_argument("--num-ref", type=int, default=32, help="K reference vectors per class")
    p.add_argument("--device", default="auto")
    p.add_argument("--cache", type=Path, default=CACHE, help="backbone and feature cache folder")
    p.add_argument("--json", type=Path, help="write the results here")


def add_backbone_args(p: argparse.ArgumentParser) -> None:
    """--backbone and --image-size: which features every method of the benchmark gets (backbone_features)."""
    p.add_argument("--backbone", default="pretrained", help="features: " + " | ".join(BACKBONES))
    p.add_argument("--image-size", type=int, default=128, help="input size of the Lite0 backbone")


def add_run_args(p: argparse.ArgumentParser, *, labels: str) -> None:
    """add_data_args plus the label sets and seeds that signals.py and oof.py loop over."""
    add_data_args(p)
    p.add_argument("--labels", default=labels, help="comma-separated label sets")
    p.add_argument("--seeds", default="0,1,2", help="verdict draws, probe folds, k-means")
    p.add_argument("--data-seed", type=int, default=0, help="image subset and backbone")
