"""Time from `make run`'s install to the demo's first model: `annotator demo` started cold, as `make run` does.

    python -m benchmarks.first_model --json benchmarks/results/first-model.json

Starts `python -m annotator --db STATE/annotator.db demo` (what `make run` starts) in a fresh state folder, so
with no cached feature and no model, and polls that database every 0.2 s until a current model exists;
records when each worker phase started, the total, and the load average before and after (a busy machine
says so). Then stops the app and the worker. The install itself is not timed: `make run` skips it once done.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from .report import write_json


def poll(db: Path) -> tuple[str | None, bool]:
    """(the worker's phase, whether a current model exists); (None, False) before the store exists."""
    if not db.exists():
        return None, False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            phase = con.execute("SELECT phase FROM worker WHERE id = 1").fetchone()
            model = con.execute("SELECT 1 FROM models WHERE is_current = 1").fetchone()
    except sqlite3.OperationalError:  # tables not created yet, or a writer holds the lock
        return None, False
    return (phase[0] if phase else None), model is not None


def first_model(state: Path, *, port: int, timeout: float) -> dict:
    """Start the demo in `state` (emptied first); -> seconds to each phase and to the first model."""
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    db = state / "annotator.db"
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "annotator", "--db", str(db), "demo", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    phases: dict[str, float] = {}
    try:
        while time.perf_counter() - t0 < timeout:
            phase, done = poll(db)
            now = round(time.perf_counter() - t0, 1)
            if phase and phase not in phases:
                phases[phase] = now
            if done:
                return {"first_model_s": now, "phase_start_s": phases, "load_before": load0,
                        "load_after": os.getloadavg()}
            if proc.poll() is not None:
                raise SystemExit(f"annotator demo exited with {proc.returncode} before a model existed")
            time.sleep(0.2)
        raise SystemExit(f"no model after {timeout:.0f} s (phases so far: {phases})")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--state", type=Path, default=Path("/tmp/first-model"), help="state folder (emptied first)")
    p.add_argument("--port", type=int, default=8599)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    res = first_model(args.state, port=args.port, timeout=args.timeout)
    out = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"} | res
    print(f"first model after {res['first_model_s']} s; phases started at {res['phase_start_s']}; "
          f"load {res['load_before']} -> {res['load_after']}")
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
