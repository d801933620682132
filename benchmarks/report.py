"""What every benchmark does with its result: a JSON-ready config and the --json file."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def config_of(args: argparse.Namespace) -> dict:
    """The parsed flags as a JSON-ready dict (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def write_json(path: Path | None, result: dict) -> None:
    """Write `result` to `path` (parents created); nothing when no --json was given."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
