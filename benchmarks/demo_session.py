"""A simulated demo session: the demo's first model, N truthful verdicts drawn by the product's own queue, the retrain.

    python -m benchmarks.demo_session --verdicts 50 --seeds 0,1,2 --json out.json

Per seed, in a fresh state folder: `prepare_demo` (ingest data/demo, verify its 5 classes, the demo's round
setting), one worker round (the first model; its wall and CPU time are recorded), then --verdicts verdicts from
`annotator.queue.next_items` answered from the demo's clean labels, then the retrain. Each model is judged on
the images of the 5 unverified classes: AUROC of its score, flag error (score below delta), and the error of
flagging nothing. The first seed's feature cache is copied to the others, so only seed 0 pays for extraction.
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import resource
import shutil
import time
from pathlib import Path

import numpy as np

from annotator import pipeline
from annotator.demo import DEMO, prepare_demo
from annotator.queue import QueueItem, next_items
from annotator.store import Store
from annotator.round_config import load_round_config
from cleannet_core.metrics import auroc

from .report import write_json


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--verdicts", type=int, default=50, help="truthful verdicts before the retrain")
    p.add_argument("--seeds", default="0,1,2", help="queue draws (audit share and random picks)")
    p.add_argument("--state", type=Path, default=Path("/tmp/demo-session"), help="state folders (emptied first)")
    p.add_argument("--warm", type=Path, help="a feature cache folder to start from (then no round time is cold)")
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


def answer_next(store: Store, clean: dict[str, str], rng: random.Random) -> QueueItem | None:
    """The queue's next item for the annotator "sim", answered from the clean labels (keyed by file name) with
    a corrected label when wrong; None when the queue is empty."""
    items = next_items(store, "sim", rng=rng)
    if not items:
        return None
    it = items[0]
    truth = clean[Path(it.path).name]
    store.record_verdict(it.image_id, "sim", "correct" if truth == it.label else "wrong", reason=it.reason,
                         corrected_label=None if truth == it.label else truth, model_version=it.model_version)
    return it


def judge(store: Store, clean: dict[str, str]) -> dict:
    """The current model on the unverified classes: AUROC, flag error, flag-nothing error."""
    model = store.current_model()
    names = {c["id"]: c["name"] for c in store.classes()}
    verified = {c["id"] for c in store.classes() if c["verify"]}
    scores = store.current_scores()
    rows = [r for r in store.iter_images() if r["status"] == "ok" and r["label_id"] not in verified]
    s = np.array([scores[r["id"]] for r in rows])
    ok = np.array([clean[Path(r["path"]).name] == names[r["label_id"]] for r in rows])
    m = model["metrics"]
    return {"version": model["version"], "n_verdicts": model["n_verdicts"], "auroc": round(auroc(s, ok), 4),
            "error": round(float(((s < model["delta"]) == ok).mean()), 4),
            "flag_nothing_error": round(float((~ok).mean()), 4), "flagged": round(float((s < model["delta"]).mean()), 4),
            "backbone": {k: m.get(k) for k in ("backbone_arch", "backbone_kind", "image_size")}}


def session(seed: int, state: Path, n_verdicts: int, clean: dict[str, str], warm: Path | None) -> dict:
    if state.exists():
        shutil.rmtree(state)
    state.mkdir(parents=True)
    if warm is not None:
        shutil.copytree(warm, state / "features")
    t0 = time.perf_counter()
    store = Store(state / "annotator.db")
    prepare_demo(store)
    t1 = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    pipeline.run_round(store, load_round_config(store))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    t2 = time.perf_counter()
    first = judge(store, clean) | {"ingest_s": round(t1 - t0, 1), "round_s": round(t2 - t1, 1),
                                   "round_cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 1)}
    rng = random.Random(seed)
    answered = 0
    while answered < n_verdicts and answer_next(store, clean, rng) is not None:
        answered += 1
    t3 = time.perf_counter()
    pipeline.run_round(store, load_round_config(store))
    retrain = judge(store, clean) | {"round_s": round(time.perf_counter() - t3, 1)}
    store.close()
    return {"seed": seed, "first_model": first, "retrain": retrain}


def main(argv=None) -> dict:
    args = parse_args(argv)
    with open(DEMO / "labels.csv", newline="") as f:
        clean = {Path(r["path"]).name: r["clean_label"] for r in csv.DictReader(f)}
    runs, warm = [], args.warm
    for seed in (int(s) for s in args.seeds.split(",")):
        runs.append(session(seed, args.state / f"seed{seed}", args.verdicts, clean, warm))
        warm = warm or args.state / f"seed{seed}" / "features"
        print(json.dumps(runs[-1]), flush=True)
    out = {"config": {"verdicts": args.verdicts, "seeds": args.seeds}, "runs": runs}
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
