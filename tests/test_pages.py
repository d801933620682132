"""Pages under AppTest, beyond tests/test_app.py: what a role check says, how a missing file is named to whom,
grid mode reading each file once, and the Admin page's password reset handing the user's images back.
The AppTest database is conftest.py's ``db``."""
from pathlib import Path

from PIL import Image
from streamlit.testing.v1 import AppTest

from annotator import display
from annotator.store import Store

from helpers import app, button


def role_page() -> None:
    from annotator.pages.common import require_role
    require_role({"role": "lead"}, "annotator")


def test_the_role_check_names_the_role_it_was_given():
    at = AppTest.from_function(role_page, default_timeout=60).run()
    assert [e.value for e in at.error] == ["This page is for annotators only."]


def missing_file_warning(user: str, tmp_path: Path) -> tuple[str, int, Path]:
    """Every image file removed; -> (the warning `user` sees, unescaped; the image on screen; its path)."""
    with Store() as store:
        paths = {r["id"]: Path(r["path"]) for r in store.iter_images()}
    for p in paths.values():
        p.unlink()
    at = app(user)
    [item, _] = at.session_state["ann_items"]
    return at.warning[0].value.replace("\\", ""), item.image_id, paths[item.image_id]


def test_annotators_see_the_image_id_and_file_name_of_a_missing_file_never_its_server_path(db, tmp_path):
    warning, image_id, path = missing_file_warning("ann", tmp_path)
    assert f"image #{image_id}, file {path.name}." in warning
    assert str(path.parent) not in warning and str(tmp_path) not in warning


def test_leads_see_the_server_path_of_a_missing_file(db, tmp_path):
    warning, _, path = missing_file_warning("admin", tmp_path)
    assert f": {path}. Mark it unsure" in warning


def test_grid_mode_reads_each_file_once_and_again_only_when_it_changed(db, monkeypatch):
    reads = []

    def counted(path, **kw):
        reads.append(path)
        return read(path, **kw)

    read = display.read_for_display
    monkeypatch.setattr(display, "read_for_display", counted)
    at = app("ann")
    reads.clear()  # single mode's own reads
    at.toggle(key="ann_grid_mode").set_value(True).run()  # the first class's page
    reads.clear()
    at.selectbox(key="ann_grid_class").set_value("dog").run()
    shown = [item.path for item in at.session_state["ann_grid"]["items"]]
    assert len(shown) == 12 and sorted(reads) == sorted(shown)  # each once
    reads.clear()
    flips = [b for b in at.button if b.key and b.key.startswith("ann_flip_")]
    flips[0].click().run()
    flips[1].click().run()
    assert reads == []  # two clicks, no file read again
    Image.new("RGB", (9, 9), (1, 2, 3)).save(shown[5])  # rewritten in place: other size and mtime
    Path(shown[7]).unlink()
    flips[2].click().run()
    assert sorted(reads) == sorted([shown[5], shown[7]])
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 2 and "(changed since ingest" in warnings[0]  # not its new content
    assert "Image file missing or unreadable (missing)" in warnings[1]


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
