"""annotator.store on real SQLite files: schema, append-only verdicts, leases, models, settings."""

import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest

from annotator.store.schema import SCHEMA_VERSION
from annotator.store import (LeaseLost, SETTING_DEFAULTS, Store, StoreError, UnknownClass, UnknownImage,
                             UnknownUser, default_db_path)

TABLES = {"classes", "images", "verdicts", "leases", "models", "scores", "users", "worker", "requests",
          "settings", "ingest_errors", "artifacts", "scores_queue"}


def add(store, n, label="cat", start=0):
    """Add n fake images (distinct hashes) labelled ``label``; returns their ids."""
    cid = store.ensure_classes([label])[label]
    store.add_images({"path": f"/img/{label}/{i}.jpg", "hash": f"h{label}{i}", "label_id": cid}
                     for i in range(start, start + n))
    return [r["id"] for r in store.iter_images() if r["label"] == label][start:start + n]


def test_schema_created_wal_and_reopen_idempotent(db_path):
    s = Store(db_path)
    assert db_path.exists()
    assert TABLES <= set(s.db.table_names())
    assert s.schema_version == SCHEMA_VERSION
    assert s.db.journal_mode == "wal"
    assert s._scalar("PRAGMA busy_timeout") == 30000
    assert s._scalar("PRAGMA foreign_keys") == 1
    add(s, 3)
    s.close()
    s2 = Store(db_path)  # re-open: no migration, data intact
    assert s2.schema_version == SCHEMA_VERSION
    assert s2.images_count() == 3
    assert [c["name"] for c in s2.classes()] == ["cat"]


def test_newer_schema_refused(db_path):
    Store(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match=f"schema v{SCHEMA_VERSION + 1}"):
        Store(db_path)


def test_v1_database_is_migrated_to_the_current_version_keeping_its_rows(db_path):
    from sqlite_utils import Database

    from annotator.store.schema import MIGRATIONS
    db_path.parent.mkdir(parents=True, exist_ok=True)
    db = Database(db_path)
    MIGRATIONS[0](db)  # a database written by the v1 code
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO classes (name) VALUES ('cat')")
    db.execute("INSERT INTO images (path, hash, label_id) VALUES ('/a.jpg', 'h', 1)")
    db.execute("INSERT INTO models (version, delta, is_current) VALUES (1, 0.1, 1)")
    db.execute("INSERT INTO scores (model_version, image_id, label_id, score, uncertainty) VALUES (1, 1, 1, 0.3, 0.2)")
    db.conn.commit()
    db.close()
    s = Store(db_path)
    assert s.schema_version == SCHEMA_VERSION and [c["name"] for c in s.classes()] == ["cat"]
    assert "reason" in s.db["leases"].columns_dict
    assert {"phase_index", "phase_count", "overall", "round_started_at", "eta_at"} <= set(s.db["worker"].columns_dict)
    assert [(r["path"], r["mtime"]) for r in s.iter_images()] == [("/a.jpg", None)]  # rescan rehashes it
    # the queue order moved from an index on scores to its own table
    assert s._all("SELECT * FROM scores_queue") == [{"model_version": 1, "label_id": 1, "uncertainty": 0.2, "image_id": 1}]
    assert [i.name for i in s.db["scores"].indexes] == ["sqlite_autoindex_scores_1"]  # its primary key
    assert s.uncertain_candidates(1, [1], 5) == [1]


def test_scores_of_the_previous_schema_are_kept_and_count_with_1_minus_score(tmp_path):
    """A database from before the counting column: its score rows stay (expected_wrong NULL), image_states returns
    them, and "Where we stand" counts them with 1 - score."""
    from annotator import estimates
    from annotator.store.schema import _scores_expected_wrong
    from helpers import database_before

    path = tmp_path / "old.db"
    db = database_before(path, _scores_expected_wrong)
    db.execute("INSERT INTO models (version, delta, metrics, is_current) VALUES (1, 0.5, ?, 1)",
               ['{"noise_rate_kind": "expected"}'])
    db.execute("INSERT INTO scores (model_version, image_id, label_id, score, uncertainty, suggested_label_id,"
               " suggested_score) VALUES (1, 1, 1, 0.25, 0.25, NULL, NULL)")
    db.execute("INSERT INTO scores_queue VALUES (1, 1, 0.25, 1)")
    db.conn.close()
    s = Store(path)
    assert s.schema_version == SCHEMA_VERSION and "expected_wrong" in s.db["scores"].columns_dict
    assert s._all("SELECT * FROM scores") == [{"model_version": 1, "image_id": 1, "label_id": 1, "score": 0.25,
                                               "uncertainty": 0.25, "suggested_label_id": None,
                                               "suggested_score": None, "expected_wrong": None}]
    assert s.image_states(1) == [(1, 1, "ok", 0.25, None, None, None, None)]
    assert estimates.States.of(s.image_states(1)).p_wrong.tolist() == [0.75]
    assert estimates.standing(s)["model_classes"]["remaining"]["point"] == 0.75
    assert s.uncertain_candidates(1, [1], 5) == [1]


def test_default_db_path(monkeypatch, tmp_path):
    monkeypatch.delenv("ANNOTATOR_DB", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_db_path() == tmp_path / "xdg" / "annotator" / "annotator.db"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/dir")  # the XDG spec says to ignore relative paths
    assert default_db_path() == Path.home() / ".local" / "share" / "annotator" / "annotator.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_db_path() == Path.home() / ".local" / "share" / "annotator" / "annotator.db"
    repo = Path(__file__).resolve().parents[1]
    assert repo not in default_db_path().parents  # a project's data never lands in the clone
    monkeypatch.setenv("ANNOTATOR_DB", str(tmp_path / "x.db"))
    assert default_db_path() == tmp_path / "x.db"


def test_classes(store):
    assert store.ensure_classes([" cat ", "dog", "cat"]) == {"cat": 1, "dog": 2}
    add(store, 2, "cat")
    store.set_verify(["cat"])
    assert [(c["name"], c["verify"], c["n_images"]) for c in store.classes()] == [("cat", 1, 2), ("dog", 0, 0)]
    assert store.class_id("dog") == 2
    with pytest.raises(UnknownClass):
        store.class_id("bird")
    with pytest.raises(UnknownClass):
        store.set_verify(["cat", "bird"])
    assert store.classes()[0]["verify"] == 1  # the failed call changed nothing


def test_add_images_idempotent_and_duplicates(store):
    cid = store.ensure_classes(["cat"])["cat"]
    rows = [{"path": "/a.jpg", "hash": "x", "label_id": cid, "extra": {"k": "v"}},
            {"path": "/b.jpg", "hash": "x", "label_id": cid},
            {"path": "/a.jpg", "hash": "x", "label_id": cid}]
    assert tuple(store.add_images(rows)) == (2, 1, 1)
    assert tuple(store.add_images(rows)) == (0, 3, 0)
    a, b = list(store.iter_images(batch=1))
    assert (a["status"], a["duplicate_of"], a["extra"], a["label"]) == ("ok", None, {"k": "v"}, "cat")
    assert (b["status"], b["duplicate_of"]) == ("duplicate", a["id"])
    assert store.image_by_hash("x")["id"] == a["id"]
    assert store.image_by_hash("nope") is None
    assert store.images_count() == 2 and store.images_count("duplicate") == 1
    assert store.existing_paths(["/a.jpg", "/c.jpg"]) == {"/a.jpg"}
    with pytest.raises(UnknownClass):
        store.add_images([{"path": "/c.jpg", "hash": "y", "label_id": 99}])


def test_verdicts_append_only_and_undo(store):
    ids = add(store, 3)
    store.ensure_classes(["dog"])
    v1 = store.record_verdict(ids[0], "ann", "correct", reason="uncertain", model_version=1)
    v2 = store.record_verdict(ids[1], "ann", "wrong", reason="audit", corrected_label="dog")
    v3 = store.record_verdict(ids[2], "bob", "unsure", reason="grid")
    assert store.verdict_count() == 3
    assert store.undo_last("ann") == [v2]
    rows = store._all("SELECT id, verdict, voids FROM verdicts ORDER BY id")
    assert rows == [{"id": v1, "verdict": "correct", "voids": None}, {"id": v2, "verdict": "wrong", "voids": None},
                    {"id": v3, "verdict": "unsure", "voids": None}, {"id": v3 + 1, "verdict": "wrong", "voids": v2}]
    assert [v["id"] for v in store.live_verdicts()] == [v1, v3]
    assert store.live_verdicts()[0] == {"id": v1, "image_id": ids[0], "verdict": "correct",
                                        "corrected_label_id": None, "reason": "uncertain", "annotator": "ann",
                                        "created_at": store.live_verdicts()[0]["created_at"], "model_version": 1,
                                        "label_id": store.class_id("cat")}
    # undo twice voids two different verdicts, then there is nothing left to undo
    assert store.undo_last("ann") == [v1]
    assert store.undo_last("ann") == []
    assert [v["id"] for v in store.live_verdicts()] == [v3]
    assert store.verdict_count() == 1 and store.verdict_count(live_only=False) == 3
    assert store.verdicts_since(0) == 1 and store.verdicts_since(v3) == 0
    v4 = store.record_verdict(ids[0], "ann", "correct", reason="manual")
    assert store.verdicts_since(store.max_verdict_id() - 1) == 1 and v4 == store.max_verdict_id()
    stats = {s["annotator"]: s for s in store.annotator_stats(since=0)}
    assert (stats["ann"]["n"], stats["ann"]["correct"], stats["ann"]["undone"]) == (1, 1, 2)
    assert store.annotator_stats(since=time.time() + 60) == []


def test_annotator_stats_count_undos_not_relabels(store):
    """12 relabels (a corrected label given after 'wrong') are no undos; one real undo is one."""
    ids = add(store, 14)
    store.ensure_classes(["dog", "fox"])
    for i in ids[:12]:
        v = store.record_verdict(i, "ann", "wrong", reason="uncertain")
        v = store.relabel_verdict(v, "ann", "dog")
        store.relabel_verdict(v, "ann", "fox")  # changed mind: relabelled twice
    store.record_verdict(ids[12], "ann", "correct", reason="audit")
    store.record_verdict(ids[13], "ann", "correct", reason="audit")
    store.undo_last("ann")
    (stats,) = store.annotator_stats(since=0)
    assert (stats["n"], stats["wrong"], stats["correct"], stats["undone"]) == (13, 12, 1, 1)


def test_annotator_stats_count_no_override_as_an_undo(store):
    """A lead's override voids the annotator's verdict (or the lead's own) without anybody undoing it."""
    store.add_user("lead", "lead", "unused-hash")
    a, b, c = add(store, 3)
    store.record_verdict(a, "ann", "correct", reason="audit")
    store.record_verdict(b, "ann", "correct", reason="audit")
    store.undo_last("ann")  # b: the one real undo
    store.override_verdict(a, "lead", "wrong")
    store.record_verdict(c, "lead", "correct", reason="audit")
    store.override_verdict(c, "lead", "unsure")  # the lead overrides their own verdict
    stats = {s["annotator"]: (s["n"], s["undone"]) for s in store.annotator_stats(since=0)}
    assert stats == {"ann": (0, 1), "lead": (2, 0)}


def test_record_verdict_validation(store):
    (img,) = add(store, 1)
    with pytest.raises(ValueError, match="valid: correct, wrong, unsure"):
        store.record_verdict(img, "ann", "maybe", reason="manual")
    with pytest.raises(ValueError, match="reason"):
        store.record_verdict(img, "ann", "correct", reason="whim")
    with pytest.raises(ValueError):
        store.record_verdict(img, "ann", "correct", reason="manual", corrected_label="cat")
    with pytest.raises(UnknownClass):
        store.record_verdict(img, "ann", "wrong", reason="manual", corrected_label="bird")
    with pytest.raises(UnknownImage):
        store.record_verdict(999, "ann", "correct", reason="manual")
    assert store.verdict_count(live_only=False) == 0


def test_leases_exclusive_expiry_and_verdicts(store):
    ids = add(store, 4)
    assert store.acquire_leases("ann", ids[:3], 600) == ids[:3]
    assert store.acquire_leases("bob", ids, 600) == [ids[3]]
    assert store.held_by(ids[0]) == "ann" and store.leased_to("bob") == [ids[3]]
    with pytest.raises(LeaseLost):
        store.record_verdict(ids[0], "bob", "correct", reason="uncertain")
    store.record_verdict(ids[0], "ann", "correct", reason="uncertain")  # releases ann's lease on it
    assert store.held_by(ids[0]) is None
    assert store.acquire_leases("bob", [ids[0]], 600) == []  # verdicted: never leased again
    # an expired lease is taken over (this also purges every lease expired by then: ids[2], ids[3])
    future = time.time() + 601
    assert store.acquire_leases("bob", [ids[1]], 600, now=future) == [ids[1]]
    assert store.held_by(ids[1]) == "bob" and store.held_by(ids[1], now=future + 600) is None
    assert store.acquire_leases("ann", [ids[2]], 600) == [ids[2]]
    assert store.acquire_leases("ann", [ids[2]], 900) == [ids[2]]  # own live lease renewed
    assert store.release_leases("bob") == 1
    assert store.release_leases("ann", [ids[2]]) == 1
    assert store.leased_to("ann") == [] and store.acquire_leases("ann", [999], 60) == []
    # undo makes the image leasable again
    store.undo_last("ann")
    assert store.acquire_leases("bob", [ids[0]], 600) == [ids[0]]


def test_two_annotators_never_share_an_image(db_path):
    with Store(db_path) as setup:
        ids = add(setup, 200)
    got: dict[str, list[int]] = {}

    def work(name):
        s = Store(db_path)  # one Store per thread
        mine = got.setdefault(name, [])
        while granted := s.acquire_leases(name, [i for i in ids if i not in mine][:7], 600):
            mine.extend(granted)
            for i in granted[:3]:
                s.record_verdict(i, name, "correct", reason="uncertain")
        s.close()

    threads = [threading.Thread(target=work, args=(f"a{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    taken = [i for mine in got.values() for i in mine]
    assert sorted(taken) == sorted(ids)  # every image leased exactly once across annotators


def test_models_and_scores(store):
    ids = add(store, 3)
    v1 = store.add_model(delta=0.1, metrics={"auc": 0.9}, checkpoint="m1.pt", backbone="resnet50", n_verdicts=5)
    v2 = store.add_model(delta=0.2)
    assert (v1, v2) == (1, 2) and store.current_model() is None
    assert store.write_scores(v1, [(i, 1, 0.5, 0.4) for i in ids], batch=2) == 3
    assert store.write_scores(v1, [(ids[0], 1, -0.5, 0.6, 2, 0.7)]) == 1
    assert store._all("SELECT image_id, score, suggested_label_id FROM scores ORDER BY image_id") == [
        {"image_id": ids[0], "score": -0.5, "suggested_label_id": 2},
        {"image_id": ids[1], "score": 0.5, "suggested_label_id": None},
        {"image_id": ids[2], "score": 0.5, "suggested_label_id": None}]
    store.make_current(v1)
    store.make_current(v2)
    assert [m["is_current"] for m in store.models()] == [0, 1]
    assert store.current_model()["version"] == v2
    assert store.models()[0]["metrics"] == {"auc": 0.9}
    with pytest.raises(StoreError):
        store.make_current(7)
    assert store.current_model()["version"] == v2
    store.write_scores(v2, [(ids[0], 1, 0.1, 0.1)])
    assert store.delete_scores(v1, batch=2) == 3  # two transactions; v2's score stays
    assert store._all("SELECT model_version, image_id FROM scores") == [{"model_version": v2, "image_id": ids[0]}]


def test_settings_defaults(store):
    assert store.settings() == SETTING_DEFAULTS == {"audit_share": 0.2, "lease_seconds": 600,
                                                    "retrain_every": 50, "delta_override": None, "round": {},
                                                    "transfer_per_class": 20, "transfer_annotators": []}
    store.set_setting("delta_override", 0.15)
    store.set_setting("retrain_every", 10)
    assert store.get_setting("delta_override") == 0.15 and store.get_setting("retrain_every") == 10
    assert store.get_setting("audit_share") == 0.2 and store.get_setting("nope") is None


def test_worker_heartbeat_age(store):
    """The age is the time since the heartbeat at the moment of the call: bracketed by clock readings taken
    around it, so no bound depends on how fast the machine is."""
    assert store.worker_state()["heartbeat_age_s"] is None
    beat = time.time() - 30
    store.worker_update(pid=123, phase="scoring", progress=0.5, heartbeat=beat)
    before = time.time()
    state = store.worker_state()
    assert (state["pid"], state["phase"], state["progress"], state["heartbeat"]) == (123, "scoring", 0.5, beat)
    assert before - beat <= state["heartbeat_age_s"] <= time.time() - beat
    before = time.time()
    store.worker_update(message="hi")  # heartbeat refreshed, other fields kept
    state = store.worker_state()
    assert before <= state["heartbeat"] <= time.time() and state["heartbeat_age_s"] <= time.time() - before
    assert state["phase"] == "scoring" and state["message"] == "hi"
    with pytest.raises(ValueError):
        store.worker_update(bogus=1)


def test_requests(store):
    assert store.pending_request() is None
    r1 = store.request("retrain", "lead")
    assert store.request("retrain", "ann") == r1  # unstarted duplicate reused
    store.mark_request(r1, started=True)
    r2 = store.request("retrain", "ann")
    assert r2 != r1 and store.pending_request()["id"] == r1
    store.mark_request(r1, done=True)
    assert store.pending_request()["id"] == r2
    with pytest.raises(ValueError):
        store.request("partial")


def test_users(store):
    store.add_user("lee", "lead", "h1")
    store.add_user("ann", "annotator", "h2")
    with pytest.raises(StoreError):
        store.add_user("ann", "annotator", "h3")
    with pytest.raises(ValueError):
        store.add_user("x", "admin", "h")
    store.set_user_active("ann", False)
    store.set_password_hash("lee", "h9")
    assert store.get_user("lee")["password_hash"] == "h9" and store.get_user("zed") is None
    assert [(u["name"], u["role"], u["active"]) for u in store.list_users()] == [("ann", "annotator", 0),
                                                                                 ("lee", "lead", 1)]
    with pytest.raises(UnknownUser):
        store.set_user_active("zed")


def test_ingest_errors_dedup(store):
    rows = [{"source": "s", "path": "a", "reason": "missing"}, {"source": "s", "path": "b", "reason": "missing"},
            {"source": "s", "path": "c", "reason": "too large"}]
    assert store.add_ingest_errors(rows) == 3
    assert store.add_ingest_errors(rows) == 0
    assert store.ingest_error_counts() == {"missing": 2, "too large": 1}
    assert len(store.ingest_errors()) == 3


# -- queries added for the app (annotate, dashboard, admin, login) ------------------------
def test_relabel_verdict_voids_and_copies_and_undo_removes_it(store):
    ids = add(store, 2)
    store.ensure_classes(["dog"])
    v1 = store.record_verdict(ids[0], "ann", "wrong", reason="audit", model_version=3)
    v2 = store.relabel_verdict(v1, "ann", "dog")
    live = store.live_verdicts()
    assert [(v["id"], v["verdict"], v["corrected_label_id"], v["reason"], v["model_version"]) for v in live] == [
        (v2, "wrong", store.class_id("dog"), "audit", 3)]
    assert store.get_verdict(v2)["created_at"] == store.get_verdict(v1)["created_at"]
    assert store.get_verdict(v2 - 1)["voids"] == v1 and store.get_verdict(999) is None
    with pytest.raises(StoreError):  # no longer live
        store.relabel_verdict(v1, "ann", "dog")
    with pytest.raises(StoreError):  # someone else's
        store.relabel_verdict(v2, "other", "dog")
    with pytest.raises(UnknownClass):
        store.relabel_verdict(v2, "ann", "nope")
    v3 = store.record_verdict(ids[1], "ann", "correct", reason="audit")
    with pytest.raises(StoreError):  # not 'wrong'
        store.relabel_verdict(v3, "ann", "dog")
    assert store.undo_last("ann") == [v3] and store.undo_last("ann") == [v2]
    assert store.live_verdicts() == []


def test_audit_counts_and_unreviewed_by_class(store):
    cats, dogs = add(store, 4), add(store, 3, label="dog")
    store.ensure_classes(["empty"])
    store.record_verdict(cats[0], "a", "wrong", reason="audit")
    store.record_verdict(cats[1], "a", "correct", reason="audit")
    store.record_verdict(cats[2], "a", "unsure", reason="audit")
    store.record_verdict(cats[3], "a", "wrong", reason="uncertain")  # not an audit verdict
    store.record_verdict(dogs[0], "a", "wrong", reason="audit")
    store.undo_last("a")  # voids the dog verdict
    assert store.audit_counts() == {"cat": {"correct": 1, "wrong": 1, "unsure": 1}}
    assert store.unreviewed_by_class() == {"cat": 0, "dog": 3, "empty": 0}
