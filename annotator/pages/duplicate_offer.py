"""Annotate page panel: after a verdict, offer to apply it to the image's near-duplicates.

The offer is ``Store.propagation_offer`` of the last verdict given on this page (``ann_offer``, a verdict id): the
copies under the image's own label get the same verdict ("Apply to the 3 copies"); copies under another label get
what the verdict implies for them (a cat marked correct: a copy labelled dog is a wrong label whose true class is
cat), offered apart as a suggestion, one button per label. Nothing is applied without a press; a press records
verdicts in the annotator's name with reason 'propagated' and the source verdict (``Store.propagate_verdict``), one
undo step. Verdicts on audit and transfer-check draws get no offer, and such draws are never reached. No SQL here.
"""
from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from annotator.pages.common import md
from annotator.store import NotPropagable, Store

OFFER_KEY = "ann_offer"  # session state: the id of the verdict whose copies are offered, or None


def _what(o: dict) -> str:
    return "**correct**" if o["verdict"] == "correct" else (
        f"**wrong** (true class **{md(o['corrected_label'])}**)" if o["corrected_label"] else "**wrong**")


def _copies(n: int) -> str:
    return f"{n} cop{'y' if n == 1 else 'ies'}"


def apply(store: Store, user: dict, verdict_id: int, image_ids: tuple[int, ...]) -> tuple[str, str]:
    """Apply verdict ``verdict_id`` to ``image_ids``; returns the (kind, text) flash to show."""
    if st.session_state.get(OFFER_KEY) != verdict_id:
        return "warning", "Dropped an apply press for a verdict that is no longer the last one."
    try:
        made = store.propagate_verdict(verdict_id, user["name"], image_ids, session_id=user.get("session_id"))
    except NotPropagable as e:
        return "warning", f"Not applied: {md(e)}."
    skipped = len(image_ids) - len(made)
    note = f" {skipped} skipped: judged or taken by someone meanwhile." if skipped else ""
    return "success", f"Applied to {_copies(len(made))} (undo takes them back as one step).{note}"


def offer_panel(store: Store, user: dict, queue: Callable[..., None]) -> None:
    """The offer for the last verdict, if it has copies it may still reach; ``queue`` is the page's button
    callback (the press is applied at the top of the next rerun)."""
    vid = st.session_state.get(OFFER_KEY)
    offer = store.propagation_offer(vid, user["name"]) if vid is not None else []
    if not offer:
        return
    same = [o for o in offer if o["same_label"]]
    other: dict[str, list[dict]] = {}
    for o in offer:
        if not o["same_label"]:
            other.setdefault(o["label"], []).append(o)
    with st.container(border=True, key="ann_copies"):
        st.caption(f"The last image has {_copies(len(offer))} (near-duplicates) without a verdict.")
        if same:
            st.markdown(f"{_copies(len(same)).capitalize()} under the same label: {_what(same[0])} too?")
            st.button(f"Apply to the {_copies(len(same))}", key="ann_copies_same", icon=":material/content_copy:",
                      on_click=queue, args=("propagate", vid, tuple(o["image_id"] for o in same)))
        for k, (label, rows) in enumerate(sorted(other.items())):
            st.markdown(f"Suggestion: {_copies(len(rows))} labelled **{md(label)}**, so {_what(rows[0])}.")
            st.button(f"Mark the {_copies(len(rows))} labelled {md(label)}", key=f"ann_copies_other_{k}",
                      on_click=queue, args=("propagate", vid, tuple(o["image_id"] for o in rows)))
