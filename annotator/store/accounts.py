"""Store queries for user accounts, server-side login sessions and login attempts.

User names compare by ``user_key`` (NFKC, then case-folded), so ``Admin`` and ``admin`` are one
account. A session row holds only the SHA-256 of its random token (``annotator.auth`` makes tokens);
changing a password or deactivating a user ends all of that user's sessions, and releases their leases, in the
same transaction. Every method that takes a user name finds the user as ``get_user`` does.

A session is live while it is younger than ``SESSION_MAX_S``, used within the last ``SESSION_IDLE_S`` and before
its ``expires_at`` (``_LIVE_SESSION``, the one rule for checking, counting and pruning sessions).
"""

import sqlite3
import time
import unicodedata
from typing import Any

from ..names import skeleton
from .base import ROLES, StoreBase, StoreError, UnknownUser, _choice

TOUCH_EVERY_S = 60  # a session's last_used is written at most this often (no write on every rerun)
ATTEMPTS_KEPT_S = 24 * 3600  # failed login attempts older than this are deleted
LOGINS_KEPT_S = 30 * 86400  # successful ones are kept this long: the browsers a user logged in from
SESSION_IDLE_S = 30 * 60  # a session unused this long ends
SESSION_MAX_S = 12 * 3600  # and every session ends this long after login, however it is used
PRUNE_SESSIONS = 100  # dead sessions deleted at most per login (each login adds one row)
# sessions s still accepted at :now (a dead one is refused, and deleted when seen)
_LIVE_SESSION = (f":now < s.expires_at AND :now < s.last_used + {SESSION_IDLE_S}"
                 f" AND :now < s.created_at + {SESSION_MAX_S}")


def user_key(name: str) -> str:
    """The comparison form of a user name: NFKC-normalised, stripped, case-folded."""
    return unicodedata.normalize("NFKC", name).strip().casefold()


class AccountsMixin(StoreBase):
    """Users, login sessions and login attempts."""

    # -- users --------------------------------------------------------------------------
    def add_user(self, name: str, role: str, password_hash: str) -> None:
        """Create a user; raises ``StoreError`` if the name (compared by ``user_key``) exists or looks like an
        existing one (``names.skeleton``), ``ValueError`` for a bad role."""
        _choice(role, ROLES, "role")
        try:
            with self._tx():
                if self._user_row(name) is not None:
                    raise StoreError(f"user {name!r} already exists")
                if any(skeleton(r["name"]) == skeleton(name) for r in self.db.query("SELECT name FROM users")):
                    raise StoreError(f"user name {name!r} looks like an existing user's name")
                now = time.time()
                self.db.execute("INSERT INTO users (name, role, password_hash, created_at, password_set_at)"
                                " VALUES (?, ?, ?, ?, ?)", [name, role, password_hash, now, now])
        except sqlite3.IntegrityError as e:
            raise StoreError(f"user {name!r} already exists") from e

    def _user_row(self, name: str) -> dict | None:
        """The user whose name matches ``name`` by ``user_key``: every lookup by name goes through here."""
        row = self._one("SELECT * FROM users WHERE name = ?", [name])
        if row is None:  # the table is small: compare the keys in Python (SQLite folds ASCII only)
            key = user_key(name)
            row = next((r for r in self.db.query("SELECT * FROM users ORDER BY created_at")
                        if user_key(r["name"]) == key), None)
        return row

    def get_user(self, name: str) -> dict | None:
        """The user row (password_hash included) whose name matches ``name`` by ``user_key``, or None."""
        return self._user_row(name)

    def list_users(self) -> list[dict]:
        """All users by name, without password hashes; ``sessions`` = their live login sessions."""
        return self._all("SELECT name, role, created_at, active, (SELECT COUNT(*) FROM sessions s"
                         f" WHERE s.user = users.name AND {_LIVE_SESSION}) AS sessions FROM users ORDER BY name",
                         {"now": time.time()})

    def _update_user(self, name: str, values: dict[str, Any], *, end_sessions: bool) -> None:
        with self._tx():
            row = self._user_row(name)
            if row is None:
                raise UnknownUser(f"unknown user {name!r}")
            self.db.execute(f"UPDATE users SET {', '.join(f'{c} = ?' for c in values)} WHERE name = ?",
                            [*values.values(), row["name"]])
            if end_sessions:
                self._end_all(row["name"])

    def _end_all(self, name: str) -> int:
        """Delete every session of the user stored as ``name`` and release their leases (no session is left to
        use them, as at logout); returns the sessions deleted."""
        self.db.execute("DELETE FROM leases WHERE annotator = ?", [name])
        return self.db.execute("DELETE FROM sessions WHERE user = ?", [name]).rowcount

    def set_user_active(self, name: str, active: bool = True) -> None:
        """Enable or disable a login (disabling ends every session of the user and releases their leases);
        raises ``UnknownUser``."""
        self._update_user(name, {"active": int(active)}, end_sessions=not active)

    def set_password_hash(self, name: str, password_hash: str) -> None:
        """Replace a user's password hash (``password_set_at`` = now: earlier failed logins stop counting), end
        their sessions and release their leases; raises ``UnknownUser``."""
        self._update_user(name, {"password_hash": password_hash, "password_set_at": time.time()}, end_sessions=True)

    def rehash_password(self, name: str, old_hash: str, new_hash: str) -> bool:
        """Store ``new_hash`` (the same password at today's cost, made at login) only while the stored hash is
        still ``old_hash``, so a password changed or reset meanwhile is never undone; sessions stay. True
        when replaced."""
        with self._tx():
            row = self._user_row(name)
            return row is not None and self.db.execute(
                "UPDATE users SET password_hash = ? WHERE name = ? AND password_hash = ?",
                [new_hash, row["name"], old_hash]).rowcount > 0

    # -- sessions -----------------------------------------------------------------------
    def create_session(self, user: str, token_hash: str, *, browser_hash: str | None = None,
                       now: float | None = None) -> int:
        """Store a new session of ``user`` (ending ``SESSION_MAX_S`` from now), started in the browser whose
        cookie hashes to ``browser_hash``; returns its id, never one an earlier session had. In the same
        transaction up to ``PRUNE_SESSIONS`` dead sessions (of anyone) are deleted, so the table does not grow
        by a row per login. Raises ``UnknownUser`` unless ``user`` is an active user."""
        now = time.time() if now is None else now
        with self._tx():
            row = self._user_row(user)
            if row is None or not row["active"]:
                raise UnknownUser(f"no active user {user!r}")
            self.db.execute(f"DELETE FROM sessions WHERE id IN (SELECT id FROM sessions s WHERE NOT ({_LIVE_SESSION})"
                            " LIMIT :limit)", {"now": now, "limit": PRUNE_SESSIONS})
            cur = self.db.execute("INSERT INTO sessions (token_hash, user, created_at, last_used, expires_at,"
                                  " browser_hash) VALUES (?, ?, ?, ?, ?, ?)",
                                  [token_hash, row["name"], now, now, now + SESSION_MAX_S, browser_hash])
        return cur.lastrowid

    def session_by_hash(self, token_hash: str, *, now: float | None = None) -> dict | None:
        """The live session with this token hash: ``{"session_id", "browser_hash", "user": user row without
        password hash}``, or None.

        A session is live by ``_LIVE_SESSION`` while its user is active; a dead one is deleted. last_used
        moves at most every ``TOUCH_EVERY_S``.
        """
        now = time.time() if now is None else now
        row = self._one(f"SELECT s.id, s.last_used, s.browser_hash, u.active AND {_LIVE_SESSION} AS live,"
                        " u.name AS user FROM sessions s JOIN users u ON u.name = s.user WHERE s.token_hash = :hash",
                        {"now": now, "hash": token_hash})
        if row is None:
            return None
        if not row["live"]:
            self.end_session(row["id"])
            return None
        if now - row["last_used"] >= TOUCH_EVERY_S:
            with self._tx():
                self.db.execute("UPDATE sessions SET last_used = ? WHERE id = ?", [now, row["id"]])
        user = self._one("SELECT name, role, created_at, active FROM users WHERE name = ?", [row["user"]])
        return {"session_id": row["id"], "browser_hash": row["browser_hash"], "user": user}

    def end_session(self, session_id: int) -> bool:
        """Delete one session (logout); True if it existed."""
        with self._tx():
            return self.db.execute("DELETE FROM sessions WHERE id = ?", [session_id]).rowcount > 0

    def end_sessions(self, user: str) -> int:
        """Sign ``user`` out everywhere: delete all their sessions and release their leases; returns how many
        sessions ended (0 for an unknown user)."""
        with self._tx():
            row = self._user_row(user)
            return 0 if row is None else self._end_all(row["name"])

    # -- login attempts -----------------------------------------------------------------
    def record_login(self, key: str, client: str, ok: bool, *, browser_hash: str | None = None,
                     now: float | None = None) -> None:
        """Log one login attempt for the name key ``key`` from ``client`` (and the browser whose id hashes to
        ``browser_hash``); failures older than ``ATTEMPTS_KEPT_S`` and successes older than ``LOGINS_KEPT_S``
        are pruned."""
        now = time.time() if now is None else now
        with self._tx():
            self.db.execute("INSERT INTO login_attempts (user_key, client, ok, at, browser_hash)"
                            " VALUES (?, ?, ?, ?, ?)", [key, client, int(ok), now, browser_hash])
            self.db.execute("DELETE FROM login_attempts WHERE at < ? AND (ok = 0 OR at < ?)",
                            [now - ATTEMPTS_KEPT_S, now - LOGINS_KEPT_S])

    def login_failures(self, *, since: float, user_key: str | None = None, client: str | None = None,
                       browser_hash: str | None = None) -> tuple[int, float | None]:
        """(failed attempts, time of the last one) at or after ``since`` that match every field given."""
        fields = {"user_key": user_key, "client": client, "browser_hash": browser_hash}
        where = "".join(f" AND {column} = :{column}" for column, value in fields.items() if value is not None)
        row = self._one("SELECT COUNT(*) AS n, MAX(at) AS last FROM login_attempts"
                        f" WHERE ok = 0 AND at >= :since{where}", {"since": since, **fields})
        return row["n"], row["last"]

    def last_login(self, key: str) -> float | None:
        """When the name key ``key`` last logged in successfully (None: not within ``LOGINS_KEPT_S``)."""
        return self._scalar("SELECT MAX(at) FROM login_attempts WHERE user_key = ? AND ok = 1", [key])

    def browser_logged_in(self, key: str, browser_hash: str, since: float) -> bool:
        """True when the browser whose id hashes to ``browser_hash`` logged in as ``key`` at or after ``since``."""
        return self._scalar("SELECT EXISTS (SELECT 1 FROM login_attempts WHERE browser_hash = ? AND user_key = ?"
                            " AND ok = 1 AND at >= ?)", [browser_hash, key, since]) == 1
