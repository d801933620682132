"""Accounts: user names, passwords (scrypt, stdlib), login throttling and server-side sessions.

The app's login and the CLI's ``users`` commands both come here; SQL stays in ``annotator.store``.

- User names are NFKC-normalised, 1-64 characters, compare case-insensitively (``store.user_key``:
  ``Admin`` is ``admin``) and follow ``names.user_name_problem``: letters of one script and digits, no
  invisible or look-alike characters; a name that looks like an existing one is refused by the store.
- Passwords: at least ``MIN_PASSWORD`` characters; stored as scrypt hashes (cost below). A hash made
  with a lower cost is replaced at the user's next successful login.
- Login throttling (``throttle_wait``): failures count within ``WINDOW_S``, for a name only since its last
  successful login or password change. A client (its address) may fail ``FREE_TRIES_USER`` times on one
  name; past that, or once the name has ``FREE_TRIES_NAME`` failures from all clients, or the client
  ``FREE_TRIES_CLIENT`` on all names, each further try must wait ``LOCK_BASE_S``, doubling per failure up
  to ``LOCK_MAX_S``. A lock holds back only a client that has itself failed on that name, and never a
  browser that logged in as that name since its password was set and has not failed since: failures by
  someone else (another address, or a stranger behind the same proxy) never keep the right password out.
  Unknown names cost the same scrypt work, and are recorded only as a 16-bit hash (``unknown_key``): a
  password typed into the name field is never stored or logged.
- Sessions: a random 256-bit token; the store keeps only its SHA-256, and the SHA-256 of the id of the
  browser it was started in (``started_in``). A session ends on logout, password change or reset,
  deactivation, a lead's "sign out everywhere", after ``SESSION_IDLE_S`` without use, and at the latest
  ``SESSION_MAX_S`` after login. Session ids are never reused.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
import unicodedata
from dataclasses import dataclass

from .names import user_name_problem
from .store import SESSION_IDLE_S, SESSION_MAX_S, Store, user_key  # noqa: F401  (the store applies the session rule)

log = logging.getLogger(__name__)

# scrypt cost n=2**17, r=8, p=1 (128 MiB): OWASP's current minimum for scrypt password storage.
_N, _R, _P, _DKLEN = 2 ** 17, 8, 1, 32
_MAXMEM = 256 * 2 ** 20  # hashlib's default limit (32 MiB) is below 128 * r * n
MIN_PASSWORD = 10  # characters; generated passwords have 16
MAX_PASSWORD = 1024
ADMIN = "admin"

FREE_TRIES_USER = 5  # failed logins of one client on one user name before the lockout starts
FREE_TRIES_NAME = 10  # failed logins on one user name from all clients before the lockout starts
FREE_TRIES_CLIENT = 20  # failed logins per client address (any names) before the lockout starts
WINDOW_S = 3600  # failures older than this are forgotten
LOCK_BASE_S = 30  # first lockout; doubles with every further failure
LOCK_MAX_S = 900

_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32): session tokens and browser ids
BROWSER_COOKIE = "annotator_browser"  # the cookie holding a browser's id (new_browser_id)


class BadName(ValueError):
    """A user name that is empty, too long, or has characters ``names.user_name_problem`` refuses."""


class WeakPassword(ValueError):
    """A password shorter than ``MIN_PASSWORD`` (or longer than ``MAX_PASSWORD``)."""


class LoginThrottled(Exception):
    """Too many failed logins for this user name or client; ``wait_s`` until the next try."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        super().__init__(f"Too many failed logins. Try again in {max(1, round(wait_s))} s.")


# -- names and passwords ----------------------------------------------------------------
def normalise_name(name: str) -> str:
    """NFKC form of a user name, stripped; raises ``BadName``."""
    name = unicodedata.normalize("NFKC", name or "").strip()
    if not 1 <= len(name) <= 64:
        raise BadName("user names are 1-64 characters")
    problem = user_name_problem(name)
    if problem:
        raise BadName(problem)
    return name


def check_password(password: str) -> str:
    """``password`` if it is long enough; raises ``WeakPassword``."""
    if not password or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise WeakPassword(f"passwords are {MIN_PASSWORD}-{MAX_PASSWORD} characters")
    return password


def hash_password(password: str) -> str:
    """-> 'scrypt$n$r$p$salt_hex$hash_hex'."""
    check_password(password)
    salt = os.urandom(16)
    dk = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=_MAXMEM, dklen=_DKLEN)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${dk.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of `password` against a `hash_password` string; False for malformed input."""
    try:
        algo, n, r, p, salt, want = stored.split("$")
        if algo != "scrypt" or int(n) > _N or int(r) > _R or int(p) > _P:  # no cost above ours (memory bomb)
            return False
        dk = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                            maxmem=_MAXMEM, dklen=len(want) // 2)
    except (ValueError, TypeError, MemoryError):
        return False
    return hmac.compare_digest(dk.hex(), want)


def needs_rehash(stored: str) -> bool:
    """True when ``stored`` was made with another cost than today's."""
    return not stored.startswith(f"scrypt${_N}${_R}${_P}$")


@functools.lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """A hash of a random password: unknown names are checked against it, so they cost the same work."""
    return hash_password(secrets.token_urlsafe(16))


# -- users ------------------------------------------------------------------------------
def add_user(store: Store, name: str, role: str, password: str | None = None) -> str:
    """Create a user; a missing password is generated. Returns the password (show it once).

    Raises ``BadName``, ``WeakPassword``, ``StoreError`` (the name, compared case-insensitively, exists).
    """
    name = normalise_name(name)
    password = check_password(password) if password is not None else secrets.token_urlsafe(12)
    store.add_user(name, role, hash_password(password))
    return password


def set_password(store: Store, name: str, password: str | None = None) -> str:
    """Change (or, without ``password``, reset to a generated one) a user's password; every session of the
    user ends and their leases are released. Returns the password."""
    password = check_password(password) if password is not None else secrets.token_urlsafe(12)
    store.set_password_hash(name, hash_password(password))
    return password


def unknown_key(key: str) -> str:
    """How a login attempt under a name that is no user is recorded: a 16-bit hash of its key, enough to
    throttle repeated tries of one name, too little to recover a password typed into the name field."""
    return "?" + hashlib.sha256(key.encode()).hexdigest()[:4]


def _lock(failures: int, last: float | None, free: int, now: float) -> float:
    """Seconds to wait after ``failures`` (the last at ``last``) where ``free`` are allowed."""
    if failures < free or last is None:
        return 0.0
    return max(0.0, last + min(LOCK_BASE_S * 2 ** (failures - free), LOCK_MAX_S) - now)


def throttle_wait(store: Store, key: str, client: str, browser_hash: str | None, *, password_set_at: float,
                  now: float) -> float:
    """Seconds the login attempt on the recorded name ``key`` from ``client`` (and the browser ``browser_hash``)
    must wait; 0 = check it now. The rules are in the module docstring."""
    window = now - WINDOW_S
    since = max(window, store.last_login(key) or 0.0, password_set_at)  # a name's failures restart here
    if browser_hash and store.browser_logged_in(key, browser_hash, password_set_at):
        failures, last = store.login_failures(since=since, user_key=key, browser_hash=browser_hash)
        return _lock(failures, last, FREE_TRIES_USER, now)  # a known browser: only its own failures count
    mine, last_mine = store.login_failures(since=since, user_key=key, client=client)
    if mine == 0:
        return 0.0  # this client has not failed on this name: nobody else's failures keep it out
    name, last_name = store.login_failures(since=since, user_key=key)
    everywhere, last_everywhere = store.login_failures(since=window, client=client)
    return max(_lock(mine, last_mine, FREE_TRIES_USER, now), _lock(name, last_name, FREE_TRIES_NAME, now),
               _lock(everywhere, last_everywhere, FREE_TRIES_CLIENT, now))


def authenticate(store: Store, name: str, password: str, *, client: str = "", browser: str | None = None,
                 now: float | None = None) -> dict | None:
    """The user row (without its hash) when name/password match an active user, else None.

    ``client`` is the address the attempt came from, ``browser`` the browser's id (``new_browser_id``) if it
    has one. Raises ``LoginThrottled`` (nothing checked) while ``throttle_wait`` says so. Every attempt is
    recorded (a name that is no user only as ``unknown_key``); a correct password stored with an older
    scrypt cost is rehashed.
    """
    now = time.time() if now is None else now
    user = store.get_user(name) if name else None
    key = user_key(user["name"]) if user else unknown_key(user_key(name or ""))
    shown = repr(user["name"]) if user else "an unknown user name"  # never log what was typed for a non-user
    browser_hash = _token_hash(browser) if is_browser_id(browser) else None
    wait = throttle_wait(store, key, client, browser_hash, password_set_at=(user or {}).get("password_set_at") or 0.0,
                         now=now)
    if wait > 0:
        log.warning("login throttled for %s from %s (%.0f s left)", shown, client or "?", wait)
        raise LoginThrottled(wait)
    ok = verify_password(password or "", user["password_hash"] if user else _dummy_hash())
    ok = ok and user is not None and bool(user["active"])
    store.record_login(key, client, ok, browser_hash=browser_hash, now=now)
    if not ok:
        log.warning("failed login for %s from %s", shown, client or "?")
        return None
    if needs_rehash(user["password_hash"]) and store.rehash_password(user["name"], user["password_hash"],
                                                                       hash_password(password)):
        log.info("rehashed the password of %s with the current scrypt cost", user["name"])
    return {k: v for k, v in user.items() if k != "password_hash"}


@dataclass(frozen=True)
class NewAdmin:
    password: str
    from_environment: bool  # the password is $ANNOTATOR_ADMIN_PASSWORD: never print it


def ensure_admin(store: Store) -> NewAdmin | None:
    """Create the lead 'admin' on first start, while the database has no lead at all (so a page load never adds a
    second lead beside the ones a project has). Password: $ANNOTATOR_ADMIN_PASSWORD, else generated.

    Returns the new account (print a generated password once; never the environment's), None when a lead exists.
    """
    if any(u["role"] == "lead" for u in store.list_users()):
        return None
    from_environment = os.environ.get("ANNOTATOR_ADMIN_PASSWORD")
    return NewAdmin(add_user(store, ADMIN, "lead", from_environment), from_environment is not None)


# -- sessions ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Session:
    token: str  # goes to the browser (URL); the store keeps only its SHA-256
    session_id: int
    user: dict  # user row without the password hash
    browser_hash: str | None = None  # SHA-256 of the browser id (cookie) the session was started in


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_browser_id() -> str:
    """A random id for a browser that has none yet (the app keeps it in the ``BROWSER_COOKIE`` cookie)."""
    return secrets.token_urlsafe(32)


def is_browser_id(value: object) -> bool:
    """True for a value ``new_browser_id`` could have made (anything else in the cookie is ignored)."""
    return isinstance(value, str) and _TOKEN.fullmatch(value) is not None


def start_session(store: Store, user: dict, *, browser: str | None = None, now: float | None = None) -> Session:
    """A new session for ``user`` (a row from ``authenticate``), started in the browser with id ``browser``."""
    token = secrets.token_urlsafe(32)
    browser_hash = _token_hash(browser) if is_browser_id(browser) else None
    sid = store.create_session(user["name"], _token_hash(token), browser_hash=browser_hash, now=now)
    return Session(token, sid, user, browser_hash)


def resume_session(store: Store, token: object, *, now: float | None = None) -> Session | None:
    """The live session a token belongs to, else None (also for anything that is not a token string)."""
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        return None
    found = store.session_by_hash(_token_hash(token), now=now)
    return Session(token, found["session_id"], found["user"], found["browser_hash"]) if found else None


def started_in(session: Session, browser: object) -> bool:
    """True when ``browser`` (the id cookie a request came with) is the browser ``session`` was started in.

    A token from a link is honoured only then: a link carrying someone's session (sent to a victim, or copied
    out of an address bar) does not sign in another browser."""
    return (session.browser_hash is not None and is_browser_id(browser)
            and hmac.compare_digest(session.browser_hash, _token_hash(browser)))
