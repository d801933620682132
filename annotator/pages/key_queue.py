"""The Annotate page's queue of pressed actions: buttons append to it in their callback, the page applies it.

A callback gets the list in its args and touches no Streamlit state (reading st.session_state is where the next
key press can cut a callback short). Presses that arrive together come in no reliable order (Streamlit may
merge pending reruns), so two different verdicts queued for one image are dropped together.
"""
from __future__ import annotations

import streamlit as st

KEY = "ann_actions"  # session state: the list, the same object for the whole session


def actions() -> list:
    """The session's queue of actions, each a tuple (kind, *args), oldest first."""
    return st.session_state.setdefault(KEY, [])


def queue(pending: list, *action) -> None:
    """Button callback: append ``action`` to ``pending`` (``actions()``, passed in the button's args)."""
    pending.append(action)


def drop_clashing_verdicts(pending: list) -> list[int]:
    """Remove every ('verdict', verdict, image id) action of an image that has two different verdicts queued;
    returns those image ids, ascending."""
    given: dict[int, set[str]] = {}
    for kind, *args in pending:
        if kind == "verdict":
            given.setdefault(args[1], set()).add(args[0])
    clash = sorted(image for image, verdicts in given.items() if len(verdicts) > 1)
    if clash:
        pending[:] = [a for a in pending if not (a[0] == "verdict" and a[2] in clash)]
    return clash
