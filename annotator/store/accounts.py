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

from .base import ROLES, StoreBase, StoreError, UnknownUser, _choice

TOUCH_EVERY_S = 60  # a session's last_used is written at most this often (no write on every rerun)
ATTEMPTS_KEPT_S = 24 * 3600  # login attempts older than this are deleted
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
        """Create a user; raises ``StoreError`` if the name (compared by ``user_key``) exists,
        ``ValueError`` for a bad role."""
        _choice(role, ROLES, "role")
        try:
            with self._tx():
                if self._user_row(name) is not None:
                    raise StoreError(f"user {name!r} already exists")
                self.db.execute("INSERT INTO users (name, role, password_hash, created_at) VALUES (?, ?, ?, ?)",
                                [name, role, password_hash, time.time()])
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

    def _update_user(self, name: str, column: str, value: Any, *, end_sessions: bool) -> None:
        with self._tx():
            row = self._user_row(name)
            if row is None:
                raise UnknownUser(f"unknown user {name!r}")
            self.db.execute(f"UPDATE users SET {column} = ? WHERE name = ?", [value, row["name"]])
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
        self._update_user(name, "active", int(active), end_sessions=not active)

    def set_password_hash(self, name: str, password_hash: str) -> None:
        """Replace a user's password hash, end their sessions and release their leases; raises ``UnknownUser``."""
        self._update_user(name, "password_hash", password_hash, end_sessions=True)

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
    def record_login(self, key: str, client: str, ok: bool, *, now: float | None = None) -> None:
        """Log one login attempt for the name key ``key`` from ``client``; old attempts are pruned."""
        now = time.time() if now is None else now
        with self._tx():
            self.db.execute("INSERT INTO login_attempts (user_key, client, ok, at) VALUES (?, ?, ?, ?)",
                            [key, client, int(ok), now])
            self.db.execute("DELETE FROM login_attempts WHERE at < ?", [now - ATTEMPTS_KEPT_S])

    def login_failures(self, column: str, value: str, since: float) -> tuple[int, float | None]:
        """(failed attempts, time of the last one) for ``column`` ('user_key' or 'client') = ``value`` since
        ``since``; for a user name only those after its last successful login (a client's failures on
        several names do not reset when one of them succeeds)."""
        if column not in ("user_key", "client"):
            raise ValueError(f"unknown column {column!r}")
        reset = (" AND at > COALESCE((SELECT MAX(at) FROM login_attempts WHERE user_key = ? AND ok = 1), 0)"
                 if column == "user_key" else "")
        row = self._one(f"SELECT COUNT(*) AS n, MAX(at) AS last FROM login_attempts WHERE {column} = ? AND ok = 0"
                        f" AND at >= ?{reset}", [value, since] + ([value] if reset else []))
        return row["n"], row["last"]
