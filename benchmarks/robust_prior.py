"""How the `robust` score's verdict-free weights (cleannet_core.robust.PRIOR_W, PRIOR_B) were chosen, on dev cases only.

    python -m benchmarks.robust_prior --data $CIFAR10N --json benchmarks/results/robust-prior.json

For every dev case of the robustness suite: the product's probe (out-of-fold, folds = image id % 5) and noise model
on the case's cached features, then the signals of every image. A grid of (noise_logit weight, in_domain weight,
bias) is scored by each case's flag error / flagging nothing's, all images; the choice is the lowest mean ratio
among the weights whose worst dev case is at most MARGIN (a first model that beats flagging nothing by 5 % on
every dev case, so that it does not lose on cases it has not seen). label_logit's prior weight is 0: only
verdicts give it weight. Test cases play no part.
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from annotator import pipeline
from annotator.round_config import load_round_config
from annotator.store import Store
from cleannet_core.noise_model import fit_noise_model
from cleannet_core.probe import ProbeConfig, fit_probe
from cleannet_core.robust import RobustScore

from .common import CACHE
from .report import write_json
from .robustness import template
from .suite_cases import OPEN_SET, build, cases, truth

GRID = {"noise_logit": (0.2, 0.3, 0.43, 0.6, 0.8, 1.0), "in_domain": (0, 5, 10, 15, 20, 30, 50),
        "bias": (-0.5, 0.0, 0.5, 0.88, 1.25, 1.5, 2.0, 2.5, 3.0)}
MARGIN = 0.95


def case_signals(case, data_dir: Path, cache: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(signals (N, 3), wrong (N,) bool, noisy labels (N,) as the case's class indices) of every image of a case
    under the product's probe and noise model."""
    built = build(case, data=data_dir, cache=cache)
    truths = truth(built)
    with Store(template(case, built, cache)) as store:
        data = pipeline.load_data(store)
        info = pipeline.ensure_backbone(store, data, load_round_config(store), load=False)[1]
        feats, _ = pipeline.features(store, data, None, info, load_round_config(store))
    folds = data.ids % ProbeConfig.folds
    probs = fit_probe(feats, data.labels, folds, len(data.class_names)).predict(feats, folds)
    rs = RobustScore(fit_noise_model(probs, data.labels), np.zeros(3), 0.0)
    clean = [truths[str(Path(p).resolve())][1] for p in data.paths]
    wrong = np.array([c != data.class_names[y] or c == OPEN_SET for c, y in zip(clean, data.labels)])
    return rs.signals(probs, data.labels), wrong, data.labels


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    dev = [c for c in cases() if c.role == "dev"]
    sig = {c.name: case_signals(c, args.data, args.cache) for c in dev}
    rows = []
    for a, c, b in itertools.product(*GRID.values()):
        ratios = {}
        for name, (x, wrong, _) in sig.items():
            flag = x[:, 0] * a + x[:, 1] * c + b < 0  # P(correct) < 0.5
            ratios[name] = float((flag != wrong).mean() / wrong.mean())
        rows.append({"w": [a, c, 0.0], "b": b, "worst": max(ratios.values()),
                     "mean": float(np.mean(list(ratios.values()))), "ratios": ratios})
    ok = [r for r in rows if r["worst"] <= MARGIN] or rows
    chosen = min(ok, key=lambda r: r["mean"])
    print(f"chosen w={chosen['w']} b={chosen['b']}: worst {chosen['worst']:.3f}, mean {chosen['mean']:.3f}")
    for name, r in chosen["ratios"].items():
        print(f"  {name:24s} error / flagging nothing {r:.3f}")
    out = {"role": "dev", "cases": [c.name for c in dev], "grid": GRID, "chosen": chosen,
           "rule": f"lowest mean ratio among worst <= {MARGIN}",
           "best_rows": sorted(ok, key=lambda r: r["mean"])[:20]}
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
