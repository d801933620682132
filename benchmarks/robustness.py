"""The robustness suite: the product's own rounds and queue on noisy data sets of every kind, against fair baselines.

    python -m benchmarks.robustness --data $CIFAR10N --role test --json benchmarks/results/robustness.json

Per case (`benchmarks/suite_cases.py`), split of verified classes and seed, in a fresh state folder: ingest the
case's labels.csv, one worker round (`pipeline.run_round`, the first model), then 50 truthful verdicts drawn by
`annotator.queue.next_items` (its audit share and held-out audit verdicts included) and a round, twice. Each model
(0, 50, 100 verdicts) is judged on the images whose noisy label is an unverified class, beside baselines that get
the same features, the same out-of-fold probabilities (the round's own probe) and the same verdicts:

    flag_nothing     keep every label
    cleanlab         cleanlab.filter.find_label_issues (default settings) on the round's out-of-fold probabilities
    selfconf_vt      self-confidence p(noisy label) below a threshold chosen on the round's training verdicts
                     (0 verdicts: flag where the probe prefers another class)
    first_model      the same session's verdict-free first model
    paper            the paper's CleanNet on the same features and verdicts (--paper; first split and seed, 100
                     verdicts: 1,000 steps take minutes on a CPU)
    cleanlab_logreg  cleanlab on a separate 5-fold scikit-learn logistic regression (--logreg; CIFAR-10N cases)

Every case is either `dev` (chose the settings) or `test` (reported); the JSON records which, and the settings in
force. The feature cache is shared by all cases (same frozen backbone; images keyed by content).
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import sqlite3
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from annotator import backbone, pipeline
from annotator.ingest import ingest_csv
from annotator.queue import next_items
from annotator.round_config import RoundConfig, load_round_config, save_round_config
from annotator.store import Store
from cleannet_core.metrics import auroc
from cleannet_core.probe import ProbeConfig

from .common import CACHE
from .report import write_json
from .suite_cases import OPEN_SET, Case, build, cases, truth

LEVELS = (0, 50, 100)   # verdicts before each judged round
SCAN = ("PSEUDO", "RIDGE", "STRENGTH")  # cleannet_core.robust constants a dev scan may set (--robust)
ANNOTATOR = "sim"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the cifar10n folder (labels.csv, train/, test/)")
    p.add_argument("--role", default="test", choices=("dev", "test", "all"))
    p.add_argument("--cases", default="", help="comma-separated case names (default: every case of --role)")
    p.add_argument("--seeds", default="0,1,2", help="queue draws (audit coin, random picks)")
    p.add_argument("--splits", type=int, default=0, help="use only the first N class splits of each case (0: all)")
    p.add_argument("--paper", action="store_true", help="also the paper's CleanNet (first split)")
    p.add_argument("--paper-steps", type=int, default=1000)
    p.add_argument("--logreg", action="store_true", help="also cleanlab on a separate logistic regression")
    p.add_argument("--method", default=None, help="scoring method of every round (default: the product's)")
    p.add_argument("--robust", action="append", default=[], metavar="NAME=VALUE",
                   help=f"a dev scan: set one of the flags' prior constants {', '.join(SCAN)} of "
                        "cleannet_core.robust for every round (repeatable; the JSON records the values in force)")
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    pairs = []
    for item in args.robust:
        name, _, value = item.partition("=")
        if name not in SCAN:
            p.error(f"--robust {item}: not one of {', '.join(SCAN)}")
        try:
            pairs.append((name, float(value)))
        except ValueError:
            p.error(f"--robust {item}: the value is not a number")
    args.robust = pairs
    return args


def scan(pairs: list[tuple[str, float]]) -> None:
    """Set the constants (NAME, value) of cleannet_core.robust that parse_args read from --robust."""
    from cleannet_core import robust
    for name, value in pairs:
        setattr(robust, name, value)


# ---- state folders ---------------------------------------------------------------------------------------------

def template(case: Case, built, cache: Path) -> Path:
    """A state folder with the case ingested and every feature cached (shared feature folder); built once."""
    folder = cache / "suite" / "state" / case.name / "template"
    db = folder / "annotator.db"
    if db.exists():
        return db
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shared = cache / "suite" / "features"
    shared.mkdir(parents=True, exist_ok=True)
    (folder / "features").symlink_to(shared.resolve(), target_is_directory=True)
    with Store(folder / "annotator.tmp.db") as store:
        ingest_csv(store, built.folder / "labels.csv", built.pool, progress=False)
        save_round_config(store, RoundConfig())
        data = pipeline.load_data(store)
        torch.manual_seed(0)  # the fresh head, hence the backbone id, is the same in every case: one feature cache
        model, info = pipeline.ensure_backbone(store, data, load_round_config(store), load=False)
        pipeline.features(store, data, model, info, load_round_config(store))
    (folder / "annotator.tmp.db").rename(db)
    return db


def session_store(db: Path, folder: Path) -> Store:
    """A copy of the template database in a fresh `folder` that shares the template's feature folder."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "features").symlink_to((db.parent / "features").resolve(), target_is_directory=True)
    with sqlite3.connect(db) as src, sqlite3.connect(folder / "annotator.db") as dst:
        src.backup(dst)
    return Store(folder / "annotator.db")


# ---- judging ---------------------------------------------------------------------------------------------------

def probe_probs(store: Store, data: pipeline.Data) -> np.ndarray:
    """(N, C) the current model's out-of-fold probe probabilities of every image, in data's order."""
    return pipeline.current_probs(store, data, load_round_config(store))


def flag_stats(flag: np.ndarray, wrong: np.ndarray, open_set: np.ndarray, score: np.ndarray | None = None) -> dict:
    """Flags (M,) bool against the truth wrong (M,) bool: error, shares flagged, AUROC when a score is given."""
    out = {"error": float((flag != wrong).mean()), "flagged": float(flag.mean()),
           "correct_flagged": float(flag[~wrong].mean()) if (~wrong).any() else None,
           "wrong_caught": float(flag[wrong].mean()) if wrong.any() else None,
           "open_caught": float(flag[open_set].mean()) if open_set.any() else None}
    if score is not None:
        out["auroc"] = auroc(score, ~wrong) if 0 < wrong.sum() < len(wrong) else None
    return out


def verdict_threshold(own: np.ndarray, correct: np.ndarray) -> float:
    """The threshold t on self-confidence with the fewest errors of `own < t` on the verdicts (ties: lowest t)."""
    cand = np.concatenate([[0.0], np.sort(own) + 1e-9])
    errors = [int(((own < t) == correct).sum()) for t in cand]
    return float(cand[int(np.argmin(errors))])


def judge(store: Store, data: pipeline.Data, truths: dict, verified: set[int], *, first: np.ndarray | None) -> dict:
    """Every method's flags on the unverified classes; the model's per-class noise-rate estimates against the truth."""
    from cleanlab.filter import find_label_issues

    model = store.current_model()
    by_id = store.current_scores()
    score = np.array([by_id[int(i)] for i in data.ids])
    names = data.class_names
    t = [truths[str(Path(p).resolve())] for p in data.paths]
    wrong = np.array([clean != names[y] for (_, clean, _), y in zip(t, data.labels)])
    open_set = np.array([clean == OPEN_SET for _, clean, _ in t])
    held = ~np.isin(data.labels, list(verified))
    probs = probe_probs(store, data)
    own = probs[np.arange(len(data.labels)), data.labels]
    other = probs.copy()
    other[np.arange(len(data.labels)), data.labels] = -1
    prefers_other = other.max(axis=1) > own
    split = pipeline.verdict_split(store, data)
    delta = model["delta"]
    res = {"default": flag_stats(score[held] < delta, wrong[held], open_set[held], score[held]),
           "flag_nothing": flag_stats(np.zeros(held.sum(), bool), wrong[held], open_set[held]),
           "cleanlab": flag_stats(find_label_issues(data.labels, probs)[held], wrong[held], open_set[held],
                                  own[held])}
    if len(split.train):
        thr = verdict_threshold(own[split.train], split.train_correct)
        res["selfconf_vt"] = flag_stats(own[held] < thr, wrong[held], open_set[held], own[held]) | {"threshold": thr}
    else:
        res["selfconf_vt"] = flag_stats(prefers_other[held], wrong[held], open_set[held], own[held])
    if first is not None:
        res["first_model"] = flag_stats(first[0][held] < first[1], wrong[held], open_set[held], first[0][held])
    est = model["metrics"].get("per_class_noise_rate") or {}
    true_rate = {n: float(wrong[data.labels == c].mean()) for c, n in enumerate(names) if (data.labels == c).any()}
    gaps = [abs(est[n] - r) for n, r in true_rate.items() if est.get(n) is not None]
    # the share the flag score's own P(wrong) expects (1 - score): what the chart drew before the counting
    # calibration, kept to compare the two on the same runs
    by_score = {n: float(1 - score[data.labels == c].mean()) for c, n in enumerate(names) if (data.labels == c).any()}
    res["noise_rate"] = {"mae_all": float(np.mean(gaps)) if gaps else None,
                         "mae_flag_score": float(np.mean([abs(by_score[n] - r) for n, r in true_rate.items()])),
                         "estimated": est, "true": true_rate}
    res["model"] = {"version": model["version"], "n_train": len(split.train), "n_val": len(split.val),
                    "fallback": (model["metrics"] or {}).get("fallback"), "delta": delta}
    return res


def answer(store: Store, n: int, truths: dict, rng: random.Random) -> int:
    """Up to n truthful verdicts on items of the product's queue; returns how many were given."""
    given = 0
    while given < n:
        items = next_items(store, ANNOTATOR, rng=rng)
        if not items:
            break
        it = items[0]
        clean = truths[str(Path(it.path).resolve())][1]
        ok = clean == it.label
        store.record_verdict(it.image_id, ANNOTATOR, "correct" if ok else "wrong", reason=it.reason,
                             corrected_label=None if ok or clean == OPEN_SET else clean,
                             model_version=it.model_version)
        given += 1
    return given


def paper_run(store: Store, folder: Path, steps: int, data, truths, verified) -> dict:
    """The paper's CleanNet on a copy of `store` (same features and verdicts), judged like the default."""
    copy = session_store(store.path, folder)
    try:
        save_round_config(copy, RoundConfig(method="paper", steps=steps))
        pipeline.run_round(copy, load_round_config(copy))
        model = copy.current_model()
        by_id = copy.current_scores()
        score = np.array([by_id[int(i)] for i in data.ids])
        t = [truths[str(Path(p).resolve())] for p in data.paths]
        wrong = np.array([c != data.class_names[y] for (_, c, _), y in zip(t, data.labels)])
        open_set = np.array([c == OPEN_SET for _, c, _ in t])
        held = ~np.isin(data.labels, list(verified))
        return flag_stats(score[held] < model["delta"], wrong[held], open_set[held], score[held])
    finally:
        copy.close()


def session(case: Case, db: Path, split: list[int], seed: int, args, truths: dict, state: Path,
            paper: bool) -> list[dict]:
    store = session_store(db, state / "session")
    try:
        data = pipeline.load_data(store)
        store.set_verify([data.class_names[c] for c in split], True)
        if args.method:
            save_round_config(store, RoundConfig(method=args.method))
        rng = random.Random(seed)
        out, first, given = [], None, 0
        for level in LEVELS:
            given += answer(store, level - given, truths, rng)
            t0 = time.perf_counter()
            pipeline.run_round(store, load_round_config(store))
            round_s = time.perf_counter() - t0
            res = judge(store, data, truths, set(split), first=first)
            if first is None:
                by_id = store.current_scores()
                first = (np.array([by_id[int(i)] for i in data.ids]), store.current_model()["delta"])
            if paper and level == LEVELS[-1]:
                res["paper"] = paper_run(store, state / "paper", args.paper_steps, data, truths, set(split))
            out.append({"case": case.name, "role": case.role, "kind": case.kind, "split": split, "seed": seed,
                        "verdicts": given, "round_s": round(round_s, 2)} | res)
        return out
    finally:
        store.close()


def logreg_baseline(db: Path, truths: dict, splits: list[list[int]]) -> dict:
    """cleanlab on its own 5-fold logistic regression (the benchmark's earlier baseline), per split."""
    from .methods import cleanlab_flags

    with Store(db) as store:
        data = pipeline.load_data(store)
        info = pipeline.ensure_backbone(store, data, load_round_config(store), load=False)[1]
        feats, _ = pipeline.features(store, data, None, info, load_round_config(store))
    t = [truths[str(Path(p).resolve())] for p in data.paths]
    wrong = np.array([c != data.class_names[y] for (_, c, _), y in zip(t, data.labels)])
    open_set = np.array([c == OPEN_SET for _, c, _ in t])
    flags, own = cleanlab_flags(feats.astype(np.float32), data.labels, 0)
    out = {}
    for split in splits:
        held = ~np.isin(data.labels, split)
        out[",".join(map(str, split))] = flag_stats(flags[held], wrong[held], open_set[held], own[held])
    return out


def settings() -> dict:
    """Every setting in force for the default round (the JSON records them)."""
    from cleannet_core import robust
    return {"round": asdict(RoundConfig()), "probe": asdict(ProbeConfig()),
            "robust": {"signals": list(robust.SIGNALS), "prior_w": list(robust.PRIOR_W), "prior_b": robust.PRIOR_B,
                       "pseudo": robust.PSEUDO, "ridge": robust.RIDGE, "anchor_rows": robust.ANCHOR_ROWS,
                       "counting_signals": ["noise_logit > 0", "noise_logit < 0", "in_domain", "label_logit"],
                       "counting_prior_w": list(robust.ESTIMATE_W), "counting_strength": robust.STRENGTH,
                       "delta": robust.DELTA,
                       "noise_model": {"anchor_percentile": 97.0, "em_iterations": 100, "top_k": 16}},
            "image_size": f"{backbone.UPSCALE_224_FROM} images and more: 224 px, else 128 px (small images)",
            "queue": {"audit_share": 0.2, "retrain_every": 50}, "levels": list(LEVELS),
            "chosen_on": "dev cases only (benchmarks/robust_prior.py, the emulated sessions of the dev cases)"}


def main(argv=None) -> dict:
    args = parse_args(argv)
    scan(args.robust)
    chosen = [c for c in cases() if (args.role == "all" or c.role == args.role)
              and (not args.cases or c.name in args.cases.split(","))]
    seeds = [int(s) for s in args.seeds.split(",")]
    runs, extra, t_all = [], {}, time.perf_counter()
    for case in chosen:
        built = build(case, data=args.data, cache=args.cache)
        truths = truth(built)
        db = template(case, built, args.cache)
        splits = case.splits(len(built.class_names))[: args.splits or None]
        if args.logreg and case.kind == "cifar10n":
            extra[case.name] = {"cleanlab_logreg": logreg_baseline(db, truths, splits)}
        for k, split in enumerate(splits):
            for seed in seeds:
                state = args.cache / "suite" / "state" / case.name / "run"
                rows = session(case, db, split, seed, args, truths, state, args.paper and k == 0 and seed == seeds[0])
                runs += rows
                print(json.dumps({r["verdicts"]: (round(r["default"]["error"], 4), round(r["flag_nothing"]["error"], 4),
                                                  round(r["cleanlab"]["error"], 4)) for r in rows}),
                      case.name, split, seed, flush=True)
    out = {"machine": platform.processor() or platform.machine(), "method": args.method or RoundConfig().method,
           "settings": settings(),
           "cases": [{"name": c.name, "role": c.role, "kind": c.kind, "params": c.params,
                      "splits": c.splits()[: args.splits or None]} for c in chosen],
           "seeds": seeds, "runs": runs, "per_case": extra, "wall_s": round(time.perf_counter() - t_all, 1)}
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
