"""A lead's verdict override on the Admin page (AppTest): find the image, see its verdict, choose, confirm.
The AppTest database is conftest.py's `db`."""
import pytest

from annotator.store import Store

from helpers import app, texts

ADMIN = "annotator/pages/admin.py"


def judged(verdict: str = "correct") -> int:
    """An image of class 'cat' judged by the annotator 'ann'; returns its id."""
    with Store() as store:
        image = next(r["id"] for r in store.iter_images() if r["label"] == "cat")
        store.record_verdict(image, "ann", verdict, reason="audit")
    return image


def find(at, image: int):
    at.number_input(key="adm_ovr_image").set_value(image).run()
    return at


def test_lead_overrides_an_annotators_verdict(db):
    image = judged("correct")
    with Store() as store:
        old = store.live_verdict(image)["id"]
    at = find(app("admin", page=ADMIN), image)
    assert f"Image #{image}, label **cat**: **correct** by ann" in texts(at)
    at.selectbox(key="adm_ovr_verdict").set_value("wrong").run()
    at.selectbox(key="adm_ovr_label").set_value("dog").run()
    at.text_input(key="adm_ovr_note").input("a dog, clearly").run()
    at.button(key="adm_ovr_submit").click().run()
    assert "Replace ann's **correct**" in at.warning[0].value
    with Store() as store:
        assert store.live_verdict(image)["id"] == old  # nothing happens before the confirmation
    at.button(key="adm_ovr_confirm").click().run()
    assert not at.exception and not at.error
    assert f"Image #{image} is now **wrong** (true class dog) by admin" in at.success[0].value
    with Store() as store:
        live = [v for v in store.live_verdicts() if v["image_id"] == image]
        assert [(v["annotator"], v["verdict"], v["corrected_label_id"], v["reason"]) for v in live] == [
            ("admin", "wrong", store.class_id("dog"), "manual")]
        assert store.live_verdict(image)["note"] == "a dog, clearly"
        assert store.get_verdict(live[0]["id"] - 1)["voids"] == old  # the old one voided in the same step
        assert store.verdict_count() == 1
        # the lead's undo on Annotate (this login session's verdicts) does not reach the override
        assert store.undo_last("admin", session_id=at.session_state["user"]["session_id"]) == []
    assert "**wrong** (true class dog) by admin" in texts(at)  # the page now shows the new verdict


def test_override_errors_are_messages(db):
    image = judged("wrong")
    at = find(app("admin", page=ADMIN), 9999)
    assert at.error[0].value == "There is no image #9999." and not at.exception
    find(at, image + 1)
    assert "has no verdict yet: nothing to override" in at.info[-1].value
    assert "adm_ovr_submit" not in [b.key for b in at.button]
    find(at, image).selectbox(key="adm_ovr_verdict").set_value("wrong").run()
    at.button(key="adm_ovr_submit").click().run()
    assert "already has" in at.error[0].value and not at.warning
    at.selectbox(key="adm_ovr_verdict").set_value("correct").run()
    at.button(key="adm_ovr_submit").click().run()
    assert "Replace ann's **wrong**" in at.warning[0].value
    with Store() as store:  # the annotator changes the verdict while the lead reads the question
        store.undo_last("ann")
        store.record_verdict(image, "ann", "unsure", reason="audit")
    at.button(key="adm_ovr_confirm").click().run()
    assert not at.exception and not at.warning  # not applied: the question was about another verdict
    assert f"Image #{image}, label **cat**: **unsure** by ann" in texts(at)
    with Store() as store:
        assert [(v["annotator"], v["verdict"]) for v in store.live_verdicts()] == [("ann", "unsure")]


def test_non_lead_cannot_reach_the_override(db):
    image = judged("correct")
    with pytest.raises(ValueError):  # the Admin page is not in an annotator's navigation
        app("ann").switch_page(ADMIN)
    lead = find(app("admin", page=ADMIN), image)
    lead.selectbox(key="adm_ovr_verdict").set_value("unsure").run()
    lead.button(key="adm_ovr_submit").click().run()
    with Store() as store:  # the lead is deactivated while the confirmation is on screen
        store.set_user_active("admin", False)
    lead.button(key="adm_ovr_confirm").click().run()
    assert [t.key for t in lead.text_input] == ["login_name", "login_password"]
    with Store() as store:
        assert [(v["annotator"], v["verdict"]) for v in store.live_verdicts()] == [("ann", "correct")]
