"""Store queries for near-duplicate groups and outlier scores (computed by ``annotator.duplicates``).

A computation is a ``duplicate_runs`` row plus one ``duplicates`` row per image. The rows are written in short
transactions (the queue's writers get in between) before the run becomes current in one transaction; the
previous run's rows are deleted afterwards. Readers see only the current run.

A verdict on one member of a group can be applied to the others (``propagation_offer``, ``propagate_verdict``):
only by an explicit action of the annotator who gave it, as new verdicts in that annotator's name with reason
'propagated' and ``source_id`` = the verdict applied.
"""

import secrets
import time
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TypeVar

from .schema import LIVE
from .base import StoreBase, StoreError, _ids_json
from .review import FREE, NOT_EXCLUDED

T = TypeVar("T")
_CURRENT = "(SELECT id FROM duplicate_runs WHERE is_current = 1)"
PROPAGATED = "propagated"  # verdicts.reason of a verdict applied from a near-duplicate's (source_id)
BLIND = ("audit", "transfer_check")  # random draws that measure: never applied from, nor to an image drawn so
# The members of the source image's group that a propagation may reach: no live verdict, and no live lease by
# another annotator nor one that serves the image as a blind draw (audit, transfer check).
_OPEN_MEMBERS = (
    "SELECT d.image_id, i.label_id, c.name AS label FROM duplicates d JOIN images i ON i.id = d.image_id"
    f" JOIN classes c ON c.id = i.label_id WHERE d.run_id = {_CURRENT} AND d.image_id != :src AND d.group_id ="
    f" (SELECT group_id FROM duplicates WHERE run_id = {_CURRENT} AND image_id = :src)"
    f" AND NOT EXISTS (SELECT 1 FROM verdicts v WHERE v.image_id = d.image_id AND {LIVE})"
    " AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.image_id = d.image_id AND l.expires_at > :now"
    " AND (l.annotator != :who OR l.reason IN ('audit', 'transfer_check'))) ORDER BY d.image_id")


class NotPropagable(StoreError):
    """A verdict that cannot be applied to near-duplicates: not live, not the annotator's own, 'unsure', or a
    blind draw's (audit, transfer check)."""


def agreeing(rows: Iterable[tuple[int, tuple, T]]) -> dict[int, T]:
    """{image id: the first payload} of rows (image id, what a source verdict implies for it, payload), leaving out
    the images two rows imply different things for: several verdicts (a grid page) speak for a copy only together."""
    first: dict[int, tuple[tuple, T]] = {}
    clash: set[int] = set()
    for image_id, said, payload in rows:
        if image_id in first and first[image_id][0] != said:
            clash.add(image_id)
        first.setdefault(image_id, (said, payload))
    return {i: payload for i, (_, payload) in first.items() if i not in clash}


def implied(verdict: str, label_id: int, corrected_id: int | None,
            target_label_id: int) -> tuple[str, int | None] | None:
    """What a verdict on an image labelled ``label_id`` says about a near-duplicate labelled ``target_label_id``:
    (verdict, corrected class id or None), or None when it says nothing.

    The verdict names the picture's true class T: the label ('correct') or the corrected class ('wrong' with
    one). A copy labelled T is then correct, a copy under any other label wrong with true class T. 'wrong'
    without a class: a copy under the same label is wrong too, one under another label may be right (nothing).
    'unsure' says nothing."""
    truth = label_id if verdict == "correct" else corrected_id if verdict == "wrong" else None
    if truth is not None:
        return ("correct", None) if target_label_id == truth else ("wrong", truth)
    if verdict == "wrong" and target_label_id == label_id:
        return "wrong", None
    return None


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

    def iter_duplicate_groups(self) -> Iterator[tuple[int, int]]:
        """(image_id, group_id) of every member of a group of the current run, by image id."""
        yield from self.db.execute(f"SELECT image_id, group_id FROM duplicates WHERE run_id = {_CURRENT}"
                                   " AND group_id IS NOT NULL ORDER BY image_id")

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

    # -- a verdict applied to near-duplicates ---------------------------------------------
    def _propagable(self, verdict_id: int, annotator: str | None) -> dict:
        """The live verdict ``verdict_id`` (with ``label_id``, its image's label), checked; raises ``NotPropagable``."""
        v = self._one(f"SELECT v.*, i.label_id FROM verdicts v JOIN images i ON i.id = v.image_id WHERE v.id = ?"
                      f" AND {LIVE}", [verdict_id])
        if v is None:
            raise NotPropagable(f"verdict {verdict_id} is not live (undone or replaced)")
        if annotator is not None and v["annotator"] != annotator:
            raise NotPropagable(f"verdict {verdict_id} is not {annotator!r}'s: only its annotator can apply it")
        if v["reason"] in BLIND:
            raise NotPropagable(f"verdict {verdict_id} is on a random draw that measures ({v['reason']}): it stays"
                                " independent of its copies")
        if v["verdict"] == "unsure":
            raise NotPropagable("an 'unsure' verdict says nothing about the copies")
        return v

    def propagation_offer(self, verdict_id: int, annotator: str, *, now: float | None = None) -> list[dict]:
        """What ``annotator``'s live verdict ``verdict_id`` implies for the other members of its image's group in the
        current run (``implied``), for the members it may still reach (no live verdict; not served to someone
        else, nor as an audit or transfer-check draw): image_id, label, same_label (the source image's label),
        verdict, corrected_label (a class name or None). By image id; [] when the verdict cannot be applied
        (``NotPropagable``) or implies nothing."""
        try:
            v = self._propagable(verdict_id, annotator)
        except NotPropagable:
            return []
        names = {r["id"]: r["name"] for r in self.db.query("SELECT id, name FROM classes")}
        out = []
        for m in self.db.query(_OPEN_MEMBERS, {"src": v["image_id"], "who": annotator,
                                               "now": time.time() if now is None else now}):
            said = implied(v["verdict"], v["label_id"], v["corrected_label_id"], m["label_id"])
            if said is not None:
                out.append({"image_id": m["image_id"], "label": m["label"],
                            "same_label": m["label_id"] == v["label_id"], "verdict": said[0],
                            "corrected_label": names.get(said[1])})
        return out

    def propagation_offers(self, verdict_ids: Iterable[int], annotator: str, *, now: float | None = None) -> list[dict]:
        """``propagation_offer`` of several verdicts (a saved grid page) merged, each row with its ``source`` (verdict
        id): a copy two of them reach with the same implication is offered once (by the first), a copy they
        disagree on not at all. By image id."""
        agreed = agreeing((o["image_id"], (o["verdict"], o["corrected_label"]), o | {"source": vid})
                          for vid in verdict_ids for o in self.propagation_offer(vid, annotator, now=now))
        return [agreed[i] for i in sorted(agreed)]

    def propagate_verdict(self, verdict_id: int, annotator: str, image_ids: Iterable[int], *,
                          session_id: int | None = None) -> list[int]:
        """``propagate_verdicts`` of one source verdict."""
        return self.propagate_verdicts([(verdict_id, image_ids)], annotator, session_id=session_id)

    def propagate_verdicts(self, sources: Iterable[tuple[int, Iterable[int]]], annotator: str, *,
                           session_id: int | None = None) -> list[int]:
        """Apply each of ``annotator``'s live verdicts (source verdict id, image ids) to those of its image ids it may
        still reach (as ``propagation_offer``); returns the new verdict ids, by source, then image id.

        One transaction and one undo step (a shared batch) in ``session_id``: each new verdict is ``implied`` by its
        source, in ``annotator``'s name, reason 'propagated', ``source_id`` = the source; ``annotator``'s leases on
        those images end. Idempotent: an image that has a live verdict meanwhile (this call's twin included), or
        that someone else now holds, is skipped, and so is one two sources imply differently (one applies when
        they agree). Raises ``NotPropagable``, or ``StoreError`` for an id outside its source image's group of the
        current run."""
        now = time.time()
        batch = f"propagated-{secrets.token_hex(6)}"
        with self._tx():
            planned = agreeing((image_id, said, (verdict_id, said)) for verdict_id, image_ids in sources
                               for image_id, said in self._implications(verdict_id, annotator, image_ids, now=now))
            made = []
            for image_id, (verdict_id, said) in sorted(planned.items(), key=lambda kv: (kv[1][0], kv[0])):
                made.append(self.db.execute(
                    "INSERT INTO verdicts (image_id, annotator, verdict, corrected_label_id, reason, source_id,"
                    " session_id, batch, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [image_id, annotator, said[0], said[1], PROPAGATED, verdict_id, session_id, batch, now]).lastrowid)
                self.db.execute("DELETE FROM leases WHERE image_id = ? AND annotator = ?", [image_id, annotator])
        return made

    def _implications(self, verdict_id: int, annotator: str, image_ids: Iterable[int], *,
                      now: float) -> list[tuple[int, tuple]]:
        """(image id, (verdict, corrected label id)) that the checked source verdict implies for those of image_ids
        it may still reach; inside a transaction."""
        wanted = sorted({int(i) for i in image_ids})
        v = self._propagable(verdict_id, annotator)
        group = {r[0] for r in self.db.execute(
            f"SELECT image_id FROM duplicates WHERE run_id = {_CURRENT} AND group_id ="
            f" (SELECT group_id FROM duplicates WHERE run_id = {_CURRENT} AND image_id = ?)", [v["image_id"]])}
        outside = [i for i in wanted if i not in group or i == v["image_id"]]
        if outside:
            raise StoreError(f"images {outside} are not near-duplicates of image {v['image_id']}")
        open_ = {r["image_id"]: r["label_id"] for r in self.db.query(
            _OPEN_MEMBERS, {"src": v["image_id"], "who": annotator, "now": now})}
        out = []
        for image_id in (i for i in wanted if i in open_):
            said = implied(v["verdict"], v["label_id"], v["corrected_label_id"], open_[image_id])
            if said is not None:
                out.append((image_id, said))
        return out
