"""Login throttling (annotator.auth.throttle_wait) on a real SQLite file: locks hold back the clients that
failed, never the right password from elsewhere or from a browser that logged in before; a password reset lifts
a name's throttle; a name that is no user is recorded only as a short hash. The form's message: test_security."""
import logging
import time

import pytest

from annotator import auth

from helpers import ADMIN_PW

pytestmark = pytest.mark.usefixtures("users")  # `store` holds the lead 'admin' and the annotator 'ann' (conftest.py)


def test_throttling_per_user_name(store, caplog):
    t = time.time()  # after the users' passwords were set: failures before that do not count
    assert auth.authenticate(store, "admin", "wrong-password", now=t) is None  # recorded as a failure
    assert store.login_failures(since=t - 1, user_key="admin") == (1, t)
    for k in range(1, auth.FREE_TRIES_USER):
        store.record_login("admin", "", False, now=t + k)
    with caplog.at_level(logging.WARNING, logger="annotator.auth"):
        with pytest.raises(auth.LoginThrottled) as e:  # even the right password waits, from this client
            auth.authenticate(store, "ADMIN", ADMIN_PW, now=t + 10)
    assert 0 < e.value.wait_s <= auth.LOCK_BASE_S and "Try again in" in str(e.value)
    assert "login throttled for 'admin'" in caplog.text
    assert auth.authenticate(store, "ann", "ann-password", now=t + 10)  # other names are not locked
    assert auth.authenticate(store, "admin", ADMIN_PW, now=t + 10 + auth.LOCK_BASE_S)  # after the wait
    for k in range(auth.FREE_TRIES_USER + 2):  # the counter restarted at the success; the delay grows
        store.record_login("admin", "", False, now=t + 100 + k)
    with pytest.raises(auth.LoginThrottled) as e:
        auth.authenticate(store, "admin", ADMIN_PW, now=t + 100 + auth.FREE_TRIES_USER + 2)
    assert e.value.wait_s > 2 * auth.LOCK_BASE_S


def test_throttling_per_client_holds_back_its_guesses_not_the_right_password_of_another_name(store):
    t = time.time()  # after the users' passwords were set: failures before that do not count
    for k in range(auth.FREE_TRIES_CLIENT):  # many names tried from one address
        store.record_login(auth.unknown_key(f"guess{k}"), "10.0.0.9", False, now=t + k)
    assert auth.authenticate(store, "ann", "wrong-password", client="10.0.0.9", now=t + 30) is None  # one try
    with pytest.raises(auth.LoginThrottled):  # then this address waits on ann too
        auth.authenticate(store, "ann", "ann-password", client="10.0.0.9", now=t + 31)
    assert auth.authenticate(store, "ann", "ann-password", client="10.0.0.8", now=t + 31)
    with pytest.raises(auth.LoginThrottled):
        auth.authenticate(store, "guess3", "whatever-pw", client="10.0.0.9", now=t + 32)
    assert auth.authenticate(store, "admin", ADMIN_PW, client="10.0.0.9", now=t + 32)  # no failure on admin here


def test_the_right_password_logs_in_during_a_lock_someone_else_drove(store):
    """A stranger hammers ann's name from other addresses: ann still gets in from hers."""
    t = time.time()  # after the users' passwords were set: failures before that do not count
    for k in range(3 * auth.FREE_TRIES_NAME):
        store.record_login("ann", f"203.0.113.{k % 7}", False, now=t + k)
    with pytest.raises(auth.LoginThrottled):  # the stranger's addresses wait
        auth.authenticate(store, "ann", "guess-again", client="203.0.113.1", now=t + 100)
    assert auth.authenticate(store, "ann", "wrong-once", client="198.51.100.4", now=t + 100) is None
    with pytest.raises(auth.LoginThrottled):  # a new address gets one try while the name is under attack
        auth.authenticate(store, "ann", "ann-password", client="198.51.100.4", now=t + 101)
    assert auth.authenticate(store, "ann", "ann-password", client="192.0.2.10", now=t + 101)["name"] == "ann"


def test_behind_one_address_a_browser_that_logged_in_before_is_not_kept_out(store):
    """Everyone shares one address (a proxy nobody named as trusted): a stranger's failures on ann's name lock
    that address, but not the browser ann logged in from before."""
    t = time.time()  # after the users' passwords were set: failures before that do not count
    mine, strangers = auth.new_browser_id(), auth.new_browser_id()
    assert auth.authenticate(store, "ann", "ann-password", client="local", browser=mine, now=t)
    for k in range(2 * auth.FREE_TRIES_USER):
        store.record_login("ann", "local", False, now=t + 1 + k)
    with pytest.raises(auth.LoginThrottled):
        auth.authenticate(store, "ann", "ann-password", client="local", browser=strangers, now=t + 20)
    assert auth.authenticate(store, "ann", "ann-password", client="local", browser=mine, now=t + 20)
    for k in range(auth.FREE_TRIES_USER):  # the known browser's own failures still count
        auth.authenticate(store, "ann", f"typo-{k:06d}", client="local", browser=mine, now=t + 30 + k)
    with pytest.raises(auth.LoginThrottled):
        auth.authenticate(store, "ann", "ann-password", client="local", browser=mine, now=t + 40)


def test_a_password_reset_lifts_the_throttle_of_the_name(store):
    for _ in range(auth.FREE_TRIES_NAME + 2):
        store.record_login("ann", "local", False)
    with pytest.raises(auth.LoginThrottled):
        auth.authenticate(store, "ann", "ann-password", client="local")
    password = auth.set_password(store, "ann")  # a lead's reset
    assert auth.authenticate(store, "ann", password, client="local")["name"] == "ann"


def test_a_failed_login_under_a_name_that_is_no_user_is_kept_only_as_a_short_hash(store, caplog):
    secret = "correct-horse-battery"  # a password typed into the name field
    with caplog.at_level(logging.INFO, logger="annotator.auth"):
        assert auth.authenticate(store, secret, "", client="local") is None
        assert auth.authenticate(store, "ann", "wrong-password", client="local") is None
    keys = [r["user_key"] for r in store._all("SELECT user_key FROM login_attempts ORDER BY id")]
    assert keys == [auth.unknown_key(secret), "ann"] and len(keys[0]) == 5
    assert secret not in caplog.text and "failed login for an unknown user name" in caplog.text
    assert "failed login for 'ann'" in caplog.text
    for k in range(auth.FREE_TRIES_USER):  # repeated tries of one unknown name are throttled like a real one
        auth.authenticate(store, "nobody", "whatever-pw", client="local")
    with pytest.raises(auth.LoginThrottled):
        auth.authenticate(store, "nobody", "whatever-pw", client="local")
