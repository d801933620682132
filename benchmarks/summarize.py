"""Mean and spread over seeds of several `benchmarks.quality` JSON files: the ablation table.

    python -m benchmarks.summarize benchmarks/results/quality-*-s*.json --json summary.json

One row per method, one column group per label set: held-out error and AUROC as mean ± std (population
std over the seeds found), and the error ratio to cleanlab's error of the same run.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from .quality import METHODS
from .report import mean_over_seeds, write_json


def summarize(results: list[dict]) -> dict:
    """{labels: {method: {error_mean, error_std, auroc_mean, auroc_std, ratio_mean, ratio_std, seeds}}}."""
    runs = []
    sizes: dict[str, set[int]] = defaultdict(set)
    for r in results:
        held, lab = r["heldout"], r["config"]["labels"]
        sizes[lab].add(r["config"]["n_images"])
        if len(sizes[lab]) > 1:
            raise SystemExit(f"{lab}: runs of different sizes ({sorted(sizes[lab])} images); summarize each size alone")
        base = max(held["cleanlab"]["error"], 1e-12)
        runs += [{"labels": lab, "method": m, "error": v["error"], "auroc": v["auroc"], "ratio": v["error"] / base}
                 for m, v in held.items()]
    return mean_over_seeds(runs, "labels", "method", fields=("error", "auroc", "ratio"))


def markdown_table(summary: dict) -> str:
    labels = sorted(summary)
    head = "| method | " + " | ".join(f"{lb} error | {lb} AUROC | {lb} err / cleanlab" for lb in labels) + " |"
    rows = [head, "|---|" + "---|---|---|" * len(labels)]
    for m in METHODS:
        if not all(m in summary[lb] for lb in labels):
            continue
        cells = []
        for lb in labels:
            s = summary[lb][m]
            cells.append(f"{s['error_mean']:.4f} ± {s['error_std']:.4f} | "
                         f"{s['auroc_mean']:.3f} ± {s['auroc_std']:.3f}"
                         f" | {s['ratio_mean']:.2f}")
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    seeds = {lb: next(iter(summary[lb].values()))["seeds"] for lb in labels}
    return "\n".join(rows + [f"seeds per label set: {seeds}"])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path, help="quality JSON files")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    summary = summarize([json.loads(f.read_text()) for f in args.files])
    print(markdown_table(summary))
    write_json(args.json, summary)
    return summary


if __name__ == "__main__":
    main()
