"""annotator.export on real SQLite files: exact rows, keep/w_soft rules, thresholds, CSV injection, streaming."""

import csv
import io
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from annotator.export import COLUMNS, TRAIN_COLUMNS, escape_cell, export_csv
from annotator.store import Store

HOSTILE = ['=HYPERLINK("http://x")', "+1", "-2", "@x", "<script>"]


def read(store, **kw):
    buf = io.StringIO(newline="")
    n = export_csv(store, buf, **kw)
    buf.seek(0)
    reader = csv.DictReader(buf)
    rows = list(reader)
    assert tuple(reader.fieldnames) == COLUMNS and len(rows) == n
    return rows


def short(rows, *cols):
    return [tuple(r[c] for c in ("path", *cols)) for r in rows]


@pytest.fixture
def small(store):
    """Six cat/dog images with verdict correct / wrong / wrong+dog / unsure / undone / none."""
    ids = store.ensure_classes(["cat", "dog", *HOSTILE])
    store.add_images({"path": f"/img/{k}.jpg", "hash": str(k), "label_id": ids["dog" if k == 6 else "cat"]}
                     for k in range(1, 7))
    store.record_verdict(1, "bob", "wrong", reason="audit")
    store.undo_last("bob")  # a changed verdict: undone, then given again
    store.record_verdict(1, "ann", "correct", reason="uncertain")
    store.record_verdict(2, "ann", "wrong", reason="uncertain")
    store.record_verdict(3, "ann", "wrong", reason="grid", corrected_label="dog")
    store.record_verdict(4, "ann", "unsure", reason="audit")
    store.record_verdict(5, "bob", "correct", reason="manual")
    store.undo_last("bob")  # voids bob's verdict on image 5: no live verdict left there
    return ids


def add_scores(store, ids, delta=0.1):
    v = store.add_model(delta=delta)
    scores = {1: 0.9, 2: -0.5, 3: -0.3, 4: 0.05, 5: 0.123456789, 6: -0.12}
    store.write_scores(v, [(k, ids["cat"], s, abs(s - delta), ids[HOSTILE[0]], -0.25) for k, s in scores.items()])
    store.make_current(v)
    return v


def test_without_model(store, small):
    rows = read(store)
    assert short(rows, "verdict", "corrected_label", "annotator", "score", "predicted_noisy", "w_soft", "keep",
                 "suggested_label", "model_version") == [
        ("/img/1.jpg", "correct", "", "ann", "", "", "1", "1", "", ""),
        ("/img/2.jpg", "wrong", "", "ann", "", "", "0", "0", "", ""),
        ("/img/3.jpg", "wrong", "dog", "ann", "", "", "1", "1", "", ""),
        ("/img/4.jpg", "unsure", "", "ann", "", "", "1", "1", "", ""),
        ("/img/5.jpg", "", "", "", "", "", "1", "1", "", ""),
        ("/img/6.jpg", "", "", "", "", "", "1", "1", "", "")]
    assert [r["noisy_label"] for r in rows] == ["cat"] * 5 + ["dog"]
    created = {v["image_id"]: v["created_at"] for v in store.live_verdicts()}
    assert rows[0]["verified_at"] == datetime.fromtimestamp(created[1], timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r["verified_at"]) for r in rows[:4])
    assert rows[4]["verified_at"] == rows[5]["verified_at"] == ""


def test_with_model_threshold_and_only_kept(store, small):
    add_scores(store, small)
    cols = ("score", "predicted_noisy", "w_soft", "keep", "suggested_label", "suggested_score", "model_version")
    assert short(read(store), *cols) == [
        ("/img/1.jpg", "0.9", "0", "1", "1", "'=HYPERLINK(\"http://x\")", "-0.25", "1"),
        ("/img/2.jpg", "-0.5", "1", "0", "0", "'=HYPERLINK(\"http://x\")", "-0.25", "1"),
        ("/img/3.jpg", "-0.3", "1", "1", "1", "'=HYPERLINK(\"http://x\")", "-0.25", "1"),
        ("/img/4.jpg", "0.05", "1", "0.05", "0", "'=HYPERLINK(\"http://x\")", "-0.25", "1"),
        ("/img/5.jpg", "0.123457", "0", "0.123457", "1", "'=HYPERLINK(\"http://x\")", "-0.25", "1"),
        ("/img/6.jpg", "-0.12", "1", "0", "0", "'=HYPERLINK(\"http://x\")", "-0.25", "1")]
    # an explicit threshold beats the model's delta; verdicts still decide their rows
    assert short(read(store, threshold=0.0), "predicted_noisy", "keep") == [
        ("/img/1.jpg", "0", "1"), ("/img/2.jpg", "1", "0"), ("/img/3.jpg", "1", "1"),
        ("/img/4.jpg", "0", "1"), ("/img/5.jpg", "0", "1"), ("/img/6.jpg", "1", "0")]
    # the lead's delta_override setting beats the model's delta, the argument beats both
    store.set_setting("delta_override", 0.6)
    assert [r["keep"] for r in read(store)] == ["1", "0", "1", "0", "0", "0"]
    assert [r["keep"] for r in read(store, threshold=-1.0)] == ["1", "0", "1", "1", "1", "1"]
    kept = read(store, only_kept=True)
    assert [r["path"] for r in kept] == ["/img/1.jpg", "/img/3.jpg"] and {r["keep"] for r in kept} == {"1"}


def test_image_without_score_row(store, small):
    v = store.add_model(delta=0.1)
    store.write_scores(v, [(6, small["dog"], -0.12, 0.22)])
    store.make_current(v)
    rows = read(store)
    assert short(rows[4:], "score", "predicted_noisy", "w_soft", "keep", "model_version") == [
        ("/img/5.jpg", "", "", "1", "1", ""), ("/img/6.jpg", "-0.12", "1", "0", "0", str(v))]


def test_csv_injection_neutralised_numbers_stay_numbers(store):
    ids = store.ensure_classes(HOSTILE)
    store.add_images({"path": f"/h/{k}.jpg", "hash": str(k), "label_id": ids[h]} for k, h in enumerate(HOSTILE))
    store.add_images([{"path": "=cmd|'/C calc'!A0", "hash": "p", "label_id": ids["+1"]}])
    store.record_verdict(1, "@evil", "wrong", reason="manual", corrected_label="-2")
    v = store.add_model(delta=0.1)
    store.write_scores(v, [(1, ids[HOSTILE[0]], -0.12, 0.22, ids["@x"], -0.5)])
    store.make_current(v)
    rows = read(store)
    assert [r["noisy_label"] for r in rows] == ["'=HYPERLINK(\"http://x\")", "'+1", "'-2", "'@x", "<script>", "'+1"]
    assert rows[-1]["path"] == "'=cmd|'/C calc'!A0"
    first = rows[0]
    assert (first["annotator"], first["corrected_label"], first["suggested_label"]) == ("'@evil", "'-2", "'@x")
    assert (first["score"], first["suggested_score"]) == ("-0.12", "-0.5")  # numbers, not escaped text
    assert float(first["score"]) == -0.12
    assert [escape_cell(s) for s in ("\tx", "\rx", "a=b", "", None)] == ["'\tx", "'\rx", "a=b", "", ""]


def test_streaming_pages_see_new_writes(store, tmp_path):
    cid = store.ensure_classes(["cat"])["cat"]
    store.add_images(({"path": f"/s/{k:05d}.jpg", "hash": str(k), "label_id": cid} for k in range(20_000)),
                     batch=20_000)
    rows = store.export_rows(None, page=1000)
    assert [next(rows)[0] for _ in range(1500)][-1] == 1500  # halfway through the second page
    with Store(store.path) as other:  # a write while the export is paused: no snapshot blocks it
        other.record_verdict(19_000, "ann", "wrong", reason="manual")
    rest = list(rows)
    assert len(rest) == 18_500 and {r[0]: r[3] for r in rest}[19_000] == "wrong"  # a later page sees it
    out = tmp_path / "out" / "export.csv"
    assert export_csv(store, out, page=1000, only_kept=True) == 19_999
    assert sorted(p.name for p in out.parent.iterdir()) == ["export.csv"]  # written via a temp file + rename
    with open(out, newline="") as f:
        assert sum(1 for _ in csv.DictReader(f)) == 19_999


def test_final_label_applies_human_verdicts_before_the_score(store, small):
    """The final column: a verdict always wins over the score (an image marked correct that the model flags
    is kept with its label), a corrected label replaces the noisy one, the model decides the rest."""
    add_scores(store, small)
    cols = ("final_label", "decided_by", "predicted_noisy", "keep", "w_soft", "threshold")
    assert short(read(store, threshold=0.95), *cols) == [
        ("/img/1.jpg", "cat", "verdict", "1", "1", "1", "0.95"),  # correct, yet below the threshold
        ("/img/2.jpg", "", "verdict", "1", "0", "0", "0.95"),  # wrong, no corrected label: dropped
        ("/img/3.jpg", "dog", "verdict", "1", "1", "1", "0.95"),  # wrong + corrected label
        ("/img/4.jpg", "", "model", "1", "0", "0.05", "0.95"),  # unsure: the model decides
        ("/img/5.jpg", "", "model", "1", "0", "0.123457", "0.95"),  # undone verdict: the model decides
        ("/img/6.jpg", "", "model", "1", "0", "0", "0.95")]
    assert [(r["final_label"], r["decided_by"]) for r in read(store)][3:] == [
        ("", "model"), ("cat", "model"), ("", "model")]  # the model's delta 0.1
    for row in read(store):
        assert row["keep"] == ("1" if row["final_label"] else "0")


def test_without_model_every_row_is_decided_by_verdict_or_none(store, small):
    assert short(read(store), "final_label", "decided_by", "threshold") == [
        ("/img/1.jpg", "cat", "verdict", ""), ("/img/2.jpg", "", "verdict", ""), ("/img/3.jpg", "dog", "verdict", ""),
        ("/img/4.jpg", "cat", "none", ""), ("/img/5.jpg", "cat", "none", ""), ("/img/6.jpg", "dog", "none", "")]


def test_train_format_is_path_final_label_weight_of_kept_rows(store, small):
    add_scores(store, small)
    store.add_images([{"path": "=cmd.jpg", "hash": "h", "label_id": small["+1"]}])  # no score: kept, weight 1
    buf = io.StringIO(newline="")
    assert export_csv(store, buf, fmt="train") == 4
    assert buf.getvalue().splitlines() == [  # formula-like cells escaped: train files get opened in spreadsheets too
        "path,label,weight", "/img/1.jpg,cat,1", "/img/3.jpg,dog,1", "/img/5.jpg,cat,0.123457", "'=cmd.jpg,'+1,1"]
    with pytest.raises(ValueError, match="full, train"):
        export_csv(store, io.StringIO(), fmt="parquet")


def test_every_column_is_documented_in_the_readme():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [c for c in (*COLUMNS, *TRAIN_COLUMNS) if f"`{c}`" not in readme]
    assert not missing, f"README lacks {missing}"


def test_a_stored_wrong_verdict_naming_the_images_own_label_is_dropped(store, small, tmp_path):
    """A 'wrong' verdict whose corrected label is the noisy label itself contradicts itself (the store refuses
    new ones with SameLabel; older files can hold them): the export drops the image instead of keeping the
    label the annotator called wrong."""
    store.db.execute("INSERT INTO verdicts (image_id, annotator, verdict, corrected_label_id, reason, created_at)"
                     " VALUES (6, 'old', 'wrong', ?, 'audit', 1.0)", [small["dog"]])
    add_scores(store, small)
    row = read(store, threshold=0.95)[5]
    assert (row["verdict"], row["corrected_label"], row["final_label"], row["decided_by"], row["keep"],
            row["w_soft"]) == ("wrong", "dog", "", "verdict", "0", "0")
    assert "/img/6.jpg" not in [r["path"] for r in read(store, only_kept=True)]


def test_the_cli_refuses_to_export_over_the_database_or_with_a_threshold_that_is_no_number(tmp_path):
    from click.testing import CliRunner

    from annotator.cli import cli
    db = tmp_path / "state" / "annotator.db"
    with Store(db) as store:
        cid = store.ensure_classes(["cat"])["cat"]
        store.add_images([{"path": f"/img/{k}.jpg", "hash": str(k), "label_id": cid} for k in range(3)])
        (tmp_path / "link.csv").symlink_to(db)
        (tmp_path / "hard.csv").hardlink_to(db)
        runner = CliRunner()
        targets = [db, f"{db}-wal", f"{db}-shm", tmp_path / "state" / ".." / "state" / "annotator.db",
                   tmp_path / "link.csv", tmp_path / "hard.csv"]
        for target in targets:  # the WAL and SHM exist while this store is open
            res = runner.invoke(cli, ["--db", str(db), "export", "--out", str(target)])
            assert res.exit_code == 1 and "the database's own file" in res.output, (target, res.output)
        for bad in ("nan", "inf", "-inf", "1.5", "-2"):
            for fmt in ("full", "train"):
                res = runner.invoke(cli, ["--db", str(db), "export", "--out", str(tmp_path / "x.csv"),
                                          "--threshold", bad, "--format", fmt])
                assert res.exit_code == 1 and "a number in [-1, 1]" in res.output, (bad, res.output)
        assert not (tmp_path / "x.csv").exists()
        assert store.images_count() == 3 and (tmp_path / "link.csv").is_symlink()
        res = runner.invoke(cli, ["--db", str(db), "export", "--out", str(tmp_path / "ok.csv"), "--threshold", "-1"])
        assert res.exit_code == 0 and len((tmp_path / "ok.csv").read_text().splitlines()) == 4


def test_a_verdict_propagated_from_a_near_duplicate_names_its_reason_and_source(store):
    """The last two columns say how each row's verdict came: given on the image (its reason, no source) or applied
    from a near-duplicate's (reason 'propagated', source = that image's path, escaped like every path); undoing the
    applied step empties them again. The train format is unchanged."""
    ids = store.ensure_classes(["cat", "dog"])
    paths = ["=src.jpg", "/d/2.jpg", "/d/3.jpg", "/d/4.jpg", "/d/5.jpg"]
    store.add_images({"path": p, "hash": str(k), "label_id": ids["dog" if k == 3 else "cat"]}
                     for k, p in enumerate(paths, start=1))
    group = {1: 1, 2: 1, 3: 1, 5: 1}
    store.write_duplicates(((i, group.get(i), None, int(i in group)) for i in range(1, 6)), features_key="k",
                           backbone_id="b", threshold=0.8, method="exact", n_images=5, n_groups=1, n_conflicts=1,
                           seconds=0.0)
    src = store.record_verdict(1, "ann", "correct", reason="uncertain", session_id=7)
    assert len(store.propagate_verdict(src, "ann", [2, 3], session_id=7)) == 2  # 5 stays without a verdict
    store.record_verdict(4, "bob", "wrong", reason="audit")
    assert COLUMNS[-2:] == ("verdict_reason", "verdict_source")
    cols = ("verdict", "corrected_label", "annotator", "final_label", "decided_by", "duplicate_group",
            "verdict_reason", "verdict_source")
    assert short(read(store), *cols) == [
        ("'=src.jpg", "correct", "", "ann", "cat", "verdict", "1", "uncertain", ""),
        ("/d/2.jpg", "correct", "", "ann", "cat", "verdict", "1", "propagated", "'=src.jpg"),
        ("/d/3.jpg", "wrong", "cat", "ann", "cat", "verdict", "1", "propagated", "'=src.jpg"),  # a dog copy of a cat
        ("/d/4.jpg", "wrong", "", "bob", "", "verdict", "", "audit", ""),
        ("/d/5.jpg", "", "", "", "cat", "none", "1", "", "")]
    buf = io.StringIO(newline="")
    assert export_csv(store, buf, fmt="train") == 4
    assert buf.getvalue().splitlines() == [
        "path,label,weight", "'=src.jpg,cat,1", "/d/2.jpg,cat,1", "/d/3.jpg,cat,1", "/d/5.jpg,cat,1"]
    store.undo_last("ann", session_id=7)  # the applied step
    assert short(read(store), "verdict", "verdict_reason", "verdict_source")[:3] == [
        ("'=src.jpg", "correct", "uncertain", ""), ("/d/2.jpg", "", "", ""), ("/d/3.jpg", "", "", "")]
