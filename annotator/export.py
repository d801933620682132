"""Streaming CSV export of every image with its verdict, score and training weight (no SQL here).

One row per image (duplicates included), by image id. Two formats (``FORMATS``):

- ``full`` (``COLUMNS``, documented one by one in ``COLUMN_DOCS``, which the README and the export page
  show): the image's latest live verdict (with its reason, and for one propagated from a near-duplicate, that
  image's path), the current model's score, and the decision. ``final_label`` is the one column to filter and
  train on: human verdicts always win over the score.
- ``train`` (``TRAIN_COLUMNS``: path, label, weight): only the rows to keep, with ``final_label`` as
  the label and ``w_soft`` as the weight; what a training script reads.

The decision (``decide``), where threshold = the ``threshold`` argument, else the one in force
(``threshold_in_force``: the ``delta_override`` setting, else the current model's ``delta``; the pages and
``annotator.estimates`` use it too):

  ===========================  ===================  ==============  ==========  ==============
  latest live verdict          final_label          decided_by      keep        w_soft
  ===========================  ===================  ==============  ==========  ==============
  correct                      noisy label          verdict         1           1
  wrong + corrected label      corrected label      verdict         1           1
  wrong, no corrected label    (empty: drop)        verdict         0           0
  wrong + the noisy label      (empty: drop)        verdict         0           0
  unsure, or no verdict:
  ... score >= threshold       noisy label          model           1           max(0, score)
  ... score < threshold        (empty: drop)        model           0           max(0, score)
  ... no score                 noisy label          none            1           1
  ===========================  ===================  ==============  ==========  ==============

The last case contradicts itself (the store refuses such verdicts with ``SameLabel``; a database can hold
older ones): the "wrong" is taken, since keeping a label its annotator called wrong is the costlier mistake.
``predicted_noisy`` is the model's view alone (score < threshold), verdicts not applied: a row an
annotator marked correct can have ``predicted_noisy`` 1 and ``final_label`` set. ``only_kept=True``
writes only rows with keep 1. Floats carry 6 significant digits.

CSV injection: in both formats, text cells (paths, labels, annotator) that begin with
``=``, ``+``, ``-``, ``@``, a tab or a carriage return are prefixed with a single quote ``'``, so a
spreadsheet shows them as text instead of running them (a ``train`` file gets opened in spreadsheets
too; a training script sees such a label with its quote). Numbers we compute are written as plain
numbers (a score of -0.12 stays ``-0.12``).

Refused with ``ExportRefused`` (nothing written): a target path that is the database itself or one of
the files SQLite keeps beside it (``-wal``, ``-shm``, ``-journal``), by name, through a symbolic link or
as a hard link (writing there would replace the database), and a threshold that is not a number in
[-1, 1] (NaN or infinity would silently keep or drop every row).

Memory stays flat: rows stream from ``Store.export_rows`` (paged by id) into
``csv.writer``. A path target is written to a temporary file and renamed into place, so
a reader never sees half an export.

Example::

    n = export_csv(Store(), "cleaned.csv", only_kept=True)
    n = export_csv(Store(), "train.csv", fmt="train")
"""

import csv
import logging
import math
import os
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from cleannet_core.atomic import atomic_write

from .store import Store

log = logging.getLogger(__name__)

COLUMN_DOCS = {  # column of the full format -> what it holds (shown in the README and on the export page)
    "path": "image file, absolute",
    "noisy_label": "the label the image came with (the one being checked)",
    "final_label": "the label to train with: human verdicts win (correct: the noisy label, wrong: the "
                   "corrected label), else the model (noisy label if score >= threshold); empty = drop the image",
    "decided_by": "who decided final_label: verdict, model, or none (no score yet: kept)",
    "verdict": "latest live human verdict: correct, wrong, unsure, or empty",
    "corrected_label": "true class given with a 'wrong' verdict, or empty",
    "annotator": "who gave the verdict (a propagated one: who applied it)",
    "verified_at": "when, ISO 8601 UTC",
    "score": "current model's score, higher = label more likely correct (robust and transfer: P(label correct) in "
             "[0, 1]; paper: CleanNet relevance in [-1, 1]); empty without a score",
    "threshold": "score threshold in force (argument, else the lead's override, else the model's delta)",
    "predicted_noisy": "1 if score < threshold: the model's view alone, verdicts not applied",
    "w_soft": "training weight: 1 for a kept verdict, 0 for a dropped one, else max(0, score)",
    "keep": "1 if final_label is set, else 0",
    "suggested_label": "the class the model would give instead, or empty",
    "suggested_score": "score of suggested_label",
    "model_version": "version of the model that scored the row",
    "duplicate_group": "the smallest image id of the row's near-duplicate group (same content hash, features with "
                       "cosine >= 0.90, or from 0.60 with matching aligned thumbnails; from 20,000 images features "
                       "with cosine >= 0.79; `annotator duplicates`), empty when it is in none",
    "outlier_score": "1 - the largest cosine of the image's features to any class centroid: higher = further from "
                     "every class; empty before the first duplicate run",
    "verdict_reason": "how the verdict came: uncertain (served as one the model is least sure about), audit (a random "
                      "audit draw), grid (grid mode), manual (a lead's override), transfer_check (a random check of a "
                      "class nobody verifies), propagated (its annotator applied their verdict on a near-duplicate to "
                      "this image); empty without a verdict",
    "verdict_source": "for a propagated verdict, the path of the near-duplicate whose verdict was applied; empty for a "
                      "verdict given on this image itself",
}
COLUMNS = tuple(COLUMN_DOCS)
TRAIN_COLUMNS = ("path", "label", "weight")  # the train format: final_label, w_soft; kept rows only
FORMATS = {"full": COLUMNS, "train": TRAIN_COLUMNS}
DANGEROUS = ("=", "+", "-", "@", "\t", "\r")  # first characters a spreadsheet may treat as a formula
SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")  # the database file and those SQLite keeps beside it


class ExportRefused(ValueError):
    """An export that would overwrite the database, or whose threshold is not a number in [-1, 1]."""


def escape_cell(text: str | None) -> str:
    """``text`` safe for a spreadsheet: prefixed with ``'`` if it starts like a formula; None -> ''."""
    if text is None:
        return ""
    return "'" + text if text.startswith(DANGEROUS) else text


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.6g}"


def _iso(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def threshold_in_force(store: Store, model: dict | None) -> float | None:
    """The score threshold in force: the lead's ``delta_override``, else the current model's delta."""
    override = store.get_setting("delta_override")
    if override is not None:
        return float(override)
    return float(model["delta"]) if model and model.get("delta") is not None else None


def decide(label: str, verdict: str | None, corrected: str | None, score: float | None,
           threshold: float | None) -> tuple[str | None, str, float]:
    """-> (final_label or None to drop, decided_by, w_soft) of one image (the table in the module docstring)."""
    if verdict == "correct":
        return label, "verdict", 1.0
    if verdict == "wrong":
        return (corrected, "verdict", 1.0) if corrected not in (None, label) else (None, "verdict", 0.0)
    if score is None or threshold is None:
        return label, "none", 1.0
    return (label if score >= threshold else None), "model", max(0.0, score)


def _rows(store: Store, threshold: float | None, only_kept: bool, page: int, fmt: str) -> Iterable[tuple]:
    """Output tuples in ``FORMATS[fmt]`` order."""
    model = store.current_model()
    version = model["version"] if model else None
    if threshold is None:
        threshold = threshold_in_force(store, model)
    names: dict[str | None, str] = {}  # class name -> escaped cell; few distinct names, escaped once
    for (_, path, label, verdict, corrected, annotator, at, score, suggested, suggested_score, group,
         outlier, reason, source) in store.export_rows(version, page=page):
        final, by, w_soft = decide(label, verdict, corrected, score, threshold)
        if (only_kept or fmt == "train") and final is None:
            continue
        if fmt == "train":
            yield escape_cell(path), escape_cell(final), _num(w_soft)
            continue
        for name in (label, corrected, suggested, final):
            if name not in names:
                names[name] = escape_cell(name)
        noisy = "" if score is None or threshold is None else int(score < threshold)
        yield (escape_cell(path), names[label], names[final], by, verdict or "", names[corrected],
               escape_cell(annotator), _iso(at), _num(score), "" if threshold is None else _num(threshold), noisy,
               _num(w_soft), int(final is not None), names[suggested], _num(suggested_score),
               version if score is not None else "", "" if group is None else group, _num(outlier), reason or "",
               escape_cell(source))


def _refuse_store_files(store: Store, out: Path) -> None:
    """Raise ``ExportRefused`` when ``out`` is the database or a file SQLite keeps beside it: the same path once
    links are resolved, or the same file (a hard link)."""
    for suffix in SQLITE_SUFFIXES:
        own = Path(f"{store.path}{suffix}")
        same = out.resolve() == own.resolve()
        if not same and out.exists() and own.exists():
            same = os.path.samefile(out, own)
        if same:
            raise ExportRefused(f"{out} is the database's own file {own.name}: exporting there would destroy it; "
                                "choose another --out")


def export_csv(store: Store, out: str | Path | TextIO, *, threshold: float | None = None, only_kept: bool = False,
               fmt: str = "full", progress: bool = False, page: int = 5000) -> int:
    """Write the export to ``out`` (a path, or a text file opened with ``newline=''``); returns the rows
    written (header excluded). ``fmt``: 'full' or 'train' (``FORMATS``); ``page``: images per store query.
    Raises ``ExportRefused`` (see the module docstring)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    if threshold is not None and not (math.isfinite(threshold) and -1.0 <= threshold <= 1.0):
        raise ExportRefused(f"the threshold must be a number in [-1, 1] (scores are), got {threshold}")
    if isinstance(out, (str, Path)):
        _refuse_store_files(store, Path(out))
        with atomic_write(out, text=True, newline="", encoding="utf-8") as f:
            return export_csv(store, f, threshold=threshold, only_kept=only_kept, fmt=fmt, progress=progress,
                              page=page)
    writer = csv.writer(out)
    writer.writerow(FORMATS[fmt])
    n = 0
    bar = tqdm(total=store.images_count() if progress else None, disable=not progress, unit="row", desc="export")
    for row in _rows(store, threshold, only_kept, page, fmt):
        writer.writerow(row)
        n += 1
        if progress and n % 10000 == 0:
            bar.update(10000)
    bar.update(n % 10000)
    bar.close()
    log.info("export: %d rows written", n)
    return n
