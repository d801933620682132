"""Near-duplicate groups and outlier scores of a project, computed from the round's features and stored.

    run = refresh(store)            # recomputes only when the features, images or labels changed

The worker calls ``refresh`` after every round; ``annotator duplicates`` calls it before printing. Every image
(those ingest marked as byte-identical copies included) joins the group of the images whose content hash it
shares, then of those whose features are near (``cleannet_core.duplicates``: below ``GroupConfig.exact_below`` images,
cosine >= ``pixel_until``, or >= ``pixel_from`` with matching pixels; from there, cosine >= ``threshold``). A
group whose members carry different noisy labels is a **label conflict**: the same picture under two labels.
Outlier score: 1 - the largest cosine to any class centroid, higher = further from every class; an image
without readable features has none, a byte-identical copy gets its original's.

The stored run is keyed by what it was computed from (backbone id and input size, every image id, content hash
and noisy label, the settings): a key equal to the current run's means nothing changed and nothing is computed.
"""
from __future__ import annotations

import hashlib
import io
import logging
import time
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from cleannet_core.duplicates import (CROPS, GRAY_SIDE, THUMB_SIDE, GroupConfig, Progress, aligned_similarity,
                                      components, crop_thumbnails, hash_pairs, outlier_scores, similar_pairs)

from . import display
from .backbone import ensure_backbone, load_data
from .pipeline import features
from .round_config import RoundConfig
from .round_types import Data, Report, quiet
from .store import Store

log = logging.getLogger(__name__)
OUTLIER_SCORE = "centroid-cosine-v1"  # what the outlier score is; part of the run key
PIXELS = f"gray-{GRAY_SIDE}px-{len(CROPS)}crops-{THUMB_SIDE}px-flip-v2"  # what confirms a pair by pixels; in the run key


@dataclass(frozen=True)
class Catalog:
    """Every image of the store (copies marked at ingest included), by id."""
    ids: np.ndarray          # (M,) int64 image ids, ascending
    keys: list[str]          # (M,) content hashes
    labels: np.ndarray       # (M,) int64 store class ids


def catalog(store: Store) -> Catalog:
    ids, keys, labels = [], [], []
    for row in store.iter_images():
        ids.append(row["id"])
        keys.append(row["hash"])
        labels.append(row["label_id"])
    return Catalog(np.array(ids, np.int64), keys, np.array(labels, np.int64))


def run_key(cat: Catalog, *, backbone_id: str, image_size: int, config: GroupConfig) -> str:
    """What a run depends on: the features (backbone, input size, content hashes), the images, their labels and
    the settings."""
    h = hashlib.blake2b(digest_size=16)
    for part in (backbone_id, str(image_size), repr(config), OUTLIER_SCORE, PIXELS, cat.ids.tobytes(),
                 cat.labels.tobytes(), "\n".join(cat.keys)):
        h.update(part if isinstance(part, bytes) else part.encode())
    return h.hexdigest()


def refresh(store: Store, cfg: RoundConfig = RoundConfig(), *, config: GroupConfig = GroupConfig(),
            force: bool = False, progress: bool = False, report: Report = quiet) -> dict:
    """The current duplicate run, computed first when none matches the project's features, images and labels (or
    ``force``). Features come from the cache (missing ones are extracted with the project's backbone, as a round
    does). ``report`` gets phase 'features', then 'duplicates'. Raises ValueError without images."""
    data = load_data(store)
    if len(data.ids) == 0:
        raise ValueError("no images: ingest some first")
    model, backbone = ensure_backbone(store, data, cfg, report, load=False)
    cat = catalog(store)
    key = run_key(cat, backbone_id=backbone.id, image_size=backbone.image_size, config=config)
    current = store.duplicate_run()
    if current and current["features_key"] == key and not force:
        report("duplicates", 1.0, "near-duplicate groups are up to date")
        return current
    t0 = time.perf_counter()
    feats, readable = features(store, data, model, backbone, cfg, progress=progress, report=report)
    alone = features_alone(config, int(readable.sum()))
    report("duplicates", 0.0, f"near-duplicates among {int(readable.sum())} images (cosine >= {alone:g})")
    found = compute(cat, data, feats, readable, config=config,
                    progress=lambda frac, message: report("duplicates", 0.9 * frac, message))
    group_id, outlier = found.group_id, found.outlier_score
    in_group = group_id >= 0
    n_groups = int(len(np.unique(group_id[in_group])))
    n_conflicts = len(_conflict_groups(group_id[in_group], cat.labels[in_group]))
    report("duplicates", 0.9, f"{n_groups} groups ({n_conflicts} with conflicting labels): writing")
    conflicted = set(_conflict_groups(group_id[in_group], cat.labels[in_group]).tolist())
    run = store.write_duplicates(
        ((int(i), int(g) if g >= 0 else None, None if np.isnan(s) else float(s), int(int(g) in conflicted))
         for i, g, s in zip(cat.ids, group_id, outlier)),
        features_key=key, backbone_id=backbone.id, threshold=alone, method=found.method,
        n_images=len(cat.ids), n_groups=n_groups, n_conflicts=n_conflicts, seconds=time.perf_counter() - t0)
    report("duplicates", 1.0, f"{n_groups} near-duplicate groups, {n_conflicts} with conflicting labels")
    log.info("duplicates: run %d, %d groups, %d conflicts, %s search", run, n_groups, n_conflicts, found.method)
    return store.duplicate_run()


def features_alone(config: GroupConfig, n: int) -> float:
    """The cosine from which features alone join two of n images (below, only matching pixels can)."""
    return config.pixel_until if n < config.exact_below else config.threshold


def _silent(frac: float, message: str) -> None:
    """The default Progress of ``compute``: says nothing."""


@dataclass(frozen=True)
class Found:
    group_id: np.ndarray       # (M,) int64 per catalog image: the smallest image id of its group, -1 in none
    outlier_score: np.ndarray  # (M,) float32, higher = further from every class; NaN without features
    method: str                # the nearest-neighbour search used: exact | faiss-ivf


def read_gray(path: str, content_hash: str) -> np.ndarray | None:
    """(GRAY_SIDE, GRAY_SIDE) float32 grayscale of the image, read with the display's checks (``display``: no link,
    its ingest hash, bounded size), or None when it cannot be read."""
    data = display.read_for_display(path, expected_hash=content_hash)
    if isinstance(data, str):
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("L").resize((GRAY_SIDE, GRAY_SIDE), Image.BILINEAR), np.float32)
    except Exception:  # any decode failure: no pixel evidence for this image
        return None


def confirmed_by_pixels(pairs: np.ndarray, paths: list[str], keys: list[str], *, config: GroupConfig,
                        progress: Progress = _silent) -> np.ndarray:
    """(P,) bool: the pairs (P, 2) of rows (paths, keys: the rows' files and content hashes) whose aligned
    thumbnails reach config.pixel_min (``aligned_similarity``); each image is read once. An unreadable image
    confirms nothing."""
    if len(pairs) == 0:
        return np.zeros(0, bool)
    rows = np.unique(pairs)
    thumbs = np.zeros((len(rows), len(CROPS), THUMB_SIDE ** 2), np.float16)  # zeros correlate with nothing
    step = 1024
    for s in range(0, len(rows), step):
        grays = [read_gray(paths[r], keys[r]) for r in rows[s:s + step].tolist()]
        ok = [k for k, g in enumerate(grays) if g is not None]
        if ok:
            thumbs[s + np.array(ok)] = crop_thumbnails(np.stack([grays[k] for k in ok]))
        progress(min(1.0, (s + step) / len(rows)), f"read {min(len(rows), s + step)} of {len(rows)} images to compare"
                 " their pixels")
    local = np.stack([np.searchsorted(rows, pairs[:, 0]), np.searchsorted(rows, pairs[:, 1])], axis=1)
    return aligned_similarity(thumbs, local) >= config.pixel_min


def near_pairs(sub: np.ndarray, paths: list[str], keys: list[str], *, config: GroupConfig,
               progress: Progress = _silent) -> tuple[np.ndarray, str]:
    """(pairs (P, 2) of rows of sub, the search used): from config.exact_below images, cosine >= config.threshold;
    below, cosine >= config.pixel_until, or >= config.pixel_from and confirmed by pixels (paths, keys: the rows'
    files and hashes)."""
    alone = features_alone(config, len(sub))
    low = min(alone, config.pixel_from) if len(sub) < config.exact_below else alone
    pairs, cos, method = similar_pairs(sub, config=replace(config, threshold=low),
                                       progress=lambda frac, message: progress(0.5 * frac, message))
    band = cos < alone                                           # empty from exact_below: low is alone there
    if band.any():
        ok = ~band
        ok[band] = confirmed_by_pixels(pairs[band], paths, keys, config=config,
                                       progress=lambda frac, message: progress(0.5 + 0.5 * frac, message))
        pairs = pairs[ok]
    return pairs, method


def compute(cat: Catalog, data: Data, feats: np.ndarray, readable: np.ndarray, *,
            config: GroupConfig = GroupConfig(), progress: Progress = _silent) -> Found:
    """Groups and outlier scores of every catalog image from the (N, D) features of data's images (readable (N,)
    bool). Byte-identical copies (equal hashes) join; so do images whose features are near enough, or (below
    config.exact_below images) near and with matching thumbnails (``near_pairs``)."""
    rows = np.flatnonzero(readable)
    sub = feats if len(rows) == len(feats) else feats[rows]  # a boolean index would copy all N rows
    pairs, method = near_pairs(sub, [data.paths[r] for r in rows.tolist()], [data.keys[r] for r in rows.tolist()],
                               config=config, progress=progress)
    pos = np.searchsorted(cat.ids, data.ids[rows])              # rows of sub -> positions in the catalog
    group = components(len(cat.ids), np.concatenate([hash_pairs(cat.keys), pos[pairs].reshape(-1, 2)]))
    score = outlier_scores(sub, data.labels[rows], len(data.class_ids)) if len(rows) else np.zeros(0, np.float32)
    by_hash = {cat.keys[p]: s for p, s in zip(pos.tolist(), score.tolist())}
    outlier = np.array([by_hash.get(k, np.nan) for k in cat.keys], np.float32)
    return Found(np.where(group >= 0, cat.ids[np.maximum(group, 0)], -1), outlier, method)


def _conflict_groups(group_id: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The groups (group_id (G,) per member) whose members carry more than one label (labels (G,))."""
    if len(group_id) == 0:
        return np.zeros(0, np.int64)
    distinct = np.unique(np.stack([group_id, labels], axis=1), axis=0)
    g, n = np.unique(distinct[:, 0], return_counts=True)
    return g[n > 1]


def groups(store: Store, *, class_id: int | None = None, conflicts_only: bool = False, limit: int = 50,
           offset: int = 0) -> list[dict]:
    """Groups of the current run, label conflicts first: {group, size, conflict, labels, members: [{id, path,
    label, status, outlier_score}]}."""
    summaries = store.duplicate_group_summaries(class_id=class_id, conflicts_only=conflicts_only, limit=limit,
                                                offset=offset)
    members: dict[int, list[dict]] = {}
    for m in store.duplicate_members([s["group_id"] for s in summaries]):
        members.setdefault(m["group_id"], []).append(
            {"id": m["image_id"], "path": m["path"], "hash": m["hash"], "label": m["label"], "status": m["status"],
             "outlier_score": m["outlier_score"]})
    return [{"group": s["group_id"], "size": s["size"], "conflict": s["n_labels"] > 1,
             "labels": sorted({m["label"] for m in members.get(s["group_id"], [])}),
             "members": members.get(s["group_id"], [])} for s in summaries]
