"""Do the lead's 95 % intervals cover the truth? Simulated sessions of the demo, the product's own queue and rounds.

    nice -n 5 python -m benchmarks.lead_view --sessions 20 --verdicts 200 --json benchmarks/results/lead-view.json

The demo's first model does not depend on the session (no verdict yet), so it is fitted once, in a template
state folder (`prepare_demo`, one worker round), which every session copies (database, feature cache, model
files). A session then answers --verdicts items of `annotator.queue.next_items` (its own random seed: audit
share and random draws) from the demo's clean labels, as a perfect annotator would (a 'wrong' verdict gives the
clean class), and runs a round whenever one is due (`progress.next_round`: every `retrain_every` verdicts), as
the worker does. The session's annotator is named for the transfer check, so its first items are the
--transfer random draws per unverified class; the --verdicts usual queue items follow. After each round it
compares `annotator.estimates.standing` with the truth from the clean labels:

- wrong labels remaining (unjudged images whose label is not the clean one), in all, in the verified classes
  measured by audits and in the other classes (the model's checked count);
- the flags' precision and recall at the threshold in force, estimated on the held-out audit verdicts, against
  the flags' precision and recall over the population the audit draws represent: the verified classes' images
  that no uncertainty-chosen verdict judged. Also reported over every unjudged image (the export's population,
  unverified classes included), which the audit verdicts never sample;
- the transfer check: the model's error (flags disagreeing with the clean labels) and AUROC over the unverified
  classes' images.

Covered: low <= truth <= high. No setting is chosen on these sessions (z = 1.96 throughout): every session is
a test case.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np

from annotator import pipeline
from annotator.demo import DEMO, prepare_demo
from annotator.estimates import States, auroc_interval, standing
from annotator.progress import next_round
from annotator.round_config import load_round_config
from annotator.store import Store

from .demo_session import answer_next
from .report import config_of, write_json


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--first-seed", type=int, default=0, help="sessions use seeds first-seed, first-seed + 1, ...")
    p.add_argument("--verdicts", type=int, default=200, help="truthful verdicts per session from the usual queue")
    p.add_argument("--transfer", type=int, default=20, help="transfer-check verdicts per unverified class (first)")
    p.add_argument("--state", type=Path, default=Path("/tmp/lead-view"), help="state folders (emptied first)")
    p.add_argument("--keep-template", action="store_true",
                   help="reuse the template (first model) an earlier run left in --state")
    p.add_argument("--json", type=Path)
    p.add_argument("--table", type=Path, help="only print the coverage table of an earlier run's JSON")
    return p.parse_args(argv)


def template(state: Path) -> float:
    """The demo with its first model in ``state``; returns the round's wall time in s."""
    if state.exists():
        shutil.rmtree(state)
    state.mkdir(parents=True)
    with Store(state / "annotator.db") as store:
        prepare_demo(store)
        t = time.perf_counter()
        pipeline.run_round(store, load_round_config(store))
        return time.perf_counter() - t


def truth(store: Store, clean: dict[str, str]) -> dict:
    """What the clean labels say about the current state: wrong labels left (all, verified classes with audit
    verdicts, the rest) and the flags' precision and recall at the threshold in force."""
    model = store.current_model()
    s = standing(store)
    states = States.of(store.image_states(model["version"]))
    wrong = np.array([clean[Path(r["path"]).name] != r["label"] for r in store.iter_images()], bool)
    audited = {store.class_id(r["class"]) for r in s["audited_classes"]["classes"]}
    verified = {c["id"] for c in store.classes() if c["verify"]}
    unjudged = states.ok & ~states.judged
    in_audited = np.isin(states.label, list(audited))
    flag = states.score < s["threshold"]

    def pr(pop: np.ndarray) -> dict:
        hit = int((flag & wrong & pop).sum())
        return {"precision": hit / max(int((flag & pop).sum()), 1), "recall": hit / max(int((wrong & pop).sum()), 1)}

    sampled = states.ok & np.isin(states.label, list(verified)) & (~states.judged | (states.reason == "audit"))
    unverified = states.ok & ~np.isin(states.label, list(verified))
    flag_u, wrong_u = flag[unverified], wrong[unverified]
    return {"remaining": int((unjudged & wrong).sum()),
            "transfer_error": float((flag_u != wrong_u).mean()),
            "transfer_auroc": auroc_interval(states.score[unverified], ~wrong_u)["auroc"],
            "remaining_audited": int((unjudged & wrong & in_audited).sum()),
            "remaining_model": int((unjudged & wrong & ~in_audited).sum()),
            "flags_sampled": pr(sampled), "flags_all_unjudged": pr(unjudged)}


def covers(d: dict | None, x: float) -> bool | None:
    return None if d is None else bool(d["low"] - 1e-9 <= x <= d["high"] + 1e-9)


def check(store: Store, clean: dict[str, str], n_verdicts: int) -> dict:
    """The estimates after a round, the truth, and which intervals cover it."""
    s, t = standing(store), truth(store, clean)
    flags = s["flags"]
    n_transfer = sum(v["reason"] == "transfer_check" for v in store.live_verdicts())
    out = {"verdicts": n_verdicts, "transfer_verdicts": n_transfer, "model_version": s["model_version"],
           "threshold": s["threshold"], "truth": t,
           "estimate": {"remaining": s["remaining"], "remaining_audited": s["audited_classes"]["remaining"],
                        "remaining_model": s["model_classes"]["remaining"],
                        "precision": flags["precision"], "recall": flags["recall"],
                        "calibration_check": s["model_classes"]["check"]},
           "covered": {"remaining": covers(s["remaining"], t["remaining"]),
                       "remaining_audited": covers(s["audited_classes"]["remaining"], t["remaining_audited"]),
                       "remaining_model": covers(s["model_classes"]["remaining"], t["remaining_model"])}}
    out["estimate"]["transfer"] = {k: v for k, v in s["transfer"].items() if k != "per_class"}
    err, auc = s["transfer"]["error"], s["transfer"]["auroc"]
    out["covered"]["transfer_error"] = (None if err["rate"] is None else
                                        bool(err["low"] - 1e-9 <= t["transfer_error"] <= err["high"] + 1e-9))
    out["covered"]["transfer_auroc"] = (None if auc["auroc"] is None else
                                        bool(auc["low"] - 1e-9 <= t["transfer_auroc"] <= auc["high"] + 1e-9))
    for key in ("precision", "recall"):
        r = flags[key]
        for pop in ("flags_sampled", "flags_all_unjudged"):
            out["covered"][f"{key}_{pop.removeprefix('flags_')}"] = (
                None if r["rate"] is None else bool(r["low"] - 1e-9 <= t[pop][key] <= r["high"] + 1e-9))
    return out


def copy_template(base: Path, state: Path) -> Path:
    """``state`` emptied, then a copy of the template ``base``; returns the copy's database."""
    if state.exists():
        shutil.rmtree(state)
    shutil.copytree(base, state)
    return state / "annotator.db"


def session(seed: int, base: Path, state: Path, n_verdicts: int, transfer: int, clean: dict[str, str]) -> dict:
    rng = random.Random(seed)
    checks = []
    with Store(copy_template(base, state)) as store:
        store.set_setting("transfer_annotators", ["sim"] if transfer else [])
        store.set_setting("transfer_per_class", transfer)
        answered = 0
        while answered < n_verdicts:
            it = answer_next(store, clean, rng)
            if it is None:
                break
            answered += it.reason != "transfer_check"
            if next_round(store)["due"]:
                pipeline.run_round(store, load_round_config(store))
                checks.append(check(store, clean, answered))
        if not checks or checks[-1]["verdicts"] != answered:  # the last verdicts' round
            pipeline.run_round(store, load_round_config(store))
            checks.append(check(store, clean, answered))
    return {"seed": seed, "checks": checks}


def tally(runs: list[dict]) -> dict:
    """Per number of verdicts and figure: sessions covered of those where the figure exists."""
    out: dict = {}
    for run in runs:
        for c in run["checks"]:
            node = out.setdefault(f"{c['verdicts']} verdicts + {c['transfer_verdicts']} transfer", {})
            for key, ok in c["covered"].items():
                cell = node.setdefault(key, {"covered": 0, "sessions": 0})
                if ok is not None:
                    cell["covered"] += ok
                    cell["sessions"] += 1
    return out


FIGURES = {"remaining": "wrong labels remaining", "remaining_audited": "... in verified classes (audits)",
           "remaining_model": "... in other classes (model, checked)", "transfer_error": "transfer check: model error",
           "transfer_auroc": "transfer check: AUROC", "precision_sampled": "flags' precision (audited population)",
           "recall_sampled": "flags' recall (audited population)",
           "precision_all_unjudged": "flags' precision (every unjudged image)",
           "recall_all_unjudged": "flags' recall (every unjudged image)"}


def table(out: dict) -> str:
    """Markdown: per figure, the sessions whose 95 % interval covers the truth, at each check point."""
    points = list(out["coverage"])
    lines = ["| figure | " + " | ".join(points) + " |", "| --- |" + " --- |" * len(points)]
    for key, name in FIGURES.items():
        cells = []
        for p in points:
            c = out["coverage"][p].get(key, {"covered": 0, "sessions": 0})
            cells.append(f"{c['covered']} / {c['sessions']}" if c["sessions"] else "—")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.table:
        out = json.loads(args.table.read_text())
        print(table(out))
        return out
    with open(DEMO / "labels.csv", newline="") as f:
        clean = {Path(r["path"]).name: r["clean_label"] for r in csv.DictReader(f)}
    load0, t0 = os.getloadavg(), time.perf_counter()
    base = args.state / "template"
    first_round_s = None if args.keep_template and (base / "annotator.db").exists() else template(base)
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.sessions):
        runs.append(session(seed, base, args.state / "session", args.verdicts, args.transfer, clean))
        last = runs[-1]["checks"][-1] if runs[-1]["checks"] else {}
        print(json.dumps({"seed": seed, "covered": last.get("covered")}), flush=True)
        out = {"config": config_of(args), "split": "test: no setting chosen on these sessions (z = 1.96 fixed)",
               "machine": "2-core AMD EPYC, no GPU", "load_avg": {"start": load0, "end": os.getloadavg()},
               "wall_s": round(time.perf_counter() - t0, 1),
               "first_round_s": None if first_round_s is None else round(first_round_s, 1),
               "sessions_done": len(runs), "coverage": tally(runs), "runs": runs}
        write_json(args.json, out)  # after every session: a run cut short keeps what it measured
    print(table(out))
    return out


if __name__ == "__main__":
    main()
