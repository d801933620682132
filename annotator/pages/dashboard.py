"""Dashboard (lead): label noise per class, its trend over model versions, annotator throughput, worker status.

Everything is aggregated by store methods (SQL) or read from the model's stored metrics, never computed
over all images here; the class table and the trends are cached per (database, model version, verdict
watermark), so the page stays well under a second at 100k images.
"""
import time

import altair as alt
import pandas as pd
import streamlit as st

from annotator.pages.common import METHOD_TEXT, context, md, midnight, require_role, wilson
from annotator.store import Store

PERIODS = {"Today": 0, "Last 7 days": 6, "All time": None}


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
        for key, label in (("error", "detection error"), ("auroc", "AUROC")):
            value = (metrics.get("audit") or {}).get(key)
            if value is not None and value == value:  # NaN when the audit set had one class only
                audit.append({"version": v, "metric": label, "value": value})
    return (pd.DataFrame(est, columns=["version", "series", "rate"]),
            pd.DataFrame(audit, columns=["version", "metric", "value"]))


def worker_panel(store: Store) -> None:
    w = store.worker_state()
    model = store.current_model()
    age = w["heartbeat_age_s"]
    st.subheader("Worker")
    a, b, c = st.columns(3)
    a.metric("Phase", w["phase"] or "never started")
    b.metric("Heartbeat", "never" if age is None else f"{age:.0f} s ago")
    c.metric("Current model", f"v{model['version']}" if model else "none yet")
    if w["phase"] not in (None, "idle", "stopped", "error"):
        st.progress(min(max(float(w["progress"] or 0.0), 0.0), 1.0), text=md(w["message"] or w["phase"]))
    elif w["message"]:
        st.caption(md(w["message"]))
    if age is None or age > 30 or w["phase"] == "stopped":
        st.warning("The worker is not running (no heartbeat in the last 30 s). Start it with "
                   "`python -m annotator worker`; verdicts are kept meanwhile.")
    if w["last_error"]:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(w["last_error_at"])) if w["last_error_at"] else "?"
        st.error(f"Last error ({when}): {md(w['last_error'])}")
    pending = store.pending_request()
    if pending:
        st.info(f"Pending request: **{pending['kind']}**"
                + (" (running)" if pending["started_at"] else " (waiting for the worker)"))
    if model:
        metrics = model.get("metrics") or {}
        backbone = metrics.get("backbone") or model.get("backbone")
        method = METHOD_TEXT.get(metrics.get("method", "paper"), metrics.get("method"))
        arch = (f" · {metrics['backbone_arch']} ({metrics.get('backbone_kind')}, {metrics.get('image_size')} px)"
                if metrics.get("backbone_arch") else "")
        st.caption(f"Backbone weights: {md(backbone or 'unknown')}{md(arch)} · scoring: {md(method)} · "
                   f"threshold δ = {model['delta']:.3f} · trained on {model.get('n_verdicts') or 0} verdicts")


def noise_panel(table: pd.DataFrame) -> None:
    st.subheader("Label noise per class")
    if table.empty:
        st.info("No images yet.")
        return
    st.caption("Bars: share of each class's images the current model flags as mislabeled. Dots with whiskers "
               "(verified classes): share marked wrong in random audit verdicts, with its 95 % Wilson interval.")
    order = table.sort_values("estimated", ascending=False, na_position="last")["class"].tolist()
    base = alt.Chart(table).encode(y=alt.Y("class:N", sort=order, title=None))
    bars = base.mark_bar(opacity=0.6).encode(
        x=alt.X("estimated:Q", title="noise rate", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
        tooltip=["class", "images", alt.Tooltip("estimated:Q", format=".1%")])
    human = table.dropna(subset=["human"])
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
        st.caption("Detection on audit verdicts")
        if audit.empty:
            st.info("No audit verdicts in a model's validation split yet.")
        else:
            st.altair_chart(alt.Chart(audit).mark_line(point=True).encode(
                x=alt.X("version:O"), y=alt.Y("value:Q", scale=alt.Scale(domain=[0, 1])),
                color=alt.Color("metric:N", title=None),
                tooltip=["version", "metric", alt.Tooltip("value:Q", format=".3f")]), width="stretch")


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
    worker_panel(store)
    verify = tuple(store.verify_classes())
    noise_panel(class_table(store, db, version, store.max_verdict_id(), verify))
    trend_panel(*trend_tables(store, db, version, verify))
    throughput_panel(store)
    if st.button("Refresh", key="dash_refresh", icon=":material/refresh:"):
        st.rerun()


page()
