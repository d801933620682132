"""Shared test setup.

Unit tests use tiny tensors, for which one intra-op thread is fastest, and a second thread only adds
contention with the worker and server processes some tests start (they inherit OMP_NUM_THREADS).
"""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10n"


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """The shared CIFAR-10N folder (skips the test when it is missing)."""
    if not (CIFAR / "labels.csv").exists():
        pytest.skip(f"CIFAR-10N data not found at {CIFAR}")
    return CIFAR


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
