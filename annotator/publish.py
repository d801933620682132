"""Publishing a model version: its scores written, the version made current, older versions' scores dropped.

A version becomes current in one transaction after all its scores are written, so the queue only ever
sees a complete version, and a crash at any moment leaves the previous one current.
"""
from __future__ import annotations

from itertools import islice
from typing import TYPE_CHECKING

import numpy as np

from .store import Store

if TYPE_CHECKING:
    from cleannet_core.score import Scores

    from .pipeline import Data, Report

SCORE_CHUNK = 50_000  # score rows written between progress reports
# Publishing writes (and deletes) scores in short transactions with a pause after each, so the annotators'
# next item waits for at most one of them (benchmarks/README.md, "A round at 1M images").
PUBLISH_BATCH, PUBLISH_PAUSE = 1000, 0.005
REVIEWED = 10.0  # added to the queue uncertainty of images with a live verdict (|score - delta| <= 2)


def publish_scores(store: Store, version: int, data: Data, sc: Scores, delta: float, report: Report) -> None:
    """Write the scores of `version`, make it current in one transaction, drop older versions' scores."""
    sugg = np.where(sc.suggested >= 0, data.class_ids[np.maximum(sc.suggested, 0)], -1)
    # The queue scans the (label, uncertainty) index from the most uncertain end and skips reviewed images;
    # pushing images that already have a live verdict behind everything else keeps that scan short.
    reviewed = {v["image_id"] for v in store.live_verdicts()}
    rows = ((int(i), int(data.class_ids[y]), float(s), abs(float(s) - delta) + (REVIEWED if i in reviewed else 0),
             int(g) if g >= 0 else None, float(gs) if g >= 0 else None)
            for i, y, s, g, gs in zip(data.ids, data.labels, sc.score, sugg, sc.suggested_score))
    report("writing", 0.0, f"writing scores of version {version}")
    done = 0
    while chunk := list(islice(rows, SCORE_CHUNK)):
        done += store.write_scores(version, chunk, batch=PUBLISH_BATCH, pause=PUBLISH_PAUSE)
        report("writing", done / len(data.ids), f"{done} of {len(data.ids)} scores written")
    store.make_current(version)
    for old in store.models():
        if old["version"] != version:
            store.delete_scores(old["version"], batch=PUBLISH_BATCH, pause=PUBLISH_PAUSE)
    report("idle", 1.0, f"model version {version} is current")
