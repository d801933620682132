"""Atomic file writes: the one way model files, feature shards and exports reach the disk.

A reader sees either the previous file or the complete new one, never a half-written file, even after a
crash or power loss: the data goes to a temp file in the same folder, is fsync'ed, renamed over the target
(`os.replace`, atomic on POSIX), and the folder is fsync'ed so the rename itself is durable.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_write(path: str | Path, *, text: bool = False, **open_kw) -> Iterator[IO]:
    """Yield a file opened for writing ("wb", or "w" with `text`; `open_kw` e.g. newline, encoding); on a
    clean exit it replaces `path`, on an exception it is deleted and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w" if text else "wb", **open_kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
