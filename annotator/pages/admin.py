"""Admin (lead): classes to verify, users, verdict overrides, retrain requests, settings, ingest errors."""

from dataclasses import replace
from datetime import datetime

import pandas as pd
import streamlit as st

from annotator import auth, estimates, report
from annotator.pages.common import METHOD_TEXT, context, md, require_role
from annotator.round_config import BadRoundConfig, RoundConfig, load_round_config, save_round_config
from annotator.store import NOTE_MAX, VERDICTS, Store, StoreError, UnknownImage

SUGGEST = 5  # classes suggested for verification
RECENT = 20  # recent verdicts listed by the override panel


def done(message: str, secret: str | None = None) -> None:
    """Rerun so every panel shows the change, then say what happened (a new password is shown this once)."""
    st.session_state["adm_flash"] = (message, secret)
    st.rerun()


def flash_panel() -> None:
    flash = st.session_state.pop("adm_flash", None)
    if flash:
        st.success(flash[0])
        if flash[1]:
            st.code(flash[1], language=None)


def class_rows(store: Store) -> pd.DataFrame:
    """Per class: images, unreviewed images, model-estimated noise rate, expected wrong labels left, verified, and
    for verified classes the stopping signal ("verify another class" / "keep going", ``estimates.stopping``)."""
    model = store.current_model()
    metrics = (model or {}).get("metrics") or {}
    estimated = metrics.get("per_class_noise_rate") or {}
    unreviewed = store.unreviewed_by_class()
    classes = store.classes()
    signal = {r["class"]: r["signal"] for r in report.stopping_rows(
        estimates.stopping(metrics, [c["name"] for c in classes if c["verify"]]))}
    rows = [{"class": c["name"], "images": c["n_images"], "unreviewed": unreviewed.get(c["name"], 0),
             "estimated": estimated.get(c["name"]), "verified": bool(c["verify"]), "signal": signal.get(c["name"], "")}
            for c in classes]
    df = pd.DataFrame(rows, columns=["class", "images", "unreviewed", "estimated", "verified", "signal"])
    # Expected mislabeled images nobody has looked at; without a model every class counts as equally noisy.
    df["expected_wrong"] = (df["estimated"].fillna(1.0 if model is None else 0.0) * df["unreviewed"]).round(1)
    return df


def classes_panel(store: Store) -> None:
    st.subheader("Classes to verify")
    df = class_rows(store)
    if df.empty:
        st.info("No images yet: ingest some with `annotator ingest`.")
        return
    current = df.loc[df["verified"], "class"].tolist()
    stopped = df.loc[df["verified"] & (df["signal"] == "verify another class"), "class"].tolist()
    candidates = df[~df["verified"]].sort_values(["expected_wrong", "unreviewed"], ascending=False)
    suggested = candidates.head(max(SUGGEST, len(stopped)))["class"].tolist()
    if stopped:
        st.warning(", ".join(f"**{md(c)}**" for c in stopped) + ": the newest verdicts there no longer move the "
                   f"model (without them under {estimates.STOP_SHARE:.0%} of the flags change). Verdicts there "
                   "still fix the images they judge; to teach the model more, verify another class.")
    if suggested:
        st.info("Suggested next: " + ", ".join(f"**{md(c)}**" for c in suggested)
                + ". Heuristic: the most expected mislabeled images nobody has reviewed yet (the model's "
                  "estimated noise rate × unreviewed images; with no model yet, the classes with the most "
                  "unreviewed images).")
    st.dataframe(df.assign(estimated=df["estimated"] * 100), hide_index=True, width="stretch", key="adm_classes",
                 column_config={"estimated": st.column_config.NumberColumn("model estimate %", format="%.1f"),
                                "expected_wrong": st.column_config.NumberColumn(
                                    "expected wrong, unreviewed", format="%.0f"),
                                "signal": st.column_config.TextColumn("stopping signal")})
    chosen = st.multiselect("Verified classes (annotators review these)", df["class"].tolist(), default=current,
                            key="adm_verify")
    st.caption("How many verdicts transfer needs: the default score learns from verdicts of both kinds (until "
               "there are two 'wrong' and two 'correct' ones it flags where the probe prefers another class). On "
               "CIFAR-10N its error on unverified classes levelled off after 50-100 verdicts, and verdicts spread "
               "over 5 classes gave the steadiest result across label sets; verdicts beyond that mostly clean the "
               "verified classes themselves (benchmarks/README.md).")
    a, b, c = st.columns(3)
    if a.button("Save verified classes", key="adm_verify_save", type="primary"):
        store.set_verify([c for c in current if c not in chosen], False)
        store.set_verify(chosen, True)
        done(f"{len(chosen)} classes are verified now.")
    if suggested and b.button("Add the suggested classes", key="adm_verify_suggest"):
        store.set_verify(suggested, True)
        done(f"Added {len(suggested)} suggested classes.")
    if stopped and suggested and c.button("Swap the stopped classes for suggested ones", key="adm_verify_swap"):
        swap = suggested[:len(stopped)]
        store.set_verify(stopped[:len(swap)], False)
        store.set_verify(swap, True)
        done(f"Verified now instead of {', '.join(stopped[:len(swap)])}: {', '.join(swap)}.")


def users_panel(store: Store, me: str) -> None:
    st.subheader("Users")
    users = store.list_users()
    st.dataframe(pd.DataFrame(users, columns=["name", "role", "active", "sessions", "created_at"]).assign(
        active=lambda d: d["active"].astype(bool),
        created_at=lambda d: pd.to_datetime(d["created_at"], unit="s").dt.strftime("%Y-%m-%d %H:%M")),
        hide_index=True, width="stretch", key="adm_users")
    with st.form("adm_add_user", clear_on_submit=True):
        a, b = st.columns(2)
        name = a.text_input("New user name", key="adm_user_name")
        role = b.selectbox("Role", ["annotator", "lead"], key="adm_user_role")
        added = st.form_submit_button("Add user", type="primary", key="adm_user_add")
    if added:
        try:
            password = auth.add_user(store, name or "", role)
        except (ValueError, StoreError) as e:
            st.error(md(e))
        else:
            done(f"Created {role} **{md(auth.normalise_name(name))}**. Their password (shown only now):", password)
    others = [u["name"] for u in users if u["name"] != me]
    if not others:
        return
    pick = st.selectbox("User", others, key="adm_user_pick")
    target = next(u for u in users if u["name"] == pick)
    a, b, c = st.columns(3)
    if target["active"]:
        if a.button("Deactivate", key="adm_user_deactivate"):
            store.set_user_active(pick, False)  # ends their sessions and hands their images back to the queue
            done(f"Deactivated {md(pick)}; every session of theirs has ended.")
    elif a.button("Reactivate", key="adm_user_activate"):
        store.set_user_active(pick, True)
        done(f"Reactivated {md(pick)}.")
    if b.button("Reset password", key="adm_user_reset"):
        password = auth.set_password(store, pick)  # ends their sessions and releases their leases
        done(f"New password for {md(pick)} (shown only now); every session of theirs has ended:", password)
    if c.button("Sign out everywhere", key="adm_user_signout", help="End every open session of this user now"):
        n = store.end_sessions(pick)  # their leases end with them
        done(f"Signed {md(pick)} out of {n} session(s).")


def when(ts: float) -> str:
    """A Unix time as local date and minute."""
    return f"{datetime.fromtimestamp(ts):%Y-%m-%d %H:%M}"


def describe_verdict(v: dict) -> str:
    """One verdict as Markdown: what (with the true class), who, when, and the lead's note if any."""
    what = f"**{v['verdict']}**" + (f" (true class {md(v['corrected_label'])})" if v["corrected_label"] else "")
    note = f" · note: {md(v['note'])}" if v["note"] else ""
    return f"{what} by {md(v['annotator'])}, {when(v['created_at'])}{note}"


def override_panel(store: Store, me: str) -> None:
    """Replace an image's live verdict with the lead's own (``Store.override_verdict``): find the image,
    see its verdict, choose the new one, confirm. The confirmation names exactly what will be applied;
    changing any input afterwards asks again."""
    st.subheader("Override a verdict")
    with st.expander(f"The {RECENT} most recent verdicts"):
        recent = pd.DataFrame(store.recent_verdicts(RECENT), columns=[
            "image_id", "label", "verdict", "corrected_label", "annotator", "created_at", "note"])
        st.dataframe(recent.assign(created_at=recent["created_at"].map(when)), hide_index=True, width="stretch",
                     key="adm_ovr_recent")
    image_id = st.number_input("Image id", min_value=1, value=None, step=1, key="adm_ovr_image",
                               placeholder="the number after # on the Annotate page, or from the list above")
    if image_id is None:
        return
    try:
        image = store.get_image(int(image_id))
    except UnknownImage:
        st.error(f"There is no image #{image_id}.")
        return
    live = store.live_verdict(image["id"])
    if live is None:
        st.info(f"Image #{image['id']} ({md(image['label'])}) has no verdict yet: nothing to override.")
        return
    st.markdown(f"Image #{image['id']}, label **{md(image['label'])}**: {describe_verdict(live)}.")
    a, b = st.columns(2)
    verdict = a.selectbox("New verdict", VERDICTS, key="adm_ovr_verdict")
    others = [c["name"] for c in store.classes() if c["name"] != image["label"]]
    label = b.selectbox("True class (optional, with 'wrong')", others, index=None, key="adm_ovr_label",
                        disabled=verdict != "wrong", placeholder="Choose a class")
    note = st.text_input("Reason (optional, kept with the verdict)", max_chars=NOTE_MAX, key="adm_ovr_note")
    change = {"image_id": image["id"], "replaces": live["id"], "verdict": verdict,
              "corrected_label": label if verdict == "wrong" else None, "note": note.strip() or None}
    if st.button("Override", key="adm_ovr_submit"):
        if (verdict, change["corrected_label"]) == (live["verdict"], live["corrected_label"]):
            st.error("That is the verdict the image already has: choose another one.")
        else:
            st.session_state["adm_ovr_pending"] = change
    if st.session_state.get("adm_ovr_pending") != change:  # nothing asked yet, or an input changed since
        st.session_state.pop("adm_ovr_pending", None)
        return
    new = f"**{verdict}**" + (f" (true class {md(label)})" if change["corrected_label"] else "")
    st.warning(f"Replace {md(live['annotator'])}'s **{live['verdict']}** on image #{image['id']} with your {new}? "
               "The old verdict is voided, not deleted.")
    a, b = st.columns(2)
    if a.button("Confirm override", key="adm_ovr_confirm", type="primary"):
        del st.session_state["adm_ovr_pending"]
        try:  # no session_id: the Annotate page's undo (of this login session's verdicts) cannot void it
            vid = store.override_verdict(image["id"], me, verdict, corrected_label=change["corrected_label"],
                                         replaces=live["id"], note=change["note"])
        except (StoreError, ValueError) as e:
            st.error(md(e))
            return
        done(f"Image #{image['id']} is now {new} by {md(me)} (verdict {vid}); {md(live['annotator'])}'s "
             f"**{live['verdict']}** is voided.")
    if b.button("Cancel", key="adm_ovr_cancel"):
        del st.session_state["adm_ovr_pending"]
        st.rerun()


def worker_panel(store: Store, me: str) -> None:
    st.subheader("Retraining")
    st.caption("A retrain refits the scoring model on all verdicts; a full round also retrains the backbone "
               "with the current soft weights. The worker otherwise retrains by itself every "
               f"{store.get_setting('retrain_every')} verdicts.")
    a, b = st.columns(2)
    if a.button("Request a retrain", key="adm_req_retrain", icon=":material/model_training:"):
        store.request("retrain", me)
        done("Retrain requested.")
    if b.button("Request a full round", key="adm_req_full", icon=":material/restart_alt:"):
        store.request("full", me)
        done("Full round requested.")
    pending = store.pending_request()
    if pending:
        st.info(f"Pending: **{pending['kind']}** requested by {md(pending['requested_by'] or '?')}"
                + (" (running)." if pending["started_at"] else " (waiting for the worker)."))


def settings_panel(store: Store) -> None:
    st.subheader("Settings")
    s = store.settings()
    model = store.current_model()
    with st.form("adm_settings"):
        override = st.checkbox("Override the model's threshold δ", value=s["delta_override"] is not None,
                               key="adm_delta_on",
                               help="Images scoring below δ count as mislabeled (export, dashboard, annotate). "
                                    + (f"The current model's δ is {model['delta']:.3f}." if model else ""))
        delta = st.number_input("δ override", -1.0, 1.0, float(s["delta_override"] if s["delta_override"] is not None
                                                                else (model or {}).get("delta") or 0.0),
                                step=0.01, format="%.3f", key="adm_delta")
        share = st.slider("Audit share", 0.0, 1.0, float(s["audit_share"]), 0.05, key="adm_audit_share",
                          help="Share of queue items drawn at random: the unbiased sample the dashboard's human "
                               "noise rates and the model's threshold are measured on.")
        every = st.number_input("Retrain every N verdicts", 1, 100000, int(s["retrain_every"]), key="adm_retrain_every")
        lease = st.number_input("Lease seconds (how long a served image stays reserved)", 30, 86400,
                                int(s["lease_seconds"]), key="adm_lease")
        users = [u["name"] for u in store.list_users() if u["active"]]
        checkers = st.multiselect("Transfer check: served to", users, key="adm_transfer_annotators",
                                  default=[n for n in s["transfer_annotators"] if n in users],
                                  help="These annotators first get random draws in the classes nobody verifies, "
                                       "shown blind, until each holds the number below: they measure the model "
                                       "there (Dashboard) and never train it.")
        per_class = st.number_input("Transfer check: verdicts per unverified class", 0, 1000,
                                    int(s["transfer_per_class"]), key="adm_transfer_per_class")
        try:
            round_cfg = load_round_config(store)
        except BadRoundConfig as e:
            st.error(f"The stored round setting is invalid ({md(e)}); saving replaces it with the defaults.")
            round_cfg = RoundConfig()
        methods = list(METHOD_TEXT)
        method = st.selectbox("Scoring method (from the next round)", methods, key="adm_method",
                              index=methods.index(round_cfg.method),
                              format_func=METHOD_TEXT.get,
                              help="transfer: out-of-fold probe log-odds + margin, calibrated on the verdicts; it "
                                   "carries over to classes nobody verified (benchmarks/README.md). paper: the "
                                   "CleanNet relevance of Lee et al. 2018, for comparison.")
        if st.form_submit_button("Save settings", type="primary", key="adm_settings_save"):
            store.set_setting("delta_override", float(delta) if override else None)
            store.set_setting("audit_share", float(share))
            store.set_setting("retrain_every", int(every))
            store.set_setting("lease_seconds", int(lease))
            store.set_setting("transfer_annotators", list(checkers))
            store.set_setting("transfer_per_class", int(per_class))
            save_round_config(store, replace(round_cfg, method=method))
            done("Settings saved.")


def ingest_panel(store: Store) -> None:
    st.subheader("Ingest errors")
    counts = store.ingest_error_counts()
    if not counts:
        st.caption(f"None. {store.images_count()} images in the store.")
        return
    st.dataframe(pd.DataFrame(list(counts.items()), columns=["reason", "files"]), hide_index=True,
                 key="adm_ingest_counts")
    with st.expander("Most recent 200"):
        st.dataframe(pd.DataFrame(store.ingest_errors(200), columns=["source", "path", "reason"]), hide_index=True,
                     width="stretch", key="adm_ingest_errors")


def page() -> None:
    store, user = context()
    require_role(user, "lead")
    st.title("Admin")
    flash_panel()
    classes_panel(store)
    users_panel(store, user["name"])
    override_panel(store, user["name"])
    worker_panel(store, user["name"])
    settings_panel(store)
    ingest_panel(store)


page()
