"""Dashboard (lead): where the project stands (wrong labels estimated, fixed, left; what the export does), label
noise per class, its trend over model versions, annotator throughput, worker status.

Everything is aggregated by store methods (SQL) or read from the model's stored metrics, never computed
over all images here, except "Where we stand" (``annotator.estimates``: one compact row per image); the
tables are cached per (database, model version, verdict watermark), so a rerun reads nothing again.

Charts state their sample sizes. A rate measured on few verdicts is noise: a class's audit rate is drawn
only from ``MIN_CLASS_AUDITS`` audit verdicts on, and a model's detection error / AUROC only when its
validation split held ``MIN_DETECTION_N`` audit verdicts (the tables and captions still give every count).
"""
import math
import time

import altair as alt
import pandas as pd
import streamlit as st

from annotator.estimates import wilson
from annotator.pages.common import METHOD_TEXT, context, md, require_role
from annotator.pages.duplicates_view import duplicates_panel
from annotator.pages.lead_view import standing_panel
from annotator.progress import (ALIVE_S, adapt_summary, describe_next, describe_round, duration, model_trust,
                                worker_status)
from annotator.queue import midnight
from annotator.store import Store

PERIODS = {"Today": 0, "Last 7 days": 6, "All time": None}
MIN_CLASS_AUDITS = 10  # audit verdicts before a class's human noise rate is drawn (95 % interval < +-0.3)
MIN_DETECTION_N = 30  # validation verdicts before a model's detection error / AUROC is drawn


@st.cache_data(max_entries=16, show_spinner=False)
def class_table(_store: Store, db: str, version: int | None, watermark: int, verify: tuple) -> pd.DataFrame:
    """One row per class: images, verify flag, model-estimated noise rate, human audit rate with its
    95 % Wilson interval. Cached by (db, model version, verdict watermark, verify classes); ``_store`` is
    not hashed."""
    model = _store.current_model()
    estimated = ((model or {}).get("metrics") or {}).get("per_class_noise_rate") or {}
    audit = _store.audit_counts()
    rows = []
    for c in _store.classes():
        a = audit.get(c["name"], {})
        k, n = a.get("wrong", 0), a.get("wrong", 0) + a.get("correct", 0)
        lo, hi = wilson(k, n) if n else (None, None)
        rows.append({"class": c["name"], "images": c["n_images"], "verified": bool(c["verify"]),
                     "estimated": estimated.get(c["name"]), "audited": n,
                     "human": k / n if n else None, "low": lo, "high": hi})
    return pd.DataFrame(rows, columns=["class", "images", "verified", "estimated", "audited", "human", "low", "high"])


@st.cache_data(max_entries=16, show_spinner=False)
def trend_tables(_store: Store, db: str, version: int | None, verify: tuple) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(estimated noise rate per version: overall and per verified class; audit error/AUROC per version)."""
    est, audit = [], []
    for m in _store.models():
        metrics = m["metrics"] or {}
        if metrics.get("rescored_from"):
            continue  # a rescore repeats its source's metrics
        v = m["version"]
        if metrics.get("estimated_noise_rate") is not None:
            est.append({"version": v, "series": "all classes", "rate": metrics["estimated_noise_rate"]})
        for name, rate in (metrics.get("per_class_noise_rate") or {}).items():
            if name in verify and rate is not None:
                est.append({"version": v, "series": name, "rate": rate})
        report = metrics.get("audit") or {}
        n = report.get("n", metrics.get("n_val"))
        for key, label in (("error", "detection error"), ("auroc", "AUROC")):
            value = report.get(key)
            if value is not None and value == value:  # NaN when the audit set had one class only
                audit.append({"version": v, "metric": label, "value": value, "n": n})
    return (pd.DataFrame(est, columns=["version", "series", "rate"]),
            pd.DataFrame(audit, columns=["version", "metric", "value", "n"]))


def worker_panel(store: Store) -> None:
    w = worker_status(store)
    model = store.current_model()
    age = w["heartbeat_age_s"]
    st.subheader("Worker")
    a, b, c = st.columns(3)
    step = f" ({w['phase_index']} of {w['phase_count']})" if w["phase_index"] else ""
    a.metric("Phase", (w["phase"] or "never started") + step)
    b.metric("Heartbeat", "never" if age is None else f"{duration(age)} ago")
    c.metric("Current model", f"v{model['version']}" if model else "none yet")
    if w["overall"] is not None:  # a round is running: the bar is the whole round, the text says where
        st.progress(min(max(float(w["overall"]), 0.0), 1.0), text=md(describe_round(w)))
        if w["message"]:
            st.caption(md(w["message"]))
    elif w["message"]:
        st.caption(md(w["message"]))
    st.caption(f"Next round: {md(describe_next(w['next_round']))}")
    if not w["running"]:
        st.warning(f"The worker is not running (no heartbeat in the last {ALIVE_S:g} s). Start it with "
                   "`annotator worker` (or `annotator serve`); verdicts are kept meanwhile.")
    if w["last_error"]:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(w["last_error_at"])) if w["last_error_at"] else "?"
        st.error(f"Last error ({when}): {md(w['last_error'])}")
    pending = store.pending_request()
    if pending:
        st.info(f"Pending request: **{pending['kind']}**"
                + (" (running)" if pending["started_at"] else " (waiting for the worker)"))
    if model:
        metrics = model.get("metrics") or {}
        method = METHOD_TEXT.get(metrics.get("method", "paper"), metrics.get("method"))
        kind = BACKBONE_KINDS.get(metrics.get("backbone_kind"), metrics.get("backbone_kind") or "kind unknown")
        backbone = f"{metrics.get('backbone_arch') or 'unknown'} ({kind})"
        size = metrics.get("image_size") or ((store.latest_artifact("backbone") or {}).get("provenance") or {}).get(
            "image_size")
        at = f" · features at {size} px" if size else ""
        st.caption(f"Backbone: {md(backbone)}{at} · scoring: {md(method)} · "
                   f"threshold δ = {model['delta']:.3f} · trained on {model.get('n_verdicts') or 0} verdicts")
        trust = model_trust(model)
        if trust["note"]:
            st.caption(f"Fit: {md(trust['note'])}")
        st.caption(f"Adapted features: {md(adapt_summary(store)['text'])}")
        (st.warning if trust["loses"] else st.caption)(
            md(trust["text"][0].upper() + trust["text"][1:]) + (
                ": on the data measured so far the flags are wrong more often than they are right; do not drop "
                "labels by them yet (more verdicts recalibrate the next round)" if trust["loses"] else ""))


BACKBONE_KINDS = {"pretrained": "ImageNet weights, frozen",
                  "finetuned": "ImageNet weights fine-tuned on the noisy labels",
                  "noisy": "trained on the noisy labels"}  # the backbone line names its kind, never a file
BAR_TEXT = {"expected": "the expected share of wrong labels in each class (images with a correct/wrong verdict "
                        "count as judged, the others by P(label wrong) from the score's counting calibration)",
            "flagged": "share of each class's images the current model flags as mislabeled"}


def noise_panel(table: pd.DataFrame, kind: str = "flagged") -> None:
    st.subheader("Label noise per class")
    if table.empty:
        st.info("No images yet.")
        return
    human = table[table["audited"] >= MIN_CLASS_AUDITS].dropna(subset=["human"])
    st.caption(f"Bars: {BAR_TEXT[kind]}. Dots with whiskers: "
               "share marked wrong in random audit verdicts, with its 95 % Wilson interval, for classes with at "
               f"least {MIN_CLASS_AUDITS} audit verdicts ({len(human)} of {len(table)}; every count is in the "
               "table below).")
    order = table.sort_values("estimated", ascending=False, na_position="last")["class"].tolist()
    base = alt.Chart(table).encode(y=alt.Y("class:N", sort=order, title=None))
    bars = base.mark_bar(opacity=0.6).encode(
        x=alt.X("estimated:Q", title="noise rate", axis=alt.Axis(format="%"),
                scale=alt.Scale(domain=[0, rate_axis_max(table, human)], nice=False)),
        tooltip=["class", "images", alt.Tooltip("estimated:Q", format=".1%")])
    layers = [bars]
    if not human.empty:
        hb = alt.Chart(human).encode(y=alt.Y("class:N", sort=order, title=None))
        layers += [hb.mark_rule(color="black").encode(x="low:Q", x2="high:Q"),
                   hb.mark_point(color="black", filled=True).encode(
                       x="human:Q", tooltip=["class", "audited", alt.Tooltip("human:Q", format=".1%"),
                                             alt.Tooltip("low:Q", format=".1%"), alt.Tooltip("high:Q", format=".1%")])]
    st.altair_chart(alt.layer(*layers), width="stretch")
    shown = table.assign(estimated=table["estimated"] * 100, human=table["human"] * 100,
                         low=table["low"] * 100, high=table["high"] * 100)
    st.dataframe(shown, hide_index=True, width="stretch", key="dash_classes", column_config={
        "estimated": st.column_config.NumberColumn("model estimate %", format="%.1f"),
        "human": st.column_config.NumberColumn("audit rate %", format="%.1f"),
        "low": st.column_config.NumberColumn("95% low", format="%.1f"),
        "high": st.column_config.NumberColumn("95% high", format="%.1f"),
        "audited": st.column_config.NumberColumn("audit verdicts")})


def rate_axis_max(table: pd.DataFrame, human: pd.DataFrame) -> float:
    """Right end of the noise-rate axis: the largest bar or whisker plus a margin, up to the next 5 %
    (at least 5 %, at most 100 %), so 15-25 % bars fill the chart instead of its left quarter."""
    top = max([0.0, *table["estimated"].dropna(), *human["high"].dropna()])
    return min(1.0, max(0.05, math.ceil(top * 1.1 / 0.05 - 1e-9) * 0.05))


def trend_panel(est: pd.DataFrame, audit: pd.DataFrame) -> None:
    st.subheader("Trend over model versions")
    if est.empty:
        st.info("No model yet: the worker trains the first one as soon as images are in.")
        return
    a, b = st.columns(2)
    with a:
        st.caption("Estimated noise rate")
        st.altair_chart(alt.Chart(est).mark_line(point=True).encode(
            x=alt.X("version:O"), y=alt.Y("rate:Q", axis=alt.Axis(format="%"), title="noise rate"),
            color=alt.Color("series:N", title=None),
            tooltip=["version", "series", alt.Tooltip("rate:Q", format=".1%")]), width="stretch")
    with b:
        st.caption("Detection on audit verdicts (n = audit verdicts in the model's validation split)")
        shown = audit[audit["n"].fillna(0) >= MIN_DETECTION_N]
        if shown.empty:
            most = int(audit["n"].fillna(0).max()) if len(audit) else 0
            st.info(f"Not enough audit verdicts to measure detection: a model needs {MIN_DETECTION_N} in its "
                    f"validation split (odd image ids), the most so far is {most}.")
        else:
            shown = shown.assign(model=[f"v{v} (n={int(n)})" for v, n in zip(shown["version"], shown["n"])])
            st.altair_chart(alt.Chart(shown).mark_line(point=True).encode(
                x=alt.X("model:O", sort=None, title="version (n)"), y=alt.Y("value:Q", scale=alt.Scale(domain=[0, 1])),
                color=alt.Color("metric:N", title=None),
                tooltip=["version", "n", "metric", alt.Tooltip("value:Q", format=".3f")]), width="stretch")
            if len(shown) < len(audit):
                st.caption(f"Models with fewer than {MIN_DETECTION_N} validation verdicts are left out.")


def throughput_panel(store: Store) -> None:
    st.subheader("Annotators")
    period = st.segmented_control("Period", list(PERIODS), default="Today", key="dash_period")
    days = PERIODS.get(period or "Today")
    since = 0.0 if days is None else midnight() - days * 86400
    stats = pd.DataFrame(store.annotator_stats(since))
    if stats.empty:
        st.info("No verdicts in this period.")
        return
    span_h = ((stats["last_at"] - stats["first_at"]).clip(lower=60.0)) / 3600
    stats["per_hour"] = (stats["n"] / span_h).round(0)
    st.dataframe(stats[["annotator", "n", "correct", "wrong", "unsure", "undone", "per_hour"]], hide_index=True,
                 width="stretch", key="dash_throughput",
                 column_config={"n": "verdicts", "per_hour": st.column_config.NumberColumn(
                     "per hour", help="verdicts / time between first and last verdict (at least a minute)")})


def page() -> None:
    store, user = context()
    require_role(user, "lead")
    st.title("Dashboard")
    model = store.current_model()
    version = model["version"] if model else None
    db = str(store.path)
    standing_panel(store)
    verify = tuple(store.verify_classes())
    noise_panel(class_table(store, db, version, store.max_verdict_id(), verify),
                ((model or {}).get("metrics") or {}).get("noise_rate_kind", "flagged"))
    trend_panel(*trend_tables(store, db, version, verify))
    worker_panel(store)
    throughput_panel(store)
    duplicates_panel(store)
    if st.button("Refresh", key="dash_refresh", icon=":material/refresh:"):
        st.rerun()


page()
