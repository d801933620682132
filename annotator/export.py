"""Streaming CSV export of every image with its verdict, score and training weight (no SQL here).

One row per image (duplicates included), by image id, with the columns ``COLUMNS``:

- ``verdict``, ``corrected_label``, ``annotator``, ``verified_at``: the image's latest live
  verdict (empty if none); ``verified_at`` in ISO 8601 UTC (``2024-05-01T12:00:00Z``).
- ``score``, ``suggested_label``, ``suggested_score``, ``model_version``: the current
  model's score row (empty without a current model or without a score for the image).
  Score: higher = label more likely correct; P(label correct) in [0, 1] for the default transfer
  model, the CleanNet relevance in [-1, 1] for the paper model (``round_config.METHODS``).
- ``threshold``: the ``threshold`` argument, else the ``delta_override`` setting, else
  the current model's ``delta``.
- ``predicted_noisy`` = 1 if score < threshold else 0 (empty without a score).
- ``keep`` and ``w_soft`` (the CleanNet sample weight to train with):

  ===========================  ======================  =====================
  latest live verdict          keep                    w_soft
  ===========================  ======================  =====================
  correct                      1                       1
  wrong, no corrected label    0                       0
  wrong + corrected label      1 (train with it)       1
  unsure, or no verdict        score >= threshold      max(0, score)
  ... and no score             1                       1
  ===========================  ======================  =====================

``only_kept=True`` writes only rows with keep 1. Floats carry 6 significant digits.

CSV injection: text cells (path, labels, annotator) that begin with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return are prefixed with a single quote ``'``, so a
spreadsheet shows them as text instead of running them. Numbers we compute are written
as plain numbers (a score of -0.12 stays ``-0.12``).

Memory stays flat: rows stream from ``Store.export_rows`` (paged by id) into
``csv.writer``. A path target is written to a temporary file and renamed into place, so
a reader never sees half an export.

Example::

    n = export_csv(Store(), "data/state/export.csv", only_kept=True)
"""

import csv
import logging
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from cleannet_core.atomic import atomic_write

from .store import Store

log = logging.getLogger(__name__)

COLUMNS = ("path", "noisy_label", "verdict", "corrected_label", "annotator", "verified_at", "score",
           "predicted_noisy", "w_soft", "keep", "suggested_label", "suggested_score", "model_version")
DANGEROUS = ("=", "+", "-", "@", "\t", "\r")  # first characters a spreadsheet may treat as a formula


def escape_cell(text: str | None) -> str:
    """``text`` safe for a spreadsheet: prefixed with ``'`` if it starts like a formula; None -> ''."""
    if text is None:
        return ""
    return "'" + text if text.startswith(DANGEROUS) else text


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.6g}"


def _iso(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rows(store: Store, threshold: float | None, only_kept: bool, page: int) -> Iterable[tuple]:
    """Output tuples in ``COLUMNS`` order."""
    model = store.current_model()
    version = model["version"] if model else None
    if threshold is None:
        threshold = store.get_setting("delta_override")
    if threshold is None and model is not None:
        threshold = model["delta"]
    names: dict[str | None, str] = {}  # class name -> escaped cell; few distinct names, escaped once
    for (_, path, label, verdict, corrected, annotator, at, score, suggested, suggested_score) in store.export_rows(
            version, page=page):
        if verdict == "correct" or (verdict == "wrong" and corrected is not None):
            keep, w_soft = 1, 1.0
        elif verdict == "wrong":
            keep, w_soft = 0, 0.0
        elif score is None or threshold is None:
            keep, w_soft = 1, 1.0
        else:
            keep, w_soft = int(score >= threshold), max(0.0, score)
        if only_kept and not keep:
            continue
        for name in (label, corrected, suggested):
            if name not in names:
                names[name] = escape_cell(name)
        noisy = "" if score is None or threshold is None else int(score < threshold)
        yield (escape_cell(path), names[label], verdict or "", names[corrected], escape_cell(annotator), _iso(at),
               _num(score), noisy, _num(w_soft), keep, names[suggested], _num(suggested_score),
               version if score is not None else "")


def export_csv(store: Store, out: str | Path | TextIO, *, threshold: float | None = None, only_kept: bool = False,
               progress: bool = False, page: int = 5000) -> int:
    """Write the export to ``out`` (a path, or a text file opened with ``newline=''``); returns the rows
    written (header excluded). ``page``: images per store query."""
    if isinstance(out, (str, Path)):
        with atomic_write(out, text=True, newline="", encoding="utf-8") as f:
            return export_csv(store, f, threshold=threshold, only_kept=only_kept, progress=progress, page=page)
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    n = 0
    bar = tqdm(total=store.images_count() if progress else None, disable=not progress, unit="row", desc="export")
    for row in _rows(store, threshold, only_kept, page):
        writer.writerow(row)
        n += 1
        if progress and n % 10000 == 0:
            bar.update(10000)
    bar.update(n % 10000)
    bar.close()
    log.info("export: %d rows written", n)
    return n
