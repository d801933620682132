"""Content keys: blake2b-128 hex of an image file's bytes. Ingest stores them, the feature cache is keyed by
them, and extraction and display check every file read against them, so all use these two functions. No
torch here: the application's ingest imports it without paying for torch."""
from __future__ import annotations

import hashlib
from pathlib import Path

from .safe_open import read_image

# a file whose bytes no longer hash to the key recorded for it: it is never used under the old key
CHANGED = "changed since ingest (its content hash differs; run `annotator rescan`)"


def content_hash(data: bytes) -> str:
    """The content key of bytes already read."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def content_key(path: str | Path) -> str:
    """The content key of an image file, read by ``safe_open.read_image`` (raises its ``FileRefused``)."""
    return content_hash(read_image(path).data)
