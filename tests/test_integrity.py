"""At most one live verdict per image: the store refuses a second one (in the transaction, under
concurrency, from any writer); explicit changes are undo-then-verdict or a lead's override; undo rules."""
import multiprocessing as mp
import random
import sqlite3
from collections import Counter

import pytest

from annotator import auth
from annotator.store import (NOTE_MAX, UNDO_DEPTH, AlreadyJudged, LeaseLost, SameLabel, Store, StoreError,
                             VerdictChanged)


def add(store, n: int, label: str = "cat") -> list[int]:
    cid = store.ensure_classes([label])[label]
    first = store.images_count()
    store.add_images([{"path": f"/{label}/{first + k}.jpg", "hash": f"{label}{first + k}", "label_id": cid}
                      for k in range(n)])
    return [r["id"] for r in store.iter_images()][first:]


def live_per_image(store) -> Counter:
    return Counter(v["image_id"] for v in store.live_verdicts())


def test_second_verdict_on_an_image_is_refused(store):
    (img,) = add(store, 1)
    store.record_verdict(img, "ann", "correct", reason="audit")
    with pytest.raises(AlreadyJudged, match=r"already has a verdict \(correct, by you\)"):
        store.record_verdict(img, "ann", "wrong", reason="audit")  # the double press
    with pytest.raises(AlreadyJudged, match=r"\(correct, by another annotator\)$"):  # names nobody to bob
        store.record_verdict(img, "bob", "wrong", reason="audit")
    assert [(v["annotator"], v["verdict"]) for v in store.live_verdicts()] == [("ann", "correct")]
    assert store.verdict_count(live_only=False) == 1  # the refused ones left no row


def test_the_schema_refuses_a_second_live_verdict_from_any_writer(store):
    (img,) = add(store, 1)
    store.record_verdict(img, "ann", "correct", reason="audit")
    with pytest.raises(sqlite3.IntegrityError, match="already has a live verdict"):
        store.db.execute("INSERT INTO verdicts (image_id, annotator, verdict, reason, created_at)"
                         " VALUES (?, 'x', 'wrong', 'manual', 0)", [img])


def test_change_is_undo_then_a_new_verdict(store):
    (img,) = add(store, 1)
    v1 = store.record_verdict(img, "ann", "correct", reason="audit")
    assert store.undo_last("ann") == [v1]
    v2 = store.record_verdict(img, "ann", "wrong", reason="audit")
    assert [v["id"] for v in store.live_verdicts()] == [v2]


def test_expired_lease_cannot_add_a_second_verdict(store):
    (img,) = add(store, 1)
    assert store.acquire_leases("alice", [img], 600, now=0) == [img]  # alice's lease expired long ago
    assert store.acquire_leases("bob", [img], 600) == [img]
    store.record_verdict(img, "bob", "wrong", reason="audit")
    with pytest.raises(AlreadyJudged):  # alice's stale screen
        store.record_verdict(img, "alice", "correct", reason="audit")
    (other,) = add(store, 1)
    store.acquire_leases("bob", [other], 600)
    with pytest.raises(LeaseLost) as e:  # bob holds it and has not judged it yet
        store.record_verdict(other, "alice", "correct", reason="audit")
    assert "bob" not in str(e.value) and "another annotator" in str(e.value)
    assert live_per_image(store) == {img: 1}


def test_lead_override_voids_the_old_verdict_in_the_same_transaction(store):
    auth.add_user(store, "lead", "lead", "lead-password")
    auth.add_user(store, "ann", "annotator", "ann-password")
    a, b = add(store, 2)
    old = store.record_verdict(a, "ann", "correct", reason="audit")
    new = store.override_verdict(a, "lead", "wrong")
    assert [(v["id"], v["annotator"], v["verdict"], v["reason"]) for v in store.live_verdicts()] == [
        (new, "lead", "wrong", "manual")]
    assert store.get_verdict(new - 1)["voids"] == old
    assert store.override_verdict(b, "lead", "unsure") and live_per_image(store) == {a: 1, b: 1}  # no old one
    with pytest.raises(StoreError, match="only an active lead"):
        store.override_verdict(a, "ann", "correct")
    assert live_per_image(store) == {a: 1, b: 1}


def test_override_of_the_verdict_a_lead_saw_refuses_stale_and_unchanged_ones(store):
    auth.add_user(store, "lead", "lead", "lead-password")
    a, b = add(store, 2)
    seen = store.record_verdict(a, "ann", "wrong", reason="audit")
    store.undo_last("ann")
    again = store.record_verdict(a, "ann", "correct", reason="audit")
    with pytest.raises(VerdictChanged, match=r"changed since it was shown \(now: correct, by 'ann'\)"):
        store.override_verdict(a, "lead", "wrong", replaces=seen)  # the lead's screen showed the undone one
    with pytest.raises(AlreadyJudged, match="already has this verdict"):
        store.override_verdict(a, "lead", "correct", replaces=again)
    with pytest.raises(VerdictChanged, match="it has none now"):
        store.override_verdict(b, "lead", "wrong", replaces=again)
    with pytest.raises(ValueError, match=f"at most {NOTE_MAX}"):
        store.override_verdict(a, "lead", "unsure", replaces=again, note="x" * (NOTE_MAX + 1))
    assert [v["id"] for v in store.live_verdicts()] == [again]  # nothing refused left a row
    new = store.override_verdict(a, "lead", "unsure", replaces=again, note="  two people disagree  ")
    assert store.live_verdict(a) | {"created_at": 0} == store.get_verdict(new) | {
        "corrected_label": None, "created_at": 0}
    assert (store.live_verdict(a)["note"], store.live_verdict(b)) == ("two people disagree", None)
    assert [(v["image_id"], v["verdict"], v["annotator"], v["note"]) for v in store.recent_verdicts(5)] == [
        (a, "unsure", "lead", "two people disagree")]


def test_the_images_own_label_is_refused_as_its_true_class(store):
    (img,) = add(store, 1)  # labelled cat
    store.ensure_classes(["dog"])
    auth.add_user(store, "lead", "lead", "lead-password")
    with pytest.raises(SameLabel, match="cannot be its own label"):
        store.record_verdict(img, "ann", "wrong", reason="audit", corrected_label="cat")
    vid = store.record_verdict(img, "ann", "wrong", reason="audit")
    with pytest.raises(SameLabel):
        store.relabel_verdict(vid, "ann", "cat")
    with pytest.raises(SameLabel):
        store.override_verdict(img, "lead", "wrong", corrected_label="cat", replaces=vid)
    assert [(v["id"], v["corrected_label_id"]) for v in store.live_verdicts()] == [(vid, None)]
    assert store.verdict_count(live_only=False) == 1


def test_undo_stays_in_the_current_session(store):
    ids = add(store, 3)
    store.record_verdict(ids[0], "ann", "correct", reason="audit", session_id=1)
    store.record_verdict(ids[1], "ann", "wrong", reason="audit", session_id=1)
    v3 = store.record_verdict(ids[2], "ann", "correct", reason="audit", session_id=2)
    assert store.undo_last("ann", session_id=2) == [v3]
    assert store.undo_last("ann", session_id=2) == []  # verdicts made under login session id 1 are out of reach
    assert len(store.live_verdicts()) == 2


def test_undo_depth_is_bounded(store):
    ids = add(store, UNDO_DEPTH + 3)
    for i in ids:
        store.record_verdict(i, "ann", "correct", reason="audit", session_id=7)
    undone = [store.undo_last("ann", session_id=7) for _ in range(UNDO_DEPTH + 3)]
    assert [len(u) for u in undone] == [1] * UNDO_DEPTH + [0] * 3
    assert [v["image_id"] for v in store.live_verdicts()] == ids[:3]


def test_grid_undo_voids_the_whole_page(store):
    ids = add(store, 5)
    single = store.record_verdict(ids[0], "ann", "correct", reason="audit", session_id=1)
    page = [store.record_verdict(i, "ann", "wrong" if i == ids[2] else "correct", reason="grid", session_id=1,
                                 batch="grid-1") for i in ids[1:]]
    assert sorted(store.undo_last("ann", session_id=1)) == page
    assert store.undo_last("ann", session_id=1) == [single]


def test_relabel_stays_one_undo_step(store):
    store.ensure_classes(["dog"])
    (img,) = add(store, 1)
    v = store.record_verdict(img, "ann", "wrong", reason="audit", session_id=1)
    v2 = store.relabel_verdict(v, "ann", "dog")
    assert store.undo_last("ann", session_id=1, depth=1) == [v2]
    assert store.live_verdicts() == []


def _hammer(path: str, worker: int, image_ids: list[int], seed: int) -> Counter:
    """One process: every image in a random order, as one of two annotators, two presses per image
    (the second changes its mind), an undo now and then."""
    rng = random.Random(seed)
    outcome = Counter()
    with Store(path) as store:
        for i in rng.sample(image_ids, len(image_ids)):
            name = f"ann{worker % 2}"
            for verdict in rng.sample(["correct", "wrong", "unsure"], 2):
                try:
                    store.record_verdict(i, name, verdict, reason="audit", session_id=worker)
                    outcome["saved"] += 1
                except (AlreadyJudged, LeaseLost):
                    outcome["refused"] += 1
            if rng.random() < 0.1:
                outcome["undone"] += len(store.undo_last(name, session_id=worker))
    return outcome


@pytest.mark.slow
def test_concurrent_processes_never_leave_two_live_verdicts(db_path):
    with Store(db_path) as store:
        ids = add(store, 60)
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        outcomes = pool.starmap(_hammer, [(str(db_path), w, ids, w) for w in range(4)])
    total = sum(outcomes, Counter())
    with Store(db_path) as store:
        live = live_per_image(store)
        assert max(live.values()) == 1  # the invariant
        assert sum(live.values()) == total["saved"] - total["undone"]  # nothing lost, nothing doubled
        rows = store._all("SELECT image_id, COUNT(*) AS n FROM verdicts v WHERE v.voids IS NULL GROUP BY image_id")
    assert total["refused"] >= len(ids)  # at least every second press of a process was refused
    assert sum(r["n"] for r in rows) == total["saved"]


# -- the annotate page (AppTest): each press carries its image id ------------------------
from helpers import app, button, shown_image, texts  # noqa: E402  (the AppTest database: conftest.py `db`)


def test_a_move_lost_after_the_commit_cannot_bind_the_next_press_to_the_judged_image(db):
    """The page's session state still shows the judged image (its update after the commit never ran)."""
    at = app("ann")
    first = shown_image(at)
    stale = list(at.session_state["ann_items"])
    button(at, "ann_correct").click().run()
    at.session_state["ann_items"] = stale  # as if the rerun had stopped right after the commit
    at.session_state["ann_actions"] = [("verdict", "wrong", first)]
    at.run()
    with Store() as store:
        assert [(v["image_id"], v["verdict"]) for v in store.live_verdicts()] == [(first, "correct")]
    assert "Not saved" in texts(at) and shown_image(at) != first


def test_two_tabs_of_one_user_never_store_two_verdicts(db):
    one, two = app("ann"), app("ann")
    first = shown_image(one)
    assert shown_image(two) == first  # a user's leases come back in each of their tabs
    button(one, "ann_correct").click().run()
    button(two, "ann_wrong").click().run()
    assert "Not saved: image" in texts(two) and "already has a verdict \\(correct\\, by you\\)" in texts(two)
    assert shown_image(two) != first
    for _ in range(3):
        shown = shown_image(two)
        button(one, "ann_correct").click().run()
        button(two, "ann_wrong").click().run()  # aimed at an image the other tab may have judged
        if shown_image(one) == shown:
            continue
        with Store() as store:
            assert Counter(v["image_id"] for v in store.live_verdicts())[shown] == 1
    with Store() as store:
        live = Counter(v["image_id"] for v in store.live_verdicts())
    assert max(live.values()) == 1


def test_stale_screen_after_an_expired_lease_is_refused(db):
    from annotator.queue import next_items
    alice = app("ann")
    image = shown_image(alice)
    with Store() as store:
        auth.add_user(store, "bob", "annotator", "bob-password")
        store.db.execute("UPDATE leases SET expires_at = 0 WHERE image_id = ?", [image])  # alice went for lunch
        got = {i.image_id for i in next_items(store, "bob", n=30)}
        assert image in got
        store.record_verdict(image, "bob", "wrong", reason="audit")
    button(alice, "ann_correct").click().run()
    with Store() as store:
        assert [(v["annotator"], v["verdict"]) for v in store.live_verdicts() if v["image_id"] == image] == [
            ("bob", "wrong")]
    assert "Not saved" in texts(alice) and shown_image(alice) != image


def test_undo_reaches_only_this_login_session(db):
    first = app("ann")
    button(first, "ann_correct").click().run()
    button(first, "ann_correct").click().run()
    later = app("ann")  # a new login of the same user
    button(later, "ann_undo").click().run()
    assert "Nothing to undo" in texts(later)
    with Store() as store:
        assert store.verdict_count() == 2
    button(first, "ann_undo").click().run()
    with Store() as store:
        assert store.verdict_count() == 1


def test_grid_undo_is_the_page(db):
    at = app("ann")
    at.toggle(key="ann_grid_mode").set_value(True).run()
    at.selectbox(key="ann_grid_class").set_value("dog").run()
    button(at, "ann_grid_submit").click().run()
    with Store() as store:
        assert store.verdict_count() == 12
    button(at, "ann_undo").click().run()
    assert "your last page (12 verdicts)" in texts(at)
    with Store() as store:
        assert store.verdict_count() == 0
    assert len([b for b in at.button if b.key and b.key.startswith("ann_flip_")]) == 12  # the page is back


def test_cli_override_needs_a_lead(tmp_path):
    from click.testing import CliRunner

    from annotator.cli import cli
    db = tmp_path / "state" / "annotator.db"
    with Store(db) as store:
        auth.add_user(store, "lead", "lead", "lead-password")
        (img,) = add(store, 1)
        store.ensure_classes(["dog"])
        store.record_verdict(img, "ann", "correct", reason="audit")
    runner = CliRunner()
    res = runner.invoke(cli, ["--db", str(db), "override", str(img), "wrong", "--lead", "ann"])
    assert res.exit_code == 1 and "only an active lead" in res.output
    res = runner.invoke(cli, ["--db", str(db), "override", str(img), "wrong", "--lead", "lead", "--label", "cat"])
    assert res.exit_code == 1 and "cannot be its own label" in res.output  # the image is labelled cat
    res = runner.invoke(cli, ["--db", str(db), "override", str(img), "wrong", "--lead", "LEAD", "--label", "dog",
                              "--note", "a dog"])  # user names compare case-insensitively
    assert res.exit_code == 0, res.output
    with Store(db) as store:
        [v] = store.live_verdicts()
        assert (v["annotator"], v["verdict"], v["corrected_label_id"]) == ("lead", "wrong", store.class_id("dog"))
        assert store.live_verdict(img)["note"] == "a dog"
