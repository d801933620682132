"""Shared test setup and fixtures (helpers live in tests/helpers.py).

Unit tests use tiny tensors, for which one intra-op thread is fastest, and a second thread only adds
contention with the worker and server processes some tests start (they inherit OMP_NUM_THREADS).
"""
import os
from pathlib import Path

import pytest
import torch

from annotator import auth
from annotator.store import Store

from helpers import demo_as_cifar10n

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> Path:
    """The repo's 3,000 demo images in the CIFAR-10N folder layout (label set `random1` only)."""
    return demo_as_cifar10n(tmp_path_factory.mktemp("cifar10n"))


@pytest.fixture
def db_path(tmp_path) -> Path:
    """Where a test's database goes (the state folder is created by the store)."""
    return tmp_path / "state" / "annotator.db"


@pytest.fixture
def store(db_path):
    """An open store on `db_path`; modules with their own `store` fixture override it."""
    with Store(db_path) as s:
        yield s


@pytest.fixture(autouse=True)
def cheap_password_hashing(request, monkeypatch):
    """scrypt at n=2^12 instead of the product's 2^17 (1/32 of the work per hash) in every test not marked
    real_scrypt: hashing passwords was most of the fast set's time. A stored hash carries its own cost, so
    hashes made here verify in the CLI and app processes the tests start, which use the real cost."""
    if not request.node.get_closest_marker("real_scrypt"):
        monkeypatch.setattr(auth, "_N", 2 ** 12)
    auth._dummy_hash.cache_clear()  # the unknown-user hash is made at the cost in force
    yield
    auth._dummy_hash.cache_clear()
