"""annotator.queue on real SQLite files: order, audit share, leases, resume, grid, status."""

import random
import time

import pytest

from annotator.queue import QueueItem, grid_items, next_items, queue_status
from annotator.store import UnknownClass

DELTA = 0.1


def populate(store, per_class=20, classes=("a", "b", "c"), verify=("a", "b")):
    """``per_class`` images per class (class blocks of consecutive ids); returns {id: class name}."""
    ids = store.ensure_classes(classes)
    store.add_images({"path": f"/img/{c}/{k}.jpg", "hash": f"{c}{k}", "label_id": ids[c]}
                     for c in classes for k in range(per_class))
    store.set_verify(verify)
    return {r["id"]: r["label"] for r in store.iter_images()}


def add_model(store, images, seed=0, *, current=True):
    """A model scoring every image at random; returns {id: uncertainty}. Unverified class 'c' gets the
    most uncertain scores of all, so serving it would show up first."""
    rng = random.Random(seed)
    version = store.add_model(delta=DELTA)
    rows, unc = [], {}
    for i, label in images.items():
        score = DELTA + rng.uniform(-0.001, 0.001) if label == "c" else rng.uniform(-1, 1)
        unc[i] = abs(score - DELTA)
        rows.append((i, store.class_id(label), score, unc[i], store.class_id("a"), 0.5))
    store.write_scores(version, rows)
    if current:
        store.make_current(version)
    return unc


def drain(store, annotator, rng, **kw):
    """Serve and verdict one item at a time until the queue is empty; returns the items in order."""
    served = []
    while items := next_items(store, annotator, rng=rng, **kw):
        (item,) = items
        served.append(item)
        store.record_verdict(item.image_id, annotator, "correct", reason=item.reason)
    return served


def test_cold_start_random_audit_and_leased(store):
    images = populate(store)
    items = next_items(store, "ann", n=6, rng=random.Random(0))
    assert len(items) == 6 and all(isinstance(it, QueueItem) for it in items)
    assert {it.reason for it in items} == {"audit"}
    assert {it.label for it in items} <= {"a", "b"}
    assert all(it.score is None and it.model_version is None for it in items)
    assert all(store.held_by(it.image_id) == "ann" for it in items)
    assert all(it.path == f"/img/{images[it.image_id]}/{int(it.path.split('/')[-1][:-4])}.jpg" for it in items)
    served = [it.image_id for it in drain(store, "ann", random.Random(1))]
    assert served[:6] == [it.image_id for it in items]  # my leased items first, in the order served
    verify_ids = sorted(i for i, c in images.items() if c in ("a", "b"))
    assert sorted(served) == verify_ids  # every verify image exactly once, then the queue is empty
    assert served != verify_ids  # ... in random order, not by id
    other = [it.image_id for it in next_items(store, "x", n=40, rng=random.Random(2))]
    assert other == []


def test_uncertainty_order_without_audit(store):
    images = populate(store)
    unc = add_model(store, images)
    store.set_setting("audit_share", 0.0)
    verify_ids = [i for i, c in images.items() if c in ("a", "b")]
    first = next_items(store, "ann", n=5, rng=random.Random(0))
    assert [it.image_id for it in first] == sorted(verify_ids, key=unc.get)[:5]
    assert {it.reason for it in first} == {"uncertain"} and first[0].model_version == 1
    assert first[0].suggested_label == "a" and first[0].suggested_score == 0.5 and first[0].score is not None
    for it in first:
        store.record_verdict(it.image_id, "ann", "correct", reason=it.reason)
    rest = drain(store, "ann", random.Random(0))
    assert [it.image_id for it in rest] == sorted(verify_ids, key=unc.get)[5:]


def test_audit_share_and_uncertain_order_with_audits(store):
    images = populate(store, per_class=150)
    unc = add_model(store, images)
    store.set_setting("audit_share", 0.3)
    served = drain(store, "ann", random.Random(7))
    assert len(served) == 300
    audit = [it for it in served if it.reason == "audit"]
    assert 0.22 < len(audit) / len(served) < 0.38
    # each 'uncertain' item was the most uncertain one left: their uncertainties never decrease
    u = [unc[it.image_id] for it in served if it.reason == "uncertain"]
    assert u == sorted(u)
    # audit draws ignore the score: early audits are spread over the whole uncertainty range
    rank = {i: r for r, i in enumerate(sorted((i for i, c in images.items() if c != "c"), key=unc.get))}
    early = [rank[it.image_id] / 300 for it in audit[:30]]
    assert 0.3 < sum(early) / len(early) < 0.8


def test_verdicted_and_unverified_never_served(store):
    images = populate(store, verify=("a",))
    add_model(store, images)
    a_ids = [i for i, c in images.items() if c == "a"]
    for i in a_ids[:5]:
        store.record_verdict(i, "lead", "wrong", reason="manual")
    undone = store.record_verdict(a_ids[5], "lead", "correct", reason="manual")
    assert store.undo_last("lead") == [undone]  # an undone verdict makes its image servable again
    served = drain(store, "ann", random.Random(3))
    assert sorted(it.image_id for it in served) == sorted(a_ids[5:])
    assert {it.label for it in served} == {"a"}
    with pytest.raises(UnknownClass, match="not chosen"):
        next_items(store, "ann", class_name="c")
    with pytest.raises(UnknownClass):
        grid_items(store, "ann", "nope")


def test_duplicates_not_served(store):
    cid = store.ensure_classes(["a"])["a"]
    store.add_images([{"path": f"/{k}.jpg", "hash": "x", "label_id": cid} for k in (1, 2)])  # /2.jpg: duplicate
    store.set_verify(["a"])
    assert [it.path for it in next_items(store, "ann", n=5)] == ["/1.jpg"]


def test_two_annotators_never_share(store):
    images = populate(store)
    add_model(store, images)
    rng = random.Random(0)
    got = {"ann": set(), "bob": set()}
    for _ in range(4):
        for name in got:
            got[name] |= {it.image_id for it in next_items(store, name, n=3, rng=rng)}
    assert not got["ann"] & got["bob"]
    assert len(got["ann"]) == 3  # ann's own leases come back on every call: still the same 3 items


def test_reload_returns_my_leased_item_first(store):
    images = populate(store)
    add_model(store, images)
    (first,) = next_items(store, "ann", rng=random.Random(0))
    (again,) = next_items(store, "ann", rng=random.Random(1))
    assert again.image_id == first.image_id
    assert again.reason == first.reason  # a resumed item keeps the reason it was served for
    two = next_items(store, "ann", n=2, rng=random.Random(2))
    assert two[0].image_id == first.image_id and two[1].image_id != first.image_id
    store.record_verdict(first.image_id, "ann", "correct", reason=first.reason)
    assert next_items(store, "ann", rng=random.Random(3))[0].image_id == two[1].image_id


def test_expired_lease_taken_over(store):
    images = populate(store)
    add_model(store, images)
    store.set_setting("audit_share", 0.0)
    t0 = time.time()
    (mine,) = next_items(store, "ann", now=t0)
    (other,) = next_items(store, "bob", now=t0 + 10)
    assert other.image_id != mine.image_id
    later = t0 + 601  # ann's lease (600 s) has expired, bob's has not: bob is served ann's item
    (taken,) = next_items(store, "carl", now=later)
    assert taken.image_id == mine.image_id and store.held_by(mine.image_id, now=later) == "carl"
    (back,) = next_items(store, "ann", now=later + 1)
    assert back.image_id not in (mine.image_id, other.image_id)


def test_grid_one_class(store):
    images = populate(store)
    cold = grid_items(store, "ann", "b", n=4, rng=random.Random(0))  # no model: consecutive from a random id
    assert len(cold) == 4 and {it.label for it in cold} == {"b"} and {it.reason for it in cold} == {"grid"}
    store.release_leases("ann")
    unc = add_model(store, images)
    grid = grid_items(store, "ann", "a", n=16)
    a_ids = [i for i, c in images.items() if c == "a"]
    assert [it.image_id for it in grid] == sorted(a_ids, key=unc.get)[:16]
    assert {it.reason for it in grid} == {"grid"} and all(store.held_by(it.image_id) == "ann" for it in grid)
    assert [it.image_id for it in grid_items(store, "ann", "a", n=16)] == [it.image_id for it in grid]  # reload
    assert len(grid_items(store, "bob", "a", n=16)) == 4  # only 4 left for someone else
    assert len(next_items(store, "ann", n=3, class_name="a")) == 3  # ann's own grid leases, resumed


def test_queue_status(store):
    images = populate(store)
    add_model(store, images)
    items = next_items(store, "ann", n=3, rng=random.Random(0))
    store.record_verdict(items[0].image_id, "ann", "correct", reason=items[0].reason)
    store.record_verdict(next(i for i, c in images.items() if c == "b" and i not in {it.image_id for it in items}),
                         "bob", "wrong", reason="manual")
    status = queue_status(store, "ann")
    assert sum(status["remaining"].values()) == 40 - 3 - 1
    assert set(status["remaining"]) == {"a", "b"}
    assert status["mine_today"] == 1 and status["verdicts_total"] == 2
    assert queue_status(store, "ann", now=time.time() + 2 * 86400)["mine_today"] == 0


def test_hot_queries_use_indexes(store):
    plans = store.query_plans()
    assert "SEARCH q USING PRIMARY KEY (model_version=? AND label_id=?)" in plans["uncertain"][0]  # scores_queue
    assert "USING INDEX images_label (label_id=? AND id>?)" in plans["scan"][0]
    assert not any("SCAN" in line and "json_each" not in line for p in plans.values() for line in p)


def test_an_audit_draw_stays_audit_after_a_reload(store):
    images = populate(store)
    add_model(store, images)
    store.set_setting("audit_share", 1.0)
    (first,) = next_items(store, "ann", rng=random.Random(0))
    store.set_setting("audit_share", 0.0)
    (again,) = next_items(store, "ann", rng=random.Random(1))
    assert first.reason == again.reason == "audit" and again.image_id == first.image_id
