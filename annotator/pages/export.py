"""Export (lead): what the export does at the chosen threshold and around it (rows kept, dropped, relabelled; the
flags' precision and recall), preview and download the cleaned-dataset CSV (``annotator.export``) with its filters, and
what every column means (``export.COLUMN_DOCS``, the same text as the README)."""
import functools
from datetime import datetime

import pandas as pd
import streamlit as st

from annotator.export import COLUMN_DOCS, threshold_in_force
from annotator.pages.common import context, require_role
from annotator.pages.export_data import export_bytes, export_preview
from annotator.pages.lead_view import what_if_panel
from annotator.store import Store

PREVIEW_ROWS = 100
FORMATS = {"full": "Every column", "train": "For training: path, label, weight (rows to keep)"}


def filters(store: Store) -> tuple[float | None, bool]:
    """The export's filters: (threshold or None for the one in force, only kept rows)."""
    model = store.current_model()
    in_force = threshold_in_force(store, model)
    source = ("the lead's override" if store.get_setting("delta_override") is not None
              else f"model v{model['version']}" if model else "none: no model yet")
    st.caption(f"Threshold in force: {'—' if in_force is None else f'{in_force:+.3f}'} ({source}). Images "
               "scoring below it count as mislabeled; human verdicts always win over the score.")
    a, b = st.columns(2)
    custom = a.toggle("Custom threshold", key="exp_custom")
    value = a.number_input("Threshold", -1.0, 1.0, float(in_force or 0.0), 0.01, format="%.3f",
                           key="exp_threshold", disabled=not custom)
    only_kept = b.toggle("Only rows to keep", key="exp_only_kept",
                         help="Drop images marked wrong without a corrected label and unverified images "
                              "scoring below the threshold.")
    return (float(value) if custom else None), only_kept


def page() -> None:
    store, user = context()
    require_role(user, "lead")
    st.title("Export")
    chosen, only_kept = filters(store)
    applied = chosen if chosen is not None else threshold_in_force(store, store.current_model())
    what_if_panel(store, applied)
    fmt = st.radio("Format", list(FORMATS), format_func=FORMATS.get, key="exp_format", horizontal=True)
    named = "" if applied is None else f"-t{applied:.3f}"  # the file's name records the threshold it applied
    st.download_button(
        "Download CSV", key="exp_download", type="primary", icon=":material/download:",
        data=functools.partial(export_bytes, str(store.path), st.session_state["token"], threshold=chosen,
                               only_kept=only_kept, fmt=fmt),
        file_name=f"{'train' if fmt == 'train' else 'cleaned'}{named}-{datetime.now():%Y%m%d-%H%M}.csv",
        mime="text/csv",
        on_click="ignore")
    st.caption(f"{store.images_count()} images in the store; the file is generated when you click. Filter and "
               "train on `final_label`: it applies the human verdicts first, then the score.")
    st.subheader(f"Preview (first {PREVIEW_ROWS} rows)")
    preview = export_preview(store, threshold=chosen, only_kept=only_kept, rows=PREVIEW_ROWS, fmt=fmt)
    if preview.empty:
        st.info("No rows match these filters.")
    else:
        st.dataframe(preview, hide_index=True, width="stretch", key="exp_preview")
    with st.expander("What each column means", expanded=False):
        st.table(pd.DataFrame({"column": list(COLUMN_DOCS), "meaning": list(COLUMN_DOCS.values())}).set_index("column"))
        st.caption("The train format: `path`, `label` (= `final_label`), `weight` (= `w_soft`), only rows to keep, "
                   "written verbatim for programs (the full format escapes cells a spreadsheet would run).")


page()
