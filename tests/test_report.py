"""`annotator report`: the dashboard's figures from the same functions, as JSON and as one offline HTML file."""
import json
import re

from click.testing import CliRunner

from annotator import estimates, report
from annotator.cli import cli
from annotator.store import Store

from helpers import app, build_abc

HOSTILE = '<script>alert("x")</script>'


def test_report_json_is_what_the_dashboard_shows(lead_db):
    res = CliRunner().invoke(cli, ["--db", str(lead_db), "report", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    with Store(lead_db) as store:
        assert out == json.loads(json.dumps(estimates.standing(store)))
    at = app("admin", page="annotator/pages/dashboard.py")
    assert at.table[0].value.reset_index().to_dict("records") == report.summary_rows(out)
    assert out["fixed"]["wrong"] == 5 and out["export"]["dropped"] == 11


def test_report_text_and_html_say_the_same_rows_offline_and_escaped(db_path, tmp_path):
    with Store(db_path) as store:
        build_abc(store)
        store.ensure_classes([HOSTILE])
        store.add_images([{"path": "/img/h.png", "hash": "h", "label_id": store.class_id(HOSTILE)}])
        store.set_verify([HOSTILE])
        store.record_verdict(32, "ann", "wrong", reason="audit")
        rows = report.summary_rows(estimates.standing(store))
    runner = CliRunner()
    text = runner.invoke(cli, ["--db", str(db_path), "report"])
    lines = text.output.splitlines()
    assert text.exit_code == 0 and [line.split(":")[0] for line in lines[:len(rows)]] == [r["figure"] for r in rows]
    # then the stopping signal of each verified class (this model's method gives none)
    assert lines[len(rows):] == [f"Stopping signal, {c}: no signal: the scoring method is not robust (— verdicts; "
                                 "without the newest —, flags moved: —)" for c in sorted(["A", "B", HOSTILE])]
    out = tmp_path / "report.html"
    res = runner.invoke(cli, ["--db", str(db_path), "report", "--out", str(out)])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    for r in rows:
        assert f"<td>{r['estimate']}</td><td>{r['interval (95 %)']}</td>" in page.replace("&#x27;", "'")
    assert HOSTILE not in page and "&lt;script&gt;" in page  # the class name as text
    assert not re.search(r"<script|<link|src=|url\(|@import", page)  # nothing to run, nothing fetched
    assert "<svg" in page


def test_report_refuses_to_write_over_the_database(db_path):
    with Store(db_path) as store:
        build_abc(store)
    res = CliRunner().invoke(cli, ["--db", str(db_path), "report", "--out", f"{db_path}-wal"])
    assert res.exit_code == 1 and "database's own file" in res.output
    with Store(db_path) as store:
        assert store.verdict_count() == 9
