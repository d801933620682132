"""Annotate: check the labels of the classes a lead chose, one image at a time or 16 at once.

Single mode keys: ``j`` correct, ``k`` wrong, ``u`` unsure, ``z`` undo, then (optional) ``1``-``9`` give
the true class of the image just marked wrong; each class keeps its number for the whole session (the
classes by name), and the model's suggestion is highlighted in its place; the verdict is then offered for the
image's near-duplicates (``duplicate_offer``). Grid mode: 16 images of one class, all "correct" until clicked;
``g`` saves the page, whose verdicts are then offered for their images' near-duplicates.

The single-image screen fits the window without scrolling (1366x768 and up): the image scales to the
window's height, the true-class keys sit under the verdict buttons beside it, the counters are in the
sidebar. "Blind" hides the model's score and suggestion; audit items (random draws that measure the noise
rate) are always shown blind, so the model cannot anchor the verdicts that judge it.

Every press carries the id of the image it was made on. Buttons only queue an action (``ann_actions``,
via their callback); the page body applies the queue first and drops (and says so) a press whose image
is no longer the one on screen. Presses that arrive together come in no reliable order, so two different
verdicts queued for one image save neither and the page asks again. The store keeps at most one live verdict per image and refuses a second
one, and the images on screen are re-derived from the store on every rerun (an image stays only while my
lease on it is live, and a saved verdict ends that lease), so a press that arrives after its image was
judged (keys faster than reruns, a rerun cut short or abandoned by Streamlit while it waited for the
database, a second tab of the same user, an expired lease) is refused or dropped with a message, never
recorded twice.

Undo (``z``) voids my most recent verdict of this login session; a saved grid page is undone as a
whole, and undo reaches back at most ``UNDO_DEPTH`` steps. The item after the current one stays leased
in session state with its image already read, so the next image shows in the same rerun; a reload
resumes my leases; grid mode keeps its page's images too. Images are embedded in the page as ``data:`` URIs
(``annotator.display``): Streamlit's /media URLs answer anyone who has the link, signed in or not. A file
that cannot be shown (missing, changed since ingest, a link, ...) is named by image id and file name: only
leads see its path on the server.
"""
from functools import partial

import streamlit as st

from annotator import display
from annotator.export import threshold_in_force
from annotator.pages import annotate_grid as grid
from annotator.pages import duplicate_offer as copies
from annotator.pages import key_queue as presses
from annotator.pages.annotate_parts import BLIND_REASONS, flash, show_image, undo_button, where
from annotator.pages.common import context, md
from annotator.queue import QueueItem, next_items, queue_status
from annotator.store import PROPAGATED, UNDO_DEPTH, AlreadyJudged, LeaseLost, Store, StoreError

PREFETCH = 2  # items held in session state: the current one and the next
# The image's height is what the page header, the title and the toggles leave of the window.
STYLE = """<style>
[data-testid="stMainBlockContainer"] {padding-top: 2.5rem;}
.st-key-ann_image img {height: calc(100vh - 190px); max-width: 100%; width: auto !important;
                       object-fit: contain; object-position: left top;}
</style>"""
REASON_TEXT = {"uncertain": "the model is least sure about it", "audit": "a random audit sample",
               "grid": "grid mode", "manual": "manual", "transfer_check": "a random check of a class nobody verifies"}


# -- actions (applied at the top of the rerun) ------------------------------------------
def _verdict(store: Store, user: dict, verdict: str, target: int) -> None:
    items = st.session_state.get("ann_items") or []
    if not items or items[0].image_id != target:
        flash("warning", f"Dropped a **{verdict}** key press for image #{target}: it is no longer on screen.")
        return
    item = items[0]
    st.session_state["ann_items"] = items[1:]  # whatever happens below, this image leaves the screen
    try:
        vid = store.record_verdict(item.image_id, user["name"], verdict, reason=item.reason,
                                   model_version=item.model_version, session_id=user.get("session_id"))
    except (AlreadyJudged, LeaseLost) as e:
        flash("warning", f"Not saved: {md(e)}. Here is the next image.")
        return
    flash("success", f"Saved: {md(item.label)} is **{verdict}**.")
    st.session_state[copies.OFFER_KEY] = (vid,) if item.reason not in BLIND_REASONS else None
    st.session_state["ann_last_wrong"] = (
        {"verdict_id": vid, "image_id": item.image_id, "label": item.label, "path": item.path,
         "suggested": item.suggested_label, "corrected": None} if verdict == "wrong" else None)


def _relabel(store: Store, user: dict, verdict_id: int, label: str) -> None:
    last = st.session_state.get("ann_last_wrong")
    if not last or last["verdict_id"] != verdict_id:
        return
    new_id = store.relabel_verdict(verdict_id, user["name"], label)
    st.session_state["ann_last_wrong"] = dict(last, verdict_id=new_id, corrected=label)
    if st.session_state.get(copies.OFFER_KEY) == (verdict_id,):
        st.session_state[copies.OFFER_KEY] = (new_id,)
    flash("success", f"True class of the last image set to **{md(label)}**.")


def _undo(store: Store, user: dict) -> None:
    name = user["name"]
    voided = store.undo_last(name, session_id=user.get("session_id"))
    if not voided:
        flash("info", f"Nothing to undo: undo reaches your last {UNDO_DEPTH} steps of this session.")
        return
    rows = [store.get_verdict(v) for v in voided]
    last = st.session_state.get("ann_last_wrong")
    if last and last["verdict_id"] in voided:
        st.session_state["ann_last_wrong"] = None
    if all(r["reason"] == PROPAGATED for r in rows):
        flash("info", f"Undone: the verdict applied to {len(rows)} cop{'y' if len(rows) == 1 else 'ies'}; they are "
                       "back in the queue as they were.")
        return
    # verdicts applied to copies were never served here: those images go back to the queue, not to this screen
    rows = [r for r in rows if r["reason"] != PROPAGATED]
    what = f"your **{rows[0]['verdict']}** verdict" if len(rows) == 1 else f"your last page ({len(rows)} verdicts)"
    flash("info", f"Undone: {what}. The image{'s are' if len(rows) > 1 else ' is'} back in front of you.")
    ids = store.acquire_leases(name, [r["image_id"] for r in rows], store.get_setting("lease_seconds"),
                               reasons={r["image_id"]: r["reason"] for r in rows})
    if st.session_state.get("ann_grid_mode"):
        st.session_state["ann_grid"] = None  # the grid picks the images up again from my leases
        return
    model = store.current_model()
    version = model["version"] if model else None
    found = store.queue_rows(ids, version)
    back = [QueueItem.of(found[i], next(r["reason"] for r in rows if r["image_id"] == i), version)
            for i in ids if i in found]
    st.session_state["ann_items"] = back + [i for i in st.session_state.get("ann_items") or [] if i.image_id not in ids]


def apply_actions(store: Store, user: dict) -> None:
    """Apply the queued actions in order. An action leaves the queue only once applied (a rerun cut short
    applies it again next time; the target checks make that harmless); an action aimed at an image that is no
    longer the current one is dropped, and two different verdicts for one image save neither."""
    actions = presses.actions()
    clash = presses.drop_clashing_verdicts(actions)
    if clash:
        flash("warning", f"Two different keys for image #{clash[0]} arrived together: nothing saved for it. "
                          "Press the one you mean again.")
    while actions:
        kind, *args = actions[0]
        if kind == "verdict":
            _verdict(store, user, *args)
        elif kind == "undo":
            _undo(store, user)
        elif kind == "relabel":
            _relabel(store, user, *args)
        elif kind == "grid":
            grid.submit(store, user, *args)
        elif kind == "propagate":
            flash(*copies.apply(store, user, *args))
        actions.pop(0)


# -- queue and prefetch -----------------------------------------------------------------
def fill(store: Store, name: str) -> list[QueueItem]:
    """Keep the session's items that are still leased to me (a saved verdict, mine from any tab, ends
    the lease), then top them up to ``PREFETCH`` (my own leases come back first, renewed)."""
    mine = set(store.leased_to(name))
    items = [i for i in st.session_state.get("ann_items") or [] if i.image_id in mine]
    st.session_state["ann_items"] = items
    if len(items) < PREFETCH:
        have = {i.image_id for i in items}
        items += [i for i in next_items(store, name, n=PREFETCH) if i.image_id not in have][:PREFETCH - len(items)]
        st.session_state["ann_items"] = items
    cache = st.session_state.setdefault("ann_pictures", {})
    for key in [k for k in cache if k not in {i.image_id for i in items}]:
        del cache[key]
    for item in items:  # the next image is read (and checked) now, before it is shown
        if item.image_id not in cache:
            cache[item.image_id] = display.for_page(item.path, expected_hash=item.content_hash)
    return items


def _switch_mode() -> None:
    st.session_state["ann_items"] = []  # leases stay mine; the other mode resumes them
    st.session_state["ann_grid"] = None
    st.session_state["ann_last_wrong"] = None
    st.session_state[copies.OFFER_KEY] = None


# -- panels -----------------------------------------------------------------------------
def progress_panel(store: Store, name: str) -> int:
    """My verdicts today and what is left in my classes (images held for me included); returns the number left."""
    status = queue_status(store, name)
    mine = len(store.leased_candidates(name, list(store.verify_classes().values())))  # served to me, not judged
    left = sum(status["remaining"].values()) + mine
    a, b, c = st.columns(3)
    # one-word labels: three metrics side by side fit the sidebar of a 1366x768 screen uncut
    a.metric("Mine", status["mine_today"], help="my verdicts today")
    b.metric("Left", left, help="images left in my classes (those held for me included)")
    c.metric("All", status["verdicts_total"], help="live verdicts of everyone, all time")
    if status["remaining"]:
        st.caption("Not yet served: " + " · ".join(f"{md(k)} {v}" for k, v in status["remaining"].items()))
    return left


def single_mode(store: Store, user: dict) -> None:
    items = fill(store, user["name"])
    if not items:
        if not store.verify_classes():
            st.info("No classes are chosen for verification yet. A lead picks them on the Admin page.")
        else:
            st.success("The queue is empty: every image of your classes has a verdict or is being reviewed "
                       "by someone else. Thank you!")
        undo_button(disabled=False)
        copies.offer_panel(store, user, partial(presses.queue, presses.actions()))
        return
    item = items[0]
    model = store.current_model()
    delta = threshold_in_force(store, model)
    blind = bool(st.session_state.get("ann_blind")) or item.reason in BLIND_REASONS
    left, right = st.columns([1, 1], gap="medium")
    with right:  # buttons first: they are registered for this image before anything new shows
        about = st.container(key="ann_about")
        with st.container(horizontal=True, gap="small"):
            st.button("Correct", key="ann_correct", shortcut="j", type="primary", icon=":material/check:",
                      on_click=presses.queue, args=(presses.actions(), "verdict", "correct", item.image_id))
            st.button("Wrong", key="ann_wrong", shortcut="k", icon=":material/close:",
                      on_click=presses.queue, args=(presses.actions(), "verdict", "wrong", item.image_id))
            st.button("Unsure", key="ann_unsure", shortcut="u", icon=":material/help:",
                      on_click=presses.queue, args=(presses.actions(), "verdict", "unsure", item.image_id))
            undo_button()
        relabel_panel(store)
        copies.offer_panel(store, user, partial(presses.queue, presses.actions()))
    with about:
        name, score = st.columns([3, 2])  # side by side: the true-class keys below stay on screen
        name.markdown(f"### Label: {md(item.label)}")
        name.caption(f"Image #{item.image_id} · shown because: {REASON_TEXT.get(item.reason, item.reason)}")
        if item.reason in BLIND_REASONS:
            st.caption("The model's score and suggestion are hidden on audit items, so they cannot sway the "
                       "verdicts that measure the noise rate and the model.")
        elif blind:
            st.caption("Blind: the model's score and suggestion are hidden.")
        elif item.score is None:
            st.caption("No model score yet (the first model is still training).")
        else:
            score.metric("Model score", f"{item.score:+.3f}",
                      help="Higher = label more likely correct: the probability that it is (default transfer "
                           "model) or the CleanNet relevance in [-1, 1] (paper model). Below the threshold "
                           f"({delta:+.3f}) the model thinks the label is wrong." if delta is not None else None)
            if delta is not None and item.score < delta:
                suggestion = f" Suggested label: **{md(item.suggested_label)}**." if item.suggested_label else ""
                st.markdown(f":orange[The model thinks this label is wrong.]{suggestion}")
            elif delta is not None:
                st.caption("The model thinks this label is right.")
    with left, st.container(key="ann_image"):
        show_image(st.session_state["ann_pictures"].get(item.image_id), where(item, user))


def class_keys(store: Store) -> dict[str, int]:
    """Each class's number key for this session: the classes by name get 1, 2, ... when first seen and keep
    them (a class added later gets the next number), so a key means one class all session."""
    keys = st.session_state.setdefault("ann_class_keys", {})
    for name in sorted(c["name"] for c in store.classes()):
        keys.setdefault(name, len(keys) + 1)
    return keys


def relabel_panel(store: Store) -> None:
    """After 'wrong': the true class of that image (optional), by its fixed number key (1-9; the image's own
    label is shown disabled in its place) or, past 9, the select box. The model's suggestion is highlighted,
    except when blind or on an audit item."""
    last = st.session_state.get("ann_last_wrong")
    if not last:
        return
    with st.container(border=True, key="ann_true_panel"):
        if last["corrected"]:
            st.caption(f"Last image marked wrong; true class: **{md(last['corrected'])}**.")
            return
        audit = (store.get_verdict(last["verdict_id"]) or {}).get("reason") in BLIND_REASONS
        suggested = None if st.session_state.get("ann_blind") or audit else last["suggested"]
        st.caption(f"Last image ({md(last['label'])}) marked wrong. True class? (optional)",
                   help="Each class keeps its number key all session. The model's suggestion is highlighted "
                        "(not when blind, nor on audit items).")
        keys = class_keys(store)
        by_key = {k: name for name, k in keys.items()}
        for row in range(0, min(9, len(keys)), 3):
            for col, k in zip(st.columns(3), range(row + 1, row + 4)):
                if k in by_key:
                    name = by_key[k]
                    col.button(md(name), key=f"ann_true_{k}", shortcut=str(k), width="stretch",
                               type="primary" if name == suggested else "secondary", disabled=name == last["label"],
                               on_click=presses.queue, args=(presses.actions(), "relabel", last["verdict_id"], name))
        rest = [name for name, k in sorted(keys.items(), key=lambda kv: kv[1]) if k > 9 and name != last["label"]]
        if rest:
            a, b = st.columns([3, 1], vertical_alignment="bottom")
            other = a.selectbox("Other class", rest, index=rest.index(suggested) if suggested in rest else None,
                                key="ann_true_other", placeholder="Other class", label_visibility="collapsed")
            b.button("Set class", key="ann_true_set", disabled=other is None,
                     on_click=presses.queue, args=(presses.actions(), "relabel", last["verdict_id"], other))


def page() -> None:
    store, user = context()
    name = user["name"]
    try:
        apply_actions(store, user)
    except StoreError as e:
        presses.actions().clear()
        flash("error", md(e))
    title, note = st.columns([1, 2], vertical_alignment="center")  # the last action's message beside the title,
    title.title("Annotate")                                          # so it moves nothing below
    flash = st.session_state.pop("ann_flash", None)
    if flash:
        getattr(note, flash[0])(flash[1])
    st.html(STYLE)
    with st.container(horizontal=True):
        st.toggle("Grid mode: 16 images of one class", key="ann_grid_mode", on_change=_switch_mode)
        st.toggle("Blind", key="ann_blind", help="Hide the model's score and suggestion while you judge. Always "
                  "on for audit items (random draws that measure the noise rate).")
    progress = st.sidebar.container()  # the counters live in the sidebar: the image gets the height
    if st.session_state.get("ann_grid_mode"):
        grid.grid_mode(store, user)
    else:
        single_mode(store, user)
    with progress:  # filled last, so an updated count means this rerun's buttons are in place
        progress_panel(store, name)


page()
