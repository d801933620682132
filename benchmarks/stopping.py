"""Does the stopping signal say the right thing? When it says "verify another class", do the next verdicts in that
class teach the model less than the same number in the class Admin suggests?

    nice -n 5 python -m benchmarks.stopping --json benchmarks/results/stopping.json

Simulated demo sessions (the template of `benchmarks.lead_view`: the demo with its first model). Each session
verifies five classes drawn by its seed (dev seeds choose a threshold, test seeds report with other class splits),
answers --verdicts queue items truthfully (`demo_session.answer_next`) and runs a round whenever one is due, as
the worker does. After each round, per verified class c with a signal (``metrics.verdict_influence``):

- stay: the next --k verdicts in c (its unjudged images in the queue's order, lowest |score - delta| first,
  answered from the clean labels) appended to the round's verdicts and the weights refitted;
- switch: the same for the class Admin suggests first (the unverified class with the most expected wrong
  labels, the sum of 1 - score over its unjudged images);
- gain = the drop in the flags' error on the other unverified classes' unjudged images (clean labels), the
  population both choices leave unjudged. "Switch wins" when its gain is larger.

A threshold is good when the classes it stops are those where switching wins: per threshold the share of stopped
rows where switching wins, of going rows where staying wins, and their balanced mean (chosen on dev).
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import time
from pathlib import Path

import numpy as np

from annotator import backbone, pipeline
from annotator.artifacts import load_scorer
from annotator.demo import DEMO
from annotator.progress import next_round
from annotator.round_config import load_round_config
from annotator.store import Store
from cleannet_core import scoring
from cleannet_core.probe import Probe
from cleannet_core.robust import DELTA, RobustScore, fit_flag_weights

from .demo_session import answer_next
from .lead_view import copy_template, template
from .report import config_of, write_json

DEV, TEST = range(0, 6), range(100, 106)
SHARES = (0.005, 0.01, 0.02, 0.05, 0.1)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--verdicts", type=int, default=200)
    p.add_argument("--k", type=int, default=20, help="verdicts of the stay / switch choice")
    p.add_argument("--dev", type=int, default=len(DEV), help="dev sessions (seeds 0, 1, ...)")
    p.add_argument("--test", type=int, default=len(TEST), help="test sessions (seeds 100, 101, ...)")
    p.add_argument("--state", type=Path, default=Path("/tmp/stopping"))
    p.add_argument("--keep-template", action="store_true")
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


def round_arrays(store: Store) -> dict:
    """The current robust model's inputs, as its round had them: labels, out-of-fold probabilities, weights,
    the verdicts it was fitted on (rows, correct) and its scores."""
    cfg = load_round_config(store)
    data = backbone.load_data(store)
    model, info = backbone.ensure_backbone(store, data, cfg, load=False)
    feats, readable = pipeline.features(store, data, model, info, cfg)
    ckpt = load_scorer(store.current_model()["checkpoint"])
    probs = Probe.from_state(ckpt["probe"]).predict(feats, scoring.folds_of(data.ids))
    split = pipeline.verdict_split(store, data, readable)
    rs = RobustScore.from_state(ckpt["robust"])
    return {"data": data, "probs": probs, "rs": rs, "x": rs.signals(probs, data.labels), "train": split.train,
            "ok": split.train_correct, "judged": np.isin(np.arange(len(data.ids)), split.every()[0])}


def gain(a: dict, extra: np.ndarray, truth: np.ndarray, population: np.ndarray) -> float:
    """Drop in the flags' error on population (N,) bool when verdicts on rows extra are added to the fit."""
    rows = np.concatenate([a["train"], extra])
    ok = np.concatenate([a["ok"], truth[extra]])
    w, b = fit_flag_weights(a["x"][rows], ok, a["x"])
    before = a["rs"](a["x"]) < DELTA
    after = RobustScore(a["rs"].noise, w, b)(a["x"]) < DELTA
    wrong = ~truth
    return float((before[population] != wrong[population]).mean() - (after[population] != wrong[population]).mean())


def choices(store: Store, clean: dict[str, str], k: int, verdicts: int, seed: int) -> list[dict]:
    """One row per verified class with a signal: the signal and the gains of staying and switching."""
    a = round_arrays(store)
    data, metrics = a["data"], store.current_model()["metrics"]
    names = data.class_names
    truth = np.array([names[lab] == clean[Path(p).name] for p, lab in zip(data.paths, data.labels)])
    score = a["rs"](a["x"])
    verified = set(store.verify_classes())
    open_ = ~a["judged"]
    unverified = [c for c, n in enumerate(names) if n not in verified]
    expected = {c: float((1 - score)[(data.labels == c) & open_].sum()) for c in unverified}
    switch = max(unverified, key=expected.get)
    population = np.isin(data.labels, [c for c in unverified if c != switch]) & open_

    def next_k(c: int) -> np.ndarray:
        rows = np.flatnonzero((data.labels == c) & open_)
        return rows[np.argsort(np.abs(score[rows] - DELTA), kind="stable")][:k]

    g_switch = gain(a, next_k(switch), truth, population)
    out = []
    for name, inf in (metrics.get("verdict_influence") or {}).items():
        c = names.index(name)
        out.append({"seed": seed, "verdicts": verdicts, "class": name,
                    "moved_share": inf["moved"] / max(inf["flagged"], 1),
                    "gain_stay": gain(a, next_k(c), truth, population), "gain_switch": g_switch,
                    "switch_to": names[switch]})
    return out


def session(seed: int, base: Path, state: Path, n: int, k: int, clean: dict[str, str]) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    with Store(copy_template(base, state)) as store:
        names = sorted(c["name"] for c in store.classes())
        store.set_verify(names, False)
        store.set_verify(sorted(rng.sample(names, 5)), True)
        for answered in range(1, n + 1):
            if answer_next(store, clean, rng) is None:
                break
            if next_round(store)["due"]:
                pipeline.run_round(store, load_round_config(store))
                rows += choices(store, clean, k, answered, seed)
    return rows


def agreement(rows: list[dict], share: float) -> dict:
    """Stopped rows (moved_share < share) where switching wins, going rows where staying wins, balanced mean."""
    stop = np.array([r["moved_share"] < share for r in rows], bool)
    wins = np.array([r["gain_switch"] > r["gain_stay"] for r in rows], bool)
    s = float(wins[stop].mean()) if stop.any() else None
    g = float((~wins[~stop]).mean()) if (~stop).any() else None
    parts = [v for v in (s, g) if v is not None]

    def mean_when_stopped(key: str) -> float | None:
        return float(np.mean([r[key] for r, st in zip(rows, stop) if st])) if stop.any() else None
    return {"share": share, "stopped": int(stop.sum()), "rows": len(rows), "switch_wins_when_stopped": s,
            "stay_wins_when_going": g, "balanced": float(np.mean(parts)) if parts else None,
            "gain_stay_when_stopped": mean_when_stopped("gain_stay"),
            "gain_switch_when_stopped": mean_when_stopped("gain_switch")}


def main(argv=None) -> dict:
    args = parse_args(argv)
    with open(DEMO / "labels.csv", newline="") as f:
        clean = {Path(r["path"]).name: r["clean_label"] for r in csv.DictReader(f)}
    load0, t0 = os.getloadavg(), time.perf_counter()
    base = args.state / "template"
    if not (args.keep_template and (base / "annotator.db").exists()):
        template(base)
    out = {"config": config_of(args), "machine": "2-core AMD EPYC, no GPU", "load_avg": {"start": load0}}
    for split, seeds in (("dev", list(DEV)[:args.dev]), ("test", list(TEST)[:args.test])):
        rows = []
        for seed in seeds:
            rows += session(seed, base, args.state / "session", args.verdicts, args.k, clean)
            print(f"{split} seed {seed}: {len(rows)} rows", flush=True)
        out[split] = {"seeds": seeds, "rows": rows, "by_share": [agreement(rows, s) for s in SHARES]}
        write_json(args.json, out)
    dev = [r for r in out["dev"]["by_share"] if r["balanced"] is not None]
    chosen = max(dev, key=lambda r: r["balanced"])["share"] if dev else None
    out |= {"chosen_share": chosen, "test_at_chosen": agreement(out["test"]["rows"], chosen) if chosen else None,
            "wall_s": round(time.perf_counter() - t0, 1), "load_avg": {"start": load0, "end": os.getloadavg()}}
    write_json(args.json, out)
    print({k: out[k] for k in ("chosen_share", "test_at_chosen")})
    return out


if __name__ == "__main__":
    main()
