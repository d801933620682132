"""Accounts and sessions, login throttling, private files, hostile names and files, through the store,
the CLI and the app (AppTest). `store` with `users` holds the lead 'admin' and the annotator 'ann'; `db` is the
AppTest database (conftest.py)."""
import base64
import hashlib
import logging
import os
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from streamlit.testing.v1 import AppTest

from cleannet_core.keys import content_hash

from annotator import auth, display, ingest
from annotator.cli import cli
from annotator.pages import common
from annotator.store import Store, StoreError

from helpers import ADMIN_PW, APP, app, button, inline_images, shown_image, texts

REPO = Path(__file__).resolve().parents[1]
LOGIN_KEYS = ["login_name", "login_password"]


def login_form(at) -> bool:
    return [t.key for t in at.text_input] == LOGIN_KEYS


# -- sessions ---------------------------------------------------------------------------
def test_session_token_is_random_stored_hashed_and_no_secret_is_kept(store, users):
    s1, s2 = (auth.start_session(store, store.get_user("ann")) for _ in range(2))
    assert s1.token != s2.token and len(s1.token) == 43
    rows = store._all("SELECT token_hash FROM sessions ORDER BY id")
    assert [r["token_hash"] for r in rows] == [hashlib.sha256(s.token.encode()).hexdigest() for s in (s1, s2)]
    assert store.get_setting("session_secret") is None


def test_session_expiry_is_idle_and_capped(store, users):
    ann = store.get_user("ann")
    t0 = 1_000_000.0
    s = auth.start_session(store, ann, now=t0)
    assert auth.resume_session(store, s.token, now=t0 + auth.SESSION_IDLE_S - 1)
    assert auth.resume_session(store, s.token, now=t0 + 2 * auth.SESSION_IDLE_S - 2)  # kept alive by use
    assert auth.resume_session(store, s.token, now=t0 + 4 * auth.SESSION_IDLE_S) is None  # idle too long
    s = auth.start_session(store, ann, now=t0)
    store.db.execute("UPDATE sessions SET expires_at = ?, last_used = ? WHERE id = ?",
                     [t0 + 10 * 365 * 86400, t0 + auth.SESSION_MAX_S, s.session_id])  # a 10-year row
    assert auth.resume_session(store, s.token, now=t0 + auth.SESSION_MAX_S + 1) is None  # the cap holds


def test_a_session_id_is_never_reused_so_undo_never_reaches_an_earlier_login(store, users):
    cid = store.ensure_classes(["cat"])["cat"]
    store.add_images([{"path": f"/cat/{k}.jpg", "hash": f"h{k}", "label_id": cid} for k in range(2)])
    first = auth.start_session(store, store.get_user("ann"))
    store.record_verdict(1, "ann", "correct", reason="audit", session_id=first.session_id)
    store.end_session(first.session_id)  # logout: the newest session row is gone
    store.record_login("x", "", False)  # other rows come and go meanwhile
    later = auth.start_session(store, store.get_user("ann"))
    assert later.session_id > first.session_id
    assert store.undo_last("ann", session_id=later.session_id) == [] and store.verdict_count() == 1


def test_session_ids_continue_above_every_id_a_verdict_carries_after_the_upgrade(db_path):
    """A database from before: its newest sessions were deleted, but verdicts still carry their ids."""
    from sqlite_utils import Database

    from annotator.store.schema import MIGRATIONS
    db_path.parent.mkdir(parents=True, exist_ok=True)
    db = Database(db_path)
    before = [m.__name__ for m in MIGRATIONS].index("_accounts_v2")  # the schema just before that upgrade
    for migrate in MIGRATIONS[:before]:
        migrate(db)
    db.execute(f"PRAGMA user_version = {before}")
    db.execute("INSERT INTO users (name, role, password_hash) VALUES ('ann', 'annotator', 'x')")
    db.execute("INSERT INTO classes (name) VALUES ('cat')")
    db.execute("INSERT INTO images (path, hash, label_id) VALUES ('/a.jpg', 'h', 1)")
    db.execute("INSERT INTO sessions (id, token_hash, user, created_at, last_used, expires_at)"
               " VALUES (3, 'h3', 'ann', 0, 0, 0)")
    db.execute("INSERT INTO verdicts (image_id, annotator, verdict, reason, created_at, session_id)"
               " VALUES (1, 'ann', 'correct', 'audit', 0, 7)")  # the session with id 7 is gone
    db.conn.commit()
    db.close()
    with Store(db_path) as s:
        assert [r["id"] for r in s._all("SELECT id FROM sessions")] == [3]
        new = auth.start_session(s, s.get_user("ann"))
        assert new.session_id == 8 and s.undo_last("ann", session_id=new.session_id) == []


def test_logout_password_change_deactivation_and_signout_end_sessions(store, users):
    ann = store.get_user("ann")

    def live(token):
        return auth.resume_session(store, token) is not None

    s = auth.start_session(store, ann)
    store.end_session(s.session_id)  # logout
    assert not live(s.token)
    s = auth.start_session(store, ann)
    auth.set_password(store, "ann", "a-new-password")
    assert not live(s.token)
    s = auth.start_session(store, ann)
    store.set_user_active("ann", False)
    store.set_user_active("ann", True)
    assert not live(s.token)  # re-activation does not revive it
    a, b = auth.start_session(store, ann), auth.start_session(store, ann)
    keep = auth.start_session(store, store.get_user("admin"))
    assert store.end_sessions("ann") == 2
    assert not live(a.token) and not live(b.token) and live(keep.token)


def test_logout_token_copied_before_no_longer_signs_in(db):
    at = app()
    at.text_input(key="login_name").input("ann")
    at.text_input(key="login_password").input("ann-password")
    at.button(key="login_submit").click().run()
    token = at.query_params[common.SESSION_PARAM]
    at.button(key="logout").click().run()
    again = AppTest.from_file(APP, default_timeout=60)
    again.query_params[common.SESSION_PARAM] = token
    again.run()
    assert login_form(again) and common.SESSION_PARAM not in again.query_params


def test_open_tab_is_signed_out_at_once_by_reset_and_by_sign_out_everywhere(db):
    tab = app("ann")
    lead = app("admin", page="annotator/pages/admin.py")
    lead.selectbox(key="adm_user_pick").set_value("ann").run()
    lead.button(key="adm_user_reset").click().run()
    password = lead.code[0].value
    tab.run()
    assert login_form(tab)  # the reset ended her open session
    tab = app("ann")
    lead.button(key="adm_user_signout").click().run()
    assert "Signed ann out of 1 session" in texts(lead)
    button(tab, "ann_correct").click().run()  # a press after "sign out everywhere" saves nothing
    assert login_form(tab)
    with Store() as store:
        assert store.verdict_count() == 0 and auth.authenticate(store, "ann", password)


NESTED = base64.urlsafe_b64encode(b"[" * 5000).decode().rstrip("=") + ".x"  # decodes to 5,000 nested lists


@pytest.mark.parametrize("garbage", [NESTED, "[" * 5000, "x" * 100_000, "%00", "a.b.c", "{}"])
def test_unreadable_session_parameter_shows_the_login_form_and_is_removed(db, garbage):
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params[common.SESSION_PARAM] = garbage
    at.run()
    assert not at.exception and not at.error and login_form(at)
    assert common.SESSION_PARAM not in at.query_params


# -- login ------------------------------------------------------------------------------
def test_login_form_says_when_throttled(db):
    at = app()
    for _ in range(auth.FREE_TRIES_USER + 1):
        at.text_input(key="login_name").input("admin")
        at.text_input(key="login_password").input("wrong-password")
        at.button(key="login_submit").click().run()
    assert "Too many failed logins" in at.error[0].value and login_form(at)


@pytest.mark.real_scrypt
def test_unknown_user_costs_the_same_scrypt_work(store, users, monkeypatch):
    calls = []
    real = hashlib.scrypt

    def counting(*args, **kwargs):
        calls.append(kwargs["n"])
        return real(*args, **kwargs)

    auth._dummy_hash()  # made once per process, like the password hashes themselves
    monkeypatch.setattr(auth.hashlib, "scrypt", counting)
    auth.authenticate(store, "nobody", "whatever-pw")
    auth.authenticate(store, "ann", "wrong-password")
    assert calls == [2 ** 17, 2 ** 17]


@pytest.mark.real_scrypt
def test_old_scrypt_cost_is_rehashed_at_login(store, users):
    salt = os.urandom(16)
    old = hashlib.scrypt(b"old-cost-password", salt=salt, n=2 ** 14, r=8, p=1, dklen=32).hex()
    store.set_password_hash("ann", f"scrypt${2 ** 14}$8$1${salt.hex()}${old}")
    s = auth.start_session(store, store.get_user("ann"))
    assert auth.authenticate(store, "ann", "old-cost-password")
    stored = store.get_user("ann")["password_hash"]
    assert stored.startswith(f"scrypt${2 ** 17}$8$1$") and not auth.needs_rehash(stored)
    assert auth.authenticate(store, "ann", "old-cost-password") and auth.resume_session(store, s.token)


def test_a_password_reset_during_a_login_rehash_is_not_undone(store, users, monkeypatch):
    """A login that verified an old-cost hash rehashes it, but never over a password set meanwhile."""
    salt = os.urandom(16)
    old = hashlib.scrypt(b"old-cost-password", salt=salt, n=2 ** 11, r=8, p=1, dklen=32).hex()
    store.set_password_hash("ann", f"scrypt${2 ** 11}$8$1${salt.hex()}${old}")
    verify = auth.verify_password

    def reset_meanwhile(password: str, stored: str) -> bool:  # a lead's reset lands while the login verifies
        ok = verify(password, stored)
        auth.set_password(store, "ann", "reset-by-the-lead")
        return ok

    monkeypatch.setattr(auth, "verify_password", reset_meanwhile)
    assert auth.authenticate(store, "ann", "old-cost-password")  # it was the password when it was checked
    monkeypatch.setattr(auth, "verify_password", verify)
    assert auth.authenticate(store, "ann", "reset-by-the-lead")
    assert auth.authenticate(store, "ann", "old-cost-password") is None


def test_user_names_are_normalised_and_compared_case_insensitively(store, users):
    for clash in ("Admin", "ADMIN", "\uff21dmin", " admin "):  # the last but one is a full-width A
        with pytest.raises(StoreError, match="already exists"):
            auth.add_user(store, clash, "annotator", "long-enough-pw")
    for bad in ("adm\u200bin", "ad\u0000min", "a\u202edmin", "a\ndmin", "", "x" * 65,
                "adm\u034fin", "admin\ufe0f", "\u3164admin", "ad\u2800min", "\u0430dmin", "adm\u0131n x\u03b1",
                "bob\u115f", "a  b", "a/b", "<b>", "..."):  # invisible, braille blank, Cyrillic/Greek mixed in
        with pytest.raises(auth.BadName):
            auth.add_user(store, bad, "annotator", "long-enough-pw")
    auth.add_user(store, "sac", "annotator", "long-enough-pw")
    with pytest.raises(StoreError, match="looks like an existing user's name"):
        auth.add_user(store, "\u0455\u0430\u0441", "annotator", "long-enough-pw")  # all Cyrillic, looks like sac
    for good in ("jean-luc.picard", "José", "Zoë@lab", "山田太郎", "やまだ Taro", "Дмитрий", "Ελένη", "r2d2"):
        auth.add_user(store, good, "annotator", "long-enough-pw")
    assert auth.authenticate(store, "ADMIN", ADMIN_PW)["name"] == "admin"
    assert auth.authenticate(store, "adm\u200bin", ADMIN_PW) is None
    assert [u["name"] for u in store.list_users()] == sorted(["admin", "ann", "sac", "jean-luc.picard", "José",
                                                               "Zoë@lab", "山田太郎", "やまだ Taro", "Дмитрий", "Ελένη",
                                                               "r2d2"])


def test_minimum_password_length_everywhere(store, users, tmp_path):
    with pytest.raises(auth.WeakPassword):
        auth.add_user(store, "bob", "annotator", "a")
    with pytest.raises(auth.WeakPassword):
        auth.set_password(store, "ann", "short")
    assert len(auth.add_user(store, "carl", "annotator")) >= auth.MIN_PASSWORD  # generated ones pass
    runner = CliRunner()
    db = str(store.path)
    res = runner.invoke(cli, ["--db", db, "users", "add", "dave", "--role", "annotator", "--password", "a"])
    assert res.exit_code == 1 and f"{auth.MIN_PASSWORD}-" in res.output and store.get_user("dave") is None
    res = runner.invoke(cli, ["--db", db, "users", "password", "ann", "--password", "short"])
    assert res.exit_code == 1 and "characters" in res.output
    res = runner.invoke(cli, ["--db", db, "users", "password", "ann", "--password", "a-long-password"])
    assert res.exit_code == 0 and auth.authenticate(store, "ann", "a-long-password")
    auth.start_session(store, store.get_user("ann"))
    res = runner.invoke(cli, ["--db", db, "users", "signout", "ANN"])
    assert res.exit_code == 0 and "ended 1 session(s) of 'ann'" in res.output


# -- files ------------------------------------------------------------------------------
def test_state_folder_and_files_are_private(tmp_path):
    """The CLI in a fresh process (default umask 022): folder 0700, database, WAL, SHM and export 0600."""
    images = tmp_path / "images" / "cat"
    images.mkdir(parents=True)
    for k in range(3):
        Image.new("RGB", (8, 8), (k, 2, 3)).save(images / f"{k}.png")
    state = tmp_path / "state"
    env = dict(os.environ, ANNOTATOR_ADMIN_PASSWORD=ADMIN_PW)
    db = ["--db", str(state / "annotator.db")]
    commands = [db + ["init"], db + ["ingest", "--folder", str(tmp_path / "images")],
                db + ["export", "--out", str(state / "export.csv")]]
    script = (f"import os; os.umask(0o022); from annotator.cli import cli\nfor args in {commands!r}:\n"
              "    cli.main(args, standalone_mode=False)")
    subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, check=True, capture_output=True)
    with Store(state / "annotator.db") as s:  # keep the WAL and SHM files open while we look
        s.verdict_count()
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in state.iterdir()}
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        assert {"annotator.db", "annotator.db-wal", "annotator.db-shm", "export.csv"} <= set(modes)
        assert set(modes.values()) == {0o600}, modes


# -- hostile names and files -----------------------------------------------------------
def test_non_utf8_names_are_recorded_and_the_rest_ingested(store, users, tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    os.mkdir(os.fsencode(root) + b"/caf\xe9")
    os.mkdir(root / "dog")
    for folder in (os.fsencode(root) + b"/caf\xe9", os.fsencode(root / "dog")):
        for k in range(2):
            Image.new("RGB", (8, 8), (k, len(folder) % 255, 3)).save(folder.decode("utf-8", "surrogateescape")
                                                                      + f"/{k}.png")
    Image.new("RGB", (8, 8), (9, 9, 9)).save(os.fsdecode(os.fsencode(root / "dog") + b"/bad\xffname.png"))
    report = ingest.ingest_folder(store, root, progress=False)
    assert report.added == 2 and report.counts == {ingest.BAD_NAME: 2}
    recorded = sorted(e["path"] for e in store.ingest_errors())
    assert recorded == [str(root / "caf\\xe9"), str(root / "dog" / "bad\\xffname.png")]
    assert {e["reason"] for e in store.ingest_errors()} == {ingest.BAD_NAME}


def test_class_names_with_bidi_or_zero_width_characters_are_refused_and_counted(store, users, tmp_path):
    root = tmp_path / "images"
    for folder in ("cat", "dog\u202egnp.exe", "cat\u200b"):  # a bidi override; a zero-width look-alike of cat
        (root / folder).mkdir(parents=True)
        for k in range(2):
            Image.new("RGB", (8, 8), (k, len(folder), 3)).save(root / folder / f"{k}.png")
    report = ingest.ingest_folder(store, root, progress=False)
    assert report.added == 2 and report.counts == {ingest.BAD_CLASS: 2}
    assert [c["name"] for c in store.classes()] == ["cat"]
    assert sorted(p for p, _ in report.errors) == [str(root / "cat[U+200B]"), str(root / "dog[U+202E]gnp.exe")]
    (tmp_path / "labels.csv").write_text("path,label\ncat/0.png,bird\u2066\ncat/1.png,\ufeffbird\n"
                                         "cat/1.png,bird\n")
    report = ingest.ingest_csv(store, tmp_path / "labels.csv", root, progress=False)
    assert report.counts == {ingest.BAD_CLASS: 2} and "class name has invisible characters: 2" in report.summary()
    assert common.md("dog\u202egnp.exe") == "dog\\[U\\+202E\\]gnp\\.exe"  # older data shows the override


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (no real pixel data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_display_checks_file_type_place_and_size(tmp_path):
    good = tmp_path / "root" / "cat" / "ok.png"
    good.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(good)
    recorded = content_hash(good.read_bytes())
    assert display.read_for_display(str(good), expected_hash=recorded) == good.read_bytes()
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), (4, 5, 6)).save(outside)
    cases = {"link.png": ingest.ESCAPES, "empty.png": ingest.EMPTY, "text.png": ingest.NOT_IMAGE,
             "huge.png": ingest.TOO_LARGE, "gone.png": ingest.MISSING, "dir.png": ingest.NOT_REGULAR}
    (good.parent / "link.png").symlink_to(outside)
    (good.parent / "empty.png").write_bytes(b"")
    (good.parent / "text.png").write_text("just text\n")
    (good.parent / "huge.png").write_bytes(_png_header(20_000, 20_000))  # 400 megapixels
    (good.parent / "dir.png").mkdir()
    for name, reason in cases.items():
        path = good.parent / name
        expected = content_hash(path.read_bytes()) if path.is_file() and not path.is_symlink() else recorded
        assert display.read_for_display(str(path), expected_hash=expected) == reason, name
    linked_dir = tmp_path / "root" / "dog"
    linked_dir.symlink_to(good.parent)  # a folder along the path became a link
    assert display.read_for_display(str(linked_dir / "ok.png"), expected_hash=recorded) == ingest.ESCAPES


def test_annotate_shows_the_designed_warning_for_a_changed_file(db, tmp_path):
    outside = tmp_path / "outside.png"
    Image.new("RGB", (8, 8), (7, 7, 7)).save(outside)
    with Store() as store:
        paths = [Path(r["path"]) for r in store.iter_images()]
    for k, p in enumerate(paths):  # every image: replaced by a link leading out, emptied, or a huge header
        p.unlink()
        if k % 3 == 0:
            p.symlink_to(outside)
        elif k % 3 == 1:
            p.write_bytes(b"")
        else:
            p.write_bytes(_png_header(20_000, 20_000))
    at = app("ann")
    assert not at.exception and not at.error
    warning = at.warning[0].value
    assert "Image file missing or unreadable" in warning and "Mark it unsure to move on" in warning
    assert not inline_images(at)
    first = shown_image(at)
    button(at, "ann_unsure").click().run()
    assert shown_image(at) != first and "Image file missing or unreadable" in texts(at) and not at.error


def test_annotate_embeds_its_images_and_publishes_no_media_url(db):
    """st.image would put the bytes under /media/..., which Streamlit serves without asking who is signed in."""
    at = app("ann")
    assert not at.get("imgs") and [u[:22] for u in inline_images(at)] == ["data:image/png;base64,"]
    at.toggle(key="ann_grid_mode").set_value(True).run()
    assert not at.get("imgs") and len(inline_images(at)) == 12
    assert all(u.startswith("data:image/png;base64,") for u in inline_images(at))


def test_an_image_replaced_in_place_after_ingest_is_not_shown(db):
    with Store() as store:
        paths = [r["path"] for r in store.iter_images()]
    for k, p in enumerate(paths):  # same name, another valid image
        Image.new("RGB", (8, 8), (k, 0, 255)).save(p)
    at = app("ann")
    assert not inline_images(at) and "(changed since ingest" in at.warning[0].value


def test_short_admin_password_from_the_environment_is_refused_without_a_traceback(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("ANNOTATOR_DB", str(tmp_path / "state" / "annotator.db"))
    monkeypatch.setenv("ANNOTATOR_ADMIN_PASSWORD", "short")
    with caplog.at_level(logging.ERROR, logger="annotator.app"):
        at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception and not at.error and login_form(at)
    assert "not creating the lead 'admin'" in caplog.text
    with Store() as store:
        assert store.get_user("admin") is None
