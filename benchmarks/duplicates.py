"""Near-duplicates and outliers on constructed cases: pair recall and precision, outlier AUROC (dev chooses, test
reports).

    python -m benchmarks.duplicates --cifar10n $CIFAR10N --json benchmarks/results/duplicates.json

Each case: 3,000 CIFAR-10 test images (the dev case draws from one half of `suite_cases.cifar_test`, the test cases
`test` and `test-b` from the other, with other seeds), plus 2 % exact copies (the file's bytes), 3 % altered copies (one of:
re-encoded as JPEG at quality 20-60, resized to 20-28 or 48-64 px, cropped by 5-20 % of each side's length and
scaled back, flipped left-right), each copy of a different image, half of all copies under another label than
their original, and 2 % images from another domain (sklearn's digits drawn in colour, `suite_cases.coloured_digits`,
dev and test from disjoint halves) under random labels. The case is ingested as a user's data would be
(`annotator ingest --csv`), its features extracted with the product's default backbone (EfficientNet-Lite0,
ImageNet weights, 128 px for CIFAR's 32 px images below 20,000 images) into a feature cache shared by the cases.

Pairs: a true pair is an original and its copy; the predicted pairs are every pair of images in one predicted group
(connected components, so a chain counts every pair it implies). The settings are chosen on the dev case
(``choose``: features alone where pixels are not compared; with pixels, the features-alone cosine `pixel_until`,
`pixel_from` and `pixel_min`; `pair_stats` says which pairs are judged) and reported on the test cases through the
product's own path (`annotator.duplicates.refresh`, groups read back from
the store). Outlier score variants (class centroids, the round's k-means references, cleanlab's
OutOfDistribution on the same features as a baseline) are compared on both; the product's variant was chosen on dev.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from annotator import duplicates as dup
from annotator import pipeline
from annotator.ingest import ingest_csv
from annotator.round_config import RoundConfig, load_round_config, save_round_config
from annotator.store import Store
from cleannet_core.duplicates import (CROPS, GRAY_SIDE, GroupConfig, aligned_similarity, components, crop_thumbnails,
                                      hash_pairs, outlier_scores, similar_pairs)
from cleannet_core.metrics import auroc
from cleannet_core.references import KMeansConfig, build_references

from .common import CACHE
from .report import write_json
from .suite_cases import CLASSES, cifar_test, coloured_digits

CASES = {"dev": {"half": "dev", "seed": 10}, "test": {"half": "test", "seed": 20}, "test-b": {"half": "test", "seed": 30},
         "test-c": {"half": "test", "seed": 40}}
N_BASE, EXACT, ALTERED, OTHER = 3000, 0.02, 0.03, 0.02
ALTERATIONS = ("jpeg", "resize", "crop", "flip")
GRID = tuple(round(t, 3) for t in np.arange(0.70, 0.991, 0.01))  # GroupConfig.threshold (features alone) choices
PRECISION_FLOOR = 0.97  # dev: the highest recall at or above this precision (a margin over the 0.95 target)
PIXEL_UNTIL = tuple(round(t, 3) for t in np.arange(0.79, 0.991, 0.01))  # GroupConfig.pixel_until choices
PIXEL_FROM = (0.55, 0.60, 0.65, 0.70)    # GroupConfig.pixel_from choices: cosine from which thumbnails may confirm
PIXEL_MIN = (0.93, 0.94, 0.95, 0.955, 0.96, 0.965, 0.97, 0.98)  # GroupConfig.pixel_min choices


def alter(img: Image.Image, kind: str, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """An altered copy of a 32 px RGB image and the format to save it in."""
    if kind == "jpeg":
        return img, f"JPEG:{int(rng.integers(20, 61))}"
    if kind == "resize":
        side = int(rng.integers(20, 29)) if rng.random() < 0.5 else int(rng.integers(48, 65))
        return img.resize((side, side), Image.BICUBIC), "PNG"
    if kind == "crop":
        w, h = img.size
        cw, ch = (int(round(s * (1 - rng.uniform(0.05, 0.20)))) for s in (w, h))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return img.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BICUBIC), "PNG"
    return ImageOps.mirror(img), "PNG"


def build_case(name: str, *, data: Path, cache: Path, n_base: int = N_BASE) -> Path:
    """Write the case's images and labels.csv (path,label,source,kind; source = the row of the original a copy
    was made from, -1 otherwise); returns the case folder. Idempotent."""
    spec = CASES[name]
    folder, pool = cache / "duplicates" / name, cache / "duplicates" / "pool"
    if (folder / "labels.csv").exists():
        return folder
    rng = np.random.default_rng(spec["seed"])
    paths, clean = cifar_test(pool, data, spec["half"])
    pick = np.sort(rng.permutation(len(paths))[:n_base])
    rows = [(paths[i], CLASSES[clean[i]], -1, "original") for i in pick]
    n_exact, n_alt, n_other = (int(round(r * len(pick))) for r in (EXACT, ALTERED, OTHER))
    sources = rng.permutation(len(pick))[:n_exact + n_alt]
    moved = set(rng.permutation(len(sources))[:len(sources) // 2].tolist())  # half of the copies change label
    copies = pool / f"copies-{name}"
    copies.mkdir(parents=True, exist_ok=True)
    for k, src in enumerate(sources.tolist()):
        rel, label = rows[src][0], rows[src][1]
        if k in moved:
            label = CLASSES[(CLASSES.index(label) + int(rng.integers(1, len(CLASSES)))) % len(CLASSES)]
        if k < n_exact:
            kind, out = "exact", copies / f"{k:04d}-exact{Path(rel).suffix}"
            shutil.copyfile(pool / rel, out)
        else:
            kind = ALTERATIONS[(k - n_exact) % len(ALTERATIONS)]
            img, fmt = alter(Image.open(pool / rel).convert("RGB"), kind, rng)
            fmt, _, quality = fmt.partition(":")
            out = copies / f"{k:04d}-{kind}.{'jpg' if fmt == 'JPEG' else 'png'}"
            img.save(out, fmt, **({"quality": int(quality)} if quality else {}))
        rows.append((str(out.relative_to(pool)), label, src, kind))
    digits = coloured_digits(pool, spec["half"])
    for i in rng.permutation(len(digits))[:n_other].tolist():
        rows.append((digits[i], CLASSES[int(rng.integers(len(CLASSES)))], -1, "other"))
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "source", "kind"])
        w.writerows(rows)
    return folder


def case_store(name: str, folder: Path, cache: Path) -> Store:
    """The case ingested into a fresh state folder whose features/ is shared by every case."""
    state = cache / "duplicates" / "state" / name
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    shared = cache / "duplicates" / "features"
    shared.mkdir(parents=True, exist_ok=True)
    (state / "features").symlink_to(shared.resolve(), target_is_directory=True)
    store = Store(state / "annotator.db")
    with open(folder / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    buf = folder / "ingest.csv"
    with open(buf, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows((r["path"], r["label"]) for r in rows)
    ingest_csv(store, buf, cache / "duplicates" / "pool", progress=False)
    save_round_config(store, RoundConfig())
    return store


def truth(store: Store, folder: Path, cache: Path) -> tuple[set[tuple[int, int]], dict[int, str]]:
    """(true pairs of image ids (original, copy), {image id: kind}) of an ingested case."""
    with open(folder / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    pool = (cache / "duplicates" / "pool").resolve()
    by_path = {r["path"]: r["id"] for r in store.iter_images()}
    ids = [by_path[str((pool / r["path"]).resolve())] for r in rows]
    pairs = {tuple(sorted((ids[int(r["source"])], ids[k]))) for k, r in enumerate(rows) if int(r["source"]) >= 0}
    return pairs, {ids[k]: r["kind"] for k, r in enumerate(rows)}


def group_pairs(ids: np.ndarray, group_id: np.ndarray) -> set[tuple[int, int]]:
    """Every pair of image ids in one group."""
    members: dict[int, list[int]] = {}
    for i, g in zip(ids.tolist(), group_id.tolist()):
        if g >= 0:
            members.setdefault(g, []).append(i)
    return {p for m in members.values() for p in combinations(sorted(m), 2)}


def pair_stats(found: set, true: set, kinds: dict[int, str]) -> dict:
    """Recall and precision of found pairs against the planted ones. `precision` judges every found pair;
    `precision_judged` leaves out pairs of two untouched originals (CIFAR-10's test set holds near-duplicates of
    its own, whose truth the case does not know) and counts them as `unjudged_pairs`."""
    hit = found & true
    judged = {p for p in found if kinds[p[0]] != "original" or kinds[p[1]] != "original"}
    per_kind = {}
    for kind in ("exact", *ALTERATIONS):
        of_kind = {p for p in true if kinds[p[1]] == kind}
        per_kind[kind] = len(of_kind & found) / max(1, len(of_kind))
    return {"recall": len(hit) / max(1, len(true)), "precision": len(hit) / max(1, len(found)),
            "precision_judged": len(hit) / max(1, len(judged)), "unjudged_pairs": len(found - judged),
            "true_pairs": len(true), "found_pairs": len(found), "false_pairs": len(found - true),
            "recall_by_kind": per_kind}


def evaluate(name: str, args: argparse.Namespace, config: GroupConfig | None) -> dict:
    folder = build_case(name, data=args.cifar10n, cache=args.cache, n_base=args.n_base)
    store = case_store(name, folder, args.cache)
    cfg = load_round_config(store)
    data = pipeline.load_data(store)
    torch.manual_seed(0)  # the fresh head, hence the backbone id, is the same in every case: one feature cache
    model, info = pipeline.ensure_backbone(store, data, cfg, load=False)
    t = time.perf_counter()
    feats, readable = pipeline.features(store, data, model, info, cfg)
    extract_s = time.perf_counter() - t
    true, kinds = truth(store, folder, args.cache)
    cat = dup.catalog(store)
    # every setting of the grid on the same candidate pairs: the lowest cosine's pairs, filtered
    pairs, cos, _ = similar_pairs(feats, config=GroupConfig(threshold=min(GRID + PIXEL_FROM)))
    grays = [dup.read_gray(p_, k_) for p_, k_ in zip(data.paths, data.keys)]
    thumbs = crop_thumbnails(np.stack([g if g is not None else np.zeros((GRAY_SIDE,) * 2, np.float32) for g in grays]))
    pix = aligned_similarity(thumbs, pairs)
    pos = np.searchsorted(cat.ids, data.ids)
    exact = hash_pairs(cat.keys)

    def stats(keep: np.ndarray) -> dict:
        g = components(len(cat.ids), np.concatenate([exact, pos[pairs[keep]].reshape(-1, 2)]))
        s = pair_stats(group_pairs(cat.ids, np.where(g >= 0, cat.ids[np.maximum(g, 0)], -1)), true, kinds)
        return {k: s[k] for k in ("recall", "precision", "precision_judged", "false_pairs")}

    sweep = {str(t_): stats(cos >= t_) for t_ in GRID}
    sweep_pixels = {f"{u}|{lo}|{m}": stats((cos >= u) | ((cos >= lo) & (pix >= m)))
                    for u in PIXEL_UNTIL for lo in PIXEL_FROM for m in PIXEL_MIN}
    hash_only = pair_stats(group_pairs(cat.ids, components(len(cat.ids), exact)), true, kinds)
    config = config or choose(sweep, sweep_pixels)
    t = time.perf_counter()
    run = dup.refresh(store, cfg, config=config, force=True)
    group_s = time.perf_counter() - t
    product_groups = {}
    for m in store.iter_duplicate_members():
        product_groups.setdefault(m["group_id"], []).append(m["image_id"])
    found = {p for ms in product_groups.values() for p in combinations(sorted(ms), 2)}
    # outliers: positives are the images of another domain
    other = np.array([kinds[int(i)] == "other" for i in data.ids])
    ok_rows = readable
    refs, _ = build_references(feats[ok_rows], data.labels[ok_rows], len(data.class_ids), config=KMeansConfig(k=32))
    variants = {"centroid": outlier_scores(feats, data.labels, len(data.class_ids)),
                "references": outlier_scores(feats, data.labels, len(data.class_ids), refs=refs)}
    try:
        from cleanlab.outlier import OutOfDistribution
        variants["cleanlab_ood"] = -OutOfDistribution().fit_score(features=np.asarray(feats, np.float32))
    except ImportError:
        pass
    stored = {o["image_id"]: o["outlier_score"] for o in store.top_outliers(limit=len(cat.ids))}
    variants["product"] = np.array([stored[int(i)] for i in data.ids], np.float32)
    out_auroc = {k: float(auroc(-np.asarray(v, np.float64), ~other)) for k, v in variants.items()}
    store.close()
    return {"role": name, "threshold": config.threshold, "pixel_until": config.pixel_until,
            "pixel_from": config.pixel_from, "pixel_min": config.pixel_min, "images": int(len(cat.ids)),
            "planted": {"exact": int(round(EXACT * args.n_base)), "altered": int(round(ALTERED * args.n_base)),
                        "other_domain": int(other.sum()), "label_conflicts": sum(
                            1 for a, b in true if store_label(cat, a) != store_label(cat, b))},
            "pairs": pair_stats(found, true, kinds), "pairs_hash_only": hash_only, "sweep": sweep,
            "sweep_pixels": sweep_pixels,
            "outlier_auroc": out_auroc, "run": {k: run[k] for k in ("method", "n_groups", "n_conflicts")},
            "seconds": {"features": extract_s, "groups_and_outliers": group_s}}


def choose(sweep: dict, sweep_pixels: dict) -> GroupConfig:
    """The dev case's settings. Features alone (``threshold``, where pixels are not compared): the highest recall at
    a judged precision >= PRECISION_FLOOR, of equals the lowest threshold. With pixels: the highest recall at that
    floor, then the highest judged precision; of the settings that tie, the middle of the largest region: the
    pixel_from with the most tied settings (of equals, the lowest), the median pixel_min of its tied settings, then
    the median pixel_until of those left (the furthest from the settings that lose a pair or gain a false one)."""
    alone = [(v["recall"], -float(t_)) for t_, v in sweep.items() if v["precision_judged"] >= PRECISION_FLOOR]
    threshold = -max(alone)[1] if alone else max(GRID)
    ok = {tuple(map(float, k.split("|"))): (v["recall"], v["precision_judged"]) for k, v in sweep_pixels.items()
          if v["precision_judged"] >= PRECISION_FLOOR}
    if not ok:
        return GroupConfig(threshold=threshold, pixel_until=threshold, pixel_from=threshold)
    best = max(ok.values())
    tied = [k for k, v in ok.items() if v == best]
    lo = max(sorted({k[1] for k in tied}), key=lambda f: sum(k[1] == f for k in tied))  # first of equals: lowest
    mins = sorted(k[2] for k in tied if k[1] == lo)
    m = mins[(len(mins) - 1) // 2]
    until = sorted(k[0] for k in tied if k[1] == lo and k[2] == m)
    return GroupConfig(threshold=threshold, pixel_until=until[(len(until) - 1) // 2], pixel_from=lo, pixel_min=m)


def store_label(cat: dup.Catalog, image_id: int) -> int:
    return int(cat.labels[np.searchsorted(cat.ids, image_id)])


def case_args(doc: str, argv, *, roles_help: str, roles: str = "dev,test") -> argparse.Namespace:
    """The options of a script over the constructed cases: --cifar10n (or $CIFAR10N), --cache, --n-base, --roles,
    --json."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar10n", type=Path, default=os.environ.get("CIFAR10N"),
                   help="the cifar10n folder (test_labels.csv, test/); default $CIFAR10N")
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--n-base", type=int, default=N_BASE, help="CIFAR-10 test images per case before the copies")
    p.add_argument("--roles", default=roles, help=roles_help)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.cifar10n is None:
        p.error("give --cifar10n DIR or set $CIFAR10N")
    return args


def main(argv=None) -> dict:
    args = case_args(__doc__, argv, roles_help="dev chooses the settings; test, test-b and test-c report with them"
                                               " (without dev: the product's)", roles="dev,test,test-b,test-c")
    load = os.getloadavg()
    roles = args.roles.split(",")
    dev = evaluate("dev", args, None) if "dev" in roles else None
    chosen = GroupConfig(**{k: dev[k] for k in ("threshold", "pixel_until", "pixel_from", "pixel_min")}) if dev \
        else GroupConfig()
    tests = {r: evaluate(r, args, chosen) for r in roles if r != "dev"}
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "load_avg": {"start": load,
                                                                                    "end": os.getloadavg()},
           "chosen_on": "dev", "reported_on": sorted(tests), "precision_floor": PRECISION_FLOOR,
           "product": {k: getattr(GroupConfig(), k) for k in ("threshold", "pixel_until", "pixel_from", "pixel_min")},
           "dev": dev, **tests}
    for r in (r for r in (dev, *tests.values()) if r):
        pr = r["pairs"]
        print(f"{r['role']}: features alone from {r['pixel_until']}, pixels from {r['pixel_from']} at {r['pixel_min']}"
              f" (threshold {r['threshold']} without pixels): pair recall {pr['recall']:.3f} precision judged "
              f"{pr['precision_judged']:.3f}, all pairs {pr['precision']:.3f} ({pr['false_pairs']} false of "
              f"{pr['found_pairs']}, {pr['unjudged_pairs']} between two originals); by kind "
              f"{ {k: round(v, 3) for k, v in pr['recall_by_kind'].items()} }; hash only: recall "
              f"{r['pairs_hash_only']['recall']:.3f}; outlier AUROC "
              f"{ {k: round(v, 3) for k, v in r['outlier_auroc'].items()} }")
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
