"""Pages under AppTest, beyond tests/test_app.py: what a role check says, and the Admin page's password reset
handing the user's images back. The app fixture (``db``, ``app``) comes from test_app."""
from streamlit.testing.v1 import AppTest
from test_app import app, button, db  # noqa: F401  (db is a fixture)

from annotator.store import Store


def role_page() -> None:
    from annotator.pages.common import require_role
    require_role({"role": "lead"}, "annotator")


def test_the_role_check_names_the_role_it_was_given():
    at = AppTest.from_function(role_page, default_timeout=60).run()
    assert [e.value for e in at.error] == ["This page is for annotators only."]


def test_a_password_reset_on_the_admin_page_hands_the_users_images_back(db):
    at = app("ann")
    with Store() as store:
        held = store.leased_to("ann")
    assert len(held) == 2  # the image on screen and the next one
    lead = app("admin", page="annotator/pages/admin.py")
    lead.selectbox(key="adm_user_pick").set_value("ann").run()
    button(lead, "adm_user_reset").click().run()
    assert "New password for ann" in lead.success[0].value
    with Store() as store:
        assert store.leased_to("ann") == [] and store.acquire_leases("admin", held, 600) == held
