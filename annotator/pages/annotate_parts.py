"""What both modes of the Annotate page share: the flash message, the image and its file as the user may see it,
the undo button, the draws that are always shown blind. No SQL here."""
from __future__ import annotations

import html
from pathlib import Path

import streamlit as st

from annotator import display
from annotator.pages import key_queue as presses
from annotator.pages.common import md
from annotator.queue import QueueItem

BLIND_REASONS = ("audit", "transfer_check")  # random draws that measure: always shown blind


def flash(kind: str, text: str) -> None:
    """The message the next rerun shows beside the title (kind: an ``st`` call, e.g. 'success')."""
    st.session_state["ann_flash"] = (kind, text)


def where(item: QueueItem, user: dict) -> str:
    """The image's file as ``user`` may see it: the server path for a lead, else image id and file name."""
    return item.path if user.get("role") == "lead" else f"image #{item.image_id}, file {Path(item.path).name}"


def show_image(picture: display.Inline | str, shown: str) -> None:
    """The image, embedded in the page (never a /media URL, which Streamlit serves to anyone), or (``picture``
    is a reason from ``display.for_page``) the warning naming the file as ``shown``."""
    if isinstance(picture, str):
        st.warning(f"Image file missing or unreadable ({md(picture)}): {md(shown)}. Mark it unsure to move on.")
    else:
        st.html(f'<img src="{picture.uri}" alt="{html.escape(shown)}" style="width: 100%">')


def undo_button(disabled: bool = False) -> None:
    st.button("Undo last", key="ann_undo", shortcut="z", icon=":material/undo:", disabled=disabled,
              on_click=presses.queue, args=(presses.actions(), "undo",))
