"""Store queries for user accounts, server-side login sessions and login attempts.

User names compare by ``user_key`` (NFKC, then case-folded), so ``Admin`` and ``admin`` are one
account. A session row holds only the SHA-256 of its random token (``annotator.auth`` makes tokens);
changing a password or deactivating a user ends all of that user's sessions in the same transaction.
"""

import sqlite3
import time
import unicodedata
from typing import Any

from .base import ROLES, StoreBase, StoreError, UnknownUser, _choice

TOUCH_EVERY_S = 60  # a session's last_used is written at most this often (no write on every rerun)
ATTEMPTS_KEPT_S = 24 * 3600  # login attempts older than this are deleted


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
        """All users by name, without password hashes; ``sessions`` = their open login sessions."""
        return self._all("SELECT name, role, created_at, active, (SELECT COUNT(*) FROM sessions s"
                         " WHERE s.user = users.name AND s.expires_at > ?) AS sessions FROM users ORDER BY name",
                         [time.time()])

    def _update_user(self, name: str, column: str, value: Any, *, end_sessions: bool) -> None:
        with self._tx():
            if self.db.execute(f"UPDATE users SET {column} = ? WHERE name = ?", [value, name]).rowcount == 0:
                raise UnknownUser(f"unknown user {name!r}")
            if end_sessions:
                self.db.execute("DELETE FROM sessions WHERE user = ?", [name])

    def set_user_active(self, name: str, active: bool = True) -> None:
        """Enable or disable a login (disabling ends every session of the user); raises ``UnknownUser``."""
        self._update_user(name, "active", int(active), end_sessions=not active)

    def set_password_hash(self, name: str, password_hash: str) -> None:
        """Replace a user's password hash and end their sessions; raises ``UnknownUser``."""
        self._update_user(name, "password_hash", password_hash, end_sessions=True)

    def rehash_password(self, name: str, old_hash: str, new_hash: str) -> bool:
        """Store ``new_hash`` (the same password at today's cost, made at login) only while the stored hash is
        still ``old_hash``, so a password changed or reset meanwhile is never undone; sessions stay. True
        when replaced."""
        with self._tx():
            return self.db.execute("UPDATE users SET password_hash = ? WHERE name = ? AND password_hash = ?",
                                   [new_hash, name, old_hash]).rowcount > 0

    # -- sessions -----------------------------------------------------------------------
    def create_session(self, user: str, token_hash: str, *, lifetime: float, now: float | None = None) -> int:
        """Store a new session of ``user`` that ends ``lifetime`` seconds from now; returns its id."""
        now = time.time() if now is None else now
        with self._tx():
            if self._scalar("SELECT 1 FROM users WHERE name = ? AND active = 1", [user]) is None:
                raise UnknownUser(f"no active user {user!r}")
            cur = self.db.execute("INSERT INTO sessions (token_hash, user, created_at, last_used, expires_at)"
                                  " VALUES (?, ?, ?, ?, ?)", [token_hash, user, now, now, now + lifetime])
        return cur.lastrowid

    def session_by_hash(self, token_hash: str, *, idle: float, cap: float, now: float | None = None) -> dict | None:
        """The live session with this token hash: ``{"session_id", "user": user row without hash}``, or None.

        A session is live while now < expires_at, now < last_used + ``idle``, now < created_at + ``cap``
        and its user is active; a dead one is deleted. last_used moves at most every ``TOUCH_EVERY_S``.
        """
        now = time.time() if now is None else now
        row = self._one("SELECT s.id, s.user, s.created_at, s.last_used, s.expires_at, u.active FROM sessions s"
                        " JOIN users u ON u.name = s.user WHERE s.token_hash = ?", [token_hash])
        if row is None:
            return None
        if not row["active"] or now >= min(row["expires_at"], row["last_used"] + idle, row["created_at"] + cap):
            self.end_session(row["id"])
            return None
        if now - row["last_used"] >= TOUCH_EVERY_S:
            with self._tx():
                self.db.execute("UPDATE sessions SET last_used = ? WHERE id = ?", [now, row["id"]])
        user = self._one("SELECT name, role, created_at, active FROM users WHERE name = ?", [row["user"]])
        return {"session_id": row["id"], "user": user}

    def end_session(self, session_id: int) -> bool:
        """Delete one session (logout); True if it existed."""
        with self._tx():
            return self.db.execute("DELETE FROM sessions WHERE id = ?", [session_id]).rowcount > 0

    def end_sessions(self, user: str) -> int:
        """Sign ``user`` out everywhere: delete all their sessions; returns how many."""
        with self._tx():
            return self.db.execute("DELETE FROM sessions WHERE user = ?", [user]).rowcount

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
