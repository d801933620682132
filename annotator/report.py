"""What a person reads of ``estimates.standing``: the rows the dashboard's "Where we stand" and `annotator report`
show (``summary_rows``, ``effort_rows``, ``stopping_rows``: one code path for both), and the report as one
self-contained HTML file a lead can send (inline CSS and SVG, no script, nothing fetched)."""
from __future__ import annotations

import html
from datetime import datetime, timezone
from pathlib import Path

from cleannet_core.atomic import atomic_write

from .estimates import STOP_SHARE
from .export import SQLITE_SUFFIXES, ExportRefused

BAR_W, BAR_H = 420, 22  # px of one interval bar


def _count(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


def interval_text(d: dict | None) -> tuple[str, str]:
    """(count, 'low – high') of an ``Interval`` dict; None: not estimable."""
    if d is None:
        return "—", "not estimable"
    return _count(d["point"]), f"{_count(d['low'])} – {_count(d['high'])}"


def _share(r: dict, empty: str = "no flags or no wrong verdicts") -> tuple[str, str]:
    if r["rate"] is None:
        return "—", empty
    return f"{r['rate']:.0%} ({r['k']} of {r['n']})", f"{r['low']:.0%} – {r['high']:.0%}"


def summary_rows(s: dict) -> list[dict]:
    """``standing``'s figures as the rows a person reads: {figure, estimate, interval (95 %), how}; the dashboard
    and ``annotator report`` show exactly these."""
    audited, other, exp, flags = s["audited_classes"], s["model_classes"], s["export"], s["flags"]
    t = "—" if s["threshold"] is None else f"{s['threshold']:.3f}"
    check, transfer = other["check"], s["transfer"]
    checked = (f"calibration checked on {check['n']} {check['source']} verdicts ({check['wrong']} wrong, "
               f"{check['expected']:.1f} expected)" if check["n"] else "not checked yet: no held-out audit verdicts")
    a = transfer["auroc"]
    rows = [("Wrong labels in the data set", *interval_text(s["wrong_total"]), "fixed + left"),
            ("Fixed by verdicts", _count(s["fixed"]["wrong"]), "exact",
             f"live 'wrong' verdicts, {s['fixed']['relabelled']} of them with the true class"),
            ("Left in total", *interval_text(s["remaining"]), "the two parts below, intervals combined"),
            (f"Left in verified classes ({len(audited['classes'])})", *interval_text(audited["remaining"]),
             f"random audit verdicts per class, over {audited['unjudged']:,} unjudged images"),
            (f"Left in other classes ({len(other['classes'])})", *interval_text(other["remaining"]),
             f"the model's expected count over {other['unjudged']:,} unjudged images; {checked}"
             + (f"; {other['unscored']:,} images without a score" if other["unscored"] else "")),
            (f"Export drops at threshold {t}", _count(exp["dropped"]), "exact",
             f"{exp['dropped_by_verdict']:,} by a verdict, {exp['dropped_by_model']:,} by the model"),
            ("Export relabels", _count(exp["relabelled"]), "exact", "a 'wrong' verdict gave the true class"),
            ("Export keeps", _count(exp["kept"]), "exact", f"of {exp['rows']:,} rows"),
            ("Flags' precision", *_share(flags["precision"]),
             f"flagged held-out audit verdicts that are wrong ({flags['n']} held-out audit verdicts)"),
            ("Flags' recall", *_share(flags["recall"]), "wrong held-out audit verdicts that are flagged"),
            ("Model error, unverified classes", *_share(transfer["error"], "no transfer-check verdicts"),
             f"flags that disagree with the {transfer['n']} transfer-check verdicts (flagging nothing: "
             + (f"{transfer['flag_nothing_error']['rate']:.0%})" if transfer["n"] else "—)")),
            ("Model AUROC, unverified classes", "—" if a["auroc"] is None else f"{a['auroc']:.2f}",
             "—" if a["auroc"] is None else f"{a['low']:.2f} – {a['high']:.2f}",
             f"transfer-check verdicts: {a['n_wrong']} wrong, {a['n_correct']} correct")]
    return [dict(zip(("figure", "estimate", "interval (95 %)", "how"), r)) for r in rows]


def effort_rows(curve: list[dict]) -> list[dict]:
    """``effort_curve`` as the rows the dashboard and the report show."""
    def share(r: dict) -> str:
        return "—" if r["rate"] is None else f"{r['rate']:.1%} ({r['low']:.1%} – {r['high']:.1%})"
    return [{"model": f"v{c['version']}", "verdicts": c["verdicts"], "held-out audits": c["audit_error"]["n"],
             "flags' error (95 %)": share(c["audit_error"]), "flagging nothing": share(c["flag_nothing_error"]),
             "expected wrong left": "—" if c["expected_wrong_left"] is None else
             f"{c['expected_wrong_left']:,.0f}" + ("" if c["kind"] == "expected" else " flagged")} for c in curve]


def stopping_rows(rows: list[dict]) -> list[dict]:
    """``estimates.stopping`` as the rows the dashboard and the report show: one per verified class."""
    def advice(r: dict) -> str:
        if not r["signal"]:
            return "no signal: the scoring method is not robust"
        if r["stop"] is None:
            return "too few verdicts to tell"
        return "verify another class" if r["stop"] else "keep going"
    return [{"class": r["class"], "verdicts": "—" if r["verdicts"] is None else r["verdicts"],
             "newest left out": "—" if r["held"] is None else r["held"],
             "flags moved": "—" if r["moved"] is None else f"{r['moved']:,} of {r['flagged']:,}",
             "signal": advice(r)} for r in rows]


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
<h2>Stopping signal</h2>
{_table(stopping_rows(s["stopping"]))}
<p>Per verified class, the round refitted the score without the class's newest half of its verdicts and counted
the flags that changed. Under {STOP_SHARE:.0%} of the flags: more verdicts there no longer move the model (they
still fix the images they judge); verify another class.</p>
<p>Intervals are 95 %. Verified classes: the share of wrong labels in each class's random audit verdicts times
its unjudged images, combined over classes as a stratified sample. Other classes: the calibrated model's
expected count (the sum of P(label wrong), from the score's counting calibration), its interval widened by how
far the model's count was off on the held-out audit verdicts. Precision and recall: the flags (score below the
threshold) on the held-out audit verdicts.</p>
</body></html>
"""


def write_html(s: dict, out: Path, *, db: Path) -> None:
    """Write ``render_html(s)`` to ``out`` atomically (refused on the database's own files)."""
    refuse_store_files(db, out)
    with atomic_write(out, text=True, encoding="utf-8") as f:
        f.write(render_html(s))
