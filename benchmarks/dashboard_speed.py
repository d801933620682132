"""Dashboard render time on a synthetic store (target: under a second at 100k images).

Builds (or reuses, ``--db``) the store of ``benchmarks.queue_speed`` (``--n`` images in 100 classes, a
current model, ``--verdicts`` verdicts) and renders the lead's dashboard page in Streamlit's AppTest, in
this process:

- ``login``: the anonymous login page, the baseline measured in the same run;
- ``cold``: the dashboard's first render (its per-version class table and trends are computed);
- ``warm``: reruns with nothing changed (the cached tables are reused), ``--repeats`` times;
- ``new_verdict``: a rerun after one more verdict (the class table is recomputed), ``--repeats`` times.

Usage::

    python -m benchmarks.dashboard_speed --n 100000 --json benchmarks/out/dashboard_speed.json
"""

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from annotator import auth
from annotator.store import Store
from benchmarks.queue_speed import build_store
from benchmarks.report import write_json

APP = str(Path(__file__).resolve().parents[1] / "app.py")
PAGE = "annotator/pages/dashboard.py"


def timed_run(at: AppTest) -> float:
    t = time.perf_counter()
    at.run()
    if at.exception:
        raise SystemExit(f"the page raised: {at.exception}")
    return time.perf_counter() - t


def run(db: Path, repeats: int) -> dict[str, list[float]]:
    """Seconds per render of each kind (see the module docstring)."""
    os.environ["ANNOTATOR_DB"] = str(db)
    login = AppTest.from_file(APP, default_timeout=120)
    login.run()  # imports and Streamlit start-up, not timed
    times = {"login": [timed_run(login) for _ in range(repeats)], "cold": [], "warm": [], "new_verdict": []}
    with Store(db) as store:
        auth.ensure_admin(store)
        token = auth.start_session(store, store.get_user(auth.ADMIN)).token
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["token"] = token  # signed in as after the login form (a URL token needs the browser's cookie)
    at.run()
    at.switch_page(PAGE)
    times["cold"].append(timed_run(at))
    times["warm"] = [timed_run(at) for _ in range(repeats)]
    for image_id in range(1, repeats + 1):
        with Store(db) as store:
            store.record_verdict(image_id, "bench", "correct", reason="audit")
        times["new_verdict"].append(timed_run(at))
    return times


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="images in the synthetic store")
    ap.add_argument("--verdicts", type=int, default=2000, help="verdicts before timing")
    ap.add_argument("--repeats", type=int, default=5, help="timed renders of each kind")
    ap.add_argument("--db", type=Path, help="store file to build or reuse (default: a temp dir, deleted)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        path = args.db or Path(tmp) / "bench.db"
        store, build = build_store(path, args.n, verdicts=args.verdicts)
        store.close()
        times = run(path, args.repeats)
    floor = statistics.median(times["login"])
    rows = {k: {"n": len(v), "median_s": statistics.median(v), "max_s": max(v),
                "ratio_to_login": statistics.median(v) / floor} for k, v in times.items()}
    print(f"\ndashboard render, {args.n:,} images, {args.verdicts:,} verdicts\n")
    print("| render | n | median s | max s | ratio to login page |\n|---|---|---|---|---|")
    for k, r in rows.items():
        print(f"| {k} | {r['n']} | {r['median_s']:.3f} | {r['max_s']:.3f} | {r['ratio_to_login']:.1f} |")
    worst = max(rows["warm"]["max_s"], rows["new_verdict"]["max_s"])
    print(f"\nslowest rerun {worst:.3f} s (target < 1 s): {'OK' if worst < 1 else 'MISSED'}")
    out = {"n_images": args.n, "verdicts_before": args.verdicts, "build": build, "renders": rows,
           "cpu_cores": os.cpu_count()}
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
