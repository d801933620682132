"""SQLite schema and migrations of the store (only the `annotator.store` package imports this).

The schema version lives in ``PRAGMA user_version``. ``MIGRATIONS[i]`` upgrades a database
from version ``i`` to ``i + 1``; append new functions, never edit shipped ones.

Verdicts are append-only. Undo is a new row whose ``voids`` column holds the voided
verdict's id. A *live verdict* is a row with ``voids IS NULL`` whose id no undo row
references (see ``LIVE``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlite_utils import Database


SCHEMA_V1 = """
CREATE TABLE classes (
    id INTEGER PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,              -- verbatim label text (may be hostile; escape on output)
    verify INTEGER NOT NULL DEFAULT 0,      -- 1 = a class humans verify (CleanNet reference/verified set)
    created_at REAL
);
CREATE TABLE images (
    id INTEGER PRIMARY KEY,
    path TEXT UNIQUE NOT NULL,              -- absolute, resolved
    hash TEXT NOT NULL,                     -- blake2b-128 hex of the file bytes
    label_id INTEGER NOT NULL REFERENCES classes(id),
    width INT, height INT, bytes INT,
    status TEXT NOT NULL DEFAULT 'ok' CHECK (status IN ('ok', 'duplicate')),
    duplicate_of INTEGER REFERENCES images(id),
    extra TEXT,                             -- JSON object of extra CSV columns
    added_at REAL
);
CREATE INDEX images_hash ON images(hash);
CREATE INDEX images_label ON images(label_id, id);
CREATE TABLE verdicts (
    id INTEGER PRIMARY KEY,
    image_id INT NOT NULL REFERENCES images(id),
    annotator TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('correct', 'wrong', 'unsure')),
    corrected_label_id INT REFERENCES classes(id),
    reason TEXT NOT NULL CHECK (reason IN ('uncertain', 'audit', 'grid', 'manual')),
    model_version INT,
    voids INT REFERENCES verdicts(id),      -- set on undo rows only
    created_at REAL NOT NULL
);
CREATE INDEX verdicts_image ON verdicts(image_id);
CREATE INDEX verdicts_annotator ON verdicts(annotator, id);
CREATE UNIQUE INDEX verdicts_voids ON verdicts(voids) WHERE voids IS NOT NULL;
CREATE TABLE leases (
    image_id INTEGER PRIMARY KEY REFERENCES images(id),
    annotator TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX leases_annotator ON leases(annotator);
CREATE TABLE models (
    version INTEGER PRIMARY KEY,
    created_at REAL,
    delta REAL,                             -- threshold on the score: below = flagged as a wrong label
    metrics TEXT,                           -- JSON
    checkpoint TEXT,
    backbone TEXT,
    n_verdicts INT,
    is_current INT NOT NULL DEFAULT 0
);
CREATE TABLE scores (
    model_version INT NOT NULL REFERENCES models(version),
    image_id INT NOT NULL REFERENCES images(id),
    label_id INT NOT NULL,
    score REAL NOT NULL,                    -- higher = label more likely correct: P in [0, 1] (transfer)
                                            -- or CleanNet relevance in [-1, 1] (paper)
    uncertainty REAL NOT NULL,              -- queue order, lower = served first
                                            -- (publish.queue_order, +10 once reviewed)
    suggested_label_id INT,
    suggested_score REAL,
    PRIMARY KEY (model_version, image_id)
);
CREATE INDEX scores_queue ON scores(model_version, label_id, uncertainty);
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('annotator', 'lead')),
    password_hash TEXT NOT NULL,
    created_at REAL,
    active INT NOT NULL DEFAULT 1
);
CREATE TABLE worker (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    pid INT, heartbeat REAL, phase TEXT, progress REAL, message TEXT,
    last_error TEXT, last_error_at REAL
);
CREATE TABLE requests (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('retrain', 'full')),
    requested_by TEXT,
    created_at REAL, started_at REAL, done_at REAL
);
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT                              -- JSON
);
CREATE TABLE ingest_errors (
    id INTEGER PRIMARY KEY,
    source TEXT, path TEXT, reason TEXT, created_at REAL
);
CREATE UNIQUE INDEX ingest_errors_key ON ingest_errors(source, path, reason);
"""


def _v1(db: Database) -> None:
    """Version 1: the initial schema."""
    db.executescript(SCHEMA_V1)  # runs inside the caller's open transaction


def _v2(db: Database) -> None:
    """Version 2: a lease remembers why its image was served (queue reason), so an audit draw that comes
    back after a browser reload is still recorded as 'audit'."""
    db.execute("ALTER TABLE leases ADD COLUMN reason TEXT")


def _v3_one_live_verdict_sessions_logins(db: Database) -> None:
    """Version 3: verdict integrity and accounts.

    - A trigger refuses a verdict on an image that already has a live one (undo rows pass), so at most one
      live verdict per image holds for every writer; an explicit change voids the old verdict first.
    - Verdicts remember the login session and the batch (a grid page) they were given in: undo rules.
    - Server-side login sessions (only a SHA-256 of each random token is stored) and login attempts
      (throttling); the old HMAC signing secret is deleted.
    """
    db.executescript("""
CREATE TRIGGER verdicts_one_live BEFORE INSERT ON verdicts
WHEN NEW.voids IS NULL AND EXISTS (SELECT 1 FROM verdicts v WHERE v.image_id = NEW.image_id AND v.voids IS NULL
                                   AND NOT EXISTS (SELECT 1 FROM verdicts u WHERE u.voids = v.id))
BEGIN SELECT RAISE(ABORT, 'image already has a live verdict'); END;
ALTER TABLE verdicts ADD COLUMN session_id INT;     -- sessions.id the verdict was given in (NULL: CLI, import)
ALTER TABLE verdicts ADD COLUMN batch TEXT;         -- verdicts saved together (a grid page) share it
CREATE INDEX verdicts_session ON verdicts(session_id, id);
CREATE TABLE sessions (
    id INTEGER PRIMARY KEY,
    token_hash TEXT UNIQUE NOT NULL,        -- SHA-256 hex of the random token; the token itself is never stored
    user TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_used REAL NOT NULL,
    expires_at REAL NOT NULL                -- absolute end (capped when checked too)
);
CREATE INDEX sessions_user ON sessions(user);
CREATE TABLE login_attempts (
    id INTEGER PRIMARY KEY,
    user_key TEXT NOT NULL,                 -- normalised user name as typed (known or not)
    client TEXT NOT NULL,                   -- client address ('' when unknown)
    ok INT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX login_attempts_user ON login_attempts(user_key, at);
CREATE INDEX login_attempts_client ON login_attempts(client, at);
DELETE FROM settings WHERE key = 'session_secret';
""")


def _worker_round_progress(db: Database) -> None:
    """The worker row says where a round is: phase k of n, overall share of the round, when the round
    started and when it should end (``annotator.progress``)."""
    for column in ("phase_index INT", "phase_count INT", "overall REAL", "round_started_at REAL", "eta_at REAL"):
        db.execute(f"ALTER TABLE worker ADD COLUMN {column}")


def _model_artifacts(db: Database) -> None:
    """Every model file (backbones, scoring checkpoints, exported classifiers) is registered with its
    provenance in ``artifacts``; the backbone recorded in ``settings['backbone']`` becomes the first row."""
    db.executescript("""
CREATE TABLE artifacts (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('backbone', 'scorer', 'classifier')),
    path TEXT UNIQUE NOT NULL,              -- absolute; the file is complete before its row exists
    backbone_id TEXT NOT NULL,              -- content id of the backbone weights (a scorer's: the one it scores)
    source TEXT NOT NULL,                   -- where the weights came from, in words
    provenance TEXT NOT NULL,               -- JSON: arch, image size, classes, weights file, verdicts, parent
    created_at REAL NOT NULL
);
""")
    row = db.execute("SELECT value FROM settings WHERE key = 'backbone'").fetchone()
    if row:
        info = json.loads(row[0])
        provenance = {k: info.get(k) for k in ("arch", "image_size", "num_classes")}
        db.execute("INSERT INTO artifacts (kind, path, backbone_id, source, provenance, created_at) "
                   "VALUES ('backbone', ?, ?, ?, ?, ?)",
                   [info["path"], info["id"], info["source"], json.dumps(provenance), time.time()])
        db.execute("DELETE FROM settings WHERE key = 'backbone'")


def _images_mtime(db: Database) -> None:
    """Images remember their file's mtime (with ``bytes``, the size) when they were hashed, so ``rescan`` can
    tell a file that may have changed from one that has not without reading it."""
    db.execute("ALTER TABLE images ADD COLUMN mtime REAL")


def _verdict_note(db: Database) -> None:
    """A verdict can carry a note: the reason a lead gave for an override (``Store.override_verdict``)."""
    db.execute("ALTER TABLE verdicts ADD COLUMN note TEXT")


def _scores_queue_table(db: Database) -> None:
    """The queue order of each version's scores moves from an index on ``scores`` to its own table,
    ``scores_queue``, keyed (model_version, label_id, uncertainty, image_id). Publishing then writes ``scores``
    in image id order and ``scores_queue`` in queue order, each appending to its b-trees; with both orders on
    one table, one of them took a million inserts at random places (benchmarks/README.md, "Speed: a
    round at 100k and 1M images"). The queue's query reads the image ids straight from the key."""
    db.executescript("""
DROP INDEX scores_queue;
CREATE TABLE scores_queue (                 -- one row per scores row, written and deleted with it
    model_version INT NOT NULL,
    label_id INT NOT NULL,
    uncertainty REAL NOT NULL,              -- as in scores: lower = served first
    image_id INT NOT NULL,
    PRIMARY KEY (model_version, label_id, uncertainty, image_id)
) WITHOUT ROWID;
INSERT INTO scores_queue SELECT model_version, label_id, uncertainty, image_id FROM scores ORDER BY 1, 2, 3, 4;
""")


def _accounts_v2(db: Database) -> None:
    """Accounts, second version.

    - Session ids are never reused (``AUTOINCREMENT``): a verdict's ``session_id`` scopes undo to the login it
      was given in, and a plain rowid would hand a logged-out session's id to the next login, whose undo would
      reach the old session's verdicts. The counter starts above every id a session or a verdict has used.
    - A session remembers the browser it was started in (``browser_hash``), so a link carrying its token does
      not sign in another browser; a login attempt remembers the browser it came from, so a browser that logged
      in before is not held back by failures from elsewhere.
    - A user remembers when the password was last set: failed logins before it no longer throttle the name.
    """
    db.executescript("""
ALTER TABLE users ADD COLUMN password_set_at REAL;
ALTER TABLE login_attempts ADD COLUMN browser_hash TEXT;   -- SHA-256 of the browser id cookie (NULL: none)
CREATE INDEX login_attempts_browser ON login_attempts(browser_hash, user_key) WHERE browser_hash IS NOT NULL;
CREATE TABLE sessions_v2 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused (verdicts.session_id refers to it)
    token_hash TEXT UNIQUE NOT NULL,        -- SHA-256 hex of the random token; the token itself is never stored
    user TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_used REAL NOT NULL,
    expires_at REAL NOT NULL,               -- absolute end (capped when checked too)
    browser_hash TEXT                       -- SHA-256 hex of the browser cookie of the login (NULL: none)
);
INSERT INTO sessions_v2 (id, token_hash, user, created_at, last_used, expires_at)
    SELECT id, token_hash, user, created_at, last_used, expires_at FROM sessions;
DROP TABLE sessions;
ALTER TABLE sessions_v2 RENAME TO sessions;
CREATE INDEX sessions_user ON sessions(user);
DELETE FROM sqlite_sequence WHERE name IN ('sessions', 'sessions_v2');
INSERT INTO sqlite_sequence (name, seq) SELECT 'sessions', MAX(COALESCE((SELECT MAX(id) FROM sessions), 0),
                                                               COALESCE((SELECT MAX(session_id) FROM verdicts), 0));
""")


def _duplicate_groups(db: Database) -> None:
    """Near-duplicate groups and outlier scores (``annotator.duplicates``): each computation is a row of
    ``duplicate_runs``, keyed by what it was computed from (backbone, images, hashes, labels, settings); its
    per-image rows are written before it becomes current, so readers never see half of one."""
    db.executescript("""
CREATE TABLE duplicate_runs (
    id INTEGER PRIMARY KEY,
    features_key TEXT NOT NULL,             -- blake2b of the backbone id, image ids, hashes, labels and settings
    backbone_id TEXT,
    threshold REAL NOT NULL,                -- cosine at or above which two images are near-duplicates
    method TEXT NOT NULL,                   -- nearest-neighbour search: exact | faiss-ivf
    n_images INT NOT NULL, n_groups INT NOT NULL, n_conflicts INT NOT NULL,
    seconds REAL, created_at REAL NOT NULL,
    is_current INT NOT NULL DEFAULT 0
);
CREATE TABLE duplicates (
    run_id INT NOT NULL,
    image_id INT NOT NULL,
    group_id INT,                           -- smallest image id of its group; NULL = in no group
    outlier_score REAL,                     -- 1 - max cosine to a class centroid: higher = more outlying
    conflict INT NOT NULL DEFAULT 0,        -- 1 = its group's members carry more than one noisy label
    PRIMARY KEY (run_id, image_id)
) WITHOUT ROWID;
CREATE INDEX duplicates_conflict ON duplicates(run_id, group_id, image_id) WHERE conflict = 1;
CREATE INDEX duplicates_group ON duplicates(run_id, group_id) WHERE group_id IS NOT NULL;
CREATE INDEX duplicates_outlier ON duplicates(run_id, outlier_score);
""")


def _widen_verdict_reasons(db: Database, reasons: tuple[str, ...], added: str) -> None:
    """The CHECK on ``verdicts.reason`` from ``reasons`` to ``reasons`` and ``added``. A CHECK that only widens
    (every stored row still passes) is edited in place, SQLite's documented way of changing a CHECK constraint
    (https://sqlite.org/lang_altertable.html, "making other kinds of table schema changes"), instead of copying the
    append-only verdicts table with its triggers and indexes."""
    def check(names: tuple[str, ...]) -> str:
        return "CHECK (reason IN (" + ", ".join(f"'{n}'" for n in names) + "))"
    table = "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'verdicts'"
    if check(reasons) not in db.execute(table).fetchone()[0]:
        raise RuntimeError(f"the verdicts table's reason check is not {check(reasons)}: not migrating it")
    version = db.execute("PRAGMA schema_version").fetchone()[0]
    db.execute("PRAGMA writable_schema = ON")
    try:
        db.execute("UPDATE sqlite_master SET sql = replace(sql, ?, ?) WHERE type = 'table' AND name = 'verdicts'",
                   [check(reasons), check(reasons + (added,))])
        db.execute(f"PRAGMA schema_version = {version + 1}")
    finally:
        db.execute("PRAGMA writable_schema = OFF")


def _transfer_check_reason(db: Database) -> None:
    """Verdicts may have the reason 'transfer_check': a random draw in a class nobody verifies, which measures the
    model there and trains nothing."""
    _widen_verdict_reasons(db, ("uncertain", "audit", "grid", "manual"), "transfer_check")


def _propagated_verdicts(db: Database) -> None:
    """Verdicts may have the reason 'propagated': an annotator applied their verdict on one image to a near-duplicate
    of it (``Store.propagate_verdict``). ``source_id`` names that verdict; a CHECK ties the two together, so a
    propagated verdict always says where it came from and no other verdict claims a source."""
    _widen_verdict_reasons(db, ("uncertain", "audit", "grid", "manual", "transfer_check"), "propagated")
    db.execute("ALTER TABLE verdicts ADD COLUMN source_id INT REFERENCES verdicts(id)"
               " CHECK ((reason = 'propagated') = (source_id IS NOT NULL))")


def _scores_expected_wrong(db: Database) -> None:
    """A score row can carry the image's P(label wrong) for counting wrong labels (``expected_wrong``: the robust
    score's counting calibration, ``cleannet_core.robust.RobustScore.expected_wrong``); NULL where the method has
    none, and on the rows of older versions (counted with 1 - score)."""
    db.execute("ALTER TABLE scores ADD COLUMN expected_wrong REAL")


# Ordered: MIGRATIONS[i] takes user_version i to i + 1.
MIGRATIONS: list[Callable[[Database], None]] = [_v1, _v2, _v3_one_live_verdict_sessions_logins,
                                                 _worker_round_progress, _model_artifacts, _images_mtime,
                                                 _verdict_note, _scores_queue_table, _accounts_v2, _duplicate_groups,
                                                 _transfer_check_reason, _propagated_verdicts, _scores_expected_wrong]
SCHEMA_VERSION = len(MIGRATIONS)

# WHERE condition on `verdicts v` selecting live verdicts: not an undo row, not voided by one.
LIVE = "v.voids IS NULL AND NOT EXISTS (SELECT 1 FROM verdicts u WHERE u.voids = v.id)"
