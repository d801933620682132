"""What the Export page serves: the preview's first rows and the whole file for the download button, both
written by ``annotator.export.export_csv``. A module of its own: the page file runs as a Streamlit script."""
from __future__ import annotations

import io
import logging
import uuid
from pathlib import Path

import pandas as pd

from annotator import auth
from annotator.export import export_csv
from annotator.store import Store

log = logging.getLogger(__name__)


class _Enough(Exception):
    """Raised by ``_Head`` once it holds enough lines."""


class _Head(io.StringIO):
    """A text sink that stops the export after ``lines`` lines (csv.writer writes one row per call)."""

    def __init__(self, lines: int):
        super().__init__()
        self.left = lines

    def write(self, s: str) -> int:
        n = super().write(s)
        self.left -= s.count("\n")
        if self.left <= 0:
            raise _Enough
        return n


def export_preview(store: Store, *, threshold: float | None, only_kept: bool, rows: int = 100,
                   fmt: str = "full") -> pd.DataFrame:
    """The first ``rows`` rows of the export, read by stopping ``export_csv`` early (no full export)."""
    sink = _Head(rows + 1)
    try:
        export_csv(store, sink, threshold=threshold, only_kept=only_kept, fmt=fmt, page=max(rows, 100))
    except _Enough:
        pass
    return pd.read_csv(io.StringIO(sink.getvalue()), dtype=str, keep_default_na=False)


class SignedOut(Exception):
    """A download's login session ended, or its user is no longer an active lead, since the page was drawn."""


def export_bytes(db_path: str, token: str, *, threshold: float | None, only_kept: bool, fmt: str = "full") -> bytes:
    """The whole export as bytes, for ``st.download_button(data=callable)``: runs on its own thread with its
    own Store; ``export_csv`` writes a temp file under the state dir, which is read and removed.

    Streamlit runs the callable at the click, without a rerun of the page, so the page's login check does
    not cover it: the session ``token`` must still belong to a lead, else ``SignedOut``."""
    store = Store(db_path)
    try:
        session = auth.resume_session(store, token)
        if session is None or session.user["role"] != "lead":
            log.warning("export refused: the session ended or is no longer a lead's")
            raise SignedOut("sign in again as a lead to download")
        out = Path(store.path).resolve().parent / "exports" / f"export-{uuid.uuid4().hex[:12]}.csv"
        n = export_csv(store, out, threshold=threshold, only_kept=only_kept, fmt=fmt)
        try:
            data = out.read_bytes()
        finally:
            out.unlink(missing_ok=True)
        log.info("export: %d rows (threshold=%s, only_kept=%s) downloaded by %s", n, threshold, only_kept,
                 session.user["name"])
        return data
    finally:
        store.close()
