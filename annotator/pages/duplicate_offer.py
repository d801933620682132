"""Annotate page panel: after a verdict (or a saved grid page), offer to apply it to the images' near-duplicates.

The offer is ``Store.propagation_offers`` of the last verdicts given on this page (``ann_offer``: the verdict ids of
the last image or grid page): the copies under their image's own label get the same verdict ("Apply to the 3
copies"); copies under another label get what the verdict implies for them (a cat marked correct: a copy labelled
dog is a wrong label whose true class is cat), offered apart as a suggestion, one button per label and
implication. A copy two verdicts of a grid page imply differently is not offered. Nothing is applied without a
press; a press records verdicts in the annotator's name with reason 'propagated' and each copy's source verdict
(``Store.propagate_verdicts``), one undo step. Verdicts on audit and transfer-check draws get no offer, and such
draws are never reached. No SQL here.
"""
from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from annotator.pages.common import md
from annotator.store import NotPropagable, Store

OFFER_KEY = "ann_offer"  # session state: the ids (a tuple) of the verdicts whose copies are offered, or None
Sources = tuple[tuple[int, tuple[int, ...]], ...]  # (source verdict id, the copies' image ids) per source


def _what(o: dict) -> str:
    return "**correct**" if o["verdict"] == "correct" else (
        f"**wrong** (true class **{md(o['corrected_label'])}**)" if o["corrected_label"] else "**wrong**")


def _copies(n: int) -> str:
    return f"{n} cop{'y' if n == 1 else 'ies'}"


def apply(store: Store, user: dict, sources: Sources) -> tuple[str, str]:
    """Apply each source verdict to its copies (``sources``); returns the (kind, text) flash to show."""
    if not set(v for v, _ in sources) <= set(st.session_state.get(OFFER_KEY) or ()):
        return "warning", "Dropped an apply press for verdicts that are no longer the last ones."
    try:
        made = store.propagate_verdicts(sources, user["name"], session_id=user.get("session_id"))
    except NotPropagable as e:
        return "warning", f"Not applied: {md(e)}."
    skipped = sum(len(ids) for _, ids in sources) - len(made)
    note = f" {skipped} skipped: judged or taken by someone meanwhile." if skipped else ""
    return "success", f"Applied to {_copies(len(made))} (undo takes them back as one step).{note}"


def _sources(rows: list[dict]) -> Sources:
    by: dict[int, list[int]] = {}
    for o in rows:
        by.setdefault(o["source"], []).append(o["image_id"])
    return tuple((v, tuple(ids)) for v, ids in by.items())


def offer_panel(store: Store, user: dict, queue: Callable[..., None]) -> None:
    """The offer for the last verdicts, if they have copies they may still reach; ``queue`` is the page's button
    callback (the press is applied at the top of the next rerun)."""
    vids = st.session_state.get(OFFER_KEY) or ()
    offer = store.propagation_offers(vids, user["name"]) if vids else []
    if not offer:
        return
    same = [o for o in offer if o["same_label"]]
    other: dict[tuple, list[dict]] = {}
    for o in offer:
        if not o["same_label"]:
            other.setdefault((o["label"], o["verdict"], o["corrected_label"] or ""), []).append(o)
    whose = "The last image has" if len(vids) == 1 else "The last page's images have"
    with st.container(border=True, key="ann_copies"):
        st.caption(f"{whose} {_copies(len(offer))} (near-duplicates) without a verdict.")
        if same:
            what = _what(same[0]) if len({(o["verdict"], o["corrected_label"]) for o in same}) == 1 else \
                "each its image's verdict"
            st.markdown(f"{_copies(len(same)).capitalize()} under the same label: {what} too?")
            st.button(f"Apply to the {_copies(len(same))}", key="ann_copies_same", icon=":material/content_copy:",
                      on_click=queue, args=("propagate", _sources(same)))
        for k, ((label, _, _), rows) in enumerate(sorted(other.items())):
            st.markdown(f"Suggestion: {_copies(len(rows))} labelled **{md(label)}**, so {_what(rows[0])}.")
            st.button(f"Mark the {_copies(len(rows))} labelled {md(label)}", key=f"ann_copies_other_{k}",
                      on_click=queue, args=("propagate", _sources(rows)))
