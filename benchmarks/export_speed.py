"""CSV export wall time on a synthetic store (target: 1M rows in < 10 s).

Uses the same synthetic store as ``benchmarks.queue_speed`` (``--db`` to build or reuse
one). Times ``export_csv`` of every row to a file, then, as a baseline in the same run,
a plain ``csv.writer`` dump of the same number of in-memory tuples of similar
content (one per column): the ratio is what reading SQLite and applying the keep/w_soft rules cost on top
of writing the CSV. Also runs the export once more in a fresh process and reports that
process's peak RSS (streaming: it must not grow with the row count).

Usage::

    python -m benchmarks.export_speed --n 1000000 --json benchmarks/out/export_speed.json
"""

import argparse
import csv
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import write_json
from annotator.export import COLUMNS, export_csv
from benchmarks.queue_speed import build_store


# In a fresh interpreter: peak RSS in MiB after the imports, then after the export. VmHWM (Linux), not
# ru_maxrss: that one survives fork + exec and would report the parent's peak.
_CHILD = ("import re, sys; from annotator.export import export_csv; from annotator.store import Store;"
          " rss = lambda: int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]) / 1024;"
          " print(rss()); export_csv(Store(sys.argv[1]), sys.argv[2]); print(rss())")


def peak_rss_mb(db: Path, out: Path) -> tuple[float, float]:
    """Peak RSS of a separate process that only exports ``db`` to ``out``: after its imports, and at the end."""
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", _CHILD, str(db), str(out)], cwd=repo, capture_output=True,
                          text=True, check=True)
    imports, end = map(float, done.stdout.split()[-2:])
    return imports, end


def baseline_dump(path: Path, n: int) -> float:
    """Seconds to csv.writer ``n`` in-memory tuples shaped like export rows (built before timing)."""
    row = ("/data/class042/0420000.jpg", "class042", "class042", "model", "", "", "", "", "0.512345", "0.5", 0,
           "0.512345", 1, "class007", "-0.123456", 1, "", "", "", "")
    assert len(row) == len(COLUMNS)
    rows = [row] * n
    t = time.perf_counter()
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows(rows)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="images in the synthetic store")
    ap.add_argument("--verdicts", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--db", type=Path, help="store file to build or reuse (default: a temp dir, deleted)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        db = args.db or tmp / "bench.db"
        store, build = build_store(db, args.n, verdicts=args.verdicts, seed=args.seed)
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        rows = export_csv(store, tmp / "export.csv")
        export_s = time.perf_counter() - t
        size_mb = (tmp / "export.csv").stat().st_size / 1e6
        t = time.perf_counter()
        kept = export_csv(store, tmp / "kept.csv", only_kept=True)
        kept_s = time.perf_counter() - t
        store.close()
        rss = peak_rss_mb(db, tmp / "child.csv")
        base_s = baseline_dump(tmp / "baseline.csv", rows)
    report = {"n_images": args.n, "build_s": round(build_s, 1), "build": build, "rows": rows, "export_s": export_s,
              "rows_per_s": rows / export_s, "csv_mb": size_mb,
              "export_process_peak_rss_mb": {"after_imports": rss[0], "after_export": rss[1]},
              "only_kept_rows": kept, "only_kept_s": kept_s, "baseline_csv_writer_s": base_s,
              "ratio_vs_baseline": export_s / base_s}
    print(f"\nexport, {args.n:,} images\n")
    print("| run | rows | wall s | rows/s | ratio vs baseline |\n|---|---|---|---|---|")
    print(f"| export_csv (all) | {rows:,} | {export_s:.2f} | {rows / export_s:,.0f} | {export_s / base_s:.1f} |")
    print(f"| export_csv (only_kept) | {kept:,} | {kept_s:.2f} | {kept / kept_s:,.0f} | {kept_s / base_s:.1f} |")
    print(f"| baseline: csv.writer of in-memory tuples | {rows:,} | {base_s:.2f} | {rows / base_s:,.0f} | 1.0 |")
    print(f"\nCSV {size_mb:.0f} MB; peak RSS of a process doing only the export: {rss[0]:.0f} MB after imports,"
          f" {rss[1]:.0f} MB after the export")
    print(f"export {export_s:.2f} s (target < 10 s): {'OK' if export_s < 10 else 'MISSED'}")
    write_json(args.json, report)


if __name__ == "__main__":
    main()
