"""Store queries for near-duplicate groups and outlier scores (computed by ``annotator.duplicates``).

A computation is a ``duplicate_runs`` row plus one ``duplicates`` row per image. The rows are written in short
transactions (the queue's writers get in between) before the run becomes current in one transaction; the
previous run's rows are deleted afterwards. Readers see only the current run.
"""

import time
from collections.abc import Iterable, Iterator
from itertools import islice

from .base import StoreBase, _ids_json
from .review import FREE, NOT_EXCLUDED

_CURRENT = "(SELECT id FROM duplicate_runs WHERE is_current = 1)"


class DuplicatesMixin(StoreBase):
    """Near-duplicate groups (members, label conflicts) and outlier scores of the current run."""

    def duplicate_run(self) -> dict | None:
        """The current run: id, features_key, backbone_id, threshold, method, counts, seconds, created_at."""
        return self._one("SELECT * FROM duplicate_runs WHERE is_current = 1")

    def write_duplicates(self, rows: Iterable[tuple[int, int | None, float | None, int]], *, features_key: str,
                         backbone_id: str | None, threshold: float, method: str, n_images: int, n_groups: int,
                         n_conflicts: int, seconds: float, batch: int = 2000, pause: float = 0.01) -> int:
        """Store (image_id, group_id or None, outlier_score or None, conflict 0/1) rows as a new run and make it current;
        returns its id. Rows go in ``batch`` per transaction with ``pause`` s between them, so the queue's
        writers wait for one short transaction at most (a million rows: 500 transactions)."""
        with self._tx():
            run = self.db.execute(
                "INSERT INTO duplicate_runs (features_key, backbone_id, threshold, method, n_images, n_groups,"
                " n_conflicts, seconds, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [features_key, backbone_id, threshold, method, n_images, n_groups, n_conflicts, seconds,
                 time.time()]).lastrowid
        it = iter(rows)
        while chunk := list(islice(it, batch)):
            with self._tx():
                self.db.conn.executemany("INSERT INTO duplicates (run_id, image_id, group_id, outlier_score, conflict)"
                                         " VALUES (?, ?, ?, ?, ?)", [(run, *r) for r in chunk])
            time.sleep(pause)
        with self._tx():
            self.db.execute("UPDATE duplicate_runs SET is_current = (id = ?)", [run])
        for old in [r["id"] for r in self._all("SELECT id FROM duplicate_runs WHERE id != ?", [run])]:
            while self.db.execute("SELECT 1 FROM duplicates WHERE run_id = ? LIMIT 1", [old]).fetchone():
                with self._tx():
                    self.db.execute("DELETE FROM duplicates WHERE run_id = ? AND image_id IN (SELECT image_id FROM"
                                    " duplicates WHERE run_id = ? LIMIT ?)", [old, old, batch])
                time.sleep(pause)
            with self._tx():
                self.db.execute("DELETE FROM duplicate_runs WHERE id = ?", [old])
        return run

    def duplicate_group_summaries(self, *, class_id: int | None = None, conflicts_only: bool = False,
                                  limit: int = 50, offset: int = 0) -> list[dict]:
        """Groups of the current run, label conflicts first (then larger groups, then by id): group_id, size,
        n_labels (distinct noisy labels; > 1 = conflict). ``class_id``: only groups with a member of that class."""
        having = ["1"]
        params: list = []
        if class_id is not None:
            having.append("SUM(i.label_id = ?) > 0")
            params.append(class_id)
        if conflicts_only:
            having.append("COUNT(DISTINCT i.label_id) > 1")
        return self._all(
            "SELECT d.group_id, COUNT(*) AS size, COUNT(DISTINCT i.label_id) AS n_labels FROM duplicates d"
            f" JOIN images i ON i.id = d.image_id WHERE d.run_id = {_CURRENT} AND d.group_id IS NOT NULL"
            f" GROUP BY d.group_id HAVING {' AND '.join(having)}"
            " ORDER BY n_labels > 1 DESC, size DESC, d.group_id LIMIT ? OFFSET ?", [*params, limit, offset])

    def duplicate_members(self, group_ids: Iterable[int]) -> list[dict]:
        """Members of the given groups of the current run, by group then image id: group_id, image_id, path,
        hash, status, label, outlier_score."""
        return self._all(
            "SELECT d.group_id, i.id AS image_id, i.path, i.hash, i.status, c.name AS label, d.outlier_score"
            f" FROM duplicates d JOIN images i ON i.id = d.image_id JOIN classes c ON c.id = i.label_id"
            f" WHERE d.run_id = {_CURRENT} AND d.group_id IN (SELECT value FROM json_each(?))"
            " ORDER BY d.group_id, i.id", [_ids_json(group_ids)])

    def iter_duplicate_members(self) -> Iterator[dict]:
        """Every member of every group of the current run (as ``duplicate_members``), by group then image id."""
        yield from self.db.query(
            "SELECT d.group_id, i.id AS image_id, i.path, i.hash, i.status, c.name AS label, d.outlier_score"
            " FROM duplicates d JOIN images i ON i.id = d.image_id JOIN classes c ON c.id = i.label_id"
            f" WHERE d.run_id = {_CURRENT} AND d.group_id IS NOT NULL ORDER BY d.group_id, i.id")

    def top_outliers(self, *, class_id: int | None = None, limit: int = 50) -> list[dict]:
        """The images of the current run with the highest outlier scores (most outlying first): image_id, path,
        hash, label, outlier_score, group_id. ``class_id``: only images of that noisy label."""
        where, params = ("AND i.label_id = ?", [class_id]) if class_id is not None else ("", [])
        return self._all(
            "SELECT i.id AS image_id, i.path, i.hash, c.name AS label, d.outlier_score, d.group_id"
            " FROM duplicates d JOIN images i ON i.id = d.image_id JOIN classes c ON c.id = i.label_id"
            f" WHERE d.run_id = {_CURRENT} AND d.outlier_score IS NOT NULL {where}"
            " ORDER BY d.outlier_score DESC, i.id LIMIT ?", [*params, limit])

    def conflict_candidates(self, class_ids: Iterable[int], limit: int, *, now: float | None = None,
                            exclude: Iterable[int] = ()) -> list[int]:
        """Up to ``limit`` queue candidates (``review.FREE``) of ``class_ids`` that belong to a group of the current
        run whose members carry different labels, a group's members together (by group id, then image id).
        Driven by the partial index on conflict rows: its cost grows with the conflicting members, not the images."""
        return [r[0] for r in self.db.execute(
            f"SELECT i.id FROM duplicates d JOIN images i ON i.id = d.image_id WHERE d.run_id = {_CURRENT}"
            " AND d.conflict = 1 AND i.label_id IN (SELECT value FROM json_each(:classes))"
            f" AND {FREE} AND {NOT_EXCLUDED} ORDER BY d.group_id, i.id LIMIT :k",
            {"classes": _ids_json(class_ids), "now": time.time() if now is None else now, "k": int(limit),
             "exclude": _ids_json(exclude)})]
