"""`annotator report`: the dashboard's "Where we stand" as one self-contained HTML file a lead can send (inline
CSS and SVG, no script, nothing fetched), or as JSON. The figures are ``estimates.standing``'s, the rows
``estimates.summary_rows``: the same code path as the page."""
from __future__ import annotations

import html
from datetime import datetime, timezone
from pathlib import Path

from cleannet_core.atomic import atomic_write

from .estimates import effort_rows, summary_rows
from .export import SQLITE_SUFFIXES, ExportRefused

BAR_W, BAR_H = 420, 22  # px of one interval bar


def refuse_store_files(db: Path, out: Path) -> None:
    """Raise ``ExportRefused`` when ``out`` is the database or a file SQLite keeps beside it."""
    for suffix in SQLITE_SUFFIXES:
        if out.resolve() == Path(f"{db}{suffix}").resolve():
            raise ExportRefused(f"{out} is the database's own file: writing there would destroy it; "
                                "choose another --out")


def interval_svg(parts: list[tuple[str, dict | None]]) -> str:
    """Horizontal bars of counts with their 95 % intervals as whiskers, on one shared axis; ``parts`` =
    [(label, {point, low, high} or None)]."""
    shown = [(label, d) for label, d in parts if d is not None]
    top = max([d["high"] for _, d in shown] + [1.0])
    x = lambda v: 150 + (BAR_W - 160) * v / top  # noqa: E731
    rows = []
    for i, (label, d) in enumerate(shown):
        y = 6 + i * (BAR_H + 8)
        mid = y + BAR_H / 2
        rows.append(
            f'<text x="0" y="{mid + 4:.0f}" font-size="12">{html.escape(label)}</text>'
            f'<rect x="150" y="{y}" width="{x(d["point"]) - 150:.1f}" height="{BAR_H}" fill="#9ecae1"/>'
            f'<line x1="{x(d["low"]):.1f}" x2="{x(d["high"]):.1f}" y1="{mid}" y2="{mid}" stroke="#000"/>'
            f'<line x1="{x(d["low"]):.1f}" x2="{x(d["low"]):.1f}" y1="{y + 5}" y2="{y + BAR_H - 5}" stroke="#000"/>'
            f'<line x1="{x(d["high"]):.1f}" x2="{x(d["high"]):.1f}" y1="{y + 5}" y2="{y + BAR_H - 5}" stroke="#000"/>'
            f'<text x="{x(d["high"]) + 4:.1f}" y="{mid + 4:.0f}" font-size="11">{d["point"]:,.0f} '
            f'({d["low"]:,.0f} – {d["high"]:,.0f})</text>')
    height = 12 + len(shown) * (BAR_H + 8)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{BAR_W + 140}" height="{height}" role="img" '
            f'aria-label="estimated wrong labels with 95 % intervals">{"".join(rows)}</svg>')


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(s: dict) -> str:
    """The report of ``estimates.standing`` output ``s`` as one HTML document; every text is escaped."""
    audited = s["audited_classes"]
    per_class = [{"class": r["class"], "unjudged": r["unjudged"], "audit verdicts": r["audited"],
                  "wrong in them": r["audit_wrong"], "left (estimate)": f"{r['remaining']['point']:,.0f}",
                  "95 % interval": f"{r['remaining']['low']:,.0f} – {r['remaining']['high']:,.0f}"}
                 for r in audited["classes"]]
    chart = interval_svg([("Wrong labels", s["wrong_total"]), ("Left in total", s["remaining"]),
                          ("Left, verified", audited["remaining"]), ("Left, other", s["model_classes"]["remaining"])])
    model = "none yet" if s["model_version"] is None else f"v{s['model_version']}"
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Where we stand</title>
<style>body{{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}
table{{border-collapse:collapse;margin:1rem 0}}td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}}
th{{background:#f3f3f3}}</style></head><body>
<h1>Where we stand</h1>
<p>Model {model} · {s['images']:,} images · {s['verdicts']:,} live verdicts · {when}</p>
{chart}
<h2>Figures</h2>
{_table(summary_rows(s))}
<h2>Effort per model version</h2>
{_table(effort_rows(s["effort"]))}
<h2>Verified classes</h2>
{_table(per_class)}
<p>Intervals are 95 %. Verified classes: the share of wrong labels in each class's random audit verdicts times
its unjudged images, combined over classes as a stratified sample. Other classes: the calibrated model's
expected count (the sum of 1 - P(label correct)), its interval widened by how far the model's count was off on
the held-out audit verdicts. Precision and recall: the flags (score below the threshold) on the held-out
audit verdicts.</p>
</body></html>
"""


def write_html(s: dict, out: Path, *, db: Path) -> None:
    """Write ``render_html(s)`` to ``out`` atomically (refused on the database's own files)."""
    refuse_store_files(db, out)
    with atomic_write(out, text=True, encoding="utf-8") as f:
        f.write(render_html(s))
