"""8 annotator processes x 200 verdicts through the queue while a process keeps publishing model versions
with the worker's own publishing code (annotator.pipeline.publish_scores).

Real processes on one SQLite file: every verdict must land, no image may be served to two
annotators, nobody may see "database is locked", and the file must pass integrity_check.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

from annotator.store import Store

REPO = Path(__file__).resolve().parents[1]
ANNOTATORS, VERDICTS = 8, 200

ANNOTATE = """
import json, random, sys, time
from annotator.queue import next_items
from annotator.store import Store
db, name, n, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
served, errors, empty = [], [], 0
with Store(db) as store:
    while len(served) < n and len(errors) < 10 and empty < 50:
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

WRITE_MODELS = """
import json, os, random, sys
import numpy as np
from annotator.pipeline import load_data, publish_scores
from annotator.store import Store
from cleannet_core.score import Scores
db, stop = sys.argv[1], sys.argv[2]
rng = random.Random(0)
versions, errors = [], []
with Store(db) as store:
    data = load_data(store)
    n = len(data.ids)
    while not os.path.exists(stop):
        try:  # the worker's own publishing step: scores in chunks, make current, drop older scores
            delta = rng.uniform(-0.2, 0.3)
            v = store.add_model(delta=delta)
            sc = Scores(np.array([rng.uniform(-1, 1) for _ in range(n)], np.float32),
                        (data.labels + 1) % len(data.class_ids), np.zeros(n, np.float32))
            publish_scores(store, v, data, sc, delta, lambda *a: None)
            versions.append(v)
            open(stop + ".ready", "w").close()
        except Exception as e:
            errors.append(repr(e))
            break
print(json.dumps({"versions": versions, "errors": errors}))
"""


def spawn(code: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    assert "locked" not in err
    return json.loads(out)


def test_annotators_and_model_writer_share_one_file(tmp_path):
    db = tmp_path / "annotator.db"
    with Store(db) as store:
        ids = store.ensure_classes(["a", "b", "c", "d"])
        store.add_images({"path": f"/img/{c}/{k}.jpg", "hash": f"{c}{k}", "label_id": ids[c]}
                         for c in "abcd" for k in range(800))
        store.set_verify(["a", "b", "c"])  # 2,400 candidates for 1,600 verdicts; 'd' is never served
    stop = tmp_path / "stop"
    writer = spawn(WRITE_MODELS, db, stop)
    ready = Path(f"{stop}.ready")  # the first version has landed; the queue then runs with a model
    deadline = time.time() + 120
    while not ready.exists() and writer.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    t0 = time.time()
    annotators = [spawn(ANNOTATE, db, f"ann{k}", VERDICTS, k) for k in range(ANNOTATORS)]
    results = [finish(p, timeout=120) for p in annotators]
    stop.touch()
    written = finish(writer, timeout=60)
    elapsed = time.time() - t0

    assert [r["errors"] for r in results] == [[]] * ANNOTATORS
    assert written["errors"] == [] and len(written["versions"]) >= 2, written
    assert [len(r["served"]) for r in results] == [VERDICTS] * ANNOTATORS
    served = [i for r in results for i in r["served"]]
    assert len(set(served)) == ANNOTATORS * VERDICTS  # no image served to two annotators
    with Store(db) as store:
        live = store.live_verdicts()
        assert len(live) == ANNOTATORS * VERDICTS
        by_image: dict[int, set[str]] = {}
        for v in live:
            by_image.setdefault(v["image_id"], set()).add(v["annotator"])
        assert len(by_image) == len(live) and all(len(a) == 1 for a in by_image.values())
        d = store.class_id("d")
        assert all(v["label_id"] != d for v in live)
        assert store._scalar("PRAGMA integrity_check") == "ok"
        assert store.current_model()["version"] == written["versions"][-1]
    print(f"{elapsed:.1f}s, {len(written['versions'])} model versions, empty answers {[r['empty'] for r in results]}")
