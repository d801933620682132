"""The lead's view on the pages: "Where we stand" (dashboard) from ``annotator.estimates``, cached per database,
model version, verdict watermark, verify classes and threshold in force."""
import pandas as pd
import streamlit as st

from annotator import estimates
from annotator.pages.common import threshold
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
                     tuple(store.verify_classes()), threshold(store, model))


def standing_panel(store: Store) -> dict:
    """Where we stand: wrong labels in the data set, fixed, left (with 95 % intervals), what the export does."""
    s = standing(store)
    st.subheader("Where we stand")
    a, b, c, d = st.columns(4)
    a.metric("Wrong labels", estimates.interval_text(s["wrong_total"])[0], help="estimated, in the whole data set")
    b.metric("Fixed", f"{s['fixed']['wrong']:,}", help="live 'wrong' verdicts")
    c.metric("Left", estimates.interval_text(s["remaining"])[0], help="estimated wrong labels not fixed yet")
    d.metric("Export drops", f"{s['export']['dropped']:,}", help="rows the export drops at the threshold in force")
    st.table(pd.DataFrame(estimates.summary_rows(s)).set_index("figure"))
    st.caption("Intervals are 95 %. Verified classes: wrong share in the random audit verdicts of each class times "
               "its unjudged images. Other classes: the model's expected count (the sum of 1 - P(label correct)), "
               "its interval widened by how far the model's count was off on the held-out audit verdicts. "
               "Precision and recall: the flags (score below the threshold) on the held-out audit verdicts.")
    return s
