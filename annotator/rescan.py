"""Find image files that changed since they were hashed, and record their new content.

    python -m annotator rescan

A round trusts the content hash stored at ingest: it serves cached features by that hash and opens no file
whose features are cached. A file replaced or edited in place afterwards is caught in two ways: extraction
checks the bytes it reads against the stored hash (and reports "changed since ingest"), and `rescan` compares
every file's size and mtime with the recorded ones, rehashing (and decoding) only those that differ, or that
have no recorded mtime yet. New content gets its new hash, so the next round extracts its features; its
verdicts stay (they judged the old content, which the report counts so a lead can look). Files are read with
the checks of ingest and display (``cleannet_core.safe_open.read_image``): a path that became a symbolic link,
or leads through one, is refused as "path escapes root", a FIFO or device as "not a regular file", a file
with a second hard link as "hard-linked file", and each is reported like a missing file. Each folder is resolved once,
so a folder replaced by a link is found even where its files' size and mtime are unchanged.
"""
from __future__ import annotations

import functools
import logging
import os
from collections import Counter
from dataclasses import dataclass, field

from tqdm import tqdm

from cleannet_core.keys import content_hash
from cleannet_core.safe_open import FileRefused, read_image

from .ingest import ESCAPES, MAX_PIXELS, _pixel_limit, decode
from .store import Store

log = logging.getLogger(__name__)
BATCH = 2000  # rows per store transaction


@dataclass
class RescanReport:
    images: int = 0                # images looked at
    unchanged: int = 0             # size and mtime as recorded: not read
    rehashed: int = 0              # read again (size or mtime differed, or no mtime was recorded)
    changed: int = 0               # of those, new content: new hash recorded
    changed_with_verdicts: int = 0  # changed images that carry live verdicts (made on the old content)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): missing, escapes, broken...
    counts: Counter = field(default_factory=Counter)             # reason -> number

    def summary(self) -> str:
        parts = [f"{self.images} images", f"{self.unchanged} unchanged (not read)", f"{self.rehashed} rehashed",
                 f"{self.changed} changed", f"{len(self.errors)} errors"]
        detail = ", ".join(f"{reason}: {n}" for reason, n in self.counts.most_common())
        tail = (f"; {self.changed_with_verdicts} changed images have verdicts made on their old content"
                if self.changed_with_verdicts else "")
        return "; ".join(parts) + (f" ({detail})" if detail else "") + tail


def _reread(row: dict, max_pixels: int) -> dict | str:
    """-> {id, hash, bytes, mtime, width, height} of the file now (plus "error" when it does not decode), or the
    reason it cannot be read (``safe_open.read_image``)."""
    try:
        read = read_image(row["path"])
    except FileRefused as e:
        return e.reason
    data, info = read.data, read.stat
    size = decode(data, max_pixels)
    out = {"id": row["id"], "hash": content_hash(data), "bytes": len(data), "mtime": info.st_mtime,
           "width": None, "height": None}
    if isinstance(size, str):
        return out | {"error": size}
    return out | {"width": size[0], "height": size[1]}


def rescan(store: Store, *, max_pixels: int = MAX_PIXELS, progress: bool = False) -> RescanReport:
    """Compare every image file with its recorded size and mtime; rehash those that differ; record changes.

    A changed file that no longer decodes still gets its new hash (so it is not served old features) and is
    reported; a missing, unreadable or escaping file is reported and left as it is. Errors go to the store's ingest
    error log (source 'rescan').
    """
    report = RescanReport()
    live = {v["image_id"] for v in store.live_verdicts()}
    pending: list[dict] = []
    new_ids: list[int] = []

    def flush() -> None:
        report.changed += store.update_image_files(pending)
        pending.clear()

    linkless = functools.cache(lambda folder: os.path.realpath(folder) == folder)  # stored folders are resolved
    bar = tqdm(total=store.images_count(), disable=not progress, unit="img", desc="rescan")
    with _pixel_limit(max_pixels):
        for row in store.iter_images():
            report.images += 1
            bar.update()
            if not linkless(os.path.dirname(row["path"])):
                report.errors.append((row["path"], ESCAPES))
                continue
            try:  # the entry itself: a file replaced by a link is read (and refused) below
                st = os.lstat(row["path"])
                same = row["mtime"] is not None and st.st_size == row["bytes"] and st.st_mtime == row["mtime"]
            except OSError:
                same = False
            if same:
                report.unchanged += 1
                continue
            new = _reread(row, max_pixels)
            if isinstance(new, str):
                report.errors.append((row["path"], new))
                continue
            report.rehashed += 1
            if "error" in new:
                report.errors.append((row["path"], new.pop("error")))
            if new["hash"] != row["hash"]:
                new_ids.append(row["id"])
            pending.append(new)
            if len(pending) >= BATCH:
                flush()
    flush()
    bar.close()
    report.changed_with_verdicts = len(live.intersection(new_ids))
    report.counts.update(reason for _, reason in report.errors)
    store.add_ingest_errors({"source": "rescan", "path": p, "reason": r} for p, r in report.errors)
    log.info("rescan: %s", report.summary())
    return report
