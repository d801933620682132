"""Shared test setup and the fixtures more than one test module uses (helpers live in tests/helpers.py, the
browser tests' in tests/browser_kit.py).

Unit tests use tiny tensors, for which one intra-op thread is fastest, and a second thread only adds
contention with the worker and server processes some tests start (they inherit OMP_NUM_THREADS).
"""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from annotator import auth
from annotator.ingest import ingest_folder
from annotator.store import Store

from helpers import ADMIN_PW, CLASSES, add_random_model, build_abc, demo_as_cifar10n

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
    """An open store on `db_path`."""
    with Store(db_path) as s:
        yield s


@pytest.fixture
def users(store) -> None:
    """In `store`: the lead 'admin' (password ADMIN_PW) and the annotator 'ann' (password 'ann-password')."""
    auth.add_user(store, "admin", "lead", ADMIN_PW)
    auth.add_user(store, "ann", "annotator", "ann-password")


@pytest.fixture
def db(tmp_path, monkeypatch) -> Path:
    """Path of the AppTest database; $ANNOTATOR_DB points at it. 36 tiny generated images in CLASSES (one a
    hostile name) ingested through annotator.ingest, cat and dog chosen for verification, the lead 'admin'
    (ADMIN_PW), the annotator 'ann' and a current model from add_random_model, so scores show without a worker."""
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for k in range(12):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{k}.png")
    path = tmp_path / "state" / "annotator.db"
    monkeypatch.setenv("ANNOTATOR_DB", str(path))
    monkeypatch.setenv("ANNOTATOR_ADMIN_PASSWORD", ADMIN_PW)
    with Store(path) as store:
        report = ingest_folder(store, root, progress=False)
        assert report.added == 36 and not report.errors
        store.set_verify(["cat", "dog"])
        auth.ensure_admin(store)
        auth.add_user(store, "ann", "annotator", "ann-password")
        add_random_model(store)
    return path


@pytest.fixture
def lead_db(db_path, monkeypatch) -> Path:
    """The store of build_abc behind $ANNOTATOR_DB, with the lead 'admin' (ADMIN_PW)."""
    monkeypatch.setenv("ANNOTATOR_DB", str(db_path))
    monkeypatch.setenv("ANNOTATOR_ADMIN_PASSWORD", ADMIN_PW)
    with Store(db_path) as store:
        build_abc(store)
        auth.ensure_admin(store)
    return db_path


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium for the module's browser tests (tests/browser_kit.py; skipped without
    Playwright)."""
    from browser_kit import chromium
    with chromium() as b:
        yield b


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
