"""Helpers shared by the test modules: polling, synthetic images, planted label noise, the demo data."""
from __future__ import annotations

import csv
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"
NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
COLORS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}


def wait_for(pred: Callable[[], object], *, timeout: float = 300, what: str = "condition",
             proc: subprocess.Popen | None = None, every: float = 0.2):
    """Poll `pred` until it returns a truthy value (returned); fail after `timeout` s or when `proc` exits."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited (rc {proc.returncode}) while waiting for {what}: "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def write_images(root: Path, labels, *, seed: int = 0, start: int = 0,
                 folders: list[str] | None = None) -> list[Path]:
    """One 32x32 PNG per label: label 0/1/2 = red/green/blue-ish, plus pixel noise and a random dark square.

    Files are root/img{start + i:04d}.png (in root/<folders[i]>/ when given); every image differs from every
    other one written with another (seed, start), so content-keyed caches see new files as new.
    """
    rng = np.random.default_rng([seed, start])
    cols = np.array(list(COLORS.values()), float)
    paths = []
    for i, y in enumerate(np.asarray(labels)):
        img = cols[y] + rng.normal(0, 30, (32, 32, 3))
        r, c, s = *rng.integers(0, 20, 2), rng.integers(6, 12)
        img[r:r + s, c:c + s] *= 0.4
        d = root / folders[i] if folders else root
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"img{start + i:04d}.png"
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(p)
        paths.append(p)
    return paths


def planted_noise(seed: int = 0, c: int = 8, per: int = 120, d: int = 32, rate: float = 0.2):
    """Non-negative features around c class prototypes with `rate` of the labels flipped to another class.

    Returns feats (c*per, d) float32, clean (c*per,) and noisy (c*per,) labels.
    """
    rng = np.random.default_rng(seed)
    protos = rng.random((c, d)) * 3
    clean = np.repeat(np.arange(c), per)
    feats = np.maximum(protos[clean] + rng.normal(0, 0.6, (c * per, d)), 0).astype(np.float32)
    noisy = clean.copy()
    flip = rng.random(clean.size) < rate
    noisy[flip] = (clean[flip] + rng.integers(1, c, flip.sum())) % c
    return feats, clean, noisy


def demo_rows(n: int | None = None) -> list[dict]:
    """The first `n` rows of data/demo/labels.csv: path (relative to DEMO), label (noisy), clean_label."""
    with open(DEMO / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return rows[:n] if n is not None else rows


def demo_db(tmp: Path, n: int, *, verify: list[str] | None = None) -> Path:
    """A database in ``tmp/state`` holding the first ``n`` demo images (ingested from a CSV of their rows), the
    classes `verify` (default: every class) chosen for verification; returns its path."""
    from annotator.ingest import ingest_csv
    from annotator.store import Store
    lines = (DEMO / "labels.csv").read_text().splitlines()[:n + 1]
    (tmp / "labels.csv").write_text("\n".join(lines) + "\n")
    db = tmp / "state" / "annotator.db"
    with Store(db) as store:
        assert ingest_csv(store, tmp / "labels.csv", DEMO, progress=False).added == n
        store.set_verify([c["name"] for c in store.classes()] if verify is None else verify)
    return db


def demo_as_cifar10n(dst: Path) -> Path:
    """data/demo written in the CIFAR-10N folder layout the benchmarks read (labels.csv, test_labels.csv,
    stats.json).

    The demo carries one noisy label set, CIFAR-10N's `random_label1`. Image paths are absolute, so the 3,000
    images are not copied. test_labels.csv lists the same images with their clean labels: the benchmark tests
    check plumbing, not accuracy, so a test set that overlaps the training pool is enough.
    """
    dst.mkdir(parents=True, exist_ok=True)
    with open(dst / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "path", "clean_label", "random_label1"])
        for r in demo_rows():
            w.writerow([r["cifar10n_index"], str(DEMO / r["path"]), NAMES.index(r["clean_label"]),
                        NAMES.index(r["label"])])
    with open(dst / "test_labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "path", "label"])
        w.writerows([r["cifar10n_index"], str(DEMO / r["path"]), NAMES.index(r["clean_label"])] for r in demo_rows())
    (dst / "stats.json").write_text(json.dumps({"n": len(demo_rows()), "classes": NAMES}))
    return dst
