"""The lead's estimates (annotator.estimates) on small stores (helpers.build_abc and ones built here): exact
values where the math is exact."""
import csv
import io
from math import sqrt

import numpy as np
import pytest

from annotator import estimates, report
from annotator.estimates import Interval, States, stratified_count, wilson
from annotator.export import export_csv
from annotator.store import Store

from helpers import ABC_SCORES, app, build_abc


def test_wilson_matches_known_values_and_takes_fractional_counts():
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(3, 10) == pytest.approx((0.10779, 0.60322), abs=1e-5)
    assert wilson(0, 20) == pytest.approx((0.0, 0.16113), abs=1e-5)
    lo, hi = wilson(1.5, 4)
    assert lo < 1.5 / 4 < hi and wilson(2, 4)[0] > lo


def test_clopper_pearson_matches_known_values():
    cp = estimates.clopper_pearson
    assert cp(0, 0) == (0.0, 1.0) and cp(0, 1) == pytest.approx((0.0, 0.975)) and cp(1, 1) == pytest.approx((0.025, 1))
    assert cp(3, 10) == pytest.approx((0.06674, 0.65245), abs=1e-5)
    assert cp(50, 100) == pytest.approx((0.39832, 0.60168), abs=1e-5)
    assert cp(0, 20) == pytest.approx((0.0, 0.16843), abs=1e-5)


def test_one_stratum_is_wilson_times_its_size_and_strata_weigh_by_size():
    one = stratified_count([3], [10], [50])
    lo, hi = wilson(3, 10)
    assert (one.point, one.low, one.high) == pytest.approx((15.0, 50 * lo, 50 * hi))
    two = stratified_count([1, 2], [4, 2], [4, 8])  # share 1/3 * 1/4 + 2/3 * 1 = 3/4, n_eff 1 / (1/36 + 8/36) = 4
    lo, hi = wilson(3, 4)
    assert (two.point, two.low, two.high) == pytest.approx((9.0, 12 * lo, 12 * hi))
    assert stratified_count([], [], []) == Interval(0.0, 0.0, 0.0)


def test_combine_adds_points_and_half_widths_in_quadrature():
    c = estimates.combine(Interval(10, 7, 14), Interval(5, 1, 8))
    assert (c.point, c.low, c.high) == pytest.approx((15, 15 - 5, 15 + 5))


def test_standing_on_a_constructed_store(db_path):
    with Store(db_path) as store:
        build_abc(store)
        s = estimates.standing(store)
    assert s["images"] == 30 and s["verdicts"] == 9 and s["judged"] == 8 and s["threshold"] == 0.5
    per = {r["class"]: r for r in s["audited_classes"]["classes"]}
    lo, hi = wilson(1, 4)
    assert per["A"] | {"remaining": None} == {"class": "A", "unjudged": 4, "audited": 4, "audit_wrong": 1,
                                              "remaining": None}
    assert list(per["A"]["remaining"].values()) == pytest.approx([1.0, 4 * lo, 4 * hi])
    assert (per["B"]["unjudged"], per["B"]["audited"], per["B"]["audit_wrong"]) == (8, 2, 2)  # the unsure is unjudged
    lo, hi = wilson(3, 4)
    audited = s["audited_classes"]["remaining"]
    assert list(audited.values()) == pytest.approx([9.0, 12 * lo, 12 * hi])
    # C from the model: sum(1 - P), checked on the held-out audits 1 (wrong, 0.2), 3 (correct, 0.6), 11 (wrong, 0.3)
    # (build_abc stores no counting P(label wrong): the scores count, as a method without one does)
    p = np.array(ABC_SCORES["C"])
    expected, sd = float((1 - p).sum()), sqrt(float((p * (1 - p)).sum()))
    check = s["model_classes"]["check"]
    lo, hi = wilson(2, 3)
    assert (check["n"], check["wrong"]) == (3, 2) and check["expected"] == pytest.approx(1.9)
    assert (check["ratio_low"], check["ratio_high"]) == pytest.approx((lo * 3 / 1.9, hi * 3 / 1.9))
    model = s["model_classes"]["remaining"]
    want = (expected, max(0, min(expected - 1.96 * sd, expected * lo * 3 / 1.9)),
            min(10, max(expected + 1.96 * sd, expected * hi * 3 / 1.9)))
    assert list(model.values()) == pytest.approx(want)
    assert s["model_classes"]["classes"] == ["C"] and s["model_classes"]["unjudged"] == 10
    rem = s["remaining"]
    assert rem["point"] == pytest.approx(9 + expected)
    assert rem["low"] == pytest.approx(rem["point"] - sqrt((9 - audited["low"]) ** 2 + (expected - want[1]) ** 2))
    assert rem["high"] == pytest.approx(rem["point"] + sqrt((audited["high"] - 9) ** 2 + (want[2] - expected) ** 2))
    assert s["fixed"] == {"wrong": 5, "relabelled": 1}
    assert [s["wrong_total"][k] for k in ("point", "low", "high")] == pytest.approx(
        [rem[k] + 5 for k in ("point", "low", "high")])
    assert s["export"] == {"threshold": 0.5, "rows": 31, "kept": 20, "dropped": 11, "dropped_by_verdict": 4,
                           "dropped_by_model": 7, "relabelled": 1}
    flags = s["flags"]
    assert (flags["n"], flags["wrong"], flags["flagged"]) == (3, 2, 2)
    assert flags["precision"]["rate"] == 1.0 and flags["recall"]["rate"] == 1.0


def test_the_model_part_counts_with_the_stored_counting_probability(db_path):
    """Where a score row has expected_wrong, the model's count, its sd and the calibration check sum it instead of
    1 - score; a row without it (NULL) falls back to 1 - score. The flags (the scores) are unchanged."""
    counted = {21: 0.35, 22: 0.15, 23: 0.5, 24: 0.25, 25: 0.65, 26: 0.7, 27: 0.45, 28: 0.9, 29: 0.85,  # 30: NULL
               1: 0.5, 3: 0.25, 11: 0.75}  # the held-out audits 1 (wrong), 3 (correct), 11 (wrong)
    with Store(db_path) as store:
        build_abc(store)
        ids = {c["name"]: c["id"] for c in store.classes()}
        before = estimates.standing(store)
        store.write_scores(1, [(i, ids["ABC"[(i - 1) // 10]], s, abs(s - 0.5), None, None, counted[i])
                               for i, s in ((i, [*ABC_SCORES["A"], *ABC_SCORES["B"], *ABC_SCORES["C"]][i - 1])
                                            for i in counted)])
        states = States.of(store.image_states(1))
        s = estimates.standing(store)
    by_id = dict(zip(states.image_id.tolist(), states.p_wrong.tolist()))
    assert by_id[30] == 1 - ABC_SCORES["C"][9] and by_id[2] == 1 - ABC_SCORES["A"][1]  # NULL: 1 - score
    assert all(by_id[i] == p for i, p in counted.items())
    check = s["model_classes"]["check"]
    lo, hi = wilson(2, 3)
    assert (check["n"], check["wrong"], check["expected"]) == (3, 2, 1.5)
    assert (check["ratio"], check["ratio_low"], check["ratio_high"]) == pytest.approx((2 / 1.5, lo * 3 / 1.5,
                                                                                      hi * 3 / 1.5))
    p = np.array([counted[i] for i in range(21, 30)] + [1 - ABC_SCORES["C"][9]])
    expected, sd = float(p.sum()), sqrt(float((p * (1 - p)).sum()))
    assert expected == pytest.approx(5.75)  # 1 - score would count 5.45
    model = s["model_classes"]["remaining"]
    assert list(model.values()) == pytest.approx([expected, max(0, min(expected - 1.96 * sd, expected * lo * 3 / 1.5)),
                                                  min(10, max(expected + 1.96 * sd, expected * hi * 3 / 1.5))])
    assert s["remaining"]["point"] == pytest.approx(9 + expected)
    assert s["audited_classes"] == before["audited_classes"] and s["export"] == before["export"]
    assert s["flags"] == before["flags"] and s["transfer"] == before["transfer"]


@pytest.mark.parametrize("threshold", [None, 0.0, 0.35, 0.5, 0.85, 1.0])
def test_export_counts_are_what_the_export_writes(db_path, threshold):
    """None: the export's threshold in force (the model's delta, 0.5)."""
    with Store(db_path) as store:
        build_abc(store)
        counts = estimates.export_counts(States.of(store.image_states(1)), 0.5 if threshold is None else threshold)
        buf = io.StringIO(newline="")
        export_csv(store, buf, threshold=threshold)
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    kept = [r for r in rows if r["keep"] == "1"]
    assert counts["rows"] == len(rows) and counts["kept"] == len(kept)
    assert counts["relabelled"] == sum(r["final_label"] not in ("", r["noisy_label"]) for r in rows)
    assert counts["dropped_by_model"] == sum(r["keep"] == "0" and r["decided_by"] == "model" for r in rows)


def test_what_if_precision_recall_move_with_the_threshold(db_path):
    with Store(db_path) as store:
        build_abc(store)
        rows = estimates.what_if(States.of(store.image_states(1)), [0.25, 0.65])
    low, high = rows[0]["flags"], rows[1]["flags"]
    assert (low["flagged"], low["precision"]["k"], low["recall"]["rate"]) == (1, 1, 0.5)  # only 0.2 < 0.25
    assert (high["flagged"], high["precision"]["rate"], high["recall"]["rate"]) == (3, 2 / 3, 1.0)
    assert high["precision"]["low"] == pytest.approx(estimates.clopper_pearson(2, 3)[0])
    assert rows[0]["dropped_by_model"] == 4 and rows[1]["dropped_by_model"] == 12


def test_scores_that_are_no_probabilities_or_an_unchecked_model_say_so(db_path):
    with Store(db_path) as store:
        build_abc(store, kind="flagged")
        s = estimates.standing(store)
        assert s["model_classes"]["remaining"] is None and s["remaining"] is None and s["wrong_total"] is None
        assert s["audited_classes"]["remaining"]["point"] == pytest.approx(9.0)
    p_wrong = np.array([0.1, 0.5])
    unchecked = estimates.model_count(p_wrong, estimates.calibration_check(States.of([])))
    assert unchecked == Interval(pytest.approx(0.6), 0.0, 2.0)


def test_the_dashboard_opens_with_where_we_stand_and_shows_the_estimates(lead_db):
    at = app("admin", page="annotator/pages/dashboard.py")
    heads = [h.value for h in at.subheader]
    assert heads[0] == "Where we stand" and heads.index("Label noise per class") < heads.index("Worker")
    with Store(lead_db) as store:
        s = estimates.standing(store)
    shown = at.table[0].value.reset_index()
    assert shown.to_dict("records") == report.summary_rows(s)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Wrong labels"] == f"{s['wrong_total']['point']:,.0f}" and metrics["Fixed"] == "5"
    assert metrics["Left"] == f"{s['remaining']['point']:,.0f}" and metrics["Export drops"] == "11"
    with Store(lead_db) as store:
        store.record_verdict(7, "admin", "wrong", reason="audit")  # a new verdict: recomputed, not cached
    at.run()
    assert {m.label: m.value for m in at.metric}["Fixed"] == "6"


def test_the_export_what_if_follows_the_threshold_control(lead_db):
    at = app("admin", page="annotator/pages/export.py")
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Kept"], metrics["Dropped"], metrics["Relabelled"]) == ("20", "11", "1")  # at delta 0.5
    assert (metrics["Precision"], metrics["Recall"]) == ("100%", "100%")
    table = at.table[0].value
    assert "0.500 (chosen)" in table.index and len(table) == 9
    at.toggle(key="exp_custom").set_value(True).run()
    at.number_input(key="exp_threshold").set_value(0.65).run()
    metrics = {m.label: m.value for m in at.metric}
    with Store(lead_db) as store:
        want = estimates.what_if(States.of(store.image_states(1)), [0.65])[0]
    assert metrics["Kept"] == f"{want['kept']}" and metrics["Dropped"] == f"{want['dropped']}" == "16"
    assert metrics["Precision"] == "67%" and metrics["Recall"] == "100%"  # 3 flagged, 2 of them wrong
    row = at.table[0].value.loc["0.650 (chosen)"]
    assert row["precision (95 %)"] == "67% ({:.0%}–{:.0%}), n=3".format(*estimates.clopper_pearson(2, 3))


def test_the_effort_curve_reads_each_versions_audit_check_and_expected_count():
    models = [{"version": 2, "n_verdicts": 50, "metrics": {"audit_check": {"n": 10, "errors": 2,
                                                                          "flag_nothing_errors": 3},
                                                          "expected_wrong_left": 120.4, "noise_rate_kind": "expected"}},
              {"version": 1, "n_verdicts": 0, "metrics": {}},
              {"version": 3, "n_verdicts": 50, "metrics": {"rescored_from": 2}}]
    curve = estimates.effort_curve(models)
    assert [c["version"] for c in curve] == [1, 2]  # oldest first, the rescore left out
    assert curve[0]["audit_error"]["rate"] is None and curve[0]["expected_wrong_left"] is None
    assert curve[1]["audit_error"] == estimates.rate(2, 10) and curve[1]["flag_nothing_error"]["k"] == 3
    rows = report.effort_rows(curve)
    lo, hi = wilson(2, 10)
    assert rows[1] == {"model": "v2", "verdicts": 50, "held-out audits": 10,
                       "flags' error (95 %)": f"20.0% ({lo:.1%} – {hi:.1%})",
                       "flagging nothing": "30.0% ({:.1%} – {:.1%})".format(*wilson(3, 10)),
                       "expected wrong left": "120"}


def test_the_stopping_signal_reads_the_rounds_verdict_influence():
    edge = round(estimates.STOP_SHARE * 1000)  # moved flags of 1,000 at the threshold
    metrics = {"verdict_influence": {"A": {"verdicts": 40, "held": 20, "moved": edge - 1, "flagged": 1000},
                                     "B": {"verdicts": 30, "held": 15, "moved": edge, "flagged": 1000},
                                     "C": {"verdicts": 12, "held": 6, "moved": 0, "flagged": 1000}}}
    rows = estimates.stopping(metrics, ["B", "A", "D"])
    # A is under the threshold: stop; B is on it: not under; D has too few verdicts (no entry); C is not verified
    assert [(r["class"], r["stop"]) for r in rows] == [("A", True), ("B", False), ("D", None)]
    assert rows[0] == {"class": "A", "verdicts": 40, "held": 20, "moved": edge - 1, "flagged": 1000, "stop": True,
                       "signal": True}
    assert [r["signal"] for r in report.stopping_rows(rows)] == ["verify another class", "keep going",
                                                                 "too few verdicts to tell"]
    assert report.stopping_rows(rows)[0]["flags moved"] == f"{edge - 1} of 1,000"
    assert [r["signal"] for r in estimates.stopping({}, ["A"])] == [False]  # another method: no signal


def test_admin_says_which_verified_class_to_stop_and_swaps_it_for_a_suggested_one(lead_db):
    influence = {"A": {"verdicts": 24, "held": 12, "moved": 1, "flagged": 1000},
                 "B": {"verdicts": 20, "held": 10, "moved": 300, "flagged": 1000}}
    with Store(lead_db) as store:
        ids = {c["name"]: c["id"] for c in store.classes()}
        version = store.add_model(delta=0.5, metrics={"noise_rate_kind": "expected", "verdict_influence": influence})
        store.write_scores(version, [(10 * j + k + 1, ids[c], s, abs(s - 0.5))
                                     for j, c in enumerate("ABC") for k, s in enumerate(ABC_SCORES[c])])
        store.make_current(version)
    at = app("admin", page="annotator/pages/admin.py")
    assert at.warning[0].value.startswith("**A**: the newest verdicts there no longer move the model")
    signal = at.dataframe[0].value.set_index("class")["signal"]
    assert signal.to_dict() == {"A": "verify another class", "B": "keep going", "C": ""}
    at.button(key="adm_verify_swap").click().run()
    assert not at.exception
    with Store(lead_db) as store:
        assert sorted(store.verify_classes()) == ["B", "C"]  # A stopped; C, the only unverified class, replaces it
