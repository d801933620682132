"""A verdict applied to near-duplicates (``Store.propagation_offer``, ``Store.propagate_verdict``) on a real SQLite
file: what a verdict implies for copies under the same and other labels, who may apply it, blind draws, idempotence,
undo, and the migration of a database of the previous schema."""
import sqlite3

import pytest

from annotator import auth
from annotator.store import PROPAGATED, AlreadyJudged, NotPropagable, Store, StoreError
from annotator.store.duplicates import implied
from annotator.store.schema import SCHEMA_VERSION, _propagated_verdicts

from helpers import database_before


def grouped_store(path) -> tuple[Store, dict[str, int]]:
    """Images 1-4 cat, 5-6 dog, 7 bird, 8 cat. One group: 1, 2, 3 (cat), 5 (dog), 7 (bird); another: 4 with 6 (dog);
    8 in none."""
    store = Store(path)
    ids = store.ensure_classes(["cat", "dog", "bird"])
    labels = ["cat", "cat", "cat", "cat", "dog", "dog", "bird", "cat"]
    store.add_images({"path": f"/nowhere/{k}.png", "hash": f"h{k}", "label_id": ids[lab]}
                     for k, lab in enumerate(labels, start=1))
    group = {1: 1, 2: 1, 3: 1, 5: 1, 7: 1, 4: 4, 6: 4}
    store.write_duplicates(((i, group.get(i), 0.1, int(i in group)) for i in range(1, 9)), features_key="k",
                           backbone_id="b", threshold=0.8, method="exact", n_images=8, n_groups=2, n_conflicts=2,
                           seconds=0.0)
    return store, ids


def test_implied_verdicts():
    cat, dog, bird = 1, 2, 3
    assert implied("correct", cat, None, cat) == ("correct", None)
    assert implied("correct", cat, None, dog) == ("wrong", cat)       # the copy's label is wrong: it is a cat
    assert implied("wrong", cat, dog, cat) == ("wrong", dog)
    assert implied("wrong", cat, dog, dog) == ("correct", None)      # the copy carries the true class
    assert implied("wrong", cat, dog, bird) == ("wrong", dog)
    assert implied("wrong", cat, None, cat) == ("wrong", None)
    assert implied("wrong", cat, None, dog) is None                  # a dog label may be right
    assert implied("unsure", cat, None, cat) is None


def test_offer_and_apply_same_label_then_the_suggestion_once(tmp_path):
    store, ids = grouped_store(tmp_path / "annotator.db")
    src = store.record_verdict(1, "ann", "correct", reason="uncertain", session_id=7)
    offer = store.propagation_offer(src, "ann")
    assert offer == [{"image_id": 2, "label": "cat", "same_label": True, "verdict": "correct", "corrected_label": None},
                     {"image_id": 3, "label": "cat", "same_label": True, "verdict": "correct", "corrected_label": None},
                     {"image_id": 5, "label": "dog", "same_label": False, "verdict": "wrong", "corrected_label": "cat"},
                     {"image_id": 7, "label": "bird", "same_label": False, "verdict": "wrong",
                      "corrected_label": "cat"}]
    made = store.propagate_verdict(src, "ann", [2, 3], session_id=7)
    rows = [store.get_verdict(v) for v in made]
    assert [(r["image_id"], r["annotator"], r["verdict"], r["corrected_label_id"], r["reason"], r["source_id"],
             r["session_id"]) for r in rows] == [(2, "ann", "correct", None, PROPAGATED, src, 7),
                                                 (3, "ann", "correct", None, PROPAGATED, src, 7)]
    assert rows[0]["batch"] == rows[1]["batch"] and rows[0]["batch"].startswith("propagated-")
    assert store.propagate_verdict(src, "ann", [2, 3], session_id=7) == []     # pressed twice: nothing new
    assert store.verdict_count() == 3 and store.verdict_count(live_only=False) == 3
    assert [o["image_id"] for o in store.propagation_offer(src, "ann")] == [5, 7]
    made = store.propagate_verdict(src, "ann", [5, 7], session_id=7)
    assert [(store.live_verdict(i)["verdict"], store.live_verdict(i)["corrected_label"]) for i in (5, 7)] == [
        ("wrong", "cat"), ("wrong", "cat")]
    assert store.propagation_offer(src, "ann") == []
    assert store.verdict_count() == 5


def test_several_sources_merge_agreeing_copies_and_skip_the_ones_they_disagree_on(tmp_path):
    """A saved grid page: cats 1 and 2 in one group with cat 3, dog 5 and bird 7."""
    store, ids = grouped_store(tmp_path / "annotator.db")
    v1 = store.record_verdict(1, "ann", "correct", reason="grid", session_id=7, batch="grid-a")
    v2 = store.record_verdict(2, "ann", "wrong", reason="grid", session_id=7, batch="grid-a")
    # 1 says 3 is correct and 5, 7 are cats; 2 (wrong, no true class) says 3 is wrong and nothing about 5, 7
    assert [(o["image_id"], o["verdict"], o["corrected_label"], o["source"])
            for o in store.propagation_offers([v1, v2], "ann")] == [(5, "wrong", "cat", v1), (7, "wrong", "cat", v1)]
    assert store.propagate_verdicts([(v1, [3, 5]), (v2, [3])], "ann", session_id=7) != []
    assert store.live_verdict(3) is None                                  # the two disagree: neither applies
    assert (store.live_verdict(5)["verdict"], store.live_verdict(5)["source_id"]) == ("wrong", v1)
    store.undo_last("ann", session_id=7)
    store.undo_last("ann", session_id=7)                                  # the page
    v1 = store.record_verdict(1, "ann", "correct", reason="grid", session_id=7, batch="grid-b")
    v2 = store.record_verdict(2, "ann", "correct", reason="grid", session_id=7, batch="grid-b")
    assert [(o["image_id"], o["source"]) for o in store.propagation_offers([v1, v2], "ann")] == [
        (3, v1), (5, v1), (7, v1)]                                         # agreeing: offered once, by the first
    made = store.propagate_verdicts([(v1, [3, 5]), (v2, [3, 7])], "ann", session_id=7)
    rows = [store.get_verdict(v) for v in made]
    assert [(r["image_id"], r["source_id"]) for r in rows] == [(3, v1), (5, v1), (7, v2)]
    assert len({r["batch"] for r in rows}) == 1                           # one press, one undo step
    assert store.verdict_count() == 5
    assert sorted(store.undo_last("ann", session_id=7)) == sorted(made)
    with pytest.raises(NotPropagable, match="not live"):
        store.propagate_verdicts([(v1, [3]), (v1 + 999, [5])], "ann")
    assert store.verdict_count() == 2                                      # refused as a whole


def test_undo_removes_one_applied_step_and_the_offer_comes_back(tmp_path):
    store, ids = grouped_store(tmp_path / "annotator.db")
    src = store.record_verdict(1, "ann", "wrong", reason="uncertain", session_id=7)
    assert [(o["image_id"], o["verdict"]) for o in store.propagation_offer(src, "ann")] == [(2, "wrong"), (3, "wrong")]
    made = store.propagate_verdict(src, "ann", [2, 3], session_id=7)
    assert sorted(store.undo_last("ann", session_id=7)) == sorted(made)   # the undo rows copy reason and source
    undo_rows = store.db.execute("SELECT reason, source_id FROM verdicts WHERE voids IS NOT NULL").fetchall()
    assert undo_rows == [(PROPAGATED, src), (PROPAGATED, src)]
    assert [o["image_id"] for o in store.propagation_offer(src, "ann")] == [2, 3]
    assert store.undo_last("ann", session_id=7) == [src]
    assert store.propagation_offer(src, "ann") == []
    with pytest.raises(NotPropagable, match="not live"):
        store.propagate_verdict(src, "ann", [2])


def test_a_relabelled_wrong_verdict_offers_its_true_class(tmp_path):
    store, ids = grouped_store(tmp_path / "annotator.db")
    first = store.record_verdict(1, "ann", "wrong", reason="uncertain")
    src = store.relabel_verdict(first, "ann", "dog")
    assert [(o["image_id"], o["verdict"], o["corrected_label"]) for o in store.propagation_offer(src, "ann")] == [
        (2, "wrong", "dog"), (3, "wrong", "dog"), (5, "correct", None), (7, "wrong", "dog")]
    assert store.propagation_offer(first, "ann") == []                     # the voided one offers nothing


def test_undoing_relabelling_or_overriding_a_source_takes_back_its_copies(tmp_path):
    """A copy's verdict stands on its source: when the source is voided (a relabel, a lead's override, an undo), so
    are the verdicts applied from it, in the same transaction; the copies are open again and offered anew."""
    store, ids = grouped_store(tmp_path / "annotator.db")
    auth.ensure_admin(store)
    src = store.record_verdict(1, "ann", "wrong", reason="uncertain", session_id=7)
    store.propagate_verdict(src, "ann", [2, 3], session_id=7)
    relabelled = store.relabel_verdict(src, "ann", "dog")   # the relabel joins the source's undo step
    assert [store.live_verdict(i) for i in (2, 3)] == [None, None]
    assert [(o["image_id"], o["verdict"], o["corrected_label"]) for o in
            store.propagation_offer(relabelled, "ann")][:2] == [(2, "wrong", "dog"), (3, "wrong", "dog")]
    store.propagate_verdict(relabelled, "ann", [2, 3], session_id=7)
    store.override_verdict(1, "admin", "correct", replaces=relabelled)
    assert [store.live_verdict(i) for i in (2, 3)] == [None, None] and store.live_verdict(1)["verdict"] == "correct"
    assert [store.undo_last("ann", session_id=7) for _ in range(3)] == [[], [], []]  # the lead's override ended both
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_who_and_what_may_be_propagated(tmp_path):
    store, ids = grouped_store(tmp_path / "annotator.db")
    src = store.record_verdict(1, "ann", "correct", reason="uncertain")
    with pytest.raises(NotPropagable, match="only its annotator"):
        store.propagate_verdict(src, "bob", [2])
    assert store.propagation_offer(src, "bob") == []
    with pytest.raises(StoreError, match=r"images \[4, 8\] are not near-duplicates of image 1"):
        store.propagate_verdict(src, "ann", [2, 4, 8])
    assert store.live_verdict(2) is None                                  # refused as a whole
    unsure = store.record_verdict(4, "ann", "unsure", reason="uncertain")
    with pytest.raises(NotPropagable, match="unsure"):
        store.propagate_verdict(unsure, "ann", [6])
    for blind in ("audit", "transfer_check"):
        v = store.record_verdict(8 if blind == "audit" else 6, "ann", "correct", reason=blind)
        assert store.propagation_offer(v, "ann") == []
    audit_on_member = store.record_verdict(2, "ann", "correct", reason="audit")
    with pytest.raises(NotPropagable, match="random draw"):
        store.propagate_verdict(audit_on_member, "ann", [3])


def test_blind_draws_and_other_annotators_leases_are_never_reached(tmp_path):
    store, ids = grouped_store(tmp_path / "annotator.db")
    store.acquire_leases("bob", [2], 600, reasons={2: "uncertain"})       # in front of someone else
    store.acquire_leases("ann", [3], 600, reasons={3: "audit"})           # my own audit draw: stays blind
    store.acquire_leases("ann", [5], 600, reasons={5: "uncertain"})       # my own next item: may be reached
    store.acquire_leases("ann", [1], 600, reasons={1: "uncertain"})
    src = store.record_verdict(1, "ann", "correct", reason="uncertain")
    assert [o["image_id"] for o in store.propagation_offer(src, "ann")] == [5, 7]
    assert store.propagate_verdict(src, "ann", [2, 3, 5, 7]) != []
    assert store.live_verdict(2) is None and store.live_verdict(3) is None
    assert store.leased_to("ann") == [3]                                  # the lease on 5 ended with its verdict
    assert store.held_by(2) == "bob"
    with pytest.raises(AlreadyJudged):
        store.record_verdict(5, "ann", "correct", reason="uncertain")


def test_the_schema_ties_reason_and_source(tmp_path):
    store, ids = grouped_store(tmp_path / "annotator.db")
    src = store.record_verdict(1, "ann", "correct", reason="uncertain")
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        store.db.execute("INSERT INTO verdicts (image_id, annotator, verdict, reason, created_at)"
                         " VALUES (2, 'x', 'correct', 'propagated', 0)")
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        store.db.execute("INSERT INTO verdicts (image_id, annotator, verdict, reason, source_id, created_at)"
                         " VALUES (2, 'x', 'correct', 'uncertain', ?, 0)", [src])
    with pytest.raises(ValueError, match="reason"):
        store.record_verdict(2, "ann", "correct", reason=PROPAGATED)


def test_a_database_of_the_previous_schema_gains_the_propagated_reason(tmp_path):
    path = tmp_path / "old.db"
    db = database_before(path, _propagated_verdicts)
    db.execute("INSERT INTO verdicts (image_id, annotator, verdict, reason, created_at)"
               " VALUES (1, 'ann', 'correct', 'transfer_check', 1.0)")
    db.conn.close()
    store = Store(path)
    assert store.schema_version == SCHEMA_VERSION
    assert store.live_verdict(1)["reason"] == "transfer_check" and store.live_verdict(1)["source_id"] is None
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_reason_check_of_unexpected_text_is_refused_not_silently_kept(tmp_path):
    from annotator.store.schema import _transfer_check_reason
    db = database_before(tmp_path / "odd.db", _transfer_check_reason)
    db.execute("PRAGMA writable_schema = ON")
    db.execute("UPDATE sqlite_master SET sql = replace(sql, ', ''manual''', '') WHERE name = 'verdicts'")
    db.execute("PRAGMA writable_schema = OFF")
    with pytest.raises(RuntimeError, match="not migrating"):
        _transfer_check_reason(db)
    db.conn.close()


def test_an_image_whose_file_changed_leaves_its_group_until_the_next_run(tmp_path):
    store, ids = grouped_store(tmp_path / "annotator.db")
    assert store.update_image_files([{"id": 2, "hash": "new", "bytes": 1, "mtime": 1.0}]) == 1
    src = store.record_verdict(1, "ann", "correct", reason="uncertain")
    assert [o["image_id"] for o in store.propagation_offer(src, "ann")] == [3, 5, 7]   # 2 is no longer offered
    assert dict(store.iter_duplicate_groups())[1] == 1 and 2 not in dict(store.iter_duplicate_groups())
