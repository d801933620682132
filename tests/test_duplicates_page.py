"""The dashboard's near-duplicates section under AppTest: conflicting groups first with inline thumbnails, the
class filter, the outliers list, escaping of class names, and leads only."""
import pytest

from annotator.store import Store

from helpers import HOSTILE, app, button, shown_image, texts


def plant_run(store: Store) -> dict[str, list[int]]:
    """A stored run: cat #1 with dog #13 (a conflict), cat #2 with cat #3, the hostile class's images as outliers."""
    by_class: dict[str, list[int]] = {}
    for r in store.iter_images():
        by_class.setdefault(r["label"], []).append(r["id"])
    cat, dog, bad = by_class["cat"], by_class["dog"], by_class[HOSTILE]
    group = {cat[0]: cat[0], dog[0]: cat[0], cat[1]: cat[1], cat[2]: cat[1]}
    score = {i: 0.1 for i in cat + dog} | {i: 0.9 - 0.01 * k for k, i in enumerate(bad)}
    store.write_duplicates(((i, group.get(i), s, int(group.get(i) == cat[0])) for i, s in sorted(score.items())),
                           features_key="k",
                           backbone_id="b", threshold=0.9, method="exact", n_images=36, n_groups=2, n_conflicts=1,
                           seconds=0.1)
    return by_class


def test_groups_conflicts_first_with_thumbnails_filter_and_outliers(db):  # noqa: F811
    with Store() as store:
        by_class = plant_run(store)
    at = app("admin", page="annotator/pages/dashboard.py")
    said = texts(at)
    assert "2 groups of near-duplicates among 36 images" in said and "1 of them with members under" in said
    groups = [m.value for m in at.markdown if m.value.startswith("**Group")]
    cat, dog, bad = by_class["cat"], by_class["dog"], by_class[HOSTILE]
    assert groups == [f"**Group {cat[0]}** · 2 images · :red[label conflict]: cat, dog",
                      f"**Group {cat[1]}** · 2 images · all cat"]
    images = [h.proto.body for h in at.get("html") if "<img" in h.proto.body]
    assert len(images) == 4 + 12 and all('src="data:image/png;base64,' in b for b in images)  # inline, no /media
    assert f"\\#{dog[0]} dog" in said
    assert f"\\#{bad[0]} " in said and "0\\.90" in said   # the most outlying first, with its score
    assert "<b>" not in said                               # the hostile class name is escaped in captions
    at.selectbox(key="dup_class").set_value("dog").run()
    groups = [m.value for m in at.markdown if m.value.startswith("**Group")]
    assert groups == [f"**Group {cat[0]}** · 2 images · :red[label conflict]: cat, dog"]
    at.toggle(key="dup_conflicts").set_value(True).run()
    at.selectbox(key="dup_class").set_value("All classes").run()
    assert [m.value for m in at.markdown if m.value.startswith("**Group")] == groups


def test_not_computed_yet_and_annotators_do_not_see_it(db):  # noqa: F811
    at = app("admin", page="annotator/pages/dashboard.py")
    assert "Not computed yet" in texts(at)
    with Store() as store:
        plant_run(store)
    with pytest.raises(ValueError, match="Known pages: .*annotate.py'\\]"):  # an annotator has no dashboard
        app("ann", page="annotator/pages/dashboard.py")


def group_around(shown: int, others: list[int]) -> None:
    """A stored run whose one group is image ``shown`` with ``others``."""
    members = [shown, *others]
    with Store() as store:
        store.write_duplicates(((i, min(members), 0.1, 1) for i in sorted(members)), features_key="k",
                               backbone_id="b", threshold=0.9, method="exact", n_images=36, n_groups=1,
                               n_conflicts=1, seconds=0.1)


def annotate_first_image(*, audit_share: float):
    """The annotator's Annotate page with audit_share set: (AppTest, the image shown, its label, the images held
    in the session: the shown one and the prefetched one)."""
    with Store() as store:
        store.set_setting("audit_share", audit_share)
    at = app("ann")
    shown = shown_image(at)
    held = {i.image_id for i in at.session_state["ann_items"]}
    with Store() as store:
        label = store.queue_rows([shown], None)[shown]["label"]
    return at, shown, label, held


def test_annotate_offers_the_verdict_for_the_copies_and_applies_it_only_when_pressed(db):  # noqa: F811
    at, shown, label, held = annotate_first_image(audit_share=0.0)
    with Store() as store:
        other = "dog" if label == "cat" else "cat"
        same = [r["id"] for r in store.iter_images() if r["label"] == label and r["id"] not in held][:2]
        moved = [r["id"] for r in store.iter_images() if r["label"] == other and r["id"] not in held][:1]
    group_around(shown, same + moved)
    button(at, "ann_correct").click().run()
    with Store() as store:
        [source] = store.live_verdicts()
        assert source["image_id"] == shown and store.verdict_count() == 1   # nothing applied by itself
    assert button(at, "ann_copies_same").label == "Apply to the 2 copies"
    assert f"Suggestion: 1 copy labelled **{other}**, so **wrong** (true class **{label}**)." in texts(at)
    button(at, "ann_copies_same").click().run()
    with Store() as store:
        rows = [store.live_verdict(i) for i in same]
        assert [(r["verdict"], r["annotator"], r["reason"], r["source_id"]) for r in rows] == [
            ("correct", "ann", "propagated", source["id"])] * 2
        assert store.live_verdict(moved[0]) is None
    assert "Applied to 2 copies" in texts(at) and not [b for b in at.button if b.key == "ann_copies_same"]
    at.session_state["ann_actions"] = [("propagate", ((source["id"], tuple(same)),))]   # the same press again
    at.run()
    with Store() as store:
        assert store.verdict_count() == 3
    assert "Applied to 0 copies" in texts(at) and "2 skipped" in texts(at)
    button(at, "ann_copies_other_0").click().run()
    with Store() as store:
        assert (store.live_verdict(moved[0])["verdict"], store.live_verdict(moved[0])["corrected_label"]) == (
            "wrong", label)
    assert not [b for b in at.button if b.key and b.key.startswith("ann_copies")]
    button(at, "ann_undo").click().run()                                  # one press, one undo step
    with Store() as store:
        assert store.live_verdict(moved[0]) is None and store.verdict_count() == 3


def test_no_offer_after_a_verdict_on_an_audit_draw(db):  # noqa: F811
    at, shown, label, held = annotate_first_image(audit_share=1.0)
    assert "a random audit sample" in texts(at)
    with Store() as store:
        same = [r["id"] for r in store.iter_images() if r["label"] == label and r["id"] not in held][:2]
    group_around(shown, same)
    button(at, "ann_correct").click().run()
    assert not [b for b in at.button if b.key and b.key.startswith("ann_copies")]
    with Store() as store:
        assert store.verdict_count() == 1


def test_undoing_an_applied_step_sends_the_copies_back_to_the_queue_not_to_this_screen(db):  # noqa: F811
    """Copies were never served to the annotator: undoing the verdict applied to them leaves them unjudged and
    unleased, and the next presses judge the images the queue serves (a copy comes back as an ordinary item)."""
    at, shown, label, held = annotate_first_image(audit_share=0.0)
    with Store() as store:
        same = [r["id"] for r in store.iter_images() if r["label"] == label and r["id"] not in held][:2]
    group_around(shown, same)
    button(at, "ann_correct").click().run()
    button(at, "ann_copies_same").click().run()
    button(at, "ann_undo").click().run()
    assert "Undone: the verdict applied to 2 copies" in texts(at)
    assert not {i.image_id for i in at.session_state["ann_items"]} & set(same)
    with Store() as store:
        assert [store.live_verdict(i) for i in same] == [None, None] and store.lease_reasons("ann", same) == {}
    for _ in range(4):
        button(at, "ann_correct").click().run()
        assert not at.exception
    with Store() as store:
        assert {v["reason"] for v in store.live_verdicts()} == {"uncertain"} and store.verdict_count() == 5


def test_a_saved_grid_page_offers_its_verdicts_for_the_copies(db):  # noqa: F811
    """Dog images 0 and 1 share a group with cat image 0: after the page is saved with dog 0 marked wrong (no true
    class: says nothing about the cat copy) and dog 1 correct (the cat copy is a dog), the cat copy is offered as a
    wrong label whose true class is dog, applied from dog 1's verdict. The cat copy is ann's own lease served by
    uncertainty (an audit draw of hers would stay blind and not be offered: test_duplicates_propagate)."""
    with Store() as store:
        store.set_setting("audit_share", 0.0)
    at = app("ann")
    at.toggle(key="ann_grid_mode").set_value(True).run()
    at.selectbox(key="ann_grid_class").set_value("dog").run()
    dogs = [int(b.key.rsplit("_", 1)[1]) for b in at.button if b.key and b.key.startswith("ann_flip_")]
    with Store() as store:
        cat = next(r["id"] for r in store.iter_images() if r["label"] == "cat")
        assert store.acquire_leases("ann", [cat], 600, reasons={cat: "uncertain"}) == [cat]  # hers: still reached
        store.write_duplicates(((i, dogs[0], 0.1, 1) for i in sorted([dogs[0], dogs[1], cat])), features_key="k",
                               backbone_id="b", threshold=0.9, method="exact", n_images=36, n_groups=1,
                               n_conflicts=1, seconds=0.1)
    at.button(key=f"ann_flip_{dogs[0]}").click().run()
    button(at, "ann_grid_submit").click().run()
    assert "The last page's images have 1 copy (near-duplicates) without a verdict." in texts(at)
    assert "Suggestion: 1 copy labelled **cat**, so **wrong** (true class **dog**)." in texts(at)
    assert not [b for b in at.button if b.key == "ann_copies_same"]
    button(at, "ann_copies_other_0").click().run()
    with Store() as store:
        v = store.live_verdict(cat)
        source = store.get_verdict(v["source_id"])
        assert (v["verdict"], v["corrected_label"], v["reason"], source["image_id"], source["verdict"]) == (
            "wrong", "dog", "propagated", dogs[1], "correct")
        assert store.verdict_count() == 13
    assert not [b for b in at.button if b.key and b.key.startswith("ann_copies")]
