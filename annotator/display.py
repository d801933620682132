"""Reading a stored image file again (for display, and by rescan), with the same checks as at ingest.

A stored path was absolute and resolved (inside its ingest root) when it was ingested; the file may
have changed since. ``read_stored`` reads it only while it is still a regular file at exactly that path
(no symbolic link anywhere along it, so it cannot lead outside the root); ``read_for_display`` also
wants at most ``MAX_BYTES``, fully decodable within ``ingest.MAX_PIXELS``. Otherwise they return the reason.
"""
import logging
import os
import stat
from pathlib import Path

from .ingest import ESCAPES, MAX_PIXELS, MISSING, TOO_LARGE, UNREADABLE, decode

log = logging.getLogger(__name__)

MAX_BYTES = 64 * 2 ** 20  # larger files are not read for display
NOT_REGULAR = "not a regular file"


def read_stored(path: str, *, max_bytes: int | None = None) -> tuple[bytes, os.stat_result] | str:
    """(the bytes, the ``fstat`` taken before reading them) of the regular file at exactly ``path``, or a reason:
    ``ESCAPES`` (a link along the path), ``MISSING``, ``UNREADABLE``, ``NOT_REGULAR``, ``TOO_LARGE`` (over
    ``max_bytes``; None = no limit)."""
    try:
        if Path(path).resolve(strict=True) != Path(path):  # a link somewhere along the path
            return ESCAPES
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))  # no FIFO hang
    except FileNotFoundError:
        return MISSING
    except (OSError, RuntimeError, ValueError) as e:  # permission, link swapped in since the check, loop
        log.info("cannot open %s: %r", path, e)
        return UNREADABLE
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return NOT_REGULAR
    with os.fdopen(fd, "rb") as f:
        if max_bytes is not None and info.st_size > max_bytes:
            return TOO_LARGE
        try:
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
        except OSError as e:
            log.info("cannot read %s: %r", path, e)
            return UNREADABLE
    if max_bytes is not None and len(data) > max_bytes:
        return TOO_LARGE
    return data, info


def read_for_display(path: str, *, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES) -> bytes | str:
    """The bytes of the image at ``path`` when it passes the checks above, else a short reason
    (``ingest`` reason strings, plus ``NOT_REGULAR``)."""
    read = read_stored(path, max_bytes=max_bytes)
    if isinstance(read, str):
        return read
    size = decode(read[0], max_pixels)
    return size if isinstance(size, str) else read[0]
