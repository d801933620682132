"""Publishing a model version: its scores written, the version made current, older versions' scores dropped.

A version becomes current in one transaction after all its scores are written, so the queue only ever
sees a complete version, and a crash at any moment leaves the previous one current.
"""
from __future__ import annotations

from collections.abc import Iterator

from dataclasses import replace

import numpy as np

from cleannet_core.duplicates import conflict_share
from cleannet_core.score import Scores

from .round_types import Data, Report
from .store import Store

SCORE_CHUNK = 50_000  # rows written between progress reports
# Publishing writes (and deletes) rows in short transactions with a pause after each; a waiting annotator's
# next item or verdict polls for the write lock every millisecond and gets in at the next pause. 2,500 rows
# and 2 ms were the fastest of the settings measured at 1M images with the lowest latency for the annotator
# (benchmarks/README.md, "Speed: a round at 100k and 1M images").
PUBLISH_BATCH, PUBLISH_PAUSE = 2500, 0.002
REVIEWED = 10.0  # added to the queue key of images with a live verdict (queue_order is <= 2)


def queue_order(score: np.ndarray, delta: float, *, calibrated: bool) -> np.ndarray:
    """(N,) float64 queue key of each image, lower = served first, from score (N,) (higher = label more likely
    correct) flagged below delta.

    calibrated: |score - delta|, the model's least sure images first. The verdict-free rule (no calibrator yet,
    calibrated=False) is not a probability: the images nearest its boundary are mostly right, so verdicts drawn
    there alone hardly show the calibrator how the signals relate to wrong labels, and its first fit can flag
    nothing. Its key takes the images nearest the boundary and the lowest-scored ones (most likely wrong) in
    turn, the k-th of each list before the (k+1)-th of either, so the first verdicts span the whole range.
    Values in [0, 1)."""
    dist = np.abs(score - delta)
    if calibrated:
        return dist
    n = len(score)
    low, near = np.empty(n), np.empty(n)
    low[np.argsort(score, kind="stable")] = np.arange(n)
    near[np.argsort(dist, kind="stable")] = np.arange(n)
    return np.minimum(2 * low, 2 * near + 1) / (2 * max(n, 1))


def is_calibrated(state: dict) -> bool:
    """False for a scorer state (a round's checkpoint payload) of the transfer method that scores by the
    verdict-free rule (no calibrator yet), else True."""
    return "transfer" not in state or state["transfer"]["calibrator"] is not None


def duplicate_groups(store: Store, data: Data) -> np.ndarray:
    """(N,) int64 group id of data's images in the store's current near-duplicate run, -1 for none."""
    group = np.full(len(data.ids), -1, np.int64)
    pairs = np.array(list(store.iter_duplicate_groups()), np.int64).reshape(-1, 2)
    pos = np.searchsorted(data.ids, pairs[:, 0])
    ok = (pos < len(data.ids)) & (data.ids[np.minimum(pos, len(data.ids) - 1)] == pairs[:, 0])
    group[pos[ok]] = pairs[ok, 1]
    return group


def with_conflicts(store: Store, data: Data, sc: Scores, *, weight: float,
                   verdicts: list[dict] | None = None) -> Scores:
    """sc with the scores of unjudged images whose near-duplicate in the current duplicate run carries another label
    lowered (``cleannet_core.duplicates.conflict_share``; probabilities only); weight 0: sc itself. A member with a
    live verdict vouches with certainty for the class the verdict gives it ('correct': its label, 'wrong' with a
    true class: that class) and for none after 'wrong' alone; judged images keep their score (their verdict
    decides). A round applies it before it measures its flags, so the stored metrics describe what it publishes.
    sc.expected_wrong stays as it is: counting wrong labels is the counting calibration's alone.
    ``verdicts``: the live verdicts to apply (``Store.live_verdicts()``, the round's snapshot); None: read now."""
    if weight <= 0:
        return sc
    labels, evidence = data.labels.copy(), sc.score.astype(np.float64)
    judged = np.zeros(len(data.ids), bool)
    row = {int(i): k for k, i in enumerate(data.ids)}
    index = {int(c): k for k, c in enumerate(data.class_ids)}
    for v in store.live_verdicts() if verdicts is None else verdicts:
        k = row.get(v["image_id"])
        if k is None or v["verdict"] == "unsure":
            continue
        judged[k] = True
        if v["verdict"] == "wrong" and v["corrected_label_id"] is not None:
            labels[k] = index[v["corrected_label_id"]]
        evidence[k] = 0.0 if v["verdict"] == "wrong" and v["corrected_label_id"] is None else 1.0
    lowered = conflict_share(evidence, duplicate_groups(store, data), labels, weight=weight)
    return replace(sc, score=np.where(judged, sc.score, lowered).astype(np.float32))


def publish_scores(store: Store, version: int, data: Data, sc: Scores, delta: float, report: Report, *,
                   calibrated: bool = True, verdicts: list[dict] | None = None) -> None:
    """Write the scores of `version`, make it current in one transaction, drop older versions' scores.

    Rows go to the store in data's order, by image id (`load_data`), which is what `Store.write_scores` writes
    fastest; it writes their queue order (`queue_order`; calibrated=False for the verdict-free rule) itself.
    sc.expected_wrong (the counting P(label wrong)) goes with them, NULL where the method has none.
    `verdicts`: the live verdicts whose images go behind the others (the round's snapshot); None: read now.
    """
    n = len(data.ids)
    # The queue scans each class from the most uncertain end and skips reviewed images; pushing images that
    # already have a live verdict behind everything else keeps that scan short. One given after `verdicts` was read
    # stays in place: the queue skips its image all the same.
    verdicts = store.live_verdicts() if verdicts is None else verdicts
    reviewed = np.isin(data.ids, [v["image_id"] for v in verdicts])
    score = sc.score.astype(np.float64)
    uncertainty = queue_order(score, delta, calibrated=calibrated) + REVIEWED * reviewed
    suggested = np.where(sc.suggested >= 0, data.class_ids[np.maximum(sc.suggested, 0)], -1)
    counted = np.full(n, None, object) if sc.expected_wrong is None else sc.expected_wrong.astype(np.float64)
    columns = (data.ids, data.class_ids[data.labels], score, uncertainty, suggested,
               sc.suggested_score.astype(np.float64), counted)
    report("writing", 0.0, f"writing scores of version {version}")
    next_report = [SCORE_CHUNK]

    def progress(written: int) -> None:
        if written >= next_report[0] or written == 2 * n:
            next_report[0] = written + SCORE_CHUNK
            queued = f", {written - n} of {n} in queue order" if written > n else ""
            report("writing", written / (2 * n), f"{min(written, n)} of {n} scores written{queued}")

    store.write_scores(version, _rows(columns), batch=PUBLISH_BATCH, pause=PUBLISH_PAUSE, progress=progress)
    store.make_current(version)
    for old in store.models():
        if old["version"] != version:
            store.delete_scores(old["version"], batch=PUBLISH_BATCH, pause=PUBLISH_PAUSE)
    report("idle", 1.0, f"model version {version} is current")


def _rows(columns: tuple[np.ndarray, ...]) -> Iterator[tuple]:
    """Score rows (``SCORE_COLUMNS``: image_id, label_id, score, uncertainty, suggested_label_id, suggested_score,
    expected_wrong) from (N,) arrays in that order (suggested_label_id -1: none), converted a chunk at a time."""
    for start in range(0, len(columns[0]), SCORE_CHUNK):
        i, y, s, u, g, gs, e = (c[start:start + SCORE_CHUNK].tolist() for c in columns)
        yield from ((*row[:4], None, None, row[6]) if row[4] < 0 else row for row in zip(i, y, s, u, g, gs, e))
