"""The transfer check: random draws in the unverified classes, served blind to the annotators a lead names, kept
out of every fit, measuring the model where nobody verifies (annotator.queue rule 6, annotator.estimates)."""
import random

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from annotator import auth, estimates, pipeline
from annotator.queue import next_items
from annotator.store import Store
from annotator.store.schema import SCHEMA_VERSION, _transfer_check_reason
from cleannet_core.metrics import auroc

from helpers import ABC_SCORES, build_abc, database_before


def answer(store: Store, who: str, k: int, rng: random.Random) -> list:
    items = []
    for _ in range(k):
        got = next_items(store, who, rng=rng)
        if not got:
            break
        items.append(got[0])
        store.record_verdict(got[0].image_id, who, "wrong" if got[0].image_id % 3 == 0 else "correct",
                             reason=got[0].reason)
    return items


def test_named_annotators_get_the_quota_of_random_draws_per_unverified_class_first(db_path):
    with Store(db_path) as store:
        ids = store.ensure_classes(["A", "B", "C"])
        store.add_images({"path": f"/img/{c}{k}.png", "hash": f"{c}{k}", "label_id": ids[c]}
                         for c in "ABC" for k in range(10))
        store.set_verify(["A"])
        store.set_setting("transfer_annotators", ["t"])
        store.set_setting("transfer_per_class", 3)
        rng = random.Random(0)
        assert {it.reason for it in answer(store, "u", 4, rng)} == {"audit"}  # not named: the usual queue
        served = answer(store, "t", 8, rng)
        names = {c["id"]: c["name"] for c in store.classes()}
        label = {r["id"]: names[r["label_id"]] for r in store.iter_images()}
        first = served[:6]
        assert {it.reason for it in first} == {"transfer_check"}
        assert sorted(label[it.image_id] for it in first) == ["B"] * 3 + ["C"] * 3
        assert [it.reason for it in served[6:]] == ["audit"] * 2 and {label[it.image_id] for it in served[6:]} == {"A"}
        assert store.transfer_taken() == {ids["B"]: 3, ids["C"]: 3}


def test_a_leased_transfer_item_comes_back_as_one_and_an_unsure_leaves_the_quota_open(db_path):
    with Store(db_path) as store:
        ids = store.ensure_classes(["A", "B"])
        store.add_images({"path": f"/img/{c}{k}.png", "hash": f"{c}{k}", "label_id": ids[c]}
                         for c in "AB" for k in range(10))
        store.set_verify(["A"])
        store.set_setting("transfer_annotators", ["t"])
        store.set_setting("transfer_per_class", 1)
        first = next_items(store, "t", rng=random.Random(1))[0]
        again = next_items(store, "t", rng=random.Random(2))[0]  # a reload: the same item, the same reason
        assert (again.image_id, again.reason) == (first.image_id, "transfer_check")
        assert store.transfer_taken() == {ids["B"]: 1}  # the lease counts against the quota
        store.record_verdict(first.image_id, "t", "unsure", reason=first.reason)
        nxt = next_items(store, "t", rng=random.Random(3))[0]
        assert nxt.reason == "transfer_check" and nxt.image_id != first.image_id
        store.record_verdict(nxt.image_id, "t", "correct", reason=nxt.reason)
        assert next_items(store, "t", rng=random.Random(4))[0].reason == "audit"  # quota met: the usual queue


def test_transfer_check_verdicts_neither_train_nor_validate_a_round(db_path):
    with Store(db_path) as store:
        build_abc(store)
        store.record_verdict(21, "t", "wrong", reason="transfer_check")  # C, odd id
        store.record_verdict(22, "t", "correct", reason="transfer_check")  # C, even id
        data = pipeline.load_data(store)
        split = pipeline.verdict_split(store, data)
    rows = {int(data.ids[i]) for i in np.concatenate([split.train, split.val])}
    assert {21, 22}.isdisjoint(rows)
    assert {int(data.ids[i]) for i in split.val} == {1, 3, 11} and rows == {1, 2, 3, 4, 5, 6, 11, 12}


def test_the_transfer_check_measures_error_and_auroc_on_the_unverified_classes(db_path):
    with Store(db_path) as store:
        build_abc(store)
        verdicts = {21: "correct", 22: "correct", 24: "wrong", 26: "correct", 27: "wrong", 29: "wrong"}
        for image, verdict in verdicts.items():
            store.record_verdict(image, "t", verdict, reason="transfer_check")
        s = estimates.standing(store)
    t = s["transfer"]
    score = np.array([ABC_SCORES["C"][i - 21] for i in verdicts])  # 0.9, 0.8, 0.6, 0.4, 0.3, 0.1
    correct = np.array([v == "correct" for v in verdicts.values()])
    errors = int(((score < 0.5) == correct).sum())  # 24 (0.6, wrong, kept) and 26 (0.4, correct, flagged)
    assert (t["n"], t["wrong"], errors) == (6, 3, 2) and t["per_class"] == {"C": {"n": 6, "wrong": 3}}
    assert t["error"]["rate"] == pytest.approx(2 / 6) and t["error"]["low"] == pytest.approx(estimates.wilson(2, 6)[0])
    assert t["flag_nothing_error"]["rate"] == 0.5
    a = auroc(score, correct)
    assert a == pytest.approx(8 / 9) and t["auroc"]["auroc"] == pytest.approx(a)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = np.sqrt((a * (1 - a) + 2 * (q1 - a * a) + 2 * (q2 - a * a)) / 9)
    assert (t["auroc"]["low"], t["auroc"]["high"]) == pytest.approx((a - 1.96 * se, 1.0))
    check = s["model_classes"]["check"]  # the model part is now checked on the transfer sample
    assert (check["source"], check["n"], check["wrong"]) == ("transfer-check", 6, 3)
    assert check["expected"] == pytest.approx(float((1 - score).sum()))
    assert s["model_classes"]["unjudged"] == 4


def test_the_annotate_page_shows_a_transfer_item_blind(db_path, monkeypatch):
    monkeypatch.setenv("ANNOTATOR_DB", str(db_path))
    with Store(db_path) as store:
        build_abc(store)
        auth.add_user(store, "t", "annotator", "t-password-1")
        store.set_setting("transfer_annotators", ["t"])
    at = AppTest.from_file("../app.py", default_timeout=60)
    with Store(db_path) as store:
        at.session_state["token"] = auth.start_session(store, store.get_user("t")).token
    at.run()
    assert not at.exception, at.exception
    said = "\n".join(str(c.value) for c in at.caption)
    assert "a random check of a class nobody verifies" in said and "hidden on audit items" in said
    assert "Model score" not in [m.label for m in at.metric]


def test_a_database_of_the_previous_schema_takes_transfer_check_verdicts_after_the_migration(tmp_path):
    import sqlite3
    db_path = tmp_path / "old.db"
    db = database_before(db_path, _transfer_check_reason)  # the reason CHECK without 'transfer_check'
    db.execute("INSERT INTO images (path, hash, label_id) VALUES ('/x/2.png', 'h2', 1), ('/x/3.png', 'h3', 1)")
    db.execute("INSERT INTO verdicts (image_id, annotator, verdict, reason, created_at) VALUES "
               "(1, 'a', 'correct', 'audit', 0)")
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        db.execute("INSERT INTO verdicts (image_id, annotator, verdict, reason, created_at) VALUES "
                   "(2, 'a', 'correct', 'transfer_check', 0)")
    db.conn.close()
    with Store(db_path) as store:  # migrates
        assert store.schema_version == SCHEMA_VERSION
        store.record_verdict(2, "a", "wrong", reason="transfer_check")
        assert [v["reason"] for v in store.live_verdicts()] == ["audit", "transfer_check"]
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con = sqlite3.connect(db_path)
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):  # other reasons are still refused
        con.execute("INSERT INTO verdicts (image_id, annotator, verdict, reason, created_at) VALUES "
                    "(3, 'a', 'correct', 'bogus', 0)")
    con.close()
