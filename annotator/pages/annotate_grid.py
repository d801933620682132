"""Annotate, grid mode: 16 images of one class, all "correct" until clicked; ``g`` saves the page as one undo step,
whose verdicts are then offered for their images' near-duplicates (``duplicate_offer``). No SQL here."""
from __future__ import annotations

import os
import secrets
from functools import partial

import streamlit as st

from annotator import display
from annotator.pages import duplicate_offer as copies
from annotator.pages import key_queue as presses
from annotator.pages.annotate_parts import BLIND_REASONS, flash, show_image, undo_button, where
from annotator.pages.common import md
from annotator.queue import QueueItem, grid_items
from annotator.store import AlreadyJudged, LeaseLost, Store, UnknownClass

GRID = 16
GRID_SIDE = 512  # pixels: grid tiles are shown at most this large


def submit(store: Store, user: dict, target: tuple[int, ...]) -> None:
    grid = st.session_state.get("ann_grid")
    if not grid or tuple(i.image_id for i in grid["items"]) != target:
        flash("warning", "Dropped a save for a grid page that is no longer on screen.")
        return
    st.session_state["ann_grid"] = None
    batch = f"grid-{secrets.token_hex(8)}"  # one undo step for the whole page
    saved, lost, offered = 0, 0, []
    for item in grid["items"]:
        verdict = "wrong" if item.image_id in grid["wrong"] else "correct"
        try:
            vid = store.record_verdict(item.image_id, user["name"], verdict, reason=item.reason,
                                       model_version=item.model_version, session_id=user.get("session_id"),
                                       batch=batch)
            saved += 1
            offered += [vid] if item.reason not in BLIND_REASONS else []
        except (AlreadyJudged, LeaseLost):
            lost += 1
    st.session_state[copies.OFFER_KEY] = tuple(offered) or None
    flash("success", f"Saved {saved} verdicts ({len(grid['wrong'])} marked wrong)."
           + (f" {lost} not saved: someone (or another tab of yours) judged or took them meanwhile." if lost else ""))


def flip(image_id: int) -> None:
    grid = st.session_state.get("ann_grid")
    if grid:
        grid["wrong"] ^= {image_id}


def grid_images(items: list[QueueItem]) -> dict[int, display.Inline | str]:
    """``display.for_page`` of each grid item (scaled to ``GRID_SIDE``), kept in session state between reruns and
    read again only when the file's (inode, size, mtime) changed; that stamp is taken before the read, so a write
    during it shows next time."""
    old, cache = st.session_state.get("ann_grid_pictures") or {}, {}
    for item in items:
        try:
            info = os.lstat(item.path)
            stamp = (info.st_ino, info.st_size, info.st_mtime_ns)
        except OSError:  # gone: for_page says so
            stamp = None
        hit = old.get(item.image_id)
        cache[item.image_id] = hit if stamp is not None and hit and hit[0] == stamp else (
            stamp, display.for_page(item.path, expected_hash=item.content_hash, max_side=GRID_SIDE))
    st.session_state["ann_grid_pictures"] = cache  # only this page's images stay
    return {image_id: data for image_id, (_, data) in cache.items()}


def grid_mode(store: Store, user: dict) -> None:
    name = user["name"]
    classes = list(store.verify_classes())
    if not classes:
        st.info("No classes are chosen for verification yet. A lead picks them on the Admin page.")
        return
    cls = st.selectbox("Class", classes, key="ann_grid_class")
    grid = st.session_state.get("ann_grid")
    if grid is None or grid["class"] != cls:
        try:
            grid = {"class": cls, "items": grid_items(store, name, cls, GRID), "wrong": set()}
        except UnknownClass:  # a lead stopped verifying it a moment ago
            st.info(f"{md(cls)} is no longer verified; pick another class.")
            return
        st.session_state["ann_grid"] = grid
    items = grid["items"]
    if not items:
        st.success(f"The queue is empty for {md(cls)}: nothing left to review in this class.")
        undo_button()
        copies.offer_panel(store, user, partial(presses.queue, presses.actions()))
        return
    st.caption(f"Every image is **{md(cls)}** and counts as correct unless you click it to mark it wrong; "
               f"**g** saves the page. {len(grid['wrong'])} of {len(items)} marked wrong.")
    images = grid_images(items)
    for row_start in range(0, len(items), 4):
        cols = st.columns(4)
        for col, item in zip(cols, items[row_start:row_start + 4]):
            with col:
                show_image(images[item.image_id], where(item, user))
                wrong = item.image_id in grid["wrong"]
                st.button("Wrong" if wrong else "Correct", key=f"ann_flip_{item.image_id}",
                          type="primary" if wrong else "secondary", width="stretch",
                          icon=":material/close:" if wrong else ":material/check:",
                          on_click=flip, args=(item.image_id,))
    a, b = st.columns(2)
    a.button("Save this page", key="ann_grid_submit", shortcut="g", type="primary", icon=":material/done_all:",
             on_click=presses.queue, args=(presses.actions(), "grid", tuple(i.image_id for i in items)))
    with b:
        undo_button()
    copies.offer_panel(store, user, partial(presses.queue, presses.actions()))
