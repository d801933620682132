"""Ingest images with noisy labels into the store: a class-folder tree or a ``path,label`` CSV.

Bad inputs are counted and reported, never fatal: each gets one stable reason string
(``REASONS``), is listed in the ``IngestReport`` and recorded with
``Store.add_ingest_errors``. Every file is read once, by ``cleannet_core.safe_open.read_image`` (no
symbolic link along the path, a regular file with one link, bounded in size and time); its bytes give both
the content hash (blake2b-128) and a full Pillow decode. Re-ingesting a source adds no rows: stored paths
are skipped before their files are read. Paths are stored absolute and resolved, and
must stay inside the root (``..``, absolute paths and symlinks leading out are refused).
A file or folder name that is not valid UTF-8 is recorded as ``name not UTF-8`` (shown with
``\\xNN`` escapes) and the rest is ingested. A label with invisible characters (a bidi override such as
U+202E, a zero-width space: ``names.invisible``) is refused as ``class name has invisible characters``,
so two classes never look alike. Labels are otherwise stored verbatim after stripping surrounding
whitespace: they may hold hostile text (``=HYPERLINK(...)``, ``<script>``), which exporters and the UI
must escape.

Pillow's decompression-bomb limit is process-global; ``ingest_*`` set it for their
duration and restore it, so run one ingest at a time per process.
"""

import csv
import io
import logging
import os
import struct
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from cleannet_core.keys import content_hash
from cleannet_core.safe_open import (ESCAPES, HARD_LINKED, MISSING, NOT_REGULAR, TIMED_OUT, TOO_LARGE, UNREADABLE,
                                     FileRefused, read_image)

from .names import invisible, visible
from .store import Store

log = logging.getLogger(__name__)

# the file reasons of safe_open (MISSING, ESCAPES, NOT_REGULAR, HARD_LINKED, TOO_LARGE, UNREADABLE, TIMED_OUT), and:
EMPTY = "empty file"
NOT_IMAGE = "not an image"
CORRUPT = "corrupt or truncated"
BAD_ROW = "bad csv row"
UNKNOWN_CLASS = "unknown class"
DUPLICATE_ROW = "duplicate row"
BAD_NAME = "name not UTF-8"
BAD_CLASS = "class name has invisible characters"  # bidi overrides, zero-width spaces, ... (names.invisible)
REASONS = (MISSING, EMPTY, NOT_IMAGE, CORRUPT, TOO_LARGE, ESCAPES, UNREADABLE, NOT_REGULAR, HARD_LINKED, TIMED_OUT,
           BAD_ROW, UNKNOWN_CLASS, DUPLICATE_ROW, BAD_NAME, BAD_CLASS)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}  # folder ingest only
MAX_PIXELS = 50_000_000  # default decompression-bomb limit (width * height)
BATCH = 2000  # images per store transaction


class BadSource(ValueError):
    """The source as a whole is unusable (e.g. no such folder, CSV header lacks path/label)."""


@dataclass
class IngestReport:
    source: str
    added: int = 0  # new image rows, duplicates included
    skipped_existing: int = 0  # path already in the store (re-ingest)
    duplicates: int = 0  # new rows whose content equals an earlier image (status 'duplicate')
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path as given, reason)
    counts: Counter = field(default_factory=Counter)  # reason -> number of errors

    def summary(self) -> str:
        parts = [f"{self.added} added", f"{self.duplicates} duplicates", f"{self.skipped_existing} already present",
                 f"{len(self.errors)} errors"]
        detail = ", ".join(f"{reason}: {n}" for reason, n in self.counts.most_common())
        return "; ".join(parts) + (f" ({detail})" if detail else "")


def printable(name: str) -> str:
    """A file name as text that can be stored and shown: bytes that are not UTF-8 (kept by Python as
    surrogate escapes) become ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class _Item:
    shown: str  # path as the user gave it, for reports
    path: Path  # absolute, resolved
    label: str
    extra: dict | None = None


def decode(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[int, int] | str:
    """Fully decode image bytes; returns (width, height) or an error reason.

    Call inside ``_pixel_limit`` so Pillow's bomb check uses ``max_pixels``.
    """
    if not data:
        return EMPTY
    try:
        with Image.open(io.BytesIO(data)) as im:
            size = im.size
            if size[0] * size[1] > max_pixels:
                return TOO_LARGE
            im.load()
            return size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return TOO_LARGE
    except Image.UnidentifiedImageError:
        return NOT_IMAGE
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error) as e:
        # Pillow's format plugins raise all of these on broken data (truncated, bad chunks, bad tables)
        log.debug("decode failed: %r", e)
        return CORRUPT


@contextmanager
def _pixel_limit(max_pixels: int) -> Iterator[None]:
    """Set Pillow's decompression-bomb limit and turn its warning into an error, then restore."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


class _Ingest:
    """Shared pipeline: cheap checks per item, then batches of read + decode + insert."""

    def __init__(self, store: Store, source: str, root: Path, *, allowed_classes: Iterable[str] | None, max_pixels: int,
                 progress: bool, total: int | None) -> None:
        self.store = store
        self.report = IngestReport(printable(source))
        self.root = root
        self.allowed = None if allowed_classes is None else {c.strip() for c in allowed_classes}
        self.max_pixels = max_pixels
        self.seen: set[str] = set()  # resolved paths of this source, for "duplicate row"
        self.pending: list[_Item] = []
        self.bar = tqdm(total=total, disable=not progress, unit="img", desc="ingest")

    def error(self, shown: str, reason: str) -> None:
        shown = visible(printable(shown))  # reports and the Admin page show every character
        log.debug("ingest %s: %s (%s)", self.report.source, shown, reason)
        self.report.errors.append((shown, reason))
        self.report.counts[reason] += 1
        self.bar.update()

    def submit(self, shown: str, label: str, extra: dict | None = None) -> None:
        """Queue ``shown`` (relative to root, or absolute) unless a cheap check already rejects it."""
        try:
            path = (self.root / shown).resolve()  # follows symlinks: a link leading out is an escape
        except (OSError, ValueError, RuntimeError):  # NUL byte, symlink loop
            return self.error(shown, UNREADABLE)
        if not path.is_relative_to(self.root):
            return self.error(shown, ESCAPES)
        if not _is_utf8(str(path)) or not _is_utf8(label):  # SQLite stores text as UTF-8 only
            return self.error(shown, BAD_NAME)
        if invisible(label):  # two classes that look the same, or text that reverses what is shown after it
            return self.error(shown, BAD_CLASS)
        if self.allowed is not None and label not in self.allowed:
            return self.error(shown, UNKNOWN_CLASS)
        if str(path) in self.seen:
            return self.error(shown, DUPLICATE_ROW)
        self.seen.add(str(path))
        self.pending.append(_Item(shown, path, label, extra))
        if len(self.pending) >= BATCH:
            self.flush()

    def _read(self, item: _Item) -> dict | str:
        try:
            read = read_image(item.path)
        except FileRefused as e:  # missing, a link swapped in, a FIFO or device, hard-linked, too large, ...
            log.debug("%s", e)
            return e.reason
        data, mtime = read.data, read.stat.st_mtime  # fstat before the read: a write during it leaves a newer mtime
        size = decode(data, self.max_pixels)
        if isinstance(size, str):
            return size
        return {"path": str(item.path), "hash": content_hash(data),
                "width": size[0], "height": size[1], "bytes": len(data), "mtime": mtime, "extra": item.extra}

    def flush(self) -> None:
        items, self.pending = self.pending, []
        if not items:
            return
        existing = self.store.existing_paths(str(i.path) for i in items)
        rows, labels = [], []
        for item in items:
            if str(item.path) in existing:
                self.report.skipped_existing += 1
                self.bar.update()
                continue
            row = self._read(item)
            if isinstance(row, str):
                self.error(item.shown, row)
                continue
            rows.append(row)
            labels.append(item.label)
            self.bar.update()
        if rows:
            ids = self.store.ensure_classes(labels)
            for row, label in zip(rows, labels):
                row["label_id"] = ids[label]
            result = self.store.add_images(rows, batch=BATCH)
            self.report.added += result.added
            self.report.skipped_existing += result.skipped  # lost a race with a concurrent ingest
            self.report.duplicates += result.duplicates

    def finish(self) -> IngestReport:
        self.flush()
        self.bar.close()
        report = self.report
        self.store.add_ingest_errors({"source": report.source, "path": p, "reason": r} for p, r in report.errors)
        log.info("ingest %s: %s", report.source, report.summary())
        if report.errors:
            log.warning("ingest %s: %d bad inputs skipped (%s)", report.source, len(report.errors),
                        dict(report.counts))
        return report


def ingest_folder(store: Store, root: str | Path, *, allowed_classes: Iterable[str] | None = None,
                  max_pixels: int = MAX_PIXELS, progress: bool = True) -> IngestReport:
    """Ingest ``ROOT/<class>/**/<image>``: the first folder level names the class.

    Only files with an image suffix (``IMAGE_SUFFIXES``) count; hidden files and folders
    and files directly under ``root`` are ignored; symlinked folders are not followed.

    Example::

        report = ingest_folder(Store(), "photos/")   # photos/cat/1.jpg, photos/dog/2.png ...
        print(report.summary())
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise BadSource(f"{root} is not a folder")
    run = _Ingest(store, str(root), root, allowed_classes=allowed_classes, max_pixels=max_pixels, progress=progress,
                  total=None)
    with _pixel_limit(max_pixels):
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            label = class_dir.name.strip()
            if not _is_utf8(label) or invisible(label):  # the class name itself is unusable: one error for the folder
                run.error(str(class_dir), BAD_NAME if not _is_utf8(label) else BAD_CLASS)
                continue
            for dirpath, dirnames, filenames in os.walk(class_dir):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                        continue
                    if label:
                        run.submit(os.path.join(dirpath, name), label)
        return run.finish()


def ingest_csv(store: Store, csv_path: str | Path, root: str | Path, *,
               allowed_classes: Iterable[str] | None = None, max_pixels: int = MAX_PIXELS,
               progress: bool = True) -> IngestReport:
    """Ingest a CSV whose header has ``path`` and ``label`` (paths relative to ``root``).

    Other columns are kept per image as a JSON object in ``extra``. The CSV is read as
    UTF-8 (a BOM is fine); undecodable bytes become U+FFFD. A row with the wrong
    number of fields or an empty path/label is a "bad csv row"; a path repeated in the
    file is a "duplicate row" (the first one wins).

    Example::

        report = ingest_csv(Store(), "data/labels.csv", "data/")   # path,label,...
    """
    csv_path, root = Path(csv_path).resolve(), Path(root).resolve()
    if not root.is_dir():
        raise BadSource(f"{root} is not a folder")
    try:
        with open(csv_path, "rb") as fb:
            total = max(sum(1 for _ in fb) - 1, 0)
    except OSError as e:
        raise BadSource(f"cannot read {csv_path}: {e}") from e
    run = _Ingest(store, str(csv_path), root, allowed_classes=allowed_classes, max_pixels=max_pixels,
                  progress=progress, total=total)
    with open(csv_path, newline="", encoding="utf-8-sig", errors="replace") as f, _pixel_limit(max_pixels):
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if "path" not in header or "label" not in header:
            raise BadSource(f"{csv_path}: header must contain 'path' and 'label', got {header}")
        i_path, i_label = header.index("path"), header.index("label")
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:  # e.g. NUL byte, field larger than the limit
                run.error(f"line {reader.line_num}", BAD_ROW)
                log.debug("csv error at line %d: %s", reader.line_num, e)
                continue
            if not row:
                continue
            shown = row[i_path].strip() if len(row) > i_path else ""
            label = row[i_label].strip() if len(row) > i_label else ""
            if len(row) != len(header) or not shown or not label:
                run.error(shown or f"line {reader.line_num}", BAD_ROW)
                continue
            extra = {h: v for j, (h, v) in enumerate(zip(header, row)) if j not in (i_path, i_label)}
            run.submit(shown, label, extra or None)
        return run.finish()
