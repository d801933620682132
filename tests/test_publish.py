"""annotator.publish on real SQLite files: every row of the new version lands in `scores` and `scores_queue`,
the old version's rows go, and a reader never sees a current version with rows missing."""
import sqlite3
import threading

import numpy as np
import pytest

from annotator.pipeline import Data, load_data
from annotator.publish import PUBLISH_BATCH, REVIEWED, is_calibrated, publish_scores, queue_order
from annotator.store import STATE_ROW, Store
from cleannet_core.score import Scores

N = 3 * PUBLISH_BATCH + 17  # several transactions per table, the last one short


def _quiet(phase: str, progress: float, message: str) -> None:
    """A Report that says nothing."""


@pytest.fixture
def data(store) -> Data:
    """N images in 3 classes, contiguous id blocks as a folder ingest gives."""
    cids = store.ensure_classes(["a", "b", "c"])
    store.add_images({"path": f"/img/{i}.jpg", "hash": f"h{i}", "label_id": cids["abc"[3 * i // N]]}
                     for i in range(N))
    return load_data(store)


def scores(seed: int, *, counted: bool = False) -> Scores:
    """Random scores in [-1, 1]; every 7th image without a suggestion; counted: with a random counting
    P(label wrong) (Scores.expected_wrong)."""
    rng = np.random.default_rng(seed)
    suggested = np.where(np.arange(N) % 7 == 0, -1, rng.integers(0, 3, N))
    return Scores(rng.uniform(-1, 1, N).astype(np.float32), suggested, rng.random(N, np.float32),
                  rng.random(N) if counted else None)


def expected_rows(data: Data, sc: Scores, delta: float, reviewed: set[int]) -> list[tuple]:
    """The score rows publish_scores should write, computed row by row."""
    rows = []
    for k, image_id in enumerate(data.ids.tolist()):
        s, g = float(sc.score[k]), int(sc.suggested[k])
        rows.append((image_id, int(data.class_ids[data.labels[k]]), s,
                     abs(s - delta) + (REVIEWED if image_id in reviewed else 0.0),
                     int(data.class_ids[g]) if g >= 0 else None, float(sc.suggested_score[k]) if g >= 0 else None,
                     None if sc.expected_wrong is None else float(sc.expected_wrong[k])))
    return rows


def version_rows(store: Store, version: int) -> tuple[list[tuple], list[tuple]]:
    """(scores rows by image id, scores_queue rows in key order) of one version."""
    return ([tuple(r) for r in store.db.execute(
                "SELECT image_id, label_id, score, uncertainty, suggested_label_id, suggested_score, expected_wrong"
                " FROM scores"
                " WHERE model_version = ? ORDER BY image_id", [version])],
            [tuple(r) for r in store.db.execute(
                "SELECT label_id, uncertainty, image_id FROM scores_queue WHERE model_version = ?"
                " ORDER BY label_id, uncertainty, image_id", [version])])


def test_publish_writes_every_row_and_drops_the_old_version(store, data):
    v1 = store.add_model(delta=0.2)
    publish_scores(store, v1, data, scores(1), 0.2, _quiet)
    reviewed = data.ids[::500].tolist()
    for i in reviewed:
        store.record_verdict(i, "ann", "correct", reason="audit")
    v2 = store.add_model(delta=0.1)
    sc = scores(2, counted=True)
    publish_scores(store, v2, data, sc, 0.1, _quiet)
    rows, queue = version_rows(store, v2)
    want = expected_rows(data, sc, 0.1, set(reviewed))
    assert rows == want
    assert queue == sorted((label, u, i) for i, label, _, u, *_ in want)
    assert store.current_model()["version"] == v2
    assert version_rows(store, v1) == ([], [])
    most_uncertain = [i for _, i in sorted((u, i) for i, _, _, u, *_ in want)[:3]]
    assert store.uncertain_candidates(v2, data.class_ids.tolist(), 3) == most_uncertain


def test_a_reader_never_sees_a_current_version_with_rows_missing(store, data, db_path):
    """Publishing runs in another thread (its own Store) while this one reads snapshots: the current version
    always has all N rows in both tables, and the reader did look while the new version was half written."""
    v1 = store.add_model(delta=0.2)
    publish_scores(store, v1, data, scores(1), 0.2, _quiet)
    v2 = store.add_model(delta=0.2)
    errors: list[Exception] = []

    def publish() -> None:
        try:
            with Store(db_path) as own:
                publish_scores(own, v2, data, scores(2), 0.2, _quiet)
        except Exception as e:  # reported by the assert below
            errors.append(e)

    reader = sqlite3.connect(db_path, isolation_level=None)

    def snapshot() -> tuple[int, int]:
        """(current version, v2's rows in scores + scores_queue), with the current version's rows checked."""
        reader.execute("BEGIN")  # one snapshot for every count
        current = reader.execute("SELECT version FROM models WHERE is_current = 1").fetchone()[0]
        count = {(t, v): reader.execute(f"SELECT COUNT(*) FROM {t} WHERE model_version = ?", [v]).fetchone()[0]
                 for t in ("scores", "scores_queue") for v in (current, v2)}
        reader.execute("COMMIT")
        assert (count["scores", current], count["scores_queue", current]) == (N, N), (current, count)
        return current, count["scores", v2] + count["scores_queue", v2]

    publisher = threading.Thread(target=publish)
    publisher.start()
    seen = [snapshot()]
    while publisher.is_alive():
        seen.append(snapshot())
    publisher.join()
    assert not errors
    assert any(current == v1 and 0 < new_rows < 2 * N for current, new_rows in seen)  # looked mid-write
    assert snapshot() == (v2, 2 * N)


def test_write_scores_replaces_rows_and_their_queue_entries(store, data):
    v = store.add_model(delta=0.0)
    ids = data.ids[:5].tolist()
    store.write_scores(v, [(i, 1, 0.5, 0.5) for i in ids], batch=2)
    # a second call replaces two rows; within it, the same image twice: its last row counts
    store.write_scores(v, [(ids[0], 2, 0.9, 0.9, 3, 0.1), (ids[3], 2, 0.3, 0.3), (ids[3], 1, 0.2, 0.2)], batch=2)
    rows, queue = version_rows(store, v)
    assert rows == [(ids[0], 2, 0.9, 0.9, 3, 0.1, None), (ids[1], 1, 0.5, 0.5, None, None, None),
                    (ids[2], 1, 0.5, 0.5, None, None, None), (ids[3], 1, 0.2, 0.2, None, None, None),
                    (ids[4], 1, 0.5, 0.5, None, None, None)]
    assert queue == [(1, 0.2, ids[3]), (1, 0.5, ids[1]), (1, 0.5, ids[2]), (1, 0.5, ids[4]), (2, 0.9, ids[0])]
    assert store.delete_scores(v, batch=2) == 5
    assert version_rows(store, v) == ([], [])


def test_publish_stores_the_counting_probability_and_image_states_returns_it(store, data):
    """Scores with expected_wrong: each row stores its own value, and ``Store.image_states`` returns it with the
    score; a method without one (expected_wrong None) stores NULL. A row written without the column (older
    writers' shorter rows) is NULL too, and a full-width row sets it."""
    v1 = store.add_model(delta=0.5)
    sc = scores(3, counted=True)
    publish_scores(store, v1, data, sc, 0.5, _quiet)
    states = store.image_states(v1)
    assert STATE_ROW[3] == "score" and STATE_ROW[-1] == "expected_wrong" and len(states[0]) == len(STATE_ROW)
    assert [r[0] for r in states] == data.ids.tolist()
    assert [r[3] for r in states] == sc.score.astype(np.float64).tolist()
    assert [r[-1] for r in states] == sc.expected_wrong.tolist()
    v2 = store.add_model(delta=0.5)
    publish_scores(store, v2, data, scores(3), 0.5, _quiet)
    assert {r[-1] for r in store.image_states(v2)} == {None}
    ids = data.ids[:2].tolist()
    store.write_scores(v2, [(ids[0], 1, 0.4, 0.1), (ids[1], 1, 0.6, 0.1, None, None, 0.25)])
    assert [r[-1] for r in store.image_states(v2)[:2]] == [None, 0.25]


def test_queue_order_takes_the_verdict_free_rules_nearest_and_lowest_in_turn():
    """Calibrated: |score - delta|. Verdict-free: the k-th nearest the boundary and the k-th lowest score
    before any (k+1)-th, the lowest first: served order 0 (lowest), 3 (nearest), 4, 1, 2."""
    score = np.array([0.1, 0.45, 0.95, 0.52, 0.3])
    np.testing.assert_allclose(queue_order(score, 0.5, calibrated=True), np.abs(score - 0.5))
    key = queue_order(score, 0.5, calibrated=False)
    np.testing.assert_allclose(key, [0.0, 0.3, 0.8, 0.1, 0.2])
    assert np.argsort(key).tolist() == [0, 3, 4, 1, 2]
    assert is_calibrated({"cleannet": {}}) and is_calibrated({"transfer": {"calibrator": {"w": [1.0]}}})
    assert not is_calibrated({"transfer": {"signals": ["probe_margin"], "calibrator": None}})


def test_publish_writes_the_verdict_free_queue_order(store, data):
    """A verdict-free model's queue rows carry queue_order(calibrated=False), +REVIEWED once reviewed."""
    store.record_verdict(int(data.ids[5]), "ann", "correct", reason="uncertain")
    v = store.add_model(delta=0.0)
    sc = scores(4)
    publish_scores(store, v, data, sc, 0.0, _quiet, calibrated=False)
    key = queue_order(sc.score.astype(np.float64), 0.0, calibrated=False)
    key[5] += REVIEWED
    stored = {image_id: u for _, u, image_id in version_rows(store, v)[1]}
    np.testing.assert_allclose([stored[i] for i in data.ids.tolist()], key)
