"""Start-up wall time of the `annotator` command: the quick commands against a small database.

Each command runs ``--repeat`` times in a fresh process (``python -m annotator``, the same code the installed
``annotator`` script runs); the table gives the median and the fastest run. Baselines measured in the same
run: a bare interpreter (``python -c pass``), and ``import torch``, which every command paid before the
heavy imports moved into the commands that use them. The database is built once in a temp folder (200
images in 2 classes, 10 verdicts, an admin).

Usage::

    python -m benchmarks.cli_startup --repeat 7 --json benchmarks/results/cli_startup.json
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import config_of, write_json

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {  # name -> arguments after `annotator --db DB`
    "status": ["status"],
    "status --json": ["status", "--json"],
    "users list": ["users", "list"],
    "classes": ["classes"],
    "export (200 rows)": ["export", "--out", "-"],
    "--help": ["--help"],
}
BASELINES = {"python -c pass": ["-c", "pass"], "python -c 'import torch'": ["-c", "import torch"]}


def build_db(path: Path) -> None:
    from annotator import auth
    from annotator.store import Store
    with Store(path) as store:
        ids = store.ensure_classes(["cat", "dog"])
        store.add_images({"path": f"/img/{k}.jpg", "hash": str(k), "label_id": ids["cat" if k % 2 else "dog"]}
                         for k in range(1, 201))
        for k in range(1, 11):
            store.record_verdict(k, "ann", "correct" if k % 3 else "wrong", reason="audit")
        auth.ensure_admin(store)


def wall(args: list[str], repeat: int) -> list[float]:
    """Seconds per run of ``python ARGS`` from the repository root, output discarded."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env={**os.environ, "ANNOTATOR_ADMIN_PASSWORD": "bench-admin-password"})
        times.append(time.perf_counter() - t)
    return times


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=7, help="runs per command")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "annotator.db"
        build_db(db)
        for name, argv in BASELINES.items():
            rows[name] = wall(argv, args.repeat)
        for name, argv in COMMANDS.items():
            rows[name] = wall(["-m", "annotator", "--db", str(db), *argv], args.repeat)
    base = statistics.median(rows["python -c pass"])
    print("| command | median s | fastest s | median - bare interpreter s |\n| --- | --- | --- | --- |")
    for name, times in rows.items():
        print(f"| `{name}` | {statistics.median(times):.3f} | {min(times):.3f} | {statistics.median(times) - base:.3f} |")
    result = {"config": config_of(args), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f} at the end",
              "seconds": {k: {"median": statistics.median(v), "min": min(v), "runs": v} for k, v in rows.items()}}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
