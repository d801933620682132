"""What every benchmark does with its result: a JSON-ready config, mean ± std over seeds, the --json file."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def config_of(args: argparse.Namespace) -> dict:
    """The parsed flags as a JSON-ready dict (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def write_json(path: Path | None, result: dict) -> None:
    """Write `result` to `path` (parents created); nothing when no --json was given."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))


def mean_over_seeds(runs: list[dict], *keys: str, fields: tuple[str, ...] = ("error", "auroc")) -> dict:
    """Runs grouped by `keys` (nested dicts, in that order) -> {<field>_mean, <field>_std for each of `fields`,
    seeds} per group (population std over the runs of a group)."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out: dict = {}
    for group, rs in groups.items():
        node = out
        for part in group[:-1]:
            node = node.setdefault(part, {})
        stats: dict = {}
        for f in fields:
            v = np.array([r[f] for r in rs], dtype=np.float64)
            stats |= {f"{f}_mean": float(v.mean()), f"{f}_std": float(v.std())}
        node[group[-1]] = stats | {"seeds": len(rs)}
    return out
