"""Connection, pragmas, transactions and migrations of the store, plus its named errors and constants.

Usage: one ``Store`` per thread or process (opening one is cheap; never share a Store or
its connection between threads, e.g. through ``st.cache_resource``)::

    store = Store()                      # default_db_path(), migrates on open
    store.ensure_classes(["cat", "dog"])

The database file (and its WAL/SHM) is created 0600 in a 0700 folder: it holds password hashes
and session hashes. The database runs in WAL mode with a 30 s busy timeout, so the app's sessions and the
worker can write concurrently. Every write goes through ``StoreBase._tx()``: ``BEGIN
IMMEDIATE`` takes the write lock up front, so a read-then-write (leases!) is atomic and
never fails with "database is locked" halfway; nested calls become ``db.atomic()``
savepoints. A writer waiting for the lock tries again every millisecond (``_begin``), so it gets in
between a publisher's short transactions. Timestamps are ``time.time()`` floats (Unix seconds). Reads run outside any
transaction (autocommit); long reads page by id so no snapshot stays open.
"""

import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from .schema import MIGRATIONS, SCHEMA_VERSION


def _sqlite_utils_database() -> type:
    """``sqlite_utils.Database``, imported without pandas and numpy when they are not loaded yet.

    sqlite-utils imports pandas and numpy, when installed, only to map their scalar types to column types
    for ``Table.insert``, which the store never calls (it writes SQL with Python values). Those imports
    would be most of every CLI command's start-up (0.5-1.4 s on 2 cores; benchmarks/cli_startup.py). While
    sqlite-utils loads, importing them raises ImportError, as when they are absent; afterwards they
    import normally. This module is the only one that imports sqlite-utils.
    """
    blocked = [m for m in ("pandas", "numpy") if m not in sys.modules] if "sqlite_utils" not in sys.modules else []
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # the import system's "not installed"
    try:
        from sqlite_utils import Database
    finally:
        for name in blocked:
            del sys.modules[name]
    return Database


Database = _sqlite_utils_database()


class StoreError(Exception):
    """Base class for store errors the CLI and app turn into messages."""


class UnknownClass(StoreError):
    """A class name that is not in ``classes``."""


class UnknownImage(StoreError):
    """An image id that is not in ``images``."""


class LeaseLost(StoreError):
    """Another annotator holds a live lease on the image."""


class UnknownUser(StoreError):
    """A user name that is not in ``users``."""


class AlreadyJudged(StoreError):
    """The image already has a live verdict (at most one per image; change it by undo or a lead's override)."""


VERDICTS = ("correct", "wrong", "unsure")
REASONS = ("uncertain", "audit", "grid", "manual", "transfer_check")
ROLES = ("annotator", "lead")
REQUEST_KINDS = ("retrain", "full")
SETTING_DEFAULTS: dict[str, Any] = {
    "audit_share": 0.2,  # share of queue items drawn at random to audit the model
    "lease_seconds": 600,  # how long a served image stays reserved for its annotator
    "retrain_every": 50,  # live correct/wrong verdicts (not transfer checks) since the current model: a retrain
    "delta_override": None,  # lead's threshold on the score; None = the model's delta
    "round": {},  # annotator.round_config.RoundConfig fields that differ from its defaults
    "transfer_per_class": 20,  # random verdicts per unverified class that measure the model there (0 = none)
    "transfer_annotators": [],  # user names the transfer-check items are served to (blind), before their queue
}
UNDO_DEPTH = 10  # undo reaches back at most this many steps (a verdict or a grid page) of the current session
WORKER_FIELDS = ("pid", "heartbeat", "phase", "progress", "message", "last_error", "last_error_at",
                 "phase_index", "phase_count", "overall", "round_started_at", "eta_at")
SCORE_COLUMNS = ("image_id", "label_id", "score", "uncertainty", "suggested_label_id", "suggested_score",
                 "expected_wrong")
BUSY_TIMEOUT = 30.0  # seconds a statement or a write transaction waits for another writer before "database is locked"
LOCK_POLL = 0.001  # seconds between a waiting writer's tries for the write lock


class AddResult(NamedTuple):
    added: int  # new rows, duplicates included
    skipped: int  # path already in the store
    duplicates: int  # new rows stored with status 'duplicate'


def user_data_dir() -> Path:
    """This tool's per-user data folder, by the platform's convention (as Label Studio, pip and Jupyter do):
    ``$XDG_DATA_HOME/annotator`` (``~/.local/share/annotator`` when unset or relative, XDG Base Directory
    spec) on Linux and other Unix, ``~/Library/Application Support/annotator`` on macOS,
    ``%LOCALAPPDATA%\\annotator`` on Windows. Never inside the clone: a project's data is not source."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "annotator"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "annotator"
    xdg = os.environ.get("XDG_DATA_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "share") / "annotator"


def default_db_path() -> Path:
    """``$ANNOTATOR_DB`` if set, else ``user_data_dir() / "annotator.db"``. The runtime state (feature
    cache, backbones, checkpoints) lives next to the database."""
    env = os.environ.get("ANNOTATOR_DB")
    return Path(env) if env else user_data_dir() / "annotator.db"


def _choice(value: str, valid: tuple[str, ...], what: str) -> str:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")
    return value


def _ids_json(ids: Iterable[int]) -> str:
    """Id lists go in as one JSON parameter (``IN (SELECT value FROM json_each(?))``): no variable limit."""
    return json.dumps([int(i) for i in ids])


def private_files() -> None:
    """Make every file and folder this process creates from now on private to its user (umask 077):
    features, checkpoints and exports as much as the database. The CLI, worker and app call it first."""
    os.umask(0o077)


def _private_state(path: Path) -> None:
    """Create the database's folder 0700 (the default state folder is tightened even if it exists) and
    the database file 0600 before SQLite opens it; its WAL and SHM files inherit that mode."""
    folder = path.parent
    if not folder.exists():
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
    elif folder.resolve() == default_db_path().resolve().parent and folder.stat().st_uid == os.getuid():
        folder.chmod(0o700)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if p.exists() and p.stat().st_uid == os.getuid():
            p.chmod(0o600)


class StoreBase:
    """Connection and transactions; the area mixins (catalog, verdicts, ...) add the queries."""

    def __init__(self, path: str | Path | None = None, *, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        self.busy_timeout = busy_timeout
        _private_state(self.path)
        self.db = Database(self.path, execute_plugins=False)
        self.db.execute(f"PRAGMA busy_timeout = {round(busy_timeout * 1000)}")
        self.db.enable_wal()
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.execute("PRAGMA foreign_keys = ON")
        self._migrate()

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[None]:
        """Write transaction: BEGIN IMMEDIATE ... COMMIT, or a savepoint when nested."""
        conn = self.db.conn
        if conn.in_transaction:
            with self.db.atomic():
                yield
            return
        self._begin()
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            self.db.rollback()
            raise

    def _begin(self) -> None:
        """``BEGIN IMMEDIATE``, tried every ``LOCK_POLL`` seconds while another connection holds the write lock.

        SQLite's own busy handler sleeps longer and longer between tries (1, 2, 5, 10, ... 100 ms), so a
        waiter would mostly miss the few milliseconds a publisher leaves between its transactions. Raises
        ``sqlite3.OperationalError`` ("database is locked") after ``busy_timeout`` seconds, as SQLite does.
        """
        conn = self.db.conn
        deadline = time.monotonic() + self.busy_timeout
        conn.execute("PRAGMA busy_timeout = 0")  # a busy BEGIN fails at once; we sleep between tries
        try:
            while True:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as e:
                    if e.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                        raise
                time.sleep(LOCK_POLL)
        finally:
            conn.execute(f"PRAGMA busy_timeout = {round(self.busy_timeout * 1000)}")

    def _all(self, sql: str, params: list | tuple = ()) -> list[dict]:
        return list(self.db.query(sql, params))

    def _one(self, sql: str, params: list | tuple = ()) -> dict | None:
        return next(self.db.query(sql, params), None)

    def _scalar(self, sql: str, params: list | tuple = ()) -> Any:
        row = self.db.execute(sql, params).fetchone()
        return row[0] if row else None

    def _user_version(self) -> int:
        return self._scalar("PRAGMA user_version")

    def _migrate(self) -> None:
        """Apply ``schema.MIGRATIONS`` past ``PRAGMA user_version``, all in one transaction."""
        if self._user_version() == SCHEMA_VERSION:
            return
        with self._tx():
            version = self._user_version()  # re-read under the write lock: another process may have migrated
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path} has schema v{version}; this code knows up to v{SCHEMA_VERSION}")
            for migrate in MIGRATIONS[version:]:
                migrate(self.db)
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @property
    def schema_version(self) -> int:
        return self._user_version()

