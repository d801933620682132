"""Shared test setup and fixtures (helpers live in tests/helpers.py).

Unit tests use tiny tensors, for which one intra-op thread is fastest, and a second thread only adds
contention with the worker and server processes some tests start (they inherit OMP_NUM_THREADS).
"""
import os
from pathlib import Path

import pytest
import torch

from helpers import demo_as_cifar10n

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> Path:
    """The repo's 3,000 demo images in the CIFAR-10N folder layout (label set `random1` only)."""
    return demo_as_cifar10n(tmp_path_factory.mktemp("cifar10n"))
