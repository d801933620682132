"""The one package that owns the SQLite connection, the schema and every query.

``Store`` is composed of one mixin per area, each in its own module:

- ``schema``: the tables and the migrations that build them;
- ``base``: connection, pragmas (WAL, busy timeout, foreign keys), ``_tx``, running the migrations, errors;
- ``catalog``: classes, images, ingest errors;
- ``verdicts``: append-only verdicts, undo and overrides, leases;
- ``accounts``: users, server-side login sessions, login attempts;
- ``models``: model versions and scores, worker status, retrain requests, settings;
- ``artifacts``: model files (backbones, scoring checkpoints, classifiers) and their provenance;
- ``review``: candidate queries of the review queue;
- ``exports``: paged rows for the CSV export;
- ``duplicates``: near-duplicate groups and outlier scores; a verdict applied to an image's near-duplicates.
- ``standing``: one compact row per image for the lead's estimates.

No other module writes SQL. See ``base`` for the concurrency rules (one Store per
thread or process).
"""

from .schema import LIVE, MIGRATIONS, SCHEMA_VERSION  # noqa: F401  (re-exported for callers of annotator.store)
from .accounts import SESSION_IDLE_S, SESSION_MAX_S, AccountsMixin, user_key
from .artifacts import ARTIFACT_KINDS, ArtifactsMixin
from .base import (REASONS, REQUEST_KINDS, ROLES, SCORE_COLUMNS, SETTING_DEFAULTS, UNDO_DEPTH, VERDICTS, WORKER_FIELDS,
                   AddResult, AlreadyJudged, LeaseLost, StoreBase, StoreError, UnknownClass, UnknownImage, UnknownUser,
                   default_db_path, private_files, user_data_dir)
from .catalog import CatalogMixin
from .duplicates import PROPAGATED, DuplicatesMixin, NotPropagable
from .exports import EXPORT_ROW, ExportMixin
from .models import ModelsMixin
from .review import ReviewMixin
from .standing import STATE_ROW, StandingMixin
from .verdicts import NOTE_MAX, SameLabel, VerdictChanged, VerdictsMixin


class Store(CatalogMixin, VerdictsMixin, AccountsMixin, ModelsMixin, ArtifactsMixin, ReviewMixin, ExportMixin,
            DuplicatesMixin, StandingMixin, StoreBase):
    """SQLite state of one project. One instance per thread/process."""

    def __enter__(self) -> "Store":
        return self


__all__ = ["Store", "StoreError", "UnknownClass", "UnknownImage", "LeaseLost", "AlreadyJudged", "UnknownUser",
           "VerdictChanged", "SameLabel", "NotPropagable", "AddResult", "default_db_path", "user_data_dir",
           "private_files", "user_key", "VERDICTS", "PROPAGATED", "REASONS", "ROLES", "REQUEST_KINDS",
           "SETTING_DEFAULTS", "WORKER_FIELDS", "UNDO_DEPTH",
           "NOTE_MAX", "SCORE_COLUMNS", "EXPORT_ROW", "STATE_ROW", "ARTIFACT_KINDS", "SESSION_IDLE_S", "SESSION_MAX_S"]
