"""Adapted features against the frozen ones, on the robustness suite's cases, through the product's own rounds.

    python -m benchmarks.adapted --data $CIFAR10N --case test-structured-open --splits 1 \
        --json benchmarks/results/adapted.json

Per case, split of verified classes and seed (as `benchmarks.robustness`): the frozen first model, 100 truthful
verdicts from the product's queue with a frozen round every 50, then the adapted round (`annotator.adapt_round`,
run whatever the CPU budget). Judged on the images whose noisy label is an unverified class: the frozen model, the
adapted model's own scores (served or not), and what the product serves after the guard; with the round's wall
time and the guard's decision. Cases are `dev` (chose the adapted settings) or `test` (reported).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

import numpy as np

from annotator import adapt_round, pipeline
from annotator.round_config import RoundConfig, load_round_config, save_round_config
from annotator.store import Store

from .common import CACHE
from .report import write_json
from .robustness import answer, flag_stats, session_store, template
from .suite_cases import OPEN_SET, build, by_name, truth

LEVEL = 100


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=os.environ.get("CIFAR10N"), help="CIFAR-10N folder ($CIFAR10N)")
    ap.add_argument("--case", action="append", required=True, help="suite case name (repeatable)")
    ap.add_argument("--splits", type=int, default=1, help="class splits per case")
    ap.add_argument("--seeds", type=int, default=1, help="verdict seeds per split")
    ap.add_argument("--epochs", type=int, default=RoundConfig().adapt_epochs)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/adapted.json"))
    return ap.parse_args(argv)


def judged(score: np.ndarray, delta: float, wrong: np.ndarray, open_set: np.ndarray, held: np.ndarray) -> dict:
    out = flag_stats(score[held] < delta, wrong[held], open_set[held], score[held])
    nothing = float(wrong[held].mean())
    return out | {"x_flag_nothing": out["error"] / nothing if nothing else None}


def verdict_session(store: Store, data: pipeline.Data, split: list[int], truths: dict, *, cfg: RoundConfig,
                    seed: int) -> tuple[int, np.ndarray, np.ndarray]:
    """A session up to the adapted round: the split's classes verified, the frozen first model, LEVEL truthful
    verdicts from the product's queue with a frozen round every LEVEL / 2 -> (verdicts given, wrong (N,) bool,
    open_set (N,) bool: the truth of data's images)."""
    store.set_verify([data.class_names[c] for c in split], True)
    save_round_config(store, cfg)
    rng, given = random.Random(seed), 0
    pipeline.run_round(store, cfg)
    for level in (LEVEL // 2, LEVEL):
        given += answer(store, level - given, truths, rng)
        pipeline.run_round(store, load_round_config(store))
    t = [truths[str(Path(p).resolve())] for p in data.paths]
    wrong = np.array([clean != data.class_names[y] for (_, clean, _), y in zip(t, data.labels)])
    return given, wrong, np.array([clean == OPEN_SET for _, clean, _ in t])


def session(case, db: Path, split: list[int], seed: int, truths: dict, state: Path, args) -> dict:
    store = session_store(db, state / "session")
    try:
        data = pipeline.load_data(store)
        given, wrong, open_set = verdict_session(store, data, split, truths, seed=seed,
                                                 cfg=RoundConfig(adapt_epochs=args.epochs, adapt="on"))
        held = ~np.isin(data.labels, split)
        frozen = store.current_model()
        by_id = store.current_scores()
        frozen_score = np.array([by_id[int(i)] for i in data.ids])
        t0 = time.perf_counter()
        outcome = adapt_round.run_adapt_round(store, load_round_config(store))
        wall = time.perf_counter() - t0
        by_id = store.current_scores()
        served = np.array([by_id[int(i)] for i in data.ids])
        record = store.get_setting(adapt_round.SETTING)
        return {"case": case.name, "role": case.role, "split": split, "seed": seed, "verdicts": given,
                "adapt_s": round(wall, 1), "guard": {k: record[k] for k in ("n", "errors", "current_errors",
                                                                           "better")},
                "frozen": judged(frozen_score, frozen["delta"], wrong, open_set, held),
                "adapted": judged(outcome.scores, 0.5, wrong, open_set, held),
                "served": judged(served, store.current_model()["delta"], wrong, open_set, held)}
    finally:
        store.close()


def main(argv=None) -> dict:
    args = parse_args(argv)
    runs = []
    for name in args.case:
        case = by_name(name)
        built = build(case, data=args.data, cache=CACHE)
        truths = truth(built)
        db = template(case, built, CACHE)
        for split in case.splits()[:args.splits]:
            for seed in range(args.seeds):
                state = CACHE / "suite" / "state" / case.name / "adapted"
                run = session(case, db, split, seed, truths, state, args)
                print(json.dumps({k: run[k] for k in ("case", "split", "adapt_s", "guard")}), flush=True)
                for kind in ("frozen", "adapted", "served"):
                    r = run[kind]
                    print(f"  {kind:8s} auroc {r['auroc']:.3f} error {r['error']:.3f} ({r['x_flag_nothing']:.2f} x "
                          f"nothing) open caught {r['open_caught']} correct flagged {r['correct_flagged']:.3f}",
                          flush=True)
                runs.append(run)
    out = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load "
                      f"{os.getloadavg()[0]:.1f} at the end (other jobs shared the cores)",
           "settings": {"adapt_epochs": args.epochs, "image_size": "the frozen backbone's", "verdicts": LEVEL,
                        "folds": adapt_round.FOLDS, "guard_min": adapt_round.GUARD_MIN},
           "runs": runs}
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
