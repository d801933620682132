"""Store queries for verdicts (append-only) and leases."""

import json
import sqlite3
import time
from collections.abc import Iterable

from .schema import LIVE
from .base import (REASONS, UNDO_DEPTH, VERDICTS, AlreadyJudged, LeaseLost, StoreBase, StoreError, UnknownImage,
                   _choice, _ids_json)

NOTE_MAX = 500  # characters of a lead's reason for an override


class VerdictChanged(StoreError):
    """The image's live verdict is no longer the one a lead chose to override (undone or replaced since)."""


class SameLabel(StoreError):
    """A 'wrong' verdict whose true class is the image's own label: that says the label is right."""


class VerdictsMixin(StoreBase):
    """Verdicts, undo and overrides; per-image leases."""

    # -- verdicts (append-only) ---------------------------------------------------------
    def _live_on(self, image_id: int) -> dict | None:
        return self._one(f"SELECT * FROM verdicts v WHERE v.image_id = ? AND {LIVE}", [image_id])

    def _insert_verdict(self, values: dict) -> int:
        cols = ", ".join(values)
        try:
            cur = self.db.execute(f"INSERT INTO verdicts ({cols}) VALUES ({', '.join('?' * len(values))})",
                                  list(values.values()))
        except sqlite3.IntegrityError as e:  # the schema's trigger: a live verdict appeared (another writer)
            if "live verdict" in str(e):
                raise AlreadyJudged(f"image {values['image_id']} already has a live verdict") from e
            raise
        return cur.lastrowid

    def _label_of(self, image_id: int, corrected: int | None) -> int:
        """The image's label id; raises ``UnknownImage``, or ``SameLabel`` when ``corrected`` is that label."""
        label = self._scalar("SELECT label_id FROM images WHERE id = ?", [image_id])
        if label is None:
            raise UnknownImage(f"unknown image id {image_id}")
        if corrected == label:
            raise SameLabel(f"the true class of image {image_id} cannot be its own label: mark it correct instead")
        return label

    def _void(self, row: dict, by: str, now: float) -> None:
        """Append the undo row voiding verdict ``row`` (a copy of it with ``voids`` set, by ``by``), and void the
        live verdicts applied from it to near-duplicates (``source_id``): an undo, a relabel or an override of
        a verdict takes back what it said about the copies too, which go back to the queue."""
        self._insert_verdict({k: row[k] for k in ("image_id", "verdict", "corrected_label_id", "reason",
                                                  "model_version", "session_id", "batch", "note", "source_id")}
                             | {"annotator": by, "voids": row["id"], "created_at": now})
        for copy in self._all(f"SELECT * FROM verdicts v WHERE v.source_id = ? AND v.voids IS NULL AND {LIVE}",
                              [row["id"]]):
            self._void(copy, by, now)

    def record_verdict(self, image_id: int, annotator: str, verdict: str, *, reason: str,
                       corrected_label: str | None = None, model_version: int | None = None,
                       session_id: int | None = None, batch: str | None = None) -> int:
        """Append a verdict and release ``annotator``'s lease on the image; returns the verdict id.

        At most one live verdict per image: an image that already has one is refused with
        ``AlreadyJudged`` (change a verdict by undo, then a new verdict, or by a lead's
        ``override_verdict``). The check and the insert share one write transaction, and a schema
        trigger enforces the same rule for any other writer. ``corrected_label`` (a class name other than
        the image's label) is only allowed with verdict 'wrong'. ``session_id`` (login session) and ``batch``
        (a grid page) scope undo. Raises ``ValueError`` (bad verdict/reason), ``UnknownClass``,
        ``UnknownImage``, ``SameLabel``, ``AlreadyJudged``, or ``LeaseLost`` when another annotator holds a
        live lease on the image.
        """
        _choice(verdict, VERDICTS, "verdict")
        _choice(reason, REASONS, "reason")
        if corrected_label is not None and verdict != "wrong":
            raise ValueError("corrected_label is only allowed with verdict 'wrong'")
        now = time.time()
        with self._tx():
            corrected = self.class_id(corrected_label) if corrected_label is not None else None
            self._label_of(image_id, corrected)
            live = self._live_on(image_id)
            if live is not None:  # the message goes to the annotator's screen: it names nobody else
                who = "you" if live["annotator"] == annotator else "another annotator"
                raise AlreadyJudged(f"image {image_id} already has a verdict ({live['verdict']}, by {who})")
            holder = self.held_by(image_id, now=now)
            if holder is not None and holder != annotator:
                raise LeaseLost(f"image {image_id} is being reviewed by another annotator")
            vid = self._insert_verdict({"image_id": image_id, "annotator": annotator, "verdict": verdict,
                                        "corrected_label_id": corrected, "reason": reason,
                                        "model_version": model_version, "session_id": session_id, "batch": batch,
                                        "created_at": now})
            self.db.execute("DELETE FROM leases WHERE image_id = ? AND annotator = ?", [image_id, annotator])
        return vid

    def override_verdict(self, image_id: int, lead: str, verdict: str, *, corrected_label: str | None = None,
                         replaces: int | None = None, note: str | None = None, session_id: int | None = None) -> int:
        """A lead replaces an image's verdict: in one transaction the live verdict (if any) is voided by an
        undo row in ``lead``'s name and the new one (reason 'manual', ``note`` = the lead's reason) appended.
        Returns the new id.

        ``replaces``: the id of the live verdict the lead saw; unless it is still the image's live verdict
        (an undo or another override came first), the override is refused with ``VerdictChanged``. A new
        verdict equal to the live one (verdict and corrected label) is refused with ``AlreadyJudged``.
        ``lead`` is matched as ``get_user`` matches names; the verdicts carry the stored name.
        Raises ``StoreError`` unless ``lead`` is an active lead, ``UnknownImage``, ``UnknownClass``,
        ``SameLabel``, ``ValueError`` (bad verdict, a corrected label without 'wrong', a note over
        ``NOTE_MAX`` characters).
        """
        _choice(verdict, VERDICTS, "verdict")
        if corrected_label is not None and verdict != "wrong":
            raise ValueError("corrected_label is only allowed with verdict 'wrong'")
        note = (note or "").strip() or None
        if note is not None and len(note) > NOTE_MAX:
            raise ValueError(f"the note is {len(note)} characters; at most {NOTE_MAX}")
        now = time.time()
        with self._tx():
            user = self.get_user(lead)
            if user is None or user["role"] != "lead" or not user["active"]:
                raise StoreError(f"only an active lead can override a verdict ({lead!r} is not one)")
            lead = user["name"]
            corrected = self.class_id(corrected_label) if corrected_label is not None else None
            self._label_of(image_id, corrected)
            live = self._live_on(image_id)
            if replaces is not None and (live is None or live["id"] != replaces):
                now_is = "it has none now" if live is None else f"now: {live['verdict']}, by {live['annotator']!r}"
                raise VerdictChanged(f"the verdict on image {image_id} changed since it was shown ({now_is})")
            if live is not None and (live["verdict"], live["corrected_label_id"]) == (verdict, corrected):
                raise AlreadyJudged(f"image {image_id} already has this verdict ({verdict}, by {live['annotator']!r})")
            if live is not None:
                self._void(live, lead, now)
            vid = self._insert_verdict({"image_id": image_id, "annotator": lead, "verdict": verdict,
                                        "corrected_label_id": corrected, "reason": "manual", "note": note,
                                        "session_id": session_id, "created_at": now})
            self.db.execute("DELETE FROM leases WHERE image_id = ?", [image_id])
        return vid

    def undo_last(self, annotator: str, *, session_id: int | None = None, depth: int = UNDO_DEPTH) -> list[int]:
        """Void ``annotator``'s most recent undoable step; returns the voided verdict ids ([] if none).

        A step is one verdict, or every verdict of one batch (a grid page is undone as a whole). With
        ``session_id`` only that login session's verdicts count (undo never reaches into an earlier
        session), and only the last ``depth`` steps of the scope can be undone, so repeated undo stops there.
        """
        scope, params = "v.annotator = ? AND v.voids IS NULL", [annotator]
        if session_id is not None:
            scope, params = scope + " AND v.session_id = ?", params + [session_id]
        with self._tx():
            steps = [r["step"] for r in self.db.query(
                f"SELECT COALESCE(v.batch, CAST(v.id AS TEXT)) AS step FROM verdicts v WHERE {scope}"
                " GROUP BY step ORDER BY MAX(v.id) DESC LIMIT ?", params + [depth])]
            rows = self._all(
                f"SELECT * FROM verdicts v WHERE {scope} AND {LIVE} AND COALESCE(v.batch, CAST(v.id AS TEXT))"
                " IN (SELECT value FROM json_each(?)) ORDER BY v.id DESC", params + [json.dumps(steps)])
            if not rows:
                return []
            step = rows[0]["batch"] or str(rows[0]["id"])
            rows = [r for r in rows if (r["batch"] or str(r["id"])) == step]
            now = time.time()
            for r in rows:
                self._void(r, annotator, now)
        return [r["id"] for r in rows]

    def live_verdict(self, image_id: int) -> dict | None:
        """The image's live verdict (a verdicts row plus ``corrected_label``, the class name), or None."""
        return self._one("SELECT v.*, c.name AS corrected_label FROM verdicts v LEFT JOIN classes c"
                         f" ON c.id = v.corrected_label_id WHERE v.image_id = ? AND {LIVE}", [image_id])

    def recent_verdicts(self, limit: int = 20) -> list[dict]:
        """The ``limit`` most recent live verdicts, newest first: id, image_id, label (the image's noisy
        label), verdict, corrected_label, annotator, created_at, note."""
        return self._all(
            "SELECT v.id, v.image_id, ic.name AS label, v.verdict, c.name AS corrected_label, v.annotator,"
            " v.created_at, v.note FROM verdicts v JOIN images i ON i.id = v.image_id"
            " JOIN classes ic ON ic.id = i.label_id LEFT JOIN classes c ON c.id = v.corrected_label_id"
            f" WHERE {LIVE} ORDER BY v.id DESC LIMIT ?", [limit])

    def live_verdicts(self) -> list[dict]:
        """Live verdicts by id: id, image_id, verdict, corrected_label_id, reason, annotator, created_at,
        model_version, label_id (the image's current noisy label). At most one per image."""
        return self._all(
            "SELECT v.id, v.image_id, v.verdict, v.corrected_label_id, v.reason, v.annotator, v.created_at,"
            f" v.model_version, i.label_id FROM verdicts v JOIN images i ON i.id = v.image_id WHERE {LIVE}"
            " ORDER BY v.id")

    def verdict_count(self, live_only: bool = True) -> int:
        """Live verdicts, or (``live_only=False``) every verdict ever given, undone ones included."""
        where = LIVE if live_only else "v.voids IS NULL"
        return self._scalar(f"SELECT COUNT(*) FROM verdicts v WHERE {where}")

    def max_verdict_id(self) -> int:
        """Highest verdict row id (undo rows included), 0 if none: a watermark for ``verdicts_since``."""
        return self._scalar("SELECT COALESCE(MAX(id), 0) FROM verdicts")

    def verdicts_since(self, verdict_id: int, *, trains: bool = False) -> int:
        """Number of live verdicts with id > ``verdict_id``; ``trains``: only those a round fits or validates on
        (correct or wrong, not a transfer-check verdict: those measure the model and never train it)."""
        where = " AND v.verdict IN ('correct', 'wrong') AND v.reason != 'transfer_check'" if trains else ""
        return self._scalar(f"SELECT COUNT(*) FROM verdicts v WHERE v.id > ? AND {LIVE}{where}", [verdict_id])

    def annotator_stats(self, since: float) -> list[dict]:
        """Per annotator, verdicts created at or after ``since``: n (live), correct, wrong, unsure,
        undone, first_at, last_at. Busiest first.

        ``undone`` counts the annotator's own undos only. A relabel (``relabel_verdict``) and an override
        (``override_verdict``) also void a verdict, but in the same transaction the undo row is followed at
        the next id by the replacement on the same image: a relabel's copy keeps the voided verdict's
        ``created_at``, an override's verdict shares the undo row's. Such voids are no undos; an override
        of someone else's verdict is the lead's undo row, not the annotator's. The voided verdict is not
        counted in ``n`` either (its replacement is, for whoever gave it)."""
        return self._all(
            "SELECT v.annotator, SUM(u.id IS NULL) AS n, SUM(u.id IS NULL AND v.verdict = 'correct') AS correct,"
            " SUM(u.id IS NULL AND v.verdict = 'wrong') AS wrong, SUM(u.id IS NULL AND v.verdict = 'unsure')"
            " AS unsure, SUM(u.id IS NOT NULL AND u.annotator = v.annotator AND NOT EXISTS (SELECT 1 FROM"
            " verdicts c WHERE c.id = u.id + 1 AND c.voids IS NULL AND c.image_id = v.image_id"
            " AND c.created_at IN (v.created_at, u.created_at))) AS undone, MIN(v.created_at) AS first_at,"
            " MAX(v.created_at) AS last_at FROM verdicts v LEFT JOIN verdicts u ON u.voids = v.id"
            " WHERE v.voids IS NULL AND v.created_at >= ? GROUP BY v.annotator ORDER BY n DESC, v.annotator",
            [since])

    def get_verdict(self, verdict_id: int) -> dict | None:
        """One verdict row (undo rows too), or None."""
        return self._one("SELECT * FROM verdicts WHERE id = ?", [verdict_id])

    def relabel_verdict(self, verdict_id: int, annotator: str, corrected_label: str) -> int:
        """Give ``annotator``'s live 'wrong' verdict a corrected label; returns the new verdict's id.

        Append-only like undo: in one transaction an undo row voids the verdict and a copy with
        ``corrected_label`` (and the original ``created_at``) is appended, so a later ``undo_last``
        removes the whole verdict. Raises ``StoreError`` unless ``verdict_id`` is a live 'wrong'
        verdict of ``annotator``, ``UnknownClass`` for a bad class name, ``SameLabel`` for the image's own label.
        """
        with self._tx():
            corrected = self.class_id(corrected_label)
            v = self._one(f"SELECT * FROM verdicts v WHERE v.id = ? AND v.annotator = ? AND v.verdict = 'wrong'"
                          f" AND {LIVE}", [verdict_id, annotator])
            if v is None:
                raise StoreError(f"verdict {verdict_id} is not a live 'wrong' verdict of {annotator!r}")
            self._label_of(v["image_id"], corrected)
            now = time.time()
            self._void(v, annotator, now)
            # the copy stays in the original's undo step (batch, else the original's id)
            return self._insert_verdict({k: v[k] for k in ("image_id", "annotator", "verdict", "reason", "model_version",
                                                           "session_id", "note", "source_id", "created_at")}
                                        | {"corrected_label_id": corrected, "batch": v["batch"] or str(v["id"])})

    def audit_counts(self) -> dict[str, dict[str, int]]:
        """Live 'audit' verdicts per class of the image's noisy label: ``{name: {"correct", "wrong", "unsure"}}``,
        by name. Audit items are uniform random draws, so wrong / (correct + wrong) estimates a class's
        noise rate without bias."""
        return {r["name"]: {"correct": r["correct"], "wrong": r["wrong"], "unsure": r["unsure"]} for r in self.db.query(
            "SELECT c.name, SUM(v.verdict = 'correct') AS correct, SUM(v.verdict = 'wrong') AS wrong,"
            " SUM(v.verdict = 'unsure') AS unsure FROM verdicts v JOIN images i ON i.id = v.image_id"
            f" JOIN classes c ON c.id = i.label_id WHERE v.reason = 'audit' AND {LIVE} GROUP BY c.id ORDER BY c.name")}

    # -- leases -------------------------------------------------------------------------
    def acquire_leases(self, annotator: str, image_ids: Iterable[int], seconds: float, *,
                       now: float | None = None, stagger: float = 0.0,
                       reasons: dict[int, str] | None = None) -> list[int]:
        """Atomically lease to ``annotator`` those of ``image_ids`` that exist, have no live verdict and
        no live lease by someone else (expired leases are taken over, own leases renewed).
        Returns the granted ids in the order given. With ``stagger`` > 0 the k-th granted id
        expires ``k * stagger`` s later, so expiry order (``leased_candidates``) keeps the given order.
        ``reasons`` records why each image is served (a renewal without one keeps the stored reason)."""
        now = time.time() if now is None else now
        ids = list(dict.fromkeys(int(i) for i in image_ids))
        wanted = _ids_json(ids)
        with self._tx():
            self.db.execute("DELETE FROM leases WHERE expires_at <= ?", [now])
            existing = {r["id"] for r in self.db.query(
                "SELECT id FROM images WHERE id IN (SELECT value FROM json_each(?))", [wanted])}
            blocked = {r["image_id"] for r in self.db.query(
                "SELECT image_id FROM leases WHERE image_id IN (SELECT value FROM json_each(?)) AND annotator != ?",
                [wanted, annotator])}
            blocked |= {r["image_id"] for r in self.db.query(
                f"SELECT v.image_id FROM verdicts v WHERE v.image_id IN (SELECT value FROM json_each(?)) AND {LIVE}",
                [wanted])}
            granted = [i for i in ids if i in existing and i not in blocked]
            reasons = reasons or {}
            self.db.conn.executemany(
                "INSERT INTO leases (image_id, annotator, expires_at, reason) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(image_id) DO UPDATE SET annotator = excluded.annotator,"
                " expires_at = excluded.expires_at, reason = COALESCE(excluded.reason,"
                " CASE WHEN leases.annotator = excluded.annotator THEN leases.reason END)",
                [(i, annotator, now + seconds + k * stagger, reasons.get(i)) for k, i in enumerate(granted)])
        return granted

    def lease_reasons(self, annotator: str, image_ids: Iterable[int]) -> dict[int, str | None]:
        """``{image_id: reason}`` recorded when ``annotator``'s leases on ``image_ids`` were granted."""
        return {r[0]: r[1] for r in self.db.execute(
            "SELECT image_id, reason FROM leases WHERE annotator = ? AND image_id IN (SELECT value FROM json_each(?))",
            [annotator, _ids_json(image_ids)])}

    def release_leases(self, annotator: str, image_ids: Iterable[int] | None = None) -> int:
        """Drop ``annotator``'s leases (all, or only ``image_ids``); returns how many."""
        with self._tx():
            if image_ids is None:
                cur = self.db.execute("DELETE FROM leases WHERE annotator = ?", [annotator])
            else:
                cur = self.db.execute("DELETE FROM leases WHERE annotator = ? AND image_id IN "
                                      "(SELECT value FROM json_each(?))", [annotator, _ids_json(image_ids)])
        return cur.rowcount

    def held_by(self, image_id: int, *, now: float | None = None) -> str | None:
        """Annotator holding a live lease on the image, or None."""
        now = time.time() if now is None else now
        return self._scalar("SELECT annotator FROM leases WHERE image_id = ? AND expires_at > ?", [image_id, now])

    def leased_to(self, annotator: str, *, now: float | None = None) -> list[int]:
        """Image ids with a live lease held by ``annotator`` (e.g. to resume after a page reload)."""
        now = time.time() if now is None else now
        return [r["image_id"] for r in self.db.query(
            "SELECT image_id FROM leases WHERE annotator = ? AND expires_at > ? ORDER BY image_id", [annotator, now])]
