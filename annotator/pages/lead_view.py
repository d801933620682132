"""The lead's view on the pages: "Where we stand" (dashboard) from ``annotator.estimates``, cached per database,
model version, verdict watermark, verify classes and threshold in force."""
import pandas as pd
import streamlit as st

from annotator import estimates, report
from annotator.export import threshold_in_force
from annotator.store import Store


@st.cache_data(max_entries=16, show_spinner=False)
def _standing(_store: Store, db: str, version: int | None, watermark: int, verify: tuple,
              in_force: float | None) -> dict:
    return estimates.standing(_store)


def standing(store: Store) -> dict:
    """``estimates.standing(store)``, recomputed only when a verdict, the model, the verify classes or the
    threshold changed."""
    model = store.current_model()
    return _standing(store, str(store.path), model["version"] if model else None, store.max_verdict_id(),
                     tuple(store.verify_classes()), threshold_in_force(store, model))


def standing_panel(store: Store) -> dict:
    """Where we stand: wrong labels in the data set, fixed, left (with 95 % intervals), what the export does."""
    s = standing(store)
    st.subheader("Where we stand")
    a, b, c, d = st.columns(4)
    a.metric("Wrong labels", report.interval_text(s["wrong_total"])[0], help="estimated, in the whole data set")
    b.metric("Fixed", f"{s['fixed']['wrong']:,}", help="live 'wrong' verdicts")
    c.metric("Left", report.interval_text(s["remaining"])[0], help="estimated wrong labels not fixed yet")
    d.metric("Export drops", f"{s['export']['dropped']:,}", help="rows the export drops at the threshold in force")
    st.table(pd.DataFrame(report.summary_rows(s)).set_index("figure"))
    if s["effort"]:
        st.caption("Effort: per model version, the verdicts it was fitted on, its flags' error on the held-out "
                   "audit verdicts (against flagging nothing on the same verdicts) and the wrong labels it expected "
                   "among the images not judged yet.")
        st.table(pd.DataFrame(report.effort_rows(s["effort"])).set_index("model"))
    if s["stopping"]:
        st.caption(f"Stopping signal: per verified class, the round refitted the score without the class's newest "
                   f"half of its verdicts; under {estimates.STOP_SHARE:.0%} of the flags moved means more verdicts "
                   "there no longer move the model (they still fix the images they judge): verify another class "
                   "(Admin suggests which).")
        st.table(pd.DataFrame(report.stopping_rows(s["stopping"])).set_index("class"))
    st.caption("Intervals are 95 %. Verified classes: wrong share in the random audit verdicts of each class times "
               "its unjudged images. Other classes: the model's expected count (the sum of P(label wrong), from the "
               "score's counting calibration), its interval widened by how far the model's count was off on the "
               "held-out audit verdicts. Precision and recall: the flags (score below the threshold) on the held-out "
               "audit verdicts.")
    return s


@st.cache_data(max_entries=16, show_spinner=False)
def _what_if(_store: Store, db: str, version: int | None, watermark: int, thresholds: tuple) -> list[dict]:
    return estimates.what_if(estimates.States.of(_store.image_states(version)), list(thresholds))


def grid(chosen: float | None, *, probability: bool) -> list[float]:
    """The thresholds the what-if table shows: 0.1-0.9 for probabilities (-0.8-0.8 for relevances) and the
    chosen one, ascending."""
    steps = [k / 10 for k in range(1, 10)] if probability else [k / 5 for k in range(-4, 5)]
    return sorted(set(steps) | ({round(chosen, 3)} if chosen is not None else set()))


def _rate(r: dict) -> str:
    return "—" if r["rate"] is None else f"{r['rate']:.0%} ({r['low']:.0%}–{r['high']:.0%}), n={r['n']}"


def what_if_panel(store: Store, chosen: float | None) -> None:
    """The export at the chosen threshold and at a grid around it: rows kept / dropped / relabelled, and the
    flags' precision and recall on the held-out audit verdicts (n, 95 % exact intervals)."""
    model = store.current_model()
    version = model["version"] if model else None
    probability = ((model or {}).get("metrics") or {}).get("noise_rate_kind") == "expected"
    rows = _what_if(store, str(store.path), version, store.max_verdict_id(),
                    tuple(grid(chosen, probability=probability)))
    st.subheader("What if")
    if chosen is None:
        st.info("No threshold yet (no model): the export keeps every image without a verdict.")
        return
    here = next(r for r in rows if r["threshold"] == round(chosen, 3))
    a, b, c, d, e = st.columns(5)
    a.metric("Kept", f"{here['kept']:,}")
    b.metric("Dropped", f"{here['dropped']:,}", help=f"{here['dropped_by_verdict']:,} by a verdict, "
             f"{here['dropped_by_model']:,} by the model")
    c.metric("Relabelled", f"{here['relabelled']:,}")
    flags = here["flags"]
    d.metric("Precision", "—" if flags["precision"]["rate"] is None else f"{flags['precision']['rate']:.0%}",
             help="flagged held-out audit verdicts that are wrong")
    e.metric("Recall", "—" if flags["recall"]["rate"] is None else f"{flags['recall']['rate']:.0%}",
             help="wrong held-out audit verdicts that are flagged")
    st.table(pd.DataFrame([{"threshold": f"{r['threshold']:.3f}" + (" (chosen)" if r is here else ""),
                            "kept": r["kept"], "dropped": r["dropped"], "relabelled": r["relabelled"],
                            "precision (95 %)": _rate(r["flags"]["precision"]),
                            "recall (95 %)": _rate(r["flags"]["recall"])} for r in rows]).set_index("threshold"))
    st.caption(f"Precision and recall of the flags (score below the threshold) on the {flags['n']} held-out audit "
               "verdicts (random draws on odd image ids, which no model trains on), with 95 % exact "
               "(Clopper-Pearson) intervals. Verdicts always win over the score: they keep, relabel or drop their "
               "images at every threshold.")
