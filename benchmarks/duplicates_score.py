"""Label conflicts in the score: does lowering the score of an image whose near-duplicate carries another label
(`cleannet_core.duplicates.conflict_share`, the round setting `conflict_weight`) flag wrong labels better? Dev
chooses the weight, test reports.

    python -m benchmarks.duplicates_score --cifar10n $CIFAR10N --json benchmarks/results/duplicates-score.json

The cases of `benchmarks/duplicates.py` (dev and test: 3,000 CIFAR-10 test images under their clean labels, 150
copies of which half carry another label than their original, 60 digits under random labels). A label is wrong
when it is a copy's label that differs from its original's, or a digit's. Each case gets one round of the product
with its defaults (`pipeline.run_round`, no verdicts), its near-duplicate groups (`annotator.duplicates.refresh`),
then the scores published by `pipeline.rescore` with each weight (the product's path: the current groups are read
from the store). Flag error: the share of images whose flag (score < the model's delta) disagrees with the truth;
AUROC of the score for the wrong labels (lower score = more likely wrong). Byte-identical copies are never scored
(the export gives them their original's verdicts) and are left out. Dev chooses the weight with the lowest flag
error, then the highest AUROC.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from annotator import duplicates as dup
from annotator import pipeline
from annotator.round_config import RoundConfig, load_round_config
from cleannet_core.metrics import auroc

from . import duplicates as cases
from .report import write_json

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def wrong_labels(store, folder: Path, cache: Path) -> dict[int, bool]:
    """{image id: its label is wrong} of an ingested case."""
    with open(folder / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    pool = (cache / "duplicates" / "pool").resolve()
    by_path = {r["path"]: r["id"] for r in store.iter_images()}
    out = {}
    for r in rows:
        src = int(r["source"])
        out[by_path[str((pool / r["path"]).resolve())]] = r["kind"] == "other" or (
            src >= 0 and r["label"] != rows[src]["label"])
    return out


def evaluate(name: str, args: argparse.Namespace) -> dict:
    folder = cases.build_case(name, data=args.cifar10n, cache=args.cache, n_base=args.n_base)
    store = cases.case_store(name, folder, args.cache)
    cfg = load_round_config(store)
    torch.manual_seed(0)  # the same fresh head, hence backbone id and feature cache, as benchmarks/duplicates.py
    pipeline.run_round(store, replace(cfg, conflict_weight=0.0))
    run = dup.refresh(store, cfg)
    wrong = wrong_labels(store, folder, args.cache)
    out = {}
    for w in WEIGHTS:
        version = pipeline.rescore(store, replace(cfg, conflict_weight=w))
        delta = store.current_model()["delta"]
        rows = store.db.execute("SELECT image_id, score FROM scores WHERE model_version = ?", [version]).fetchall()
        score = np.array([s for _, s in rows], np.float64)
        truth = np.array([wrong[i] for i, _ in rows])
        out[str(w)] = {"flag_error": float(np.mean((score < delta) != truth)),
                       "auroc": float(auroc(-score, truth)), "flagged": int((score < delta).sum())}
    store.close()
    return {"role": name, "images_scored": len(rows), "wrong_labels": int(truth.sum()), "delta": delta,
            "groups": run["n_groups"], "conflict_groups": run["n_conflicts"], "by_weight": out}


def main(argv=None) -> dict:
    args = cases.case_args(__doc__, argv, roles_help="dev chooses the weight; test reports")
    load = os.getloadavg()
    dev = evaluate("dev", args)
    chosen = min(WEIGHTS, key=lambda w: (dev["by_weight"][str(w)]["flag_error"], -dev["by_weight"][str(w)]["auroc"]))
    test = evaluate("test", args) if "test" in args.roles.split(",") else None
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "load_avg": {"start": load,
                                                                                    "end": os.getloadavg()},
           "chosen_on": "dev", "reported_on": "test", "weights": list(WEIGHTS), "chosen_weight": chosen,
           "product_weight": RoundConfig().conflict_weight, "dev": dev, "test": test}
    for r in (r for r in (dev, test) if r):
        print(f"{r['role']}: {r['wrong_labels']} wrong of {r['images_scored']} scored, delta {r['delta']:.3f}; "
              + "; ".join(f"w {w}: flag error {v['flag_error']:.4f} AUROC {v['auroc']:.4f}"
                          for w, v in r["by_weight"].items()))
    print(f"chosen on dev: {chosen}")
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
