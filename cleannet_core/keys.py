"""Content keys: blake2b-128 hex of an image file's bytes. Ingest stores them, the feature cache is keyed by
them, and extraction checks every file read against them, so all three use these two functions. No torch
here: the application's ingest imports it without paying for torch."""
from __future__ import annotations

import hashlib
from pathlib import Path


def content_hash(data: bytes) -> str:
    """The content key of bytes already read."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def content_key(path: str | Path) -> str:
    """The content key of a file, read in 1 MiB chunks (equal to content_hash of its bytes)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
