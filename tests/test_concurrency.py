"""8 annotator processes x 200 verdicts through the queue while the real worker process
(`python -m annotator worker`) retrains and publishes model versions on the same SQLite file.

Every verdict must land, no image may be served to two annotators, nobody (annotators or worker) may see
"database is locked", the worker must not fail a round, and the file must pass integrity_check.

Images are 2,000 generated 16 px PNGs (4 verified classes x 450, one unverified class x 200), so the test does
not need the CIFAR-10N folder. The backbone's weights come from a local "ImageNet weights" file (a seeded,
untrained resnet18), so no backbone is trained here: a round is feature extraction (once, then cached),
references, the probe and score writing - a few seconds, repeated every 50 verdicts (`retrain_every`).
"""

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import resnet18

from annotator.ingest import ingest_folder
from annotator.round_config import RoundConfig, save_round_config
from annotator.store import Store
from helpers import wait_for

pytestmark = pytest.mark.slow  # real worker processes training on real images

REPO = Path(__file__).resolve().parents[1]
ANNOTATORS, VERDICTS = 8, 200
VERIFIED, PER_CLASS, UNVERIFIED = ["a", "b", "c", "d"], 450, 200

ANNOTATE = """
import json, random, sys, time
from annotator.queue import next_items
from annotator.store import Store
db, name, n, seed, start_version = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rng = random.Random(seed)
served, errors, empty, gated = [], [], 0, False
with Store(db) as store:
    while len(served) < n and len(errors) < 10 and empty < 200:
        if len(served) == n // 2 and not gated:  # halfway: wait for a model the worker trained on our verdicts,
            gated, end = True, time.time() + 300  # so a version is published between our first and last verdict
            while store.current_model()["version"] <= start_version and time.time() < end:
                time.sleep(0.05)
            if store.current_model()["version"] <= start_version:
                errors.append("no new model version within 300 s")
                break
        try:
            items = next_items(store, name, n=2, rng=rng)  # prefetch one: the next call resumes it
            if not items:
                empty += 1
                time.sleep(0.02)
                continue
            item = items[0]
            store.record_verdict(item.image_id, name, rng.choice(["correct", "wrong", "unsure"]),
                                 reason=item.reason, model_version=item.model_version)
            served.append(item.image_id)
        except Exception as e:  # reported to the test, which fails on any
            errors.append(repr(e))
print(json.dumps({"served": served, "errors": errors, "empty": empty}))
"""


def spawn(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def finish(proc: subprocess.Popen, timeout: float) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    assert "locked" not in err, err
    return out


def make_images(root: Path) -> None:
    """Noisy 16 x 16 PNGs tinted by class."""
    rng = np.random.default_rng(0)
    for k, (name, n) in enumerate([(c, PER_CLASS) for c in VERIFIED] + [("e", UNVERIFIED)]):
        (root / name).mkdir(parents=True)
        tint = np.array([50 * k, 255 - 50 * k, 128])
        for i in range(n):
            px = np.clip(rng.normal(tint, 40, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / name / f"{i}.png")


def test_annotators_and_worker_share_one_file(tmp_path):
    make_images(tmp_path / "images")
    torch.manual_seed(0)
    torch.save(resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    db = tmp_path / "state" / "annotator.db"
    with Store(db) as store:
        assert ingest_folder(store, tmp_path / "images", progress=False).added == 4 * PER_CLASS + UNVERIFIED
        store.set_verify(VERIFIED)  # 1,800 candidates for 1,600 verdicts; 'e' is never served
        save_round_config(store, RoundConfig(arch="resnet18", weights_path=str(tmp_path / "r18.pth"), image_size=16,
                                             num_ref=8, adapt="off"))  # regular rounds only
        assert store.get_setting("retrain_every") == 50
    worker = spawn("-m", "annotator", "--db", db, "worker", "--poll", "0.2")
    store = Store(db)
    try:
        wait_for(lambda: store.current_model() is not None, timeout=300, what="the first model", proc=worker,
                 every=0.1)
        v1 = store.current_model()["version"]
        annotators = [spawn("-c", ANNOTATE, db, f"ann{k}", VERDICTS, k, v1) for k in range(ANNOTATORS)]
        results = [json.loads(finish(p, timeout=600)) for p in annotators]
        assert worker.poll() is None
        worker.send_signal(signal.SIGTERM)  # a clean stop: the worker marks itself stopped and exits 0
        finish(worker, timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()

    assert [r["errors"] for r in results] == [[]] * ANNOTATORS
    assert [len(r["served"]) for r in results] == [VERDICTS] * ANNOTATORS
    served = [i for r in results for i in r["served"]]
    assert len(set(served)) == ANNOTATORS * VERDICTS  # no image served to two annotators
    live = store.live_verdicts()
    assert len(live) == ANNOTATORS * VERDICTS
    by_image: dict[int, set[str]] = {}
    for v in live:
        by_image.setdefault(v["image_id"], set()).add(v["annotator"])
    assert len(by_image) == len(live) and all(len(a) == 1 for a in by_image.values())
    assert all(v["label_id"] != store.class_id("e") for v in live)
    assert store._scalar("PRAGMA integrity_check") == "ok"
    state = store.worker_state()
    assert state["last_error"] is None and state["phase"] == "stopped"
    first, last = store.db.execute("SELECT MIN(created_at), MAX(created_at) FROM verdicts").fetchone()
    models = store.models()
    during = [m["version"] for m in models if first < m["created_at"] < last and m["version"] > v1]
    assert during, [(m["version"], m["created_at"]) for m in models]  # the worker published while we wrote
    current = store.current_model()
    # SIGTERM abandons a round in progress (the previous model stays current), so a registered newer version whose
    # scores were never made current may be left behind: at most the one round that was running
    assert [m["version"] for m in models if m["version"] > current["version"]] in ([], [models[-1]["version"]])
    assert len(store.current_scores()) == 4 * PER_CLASS + UNVERIFIED
    print(f"{len(models)} model versions, {len(during)} published while annotators wrote; "
          f"empty answers {[r['empty'] for r in results]}")
    store.close()
