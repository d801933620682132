"""Shared test setup.

Unit tests use tiny tensors, for which one intra-op thread is fastest, and a second thread only adds
contention with the worker and server processes some tests start (they inherit OMP_NUM_THREADS).
"""
import os
from pathlib import Path

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
