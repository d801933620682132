"""Store accounts: every method that takes a user name matches it as ``get_user`` does, one rule decides
which sessions are live (checked, counted, pruned), and ending a user's sessions releases their leases."""
import time

import pytest

from annotator import auth
from annotator.auth import SESSION_IDLE_S, SESSION_MAX_S
from annotator.store import UnknownUser


pytestmark = pytest.mark.usefixtures("users")  # `store` holds the lead 'admin' and the annotator 'ann' (conftest.py)


def sessions(store) -> list[tuple[str, float]]:
    return [(r["user"], r["created_at"]) for r in store._all("SELECT user, created_at FROM sessions ORDER BY id")]


def add_images(store, n: int) -> list[int]:
    cid = store.ensure_classes(["cat", "dog"])["cat"]
    store.add_images([{"path": f"/cat/{k}.jpg", "hash": f"h{k}", "label_id": cid} for k in range(n)])
    return [r["id"] for r in store.iter_images()]


def test_every_name_lookup_matches_as_get_user_does(store):
    (img,) = add_images(store, 1)
    auth.start_session(store, store.get_user("ann"))
    assert store.end_sessions("ANN") == 1 and sessions(store) == []
    store.set_user_active("\uff21nn", False)  # a full-width A
    assert not store.get_user("ann")["active"]
    store.set_user_active(" Ann ", True)
    auth.set_password(store, "ANN", "a-new-password")
    assert auth.authenticate(store, "ann", "a-new-password")
    assert store.create_session("ANN", "hash-1") and sessions(store)[0][0] == "ann"  # stored by its own name
    store.record_verdict(img, "ann", "correct", reason="audit")
    vid = store.override_verdict(img, "ADMIN", "wrong", corrected_label="dog")
    assert store.get_verdict(vid)["annotator"] == "admin"
    with pytest.raises(UnknownUser):
        store.set_user_active("zed", False)
    assert store.end_sessions("zed") == 0


def test_the_user_list_counts_only_sessions_still_accepted(store):
    now = time.time()
    ann, admin = store.get_user("ann"), store.get_user("admin")
    idle = auth.start_session(store, ann, now=now - SESSION_IDLE_S - 1)  # not used for longer than the idle time
    capped = auth.start_session(store, ann, now=now - SESSION_MAX_S - 1)
    store.db.execute("UPDATE sessions SET last_used = ?, expires_at = ? WHERE id = ?",
                     [now - 60, now + 3600, capped.session_id])  # used a minute ago, but past the cap
    live = auth.start_session(store, admin, now=now)
    assert {u["name"]: u["sessions"] for u in store.list_users()} == {"admin": 1, "ann": 0}
    assert auth.resume_session(store, idle.token, now=now) is None
    assert auth.resume_session(store, capped.token, now=now) is None
    assert auth.resume_session(store, live.token, now=now)


def test_a_login_prunes_dead_sessions_in_bounded_steps(store, monkeypatch):
    now = time.time()
    ann = store.get_user("ann")
    for k in range(5):
        auth.start_session(store, ann, now=now - SESSION_MAX_S - k)  # dead by now, never presented again
    kept = auth.start_session(store, ann, now=now - 60)
    assert sessions(store) == [("ann", now - 60)]  # this login pruned the five dead ones
    monkeypatch.setattr("annotator.store.accounts.PRUNE_SESSIONS", 2)
    for k in range(5):
        store.create_session("ann", f"dead-{k}", now=now - SESSION_MAX_S - k)
    auth.start_session(store, store.get_user("admin"), now=now)
    assert len(sessions(store)) == 1 + 3 + 1  # the live one, three of the dead ones (two pruned), the new one
    assert auth.resume_session(store, kept.token, now=now)


def test_ending_a_users_sessions_releases_their_leases(store):
    ids = add_images(store, 6)
    for end in (lambda: store.end_sessions("ann"), lambda: store.set_user_active("ann", False),
                lambda: auth.set_password(store, "ann", "another-password")):
        store.set_user_active("ann", True)
        store.acquire_leases("ann", ids[:3], 600)
        store.acquire_leases("admin", ids[3:], 600)
        end()
        assert store.leased_to("ann") == [] and store.leased_to("admin") == ids[3:]
