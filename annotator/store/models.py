"""Store queries for models and scores, worker status, retrain requests and settings."""

import copy
import json
import time
from array import array
from collections.abc import Callable, Iterable
from itertools import islice
from typing import Any

from .base import (REQUEST_KINDS, SCORE_COLUMNS, SETTING_DEFAULTS, WORKER_FIELDS, StoreBase, StoreError, _choice,
                   _ids_json)

_QUEUE_KEY = "model_version, label_id, uncertainty, image_id"  # the primary key of scores_queue


def _after_batch(written: int, progress: Callable[[int], None] | None, pause: float) -> None:
    """Between two of a bulk write's transactions: report, then leave the lock to other writers."""
    if progress is not None:
        progress(written)
    time.sleep(pause)


class ModelsMixin(StoreBase):
    """Model versions and their scores, the worker's status row, retrain requests, settings."""

    # -- settings -----------------------------------------------------------------------
    def get_setting(self, key: str) -> Any:
        """Stored value (JSON-decoded), else the code default from ``SETTING_DEFAULTS``, else None."""
        row = self._one("SELECT value FROM settings WHERE key = ?", [key])
        return json.loads(row["value"]) if row else copy.deepcopy(SETTING_DEFAULTS.get(key))

    def set_setting(self, key: str, value: Any) -> None:
        """Store ``value`` as JSON."""
        with self._tx():
            self.db.execute("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                            "value = excluded.value", [key, json.dumps(value)])

    def settings(self) -> dict[str, Any]:
        """Defaults overlaid with stored values."""
        return {**copy.deepcopy(SETTING_DEFAULTS), **{r["key"]: json.loads(r["value"]) for r in self.db.query(
            "SELECT key, value FROM settings")}}

    # -- worker status ------------------------------------------------------------------
    def worker_update(self, **fields: Any) -> None:
        """Upsert the single worker row; ``heartbeat`` defaults to now. Fields: ``WORKER_FIELDS``."""
        bad = set(fields) - set(WORKER_FIELDS)
        if bad:
            raise ValueError(f"unknown worker fields {sorted(bad)}; valid: {', '.join(WORKER_FIELDS)}")
        fields.setdefault("heartbeat", time.time())
        cols = list(fields)
        with self._tx():
            self.db.execute(
                f"INSERT INTO worker (id, {', '.join(cols)}) VALUES (1, {', '.join('?' * len(cols))}) ON CONFLICT(id)"
                f" DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in cols)}", list(fields.values()))

    def worker_state(self) -> dict:
        """Worker row (all ``WORKER_FIELDS``, None if never written) plus ``heartbeat_age_s``."""
        state = self._one("SELECT * FROM worker WHERE id = 1") or {}
        state = {f: state.get(f) for f in WORKER_FIELDS}
        state["heartbeat_age_s"] = time.time() - state["heartbeat"] if state["heartbeat"] else None
        return state

    # -- retrain requests ---------------------------------------------------------------
    def request(self, kind: str, by: str | None = None) -> int:
        """Queue a 'retrain' or 'full' request; returns an id (an unstarted one of the same kind is reused)."""
        _choice(kind, REQUEST_KINDS, "request kind")
        with self._tx():
            same = self._scalar("SELECT id FROM requests WHERE kind = ? AND started_at IS NULL AND done_at IS NULL"
                                " ORDER BY id LIMIT 1", [kind])
            if same is not None:
                return same
            return self.db.execute("INSERT INTO requests (kind, requested_by, created_at) VALUES (?, ?, ?)",
                                   [kind, by, time.time()]).lastrowid

    def pending_request(self) -> dict | None:
        """Oldest request not done yet (started or not), or None."""
        return self._one("SELECT * FROM requests WHERE done_at IS NULL ORDER BY id LIMIT 1")

    def mark_request(self, request_id: int, *, started: bool = False, done: bool = False) -> None:
        """Stamp ``started_at`` and/or ``done_at`` with now."""
        now = time.time()
        with self._tx():
            if started:
                self.db.execute("UPDATE requests SET started_at = ? WHERE id = ?", [now, request_id])
            if done:
                self.db.execute("UPDATE requests SET done_at = ? WHERE id = ?", [now, request_id])

    # -- models and scores --------------------------------------------------------------
    def add_model(self, *, delta: float, metrics: dict | None = None, checkpoint: str | None = None,
                  backbone: str | None = None, n_verdicts: int | None = None) -> int:
        """Register a trained model (not current yet); returns its version (1, 2, ...)."""
        with self._tx():
            version = self._scalar("SELECT COALESCE(MAX(version), 0) + 1 FROM models")
            self.db.execute(
                "INSERT INTO models (version, created_at, delta, metrics, checkpoint, backbone, n_verdicts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [version, time.time(), delta, json.dumps(metrics), checkpoint, backbone, n_verdicts])
        return version

    def _model_exists(self, version: int) -> None:
        if self._scalar("SELECT 1 FROM models WHERE version = ?", [version]) is None:
            raise StoreError(f"unknown model version {version}")

    def write_scores(self, version: int, rows: Iterable[tuple], *, batch: int = 5000, pause: float = 0.0,
                     progress: Callable[[int], None] | None = None) -> int:
        """Insert/replace score rows, ``batch`` per transaction; returns the row count.

        Each row: (image_id, label_id, score, uncertainty[, suggested_label_id, suggested_score[, expected_wrong]])
        (``SCORE_COLUMNS``; the columns left off are NULL), score = the model's score (higher = label more likely
        correct), uncertainty = the image's queue key, lower = served first (``annotator.publish.queue_order``:
        |score - delta| for a calibrated model; the review queue, ``annotator.queue``, serves label conflicts and
        audit draws besides this order), expected_wrong = P(label wrong) for counting wrong labels (None: the
        method has none; ``annotator.estimates`` counts 1 - score).
        Rows go into ``scores`` in the order given (by image id, its key, each transaction appends), then
        their queue entries into ``scores_queue`` sorted by its key (appends too, as the version's key range
        is new): write a new version's rows in one call. ``pause`` seconds after each transaction let other
        writers (annotators' leases and verdicts) take the lock. ``progress(k)`` after each transaction: k =
        rows written to either table so far (twice the row count at the end when no image is given twice).
        """
        import numpy as np  # here, not at the top: the CLI's start-up imports the store without numpy

        self._model_exists(version)
        replacing = self._scalar("SELECT 1 FROM scores WHERE model_version = ? LIMIT 1", [version]) is not None
        ids, labels, uncertainty = array("q"), array("q"), array("d")  # the rows' queue keys, in row order
        n = 0
        it = iter(rows)
        while chunk := list(islice(it, batch)):
            columns = list(zip(*chunk))
            with self._tx():
                if replacing:  # a replaced row's queue entry goes with it
                    self.db.execute(f"DELETE FROM scores_queue WHERE ({_QUEUE_KEY}) IN (SELECT {_QUEUE_KEY} FROM "
                                    "scores WHERE model_version = ? AND image_id IN (SELECT value FROM json_each(?)))",
                                    [version, _ids_json(columns[0])])
                self.db.conn.executemany(
                    f"INSERT OR REPLACE INTO scores (model_version, {', '.join(SCORE_COLUMNS)})"
                    f" VALUES ({int(version)}, {', '.join('?' * len(SCORE_COLUMNS))})",
                    [r if len(r) == len(SCORE_COLUMNS) else (*r, *(None,) * (len(SCORE_COLUMNS) - len(r)))
                     for r in chunk])
            ids.extend(columns[0])
            labels.extend(columns[1])
            uncertainty.extend(columns[3])
            n += len(chunk)
            _after_batch(n, progress, pause)
        i, c, u = np.frombuffer(ids, np.int64), np.frombuffer(labels, np.int64), np.frombuffer(uncertainty, np.float64)
        last = len(i) - 1 - np.unique(i[::-1], return_index=True)[1]  # an image given twice: its last row counts
        order = last[np.lexsort((i[last], u[last], c[last]))]  # scores_queue's key order
        entries = list(zip(c[order].tolist(), u[order].tolist(), i[order].tolist()))
        for start in range(0, len(entries), batch):
            with self._tx():
                self.db.conn.executemany("INSERT OR REPLACE INTO scores_queue (model_version, label_id, uncertainty,"
                                         f" image_id) VALUES ({int(version)}, ?, ?, ?)", entries[start:start + batch])
            _after_batch(n + min(start + batch, len(entries)), progress, pause)
        return n

    def make_current(self, version: int) -> None:
        """Make ``version`` the only current model, in one transaction."""
        with self._tx():
            self._model_exists(version)
            self.db.execute("UPDATE models SET is_current = (version = ?)", [version])

    def delete_scores(self, version: int, *, batch: int = 5000, pause: float = 0.0) -> int:
        """Drop the scores of an old model version and their queue entries, ``batch`` rows per transaction (a
        million rows in one transaction would hold the write lock, and so every annotator's next item, for
        seconds), each in its table's key order; ``pause`` as in ``write_scores``. Returns the score rows deleted."""
        for table, key in (("scores_queue", _QUEUE_KEY), ("scores", "rowid")):
            n = 0
            while True:
                with self._tx():
                    k = self.db.execute(f"DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} "
                                        "WHERE model_version = ? LIMIT ?)", [version, batch]).rowcount
                n += k
                if k < batch:
                    break
                time.sleep(pause)
        return n

    def _model_row(self, row: dict) -> dict:
        row["metrics"] = json.loads(row["metrics"]) if row["metrics"] else None
        return row

    def current_model(self) -> dict | None:
        """The current model row (``metrics`` decoded), or None."""
        row = self._one("SELECT * FROM models WHERE is_current = 1")
        return self._model_row(row) if row else None

    def models(self) -> list[dict]:
        """All model rows by version (``metrics`` decoded)."""
        return [self._model_row(r) for r in self.db.query("SELECT * FROM models ORDER BY version")]

    def current_scores(self) -> dict[int, float]:
        """{image_id: score} of the current model ({} without one); for the full round's sample weights."""
        return {r[0]: r[1] for r in self.db.execute(
            "SELECT s.image_id, s.score FROM scores s JOIN models m ON m.version = s.model_version"
            " WHERE m.is_current = 1").fetchall()}
