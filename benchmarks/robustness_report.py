"""Tables and the issue's acceptance checks from a robustness suite JSON (benchmarks/robustness.py).

    python -m benchmarks.robustness_report benchmarks/results/robustness.json --role test

Per case and verdict count: each method's flag error as a multiple of flagging nothing's (mean and worst over
splits x seeds), the default's AUROC (mean and lowest), open-set images caught, and the noise-rate chart's mean
absolute error over classes. Then the checks, each with the cases where it fails, worst first.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

BASELINES = ("cleanlab", "selfconf_vt", "first_model")


def ratio(run: dict, method: str) -> float | None:
    """The method's flag error / flagging nothing's on one run (None when it has no such row)."""
    m = run.get(method)
    return None if m is None else m["error"] / max(run["flag_nothing"]["error"], 1e-12)


def groups(runs: list[dict]) -> dict[tuple[str, int], list[dict]]:
    out: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in runs:
        out[(r["case"], r["verdicts"])].append(r)
    return out


def table(runs: list[dict]) -> list[str]:
    """Markdown rows: one per case and verdict count."""
    head = ("| case | verdicts | default | worst | cleanlab | self-conf. | first model | AUROC | lowest | "
            "open-set caught | noise-rate MAE |")
    lines = [head, "|" + "|".join(["---"] * 11) + "|"]
    for (case, v), rs in groups(runs).items():
        d = [ratio(r, "default") for r in rs]
        cells = [f"{np.mean(d):.2f}", f"{np.max(d):.2f}"]
        for b in BASELINES:
            vals = [x for x in (ratio(r, b) for r in rs) if x is not None]
            cells.append(f"{np.mean(vals):.2f}" if vals else "")
        auc = [r["default"]["auroc"] for r in rs if r["default"]["auroc"] is not None]
        op = [r["default"]["open_caught"] for r in rs if r["default"]["open_caught"] is not None]
        mae = [r["noise_rate"]["mae_all"] for r in rs if r["noise_rate"]["mae_all"] is not None]
        cells += [f"{np.mean(auc):.3f}", f"{np.min(auc):.3f}", f"{np.mean(op):.0%}" if op else "",
                  f"{np.mean(mae) * 100:.1f} pt" if mae else ""]
        lines.append(f"| {case} | {v} | " + " | ".join(cells) + " |")
    return lines


def checks(runs: list[dict]) -> dict:
    """The issue's acceptance points, measured: each {holds, value(s), failing cases}."""
    g = groups(runs)
    out: dict = {}
    losing = [(r["case"], r["split"], r["seed"], r["verdicts"], round(ratio(r, "default"), 3)) for r in runs
              if r["default"]["error"] > r["flag_nothing"]["error"]]
    worst = sorted(losing, key=lambda t: -t[-1])
    out["never_worse_than_flagging_nothing"] = {"holds": not losing, "runs": len(runs), "losing_runs": len(losing),
                                                "losing_cases": sorted({t[0] for t in losing}),
                                                "worst": [f"{c} split {s} seed {r}, {v} verdicts: {x}"
                                                          for c, s, r, v, x in worst[:5]]}
    teach = {}
    for case in sorted({r["case"] for r in runs if r["kind"] in ("structured", "openset")}):
        first = np.mean([r["default"]["error"] for r in g[(case, 0)]])
        last = np.mean([r["default"]["error"] for r in g[(case, max(v for c, v in g if c == case))]])
        teach[case] = round(1 - last / first, 3)
    raised = sorted({c for (c, v), rs in g.items() if v and np.mean([r["default"]["error"] for r in rs]) >
                     np.mean([r["default"]["error"] for r in g[(c, 0)]]) + 1e-12})
    out["verdicts_teach"] = {"holds": all(x >= 0.10 for x in teach.values()) and not raised,
                             "error_cut_at_100": teach, "cases_where_verdicts_raise_error": raised}
    mean = {m: float(np.mean([r[m]["error"] for r in runs if m in r])) for m in ("default", "cleanlab", "selfconf_vt")}
    worse = {b: sorted({c for (c, v), rs in g.items() if np.mean([r["default"]["error"] for r in rs]) > 1.05 *
                        np.mean([r[b]["error"] for r in rs])}) for b in ("cleanlab", "selfconf_vt")}
    out["ahead_of_fair_baselines"] = {"holds": mean["default"] <= 0.9 * min(mean["cleanlab"], mean["selfconf_vt"])
                                      and not any(worse.values()), "mean_error": mean,
                                      "cases_more_than_5pct_worse": worse}
    auc = {kind: [] for kind in ("n10n-10k", "digits", "structured", "openset")}
    for r in runs:
        key = "n10n-10k" if r["kind"] == "cifar10n" and r["case"].endswith("10k") else r["kind"]
        if key in auc and r["default"]["auroc"] is not None:
            auc[key].append(r["default"]["auroc"])
    out["ranking"] = {k: {"mean": float(np.mean(v)), "lowest": float(np.min(v))} for k, v in auc.items() if v}
    opened = [r["default"]["open_caught"] for r in runs if r["verdicts"] == 100 and r["default"]["open_caught"]
              is not None]
    out["open_set_caught_at_100"] = float(np.mean(opened)) if opened else None
    digits = [r["default"]["error"] for r in runs if r["kind"] == "digits" and r["verdicts"] == 0]
    out["digits_error_no_verdicts"] = float(np.mean(digits)) if digits else None
    mae, by_score = defaultdict(list), defaultdict(list)
    for r in runs:
        if r["noise_rate"]["mae_all"] is not None:
            key = "n10n-10k" if r["kind"] == "cifar10n" and r["case"].endswith("10k") else r["kind"]
            mae[key].append(r["noise_rate"]["mae_all"])
            mae[f"{key} at {r['verdicts']}"].append(r["noise_rate"]["mae_all"])
            if r["noise_rate"].get("mae_flag_score") is not None:  # the count 1 - flag score would give
                by_score[key].append(r["noise_rate"]["mae_flag_score"])
                by_score[f"{key} at {r['verdicts']}"].append(r["noise_rate"]["mae_flag_score"])
    out["noise_rate_mae"] = {k: float(np.mean(v)) for k, v in sorted(mae.items())}
    out["noise_rate_mae_flag_score"] = {k: float(np.mean(v)) for k, v in sorted(by_score.items())}
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json", type=Path)
    p.add_argument("--role", default="test", choices=("dev", "test"))
    args = p.parse_args(argv)
    data = json.loads(args.json.read_text())
    runs = [r for r in data["runs"] if r["role"] == args.role]
    print("\n".join(table(runs)))
    result = checks(runs)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
