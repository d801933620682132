"""Store queries for model files: each backbone and scoring checkpoint, registered with its provenance."""

import json
import time
from typing import Any

from .base import StoreBase, _choice

ARTIFACT_KINDS = ("backbone", "scorer", "classifier")


class ArtifactsMixin(StoreBase):
    """The ``artifacts`` table: one row per model file, written after the file is complete on disk."""

    def add_artifact(self, *, kind: str, path: str, backbone_id: str, source: str,
                     provenance: dict[str, Any]) -> int:
        """Register a complete file; returns its id. ``provenance``: plain JSON values. A file written again at
        a registered path (``train-classifier --out`` twice) replaces that path's record."""
        _choice(kind, ARTIFACT_KINDS, "artifact kind")
        with self._tx():
            self.db.execute("DELETE FROM artifacts WHERE path = ?", [str(path)])
            return self.db.execute(
                "INSERT INTO artifacts (kind, path, backbone_id, source, provenance, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [kind, str(path), backbone_id, source, json.dumps(provenance), time.time()]).lastrowid

    def latest_artifact(self, kind: str) -> dict | None:
        """The most recently registered artifact of ``kind`` (provenance decoded), or None."""
        return self._decode(self._one("SELECT * FROM artifacts WHERE kind = ? ORDER BY id DESC LIMIT 1", [kind]))

    def artifact_at(self, path: str) -> dict | None:
        """The artifact registered for the file ``path``, or None."""
        return self._decode(self._one("SELECT * FROM artifacts WHERE path = ?", [str(path)]))

    def artifacts(self, kind: str | None = None) -> list[dict]:
        """Every artifact (of ``kind``), oldest first."""
        where, params = ("WHERE kind = ?", [kind]) if kind else ("", [])
        return [self._decode(r) for r in self._all(f"SELECT * FROM artifacts {where} ORDER BY id", params)]

    @staticmethod
    def _decode(row: dict | None) -> dict | None:
        return None if row is None else row | {"provenance": json.loads(row["provenance"])}
