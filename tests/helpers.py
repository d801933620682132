"""Helpers shared by the test modules: polling, synthetic images, planted label noise, the demo data, small
stores built through the store's API, and the AppTest app (sign-in, what a page says).

Fixtures live in tests/conftest.py; the browser tests' helpers in tests/browser_kit.py."""
from __future__ import annotations

import csv
import json
import random
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from annotator import auth
from annotator.store import Store

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"
NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
COLORS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}
APP = "../app.py"  # relative to a module in tests/ (AppTest resolves it against the calling file's folder)
ADMIN_PW = "admin-secret-pw"  # the lead 'admin' of the AppTest databases (conftest.py `db`, `lead_db`, `users`)
HOSTILE = "<b>x **y** :red[z] $1+1$"  # a class name full of markup; no "/": it is a folder name
CLASSES = ("cat", "dog", HOSTILE)  # the classes of conftest.py's `db`, 12 images each
DELTA = 0.0  # the decision threshold of `add_random_model`
ABC_SCORES = {"A": [0.2, 0.9, 0.6, 0.8, 0.1, 0.3, 0.7, 0.4, 0.95, 0.5],   # image ids 1-10
              "B": [0.3, 0.45, 0.6, 0.9, 0.9, 0.9, 0.2, 0.8, 0.7, 0.6],   # 11-20
              "C": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]}   # 21-30, unverified; 31 duplicates 21


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


# -- small stores -----------------------------------------------------------------------
def add_random_model(store, *, metrics: dict | None = None) -> int:
    """A current model: every image scored at random in [-1, 1]; suggested label 'dog' (or 'cat'). Returns its
    version."""
    rng = random.Random(1)
    rows = []
    for r in store.iter_images():
        score = rng.uniform(-1, 1)
        other = "cat" if r["label"] == "dog" else "dog"
        rows.append((r["id"], r["label_id"], score, abs(score - DELTA), store.class_id(other), 0.5))
    version = store.add_model(delta=DELTA, backbone="ImageNet weights from a test file", metrics=metrics or {
        "estimated_noise_rate": 0.3, "per_class_noise_rate": {"cat": 0.2, "dog": 0.4, HOSTILE: 0.3},
        "backbone": "ImageNet weights from a test file", "audit": {"error": 0.25, "auroc": 0.8}})
    store.write_scores(version, rows)
    store.make_current(version)
    return version


def build_abc(store, *, kind: str = "expected", delta: float = 0.5) -> None:
    """Classes A, B verified, C not, 10 images each scored by ABC_SCORES (+ image 31, a copy of 21); verdicts:
    A audits 1 (wrong), 2, 3, 4 (correct), 5 wrong -> B, 6 wrong (uncertain); B audits 11, 12 wrong, 13 unsure."""
    ids = store.ensure_classes(["A", "B", "C"])
    rows = [{"path": f"/img/{c}{k}.png", "hash": f"{c}{k}", "label_id": ids[c]} for c in "ABC" for k in range(10)]
    store.add_images(rows + [{"path": "/img/dup.png", "hash": "C0", "label_id": ids["C"]}])
    store.set_verify(["A", "B"])
    version = store.add_model(delta=delta, metrics={"noise_rate_kind": kind})
    store.write_scores(version, [(10 * j + k + 1, ids[c], s, abs(s - delta))
                                 for j, c in enumerate("ABC") for k, s in enumerate(ABC_SCORES[c])])
    store.make_current(version)
    for image, verdict in ((1, "wrong"), (2, "correct"), (3, "correct"), (4, "correct"), (11, "wrong"), (12, "wrong")):
        store.record_verdict(image, "ann", verdict, reason="audit")
    store.record_verdict(5, "ann", "wrong", reason="uncertain", corrected_label="B")
    store.record_verdict(6, "ann", "wrong", reason="uncertain")
    store.record_verdict(13, "ann", "unsure", reason="uncertain")


# -- the app under AppTest ($ANNOTATOR_DB names the database) ---------------------------
def app(user: str | None = None, *, page: str | None = None):
    """AppTest of app.py, run once; signed in as ``user`` (a session this browser session started, as after the
    login form: AppTest sends no cookies, so a token in the URL alone would not sign it in)."""
    from streamlit.testing.v1 import AppTest  # here: half a second to import, which most test modules never need
    at = AppTest.from_file(APP, default_timeout=60)
    if user:
        with Store() as store:
            at.session_state["token"] = auth.start_session(store, store.get_user(user)).token
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def button(at, key: str):
    """The button with this key."""
    return at.button(key=key)


def texts(at) -> str:
    """Everything the page says, as one string (markdown, captions, alerts, metrics, titles)."""
    parts = [e.value for kind in ("markdown", "caption", "title", "subheader", "success", "info", "warning", "error")
             for e in getattr(at, kind)]
    parts += [f"{m.label}={m.value}" for m in at.metric]
    return "\n".join(str(p) for p in parts)


def metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def inline_images(at) -> list[str]:
    """The src of every <img> the page embeds with st.html (the annotate page's images)."""
    return re.findall(r'<img src="([^"]*)"', "".join(h.proto.body for h in at.get("html")))


def shown_image(at) -> int:
    """The id of the image the annotate page shows (its "Image #" caption)."""
    caption = next(c.value for c in at.caption if c.value.startswith("Image #"))
    return int(caption.split("#")[1].split(" ")[0])


def database_before(path: Path, migration: Callable) -> "Database":
    """A database at ``path`` of the schema just before ``migration`` (one of ``MIGRATIONS``), holding the class
    'cat' (id 1) and one image of it (id 1): what an older release left behind. Close its ``conn`` before opening
    a Store on it."""
    import sqlite3

    from annotator.store.base import Database
    from annotator.store.schema import MIGRATIONS
    db = Database(sqlite3.connect(path, isolation_level=None))
    before = MIGRATIONS.index(migration)
    for migrate in MIGRATIONS[:before]:
        migrate(db)
    db.execute(f"PRAGMA user_version = {before}")
    db.execute("INSERT INTO classes (id, name) VALUES (1, 'cat')")
    db.execute("INSERT INTO images (path, hash, label_id) VALUES ('/x/1.png', 'h', 1)")
    return db
