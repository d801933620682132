"""Store queries behind the review queue (``annotator.queue``): candidates, leases to resume, counts.

A *candidate* is an image of a given class with status 'ok', no live verdict and no live
lease by anyone (the queue resumes the caller's own leases separately, so they are never
served twice). Every query here is driven by an index and bounded by a LIMIT, so its cost
grows with the number of rows skipped, not with the number of images:

- by uncertainty: the ``scores_queue`` table's key (model_version, label_id, uncertainty, image_id), one
  query per class;
- random draws and grids: ``images_label (label_id, id)`` from a random id onwards;
- the exclusion checks: ``verdicts_image``, ``verdicts_voids`` and the leases primary key.

The rows skipped by the uncertainty order are the reviewed images at the head of each
class (~1.2 us each at 1M images): 5k verdicts cost ~8 ms per call, 50k cost ~50 ms
(``benchmarks/queue_speed.py``).
"""

import random
import time
from collections.abc import Iterable
from itertools import chain

from .schema import LIVE
from .base import StoreBase, _ids_json

# Condition on `images i` (parameter :now): i is a candidate. Own leases count as taken too.
FREE = (f"i.status = 'ok' AND NOT EXISTS (SELECT 1 FROM verdicts v WHERE v.image_id = i.id AND {LIVE})"
        " AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.image_id = i.id AND l.expires_at > :now)")
NOT_EXCLUDED = "i.id NOT IN (SELECT value FROM json_each(:exclude))"
# The two hot queries: one class's candidates by uncertainty, and by id from a start id.
UNCERTAIN_SQL = ("SELECT q.uncertainty, q.image_id FROM scores_queue q JOIN images i ON i.id = q.image_id"
                 f" WHERE q.model_version = :mv AND q.label_id = :c AND {FREE} AND {NOT_EXCLUDED}"
                 " ORDER BY q.uncertainty LIMIT :k")
SCAN_SQL = (f"SELECT i.id FROM images i WHERE i.label_id = :c AND i.id >= :start AND {FREE} AND {NOT_EXCLUDED}"
            " ORDER BY i.id LIMIT :k")


class ReviewMixin(StoreBase):
    """Candidate queries for the review queue, plus the counts its status panel shows."""

    def verify_classes(self) -> dict[str, int]:
        """``{name: id}`` of the classes chosen for verification, by name (cheap: no image counts)."""
        return {r["name"]: r["id"] for r in self.db.query("SELECT name, id FROM classes WHERE verify = 1 "
                                                          "ORDER BY name")}

    def uncertain_candidates(self, model_version: int, class_ids: Iterable[int], limit: int, *,
                             now: float | None = None, exclude: Iterable[int] = ()) -> list[int]:
        """Up to ``limit`` candidate ids of ``class_ids``, lowest ``uncertainty`` (= most uncertain) first.

        One index-ordered query per class (``LIMIT limit`` each), merged here: a single query
        with ``label_id IN (...)`` would sort every scored image of those classes.
        """
        params = {"mv": model_version, "now": time.time() if now is None else now, "k": int(limit),
                  "exclude": _ids_json(exclude)}
        per_class = [self.db.execute(UNCERTAIN_SQL, {**params, "c": c}).fetchall() for c in class_ids]
        return [image_id for _, image_id in sorted(chain.from_iterable(per_class))[:int(limit)]]

    def _class_ranges(self, class_ids: Iterable[int]) -> dict[int, tuple[int, int, int]]:
        """``{class_id: (n_images, min_id, max_id)}`` for classes with images (covering index scan)."""
        rows = self.db.execute("SELECT label_id, COUNT(*), MIN(id), MAX(id) FROM images WHERE label_id IN "
                               "(SELECT value FROM json_each(?)) GROUP BY label_id", [_ids_json(class_ids)])
        return {c: (n, lo, hi) for c, n, lo, hi in rows}

    def _scan_class(self, class_id: int, start_id: int, limit: int, now: float, exclude: list[int]) -> list[int]:
        """Candidate ids of one class in id order from ``start_id`` on, wrapping around to the start."""
        params = {"c": class_id, "start": start_id, "now": now, "k": limit, "exclude": _ids_json(exclude)}
        found = [r[0] for r in self.db.execute(SCAN_SQL, params)]
        if len(found) < limit and start_id > 0:  # wrap: the part of the class before start_id
            params.update(start=0, k=limit - len(found), exclude=_ids_json([*exclude, *found]))
            found += [r[0] for r in self.db.execute(SCAN_SQL, params) if r[0] < start_id]
        return found

    def _random_start(self, class_ids: set[int], rng: random.Random, tries: int = 64) -> tuple[int, int] | None:
        """A uniform random image among all images, redrawn until it falls in ``class_ids``: its
        (class_id, id). None after ``tries`` misses (the classes hold few of the images)."""
        lo, hi = self.db.execute("SELECT (SELECT MIN(id) FROM images), (SELECT MAX(id) FROM images)").fetchone()
        if lo is None:
            return None
        for _ in range(tries):
            image_id, label_id = self.db.execute("SELECT id, label_id FROM images WHERE id >= ? ORDER BY id LIMIT 1",
                                                 [rng.randint(lo, hi)]).fetchone()
            if label_id in class_ids:
                return label_id, image_id
        return None

    def random_candidates(self, class_ids: Iterable[int], n: int, *, rng: random.Random | None = None,
                          now: float | None = None, exclude: Iterable[int] = ()) -> list[int]:
        """``n`` independent, roughly uniform draws (without replacement) among the candidates of ``class_ids``.

        Each draw takes a uniform random image id (rejection-sampled until the image is in
        ``class_ids``; after 64 misses a class is picked in proportion to its image count
        and a random id within its id range), then the first candidate of that image's
        class at or after it (``images_label`` range scan, wrapping around). Never
        ``ORDER BY RANDOM()``, which reads every row. The scan stays inside the class because
        a plain ``id >=`` scan over all images would favour the image after each block of
        other classes' ids (folder ingests give each class one contiguous block). An image's
        chance grows with the run of reviewed or leased images just before it in its class:
        that depends on ingest and review order, never on the model's score, so audit draws
        stay unbiased with respect to the model.
        """
        rng = rng or random.Random()
        now = time.time() if now is None else now
        classes = set(class_ids)
        chosen = list(exclude)
        out: list[int] = []
        ranges: dict[int, tuple[int, int, int]] | None = None  # fallback weights, computed once if needed
        while len(out) < n and classes:
            start = self._random_start(classes, rng)
            if start is None:
                ranges = {c: r for c, r in (ranges or self._class_ranges(classes)).items() if c in classes}
                if not ranges:
                    break
                keys = list(ranges)
                c = rng.choices(keys, weights=[ranges[k][0] for k in keys])[0]
                start = (c, rng.randint(ranges[c][1], ranges[c][2]))
            c, start_id = start
            found = self._scan_class(c, start_id, 1, now, chosen)
            if not found:
                classes.discard(c)  # no candidate left in this class
                continue
            out.append(found[0])
            chosen.append(found[0])
        return out

    def grid_candidates(self, class_id: int, n: int, model_version: int | None, *,
                        rng: random.Random | None = None, now: float | None = None,
                        exclude: Iterable[int] = ()) -> list[int]:
        """``n`` candidates of one class: the most uncertain under ``model_version``, or (no model)
        ``n`` consecutive candidates from a random id in the class."""
        now = time.time() if now is None else now
        if model_version is not None:
            return self.uncertain_candidates(model_version, [class_id], n, now=now, exclude=exclude)
        ranges = self._class_ranges([class_id])
        if class_id not in ranges:
            return []
        _, lo, hi = ranges[class_id]
        return self._scan_class(class_id, (rng or random.Random()).randint(lo, hi), n, now, list(exclude))

    def leased_candidates(self, annotator: str, class_ids: Iterable[int], *, now: float | None = None) -> list[int]:
        """Images of ``class_ids`` with a live lease held by ``annotator`` and no live verdict (to resume
        after a reload), earliest expiry first."""
        return [r[0] for r in self.db.execute(
            "SELECT l.image_id FROM leases l JOIN images i ON i.id = l.image_id WHERE l.annotator = :a"
            " AND l.expires_at > :now AND i.label_id IN (SELECT value FROM json_each(:classes))"
            f" AND NOT EXISTS (SELECT 1 FROM verdicts v WHERE v.image_id = i.id AND {LIVE})"
            " ORDER BY l.expires_at, l.image_id",
            {"a": annotator, "now": time.time() if now is None else now, "classes": _ids_json(class_ids)})]

    def queue_rows(self, image_ids: Iterable[int], model_version: int | None) -> dict[int, dict]:
        """``{image_id: row}`` with image_id, path, hash, label, score, uncertainty, suggested_label,
        suggested_score (score columns None without a score row of ``model_version``)."""
        return {r["image_id"]: r for r in self.db.query(
            "SELECT i.id AS image_id, i.path, i.hash, c.name AS label, s.score, s.uncertainty,"
            " sc.name AS suggested_label, s.suggested_score FROM images i JOIN classes c ON c.id = i.label_id"
            " LEFT JOIN scores s ON s.model_version = ? AND s.image_id = i.id"
            " LEFT JOIN classes sc ON sc.id = s.suggested_label_id"
            " WHERE i.id IN (SELECT value FROM json_each(?))", [model_version, _ids_json(image_ids)])}

    def remaining_by_class(self, *, now: float | None = None) -> dict[str, int]:
        """``{class name: candidates left}`` for every verify class (cost grows with their image count)."""
        return {r[0]: r[1] for r in self.db.execute(
            f"SELECT c.name, (SELECT COUNT(*) FROM images i WHERE i.label_id = c.id AND {FREE})"
            " FROM classes c WHERE c.verify = 1 ORDER BY c.name", {"now": time.time() if now is None else now})}

    def unreviewed_by_class(self) -> dict[str, int]:
        """``{class name: 'ok' images without a live verdict}`` for every class, by name (leases ignored;
        one pass over the images, so meant for the admin page, not for every rerun)."""
        return {r[0]: r[1] for r in self.db.execute(
            "SELECT c.name, COUNT(i.id) FROM classes c LEFT JOIN images i ON i.label_id = c.id AND i.status = 'ok'"
            f" AND NOT EXISTS (SELECT 1 FROM verdicts v WHERE v.image_id = i.id AND {LIVE})"
            " GROUP BY c.id ORDER BY c.name")}

    def verdict_count_by(self, annotator: str, since: float) -> int:
        """Live verdicts of ``annotator`` created at or after ``since``."""
        return self._scalar(f"SELECT COUNT(*) FROM verdicts v WHERE v.annotator = ? AND v.created_at >= ? AND {LIVE}",
                            [annotator, since])

    def query_plans(self) -> dict[str, list[str]]:
        """``EXPLAIN QUERY PLAN`` lines of the two hot queries (benchmarks and tests check their indexes)."""
        params = {"mv": 1, "c": 1, "now": 0.0, "k": 1, "exclude": "[]", "start": 1}
        return {name: [r[-1] for r in self.db.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
                for name, sql in (("uncertain", UNCERTAIN_SQL), ("scan", SCAN_SQL))}
