"""What the app's pages share: the rerun's Store and user, error boundaries, escaping.

``app.py`` opens one ``Store`` per rerun and hands it (with the signed-in user) to the page through
``bind``; pages call ``context()``. No SQL here either: every query is a ``Store`` method.

Login sessions live in the store (``annotator.auth``); the URL query parameter ``session`` carries the
token so a reload stays signed in.
"""
from __future__ import annotations

import logging
import sqlite3
import string
import uuid
from contextlib import contextmanager

import streamlit as st

from annotator.names import visible
from annotator.store import Store, StoreError
from cleannet_core.registry import METHODS

log = logging.getLogger("annotator.app")

SESSION_PARAM = "session"  # URL query parameter holding the session token
_MD_SPECIAL = set(string.punctuation)

METHOD_TEXT = {name: m.summary for name, m in METHODS.items()}  # the scoring methods' labels on the pages


# -- rendering user text ----------------------------------------------------------------
def md(text: object) -> str:
    """``text`` as literal Markdown: every ASCII punctuation character backslash-escaped, newlines flattened.

    Class, label and user names are verbatim user input (``<script>``, ``**x**``, ``:red[x]``,
    ``[a](javascript:...)``); Streamlit never renders raw HTML without ``unsafe_allow_html``, and this
    also stops Markdown, colour directives, emoji shortcodes and LaTeX from being interpreted. Invisible
    characters (a bidi override, a zero-width space) are written out as ``[U+XXXX]``.
    """
    s = " ".join(visible(str(text)).split())
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in s)


# -- the rerun's context ----------------------------------------------------------------
def bind(store: Store, user: dict) -> None:
    """Called by app.py each rerun: the page's Store (closed when the rerun ends) and signed-in user
    (a users row plus ``session_id``, the login session)."""
    st.session_state["_store"] = store
    st.session_state["user"] = user


def context() -> tuple[Store, dict]:
    """(store, user) of this rerun."""
    return st.session_state["_store"], st.session_state["user"]


def require_role(user: dict, role: str) -> None:
    """Stop the page unless ``user`` has ``role`` (navigation already hides it; this is the second lock)."""
    if user.get("role") != role:
        st.error(f"This page is for {role}s only.")
        st.stop()


@contextmanager
def errors_as_messages(where: str = "This page"):
    """Turn an exception in the block into an ``st.error`` sentence; the traceback goes to the log only."""
    try:
        yield
    except StoreError as e:
        log.warning("%s: %s", where, e)
        st.error(md(f"{where}: {e}"))
    except sqlite3.OperationalError as e:
        log.exception("%s: database error", where)
        st.error(f"The database is busy or unavailable ({md(e)}). Please try again in a moment.")
    except Exception:  # the app never shows a traceback; the reference ties the message to the log line
        ref = uuid.uuid4().hex[:8]
        log.exception("%s failed [ref %s]", where, ref)
        st.error(f"Something went wrong (reference {ref}). The details are in the server log.")
