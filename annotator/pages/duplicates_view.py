"""Dashboard section (leads): near-duplicate groups, label conflicts first, and the most outlying images, with
thumbnails, filterable by class.

The groups and scores are the store's current duplicate run (``annotator.duplicates``: the worker computes it
after every round). Thumbnails are read with the annotate page's checks (``display.for_page``: the file must
still hash to its ingest hash) and embedded inline, never published under /media. No SQL here.
"""
from __future__ import annotations

import html
import time

import streamlit as st

from annotator import display
from annotator.duplicates import groups
from annotator.pages.common import md
from annotator.store import Store

GROUPS_PER_PAGE = 5
MEMBERS_SHOWN = 6  # thumbnails per group; the rest are counted
OUTLIERS_SHOWN = 12
THUMB = 96  # px


def thumbnail(path: str, content_hash: str, caption: str) -> None:
    """The image scaled to THUMB px inline, or why it is not shown; the caption (user text) escaped."""
    picture = display.for_page(path, expected_hash=content_hash, max_side=THUMB)
    if isinstance(picture, str):
        st.caption(f"not shown ({md(picture)})")
    else:
        st.html(f'<img src="{picture.uri}" alt="{html.escape(caption)}" '
                f'style="width: {THUMB}px; height: {THUMB}px; object-fit: contain; image-rendering: pixelated">')
    st.caption(md(caption))


def duplicates_panel(store: Store) -> None:
    st.subheader("Near-duplicates and outliers")
    run = store.duplicate_run()
    if run is None:
        st.info("Not computed yet: the worker finds near-duplicates after each round (or run `annotator duplicates`).")
        return
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(run["created_at"]))
    pixels = ", or lower with matching pixels" if run["method"] == "exact" else ""
    st.caption(f"{run['n_groups']} groups of near-duplicates among {run['n_images']} images (same file content, or "
               f"features with cosine ≥ {run['threshold']:g}{pixels}), {run['n_conflicts']} of them with members "
               f"under different labels: the same picture under two labels. Computed {when}.")
    names = {c["name"]: c["id"] for c in store.classes()}
    a, b, c = st.columns([2, 2, 1], vertical_alignment="bottom")
    chosen = a.selectbox("Class", ["All classes", *names], key="dup_class",
                         format_func=lambda n: n if n == "All classes" else md(n))
    conflicts = b.toggle("Only conflicting labels", key="dup_conflicts")
    page = c.number_input("Page", min_value=1, value=1, step=1, key="dup_page")
    class_id = names.get(chosen)
    found = groups(store, class_id=class_id, conflicts_only=conflicts, limit=GROUPS_PER_PAGE,
                   offset=(int(page) - 1) * GROUPS_PER_PAGE)
    if not found:
        st.info("No groups here." if page == 1 else "No more groups.")
    for g in found:
        labels = ", ".join(md(label) for label in g["labels"])
        st.markdown(f"**Group {g['group']}** · {g['size']} images · "
                    + (f":red[label conflict]: {labels}" if g["conflict"] else f"all {labels}"))
        cols = st.columns(MEMBERS_SHOWN)
        for col, m in zip(cols, g["members"][:MEMBERS_SHOWN]):
            with col:
                thumbnail(m["path"], m["hash"], f"#{m['id']} {m['label']}")
        if g["size"] > MEMBERS_SHOWN:
            st.caption(f"and {g['size'] - MEMBERS_SHOWN} more (`annotator duplicates --json` lists every member)")
    st.markdown("**Most outlying images** (far from every class; score = 1 - best cosine to a class centroid, "
                "higher = more outlying)")
    top = store.top_outliers(class_id=class_id, limit=OUTLIERS_SHOWN)
    cols = st.columns(MEMBERS_SHOWN)
    for k, o in enumerate(top):
        with cols[k % MEMBERS_SHOWN]:
            thumbnail(o["path"], o["hash"], f"#{o['image_id']} {o['label']} · {o['outlier_score']:.2f}")
