"""What verdicts could teach the `robust` score at most: its calibration fitted on the truth instead of 100 verdicts.

    python -m benchmarks.signal_ceiling --data $CIFAR10N --json benchmarks/results/signal-ceiling.json

For every case and class split of the robustness suite: the product's probe and noise model on the case's cached
features (`robust_prior.case_signals`), then three calibrations of the same signals, each judged on the unverified
classes by its flag error / flagging nothing's:

    prior        the verdict-free weights (cleannet_core.robust.PRIOR_W, PRIOR_B): the first model
    verified     fitted on the truth of *every* image of the verified classes: the most any number of verdicts on
                 those classes can teach the calibration
    own          fitted on the truth of the unverified classes themselves: the signals' ceiling for any calibration

Both fits are the product's constrained fit (`fit_weights`, weights >= 0) with a negligible prior. Where `own` is
close to `prior`, no verdict can help: the signals (the frozen features) are the limit. A diagnosis, not a
setting: nothing here is chosen.
"""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np

from cleannet_core.robust import PRIOR_B, PRIOR_W, fit_weights

from .common import CACHE
from .report import write_json
from .robust_prior import case_signals
from .suite_cases import cases

NEGLIGIBLE = 1e-3  # the fits' prior strength: the truth alone decides


def ratio(x: np.ndarray, wrong: np.ndarray, w: np.ndarray, b: float) -> float:
    """Flag error of P(correct) = sigmoid(x @ w + b) < 0.5 on signals x (M, 3) over flagging nothing's."""
    return float(((x @ w + b < 0) != wrong).mean() / wrong.mean())


def ceilings(x: np.ndarray, wrong: np.ndarray, labels: np.ndarray, split: list[int]) -> dict:
    """{prior, verified, own}: error / flagging nothing on the classes outside `split`, and the fitted weights."""
    verified = np.isin(labels, split)
    held = ~verified
    scale = x.std(axis=0)
    w_v, b_v = fit_weights(x[verified], ~wrong[verified], scale=scale, strength=NEGLIGIBLE)
    w_o, b_o = fit_weights(x[held], ~wrong[held], scale=scale, strength=NEGLIGIBLE)
    return {"prior": ratio(x[held], wrong[held], np.asarray(PRIOR_W), PRIOR_B),
            "verified": ratio(x[held], wrong[held], w_v, b_v), "own": ratio(x[held], wrong[held], w_o, b_o),
            "weights": {"verified": w_v.tolist() + [b_v], "own": w_o.tolist() + [b_o]}}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the cifar10n folder")
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--cases", help="comma-separated case names (default: all)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    chosen = [c for c in cases() if not args.cases or c.name in args.cases.split(",")]
    runs = []
    for case in chosen:
        x, wrong, labels = case_signals(case, args.data, args.cache)
        for split in case.splits():
            r = {"case": case.name, "role": case.role, "kind": case.kind, "split": split} | ceilings(
                x, wrong, labels, split)
            runs.append(r)
            print(f"{case.name:24s} {split}  prior {r['prior']:.3f}  verified {r['verified']:.3f}  own {r['own']:.3f}",
                  flush=True)
    per_case = {}
    for name in dict.fromkeys(r["case"] for r in runs):
        rs = [r for r in runs if r["case"] == name]
        per_case[name] = {k: float(np.mean([r[k] for r in rs])) for k in ("prior", "verified", "own")}
    out = {"machine": platform.processor() or platform.machine(), "benchmark": "benchmarks/signal_ceiling.py",
           "fit_strength": NEGLIGIBLE, "per_case": per_case, "runs": runs}
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
