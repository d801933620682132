"""The one way image bytes are read: ingest, rescan, display, the content hash, feature extraction and
classifier training all call ``read_image``. No torch here (the application's ingest imports it).

A file is read only when

- no component of its path is a symbolic link: each directory is opened with ``O_NOFOLLOW`` relative to its
  parent's descriptor, so a link swapped in between two checks is refused too (a link could lead anywhere,
  e.g. out of the folder the images were ingested from);
- it is a regular file, checked on the opened descriptor (``fstat``), not the path; it is opened with
  ``O_NONBLOCK``, so a FIFO cannot block the open, and an entry that is no regular file (FIFO, device,
  socket, folder) is refused before it is opened at all;
- it has a single hard link: a second name may be a door to a file outside the ingest root (owned by the
  same user), which no path check can see. A dataset with hard-linked files must copy them;
- it is at most ``max_bytes`` long, counted while reading (a file that grows is cut off and refused);
- it is read within ``timeout_s`` (checked between chunks: a stalled network mount is given up).

Otherwise ``FileRefused`` names the reason, one of ``REASONS``.
"""
from __future__ import annotations

import errno
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

MISSING = "missing"
ESCAPES = "path escapes root"  # a symbolic link along the path
NOT_REGULAR = "not a regular file"
HARD_LINKED = "hard-linked file"
TOO_LARGE = "too large"
UNREADABLE = "unreadable"
TIMED_OUT = "read timed out"
REASONS = (MISSING, ESCAPES, NOT_REGULAR, HARD_LINKED, TOO_LARGE, UNREADABLE, TIMED_OUT)

MAX_BYTES = 256 * 2 ** 20  # no image file larger than this is read
TIMEOUT_S = 30.0  # seconds one file may take to read
CHUNK = 1 << 20  # bytes per read() call; the deadline is checked between chunks

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | _CLOEXEC
_FILE = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
         | _CLOEXEC)


class FileRefused(OSError):
    """An image file that is not read; ``reason`` is one of ``REASONS``."""

    def __init__(self, path: str, reason: str, detail: str = "") -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{reason}: {path}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class ImageBytes:
    data: bytes
    stat: os.stat_result  # fstat of the opened file, taken before reading it (size, mtime, inode)


def _refuse_entry(path: str, st: os.stat_result) -> None:
    """Raise unless ``st`` (lstat or fstat) is a regular file with one link."""
    if stat.S_ISLNK(st.st_mode):
        raise FileRefused(path, ESCAPES)
    if not stat.S_ISREG(st.st_mode):
        raise FileRefused(path, NOT_REGULAR)
    if st.st_nlink > 1:
        raise FileRefused(path, HARD_LINKED, f"{st.st_nlink} links; copy the file instead")


def _walk_to_parent(path: str) -> tuple[int, str]:
    """(descriptor of the folder holding ``path``'s last component, that component), reached from ``/``
    one directory at a time, none of them a symbolic link."""
    *folders, name = path.split(os.sep)
    fd = os.open(os.sep, _DIR)
    try:
        for part in folders[1:]:
            try:
                nxt = os.open(part, _DIR, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR) and stat.S_ISLNK(os.lstat(part, dir_fd=fd).st_mode):
                    raise FileRefused(path, ESCAPES) from e
                raise
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd, name


def _open(path: str) -> int:
    """A descriptor of the regular file at ``path`` (absolute, normalised), no link anywhere along it."""
    if os.open not in os.supports_dir_fd:  # no openat(): compare with the resolved path instead
        if os.path.realpath(path) != path:
            raise FileRefused(path, ESCAPES)
        _refuse_entry(path, os.lstat(path))
        return os.open(path, _FILE)
    parent, name = _walk_to_parent(path)
    try:
        _refuse_entry(path, os.lstat(name, dir_fd=parent))  # a FIFO or device is never opened
        return os.open(name, _FILE, dir_fd=parent)
    finally:
        os.close(parent)


def _read(fd: int, path: str, limit: int, timeout_s: float) -> bytes:
    """At most ``limit`` bytes from ``fd``, in chunks, within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    chunks, total = [], 0
    while chunk := os.read(fd, min(CHUNK, limit + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise FileRefused(path, TOO_LARGE, f"over {limit} bytes")
        if time.monotonic() > deadline:
            raise FileRefused(path, TIMED_OUT, f"not read within {timeout_s:g} s")
    return b"".join(chunks)


def read_image(path: str | Path, *, max_bytes: int = MAX_BYTES, timeout_s: float = TIMEOUT_S) -> ImageBytes:
    """The bytes of the image file at ``path`` (made absolute) and its ``fstat``, with the checks in the module
    docstring; raises ``FileRefused``."""
    path = os.path.abspath(os.fspath(path))
    try:
        fd = _open(path)
    except FileRefused:
        raise
    except FileNotFoundError as e:
        raise FileRefused(path, MISSING) from e
    except (OSError, ValueError) as e:  # permission, a link swapped in since the lstat (ELOOP), NUL in the path
        raise FileRefused(path, UNREADABLE, f"{type(e).__name__}: {e}") from e
    try:
        info = os.fstat(fd)
        _refuse_entry(path, info)  # the entry may have been replaced between the lstat and the open
        if info.st_size > max_bytes:
            raise FileRefused(path, TOO_LARGE, f"{info.st_size} bytes, over {max_bytes}")
        return ImageBytes(_read(fd, path, max_bytes, timeout_s), info)
    except FileRefused:
        raise
    except OSError as e:
        raise FileRefused(path, UNREADABLE, f"{type(e).__name__}: {e}") from e
    finally:
        os.close(fd)
