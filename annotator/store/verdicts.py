"""Store queries for verdicts (append-only), leases and users."""

import sqlite3
import time
from collections.abc import Iterable
from typing import Any

from ..schema import LIVE
from .base import (REASONS, ROLES, VERDICTS, LeaseLost, StoreBase, StoreError, UnknownImage, UnknownUser, _choice,
                   _ids_json)


class VerdictsMixin(StoreBase):
    """Verdicts and undo, per-image leases, user accounts."""

    # -- verdicts (append-only) ---------------------------------------------------------
    def record_verdict(self, image_id: int, annotator: str, verdict: str, *, reason: str,
                       corrected_label: str | None = None, model_version: int | None = None) -> int:
        """Append a verdict and release ``annotator``'s lease on the image; returns the verdict id.

        ``corrected_label`` (a class name) is only allowed with verdict 'wrong'. Raises
        ``ValueError`` (bad verdict/reason), ``UnknownClass``, ``UnknownImage``, or
        ``LeaseLost`` when another annotator holds a live lease on the image.
        """
        _choice(verdict, VERDICTS, "verdict")
        _choice(reason, REASONS, "reason")
        if corrected_label is not None and verdict != "wrong":
            raise ValueError("corrected_label is only allowed with verdict 'wrong'")
        now = time.time()
        with self._tx():
            corrected = self.class_id(corrected_label) if corrected_label is not None else None
            if self._scalar("SELECT 1 FROM images WHERE id = ?", [image_id]) is None:
                raise UnknownImage(f"unknown image id {image_id}")
            holder = self.held_by(image_id, now=now)
            if holder is not None and holder != annotator:
                raise LeaseLost(f"image {image_id} is leased to {holder!r}")
            cur = self.db.execute(
                "INSERT INTO verdicts (image_id, annotator, verdict, corrected_label_id, reason, model_version,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [image_id, annotator, verdict, corrected, reason, model_version, now])
            self.db.execute("DELETE FROM leases WHERE image_id = ? AND annotator = ?", [image_id, annotator])
        return cur.lastrowid

    def undo_last(self, annotator: str) -> int | None:
        """Void ``annotator``'s most recent live verdict with a new undo row; returns the voided id or None."""
        with self._tx():
            last = self._one(f"SELECT * FROM verdicts v WHERE v.annotator = ? AND {LIVE} ORDER BY v.id DESC LIMIT 1",
                             [annotator])
            if last is None:
                return None
            self.db.execute(
                "INSERT INTO verdicts (image_id, annotator, verdict, corrected_label_id, reason, model_version,"
                " voids, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [last["image_id"], annotator, last["verdict"], last["corrected_label_id"], last["reason"],
                 last["model_version"], last["id"], time.time()])
        return last["id"]

    def live_verdicts(self) -> list[dict]:
        """Live verdicts by id: id, image_id, verdict, corrected_label_id, reason, annotator, created_at,
        model_version, label_id (the image's current noisy label). An image may have several."""
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

    def verdicts_since(self, verdict_id: int) -> int:
        """Number of live verdicts with id > ``verdict_id``."""
        return self._scalar(f"SELECT COUNT(*) FROM verdicts v WHERE v.id > ? AND {LIVE}", [verdict_id])

    def annotator_stats(self, since: float) -> list[dict]:
        """Per annotator, verdicts created at or after ``since``: n (live), correct, wrong, unsure,
        undone, first_at, last_at. Busiest first.

        ``undone`` counts undos only. A relabel (``relabel_verdict``) also voids a verdict, but its undo row is
        followed, in the same transaction, by the verdict's copy (same image, annotator and ``created_at``)
        at the next id: such voided verdicts are neither undone nor counted in ``n`` (the copy is)."""
        return self._all(
            "SELECT v.annotator, SUM(u.id IS NULL) AS n, SUM(u.id IS NULL AND v.verdict = 'correct') AS correct,"
            " SUM(u.id IS NULL AND v.verdict = 'wrong') AS wrong, SUM(u.id IS NULL AND v.verdict = 'unsure')"
            " AS unsure, SUM(u.id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM verdicts c WHERE c.id = u.id + 1"
            " AND c.voids IS NULL AND c.image_id = v.image_id AND c.annotator = v.annotator"
            " AND c.created_at = v.created_at)) AS undone, MIN(v.created_at) AS first_at,"
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
        verdict of ``annotator``, ``UnknownClass`` for a bad class name.
        """
        with self._tx():
            corrected = self.class_id(corrected_label)
            v = self._one(f"SELECT * FROM verdicts v WHERE v.id = ? AND v.annotator = ? AND v.verdict = 'wrong'"
                          f" AND {LIVE}", [verdict_id, annotator])
            if v is None:
                raise StoreError(f"verdict {verdict_id} is not a live 'wrong' verdict of {annotator!r}")
            cols = "image_id, annotator, verdict, corrected_label_id, reason, model_version, voids, created_at"
            self.db.execute(f"INSERT INTO verdicts ({cols}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            [v["image_id"], annotator, "wrong", v["corrected_label_id"], v["reason"],
                             v["model_version"], verdict_id, time.time()])
            cur = self.db.execute(f"INSERT INTO verdicts ({cols}) VALUES (?, ?, ?, ?, ?, ?, NULL, ?)",
                                  [v["image_id"], annotator, "wrong", corrected, v["reason"], v["model_version"],
                                   v["created_at"]])
        return cur.lastrowid

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

    # -- users --------------------------------------------------------------------------
    def add_user(self, name: str, role: str, password_hash: str) -> None:
        """Create a user; raises ``StoreError`` if the name exists, ``ValueError`` for a bad role."""
        _choice(role, ROLES, "role")
        try:
            with self._tx():
                self.db.execute("INSERT INTO users (name, role, password_hash, created_at) VALUES (?, ?, ?, ?)",
                                [name, role, password_hash, time.time()])
        except sqlite3.IntegrityError as e:
            raise StoreError(f"user {name!r} already exists") from e

    def get_user(self, name: str) -> dict | None:
        """The user row (password_hash included), or None."""
        return self._one("SELECT * FROM users WHERE name = ?", [name])

    def list_users(self) -> list[dict]:
        """All users by name, without password hashes."""
        return self._all("SELECT name, role, created_at, active FROM users ORDER BY name")

    def _update_user(self, name: str, column: str, value: Any) -> None:
        with self._tx():
            if self.db.execute(f"UPDATE users SET {column} = ? WHERE name = ?", [value, name]).rowcount == 0:
                raise UnknownUser(f"unknown user {name!r}")

    def set_user_active(self, name: str, active: bool = True) -> None:
        """Enable or disable a login; raises ``UnknownUser``."""
        self._update_user(name, "active", int(active))

    def set_password_hash(self, name: str, password_hash: str) -> None:
        """Replace a user's password hash; raises ``UnknownUser``."""
        self._update_user(name, "password_hash", password_hash)
