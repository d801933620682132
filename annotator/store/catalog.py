"""Store queries for classes, images and ingest errors."""

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from itertools import islice

from .base import AddResult, StoreBase, UnknownClass, UnknownImage, _ids_json


class CatalogMixin(StoreBase):
    """Classes (with the verification flag), images and the ingest error log."""

    # -- classes ------------------------------------------------------------------------
    def ensure_classes(self, names: Iterable[str]) -> dict[str, int]:
        """Create missing classes (names stripped, else verbatim); return ``{name: id}`` for ``names``."""
        names = list(dict.fromkeys(n.strip() for n in names))
        if any(not n for n in names):
            raise ValueError("class names must be non-empty")
        now = time.time()
        with self._tx():
            self.db.conn.executemany(
                "INSERT INTO classes (name, created_at) VALUES (?, ?) ON CONFLICT(name) DO NOTHING",
                [(n, now) for n in names],
            )
            rows = self._all("SELECT id, name FROM classes WHERE name IN (SELECT value FROM json_each(?))",
                             [json.dumps(names)])
        return {r["name"]: r["id"] for r in rows}

    def classes(self) -> list[dict]:
        """All classes by name: id, name, verify, created_at, n_images (duplicates included)."""
        return self._all(
            "SELECT c.id, c.name, c.verify, c.created_at, COUNT(i.id) AS n_images FROM classes c "
            "LEFT JOIN images i ON i.label_id = c.id GROUP BY c.id ORDER BY c.name"
        )

    def class_id(self, name: str) -> int:
        """Id of class ``name`` (stripped); raises ``UnknownClass``."""
        found = self._scalar("SELECT id FROM classes WHERE name = ?", [name.strip()])
        if found is None:
            raise UnknownClass(f"unknown class {name!r}")
        return found

    def set_verify(self, names: Iterable[str], verify: bool = True) -> None:
        """Mark classes as verified (humans review them) or not; raises ``UnknownClass``."""
        with self._tx():
            ids = [self.class_id(n) for n in names]
            self.db.execute("UPDATE classes SET verify = ? WHERE id IN (SELECT value FROM json_each(?))",
                            [int(verify), _ids_json(ids)])

    # -- images -------------------------------------------------------------------------
    def add_images(self, rows: Iterable[dict], *, batch: int = 2000) -> AddResult:
        """Insert image rows (path, hash, label_id, width, height, bytes, mtime, extra), ``batch`` per transaction.

        Idempotent by ``path``: an existing path is skipped. A row whose hash matches an
        existing 'ok' image is stored with status 'duplicate' and ``duplicate_of`` set.
        ``extra`` may be a dict (stored as JSON). Raises ``UnknownClass`` for a bad label_id.
        """
        added = skipped = duplicates = 0
        it = iter(rows)
        while chunk := list(islice(it, batch)):
            now = time.time()
            with self._tx():
                for r in chunk:
                    original = self._scalar(
                        "SELECT id FROM images WHERE hash = ? AND status = 'ok' ORDER BY id LIMIT 1", [r["hash"]])
                    extra = r.get("extra")
                    try:
                        cur = self.db.execute(
                            "INSERT INTO images (path, hash, label_id, width, height, bytes, mtime, status,"
                            " duplicate_of, extra, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                            " ON CONFLICT(path) DO NOTHING",
                            [str(r["path"]), r["hash"], r["label_id"], r.get("width"), r.get("height"),
                             r.get("bytes"), r.get("mtime"), "ok" if original is None else "duplicate", original,
                             json.dumps(extra) if isinstance(extra, dict) else extra, now],
                        )
                    except sqlite3.IntegrityError as e:
                        raise UnknownClass(f"label_id {r['label_id']!r} of {r['path']}: {e}") from e
                    if cur.rowcount == 0:
                        skipped += 1
                    else:
                        added += 1
                        duplicates += original is not None
        return AddResult(added, skipped, duplicates)

    def update_image_files(self, rows: Iterable[dict]) -> int:
        """Record files read again (rescan): each row {id, hash, bytes, mtime, width, height}. Returns how many
        images got a new hash.

        New content re-derives the duplicate links: the image becomes a duplicate of the first other 'ok' image
        with that hash, or 'ok'; images that were duplicates of its old content now follow the first of them,
        which becomes 'ok'. It leaves its near-duplicate group until the groups are computed again (nobody
        compared the new content: no verdict is offered to it, no conflict lowers its score).
        """
        changed = 0
        with self._tx():
            for r in rows:
                old = self._one("SELECT hash FROM images WHERE id = ?", [r["id"]])
                if old is None:
                    raise UnknownImage(f"unknown image id {r['id']}")
                if old["hash"] == r["hash"]:
                    self.db.execute("UPDATE images SET bytes = ?, mtime = ? WHERE id = ?",
                                    [r["bytes"], r["mtime"], r["id"]])
                    continue
                changed += 1
                self.db.execute("UPDATE duplicates SET group_id = NULL, conflict = 0 WHERE image_id = ?", [r["id"]])
                original = self._scalar("SELECT id FROM images WHERE hash = ? AND status = 'ok' AND id != ? "
                                        "ORDER BY id LIMIT 1", [r["hash"], r["id"]])
                self.db.execute(
                    "UPDATE images SET hash = ?, bytes = ?, mtime = ?, width = ?, height = ?, status = ?, "
                    "duplicate_of = ? WHERE id = ?",
                    [r["hash"], r["bytes"], r["mtime"], r.get("width"), r.get("height"),
                     "ok" if original is None else "duplicate", original, r["id"]])
                heir = self._scalar("SELECT id FROM images WHERE duplicate_of = ? ORDER BY id LIMIT 1", [r["id"]])
                if heir is not None:
                    self.db.execute("UPDATE images SET duplicate_of = ? WHERE duplicate_of = ? AND id != ?",
                                    [heir, r["id"], heir])
                    self.db.execute("UPDATE images SET status = 'ok', duplicate_of = NULL WHERE id = ?", [heir])
        return changed

    def existing_paths(self, paths: Iterable[str]) -> set[str]:
        """The subset of ``paths`` already stored (paths as stored: absolute, resolved)."""
        return {r["path"] for r in self.db.query(
            "SELECT path FROM images WHERE path IN (SELECT value FROM json_each(?))",
            [json.dumps([str(p) for p in paths])])}

    def image_by_hash(self, hash: str) -> dict | None:
        """The first 'ok' image with this content hash, or None."""
        return self._one("SELECT * FROM images WHERE hash = ? AND status = 'ok' ORDER BY id LIMIT 1", [hash])

    def get_image(self, image_id: int) -> dict:
        """One image row plus its class name as ``label``; raises ``UnknownImage``."""
        row = self._one("SELECT i.*, c.name AS label FROM images i JOIN classes c ON c.id = i.label_id "
                        "WHERE i.id = ?", [image_id])
        if row is None:
            raise UnknownImage(f"unknown image id {image_id}")
        return row

    def images_count(self, status: str | None = None) -> int:
        """Number of images, optionally only those with ``status`` ('ok' or 'duplicate')."""
        if status is None:
            return self._scalar("SELECT COUNT(*) FROM images")
        return self._scalar("SELECT COUNT(*) FROM images WHERE status = ?", [status])

    def iter_images(self, batch: int = 10000) -> Iterator[dict]:
        """Stream all image rows by id, plus ``label`` (class name); ``extra`` decoded to a dict or None.

        Pages by id (one short query per ``batch``), so no read transaction stays open.
        """
        last = 0
        while True:
            rows = self._all("SELECT i.*, c.name AS label FROM images i JOIN classes c ON c.id = i.label_id "
                             "WHERE i.id > ? ORDER BY i.id LIMIT ?", [last, batch])
            for r in rows:
                r["extra"] = json.loads(r["extra"]) if r["extra"] else None
                yield r
            if len(rows) < batch:
                return
            last = rows[-1]["id"]

    # -- ingest errors ------------------------------------------------------------------
    def add_ingest_errors(self, rows: Iterable[dict]) -> int:
        """Record {source, path, reason} rows; a repeat of the same triple is ignored. Returns new rows."""
        now = time.time()
        with self._tx():
            before = self.db.conn.total_changes
            self.db.conn.executemany(
                "INSERT OR IGNORE INTO ingest_errors (source, path, reason, created_at) VALUES (?, ?, ?, ?)",
                [(r["source"], str(r["path"]), r["reason"], now) for r in rows])
            return self.db.conn.total_changes - before

    def ingest_error_counts(self) -> dict[str, int]:
        """``{reason: count}`` over all recorded ingest errors."""
        return {r["reason"]: r["n"] for r in self.db.query(
            "SELECT reason, COUNT(*) AS n FROM ingest_errors GROUP BY reason ORDER BY n DESC, reason")}

    def ingest_errors(self, limit: int = 1000) -> list[dict]:
        """Most recent ingest errors first."""
        return self._all("SELECT * FROM ingest_errors ORDER BY id DESC LIMIT ?", [limit])
